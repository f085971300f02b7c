//! The compact actor store: every actor of a snapshot in a few flat vectors, built once at load,
//! and the Cedar entity of one actor rebuilt from it when a request reaches that actor.
//!
//! Cedar's `Entities` keeps each actor as a full entity (attribute maps, each set twice, the
//! ancestors on every entity): 4–5 KB an actor. Here an actor is an id, a span of attributes and
//! a span of parents; strings are interned once in one arena (`Sym`), sets and records are spans
//! of a shared value pool, and an id → index table finds an actor in O(1). The values stored are
//! the ones Cedar produced when it validated the actor against the package's schema at load, so
//! an entity rebuilt from them is the entity the whole store would have held.

use std::hash::BuildHasher;
use std::str::FromStr;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, EvalResult, RestrictedExpression,
};
use hashbrown::{DefaultHashBuilder, HashTable};

/// How deep an attribute value may nest (sets in records in sets …). Cedar's own readers stop
/// well before; the bound keeps every recursion here finite.
const MAX_DEPTH: usize = 64;

/// An interned string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sym(u32);

/// A run of entries in one of the pools.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// One Cedar value, its strings interned and its members in the pools.
#[derive(Debug, Clone, Copy)]
enum Val {
    Bool(bool),
    Long(i64),
    Str(Sym),
    /// An entity reference: index into `types`, and the id.
    Entity(u32, Sym),
    /// Members in `values`.
    Set(Span),
    /// Fields in `fields`.
    Record(Span),
    /// An extension value as the restricted expression Cedar prints for it (`decimal("1.5")`).
    Ext(Sym),
}

#[derive(Debug, Clone, Copy)]
struct ActorRecord {
    id: Sym,
    /// In `fields`.
    attrs: Span,
    /// In `parents`.
    parents: Span,
}

/// Every actor of a snapshot. Immutable once built; see the module documentation.
#[derive(Debug)]
pub struct ActorStore {
    actor_type: EntityTypeName,
    /// All interned strings, back to back; `ends[i]` is where string `i` ends.
    text: String,
    ends: Vec<u32>,
    actors: Vec<ActorRecord>,
    /// Actor indices, hashed by id.
    by_id: HashTable<u32>,
    hasher: DefaultHashBuilder,
    values: Vec<Val>,
    fields: Vec<(Sym, Val)>,
    parents: Vec<(u32, Sym)>,
    /// Entity types named by parents and references, with whether an entity of that type can
    /// be in the store (actors, and the schema's actions): references to any other type lead
    /// nowhere and are not followed.
    types: Vec<(EntityTypeName, bool)>,
}

impl ActorStore {
    /// Number of actors.
    pub fn len(&self) -> usize {
        self.actors.len()
    }

    /// Whether the store holds no actor.
    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    /// Heap bytes the store holds (capacities, not lengths: what the allocator gave it).
    pub fn bytes(&self) -> usize {
        use std::mem::size_of;
        self.text.capacity()
            + self.ends.capacity() * size_of::<u32>()
            + self.actors.capacity() * size_of::<ActorRecord>()
            + self.by_id.capacity() * (size_of::<u32>() + 1)
            + self.values.capacity() * size_of::<Val>()
            + self.fields.capacity() * size_of::<(Sym, Val)>()
            + self.parents.capacity() * size_of::<(u32, Sym)>()
            + self.types.capacity() * size_of::<(EntityTypeName, bool)>()
    }

    /// The entity types the store's actors name (their own and their parents' and references').
    pub fn entity_types(&self) -> impl Iterator<Item = &EntityTypeName> {
        std::iter::once(&self.actor_type).chain(self.types.iter().map(|(t, _)| t))
    }

    fn str(&self, sym: Sym) -> &str {
        interned(&self.text, &self.ends, sym.0)
    }

    fn find(&self, id: &str) -> Option<&ActorRecord> {
        self.actors.get(self.index_of(id)?)
    }

    /// Position of the actor `id` in the snapshot.
    fn index_of(&self, id: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(id);
        self.by_id
            .find(hash, |&ix| {
                self.actors
                    .get(ix as usize)
                    .is_some_and(|a| self.str(a.id) == id)
            })
            .map(|&ix| ix as usize)
    }

    /// The Cedar entity of the actor `uid` names, rebuilt, with the uids it refers to (parents
    /// and entity references in its attributes) that the store or the schema's actions could
    /// hold pushed onto `refs`. `None` when `uid` is not one of the store's actors.
    pub fn entity(
        &self,
        uid: &EntityUid,
        refs: &mut Vec<EntityUid>,
    ) -> Option<Result<Entity, String>> {
        if uid.type_name() != &self.actor_type {
            return None;
        }
        let actor = self.find(uid.id().unescaped())?;
        Some(self.build(uid, actor, refs))
    }

    fn build(
        &self,
        uid: &EntityUid,
        actor: &ActorRecord,
        refs: &mut Vec<EntityUid>,
    ) -> Result<Entity, String> {
        let mut attrs = Vec::with_capacity(actor.attrs.len as usize);
        for (key, value) in self.fields.get(actor.attrs.range()).unwrap_or(&[]) {
            attrs.push((self.str(*key).to_owned(), self.restricted(*value, refs, 0)?));
        }
        let mut parents = Vec::with_capacity(actor.parents.len as usize);
        for &(t, id) in self.parents.get(actor.parents.range()).unwrap_or(&[]) {
            let (parent, followed) = self.uid(t, id)?;
            if followed {
                refs.push(parent.clone());
            }
            parents.push(parent);
        }
        Entity::new_with_tags(uid.clone(), attrs, parents, [])
            .map_err(|e| format!("actor `{}`: {e}", uid.id().unescaped()))
    }

    fn uid(&self, t: u32, id: Sym) -> Result<(EntityUid, bool), String> {
        let (type_name, followed) = self
            .types
            .get(t as usize)
            .ok_or_else(|| "compact store: entity type out of range".to_owned())?;
        Ok((
            EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(self.str(id))),
            *followed,
        ))
    }

    fn restricted(
        &self,
        value: Val,
        refs: &mut Vec<EntityUid>,
        depth: usize,
    ) -> Result<RestrictedExpression, String> {
        if depth > MAX_DEPTH {
            return Err("compact store: value nested too deep".to_owned());
        }
        Ok(match value {
            Val::Bool(b) => RestrictedExpression::new_bool(b),
            Val::Long(n) => RestrictedExpression::new_long(n),
            Val::Str(s) => RestrictedExpression::new_string(self.str(s).to_owned()),
            Val::Entity(t, id) => {
                let (uid, followed) = self.uid(t, id)?;
                if followed {
                    refs.push(uid.clone());
                }
                RestrictedExpression::new_entity_uid(uid)
            }
            Val::Set(span) => {
                let members = self.values.get(span.range()).unwrap_or(&[]);
                let mut out = Vec::with_capacity(members.len());
                for member in members {
                    out.push(self.restricted(*member, refs, depth + 1)?);
                }
                RestrictedExpression::new_set(out)
            }
            Val::Record(span) => {
                let fields = self.fields.get(span.range()).unwrap_or(&[]);
                let mut out = Vec::with_capacity(fields.len());
                for (key, member) in fields {
                    out.push((
                        self.str(*key).to_owned(),
                        self.restricted(*member, refs, depth + 1)?,
                    ));
                }
                RestrictedExpression::new_record(out).map_err(|e| e.to_string())?
            }
            Val::Ext(expr) => RestrictedExpression::from_str(self.str(expr))
                .map_err(|e| format!("compact store: extension value: {e}"))?,
        })
    }
}

/// One attribute of an actor for [`StoreBuilder::push_plain`].
pub enum PlainAttr<'a> {
    /// A free attribute's JSON.
    Json(&'a serde_json::Value),
    /// A set of strings.
    Strings(&'a [String]),
    /// A set of entity references of one type.
    Refs(&'a EntityTypeName, &'a [String]),
    /// A long.
    Long(i64),
    /// A string.
    Str(&'a str),
}

/// Builds an [`ActorStore`] one validated actor at a time.
pub struct StoreBuilder {
    store: ActorStore,
    /// Interned strings by hash (build time only: dropped when the store is finished).
    interned: HashTable<u32>,
    /// Types an entity of which can be in the store besides actors: the schema's action types.
    stored_types: Vec<EntityTypeName>,
}

impl StoreBuilder {
    /// A builder for actors of type `actor_type`; `actions` are the schema's action entities
    /// (their types are the only other ones a reference may usefully point to).
    pub fn new(actor_type: EntityTypeName, actions: &Entities, capacity: usize) -> Self {
        let mut stored_types: Vec<EntityTypeName> = Vec::new();
        for action in actions.iter() {
            let t = action.uid().type_name().clone();
            if !stored_types.contains(&t) {
                stored_types.push(t);
            }
        }
        Self {
            store: ActorStore {
                actor_type,
                text: String::with_capacity(capacity.saturating_mul(48)),
                ends: Vec::with_capacity(capacity.saturating_mul(3)),
                actors: Vec::with_capacity(capacity),
                by_id: HashTable::with_capacity(capacity),
                hasher: DefaultHashBuilder::default(),
                values: Vec::with_capacity(capacity.saturating_mul(4)),
                fields: Vec::with_capacity(capacity.saturating_mul(7)),
                parents: Vec::new(),
                types: Vec::new(),
            },
            interned: HashTable::with_capacity(capacity.saturating_mul(3)),
            stored_types,
        }
    }

    /// The type of the actors being added.
    pub fn actor_type(&self) -> &EntityTypeName {
        &self.store.actor_type
    }

    /// Position of the actor `id` among those added so far.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.store.index_of(id)
    }

    /// Number of actors added so far.
    pub fn len(&self) -> usize {
        self.store.actors.len()
    }

    fn intern(&mut self, s: &str) -> Result<Sym, String> {
        let store = &mut self.store;
        let hash = store.hasher.hash_one(s);
        let found = self
            .interned
            .find(hash, |&i| interned(&store.text, &store.ends, i) == s);
        if let Some(&i) = found {
            return Ok(Sym(i));
        }
        let index = u32::try_from(store.ends.len()).map_err(|_| too_large())?;
        store.text.push_str(s);
        store
            .ends
            .push(u32::try_from(store.text.len()).map_err(|_| too_large())?);
        let (ends, text) = (&store.ends, &store.text);
        let hasher = &store.hasher;
        self.interned
            .insert_unique(hash, index, |&i| hasher.hash_one(interned(text, ends, i)));
        Ok(Sym(index))
    }

    fn type_ix(&mut self, t: &EntityTypeName) -> Result<u32, String> {
        if let Some(i) = self.store.types.iter().position(|(n, _)| n == t) {
            return u32::try_from(i).map_err(|_| too_large());
        }
        let followed = *t == self.store.actor_type || self.stored_types.contains(t);
        self.store.types.push((t.clone(), followed));
        u32::try_from(self.store.types.len() - 1).map_err(|_| too_large())
    }

    fn value(&mut self, value: &EvalResult, depth: usize) -> Result<Val, String> {
        if depth > MAX_DEPTH {
            return Err(format!("a value nests deeper than {MAX_DEPTH} levels"));
        }
        Ok(match value {
            EvalResult::Bool(b) => Val::Bool(*b),
            EvalResult::Long(n) => Val::Long(*n),
            EvalResult::String(s) => Val::Str(self.intern(s)?),
            EvalResult::EntityUid(uid) => {
                let t = self.type_ix(uid.type_name())?;
                Val::Entity(t, self.intern(uid.id().unescaped())?)
            }
            EvalResult::Set(set) => {
                let members = set
                    .iter()
                    .map(|m| self.value(m, depth + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                Val::Set(push_span(&mut self.store.values, members)?)
            }
            EvalResult::Record(record) => {
                let mut fields = Vec::with_capacity(record.len());
                for (key, member) in record.iter() {
                    let key = self.intern(key)?;
                    fields.push((key, self.value(member, depth + 1)?));
                }
                Val::Record(push_span(&mut self.store.fields, fields)?)
            }
            EvalResult::ExtensionValue(expr) => {
                // Read back once now, so a request never meets one that does not parse.
                RestrictedExpression::from_str(expr)
                    .map_err(|e| format!("extension value `{expr}` does not read back: {e}"))?;
                Val::Ext(self.intern(expr)?)
            }
        })
    }

    /// Add one actor from plain JSON attributes, the way [`crate::cedar_json`] maps them onto
    /// Cedar (string, boolean, 64-bit integer, array → set, object → record): for an actor
    /// whose directly built entity the schema accepted, these are the values Cedar holds, and
    /// this skips reading them back out of Cedar. `subjects` become `subject_type` references.
    /// `None` when a value is not plain JSON (the caller then uses [`StoreBuilder::push`]).
    pub fn push_plain(
        &mut self,
        id: &str,
        attrs: &[(&str, PlainAttr<'_>)],
        parents: &[EntityUid],
    ) -> Option<Result<(), String>> {
        let mut fields = Vec::with_capacity(attrs.len());
        for (key, value) in attrs {
            let key = match self.intern(key) {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            let value = match value {
                PlainAttr::Json(v) => self.plain(v, 0)?,
                PlainAttr::Strings(items) => self.strings(items, None),
                PlainAttr::Refs(t, items) => self.strings(items, Some(t)),
                PlainAttr::Long(n) => Ok(Val::Long(*n)),
                PlainAttr::Str(s) => self.intern(s).map(Val::Str),
            };
            match value {
                Ok(v) => fields.push((key, v)),
                Err(e) => return Some(Err(e)),
            }
        }
        Some(self.add(id, fields, parents))
    }

    fn strings(
        &mut self,
        items: &[String],
        entity_type: Option<&EntityTypeName>,
    ) -> Result<Val, String> {
        let t = entity_type.map(|t| self.type_ix(t)).transpose()?;
        let mut members = Vec::with_capacity(items.len());
        for item in items {
            let sym = self.intern(item)?;
            members.push(match t {
                Some(t) => Val::Entity(t, sym),
                None => Val::Str(sym),
            });
        }
        Ok(Val::Set(push_span(&mut self.store.values, members)?))
    }

    /// `None`: not plain JSON. `Some(Err)`: the store is full.
    fn plain(&mut self, value: &serde_json::Value, depth: usize) -> Option<Result<Val, String>> {
        use serde_json::Value as J;
        if depth > MAX_DEPTH {
            return None;
        }
        Some(match value {
            J::String(s) => self.intern(s).map(Val::Str),
            J::Bool(b) => Ok(Val::Bool(*b)),
            J::Number(n) => Ok(Val::Long(n.as_i64()?)),
            J::Array(items) => {
                let mut members = Vec::with_capacity(items.len());
                for item in items {
                    match self.plain(item, depth + 1)? {
                        Ok(v) => members.push(v),
                        Err(e) => return Some(Err(e)),
                    }
                }
                push_span(&mut self.store.values, members).map(Val::Set)
            }
            J::Object(map) => {
                let mut fields = Vec::with_capacity(map.len());
                for (key, item) in map {
                    if key.starts_with("__") {
                        return None;
                    }
                    let key = match self.intern(key) {
                        Ok(k) => k,
                        Err(e) => return Some(Err(e)),
                    };
                    match self.plain(item, depth + 1)? {
                        Ok(v) => fields.push((key, v)),
                        Err(e) => return Some(Err(e)),
                    }
                }
                push_span(&mut self.store.fields, fields).map(Val::Record)
            }
            J::Null => return None,
        })
    }

    /// Add one actor: its validated Cedar entity and its parents (as the snapshot lists them).
    pub fn push(&mut self, entity: &Entity, parents: &[EntityUid]) -> Result<(), String> {
        let mut attrs = Vec::new();
        for (key, value) in entity.attrs() {
            let value = value.map_err(|e| format!("attribute `{key}`: {e}"))?;
            let key = self.intern(key)?;
            attrs.push((key, self.value(&value, 0)?));
        }
        self.add(entity.uid().id().unescaped(), attrs, parents)
    }

    fn add(
        &mut self,
        id: &str,
        attrs: Vec<(Sym, Val)>,
        parents: &[EntityUid],
    ) -> Result<(), String> {
        let id = self.intern(id)?;
        let attrs = push_span(&mut self.store.fields, attrs)?;
        let mut links = Vec::with_capacity(parents.len());
        for parent in parents {
            let t = self.type_ix(parent.type_name())?;
            links.push((t, self.intern(parent.id().unescaped())?));
        }
        let parents = push_span(&mut self.store.parents, links)?;
        let index = u32::try_from(self.store.actors.len()).map_err(|_| too_large())?;
        self.store.actors.push(ActorRecord { id, attrs, parents });
        // The table hashes with the store's strings: take it out so both can be borrowed.
        let mut table = std::mem::take(&mut self.store.by_id);
        let store = &self.store;
        let key_of = |&ix: &u32| {
            let id = store.actors.get(ix as usize).map_or(Sym(0), |a| a.id);
            store.hasher.hash_one(store.str(id))
        };
        table.insert_unique(store.hasher.hash_one(store.str(id)), index, key_of);
        self.store.by_id = table;
        Ok(())
    }

    /// The finished store, its vectors shrunk to their contents.
    pub fn finish(mut self) -> ActorStore {
        drop(self.interned);
        let store = &mut self.store;
        store.text.shrink_to_fit();
        store.ends.shrink_to_fit();
        store.actors.shrink_to_fit();
        store.values.shrink_to_fit();
        store.fields.shrink_to_fit();
        store.parents.shrink_to_fit();
        store.types.shrink_to_fit();
        let (actors, hasher, text, ends) = (&store.actors, &store.hasher, &store.text, &store.ends);
        store.by_id.shrink_to_fit(|&ix| {
            let id = actors.get(ix as usize).map_or(0, |a| a.id.0);
            hasher.hash_one(interned(text, ends, id))
        });
        self.store
    }
}

/// String `i` of an arena: `text[ends[i - 1]..ends[i]]`.
fn interned<'a>(text: &'a str, ends: &[u32], i: u32) -> &'a str {
    let i = i as usize;
    let end = ends.get(i).copied().unwrap_or(0) as usize;
    let start = i
        .checked_sub(1)
        .and_then(|p| ends.get(p))
        .copied()
        .unwrap_or(0) as usize;
    text.get(start..end).unwrap_or("")
}

fn push_span<T>(pool: &mut Vec<T>, items: Vec<T>) -> Result<Span, String> {
    let start = u32::try_from(pool.len()).map_err(|_| too_large())?;
    let len = u32::try_from(items.len()).map_err(|_| too_large())?;
    pool.extend(items);
    u32::try_from(pool.len()).map_err(|_| too_large())?;
    Ok(Span { start, len })
}

fn too_large() -> String {
    "the registry is too large for the compact store (more than 4 billion values)".to_owned()
}
