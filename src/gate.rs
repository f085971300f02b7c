//! The gate every surface that fronts a service goes through — the reverse proxy, the
//! forward-auth endpoints (Envoy `ext_authz` HTTP, nginx `auth_request`) and Envoy `ext_authz`
//! over gRPC: match a route, authenticate the bearer credential, read the body only when the
//! route needs it, decide, record. A surface forwards or answers allow only with an [`Allowed`].
//! The authorizers that answer instead of forwarding (forward-auth, gRPC) share one path,
//! [`Gate::authorize_target`].
//!
//! Architecture invariant: a request that matches no route is a logged deny (`no_route`), and a
//! decision is handed to the decision log (in required mode: made durable) before the gate
//! returns an [`Allowed`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method};

use crate::audit::AuditLog;
use crate::auth::{AuthError, Authenticator};
use crate::decision::{CheckRequest, Decision, DecisionId, ResourceRef, SubjectRef};
use crate::http::ApiError;
use crate::routes::{Check, Inputs, Route, Routes};
use crate::server::Admission;
use crate::state::State;
use crate::telemetry::{Endpoint, Metrics};
use crate::tls::ClientCert;
use crate::verdict::Verdicts;

pub use crate::decision::REASON_NO_ROUTE;
pub use crate::http::{DECISION_HEADER, SUBJECT_HEADER};

/// Where a request came in, for records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The reverse proxy listener.
    Proxy,
    /// `/v1/authz/envoy…`.
    Envoy,
    /// `/v1/authz/nginx`.
    Nginx,
    /// `envoy.service.auth.v3.Authorization/Check` on the gRPC listener.
    EnvoyGrpc,
}

impl Surface {
    /// As written in a record's `origin` (before `:ROUTE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::Envoy => "envoy",
            Self::Nginx => "nginx",
            Self::EnvoyGrpc => "envoy-grpc",
        }
    }

    /// The endpoint its decisions are timed and its responses counted under.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Self::Proxy => Endpoint::Proxy,
            Self::Envoy | Self::Nginx => Endpoint::ForwardAuth,
            Self::EnvoyGrpc => Endpoint::ExtAuthzGrpc,
        }
    }
}

/// A request the gate let through with a decision.
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The allow's decision id.
    pub decision_id: DecisionId,
    /// The authenticated subject.
    pub subject: String,
}

/// Route, authenticate, decide, record: shared by the proxy and the forward-auth endpoints.
#[derive(Debug, Clone)]
pub struct Gate {
    routes: Arc<Routes>,
    auth: Arc<Authenticator>,
    metrics: Metrics,
    verdicts: Verdicts,
}

/// What a request matched: a public route (forwarded without a credential or a decision) or one
/// that decides. A public route has no check, so it cannot reach [`Gate::authorize`].
#[derive(Debug)]
pub enum Matched<'r> {
    /// `public: true`.
    Public(&'r Route),
    /// A route with a check.
    Checked(Checked<'r>),
}

/// A matched route that decides, with its check and path parameters.
#[derive(Debug)]
pub struct Checked<'r> {
    /// The route.
    pub route: &'r Route,
    /// What it decides.
    pub check: &'r Check,
    /// Path parameters (name, percent-decoded value).
    pub params: Vec<(String, String)>,
}

/// A request's method, path, query and headers, as the gate reads them.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The method.
    pub method: &'a Method,
    /// The raw path.
    pub path: &'a str,
    /// The raw query.
    pub query: Option<&'a str>,
    /// The headers (with the credential).
    pub headers: &'a HeaderMap,
}

impl crate::readiness::Probe for Gate {
    fn name(&self) -> &'static str {
        "jwks"
    }
    fn problem(&self) -> &'static str {
        crate::auth::PROBLEM
    }
    fn check(&self) -> Result<(), String> {
        self.readiness()
    }
}

impl Gate {
    /// A gate over the loaded state.
    pub fn new(
        state: Arc<State>,
        routes: Arc<Routes>,
        auth: Arc<Authenticator>,
        audit: AuditLog,
        metrics: Metrics,
    ) -> Self {
        Self {
            routes,
            auth,
            verdicts: Verdicts::new(state, audit, metrics.clone()),
            metrics,
        }
    }

    /// The authenticator.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// The metrics its surfaces record into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// The route for a request: `Err` for an ambiguous path, and a logged deny (`no_route`) when
    /// none matches.
    pub async fn route(
        &self,
        surface: Surface,
        target: &Target<'_>,
    ) -> Result<Matched<'_>, ApiError> {
        match self.routes.find(target.method, target.path) {
            Err(problem) => Err(ApiError::AmbiguousPath(problem.to_string())),
            Ok(Some((route, params))) => Ok(match &route.check {
                None => Matched::Public(route),
                Some(check) => Matched::Checked(Checked {
                    route,
                    check,
                    params,
                }),
            }),
            Ok(None) => Err(self.deny_unrouted(surface).await),
        }
    }

    async fn deny_unrouted(&self, surface: Surface) -> ApiError {
        let started = Instant::now();
        let denied = self.verdicts.decide(|engine, pending| {
            let outcome = self.verdicts.deny(
                pending,
                engine,
                surface.as_str(),
                None,
                REASON_NO_ROUTE,
                started,
            );
            Ok(ApiError::forbidden(engine, &outcome))
        });
        match denied.await {
            Ok(denied) | Err(denied) => denied,
        }
    }

    /// Authenticate and decide a routed, non-public request. `body` is the request body when the
    /// route reads it (`None` when it cannot be had, e.g. nginx `auth_request`).
    pub async fn authorize(
        &self,
        surface: Surface,
        matched: &Checked<'_>,
        target: &Target<'_>,
        body: Option<&[u8]>,
    ) -> Result<Allowed, ApiError> {
        let Checked {
            route,
            check,
            params,
        } = matched;
        let principal = self.authenticate(route, target).await?;
        let parsed_body = parse_body(route, target, body)?;
        let request =
            self.check_request(check, params, target, &principal, parsed_body.as_ref())?;
        let origin = format!("{}:{}", surface.as_str(), route.name);
        self.verdicts
            .decide(|engine, pending| {
                let started = Instant::now();
                let outcome = self
                    .verdicts
                    .evaluate(pending, engine, |e| e.decide(&request))
                    .map_err(ApiError::Request)?;
                self.metrics
                    .observe_check(surface.endpoint(), started.elapsed());
                self.verdicts.record(
                    pending,
                    engine,
                    &origin,
                    Some(&request),
                    &outcome,
                    started,
                    crate::audit::Extra {
                        credential_sha256: Some(&principal.credential_sha256),
                        ..crate::audit::Extra::default()
                    },
                );
                tracing::Span::current()
                    .record("decision_id", tracing::field::display(&outcome.id));
                Ok(match outcome.decision {
                    Decision::Allow => Ok(Allowed {
                        decision_id: outcome.id,
                        subject: principal.subject.clone(),
                    }),
                    Decision::Deny
                        if outcome
                            .reasons
                            .iter()
                            .any(|r| r == crate::decision::REASON_POLICY_ERROR) =>
                    {
                        Err(ApiError::PolicyFailure(outcome.id))
                    }
                    Decision::Deny => Err(ApiError::forbidden(engine, &outcome)),
                })
            })
            .await?
    }

    /// Route, authenticate and decide a request for an authorizer that answers instead of
    /// forwarding (forward-auth, gRPC `ext_authz`): `Ok(None)` for a public route, an
    /// [`Allowed`] for an allow, the refusal otherwise. `body` is called with the matched
    /// route before deciding: it takes the request's in-flight slot and gives the request body
    /// when the route reads it (`route.body_limit`), `None` when that body cannot be had.
    pub async fn authorize_target(
        &self,
        surface: Surface,
        target: &Target<'_>,
        body: impl AsyncFnOnce(&Route) -> Result<Option<Bytes>, ApiError>,
    ) -> Result<Option<Allowed>, ApiError> {
        let matched = match self.route(surface, target).await? {
            Matched::Public(_) => return Ok(None),
            Matched::Checked(checked) => checked,
        };
        let body = body(matched.route).await?;
        self.authorize(surface, &matched, target, body.as_deref())
            .await
            .map(Some)
    }

    /// The verified principal, or the 401 (503 when keys cannot be had) that refuses it.
    async fn authenticate(
        &self,
        route: &Route,
        target: &Target<'_>,
    ) -> Result<crate::auth::Principal, ApiError> {
        self.auth.authenticate(target.headers).await.map_err(|e| {
            self.metrics.record_auth_failure(e.reason());
            tracing::debug!(reason = e.reason(), error = %e, route = %route.name, "credential refused");
            ApiError::Unauthenticated {
                message: e.to_string(),
                unavailable: matches!(e, AuthError::Unavailable(_)),
            }
        })
    }

    /// The check the route asks for, with values read from the request.
    fn check_request(
        &self,
        check: &Check,
        params: &[(String, String)],
        target: &Target<'_>,
        principal: &crate::auth::Principal,
        body: Option<&serde_json::Value>,
    ) -> Result<CheckRequest, ApiError> {
        let inputs = Inputs {
            query: target.query,
            headers: target.headers,
            claims: &principal.claims,
            body,
        };
        let (resource_id, context) =
            check
                .extract(params, &inputs)
                .map_err(|e| ApiError::RouteInput {
                    field: e.field.clone(),
                    message: e.to_string(),
                })?;
        Ok(CheckRequest {
            subject: SubjectRef {
                entity_type: self.routes.subject_type.clone(),
                id: principal.subject.clone(),
            },
            action: check.action.clone(),
            resource: ResourceRef {
                entity_type: check.resource_type.clone(),
                id: resource_id,
            },
            context: Some(context),
        })
    }

    /// The `jwks` readiness check: `Ok` or why not.
    pub fn readiness(&self) -> Result<(), String> {
        self.auth.readiness().map_err(|e| e.message)
    }
}

/// The span of one proxied or forward-auth request; `decision_id` is filled in once decided, so
/// every event of the request (refusals, upstream failures, the `answered` line at debug) carries
/// it. Headers are never recorded: the credential must not reach a log.
pub fn request_span(surface: &'static str, method: &Method, path: &str) -> tracing::Span {
    tracing::info_span!(
        "request",
        surface,
        method = %method,
        path = %path,
        decision_id = tracing::field::Empty
    )
}

/// Whether the connection's client certificate may ask for decisions (on a listener with
/// `--client-ca`): 401 without one, 403 when its names are not allowed. Requests without the
/// extension come from a listener that asks for no certificate.
pub fn client_allowed(client: Option<&ClientCert>) -> Result<(), ApiError> {
    match client {
        None | Some(ClientCert::NotRequired | ClientCert::Allowed { .. }) => Ok(()),
        Some(ClientCert::Missing) => Err(ApiError::ClientCertificateMissing),
        Some(ClientCert::NotAllowed { names }) => {
            Err(ApiError::ClientCertificateNotAllowed(names.clone()))
        }
    }
}

/// The request's admission (see [`crate::server::Admission`]); in-process callers have none.
pub fn admission(extensions: &http::Extensions) -> Option<Arc<Admission>> {
    extensions.get::<Arc<Admission>>().cloned()
}

/// Take the request's in-flight slot before deciding on a request whose body is not buffered.
pub fn admit(extensions: &http::Extensions) -> Result<(), ApiError> {
    match extensions.get::<Arc<Admission>>() {
        Some(admission) => admission.admit().map_err(|_| ApiError::Overloaded),
        None => Ok(()),
    }
}

/// The body as JSON when the route reads it: `body_unavailable` when it cannot be had, and read
/// only as the type it declares — a form (or anything else) that happens to parse as JSON would
/// be authorized on values the upstream never sees.
fn parse_body(
    route: &Route,
    target: &Target<'_>,
    body: Option<&[u8]>,
) -> Result<Option<serde_json::Value>, ApiError> {
    match (route.body_limit, body) {
        (None, _) => Ok(None),
        (Some(_), None) => Err(ApiError::BodyUnavailable(route.name.clone())),
        (Some(_), Some(bytes)) => {
            let declared = target.headers.get(http::header::CONTENT_TYPE);
            if !declared.is_some_and(crate::http::is_json) {
                return Err(ApiError::UnsupportedMediaType(
                    declared.map_or_else(String::new, |v| {
                        String::from_utf8_lossy(v.as_bytes()).into_owned()
                    }),
                ));
            }
            Ok(Some(
                crate::json::parse_value(bytes).map_err(ApiError::from)?,
            ))
        }
    }
}
