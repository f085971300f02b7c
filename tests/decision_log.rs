//! The decision log with real file and SQLite sinks: one record per decision with the response's
//! id, `decisions show`/`tail`, required mode refusing (503) when records cannot be made durable
//! (a full device, a locked database) and recovering by itself, and group commit under
//! concurrency.

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

/// Every record in a sink, oldest first, read without flex-auth's own reader.
fn sink_records(sink: &Sink) -> Vec<Value> {
    match sink {
        Sink::File(path) => records(path),
        Sink::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            let mut query = conn
                .prepare("SELECT decision_id, record FROM decisions ORDER BY seq")
                .unwrap();
            query
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .unwrap()
                .map(|row| {
                    let (id, record) = row.unwrap();
                    let record: Value = serde_json::from_str(&record).unwrap();
                    assert_eq!(record["decision_id"], id.as_str(), "indexed column matches");
                    record
                })
                .collect()
        }
        Sink::Stdout => unreachable!("tests read file and SQLite sinks"),
    }
}

fn sink_arg(sink: &Sink) -> String {
    match sink {
        Sink::File(path) => format!("file:{}", path.display()),
        Sink::Sqlite(path) => format!("sqlite:{}", path.display()),
        Sink::Stdout => "stdout".to_owned(),
    }
}

async fn wait_for_records(sink: &Sink, count: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found = sink_records(sink);
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

async fn server_with_log(sink: Sink, mode: Mode) -> TestServer {
    let audit = AuditLog::start(sink, mode, ROTATION).unwrap();
    TestServer::start_with_audit(ops_warden(), ApiConfig::default(), audit).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_has_exactly_one_record_with_its_id_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    one_record_per_decision(
        Sink::File(dir.path().join("decisions.jsonl")),
        Mode::BestEffort,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_has_exactly_one_record_with_its_id_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    one_record_per_decision(
        Sink::Sqlite(dir.path().join("decisions.db")),
        Mode::BestEffort,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_sqlite_records_are_committed_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::Sqlite(dir.path().join("decisions.db"));
    let server = server_with_log(sink.clone(), Mode::Required).await;
    let reply = server.post_bridge(4).await;
    assert_eq!(reply.status, StatusCode::OK);
    // No waiting: required mode answers only after the transaction committed.
    let found = sink_records(&sink);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["decision_id"], reply.json()["decision_id"]);
}

async fn one_record_per_decision(sink: Sink, mode: Mode) {
    let server = server_with_log(sink.clone(), mode).await;

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

    let found = wait_for_records(&sink, 4).await;
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
    let sink = sink_arg(&sink);
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
    assert_eq!(tail.status.code(), Some(0));
    let tailed: Vec<Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tailed.len(), 2);
    assert_eq!(tailed[..], found[2..], "the newest two, oldest first");
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
    let server = server_with_log(Sink::File(link.clone()), Mode::Required).await;

    assert_refused_as_audit_unavailable(&server).await;
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
    wait_until_ready(&server).await;
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
    let server = Arc::new(server_with_log(Sink::File(path.clone()), Mode::Required).await);
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

/// A required-mode check, as the 503 it must be while the sink cannot take the record.
async fn assert_refused_as_audit_unavailable(server: &TestServer) {
    let reply = server.post_bridge(4).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "audit_unavailable");
    assert_eq!(reply.json()["fail_closed"], true);
    assert!(
        reply.json().get("decision").is_none(),
        "no decision is given"
    );
}

async fn wait_until_ready(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.get("/readyz").await.status != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "decision log did not recover"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_sqlite_refuses_while_another_writer_holds_the_database_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.db");
    let sink = Sink::Sqlite(path.clone());
    let server = server_with_log(sink.clone(), Mode::Required).await;
    assert_eq!(server.post_bridge(4).await.status, StatusCode::OK);

    // Another process's write transaction (an operator's `sqlite3`, a backup tool) holds the
    // write lock: our group cannot commit within the busy timeout.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_refused_as_audit_unavailable(&server).await;
    assert_eq!(
        server.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    other.execute_batch("COMMIT").unwrap();

    wait_until_ready(&server).await;
    let reply = server.post_bridge(4).await;
    assert_eq!(reply.status, StatusCode::OK);
    let found = sink_records(&sink);
    assert_eq!(found.len(), 2, "the refused decision left no record");
    assert_eq!(found[1]["decision_id"], reply.json()["decision_id"]);
}

#[test]
fn a_decision_log_that_cannot_open_fails_boot() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("not-a-database.db");
    std::fs::write(&garbage, vec![b'#'; 8192]).unwrap();
    for (sink, says) in [
        (
            "file:/nonexistent-dir/decisions.jsonl".to_owned(),
            "No such file",
        ),
        (format!("sqlite:{}", garbage.display()), "not a database"),
    ] {
        boot_fails_with_decision_log(&sink, says);
    }
}

fn boot_fails_with_decision_log(sink: &str, says: &str) {
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
            sink,
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
    assert!(err.contains(says), "{err}");
    assert!(
        err.trim_end()
            .ends_with("docs=docs/runbook.md#boot-decision-log-unavailable"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_without_a_mode_logs_best_effort() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    let sink = format!("file:{}", path.display());
    let (child, addr) = support::spawn_binary(&[
        "--policy",
        "policies/ops-warden",
        "--registry",
        "registry/ops-warden/production_registry_snapshot.json",
        "--decision-log",
        &sink,
    ]);
    let reply = support::send(
        addr.parse().unwrap(),
        http::Method::POST,
        "/v1/check",
        &[("content-type", "application/json")],
        sign_request(
            "agt-state-hub-bridge",
            "agt-state-hub-bridge",
            1,
            &["state-hub"],
        )
        .to_string(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply.json()["decision_id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + DEADLINE;
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains(&id)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the record was written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    support::stop_binary(child);
}
