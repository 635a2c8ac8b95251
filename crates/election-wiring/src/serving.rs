//! Where a service serves and what stops it, handed to its library's `run`
//! by the caller: by `serve` (the address it was given; SIGTERM or SIGINT)
//! or by a test (port 0; whatever the test likes). Both travel together, so
//! every service's `run` takes one [`Serving`].
//!
//! A service's listening socket is made here with a backlog of
//! [`BACKLOG`] rather than the 128 that `TcpListener::bind` (std's, which
//! tokio's uses) asks for: on election night thousands of ballot boxes,
//! and at any time thousands of stream subscribers, connect at once, and a
//! connection that finds the accept queue full has its SYN dropped and
//! waits a second or more for the retransmission (measured: 129
//! connections of 400 made at once were established before any accept with
//! the old socket; see the test below).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, TcpSocket};
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
        let listener = listen(address)
            .await
            .with_context(|| format!("listening on {address}"))?;
        Ok(Self::new(listener, election_http::shutdown::signal()))
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Connections the kernel may hold for a listener before it accepts them
/// (Linux caps it at `net.core.somaxconn`, 4096 by default since 5.4).
pub const BACKLOG: u32 = 4096;

/// Listens on `address` (`host:port`; the first of its addresses that can
/// be bound) with a backlog of [`BACKLOG`] and `SO_REUSEADDR`, as
/// `TcpListener::bind` does but for the backlog.
pub async fn listen(address: &str) -> anyhow::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
    {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(anyhow::Error::new(error).context(addr)),
        }
    }
    match last_error {
        Some(error) => Err(error),
        None => bail!("{address} names no address"),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A burst of connections larger than the old backlog (128) is held by
    /// the kernel until the service accepts: none is left waiting for a
    /// retransmitted SYN. The listener accepts nothing during the test, so
    /// what is established is what the accept queue holds.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_backlog() {
        let listener = listen("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let burst = 400;
        // The kernel holds at most `net.core.somaxconn` (+1): 4,096 here and
        // on any kernel since 5.4; an older one caps what can be expected.
        let expected = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .map_or(burst, |cap| burst.min(cap + 1));
        let attempts: Vec<_> = (0..burst)
            .map(|_| {
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::TcpStream::connect(address),
                    )
                    .await
                })
            })
            .collect();
        let mut established = Vec::new();
        for attempt in attempts {
            if let Ok(Ok(stream)) = attempt.await.unwrap() {
                established.push(stream);
            }
        }
        assert!(
            established.len() >= expected,
            "only {} of {burst} connections were established before an accept \
             (expected {expected})",
            established.len()
        );
        drop(listener);
    }

    #[tokio::test]
    async fn an_address_that_cannot_be_bound_is_named() {
        let taken = listen("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let error = listen(&address).await.unwrap_err();
        assert!(
            format!("{error:#}").contains(&address),
            "the error does not name {address}: {error:#}"
        );
        // No port: nothing to resolve, and the error says what was given.
        let error = listen("127.0.0.1").await.unwrap_err();
        assert!(
            format!("{error:#}").contains("resolving 127.0.0.1"),
            "{error:#}"
        );
    }
}
