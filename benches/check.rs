//! A whole `POST /v1/check` in process (issue 19): the request goes through `Api::handle` —
//! dispatch, content type, body limit, strict JSON, the typed request, `Engine::decide`, metrics,
//! the decision record path (log off) and the response body — with no socket, beside
//! `Engine::decide` alone on the same request, so the cost outside Cedar shows as the difference.
//! Two packages: the shipped ops-warden package with its production registry, and one permit over
//! raw Cedar entities. Built with the binary's allocator (mimalloc, the default feature).
//! Results: docs/benchmarks.md. Run: `cargo bench --bench check`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "benchmark setup")]

// The binary's allocator, so the figures are the server's (allocation is a share of them).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use flex_auth::api::{Api, ApiConfig};
use flex_auth::state::{RegistrySource, Sources, State, Trigger};
use flex_auth::{CheckRequest, Decision};
use http_body_util::{BodyExt as _, Full};

const OPS_WARDEN_BODY: &str = r#"{"subject":{"id":"agt-state-hub-bridge"},"action":"sign","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}"#;
const FIFTY_BODY: &str = r#"{"subject":{"id":"agt-state-hub-bridge"},"action":"sign7","resource":{"type":"Actor","id":"agt-state-hub-bridge"},"context":{"ttl_hours":4,"principals":["state-hub"]}}"#;
const ONE_PERMIT_BODY: &str = r#"{"subject":{"id":"alice"},"action":"sign","resource":{"type":"Actor","id":"build-bot"},"context":{"ttl":4}}"#;
const ONE_PERMIT: &str = r#"@id("one-permit")
permit (principal, action == Action::"sign", resource)
when { resource.allowed_subjects.contains(principal) && context.ttl <= resource.max_ttl };
"#;
const ONE_PERMIT_ENTITIES: &str = r#"[
  {"uid": {"type": "Actor", "id": "build-bot"},
   "attrs": {"allowed_subjects": [{"__entity": {"type": "Subject", "id": "alice"}}], "max_ttl": 8},
   "parents": []},
  {"uid": {"type": "Subject", "id": "alice"}, "attrs": {}, "parents": []}
]"#;

/// The shipped package's schema and five policies, once per action of ten (`sign0` … `sign9`):
/// 50 policies of which five can apply to any one request.
fn fifty_over_ten(dir: &Path) -> PathBuf {
    let package = dir.join("fifty");
    std::fs::create_dir_all(&package).unwrap();
    let mut schema = String::from(
        "entity Subject;\nentity Team;\nentity Actor in [Team] {\n  \"type\": String,\n  \
         principals: Set<String>,\n  allowed_subjects: Set<Subject>,\n  max_ttl_hours: Long,\n  \
         default_ttl_hours: Long,\n  owner?: String,\n  environment?: String,\n  pipeline?: String,\n};\n",
    );
    let mut policies = String::new();
    for n in 0..10 {
        schema.push_str(&format!(
            "action sign{n} appliesTo {{ principal: Subject, resource: Actor, \
             context: {{ ttl_hours: Long, principals: Set<String> }} }};\n"
        ));
        policies.push_str(&format!(
            r#"@id("allow-{n}")
permit (principal, action == Action::"sign{n}", resource is Actor)
when {{
  resource has max_ttl_hours &&
  resource.allowed_subjects.contains(principal) &&
  context.ttl_hours >= 1 &&
  context.ttl_hours <= resource.max_ttl_hours &&
  resource.principals.containsAll(context.principals)
}};
@id("unknown-actor-{n}")
@reason("unknown_actor_resource")
forbid (principal, action == Action::"sign{n}", resource)
unless {{ resource has max_ttl_hours }};
@id("ttl-bounds-{n}")
@reason("ttl_out_of_bounds")
forbid (principal, action == Action::"sign{n}", resource is Actor)
when {{
  resource has max_ttl_hours &&
  (context.ttl_hours < 1 || context.ttl_hours > resource.max_ttl_hours)
}};
@id("subject-not-allowed-{n}")
@reason("subject_not_allowed")
forbid (principal, action == Action::"sign{n}", resource is Actor)
when {{
  resource has allowed_subjects &&
  !resource.allowed_subjects.contains(principal)
}};
@id("principal-not-allowed-{n}")
@reason("principal_not_allowed")
forbid (principal, action == Action::"sign{n}", resource is Actor)
when {{
  resource has principals &&
  !resource.principals.containsAll(context.principals)
}};
"#
        ));
    }
    std::fs::write(package.join("schema.cedarschema"), schema).unwrap();
    std::fs::write(package.join("policies.cedar"), policies).unwrap();
    package
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn state(policy: &Path, registry: RegistrySource) -> Arc<State> {
    let state = Arc::new(State::new(Sources {
        policy: policy.to_owned(),
        registry,
    }));
    state.reload(Trigger::Startup).unwrap();
    state
}

fn request(body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::post("/v1/check")
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

fn bench_package(c: &mut Criterion, name: &str, state: Arc<State>, body: &'static str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let api = Api::new(Arc::clone(&state), ApiConfig::default()).unwrap();
    let check: CheckRequest = serde_json::from_str(body).unwrap();
    let loaded = state.current();
    let engine = &loaded.as_ref().unwrap().engine;
    assert_eq!(engine.decide(&check).unwrap().decision, Decision::Allow);
    let response = runtime.block_on(api.handle(request(body)));
    assert_eq!(response.status(), 200);
    let answer = runtime.block_on(response.into_body().collect()).unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer.to_bytes()).unwrap();
    assert_eq!(answer.get("decision").unwrap(), "allow", "{answer}");

    let mut group = c.benchmark_group(format!("check/{name}"));
    group.bench_function("engine_decide", |b| {
        b.iter(|| engine.decide(black_box(&check)).unwrap())
    });
    group.bench_function("parse_and_decide", |b| {
        b.iter(|| {
            let check: CheckRequest = serde_json::from_str(black_box(body)).unwrap();
            engine.decide(&check).unwrap()
        })
    });
    // The http::Request is built outside the timing: hyper builds it in the server, and its
    // cost is hyper's (measured by the load runs against the hello server).
    group.bench_function("api_handle", |b| {
        b.iter_batched(
            || request(body),
            |r| runtime.block_on(api.handle(black_box(r))),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn check(c: &mut Criterion) {
    let root = root();
    bench_package(
        c,
        "ops_warden",
        state(
            &root.join("policies/ops-warden"),
            RegistrySource::Snapshot(
                root.join("registry/ops-warden/production_registry_snapshot.json"),
            ),
        ),
        OPS_WARDEN_BODY,
    );
    let dir = tempfile::tempdir().unwrap();
    bench_package(
        c,
        "fifty_over_ten",
        state(
            &fifty_over_ten(dir.path()),
            RegistrySource::Snapshot(
                root.join("registry/ops-warden/production_registry_snapshot.json"),
            ),
        ),
        FIFTY_BODY,
    );
    let policy = dir.path().join("one.cedar");
    let entities = dir.path().join("entities.json");
    std::fs::write(&policy, ONE_PERMIT).unwrap();
    std::fs::write(&entities, ONE_PERMIT_ENTITIES).unwrap();
    bench_package(
        c,
        "one_permit",
        state(&policy, RegistrySource::Entities(entities)),
        ONE_PERMIT_BODY,
    );
}

/// Counting one answered deny with two reasons (a package `@reason` and a fixed code): the
/// metrics a deny adds to a request, measured alone.
fn count_deny(c: &mut Criterion) {
    let metrics = flex_auth::telemetry::Metrics::new().unwrap();
    let mut outcome = flex_auth::Outcome::deny("ttl_out_of_bounds");
    outcome.reasons.push("no_matching_permit".to_owned());
    let mut tally = flex_auth::telemetry::Tally::default();
    tally.add(&outcome);
    c.bench_function("metrics/count_deny_two_reasons", |b| {
        b.iter(|| metrics.record_tally(black_box(&tally)))
    });
}

/// Shadow evaluation (issue 20) on the shipped package: the same `/v1/check` through
/// `Api::handle` without and with a shadow (the package with TTLs capped at 2 hours, so the
/// request is a live allow and a shadow deny, recorded and counted as a disagreement), beside the
/// shadow's own evaluation of that request — what the shadow may add. And the `@reason` lookup a
/// deny makes: through Cedar's `PolicySet::annotation` (what it was) and the package's map.
fn shadow(c: &mut Criterion) {
    let root = root();
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate");
    std::fs::create_dir_all(&candidate).unwrap();
    let package =
        std::fs::read_to_string(root.join("policies/ops-warden/policy_package.md")).unwrap();
    let bounds = "(context.ttl_hours < 1 || context.ttl_hours > resource.max_ttl_hours)";
    assert!(package.contains(bounds));
    std::fs::write(
        candidate.join("policy_package.md"),
        package.replace(bounds, "(context.ttl_hours < 1 || context.ttl_hours > resource.max_ttl_hours || context.ttl_hours > 2)"),
    )
    .unwrap();
    let registry = || {
        RegistrySource::Snapshot(root.join("registry/ops-warden/production_registry_snapshot.json"))
    };
    let live = state(&root.join("policies/ops-warden"), registry());
    let shadow_state = state(&candidate, registry());
    let shadowed = Arc::new(
        State::new(Sources {
            policy: root.join("policies/ops-warden"),
            registry: registry(),
        })
        .with_shadow(Arc::clone(&shadow_state)),
    );
    shadowed.reload(Trigger::Startup).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let without = Api::new(live, ApiConfig::default()).unwrap();
    let with = Api::new(shadowed, ApiConfig::default()).unwrap();
    let check: CheckRequest = serde_json::from_str(OPS_WARDEN_BODY).unwrap();
    let loaded = shadow_state.current();
    let candidate_engine = &loaded.as_ref().unwrap().engine;
    let denied = candidate_engine.decide(&check).unwrap();
    assert_eq!(denied.decision, Decision::Deny);
    for api in [&without, &with] {
        let response = runtime.block_on(api.handle(request(OPS_WARDEN_BODY)));
        assert_eq!(response.status(), 200);
    }

    let mut group = c.benchmark_group("shadow/ops_warden");
    group.bench_function("api_handle_without_shadow", |b| {
        b.iter_batched(
            || request(OPS_WARDEN_BODY),
            |r| runtime.block_on(without.handle(black_box(r))),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("api_handle_with_shadow", |b| {
        b.iter_batched(
            || request(OPS_WARDEN_BODY),
            |r| runtime.block_on(with.handle(black_box(r))),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("shadow_engine_decide", |b| {
        b.iter(|| candidate_engine.decide(black_box(&check)).unwrap())
    });
    let policy = denied
        .policies
        .first()
        .unwrap()
        .parse::<cedar_policy::PolicyId>()
        .unwrap();
    group.bench_function("reason_of/cedar_annotation", |b| {
        b.iter(|| {
            candidate_engine
                .policy()
                .policies()
                .annotation(black_box(&policy), "reason")
                .map(str::len)
        })
    });
    group.bench_function("reason_of/package_map", |b| {
        b.iter(|| {
            candidate_engine
                .policy()
                .reason_of(black_box(&policy))
                .map(str::len)
        })
    });
    group.finish();
}

criterion_group!(benches, check, count_deny, shadow);
criterion_main!(benches);
