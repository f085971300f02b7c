//! The compact actor store gives the answers Cedar's whole store gives.
//!
//! A snapshot's actors are kept compact and every request is evaluated on the slice of entities
//! it reaches, rebuilt from the compact store (`decision`, `registry::compact`). The claim is that
//! Cedar reads entities only along the paths the slice follows, so the answer is the one the whole
//! store would give. This test generates registries (parents among actors and teams, shared
//! subjects, free attributes of every JSON type: strings, longs, booleans, sets, records, entity
//! references, decimals and IP addresses) and requests, loads each registry twice — as a snapshot
//! (compact) and as the Cedar entities JSON it stands for, through `--entities`' loader (Cedar's
//! whole store) — and asserts identical decisions, reasons, policies and errors, with and without
//! AuthZEN properties in every mode, for the shipped ops-warden package and for generated ones.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

use std::path::{Path, PathBuf};

use flex_auth::decision::PropertiesMode;
use flex_auth::policy::{load_package, PolicyPackage};
use flex_auth::registry::{parse_entities, parse_snapshot, snapshot_entities_json};
use flex_auth::{CheckRequest, Engine};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const ACTOR_POOL: usize = 6;

fn package(path: &Path) -> PolicyPackage {
    load_package(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Both engines for one snapshot, or both load errors (which must then both be errors).
fn engines(load: impl Fn() -> PolicyPackage, snapshot: &Value) -> Option<(Engine, Engine)> {
    let bytes = serde_json::to_vec(snapshot).unwrap();
    let compact_package = load();
    let compact = parse_snapshot(&bytes, "generated", compact_package.schema());
    let whole = snapshot_entities_json(&bytes, "generated").and_then(|json| {
        let package = load();
        let registry = parse_entities(
            &serde_json::to_vec(&json).unwrap(),
            "generated",
            package.schema(),
        )?;
        Ok((package, registry))
    });
    match (compact, whole) {
        (Ok(compact), Ok((package, whole))) => Some((
            Engine::new(compact_package, compact).unwrap(),
            Engine::new(package, whole).unwrap(),
        )),
        (Err(_), Err(_)) => None,
        (compact, whole) => panic!(
            "one store loads and the other does not:\n compact: {:?}\n whole: {:?}\n snapshot: {snapshot}",
            compact.map(|_| ()),
            whole.map(|_| ())
        ),
    }
}

/// Decision, reasons, policies and (policy, message) errors: an outcome without its random id.
type Answer = (String, Vec<String>, Vec<String>, Vec<(String, String)>);

/// The answer without its (random) decision id.
fn answer(
    result: Result<flex_auth::decision::Outcome, flex_auth::decision::RequestError>,
) -> Result<Answer, String> {
    result
        .map(|o| {
            (
                o.decision.as_str().to_owned(),
                o.reasons,
                o.policies,
                o.errors
                    .into_iter()
                    .map(|e| (e.policy, e.message))
                    .collect(),
            )
        })
        .map_err(|e| e.to_string())
}

/// Whether `props` on this side of the request may be compared: in `extend` mode a snapshot is
/// the only source of actors (properties never make an unknown actor exist) while a raw entities
/// file is not, by design (docs/authzen.md) — so an actor the registry lacks is left out.
fn comparable(mode: PropertiesMode, entity_type: Option<&str>, id: &str, ids: &[String]) -> bool {
    mode != PropertiesMode::Extend
        || entity_type != Some("Actor")
        || ids.iter().any(|known| known == id)
}

fn ids_of(snapshot: &Value) -> Vec<String> {
    snapshot["actors"]
        .as_array()
        .map(|actors| {
            actors
                .iter()
                .filter_map(|a| a["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn assert_same(
    compact: &Engine,
    whole: &Engine,
    ids: &[String],
    request: &CheckRequest,
    props: Option<&Value>,
) {
    let plain = (
        answer(compact.decide(request)),
        answer(whole.decide(request)),
    );
    assert_eq!(plain.0, plain.1, "decide differs for {request:?}");
    if let Some(Value::Object(props)) = props {
        for mode in [
            PropertiesMode::Extend,
            PropertiesMode::Override,
            PropertiesMode::Ignore,
        ] {
            let subject_type = request.subject.entity_type.as_deref().or(Some("Subject"));
            let sides = [
                (Some(props), None, subject_type, &request.subject.id),
                (
                    None,
                    Some(props),
                    Some(request.resource.entity_type.as_str()),
                    &request.resource.id,
                ),
            ];
            for (subject, resource, entity_type, id) in sides {
                if !comparable(mode, entity_type, id, ids) {
                    continue;
                }
                let c = answer(compact.decide_with_properties(request, subject, resource, mode));
                let w = answer(whole.decide_with_properties(request, subject, resource, mode));
                assert_eq!(
                    c, w,
                    "properties ({mode:?}) differ for {request:?} with {props:?}"
                );
            }
        }
    }
}

fn snapshot(actors: Vec<Value>) -> Value {
    json!({
        "schema_version": "1.0",
        "generated_at": "2026-12-02T00:00:00Z",
        "source": "slice equivalence",
        "actors": actors,
    })
}

fn subject_pool() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(vec!["s0", "s1", "s2", "a0", "iam:a1"], 0..=3)
        .prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

fn principal_pool() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(vec!["shared", "root", "deploy"], 0..=3)
        .prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

fn teams() -> impl Strategy<Value = Vec<Value>> {
    proptest::sample::subsequence(vec!["t0", "t1", "t2"], 0..=2).prop_map(|v| {
        v.into_iter()
            .map(|id| json!({"type": "Team", "id": id}))
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// The shipped ops-warden package (schema, strict validation).

fn ops_warden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/ops-warden")
}

fn ops_warden_actor(i: usize) -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("agent"), Just("admin")],
        principal_pool(),
        subject_pool(),
        1i64..10,
        teams(),
        proptest::option::of(prop_oneof![Just("team-a"), Just("team-b")]),
        proptest::option::of(Just("production")),
    )
        .prop_map(
            move |(kind, principals, subjects, max, rels, owner, environment)| {
                let mut attributes = Map::new();
                if let Some(owner) = owner {
                    attributes.insert("owner".into(), json!(owner));
                }
                if let Some(environment) = environment {
                    attributes.insert("environment".into(), json!(environment));
                }
                json!({
                    "id": format!("a{i}"), "type": kind, "principals": principals,
                    "allowed_subjects": subjects, "max_ttl_hours": max,
                    "default_ttl_hours": 1, "relationships": rels, "attributes": attributes,
                })
            },
        )
}

fn ops_warden_registry() -> impl Strategy<Value = Value> {
    (0..=ACTOR_POOL).prop_flat_map(|n| {
        (0..n)
            .map(ops_warden_actor)
            .collect::<Vec<_>>()
            .prop_map(snapshot)
    })
}

fn ops_warden_request() -> impl Strategy<Value = (CheckRequest, Value)> {
    (
        prop_oneof![Just("s0"), Just("s1"), Just("a0"), Just("iam:a1")],
        0..=ACTOR_POOL,
        -1i64..12,
        principal_pool(),
        proptest::option::of((1i64..12, prop_oneof![Just("team-a"), Just("team-c")])),
    )
        .prop_map(|(subject, resource, ttl, principals, props)| {
            let request = serde_json::from_value(json!({
                "subject": {"id": subject},
                "action": "sign",
                "resource": {"type": "Actor", "id": format!("a{resource}")},
                "context": {"ttl_hours": ttl, "principals": principals},
            }))
            .unwrap();
            let props = props.map_or(
                Value::Null,
                |(max, owner)| json!({"max_ttl_hours": max, "owner": owner}),
            );
            (request, props)
        })
}

// ---------------------------------------------------------------------------------------------
// Generated packages (no schema): policies that read attributes, follow references and
// parents, name entities literally, and fail to evaluate.

const POLICIES: [&str; 14] = [
    r#"@id("level-at-least") permit (principal, action == Action::"read", resource) when { resource has level && resource.level >= context.min };"#,
    r#"@id("team-zero") permit (principal, action, resource in Team::"t0");"#,
    r#"@id("manager-level") @reason("manager_too_high") forbid (principal, action, resource) when { resource has manager && resource.manager.level > 3 };"#,
    r#"@id("subjects") permit (principal, action == Action::"sign", resource) when { resource has allowed_subjects && resource.allowed_subjects.contains(principal) };"#,
    r#"@id("flag-errors") @reason("flagged") forbid (principal, action == Action::"write", resource) when { resource.flag };"#,
    r#"@id("decimal-limit") permit (principal, action, resource) when { resource has limit && resource.limit.lessThan(decimal("2.0")) };"#,
    r#"@id("ip-range") permit (principal, action, resource) when { resource has net && resource.net.isInRange(ip("10.0.0.0/8")) };"#,
    r#"@id("s2-under-a0") @reason("s2_barred") forbid (principal == Subject::"s2", action, resource in Actor::"a0");"#,
    r#"@id("manager-team") permit (principal, action, resource) when { resource has manager && resource.manager in Team::"t1" };"#,
    r#"@id("meta-and-context") permit (principal, action, resource) when { resource has meta && resource.meta.name == "x" && context has other && context.other in Team::"t2" };"#,
    r#"@id("actor-principal") permit (principal in Actor::"a1", action == Action::"read", resource);"#,
    r#"@id("blocked-tag") @reason("blocked") forbid (principal, action, resource) when { resource has tags && resource.tags.contains("blocked") };"#,
    r#"@id("literal-read") permit (principal, action == Action::"write", resource) when { Actor::"a2" has level && Actor::"a2".level > 1 };"#,
    r#"@id("manager-chain") permit (principal, action, resource) when { resource has manager && resource.manager has manager && resource.manager.manager has level && resource.manager.manager.level == 1 };"#,
];

fn free_attributes(i: usize) -> impl Strategy<Value = Map<String, Value>> {
    (
        proptest::option::of(0i64..6),
        proptest::option::of(proptest::sample::subsequence(
            vec!["blocked", "red", "x"],
            0..=2,
        )),
        proptest::option::of(any::<bool>()),
        proptest::option::of((0i64..3, prop_oneof![Just("x"), Just("y")])),
        // A reference to another actor (possibly one not in the registry) or a team.
        proptest::option::of(prop_oneof![
            (0..=ACTOR_POOL)
                .prop_map(|m| json!({"__entity": {"type": "Actor", "id": format!("a{m}")}})),
            Just(json!({"__entity": {"type": "Team", "id": "t1"}})),
        ]),
        proptest::option::of(prop_oneof![Just("1.5"), Just("2.5"), Just("-0.25")]),
        proptest::option::of(prop_oneof![Just("10.1.2.3"), Just("192.168.0.0/16")]),
    )
        .prop_map(move |(level, tags, flag, meta, manager, limit, net)| {
            let mut a = Map::new();
            if let Some(level) = level {
                a.insert("level".into(), json!(level));
            }
            if let Some(tags) = tags {
                a.insert("tags".into(), json!(tags));
            }
            if let Some(flag) = flag {
                a.insert("flag".into(), json!(flag));
            }
            if let Some((depth, name)) = meta {
                a.insert(
                    "meta".into(),
                    json!({"depth": depth, "name": name, "list": [depth, {"n": name}]}),
                );
            }
            // An actor refers only to actors after it, so references cannot loop forever in
            // a policy (they may still form any DAG).
            if let Some(manager) = manager {
                let later = manager["__entity"]["id"]
                    .as_str()
                    .and_then(|id| id.strip_prefix('a'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_none_or(|m| m > i);
                if later {
                    a.insert("manager".into(), manager);
                }
            }
            if let Some(limit) = limit {
                a.insert(
                    "limit".into(),
                    json!({"__extn": {"fn": "decimal", "arg": limit}}),
                );
            }
            if let Some(net) = net {
                a.insert("net".into(), json!({"__extn": {"fn": "ip", "arg": net}}));
            }
            a
        })
}

fn generated_actor(i: usize) -> impl Strategy<Value = Value> {
    (
        principal_pool(),
        subject_pool(),
        teams(),
        // Parents among the actors: mostly a later one (chains and DAGs), now and then any
        // actor (a cycle, which both stores must refuse).
        proptest::option::of(prop_oneof![
            9 => (i + 1)..=ACTOR_POOL,
            1 => 0..ACTOR_POOL,
        ]),
        free_attributes(i),
    )
        .prop_map(
            move |(principals, subjects, mut rels, parent, attributes)| {
                if let Some(p) = parent {
                    rels.push(json!({"type": "Actor", "id": format!("a{p}")}));
                }
                json!({
                    "id": format!("a{i}"), "type": "agent", "principals": principals,
                    "allowed_subjects": subjects, "max_ttl_hours": 8, "default_ttl_hours": 1,
                    "relationships": rels, "attributes": attributes,
                })
            },
        )
}

fn generated_registry() -> impl Strategy<Value = Value> {
    (0..=ACTOR_POOL).prop_flat_map(|n| {
        (0..n)
            .map(generated_actor)
            .collect::<Vec<_>>()
            .prop_map(snapshot)
    })
}

fn generated_request() -> impl Strategy<Value = (CheckRequest, Value)> {
    (
        prop_oneof![
            Just(json!({"id": "s0"})),
            Just(json!({"id": "s2"})),
            Just(json!({"id": "iam:a1"})),
            (0..=ACTOR_POOL).prop_map(|i| json!({"type": "Actor", "id": format!("a{i}")})),
        ],
        prop_oneof![Just("read"), Just("sign"), Just("write")],
        prop_oneof![
            (0..=ACTOR_POOL).prop_map(|i| json!({"type": "Actor", "id": format!("a{i}")})),
            Just(json!({"type": "Team", "id": "t0"})),
        ],
        0i64..6,
        any::<bool>(),
        proptest::option::of(prop_oneof![
            (0i64..6).prop_map(|l| json!({"level": l})),
            Just(json!({"flag": true, "tags": ["blocked"]})),
            Just(json!({"manager": {"__entity": {"type": "Actor", "id": "a3"}}})),
        ]),
    )
        .prop_map(|(subject, action, resource, min, other, props)| {
            let mut context = json!({"min": min});
            if other {
                context["other"] = json!({"__entity": {"type": "Team", "id": "t2"}});
            }
            let request = serde_json::from_value(json!({
                "subject": subject, "action": action, "resource": resource, "context": context,
            }))
            .unwrap();
            (request, props.unwrap_or(Value::Null))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ops_warden_slices_decide_as_the_whole_store(
        registry in ops_warden_registry(),
        requests in proptest::collection::vec(ops_warden_request(), 1..6),
    ) {
        let path = ops_warden_path();
        if let Some((compact, whole)) = engines(|| package(&path), &registry) {
            for (request, props) in &requests {
                assert_same(&compact, &whole, &ids_of(&registry), request, Some(props));
            }
        }
    }

    #[test]
    fn generated_packages_slices_decide_as_the_whole_store(
        policies in proptest::sample::subsequence(POLICIES.to_vec(), 1..=POLICIES.len()),
        registry in generated_registry(),
        requests in proptest::collection::vec(generated_request(), 1..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policies.cedar"), policies.join("\n")).unwrap();
        if let Some((compact, whole)) = engines(|| package(dir.path()), &registry) {
            for (request, props) in &requests {
                assert_same(&compact, &whole, &ids_of(&registry), request, Some(props));
            }
        }
    }
}

/// The generator reaches the interesting cases: a registry with references, parents and
/// extension values loads, and the slice and the whole store allow through a parent actor.
#[test]
fn a_parent_actor_and_references_decide_alike() {
    let registry = snapshot(vec![
        json!({"id": "a0", "type": "agent", "principals": [], "allowed_subjects": ["s0"],
               "max_ttl_hours": 8, "default_ttl_hours": 1,
               "relationships": [{"type": "Actor", "id": "a1"}],
               "attributes": {"manager": {"__entity": {"type": "Actor", "id": "a1"}},
                              "limit": {"__extn": {"fn": "decimal", "arg": "1.5"}}}}),
        json!({"id": "a1", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1,
               "relationships": [{"type": "Team", "id": "t0"}], "attributes": {"level": 5}}),
    ]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), POLICIES.join("\n")).unwrap();
    let (compact, whole) = engines(|| package(dir.path()), &registry).expect("loads");
    let request: CheckRequest = serde_json::from_value(json!({
        "subject": {"id": "s0"}, "action": "read",
        "resource": {"type": "Actor", "id": "a0"}, "context": {"min": 9},
    }))
    .unwrap();
    let outcome = compact.decide(&request).unwrap();
    // a0 is in Team t0 through its parent a1 (permit), and its manager a1 has level 5 (forbid).
    assert_eq!(outcome.reasons, vec!["manager_too_high".to_owned()]);
    assert_same(&compact, &whole, &ids_of(&registry), &request, None);
}

/// An actor that reaches a team only through a parent actor no policy names and nothing else
/// refers to: the slice must follow parents.
#[test]
fn a_team_reached_through_a_parent_actor_decides_alike() {
    let registry = snapshot(vec![
        json!({"id": "a3", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1,
               "relationships": [{"type": "Actor", "id": "a4"}]}),
        json!({"id": "a4", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1,
               "relationships": [{"type": "Team", "id": "t0"}]}),
    ]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), POLICIES[1]).unwrap();
    let (compact, whole) = engines(|| package(dir.path()), &registry).expect("loads");
    let request: CheckRequest = serde_json::from_value(json!({
        "subject": {"id": "s0"}, "action": "read", "resource": {"type": "Actor", "id": "a3"},
    }))
    .unwrap();
    assert_eq!(
        compact.decide(&request).unwrap().decision,
        flex_auth::Decision::Allow
    );
    assert_same(&compact, &whole, &ids_of(&registry), &request, None);
}

/// Slices are reused for later requests with the same principal, action and resource: two
/// requests that differ only in the principal must not share one (the second principal's
/// parents would be missing).
#[test]
fn requests_that_differ_only_in_the_principal_decide_alike() {
    let registry = snapshot(vec![
        json!({"id": "a0", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1,
               "relationships": [{"type": "Actor", "id": "a1"}]}),
        json!({"id": "a1", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1}),
        json!({"id": "a5", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1}),
    ]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policies.cedar"), POLICIES[10]).unwrap();
    let (compact, whole) = engines(|| package(dir.path()), &registry).expect("loads");
    let ids = ids_of(&registry);
    for (principal, expected) in [("a5", "deny"), ("a0", "allow"), ("a5", "deny")] {
        let request: CheckRequest = serde_json::from_value(json!({
            "subject": {"type": "Actor", "id": principal}, "action": "read",
            "resource": {"type": "Actor", "id": "a5"},
        }))
        .unwrap();
        assert_eq!(
            compact.decide(&request).unwrap().decision.as_str(),
            expected
        );
        assert_same(&compact, &whole, &ids, &request, None);
        // Again: now from the cache.
        assert_eq!(
            compact.decide(&request).unwrap().decision.as_str(),
            expected
        );
    }
}

/// A cycle through actors' relationships is refused by both stores, naming the actor.
#[test]
fn a_relationship_cycle_is_refused_naming_the_actor() {
    let registry = snapshot(vec![
        json!({"id": "a0", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1,
               "relationships": [{"type": "Actor", "id": "a1"}]}),
        json!({"id": "a1", "type": "agent", "principals": [], "allowed_subjects": [],
               "max_ttl_hours": 8, "default_ttl_hours": 1,
               "relationships": [{"type": "Actor", "id": "a0"}]}),
    ]);
    let bytes = serde_json::to_vec(&registry).unwrap();
    let err = parse_snapshot(&bytes, "cycle.json", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("relationships (actor `a"), "{err}");
    assert!(err.contains("cycle"), "{err}");
    let json = snapshot_entities_json(&bytes, "cycle.json").unwrap();
    assert!(parse_entities(&serde_json::to_vec(&json).unwrap(), "cycle.json", None).is_err());
}
