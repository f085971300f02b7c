//! Replay of a decision log against a candidate engine (`flex-auth replay`): every record that
//! carries the request it decided is evaluated again and compared with the answer it got.
//!
//! The log is streamed — one line or row at a time, counters and a bounded set of examples
//! kept — so memory does not grow with the log. Files are opened read-only; a SQLite log is
//! opened with `SQLITE_OPEN_READ_ONLY`: a replay never writes to the log it reads.
//!
//! A record is replayable when it says it carries the whole request (`record_version` ≥ 2) and
//! a request was evaluated (a record of an unreadable request or of no route has no subject).
//! Fields the server redacted (`--decision-log-redact`) are listed in the record's `redacted`;
//! they are evaluated as missing and the report counts the records they touched.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::authzen::{Mapped, PropertiesMode};
use crate::decision::{Change, CheckRequest, Decision, Engine, ResourceRef, SubjectRef};

/// The `record_version` of the first records that carry the whole request as evaluated.
pub const REPLAYABLE_SINCE: u32 = 2;

/// Most distinct keys kept per count table (actions, reasons, why not replayable); the rest are
/// counted under [`OTHER`].
const MAX_KEYS: usize = 1_000;
/// The key counts beyond [`MAX_KEYS`] go under.
pub const OTHER: &str = "(other)";

/// Which records to replay.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<SystemTime>,
    /// Records before this time.
    pub until: Option<SystemTime>,
    /// Records whose origin starts with this.
    pub origin: Option<String>,
}

/// One record, as replay reads it (other fields are ignored).
#[derive(Debug, Deserialize)]
struct Recorded {
    decision_id: String,
    #[serde(default)]
    time: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    record_version: Option<u32>,
    /// Read as a value: a redaction below it (`/subject/id`) leaves a subject that is not one.
    #[serde(default)]
    subject: Option<Value>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    resource: Option<Value>,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    properties: Option<Value>,
    decision: Decision,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    redacted: Vec<String>,
}

/// An answer, old or new.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Answer {
    /// `allow` or `deny`.
    pub decision: Decision,
    /// Reason codes.
    pub reasons: Vec<String>,
    /// Determining policies (the new answer only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// One changed decision, shown as an example.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// The recorded decision id.
    pub decision_id: String,
    /// When it was decided.
    pub time: String,
    /// Where the request came in.
    pub origin: String,
    /// `Type::"id"` of the subject.
    pub subject: String,
    /// The action.
    pub action: String,
    /// `Type::"id"` of the resource.
    pub resource: String,
    /// What it got.
    pub old: Answer,
    /// What the candidate answers.
    pub new: Answer,
}

/// One class of change: how many, per action, per reason, and examples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Changes {
    /// Records in this class.
    pub count: u64,
    /// Per action.
    pub by_action: BTreeMap<String, u64>,
    /// Per reason: the new reasons of `allow_to_deny` and `reasons_changed`, the old ones of
    /// `deny_to_allow`.
    pub by_reason: BTreeMap<String, u64>,
    /// Up to the example limit, in log order.
    pub examples: Vec<Example>,
}

/// What a replay found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Records read from the log (lines or rows), filtered out ones included.
    pub read: u64,
    /// Records the filters (`--since`, `--until`, `--origin`) left out.
    pub filtered_out: u64,
    /// Records evaluated again.
    pub replayed: u64,
    /// Records that could not be, by why.
    pub not_replayable: BTreeMap<String, u64>,
    /// Replayed records with redacted fields (evaluated as missing).
    pub redacted: u64,
    /// Of those, how many changed.
    pub redacted_changed: u64,
    /// Same decision, same reasons.
    pub unchanged: u64,
    /// Allowed then, denied now.
    pub allow_to_deny: Changes,
    /// Denied then, allowed now.
    pub deny_to_allow: Changes,
    /// Denied then and now, for other reasons.
    pub reasons_changed: Changes,
}

impl Report {
    /// Records that changed, all classes.
    pub fn changed(&self) -> u64 {
        self.allow_to_deny.count + self.deny_to_allow.count + self.reasons_changed.count
    }

    /// Records not replayable, all reasons.
    pub fn not_replayable_total(&self) -> u64 {
        self.not_replayable.values().sum()
    }
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReplayError(String);

/// Where records come from.
#[derive(Debug, Clone)]
pub enum LogSource {
    /// A JSON-lines file and its rotated files.
    File(PathBuf),
    /// A SQLite decision log.
    Sqlite(PathBuf),
}

/// The replayer: the candidate engine, the filters, the running report.
pub struct Replay<'e> {
    engine: &'e Engine,
    filter: Filter,
    mode: PropertiesMode,
    examples: usize,
    report: Report,
}

impl<'e> Replay<'e> {
    /// A replay against `engine`, keeping up to `examples` examples per class.
    pub fn new(engine: &'e Engine, filter: Filter, mode: PropertiesMode, examples: usize) -> Self {
        Self {
            engine,
            filter,
            mode,
            examples,
            report: Report::default(),
        }
    }

    /// Read every record of `source` (oldest first) and replay it.
    pub fn run(mut self, source: &LogSource) -> Result<Report, ReplayError> {
        match source {
            LogSource::File(path) => self.run_files(path)?,
            LogSource::Sqlite(path) => self.run_sqlite(path)?,
        }
        Ok(self.report)
    }

    fn run_files(&mut self, path: &Path) -> Result<(), ReplayError> {
        if !path.exists() {
            return Err(ReplayError(format!(
                "decision log `{}`: no such file",
                path.display()
            )));
        }
        let mut files = crate::audit::sink_files(path);
        files.reverse();
        let mut line = Vec::new();
        for file in &files {
            let cannot =
                |e: std::io::Error| ReplayError(format!("cannot read `{}`: {e}", file.display()));
            let opened = std::fs::File::open(file).map_err(cannot)?;
            let mut reader = std::io::BufReader::with_capacity(256 * 1024, opened);
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).map_err(cannot)? == 0 {
                    break;
                }
                match std::str::from_utf8(line.trim_ascii_end()) {
                    Ok("") => {}
                    Ok(text) => self.record(text),
                    Err(_) => {
                        self.report.read += 1;
                        self.not_replayable("not a JSON record (not UTF-8)");
                    }
                }
            }
        }
        Ok(())
    }

    fn run_sqlite(&mut self, path: &Path) -> Result<(), ReplayError> {
        let err = |e: rusqlite::Error| {
            ReplayError(format!("decision log database `{}`: {e}", path.display()))
        };
        let conn =
            crate::audit::sqlite::open_read_only(path).map_err(|e| ReplayError(e.to_string()))?;
        let mut query = conn
            .prepare("SELECT record FROM decisions ORDER BY seq")
            .map_err(err)?;
        let mut rows = query.query([]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            match row.get_ref(0).map_err(err)?.as_str() {
                Ok(text) => self.record(text),
                Err(_) => {
                    self.report.read += 1;
                    self.not_replayable("not a JSON record (not text)");
                }
            }
        }
        Ok(())
    }

    fn not_replayable(&mut self, why: &str) {
        count(&mut self.report.not_replayable, why);
    }

    /// One record's text.
    pub fn record(&mut self, text: &str) {
        self.report.read += 1;
        let recorded: Recorded = match serde_json::from_str(text) {
            Ok(recorded) => recorded,
            Err(_) => return self.not_replayable("not a JSON decision record"),
        };
        if !self.selected(&recorded) {
            self.report.filtered_out += 1;
            return;
        }
        if recorded.record_version.unwrap_or(1) < REPLAYABLE_SINCE {
            return self.not_replayable(
                "written by an older flex-auth (no `record_version`): the request may be incomplete",
            );
        }
        let Recorded {
            decision_id,
            time,
            origin,
            subject,
            action,
            resource,
            context,
            properties,
            decision,
            reasons,
            redacted,
            ..
        } = recorded;
        let subject = subject.and_then(|v| serde_json::from_value::<SubjectRef>(v).ok());
        let resource = resource.and_then(|v| serde_json::from_value::<ResourceRef>(v).ok());
        let (Some(subject), Some(action), Some(resource)) = (subject, action, resource) else {
            let why = if redacted.iter().any(|p| is_request_field(p)) {
                "a redacted subject, action or resource".to_owned()
            } else {
                format!(
                    "no request was evaluated ({})",
                    reasons.first().map_or("no reason", String::as_str)
                )
            };
            return self.not_replayable(&why);
        };
        let part = |name: &str| match properties.as_ref().and_then(|p| p.get(name)) {
            Some(Value::Object(map)) => Some(map.clone()),
            _ => None,
        };
        let mapped = Mapped {
            subject_properties: part("subject"),
            resource_properties: part("resource"),
            check: CheckRequest {
                subject,
                action,
                resource,
                context,
            },
        };
        let decided = if properties.is_some() {
            mapped.decide(self.engine, self.mode)
        } else {
            self.engine.decide(&mapped.check)
        };
        let outcome = decided.unwrap_or_else(|_| invalid());
        self.report.replayed += 1;
        if !redacted.is_empty() {
            self.report.redacted += 1;
        }
        let Some(class) = Change::between(decision, &reasons, outcome.decision, &outcome.reasons)
        else {
            self.report.unchanged += 1;
            return;
        };
        if !redacted.is_empty() {
            self.report.redacted_changed += 1;
        }
        let changes = match class {
            Change::AllowToDeny => &mut self.report.allow_to_deny,
            Change::DenyToAllow => &mut self.report.deny_to_allow,
            Change::ReasonsChanged => &mut self.report.reasons_changed,
        };
        changes.count += 1;
        let check = mapped.check;
        count(&mut changes.by_action, &check.action);
        let counted = if class == Change::DenyToAllow {
            &reasons
        } else {
            &outcome.reasons
        };
        for reason in counted {
            count(&mut changes.by_reason, reason);
        }
        if changes.examples.len() < self.examples {
            changes.examples.push(Example {
                decision_id,
                time,
                origin,
                subject: format!(
                    "{}::{:?}",
                    check
                        .subject
                        .entity_type
                        .as_deref()
                        .unwrap_or(crate::registry::SUBJECT_TYPE),
                    check.subject.id
                ),
                action: check.action,
                resource: format!("{}::{:?}", check.resource.entity_type, check.resource.id),
                old: Answer {
                    decision,
                    reasons,
                    policies: Vec::new(),
                },
                new: Answer {
                    decision: outcome.decision,
                    reasons: outcome.reasons,
                    policies: outcome.policies,
                },
            });
        }
    }

    fn selected(&self, recorded: &Recorded) -> bool {
        if let Some(prefix) = &self.filter.origin {
            if !recorded.origin.starts_with(prefix.as_str()) {
                return false;
            }
        }
        if self.filter.since.is_none() && self.filter.until.is_none() {
            return true;
        }
        let Ok(time) = humantime::parse_rfc3339_weak(&recorded.time) else {
            // A record whose time cannot be read is outside any time window.
            return false;
        };
        self.filter.since.is_none_or(|since| time >= since)
            && self.filter.until.is_none_or(|until| time < until)
    }
}

/// The answer to a request the candidate refuses to evaluate: what the server answers it.
fn invalid() -> crate::decision::Outcome {
    crate::decision::Outcome::deny(crate::verdict::REASON_INVALID_REQUEST)
}

/// A JSON pointer naming the subject, action or resource (or below them).
fn is_request_field(pointer: &str) -> bool {
    ["/subject", "/action", "/resource"]
        .iter()
        .any(|f| pointer == *f || pointer.starts_with(&format!("{f}/")))
}

fn count(table: &mut BTreeMap<String, u64>, key: &str) {
    if let Some(n) = table.get_mut(key) {
        *n += 1;
    } else if table.len() < MAX_KEYS {
        table.insert(key.to_owned(), 1);
    } else {
        *table.entry(OTHER.to_owned()).or_default() += 1;
    }
}
