//! Bad input over real HTTP: every case gets a specific 4xx (or 503) with a JSON error code,
//! never a 500, and the server keeps serving afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "integration tests fail by panicking"
)]

mod support;

use http::{Method, StatusCode};
use serde_json::json;
use support::{ops_warden, sign_request, temp_package, TestServer};

const JSON: (&str, &str) = ("content-type", "application/json");

async fn assert_still_serving(server: &TestServer) {
    assert_eq!(server.bridge_decision(4).await, "allow");
}

#[tokio::test]
async fn malformed_json_is_invalid_json() {
    let server = TestServer::start(ops_warden()).await;
    for body in [
        "{",
        "not json",
        "{\"subject\": }",
        "",
        "[1,2",
        "{} trailing",
    ] {
        let reply = server.send(Method::POST, "/v1/check", &[JSON], body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "body {body:?}");
        assert_eq!(reply.error_code(), "invalid_json", "body {body:?}");
    }
    assert_still_serving(&server).await;
}

#[tokio::test]
async fn missing_fields_are_named() {
    let server = TestServer::start(ops_warden()).await;
    let cases = [
        (
            json!({"action": "sign", "resource": {"type": "Actor", "id": "a"}}),
            "subject",
        ),
        (
            json!({"subject": {"id": "a"}, "resource": {"type": "Actor", "id": "a"}}),
            "action",
        ),
        (
            json!({"subject": {"id": "a"}, "action": "sign"}),
            "resource",
        ),
        (
            json!({"subject": {"id": "a"}, "action": "sign", "resource": {"id": "a"}}),
            "resource.type",
        ),
        (
            json!({"subject": {}, "action": "sign", "resource": {"type": "Actor", "id": "a"}}),
            "subject.id",
        ),
    ];
    for (body, field) in cases {
        let reply = server.post_json("/v1/check", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "missing_field", "{body}");
        assert_eq!(error["field"], field, "{body}");
    }
}

#[tokio::test]
async fn wrong_types_are_named() {
    let server = TestServer::start(ops_warden()).await;
    let cases = [
        (
            json!({"subject": {"id": 7}, "action": "sign", "resource": {"type": "Actor", "id": "a"}}),
            "subject.id",
        ),
        (
            json!({"subject": {"id": "a"}, "action": ["sign"], "resource": {"type": "Actor", "id": "a"}}),
            "action",
        ),
        (
            json!({"subject": {"id": "a"}, "action": "sign", "resource": "Actor::a"}),
            "resource",
        ),
        (
            json!({"subject": {"id": "a"}, "action": "sign", "resource": {"type": "Actor", "id": "a"}, "context": [1]}),
            "context",
        ),
        (json!([1, 2]), "request"),
    ];
    for (body, field) in cases {
        let reply = server.post_json("/v1/check", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "invalid_field", "{body}: {error}");
        assert_eq!(error["field"], field, "{body}: {error}");
    }
}

#[tokio::test]
async fn unknown_fields_are_named() {
    let server = TestServer::start(ops_warden()).await;
    let mut body = sign_request("a", "a", 1, &[]);
    body["ressource"] = json!({});
    let reply = server.post_json("/v1/check", &body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "unknown_field");
    assert_eq!(reply.json()["error"]["field"], "ressource");
}

#[tokio::test]
async fn requests_the_schema_rejects_are_invalid_requests() {
    let server = TestServer::start(ops_warden()).await;
    let cases = [
        // Context of the wrong shape for `sign`.
        (
            sign_request("a", "agt-state-hub-bridge", 4, &[])
                .tap(|b| b["context"]["ttl_hours"] = json!("4")),
            "context",
        ),
        (
            sign_request("a", "agt-state-hub-bridge", 4, &[]).tap(|b| {
                b["context"].as_object_mut().unwrap().remove("ttl_hours");
            }),
            "context",
        ),
        // An action the schema does not declare.
        (
            sign_request("a", "agt-state-hub-bridge", 4, &[])
                .tap(|b| b["action"] = json!("delete")),
            "action",
        ),
        // A resource type the schema does not declare, or not a valid type name.
        (
            sign_request("a", "x", 4, &[]).tap(|b| b["resource"]["type"] = json!("Ship")),
            "resource.type",
        ),
        (
            sign_request("a", "x", 4, &[]).tap(|b| b["resource"]["type"] = json!("not a type")),
            "resource.type",
        ),
        (
            sign_request("a", "x", 4, &[]).tap(|b| b["subject"]["type"] = json!("Actor")),
            "subject.type",
        ),
        (
            sign_request("a", "x", 4, &[]).tap(|b| b["action"] = json!("")),
            "action",
        ),
    ];
    for (body, field) in cases {
        let reply = server.post_json("/v1/check", &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "invalid_request", "{body}: {error}");
        assert_eq!(error["field"], field, "{body}: {error}");
    }
    assert_still_serving(&server).await;
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}
impl Tap for serde_json::Value {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

#[tokio::test]
async fn oversized_body_is_413_whether_declared_or_streamed() {
    let server = TestServer::start_with(
        ops_warden(),
        flex_auth::api::ApiConfig {
            max_body_bytes: 1024,
            ..Default::default()
        },
    )
    .await;
    let mut body = sign_request("a", "a", 1, &[]);
    body["context"]["padding"] = json!("x".repeat(2000));
    let reply = server.post_json("/v1/check", &body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "body_too_large");

    // Chunked, with no Content-Length: the limit still holds while reading.
    let reply = raw_chunked_post(server.addr, &"y".repeat(4096)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_still_serving(&server).await;
}

async fn raw_chunked_post(addr: std::net::SocketAddr, payload: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = "POST /v1/check HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        for chunk in payload.as_bytes().chunks(512) {
            let frame = format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                String::from_utf8_lossy(chunk)
            );
            if stream.write_all(frame.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(support::DEADLINE, io)
        .await
        .expect("within deadline")
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let server = TestServer::start(ops_warden()).await;
    let body = serde_json::to_vec(&sign_request("a", "a", 1, &[])).unwrap();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let reply = server
            .send(
                Method::POST,
                "/v1/check",
                &[("content-type", content_type)],
                body.clone(),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
        assert_eq!(reply.error_code(), "unsupported_media_type");
    }
    let reply = server
        .send(
            Method::POST,
            "/v1/check",
            &[("content-type", "application/json; charset=utf-8")],
            body,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let server = TestServer::start(ops_warden()).await;
    let reply = server.get("/v1/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "not_found");

    let reply = server.get("/v1/check").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.error_code(), "method_not_allowed");
    assert_eq!(reply.headers["allow"], "POST");

    let reply = server.send(Method::DELETE, "/healthz", &[], "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn broken_policy_starts_unready_and_every_check_is_503() {
    let dir = temp_package(&[(
        "broken.cedar",
        "permit(principal, action, resource)\nwhen { principal. };\n",
    )]);
    let mut sources = ops_warden();
    sources.policy = dir.path().to_path_buf();
    let server = TestServer::start(sources).await;

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json();
    assert_eq!(body["status"], "unready");
    let reason = body["checks"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("broken.cedar:2:"), "{reason}");

    let reply = server.post_bridge(4).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code(), "not_ready");
    assert_eq!(reply.json()["fail_closed"], true);

    let reply = server
        .post_json("/v1/check/batch", &json!({"checks": []}))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // Liveness is unaffected: the process serves.
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
}

#[tokio::test]
async fn evaluation_error_denies_and_names_the_policy() {
    // No schema, so the validator cannot catch `principal.level` on a principal without it.
    let dir = temp_package(&[
        (
            "policies.cedar",
            r#"@id("always")
permit(principal, action, resource);

@id("level-check")
permit(principal, action, resource) when { principal.level > 3 };
"#,
        ),
        (
            "entities.json",
            r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []}]"#,
        ),
    ]);
    let sources = flex_auth::Sources {
        policy: dir.path().join("policies.cedar"),
        registry: flex_auth::RegistrySource::Entities(dir.path().join("entities.json")),
    };
    let server = TestServer::start(sources).await;
    let reply = server
        .post_json(
            "/v1/check",
            &json!({"subject": {"type": "User", "id": "alice"}, "action": "read", "resource": {"type": "Doc", "id": "d"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    // Cedar alone would allow (the erroring permit is skipped and `always` matches).
    assert_eq!(body["decision"], "deny", "{body}");
    assert_eq!(body["reasons"], json!(["policy_error"]));
    assert_eq!(body["policies"], json!(["level-check"]));
    assert_eq!(body["errors"][0]["policy"], "level-check");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("level"),
        "{body}"
    );
}
