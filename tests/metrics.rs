//! `GET /metrics` over real HTTP: it parses as Prometheus text, and its counters move with
//! allows, denies, batches and reloads; where it is served follows the configuration.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use flex_auth::api::ApiConfig;
use flex_auth::state::Trigger;
use flex_auth::{RegistrySource, Sources};
use http::{Method, StatusCode};
use prometheus_parse::{Sample, Scrape, Value};
use serde_json::json;
use support::{bridge_snapshot, hash_of, repo_path, send, sign_request, TestServer};

async fn scrape(server: &TestServer) -> Vec<Sample> {
    let reply = server.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap()
        .samples
}

/// The value of the sample named `metric` whose labels include all of `labels`.
fn value(samples: &[Sample], metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}

fn setup() -> (tempfile::TempDir, Sources) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("registry.json"), bridge_snapshot(8)).unwrap();
    let sources = Sources {
        policy: repo_path("policies/ops-warden"),
        registry: RegistrySource::Snapshot(dir.path().join("registry.json")),
    };
    (dir, sources)
}

#[tokio::test]
async fn counters_move_with_decisions_batches_and_reloads() {
    let (dir, sources) = setup();
    let server = TestServer::start(sources).await;

    let before = scrape(&server).await;
    let allows = value(
        &before,
        "flex_auth_decisions_total",
        &[("decision", "allow")],
    );
    assert_eq!(allows, Some(0.0));
    assert_eq!(value(&before, "flex_auth_ready", &[]), Some(1.0));
    assert_eq!(
        value(&before, "flex_auth_registry_entities", &[]),
        Some(1.0)
    );
    // The compact store's size, as /v1/status tells it, with the last load's phases.
    let status = server.get("/v1/status").await.json();
    let bytes = status["registry"]["bytes"]
        .as_f64()
        .expect("registry bytes");
    assert!(bytes > 0.0, "{status}");
    assert_eq!(value(&before, "flex_auth_registry_bytes", &[]), Some(bytes));
    assert_eq!(
        value(&before, "flex_auth_slice_cache_hits_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&before, "flex_auth_slice_cache_misses_total", &[]),
        Some(0.0)
    );
    let phases = &status["registry"]["load_phases_ms"];
    for phase in ["read", "parse_validate", "compile", "swap"] {
        assert!(
            phases[phase].as_f64().is_some_and(|ms| ms >= 0.0),
            "{phase}: {status}"
        );
    }
    assert_eq!(
        value(
            &before,
            "flex_auth_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &before,
            "flex_auth_loaded_info",
            &[("registry_version", &hash_of(&bridge_snapshot(8)))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &before,
            "flex_auth_reloads_total",
            &[("trigger", "startup"), ("result", "loaded")]
        ),
        Some(1.0)
    );

    assert_eq!(server.bridge_decision(4).await, "allow");
    assert_eq!(server.bridge_decision(5).await, "allow");
    assert_eq!(server.bridge_decision(40).await, "deny");
    let reply = server
        .post_json(
            "/v1/check/batch",
            &json!({"checks": [
                sign_request("agt-state-hub-bridge", "agt-state-hub-bridge", 4, &["state-hub"]),
                sign_request("adm-example", "agt-state-hub-bridge", 4, &["state-hub"]),
                {"subject": {"id": "x"}},
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let bad = server
        .send(
            Method::POST,
            "/v1/check",
            &[("content-type", "application/json")],
            "{",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let after = scrape(&server).await;
    assert_eq!(
        value(
            &after,
            "flex_auth_decisions_total",
            &[("decision", "allow")]
        ),
        Some(3.0)
    );
    // The bridge asking for itself four times (three checks, the first batch item): one slice
    // built, three reused; `adm-example` is another principal: built.
    assert_eq!(
        value(&after, "flex_auth_slice_cache_hits_total", &[]),
        Some(3.0)
    );
    assert_eq!(
        value(&after, "flex_auth_slice_cache_misses_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        value(&after, "flex_auth_decisions_total", &[("decision", "deny")]),
        Some(3.0)
    );
    assert_eq!(
        value(
            &after,
            "flex_auth_deny_reasons_total",
            &[("reason", "ttl_out_of_bounds")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "flex_auth_deny_reasons_total",
            &[("reason", "subject_not_allowed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "flex_auth_deny_reasons_total",
            &[("reason", "invalid_request")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "flex_auth_check_duration_seconds",
            &[("endpoint", "check")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &after,
            "flex_auth_check_duration_seconds",
            &[("endpoint", "batch")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&after, "flex_auth_batch_size", &[]), Some(1.0));
    assert_eq!(
        value(
            &after,
            "flex_auth_http_responses_total",
            &[("endpoint", "check"), ("code", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &after,
            "flex_auth_http_responses_total",
            &[("endpoint", "check"), ("code", "400")]
        ),
        Some(1.0)
    );

    // A reload that loads, and one that fails: both counted; the info metric follows the version.
    std::fs::write(dir.path().join("registry.json"), bridge_snapshot(2)).unwrap();
    server.state.reload(Trigger::Signal).unwrap();
    std::fs::write(dir.path().join("registry.json"), "{").unwrap();
    assert!(server.state.reload(Trigger::Signal).is_err());
    let reloaded = scrape(&server).await;
    assert_eq!(
        value(
            &reloaded,
            "flex_auth_reloads_total",
            &[("trigger", "sighup"), ("result", "loaded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &reloaded,
            "flex_auth_reloads_total",
            &[("trigger", "sighup"), ("result", "failed")]
        ),
        Some(1.0)
    );
    let infos: Vec<&Sample> = reloaded
        .iter()
        .filter(|s| s.metric == "flex_auth_loaded_info")
        .collect();
    assert_eq!(infos.len(), 1, "exactly one loaded version is reported");
    assert_eq!(
        infos[0].labels.get("registry_version"),
        Some(hash_of(&bridge_snapshot(2)).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_report_the_sources_totals_exactly() {
    let (dir, sources) = setup();
    let server = TestServer::start(sources).await;
    for ttl in 2..6 {
        std::fs::write(dir.path().join("registry.json"), bridge_snapshot(ttl)).unwrap();
        server.state.reload(Trigger::Signal).unwrap();
    }
    // Twenty scrapes at once: each reports the state's own count (4), none adds a delta twice.
    let scrapes: Vec<_> = (0..20).map(|_| scrape(&server)).collect();
    for samples in futures_join_all(scrapes).await {
        assert_eq!(
            value(
                &samples,
                "flex_auth_reloads_total",
                &[("trigger", "sighup"), ("result", "loaded")]
            ),
            Some(4.0)
        );
    }
}

/// Await every future (in order), concurrently.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(pinned.len());
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, future) in done.iter_mut().zip(pinned.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

#[tokio::test]
async fn unready_server_reports_not_ready() {
    let (dir, sources) = setup();
    std::fs::remove_file(dir.path().join("registry.json")).unwrap();
    let server = TestServer::start(sources).await;
    let samples = scrape(&server).await;
    assert_eq!(value(&samples, "flex_auth_ready", &[]), Some(0.0));
    assert!(samples.iter().all(|s| s.metric != "flex_auth_loaded_info"));
    assert_eq!(
        value(
            &samples,
            "flex_auth_reloads_total",
            &[("trigger", "startup"), ("result", "failed")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_limited_to_the_admin_listener_behind_its_token() {
    let (dir, sources) = setup();
    let config = ApiConfig {
        metrics: false,
        ..ApiConfig::default()
    };
    let server = TestServer::start_with(sources, config.clone()).await;
    assert_eq!(server.get("/metrics").await.status, StatusCode::NOT_FOUND);

    std::fs::write(dir.path().join("token"), "t0ken").unwrap();
    let addr = server.start_admin(dir.path().join("token"), config).await;
    let denied = send(addr, Method::GET, "/metrics", &[], "").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    let ok = send(
        addr,
        Method::GET,
        "/metrics",
        &[("authorization", "Bearer t0ken")],
        "",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&ok.body).contains("flex_auth_ready 1"));
}
