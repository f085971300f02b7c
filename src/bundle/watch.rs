//! Serving from a bundle: the first fetch at start-up (falling back to the cached last good
//! bundle when the source cannot be reached), polling with jitter and exponential backoff,
//! activation through [`State::install`] (so a bundle that fails any check leaves the last
//! good engine in force, with the same `last_reload_error` and readiness as files), the cache,
//! the staleness deadline, and the `bundle` readiness check, status and metrics.
//!
//! A poll sends the validator of the bundle last seen (`If-None-Match`, the OCI manifest
//! digest, a file's sha256): an unchanged source costs one small request and nothing else. A
//! bundle that was refused is remembered by its digest, so it is not downloaded and checked
//! again until the source serves another one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::fetch::{Fetched, Fetcher};
use super::{open, write_atomically, SignatureStatus, Trust};
use crate::state::{LoadError, State, Trigger};

/// The cached archive's name in `--bundle-cache-dir`.
pub const CACHE_ARCHIVE: &str = "bundle.tar.gz";
/// The cached archive's description.
pub const CACHE_META: &str = "bundle.json";
/// The readiness check's name.
pub const CHECK: &str = "bundle";
/// Longest wait between two polls after failures (unless the poll interval is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How a watcher runs.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Between two polls (±10 % jitter).
    pub poll_interval: Duration,
    /// Refuse decisions when no check succeeded for this long.
    pub max_staleness: Option<Duration>,
    /// Where the last activated bundle is kept.
    pub cache_dir: Option<PathBuf>,
    /// Largest unpacked size.
    pub max_bytes: u64,
}

/// Check results, as counted (`flex_auth_bundle_checks_total{result}`).
pub const RESULTS: [&str; 4] = ["updated", "unchanged", "rejected", "failed"];

/// The bundle in force.
#[derive(Debug, Clone, Serialize)]
pub struct Active {
    /// The manifest's revision.
    pub revision: String,
    /// sha256 of the archive.
    pub digest: String,
    /// The verified signing key, when keys are configured.
    pub kid: Option<String>,
    /// The manifest's creation time.
    pub created: String,
    /// The package's name.
    pub package: String,
}

#[derive(Debug, Clone)]
struct Seen {
    validator: Option<String>,
    digest: String,
    accepted: bool,
}

#[derive(Debug, Default)]
struct Status {
    last_check: Option<SystemTime>,
    last_success: Option<SystemTime>,
    last_change: Option<SystemTime>,
    last_error: Option<String>,
    consecutive_failures: u32,
    active: Option<Active>,
    seen: Option<Seen>,
    /// The bundle in force came from the cache and the source has not confirmed it since.
    from_cache: bool,
    /// When the cache's description was last written.
    meta_written: Option<Instant>,
}

/// What the cache directory says about the archive beside it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheMeta {
    source: String,
    validator: Option<String>,
    digest: String,
    revision: String,
    /// The last successful check of the source (RFC 3339).
    checked_at: String,
}

/// Watches one bundle source for one state.
pub struct Watcher {
    fetcher: Fetcher,
    trust: Arc<Trust>,
    config: WatchConfig,
    state: Arc<State>,
    status: Arc<Mutex<Status>>,
    checks: Arc<[AtomicU64; 4]>,
    /// One check at a time (poll, SIGHUP, admin).
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("source", &self.fetcher.source())
            .finish_non_exhaustive()
    }
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// A new bundle is in force.
    Updated(String),
    /// The source serves what is in force (or the bundle already refused).
    Unchanged,
}

impl Watcher {
    /// A watcher; nothing is fetched until [`Watcher::start`].
    pub fn new(fetcher: Fetcher, trust: Trust, config: WatchConfig, state: Arc<State>) -> Self {
        Self {
            fetcher,
            trust: Arc::new(trust),
            config,
            state,
            status: Arc::new(Mutex::new(Status::default())),
            checks: Arc::new(Default::default()),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        lock(&self.status)
    }

    fn count(&self, result: usize) {
        if let Some(c) = self.checks.get(result) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The first load: fetch (conditionally on the cached bundle, when there is one); when the
    /// source cannot be reached or serves a bundle that is refused, activate the cached one.
    /// Returns the error when nothing could be activated.
    pub async fn start(&self) -> Result<(), String> {
        self.remove_leftovers().await;
        let cached = self.read_cache().await;
        if let Some(meta) = &cached {
            self.set_deadline_from(&meta.1.checked_at);
        } else {
            self.state
                .set_fresh_until(self.config.max_staleness.map(|d| Instant::now() + d));
        }
        let first = self
            .check_with(
                Trigger::Startup,
                cached.as_ref().and_then(|(_, m)| m.validator.clone()),
                cached.as_ref().map(|(b, _)| b.clone()),
            )
            .await;
        if self.state.current().is_some() {
            return Ok(());
        }
        let error = match first {
            Err(e) => e,
            Ok(_) => "the source answered, but nothing could be activated".to_owned(),
        };
        let Some((bytes, meta)) = cached else {
            return Err(error);
        };
        tracing::warn!(source = %self.fetcher.source().label(), error = %error, revision = %meta.revision, "bundle source unavailable at start-up; activating the cached bundle");
        match self
            // Not a successful check: the staleness deadline still counts from the cached one.
            .activate(bytes, meta.validator.clone(), Trigger::Startup, false)
            .await
        {
            Ok(revision) => {
                let mut status = self.status();
                status.from_cache = true;
                status.last_error = Some(error);
                drop(status);
                tracing::info!(%revision, "serving the cached bundle until the source answers");
                Ok(())
            }
            Err(e) => Err(format!("{error}; and the cached bundle is refused: {e}")),
        }
    }

    /// One check now (a poll, SIGHUP, the admin API).
    pub async fn check(&self, trigger: Trigger) -> Result<CheckOutcome, String> {
        let known = self
            .status()
            .seen
            .as_ref()
            .and_then(|s| s.validator.clone());
        self.check_with(trigger, known, None).await
    }

    /// Fetch conditionally on `known`; `cached` is what `known` names when it came from the
    /// cache at start-up (activated on a "not modified").
    async fn check_with(
        &self,
        trigger: Trigger,
        known: Option<String>,
        cached: Option<Bytes>,
    ) -> Result<CheckOutcome, String> {
        let _one = self.one_at_a_time.lock().await;
        let fetched = self.fetcher.fetch(known.as_deref()).await;
        self.status().last_check = Some(SystemTime::now());
        match fetched {
            Err(e) => {
                self.count(3);
                let message = e.to_string();
                let mut status = self.status();
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                status.last_error = Some(message.clone());
                drop(status);
                tracing::warn!(source = %self.fetcher.source().label(), error = %message, "bundle check failed; the bundle in force keeps serving");
                Err(message)
            }
            Ok(Fetched::NotModified) => match cached {
                Some(bytes) => self
                    .activate(bytes, known, trigger, true)
                    .await
                    .map(CheckOutcome::Updated),
                None => {
                    self.count(1);
                    self.unchanged().await;
                    Ok(CheckOutcome::Unchanged)
                }
            },
            Ok(Fetched::New { bytes, validator }) => {
                let digest = hex::encode(Sha256::digest(&bytes));
                let (same, in_force) = {
                    let status = self.status();
                    (
                        status.seen.as_ref().is_some_and(|s| s.digest == digest),
                        status.active.as_ref().is_some_and(|a| a.digest == digest),
                    )
                };
                if same || in_force {
                    // The bundle last seen, or (after a refused one) back to the one in force:
                    // nothing to build.
                    {
                        let mut status = self.status();
                        let accepted = in_force || status.seen.as_ref().is_some_and(|s| s.accepted);
                        status.seen = Some(Seen {
                            validator,
                            digest,
                            accepted,
                        });
                    }
                    self.count(1);
                    self.unchanged().await;
                    return Ok(CheckOutcome::Unchanged);
                }
                self.activate(bytes, validator, trigger, true)
                    .await
                    .map(CheckOutcome::Updated)
            }
        }
    }

    /// The source serves what was seen last: a success when that was accepted.
    async fn unchanged(&self) {
        let accepted = {
            let mut status = self.status();
            status.consecutive_failures = 0;
            let accepted = status.seen.as_ref().is_some_and(|s| s.accepted);
            if accepted {
                status.last_error = None;
                status.from_cache = false;
                status.last_success = Some(SystemTime::now());
            }
            accepted
        };
        if accepted {
            self.succeeded(false).await;
            self.state.unchanged(Trigger::Bundle);
        }
    }

    /// A successful check: the staleness deadline moves, and the cache's description records
    /// it — after a change always, otherwise only when a staleness limit is set (the only
    /// reader of the check time) and at most every quarter of it: a restart then counts the
    /// source as unchecked for up to a quarter too long, which errs towards refusing. Written
    /// on the blocking pool (it fsyncs), never on an async worker.
    async fn succeeded(&self, changed: bool) {
        let now = Instant::now();
        self.state
            .set_fresh_until(self.config.max_staleness.map(|d| now + d));
        let Some(dir) = self.config.cache_dir.clone() else {
            return;
        };
        let due = changed
            || self.config.max_staleness.is_some_and(|max| {
                let every = (max / 4).max(Duration::from_secs(1));
                self.status()
                    .meta_written
                    .is_none_or(|at| now.duration_since(at) >= every)
            });
        if !due {
            return;
        }
        let meta = {
            let mut status = self.status();
            let meta = match (&status.seen, &status.active) {
                (Some(seen), Some(active)) if seen.accepted => Some(CacheMeta {
                    source: self.fetcher.source().label(),
                    validator: seen.validator.clone(),
                    digest: seen.digest.clone(),
                    revision: active.revision.clone(),
                    checked_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                }),
                _ => None,
            };
            if meta.is_some() {
                status.meta_written = Some(now);
            }
            meta
        };
        let Some(meta) = meta else { return };
        let bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
        let written =
            tokio::task::spawn_blocking(move || write_atomically(&dir.join(CACHE_META), &bytes))
                .await;
        if let Ok(Err(e)) = written {
            tracing::debug!(error = %e, "cannot update the bundle cache's description");
        }
    }

    /// Verify, build and swap in `bytes`; on success persist it to the cache. `confirmed`: the
    /// source just delivered (or confirmed) it — false for the cached bundle at start-up, which
    /// is neither a successful check nor new to the cache.
    async fn activate(
        &self,
        bytes: Bytes,
        validator: Option<String>,
        trigger: Trigger,
        confirmed: bool,
    ) -> Result<String, String> {
        let digest = hex::encode(Sha256::digest(&bytes));
        let started = Instant::now();
        let staging = self
            .config
            .cache_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let max = self.config.max_bytes;
        // Built on the blocking pool, at the reload's lower priority, and swapped in by the
        // state exactly as a file reload would be.
        let state = Arc::clone(&self.state);
        let trust = Arc::clone(&self.trust);
        let archive = bytes.clone();
        let trigger = if trigger == Trigger::Startup {
            Trigger::Startup
        } else {
            Trigger::Bundle
        };
        let status = Arc::clone(&self.status);
        let checks = Arc::clone(&self.checks);
        let built = tokio::task::spawn_blocking(move || {
            crate::state::off_the_request_path(|| {
                let built = open(&archive, max, &trust).and_then(|opened| {
                    let engine = opened.engine(&staging)?;
                    Ok((opened, engine))
                });
                // The watcher's bookkeeping first, then the swap: whoever sees the new engine
                // (or the new error) sees the status and counts that go with it.
                match built {
                    Ok((opened, engine)) => {
                        record_success(&status, &checks, &opened, digest, validator, confirmed);
                        state
                            .install(trigger, started, Ok(engine))
                            .map(|_| opened)
                            .map_err(|f| f.message.clone())
                    }
                    Err(e) => {
                        // A full disk says nothing about the bundle: try it again next time.
                        let retry = matches!(e, super::BundleError::Io(_));
                        record_failure(&status, &checks, &e.to_string(), retry, digest, validator);
                        let failure = LoadError::Bundle {
                            message: e.to_string(),
                            problem: e.problem(),
                        };
                        let _ = state.install(trigger, started, Err(failure));
                        Err(e.to_string())
                    }
                }
            })
        })
        .await;
        match built {
            Ok(Ok(opened)) => {
                let revision = opened.manifest.revision.clone();
                if let SignatureStatus::NotChecked { .. } = opened.signature {
                    tracing::warn!(%revision, "bundle activated WITHOUT a signature check (no --bundle-public-key)");
                }
                tracing::info!(%revision, digest = %opened.digest, kid = ?opened.signature.kid(), load_ms = started.elapsed().as_millis() as u64, "bundle activated");
                if confirmed {
                    self.persist(&bytes).await;
                    self.succeeded(true).await;
                }
                Ok(revision)
            }
            Ok(Err(message)) => {
                tracing::warn!(source = %self.fetcher.source().label(), error = %message, "bundle refused; the last good version keeps serving");
                Err(message)
            }
            Err(e) => {
                let message = format!("activation task failed: {e}");
                let mut status = self.status();
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                status.last_error = Some(message.clone());
                drop(status);
                self.count(3);
                Err(message)
            }
        }
    }

    /// Keep the activated archive in the cache directory (atomically).
    async fn persist(&self, bytes: &Bytes) {
        let Some(dir) = self.config.cache_dir.clone() else {
            return;
        };
        let bytes = bytes.clone();
        let written = tokio::task::spawn_blocking(move || {
            write_atomically(&dir.join(CACHE_ARCHIVE), &bytes)
                .map_err(|e| format!("cannot write `{}`: {e}", dir.join(CACHE_ARCHIVE).display()))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot cache the activated bundle; a restart during an outage will start without it")
            }
            Err(e) => tracing::warn!(error = %e, "bundle cache task failed"),
        }
    }

    /// Staging directories and temporary files a killed process left in the cache directory.
    async fn remove_leftovers(&self) {
        let Some(dir) = self.config.cache_dir.clone() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let removed = if name.starts_with(super::STAGING_PREFIX) {
                    std::fs::remove_dir_all(&path)
                } else if name.starts_with('.') && name.ends_with(".tmp") {
                    std::fs::remove_file(&path)
                } else {
                    continue;
                };
                if let Err(e) = removed {
                    tracing::debug!(path = %path.display(), error = %e, "cannot remove a leftover");
                }
            }
        })
        .await;
    }

    /// The cached archive and its description, when they belong to this source and agree.
    async fn read_cache(&self) -> Option<(Bytes, CacheMeta)> {
        let dir = self.config.cache_dir.clone()?;
        let source = self.fetcher.source().label();
        let max = self.config.max_bytes;
        let read = tokio::task::spawn_blocking(move || {
            let meta = std::fs::read(dir.join(CACHE_META)).ok()?;
            let meta: CacheMeta = match serde_json::from_slice(&meta) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an unreadable bundle cache description");
                    return None;
                }
            };
            if meta.source != source {
                tracing::warn!(cached = %meta.source, configured = %source, "ignoring a cached bundle from another source");
                return None;
            }
            let bytes = std::fs::read(dir.join(CACHE_ARCHIVE)).ok()?;
            if bytes.len() as u64 > max || hex::encode(Sha256::digest(&bytes)) != meta.digest {
                tracing::warn!("ignoring a cached bundle that does not match its description");
                return None;
            }
            Some((Bytes::from(bytes), meta))
        })
        .await;
        read.ok().flatten()
    }

    fn set_deadline_from(&self, checked_at: &str) {
        let Some(max) = self.config.max_staleness else {
            return;
        };
        let age = humantime::parse_rfc3339(checked_at)
            .ok()
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .unwrap_or(max);
        let deadline = Instant::now()
            .checked_add(max.saturating_sub(age))
            .unwrap_or_else(Instant::now);
        self.state.set_fresh_until(Some(deadline));
    }

    /// Poll until the returned tasks are dropped: every poll interval (±10 %), backing off
    /// exponentially while checks fail (from 1 s while nothing is loaded), never longer than
    /// half the staleness limit; and check at once on `SIGHUP`.
    pub fn spawn(self: &Arc<Self>) -> Polling {
        let watcher = Arc::clone(self);
        let mut tasks = vec![tokio::spawn(async move {
            loop {
                tokio::time::sleep(watcher.next_delay()).await;
                let _ = watcher.check(Trigger::Bundle).await;
            }
        })];
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(mut hangups) => {
                    let watcher = Arc::clone(self);
                    tasks.push(tokio::spawn(async move {
                        while hangups.recv().await.is_some() {
                            let _ = watcher.check(Trigger::Signal).await;
                        }
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGHUP"),
            }
        }
        Polling { tasks }
    }

    fn next_delay(&self) -> Duration {
        let interval = self.config.poll_interval.max(Duration::from_millis(100));
        let failures = self.status().consecutive_failures;
        let base = if failures == 0 {
            interval
        } else {
            let start = if self.state.current().is_some() {
                interval
            } else {
                interval.min(Duration::from_secs(1))
            };
            let cap = match self.config.max_staleness {
                Some(max) => (max / 2)
                    .max(Duration::from_secs(1))
                    .min(MAX_BACKOFF.max(interval)),
                None => MAX_BACKOFF.max(interval),
            };
            start
                .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
                .min(cap)
        };
        let jitter = rand::random_range(0.9..1.1);
        base.mul_f64(jitter)
    }

    /// The status page's `bundle` object.
    pub fn status_json(&self) -> serde_json::Value {
        let status = self.status();
        let time =
            |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
        let checks: serde_json::Map<String, serde_json::Value> = RESULTS
            .iter()
            .zip(self.checks.iter())
            .map(|(name, c)| ((*name).to_owned(), c.load(Ordering::Relaxed).into()))
            .collect();
        serde_json::json!({
            "source": self.fetcher.source().label(),
            "revision": status.active.as_ref().map(|a| &a.revision),
            "digest": status.active.as_ref().map(|a| &a.digest),
            "kid": status.active.as_ref().and_then(|a| a.kid.as_ref()),
            "signature_checked": !self.trust.is_empty(),
            "created": status.active.as_ref().map(|a| &a.created),
            "package": status.active.as_ref().map(|a| &a.package),
            "from_cache": status.from_cache,
            "last_check": time(status.last_check),
            "last_success": time(status.last_success),
            "last_change": time(status.last_change),
            "last_error": status.last_error,
            "consecutive_failures": status.consecutive_failures,
            "poll_interval_seconds": self.config.poll_interval.as_secs_f64(),
            "max_staleness_seconds": self.config.max_staleness.map(|d| d.as_secs_f64()),
            "checks": checks,
        })
    }

    /// Checks by result, for the metrics.
    pub fn check_counts(&self) -> [(&'static str, u64); 4] {
        let get = |i: usize| self.checks.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
        [
            (RESULTS[0], get(0)),
            (RESULTS[1], get(1)),
            (RESULTS[2], get(2)),
            (RESULTS[3], get(3)),
        ]
    }

    /// The last successful check, for the metrics.
    pub fn last_success(&self) -> Option<SystemTime> {
        self.status().last_success
    }

    /// The bundle in force.
    pub fn active(&self) -> Option<Active> {
        self.status().active.clone()
    }
}

fn lock(status: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An activated bundle: in force, seen, the source reached.
fn record_success(
    status: &Mutex<Status>,
    checks: &[AtomicU64; 4],
    opened: &super::Opened,
    digest: String,
    validator: Option<String>,
    confirmed: bool,
) {
    let mut status = lock(status);
    status.consecutive_failures = 0;
    status.active = Some(Active {
        revision: opened.manifest.revision.clone(),
        digest: digest.clone(),
        kid: opened.signature.kid().map(str::to_owned),
        created: opened.manifest.created.clone(),
        package: opened.manifest.package.name.clone(),
    });
    status.seen = Some(Seen {
        validator,
        digest,
        accepted: true,
    });
    status.last_error = None;
    status.from_cache = !confirmed;
    let now = SystemTime::now();
    if confirmed {
        status.last_success = Some(now);
    }
    status.last_change = Some(now);
    checks[0].fetch_add(1, Ordering::Relaxed);
}

/// A refused bundle (remembered by its digest, so it is not fetched and checked again), or —
/// `retry` — one that could not be activated for a reason of this machine's (tried again).
fn record_failure(
    status: &Mutex<Status>,
    checks: &[AtomicU64; 4],
    message: &str,
    retry: bool,
    digest: String,
    validator: Option<String>,
) {
    let mut status = lock(status);
    if retry {
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        status.last_error = Some(message.to_owned());
        checks[3].fetch_add(1, Ordering::Relaxed);
    } else {
        status.consecutive_failures = 0;
        status.seen = Some(Seen {
            validator,
            digest,
            accepted: false,
        });
        checks[2].fetch_add(1, Ordering::Relaxed);
    }
}

/// The polling tasks; dropping it stops them.
#[derive(Debug)]
pub struct Polling {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Polling {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The `bundle` readiness check: fails when stale (decisions are refused) or when nothing is
/// in force; warns (degraded) while the source cannot be reached or the bundle in force came
/// from the cache.
impl crate::readiness::Probe for Watcher {
    fn name(&self) -> &'static str {
        CHECK
    }

    fn problem(&self) -> &'static str {
        if self.state.stale().is_some() {
            "bundle-stale"
        } else {
            "bundle-unreachable"
        }
    }

    fn check(&self) -> Result<(), String> {
        if let Some(over) = self.state.stale() {
            let max = self.config.max_staleness.unwrap_or_default();
            return Err(format!(
                "no successful check of `{}` within --bundle-max-staleness ({}, overdue by {}s): decisions answer 503 bundle_stale",
                self.fetcher.source().label(),
                humantime::format_duration(max),
                over.as_secs()
            ));
        }
        let status = self.status();
        if status.active.is_none() {
            return Err(status
                .last_error
                .clone()
                .unwrap_or_else(|| "no bundle activated yet".to_owned()));
        }
        Ok(())
    }

    fn warning(&self) -> Option<String> {
        let status = self.status();
        let revision = status.active.as_ref().map(|a| a.revision.as_str())?;
        if status.from_cache {
            return Some(format!(
                "serving the cached revision `{revision}`: the source has not answered since start-up ({})",
                status.last_error.as_deref().unwrap_or("no answer yet")
            ));
        }
        if status.consecutive_failures > 0 {
            return Some(format!(
                "revision `{revision}` keeps serving; the last {} check(s) of the source failed: {}",
                status.consecutive_failures,
                status.last_error.as_deref().unwrap_or_default()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::bundle::fetch::{Limits, Source};

    fn watcher(poll: Duration, max_staleness: Option<Duration>) -> Watcher {
        let limits = Limits {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            download_timeout: Duration::from_secs(1),
            max_bytes: 1 << 20,
        };
        let source = Source::File(PathBuf::from("/nonexistent/bundle.tar.gz"));
        let fetcher = Fetcher::new(source, limits, None, None, false).unwrap();
        let config = WatchConfig {
            poll_interval: poll,
            max_staleness,
            cache_dir: None,
            max_bytes: 1 << 20,
        };
        let state = Arc::new(State::for_bundle("test".to_owned()));
        Watcher::new(fetcher, Trust::none(), config, state)
    }

    fn delay_after(w: &Watcher, failures: u32) -> Duration {
        w.status().consecutive_failures = failures;
        w.next_delay()
    }

    #[test]
    fn polls_jitter_and_failures_back_off_exponentially_within_bounds() {
        let w = watcher(Duration::from_secs(30), None);
        let within = |d: Duration, around: f64| {
            let s = d.as_secs_f64();
            (around * 0.9..=around * 1.1).contains(&s)
        };
        for _ in 0..50 {
            assert!(within(delay_after(&w, 0), 30.0));
        }
        // Nothing loaded: retry from 1 s, doubling, up to 5 minutes.
        assert!(within(delay_after(&w, 1), 1.0));
        assert!(within(delay_after(&w, 2), 2.0));
        assert!(within(delay_after(&w, 5), 16.0));
        assert!(within(delay_after(&w, 40), 300.0));
        // A staleness limit caps the backoff at half of it, so the source is asked in time.
        let w = watcher(Duration::from_secs(30), Some(Duration::from_secs(60)));
        assert!(within(delay_after(&w, 40), 30.0));
    }

    #[tokio::test]
    async fn an_unreachable_source_with_no_cache_fails_the_start_and_readiness() {
        let w = watcher(Duration::from_secs(30), None);
        let e = w.start().await.unwrap_err();
        assert!(e.contains("/nonexistent/bundle.tar.gz"), "{e}");
        let probe: &dyn crate::readiness::Probe = &w;
        assert!(probe.check().unwrap_err().contains("cannot fetch"));
        assert_eq!(w.status().consecutive_failures, 1);
    }
}
