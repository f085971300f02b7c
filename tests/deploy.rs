//! The Kubernetes manifests (`deploy/`), the Helm chart (`charts/flex-auth`) and the Dockerfile
//! hold what the runbook promises: the security settings, probes and drain budget are there, the
//! example files they ship are the repository's, and — the part a schema cannot check — the
//! containers they describe actually work: each flex-auth container is started as the real binary
//! with exactly its manifest's environment and its ConfigMaps and Secrets written where they would
//! be mounted, then asked for decisions over HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use support::{jwt, repo_path, send, sign_request};

const BIN: &str = env!("CARGO_BIN_EXE_flex-auth");

/// Every YAML document of a file (or of a string), as JSON values.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// ConfigMaps and Secrets by name: key → content.
#[derive(Debug, Default)]
struct Objects {
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
}

impl Objects {
    /// What `kubectl apply -k deploy/` creates from the kustomization's generators.
    fn from_kustomization(dir: &str) -> Self {
        let k = &documents(&read(&format!("{dir}/kustomization.yaml")))[0];
        let mut objects = Self::default();
        for (field, into) in [
            ("configMapGenerator", &mut objects.config_maps),
            ("secretGenerator", &mut objects.secrets),
        ] {
            for generator in k[field].as_array().unwrap() {
                let mut data = BTreeMap::new();
                for file in generator["files"].as_array().unwrap() {
                    let spec = file.as_str().unwrap();
                    let (key, path) = match spec.split_once('=') {
                        Some((key, path)) => (key.to_owned(), path),
                        None => (
                            Path::new(spec)
                                .file_name()
                                .unwrap()
                                .to_string_lossy()
                                .into_owned(),
                            spec,
                        ),
                    };
                    data.insert(key, read(&format!("{dir}/{path}")));
                }
                into.insert(generator["name"].as_str().unwrap().to_owned(), data);
            }
        }
        objects
    }

    /// The ConfigMaps and Secrets among rendered documents.
    fn from_documents(docs: &[Value]) -> Self {
        let mut objects = Self::default();
        for doc in docs {
            let name = doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let data = || -> BTreeMap<String, String> {
                doc["data"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            match doc["kind"].as_str() {
                Some("ConfigMap") => {
                    objects.config_maps.insert(name, data());
                }
                Some("Secret") => {
                    objects.secrets.insert(name, data());
                }
                _ => {}
            }
        }
        objects
    }
}

/// The pod templates of every Deployment among `docs`.
fn pod_specs(docs: &[Value]) -> Vec<(String, Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_owned(),
                d["spec"]["template"]["spec"].clone(),
            )
        })
        .collect()
}

/// Every container of a pod spec, init containers (sidecars) included.
fn containers(pod: &Value) -> Vec<Value> {
    let mut all = Vec::new();
    for field in ["initContainers", "containers"] {
        if let Some(list) = pod[field].as_array() {
            all.extend(list.iter().cloned());
        }
    }
    all
}

fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().to_owned(),
                        e["value"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Tokens `sidecar` accepts: HS256 with the example's `broker-hs256` secret, its issuer and
/// audience, valid for five minutes.
fn demo_tokens(objects: &Objects, sidecar: &Value) -> impl Fn(&str) -> String {
    let secret = objects.secrets["broker-hs256"]["hs256.secret"].clone();
    let key = jwt::TestKey::hs256(secret.strip_suffix('\n').unwrap_or(&secret).as_bytes());
    let env = env_of(sidecar);
    move |sub: &str| {
        key.sign(&json!({
            "iss": env["FLEX_AUTH_ISSUER"], "aud": env["FLEX_AUTH_AUDIENCE"], "sub": sub,
            "exp": jwt::now() + 300, "iat": jwt::now(),
        }))
    }
}

fn is_flex_auth(container: &Value) -> bool {
    container["name"] == "flex-auth"
}

fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("`{duration}` is not whole seconds"))
}

/// The properties docs/runbook.md and the issue promise for every pod.
fn check_pod(name: &str, pod: &Value) {
    let sc = &pod["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true, "{name}: runAsNonRoot");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
    assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
    for c in containers(pod) {
        let cname = c["name"].as_str().unwrap();
        let csc = &c["securityContext"];
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{name}/{cname}");
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{name}/{cname}");
        assert_eq!(
            csc["capabilities"]["drop"],
            json!(["ALL"]),
            "{name}/{cname}"
        );
        for kind in ["requests", "limits"] {
            assert!(
                c["resources"][kind]["memory"].is_string()
                    && c["resources"][kind]["cpu"].is_string(),
                "{name}/{cname}: resources.{kind}"
            );
        }
        if !is_flex_auth(&c) {
            continue;
        }
        assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        let env = env_of(&c);
        let grace = seconds(
            env.get("FLEX_AUTH_SHUTDOWN_GRACE")
                .map_or("20s", String::as_str),
        );
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        assert!(
            termination > grace + pre_stop,
            "{name}: terminationGracePeriodSeconds {termination} must exceed the preStop sleep \
             {pre_stop}s + shutdown grace {grace}s"
        );
    }
}

#[test]
fn the_plain_manifests_hold_the_security_probe_and_drain_settings() {
    let mut docs = Vec::new();
    for file in [
        "deploy/namespace.yaml",
        "deploy/pdp.yaml",
        "deploy/broker.yaml",
    ] {
        docs.extend(documents(&read(file)));
    }
    let pods = pod_specs(&docs);
    assert_eq!(pods.len(), 2, "the PDP and the broker");
    for (name, pod) in &pods {
        check_pod(name, pod);
        for kind in ["PodDisruptionBudget", "NetworkPolicy"] {
            assert!(
                docs.iter()
                    .any(|d| d["kind"] == kind && d["metadata"]["name"] == name.as_str()),
                "{name} has no {kind}"
            );
        }
    }
    // The broker's flex-auth is a native sidecar, and the broker itself is reachable only
    // through it.
    let (_, broker) = pods.iter().find(|(n, _)| n == "broker").unwrap();
    let sidecar = &broker["initContainers"][0];
    assert!(is_flex_auth(sidecar));
    assert_eq!(sidecar["restartPolicy"], "Always");
    let upstream = env_of(sidecar)["FLEX_AUTH_UPSTREAM"].clone();
    assert!(upstream.starts_with("http://127.0.0.1:"), "{upstream}");
    let port = upstream.rsplit(':').next().unwrap();
    let app = &broker["containers"][0];
    assert!(
        app["args"]
            .to_string()
            .contains(&format!("127.0.0.1:{port}")),
        "the broker must listen on loopback only: {}",
        app["args"]
    );
    let service = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "broker")
        .unwrap();
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "proxy");
    // The PDP Service is the address `warden sign` is configured with.
    let pdp = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "flex-auth")
        .unwrap();
    assert_eq!(pdp["spec"]["ports"][0]["port"], 8080);
    let k = &documents(&read("deploy/kustomization.yaml"))[0];
    assert_eq!(k["namespace"], "flex-auth");
}

#[test]
fn every_volume_comes_from_a_generated_config_map_or_secret() {
    let objects = Objects::from_kustomization("deploy");
    let mut docs = documents(&read("deploy/pdp.yaml"));
    docs.extend(documents(&read("deploy/broker.yaml")));
    for (name, pod) in pod_specs(&docs) {
        for volume in pod["volumes"].as_array().unwrap() {
            if let Some(cm) = volume["configMap"]["name"].as_str() {
                assert!(
                    objects.config_maps.contains_key(cm),
                    "{name}: ConfigMap {cm}"
                );
            }
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                assert!(
                    objects.secrets.contains_key(secret),
                    "{name}: Secret {secret}"
                );
            }
        }
    }
}

#[test]
fn the_shipped_example_copies_are_the_repository_files() {
    let pairs = [
        (
            "policies/ops-warden/policy_package.md",
            "deploy/files/ops-warden/policy_package.md",
        ),
        (
            "registry/ops-warden/production_registry_snapshot.json",
            "deploy/files/ops-warden/registry.json",
        ),
        (
            "policies/ops-warden/policy_package.md",
            "charts/flex-auth/files/ops-warden/policy_package.md",
        ),
        (
            "registry/ops-warden/production_registry_snapshot.json",
            "charts/flex-auth/files/ops-warden/registry.json",
        ),
    ];
    for (original, copy) in pairs {
        assert!(
            read(original) == read(copy),
            "{copy} differs from {original}; copy it again: cp {original} {copy}"
        );
    }
}

#[test]
fn the_dockerfile_builds_locked_runs_as_a_numeric_user_and_copies_only_what_exists() {
    let dockerfile = read("Dockerfile");
    let ignore = read(".dockerignore");
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(
        !dockerfile
            .lines()
            .any(|l| l.trim_start().starts_with("HEALTHCHECK")),
        "probes do the health checking"
    );
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert!(
        user.split(':')
            .all(|part| part.parse::<u32>().is_ok_and(|id| id != 0)),
        "USER must be numeric and not root: {user}"
    );
    for port in ["8080", "8081", "9901"] {
        assert!(dockerfile.contains(port), "EXPOSE {port}");
    }
    // Every COPY from the build context names a file that exists and that .dockerignore lets in.
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let mut copies = 0;
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            assert!(repo_path(source).exists(), "COPY {source}: no such file");
            assert!(
                allowed
                    .iter()
                    .any(|a| source == a || source.starts_with(&format!("{a}/"))),
                "COPY {source} is excluded by .dockerignore"
            );
            copies += 1;
        }
    }
    assert!(copies >= 5, "only {copies} COPY sources");
}

/// One flex-auth container of a manifest, running as the real binary.
struct Running {
    child: Child,
    main: SocketAddr,
    proxy: Option<SocketAddr>,
    grpc: Option<SocketAddr>,
    _root: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `container` as Kubernetes would: its args, its environment, its volumes written under a
/// temporary root (paths in the environment follow), listeners moved to `127.0.0.1:0`.
fn run_container(
    pod: &Value,
    container: &Value,
    objects: &Objects,
    overrides: &[(&str, String)],
) -> Running {
    let root = tempfile::tempdir().unwrap();
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    let mut mounts: Vec<String> = Vec::new();
    for mount in container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let path = mount["mountPath"].as_str().unwrap().to_owned();
        let dir = root.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
        let data = if let Some(name) = volume["configMap"]["name"].as_str() {
            objects
                .config_maps
                .get(name)
                .unwrap_or_else(|| panic!("no ConfigMap {name}"))
        } else if let Some(name) = volume["secret"]["secretName"].as_str() {
            objects
                .secrets
                .get(name)
                .unwrap_or_else(|| panic!("no Secret {name}"))
        } else {
            mounts.push(path);
            continue;
        };
        for (key, content) in data {
            std::fs::write(dir.join(key), content).unwrap();
        }
        mounts.push(path);
    }
    let mut env = env_of(container);
    for listen in [
        "FLEX_AUTH_LISTEN",
        "FLEX_AUTH_PROXY_LISTEN",
        "FLEX_AUTH_ADMIN_LISTEN",
        "FLEX_AUTH_GRPC_LISTEN",
    ] {
        if env.contains_key(listen) {
            env.insert(listen.to_owned(), "127.0.0.1:0".to_owned());
        }
    }
    for value in env.values_mut() {
        for prefix in ["", "file:", "sqlite:"] {
            if let Some(path) = value.strip_prefix(prefix) {
                if mounts.iter().any(|m| path.starts_with(m.as_str())) {
                    let moved = root.path().join(path.trim_start_matches('/'));
                    *value = format!("{prefix}{}", moved.display());
                    break;
                }
            }
        }
    }
    for (name, value) in overrides {
        env.insert((*name).to_owned(), value.clone());
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let mut child = Command::new(BIN)
        .args(&args)
        .env_clear()
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let _ = tx.send((
                parsed["fields"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                parsed["fields"]["addr"].as_str().unwrap_or("").to_owned(),
                line,
            ));
        }
    });
    let wants_proxy = env.contains_key("FLEX_AUTH_UPSTREAM");
    let wants_grpc = env.contains_key("FLEX_AUTH_GRPC_LISTEN");
    let (mut main, mut proxy, mut grpc) = (None, None, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while main.is_none() || (wants_proxy && proxy.is_none()) || (wants_grpc && grpc.is_none()) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((message, addr, line)) = rx.recv_timeout(left) else {
            panic!(
                "{} did not start listening; it said:\n{}",
                container["name"],
                seen.join("\n")
            );
        };
        match message.as_str() {
            "listening" => main = addr.parse().ok(),
            "proxy listening" => proxy = addr.parse().ok(),
            "gRPC ext_authz listening" => grpc = addr.parse().ok(),
            _ => seen.push(line),
        }
    }
    Running {
        child,
        main: main.unwrap(),
        proxy,
        grpc,
        _root: root,
    }
}

async fn wait_ready(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = send(addr, Method::GET, "/readyz", &[], "").await;
        if reply.status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready: {}",
            String::from_utf8_lossy(&reply.body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn check_the_ops_warden_example(addr: SocketAddr) {
    wait_ready(addr).await;
    let allow = sign_request(
        "agt-state-hub-bridge",
        "agt-state-hub-bridge",
        4,
        &["state-hub"],
    );
    let reply = send(
        addr,
        Method::POST,
        "/v1/check",
        &[("content-type", "application/json")],
        allow.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["decision"], "allow", "{body}");
    assert!(body["decision_id"]
        .as_str()
        .unwrap()
        .starts_with("decision:"));
    let deny = sign_request(
        "agt-state-hub-bridge",
        "agt-state-hub-bridge",
        48,
        &["state-hub"],
    );
    let reply = send(
        addr,
        Method::POST,
        "/v1/check",
        &[("content-type", "application/json")],
        deny.to_string(),
    )
    .await;
    assert_eq!(reply.json()["reasons"], json!(["ttl_out_of_bounds"]));
}

#[tokio::test]
async fn the_standalone_pdp_of_deploy_answers_warden_sign() {
    let objects = Objects::from_kustomization("deploy");
    let docs = documents(&read("deploy/pdp.yaml"));
    let (_, pod) = pod_specs(&docs).remove(0);
    let container = containers(&pod).into_iter().find(is_flex_auth).unwrap();
    let running = run_container(&pod, &container, &objects, &[]);
    check_the_ops_warden_example(running.main).await;
    let status = send(running.main, Method::GET, "/v1/status", &[], "")
        .await
        .json();
    assert_eq!(status["policy"]["name"], "ops-warden", "{status}");
}

/// A stand-in broker: 200 and a fixed body for every request, on a free loopback port.
async fn stand_in_broker() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"minted")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_broker_sidecar_of_deploy_lets_through_only_what_the_policy_allows() {
    let objects = Objects::from_kustomization("deploy");
    let docs = documents(&read("deploy/broker.yaml"));
    let (_, pod) = pod_specs(&docs).remove(0);
    let sidecar = containers(&pod).into_iter().find(is_flex_auth).unwrap();
    let broker = stand_in_broker().await;
    let running = run_container(
        &pod,
        &sidecar,
        &objects,
        &[("FLEX_AUTH_UPSTREAM", format!("http://{broker}"))],
    );
    wait_ready(running.main).await;
    let proxy = running.proxy.unwrap();
    let token = demo_tokens(&objects, &sidecar);
    let mint = |sub: &str| {
        let auth = format!("Bearer {}", token(sub));
        async move {
            send(
                proxy,
                Method::POST,
                "/v1/mint-aws-creds",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                r#"{"role": "aws:demo-readonly", "ttl_hours": 1}"#,
            )
            .await
        }
    };
    let allowed = mint("agent-demo").await;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    assert_eq!(&allowed.body[..], b"minted");
    assert!(allowed.headers.contains_key("x-flex-auth-decision-id"));
    let denied = mint("agent-blocked").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["reasons"], json!(["actor_suspended"]));
    let anonymous = send(proxy, Method::POST, "/v1/mint-aws-creds", &[], "{}").await;
    assert_eq!(anonymous.status, 401);
}

/// The Istio example's resources agree with each other: the CUSTOM policy names a provider of
/// the mesh config, which names the ServiceEntry's host and port, which is the loopback address
/// the flex-auth sidecar serves gRPC on; the policy selects the pod; and Envoy may send the body
/// of every route that reads one.
#[test]
fn the_istio_example_wires_the_provider_to_the_sidecar() {
    let (pod_labels, sidecar, provider, _) = istio_example();
    // The same security, probe, drain and FLEX_AUTH_* checks as the other manifests.
    for (name, pod) in pod_specs(&documents(&read("deploy/examples/istio/broker-mesh.yaml"))) {
        check_pod(&name, &pod);
    }
    let policy = &documents(&read("deploy/examples/istio/authorization-policy.yaml"))[0];
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    for (key, value) in policy["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &pod_labels[key], value,
            "the policy selects the pod by {key}"
        );
    }
    let entry = &documents(&read("deploy/examples/istio/service-entry.yaml"))[0];
    assert!(entry["spec"]["hosts"]
        .as_array()
        .unwrap()
        .contains(&provider["service"]));
    assert_eq!(entry["spec"]["ports"][0]["number"], provider["port"]);
    assert_eq!(entry["spec"]["ports"][0]["protocol"], "GRPC");
    assert_eq!(entry["spec"]["endpoints"][0]["address"], "127.0.0.1");
    assert_eq!(
        env_of(&sidecar)["FLEX_AUTH_GRPC_LISTEN"],
        format!("127.0.0.1:{}", provider["port"])
    );
    assert_eq!(
        provider["failOpen"], false,
        "docs/istio.md: keep failOpen false"
    );
    let body = &provider["includeRequestBodyInCheck"];
    assert_eq!(body["allowPartialMessage"], false);
    let routes =
        Objects::from_kustomization("deploy").config_maps["broker-routes"]["routes.yaml"].clone();
    let routes = &documents(&routes)[0]["routes"];
    for route in routes.as_array().unwrap() {
        if let Some(limit) = route["body_limit"].as_u64() {
            assert!(
                body["maxRequestBytes"].as_u64().unwrap() >= limit,
                "Envoy must send the whole body of {}",
                route["name"]
            );
        }
    }
    let telemetry = &documents(&read("deploy/examples/istio/telemetry.yaml"))[0];
    let operator = &documents(&read("deploy/examples/istio/istio-operator.yaml"))[0];
    let names: Vec<&Value> = operator["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    assert!(names.contains(&&telemetry["spec"]["accessLogging"][0]["providers"][0]["name"]));
}

/// The broker pod's labels, its flex-auth sidecar, and the `envoyExtAuthzGrpc` provider its
/// CUSTOM policy names (with the access log provider's labels).
fn istio_example() -> (serde_json::Map<String, Value>, Value, Value, Value) {
    let docs = documents(&read("deploy/examples/istio/broker-mesh.yaml"));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap()
        .clone();
    let (_, pod) = pod_specs(&docs).remove(0);
    let sidecar = containers(&pod).into_iter().find(is_flex_auth).unwrap();
    let policy = &documents(&read("deploy/examples/istio/authorization-policy.yaml"))[0];
    let operator = &documents(&read("deploy/examples/istio/istio-operator.yaml"))[0];
    let providers = operator["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap();
    let provider = providers
        .iter()
        .find(|p| p["name"] == policy["spec"]["provider"]["name"])
        .expect("the policy's provider is in the mesh config")["envoyExtAuthzGrpc"]
        .clone();
    let log = providers
        .iter()
        .find_map(|p| p.get("envoyFileAccessLog"))
        .unwrap()["logFormat"]["labels"]
        .clone();
    (labels, sidecar, provider, log)
}

/// The Istio example's flex-auth sidecar, run as its manifest says, behind a real Envoy with the
/// ext_authz filter Istio generates from the `envoyExtAuthzGrpc` provider (its timeout, failOpen
/// and request body settings) and the access log format of `envoyFileAccessLog`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_istio_example_sidecar_decides_for_envoy_configured_from_its_provider() {
    let Some(envoy_bin) = support::envoy_binary() else {
        return;
    };
    let (_, sidecar, provider, log_labels) = istio_example();
    let objects = Objects::from_kustomization("deploy");
    let docs = documents(&read("deploy/examples/istio/broker-mesh.yaml"));
    let (_, pod) = pod_specs(&docs).remove(0);
    let running = run_container(&pod, &sidecar, &objects, &[]);
    wait_ready(running.main).await;
    let grpc = running.grpc.expect("the sidecar serves gRPC");
    let body = &provider["includeRequestBodyInCheck"];
    let ext_authz = support::envoy::ExtAuthz {
        failure_mode_allow: provider["failOpen"].as_bool().unwrap(),
        timeout: provider["timeout"].as_str().unwrap().to_owned(),
        max_request_bytes: body["maxRequestBytes"].as_u64().unwrap(),
        allow_partial_message: body["allowPartialMessage"].as_bool().unwrap(),
        pack_as_bytes: body["packAsBytes"].as_bool().unwrap(),
        // The access log format of the mesh config, as Istio writes it (labels → JSON fields).
        access_log: log_labels
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect(),
    };
    let dir = tempfile::tempdir().unwrap();
    let upstream = support::broker::Upstream::start().await;
    let (listen, admin) = (support::free_port(), support::free_port());
    let config = support::envoy::config(
        dir.path(),
        listen,
        admin,
        grpc.port(),
        upstream.addr,
        &ext_authz,
    );
    let _envoy = support::envoy::start(&envoy_bin, &config, dir.path(), listen).await;
    let envoy = SocketAddr::from(([127, 0, 0, 1], listen));

    let token = demo_tokens(&objects, &sidecar);
    let mint = |sub: Option<&str>| {
        let auth = sub.map(|s| format!("Bearer {}", token(s)));
        async move {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(auth) = &auth {
                headers.push(("authorization", auth.as_str()));
            }
            send(
                envoy,
                Method::POST,
                "/v1/mint-aws-creds",
                &headers,
                r#"{"role": "aws:demo-readonly", "ttl_hours": 1}"#,
            )
            .await
        }
    };
    let allowed = mint(Some("agent-demo")).await;
    assert_eq!(allowed.status, 200, "{:?}", allowed.body);
    let id = upstream.last().headers["x-flex-auth-decision-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let denied = mint(Some("agent-blocked")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["reasons"], json!(["actor_suspended"]));
    assert_eq!(mint(None).await.status, 401);
    let health = send(envoy, Method::GET, "/healthz", &[], "").await;
    assert_eq!(health.status, 200, "the public route");
    assert_eq!(
        upstream.count(),
        2,
        "only the allowed requests reached the broker"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = support::envoy::access_log(dir.path());
        if let Some(line) = lines
            .iter()
            .find(|l| l["flex_auth_decision_id"] == json!(id))
        {
            assert_eq!(line["flex_auth_decision"], "allow");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access log line with {id}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `helm`, when this machine has it: .ci/run installs it and sets CI, which makes it required;
/// without CI a missing helm fails with the install hint (the test is `#[ignore]`d by default).
fn helm() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("helm"))
            .find(|p| p.is_file())
    });
    assert!(
        found.is_some(),
        "helm is not on PATH: run `export PATH=\"$(scripts/validate-k8s.sh --install-only):$PATH\"` first"
    );
    found
}

#[tokio::test]
#[ignore = "needs helm on PATH (scripts/validate-k8s.sh --install-only installs it); .ci/run runs it with --ignored"]
async fn the_chart_with_default_values_renders_a_working_standalone_pdp() {
    let Some(helm) = helm() else { return };
    let out = Command::new(helm)
        .args([
            "template",
            "flex-auth",
            "charts/flex-auth",
            "--namespace",
            "flex-auth",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(&String::from_utf8(out.stdout).unwrap());
    let objects = Objects::from_documents(&docs);
    let pods = pod_specs(&docs);
    assert_eq!(pods.len(), 1);
    let (name, pod) = &pods[0];
    check_pod(name, pod);
    let service = docs.iter().find(|d| d["kind"] == "Service").unwrap();
    assert_eq!(service["metadata"]["name"], "flex-auth");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    assert!(docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let container = containers(pod).into_iter().find(is_flex_auth).unwrap();
    let running = run_container(pod, &container, &objects, &[]);
    check_the_ops_warden_example(running.main).await;
}
