//! The one decision path every surface takes — `/v1/check`, the batch, AuthZEN, the proxy and
//! forward-auth: take the engine in force (503 `not_ready` when there is none), decide, build the
//! record while the engine is held, **release the engine**, hand the records to the decision log
//! (in required mode: wait until they are durable, else 503 `audit_unavailable`), and only then
//! count the decisions and let the surface answer. Surfaces differ only in how they turn a request
//! into checks and how they render the outcome.
//!
//! Shadow evaluation (`serve --shadow-policy`) lives here, once: a surface decides through
//! [`Verdicts::evaluate`], which runs the same evaluation on the live engine and, when a shadow
//! is loaded, on the shadow's — on the request already parsed — and [`Verdicts::record`] compares
//! the two, puts the shadow's answer in the one record when they differ, and counts both. The
//! answer is always the live one; a shadow that is not loaded is simply not consulted.
//!
//! Architecture invariant: [`Verdicts::decide`] is the only way in: it commits what was recorded
//! before it hands back the answer, and the steps inside it (`with_engine`, `commit`) are private,
//! so no surface can answer before the record is accepted; nothing is counted before that.

use std::sync::Arc;
use std::time::Instant;

use crate::audit::{AuditLog, Extra, ShadowRecord};
use crate::decision::{Change, CheckRequest, DecisionId, Engine, Outcome, RequestError};
use crate::http::ApiError;
use crate::state::{Loaded, State};
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
    /// The shadow's engine, held while the live one is (released with it).
    shadow: Option<Arc<Loaded>>,
    /// The shadow's answer to the decision last evaluated, until that decision is recorded.
    shadowed: Option<Shadowed>,
}

/// The shadow's answer to one live decision.
#[derive(Debug)]
struct Shadowed {
    /// The live decision it shadows.
    live: DecisionId,
    outcome: Outcome,
    /// Why the shadow could not evaluate the request, when it could not (`outcome` is then a
    /// deny with [`REASON_INVALID_REQUEST`], as a batch item would report it).
    error: Option<String>,
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
        let mut pending = Pending {
            shadow: self
                .state
                .shadow_state()
                .and_then(|shadow| shadow.current().clone()),
            ..Pending::default()
        };
        let value = decide(&loaded.engine, &mut pending);
        // Released with the live engine, before anything waits on the log.
        pending.shadow = None;
        pending.shadowed = None;
        Ok((value?, pending))
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

    /// Evaluate one request with `evaluate` on the live `engine` and, when a shadow is loaded, on
    /// the shadow's engine too (the same closure over the same parsed request). The live answer
    /// is returned; the shadow's waits in `pending` for [`Self::record`] of that answer. A live
    /// error is returned as is and the shadow is not consulted.
    pub fn evaluate(
        &self,
        pending: &mut Pending,
        engine: &Engine,
        evaluate: impl Fn(&Engine) -> Result<Outcome, RequestError>,
    ) -> Result<Outcome, RequestError> {
        let outcome = evaluate(engine)?;
        pending.shadowed = pending.shadow.as_ref().map(|shadow| {
            let (outcome_of_shadow, error) = match evaluate(&shadow.engine) {
                Ok(answer) => (answer, None),
                Err(e) => (Outcome::deny(REASON_INVALID_REQUEST), Some(e.to_string())),
            };
            Shadowed {
                live: outcome.id,
                outcome: outcome_of_shadow,
                error,
            }
        });
        Ok(outcome)
    }

    /// Record one decision of `engine` (logged and counted when committed). When the decision
    /// was made by [`Self::evaluate`] with a shadow loaded, the shadow's answer is compared with
    /// it: both are counted, and a disagreeing answer goes into the record.
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
        let shadowed = pending
            .shadowed
            .take()
            .filter(|shadowed| shadowed.live == outcome.id);
        let mut extra = extra;
        if let (Some(shadowed), Some(shadow)) = (&shadowed, &pending.shadow) {
            let answer = &shadowed.outcome;
            let change = Change::between(
                outcome.decision,
                &outcome.reasons,
                answer.decision,
                &answer.reasons,
            );
            pending
                .tally
                .add_shadowed(outcome.decision, answer.decision, change);
            extra.shadow = change.map(|change| ShadowRecord {
                decision: answer.decision.as_str(),
                change: change.as_str(),
                reasons: &answer.reasons,
                policies: &answer.policies,
                policy_version: shadow.engine.policy().hash().as_str(),
                registry_version: shadow.engine.registry().hash().as_str(),
                error: shadowed.error.as_deref(),
            });
        }
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
