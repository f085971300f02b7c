//! The writer thread: group commit to stdout, a rotating JSON-lines file or SQLite; every
//! PROBE_EVERY it checks that the path still names the open file, and reopens or recreates it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use super::{sqlite, Job, Rotation, Sink, GROUP, PROBE_EVERY};

enum Output {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        /// The open file and which file it is; `None` until (re)opened.
        file: Option<(File, Identity)>,
        size: u64,
        rotation: Rotation,
    },
    Sqlite {
        path: PathBuf,
        conn: Option<(rusqlite::Connection, Identity)>,
    },
}

/// Which file a path named when it was opened (device and inode). A record is durable only in
/// the file the configured path names *now*: a deleted, moved or replaced file keeps taking
/// writes through the old descriptor, and those records would be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    #[cfg(unix)]
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }

    #[cfg(not(unix))]
    fn of(_: &std::fs::Metadata) -> Self {
        Self { dev: 0, ino: 0 }
    }

    /// Whether `path` still names the file this identity was taken from (and, for an open
    /// file, whether that file still has a name at all).
    fn still_named(self, path: &Path, open: Option<&File>) -> bool {
        let Ok(now) = std::fs::metadata(path) else {
            return false;
        };
        #[cfg(unix)]
        if let Some(file) = open {
            use std::os::unix::fs::MetadataExt;
            if file.metadata().map_or(true, |m| m.nlink() == 0) {
                return false;
            }
        }
        #[cfg(not(unix))]
        let _ = open;
        Self::of(&now) == self
    }
}

/// The path no longer names the file records were written to.
fn moved(path: &Path) -> std::io::Error {
    std::io::Error::other(format!(
        "`{}` was deleted, moved or replaced while records were written to it",
        path.display()
    ))
}

pub(super) struct Writer {
    output: Output,
    /// fsync each group (required mode); best-effort leaves flushing to the OS.
    sync: bool,
}

impl Writer {
    pub(super) fn open(sink: Sink, rotation: Rotation, sync: bool) -> std::io::Result<Self> {
        let output = match sink {
            Sink::Stdout => Output::Stdout(std::io::stdout()),
            Sink::File(path) => {
                let (file, identity, size) = open_log_file(&path)?;
                Output::File {
                    path,
                    file: Some((file, identity)),
                    size,
                    rotation,
                }
            }
            Sink::Sqlite(path) => {
                let conn = open_database(&path)?;
                Output::Sqlite {
                    path,
                    conn: Some(conn),
                }
            }
        };
        Ok(Self { output, sync })
    }

    pub(super) fn run(
        &mut self,
        rx: &Receiver<Job>,
        healthy: &AtomicBool,
        failures: &AtomicU64,
        written: &AtomicU64,
    ) {
        loop {
            // Idle or not, the sink is looked at every PROBE_EVERY: a log directory removed while
            // no decision is asked for turns readiness unready before the next decision does.
            let first = match rx.recv_timeout(PROBE_EVERY) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    match (self.probe(), healthy.load(Ordering::Relaxed)) {
                        (Ok(()), false) => {
                            tracing::info!("decision log writable again");
                            healthy.store(true, Ordering::Relaxed);
                        }
                        (Err(e), true) => {
                            healthy.store(false, Ordering::Relaxed);
                            tracing::error!(error = %e, "decision log unusable; required-mode decisions answer 503 until it recovers");
                        }
                        _ => {}
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < GROUP {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let result = self.write_durably(&batch);
            let ok = result.is_ok();
            match result {
                Ok(()) => {
                    written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if !healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!("decision log writable again");
                    }
                }
                Err(e) => {
                    failures.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if healthy.swap(false, Ordering::Relaxed) {
                        tracing::error!(error = %e, records = batch.len(), "decision log write failed; required-mode decisions answer 503 until it recovers");
                    }
                }
            }
            for job in batch {
                if let Some(done) = job.done {
                    let _ = done.send(ok);
                }
            }
        }
    }

    /// Write every line, then make them durable with one flush / fsync. On success every line
    /// is whole, in the file (or database) the configured path names now; on failure none of
    /// the group is left behind in the file.
    fn write_durably(&mut self, batch: &[Job]) -> std::io::Result<()> {
        let sync = self.sync;
        match &mut self.output {
            Output::Stdout(out) => {
                let mut lock = out.lock();
                for job in batch {
                    lock.write_all(&job.line)?;
                }
                lock.flush()
            }
            Output::File {
                path,
                file,
                size,
                rotation,
            } => {
                if file
                    .as_ref()
                    .is_some_and(|(f, id)| !id.still_named(path, Some(f)))
                {
                    tracing::warn!(path = %path.display(), "decision log file was deleted, moved or replaced; reopening it");
                    *file = None;
                }
                if *size >= rotation.max_bytes {
                    *file = None;
                    rotate(path, rotation.keep)?;
                    *size = 0;
                }
                if file.is_none() {
                    let (f, id, len) = open_log_file(path)?;
                    *file = Some((f, id));
                    *size = len;
                }
                let Some((f, identity)) = file.as_mut() else {
                    return Err(std::io::Error::other("decision log file is not open"));
                };
                if batch.is_empty() {
                    return Ok(());
                }
                let mut buffer = Vec::with_capacity(batch.iter().map(|j| j.line.len()).sum());
                for job in batch {
                    buffer.extend_from_slice(&job.line);
                }
                let before = f.metadata().map_or(*size, |m| m.len());
                let result = f
                    .write_all(&buffer)
                    .and_then(|()| if sync { f.sync_data() } else { Ok(()) })
                    .and_then(|()| {
                        // Deleted between the check above and the fsync: not durable where
                        // anyone will look.
                        if identity.still_named(path, Some(f)) {
                            Ok(())
                        } else {
                            Err(moved(path))
                        }
                    });
                match result {
                    Ok(()) => {
                        *size = before + buffer.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        // A group that failed half-way (ENOSPC, EIO) must not leave a fragment
                        // for the next record to be glued onto: cut the file back to where the
                        // group began. If even that fails, the file is closed and repaired when
                        // it is reopened (see `open_log_file`).
                        let repaired =
                            f.set_len(before)
                                .and_then(|()| if sync { f.sync_data() } else { Ok(()) });
                        if let Err(cut) = repaired {
                            tracing::error!(error = %cut, path = %path.display(), "cannot cut a failed write back out of the decision log; it is repaired when reopened");
                            *file = None;
                        } else if !identity.still_named(path, Some(f)) {
                            *file = None;
                        }
                        Err(e)
                    }
                }
            }
            Output::Sqlite { path, conn } => {
                if conn
                    .as_ref()
                    .is_some_and(|(_, id)| !id.still_named(path, None))
                {
                    tracing::warn!(path = %path.display(), "decision log database was deleted, moved or replaced; reopening it");
                    *conn = None;
                }
                if conn.is_none() {
                    *conn = Some(open_database(path)?);
                }
                let Some((c, identity)) = conn.as_mut() else {
                    return Err(std::io::Error::other("decision log database is not open"));
                };
                if batch.is_empty() {
                    return Ok(());
                }
                let result = sqlite::insert(c, batch.iter().map(|job| job.line.as_slice()))
                    .map_err(std::io::Error::other)
                    .and_then(|()| {
                        if identity.still_named(path, None) {
                            Ok(())
                        } else {
                            Err(moved(path))
                        }
                    });
                if result.is_err() {
                    // Reopen on the next attempt: the database may have been replaced.
                    *conn = None;
                }
                result
            }
        }
    }

    /// Can the sink take a durable write (to the file its path names now)? Reopens it if not.
    fn probe(&mut self) -> std::io::Result<()> {
        self.write_durably(&[])
    }
}

/// Open (creating) a decision-log file for appending. A last line without its newline — a
/// write torn by a crash or a full disk that could not be cut back — is removed first, so the
/// next record starts on a line of its own and every line in the file is a whole record.
fn open_log_file(path: &Path) -> std::io::Result<(File, Identity, u64)> {
    let file = open_append(path)?;
    let metadata = file.metadata()?;
    let mut len = metadata.len();
    if len > 0 {
        let keep = whole_lines_len(path, len)?;
        if keep < len {
            tracing::warn!(path = %path.display(), bytes = len - keep, "removing a partial last line from the decision log");
            file.set_len(keep)?;
            file.sync_data()?;
            len = keep;
        }
    }
    Ok((file, Identity::of(&metadata), len))
}

/// The length of `path` up to and including its last newline.
fn whole_lines_len(path: &Path, len: u64) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut reader = File::open(path)?;
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let want = usize::try_from(end - start).unwrap_or(chunk.len());
        let buf = chunk.get_mut(..want).unwrap_or_default();
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn open_database(path: &Path) -> std::io::Result<(rusqlite::Connection, Identity)> {
    let conn = sqlite::open(path).map_err(std::io::Error::other)?;
    let identity = Identity::of(&std::fs::metadata(path)?);
    Ok((conn, identity))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `PATH` → `PATH.1` → … → `PATH.keep`; the oldest is removed.
fn rotate(path: &Path, keep: usize) -> std::io::Result<()> {
    let numbered = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    if keep == 0 {
        return std::fs::remove_file(path).or_else(ignore_missing);
    }
    std::fs::remove_file(numbered(keep)).or_else(ignore_missing)?;
    for n in (1..keep).rev() {
        std::fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_missing)?;
    }
    std::fs::rename(path, numbered(1)).or_else(ignore_missing)
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        for round in 0..4 {
            std::fs::write(&path, format!("{round}")).unwrap();
            rotate(&path, 2).unwrap();
        }
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("d.log.1")).unwrap(),
            "3"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("d.log.2")).unwrap(),
            "2"
        );
        assert!(!dir.path().join("d.log.3").exists());
    }
}
