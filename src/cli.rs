//! The subcommands: each takes its parsed arguments and returns the process exit code. Output
//! for people goes to stdout, errors to stderr; nothing here is called by the rest of the crate.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::admin::Admin;
use crate::api::{Api, ApiConfig, CheckResponse};
use crate::audit::{AuditLog, Mode as AuditMode, Rotation, Sink};
use crate::config::{
    CheckArgs, ConfigError, DecisionsCommand, LoadRegistryArgs, MetricsListener, ServeArgs,
    SourceArgs, TestArgs, ValidateArgs,
};
use crate::decision::{CheckRequest, ResourceRef, SubjectRef};
use crate::reload::{self, ReloadConfig};
use crate::server::{shutdown_signal, Drain, Server};
use crate::state::{self, State, Trigger};
use crate::suite;

/// Exit code: allowed / valid / all tests passed.
pub const EXIT_OK: u8 = 0;
/// Exit code: denied / invalid / a test failed.
pub const EXIT_DENY: u8 = 1;
/// Exit code: no decision could be obtained (treat as deny).
pub const EXIT_CANNOT_DECIDE: u8 = 2;
/// Exit code: the configuration cannot run (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// `BOOT_FAIL` problems that only start-up reports (besides `boot-` + each of
/// [`crate::state::PROBLEMS`]); each is an anchor in `docs/runbook.md`.
pub const BOOT_ONLY_PROBLEMS: [&str; 6] = [
    ADMIN_TOKEN_INVALID,
    crate::audit::PROBLEM,
    ROUTES_INVALID,
    UPSTREAM_INVALID,
    crate::auth::PROBLEM,
    crate::tls::PROBLEM,
];
const ADMIN_TOKEN_INVALID: &str = "admin-token-invalid";
const ROUTES_INVALID: &str = "routes-invalid";
/// How often the proxy checks that its upstream accepts connections (readiness `upstream`).
const UPSTREAM_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const UPSTREAM_INVALID: &str = "upstream-invalid";

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// `flex-auth serve`.
pub fn serve(args: ServeArgs) -> ExitCode {
    let sources = match args.sources.sources() {
        Ok(s) => s,
        Err(ConfigError::Missing { flag, env }) => {
            let problem = if env == "FLEX_AUTH_POLICY" {
                "policy-missing"
            } else {
                "registry-missing"
            };
            return boot_fail(env, &format!("{flag} is not set"), problem);
        }
        Err(e) => return config_error(&e),
    };
    // Every configuration check comes before the first log line, so that a BOOT_FAIL is the
    // only thing on stderr.
    if let Some(path) = &args.admin_token_file {
        if let Err(e) = crate::admin::read_token(path) {
            return boot_fail(
                "FLEX_AUTH_ADMIN_TOKEN_FILE",
                &e.to_string(),
                ADMIN_TOKEN_INVALID,
            );
        }
    }
    // A sink without a mode logs best-effort: naming a sink and getting nothing is a surprise.
    let mode = args
        .decision_log_mode
        .unwrap_or(if args.decision_log.is_some() {
            AuditMode::BestEffort
        } else {
            AuditMode::Off
        });
    let audit = match (&args.decision_log, mode) {
        (_, AuditMode::Off) => AuditLog::off(),
        (None, _) => {
            return boot_fail(
                "FLEX_AUTH_DECISION_LOG",
                "--decision-log-mode is on but --decision-log names no sink",
                crate::audit::PROBLEM,
            )
        }
        (Some(sink), mode) => {
            let rotation = Rotation {
                max_bytes: args.decision_log_max_bytes,
                keep: args.decision_log_keep,
            };
            match AuditLog::start(sink.clone(), mode, rotation) {
                Ok(log) => log,
                Err(e) => {
                    return boot_fail(
                        "FLEX_AUTH_DECISION_LOG",
                        &format!("cannot open the decision log: {e}"),
                        crate::audit::PROBLEM,
                    )
                }
            }
        }
    };
    let proxy_config = match proxy_config(&args) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let tls = match args.tls.settings().map(crate::tls::Tls::load).transpose() {
        Ok(tls) => tls.map(Arc::new),
        Err(e) => {
            let setting = match &e {
                crate::tls::TlsError::Read { path, .. }
                | crate::tls::TlsError::Pem { path, .. }
                    if Some(path) == args.tls.client_ca.as_ref() =>
                {
                    "FLEX_AUTH_CLIENT_CA"
                }
                crate::tls::TlsError::Read { path, .. }
                | crate::tls::TlsError::Pem { path, .. }
                    if Some(path) == args.tls.tls_key.as_ref() =>
                {
                    "FLEX_AUTH_TLS_KEY"
                }
                _ => "FLEX_AUTH_TLS_CERT",
            };
            return boot_fail(setting, &e.to_string(), crate::tls::PROBLEM);
        }
    };
    let limits = args.limits();
    let state = Arc::new(State::new(sources));
    match state.reload(Trigger::Startup) {
        Ok(_) => {
            if let Some(loaded) = state.current().as_ref() {
                let engine = &loaded.engine;
                tracing::info!(
                    package = engine.policy().name(),
                    policy_version = %engine.policy().hash(),
                    policies = engine.policy().policy_count(),
                    registry_version = %engine.registry().hash(),
                    entities = engine.registry().entity_count(),
                    load_ms = loaded.load_duration.as_millis() as u64,
                    "loaded policy package and registry"
                );
                for warning in engine.policy().warnings() {
                    tracing::warn!(%warning, "policy validation warning");
                }
            }
        }
        Err(failure) if args.fail_fast() => {
            return boot_fail(failure.setting, &failure.message, failure.problem);
        }
        Err(failure) => tracing::error!(
            setting = failure.setting,
            error = %failure.message,
            "load failed; serving unready (every check answers 503) until valid files appear"
        ),
    }
    let config = ApiConfig {
        max_body_bytes: usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX),
        max_batch: usize::try_from(args.max_batch).unwrap_or(usize::MAX),
        metrics: args.metrics_listener != MetricsListener::Admin,
        authzen: crate::authzen::AuthZenConfig {
            base_url: args.authzen_base_url.clone(),
            decision_only: args.authzen_decision_only,
            properties: args.authzen_properties,
        },
    };
    let reload_config = ReloadConfig {
        watch: !args.no_watch,
        poll_interval: Some(args.poll_interval).filter(|d| !d.is_zero()),
        ..ReloadConfig::default()
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api = match Api::new(state.clone(), config) {
        Ok(api) => api.with_audit(audit),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (api, proxy) = match runtime.block_on(gate_and_proxy(&args, &state, api, proxy_config)) {
        Ok(pair) => pair,
        Err(exit) => return exit,
    };
    let admin = match &args.admin_token_file {
        Some(path) => {
            let max = usize::try_from(args.admin_max_body_bytes).unwrap_or(usize::MAX);
            let metrics = args.metrics_listener != MetricsListener::Main;
            match Admin::new(state.clone(), api.clone(), path.clone(), max, metrics) {
                Ok(admin) => Some(admin),
                Err(e) => {
                    return boot_fail(
                        "FLEX_AUTH_ADMIN_TOKEN_FILE",
                        &e.to_string(),
                        ADMIN_TOKEN_INVALID,
                    );
                }
            }
        }
        None => None,
    };
    let exit = runtime.block_on(async move {
        let _triggers = reload::spawn(state.clone(), &reload_config);
        let _tls_reload = tls.as_ref().map(crate::tls::Tls::spawn_reload);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // Signal handlers first: once anything says "listening", SIGTERM means drain.
        let signalled = shutdown_signal();
        let draining = state.clone();
        tokio::spawn(async move {
            signalled.await;
            // Readiness fails before the listeners stop accepting.
            draining.begin_shutdown();
            tracing::info!("SIGTERM/SIGINT received: readiness fails, listeners stop accepting");
            let _ = stop_tx.send(true);
        });
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let metrics = api.metrics().clone();
        let api = api.with_listener(limits.clone(), tls.clone());
        let server = match Server::bind(args.listen, api, limits.clone()).await {
            Ok(server) => server.with_metrics(metrics.clone()),
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        let server = match &tls {
            Some(tls) => server.with_tls(Arc::clone(tls)),
            None => server,
        };
        let admin_task = match admin {
            Some(admin) => match Server::bind(args.admin_listen, admin, limits.clone()).await {
                Ok(admin_server) => {
                    let addr = admin_server
                        .local_addr()
                        .map_or_else(|_| args.admin_listen.to_string(), |a| a.to_string());
                    tracing::info!(%addr, "admin API listening");
                    if !args.admin_listen.ip().is_loopback() {
                        tracing::warn!(%addr, "admin API on a non-loopback address; its token travels in cleartext");
                    }
                    let admin_server = admin_server.with_metrics(metrics.clone());
                    Some(tokio::spawn(admin_server.serve(stopped())))
                }
                Err(e) => {
                    eprintln!("error: cannot listen on {} (admin API): {e}", args.admin_listen);
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            None => None,
        };
        let proxy_task = match proxy {
            Some(proxy) => {
                let listen = args.proxy.proxy_listen;
                match Server::bind(listen, proxy, limits.clone()).await {
                    Ok(proxy_server) => {
                        let addr = proxy_server
                            .local_addr()
                            .map_or_else(|_| listen.to_string(), |a| a.to_string());
                        tracing::info!(%addr, upstream = args.proxy.upstream.as_deref().unwrap_or(""), "proxy listening");
                        if !listen.ip().is_loopback() {
                            tracing::warn!(%addr, "proxy serves plain HTTP on a non-loopback address; bearer tokens travel in cleartext");
                        }
                        let proxy_server = proxy_server.with_metrics(metrics.clone());
                        Some(tokio::spawn(proxy_server.serve(stopped())))
                    }
                    Err(e) => {
                        eprintln!("error: cannot listen on {listen} (proxy): {e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            None => None,
        };
        let addr = server
            .local_addr()
            .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, "listening");
        if tls.is_none() && !args.listen.ip().is_loopback() {
            tracing::warn!(%addr, "serving plain HTTP on a non-loopback address; requests and tokens travel in cleartext (set --tls-cert/--tls-key)");
        }
        let mut drains = vec![server.serve(stopped()).await];
        for task in [admin_task, proxy_task].into_iter().flatten() {
            if let Ok(drain) = task.await {
                drains.push(drain);
            }
        }
        let cut: usize = drains
            .iter()
            .map(|d| match d {
                Drain::Clean => 0,
                Drain::Cut(n) => *n,
            })
            .sum();
        if cut == 0 {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        } else {
            tracing::error!(connections = cut, "stopped with requests cut at the shutdown grace");
            ExitCode::FAILURE
        }
    });
    // Never wait for stray blocking work past the grace: the hard cap is the point.
    runtime.shutdown_timeout(Duration::from_millis(500));
    exit
}

/// The routes, and the upstream with the TLS configuration for `--upstream-ca`, when `--routes`
/// is set.
type ProxyConfig = (
    Arc<crate::routes::Routes>,
    Option<(http::Uri, Option<rustls::ClientConfig>)>,
);

/// Check the proxy and authentication flags that no waiting can fix, before anything is logged.
fn proxy_config(args: &ServeArgs) -> Result<Option<ProxyConfig>, ExitCode> {
    let proxy_args = &args.proxy;
    let Some(routes_path) = &proxy_args.routes else {
        if proxy_args.upstream.is_some() {
            return Err(boot_fail(
                "FLEX_AUTH_ROUTES",
                "--upstream needs --routes: without routes every request would be denied",
                ROUTES_INVALID,
            ));
        }
        if args.auth.configured() {
            return Err(boot_fail(
                "FLEX_AUTH_ROUTES",
                "--jwks / --hs256-secret-file are set but no --routes says what they protect",
                ROUTES_INVALID,
            ));
        }
        return Ok(None);
    };
    let upstream = match &proxy_args.upstream {
        Some(url) => match crate::proxy::parse_upstream(url) {
            Ok(uri) => Some(uri),
            Err(e) => {
                return Err(boot_fail(
                    "FLEX_AUTH_UPSTREAM",
                    &e.to_string(),
                    UPSTREAM_INVALID,
                ))
            }
        },
        None => None,
    };
    if upstream.is_some() && proxy_args.upstream_timeout >= args.limits.request_timeout {
        return Err(boot_fail(
            "FLEX_AUTH_UPSTREAM_TIMEOUT",
            &format!(
                "--upstream-timeout ({}) must be shorter than --request-timeout ({}), or the request deadline would answer before the upstream's 504",
                humantime::format_duration(proxy_args.upstream_timeout),
                humantime::format_duration(args.limits.request_timeout)
            ),
            UPSTREAM_INVALID,
        ));
    }
    let upstream_tls = match (&upstream, &proxy_args.upstream_ca) {
        (Some(uri), Some(ca)) => {
            if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
                return Err(boot_fail(
                    "FLEX_AUTH_UPSTREAM_CA",
                    "--upstream-ca is set but --upstream is not an https:// URL",
                    UPSTREAM_INVALID,
                ));
            }
            match crate::tls::client_config(Some(ca)) {
                Ok(config) => Some(config),
                Err(e) => {
                    return Err(boot_fail(
                        "FLEX_AUTH_UPSTREAM_CA",
                        &e.to_string(),
                        UPSTREAM_INVALID,
                    ))
                }
            }
        }
        _ => None,
    };
    let upstream = upstream.map(|uri| (uri, upstream_tls));
    let routes = match crate::routes::Routes::load(routes_path) {
        Ok(routes) => Arc::new(routes),
        Err(e) => {
            return Err(boot_fail(
                "FLEX_AUTH_ROUTES",
                &e.to_string(),
                ROUTES_INVALID,
            ))
        }
    };
    if let Err(e) = args.auth.settings().validate() {
        return Err(boot_fail(e.setting, &e.message, crate::auth::PROBLEM));
    }
    Ok(Some((routes, upstream)))
}

/// With `--routes`: the authenticator, the forward-auth endpoints on the API, and with
/// `--upstream` the reverse proxy. Configuration that can never work is a `BOOT_FAIL` in every
/// mode; credentials that cannot be loaded yet are one in production mode, and otherwise leave
/// the server unready until they load.
async fn gate_and_proxy(
    args: &ServeArgs,
    state: &Arc<State>,
    api: Api,
    proxy_config: Option<ProxyConfig>,
) -> Result<(Api, Option<crate::proxy::Proxy>), ExitCode> {
    let Some((routes, upstream)) = proxy_config else {
        return Ok((api, None));
    };
    let auth = match crate::auth::Authenticator::new(args.auth.settings()).await {
        Ok(auth) => Arc::new(auth),
        Err(e) => return Err(boot_fail(e.setting, &e.message, crate::auth::PROBLEM)),
    };
    if let Err(e) = auth.readiness() {
        if args.fail_fast() {
            return Err(boot_fail(e.setting, &e.message, crate::auth::PROBLEM));
        }
        tracing::error!(setting = e.setting, error = %e.message, "credentials cannot be verified yet; proxied and forward-auth requests answer 503 until they can");
    }
    auth.spawn_refresh();
    let gate = crate::gate::Gate::new(
        state.clone(),
        routes,
        auth,
        api.audit().clone(),
        api.metrics().clone(),
    );
    let proxy = upstream.map(|(uri, tls)| {
        let proxy = crate::proxy::Proxy::new(gate.clone(), uri, args.proxy.upstream_timeout)
            .with_passed_headers(args.proxy.proxy_pass_headers.clone());
        match tls {
            Some(config) => proxy.with_tls(config),
            None => proxy,
        }
    });
    let mut api = api.with_gate(gate);
    if let Some(proxy) = &proxy {
        api = api.with_probe(proxy.spawn_probe(UPSTREAM_PROBE_EVERY));
    }
    Ok((api, proxy))
}

/// Print the one `BOOT_FAIL` line operators and probes look for, and exit 78.
fn boot_fail(setting: &str, reason: &str, problem: &str) -> ExitCode {
    let reason = reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    eprintln!(
        "BOOT_FAIL setting={setting} reason=\"{reason}\" docs=docs/runbook.md#boot-{problem}"
    );
    ExitCode::from(EXIT_CONFIG)
}

/// `flex-auth validate`.
pub fn validate(args: &ValidateArgs) -> ExitCode {
    let only_package = args.sources.registry.is_none() && args.sources.entities.is_none();
    if let (true, Some(path)) = (only_package, &args.sources.policy) {
        return match crate::policy::load_package(path) {
            Ok(policy) => {
                if warned(policy.warnings(), args.deny_warnings) {
                    return ExitCode::from(EXIT_DENY);
                }
                println!(
                    "ok: package `{}` ({} policies, {}, version {}); no registry given, so none was checked",
                    policy.name(),
                    policy.policy_count(),
                    if policy.schema().is_some() { "schema-validated" } else { "no schema" },
                    policy.hash(),
                );
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("invalid: {e}");
                ExitCode::from(EXIT_DENY)
            }
        };
    }
    let sources = match args.sources.sources() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    match state::load(&sources) {
        Ok(engine) => {
            let policy = engine.policy();
            let registry = engine.registry();
            if warned(policy.warnings(), args.deny_warnings) {
                return ExitCode::from(EXIT_DENY);
            }
            println!(
                "ok: package `{}`{} ({} policies, {}, version {}) with {} ({} entities, version {})",
                policy.name(),
                policy
                    .declared_version()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                policy.policy_count(),
                if policy.schema().is_some() { "schema-validated" } else { "no schema" },
                policy.hash(),
                match &sources.registry {
                    state::RegistrySource::Snapshot(p) | state::RegistrySource::Entities(p) =>
                        format!("`{}`", p.display()),
                },
                registry.entity_count(),
                registry.hash(),
            );
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            ExitCode::from(EXIT_DENY)
        }
    }
}

/// Print validator warnings; true when they make `validate --deny-warnings` fail.
fn warned(warnings: &[String], deny: bool) -> bool {
    for warning in warnings {
        eprintln!("{}: {warning}", if deny { "error" } else { "warning" });
    }
    if deny && !warnings.is_empty() {
        eprintln!(
            "invalid: {} validator warning(s) and --deny-warnings",
            warnings.len()
        );
        return true;
    }
    false
}

/// `flex-auth test`.
pub fn test(args: &TestArgs) -> ExitCode {
    let sources = match args.sources.sources() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let engine = match state::load(&sources) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::from(EXIT_DENY);
        }
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in &args.cases {
        let file = match suite::load_cases(path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_DENY);
            }
        };
        println!("{}", path.display());
        for result in suite::run_cases(&engine, file) {
            println!("  {result}");
            if result.failure.is_some() {
                failed += 1;
            } else {
                passed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::from(EXIT_OK)
    } else {
        if passed + failed == 0 {
            eprintln!("error: no test cases found");
        }
        ExitCode::from(EXIT_DENY)
    }
}

/// `flex-auth check`.
pub fn check(args: &CheckArgs) -> ExitCode {
    let request = match build_request(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CANNOT_DECIDE);
        }
    };
    let response = match &args.url {
        Some(url) => check_remote(url, &request, args.timeout),
        None => check_local(&args.sources, request),
    };
    match response {
        Ok(body) => report(&body, args.json),
        Err(e) => {
            eprintln!("cannot decide (treat as deny): {e}");
            ExitCode::from(EXIT_CANNOT_DECIDE)
        }
    }
}

fn build_request(args: &CheckArgs) -> Result<CheckRequest, String> {
    if let Some(path) = &args.request {
        let text = if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the request from stdin: {e}"))?;
            text
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        };
        crate::json::check_unique_keys(text.as_bytes())
            .map_err(|e| format!("invalid request JSON: {e}"))?;
        return serde_json::from_str(&text).map_err(|e| format!("invalid request JSON: {e}"));
    }
    let subject = args
        .subject
        .clone()
        .ok_or("missing --subject (or --request)")?;
    let action = args
        .action
        .clone()
        .ok_or("missing --action (or --request)")?;
    let resource_id = args
        .resource_id
        .clone()
        .unwrap_or_else(|| subject.strip_prefix("iam:").unwrap_or(&subject).to_owned());
    let context = match &args.context {
        Some(text) => match crate::json::parse_value(text.as_bytes()) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => return Err("--context must be a JSON object".to_owned()),
            Err(e) => return Err(format!("--context is not valid JSON: {e}")),
        },
        None => None,
    };
    Ok(CheckRequest {
        subject: SubjectRef {
            entity_type: args.subject_type.clone(),
            id: subject,
        },
        action,
        resource: ResourceRef {
            entity_type: args.resource_type.clone(),
            id: resource_id,
        },
        context,
    })
}

fn check_local(sources: &SourceArgs, request: CheckRequest) -> Result<Value, String> {
    let sources = sources.sources().map_err(|e| e.to_string())?;
    let engine = state::load(&sources).map_err(|e| e.to_string())?;
    let outcome = engine
        .decide(&request)
        .map_err(|e| format!("invalid request: {e}"))?;
    serde_json::to_value(CheckResponse::new(&engine, outcome)).map_err(|e| e.to_string())
}

fn check_remote(url: &str, request: &CheckRequest, timeout: Duration) -> Result<Value, String> {
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let endpoint = format!("{}/v1/check", url.trim_end_matches('/'));
    let (status, value) = http_json(http::Method::POST, &endpoint, body, None, timeout)?;
    if !status.is_success() {
        return Err(format!(
            "{endpoint} answered {status}: {}",
            error_message(&value)
        ));
    }
    Ok(value)
}

fn error_message(value: &Value) -> &str {
    value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no error message")
}

/// Send a JSON body and read a JSON answer, within `timeout`.
fn http_json(
    method: http::Method,
    endpoint: &str,
    body: Vec<u8>,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(http::StatusCode, Value), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("invalid URL `{endpoint}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "`{endpoint}`: only http:// is supported by this build"
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let http_request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = client
                .request(http_request)
                .await
                .map_err(|e| format!("cannot reach {endpoint}: {}", connect_problem(&e)))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the response: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {endpoint} within {}",
                    humantime::format_duration(timeout)
                )
            })??;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!("{endpoint} answered {status} with a body that is not JSON: {e}")
        })?;
        Ok((status, value))
    })
}

/// `flex-auth load-registry`: validate, then install at `--target` or push to `--url`. A bad
/// file changes nothing anywhere.
pub fn load_registry(args: &LoadRegistryArgs) -> ExitCode {
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", args.file.display());
            return ExitCode::from(EXIT_DENY);
        }
    };
    let package = match &args.policy {
        Some(path) => match crate::policy::load_package(path) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("invalid: policy package: {e}");
                return ExitCode::from(EXIT_DENY);
            }
        },
        None => None,
    };
    let schema = package.as_ref().and_then(|p| p.schema());
    let origin = args.file.display().to_string();
    let parsed = if args.entities {
        crate::registry::parse_entities(&bytes, &origin, schema)
    } else {
        crate::registry::parse_snapshot(&bytes, &origin, schema)
    };
    let registry = match parsed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::from(EXIT_DENY);
        }
    };
    match (&args.target, &args.url) {
        (Some(target), None) => match crate::registry::write_atomically(target, &bytes) {
            Ok(()) => {
                println!(
                    "installed `{}` at `{}` ({} entities, version {})",
                    args.file.display(),
                    target.display(),
                    registry.entity_count(),
                    registry.hash()
                );
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("error: cannot install at `{}`: {e}", target.display());
                ExitCode::from(EXIT_DENY)
            }
        },
        (None, Some(url)) => {
            let Some(token_file) = &args.token_file else {
                return config_error(&ConfigError::Missing {
                    flag: "--token-file",
                    env: "FLEX_AUTH_ADMIN_TOKEN_FILE",
                });
            };
            let token = match crate::admin::read_token(token_file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let endpoint = format!("{}/v1/admin/registry", url.trim_end_matches('/'));
            match http_json(
                http::Method::PUT,
                &endpoint,
                bytes,
                Some(&token),
                args.timeout,
            ) {
                Ok((status, value)) if status.is_success() => {
                    println!("{value}");
                    ExitCode::from(EXIT_OK)
                }
                Ok((status, value)) => {
                    eprintln!(
                        "error: {endpoint} answered {status}: {}",
                        error_message(&value)
                    );
                    ExitCode::from(EXIT_DENY)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CANNOT_DECIDE)
                }
            }
        }
        _ => config_error(&ConfigError::Missing {
            flag: "--target or --url",
            env: "FLEX_AUTH_REGISTRY_TARGET",
        }),
    }
}

/// Print the answer and turn it into the exit code. Anything that is not a well-formed allow
/// counts as "cannot decide" or deny, never as allow.
fn report(body: &Value, json: bool) -> ExitCode {
    let decision = body.get("decision").and_then(Value::as_str);
    let allowed = body.get("allowed").and_then(Value::as_bool);
    let id = body
        .get("decision_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let code = match (decision, allowed) {
        (Some("allow"), Some(true)) => EXIT_OK,
        (Some("deny"), Some(false)) => EXIT_DENY,
        _ => {
            eprintln!(
                "cannot decide (treat as deny): the answer has no consistent decision: {body}"
            );
            return ExitCode::from(EXIT_CANNOT_DECIDE);
        }
    };
    if json {
        println!("{body}");
    } else {
        let reasons: Vec<&str> = body
            .get("reasons")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if code == EXIT_OK {
            println!("allow {id}");
        } else {
            println!("deny {id} reasons={}", reasons.join(","));
        }
    }
    ExitCode::from(code)
}

/// `flex-auth decisions show|tail`: read records back from a file decision log (rotated files
/// included, newest first for `show`) or a SQLite one.
pub fn decisions(command: &DecisionsCommand) -> ExitCode {
    use std::io::BufRead as _;
    let sink = match command {
        DecisionsCommand::Show { log, .. } | DecisionsCommand::Tail { log, .. } => log,
    };
    let path = match sink {
        Sink::File(path) => path,
        Sink::Sqlite(path) => return decisions_sqlite(command, path),
        Sink::Stdout => {
            eprintln!(
                "error: a `stdout` decision log cannot be read back; name a `file:PATH` or \
                 `sqlite:PATH` sink"
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let files = crate::audit::sink_files(path);
    let lines_of = |file: &std::path::Path| -> Result<Vec<String>, String> {
        let opened = std::fs::File::open(file)
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))?;
        std::io::BufReader::new(opened)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot read `{}`: {e}", file.display()))
    };
    match command {
        DecisionsCommand::Show { decision_id, .. } => {
            let needle = format!("\"decision_id\":\"{decision_id}\"");
            for file in &files {
                let lines = match lines_of(file) {
                    Ok(lines) => lines,
                    Err(e) if file == path => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_CANNOT_DECIDE);
                    }
                    Err(_) => continue,
                };
                if let Some(line) = lines.iter().rev().find(|l| l.contains(&needle)) {
                    print_pretty(line);
                    return ExitCode::from(EXIT_OK);
                }
            }
            eprintln!(
                "no record of `{decision_id}` in `{}` or its rotated files",
                path.display()
            );
            ExitCode::from(EXIT_DENY)
        }
        DecisionsCommand::Tail { lines: wanted, .. } => {
            let mut newest_first: Vec<String> = Vec::with_capacity(*wanted);
            for file in &files {
                if newest_first.len() >= *wanted {
                    break;
                }
                match lines_of(file) {
                    Ok(lines) => newest_first
                        .extend(lines.into_iter().rev().take(*wanted - newest_first.len())),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(EXIT_CANNOT_DECIDE);
                    }
                }
            }
            for line in newest_first.iter().rev() {
                println!("{line}");
            }
            ExitCode::from(EXIT_OK)
        }
    }
}

/// `decisions show|tail` over a SQLite sink.
fn decisions_sqlite(command: &DecisionsCommand, path: &std::path::Path) -> ExitCode {
    use crate::audit::sqlite;
    let conn = match sqlite::open_for_reading(path) {
        Ok(conn) => conn,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CANNOT_DECIDE);
        }
    };
    let read_error = |e: rusqlite::Error| {
        eprintln!(
            "error: cannot read decision log database `{}`: {e}",
            path.display()
        );
        ExitCode::from(EXIT_CANNOT_DECIDE)
    };
    match command {
        DecisionsCommand::Show { decision_id, .. } => match sqlite::find(&conn, decision_id) {
            Ok(records) if records.is_empty() => {
                eprintln!("no record of `{decision_id}` in `{}`", path.display());
                ExitCode::from(EXIT_DENY)
            }
            Ok(records) => {
                for record in records {
                    print_pretty(&record);
                }
                ExitCode::from(EXIT_OK)
            }
            Err(e) => read_error(e),
        },
        DecisionsCommand::Tail { lines, .. } => match sqlite::newest(&conn, *lines) {
            Ok(records) => {
                for record in records {
                    println!("{record}");
                }
                ExitCode::from(EXIT_OK)
            }
            Err(e) => read_error(e),
        },
    }
}

/// A record as indented JSON (as stored when it is not JSON).
fn print_pretty(record: &str) {
    match serde_json::from_str::<Value>(record).and_then(|v| serde_json::to_string_pretty(&v)) {
        Ok(pretty) => println!("{pretty}"),
        Err(_) => println!("{record}"),
    }
}

/// `flex-auth config reference [--markdown]`.
pub fn config_reference(markdown: bool) -> ExitCode {
    let text = if markdown {
        crate::reference::markdown()
    } else {
        crate::reference::text()
    };
    print!("{text}");
    ExitCode::from(EXIT_OK)
}

/// What a failed client request says to a person: `connection refused`, not `client error (Connect)`.
fn connect_problem(error: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is flex-auth serving there?)".to_owned()
                }
                _ => io.to_string(),
            };
        }
        source = inner.source();
    }
    error.to_string()
}
