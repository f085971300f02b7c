//! HTTP handlers of the decision listener. This file owns dispatch: which path and method go
//! where, the client-certificate gate for decision endpoints, `X-Request-ID`, and per-endpoint
//! response counts. `check` answers `/v1/check` and batches, `health` the probes and
//! `/v1/status`, `authzen_http` the AuthZEN endpoints; forward-auth goes through the gate.
//!
//! Raw JSON becomes a typed [`CheckRequest`] here, once, at the edge; every error becomes a
//! response in one place, [`ApiError::into_response`].

mod authzen_http;
mod check;
mod health;

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;
use tracing::Instrument as _;

use crate::audit::{AuditLog, Mode as AuditMode};
#[cfg(doc)]
use crate::decision::CheckRequest;
pub use crate::http::ApiError;
use crate::http::{declared_length, is_json, json_response};
use crate::readiness::Probe;
use crate::server::{Admission, Limits};
use crate::state::State;
use crate::telemetry::{Endpoint, Metrics, MetricsError};
use crate::tls::{ClientCert, Tls};
use crate::verdict::Verdicts;

pub use crate::state::SHUTTING_DOWN;
pub use crate::verdict::REASON_INVALID_REQUEST;

/// Request correlation header, echoed on every response.
const X_REQUEST_ID: &str = "x-request-id";

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
    /// The bundle source, when serving from one (status, metrics, readiness).
    bundle: Option<Arc<crate::bundle::watch::Watcher>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Api {
    /// An API over `state`, with its metrics registry.
    pub fn new(state: Arc<State>, config: ApiConfig) -> Result<Self, MetricsError> {
        let metrics = Metrics::new()?;
        let audit = AuditLog::off();
        // The state owns shutdown: from SIGTERM on, readiness fails before listeners close.
        let shutdown: Arc<dyn Probe> = Arc::clone(&state) as Arc<dyn Probe>;
        Ok(Self {
            verdicts: Verdicts::new(Arc::clone(&state), audit.clone(), metrics.clone()),
            state,
            config: Arc::new(config),
            metrics,
            audit,
            gate: None,
            probes: vec![shutdown],
            listener: None,
            bundle: None,
        })
    }

    /// Serving from a bundle: report its source in status, metrics and readiness (`bundle`).
    pub fn with_bundle(mut self, watcher: Arc<crate::bundle::watch::Watcher>) -> Self {
        self.probes.push(Arc::clone(&watcher) as Arc<dyn Probe>);
        self.bundle = Some(watcher);
        self
    }

    /// The bundle watcher, when serving from a bundle.
    pub fn bundle(&self) -> Option<&Arc<crate::bundle::watch::Watcher>> {
        self.bundle.as_ref()
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
        self.probes.retain(|p| p.name() != "decision_log");
        if audit.mode() == AuditMode::Required {
            self.probes.push(Arc::new(audit.clone()));
        }
        self.audit = audit;
        self.verdicts = self.verdicts();
        self
    }

    /// The decision path (engine, record, log, count) this API's endpoints share.
    pub(crate) fn verdicts(&self) -> Verdicts {
        Verdicts::new(
            Arc::clone(&self.state),
            self.audit.clone(),
            self.metrics.clone(),
        )
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
            if let Err(refusal) =
                crate::gate::client_allowed(request.extensions().get::<ClientCert>())
            {
                let response = refusal.into_response();
                self.metrics.record_response(endpoint, response.status());
                return response;
            }
        }
        let response = if endpoint == Endpoint::ForwardAuth {
            self.forward_auth(request).await
        } else {
            self.dispatch(request)
                .await
                .unwrap_or_else(ApiError::into_response)
        };
        self.metrics.record_response(endpoint, response.status());
        response
    }

    /// `/v1/authz/envoy…` and `/v1/authz/nginx`, through the gate when there is one.
    async fn forward_auth<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        match &self.gate {
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
        }
    }

    /// Every other endpoint by path and method.
    async fn dispatch<B>(&self, request: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        match (request.uri().path(), request.method()) {
            ("/v1/check", &Method::POST) => {
                let body = read_json_body(request, self.config.max_body_bytes).await?;
                self.check(crate::http::parse_json_fast::<
                    crate::decision::CheckRequest,
                    crate::decision::StrictCheckRequest,
                >(&body)?)
                    .await
            }
            ("/v1/check/batch", &Method::POST) => {
                self.check_batch(self.json_body(request).await?).await
            }
            (crate::authzen::EVALUATION_PATH, &Method::POST) => {
                self.authzen_evaluation(self.json_body(request).await?)
                    .await
            }
            (crate::authzen::EVALUATIONS_PATH, &Method::POST) => {
                self.authzen_evaluations(self.json_body(request).await?)
                    .await
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
        }
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

impl Api {
    /// The request's JSON body as `T`: content type, `--max-body-bytes`, the body deadline and
    /// strict parsing (duplicate keys refused, the field at fault named).
    async fn json_body<T, B>(&self, request: Request<B>) -> Result<T, ApiError>
    where
        T: serde::de::DeserializeOwned,
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let body = read_json_body(request, self.config.max_body_bytes).await?;
        crate::http::parse_json(&body)
    }

    /// 413 `batch_too_large` past `--max-batch`.
    fn within_batch_limit(&self, got: usize) -> Result<(), ApiError> {
        let max = self.config.max_batch;
        if got > max {
            return Err(ApiError::BatchTooLarge { max, got });
        }
        Ok(())
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
