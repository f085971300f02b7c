//! `flex-auth bundle build|sign|verify|inspect|push|pull`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use super::{EXIT_CANNOT_DECIDE, EXIT_CONFIG, EXIT_DENY, EXIT_OK};
use crate::bundle::{self, Files, Manifest, Opened, Signatures, Trust, MANIFEST, SIGNATURES};
use crate::config::{
    BundleBuildArgs, BundleCommand, BundleInspectArgs, BundleOciArgs, BundleSignArgs,
    BundleVerifyArgs,
};

/// `flex-auth bundle …`.
pub fn bundle(command: &BundleCommand) -> ExitCode {
    let result = match command {
        BundleCommand::Build(args) => build(args),
        BundleCommand::Sign(args) => sign(args),
        BundleCommand::Verify(args) => verify(args),
        BundleCommand::Inspect(args) => inspect(args),
        BundleCommand::Push(args) => oci(args, true),
        BundleCommand::Pull(args) => oci(args, false),
    };
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(Failure::Invalid(message)) => {
            eprintln!("invalid: {message}");
            ExitCode::from(EXIT_DENY)
        }
        Err(Failure::Cannot(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_CANNOT_DECIDE)
        }
        Err(Failure::Config(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

pub(super) enum Failure {
    /// The bundle (or what would go into it) is invalid or refused: exit 1.
    Invalid(String),
    /// Something outside failed (a file, the network): exit 2.
    Cannot(String),
    /// The flags cannot work: exit 78.
    Config(String),
}

impl Failure {
    /// The message, whatever the kind (for callers with one exit code for all).
    pub(super) fn into_message(self) -> String {
        match self {
            Self::Invalid(m) | Self::Cannot(m) | Self::Config(m) => m,
        }
    }
}

/// Read a bundle file, refusing one larger than `max`.
pub(super) fn read_bundle(path: &Path, max: u64) -> Result<Vec<u8>, Failure> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| Failure::Cannot(format!("cannot read `{}`: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::Cannot(format!("cannot read `{}`: {e}", path.display())))?;
    if bytes.len() as u64 > max {
        return Err(Failure::Invalid(format!(
            "`{}` is larger than {max} bytes (--max-bytes)",
            path.display()
        )));
    }
    Ok(bytes)
}

fn read_key(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::Cannot(format!("cannot read `{}`: {e}", path.display())))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    bundle::write_atomically(path, bytes)
        .map_err(|e| Failure::Cannot(format!("cannot write `{}`: {e}", path.display())))
}

/// Pack `files` (without manifest and signatures), the manifest's exact bytes and the
/// signatures; the archive's times are the manifest's creation time.
fn pack(
    files: &Files,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    signatures: Option<&Signatures>,
) -> Result<Vec<u8>, Failure> {
    let mut all = Files::default();
    for (path, bytes) in files.iter() {
        all.insert(path.to_owned(), bytes.to_vec());
    }
    all.insert(MANIFEST.to_owned(), manifest_bytes.to_vec());
    if let Some(signatures) = signatures {
        let mut bytes = serde_json::to_vec_pretty(signatures).unwrap_or_default();
        bytes.push(b'\n');
        all.insert(SIGNATURES.to_owned(), bytes);
    }
    let mtime = humantime::parse_rfc3339(&manifest.created)
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    bundle::pack(&all, mtime).map_err(|e| Failure::Cannot(format!("cannot write the archive: {e}")))
}

fn build(args: &BundleBuildArgs) -> Result<(), Failure> {
    let sources = args
        .sources
        .sources()
        .map_err(|e| Failure::Config(e.to_string()))?;
    let input = bundle::BuildInput {
        policy: &sources.policy,
        registry: &sources.registry,
        revision: &args.revision,
        created: SystemTime::now(),
    };
    let (manifest, files) = bundle::build(&input).map_err(Failure::Invalid)?;
    let manifest_bytes = bundle::manifest_bytes(&manifest);
    let signatures = match (&args.signing_key, &args.kid) {
        (Some(key), Some(kid)) => {
            let jws = bundle::sign(&manifest_bytes, &manifest.revision, &read_key(key)?, kid)
                .map_err(Failure::Config)?;
            Some(Signatures {
                signatures: vec![jws],
            })
        }
        _ => None,
    };
    let archive = pack(&files, &manifest, &manifest_bytes, signatures.as_ref())?;
    write(&args.output, &archive)?;
    println!(
        "built `{}`: revision {}, package `{}`, {} files, {} bytes{}",
        args.output.display(),
        manifest.revision,
        manifest.package.name,
        manifest.files.len(),
        archive.len(),
        args.kid
            .as_ref()
            .filter(|_| signatures.is_some())
            .map(|k| format!(", signed by `{k}`"))
            .unwrap_or_else(|| ", unsigned".to_owned()),
    );
    Ok(())
}

fn sign(args: &BundleSignArgs) -> Result<(), Failure> {
    let archive = read_bundle(&args.file, bundle::DEFAULT_MAX_BYTES)?;
    let mut files = bundle::unpack(&archive, bundle::DEFAULT_MAX_BYTES)
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let manifest_bytes = files
        .take(MANIFEST)
        .ok_or_else(|| Failure::Invalid(format!("the archive holds no `{MANIFEST}`")))?;
    let manifest = Manifest::parse(&manifest_bytes).map_err(|e| Failure::Invalid(e.to_string()))?;
    // Refuse to sign what does not match its own manifest: the signature would vouch for it.
    bundle::open(&archive, bundle::DEFAULT_MAX_BYTES, &Trust::none())
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let mut signatures = match files.take(SIGNATURES) {
        Some(bytes) => Signatures::parse(&bytes).map_err(|e| Failure::Invalid(e.to_string()))?,
        None => Signatures::default(),
    };
    let jws = bundle::sign(
        &manifest_bytes,
        &manifest.revision,
        &read_key(&args.key)?,
        &args.kid,
    )
    .map_err(Failure::Config)?;
    let kids = signatures.kids();
    let mut kept: Vec<String> = signatures
        .signatures
        .drain(..)
        .zip(kids)
        .filter(|(_, kid)| kid != &args.kid)
        .map(|(jws, _)| jws)
        .collect();
    kept.push(jws);
    if kept.len() > bundle::MAX_SIGNATURES {
        return Err(Failure::Invalid(format!(
            "a bundle carries at most {} signatures",
            bundle::MAX_SIGNATURES
        )));
    }
    signatures.signatures = kept;
    let signed = pack(&files, &manifest, &manifest_bytes, Some(&signatures))?;
    let out = args.output.as_deref().unwrap_or(&args.file);
    write(out, &signed)?;
    println!(
        "signed `{}` (revision {}) with `{}`; signatures by: {}",
        out.display(),
        manifest.revision,
        args.kid,
        signatures.kids().join(", ")
    );
    Ok(())
}

/// Open with `trust`, then load the package and registry in a temporary directory.
fn open_and_load(
    archive: &[u8],
    max: u64,
    trust: &Trust,
) -> Result<(Opened, crate::decision::Engine), Failure> {
    let opened = bundle::open(archive, max, trust).map_err(|e| Failure::Invalid(e.to_string()))?;
    let engine = opened.engine(&std::env::temp_dir()).map_err(|e| match e {
        bundle::BundleError::Io(m) => Failure::Cannot(m),
        other => Failure::Invalid(other.to_string()),
    })?;
    Ok((opened, engine))
}

fn verify(args: &BundleVerifyArgs) -> Result<(), Failure> {
    let trust = Trust::load(&args.public_keys).map_err(Failure::Config)?;
    let archive = read_bundle(&args.file, args.max_bytes)?;
    let (opened, engine) = open_and_load(&archive, args.max_bytes, &trust)?;
    let signer = match &opened.signature {
        bundle::SignatureStatus::Verified { kid, alg } => format!("signed by `{kid}` ({alg})"),
        bundle::SignatureStatus::NotChecked { .. } => "not checked".to_owned(),
    };
    println!(
        "ok: `{}` revision {} {signer}; {} files match the manifest; package `{}` ({} policies) and {} entities load",
        args.file.display(),
        opened.manifest.revision,
        opened.manifest.files.len(),
        engine.policy().name(),
        engine.policy().policy_count(),
        engine.registry().entity_count(),
    );
    Ok(())
}

fn inspect(args: &BundleInspectArgs) -> Result<(), Failure> {
    let archive = read_bundle(&args.file, args.max_bytes)?;
    let mut files =
        bundle::unpack(&archive, args.max_bytes).map_err(|e| Failure::Invalid(e.to_string()))?;
    let kids = files
        .take(SIGNATURES)
        .map(|b| Signatures::parse(&b).map(|s| s.kids()))
        .transpose()
        .map_err(|e| Failure::Invalid(e.to_string()))?;
    let (opened, engine) = open_and_load(&archive, args.max_bytes, &Trust::none())?;
    let m = &opened.manifest;
    let registry = engine.registry();
    if args.json {
        let value = serde_json::json!({
            "file": args.file.display().to_string(),
            "digest": opened.digest,
            "bytes": opened.archive_bytes,
            "manifest": m,
            "signatures": kids.clone().unwrap_or_default(),
            "package": {
                "name": engine.policy().name(),
                "declared_version": engine.policy().declared_version(),
                "policy_version": engine.policy().hash().as_str(),
                "policies": engine.policy().policy_count(),
                "schema": engine.policy().schema().is_some(),
            },
            "registry": {
                "format": m.registry.format.as_str(),
                "registry_version": registry.hash().as_str(),
                "entities": registry.entity_count(),
            },
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "bundle     {} ({} bytes, sha256 {})",
        args.file.display(),
        opened.archive_bytes,
        opened.digest
    );
    println!("revision   {}", m.revision);
    println!("created    {}", m.created);
    println!(
        "package    `{}`{} at {}: {} policies, {}, policy_version {}",
        engine.policy().name(),
        engine
            .policy()
            .declared_version()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        m.package.path,
        engine.policy().policy_count(),
        if engine.policy().schema().is_some() {
            "schema-validated"
        } else {
            "no schema"
        },
        engine.policy().hash(),
    );
    println!(
        "registry   {} ({}): {} entities, registry_version {}",
        m.registry.path,
        m.registry.format.as_str(),
        registry.entity_count(),
        registry.hash()
    );
    match kids {
        Some(kids) => println!(
            "signatures {} (unverified here; `flex-auth bundle verify --public-key …` checks them)",
            kids.join(", ")
        ),
        None => println!("signatures none (unsigned)"),
    }
    println!("files");
    for f in &m.files {
        println!("  {:>10}  {}  {}", f.size, f.sha256, f.path);
    }
    Ok(())
}

fn oci(args: &BundleOciArgs, push: bool) -> Result<(), Failure> {
    let Some(reference) = args.reference.strip_prefix("oci://") else {
        return Err(Failure::Config(format!(
            "`{}` is not an oci:// reference",
            args.reference
        )));
    };
    let reference = bundle::oci::Reference::parse(reference).map_err(Failure::Config)?;
    let limits = bundle::fetch::Limits {
        connect_timeout: Duration::from_secs(10),
        read_timeout: args.timeout,
        download_timeout: args.timeout,
        max_bytes: args.max_bytes,
    };
    let puller = bundle::oci::Puller::new(
        reference.clone(),
        args.ca.as_deref(),
        args.registry_auth.as_deref(),
        &limits,
        args.allow_http,
    )
    .map_err(Failure::Config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Cannot(format!("cannot start the async runtime: {e}")))?;
    if push {
        let archive = read_bundle(&args.file, args.max_bytes)?;
        // Only a bundle goes up: the same checks a server makes, short of the signature.
        let opened = bundle::open(&archive, args.max_bytes, &Trust::none())
            .map_err(|e| Failure::Invalid(e.to_string()))?;
        let revision = opened.manifest.revision.clone();
        let url = runtime
            .block_on(async {
                tokio::time::timeout(args.timeout, puller.push(archive, &revision)).await
            })
            .map_err(|_| {
                Failure::Cannot(format!("the push did not finish within {:?}", args.timeout))
            })?
            .map_err(Failure::Cannot)?;
        println!("pushed revision {revision} to oci://{reference} ({url})");
        return Ok(());
    }
    let fetched = runtime
        .block_on(async { tokio::time::timeout(args.timeout, puller.fetch(None)).await })
        .map_err(|_| Failure::Cannot(format!("the pull did not finish within {:?}", args.timeout)))?
        .map_err(|e| Failure::Cannot(e.to_string()))?;
    let bundle::fetch::Fetched::New { bytes, validator } = fetched else {
        return Err(Failure::Cannot("the registry sent nothing".to_owned()));
    };
    write(&args.file, &bytes)?;
    println!(
        "pulled oci://{reference} ({}) into `{}`: {} bytes",
        validator.unwrap_or_default(),
        args.file.display(),
        bytes.len()
    );
    Ok(())
}
