//! Cedar diagnostics as errors that name file, line and column.

use miette::Diagnostic;

use super::{Source, SourceError};

/// An error located at the first occurrence of `needle` in the source, or unlocated.
pub(super) fn locate(source: &Source, needle: &str, message: &str) -> SourceError {
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
pub(super) fn diagnostic_errors(source: &Source, diag: &dyn Diagnostic) -> Vec<SourceError> {
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
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé f", 8), (2, 5));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
