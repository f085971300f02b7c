//! Bundles: one signed `.tar.gz` holding a policy package and a registry, built and signed by
//! `flex-auth bundle …`, served by `serve --bundle URL` (polled, verified, activated through
//! the same state swap as files). The format is `docs/bundles.md`.
//!
//! `manifest` (the manifest and its rules), `archive` (unpacking within limits, writing),
//! `signature` (JWS over the manifest, trusted keys), `fetch` (local path, HTTP(S), OCI),
//! `watch` (polling, backoff, the cache, staleness, status); this file opens a bundle —
//! unpack, verify, check every hash — and turns a verified one into an engine.
//!
//! **Architecture invariant:** nothing of a bundle is used before [`open`] returned it: the
//! signature (when any key is configured) is checked over the exact manifest bytes, and every
//! file of the archive is listed in the manifest with its sha256 and size — no file more, no
//! file less — so what the package loader reads is what was signed.

mod archive;
pub mod fetch;
mod manifest;
pub mod oci;
mod signature;
pub mod watch;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use archive::{pack, unpack, Files, MAX_ENTRIES};
pub use manifest::{
    check_path, check_revision, FileEntry, Manifest, PackageEntry, RegistryEntry, RegistryFormat,
    FORMAT_VERSION, MANIFEST, SIGNATURES,
};
pub use signature::{
    sign, SignatureStatus, Signatures, Trust, TrustedKey, JWS_TYPE, MAX_SIGNATURES,
};

use crate::decision::Engine;
use crate::state::{LoadError, RegistrySource, Sources};

/// Default for `--bundle-max-bytes`: the download, and separately the unpacked files.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// Why a bundle was refused. Every variant keeps the last good version in force.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The source could not be reached or answered badly.
    #[error("cannot fetch the bundle: {0}")]
    Fetch(String),
    /// Over `--bundle-max-bytes`.
    #[error("bundle too large: {0}")]
    TooLarge(String),
    /// Not a usable archive (truncated, hostile paths, links, duplicates).
    #[error("bundle archive refused: {0}")]
    Archive(String),
    /// `manifest.json` is missing or breaks a rule.
    #[error("bundle manifest: {0}")]
    Manifest(String),
    /// A key is configured and the bundle carries no signature.
    #[error("bundle is not signed, and --bundle-public-key is set: every bundle must be signed by a configured key")]
    Unsigned,
    /// A signature is malformed, does not verify, or was made for another manifest.
    #[error("bundle signature refused: {0}")]
    Signature(String),
    /// Every signature names a `kid` no configured key has.
    #[error(
        "bundle signed by unknown key id(s) `{0}`: no configured --bundle-public-key has that kid"
    )]
    UnknownKid(String),
    /// A file differs from, or is missing from, or is absent in the manifest.
    #[error("bundle content does not match its manifest: {0}")]
    Hash(String),
    /// The package or registry does not load (the message names the file inside the bundle).
    #[error("{0}")]
    Load(String),
    /// Writing the staging directory or the cache failed.
    #[error("bundle: {0}")]
    Io(String),
}

impl BundleError {
    /// The `docs/runbook.md` anchor.
    pub fn problem(&self) -> &'static str {
        match self {
            Self::Fetch(_) => "bundle-unreachable",
            Self::Unsigned | Self::Signature(_) | Self::UnknownKid(_) => "bundle-signature",
            Self::Io(_) => "bundle-io",
            Self::TooLarge(_)
            | Self::Archive(_)
            | Self::Manifest(_)
            | Self::Hash(_)
            | Self::Load(_) => "bundle-invalid",
        }
    }
}

/// A bundle that passed every check: unpacked, signature verified (or knowingly not),
/// every file's hash equal to the manifest's.
#[derive(Debug)]
pub struct Opened {
    /// The manifest.
    pub manifest: Manifest,
    /// The signature's standing.
    pub signature: SignatureStatus,
    /// Lower-case hex sha256 of the whole `.tar.gz`.
    pub digest: String,
    /// Bytes of the `.tar.gz`.
    pub archive_bytes: u64,
    files: Files,
}

/// Unpack `archive` within `max_unpacked` bytes, parse the manifest, verify the signature
/// against `trust`, and check that the archive holds exactly the manifest's files with their
/// hashes and sizes.
pub fn open(archive: &[u8], max_unpacked: u64, trust: &Trust) -> Result<Opened, BundleError> {
    let mut files = unpack(archive, max_unpacked)?;
    let manifest_bytes = files
        .take(MANIFEST)
        .ok_or_else(|| BundleError::Manifest(format!("the archive holds no `{MANIFEST}`")))?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    let signatures = files.take(SIGNATURES);
    let signature = trust.verify(signatures.as_deref(), &manifest_bytes, &manifest)?;
    check_files(&manifest, &files)?;
    Ok(Opened {
        manifest,
        signature,
        digest: hex::encode(Sha256::digest(archive)),
        archive_bytes: archive.len() as u64,
        files,
    })
}

fn check_files(manifest: &Manifest, files: &Files) -> Result<(), BundleError> {
    for entry in &manifest.files {
        let Some(bytes) = files.get(&entry.path) else {
            return Err(BundleError::Hash(format!(
                "`{}` is in the manifest but not in the archive",
                entry.path
            )));
        };
        if bytes.len() as u64 != entry.size || hex::encode(Sha256::digest(bytes)) != entry.sha256 {
            return Err(BundleError::Hash(format!(
                "`{}` differs from the manifest (sha256 or size)",
                entry.path
            )));
        }
    }
    let listed: std::collections::BTreeSet<&str> =
        manifest.files.iter().map(|f| f.path.as_str()).collect();
    if let Some(extra) = files.paths().find(|p| !listed.contains(p)) {
        return Err(BundleError::Hash(format!(
            "`{extra}` is in the archive but not in the manifest"
        )));
    }
    Ok(())
}

impl Opened {
    /// The registry file's bytes.
    pub fn registry_bytes(&self) -> &[u8] {
        self.files
            .get(&self.manifest.registry.path)
            .unwrap_or_default()
    }

    /// The files, for `inspect`.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Build the engine: the package's files are written to a fresh private directory under
    /// `staging_parent` (the package loader reads a directory), loaded exactly as `validate`
    /// loads files, and removed; the registry is parsed from memory. Error messages name files
    /// as `bundle:PATH`, the path inside the bundle.
    pub fn engine(&self, staging_parent: &Path) -> Result<Engine, BundleError> {
        let staging = Staging::create(staging_parent)?;
        for (path, bytes) in self.files.iter() {
            if self.manifest.in_package(path) {
                staging.write(path, bytes)?;
            }
        }
        let sources = Sources {
            policy: staging.root.join(&self.manifest.package.path),
            registry: match self.manifest.registry.format {
                RegistryFormat::Snapshot => {
                    RegistrySource::Snapshot(PathBuf::from(&self.manifest.registry.path))
                }
                RegistryFormat::Entities => {
                    RegistrySource::Entities(PathBuf::from(&self.manifest.registry.path))
                }
            },
        };
        let origin = format!("bundle:{}", self.manifest.registry.path);
        let built = crate::state::load_with_registry(&sources, self.registry_bytes(), &origin);
        let prefix = format!("{}/", staging.root.display());
        built
            .map(|engine| engine.with_bundle_revision(&self.manifest.revision))
            .map_err(|e: LoadError| BundleError::Load(e.to_string().replace(&prefix, "bundle:")))
    }
}

impl Opened {
    /// Build an engine from another package (`policy`, on disk) and this bundle's registry:
    /// a candidate package evaluated against the registry production runs with.
    pub fn engine_with_package(&self, policy: &Path) -> Result<Engine, BundleError> {
        let registry = PathBuf::from(&self.manifest.registry.path);
        let sources = Sources {
            policy: policy.to_path_buf(),
            registry: match self.manifest.registry.format {
                RegistryFormat::Snapshot => RegistrySource::Snapshot(registry),
                RegistryFormat::Entities => RegistrySource::Entities(registry),
            },
        };
        let origin = format!("bundle:{}", self.manifest.registry.path);
        crate::state::load_with_registry(&sources, self.registry_bytes(), &origin)
            .map_err(|e| BundleError::Load(e.to_string()))
    }
}

/// How staging directories are named (a restart removes the ones a killed process left).
pub const STAGING_PREFIX: &str = ".flex-auth-staging-";

/// A private directory that is removed when dropped.
struct Staging {
    root: PathBuf,
}

impl Staging {
    fn create(parent: &Path) -> Result<Self, BundleError> {
        let name = format!("{STAGING_PREFIX}{:016x}", rand::random::<u64>());
        let root = parent.join(name);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&root).map_err(|e| {
            BundleError::Io(format!(
                "cannot create a staging directory in `{}`: {e}",
                parent.display()
            ))
        })?;
        Ok(Self { root })
    }

    /// Write one file; `path` passed [`check_path`], so it stays under the root.
    fn write(&self, path: &str, bytes: &[u8]) -> Result<(), BundleError> {
        let target = self.root.join(path);
        let io = |e: std::io::Error| BundleError::Io(format!("cannot stage `{path}`: {e}"));
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::write(&target, bytes).map_err(io)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(dir = %self.root.display(), error = %e, "cannot remove a bundle staging directory");
        }
    }
}

/// What `bundle build` puts in.
#[derive(Debug)]
pub struct BuildInput<'a> {
    /// The package path, as `--policy`.
    pub policy: &'a Path,
    /// The registry path and format.
    pub registry: &'a RegistrySource,
    /// The revision to stamp.
    pub revision: &'a str,
    /// When it is built (seconds since the epoch).
    pub created: std::time::SystemTime,
}

/// Validate the sources exactly as `validate` does and pack them with their manifest. Returns
/// the manifest and the unsigned archive's files (sign, then [`pack`]).
pub fn build(input: &BuildInput<'_>) -> Result<(Manifest, Files), String> {
    check_revision(input.revision)?;
    let sources = Sources {
        policy: input.policy.to_owned(),
        registry: input.registry.clone(),
    };
    let engine = crate::state::load(&sources).map_err(|e| e.to_string())?;
    let package = engine.policy();
    let label = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("`{}` has no file name", p.display()))
    };
    let mut files = Files::default();
    let is_dir = input.policy.is_dir();
    let package_path = format!("package/{}", label(input.policy)?);
    for source in package.sources() {
        let inside = if is_dir {
            format!("{package_path}/{}", label(source)?)
        } else {
            package_path.clone()
        };
        check_path(&inside)?;
        let bytes = std::fs::read(source)
            .map_err(|e| format!("cannot read `{}`: {e}", source.display()))?;
        files.insert(inside, bytes);
    }
    let registry_path = format!("registry/{}", label(input.registry.path())?);
    check_path(&registry_path)?;
    let registry_bytes = std::fs::read(input.registry.path())
        .map_err(|e| format!("cannot read `{}`: {e}", input.registry.path().display()))?;
    files.insert(registry_path.clone(), registry_bytes);
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        revision: input.revision.to_owned(),
        created: humantime::format_rfc3339_seconds(input.created).to_string(),
        package: PackageEntry {
            name: package.name().to_owned(),
            version: package.declared_version().map(str::to_owned),
            path: package_path,
        },
        registry: RegistryEntry {
            format: match input.registry {
                RegistrySource::Snapshot(_) => RegistryFormat::Snapshot,
                RegistrySource::Entities(_) => RegistryFormat::Entities,
            },
            path: registry_path,
        },
        files: files
            .iter()
            .map(|(path, bytes)| FileEntry {
                path: path.to_owned(),
                sha256: hex::encode(Sha256::digest(bytes)),
                size: bytes.len() as u64,
            })
            .collect(),
    };
    manifest.check().map_err(|e| e.to_string())?;
    Ok((manifest, files))
}

/// The manifest's bytes as written into a bundle (pretty, one trailing newline).
pub fn manifest_bytes(manifest: &Manifest) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Write `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync the
/// directory. A reader sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".to_owned());
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(dir) = std::fs::File::open(&dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
