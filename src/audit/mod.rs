//! The decision log: one JSON record per decision, written by one writer thread to stdout, a
//! JSON-lines file (size-based rotation) or a SQLite database (WAL, `synchronous=FULL`, indexed
//! by decision id). In `required` mode a decision is answered only after its record is durable
//! (written and fsync'd, or committed); the writer batches whatever records are waiting into one
//! write and one fsync / one transaction (group commit), so concurrency does not serialize on it.
//!
//! Load-bearing invariant: in required mode nothing is allowed unless its record is durable. A
//! failed write answers 503 `audit_unavailable`, and readiness stays unready until a probe
//! write succeeds again.
//!
//! `writer` is the writer thread (group commit, rotation, noticing a file or directory that
//! disappeared); `sqlite` the database sink and its readers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::decision::{CheckRequest, Engine, Outcome, ResourceRef, SubjectRef};

pub mod sqlite;
mod writer;

use writer::Writer;

/// How many records may wait for the writer before best-effort records are dropped.
const QUEUE: usize = 16 * 1024;
/// Most records written (and fsync'd) together.
pub(super) const GROUP: usize = 1024;
/// The `docs/runbook.md` anchor for a decision log that cannot write.
pub const PROBLEM: &str = "decision-log-unavailable";

/// How often an unhealthy sink is probed for recovery.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// JSON lines on standard output.
    Stdout,
    /// A JSON-lines file, rotated by size.
    File(PathBuf),
    /// A SQLite database (table `decisions`), created if missing.
    Sqlite(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "stdout" {
            return Ok(Self::Stdout);
        }
        let file = text.strip_prefix("file:").map(|p| (p, false));
        match file.or_else(|| text.strip_prefix("sqlite:").map(|p| (p, true))) {
            Some((path, false)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            Some((path, true)) if !path.is_empty() => Ok(Self::Sqlite(PathBuf::from(path))),
            _ => Err(format!(
                "`{text}` is not a decision-log sink: use `stdout`, `file:PATH` or `sqlite:PATH`"
            )),
        }
    }
}

/// Whether and how strictly decisions are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// No decision log.
    Off,
    /// Log without waiting; a record that cannot be written is dropped and counted.
    BestEffort,
    /// Answer a decision only after its record is durable; otherwise 503 `audit_unavailable`.
    Required,
}

/// The `record_version` this build writes. 2: the record carries the whole request as
/// evaluated (subject, action, resource, context, AuthZEN properties), so `flex-auth replay`
/// can evaluate it again; records without the field were written before and are not replayed.
pub const RECORD_VERSION: u32 = 2;

/// One decision, as logged. Credentials never appear here.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// The decision id returned to the caller.
    pub decision_id: String,
    /// [`RECORD_VERSION`].
    pub record_version: u32,
    /// RFC 3339 time of the decision, in milliseconds.
    pub time: String,
    /// Where the request came in: `api:check`, `api:batch`.
    pub origin: &'a str,
    /// Subject type and id (absent for a batch item that could not be read).
    pub subject: Option<&'a SubjectRef>,
    /// Action name.
    pub action: Option<&'a str>,
    /// Resource type and id.
    pub resource: Option<&'a ResourceRef>,
    /// The request's context, as evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<&'a serde_json::Map<String, serde_json::Value>>,
    /// AuthZEN `subject.properties` / `resource.properties` the request sent, as sent (what the
    /// engine made of them depends on `--authzen-properties`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<&'a serde_json::Value>,
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// Reason codes.
    pub reasons: &'a [String],
    /// Determining (or erroring) policy ids.
    pub policies: &'a [String],
    /// Loaded policy package version.
    pub policy_version: &'a str,
    /// Loaded registry version.
    pub registry_version: &'a str,
    /// Revision of the bundle the package and registry came from (`serve --bundle`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_revision: Option<&'a str>,
    /// Microseconds spent deciding.
    pub latency_us: u64,
    /// sha256 (hex) of the bearer credential of a proxied or forward-auth request; never the
    /// credential itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_sha256: Option<&'a str>,
    /// The shadow's answer (`serve --shadow-policy`), only when it disagreed with this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRecord<'a>>,
}

/// What the shadow package answered to the same request, when it disagreed with the live one.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ShadowRecord<'a> {
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// `allow_to_deny`, `deny_to_allow` or `reasons_changed`: how it differs from the record's.
    pub change: &'a str,
    /// Reason codes.
    pub reasons: &'a [String],
    /// Determining (or erroring) policy ids.
    pub policies: &'a [String],
    /// The shadow's policy package version.
    pub policy_version: &'a str,
    /// The shadow's registry version.
    pub registry_version: &'a str,
    /// Why the shadow could not evaluate the request (its schema refused it), when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
}

/// A field `--decision-log-redact` drops from every record: a JSON pointer (RFC 6901) into
/// the record, below one of the request's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    pointer: String,
    /// The pointer's reference tokens, unescaped (`~1` → `/`, `~0` → `~`).
    tokens: Vec<String>,
}

/// The record fields a redaction may name (or reach below).
const REDACTABLE: [&str; 6] = [
    "subject",
    "action",
    "resource",
    "context",
    "properties",
    "credential_sha256",
];

impl Redaction {
    /// Parse and check a pointer.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "`{text}` is not a JSON pointer into the record: it starts with `/`, e.g. /context/ssh_public_key"
            ));
        };
        let mut tokens = Vec::new();
        for raw in rest.split('/') {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "`{text}`: `~` must be followed by 0 or 1 (RFC 6901)"
                        ))
                    }
                }
            }
            tokens.push(token);
        }
        let root = tokens.first().map(String::as_str).unwrap_or_default();
        if !REDACTABLE.contains(&root) {
            return Err(format!(
                "`{text}`: only the request's fields can be redacted (/{}); the decision, its                  id, time, origin, reasons, policies and versions are what the record is for",
                REDACTABLE.join(", /")
            ));
        }
        if tokens.iter().any(String::is_empty) {
            return Err(format!("`{text}`: a pointer has no empty segments"));
        }
        Ok(Self {
            pointer: text.to_owned(),
            tokens,
        })
    }

    /// The pointer as given.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// Remove the field from `record`; whether it was there. A token below an array names an
    /// index.
    fn remove_from(&self, record: &mut serde_json::Value) -> bool {
        let Some((last, parents)) = self.tokens.split_last() else {
            return false;
        };
        let mut node = record;
        for token in parents {
            let next = match node {
                serde_json::Value::Object(map) => map.get_mut(token),
                serde_json::Value::Array(items) => {
                    token.parse::<usize>().ok().and_then(|i| items.get_mut(i))
                }
                _ => None,
            };
            match next {
                Some(next) => node = next,
                None => return false,
            }
        }
        match node {
            serde_json::Value::Object(map) => map.remove(last).is_some(),
            // An array element is replaced by null, so the other elements keep their places.
            serde_json::Value::Array(items) => {
                match last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => {
                        *item = serde_json::Value::Null;
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }
}

/// What a surface adds to a record beyond the check and its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// sha256 (hex) of the bearer credential (proxy, forward-auth).
    pub credential_sha256: Option<&'a str>,
    /// AuthZEN properties as sent.
    pub properties: Option<&'a serde_json::Value>,
    /// The shadow's disagreeing answer (set by the decision path, not by surfaces).
    pub shadow: Option<ShadowRecord<'a>>,
}

/// Rotation of a file sink.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate when the file reaches this size.
    pub max_bytes: u64,
    /// How many rotated files to keep (`PATH.1` … `PATH.N`).
    pub keep: usize,
}

struct Job {
    line: Vec<u8>,
    done: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// The `decision_log` readiness check of a required-mode log (registered only in that mode: a
/// best-effort log never makes flex-auth unready).
impl crate::readiness::Probe for AuditLog {
    fn name(&self) -> &'static str {
        "decision_log"
    }

    fn problem(&self) -> &'static str {
        PROBLEM
    }

    fn check(&self) -> Result<(), String> {
        if self.mode() != Mode::Required || self.healthy() {
            Ok(())
        } else {
            Err("the decision log cannot write durably; in required mode every decision is refused (503 audit_unavailable) until it can".to_owned())
        }
    }
}

/// Handle to the decision log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    mode: Mode,
    tx: Option<SyncSender<Job>>,
    healthy: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
    redactions: Arc<[Redaction]>,
}

/// Why a record could not be made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl AuditLog {
    /// No decision log.
    pub fn off() -> Self {
        Self {
            mode: Mode::Off,
            tx: None,
            healthy: Arc::new(AtomicBool::new(true)),
            failures: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
            redactions: Arc::new([]),
        }
    }

    /// Start the writer thread for `sink`.
    pub fn start(sink: Sink, mode: Mode, rotation: Rotation) -> std::io::Result<Self> {
        if mode == Mode::Off {
            return Ok(Self::off());
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let log = Self {
            mode,
            tx: Some(tx),
            healthy: Arc::new(AtomicBool::new(true)),
            failures: Arc::new(AtomicU64::new(0)),
            written: Arc::new(AtomicU64::new(0)),
            redactions: Arc::new([]),
        };
        let mut writer = Writer::open(sink, rotation, mode == Mode::Required)?;
        let (healthy, failures, written) = (
            log.healthy.clone(),
            log.failures.clone(),
            log.written.clone(),
        );
        std::thread::Builder::new()
            .name("flex-auth-decision-log".to_owned())
            .spawn(move || writer.run(&rx, &healthy, &failures, &written))?;
        Ok(log)
    }

    /// Drop these fields from every record (`--decision-log-redact`).
    pub fn with_redactions(mut self, redactions: Vec<Redaction>) -> Self {
        self.redactions = redactions.into();
        self
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether records are being written at all.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// False while a required-mode log cannot write (readiness turns unready).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records that could not be written (or were dropped), since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records written, since start.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Serialize a record as one JSON line (`None` only if serialization failed, which is
    /// counted, and in required mode must refuse the decision).
    pub fn line(&self, record: &Record<'_>) -> Option<Vec<u8>> {
        let serialized = if self.redactions.is_empty() {
            serde_json::to_vec(record)
        } else {
            serde_json::to_value(record).and_then(|mut value| {
                let dropped: Vec<&str> = self
                    .redactions
                    .iter()
                    .filter(|r| r.remove_from(&mut value))
                    .map(Redaction::pointer)
                    .collect();
                if let (false, serde_json::Value::Object(map)) = (dropped.is_empty(), &mut value) {
                    map.insert("redacted".to_owned(), dropped.into());
                }
                serde_json::to_vec(&value)
            })
        };
        match serialized {
            Ok(mut line) => {
                line.push(b'\n');
                Some(line)
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// The line for one decision: `None` when the log is off, `Some(None)` when the record could
    /// not be serialized (which a required log must refuse).
    pub fn record_line(
        &self,
        engine: &Engine,
        origin: &str,
        check: Option<&CheckRequest>,
        outcome: &Outcome,
        started: std::time::Instant,
        extra: Extra<'_>,
    ) -> Option<Option<Vec<u8>>> {
        self.enabled().then(|| {
            self.line(&Record {
                decision_id: outcome.id.to_string(),
                record_version: RECORD_VERSION,
                time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                origin,
                subject: check.map(|c| &c.subject),
                action: check.map(|c| c.action.as_str()),
                resource: check.map(|c| &c.resource),
                context: check.and_then(|c| c.context.as_ref()),
                properties: extra.properties,
                decision: outcome.decision.as_str(),
                reasons: &outcome.reasons,
                policies: &outcome.policies,
                policy_version: engine.policy().hash().as_str(),
                registry_version: engine.registry().hash().as_str(),
                bundle_revision: engine.bundle_revision(),
                latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                credential_sha256: extra.credential_sha256,
                shadow: extra.shadow,
            })
        })
    }

    /// Hand decision lines to the log; in required mode wait for durability. A `None` line — a
    /// record that could not be serialized — is unavailable in required mode.
    pub async fn commit(&self, lines: Vec<Option<Vec<u8>>>) -> Result<(), Unavailable> {
        if lines.is_empty() {
            return Ok(());
        }
        match lines.into_iter().collect::<Option<Vec<Vec<u8>>>>() {
            Some(lines) => self.log(lines).await,
            None if self.mode == Mode::Required => Err(Unavailable),
            None => Ok(()),
        }
    }

    /// Log lines. In required mode, wait (off the async workers) until they are durable and
    /// return `Err(Unavailable)` if they are not; otherwise hand them over and return at once.
    pub async fn log(&self, lines: Vec<Vec<u8>>) -> Result<(), Unavailable> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        if self.mode != Mode::Required {
            for line in lines {
                if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                    tx.try_send(Job { line, done: None })
                {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            return Ok(());
        }
        // Required: every line is acknowledged, and all must be durable (the writer may put
        // them in different groups). A full queue refuses rather than blocks: under a burst the
        // answer is 503, never an unlogged allow and never a stalled worker.
        let mut acks = Vec::with_capacity(lines.len());
        for line in lines {
            let (done, ack) = tokio::sync::oneshot::channel();
            if tx
                .try_send(Job {
                    line,
                    done: Some(done),
                })
                .is_err()
            {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Err(Unavailable);
            }
            acks.push(ack);
        }
        let all = async {
            for ack in acks {
                if !ack.await.unwrap_or(false) {
                    return false;
                }
            }
            true
        };
        let durable = tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .unwrap_or(false);
        if durable {
            Ok(())
        } else {
            Err(Unavailable)
        }
    }
}

/// The files of a file sink, newest first: `PATH`, `PATH.1`, `PATH.2`, ….
pub fn sink_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    for n in 1.. {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let candidate = PathBuf::from(name);
        if !candidate.exists() || n > 10_000 {
            break;
        }
        files.push(candidate);
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactions_parse_only_request_fields_and_remove_what_they_name() {
        let r = |text: &str| Redaction::parse(text);
        assert!(r("context/x").unwrap_err().contains("starts with `/`"));
        assert!(r("/decision")
            .unwrap_err()
            .contains("only the request's fields"));
        assert!(r("/reasons/0").is_err());
        assert!(r("/context/a~2b").unwrap_err().contains("RFC 6901"));
        assert!(r("/context//x").unwrap_err().contains("empty"));
        let mut record = serde_json::json!({
            "decision": "allow",
            "context": {"ssh_public_key": "AAAA", "a/b": 1, "keep": [1, 2, 3]},
            "subject": {"id": "s"}
        });
        assert!(r("/context/ssh_public_key")
            .unwrap()
            .remove_from(&mut record));
        assert!(r("/context/a~1b").unwrap().remove_from(&mut record));
        assert!(r("/context/keep/1").unwrap().remove_from(&mut record));
        assert!(!r("/context/keep/7").unwrap().remove_from(&mut record));
        assert!(!r("/context/absent").unwrap().remove_from(&mut record));
        assert!(!r("/properties/subject").unwrap().remove_from(&mut record));
        assert_eq!(
            record,
            serde_json::json!({
                "decision": "allow",
                "context": {"keep": [1, null, 3]},
                "subject": {"id": "s"}
            })
        );
        let log = AuditLog {
            tx: None,
            ..AuditLog::off()
        }
        .with_redactions(vec![
            r("/context/ssh_public_key").unwrap(),
            r("/properties").unwrap(),
        ]);
        let context = serde_json::json!({"ssh_public_key": "AAAA", "ttl": 1});
        let serde_json::Value::Object(context) = context else {
            unreachable!()
        };
        let line = log
            .line(&Record {
                decision_id: "decision:0000000000000001".to_owned(),
                record_version: RECORD_VERSION,
                time: "t".to_owned(),
                origin: "api:check",
                subject: None,
                action: Some("sign"),
                resource: None,
                context: Some(&context),
                properties: None,
                decision: "allow",
                reasons: &[],
                policies: &[],
                policy_version: "p",
                registry_version: "r",
                bundle_revision: None,
                latency_us: 1,
                credential_sha256: None,
                shadow: None,
            })
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["context"], serde_json::json!({"ttl": 1}));
        // Only what was there is listed.
        assert_eq!(
            value["redacted"],
            serde_json::json!(["/context/ssh_public_key"])
        );
    }

    #[test]
    fn sinks_parse() {
        assert_eq!("stdout".parse::<Sink>(), Ok(Sink::Stdout));
        assert_eq!(
            "file:/tmp/d.log".parse::<Sink>(),
            Ok(Sink::File("/tmp/d.log".into()))
        );
        assert!("file:".parse::<Sink>().is_err());
        assert_eq!(
            "sqlite:/tmp/d.db".parse::<Sink>(),
            Ok(Sink::Sqlite("/tmp/d.db".into()))
        );
        assert!("sqlite:".parse::<Sink>().is_err());
        assert!("postgres://x".parse::<Sink>().is_err());
    }
}
