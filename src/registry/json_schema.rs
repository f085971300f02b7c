//! The snapshot's JSON Schema check, with messages that name the actor and field at fault and
//! what was expected instead of what was found.

use std::sync::OnceLock;

use serde_json::Value;

use super::snapshot::Actor;
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

/// An actor read straight from its JSON text, when it is certainly one the JSON Schema's actor
/// definition accepts: an object, every field of the type the schema gives it (the typed read),
/// and the schema's constraints checked on the typed form by [`conforms`]. `None` means "not
/// certainly": the caller then runs the JSON Schema itself, for its verdict and its messages.
pub(super) fn fast_actor(raw: &str) -> Option<Actor> {
    if !raw.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str::<Actor>(raw).ok().filter(conforms)
}

/// The actor definition of `registry/schema/registry-snapshot.schema.json`, as code, for an
/// actor already read typed. Stricter where that is simpler: names must be printable ASCII (the
/// schema allows any non-whitespace), so that a length in bytes is a length in characters and
/// no Unicode whitespace rule is involved. The test `fast_check_follows_the_schema` pins the
/// schema's actor definition: changing one means changing the other.
pub(super) fn conforms(actor: &Actor) -> bool {
    fn name(s: &str) -> bool {
        (1..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
    }
    fn unique_names(items: &[String]) -> bool {
        items.iter().all(|s| name(s))
            && if items.len() <= 16 {
                items
                    .iter()
                    .enumerate()
                    .all(|(i, a)| items.iter().skip(i + 1).all(|b| a != b))
            } else {
                let mut seen = std::collections::HashSet::with_capacity(items.len());
                items.iter().all(|s| seen.insert(s.as_str()))
            }
    }
    fn identifier(s: &str) -> bool {
        let mut bytes = s.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }
    let ttl = |n: i64| (1..=8760).contains(&n);
    name(&actor.id)
        && name(&actor.actor_type)
        && unique_names(&actor.principals)
        && unique_names(&actor.allowed_subjects)
        && ttl(actor.max_ttl_hours)
        && ttl(actor.default_ttl_hours)
        && actor
            .relationships
            .iter()
            .all(|r| r.entity_type.split("::").all(identifier) && !r.id.is_empty())
        && actor.attributes.keys().all(|k| identifier(k))
}

#[cfg(test)]
mod fast_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What the JSON Schema says of one actor, and the actor the slow path reads.
    fn slow(raw: &str) -> Option<Actor> {
        let value = crate::json::parse_value(raw.as_bytes()).ok()?;
        let (errors, problems, value) = actor_schema_errors(0, value, 10);
        if problems > 0 || !errors.is_empty() {
            return None;
        }
        Some(serde_json::from_value(value).expect("the schema accepted it"))
    }

    #[test]
    fn fast_check_follows_the_schema() {
        // `conforms` encodes this definition; if the schema changes, change both.
        let (schema, _) = snapshot_schema().unwrap();
        let text = serde_json::to_string(&schema["$defs"]).unwrap();
        let digest = crate::hash::ContentHash::of_bytes(text.as_bytes());
        assert_eq!(
            digest.as_str(), PINNED_ACTOR_DEFINITION,
            "the snapshot schema's $defs changed: update json_schema::conforms to match, then this digest"
        );
    }

    const PINNED_ACTOR_DEFINITION: &str = "e19a6cfda271c4c9";

    /// A field of an actor: usually valid, sometimes each of the ways the schema refuses one.
    fn name_like() -> impl Strategy<Value = Value> {
        prop_oneof![
            60 => "[a-z][a-z0-9:.-]{0,12}".prop_map(Value::from),
            1 => Just(json!("")),
            1 => Just(json!("has space")),
            1 => Just(json!("tab\there")),
            1 => Just(json!("nbsp\u{a0}x")),
            1 => Just(json!("ünïcode")),
            1 => Just(json!("a".repeat(256))),
            1 => Just(json!("a".repeat(257))),
            1 => Just(json!(7)),
            1 => Just(Value::Null),
        ]
    }

    fn names() -> impl Strategy<Value = Value> {
        prop_oneof![
            20 => prop::collection::vec(name_like(), 0..4).prop_map(Value::from),
            2 => Just(json!(["dup", "x", "dup"])),
            1 => prop::collection::vec(Just(json!("same")), 17..20).prop_map(Value::from),
            1 => Just(json!("not-an-array")),
        ]
    }

    fn ttl() -> impl Strategy<Value = Value> {
        prop_oneof![
            40 => (1i64..=8760).prop_map(Value::from),
            1 => Just(json!(0)),
            1 => Just(json!(8761)),
            1 => Just(json!(8.0)),
            1 => Just(json!(-3)),
            1 => Just(json!("8")),
        ]
    }

    fn relationships() -> impl Strategy<Value = Value> {
        let one = prop_oneof![
            30 => ("[A-Z][a-z]{0,5}(::[A-Z][a-z]{0,4})?", "[a-z]{0,4}")
                .prop_map(|(t, id)| json!({"type": t, "id": id})),
            1 => Just(json!({"type": "Team::", "id": "x"})),
            1 => Just(json!({"type": "9Team", "id": "x"})),
            1 => Just(json!({"type": "Team", "id": "x", "extra": 1})),
            1 => Just(json!({"type": "Team"})),
            1 => Just(json!(["Team", "x"])),
        ];
        prop_oneof![
            20 => prop::collection::vec(one, 0..3).prop_map(Value::from),
            1 => Just(Value::Null),
        ]
    }

    fn attributes() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            30 => "[a-z_][a-z0-9_]{0,6}",
            1 => Just("with-dash".to_owned()),
            1 => Just("9lead".to_owned()),
        ];
        let value = prop_oneof![
            Just(json!("x")),
            Just(json!(1)),
            Just(json!(1.5)),
            Just(json!(null)),
            Just(json!([1, "a"])),
            Just(json!({"nested": {"deep": true}})),
        ];
        prop_oneof![
            20 => prop::collection::btree_map(key, value, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            1 => Just(json!([])),
            1 => Just(Value::Null),
        ]
    }

    fn actor_json() -> impl Strategy<Value = String> {
        (
            (name_like(), name_like(), names(), names(), ttl(), ttl()),
            (relationships(), attributes()),
            prop::collection::vec(prop::bool::weighted(0.97), 8),
        )
            .prop_map(
                |((id, ty, principals, subjects, max, default), (rels, attrs), keep)| {
                    let mut actor = serde_json::Map::new();
                    let fields = [
                        ("id", id),
                        ("type", ty),
                        ("principals", principals),
                        ("allowed_subjects", subjects),
                        ("max_ttl_hours", max),
                        ("default_ttl_hours", default),
                        ("relationships", rels),
                        ("attributes", attrs),
                    ];
                    for (i, (k, v)) in fields.into_iter().enumerate() {
                        // Usually every field; sometimes one left out.
                        if keep[i] || i < 6 && keep[(i + 1) % 8] || i >= 6 && keep[0] {
                            actor.insert(k.to_owned(), v);
                        }
                    }
                    if !keep[7] {
                        actor.insert("unknown".to_owned(), json!(1));
                    }
                    Value::Object(actor).to_string()
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        /// What the fast reader accepts, the JSON Schema accepts, and both read the same actor.
        #[test]
        fn the_fast_reader_accepts_only_what_the_schema_accepts(raw in actor_json()) {
            if let Some(fast) = fast_actor(&raw) {
                let slow = slow(&raw);
                prop_assert_eq!(Some(fast), slow, "{}", raw);
            }
        }
    }

    #[test]
    fn forms_a_typed_reader_would_take_but_the_schema_refuses_are_not_fast() {
        // A struct read from an array, a duplicate key, an object where a string belongs.
        let good = json!({"id": "a", "type": "agent", "principals": ["p"], "allowed_subjects": ["a"],
            "max_ttl_hours": 8, "default_ttl_hours": 4, "relationships": [{"type": "Team", "id": "t"}],
            "attributes": {"k": {"n": [1, 2.5, null]}}});
        assert!(fast_actor(&good.to_string()).is_some());
        assert_eq!(fast_actor(&good.to_string()), slow(&good.to_string()));
        assert!(fast_actor(r#"["a","agent",["p"],["a"],8,4]"#).is_none());
        let array_ref = good
            .to_string()
            .replace(r#"{"type":"Team","id":"t"}"#, r#"["Team","t"]"#);
        assert_ne!(array_ref, good.to_string());
        assert!(fast_actor(&array_ref).is_none());
        let duplicate = good
            .to_string()
            .replacen(r#""id":"a","#, r#""id":"a","id":"b","#, 1);
        assert!(fast_actor(&duplicate).is_none());
        let nested = good.to_string().replace(r#"{"n":"#, r#"{"n":1,"n":"#);
        assert!(fast_actor(&nested).is_none());
    }
}
