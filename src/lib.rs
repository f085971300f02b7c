//! flex-auth: a Cedar policy decision point and fail-closed authorization proxy.
//!
//! The binary (`src/main.rs`) only parses the command line and calls [`run`]. Everything else is
//! a library so that tests and benchmarks drive the real code. See `docs/ARCHITECTURE.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod authzen;
pub mod bundle;
pub mod cedar_json;
pub mod cli;
pub mod config;
pub mod decision;
pub mod forward_auth;
pub mod gate;
pub mod grpc;
pub mod hash;
pub mod http;
pub mod json;
pub mod policy;
pub mod proxy;
pub mod readiness;
pub mod reference;
pub mod registry;
pub mod reload;
pub mod replay;
pub mod routes;
pub mod server;
pub mod slice_cache;
pub mod state;
pub mod suite;
pub mod telemetry;
pub mod tls;
pub mod verdict;

use std::process::ExitCode;

pub use config::Cli;
pub use decision::{CheckRequest, Decision, DecisionId, Engine, Outcome};
pub use state::{load, RegistrySource, Sources, State};

/// Run one parsed command line and return the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        config::Command::Serve(args) => cli::serve(*args),
        config::Command::Validate(args) => cli::validate(&args),
        config::Command::Check(args) => cli::check(&args),
        config::Command::Test(args) => cli::test(&args),
        config::Command::LoadRegistry(args) => cli::load_registry(&args),
        config::Command::Decisions(command) => cli::decisions(&command),
        config::Command::Replay(args) => cli::replay(&args),
        config::Command::Bundle(command) => cli::bundle(&command),
        config::Command::Config(config::ConfigCommand::Reference { markdown }) => {
            cli::config_reference(markdown)
        }
    }
}
