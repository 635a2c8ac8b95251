//! The HTTP server of every service: axum's router on hyper's HTTP/1
//! connection, with a deadline on reading request headers, and graceful
//! shutdown.
//!
//! Why not `axum::serve`: it sets no timer on hyper's connections, so
//! hyper's header-read timeout is off and a client that sends half a header
//! line and stalls (slowloris) holds a connection, a task and a file
//! descriptor for ever. Here each connection is served by
//! `hyper::server::conn::http1::Builder` with `TokioTimer` and
//! `header_read_timeout`: the headers of a request must arrive within
//! [`ServeConfig::header_read_timeout`] of the first read, or the connection
//! is closed without an answer. The same deadline bounds an idle keep-alive
//! connection waiting for its next request. It never applies while a
//! response is being written, so long-lived responses (the query service's
//! Server-Sent Events) are not cut. Request *bodies* have no deadline here:
//! a service that reads bodies sets its own (ingest answers 408).
//!
//! HTTP/1.1 only: the services sit behind load balancers that speak
//! HTTP/1.1 to them, and HTTP/2 would pull in the `h2` stack for nothing.
//!
//! Shutdown: when the `shutdown` future resolves, the listener is closed,
//! every connection is told to finish the request it is serving and close
//! (`hyper_util::server::graceful`), and [`serve`] returns once all have.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::time::Duration;

use axum::http::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// Default for [`ServeConfig::header_read_timeout`] (`HTTP_HEADER_TIMEOUT_MS`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How a service's connections are served. No `Default`: each binary builds
/// it from its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Longest time from the start of reading a request (or from the end of
    /// the previous one on a kept-alive connection) to its last header
    /// byte; past it the connection is closed.
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, lets every connection finish the request it is serving, and
/// returns. `app` is a service's router with its layers
/// ([`crate::layers::App`]), or a bare [`axum::Router`].
///
/// # Errors
/// Never at present (accept errors are logged and retried, as
/// `axum::serve` does); the `Result` keeps callers' `?` working should
/// serving learn to fail.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()>
where
    S: tower::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are small and written whole: send them at once rather
        // than wait for Nagle's algorithm to gather more.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(client.addr = %remote, %error, "cannot set TCP_NODELAY");
        }
        // The client's address, for handlers that limit by it (axum's
        // `ConnectInfo`, read as `Extension<ConnectInfo<SocketAddr>>`).
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                request
            },
        ));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                // A header timeout, a client that went away, a malformed
                // request: the client's problem, not the service's.
                tracing::debug!(client.addr = %remote, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::debug!(
        connections = graceful.count(),
        "not accepting any more; waiting for open connections"
    );
    graceful.shutdown().await;
    Ok(())
}

/// What `axum::serve` does on an accept error: a connection that failed
/// before it was accepted is skipped; anything else (out of file
/// descriptors) is logged and retried after a second, when connections may
/// have closed.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
