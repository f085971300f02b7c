//! HTTP handlers for the decision API (`/v1/check`, `/v1/check/batch`) and the probes
//! (`/healthz`, `/readyz`). Raw JSON becomes a typed [`CheckRequest`] here, once, at the edge;
//! every error becomes a response in one place, [`ApiError::into_response`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument as _;

mod authzen_http;

use crate::audit::Extra;
use crate::audit::{AuditLog, Mode as AuditMode};
use crate::decision::{CheckRequest, Decision, DecisionId, Engine, Outcome, PolicyError};
pub use crate::http::ApiError;
use crate::http::{
    classify_json_error, declared_length, is_json, json_response, parse_json, ErrorBody,
};
use crate::registry::RegistryKind;
use crate::server::{Admission, Limits};
use crate::state::State;
use crate::telemetry::{Endpoint, Metrics, MetricsError, Probe};
use crate::tls::{ClientCert, Tls};
use crate::verdict::{Pending, Verdicts};

/// Whether the connection's client certificate may ask for decisions. Requests without the
/// extension come from a listener that asks for no certificate.
fn client_allowed(client: Option<&ClientCert>) -> Result<(), ApiError> {
    match client {
        None | Some(ClientCert::NotRequired | ClientCert::Allowed { .. }) => Ok(()),
        Some(ClientCert::Missing) => Err(ApiError::ClientCertificateMissing),
        Some(ClientCert::NotAllowed { names }) => {
            Err(ApiError::ClientCertificateNotAllowed(names.clone()))
        }
    }
}

/// Readiness check name and runbook anchor while the process drains after SIGTERM.
pub const SHUTTING_DOWN: &str = "shutting-down";

/// Request correlation header, echoed on every response.
const X_REQUEST_ID: &str = "x-request-id";

pub use crate::verdict::REASON_INVALID_REQUEST;

/// Limits and options of the decision API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Most checks in one batch.
    pub max_batch: usize,
    /// Serve `GET /metrics` on this listener.
    pub metrics: bool,
    /// AuthZEN answers.
    pub authzen: crate::authzen::AuthZenConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_batch: 100,
            metrics: true,
            authzen: crate::authzen::AuthZenConfig::default(),
        }
    }
}

/// The decision API: cheap to clone, one per connection.
#[derive(Debug, Clone)]
pub struct Api {
    state: Arc<State>,
    config: Arc<ApiConfig>,
    metrics: Metrics,
    audit: AuditLog,
    gate: Option<crate::gate::Gate>,
    /// The decision path over `state`, `audit` and `metrics` (rebuilt when the log changes).
    verdicts: Verdicts,
    /// Dependencies whose health decides readiness, in the order they are reported.
    probes: Vec<Arc<dyn Probe>>,
    listener: Option<Arc<(Limits, Option<Arc<Tls>>)>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Api {
    /// An API over `state`, with its metrics registry.
    pub fn new(state: Arc<State>, config: ApiConfig) -> Result<Self, MetricsError> {
        let metrics = Metrics::new()?;
        let audit = AuditLog::off();
        Ok(Self {
            verdicts: Verdicts::new(Arc::clone(&state), audit.clone(), metrics.clone()),
            state,
            config: Arc::new(config),
            metrics,
            audit,
            gate: None,
            probes: Vec::new(),
            listener: None,
        })
    }

    /// Report the limits and TLS of the listener this API serves on in `/v1/status`.
    pub fn with_listener(mut self, limits: Limits, tls: Option<Arc<Tls>>) -> Self {
        self.listener = Some(Arc::new((limits, tls)));
        self
    }

    /// Report a dependency in readiness (e.g. the proxy's `upstream`).
    pub fn with_probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probes.push(probe);
        self
    }

    /// Serve the forward-auth endpoints (`/v1/authz/envoy…`, `/v1/authz/nginx`) through `gate`,
    /// and report its authentication readiness.
    pub fn with_gate(mut self, gate: crate::gate::Gate) -> Self {
        self.probes.push(Arc::new(gate.clone()));
        self.gate = Some(gate);
        self
    }

    /// The metrics this API exports (shared with a proxy on another listener).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The decision log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Log every decision to `audit` (see [`crate::audit`]).
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = audit;
        self.verdicts = self.verdicts();
        self
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub(crate) fn metrics_response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.metrics.render(
            &self.state,
            &self.audit,
            self.readiness().0 != "unready",
        ))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// Answer one HTTP request. Never fails: every error is a JSON response. An `X-Request-ID`
    /// the caller sent is echoed on the response.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let request_id = request.headers().get(X_REQUEST_ID).cloned();
        let mut response = self.route(request).await;
        if let Some(id) = request_id {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        response
    }

    async fn route<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let endpoint = match request.uri().path() {
            "/v1/check" => Endpoint::Check,
            "/v1/check/batch" => Endpoint::Batch,
            crate::authzen::EVALUATION_PATH | crate::authzen::EVALUATIONS_PATH => Endpoint::AuthZen,
            crate::authzen::CONFIGURATION_PATH => Endpoint::Operations,
            "/healthz" | "/readyz" | "/v1/status" | "/metrics" => Endpoint::Operations,
            path if is_forward_auth(path) => Endpoint::ForwardAuth,
            _ => Endpoint::Other,
        };
        if matches!(
            endpoint,
            Endpoint::Check | Endpoint::Batch | Endpoint::AuthZen | Endpoint::ForwardAuth
        ) {
            if let Err(refusal) = client_allowed(request.extensions().get::<ClientCert>()) {
                let response = refusal.into_response();
                self.metrics.record_response(endpoint, response.status());
                return response;
            }
        }
        if endpoint == Endpoint::ForwardAuth {
            let response = match &self.gate {
                Some(gate) => {
                    let span = crate::gate::request_span(
                        "forward_auth",
                        request.method(),
                        request.uri().path(),
                    );
                    async {
                        let response = crate::forward_auth::answer(gate, request)
                            .await
                            .unwrap_or_else(ApiError::into_response);
                        tracing::debug!(status = response.status().as_u16(), "answered");
                        response
                    }
                    .instrument(span)
                    .await
                }
                None => ApiError::NotFound(
                    "forward-auth needs --routes and an authentication configuration".to_owned(),
                )
                .into_response(),
            };
            self.metrics.record_response(endpoint, response.status());
            return response;
        }
        let result = match (request.uri().path(), request.method()) {
            ("/v1/check", &Method::POST) => self.check(request).await,
            ("/v1/check/batch", &Method::POST) => self.check_batch(request).await,
            (crate::authzen::EVALUATION_PATH, &Method::POST) => {
                self.authzen_evaluation(request).await
            }
            (crate::authzen::EVALUATIONS_PATH, &Method::POST) => {
                self.authzen_evaluations(request).await
            }
            (crate::authzen::CONFIGURATION_PATH, &Method::GET | &Method::HEAD) => {
                self.authzen_configuration(&request)
            }
            (crate::authzen::EVALUATION_PATH | crate::authzen::EVALUATIONS_PATH, _) => {
                Err(ApiError::MethodNotAllowed { allow: "POST" })
            }
            (crate::authzen::CONFIGURATION_PATH, _) => {
                Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" })
            }
            ("/healthz", &Method::GET | &Method::HEAD) => Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ok"}),
            )),
            ("/readyz", &Method::GET | &Method::HEAD) => Ok(self.readyz()),
            ("/v1/status", &Method::GET | &Method::HEAD) => Ok(self.status()),
            ("/metrics", &Method::GET | &Method::HEAD) if self.config.metrics => {
                Ok(self.metrics_response())
            }
            ("/v1/check" | "/v1/check/batch", _) => {
                Err(ApiError::MethodNotAllowed { allow: "POST" })
            }
            ("/metrics", _) if self.config.metrics => {
                Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" })
            }
            ("/healthz" | "/readyz" | "/v1/status", _) => {
                Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" })
            }
            (path, _) => Err(ApiError::NotFound(path.to_owned())),
        };
        let response = result.unwrap_or_else(ApiError::into_response);
        self.metrics.record_response(endpoint, response.status());
        response
    }

    async fn check<B>(&self, request: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let body = read_json_body(request, self.config.max_body_bytes).await?;
        let check: CheckRequest = parse_json(&body)?;
        let verdicts = &self.verdicts;
        let (response, pending) = verdicts.with_engine(|engine, pending| {
            let started = Instant::now();
            let outcome = engine.decide(&check).map_err(ApiError::Request)?;
            self.metrics
                .observe_check(Endpoint::Check, started.elapsed());
            verdicts.record(
                pending,
                engine,
                "api:check",
                Some(&check),
                &outcome,
                started,
                Extra::default(),
            );
            Ok(json_response(
                StatusCode::OK,
                &CheckResponse::new(engine, outcome),
            ))
        })?;
        verdicts.commit(pending).await?;
        Ok(response)
    }

    /// The decision path (engine, record, log, count) this API's endpoints share.
    pub(crate) fn verdicts(&self) -> Verdicts {
        Verdicts::new(
            Arc::clone(&self.state),
            self.audit.clone(),
            self.metrics.clone(),
        )
    }

    async fn check_batch<B>(&self, request: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let body = read_json_body(request, self.config.max_body_bytes).await?;
        let batch: BatchRequest = parse_json(&body)?;
        if batch.checks.len() > self.config.max_batch {
            return Err(ApiError::BatchTooLarge {
                max: self.config.max_batch,
                got: batch.checks.len(),
            });
        }
        let verdicts = &self.verdicts;
        let (response, pending) = verdicts.with_engine(|engine, pending| {
            self.metrics.observe_batch(batch.checks.len());
            let started = Instant::now();
            let results: Vec<BatchItem<'_>> = batch
                .checks
                .into_iter()
                .enumerate()
                .map(|(index, item)| self.decide_item(engine, index, item, pending))
                .collect();
            self.metrics
                .observe_check(Endpoint::Batch, started.elapsed());
            Ok(json_response(StatusCode::OK, &BatchResponse { results }))
        })?;
        verdicts.commit(pending).await?;
        Ok(response)
    }

    /// Decide one batch item, recording it in `pending`.
    fn decide_item<'a>(
        &self,
        engine: &'a Engine,
        index: usize,
        item: Value,
        pending: &mut Pending,
    ) -> BatchItem<'a> {
        let started = Instant::now();
        let check: Result<CheckRequest, ApiError> = serde_path_to_error::deserialize(item)
            .map_err(|e| classify_json_error(e.path().to_string(), e.into_inner()));
        let (error, check) = match check {
            Ok(check) => match engine.decide(&check) {
                Ok(outcome) => {
                    self.verdicts.record(
                        pending,
                        engine,
                        "api:batch",
                        Some(&check),
                        &outcome,
                        started,
                        Extra::default(),
                    );
                    return BatchItem::Decided(CheckResponse::new(engine, outcome));
                }
                Err(e) => (ApiError::Request(e), Some(check)),
            },
            Err(e) => (e, None),
        };
        let outcome = self.invalid_item(engine, "api:batch", check.as_ref(), started, pending);
        BatchItem::Failed {
            decision: Decision::Deny,
            allowed: false,
            decision_id: outcome.id,
            reasons: [REASON_INVALID_REQUEST],
            policies: [],
            fail_closed: true,
            policy_version: engine.policy().hash().as_str(),
            registry_version: engine.registry().hash().as_str(),
            error: error.body_with_field_prefix(&format!("checks[{index}]")),
        }
    }

    /// An item that cannot be evaluated: a deny (`invalid_request`) with its own id, counted and
    /// logged like any other decision.
    fn invalid_item(
        &self,
        engine: &Engine,
        origin: &'static str,
        check: Option<&CheckRequest>,
        started: Instant,
        pending: &mut Pending,
    ) -> Outcome {
        self.verdicts.deny(
            pending,
            engine,
            origin,
            check,
            REASON_INVALID_REQUEST,
            started,
        )
    }

    /// Readiness: `ready`, `degraded` (the last reload failed, the previous version serves) or
    /// `unready` (nothing loaded), with one check per concern.
    fn readiness(&self) -> (&'static str, Vec<Check>) {
        let (mut status, mut checks) = self.source_readiness();
        if self.state.shutting_down() {
            checks.push(Check {
                name: "shutdown",
                status: "fail",
                reason: Some(
                    "shutting down: in-flight requests are draining, send new ones elsewhere"
                        .to_owned(),
                ),
                docs: Some(format!("docs/runbook.md#{SHUTTING_DOWN}")),
            });
            status = "unready";
        }
        for probe in &self.probes {
            let (name, problem) = (probe.name(), probe.problem());
            match probe.check() {
                Ok(()) => checks.push(Check::pass(name)),
                Err(reason) => {
                    checks.push(Check {
                        name,
                        status: "fail",
                        reason: Some(reason),
                        docs: Some(format!("docs/runbook.md#{problem}")),
                    });
                    status = "unready";
                }
            }
        }
        if self.audit.mode() == AuditMode::Required {
            if self.audit.healthy() {
                checks.push(Check::pass("decision_log"));
            } else {
                checks.push(Check {
                    name: "decision_log",
                    status: "fail",
                    reason: Some(
                        "the decision log cannot write durably; in required mode every decision is refused (503 audit_unavailable) until it can"
                            .to_owned(),
                    ),
                    docs: Some(format!("docs/runbook.md#{}", crate::audit::PROBLEM)),
                });
                return ("unready", checks);
            }
        }
        (status, checks)
    }

    fn limits_status(&self) -> Value {
        let mut limits = self
            .listener
            .as_ref()
            .map_or_else(|| serde_json::json!({}), |l| l.0.status());
        if let Some(object) = limits.as_object_mut() {
            object.insert(
                "max_body_bytes".to_owned(),
                self.config.max_body_bytes.into(),
            );
            object.insert("max_batch".to_owned(), self.config.max_batch.into());
        }
        limits
    }

    fn source_readiness(&self) -> (&'static str, Vec<Check>) {
        let loaded = self.state.current();
        match (loaded.as_ref(), self.state.last_error()) {
            (Some(_), None) => (
                "ready",
                vec![Check::pass("policy"), Check::pass("registry")],
            ),
            (Some(_), Some(failure)) => (
                "degraded",
                vec![
                    Check::pass("policy"),
                    Check::pass("registry"),
                    Check {
                        name: "reload",
                        status: "warn",
                        reason: Some(format!(
                            "last reload ({}) failed, the previous version still serves: {}",
                            failure.trigger.as_str(),
                            failure.message
                        )),
                        docs: Some(format!("docs/runbook.md#{}", failure.problem)),
                    },
                ],
            ),
            (None, failure) => {
                let (name, reason, problem) = match &failure {
                    Some(f) if f.setting == "FLEX_AUTH_POLICY" => {
                        ("policy", f.message.clone(), f.problem)
                    }
                    Some(f) => ("registry", f.message.clone(), f.problem),
                    None => ("policy", "not loaded yet".to_owned(), "not-loaded"),
                };
                (
                    "unready",
                    vec![Check {
                        name,
                        status: "fail",
                        reason: Some(reason),
                        docs: Some(format!("docs/runbook.md#{problem}")),
                    }],
                )
            }
        }
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let (status, checks) = self.readiness();
        let code = if status == "unready" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        json_response(
            code,
            &serde_json::json!({"status": status, "checks": checks}),
        )
    }

    /// `GET /v1/status`: what is loaded, from where, reload history and limits. Never a secret.
    pub(crate) fn status(&self) -> Response<Full<Bytes>> {
        let (readiness, checks) = self.readiness();
        let loaded = self.state.current();
        let sources = self.state.sources();
        let (policy, registry) = match loaded.as_ref() {
            Some(loaded) => {
                let engine = &loaded.engine;
                let package = engine.policy();
                let reg = engine.registry();
                let details = match reg.kind() {
                    RegistryKind::Snapshot {
                        schema_version,
                        generated_at,
                        source,
                        ..
                    } => serde_json::json!({
                        "format": "snapshot", "schema_version": schema_version,
                        "generated_at": generated_at, "source": source,
                    }),
                    RegistryKind::CedarEntities => serde_json::json!({"format": "cedar_entities"}),
                };
                let loaded_at = humantime::format_rfc3339_seconds(loaded.loaded_at).to_string();
                let files: Vec<String> = package
                    .sources()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                (
                    serde_json::json!({
                        "name": package.name(),
                        "declared_version": package.declared_version(),
                        "hash": package.hash().as_str(),
                        "policies": package.policy_count(),
                        "schema": package.schema().is_some(),
                        "files": files,
                        "loaded_at": loaded_at,
                    }),
                    serde_json::json!({
                        "hash": reg.hash().as_str(),
                        "entities": reg.entity_count(),
                        "details": details,
                        "loaded_at": loaded_at,
                        "load_ms": u64::try_from(loaded.load_duration.as_millis()).unwrap_or(u64::MAX),
                        "loaded_by": loaded.trigger.as_str(),
                    }),
                )
            }
            None => (Value::Null, Value::Null),
        };
        let last_error = self.state.last_error().map(|f| {
            serde_json::json!({
                "message": f.message,
                "setting": f.setting,
                "trigger": f.trigger.as_str(),
                "at": humantime::format_rfc3339_seconds(f.at).to_string(),
                "docs": format!("docs/runbook.md#{}", f.problem),
            })
        });
        let reloads: serde_json::Map<String, Value> = self
            .state
            .counters()
            .snapshot()
            .into_iter()
            .map(|(trigger, counts)| (trigger.to_owned(), serde_json::json!(counts)))
            .collect();
        json_response(
            StatusCode::OK,
            &serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "status": readiness,
                "checks": checks,
                "sources": {
                    "policy": sources.policy.display().to_string(),
                    "registry": sources.registry.path().display().to_string(),
                },
                "policy": policy,
                "registry": registry,
                "last_reload_error": last_error,
                "reloads": reloads,
                "auth": self.gate.as_ref().map_or_else(
                    || serde_json::json!({"configured": false}),
                    |g| g.auth().status(),
                ),
                "routes": self.gate.as_ref().map(|g| g.routes().len()),
                "limits": self.limits_status(),
                "tls": self.listener.as_ref().and_then(|l| l.1.as_ref()).map_or_else(
                    || serde_json::json!({"enabled": false}),
                    |tls| tls.status(),
                ),
            }),
        )
    }
}

impl crate::server::Handler for Api {
    type Body = Full<Bytes>;
    type BodyError = std::convert::Infallible;

    fn handle(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send {
        Api::handle(self, request)
    }

    /// The decision listener's probes: an overloaded instance still answers its kubelet.
    fn exempt_from_shedding(&self, request: &Request<hyper::body::Incoming>) -> bool {
        matches!(request.uri().path(), "/healthz" | "/readyz")
            && matches!(*request.method(), Method::GET | Method::HEAD)
    }
}

/// Read a JSON request body: content type checked (absent means JSON), size capped at `limit`
/// whether or not a `Content-Length` is declared.
pub async fn read_json_body<B>(request: Request<B>, limit: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(content_type) = request.headers().get(CONTENT_TYPE) {
        if !is_json(content_type) {
            return Err(ApiError::UnsupportedMediaType(
                String::from_utf8_lossy(content_type.as_bytes()).into_owned(),
            ));
        }
    }
    let declared = declared_length(request.headers());
    let admission = request.extensions().get::<Arc<Admission>>().cloned();
    crate::server::read_body(request.into_body(), declared, limit, admission.as_deref())
        .await
        .map_err(ApiError::from)
}

fn is_forward_auth(path: &str) -> bool {
    path == crate::forward_auth::NGINX_PATH
        || path == crate::forward_auth::ENVOY_PREFIX
        || path
            .strip_prefix(crate::forward_auth::ENVOY_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    checks: Vec<Value>,
}

/// The response to one check (design §3).
#[derive(Debug, Serialize)]
pub struct CheckResponse<'a> {
    decision: Decision,
    allowed: bool,
    decision_id: DecisionId,
    reasons: Vec<String>,
    policies: Vec<String>,
    fail_closed: bool,
    policy_version: &'a str,
    registry_version: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<PolicyError>,
}

impl<'a> CheckResponse<'a> {
    /// The wire form of an outcome of `engine`.
    pub fn new(engine: &'a Engine, outcome: Outcome) -> Self {
        Self {
            decision: outcome.decision,
            allowed: outcome.decision == Decision::Allow,
            decision_id: outcome.id,
            reasons: outcome.reasons,
            policies: outcome.policies,
            fail_closed: true,
            policy_version: engine.policy().hash().as_str(),
            registry_version: engine.registry().hash().as_str(),
            errors: outcome.errors,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchItem<'a> {
    Decided(CheckResponse<'a>),
    Failed {
        decision: Decision,
        allowed: bool,
        decision_id: DecisionId,
        reasons: [&'static str; 1],
        policies: [&'static str; 0],
        fail_closed: bool,
        policy_version: &'a str,
        registry_version: &'a str,
        error: ErrorBody,
    },
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    results: Vec<BatchItem<'a>>,
}

#[derive(Serialize)]
struct Check {
    name: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    docs: Option<String>,
}

impl Check {
    fn pass(name: &'static str) -> Self {
        Self {
            name,
            status: "pass",
            reason: None,
            docs: None,
        }
    }
}
