//! The attacks a hostile client (or a hostile disk) tries, kept as regression tests over real
//! sockets and real files: duplicate JSON keys at any depth, a query parameter or header given
//! twice, a body read as another type than it
//! declares, forwarding headers the upstream trusts, AuthZEN properties that rewrite the
//! registry, silent connections at the connection limit, and a decision log whose directory is
//! deleted or whose disk fills up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flex_auth::api::{Api, ApiConfig};
use flex_auth::audit::{AuditLog, Sink};
use flex_auth::auth::AuthSettings;
use flex_auth::server::{Limits, Server};
use flex_auth::State;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::broker::{mint, start_broker, Upstream, AUDIENCE, ISSUER};
use support::jwt::{self, TestKey};
use support::{
    closed_within, eventually, ops_warden, required_log, send, sign_request, Reply, TestServer,
};
use tokio::net::TcpStream;

const JSON: (&str, &str) = ("content-type", "application/json");

async fn post_raw(server: &TestServer, path: &str, body: &str) -> Reply {
    server
        .send(Method::POST, path, &[JSON], body.to_owned())
        .await
}

// ---------------------------------------------------------------------------------------------
// Duplicate keys: flex-auth decides on one value, the upstream acts on the other.

#[tokio::test]
async fn duplicate_keys_are_refused_at_every_depth_of_every_decision_request() {
    let server = TestServer::start(ops_warden()).await;
    let cases = [
        (
            "/v1/check",
            r#"{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":24,"ttl_hours":4,"principals":["state-hub"]}}"#,
            "context.ttl_hours",
        ),
        (
            "/v1/check",
            r#"{"subject":{"id":"x","id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"}}"#,
            "subject.id",
        ),
        (
            "/v1/check/batch",
            r#"{"checks":[{"subject":{"id":"a"},"action":"sign","resource":{"type":"Actor","id":"a"}},{"subject":{"id":"a"},"action":"sign","resource":{"type":"Actor","id":"a"},"context":{"principals":["x"],"principals":["state-hub"]}}]}"#,
            "checks[1].context.principals",
        ),
        (
            "/access/v1/evaluation",
            r#"{"subject":{"type":"Subject","id":"a"},"action":{"name":"sign"},"resource":{"type":"Actor","id":"a","properties":{"max_ttl_hours":1,"max_ttl_hours":8760}}}"#,
            "resource.properties.max_ttl_hours",
        ),
        (
            "/access/v1/evaluations",
            r#"{"evaluations":[{"subject":{"type":"Subject","id":"a"},"action":{"name":"sign"},"resource":{"type":"Actor","id":"a"},"context":{"ttl_hours":1,"ttl\u005fhours":99}}]}"#,
            "evaluations[0].context.ttl_hours",
        ),
    ];
    for (path, body, at) in cases {
        let reply = post_raw(&server, path, body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path} {body}");
        assert_eq!(reply.error_code(), "duplicate_key", "{path}");
        assert_eq!(reply.json()["error"]["field"], at, "{path}");
    }
    // The same requests without the duplicate are decided.
    let fine = post_raw(
        &server,
        "/v1/check",
        r#"{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}"#,
    )
    .await;
    assert_eq!(fine.status, StatusCode::OK);
}

#[tokio::test]
async fn a_registry_file_with_a_duplicate_key_is_rejected_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.json");
    let duplicated = support::bridge_snapshot(8).replace(
        "\"max_ttl_hours\":8",
        "\"max_ttl_hours\":8,\"max_ttl_hours\":8760",
    );
    assert!(duplicated.contains("8760"), "{duplicated}");
    std::fs::write(&registry, &duplicated).unwrap();
    let sources = flex_auth::Sources {
        policy: support::repo_path("policies/ops-warden/policy_package.md"),
        registry: flex_auth::RegistrySource::Snapshot(registry.clone()),
    };
    let state = State::new(sources);
    let error = state
        .reload(flex_auth::state::Trigger::Startup)
        .unwrap_err()
        .message
        .clone();
    assert!(
        error.contains("duplicate key `actors[0].max_ttl_hours`"),
        "{error}"
    );
    // `flex-auth validate` says the same, with the file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(["validate", "--policy", "policies/ops-warden"])
        .arg("--registry")
        .arg(&registry)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("actors[0].max_ttl_hours"), "{text}");
}

#[tokio::test]
async fn a_token_whose_claims_name_a_key_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed-1");
    let upstream = Upstream::start().await;
    let broker = start_broker(
        support::broker::jwks_file(&dir, &[&key]),
        upstream.addr,
        AuditLog::off(),
    )
    .await;
    // Signed, valid, but `sub` twice: the JWT library keeps the last, another reader the first.
    let claims = jwt::claims("agent-demo", ISSUER, AUDIENCE).to_string();
    let doubled = claims.replacen(
        "\"sub\":\"agent-demo\"",
        "\"sub\":\"agent-blocked\",\"sub\":\"agent-demo\"",
        1,
    );
    assert_ne!(claims, doubled);
    let token = key.sign_raw_claims(&doubled);
    let reply = mint(&broker, Some(&token), &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{:?}", reply.body);
    assert_eq!(upstream.count(), 0);
    // The same token with the claims once is allowed.
    let token = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
    assert_eq!(
        mint(&broker, Some(&token), &[]).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------------
// The proxy: body types, duplicate body keys, forwarding headers.

async fn broker() -> (support::broker::Broker, Upstream, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed-1");
    let upstream = Upstream::start().await;
    let settings: AuthSettings = support::broker::jwks_file(&dir, &[&key]);
    let broker = start_broker(settings, upstream.addr, AuditLog::off()).await;
    let token = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
    (broker, upstream, token, dir)
}

#[tokio::test]
async fn a_body_route_reads_only_json_that_says_it_is_json_and_never_a_duplicate_key() {
    let (broker, upstream, token, _dir) = broker().await;
    let bearer = format!("Bearer {token}");
    let body = r#"{"role":"aws:demo-readonly","ttl_hours":1}"#;
    for content_type in [
        None,
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut headers = vec![("authorization", bearer.as_str())];
        headers.extend(content_type.map(|c| ("content-type", c)));
        let reply = send(
            broker.proxy,
            Method::POST,
            "/v1/mint-aws-creds",
            &headers,
            body,
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    // A duplicate `role`: the upstream's parser may read the other one.
    let reply = send(
        broker.proxy,
        Method::POST,
        "/v1/mint-aws-creds",
        &[("authorization", bearer.as_str()), JSON],
        r#"{"role":"aws:demo-readonly","ttl_hours":1,"role":"aws:admin"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "duplicate_key");
    assert_eq!(upstream.count(), 0, "nothing forwarded");
    // Declared JSON, read as JSON: allowed.
    let reply = send(
        broker.proxy,
        Method::POST,
        "/v1/mint-aws-creds",
        &[("authorization", bearer.as_str()), JSON],
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_query_parameter_or_header_the_route_reads_given_twice_is_refused_on_every_surface() {
    // flex-auth would decide on one `role`, the upstream's framework may read the other.
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed-1");
    let upstream = Upstream::start().await;
    let routes = flex_auth::routes::Routes::parse(
        "routes:\n  - {method: GET, path: '/v1/creds/{actor}', action: mint, \
         resource: {type: Actor, id: {path: actor}}, context: {role: {query: role}}}\n  \
         - {method: GET, path: '/v1/by-header/{actor}', action: mint, \
         resource: {type: Actor, id: {path: actor}}, context: {role: {header: x-role}}}",
    )
    .unwrap();
    let broker = support::broker::broker_with_routes(
        support::broker::jwks_file(&dir, &[&key]),
        upstream.addr,
        AuditLog::off(),
        routes,
    )
    .await;
    let bearer = format!(
        "Bearer {}",
        key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE))
    );
    let auth = ("authorization", bearer.as_str());
    let role = "aws:demo-readonly";
    // Once: allowed, on the proxy and on forward-auth.
    let once = format!("/v1/creds/agent-demo?role={role}");
    let reply = send(broker.proxy, Method::GET, &once, &[auth], "").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = send(
        broker.proxy,
        Method::GET,
        "/v1/by-header/agent-demo",
        &[auth, ("x-role", role)],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(upstream.count(), 2);
    // Twice — the same value, another value, a percent-encoded or upper-case spelling of the
    // name — refused.
    for query in [
        format!("role={role}&role={role}"),
        format!("role={role}&role=aws:admin"),
        format!("role=aws:admin&%72ole={role}"),
        format!("role={role}&ROLE=aws:admin"),
    ] {
        let uri = format!("/v1/creds/agent-demo?{query}");
        let reply = send(broker.proxy, Method::GET, &uri, &[auth], "").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        let text = String::from_utf8_lossy(&reply.body);
        assert!(text.contains("more than once"), "{query}: {text}");
        let reply = broker
            .api
            .send(
                Method::GET,
                "/v1/authz/nginx",
                &[
                    auth,
                    ("x-original-uri", uri.as_str()),
                    ("x-original-method", "GET"),
                ],
                String::new(),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "forward-auth {query}"
        );
    }
    let reply = send(
        broker.proxy,
        Method::GET,
        "/v1/by-header/agent-demo",
        &[auth, ("x-role", role), ("x-role", "aws:admin")],
        "",
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(upstream.count(), 2, "nothing forwarded");
}

#[tokio::test]
async fn forwarding_headers_the_client_sends_never_reach_the_upstream() {
    let (broker, upstream, token, _dir) = broker().await;
    let hostile = [
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6;host=evil.example"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
    ];
    // On the public route (no credential, no decision) …
    send(broker.proxy, Method::GET, "/healthz", &hostile, "").await;
    // … and on an allowed one.
    mint(&broker, Some(&token), &hostile).await;
    assert_eq!(upstream.count(), 2);
    for seen in [upstream.last()] {
        for (name, _) in hostile {
            match name {
                "x-forwarded-for" => assert_eq!(seen.headers[name], "127.0.0.1"),
                "x-forwarded-proto" => assert_eq!(seen.headers[name], "http"),
                "x-forwarded-host" => {
                    assert_ne!(seen.headers[name], "evil.example");
                }
                _ => assert!(seen.headers.get(name).is_none(), "{name} reached upstream"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AuthZEN properties.

#[tokio::test]
async fn authzen_properties_cannot_raise_limits_or_invent_an_actor_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("decisions.jsonl");
    let audit = required_log(Sink::File(log_path.clone()));
    let server = TestServer::start_with_audit(ops_warden(), ApiConfig::default(), audit).await;
    // An unknown subject claims the production actor's limits are wide open.
    let raise = json!({
        "subject": {"type": "Subject", "id": "mallory"},
        "action": {"name": "sign"},
        "resource": {"type": "Actor", "id": "agt-state-hub-bridge",
                     "properties": {"max_ttl_hours": 8760, "principals": ["root"],
                                    "allowed_subjects": [{"type": "Subject", "id": "mallory"}]}},
        "context": {"ttl_hours": 8000, "principals": ["root"]},
    });
    let body = server
        .post_json("/access/v1/evaluation", &raise)
        .await
        .json();
    assert_eq!(body["decision"], false, "{body}");
    // An actor the registry does not hold cannot be described into existence.
    let mut invent = raise.clone();
    invent["resource"]["id"] = json!("agt-ghost");
    let body = server
        .post_json("/access/v1/evaluation", &invent)
        .await
        .json();
    assert_eq!(body["decision"], false, "{body}");
    assert_eq!(
        body["context"]["reasons"],
        json!(["unknown_actor_resource"])
    );
    // The record carries the properties as sent, and the context.
    let id = body["context"]["decision_id"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let record: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["decision_id"] == id)
        .unwrap();
    assert_eq!(record["properties"]["resource"]["max_ttl_hours"], 8760);
    assert_eq!(record["context"]["ttl_hours"], 8000);
}

// ---------------------------------------------------------------------------------------------
// Silent connections.

async fn serve_api(limits: Limits) -> SocketAddr {
    let state = Arc::new(State::new(ops_warden()));
    state.reload(flex_auth::state::Trigger::Startup).unwrap();
    let api = Api::new(state, ApiConfig::default())
        .unwrap()
        .with_listener(limits.clone(), None);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), api, limits)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(std::future::pending()));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_cut_at_the_header_timeout_and_never_lock_out_a_probe() {
    let addr = serve_api(Limits {
        max_connections: 10,
        header_read_timeout: Duration::from_secs(2),
        keepalive_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        ..Limits::default()
    })
    .await;
    // Ten sockets that never send a byte fill the connection limit …
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // … yet a probe gets in at once (the longest-idle silent socket makes room) …
    let started = Instant::now();
    let probe = send(addr, Method::GET, "/healthz", &[], "").await;
    assert_eq!(probe.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // … and every silent socket is closed by the header-read timeout, not the keep-alive one.
    let started = Instant::now();
    for stream in &mut silent {
        assert!(closed_within(stream, Duration::from_secs(5)).await);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// The decision log loses its file.

/// The shipped package, served with a required decision log in the file `path`.
async fn logging_to(path: &Path) -> TestServer {
    let audit = required_log(Sink::File(path.to_path_buf()));
    TestServer::start_with_audit(ops_warden(), ApiConfig::default(), audit).await
}

async fn check(server: &TestServer) -> Reply {
    server
        .post_json(
            "/v1/check",
            &sign_request(
                "agt-state-hub-bridge",
                "agt-state-hub-bridge",
                1,
                &["state-hub"],
            ),
        )
        .await
}

async fn decision_log_survives_the_loss_of_its_directory(sink: impl Fn(&Path) -> Sink) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let server =
        TestServer::start_with_audit(ops_warden(), ApiConfig::default(), required_log(sink(&dir)))
            .await;
    assert_eq!(check(&server).await.status, StatusCode::OK);
    let allows_before = allows_counted(&server).await;
    std::fs::remove_dir_all(&dir).unwrap();
    // Nothing may be allowed into a file nobody can find: 503, and unready.
    let refused = check(&server).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.error_code(), "audit_unavailable");
    // An allow the log refused was never given, so it is not counted as one.
    assert_eq!(allows_counted(&server).await, allows_before);
    eventually("readiness turns unready", async || {
        server.get("/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // The gauge says what /readyz says.
    let metrics = String::from_utf8_lossy(&server.get("/metrics").await.body).into_owned();
    assert!(
        metrics.lines().any(|l| l == "flex_auth_ready 0"),
        "{metrics}"
    );
    // The directory comes back: the sink reopens (recreates) by itself, and records land there.
    std::fs::create_dir(&dir).unwrap();
    eventually("readiness recovers", async || {
        server.get("/readyz").await.status == StatusCode::OK
    })
    .await;
    let allowed = check(&server).await;
    assert_eq!(allowed.status, StatusCode::OK);
    let id = allowed.json()["decision_id"].as_str().unwrap().to_owned();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(["decisions", "show", &id, "--decision-log"])
        .arg(sink_arg(&sink(&dir)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));
}

/// `flex_auth_decisions_total{decision="allow"}`.
async fn allows_counted(server: &TestServer) -> u64 {
    let text = String::from_utf8_lossy(&server.get("/metrics").await.body).into_owned();
    text.lines()
        .find(|l| l.starts_with("flex_auth_decisions_total{decision=\"allow\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn sink_arg(sink: &Sink) -> String {
    match sink {
        Sink::File(p) => format!("file:{}", p.display()),
        Sink::Sqlite(p) => format!("sqlite:{}", p.display()),
        Sink::Stdout => "stdout".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_file_log_whose_directory_is_deleted_refuses_then_recovers() {
    decision_log_survives_the_loss_of_its_directory(|dir| Sink::File(dir.join("d.jsonl"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_sqlite_log_whose_directory_is_deleted_refuses_then_recovers() {
    decision_log_survives_the_loss_of_its_directory(|dir| Sink::Sqlite(dir.join("d.db"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_log_file_is_recreated_before_the_next_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    let server = logging_to(&path).await;
    assert_eq!(check(&server).await.status, StatusCode::OK);
    std::fs::remove_file(&path).unwrap();
    let reply = check(&server).await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply.json()["decision_id"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(&id),
        "the record is in the file the path names now"
    );
}

/// A small tmpfs mounted for the test (root only: the test is `#[ignore]`d, .ci/run runs it).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        match status {
            Ok(s) if s.success() => Self { dir },
            other => panic!("cannot mount a tmpfs ({other:?}): run this test as root"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a small tmpfs, so needs root; .ci/run runs it with --ignored"]
async fn a_full_disk_leaves_no_fragment_and_every_line_is_a_whole_record() {
    let tmpfs = Tmpfs::mount("64k");
    let path = tmpfs.path().join("d.jsonl");
    let server = logging_to(&path).await;
    let filler = tmpfs.path().join("filler");
    for round in 0..3 {
        // Fill the disk: records are refused once a write fails part-way …
        let _ = std::fs::write(&filler, vec![b'x'; 1 << 20]);
        let mut refused = 0;
        for _ in 0..200 {
            let reply = check(&server).await;
            if reply.status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(reply.error_code(), "audit_unavailable");
                refused += 1;
                break;
            }
            assert_eq!(reply.status, StatusCode::OK);
        }
        assert_eq!(refused, 1, "round {round}: the full disk refuses a record");
        // … then drained: the next records are answered and whole.
        std::fs::remove_file(&filler).unwrap();
        eventually("the log writes again", async || {
            check(&server).await.status == StatusCode::OK
        })
        .await;
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'), "round {round}");
        for line in text.lines() {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("round {round}: a line is not a record ({e}): {line}"));
        }
        // Keep the disk small for the next round.
        std::fs::write(&path, "").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_is_removed_when_the_log_is_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    std::fs::write(
        &path,
        "{\"decision_id\":\"decision:0000000000000001\"}\n{\"decis",
    )
    .unwrap();
    let server = logging_to(&path).await;
    assert_eq!(check(&server).await.status, StatusCode::OK);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    for line in text.lines() {
        serde_json::from_str::<Value>(line).unwrap();
    }
}
