//! Envoy `ext_authz` over gRPC (`serve --grpc-listen`), in process over real HTTP/2 sockets: the
//! `CheckRequest` → routes → gate → `CheckResponse` mapping, every refusal as a deny message
//! (never a gRPC error, which a caller with `failure_mode_allow: true` would let through), the
//! limits, mTLS, and the gRPC health service. `tests/envoy_grpc.rs` runs the same through a
//! real Envoy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap as ProtoHeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use flex_auth::api::{Api, ApiConfig};
use flex_auth::audit::{AuditLog, Sink};
use flex_auth::auth::Authenticator;
use flex_auth::gate::Gate;
use flex_auth::grpc::{Grpc, GrpcConfig, CHECK_PATH, HEALTH_CHECK_PATH};
use flex_auth::routes::Routes;
use flex_auth::server::{InFlightLimit, Limits, Server};
use flex_auth::State;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use support::broker::{broker_sources, jwks_file, AUDIENCE, ISSUER};
use support::jwt::{claims, TestKey};
use support::DEADLINE;

/// The broker example's routes, plus a bodiless route that reads the query.
const ROUTES: &str = r#"
routes:
  - name: mint
    method: POST
    path: /v1/mint-aws-creds
    action: mint
    resource: { type: Actor, id: { claim: sub } }
    context:
      role: { body: /role }
      ttl_hours: { body: /ttl_hours }
    body_limit: 64
  - name: mint-get
    method: GET
    path: /v1/mint
    action: mint
    resource: { type: Actor, id: { claim: sub } }
    context:
      role: { query: role }
  - name: broker-health
    method: GET
    path: /healthz
    public: true
"#;

const MINT_BODY: &str = r#"{"role": "aws:demo-readonly", "ttl_hours": 1}"#;

/// flex-auth's decision API and gRPC listener over the broker example, sharing one in-flight
/// budget, with a decision log.
struct Fixture {
    grpc: SocketAddr,
    api: SocketAddr,
    key: TestKey,
    state: Arc<State>,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _stops: Vec<oneshot::Sender<()>>,
}

struct Options {
    loaded: bool,
    max_in_flight: usize,
    audit: Option<Sink>,
    tls: Option<Arc<flex_auth::tls::Tls>>,
    max_message_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            loaded: true,
            max_in_flight: 64,
            audit: None,
            tls: None,
            max_message_bytes: 64 * 1024,
        }
    }
}

async fn fixture(options: Options) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("k1");
    let settings = jwks_file(&dir, &[&key]);
    let routes_path = dir.path().join("routes.yaml");
    std::fs::write(&routes_path, ROUTES).unwrap();
    let state = Arc::new(State::new(broker_sources()));
    if options.loaded {
        state.reload(flex_auth::state::Trigger::Startup).unwrap();
    }
    let log = dir.path().join("decisions.jsonl");
    let sink = options.audit.unwrap_or(Sink::File(log.clone()));
    let audit = AuditLog::start(
        sink,
        flex_auth::audit::Mode::Required,
        flex_auth::audit::Rotation {
            max_bytes: 1 << 30,
            keep: 1,
        },
    )
    .unwrap();
    let auth = Arc::new(Authenticator::new(settings).await.unwrap());
    let api = Api::new(state.clone(), ApiConfig::default())
        .unwrap()
        .with_audit(audit.clone());
    let gate = Gate::new(
        state.clone(),
        Arc::new(Routes::load(&routes_path).unwrap()),
        auth,
        audit,
        api.metrics().clone(),
    );
    let api = api.with_gate(gate.clone());
    let grpc = Grpc::new(
        gate,
        Arc::new(api.clone()),
        GrpcConfig {
            max_message_bytes: options.max_message_bytes,
            call_timeout: Duration::from_secs(5),
        },
    );
    let limits = Limits {
        max_in_flight: options.max_in_flight,
        ..support::test_limits()
    };
    let shared = InFlightLimit::new(options.max_in_flight);
    let mut grpc_server = Server::bind("127.0.0.1:0".parse().unwrap(), grpc, limits.clone())
        .await
        .unwrap()
        .with_in_flight_limit(shared.clone());
    if let Some(tls) = options.tls {
        grpc_server = grpc_server.with_tls(tls);
    }
    let api_server = Server::bind("127.0.0.1:0".parse().unwrap(), api, limits)
        .await
        .unwrap()
        .with_in_flight_limit(shared);
    let grpc_addr = grpc_server.local_addr().unwrap();
    let api_addr = api_server.local_addr().unwrap();
    let stops = vec![spawn_server(grpc_server), spawn_server(api_server)];
    Fixture {
        grpc: grpc_addr,
        api: api_addr,
        key,
        state,
        log,
        _dir: dir,
        _stops: stops,
    }
}

/// Serve `server` until the returned sender is used or dropped.
fn spawn_server<H: flex_auth::server::Handler>(server: Server<H>) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    tx
}

impl Fixture {
    fn token(&self, subject: &str) -> String {
        self.key.sign(&claims(subject, ISSUER, AUDIENCE))
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn check(&self, request: &CheckRequest) -> CheckResponse {
        check_at(self.grpc, request, &[]).await
    }
}

/// The original request as Envoy describes it.
fn original(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "broker.example".to_owned(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect::<HashMap<_, _>>(),
                    body: body.to_owned(),
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            ..AttributeContext::default()
        }),
    }
}

fn mint(token: &str, extra: &[(&str, &str)]) -> CheckRequest {
    let bearer = format!("Bearer {token}");
    let mut headers = vec![
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    original("POST", "/v1/mint-aws-creds", &headers, MINT_BODY)
}

/// One unary call's answer, as the wire carried it.
struct Call {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Call {
    fn grpc_status(&self) -> Option<String> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn message(&self) -> &[u8] {
        assert!(self.body.len() >= 5, "no message in the answer");
        let len = u32::from_be_bytes(self.body[1..5].try_into().unwrap()) as usize;
        assert_eq!(self.body[0], 0, "an uncompressed message");
        assert_eq!(self.body.len(), 5 + len, "exactly one message");
        &self.body[5..]
    }
}

fn framed(message: &[u8]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(u32::try_from(message.len()).unwrap());
    body.put_slice(message);
    body.freeze()
}

/// An HTTP/2 client on `stream`, its connection driven in the background.
async fn h2_client<S, B>(stream: S) -> hyper::client::conn::http2::SendRequest<B>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// One HTTP/2 call on a fresh connection with `body` as it is (a framed message, or not).
async fn call(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: Bytes) -> Call {
    let exchange = async {
        let mut sender = h2_client(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
        send_call(&mut sender, path, headers, body).await
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("a gRPC answer within the deadline")
}

async fn send_call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Call {
    let response = sender
        .send_request(grpc_request(path, headers, Full::new(body)))
        .await
        .unwrap();
    read_call(response).await
}

/// A gRPC call's request to `path` with `body` as it is.
fn grpc_request<B>(path: &str, headers: &[(&str, &str)], body: B) -> http::Request<B> {
    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://flex-auth{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).unwrap()
}

/// The whole answer to a call.
async fn read_call(response: http::Response<hyper::body::Incoming>) -> Call {
    let status = response.status();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Call {
        status,
        headers,
        body: collected.to_bytes(),
        trailers,
    }
}

async fn check_at(
    addr: SocketAddr,
    request: &CheckRequest,
    headers: &[(&str, &str)],
) -> CheckResponse {
    let answer = call(addr, CHECK_PATH, headers, framed(&request.encode_to_vec())).await;
    decode_answer(&answer)
}

/// A check's answer: always a successful call carrying a `CheckResponse`.
fn decode_answer(answer: &Call) -> CheckResponse {
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "application/grpc");
    assert_eq!(
        answer.grpc_status().as_deref(),
        Some("0"),
        "a check is always answered with a message, never a gRPC error"
    );
    CheckResponse::decode(answer.message()).unwrap()
}

/// The parts of a deny: gRPC code, HTTP status, headers, JSON body.
struct Denied {
    code: i32,
    status: u16,
    headers: HashMap<String, String>,
    body: Value,
}

fn denied(response: &CheckResponse) -> Denied {
    let code = response.status.as_ref().unwrap().code;
    assert_ne!(code, 0, "a deny never carries OK");
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a denied response, got {response:?}");
    };
    Denied {
        code,
        status: u16::try_from(denied.status.as_ref().unwrap().code).unwrap(),
        headers: denied
            .headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect(),
        body: serde_json::from_str(&denied.body).unwrap(),
    }
}

/// An allow's headers to set (name → value) and to remove.
fn allowed(response: &CheckResponse) -> (HashMap<String, String>, Vec<String>) {
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected an ok response, got {response:?}");
    };
    (
        ok.headers
            .iter()
            .map(|h| {
                let h = h.header.as_ref().unwrap();
                (h.key.clone(), h.value.clone())
            })
            .collect(),
        ok.headers_to_remove.clone(),
    )
}

fn metadata(response: &CheckResponse) -> HashMap<String, Value> {
    let to_json = |v: &envoy_types::pb::google::protobuf::Value| -> Value {
        match v.kind.as_ref().unwrap() {
            Kind::StringValue(s) => json!(s),
            Kind::NumberValue(n) => json!(n),
            Kind::ListValue(l) => Value::Array(
                l.values
                    .iter()
                    .map(|v| match v.kind.as_ref().unwrap() {
                        Kind::StringValue(s) => json!(s),
                        other => panic!("{other:?}"),
                    })
                    .collect(),
            ),
            other => panic!("{other:?}"),
        }
    };
    response
        .dynamic_metadata
        .as_ref()
        .unwrap()
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect()
}

fn is_decision_id(id: &str) -> bool {
    id.len() == 25
        && id.starts_with("decision:")
        && id[9..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn an_allowed_check_sets_the_decision_headers_and_removes_spoofed_ones() {
    let f = fixture(Options::default()).await;
    let response = f
        .check(&mint(
            &f.token("agent-demo"),
            &[
                ("x-flex-auth-decision-id", "decision:0000000000000000"),
                ("x-flex-auth-subject", "admin"),
                ("x-flex-auth-role", "root"),
            ],
        ))
        .await;
    let (set, removed) = allowed(&response);
    let id = &set["x-flex-auth-decision-id"];
    assert!(is_decision_id(id), "{id}");
    assert_eq!(set["x-flex-auth-subject"], "agent-demo");
    // The two it sets overwrite the spoofed values; every other x-flex-auth-* goes. Envoy
    // removes after it sets, so removing the two would remove flex-auth's own.
    assert_eq!(removed, ["x-flex-auth-role"]);
    let meta = metadata(&response);
    assert_eq!(meta["decision"], "allow");
    assert_eq!(meta["decision_id"], json!(id));
    assert_eq!(meta["reasons"], json!([]));
    // Logged like every other surface: origin, credential hash, never the credential.
    let records = f.records();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["decision_id"], json!(id));
    assert_eq!(record["origin"], "envoy-grpc:mint");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["credential_sha256"].as_str().unwrap().len(), 64);
    assert!(!record.to_string().contains(&f.token("agent-demo")));
}

#[tokio::test]
async fn the_path_carries_the_query_and_it_is_split_for_the_route() {
    let f = fixture(Options::default()).await;
    let bearer = format!("Bearer {}", f.token("agent-demo"));
    let auth = [("authorization", bearer.as_str())];
    let with_role = f
        .check(&original(
            "GET",
            "/v1/mint?role=aws:demo-readonly",
            &auth,
            "",
        ))
        .await;
    allowed(&with_role);
    let other_role = f
        .check(&original("GET", "/v1/mint?role=aws:admin", &auth, ""))
        .await;
    let deny = denied(&other_role);
    assert_eq!((deny.code, deny.status), (7, 403));
    assert_eq!(deny.body["reasons"], json!(["role_not_allowed"]));
    // The public route: allowed without a credential or a decision, spoofed headers removed.
    let public = f
        .check(&original(
            "GET",
            "/healthz",
            &[("x-flex-auth-subject", "x")],
            "",
        ))
        .await;
    let (set, removed) = allowed(&public);
    assert!(set.is_empty());
    assert_eq!(removed, ["x-flex-auth-subject"]);
    assert!(!metadata(&public).contains_key("decision_id"));
}

#[tokio::test]
async fn a_policy_deny_is_a_403_with_the_decision_in_body_headers_and_metadata() {
    let f = fixture(Options::default()).await;
    let response = f.check(&mint(&f.token("agent-blocked"), &[])).await;
    let deny = denied(&response);
    assert_eq!((deny.code, deny.status), (7, 403));
    assert_eq!(deny.headers["content-type"], "application/json");
    let id = deny.body["decision_id"].as_str().unwrap().to_owned();
    assert!(is_decision_id(&id));
    assert_eq!(deny.headers["x-flex-auth-decision-id"], id);
    assert_eq!(deny.body["decision"], "deny");
    assert_eq!(deny.body["reasons"], json!(["actor_suspended"]));
    assert_eq!(deny.body["error"]["code"], "forbidden");
    let meta = metadata(&response);
    assert_eq!(meta["decision"], "deny");
    assert_eq!(meta["decision_id"], json!(id));
    assert_eq!(meta["reasons"], json!(["actor_suspended"]));
    assert_eq!(meta["status"], json!(403.0));
    let records = f.records();
    assert_eq!(records[0]["decision"], "deny");
    assert_eq!(records[0]["origin"], "envoy-grpc:mint");
}

#[tokio::test]
async fn credential_failures_are_401_with_www_authenticate() {
    let f = fixture(Options::default()).await;
    let forged = TestKey::ed25519("k1").sign(&claims("agent-demo", ISSUER, AUDIENCE));
    for request in [
        mint(&forged, &[]),
        original(
            "POST",
            "/v1/mint-aws-creds",
            &[("content-type", "application/json")],
            MINT_BODY,
        ),
    ] {
        let deny = denied(&f.check(&request).await);
        assert_eq!((deny.code, deny.status), (16, 401), "{}", deny.body);
        assert!(deny.headers["www-authenticate"].starts_with("Bearer realm=\"flex-auth\""));
        assert_eq!(deny.body["error"]["code"], "unauthenticated");
    }
    assert!(f.records().is_empty(), "no decision was made");
}

#[tokio::test]
async fn requests_the_routes_cannot_decide_are_denied_with_their_reason() {
    let f = fixture(Options::default()).await;
    let token = f.token("agent-demo");
    let bearer = format!("Bearer {token}");
    let cases: Vec<(&str, CheckRequest, u16, &str)> = vec![
        (
            "no route",
            original(
                "DELETE",
                "/v1/mint-aws-creds",
                &[("authorization", &bearer)],
                "",
            ),
            403,
            "forbidden",
        ),
        (
            "an ambiguous path",
            original(
                "GET",
                "/v1/x/../mint?role=aws:demo-readonly",
                &[("authorization", &bearer)],
                "",
            ),
            400,
            "ambiguous_path",
        ),
        (
            "a body route without the body (no with_request_body)",
            original(
                "POST",
                "/v1/mint-aws-creds",
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                "",
            ),
            403,
            "body_unavailable",
        ),
        (
            "a body Envoy cut short (allow_partial_message)",
            mint(&token, &[("x-envoy-auth-partial-body", "true")]),
            413,
            "body_partial",
        ),
        (
            "a body shorter than its content-length",
            mint(&token, &[("content-length", "4096")]),
            413,
            "body_partial",
        ),
        (
            "a body over the route's limit",
            original(
                "POST",
                "/v1/mint-aws-creds",
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                &format!(
                    r#"{{"role": "aws:demo-readonly", "pad": "{}"}}"#,
                    "x".repeat(64)
                ),
            ),
            413,
            "body_too_large",
        ),
        (
            "a body not declared as JSON",
            original(
                "POST",
                "/v1/mint-aws-creds",
                &[("authorization", &bearer), ("content-type", "text/plain")],
                MINT_BODY,
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "a body with a duplicate key",
            original(
                "POST",
                "/v1/mint-aws-creds",
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
                r#"{"role": "aws:admin", "role": "aws:demo-readonly"}"#,
            ),
            400,
            "duplicate_key",
        ),
        (
            "no method",
            original("", "/v1/mint", &[("authorization", &bearer)], ""),
            400,
            "missing_field",
        ),
        (
            "a method that is not one",
            original("GE T", "/v1/mint", &[("authorization", &bearer)], ""),
            400,
            "invalid_field",
        ),
        (
            "no path",
            original("GET", "", &[("authorization", &bearer)], ""),
            400,
            "missing_field",
        ),
        (
            "a header value HTTP cannot carry",
            original(
                "GET",
                "/v1/mint",
                &[("authorization", &bearer), ("x-a", "a\nb")],
                "",
            ),
            400,
            "invalid_field",
        ),
        (
            "a header named twice (by case)",
            original(
                "GET",
                "/v1/mint?role=aws:demo-readonly",
                &[("authorization", &bearer), ("Authorization", "Bearer x")],
                "",
            ),
            400,
            "malformed_message",
        ),
        (
            "no attributes",
            CheckRequest::default(),
            400,
            "missing_field",
        ),
    ];
    for (what, request, status, code) in cases {
        let deny = denied(&f.check(&request).await);
        assert_eq!(deny.status, status, "{what}: {}", deny.body);
        assert_eq!(deny.body["error"]["code"], code, "{what}: {}", deny.body);
    }
}

#[tokio::test]
async fn raw_headers_keep_repeats_and_pseudo_headers_are_not_headers() {
    let f = fixture(Options::default()).await;
    let bearer = format!("Bearer {}", f.token("agent-demo"));
    let mut request = original("GET", "/v1/mint?role=aws:demo-readonly", &[], "");
    let http = request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    let raw = |k: &str, v: &str| HeaderValue {
        key: k.to_owned(),
        raw_value: v.as_bytes().to_vec(),
        ..HeaderValue::default()
    };
    http.header_map = Some(ProtoHeaderMap {
        headers: vec![
            raw(":authority", "broker.example"),
            raw(":path", "/v1/mint?role=aws:demo-readonly"),
            raw("authorization", &bearer),
            raw("x-flex-auth-role", "a"),
            raw("x-flex-auth-role", "b"),
        ],
    });
    let (_, removed) = allowed(&f.check(&request).await);
    assert_eq!(removed, ["x-flex-auth-role"]);
    // Two credentials in raw headers: refused, not one of them picked.
    let http = request
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.header_map
        .as_mut()
        .unwrap()
        .headers
        .push(raw("authorization", "Bearer other"));
    assert_eq!(denied(&f.check(&request).await).status, 401);
    // `headers` and `header_map` together could disagree: refused.
    let mut both = request.clone();
    both.attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .headers
        .insert("authorization".to_owned(), bearer.clone());
    assert_eq!(
        denied(&f.check(&both).await).body["error"]["code"],
        "malformed_message"
    );
}

#[tokio::test]
async fn a_message_that_cannot_be_read_is_a_deny_never_a_grpc_error() {
    let f = fixture(Options {
        max_message_bytes: 2048,
        ..Options::default()
    })
    .await;
    let mut compressed = framed(b"\x0a\x00").to_vec();
    compressed[0] = 1;
    let too_large = mint(&f.token("agent-demo"), &[("x-pad", &"p".repeat(4096))]);
    let cases: Vec<(&str, Bytes, u16, &str)> = vec![
        (
            "not protobuf",
            framed(b"\xff\xff\xff\xff"),
            400,
            "malformed_message",
        ),
        (
            "no prefix",
            Bytes::from_static(b"\x00\x00"),
            400,
            "malformed_message",
        ),
        (
            "a compressed message",
            Bytes::from(compressed),
            400,
            "malformed_message",
        ),
        (
            "two messages",
            Bytes::from([framed(b""), framed(b"")].concat()),
            400,
            "malformed_message",
        ),
        ("an empty body", Bytes::new(), 400, "malformed_message"),
        (
            "over --grpc-max-message-bytes",
            framed(&too_large.encode_to_vec()),
            413,
            "body_too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let answer = call(f.grpc, CHECK_PATH, &[], body).await;
        let deny = denied(&decode_answer(&answer));
        assert_eq!(deny.status, status, "{what}: {}", deny.body);
        assert_eq!(deny.body["error"]["code"], code, "{what}");
    }
}

#[tokio::test]
async fn nothing_is_decided_while_unready() {
    let f = fixture(Options {
        loaded: false,
        ..Options::default()
    })
    .await;
    let deny = denied(&f.check(&mint(&f.token("agent-demo"), &[])).await);
    assert_eq!((deny.code, deny.status), (14, 503));
    assert_eq!(deny.headers["retry-after"], "1");
    assert_eq!(deny.body["error"]["code"], "not_ready");
    assert_eq!(deny.body["fail_closed"], true);
    let mut health = health_client(f.grpc).await;
    let status = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        i32::from(tonic_health::pb::health_check_response::ServingStatus::NotServing)
    );
    // Loaded: serving, and decisions again.
    f.state.reload(flex_auth::state::Trigger::Startup).unwrap();
    allowed(&f.check(&mint(&f.token("agent-demo"), &[])).await);
}

async fn health_client(
    addr: SocketAddr,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(DEADLINE)
        .timeout(DEADLINE)
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
}

#[tokio::test]
async fn a_standard_grpc_client_gets_checks_and_health() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::HealthCheckRequest;
    let f = fixture(Options::default()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", f.grpc))
        .unwrap()
        .timeout(DEADLINE)
        .connect()
        .await
        .unwrap();
    let mut client = AuthorizationClient::new(channel.clone());
    let response = client
        .check(mint(&f.token("agent-demo"), &[]))
        .await
        .unwrap()
        .into_inner();
    allowed(&response);
    let deny = client
        .check(mint(&f.token("agent-blocked"), &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denied(&deny).status, 403);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, i32::from(ServingStatus::Serving), "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "other".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // Watch is not served (poll Check); an unknown method is unimplemented.
    let watch = call(f.grpc, "/grpc.health.v1.Health/Watch", &[], framed(b"")).await;
    assert_eq!(watch.grpc_status().as_deref(), Some("12"));
    let other = call(
        f.grpc,
        "/envoy.service.auth.v2.Authorization/Check",
        &[],
        framed(b""),
    )
    .await;
    assert_eq!(other.grpc_status().as_deref(), Some("12"));
    // Not gRPC at all: 415, as the gRPC specification answers.
    let json = support::send(
        f.grpc,
        Method::POST,
        CHECK_PATH,
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(json.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(json.error_code(), "unsupported_media_type");
}

#[tokio::test]
async fn checks_are_counted_under_their_own_endpoint() {
    let f = fixture(Options::default()).await;
    allowed(&f.check(&mint(&f.token("agent-demo"), &[])).await);
    denied(&f.check(&mint(&f.token("agent-blocked"), &[])).await);
    denied(&f.check(&CheckRequest::default()).await);
    let metrics = support::send(f.api, Method::GET, "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        r#"flex_auth_http_responses_total{code="200",endpoint="ext_authz_grpc"} 1"#,
        r#"flex_auth_http_responses_total{code="403",endpoint="ext_authz_grpc"} 1"#,
        r#"flex_auth_http_responses_total{code="400",endpoint="ext_authz_grpc"} 1"#,
        r#"flex_auth_check_duration_seconds_count{endpoint="ext_authz_grpc"} 2"#,
        r#"flex_auth_decisions_total{decision="allow"} 1"#,
        r#"flex_auth_decisions_total{decision="deny"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
}

/// A SQLite decision log locked by another writer holds a required-mode decision until its busy
/// timeout (2 s): a check in flight that long.
fn locked_log(dir: &tempfile::TempDir) -> (Sink, rusqlite::Connection) {
    let db = dir.path().join("d.db");
    // Created (with its table) by opening it as a sink once.
    drop(support::required_log(Sink::Sqlite(db.clone())));
    let lock = rusqlite::Connection::open(&db).unwrap();
    (Sink::Sqlite(db), lock)
}

#[tokio::test]
async fn a_check_not_decided_before_the_callers_deadline_is_denied_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, lock) = locked_log(&dir);
    let f = fixture(Options {
        audit: Some(sink),
        ..Options::default()
    })
    .await;
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let response = check_at(
        f.grpc,
        &mint(&f.token("agent-demo"), &[]),
        &[("grpc-timeout", "300m")],
    )
    .await;
    let took = started.elapsed();
    lock.execute_batch("ROLLBACK").unwrap();
    let deny = denied(&response);
    assert_eq!((deny.code, deny.status), (14, 503));
    assert_eq!(deny.body["error"]["code"], "deadline_exceeded");
    // Nine tenths of the caller's 300 ms: the deny is there before the caller gives up.
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(300),
        "{took:?}"
    );
}

#[tokio::test]
async fn the_grpc_listener_shares_the_decision_listeners_in_flight_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, lock) = locked_log(&dir);
    let f = fixture(Options {
        audit: Some(sink),
        max_in_flight: 1,
        ..Options::default()
    })
    .await;
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // A /v1/check on the decision listener holds the one slot while its record waits.
    let api = f.api;
    let held = tokio::spawn(async move {
        support::send(
            api,
            Method::POST,
            "/v1/check",
            &[("content-type", "application/json")],
            json!({"subject": {"id": "agent-demo"}, "action": "mint",
                   "resource": {"type": "Actor", "id": "agent-demo"},
                   "context": {"role": "aws:demo-readonly"}})
            .to_string(),
        )
        .await
    });
    let mut shed = None;
    for _ in 0..100 {
        let deny_or_wait = tokio::time::timeout(
            Duration::from_millis(1500),
            f.check(&mint(&f.token("agent-demo"), &[])),
        )
        .await;
        if let Ok(response) = deny_or_wait {
            let deny = denied(&response);
            if deny.body["error"]["code"] == "overloaded" {
                shed = Some(deny);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.execute_batch("ROLLBACK").unwrap();
    let _ = held.await;
    let shed = shed.expect("a gRPC check shed while the decision listener held the slot");
    assert_eq!((shed.code, shed.status), (14, 503));
    assert_eq!(shed.headers["retry-after"], "1");
    // The health service is exempt from shedding (and needs no slot).
    let mut health = health_client(f.grpc).await;
    assert!(health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .is_ok());
}

#[tokio::test]
async fn with_client_certificates_only_allowed_callers_get_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::Ca::new("flex-auth test CA");
    let (cert, key) = support::tls::install(dir.path(), &ca.server());
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let envoy_id = "spiffe://cluster.local/ns/broker/sa/envoy";
    let tls = flex_auth::tls::Tls::load(flex_auth::tls::TlsSettings {
        cert,
        key,
        client_ca: Some(ca_path),
        allowed_sans: vec![envoy_id.to_owned()],
    })
    .unwrap();
    let f = fixture(Options {
        tls: Some(Arc::new(tls)),
        ..Options::default()
    })
    .await;
    let request = framed(&mint(&f.token("agent-demo"), &[]).encode_to_vec());
    let over_tls = |identity: Option<support::tls::Leaf>| {
        let config = support::tls::client_config(&ca, identity.as_ref(), &[b"h2"]);
        let addr = f.grpc;
        let body = request.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut sender = h2_client(connector.connect(name, tcp).await.unwrap()).await;
            let check = send_call(&mut sender, CHECK_PATH, &[], body).await;
            let health = send_call(&mut sender, HEALTH_CHECK_PATH, &[], framed(b"")).await;
            (decode_answer(&check), health)
        }
    };
    let (anonymous, health) = over_tls(None).await;
    let deny = denied(&anonymous);
    assert_eq!(
        (deny.status, deny.body["error"]["code"].as_str()),
        (401, Some("client_certificate_required"))
    );
    // Probes need no certificate.
    assert_eq!(health.grpc_status().as_deref(), Some("0"));
    let (stranger, _) = over_tls(Some(ca.client("spiffe://cluster.local/ns/x/sa/other"))).await;
    assert_eq!(denied(&stranger).status, 403);
    let (envoy, _) = over_tls(Some(ca.client(envoy_id))).await;
    allowed(&envoy);
}

#[tokio::test]
async fn a_body_that_never_ends_is_denied_within_the_callers_deadline() {
    let f = fixture(Options::default()).await;
    let mut sender = h2_client(tokio::net::TcpStream::connect(f.grpc).await.unwrap()).await;
    // The first bytes of a message, then nothing: the stream stays open while `feed` lives.
    let (feed, body) = tokio::sync::mpsc::channel(1);
    feed.send(Bytes::from_static(b"\x00\x00\x00\x01"))
        .await
        .unwrap();
    let request = grpc_request(CHECK_PATH, &[("grpc-timeout", "200m")], Fed(body));
    let started = Instant::now();
    let response = tokio::time::timeout(DEADLINE, async {
        read_call(sender.send_request(request).await.unwrap()).await
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_millis(400));
    let deny = denied(&CheckResponse::decode(response.message()).unwrap());
    assert_eq!(deny.body["error"]["code"], "deadline_exceeded");
    drop(feed);
}

/// What a generated check carries: each part from a small set of values that matter (valid,
/// wrong, hostile) or arbitrary, so the cases reach the gate rather than stopping at the first
/// unreadable field.
#[derive(Debug, Clone)]
struct Described {
    method: String,
    path: String,
    host: String,
    /// Which credential, and how often it is sent (0, 1 or 2 `authorization` headers).
    credential: Credential,
    credential_copies: usize,
    /// `authorization` spelled `Authorization` (a duplicate by case in `headers`).
    credential_capitalised: bool,
    other_headers: Vec<(String, String)>,
    body: String,
    body_as_raw: bool,
    /// Headers sent as `header_map` (raw, repeats kept) rather than `headers`.
    raw: bool,
    /// Both `headers` and `header_map` set.
    both_lists: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Credential {
    Demo,
    Blocked,
    Forged,
    Garbage,
}

fn described() -> impl proptest::strategy::Strategy<Value = Described> {
    use proptest::prelude::*;
    let method = prop_oneof![
        Just("POST".to_owned()),
        Just("GET".to_owned()),
        Just("post".to_owned()),
        Just(String::new()),
        "[A-Za-z \\x00-\\x1f]{0,8}",
    ];
    let path = prop_oneof![
        Just("/v1/mint-aws-creds".to_owned()),
        Just("/v1/mint?role=aws:demo-readonly".to_owned()),
        Just("/v1/mint?role=aws:demo-readonly&role=aws:admin".to_owned()),
        Just("/v1/mint?role=aws:demo-readonly&ROLE=aws:admin".to_owned()),
        Just("/healthz".to_owned()),
        Just("/v1/mint-aws-creds?".to_owned()),
        Just("//v1/mint-aws-creds".to_owned()),
        Just("/v1/%6dint-aws-creds".to_owned()),
        Just("/v1/./mint-aws-creds".to_owned()),
        Just(String::new()),
        "\\PC{0,24}",
    ];
    let credential = prop_oneof![
        Just(Credential::Demo),
        Just(Credential::Blocked),
        Just(Credential::Forged),
        Just(Credential::Garbage),
    ];
    let header_name = prop_oneof![
        Just("x-flex-auth-decision-id".to_owned()),
        Just("x-flex-auth-subject".to_owned()),
        Just("x-flex-auth-role".to_owned()),
        Just("content-length".to_owned()),
        Just("x-envoy-auth-partial-body".to_owned()),
        Just("host".to_owned()),
        Just(":path".to_owned()),
        Just("X-Flex-Auth-Subject".to_owned()),
        "[a-zA-Z0-9:_ -]{0,12}",
    ];
    let header_value = prop_oneof![
        Just("admin".to_owned()),
        Just("true".to_owned()),
        Just("1".to_owned()),
        Just("100000".to_owned()),
        "\\PC{0,16}",
        "[\\x00-\\x7f]{0,8}",
    ];
    let body = prop_oneof![
        Just(MINT_BODY.to_owned()),
        Just(r#"{"role": "aws:demo-readonly", "role": "aws:admin", "ttl_hours": 1}"#.to_owned()),
        Just(r#"{"role": "aws:demo-readonly", "ttl_hours": 100}"#.to_owned()),
        Just(String::new()),
        "\\PC{0,80}",
    ];
    (
        (
            method,
            path,
            prop_oneof![Just("broker.example".to_owned()), "\\PC{0,12}"],
        ),
        (credential, 0usize..=2, any::<bool>()),
        proptest::collection::vec((header_name, header_value), 0..4),
        (body, any::<bool>()),
        (any::<bool>(), proptest::bool::weighted(0.1)),
    )
        .prop_map(
            |(
                (method, path, host),
                (credential, credential_copies, credential_capitalised),
                other_headers,
                (body, body_as_raw),
                (raw, both_lists),
            )| Described {
                method,
                path,
                host,
                credential,
                credential_copies,
                credential_capitalised,
                other_headers,
                body,
                body_as_raw,
                raw,
                both_lists,
            },
        )
}

impl Described {
    fn token(&self, f: &Fixture) -> String {
        match self.credential {
            Credential::Demo => f.token("agent-demo"),
            Credential::Blocked => f.token("agent-blocked"),
            Credential::Forged => {
                TestKey::ed25519("k1").sign(&claims("agent-demo", ISSUER, AUDIENCE))
            }
            Credential::Garbage => "a.b.c".to_owned(),
        }
    }

    /// Every header in the order it is sent (`authorization` first).
    fn headers(&self, token: &str) -> Vec<(String, String)> {
        let name = if self.credential_capitalised {
            "Authorization"
        } else {
            "authorization"
        };
        let mut headers: Vec<(String, String)> = (0..self.credential_copies)
            .map(|_| (name.to_owned(), format!("Bearer {token}")))
            .collect();
        headers.extend(self.other_headers.iter().cloned());
        headers
    }

    fn request(&self, token: &str) -> CheckRequest {
        let headers = self.headers(token);
        let map = || headers.iter().cloned().collect::<HashMap<_, _>>();
        let raw = || ProtoHeaderMap {
            headers: headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.clone(),
                    raw_value: v.as_bytes().to_vec(),
                    ..HeaderValue::default()
                })
                .collect(),
        };
        let (body, raw_body) = if self.body_as_raw {
            (String::new(), self.body.as_bytes().to_vec())
        } else {
            (self.body.clone(), Vec::new())
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: self.method.clone(),
                        path: self.path.clone(),
                        host: self.host.clone(),
                        headers: if self.raw && !self.both_lists {
                            HashMap::new()
                        } else {
                            map()
                        },
                        header_map: (self.raw || self.both_lists).then(raw),
                        body,
                        raw_body,
                        ..HttpRequest::default()
                    }),
                    ..Request::default()
                }),
                ..AttributeContext::default()
            }),
        }
    }

    /// Could flex-auth allow this? Only a public route, or one valid, unsuspended credential
    /// sent exactly once, in one header list that names nothing twice.
    fn may_be_allowed(&self, token: &str) -> bool {
        let public = self.method == "GET" && self.path == "/healthz";
        let mut sent = self.headers(token);
        if !self.raw {
            // `headers` is a map: the same key twice is one entry (the last).
            let map: HashMap<_, _> = sent.into_iter().collect();
            sent = map.into_iter().collect();
        }
        let credentials: Vec<&String> = sent
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v)
            .collect();
        let one_valid_credential =
            self.credential == Credential::Demo && credentials == [&format!("Bearer {token}")];
        let one_list = !self.both_lists || sent.is_empty();
        // A query parameter a route reads, given twice (in any case), is refused (parameter
        // pollution).
        let polluted = self.path.to_ascii_lowercase().matches("role=").count() > 1;
        one_list && !polluted && (public || one_valid_credential)
    }
}

/// Checks `request` (or raw `body`) and returns the answer, asserting what holds for every
/// answer: a successful call carrying a `CheckResponse`; a deny with a non-OK code, an HTTP
/// error status and flex-auth's JSON body; never a handler panic.
async fn any_answer(f: &Fixture, body: Bytes) -> CheckResponse {
    let response = decode_answer(&call(f.grpc, CHECK_PATH, &[], body).await);
    let code = response.status.as_ref().map_or(0, |s| s.code);
    match &response.http_response {
        Some(HttpResponse::OkResponse(_)) => assert_eq!(code, 0, "an allow carries OK"),
        Some(HttpResponse::DeniedResponse(_)) => {
            let deny = denied(&response);
            assert!((400..=599).contains(&deny.status), "{}", deny.status);
            assert_ne!(
                deny.body["error"]["code"], "internal_error",
                "a handler panicked"
            );
            assert!(
                deny.body.get("decision_id").is_some() || deny.body.get("error").is_some(),
                "{}",
                deny.body
            );
        }
        other => panic!("an answer without an HTTP response: {other:?}"),
    }
    response
}

fn is_allow(response: &CheckResponse) -> bool {
    matches!(response.http_response, Some(HttpResponse::OkResponse(_)))
}

/// Any `CheckRequest`: always answered with a message, never an allow for a request that is
/// malformed, ambiguous or carries a credential that is not exactly one valid token; an allow
/// always carries flex-auth's decision headers and removes every other incoming `x-flex-auth-*`.
#[test]
fn arbitrary_check_requests_never_panic_and_never_allow_on_error() {
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = runtime.block_on(fixture(Options::default()));
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    let allows = std::cell::Cell::new(0u32);
    runner
        .run(&described(), |d| {
            let token = d.token(&f);
            let request = d.request(&token);
            let response = runtime.block_on(any_answer(&f, framed(&request.encode_to_vec())));
            if is_allow(&response) {
                allows.set(allows.get() + 1);
                assert!(d.may_be_allowed(&token), "allowed: {d:?}");
                let (set, removed) = allowed(&response);
                // A public route is not decided; anything else carries its decision id.
                let public = d.method == "GET" && d.path == "/healthz";
                assert!(
                    public
                        || set
                            .get(DECISION_HEADER_NAME)
                            .is_some_and(|id| is_decision_id(id)),
                    "{set:?}"
                );
                for (name, _) in d.headers(&token) {
                    let name = name.to_ascii_lowercase();
                    if name.starts_with("x-flex-auth-")
                        && name != DECISION_HEADER_NAME
                        && name != "x-flex-auth-subject"
                    {
                        assert!(removed.contains(&name), "{name} not removed: {removed:?}");
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    // The generator reaches allows as well as refusals, or the property says nothing.
    assert!((1..256).contains(&allows.get()), "{} allows", allows.get());
}

const DECISION_HEADER_NAME: &str = "x-flex-auth-decision-id";

/// Arbitrary bytes, and a valid allowed check with bytes flipped: always a message, and an allow
/// only when the bytes still decode to a request carrying the valid token unchanged.
#[test]
fn arbitrary_and_corrupted_messages_are_denied_unless_they_still_say_the_same() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let f = runtime.block_on(fixture(Options::default()));
    let token = f.token("agent-demo");
    let valid = mint(&token, &[]).encode_to_vec();
    let len = valid.len();
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        proptest::collection::vec((0..len, any::<u8>()), 1..4).prop_map(move |flips| {
            let mut bytes = valid.clone();
            for (at, byte) in flips {
                bytes[at] = byte;
            }
            bytes
        }),
    ];
    // Found by this test: one flipped byte in the header name (`authorIzation`) names the
    // same header, and the check is rightly allowed.
    let flipped = mint(&token, &[]).encode_to_vec();
    let at = flipped
        .windows(13)
        .position(|w| w == b"authorization")
        .unwrap()
        + 6;
    let mut flipped = flipped;
    flipped[at] = b'I';
    assert!(is_allow(
        &runtime.block_on(any_answer(&f, framed(&flipped)))
    ));
    let mut runner = TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&strategy, |bytes| {
            let response = runtime.block_on(any_answer(&f, framed(&bytes)));
            if is_allow(&response) {
                let request = CheckRequest::decode(bytes.as_slice()).unwrap();
                let http = request.attributes.unwrap().request.unwrap().http.unwrap();
                // Header names are case-insensitive: a flipped `authorIzation` is the same
                // header, so an allow for it is right.
                let credentials: Vec<_> = http
                    .headers
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                    .map(|(_, v)| v)
                    .collect();
                assert_eq!(
                    credentials,
                    [&format!("Bearer {token}")],
                    "allowed without the valid credential"
                );
            }
            Ok(())
        })
        .unwrap();
}

/// A request body fed from a channel: each message is a data frame, a closed channel ends it.
struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|bytes| bytes.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// The real binary on the shipped broker policy and registry with `--grpc-listen` on a free
/// port (waited for) and `extra` flags: the process, the gRPC address, the token key.
fn binary(extra: &[&str]) -> (std::process::Child, SocketAddr, TestKey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, support::jwt::jwks(&[&key]).to_string()).unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, ROUTES).unwrap();
    let grpc: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let grpc_listen = grpc.to_string();
    let mut args = vec![
        "--policy",
        "deploy/examples/broker/policy.cedar",
        "--registry",
        "deploy/examples/broker/registry.json",
        "--routes",
        routes.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--grpc-listen",
        &grpc_listen,
    ];
    args.extend_from_slice(extra);
    let (child, _api) = support::spawn_binary(&args);
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(grpc).is_err() {
        assert!(
            Instant::now() < deadline,
            "the gRPC listener never accepted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, grpc, key, dir)
}

/// What the listener advertises in its HTTP/2 SETTINGS as the most concurrent streams.
async fn advertised_streams(grpc: SocketAddr) -> usize {
    let stream = tokio::net::TcpStream::connect(grpc).await.unwrap();
    let (sender, mut connection) = h2::client::handshake(stream).await.unwrap();
    // The server's SETTINGS arrive as the connection is driven; the client's idea of the limit
    // changes from "unlimited" to the server's value then.
    let mut sender = sender.ready().await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let _ = tokio::time::timeout(Duration::from_millis(20), &mut connection).await;
        sender = sender.ready().await.unwrap();
        let max = sender.current_max_send_streams();
        if max != usize::MAX {
            return max;
        }
        assert!(Instant::now() < deadline, "no SETTINGS from the server");
    }
}

/// `--grpc-max-concurrent-streams` is what the listener advertises in its HTTP/2 SETTINGS (the
/// server's HTTP/2 layer refuses streams past it); 1024 without the flag.
#[test]
fn the_grpc_listener_advertises_its_concurrent_stream_limit() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (extra, expected) in [
        (&["--grpc-max-concurrent-streams", "3"][..], 3),
        (&[][..], 1024),
    ] {
        let (child, grpc, _key, _dir) = binary(extra);
        let _child = support::envoy::Killed(Some(child));
        assert_eq!(
            runtime.block_on(advertised_streams(grpc)),
            expected,
            "{extra:?}"
        );
    }
}

/// SIGTERM with a check in flight on the gRPC listener: the check still gets its decision, an
/// idle HTTP/2 connection is closed, new connections are refused, and the process exits 0.
#[test]
fn sigterm_drains_an_in_flight_check_and_closes_idle_grpc_connections() {
    let (child, grpc, key, _dir) = binary(&["--shutdown-grace", "8s"]);
    let mut child = support::envoy::Killed(Some(child));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let message =
        framed(&mint(&key.sign(&claims("agent-demo", ISSUER, AUDIENCE)), &[]).encode_to_vec());
    let (feed, in_flight, idle) = runtime.block_on(async {
        // An idle connection: handshake done, no stream.
        let stream = tokio::net::TcpStream::connect(grpc).await.unwrap();
        let (_idle_sender, idle) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .unwrap();
        let idle = tokio::spawn(idle);
        // A check whose message is half sent.
        let mut sender = h2_client(tokio::net::TcpStream::connect(grpc).await.unwrap()).await;
        let mut health_sender = sender.clone();
        let (feed, body) = tokio::sync::mpsc::channel(2);
        feed.send(message.slice(..10)).await.unwrap();
        // Queued on the connection now (hyper's `send_request` dispatches before it is polled),
        // so it is the connection's first stream.
        let response = sender.send_request(grpc_request(CHECK_PATH, &[], Fed(body)));
        let in_flight = tokio::spawn(async move { read_call(response.await.unwrap()).await });
        // The call's head has reached the server once a health check sent after it on the same
        // connection is answered (frames of one connection are written and read in order).
        let (health_feed, health_body) = tokio::sync::mpsc::channel(1);
        health_feed.send(framed(&[])).await.unwrap();
        drop(health_feed);
        let health = grpc_request(HEALTH_CHECK_PATH, &[], Fed(health_body));
        let answered = tokio::time::timeout(DEADLINE, health_sender.send_request(health))
            .await
            .expect("the health check is answered")
            .unwrap();
        assert_eq!(answered.status(), StatusCode::OK);
        (feed, in_flight, idle)
    });
    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.0.as_ref().unwrap().id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    runtime.block_on(async {
        // The idle connection is closed (GOAWAY), not held open until the grace.
        tokio::time::timeout(Duration::from_secs(3), idle)
            .await
            .expect("the idle connection is closed at once")
            .unwrap()
            .unwrap();
        support::eventually("new connections are refused", async || {
            tokio::net::TcpStream::connect(grpc).await.is_err()
        })
        .await;
        // The rest of the message: the check is decided and answered.
        feed.send(message.slice(10..)).await.unwrap();
        drop(feed);
        let answer = tokio::time::timeout(DEADLINE, in_flight)
            .await
            .expect("the in-flight check is answered")
            .unwrap();
        let (headers, _) = allowed(&decode_answer(&answer));
        assert!(is_decision_id(&headers["x-flex-auth-decision-id"]));
    });
    let deadline = Instant::now() + Duration::from_secs(8);
    let exit = loop {
        if let Some(exit) = child.0.as_mut().unwrap().try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not exit after the drain");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(0), "a clean drain exits 0");
    assert!(signalled.elapsed() < Duration::from_secs(8));
}
