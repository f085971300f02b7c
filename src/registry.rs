//! Registry snapshots: the JSON format, its JSON Schema, and compiling a snapshot into Cedar
//! entities once at load time.
//!
//! A snapshot lists actors; each becomes an `Actor::"<id>"` entity whose `allowed_subjects` are
//! `Subject` entity references, so a policy can say
//! `resource.allowed_subjects.contains(principal)`. The entity store Cedar evaluates against is a
//! hash map, so a decision costs the same with ten actors or a hundred thousand. Users without
//! the actor model load a raw Cedar entities JSON file instead.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::cedar_json;
use crate::hash::ContentHash;

/// The JSON Schema every snapshot must satisfy (shipped as
/// `registry/schema/registry-snapshot.schema.json`).
pub const SNAPSHOT_JSON_SCHEMA: &str =
    include_str!("../registry/schema/registry-snapshot.schema.json");

/// Cedar entity type of a registry actor.
pub const ACTOR_TYPE: &str = "Actor";
/// Cedar entity type of a request subject (and of `allowed_subjects` members).
pub const SUBJECT_TYPE: &str = "Subject";

/// Attribute names the compiler sets on every actor; free attributes may not reuse them.
const RESERVED_ATTRIBUTES: [&str; 6] = [
    "type",
    "principals",
    "allowed_subjects",
    "max_ttl_hours",
    "default_ttl_hours",
    "relationships",
];

/// How many schema errors one rejection lists before it says how many more there were.
const MAX_REPORTED_ERRORS: usize = 20;

/// A loaded registry: Cedar entities plus what describes them. Only the loaders build one.
#[derive(Debug)]
pub struct Registry {
    entities: Entities,
    kind: RegistryKind,
    hash: ContentHash,
    entity_count: usize,
}

/// Where the entities came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryKind {
    /// An actor-model snapshot.
    Snapshot {
        /// `schema_version` of the snapshot.
        schema_version: String,
        /// `generated_at` of the snapshot.
        generated_at: String,
        /// `source` of the snapshot.
        source: String,
        /// Number of actors.
        actors: usize,
    },
    /// A raw Cedar entities file.
    CedarEntities,
}

impl Registry {
    /// The Cedar entities decisions are evaluated against.
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// What kind of input this registry was loaded from.
    pub fn kind(&self) -> &RegistryKind {
        &self.kind
    }

    /// Whether this registry is the only source of entities of `type_name`, so that a request
    /// may not describe one it does not hold (AuthZEN properties): a snapshot's actors.
    pub fn is_authoritative_for(&self, type_name: &cedar_policy::EntityTypeName) -> bool {
        matches!(self.kind, RegistryKind::Snapshot { .. }) && type_name.to_string() == ACTOR_TYPE
    }

    /// Content hash of the file.
    pub fn hash(&self) -> &ContentHash {
        &self.hash
    }

    /// Number of entities (actors, or raw entities), not counting schema action entities.
    pub fn entity_count(&self) -> usize {
        self.entity_count
    }
}

/// Why a registry was rejected. The snapshot is rejected as a whole; nothing of it is used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("cannot read `{path}`: {source}")]
    Io {
        /// The path.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Not JSON at all (or truncated).
    #[error("`{path}`:{line}:{column}: invalid JSON: {message}")]
    Json {
        /// The path.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// An object names a key twice: which value counts would depend on the reader.
    #[error("`{path}`: duplicate key `{key_path}`: an object may name a key only once")]
    DuplicateKey {
        /// The path.
        path: String,
        /// JSON path of the second occurrence (`actors[0].max_ttl_hours`).
        key_path: String,
    },
    /// JSON that does not fit the snapshot format.
    #[error("`{path}` does not match the registry snapshot schema:\n  {}", .errors.join("\n  "))]
    Schema {
        /// The path.
        path: String,
        /// One line per problem, each naming the field (`actors[3].max_ttl_hours …`).
        errors: Vec<String>,
    },
    /// The entities do not fit the policy package's Cedar schema, or are otherwise invalid.
    #[error("`{path}`: {message}")]
    Entities {
        /// The path.
        path: String,
        /// Cedar's message, naming the entity.
        message: String,
    },
}

/// Read and compile a registry snapshot file, validating it against the JSON Schema and, when
/// given, the policy package's Cedar schema.
pub fn load_snapshot(path: &Path, schema: Option<&Schema>) -> Result<Registry, RegistryError> {
    let bytes = read_registry(path)?;
    parse_snapshot(&bytes, &path.display().to_string(), schema)
}

/// Read a raw Cedar entities JSON file.
pub fn load_entities(path: &Path, schema: Option<&Schema>) -> Result<Registry, RegistryError> {
    let bytes = read_registry(path)?;
    parse_entities(&bytes, &path.display().to_string(), schema)
}

/// Read a registry file's bytes (hashed before anything is parsed, to skip no-op reloads).
pub fn read_registry(path: &Path) -> Result<Vec<u8>, RegistryError> {
    std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Replace `path` with `bytes` so that a reader sees the old file or the new one, never a part:
/// write a temporary file in the same directory, fsync it, rename it over `path`, fsync the
/// directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "registry".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn parse_json(bytes: &[u8], origin: &str) -> Result<Value, RegistryError> {
    crate::json::parse_value(bytes).map_err(|e| match e {
        crate::json::JsonError::Syntax(e) => RegistryError::Json {
            path: origin.to_owned(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        },
        crate::json::JsonError::DuplicateKey { path } => RegistryError::DuplicateKey {
            path: origin.to_owned(),
            key_path: path,
        },
    })
}

/// Parse, check and compile snapshot bytes; `origin` names them in errors.
pub fn parse_snapshot(
    bytes: &[u8],
    origin: &str,
    schema: Option<&Schema>,
) -> Result<Registry, RegistryError> {
    let value = parse_json(bytes, origin)?;
    let errors = schema_errors(&value);
    if !errors.is_empty() {
        return Err(RegistryError::Schema {
            path: origin.to_owned(),
            errors,
        });
    }
    // By value: the strings move into the typed snapshot and the JSON tree is freed now, not
    // after the entities are built (it is the largest transient allocation of a load).
    let snapshot: Snapshot =
        serde_path_to_error::deserialize(value).map_err(|e| RegistryError::Schema {
            path: origin.to_owned(),
            errors: vec![format!("{}: {}", e.path(), e.inner())],
        })?;
    let errors = semantic_errors(&snapshot);
    if !errors.is_empty() {
        return Err(RegistryError::Schema {
            path: origin.to_owned(),
            errors,
        });
    }
    let actors = snapshot.actors.len();
    let entities =
        compile_entities(&snapshot.actors, schema).map_err(|message| RegistryError::Entities {
            path: origin.to_owned(),
            message,
        })?;
    Ok(Registry {
        entities,
        kind: RegistryKind::Snapshot {
            schema_version: snapshot.schema_version,
            generated_at: snapshot.generated_at,
            source: snapshot.source,
            actors,
        },
        hash: ContentHash::of_bytes(bytes),
        entity_count: actors,
    })
}

/// Parse raw Cedar entities JSON; `origin` names it in errors.
pub fn parse_entities(
    bytes: &[u8],
    origin: &str,
    schema: Option<&Schema>,
) -> Result<Registry, RegistryError> {
    let value = parse_json(bytes, origin)?;
    let count = match &value {
        Value::Array(items) => items.len(),
        _ => {
            return Err(RegistryError::Entities {
                path: origin.to_owned(),
                message: "expected a JSON array of Cedar entities".to_owned(),
            })
        }
    };
    let entities =
        Entities::from_json_value(value, schema).map_err(|e| RegistryError::Entities {
            path: origin.to_owned(),
            message: cedar_message(&e),
        })?;
    Ok(Registry {
        entities,
        kind: RegistryKind::CedarEntities,
        hash: ContentHash::of_bytes(bytes),
        entity_count: count,
    })
}

fn cedar_message(e: &dyn miette::Diagnostic) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = inner.source();
    }
    if let Some(help) = e.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    message
}

#[derive(Debug, Deserialize)]
struct Snapshot {
    schema_version: String,
    generated_at: String,
    source: String,
    actors: Vec<Actor>,
}

#[derive(Debug, Deserialize)]
struct Actor {
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
struct EntityRef {
    #[serde(rename = "type")]
    entity_type: String,
    id: String,
}

/// Checks JSON Schema cannot express: unique actor ids, default ≤ max, free attribute names.
fn semantic_errors(snapshot: &Snapshot) -> Vec<String> {
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

/// Compile actors into Cedar entities, validated against the schema when there is one.
///
/// Entities are built directly (see [`crate::cedar_json`]); only when that is impossible or the
/// schema rejects the direct form does Cedar's JSON reader run, for its schema-directed
/// conversions and its precise error messages.
fn compile_entities(actors: &[Actor], schema: Option<&Schema>) -> Result<Entities, String> {
    if let Some(direct) = build_entities(actors) {
        if let Ok(entities) = Entities::from_entities(direct, schema) {
            return Ok(entities);
        }
    }
    Entities::from_json_value(entities_json(actors), schema)
        .map_err(|e| locate_in_snapshot(actors, cedar_message(&e)))
}

/// Cedar names an entity and an attribute (`attribute `cost_center` on `Actor::"x"` should not
/// exist according to the schema`); operators edit a snapshot, so say where in it the problem
/// is (`actors[0].attributes.cost_center (actor `x`)`), like the snapshot's other errors. The
/// one place Cedar's wording is read; an unrecognised message is passed on whole.
fn locate_in_snapshot(actors: &[Actor], message: String) -> String {
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
fn entities_json(actors: &[Actor]) -> Value {
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

/// Every way `value` misses the snapshot JSON Schema, one readable line each.
fn schema_errors(value: &Value) -> Vec<String> {
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
fn dotted_path(pointer: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(actors: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schema_version": "1.0",
            "generated_at": "2026-11-01T00:00:00Z",
            "source": "test",
            "actors": actors,
        }))
        .unwrap()
    }

    fn actor(id: &str) -> Value {
        json!({"id": id, "type": "agent", "principals": ["p"], "allowed_subjects": [id],
               "max_ttl_hours": 8, "default_ttl_hours": 4})
    }

    fn schema_error(bytes: &[u8]) -> Vec<String> {
        match parse_snapshot(bytes, "t.json", None) {
            Err(RegistryError::Schema { errors, .. }) => errors,
            other => panic!("expected a schema error, got {other:?}"),
        }
    }

    #[test]
    fn bad_max_ttl_names_actor_and_field() {
        let mut bad = actor("atm-backup-daily");
        bad["max_ttl_hours"] = json!(0);
        bad["default_ttl_hours"] = json!(0);
        let errors = schema_error(&snapshot(json!([actor("a"), actor("b"), actor("c"), bad])));
        assert!(
            errors.iter().any(|e| e
                == "actors[3].max_ttl_hours (actor `atm-backup-daily`): expected integer ≥ 1 ≤ 8760, got 0"),
            "{errors:?}"
        );
    }

    #[test]
    fn wrong_type_and_missing_and_unknown_fields_are_named() {
        let mut bad = actor("x");
        bad["max_ttl_hours"] = json!("8");
        bad.as_object_mut().unwrap().remove("principals");
        bad["max_ttl_hour"] = json!(3);
        let errors = schema_error(&snapshot(json!([bad])));
        let all = errors.join("\n");
        assert!(
            all.contains("actors[0].max_ttl_hours (actor `x`): expected integer"),
            "{all}"
        );
        assert!(all.contains("missing required field `principals`"), "{all}");
        assert!(all.contains("unknown field `max_ttl_hour`"), "{all}");
    }

    #[test]
    fn duplicate_ids_and_default_over_max_are_rejected() {
        let mut over = actor("y");
        over["default_ttl_hours"] = json!(9);
        let errors = schema_error(&snapshot(json!([actor("x"), actor("x"), over])));
        assert!(errors
            .iter()
            .any(|e| e.contains("actors[1].id: duplicate actor id `x`")));
        assert!(errors
            .iter()
            .any(|e| e.contains("actors[2].default_ttl_hours (actor `y`): 9 exceeds")));
    }

    #[test]
    fn truncated_json_is_a_json_error_with_position() {
        let mut bytes = snapshot(json!([actor("x")]));
        bytes.truncate(bytes.len() / 2);
        assert!(matches!(
            parse_snapshot(&bytes, "t.json", None),
            Err(RegistryError::Json { line: 1, .. })
        ));
    }

    #[test]
    fn snapshot_compiles_to_actor_entities() {
        let registry =
            parse_snapshot(&snapshot(json!([actor("x"), actor("y")])), "t", None).unwrap();
        assert_eq!(registry.entity_count(), 2);
        let uid = cedar_policy::EntityUid::from_type_name_and_id(
            ACTOR_TYPE.parse().unwrap(),
            cedar_policy::EntityId::new("x"),
        );
        assert!(registry.entities().get(&uid).is_some());
    }

    #[test]
    fn dotted_path_formats_indices() {
        assert_eq!(
            dotted_path("/actors/3/max_ttl_hours"),
            "actors[3].max_ttl_hours"
        );
        assert_eq!(dotted_path(""), "");
    }
}
