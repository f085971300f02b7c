//! The shipped broker example (deploy/examples/broker) behind the real proxy, in front of a real
//! upstream that records what reaches it: shared by the proxy and adversarial tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flex_auth::api::{Api, ApiConfig};
use flex_auth::audit::AuditLog;
use flex_auth::auth::{AuthSettings, Authenticator, JwksSource};
use flex_auth::gate::Gate;
use flex_auth::proxy::Proxy;
use flex_auth::routes::Routes;
use flex_auth::{RegistrySource, Sources, State};
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::sync::oneshot;

use super::jwt::{self, TestKey};
use super::{repo_path, send, serve_handler, Reply, TestServer};

pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "broker";

/// What reached the upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// A real upstream: records every request; `/slow` answers after 3 s.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Start it on `127.0.0.1:0`.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let record = record.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                record.lock().unwrap().push(Seen {
                                    method: parts.method.clone(),
                                    path: parts.uri.to_string(),
                                    headers: parts.headers.clone(),
                                    body,
                                });
                                if parts.uri.path() == "/slow" {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                }
                                let mut response = http::Response::new(Full::new(
                                    Bytes::from_static(br#"{"credentials":"minted"}"#),
                                ));
                                response
                                    .headers_mut()
                                    .insert("x-upstream", "yes".parse().unwrap());
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    /// How many requests reached it.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The last request that reached it.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

pub fn broker_sources() -> Sources {
    Sources {
        policy: repo_path("deploy/examples/broker/policy.cedar"),
        registry: RegistrySource::Snapshot(repo_path("deploy/examples/broker/registry.json")),
    }
}

/// flex-auth with the broker example: the API (with forward-auth) and the proxy in front of
/// `upstream_addr`.
pub struct Broker {
    /// The decision API (with forward-auth).
    pub api: TestServer,
    /// The proxy listener.
    pub proxy: SocketAddr,
    _proxy_stop: oneshot::Sender<()>,
    /// The authenticator.
    pub auth: Arc<Authenticator>,
}

pub async fn start_broker(
    settings: AuthSettings,
    upstream_addr: SocketAddr,
    audit: AuditLog,
) -> Broker {
    let routes = Routes::load(&repo_path("deploy/examples/broker/routes.yaml")).unwrap();
    broker_with_routes(settings, upstream_addr, audit, routes).await
}

pub async fn broker_with_routes(
    settings: AuthSettings,
    upstream_addr: SocketAddr,
    audit: AuditLog,
    routes: Routes,
) -> Broker {
    let state = Arc::new(State::new(broker_sources()));
    state.reload(flex_auth::state::Trigger::Startup).unwrap();
    let routes = Arc::new(routes);
    let auth = Arc::new(Authenticator::new(settings).await.unwrap());
    auth.spawn_refresh();
    let api = Api::new(state.clone(), ApiConfig::default())
        .unwrap()
        .with_audit(audit.clone());
    let gate = Gate::new(
        state.clone(),
        routes,
        auth.clone(),
        audit,
        api.metrics().clone(),
    );
    let proxy = Proxy::new(
        gate.clone(),
        format!("http://{upstream_addr}").parse().unwrap(),
        Duration::from_secs(1),
    );
    let upstream_health = proxy.spawn_probe(Duration::from_millis(100));
    let (proxy_addr, proxy_stop, _) = serve_handler(proxy).await;
    let api = TestServer::start_api(state, api.with_gate(gate).with_probe(upstream_health)).await;
    Broker {
        api,
        proxy: proxy_addr,
        _proxy_stop: proxy_stop,
        auth,
    }
}

pub fn jwks_file(dir: &tempfile::TempDir, keys: &[&TestKey]) -> AuthSettings {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwt::jwks(keys).to_string()).unwrap();
    let mut settings = AuthSettings::new(ISSUER, &[AUDIENCE]);
    settings.jwks = Some(JwksSource::File(path));
    settings
}

pub async fn mint(broker: &Broker, token: Option<&str>, extra: &[(&str, &str)]) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("authorization", b.as_str()));
    }
    headers.extend_from_slice(extra);
    send(
        broker.proxy,
        Method::POST,
        "/v1/mint-aws-creds",
        &headers,
        json!({"role": "aws:demo-readonly", "ttl_hours": 1}).to_string(),
    )
    .await
}
