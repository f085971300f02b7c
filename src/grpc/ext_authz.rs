//! `envoy.service.auth.v3.Authorization/Check`: Envoy's description of the original request
//! becomes the same [`Target`] the proxy and HTTP forward-auth hand the gate, and the gate's
//! answer becomes a `CheckResponse`.
//!
//! Architecture invariant: every answer is a successful call. An allow is `status: OK` with an
//! `OkHttpResponse`; everything else — a deny, a refused credential, input that cannot be read, a
//! decision that cannot be made — is a non-OK status with a `DeniedHttpResponse`, which Envoy
//! enforces even with `failure_mode_allow: true` (only transport errors and `error_response`
//! fall under that setting, and flex-auth sends neither).

use std::collections::HashMap;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as ProtoHeader, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc::Status;
use http::header::{HeaderName, HeaderValue, HOST};
use http::{HeaderMap, Method, Response, StatusCode};

use super::frame::Code;
use crate::decision::DecisionId;
use crate::gate::{Allowed, Gate, Surface, Target, DECISION_HEADER, SUBJECT_HEADER};
use crate::http::ApiError;
use crate::routes::Route;

/// The gRPC service Envoy's `ext_authz` filter calls.
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";
/// Its one method.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The header Envoy sets when `with_request_body.allow_partial_message` cut the body short.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// The original request, as Envoy describes it.
#[derive(Debug)]
pub struct Original {
    /// The method.
    pub method: Method,
    /// The raw path, without the query.
    pub path: String,
    /// The raw query (after the first `?`).
    pub query: Option<String>,
    /// Every header (lower-cased names), with `host` from the request's authority.
    pub headers: HeaderMap,
    /// The body, when Envoy sent it (`with_request_body`); empty otherwise.
    pub body: Bytes,
    /// Envoy sent only the first part of the body.
    pub partial: bool,
}

impl Original {
    /// Read `attributes.request.http` of a `CheckRequest`.
    pub fn read(request: CheckRequest) -> Result<Self, ApiError> {
        let http = request
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http)
            .ok_or_else(|| ApiError::MissingField("attributes.request.http".to_owned()))?;
        let HttpRequest {
            method,
            headers,
            header_map,
            path,
            host,
            body,
            raw_body,
            ..
        } = http;
        if method.is_empty() {
            return Err(ApiError::MissingField(
                "attributes.request.http.method".to_owned(),
            ));
        }
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| ApiError::InvalidField {
            field: "attributes.request.http.method".to_owned(),
            message: format!("`{method}` is not an HTTP method"),
        })?;
        if path.is_empty() {
            return Err(ApiError::MissingField(
                "attributes.request.http.path".to_owned(),
            ));
        }
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (path, None),
        };
        let raw = header_map.map(|m| m.headers).unwrap_or_default();
        let mut header_map = if raw.is_empty() {
            merged_headers(headers)?
        } else if headers.is_empty() {
            raw_headers(raw)?
        } else {
            // Two lists could say different things; Envoy sends one or the other.
            return Err(ApiError::MalformedMessage(
                "`headers` and `header_map` are both set; Envoy sends one of them".to_owned(),
            ));
        };
        if !host.is_empty() {
            header_map.insert(HOST, header_value("host", host.into_bytes())?);
        }
        // `raw_body` with `pack_as_bytes`, `body` (UTF-8) otherwise; never both.
        let body = match (raw_body.is_empty(), body.is_empty()) {
            (_, true) => Bytes::from(raw_body),
            (true, false) => Bytes::from(body),
            (false, false) => {
                return Err(ApiError::MalformedMessage(
                    "`body` and `raw_body` are both set; Envoy sends one of them".to_owned(),
                ))
            }
        };
        let partial = header_map
            .get(PARTIAL_BODY_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
            || crate::http::declared_length(&header_map)
                .is_some_and(|declared| declared > body.len() as u64 && !body.is_empty());
        Ok(Self {
            method,
            path,
            query,
            headers: header_map,
            body,
            partial,
        })
    }

    /// As the gate reads a request.
    pub fn target(&self) -> Target<'_> {
        Target {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }

    /// The body for a route that reads it (with its limit): `None` when Envoy sent none, a 413
    /// when it sent only part of it or more than the route accepts.
    fn body_for(&self, route: &Route) -> Result<Option<Bytes>, ApiError> {
        let Some(limit) = route.body_limit else {
            return Ok(None);
        };
        if self.body.is_empty() {
            return Ok(None);
        }
        if self.partial {
            return Err(ApiError::BodyPartial {
                route: route.name.clone(),
                received: self.body.len(),
            });
        }
        if self.body.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        Ok(Some(self.body.clone()))
    }

    /// Incoming `x-flex-auth-*` headers, except the ones an allow sets (Envoy applies removals
    /// after it sets headers, so removing those would remove flex-auth's own).
    fn spoofed_headers(&self, set_by_allow: bool) -> Vec<String> {
        self.headers
            .keys()
            .map(HeaderName::as_str)
            .filter(|name| name.starts_with("x-flex-auth-"))
            .filter(|name| !(set_by_allow && (*name == DECISION_HEADER || *name == SUBJECT_HEADER)))
            .map(str::to_owned)
            .collect()
    }
}

/// `headers` (Envoy merged repeated headers into one value): a name given twice — only possible
/// by case — is refused rather than resolved in map order.
fn merged_headers(headers: HashMap<String, String>) -> Result<HeaderMap, ApiError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (key, value) in headers {
        if key.starts_with(':') {
            continue;
        }
        let name = header_name(&key)?;
        if map.contains_key(&name) {
            return Err(ApiError::MalformedMessage(format!(
                "header `{name}` is named twice in `headers`"
            )));
        }
        map.insert(name, header_value(&key, value.into_bytes())?);
    }
    Ok(map)
}

/// `header_map.headers` (`encode_raw_headers`): repeated headers stay repeated.
fn raw_headers(headers: Vec<ProtoHeader>) -> Result<HeaderMap, ApiError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for header in headers {
        if header.key.starts_with(':') {
            continue;
        }
        let name = header_name(&header.key)?;
        let value = if header.raw_value.is_empty() {
            header.value.into_bytes()
        } else {
            header.raw_value
        };
        map.append(name, header_value(&header.key, value)?);
    }
    Ok(map)
}

fn header_name(key: &str) -> Result<HeaderName, ApiError> {
    HeaderName::from_bytes(key.as_bytes()).map_err(|_| ApiError::InvalidField {
        field: "attributes.request.http.headers".to_owned(),
        message: format!("`{}` is not a header name", key.escape_debug()),
    })
}

fn header_value(key: &str, value: Vec<u8>) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_bytes(&value).map_err(|_| ApiError::InvalidField {
        field: format!("attributes.request.http.headers.{}", key.escape_debug()),
        message: "is not a valid header value".to_owned(),
    })
}

/// Decide `original` through the gate and answer Envoy.
pub async fn check(gate: &Gate, original: &Original) -> CheckResponse {
    let target = original.target();
    let answer = gate
        .authorize_target(Surface::EnvoyGrpc, &target, async |route| {
            original.body_for(route)
        })
        .await;
    match answer {
        Ok(allowed) => allow(original, allowed.as_ref()),
        Err(error) => deny(error),
    }
}

/// An allow: the decision id and subject set on the request Envoy forwards, every other
/// incoming `x-flex-auth-*` removed. A public route sets nothing and removes them all.
pub fn allow(original: &Original, allowed: Option<&Allowed>) -> CheckResponse {
    let mut headers = Vec::new();
    let mut metadata = vec![("decision", string("allow")), ("reasons", list(&[]))];
    if let Some(allowed) = allowed {
        let id = allowed.decision_id.to_string();
        headers.push(overwrite(DECISION_HEADER, &id));
        headers.push(overwrite(SUBJECT_HEADER, &allowed.subject));
        metadata.push(("decision_id", string(&id)));
    }
    CheckResponse {
        status: Some(Status {
            code: Code::Ok.as_i32(),
            ..Status::default()
        }),
        dynamic_metadata: Some(structure(metadata)),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: original.spoofed_headers(allowed.is_some()),
            ..OkHttpResponse::default()
        })),
    }
}

/// A refusal: the same status, headers and JSON body the HTTP surfaces answer, inside a
/// `DeniedHttpResponse`.
pub fn deny(error: ApiError) -> CheckResponse {
    let decided = match &error {
        ApiError::Forbidden(body) => Some((body.decision_id(), body.reasons().to_vec())),
        ApiError::PolicyFailure(id) => {
            Some((*id, vec![crate::decision::REASON_POLICY_ERROR.to_owned()]))
        }
        _ => None,
    };
    let code = error.code();
    denied(error.render(), code, decided)
}

/// A denied answer from a rendered HTTP refusal: its status, headers and body, a gRPC code that
/// says which kind of refusal it is, and the metadata Envoy's access log can show.
pub fn denied(
    rendered: Response<Bytes>,
    error: &str,
    decided: Option<(DecisionId, Vec<String>)>,
) -> CheckResponse {
    let (parts, body) = rendered.into_parts();
    let status = parts.status;
    let headers = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some(overwrite(name.as_str(), value.to_str().ok()?)))
        .collect();
    let mut metadata = vec![
        ("decision", string("deny")),
        ("error", string(error)),
        ("status", number(f64::from(status.as_u16()))),
    ];
    match &decided {
        Some((id, reasons)) => {
            metadata.push(("decision_id", string(&id.to_string())));
            metadata.push(("reasons", list(reasons)));
        }
        None => metadata.push(("reasons", list(&[]))),
    }
    CheckResponse {
        status: Some(Status {
            code: rpc_code(status).as_i32(),
            message: error.to_owned(),
            ..Status::default()
        }),
        dynamic_metadata: Some(structure(metadata)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status.as_u16()),
            }),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })),
    }
}

/// The HTTP status an answer tells Envoy to send (200 for an allow), for the response metrics.
pub fn http_status(response: &CheckResponse) -> StatusCode {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied
            .status
            .as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::FORBIDDEN),
        _ if response.status.as_ref().is_some_and(|s| s.code == 0) => StatusCode::OK,
        _ => StatusCode::FORBIDDEN,
    }
}

/// The gRPC code of a refusal: never `OK` (which would allow).
fn rpc_code(status: StatusCode) -> Code {
    match status {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        s if s.is_server_error() => Code::Unavailable,
        s if s.is_client_error() => Code::InvalidArgument,
        _ => Code::PermissionDenied,
    }
}

fn overwrite(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(ProtoHeader {
            key: key.to_owned(),
            value: value.to_owned(),
            ..ProtoHeader::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

fn string(text: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(text.to_owned())),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn list(items: &[String]) -> Value {
    Value {
        kind: Some(Kind::ListValue(ListValue {
            values: items.iter().map(|s| string(s)).collect(),
        })),
    }
}

fn structure(fields: Vec<(&str, Value)>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}
