//! The routes file: which requests the proxy and the forward-auth endpoints know, and how each
//! becomes a check (action, resource, context). A request that matches no route is denied.
//!
//! ```yaml
//! routes:
//!   - name: mint
//!     method: POST
//!     path: /v1/mint-aws-creds
//!     action: mint
//!     resource: { type: Actor, id: { body: /actor } }
//!     context:
//!       ttl_hours: { body: /ttl_hours }
//!   - name: health
//!     method: GET
//!     path: /healthz
//!     public: true
//! ```
//!
//! Values come from a path parameter (`{path: name}` for a `{name}` segment), the query
//! (`{query: name}`), a header (`{header: name}`), a token claim (`{claim: name}`), the JSON body
//! (`{body: /json/pointer}`) or a constant (`{value: …}`); `as: long|bool|string` converts text.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest body read for a route that takes values from it, unless the route says otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Why a routes file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("routes file `{path}`: {message}")]
pub struct RoutesError {
    path: String,
    message: String,
}

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

/// A text-to-value conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Conversion {
    /// A 64-bit integer.
    Long,
    /// `true` / `false`.
    Bool,
    /// Keep (or make) a string.
    String,
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A `{name}` path segment.
    Path(String),
    /// A query parameter.
    Query(String),
    /// A request header (lowercase name).
    Header(String),
    /// A claim of the verified token.
    Claim(String),
    /// A JSON pointer into the request body.
    Body(String),
    /// A constant.
    Value(Value),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Self::Path(n) => format!("path parameter `{n}`"),
            Self::Query(n) => format!("query parameter `{n}`"),
            Self::Header(n) => format!("header `{n}`"),
            Self::Claim(n) => format!("claim `{n}`"),
            Self::Body(p) => format!("body field `{p}`"),
            Self::Value(_) => "constant".to_owned(),
        }
    }
}

/// A value source with its conversion.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueSpec {
    /// Where from.
    pub source: Source,
    /// Conversion of the text, if any.
    pub convert: Option<Conversion>,
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
struct RawRoute {
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
struct RawFile {
    /// Cedar type of the subject (default `Subject`).
    subject_type: Option<String>,
    routes: Vec<RawRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// What a matched, non-public route evaluates.
#[derive(Debug, Clone)]
pub struct Check {
    /// The action name.
    pub action: String,
    /// Resource type.
    pub resource_type: String,
    /// Resource id source.
    pub resource_id: ValueSpec,
    /// Context fields.
    pub context: Vec<(String, ValueSpec)>,
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name (for records and metrics): given, or `METHOD path`.
    pub name: String,
    methods: Option<Vec<http::Method>>,
    segments: Vec<Segment>,
    /// `None` for a public route: forwarded without authentication or decision.
    pub check: Option<Check>,
    /// Largest body read when a value comes from the body; `None` when none does.
    pub body_limit: Option<usize>,
}

/// A matched route and its path parameters (name, percent-decoded value).
pub type Match<'r> = (&'r Route, Vec<(String, String)>);

/// The routes of one file, matched in file order.
#[derive(Debug, Clone)]
pub struct Routes {
    /// The subject's Cedar type.
    pub subject_type: Option<String>,
    routes: Vec<Route>,
}

/// A request's values, as the route needs them.
pub struct Inputs<'a> {
    /// The raw query string.
    pub query: Option<&'a str>,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// Verified claims.
    pub claims: &'a Map<String, Value>,
    /// The parsed JSON body, when the route reads it.
    pub body: Option<&'a Value>,
}

/// A value a route needs that the request does not have in usable form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` from {source_desc}: {problem}")]
pub struct InputError {
    /// `resource.id` or `context.NAME`.
    pub field: String,
    /// Where it was looked for.
    pub source_desc: String,
    /// What is wrong.
    pub problem: String,
}

impl Routes {
    /// Read and check a routes file.
    pub fn load(path: &Path) -> Result<Self, RoutesError> {
        let err = |message: String| RoutesError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(err)
    }

    /// Parse and check routes-file text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            if at == "." {
                inner.to_string()
            } else {
                format!("{at}: {inner}")
            }
        })?;
        if raw.routes.is_empty() {
            return Err("`routes` is empty: every request would be denied".to_owned());
        }
        let routes = raw
            .routes
            .into_iter()
            .enumerate()
            .map(|(index, route)| compile_route(route).map_err(|e| format!("routes[{index}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            subject_type: raw.subject_type,
            routes,
        })
    }

    /// The first route matching method and path, with its path parameters (percent-decoded).
    /// `Err` when the path is ambiguous (dot segments, empty segments, encoded slashes).
    pub fn find(&self, method: &http::Method, path: &str) -> Result<Option<Match<'_>>, String> {
        let segments = split_path(path)?;
        for route in &self.routes {
            if route
                .methods
                .as_ref()
                .is_some_and(|methods| !methods.contains(method))
            {
                continue;
            }
            if let Some(params) = match_segments(&route.segments, &segments) {
                return Ok(Some((route, params)));
            }
        }
        Ok(None)
    }

    /// How many routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are none (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether any route reads the body.
    pub fn any_reads_body(&self) -> bool {
        self.routes.iter().any(|r| r.body_limit.is_some())
    }
}

impl Check {
    /// The resource id and context for one request.
    pub fn extract(
        &self,
        params: &[(String, String)],
        inputs: &Inputs<'_>,
    ) -> Result<(String, Map<String, Value>), InputError> {
        let id = match resolve(&self.resource_id, params, inputs, "resource.id")? {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => {
                return Err(input_error(
                    "resource.id",
                    &self.resource_id,
                    "must be a non-empty string",
                ))
            }
            None => return Err(input_error("resource.id", &self.resource_id, "is absent")),
        };
        let mut context = Map::new();
        for (name, spec) in &self.context {
            // An absent context value is left out; the policy (and its schema) decide whether
            // that is acceptable.
            if let Some(value) = resolve(spec, params, inputs, &format!("context.{name}"))? {
                context.insert(name.clone(), value);
            }
        }
        Ok((id, context))
    }
}

fn input_error(field: &str, spec: &ValueSpec, problem: &str) -> InputError {
    InputError {
        field: field.to_owned(),
        source_desc: spec.source.describe(),
        problem: problem.to_owned(),
    }
}

fn resolve(
    spec: &ValueSpec,
    params: &[(String, String)],
    inputs: &Inputs<'_>,
    field: &str,
) -> Result<Option<Value>, InputError> {
    let raw: Option<Value> = match &spec.source {
        Source::Path(name) => params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| Value::String(v.clone())),
        Source::Query(name) => inputs.query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| Value::String(v.into_owned()))
        }),
        Source::Header(name) => match inputs.headers.get(name.as_str()) {
            Some(v) => Some(Value::String(
                v.to_str()
                    .map_err(|_| input_error(field, spec, "is not ASCII text"))?
                    .to_owned(),
            )),
            None => None,
        },
        Source::Claim(name) => inputs.claims.get(name).cloned(),
        Source::Body(pointer) => inputs.body.and_then(|b| b.pointer(pointer)).cloned(),
        Source::Value(v) => Some(v.clone()),
    };
    let Some(raw) = raw else { return Ok(None) };
    let converted = match (spec.convert, raw) {
        (None, v) => v,
        (Some(Conversion::String), Value::String(s)) => Value::String(s),
        (Some(Conversion::String), v @ (Value::Number(_) | Value::Bool(_))) => {
            Value::String(v.to_string())
        }
        (Some(Conversion::Long), Value::String(s)) => Value::from(
            s.trim()
                .parse::<i64>()
                .map_err(|_| input_error(field, spec, "is not an integer"))?,
        ),
        (Some(Conversion::Long), Value::Number(n)) if n.is_i64() => Value::Number(n),
        (Some(Conversion::Bool), Value::String(s)) => match s.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(input_error(field, spec, "is not `true` or `false`")),
        },
        (Some(Conversion::Bool), Value::Bool(b)) => Value::Bool(b),
        (Some(c), _) => {
            return Err(input_error(
                field,
                spec,
                &format!("cannot be converted to {c:?}").to_lowercase(),
            ))
        }
    };
    Ok(Some(converted))
}

fn compile_route(raw: RawRoute) -> Result<Route, String> {
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

fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
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
fn split_path(path: &str) -> Result<Vec<String>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("the path does not start with `/`".to_owned());
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() && i + 1 != parts.len() {
            return Err("the path has an empty segment (`//`)".to_owned());
        }
        let decoded = percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map_err(|_| "the path is not UTF-8 once decoded".to_owned())?;
        if decoded == "." || decoded == ".." {
            return Err("the path has a dot segment".to_owned());
        }
        if decoded.contains(['/', '\\', '\0']) {
            return Err("the path has an encoded `/`, `\\` or NUL".to_owned());
        }
        segments.push(decoded.into_owned());
    }
    Ok(segments)
}

fn match_segments(pattern: &[Segment], path: &[String]) -> Option<Vec<(String, String)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
routes:
  - name: mint
    method: POST
    path: /v1/mint-aws-creds
    action: mint
    resource: { type: Actor, id: { body: /actor } }
    context:
      ttl_hours: { body: /ttl_hours }
      region: { query: region }
  - name: account
    method: [GET, HEAD]
    path: /v1/accounts/{account}/roles/{*role}
    action: read
    resource: { type: Account, id: { path: account } }
    context:
      role: { path: role }
      limit: { query: limit, as: long }
  - name: health
    method: GET
    path: /healthz
    public: true
"#;

    fn get(routes: &Routes, method: &str, path: &str) -> Option<(String, Vec<(String, String)>)> {
        routes
            .find(&method.parse().unwrap(), path)
            .unwrap()
            .map(|(r, p)| (r.name.clone(), p))
    }

    #[test]
    fn routes_match_method_and_path_in_file_order() {
        let routes = Routes::parse(FILE).unwrap();
        assert_eq!(
            get(&routes, "POST", "/v1/mint-aws-creds").unwrap().0,
            "mint"
        );
        assert!(get(&routes, "GET", "/v1/mint-aws-creds").is_none());
        assert!(get(&routes, "POST", "/v1/mint-aws-creds/x").is_none());
        let (name, params) = get(&routes, "HEAD", "/v1/accounts/a%20b/roles/x/y").unwrap();
        assert_eq!(name, "account");
        assert_eq!(
            params,
            vec![
                ("account".to_owned(), "a b".to_owned()),
                ("role".to_owned(), "x/y".to_owned())
            ]
        );
        assert!(routes.any_reads_body());
        assert!(routes
            .find(&http::Method::GET, "/healthz")
            .unwrap()
            .unwrap()
            .0
            .check
            .is_none());
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let routes = Routes::parse(FILE).unwrap();
        for path in [
            "/v1/../healthz",
            "/v1/%2e%2e/healthz",
            "/v1//mint-aws-creds",
            "/v1/accounts/a%2Fb/roles/x",
            "/v1/accounts/a%00/roles/x",
            "no-slash",
        ] {
            assert!(routes.find(&http::Method::GET, path).is_err(), "{path}");
        }
    }

    #[test]
    fn values_are_extracted_and_converted() {
        let routes = Routes::parse(FILE).unwrap();
        let (route, params) = routes
            .find(&http::Method::GET, "/v1/accounts/acc-1/roles/admin")
            .unwrap()
            .unwrap();
        let check = route.check.as_ref().unwrap();
        let headers = http::HeaderMap::new();
        let claims = Map::new();
        let inputs = Inputs {
            query: Some("limit=5&x=1"),
            headers: &headers,
            claims: &claims,
            body: None,
        };
        let (id, context) = check.extract(&params, &inputs).unwrap();
        assert_eq!(id, "acc-1");
        assert_eq!(context["limit"], Value::from(5));
        assert_eq!(context["role"], Value::from("admin"));
        let bad = Inputs {
            query: Some("limit=five"),
            ..inputs
        };
        let e = check.extract(&params, &bad).unwrap_err();
        assert_eq!(e.field, "context.limit");
        assert!(e.to_string().contains("query parameter `limit`"), "{e}");
    }

    #[test]
    fn a_missing_resource_id_is_an_input_error() {
        let routes = Routes::parse(FILE).unwrap();
        let (route, params) = routes
            .find(&http::Method::POST, "/v1/mint-aws-creds")
            .unwrap()
            .unwrap();
        let headers = http::HeaderMap::new();
        let claims = Map::new();
        let body = serde_json::json!({"ttl_hours": 1});
        let inputs = Inputs {
            query: None,
            headers: &headers,
            claims: &claims,
            body: Some(&body),
        };
        let e = route
            .check
            .as_ref()
            .unwrap()
            .extract(&params, &inputs)
            .unwrap_err();
        assert_eq!(e.field, "resource.id");
    }

    #[test]
    fn bad_files_are_refused_with_the_place_at_fault() {
        for (text, says) in [
            ("routes: []", "empty"),
            ("routes:\n  - {method: GET, path: x, public: true}", "routes[0]: path"),
            (
                "routes:\n  - {method: GET, path: /a, action: r, resource: {type: T, id: {path: id}}}",
                "path parameter `id`",
            ),
            (
                "routes:\n  - {method: GET, path: /a, action: r, resource: {type: T, id: {query: a, header: b}}}",
                "only one",
            ),
            ("routes:\n  - {method: get, path: /a, public: true}", "capitals"),
            ("routes:\n  - {method: GET, path: /a, public: true, action: x}", "public"),
            ("routes:\n  - {method: GET, path: /a, publik: true}", "publik"),
            ("routes:\n  - {method: GET, path: '/a/{*r}/b', public: true}", "last segment"),
            ("routes:\n  - {method: GET, path: /a, action: r, resource: {type: T, id: {body: x}}}", "JSON pointer"),
        ] {
            let e = Routes::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
