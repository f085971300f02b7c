//! The fail-closed reverse proxy (`serve --upstream URL --routes FILE`) and the gate it shares
//! with the forward-auth endpoints: match a route, authenticate the bearer credential, decide,
//! record, and only then forward.
//!
//! Architecture invariant: no error path forwards a request. A request reaches the upstream only
//! from [`Proxy::forward`], which is called only with an [`Allowed`] (or for a public route), and
//! only after the decision's record was handed to (in required mode: made durable by) the
//! decision log.
//! Architecture invariant: headers named `x-flex-auth-*` reach the upstream only as flex-auth
//! set them; incoming ones are removed first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::Instrument as _;

use crate::gate::{
    admission, admit, request_span, Allowed, Gate, Matched, Surface, Target, DECISION_HEADER,
    SUBJECT_HEADER,
};
use crate::http::ApiError;
use crate::server::{Handler, PeerAddr};
use crate::telemetry::Endpoint;

/// The `docs/runbook.md` anchor for an upstream that does not accept connections.
pub const UPSTREAM_PROBLEM: &str = "upstream-unavailable";
/// Response body of the proxy: an upstream's streamed body or one of ours.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Whether the upstream accepts connections, as a background probe last saw it.
#[derive(Debug, Default)]
pub struct UpstreamHealth {
    /// `None` until the first probe; then `Ok` or why not.
    last: std::sync::Mutex<Option<Result<(), String>>>,
}

impl crate::readiness::Probe for UpstreamHealth {
    fn name(&self) -> &'static str {
        "upstream"
    }
    fn problem(&self) -> &'static str {
        UPSTREAM_PROBLEM
    }
    fn check(&self) -> Result<(), String> {
        self.readiness()
    }
}

impl UpstreamHealth {
    /// The `upstream` readiness check: `Ok`, or why not.
    pub fn readiness(&self) -> Result<(), String> {
        match self.last.lock().map(|g| g.clone()) {
            Ok(Some(result)) => result,
            Ok(None) => Err("not probed yet".to_owned()),
            Err(_) => Err("probe state unavailable".to_owned()),
        }
    }

    fn set(&self, result: Result<(), String>) {
        if let Ok(mut last) = self.last.lock() {
            let changed = last.as_ref() != Some(&result);
            if changed {
                match &result {
                    Ok(()) => tracing::info!("upstream accepts connections"),
                    Err(e) => tracing::warn!(error = %e, "upstream probe failed"),
                }
            }
            *last = Some(result);
        }
    }
}

/// The reverse proxy: one per listener, cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    gate: Gate,
    upstream: Arc<Upstream>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.upstream.base)
            .finish_non_exhaustive()
    }
}

type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    ProxyBody,
>;

struct Upstream {
    base: Uri,
    client: UpstreamClient,
    timeout: Duration,
    /// Untrusted forwarding headers the operator lets through.
    passed_headers: Vec<HeaderName>,
}

/// Why an upstream URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("upstream `{url}`: {problem}")]
pub struct UpstreamError {
    url: String,
    problem: String,
}

fn upstream_client(
    tls: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
) -> UpstreamClient {
    let connector = tls.https_or_http().enable_http1().build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Check an `--upstream` URL: `http://` or `https://`, a host, no query.
pub fn parse_upstream(url: &str) -> Result<Uri, UpstreamError> {
    let err = |problem: &str| UpstreamError {
        url: url.to_owned(),
        problem: problem.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| err("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(err("use an http:// or https:// URL")),
    }
    if uri.authority().is_none() {
        return Err(err("no host"));
    }
    if uri.query().is_some() {
        return Err(err("a query string cannot be part of the upstream"));
    }
    Ok(uri)
}

impl Proxy {
    /// Probe the upstream with a TCP connect every `every` (bounded by 1 s each) and report it in
    /// the returned health, for the `upstream` readiness check. The task ends with the proxy.
    pub fn spawn_probe(&self, every: Duration) -> Arc<UpstreamHealth> {
        let health = Arc::new(UpstreamHealth::default());
        let weak_upstream = Arc::downgrade(&self.upstream);
        let report = health.clone();
        tokio::spawn(async move {
            loop {
                let Some(upstream) = weak_upstream.upgrade() else {
                    return;
                };
                let host = upstream
                    .base
                    .host()
                    .unwrap_or("")
                    .trim_matches(['[', ']'])
                    .to_owned();
                let port = upstream.base.port_u16().unwrap_or(
                    if upstream.base.scheme_str() == Some("https") {
                        443
                    } else {
                        80
                    },
                );
                let label = upstream.base.to_string();
                drop(upstream);
                let result = match tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect((host.as_str(), port)),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("cannot connect to `{label}`: {e}")),
                    Err(_) => Err(format!("`{label}` did not accept a connection within 1s")),
                };
                report.set(result);
                tokio::time::sleep(every).await;
            }
        });
        health
    }

    /// A proxy to `upstream` (see [`parse_upstream`]) that answers 504 after `timeout`. An
    /// `https://` upstream is verified against the webpki roots; see [`Proxy::with_tls`].
    pub fn new(gate: Gate, upstream: Uri, timeout: Duration) -> Self {
        let tls = hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots();
        Self {
            gate,
            upstream: Arc::new(Upstream {
                base: upstream,
                client: upstream_client(tls),
                timeout,
                passed_headers: Vec::new(),
            }),
        }
    }

    /// Verify an `https://` upstream with `config` (e.g. from [`crate::tls::client_config`] with
    /// `--upstream-ca`) instead of the webpki roots.
    pub fn with_tls(self, config: rustls::ClientConfig) -> Self {
        let tls = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config);
        let upstream = Upstream {
            base: self.upstream.base.clone(),
            client: upstream_client(tls),
            timeout: self.upstream.timeout,
            passed_headers: self.upstream.passed_headers.clone(),
        };
        Self {
            gate: self.gate,
            upstream: Arc::new(upstream),
        }
    }

    /// Let these headers of [`UNTRUSTED_FORWARDING_HEADERS`] reach the upstream as the client
    /// sent them (for a trusted proxy in front of flex-auth that sets them).
    pub fn with_passed_headers(mut self, names: Vec<HeaderName>) -> Self {
        if let Some(upstream) = Arc::get_mut(&mut self.upstream) {
            upstream.passed_headers = names;
        } else {
            let upstream = Upstream {
                base: self.upstream.base.clone(),
                client: self.upstream.client.clone(),
                timeout: self.upstream.timeout,
                passed_headers: names,
            };
            self.upstream = Arc::new(upstream);
        }
        self
    }

    async fn serve(&self, request: Request<Incoming>) -> Result<Response<ProxyBody>, ApiError> {
        let (parts, body) = request.into_parts();
        let target = Target {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        };
        let matched = match self.gate.route(Surface::Proxy, &target).await? {
            Matched::Public(_) => {
                admit(&parts.extensions)?;
                let body = body.boxed_unsync();
                return self.forward(parts, body, None).await;
            }
            Matched::Checked(checked) => checked,
        };
        // The body is read before deciding only when the route takes values from it; otherwise
        // it streams to the upstream after the decision.
        let (buffered, streamed) = match matched.route.body_limit {
            Some(limit) => {
                let declared = crate::http::declared_length(&parts.headers);
                let admission = admission(&parts.extensions);
                let bytes = crate::server::read_body(body, declared, limit, admission.as_deref())
                    .await
                    .map_err(ApiError::from)?;
                (Some(bytes), None)
            }
            None => {
                admit(&parts.extensions)?;
                (None, Some(body))
            }
        };
        let allowed = self
            .gate
            .authorize(Surface::Proxy, &matched, &target, buffered.as_deref())
            .await?;
        let body = match (buffered, streamed) {
            (Some(bytes), _) => Full::new(bytes)
                .map_err(|never| match never {})
                .boxed_unsync(),
            (None, Some(incoming)) => incoming.boxed_unsync(),
            (None, None) => Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed_unsync(),
        };
        self.forward(parts, body, Some(&allowed)).await
    }

    /// Send an allowed (or public) request upstream and stream the answer back.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: ProxyBody,
        allowed: Option<&Allowed>,
    ) -> Result<Response<ProxyBody>, ApiError> {
        let upstream = &self.upstream;
        let uri = upstream_uri(&upstream.base, &parts.uri)?;
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
        *headers = forwarded_headers(
            std::mem::take(&mut parts.headers),
            &upstream.passed_headers,
            peer,
        );
        if let Some(allowed) = allowed {
            insert_header(headers, DECISION_HEADER, &allowed.decision_id.to_string());
            insert_header(headers, SUBJECT_HEADER, &allowed.subject);
        }
        let started = Instant::now();
        let sent = tokio::time::timeout(upstream.timeout, upstream.client.request(request)).await;
        let elapsed = started.elapsed();
        let response = match sent {
            Err(_) => {
                self.gate.metrics().observe_upstream(elapsed, "timeout");
                return Err(ApiError::UpstreamTimeout(upstream.timeout));
            }
            Ok(Err(e)) => {
                self.gate.metrics().observe_upstream(elapsed, "unreachable");
                tracing::warn!(error = %e, upstream = %upstream.base, "upstream request failed");
                return Err(ApiError::UpstreamUnavailable(upstream_problem(&e)));
            }
            Ok(Ok(response)) => response,
        };
        self.gate
            .metrics()
            .observe_upstream(elapsed, status_class(response.status()));
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(allowed) = allowed {
            insert_header(
                &mut parts.headers,
                DECISION_HEADER,
                &allowed.decision_id.to_string(),
            );
        }
        Ok(Response::from_parts(parts, body.boxed_unsync()))
    }
}

impl Handler for Proxy {
    type Body = ProxyBody;
    type BodyError = hyper::Error;

    async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let span = request_span("proxy", request.method(), request.uri().path());
        let response = async {
            let response = match self.serve(request).await {
                Ok(response) => response,
                Err(e) => e
                    .into_response()
                    .map(|b| b.map_err(|never| match never {}).boxed_unsync()),
            };
            tracing::debug!(status = response.status().as_u16(), "answered");
            response
        }
        .instrument(span)
        .await;
        self.gate
            .metrics()
            .record_response(Endpoint::Proxy, response.status());
        response
    }
}

fn upstream_uri(base: &Uri, incoming: &Uri) -> Result<Uri, ApiError> {
    let prefix = base.path().trim_end_matches('/');
    let path_and_query = incoming
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let mut builder = Uri::builder().path_and_query(format!("{prefix}{path_and_query}"));
    if let Some(scheme) = base.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = base.authority() {
        builder = builder.authority(authority.clone());
    }
    builder
        .build()
        .map_err(|e| ApiError::UpstreamUnavailable(format!("cannot build the upstream URL: {e}")))
}

/// RFC 9110 §7.6.1: these describe one connection, not the message.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The headers a `Connection` header names (hop-by-hop for this connection only).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Remove hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_named(headers) {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Remove every incoming header that claims to come from flex-auth.
pub fn strip_spoofed_headers(headers: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-flex-auth-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// Headers that frameworks route, rewrite or authorize on, or read as the client's address or
/// the original host: a client that sets them can have a request authorized as one thing and
/// served as another (`GET /healthz` with `X-Original-URL: /admin`). They never reach the
/// upstream as the client sent them, on any route, unless an operator passes them through
/// (`--proxy-pass-header`). flex-auth sets `X-Forwarded-For`, `X-Forwarded-Host` and
/// `X-Forwarded-Proto` itself from the connection.
pub const UNTRUSTED_FORWARDING_HEADERS: [&str; 20] = [
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-original-host",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-uri",
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
];

/// The headers sent upstream: hop-by-hop, spoofed and untrusted forwarding ones removed (but
/// those in `passed`), `Host` left to the client (it names the upstream) and its value sent as
/// `X-Forwarded-Host`, the client's address appended to `X-Forwarded-For`.
///
/// One pass that moves every kept value from the incoming map into a new one (the request's own
/// map is not needed once the decision is made): the same result as removing each unwanted name
/// from a copy, which the tests hold it to, without a copy or a hash lookup per name.
fn forwarded_headers(
    incoming: HeaderMap,
    passed: &[HeaderName],
    peer: Option<std::net::IpAddr>,
) -> HeaderMap {
    let connection_named = connection_named(&incoming);
    let mut headers = HeaderMap::with_capacity(incoming.len() + 3);
    let mut host = None;
    let mut current: Option<HeaderName> = None;
    // `into_iter` names a header once, then gives its further values with `None`.
    for (name, value) in incoming {
        if let Some(name) = name {
            current = Some(name);
        }
        let Some(name) = &current else { continue };
        let text = name.as_str();
        if HOP_BY_HOP.contains(&text)
            || connection_named.contains(name)
            || text.starts_with("x-flex-auth-")
        {
            continue;
        }
        if name == http::header::HOST {
            host.get_or_insert(value);
            continue;
        }
        if UNTRUSTED_FORWARDING_HEADERS.contains(&text) && !passed.contains(name) {
            continue;
        }
        headers.append(name.clone(), value);
    }
    add_forwarding(&mut headers, host, peer);
    headers
}

/// What flex-auth says of the hop itself: the client's `Host` as `X-Forwarded-Host`, the peer
/// appended to `X-Forwarded-For` (to a passed-through value, or alone), `X-Forwarded-Proto`.
fn add_forwarding(
    headers: &mut HeaderMap,
    host: Option<HeaderValue>,
    peer: Option<std::net::IpAddr>,
) {
    if let Some(host) = host {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    if let Some(peer) = peer {
        // Kept only when passed through: then flex-auth is one more hop of a trusted chain.
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(previous) if !previous.is_empty() => format!("{previous}, {peer}"),
            _ => peer.to_string(),
        };
        insert_header(headers, "x-forwarded-for", &value);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
}

fn insert_header(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn upstream_problem(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        "the upstream refused the connection or cannot be reached".to_owned()
    } else {
        "the upstream closed the connection without a complete answer".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_spoofed_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        headers.insert("x-secret-hop", "1".parse().unwrap());
        headers.insert("te", "trailers".parse().unwrap());
        headers.insert(
            "x-flex-auth-decision-id",
            "decision:forged".parse().unwrap(),
        );
        headers.insert("X-Flex-Auth-Subject", "admin".parse().unwrap());
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("host", "client.example".parse().unwrap());
        headers.insert("x-original-url", "/admin".parse().unwrap());
        headers.insert("x-http-method-override", "DELETE".parse().unwrap());
        headers.insert("forwarded", "for=1.2.3.4;host=evil".parse().unwrap());
        headers.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        headers.insert("x-real-ip", "6.6.6.6".parse().unwrap());
        let peer = Some("127.0.0.1".parse().unwrap());
        let out = forwarded_headers(headers.clone(), &[], peer);
        let mut names: Vec<_> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            vec![
                "authorization",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(out["x-forwarded-for"], "127.0.0.1");
        assert_eq!(out["x-forwarded-host"], "client.example");
        let passed = [HeaderName::from_static("x-forwarded-for")];
        let out = forwarded_headers(headers, &passed, peer);
        assert_eq!(out["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
        assert!(out.get("x-original-url").is_none());
    }

    /// What `forwarded_headers` did before it was one pass: remove each unwanted name from a
    /// copy (then the same `add_forwarding`). The property below holds the one pass to it.
    fn forwarded_headers_by_removal(
        incoming: &HeaderMap,
        passed: &[HeaderName],
        peer: Option<std::net::IpAddr>,
    ) -> HeaderMap {
        let mut headers = incoming.clone();
        strip_hop_by_hop(&mut headers);
        strip_spoofed_headers(&mut headers);
        for name in UNTRUSTED_FORWARDING_HEADERS {
            if !passed.iter().any(|p| p.as_str() == name) {
                headers.remove(name);
            }
        }
        let host = headers.remove(http::header::HOST);
        add_forwarding(&mut headers, host, peer);
        headers
    }

    /// Names a hostile client would send: hop-by-hop, spoofed, forwarding, `Host`, ordinary.
    const NAMES: [&str; 14] = [
        "connection",
        "te",
        "upgrade",
        "x-hop",
        "x-flex-auth-subject",
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-original-url",
        "forwarded",
        "authorization",
        "accept",
        "x-request-id",
    ];
    /// Values, among them `Connection` lists naming other headers (`host` too).
    const VALUES: [&str; 7] = [
        "1",
        "",
        "keep-alive, x-hop",
        "host",
        "x-forwarded-for, X-Request-Id",
        "6.6.6.6",
        "a, b",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 2_000, ..Default::default() })]

        #[test]
        fn one_pass_forwards_what_removal_from_a_copy_forwards(
            entries in proptest::collection::vec((0..NAMES.len(), 0..VALUES.len()), 0..12),
            passed in proptest::collection::vec(0..NAMES.len(), 0..3),
            with_peer in proptest::bool::ANY,
        ) {
            let mut headers = HeaderMap::new();
            for (name, value) in &entries {
                let (Some(name), Some(value)) = (NAMES.get(*name), VALUES.get(*value)) else {
                    continue;
                };
                headers.append(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            let passed: Vec<HeaderName> = passed
                .iter()
                .filter_map(|i| NAMES.get(*i))
                .map(|n| HeaderName::from_static(n))
                .collect();
            let peer = with_peer.then(|| std::net::IpAddr::from([127, 0, 0, 1]));
            let expected = forwarded_headers_by_removal(&headers, &passed, peer);
            let got = forwarded_headers(headers.clone(), &passed, peer);
            proptest::prop_assert_eq!(got, expected, "{:?} passed {:?}", headers, passed);
        }
    }

    #[test]
    fn upstream_urls_keep_their_prefix() {
        let base = parse_upstream("http://127.0.0.1:9000/api/").unwrap();
        let uri = upstream_uri(&base, &"/v1/x?a=1".parse().unwrap()).unwrap();
        assert_eq!(uri.to_string(), "http://127.0.0.1:9000/api/v1/x?a=1");
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://x/?q=1").is_err());
    }
}
