//! TLS with rustls: the main listener's certificate (reloaded from disk when it changes, for
//! cert-manager rotations), optional client certificates checked against a CA and an allow-list of
//! SAN names, and the CA bundles flex-auth trusts as a client (upstream, JWKS).
//!
//! A reload builds a whole new [`ServerConfig`] and swaps it in; connections already open keep the
//! configuration they were accepted with, new ones get the new one. A reload that fails (half
//! written files, a key that does not match) keeps the previous configuration and is retried when
//! the files change again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio_rustls::TlsAcceptor;

/// Runbook anchor and `BOOT_FAIL` problem for TLS files that cannot be used.
pub const PROBLEM: &str = "tls-invalid";

/// How often the certificate, key and client CA files are re-read.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What the main listener's TLS is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA bundle client certificates must chain to; `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// SAN URIs or DNS names a client certificate must carry one of (exact match); empty: any
    /// certificate the CA signed.
    pub allowed_sans: Vec<String>,
}

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the combination (e.g. the key does not match the certificate).
    #[error("{0}")]
    Config(String),
}

/// How a client presented itself on a TLS connection (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCert {
    /// No client certificates are asked for on this listener.
    NotRequired,
    /// Client certificates are required for decisions and none was presented.
    Missing,
    /// A certificate the CA signed, but none of its names is on the allow-list.
    NotAllowed {
        /// The SAN URIs and DNS names it carries.
        names: Vec<String>,
    },
    /// A certificate the CA signed whose `name` is on the allow-list (or no allow-list is set).
    Allowed {
        /// The first allowed name (or the first name when there is no allow-list).
        name: String,
    },
}

/// The main listener's TLS: the current server configuration and what it was built from.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    config: ArcSwap<ServerConfig>,
    reload: Mutex<ReloadState>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

#[derive(Debug)]
struct ReloadState {
    /// sha256 over the files' bytes last tried (applied or refused).
    tried: [u8; 32],
    /// Facts about the applied certificate, for `/v1/status`.
    current: CertFacts,
    last_error: Option<String>,
}

#[derive(Debug, Clone)]
struct CertFacts {
    sha256: String,
    not_after: Option<String>,
    names: Vec<String>,
    loaded_at: SystemTime,
}

struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read(&settings.cert)?,
            key: read(&settings.key)?,
            client_ca: settings.client_ca.as_deref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let bytes = part.map_or(&[][..], Vec::as_slice);
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        }
        hasher.finalize().into()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file (at least one).
fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("not a PEM certificate file: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            message: "holds no `BEGIN CERTIFICATE` block".to_owned(),
        });
    }
    Ok(certs)
}

/// A root store with every certificate of a PEM bundle.
fn roots(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path, bytes)? {
        store.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn build(settings: &TlsSettings, files: &Files) -> Result<(ServerConfig, CertFacts), TlsError> {
    let chain = certificates(&settings.cert, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| TlsError::Pem {
        path: settings.key.clone(),
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (&settings.client_ca, &files.client_ca) {
        (Some(path), Some(bytes)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(path, bytes)?),
                provider(),
            )
            // Probes and metrics scrapers connect without a certificate; the decision
            // endpoints refuse such connections (401).
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(format!("client CA {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let facts = facts(chain.first());
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not make a usable certificate: {e}",
            settings.cert.display(),
            settings.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, facts))
}

fn facts(leaf: Option<&CertificateDer<'_>>) -> CertFacts {
    let (not_after, names) = leaf
        .and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
        .map(|(_, cert)| {
            let not_after = cert.validity().not_after.to_rfc2822().ok();
            (not_after, san_names(&cert))
        })
        .unwrap_or_default();
    CertFacts {
        sha256: leaf
            .map(|der| hex::encode(Sha256::digest(der.as_ref())))
            .unwrap_or_default(),
        not_after,
        names,
        loaded_at: SystemTime::now(),
    }
}

/// The SAN URIs and DNS names of a certificate, in order.
fn san_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

impl Tls {
    /// Read and check the files; any problem is an error (start-up refuses to run without a
    /// working certificate).
    pub fn load(settings: TlsSettings) -> Result<Self, TlsError> {
        let files = Files::read(&settings)?;
        let (config, current) = build(&settings, &files)?;
        Ok(Self {
            settings,
            config: ArcSwap::from_pointee(config),
            reload: Mutex::new(ReloadState {
                tried: files.digest(),
                current,
                last_error: None,
            }),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        })
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.load_full())
    }

    /// Whether client certificates are checked.
    pub fn client_auth(&self) -> bool {
        self.settings.client_ca.is_some()
    }

    /// Re-read the files; when their bytes changed since the last attempt, build and swap in a
    /// new configuration. Returns whether a new configuration was applied.
    pub fn reload(&self) -> bool {
        let files = match Files::read(&self.settings) {
            Ok(files) => files,
            Err(e) => {
                // A missing file mid-rotation: keep serving, say so once per distinct error.
                self.failed(None, e.to_string());
                return false;
            }
        };
        let digest = files.digest();
        let mut state = self.reload_state();
        if state.tried == digest {
            return false;
        }
        state.tried = digest;
        match build(&self.settings, &files) {
            Ok((config, facts)) => {
                self.config.store(Arc::new(config));
                tracing::info!(
                    cert = %self.settings.cert.display(),
                    sha256 = %facts.sha256,
                    not_after = facts.not_after.as_deref().unwrap_or("unknown"),
                    "TLS certificate reloaded; new connections use it"
                );
                state.current = facts;
                state.last_error = None;
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                drop(state);
                self.failed(Some(digest), e.to_string());
                false
            }
        }
    }

    /// The reload bookkeeping. A panic while it was held cannot leave it half-written (every
    /// field is replaced whole), so a poisoned lock is taken over rather than ending rotation
    /// for good — the same policy as the loaded state's reload lock.
    fn reload_state(&self) -> std::sync::MutexGuard<'_, ReloadState> {
        self.reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed(&self, digest: Option<[u8; 32]>, message: String) {
        let mut state = self.reload_state();
        if let Some(digest) = digest {
            state.tried = digest;
        }
        if state.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(error = %message, "TLS files changed but cannot be used; the previous certificate stays in force");
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
            state.last_error = Some(message);
        }
    }

    /// Re-read the files every [`RELOAD_EVERY`] until the runtime stops.
    pub fn spawn_reload(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let tls = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let tls = Arc::clone(&tls);
                // File reads block; keep them off the request workers.
                let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
            }
        })
    }

    /// Classify the certificates a client presented (already verified against the CA by rustls).
    pub fn identify(&self, presented: Option<&[CertificateDer<'_>]>) -> ClientCert {
        if !self.client_auth() {
            return ClientCert::NotRequired;
        }
        let Some(leaf) = presented.and_then(<[_]>::first) else {
            return ClientCert::Missing;
        };
        let names = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map(|(_, cert)| san_names(&cert))
            .unwrap_or_default();
        if self.settings.allowed_sans.is_empty() {
            return ClientCert::Allowed {
                name: names.into_iter().next().unwrap_or_default(),
            };
        }
        match names
            .iter()
            .find(|name| self.settings.allowed_sans.iter().any(|a| a == *name))
        {
            Some(name) => ClientCert::Allowed { name: name.clone() },
            None => ClientCert::NotAllowed { names },
        }
    }

    /// The `tls` object of `/v1/status`.
    pub fn status(&self) -> Value {
        let (current, last_error) = {
            let state = self.reload_state();
            (Some(state.current.clone()), state.last_error.clone())
        };
        serde_json::json!({
            "enabled": true,
            "cert_file": self.settings.cert.display().to_string(),
            "key_file": self.settings.key.display().to_string(),
            "certificate": current.map(|c| serde_json::json!({
                "sha256": c.sha256,
                "not_after": c.not_after,
                "names": c.names,
                "loaded_at": humantime::format_rfc3339_seconds(c.loaded_at).to_string(),
            })),
            "alpn": ["h2", "http/1.1"],
            "client_ca": self.settings.client_ca.as_ref().map(|p| p.display().to_string()),
            "client_allowed_sans": self.settings.allowed_sans,
            "reloads": {
                "ok": self.reloads_ok.load(Ordering::Relaxed),
                "failed": self.reloads_failed.load(Ordering::Relaxed),
            },
            "last_reload_error": last_error,
        })
    }
}

/// A client configuration trusting the CA bundle at `ca` (PEM), or the webpki roots without
/// one. ALPN is left to the HTTP connector.
pub fn client_config(ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let roots = match ca {
        Some(path) => roots(path, &read(path)?)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost`, written as PEM files in `dir`.
    fn write_self_signed(dir: &std::path::Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&cert_path, cert.pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn a_panic_during_a_reload_does_not_end_certificate_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path());
        let tls = Arc::new(
            Tls::load(TlsSettings {
                cert,
                key,
                client_ca: None,
                allowed_sans: Vec::new(),
            })
            .unwrap(),
        );
        // Poison the reload lock the way a panicking reload would.
        let holder = Arc::clone(&tls);
        let panicked = std::thread::spawn(move || {
            let _held = holder.reload.lock().unwrap();
            panic!("a reload panicked while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(tls.reload.is_poisoned());
        // A rotated certificate is still picked up.
        write_self_signed(dir.path());
        assert!(tls.reload(), "the rotated certificate was not applied");
        assert_eq!(tls.reloads_ok.load(Ordering::Relaxed), 1);
    }
}
