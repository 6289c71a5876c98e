//! The Switchboard gateway node.
//!
//! [`run`] serves one node until it is told to stop: the HTTP listener
//! (`/ws`, `/sse`, `/poll`, `/healthz`, `/readyz`, `/metrics`, the server
//! API) and the actors
//! behind it:
//!
//! ```text
//! NodeSupervisor
//! |-- Presence        presence entries, heartbeat expiry      (switchboard-presence)
//! |-- RoomSupervisor  one Room actor per active room          (switchboard-router)
//! `-- Connections     one Session actor per active socket     (session.rs)
//! ```
//!
//! Per connection: `upgrade.rs` reads the first request and answers the
//! WebSocket upgrade (anything else goes to hyper, `http.rs`); then one task
//! (`connection.rs`) hands client messages to the Session and drains the
//! bounded [`outbound`] queue, which rooms and presence push to directly.

// This crate reads what clients send: a slice or an index out of bounds
// there would be a panic a client can cause.
#![cfg_attr(not(test), warn(clippy::string_slice, clippy::indexing_slicing))]

pub mod auth;
mod client_addr;
mod connection;
mod demo;
mod feed;
mod http;
mod metrics;
mod node;
pub mod outbound;
mod poll;
mod ratelimit;
mod session;
mod sse;
mod transport;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchboard_config::Settings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Errors at the gateway's boundary.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("http.listen: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Start(String),
}

/// Runs a node until `shutdown` is cancelled, then drains it: `/readyz`
/// turns 503, the listener closes, connections are closed with 1012 spread
/// over `shutdown.drain_s`, and the actors stop.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), GatewayError> {
    let metrics = metrics::install()?;
    let listen = settings.http.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: listen,
        source,
    })?;
    let drain = settings.shutdown.drain();
    let (node, root) = node::start(settings, metrics.clone(), shutdown.clone()).await?;
    tracing::info!(addr = %local, node = %node.settings.node.name, "listening");

    let upkeep = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = every.tick() => metrics.run_upkeep(),
                    () = shutdown.cancelled() => return,
                }
            }
        }
    });

    // The listener stays open while draining, so that `/readyz` answers 503
    // and `/metrics` can still be scraped; `/ws` refuses upgrades meanwhile.
    let stop_accepting = CancellationToken::new();
    let acceptor = tokio::spawn(accept_loop(listener, node.clone(), stop_accepting.clone()));
    // Poll sessions end while the node drains too: reaped until it stops.
    let reaper = tokio::spawn(poll::reap(node.clone(), stop_accepting.clone()));
    shutdown.cancelled().await;
    node.drain(drain).await;
    stop_accepting.cancel();
    let _ = acceptor.await;
    let _ = reaper.await;
    node.polls.clear();
    root.stop(None);
    let _ = upkeep.await;
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(listener: TcpListener, node: Node, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors, typically: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let origin = client_addr::Origin::new(peer.ip(), &node.settings.http);
        // A direct client is limited before anything is read. A trusted
        // proxy's connections are many clients': each is limited once its
        // PROXY header or request head says whose it is (upgrade.rs).
        if !origin.trusted && !node.connect_allowed(origin.peer) {
            tokio::spawn(upgrade::refuse_busy(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(upgrade::serve(stream, node.clone(), origin));
    }
}

/// The node's shared context type, for the binary's wiring.
pub type Node = Arc<node::NodeCtx>;
