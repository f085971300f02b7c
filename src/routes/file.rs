//! The routes file's YAML shape and its compilation into [`Route`]s, refusing anything that
//! could not work with the place at fault.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::path::{parse_pattern, Segment};
use super::{Check, Conversion, Route, Source, ValueSpec, DEFAULT_BODY_LIMIT};

/// One value source, as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    path: Option<String>,
    query: Option<String>,
    header: Option<String>,
    claim: Option<String>,
    body: Option<String>,
    value: Option<Value>,
    #[serde(rename = "as")]
    convert: Option<Conversion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    #[serde(rename = "type")]
    entity_type: String,
    id: RawSource,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawMethods {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    name: Option<String>,
    method: RawMethods,
    path: String,
    #[serde(default)]
    public: bool,
    action: Option<String>,
    resource: Option<RawResource>,
    #[serde(default)]
    context: BTreeMap<String, RawSource>,
    body_limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    /// Cedar type of the subject (default `Subject`).
    pub(super) subject_type: Option<String>,
    pub(super) routes: Vec<RawRoute>,
}

pub(super) fn compile_route(raw: RawRoute) -> Result<Route, String> {
    let methods = match raw.method {
        RawMethods::One(m) if m == "*" => None,
        RawMethods::One(m) => Some(vec![parse_method(&m)?]),
        RawMethods::Many(list) if list.is_empty() => return Err("method: list is empty".to_owned()),
        RawMethods::Many(list) => Some(
            list.iter()
                .map(|m| parse_method(m))
                .collect::<Result<_, _>>()?,
        ),
    };
    let segments = parse_pattern(&raw.path).map_err(|e| format!("path: {e}"))?;
    let name = raw.name.clone().unwrap_or_else(|| {
        let method = methods
            .as_ref()
            .and_then(|m: &Vec<http::Method>| m.first().map(ToString::to_string))
            .unwrap_or_else(|| "*".to_owned());
        format!("{method} {}", raw.path)
    });
    if raw.public {
        if raw.action.is_some() || raw.resource.is_some() || !raw.context.is_empty() {
            return Err(
                "a public route is forwarded without a decision: it takes no action, resource or context"
                    .to_owned(),
            );
        }
        return Ok(Route {
            name,
            methods,
            segments,
            check: None,
            body_limit: None,
        });
    }
    let action = raw
        .action
        .filter(|a| !a.is_empty())
        .ok_or("action: required for a route that is not public")?;
    let resource = raw
        .resource
        .ok_or("resource: required for a route that is not public")?;
    if resource.entity_type.is_empty() {
        return Err("resource.type: must not be empty".to_owned());
    }
    let params: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) | Segment::Rest(n) => Some(n.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    let resource_id =
        compile_source(resource.id, &params).map_err(|e| format!("resource.id: {e}"))?;
    let mut context = Vec::new();
    for (name, raw_source) in raw.context {
        let spec =
            compile_source(raw_source, &params).map_err(|e| format!("context.{name}: {e}"))?;
        context.push((name, spec));
    }
    let reads_body = std::iter::once(&resource_id)
        .chain(context.iter().map(|(_, s)| s))
        .any(|s| matches!(s.source, Source::Body(_)));
    if raw.body_limit.is_some() && !reads_body {
        return Err("body_limit: set, but no value comes from the body".to_owned());
    }
    Ok(Route {
        name,
        methods,
        segments,
        check: Some(Check {
            action,
            resource_type: resource.entity_type,
            resource_id,
            context,
        }),
        body_limit: reads_body.then(|| raw.body_limit.unwrap_or(DEFAULT_BODY_LIMIT)),
    })
}

fn parse_method(text: &str) -> Result<http::Method, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "method: `{text}` is not an HTTP method in capitals (or `*`)"
        ));
    }
    http::Method::from_bytes(text.as_bytes()).map_err(|e| format!("method: `{text}`: {e}"))
}

fn compile_source(raw: RawSource, params: &[&str]) -> Result<ValueSpec, String> {
    let mut given = Vec::new();
    if let Some(n) = raw.path {
        if !params.contains(&n.as_str()) {
            return Err(format!(
                "names path parameter `{n}`, which the route's path does not have"
            ));
        }
        given.push(Source::Path(n));
    }
    if let Some(n) = raw.query {
        given.push(Source::Query(n));
    }
    if let Some(n) = raw.header {
        let name = http::HeaderName::from_bytes(n.as_bytes())
            .map_err(|_| format!("`{n}` is not a header name"))?;
        given.push(Source::Header(name.as_str().to_owned()));
    }
    if let Some(n) = raw.claim {
        given.push(Source::Claim(n));
    }
    if let Some(p) = raw.body {
        if !p.is_empty() && !p.starts_with('/') {
            return Err(format!(
                "body: `{p}` is not a JSON pointer (it starts with `/`)"
            ));
        }
        given.push(Source::Body(p));
    }
    if let Some(v) = raw.value {
        given.push(Source::Value(v));
    }
    match (given.pop(), given.is_empty()) {
        (Some(source), true) => Ok(ValueSpec {
            source,
            convert: raw.convert,
        }),
        (None, _) => Err("give one of path, query, header, claim, body or value".to_owned()),
        (Some(_), false) => {
            Err("give only one of path, query, header, claim, body or value".to_owned())
        }
    }
}
