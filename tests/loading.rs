//! Policy package and registry loading from real files: every accepted form, and errors that
//! name file, line and column (policies) or actor and field (registries).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use flex_auth::policy::load_package;
use flex_auth::registry::{load_entities, load_snapshot, RegistryError};
use flex_auth::{load, CheckRequest, Decision, RegistrySource, Sources};
use support::{ops_warden, repo_path, temp_package};

const SHIPPED_MD: &str = "policies/ops-warden/policy_package.md";

fn shipped_markdown() -> String {
    std::fs::read_to_string(repo_path(SHIPPED_MD)).unwrap()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn request(value: serde_json::Value) -> CheckRequest {
    serde_json::from_value(value).unwrap()
}

#[test]
fn shipped_package_loads_with_ids_reasons_and_schema() {
    let package = load_package(&repo_path("policies/ops-warden")).unwrap();
    assert_eq!(package.name(), "ops-warden");
    assert_eq!(package.declared_version(), Some("1.0.0"));
    assert!(package.schema().is_some());
    let mut ids: Vec<String> = package
        .policies()
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "warden-principal-not-allowed",
            "warden-sign-allow",
            "warden-subject-not-allowed",
            "warden-ttl-bounds",
            "warden-unknown-actor"
        ]
    );
    let id = cedar_policy::PolicyId::new("warden-ttl-bounds");
    assert_eq!(package.reason_of(&id), Some("ttl_out_of_bounds"));
    // Directory and the Markdown file inside it are the same package.
    let direct = load_package(&repo_path(SHIPPED_MD)).unwrap();
    assert_eq!(direct.hash(), package.hash());
}

#[test]
fn both_shipped_registries_load_against_the_package_schema() {
    for registry in ["production", "template"] {
        let sources = Sources {
            policy: repo_path("policies/ops-warden"),
            registry: RegistrySource::Snapshot(repo_path(&format!(
                "registry/ops-warden/{registry}_registry_snapshot.json"
            ))),
        };
        let engine = load(&sources).unwrap_or_else(|e| panic!("{registry}: {e}"));
        assert_eq!(engine.registry().entity_count(), 3);
    }
}

#[test]
fn markdown_validation_error_points_at_the_markdown_line() {
    let text = shipped_markdown().replacen("context.ttl_hours >= 1", "context.ttl_hourz >= 1", 1);
    let line = line_of(&text, "ttl_hourz");
    let dir = temp_package(&[("policy_package.md", &text)]);
    let err = load_package(&dir.path().join("policy_package.md")).unwrap_err();
    let errors = err.source_errors();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(errors[0].line, Some(line), "{err}");
    assert_eq!(errors[0].column, Some(3), "{err}");
    assert!(errors[0].message.contains("ttl_hourz"), "{err}");
    assert!(err.to_string().starts_with(&format!(
        "{}:{line}:3:",
        dir.path().join("policy_package.md").display()
    )));
}

#[test]
fn markdown_parse_error_points_at_the_markdown_line() {
    let text = shipped_markdown().replacen(
        "unless { resource has max_ttl_hours };",
        "unless { resource has max_ttl_hours ;",
        1,
    );
    let line = line_of(&text, "has max_ttl_hours ;");
    let dir = temp_package(&[("policy_package.md", &text)]);
    let err = load_package(dir.path()).unwrap_err();
    assert_eq!(err.source_errors()[0].line, Some(line), "{err}");
}

#[test]
fn cedar_file_error_has_line_and_column() {
    let dir = temp_package(&[(
        "a.cedar",
        "permit(principal, action, resource)\n  when { 1 + };\n",
    )]);
    let err = load_package(&dir.path().join("a.cedar")).unwrap_err();
    let e = &err.source_errors()[0];
    assert_eq!((e.line, e.column), (Some(2), Some(14)), "{err}");
}

#[test]
fn directory_package_merges_files_with_manifest_and_schema() {
    let dir = temp_package(&[
        ("manifest.yaml", "name: docs\nversion: 2.1.0\n"),
        ("schema.cedarschema", "entity User; entity Doc { owner: User }; action read appliesTo { principal: User, resource: Doc };"),
        ("a.cedar", "@id(\"owner-reads\")\npermit(principal, action == Action::\"read\", resource) when { resource.owner == principal };"),
        ("b.cedar", "@id(\"no-bob\")\n@reason(\"bob_is_banned\")\nforbid(principal == User::\"bob\", action, resource);"),
        ("entities.json", r#"[{"uid":{"type":"Doc","id":"d1"},"attrs":{"owner":{"__entity":{"type":"User","id":"bob"}}},"parents":[]},
                            {"uid":{"type":"Doc","id":"d2"},"attrs":{"owner":{"__entity":{"type":"User","id":"alice"}}},"parents":[]}]"#),
    ]);
    // entities.json beside the policies is not part of the package.
    let sources = Sources {
        policy: dir.path().to_path_buf(),
        registry: RegistrySource::Entities(dir.path().join("entities.json")),
    };
    let engine = load(&sources).unwrap();
    assert_eq!(engine.policy().name(), "docs");
    assert_eq!(engine.policy().declared_version(), Some("2.1.0"));
    assert_eq!(engine.policy().policy_count(), 2);
    let read = |who: &str, doc: &str| {
        engine
            .decide(&request(serde_json::json!({
                "subject": {"type": "User", "id": who}, "action": "read",
                "resource": {"type": "Doc", "id": doc}})))
            .unwrap()
    };
    assert_eq!(read("alice", "d2").decision, Decision::Allow);
    assert_eq!(read("alice", "d1").reasons, ["no_matching_permit"]);
    let bob = read("bob", "d1");
    assert_eq!(bob.decision, Decision::Deny);
    assert_eq!(bob.reasons, ["bob_is_banned"]);
    assert_eq!(bob.policies, ["no-bob"]);
}

#[test]
fn policies_without_id_get_file_position_ids() {
    let dir = temp_package(&[(
        "p.cedar",
        "permit(principal, action, resource);\nforbid(principal, action, resource) when { context has x };",
    )]);
    let package = load_package(dir.path()).unwrap();
    let mut ids: Vec<String> = package
        .policies()
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["p.cedar#1", "p.cedar#2"]);
}

#[test]
fn duplicate_ids_reason_on_permit_and_templates_are_rejected() {
    let dup = temp_package(&[
        (
            "a.cedar",
            "@id(\"x\")\npermit(principal, action, resource);",
        ),
        (
            "b.cedar",
            "\n\n@id(\"x\")\nforbid(principal, action, resource);",
        ),
    ]);
    let err = load_package(dup.path()).unwrap_err();
    let e = &err.source_errors()[0];
    assert!(e.message.contains("duplicate policy id `x`"), "{err}");
    assert!(e.path.ends_with("b.cedar") && e.line == Some(3), "{err}");

    let reason = temp_package(&[(
        "a.cedar",
        "@id(\"p\")\n@reason(\"r\")\npermit(principal, action, resource);",
    )]);
    let err = load_package(reason.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("`@reason` belongs on `forbid` policies"),
        "{err}"
    );

    let template = temp_package(&[(
        "a.cedar",
        "permit(principal == ?principal, action, resource);",
    )]);
    let err = load_package(template.path()).unwrap_err();
    assert!(err.to_string().contains("templates"), "{err}");
}

#[test]
fn unusable_paths_are_explained() {
    let empty = temp_package(&[("README.txt", "nothing here")]);
    let err = load_package(empty.path()).unwrap_err().to_string();
    assert!(err.contains("holds no `*.cedar` files"), "{err}");
    let err = load_package(&empty.path().join("README.txt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported policy path"), "{err}");
    let err = load_package(&empty.path().join("missing.cedar"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");
    let two_schemas = temp_package(&[
        ("a.cedar", "permit(principal, action, resource);"),
        ("a.cedarschema", "entity A;"),
        ("b.cedarschema", "entity B;"),
    ]);
    let err = load_package(two_schemas.path()).unwrap_err().to_string();
    assert!(err.contains("more than one schema"), "{err}");
    let no_blocks = temp_package(&[("p.md", "# nothing\n```text\nhi\n```\n")]);
    let err = load_package(&no_blocks.path().join("p.md"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no ```cedar blocks"), "{err}");
}

#[test]
fn registry_errors_name_actor_and_field() {
    let mut snapshot: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_path(
            "registry/ops-warden/production_registry_snapshot.json",
        ))
        .unwrap(),
    )
    .unwrap();
    snapshot["actors"][2]["max_ttl_hours"] = serde_json::json!(0);
    let dir = temp_package(&[("r.json", &snapshot.to_string())]);
    let err = load_snapshot(&dir.path().join("r.json"), None).unwrap_err();
    let RegistryError::Schema { errors, .. } = &err else {
        panic!("expected a schema error, got {err}");
    };
    assert!(
        errors.iter().any(|e| e.starts_with(
            "actors[2].max_ttl_hours (actor `atm-backup-daily`): expected integer ≥ 1"
        )),
        "{err}"
    );
}

#[test]
fn registry_that_breaks_the_cedar_schema_is_rejected_naming_the_entity() {
    let mut snapshot: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo_path(
            "registry/ops-warden/production_registry_snapshot.json",
        ))
        .unwrap(),
    )
    .unwrap();
    snapshot["actors"][0]["attributes"]["shoe_size"] = serde_json::json!(44);
    let dir = temp_package(&[("r.json", &snapshot.to_string())]);
    let package = load_package(&repo_path("policies/ops-warden")).unwrap();
    let err = load_snapshot(&dir.path().join("r.json"), package.schema())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shoe_size") && err.contains("agt-state-hub-bridge"),
        "{err}"
    );
}

#[test]
fn truncated_registry_is_rejected_with_position() {
    let text = std::fs::read_to_string(repo_path(
        "registry/ops-warden/production_registry_snapshot.json",
    ))
    .unwrap();
    let dir = temp_package(&[("r.json", &text[..text.len() / 2])]);
    let err = load_snapshot(&dir.path().join("r.json"), None).unwrap_err();
    assert!(matches!(err, RegistryError::Json { .. }), "{err}");
    assert!(err.to_string().contains("invalid JSON"), "{err}");
}

#[test]
fn raw_entities_file_must_be_an_array_of_entities() {
    let dir = temp_package(&[
        ("e.json", r#"{"uid": 1}"#),
        ("bad.json", r#"[{"uid": {"type": "User"}}]"#),
    ]);
    let err = load_entities(&dir.path().join("e.json"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected a JSON array"), "{err}");
    let err = load_entities(&dir.path().join("bad.json"), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.json"), "{err}");
}

#[test]
fn engine_decides_directly_from_loaded_sources() {
    let sources = ops_warden();
    let engine = load(&sources).unwrap();
    let outcome = engine
        .decide(&request(serde_json::json!({
            "subject": {"id": "atm-backup-daily"}, "action": "sign",
            "resource": {"type": "Actor", "id": "atm-backup-daily"},
            "context": {"ttl_hours": 2, "principals": ["backup"]}})))
        .unwrap();
    assert_eq!(outcome.decision, Decision::Allow);
}

#[test]
fn schema_directed_conversions_still_apply_to_context_and_attributes() {
    // Entity references written as plain {type, id} and an ipaddr written as a string only mean
    // what they say through the schema; the direct conversion must not change that.
    let dir = temp_package(&[
        (
            "schema.cedarschema",
            "entity User; entity Host { owner: User, addr: ipaddr };
             action login appliesTo { principal: User, resource: Host, context: { via: User, from: ipaddr } };",
        ),
        (
            "p.cedar",
            r#"@id("owner-from-lan")
permit(principal, action == Action::"login", resource)
when { resource.owner == principal && context.via == principal && context.from.isInRange(ip("10.0.0.0/8")) };"#,
        ),
        (
            "entities.json",
            r#"[{"uid": {"type": "Host", "id": "h1"},
                 "attrs": {"owner": {"type": "User", "id": "alice"}, "addr": "10.1.2.3"}, "parents": []}]"#,
        ),
    ]);
    let engine = load(&Sources {
        policy: dir.path().to_path_buf(),
        registry: RegistrySource::Entities(dir.path().join("entities.json")),
    })
    .unwrap();
    let login = |who: &str, from: &str| {
        engine
            .decide(&request(serde_json::json!({
                "subject": {"type": "User", "id": who}, "action": "login",
                "resource": {"type": "Host", "id": "h1"},
                "context": {"via": {"type": "User", "id": who}, "from": from}})))
            .unwrap()
    };
    assert_eq!(login("alice", "10.9.9.9").decision, Decision::Allow);
    assert_eq!(login("alice", "192.168.1.1").decision, Decision::Deny);
    assert_eq!(login("bob", "10.9.9.9").decision, Decision::Deny);
    // The explicit escape form reads the same.
    let escaped = engine
        .decide(&request(serde_json::json!({
            "subject": {"type": "User", "id": "alice"}, "action": "login",
            "resource": {"type": "Host", "id": "h1"},
            "context": {"via": {"__entity": {"type": "User", "id": "alice"}},
                        "from": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}}})))
        .unwrap();
    assert_eq!(escaped.decision, Decision::Allow);
}

#[test]
fn snapshot_attributes_needing_the_schema_are_converted() {
    let dir = temp_package(&[
        (
            "schema.cedarschema",
            "entity Subject; entity Team; entity Actor in [Team] { \"type\": String, principals: Set<String>,
               allowed_subjects: Set<Subject>, max_ttl_hours: Long, default_ttl_hours: Long, bastion: ipaddr };
             action sign appliesTo { principal: Subject, resource: Actor, context: {} };",
        ),
        (
            "p.cedar",
            r#"permit(principal, action, resource is Actor) when { resource.bastion.isLoopback() && principal in resource.allowed_subjects };"#,
        ),
        (
            "r.json",
            r#"{"schema_version": "1.0", "generated_at": "2026-11-01T00:00:00Z", "source": "t",
                "actors": [{"id": "a", "type": "agent", "principals": [], "allowed_subjects": ["a"],
                            "max_ttl_hours": 1, "default_ttl_hours": 1, "attributes": {"bastion": "127.0.0.1"}}]}"#,
        ),
    ]);
    let engine = load(&Sources {
        policy: dir.path().to_path_buf(),
        registry: RegistrySource::Snapshot(dir.path().join("r.json")),
    })
    .unwrap();
    let outcome = engine
        .decide(&request(serde_json::json!({
            "subject": {"id": "a"}, "action": "sign", "resource": {"type": "Actor", "id": "a"}, "context": {}})))
        .unwrap();
    assert_eq!(outcome.decision, Decision::Allow, "{outcome:?}");
}

#[test]
fn every_problem_anchor_the_code_prints_is_in_the_runbook() {
    let runbook = std::fs::read_to_string(repo_path("docs/runbook.md")).unwrap();
    let headings: Vec<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(str::trim)
        .collect();
    for problem in flex_auth::cli::BOOT_ONLY_PROBLEMS {
        let boot = format!("boot-{problem}");
        assert!(
            headings.contains(&boot.as_str()),
            "runbook lacks `### {boot}`"
        );
    }
    for anchor in [
        flex_auth::auth::PROBLEM,
        flex_auth::audit::PROBLEM,
        flex_auth::proxy::UPSTREAM_PROBLEM,
        flex_auth::api::SHUTTING_DOWN,
    ] {
        assert!(headings.contains(&anchor), "runbook lacks `### {anchor}`");
    }
    for problem in flex_auth::state::PROBLEMS {
        assert!(headings.contains(&problem), "runbook lacks `### {problem}`");
        if problem != "not-loaded" {
            let boot = format!("boot-{problem}");
            assert!(
                headings.contains(&boot.as_str()),
                "runbook lacks `### {boot}`"
            );
        }
    }
}
