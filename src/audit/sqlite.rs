//! The SQLite decision-log sink: one row per record in table `decisions`, the whole JSON record
//! in `record` and the fields an operator searches by in their own columns, indexed by decision
//! id. WAL journal, `synchronous=FULL`: a committed transaction is on disk. Each group of records
//! is one `BEGIN IMMEDIATE … COMMIT`, so a database locked by another writer fails the group
//! (after [`BUSY_TIMEOUT`]) instead of blocking the writer thread forever.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use serde::Deserialize;

/// How long a write waits for a lock held by another connection before the group fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// `PRAGMA user_version` of the table layout this build writes and reads.
const SCHEMA_VERSION: i64 = 1;

const CREATE: &str = "
CREATE TABLE decisions (
    seq              INTEGER PRIMARY KEY,
    decision_id      TEXT NOT NULL,
    time             TEXT NOT NULL,
    origin           TEXT NOT NULL,
    decision         TEXT NOT NULL,
    subject_type     TEXT,
    subject_id       TEXT,
    action           TEXT,
    policy_version   TEXT NOT NULL,
    registry_version TEXT NOT NULL,
    record           TEXT NOT NULL
);
CREATE INDEX decisions_by_id ON decisions (decision_id);
PRAGMA user_version = 1;
";

const INSERT: &str = "INSERT INTO decisions (decision_id, time, origin, decision, subject_type, \
     subject_id, action, policy_version, registry_version, record) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Why the database cannot be used, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
#[error("decision log database `{path}`: {problem}")]
pub struct Error {
    path: String,
    problem: String,
}

impl Error {
    fn new(path: &Path, problem: impl std::fmt::Display) -> Self {
        Self {
            path: path.display().to_string(),
            problem: problem.to_string(),
        }
    }
}

/// Open (creating if needed) a database for writing: WAL, `synchronous=FULL`, table ready.
pub fn open(path: &Path) -> Result<Connection, Error> {
    let err = |e: rusqlite::Error| Error::new(path, e);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    let journal: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(err)?;
    if !journal.eq_ignore_ascii_case("wal") {
        return Err(Error::new(
            path,
            format!("cannot use WAL journaling (journal mode stays `{journal}`)"),
        ));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    match schema_version(&conn, path)? {
        None => conn.execute_batch(CREATE).map_err(err)?,
        Some(SCHEMA_VERSION) => {}
        Some(other) => {
            return Err(Error::new(
                path,
                format!(
                    "its `decisions` table has layout version {other}; this build reads and \
                     writes version {SCHEMA_VERSION}"
                ),
            ))
        }
    }
    Ok(conn)
}

/// Open an existing database to read records back (never creates one).
pub fn open_for_reading(path: &Path) -> Result<Connection, Error> {
    // Read-write without create: a WAL database may need its `-shm` file created to be read.
    open_existing(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
}

/// Open an existing database strictly read-only (`flex-auth replay`): nothing is ever written,
/// not even a `-shm` file the reader could create (SQLite reads a WAL database without one when
/// no writer holds it, and shares the writer's when one does).
pub fn open_read_only(path: &Path) -> Result<Connection, Error> {
    open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
}

/// Open an existing database with `mode` and check its table layout is this build's.
fn open_existing(path: &Path, mode: OpenFlags) -> Result<Connection, Error> {
    if !path.exists() {
        return Err(Error::new(path, "no such file"));
    }
    let conn = Connection::open_with_flags(path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| Error::new(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| Error::new(path, e))?;
    match schema_version(&conn, path)? {
        Some(SCHEMA_VERSION) => Ok(conn),
        None => Err(Error::new(path, "it has no `decisions` table")),
        Some(other) => Err(Error::new(
            path,
            format!("its `decisions` table has layout version {other}, not {SCHEMA_VERSION}"),
        )),
    }
}

/// `None` when there is no `decisions` table yet.
fn schema_version(conn: &Connection, path: &Path) -> Result<Option<i64>, Error> {
    let err = |e: rusqlite::Error| Error::new(path, e);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'decisions'",
            [],
            |row| row.get(0),
        )
        .map_err(err)?;
    if tables == 0 {
        return Ok(None);
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(err)?;
    Ok(Some(version))
}

/// The columns taken from a record (the JSON the API wrote; see `audit::Record`).
#[derive(Deserialize)]
struct Columns<'a> {
    #[serde(borrow)]
    decision_id: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow)]
    origin: Cow<'a, str>,
    #[serde(borrow)]
    decision: Cow<'a, str>,
    #[serde(borrow, default)]
    subject: Option<Subject<'a>>,
    #[serde(borrow, default)]
    action: Option<Cow<'a, str>>,
    #[serde(borrow)]
    policy_version: Cow<'a, str>,
    #[serde(borrow)]
    registry_version: Cow<'a, str>,
}

/// The subject as recorded; `--decision-log-redact /subject/id` may have removed the id.
#[derive(Deserialize)]
struct Subject<'a> {
    #[serde(borrow, rename = "type", default)]
    entity_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

/// Insert records (JSON lines) in one immediate transaction; all or nothing.
pub fn insert<'l>(
    conn: &mut Connection,
    lines: impl Iterator<Item = &'l [u8]>,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(INSERT)?;
        for line in lines {
            let text = std::str::from_utf8(line.trim_ascii_end())
                .map_err(|e| rusqlite::Error::Utf8Error(0, e))?;
            let c: Columns<'_> = serde_json::from_str(text)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let (subject_type, subject_id) = match &c.subject {
                Some(s) => (
                    Some(s.entity_type.as_deref().unwrap_or("Subject")),
                    s.id.as_deref(),
                ),
                None => (None, None),
            };
            insert.execute(params![
                c.decision_id,
                c.time,
                c.origin,
                c.decision,
                subject_type,
                subject_id,
                c.action,
                c.policy_version,
                c.registry_version,
                text,
            ])?;
        }
    }
    tx.commit()
}

/// The records of `decision_id`, newest first (ids are random; more than one is a collision).
pub fn find(conn: &Connection, decision_id: &str) -> Result<Vec<String>, rusqlite::Error> {
    let mut query =
        conn.prepare("SELECT record FROM decisions WHERE decision_id = ?1 ORDER BY seq DESC")?;
    let rows = query.query_map([decision_id], |row| row.get(0))?;
    rows.collect()
}

/// The newest `count` records, oldest first.
pub fn newest(conn: &Connection, count: usize) -> Result<Vec<String>, rusqlite::Error> {
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    let mut query = conn.prepare(
        "SELECT record FROM (SELECT seq, record FROM decisions ORDER BY seq DESC LIMIT ?1) \
         ORDER BY seq",
    )?;
    let rows = query.query_map([count], |row| row.get(0))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"decision_id":"decision:00000000000000aa","time":"2026-11-23T10:00:00.000Z","origin":"api:check","subject":{"id":"bridge"},"action":"sign","resource":{"type":"Actor","id":"bridge"},"decision":"allow","reasons":[],"policies":["p"],"policy_version":"p1","registry_version":"r1","latency_us":12}"#;

    #[test]
    fn records_round_trip_and_reopen_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut conn = open(&path).unwrap();
        insert(&mut conn, [LINE.as_bytes()].into_iter()).unwrap();
        drop(conn);
        let mut conn = open(&path).unwrap();
        let second = LINE.replace("00aa", "00bb");
        insert(&mut conn, [second.as_bytes()].into_iter()).unwrap();
        let reader = open_for_reading(&path).unwrap();
        assert_eq!(
            find(&reader, "decision:00000000000000aa").unwrap(),
            vec![LINE.to_owned()]
        );
        assert_eq!(newest(&reader, 1).unwrap(), vec![second.clone()]);
        assert_eq!(newest(&reader, 9).unwrap(), vec![LINE.to_owned(), second]);
        let subject: String = reader
            .query_row(
                "SELECT subject_type || ':' || subject_id FROM decisions LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(subject, "Subject:bridge");
    }

    #[test]
    fn a_record_with_its_subject_id_redacted_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("d.db")).unwrap();
        let redacted = LINE.replace(r#""subject":{"id":"bridge"}"#, r#""subject":{}"#);
        assert_ne!(redacted, LINE);
        insert(&mut conn, [redacted.as_bytes()].into_iter()).unwrap();
        assert_eq!(newest(&conn, 1).unwrap(), vec![redacted]);
    }

    #[test]
    fn a_group_with_a_bad_record_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let mut conn = open(&path).unwrap();
        let bad = b"{\"decision_id\": 1}".as_slice();
        assert!(insert(&mut conn, [LINE.as_bytes(), bad].into_iter()).is_err());
        assert!(newest(&conn, 10).unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let e = open(&path).unwrap_err().to_string();
        assert!(e.contains("d.db") && e.contains("not a database"), "{e}");
        assert!(open_for_reading(&dir.path().join("none.db"))
            .unwrap_err()
            .to_string()
            .contains("no such file"));
    }

    #[test]
    fn a_foreign_decisions_table_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE decisions (x); PRAGMA user_version = 7;")
            .unwrap();
        drop(conn);
        let e = open(&path).unwrap_err().to_string();
        assert!(e.contains("layout version 7"), "{e}");
    }
}
