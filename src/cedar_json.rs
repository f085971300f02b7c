//! Plain JSON straight into Cedar values, without Cedar's JSON parser.
//!
//! Cedar's own JSON readers (`Context::from_json_value`, `Entities::from_json_value`) try several
//! encodings per value and format an error for each miss; on the request path that costs more
//! than evaluating the policies. Plain JSON — strings, booleans, 64-bit integers, arrays, objects
//! — maps one-to-one onto Cedar strings, booleans, longs, sets and records, so this module does
//! that directly. Anything else (`null`, fractions, `__entity`/`__extn` escapes) returns `None`
//! and the caller uses Cedar's reader, as it does when a schema needs a schema-directed
//! conversion (an entity reference or an `ipaddr` written as plain JSON): the fast form is only
//! used when the schema accepts it as it is, so both paths give the same values.

use std::str::FromStr;

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::{Map, Value};

/// How deep the converter follows nested arrays and objects before handing the value to
/// Cedar's reader (which has its own limits); keeps recursion bounded on hostile input.
const MAX_DEPTH: usize = 32;

/// The Cedar value of a plain JSON value, or `None` when only Cedar's reader can read it.
pub fn restricted(value: &Value) -> Option<RestrictedExpression> {
    convert(value, 0)
}

fn convert(value: &Value, depth: usize) -> Option<RestrictedExpression> {
    if depth > MAX_DEPTH {
        return None;
    }
    Some(match value {
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::Number(n) => RestrictedExpression::new_long(n.as_i64()?),
        Value::Array(items) => RestrictedExpression::new_set(
            items
                .iter()
                .map(|v| convert(v, depth + 1))
                .collect::<Option<Vec<_>>>()?,
        ),
        Value::Object(map) => RestrictedExpression::new_record(fields(map, depth)?).ok()?,
        Value::Null => return None,
    })
}

fn fields(map: &Map<String, Value>, depth: usize) -> Option<Vec<(String, RestrictedExpression)>> {
    map.iter()
        .map(|(k, v)| {
            if k.starts_with("__") {
                return None;
            }
            Some((k.clone(), convert(v, depth + 1)?))
        })
        .collect()
}

/// Every entity uid `value` refers to: `{"__entity": {"type", "id"}}` escapes, and objects with
/// exactly string `type` and `id` (parents, and schema-directed references in a context).
pub fn entity_refs(value: &Value, out: &mut Vec<EntityUid>) {
    match value {
        Value::Object(map) => {
            let reference = map.get("__entity").unwrap_or(value);
            if let (Some(Value::String(t)), Some(Value::String(id))) =
                (reference.get("type"), reference.get("id"))
            {
                if let Ok(type_name) = EntityTypeName::from_str(t) {
                    out.push(EntityUid::from_type_name_and_id(
                        type_name,
                        EntityId::new(id),
                    ));
                }
            }
            for v in map.values() {
                entity_refs(v, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                entity_refs(v, out);
            }
        }
        _ => {}
    }
}

/// A Cedar context from a plain JSON object, or `None` when only Cedar's reader can read it.
pub fn context(map: &Map<String, Value>) -> Option<Context> {
    Context::from_pairs(fields(map, 0)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_json_converts_and_escapes_do_not() {
        assert!(restricted(&json!({"a": [1, "x", true], "b": {"c": -3}})).is_some());
        assert!(restricted(&json!({"__entity": {"type": "A", "id": "b"}})).is_none());
        assert!(restricted(&json!([1.5])).is_none());
        assert!(restricted(&json!(null)).is_none());
        assert!(restricted(&json!(u64::MAX)).is_none());
    }

    #[test]
    fn deep_nesting_is_left_to_cedar() {
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 2) {
            v = json!([v]);
        }
        assert!(restricted(&v).is_none());
    }
}
