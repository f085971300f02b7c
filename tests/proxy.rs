//! The fail-closed reverse proxy and forward-auth over real sockets: a real upstream (a small
//! hyper server that records what reaches it), real signed JWTs (Ed25519, ES256, RS256, HS256)
//! and a JWKS served over HTTP, on the shipped broker example (deploy/examples/broker).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flex_auth::audit::{AuditLog, Sink};
use flex_auth::auth::AuthSettings;
use flex_auth::routes::Routes;
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::jwt::{self, TestKey};
use support::{repo_path, required_log, send};

use support::broker::*;

/// A JWKS over HTTP whose document can change, counting fetches.
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        count.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap().to_string();
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            document,
            fetches,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_request_is_forwarded_with_the_decision_id_and_no_spoofed_headers() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed-1");
    let broker = start_broker(jwks_file(&dir, &[&key]), upstream.addr, AuditLog::off()).await;
    let token = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));

    let reply = mint(
        &broker,
        Some(&token),
        &[
            ("x-flex-auth-decision-id", "decision:forged"),
            ("x-flex-auth-subject", "root"),
        ],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["credentials"], "minted");
    assert_eq!(reply.headers["x-upstream"], "yes");
    let id = reply.headers["x-flex-auth-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("decision:") && id.len() == 25, "{id}");

    let seen = upstream.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/v1/mint-aws-creds");
    assert_eq!(
        seen.headers
            .get_all("x-flex-auth-decision-id")
            .iter()
            .count(),
        1
    );
    assert_eq!(seen.headers["x-flex-auth-decision-id"], id.as_str());
    assert_eq!(
        seen.headers.get_all("x-flex-auth-subject").iter().count(),
        1
    );
    assert_eq!(seen.headers["x-flex-auth-subject"], "agent-demo");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    let body: Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(
        body["role"], "aws:demo-readonly",
        "the buffered body is forwarded whole"
    );

    // A public route is forwarded without a credential or a decision.
    let health = send(broker.proxy, Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.headers.get("x-flex-auth-decision-id").is_none());
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signature_algorithm_verifies_and_a_deny_never_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (ed, es, rs) = (
        TestKey::ed25519("ed"),
        TestKey::es256("es"),
        TestKey::rs256("rs"),
    );
    let broker = start_broker(
        jwks_file(&dir, &[&ed, &es, &rs]),
        upstream.addr,
        AuditLog::off(),
    )
    .await;
    for key in [&ed, &es, &rs] {
        let token = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
        assert_eq!(
            mint(&broker, Some(&token), &[]).await.status,
            StatusCode::OK,
            "{}",
            key.alg()
        );
    }
    assert_eq!(upstream.count(), 3);

    let blocked = ed.sign(&jwt::claims("agent-blocked", ISSUER, AUDIENCE));
    let reply = mint(&broker, Some(&blocked), &[]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let body = reply.json();
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["reasons"], json!(["actor_suspended"]));
    assert!(body["decision_id"]
        .as_str()
        .unwrap()
        .starts_with("decision:"));
    assert_eq!(
        reply.headers["x-flex-auth-decision-id"],
        body["decision_id"].as_str().unwrap()
    );
    assert_eq!(upstream.count(), 3, "the upstream saw nothing of the deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_get_401_and_the_upstream_sees_nothing() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rs = TestKey::rs256("rs");
    let other = TestKey::rs256("rs"); // same kid, another key
    let broker = start_broker(jwks_file(&dir, &[&rs]), upstream.addr, AuditLog::off()).await;
    let good = jwt::claims("agent-demo", ISSUER, AUDIENCE);
    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        change(&mut claims);
        claims
    };
    let now = jwt::now();
    // The public key used as an HMAC secret: the classic HS/RS confusion.
    let rsa_public_as_secret = TestKey::hs256(rs.jwk()["n"].as_str().unwrap().as_bytes());
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no credential", None, "missing"),
        ("garbage", Some("not-a-jwt".to_owned()), "malformed"),
        (
            "expired",
            Some(rs.sign(&with(&|c| c["exp"] = json!(now - 3600)))),
            "expired",
        ),
        (
            "not yet valid",
            Some(rs.sign(&with(&|c| c["nbf"] = json!(now + 3600)))),
            "not_yet_valid",
        ),
        (
            "issued in the future",
            Some(rs.sign(&with(&|c| c["iat"] = json!(now + 3600)))),
            "not_yet_valid",
        ),
        (
            "no exp",
            Some(rs.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }))),
            "missing_claim",
        ),
        (
            "wrong issuer",
            Some(rs.sign(&with(&|c| c["iss"] = json!("https://evil.example")))),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            Some(rs.sign(&with(&|c| c["aud"] = json!("other")))),
            "wrong_audience",
        ),
        (
            "alg none",
            Some(jwt::unsigned(&good)),
            "algorithm_not_allowed",
        ),
        (
            "HS256 with the RSA public key",
            Some(
                rsa_public_as_secret.sign_with_header(&json!({"alg": "HS256", "kid": "rs"}), &good),
            ),
            "algorithm_not_allowed",
        ),
        (
            "unknown kid",
            Some(rs.sign_with_header(&json!({"alg": "RS256", "kid": "nope"}), &good)),
            "unknown_kid",
        ),
        (
            "signed by another key",
            Some(other.sign(&good)),
            "bad_signature",
        ),
        (
            "no subject",
            Some(rs.sign(&with(&|c| {
                c.as_object_mut().unwrap().remove("sub");
            }))),
            "missing_claim",
        ),
    ];
    for (what, token, reason) in &cases {
        let reply = mint(&broker, token.as_deref(), &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {:?}",
            reply.body
        );
        let challenge = reply.headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert_eq!(reply.error_code(), "unauthenticated", "{what}");
        let metrics = String::from_utf8(broker.api.get("/metrics").await.body.to_vec()).unwrap();
        assert!(
            !metrics.contains(&format!(
                "flex_auth_auth_failures_total{{reason=\"{reason}\"}} 0\n"
            )),
            "{what}: counted as {reason}"
        );
    }
    assert_eq!(upstream.count(), 0, "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_ambiguous_unreachable_and_slow_are_refused() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::es256("es");
    let token = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
    let bearer = format!("Bearer {token}");
    let broker = start_broker(jwks_file(&dir, &[&key]), upstream.addr, AuditLog::off()).await;

    let unrouted = send(
        broker.proxy,
        Method::POST,
        "/v1/admin/delete-everything",
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert_eq!(unrouted.status, StatusCode::FORBIDDEN);
    assert_eq!(unrouted.json()["reasons"], json!(["no_route"]));
    let dotted = send(
        broker.proxy,
        Method::GET,
        "/v1/x/../../healthz",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(dotted.status, StatusCode::BAD_REQUEST);
    assert_eq!(dotted.error_code(), "ambiguous_path");
    assert_eq!(upstream.count(), 0);

    // Upstream down: 502.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let down = start_broker(jwks_file(&dir, &[&key]), closed_addr, AuditLog::off()).await;
    let reply = mint(&down, Some(&token), &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "upstream_unavailable");
    let status = down
        .api
        .wait_for_status("the upstream check to fail", |s| {
            s["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "upstream" && c["status"] == "fail")
        })
        .await;
    assert_eq!(status["status"], "unready");
    assert_eq!(
        down.api.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    broker
        .api
        .wait_for_status("the live upstream to pass", |s| s["status"] == "ready")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_is_a_504() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed");
    let routes = Routes::parse(
        "routes:\n  - {name: slow, method: GET, path: /slow, action: mint, \
         resource: {type: Actor, id: {claim: sub}}, context: {role: {value: 'aws:demo-readonly'}}}",
    )
    .unwrap();
    let broker = broker_with_routes(
        jwks_file(&dir, &[&key]),
        upstream.addr,
        AuditLog::off(),
        routes,
    )
    .await;
    let bearer = format!(
        "Bearer {}",
        key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE))
    );
    let started = std::time::Instant::now();
    let reply = send(
        broker.proxy,
        Method::GET,
        "/slow",
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code(), "upstream_timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let metrics = String::from_utf8(broker.api.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("flex_auth_upstream_responses_total{class=\"timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_for_nginx_and_envoy_answers_without_a_body() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed");
    let broker = start_broker(jwks_file(&dir, &[&key]), upstream.addr, AuditLog::off()).await;
    let bearer = format!(
        "Bearer {}",
        key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE))
    );
    let blocked = format!(
        "Bearer {}",
        key.sign(&jwt::claims("agent-blocked", ISSUER, AUDIENCE))
    );

    // nginx: the mint route reads the body, which auth_request never sends: denied.
    let nginx = broker
        .api
        .send(
            Method::GET,
            "/v1/authz/nginx",
            &[
                ("x-original-uri", "/v1/mint-aws-creds"),
                ("x-original-method", "POST"),
                ("authorization", &bearer),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(nginx.status, StatusCode::FORBIDDEN);
    assert_eq!(nginx.error_code(), "body_unavailable");
    let public = broker
        .api
        .send(
            Method::GET,
            "/v1/authz/nginx",
            &[("x-original-uri", "/healthz"), ("x-original-method", "GET")],
            Bytes::new(),
        )
        .await;
    assert_eq!(public.status, StatusCode::OK);
    assert!(public.body.is_empty());
    let unrouted = broker
        .api
        .send(
            Method::GET,
            "/v1/authz/nginx",
            &[
                ("x-original-uri", "/nope"),
                ("x-original-method", "GET"),
                ("authorization", &bearer),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(unrouted.status, StatusCode::FORBIDDEN);

    // Envoy sends the body (with_request_body): allowed with headers and no body.
    let body = json!({"role": "aws:demo-readonly"}).to_string();
    let envoy = broker
        .api
        .send(
            Method::POST,
            "/v1/authz/envoy/v1/mint-aws-creds",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(envoy.status, StatusCode::OK, "{:?}", envoy.body);
    assert!(envoy.body.is_empty(), "an allow carries no body");
    assert!(envoy.headers["x-flex-auth-decision-id"]
        .to_str()
        .unwrap()
        .starts_with("decision:"));
    assert_eq!(envoy.headers["x-flex-auth-subject"], "agent-demo");
    let denied = broker
        .api
        .send(
            Method::POST,
            "/v1/authz/envoy/v1/mint-aws-creds",
            &[
                ("authorization", &blocked),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.json()["reasons"], json!(["actor_suspended"]));
    let unauthenticated = broker
        .api
        .send(
            Method::GET,
            "/v1/authz/envoy/v1/mint-aws-creds",
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(
        unauthenticated.status,
        StatusCode::FORBIDDEN,
        "GET is not routed"
    );
    assert_eq!(upstream.count(), 0, "forward-auth never forwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_and_unknown_kids_refresh_a_bounded_number_of_times() {
    let upstream = Upstream::start().await;
    let old = TestKey::ed25519("2026-01");
    let jwks = JwksServer::start(jwt::jwks(&[&old])).await;
    let mut settings = AuthSettings::new(ISSUER, &[AUDIENCE]);
    settings.jwks = Some(jwks.url().parse().unwrap());
    settings.jwks_refresh_interval = Duration::from_millis(300);
    let broker = start_broker(settings, upstream.addr, AuditLog::off()).await;
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);
    let status = broker.api.status().await;
    assert_eq!(status["auth"]["readiness"], "ready");
    assert_eq!(status["auth"]["key_ids"][0]["kid"], "2026-01");

    // Rotation: the issuer publishes a new key and signs with it.
    let new = TestKey::es256("2026-02");
    *jwks.document.lock().unwrap() = jwt::jwks(&[&old, &new]);
    let token = new.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
    // Within the refresh interval of the start-up load the new kid is unknown (no fetch); the
    // first request after it refreshes once and is allowed.
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    loop {
        let status = mint(&broker, Some(&token), &[]).await.status;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        2,
        "one refresh for the new kid"
    );

    // A flood of unknown kids inside one refresh interval: at most one more fetch.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let token = new.sign_with_header(
            &json!({"alg": "ES256", "kid": format!("forged-{i}")}),
            &jwt::claims("agent-demo", ISSUER, AUDIENCE),
        );
        let proxy = broker.proxy;
        tasks.push(tokio::spawn(async move {
            send(
                proxy,
                Method::POST,
                "/v1/mint-aws-creds",
                &[("authorization", &format!("Bearer {token}"))],
                Bytes::from_static(b"{}"),
            )
            .await
            .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    let fetches = jwks.fetches.load(Ordering::SeqCst);
    assert!(fetches <= 3, "{fetches} fetches for 40 unknown kids");
    assert_eq!(broker.auth.jwks_loads() as usize, fetches);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hs256_secret_rotates_shows_its_fingerprint_and_fails_closed_when_unreadable() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("hs256.secret");
    let first = b"first-secret-first-secret-first-secret!!";
    std::fs::write(&secret_path, first).unwrap();
    let mut settings = AuthSettings::new(ISSUER, &[AUDIENCE]);
    settings.hs256_secret_file = Some(secret_path.clone());
    let broker = start_broker(settings, upstream.addr, AuditLog::off()).await;
    let token =
        |secret: &[u8]| TestKey::hs256(secret).sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));

    assert_eq!(
        mint(&broker, Some(&token(first)), &[]).await.status,
        StatusCode::OK
    );
    let status = broker.api.status().await;
    let fingerprint = status["auth"]["fingerprints"]["hs256_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fingerprint.len(), 12);
    assert!(
        !status.to_string().contains("first-secret"),
        "the secret never appears"
    );

    let second = b"second-secret-second-secret-second-secret";
    std::fs::write(&secret_path, second).unwrap();
    let changed = broker
        .api
        .wait_for_status("the new fingerprint", |s| {
            s["auth"]["fingerprints"]["hs256_secret"] != fingerprint.as_str()
        })
        .await;
    assert_eq!(changed["auth"]["readiness"], "ready");
    assert_eq!(
        mint(&broker, Some(&token(second)), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        mint(&broker, Some(&token(first)), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Unreadable: unready and 503 — never "no auth".
    std::fs::remove_file(&secret_path).unwrap();
    broker
        .api
        .wait_for_status("auth unready", |s| s["auth"]["readiness"] == "unready")
        .await;
    assert_eq!(
        broker.api.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let reply = mint(&broker, Some(&token(second)), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "auth_unavailable");
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_decisions_are_recorded_with_the_credential_hash_never_the_token() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed");
    let log = dir.path().join("decisions.db");
    let audit = required_log(Sink::Sqlite(log.clone()));
    let broker = start_broker(jwks_file(&dir, &[&key]), upstream.addr, audit).await;
    let token = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
    let reply = mint(&broker, Some(&token), &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply.headers["x-flex-auth-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let blocked = key.sign(&jwt::claims("agent-blocked", ISSUER, AUDIENCE));
    let denied = mint(&broker, Some(&blocked), &[]).await;
    let denied_id = denied.json()["decision_id"].as_str().unwrap().to_owned();

    // Forward-auth decisions are recorded the same way.
    let envoy = broker
        .api
        .send(
            Method::POST,
            "/v1/authz/envoy/v1/mint-aws-creds",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("content-type", "application/json"),
            ],
            json!({"role": "aws:demo-readonly"}).to_string(),
        )
        .await;
    assert_eq!(envoy.status, StatusCode::OK);
    let envoy_id = envoy.headers["x-flex-auth-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Each surface's decisions are timed under its own endpoint, none under `/v1/check`'s.
    let metrics = String::from_utf8(broker.api.get("/metrics").await.body.to_vec()).unwrap();
    for (endpoint, count) in [("proxy", 2), ("forward_auth", 1), ("check", 0)] {
        let line =
            format!("flex_auth_check_duration_seconds_count{{endpoint=\"{endpoint}\"}} {count}\n");
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }

    let conn = rusqlite::Connection::open(&log).unwrap();
    let envoy_record: String = conn
        .query_row(
            "SELECT record FROM decisions WHERE decision_id = ?1",
            [&envoy_id],
            |r| r.get(0),
        )
        .unwrap();
    let envoy_record: Value = serde_json::from_str(&envoy_record).unwrap();
    assert_eq!(envoy_record["origin"], "envoy:mint");
    assert!(envoy_record["credential_sha256"].is_string());
    let record: String = conn
        .query_row(
            "SELECT record FROM decisions WHERE decision_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    let record: Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["origin"], "proxy:mint");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["subject"]["id"], "agent-demo");
    let expected = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    };
    assert_eq!(record["credential_sha256"], expected.as_str());
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM decisions WHERE decision_id IN (?1, ?2)",
            [&id, &denied_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 2, "one record per decision, allow and deny");
    let total: i64 = conn
        .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 3, "exactly one record per decision");
    let everything: Vec<String> = conn
        .prepare("SELECT record FROM decisions")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let signature = token.rsplit('.').next().unwrap();
    for record in everything {
        assert!(
            !record.contains(signature) && !record.contains(&token),
            "a raw token in {record}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_log_failure_forwards_nothing() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed");
    let link = dir.path().join("decisions.jsonl");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let audit = required_log(Sink::File(link));
    let broker = start_broker(jwks_file(&dir, &[&key]), upstream.addr, audit).await;
    let token = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
    let reply = mint(&broker, Some(&token), &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "audit_unavailable");
    assert_eq!(
        upstream.count(),
        0,
        "nothing forwarded without a durable record"
    );
}

#[test]
fn proxy_configuration_that_cannot_work_fails_boot_with_its_setting() {
    let broker = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--policy",
            "deploy/examples/broker/policy.cedar",
            "--registry",
            "deploy/examples/broker/registry.json",
            "--listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
            .args(&args)
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
    let dir = tempfile::tempdir().unwrap();
    let good_jwks = dir.path().join("jwks.json");
    std::fs::write(
        &good_jwks,
        jwt::jwks(&[&TestKey::ed25519("k1")]).to_string(),
    )
    .unwrap();
    let good_jwks = good_jwks.to_str().unwrap();
    for (extra, setting) in [
        (vec!["--upstream", "http://127.0.0.1:9"], "FLEX_AUTH_ROUTES"),
        (
            vec!["--routes", routes, "--upstream", "ftp://x"],
            "FLEX_AUTH_UPSTREAM",
        ),
        (vec!["--routes", routes], "FLEX_AUTH_JWKS"),
        (
            vec![
                "--routes",
                routes,
                "--hs256-secret-file",
                secret,
                "--audience",
                "broker",
            ],
            "FLEX_AUTH_ISSUER",
        ),
        (
            vec![
                "--routes",
                routes,
                "--hs256-secret-file",
                secret,
                "--issuer",
                "i",
            ],
            "FLEX_AUTH_AUDIENCE",
        ),
        (
            vec![
                "--routes",
                routes,
                "--mode",
                "production",
                "--jwks",
                "/nonexistent/jwks.json",
                "--issuer",
                "i",
                "--audience",
                "a",
            ],
            "FLEX_AUTH_JWKS",
        ),
        (
            // A JWKS that loads and a secret that does not: the secret is what to fix.
            vec![
                "--routes",
                routes,
                "--mode",
                "production",
                "--jwks",
                good_jwks,
                "--hs256-secret-file",
                "/nonexistent/hs256.secret",
                "--jwt-algorithms",
                "EdDSA,HS256",
                "--issuer",
                "i",
                "--audience",
                "a",
            ],
            "FLEX_AUTH_HS256_SECRET_FILE",
        ),
        (
            vec![
                "--routes",
                "Cargo.toml",
                "--hs256-secret-file",
                secret,
                "--issuer",
                "i",
                "--audience",
                "a",
            ],
            "FLEX_AUTH_ROUTES",
        ),
    ] {
        let (code, stderr) = broker(&extra);
        assert_eq!(code, Some(78), "{extra:?}: {stderr}");
        // Static problems are the only line; keys that fail to load come after the load log.
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with(&format!("BOOT_FAIL setting={setting} ")),
            "{extra:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_nginx_auth_request_lets_through_only_what_the_policy_allows() {
    let Some(nginx) = support::nginx_binary() else {
        return;
    };
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::ed25519("ed");
    let routes = Routes::parse(
        "routes:\n  - {name: creds, method: GET, path: '/v1/creds/{actor}', action: mint, \
         resource: {type: Actor, id: {path: actor}}, context: {role: {query: role}}}\n  \
         - {name: health, method: GET, path: /healthz, public: true}",
    )
    .unwrap();
    let broker = broker_with_routes(
        jwks_file(&dir, &[&key]),
        upstream.addr,
        AuditLog::off(),
        routes,
    )
    .await;
    let port = support::free_port();
    let prefix = dir.path().display();
    let config = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  upstream flexauth {{ server {api}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{port};
    location = /_flex_auth {{
      internal;
      proxy_pass http://flexauth/v1/authz/nginx;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
    }}
    location / {{
      auth_request /_flex_auth;
      auth_request_set $decision $upstream_http_x_flex_auth_decision_id;
      auth_request_set $subject $upstream_http_x_flex_auth_subject;
      proxy_set_header X-Flex-Auth-Decision-Id $decision;
      proxy_set_header X-Flex-Auth-Subject $subject;
      proxy_pass http://{upstream};
    }}
  }}
}}
"#,
        api = broker.api.addr,
        upstream = upstream.addr,
    );
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config).unwrap();
    let child = std::process::Command::new(nginx)
        .args(["-p", &prefix.to_string(), "-c", &conf.display().to_string()])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child_guard = Kill(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Ok(Some(status)) = child_guard.0.try_wait() {
            panic!(
                "nginx exited with {status}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nginx did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let bearer = |who: &str| format!("Bearer {}", key.sign(&jwt::claims(who, ISSUER, AUDIENCE)));
    let demo = bearer("agent-demo");
    let allowed = send(
        addr,
        Method::GET,
        "/v1/creds/agent-demo?role=aws:demo-readonly",
        &[("authorization", &demo), ("x-flex-auth-subject", "root")],
        Bytes::new(),
    )
    .await;
    assert_eq!(allowed.status, StatusCode::OK, "{:?}", allowed.body);
    let seen = upstream.last();
    assert_eq!(seen.headers["x-flex-auth-subject"], "agent-demo");
    assert!(seen.headers["x-flex-auth-decision-id"]
        .to_str()
        .unwrap()
        .starts_with("decision:"));

    let blocked = bearer("agent-blocked");
    let denied = send(
        addr,
        Method::GET,
        "/v1/creds/agent-blocked?role=aws:demo-readonly",
        &[("authorization", &blocked)],
        Bytes::new(),
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let other = send(
        addr,
        Method::GET,
        "/v1/creds/agent-blocked?role=aws:demo-readonly",
        &[("authorization", &demo)],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        other.status,
        StatusCode::FORBIDDEN,
        "agent-demo may not mint for another actor"
    );
    let anonymous = send(addr, Method::GET, "/v1/creds/agent-demo", &[], Bytes::new()).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let unrouted = send(
        addr,
        Method::GET,
        "/admin",
        &[("authorization", &demo)],
        Bytes::new(),
    )
    .await;
    assert_eq!(unrouted.status, StatusCode::FORBIDDEN);
    let public = send(addr, Method::GET, "/healthz", &[], Bytes::new()).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(
        upstream.count(),
        2,
        "only the allowed and the public request reached the upstream"
    );
    drop(child_guard);
}

/// Run the binary as a proxy with debug logs and a decision log, send real tokens through it,
/// and look for them in everything it wrote.
#[test]
fn no_raw_token_reaches_a_log_line_or_a_decision_record() {
    use std::io::BufRead as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let upstream = runtime.block_on(Upstream::start());
    let dir = tempfile::tempdir().unwrap();
    let secret = "deploy/examples/broker/demo-hs256.secret";
    let log = dir.path().join("decisions.jsonl");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(["--log-format", "json", "--log-level", "debug", "serve"])
        .args(["--policy", "deploy/examples/broker/policy.cedar"])
        .args(["--registry", "deploy/examples/broker/registry.json"])
        .args(["--routes", "deploy/examples/broker/routes.yaml"])
        .args(["--upstream", &format!("http://{}", upstream.addr)])
        .args(["--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0"])
        .args([
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
            "--hs256-secret-file",
            secret,
        ])
        .args([
            "--decision-log",
            &format!("file:{}", log.display()),
            "--decision-log-mode",
            "required",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let collected = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("\"proxy listening\"") {
                let v: Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["fields"]["addr"].as_str().unwrap().to_owned());
            }
            collected.lock().unwrap().push(line);
        }
    });
    let proxy: SocketAddr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .parse()
        .unwrap();
    let secret_bytes = std::fs::read(repo_path(secret)).unwrap();
    let key = TestKey::hs256(secret_bytes.strip_suffix(b"\n").unwrap());
    let good = key.sign(&jwt::claims("agent-demo", ISSUER, AUDIENCE));
    let blocked = key.sign(&jwt::claims("agent-blocked", ISSUER, AUDIENCE));
    let forged = TestKey::hs256(b"another-secret-another-secret-another!!").sign(&jwt::claims(
        "agent-demo",
        ISSUER,
        AUDIENCE,
    ));
    let body = json!({"role": "aws:demo-readonly"}).to_string();
    let mut ids = Vec::new();
    for (token, expected) in [
        (&good, StatusCode::OK),
        (&blocked, StatusCode::FORBIDDEN),
        (&forged, StatusCode::UNAUTHORIZED),
    ] {
        let bearer = format!("Bearer {token}");
        let reply = runtime.block_on(send(
            proxy,
            Method::POST,
            "/v1/mint-aws-creds",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            body.clone(),
        ));
        assert_eq!(reply.status, expected);
        if let Some(id) = reply.headers.get("x-flex-auth-decision-id") {
            ids.push(id.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 2);
    support::stop_binary(child);
    reader.join().unwrap();
    let logs = lines.lock().unwrap().join("\n");
    let records = std::fs::read_to_string(&log).unwrap();
    for token in [&good, &blocked, &forged] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token signature in the logs");
        assert!(
            !records.contains(signature),
            "a token signature in the decision log"
        );
    }
    assert!(
        !logs.contains("demo-only-hs256-secret"),
        "the secret in the logs"
    );
    // The request span carries the decision id into the request's log lines.
    for id in &ids {
        assert!(
            logs.lines()
                .any(|l| l.contains("\"answered\"") && l.contains(id.as_str())),
            "no log line with {id}:\n{logs}"
        );
        assert_eq!(
            records.matches(id.as_str()).count(),
            1,
            "one record for {id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_token_is_reused_until_it_expires_and_never_past_a_key_change() {
    let upstream = Upstream::start().await;
    let key = TestKey::ed25519("cache-1");
    let jwks = JwksServer::start(jwt::jwks(&[&key])).await;
    let mut settings = AuthSettings::new(ISSUER, &[AUDIENCE]);
    settings.jwks = Some(jwks.url().parse().unwrap());
    // No key reload in this part: only the token's own `exp` can end its cache entry.
    settings.jwks_cache_ttl = Duration::from_secs(3600);
    settings.clock_skew = Duration::ZERO;
    let broker = start_broker(settings.clone(), upstream.addr, AuditLog::off()).await;

    // One verification, then hits.
    let mut claims = jwt::claims("agent-demo", ISSUER, AUDIENCE);
    claims["exp"] = json!(jwt::now() + 2);
    let short = key.sign(&claims);
    for _ in 0..5 {
        assert_eq!(
            mint(&broker, Some(&short), &[]).await.status,
            StatusCode::OK
        );
    }
    let (hits, misses) = broker.auth.token_cache_stats();
    assert_eq!(
        (hits, misses),
        (4, 1),
        "verified once, then served from the cache"
    );
    let status = broker.api.status().await;
    assert_eq!(status["auth"]["token_cache"]["hits"], 4);

    // `exp` is checked on every hit: the cached token stops working when it expires.
    support::eventually("the cached token expires", async || {
        mint(&broker, Some(&short), &[]).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    let expired = mint(&broker, Some(&short), &[]).await;
    assert_eq!(expired.error_code(), "unauthenticated");

    // A key taken out of the key set: its cached tokens are verified again — and refused.
    settings.jwks_cache_ttl = Duration::from_secs(1);
    let broker = start_broker(settings, upstream.addr, AuditLog::off()).await;
    claims["exp"] = json!(jwt::now() + 600);
    let long = key.sign(&claims);
    assert_eq!(mint(&broker, Some(&long), &[]).await.status, StatusCode::OK);
    assert_eq!(mint(&broker, Some(&long), &[]).await.status, StatusCode::OK);
    *jwks.document.lock().unwrap() = jwt::jwks(&[&TestKey::es256("cache-2")]);
    support::eventually("the removed key's cached token is refused", async || {
        mint(&broker, Some(&long), &[]).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    // Never allowed again once refused: the refusal is not cached as a success.
    assert_eq!(
        mint(&broker, Some(&long), &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
}
