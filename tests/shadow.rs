//! `serve --shadow-policy` on the real binary: a candidate that tightens a TTL (and renames its
//! reason, and drops a condition) is evaluated beside the live package on `/v1/check`, a batch,
//! AuthZEN, forward-auth and the proxy. The answers stay the live ones; the record of each disagreeing
//! decision carries the shadow's answer, and the metrics count every pair. A shadow file that
//! breaks, or is missing at start-up, changes nothing live and never touches readiness.

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

use http::Method;
use serde_json::{json, Value};
use support::jwt::{self, TestKey};

use support::ttl_change::{CANDIDATE, ENTITIES, LIVE};

const ROUTES: &str = r#"
routes:
  - name: sign
    method: POST
    path: /sign
    action: sign
    resource:
      type: Actor
      id: { value: box }
    context:
      ttl: { body: /ttl }
"#;

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "signer";
const SECRET: &str = "a-shadow-test-secret-of-more-than-32-bytes";

struct Files {
    live: String,
    candidate: String,
    entities: String,
    routes: String,
    secret: String,
    log: std::path::PathBuf,
}

fn files(dir: &Path) -> Files {
    std::fs::write(dir.join("live.cedar"), LIVE).unwrap();
    std::fs::write(dir.join("candidate.cedar"), CANDIDATE).unwrap();
    std::fs::write(dir.join("entities.json"), ENTITIES).unwrap();
    std::fs::write(dir.join("routes.yaml"), ROUTES).unwrap();
    std::fs::write(dir.join("hs256.secret"), SECRET).unwrap();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    Files {
        live: p("live.cedar"),
        candidate: p("candidate.cedar"),
        entities: p("entities.json"),
        routes: p("routes.yaml"),
        secret: p("hs256.secret"),
        log: dir.join("decisions.jsonl"),
    }
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Value {
    let reply = support::send(
        addr,
        Method::POST,
        path,
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    serde_json::from_slice(&reply.body).unwrap()
}

async fn check(addr: SocketAddr, context: Value) -> Value {
    post(
        addr,
        "/v1/check",
        json!({
            "subject": {"id": "alice"}, "action": "sign",
            "resource": {"type": "Actor", "id": "box"}, "context": context,
        }),
    )
    .await
}

async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let reply = support::send(addr, Method::GET, path, &[], "").await;
    (
        reply.status.as_u16(),
        serde_json::from_slice(&reply.body).unwrap(),
    )
}

async fn metrics(addr: SocketAddr) -> String {
    let reply = support::send(addr, Method::GET, "/metrics", &[], "").await;
    String::from_utf8(reply.body.to_vec()).unwrap()
}

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{series}` in\n{metrics}"))
}

/// The record of `id` in a JSON-lines decision log.
fn record(log: &Path, id: &Value) -> Value {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|r| &r["decision_id"] == id)
        .unwrap_or_else(|| panic!("no record of {id} in\n{text}"))
}

fn policy_hash(status: &Value) -> Value {
    status["policy"]["hash"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_is_recorded_and_counted_on_every_surface_and_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let log = format!("file:{}", f.log.display());
    let upstream = support::broker::Upstream::start().await;
    let upstream_url = format!("http://{}", upstream.addr);
    let proxy: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let proxy_listen = proxy.to_string();
    let (child, addr) = support::spawn_binary(&[
        "--upstream",
        &upstream_url,
        "--proxy-listen",
        &proxy_listen,
        "--policy",
        &f.live,
        "--entities",
        &f.entities,
        "--shadow-policy",
        &f.candidate,
        "--decision-log",
        &log,
        "--decision-log-mode",
        "required",
        "--routes",
        &f.routes,
        "--issuer",
        ISSUER,
        "--audience",
        AUDIENCE,
        "--hs256-secret-file",
        &f.secret,
        "--poll-interval",
        "1s",
        "--mode",
        "production",
    ]);
    let addr: SocketAddr = addr.parse().unwrap();

    let (_, status) = get_json(addr, "/v1/status").await;
    let shadow = &status["shadow"];
    assert_eq!(shadow["loaded"], true, "{status:#}");
    assert_eq!(shadow["sources"]["policy"], f.candidate.as_str());
    assert_eq!(shadow["sources"]["registry"], f.entities.as_str());
    assert_eq!(shadow["last_reload_error"], Value::Null);
    let shadow_version = policy_hash(shadow);
    assert_ne!(shadow_version, policy_hash(&status));
    let live_version = policy_hash(&status);
    let m = metrics(addr).await;
    for kind in ["allow_to_deny", "deny_to_allow", "reasons_changed"] {
        assert_eq!(
            counter(
                &m,
                &format!("flex_auth_shadow_disagreements_total{{kind=\"{kind}\"}}")
            ),
            0
        );
    }

    // /v1/check: the live answer stands; only disagreements carry the shadow's answer.
    let agreed = check(addr, json!({"ttl": 2})).await;
    let tightened = check(addr, json!({"ttl": 6})).await;
    let renamed = check(addr, json!({"ttl": 10})).await;
    let loosened = check(addr, json!({"ttl": 2, "banned": true})).await;
    assert_eq!(agreed["decision"], "allow");
    assert_eq!(tightened["decision"], "allow", "the shadow never answers");
    assert_eq!(tightened["policy_version"], live_version);
    assert_eq!(renamed["reasons"], json!(["ttl_too_long"]));
    assert_eq!(loosened["reasons"], json!(["no_matching_permit"]));

    // A batch: each item shadowed on its own.
    let batch = post(
        addr,
        "/v1/check/batch",
        json!({"checks": [
            {"subject": {"id": "alice"}, "action": "sign", "resource": {"type": "Actor", "id": "box"}, "context": {"ttl": 6}},
            {"subject": {"id": "alice"}, "action": "sign", "resource": {"type": "Actor", "id": "box"}, "context": {"ttl": 3}},
        ]}),
    )
    .await;
    assert_eq!(batch["results"][0]["decision"], "allow");
    assert_eq!(batch["results"][1]["decision"], "allow");

    // AuthZEN.
    let authzen = post(
        addr,
        "/access/v1/evaluation",
        json!({
            "subject": {"type": "user", "id": "alice"}, "action": {"name": "sign"},
            "resource": {"type": "Actor", "id": "box"}, "context": {"ttl": 7},
        }),
    )
    .await;
    assert_eq!(authzen["decision"], true, "{authzen}");
    let authzen_id = authzen["context"]["decision_id"].clone();

    // Forward-auth: the route's check is shadowed like any other.
    let key = TestKey::hs256(SECRET.as_bytes());
    let bearer = format!(
        "Bearer {}",
        key.sign(&jwt::claims("alice", ISSUER, AUDIENCE))
    );
    let envoy = support::send(
        addr,
        Method::POST,
        "/v1/authz/envoy/sign",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        json!({"ttl": 5}).to_string(),
    )
    .await;
    assert_eq!(envoy.status, 200, "{:?}", envoy.body);
    let envoy_id = Value::from(
        envoy.headers["x-flex-auth-decision-id"]
            .to_str()
            .unwrap()
            .to_owned(),
    );

    // The proxy: forwarded on the live allow, whatever the shadow says.
    support::eventually("the proxy listens", async || {
        tokio::net::TcpStream::connect(proxy).await.is_ok()
    })
    .await;
    let proxied = support::send(
        proxy,
        Method::POST,
        "/sign",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        json!({"ttl": 8}).to_string(),
    )
    .await;
    assert_eq!(proxied.status, 200, "{:?}", proxied.body);
    assert_eq!(upstream.count(), 1);
    let proxied_id = Value::from(
        proxied.headers["x-flex-auth-decision-id"]
            .to_str()
            .unwrap()
            .to_owned(),
    );

    let shadow_of = |id: &Value| record(&f.log, id)["shadow"].clone();
    assert_eq!(shadow_of(&agreed["decision_id"]), Value::Null);
    let denied = shadow_of(&tightened["decision_id"]);
    assert_eq!(
        denied,
        json!({
            "decision": "deny", "change": "allow_to_deny", "reasons": ["ttl_over_limit"],
            "policies": ["ttl"], "policy_version": shadow_version,
            "registry_version": status["registry"]["hash"],
        })
    );
    let tightened_record = record(&f.log, &tightened["decision_id"]);
    assert_eq!(tightened_record["decision"], "allow");
    assert_eq!(tightened_record["policy_version"], live_version);
    assert_eq!(
        shadow_of(&renamed["decision_id"])["change"],
        "reasons_changed"
    );
    assert_eq!(
        shadow_of(&loosened["decision_id"])["decision"],
        "allow",
        "deny_to_allow"
    );
    assert_eq!(
        shadow_of(&batch["results"][0]["decision_id"])["change"],
        "allow_to_deny"
    );
    assert_eq!(shadow_of(&batch["results"][1]["decision_id"]), Value::Null);
    assert_eq!(shadow_of(&authzen_id)["change"], "allow_to_deny");
    let envoy_record = record(&f.log, &envoy_id);
    assert_eq!(envoy_record["origin"], "envoy:sign");
    assert_eq!(envoy_record["shadow"]["change"], "allow_to_deny");
    let proxied_record = record(&f.log, &proxied_id);
    assert_eq!(proxied_record["origin"], "proxy:sign");
    assert_eq!(proxied_record["decision"], "allow");
    assert_eq!(proxied_record["shadow"]["decision"], "deny");
    // One record per decision: the shadow adds none.
    let lines = std::fs::read_to_string(&f.log).unwrap().lines().count();
    assert_eq!(lines, 9);

    let m = metrics(addr).await;
    let pair = |live: &str, shadow: &str| {
        counter(
            &m,
            &format!("flex_auth_shadow_decisions_total{{live=\"{live}\",shadow=\"{shadow}\"}}"),
        )
    };
    // allow/deny: ttl 6, batch ttl 6, AuthZEN ttl 7, forward-auth ttl 5, the proxy's ttl 8.
    assert_eq!(pair("allow", "deny"), 5, "{m}");
    assert_eq!(pair("allow", "allow"), 2);
    assert_eq!(pair("deny", "allow"), 1);
    assert_eq!(pair("deny", "deny"), 1);
    let kind = |k: &str| {
        counter(
            &m,
            &format!("flex_auth_shadow_disagreements_total{{kind=\"{k}\"}}"),
        )
    };
    assert_eq!(kind("allow_to_deny"), 5);
    assert_eq!(kind("deny_to_allow"), 1);
    assert_eq!(kind("reasons_changed"), 1);
    // The live counts are the answers given.
    assert_eq!(
        counter(&m, "flex_auth_decisions_total{decision=\"allow\"}"),
        7
    );

    // A shadow file that breaks: reported under `shadow`, nothing live changes.
    std::fs::write(&f.candidate, "permit (principal, action, resource").unwrap();
    support::eventually("the broken shadow is reported", async || {
        let (_, status) = get_json(addr, "/v1/status").await;
        status["shadow"]["last_reload_error"].is_object()
    })
    .await;
    let (ready, readiness) = get_json(addr, "/readyz").await;
    assert_eq!(ready, 200, "{readiness:#}");
    let (_, status) = get_json(addr, "/v1/status").await;
    assert_eq!(status["last_reload_error"], Value::Null);
    assert_eq!(status["status"], "ready");
    let error = &status["shadow"]["last_reload_error"];
    assert_eq!(error["setting"], "FLEX_AUTH_SHADOW_POLICY", "{error:#}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("candidate.cedar"),
        "{error:#}"
    );
    // The last good shadow keeps being evaluated; the live answer is unchanged.
    assert_eq!(policy_hash(&status["shadow"]), shadow_version);
    let again = check(addr, json!({"ttl": 6})).await;
    assert_eq!(again["decision"], "allow");
    assert_eq!(again["policy_version"], live_version);
    assert_eq!(
        shadow_of(&again["decision_id"])["policy_version"],
        shadow_version
    );

    // Promotion: the shadow's (fixed) package becomes the live one; the two agree again.
    std::fs::write(&f.candidate, CANDIDATE).unwrap();
    std::fs::write(&f.live, CANDIDATE).unwrap();
    support::eventually("the candidate is live and the shadow fixed", async || {
        let (_, status) = get_json(addr, "/v1/status").await;
        policy_hash(&status) != live_version && status["shadow"]["last_reload_error"].is_null()
    })
    .await;
    let promoted = check(addr, json!({"ttl": 6})).await;
    assert_eq!(promoted["decision"], "deny");
    assert_eq!(promoted["reasons"], json!(["ttl_over_limit"]));
    assert_eq!(shadow_of(&promoted["decision_id"]), Value::Null);
    support::stop_binary(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_missing_at_start_up_fails_nothing_and_is_picked_up_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let missing = dir.path().join("later.cedar");
    let (child, addr) = support::spawn_binary(&[
        "--policy",
        &f.live,
        "--entities",
        &f.entities,
        "--shadow-policy",
        missing.to_str().unwrap(),
        "--mode",
        "production",
        "--poll-interval",
        "1s",
    ]);
    let addr: SocketAddr = addr.parse().unwrap();
    let (ready, readiness) = get_json(addr, "/readyz").await;
    assert_eq!(
        ready, 200,
        "production mode boots and is ready: {readiness:#}"
    );
    let (_, status) = get_json(addr, "/v1/status").await;
    assert_eq!(status["shadow"]["loaded"], false);
    assert_eq!(
        status["shadow"]["last_reload_error"]["setting"],
        "FLEX_AUTH_SHADOW_POLICY"
    );
    assert_eq!(
        status["shadow"]["last_reload_error"]["docs"],
        "docs/runbook.md#policy-missing"
    );
    let answer = check(addr, json!({"ttl": 6})).await;
    assert_eq!(answer["decision"], "allow");
    let m = metrics(addr).await;
    assert_eq!(
        counter(
            &m,
            "flex_auth_shadow_decisions_total{live=\"allow\",shadow=\"allow\"}"
        ) + counter(
            &m,
            "flex_auth_shadow_decisions_total{live=\"allow\",shadow=\"deny\"}"
        ),
        0,
        "nothing is shadowed while the shadow is not loaded"
    );

    std::fs::write(&missing, CANDIDATE).unwrap();
    support::eventually("the shadow loads", async || {
        let (_, status) = get_json(addr, "/v1/status").await;
        status["shadow"]["loaded"] == true
    })
    .await;
    let answer = check(addr, json!({"ttl": 6})).await;
    assert_eq!(answer["decision"], "allow");
    let m = metrics(addr).await;
    assert_eq!(
        counter(
            &m,
            "flex_auth_shadow_disagreements_total{kind=\"allow_to_deny\"}"
        ),
        1
    );
    support::stop_binary(child);
}

#[test]
fn shadow_flags_that_cannot_work_fail_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
            .arg("serve")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // A shadow registry without a shadow policy.
    let out = run(&[
        "--policy",
        &f.live,
        "--entities",
        &f.entities,
        "--shadow-entities",
        &f.entities,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shadow-policy"));
    // Beside a bundle, the shadow needs its own registry.
    let out = run(&[
        "--bundle",
        dir.path().join("b.tar.gz").to_str().unwrap(),
        "--shadow-policy",
        &f.candidate,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("BOOT_FAIL") && stderr.contains("FLEX_AUTH_SHADOW_POLICY"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_reload_and_sighup_reload_the_shadow_too() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "an-admin-token-for-the-shadow-test\n").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    // No watch, no polling: only the admin API and SIGHUP reload.
    let (child, addr) = support::spawn_binary(&[
        "--policy",
        &f.live,
        "--entities",
        &f.entities,
        "--shadow-policy",
        &f.candidate,
        "--no-watch",
        "--poll-interval",
        "0",
        "--admin-listen",
        &admin.to_string(),
        "--admin-token-file",
        token.to_str().unwrap(),
    ]);
    let addr: SocketAddr = addr.parse().unwrap();
    let (_, status) = get_json(addr, "/v1/status").await;
    let first = policy_hash(&status["shadow"]);

    std::fs::write(&f.candidate, LIVE).unwrap();
    let reply = support::send(
        admin,
        Method::POST,
        "/v1/admin/reload",
        &[("authorization", "Bearer an-admin-token-for-the-shadow-test")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["outcome"], "unchanged", "{body:#}");
    assert_eq!(body["shadow"]["outcome"], "loaded", "{body:#}");
    let second = body["shadow"]["policy_version"].clone();
    assert_ne!(second, first);
    let (_, status) = get_json(addr, "/v1/status").await;
    assert_eq!(policy_hash(&status["shadow"]), second);
    // The shadow now matches the live package: nothing disagrees.
    let agreed = check(addr, json!({"ttl": 6})).await;
    assert_eq!(agreed["decision"], "allow");

    // A broken shadow through the admin API: 200 for the live reload, the failure under `shadow`.
    std::fs::write(&f.candidate, "forbid (").unwrap();
    let reply = support::send(
        admin,
        Method::POST,
        "/v1/admin/reload",
        &[("authorization", "Bearer an-admin-token-for-the-shadow-test")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["shadow"]["outcome"], "failed", "{body:#}");
    assert_eq!(body["shadow"]["setting"], "FLEX_AUTH_SHADOW_POLICY");

    // SIGHUP.
    std::fs::write(&f.candidate, CANDIDATE).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    support::eventually("SIGHUP reloads the shadow", async || {
        let (_, status) = get_json(addr, "/v1/status").await;
        policy_hash(&status["shadow"]) == first && status["shadow"]["last_reload_error"].is_null()
    })
    .await;
    let (_, status) = get_json(addr, "/v1/status").await;
    assert_eq!(
        status["shadow"]["reloads"]["sighup"]["loaded"], 1,
        "{status:#}"
    );
    assert_eq!(status["shadow"]["reloads"]["admin"]["failed"], 1);
    support::stop_binary(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_bundle_the_shadow_reads_its_own_files_and_reloads_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    std::fs::remove_file(&f.candidate).unwrap();
    let candidate = dir.path().join("candidate");
    std::fs::create_dir(&candidate).unwrap();
    std::fs::write(candidate.join("policies.cedar"), CANDIDATE).unwrap();
    let bundle = dir.path().join("live.tar.gz");
    let built = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args([
            "bundle",
            "build",
            "--policy",
            &f.live,
            "--entities",
            &f.entities,
        ])
        .args(["--revision", "r1", "-o", bundle.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let (child, addr) = support::spawn_binary(&[
        "--bundle",
        bundle.to_str().unwrap(),
        "--shadow-policy",
        candidate.to_str().unwrap(),
        "--shadow-entities",
        &f.entities,
        "--poll-interval",
        "1s",
    ]);
    let addr: SocketAddr = addr.parse().unwrap();
    support::eventually("the bundle is live", async || {
        get_json(addr, "/readyz").await.0 == 200
    })
    .await;
    let answer = check(addr, json!({"ttl": 6})).await;
    assert_eq!(answer["decision"], "allow");
    assert_eq!(answer["bundle_revision"], "r1");
    let m = metrics(addr).await;
    assert_eq!(
        counter(
            &m,
            "flex_auth_shadow_disagreements_total{kind=\"allow_to_deny\"}"
        ),
        1
    );
    let (_, status) = get_json(addr, "/v1/status").await;
    let first = policy_hash(&status["shadow"]);
    // The shadow's directory is watched and polled although the live package is a bundle.
    std::fs::write(candidate.join("policies.cedar"), LIVE).unwrap();
    support::eventually("the shadow reloads beside the bundle", async || {
        let (_, status) = get_json(addr, "/v1/status").await;
        policy_hash(&status["shadow"]) != first
    })
    .await;
    let answer = check(addr, json!({"ttl": 6})).await;
    assert_eq!(answer["decision"], "allow");
    let m = metrics(addr).await;
    assert_eq!(
        counter(
            &m,
            "flex_auth_shadow_decisions_total{live=\"allow\",shadow=\"allow\"}"
        ),
        1,
        "the reloaded shadow agrees"
    );
    support::stop_binary(child);
}

#[test]
fn the_shadow_packages_validator_warnings_are_logged_at_start_up() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("policy_package.md");
    let mut text =
        std::fs::read_to_string(support::repo_path("policies/ops-warden/policy_package.md"))
            .unwrap();
    text.push_str(
        "\n```cedar\n@id(\"typo\")\n@reason(\"typo\")\nforbid (principal, action == Action::\"sign\", resource is Subject);\n```\n",
    );
    std::fs::write(&package, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args(["--policy", "policies/ops-warden"])
        .args([
            "--registry",
            "registry/ops-warden/production_registry_snapshot.json",
        ])
        .arg("--shadow-policy")
        .arg(&package)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut warned = false;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            warned |= line.contains("shadow policy validation warning")
                && line.contains("policy is impossible");
            if line.contains("\"listening\"") {
                let _ = tx.send(warned);
            }
        }
    });
    let warned = rx.recv_timeout(std::time::Duration::from_secs(30));
    support::stop_binary(child);
    assert_eq!(
        warned,
        Ok(true),
        "no shadow validation warning before `listening`"
    );
}
