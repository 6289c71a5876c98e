//! Nodes as one cluster over `ractor_cluster`.
//!
//! Each node runs a `NodeServer` and exactly one remotable actor, its
//! [`NodeRouter`](node_router::NodeRouter); rooms, sessions and presence stay
//! local and reach other nodes through it. `ractor_cluster` itself has no
//! discovery, reconnection or failure detection: [`membership`] dials the
//! seeds and DNS peers with backoff, drops handshakes that hang, and the
//! NodeRouter's watchdog kills sessions to peers that stop answering.
//!
//! The live nodes form a [`View`]; every room's home (its sequencer) is the
//! rendezvous-hash winner of the room name over the view's node names.
//!
//! This crate knows no room, presence or session type. What arrives from a
//! peer goes to the node's [`Inbound`] (the gateway wires rooms and presence
//! behind it), and services send their own encoded messages through
//! [`Cluster`]; [`wire`] says how they are framed.

mod membership;
mod node_router;
mod view;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use ractor::ActorRef;
use switchboard_telemetry::names;

pub use membership::{start, ClusterSettings};
pub use node_router::NodeRouterMsg;
pub use view::{rendezvous, Home, View};

/// Errors at the cluster's boundary.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("could not start {what}: {reason}")]
    Spawn { what: &'static str, reason: String },
}

/// What the rest of the node does with what arrives from peers. Messages of
/// one peer reach `cast` in the order they were sent, one at a time.
pub trait Inbound: Send + Sync + 'static {
    /// A one-way message whose enum variant is `variant` (see [`wire`]).
    fn cast(&self, variant: &str, bytes: Vec<u8>) -> impl Future<Output = ()> + Send;
    /// A request; the answer is an encoded message.
    fn call(&self, variant: &str, bytes: Vec<u8>) -> impl Future<Output = Vec<u8>> + Send;
    /// A peer became reachable (after the view has it).
    fn peer_up(&self, node: &str);
    /// A peer was lost (after the view dropped it).
    fn peer_down(&self, node: &str);
    /// A node (a peer, or this one) is leaving: rooms move off it.
    fn leaving(&self, node: &str);
    /// A peer announced its wire version (a moment after it came up):
    /// what needs a version (following a room) may ask it now.
    fn peer_version(&self, node: &str, version: u32);
}

/// How long a call to a peer may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

struct Shared {
    me: Arc<str>,
    view: RwLock<Arc<View>>,
    /// The wire version each peer announced in its `Hello`.
    versions: RwLock<HashMap<Arc<str>, u32>>,
    /// Set once the seeds and DNS peers have been tried (at once for a
    /// node without a cluster listener: alone is settled).
    ready: AtomicBool,
    settled: tokio::sync::Notify,
}

/// A cloneable handle to this node's view of the cluster, and the way to
/// send to peers.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.shared.me)
            .field("nodes", &self.view().nodes())
            .finish()
    }
}

impl Cluster {
    /// A cluster of one (until [`start`] finds peers).
    pub fn new(me: &str) -> Self {
        let me: Arc<str> = me.into();
        Self {
            shared: Arc::new(Shared {
                me: me.clone(),
                view: RwLock::new(Arc::new(View::alone(me))),
                versions: RwLock::new(HashMap::new()),
                ready: AtomicBool::new(true),
                settled: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn me(&self) -> &Arc<str> {
        &self.shared.me
    }

    pub fn view(&self) -> Arc<View> {
        self.shared.view.read().clone()
    }

    pub fn home(&self, room: &str) -> Home {
        self.shared.view.read().home(room)
    }

    /// The wire version a live peer announced, once it has.
    pub fn peer_version(&self, node: &str) -> Option<u32> {
        self.shared.versions.read().get(node).copied()
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::SeqCst);
        if ready {
            self.shared.settled.notify_waiters();
        }
    }

    /// Returns once the membership has settled: every seed and DNS peer
    /// reached (and in the view) or tried, or a few seconds after start or
    /// after this node lost its last peer. A node asks who holds a room
    /// only then: a holder it has not reached (yet, or again) would
    /// otherwise look like no holder at all.
    pub async fn settled(&self) {
        let notified = self.shared.settled.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_ready() {
            return;
        }
        notified.await;
    }

    fn router(&self, node: &str) -> Option<ActorRef<NodeRouterMsg>> {
        self.shared.view.read().peers.get(node).cloned()
    }

    /// Adds or refreshes a peer; returns whether it is new: not in the
    /// view, or reached over a new session (a link that healed before the
    /// old session's end was seen: what was sent over that one, presence
    /// snapshots included, may be lost, so it counts as coming up again).
    fn peer_up(&self, name: Arc<str>, router: ActorRef<NodeRouterMsg>) -> bool {
        let new = {
            let mut view = self.shared.view.write();
            let mut next = (**view).clone();
            let id = router.get_id();
            let new = next
                .peers
                .insert(name.clone(), router)
                .is_none_or(|old| old.get_id() != id);
            if new {
                // A new incarnation of a node that left.
                next.leaving.remove(&name);
            }
            *view = Arc::new(next);
            new
        };
        if new {
            tracing::info!(peer = %name, "peer up");
            self.nodes_changed();
        }
        new
    }

    /// Drops a peer; returns whether it was in the view.
    fn peer_down(&self, name: &str) -> bool {
        let (removed, alone) = {
            let mut view = self.shared.view.write();
            let mut next = (**view).clone();
            let removed = next.peers.remove(name).is_some();
            next.leaving.remove(name);
            let alone = removed && next.peers.is_empty();
            if alone {
                // Before anyone can see a view without peers (see below).
                self.shared.ready.store(false, Ordering::SeqCst);
            }
            *view = Arc::new(next);
            (removed, alone)
        };
        if removed {
            self.shared.versions.write().remove(name);
            tracing::warn!(peer = %name, "peer down");
            self.nodes_changed();
            if alone {
                // Losing every peer at once is more often this node's own
                // fault (it was frozen, or its links were) than all the
                // others'. Before it takes any room as the only node, the
                // membership dials everyone again (see `settled`).
                tracing::info!("no peer left: settling the membership again");
            }
        }
        removed
    }

    /// Marks `node` as leaving; returns whether that is news.
    fn set_leaving(&self, node: &str) -> bool {
        let mut view = self.shared.view.write();
        if !view.has(node) || view.leaving.contains(node) {
            return false;
        }
        let mut next = (**view).clone();
        next.leaving.insert(node.into());
        *view = Arc::new(next);
        tracing::info!(node, "node leaving");
        true
    }

    /// Whether this node has announced that it is leaving.
    pub fn is_leaving(&self) -> bool {
        self.shared.view.read().leaving.contains(&*self.shared.me)
    }

    /// Records a peer's version; returns whether it is news.
    fn set_version(&self, node: &Arc<str>, version: u32) -> bool {
        self.router(node).is_some()
            && self.shared.versions.write().insert(node.clone(), version) != Some(version)
    }

    fn nodes_changed(&self) {
        metrics::gauge!(names::CLUSTER_NODES).set(self.view().nodes() as f64);
    }

    /// Casts an encoded message to a peer; false if the peer is not live.
    pub fn send(&self, node: &str, bytes: Vec<u8>) -> bool {
        self.router(node).is_some_and(|r| cast(&r, bytes))
    }

    /// Casts an encoded message to every live peer.
    pub fn broadcast(&self, bytes: &[u8]) {
        for router in self.view().peers.values() {
            cast(router, bytes.to_vec());
        }
    }

    /// Sends an encoded request to a peer and waits (up to
    /// [`CALL_TIMEOUT`]) for its encoded answer.
    pub async fn call(&self, node: &str, bytes: Vec<u8>) -> Option<Vec<u8>> {
        self.request(node, bytes)?.await
    }

    /// Sends an encoded request to a peer now, in order with what this node
    /// casts to it before and after, and returns the wait for its answer
    /// (up to [`CALL_TIMEOUT`]; `None` without one): a caller that must
    /// not wait hands that to a task of its own. `None` if the peer is not
    /// in the view.
    pub fn request(
        &self,
        node: &str,
        bytes: Vec<u8>,
    ) -> Option<impl Future<Output = Option<Vec<u8>>> + Send + 'static> {
        let router = self.router(node)?;
        let (tx, rx) = ractor::concurrency::oneshot();
        router
            .cast(NodeRouterMsg::Call(bytes, (tx, CALL_TIMEOUT).into()))
            .ok()?;
        metrics::counter!(names::CLUSTER_MESSAGES_TOTAL, "direction" => "out").increment(1);
        Some(async move {
            let reply = tokio::time::timeout(CALL_TIMEOUT, rx).await.ok()?.ok()?;
            metrics::counter!(names::CLUSTER_MESSAGES_TOTAL, "direction" => "in").increment(1);
            Some(reply)
        })
    }
}

impl Cluster {
    /// Whether any other live peer (a witness) still sees `node`: `None`
    /// when there is no witness to ask or none answered. A node that lost
    /// sight of another cannot tell a crash from a partition alone.
    pub async fn witnessed(&self, node: &str) -> Option<bool> {
        let witnesses: Vec<Arc<str>> = self
            .view()
            .peers
            .keys()
            .filter(|p| ***p != *node)
            .cloned()
            .collect();
        let ask = wire::encode(&wire::Control::Sees {
            node: node.to_owned(),
        });
        let mut answered = false;
        for w in witnesses {
            if let Some(reply) = self.call(&w, ask.clone()).await {
                if let Ok(wire::Control::Seen { seen, .. }) = wire::decode(&reply) {
                    if seen {
                        return Some(true);
                    }
                    answered = true;
                }
            }
        }
        answered.then_some(false)
    }
}

fn cast(router: &ActorRef<NodeRouterMsg>, bytes: Vec<u8>) -> bool {
    let ok = router.cast(NodeRouterMsg::Cast(bytes)).is_ok();
    if ok {
        metrics::counter!(names::CLUSTER_MESSAGES_TOTAL, "direction" => "out").increment(1);
    }
    ok
}
