//! The one decision path every surface takes — `/v1/check`, the batch, AuthZEN, the proxy and
//! forward-auth: take the engine in force (503 `not_ready` when there is none), decide, build the
//! record while the engine is held, **release the engine**, hand the records to the decision log
//! (in required mode: wait until they are durable, else 503 `audit_unavailable`), and only then
//! count the decisions and let the surface answer. Surfaces differ only in how they turn a request
//! into checks and how they render the outcome; shadow evaluation belongs here, once.
//!
//! Architecture invariant: [`Verdicts::decide`] is the only way in: it commits what was recorded
//! before it hands back the answer, and the steps inside it (`with_engine`, `commit`) are private,
//! so no surface can answer before the record is accepted; nothing is counted before that.

use std::sync::Arc;
use std::time::Instant;

use crate::audit::{AuditLog, Extra};
use crate::decision::{CheckRequest, Engine, Outcome};
use crate::http::ApiError;
use crate::state::State;
use crate::telemetry::{Metrics, Tally};

/// Reason an item reports when it could not be evaluated.
pub const REASON_INVALID_REQUEST: &str = "invalid_request";

/// The decision path over one loaded state, log and metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct Verdicts {
    state: Arc<State>,
    audit: AuditLog,
    metrics: Metrics,
}

/// The records and counts of decisions made while the engine was held, not yet committed.
#[derive(Debug, Default)]
#[must_use = "decisions must be committed to the decision log before they are answered"]
pub struct Pending {
    lines: Vec<Option<Vec<u8>>>,
    tally: Tally,
}

impl Verdicts {
    /// The path over `state`, logging to `audit` and counting into `metrics`.
    pub fn new(state: Arc<State>, audit: AuditLog, metrics: Metrics) -> Self {
        Self {
            state,
            audit,
            metrics,
        }
    }

    /// The metrics decisions are counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The decision log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Run `decide` against the engine in force and return what it rendered with the decisions it
    /// recorded; the engine is released when this returns, before anything waits on the log.
    fn with_engine<T>(
        &self,
        decide: impl FnOnce(&Engine, &mut Pending) -> Result<T, ApiError>,
    ) -> Result<(T, Pending), ApiError> {
        let loaded = self.state.current();
        let loaded = loaded.as_ref().ok_or_else(|| self.not_ready())?;
        if let Some(age) = self.state.stale() {
            return Err(ApiError::BundleStale(format!(
                "no successful check of the bundle source within --bundle-max-staleness (overdue by {}s)",
                age.as_secs()
            )));
        }
        let mut pending = Pending::default();
        let value = decide(&loaded.engine, &mut pending)?;
        Ok((value, pending))
    }

    /// The whole path in one call: decide on the engine in force, then commit what was recorded
    /// (waiting for durability in required mode) and only then hand back the answer. Denies are
    /// committed too: the record of a refusal is as required as that of an allow.
    pub async fn decide<T>(
        &self,
        decide: impl FnOnce(&Engine, &mut Pending) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let (value, pending) = self.with_engine(decide)?;
        self.commit(pending).await?;
        Ok(value)
    }

    /// Record one decision of `engine` (logged and counted when committed).
    #[expect(
        clippy::too_many_arguments,
        reason = "the record's parts, each from a different layer"
    )]
    pub fn record(
        &self,
        pending: &mut Pending,
        engine: &Engine,
        origin: &str,
        check: Option<&CheckRequest>,
        outcome: &Outcome,
        started: Instant,
        extra: Extra<'_>,
    ) {
        tracing::debug!(decision_id = %outcome.id, decision = outcome.decision.as_str(), origin, "decided");
        pending.tally.add(outcome);
        pending.lines.extend(
            self.audit
                .record_line(engine, origin, check, outcome, started, extra),
        );
    }

    /// A request (or a batch item) that could not be evaluated, or no route matched: a deny with
    /// `reason` and its own decision id, recorded like any other decision.
    pub fn deny(
        &self,
        pending: &mut Pending,
        engine: &Engine,
        origin: &str,
        check: Option<&CheckRequest>,
        reason: &str,
        started: Instant,
    ) -> Outcome {
        let outcome = Outcome::deny(reason);
        self.record(
            pending,
            engine,
            origin,
            check,
            &outcome,
            started,
            Extra::default(),
        );
        outcome
    }

    /// Hand the records to the decision log (in required mode: wait until they are durable), then
    /// count the decisions. What is counted is what is answered.
    async fn commit(&self, pending: Pending) -> Result<(), ApiError> {
        self.audit
            .commit(pending.lines)
            .await
            .map_err(|_| ApiError::AuditUnavailable)?;
        self.metrics.record_tally(&pending.tally);
        Ok(())
    }

    /// 503 `not_ready`, saying why nothing is loaded.
    pub fn not_ready(&self) -> ApiError {
        ApiError::NotReady(self.state.last_error().map_or_else(
            || "no policy package and registry loaded".to_owned(),
            |e| e.message.clone(),
        ))
    }
}
