//! The subcommands: each takes its parsed arguments and returns the process exit code. Output
//! for people goes to stdout, errors to stderr; nothing here is called by the rest of the crate.
//!
//! `serve` is the composition root (it wires the modules together and owns no logic of its own),
//! `check` the decision client, `registry` the `load-registry` command, `decisions` the decision
//! log reader, `replay` the replay of a decision log, `validate` the `validate` and `test` commands.

mod bundle;
mod check;
mod decisions;
mod registry;
mod replay;
mod serve;
mod validate;

use std::process::ExitCode;

use crate::config::ConfigError;

pub use bundle::bundle;
pub use check::check;
pub use decisions::decisions;
pub use registry::load_registry;
pub use replay::replay;
pub use serve::serve;
pub use validate::{test, validate};

/// Exit code: allowed / valid / all tests passed.
pub const EXIT_OK: u8 = 0;
/// Exit code: denied / invalid / a test failed.
pub const EXIT_DENY: u8 = 1;
/// Exit code: no decision could be obtained (treat as deny).
pub const EXIT_CANNOT_DECIDE: u8 = 2;
/// Exit code: the configuration cannot run (EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// `BOOT_FAIL` problems that only start-up reports (besides `boot-` + each of
/// [`crate::state::PROBLEMS`]); each is an anchor in `docs/runbook.md`.
pub const BOOT_ONLY_PROBLEMS: [&str; 6] = [
    ADMIN_TOKEN_INVALID,
    crate::audit::PROBLEM,
    ROUTES_INVALID,
    UPSTREAM_INVALID,
    crate::auth::PROBLEM,
    crate::tls::PROBLEM,
];
const ADMIN_TOKEN_INVALID: &str = "admin-token-invalid";
const ROUTES_INVALID: &str = "routes-invalid";
const UPSTREAM_INVALID: &str = "upstream-invalid";

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Print the one `BOOT_FAIL` line operators and probes look for, and exit 78.
fn boot_fail(setting: &str, reason: &str, problem: &str) -> ExitCode {
    let reason = reason
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    eprintln!(
        "BOOT_FAIL setting={setting} reason=\"{reason}\" docs=docs/runbook.md#boot-{problem}"
    );
    ExitCode::from(EXIT_CONFIG)
}

/// `flex-auth config reference [--markdown]`.
pub fn config_reference(markdown: bool) -> ExitCode {
    let text = if markdown {
        crate::reference::markdown()
    } else {
        crate::reference::text()
    };
    print!("{text}");
    ExitCode::from(EXIT_OK)
}
