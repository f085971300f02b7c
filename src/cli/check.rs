//! `flex-auth check`: one decision, asked of a running server (`--url`) or of the files directly,
//! turned into an exit code; and the small JSON-over-HTTP client the admin commands share.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{EXIT_CANNOT_DECIDE, EXIT_DENY, EXIT_OK};
use crate::config::{CheckArgs, SourceArgs};
use crate::decision::{CheckRequest, ResourceRef, SubjectRef};
use crate::http::DecisionBody;
use crate::state;

/// `flex-auth check`.
pub fn check(args: &CheckArgs) -> ExitCode {
    let request = match build_request(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CANNOT_DECIDE);
        }
    };
    let response = match &args.url {
        Some(url) => check_remote(url, &request, args.timeout),
        None => check_local(&args.sources, request),
    };
    match response {
        Ok(body) => report(&body, args.json),
        Err(e) => {
            eprintln!("cannot decide (treat as deny): {e}");
            ExitCode::from(EXIT_CANNOT_DECIDE)
        }
    }
}

fn build_request(args: &CheckArgs) -> Result<CheckRequest, String> {
    if let Some(path) = &args.request {
        let text = if path == Path::new("-") {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("cannot read the request from stdin: {e}"))?;
            text
        } else {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        };
        crate::json::check_unique_keys(text.as_bytes())
            .map_err(|e| format!("invalid request JSON: {e}"))?;
        return serde_json::from_str(&text).map_err(|e| format!("invalid request JSON: {e}"));
    }
    let subject = args
        .subject
        .clone()
        .ok_or("missing --subject (or --request)")?;
    let action = args
        .action
        .clone()
        .ok_or("missing --action (or --request)")?;
    let resource_id = args
        .resource_id
        .clone()
        .unwrap_or_else(|| subject.strip_prefix("iam:").unwrap_or(&subject).to_owned());
    let context = match &args.context {
        Some(text) => match crate::json::parse_value(text.as_bytes()) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => return Err("--context must be a JSON object".to_owned()),
            Err(e) => return Err(format!("--context is not valid JSON: {e}")),
        },
        None => None,
    };
    Ok(CheckRequest {
        subject: SubjectRef {
            entity_type: args.subject_type.clone(),
            id: subject,
        },
        action,
        resource: ResourceRef {
            entity_type: args.resource_type.clone(),
            id: resource_id,
        },
        context,
    })
}

fn check_local(sources: &SourceArgs, request: CheckRequest) -> Result<Value, String> {
    let sources = sources.sources().map_err(|e| e.to_string())?;
    let engine = state::load(&sources).map_err(|e| e.to_string())?;
    let outcome = engine
        .decide(&request)
        .map_err(|e| format!("invalid request: {e}"))?;
    serde_json::to_value(DecisionBody::new(&engine, outcome)).map_err(|e| e.to_string())
}

fn check_remote(url: &str, request: &CheckRequest, timeout: Duration) -> Result<Value, String> {
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let endpoint = format!("{}/v1/check", url.trim_end_matches('/'));
    let (status, value) = http_json(http::Method::POST, &endpoint, body, None, timeout)?;
    if !status.is_success() {
        return Err(format!(
            "{endpoint} answered {status}: {}",
            error_message(&value)
        ));
    }
    Ok(value)
}

pub(super) fn error_message(value: &Value) -> &str {
    value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no error message")
}

/// Send a JSON body and read a JSON answer, within `timeout`.
pub(super) fn http_json(
    method: http::Method,
    endpoint: &str,
    body: Vec<u8>,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(http::StatusCode, Value), String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("invalid URL `{endpoint}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "`{endpoint}`: only http:// is supported by this build"
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let http_request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = client
                .request(http_request)
                .await
                .map_err(|e| format!("cannot reach {endpoint}: {}", connect_problem(&e)))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the response: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {endpoint} within {}",
                    humantime::format_duration(timeout)
                )
            })??;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!("{endpoint} answered {status} with a body that is not JSON: {e}")
        })?;
        Ok((status, value))
    })
}

/// Print the answer and turn it into the exit code. Anything that is not a well-formed allow
/// counts as "cannot decide" or deny, never as allow.
fn report(body: &Value, json: bool) -> ExitCode {
    let decision = body.get("decision").and_then(Value::as_str);
    let allowed = body.get("allowed").and_then(Value::as_bool);
    let id = body
        .get("decision_id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let code = match (decision, allowed) {
        (Some("allow"), Some(true)) => EXIT_OK,
        (Some("deny"), Some(false)) => EXIT_DENY,
        _ => {
            eprintln!(
                "cannot decide (treat as deny): the answer has no consistent decision: {body}"
            );
            return ExitCode::from(EXIT_CANNOT_DECIDE);
        }
    };
    if json {
        println!("{body}");
    } else {
        let reasons: Vec<&str> = body
            .get("reasons")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if code == EXIT_OK {
            println!("allow {id}");
        } else {
            println!("deny {id} reasons={}", reasons.join(","));
        }
    }
    ExitCode::from(code)
}

/// What a failed client request says to a person: `connection refused`, not `client error (Connect)`.
fn connect_problem(error: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "connection refused (is flex-auth serving there?)".to_owned()
                }
                _ => io.to_string(),
            };
        }
        source = inner.source();
    }
    error.to_string()
}
