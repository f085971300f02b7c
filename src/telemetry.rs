//! Prometheus metrics (`GET /metrics`). Request-path metrics are recorded as they happen
//! (a few atomic increments per decision); state-derived ones — reload counts, the loaded
//! versions, entity count, readiness — are read from [`State`] when scraped, so the state module
//! knows nothing of metrics.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::audit::AuditLog;
use crate::decision::{Change, Decision, Outcome};
use crate::state::State;

/// The HTTP endpoints metrics are labelled with (a fixed set, so label cardinality is bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/check`.
    Check,
    /// `POST /v1/check/batch`.
    Batch,
    /// `POST /access/v1/evaluation`, `POST /access/v1/evaluations` (AuthZEN).
    AuthZen,
    /// `/healthz`, `/readyz`, `/v1/status`, `/metrics`.
    Operations,
    /// The reverse proxy listener.
    Proxy,
    /// `/v1/authz/envoy…`, `/v1/authz/nginx`.
    ForwardAuth,
    /// Envoy `ext_authz` over gRPC (`--grpc-listen`); the status is the HTTP status the answer
    /// tells Envoy to send (200 for an allow).
    ExtAuthzGrpc,
    /// Anything else (404s, 405s).
    Other,
}

/// Statuses whose `flex_auth_http_responses_total` children are kept resolved; others are
/// looked up by label on each response.
const COMMON_STATUSES: [u16; 12] = [200, 400, 401, 403, 404, 405, 413, 415, 422, 429, 500, 503];

impl Endpoint {
    const ALL: [Self; 8] = [
        Self::Check,
        Self::Batch,
        Self::AuthZen,
        Self::Operations,
        Self::Proxy,
        Self::ForwardAuth,
        Self::ExtAuthzGrpc,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Check => "check",
            Self::Batch => "batch",
            Self::AuthZen => "authzen",
            Self::Operations => "operations",
            Self::Proxy => "proxy",
            Self::ForwardAuth => "forward_auth",
            Self::ExtAuthzGrpc => "ext_authz_grpc",
            Self::Other => "other",
        }
    }
}

/// Decisions made for one request, counted only once they are answered.
#[derive(Debug, Default)]
pub struct Tally {
    outcomes: Vec<Outcome>,
    /// Live and shadow decision of each shadowed decision, and how they differ.
    shadowed: Vec<(Decision, Decision, Option<Change>)>,
}

impl Tally {
    /// One decision.
    pub fn add(&mut self, outcome: &Outcome) {
        self.outcomes.push(Outcome {
            decision: outcome.decision,
            id: outcome.id,
            reasons: outcome.reasons.clone(),
            policies: Vec::new(),
            errors: Vec::new(),
        });
    }

    /// One decision also evaluated on the shadow.
    pub fn add_shadowed(&mut self, live: Decision, shadow: Decision, change: Option<Change>) {
        self.shadowed.push((live, shadow, change));
    }
}

/// Index of a (live, shadow) pair in `Metrics::shadow_decisions`.
fn shadow_pair(live: Decision, shadow: Decision) -> usize {
    let bit = |d: Decision| usize::from(d == Decision::Deny);
    bit(live) * 2 + bit(shadow)
}

/// Index of a change in `Metrics::shadow_disagreements` (the order of [`Change::ALL`]).
fn change_index(change: Change) -> usize {
    match change {
        Change::AllowToDeny => 0,
        Change::DenyToAllow => 1,
        Change::ReasonsChanged => 2,
    }
}

/// Every metric flex-auth exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Children resolved once: the request path does atomic increments, no label lookups.
    allows: IntCounter,
    denies: IntCounter,
    check_seconds: Histogram,
    batch_seconds: Histogram,
    proxy_seconds: Histogram,
    forward_auth_seconds: Histogram,
    ext_authz_grpc_seconds: Histogram,
    deny_reasons: IntCounterVec,
    /// `deny_reasons` children by reason, resolved once per reason (the fixed codes at start,
    /// a package's `@reason`s on their first deny) and read without a lock.
    reason_children: Arc<ArcSwap<ReasonChildren>>,
    batch_size: Histogram,
    responses: IntCounterVec,
    /// `responses` children by endpoint and common status, resolved on first use (a series
    /// appears when it is first counted, as with `with_label_values`), then reused.
    response_children: Arc<[std::sync::OnceLock<IntCounter>]>,
    auth_failures: IntCounterVec,
    upstream_seconds: Histogram,
    upstream_responses: IntCounterVec,
    refused: IntCounterVec,
    /// `shadow_decisions_total` by [`shadow_pair`].
    shadow_decisions: [IntCounter; 4],
    /// `shadow_disagreements_total` by [`change_index`].
    shadow_disagreements: [IntCounter; 3],
}

/// Resolved `deny_reasons` children. Reasons come from fixed codes and a package's `@reason`
/// annotations, so the map stays small; it is bounded all the same (past the bound a reason is
/// looked up by label on each deny).
type ReasonChildren = hashbrown::HashMap<Box<str>, IntCounter>;

/// The most `deny_reasons` children kept resolved.
const MAX_RESOLVED_REASONS: usize = 1024;

/// Reason codes every deployment can report, resolved (and exported at 0) from the start.
const FIXED_REASONS: [&str; 4] = [
    crate::decision::REASON_NO_MATCHING_PERMIT,
    crate::decision::REASON_POLICY_ERROR,
    crate::decision::REASON_NO_ROUTE,
    crate::decision::REASON_FORBIDDEN,
];

/// Label values of `flex_auth_refused_total`, all exported from the start.
const REFUSALS: [&str; 4] = [
    "connection_limit",
    "overloaded",
    "deadline_exceeded",
    "tls_handshake",
];

/// Metrics could not be set up (a programming error: duplicate or malformed metric names).
#[derive(Debug, thiserror::Error)]
#[error("cannot register metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Register every metric in a fresh registry.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new_custom(Some("flex_auth".to_owned()), None)?;
        let decisions = IntCounterVec::new(
            Opts::new("decisions_total", "Decisions by result."),
            &["decision"],
        )?;
        let deny_reasons = IntCounterVec::new(
            Opts::new(
                "deny_reasons_total",
                "Reason codes reported by denies (a deny may report several).",
            ),
            &["reason"],
        )?;
        let check_duration = HistogramVec::new(
            HistogramOpts::new(
                "check_duration_seconds",
                "Time from a parsed request to its decision, per check endpoint (a batch counts once).",
            )
            .buckets(vec![
                0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005,
                0.025, 0.1,
            ]),
            &["endpoint"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "batch_size",
                "Checks per batch request (/v1/check/batch, /access/v1/evaluations).",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0]),
        )?;
        let responses = IntCounterVec::new(
            Opts::new(
                "http_responses_total",
                "HTTP responses by endpoint and status code.",
            ),
            &["endpoint", "code"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "auth_failures_total",
                "Requests whose bearer credential was missing or refused, by reason.",
            ),
            &["reason"],
        )?;
        for reason in crate::auth::AuthError::REASONS {
            auth_failures.with_label_values(&[reason]);
        }
        let upstream_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response headers.",
            )
            .buckets(vec![
                0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                "upstream_responses_total",
                "Upstream answers by status class (2xx…5xx), or `unreachable` / `timeout`.",
            ),
            &["class"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "refused_total",
                "Connections and requests refused by a limit before any decision: `connection_limit`, `overloaded` (in-flight limit), `deadline_exceeded`, `tls_handshake` (failed or timed out).",
            ),
            &["reason"],
        )?;
        for reason in REFUSALS {
            refused.with_label_values(&[reason]);
        }
        let shadow_decisions = IntCounterVec::new(
            Opts::new(
                "shadow_decisions_total",
                "Decisions also evaluated on the shadow package (serve --shadow-policy), by the live and the shadow decision.",
            ),
            &["live", "shadow"],
        )?;
        let shadow_disagreements = IntCounterVec::new(
            Opts::new(
                "shadow_disagreements_total",
                "Shadowed decisions where the shadow answered differently: allow_to_deny, deny_to_allow, reasons_changed (same deny, other reasons).",
            ),
            &["kind"],
        )?;
        let build = IntGaugeVec::new(
            Opts::new("build_info", "Build information (value 1)."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for collector in [
            Box::new(decisions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(deny_reasons.clone()),
            Box::new(check_duration.clone()),
            Box::new(batch_size.clone()),
            Box::new(responses.clone()),
            Box::new(auth_failures.clone()),
            Box::new(upstream_seconds.clone()),
            Box::new(upstream_responses.clone()),
            Box::new(refused.clone()),
            Box::new(shadow_decisions.clone()),
            Box::new(shadow_disagreements.clone()),
            Box::new(build),
        ] {
            registry.register(collector)?;
        }
        Ok(Self {
            registry,
            allows: decisions.with_label_values(&["allow"]),
            denies: decisions.with_label_values(&["deny"]),
            check_seconds: check_duration.with_label_values(&[Endpoint::Check.as_str()]),
            batch_seconds: check_duration.with_label_values(&[Endpoint::Batch.as_str()]),
            proxy_seconds: check_duration.with_label_values(&[Endpoint::Proxy.as_str()]),
            forward_auth_seconds: check_duration
                .with_label_values(&[Endpoint::ForwardAuth.as_str()]),
            ext_authz_grpc_seconds: check_duration
                .with_label_values(&[Endpoint::ExtAuthzGrpc.as_str()]),
            reason_children: Arc::new(ArcSwap::from_pointee(
                FIXED_REASONS
                    .iter()
                    .map(|r| (Box::from(*r), deny_reasons.with_label_values(&[r])))
                    .collect(),
            )),
            deny_reasons,
            batch_size,
            responses,
            response_children: (0..Endpoint::ALL.len() * COMMON_STATUSES.len())
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            auth_failures,
            upstream_seconds,
            upstream_responses,
            refused,
            shadow_decisions: [
                shadow_decisions.with_label_values(&["allow", "allow"]),
                shadow_decisions.with_label_values(&["allow", "deny"]),
                shadow_decisions.with_label_values(&["deny", "allow"]),
                shadow_decisions.with_label_values(&["deny", "deny"]),
            ],
            shadow_disagreements: Change::ALL
                .map(|change| shadow_disagreements.with_label_values(&[change.as_str()])),
        })
    }

    /// Count a refused or missing credential.
    pub fn record_auth_failure(&self, reason: &str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// Time an upstream exchange and count its outcome (`2xx`…, `unreachable`, `timeout`).
    pub fn observe_upstream(&self, elapsed: Duration, class: &str) {
        self.upstream_seconds.observe(elapsed.as_secs_f64());
        self.upstream_responses.with_label_values(&[class]).inc();
    }

    /// A connection closed at once because the listener is at its connection limit.
    pub fn connection_refused(&self) {
        self.refused.with_label_values(&["connection_limit"]).inc();
    }

    /// A request answered 503 `overloaded` (in-flight limit).
    pub fn request_shed(&self) {
        self.refused.with_label_values(&["overloaded"]).inc();
    }

    /// A request answered 503 `deadline_exceeded`.
    pub fn deadline_exceeded(&self) {
        self.refused.with_label_values(&["deadline_exceeded"]).inc();
    }

    /// A TLS handshake that failed or timed out.
    pub fn tls_handshake_failed(&self) {
        self.refused.with_label_values(&["tls_handshake"]).inc();
    }

    /// Count one decision.
    fn record_decision(&self, outcome: &Outcome) {
        match outcome.decision {
            Decision::Allow => self.allows.inc(),
            Decision::Deny => {
                self.denies.inc();
                for reason in &outcome.reasons {
                    self.count_deny_reason(reason);
                }
            }
        }
    }

    /// Count one deny reason: through the resolved map, or looked up by label and added to it
    /// (copy on write: a new reason is rare, a lookup is every deny).
    fn count_deny_reason(&self, reason: &str) {
        let children = self.reason_children.load();
        if let Some(child) = children.get(reason) {
            child.inc();
            return;
        }
        let full = children.len() >= MAX_RESOLVED_REASONS;
        drop(children);
        let child = self.deny_reasons.with_label_values(&[reason]);
        child.inc();
        if !full {
            self.reason_children.rcu(|children| {
                let mut children = ReasonChildren::clone(children);
                children.insert(Box::from(reason), child.clone());
                children
            });
        }
    }

    /// Count the decisions of `tally`: call once they were answered (in required mode, once
    /// their records are durable), so that an allow the log refused is never counted.
    pub fn record_tally(&self, tally: &Tally) {
        for outcome in &tally.outcomes {
            self.record_decision(outcome);
        }
        for &(live, shadow, change) in &tally.shadowed {
            if let Some(counter) = self.shadow_decisions.get(shadow_pair(live, shadow)) {
                counter.inc();
            }
            if let Some(counter) =
                change.and_then(|c| self.shadow_disagreements.get(change_index(c)))
            {
                counter.inc();
            }
        }
    }

    /// Time one check or batch.
    pub fn observe_check(&self, endpoint: Endpoint, elapsed: Duration) {
        let histogram = match endpoint {
            Endpoint::Batch => &self.batch_seconds,
            Endpoint::Proxy => &self.proxy_seconds,
            Endpoint::ForwardAuth => &self.forward_auth_seconds,
            Endpoint::ExtAuthzGrpc => &self.ext_authz_grpc_seconds,
            _ => &self.check_seconds,
        };
        histogram.observe(elapsed.as_secs_f64());
    }

    /// Size of one batch.
    pub fn observe_batch(&self, checks: usize) {
        self.batch_size.observe(checks as f64);
    }

    /// Count one HTTP response.
    pub fn record_response(&self, endpoint: Endpoint, status: http::StatusCode) {
        let slot = COMMON_STATUSES
            .iter()
            .position(|s| *s == status.as_u16())
            .and_then(|i| {
                self.response_children
                    .get(endpoint as usize * COMMON_STATUSES.len() + i)
            });
        match slot {
            Some(slot) => slot
                .get_or_init(|| {
                    self.responses
                        .with_label_values(&[endpoint.as_str(), status.as_str()])
                })
                .inc(),
            None => self
                .responses
                .with_label_values(&[endpoint.as_str(), status.as_str()])
                .inc(),
        }
    }

    /// The Prometheus text exposition. Metrics the request path records live in the registry;
    /// those derived from the loaded state and the decision log are read from their sources at
    /// scrape time (a registry made for this scrape), so concurrent scrapes never add a delta
    /// twice and the values are the sources' own. `ready` is the caller's readiness — the same
    /// answer `/readyz` gives, shutdown and dependencies included.
    pub fn render(
        &self,
        state: &State,
        audit: &AuditLog,
        ready: bool,
        bundle: Option<&crate::bundle::watch::Watcher>,
    ) -> Vec<u8> {
        let mut families = self.registry.gather();
        match scrape_time_metrics(state, audit, ready) {
            Ok(scraped) => families.extend(scraped.gather()),
            Err(e) => tracing::warn!(error = %e, "cannot build the state-derived metrics"),
        }
        if let Some(watcher) = bundle {
            match bundle_metrics(watcher) {
                Ok(scraped) => families.extend(scraped.gather()),
                Err(e) => tracing::warn!(error = %e, "cannot build the bundle metrics"),
            }
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// The bundle source's checks, last success and the revision in force, as of now.
fn bundle_metrics(watcher: &crate::bundle::watch::Watcher) -> Result<Registry, prometheus::Error> {
    let registry = Registry::new_custom(Some("flex_auth".to_owned()), None)?;
    let checks = IntCounterVec::new(
        Opts::new(
            "bundle_checks_total",
            "Checks of the bundle source by result: updated (a new bundle is in force), unchanged, rejected (refused; the last good one serves), failed (source unreachable or answered badly).",
        ),
        &["result"],
    )?;
    for (result, total) in watcher.check_counts() {
        checks.with_label_values(&[result]).inc_by(total);
    }
    registry.register(Box::new(checks))?;
    let last_success = prometheus::Gauge::new(
        "bundle_last_success_timestamp_seconds",
        "When a check of the bundle source last succeeded (Unix seconds; 0: never).",
    )?;
    last_success.set(
        watcher
            .last_success()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0.0, |d| d.as_secs_f64()),
    );
    registry.register(Box::new(last_success))?;
    let info = IntGaugeVec::new(
        Opts::new(
            "bundle_revision_info",
            "The bundle in force (value 1): its revision, archive sha256 and signing key id.",
        ),
        &["revision", "digest", "kid"],
    )?;
    if let Some(active) = watcher.active() {
        info.with_label_values(&[
            active.revision.as_str(),
            active.digest.as_str(),
            active.kid.as_deref().unwrap_or(""),
        ])
        .set(1);
    }
    registry.register(Box::new(info))?;
    Ok(registry)
}

/// Reloads, the versions in force, entity count, readiness and decision-log totals, as of now.
fn scrape_time_metrics(
    state: &State,
    audit: &AuditLog,
    ready: bool,
) -> Result<Registry, prometheus::Error> {
    let registry = Registry::new_custom(Some("flex_auth".to_owned()), None)?;
    let reloads = IntCounterVec::new(
        Opts::new("reloads_total", "Reload attempts by trigger and result."),
        &["trigger", "result"],
    )?;
    for (trigger, counts) in state.counters().snapshot() {
        for (result, total) in [
            ("loaded", counts.loaded),
            ("unchanged", counts.unchanged),
            ("failed", counts.failed),
        ] {
            reloads.with_label_values(&[trigger, result]).inc_by(total);
        }
    }
    let loaded_info = IntGaugeVec::new(
        Opts::new(
            "loaded_info",
            "The policy package and registry in force (value 1).",
        ),
        &["package", "policy_version", "registry_version"],
    )?;
    let entities = IntGauge::new(
        "registry_entities",
        "Actors (or raw entities) in the registry in force.",
    )?;
    let bytes = IntGauge::new(
        "registry_bytes",
        "Heap bytes of the compact actor store in force (absent for a raw Cedar entities file).",
    )?;
    let slice_hits = IntCounter::new(
        "slice_cache_hits_total",
        "Decisions on a snapshot whose entity slice was reused (since the last reload).",
    )?;
    let slice_misses = IntCounter::new(
        "slice_cache_misses_total",
        "Decisions on a snapshot whose cacheable slice had to be built (since the last reload).",
    )?;
    let mut has_bytes = false;
    if let Some(loaded) = state.current().as_ref() {
        let engine = &loaded.engine;
        if let Some(b) = engine.registry().bytes() {
            bytes.set(i64::try_from(b).unwrap_or(i64::MAX));
            has_bytes = true;
            let (hits, misses) = engine.slice_cache_stats();
            slice_hits.inc_by(hits);
            slice_misses.inc_by(misses);
        }
        loaded_info
            .with_label_values(&[
                engine.policy().name(),
                engine.policy().hash().as_str(),
                engine.registry().hash().as_str(),
            ])
            .set(1);
        entities.set(i64::try_from(engine.registry().entity_count()).unwrap_or(i64::MAX));
    }
    let ready_gauge = IntGauge::new(
        "ready",
        "1 when /readyz answers 200 (ready or degraded), 0 when it answers 503.",
    )?;
    ready_gauge.set(i64::from(ready));
    let log_writes = IntCounter::new(
        "decision_log_writes_total",
        "Decision records written to the decision log.",
    )?;
    log_writes.inc_by(audit.written());
    let log_failures = IntCounter::new(
        "decision_log_failures_total",
        "Decision records that could not be written (or were dropped in best-effort mode).",
    )?;
    log_failures.inc_by(audit.failures());
    for collector in [
        Box::new(reloads) as Box<dyn prometheus::core::Collector>,
        Box::new(loaded_info),
        Box::new(entities),
        Box::new(ready_gauge),
        Box::new(log_writes),
        Box::new(log_failures),
    ] {
        registry.register(collector)?;
    }
    if has_bytes {
        registry.register(Box::new(bytes))?;
        registry.register(Box::new(slice_hits))?;
        registry.register(Box::new(slice_misses))?;
    }
    Ok(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_index_their_resolved_children() {
        for (i, endpoint) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*endpoint as usize, i, "{endpoint:?}");
        }
    }

    #[test]
    fn responses_are_counted_by_endpoint_and_status_whether_resolved_or_not() {
        let metrics = Metrics::new().unwrap();
        for _ in 0..3 {
            metrics.record_response(Endpoint::Check, http::StatusCode::OK);
        }
        metrics.record_response(Endpoint::Proxy, http::StatusCode::OK);
        metrics.record_response(Endpoint::Check, http::StatusCode::IM_A_TEAPOT);
        metrics.record_response(Endpoint::Check, http::StatusCode::IM_A_TEAPOT);
        let count = |endpoint: &str, status: &str| {
            metrics
                .responses
                .get_metric_with_label_values(&[endpoint, status])
                .unwrap()
                .get()
        };
        assert_eq!(count("check", "200"), 3);
        assert_eq!(count("proxy", "200"), 1);
        assert_eq!(count("check", "418"), 2);
        // A child is created when first counted, not before.
        let families = metrics.registry.gather();
        let responses = families
            .iter()
            .find(|f| f.name() == "flex_auth_http_responses_total")
            .unwrap();
        assert_eq!(responses.get_metric().len(), 3);
    }

    fn deny(reasons: &[&str]) -> Outcome {
        Outcome {
            decision: Decision::Deny,
            id: crate::decision::DecisionId::generate(),
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
            policies: Vec::new(),
            errors: Vec::new(),
        }
    }

    #[test]
    fn deny_reasons_are_counted_whether_fixed_new_or_past_the_resolved_bound() {
        let metrics = Metrics::new().unwrap();
        let count = |reason: &str| {
            metrics
                .deny_reasons
                .get_metric_with_label_values(&[reason])
                .unwrap()
                .get()
        };
        // The fixed codes are exported at 0 before any deny.
        assert_eq!(count(crate::decision::REASON_NO_MATCHING_PERMIT), 0);
        metrics.record_decision(&deny(&["ttl_out_of_bounds", "no_matching_permit"]));
        metrics.record_decision(&deny(&["ttl_out_of_bounds"]));
        assert_eq!(count("ttl_out_of_bounds"), 2);
        assert_eq!(count("no_matching_permit"), 1);
        assert!(metrics
            .reason_children
            .load()
            .contains_key("ttl_out_of_bounds"));
        // Past the bound a reason is still counted, by label.
        for i in 0..MAX_RESOLVED_REASONS + 10 {
            metrics.record_decision(&deny(&[&format!("r{i}")]));
        }
        let last = format!("r{}", MAX_RESOLVED_REASONS + 9);
        metrics.record_decision(&deny(&[&last]));
        assert_eq!(count(&last), 2);
        assert_eq!(metrics.reason_children.load().len(), MAX_RESOLVED_REASONS);
    }
}
