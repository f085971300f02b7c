//! The loaded state: one immutable [`Engine`] (policy package + registry) behind an `ArcSwap`.
//! A request takes one snapshot at its start and finishes on it; a reload builds the new engine
//! completely before it is swapped in, so a bad file never replaces a good one.
//!
//! Reloads are serialized (one at a time, whatever triggered them) and compare content hashes
//! first, so a file event that changed nothing costs a read and a hash, not a recompile.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::{ArcSwapOption, Guard};

use crate::decision::{Engine, RequestError};
use crate::hash::ContentHash;
use crate::policy::{load_package, read_package, PolicyLoadError};
use crate::registry::{parse_entities, parse_snapshot, read_registry, RegistryError};

/// Where the policy package and registry are read from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Policy package path.
    pub policy: PathBuf,
    /// Registry path and format.
    pub registry: RegistrySource,
}

/// A registry file and its format.
#[derive(Debug, Clone)]
pub enum RegistrySource {
    /// An actor-model registry snapshot.
    Snapshot(PathBuf),
    /// A raw Cedar entities JSON file.
    Entities(PathBuf),
}

impl RegistrySource {
    /// The file path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Snapshot(p) | Self::Entities(p) => p,
        }
    }

    /// The environment variable that names this source.
    pub fn setting(&self) -> &'static str {
        match self {
            Self::Snapshot(_) => "FLEX_AUTH_REGISTRY",
            Self::Entities(_) => "FLEX_AUTH_ENTITIES",
        }
    }
}

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The policy package is bad.
    #[error("policy package: {0}")]
    Policy(#[from] PolicyLoadError),
    /// The registry is bad.
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    /// The two do not make an engine.
    #[error("engine: {0}")]
    Engine(#[from] RequestError),
    /// A bundle was refused before (or while) its files were loaded.
    #[error("{message}")]
    Bundle {
        /// What was wrong, naming files as `bundle:PATH`.
        message: String,
        /// The runbook anchor (`bundle-invalid`, `bundle-signature`, …).
        problem: &'static str,
    },
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The first load at start-up.
    Startup,
    /// A file-system event on a watched path.
    Watch,
    /// The polling fallback.
    Poll,
    /// `SIGHUP`.
    Signal,
    /// The admin API (`POST /v1/admin/reload`, `PUT /v1/admin/registry`).
    Admin,
    /// A bundle poll found a new bundle (`serve --bundle`).
    Bundle,
}

impl Trigger {
    const ALL: [Self; 6] = [
        Self::Startup,
        Self::Watch,
        Self::Poll,
        Self::Signal,
        Self::Admin,
        Self::Bundle,
    ];

    /// Stable lower-case name, as shown in `/v1/status` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Watch => "watch",
            Self::Poll => "poll",
            Self::Signal => "sighup",
            Self::Admin => "admin",
            Self::Bundle => "bundle",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Startup => 0,
            Self::Watch => 1,
            Self::Poll => 2,
            Self::Signal => 3,
            Self::Admin => 4,
            Self::Bundle => 5,
        }
    }
}

/// What a successful reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new engine is in force.
    Loaded,
    /// The files hash the same as what is loaded; nothing was rebuilt.
    Unchanged,
}

/// A failed reload, kept for `/readyz` and `/v1/status`.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    /// The error, as a user would read it (file, line, field).
    pub message: String,
    /// The setting at fault, e.g. `FLEX_AUTH_REGISTRY`.
    pub setting: &'static str,
    /// What kind of problem, e.g. `registry-invalid`: the `docs/runbook.md` anchor.
    pub problem: &'static str,
    /// When it failed.
    pub at: SystemTime,
    /// What triggered the attempt.
    pub trigger: Trigger,
}

/// An engine, when it was loaded and why.
#[derive(Debug)]
pub struct Loaded {
    /// The engine.
    pub engine: Engine,
    /// When it was swapped in.
    pub loaded_at: SystemTime,
    /// What triggered the load.
    pub trigger: Trigger,
    /// How long reading, validating and compiling took.
    pub load_duration: std::time::Duration,
}

/// Reload counts by trigger and result.
#[derive(Debug, Default)]
pub struct ReloadCounters {
    counts: [[AtomicU64; 3]; 6],
}

/// One trigger's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TriggerCounts {
    /// Reloads that installed a new engine.
    pub loaded: u64,
    /// Reloads that found nothing changed.
    pub unchanged: u64,
    /// Reloads that failed (the previous engine stayed).
    pub failed: u64,
}

impl ReloadCounters {
    fn record(&self, trigger: Trigger, result: usize) {
        if let Some(slot) = self
            .counts
            .get(trigger.index())
            .and_then(|row| row.get(result))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts for every trigger, in a fixed order.
    pub fn snapshot(&self) -> Vec<(&'static str, TriggerCounts)> {
        Trigger::ALL
            .iter()
            .map(|t| {
                let get = |i: usize| {
                    self.counts
                        .get(t.index())
                        .and_then(|row| row.get(i))
                        .map_or(0, |c| c.load(Ordering::Relaxed))
                };
                (
                    t.as_str(),
                    TriggerCounts {
                        loaded: get(0),
                        unchanged: get(1),
                        failed: get(2),
                    },
                )
            })
            .collect()
    }
}

/// Load and compile the policy package and the registry (validated against the package's
/// schema) into an engine. Does not touch any running state.
pub fn load(sources: &Sources) -> Result<Engine, LoadError> {
    let package = load_package(&sources.policy)?;
    let started = Instant::now();
    let bytes = read_registry(sources.registry.path())?;
    build(sources, package, &bytes, started.elapsed())
}

/// Load the policy package from its path and the registry from `bytes` already read (a
/// bundle's), named `origin` in messages; the registry's path in `sources` only says its format.
pub fn load_with_registry(
    sources: &Sources,
    bytes: &[u8],
    origin: &str,
) -> Result<Engine, LoadError> {
    let package = load_package(&sources.policy)?;
    build_named(sources, package, bytes, std::time::Duration::ZERO, origin)
}

fn build(
    sources: &Sources,
    package: crate::policy::PolicyPackage,
    bytes: &[u8],
    read: std::time::Duration,
) -> Result<Engine, LoadError> {
    let origin = sources.registry.path().display().to_string();
    build_named(sources, package, bytes, read, &origin)
}

fn build_named(
    sources: &Sources,
    package: crate::policy::PolicyPackage,
    bytes: &[u8],
    read: std::time::Duration,
    origin: &str,
) -> Result<Engine, LoadError> {
    let registry = match &sources.registry {
        RegistrySource::Snapshot(_) => parse_snapshot(bytes, origin, package.schema())?,
        RegistrySource::Entities(_) => parse_entities(bytes, origin, package.schema())?,
    };
    Ok(Engine::new(package, registry.with_read_time(read))?)
}

/// Every `problem` a [`ReloadFailure`] can carry, plus `not-loaded`; each is an anchor in
/// `docs/runbook.md`, and `BOOT_FAIL` lines print them prefixed with `boot-`.
pub const PROBLEMS: [&str; 9] = [
    "policy-missing",
    "policy-invalid",
    "registry-missing",
    "registry-invalid",
    "not-loaded",
    "bundle-invalid",
    "bundle-signature",
    "bundle-unreachable",
    "bundle-io",
];

fn problem_of(e: &LoadError) -> &'static str {
    let missing = |source: &std::io::Error| source.kind() == std::io::ErrorKind::NotFound;
    match e {
        LoadError::Policy(PolicyLoadError::Io { source, .. }) if missing(source) => {
            "policy-missing"
        }
        LoadError::Policy(_) => "policy-invalid",
        LoadError::Registry(RegistryError::Io { source, .. }) if missing(source) => {
            "registry-missing"
        }
        LoadError::Registry(_) | LoadError::Engine(_) => "registry-invalid",
        LoadError::Bundle { problem, .. } => problem,
    }
}

/// Free a replaced engine on this (reload) thread. Freeing a large registry takes hundreds of
/// milliseconds; if the last request still holding it freed it instead, that request's worker
/// would stall every request queued behind it. Requests hold the engine only while deciding, so
/// the wait is short; it is bounded all the same, and past it the engine is handed to a thread
/// of its own.
fn drop_off_the_request_path(old: Arc<Loaded>) {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let deadline = Instant::now() + WAIT;
    while Arc::strong_count(&old) > 1 {
        if Instant::now() >= deadline {
            let spawned = std::thread::Builder::new()
                .name("flex-auth-drop".to_owned())
                .spawn(move || {
                    let mut old = old;
                    // Still shared: wait (unbounded, off every request path) until it is ours.
                    loop {
                        match Arc::try_unwrap(old) {
                            Ok(loaded) => {
                                drop(loaded);
                                return;
                            }
                            Err(shared) => old = shared,
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot spawn a thread to free the previous engine");
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(old);
}

/// Run a load on a thread of its own that ends with it, then have the allocator collect once
/// its purge delay has passed. A load allocates and frees several times the registry's final
/// size (the file, one actor's JSON at a time, Cedar's form of a batch) and the swap frees the
/// previous registry. mimalloc, the binary's allocator, gives freed memory back to the OS only
/// when it is freed by (or the thread that held it exits) *and* a later collection finds its
/// purge delay (1 s) passed — which an idle server never asks for: 145 MiB stayed resident
/// for 100,000 actors where 62 are live (`docs/benchmarks.md`, "Compact registry"). So the
/// load's thread exits when the load is done, and a short-lived thread exits after the delay;
/// a thread's exit is such a collection. Nobody waits for the second thread. With another
/// allocator this costs two thread starts per load. Runs `f` here when no thread can be started.
fn on_own_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    off_the_request_path(f)
}

/// Run a load as reloads run (see [`State::reload`]): on a thread of its own at a lower
/// priority, its memory handed back when it ends. For loads built outside the state (bundles).
pub fn off_the_request_path<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    /// mimalloc's default purge delay, plus margin.
    const PURGE_AFTER: std::time::Duration = std::time::Duration::from_millis(1_200);
    let mut job = Some(f);
    let ran = std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("flex-auth-load".to_owned())
            .spawn_scoped(scope, || {
                lower_priority();
                job.take().map(|f| f())
            });
        match spawned {
            Ok(handle) => Some(handle.join()),
            Err(_) => None,
        }
    });
    let result = match ran {
        Some(Ok(Some(result))) => result,
        // The load panicked: carry on unwinding, as if it had run here.
        Some(Err(payload)) => std::panic::resume_unwind(payload),
        Some(Ok(None)) | None => match job.take() {
            Some(f) => f(),
            None => std::panic::resume_unwind(Box::new("the load thread ended without running")),
        },
    };
    let collector = std::thread::Builder::new()
        .name("flex-auth-collect".to_owned())
        .spawn(|| {
            // An allocation of its own, so that the allocator knows this thread and collects
            // when it exits.
            let own = std::hint::black_box(vec![0u8; 64]);
            std::thread::sleep(PURGE_AFTER);
            drop(own);
        });
    if let Err(e) = collector {
        tracing::debug!(error = %e, "cannot start the thread that returns a load's memory");
    }
    result
}

/// How much lower than the request path a load runs (Linux nice steps). Measured with
/// `scripts/reload-latency.sh` (docs/benchmarks.md): 10 keeps p99 during reloads within 1.5× of
/// steady with the cores shared, and a reload on a saturated core still finishes in seconds
/// (19 starved it: no reload completed in 12 s of full load on one core).
const LOAD_NICE: i32 = 10;

/// Lower the calling thread's scheduling priority, so that a reload gives way to requests on
/// a busy core. Linux only (elsewhere `setpriority` is per process); failure is harmless.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // Relative to the thread's own (an operator may run the whole process niced); never
        // above 19, never a higher priority than the requests'.
        let lowered = rustix::process::getpriority_process(None)
            .and_then(|now| rustix::process::setpriority_process(None, (now + LOAD_NICE).min(19)));
        if let Err(e) = lowered {
            tracing::debug!(error = %e, "cannot lower the load thread's priority");
        }
    }
}

/// Readiness check name and runbook anchor while the process drains after SIGTERM.
pub const SHUTTING_DOWN: &str = "shutting-down";

/// The `shutdown` readiness check: fails from SIGTERM on, so that load balancers stop sending
/// before the listeners stop accepting.
impl crate::readiness::Probe for State {
    fn name(&self) -> &'static str {
        "shutdown"
    }

    fn problem(&self) -> &'static str {
        SHUTTING_DOWN
    }

    fn check(&self) -> Result<(), String> {
        if self.shutting_down() {
            Err(
                "shutting down: in-flight requests are draining, send new ones elsewhere"
                    .to_owned(),
            )
        } else {
            Ok(())
        }
    }
}

/// The server's state: the engine in force (if any), the last reload failure, counters.
#[derive(Debug)]
pub struct State {
    origin: Origin,
    current: ArcSwapOption<Loaded>,
    last_error: ArcSwapOption<ReloadFailure>,
    /// Hashes of the policy package and registry as last read from disk. A reload compares
    /// against these, not against the engine in force, so a registry pushed into memory through
    /// the admin API stays until the file on disk actually changes.
    reload_lock: Mutex<Option<(ContentHash, ContentHash)>>,
    counters: ReloadCounters,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Engines built from disk (package parsed and validated, registry compiled).
    builds: AtomicU64,
    /// Nanoseconds the last swap took to publish the new engine.
    last_swap_nanos: AtomicU64,
    /// Decisions are refused (`bundle_stale`) once `epoch.elapsed()` passes this many
    /// nanoseconds; `u64::MAX`: never (no `--bundle-max-staleness`).
    fresh_until_nanos: AtomicU64,
    /// When the state was made; `fresh_until_nanos` counts from it.
    epoch: Instant,
    /// Whether this is the package in force or a shadow beside it.
    role: Role,
    /// The shadow evaluated beside this (live) state, when `serve --shadow-policy` is set.
    shadow: Option<Arc<State>>,
}

/// What a state's engine is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The package that answers.
    Live,
    /// A candidate evaluated beside the live package (`serve --shadow-policy`); its answers are
    /// recorded and counted, never given, and its failures never touch readiness.
    Shadow,
}

/// Where a state's engines come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// Files on disk, re-read by [`State::reload`].
    Files(Sources),
    /// A bundle (`serve --bundle URL`): engines are built by `bundle::watch` and handed to
    /// [`State::install`]; there are no files to re-read.
    Bundle {
        /// The bundle's URL or path, as configured (never with credentials).
        url: String,
    },
}

impl State {
    /// A state with nothing loaded yet, reading `sources`.
    pub fn new(sources: Sources) -> Self {
        Self::with_origin(Origin::Files(sources))
    }

    /// A state with nothing loaded yet, fed by bundles from `url`.
    pub fn for_bundle(url: String) -> Self {
        Self::with_origin(Origin::Bundle { url })
    }

    /// A shadow state (nothing loaded yet) reading `sources`: reloaded like a live one, its
    /// failures reported under the `FLEX_AUTH_SHADOW_*` settings.
    pub fn shadow(sources: Sources) -> Self {
        Self {
            role: Role::Shadow,
            ..Self::with_origin(Origin::Files(sources))
        }
    }

    /// This (live) state with `shadow` evaluated beside it.
    #[must_use]
    pub fn with_shadow(mut self, shadow: Arc<State>) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// The shadow beside this state, when one is configured.
    pub fn shadow_state(&self) -> Option<&Arc<State>> {
        self.shadow.as_ref()
    }

    /// Whether this state answers or shadows.
    pub fn role(&self) -> Role {
        self.role
    }

    fn with_origin(origin: Origin) -> Self {
        Self {
            origin,
            current: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
            reload_lock: Mutex::new(None),
            counters: ReloadCounters::default(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            builds: AtomicU64::new(0),
            last_swap_nanos: AtomicU64::new(0),
            fresh_until_nanos: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            role: Role::Live,
            shadow: None,
        }
    }

    /// How long the last swap took to publish its engine (the load's last phase; reading,
    /// parsing and compiling are in [`crate::registry::Registry::phases`]).
    pub fn last_swap(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.last_swap_nanos.load(Ordering::Relaxed))
    }

    /// How many times a reload from disk parsed, validated and compiled the sources. A reload
    /// whose files hash as the ones loaded reads and hashes them only, so this does not move.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// Mark the process as shutting down: readiness fails from now on.
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The files the state is loaded from; `None` when it serves a bundle.
    pub fn sources(&self) -> Option<&Sources> {
        match &self.origin {
            Origin::Files(sources) => Some(sources),
            Origin::Bundle { .. } => None,
        }
    }

    /// Where the state's engines come from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Read the sources; when their content differs from what is loaded, build a new engine
    /// and swap it in. On failure the engine in force stays and the failure is remembered.
    /// Blocking (file I/O and compilation): call it off the async runtime's worker threads.
    pub fn reload(&self, trigger: Trigger) -> Result<ReloadOutcome, Arc<ReloadFailure>> {
        on_own_thread(|| self.reload_here(trigger))
    }

    fn reload_here(&self, trigger: Trigger) -> Result<ReloadOutcome, Arc<ReloadFailure>> {
        let Origin::Files(sources) = &self.origin else {
            // Nothing to re-read: a bundle's watcher owns its reloads (admin and SIGHUP ask it).
            return Err(Arc::new(ReloadFailure {
                message: "this instance serves a bundle; there are no files to reload".to_owned(),
                setting: "FLEX_AUTH_BUNDLE",
                problem: "bundle-invalid",
                at: SystemTime::now(),
                trigger,
            }));
        };
        // A poisoned lock only means another reload panicked; the state itself is an ArcSwap
        // and is never left half-written, so carry on.
        let mut disk = self
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = Instant::now();
        let result = (|| {
            // Hash the raw bytes first: an unchanged poll reads the files and stops, without
            // parsing or validating a package it already serves.
            let read_started = Instant::now();
            let raw = read_package(&sources.policy)?;
            let bytes = read_registry(sources.registry.path())?;
            let read = read_started.elapsed();
            let hashes = (raw.hash(), ContentHash::of_bytes(&bytes));
            if self.current.load().is_some() && disk.as_ref() == Some(&hashes) {
                return Ok(None);
            }
            self.builds.fetch_add(1, Ordering::Relaxed);
            let engine = build(sources, raw.build()?, &bytes, read)?;
            *disk = Some(hashes);
            Ok(Some(engine))
        })();
        self.finish(trigger, started, result)
    }

    /// Validate a pushed registry (in the source's format) against the policy package in force
    /// and swap it in, without touching the files. Blocking.
    pub fn install_registry(&self, bytes: &[u8], origin: &str) -> Result<(), Arc<ReloadFailure>> {
        on_own_thread(|| self.install_registry_here(bytes, origin))
    }

    fn install_registry_here(&self, bytes: &[u8], origin: &str) -> Result<(), Arc<ReloadFailure>> {
        let Origin::Files(sources) = &self.origin else {
            return Err(Arc::new(ReloadFailure {
                message: "this instance serves a bundle: a registry arrives only inside a bundle (signed, when keys are configured), never by push".to_owned(),
                setting: "FLEX_AUTH_BUNDLE",
                problem: "bundle-invalid",
                at: SystemTime::now(),
                trigger: Trigger::Admin,
            }));
        };
        let _serialized = self
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let started = Instant::now();
        let in_force = self.current();
        let result = (|| {
            // Validated and compiled against the package in force — not a re-read of the policy
            // path, which may hold a newer (or broken) package that has not been loaded.
            let registry_for = |package: &crate::policy::PolicyPackage| match &sources.registry {
                RegistrySource::Snapshot(_) => parse_snapshot(bytes, origin, package.schema()),
                RegistrySource::Entities(_) => parse_entities(bytes, origin, package.schema()),
            };
            let engine = match in_force.as_ref() {
                Some(loaded) => {
                    let registry = registry_for(loaded.engine.policy())?;
                    loaded.engine.with_registry(registry)?
                }
                // Nothing loaded yet: the package on disk is the only one there is.
                None => {
                    let package = load_package(&sources.policy)?;
                    let registry = registry_for(&package)?;
                    Engine::new(package, registry)?
                }
            };
            Ok(Some(engine))
        })();
        // Let go of the engine in force before it is replaced: its successor is freed only once
        // nobody holds it (see `drop_off_the_request_path`), and we would be the one waiting.
        drop(in_force);
        match result {
            Ok(_) => self.finish(Trigger::Admin, started, result).map(|_| ()),
            // A rejected push is the pusher's error, answered to them; the running state is as
            // good as before, so readiness does not degrade.
            Err(e) => {
                self.counters.record(Trigger::Admin, 2);
                Err(Arc::new(self.failure(&e, Trigger::Admin)))
            }
        }
    }

    /// Swap in an engine built elsewhere (a bundle's), or remember why none could be built:
    /// the same bookkeeping, counters and error state as a reload from files. Blocking only for
    /// as long as another reload holds the lock, and for freeing the replaced engine.
    pub fn install(
        &self,
        trigger: Trigger,
        started: Instant,
        result: Result<Engine, LoadError>,
    ) -> Result<ReloadOutcome, Arc<ReloadFailure>> {
        let _serialized = self
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.finish(trigger, started, result.map(Some))
    }

    /// Record that the source answered with what is already in force (a bundle poll that
    /// found nothing new): the last error clears, as for an unchanged file reload.
    pub fn unchanged(&self, trigger: Trigger) {
        let _serialized = self
            .reload_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.current.load().is_some() {
            let _ = self.finish(trigger, Instant::now(), Ok(None));
        }
    }

    fn store(&self, engine: Engine, trigger: Trigger, started: Instant) {
        let loaded = Arc::new(Loaded {
            engine,
            loaded_at: SystemTime::now(),
            trigger,
            load_duration: started.elapsed(),
        });
        let swap_started = Instant::now();
        let old = self.current.swap(Some(loaded));
        let swap = u64::try_from(swap_started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_swap_nanos.store(swap, Ordering::Relaxed);
        if let Some(old) = old {
            drop_off_the_request_path(old);
        }
    }

    /// Count the result and update the last error, then publish a new engine: anyone who sees
    /// the new engine also sees the counters and error state that go with it.
    fn finish(
        &self,
        trigger: Trigger,
        started: Instant,
        result: Result<Option<Engine>, LoadError>,
    ) -> Result<ReloadOutcome, Arc<ReloadFailure>> {
        match result {
            Ok(engine) => {
                let outcome = if engine.is_some() {
                    ReloadOutcome::Loaded
                } else {
                    ReloadOutcome::Unchanged
                };
                let slot = if outcome == ReloadOutcome::Loaded {
                    0
                } else {
                    1
                };
                self.counters.record(trigger, slot);
                self.last_error.store(None);
                if let Some(engine) = engine {
                    self.store(engine, trigger, started);
                }
                Ok(outcome)
            }
            Err(e) => {
                self.counters.record(trigger, 2);
                let failure = Arc::new(self.failure(&e, trigger));
                self.last_error.store(Some(failure.clone()));
                Err(failure)
            }
        }
    }

    fn failure(&self, e: &LoadError, trigger: Trigger) -> ReloadFailure {
        if self.role == Role::Shadow {
            return ReloadFailure {
                setting: match (e, &self.origin) {
                    (LoadError::Registry(_) | LoadError::Engine(_), Origin::Files(sources)) => {
                        match sources.registry {
                            RegistrySource::Snapshot(_) => "FLEX_AUTH_SHADOW_REGISTRY",
                            RegistrySource::Entities(_) => "FLEX_AUTH_SHADOW_ENTITIES",
                        }
                    }
                    _ => "FLEX_AUTH_SHADOW_POLICY",
                },
                problem: problem_of(e),
                message: e.to_string(),
                at: SystemTime::now(),
                trigger,
            };
        }
        ReloadFailure {
            setting: match (e, &self.origin) {
                (LoadError::Bundle { .. }, _) | (_, Origin::Bundle { .. }) => "FLEX_AUTH_BUNDLE",
                (LoadError::Policy(_), _) => "FLEX_AUTH_POLICY",
                (LoadError::Registry(_) | LoadError::Engine(_), Origin::Files(sources)) => {
                    sources.registry.setting()
                }
            },
            problem: problem_of(e),
            message: e.to_string(),
            at: SystemTime::now(),
            trigger,
        }
    }

    /// Refuse decisions after `until` (a bundle source not reached for `--bundle-max-staleness`);
    /// `None`: never refuse.
    pub fn set_fresh_until(&self, until: Option<Instant>) {
        let nanos = until.map_or(u64::MAX, |at| {
            u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
                .unwrap_or(u64::MAX - 1)
        });
        self.fresh_until_nanos.store(nanos, Ordering::Release);
    }

    /// How far past its freshness deadline the state is, when it is: decisions answer 503
    /// `bundle_stale`. One atomic load (and a clock read only when a deadline is set).
    pub fn stale(&self) -> Option<std::time::Duration> {
        let until = self.fresh_until_nanos.load(Ordering::Acquire);
        if until == u64::MAX {
            return None;
        }
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        (now > until).then(|| std::time::Duration::from_nanos(now - until))
    }

    /// The engine in force, for one request. One atomic load; no lock.
    pub fn current(&self) -> Guard<Option<Arc<Loaded>>> {
        self.current.load()
    }

    /// The last reload failure, while the most recent reload attempt failed.
    pub fn last_error(&self) -> Option<Arc<ReloadFailure>> {
        self.last_error.load_full()
    }

    /// Reload counts by trigger and result.
    pub fn counters(&self) -> &ReloadCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn a_load_runs_below_the_request_path_and_leaves_other_threads_alone() {
        let here = rustix::process::getpriority_process(None).unwrap();
        let inside = on_own_thread(|| rustix::process::getpriority_process(None).unwrap());
        assert_eq!(inside, (here + LOAD_NICE).min(19));
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), here);
    }
}
