//! Policy packages: finding the Cedar sources on disk, parsing them, validating them against the
//! package's Cedar schema, and reading the annotations the PDP acts on (`@id`, `@reason`).
//!
//! A package is a directory of `*.cedar` files (with an optional `*.cedarschema` or
//! `*.cedarschema.json` and an optional `manifest.yaml`), a single `.cedar` file, or a single
//! Markdown file whose ```` ```cedar ```` blocks are the policies and whose ```` ```cedarschema ````
//! block is the schema. Every error names the file, line and column it is about; for Markdown the
//! line numbers are those of the `.md` file, because the Cedar parser is handed a copy of the
//! Markdown in which every line outside the relevant blocks is blanked.
//!
//! `discovery` finds and reads a package's files, `markdown` splits a Markdown package into its
//! blocks, `build` parses and validates them, `diagnostics` turns Cedar's errors into located ones.

mod build;
mod diagnostics;
mod discovery;
mod index;
mod markdown;

use std::fmt;
use std::path::{Path, PathBuf};

use cedar_policy::{EntityUid, PolicyId, PolicySet, Schema};
use serde::Deserialize;

use crate::hash::ContentHash;
use build::build_package;
use discovery::{has_extension, read_cedar_file, read_directory};
use index::ActionIndex;
use markdown::read_markdown_file;

/// The annotation that names a policy in decisions.
pub const ID_ANNOTATION: &str = "id";
/// The annotation on a `forbid` policy that gives the reason code its deny reports.
pub const REASON_ANNOTATION: &str = "reason";
/// The file name a directory package may use for its manifest.
pub const MANIFEST_FILE: &str = "manifest.yaml";
/// The Markdown file a directory package may hold instead of `*.cedar` files.
pub const MARKDOWN_PACKAGE_FILE: &str = "policy_package.md";

/// A loaded, validated policy package. Only [`load_package`] builds one.
#[derive(Debug)]
pub struct PolicyPackage {
    name: String,
    version: Option<String>,
    policies: PolicySet,
    schema: Option<Schema>,
    hash: ContentHash,
    sources: Vec<PathBuf>,
    warnings: Vec<String>,
    /// The policies that can apply to each action (see `index`).
    index: ActionIndex,
    /// Each policy's `@reason`, read once at load: Cedar's `PolicySet::annotation` parses the
    /// annotation key with the policy parser on every call (a lexer, and its regex cache, per
    /// deny).
    reasons: std::collections::HashMap<PolicyId, Box<str>>,
}

impl PolicyPackage {
    /// The package name: from the manifest, else the file or directory name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version the manifest declares, if any.
    pub fn declared_version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The Cedar policies, each with its `@id` (or a generated `file#n` id) as its policy id.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The Cedar schema, when the package has one.
    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    /// The policies Cedar needs for a request naming `action`: the package's policies less those
    /// whose action scope cannot match it (same decision, determining policies and errors as the
    /// whole set; `tests/policy_index.rs`). The whole set when `action` is `None`.
    pub fn policies_for(&self, action: Option<&EntityUid>) -> &PolicySet {
        self.index.for_action(action, &self.policies)
    }

    /// How many actions are evaluated against fewer policies than the whole package.
    pub fn indexed_actions(&self) -> usize {
        self.index.indexed_actions()
    }

    /// Content hash of every file that went into the package.
    pub fn hash(&self) -> &ContentHash {
        &self.hash
    }

    /// The files the package was read from.
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Number of policies.
    pub fn policy_count(&self) -> usize {
        self.policies.policies().count()
    }

    /// Validator warnings (not fatal), already formatted as `file: message`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The `@reason` of a policy, if it has one.
    pub fn reason_of(&self, id: &PolicyId) -> Option<&str> {
        self.reasons.get(id).map(|reason| &**reason)
    }
}

/// One problem in a source file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// The file the problem is in.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// What is wrong, in words a policy author can act on.
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a policy package could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    /// The path or one of its files could not be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The path is neither a directory, a `.cedar` file nor a Markdown file.
    #[error("unsupported policy path `{}`: expected a directory, a `.cedar` file or a Markdown (`.md`) file", .0.display())]
    UnsupportedPath(PathBuf),
    /// A directory package holds no policy source.
    #[error("`{}` holds no `*.cedar` files and no `{MARKDOWN_PACKAGE_FILE}`", .0.display())]
    NoPolicies(PathBuf),
    /// The sources contain errors.
    #[error("{}", join_errors(.0))]
    Invalid(Vec<SourceError>),
}

impl PolicyLoadError {
    /// The located errors, when the failure is about the content of the sources.
    pub fn source_errors(&self) -> &[SourceError] {
        match self {
            Self::Invalid(errors) => errors,
            _ => &[],
        }
    }
}

fn join_errors(errors: &[SourceError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Text handed to the Cedar parser, and where it came from.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    text: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    name: Option<String>,
    version: Option<String>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted so manifests can describe themselves; never read"
    )]
    description: Option<String>,
}

/// The pieces of a package before parsing.
#[derive(Default)]
/// A package's files as read, before parsing: see [`read_package`].
#[derive(Debug)]
pub struct RawPackage {
    name: String,
    manifest: Manifest,
    policy_sources: Vec<Source>,
    schema_source: Option<(Source, SchemaSyntax)>,
    hash_inputs: Vec<(String, Vec<u8>)>,
    files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
enum SchemaSyntax {
    Cedar,
    Json,
}

/// Load, parse and validate the package at `path`.
pub fn load_package(path: &Path) -> Result<PolicyPackage, PolicyLoadError> {
    read_package(path)?.build()
}

/// Read a package's files without parsing or validating them: enough to know its version
/// ([`RawPackage::hash`]) before paying for a build. A poll that finds the same bytes stops here.
pub fn read_package(path: &Path) -> Result<RawPackage, PolicyLoadError> {
    let meta = std::fs::metadata(path).map_err(|source| PolicyLoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let raw = if meta.is_dir() {
        read_directory(path)?
    } else if has_extension(path, "cedar") {
        read_cedar_file(path)?
    } else if has_extension(path, "md") || has_extension(path, "markdown") {
        read_markdown_file(path)?
    } else {
        return Err(PolicyLoadError::UnsupportedPath(path.to_owned()));
    };
    Ok(raw)
}

impl RawPackage {
    /// The version the package will report once built: a hash of its files' names and bytes.
    pub fn hash(&self) -> ContentHash {
        ContentHash::of_parts(
            self.hash_inputs
                .iter()
                .map(|(name, bytes)| (name.as_bytes(), bytes.as_slice())),
        )
    }

    /// Parse, validate against the schema and build the package.
    pub fn build(self) -> Result<PolicyPackage, PolicyLoadError> {
        build_package(self)
    }
}
