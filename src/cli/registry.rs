//! `flex-auth load-registry`: validate a registry file, then install it atomically or push it to a
//! running server's admin API.

use std::process::ExitCode;

use super::check::{error_message, http_json};
use super::{config_error, EXIT_CANNOT_DECIDE, EXIT_CONFIG, EXIT_DENY, EXIT_OK};
use crate::config::{ConfigError, LoadRegistryArgs};

/// `flex-auth load-registry`: validate, then install at `--target` or push to `--url`. A bad
/// file changes nothing anywhere.
pub fn load_registry(args: &LoadRegistryArgs) -> ExitCode {
    let bytes = match std::fs::read(&args.file) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot read `{}`: {e}", args.file.display());
            return ExitCode::from(EXIT_DENY);
        }
    };
    let package = match &args.policy {
        Some(path) => match crate::policy::load_package(path) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("invalid: policy package: {e}");
                return ExitCode::from(EXIT_DENY);
            }
        },
        None => None,
    };
    let schema = package.as_ref().and_then(|p| p.schema());
    let origin = args.file.display().to_string();
    let parsed = if args.entities {
        crate::registry::parse_entities(&bytes, &origin, schema)
    } else {
        crate::registry::parse_snapshot(&bytes, &origin, schema)
    };
    let registry = match parsed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::from(EXIT_DENY);
        }
    };
    match (&args.target, &args.url) {
        (Some(target), None) => match crate::registry::write_atomically(target, &bytes) {
            Ok(()) => {
                println!(
                    "installed `{}` at `{}` ({} entities, version {})",
                    args.file.display(),
                    target.display(),
                    registry.entity_count(),
                    registry.hash()
                );
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("error: cannot install at `{}`: {e}", target.display());
                ExitCode::from(EXIT_DENY)
            }
        },
        (None, Some(url)) => {
            let Some(token_file) = &args.token_file else {
                return config_error(&ConfigError::Missing {
                    flag: "--token-file",
                    env: "FLEX_AUTH_ADMIN_TOKEN_FILE",
                });
            };
            let token = match crate::admin::read_token(token_file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let endpoint = format!("{}/v1/admin/registry", url.trim_end_matches('/'));
            match http_json(
                http::Method::PUT,
                &endpoint,
                bytes,
                Some(&token),
                args.timeout,
            ) {
                Ok((status, value)) if status.is_success() => {
                    println!("{value}");
                    ExitCode::from(EXIT_OK)
                }
                Ok((status, value)) => {
                    eprintln!(
                        "error: {endpoint} answered {status}: {}",
                        error_message(&value)
                    );
                    ExitCode::from(EXIT_DENY)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(EXIT_CANNOT_DECIDE)
                }
            }
        }
        _ => config_error(&ConfigError::Missing {
            flag: "--target or --url",
            env: "FLEX_AUTH_REGISTRY_TARGET",
        }),
    }
}
