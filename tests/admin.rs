//! The admin API over real HTTP (token checks, reload, registry push to file and to memory) and
//! `flex-auth load-registry` (atomic install at a target, push to a server).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::sync::Arc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use flex_auth::api::ApiConfig;
use flex_auth::{RegistrySource, Sources};
use http::{Method, StatusCode};
use serde_json::json;
use support::{bridge_snapshot, hash_of, repo_path, send, Reply, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_flex-auth");

struct Fixture {
    dir: tempfile::TempDir,
    server: TestServer,
    admin: SocketAddr,
}

impl Fixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("reg")).unwrap();
        std::fs::write(dir.path().join("reg/registry.json"), bridge_snapshot(8)).unwrap();
        std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
        let sources = Sources {
            policy: repo_path("policies/ops-warden"),
            registry: RegistrySource::Snapshot(dir.path().join("reg/registry.json")),
        };
        let server = TestServer::start(sources).await;
        let addr = server
            .start_admin(dir.path().join("token"), ApiConfig::default())
            .await;
        Self {
            dir,
            server,
            admin: addr,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn admin(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("authorization", auth.as_str()));
        }
        send(self.admin, method, path, &headers, body.to_owned()).await
    }

    async fn registry_hash(&self) -> String {
        self.server.status().await["registry"]["hash"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_need_the_right_token_and_tokens_rotate() {
    let f = Fixture::start().await;
    for token in [None, Some("wrong"), Some("")] {
        let reply = f.admin(Method::POST, "/v1/admin/reload", token, "").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(reply.error_code(), "unauthorized");
        assert!(reply.headers.contains_key("www-authenticate"));
    }
    let reply = f
        .admin(Method::POST, "/v1/admin/reload", Some("s3cret-token"), "")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["outcome"], "unchanged");

    std::fs::write(f.path("token"), "rotated").unwrap();
    let reply = f
        .admin(Method::POST, "/v1/admin/reload", Some("s3cret-token"), "")
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = f
        .admin(Method::POST, "/v1/admin/reload", Some("rotated"), "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    // An unreadable token file authorizes nobody.
    std::fs::remove_file(f.path("token")).unwrap();
    let reply = f
        .admin(Method::POST, "/v1/admin/reload", Some("rotated"), "")
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "admin_unavailable");

    let reply = f
        .admin(Method::GET, "/v1/admin/reload", Some("rotated"), "")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "auth comes before routing"
    );
    let reply = f.admin(Method::GET, "/nope", None, "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_picks_up_files_and_reports_failures() {
    let f = Fixture::start().await;
    std::fs::write(f.path("reg/registry.json"), bridge_snapshot(2)).unwrap();
    let reply = f
        .admin(Method::POST, "/v1/admin/reload", Some("s3cret-token"), "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["outcome"], "loaded");
    assert_eq!(
        reply.json()["registry_version"],
        hash_of(&bridge_snapshot(2))
    );
    assert_eq!(f.server.bridge_decision(4).await, "deny");

    std::fs::write(f.path("reg/registry.json"), "{\"truncated\": ").unwrap();
    let reply = f
        .admin(Method::POST, "/v1/admin/reload", Some("s3cret-token"), "")
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_code(), "rejected");
    assert_eq!(f.registry_hash().await, hash_of(&bridge_snapshot(2)));
    assert_eq!(f.server.status().await["reloads"]["admin"]["failed"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_registry_is_validated_then_written_to_the_file() {
    let f = Fixture::start().await;
    let reply = f
        .admin(
            Method::PUT,
            "/v1/admin/registry",
            Some("s3cret-token"),
            &bridge_snapshot(3),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["installed"], "file");
    assert_eq!(
        std::fs::read_to_string(f.path("reg/registry.json")).unwrap(),
        bridge_snapshot(3)
    );
    assert_eq!(f.registry_hash().await, hash_of(&bridge_snapshot(3)));
    assert_eq!(f.server.bridge_decision(4).await, "deny");

    // A bad push changes nothing: not the file, not the version, not readiness.
    let reply = f
        .admin(
            Method::PUT,
            "/v1/admin/registry",
            Some("s3cret-token"),
            &bridge_snapshot(0),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("actors[0].max_ttl_hours"));
    assert_eq!(
        std::fs::read_to_string(f.path("reg/registry.json")).unwrap(),
        bridge_snapshot(3)
    );
    assert_eq!(f.registry_hash().await, hash_of(&bridge_snapshot(3)));
    assert_eq!(f.server.get("/readyz").await.json()["status"], "ready");

    let reply = f
        .admin(
            Method::PUT,
            "/v1/admin/registry",
            Some("wrong"),
            &bridge_snapshot(8),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        std::fs::read_to_string(f.path("reg/registry.json")).unwrap(),
        bridge_snapshot(3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_registry_is_checked_against_the_package_in_force_not_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let package = dir.path().join("policy_package.md");
    std::fs::copy(repo_path("policies/ops-warden/policy_package.md"), &package).unwrap();
    std::fs::write(dir.path().join("registry.json"), bridge_snapshot(8)).unwrap();
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    let sources = Sources {
        policy: package.clone(),
        registry: RegistrySource::Snapshot(dir.path().join("registry.json")),
    };
    let server = TestServer::start(sources).await;
    let admin = server
        .start_admin(dir.path().join("token"), ApiConfig::default())
        .await;
    let policy_version = server.status().await["policy"]["hash"].clone();
    // The package on disk is broken after the load (no watcher runs here): it is not in force.
    std::fs::write(
        &package,
        "```cedar\npermit (principal, action, resource) when {\n```\n",
    )
    .unwrap();
    let reply = send(
        admin,
        Method::PUT,
        "/v1/admin/registry",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret-token"),
        ],
        bridge_snapshot(2),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["policy_version"], policy_version);
    assert_eq!(server.bridge_decision(4).await, "deny");
    assert_eq!(server.bridge_decision(2).await, "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_registry_with_a_duplicate_key_changes_nothing() {
    let f = Fixture::start().await;
    let before = f.registry_hash().await;
    let duplicated = bridge_snapshot(8).replace(
        "\"max_ttl_hours\":8",
        "\"max_ttl_hours\":8,\"max_ttl_hours\":8760",
    );
    let reply = f
        .admin(
            Method::PUT,
            "/v1/admin/registry",
            Some("s3cret-token"),
            &duplicated,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
    assert_eq!(reply.error_code(), "duplicate_key");
    assert_eq!(reply.json()["error"]["field"], "actors[0].max_ttl_hours");
    assert_eq!(f.registry_hash().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_each_report_their_own_version_and_file_matches_memory() {
    let f = Arc::new(Fixture::start().await);
    let pushes: Vec<_> = (1..=8)
        .map(|ttl| {
            let f = Arc::clone(&f);
            tokio::spawn(async move {
                let body = bridge_snapshot(ttl);
                let reply = f
                    .admin(
                        Method::PUT,
                        "/v1/admin/registry",
                        Some("s3cret-token"),
                        &body,
                    )
                    .await;
                (body, reply)
            })
        })
        .collect();
    for push in pushes {
        let (body, reply) = push.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.json()["registry_version"], hash_of(&body));
    }
    let on_disk = std::fs::read_to_string(f.path("reg/registry.json")).unwrap();
    assert_eq!(f.registry_hash().await, hash_of(&on_disk));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_registry_goes_to_memory_when_the_file_cannot_be_written() {
    let f = Fixture::start().await;
    std::fs::remove_dir_all(f.path("reg")).unwrap();
    let reply = f
        .admin(
            Method::PUT,
            "/v1/admin/registry",
            Some("s3cret-token"),
            &bridge_snapshot(5),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["installed"], "memory");
    assert!(
        body["note"].as_str().unwrap().contains("in memory only"),
        "{body}"
    );
    assert_eq!(f.registry_hash().await, hash_of(&bridge_snapshot(5)));
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn load_registry_installs_a_valid_file_and_leaves_a_bad_one_out() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("registry.json");
    std::fs::write(&target, bridge_snapshot(8)).unwrap();
    let good = dir.path().join("good.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&good, bridge_snapshot(4)).unwrap();
    std::fs::write(&bad, bridge_snapshot(0)).unwrap();

    let out = run(&[
        "load-registry",
        "--file",
        bad.to_str().unwrap(),
        "--policy",
        "policies/ops-warden",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("actors[0].max_ttl_hours"));
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        bridge_snapshot(8)
    );

    let out = run(&[
        "load-registry",
        "--file",
        good.to_str().unwrap(),
        "--policy",
        "policies/ops-warden",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        bridge_snapshot(4)
    );
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);

    // An attribute the package's Cedar schema does not declare is caught with --policy.
    let mut extra: serde_json::Value = serde_json::from_str(&bridge_snapshot(4)).unwrap();
    extra["actors"][0]["attributes"] = json!({"shoe_size": 44});
    std::fs::write(&bad, extra.to_string()).unwrap();
    let out = run(&[
        "load-registry",
        "--file",
        bad.to_str().unwrap(),
        "--policy",
        "policies/ops-warden",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shoe_size"));

    let out = run(&["load-registry", "--file", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_registry_pushes_to_a_running_server() {
    let f = Fixture::start().await;
    let url = format!("http://{}", f.admin);
    let file = f.path("new.json");
    std::fs::write(&file, bridge_snapshot(6)).unwrap();
    let wrong = f.path("wrong-token");
    std::fs::write(&wrong, "nope").unwrap();
    let (token, file_s, wrong_s) = (
        f.path("token").display().to_string(),
        file.display().to_string(),
        wrong.display().to_string(),
    );
    let (ok, denied) = tokio::task::spawn_blocking(move || {
        (
            run(&[
                "load-registry",
                "--file",
                &file_s,
                "--url",
                &url,
                "--token-file",
                &token,
            ]),
            run(&[
                "load-registry",
                "--file",
                &file_s,
                "--url",
                &url,
                "--token-file",
                &wrong_s,
            ]),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(f.registry_hash().await, hash_of(&bridge_snapshot(6)));
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("401"));
}

#[test]
fn admin_api_is_off_without_a_token_file_and_boot_fails_with_a_bad_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = format!("127.0.0.1:{port}");
    let (child, _) = support::spawn_binary(&[
        "--policy",
        "policies/ops-warden",
        "--registry",
        "registry/ops-warden/production_registry_snapshot.json",
        "--admin-listen",
        &admin,
    ]);
    assert!(
        std::net::TcpStream::connect(&admin).is_err(),
        "admin API must be off"
    );
    support::stop_binary(child);

    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "  \n").unwrap();
    let out = run(&[
        "serve",
        "--policy",
        "policies/ops-warden",
        "--registry",
        "registry/ops-warden/production_registry_snapshot.json",
        "--listen",
        "127.0.0.1:0",
        "--admin-token-file",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("BOOT_FAIL setting=FLEX_AUTH_ADMIN_TOKEN_FILE"),
        "{err}"
    );
    assert!(
        err.trim_end()
            .ends_with("docs=docs/runbook.md#boot-admin-token-invalid"),
        "{err}"
    );
}
