//! Listeners and connections: accept TCP (and TLS), serve HTTP/1.1 and h2 with hyper, enforce the
//! connection and request [`Limits`], and drain in-flight requests on shutdown within a bounded
//! grace. Every refusal here is a fail-closed 503 with `Retry-After` or a closed connection;
//! nothing reaches a handler past a limit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::telemetry::Metrics;
use crate::tls::{ClientCert, Tls};

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
}

/// The address of the client that sent a request (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A request's claim on its listener's in-flight budget (`--max-in-flight`), a request
/// extension. A request without a body is admitted before its handler runs; one with a body is
/// admitted by the handler once the body is read ([`read_body`]) or, for a body that streams
/// to an upstream, before it decides — so a client that trickles its body holds a connection,
/// never a slot that requests which are ready to be decided need.
///
/// Architecture invariant: every handler that reads or forwards a request body calls
/// [`Admission::admit`] before it decides; the server admits every other request itself.
#[derive(Debug)]
pub struct Admission {
    budget: Arc<Budget>,
    /// The probes are never shed.
    exempt: bool,
    permit: std::sync::OnceLock<OwnedSemaphorePermit>,
}

/// What every admission of one listener shares (one `Arc` clone per request, not one per metric).
#[derive(Debug)]
struct Budget {
    in_flight: Arc<Semaphore>,
    body_read_timeout: Duration,
    metrics: Option<Metrics>,
}

/// The in-flight limit is reached: 503 `overloaded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

impl Admission {
    /// Take a slot of the in-flight budget (once; later calls are free).
    pub fn admit(&self) -> Result<(), Overloaded> {
        if self.exempt || self.permit.get().is_some() {
            return Ok(());
        }
        match Arc::clone(&self.budget.in_flight).try_acquire_owned() {
            Ok(permit) => {
                // A second admit of the same request racing this one keeps one permit.
                let _ = self.permit.set(permit);
                Ok(())
            }
            Err(_) => {
                if let Some(metrics) = &self.budget.metrics {
                    metrics.request_shed();
                }
                Err(Overloaded)
            }
        }
    }

    /// How long reading the whole body may take.
    pub fn body_read_timeout(&self) -> Duration {
        self.budget.body_read_timeout
    }
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the limit (413).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not complete within the body-read timeout (408).
    Timeout(Duration),
    /// The connection failed while reading it (400).
    Read(String),
    /// Read, but the in-flight limit is reached (503).
    Overloaded,
}

/// Read a request body whole: at most `limit` bytes (whether or not a `Content-Length` says so),
/// within the body-read timeout, then take the request's in-flight slot. The one place request
/// bodies are buffered.
pub async fn read_body<B>(
    body: B,
    declared_length: Option<u64>,
    limit: usize,
    admission: Option<&Admission>,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    if declared_length.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let collect = Limited::new(body, limit).collect();
    // In-process callers (no listener, no admission) hand over bodies that are already whole.
    let collected = match admission {
        Some(admission) => tokio::time::timeout(admission.body_read_timeout(), collect)
            .await
            .map_err(|_| BodyError::Timeout(admission.body_read_timeout()))?,
        None => collect.await,
    };
    let collected = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(BodyError::TooLarge { limit })
        }
        Err(e) => return Err(BodyError::Read(e.to_string())),
    };
    if let Some(admission) = admission {
        admission
            .admit()
            .map_err(|Overloaded| BodyError::Overloaded)?;
    }
    Ok(collected)
}

impl From<BodyError> for crate::http::ApiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge { limit } => Self::BodyTooLarge { limit },
            BodyError::Timeout(after) => Self::BodyTimeout(after),
            BodyError::Read(message) => Self::BodyRead(message),
            BodyError::Overloaded => Self::Overloaded,
        }
    }
}

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
}

/// What every connection task of one listener shares.
struct Shared<H> {
    handler: H,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    metrics: Option<Metrics>,
    builder: auto::Builder<TokioExecutor>,
    budget: Arc<Budget>,
    closing: watch::Receiver<bool>,
    /// Every open connection's activity, for eviction at the connection limit. Locked only when
    /// a connection opens or closes, and when the limit is reached.
    open: std::sync::Mutex<std::collections::HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

impl<H> Shared<H> {
    /// Pick the connection idle the longest (one that never sent a request counts as idle
    /// since it was accepted), mark it and tell it to close. `false` when every connection has
    /// a request in flight.
    fn evict_oldest_idle(&self) -> bool {
        let Ok(open) = self.open.lock() else {
            return false;
        };
        let victim = open
            .values()
            .filter(|a| !a.evicted.load(Ordering::Acquire))
            .filter_map(|a| a.idle_since().map(|since| (since, a)))
            .min_by_key(|(since, _)| *since)
            .map(|(_, a)| Arc::clone(a));
        drop(open);
        match victim {
            Some(activity) => {
                activity.evicted.store(true, Ordering::Release);
                activity.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

/// How long a connection accepted over the limit waits for an evicted one to make room.
const EVICTION_WAIT: Duration = Duration::from_secs(1);

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
        })
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
        let shared = Arc::new(Shared {
            handler: self.handler,
            budget: Arc::new(Budget {
                in_flight: Arc::new(Semaphore::new(limits.max_in_flight.clamp(1, MAX_PERMITS))),
                body_read_timeout: limits.body_read_timeout,
                metrics: self.metrics.clone(),
            }),
            limits,
            tls: self.tls,
            metrics: self.metrics,
            builder,
            closing: close_rx,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_id: AtomicU64::new(0),
        });
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
                    let accepted = Instant::now();
                    let _ = stream.set_nodelay(true);
                    if let Ok(permit) = Arc::clone(&connections).try_acquire_owned() {
                        tokio::spawn(connection(Arc::clone(&shared), stream, peer, permit, accepted));
                        continue;
                    }
                    // At the limit: the connection idle the longest makes room (silent sockets
                    // first), so that probes and real clients get in; only when every connection
                    // has a request in flight is the new one closed.
                    if shared.evict_oldest_idle() {
                        let shared = Arc::clone(&shared);
                        let connections = Arc::clone(&connections);
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
                        continue;
                    }
                    drop(stream);
                    if let Some(metrics) = &shared.metrics {
                        metrics.connection_refused();
                    }
                    if refused_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        refused_logged = Some(Instant::now());
                        tracing::warn!(max = max_connections, %peer, "connection limit reached with every connection busy; closing new connections");
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let _ = close_tx.send(true);
        let open = max_connections - connections.available_permits();
        tracing::info!(
            connections = open,
            "shutting down: stopped accepting, closing idle connections, draining in-flight requests"
        );
        let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(
            shared.limits.shutdown_grace,
            Arc::clone(&connections).acquire_many_owned(all),
        )
        .await;
        match drained {
            Ok(_) => {
                tracing::info!("drained");
                Drain::Clean
            }
            Err(_) => {
                let cut = max_connections - connections.available_permits();
                tracing::error!(
                    grace = %humantime::format_duration(shared.limits.shutdown_grace),
                    connections = cut,
                    "shutdown grace elapsed with requests in flight; cutting them"
                );
                Drain::Cut(cut)
            }
        }
    }
}

/// Semaphores hold at most this many permits (tokio's limit is larger; this keeps `u32` math exact).
const MAX_PERMITS: usize = 1 << 24;

/// One accepted connection: TLS handshake within the header timeout, then HTTP until the client
/// leaves, the connection idles past the keep-alive timeout, or shutdown closes it.
async fn connection<H: Handler>(
    shared: Arc<Shared<H>>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    accepted: Instant,
) {
    let _permit = permit;
    let activity = Arc::new(Activity::new(accepted));
    let _registered = Registered::new(Arc::clone(&shared), Arc::clone(&activity));
    let Some(tls) = shared.tls.clone() else {
        serve_http(shared, stream, peer, ClientCert::NotRequired, activity).await;
        return;
    };
    let handshake = tokio::time::timeout(
        shared.limits.header_read_timeout,
        tls.acceptor().accept(stream),
    );
    let handshake = async {
        tokio::select! {
            result = handshake => Some(result),
            () = activity.evict.notified() => None,
        }
    };
    match handshake.await {
        None => tracing::debug!(%peer, "evicted during the TLS handshake at the connection limit"),
        Some(Ok(Ok(stream))) => {
            let client = tls.identify(stream.get_ref().1.peer_certificates());
            serve_http(shared, stream, peer, client, activity).await;
        }
        Some(Ok(Err(e))) => {
            if let Some(metrics) = &shared.metrics {
                metrics.tls_handshake_failed();
            }
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Some(Err(_)) => {
            if let Some(metrics) = &shared.metrics {
                metrics.tls_handshake_failed();
            }
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// A connection's entry in the listener's table of open connections, removed when it closes.
struct Registered<H> {
    shared: Arc<Shared<H>>,
    id: u64,
}

impl<H> Registered<H> {
    fn new(shared: Arc<Shared<H>>, activity: Arc<Activity>) -> Self {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut open) = shared.open.lock() {
            open.insert(id, activity);
        }
        Self { shared, id }
    }
}

impl<H> Drop for Registered<H> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.shared.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    /// When the connection was accepted.
    started: Instant,
    in_flight: AtomicUsize,
    idle_since_ms: AtomicU64,
    /// Whether any request's headers arrived yet.
    seen_request: AtomicBool,
    /// Set when the connection limit is reached and this idle connection is to make room.
    evicted: AtomicBool,
    evict: tokio::sync::Notify,
}

impl Activity {
    fn new(started: Instant) -> Self {
        Self {
            started,
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            seen_request: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn saw_request(&self) {
        self.seen_request.store(true, Ordering::Release);
    }

    /// When the connection last had nothing in flight (accepted, or its last response sent);
    /// `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.started.checked_add(since)
    }

    /// When the connection will have idled for `timeout`, or `None` while a request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        self.started
            .checked_add(since)
            .and_then(|at| at.checked_add(timeout))
    }
}

/// Held while a request is in flight (until its response body is fully sent): marks the
/// connection busy and holds an in-flight permit.
struct InFlight {
    activity: Arc<Activity>,
    /// Holds the in-flight slot, once taken, until the response is sent.
    _admission: Arc<Admission>,
}

impl InFlight {
    fn new(activity: Arc<Activity>, admission: Arc<Admission>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            activity,
            _admission: admission,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .idle_since_ms
            .store(self.activity.now_ms(), Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted in flight until hyper has sent (or dropped) it.
struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

type ServerBody<B> = Either<Tracked<B>, Full<Bytes>>;

async fn serve_http<H, I>(
    shared: Arc<Shared<H>>,
    io: I,
    peer: SocketAddr,
    client: ClientCert,
    activity: Arc<Activity>,
) where
    H: Handler,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // The first request's headers must arrive within the header-read timeout of the accept
    // (TLS handshake included). hyper's own timer starts only once it reads for a request, and
    // the HTTP/1.1-or-h2 detection reads first, so a socket that sends nothing is cut here.
    let first_request_by = activity
        .started
        .checked_add(shared.limits.header_read_timeout)
        .unwrap_or_else(Instant::now);
    let service = {
        let shared = Arc::clone(&shared);
        let activity = Arc::clone(&activity);
        ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(panic_response))
            .service_fn(move |request: Request<Incoming>| {
                answer(
                    Arc::clone(&shared),
                    Arc::clone(&activity),
                    request,
                    peer,
                    client.clone(),
                )
            })
    };
    let connection = shared
        .builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut closing = shared.closing.clone();
    let keepalive = shared.limits.keepalive_timeout;
    let mut shutting_down = false;
    loop {
        let idle_at = activity
            .idle_deadline(keepalive)
            .or_else(|| Instant::now().checked_add(keepalive))
            .unwrap_or_else(Instant::now);
        let silent = !activity.seen_request.load(Ordering::Acquire);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(first_request_by.into()), if silent => {
                if !activity.seen_request.load(Ordering::Acquire) {
                    tracing::debug!(%peer, "closing a connection that sent no request within the header-read timeout");
                    return;
                }
            }
            () = activity.evict.notified() => {
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    tracing::debug!(%peer, "closing the longest-idle connection to make room at the connection limit");
                    return;
                }
                // A request arrived since it was picked: finish it, then close.
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            _ = closing.wait_for(|closing| *closing), if !shutting_down => {
                // Idle connections close now; busy ones after their in-flight requests.
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
            }
            () = tokio::time::sleep_until(idle_at.into()), if !shutting_down => {
                if activity.idle_deadline(keepalive).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(%peer, "closing a connection idle past the keep-alive timeout");
                    connection.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// Admission (in-flight limit), the request deadline, and the handler.
async fn answer<H: Handler>(
    shared: Arc<Shared<H>>,
    activity: Arc<Activity>,
    mut request: Request<Incoming>,
    peer: SocketAddr,
    client: ClientCert,
) -> Result<Response<ServerBody<H::Body>>, Infallible> {
    use hyper::body::Body as _;
    activity.saw_request();
    let admission = Arc::new(Admission {
        budget: Arc::clone(&shared.budget),
        exempt: shared.handler.exempt_from_shedding(&request),
        permit: std::sync::OnceLock::new(),
    });
    // A request with a body is admitted by its handler once the body is in (see `Admission`).
    if request.body().is_end_stream() && admission.admit().is_err() {
        return Ok(refusal(
            "overloaded",
            "too many requests in flight; retry shortly (treat as deny)",
        ));
    }
    let in_flight = InFlight::new(activity, Arc::clone(&admission));
    request.extensions_mut().insert(PeerAddr(peer));
    request.extensions_mut().insert(client);
    request.extensions_mut().insert(admission);
    let deadline = shared.limits.request_timeout;
    match tokio::time::timeout(deadline, shared.handler.handle(request)).await {
        Ok(response) => Ok(response.map(|body| {
            Either::Left(Tracked {
                body,
                _in_flight: in_flight,
            })
        })),
        Err(_) => {
            if let Some(metrics) = &shared.metrics {
                metrics.deadline_exceeded();
            }
            tracing::warn!(%peer, deadline = %humantime::format_duration(deadline), "request deadline exceeded; answered 503");
            Ok(refusal(
                "deadline_exceeded",
                "no answer within the request deadline (treat as deny)",
            ))
        }
    }
}

/// A fail-closed 503 with `Retry-After` from the connection layer.
fn refusal<B>(code: &str, message: &str) -> Response<Either<B, Full<Bytes>>> {
    let body = serde_json::json!({
        "error": {"code": code, "message": message},
        "fail_closed": true,
    });
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<Full<Bytes>> {
    tracing::error!("handler panicked; answered 503");
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"error":{"code":"internal_error","message":"internal error, treat as deny"},"fail_closed":true}"#,
    )));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

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
