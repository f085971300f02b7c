//! `flex-auth serve`: the composition root. It checks every flag that no waiting can fix before
//! the first log line (so a `BOOT_FAIL` is the only thing on stderr), loads the files, builds the
//! API, gate, proxy, gRPC and admin handlers, binds their listeners and drains them on SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{
    boot_fail, config_error, ADMIN_TOKEN_INVALID, EXIT_CONFIG, ROUTES_INVALID, UPSTREAM_INVALID,
};
use crate::admin::Admin;
use crate::api::{Api, ApiConfig};
use crate::audit::{AuditLog, Mode as AuditMode, Rotation};
use crate::config::{ConfigError, MetricsListener, ServeArgs};
use crate::reload::{self, ReloadConfig};
use crate::server::{shutdown_signal, Drain, Handler, Limits, Server};
use crate::state::{State, Trigger};
use crate::telemetry::Metrics;
use crate::tls::Tls;

/// How often the proxy checks that its upstream accepts connections (readiness `upstream`).
const UPSTREAM_PROBE_EVERY: Duration = Duration::from_secs(2);

/// `flex-auth serve`.
pub fn serve(args: ServeArgs) -> ExitCode {
    match run(&args) {
        Ok(exit) | Err(exit) => exit,
    }
}

fn run(args: &ServeArgs) -> Result<ExitCode, ExitCode> {
    let bundle = bundle_setup(args)?;
    let state = match &bundle {
        Some(b) => State::for_bundle(b.source.label()),
        None => State::new(file_sources(args)?),
    };
    let shadow = shadow_state(args, &state)?;
    let state = Arc::new(match &shadow {
        Some(shadow) => state.with_shadow(Arc::clone(shadow)),
        None => state,
    });
    if let Some(path) = &args.admin_token_file {
        if let Err(e) = crate::admin::read_token(path) {
            return Err(boot_fail(
                "FLEX_AUTH_ADMIN_TOKEN_FILE",
                &e.to_string(),
                ADMIN_TOKEN_INVALID,
            ));
        }
    }
    let audit = decision_log(args)?;
    let proxy_config = proxy_config(args)?;
    let tls = listener_tls(args)?;
    if bundle.is_none() {
        initial_load(args, &state)?;
    }
    if let Some(shadow) = &shadow {
        initial_shadow_load(shadow);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })?;
    let watcher = match bundle {
        Some(setup) => Some(runtime.block_on(start_bundle(args, &state, setup))?),
        None => None,
    };
    let mut api = Api::new(state.clone(), api_config(args))
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })?
        .with_audit(audit);
    if let Some(watcher) = &watcher {
        api = api.with_bundle(Arc::clone(watcher));
    }
    let (api, proxy, gate) = runtime.block_on(gate_and_proxy(args, &state, api, proxy_config))?;
    // The gRPC listener decides through the same gate; its health service reads the API's
    // readiness (every probe the API lists).
    let grpc = args.grpc.grpc_listen.and(gate).map(|gate| {
        let readiness: Arc<dyn crate::readiness::Reporter> = Arc::new(api.clone());
        crate::grpc::Grpc::new(gate, readiness, args.grpc.config())
    });
    let admin = match &args.admin_token_file {
        Some(path) => {
            let max = usize::try_from(args.admin_max_body_bytes).unwrap_or(usize::MAX);
            let metrics = args.metrics_listener != MetricsListener::Main;
            let admin = Admin::new(state.clone(), api.clone(), path.clone(), max, metrics)
                .map_err(|e| {
                    boot_fail(
                        "FLEX_AUTH_ADMIN_TOKEN_FILE",
                        &e.to_string(),
                        ADMIN_TOKEN_INVALID,
                    )
                })?;
            Some(admin)
        }
        None => None,
    };
    let exit = runtime.block_on(listen_until_stopped(
        args,
        state,
        tls,
        Handlers {
            api,
            admin,
            proxy,
            grpc,
        },
        watcher,
    ));
    // Never wait for stray blocking work past the grace: the hard cap is the point.
    runtime.shutdown_timeout(Duration::from_millis(500));
    exit
}

/// `--policy` and `--registry`/`--entities`, or the `BOOT_FAIL` that says which is missing.
fn file_sources(args: &ServeArgs) -> Result<crate::state::Sources, ExitCode> {
    match args.sources.sources() {
        Ok(s) => Ok(s),
        Err(ConfigError::Missing { flag, env }) => {
            let problem = if env == "FLEX_AUTH_POLICY" {
                "policy-missing"
            } else {
                "registry-missing"
            };
            Err(boot_fail(
                env,
                &format!("{flag} is not set (or serve a bundle with --bundle)"),
                problem,
            ))
        }
        Err(e) => Err(config_error(&e)),
    }
}

/// What `--bundle` needs before anything runs: the parsed source, the trusted keys, the
/// fetcher. Every bundle flag that no waiting can fix fails here, as a `BOOT_FAIL`.
struct BundleSetup {
    source: crate::bundle::fetch::Source,
    fetcher: crate::bundle::fetch::Fetcher,
    trust: crate::bundle::Trust,
}

fn bundle_setup(args: &ServeArgs) -> Result<Option<BundleSetup>, ExitCode> {
    let b = &args.bundle;
    let Some(url) = &b.url else {
        let stray = [
            (!b.public_keys.is_empty(), "--bundle-public-key"),
            (b.cache_dir.is_some(), "--bundle-cache-dir"),
            (b.max_staleness.is_some(), "--bundle-max-staleness"),
            (b.registry_auth.is_some(), "--bundle-registry-auth"),
            (b.ca.is_some(), "--bundle-ca"),
        ];
        if let Some((_, flag)) = stray.iter().find(|(set, _)| *set) {
            return Err(boot_fail(
                "FLEX_AUTH_BUNDLE",
                &format!("{flag} is set but --bundle is not: it would do nothing"),
                "bundle-invalid",
            ));
        }
        return Ok(None);
    };
    let fail = |setting: &str, reason: &str, problem: &str| boot_fail(setting, reason, problem);
    let source = crate::bundle::fetch::Source::parse(url, b.allow_http)
        .map_err(|e| fail("FLEX_AUTH_BUNDLE", &e, "bundle-invalid"))?;
    let trust = crate::bundle::Trust::load(&b.public_keys)
        .map_err(|e| fail("FLEX_AUTH_BUNDLE_PUBLIC_KEY", &e, "bundle-signature"))?;
    if trust.is_empty() && args.fail_fast() && !b.insecure_unsigned {
        return Err(fail(
            "FLEX_AUTH_BUNDLE_PUBLIC_KEY",
            "production mode serves only signed bundles: set --bundle-public-key (or, knowingly, --bundle-insecure-unsigned)",
            "bundle-signature",
        ));
    }
    if let Some(dir) = &b.cache_dir {
        let usable = std::fs::create_dir_all(dir).and_then(|()| {
            let probe = dir.join(".flex-auth-write-test");
            std::fs::write(&probe, b"")?;
            std::fs::remove_file(&probe)
        });
        if let Err(e) = usable {
            return Err(fail(
                "FLEX_AUTH_BUNDLE_CACHE_DIR",
                &format!("cannot write to `{}`: {e}", dir.display()),
                "bundle-io",
            ));
        }
    }
    let limits = crate::bundle::fetch::Limits {
        connect_timeout: b.connect_timeout,
        read_timeout: b.read_timeout,
        download_timeout: b.download_timeout,
        max_bytes: b.max_bytes,
    };
    let fetcher = crate::bundle::fetch::Fetcher::new(
        source.clone(),
        limits,
        b.ca.as_deref(),
        b.registry_auth.as_deref(),
        b.allow_http,
    )
    .map_err(|e| {
        let setting = if e.contains("config.json") || e.contains("auths") {
            "FLEX_AUTH_BUNDLE_REGISTRY_AUTH"
        } else {
            "FLEX_AUTH_BUNDLE_CA"
        };
        fail(setting, &e, "bundle-invalid")
    })?;
    Ok(Some(BundleSetup {
        source,
        fetcher,
        trust,
    }))
}

/// The first bundle: fetched (or taken from the cache) before anything listens. A failure is a
/// `BOOT_FAIL` in production mode; otherwise the server starts unready and the poll retries.
async fn start_bundle(
    args: &ServeArgs,
    state: &Arc<State>,
    setup: BundleSetup,
) -> Result<Arc<crate::bundle::watch::Watcher>, ExitCode> {
    if setup.trust.is_empty() {
        tracing::warn!("no --bundle-public-key: bundles are activated without a signature check");
    }
    let config = crate::bundle::watch::WatchConfig {
        poll_interval: args.bundle.poll_interval,
        max_staleness: args.bundle.max_staleness,
        cache_dir: args.bundle.cache_dir.clone(),
        max_bytes: args.bundle.max_bytes,
    };
    let watcher = Arc::new(crate::bundle::watch::Watcher::new(
        setup.fetcher,
        setup.trust,
        config,
        Arc::clone(state),
    ));
    match watcher.start().await {
        Ok(()) => Ok(watcher),
        Err(e) if args.fail_fast() => {
            let problem = state
                .last_error()
                .map_or("bundle-unreachable", |f| f.problem);
            Err(boot_fail("FLEX_AUTH_BUNDLE", &e, problem))
        }
        Err(e) => {
            tracing::error!(source = %setup.source.label(), error = %e, "no bundle could be activated; serving unready (every check answers 503) until one can");
            Ok(watcher)
        }
    }
}

/// The decision log named by `--decision-log`; a sink without a mode logs best-effort (naming a
/// sink and getting nothing would be a surprise).
fn decision_log(args: &ServeArgs) -> Result<AuditLog, ExitCode> {
    let mode = args
        .decision_log_mode
        .unwrap_or(if args.decision_log.is_some() {
            AuditMode::BestEffort
        } else {
            AuditMode::Off
        });
    match (&args.decision_log, mode) {
        (_, AuditMode::Off) => Ok(AuditLog::off()),
        (None, _) => Err(boot_fail(
            "FLEX_AUTH_DECISION_LOG",
            "--decision-log-mode is on but --decision-log names no sink",
            crate::audit::PROBLEM,
        )),
        (Some(sink), mode) => {
            let rotation = Rotation {
                max_bytes: args.decision_log_max_bytes,
                keep: args.decision_log_keep,
            };
            AuditLog::start(sink.clone(), mode, rotation)
                .map(|log| log.with_redactions(args.decision_log_redact.clone()))
                .map_err(|e| {
                    boot_fail(
                        "FLEX_AUTH_DECISION_LOG",
                        &format!("cannot open the decision log: {e}"),
                        crate::audit::PROBLEM,
                    )
                })
        }
    }
}

/// The decision listener's TLS, blaming the file that failed.
fn listener_tls(args: &ServeArgs) -> Result<Option<Arc<Tls>>, ExitCode> {
    match args.tls.settings().map(Tls::load).transpose() {
        Ok(tls) => Ok(tls.map(Arc::new)),
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
            Err(boot_fail(setting, &e.to_string(), crate::tls::PROBLEM))
        }
    }
}

/// The shadow state of `--shadow-policy`, nothing loaded yet; `None` without the flag.
fn shadow_state(args: &ServeArgs, live: &State) -> Result<Option<Arc<State>>, ExitCode> {
    let live_registry = live.sources().map(|s| &s.registry);
    match args.shadow.sources(live_registry) {
        Ok(sources) => Ok(sources.map(|sources| Arc::new(State::shadow(sources)))),
        Err(message) => Err(boot_fail(
            "FLEX_AUTH_SHADOW_POLICY",
            &message,
            "policy-missing",
        )),
    }
}

/// Load the shadow once. A failure is logged and shown in `/v1/status` under `shadow`; it never
/// stops the process or makes it unready, whatever the mode: the shadow answers nobody.
fn initial_shadow_load(shadow: &State) {
    match shadow.reload(Trigger::Startup) {
        Ok(_) => {
            if let Some(loaded) = shadow.current().as_ref() {
                let engine = &loaded.engine;
                tracing::info!(
                    package = engine.policy().name(),
                    policy_version = %engine.policy().hash(),
                    policies = engine.policy().policy_count(),
                    registry_version = %engine.registry().hash(),
                    "loaded the shadow policy package and registry: every decision is also evaluated on it"
                );
                for warning in engine.policy().warnings() {
                    tracing::warn!(%warning, "shadow policy validation warning");
                }
            }
        }
        Err(failure) => tracing::warn!(
            setting = failure.setting,
            error = %failure.message,
            "the shadow did not load; the live package is not affected, and nothing is shadowed until valid files appear"
        ),
    }
}

/// Load the files once. A failure is a `BOOT_FAIL` in production mode; otherwise the server
/// starts unready and the reload triggers keep trying.
fn initial_load(args: &ServeArgs, state: &State) -> Result<(), ExitCode> {
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
            Ok(())
        }
        Err(failure) if args.fail_fast() => Err(boot_fail(
            failure.setting,
            &failure.message,
            failure.problem,
        )),
        Err(failure) => {
            tracing::error!(
                setting = failure.setting,
                error = %failure.message,
                "load failed; serving unready (every check answers 503) until valid files appear"
            );
            Ok(())
        }
    }
}

fn api_config(args: &ServeArgs) -> ApiConfig {
    ApiConfig {
        max_body_bytes: usize::try_from(args.max_body_bytes).unwrap_or(usize::MAX),
        max_batch: usize::try_from(args.max_batch).unwrap_or(usize::MAX),
        metrics: args.metrics_listener != MetricsListener::Admin,
        authzen: crate::authzen::AuthZenConfig {
            base_url: args.authzen_base_url.clone(),
            decision_only: args.authzen_decision_only,
            properties: args.authzen_properties,
        },
    }
}

/// The handler of every listener `serve` binds (the decision API always; the others when
/// their flags ask for them).
struct Handlers {
    api: Api,
    admin: Option<Admin>,
    proxy: Option<crate::proxy::Proxy>,
    grpc: Option<crate::grpc::Grpc>,
}

/// Start the reload triggers and the signal handler, bind every listener, serve until SIGTERM or
/// SIGINT, and drain. The exit code says whether any request was cut at the grace.
async fn listen_until_stopped(
    args: &ServeArgs,
    state: Arc<State>,
    tls: Option<Arc<Tls>>,
    handlers: Handlers,
    watcher: Option<Arc<crate::bundle::watch::Watcher>>,
) -> Result<ExitCode, ExitCode> {
    let Handlers {
        api,
        admin,
        proxy,
        grpc,
    } = handlers;
    // Files reload on events, polls and SIGHUP; a bundle on its own polls and SIGHUP. A
    // shadow's files reload on the same triggers (beside a bundle, on their own).
    let _triggers = (watcher.is_none() || state.shadow_state().is_some()).then(|| {
        let reload_config = ReloadConfig {
            watch: !args.no_watch,
            poll_interval: Some(args.poll_interval).filter(|d| !d.is_zero()),
            ..ReloadConfig::default()
        };
        reload::spawn(state.clone(), &reload_config)
    });
    let _bundle_polls = watcher.as_ref().map(crate::bundle::watch::Watcher::spawn);
    let _tls_reload = tls.as_ref().map(Tls::spawn_reload);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Signal handlers first: once anything says "listening", SIGTERM means drain.
    let signalled = shutdown_signal();
    tokio::spawn(async move {
        signalled.await;
        // Readiness fails before the listeners stop accepting.
        state.begin_shutdown();
        tracing::info!("SIGTERM/SIGINT received: readiness fails, listeners stop accepting");
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let limits = args.limits();
    let metrics = api.metrics().clone();
    let cleartext_api = tls.is_none().then_some(
        "serving plain HTTP on a non-loopback address; requests and tokens travel in cleartext (set --tls-cert/--tls-key)",
    );
    let main = Listener {
        addr: args.listen,
        name: "",
        message: "listening",
        scheme: if tls.is_some() { "https" } else { "http" },
        upstream: None,
        cleartext: cleartext_api,
    };
    // The decision listener and the gRPC listener answer the same kind of question for the
    // same callers: one in-flight budget for both.
    let in_flight = crate::server::InFlightLimit::new(limits.max_in_flight);
    let api = api.with_listener(limits.clone(), tls.clone());
    let main = main
        .bind(api, &limits, &metrics, tls.clone())
        .await?
        .sharing_in_flight(in_flight.clone());
    let mut serving = Vec::new();
    if let (Some(grpc), Some(addr)) = (grpc, args.grpc.grpc_listen) {
        let listener = Listener {
            addr,
            name: " (gRPC ext_authz)",
            message: "gRPC ext_authz listening",
            scheme: if tls.is_some() { "grpcs" } else { "grpc" },
            upstream: None,
            cleartext: tls.is_none().then_some(
                "gRPC ext_authz serves without TLS on a non-loopback address; requests and tokens travel in cleartext (set --tls-cert/--tls-key)",
            ),
        };
        let grpc_limits = Limits {
            h2_max_concurrent_streams: args.grpc.grpc_max_concurrent_streams,
            ..limits.clone()
        };
        let server = listener
            .bind(grpc, &grpc_limits, &metrics, tls.clone())
            .await?
            .sharing_in_flight(in_flight);
        serving.push(tokio::spawn(server.announce().serve(stopped())));
    }
    if let Some(admin) = admin {
        let listener = Listener {
            addr: args.admin_listen,
            name: " (admin API)",
            message: "admin API listening",
            scheme: "http",
            upstream: None,
            cleartext: Some("admin API on a non-loopback address; its token travels in cleartext"),
        };
        let server = listener.bind(admin, &limits, &metrics, None).await?;
        serving.push(tokio::spawn(server.announce().serve(stopped())));
    }
    if let Some(proxy) = proxy {
        let listener = Listener {
            addr: args.proxy.proxy_listen,
            name: " (proxy)",
            message: "proxy listening",
            scheme: "http",
            upstream: Some(args.proxy.upstream.as_deref().unwrap_or("")),
            cleartext: Some(
                "proxy serves plain HTTP on a non-loopback address; bearer tokens travel in cleartext",
            ),
        };
        let server = listener.bind(proxy, &limits, &metrics, None).await?;
        serving.push(tokio::spawn(server.announce().serve(stopped())));
    }
    // The decision listener says "listening" last: by then every listener accepts.
    let mut drains = vec![main.announce().serve(stopped()).await];
    for task in serving {
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
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::error!(
            connections = cut,
            "stopped with requests cut at the shutdown grace"
        );
        Ok(ExitCode::FAILURE)
    }
}

/// One listener: where it binds, what its log line says, and the warning for cleartext off
/// loopback. The one place that binds, logs and warns, for all three listeners.
struct Listener<'a> {
    addr: SocketAddr,
    /// Appended to "cannot listen on ADDR" (e.g. ` (proxy)`).
    name: &'static str,
    /// The log line once bound; tests and scripts read the address from it.
    message: &'static str,
    scheme: &'static str,
    upstream: Option<&'a str>,
    /// Warned when the address is not loopback; `None` when the traffic is protected.
    cleartext: Option<&'static str>,
}

impl<'a> Listener<'a> {
    async fn bind<H: Handler>(
        self,
        handler: H,
        limits: &Limits,
        metrics: &Metrics,
        tls: Option<Arc<Tls>>,
    ) -> Result<Bound<'a, H>, ExitCode> {
        let server = match Server::bind(self.addr, handler, limits.clone()).await {
            Ok(server) => server.with_metrics(metrics.clone()),
            Err(e) => {
                eprintln!("error: cannot listen on {}{}: {e}", self.addr, self.name);
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        };
        let server = match tls {
            Some(tls) => server.with_tls(tls),
            None => server,
        };
        Ok(Bound {
            listener: self,
            server,
        })
    }
}

/// A bound listener not yet announced.
struct Bound<'a, H: Handler> {
    listener: Listener<'a>,
    server: Server<H>,
}

impl<H: Handler> Bound<'_, H> {
    /// Take in-flight slots from `limit`, shared with another listener.
    fn sharing_in_flight(mut self, limit: crate::server::InFlightLimit) -> Self {
        self.server = self.server.with_in_flight_limit(limit);
        self
    }

    /// Log the address (and warn about cleartext off loopback); the server is ready to serve.
    fn announce(self) -> Server<H> {
        let Listener {
            addr,
            message,
            scheme,
            upstream,
            cleartext,
            ..
        } = self.listener;
        let bound = self
            .server
            .local_addr()
            .map_or_else(|_| addr.to_string(), |a| a.to_string());
        tracing::info!(addr = %bound, scheme, upstream, "{message}");
        if let Some(warning) = cleartext.filter(|_| !addr.ip().is_loopback()) {
            tracing::warn!(addr = %bound, "{warning}");
        }
        self.server
    }
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
        if args.grpc.grpc_listen.is_some() {
            return Err(boot_fail(
                "FLEX_AUTH_GRPC_LISTEN",
                "--grpc-listen needs --routes (and --jwks or --hs256-secret-file): the gRPC ext_authz service decides through the routes",
                ROUTES_INVALID,
            ));
        }
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

/// With `--routes`: the authenticator, the gate, the forward-auth endpoints on the API, and
/// with `--upstream` the reverse proxy. Configuration that can never work is a `BOOT_FAIL` in
/// every mode; credentials that cannot be loaded yet are one in production mode, and otherwise
/// leave the server unready until they load.
async fn gate_and_proxy(
    args: &ServeArgs,
    state: &Arc<State>,
    api: Api,
    proxy_config: Option<ProxyConfig>,
) -> Result<(Api, Option<crate::proxy::Proxy>, Option<crate::gate::Gate>), ExitCode> {
    let Some((routes, upstream)) = proxy_config else {
        return Ok((api, None, None));
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
    let mut api = api.with_gate(gate.clone());
    if let Some(proxy) = &proxy {
        api = api.with_probe(proxy.spawn_probe(UPSTREAM_PROBE_EVERY));
    }
    Ok((api, proxy, Some(gate)))
}
