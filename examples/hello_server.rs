//! The throughput ceiling for `scripts/load.sh`: the smallest useful hyper server, built and
//! run exactly like flex-auth's (hyper-util auto builder, multi-threaded tokio, TCP_NODELAY),
//! reading every request's body and answering it with a fixed small JSON body, nothing else.
//!
//! With `--empty` it answers `200` with no body instead: the no-op auth server that nginx
//! `auth_request` calls in `scripts/load-hot-path.sh`, checking nothing.
//!
//! `cargo run --release --example hello_server -- 127.0.0.1:18081 [--empty]`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let empty = match std::env::args().nth(2).as_deref() {
        None => false,
        Some("--empty") => true,
        Some(other) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown argument {other:?} (expected --empty)"),
            ))
        }
    };
    let body: &'static [u8] = if empty { b"" } else { b"{\"hello\":true}" };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("hello server on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(
                move |request: http::Request<hyper::body::Incoming>| async move {
                    // Drain the body, as a real service reads its request.
                    let _ = request.into_body().collect().await;
                    let mut response = http::Response::builder();
                    if !body.is_empty() {
                        response = response.header("content-type", "application/json");
                    }
                    Ok::<_, Infallible>(
                        response
                            .body(Full::new(Bytes::from_static(body)))
                            .unwrap_or_default(),
                    )
                },
            );
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
