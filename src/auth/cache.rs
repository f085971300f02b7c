//! The verified-token cache (as Envoy's `jwt_authn` `jwt_cache_config`): a token whose signature
//! and claims were verified is remembered by its sha256, so the next request with it costs a
//! hash and a lookup instead of a signature check. Bounded (`--jwt-cache-entries`, 16 shards,
//! a full shard drops its expired entries, then everything), each entry good until the
//! token's `exp`, and tied to the key material that verified it: a JWKS load or a new HS256
//! secret makes every older entry a miss. On a hit the time-dependent claims (`exp`, `nbf`,
//! `iat`) are checked again against the current time; `iss` and `aud` are fixed by the
//! configuration, so what passed them once passes them again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

use super::{Alg, AuthError};

const SHARDS: usize = 16;

/// What a verified token proved, and until when.
#[derive(Debug)]
pub(super) struct Verified {
    pub(super) subject: String,
    pub(super) claims: Map<String, Value>,
    pub(super) alg: Alg,
    /// The key material's tag when it was verified: the key set's generation, or the secret's
    /// digest prefix.
    pub(super) tag: u64,
    pub(super) exp: f64,
    pub(super) nbf: Option<f64>,
    pub(super) iat: Option<f64>,
}

impl Verified {
    /// The time-dependent checks again, at `now` (seconds since the epoch) with `skew`:
    /// the same comparisons jsonwebtoken and `Authenticator::verify` make.
    pub(super) fn still_valid(&self, now: f64, skew: f64) -> Result<(), AuthError> {
        if self.exp < now - skew {
            return Err(AuthError::Expired);
        }
        if self.nbf.is_some_and(|nbf| nbf > now + skew)
            || self.iat.is_some_and(|iat| iat > now + skew)
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }
}

/// The cache; cheap to share.
#[derive(Debug)]
pub(super) struct TokenCache {
    shards: Vec<Mutex<HashMap<[u8; 32], Arc<Verified>>>>,
    per_shard: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl TokenCache {
    /// A cache of at most `entries` tokens; `None` for 0 (off).
    pub(super) fn new(entries: usize) -> Option<Self> {
        (entries > 0).then(|| Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: entries.div_ceil(SHARDS).max(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn shard(
        &self,
        key: &[u8; 32],
    ) -> Option<std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Verified>>>> {
        let index = usize::from(key[0]) % SHARDS;
        self.shards
            .get(index)
            .map(|m| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// The entry for `key` if it was verified with the key material `current_tag` names for its
    /// algorithm; an entry of older keys is dropped.
    pub(super) fn get(
        &self,
        key: &[u8; 32],
        current_tag: impl Fn(Alg) -> Option<u64>,
    ) -> Option<Arc<Verified>> {
        let mut shard = self.shard(key)?;
        let found = match shard.get(key) {
            Some(entry) if current_tag(entry.alg) == Some(entry.tag) => Some(Arc::clone(entry)),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        };
        drop(shard);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remember a verified token. A full shard first drops what expired by `now`, then, if
    /// still full, everything: a flood of distinct tokens costs verifications, never memory.
    pub(super) fn insert(&self, key: [u8; 32], entry: Verified, now: f64, skew: f64) {
        let Some(mut shard) = self.shard(&key) else {
            return;
        };
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| e.exp >= now - skew);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(key, Arc::new(entry));
    }

    /// Hits and misses since start.
    pub(super) fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    fn entry(tag: u64, exp: f64) -> Verified {
        Verified {
            subject: "s".to_owned(),
            claims: Map::new(),
            alg: Alg::EdDSA,
            tag,
            exp,
            nbf: None,
            iat: None,
        }
    }

    #[test]
    fn entries_are_tied_to_their_keys_and_bounded() {
        let cache = TokenCache::new(32).unwrap();
        cache.insert([1; 32], entry(7, 100.0), 0.0, 0.0);
        assert!(cache.get(&[1; 32], |_| Some(7)).is_some());
        // The key set changed: a miss, and the entry is gone even for the old tag.
        assert!(cache.get(&[1; 32], |_| Some(8)).is_none());
        assert!(cache.get(&[1; 32], |_| Some(7)).is_none());
        assert_eq!(cache.stats(), (1, 2));
        // Far more distinct tokens than room: never more than the bound.
        for i in 0..10_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(key, entry(7, 100.0), 0.0, 0.0);
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 32, "{held}");
        assert!(TokenCache::new(0).is_none());
    }

    #[test]
    fn time_checks_run_again_on_every_hit() {
        let e = Verified {
            nbf: Some(50.0),
            ..entry(1, 100.0)
        };
        assert!(e.still_valid(60.0, 0.0).is_ok());
        assert_eq!(e.still_valid(101.0, 0.0), Err(AuthError::Expired));
        assert!(e.still_valid(101.0, 5.0).is_ok(), "within the skew");
        assert_eq!(e.still_valid(40.0, 0.0), Err(AuthError::NotYetValid));
    }
}
