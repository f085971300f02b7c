//! A real Envoy with the gRPC `ext_authz` filter asking flex-auth, in front of an upstream — as
//! `tests/envoy_grpc.rs` runs it and as Istio configures it from an `envoyExtAuthzGrpc`
//! extension provider (`tests/deploy.rs`). Its access log carries flex-auth's dynamic metadata.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The ext_authz filter's settings that an operator chooses (Istio: `failOpen`, `timeout`,
/// `includeRequestBodyInCheck`).
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    pub failure_mode_allow: bool,
    /// Envoy's duration syntax, e.g. `1s`.
    pub timeout: String,
    pub max_request_bytes: u64,
    pub allow_partial_message: bool,
    pub pack_as_bytes: bool,
    /// The access log's JSON fields (name → Envoy format string).
    pub access_log: Vec<(String, String)>,
}

impl Default for ExtAuthz {
    fn default() -> Self {
        Self {
            failure_mode_allow: false,
            timeout: "1s".to_owned(),
            max_request_bytes: 16384,
            allow_partial_message: false,
            pack_as_bytes: false,
            access_log: [
                ("path", "%REQ(:PATH)%"),
                ("status", "%RESPONSE_CODE%"),
                (
                    "decision",
                    "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision)%",
                ),
                (
                    "decision_id",
                    "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:decision_id)%",
                ),
                (
                    "reasons",
                    "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reasons)%",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }
}

/// Kills the process when dropped (a failed assertion must not leave Envoy running).
pub struct Killed(pub Option<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Envoy's bootstrap in `dir`: listener `listen` → ext_authz (gRPC to 127.0.0.1:`flex_auth`) →
/// `upstream`, access log `dir/access.log` as JSON lines.
pub fn config(
    dir: &Path,
    listen: u16,
    admin: u16,
    flex_auth: u16,
    upstream: SocketAddr,
    ext_authz: &ExtAuthz,
) -> PathBuf {
    let access_log = dir.join("access.log");
    let config = format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {access_log}
              log_format:
                json_format:
{log_fields}          route_config:
            virtual_hosts:
            - name: broker
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: broker }}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: {failure_mode_allow}
              failure_mode_allow_header_add: {failure_mode_allow}
              with_request_body: {{ max_request_bytes: {max_request_bytes}, allow_partial_message: {allow_partial_message}, pack_as_bytes: {pack_as_bytes} }}
              grpc_service:
                envoy_grpc: {{ cluster_name: flex_auth }}
                timeout: {timeout}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: broker
    type: STATIC
    load_assignment:
      cluster_name: broker
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }} }}] }}]
  - name: flex_auth
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: flex_auth
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {flex_auth} }} }} }} }}] }}]
"#,
        access_log = access_log.display(),
        upstream_port = upstream.port(),
        failure_mode_allow = ext_authz.failure_mode_allow,
        max_request_bytes = ext_authz.max_request_bytes,
        allow_partial_message = ext_authz.allow_partial_message,
        pack_as_bytes = ext_authz.pack_as_bytes,
        timeout = ext_authz.timeout,
        log_fields = ext_authz
            .access_log
            .iter()
            .map(|(k, v)| format!("                  {k}: {v:?}\n"))
            .collect::<String>(),
    );
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Start Envoy and wait (bounded) until its listener accepts.
pub async fn start(envoy: &Path, config: &Path, dir: &Path, listen: u16) -> Killed {
    let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
    let child = Command::new(envoy)
        .args(["-c"])
        .arg(config)
        .args([
            "--log-level",
            "warn",
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let envoy = Killed(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", listen))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "Envoy did not listen within 30s: {}",
            std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    envoy
}

/// Envoy's access log lines so far.
pub fn access_log(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
