//! Markdown packages: the ```` ```cedar ````, ```` ```cedarschema ```` and ```` ```manifest ````
//! blocks of one file, each kept at its original lines so that errors point into the `.md`.

use std::path::Path;

use super::discovery::{file_label, parse_manifest, read_text, stem};
use super::{Manifest, PolicyLoadError, RawPackage, SchemaSyntax, Source, SourceError};

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

pub(super) fn read_markdown_file(path: &Path) -> Result<RawPackage, PolicyLoadError> {
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
}
