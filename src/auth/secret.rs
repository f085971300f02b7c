//! The HS256 shared secret: read from a file that may rotate, re-read every second, identified
//! only by a fingerprint.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use sha2::{Digest, Sha256};

use super::Authenticator;

/// How often the HS256 secret file is re-read.
pub(super) const SECRET_POLL: Duration = Duration::from_secs(1);
/// Shortest HS256 secret accepted (RFC 7518 §3.2: a key of at least the hash size).
const MIN_SECRET_BYTES: usize = 32;

pub(super) enum SecretState {
    NotConfigured,
    Ready {
        key: DecodingKey,
        digest: [u8; 32],
        fingerprint: String,
    },
    Failed(String),
}

impl Authenticator {
    /// Re-read the HS256 secret; a change is logged (fingerprint only), a failure makes HS256
    /// verification unavailable until the file is readable again.
    pub(super) fn reload_secret(&self) {
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
