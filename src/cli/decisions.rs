//! `flex-auth decisions show|tail`: read decision records back from a file or SQLite log.

use std::process::ExitCode;

use serde_json::Value;

use super::{EXIT_CANNOT_DECIDE, EXIT_CONFIG, EXIT_DENY, EXIT_OK};
use crate::audit::Sink;
use crate::config::DecisionsCommand;

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
