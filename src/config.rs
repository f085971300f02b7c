//! The one declaration of every command, flag and `FLEX_AUTH_*` environment variable, and the
//! checks that need more than one flag. No other module reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// flex-auth: a Cedar policy decision point and fail-closed authorization proxy.
#[derive(Debug, Parser)]
#[command(name = "flex-auth", version, about, long_about = None)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, env = "FLEX_AUTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json,
          help_heading = "Logging (every command)", display_order = 900)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `flex_auth=debug`. When unset, `RUST_LOG`, else `info`.
    #[arg(
        long = "log-level",
        global = true,
        env = "FLEX_AUTH_LOG",
        help_heading = "Logging (every command)",
        display_order = 901
    )]
    pub log_level: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the decision API (`POST /v1/check`, `/v1/check/batch`, `/healthz`, `/readyz`).
    Serve(Box<ServeArgs>),
    /// Load a policy package (and a registry, when given), report errors with file:line:col;
    /// exit 0 when valid, 1 when not.
    Validate(ValidateArgs),
    /// Ask for one decision, from files or from a running server; exit 0 allow, 1 deny, 2 cannot
    /// decide.
    Check(CheckArgs),
    /// Run policy test cases (YAML or JSON) against a package and registry.
    Test(TestArgs),
    /// Read decision records back from a decision log.
    #[command(subcommand)]
    Decisions(DecisionsCommand),
    /// Validate a registry snapshot, then install it atomically where a server watches
    /// (`--target`) or push it to a running server's admin API (`--url`).
    LoadRegistry(LoadRegistryArgs),
    /// Print the configuration reference: every flag with its `FLEX_AUTH_*` variable, default
    /// and meaning (`config reference --markdown` writes docs/configuration.md).
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `flex-auth config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every flag and `FLEX_AUTH_*` variable with its default and meaning (the source of
    /// `docs/configuration.md`).
    Reference {
        /// Print the Markdown of `docs/configuration.md` instead of plain text.
        #[arg(long, env = "FLEX_AUTH_REFERENCE_MARKDOWN")]
        markdown: bool,
    },
}

/// Where the policy package and the registry come from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Policy package: a directory, a `.cedar` file or a Markdown file with ```cedar blocks.
    #[arg(long, env = "FLEX_AUTH_POLICY", value_name = "PATH")]
    pub policy: Option<PathBuf>,

    /// Registry snapshot (JSON, see registry/schema/registry-snapshot.schema.json).
    #[arg(
        long,
        env = "FLEX_AUTH_REGISTRY",
        value_name = "FILE",
        conflicts_with = "entities"
    )]
    pub registry: Option<PathBuf>,

    /// Raw Cedar entities JSON, instead of a registry snapshot.
    #[arg(long, env = "FLEX_AUTH_ENTITIES", value_name = "FILE")]
    pub entities: Option<PathBuf>,
}

impl SourceArgs {
    /// The sources, or which flag is missing.
    pub fn sources(&self) -> Result<crate::state::Sources, ConfigError> {
        let policy = self.policy.clone().ok_or(ConfigError::Missing {
            flag: "--policy",
            env: "FLEX_AUTH_POLICY",
        })?;
        let registry = match (&self.registry, &self.entities) {
            (Some(path), None) => crate::state::RegistrySource::Snapshot(path.clone()),
            (None, Some(path)) => crate::state::RegistrySource::Entities(path.clone()),
            _ => {
                return Err(ConfigError::Missing {
                    flag: "--registry (or --entities)",
                    env: "FLEX_AUTH_REGISTRY",
                })
            }
        };
        Ok(crate::state::Sources { policy, registry })
    }
}

/// `flex-auth validate`.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Policy and registry (without a registry, the package alone is validated).
    #[command(flatten)]
    pub sources: SourceArgs,

    /// Treat validator warnings (e.g. a policy that can never apply: a typo that disables a
    /// `forbid`) as errors: exit 1.
    #[arg(long, env = "FLEX_AUTH_DENY_WARNINGS")]
    pub deny_warnings: bool,
}

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

    /// Bearer-credential verification for the proxy and forward-auth.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// TLS on the decision API listener.
    #[command(flatten)]
    pub tls: TlsArgs,

    /// Connection and request limits of every listener.
    #[command(flatten)]
    pub limits: LimitsArgs,
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
    /// `Retry-After` at once (never queued). `/healthz` and `/readyz` are exempt.
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

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
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

/// `flex-auth check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Policy and registry, for a local decision (ignored with `--url`).
    #[command(flatten)]
    pub sources: SourceArgs,

    /// Ask a running server instead of deciding locally, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "FLEX_AUTH_URL")]
    pub url: Option<String>,

    /// How long to wait for the server before giving up (exit 2).
    #[arg(long, env = "FLEX_AUTH_TIMEOUT", value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// The whole request as JSON, in the `POST /v1/check` body form (`{"subject": {"id": …},
    /// "action": …, "resource": {"type": …, "id": …}, "context": {…}}`), from a file or `-` for stdin. Overrides the
    /// per-field flags.
    #[arg(long, env = "FLEX_AUTH_REQUEST", value_name = "FILE")]
    pub request: Option<PathBuf>,

    /// Subject id, e.g. `agt-state-hub-bridge` or `iam:agt-state-hub-bridge`.
    #[arg(long, env = "FLEX_AUTH_SUBJECT")]
    pub subject: Option<String>,

    /// Subject entity type.
    #[arg(long, env = "FLEX_AUTH_SUBJECT_TYPE")]
    pub subject_type: Option<String>,

    /// Action name, e.g. `sign`.
    #[arg(long, env = "FLEX_AUTH_ACTION")]
    pub action: Option<String>,

    /// Resource entity type.
    #[arg(long, env = "FLEX_AUTH_RESOURCE_TYPE", default_value = "Actor")]
    pub resource_type: String,

    /// Resource id; defaults to the subject id without an `iam:` prefix.
    #[arg(long, env = "FLEX_AUTH_RESOURCE_ID")]
    pub resource_id: Option<String>,

    /// Context as a JSON object, e.g. `{"ttl_hours":4,"principals":["state-hub"]}`.
    #[arg(long, env = "FLEX_AUTH_CONTEXT")]
    pub context: Option<String>,

    /// Print the full JSON response instead of one line.
    #[arg(long, env = "FLEX_AUTH_JSON")]
    pub json: bool,
}

/// `flex-auth test`.
#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    /// Policy and registry.
    #[command(flatten)]
    pub sources: SourceArgs,

    /// Test case files (YAML or JSON): `cases: [{name, request, expect: {decision, reasons}}]`.
    #[arg(required = true, env = "FLEX_AUTH_TEST_CASES", value_delimiter = ',')]
    pub cases: Vec<PathBuf>,
}

/// `flex-auth decisions …`.
#[derive(Debug, Subcommand)]
pub enum DecisionsCommand {
    /// Print the record of one decision (exit 1 when it is not found).
    Show {
        /// The decision id, e.g. `decision:032b096c433ad80c`.
        #[arg(env = "FLEX_AUTH_DECISION_ID")]
        decision_id: String,
        /// The sink to read: `file:PATH` (rotated files included) or `sqlite:PATH`.
        #[arg(long, visible_alias = "decision-log", env = "FLEX_AUTH_DECISION_LOG", value_parser = parse_sink)]
        log: crate::audit::Sink,
    },
    /// Print the newest records.
    Tail {
        /// The sink to read: `file:PATH` (rotated files included) or `sqlite:PATH`.
        #[arg(long, visible_alias = "decision-log", env = "FLEX_AUTH_DECISION_LOG", value_parser = parse_sink)]
        log: crate::audit::Sink,
        /// How many records.
        #[arg(
            short = 'n',
            long,
            env = "FLEX_AUTH_TAIL_LINES",
            value_name = "N",
            default_value_t = 20
        )]
        lines: usize,
    },
}

fn parse_sink(text: &str) -> Result<crate::audit::Sink, String> {
    text.parse()
}

/// `flex-auth load-registry`.
#[derive(Debug, Clone, Args)]
pub struct LoadRegistryArgs {
    /// The snapshot to validate and install.
    #[arg(long, env = "FLEX_AUTH_REGISTRY_FILE", value_name = "FILE")]
    pub file: PathBuf,

    /// Policy package whose Cedar schema the snapshot must also satisfy (recommended).
    #[arg(long, env = "FLEX_AUTH_POLICY", value_name = "PATH")]
    pub policy: Option<PathBuf>,

    /// The file is raw Cedar entities JSON rather than a registry snapshot.
    #[arg(long, env = "FLEX_AUTH_REGISTRY_IS_ENTITIES")]
    pub entities: bool,

    /// Install at this path (temporary file in the same directory, fsync, rename, fsync the
    /// directory), for a watching server to pick up.
    #[arg(
        long,
        env = "FLEX_AUTH_REGISTRY_TARGET",
        value_name = "PATH",
        conflicts_with = "url"
    )]
    pub target: Option<PathBuf>,

    /// Push to a running server's admin API, e.g. `http://127.0.0.1:9901`.
    #[arg(long, env = "FLEX_AUTH_ADMIN_URL")]
    pub url: Option<String>,

    /// File holding the admin bearer token, with `--url`.
    #[arg(long, env = "FLEX_AUTH_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// How long to wait for the server, with `--url`.
    #[arg(long, env = "FLEX_AUTH_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("missing {flag} (or {env})")]
    Missing {
        /// The flag.
        flag: &'static str,
        /// Its environment variable.
        env: &'static str,
    },
    /// A setting has a value that cannot work.
    #[error("{flag}: {message}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Why.
        message: String,
    },
}

/// Durations are written like `5s`, `500ms`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like `5s` or `500ms`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_declaration_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn duration_limits_are_bounded_so_deadlines_cannot_overflow() {
        assert!(parse_positive_duration("10s").is_ok());
        assert!(parse_positive_duration("24h").is_ok());
        assert!(parse_positive_duration("0s").is_err());
        let huge = parse_positive_duration("100000000000y").unwrap_err();
        assert!(huge.contains("24h") || huge.contains("duration"), "{huge}");
        assert!(
            Cli::try_parse_from(["flex-auth", "serve", "--keepalive-timeout", "1000000d"]).is_err()
        );
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        // Every level of subcommands (`decisions show`, `config reference`, …), not just the first.
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
            for arg in command.get_arguments() {
                *seen += 1;
                if arg.get_env().is_none() && !matches!(arg.get_id().as_str(), "help" | "version") {
                    missing.push(format!("{path} {}", arg.get_id()).trim().to_owned());
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
            }
        }
        let mut missing = Vec::new();
        let mut seen = 0;
        walk(&Cli::command(), "", &mut missing, &mut seen);
        assert!(seen > 60, "the walk reached only {seen} flags");
        assert!(
            missing.is_empty(),
            "flags without FLEX_AUTH_* env: {missing:?}"
        );
    }
}
