//! Listeners and connections: accept TCP, serve HTTP/1.1 and h2 with hyper, wrap the API in
//! tower layers, and drain in-flight requests on shutdown within a bounded grace.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::Api;

/// Something that answers HTTP requests: the decision API, the admin API or the proxy.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body (a buffered JSON answer, or an upstream's streamed body).
    type Body: hyper::body::Body<Data = Bytes, Error = Self::BodyError> + Send + 'static;
    /// Its error type.
    type BodyError: Into<Box<dyn std::error::Error + Send + Sync>>;

    /// Answer one request. Never fails: every error is a response. The request carries the
    /// client's address as a [`PeerAddr`] extension.
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// The address of the client that sent a request (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Handler for Api {
    type Body = Full<Bytes>;
    type BodyError = Infallible;
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send {
        Api::handle(self, request)
    }
}

/// A bound listener, not yet serving.
#[derive(Debug)]
pub struct Server<H> {
    listener: TcpListener,
    handler: H,
    shutdown_grace: Duration,
}

impl<H: Handler> Server<H> {
    /// Bind `addr` (port 0 picks a free port).
    pub async fn bind(
        addr: SocketAddr,
        handler: H,
        shutdown_grace: Duration,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            handler,
            shutdown_grace,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` completes, then stop accepting and let in-flight requests finish,
    /// for at most the shutdown grace.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        let handler = self.handler;
        let make_service = |peer: SocketAddr| {
            let handler = handler.clone();
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(panic_response))
                .service_fn(move |mut request: Request<Incoming>| {
                    let handler = handler.clone();
                    request.extensions_mut().insert(PeerAddr(peer));
                    async move { Ok::<_, Infallible>(handler.handle(request).await) }
                })
        };
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
                    let _ = stream.set_nodelay(true);
                    let connection = builder.serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(make_service(peer)),
                    );
                    let connection = graceful.watch(connection.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!("shutting down: draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained"),
            () = tokio::time::sleep(self.shutdown_grace) => {
                tracing::warn!(grace = ?self.shutdown_grace, "shutdown grace elapsed with requests in flight");
            }
        }
    }
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
