//! The decision log with a real file sink: one record per decision with the response's id,
//! `decisions show`/`tail`, required mode refusing (503) when records cannot be made durable and
//! recovering by itself, and group commit under concurrency.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use flex_auth::api::ApiConfig;
use flex_auth::audit::{AuditLog, Mode, Rotation, Sink};
use http::StatusCode;
use serde_json::{json, Value};
use support::{ops_warden, sign_request, TestServer, DEADLINE};

const ROTATION: Rotation = Rotation {
    max_bytes: 64 * 1024 * 1024,
    keep: 2,
};

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_for_records(path: &Path, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found = records(path);
        if found.len() >= count {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} records",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn server_with_log(path: &Path, mode: Mode) -> TestServer {
    let audit = AuditLog::start(Sink::File(path.to_path_buf()), mode, ROTATION).unwrap();
    TestServer::start_with_audit(ops_warden(), ApiConfig::default(), audit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_has_exactly_one_record_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let server = server_with_log(&path, Mode::BestEffort).await;

    let mut ids = Vec::new();
    for ttl in [4, 40] {
        let reply = server.post_bridge(ttl).await;
        ids.push(reply.json()["decision_id"].as_str().unwrap().to_owned());
    }
    let batch = server
        .post_json(
            "/v1/check/batch",
            &json!({"checks": [
                sign_request("adm-example", "adm-example", 1, &["ops"]),
                {"subject": {"id": "x"}},
            ]}),
        )
        .await
        .json();
    for item in batch["results"].as_array().unwrap() {
        ids.push(item["decision_id"].as_str().unwrap().to_owned());
    }

    let found = wait_for_records(&path, 4).await;
    assert_eq!(found.len(), 4);
    let logged: Vec<&str> = found
        .iter()
        .map(|r| r["decision_id"].as_str().unwrap())
        .collect();
    let logged_set: HashSet<&str> = logged.iter().copied().collect();
    assert_eq!(logged_set.len(), 4, "no duplicates");
    for id in &ids {
        assert!(logged_set.contains(id.as_str()), "{id} not logged");
    }
    let first = found
        .iter()
        .find(|r| r["decision_id"] == ids[0].as_str())
        .unwrap();
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["origin"], "api:check");
    assert_eq!(first["subject"]["id"], "agt-state-hub-bridge");
    assert_eq!(first["action"], "sign");
    assert_eq!(
        first["resource"],
        json!({"type": "Actor", "id": "agt-state-hub-bridge"})
    );
    assert_eq!(first["policies"], json!(["warden-sign-allow"]));
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    let second = found
        .iter()
        .find(|r| r["decision_id"] == ids[1].as_str())
        .unwrap();
    assert_eq!(second["reasons"], json!(["ttl_out_of_bounds"]));
    let invalid = found
        .iter()
        .find(|r| r["decision_id"] == ids[3].as_str())
        .unwrap();
    assert_eq!(invalid["reasons"], json!(["invalid_request"]));
    assert_eq!(invalid["origin"], "api:batch");

    // Read back with the CLI.
    let sink = format!("file:{}", path.display());
    let show = cli(&["decisions", "show", &ids[1], "--log", &sink]);
    assert_eq!(
        show.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["decision_id"], ids[1].as_str());
    let missing = cli(&[
        "decisions",
        "show",
        "decision:0000000000000000",
        "--log",
        &sink,
    ]);
    assert_eq!(missing.status.code(), Some(1));
    let tail = cli(&["decisions", "tail", "--log", &sink, "-n", "2"]);
    assert_eq!(String::from_utf8_lossy(&tail.stdout).lines().count(), 2);
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_refuses_when_records_cannot_be_durable_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    // The sink path is a symlink: first to /dev/full (every write fails), later to a real file.
    let link = dir.path().join("decisions.jsonl");
    let real: PathBuf = dir.path().join("real.jsonl");
    std::os::unix::fs::symlink("/dev/full", &link).unwrap();
    let server = server_with_log(&link, Mode::Required).await;

    let reply = server.post_bridge(4).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "audit_unavailable");
    assert_eq!(reply.json()["fail_closed"], true);
    assert!(
        reply.json().get("decision").is_none(),
        "no decision is given"
    );
    let batch = server
        .post_json(
            "/v1/check/batch",
            &json!({"checks": [sign_request("adm-example", "adm-example", 1, &["ops"])]}),
        )
        .await;
    assert_eq!(batch.status, StatusCode::SERVICE_UNAVAILABLE);
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json();
    let check = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "decision_log")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "fail");
    assert_eq!(check["docs"], "docs/runbook.md#decision-log-unavailable");

    // Point the sink at a writable file: the writer's probe recovers without any request.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.get("/readyz").await.status != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "decision log did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = server.post_bridge(4).await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply.json()["decision_id"].as_str().unwrap().to_owned();
    // Required: the record is durable before the answer, so no waiting here.
    assert!(records(&real)
        .iter()
        .any(|r| r["decision_id"] == id.as_str()));
    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    assert!(
        !metrics.contains("flex_auth_decision_log_failures_total 0\n"),
        "failures counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn required_mode_under_concurrency_answers_only_logged_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let server = Arc::new(server_with_log(&path, Mode::Required).await);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..50 {
                let reply = server.post_bridge(4).await;
                assert_eq!(reply.status, StatusCode::OK);
                ids.push(reply.json()["decision_id"].as_str().unwrap().to_owned());
            }
            ids
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await.unwrap());
    }
    let logged: HashSet<String> = records(&path)
        .iter()
        .map(|r| r["decision_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(logged.len(), 800);
    for id in &answered {
        assert!(logged.contains(id), "{id} answered but not logged");
    }
}

#[test]
fn a_decision_log_that_cannot_open_fails_boot() {
    let out = Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args([
            "serve",
            "--policy",
            "policies/ops-warden",
            "--registry",
            "registry/ops-warden/production_registry_snapshot.json",
            "--listen",
            "127.0.0.1:0",
            "--decision-log",
            "file:/nonexistent-dir/decisions.jsonl",
            "--decision-log-mode",
            "required",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("BOOT_FAIL setting=FLEX_AUTH_DECISION_LOG"),
        "{err}"
    );
    assert!(
        err.trim_end()
            .ends_with("docs=docs/runbook.md#boot-decision-log-unavailable"),
        "{err}"
    );
}
