//! Listeners and connections: accept TCP (and TLS), serve HTTP/1.1 and h2 with hyper, enforce the
//! connection and request [`Limits`], and drain in-flight requests on shutdown within a bounded
//! grace. Every refusal here is a fail-closed 503 with `Retry-After` or a closed connection;
//! nothing reaches a handler past a limit.
//!
//! `admission` holds the in-flight budget and the one limited body reader; `connection` serves
//! one accepted connection (TLS, deadlines, the connection table, refusals).

mod admission;
mod connection;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::http::Buffered;
use crate::telemetry::Metrics;
use crate::tls::Tls;

pub use admission::{read_body, Admission, BodyError, Overloaded};
use connection::{connection, Shared, EVICTION_WAIT};

/// Something that answers HTTP requests: the decision API, the admin API or the proxy.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body (a buffered JSON answer, or an upstream's streamed body).
    type Body: hyper::body::Body<Data = Bytes, Error = Self::BodyError> + Send + Unpin + 'static;
    /// Its error type.
    type BodyError: Into<Box<dyn std::error::Error + Send + Sync>>;

    /// Answer one request. Never fails: every error is a response. The request carries the
    /// client's address as a [`PeerAddr`] extension and its certificate as a [`ClientCert`].
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// Whether `request` is answered even past `--max-in-flight`: a handler's own probes, so that
    /// an overloaded instance is not also restarted by its liveness probe. Nothing by default.
    fn exempt_from_shedding(&self, request: &Request<Incoming>) -> bool {
        let _ = request;
        false
    }

    /// The answer, in this handler's protocol, to a request the server refuses itself (over the
    /// in-flight limit, past the request deadline, a handler that panicked). By default a JSON
    /// 503 with `Retry-After` and `fail_closed: true`; a gRPC handler answers a deny message
    /// instead, so that a caller that allows on transport errors still gets a deny.
    fn refusal(&self, refusal: Refusal) -> Response<Buffered> {
        refusal.json().map(Buffered::new)
    }
}

/// Why the server answered a request without (or instead of) its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-in-flight` is reached.
    Overloaded,
    /// No response headers within `--request-timeout`.
    DeadlineExceeded,
    /// The handler panicked.
    Panicked,
}

impl Refusal {
    /// The stable `error.code`.
    pub fn code(self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Panicked => "internal_error",
        }
    }

    /// What it says to a person.
    pub fn message(self) -> &'static str {
        match self {
            Self::Overloaded => "too many requests in flight; retry shortly (treat as deny)",
            Self::DeadlineExceeded => "no answer within the request deadline (treat as deny)",
            Self::Panicked => "internal error, treat as deny",
        }
    }

    /// The JSON 503 every HTTP handler answers: `Retry-After` unless the handler failed.
    pub fn json(self) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": {"code": self.code(), "message": self.message()},
            "fail_closed": true,
        });
        let mut response = Response::new(Bytes::from(body.to_string()));
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if self != Self::Panicked {
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// An in-flight budget (`--max-in-flight`) that several listeners share: the gRPC ext_authz
/// listener takes its slots from the decision listener's, so the two together never handle more
/// than the one limit.
#[derive(Debug, Clone)]
pub struct InFlightLimit(Arc<Semaphore>);

impl InFlightLimit {
    /// A budget of `max` requests at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max.clamp(1, MAX_PERMITS))))
    }
}

/// The address of the client that sent a request (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Connection and request limits of one listener (every one a flag; shown in `/v1/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time for a client to finish the TLS handshake and send a request's headers (slowloris).
    /// For HTTP/1.1 the wait for the next request on a kept-alive connection counts too.
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1) or header list (h2); larger gets 431.
    pub max_header_bytes: usize,
    /// Time from a request's headers to the end of its body, for a handler that reads the body
    /// whole; then 408 `body_timeout`.
    pub body_read_timeout: Duration,
    /// Time from a request's headers to its response's headers; then 503 `deadline_exceeded`.
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub keepalive_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Requests handled at once; more get 503 `overloaded` with `Retry-After` at once.
    pub max_in_flight: usize,
    /// Concurrent streams one h2 connection may open.
    pub h2_max_concurrent_streams: u32,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            body_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_in_flight: 1024,
            h2_max_concurrent_streams: 128,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

/// hyper refuses HTTP/1.1 read buffers smaller than this.
const MIN_HEADER_BYTES: usize = 8 * 1024;

impl Limits {
    /// The `limits` of `/v1/status` (durations written like the flags).
    pub fn status(&self) -> serde_json::Value {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        serde_json::json!({
            "header_read_timeout": d(self.header_read_timeout),
            "max_header_bytes": self.max_header_bytes,
            "body_read_timeout": d(self.body_read_timeout),
            "request_timeout": d(self.request_timeout),
            "keepalive_timeout": d(self.keepalive_timeout),
            "max_connections": self.max_connections,
            "max_in_flight": self.max_in_flight,
            "h2_max_concurrent_streams": self.h2_max_concurrent_streams,
            "shutdown_grace": d(self.shutdown_grace),
        })
    }
}

/// How a listener's shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every connection finished within the grace.
    Clean,
    /// The grace ran out; this many connections were cut.
    Cut(usize),
}

/// A bound listener, not yet serving.
#[derive(Debug)]
pub struct Server<H> {
    listener: TcpListener,
    handler: H,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    metrics: Option<Metrics>,
    in_flight: Option<InFlightLimit>,
}

impl<H: Handler> Server<H> {
    /// Bind `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, handler: H, limits: Limits) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            handler,
            limits,
            tls: None,
            metrics: None,
            in_flight: None,
        })
    }

    /// Take in-flight slots from `limit` (shared with other listeners) instead of a budget of
    /// this listener's own `max_in_flight`.
    pub fn with_in_flight_limit(mut self, limit: InFlightLimit) -> Self {
        self.in_flight = Some(limit);
        self
    }

    /// Serve HTTPS with `tls` (ALPN h2 and http/1.1) instead of plain HTTP.
    pub fn with_tls(mut self, tls: Arc<Tls>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Count shed requests, refused connections, deadlines and TLS handshake failures.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes, then stop accepting, close idle connections, let
    /// in-flight requests finish for at most the shutdown grace, and cut what remains.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Drain {
        let limits = self.limits.clone();
        let max_connections = limits.max_connections.clamp(1, MAX_PERMITS);
        let connections = Arc::new(Semaphore::new(max_connections));
        let (close_tx, close_rx) = watch::channel(false);
        let in_flight = self
            .in_flight
            .unwrap_or_else(|| InFlightLimit::new(limits.max_in_flight));
        let shared = Arc::new(Shared::new(
            self.handler,
            limits,
            self.tls,
            self.metrics,
            in_flight,
            close_rx,
        ));
        let mut refused_logged: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    if !admit_connection(&shared, &connections, stream, peer)
                        && refused_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
                    {
                        refused_logged = Some(Instant::now());
                        tracing::warn!(max = max_connections, %peer, "connection limit reached with every connection busy; closing new connections");
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let _ = close_tx.send(true);
        drain(&connections, max_connections, shared.limits.shutdown_grace).await
    }
}

/// hyper's HTTP/1.1 and h2 settings for `limits`.
pub(super) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(64));
    builder
}

/// Serve an accepted connection, or make room for it. At the limit the connection idle the
/// longest makes room (silent sockets first), so that probes and real clients get in; only when
/// every connection has a request in flight is the new one closed (`false`).
fn admit_connection<H: Handler>(
    shared: &Arc<Shared<H>>,
    connections: &Arc<Semaphore>,
    stream: TcpStream,
    peer: SocketAddr,
) -> bool {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    if let Ok(permit) = Arc::clone(connections).try_acquire_owned() {
        tokio::spawn(connection(
            Arc::clone(shared),
            stream,
            peer,
            permit,
            accepted,
        ));
        return true;
    }
    if shared.evict_oldest_idle() {
        let shared = Arc::clone(shared);
        let connections = Arc::clone(connections);
        tokio::spawn(async move {
            match tokio::time::timeout(EVICTION_WAIT, connections.acquire_owned()).await {
                Ok(Ok(permit)) => connection(shared, stream, peer, permit, accepted).await,
                _ => {
                    if let Some(metrics) = &shared.metrics {
                        metrics.connection_refused();
                    }
                }
            }
        });
        return true;
    }
    drop(stream);
    if let Some(metrics) = &shared.metrics {
        metrics.connection_refused();
    }
    false
}

/// Wait for every connection to finish, at most `grace`.
async fn drain(connections: &Arc<Semaphore>, max_connections: usize, grace: Duration) -> Drain {
    let open = max_connections - connections.available_permits();
    tracing::info!(
        connections = open,
        "shutting down: stopped accepting, closing idle connections, draining in-flight requests"
    );
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    match tokio::time::timeout(grace, Arc::clone(connections).acquire_many_owned(all)).await {
        Ok(_) => {
            tracing::info!("drained");
            Drain::Clean
        }
        Err(_) => {
            let cut = max_connections - connections.available_permits();
            tracing::error!(
                grace = %humantime::format_duration(grace),
                connections = cut,
                "shutdown grace elapsed with requests in flight; cutting them"
            );
            Drain::Cut(cut)
        }
    }
}

/// Semaphores hold at most this many permits (tokio's limit is larger; this keeps `u32` math exact).
pub(super) const MAX_PERMITS: usize = 1 << 24;

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not
/// when the future is first polled, so a signal that arrives right after start-up is never met
/// by the default action (immediate termination without draining).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (term, int) => {
                    if let Some(e) = term.err().or(int.err()) {
                        tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; only Ctrl-C stops the server");
                    }
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
