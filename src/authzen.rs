//! The OpenID AuthZEN Authorization API 1.0 over the same engine as `/v1/check`:
//! `POST /access/v1/evaluation`, `POST /access/v1/evaluations` and
//! `GET /.well-known/authzen-configuration`. This module owns the wire format and the mapping to
//! a [`CheckRequest`] (docs/authzen.md); deciding, logging and counting are the decision API's.
//!
//! Mapping: `subject.type`/`resource.type` are Cedar entity type names used verbatim, `id` the
//! entity id, `properties` the entity's attributes for this request (as `--authzen-properties`
//! says: by default only added where the store says nothing), `action.name` is
//! `Action::"<name>"`, `context` the Cedar context.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::decision::PropertiesMode;
use crate::decision::{
    CheckRequest, Decision, Engine, Outcome, RequestError, ResourceRef, SubjectRef,
};

/// `POST /access/v1/evaluation`.
pub const EVALUATION_PATH: &str = "/access/v1/evaluation";
/// `POST /access/v1/evaluations`.
pub const EVALUATIONS_PATH: &str = "/access/v1/evaluations";
/// `GET /.well-known/authzen-configuration`.
pub const CONFIGURATION_PATH: &str = "/.well-known/authzen-configuration";

/// How AuthZEN answers are shaped.
#[derive(Debug, Clone, Default)]
pub struct AuthZenConfig {
    /// The public base URL (`https://pdp.example.com`) for the metadata document; when unset,
    /// it is derived from the request's `Host` and the listener's scheme.
    pub base_url: Option<String>,
    /// Answer exactly `{"decision": bool}` (no response context), for strict clients such as
    /// the AuthZEN interop runner.
    pub decision_only: bool,
    /// What `subject.properties` / `resource.properties` may do to the loaded entities.
    pub properties: PropertiesMode,
}

/// An AuthZEN subject or resource. Unknown fields are ignored, as the specification asks.
#[derive(Debug, Clone, Deserialize)]
pub struct EntityRef {
    /// Cedar entity type name, verbatim.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Entity id.
    pub id: String,
    /// Attributes of the entity for this request.
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

/// An AuthZEN action.
#[derive(Debug, Clone, Deserialize)]
pub struct ActionRef {
    /// The action name: Cedar `Action::"<name>"`.
    pub name: String,
    /// Accepted and not used by the Cedar mapping (Cedar actions carry no request attributes).
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
}

/// One access evaluation request.
#[derive(Debug, Clone, Deserialize)]
pub struct Evaluation {
    /// Who asks.
    pub subject: EntityRef,
    /// What they want to do.
    pub action: ActionRef,
    /// What on.
    pub resource: EntityRef,
    /// The Cedar context.
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

impl Evaluation {
    /// The mapping to flex-auth: the check (what the decision log records) and the properties
    /// that are merged over the stored entities for this request. Moves, never copies.
    pub fn into_mapped(self) -> Mapped {
        Mapped {
            check: CheckRequest {
                subject: SubjectRef {
                    entity_type: Some(self.subject.entity_type),
                    id: self.subject.id,
                },
                action: self.action.name,
                resource: ResourceRef {
                    entity_type: self.resource.entity_type,
                    id: self.resource.id,
                },
                context: self.context,
            },
            subject_properties: self.subject.properties,
            resource_properties: self.resource.properties,
        }
    }
}

/// An evaluation mapped onto the engine's terms.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// Subject, action, resource and context.
    pub check: CheckRequest,
    /// `subject.properties`.
    pub subject_properties: Option<Map<String, Value>>,
    /// `resource.properties`.
    pub resource_properties: Option<Map<String, Value>>,
}

impl Mapped {
    /// Decide it on `engine` (the one place an AuthZEN request meets the engine), with
    /// properties applied as `mode` says.
    pub fn decide(&self, engine: &Engine, mode: PropertiesMode) -> Result<Outcome, RequestError> {
        engine.decide_with_properties(
            &self.check,
            self.subject_properties.as_ref(),
            self.resource_properties.as_ref(),
            mode,
        )
    }

    /// The properties as the decision log records them: `{"subject": …, "resource": …}` with
    /// the ones the request sent, or `None` when it sent none.
    pub fn recorded_properties(&self) -> Option<Value> {
        if self.subject_properties.is_none() && self.resource_properties.is_none() {
            return None;
        }
        let mut map = Map::new();
        if let Some(props) = &self.subject_properties {
            map.insert("subject".to_owned(), Value::Object(props.clone()));
        }
        if let Some(props) = &self.resource_properties {
            map.insert("resource".to_owned(), Value::Object(props.clone()));
        }
        Some(Value::Object(map))
    }
}

/// `POST /access/v1/evaluations`: top-level defaults and the items. Items stay raw JSON so that
/// one malformed item is that item's error, not the whole request's.
#[derive(Debug, Deserialize)]
pub struct EvaluationsRequest {
    /// Default subject.
    #[serde(default)]
    pub subject: Option<Value>,
    /// Default action.
    #[serde(default)]
    pub action: Option<Value>,
    /// Default resource.
    #[serde(default)]
    pub resource: Option<Value>,
    /// Default context.
    #[serde(default)]
    pub context: Option<Value>,
    /// The evaluations; absent or empty means the top level is one evaluation.
    #[serde(default)]
    pub evaluations: Option<Vec<Value>>,
    /// Execution options.
    #[serde(default)]
    pub options: Option<Options>,
}

/// `options` of an evaluations request.
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    /// How far to go.
    #[serde(default)]
    pub evaluations_semantic: Semantic,
}

/// `options.evaluations_semantic`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Semantic {
    /// Evaluate every item.
    #[default]
    ExecuteAll,
    /// Stop after the first deny (or error); the array ends with it.
    DenyOnFirstDeny,
    /// Stop after the first permit; the array ends with it.
    PermitOnFirstPermit,
}

impl Semantic {
    /// Whether evaluation stops after an item with this decision.
    pub fn stops_after(self, allowed: bool) -> bool {
        match self {
            Self::ExecuteAll => false,
            Self::DenyOnFirstDeny => !allowed,
            Self::PermitOnFirstPermit => allowed,
        }
    }
}

impl EvaluationsRequest {
    /// Item `index` with the top-level defaults filled in for the keys it does not give.
    pub fn item(&self, item: &Value) -> Value {
        let mut merged = match item {
            Value::Object(map) => map.clone(),
            // Not an object: leave it as it is so that parsing reports it.
            other => return other.clone(),
        };
        for (key, default) in [
            ("subject", &self.subject),
            ("action", &self.action),
            ("resource", &self.resource),
            ("context", &self.context),
        ] {
            if let (false, Some(default)) = (merged.contains_key(key), default) {
                merged.insert(key.to_owned(), default.clone());
            }
        }
        Value::Object(merged)
    }

    /// The top level as one evaluation (no `evaluations` array).
    pub fn top_level(&self) -> Value {
        let mut map = Map::new();
        for (key, value) in [
            ("subject", &self.subject),
            ("action", &self.action),
            ("resource", &self.resource),
            ("context", &self.context),
        ] {
            if let Some(value) = value {
                map.insert(key.to_owned(), value.clone());
            }
        }
        Value::Object(map)
    }
}

/// One AuthZEN answer.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationResponse {
    /// `true` only on allow.
    pub decision: bool,
    /// flex-auth's context: decision id, reasons, policies, versions; or the item's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
}

impl EvaluationResponse {
    /// The answer to a decided evaluation.
    pub fn decided(
        outcome: &Outcome,
        policy_version: &str,
        registry_version: &str,
        bundle_revision: Option<&str>,
        decision_only: bool,
    ) -> Self {
        let allowed = outcome.decision == Decision::Allow;
        let context = (!decision_only).then(|| {
            let mut context = Map::new();
            context.insert("decision_id".into(), outcome.id.to_string().into());
            context.insert("policies".into(), serde_json::json!(outcome.policies));
            context.insert("policy_version".into(), policy_version.into());
            context.insert("registry_version".into(), registry_version.into());
            if let Some(revision) = bundle_revision {
                context.insert("bundle_revision".into(), revision.into());
            }
            if !allowed {
                context.insert("reasons".into(), serde_json::json!(outcome.reasons));
            }
            Value::Object(context)
        });
        Self {
            decision: allowed,
            context,
        }
    }

    /// The answer to an item that could not be evaluated: a deny carrying the error (and the
    /// decision id it was logged under).
    pub fn failed(outcome: &Outcome, status: u16, message: String, decision_only: bool) -> Self {
        let context = (!decision_only).then(|| {
            serde_json::json!({
                "decision_id": outcome.id.to_string(),
                "reasons": outcome.reasons,
                "error": {"status": status, "message": message},
            })
        });
        Self {
            decision: false,
            context,
        }
    }
}

/// `{"evaluations": [...]}`.
#[derive(Debug, Serialize)]
pub struct EvaluationsResponse {
    /// In request order, up to where the semantic stopped.
    pub evaluations: Vec<EvaluationResponse>,
}

/// The PDP metadata document for `base` (no trailing slash).
pub fn configuration(base: &str) -> Value {
    serde_json::json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}{EVALUATION_PATH}"),
        "access_evaluations_endpoint": format!("{base}{EVALUATIONS_PATH}"),
    })
}

/// Check a configured `--authzen-base-url`: an absolute `http(s)` URL without query or fragment.
pub fn parse_base_url(text: &str) -> Result<String, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("https" | "http"), Some(_)) => {}
        _ => {
            return Err(format!(
                "`{text}` must be an absolute http:// or https:// URL"
            ))
        }
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(format!("`{text}` must have no query or fragment"));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_take_defaults_only_for_keys_they_do_not_give() {
        let request: EvaluationsRequest = serde_json::from_value(serde_json::json!({
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "read"},
            "evaluations": [{"action": {"name": "edit"}, "resource": {"type": "doc", "id": "1"}}],
        }))
        .unwrap();
        let item = request.item(&request.evaluations.as_ref().unwrap()[0]);
        assert_eq!(item["subject"]["id"], "alice");
        assert_eq!(item["action"]["name"], "edit");
        assert_eq!(item["resource"]["id"], "1");
        assert!(item.get("context").is_none());
    }

    #[test]
    fn semantics_stop_where_the_specification_says() {
        assert!(!Semantic::ExecuteAll.stops_after(false));
        assert!(Semantic::DenyOnFirstDeny.stops_after(false));
        assert!(!Semantic::DenyOnFirstDeny.stops_after(true));
        assert!(Semantic::PermitOnFirstPermit.stops_after(true));
        let bad = serde_json::from_value::<Options>(
            serde_json::json!({"evaluations_semantic": "first_wins"}),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn base_urls_are_absolute_without_query() {
        assert_eq!(
            parse_base_url("https://pdp.example.com/").unwrap(),
            "https://pdp.example.com"
        );
        assert!(parse_base_url("pdp.example.com").is_err());
        assert!(parse_base_url("https://pdp.example.com/?a=1").is_err());
        assert!(parse_base_url("ftp://pdp.example.com").is_err());
    }
}
