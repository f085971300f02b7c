//! The probes and the status page: `/readyz` (one [`Report`] from the loaded sources and every
//! registered probe), `/v1/status` (what is loaded, from where, reload history, limits, auth,
//! TLS; never a secret) and `/metrics` (whose `flex_auth_ready` reads the same report).

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use std::sync::Arc;

use super::Api;
use crate::http::json_response;
use crate::readiness::{Check, Report, Status};
use crate::registry::RegistryKind;
use crate::state::{Loaded, ReloadFailure, State};

impl crate::readiness::Reporter for Api {
    fn report(&self) -> Report {
        self.readiness()
    }
}

impl Api {
    /// Readiness: `ready`, `degraded` (the last reload failed, the previous version serves) or
    /// `unready` (nothing loaded, or a registered probe fails), with one check per concern.
    pub(super) fn readiness(&self) -> Report {
        self.readiness_of(self.state.current().is_some(), self.state.last_error())
    }

    /// Readiness of one snapshot of the state, so a page that shows the last reload error also
    /// shows the readiness that goes with it.
    fn readiness_of(&self, loaded: bool, last_error: Option<Arc<ReloadFailure>>) -> Report {
        let (status, checks) = Self::source_readiness(loaded, last_error);
        Report::new(status, checks, &self.probes)
    }

    /// `GET /metrics`: the Prometheus text exposition.
    pub(crate) fn metrics_response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.metrics.render(
            &self.state,
            &self.audit,
            self.readiness().is_ready(),
            self.bundle.as_deref(),
        ))));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
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

    fn source_readiness(
        loaded: bool,
        last_error: Option<Arc<ReloadFailure>>,
    ) -> (Status, Vec<Check>) {
        match (loaded, last_error) {
            (true, None) => (
                Status::Ready,
                vec![Check::pass("policy"), Check::pass("registry")],
            ),
            (true, Some(failure)) => (
                Status::Degraded,
                vec![
                    Check::pass("policy"),
                    Check::pass("registry"),
                    Check::warn(
                        "reload",
                        format!(
                            "last reload ({}) failed, the previous version still serves: {}",
                            failure.trigger.as_str(),
                            failure.message
                        ),
                        failure.problem,
                    ),
                ],
            ),
            (false, failure) => {
                let (name, reason, problem) = match &failure {
                    Some(f) if f.setting == "FLEX_AUTH_POLICY" => {
                        ("policy", f.message.clone(), f.problem)
                    }
                    Some(f) => ("registry", f.message.clone(), f.problem),
                    None => ("policy", "not loaded yet".to_owned(), "not-loaded"),
                };
                (Status::Unready, vec![Check::fail(name, reason, problem)])
            }
        }
    }

    pub(super) fn readyz(&self) -> Response<Full<Bytes>> {
        let report = self.readiness();
        let code = if report.is_ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(code, &report)
    }

    /// `GET /v1/status`: what is loaded, from where, reload history and limits. Never a secret.
    pub(crate) fn status(&self) -> Response<Full<Bytes>> {
        let loaded = self.state.current();
        let last_reload_error = self.state.last_error();
        let Report {
            status: readiness,
            checks,
        } = self.readiness_of(loaded.is_some(), last_reload_error.clone());
        let sources = self.state.origin();
        let (policy, registry) = loaded_json(&self.state, loaded.as_ref());
        let last_error = last_reload_error.as_deref().map(failure_json);
        let reloads = reloads_json(&self.state);
        json_response(
            StatusCode::OK,
            &serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "status": readiness,
                "checks": checks,
                "sources": match sources {
                    crate::state::Origin::Files(sources) => serde_json::json!({
                        "policy": sources.policy.display().to_string(),
                        "registry": sources.registry.path().display().to_string(),
                    }),
                    crate::state::Origin::Bundle { url } => serde_json::json!({"bundle": url}),
                },
                "bundle": self.bundle.as_ref().map(|b| b.status_json()),
                "shadow": self.state.shadow_state().map(|shadow| shadow_json(shadow)),
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

/// The `policy` and `registry` sections of what `state` has loaded (`null` when nothing).
fn loaded_json(state: &State, loaded: Option<&Arc<Loaded>>) -> (Value, Value) {
    match loaded {
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
                    "bytes": reg.bytes(),
                    "load_phases_ms": load_phases_ms(reg.phases(), state.last_swap()),
                    "loaded_by": loaded.trigger.as_str(),
                }),
            )
        }
        None => (Value::Null, Value::Null),
    }
}

/// A reload failure as `/v1/status` shows it.
fn failure_json(f: &ReloadFailure) -> Value {
    serde_json::json!({
        "message": f.message,
        "setting": f.setting,
        "trigger": f.trigger.as_str(),
        "at": humantime::format_rfc3339_seconds(f.at).to_string(),
        "docs": format!("docs/runbook.md#{}", f.problem),
    })
}

/// Reload counts by trigger.
fn reloads_json(state: &State) -> serde_json::Map<String, Value> {
    state
        .counters()
        .snapshot()
        .into_iter()
        .map(|(trigger, counts)| (trigger.to_owned(), serde_json::json!(counts)))
        .collect()
}

/// The `shadow` section: where it reads from, what it has loaded, its last failure. A shadow
/// never takes part in readiness, so this is the only place its state shows.
fn shadow_json(shadow: &State) -> Value {
    let loaded = shadow.current();
    let (policy, registry) = loaded_json(shadow, loaded.as_ref());
    serde_json::json!({
        "loaded": loaded.is_some(),
        "sources": shadow.sources().map(|sources| serde_json::json!({
            "policy": sources.policy.display().to_string(),
            "registry": sources.registry.path().display().to_string(),
        })),
        "policy": policy,
        "registry": registry,
        "last_reload_error": shadow.last_error().as_deref().map(failure_json),
        "reloads": reloads_json(shadow),
    })
}

/// The last load's phases in milliseconds (fractions kept: a swap takes microseconds).
fn load_phases_ms(phases: crate::registry::LoadPhases, swap: std::time::Duration) -> Value {
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
    serde_json::json!({
        "read": ms(phases.read),
        "parse_validate": ms(phases.parse_validate),
        "compile": ms(phases.compile),
        "swap": ms(swap),
    })
}
