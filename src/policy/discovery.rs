//! Finding a package's files on disk: a directory, a single `.cedar` file, and the manifest.

use std::path::{Path, PathBuf};

use super::markdown::read_markdown_file;
use super::{Manifest, PolicyLoadError, RawPackage, SchemaSyntax, Source, SourceError};
use super::{MANIFEST_FILE, MARKDOWN_PACKAGE_FILE};

pub(super) fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, PolicyLoadError> {
    std::fs::read(path).map_err(|source| PolicyLoadError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn read_text(path: &Path) -> Result<(String, Vec<u8>), PolicyLoadError> {
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

pub(super) fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

pub(super) fn read_cedar_file(path: &Path) -> Result<RawPackage, PolicyLoadError> {
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

pub(super) fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "policy".to_owned())
}

pub(super) fn read_directory(dir: &Path) -> Result<RawPackage, PolicyLoadError> {
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

pub(super) fn parse_manifest(
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
