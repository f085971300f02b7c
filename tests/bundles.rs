//! Bundles end to end, with real components: the `flex-auth bundle` CLI, the binary serving
//! `--bundle` from nginx (which answers `If-None-Match` natively), from a real OCI registry
//! (Debian's `docker-registry`, pushed to with `flex-auth bundle push`), and from a Python
//! server that misbehaves on request. Every bad bundle keeps the last good one in force and
//! says why. Loopback only; every wait has a deadline.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use flex_auth::bundle::{self, BuildInput, Files};
use flex_auth::RegistrySource;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{bridge_snapshot, repo_path, send, sign_request, spawn_binary, stop_binary};

/// A signing key pair and the `kid` it is published under.
struct Key {
    kid: String,
    pair: rcgen::KeyPair,
}

impl Key {
    fn ed25519(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        }
    }

    fn es256(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let raw = self.pair.public_key_raw();
        if raw.len() == 32 {
            json!({"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "x": b64(raw)})
        } else {
            json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
        }
    }

    fn write_private(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.key.pem", self.kid));
        std::fs::write(&path, self.pair.serialize_pem()).unwrap();
        path
    }

    fn write_public(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.pub.pem", self.kid));
        std::fs::write(&path, self.pair.public_key_pem()).unwrap();
        path
    }
}

fn write_jwks(dir: &Path, keys: &[&Key]) -> PathBuf {
    let path = dir.join("bundle-keys.jwks.json");
    let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
    std::fs::write(&path, json!({ "keys": keys }).to_string()).unwrap();
    path
}

/// A registry with the bridge allowed up to `max_ttl` hours, in `dir`.
fn registry_file(dir: &Path, max_ttl: i64) -> PathBuf {
    let path = dir.join(format!("registry-{max_ttl}.json"));
    std::fs::write(&path, bridge_snapshot(max_ttl)).unwrap();
    path
}

/// A bundle of the ops-warden package and `registry`, signed by `signers`, with `tamper`
/// applied to its files after the manifest was made.
fn make_bundle(
    revision: &str,
    registry: &Path,
    signers: &[&Key],
    tamper: impl FnOnce(&mut Files),
) -> Vec<u8> {
    let registry = RegistrySource::Snapshot(registry.to_owned());
    let policy = repo_path("policies/ops-warden");
    let (manifest, mut files) = bundle::build(&BuildInput {
        policy: &policy,
        registry: &registry,
        revision,
        created: SystemTime::now(),
    })
    .unwrap();
    let manifest_bytes = bundle::manifest_bytes(&manifest);
    let signatures: Vec<String> = signers
        .iter()
        .map(|k| {
            bundle::sign(
                &manifest_bytes,
                revision,
                k.pair.serialize_pem().as_bytes(),
                &k.kid,
            )
            .unwrap()
        })
        .collect();
    tamper(&mut files);
    files.insert(bundle::MANIFEST.to_owned(), manifest_bytes);
    if !signatures.is_empty() {
        files.insert(
            bundle::SIGNATURES.to_owned(),
            json!({ "signatures": signatures }).to_string().into_bytes(),
        );
    }
    bundle::pack(&files, 0).unwrap()
}

/// A gzip-compressed tar with entries written raw (names as an attacker would send them).
fn raw_archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        tar.append(&header, *bytes).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// 64 MiB of zeros in one entry: about 64 KiB compressed.
fn bomb() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(64 << 20);
    header.set_mode(0o644);
    tar.append_data(
        &mut header,
        "registry/zeros.json",
        std::io::Read::take(std::io::repeat(0), 64 << 20),
    )
    .unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// nginx serving `dir/www` on a free loopback port (HTTPS with `tls` = (cert, key)), its access
/// log at `dir/access.log` as `REQUEST STATUS`.
async fn start_nginx(nginx: &Path, d: &Path, tls: Option<(&Path, &Path)>) -> (Killed, u16) {
    let port = support::free_port();
    let prefix = d.display();
    let listen = match tls {
        Some((cert, key)) => format!(
            "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
            cert.display(),
            key.display()
        ),
        None => format!("listen 127.0.0.1:{port};"),
    };
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
  log_format short '$request $status';
  access_log {prefix}/access.log short;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  server {{
    {listen}
    location / {{ root {prefix}/www; }}
  }}
}}
"#
        ),
    )
    .unwrap();
    let mut child = Killed::new(
        Command::new(nginx)
            .args(["-p", &prefix.to_string(), "-c", &conf.display().to_string()])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port, child.child(), "nginx").await;
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_over_https_are_trusted_only_through_the_configured_ca_and_recorded() {
    let Some(nginx) = support::nginx_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("www")).unwrap();
    let ca = support::tls::Ca::new("bundle test CA");
    let (cert, key) = support::tls::install(d, &ca.server());
    let ca_file = d.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let signer = Key::ed25519("tls-key");
    let jwks = write_jwks(d, &[&signer]);
    publish(
        &d.join("www"),
        "bundle.tar.gz",
        &make_bundle("t1", &registry_file(d, 8), &[&signer], |_| {}),
        1,
    );
    let (_nginx, port) = start_nginx(&nginx, d, Some((&cert, &key))).await;
    let url = format!("https://127.0.0.1:{port}/bundle.tar.gz");
    let jwks = jwks.display().to_string();

    // Without the private CA the certificate is unknown: nothing is activated, and it says why.
    let (child, addr) = spawn_binary(&[
        "--bundle",
        &url,
        "--bundle-public-key",
        &jwks,
        "--bundle-poll-interval",
        "200ms",
    ]);
    let untrusting = Killed::new(child);
    let addr = addr_of(&addr);
    let page = wait_status(addr, "the TLS failure shows", |p| {
        p["bundle"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("certificate")
    })
    .await;
    assert_eq!(page["status"], "unready", "{page:#}");
    assert_eq!(revision(&page), None);
    let (code, body) = check_bridge(addr, 2).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["fail_closed"], true);
    stop_binary(untrusting.take());

    // With --bundle-ca: active, and every decision record names the revision.
    let log = d.join("decisions.jsonl");
    let sink = format!("file:{}", log.display());
    let ca_arg = ca_file.display().to_string();
    let (child, addr) = spawn_binary(&[
        "--bundle",
        &url,
        "--bundle-public-key",
        &jwks,
        "--bundle-ca",
        &ca_arg,
        "--decision-log",
        &sink,
        "--decision-log-mode",
        "required",
    ]);
    let server = Killed::new(child);
    let addr = addr_of(&addr);
    wait_status(addr, "t1 is active over HTTPS", |p| {
        revision(p) == Some("t1")
    })
    .await;
    let (code, decision) = check_bridge(addr, 2).await;
    assert_eq!(code, StatusCode::OK);
    let id = decision["decision_id"].as_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&log).unwrap();
    let record: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["decision_id"] == id.as_str())
        .expect("the decision is in the log");
    assert_eq!(record["bundle_revision"], "t1");
    stop_binary(server.take());
}

/// Replace `dir/name` atomically, with a modification time of its own (nginx's ETag is the
/// mtime and size: two bundles of one size written in the same second would share one).
fn publish(dir: &Path, name: &str, bytes: &[u8], generation: u64) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    let mtime =
        SystemTime::now() - Duration::from_secs(10_000) + Duration::from_secs(generation * 10);
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn status(addr: SocketAddr) -> Value {
    send(addr, Method::GET, "/v1/status", &[], "").await.json()
}

/// Wait (bounded) until the status page satisfies `condition`; returns it.
async fn wait_status(addr: SocketAddr, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = status(addr).await;
        if condition(&page) {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}; status: {page:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn revision(page: &Value) -> Option<&str> {
    page["bundle"]["revision"].as_str()
}

fn reload_error(page: &Value) -> &str {
    page["last_reload_error"]["message"].as_str().unwrap_or("")
}

async fn check_bridge(addr: SocketAddr, ttl: i64) -> (StatusCode, Value) {
    let body = sign_request(
        "agt-state-hub-bridge",
        "agt-state-hub-bridge",
        ttl,
        &["state-hub"],
    );
    let reply = send(
        addr,
        Method::POST,
        "/v1/check",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    (reply.status, reply.json())
}

fn addr_of(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn tool(candidates: &[&str], install: &str) -> Option<PathBuf> {
    support::required_tool(candidates, install, None)
}

/// A child process killed when the test ends, however it ends.
struct Killed(Option<Child>);

impl Killed {
    fn new(child: Child) -> Self {
        Self(Some(child))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }

    /// The child, for a graceful stop.
    fn take(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_listening(port: u16, child: &mut Child, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}");
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flex-auth"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_builds_signs_verifies_and_inspects_and_refuses_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old, new) = (Key::ed25519("ops-2026"), Key::es256("ops-2027"));
    let (old_key, new_key) = (old.write_private(d), new.write_private(d));
    let old_pub = old.write_public(d);
    let jwks = write_jwks(d, &[&new]);
    let registry = registry_file(d, 8);
    let out = d.join("b.tar.gz");
    let s = |p: &Path| p.display().to_string();
    let policy = s(&repo_path("policies/ops-warden"));

    // An invalid package is never packed.
    let broken = support::temp_package(&[(
        "p.cedar",
        "permit(principal, action, resource) when { nope };",
    )]);
    let (code, _, err) = run_cli(&[
        "bundle",
        "build",
        "--policy",
        &s(broken.path()),
        "--registry",
        &s(&registry),
        "--revision",
        "r1",
        "-o",
        &s(&out),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("invalid:"), "{err}");
    assert!(!out.exists());
    let (code, _, err) = run_cli(&[
        "bundle",
        "build",
        "--policy",
        &policy,
        "--registry",
        &s(&registry),
        "--revision",
        "bad revision",
        "-o",
        &s(&out),
    ]);
    assert_eq!(code, 1, "{err}");

    let (code, stdout, err) = run_cli(&[
        "bundle",
        "build",
        "--policy",
        &policy,
        "--registry",
        &s(&registry),
        "--revision",
        "r1",
        "-o",
        &s(&out),
        "--signing-key",
        &s(&old_key),
        "--kid",
        "ops-2026",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("signed by `ops-2026`"), "{stdout}");
    // The old key (a PEM named by `KID=`) verifies it; the new key set does not know its kid.
    let old_spec = format!("ops-2026={}", s(&old_pub));
    let (code, stdout, err) = run_cli(&["bundle", "verify", &s(&out), "--public-key", &old_spec]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("signed by `ops-2026` (EdDSA)"), "{stdout}");
    let (code, _, err) = run_cli(&["bundle", "verify", &s(&out), "--public-key", &s(&jwks)]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown key id(s) `ops-2026`"), "{err}");
    // Signed again with the new key: both signatures stay, each key set accepts it.
    let (code, stdout, err) = run_cli(&[
        "bundle",
        "sign",
        &s(&out),
        "--key",
        &s(&new_key),
        "--kid",
        "ops-2027",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("ops-2026, ops-2027"), "{stdout}");
    for spec in [old_spec.as_str(), &s(&jwks)] {
        let (code, _, err) = run_cli(&["bundle", "verify", &s(&out), "--public-key", spec]);
        assert_eq!(code, 0, "{spec}: {err}");
    }
    let (code, stdout, err) = run_cli(&["bundle", "inspect", &s(&out), "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["manifest"]["revision"], "r1");
    assert_eq!(shown["signatures"], json!(["ops-2026", "ops-2027"]));
    assert_eq!(shown["package"]["policies"], 5);
    assert_eq!(shown["registry"]["entities"], 1);
    // The package version is the same as from the files: the bundle holds the same bytes.
    let (_, validated, _) =
        run_cli(&["validate", "--policy", &policy, "--registry", &s(&registry)]);
    assert!(
        validated.contains(shown["package"]["policy_version"].as_str().unwrap()),
        "{validated}"
    );

    // A bundle whose registry differs from its manifest is refused by verify and by sign.
    let tampered = make_bundle("r2", &registry, &[&new], |files| {
        let path = files
            .paths()
            .find(|p| p.starts_with("registry/"))
            .unwrap()
            .to_owned();
        let mut bytes = files.take(&path).unwrap();
        bytes.extend_from_slice(b" ");
        files.insert(path, bytes);
    });
    let tampered_path = d.join("tampered.tar.gz");
    std::fs::write(&tampered_path, tampered).unwrap();
    let (code, _, err) = run_cli(&[
        "bundle",
        "verify",
        &s(&tampered_path),
        "--public-key",
        &s(&jwks),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("differs from the manifest"), "{err}");
    let (code, _, err) = run_cli(&[
        "bundle",
        "sign",
        &s(&tampered_path),
        "--key",
        &s(&new_key),
        "--kid",
        "ops-2027",
    ]);
    assert_eq!(code, 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_from_nginx_activate_and_every_bad_one_keeps_the_last_good() {
    let Some(nginx) = support::nginx_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let www = d.join("www");
    std::fs::create_dir(&www).unwrap();
    let (old, new, stranger) = (
        Key::ed25519("k-old"),
        Key::es256("k-new"),
        Key::ed25519("k-stranger"),
    );
    let jwks = write_jwks(d, &[&old, &new]);
    let (reg8, reg4) = (registry_file(d, 8), registry_file(d, 4));
    publish(
        &www,
        "bundle.tar.gz",
        &make_bundle("r1", &reg8, &[&old], |_| {}),
        1,
    );

    let (_nginx, port) = start_nginx(&nginx, d, None).await;

    let url = format!("http://127.0.0.1:{port}/bundle.tar.gz");
    let cache = d.join("cache");
    let (child, addr) = spawn_binary(&[
        "--bundle",
        &url,
        "--bundle-public-key",
        &jwks.display().to_string(),
        "--bundle-poll-interval",
        "200ms",
        "--bundle-cache-dir",
        &cache.display().to_string(),
        "--bundle-max-bytes",
        "1048576",
    ]);
    let server = Killed::new(child);
    let addr = addr_of(&addr);

    let page = wait_status(addr, "r1 is active", |p| revision(p) == Some("r1")).await;
    assert_eq!(page["bundle"]["kid"], "k-old");
    assert_eq!(page["sources"]["bundle"], url.as_str());
    let (code, decision) = check_bridge(addr, 6).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["bundle_revision"], "r1");
    // Unchanged polls are conditional and answered 304 by nginx.
    support::eventually("nginx logs 304s for unchanged polls", async || {
        let log = std::fs::read_to_string(d.join("access.log")).unwrap_or_default();
        log.lines().filter(|l| l.ends_with(" 304")).count() >= 3
    })
    .await;
    assert!(
        cache.join("bundle.tar.gz").exists(),
        "the activated bundle is cached"
    );

    // Key rotation: a bundle signed by the new key activates beside the old one's.
    let r2 = make_bundle("r2", &reg4, &[&new], |_| {});
    publish(&www, "bundle.tar.gz", &r2, 2);
    wait_status(addr, "r2 is active", |p| revision(p) == Some("r2")).await;
    let (_, decision) = check_bridge(addr, 6).await;
    assert_eq!(
        decision["decision"], "deny",
        "r2's registry caps the ttl at 4 hours"
    );
    assert_eq!(decision["bundle_revision"], "r2");

    let tamper = |files: &mut Files| {
        let path = files
            .paths()
            .find(|p| p.starts_with("registry/"))
            .unwrap()
            .to_owned();
        files.insert(path, bridge_snapshot(24).into_bytes());
    };
    let dotdot = raw_archive(&[("../escape.cedar", b"permit(principal, action, resource);")]);
    let whole = make_bundle("r9", &reg8, &[&new], |_| {});
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tampered",
            make_bundle("r3", &reg8, &[&new], tamper),
            "differs from the manifest",
        ),
        (
            "unsigned",
            make_bundle("r4", &reg8, &[], |_| {}),
            "is not signed",
        ),
        (
            "unknown kid",
            make_bundle("r5", &reg8, &[&stranger], |_| {}),
            "unknown key id(s) `k-stranger`",
        ),
        (
            "truncated",
            whole[..whole.len() / 2].to_vec(),
            "not a complete gzip-compressed tar",
        ),
        ("bomb", bomb(), "unpacks to more than 1048576 bytes"),
        ("dot-dot", dotdot, "`..`"),
    ];
    for (generation, (name, bytes, why)) in (3..).zip(bad) {
        publish(&www, "bundle.tar.gz", &bytes, generation);
        let page = wait_status(addr, name, |p| reload_error(p).contains(why)).await;
        assert_eq!(revision(&page), Some("r2"), "{name}: the last good stays");
        assert_eq!(page["status"], "degraded", "{name}");
        assert_eq!(page["last_reload_error"]["trigger"], "bundle", "{name}");
        let (code, decision) = check_bridge(addr, 2).await;
        assert_eq!(code, StatusCode::OK, "{name}");
        assert_eq!(decision["bundle_revision"], "r2", "{name}");
        assert_eq!(decision["decision"], "allow", "{name}");
    }
    let page = status(addr).await;
    assert!(
        page["bundle"]["checks"]["rejected"].as_u64().unwrap() >= 6,
        "{page:#}"
    );
    // The source goes back to the bundle in force: nothing is rebuilt, the error clears.
    let updated = page["bundle"]["checks"]["updated"].clone();
    publish(&www, "bundle.tar.gz", &r2, 10);
    let page = wait_status(addr, "back to r2", |p| p["last_reload_error"].is_null()).await;
    assert_eq!(revision(&page), Some("r2"));
    assert_eq!(
        page["bundle"]["checks"]["updated"], updated,
        "r2 was not built again"
    );
    assert_eq!(page["status"], "ready");

    // A good revision again: in force, and the error is gone.
    publish(
        &www,
        "bundle.tar.gz",
        &make_bundle("r10", &reg8, &[&old, &new], |_| {}),
        20,
    );
    let page = wait_status(addr, "r10 is active", |p| revision(p) == Some("r10")).await;
    assert_eq!(page["last_reload_error"], Value::Null);
    let ready = send(addr, Method::GET, "/readyz", &[], "").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "ready");
    let metrics = String::from_utf8_lossy(&send(addr, Method::GET, "/metrics", &[], "").await.body)
        .into_owned();
    assert!(
        metrics.contains("flex_auth_bundle_revision_info{digest="),
        "{metrics}"
    );
    assert!(metrics.contains("revision=\"r10\""), "{metrics}");
    assert!(
        metrics.contains("flex_auth_bundle_checks_total{result=\"rejected\"} 6"),
        "{metrics}"
    );
    stop_binary(server.take());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_from_a_real_oci_registry_push_pull_and_survive_its_outage() {
    let Some(registry) = tool(
        &["/usr/bin/docker-registry"],
        "apt-get install docker-registry",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = Key::ed25519("oci-key");
    let jwks = write_jwks(d, &[&key]);
    let (reg8, reg4) = (registry_file(d, 8), registry_file(d, 4));
    let port = support::free_port();
    let config = d.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            d.join("storage").display()
        ),
    )
    .unwrap();
    let start_registry = || {
        Killed::new(
            Command::new(&registry)
                .args(["serve", &config.display().to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut running = start_registry();
    wait_listening(port, running.child(), "docker-registry").await;

    let reference = format!("oci://127.0.0.1:{port}/flex-auth/ops-warden:prod");
    let push = |revision: &str, registry_file: &Path| {
        let file = d.join(format!("{revision}.tar.gz"));
        std::fs::write(&file, make_bundle(revision, registry_file, &[&key], |_| {})).unwrap();
        let (code, stdout, err) =
            run_cli(&["bundle", "push", &file.display().to_string(), &reference]);
        assert_eq!(code, 0, "push {revision}: {err}");
        assert!(
            stdout.contains(&format!("pushed revision {revision}")),
            "{stdout}"
        );
        file
    };
    let first = push("o1", &reg8);
    // What is pulled is what was pushed, byte for byte.
    let pulled = d.join("pulled.tar.gz");
    let (code, _, err) = run_cli(&["bundle", "pull", &pulled.display().to_string(), &reference]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read(&pulled).unwrap(),
        std::fs::read(&first).unwrap()
    );
    // Anything that is not a bundle is not pushed.
    let junk = d.join("junk.tar.gz");
    std::fs::write(&junk, b"not a bundle").unwrap();
    let (code, _, _) = run_cli(&["bundle", "push", &junk.display().to_string(), &reference]);
    assert_eq!(code, 1);

    let (child, addr) = spawn_binary(&[
        "--bundle",
        &reference,
        "--bundle-public-key",
        &jwks.display().to_string(),
        "--bundle-poll-interval",
        "200ms",
    ]);
    let server = Killed::new(child);
    let addr = addr_of(&addr);
    let page = wait_status(addr, "o1 is active", |p| revision(p) == Some("o1")).await;
    assert_eq!(page["bundle"]["kid"], "oci-key");
    assert_eq!(check_bridge(addr, 6).await.1["decision"], "allow");

    // A new tag digest activates.
    push("o2", &reg4);
    wait_status(addr, "o2 is active", |p| revision(p) == Some("o2")).await;
    let (_, decision) = check_bridge(addr, 6).await;
    assert_eq!(decision["decision"], "deny");
    assert_eq!(decision["bundle_revision"], "o2");
    let unchanged = |p: &Value| p["bundle"]["checks"]["unchanged"].as_u64().unwrap_or(0);
    let before = unchanged(&status(addr).await);
    wait_status(addr, "unchanged polls compare the digest", |p| {
        unchanged(p) >= before + 3
    })
    .await;

    // The registry goes away: the last good keeps deciding, readiness degrades.
    drop(running);
    let page = wait_status(addr, "the outage is seen", |p| {
        p["bundle"]["consecutive_failures"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert_eq!(page["status"], "degraded", "{page:#}");
    let (code, decision) = check_bridge(addr, 2).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(decision["bundle_revision"], "o2");
    // It comes back: ready again.
    running = start_registry();
    wait_listening(port, running.child(), "docker-registry").await;
    wait_status(addr, "the registry answers again", |p| {
        p["status"] == "ready"
    })
    .await;
    stop_binary(server.take());
    drop(running);
}

/// The Python bundle server of `tests/support/bundle_server.py` on `port` (0: any), serving
/// `root`; returns it with its port.
fn python_server(root: &Path, port: u16) -> Option<(Killed, u16)> {
    use std::io::BufRead as _;
    let python = tool(&["/usr/bin/python3"], "apt-get install python3")?;
    let mut child = Command::new(python)
        .arg(repo_path("tests/support/bundle_server.py"))
        .arg(root)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server prints its port");
    Some((Killed::new(child), line.trim().parse().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_bundle_carries_a_restart_through_an_outage_and_staleness_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let key = Key::ed25519("cache-key");
    let jwks = write_jwks(&d, &[&key]);
    let root = d.join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(
        root.join("bundle.tar.gz"),
        make_bundle("c1", &registry_file(&d, 8), &[&key], |_| {}),
    )
    .unwrap();
    let Some((source, port)) = python_server(&root, 0) else {
        return;
    };
    let url = format!("http://127.0.0.1:{port}/bundle.tar.gz");
    let cache = d.join("cache").display().to_string();
    let jwks = jwks.display().to_string();
    let args = |extra: &[&'static str]| {
        let mut args = vec![
            "--bundle".to_owned(),
            url.clone(),
            "--bundle-public-key".to_owned(),
            jwks.clone(),
            "--bundle-cache-dir".to_owned(),
            cache.clone(),
            "--bundle-poll-interval".to_owned(),
            "200ms".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let spawn = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (child, addr) = spawn_binary(&refs);
        (Killed::new(child), addr_of(&addr))
    };

    // First life: the source answers, the bundle is activated and cached.
    let (server, addr) = spawn(args(&[]));
    wait_status(addr, "c1 is active", |p| {
        revision(p) == Some("c1") && p["status"] == "ready"
    })
    .await;
    stop_binary(server.take());

    // The source goes down; a restart comes up on the cached revision, degraded.
    drop(source);
    let (server, addr) = spawn(args(&[]));
    let page = wait_status(addr, "the cached c1 serves", |p| revision(p) == Some("c1")).await;
    assert_eq!(page["bundle"]["from_cache"], true);
    assert_eq!(page["status"], "degraded", "{page:#}");
    let check = page["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bundle")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "warn");
    assert!(
        check["reason"]
            .as_str()
            .unwrap()
            .contains("cached revision `c1`"),
        "{check}"
    );
    assert_eq!(check["docs"], "docs/runbook.md#bundle-unreachable");
    let (code, decision) = check_bridge(addr, 6).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(decision["bundle_revision"], "c1");
    // The source is back: ready, no longer from the cache.
    let (source, _) = python_server(&root, port).unwrap();
    let page = wait_status(addr, "the source answers again", |p| p["status"] == "ready").await;
    assert_eq!(page["bundle"]["from_cache"], false);
    stop_binary(server.take());

    // Down again, and the operator would rather deny than decide on an old policy. The last
    // successful check the cache recorded is over 2 s old: a restart does not reset the clock,
    // so the very first decision is already refused.
    drop(source);
    let meta = d.join("cache").join("bundle.json");
    support::eventually("the cached check is over 3 s old", async || {
        let text = std::fs::read_to_string(&meta).unwrap();
        let at: Value = serde_json::from_str(&text).unwrap();
        let at = humantime::parse_rfc3339(at["checked_at"].as_str().unwrap()).unwrap();
        SystemTime::now().duration_since(at).unwrap_or_default() > Duration::from_secs(3)
    })
    .await;
    let (server, addr) = spawn(args(&["--bundle-max-staleness", "2s"]));
    let (code, body) = check_bridge(addr, 2).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "bundle_stale");
    assert_eq!(body["fail_closed"], true);
    let ready = send(addr, Method::GET, "/readyz", &[], "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json();
    let check = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bundle")
        .unwrap()
        .clone();
    assert_eq!(check["status"], "fail", "{body:#}");
    assert_eq!(check["docs"], "docs/runbook.md#bundle-stale");
    // The source returns: fresh again, decisions again.
    let (_source, _) = python_server(&root, port).unwrap();
    support::eventually("decisions resume", async || {
        check_bridge(addr, 2).await.0 == StatusCode::OK
    })
    .await;
    stop_binary(server.take());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_source_is_bounded_and_never_replaces_the_last_good() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let key = Key::ed25519("fault-key");
    let jwks = write_jwks(&d, &[&key]);
    let root = d.join("root");
    std::fs::create_dir(&root).unwrap();
    let good = make_bundle("f1", &registry_file(&d, 8), &[&key], |_| {});
    std::fs::write(root.join("bundle.tar.gz"), &good).unwrap();
    let Some((_source, port)) = python_server(&root, 0) else {
        return;
    };
    let url = format!("http://127.0.0.1:{port}/bundle.tar.gz");
    let (child, addr) = spawn_binary(&[
        "--bundle",
        &url,
        "--bundle-public-key",
        &jwks.display().to_string(),
        "--bundle-poll-interval",
        "200ms",
        "--bundle-read-timeout",
        "1s",
        "--bundle-download-timeout",
        "3s",
        "--bundle-max-bytes",
        "1048576",
    ]);
    let server = Killed::new(child);
    let addr = addr_of(&addr);
    wait_status(addr, "f1 is active", |p| revision(p) == Some("f1")).await;
    // A different bundle behind every fault, so that a fault that let bytes through would show.
    std::fs::write(
        root.join("bundle.tar.gz"),
        make_bundle("f2", &registry_file(&d, 4), &[&key], |_| {}),
    )
    .unwrap();
    let faults = [
        ("500", "answered 500"),
        // One byte a second defeats a per-read timeout; the whole-download deadline ends it.
        ("slow", "--bundle-download-timeout"),
        ("short", "broke off"),
        ("endless", "--bundle-max-bytes"),
        ("silent", "sent no response within"),
    ];
    for (mode, why) in faults {
        std::fs::write(root.join("mode"), mode).unwrap();
        let started = std::time::Instant::now();
        let page = wait_status(addr, mode, |p| {
            p["bundle"]["last_error"]
                .as_str()
                .unwrap_or("")
                .contains(why)
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{mode} took {:?}",
            started.elapsed()
        );
        assert_eq!(revision(&page), Some("f1"), "{mode}");
        assert_eq!(page["status"], "degraded", "{mode}");
        let (code, decision) = check_bridge(addr, 6).await;
        assert_eq!(code, StatusCode::OK, "{mode}");
        assert_eq!(decision["bundle_revision"], "f1", "{mode}");
    }
    std::fs::write(root.join("mode"), "ok").unwrap();
    wait_status(addr, "f2 arrives once the source behaves", |p| {
        revision(p) == Some("f2")
    })
    .await;
    stop_binary(server.take());
}

#[test]
fn start_up_refuses_what_can_never_be_safe() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = Key::ed25519("k");
    let bundle_file = d.join("b.tar.gz");
    std::fs::write(
        &bundle_file,
        make_bundle("s1", &registry_file(d, 8), &[&key], |_| {}),
    )
    .unwrap();
    let b = bundle_file.display().to_string();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--bundle", &b];
        args.extend_from_slice(extra);
        run_cli(&args)
    };
    // Production without a key: refused, unless knowingly insecure.
    let (code, _, err) = serve(&["--mode", "production"]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("BOOT_FAIL setting=FLEX_AUTH_BUNDLE_PUBLIC_KEY"),
        "{err}"
    );
    assert!(
        err.contains("docs=docs/runbook.md#boot-bundle-signature"),
        "{err}"
    );
    // A bundle signed by another key in production: BOOT_FAIL naming the bundle.
    let other = write_jwks(d, &[&Key::ed25519("other")]);
    let (code, _, err) = serve(&[
        "--mode",
        "production",
        "--bundle-public-key",
        &other.display().to_string(),
    ]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("BOOT_FAIL setting=FLEX_AUTH_BUNDLE ")
            && err.contains("unknown key id(s) `k`"),
        "{err}"
    );
    // Plain HTTP off loopback, files and a bundle together, bundle flags without a bundle.
    let (code, _, err) = run_cli(&["serve", "--bundle", "http://bundles.example/b.tar.gz"]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("--bundle-allow-http"), "{err}");
    let (code, _, err) = run_cli(&["serve", "--bundle", &b, "--policy", "policies/ops-warden"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = run_cli(&[
        "serve",
        "--policy",
        "policies/ops-warden",
        "--registry",
        "x.json",
        "--bundle-cache-dir",
        "/tmp/x",
    ]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("--bundle-cache-dir is set but --bundle is not"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_a_local_bundle_admin_reload_checks_it_and_a_pushed_registry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = Key::es256("local");
    let jwks = write_jwks(d, &[&key]);
    let file = d.join("bundle.tar.gz");
    std::fs::write(
        &file,
        make_bundle("l1", &registry_file(d, 8), &[&key], |_| {}),
    )
    .unwrap();
    let token = d.join("admin.token");
    std::fs::write(&token, "s3cret-admin-token").unwrap();
    let admin_port = support::free_port();
    let admin_listen = format!("127.0.0.1:{admin_port}");
    let (child, addr) = spawn_binary(&[
        "--bundle",
        &file.display().to_string(),
        "--bundle-public-key",
        &jwks.display().to_string(),
        // Long enough that only the admin API makes it look again.
        "--bundle-poll-interval",
        "1h",
        "--admin-token-file",
        &token.display().to_string(),
        "--admin-listen",
        &admin_listen,
    ]);
    let server = Killed::new(child);
    let addr = addr_of(&addr);
    let admin: SocketAddr = admin_listen.parse().unwrap();
    wait_status(addr, "l1 is active", |p| revision(p) == Some("l1")).await;
    let auth = [("authorization", "Bearer s3cret-admin-token")];

    // AuthZEN answers carry the revision too.
    let evaluation = json!({
        "subject": {"type": "Subject", "id": "agt-state-hub-bridge"},
        "action": {"name": "sign"},
        "resource": {"type": "Actor", "id": "agt-state-hub-bridge"},
        "context": {"ttl_hours": 1, "principals": ["state-hub"]},
    });
    let answer = send(
        addr,
        Method::POST,
        "/access/v1/evaluation",
        &[("content-type", "application/json")],
        evaluation.to_string(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.json()["context"]["bundle_revision"], "l1");

    let reload = send(admin, Method::POST, "/v1/admin/reload", &auth, "").await;
    assert_eq!(reload.status, StatusCode::OK);
    assert_eq!(reload.json()["outcome"], "unchanged");
    std::fs::write(
        &file,
        make_bundle("l2", &registry_file(d, 4), &[&key], |_| {}),
    )
    .unwrap();
    let reload = send(admin, Method::POST, "/v1/admin/reload", &auth, "").await;
    assert_eq!(reload.status, StatusCode::OK, "{:?}", reload.body);
    assert_eq!(reload.json()["outcome"], "loaded");
    assert_eq!(reload.json()["bundle_revision"], "l2");
    // A bad bundle: the admin API says why, and nothing changed.
    std::fs::write(&file, b"garbage").unwrap();
    let reload = send(admin, Method::POST, "/v1/admin/reload", &auth, "").await;
    assert_eq!(reload.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        reload.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a complete gzip"),
        "{:?}",
        reload.body
    );
    assert_eq!(check_bridge(addr, 2).await.1["bundle_revision"], "l2");

    // A registry pushed past the bundle would bypass its signature: refused.
    let pushed = send(
        admin,
        Method::PUT,
        "/v1/admin/registry",
        &[auth[0], ("content-type", "application/json")],
        bridge_snapshot(24),
    )
    .await;
    assert_eq!(pushed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        pushed.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("only inside a bundle"),
        "{:?}",
        pushed.body
    );
    let (_, decision) = check_bridge(addr, 6).await;
    assert_eq!(
        decision["decision"], "deny",
        "the pushed 24 h cap was not installed"
    );
    stop_binary(server.take());
}

/// One signed bundle and the key set that trusts it, made once for the property tests.
fn fixture() -> &'static (Vec<u8>, flex_auth::bundle::Trust, tempfile::TempDir) {
    static FIXTURE: std::sync::OnceLock<(Vec<u8>, flex_auth::bundle::Trust, tempfile::TempDir)> =
        std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key = Key::ed25519("prop");
        let jwks = write_jwks(dir.path(), &[&key]);
        let archive = make_bundle("p1", &registry_file(dir.path(), 8), &[&key], |_| {});
        let trust = flex_auth::bundle::Trust::load(&[jwks.display().to_string()]).unwrap();
        (archive, trust, dir)
    })
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, ..Default::default() })]

    /// Flipping bytes anywhere in a signed bundle either gets it refused or leaves exactly the
    /// signed content: never a panic, never other files accepted.
    #[test]
    fn a_damaged_bundle_is_refused_or_identical(
        flips in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 1u8..=255), 1..4)
    ) {
        let (archive, trust, _) = fixture();
        let original = bundle::open(archive, 1 << 20, trust).unwrap();
        let mut damaged = archive.clone();
        for (at, xor) in &flips {
            let i = at.index(damaged.len());
            damaged[i] ^= xor;
        }
        if let Ok(opened) = bundle::open(&damaged, 1 << 20, trust) {
            proptest::prop_assert_eq!(&opened.manifest, &original.manifest);
            let files: Vec<_> = opened.files().iter().collect();
            let before: Vec<_> = original.files().iter().collect();
            proptest::prop_assert_eq!(files, before);
        }
    }

    /// Arbitrary bytes are never a bundle, and never a panic.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
        let (_, trust, _) = fixture();
        proptest::prop_assert!(bundle::open(&bytes, 1 << 20, trust).is_err());
    }
}
