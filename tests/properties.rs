//! Property tests for everything that parses untrusted input: arbitrary bytes and arbitrary JSON
//! into the check and batch API never panic and never get a 5xx; arbitrary registry bytes and
//! Markdown never panic the loaders; arbitrary bearer credentials are refused without panic; routes
//! files and request paths never panic the router.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use flex_auth::api::{Api, ApiConfig};
use flex_auth::State;
use http::Request;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::{json, Value};

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let state = Arc::new(State::new(support::ops_warden()));
        state.reload(flex_auth::state::Trigger::Startup).unwrap();
        Api::new(state, ApiConfig::default()).unwrap()
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fn post(path: &str, body: Vec<u8>) -> (u16, Value) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    runtime().block_on(async {
        let response = api().handle(request).await;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).expect("every answer is JSON"),
        )
    })
}

fn assert_decision_or_4xx(status: u16, body: &Value) {
    match status {
        200 => {
            let decisions: Vec<&Value> = match body.get("results") {
                Some(results) => results.as_array().unwrap().iter().collect(),
                None => vec![body],
            };
            for d in decisions {
                assert!(d["decision"] == "allow" || d["decision"] == "deny", "{d}");
                assert_eq!(d["allowed"], d["decision"] == "allow", "{d}");
            }
        }
        400..=499 => assert!(body["error"]["code"].is_string(), "{body}"),
        _ => panic!("status {status}: {body}"),
    }
}

/// Arbitrary JSON values, biased towards the request's own field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just("sign".to_owned()),
            Just("Actor".to_owned()),
            Just("agt-state-hub-bridge".to_owned()),
            ".{0,12}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        let key = prop_oneof![
            Just("subject".to_owned()),
            Just("action".to_owned()),
            Just("resource".to_owned()),
            Just("context".to_owned()),
            Just("type".to_owned()),
            Just("id".to_owned()),
            Just("ttl_hours".to_owned()),
            Just("principals".to_owned()),
            Just("checks".to_owned()),
            "[a-z_]{1,8}"
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A structurally valid request with arbitrary values in it.
fn near_valid_request() -> impl Strategy<Value = Value> {
    (
        json_value(),
        json_value(),
        ".{0,20}",
        ".{0,20}",
        json_value(),
    )
        .prop_map(|(subject_id, action, rtype, rid, context)| {
            json!({"subject": {"id": subject_id}, "action": action,
                   "resource": {"type": rtype, "id": rid}, "context": context})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_a_decision_or_a_4xx(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let (status, value) = post("/v1/check", body.clone());
        assert_decision_or_4xx(status, &value);
        let (status, value) = post("/v1/check/batch", body);
        assert_decision_or_4xx(status, &value);
    }

    #[test]
    fn arbitrary_json_gets_a_decision_or_a_4xx(value in json_value()) {
        let (status, body) = post("/v1/check", serde_json::to_vec(&value).unwrap());
        assert_decision_or_4xx(status, &body);
        let batch = json!({"checks": [value]});
        let (status, body) = post("/v1/check/batch", serde_json::to_vec(&batch).unwrap());
        assert_decision_or_4xx(status, &body);
    }

    #[test]
    fn near_valid_requests_get_a_decision_or_a_4xx(value in near_valid_request()) {
        let (status, body) = post("/v1/check", serde_json::to_vec(&value).unwrap());
        assert_decision_or_4xx(status, &body);
    }

    #[test]
    fn registry_loader_never_panics_on_arbitrary_json(actors in prop::collection::vec(json_value(), 0..4)) {
        let snapshot = json!({"schema_version": "1.0", "generated_at": "2026-11-23T00:00:00Z",
                              "source": "prop", "actors": actors});
        let _ = flex_auth::registry::parse_snapshot(snapshot.to_string().as_bytes(), "prop", None);
    }

    #[test]
    fn registry_loader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = flex_auth::registry::parse_snapshot(&bytes, "prop", None);
        let _ = flex_auth::registry::parse_entities(&bytes, "prop", None);
    }

    #[test]
    fn markdown_packages_never_panic(text in "(```(cedar|cedarschema|manifest|text)?\n|permit\\(principal, action, resource\\);\n|@id\\(\"x\"\\)\n|~~~\n|.{0,20}\n){0,12}") {
        let dir = support::temp_package(&[("p.md", &text)]);
        let _ = flex_auth::policy::load_package(&dir.path().join("p.md"));
    }
}

/// An authenticator with an HS256 secret (no network, no files that change).
fn authenticator() -> &'static flex_auth::auth::Authenticator {
    static AUTH: OnceLock<(flex_auth::auth::Authenticator, tempfile::TempDir)> = OnceLock::new();
    let (auth, _dir) = AUTH.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "property-test-secret-property-test-secret").unwrap();
        let mut settings =
            flex_auth::auth::AuthSettings::new("https://issuer.example", &["broker"]);
        settings.hs256_secret_file = Some(secret);
        let auth = runtime()
            .block_on(flex_auth::auth::Authenticator::new(settings))
            .unwrap();
        (auth, dir)
    });
    auth
}

fn routes() -> &'static flex_auth::proxy::routes::Routes {
    static ROUTES: OnceLock<flex_auth::proxy::routes::Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        flex_auth::proxy::routes::Routes::load(&support::repo_path(
            "deploy/examples/broker/routes.yaml",
        ))
        .unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_authorization_headers_are_refused_without_panic(
        value in "(Bearer |bearer |Basic )?[A-Za-z0-9_\\-\\.=+/ ]{0,200}",
    ) {
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            headers.insert(http::header::AUTHORIZATION, v);
        }
        let result = runtime().block_on(authenticator().authenticate(&headers));
        prop_assert!(result.is_err(), "{value} was accepted");
    }

    #[test]
    fn arbitrary_jwt_shaped_tokens_are_refused_without_panic(
        header in "[A-Za-z0-9_\\-]{0,60}", claims in "[A-Za-z0-9_\\-]{0,80}", signature in "[A-Za-z0-9_\\-]{0,60}",
    ) {
        let mut headers = http::HeaderMap::new();
        let value = format!("Bearer {header}.{claims}.{signature}");
        headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(&value).unwrap());
        prop_assert!(runtime().block_on(authenticator().authenticate(&headers)).is_err());
    }

    #[test]
    fn route_matching_never_panics_on_arbitrary_paths(path in "/?([a-z0-9%\\.]{0,6}/?){0,6}", method in "(GET|POST|PUT|DELETE|PATCH)") {
        let _ = routes().find(&method.parse().unwrap(), &path);
    }

    #[test]
    fn routes_files_never_panic_the_parser(text in "(routes:\n|  - \\{|method: (GET|\\*|get)|, path: '/(a|\\{x\\}|\\{\\*r\\}|\\.\\.)'|, public: true|, action: a|, resource: \\{type: T, id: \\{(path|query|body|claim): [a-z/]{0,4}\\}\\}|\\}\n|.{0,10}){0,12}") {
        let _ = flex_auth::proxy::routes::Routes::parse(&text);
    }
}
