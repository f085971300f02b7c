//! What makes the server reload: file-system events on the directories that hold the policy
//! package and the registry (Kubernetes ConfigMap `..data` symlink swaps and editors that
//! replace files by rename included), a polling fallback for file systems that emit no events,
//! and `SIGHUP`. Every trigger ends in [`State::reload`], run on the blocking pool; the state
//! compares content hashes, so a burst of events that changed nothing rebuilds nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::state::{ReloadOutcome, Role, State, Trigger};

/// How reloads are triggered.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// Watch the source directories for changes.
    pub watch: bool,
    /// How long file events must be quiet before a reload (bursts become one reload).
    pub debounce: Duration,
    /// Re-read the sources this often; `None` disables polling.
    pub poll_interval: Option<Duration>,
    /// Reload on `SIGHUP`.
    pub sighup: bool,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            debounce: Duration::from_millis(200),
            poll_interval: Some(Duration::from_secs(10)),
            sighup: true,
        }
    }
}

/// The running triggers; dropping it stops them.
#[derive(Debug)]
pub struct ReloadTasks {
    tasks: Vec<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Drop for ReloadTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reload once on the blocking pool and log what happened: the state, then the shadow beside
/// it (if any). A shadow's failure is logged and kept for `/v1/status`; it touches nothing live.
pub async fn reload_now(state: Arc<State>, trigger: Trigger) {
    let shadow = state.shadow_state().cloned();
    if state.sources().is_some() {
        reload_one(state, trigger).await;
    }
    if let Some(shadow) = shadow {
        reload_one(shadow, trigger).await;
    }
}

async fn reload_one(state: Arc<State>, trigger: Trigger) {
    let result = tokio::task::spawn_blocking(move || {
        let result = state.reload(trigger);
        (result, state)
    })
    .await;
    match result {
        Ok((Ok(ReloadOutcome::Loaded), state)) if state.role() == Role::Shadow => {
            if let Some(loaded) = state.current().as_ref() {
                let engine = &loaded.engine;
                tracing::info!(
                    trigger = trigger.as_str(),
                    package = engine.policy().name(),
                    policy_version = %engine.policy().hash(),
                    registry_version = %engine.registry().hash(),
                    "reloaded the shadow policy package and registry"
                );
            }
        }
        Ok((Err(failure), state)) if state.role() == Role::Shadow => {
            tracing::warn!(
                trigger = trigger.as_str(),
                setting = failure.setting,
                error = %failure.message,
                "shadow reload failed; the live package is not affected{}",
                if state.current().is_some() { " and the previous shadow keeps being evaluated" } else { ", and nothing is shadowed until valid files appear" }
            );
        }
        Ok((Ok(ReloadOutcome::Loaded), state)) => {
            if let Some(loaded) = state.current().as_ref() {
                let engine = &loaded.engine;
                tracing::info!(
                    trigger = trigger.as_str(),
                    package = engine.policy().name(),
                    policy_version = %engine.policy().hash(),
                    registry_version = %engine.registry().hash(),
                    entities = engine.registry().entity_count(),
                    load_ms = loaded.load_duration.as_millis() as u64,
                    "reloaded policy package and registry"
                );
            }
        }
        Ok((Ok(ReloadOutcome::Unchanged), _)) => {
            tracing::debug!(trigger = trigger.as_str(), "sources unchanged");
        }
        Ok((Err(failure), state)) => {
            if state.current().is_some() {
                tracing::warn!(
                    trigger = trigger.as_str(),
                    setting = failure.setting,
                    error = %failure.message,
                    "reload failed; the previous version keeps serving"
                );
            } else {
                tracing::warn!(
                    trigger = trigger.as_str(),
                    setting = failure.setting,
                    error = %failure.message,
                    "load failed; nothing is loaded yet, so every check answers 503 until valid files appear"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "reload task failed"),
    }
}

/// Start the configured triggers. Must be called inside a Tokio runtime.
pub fn spawn(state: Arc<State>, config: &ReloadConfig) -> ReloadTasks {
    let mut tasks = Vec::new();
    if let Some(interval) = config.poll_interval.filter(|d| !d.is_zero()) {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate; start-up already loaded
            loop {
                ticks.tick().await;
                reload_now(state.clone(), Trigger::Poll).await;
            }
        }));
    }
    if config.sighup {
        if let Some(task) = spawn_sighup(state.clone()) {
            tasks.push(task);
        }
    }
    let watcher = if config.watch {
        let (tx, rx) = mpsc::channel::<()>(1);
        match start_watcher(&watched_dirs(&state), tx) {
            Some(watcher) => {
                tasks.push(tokio::spawn(debounce_events(state, rx, config.debounce)));
                Some(watcher)
            }
            None => None,
        }
    } else {
        None
    };
    ReloadTasks {
        tasks,
        _watcher: watcher,
    }
}

#[cfg(unix)]
fn spawn_sighup(state: Arc<State>) -> Option<JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => Some(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reload_now(state.clone(), Trigger::Signal).await;
            }
        })),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    }
}

#[cfg(not(unix))]
fn spawn_sighup(_: Arc<State>) -> Option<JoinHandle<()>> {
    None
}

/// The directories whose entries decide what the sources read: each file's parent, and a
/// directory package itself (a ConfigMap mounted there swaps `..data` inside it).
fn watched_dirs(state: &State) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    let shadow = state.shadow_state().and_then(|s| s.sources());
    for sources in state.sources().into_iter().chain(shadow) {
        add_dirs(sources, &mut dirs);
    }
    dirs
}

fn add_dirs(sources: &crate::state::Sources, dirs: &mut BTreeSet<PathBuf>) {
    let mut add_parent = |path: &Path| {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        dirs.insert(parent);
    };
    add_parent(&sources.policy);
    add_parent(sources.registry.path());
    if sources.policy.is_dir() {
        dirs.insert(sources.policy.clone());
    }
}

fn start_watcher(
    dirs: &BTreeSet<PathBuf>,
    tx: mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        // Every event is only a hint to re-read; a full channel already holds one. An error
        // (such as an overflowed event queue) may hide changes, so it also means "re-read".
        if event.map_or(true, |e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; relying on polling and SIGHUP");
            return None;
        }
    };
    let mut watching = 0;
    for dir in dirs {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => watching += 1,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on polling and SIGHUP for it")
            }
        }
    }
    (watching > 0).then_some(watcher)
}

async fn debounce_events(state: Arc<State>, mut events: mpsc::Receiver<()>, quiet: Duration) {
    while events.recv().await.is_some() {
        // Wait until events stop for `quiet`; bounded so a never-ending stream still reloads.
        let deadline = tokio::time::Instant::now() + quiet * 10;
        loop {
            tokio::select! {
                more = events.recv() => if more.is_none() { return },
                () = tokio::time::sleep(quiet) => break,
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        reload_now(state.clone(), Trigger::Watch).await;
    }
}
