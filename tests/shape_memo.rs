//! A snapshot load asks Cedar about one actor of each shape and accepts the others of that shape
//! unasked (`registry::shape`). The claim: Cedar's schema check depends on an actor's shape, not
//! its values, except for enumerated entity types and actions. This test generates Cedar schemas
//! (free attributes of every type, required and optional, fixed fields declared with unusual
//! types, parents allowed or not, enumerated types) and snapshots of many actors that share a few
//! shapes, with occasional actors whose values break the schema; it loads each snapshot through
//! the compact path and, as the oracle, through Cedar's whole-store validation of the entities the
//! snapshot stands for (the `--entities` loader), and asserts that both accept or both refuse, and
//! that every accepted actor's attributes are the ones Cedar holds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema};
use flex_auth::registry::{parse_entities, parse_snapshot, snapshot_entities_json, Registry};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Free attribute names and the Cedar types a schema may give them.
const NAMES: [&str; 4] = ["owner", "level", "tags", "meta"];
const TYPES: [&str; 7] = [
    "String",
    "Long",
    "Bool",
    "Set<String>",
    "Set<Long>",
    "{ a: String, b?: Long }",
    "Set<{ a: String }>",
];

/// Values an actor may hold for a free attribute: each fits some of `TYPES`, or none.
fn value(choice: u8) -> Value {
    match choice % 12 {
        0 => json!("x"),
        1 => json!(7),
        2 => json!(true),
        3 => json!([]),
        4 => json!(["a", "b"]),
        5 => json!([1, 2]),
        6 => json!({"a": "x"}),
        7 => json!({"a": "x", "b": 3}),
        8 => json!({"a": 1}),
        9 => json!([{"a": "x"}, {"a": "y"}]),
        10 => json!(["a", 1]),
        _ => json!({"a": "x", "c": true}),
    }
}

#[derive(Debug, Clone)]
struct Declared {
    /// (name, type index, required) per declared free attribute.
    attributes: Vec<(usize, usize, bool)>,
    /// `principals` declared as `Set<Long>`: only an empty set then fits.
    principals_long: bool,
    /// Actors may be members of `Team` / of other actors.
    team_parent: bool,
    actor_parent: bool,
    /// `Subject` is an enumerated type holding only `s1`.
    subject_enum: bool,
}

impl Declared {
    fn schema(&self) -> Schema {
        let mut fields = vec![
            "type: String".to_owned(),
            format!(
                "principals: {}",
                if self.principals_long {
                    "Set<Long>"
                } else {
                    "Set<String>"
                }
            ),
            "allowed_subjects: Set<Subject>".to_owned(),
            "max_ttl_hours: Long".to_owned(),
            "default_ttl_hours: Long".to_owned(),
        ];
        for &(name, ty, required) in &self.attributes {
            let mark = if required { "" } else { "?" };
            fields.push(format!("{}{mark}: {}", NAMES[name], TYPES[ty]));
        }
        let mut parents = Vec::new();
        if self.team_parent {
            parents.push("Team");
        }
        if self.actor_parent {
            parents.push("Actor");
        }
        let member_of = if parents.is_empty() {
            String::new()
        } else {
            format!(" in [{}]", parents.join(", "))
        };
        let subject = if self.subject_enum {
            "entity Subject enum [\"s1\"];"
        } else {
            "entity Subject;"
        };
        let text = format!(
            "{subject}\nentity Team;\nentity Actor{member_of} {{ {} }};\naction sign appliesTo {{ principal: Subject, resource: Actor }};",
            fields.join(", ")
        );
        Schema::from_cedarschema_str(&text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .0
    }
}

fn declared() -> impl Strategy<Value = Declared> {
    (
        prop::collection::btree_map(0..NAMES.len(), (0..TYPES.len(), any::<bool>()), 0..=3),
        prop::bool::weighted(0.15),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(attributes, principals_long, team_parent, actor_parent, subject_enum)| Declared {
                attributes: attributes
                    .into_iter()
                    .map(|(name, (ty, required))| (name, ty, required))
                    .collect(),
                principals_long,
                team_parent,
                actor_parent,
                subject_enum,
            },
        )
}

/// An actor's free attributes as (name, value choice), its principals' and subjects' forms and
/// its parents' forms.
#[derive(Debug, Clone)]
struct Shape {
    attributes: Vec<(usize, u8)>,
    principals: bool,
    subject: u8,
    parent: u8,
}

/// The values of `value` that fit `TYPES[ty]`.
fn fitting(ty: usize) -> &'static [u8] {
    match ty {
        0 => &[0],
        1 => &[1],
        2 => &[2],
        3 => &[3, 4],
        4 => &[3, 5],
        5 => &[6, 7],
        _ => &[3, 9],
    }
}

/// Mostly shapes the schema accepts (so that shapes are accepted and then reused), sometimes
/// not: an optional attribute left out, a value of another type, an undeclared attribute.
fn shape(declared: &Declared) -> impl Strategy<Value = Shape> {
    let attributes: Vec<_> = declared
        .attributes
        .iter()
        .map(|&(name, ty, required)| {
            (
                prop::bool::weighted(if required { 0.97 } else { 0.7 }),
                prop::bool::weighted(0.9),
                prop::sample::select(fitting(ty)),
                any::<u8>(),
            )
                .prop_map(move |(present, fits, good, other)| {
                    present.then_some((name, if fits { good } else { other }))
                })
        })
        .collect();
    let extra = prop::option::weighted(0.1, (0..NAMES.len(), any::<u8>()));
    (
        attributes,
        extra,
        prop::bool::weighted(0.8),
        0u8..3,
        prop_oneof![4 => 0u8..3, 1 => 0u8..5],
    )
        .prop_map(|(attributes, extra, principals, subject, parent)| {
            let mut attributes: Vec<(usize, u8)> = attributes.into_iter().flatten().collect();
            if let Some((name, choice)) = extra {
                if !attributes.iter().any(|(n, _)| *n == name) {
                    attributes.push((name, choice));
                }
            }
            Shape {
                attributes,
                principals,
                subject,
                parent,
            }
        })
}

/// `count` actors, each of one of `shapes` (values vary, shapes repeat), and every `odd`-th
/// actor with one value swapped for `swap` — usually of another shape.
fn snapshot(shapes: &[Shape], count: usize, odd: usize, swap: u8) -> Value {
    let actors: Vec<Value> = (0..count)
        .map(|i| {
            let shape = &shapes[i % shapes.len()];
            let mut attributes = Map::new();
            for (k, &(name, choice)) in shape.attributes.iter().enumerate() {
                let choice = if odd > 0 && i % odd == odd - 1 && k == 0 {
                    swap
                } else {
                    choice
                };
                attributes.insert(NAMES[name].to_owned(), value(choice));
            }
            let principals = if shape.principals {
                json!([format!("p{i}")])
            } else {
                json!([])
            };
            let subjects = match shape.subject {
                0 => json!([]),
                1 => json!(["s1"]),
                _ => json!([format!("s-{i}")]),
            };
            let relationships = match shape.parent {
                0 => json!([]),
                1 => json!([{"type": "Team", "id": format!("t{}", i % 3)}]),
                // An earlier actor: no cycles.
                2 if i > 0 => json!([{"type": "Actor", "id": format!("a{}", i / 2)}]),
                3 => json!([{"type": "Elsewhere", "id": "x"}]),
                4 => json!([{"type": "Action", "id": "sign"}]),
                _ => json!([]),
            };
            json!({
                "id": format!("a{i}"),
                "type": "agent",
                "principals": principals,
                "allowed_subjects": subjects,
                "max_ttl_hours": 8 + (i % 5),
                "default_ttl_hours": 1 + (i % 3),
                "relationships": relationships,
                "attributes": attributes,
            })
        })
        .collect();
    json!({
        "schema_version": "1.0",
        "generated_at": "2026-12-02T00:00:00Z",
        "source": "shape_memo",
        "actors": actors,
    })
}

fn attributes(registry: &Registry, id: &str) -> Value {
    let uid = EntityUid::from_type_name_and_id(
        EntityTypeName::from_str("Actor").unwrap(),
        EntityId::new(id),
    );
    let entity = registry
        .entity(&uid, &mut Vec::new())
        .unwrap_or_else(|| panic!("actor {id} missing"))
        .unwrap();
    entity.to_json_value().unwrap()["attrs"].clone()
}

/// Load `snapshot` both ways under `declared`'s schema; both accept or both refuse. Returns
/// whether it loaded.
fn check(declared: &Declared, snapshot: &Value) -> bool {
    let schema = declared.schema();
    let bytes = serde_json::to_vec(snapshot).unwrap();
    let compact = parse_snapshot(&bytes, "generated", Some(&schema));
    let whole = snapshot_entities_json(&bytes, "generated").and_then(|entities| {
        parse_entities(
            &serde_json::to_vec(&entities).unwrap(),
            "generated",
            Some(&schema),
        )
    });
    match (compact, whole) {
        (Ok(compact), Ok(whole)) => {
            let count = snapshot["actors"].as_array().unwrap().len();
            for i in 0..count {
                let id = format!("a{i}");
                assert_eq!(
                    attributes(&compact, &id),
                    attributes(&whole, &id),
                    "actor {id} differs\n schema: {declared:?}"
                );
            }
            true
        }
        (Err(_), Err(_)) => false,
        (compact, whole) => panic!(
            "one store loads and the other does not:\n compact: {:?}\n whole: {:?}\n schema: {declared:?}\n snapshot: {snapshot}",
            compact.map(|_| ()),
            whole.map(|_| ())
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Many actors of a few shapes, across several validation batches, with an occasional
    /// actor of another shape.
    #[test]
    fn shapes_decide_as_cedar_does(
        (declared, shapes) in declared().prop_flat_map(|d| {
            let shapes = prop::collection::vec(shape(&d), 1..4);
            (Just(d), shapes)
        }),
        count in 1usize..600,
        odd in prop_oneof![Just(0usize), 1usize..700],
        swap in any::<u8>(),
    ) {
        check(&declared, &snapshot(&shapes, count, odd, swap));
    }
}

/// A shape Cedar accepts, then actors of the same attribute names with values of another type:
/// in the same batch, and in a later one.
#[test]
fn a_value_of_another_type_is_refused_after_its_shape_was_accepted() {
    let declared = Declared {
        attributes: vec![(0, 0, true)],
        principals_long: false,
        team_parent: true,
        actor_parent: false,
        subject_enum: false,
    };
    let good = Shape {
        attributes: vec![(0, 0)],
        principals: true,
        subject: 1,
        parent: 1,
    };
    assert!(check(
        &declared,
        &snapshot(std::slice::from_ref(&good), 600, 0, 0)
    ));
    for (count, odd) in [(10, 5), (600, 400)] {
        // Every `odd`-th actor holds a long where the schema says a string.
        assert!(!check(
            &declared,
            &snapshot(std::slice::from_ref(&good), count, odd, 1)
        ));
    }
}

/// Only one value of an enumerated type is declared: actors of one shape differ by their
/// subject's id alone, and Cedar refuses the one with an undeclared id.
#[test]
fn an_enumerated_type_is_checked_per_actor() {
    let declared = Declared {
        attributes: Vec::new(),
        principals_long: false,
        team_parent: false,
        actor_parent: false,
        subject_enum: true,
    };
    let enumerated = Shape {
        attributes: Vec::new(),
        principals: true,
        subject: 1,
        parent: 0,
    };
    assert!(check(
        &declared,
        &snapshot(std::slice::from_ref(&enumerated), 300, 0, 0)
    ));
    let other = Shape {
        subject: 2,
        ..enumerated.clone()
    };
    assert!(!check(
        &declared,
        &snapshot(&[enumerated, other], 300, 0, 0)
    ));
}
