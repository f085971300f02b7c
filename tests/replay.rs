//! `flex-auth replay` on decision logs the real server wrote: a required-mode SQLite log and a
//! rotated required-mode file log with redacted fields and a record of the older format,
//! replayed against a candidate that tightens a TTL, renames a reason and drops a condition
//! (allow → deny, reasons changed, deny → allow), and against the live package (nothing
//! changed). The log is never written to.

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
use std::process::{Command, Output};

use http::Method;
use serde_json::{json, Value};

use support::ttl_change::{CANDIDATE, ENTITIES, LIVE};

fn replay(args: &[&str]) -> (Output, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .arg("replay")
        .args(args)
        .args(["--format", "json"])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, report)
}

async fn check(addr: SocketAddr, context: Value) -> Value {
    let body = json!({
        "subject": {"id": "alice"}, "action": "sign",
        "resource": {"type": "Actor", "id": "box"}, "context": context,
    });
    let reply = support::send(
        addr,
        Method::POST,
        "/v1/check",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    serde_json::from_slice(&reply.body).unwrap()
}

fn files(dir: &Path) -> (String, String, String) {
    std::fs::write(dir.join("live.cedar"), LIVE).unwrap();
    std::fs::write(dir.join("candidate.cedar"), CANDIDATE).unwrap();
    std::fs::write(dir.join("entities.json"), ENTITIES).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    (p("live.cedar"), p("candidate.cedar"), p("entities.json"))
}

fn digest(path: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for file in flex_auth::audit::sink_files(path) {
        all.extend(std::fs::read(&file).unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_sqlite_log_replays_each_change_class_and_nothing_against_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (live, candidate, entities) = files(dir.path());
    let db = dir.path().join("decisions.db");
    let log = format!("sqlite:{}", db.display());
    let (child, addr) = support::spawn_binary(&[
        "--policy",
        &live,
        "--entities",
        &entities,
        "--decision-log",
        &log,
        "--decision-log-mode",
        "required",
    ]);
    let addr: SocketAddr = addr.parse().unwrap();
    let unchanged = check(addr, json!({"ttl": 2})).await;
    let tightened = check(addr, json!({"ttl": 6})).await;
    let renamed = check(addr, json!({"ttl": 10})).await;
    let loosened = check(addr, json!({"ttl": 2, "banned": true})).await;
    assert_eq!(unchanged["decision"], "allow");
    assert_eq!(tightened["decision"], "allow");
    assert_eq!(renamed["reasons"], json!(["ttl_too_long"]));
    assert_eq!(loosened["reasons"], json!(["no_matching_permit"]));
    // Replayed while the server still runs (it holds the database), then after it stopped.
    let (out, report) = replay(&[
        "--log",
        &log,
        "--policy",
        &candidate,
        "--entities",
        &entities,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    support::stop_binary(child);
    let before = std::fs::read(&db).unwrap();
    let (out, again) = replay(&[
        "--log",
        &log,
        "--policy",
        &candidate,
        "--entities",
        &entities,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(report["report"], again["report"]);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "replay wrote to the log"
    );

    let r = &report["report"];
    assert_eq!(r["read"], 4, "{report:#}");
    assert_eq!(r["replayed"], 4);
    assert_eq!(r["unchanged"], 1);
    assert_eq!(report["changed"], 3);
    let one = |class: &str, id: &Value, old: Value, new: Value| {
        let c = &r[class];
        assert_eq!(c["count"], 1, "{class}: {report:#}");
        assert_eq!(c["by_action"], json!({"sign": 1}), "{class}");
        let example = &c["examples"][0];
        assert_eq!(&example["decision_id"], id, "{class}");
        assert_eq!(example["old"]["decision"], old[0], "{class}");
        assert_eq!(example["old"]["reasons"], old[1], "{class}");
        assert_eq!(example["new"]["decision"], new[0], "{class}");
        assert_eq!(example["new"]["reasons"], new[1], "{class}");
        assert_eq!(example["subject"], "Subject::\"alice\"", "{class}");
        assert_eq!(example["resource"], "Actor::\"box\"", "{class}");
    };
    one(
        "allow_to_deny",
        &tightened["decision_id"],
        json!(["allow", []]),
        json!(["deny", ["ttl_over_limit"]]),
    );
    assert_eq!(
        r["allow_to_deny"]["by_reason"],
        json!({"ttl_over_limit": 1})
    );
    one(
        "reasons_changed",
        &renamed["decision_id"],
        json!(["deny", ["ttl_too_long"]]),
        json!(["deny", ["ttl_over_limit"]]),
    );
    one(
        "deny_to_allow",
        &loosened["decision_id"],
        json!(["deny", ["no_matching_permit"]]),
        json!(["allow", []]),
    );
    assert_eq!(
        r["deny_to_allow"]["by_reason"],
        json!({"no_matching_permit": 1})
    );

    // Against the live package: nothing changed, exit 0. Filters: an origin nothing has.
    let (out, same) = replay(&["--log", &log, "--policy", &live, "--entities", &entities]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(same["report"]["unchanged"], 4);
    let (out, none) = replay(&[
        "--log",
        &log,
        "--policy",
        &candidate,
        "--entities",
        &entities,
        "--origin",
        "proxy:",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(none["report"]["filtered_out"], 4);
    let (out, _) = replay(&[
        "--log",
        &log,
        "--policy",
        &candidate,
        "--entities",
        &entities,
        "--since",
        "1h",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "records of the last hour replay"
    );
    let (out, later) = replay(&[
        "--log",
        &log,
        "--policy",
        &candidate,
        "--entities",
        &entities,
        "--until",
        "2020-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(later["report"]["filtered_out"], 4);

    // Text form: the counts and an example line.
    let out = Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(["replay", "--log", &log, "--policy", &candidate])
        .args(["--entities", &entities, "--limit-examples", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("allow → deny              1"), "{text}");
    assert!(text.contains("3 decisions changed"), "{text}");
    assert!(!text.contains("decision:"), "no examples asked: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_file_log_with_redactions_and_old_records_replays_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (live, _, entities) = files(dir.path());
    let path = dir.path().join("decisions.log");
    let log = format!("file:{}", path.display());
    // An older build's record (no record_version), first in the oldest file.
    let old = r#"{"decision_id":"decision:00000000000000aa","time":"2026-11-01T00:00:00.000Z","origin":"api:check","subject":{"id":"alice"},"action":"sign","resource":{"type":"Actor","id":"box"},"decision":"allow","reasons":[],"policies":["sign"],"policy_version":"p","registry_version":"r","latency_us":3}"#;
    let (child, addr) = support::spawn_binary(&[
        "--policy",
        &live,
        "--entities",
        &entities,
        "--decision-log",
        &log,
        "--decision-log-mode",
        "required",
        "--decision-log-max-bytes",
        "1024",
        "--decision-log-redact",
        "/context/banned,/context/note",
    ]);
    let addr: SocketAddr = addr.parse().unwrap();
    // `banned` is redacted, so the replay cannot see it: these two denies come back allowed,
    // and the report says they had redacted fields.
    let first = check(addr, json!({"ttl": 2, "banned": true})).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(check(addr, json!({"ttl": 2, "note": "kept out of the log"})).await);
    }
    let last = check(addr, json!({"ttl": 2, "banned": true})).await;
    assert_eq!(first["decision"], "deny");
    assert_eq!(last["decision"], "deny");
    support::stop_binary(child);
    let rotated = flex_auth::audit::sink_files(&path);
    assert!(rotated.len() >= 3, "the log rotated: {rotated:?}");
    let oldest = rotated.last().unwrap();
    let text = std::fs::read_to_string(oldest).unwrap();
    std::fs::write(oldest, format!("{old}\n{text}")).unwrap();
    std::fs::write(
        &path,
        format!("{}not json\n", std::fs::read_to_string(&path).unwrap()),
    )
    .unwrap();
    let every = digest(&path);
    assert!(!String::from_utf8_lossy(&every).contains("kept out of the log"));

    let (out, report) = replay(&["--log", &log, "--policy", &live, "--entities", &entities]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(digest(&path), every, "replay wrote to the log");
    let r = &report["report"];
    assert_eq!(r["read"], 10, "{report:#}");
    assert_eq!(r["replayed"], 8);
    assert_eq!(
        r["not_replayable"],
        json!({
            "not a JSON decision record": 1,
            "written by an older flex-auth (no `record_version`): the request may be incomplete": 1
        })
    );
    assert_eq!(r["redacted"], 8);
    assert_eq!(r["redacted_changed"], 2);
    assert_eq!(r["unchanged"], 6);
    let examples = &r["deny_to_allow"]["examples"];
    assert_eq!(r["deny_to_allow"]["count"], 2);
    assert_eq!(
        examples[0]["decision_id"], first["decision_id"],
        "log order"
    );
    assert_eq!(examples[1]["decision_id"], last["decision_id"], "log order");
}

#[test]
fn a_replay_that_cannot_run_exits_2_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (live, _, entities) = files(dir.path());
    let missing = format!("file:{}", dir.path().join("none.log").display());
    let (out, _) = replay(&[
        "--log",
        &missing,
        "--policy",
        &live,
        "--entities",
        &entities,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
    let broken = dir.path().join("broken.cedar");
    std::fs::write(&broken, "permit (principal, action, resource").unwrap();
    std::fs::write(dir.path().join("d.log"), "").unwrap();
    let log = format!("file:{}", dir.path().join("d.log").display());
    let (out, _) = replay(&[
        "--log",
        &log,
        "--policy",
        broken.to_str().unwrap(),
        "--entities",
        &entities,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("candidate does not load"),
        "{out:?}"
    );
    let (out, _) = replay(&["--log", &log, "--entities", &entities]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the candidate"));
    let not_db = dir.path().join("x.db");
    std::fs::write(&not_db, vec![b'x'; 4096]).unwrap();
    let (out, _) = replay(&[
        "--log",
        &format!("sqlite:{}", not_db.display()),
        "--policy",
        &live,
        "--entities",
        &entities,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(std::fs::read(&not_db).unwrap(), vec![b'x'; 4096]);
}

/// A hand-written log: a line that is not UTF-8 is one unreadable record (the next one is still
/// read), a record whose subject id was redacted is not replayable and says so, and the
/// candidate can come from a bundle, alone or with another package against its registry.
#[test]
fn odd_lines_redacted_subjects_and_bundle_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let (live, candidate, entities) = files(dir.path());
    let record = |id: &str, ttl: i64, subject: Value, redacted: Value| {
        json!({
            "decision_id": id, "record_version": 2, "time": "2026-12-01T00:00:00.000Z",
            "origin": "api:check", "subject": subject, "action": "sign",
            "resource": {"type": "Actor", "id": "box"}, "context": {"ttl": ttl},
            "decision": "allow", "reasons": [], "policies": ["sign"],
            "policy_version": "p", "registry_version": "r", "latency_us": 1,
            "redacted": redacted,
        })
        .to_string()
    };
    let mut log = Vec::new();
    log.extend(
        record(
            "decision:0000000000000001",
            2,
            json!({"id": "alice"}),
            json!([]),
        )
        .bytes(),
    );
    log.extend(b"\n{\"decision_id\": \"\xff\xfe\"}\n");
    log.extend(
        record(
            "decision:0000000000000002",
            6,
            json!({"id": "alice"}),
            json!([]),
        )
        .bytes(),
    );
    log.push(b'\n');
    log.extend(
        record(
            "decision:0000000000000003",
            6,
            json!({}),
            json!(["/subject/id"]),
        )
        .bytes(),
    );
    log.push(b'\n');
    let path = dir.path().join("hand.log");
    std::fs::write(&path, &log).unwrap();
    let log = format!("file:{}", path.display());

    let (out, report) = replay(&[
        "--log",
        &log,
        "--policy",
        &candidate,
        "--entities",
        &entities,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r = &report["report"];
    assert_eq!(r["read"], 4, "{report:#}");
    assert_eq!(r["replayed"], 2);
    assert_eq!(
        r["not_replayable"],
        json!({
            "not a JSON record (not UTF-8)": 1,
            "a redacted subject, action or resource": 1
        })
    );
    assert_eq!(
        r["allow_to_deny"]["examples"][0]["decision_id"],
        "decision:0000000000000002"
    );

    let bundle = dir.path().join("live.tar.gz");
    let built = Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args([
            "bundle",
            "build",
            "--policy",
            &live,
            "--entities",
            &entities,
        ])
        .args(["--revision", "r1", "-o", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let bundle = bundle.to_str().unwrap();
    let (out, same) = replay(&["--log", &log, "--bundle", bundle]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(same["candidate"]["bundle_revision"], "r1");
    assert_eq!(same["report"]["unchanged"], 2);
    let (out, changed) = replay(&["--log", &log, "--policy", &candidate, "--bundle", bundle]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(changed["report"]["allow_to_deny"]["count"], 1);
}
