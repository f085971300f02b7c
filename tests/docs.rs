//! The documentation that is derived from the code stays in step with it: the configuration
//! reference is the binary's own output, every `FLEX_AUTH_*` variable the docs, manifests and
//! chart use exists, and the runbook has a section for every operator task.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_flex-auth");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn reference(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["config", "reference"])
        .args(args)
        .env_remove("FLEX_AUTH_REFERENCE_MARKDOWN")
        .stdin(Stdio::null())
        .output()
        .expect("run flex-auth");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_committed_configuration_reference_is_what_the_binary_prints() {
    let generated = reference(&["--markdown"]);
    let committed = std::fs::read_to_string(repo("docs/configuration.md")).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "length".to_owned(), |n| format!("line {}", n + 1));
        panic!(
            "docs/configuration.md is stale (first difference: {first}); regenerate it with\n  \
             cargo run --locked -- config reference --markdown > docs/configuration.md"
        );
    }
}

#[test]
fn the_plain_reference_lists_every_variable_too() {
    let text = reference(&[]);
    let markdown = reference(&["--markdown"]);
    for var in variables_in(&markdown) {
        assert!(
            text.contains(&var),
            "{var} missing from the plain reference"
        );
    }
    assert!(text.contains("FLEX_AUTH_LISTEN") && text.contains("[default: 127.0.0.1:8080]"));
}

/// Every `FLEX_AUTH_*` name in `text`.
fn variables_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("FLEX_AUTH_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('_');
        if name.len() > "FLEX_AUTH_".len() {
            found.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    found
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_variable_the_docs_manifests_and_chart_name_is_declared() {
    let declared = variables_in(&reference(&["--markdown"]));
    let mut files = vec![repo("README.md"), repo("Dockerfile")];
    for dir in ["docs", "deploy", "charts", "scripts", "examples"] {
        files_under(&repo(dir), &mut files);
    }
    let mut unknown = Vec::new();
    let mut checked = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for var in variables_in(&text) {
            checked += 1;
            // Test-only and script-only knobs are spelled FLEX_AUTH_TEST_* / FLEX_AUTH_BENCH_*.
            if !declared.contains(&var)
                && !var.starts_with("FLEX_AUTH_TEST_")
                && !var.starts_with("FLEX_AUTH_BENCH_")
            {
                unknown.push(format!("{}: {var}", file.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} variable uses found");
    assert!(unknown.is_empty(), "undeclared variables: {unknown:#?}");
}
#[test]
fn the_runbook_covers_the_operator_tasks() {
    let runbook = std::fs::read_to_string(repo("docs/runbook.md")).unwrap();
    let headings: Vec<String> = runbook
        .lines()
        .filter(|l| l.starts_with("## ") || l.starts_with("### "))
        .map(|l| l.trim_start_matches('#').trim().to_lowercase())
        .collect();
    for task in [
        "run the shipped example in a cluster",
        "start",
        "probe",
        "reload",
        "rotate secrets",
        "read the decision log",
        "roll back a bad policy",
    ] {
        assert!(
            headings.iter().any(|h| h == task),
            "runbook lacks a `## {task}` section; it has {headings:?}"
        );
    }
}
