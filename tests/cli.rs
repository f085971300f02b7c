//! The `flex-auth` binary: exit codes and output of `validate`, `check` (local and `--url`),
//! `test`, and `serve` answering over HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::{ops_warden, temp_package, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_flex-auth");
const POLICY: &str = "policies/ops-warden";
const REGISTRY: &str = "registry/ops-warden/production_registry_snapshot.json";

fn flex_auth(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run flex-auth")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn validate_accepts_the_shipped_packages() {
    for registry in [
        REGISTRY,
        "registry/ops-warden/template_registry_snapshot.json",
    ] {
        let out = flex_auth(&["validate", "--policy", POLICY, "--registry", registry]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stdout(&out).starts_with("ok: package `ops-warden` 1.0.0 (5 policies"),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn validate_rejects_with_file_line_col_and_exit_1() {
    let dir = temp_package(&[(
        "p.cedar",
        "permit(principal, action, resource)\nwhen { ) };",
    )]);
    let policy = dir.path().join("p.cedar");
    let out = flex_auth(&[
        "validate",
        "--policy",
        policy.to_str().unwrap(),
        "--registry",
        REGISTRY,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}:2:8:", policy.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn validate_without_registry_checks_the_package_alone() {
    let out = flex_auth(&["validate", "--policy", POLICY]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no registry given"));
    // `check` still needs both: without a registry it cannot decide (exit 2).
    let out = flex_auth(&[
        "check",
        "--policy",
        POLICY,
        "--subject",
        "a",
        "--action",
        "sign",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("missing --registry"),
        "{}",
        stderr(&out)
    );
}

fn local_check(subject: &str, resource: &str, context: &str) -> Output {
    flex_auth(&[
        "check",
        "--policy",
        POLICY,
        "--registry",
        REGISTRY,
        "--subject",
        subject,
        "--action",
        "sign",
        "--resource-id",
        resource,
        "--context",
        context,
    ])
}

#[test]
fn local_check_exit_codes_follow_the_decision() {
    let allow = local_check(
        "iam:agt-state-hub-bridge",
        "agt-state-hub-bridge",
        r#"{"ttl_hours":4,"principals":["state-hub"]}"#,
    );
    assert_eq!(allow.status.code(), Some(0), "{}", stderr(&allow));
    let line = stdout(&allow);
    assert!(line.starts_with("allow decision:"), "{line}");

    let deny = local_check(
        "agt-state-hub-bridge",
        "agt-state-hub-bridge",
        r#"{"ttl_hours":40,"principals":["state-hub"]}"#,
    );
    assert_eq!(deny.status.code(), Some(1));
    assert!(
        stdout(&deny).contains("reasons=ttl_out_of_bounds"),
        "{}",
        stdout(&deny)
    );

    let bad_context = local_check("a", "b", "not json");
    assert_eq!(bad_context.status.code(), Some(2));

    let missing_policy = flex_auth(&[
        "check",
        "--policy",
        "nope",
        "--registry",
        REGISTRY,
        "--subject",
        "a",
        "--action",
        "sign",
    ]);
    assert_eq!(missing_policy.status.code(), Some(2));
    assert!(
        stderr(&missing_policy).contains("cannot decide"),
        "{}",
        stderr(&missing_policy)
    );
}

#[test]
fn local_check_json_prints_the_full_response() {
    let out = flex_auth(&[
        "check",
        "--json",
        "--policy",
        POLICY,
        "--registry",
        REGISTRY,
        "--subject",
        "agt-state-hub-bridge",
        "--action",
        "sign",
        "--context",
        r#"{"ttl_hours":4,"principals":["state-hub"]}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let body: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(body["decision"], "allow");
    assert_eq!(body["fail_closed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_check_exit_codes_and_unreachable_server() {
    let server = TestServer::start(ops_warden()).await;
    let url = server.url();
    let outputs = tokio::task::spawn_blocking(move || {
        let ask = |url: &str, subject: &str, ttl: i64| {
            let context = format!(r#"{{"ttl_hours":{ttl},"principals":["state-hub"]}}"#);
            flex_auth(&[
                "check",
                "--url",
                url,
                "--subject",
                subject,
                "--action",
                "sign",
                "--resource-id",
                "agt-state-hub-bridge",
                "--context",
                &context,
                "--timeout",
                "5s",
            ])
        };
        // A port nothing listens on: bind, read the port, close.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        (
            ask(&url, "agt-state-hub-bridge", 4),
            ask(&url, "agt-state-hub-bridge", 40),
            ask(&url, "adm-example", 4),
            ask(&format!("http://{closed}"), "agt-state-hub-bridge", 4),
        )
    })
    .await
    .unwrap();
    assert_eq!(outputs.0.status.code(), Some(0), "{}", stderr(&outputs.0));
    assert!(stdout(&outputs.0).starts_with("allow decision:"));
    assert_eq!(outputs.1.status.code(), Some(1));
    assert!(stdout(&outputs.1).contains("ttl_out_of_bounds"));
    assert_eq!(outputs.2.status.code(), Some(1));
    assert!(stdout(&outputs.2).contains("subject_not_allowed"));
    assert_eq!(outputs.3.status.code(), Some(2), "{}", stderr(&outputs.3));
    assert!(stderr(&outputs.3).contains("cannot decide"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_check_that_gets_an_error_status_cannot_decide() {
    // A server with a broken policy answers 503: the CLI must not read that as allow or deny.
    let dir = temp_package(&[("p.cedar", "permit(")]);
    let mut sources = ops_warden();
    sources.policy = dir.path().join("p.cedar");
    let server = TestServer::start(sources).await;
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        flex_auth(&[
            "check",
            "--url",
            &url,
            "--subject",
            "a",
            "--action",
            "sign",
            "--context",
            r#"{"ttl_hours":1,"principals":[]}"#,
        ])
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("503"), "{}", stderr(&out));
}

#[test]
fn test_command_passes_the_shipped_cases() {
    let out = flex_auth(&[
        "test",
        "--policy",
        POLICY,
        "--registry",
        REGISTRY,
        "policies/ops-warden/tests.yaml",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("12 passed, 0 failed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn test_coverage_names_the_unreached_policy_and_min_coverage_fails_the_run() {
    // `never` can apply (validation accepts it) but no case reaches it; `nobody` is a forbid
    // whose reason no case produces.
    let policy = r#"
@id("read")
permit (principal, action == Action::"read", resource);
@id("write-own")
permit (principal, action == Action::"write", resource) when { context.own };
@id("never")
permit (principal, action == Action::"delete", resource) when { context.admin };
@id("locked")
@reason("locked")
forbid (principal, action == Action::"write", resource) when { context.locked };
@id("nobody")
@reason("banned")
forbid (principal, action, resource) when { context has banned };
"#;
    let entities = "[]";
    let cases = r#"
cases:
  - name: read
    request: {subject: {id: a}, action: read, resource: {type: Doc, id: d}, context: {}}
    expect: {decision: allow, policies: [read]}
  - name: write own
    request: {subject: {id: a}, action: write, resource: {type: Doc, id: d}, context: {own: true, locked: false}}
    expect: {decision: allow}
  - name: write locked
    request: {subject: {id: a}, action: write, resource: {type: Doc, id: d}, context: {own: true, locked: true}}
    expect: {decision: deny, reasons: [locked]}
  - name: write someone else's
    request: {subject: {id: a}, action: write, resource: {type: Doc, id: d}, context: {own: false, locked: false}}
    expect: {decision: deny, reasons: [no_matching_permit]}
"#;
    let dir = temp_package(&[
        ("p.cedar", policy),
        ("e.json", entities),
        ("cases.yaml", cases),
    ]);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let run = |extra: &[&str]| {
        let (policy, entities, cases) = (path("p.cedar"), path("e.json"), path("cases.yaml"));
        let mut args = vec!["test", "--policy", &policy, "--entities", &entities];
        args.extend_from_slice(extra);
        args.push(&cases);
        flex_auth(&args)
    };
    // Without a coverage flag: passes, no report.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("coverage"), "{}", stdout(&out));

    let out = run(&["--coverage"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("coverage: 3 of 5 policies determined a case (60.0 %)"),
        "{text}"
    );
    let line = |id: &str| {
        text.lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                matches!(words.next(), Some("permit" | "forbid")) && words.next() == Some(id)
            })
            .unwrap_or_else(|| panic!("no line for {id}: {text}"))
            .to_owned()
    };
    assert!(line("read").contains(" 1 case"), "{text}");
    assert!(line("write-own").contains(" 1 case"), "{text}");
    assert!(line("locked").contains("1 case  [locked]"), "{text}");
    assert!(line("never").ends_with("NOT REACHED"), "{text}");
    assert!(line("nobody").contains("[banned]  NOT REACHED"), "{text}");
    assert!(
        text.contains("policies no case reached: never, nobody"),
        "{text}"
    );
    assert!(text.contains("reasons no case produced: banned"), "{text}");
    assert!(
        text.contains("other reasons produced: no_matching_permit (1)"),
        "{text}"
    );

    let out = run(&["--min-coverage", "60"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("60.0 %"), "{}", stdout(&out));
    let out = run(&["--min-coverage", "61%"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("policy coverage 60.0 % is below --min-coverage 61 %"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--min-coverage", "101"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a percentage"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn test_command_fails_with_a_readable_diff() {
    let cases = r#"
cases:
  - name: wrongly expects an allow
    request:
      subject: {id: agt-state-hub-bridge}
      action: sign
      resource: {type: Actor, id: agt-state-hub-bridge}
      context: {ttl_hours: 40, principals: [state-hub]}
    expect: {decision: allow}
  - name: right
    request:
      subject: {id: agt-state-hub-bridge}
      action: sign
      resource: {type: Actor, id: agt-state-hub-bridge}
      context: {ttl_hours: 4, principals: [state-hub]}
    expect: {decision: allow, reasons: []}
"#;
    let dir = temp_package(&[("cases.yaml", cases)]);
    let path = dir.path().join("cases.yaml");
    let out = flex_auth(&[
        "test",
        "--policy",
        POLICY,
        "--registry",
        REGISTRY,
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL  wrongly expects an allow"), "{text}");
    assert!(text.contains("expected: allow"), "{text}");
    assert!(
        text.contains("got:      deny [ttl_out_of_bounds]"),
        "{text}"
    );
    assert!(text.contains("1 passed, 1 failed"), "{text}");
}

#[test]
fn serve_answers_checks_and_stops_on_sigterm() {
    let (child, addr) = support::spawn_binary(&["--policy", POLICY, "--registry", REGISTRY]);
    let url = format!("http://{addr}");
    let out = flex_auth(&[
        "check",
        "--url",
        &url,
        "--subject",
        "agt-state-hub-bridge",
        "--action",
        "sign",
        "--context",
        r#"{"ttl_hours":4,"principals":["state-hub"]}"#,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    support::stop_binary(child);
}

#[test]
fn production_mode_with_a_bad_registry_fails_boot_with_one_line() {
    let dir = temp_package(&[(
        "registry.json",
        r#"{"schema_version": "1.0", "generated_at": "2026-11-23T00:00:00Z", "source": "t",
            "actors": [{"id": "a", "type": "agent", "principals": [], "allowed_subjects": [],
                        "max_ttl_hours": 0, "default_ttl_hours": 0}]}"#,
    )]);
    let registry = dir.path().join("registry.json");
    for args in [
        vec![
            "serve",
            "--mode",
            "production",
            "--policy",
            POLICY,
            "--registry",
            registry.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        vec![
            "serve",
            "--strict",
            "--policy",
            POLICY,
            "--registry",
            registry.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    ] {
        let out = flex_auth(&args);
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("BOOT_FAIL setting=FLEX_AUTH_REGISTRY reason=\""),
            "{err}"
        );
        assert!(
            lines[0].contains("actors[0].max_ttl_hours (actor `a`): expected integer ≥ 1"),
            "{err}"
        );
        assert!(
            lines[0].ends_with("docs=docs/runbook.md#boot-registry-invalid"),
            "{err}"
        );
    }
    let out = flex_auth(&[
        "serve",
        "--mode",
        "production",
        "--policy",
        "missing-dir",
        "--registry",
        REGISTRY,
    ]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out)
            .trim_end()
            .ends_with("docs=docs/runbook.md#boot-policy-missing"),
        "{}",
        stderr(&out)
    );
    let out = flex_auth(&["serve", "--mode", "production", "--policy", POLICY]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).starts_with("BOOT_FAIL setting=FLEX_AUTH_REGISTRY"),
        "{}",
        stderr(&out)
    );
}

fn get_json(addr: &str, path: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    rt.block_on(async {
        support::send(addr, http::Method::GET, path, &[], "")
            .await
            .json()
    })
}

#[test]
fn sighup_reloads_when_watching_and_polling_are_off() {
    let dir = temp_package(&[]);
    let registry = dir.path().join("registry.json");
    let original =
        std::fs::read_to_string(env!("CARGO_MANIFEST_DIR").to_owned() + "/" + REGISTRY).unwrap();
    std::fs::write(&registry, &original).unwrap();
    let (child, addr) = support::spawn_binary(&[
        "--policy",
        POLICY,
        "--registry",
        registry.to_str().unwrap(),
        "--no-watch",
        "--poll-interval",
        "0",
    ]);
    let before = get_json(&addr, "/v1/status")["registry"]["hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let changed = original.replace("\"max_ttl_hours\": 8", "\"max_ttl_hours\": 5");
    assert_ne!(changed, original);
    std::fs::write(&registry, &changed).unwrap();
    let expected = flex_auth::hash::ContentHash::of_bytes(changed.as_bytes()).to_string();
    assert_ne!(before, expected);
    // Nothing watches or polls: the new file is not picked up until SIGHUP.
    assert_eq!(
        get_json(&addr, "/v1/status")["registry"]["hash"],
        before.as_str()
    );
    let _ = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get_json(&addr, "/v1/status");
        if status["registry"]["hash"] == expected.as_str() {
            assert_eq!(status["registry"]["loaded_by"], "sighup");
            assert_eq!(status["reloads"]["sighup"]["loaded"], 1);
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
    support::stop_binary(child);
}

#[test]
fn validate_without_a_registry_checks_the_package_and_deny_warnings_fails_an_impossible_policy() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("policy_package.md");
    let mut text =
        std::fs::read_to_string(support::repo_path("policies/ops-warden/policy_package.md"))
            .unwrap();
    text.push_str(
        "\n```cedar\n@id(\"typo\")\n@reason(\"typo\")\nforbid (principal, action == Action::\"sign\", resource is Subject);\n```\n",
    );
    std::fs::write(&package, text).unwrap();
    let validate = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
            .arg("validate")
            .args(extra)
            .arg("--policy")
            .arg(&package)
            .output()
            .unwrap()
    };
    let lenient = validate(&[]);
    assert_eq!(lenient.status.code(), Some(0), "{lenient:?}");
    assert!(String::from_utf8_lossy(&lenient.stderr).contains("policy is impossible"));
    let strict = validate(&["--deny-warnings"]);
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");
    assert!(String::from_utf8_lossy(&strict.stderr).contains("--deny-warnings"));
}

#[test]
fn an_undeclared_registry_attribute_is_named_by_its_place_in_the_snapshot() {
    let mut snapshot: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::repo_path(
            "registry/ops-warden/production_registry_snapshot.json",
        ))
        .unwrap(),
    )
    .unwrap();
    snapshot["actors"][0]["attributes"]["cost_center"] = "cc-1".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.json");
    std::fs::write(&path, snapshot.to_string()).unwrap();
    let out = flex_auth(&[
        "validate",
        "--policy",
        POLICY,
        "--registry",
        path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.contains("actors[0].attributes.cost_center (actor `"),
        "{text}"
    );
    assert!(text.contains("not declared for `Actor`"), "{text}");
}
