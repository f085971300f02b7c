//! Authentication of proxied and forward-auth requests: a JWT bearer verified against a JWKS
//! (file or URL; EdDSA, ES256, RS256) or against an HS256 secret read from a file that may
//! rotate. Issuer and audience are always checked, `exp` is required, `nbf`/`iat` honoured with a
//! bounded clock skew, and only the algorithms of an explicit allow-list are accepted.
//!
//! Architecture invariant: there is no "no auth" fallback. A key set that cannot be loaded or a
//! secret that cannot be read makes authentication unavailable (503), never permissive.
//! Architecture invariant: neither a token nor the secret is ever logged, returned or recorded;
//! a token is identified by its sha256, the secret by the first 12 hex of its sha256.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `docs/runbook.md` anchor for an authentication configuration that is not ready.
pub const PROBLEM: &str = "auth-unavailable";

/// Largest JWKS document fetched or read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest bearer token considered.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the HS256 secret file is re-read.
const SECRET_POLL: Duration = Duration::from_secs(1);
/// Shortest HS256 secret accepted (RFC 7518 §3.2: a key of at least the hash size).
const MIN_SECRET_BYTES: usize = 32;

/// A signature algorithm flex-auth accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// Ed25519.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// HMAC with SHA-256 (shared secret from `--hs256-secret-file` only).
    HS256,
}

impl Alg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
            Self::HS256 => "HS256",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::EdDSA => Algorithm::EdDSA,
            Self::ES256 => Algorithm::ES256,
            Self::RS256 => Algorithm::RS256,
            Self::HS256 => Algorithm::HS256,
        }
    }

    /// The asymmetric algorithms, the default allow-list with a JWKS.
    pub const ASYMMETRIC: [Self; 3] = [Self::EdDSA, Self::ES256, Self::RS256];
}

impl std::str::FromStr for Alg {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        [Self::EdDSA, Self::ES256, Self::RS256, Self::HS256]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a supported JWT algorithm: use EdDSA, ES256, RS256 or HS256"
                )
            })
    }
}

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JSON file (re-read on refresh).
    File(PathBuf),
    /// An `https://` URL (`http://` only for a loopback host).
    Url(Uri),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Url(uri) => write!(f, "{uri}"),
        }
    }
}

impl std::str::FromStr for JwksSource {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the JWKS source is empty".to_owned());
        }
        let lower = text.to_ascii_lowercase();
        if !lower.starts_with("https://") && !lower.starts_with("http://") {
            return Ok(Self::File(PathBuf::from(text)));
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("`{text}` is not a URL: {e}"))?;
        let host = uri.host().unwrap_or("");
        let loopback =
            matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") || host.starts_with("127.");
        if uri.scheme_str() == Some("http") && !loopback {
            return Err(format!(
                "`{text}`: fetch keys over https:// (plain http:// is accepted only for a loopback host)"
            ));
        }
        Ok(Self::Url(uri))
    }
}

/// Authentication settings (from `--jwks`, `--issuer`, `--audience`, …).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The key set for EdDSA / ES256 / RS256 tokens.
    pub jwks: Option<JwksSource>,
    /// The one accepted `iss`.
    pub issuer: Option<String>,
    /// Accepted `aud` values (a token must name at least one).
    pub audiences: Vec<String>,
    /// Accepted algorithms; `None` derives them: the asymmetric three with a JWKS, HS256 with a
    /// secret file.
    pub algorithms: Option<Vec<Alg>>,
    /// File holding the HS256 shared secret.
    pub hs256_secret_file: Option<PathBuf>,
    /// Claim the subject is read from.
    pub subject_claim: String,
    /// Prefix put before the claim's value (e.g. `iam:`).
    pub subject_prefix: String,
    /// Allowed clock skew for `exp`, `nbf` and `iat`.
    pub clock_skew: Duration,
    /// At most one JWKS refresh for an unknown `kid` per this interval.
    pub jwks_refresh_interval: Duration,
    /// Keys are re-fetched this often even when every `kid` is known.
    pub jwks_cache_ttl: Duration,
    /// PEM CA bundle trusted for an `https://` JWKS URL instead of the webpki roots.
    pub jwks_ca: Option<PathBuf>,
}

impl AuthSettings {
    /// Settings with the defaults of the command line and no key source.
    pub fn new(issuer: &str, audiences: &[&str]) -> Self {
        Self {
            jwks: None,
            issuer: Some(issuer.to_owned()),
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            algorithms: None,
            hs256_secret_file: None,
            subject_claim: "sub".to_owned(),
            subject_prefix: String::new(),
            clock_skew: Duration::from_secs(60),
            jwks_refresh_interval: Duration::from_secs(30),
            jwks_cache_ttl: Duration::from_secs(300),
            jwks_ca: None,
        }
    }

    /// Whether any authentication is configured.
    pub fn configured(&self) -> bool {
        self.jwks.is_some() || self.hs256_secret_file.is_some()
    }

    /// The effective allow-list.
    pub fn allowed(&self) -> Vec<Alg> {
        match &self.algorithms {
            Some(list) => list.clone(),
            None => {
                let mut list = Vec::new();
                if self.jwks.is_some() {
                    list.extend(Alg::ASYMMETRIC);
                }
                if self.hs256_secret_file.is_some() {
                    list.push(Alg::HS256);
                }
                list
            }
        }
    }

    /// Problems that no amount of waiting fixes: `(setting, message)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.configured() {
            return Err((
                "FLEX_AUTH_JWKS",
                "no credential verification is configured: set --jwks or --hs256-secret-file"
                    .to_owned(),
            ));
        }
        if self.issuer.as_deref().is_none_or(str::is_empty) {
            return Err((
                "FLEX_AUTH_ISSUER",
                "--issuer is required: every token's `iss` is checked".to_owned(),
            ));
        }
        if self.audiences.iter().all(String::is_empty) {
            return Err((
                "FLEX_AUTH_AUDIENCE",
                "--audience is required: every token's `aud` is checked".to_owned(),
            ));
        }
        if let Some(ca) = &self.jwks_ca {
            if !matches!(self.jwks, Some(JwksSource::Url(_))) {
                return Err((
                    "FLEX_AUTH_JWKS_CA",
                    "--jwks-ca is set but --jwks is not a URL: the CA bundle would trust nothing"
                        .to_owned(),
                ));
            }
            if let Err(e) = crate::tls::client_config(Some(ca)) {
                return Err(("FLEX_AUTH_JWKS_CA", e.to_string()));
            }
        }
        let allowed = self.allowed();
        if allowed.is_empty() {
            return Err((
                "FLEX_AUTH_JWT_ALGORITHMS",
                "--jwt-algorithms allows nothing".to_owned(),
            ));
        }
        if allowed.contains(&Alg::HS256) && self.hs256_secret_file.is_none() {
            return Err((
                "FLEX_AUTH_HS256_SECRET_FILE",
                "--jwt-algorithms allows HS256 but no --hs256-secret-file is set".to_owned(),
            ));
        }
        if self.hs256_secret_file.is_some() && !allowed.contains(&Alg::HS256) {
            return Err((
                "FLEX_AUTH_JWT_ALGORITHMS",
                "--hs256-secret-file is set but --jwt-algorithms does not allow HS256".to_owned(),
            ));
        }
        if self.jwks.is_some() && !allowed.iter().any(|a| *a != Alg::HS256) {
            return Err((
                "FLEX_AUTH_JWT_ALGORITHMS",
                "--jwks is set but --jwt-algorithms allows no EdDSA, ES256 or RS256".to_owned(),
            ));
        }
        if self.subject_claim.is_empty() {
            return Err((
                "FLEX_AUTH_SUBJECT_CLAIM",
                "--subject-claim is empty".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Who a request comes from, after verification.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The subject id (prefix + claim value).
    pub subject: String,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
    /// sha256 of the bearer credential, lowercase hex: what records carry instead of it.
    pub credential_sha256: String,
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no bearer credential: send `Authorization: Bearer <token>`")]
    Missing,
    /// The header is not a single well-formed bearer credential.
    #[error("{0}")]
    Malformed(String),
    /// The token's `alg` is not on the allow-list.
    #[error("algorithm `{0}` is not accepted")]
    AlgorithmNotAllowed(String),
    /// No key with the token's `kid`, even after a refresh.
    #[error("no key with kid `{0}`")]
    UnknownKey(String),
    /// The token's `alg` is not the algorithm of the key it names.
    #[error("algorithm `{alg}` does not match key `{kid}` ({key_alg})")]
    AlgorithmMismatch {
        /// What the token says.
        alg: String,
        /// The key.
        kid: String,
        /// The key's algorithm.
        key_alg: &'static str,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `exp` has passed (beyond the skew).
    #[error("token has expired")]
    Expired,
    /// `nbf` or `iat` lies in the future (beyond the skew).
    #[error("token is not valid yet")]
    NotYetValid,
    /// Wrong `iss`.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// No accepted `aud`.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// A required claim is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(String),
    /// Keys or secret are not usable: a server problem, answered 503.
    #[error("credentials cannot be verified right now: {0}")]
    Unavailable(String),
}

impl AuthError {
    /// Metric label: a small fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            Self::UnknownKey(_) => "unknown_kid",
            Self::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim(_) => "missing_claim",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// Every reason label, for metrics that start at zero.
    pub const REASONS: [&'static str; 12] = [
        "missing",
        "malformed",
        "algorithm_not_allowed",
        "unknown_kid",
        "algorithm_mismatch",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "missing_claim",
        "unavailable",
    ];
}

struct Key {
    kid: Option<String>,
    alg: Alg,
    decoding: DecodingKey,
}

/// A loaded key set and what was wrong with it.
#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    /// Keys whose algorithm is not allowed or not supported, as `kid (alg)`.
    refused: Vec<String>,
    loaded_at: Option<SystemTime>,
    /// The last load or refresh error (keys may still be the previous good ones).
    error: Option<String>,
    generation: u64,
}

enum SecretState {
    NotConfigured,
    Ready {
        key: DecodingKey,
        digest: [u8; 32],
        fingerprint: String,
    },
    Failed(String),
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

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
    pub async fn new(settings: AuthSettings) -> Result<Self, (&'static str, String)> {
        settings.validate()?;
        let client = match &settings.jwks {
            Some(JwksSource::Url(_)) => Some(
                https_client(settings.jwks_ca.as_deref()).map_err(|e| ("FLEX_AUTH_JWKS_CA", e))?,
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

    /// Verify the request's bearer credential.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let token = bearer_token(headers)?;
        let (alg, kid) = token_header(token, &self.allowed)?;
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
        Ok(Principal {
            subject,
            claims,
            credential_sha256: hex::encode(Sha256::digest(token.as_bytes())),
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

    /// An unknown `kid` refreshes the key set at most once per `jwks_refresh_interval`; callers
    /// that arrive while a refresh runs wait for it instead of starting another.
    async fn refresh_for_unknown_kid(&self, seen_generation: u64) {
        let mut last = self.last_attempt.lock().await;
        if self.keys.load().generation != seen_generation {
            return; // someone else refreshed while we waited
        }
        if last.is_some_and(|at| at.elapsed() < self.settings.jwks_refresh_interval) {
            return;
        }
        self.load_keys().await;
        *last = Some(Instant::now());
    }

    /// Read or fetch the JWKS; a failure keeps the previous keys and records the error.
    async fn load_keys(&self) {
        let Some(source) = &self.settings.jwks else {
            return;
        };
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let bytes = match source {
            JwksSource::File(path) => std::fs::read(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
                .and_then(|b| {
                    if b.len() > MAX_JWKS_BYTES {
                        Err(format!(
                            "`{}` exceeds {MAX_JWKS_BYTES} bytes",
                            path.display()
                        ))
                    } else {
                        Ok(Bytes::from(b))
                    }
                }),
            JwksSource::Url(uri) => match &self.client {
                Some(client) => fetch(client, uri).await,
                None => Err("no HTTP client".to_owned()),
            },
        };
        let previous = self.keys.load_full();
        let parsed = bytes.and_then(|b| parse_jwks(&b, &self.allowed));
        let next = match parsed {
            Ok((keys, refused)) => {
                let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
                tracing::info!(source = %source, kids = ?kids, refused = ?refused, "JWKS loaded");
                KeySet {
                    keys,
                    refused,
                    loaded_at: Some(SystemTime::now()),
                    error: None,
                    generation: previous.generation + 1,
                }
            }
            Err(error) => {
                tracing::warn!(source = %source, %error, "JWKS load failed; keeping the previous keys");
                KeySet {
                    keys: previous
                        .keys
                        .iter()
                        .map(|k| Key {
                            kid: k.kid.clone(),
                            alg: k.alg,
                            decoding: k.decoding.clone(),
                        })
                        .collect(),
                    refused: previous.refused.clone(),
                    loaded_at: previous.loaded_at,
                    error: Some(error),
                    generation: previous.generation,
                }
            }
        };
        self.keys.store(Arc::new(next));
    }

    /// Re-read the HS256 secret; a change is logged (fingerprint only), a failure makes HS256
    /// verification unavailable until the file is readable again.
    fn reload_secret(&self) {
        let Some(path) = &self.settings.hs256_secret_file else {
            return;
        };
        let read = std::fs::read(path)
            .map_err(|e| format!("cannot read the HS256 secret file `{}`: {e}", path.display()))
            .and_then(|bytes| {
                let secret = trim_line_end(&bytes);
                if secret.len() < MIN_SECRET_BYTES {
                    Err(format!(
                        "the HS256 secret in `{}` is {} bytes; at least {MIN_SECRET_BYTES} are required",
                        path.display(),
                        secret.len()
                    ))
                } else {
                    Ok(secret.to_vec())
                }
            });
        let previous = self.secret.load();
        match read {
            Ok(secret) => {
                let digest: [u8; 32] = Sha256::digest(&secret).into();
                if let SecretState::Ready { digest: old, .. } = previous.as_ref() {
                    if *old == digest {
                        return;
                    }
                }
                let fingerprint = fingerprint(&digest);
                if matches!(previous.as_ref(), SecretState::NotConfigured) {
                    tracing::info!(%fingerprint, "HS256 secret loaded");
                } else {
                    tracing::warn!(%fingerprint, "HS256 secret changed");
                }
                self.secret.store(Arc::new(SecretState::Ready {
                    key: DecodingKey::from_secret(&secret),
                    digest,
                    fingerprint,
                }));
            }
            Err(error) => {
                if !matches!(previous.as_ref(), SecretState::Failed(e) if *e == error) {
                    tracing::error!(%error, "HS256 secret unreadable; HS256 tokens are refused (503) until it is readable");
                    self.secret.store(Arc::new(SecretState::Failed(error)));
                }
            }
        }
    }

    /// Readiness: `Ok` or why not.
    pub fn readiness(&self) -> Result<(), String> {
        let keys = self.keys.load();
        if self.settings.jwks.is_some() {
            if keys.keys.is_empty() {
                return Err(keys
                    .error
                    .clone()
                    .unwrap_or_else(|| "no signing keys are loaded".to_owned()));
            }
            if !keys.refused.is_empty() {
                return Err(format!(
                    "the key set holds keys whose algorithm is not allowed by --jwt-algorithms: {}",
                    keys.refused.join(", ")
                ));
            }
        }
        if let SecretState::Failed(e) = self.secret.load().as_ref() {
            return Err(e.clone());
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
            "reason": readiness.err(),
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
        })
    }
}

/// First 12 hex digits of a sha256.
fn fingerprint(digest: &[u8; 32]) -> String {
    let mut hex = hex::encode(digest);
    hex.truncate(12);
    hex
}

/// A secret file's content without one trailing newline (files rendered by templating tools
/// end with one).
fn trim_line_end(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// The token of the single `Authorization: Bearer …` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Malformed(
            "more than one Authorization header".to_owned(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| AuthError::Malformed("Authorization header is not ASCII".to_owned()))?;
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed(
            "Authorization scheme is not Bearer".to_owned(),
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed(format!(
            "bearer token exceeds {MAX_TOKEN_BYTES} bytes"
        )));
    }
    Ok(token)
}

/// A verified token whose claims name a key twice is refused: the JWT library keeps the last
/// value, and a service behind flex-auth that reads the token again may keep the first.
fn reject_duplicate_claims(token: &str) -> Result<(), AuthError> {
    let payload = token.split('.').nth(1).unwrap_or("");
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::Malformed("token claims are not base64url".to_owned()))?;
    crate::json::check_unique_keys(&decoded).map_err(|e| match e {
        crate::json::JsonError::DuplicateKey { path } => {
            AuthError::Malformed(format!("token claims name `{path}` twice"))
        }
        crate::json::JsonError::Syntax(_) => {
            AuthError::Malformed("token claims are not JSON".to_owned())
        }
    })
}

/// The token's algorithm (checked against the allow-list before anything else) and `kid`.
fn token_header(token: &str, allowed: &[Alg]) -> Result<(Alg, Option<String>), AuthError> {
    let malformed = |what: &str| AuthError::Malformed(format!("token is not a JWT: {what}"));
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let header = crate::json::parse_value(&decoded).map_err(|e| match e {
        crate::json::JsonError::DuplicateKey { path } => {
            malformed(&format!("header names `{path}` twice"))
        }
        crate::json::JsonError::Syntax(_) => malformed("header is not JSON"),
    })?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| malformed("header has no `alg`"))?;
    let alg = allowed
        .iter()
        .copied()
        .find(|a| a.as_str() == alg_name)
        .ok_or_else(|| AuthError::AlgorithmNotAllowed(alg_name.chars().take(32).collect()))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("`kid` is not a string")),
    };
    Ok((alg, kid))
}

/// The key a token names: by `kid`, or the only key of its algorithm when it names none.
fn find_key<'k>(
    keys: &'k KeySet,
    kid: Option<&str>,
    alg: Alg,
) -> Result<Option<&'k Key>, AuthError> {
    let key = match kid {
        Some(kid) => keys.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
        None => {
            let mut matching = keys.keys.iter().filter(|k| k.alg == alg);
            match (matching.next(), matching.next()) {
                (Some(only), None) => Some(only),
                (None, _) => None,
                (Some(_), Some(_)) => {
                    return Err(AuthError::Malformed(
                        "token has no `kid` and several keys could have signed it".to_owned(),
                    ))
                }
            }
        }
    };
    match key {
        Some(key) if key.alg != alg => Err(AuthError::AlgorithmMismatch {
            alg: alg.as_str().to_owned(),
            kid: key.kid.clone().unwrap_or_default(),
            key_alg: key.alg.as_str(),
        }),
        other => Ok(other),
    }
}

fn classify(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim.clone()),
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Malformed(format!("claim `{claim}` has the wrong type"))
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed("(mismatch)".to_owned())
        }
        _ => AuthError::Malformed("token cannot be decoded".to_owned()),
    }
}

/// Parse a JWKS: usable keys, and the keys refused (as `kid (alg)`). Encryption keys are
/// skipped; symmetric (`oct`) keys are refused — HMAC secrets come only from a secret file, so
/// a public key set can never turn into an HMAC secret.
fn parse_jwks(bytes: &[u8], allowed: &[Alg]) -> Result<(Vec<Key>, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let document: Document = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a JWKS (a JSON object with `keys`): {e}"))?;
    let mut keys = Vec::new();
    let mut refused = Vec::new();
    for (index, raw) in document.keys.into_iter().enumerate() {
        let label = raw
            .get("kid")
            .and_then(Value::as_str)
            .map_or_else(|| format!("keys[{index}]"), str::to_owned);
        let jwk: Jwk = match serde_json::from_value(raw) {
            Ok(jwk) => jwk,
            Err(e) => {
                refused.push(format!("{label} (unsupported: {e})"));
                continue;
            }
        };
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            continue;
        }
        let by_type = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Some(Alg::EdDSA)
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Some(Alg::ES256)
            }
            AlgorithmParameters::RSA(_) => Some(Alg::RS256),
            _ => None,
        };
        let declared = jwk.common.key_algorithm.map(|a| match a {
            KeyAlgorithm::EdDSA => Some(Alg::EdDSA),
            KeyAlgorithm::ES256 => Some(Alg::ES256),
            KeyAlgorithm::RS256 => Some(Alg::RS256),
            _ => None,
        });
        let alg = match (by_type, declared) {
            (Some(t), None) => t,
            (Some(t), Some(Some(d))) if t == d => t,
            _ => {
                let name = jwk
                    .common
                    .key_algorithm
                    .map_or_else(|| "key type".to_owned(), |a| a.to_string());
                refused.push(format!("{label} (unsupported {name})"));
                continue;
            }
        };
        if !allowed.contains(&alg) {
            refused.push(format!("{label} ({})", alg.as_str()));
            continue;
        }
        match DecodingKey::from_jwk(&jwk) {
            Ok(decoding) => keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                decoding,
            }),
            Err(e) => refused.push(format!("{label} (invalid: {e})")),
        }
    }
    if keys.is_empty() {
        return Err(if refused.is_empty() {
            "the key set holds no signing keys".to_owned()
        } else {
            format!("the key set holds no usable keys: {}", refused.join(", "))
        });
    }
    let mut seen = HashMap::new();
    for key in &keys {
        if let Some(kid) = &key.kid {
            if seen.insert(kid.as_str(), ()).is_some() {
                return Err(format!("kid `{kid}` appears twice in the key set"));
            }
        }
    }
    Ok((keys, refused))
}

fn https_client(ca: Option<&std::path::Path>) -> Result<HttpsClient, String> {
    let tls = crate::tls::client_config(ca).map_err(|e| e.to_string())?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
    )
}

async fn fetch(client: &HttpsClient, uri: &Uri) -> Result<Bytes, String> {
    let request = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| format!("cannot build the request for `{uri}`: {e}"))?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("`{uri}` did not answer within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot fetch `{uri}`: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("`{uri}` answered {}", response.status()));
    }
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        Limited::new(response.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| format!("`{uri}` did not send its body within {FETCH_TIMEOUT:?}"))?
    .map_err(|e| format!("cannot read `{uri}`: {e}"))?;
    Ok(body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_parse_case_insensitively_and_refuse_the_rest() {
        assert_eq!("eddsa".parse::<Alg>(), Ok(Alg::EdDSA));
        assert_eq!("RS256".parse::<Alg>(), Ok(Alg::RS256));
        assert!("none".parse::<Alg>().is_err());
        assert!("PS256".parse::<Alg>().is_err());
    }

    #[test]
    fn jwks_sources_refuse_plain_http_off_loopback() {
        assert!(matches!(
            "https://idp.example/jwks".parse::<JwksSource>(),
            Ok(JwksSource::Url(_))
        ));
        assert!(matches!(
            "http://127.0.0.1:9/jwks".parse::<JwksSource>(),
            Ok(JwksSource::Url(_))
        ));
        assert!("http://idp.example/jwks"
            .parse::<JwksSource>()
            .unwrap_err()
            .contains("https://"));
        assert_eq!(
            "/etc/jwks.json".parse::<JwksSource>(),
            Ok(JwksSource::File("/etc/jwks.json".into()))
        );
    }

    #[test]
    fn settings_require_issuer_audience_and_a_key_source() {
        let mut s = AuthSettings::new("https://issuer", &["broker"]);
        assert_eq!(s.validate().unwrap_err().0, "FLEX_AUTH_JWKS");
        s.jwks = Some(JwksSource::File("/x".into()));
        assert!(s.validate().is_ok());
        s.audiences.clear();
        assert_eq!(s.validate().unwrap_err().0, "FLEX_AUTH_AUDIENCE");
        s.audiences.push("broker".into());
        s.issuer = None;
        assert_eq!(s.validate().unwrap_err().0, "FLEX_AUTH_ISSUER");
        s.issuer = Some("i".into());
        s.algorithms = Some(vec![Alg::HS256]);
        assert_eq!(s.validate().unwrap_err().0, "FLEX_AUTH_HS256_SECRET_FILE");
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), Err(AuthError::Missing));
        headers.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap_err().reason(), "malformed");
        headers.insert(http::header::AUTHORIZATION, "bearer a.b.c".parse().unwrap());
        assert_eq!(bearer_token(&headers), Ok("a.b.c"));
        headers.append(http::header::AUTHORIZATION, "Bearer d.e.f".parse().unwrap());
        assert_eq!(bearer_token(&headers).unwrap_err().reason(), "malformed");
    }

    #[test]
    fn alg_none_and_unlisted_algorithms_are_refused_before_any_key_lookup() {
        let header = |json: &str| {
            format!(
                "{}.e30.",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
            )
        };
        let allowed = [Alg::EdDSA];
        assert_eq!(
            token_header(&header(r#"{"alg":"none"}"#), &allowed),
            Err(AuthError::AlgorithmNotAllowed("none".into()))
        );
        assert_eq!(
            token_header(&header(r#"{"alg":"HS256","kid":"k"}"#), &allowed),
            Err(AuthError::AlgorithmNotAllowed("HS256".into()))
        );
        assert_eq!(
            token_header(&header(r#"{"alg":"EdDSA","kid":"k"}"#), &allowed),
            Ok((Alg::EdDSA, Some("k".into())))
        );
        assert_eq!(
            token_header("garbage", &allowed).unwrap_err().reason(),
            "malformed"
        );
    }

    #[test]
    fn symmetric_keys_in_a_jwks_are_refused() {
        let jwks =
            br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
        let e = parse_jwks(jwks, &[Alg::HS256, Alg::RS256]).err().unwrap();
        assert!(e.contains("no usable keys"), "{e}");
    }
}
