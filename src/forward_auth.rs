//! Forward-auth endpoints for a proxy already in the pod, evaluated through the same routes,
//! authentication and policy as the reverse proxy:
//!
//! - Envoy `ext_authz` (HTTP service): Envoy sends the original method and headers to
//!   `/v1/authz/envoy` + the original path (its `path_prefix`), and the body when configured to.
//! - nginx `auth_request`: a subrequest to `/v1/authz/nginx` with `X-Original-URI` and
//!   `X-Original-Method`.
//!
//! An allow is `200` with **no body** (nginx closes the connection after an auth response that
//! has one) and the `x-flex-auth-decision-id` / `x-flex-auth-subject` headers for the proxy to
//! pass upstream; a refusal is 401 / 403 / 503 with a JSON body.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Body;

use crate::gate::{Gate, Surface, Target, DECISION_HEADER, SUBJECT_HEADER};
use crate::http::ApiError;

/// The nginx `auth_request` endpoint.
pub const NGINX_PATH: &str = "/v1/authz/nginx";
/// The Envoy `ext_authz` path prefix (the original path follows it).
pub const ENVOY_PREFIX: &str = "/v1/authz/envoy";

/// Answer one forward-auth request.
pub async fn answer<B>(gate: &Gate, request: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let (surface, method, path_and_query) = if parts.uri.path() == NGINX_PATH {
        let uri = header_text(&parts.headers, "x-original-uri")?
            .ok_or_else(|| ApiError::MissingField("X-Original-URI header".to_owned()))?;
        let method = match header_text(&parts.headers, "x-original-method")? {
            Some(m) => Method::from_bytes(m.as_bytes()).map_err(|_| ApiError::InvalidField {
                field: "X-Original-Method".to_owned(),
                message: format!("`{m}` is not an HTTP method"),
            })?,
            None => {
                return Err(ApiError::MissingField(
                    "X-Original-Method header".to_owned(),
                ))
            }
        };
        (Surface::Nginx, method, uri.to_owned())
    } else {
        let original = parts
            .uri
            .path_and_query()
            .map_or("", http::uri::PathAndQuery::as_str)
            .strip_prefix(ENVOY_PREFIX)
            .unwrap_or("");
        let original = if original.is_empty() || original.starts_with('?') {
            format!("/{original}")
        } else {
            original.to_owned()
        };
        (Surface::Envoy, parts.method.clone(), original)
    };
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query.as_str(), None),
    };
    let target = Target {
        method: &method,
        path,
        query,
        headers: &parts.headers,
    };
    // Envoy sends the body when `with_request_body` is set; nginx never does.
    let allowed = gate
        .authorize_target(surface, &target, async |route| {
            match (surface, route.body_limit) {
                (Surface::Envoy, Some(limit)) => {
                    let declared = crate::http::declared_length(&parts.headers);
                    let admission = crate::gate::admission(&parts.extensions);
                    let bytes =
                        crate::server::read_body(body, declared, limit, admission.as_deref())
                            .await
                            .map_err(ApiError::from)?;
                    Ok((!bytes.is_empty()).then_some(bytes))
                }
                _ => {
                    crate::gate::admit(&parts.extensions)?;
                    Ok(None)
                }
            }
        })
        .await?;
    Ok(allow_response(allowed.as_ref()))
}

fn header_text<'h>(headers: &'h http::HeaderMap, name: &str) -> Result<Option<&'h str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::InvalidField {
                field: name.to_owned(),
                message: "is not ASCII text".to_owned(),
            }),
    }
}

/// `200`, no body, the decision id and subject as headers.
fn allow_response(allowed: Option<&crate::gate::Allowed>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::OK;
    if let Some(allowed) = allowed {
        let headers = response.headers_mut();
        if let Ok(id) = HeaderValue::from_str(&allowed.decision_id.to_string()) {
            headers.insert(DECISION_HEADER, id);
        }
        if let Ok(subject) = HeaderValue::from_str(&allowed.subject) {
            headers.insert(SUBJECT_HEADER, subject);
        }
    }
    response
}
