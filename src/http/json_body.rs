//! JSON request bodies: duplicate keys refused, and serde's errors turned into
//! [`ApiError`]s that name the field at fault. This is the one place that reads serde's English
//! (`missing field`, `unknown field`, `invalid type`); the tests pin the phrases it relies on.

use super::ApiError;

/// Parse a JSON body into `T`, naming the field at fault.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    reject_duplicate_keys(body)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, (String, serde_json::Error)> = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (e.path().to_string(), e.into_inner()))
        .and_then(|value| de.end().map(|()| value).map_err(|e| (String::new(), e)));
    match parsed {
        Ok(value) => {
            // serde accepts a JSON array for a struct (fields by position); the API does not.
            if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(ApiError::InvalidField {
                    field: "request".to_owned(),
                    message: "expected a JSON object".to_owned(),
                });
            }
            Ok(value)
        }
        Err((path, error)) => {
            // A type error can surface before a syntax error later in the body; malformed JSON
            // is reported as such whatever else is wrong with it.
            if let Err(syntax) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                return Err(ApiError::InvalidJson(syntax.to_string()));
            }
            if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(ApiError::InvalidField {
                    field: "request".to_owned(),
                    message: "expected a JSON object".to_owned(),
                });
            }
            Err(classify_json_error(path, error))
        }
    }
}

/// Refuse a body that is not JSON or whose objects name a key twice, at any depth.
pub fn reject_duplicate_keys(body: &[u8]) -> Result<(), ApiError> {
    crate::json::check_unique_keys(body).map_err(ApiError::from)
}

impl From<crate::json::JsonError> for ApiError {
    fn from(error: crate::json::JsonError) -> Self {
        match error {
            crate::json::JsonError::Syntax(e) => Self::InvalidJson(e.to_string()),
            crate::json::JsonError::DuplicateKey { path } => Self::DuplicateKey(path),
        }
    }
}

/// serde's error at `path` as the field error a caller can act on; the one place serde's English
/// (`missing field`, `unknown field`) is read.
pub fn classify_json_error(path: String, error: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidJson(error.to_string()),
        Category::Data => {
            let message = error.to_string();
            let quoted = message
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_default();
            let join = |name: &str| {
                if path == "." || path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            };
            if message.starts_with("missing field") {
                ApiError::MissingField(join(&quoted))
            } else if message.starts_with("unknown field") {
                // The path already ends at the unknown field.
                let field = if path.rsplit('.').next() == Some(quoted.as_str()) {
                    path
                } else {
                    join(&quoted)
                };
                ApiError::UnknownField(field)
            } else {
                let message = match message.rfind(" at line ") {
                    Some(i) => message.get(..i).unwrap_or(&message).to_owned(),
                    None => message,
                };
                let message = plain_type_names(&message);
                let field = if path == "." {
                    "request".to_owned()
                } else {
                    path
                };
                ApiError::InvalidField { field, message }
            }
        }
    }
}

/// serde names Rust types (`expected struct SubjectRef`); callers know JSON, not Rust.
fn plain_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("struct ") {
        out.push_str(rest.get(..i).unwrap_or(""));
        out.push_str("an object");
        let after = rest.get(i + "struct ".len()..).unwrap_or("");
        let end = after
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(after.len());
        rest = after.get(end..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::CheckRequest;

    #[test]
    fn json_errors_name_the_field() {
        let missing =
            parse_json::<CheckRequest>(br#"{"subject":{"id":"a"},"action":"sign"}"#).unwrap_err();
        assert!(
            matches!(missing, ApiError::MissingField(ref f) if f == "resource"),
            "{missing:?}"
        );
        let nested = parse_json::<CheckRequest>(
            br#"{"subject":{},"action":"sign","resource":{"type":"A","id":"b"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(nested, ApiError::MissingField(ref f) if f == "subject.id"),
            "{nested:?}"
        );
        let wrong = parse_json::<CheckRequest>(
            br#"{"subject":{"id":5},"action":"sign","resource":{"type":"A","id":"b"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(wrong, ApiError::InvalidField { ref field, .. } if field == "subject.id"),
            "{wrong:?}"
        );
        let syntax = parse_json::<CheckRequest>(br#"{"subject":"#).unwrap_err();
        assert!(matches!(syntax, ApiError::InvalidJson(_)));
        let trailing = parse_json::<CheckRequest>(
            br#"{"subject":{"id":"a"},"action":"s","resource":{"type":"A","id":"b"}} x"#,
        )
        .unwrap_err();
        assert!(matches!(trailing, ApiError::InvalidJson(_)));
    }
}
