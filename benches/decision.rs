//! In-process decision latency (plain, and with AuthZEN-style resource properties) and registry
//! load+compile time over registries of 10, 1,000 and 100,000 generated actors. Results: docs/benchmarks.md. Run: `cargo bench --bench decision`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

mod support {
    pub mod generate;
}

use std::path::PathBuf;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use flex_auth::decision::PropertiesMode;
use flex_auth::policy::load_package;
use flex_auth::registry::parse_snapshot;
use flex_auth::{CheckRequest, Decision, Engine};

const SIZES: [usize; 3] = [10, 1_000, 100_000];

fn package_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/ops-warden")
}

fn request_for(actor: usize) -> CheckRequest {
    serde_json::from_value(serde_json::json!({
        "subject": {"id": format!("iam:agt-bench-{actor}")},
        "action": "sign",
        "resource": {"type": "Actor", "id": format!("agt-bench-{actor}")},
        "context": {"ttl_hours": 4, "principals": ["shared"]},
    }))
    .unwrap()
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for size in SIZES {
        let package = load_package(&package_path()).unwrap();
        let snapshot = support::generate::snapshot_json(size);
        let registry = parse_snapshot(snapshot.as_bytes(), "bench", package.schema()).unwrap();
        let engine = Engine::new(package, registry).unwrap();
        // An actor in the middle of the registry, so nothing favours the first entries.
        let request = request_for(size / 2);
        assert_eq!(engine.decide(&request).unwrap().decision, Decision::Allow);
        let mut deny = request.clone();
        deny.context
            .as_mut()
            .unwrap()
            .insert("ttl_hours".into(), 99.into());
        assert_eq!(engine.decide(&deny).unwrap().decision, Decision::Deny);
        group.bench_with_input(BenchmarkId::new("allow", size), &request, |b, r| {
            b.iter(|| engine.decide(black_box(r)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("deny", size), &deny, |b, r| {
            b.iter(|| engine.decide(black_box(r)).unwrap())
        });
        // AuthZEN `properties`: the resource's attributes overridden for this request, evaluated
        // on the slice of the registry the request reaches (cost must not grow with `size`).
        let properties: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({"max_ttl_hours": 6})).unwrap();
        assert_eq!(
            engine
                .decide_with_properties(&request, None, Some(&properties), PropertiesMode::Override)
                .unwrap()
                .decision,
            Decision::Allow
        );
        group.bench_with_input(
            BenchmarkId::new("allow_with_properties", size),
            &request,
            |b, r| {
                b.iter(|| {
                    engine
                        .decide_with_properties(
                            black_box(r),
                            None,
                            Some(&properties),
                            PropertiesMode::Override,
                        )
                        .unwrap()
                })
            },
        );
    }
    group.finish();
}

/// Cedar's `is_authorized` alone on a prebuilt request: the floor under `decide`.
fn cedar_only(c: &mut Criterion) {
    let package = load_package(&package_path()).unwrap();
    let snapshot = support::generate::snapshot_json(10);
    let registry = parse_snapshot(snapshot.as_bytes(), "bench", package.schema()).unwrap();
    let uid = |t: &str, id: &str| {
        cedar_policy::EntityUid::from_type_name_and_id(
            t.parse().unwrap(),
            cedar_policy::EntityId::new(id),
        )
    };
    let context = cedar_policy::Context::from_json_value(
        serde_json::json!({"ttl_hours": 4, "principals": ["shared"]}),
        None,
    )
    .unwrap();
    let request = cedar_policy::Request::new(
        uid("Subject", "iam:agt-bench-5"),
        uid("Action", "sign"),
        uid("Actor", "agt-bench-5"),
        context,
        None,
    )
    .unwrap();
    let authorizer = cedar_policy::Authorizer::new();
    c.bench_function("cedar_is_authorized/10", |b| {
        b.iter(|| {
            authorizer.is_authorized(black_box(&request), package.policies(), registry.entities())
        })
    });
}

fn load_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("load_compile");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for size in SIZES {
        let package = load_package(&package_path()).unwrap();
        let snapshot = support::generate::snapshot_json(size);
        group.bench_with_input(BenchmarkId::from_parameter(size), &snapshot, |b, s| {
            b.iter(|| parse_snapshot(black_box(s.as_bytes()), "bench", package.schema()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, decide, cedar_only, load_compile);
criterion_main!(benches);
