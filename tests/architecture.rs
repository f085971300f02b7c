//! The dependency rules of docs/ARCHITECTURE.md, kept executable: the top-level modules of
//! `src/` and the `crate::…` paths each one names form a graph with no cycle, and the modules
//! the architecture keeps low never reach up. Reading the source as text is enough: every
//! dependency between our modules is written as a `crate::module` path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names (`crate::x`), tests excluded.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            files += 1;
            let relative = path.strip_prefix(&src).unwrap();
            let module = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Unit tests may reach anywhere; the rules are about the code that ships.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = graph.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    deps.insert(name);
                }
            }
        }
    }
    assert!(files > 20, "read {files} source files");
    graph
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(
    graph: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    path: &mut Vec<String>,
) -> Option<Vec<String>> {
    for next in graph.get(path.last().unwrap()).into_iter().flatten() {
        if next == start {
            let mut cycle = path.clone();
            cycle.push(next.clone());
            return Some(cycle);
        }
        if !path.contains(next) {
            path.push(next.clone());
            if let Some(cycle) = cycle_from(graph, start, path) {
                return Some(cycle);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = graph();
    for module in graph.keys() {
        let mut path = vec![module.clone()];
        if let Some(cycle) = cycle_from(&graph, module, &mut path) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn low_modules_never_reach_up() {
    let graph = graph();
    // Everything that speaks HTTP or runs the process.
    const SURFACES: [&str; 9] = [
        "http",
        "api",
        "server",
        "gate",
        "proxy",
        "forward_auth",
        "grpc",
        "admin",
        "cli",
    ];
    let above = |also: &[&'static str]| -> Vec<&'static str> {
        SURFACES
            .iter()
            .copied()
            .chain(also.iter().copied())
            .collect()
    };
    let rules: Vec<(&str, Vec<&str>)> = vec![
        // The engine and its inputs know nothing of any surface.
        ("decision", above(&["telemetry", "audit"])),
        ("policy", above(&["state", "decision"])),
        ("registry", above(&["state", "decision"])),
        ("state", above(&[])),
        ("routes", above(&[])),
        ("json", above(&["decision", "registry"])),
        // The server runs any handler; it knows none of them.
        (
            "server",
            vec![
                "api",
                "gate",
                "proxy",
                "forward_auth",
                "grpc",
                "admin",
                "cli",
                "state",
                "decision",
            ],
        ),
        // The gate serves every fronting surface; none of them is below it.
        (
            "gate",
            vec!["api", "proxy", "forward_auth", "grpc", "admin", "cli"],
        ),
        ("proxy", vec!["api", "forward_auth", "grpc", "admin", "cli"]),
        // gRPC ext_authz is a fronting surface beside the others: it reaches the decision API
        // only through the readiness `Reporter` it is handed.
        ("grpc", vec!["api", "proxy", "forward_auth", "admin", "cli"]),
        ("forward_auth", vec!["api", "proxy", "grpc", "admin", "cli"]),
    ];
    let mut broken = Vec::new();
    for (module, forbidden) in rules {
        let deps = graph
            .get(module)
            .unwrap_or_else(|| panic!("no module `{module}` in src/"));
        for dep in deps {
            if forbidden.contains(&dep.as_str()) {
                broken.push(format!("`{module}` imports `{dep}`"));
            }
        }
    }
    // `http` is a leaf: of ours it knows only the decision types and strict JSON.
    for dep in graph.get("http").expect("an `http` module") {
        if !matches!(dep.as_str(), "decision" | "json") {
            broken.push(format!("`http` imports `{dep}`"));
        }
    }
    // `readiness` is a leaf too: owners of dependencies implement its `Probe` without knowing
    // who lists them.
    for leaf in ["readiness", "slice_cache"] {
        for dep in graph
            .get(leaf)
            .unwrap_or_else(|| panic!("a `{leaf}` module"))
        {
            broken.push(format!("`{leaf}` imports `{dep}`"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn nothing_calls_cli() {
    let graph = graph();
    let callers: Vec<&String> = graph
        .iter()
        .filter(|(_, deps)| deps.contains("cli"))
        .map(|(module, _)| module)
        .collect();
    assert!(callers.is_empty(), "`cli` is called by {callers:?}");
}

/// Every serving surface decides through `Verdicts::evaluate`, so that the shadow (when one is
/// loaded) sees every decision an engine makes: no surface calls an engine's `decide` itself.
#[test]
fn serving_surfaces_decide_only_through_the_decision_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let surfaces = [
        "api/check.rs",
        "api/authzen_http.rs",
        "api/mod.rs",
        "gate.rs",
        "proxy.rs",
        "forward_auth.rs",
        "grpc/mod.rs",
        "grpc/ext_authz.rs",
    ];
    let mut broken = Vec::new();
    for surface in surfaces {
        let text = std::fs::read_to_string(root.join(surface)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            let direct = [
                "engine.decide(",
                "engine.decide_with_properties(",
                "(engine, mode)",
            ]
            .iter()
            .any(|call| code.contains(call))
                || (code.contains(".decide(engine") && !code.contains("|e|"));
            if direct {
                broken.push(format!("src/{surface}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "decide through `Verdicts::evaluate(pending, engine, |e| …)` instead:\n{}",
        broken.join("\n")
    );
}
