//! `signatures.json`: one or more compact JWS (EdDSA or ES256) over the manifest, each naming
//! its key by `kid`; the keys a server trusts (PEM files, JWKS documents — read by the `auth`
//! module's JWKS code); signing and verifying.
//!
//! The rule that matters (OPA #8531 got it wrong): **when any key is configured, a bundle
//! passes only with a signature that verifies** — an unsigned bundle, an unknown `kid`, a bad
//! signature or a manifest that is not the one signed is refused, whatever else is present. A
//! signature by a known `kid` that fails to verify refuses the bundle even when another one
//! verifies: it means tampering, not rotation.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::Manifest;
use super::BundleError;
use crate::auth::Alg;

/// The JWS `typ` of a bundle signature: a token minted for anything else (an access token
/// signed with the same key) is never a bundle signature.
pub const JWS_TYPE: &str = "flex-auth-bundle+jwt";
/// Most signatures one bundle may carry.
pub const MAX_SIGNATURES: usize = 8;
/// Largest key file read.
const MAX_KEY_BYTES: u64 = 1 << 20;

/// What a signature vouches for.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    /// Hex sha256 of the exact `manifest.json` bytes.
    manifest_sha256: String,
    /// The manifest's revision, repeated so a signature read alone says what it signed.
    revision: String,
    /// When it was signed (seconds since the epoch).
    iat: u64,
}

/// `signatures.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    /// Compact JWS strings.
    pub signatures: Vec<String>,
}

impl Signatures {
    /// Parse strictly (no unknown field, no key twice).
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        crate::json::check_unique_keys(bytes)
            .map_err(|e| BundleError::Signature(format!("signatures.json: {e}")))?;
        let parsed: Self = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::Signature(format!("signatures.json: {e}")))?;
        if parsed.signatures.is_empty() || parsed.signatures.len() > MAX_SIGNATURES {
            return Err(BundleError::Signature(format!(
                "signatures.json must hold 1 to {MAX_SIGNATURES} signatures, not {}",
                parsed.signatures.len()
            )));
        }
        Ok(parsed)
    }

    /// The `kid` each signature names (unverified; for `inspect`).
    pub fn kids(&self) -> Vec<String> {
        self.signatures
            .iter()
            .map(|jws| match jsonwebtoken::decode_header(jws) {
                Ok(h) => h.kid.unwrap_or_else(|| "(no kid)".to_owned()),
                Err(_) => "(unreadable)".to_owned(),
            })
            .collect()
    }
}

/// One trusted public key.
pub struct TrustedKey {
    /// The `kid` it answers to; `None` for a PEM file given without one, which is tried for
    /// every `kid`.
    pub kid: Option<String>,
    alg: Alg,
    key: DecodingKey,
    /// The file it came from.
    pub source: PathBuf,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The keys bundle signatures are checked against. Empty: nothing is verified (only with
/// `--bundle-insecure-unsigned` in production mode).
#[derive(Debug, Default)]
pub struct Trust {
    keys: Vec<TrustedKey>,
}

/// How a bundle's signature stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureStatus {
    /// A configured key verified a signature by this `kid`.
    Verified {
        /// The signing key's id.
        kid: String,
        /// `EdDSA` or `ES256`.
        alg: &'static str,
    },
    /// No key is configured, so nothing was checked; the bundle names these `kid`s.
    NotChecked {
        /// The `kid`s of its signatures (empty: unsigned).
        kids: Vec<String>,
    },
}

impl SignatureStatus {
    /// The verified `kid`, if any.
    pub fn kid(&self) -> Option<&str> {
        match self {
            Self::Verified { kid, .. } => Some(kid),
            Self::NotChecked { .. } => None,
        }
    }
}

impl Trust {
    /// No keys.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The configured keys.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Read every `[KID=]FILE`: a JWKS document (its keys by their `kid`, each of which must
    /// have one) or a PEM public key (Ed25519 or P-256; `KID=` names it, else it is tried for
    /// any `kid`). A `kid` may be configured once.
    pub fn load(specs: &[String]) -> Result<Self, String> {
        let mut keys: Vec<TrustedKey> = Vec::new();
        for spec in specs {
            let (kid, path) = split_spec(spec);
            let bytes = read_small(&path)?;
            let label = path.display().to_string();
            let looks_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            if looks_json {
                if kid.is_some() {
                    return Err(format!(
                        "`{spec}`: a JWKS names its keys itself; drop the `KID=` prefix"
                    ));
                }
                let (found, refused) =
                    crate::auth::parse_public_keys(&bytes, &[Alg::EdDSA, Alg::ES256])
                        .map_err(|e| format!("`{label}`: {e}"))?;
                if !refused.is_empty() {
                    tracing::warn!(file = %label, refused = ?refused, "bundle key set: keys refused (only EdDSA and ES256 sign bundles)");
                }
                for (kid, alg, key) in found {
                    let Some(kid) = kid else {
                        return Err(format!(
                            "`{label}`: every key of a bundle key set needs a `kid`"
                        ));
                    };
                    keys.push(TrustedKey {
                        kid: Some(kid),
                        alg,
                        key,
                        source: path.clone(),
                    });
                }
            } else {
                let (alg, key) = if let Ok(key) = DecodingKey::from_ed_pem(&bytes) {
                    (Alg::EdDSA, key)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&bytes) {
                    (Alg::ES256, key)
                } else {
                    return Err(format!(
                        "`{label}` is neither a JWKS nor a PEM Ed25519 or P-256 public key"
                    ));
                };
                keys.push(TrustedKey {
                    kid,
                    alg,
                    key,
                    source: path.clone(),
                });
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for kid in keys.iter().filter_map(|k| k.kid.as_deref()) {
            if !seen.insert(kid) {
                return Err(format!("bundle key `{kid}` is configured twice"));
            }
        }
        Ok(Self { keys })
    }

    /// Check `signatures` (the bytes of `signatures.json`, if the bundle has one) against the
    /// keys: see the module comment for the rules.
    pub fn verify(
        &self,
        signatures: Option<&[u8]>,
        manifest_bytes: &[u8],
        manifest: &Manifest,
    ) -> Result<SignatureStatus, BundleError> {
        let parsed = signatures.map(Signatures::parse).transpose()?;
        if self.keys.is_empty() {
            return Ok(SignatureStatus::NotChecked {
                kids: parsed.map(|s| s.kids()).unwrap_or_default(),
            });
        }
        let Some(parsed) = parsed else {
            return Err(BundleError::Unsigned);
        };
        let digest = hex::encode(Sha256::digest(manifest_bytes));
        let mut verified = None;
        let mut unknown = Vec::new();
        for (i, jws) in parsed.signatures.iter().enumerate() {
            let header = jsonwebtoken::decode_header(jws).map_err(|e| {
                BundleError::Signature(format!("signature {i} is not a compact JWS: {e}"))
            })?;
            let alg = match header.alg {
                Algorithm::EdDSA => Alg::EdDSA,
                Algorithm::ES256 => Alg::ES256,
                other => {
                    return Err(BundleError::Signature(format!(
                        "signature {i} uses {other:?}; bundles are signed with EdDSA or ES256"
                    )))
                }
            };
            if header.typ.as_deref() != Some(JWS_TYPE) {
                return Err(BundleError::Signature(format!(
                    "signature {i} has typ {:?}, not `{JWS_TYPE}`: not a bundle signature",
                    header.typ.unwrap_or_default()
                )));
            }
            let Some(kid) = header.kid else {
                return Err(BundleError::Signature(format!(
                    "signature {i} names no `kid`"
                )));
            };
            let candidates: Vec<&TrustedKey> = self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref().is_none_or(|known| known == kid))
                .collect();
            if candidates.is_empty() {
                unknown.push(kid);
                continue;
            }
            let mut validation = Validation::new(alg.jwt());
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            let claims = candidates
                .iter()
                .filter(|k| k.alg == alg)
                .find_map(|k| jsonwebtoken::decode::<Claims>(jws, &k.key, &validation).ok());
            let Some(claims) = claims else {
                return Err(BundleError::Signature(format!(
                    "signature {i} (kid `{kid}`, {}) does not verify with the configured key",
                    alg.as_str()
                )));
            };
            if claims.claims.manifest_sha256 != digest
                || claims.claims.revision != manifest.revision
            {
                return Err(BundleError::Signature(format!(
                    "signature {i} (kid `{kid}`) was made for another manifest (revision `{}`)",
                    claims.claims.revision.escape_default()
                )));
            }
            verified.get_or_insert(SignatureStatus::Verified {
                kid,
                alg: alg.as_str(),
            });
        }
        verified.ok_or_else(|| BundleError::UnknownKid(unknown.join(", ")))
    }
}

/// Sign `manifest_bytes` with a PKCS#8 PEM private key (Ed25519 → EdDSA, P-256 → ES256).
pub fn sign(
    manifest_bytes: &[u8],
    revision: &str,
    key_pem: &[u8],
    kid: &str,
) -> Result<String, String> {
    let (alg, key) = if let Ok(key) = EncodingKey::from_ed_pem(key_pem) {
        (Algorithm::EdDSA, key)
    } else if let Ok(key) = EncodingKey::from_ec_pem(key_pem) {
        (Algorithm::ES256, key)
    } else {
        return Err(
            "the signing key is not a PKCS#8 PEM Ed25519 or P-256 private key \
             (`openssl genpkey -algorithm ed25519`)"
                .to_owned(),
        );
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    header.typ = Some(JWS_TYPE.to_owned());
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        manifest_sha256: hex::encode(Sha256::digest(manifest_bytes)),
        revision: revision.to_owned(),
        iat,
    };
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("cannot sign: {e}"))
}

/// `KID=FILE` or `FILE`. A spec that names an existing file is a file, `=` or not.
fn split_spec(spec: &str) -> (Option<String>, PathBuf) {
    if !Path::new(spec).exists() {
        if let Some((kid, path)) = spec.split_once('=') {
            let kid_like = !kid.is_empty()
                && kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
            if kid_like {
                return (Some(kid.to_owned()), PathBuf::from(path));
            }
        }
    }
    (None, PathBuf::from(spec))
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_KEY_BYTES {
        return Err(format!(
            "`{}` exceeds {MAX_KEY_BYTES} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}
