//! The policy index by action gives the answers of the whole package.
//!
//! `Engine` hands Cedar only the policies whose action scope can match the request's action
//! (`policy::index`). The claim is that the others evaluate to `false` without an error, so leaving
//! them out changes neither the decision, nor the determining policies, nor the errors. This test
//! generates packages — with a schema declaring nested action groups and without one (where an
//! entities file gives actions parents of its own), policies with every kind of action scope
//! (`action`, `action == A`, `action in [A, G]`) and bodies that are true, false or an evaluation
//! error — loads each from real files with the package loader, and asserts that Cedar's answer on
//! `PolicyPackage::policies_for(action)` is its answer on the whole set, for every action a
//! request can name.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request, Response};
use flex_auth::policy::load_package;
use proptest::prelude::*;
use serde_json::json;

const ACTIONS: [&str; 5] = ["a0", "a1", "a2", "a3", "a4"];
const GROUPS: [&str; 2] = ["g0", "g1"];

#[derive(Debug, Clone)]
enum Scope {
    Any,
    Eq(usize),
    In(Vec<usize>),
}

#[derive(Debug, Clone)]
struct GenPolicy {
    permit: bool,
    scope: Scope,
    body: usize,
}

/// An action or a group by index: actions first, then groups.
fn name(i: usize) -> &'static str {
    ACTIONS
        .iter()
        .chain(GROUPS.iter())
        .nth(i % (ACTIONS.len() + GROUPS.len()))
        .copied()
        .unwrap_or("a0")
}

const BODIES: [&str; 5] = [
    "true",
    "false",
    "context.x > 3",
    "resource.level < context.x",
    // An overflow for every x ≥ 2: an evaluation error that the validator accepts.
    "context.x * 9223372036854775807 > 0",
];

fn policy_text(n: usize, p: &GenPolicy) -> String {
    let effect = if p.permit { "permit" } else { "forbid" };
    let action = match &p.scope {
        Scope::Any => "action".to_owned(),
        Scope::Eq(i) => format!("action == Action::\"{}\"", name(*i)),
        Scope::In(list) => format!(
            "action in [{}]",
            list.iter()
                .map(|i| format!("Action::\"{}\"", name(*i)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "@id(\"p{n}\")\n{effect} (principal, {action}, resource) when {{ {} }};\n",
        BODIES[p.body % BODIES.len()]
    )
}

/// The schema: every action applies to User × Doc; each action is in the groups `memberships`
/// gives it, and `g1` is in `g0` when `nested`.
fn schema_text(memberships: &[Vec<usize>], nested: bool) -> String {
    let mut text = String::from("entity User;\nentity Doc { level: Long };\naction g0;\n");
    text.push_str(if nested {
        "action g1 in [g0];\n"
    } else {
        "action g1;\n"
    });
    for (i, action) in ACTIONS.iter().enumerate() {
        let groups: Vec<String> = memberships
            .get(i)
            .into_iter()
            .flatten()
            .map(|g| format!("Action::\"{}\"", GROUPS[g % GROUPS.len()]))
            .collect();
        let parents = if groups.is_empty() {
            String::new()
        } else {
            format!(" in [{}]", groups.join(", "))
        };
        text.push_str(&format!(
            "action {action}{parents} appliesTo {{ principal: User, resource: Doc, context: {{ x: Long }} }};\n"
        ));
    }
    text
}

/// The entities: users, documents, and — without a schema — the actions with the parents
/// `memberships` gives them (an entities file may do that when no schema declares the actions).
fn entities_json(
    memberships: &[Vec<usize>],
    nested: bool,
    with_actions: bool,
) -> serde_json::Value {
    let mut entities = vec![
        json!({"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": []}),
        json!({"uid": {"type": "Doc", "id": "low"}, "attrs": {"level": 1}, "parents": []}),
        json!({"uid": {"type": "Doc", "id": "high"}, "attrs": {"level": 9}, "parents": []}),
    ];
    if with_actions {
        let group = |g: &str| json!({"type": "Action", "id": g});
        entities.push(json!({"uid": group("g0"), "attrs": {}, "parents": []}));
        let g1_parents = if nested { vec![group("g0")] } else { vec![] };
        entities.push(json!({"uid": group("g1"), "attrs": {}, "parents": g1_parents}));
        for (i, action) in ACTIONS.iter().enumerate() {
            let parents: Vec<serde_json::Value> = memberships
                .get(i)
                .into_iter()
                .flatten()
                .map(|g| group(GROUPS[g % GROUPS.len()]))
                .collect();
            entities.push(json!({"uid": group(action), "attrs": {}, "parents": parents}));
        }
    }
    json!(entities)
}

/// Decision, sorted determining policies, sorted (policy, message) errors.
fn answer(response: &Response) -> (bool, Vec<String>, Vec<String>) {
    let mut reasons: Vec<String> = response
        .diagnostics()
        .reason()
        .map(ToString::to_string)
        .collect();
    reasons.sort();
    let mut errors: Vec<String> = response
        .diagnostics()
        .errors()
        .map(ToString::to_string)
        .collect();
    errors.sort();
    (
        response.decision() == cedar_policy::Decision::Allow,
        reasons,
        errors,
    )
}

fn scope() -> impl Strategy<Value = Scope> {
    let n = ACTIONS.len() + GROUPS.len();
    prop_oneof![
        Just(Scope::Any),
        (0..n).prop_map(Scope::Eq),
        proptest::collection::vec(0..n, 1..4).prop_map(Scope::In),
    ]
}

fn policy() -> impl Strategy<Value = GenPolicy> {
    (any::<bool>(), scope(), 0..BODIES.len()).prop_map(|(permit, scope, body)| GenPolicy {
        permit,
        scope,
        body,
    })
}

/// Fewer policies than the whole set were handed to Cedar in at least one request of the run.
static NARROWED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn check_package(
    policies: &[GenPolicy],
    memberships: &[Vec<usize>],
    nested: bool,
    with_schema: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let text: String = policies
        .iter()
        .enumerate()
        .map(|(n, p)| policy_text(n, p))
        .collect();
    std::fs::write(dir.path().join("policies.cedar"), &text).unwrap();
    if with_schema {
        std::fs::write(
            dir.path().join("schema.cedarschema"),
            schema_text(memberships, nested),
        )
        .unwrap();
    }
    // A generated policy the validator refuses (an `in` scope naming only groups that no
    // action applying to User × Doc is in) is not a package: nothing to compare.
    let Ok(package) = load_package(dir.path()) else {
        return;
    };
    let schema = package.schema();
    let entities =
        Entities::from_json_value(entities_json(memberships, nested, !with_schema), schema)
            .unwrap();
    let whole: &PolicySet = package.policies();
    let authorizer = Authorizer::new();
    // Every action and group, and (without a schema) an action nothing names.
    for action in ACTIONS
        .iter()
        .chain(GROUPS.iter())
        .chain(["elsewhere"].iter())
    {
        let action = EntityUid::from_str(&format!("Action::\"{action}\"")).unwrap();
        for resource in ["low", "high"] {
            for x in [0_i64, 2, 5] {
                let context = Context::from_json_value(json!({"x": x}), None).unwrap();
                let Ok(request) = Request::new(
                    EntityUid::from_str("User::\"u\"").unwrap(),
                    action.clone(),
                    EntityUid::from_str(&format!("Doc::\"{resource}\"")).unwrap(),
                    context,
                    schema,
                ) else {
                    // The schema refuses the request (a group, an undeclared action): the engine
                    // never evaluates it.
                    continue;
                };
                let narrowed = package.policies_for(Some(&action));
                if narrowed.policies().count() < whole.policies().count() {
                    NARROWED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let expected = answer(&authorizer.is_authorized(&request, whole, &entities));
                let got = answer(&authorizer.is_authorized(&request, narrowed, &entities));
                assert_eq!(
                    got, expected,
                    "action {action}, resource {resource}, x = {x}\npolicies:\n{text}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_index_answers_as_the_whole_package(
        policies in proptest::collection::vec(policy(), 1..10),
        memberships in proptest::collection::vec(proptest::collection::vec(0..GROUPS.len(), 0..3), ACTIONS.len()),
        nested in any::<bool>(),
        with_schema in any::<bool>(),
    ) {
        check_package(&policies, &memberships, nested, with_schema);
    }
}

#[test]
fn the_generated_packages_do_narrow_the_set() {
    // Deterministic cases that must narrow: an `==` scope per action, with and without a schema.
    let policies: Vec<GenPolicy> = (0..ACTIONS.len())
        .map(|i| GenPolicy {
            permit: i % 2 == 0,
            scope: Scope::Eq(i),
            body: i,
        })
        .chain([GenPolicy {
            permit: true,
            scope: Scope::In(vec![ACTIONS.len()]),
            body: 2,
        }])
        .collect();
    let memberships = vec![vec![0], vec![1], vec![], vec![0, 1], vec![]];
    let before = NARROWED.load(std::sync::atomic::Ordering::Relaxed);
    check_package(&policies, &memberships, true, true);
    check_package(&policies, &memberships, true, false);
    let after = NARROWED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after - before >= 20,
        "only {} narrowed requests",
        after - before
    );
}

#[test]
fn the_shipped_packages_are_indexed_where_they_can_be() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // ops-warden has one action, every policy of which names it: nothing to leave out.
    let ops = load_package(&root.join("policies/ops-warden")).unwrap();
    assert_eq!(ops.indexed_actions(), 0);
    let todo = load_package(&root.join("policies/authzen-interop-todo")).unwrap();
    assert!(
        todo.indexed_actions() > 0,
        "the todo package has one policy set per action"
    );
}

#[test]
fn with_a_schema_an_entities_file_cannot_put_an_action_in_another_group() {
    // The index trusts the schema's action groups. An entities file that claims `a0` is in `g0`
    // when the schema says it is not must not make `action in [g0]` match where the narrowed set
    // has left that policy out: Cedar refuses such a file, or the schema's groups win.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policies.cedar"),
        "@id(\"group\") permit (principal, action in [Action::\"g0\"], resource);\n\
         @id(\"a1\") permit (principal, action == Action::\"a1\", resource);\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("schema.cedarschema"),
        "entity User;\nentity Doc { level: Long };\naction g0;\n\
         action a0 appliesTo { principal: User, resource: Doc, context: { x: Long } };\n\
         action a1 in [g0] appliesTo { principal: User, resource: Doc, context: { x: Long } };\n",
    )
    .unwrap();
    let package = load_package(dir.path()).unwrap();
    let schema = package.schema();
    let a0 = EntityUid::from_str("Action::\"a0\"").unwrap();
    assert_eq!(
        package.policies_for(Some(&a0)).policies().count(),
        0,
        "no policy can apply to a0"
    );
    let json = json!([
        {"uid": {"type": "User", "id": "u"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Doc", "id": "d"}, "attrs": {"level": 1}, "parents": []},
        {"uid": {"type": "Action", "id": "a0"}, "attrs": {},
         "parents": [{"type": "Action", "id": "g0"}]},
    ]);
    let Ok(entities) = Entities::from_json_value(json, schema) else {
        return; // refused: nothing can disagree
    };
    let request = Request::new(
        EntityUid::from_str("User::\"u\"").unwrap(),
        a0.clone(),
        EntityUid::from_str("Doc::\"d\"").unwrap(),
        Context::from_json_value(json!({"x": 1}), None).unwrap(),
        schema,
    )
    .unwrap();
    let authorizer = Authorizer::new();
    assert_eq!(
        answer(&authorizer.is_authorized(&request, package.policies_for(Some(&a0)), &entities)),
        answer(&authorizer.is_authorized(&request, package.policies(), &entities)),
    );
}
