//! The HTTP vocabulary every surface shares, and nothing else: the error type each of them
//! returns ([`ApiError`]) and its one mapping to a status, a JSON body with a stable `code` (and
//! `WWW-Authenticate`, `Retry-After`, `Allow`, the decision id where they apply); JSON request
//! parsing that names the field at fault and refuses duplicate keys; JSON responses; the
//! `x-flex-auth-*` header names.
//!
//! Architecture invariant: `http` is a leaf. It knows nothing of policy loading, the proxy, the
//! server or authentication; of our modules it uses only `decision` (the types a deny carries)
//! and `json` (strict parsing). Surfaces convert their own errors into an [`ApiError`] where
//! they happen.
//!
//! `json_body` turns JSON parse errors into field-path errors: the one place that reads
//! serde's messages. `Buffered` is a whole response body with optional trailers (gRPC's status
//! travels in them), the body type of answers built in memory.

use ::http::header::{
    HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use ::http::{HeaderMap, Response, StatusCode};
use bytes::Bytes;
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;

use std::borrow::Cow;

mod json_body;

pub use json_body::{classify_json_error, parse_json, parse_json_fast, reject_duplicate_keys};

use crate::decision::{Decision, DecisionId, Engine, Outcome, PolicyError, RequestError};

/// The header carrying the decision id to the upstream (and back to the client).
pub const DECISION_HEADER: &str = "x-flex-auth-decision-id";
/// The header carrying the authenticated subject to the upstream.
pub const SUBJECT_HEADER: &str = "x-flex-auth-subject";

/// A response body held whole in memory, optionally followed by trailers: a JSON answer, or a
/// gRPC message with its `grpc-status` trailer. One data frame, then the trailers, then the end.
#[derive(Debug, Default)]
pub struct Buffered {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    /// A body of `data` (nothing when empty).
    pub fn new(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }

    /// The same body followed by `trailers`.
    pub fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.trailers = Some(trailers);
        self
    }
}

impl hyper::body::Body for Buffered {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let frame = match self.data.take() {
            Some(data) => Some(hyper::body::Frame::data(data)),
            None => self.trailers.take().map(hyper::body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        hyper::body::SizeHint::with_exact(len)
    }
}

/// What a 401 says about a refused credential: its problem, never its content.
pub fn www_authenticate(problem: &str) -> HeaderValue {
    let description: String = problem
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
        .collect();
    HeaderValue::from_str(&format!(
        "Bearer realm=\"flex-auth\", error=\"invalid_token\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| {
        HeaderValue::from_static("Bearer realm=\"flex-auth\", error=\"invalid_token\"")
    })
}

/// The `Content-Length` a request declares, if it is a number.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Whether a `Content-Type` is JSON (`application/json` or `application/…+json`, any parameters).
pub fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    // Compared without a lower-cased copy: media types are case-insensitive (RFC 9110 §8.3.1).
    let prefix = "application/";
    let is_application = essence
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix));
    let subtype = essence.get(prefix.len()..).unwrap_or("");
    is_application
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() >= "+json".len()
                && subtype
                    .get(subtype.len() - "+json".len()..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// Everything that can go wrong answering a request.
#[derive(Debug)]
pub enum ApiError {
    /// The body is not JSON.
    InvalidJson(String),
    /// An object in the body names a key twice (the JSON path of the second one).
    DuplicateKey(String),
    /// A required field is absent.
    MissingField(String),
    /// A field the API does not know.
    UnknownField(String),
    /// A field has the wrong type or value.
    InvalidField {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The engine rejected the request for this package.
    Request(RequestError),
    /// Body over the limit.
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Batch over the limit.
    BatchTooLarge {
        /// The limit.
        max: usize,
        /// What was sent.
        got: usize,
    },
    /// Content type other than JSON.
    UnsupportedMediaType(String),
    /// The body could not be read.
    BodyRead(String),
    /// The body did not arrive within the body-read timeout (408).
    BodyTimeout(std::time::Duration),
    /// The in-flight limit is reached (503 with `Retry-After`).
    Overloaded,
    /// No such path.
    NotFound(String),
    /// Path exists, method does not.
    MethodNotAllowed {
        /// The `Allow` header value.
        allow: &'static str,
    },
    /// No policy package and registry are loaded.
    NotReady(String),
    /// The bundle source has not been reached for longer than `--bundle-max-staleness`: the
    /// operator chose to refuse rather than decide on an old policy.
    BundleStale(String),
    /// Missing or wrong admin bearer token.
    Unauthorized,
    /// The admin token file cannot be read: nothing is authorized.
    AdminUnavailable(String),
    /// A pushed registry or a reload was rejected; nothing changed.
    Rejected(String),
    /// Required decision log cannot make the record durable: no decision is given.
    AuditUnavailable,
    /// A proxied or forward-auth request without a valid bearer credential (401), or one whose
    /// credential cannot be verified right now (503, `unavailable`).
    Unauthenticated {
        /// What is wrong with the credential (never its content).
        message: String,
        /// The keys or secret cannot be loaded: nobody can be verified right now.
        unavailable: bool,
    },
    /// Denied by policy or for want of a route: 403 with the decision.
    Forbidden(Box<DecisionBody<'static>>),
    /// The policy failed to evaluate: the request is refused (503) under this decision id.
    PolicyFailure(DecisionId),
    /// A path an upstream could read differently (dot segments, encoded slashes).
    AmbiguousPath(String),
    /// A value the route needs is absent or unusable.
    RouteInput {
        /// Where the route takes it from (`body./role`, `query.account`, …).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The route reads the body, which forward-auth does not receive.
    BodyUnavailable(String),
    /// The route reads the body, and the caller sent only its first part (Envoy's
    /// `with_request_body` with `allow_partial_message`): 413.
    BodyPartial {
        /// The route.
        route: String,
        /// The bytes received.
        received: usize,
    },
    /// A binary (protobuf / gRPC) request message that cannot be read: 400.
    MalformedMessage(String),
    /// The upstream refused the connection or failed mid-answer (502).
    UpstreamUnavailable(String),
    /// The upstream did not answer in time (504).
    UpstreamTimeout(std::time::Duration),
    /// A decision endpoint on a listener with `--client-ca`, over a connection without a client
    /// certificate (401).
    ClientCertificateMissing,
    /// The client certificate carries none of the allowed SAN names (403).
    ClientCertificateNotAllowed(Vec<String>),
}

/// The one wire shape of a decision (design §3): the `/v1/check` answer, every batch item (with
/// `error` when the item could not be evaluated), and the body of a proxied or forward-auth 403.
#[derive(Debug, Serialize)]
pub struct DecisionBody<'a> {
    decision: Decision,
    allowed: bool,
    decision_id: DecisionId,
    reasons: Vec<String>,
    policies: Vec<String>,
    fail_closed: bool,
    policy_version: Cow<'a, str>,
    registry_version: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle_revision: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<PolicyError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

impl<'a> DecisionBody<'a> {
    /// The wire form of an outcome of `engine`.
    pub fn new(engine: &'a Engine, outcome: Outcome) -> Self {
        Self {
            decision: outcome.decision,
            allowed: outcome.decision == Decision::Allow,
            decision_id: outcome.id,
            reasons: outcome.reasons,
            policies: outcome.policies,
            fail_closed: true,
            policy_version: Cow::Borrowed(engine.policy().hash().as_str()),
            registry_version: Cow::Borrowed(engine.registry().hash().as_str()),
            bundle_revision: engine.bundle_revision().map(Cow::Borrowed),
            errors: outcome.errors,
            error: None,
        }
    }

    /// The same decision with the error that made it (an item that could not be evaluated).
    pub fn with_error(mut self, error: ErrorBody) -> Self {
        self.error = Some(error);
        self
    }

    /// The decision id.
    pub fn decision_id(&self) -> DecisionId {
        self.decision_id
    }

    /// The reason codes.
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }
}

/// The JSON `error` object.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// Stable, machine-readable.
    pub code: &'static str,
    /// For a person.
    pub message: String,
    /// The field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// The 403 for a deny of `engine`. Policy evaluation errors stay out of it: the caller of a
    /// proxied route is not the operator (they are in the decision record).
    pub fn forbidden(engine: &Engine, outcome: &Outcome) -> Self {
        Self::Forbidden(Box::new(DecisionBody {
            decision: Decision::Deny,
            allowed: false,
            decision_id: outcome.id,
            reasons: outcome.reasons.clone(),
            policies: outcome.policies.clone(),
            fail_closed: true,
            policy_version: Cow::Owned(engine.policy().hash().as_str().to_owned()),
            registry_version: Cow::Owned(engine.registry().hash().as_str().to_owned()),
            bundle_revision: engine.bundle_revision().map(|r| Cow::Owned(r.to_owned())),
            errors: Vec::new(),
            error: None,
        }))
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::DuplicateKey(_)
            | Self::MissingField(_)
            | Self::UnknownField(_)
            | Self::InvalidField { .. }
            | Self::Request(_)
            | Self::AmbiguousPath(_)
            | Self::RouteInput { .. }
            | Self::MalformedMessage(_)
            | Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated {
                unavailable: true, ..
            }
            | Self::PolicyFailure(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated { .. } | Self::ClientCertificateMissing => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_)
            | Self::BodyUnavailable(_)
            | Self::ClientCertificateNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge { .. } | Self::BatchTooLarge { .. } | Self::BodyPartial { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotReady(_)
            | Self::BundleStale(_)
            | Self::AdminUnavailable(_)
            | Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn body(&self) -> ErrorBody {
        let (code, message, field) = match self {
            Self::InvalidJson(m) => (
                "invalid_json",
                format!("request body is not valid JSON: {m}"),
                None,
            ),
            Self::DuplicateKey(path) => (
                "duplicate_key",
                format!("duplicate key `{path}`: an object may name a key only once"),
                Some(path.clone()),
            ),
            Self::MissingField(f) => (
                "missing_field",
                format!("missing required field `{f}`"),
                Some(f.clone()),
            ),
            Self::UnknownField(f) => (
                "unknown_field",
                format!("unknown field `{f}`"),
                Some(f.clone()),
            ),
            Self::InvalidField { field, message } => (
                "invalid_field",
                format!("`{field}`: {message}"),
                Some(field.clone()),
            ),
            Self::Request(e) => (
                "invalid_request",
                format!("`{}`: {}", e.field, e.message),
                Some(e.field.to_owned()),
            ),
            Self::BodyTooLarge { limit } => (
                "body_too_large",
                format!("request body exceeds {limit} bytes"),
                None,
            ),
            Self::BatchTooLarge { max, got } => (
                "batch_too_large",
                format!("batch holds {got} checks; at most {max} are accepted"),
                Some("checks".to_owned()),
            ),
            Self::UnsupportedMediaType(ct) if ct.is_empty() => (
                "unsupported_media_type",
                "the body is read as JSON only when it says so: send `Content-Type: application/json`".to_owned(),
                None,
            ),
            Self::UnsupportedMediaType(ct) => (
                "unsupported_media_type",
                format!("content type `{ct}` is not supported; send `application/json`"),
                None,
            ),
            Self::BodyRead(m) => (
                "body_read_error",
                format!("could not read the request body: {m}"),
                None,
            ),
            Self::BodyTimeout(after) => (
                "body_timeout",
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(*after)
                ),
                None,
            ),
            Self::Overloaded => (
                "overloaded",
                "too many requests in flight; retry shortly (treat as deny)".to_owned(),
                None,
            ),
            Self::NotFound(p) => ("not_found", format!("no endpoint at `{p}`"), None),
            Self::MethodNotAllowed { allow } => (
                "method_not_allowed",
                format!("method not allowed; use {allow}"),
                None,
            ),
            Self::Unauthorized => (
                "unauthorized",
                "missing or wrong bearer token".to_owned(),
                None,
            ),
            Self::AdminUnavailable(m) => (
                "admin_unavailable",
                format!("the admin token cannot be read, so nothing is authorized: {m}"),
                None,
            ),
            Self::Rejected(m) => ("rejected", format!("rejected, nothing changed: {m}"), None),
            Self::AuditUnavailable => (
                "audit_unavailable",
                "the decision log cannot record this decision durably, so none is given: treat as deny"
                    .to_owned(),
                None,
            ),
            Self::NotReady(m) => (
                "not_ready",
                format!("cannot decide, treat as deny: {m}"),
                None,
            ),
            Self::BundleStale(m) => (
                "bundle_stale",
                format!("the policy in force is older than --bundle-max-staleness allows, treat as deny: {m}"),
                None,
            ),
            Self::Unauthenticated {
                message,
                unavailable: true,
            } => ("auth_unavailable", message.clone(), None),
            Self::Unauthenticated { message, .. } => ("unauthenticated", message.clone(), None),
            Self::Forbidden(denied)
                if denied.reasons.iter().any(|r| r == crate::decision::REASON_NO_ROUTE) =>
            {
                (
                    "forbidden",
                    "no route matches this method and path; denied".to_owned(),
                    None,
                )
            }
            Self::Forbidden(_) => ("forbidden", "denied by policy".to_owned(), None),
            Self::PolicyFailure(id) => (
                "policy_error",
                format!("the policy could not be evaluated ({id}); refused, treat as deny"),
                None,
            ),
            Self::AmbiguousPath(m) => (
                "ambiguous_path",
                format!("refused: {m}"),
                None,
            ),
            Self::RouteInput { field, message } => {
                ("invalid_request", message.clone(), Some(field.clone()))
            }
            Self::BodyUnavailable(route) => (
                "body_unavailable",
                format!("route `{route}` decides on the request body, which this endpoint does not receive; denied"),
                None,
            ),
            Self::BodyPartial { route, received } => (
                "body_partial",
                format!("route `{route}` decides on the request body, and only its first {received} bytes arrived (raise the proxy's body buffer, e.g. Envoy's `with_request_body.max_request_bytes`); denied"),
                None,
            ),
            Self::MalformedMessage(m) => (
                "malformed_message",
                format!("the request message cannot be read: {m}"),
                None,
            ),
            Self::UpstreamUnavailable(m) => ("upstream_unavailable", m.clone(), None),
            Self::UpstreamTimeout(after) => (
                "upstream_timeout",
                format!("the upstream did not answer within {}", humantime::format_duration(*after)),
                None,
            ),
            Self::ClientCertificateMissing => (
                "client_certificate_required",
                "this listener decides only for clients with a certificate from its client CA; connect with one"
                    .to_owned(),
                None,
            ),
            Self::ClientCertificateNotAllowed(names) => (
                "client_certificate_not_allowed",
                format!(
                    "the client certificate's names ({}) are not on the allow-list (--client-allowed-san)",
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ),
                None,
            ),
        };
        ErrorBody {
            code,
            message,
            field,
        }
    }

    /// The stable, machine-readable `error.code`.
    pub fn code(&self) -> &'static str {
        self.body().code
    }

    /// The error object with `prefix` before its field (`checks[3].context.ttl_hours`).
    pub fn body_with_field_prefix(&self, prefix: &str) -> ErrorBody {
        let mut body = self.body();
        body.field = Some(match body.field.take() {
            Some(f) => format!("{prefix}.{f}"),
            None => prefix.to_owned(),
        });
        body
    }

    /// The HTTP response for this error: the one place errors become status codes.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        self.render().map(Full::new)
    }

    /// [`ApiError::into_response`] with the body as bytes, for a surface that carries the
    /// answer in another envelope (gRPC ext_authz's denied response).
    pub fn render(self) -> Response<Bytes> {
        let status = self.status();
        let body = self.body();
        let payload = match &self {
            Self::Forbidden(denied) => {
                let mut payload = serde_json::to_value(denied).unwrap_or(Value::Null);
                if let Some(object) = payload.as_object_mut() {
                    object.insert("error".to_owned(), serde_json::json!(body));
                }
                payload
            }
            Self::PolicyFailure(id) => {
                serde_json::json!({"error": body, "fail_closed": true, "decision_id": id})
            }
            _ if status.is_server_error() => {
                serde_json::json!({"error": body, "fail_closed": true})
            }
            _ => serde_json::json!({"error": body}),
        };
        let mut response = json_bytes(status, &payload);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::Unauthenticated { message, .. } = &self {
            if status == StatusCode::UNAUTHORIZED {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, www_authenticate(message));
            }
        }
        if let Self::Forbidden(denied) = &self {
            if let Ok(value) = HeaderValue::from_str(&denied.decision_id.to_string()) {
                response.headers_mut().insert(DECISION_HEADER, value);
            }
        }
        if let Self::MethodNotAllowed { allow } = self {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"flex-auth admin\""),
            );
        }
        response
    }
}

/// A JSON response with `status` (503 if, against expectation, `body` cannot be encoded).
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    json_bytes(status, body).map(Full::new)
}

/// [`json_response`] with the body as bytes.
pub fn json_bytes<T: Serialize>(status: StatusCode, body: &T) -> Response<Bytes> {
    // Serializing our own response types cannot fail (string keys, no custom serializers that
    // error); should it ever, answer 503 rather than an empty 200.
    // A decision answer is ~300 bytes: one allocation, not a doubling from empty.
    let mut bytes = Vec::with_capacity(512);
    let (status, bytes) = match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => (status, bytes),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":"internal_error","message":"could not encode the response"},"fail_closed":true}"#.to_vec(),
        ),
    };
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/authzen+json",
            " APPLICATION/Problem+JSON ;q=1",
        ] {
            assert!(is_json(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/jsonx",
            "application/json+x",
            "applicationjson",
            "text/json",
            "text/x+json",
            "application",
            "",
        ] {
            assert!(!is_json(&HeaderValue::from_static(bad)), "{bad}");
        }
    }
}
