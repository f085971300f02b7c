//! Cedar's schema check of an actor depends on its shape, not on its values: which attributes it
//! has and the type of each value (string, long, boolean, a set of which element types, a record
//! of which fields), and the types of its parents. Only enumerated entity types and actions make
//! an id matter (Cedar's `validate_euid`). So a load asks Cedar about one actor of each shape and
//! accepts every other actor of that shape unasked; on the shipped generator's registries that is
//! one Cedar check instead of 100,000.
//!
//! A key is only given for an actor whose direct form ([`super::snapshot`]'s `build_entities`)
//! exists, mirroring [`crate::cedar_json`]'s conversion exactly (`None` where that gives up), and
//! never when the package's schema declares an enumerated entity type or a parent is an action:
//! those go through Cedar one by one, as before. `tests/shape_memo.rs` checks the claim against
//! Cedar's whole-store validation over generated schemas and actors.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::conformance_errors::EntitySchemaConformanceError;
use cedar_policy::entities_errors::EntitiesError;
use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, Schema};
use serde_json::Value;

use super::snapshot::Actor;

/// The nesting depth [`crate::cedar_json`] follows before it gives up.
const MAX_DEPTH: usize = 32;

/// Shapes remembered per load; past this, new shapes are still checked, just not remembered.
const MAX_SHAPES: usize = 16_384;

/// The shapes Cedar accepted during one load.
pub(super) struct Shapes {
    /// `false` when the schema makes ids matter (an enumerated entity type): no keys at all.
    enabled: bool,
    accepted: HashSet<Box<[u8]>>,
    /// Parent type names seen, and whether a key may name them (parsed, not an action).
    parent_types: HashMap<String, bool>,
}

impl Shapes {
    /// Shapes for a load against `schema`.
    pub(super) fn new(schema: Option<&Schema>) -> Self {
        Shapes {
            enabled: !schema.is_some_and(has_enumerated_type),
            accepted: HashSet::new(),
            parent_types: HashMap::new(),
        }
    }

    /// The actor's shape, or `None` when Cedar must see the actor itself.
    pub(super) fn key(&mut self, actor: &Actor) -> Option<Box<[u8]>> {
        if !self.enabled {
            return None;
        }
        let mut out = Vec::with_capacity(64);
        out.push(u8::from(actor.principals.is_empty()));
        out.push(u8::from(actor.allowed_subjects.is_empty()));
        let mut parents: Vec<&str> = actor
            .relationships
            .iter()
            .map(|r| r.entity_type.as_str())
            .collect();
        parents.sort_unstable();
        parents.dedup();
        put_len(&mut out, parents.len())?;
        for t in parents {
            let usable = match self.parent_types.get(t) {
                Some(&usable) => usable,
                None => {
                    let usable =
                        EntityTypeName::from_str(t).is_ok_and(|name| name.basename() != "Action");
                    self.parent_types.insert(t.to_owned(), usable);
                    usable
                }
            };
            if !usable {
                return None;
            }
            put_str(&mut out, t)?;
        }
        let mut attrs: Vec<(&String, &Value)> = actor.attributes.iter().collect();
        attrs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        put_len(&mut out, attrs.len())?;
        for (key, value) in attrs {
            put_str(&mut out, key)?;
            value_shape(value, 0, &mut out)?;
        }
        Some(out.into_boxed_slice())
    }

    /// Whether Cedar already accepted an actor of this shape.
    pub(super) fn accepted(&self, key: &[u8]) -> bool {
        self.accepted.contains(key)
    }

    /// Remember that Cedar accepted an actor of this shape.
    pub(super) fn accept(&mut self, key: Box<[u8]>) {
        if self.accepted.len() < MAX_SHAPES {
            self.accepted.insert(key);
        }
    }
}

/// The shape of a plain JSON value as [`crate::cedar_json`] converts it; `None` where it would
/// not (null, a fraction, an `__` escape, too deep).
fn value_shape(value: &Value, depth: usize, out: &mut Vec<u8>) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    match value {
        Value::String(_) => out.push(b's'),
        Value::Bool(_) => out.push(b'b'),
        Value::Number(n) => {
            n.as_i64()?;
            out.push(b'l');
        }
        Value::Null => return None,
        Value::Array(items) => {
            // A set: which element shapes it holds, each once, in order.
            let mut members: Vec<Vec<u8>> = Vec::new();
            for item in items {
                let mut member = Vec::new();
                value_shape(item, depth + 1, &mut member)?;
                members.push(member);
            }
            members.sort_unstable();
            members.dedup();
            out.push(b'[');
            put_len(out, members.len())?;
            for member in members {
                out.extend_from_slice(&member);
            }
        }
        Value::Object(map) => {
            let mut fields: Vec<(&String, &Value)> = map.iter().collect();
            fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            put_len(out, fields.len())?;
            for (key, value) in fields {
                if key.starts_with("__") {
                    return None;
                }
                put_str(out, key)?;
                value_shape(value, depth + 1, out)?;
            }
        }
    }
    Some(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Option<()> {
    out.extend_from_slice(&u32::try_from(len).ok()?.to_le_bytes());
    Some(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    put_len(out, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Some(())
}

/// Whether the schema declares an enumerated entity type. Cedar checks an entity's own id
/// against its type's enumeration before anything else, so an entity with an id no enumeration
/// holds is refused for exactly that reason by such a type, and for another reason or none by
/// any other type.
fn has_enumerated_type(schema: &Schema) -> bool {
    const PROBES: [&str; 2] = [
        "\u{0}flex-auth shape probe a",
        "\u{0}flex-auth shape probe b",
    ];
    schema.entity_types().any(|t| {
        PROBES.iter().any(|id| {
            let uid = EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id));
            matches!(
                Entities::from_entities([Entity::new_no_attrs(uid, HashSet::new())], Some(schema)),
                Err(EntitiesError::InvalidEntity(
                    EntitySchemaConformanceError::InvalidEnumEntity(_)
                ))
            )
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    fn actor(attributes: Value, parents: Value) -> Actor {
        serde_json::from_value(json!({
            "id": "a", "type": "agent", "principals": ["p"], "allowed_subjects": ["s"],
            "max_ttl_hours": 8, "default_ttl_hours": 1,
            "relationships": parents, "attributes": attributes,
        }))
        .unwrap()
    }

    fn key(attributes: Value) -> Option<Box<[u8]>> {
        Shapes::new(None).key(&actor(attributes, json!([])))
    }

    #[test]
    fn values_do_not_matter_types_do() {
        assert_eq!(
            key(json!({"o": "x", "n": 1})),
            key(json!({"n": 2, "o": "y"}))
        );
        assert_ne!(key(json!({"o": "x"})), key(json!({"o": 1})));
        assert_ne!(key(json!({"o": []})), key(json!({"o": ["x"]})));
        assert_eq!(key(json!({"o": ["x", "y"]})), key(json!({"o": ["z"]})));
        assert_ne!(key(json!({"o": ["x", 1]})), key(json!({"o": ["x"]})));
        assert_ne!(key(json!({"o": {"a": 1}})), key(json!({"o": {"b": 1}})));
        assert_ne!(key(json!({"o": "x"})), key(json!({"p": "x"})));
        // Keys are length-prefixed: no two attribute lists run together.
        assert_ne!(key(json!({"ab": "x"})), key(json!({"a": "x", "b": "x"})));
    }

    #[test]
    fn what_cedar_json_refuses_has_no_key() {
        assert!(key(json!({"o": null})).is_none());
        assert!(key(json!({"o": 1.5})).is_none());
        assert!(key(json!({"o": u64::MAX})).is_none());
        assert!(key(json!({"o": {"__entity": {"type": "T", "id": "x"}}})).is_none());
        let mut deep = json!("x");
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(key(json!({ "o": deep })).is_none());
    }

    #[test]
    fn parents_count_by_type_and_actions_are_not_keyed() {
        let mut shapes = Shapes::new(None);
        let team = |id: &str| json!([{"type": "Team", "id": id}]);
        let a = shapes.key(&actor(json!({}), team("x")));
        assert_eq!(a, shapes.key(&actor(json!({}), team("y"))));
        assert_ne!(a, shapes.key(&actor(json!({}), json!([]))));
        let action = json!([{"type": "Action", "id": "sign"}]);
        assert!(shapes.key(&actor(json!({}), action)).is_none());
    }

    #[test]
    fn an_enumerated_type_turns_keys_off() {
        let (plain, _) =
            Schema::from_cedarschema_str("entity Team; entity Actor in [Team];").unwrap();
        assert!(!has_enumerated_type(&plain));
        let (enumerated, _) =
            Schema::from_cedarschema_str("entity Team enum [\"a\"]; entity Actor in [Team];")
                .unwrap();
        assert!(has_enumerated_type(&enumerated));
        assert!(Shapes::new(Some(&enumerated))
            .key(&actor(json!({}), json!([])))
            .is_none());
    }
}
