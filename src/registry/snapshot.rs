//! The snapshot's shape (actors, their subjects, parents and attributes), the checks the JSON
//! Schema cannot express, and compilation into Cedar entities.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cedar_json;

use super::compact::{PlainAttr, StoreBuilder};
use super::shape::Shapes;
use super::{cedar_message, ACTOR_TYPE, MAX_REPORTED_ERRORS, RESERVED_ATTRIBUTES, SUBJECT_TYPE};

/// A whole snapshot's actors (the top-level fields are checked by the JSON Schema and read by
/// `stream::Header`).
#[derive(Debug, Deserialize)]
pub(super) struct Snapshot {
    pub(super) actors: Vec<Actor>,
}

/// An actor as the snapshot gives it. Read either from an actor's JSON text directly (the
/// usual, fast case: [`super::json_schema::conforms`] then checks what the JSON Schema would) or
/// from a [`Value`] the JSON Schema accepted; both readers refuse unknown fields, a duplicate key
/// and an array standing for an object, so they read the same actors.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Actor {
    pub(super) id: String,
    #[serde(rename = "type")]
    pub(super) actor_type: String,
    pub(super) principals: Vec<String>,
    pub(super) allowed_subjects: Vec<String>,
    pub(super) max_ttl_hours: i64,
    pub(super) default_ttl_hours: i64,
    #[serde(default)]
    pub(super) relationships: Vec<EntityRef>,
    #[serde(default, deserialize_with = "crate::json::strict_map")]
    pub(super) attributes: Map<String, Value>,
}

#[derive(Debug, PartialEq)]
pub(super) struct EntityRef {
    pub(super) entity_type: String,
    pub(super) id: String,
}

impl<'de> Deserialize<'de> for EntityRef {
    /// Only from an object (`{"type", "id"}`), never from an array as a derived struct would.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Fields {
            #[serde(rename = "type")]
            entity_type: String,
            id: String,
        }
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = EntityRef;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object with `type` and `id`")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<EntityRef, A::Error> {
                let fields =
                    Fields::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(EntityRef {
                    entity_type: fields.entity_type,
                    id: fields.id,
                })
            }
        }
        d.deserialize_map(Object)
    }
}

impl EntityRef {
    fn uid(&self) -> Result<EntityUid, String> {
        let t = EntityTypeName::from_str(&self.entity_type)
            .map_err(|e| format!("relationship type `{}`: {e}", self.entity_type))?;
        Ok(EntityUid::from_type_name_and_id(t, EntityId::new(&self.id)))
    }
}

/// Checks JSON Schema cannot express: unique actor ids, default ≤ max, free attribute names.
pub(super) fn semantic_errors(snapshot: &Snapshot) -> Vec<String> {
    let mut errors = Vec::new();
    let mut first_seen: HashMap<&str, usize> = HashMap::with_capacity(snapshot.actors.len());
    for (i, actor) in snapshot.actors.iter().enumerate() {
        let first = first_seen.insert(&actor.id, i);
        actor_errors(i, actor, first, &mut errors);
        if errors.len() >= MAX_REPORTED_ERRORS {
            break;
        }
    }
    errors
}

/// The checks of [`semantic_errors`] for actor `i`; `first` is where its id was seen before.
pub(super) fn actor_errors(
    i: usize,
    actor: &Actor,
    first: Option<usize>,
    errors: &mut Vec<String>,
) {
    if let Some(first) = first {
        errors.push(format!(
            "actors[{i}].id: duplicate actor id `{}` (first at actors[{first}])",
            actor.id
        ));
    }
    if actor.default_ttl_hours > actor.max_ttl_hours {
        errors.push(format!(
            "actors[{i}].default_ttl_hours (actor `{}`): {} exceeds max_ttl_hours {}",
            actor.id, actor.default_ttl_hours, actor.max_ttl_hours
        ));
    }
    for key in actor.attributes.keys() {
        if RESERVED_ATTRIBUTES.contains(&key.as_str()) {
            errors.push(format!(
                "actors[{i}].attributes.{key} (actor `{}`): `{key}` is set by the registry format; choose another attribute name",
                actor.id
            ));
        }
    }
}

impl Actor {
    /// The actor's id.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The ids of the actors this actor names as parents.
    pub(super) fn actor_parents(&self) -> impl Iterator<Item = &str> {
        self.relationships
            .iter()
            .filter(|r| r.entity_type == ACTOR_TYPE)
            .map(|r| r.id.as_str())
    }

    /// The actor's parents as Cedar uids.
    pub(super) fn parents(&self) -> Result<Vec<EntityUid>, String> {
        self.relationships.iter().map(EntityRef::uid).collect()
    }
}

/// How many actors Cedar validates at once: large enough that the schema's action entities,
/// added to every batch, cost nothing, small enough that a batch's Cedar entities stay a few MiB.
pub(super) const VALIDATION_BATCH: usize = 256;

/// Validate a batch of actors (the first at `actors[offset]`) against the schema, and add each
/// to the store in the form Cedar produced (schema-directed conversions included); the batch's
/// Cedar entities are dropped on return, so Cedar's form of the whole registry never exists at
/// once. Entities are built directly (see [`crate::cedar_json`]), and only for one actor of each
/// shape Cedar has not accepted yet ([`Shapes`]); only when that is impossible or the schema
/// rejects the direct form does Cedar's JSON reader run over the whole batch, for its
/// schema-directed conversions and its precise error messages.
pub(super) fn compile_batch(
    actors: &[Actor],
    offset: usize,
    schema: Option<&Schema>,
    builder: &mut StoreBuilder,
    shapes: &mut Shapes,
) -> Result<(), String> {
    let keys: Option<Vec<Box<[u8]>>> = actors.iter().map(|a| shapes.key(a)).collect();
    let direct = match keys {
        // Every actor has a shape: Cedar sees one actor of each shape it has not accepted yet.
        Some(keys) => {
            let mut first: HashMap<&[u8], usize> = HashMap::new();
            for (i, key) in keys.iter().enumerate() {
                if !shapes.accepted(key) {
                    first.entry(key).or_insert(i);
                }
            }
            let mut unseen: Vec<usize> = first.into_values().collect();
            unseen.sort_unstable();
            let representatives: Vec<&Actor> =
                unseen.iter().filter_map(|&i| actors.get(i)).collect();
            let accepted = representatives.is_empty()
                || build_entities(representatives.iter().copied())
                    .is_some_and(|entities| Entities::from_entities(entities, schema).is_ok());
            if accepted {
                for i in unseen {
                    if let Some(key) = keys.get(i) {
                        shapes.accept(key.clone());
                    }
                }
            }
            accepted
        }
        // The usual case otherwise: the directly built entities are what the schema accepts.
        None => build_entities(actors.iter())
            .is_some_and(|entities| Entities::from_entities(entities, schema).is_ok()),
    };
    // Accepted in their direct form: the values Cedar holds are the plain JSON mapping, and the
    // store takes them from the JSON.
    if direct {
        let subject_type = EntityTypeName::from_str(SUBJECT_TYPE).map_err(|e| e.to_string())?;
        for actor in actors {
            push_plain(actor, &subject_type, builder).ok_or_else(|| {
                format!(
                    "actor `{}`: validated in its direct form but not plain JSON",
                    actor.id
                )
            })??;
        }
        return Ok(());
    }
    let validated = Entities::from_json_value(entities_json(actors), schema)
        .map_err(|e| locate_in_snapshot(actors, offset, cedar_message(&e)))?;
    for actor in actors {
        let uid = EntityUid::from_type_name_and_id(
            builder.actor_type().clone(),
            EntityId::new(&actor.id),
        );
        let entity = validated
            .get(&uid)
            .ok_or_else(|| format!("actor `{}` missing after validation", actor.id))?;
        builder.push(entity, &actor.parents()?)?;
    }
    Ok(())
}

fn push_plain(
    actor: &Actor,
    subject_type: &EntityTypeName,
    builder: &mut StoreBuilder,
) -> Option<Result<(), String>> {
    let parents = match actor.parents() {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    let mut attrs: Vec<(&str, PlainAttr<'_>)> = Vec::with_capacity(actor.attributes.len() + 5);
    attrs.push(("type", PlainAttr::Str(&actor.actor_type)));
    attrs.push(("principals", PlainAttr::Strings(&actor.principals)));
    attrs.push((
        "allowed_subjects",
        PlainAttr::Refs(subject_type, &actor.allowed_subjects),
    ));
    attrs.push(("max_ttl_hours", PlainAttr::Long(actor.max_ttl_hours)));
    attrs.push((
        "default_ttl_hours",
        PlainAttr::Long(actor.default_ttl_hours),
    ));
    for (key, value) in &actor.attributes {
        attrs.push((key, PlainAttr::Json(value)));
    }
    builder.push_plain(&actor.id, &attrs, &parents)
}

/// Relationships between actors must not form a cycle (Cedar's hierarchy is a DAG; the whole
/// store would fail its transitive closure). `edges[n]` lists the actor indices actor `n` names
/// as parents; `id` names an actor. Iterative, each actor visited once.
pub(super) fn acyclic(
    edges: &HashMap<usize, Vec<usize>>,
    id: impl Fn(usize) -> String,
) -> Result<(), String> {
    // Absent: unvisited; false: on the current path; true: done.
    let mut state: HashMap<usize, bool> = HashMap::with_capacity(edges.len());
    let mut starts: Vec<usize> = edges.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        if state.contains_key(&start) {
            continue;
        }
        state.insert(start, false);
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let Some(&child) = edges.get(&node).and_then(|c| c.get(*next)) else {
                state.insert(node, true);
                stack.pop();
                continue;
            };
            *next += 1;
            match state.get(&child) {
                Some(false) => {
                    return Err(format!(
                        "actors[{node}].relationships (actor `{}`): `{ACTOR_TYPE}::\"{}\"` is its own ancestor through relationships; the hierarchy must not have a cycle",
                        id(node),
                        id(child)
                    ));
                }
                Some(true) => {}
                None => {
                    state.insert(child, false);
                    stack.push((child, 0));
                }
            }
        }
    }
    Ok(())
}

/// Cedar names an entity and an attribute (`attribute `cost_center` on `Actor::"x"` should not
/// exist according to the schema`); operators edit a snapshot, so say where in it the problem
/// is (`actors[0].attributes.cost_center (actor `x`)`), like the snapshot's other errors. The
/// one place Cedar's wording is read; an unrecognised message is passed on whole.
fn locate_in_snapshot(actors: &[Actor], offset: usize, message: String) -> String {
    // A cycle inside one validation batch is Cedar's to find: say it as the cross-batch check
    // in `acyclic` does.
    let cycle = message
        .split_once("has a cycle containing vertex `")
        .and_then(|(_, rest)| {
            rest.strip_prefix(ACTOR_TYPE)?
                .strip_prefix("::\"")?
                .split_once("\"`")
        })
        .map(|(id, _)| id);
    if let Some(id) = cycle {
        if let Some(index) = actors.iter().position(|a| a.id == id) {
            return format!(
                "actors[{}].relationships (actor `{id}`): `{ACTOR_TYPE}::\"{id}\"` is its own ancestor through relationships; the hierarchy must not have a cycle",
                index + offset
            );
        }
    }
    let named = |prefix: &str| {
        let rest = message.split_once(prefix)?.1;
        let (attribute, rest) = rest.split_once('`')?;
        let rest = rest.strip_prefix(" on `")?;
        let id = rest
            .strip_prefix(ACTOR_TYPE)?
            .strip_prefix("::\"")?
            .split_once("\"`")?
            .0;
        Some((attribute.to_owned(), id.to_owned()))
    };
    let Some((attribute, id)) = named("attribute `") else {
        return message;
    };
    let Some((index, actor)) = actors.iter().enumerate().find(|(_, a)| a.id == id) else {
        return message;
    };
    let index = index + offset;
    let field = if actor.attributes.contains_key(&attribute) {
        format!("actors[{index}].attributes.{attribute}")
    } else {
        format!("actors[{index}].{attribute}")
    };
    let problem = if message.contains("should not exist according to the schema") {
        format!("`{attribute}` is not declared for `{ACTOR_TYPE}` in the policy package's schema; declare it there or remove it")
    } else {
        message.clone()
    };
    format!("{field} (actor `{id}`): {problem}")
}

fn build_entities<'a>(actors: impl Iterator<Item = &'a Actor>) -> Option<Vec<Entity>> {
    let actor_type = EntityTypeName::from_str(ACTOR_TYPE).ok()?;
    let subject_type = EntityTypeName::from_str(SUBJECT_TYPE).ok()?;
    let mut parent_types: HashMap<&str, EntityTypeName> = HashMap::new();
    let strings = |v: &[String]| {
        RestrictedExpression::new_set(v.iter().cloned().map(RestrictedExpression::new_string))
    };
    let mut out = Vec::with_capacity(actors.size_hint().0);
    for actor in actors {
        let mut attrs: HashMap<String, RestrictedExpression> =
            HashMap::with_capacity(actor.attributes.len() + 5);
        for (key, value) in &actor.attributes {
            attrs.insert(key.clone(), cedar_json::restricted(value)?);
        }
        let subjects = actor.allowed_subjects.iter().map(|s| {
            RestrictedExpression::new_entity_uid(EntityUid::from_type_name_and_id(
                subject_type.clone(),
                EntityId::new(s),
            ))
        });
        attrs.insert(
            "type".to_owned(),
            RestrictedExpression::new_string(actor.actor_type.clone()),
        );
        attrs.insert("principals".to_owned(), strings(&actor.principals));
        attrs.insert(
            "allowed_subjects".to_owned(),
            RestrictedExpression::new_set(subjects),
        );
        attrs.insert(
            "max_ttl_hours".to_owned(),
            RestrictedExpression::new_long(actor.max_ttl_hours),
        );
        attrs.insert(
            "default_ttl_hours".to_owned(),
            RestrictedExpression::new_long(actor.default_ttl_hours),
        );
        let mut parents = HashSet::with_capacity(actor.relationships.len());
        for r in &actor.relationships {
            let t = match parent_types.get(r.entity_type.as_str()) {
                Some(t) => t.clone(),
                None => {
                    let t = EntityTypeName::from_str(&r.entity_type).ok()?;
                    parent_types.insert(&r.entity_type, t.clone());
                    t
                }
            };
            parents.insert(EntityUid::from_type_name_and_id(t, EntityId::new(&r.id)));
        }
        let uid = EntityUid::from_type_name_and_id(actor_type.clone(), EntityId::new(&actor.id));
        out.push(Entity::new(uid, attrs, parents).ok()?);
    }
    Some(out)
}

/// The Cedar entities JSON for a list of actors (the form Cedar's reader takes).
pub(super) fn entities_json(actors: &[Actor]) -> Value {
    let entities: Vec<Value> = actors
        .iter()
        .map(|actor| {
            let mut attrs = actor.attributes.clone();
            let subjects: Vec<Value> = actor
                .allowed_subjects
                .iter()
                .map(|s| json!({"__entity": {"type": SUBJECT_TYPE, "id": s}}))
                .collect();
            attrs.insert("type".to_owned(), Value::String(actor.actor_type.clone()));
            attrs.insert("principals".to_owned(), json!(actor.principals));
            attrs.insert("allowed_subjects".to_owned(), Value::Array(subjects));
            attrs.insert("max_ttl_hours".to_owned(), json!(actor.max_ttl_hours));
            attrs.insert(
                "default_ttl_hours".to_owned(),
                json!(actor.default_ttl_hours),
            );
            let parents: Vec<Value> = actor
                .relationships
                .iter()
                .map(|r| json!({"type": r.entity_type, "id": r.id}))
                .collect();
            json!({
                "uid": {"type": ACTOR_TYPE, "id": actor.id},
                "attrs": attrs,
                "parents": parents,
            })
        })
        .collect();
    Value::Array(entities)
}
