//! The gRPC listener (`serve --grpc-listen`): Envoy's external authorization service
//! (`envoy.service.auth.v3.Authorization/Check`, what Istio's `envoyExtAuthzGrpc` provider
//! calls) through the same routes and gate as the proxy and HTTP forward-auth, and the gRPC
//! health service (`grpc.health.v1.Health/Check`) reflecting readiness.
//!
//! It is a [`Handler`] on the same server as every other listener — TLS and client
//! certificates, connection and stream limits, the in-flight budget (shared with the decision
//! listener), deadlines and the drain on SIGTERM are the server's — and it speaks unary gRPC
//! itself (`frame`): one message in, one message and `grpc-status` out. Files: `frame` (the
//! wire), `ext_authz` (`CheckRequest` → gate → `CheckResponse`).
//!
//! Architecture invariant: nothing on this listener answers an ext_authz call with a gRPC error
//! or an `OK` that is not an allow: input that cannot be read, a refused client certificate, an
//! overloaded or late call, a panic — each is a `DeniedHttpResponse` with a non-OK status, so a
//! caller configured to allow on errors (`failure_mode_allow: true`) still denies.

mod ext_authz;
mod frame;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Body;
use prost::Message as _;
use tracing::Instrument as _;

use crate::gate::Gate;
use crate::http::{ApiError, Buffered};
use crate::readiness::Reporter;
use crate::server::{BodyError, Handler, Refusal};
use crate::telemetry::Endpoint;
use crate::tls::ClientCert;

pub use ext_authz::{CHECK_PATH, SERVICE};

/// The gRPC health service's unary method.
pub const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// The gRPC health service's streaming method (not served: poll `Check`).
const HEALTH_WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// Largest `HealthCheckRequest` read (a service name).
const MAX_HEALTH_MESSAGE_BYTES: usize = 1024;

/// Limits of the gRPC listener beyond the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcConfig {
    /// Largest `CheckRequest` (headers and the body Envoy forwards); larger is denied with 413.
    pub max_message_bytes: usize,
    /// Longest a check may take; a caller's sooner `grpc-timeout` shortens it to nine tenths.
    pub call_timeout: Duration,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 1024 * 1024,
            call_timeout: Duration::from_secs(5),
        }
    }
}

/// The gRPC listener's handler: cheap to clone.
#[derive(Debug, Clone)]
pub struct Grpc {
    gate: Gate,
    readiness: Arc<dyn Reporter>,
    config: Arc<GrpcConfig>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Grpc {
    /// Decide through `gate`; report `readiness` to the health service.
    pub fn new(gate: Gate, readiness: Arc<dyn Reporter>, config: GrpcConfig) -> Self {
        Self {
            gate,
            readiness,
            config: Arc::new(config),
        }
    }

    /// Answer one call. Never fails: every error is an answer.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Buffered>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let path = request.uri().path();
        let served = matches!(path, CHECK_PATH | HEALTH_CHECK_PATH | HEALTH_WATCH_PATH);
        if served && request.method() != Method::POST {
            return ApiError::MethodNotAllowed { allow: "POST" }
                .render()
                .map(Buffered::new);
        }
        if !frame::is_grpc(request.headers()) {
            let declared = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            return not_grpc(&declared);
        }
        match path {
            CHECK_PATH => self.check(request).await,
            HEALTH_CHECK_PATH => self.health(request).await,
            HEALTH_WATCH_PATH => frame::status_only(
                frame::Code::Unimplemented,
                "Watch is not served; call grpc.health.v1.Health/Check",
            ),
            other => frame::status_only(
                frame::Code::Unimplemented,
                &format!("no method `{other}` here; this listener serves {CHECK_PATH} and {HEALTH_CHECK_PATH}"),
            ),
        }
    }

    /// `Authorization/Check`, within the call's budget.
    async fn check<B>(&self, request: Request<B>) -> Response<Buffered>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let budget =
            frame::call_budget(frame::timeout(request.headers()), self.config.call_timeout);
        let answer = match tokio::time::timeout(budget, self.decide(request)).await {
            Ok(answer) => answer,
            Err(_) => {
                self.gate.metrics().deadline_exceeded();
                tracing::warn!(
                    budget = %humantime::format_duration(budget),
                    "ext_authz check not decided within its budget; denied (503)"
                );
                refused(Refusal::DeadlineExceeded)
            }
        };
        self.gate
            .metrics()
            .record_response(Endpoint::ExtAuthzGrpc, ext_authz::http_status(&answer));
        frame::answer(&answer)
    }

    async fn decide<B>(&self, request: Request<B>) -> CheckResponse
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        if let Err(refusal) = crate::gate::client_allowed(parts.extensions.get::<ClientCert>()) {
            return ext_authz::deny(refusal);
        }
        let limit = self.config.max_message_bytes;
        let message = match read_message(&parts, body, limit).await {
            Ok(message) => message,
            Err(error) => return ext_authz::deny(error),
        };
        let original = match CheckRequest::decode(message.as_ref())
            .map_err(|e| {
                ApiError::MalformedMessage(format!(
                    "not an envoy.service.auth.v3.CheckRequest: {e}"
                ))
            })
            .and_then(ext_authz::Original::read)
        {
            Ok(original) => original,
            Err(error) => return ext_authz::deny(error),
        };
        let span = crate::gate::request_span("envoy_grpc", &original.method, &original.path);
        async {
            let answer = ext_authz::check(&self.gate, &original).await;
            tracing::debug!(
                status = ext_authz::http_status(&answer).as_u16(),
                "answered"
            );
            answer
        }
        .instrument(span)
        .await
    }

    /// `Health/Check`: `SERVING` while ready (or degraded), `NOT_SERVING` when unready — also
    /// from SIGTERM on. The service is `""` or [`SERVICE`].
    async fn health<B>(&self, request: Request<B>) -> Response<Buffered>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
        let (parts, body) = request.into_parts();
        let asked = match read_message(&parts, body, MAX_HEALTH_MESSAGE_BYTES).await {
            Ok(message) => HealthCheckRequest::decode(message.as_ref()),
            Err(error) => return frame::status_only(frame::Code::InvalidArgument, error.code()),
        };
        let response = match asked {
            Err(e) => frame::status_only(
                frame::Code::InvalidArgument,
                &format!("not a grpc.health.v1.HealthCheckRequest: {e}"),
            ),
            Ok(asked) if asked.service.is_empty() || asked.service == SERVICE => {
                let status = if self.readiness.report().is_ready() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                frame::answer(&HealthCheckResponse {
                    status: status.into(),
                })
            }
            Ok(asked) => frame::status_only(
                frame::Code::NotFound,
                &format!(
                    "no service `{}` here; ask for \"\" or `{SERVICE}`",
                    asked.service
                ),
            ),
        };
        self.gate
            .metrics()
            .record_response(Endpoint::Operations, StatusCode::OK);
        response
    }
}

/// The one message of a unary call: at most `limit` bytes, within the body-read timeout, then
/// the call's in-flight slot.
async fn read_message<B>(
    parts: &http::request::Parts,
    body: B,
    limit: usize,
) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = crate::http::declared_length(&parts.headers);
    let admission = crate::gate::admission(&parts.extensions);
    let framed = crate::server::read_body(
        body,
        declared,
        limit.saturating_add(5),
        admission.as_deref(),
    )
    .await
    .map_err(|e| match e {
        BodyError::TooLarge { .. } => ApiError::BodyTooLarge { limit },
        other => ApiError::from(other),
    })?;
    let message =
        frame::unary_message(&framed).map_err(|e| ApiError::MalformedMessage(e.to_string()))?;
    Ok(framed.slice_ref(message))
}

/// A deny for a call the server or the budget refused.
fn refused(refusal: Refusal) -> CheckResponse {
    ext_authz::denied(refusal.json(), refusal.code(), None)
}

/// 415 for a request that is not gRPC (the gRPC specification's answer).
fn not_grpc(declared: &str) -> Response<Buffered> {
    let body = serde_json::json!({"error": {
        "code": "unsupported_media_type",
        "message": format!("this listener speaks gRPC (HTTP/2, `application/grpc`); got `{declared}`"),
    }});
    crate::http::json_bytes(StatusCode::UNSUPPORTED_MEDIA_TYPE, &body).map(Buffered::new)
}

impl Handler for Grpc {
    type Body = Buffered;
    type BodyError = std::convert::Infallible;

    fn handle(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> impl std::future::Future<Output = Response<Buffered>> + Send {
        Grpc::handle(self, request)
    }

    /// The health service answers even past the in-flight limit (a probe must not restart an
    /// overloaded instance).
    fn exempt_from_shedding(&self, request: &Request<hyper::body::Incoming>) -> bool {
        request.uri().path() == HEALTH_CHECK_PATH
    }

    /// A deny message, never a gRPC error: a caller that allows on errors still denies.
    fn refusal(&self, refusal: Refusal) -> Response<Buffered> {
        self.gate
            .metrics()
            .record_response(Endpoint::ExtAuthzGrpc, StatusCode::SERVICE_UNAVAILABLE);
        frame::answer(&refused(refusal))
    }
}
