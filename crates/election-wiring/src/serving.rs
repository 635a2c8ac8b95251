//! Where a service serves and what stops it, handed to its library's `run`
//! by the caller: by `serve` (the address it was given; SIGTERM or SIGINT)
//! or by a test (port 0; whatever the test likes). Both travel together, so
//! every service's `run` takes one [`Serving`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A future that resolves when the service must stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A bound listener and the signal to stop serving on it.
pub struct Serving {
    /// Where requests arrive.
    pub listener: TcpListener,
    /// Resolves when the service must stop accepting, finish what it
    /// accepted and return.
    pub shutdown: Shutdown,
}

impl Serving {
    /// Serves on `listener` until `shutdown` resolves.
    pub fn new(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        Self {
            listener,
            shutdown: Box::pin(shutdown),
        }
    }

    /// Listens on `address` until the process receives SIGTERM or SIGINT
    /// (`election_http::shutdown::signal`).
    pub async fn bind(address: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        Ok(Self::new(listener, election_http::shutdown::signal()))
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A flag set once `shutdown` resolves, for every task that must stop with
/// the service (loops, streams, the server's drain) to watch; a task of its
/// own waits for the signal. Must be called inside the runtime.
pub fn stop_flag(shutdown: impl Future<Output = ()> + Send + 'static) -> watch::Receiver<bool> {
    let (stop, stopping) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    stopping
}
