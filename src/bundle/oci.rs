//! Bundles in an OCI registry, through `oci-client` (the OCI distribution protocol, its token
//! flow and digest checks are that crate's, not ours): an artifact whose one layer is the
//! `.tar.gz` (media type [`LAYER_MEDIA_TYPE`]). A poll asks for the manifest digest only (a
//! `HEAD`); the layer is pulled when the digest changed, into memory, within
//! `--bundle-max-bytes`, and `oci-client` checks it against its digest.
//!
//! Credentials come from a Docker `config.json` (`--bundle-registry-auth`: `auths.HOST.auth`,
//! or `username`/`password`, or `identitytoken`); without one the registry is asked
//! anonymously (its bearer-token flow included). Plain HTTP is used for loopback registries
//! and, with `--bundle-allow-http`, for the others.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use super::fetch::{Fetched, Limits};
use super::BundleError;

/// The layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.flex-auth.bundle.v1.tar+gzip";
/// The (empty) config's media type: the artifact's type, as ORAS and the OCI 1.1 guidance put it.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.flex-auth.bundle.config.v1+json";

/// `REGISTRY/REPOSITORY:TAG` or `REGISTRY/REPOSITORY@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference(oci_client::Reference);

impl Reference {
    /// Parse the part after `oci://`. The registry must be named (no implicit Docker Hub).
    pub fn parse(text: &str) -> Result<Self, String> {
        let first = text.split('/').next().unwrap_or_default();
        let names_registry = text.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        if !names_registry {
            return Err(format!(
                "`oci://{text}` names no registry: write oci://REGISTRY/REPOSITORY:TAG (e.g. oci://ghcr.io/acme/policy:prod)"
            ));
        }
        let reference: oci_client::Reference = text
            .parse()
            .map_err(|e| format!("`oci://{text}` is not an OCI reference: {e}"))?;
        Ok(Self(reference))
    }

    /// The registry host (and port).
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// Whether it names a digest (a pinned bundle never changes).
    pub fn is_pinned(&self) -> bool {
        self.0.digest().is_some()
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.whole())
    }
}

/// Pulls (and pushes) one reference.
pub struct Puller {
    reference: Reference,
    client: oci_client::Client,
    auth: RegistryAuth,
    max_bytes: u64,
}

impl Puller {
    /// A client for `reference`, trusting `ca` (PEM) instead of the usual roots when given,
    /// with the credentials `registry_auth` holds for its registry; `allow_http` lets a
    /// non-loopback registry be spoken to in the clear.
    pub fn new(
        reference: Reference,
        ca: Option<&Path>,
        registry_auth: Option<&Path>,
        limits: &Limits,
        allow_http: bool,
    ) -> Result<Self, String> {
        let mut config = ClientConfig {
            connect_timeout: Some(limits.connect_timeout),
            read_timeout: Some(limits.read_timeout),
            user_agent: concat!("flex-auth/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let host = reference.registry().to_owned();
        let loopback = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(h, _)| h)
            .trim_matches(['[', ']']);
        let loopback = loopback == "localhost"
            || loopback
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        config.protocol = if loopback || allow_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        if let Some(ca) = ca {
            let pem =
                std::fs::read(ca).map_err(|e| format!("cannot read `{}`: {e}", ca.display()))?;
            config.tls_certs_only = vec![Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem,
            }];
        }
        let client = oci_client::Client::try_from(config)
            .map_err(|e| format!("cannot set up the OCI client: {e}"))?;
        let auth = match registry_auth {
            Some(path) => credentials(path, &host)?,
            None => RegistryAuth::Anonymous,
        };
        Ok(Self {
            reference,
            client,
            auth,
            max_bytes: limits.max_bytes,
        })
    }

    /// The manifest digest, and the layer when it differs from `known`.
    pub async fn fetch(&self, known: Option<&str>) -> Result<Fetched, BundleError> {
        let failed = |what: &str, e: &dyn std::error::Error| {
            BundleError::Fetch(format!(
                "oci://{}: {what}: {}",
                self.reference,
                super::fetch::error_chain(e)
            ))
        };
        let reference = &self.reference.0;
        if let Some(known) = known {
            let digest = self
                .client
                .fetch_manifest_digest(reference, &self.auth)
                .await
                .map_err(|e| failed("cannot read the manifest digest", &e))?;
            if digest == known {
                return Ok(Fetched::NotModified);
            }
        }
        let (manifest, digest) = self
            .client
            .pull_image_manifest(reference, &self.auth)
            .await
            .map_err(|e| failed("cannot pull the manifest", &e))?;
        let layer = match manifest.layers.as_slice() {
            [only] if only.media_type == LAYER_MEDIA_TYPE => only,
            _ => {
                return Err(BundleError::Fetch(format!(
                    "oci://{} is not a flex-auth bundle: expected one layer of type `{LAYER_MEDIA_TYPE}`",
                    self.reference
                )))
            }
        };
        if u64::try_from(layer.size).unwrap_or(u64::MAX) > self.max_bytes {
            return Err(BundleError::TooLarge(format!(
                "the layer is {} bytes, over --bundle-max-bytes ({})",
                layer.size, self.max_bytes
            )));
        }
        let mut sink = Bounded {
            bytes: Vec::new(),
            max: self.max_bytes,
        };
        self.client
            .pull_blob(reference, layer, &mut sink)
            .await
            .map_err(|e| failed("cannot pull the bundle layer", &e))?;
        Ok(Fetched::New {
            bytes: Bytes::from(sink.bytes),
            validator: Some(digest),
        })
    }

    /// Push `archive` as the reference's one layer; returns the manifest URL.
    pub async fn push(&self, archive: Vec<u8>, revision: &str) -> Result<String, String> {
        let annotations = BTreeMap::from([
            (
                "org.opencontainers.image.revision".to_owned(),
                revision.to_owned(),
            ),
            (
                "org.opencontainers.image.title".to_owned(),
                "bundle.tar.gz".to_owned(),
            ),
        ]);
        let layer = oci_client::client::ImageLayer::new(
            archive,
            LAYER_MEDIA_TYPE.to_owned(),
            Some(annotations),
        );
        let config =
            oci_client::client::Config::new(b"{}".to_vec(), CONFIG_MEDIA_TYPE.to_owned(), None);
        let pushed = self
            .client
            .push(&self.reference.0, &[layer], config, &self.auth, None)
            .await
            .map_err(|e| {
                format!(
                    "cannot push to oci://{}: {}",
                    self.reference,
                    super::fetch::error_chain(&e)
                )
            })?;
        Ok(pushed.manifest_url)
    }
}

/// Credentials for `host` from a Docker `config.json`.
fn credentials(path: &Path, host: &str) -> Result<RegistryAuth, String> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
        #[serde(default, rename = "credsStore")]
        creds_store: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        identitytoken: Option<String>,
    }
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let config: Config = serde_json::from_slice(&bytes)
        .map_err(|e| format!("`{}` is not a Docker config.json: {e}", path.display()))?;
    let bare = |key: &str| {
        let key = key
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        key.split('/').next().unwrap_or_default().to_owned()
    };
    let Some(entry) = config
        .auths
        .iter()
        .find(|(key, _)| bare(key) == host)
        .map(|(_, e)| e)
    else {
        if let Some(store) = config.creds_store {
            return Err(format!(
                "`{}` keeps credentials in the `{store}` helper, which flex-auth does not run: write `auths.{host}.auth` into the file",
                path.display()
            ));
        }
        // No entry for this registry: ask anonymously, as docker does.
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = &entry.identitytoken {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
    }
    let Some(auth) = &entry.auth else {
        return Err(format!(
            "`{}`: `auths.{host}` holds no `auth`, `username`/`password` or `identitytoken`",
            path.display()
        ));
    };
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            format!(
                "`{}`: `auths.{host}.auth` is not base64 of `user:password`",
                path.display()
            )
        })?;
    let (user, password) = decoded.split_once(':').ok_or_else(|| {
        format!(
            "`{}`: `auths.{host}.auth` is not base64 of `user:password`",
            path.display()
        )
    })?;
    Ok(RegistryAuth::Basic(user.to_owned(), password.to_owned()))
}

/// An in-memory sink that refuses to grow past `max`.
struct Bounded {
    bytes: Vec<u8>,
    max: u64,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if (self.bytes.len() + buf.len()) as u64 > self.max {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the layer exceeds {} bytes (--bundle-max-bytes)",
                self.max
            ))));
        }
        self.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn references_must_name_their_registry() {
        assert!(Reference::parse("127.0.0.1:5000/flex/bundle:v1").is_ok());
        assert!(Reference::parse("ghcr.io/acme/policy@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef").unwrap().is_pinned());
        assert!(Reference::parse("acme/policy:prod")
            .unwrap_err()
            .contains("names no registry"));
        assert!(Reference::parse("policy").is_err());
    }

    #[test]
    fn docker_config_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"dXNlcjpwYXNz"},"other.example":{"identitytoken":"t"}}}"#,
        )
        .unwrap();
        assert!(
            matches!(credentials(&path, "reg.example:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        assert!(
            matches!(credentials(&path, "other.example").unwrap(), RegistryAuth::Bearer(t) if t == "t")
        );
        assert!(matches!(
            credentials(&path, "third.example").unwrap(),
            RegistryAuth::Anonymous
        ));
        std::fs::write(&path, r#"{"credsStore":"ecr-login"}"#).unwrap();
        assert!(credentials(&path, "x.example")
            .unwrap_err()
            .contains("ecr-login"));
    }
}
