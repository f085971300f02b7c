//! `POST /v1/check` and `/v1/check/batch` over real HTTP against the shipped ops-warden package.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::collections::HashSet;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{ops_warden, sign_request, TestServer};

/// One check through the server, asserting decision and reasons, returning the body.
async fn check(server: &TestServer, request: Value, decision: &str, reasons: &[&str]) -> Value {
    let reply = server.post_json("/v1/check", &request).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["decision"], decision, "request {request} → {body}");
    assert_eq!(body["allowed"], decision == "allow", "{body}");
    let mut got: Vec<&str> = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    got.sort_unstable();
    let mut want = reasons.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "request {request} → {body}");
    assert_eq!(body["fail_closed"], true, "{body}");
    assert_decision_id(&body["decision_id"]);
    body
}

fn assert_decision_id(id: &Value) {
    let id = id.as_str().expect("decision_id is a string");
    let hex = id.strip_prefix("decision:").expect("decision: prefix");
    assert_eq!(hex.len(), 16, "{id}");
    assert!(
        hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{id}"
    );
}

#[tokio::test]
async fn own_name_within_limits_is_allowed() {
    let server = TestServer::start(ops_warden()).await;
    let body = check(
        &server,
        sign_request(
            "agt-state-hub-bridge",
            "agt-state-hub-bridge",
            4,
            &["state-hub"],
        ),
        "allow",
        &[],
    )
    .await;
    assert_eq!(body["policies"], json!(["warden-sign-allow"]));
    let engine_versions = {
        let loaded = server.state.current();
        let engine = &loaded.as_ref().unwrap().engine;
        (
            engine.policy().hash().to_string(),
            engine.registry().hash().to_string(),
        )
    };
    assert_eq!(body["policy_version"], engine_versions.0);
    assert_eq!(body["registry_version"], engine_versions.1);
}

#[tokio::test]
async fn iam_identity_is_allowed() {
    let server = TestServer::start(ops_warden()).await;
    check(
        &server,
        sign_request(
            "iam:agt-state-hub-bridge",
            "agt-state-hub-bridge",
            4,
            &["state-hub"],
        ),
        "allow",
        &[],
    )
    .await;
}

#[tokio::test]
async fn ttl_over_max_or_not_positive_is_denied_with_reason() {
    let server = TestServer::start(ops_warden()).await;
    for ttl in [9, 1000, 0, -1] {
        let body = check(
            &server,
            sign_request(
                "agt-state-hub-bridge",
                "agt-state-hub-bridge",
                ttl,
                &["state-hub"],
            ),
            "deny",
            &["ttl_out_of_bounds"],
        )
        .await;
        assert_eq!(body["policies"], json!(["warden-ttl-bounds"]));
    }
}

#[tokio::test]
async fn unknown_actor_is_denied_with_reason() {
    let server = TestServer::start(ops_warden()).await;
    for (ttl, principals) in [(4, vec!["state-hub"]), (400, vec!["root"]), (0, vec![])] {
        check(
            &server,
            sign_request(
                "agt-state-hub-bridge",
                "agt-not-in-registry",
                ttl,
                &principals,
            ),
            "deny",
            &["unknown_actor_resource"],
        )
        .await;
    }
}

#[tokio::test]
async fn subject_outside_allowed_subjects_is_denied_with_reason() {
    let server = TestServer::start(ops_warden()).await;
    check(
        &server,
        sign_request("adm-example", "agt-state-hub-bridge", 4, &["state-hub"]),
        "deny",
        &["subject_not_allowed"],
    )
    .await;
}

#[tokio::test]
async fn principal_the_actor_lacks_is_denied_with_reason() {
    let server = TestServer::start(ops_warden()).await;
    check(
        &server,
        sign_request(
            "agt-state-hub-bridge",
            "agt-state-hub-bridge",
            4,
            &["state-hub", "root"],
        ),
        "deny",
        &["principal_not_allowed"],
    )
    .await;
}

#[tokio::test]
async fn decision_ids_are_unique() {
    let server = TestServer::start(ops_warden()).await;
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let reply = server
            .post_json(
                "/v1/check",
                &sign_request("adm-example", "adm-example", 1, &["ops"]),
            )
            .await;
        let id = reply.json()["decision_id"].as_str().unwrap().to_owned();
        assert!(seen.insert(id), "decision id repeated");
    }
}

#[tokio::test]
async fn batch_answers_in_order_each_with_its_own_id() {
    let server = TestServer::start(ops_warden()).await;
    let reply = server
        .post_json(
            "/v1/check/batch",
            &json!({"checks": [
                sign_request("agt-state-hub-bridge", "agt-state-hub-bridge", 4, &["state-hub"]),
                sign_request("agt-state-hub-bridge", "agt-state-hub-bridge", 99, &["state-hub"]),
                sign_request("x", "agt-not-in-registry", 1, &[]),
                {"subject": {"id": "a"}, "action": "sign"},
                sign_request("atm-backup-daily", "atm-backup-daily", 2, &["backup"]),
            ]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    let decisions: Vec<&str> = results
        .iter()
        .map(|r| r["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["allow", "deny", "deny", "deny", "allow"]);
    assert_eq!(results[1]["reasons"], json!(["ttl_out_of_bounds"]));
    assert_eq!(results[2]["reasons"], json!(["unknown_actor_resource"]));
    // The malformed item is a deny that says what is wrong with it; the others are unaffected.
    assert_eq!(results[3]["reasons"], json!(["invalid_request"]));
    assert_eq!(results[3]["error"]["code"], "missing_field");
    assert_eq!(results[3]["error"]["field"], "checks[3].resource");
    let ids: HashSet<&str> = results
        .iter()
        .map(|r| r["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    for r in results {
        assert_decision_id(&r["decision_id"]);
        assert_eq!(r["fail_closed"], true);
    }
}

#[tokio::test]
async fn batch_over_the_limit_is_rejected() {
    let server = TestServer::start_with(
        ops_warden(),
        flex_auth::api::ApiConfig {
            max_batch: 3,
            ..Default::default()
        },
    )
    .await;
    let item = sign_request("adm-example", "adm-example", 1, &["ops"]);
    let reply = server
        .post_json(
            "/v1/check/batch",
            &json!({"checks": [item, item, item, item]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "batch_too_large");
    let reply = server
        .post_json("/v1/check/batch", &json!({"checks": [item, item, item]}))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn batch_without_checks_is_a_missing_field() {
    let server = TestServer::start(ops_warden()).await;
    let reply = server
        .post_json("/v1/check/batch", &json!({"check": []}))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "unknown_field");
    let reply = server.post_json("/v1/check/batch", &json!({})).await;
    assert_eq!(reply.error_code(), "missing_field");
}

#[tokio::test]
async fn probes_answer() {
    let server = TestServer::start(ops_warden()).await;
    let health = server.get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
    let head = server.send(Method::HEAD, "/readyz", &[], "").await;
    assert_eq!(head.status, StatusCode::OK);
}
