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
//! A query parameter or header a route reads that the request gives more than once is refused
//! (400), never resolved to one of its values: the upstream might read the other. Query names
//! compare regardless of case for this (Unicode case mappings included), and a name only in
//! another case is refused too.
//!
//! `file` reads the YAML into routes, `path` matches request paths against them, `extract` reads
//! a matched route's values from a request.

mod extract;
mod file;
mod path;

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use file::{compile_route, RawFile};
pub use path::AmbiguousPath;
use path::{match_segments, split_path, Segment};

/// Largest body read for a route that takes values from it, unless the route says otherwise.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Why a routes file cannot be used: the place at fault (`routes[2].context.ttl: …`) and, when
/// it was read from disk, the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesError {
    /// The file, when the routes came from one.
    pub path: Option<String>,
    /// What is wrong, starting with where in the file.
    pub message: String,
}

impl std::fmt::Display for RoutesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "routes file `{path}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RoutesError {}

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
    pub(crate) fn describe(&self) -> String {
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
        let file = Some(path.display().to_string());
        let text = std::fs::read_to_string(path).map_err(|e| RoutesError {
            path: file.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|e| RoutesError { path: file, ..e })
    }

    /// Parse and check routes-file text.
    pub fn parse(text: &str) -> Result<Self, RoutesError> {
        Self::parse_text(text).map_err(|message| RoutesError {
            path: None,
            message,
        })
    }

    fn parse_text(text: &str) -> Result<Self, String> {
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
    pub fn find(
        &self,
        method: &http::Method,
        path: &str,
    ) -> Result<Option<Match<'_>>, AmbiguousPath> {
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

#[cfg(test)]
pub(crate) mod fixture {
    pub(crate) const FILE: &str = r#"
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
}

#[cfg(test)]
mod tests {
    use super::fixture::FILE;
    use super::*;

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
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }
}
