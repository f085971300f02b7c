//! The flags of `flex-auth serve`: listeners, decision log, limits, TLS, proxy and
//! authentication, and the checks that need more than one of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{parse_duration, parse_sink, SourceArgs};

/// `flex-auth serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Policy and registry.
    #[command(flatten)]
    pub sources: SourceArgs,

    /// Address the decision API listens on.
    #[arg(
        long,
        env = "FLEX_AUTH_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "FLEX_AUTH_MAX_BODY_BYTES", value_name = "BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// Most checks one `POST /v1/check/batch` may carry.
    #[arg(long, env = "FLEX_AUTH_MAX_BATCH", value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_batch: u64,

    /// How long in-flight requests may take to finish after SIGTERM/SIGINT (e.g. `20s`); what is
    /// still running then is cut and the process exits with code 1.
    #[arg(long, env = "FLEX_AUTH_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// `production`: a missing or invalid policy or registry at start-up stops the process with
    /// one `BOOT_FAIL` line and exit code 78. `development`: it starts unready and becomes ready
    /// when valid files appear.
    #[arg(long, env = "FLEX_AUTH_MODE", help_heading = "Loading and reload", value_enum, default_value_t = Mode::Development)]
    pub mode: Mode,

    /// Behave like production mode at start-up, whatever `--mode` says.
    #[arg(long, env = "FLEX_AUTH_STRICT", help_heading = "Loading and reload")]
    pub strict: bool,

    /// Re-read the policy and registry this often and reload when their content changed, for file
    /// systems without change events (`0` disables polling).
    #[arg(long, env = "FLEX_AUTH_POLL_INTERVAL", value_name = "DURATION", help_heading = "Loading and reload", default_value = "10s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Do not watch the policy and registry directories for changes (polling and SIGHUP remain).
    #[arg(long, env = "FLEX_AUTH_NO_WATCH", help_heading = "Loading and reload")]
    pub no_watch: bool,

    /// Address of the admin API (`POST /v1/admin/reload`, `PUT /v1/admin/registry`). It listens
    /// only when `--admin-token-file` is set.
    #[arg(
        long,
        env = "FLEX_AUTH_ADMIN_LISTEN",
        value_name = "ADDR",
        help_heading = "Admin API and metrics",
        default_value = "127.0.0.1:9901"
    )]
    pub admin_listen: SocketAddr,

    /// File holding the admin bearer token (re-read on every admin request, so it may rotate).
    /// Without it the admin API is off.
    #[arg(
        long,
        env = "FLEX_AUTH_ADMIN_TOKEN_FILE",
        help_heading = "Admin API and metrics",
        value_name = "FILE"
    )]
    pub admin_token_file: Option<PathBuf>,

    /// Largest registry the admin API accepts in one `PUT`, in bytes.
    #[arg(long, env = "FLEX_AUTH_ADMIN_MAX_BODY_BYTES", value_name = "BYTES", help_heading = "Admin API and metrics", default_value_t = 64 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1024 * 1024 * 1024))]
    pub admin_max_body_bytes: u64,

    /// Where `GET /metrics` is served: `both` listeners, only the `main` one, or only the `admin`
    /// one (behind its token; without an admin API, nowhere).
    #[arg(long, env = "FLEX_AUTH_METRICS_LISTENER", help_heading = "Admin API and metrics", value_enum, default_value_t = MetricsListener::Both)]
    pub metrics_listener: MetricsListener,

    /// Decision log sink: `stdout` or `file:PATH` (JSON lines), or `sqlite:PATH` (a SQLite
    /// database, created if missing; WAL, `synchronous=FULL`, indexed by decision id).
    #[arg(long, env = "FLEX_AUTH_DECISION_LOG", help_heading = "Decision log", value_name = "SINK", value_parser = parse_sink)]
    pub decision_log: Option<crate::audit::Sink>,

    /// `off`, `best-effort` (never delays an answer; drops and counts what cannot be written) or
    /// `required` (a decision is answered only once its record is durable; else 503). Default:
    /// `best-effort` when `--decision-log` names a sink, `off` otherwise.
    #[arg(
        long,
        env = "FLEX_AUTH_DECISION_LOG_MODE",
        help_heading = "Decision log",
        value_enum,
        value_name = "MODE"
    )]
    pub decision_log_mode: Option<crate::audit::Mode>,

    /// Rotate a `file:` decision log when it reaches this many bytes.
    #[arg(long, env = "FLEX_AUTH_DECISION_LOG_MAX_BYTES", value_name = "BYTES", help_heading = "Decision log", default_value_t = 100 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub decision_log_max_bytes: u64,

    /// Drop a field from every decision record: a JSON pointer into the record, e.g.
    /// `/context/ssh_public_key` (repeatable or comma-separated). Only the request's fields may
    /// be named (`/subject…`, `/action`, `/resource…`, `/context…`, `/properties…`,
    /// `/credential_sha256`); a record lists what was dropped in `redacted`, and `replay`
    /// evaluates it as missing.
    #[arg(long = "decision-log-redact", env = "FLEX_AUTH_DECISION_LOG_REDACT", value_name = "POINTER", help_heading = "Decision log",
          value_delimiter = ',', value_parser = crate::audit::Redaction::parse)]
    pub decision_log_redact: Vec<crate::audit::Redaction>,

    /// Rotated `file:` decision logs to keep (`PATH.1` … `PATH.N`).
    #[arg(
        long,
        env = "FLEX_AUTH_DECISION_LOG_KEEP",
        value_name = "N",
        help_heading = "Decision log",
        default_value_t = 5
    )]
    pub decision_log_keep: usize,

    /// Public base URL of this PDP (e.g. `https://pdp.example.com`) for the AuthZEN metadata
    /// at `/.well-known/authzen-configuration`, when flex-auth sits behind a proxy or load
    /// balancer. Unset: built from each request's `Host` and the listener's scheme.
    #[arg(long, env = "FLEX_AUTH_AUTHZEN_BASE_URL", help_heading = "AuthZEN", value_name = "URL", value_parser = crate::authzen::parse_base_url)]
    pub authzen_base_url: Option<String>,

    /// AuthZEN answers carry only `decision` (no `context` with the decision id and reasons), for
    /// strict clients such as the AuthZEN interop runner. Decisions are logged either way.
    #[arg(
        long,
        env = "FLEX_AUTH_AUTHZEN_DECISION_ONLY",
        help_heading = "AuthZEN"
    )]
    pub authzen_decision_only: bool,

    /// What AuthZEN `subject.properties` / `resource.properties` may do: `extend` adds
    /// attributes an entity does not have and describes entities the store does not hold, but
    /// never replaces a stored attribute and never makes a registry actor exist; `override`
    /// replaces stored attributes (only for callers trusted with the facts); `ignore` disregards
    /// them. Properties are recorded in the decision log either way.
    #[arg(
        long,
        env = "FLEX_AUTH_AUTHZEN_PROPERTIES",
        help_heading = "AuthZEN",
        value_enum,
        value_name = "MODE",
        default_value = "extend"
    )]
    pub authzen_properties: crate::authzen::PropertiesMode,

    /// Reverse proxy and forward-auth.
    #[command(flatten)]
    pub proxy: ProxyArgs,

    /// Envoy `ext_authz` over gRPC.
    #[command(flatten)]
    pub grpc: GrpcArgs,

    /// Bearer-credential verification for the proxy and forward-auth.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// TLS on the decision API listener.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Connection and request limits of every listener.
    #[command(flatten)]
    pub limits: LimitsArgs,

    /// Serving from a signed bundle instead of files.
    #[command(flatten)]
    pub bundle: BundleArgs,

    /// A candidate package evaluated beside the live one (docs/policy-changes.md).
    #[command(flatten)]
    pub shadow: ShadowArgs,
}

/// `serve --grpc-listen`: Envoy's external authorization service over gRPC (docs/istio.md).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "gRPC ext_authz")]
pub struct GrpcArgs {
    /// Address of the gRPC listener (e.g. `127.0.0.1:9191`): Envoy's external authorization
    /// service `envoy.service.auth.v3.Authorization/Check` (Istio's `envoyExtAuthzGrpc`
    /// provider) through the same `--routes` and credentials as the proxy, and
    /// `grpc.health.v1.Health/Check`. Off by default. Uses the decision listener's TLS
    /// (`--tls-cert`, `--client-ca`, `--client-allowed-san`) and shares its `--max-in-flight`.
    #[arg(long, env = "FLEX_AUTH_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,

    /// Largest `CheckRequest` message (the request's headers and the body Envoy forwards with
    /// `with_request_body`), in bytes; a larger one is denied with 413.
    #[arg(long, env = "FLEX_AUTH_GRPC_MAX_MESSAGE_BYTES", value_name = "BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub grpc_max_message_bytes: u64,

    /// Concurrent calls one HTTP/2 connection to the gRPC listener may carry (Envoy sends every
    /// check of a worker over one connection). The in-flight limit still applies.
    #[arg(long, env = "FLEX_AUTH_GRPC_MAX_CONCURRENT_STREAMS", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub grpc_max_concurrent_streams: u32,

    /// Longest a check may take before it is denied with 503 `deadline_exceeded`. A caller's
    /// sooner `grpc-timeout` (Envoy's `timeout`, 200ms by default) shortens it to nine tenths of
    /// that, so the deny arrives before the caller gives up (and perhaps allows).
    #[arg(long, env = "FLEX_AUTH_GRPC_CALL_TIMEOUT", value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration)]
    pub grpc_call_timeout: Duration,
}

impl GrpcArgs {
    /// The handler's own limits.
    pub fn config(&self) -> crate::grpc::GrpcConfig {
        crate::grpc::GrpcConfig {
            max_message_bytes: usize::try_from(self.grpc_max_message_bytes).unwrap_or(usize::MAX),
            call_timeout: self.grpc_call_timeout,
        }
    }
}

/// `serve --shadow-policy`: a candidate policy package (and optionally registry) evaluated on
/// every decision beside the live one; the answer is always the live one.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Shadow evaluation")]
pub struct ShadowArgs {
    /// Candidate policy package evaluated beside the live one on every decision. Disagreements
    /// are counted and recorded in the decision log; answers are always the live package's. A
    /// shadow that fails to load never affects the live package or readiness.
    #[arg(long, env = "FLEX_AUTH_SHADOW_POLICY", value_name = "PATH")]
    pub shadow_policy: Option<PathBuf>,

    /// Registry snapshot for the shadow (default: the live --registry or --entities file).
    #[arg(
        long,
        env = "FLEX_AUTH_SHADOW_REGISTRY",
        value_name = "FILE",
        requires = "shadow_policy",
        conflicts_with = "shadow_entities"
    )]
    pub shadow_registry: Option<PathBuf>,

    /// Raw Cedar entities JSON for the shadow, instead of a registry snapshot.
    #[arg(
        long,
        env = "FLEX_AUTH_SHADOW_ENTITIES",
        value_name = "FILE",
        requires = "shadow_policy"
    )]
    pub shadow_entities: Option<PathBuf>,
}

impl ShadowArgs {
    /// The shadow's sources, when a shadow is configured: its own registry, else the live one
    /// (`live`, `None` when serving a bundle). `Err` names what is missing.
    pub fn sources(
        &self,
        live: Option<&crate::state::RegistrySource>,
    ) -> Result<Option<crate::state::Sources>, String> {
        let Some(policy) = &self.shadow_policy else {
            return Ok(None);
        };
        let registry = match (&self.shadow_registry, &self.shadow_entities, live) {
            (Some(path), _, _) => crate::state::RegistrySource::Snapshot(path.clone()),
            (None, Some(path), _) => crate::state::RegistrySource::Entities(path.clone()),
            (None, None, Some(live)) => live.clone(),
            (None, None, None) => {
                return Err("--shadow-policy with --bundle needs --shadow-registry or --shadow-entities: a bundle's registry is not a file the shadow can read".to_owned())
            }
        };
        Ok(Some(crate::state::Sources {
            policy: policy.clone(),
            registry,
        }))
    }
}

/// `serve --bundle`: where the bundle comes from, which keys sign it, how it is polled, cached
/// and bounded (docs/bundles.md).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Bundles")]
pub struct BundleArgs {
    /// Serve the policy package and registry of a bundle: `https://…`, `http://…` (loopback
    /// only, unless --bundle-allow-http), `oci://REGISTRY/REPO:TAG` (or `@sha256:…`), or a
    /// local path. Excludes --policy, --registry and --entities.
    #[arg(long = "bundle", id = "bundle", env = "FLEX_AUTH_BUNDLE", value_name = "URL",
          conflicts_with_all = ["policy", "registry", "entities"])]
    pub url: Option<String>,

    /// Public key(s) bundles must be signed with: a JWKS file (keys by `kid`) or a PEM Ed25519 /
    /// P-256 public key, written `KID=FILE` to name its `kid`. Repeat (or separate with commas)
    /// to trust several keys while rotating. With any key set, an unsigned bundle, a bad
    /// signature or an unknown `kid` is always refused.
    #[arg(
        long = "bundle-public-key",
        id = "bundle_public_key",
        env = "FLEX_AUTH_BUNDLE_PUBLIC_KEY",
        value_name = "[KID=]FILE",
        value_delimiter = ','
    )]
    pub public_keys: Vec<String>,

    /// Accept bundles without checking a signature (no --bundle-public-key) in production mode.
    /// Development mode accepts them with a warning.
    #[arg(
        long = "bundle-insecure-unsigned",
        id = "bundle_insecure_unsigned",
        env = "FLEX_AUTH_BUNDLE_INSECURE_UNSIGNED"
    )]
    pub insecure_unsigned: bool,

    /// How often the source is asked for a new bundle (±10 % jitter; failures back off
    /// exponentially up to 5 minutes). An unchanged HTTP source answers 304.
    #[arg(long = "bundle-poll-interval", id = "bundle_poll_interval", env = "FLEX_AUTH_BUNDLE_POLL_INTERVAL", value_name = "DURATION",
          default_value = "30s", value_parser = parse_positive_duration)]
    pub poll_interval: Duration,

    /// Keep the last activated bundle here (written atomically) and start from it when the
    /// source cannot be reached; readiness is `degraded` until the source answers.
    #[arg(
        long = "bundle-cache-dir",
        id = "bundle_cache_dir",
        env = "FLEX_AUTH_BUNDLE_CACHE_DIR",
        value_name = "DIR"
    )]
    pub cache_dir: Option<PathBuf>,

    /// Fail closed on an old policy: when no check of the source succeeded for this long,
    /// readiness is unready and decisions answer 503 `bundle_stale`. Off by default.
    #[arg(long = "bundle-max-staleness", id = "bundle_max_staleness", env = "FLEX_AUTH_BUNDLE_MAX_STALENESS", value_name = "DURATION",
          value_parser = parse_positive_duration)]
    pub max_staleness: Option<Duration>,

    /// Largest bundle download, and separately the largest total of its unpacked files.
    #[arg(long = "bundle-max-bytes", id = "bundle_max_bytes", env = "FLEX_AUTH_BUNDLE_MAX_BYTES", value_name = "BYTES",
          default_value_t = crate::bundle::DEFAULT_MAX_BYTES,
          value_parser = clap::value_parser!(u64).range(1024..=4 * 1024 * 1024 * 1024))]
    pub max_bytes: u64,

    /// Longest wait for a connection to the bundle source.
    #[arg(long = "bundle-connect-timeout", id = "bundle_connect_timeout", env = "FLEX_AUTH_BUNDLE_CONNECT_TIMEOUT", value_name = "DURATION",
          default_value = "5s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// Longest wait for any read from the source: the response head, then each piece of the body.
    #[arg(long = "bundle-read-timeout", id = "bundle_read_timeout", env = "FLEX_AUTH_BUNDLE_READ_TIMEOUT", value_name = "DURATION",
          default_value = "10s", value_parser = parse_positive_duration)]
    pub read_timeout: Duration,

    /// Longest one whole check may take (connection, response and body).
    #[arg(long = "bundle-download-timeout", id = "bundle_download_timeout", env = "FLEX_AUTH_BUNDLE_DOWNLOAD_TIMEOUT", value_name = "DURATION",
          default_value = "120s", value_parser = parse_positive_duration)]
    pub download_timeout: Duration,

    /// PEM CA bundle trusted for an `https://` or OCI bundle source instead of the usual roots.
    #[arg(
        long = "bundle-ca",
        id = "bundle_ca",
        env = "FLEX_AUTH_BUNDLE_CA",
        value_name = "FILE"
    )]
    pub ca: Option<PathBuf>,

    /// Docker `config.json` with credentials for an `oci://` registry (`auths.HOST.auth`).
    /// Without it the registry is asked anonymously.
    #[arg(
        long = "bundle-registry-auth",
        id = "bundle_registry_auth",
        env = "FLEX_AUTH_BUNDLE_REGISTRY_AUTH",
        value_name = "FILE"
    )]
    pub registry_auth: Option<PathBuf>,

    /// Allow plain `http://` (and plain-HTTP OCI registries) to non-loopback hosts.
    #[arg(
        long = "bundle-allow-http",
        id = "bundle_allow_http",
        env = "FLEX_AUTH_BUNDLE_ALLOW_HTTP"
    )]
    pub allow_http: bool,
}

/// TLS for the decision API listener (`--listen`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) for HTTPS on `--listen`; needs `--tls-key`. Re-read
    /// every second: a rotated certificate is used by new connections, open ones keep theirs.
    #[arg(
        long,
        env = "FLEX_AUTH_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "FLEX_AUTH_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle for client certificates (mTLS). A client may connect without one (probes,
    /// metrics), but the decision endpoints then answer 401 `client_certificate_required`.
    #[arg(
        long,
        env = "FLEX_AUTH_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,

    /// A SAN URI (e.g. a SPIFFE id) or DNS name a client certificate must carry for decisions
    /// (exact match); repeat or separate with commas. Without it, any certificate the client CA
    /// signed is accepted. Others get 403 `client_certificate_not_allowed`.
    #[arg(
        long = "client-allowed-san",
        env = "FLEX_AUTH_CLIENT_ALLOWED_SAN",
        value_delimiter = ',',
        value_name = "NAME",
        requires = "client_ca"
    )]
    pub client_allowed_sans: Vec<String>,
}

impl TlsArgs {
    /// The TLS settings, when `--tls-cert` is set.
    pub fn settings(&self) -> Option<crate::tls::TlsSettings> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
                allowed_sans: self
                    .client_allowed_sans
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect(),
            }),
            _ => None,
        }
    }
}

/// Connection and request limits (each listener gets its own budget of these).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitsArgs {
    /// Time a client has to finish the TLS handshake and send a request's headers; slower
    /// clients are disconnected. On HTTP/1.1 the wait for the next request on a kept-alive
    /// connection counts as header reading too.
    #[arg(long, env = "FLEX_AUTH_HEADER_READ_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_read_timeout: Duration,

    /// Largest request head (HTTP/1.1) or header list (h2) in bytes; larger gets 431.
    #[arg(long, env = "FLEX_AUTH_MAX_HEADER_BYTES", value_name = "BYTES", default_value_t = 32 * 1024,
          value_parser = clap::value_parser!(u64).range(8 * 1024..=1024 * 1024))]
    pub max_header_bytes: u64,

    /// Time a client has to send a whole request body that flex-auth reads before deciding
    /// (decision API, admin pushes, proxy routes that read the body); slower bodies get 408
    /// `body_timeout`. A request counts against `--max-in-flight` only once its body is in.
    #[arg(long, env = "FLEX_AUTH_BODY_READ_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub body_read_timeout: Duration,

    /// Time from a request's headers to its response's headers (body reading and the decision
    /// included); then 503 `deadline_exceeded`. Must be longer than `--upstream-timeout`.
    #[arg(long, env = "FLEX_AUTH_REQUEST_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub request_timeout: Duration,

    /// A connection with no request in flight for this long is closed.
    #[arg(long, env = "FLEX_AUTH_KEEPALIVE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub keepalive_timeout: Duration,

    /// Connections one listener serves at once; further ones are closed on accept.
    #[arg(long, env = "FLEX_AUTH_MAX_CONNECTIONS", value_name = "N", default_value_t = 4096,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Requests one listener handles at once; further ones get 503 `overloaded` with
    /// `Retry-After` at once (never queued). `/healthz`, `/readyz` and the gRPC health service
    /// are exempt. The gRPC listener shares the decision listener's budget.
    #[arg(long, env = "FLEX_AUTH_MAX_IN_FLIGHT", value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_in_flight: u64,

    /// Concurrent streams one HTTP/2 connection may open.
    #[arg(long = "h2-max-concurrent-streams", env = "FLEX_AUTH_H2_MAX_CONCURRENT_STREAMS", value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub h2_max_concurrent_streams: u32,
}

impl ServeArgs {
    /// The limits every listener applies.
    pub fn limits(&self) -> crate::server::Limits {
        let l = &self.limits;
        crate::server::Limits {
            header_read_timeout: l.header_read_timeout,
            max_header_bytes: usize::try_from(l.max_header_bytes).unwrap_or(usize::MAX),
            body_read_timeout: l.body_read_timeout,
            request_timeout: l.request_timeout,
            keepalive_timeout: l.keepalive_timeout,
            max_connections: usize::try_from(l.max_connections).unwrap_or(usize::MAX),
            max_in_flight: usize::try_from(l.max_in_flight).unwrap_or(usize::MAX),
            h2_max_concurrent_streams: l.h2_max_concurrent_streams,
            shutdown_grace: self.shutdown_grace,
        }
    }
}

pub(super) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(format!("`{text}` must be longer than zero"));
    }
    // Deadlines are added to the current time; an absurd value must not overflow that.
    if d > Duration::from_secs(24 * 60 * 60) {
        return Err(format!(
            "`{text}` is longer than the 24h this setting allows"
        ));
    }
    Ok(d)
}

/// The reverse proxy (`--upstream`) and the routes it and the forward-auth endpoints use.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Proxy and forward-auth")]
pub struct ProxyArgs {
    /// URL of the service to protect (`http://…` or `https://…`, optionally with a path prefix).
    /// Turns on the reverse proxy on `--proxy-listen`; needs `--routes` and `--jwks` or
    /// `--hs256-secret-file`.
    #[arg(long, env = "FLEX_AUTH_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Routes file (YAML): method + path pattern → action, resource and context. Used by the
    /// proxy and by the forward-auth endpoints (`/v1/authz/envoy…`, `/v1/authz/nginx`); a request
    /// no route matches is denied (403 `no_route`).
    #[arg(long, env = "FLEX_AUTH_ROUTES", value_name = "FILE")]
    pub routes: Option<PathBuf>,

    /// Address the reverse proxy listens on (with `--upstream`).
    #[arg(
        long,
        env = "FLEX_AUTH_PROXY_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub proxy_listen: SocketAddr,

    /// How long the upstream may take to send its response headers before the proxy answers 504.
    #[arg(long, env = "FLEX_AUTH_UPSTREAM_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub upstream_timeout: Duration,

    /// PEM CA bundle trusted for an `https://` upstream instead of the public webpki roots.
    #[arg(
        long,
        env = "FLEX_AUTH_UPSTREAM_CA",
        value_name = "FILE",
        requires = "upstream"
    )]
    pub upstream_ca: Option<PathBuf>,

    /// A forwarding header the proxy lets reach the upstream as the client sent it (by default
    /// `X-Original-URL`, `X-HTTP-Method-Override`, `X-Forwarded-*`, `Forwarded`, `X-Real-IP`,
    /// `True-Client-IP` and the like are removed: see docs/security.md). Repeat or separate with
    /// commas; only for a trusted proxy in front of flex-auth that sets them itself.
    #[arg(
        long = "proxy-pass-header",
        env = "FLEX_AUTH_PROXY_PASS_HEADER",
        value_delimiter = ',',
        value_name = "NAME",
        value_parser = parse_pass_header,
        requires = "upstream"
    )]
    pub proxy_pass_headers: Vec<http::HeaderName>,
}

fn parse_pass_header(text: &str) -> Result<http::HeaderName, String> {
    let name = http::HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| format!("`{text}` is not a header name"))?;
    if crate::proxy::UNTRUSTED_FORWARDING_HEADERS.contains(&name.as_str()) {
        Ok(name)
    } else {
        Err(format!(
            "`{text}` is not removed by the proxy, so there is nothing to pass through; the list is {}",
            crate::proxy::UNTRUSTED_FORWARDING_HEADERS.join(", ")
        ))
    }
}

/// How bearer credentials are verified.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Bearer credentials")]
pub struct AuthArgs {
    /// JWKS for EdDSA / ES256 / RS256 tokens: a file, or an `https://` URL (`http://` only for a
    /// loopback host). Re-read every `--jwks-cache-ttl` and on an unknown `kid`.
    #[arg(long, env = "FLEX_AUTH_JWKS", value_name = "FILE|URL", value_parser = parse_jwks)]
    pub jwks: Option<crate::auth::JwksSource>,

    /// The accepted token issuer (`iss`); required with `--jwks` or `--hs256-secret-file`.
    #[arg(long, env = "FLEX_AUTH_ISSUER")]
    pub issuer: Option<String>,

    /// An accepted audience (`aud`); repeat the flag (or separate with commas) for several. At
    /// least one is required.
    #[arg(long = "audience", env = "FLEX_AUTH_AUDIENCE", value_delimiter = ',')]
    pub audiences: Vec<String>,

    /// Accepted algorithms, comma-separated, from EdDSA, ES256, RS256, HS256. Default: the first
    /// three with `--jwks`, plus HS256 with `--hs256-secret-file`. `none` is never accepted.
    #[arg(long, env = "FLEX_AUTH_JWT_ALGORITHMS", value_delimiter = ',', value_parser = parse_alg)]
    pub jwt_algorithms: Option<Vec<crate::auth::Alg>>,

    /// File holding the HS256 shared secret (at least 32 bytes; one trailing newline ignored).
    /// Re-read every second; its fingerprint (first 12 hex of its sha256) is in `/v1/status`.
    #[arg(long, env = "FLEX_AUTH_HS256_SECRET_FILE", value_name = "FILE")]
    pub hs256_secret_file: Option<PathBuf>,

    /// The claim the subject is read from.
    #[arg(long, env = "FLEX_AUTH_SUBJECT_CLAIM", default_value = "sub")]
    pub subject_claim: String,

    /// Put before the claim's value to form the subject id (e.g. `iam:`).
    #[arg(long, env = "FLEX_AUTH_SUBJECT_PREFIX", default_value = "")]
    pub subject_prefix: String,

    /// Clock skew allowed for `exp`, `nbf` and `iat` (at most 5m).
    #[arg(long, env = "FLEX_AUTH_JWT_CLOCK_SKEW", value_name = "DURATION", default_value = "60s", value_parser = parse_skew)]
    pub jwt_clock_skew: Duration,

    /// At most one JWKS refresh per this interval when a token names an unknown `kid`.
    #[arg(long, env = "FLEX_AUTH_JWKS_REFRESH_INTERVAL", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub jwks_refresh_interval: Duration,

    /// Re-fetch the JWKS this often even when every `kid` is known.
    #[arg(long, env = "FLEX_AUTH_JWKS_CACHE_TTL", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub jwks_cache_ttl: Duration,

    /// PEM CA bundle trusted for an `https://` `--jwks` URL instead of the public webpki roots.
    #[arg(long, env = "FLEX_AUTH_JWKS_CA", value_name = "FILE")]
    pub jwks_ca: Option<PathBuf>,

    /// Verified tokens remembered by their sha256, so a repeated token skips the signature check
    /// (each entry good until the token's `exp`, dropped when the keys or the secret change;
    /// `exp`/`nbf`/`iat` checked again on every use). `0` turns the cache off.
    #[arg(long, env = "FLEX_AUTH_JWT_CACHE_ENTRIES", value_name = "N",
          default_value_t = crate::auth::DEFAULT_TOKEN_CACHE_ENTRIES as u64,
          value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
    pub jwt_cache_entries: u64,
}

impl AuthArgs {
    /// Whether any authentication flag names a key source.
    pub fn configured(&self) -> bool {
        self.jwks.is_some() || self.hs256_secret_file.is_some()
    }

    /// The settings for [`crate::auth::Authenticator`].
    pub fn settings(&self) -> crate::auth::AuthSettings {
        crate::auth::AuthSettings {
            jwks: self.jwks.clone(),
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            algorithms: self.jwt_algorithms.clone(),
            hs256_secret_file: self.hs256_secret_file.clone(),
            subject_claim: self.subject_claim.clone(),
            subject_prefix: self.subject_prefix.clone(),
            clock_skew: self.jwt_clock_skew,
            jwks_refresh_interval: self.jwks_refresh_interval,
            jwks_cache_ttl: self.jwks_cache_ttl,
            jwks_ca: self.jwks_ca.clone(),
            token_cache_entries: usize::try_from(self.jwt_cache_entries).unwrap_or(usize::MAX),
        }
    }
}

fn parse_jwks(text: &str) -> Result<crate::auth::JwksSource, String> {
    text.parse()
}

fn parse_alg(text: &str) -> Result<crate::auth::Alg, String> {
    text.parse()
}

fn parse_skew(text: &str) -> Result<Duration, String> {
    let skew = parse_duration(text)?;
    if skew > Duration::from_secs(300) {
        return Err(format!("`{text}` is more than 5m of clock skew"));
    }
    Ok(skew)
}

impl ServeArgs {
    /// Whether start-up failures are fatal.
    pub fn fail_fast(&self) -> bool {
        self.strict || self.mode == Mode::Production
    }
}

/// Which listeners serve `GET /metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsListener {
    /// The decision API listener and the admin listener.
    Both,
    /// Only the decision API listener.
    Main,
    /// Only the admin listener (token required).
    Admin,
}

/// How strictly `serve` treats start-up problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Start unready and recover when files are fixed.
    Development,
    /// Refuse to start with a missing or invalid policy or registry.
    Production,
}
