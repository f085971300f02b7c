//! In-process decision latency (plain, and with AuthZEN-style resource properties), registry
//! load+compile time over registries of 10, 1,000 and 100,000 generated actors, the strict-JSON
//! (duplicate-key) check and the decision log's file-identity check. Results: docs/benchmarks.md. Run: `cargo bench --bench decision`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

mod support {
    pub mod generate;
}

use std::path::PathBuf;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use flex_auth::decision::PropertiesMode;
use flex_auth::policy::load_package;
use flex_auth::registry::{parse_entities, parse_snapshot, snapshot_entities_json};
use flex_auth::{CheckRequest, Decision, Engine};

const SIZES: [usize; 4] = [10, 1_000, 100_000, 1_000_000];

/// Registries up to this size are also decided on Cedar's whole store (the `--entities` path,
/// and how snapshots were held before the compact store), for comparison in the same run; a
/// million actors in Cedar's store take ~6 GiB.
const WHOLE_STORE_UP_TO: usize = 100_000;

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
        // Every request from another subject: more distinct (subject, action, resource) keys
        // than the slice cache holds, so each request builds its slice (a deny: the subjects
        // are not the actor's).
        let distinct: Vec<CheckRequest> = (0..8 * 1024)
            .map(|k| {
                let mut r = request.clone();
                r.subject.id = format!("caller-{k}");
                r
            })
            .collect();
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("deny_uncached", size), |b| {
            b.iter(|| {
                next = (next + 1) % distinct.len();
                engine
                    .decide(black_box(distinct.get(next).unwrap()))
                    .unwrap()
            })
        });
        if size <= WHOLE_STORE_UP_TO {
            let whole = whole_store_engine(&snapshot);
            assert_eq!(whole.decide(&request).unwrap().decision, Decision::Allow);
            group.bench_with_input(
                BenchmarkId::new("allow_whole_store", size),
                &request,
                |b, r| b.iter(|| whole.decide(black_box(r)).unwrap()),
            );
            group.bench_with_input(BenchmarkId::new("deny_whole_store", size), &deny, |b, r| {
                b.iter(|| whole.decide(black_box(r)).unwrap())
            });
        }
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

/// The same actors held in Cedar's own store, as `--entities` loads them.
fn whole_store_engine(snapshot: &str) -> Engine {
    let package = load_package(&package_path()).unwrap();
    let json = snapshot_entities_json(snapshot.as_bytes(), "bench").unwrap();
    let bytes = serde_json::to_vec(&json).unwrap();
    let registry = parse_entities(&bytes, "bench", package.schema()).unwrap();
    Engine::new(package, registry).unwrap()
}

/// Cedar's `is_authorized` alone on a prebuilt request against Cedar's whole store: the floor
/// under `decide`.
fn cedar_only(c: &mut Criterion) {
    let package = load_package(&package_path()).unwrap();
    let snapshot = support::generate::snapshot_json(10);
    let json = snapshot_entities_json(snapshot.as_bytes(), "bench").unwrap();
    let registry = parse_entities(
        &serde_json::to_vec(&json).unwrap(),
        "bench",
        package.schema(),
    )
    .unwrap();
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
            authorizer.is_authorized(
                black_box(&request),
                package.policies(),
                registry.whole_store().unwrap(),
            )
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

/// The duplicate-key check (`json`): what it adds to parsing a `/v1/check` body and a batch, and
/// what building a registry's `Value` with it costs against `serde_json::from_slice`.
fn strict_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("strict_json");
    let check = br#"{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}"#;
    group.bench_function("check_body/serde_typed", |b| {
        b.iter(|| serde_json::from_slice::<CheckRequest>(black_box(check)).unwrap())
    });
    group.bench_function("check_body/unique_keys_then_typed", |b| {
        b.iter(|| {
            flex_auth::json::check_unique_keys(black_box(check)).unwrap();
            serde_json::from_slice::<CheckRequest>(black_box(check)).unwrap()
        })
    });
    group.bench_function("check_body/unique_keys_only", |b| {
        b.iter(|| flex_auth::json::check_unique_keys(black_box(check)).unwrap())
    });
    let item = std::str::from_utf8(check).unwrap();
    let batch = format!("{{\"checks\":[{}]}}", vec![item; 100].join(","));
    group.bench_function("batch_100/unique_keys_only", |b| {
        b.iter(|| flex_auth::json::check_unique_keys(black_box(batch.as_bytes())).unwrap())
    });
    group.bench_function("batch_100/serde_value", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(batch.as_bytes())).unwrap())
    });
    // How /v1/check/batch reads its body: before (typed parse of `{"checks": [Value…]}`) and now
    // (the tree built with the duplicate check in the same pass, then moved into the type).
    #[derive(serde::Deserialize)]
    struct Batch {
        #[allow(dead_code, reason = "only parsed")]
        checks: Vec<serde_json::Value>,
    }
    group.bench_function("batch_100/serde_typed", |b| {
        b.iter(|| serde_json::from_slice::<Batch>(black_box(batch.as_bytes())).unwrap())
    });
    group.bench_function("batch_100/parse_value_then_typed", |b| {
        b.iter(|| {
            let tree = flex_auth::json::parse_value(black_box(batch.as_bytes())).unwrap();
            serde_path_to_error::deserialize::<_, Batch>(tree).unwrap()
        })
    });
    group.bench_function("batch_100/unique_keys_then_typed", |b| {
        b.iter(|| {
            flex_auth::json::check_unique_keys(black_box(batch.as_bytes())).unwrap();
            serde_json::from_slice::<Batch>(black_box(batch.as_bytes())).unwrap()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("strict_json_registry");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for size in [1_000, 100_000] {
        let snapshot = support::generate::snapshot_json(size);
        group.bench_with_input(BenchmarkId::new("serde_value", size), &snapshot, |b, s| {
            b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(s.as_bytes())).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("parse_value", size), &snapshot, |b, s| {
            b.iter(|| flex_auth::json::parse_value(black_box(s.as_bytes())).unwrap())
        });
    }
    group.finish();
}

/// What the decision log's file-identity check costs per write group: the two metadata calls it
/// makes (stat of the path, fstat of the open file), before and after the group.
fn log_identity(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    let file = std::fs::File::create(&path).unwrap();
    c.bench_function("log_identity/stat_path_and_fstat", |b| {
        b.iter(|| {
            let named = std::fs::metadata(black_box(&path)).unwrap();
            let open = file.metadata().unwrap();
            black_box((named.len(), open.len()))
        })
    });
}

criterion_group!(
    benches,
    decide,
    cedar_only,
    load_compile,
    strict_json,
    log_identity
);
criterion_main!(benches);
