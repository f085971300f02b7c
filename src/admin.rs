//! The admin API, on its own listener (`--admin-listen`, loopback by default) and only when a
//! token file is configured: `POST /v1/admin/reload` and `PUT /v1/admin/registry`, plus
//! `GET /v1/status` and `GET /metrics`. Every request needs `Authorization: Bearer <token>`, compared in constant
//! time against the token file, which is re-read on each request so it can rotate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use sha2::{Digest, Sha256};

use crate::api::{read_json_body, Api};
use crate::http::{json_response, ApiError};
use crate::registry::write_atomically;
use crate::server::Handler;
use crate::state::{ReloadOutcome, State, Trigger};

/// Why the admin API cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The token file is unreadable or empty.
    #[error("--admin-token-file `{}`: {reason}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

/// The admin API handler.
#[derive(Debug, Clone)]
pub struct Admin {
    state: Arc<State>,
    api: Api,
    token_file: Arc<PathBuf>,
    max_body_bytes: usize,
    metrics: bool,
    /// One push (validate, install, write, answer) at a time, so that each answer reports its own
    /// push's versions and memory and the registry file never disagree between two pushes.
    pushes: Arc<tokio::sync::Mutex<()>>,
}

/// Read the token: the file's content without surrounding white space, never empty.
pub fn read_token(path: &Path) -> Result<String, AdminError> {
    let text = std::fs::read_to_string(path).map_err(|e| AdminError::Token {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AdminError::Token {
            path: path.to_owned(),
            reason: "the file is empty".to_owned(),
        });
    }
    Ok(token.to_owned())
}

/// Equal in time independent of where the inputs differ: compares fixed-length digests.
fn token_matches(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl Admin {
    /// An admin API over `state`; fails when the token file cannot be used.
    pub fn new(
        state: Arc<State>,
        api: Api,
        token_file: PathBuf,
        max_body_bytes: usize,
        metrics: bool,
    ) -> Result<Self, AdminError> {
        read_token(&token_file)?;
        Ok(Self {
            state,
            api,
            token_file: Arc::new(token_file),
            max_body_bytes,
            metrics,
            pushes: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    async fn authorize<B>(&self, request: &Request<B>) -> Result<(), ApiError> {
        // Re-read on every request (a rotated Secret takes effect at once), off the async
        // workers: a slow or hung volume must not stall the runtime.
        let path = Arc::clone(&self.token_file);
        let expected = tokio::task::spawn_blocking(move || read_token(&path))
            .await
            .map_err(|e| ApiError::AdminUnavailable(format!("token read task failed: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "admin token unreadable; refusing every admin request");
                ApiError::AdminUnavailable(e.to_string())
            })?;
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        if token_matches(presented, &expected) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
        let path = request.uri().path().to_owned();
        let known = matches!(
            path.as_str(),
            "/v1/admin/reload" | "/v1/admin/registry" | "/v1/status"
        ) || (self.metrics && path == "/metrics");
        if !known {
            return Err(ApiError::NotFound(path));
        }
        self.authorize(&request).await?;
        match (path.as_str(), request.method()) {
            ("/v1/admin/reload", &Method::POST) => self.reload().await,
            ("/v1/admin/registry", &Method::PUT) => self.put_registry(request).await,
            ("/v1/status", &Method::GET | &Method::HEAD) => Ok(self.api.status()),
            ("/metrics", &Method::GET | &Method::HEAD) => Ok(self.api.metrics_response()),
            ("/v1/admin/reload", _) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
            ("/v1/admin/registry", _) => Err(ApiError::MethodNotAllowed { allow: "PUT" }),
            _ => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
        }
    }

    async fn reload(&self) -> Result<Response<Full<Bytes>>, ApiError> {
        let shadow = self.reload_shadow().await;
        let with_shadow = |mut body: serde_json::Value| {
            if let (Some(shadow), Some(map)) = (&shadow, body.as_object_mut()) {
                map.insert("shadow".into(), shadow.clone());
            }
            body
        };
        if let Some(watcher) = self.api.bundle() {
            // Serving a bundle: a reload is a check of its source, now.
            return match watcher.check(Trigger::Admin).await {
                Ok(outcome) => {
                    let outcome = match outcome {
                        crate::bundle::watch::CheckOutcome::Updated(_) => "loaded",
                        crate::bundle::watch::CheckOutcome::Unchanged => "unchanged",
                    };
                    tracing::info!(outcome, "admin reload of the bundle");
                    Ok(json_response(
                        StatusCode::OK,
                        &with_shadow(self.versions(outcome, None)),
                    ))
                }
                Err(message) => Err(ApiError::Rejected(message)),
            };
        }
        let state = self.state.clone();
        let result = tokio::task::spawn_blocking(move || state.reload(Trigger::Admin))
            .await
            .map_err(|e| ApiError::Rejected(format!("reload task failed: {e}")))?;
        match result {
            Ok(outcome) => {
                let outcome = if outcome == ReloadOutcome::Loaded {
                    "loaded"
                } else {
                    "unchanged"
                };
                tracing::info!(outcome, "admin reload");
                Ok(json_response(
                    StatusCode::OK,
                    &with_shadow(self.versions(outcome, None)),
                ))
            }
            Err(failure) => {
                if self.state.current().is_some() {
                    tracing::warn!(error = %failure.message, "admin reload failed; the previous version keeps serving");
                } else {
                    tracing::warn!(error = %failure.message, "admin reload failed; nothing is loaded yet");
                }
                Err(ApiError::Rejected(failure.message.clone()))
            }
        }
    }

    /// Validate a pushed registry against the package in force and install it: atomically into
    /// the registry file when flex-auth may write it (the watcher then sees the same content),
    /// else in memory only, and say which.
    async fn put_registry(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, ApiError> {
        let body = read_json_body(request, self.max_body_bytes).await?;
        // 400 `duplicate_key` with its path, like every other body (the loader would refuse it too).
        crate::http::reject_duplicate_keys(&body)?;
        let _one_push_at_a_time = self.pushes.lock().await;
        let state = self.state.clone();
        let result = tokio::task::spawn_blocking(move || {
            state.install_registry(&body, "pushed registry")?;
            // `install_registry` refuses a push when there are no files, so there is a path.
            let path = state
                .sources()
                .map(|s| s.registry.path().to_owned())
                .unwrap_or_default();
            Ok::<_, Arc<crate::state::ReloadFailure>>(
                write_atomically(&path, &body).map_err(|e| (path, e)),
            )
        })
        .await
        .map_err(|e| ApiError::Rejected(format!("install task failed: {e}")))?;
        match result {
            Err(failure) => {
                tracing::warn!(error = %failure.message, "pushed registry rejected");
                Err(ApiError::Rejected(failure.message.clone()))
            }
            Ok(Ok(())) => {
                tracing::info!("pushed registry installed and written to the registry file");
                Ok(json_response(
                    StatusCode::OK,
                    &self.versions("loaded", Some(("file", None))),
                ))
            }
            Ok(Err((path, e))) => {
                let note = format!(
                    "installed in memory only: cannot write `{}` ({e}); it serves until the file on disk changes or the process restarts",
                    path.display()
                );
                tracing::warn!(%note, "pushed registry installed in memory");
                Ok(json_response(
                    StatusCode::OK,
                    &self.versions("loaded", Some(("memory", Some(note)))),
                ))
            }
        }
    }

    /// Reload the shadow (when one is configured) and say what happened; its failure fails
    /// nothing else.
    async fn reload_shadow(&self) -> Option<serde_json::Value> {
        let shadow = Arc::clone(self.state.shadow_state()?);
        let result = tokio::task::spawn_blocking(move || {
            let result = shadow.reload(Trigger::Admin);
            (result, shadow)
        })
        .await;
        Some(match result {
            Ok((Ok(outcome), shadow)) => {
                let loaded = shadow.current();
                serde_json::json!({
                    "outcome": if outcome == ReloadOutcome::Loaded { "loaded" } else { "unchanged" },
                    "policy_version": loaded.as_ref().map(|l| l.engine.policy().hash().to_string()),
                    "registry_version": loaded.as_ref().map(|l| l.engine.registry().hash().to_string()),
                })
            }
            Ok((Err(failure), _)) => {
                tracing::warn!(error = %failure.message, "admin reload of the shadow failed; the live package is not affected");
                serde_json::json!({"outcome": "failed", "error": failure.message, "setting": failure.setting})
            }
            Err(e) => {
                serde_json::json!({"outcome": "failed", "error": format!("reload task failed: {e}")})
            }
        })
    }

    fn versions(
        &self,
        outcome: &str,
        installed: Option<(&str, Option<String>)>,
    ) -> serde_json::Value {
        let loaded = self.state.current();
        let (policy, registry) = loaded.as_ref().map_or((None, None), |l| {
            (
                Some(l.engine.policy().hash().to_string()),
                Some(l.engine.registry().hash().to_string()),
            )
        });
        let mut body = serde_json::Map::new();
        body.insert("outcome".into(), serde_json::json!(outcome));
        body.insert("policy_version".into(), serde_json::json!(policy));
        body.insert("registry_version".into(), serde_json::json!(registry));
        if let Some(revision) = loaded.as_ref().and_then(|l| l.engine.bundle_revision()) {
            body.insert("bundle_revision".into(), serde_json::json!(revision));
        }
        if let Some((target, note)) = installed {
            body.insert("installed".into(), serde_json::json!(target));
            if let Some(note) = note {
                body.insert("note".into(), serde_json::json!(note));
            }
        }
        serde_json::Value::Object(body)
    }
}

impl Handler for Admin {
    type Body = Full<Bytes>;
    type BodyError = std::convert::Infallible;
    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        self.route(request)
            .await
            .unwrap_or_else(ApiError::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cret2"));
        assert!(!token_matches("", "s3cret"));
    }
}
