//! The AuthZEN Authorization API over HTTP: every endpoint, every evaluations semantic, defaults
//! and overrides, per-item errors, malformed input, the Cedar mapping on a raw entities file and
//! on the actor registry, and AuthZEN decisions being flex-auth decisions (ids, decision log,
//! metrics).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use flex_auth::api::ApiConfig;
use flex_auth::audit::{AuditLog, Mode, Rotation, Sink};
use flex_auth::authzen::{AuthZenConfig, PropertiesMode};
use flex_auth::{RegistrySource, Sources};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use support::{ops_warden, repo_path, Reply, TestServer};

fn notes() -> Sources {
    Sources {
        policy: repo_path("policies/authzen-example"),
        registry: RegistrySource::Entities(repo_path("policies/authzen-example/entities.json")),
    }
}

fn eval(subject: &str, action: &str, note: &str) -> Value {
    json!({
        "subject": {"type": "user", "id": subject},
        "action": {"name": action},
        "resource": {"type": "note", "id": note},
    })
}

async fn evaluation(server: &TestServer, body: &Value) -> Reply {
    server.post_json("/access/v1/evaluation", body).await
}

fn is_decision_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.strip_prefix("decision:")
            .is_some_and(|h| h.len() == 16 && h.chars().all(|c| c.is_ascii_hexdigit()))
    })
}

#[tokio::test]
async fn an_evaluation_answers_true_or_false_with_flex_auth_context() {
    let server = TestServer::start(notes()).await;
    let allow = evaluation(&server, &eval("alice", "read", "n1")).await;
    assert_eq!(allow.status, StatusCode::OK);
    let body = allow.json();
    assert_eq!(body["decision"], true, "{body}");
    assert!(is_decision_id(&body["context"]["decision_id"]), "{body}");
    assert_eq!(body["context"]["policies"], json!(["notes-owner"]));
    assert!(
        body["context"].get("reasons").is_none(),
        "no reasons on allow"
    );

    // A deny is a 200 with decision false and the reason codes.
    let deny = evaluation(&server, &eval("bob", "edit", "n2")).await;
    assert_eq!(deny.status, StatusCode::OK);
    let body = deny.json();
    assert_eq!(body["decision"], false);
    assert_eq!(body["context"]["reasons"], json!(["note_locked"]));
    assert!(is_decision_id(&body["context"]["decision_id"]));
}

/// A server over `sources` whose AuthZEN properties work as `mode` says.
async fn with_properties(sources: flex_auth::Sources, mode: PropertiesMode) -> TestServer {
    let config = ApiConfig {
        authzen: AuthZenConfig {
            properties: mode,
            ..AuthZenConfig::default()
        },
        ..ApiConfig::default()
    };
    TestServer::start_with(sources, config).await
}

#[tokio::test]
async fn with_override_properties_replace_the_loaded_attributes_for_that_request_only() {
    let server = with_properties(notes(), PropertiesMode::Override).await;
    // dave (sales) may not read eng's department note …
    let mut request = eval("dave", "read", "n2");
    assert_eq!(
        evaluation(&server, &request).await.json()["decision"],
        false
    );
    // … unless the request says he is in eng;
    request["subject"]["properties"] = json!({"department": "eng"});
    assert_eq!(evaluation(&server, &request).await.json()["decision"], true);
    // the stored entity is unchanged afterwards.
    let plain = eval("dave", "read", "n2");
    assert_eq!(evaluation(&server, &plain).await.json()["decision"], false);
}

#[tokio::test]
async fn by_default_properties_extend_entities_but_never_replace_a_stored_attribute() {
    let server = TestServer::start(notes()).await;
    // dave is in sales; a request that says he is in eng changes nothing …
    let mut request = eval("dave", "read", "n2");
    request["subject"]["properties"] = json!({"department": "eng"});
    assert_eq!(
        evaluation(&server, &request).await.json()["decision"],
        false
    );
    // … and with `ignore` the properties are not even looked at.
    let ignoring = with_properties(notes(), PropertiesMode::Ignore).await;
    let mut unknown = eval("carol", "delete", "n-new");
    unknown["resource"]["properties"] = json!({"owner": {"type": "user", "id": "bob"}, "department": "eng", "visibility": "private"});
    let body = evaluation(&ignoring, &unknown).await.json();
    assert_eq!(body["decision"], false, "{body}");

    // An entity the entities file does not hold exists with just the request's properties; the
    // subject's stored team membership still applies (carol is an admin).
    let mut unknown = eval("carol", "delete", "n-new");
    unknown["resource"]["properties"] = json!({"owner": {"type": "user", "id": "bob"}, "department": "eng", "visibility": "private"});
    let body = evaluation(&server, &unknown).await.json();
    assert_eq!(body["decision"], true, "{body}");
    assert_eq!(body["context"]["policies"], json!(["notes-admins"]));
    // A forbid still wins over properties that make a permit match.
    let mut locked = eval("alice", "edit", "n2");
    locked["resource"]["properties"] = json!({"owner": {"type": "user", "id": "alice"}});
    assert_eq!(
        evaluation(&server, &locked).await.json()["context"]["reasons"],
        json!(["note_locked"])
    );
    // Properties the schema does not declare are a 400 naming the field.
    let mut bad = eval("alice", "read", "n1");
    bad["resource"]["properties"] = json!({"colour": "red"});
    let reply = evaluation(&server, &bad).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("colour"));
}

#[tokio::test]
async fn the_context_is_the_cedar_context() {
    let server = TestServer::start(notes()).await;
    let mut request = eval("alice", "read", "n3");
    assert_eq!(evaluation(&server, &request).await.json()["decision"], true);
    request["context"] = json!({"network": "public"});
    let body = evaluation(&server, &request).await.json();
    assert_eq!(body["decision"], false);
    assert_eq!(
        body["context"]["reasons"],
        json!(["confidential_off_network"])
    );
}

#[tokio::test]
async fn the_mapping_works_on_the_actor_registry_too() {
    let server = TestServer::start(ops_warden()).await;
    let request = json!({
        "subject": {"type": "Subject", "id": "agt-state-hub-bridge"},
        "action": {"name": "sign"},
        "resource": {"type": "Actor", "id": "agt-state-hub-bridge"},
        "context": {"ttl_hours": 4, "principals": ["state-hub"]},
    });
    let body = evaluation(&server, &request).await.json();
    assert_eq!(body["decision"], true, "{body}");
    // With `override`, resource properties replace the registry's attributes: a lower max TTL
    // denies.
    let overriding = with_properties(ops_warden(), PropertiesMode::Override).await;
    let mut lowered = request.clone();
    lowered["resource"]["properties"] = json!({"max_ttl_hours": 2});
    let body = evaluation(&overriding, &lowered).await.json();
    assert_eq!(body["decision"], false, "{body}");
    assert_eq!(body["context"]["reasons"], json!(["ttl_out_of_bounds"]));
    // By default they cannot: the registry's limit stands.
    let body = evaluation(&server, &lowered).await.json();
    assert_eq!(body["decision"], true, "{body}");
    // Same answer as /v1/check for the same question.
    let check = server
        .post_json(
            "/v1/check",
            &json!({"subject": {"id": "agt-state-hub-bridge"}, "action": "sign",
                    "resource": {"type": "Actor", "id": "agt-state-hub-bridge"},
                    "context": {"ttl_hours": 4, "principals": ["state-hub"]}}),
        )
        .await
        .json();
    assert_eq!(check["decision"], "allow");
}

#[tokio::test]
async fn malformed_evaluations_are_400_with_a_json_error_and_unknown_fields_are_ignored() {
    let server = TestServer::start(notes()).await;
    for (body, field) in [
        (
            json!({"action": {"name": "read"}, "resource": {"type": "note", "id": "n1"}}),
            "subject",
        ),
        (
            json!({"subject": {"type": "user"}, "action": {"name": "read"},
                "resource": {"type": "note", "id": "n1"}}),
            "subject.id",
        ),
        (
            json!({"subject": {"type": "user", "id": "alice"}, "action": "read",
                "resource": {"type": "note", "id": "n1"}}),
            "action",
        ),
        (
            json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"}}),
            "resource",
        ),
        (
            json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
                "resource": {"type": "note", "id": "n1"}, "context": [1]}),
            "context",
        ),
    ] {
        let reply = evaluation(&server, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = reply.json();
        let text = error["error"].to_string();
        assert!(text.contains(field), "{body} → {error}");
    }
    // An action the schema does not declare, an unknown entity type name: 400 too.
    let reply = evaluation(&server, &eval("alice", "fly", "n1")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["field"], "action");
    // Not JSON, wrong media type.
    let reply = server
        .send(
            Method::POST,
            "/access/v1/evaluation",
            &[("content-type", "application/json")],
            "{",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = server
        .send(
            Method::POST,
            "/access/v1/evaluation",
            &[("content-type", "text/plain")],
            "{}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reply = server.get("/access/v1/evaluation").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    // Unknown fields anywhere are ignored.
    let mut extra = eval("alice", "read", "n1");
    extra["subject"]["nickname"] = json!("al");
    extra["action"]["properties"] = json!({"method": "GET"});
    extra["page"] = json!({"next_token": ""});
    let reply = evaluation(&server, &extra).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["decision"], true);
}

#[tokio::test]
async fn x_request_id_is_echoed() {
    let server = TestServer::start(notes()).await;
    let reply = server
        .send(
            Method::POST,
            "/access/v1/evaluation",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "bfe9eb29-ab87"),
            ],
            eval("alice", "read", "n1").to_string(),
        )
        .await;
    assert_eq!(reply.headers["x-request-id"], "bfe9eb29-ab87");
    let reply = server
        .send(
            Method::POST,
            "/access/v1/evaluations",
            &[
                ("content-type", "application/json"),
                ("x-request-id", "r-2"),
            ],
            "{",
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.headers["x-request-id"], "r-2", "echoed on errors too");
    let reply = evaluation(&server, &eval("alice", "read", "n1")).await;
    assert!(!reply.headers.contains_key("x-request-id"));
}

fn decisions(reply: &Reply) -> Vec<Value> {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.json()["evaluations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decision"].clone())
        .collect()
}

#[tokio::test]
async fn evaluations_take_top_level_defaults_that_items_override() {
    let server = TestServer::start(notes()).await;
    let body = json!({
        "subject": {"type": "user", "id": "alice"},
        "action": {"name": "read"},
        "context": {"network": "office"},
        "evaluations": [
            {"resource": {"type": "note", "id": "n1"}},
            {"resource": {"type": "note", "id": "n2"}},
            {"action": {"name": "edit"}, "resource": {"type": "note", "id": "n2"}},
            {"subject": {"type": "user", "id": "dave"}, "resource": {"type": "note", "id": "n2"}},
            {"context": {"network": "public"}, "resource": {"type": "note", "id": "n3"}},
        ],
    });
    let reply = server.post_json("/access/v1/evaluations", &body).await;
    assert_eq!(
        decisions(&reply),
        vec![
            json!(true),
            json!(true),
            json!(false),
            json!(false),
            json!(false)
        ]
    );
    let items = reply.json()["evaluations"].clone();
    assert_eq!(items[2]["context"]["reasons"], json!(["note_locked"]));
    assert_eq!(
        items[4]["context"]["reasons"],
        json!(["confidential_off_network"])
    );
    let ids: std::collections::HashSet<String> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["context"]["decision_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "each item has its own decision id");
}

#[tokio::test]
async fn the_three_semantics_stop_where_they_should() {
    let server = TestServer::start(notes()).await;
    // alice: n1 allow, n2 (edit, locked) deny, n3 allow, n1 allow.
    let items = json!([
        {"resource": {"type": "note", "id": "n1"}},
        {"action": {"name": "edit"}, "resource": {"type": "note", "id": "n2"}},
        {"resource": {"type": "note", "id": "n3"}},
    ]);
    let run = |semantic: Option<&str>| {
        let mut body = json!({
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "read"},
            "evaluations": items.clone(),
        });
        if let Some(s) = semantic {
            body["options"] = json!({"evaluations_semantic": s});
        }
        body
    };
    let all = server.post_json("/access/v1/evaluations", &run(None)).await;
    assert_eq!(
        decisions(&all),
        vec![json!(true), json!(false), json!(true)]
    );
    let explicit = server
        .post_json("/access/v1/evaluations", &run(Some("execute_all")))
        .await;
    assert_eq!(
        decisions(&explicit),
        vec![json!(true), json!(false), json!(true)]
    );
    let deny_first = server
        .post_json("/access/v1/evaluations", &run(Some("deny_on_first_deny")))
        .await;
    assert_eq!(
        decisions(&deny_first),
        vec![json!(true), json!(false)],
        "ends at the deny"
    );
    let permit_first = server
        .post_json(
            "/access/v1/evaluations",
            &run(Some("permit_on_first_permit")),
        )
        .await;
    assert_eq!(
        decisions(&permit_first),
        vec![json!(true)],
        "ends at the permit"
    );
    // With no permit at all, permit_on_first_permit evaluates everything.
    let body = json!({
        "subject": {"type": "user", "id": "bob"},
        "action": {"name": "read"},
        "options": {"evaluations_semantic": "permit_on_first_permit"},
        "evaluations": [{"resource": {"type": "note", "id": "n1"}},
                        {"resource": {"type": "note", "id": "n3"}, "context": {"network": "public"}}],
    });
    let reply = server.post_json("/access/v1/evaluations", &body).await;
    assert_eq!(decisions(&reply), vec![json!(false), json!(false)]);
    // An unknown semantic is a 400 naming the option.
    let reply = server
        .post_json("/access/v1/evaluations", &run(Some("first_wins")))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.json()["error"]
        .to_string()
        .contains("evaluations_semantic"));
}

#[tokio::test]
async fn an_item_that_cannot_be_evaluated_is_false_with_its_error_and_counts_as_a_deny() {
    let server = TestServer::start(notes()).await;
    let body = json!({
        "subject": {"type": "user", "id": "alice"},
        "action": {"name": "read"},
        "evaluations": [
            {"resource": {"type": "note", "id": "n1"}},
            {"resource": {"type": "note"}},
            {"action": {"name": "fly"}, "resource": {"type": "note", "id": "n1"}},
            "not an object",
            {"resource": {"type": "note", "id": "n3"}},
        ],
    });
    let reply = server.post_json("/access/v1/evaluations", &body).await;
    assert_eq!(
        decisions(&reply),
        vec![
            json!(true),
            json!(false),
            json!(false),
            json!(false),
            json!(true)
        ]
    );
    let items = reply.json()["evaluations"].clone();
    for (index, needle) in [
        (1, "evaluations[1].resource.id"),
        (2, "action"),
        (3, "evaluations[3]"),
    ] {
        let error = &items[index]["context"]["error"];
        assert_eq!(error["status"], 400, "{}", items[index]);
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{}",
            items[index]
        );
        assert!(is_decision_id(&items[index]["context"]["decision_id"]));
    }
    // deny_on_first_deny stops at the first error.
    let mut first = body.clone();
    first["options"] = json!({"evaluations_semantic": "deny_on_first_deny"});
    let reply = server.post_json("/access/v1/evaluations", &first).await;
    assert_eq!(decisions(&reply), vec![json!(true), json!(false)]);
    // More items than --max-batch: 413 for the whole request.
    let many: Vec<Value> = (0..101)
        .map(|_| json!({"resource": {"type": "note", "id": "n1"}}))
        .collect();
    let reply = server
        .post_json(
            "/access/v1/evaluations",
            &json!({"subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
                    "evaluations": many}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn without_evaluations_the_top_level_is_one_evaluation() {
    let server = TestServer::start(notes()).await;
    let reply = server
        .post_json("/access/v1/evaluations", &eval("alice", "read", "n1"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["decision"], true);
    let mut empty = eval("bob", "read", "n1");
    empty["evaluations"] = json!([]);
    let reply = server.post_json("/access/v1/evaluations", &empty).await;
    assert_eq!(reply.json()["decision"], false);
    let reply = server.post_json("/access/v1/evaluations", &json!({})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn decision_only_answers_are_exactly_the_decision() {
    let config = ApiConfig {
        authzen: AuthZenConfig {
            base_url: None,
            decision_only: true,
            ..AuthZenConfig::default()
        },
        ..ApiConfig::default()
    };
    let server = TestServer::start_with(notes(), config).await;
    assert_eq!(
        evaluation(&server, &eval("alice", "read", "n1"))
            .await
            .json(),
        json!({"decision": true})
    );
    assert_eq!(
        evaluation(&server, &eval("bob", "read", "n1")).await.json(),
        json!({"decision": false})
    );
    let body = json!({
        "subject": {"type": "user", "id": "alice"}, "action": {"name": "read"},
        "evaluations": [{"resource": {"type": "note", "id": "n1"}}, {"resource": {"type": "note"}}],
    });
    let reply = server.post_json("/access/v1/evaluations", &body).await;
    assert_eq!(
        reply.json(),
        json!({"evaluations": [{"decision": true}, {"decision": false}]})
    );
}

#[tokio::test]
async fn the_metadata_names_absolute_endpoints() {
    let server = TestServer::start(notes()).await;
    let reply = server.get("/.well-known/authzen-configuration").await;
    assert_eq!(reply.status, StatusCode::OK);
    let base = server.url();
    assert_eq!(
        reply.json(),
        json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
        })
    );
    let config = ApiConfig {
        authzen: AuthZenConfig {
            base_url: Some("https://pdp.example.com".to_owned()),
            decision_only: false,
            ..AuthZenConfig::default()
        },
        ..ApiConfig::default()
    };
    let proxied = TestServer::start_with(notes(), config).await;
    let doc = proxied
        .get("/.well-known/authzen-configuration")
        .await
        .json();
    assert_eq!(doc["policy_decision_point"], "https://pdp.example.com");
    assert_eq!(
        doc["access_evaluations_endpoint"],
        "https://pdp.example.com/access/v1/evaluations"
    );
    let reply = proxied
        .send(Method::POST, "/.well-known/authzen-configuration", &[], "")
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn not_ready_is_503_never_a_decision() {
    let server = TestServer::start(Sources {
        policy: repo_path("policies/authzen-example"),
        registry: RegistrySource::Entities(repo_path("no/such/entities.json")),
    })
    .await;
    let reply = evaluation(&server, &eval("alice", "read", "n1")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let reply = server
        .post_json(
            "/access/v1/evaluations",
            &json!({"evaluations": [eval("alice", "read", "n1")]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authzen_decisions_are_logged_and_counted_like_v1_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decisions.jsonl");
    let audit = AuditLog::start(
        Sink::File(path.clone()),
        Mode::Required,
        Rotation {
            max_bytes: 1024 * 1024,
            keep: 1,
        },
    )
    .unwrap();
    let server = TestServer::start_with_audit(notes(), ApiConfig::default(), audit).await;
    let one = evaluation(&server, &eval("alice", "read", "n1"))
        .await
        .json();
    let batch = server
        .post_json(
            "/access/v1/evaluations",
            &json!({"subject": {"type": "user", "id": "bob"}, "action": {"name": "read"},
                    "evaluations": [{"resource": {"type": "note", "id": "n1"}},
                                    {"resource": {"type": "note"}}]}),
        )
        .await
        .json();
    let check = server
        .post_json(
            "/v1/check",
            &json!({"subject": {"type": "user", "id": "alice"}, "action": "read",
                    "resource": {"type": "note", "id": "n1"}}),
        )
        .await
        .json();
    // Required mode: every answer above was given after its record was durable.
    let records: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |id: &Value| {
        records
            .iter()
            .find(|r| r["decision_id"] == *id)
            .unwrap_or_else(|| panic!("no record for {id}"))
            .clone()
    };
    let record = find(&one["context"]["decision_id"]);
    assert_eq!(record["origin"], "api:authzen");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["subject"], json!({"type": "user", "id": "alice"}));
    assert_eq!(record["action"], "read");
    assert_eq!(record["resource"], json!({"type": "note", "id": "n1"}));
    let denied = find(&batch["evaluations"][0]["context"]["decision_id"]);
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reasons"], json!(["no_matching_permit"]));
    let failed = find(&batch["evaluations"][1]["context"]["decision_id"]);
    assert_eq!(failed["reasons"], json!(["invalid_request"]));
    // The /v1/check record has the same shape.
    let same = find(&check["decision_id"]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&same), keys(&record));

    let metrics = String::from_utf8(server.get("/metrics").await.body.to_vec()).unwrap();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in metrics"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("flex_auth_decisions_total{decision=\"allow\"}"), 2.0);
    // The item that could not be evaluated is a deny too.
    assert_eq!(value("flex_auth_decisions_total{decision=\"deny\"}"), 2.0);
    assert_eq!(
        value("flex_auth_http_responses_total{code=\"200\",endpoint=\"authzen\"}"),
        2.0
    );
    // Latency: one evaluation and one /v1/check as `check`, the evaluations array as `batch`.
    assert_eq!(
        value("flex_auth_check_duration_seconds_count{endpoint=\"check\"}"),
        2.0
    );
    assert_eq!(
        value("flex_auth_check_duration_seconds_count{endpoint=\"batch\"}"),
        1.0
    );
}
