//! The one declaration of every command, flag and `FLEX_AUTH_*` environment variable, and the
//! checks that need more than one flag. No other module reads the environment.
//!
//! `serve` holds the `serve` flags (sources aside): listeners, limits, TLS, proxy, auth.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

mod serve;

pub use serve::{
    AuthArgs, BundleArgs, LimitsArgs, MetricsListener, Mode, ProxyArgs, ServeArgs, ShadowArgs,
    TlsArgs,
};

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
    /// Re-evaluate every request a decision log recorded against a candidate policy (and
    /// registry) and report what would change; exit 0 nothing changed, 1 something did, 2 could
    /// not run (docs/policy-changes.md).
    Replay(ReplayArgs),
    /// Validate a registry snapshot, then install it atomically where a server watches
    /// (`--target`) or push it to a running server's admin API (`--url`).
    LoadRegistry(LoadRegistryArgs),
    /// Print the configuration reference: every flag with its `FLEX_AUTH_*` variable, default
    /// and meaning (`config reference --markdown` writes docs/configuration.md).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Build, sign, verify, inspect, push and pull bundles: one `.tar.gz` with a policy package,
    /// a registry and a manifest of their sha256, optionally signed (docs/bundles.md).
    #[command(subcommand)]
    Bundle(BundleCommand),
}

/// `flex-auth bundle …`. Exit codes: 0 done / valid, 1 invalid or refused, 2 cannot run (I/O,
/// network), 78 configuration.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Validate a policy package and registry exactly as `validate` does and pack them with their
    /// manifest; refuses to build an invalid bundle.
    Build(BundleBuildArgs),
    /// Sign a bundle's manifest (EdDSA or ES256 JWS in `signatures.json`); a signature by the same
    /// `kid` is replaced, others are kept (sign with the old and the new key while rotating).
    Sign(BundleSignArgs),
    /// Check a bundle: archive, manifest, every file's sha256, and its signature against the keys.
    Verify(BundleVerifyArgs),
    /// Show a bundle's manifest, files, signatures (unverified) and what its package and registry
    /// hold.
    Inspect(BundleInspectArgs),
    /// Push a bundle to an OCI registry as a one-layer artifact.
    Push(BundleOciArgs),
    /// Pull a bundle from an OCI registry into a file.
    Pull(BundleOciArgs),
}

/// `flex-auth bundle build`.
#[derive(Debug, Clone, Args)]
pub struct BundleBuildArgs {
    /// Policy and registry to pack.
    #[command(flatten)]
    pub sources: SourceArgs,

    /// The release's name, e.g. `2026-12-02.1` or a git commit (A-Z a-z 0-9 . _ : + -).
    #[arg(long, env = "FLEX_AUTH_BUNDLE_REVISION", value_name = "REV")]
    pub revision: String,

    /// Where to write the bundle (`.tar.gz`).
    #[arg(
        short = 'o',
        long = "output",
        env = "FLEX_AUTH_BUNDLE_OUTPUT",
        value_name = "FILE"
    )]
    pub output: PathBuf,

    /// Sign while building, with this PKCS#8 PEM private key (Ed25519 or P-256).
    #[arg(
        long,
        env = "FLEX_AUTH_BUNDLE_SIGNING_KEY",
        value_name = "PEM",
        requires = "kid"
    )]
    pub signing_key: Option<PathBuf>,

    /// The signing key's id, with --signing-key.
    #[arg(long, env = "FLEX_AUTH_BUNDLE_KID", value_name = "ID")]
    pub kid: Option<String>,
}

/// `flex-auth bundle sign`.
#[derive(Debug, Clone, Args)]
pub struct BundleSignArgs {
    /// The bundle to sign.
    #[arg(env = "FLEX_AUTH_BUNDLE_FILE", value_name = "FILE")]
    pub file: PathBuf,

    /// PKCS#8 PEM private key (Ed25519 → EdDSA, P-256 → ES256).
    #[arg(long, env = "FLEX_AUTH_BUNDLE_SIGNING_KEY", value_name = "PEM")]
    pub key: PathBuf,

    /// The key's id, as the servers' --bundle-public-key names it.
    #[arg(long, env = "FLEX_AUTH_BUNDLE_KID", value_name = "ID")]
    pub kid: String,

    /// Write the signed bundle here instead of replacing FILE (atomically).
    #[arg(
        short = 'o',
        long = "output",
        env = "FLEX_AUTH_BUNDLE_OUTPUT",
        value_name = "FILE"
    )]
    pub output: Option<PathBuf>,
}

/// `flex-auth bundle verify`.
#[derive(Debug, Clone, Args)]
pub struct BundleVerifyArgs {
    /// The bundle to check.
    #[arg(env = "FLEX_AUTH_BUNDLE_FILE", value_name = "FILE")]
    pub file: PathBuf,

    /// Trusted key(s), as `serve --bundle-public-key`: a JWKS or `[KID=]` a PEM public key.
    #[arg(
        long = "public-key",
        env = "FLEX_AUTH_BUNDLE_PUBLIC_KEY",
        value_name = "[KID=]FILE",
        value_delimiter = ',',
        required = true
    )]
    pub public_keys: Vec<String>,

    /// Largest total of unpacked files.
    #[arg(long, env = "FLEX_AUTH_BUNDLE_MAX_BYTES", value_name = "BYTES",
          default_value_t = crate::bundle::DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

/// `flex-auth bundle inspect`.
#[derive(Debug, Clone, Args)]
pub struct BundleInspectArgs {
    /// The bundle to show.
    #[arg(env = "FLEX_AUTH_BUNDLE_FILE", value_name = "FILE")]
    pub file: PathBuf,

    /// Print JSON instead of text.
    #[arg(long, env = "FLEX_AUTH_JSON")]
    pub json: bool,

    /// Largest total of unpacked files.
    #[arg(long, env = "FLEX_AUTH_BUNDLE_MAX_BYTES", value_name = "BYTES",
          default_value_t = crate::bundle::DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

/// `flex-auth bundle push` / `pull`.
#[derive(Debug, Clone, Args)]
pub struct BundleOciArgs {
    /// The bundle file (read by `push`, written by `pull`).
    #[arg(env = "FLEX_AUTH_BUNDLE_FILE", value_name = "FILE")]
    pub file: PathBuf,

    /// `oci://REGISTRY/REPOSITORY:TAG` (or `@sha256:…` to pull).
    #[arg(env = "FLEX_AUTH_BUNDLE", value_name = "REFERENCE")]
    pub reference: String,

    /// Docker `config.json` with the registry's credentials (`auths.HOST.auth`).
    #[arg(long, env = "FLEX_AUTH_BUNDLE_REGISTRY_AUTH", value_name = "FILE")]
    pub registry_auth: Option<PathBuf>,

    /// PEM CA bundle trusted for the registry instead of the usual roots.
    #[arg(long, env = "FLEX_AUTH_BUNDLE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Speak plain HTTP to a non-loopback registry.
    #[arg(long, env = "FLEX_AUTH_BUNDLE_ALLOW_HTTP")]
    pub allow_http: bool,

    /// Largest bundle pulled or pushed.
    #[arg(long, env = "FLEX_AUTH_BUNDLE_MAX_BYTES", value_name = "BYTES",
          default_value_t = crate::bundle::DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,

    /// How long the whole transfer may take.
    #[arg(long, env = "FLEX_AUTH_TIMEOUT", value_name = "DURATION", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
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

    /// After the cases, report per policy how many cases it determined (as a `permit`, or as a
    /// `forbid` with its reason), the policies no case reached and the reasons no case produced.
    #[arg(long, env = "FLEX_AUTH_TEST_COVERAGE")]
    pub coverage: bool,

    /// Fail (exit 1) when fewer than PCT percent of the package's policies determined a case
    /// (implies `--coverage`).
    #[arg(long, env = "FLEX_AUTH_TEST_MIN_COVERAGE", value_name = "PCT", value_parser = parse_percent)]
    pub min_coverage: Option<f64>,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim_end_matches('%').parse::<f64>() {
        Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
        _ => Err(format!("`{text}` is not a percentage from 0 to 100")),
    }
}

/// `flex-auth replay`. The candidate's flags have their own `FLEX_AUTH_REPLAY_*` variables, so
/// a server's `FLEX_AUTH_POLICY` in the environment never stands in for the candidate (a replay
/// of the live package against itself would report "nothing changed").
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The decision log to read: `file:PATH` (rotated files `PATH.N` … `PATH.1` first, oldest
    /// first) or `sqlite:PATH` (opened read-only). Never written to.
    #[arg(long, visible_alias = "decision-log", env = "FLEX_AUTH_REPLAY_LOG", value_parser = parse_sink)]
    pub log: crate::audit::Sink,

    /// The candidate policy package (with `--bundle`: evaluated against the bundle's registry).
    #[arg(long, env = "FLEX_AUTH_REPLAY_POLICY", value_name = "PATH")]
    pub policy: Option<PathBuf>,

    /// The registry snapshot to evaluate against.
    #[arg(long, env = "FLEX_AUTH_REPLAY_REGISTRY", value_name = "FILE", conflicts_with_all = ["entities", "bundle"])]
    pub registry: Option<PathBuf>,

    /// Raw Cedar entities JSON to evaluate against, instead of a registry snapshot.
    #[arg(
        long,
        env = "FLEX_AUTH_REPLAY_ENTITIES",
        value_name = "FILE",
        conflicts_with = "bundle"
    )]
    pub entities: Option<PathBuf>,

    /// A bundle (`.tar.gz`): its package and registry, or only its registry when `--policy`
    /// names the candidate package.
    #[arg(long, env = "FLEX_AUTH_REPLAY_BUNDLE", value_name = "FILE")]
    pub bundle: Option<PathBuf>,

    /// Key(s) the bundle's signature must verify against (a JWKS or `[KID=]` a PEM public key);
    /// without one the bundle's hashes are checked and its signature is not.
    #[arg(
        long = "bundle-public-key",
        env = "FLEX_AUTH_REPLAY_BUNDLE_PUBLIC_KEY",
        value_name = "[KID=]FILE",
        value_delimiter = ',',
        requires = "bundle"
    )]
    pub bundle_public_keys: Vec<String>,

    /// Only records at or after TIME: RFC 3339 (`2026-11-26T00:00:00Z`) or a duration ago
    /// (`7d`, `36h`).
    #[arg(long, env = "FLEX_AUTH_REPLAY_SINCE", value_name = "TIME", value_parser = parse_time)]
    pub since: Option<std::time::SystemTime>,

    /// Only records before TIME (same forms as `--since`).
    #[arg(long, env = "FLEX_AUTH_REPLAY_UNTIL", value_name = "TIME", value_parser = parse_time)]
    pub until: Option<std::time::SystemTime>,

    /// Only records whose origin starts with PREFIX (`api:`, `proxy:`, `forward-auth:`).
    #[arg(long, env = "FLEX_AUTH_REPLAY_ORIGIN", value_name = "PREFIX")]
    pub origin: Option<String>,

    /// Report format.
    #[arg(
        long,
        env = "FLEX_AUTH_REPLAY_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub format: ReplayFormat,

    /// Example decisions shown per change class.
    #[arg(
        long,
        env = "FLEX_AUTH_REPLAY_LIMIT_EXAMPLES",
        value_name = "N",
        default_value_t = 5
    )]
    pub limit_examples: usize,

    /// How AuthZEN properties apply, as `serve --authzen-properties` (use the server's setting).
    #[arg(
        long,
        env = "FLEX_AUTH_REPLAY_AUTHZEN_PROPERTIES",
        value_enum,
        value_name = "MODE",
        default_value = "extend"
    )]
    pub authzen_properties: crate::authzen::PropertiesMode,
}

/// `flex-auth replay --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayFormat {
    /// For people.
    Text,
    /// One JSON document.
    Json,
}

/// An RFC 3339 time, or a duration before now.
fn parse_time(text: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => std::time::SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| format!("`{text}` reaches before the epoch")),
        Err(_) => Err(format!(
            "`{text}` is neither an RFC 3339 time (2026-11-26T00:00:00Z) nor a duration ago (7d, 36h)"
        )),
    }
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
    use super::serve::parse_positive_duration;
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
