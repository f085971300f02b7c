//! Property tests for everything that parses untrusted input: arbitrary bytes and arbitrary JSON
//! into the check, batch and AuthZEN APIs never panic and never get a 5xx; arbitrary bytes on a real
//! server's socket get a 4xx, a decision or a closed connection, and the server keeps serving;
//! arbitrary registry bytes and Markdown never panic the loaders; arbitrary bearer credentials and
//! correctly signed tokens with arbitrary claims are refused without panic; routes files and
//! request paths never panic the router.

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

fn routes() -> &'static flex_auth::routes::Routes {
    static ROUTES: OnceLock<flex_auth::routes::Routes> = OnceLock::new();
    ROUTES.get_or_init(|| {
        flex_auth::routes::Routes::load(&support::repo_path("deploy/examples/broker/routes.yaml"))
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
        let _ = flex_auth::routes::Routes::parse(&text);
    }
}

const SECRET: &[u8] = b"property-test-secret-property-test-secret";

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Correctly signed tokens whose header and claims are arbitrary JSON: the claims parser
    /// never panics, and nothing without the configured `iss`, `aud` and a live `exp` passes.
    #[test]
    fn signed_tokens_with_arbitrary_claims_are_refused_without_panic(
        header in json_value(), claims in json_value(), keep_alg in any::<bool>(),
    ) {
        let mut header = header;
        if keep_alg {
            header = json!({"alg": "HS256", "typ": "JWT", "extra": header});
        }
        let token = support::jwt::TestKey::hs256(SECRET).sign_with_header(&header, &claims);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        let result = runtime().block_on(authenticator().authenticate(&headers));
        prop_assert!(result.is_err(), "accepted claims {claims}");
    }

    /// Batches mixing valid checks with arbitrary items: one answer per item, in order.
    #[test]
    fn batches_of_mixed_items_answer_every_item(items in prop::collection::vec(
        prop_oneof![near_valid_request(), json_value(), Just(support::sign_request(
            "agt-state-hub-bridge", "agt-state-hub-bridge", 1, &["state-hub"]))],
        0..12,
    )) {
        let batch = json!({"checks": items});
        let (status, body) = post("/v1/check/batch", serde_json::to_vec(&batch).unwrap());
        assert_decision_or_4xx(status, &body);
        if status == 200 {
            prop_assert_eq!(body["results"].as_array().unwrap().len(), items.len());
        }
    }
}

fn assert_authzen_or_4xx(status: u16, body: &Value) {
    match status {
        200 => {
            let answers: Vec<&Value> = match body.get("evaluations") {
                Some(items) => items.as_array().unwrap().iter().collect(),
                None => vec![body],
            };
            for a in answers {
                assert!(a["decision"].is_boolean(), "{a}");
                if a["decision"] == true {
                    assert!(
                        a["context"].get("error").is_none(),
                        "an error is never a permit: {a}"
                    );
                }
            }
        }
        400..=499 => assert!(body["error"]["code"].is_string(), "{body}"),
        _ => panic!("status {status}: {body}"),
    }
}

/// AuthZEN-shaped evaluations, every part either well formed or arbitrary, with arbitrary
/// properties and contexts.
fn authzen_evaluation() -> impl Strategy<Value = Value> {
    let entity = |types: &'static [&'static str]| {
        (
            prop::sample::select(types.to_vec()),
            "[a-z:-]{0,24}",
            prop::option::of(json_value()),
        )
            .prop_map(|(t, id, props)| {
                let mut e = json!({"type": t, "id": id});
                if let Some(p) = props {
                    e["properties"] = p;
                }
                e
            })
    };
    (
        prop_oneof![
            entity(&["Subject", "Actor", "user", "Bad Type"]),
            json_value()
        ],
        prop_oneof![
            prop::sample::select(vec!["sign", "read", ""]).prop_map(|n| json!({"name": n})),
            json_value()
        ],
        prop_oneof![entity(&["Actor", "Subject", "Team", ""]), json_value()],
        prop::option::of(json_value()),
    )
        .prop_map(|(subject, action, resource, context)| {
            let mut e = json!({"subject": subject, "action": action, "resource": resource});
            if let Some(c) = context {
                e["context"] = c;
            }
            e
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary AuthZEN evaluations — properties, contexts and types included — get a boolean
    /// decision or a 4xx, never a 5xx or a panic.
    #[test]
    fn authzen_evaluations_get_a_decision_or_a_4xx(value in authzen_evaluation()) {
        let (status, body) = post("/access/v1/evaluation", serde_json::to_vec(&value).unwrap());
        assert_authzen_or_4xx(status, &body);
    }

    /// Boxcarred evaluations with arbitrary defaults and items: with `execute_all`, one answer
    /// per item, in order.
    #[test]
    fn authzen_batches_answer_every_item(
        defaults in authzen_evaluation(),
        items in prop::collection::vec(prop_oneof![authzen_evaluation(), json_value()], 0..8),
    ) {
        let mut batch = defaults;
        batch["evaluations"] = json!(items);
        let (status, body) = post("/access/v1/evaluations", serde_json::to_vec(&batch).unwrap());
        assert_authzen_or_4xx(status, &body);
        if status == 200 && !items.is_empty() {
            prop_assert_eq!(body["evaluations"].as_array().unwrap().len(), items.len());
        }
    }

    /// Arbitrary bytes to the AuthZEN endpoints: a decision or a 4xx.
    #[test]
    fn arbitrary_bytes_to_authzen_get_a_decision_or_a_4xx(
        body in prop::collection::vec(any::<u8>(), 0..256),
        many in any::<bool>(),
    ) {
        let path = if many { "/access/v1/evaluations" } else { "/access/v1/evaluation" };
        let (status, value) = post(path, body);
        assert_authzen_or_4xx(status, &value);
    }
}

/// The real server on `127.0.0.1:0` in a runtime of its own, for raw-socket properties.
fn raw_server() -> std::net::SocketAddr {
    static SERVER: OnceLock<(tokio::runtime::Runtime, std::net::SocketAddr)> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let addr = rt.block_on(async {
                let limits = flex_auth::server::Limits {
                    header_read_timeout: std::time::Duration::from_secs(2),
                    ..flex_auth::server::Limits::default()
                };
                let server = flex_auth::server::Server::bind(
                    "127.0.0.1:0".parse().unwrap(),
                    api().clone(),
                    limits,
                )
                .await
                .unwrap();
                let addr = server.local_addr().unwrap();
                tokio::spawn(server.serve(std::future::pending()));
                addr
            });
            (rt, addr)
        })
        .1
}

/// Send `bytes`, close the write side when `half_close` (so that an incomplete request ends),
/// read whatever comes back (bounded). hyper treats a half-closed client as gone and may close
/// without answering; a well-formed request is sent without it.
fn exchange(bytes: &[u8], half_close: bool) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(raw_server()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // The server may close early (e.g. after a 400); later writes can then fail.
    let _ = stream.write_all(bytes);
    if half_close {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    reply
}

/// Request-shaped bytes: a request line, headers and a body, each part possibly garbage.
fn raw_request() -> impl Strategy<Value = Vec<u8>> {
    let structured = (
        "(GET|POST|PUT|HEAD|OPTIONS|PRI|[A-Z]{1,8})",
        prop_oneof![
            Just("/v1/check".to_owned()),
            Just("/v1/check/batch".to_owned()),
            Just("/v1/authz/nginx".to_owned()),
            "/[ -~]{0,40}",
            "[ -~]{0,20}"
        ],
        "HTTP/(1\\.[01]|2\\.0|[0-9]\\.[0-9])",
        prop::collection::vec(
            (
                prop_oneof![
                    Just("content-length".to_owned()),
                    Just("transfer-encoding".to_owned()),
                    Just("content-type".to_owned()),
                    Just("expect".to_owned()),
                    "[!-9;-~]{1,12}"
                ],
                prop_oneof![
                    Just("application/json".to_owned()),
                    Just("chunked".to_owned()),
                    Just("100-continue".to_owned()),
                    "[0-9]{1,6}",
                    "[ -~]{0,30}"
                ],
            ),
            0..6,
        ),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(method, path, version, headers, body)| {
            let mut raw = format!("{method} {path} {version}\r\nhost: x\r\n").into_bytes();
            for (name, value) in headers {
                raw.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            raw.extend_from_slice(b"\r\n");
            raw.extend_from_slice(&body);
            raw
        });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..512), structured]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Whatever bytes arrive on the socket, every response is a 4xx or a success (a decision,
    /// or a probe the path happened to name) — never a 5xx — or the connection is closed; and
    /// the server keeps serving.
    #[test]
    fn arbitrary_bytes_on_the_socket_get_a_4xx_a_decision_or_a_close(bytes in raw_request()) {
        let reply = exchange(&bytes, true);
        let text = String::from_utf8_lossy(&reply);
        for status_line in text.split("HTTP/1.1 ").skip(1) {
            let code: u16 = status_line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            prop_assert!(
                (100..500).contains(&code),
                "status {code} for {:?}: {text}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let health = exchange(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", false);
        prop_assert!(health.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&health));
    }
}
