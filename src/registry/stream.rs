//! Loading a snapshot without its whole JSON tree: the `actors` array is streamed, each actor
//! checked against the JSON Schema's actor definition and the format's own rules as it is read,
//! validated by Cedar a batch at a time and added to the compact store; the top-level fields are
//! checked once at the end. The peak is bounded by one batch of actors, not by the file.
//!
//! Errors are the ones the whole-tree check gives, named the same way: every JSON Schema problem
//! (up to the reporting limit) first; only when there are none, the format's rules; only when
//! those pass, Cedar's. Once a problem is found nothing more is compiled, but reading goes on so
//! that all of a file's schema problems are reported at once.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{Entities, EntityTypeName, Schema};
use serde::Deserialize;
use serde_json::Value;

use super::compact::{ActorStore, StoreBuilder};
use crate::json::{Element, JsonError};

use super::json_schema::{actor_schema_errors, fast_actor, schema_errors};
use super::shape::Shapes;
use super::snapshot::{actor_errors, acyclic, compile_batch, Actor, VALIDATION_BATCH};
use super::{cedar_message, ACTOR_TYPE, MAX_REPORTED_ERRORS};

/// The top-level fields of a snapshot, once its actors have been streamed.
#[derive(Debug, Deserialize)]
pub(super) struct Header {
    pub(super) schema_version: String,
    pub(super) generated_at: String,
    pub(super) source: String,
}

/// A loaded snapshot's parts.
pub(super) struct Loaded {
    pub(super) header: Header,
    pub(super) store: ActorStore,
    pub(super) actions: Entities,
    pub(super) actors: usize,
    /// Time spent validating with Cedar and building the store (the rest is parsing and the
    /// JSON Schema and format checks).
    pub(super) compile: Duration,
}

/// Why a snapshot was refused.
pub(super) enum Refused {
    /// Not JSON, or a duplicate key.
    Json(crate::json::JsonError),
    /// JSON Schema or format problems, one line each.
    Schema(Vec<String>),
    /// Cedar refused an actor (or the relationships form a cycle).
    Entities(String),
}

struct Loader<'s> {
    schema: Option<&'s Schema>,
    builder: StoreBuilder,
    shapes: Shapes,
    batch: Vec<Actor>,
    /// Ids in `batch`, with their positions (ids already in the store are found there).
    batch_ids: HashMap<String, usize>,
    /// For actors that name other actors as parents: position, id and the parents' ids.
    actor_parents: Vec<(usize, String, Vec<String>)>,
    schema_errors: Vec<String>,
    schema_problems: usize,
    rule_errors: Vec<String>,
    cedar_error: Option<String>,
    actors: usize,
    compile: Duration,
}

impl Loader<'_> {
    fn failed(&self) -> bool {
        self.schema_problems > 0 || !self.rule_errors.is_empty() || self.cedar_error.is_some()
    }

    /// One streamed actor: read typed straight from its text when it certainly fits the
    /// schema; otherwise as a [`Value`] checked by the JSON Schema, for its messages.
    fn actor(&mut self, element: Element<'_>) -> Result<(), JsonError> {
        let index = element.index();
        self.actors = index + 1;
        if let Some(actor) = fast_actor(element.raw()) {
            self.add(index, actor);
            return Ok(());
        }
        let value = element.value()?;
        let room = MAX_REPORTED_ERRORS.saturating_sub(self.schema_errors.len());
        let (errors, problems, value) = actor_schema_errors(index, value, room);
        self.schema_problems += problems;
        self.schema_errors.extend(errors);
        if self.schema_problems > 0 {
            return Ok(());
        }
        match serde_path_to_error::deserialize(value) {
            Ok(actor) => self.add(index, actor),
            Err(e) => {
                self.schema_problems += 1;
                self.schema_errors
                    .push(format!("actors[{index}].{}: {}", e.path(), e.inner()));
            }
        }
        Ok(())
    }

    /// The format's rules, then the batch (once nothing has failed).
    fn add(&mut self, index: usize, actor: Actor) {
        if self.schema_problems > 0 {
            return;
        }
        if self.rule_errors.len() >= MAX_REPORTED_ERRORS {
            return;
        }
        let first = self
            .builder
            .index_of(actor.id())
            .or_else(|| self.batch_ids.get(actor.id()).copied());
        actor_errors(index, &actor, first, &mut self.rule_errors);
        if first.is_none() {
            self.batch_ids.insert(actor.id().to_owned(), index);
        }
        if self.failed() {
            // Nothing more is compiled; the ids stay in `batch_ids` for the duplicate check.
            self.batch.clear();
            return;
        }
        let parents: Vec<String> = actor.actor_parents().map(str::to_owned).collect();
        if !parents.is_empty() {
            self.actor_parents
                .push((index, actor.id().to_owned(), parents));
        }
        self.batch.push(actor);
        if self.batch.len() >= VALIDATION_BATCH {
            self.compile_batch();
        }
    }

    fn compile_batch(&mut self) {
        let started = Instant::now();
        let offset = self.builder.len();
        if let Err(e) = compile_batch(
            &self.batch,
            offset,
            self.schema,
            &mut self.builder,
            &mut self.shapes,
        ) {
            self.cedar_error = Some(e);
        }
        self.batch.clear();
        self.batch_ids.clear();
        self.compile += started.elapsed();
    }
}

/// Stream snapshot `bytes` into the compact store, validating against `schema` when given.
pub(super) fn load(bytes: &[u8], schema: Option<&Schema>) -> Result<Loaded, Refused> {
    let actions =
        Entities::from_entities([], schema).map_err(|e| Refused::Entities(cedar_message(&e)))?;
    let actor_type = EntityTypeName::from_str(ACTOR_TYPE)
        .map_err(|e| Refused::Entities(format!("`{ACTOR_TYPE}`: {e}")))?;
    // A typical actor takes ~240 bytes of JSON. Room for twice that many actors: a vector that
    // grows is copied (and its new pages zeroed) at its full size, while room never used costs
    // no resident memory and `finish` gives it back without a copy (the allocator shrinks in
    // place when at most half is unused).
    let estimate = bytes.len() / 128;
    let mut loader = Loader {
        schema,
        builder: StoreBuilder::new(actor_type, &actions, estimate),
        shapes: Shapes::new(schema),
        batch: Vec::with_capacity(VALIDATION_BATCH.min(estimate.max(1))),
        batch_ids: HashMap::new(),
        actor_parents: Vec::new(),
        schema_errors: Vec::new(),
        schema_problems: 0,
        rule_errors: Vec::new(),
        cedar_error: None,
        actors: 0,
        compile: Duration::ZERO,
    };
    let (mut top, streamed) =
        crate::json::parse_streamed(bytes, "actors", &mut |e| loader.actor(e))
            .map_err(Refused::Json)?;
    if streamed {
        top.insert("actors".to_owned(), Value::Array(Vec::new()));
    }
    let top_level = Value::Object(top);
    let mut errors = schema_errors(&top_level);
    let problems = errors.len() + loader.schema_problems;
    errors.append(&mut loader.schema_errors);
    if problems > 0 {
        errors.truncate(MAX_REPORTED_ERRORS);
        if problems > errors.len() {
            errors.push(format!("… and {} more", problems - errors.len()));
        }
        return Err(Refused::Schema(errors));
    }
    if !loader.rule_errors.is_empty() {
        loader.rule_errors.truncate(MAX_REPORTED_ERRORS);
        return Err(Refused::Schema(loader.rule_errors));
    }
    if !loader.batch.is_empty() && loader.cedar_error.is_none() {
        loader.compile_batch();
    }
    if let Some(e) = loader.cedar_error {
        return Err(Refused::Entities(e));
    }
    let header: Header = serde_path_to_error::deserialize(top_level)
        .map_err(|e| Refused::Schema(vec![format!("{}: {}", e.path(), e.inner())]))?;
    let started = Instant::now();
    let builder = &loader.builder;
    let mut edges: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut names: HashMap<usize, &str> = HashMap::new();
    for (child, id, parents) in &loader.actor_parents {
        let known: Vec<usize> = parents.iter().filter_map(|p| builder.index_of(p)).collect();
        if !known.is_empty() {
            edges.insert(*child, known);
            names.insert(*child, id);
        }
    }
    // Every actor on a cycle names an actor parent, so `names` holds them all.
    acyclic(&edges, |i| {
        names.get(&i).map_or_else(String::new, |n| (*n).to_owned())
    })
    .map_err(Refused::Entities)?;
    let store = loader.builder.finish();
    Ok(Loaded {
        header,
        store,
        actions,
        actors: loader.actors,
        compile: loader.compile + started.elapsed(),
    })
}
