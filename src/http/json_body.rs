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

/// Parse a JSON body into `T` through `F`, a reader of the same shape that itself refuses every
/// duplicate key: one `serde_json` pass for a valid body, instead of the duplicate-key pass and
/// the path-tracking parse of [`parse_json`]. A body `F` refuses is parsed again by
/// [`parse_json`], so every error is the one `parse_json` gives (`tests` pin the equivalence).
pub fn parse_json_fast<T, F>(body: &[u8]) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned,
    F: serde::de::DeserializeOwned + Into<T>,
{
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        if let Ok(fast) = serde_json::from_slice::<F>(body) {
            return Ok(fast.into());
        }
    }
    parse_json(body)
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
    use crate::decision::{CheckRequest, StrictCheckRequest};
    use proptest::prelude::*;

    fn both(body: &[u8]) -> (String, String) {
        let full = parse_json::<CheckRequest>(body);
        let fast = parse_json_fast::<CheckRequest, StrictCheckRequest>(body);
        (format!("{full:?}"), format!("{fast:?}"))
    }

    /// JSON text, not values: keys may repeat (also spelled with escapes), values nest.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("4".to_owned()),
            Just("\"a\"".to_owned()),
            Just("\"sign\"".to_owned()),
            Just("true".to_owned()),
            Just("[]".to_owned()),
            Just("1e400".to_owned()),
        ];
        let value = leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                object(inner.clone()),
                prop::collection::vec(inner, 0..3)
                    .prop_map(|items| format!("[{}]", items.join(","))),
            ]
        });
        // Mostly objects: a context or a subject that is not one stops both readers early.
        prop_oneof![3 => object(value.clone()), 1 => value]
    }

    fn object(value: impl Strategy<Value = String> + Clone) -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("subject"),
            Just("action"),
            Just("id"),
            Just("type"),
            Just("\\u0069d"),
            Just("ttl"),
            Just("x"),
        ];
        prop::collection::vec((key, value), 0..5).prop_map(|members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", members.join(","))
        })
    }

    /// A subject: valid, valid with a key twice, or anything.
    fn subject() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(r#"{"id":"a"}"#.to_owned()),
            Just(r#"{"id":"a","type":"T"}"#.to_owned()),
            Just(r#"{"id":"a","\u0069d":"b"}"#.to_owned()),
            Just(r#"{"type":"T","id":"a","type":"T"}"#.to_owned()),
            json_text(),
        ]
    }

    /// The fast reader of `/v1/check` answers exactly what the full reader answers: the same
    /// request, or the same error, for any body — duplicate keys included. A share of the
    /// generated bodies must be valid, or the equivalence would be shown on errors alone.
    #[test]
    fn the_fast_reader_answers_what_the_full_reader_answers() {
        let bodies = (
            json_text(),
            subject(),
            prop::option::of(("subject|context|resource|action|x", json_text())),
        )
            .prop_map(|(context, subject, extra)| {
                let mut body = format!(
                    r#"{{"subject":{subject},"action":"sign","resource":{{"type":"A","id":"b"}},"context":{context}"#
                );
                if let Some((key, value)) = extra {
                    body.push_str(&format!(r#","{key}":{value}"#));
                }
                body.push('}');
                body
            });
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases: 2_000,
            ..proptest::test_runner::Config::default()
        });
        let accepted = std::cell::Cell::new(0u32);
        runner
            .run(&bodies, |body| {
                let (full, fast) = both(body.as_bytes());
                prop_assert_eq!(&full, &fast, "{}", body);
                accepted.set(accepted.get() + u32::from(full.starts_with("Ok(")));
                Ok(())
            })
            .unwrap();
        assert!(
            accepted.get() >= 100,
            "only {} valid bodies",
            accepted.get()
        );
    }

    #[test]
    fn the_fast_reader_refuses_every_duplicate_the_full_reader_refuses() {
        let valid = r#"{"subject":{"id":"a"},"action":"sign","resource":{"type":"A","id":"b"},"context":{"ttl":4,"p":["x"],"r":{"a":1}}}"#;
        let (full, fast) = both(valid.as_bytes());
        assert_eq!(full, fast);
        assert!(full.starts_with("Ok("), "{full}");
        for body in [
            r#"{"subject":{"id":"a"},"action":"sign","resource":{"type":"A","id":"b"},"action":"sign"}"#,
            r#"{"subject":{"id":"a","id":"b"},"action":"sign","resource":{"type":"A","id":"b"}}"#,
            r#"{"subject":{"id":"a"},"action":"sign","resource":{"type":"A","id":"b","\u0069d":"c"}}"#,
            r#"{"subject":{"id":"a"},"action":"sign","resource":{"type":"A","id":"b"},"context":{"t":1,"t":2}}"#,
            r#"{"subject":{"id":"a"},"action":"sign","resource":{"type":"A","id":"b"},"context":{"r":[{"a":1,"a":1}]}}"#,
            r#"[{"id":"a"},"sign",{"type":"A","id":"b"}]"#,
            r#"{"subject":{"id":"a"},"action":"sign","resource":{"type":"A","id":"b"}} {}"#,
        ] {
            let (full, fast) = both(body.as_bytes());
            assert!(full.starts_with("Err("), "{body}: {full}");
            assert_eq!(full, fast, "{body}");
        }
    }

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
