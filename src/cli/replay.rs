//! `flex-auth replay`: the candidate engine from the flags, the log streamed through
//! [`crate::replay`], the report printed. Exit 0 nothing changed, 1 something did, 2 could not
//! run.

use std::fmt::Write as _;
use std::process::ExitCode;

use super::{EXIT_CANNOT_DECIDE, EXIT_DENY, EXIT_OK};
use crate::audit::Sink;
use crate::config::{ReplayArgs, ReplayFormat};
use crate::decision::Engine;
use crate::replay::{Changes, Filter, LogSource, Replay, Report};

/// `flex-auth replay`.
pub fn replay(args: &ReplayArgs) -> ExitCode {
    let cannot = |message: &str| {
        eprintln!("error: {message}");
        ExitCode::from(EXIT_CANNOT_DECIDE)
    };
    let source = match &args.log {
        Sink::File(path) => LogSource::File(path.clone()),
        Sink::Sqlite(path) => LogSource::Sqlite(path.clone()),
        Sink::Stdout => return cannot(
            "a `stdout` decision log cannot be read back; name a `file:PATH` or `sqlite:PATH` log",
        ),
    };
    let engine = match candidate(args) {
        Ok(engine) => engine,
        Err(e) => return cannot(&e),
    };
    let filter = Filter {
        since: args.since,
        until: args.until,
        origin: args.origin.clone(),
    };
    let started = std::time::Instant::now();
    let report = match Replay::new(
        &engine,
        filter,
        args.authzen_properties,
        args.limit_examples,
    )
    .run(&source)
    {
        Ok(report) => report,
        Err(e) => return cannot(&e.to_string()),
    };
    let elapsed = started.elapsed();
    match args.format {
        ReplayFormat::Json => {
            let value = serde_json::json!({
                "log": log_name(&args.log),
                "candidate": {
                    "policy_version": engine.policy().hash().as_str(),
                    "registry_version": engine.registry().hash().as_str(),
                    "bundle_revision": engine.bundle_revision(),
                },
                "changed": report.changed(),
                "seconds": elapsed.as_secs_f64(),
                "report": report,
            });
            match serde_json::to_string_pretty(&value) {
                Ok(text) => println!("{text}"),
                Err(e) => return cannot(&format!("cannot write the report: {e}")),
            }
        }
        ReplayFormat::Text => print!("{}", text(args, &engine, &report, elapsed)),
    }
    if report.changed() == 0 {
        ExitCode::from(EXIT_OK)
    } else {
        ExitCode::from(EXIT_DENY)
    }
}

fn log_name(sink: &Sink) -> String {
    match sink {
        Sink::File(path) => format!("file:{}", path.display()),
        Sink::Sqlite(path) => format!("sqlite:{}", path.display()),
        Sink::Stdout => "stdout".to_owned(),
    }
}

/// The candidate: a package with a registry or entities file, a bundle, or a package with a
/// bundle's registry.
fn candidate(args: &ReplayArgs) -> Result<Engine, String> {
    if let Some(bundle) = &args.bundle {
        let archive = super::bundle::read_bundle(bundle, crate::bundle::DEFAULT_MAX_BYTES)
            .map_err(super::bundle::Failure::into_message)?;
        let trust = crate::bundle::Trust::load(&args.bundle_public_keys)?;
        let opened = crate::bundle::open(&archive, crate::bundle::DEFAULT_MAX_BYTES, &trust)
            .map_err(|e| format!("`{}`: {e}", bundle.display()))?;
        let engine = match &args.policy {
            Some(policy) => opened.engine_with_package(policy),
            None => opened.engine(&std::env::temp_dir()),
        };
        return engine.map_err(|e| format!("candidate does not load: {e}"));
    }
    let policy = args.policy.clone().ok_or(
        "name the candidate: --policy P with --registry R or --entities E, or --bundle FILE",
    )?;
    let registry = match (&args.registry, &args.entities) {
        (Some(path), None) => crate::state::RegistrySource::Snapshot(path.clone()),
        (None, Some(path)) => crate::state::RegistrySource::Entities(path.clone()),
        _ => return Err("--policy needs --registry R, --entities E or --bundle FILE".to_owned()),
    };
    crate::state::load(&crate::state::Sources { policy, registry })
        .map_err(|e| format!("candidate does not load: {e}"))
}

fn text(args: &ReplayArgs, engine: &Engine, r: &Report, elapsed: std::time::Duration) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replay of {} against policy {} and registry {}{}",
        log_name(&args.log),
        engine.policy().hash().as_str(),
        engine.registry().hash().as_str(),
        engine
            .bundle_revision()
            .map(|rev| format!(" (bundle {rev})"))
            .unwrap_or_default()
    );
    let per_second = if elapsed.as_secs_f64() > 0.0 {
        r.read as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "records read      {:>9}   ({:.2} s, {:.0} records/s)",
        r.read,
        elapsed.as_secs_f64(),
        per_second
    );
    if r.filtered_out > 0 {
        let _ = writeln!(out, "  outside filters {:>9}", r.filtered_out);
    }
    let _ = writeln!(out, "not replayable    {:>9}", r.not_replayable_total());
    for (why, n) in &r.not_replayable {
        let _ = writeln!(out, "  {n:>9}  {why}");
    }
    let _ = writeln!(out, "replayed          {:>9}", r.replayed);
    if r.redacted > 0 {
        let _ = writeln!(
            out,
            "  with redacted fields (evaluated as missing) {}, of which changed {}",
            r.redacted, r.redacted_changed
        );
    }
    let _ = writeln!(out, "unchanged         {:>9}", r.unchanged);
    for (label, changes) in [
        ("allow → deny", &r.allow_to_deny),
        ("deny → allow", &r.deny_to_allow),
        ("reasons changed", &r.reasons_changed),
    ] {
        class(&mut out, label, changes);
    }
    let _ = writeln!(
        out,
        "{}",
        if r.changed() == 0 {
            "nothing changed".to_owned()
        } else {
            format!("{} decisions changed", r.changed())
        }
    );
    out
}

fn class(out: &mut String, label: &str, changes: &Changes) {
    let _ = writeln!(out, "{label:<17} {:>9}", changes.count);
    if changes.count == 0 {
        return;
    }
    let table = |t: &std::collections::BTreeMap<String, u64>| {
        t.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  by action: {}", table(&changes.by_action));
    if !changes.by_reason.is_empty() {
        let _ = writeln!(out, "  by reason: {}", table(&changes.by_reason));
    }
    for e in &changes.examples {
        let _ = writeln!(
            out,
            "  {}  {}  {}  {} {} {}: {} [{}] → {} [{}]{}",
            e.decision_id,
            e.time,
            e.origin,
            e.subject,
            e.action,
            e.resource,
            e.old.decision.as_str(),
            e.old.reasons.join(", "),
            e.new.decision.as_str(),
            e.new.reasons.join(", "),
            if e.new.policies.is_empty() {
                String::new()
            } else {
                format!(" by {}", e.new.policies.join(", "))
            }
        );
    }
}
