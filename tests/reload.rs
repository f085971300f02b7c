//! Hot reload with real files and the real server: every way a file gets replaced, bad files
//! that must not replace good ones, polling without events, and swaps under load. Every wait is
//! on a condition with a deadline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flex_auth::reload::ReloadConfig;
use flex_auth::state::Trigger;
use flex_auth::{RegistrySource, Sources};
use http::StatusCode;
use serde_json::Value;
use support::{bridge_snapshot, hash_of, repo_path, TestServer};

/// A directory with the shipped policy package copied in and a registry file.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(registry: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policy")).unwrap();
        std::fs::copy(
            repo_path("policies/ops-warden/policy_package.md"),
            dir.path().join("policy/policy_package.md"),
        )
        .unwrap();
        std::fs::write(dir.path().join("registry.json"), registry).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sources(&self) -> Sources {
        Sources {
            policy: self.path("policy"),
            registry: RegistrySource::Snapshot(self.path("registry.json")),
        }
    }
}

fn watch_only() -> ReloadConfig {
    ReloadConfig {
        watch: true,
        poll_interval: None,
        sighup: false,
        ..ReloadConfig::default()
    }
}

async fn wait_for_registry(server: &TestServer, hash: &str) -> Value {
    server
        .wait_for_status(&format!("registry hash {hash}"), |s| {
            s["registry"]["hash"] == hash
        })
        .await
}

/// Replace a file by writing a temporary file beside it and renaming it over (what editors and
/// `load-registry` do).
fn write_and_rename(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_place_write_reloads_and_flips_the_decision() {
    let setup = Setup::new(&bridge_snapshot(8));
    let server = TestServer::start_reloading(setup.sources(), watch_only()).await;
    assert_eq!(server.bridge_decision(4).await, "allow");

    let tighter = bridge_snapshot(2);
    std::fs::write(setup.path("registry.json"), &tighter).unwrap();
    let status = wait_for_registry(&server, &hash_of(&tighter)).await;
    assert_eq!(status["registry"]["loaded_by"], "watch");
    assert_eq!(server.bridge_decision(4).await, "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_reloads() {
    let setup = Setup::new(&bridge_snapshot(8));
    let server = TestServer::start_reloading(setup.sources(), watch_only()).await;
    let tighter = bridge_snapshot(3);
    write_and_rename(&setup.path("registry.json"), &tighter);
    wait_for_registry(&server, &hash_of(&tighter)).await;
    assert_eq!(server.bridge_decision(4).await, "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_create_reloads_and_the_gap_keeps_the_old_version() {
    let setup = Setup::new(&bridge_snapshot(8));
    let server = TestServer::start_reloading(setup.sources(), watch_only()).await;
    let old = hash_of(&bridge_snapshot(8));
    std::fs::remove_file(setup.path("registry.json")).unwrap();
    // While the file is gone the reload fails and the loaded version keeps serving.
    let status = server
        .wait_for_status("the missing file to be noticed", |s| {
            !s["last_reload_error"].is_null()
        })
        .await;
    assert_eq!(status["registry"]["hash"], old.as_str());
    assert_eq!(status["status"], "degraded");
    assert_eq!(server.bridge_decision(4).await, "allow");

    let tighter = bridge_snapshot(1);
    std::fs::write(setup.path("registry.json"), &tighter).unwrap();
    let status = wait_for_registry(&server, &hash_of(&tighter)).await;
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert_eq!(status["status"], "ready");
    assert_eq!(server.bridge_decision(4).await, "deny");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_symlink_swap_reloads_registry_and_policy() {
    use std::os::unix::fs::symlink;
    // The layout kubelet writes: files are symlinks through `..data`, which points at a
    // timestamped directory and is replaced atomically by renaming a new symlink over it.
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("config");
    std::fs::create_dir(&mount).unwrap();
    let version = |name: &str, max_ttl: i64, policy: &str| {
        let dir = mount.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("registry.json"), bridge_snapshot(max_ttl)).unwrap();
        std::fs::write(dir.join("policy_package.md"), policy).unwrap();
    };
    let shipped =
        std::fs::read_to_string(repo_path("policies/ops-warden/policy_package.md")).unwrap();
    version("..2026_11_23_10_00_00.1", 8, &shipped);
    symlink("..2026_11_23_10_00_00.1", mount.join("..data")).unwrap();
    symlink("..data/registry.json", mount.join("registry.json")).unwrap();
    symlink("..data/policy_package.md", mount.join("policy_package.md")).unwrap();

    let sources = Sources {
        policy: mount.join("policy_package.md"),
        registry: RegistrySource::Snapshot(mount.join("registry.json")),
    };
    let server = TestServer::start_reloading(sources, watch_only()).await;
    assert_eq!(server.bridge_decision(4).await, "allow");

    // New version: tighter TTL, and a policy package with a new manifest version.
    let bumped = shipped.replace("version: 1.0.0", "version: 1.0.1");
    version("..2026_11_23_10_05_00.2", 2, &bumped);
    symlink("..2026_11_23_10_05_00.2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..2026_11_23_10_00_00.1")).unwrap();

    let status = wait_for_registry(&server, &hash_of(&bridge_snapshot(2))).await;
    assert_eq!(status["policy"]["declared_version"], "1.0.1");
    assert_eq!(server.bridge_decision(4).await, "deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_files_never_replace_the_good_one_and_a_good_file_recovers() {
    let setup = Setup::new(&bridge_snapshot(8));
    let server = TestServer::start_reloading(setup.sources(), watch_only()).await;
    let good = hash_of(&bridge_snapshot(8));
    let policy_hash = server.status().await["policy"]["hash"].clone();

    let truncated = {
        let s = bridge_snapshot(2);
        s[..s.len() / 2].to_owned()
    };
    let schema_violation = bridge_snapshot(0);
    type Breakage<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: [Breakage<'_>; 3] = [
        (
            "truncated JSON",
            Box::new(|| std::fs::write(setup.path("registry.json"), &truncated).unwrap()),
            "invalid JSON",
        ),
        (
            "schema violation",
            Box::new(|| std::fs::write(setup.path("registry.json"), &schema_violation).unwrap()),
            "actors[0].max_ttl_hours (actor `agt-state-hub-bridge`): expected integer ≥ 1",
        ),
        (
            "Cedar syntax error",
            Box::new(|| {
                std::fs::write(setup.path("registry.json"), bridge_snapshot(8)).unwrap();
                let md =
                    std::fs::read_to_string(repo_path("policies/ops-warden/policy_package.md"))
                        .unwrap();
                std::fs::write(
                    setup.path("policy/policy_package.md"),
                    md.replacen(
                        "unless { resource has max_ttl_hours };",
                        "unless { resource has };",
                        1,
                    ),
                )
                .unwrap();
            }),
            "policy_package.md:",
        ),
    ];
    for (what, break_it, expected) in cases {
        break_it();
        let status = server
            .wait_for_status(what, |s| {
                s["last_reload_error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(expected))
            })
            .await;
        assert_eq!(status["registry"]["hash"], good.as_str(), "{what}");
        assert_eq!(status["policy"]["hash"], policy_hash, "{what}");
        assert_eq!(status["status"], "degraded", "{what}");
        let ready = server.get("/readyz").await;
        assert_eq!(ready.status, StatusCode::OK, "{what}");
        assert_eq!(ready.json()["status"], "degraded");
        assert_eq!(server.bridge_decision(4).await, "allow", "{what}");
    }

    // Fix both files: the new good version loads and the error clears.
    std::fs::copy(
        repo_path("policies/ops-warden/policy_package.md"),
        setup.path("policy/policy_package.md"),
    )
    .unwrap();
    std::fs::write(setup.path("registry.json"), bridge_snapshot(3)).unwrap();
    let status = wait_for_registry(&server, &hash_of(&bridge_snapshot(3))).await;
    assert!(status["last_reload_error"].is_null(), "{status}");
    assert_eq!(server.get("/readyz").await.json()["status"], "ready");
    assert!(
        status["reloads"]["watch"]["failed"].as_u64().unwrap() >= 3,
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_reloads_without_file_events() {
    let setup = Setup::new(&bridge_snapshot(8));
    let config = ReloadConfig {
        watch: false,
        poll_interval: Some(Duration::from_millis(100)),
        sighup: false,
        ..ReloadConfig::default()
    };
    let server = TestServer::start_reloading(setup.sources(), config).await;
    std::fs::write(setup.path("registry.json"), bridge_snapshot(2)).unwrap();
    let status = wait_for_registry(&server, &hash_of(&bridge_snapshot(2))).await;
    assert_eq!(status["registry"]["loaded_by"], "poll");
    // Polls that find the same content rebuild nothing.
    let status = server
        .wait_for_status("an unchanged poll", |s| {
            s["reloads"]["poll"]["unchanged"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(status["reloads"]["poll"]["loaded"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_at_start_becomes_ready_when_the_file_appears() {
    let setup = Setup::new(&bridge_snapshot(8));
    std::fs::remove_file(setup.path("registry.json")).unwrap();
    let server = TestServer::start_reloading(setup.sources(), watch_only()).await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json();
    assert_eq!(body["checks"][0]["name"], "registry");
    assert_eq!(
        body["checks"][0]["docs"],
        "docs/runbook.md#registry-missing"
    );
    let check = server.post_bridge(4).await;
    assert_eq!(check.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(check.json()["fail_closed"], true);

    write_and_rename(&setup.path("registry.json"), &bridge_snapshot(8));
    wait_for_registry(&server, &hash_of(&bridge_snapshot(8))).await;
    assert_eq!(server.get("/readyz").await.status, StatusCode::OK);
    assert_eq!(server.bridge_decision(4).await, "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swaps_under_load_never_drop_or_mix_a_request() {
    let setup = Setup::new(&bridge_snapshot(8));
    let server = Arc::new(TestServer::start(setup.sources()).await);
    let good = [hash_of(&bridge_snapshot(8)), hash_of(&bridge_snapshot(2))];

    const CLIENTS: usize = 8;
    const CHECKS_PER_CLIENT: usize = 1_500;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let server = server.clone();
        clients.push(tokio::spawn(async move {
            let mut versions = Vec::with_capacity(CHECKS_PER_CLIENT);
            for _ in 0..CHECKS_PER_CLIENT {
                let reply = server.post_bridge(4).await;
                assert_eq!(
                    reply.status,
                    StatusCode::OK,
                    "{}",
                    String::from_utf8_lossy(&reply.body)
                );
                let body = reply.json();
                let allowed = body["decision"] == "allow";
                let version = body["registry_version"].as_str().unwrap().to_owned();
                versions.push((version, allowed));
            }
            versions
        }));
    }

    // Swap between two good versions and a bad one, a bounded number of times, while the
    // clients run; the swapper is stopped when they finish.
    let swapper = {
        let server = server.clone();
        let registry = setup.path("registry.json");
        let broken = bridge_snapshot(2)[..40].to_owned();
        tokio::spawn(async move {
            let versions = [bridge_snapshot(8), broken, bridge_snapshot(2)];
            for round in 0..600 {
                let content = versions[round % versions.len()].clone();
                let path = registry.clone();
                let state = server.state.clone();
                tokio::task::spawn_blocking(move || {
                    write_and_rename(&path, &content);
                    let _ = state.reload(Trigger::Signal);
                })
                .await
                .unwrap();
            }
        })
    };

    let mut seen = Vec::new();
    for client in clients {
        seen.extend(client.await.unwrap());
    }
    swapper.abort();
    assert_eq!(seen.len(), CLIENTS * CHECKS_PER_CLIENT);
    for (version, allowed) in &seen {
        assert!(
            good.contains(version),
            "unexpected registry_version {version}"
        );
        // Each answer is consistent with the version it reports.
        assert_eq!(
            *allowed,
            version == &good[0],
            "version {version} allowed={allowed}"
        );
    }
    let distinct: std::collections::HashSet<&String> = seen.iter().map(|(v, _)| v).collect();
    assert_eq!(
        distinct.len(),
        2,
        "both good versions served during the run"
    );
}

#[test]
fn an_unchanged_poll_reads_and_hashes_but_never_rebuilds() {
    let setup = Setup::new(&bridge_snapshot(8));
    let state = flex_auth::State::new(setup.sources());
    assert_eq!(
        state.reload(Trigger::Poll).unwrap(),
        flex_auth::state::ReloadOutcome::Loaded
    );
    assert_eq!(state.builds(), 1);
    // Same bytes, rewritten (new mtime, new inode): nothing to build.
    let policy = setup.path("policy/policy_package.md");
    let text = std::fs::read_to_string(&policy).unwrap();
    write_and_rename(&policy, &text);
    for _ in 0..3 {
        assert_eq!(
            state.reload(Trigger::Poll).unwrap(),
            flex_auth::state::ReloadOutcome::Unchanged
        );
    }
    assert_eq!(state.builds(), 1, "an unchanged poll rebuilt the engine");
    // A real change builds once.
    write_and_rename(&policy, &format!("{text}\n<!-- changed -->\n"));
    assert_eq!(
        state.reload(Trigger::Poll).unwrap(),
        flex_auth::state::ReloadOutcome::Loaded
    );
    assert_eq!(state.builds(), 2);
}
