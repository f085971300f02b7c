//! Policy packages: finding the Cedar sources on disk, parsing them, validating them against the
//! package's Cedar schema, and reading the annotations the PDP acts on (`@id`, `@reason`).
//!
//! A package is a directory of `*.cedar` files (with an optional `*.cedarschema` or
//! `*.cedarschema.json` and an optional `manifest.yaml`), a single `.cedar` file, or a single
//! Markdown file whose ```` ```cedar ```` blocks are the policies and whose ```` ```cedarschema ````
//! block is the schema. Every error names the file, line and column it is about; for Markdown the
//! line numbers are those of the `.md` file, because the Cedar parser is handed a copy of the
//! Markdown in which every line outside the relevant blocks is blanked.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Effect, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use serde::Deserialize;

use crate::hash::ContentHash;

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
        self.policies.annotation(id, REASON_ANNOTATION)
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

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn read_file(path: &Path) -> Result<Vec<u8>, PolicyLoadError> {
    std::fs::read(path).map_err(|source| PolicyLoadError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_text(path: &Path) -> Result<(String, Vec<u8>), PolicyLoadError> {
    let bytes = read_file(path)?;
    let text = String::from_utf8(bytes.clone()).map_err(|e| {
        PolicyLoadError::Invalid(vec![SourceError {
            path: path.to_owned(),
            line: None,
            column: None,
            message: format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        }])
    })?;
    Ok((text, bytes))
}

fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

fn read_cedar_file(path: &Path) -> Result<RawPackage, PolicyLoadError> {
    let (text, bytes) = read_text(path)?;
    let mut raw = RawPackage {
        name: stem(path),
        ..RawPackage::default()
    };
    raw.hash_inputs.push((file_label(path), bytes));
    raw.files.push(path.to_owned());
    raw.policy_sources.push(Source {
        path: path.to_owned(),
        text,
    });
    Ok(raw)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".to_owned())
}

fn read_directory(dir: &Path) -> Result<RawPackage, PolicyLoadError> {
    let io_err = |source| PolicyLoadError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io_err)?;
    // Kubernetes ConfigMap volumes hold `..data` and `..<timestamp>` entries beside the
    // symlinks to the real files; hidden files are never part of a package.
    entries.retain(|p| !file_label(p).starts_with('.'));
    entries.sort();

    let cedar_files: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| has_extension(p, "cedar") && p.is_file())
        .collect();
    let markdown = dir.join(MARKDOWN_PACKAGE_FILE);
    if cedar_files.is_empty() {
        if markdown.is_file() {
            return read_markdown_file(&markdown);
        }
        return Err(PolicyLoadError::NoPolicies(dir.to_owned()));
    }
    if markdown.is_file() {
        return Err(PolicyLoadError::Invalid(vec![SourceError {
            path: dir.to_owned(),
            line: None,
            column: None,
            message: format!(
                "holds both `*.cedar` files and `{MARKDOWN_PACKAGE_FILE}`; keep one form of the package"
            ),
        }]));
    }

    let mut raw = RawPackage {
        name: file_label(dir),
        ..RawPackage::default()
    };
    for path in cedar_files {
        let (text, bytes) = read_text(path)?;
        raw.hash_inputs.push((file_label(path), bytes));
        raw.files.push(path.clone());
        raw.policy_sources.push(Source {
            path: path.clone(),
            text,
        });
    }

    let schemas: Vec<(&PathBuf, SchemaSyntax)> = entries
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| {
            let name = file_label(p);
            if name.ends_with(".cedarschema") {
                Some((p, SchemaSyntax::Cedar))
            } else if name.ends_with(".cedarschema.json") {
                Some((p, SchemaSyntax::Json))
            } else {
                None
            }
        })
        .collect();
    match schemas.as_slice() {
        [] => {}
        [(path, syntax)] => {
            let (text, bytes) = read_text(path)?;
            raw.hash_inputs.push((file_label(path), bytes));
            raw.files.push((*path).clone());
            raw.schema_source = Some((
                Source {
                    path: (*path).clone(),
                    text,
                },
                *syntax,
            ));
        }
        many => {
            let names: Vec<String> = many.iter().map(|(p, _)| file_label(p)).collect();
            return Err(PolicyLoadError::Invalid(vec![SourceError {
                path: dir.to_owned(),
                line: None,
                column: None,
                message: format!(
                    "holds more than one schema ({}); a package has at most one",
                    names.join(", ")
                ),
            }]));
        }
    }

    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.is_file() {
        let (text, bytes) = read_text(&manifest_path)?;
        raw.hash_inputs.push((MANIFEST_FILE.to_owned(), bytes));
        raw.files.push(manifest_path.clone());
        raw.manifest = parse_manifest(&manifest_path, &text, 0)?;
    }
    Ok(raw)
}

fn parse_manifest(
    path: &Path,
    text: &str,
    line_offset: usize,
) -> Result<Manifest, PolicyLoadError> {
    if text.trim().is_empty() {
        return Ok(Manifest::default());
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        let loc = e.location();
        PolicyLoadError::Invalid(vec![SourceError {
            path: path.to_owned(),
            line: loc.as_ref().map(|l| l.line() + line_offset),
            column: loc.as_ref().map(|l| l.column()),
            message: format!("invalid manifest: {e}"),
        }])
    })
}

/// The fenced blocks of a Markdown file that make up a package, each kept at its original lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct MarkdownBlocks {
    /// The Markdown text with every line outside a `cedar` block blanked.
    policies: String,
    /// Same for the `cedarschema` block; `None` when there is none.
    schema: Option<String>,
    /// The `manifest` block's text and the line it starts on.
    manifest: Option<(String, usize)>,
    /// Number of `cedar` blocks.
    policy_blocks: usize,
    /// Lines of a second schema or manifest block, an error.
    extra_blocks: Vec<(usize, &'static str)>,
    /// A block that is never closed: its opening line.
    unclosed: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Cedar,
    Schema,
    Manifest,
    Other,
}

/// Split a Markdown document into its Cedar, schema and manifest blocks.
fn split_markdown(text: &str) -> MarkdownBlocks {
    let mut out = MarkdownBlocks::default();
    let mut schema = String::new();
    let mut manifest = String::new();
    let mut seen_schema = false;
    let mut seen_manifest = false;
    // (fence character, fence length, kind, opening line)
    let mut open: Option<(char, usize, BlockKind, usize)> = None;

    for (index, line) in text.split('\n').enumerate() {
        let line_no = index + 1;
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let fence = fence_of(trimmed).filter(|_| indent <= 3);
        let mut kind_of_line = None;
        match (open, fence) {
            (None, Some((ch, len, info))) => {
                let kind = match info.split_whitespace().next().unwrap_or("") {
                    "cedar" => BlockKind::Cedar,
                    "cedarschema" => BlockKind::Schema,
                    "manifest" => BlockKind::Manifest,
                    _ => BlockKind::Other,
                };
                let kind = match kind {
                    BlockKind::Schema if seen_schema => {
                        out.extra_blocks.push((line_no, "cedarschema"));
                        BlockKind::Other
                    }
                    BlockKind::Manifest if seen_manifest => {
                        out.extra_blocks.push((line_no, "manifest"));
                        BlockKind::Other
                    }
                    k => k,
                };
                match kind {
                    BlockKind::Cedar => out.policy_blocks += 1,
                    BlockKind::Schema => seen_schema = true,
                    BlockKind::Manifest => {
                        seen_manifest = true;
                        out.manifest = Some((String::new(), line_no));
                    }
                    BlockKind::Other => {}
                }
                open = Some((ch, len, kind, line_no));
            }
            (Some((ch, len, _, _)), Some((fch, flen, info)))
                if fch == ch && flen >= len && info.trim().is_empty() =>
            {
                open = None;
            }
            (Some((_, _, kind, _)), _) => kind_of_line = Some(kind),
            (None, None) => {}
        }
        let keep = |k: BlockKind| if kind_of_line == Some(k) { line } else { "" };
        if index > 0 {
            out.policies.push('\n');
            schema.push('\n');
        }
        out.policies.push_str(keep(BlockKind::Cedar));
        schema.push_str(keep(BlockKind::Schema));
        if kind_of_line == Some(BlockKind::Manifest) {
            manifest.push_str(line);
            manifest.push('\n');
        }
    }
    if let Some((_, _, _, line)) = open {
        out.unclosed = Some(line);
    }
    if seen_schema {
        out.schema = Some(schema);
    }
    if let Some((text, _)) = out.manifest.as_mut() {
        *text = manifest;
    }
    out
}

/// `(fence char, fence length, info string)` when `line` opens or closes a code fence.
fn fence_of(line: &str) -> Option<(char, usize, &str)> {
    let ch = line.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = line.chars().take_while(|c| *c == ch).count();
    if len < 3 {
        return None;
    }
    let info = line.get(len..).unwrap_or("");
    if ch == '`' && info.contains('`') {
        return None;
    }
    Some((ch, len, info.trim()))
}

fn read_markdown_file(path: &Path) -> Result<RawPackage, PolicyLoadError> {
    let (text, bytes) = read_text(path)?;
    let blocks = split_markdown(&text);
    let at = |line: usize, message: String| SourceError {
        path: path.to_owned(),
        line: Some(line),
        column: Some(1),
        message,
    };
    let mut errors: Vec<SourceError> = blocks
        .extra_blocks
        .iter()
        .map(|(line, kind)| {
            at(
                *line,
                format!("a second `{kind}` block; a package has at most one"),
            )
        })
        .collect();
    if let Some(line) = blocks.unclosed {
        errors.push(at(line, "code block is never closed".to_owned()));
    }
    if blocks.policy_blocks == 0 {
        errors.push(SourceError {
            path: path.to_owned(),
            line: None,
            column: None,
            message: "holds no ```cedar blocks".to_owned(),
        });
    }
    if !errors.is_empty() {
        return Err(PolicyLoadError::Invalid(errors));
    }
    let manifest = match &blocks.manifest {
        Some((text, line)) => parse_manifest(path, text, *line)?,
        None => Manifest::default(),
    };
    let name = stem(path);
    let name = if name == "policy_package" {
        // `policies/ops-warden/policy_package.md` is the package `ops-warden`.
        path.parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(name)
    } else {
        name
    };
    Ok(RawPackage {
        name,
        manifest,
        policy_sources: vec![Source {
            path: path.to_owned(),
            text: blocks.policies,
        }],
        schema_source: blocks.schema.map(|text| {
            (
                Source {
                    path: path.to_owned(),
                    text,
                },
                SchemaSyntax::Cedar,
            )
        }),
        hash_inputs: vec![(file_label(path), bytes)],
        files: vec![path.to_owned()],
    })
}

/// Where each policy came from, for error messages.
struct Origin<'a> {
    id: PolicyId,
    source: &'a Source,
}

fn build_package(raw: RawPackage) -> Result<PolicyPackage, PolicyLoadError> {
    let mut errors = Vec::new();
    let mut policies = PolicySet::new();
    let mut origins: Vec<Origin<'_>> = Vec::new();
    let mut seen_ids: HashSet<String> = HashSet::new();

    for source in &raw.policy_sources {
        let parsed = match PolicySet::from_str(&source.text) {
            Ok(set) => set,
            Err(e) => {
                errors.extend(diagnostic_errors(source, &e));
                continue;
            }
        };
        if parsed.num_of_templates() > 0 {
            errors.push(SourceError {
                path: source.path.clone(),
                line: None,
                column: None,
                message: "policy templates (`?principal`, `?resource`) are not supported; write static policies".to_owned(),
            });
            continue;
        }
        // Cedar numbers policies `policy0`, `policy1`, … in text order; keep that order.
        let mut in_file: Vec<_> = parsed.policies().collect();
        in_file.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        for (n, policy) in in_file.into_iter().enumerate() {
            let id = match policy.annotation(ID_ANNOTATION) {
                Some(id) if id.trim().is_empty() => {
                    errors.push(locate(source, "@id(\"", "`@id` must not be empty"));
                    continue;
                }
                Some(id) => id.to_owned(),
                None => format!("{}#{}", file_label(&source.path), n + 1),
            };
            if !seen_ids.insert(id.clone()) {
                errors.push(locate(
                    source,
                    &format!("@id(\"{id}\")"),
                    &format!("duplicate policy id `{id}`"),
                ));
                continue;
            }
            if policy.effect() == Effect::Permit && policy.annotation(REASON_ANNOTATION).is_some() {
                errors.push(locate(
                    source,
                    &format!("@id(\"{id}\")"),
                    &format!(
                        "policy `{id}`: `@reason` belongs on `forbid` policies; a permit never reports a deny reason"
                    ),
                ));
                continue;
            }
            let policy_id = PolicyId::new(&id);
            if let Err(e) = policies.add(policy.new_id(policy_id.clone())) {
                errors.push(SourceError {
                    path: source.path.clone(),
                    line: None,
                    column: None,
                    message: e.to_string(),
                });
                continue;
            }
            origins.push(Origin {
                id: policy_id,
                source,
            });
        }
    }

    let mut warnings = Vec::new();
    let schema = match &raw.schema_source {
        Some((source, syntax)) => match parse_schema(source, *syntax) {
            Ok((schema, schema_warnings)) => {
                warnings.extend(schema_warnings);
                Some(schema)
            }
            Err(e) => {
                errors.extend(e);
                None
            }
        },
        None => None,
    };

    if errors.is_empty() {
        if let Some(schema) = &schema {
            let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
            for e in result.validation_errors() {
                let source = origins.iter().find(|o| &o.id == e.policy_id());
                match source {
                    Some(o) => errors.extend(diagnostic_errors(o.source, e)),
                    None => errors.push(SourceError {
                        path: raw.files.first().cloned().unwrap_or_default(),
                        line: None,
                        column: None,
                        message: e.to_string(),
                    }),
                }
            }
            for w in result.validation_warnings() {
                if let Some(o) = origins.iter().find(|o| &o.id == w.policy_id()) {
                    warnings.extend(diagnostic_errors(o.source, w).iter().map(|e| e.to_string()));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(PolicyLoadError::Invalid(errors));
    }

    let hash = raw.hash();
    let name = raw.manifest.name.clone().unwrap_or(raw.name);
    Ok(PolicyPackage {
        name,
        version: raw.manifest.version,
        policies,
        schema,
        hash,
        sources: raw.files,
        warnings,
    })
}

fn parse_schema(
    source: &Source,
    syntax: SchemaSyntax,
) -> Result<(Schema, Vec<String>), Vec<SourceError>> {
    match syntax {
        SchemaSyntax::Cedar => match Schema::from_cedarschema_str(&source.text) {
            Ok((schema, warnings)) => {
                let warnings = warnings
                    .map(|w| format!("{}: {w}", source.path.display()))
                    .collect();
                Ok((schema, warnings))
            }
            Err(e) => Err(diagnostic_errors(source, &e)),
        },
        SchemaSyntax::Json => Schema::from_json_str(&source.text)
            .map(|schema| (schema, Vec::new()))
            .map_err(|e| diagnostic_errors(source, &e)),
    }
}

/// An error located at the first occurrence of `needle` in the source, or unlocated.
fn locate(source: &Source, needle: &str, message: &str) -> SourceError {
    let (line, column) = match source.text.find(needle) {
        Some(offset) => {
            let (l, c) = line_col(&source.text, offset);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    SourceError {
        path: source.path.clone(),
        line,
        column,
        message: message.to_owned(),
    }
}

/// Flatten a Cedar diagnostic (and the related ones it carries) into located errors.
fn diagnostic_errors(source: &Source, diag: &dyn Diagnostic) -> Vec<SourceError> {
    let mut out = Vec::new();
    push_diagnostic(source, diag, &mut out);
    out
}

fn push_diagnostic(source: &Source, diag: &dyn Diagnostic, out: &mut Vec<SourceError>) {
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let (line, column) = match offset {
        Some(offset) if offset <= source.text.len() => {
            let (l, c) = line_col(&source.text, offset);
            (Some(l), Some(c))
        }
        _ => (None, None),
    };
    let mut message = diag.to_string();
    if let Some(help) = diag.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    out.push(SourceError {
        path: source.path.clone(),
        line,
        column,
        message,
    });
    if let Some(related) = diag.related() {
        for r in related {
            push_diagnostic(source, r, out);
        }
    }
}

/// 1-based line and character column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_blocks_keep_their_lines() {
        let md = "# Title\n\n```cedar\npermit(principal, action, resource);\n```\ntext\n```cedarschema\nentity User;\n```\n";
        let blocks = split_markdown(md);
        let lines: Vec<&str> = blocks.policies.split('\n').collect();
        assert_eq!(lines[3], "permit(principal, action, resource);");
        assert_eq!(lines.iter().filter(|l| !l.is_empty()).count(), 1);
        let schema = blocks.schema.unwrap();
        assert_eq!(schema.split('\n').nth(7), Some("entity User;"));
        assert_eq!(blocks.policy_blocks, 1);
    }

    #[test]
    fn other_fences_and_longer_fences_are_respected() {
        let md = "````text\n```cedar\nnot policy\n```\n````\n```cedar\nforbid(principal, action, resource);\n```";
        let blocks = split_markdown(md);
        assert_eq!(blocks.policy_blocks, 1);
        assert!(!blocks.policies.contains("not policy"));
        assert!(blocks.policies.contains("forbid"));
    }

    #[test]
    fn unclosed_block_is_reported() {
        let blocks = split_markdown("```cedar\npermit(principal, action, resource);\n");
        assert_eq!(blocks.unclosed, Some(1));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
