//! The snapshot's JSON Schema check, with messages that name the actor and field at fault and
//! what was expected instead of what was found.

use std::sync::OnceLock;

use serde_json::Value;

use super::{MAX_REPORTED_ERRORS, SNAPSHOT_JSON_SCHEMA};

fn snapshot_schema() -> Result<&'static (Value, jsonschema::Validator), String> {
    static VALIDATOR: OnceLock<Result<(Value, jsonschema::Validator), String>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let schema: Value = serde_json::from_str(SNAPSHOT_JSON_SCHEMA)
                .map_err(|e| format!("built-in snapshot schema is not JSON: {e}"))?;
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| format!("built-in snapshot schema is invalid: {e}"))?;
            Ok((schema, validator))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The snapshot schema without its top-level `required`: validating `{"actors": [actor]}`
/// against it checks one actor exactly as the whole snapshot's check would.
fn actor_schema() -> Result<&'static (Value, jsonschema::Validator), String> {
    static VALIDATOR: OnceLock<Result<(Value, jsonschema::Validator), String>> = OnceLock::new();
    VALIDATOR
        .get_or_init(|| {
            let (full, _) = snapshot_schema()?;
            let mut schema = full.clone();
            if let Some(top) = schema.as_object_mut() {
                top.remove("required");
            }
            let validator = jsonschema::validator_for(&schema)
                .map_err(|e| format!("built-in snapshot schema is invalid: {e}"))?;
            Ok((schema, validator))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Every way actor `index` misses the snapshot JSON Schema (at most `room` lines, named as in
/// the whole snapshot: `actors[3].max_ttl_hours (actor `x`): …`), the number of problems, and
/// the actor back.
pub(super) fn actor_schema_errors(
    index: usize,
    actor: Value,
    room: usize,
) -> (Vec<String>, usize, Value) {
    let (schema, validator) = match actor_schema() {
        Ok(pair) => pair,
        Err(e) => return (vec![e], 1, actor),
    };
    // Built by hand: `json!` would deep-copy the actor through serialization.
    let mut top = serde_json::Map::new();
    top.insert("actors".to_owned(), Value::Array(vec![actor]));
    let wrapper = Value::Object(top);
    let mut errors = Vec::new();
    // The usual actor is valid: `is_valid` stops at nothing and builds no error, where
    // `iter_errors` prepares every error it could report.
    let valid = validator.is_valid(&wrapper);
    let mut total = 0usize;
    let found = if valid {
        None
    } else {
        Some(validator.iter_errors(&wrapper))
    };
    for error in found.into_iter().flatten() {
        total += 1;
        if errors.len() < room {
            let line = describe_schema_error(schema, &wrapper, &error);
            errors.push(match line.strip_prefix("actors[0]") {
                Some(rest) => format!("actors[{index}]{rest}"),
                None => line,
            });
        }
    }
    let actor = match wrapper {
        Value::Object(mut top) => match top.remove("actors") {
            Some(Value::Array(mut items)) => items.pop().unwrap_or(Value::Null),
            _ => Value::Null,
        },
        _ => Value::Null,
    };
    (errors, total, actor)
}

/// Every way `value` misses the snapshot JSON Schema, one readable line each.
pub(super) fn schema_errors(value: &Value) -> Vec<String> {
    let (schema, validator) = match snapshot_schema() {
        Ok(pair) => pair,
        Err(e) => return vec![e],
    };
    let mut errors = Vec::new();
    let mut total = 0usize;
    for error in validator.iter_errors(value) {
        total += 1;
        if errors.len() < MAX_REPORTED_ERRORS {
            errors.push(describe_schema_error(schema, value, &error));
        }
    }
    if total > errors.len() {
        errors.push(format!("… and {} more", total - errors.len()));
    }
    errors
}

fn describe_schema_error(
    schema: &Value,
    instance: &Value,
    error: &jsonschema::ValidationError<'_>,
) -> String {
    use jsonschema::error::ValidationErrorKind as Kind;
    let pointer = error.instance_path().as_str();
    let mut field = dotted_path(pointer);
    if let Some(actor) = actor_of(instance, pointer) {
        field.push_str(&format!(" (actor `{actor}`)"));
    }
    let found = summarize(error.instance());
    let message = match error.kind() {
        Kind::Required { property } => {
            let name = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            format!("missing required field `{name}`")
        }
        Kind::AdditionalProperties { unexpected } => {
            let names: Vec<String> = unexpected.iter().map(|u| format!("`{u}`")).collect();
            format!("unknown field {}", names.join(", "))
        }
        Kind::UniqueItems => "items must be unique".to_owned(),
        _ => {
            // Describe what the field's subschema expects as a whole, e.g. "integer ≥ 1".
            let keyword_path = error.schema_path().as_str();
            let parent = keyword_path.rsplit_once('/').map_or("", |(p, _)| p);
            let expected = resolve_schema(schema, parent).map(describe_expected);
            match expected {
                Some(expected) if !expected.is_empty() => {
                    format!("expected {expected}, got {found}")
                }
                _ => format!("{error}"),
            }
        }
    };
    if field.is_empty() {
        message
    } else {
        format!("{field}: {message}")
    }
}

/// Follow a schema pointer, stepping through a `$ref` to a local definition when the pointer's
/// next segment is not in the current node.
fn resolve_schema<'a>(schema: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut node = schema;
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        node = match node.get(&segment) {
            Some(next) => next,
            None => {
                let target = node.get("$ref")?.as_str()?.strip_prefix('#')?;
                schema.pointer(target)?.get(&segment)?
            }
        };
    }
    if let Some(target) = node.get("$ref").and_then(Value::as_str) {
        if let Some(resolved) = target.strip_prefix('#').and_then(|t| schema.pointer(t)) {
            return Some(resolved);
        }
    }
    Some(node)
}

fn describe_expected(node: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(t) = node.get("type").and_then(Value::as_str) {
        parts.push(match t {
            "object" => "an object".to_owned(),
            "array" => "an array".to_owned(),
            "string" => "a string".to_owned(),
            other => other.to_owned(),
        });
    }
    if let Some(min) = node.get("minimum") {
        parts.push(format!("≥ {min}"));
    }
    if let Some(max) = node.get("maximum") {
        parts.push(format!("≤ {max}"));
    }
    if let Some(min) = node.get("minLength").and_then(Value::as_u64) {
        if min == 1 {
            parts.push("(non-empty)".to_owned());
        } else {
            parts.push(format!("of at least {min} characters"));
        }
    }
    if let Some(max) = node.get("maxLength").and_then(Value::as_u64) {
        parts.push(format!("of at most {max} characters"));
    }
    if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
        parts.push(format!("matching `{pattern}`"));
    }
    parts.join(" ")
}

fn summarize(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() <= 40 => format!("\"{s}\""),
        Value::String(_) => "a long string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// `/actors/3/max_ttl_hours` → `actors[3].max_ttl_hours`.
pub(super) fn dotted_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// The id of the actor a pointer is inside of, when it has a string id.
fn actor_of<'a>(instance: &'a Value, pointer: &str) -> Option<&'a str> {
    let mut segments = pointer.split('/').skip(1);
    if segments.next()? != "actors" {
        return None;
    }
    let index = segments.next()?;
    instance.pointer(&format!("/actors/{index}/id"))?.as_str()
}
