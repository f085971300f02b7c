//! A bounded cache of the entity slices decisions were evaluated on, keyed by the request's
//! principal, action and resource.
//!
//! A snapshot's actors are rebuilt into Cedar entities per request (see `decision`); building
//! the slice costs more than evaluating the policies on it. For a request whose context names no
//! entity, the slice depends on the three uids alone, and the engine — with its registry — never
//! changes (a reload builds a new engine and a new cache), so a slice built once answers every
//! later request with the same three uids. A sidecar serves a handful of actors again and again;
//! a caller that cycles through many pays the build, as without the cache.
//!
//! Bounded in entries (`SHARDS × PER_SHARD`); a full shard is emptied, so a flood of distinct
//! keys costs one rebuild per entry and never more memory. A poisoned shard is used as is (it
//! holds only complete entries). Each shard counts its hits and misses under its own lock
//! (`flex_auth_slice_cache_{hits,misses}_total`): nothing shared is written per request.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};

use cedar_policy::{Entities, EntityUid};
use hashbrown::{DefaultHashBuilder, HashMap};

const SHARDS: usize = 16;
const PER_SHARD: usize = 64;

/// The request's principal, action and resource.
pub type SliceKey = (EntityUid, EntityUid, EntityUid);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SliceCache {
    shards: [Mutex<Shard>; SHARDS],
    hasher: DefaultHashBuilder,
}

#[derive(Debug, Default)]
struct Shard {
    slices: HashMap<SliceKey, Arc<Entities>>,
    hits: u64,
    misses: u64,
}

impl SliceCache {
    /// At most this many slices are kept.
    pub const CAPACITY: usize = SHARDS * PER_SHARD;

    fn shard(&self, key: &SliceKey) -> &Mutex<Shard> {
        let i = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        // `i < SHARDS` by construction; the first shard stands in for an impossible miss.
        let [first, ..] = &self.shards;
        self.shards.get(i).unwrap_or(first)
    }

    /// The slice cached for `key` (counted as a hit or a miss).
    pub fn get(&self, key: &SliceKey) -> Option<Arc<Entities>> {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let found = shard.slices.get(key).cloned();
        if found.is_some() {
            shard.hits += 1;
        } else {
            shard.misses += 1;
        }
        found
    }

    /// Lookups that found a slice, and lookups that did not, since the cache was made.
    pub fn stats(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(hits, misses), s| {
            let s = s.lock().unwrap_or_else(PoisonError::into_inner);
            (hits + s.hits, misses + s.misses)
        })
    }

    /// Keep `slice` for `key`.
    pub fn insert(&self, key: SliceKey, slice: Arc<Entities>) {
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.slices.len() >= PER_SHARD {
            shard.slices.clear();
        }
        shard.slices.insert(key, slice);
    }

    /// Slices held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .slices
                    .len()
            })
            .sum()
    }

    /// Whether no slice is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id("Actor".parse().unwrap(), cedar_policy::EntityId::new(id))
    }

    #[test]
    fn a_flood_of_keys_never_holds_more_than_the_capacity() {
        let cache = SliceCache::default();
        let slice = Arc::new(Entities::empty());
        for i in 0..(SliceCache::CAPACITY * 4) {
            let key = (uid(&format!("p{i}")), uid("a"), uid(&format!("r{i}")));
            cache.insert(key.clone(), Arc::clone(&slice));
            assert!(cache.get(&key).is_some());
        }
        assert!(cache.len() <= SliceCache::CAPACITY, "{}", cache.len());
        assert!(cache.get(&(uid("x"), uid("a"), uid("y"))).is_none());
        let lookups = u64::try_from(SliceCache::CAPACITY * 4 + 1).unwrap();
        assert_eq!(cache.stats(), (lookups - 1, 1));
    }
}
