//! The `flex-auth` binary: parse the command line, set up logging, hand over to the library.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;
use flex_auth::config::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

// The allocator decides how much of a replaced registry goes back to the OS; see Cargo.toml.
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // --log-level / FLEX_AUTH_LOG first, then RUST_LOG, then `info`; a filter that does not
    // parse falls back to `info` rather than silencing the logs.
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    // A log line that cannot be written (stderr a closed pipe: the log collector died) is
    // dropped. The default reports the failure with `eprintln!` — to the same broken stderr,
    // which panics the thread that logged: a request worker, the whole server.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    flex_auth::run(cli)
}
