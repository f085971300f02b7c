//! Authentication of proxied and forward-auth requests: a JWT bearer verified against a JWKS
//! (file or URL; EdDSA, ES256, RS256) or against an HS256 secret read from a file that may
//! rotate. Issuer and audience are always checked, `exp` is required, `nbf`/`iat` honoured with a
//! bounded clock skew, and only the algorithms of an explicit allow-list are accepted.
//!
//! `settings` holds the flags and their checks, `token` reads a credential, `jwks` and `secret`
//! keep the two kinds of keys current; this file verifies a request with them.
//!
//! Architecture invariant: there is no "no auth" fallback. A key set that cannot be loaded or a
//! secret that cannot be read makes authentication unavailable (503), never permissive.
//! Architecture invariant: neither a token nor the secret is ever logged, returned or recorded;
//! a token is identified by its sha256, the secret by the first 12 hex of its sha256.

mod cache;
mod jwks;
mod secret;
mod settings;
mod token;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderMap;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use jwks::{find_key, https_client, HttpsClient, KeySet};
use secret::{SecretState, SECRET_POLL};
pub use settings::{Alg, AuthSettings, JwksSource, SettingError, DEFAULT_TOKEN_CACHE_ENTRIES};
use token::{bearer_token, classify, reject_duplicate_claims, token_header};
pub use token::{AuthError, Principal};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One public key of a JWKS document, for verifiers other than the bearer check (bundle
/// signatures): its `kid`, algorithm and key.
pub(crate) type PublicKey = (Option<String>, Alg, DecodingKey);

/// Parse a JWKS document into its keys of the `allowed` algorithms, with the same rules as the
/// bearer check's key set (`oct` keys refused, a `kid` at most once, the key type and a declared
/// `alg` must agree). Also returns the keys refused, as `kid (reason)`.
pub(crate) fn parse_public_keys(
    bytes: &[u8],
    allowed: &[Alg],
) -> Result<(Vec<PublicKey>, Vec<String>), String> {
    let (keys, refused) = jwks::parse_jwks(bytes, allowed)?;
    Ok((
        keys.into_iter()
            .map(|k| (k.kid, k.alg, k.decoding))
            .collect(),
        refused,
    ))
}

/// The `docs/runbook.md` anchor for an authentication configuration that is not ready.
pub const PROBLEM: &str = "auth-unavailable";

/// Verifies bearer credentials. Share it in an `Arc`; [`Authenticator::spawn_refresh`] keeps
/// keys and secret current.
pub struct Authenticator {
    settings: AuthSettings,
    allowed: Vec<Alg>,
    keys: ArcSwap<KeySet>,
    secret: ArcSwap<SecretState>,
    /// When the last JWKS load was attempted; held while one runs (single flight).
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
    fetches: AtomicU64,
    client: Option<HttpsClient>,
    /// Verified tokens by sha256 (`--jwt-cache-entries`; `None` when 0).
    cache: Option<cache::TokenCache>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.settings.issuer)
            .field("jwks", &self.settings.jwks)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Load keys and secret once. Fails only on settings that can never work (see
    /// [`AuthSettings::validate`]); keys or a secret that cannot be loaded yet leave it unready.
    pub async fn new(settings: AuthSettings) -> Result<Self, SettingError> {
        settings.validate()?;
        let settings_cache_entries = settings.token_cache_entries;
        let client = match &settings.jwks {
            Some(JwksSource::Url(_)) => Some(
                https_client(settings.jwks_ca.as_deref())
                    .map_err(|e| SettingError::new("FLEX_AUTH_JWKS_CA", e))?,
            ),
            _ => None,
        };
        let auth = Self {
            allowed: settings.allowed(),
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            secret: ArcSwap::from_pointee(SecretState::NotConfigured),
            last_attempt: tokio::sync::Mutex::new(None),
            fetches: AtomicU64::new(0),
            client,
            cache: cache::TokenCache::new(settings_cache_entries),
        };
        auth.reload_secret();
        if auth.settings.jwks.is_some() {
            let mut last = auth.last_attempt.lock().await;
            auth.load_keys().await;
            *last = Some(Instant::now());
        }
        Ok(auth)
    }

    /// Keep keys fresh (every `jwks_cache_ttl`) and the secret current (re-read every second).
    /// The tasks end when the authenticator is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) {
        if self.settings.jwks.is_some() {
            let weak = Arc::downgrade(self);
            let every = self.settings.jwks_cache_ttl.max(Duration::from_secs(1));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(auth) = weak.upgrade() else { return };
                    let mut last = auth.last_attempt.lock().await;
                    auth.load_keys().await;
                    *last = Some(Instant::now());
                }
            });
        }
        if self.settings.hs256_secret_file.is_some() {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SECRET_POLL).await;
                    let Some(auth) = weak.upgrade() else { return };
                    auth.reload_secret();
                }
            });
        }
    }

    /// The settings.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// How many times the JWKS was read or fetched, since start.
    pub fn jwks_loads(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Verified-token cache hits and misses since start (`(0, 0)` when the cache is off).
    pub fn token_cache_stats(&self) -> (u64, u64) {
        self.cache.as_ref().map_or((0, 0), cache::TokenCache::stats)
    }

    /// The tag of the key material that verifies `alg` now: the key set's generation, or the
    /// HS256 secret's digest prefix. `None`: nothing can verify it now.
    fn key_tag(&self, alg: Alg) -> Option<u64> {
        if alg == Alg::HS256 {
            match self.secret.load().as_ref() {
                SecretState::Ready { digest, .. } => {
                    let mut prefix = [0u8; 8];
                    prefix.copy_from_slice(digest.get(..8)?);
                    Some(u64::from_le_bytes(prefix))
                }
                _ => None,
            }
        } else {
            Some(self.keys.load().generation)
        }
    }

    /// Verify the request's bearer credential: from the verified-token cache when this exact
    /// token was verified with the key material in force (its time claims checked again now),
    /// else in full — and then remembered.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let skew = self.settings.clock_skew.as_secs_f64();
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(&digest, |alg| {
                // An algorithm taken off the allow-list is not served from the cache either.
                self.allowed
                    .contains(&alg)
                    .then(|| self.key_tag(alg))
                    .flatten()
            }) {
                hit.still_valid(unix_now(), skew)?;
                return Ok(Principal {
                    subject: hit.subject.clone(),
                    claims: hit.claims.clone(),
                    credential_sha256: hex::encode(digest),
                });
            }
        }
        let (alg, kid) = token_header(token, &self.allowed)?;
        // The tag before verifying: keys that change meanwhile make the entry a miss later.
        let tag = self.key_tag(alg);
        let claims = if alg == Alg::HS256 {
            let secret = self.secret.load();
            match secret.as_ref() {
                SecretState::Ready { key, .. } => self.verify(token, alg, key)?,
                SecretState::Failed(e) => return Err(AuthError::Unavailable(e.clone())),
                SecretState::NotConfigured => {
                    return Err(AuthError::AlgorithmNotAllowed(alg.as_str().to_owned()))
                }
            }
        } else {
            let mut keys = self.keys.load_full();
            if find_key(&keys, kid.as_deref(), alg)?.is_none() {
                self.refresh_for_unknown_kid(keys.generation).await;
                keys = self.keys.load_full();
            }
            match find_key(&keys, kid.as_deref(), alg)? {
                Some(key) => self.verify(token, alg, &key.decoding)?,
                None if keys.keys.is_empty() => {
                    return Err(AuthError::Unavailable(
                        keys.error
                            .clone()
                            .unwrap_or_else(|| "no signing keys are loaded".to_owned()),
                    ))
                }
                None => return Err(AuthError::UnknownKey(kid.unwrap_or_default())),
            }
        };
        let subject = match claims.get(&self.settings.subject_claim) {
            Some(Value::String(s)) if !s.is_empty() => {
                format!("{}{s}", self.settings.subject_prefix)
            }
            _ => return Err(AuthError::MissingClaim(self.settings.subject_claim.clone())),
        };
        if let (Some(cache), Some(tag)) = (&self.cache, tag) {
            let number = |name: &str| claims.get(name).and_then(Value::as_f64);
            if let Some(exp) = number("exp") {
                cache.insert(
                    digest,
                    cache::Verified {
                        subject: subject.clone(),
                        claims: claims.clone(),
                        alg,
                        tag,
                        exp,
                        nbf: number("nbf"),
                        iat: number("iat"),
                    },
                    unix_now(),
                    skew,
                );
            }
        }
        Ok(Principal {
            subject,
            claims,
            credential_sha256: hex::encode(digest),
        })
    }

    fn verify(
        &self,
        token: &str,
        alg: Alg,
        key: &DecodingKey,
    ) -> Result<Map<String, Value>, AuthError> {
        let mut validation = Validation::new(alg.jwt());
        validation.leeway = self.settings.clock_skew.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        if let Some(issuer) = &self.settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation.set_audience(&self.settings.audiences);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| classify(&e))?;
        let claims = data.claims;
        reject_duplicate_claims(token)?;
        match claims.get("iat") {
            None => {}
            Some(Value::Number(n)) => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64());
                let iat = n.as_f64().unwrap_or(f64::MAX);
                if iat > now + self.settings.clock_skew.as_secs_f64() {
                    return Err(AuthError::NotYetValid);
                }
            }
            Some(_) => return Err(AuthError::Malformed("`iat` is not a number".to_owned())),
        }
        Ok(claims)
    }

    /// Readiness: `Ok`, or why not and which setting to look at (`FLEX_AUTH_JWKS` for the key
    /// set, `FLEX_AUTH_HS256_SECRET_FILE` for the secret).
    pub fn readiness(&self) -> Result<(), SettingError> {
        let keys = self.keys.load();
        if self.settings.jwks.is_some() {
            if keys.keys.is_empty() {
                return Err(SettingError::new(
                    "FLEX_AUTH_JWKS",
                    keys.error
                        .clone()
                        .unwrap_or_else(|| "no signing keys are loaded".to_owned()),
                ));
            }
            if !keys.refused.is_empty() {
                return Err(SettingError::new(
                    "FLEX_AUTH_JWKS",
                    format!(
                        "the key set holds keys whose algorithm is not allowed by --jwt-algorithms: {}",
                        keys.refused.join(", ")
                    ),
                ));
            }
        }
        if let SecretState::Failed(e) = self.secret.load().as_ref() {
            return Err(SettingError::new("FLEX_AUTH_HS256_SECRET_FILE", e.clone()));
        }
        Ok(())
    }

    /// `/v1/status`'s `auth` object. Never a secret.
    pub fn status(&self) -> Value {
        let keys = self.keys.load();
        let readiness = self.readiness();
        let mut fingerprints = Map::new();
        if let SecretState::Ready { fingerprint, .. } = self.secret.load().as_ref() {
            fingerprints.insert("hs256_secret".to_owned(), Value::from(fingerprint.clone()));
        }
        serde_json::json!({
            "configured": true,
            "readiness": if readiness.is_ok() { "ready" } else { "unready" },
            "reason": readiness.err().map(|e| e.message),
            "issuer": self.settings.issuer,
            "audiences": self.settings.audiences,
            "algorithms": self.allowed.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "jwks_source": self.settings.jwks.as_ref().map(ToString::to_string),
            "key_ids": keys.keys.iter().map(|k| serde_json::json!({"kid": k.kid, "alg": k.alg.as_str()})).collect::<Vec<_>>(),
            "refused_keys": keys.refused,
            "jwks_loaded_at": keys.loaded_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "jwks_last_error": keys.error,
            "jwks_loads": self.jwks_loads(),
            "fingerprints": fingerprints,
            "subject_claim": self.settings.subject_claim,
            "subject_prefix": self.settings.subject_prefix,
            "clock_skew_seconds": self.settings.clock_skew.as_secs(),
            "token_cache": {
                "max_entries": self.settings.token_cache_entries,
                "hits": self.token_cache_stats().0,
                "misses": self.token_cache_stats().1,
            },
        })
    }
}
