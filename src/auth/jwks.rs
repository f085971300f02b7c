//! The JWKS: reading it from a file or fetching it over HTTPS, parsing it into keys of the
//! allowed algorithms, choosing the key a token names, and refreshing it (on a timer, and at most
//! once per interval for an unknown `kid`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use super::{Alg, AuthError, Authenticator, JwksSource};

/// Largest JWKS document fetched or read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long one JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Key {
    pub(super) kid: Option<String>,
    pub(super) alg: Alg,
    pub(super) decoding: DecodingKey,
}

/// A loaded key set and what was wrong with it.
#[derive(Default)]
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
    /// Keys whose algorithm is not allowed or not supported, as `kid (alg)`.
    pub(super) refused: Vec<String>,
    pub(super) loaded_at: Option<SystemTime>,
    /// The last load or refresh error (keys may still be the previous good ones).
    pub(super) error: Option<String>,
    pub(super) generation: u64,
}

pub(super) type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

impl Authenticator {
    /// An unknown `kid` refreshes the key set at most once per `jwks_refresh_interval`; callers
    /// that arrive while a refresh runs wait for it instead of starting another.
    pub(super) async fn refresh_for_unknown_kid(&self, seen_generation: u64) {
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
    pub(super) async fn load_keys(&self) {
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
}

/// The key a token names: by `kid`, or the only key of its algorithm when it names none.
pub(super) fn find_key<'k>(
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

/// Parse a JWKS: usable keys, and the keys refused (as `kid (alg)`). Encryption keys are
/// skipped; symmetric (`oct`) keys are refused — HMAC secrets come only from a secret file, so
/// a public key set can never turn into an HMAC secret.
pub(super) fn parse_jwks(bytes: &[u8], allowed: &[Alg]) -> Result<(Vec<Key>, Vec<String>), String> {
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

pub(super) fn https_client(ca: Option<&std::path::Path>) -> Result<HttpsClient, String> {
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
    fn symmetric_keys_in_a_jwks_are_refused() {
        let jwks =
            br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#;
        let e = parse_jwks(jwks, &[Alg::HS256, Alg::RS256]).err().unwrap();
        assert!(e.contains("no usable keys"), "{e}");
    }
}
