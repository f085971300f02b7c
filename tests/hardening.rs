//! Production hardening over real sockets: HTTPS with certificates made in the test (h2 and
//! http/1.1, rotation on disk), mTLS with a SAN allow-list, slowloris and size limits, load
//! shedding, the request deadline, keep-alive idling, and graceful shutdown of the real binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flex_auth::api::{Api, ApiConfig};
use flex_auth::server::{Limits, Server};
use flex_auth::tls::{Tls, TlsSettings};
use flex_auth::State;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::tls::{client_config, connect, install, Ca};
use support::{closed_within, eventually, ops_warden, read_reply, send, spawn_binary, DEADLINE};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn check_body() -> Value {
    support::sign_request(
        "agt-state-hub-bridge",
        "agt-state-hub-bridge",
        1,
        &["state-hub"],
    )
}

/// The API over the shipped package, served with `limits` (and `tls`) on `127.0.0.1:0`.
async fn serve(limits: Limits, tls: Option<Arc<Tls>>) -> SocketAddr {
    let state = Arc::new(State::new(ops_warden()));
    state.reload(flex_auth::state::Trigger::Startup).unwrap();
    let api = Api::new(state, ApiConfig::default())
        .unwrap()
        .with_listener(limits.clone(), tls.clone());
    let metrics = api.metrics().clone();
    let mut server = Server::bind("127.0.0.1:0".parse().unwrap(), api, limits)
        .await
        .unwrap()
        .with_metrics(metrics);
    if let Some(tls) = tls {
        tls.spawn_reload();
        server = server.with_tls(tls);
    }
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(std::future::pending()));
    addr
}

fn limits() -> Limits {
    Limits {
        shutdown_grace: Duration::from_secs(5),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_negotiates_h2_and_http1_and_new_connections_see_a_rotated_certificate() {
    let ca = Ca::new("test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.server();
    let (cert, key) = install(dir.path(), &first);
    let tls = Arc::new(
        Tls::load(TlsSettings {
            cert,
            key,
            client_ca: None,
            allowed_sans: Vec::new(),
        })
        .unwrap(),
    );
    let addr = serve(limits(), Some(tls)).await;

    let mut h2 = connect(addr, client_config(&ca, None, &[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(h2.alpn, "h2");
    let (status, body) = h2
        .request(Method::POST, "/v1/check", &check_body())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["decision_id"]
        .as_str()
        .unwrap()
        .starts_with("decision:"));

    let mut h1 = connect(addr, client_config(&ca, None, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(h1.alpn, "http/1.1");
    let (status, body) = h1
        .request(Method::POST, "/v1/check", &check_body())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h1.server_cert, first.der);

    // Plain HTTP on the TLS port is not served.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut reply)).await;
    assert!(!String::from_utf8_lossy(&reply).contains("\"ok\""));

    // cert-manager rotates the Secret: new connections get the new certificate.
    let second = ca.server();
    install(dir.path(), &second);
    eventually(
        "a new connection presents the rotated certificate",
        async || {
            let fresh = connect(addr, client_config(&ca, None, &[b"h2"]))
                .await
                .unwrap();
            fresh.server_cert == second.der
        },
    )
    .await;
    // Connections opened before the rotation keep working.
    let (status, _) = h2
        .request(Method::POST, "/v1/check", &check_body())
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    // A broken rotation (key of another certificate) keeps the current one in force.
    let third = ca.server();
    std::fs::write(dir.path().join("tls.key"), &third.key_pem).unwrap();
    let status = async || {
        let mut c = connect(addr, client_config(&ca, None, &[b"http/1.1"]))
            .await
            .unwrap();
        let (_, status) = c
            .request(Method::GET, "/v1/status", &json!({}))
            .await
            .unwrap();
        (c.server_cert.clone(), status)
    };
    eventually("the failed reload is reported", async || {
        status().await.1["tls"]["last_reload_error"].is_string()
    })
    .await;
    let (served, body) = status().await;
    assert_eq!(
        served, second.der,
        "the previous certificate stays in force"
    );
    assert_eq!(body["tls"]["reloads"]["ok"], 1, "{body}");
    assert_eq!(body["tls"]["enabled"], true);
    assert_eq!(body["limits"]["header_read_timeout"], "10s");
    assert_eq!(body["limits"]["max_in_flight"], 1024);
}

#[test]
fn mtls_refuses_missing_foreign_and_unlisted_client_certificates() {
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let stranger = Ca::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = install(dir.path(), &ca.server());
    let client_ca = dir.path().join("client-ca.crt");
    std::fs::write(&client_ca, clients.pem()).unwrap();
    let allowed = "spiffe://cluster.local/ns/ops/sa/warden";
    let (child, addr) = spawn_binary(&[
        "--policy",
        "policies/ops-warden/policy_package.md",
        "--registry",
        "registry/ops-warden/production_registry_snapshot.json",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        client_ca.to_str().unwrap(),
        "--client-allowed-san",
        allowed,
    ]);
    let addr: SocketAddr = addr.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // No client certificate: the handshake succeeds (probes need it), decisions do not.
        let mut anonymous = connect(addr, client_config(&ca, None, &[b"http/1.1"]))
            .await
            .unwrap();
        let (status, body) = anonymous
            .request(Method::POST, "/v1/check", &check_body())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "client_certificate_required");
        let (status, _) = anonymous
            .request(Method::GET, "/readyz", &json!({}))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);

        // Signed by the client CA but not on the allow-list.
        let other = clients.client("spiffe://cluster.local/ns/ops/sa/intruder");
        let mut unlisted = connect(addr, client_config(&ca, Some(&other), &[b"h2"]))
            .await
            .unwrap();
        let (status, body) = unlisted
            .request(
                Method::POST,
                "/v1/check/batch",
                &json!({"checks": [check_body()]}),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"]["code"], "client_certificate_not_allowed");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spiffe://cluster.local/ns/ops/sa/intruder"));

        // A certificate from a CA flex-auth does not trust fails the handshake.
        let foreign = stranger.client(allowed);
        let refused = async {
            let mut c = connect(addr, client_config(&ca, Some(&foreign), &[b"http/1.1"])).await?;
            // TLS 1.3 reports a refused client certificate on the first read.
            c.request(Method::GET, "/healthz", &json!({}))
                .await
                .map_err(std::io::Error::other)
        };
        assert!(
            refused.await.is_err(),
            "a foreign client certificate must be refused"
        );

        // The allowed identity gets decisions, on h2 and http/1.1.
        let identity = clients.client(allowed);
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let mut c = connect(addr, client_config(&ca, Some(&identity), &[alpn]))
                .await
                .unwrap();
            let (status, body) = c
                .request(Method::POST, "/v1/check", &check_body())
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK, "{body}");
            assert!(body["decision"].is_string());
        }
        let (_, status) = anonymous
            .request(Method::GET, "/v1/status", &json!({}))
            .await
            .unwrap();
        assert_eq!(status["tls"]["client_allowed_sans"], json!([allowed]));
    });
    support::stop_binary(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_by_the_header_timeout_while_others_are_served() {
    let addr = serve(
        Limits {
            header_read_timeout: Duration::from_millis(800),
            ..limits()
        },
        None,
    )
    .await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let request = b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut = false;
    for byte in request.iter().take(100) {
        if slow.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        // Meanwhile, other clients are answered normally.
        let reply = send(addr, Method::GET, "/healthz", &[], "").await;
        assert_eq!(reply.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let closed = cut || closed_within(&mut slow, Duration::from_secs(3)).await;
    assert!(closed, "the slow client was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_and_oversized_bodies_413() {
    let addr = serve(
        Limits {
            max_header_bytes: 16 * 1024,
            ..limits()
        },
        None,
    )
    .await;
    let big = "a".repeat(20 * 1024);
    let reply = send(addr, Method::GET, "/healthz", &[("x-big", &big)], "").await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let small = "a".repeat(8 * 1024);
    let reply = send(addr, Method::GET, "/healthz", &[("x-big", &small)], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = format!(r#"{{"pad":"{}"}}"#, "a".repeat(100 * 1024));
    let reply = send(
        addr,
        Method::POST,
        "/v1/check",
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "body_too_large");
}

/// A `POST /v1/check` whose body stays incomplete: it holds an in-flight slot until finished.
async fn start_slow_request(addr: SocketAddr, body: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    stream
}

/// A request the server is handling: `Expect: 100-continue` makes hyper say `100 Continue` once
/// the handler reads the body, which then never comes (within the test).
async fn start_busy_request(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = [0_u8; 256];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    stream
}

async fn finish_slow_request(stream: &mut TcpStream, body: &str) -> String {
    stream
        .write_all(&body.as_bytes()[body.len() / 2..])
        .await
        .unwrap();
    let mut reply = vec![0_u8; 8192];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut reply))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&reply[..n]).into_owned()
}

/// An upstream that accepts connections and never answers; counts the connections.
async fn hung_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_in_flight_limit_requests_are_shed_with_503_and_none_hangs() {
    use flex_auth::auth::{AuthSettings, Authenticator};
    use flex_auth::gate::Gate;
    use flex_auth::proxy::Proxy;
    use flex_auth::routes::Routes;
    // Requests held in flight by an upstream that never answers (until the 5 s upstream
    // timeout) on a proxy listener that allows four at once.
    let state = Arc::new(State::new(ops_warden()));
    state.reload(flex_auth::state::Trigger::Startup).unwrap();
    let api = Api::new(state.clone(), ApiConfig::default()).unwrap();
    let metrics = api.metrics().clone();
    let routes = Routes::parse(
        "routes:\n  - name: slow\n    method: GET\n    path: /slow\n    public: true\n  - name: health\n    method: GET\n    path: /healthz\n    public: true\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
    let mut settings = AuthSettings::new("https://issuer.example", &["x"]);
    settings.hs256_secret_file = Some(secret);
    let auth = Arc::new(Authenticator::new(settings).await.unwrap());
    let gate = Gate::new(
        state,
        Arc::new(routes),
        auth,
        api.audit().clone(),
        metrics.clone(),
    );
    let (upstream, accepted) = hung_upstream().await;
    let proxy = Proxy::new(
        gate,
        format!("http://{upstream}").parse().unwrap(),
        Duration::from_secs(5),
    );
    let proxy_limits = Limits {
        max_in_flight: 4,
        ..limits()
    };
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), proxy, proxy_limits)
        .await
        .unwrap()
        .with_metrics(metrics.clone());
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(std::future::pending()));
    let (api_addr, _stop, _) = support::serve_handler(api).await;

    let held: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { send(addr, Method::GET, "/slow", &[], "").await }))
        .collect();
    // All four reached the upstream, so all four hold their slots (for the 5 s upstream timeout).
    eventually("the held requests reach the upstream", async || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 4
    })
    .await;
    let started = Instant::now();
    let shed = send(addr, Method::GET, "/slow", &[], "").await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    // A burst of 200 more: every one answered at once with 503 + Retry-After, none queued.
    let burst: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { send(addr, Method::GET, "/slow", &[], "").await }))
        .collect();
    for task in burst {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.headers["retry-after"], "1");
        assert_eq!(reply.error_code(), "overloaded");
        assert_eq!(reply.json()["fail_closed"], true);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "none waited for a slot"
    );
    // On the proxy listener `/healthz` is the upstream's route, not flex-auth's probe: it is shed
    // like any other request (only the decision listener's own probes are exempt).
    let upstream_health = send(addr, Method::GET, "/healthz", &[], "").await;
    assert_eq!(upstream_health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream_health.error_code(), "overloaded");
    // The held requests end (504 at the upstream timeout), and capacity comes back.
    for task in held {
        assert_eq!(task.await.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
    }
    let again = send(addr, Method::GET, "/slow", &[], "").await;
    assert_eq!(again.status, StatusCode::GATEWAY_TIMEOUT, "admitted again");
    let metrics = send(api_addr, Method::GET, "/metrics", &[], "").await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.lines().any(
            |l| l.starts_with("flex_auth_refused_total{reason=\"overloaded\"}")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_decision_listeners_probes_are_answered_past_the_in_flight_limit() {
    // A check held in flight: a required SQLite decision log whose write lock the test holds, so
    // the check waits for its record (each group fails after the 2 s busy timeout). On a busy
    // machine that window can pass before the first probe looks; then the whole setup is tried
    // again, a bounded number of times.
    for attempt in 1..=3 {
        if probes_pass_a_held_slot().await {
            return;
        }
        eprintln!("attempt {attempt}: the held window passed before it was seen; again");
    }
    panic!("no check stayed in flight long enough in 3 attempts");
}

/// One attempt: `false` when the check was never seen holding the slot.
async fn probes_pass_a_held_slot() -> bool {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let state = Arc::new(State::new(ops_warden()));
    state.reload(flex_auth::state::Trigger::Startup).unwrap();
    let limits = Limits {
        max_in_flight: 1,
        ..limits()
    };
    let api = Api::new(state, ApiConfig::default())
        .unwrap()
        .with_audit(support::required_log(flex_auth::audit::Sink::Sqlite(
            db.clone(),
        )))
        .with_listener(limits.clone(), None);
    let server = Server::bind("127.0.0.1:0".parse().unwrap(), api, limits)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(std::future::pending()));
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let json = [("content-type", "application/json")];
    let body = check_body().to_string();
    let held = {
        let body = body.clone();
        tokio::spawn(async move { send(addr, Method::POST, "/v1/check", &json, body).await })
    };
    let seen = tokio::time::timeout(Duration::from_millis(1500), async {
        for _ in 0..150 {
            if send(addr, Method::GET, "/v1/status", &[], "").await.status
                == StatusCode::SERVICE_UNAVAILABLE
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    })
    .await
    .unwrap_or(false);
    if !seen {
        lock.execute_batch("ROLLBACK").unwrap();
        let _ = held.await;
        return false;
    }
    let started = Instant::now();
    let shed = send(addr, Method::POST, "/v1/check", &json, body).await;
    assert_eq!(shed.error_code(), "overloaded");
    assert_eq!(
        send(addr, Method::GET, "/healthz", &[], "").await.status,
        StatusCode::OK
    );
    assert_ne!(
        send(addr, Method::GET, "/readyz", &[], "")
            .await
            .error_code(),
        "overloaded"
    );
    if started.elapsed() >= Duration::from_secs(2) {
        // The window closed while the probes ran; what they answered proves nothing.
        lock.execute_batch("ROLLBACK").unwrap();
        let _ = held.await;
        return false;
    }
    lock.execute_batch("ROLLBACK").unwrap();
    let reply = held.await.unwrap();
    assert!(
        matches!(
            reply.status,
            StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE
        ),
        "{:?}",
        reply.status
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_hold_no_in_flight_slot_and_are_cut_by_the_body_read_timeout() {
    let addr = serve(
        Limits {
            max_in_flight: 4,
            body_read_timeout: Duration::from_secs(2),
            ..limits()
        },
        None,
    )
    .await;
    let body = check_body().to_string();
    // Twenty clients trickle their bodies (half sent, then nothing) …
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(start_slow_request(addr, &body).await);
    }
    // … and a client with a whole body is still decided, not shed.
    let reply = send(
        addr,
        Method::POST,
        "/v1/check",
        &[("content-type", "application/json")],
        body.clone(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    // The trickling ones get 408 body_timeout once the body-read timeout passes.
    let started = Instant::now();
    for stream in &mut held {
        let reply = read_reply(stream).await;
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        assert!(reply.contains("body_timeout"), "{reply}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_answers_503_and_idle_connections_are_closed() {
    let addr = serve(
        Limits {
            request_timeout: Duration::from_millis(500),
            keepalive_timeout: Duration::from_millis(700),
            ..limits()
        },
        None,
    )
    .await;
    let body = check_body().to_string();
    let mut stream = start_slow_request(addr, &body).await;
    let reply = read_reply(&mut stream).await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("deadline_exceeded"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("retry-after: 1"),
        "{reply}"
    );

    // A kept-alive connection with nothing in flight is closed after the keep-alive timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let addr = serve(
        Limits {
            max_connections: 2,
            ..limits()
        },
        None,
    )
    .await;
    // Both connections are busy: each has a request in flight whose handler is reading the body.
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(start_busy_request(addr).await);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(closed_within(&mut third, Duration::from_secs(5)).await);
    drop(open);
    eventually("a slot frees when a connection leaves", async || {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = [0_u8; 512];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
            Ok(Ok(n)) if n > 0
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_once_shutdown_begins() {
    let state = Arc::new(State::new(ops_warden()));
    state.reload(flex_auth::state::Trigger::Startup).unwrap();
    let server = support::TestServer::start_api(
        state.clone(),
        Api::new(state.clone(), ApiConfig::default()).unwrap(),
    )
    .await;
    assert_eq!(server.get("/readyz").await.status, StatusCode::OK);
    state.begin_shutdown();
    let reply = server.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let checks = reply.json()["checks"].clone();
    assert!(
        checks
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "shutdown" && c["docs"] == "docs/runbook.md#shutting-down"),
        "{checks}"
    );
}

fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SHIPPED: [&str; 4] = [
    "--policy",
    "policies/ops-warden/policy_package.md",
    "--registry",
    "registry/ops-warden/production_registry_snapshot.json",
];

#[test]
fn sigterm_drains_in_flight_requests_closes_idle_ones_and_refuses_new_connections() {
    let mut args = SHIPPED.to_vec();
    args.extend(["--shutdown-grace", "8s"]);
    let (mut child, addr) = spawn_binary(&args);
    let addr: SocketAddr = addr.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = check_body().to_string();
    let (mut slow, mut idle) = runtime.block_on(async {
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0_u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let slow = start_slow_request(addr, &body).await;
        // The slow request's head has reached the handler once /v1/status shows it is serving.
        assert_eq!(
            send(addr, Method::GET, "/readyz", &[], "").await.status,
            StatusCode::OK
        );
        (slow, idle)
    });
    let signalled = Instant::now();
    sigterm(&child);
    runtime.block_on(async {
        // The idle keep-alive connection is closed at once; it does not hold the process.
        assert!(closed_within(&mut idle, Duration::from_secs(3)).await);
        // New connections are refused.
        eventually("new connections are refused", async || {
            TcpStream::connect(addr).await.is_err()
        })
        .await;
        // The in-flight request still completes with its decision.
        let reply = finish_slow_request(&mut slow, &body).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("decision_id"), "{reply}");
    });
    let status = wait_exit(&mut child, Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "a clean drain exits 0");
    assert!(signalled.elapsed() < Duration::from_secs(8));
}

#[test]
fn a_hung_request_is_cut_at_the_shutdown_grace() {
    let mut args = SHIPPED.to_vec();
    args.extend(["--shutdown-grace", "1s"]);
    let (mut child, addr) = spawn_binary(&args);
    let addr: SocketAddr = addr.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = check_body().to_string();
    let _hung = runtime.block_on(async {
        let slow = start_slow_request(addr, &body).await;
        assert_eq!(
            send(addr, Method::GET, "/readyz", &[], "").await.status,
            StatusCode::OK
        );
        slow
    });
    let signalled = Instant::now();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(1), "requests cut at the grace: exit 1");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

/// An HTTPS server with `leaf`: `/jwks.json` answers `jwks`, anything else 200 `{"upstream":"tls"}`.
async fn tls_upstream(leaf: &support::tls::Leaf, jwks: Value) -> SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der.clone()],
        rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let body = if request.uri().path() == "/jwks.json" {
                            jwks.to_string()
                        } else {
                            json!({"upstream": "tls", "path": request.uri().path()}).to_string()
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_and_the_jwks_client_trust_a_private_ca_only_when_told() {
    use flex_auth::auth::{AuthSettings, Authenticator, JwksSource};
    use flex_auth::gate::Gate;
    use flex_auth::proxy::Proxy;
    use flex_auth::routes::Routes;
    let ca = Ca::new("private CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = support::jwt::TestKey::ed25519("ed-1");
    let upstream = tls_upstream(&ca.server(), support::jwt::jwks(&[&key])).await;
    let jwks: JwksSource = format!("https://127.0.0.1:{}/jwks.json", upstream.port())
        .parse()
        .unwrap();

    let sources = flex_auth::Sources {
        policy: support::repo_path("deploy/examples/broker/policy.cedar"),
        registry: flex_auth::RegistrySource::Snapshot(support::repo_path(
            "deploy/examples/broker/registry.json",
        )),
    };
    let start = async |trust: bool| {
        let state = Arc::new(State::new(sources.clone()));
        state.reload(flex_auth::state::Trigger::Startup).unwrap();
        let mut settings = AuthSettings::new("https://issuer.example", &["broker"]);
        settings.jwks = Some(jwks.clone());
        settings.jwks_ca = trust.then(|| ca_file.clone());
        let auth = Arc::new(Authenticator::new(settings).await.unwrap());
        let routes =
            Routes::load(&support::repo_path("deploy/examples/broker/routes.yaml")).unwrap();
        let api = Api::new(state.clone(), ApiConfig::default()).unwrap();
        let gate = Gate::new(
            state,
            Arc::new(routes),
            auth.clone(),
            api.audit().clone(),
            api.metrics().clone(),
        );
        let mut proxy = Proxy::new(
            gate,
            format!("https://127.0.0.1:{}", upstream.port())
                .parse()
                .unwrap(),
            Duration::from_secs(2),
        );
        if trust {
            proxy = proxy.with_tls(flex_auth::tls::client_config(Some(&ca_file)).unwrap());
        }
        let (addr, stop, _) = support::serve_handler(proxy).await;
        (addr, stop, auth)
    };
    let token = key.sign(&support::jwt::claims(
        "agent-demo",
        "https://issuer.example",
        "broker",
    ));
    let bearer = format!("Bearer {token}");
    let mint = async |addr: SocketAddr| {
        send(
            addr,
            Method::POST,
            "/v1/mint-aws-creds",
            &[
                ("content-type", "application/json"),
                ("authorization", bearer.as_str()),
            ],
            json!({"role": "aws:demo-readonly", "ttl_hours": 1}).to_string(),
        )
        .await
    };

    // With the CA bundle: keys are fetched over HTTPS and the request reaches the TLS upstream.
    let (addr, _stop, auth) = start(true).await;
    assert!(auth.readiness().is_ok(), "{:?}", auth.readiness());
    let reply = mint(addr).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["upstream"], "tls");

    // Without it (public roots only) the private CA is not trusted: keys do not load, so the
    // request is refused 503 and nothing is forwarded.
    let (addr, _stop, auth) = start(false).await;
    assert!(auth.readiness().is_err());
    let reply = mint(addr).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.error_code(), "auth_unavailable");
}

#[test]
fn tls_and_limit_settings_that_cannot_work_fail_boot_with_their_setting() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (cert, key) = install(dir.path(), &ca.server());
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, ca.server().key_pem).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (cert, key, other_key, garbage) = (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
        other_key.to_str().unwrap().to_owned(),
        garbage.to_str().unwrap().to_owned(),
    );
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(SHIPPED)
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let routes = "deploy/examples/broker/routes.yaml";
    let secret = "deploy/examples/broker/demo-hs256.secret";
    let proxy = [
        "--routes",
        routes,
        "--hs256-secret-file",
        secret,
        "--issuer",
        "i",
        "--audience",
        "a",
        "--proxy-listen",
        "127.0.0.1:0",
    ];
    let with_proxy = |extra: &[&'static str]| {
        let mut args = proxy.to_vec();
        args.extend_from_slice(extra);
        args
    };
    let cases: Vec<(Vec<&str>, &str, &str)> = vec![
        (
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            "FLEX_AUTH_TLS_CERT",
            "tls-invalid",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &garbage],
            "FLEX_AUTH_TLS_KEY",
            "tls-invalid",
        ),
        (
            vec!["--tls-cert", &cert, "--tls-key", &other_key],
            "FLEX_AUTH_TLS_CERT",
            "tls-invalid",
        ),
        (
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--client-ca",
                &garbage,
            ],
            "FLEX_AUTH_CLIENT_CA",
            "tls-invalid",
        ),
        (
            with_proxy(&[
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-ca",
                "README.md",
            ]),
            "FLEX_AUTH_UPSTREAM_CA",
            "upstream-invalid",
        ),
        (
            with_proxy(&[
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-timeout",
                "30s",
            ]),
            "FLEX_AUTH_UPSTREAM_TIMEOUT",
            "upstream-invalid",
        ),
    ];
    for (extra, setting, problem) in cases {
        let (code, stderr) = run(&extra);
        assert_eq!(code, Some(78), "{extra:?}: {stderr}");
        let line = stderr.lines().last().unwrap_or("");
        assert!(
            line.starts_with(&format!("BOOT_FAIL setting={setting} "))
                && line.ends_with(&format!("docs=docs/runbook.md#boot-{problem}")),
            "{extra:?}: {stderr}"
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "the BOOT_FAIL is the only line: {stderr}"
        );
    }
    // Flags that need another flag are refused by the parser (exit 2, usage).
    let (code, stderr) = run(&["--client-ca", &cert]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let (code, stderr) = run(&["--request-timeout", "0s"]);
    assert_eq!(code, Some(2), "{stderr}");
}

/// The log collector goes away: stderr becomes a closed pipe. Log lines are dropped; the server
/// keeps answering and drains cleanly (it used to panic: tracing-subscriber reported the failed
/// write with `eprintln!` to the same broken stderr).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_drops_log_lines_and_never_stops_the_server() {
    use std::io::BufRead as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(["--log-format", "json", "--log-level", "debug", "serve"])
        .args(["--listen", "127.0.0.1:0", "--policy", "policies/ops-warden"])
        .args([
            "--registry",
            "registry/ops-warden/production_registry_snapshot.json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs `listening`").unwrap();
        if line.contains("\"listening\"") {
            let v: Value = serde_json::from_str(&line).unwrap();
            break v["fields"]["addr"]
                .as_str()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap();
        }
    };
    // The reading end closes: every later log line fails to write (EPIPE).
    drop(lines);
    let body = json!({
        "subject": {"id": "agt-state-hub-bridge"}, "action": "sign",
        "resource": {"type": "Actor", "id": "agt-state-hub-bridge"},
        "context": {"ttl_hours": 4, "principals": ["state-hub"]},
    })
    .to_string();
    for _ in 0..20 {
        let reply = send(
            addr,
            Method::POST,
            "/v1/check",
            &[("content-type", "application/json")],
            body.clone(),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        child.try_wait().unwrap(),
        None,
        "the server stopped after its log pipe closed"
    );
    support::stop_binary(child);
}
