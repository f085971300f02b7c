//! `flex-auth validate` and `flex-auth test`.

use std::process::ExitCode;

use super::{config_error, EXIT_DENY, EXIT_OK};
use crate::config::{TestArgs, ValidateArgs};
use crate::state;
use crate::suite;

/// `flex-auth validate`.
pub fn validate(args: &ValidateArgs) -> ExitCode {
    let only_package = args.sources.registry.is_none() && args.sources.entities.is_none();
    if let (true, Some(path)) = (only_package, &args.sources.policy) {
        return match crate::policy::load_package(path) {
            Ok(policy) => {
                if warned(policy.warnings(), args.deny_warnings) {
                    return ExitCode::from(EXIT_DENY);
                }
                println!(
                    "ok: package `{}` ({} policies, {}, version {}); no registry given, so none was checked",
                    policy.name(),
                    policy.policy_count(),
                    if policy.schema().is_some() { "schema-validated" } else { "no schema" },
                    policy.hash(),
                );
                ExitCode::from(EXIT_OK)
            }
            Err(e) => {
                eprintln!("invalid: {e}");
                ExitCode::from(EXIT_DENY)
            }
        };
    }
    let sources = match args.sources.sources() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    match state::load(&sources) {
        Ok(engine) => {
            let policy = engine.policy();
            let registry = engine.registry();
            if warned(policy.warnings(), args.deny_warnings) {
                return ExitCode::from(EXIT_DENY);
            }
            println!(
                "ok: package `{}`{} ({} policies, {}, version {}) with {} ({} entities, version {})",
                policy.name(),
                policy
                    .declared_version()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                policy.policy_count(),
                if policy.schema().is_some() { "schema-validated" } else { "no schema" },
                policy.hash(),
                match &sources.registry {
                    state::RegistrySource::Snapshot(p) | state::RegistrySource::Entities(p) =>
                        format!("`{}`", p.display()),
                },
                registry.entity_count(),
                registry.hash(),
            );
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("invalid: {e}");
            ExitCode::from(EXIT_DENY)
        }
    }
}

/// Print validator warnings; true when they make `validate --deny-warnings` fail.
fn warned(warnings: &[String], deny: bool) -> bool {
    for warning in warnings {
        eprintln!("{}: {warning}", if deny { "error" } else { "warning" });
    }
    if deny && !warnings.is_empty() {
        eprintln!(
            "invalid: {} validator warning(s) and --deny-warnings",
            warnings.len()
        );
        return true;
    }
    false
}

/// `flex-auth test`.
pub fn test(args: &TestArgs) -> ExitCode {
    let sources = match args.sources.sources() {
        Ok(s) => s,
        Err(e) => return config_error(&e),
    };
    let engine = match state::load(&sources) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("invalid: {e}");
            return ExitCode::from(EXIT_DENY);
        }
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut coverage = suite::Coverage::new(engine.policy());
    for path in &args.cases {
        let file = match suite::load_cases(path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_DENY);
            }
        };
        println!("{}", path.display());
        for result in suite::run_cases(&engine, file) {
            println!("  {result}");
            coverage.add(&result);
            if result.failure.is_some() {
                failed += 1;
            } else {
                passed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if args.coverage || args.min_coverage.is_some() {
        print!("{coverage}");
    }
    let below = args.min_coverage.filter(|min| coverage.percent() < *min);
    if let Some(min) = below {
        eprintln!(
            "error: policy coverage {:.1} % is below --min-coverage {min} %",
            coverage.percent()
        );
    }
    if failed == 0 && passed > 0 && below.is_none() {
        ExitCode::from(EXIT_OK)
    } else {
        if passed + failed == 0 {
            eprintln!("error: no test cases found");
        }
        ExitCode::from(EXIT_DENY)
    }
}
