//! Registry snapshots: the JSON format, its JSON Schema, and compiling a snapshot into Cedar
//! entities once at load time.
//!
//! A snapshot lists actors; each becomes an `Actor::"<id>"` entity whose `allowed_subjects` are
//! `Subject` entity references, so a policy can say
//! `resource.allowed_subjects.contains(principal)`. The entity store Cedar evaluates against is a
//! hash map, so a decision costs the same with ten actors or a hundred thousand. Users without
//! the actor model load a raw Cedar entities JSON file instead.
//!
//! `snapshot` holds the snapshot's Rust shape and its compilation into entities, `json_schema`
//! the JSON Schema check and its messages (each naming the actor and field at fault).

use std::path::Path;
use std::time::{Duration, Instant};

use cedar_policy::{Entities, Entity, EntityTypeName, EntityUid, Schema};
use serde_json::Value;

mod compact;
mod json_schema;
mod shape;
mod snapshot;
mod stream;

pub use compact::ActorStore;
use json_schema::schema_errors;
use snapshot::{entities_json, semantic_errors, Snapshot};

use crate::hash::ContentHash;

/// The JSON Schema every snapshot must satisfy (shipped as
/// `registry/schema/registry-snapshot.schema.json`).
pub const SNAPSHOT_JSON_SCHEMA: &str =
    include_str!("../../registry/schema/registry-snapshot.schema.json");

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

/// A loaded registry: the entities decisions read, plus what describes them. Only the loaders
/// build one.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    kind: RegistryKind,
    hash: ContentHash,
    entity_count: usize,
    phases: LoadPhases,
}

/// How long the stages of a registry's load took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadPhases {
    /// Reading the file (zero for pushed bytes).
    pub read: Duration,
    /// Parsing the JSON and checking it against the JSON Schema and the format's own rules.
    pub parse_validate: Duration,
    /// Validating the entities against the package's Cedar schema and building the store.
    pub compile: Duration,
}

/// How the entities are held.
#[derive(Debug)]
enum Store {
    /// A snapshot's actors in the compact store; a request's entities are rebuilt from it (see
    /// `decision`'s slice). Beside them, the schema's action entities, as Cedar holds them.
    Actors {
        actors: Box<ActorStore>,
        actions: Entities,
    },
    /// A raw Cedar entities file, held whole as Cedar holds it (`--entities`).
    Cedar(Entities),
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
    /// The whole Cedar entity store, for a raw entities file; `None` for a snapshot, whose
    /// actors are kept compact and rebuilt per request ([`Registry::entity`]).
    pub fn whole_store(&self) -> Option<&Entities> {
        match &self.store {
            Store::Cedar(entities) => Some(entities),
            Store::Actors { .. } => None,
        }
    }

    /// The entity `uid` names, if the registry holds it (for a snapshot: an actor, rebuilt, or
    /// one of the schema's actions), with the uids it refers to — parents and entity references
    /// in its attributes that could themselves be held — pushed onto `refs`. `Err` only when an
    /// actor cannot be rebuilt, which load-time checks rule out.
    pub fn entity(
        &self,
        uid: &EntityUid,
        refs: &mut Vec<EntityUid>,
    ) -> Option<Result<Entity, String>> {
        match &self.store {
            Store::Actors { actors, actions } => actors
                .entity(uid, refs)
                .or_else(|| actions.get(uid).cloned().map(Ok)),
            Store::Cedar(entities) => {
                let entity = entities.get(uid)?;
                if let Ok(json) = entity.to_json_value() {
                    crate::cedar_json::entity_refs(&json, refs);
                }
                Some(Ok(entity.clone()))
            }
        }
    }

    /// Every entity type the registry's entities name.
    pub fn entity_types(&self) -> Vec<EntityTypeName> {
        match &self.store {
            Store::Actors { actors, .. } => actors.entity_types().cloned().collect(),
            Store::Cedar(entities) => {
                let mut types: Vec<EntityTypeName> = Vec::new();
                for entity in entities.iter() {
                    let uid = entity.uid();
                    if !types.contains(uid.type_name()) {
                        types.push(uid.type_name().clone());
                    }
                }
                types
            }
        }
    }

    /// Heap bytes of the compact actor store; `None` for a raw Cedar entities file (Cedar does
    /// not say what its store takes).
    pub fn bytes(&self) -> Option<usize> {
        match &self.store {
            Store::Actors { actors, .. } => Some(actors.bytes()),
            Store::Cedar(_) => None,
        }
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

    /// How long this registry's load took, by stage.
    pub fn phases(&self) -> LoadPhases {
        self.phases
    }

    /// Record how long reading the file took (the caller read it before parsing).
    pub fn with_read_time(mut self, read: Duration) -> Self {
        self.phases.read = read;
        self
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
    let started = Instant::now();
    let bytes = read_registry(path)?;
    let read = started.elapsed();
    Ok(parse_snapshot(&bytes, &path.display().to_string(), schema)?.with_read_time(read))
}

/// Read a raw Cedar entities JSON file.
pub fn load_entities(path: &Path, schema: Option<&Schema>) -> Result<Registry, RegistryError> {
    let started = Instant::now();
    let bytes = read_registry(path)?;
    let read = started.elapsed();
    Ok(parse_entities(&bytes, &path.display().to_string(), schema)?.with_read_time(read))
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
    crate::json::parse_value(bytes).map_err(|e| json_error(origin, e))
}

fn json_error(origin: &str, e: crate::json::JsonError) -> RegistryError {
    match e {
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
    }
}

/// Snapshot bytes parsed and checked against the JSON Schema and the rules it cannot express.
fn checked_snapshot(bytes: &[u8], origin: &str) -> Result<Snapshot, RegistryError> {
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
    Ok(snapshot)
}

/// Parse, check and compile snapshot bytes; `origin` names them in errors. The actors are
/// streamed into the compact store one at a time (see `stream`): the file's JSON tree is never
/// built whole.
pub fn parse_snapshot(
    bytes: &[u8],
    origin: &str,
    schema: Option<&Schema>,
) -> Result<Registry, RegistryError> {
    let started = Instant::now();
    let (loaded, hash) = load_and_hash(bytes, schema);
    let loaded = loaded.map_err(|refused| match refused {
        stream::Refused::Json(e) => json_error(origin, e),
        stream::Refused::Schema(errors) => RegistryError::Schema {
            path: origin.to_owned(),
            errors,
        },
        stream::Refused::Entities(message) => RegistryError::Entities {
            path: origin.to_owned(),
            message,
        },
    })?;
    let total = started.elapsed();
    Ok(Registry {
        store: Store::Actors {
            actors: Box::new(loaded.store),
            actions: loaded.actions,
        },
        kind: RegistryKind::Snapshot {
            schema_version: loaded.header.schema_version,
            generated_at: loaded.header.generated_at,
            source: loaded.header.source,
            actors: loaded.actors,
        },
        hash,
        entity_count: loaded.actors,
        phases: LoadPhases {
            read: Duration::ZERO,
            parse_validate: total.saturating_sub(loaded.compile),
            compile: loaded.compile,
        },
    })
}

/// Stream the snapshot into the store and, for a large one, hash it on a second thread at the
/// same time (the hash is a tenth of a load's time; the thread inherits the load's priority).
fn load_and_hash(
    bytes: &[u8],
    schema: Option<&Schema>,
) -> (Result<stream::Loaded, stream::Refused>, ContentHash) {
    const PARALLEL_FROM: usize = 1 << 20;
    if bytes.len() < PARALLEL_FROM {
        return (stream::load(bytes, schema), ContentHash::of_bytes(bytes));
    }
    std::thread::scope(|scope| {
        let hashing = std::thread::Builder::new()
            .name("flex-auth-hash".to_owned())
            .spawn_scoped(scope, || ContentHash::of_bytes(bytes));
        let loaded = stream::load(bytes, schema);
        let hash = hashing
            .ok()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_else(|| ContentHash::of_bytes(bytes));
        (loaded, hash)
    })
}

/// The Cedar entities JSON a snapshot stands for: what `--entities` would load to hold the same
/// actors in Cedar's own store. Checked like [`parse_snapshot`] up to the compile.
pub fn snapshot_entities_json(bytes: &[u8], origin: &str) -> Result<Value, RegistryError> {
    let snapshot = checked_snapshot(bytes, origin)?;
    Ok(entities_json(&snapshot.actors))
}

/// Parse raw Cedar entities JSON; `origin` names it in errors.
pub fn parse_entities(
    bytes: &[u8],
    origin: &str,
    schema: Option<&Schema>,
) -> Result<Registry, RegistryError> {
    let started = Instant::now();
    let value = parse_json(bytes, origin)?;
    let parse_validate = started.elapsed();
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
        store: Store::Cedar(entities),
        kind: RegistryKind::CedarEntities,
        hash: ContentHash::of_bytes(bytes),
        entity_count: count,
        phases: LoadPhases {
            read: Duration::ZERO,
            parse_validate,
            compile: started.elapsed().saturating_sub(parse_validate),
        },
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::json_schema::dotted_path;
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
        let mut refs = Vec::new();
        let entity = registry.entity(&uid, &mut refs).unwrap().unwrap();
        assert_eq!(
            entity.attr("max_ttl_hours").unwrap().unwrap(),
            cedar_policy::EvalResult::Long(8)
        );
        assert!(registry.whole_store().is_none());
        assert!(registry.bytes().unwrap() > 0);
    }

    /// Enough actors to span validation batches, `a0` … `a{n-1}`.
    fn many(n: usize) -> Vec<Value> {
        (0..n).map(|i| actor(&format!("a{i}"))).collect()
    }

    #[test]
    fn a_cycle_across_validation_batches_names_an_actor_on_it() {
        let mut actors = many(snapshot::VALIDATION_BATCH + 10);
        let last = actors.len() - 1;
        actors[0]["relationships"] = json!([{"type": "Actor", "id": format!("a{last}")}]);
        actors[last]["relationships"] = json!([{"type": "Actor", "id": "a0"}]);
        let err = parse_snapshot(&snapshot(Value::Array(actors)), "t.json", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(".relationships (actor `a"), "{err}");
        assert!(err.contains("must not have a cycle"), "{err}");
    }

    #[test]
    fn a_duplicate_across_validation_batches_names_both_places() {
        let mut actors = many(snapshot::VALIDATION_BATCH + 10);
        let last = actors.len() - 1;
        actors[last]["id"] = json!("a1");
        let errors = schema_error(&snapshot(Value::Array(actors)));
        assert_eq!(
            errors,
            vec![format!(
                "actors[{last}].id: duplicate actor id `a1` (first at actors[1])"
            )]
        );
    }

    #[test]
    fn top_level_problems_are_named_beside_the_streamed_actors() {
        let mut doc: Value = serde_json::from_slice(&snapshot(json!([actor("x")]))).unwrap();
        doc.as_object_mut().unwrap().remove("schema_version");
        doc["extra"] = json!(1);
        let all = schema_error(&serde_json::to_vec(&doc).unwrap()).join("\n");
        assert!(
            all.contains("missing required field `schema_version`"),
            "{all}"
        );
        assert!(all.contains("unknown field `extra`"), "{all}");
        let not_array = schema_error(&snapshot(json!({"a": 1}))).join("\n");
        assert!(
            not_array.contains("actors: expected an array"),
            "{not_array}"
        );
    }

    #[test]
    fn many_schema_problems_are_capped_and_counted() {
        let actors: Vec<Value> = (0..30).map(|i| json!({"id": format!("a{i}")})).collect();
        let errors = schema_error(&snapshot(Value::Array(actors)));
        assert_eq!(errors.len(), MAX_REPORTED_ERRORS + 1);
        assert!(errors.last().unwrap().starts_with("… and "), "{errors:?}");
        assert!(errors[0].starts_with("actors[0]"), "{errors:?}");
    }

    #[test]
    fn a_duplicate_key_inside_an_actor_is_named_with_its_path() {
        let text = String::from_utf8(snapshot(json!([actor("x"), actor("y")]))).unwrap();
        let text = text.replacen(
            "\"max_ttl_hours\":8",
            "\"max_ttl_hours\":8,\"max_ttl_hours\":800",
            2,
        );
        match parse_snapshot(text.as_bytes(), "t.json", None) {
            Err(RegistryError::DuplicateKey { key_path, .. }) => {
                assert_eq!(key_path, "actors[0].max_ttl_hours");
            }
            other => panic!("expected a duplicate key, got {other:?}"),
        }
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
