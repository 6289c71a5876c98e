//! Finding peers and keeping sessions to them: seeds and DNS, dialing with
//! capped exponential backoff and jitter, and a deadline on handshakes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage, NodeSessionMessage};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::node_router::{NodeRouter, NodeRouterArgs, NodeRouterMsg};
use crate::{Cluster, ClusterError, Inbound};

/// `[cluster]` as the membership needs it.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub listen: SocketAddr,
    /// The host peers reach this node at (its `connection_string` host).
    pub advertise: String,
    pub seeds: Vec<String>,
    pub dns: Option<String>,
    pub cookie: String,
}

const TICK: Duration = Duration::from_millis(250);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
const DNS_EVERY: Duration = Duration::from_secs(5);

/// Starts the NodeServer, this node's NodeRouter and the membership loop;
/// returns the router and the address the cluster listener is bound to.
///
/// The listener is bound here, not by `ractor_cluster`, so that `listen`
/// may name port 0 and the node can say which port it got: a caller that
/// picks a "free" port by binding and closing one races with everything
/// else on the machine. Accepted sockets are handed to the NodeServer as
/// `ConnectionOpened`, exactly as its own listener would; that listener
/// still exists (ractor_cluster always starts one) but is bound to an
/// ephemeral loopback port, and the connection string peers learn names
/// the real one.
pub async fn start<A: Inbound>(
    cluster: Cluster,
    settings: ClusterSettings,
    app: Arc<A>,
    parent: ActorCell,
    shutdown: CancellationToken,
) -> Result<(ActorRef<NodeRouterMsg>, SocketAddr), ClusterError> {
    let err = |what: &'static str, e: &dyn std::fmt::Display| ClusterError::Spawn {
        what,
        reason: e.to_string(),
    };
    let bind_err = |source| ClusterError::Bind {
        addr: settings.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    let server = NodeServer::new(
        0,
        settings.cookie.clone(),
        cluster.me().to_string(),
        settings.advertise.clone(),
        None,
        None,
    )
    .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into());
    let (node_server, _) = Actor::spawn_linked(None, server, (), parent.clone())
        .await
        .map_err(|e| err("the node server", &e))?;
    // After the internal listener's own PortChanged (sent before the spawn
    // returned), so this one wins.
    node_server
        .cast(NodeServerMessage::PortChanged { port: bound.port() })
        .map_err(|e| err("the node server", &e))?;
    tokio::spawn(accept(listener, node_server.clone(), shutdown.clone()));
    let args = NodeRouterArgs {
        cluster: cluster.clone(),
        app,
        node_server: node_server.clone(),
    };
    let (router, _) = Actor::spawn_linked(
        Some(NodeRouter::<A>::name_for(cluster.me())),
        NodeRouter::<A>::new(),
        args,
        parent,
    )
    .await
    .map_err(|e| err("the node router", &e))?;
    let me = format!("{}:{}", settings.advertise, bound.port());
    cluster.set_ready(false);
    tokio::spawn(run(cluster, settings, me, bound, node_server, shutdown));
    Ok((router, bound))
}

/// Hands every accepted peer connection to the NodeServer.
async fn accept(
    listener: tokio::net::TcpListener,
    node_server: ActorRef<NodeServerMessage>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer_addr) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(local_addr) = stream.local_addr() else {
            continue;
        };
        let stream = ractor_cluster::NetworkStream::Raw {
            peer_addr,
            local_addr,
            stream,
        };
        let opened = NodeServerMessage::ConnectionOpened {
            stream: Box::new(stream),
            is_server: true,
        };
        if node_server.cast(opened).is_err() {
            return;
        }
    }
}

/// How long a dial may take before the membership counts its target as
/// tried (unreachable for now) when settling.
const DIAL_GRACE: Duration = Duration::from_secs(1);
/// The membership counts as settled this long after start (or after this
/// node lost its last peer) at the latest.
const SETTLE_MAX: Duration = Duration::from_secs(5);

struct Target {
    next_attempt: Instant,
    /// When it was first dialed.
    first_dial: Option<Instant>,
    /// A session to it exists (either direction).
    reached: bool,
    backoff: Duration,
    /// The node name last reached at this address: a session to that node
    /// in either direction (through a proxy, or dialed by the peer) counts
    /// as connected, so nodes that seed each other do not keep re-dialing.
    node: Option<String>,
}

async fn run(
    cluster: Cluster,
    settings: ClusterSettings,
    me: String,
    bound: SocketAddr,
    node_server: ActorRef<NodeServerMessage>,
    shutdown: CancellationToken,
) {
    let mut targets: HashMap<String, Target> = HashMap::new();
    let mut dns_peers: Vec<String> = Vec::new();
    let mut dns_at = Instant::now();
    // When each session was first seen; `None` once its handshake finished.
    let mut handshakes: HashMap<ActorId, Option<Instant>> = HashMap::new();
    let mut first_pass = true;
    // When the membership last became unsettled: at start, or when this
    // node lost its last peer (`Cluster::peer_down`).
    let mut unsettled_at = Instant::now();
    let mut was_ready = false;
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Some(dns) = &settings.dns {
            if first_pass || Instant::now() >= dns_at {
                dns_at = Instant::now() + DNS_EVERY;
                match tokio::net::lookup_host(dns.as_str()).await {
                    Ok(addrs) => dns_peers = addrs.map(|a| a.to_string()).collect(),
                    Err(e) => tracing::warn!(dns = %dns, error = %e, "cluster DNS lookup failed"),
                }
            }
        }
        let Ok(ractor::rpc::CallResult::Success(sessions)) = node_server
            .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
            .await
        else {
            continue;
        };
        // Addresses and node names we have a session with, either direction.
        let mut connected: Vec<String> = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for s in sessions.values() {
            connected.push(s.peer_addr.clone());
            if let Some(n) = &s.peer_name {
                connected.push(n.connection_string.clone());
                names.push(n.name.clone());
                if let Some(t) = targets.get_mut(&s.peer_addr) {
                    t.node = Some(n.name.clone());
                }
            }
        }
        // Handshakes that do not finish in time are dropped. A session that
        // does not answer at all is left to the watchdog: a busy session
        // answers late, and killing it for that took down healthy links
        // under load.
        let now = Instant::now();
        if was_ready && !cluster.is_ready() {
            // Dial every target again now, and settle afresh.
            unsettled_at = now;
            for t in targets.values_mut() {
                t.first_dial = None;
                t.next_attempt = now;
                t.backoff = BACKOFF_MIN;
            }
        }
        handshakes.retain(|id, _| sessions.values().any(|s| s.actor.get_id() == *id));
        for s in sessions.values() {
            let entry = handshakes.entry(s.actor.get_id()).or_insert(Some(now));
            let Some(since) = *entry else { continue };
            match ready_state(&s.actor).await {
                Some(true) => *entry = None,
                Some(false) if now.duration_since(since) > HANDSHAKE_DEADLINE => {
                    tracing::warn!(peer = %s.peer_addr, "cluster handshake did not finish; dropping it");
                    s.actor.kill();
                }
                _ => {}
            }
        }
        let wanted = settings
            .seeds
            .iter()
            .chain(dns_peers.iter())
            .filter(|t| **t != me && **t != bound.to_string());
        for t in wanted {
            let target = targets.entry(t.clone()).or_insert(Target {
                next_attempt: now,
                first_dial: None,
                reached: false,
                backoff: BACKOFF_MIN,
                node: None,
            });
            let known = target.node.as_ref().is_some_and(|n| names.contains(n));
            target.reached = known || connected.iter().any(|c| c == t);
            if target.reached {
                target.backoff = BACKOFF_MIN;
                continue;
            }
            if now < target.next_attempt {
                continue;
            }
            target.first_dial.get_or_insert(now);
            let jitter = 0.8 + fastrand::f64() * 0.4;
            target.next_attempt = now + target.backoff.mul_f64(jitter);
            target.backoff = (target.backoff * 2).min(BACKOFF_MAX);
            let (ns, addr) = (node_server.clone(), t.clone());
            tokio::spawn(async move {
                if let Err(e) = ractor_cluster::client_connect(&ns, addr.as_str()).await {
                    tracing::debug!(peer = %addr, error = %e, "dial failed");
                }
            });
        }
        first_pass = false;
        if !cluster.is_ready() {
            // Settled: no handshake under way, every peer met is in the
            // view, every target reached or dialed for a while.
            let view = cluster.view();
            let settled = handshakes.values().all(Option::is_none)
                // Session names are `name@host`.
                && names
                    .iter()
                    .all(|n| view.has(n.split('@').next().unwrap_or(n)))
                && targets.values().all(|t| {
                    t.reached
                        || t.first_dial
                            .is_some_and(|d| now.duration_since(d) >= DIAL_GRACE)
                });
            if settled || now.duration_since(unsettled_at) >= SETTLE_MAX {
                tracing::info!(
                    peers = view.peers.len(),
                    waited_ms = now.duration_since(unsettled_at).as_millis() as u64,
                    "cluster membership settled"
                );
                cluster.set_ready(true);
            }
        }
        was_ready = cluster.is_ready();
    }
}

/// Whether a session finished its handshake; `None` if it did not answer.
async fn ready_state(session: &ActorRef<NodeSessionMessage>) -> Option<bool> {
    match session
        .call(
            NodeSessionMessage::GetReadyState,
            Some(Duration::from_millis(500)),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(ready)) => Some(ready),
        _ => None,
    }
}
