//! One accepted connection: the TLS handshake and first request within the header timeout, the
//! connection table that lets the longest-idle connection make room at the limit, keep-alive
//! deadlines, in-flight admission of bodiless requests, and the refusals a handler never sees.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::http::Buffered;
use crate::telemetry::Metrics;
use crate::tls::{ClientCert, Tls};

use super::admission::Budget;
use super::{http_builder, Admission, Handler, InFlightLimit, Limits, PeerAddr, Refusal};

/// What every connection task of one listener shares.
pub(super) struct Shared<H> {
    handler: H,
    pub(super) limits: Limits,
    tls: Option<Arc<Tls>>,
    pub(super) metrics: Option<Metrics>,
    builder: auto::Builder<TokioExecutor>,
    budget: Arc<Budget>,
    closing: watch::Receiver<bool>,
    /// Every open connection's activity, for eviction at the connection limit. Locked only when
    /// a connection opens or closes, and when the limit is reached.
    open: std::sync::Mutex<std::collections::HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
}

impl<H> Shared<H> {
    pub(super) fn new(
        handler: H,
        limits: Limits,
        tls: Option<Arc<Tls>>,
        metrics: Option<Metrics>,
        in_flight: InFlightLimit,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            handler,
            budget: Arc::new(Budget {
                in_flight: in_flight.0,
                body_read_timeout: limits.body_read_timeout,
                metrics: metrics.clone(),
            }),
            builder: http_builder(&limits),
            limits,
            tls,
            metrics,
            closing,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }

    /// Pick the connection idle the longest (one that never sent a request counts as idle
    /// since it was accepted), mark it and tell it to close. `false` when every connection has
    /// a request in flight.
    pub(super) fn evict_oldest_idle(&self) -> bool {
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
pub(super) const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// One accepted connection: TLS handshake within the header timeout, then HTTP until the client
/// leaves, the connection idles past the keep-alive timeout, or shutdown closes it.
pub(super) async fn connection<H: Handler>(
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

type ServerBody<B> = Either<Tracked<B>, Buffered>;

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
            .layer(CatchPanicLayer::custom(PanicAnswer(Arc::clone(&shared))))
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
    let admission = Arc::new(Admission::new(
        Arc::clone(&shared.budget),
        shared.handler.exempt_from_shedding(&request),
    ));
    // A request with a body is admitted by its handler once the body is in (see `Admission`).
    if request.body().is_end_stream() && admission.admit().is_err() {
        return Ok(refused(&shared.handler, Refusal::Overloaded));
    }
    let in_flight = InFlight::new(activity, Arc::clone(&admission));
    request.extensions_mut().insert(PeerAddr(peer));
    request.extensions_mut().insert(client);
    request.extensions_mut().insert(admission);
    let deadline = shared.limits.request_timeout;
    // Boxed: the handler's future is large (its whole async call tree), and the deadline, the
    // panic guard and hyper's service wrappers would otherwise move it by value on every poll
    // chain; a pointer moves for a fraction of one allocation's cost (measured with callgrind,
    // docs/benchmarks.md).
    match tokio::time::timeout(deadline, Box::pin(shared.handler.handle(request))).await {
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
            Ok(refused(&shared.handler, Refusal::DeadlineExceeded))
        }
    }
}

/// What a panicking handler's request is answered: the handler's own refusal.
struct PanicAnswer<H>(Arc<Shared<H>>);

impl<H> Clone for PanicAnswer<H> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<H: Handler> tower_http::catch_panic::ResponseForPanic for PanicAnswer<H> {
    type ResponseBody = Buffered;

    fn response_for_panic(
        &mut self,
        _: Box<dyn std::any::Any + Send + 'static>,
    ) -> Response<Buffered> {
        tracing::error!("handler panicked; answered 503");
        self.0.handler.refusal(Refusal::Panicked)
    }
}

/// The handler's answer to a request the connection layer refuses.
fn refused<H: Handler>(handler: &H, refusal: Refusal) -> Response<ServerBody<H::Body>> {
    handler.refusal(refusal).map(Either::Right)
}
