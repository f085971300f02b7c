//! Request paths against route patterns. A path an upstream could read differently from us is
//! refused, never matched.

/// Why a request path is refused before any route is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmbiguousPath {
    /// Not an origin-form path.
    #[error("the path does not start with `/`")]
    NoLeadingSlash,
    /// `//` inside the path.
    #[error("the path has an empty segment (`//`)")]
    EmptySegment,
    /// Percent-decoding gives bytes that are not UTF-8.
    #[error("the path is not UTF-8 once decoded")]
    NotUtf8,
    /// `.` or `..`, plain or encoded.
    #[error("the path has a dot segment")]
    DotSegment,
    /// An encoded `/`, `\` or NUL.
    #[error("the path has an encoded `/`, `\\` or NUL")]
    EncodedSeparator,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

pub(super) fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(format!("`{pattern}` does not start with `/`"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    let mut names = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let segment = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
        {
            let (rest, name) = match inner.strip_prefix('*') {
                Some(name) => (true, name),
                None => (false, inner),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`{{{inner}}}` is not a parameter name"));
            }
            if names.contains(&name) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            names.push(name);
            if rest {
                if i + 1 != parts.len() {
                    return Err(format!("`{{*{name}}}` must be the last segment"));
                }
                Segment::Rest(name.to_owned())
            } else {
                Segment::Param(name.to_owned())
            }
        } else {
            if part.contains(['{', '}']) {
                return Err(format!(
                    "segment `{part}`: a parameter takes a whole segment, like `{{name}}`"
                ));
            }
            if part.is_empty() && i + 1 != parts.len() {
                return Err("empty segment (`//`)".to_owned());
            }
            if *part == "." || *part == ".." {
                return Err("dot segments are not allowed".to_owned());
            }
            Segment::Literal((*part).to_owned())
        };
        segments.push(segment);
    }
    Ok(segments)
}

/// A request path as decoded segments. Paths an upstream could read differently from us are
/// refused: dot segments, empty segments, and encoded `/`, `\`, `.`-only segments or NUL.
pub(super) fn split_path(path: &str) -> Result<Vec<String>, AmbiguousPath> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(AmbiguousPath::NoLeadingSlash);
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() && i + 1 != parts.len() {
            return Err(AmbiguousPath::EmptySegment);
        }
        let decoded = percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map_err(|_| AmbiguousPath::NotUtf8)?;
        if decoded == "." || decoded == ".." {
            return Err(AmbiguousPath::DotSegment);
        }
        if decoded.contains(['/', '\\', '\0']) {
            return Err(AmbiguousPath::EncodedSeparator);
        }
        segments.push(decoded.into_owned());
    }
    Ok(segments)
}

pub(super) fn match_segments(
    pattern: &[Segment],
    path: &[String],
) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut path_iter = path.iter();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Rest(name) => {
                let rest: Vec<&str> = path.iter().skip(i).map(String::as_str).collect();
                if rest.is_empty() || rest.iter().all(|s| s.is_empty()) {
                    return None;
                }
                params.push((name.clone(), rest.join("/")));
                return Some(params);
            }
            Segment::Literal(literal) => {
                if path_iter.next()? != literal {
                    return None;
                }
            }
            Segment::Param(name) => {
                let value = path_iter.next()?;
                if value.is_empty() {
                    return None;
                }
                params.push((name.clone(), value.clone()));
            }
        }
    }
    path_iter.next().is_none().then_some(params)
}
