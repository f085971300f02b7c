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

use super::compact::{ActorStore, StoreBuilder};
use super::{cedar_message, ACTOR_TYPE, MAX_REPORTED_ERRORS, RESERVED_ATTRIBUTES, SUBJECT_TYPE};

#[derive(Debug, Deserialize)]
pub(super) struct Snapshot {
    pub(super) schema_version: String,
    pub(super) generated_at: String,
    pub(super) source: String,
    pub(super) actors: Vec<Actor>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Actor {
    id: String,
    #[serde(rename = "type")]
    actor_type: String,
    principals: Vec<String>,
    allowed_subjects: Vec<String>,
    max_ttl_hours: i64,
    default_ttl_hours: i64,
    #[serde(default)]
    relationships: Vec<EntityRef>,
    #[serde(default)]
    attributes: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub(super) struct EntityRef {
    #[serde(rename = "type")]
    entity_type: String,
    id: String,
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
        if let Some(first) = first_seen.insert(&actor.id, i) {
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
        if errors.len() >= MAX_REPORTED_ERRORS {
            break;
        }
    }
    errors
}

/// How many actors Cedar validates at once: large enough that the schema's action entities,
/// added to every batch, cost nothing, small enough that a batch's Cedar entities stay a few MiB.
const VALIDATION_BATCH: usize = 4096;

/// Compile actors into the compact store, each validated against the schema when there is
/// one; also the schema's action entities, which decisions read beside the actors.
///
/// Cedar validates a batch of actors at a time and the store keeps the values Cedar produced
/// (schema-directed conversions included); then the batch is dropped, so Cedar's form of the
/// whole registry never exists at once. Entities are built directly (see [`crate::cedar_json`]);
/// only when that is impossible or the schema rejects the direct form does Cedar's JSON reader
/// run, for its schema-directed conversions and its precise error messages.
pub(super) fn compile_store(
    actors: &[Actor],
    schema: Option<&Schema>,
) -> Result<(ActorStore, Entities), String> {
    let actions = Entities::from_entities([], schema).map_err(|e| cedar_message(&e))?;
    let actor_type = EntityTypeName::from_str(ACTOR_TYPE).map_err(|e| e.to_string())?;
    acyclic(actors)?;
    let mut builder = StoreBuilder::new(actor_type.clone(), &actions, actors.len());
    for (batch, chunk) in actors.chunks(VALIDATION_BATCH).enumerate() {
        let offset = batch * VALIDATION_BATCH;
        let validated =
            validate(chunk, schema).map_err(|m| locate_in_snapshot(chunk, offset, m))?;
        for actor in chunk {
            let uid =
                EntityUid::from_type_name_and_id(actor_type.clone(), EntityId::new(&actor.id));
            let entity = validated
                .get(&uid)
                .ok_or_else(|| format!("actor `{}` missing after validation", actor.id))?;
            let parents = actor
                .relationships
                .iter()
                .map(EntityRef::uid)
                .collect::<Result<Vec<_>, _>>()?;
            builder.push(entity, &parents)?;
        }
    }
    Ok((builder.finish(), actions))
}

fn validate(actors: &[Actor], schema: Option<&Schema>) -> Result<Entities, String> {
    if let Some(direct) = build_entities(actors) {
        if let Ok(entities) = Entities::from_entities(direct, schema) {
            return Ok(entities);
        }
    }
    Entities::from_json_value(entities_json(actors), schema).map_err(|e| cedar_message(&e))
}

/// Relationships between actors must not form a cycle (Cedar's hierarchy is a DAG; the whole
/// store would fail its transitive closure). Iterative, each actor visited once.
fn acyclic(actors: &[Actor]) -> Result<(), String> {
    let index: HashMap<&str, usize> = actors
        .iter()
        .enumerate()
        .filter(|(_, a)| a.relationships.iter().any(|r| r.entity_type == ACTOR_TYPE))
        .map(|(i, a)| (a.id.as_str(), i))
        .collect();
    if index.is_empty() {
        return Ok(());
    }
    // 0 unvisited, 1 on the current path, 2 done.
    let mut state = vec![0u8; actors.len()];
    for &start in index.values() {
        if state.get(start) != Some(&0) {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        if let Some(s) = state.get_mut(start) {
            *s = 1;
        }
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let relationships = actors.get(node).map_or(&[][..], |a| &a.relationships[..]);
            let Some(r) = relationships.get(*next) else {
                if let Some(s) = state.get_mut(node) {
                    *s = 2;
                }
                stack.pop();
                continue;
            };
            *next += 1;
            if r.entity_type != ACTOR_TYPE {
                continue;
            }
            // An actor with no actor parents cannot be on a cycle.
            let Some(&child) = index.get(r.id.as_str()) else {
                continue;
            };
            match state.get(child) {
                Some(1) => {
                    let name = actors.get(node).map_or("", |a| a.id.as_str());
                    return Err(format!(
                        "actors[{node}].relationships (actor `{name}`): `{ACTOR_TYPE}::\"{}\"` is its own ancestor through relationships; the hierarchy must not have a cycle",
                        r.id
                    ));
                }
                Some(0) => {
                    if let Some(s) = state.get_mut(child) {
                        *s = 1;
                    }
                    stack.push((child, 0));
                }
                _ => {}
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

fn build_entities(actors: &[Actor]) -> Option<Vec<Entity>> {
    let actor_type = EntityTypeName::from_str(ACTOR_TYPE).ok()?;
    let subject_type = EntityTypeName::from_str(SUBJECT_TYPE).ok()?;
    let mut parent_types: HashMap<&str, EntityTypeName> = HashMap::new();
    let strings = |v: &[String]| {
        RestrictedExpression::new_set(v.iter().cloned().map(RestrictedExpression::new_string))
    };
    let mut out = Vec::with_capacity(actors.len());
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
