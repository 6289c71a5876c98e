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

pub(crate) mod membership;
pub(crate) mod node_router;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use ractor::ActorRef;

pub use membership::{start, ClusterSettings};
pub use node_router::NodeRouterMsg;

use crate::rooms::Rooms;
use wire::Wire;

/// The live nodes as this node sees them.
#[derive(Debug, Clone)]
pub struct View {
    pub me: Arc<str>,
    /// Peers' names and their NodeRouters (refreshed on every reconnect).
    pub peers: BTreeMap<Arc<str>, ActorRef<NodeRouterMsg>>,
}

/// Where a room is sequenced.
#[derive(Debug, Clone)]
pub enum Home {
    Local,
    Remote(Arc<str>, ActorRef<NodeRouterMsg>),
}

impl View {
    /// The rendezvous-hash winner for `room` among the live nodes.
    pub fn home(&self, room: &str) -> Home {
        let mut best = (score(room, &self.me), None);
        for (name, router) in &self.peers {
            let s = score(room, name);
            if s > best.0 {
                best = (s, Some((name, router)));
            }
        }
        match best.1 {
            None => Home::Local,
            Some((name, router)) => Home::Remote(name.clone(), router.clone()),
        }
    }

    pub fn nodes(&self) -> usize {
        1 + self.peers.len()
    }
}

/// The home of `room` among `nodes`, as every node computes it.
pub fn rendezvous<'a>(room: &str, nodes: &[&'a str]) -> Option<&'a str> {
    nodes.iter().copied().max_by_key(|n| score(room, n))
}

/// A stable hash of (room, node): every node computes the same homes.
fn score<'a>(room: &str, node: &'a str) -> (u64, &'a str) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser: FNV alone clusters on similar names.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (h ^ (h >> 31), node)
}

/// What the cluster asks of the rest of the node (the gateway wires it to
/// presence), so that the router does not depend on presence.
pub trait ClusterApp: Send + Sync + 'static {
    /// A peer became reachable: send it a full presence snapshot.
    fn peer_up(&self, node: &str);
    /// A peer was lost: drop what it had replicated here.
    fn peer_down(&self, node: &str);
    /// A presence replication message from `node`.
    fn presence(&self, node: &str, payload: &[u8]);
    /// Deliver a direct message to `to`'s connections on this node.
    fn dm(&self, to: &str, event: switchboard_protocol::Bytes) -> u64;
}

struct Shared {
    me: Arc<str>,
    view: RwLock<Arc<View>>,
    app: OnceLock<Arc<dyn ClusterApp>>,
    rooms: OnceLock<Rooms>,
    /// Set once the seeds and DNS peers have been tried.
    ready: AtomicBool,
}

/// A cloneable handle to this node's view of the cluster.
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
    /// A cluster of one (until peers are added).
    pub fn new(me: &str) -> Self {
        let me: Arc<str> = me.into();
        Self {
            shared: Arc::new(Shared {
                me: me.clone(),
                view: RwLock::new(Arc::new(View {
                    me,
                    peers: BTreeMap::new(),
                })),
                app: OnceLock::new(),
                rooms: OnceLock::new(),
                ready: AtomicBool::new(false),
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

    /// The NodeRouter of a live peer.
    pub fn router(&self, node: &str) -> Option<ActorRef<NodeRouterMsg>> {
        self.shared.view.read().peers.get(node).cloned()
    }

    pub fn set_app(&self, app: Arc<dyn ClusterApp>) {
        let _ = self.shared.app.set(app);
    }

    pub(crate) fn app(&self) -> Option<&Arc<dyn ClusterApp>> {
        self.shared.app.get()
    }

    pub(crate) fn set_rooms(&self, rooms: Rooms) {
        let _ = self.shared.rooms.set(rooms);
    }

    pub(crate) fn rooms(&self) -> Option<&Rooms> {
        self.shared.rooms.get()
    }

    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    pub(crate) fn set_ready(&self) {
        self.shared.ready.store(true, Ordering::SeqCst);
    }

    /// Adds or refreshes a peer; returns whether it is new.
    pub(crate) fn peer_up(&self, name: Arc<str>, router: ActorRef<NodeRouterMsg>) -> bool {
        let new = {
            let mut view = self.shared.view.write();
            let mut next = (**view).clone();
            let new = next.peers.insert(name.clone(), router).is_none();
            *view = Arc::new(next);
            new
        };
        if new {
            tracing::info!(peer = %name, "peer up");
            self.view_changed();
            if let Some(app) = self.app() {
                app.peer_up(&name);
            }
        }
        new
    }

    pub(crate) fn peer_down(&self, name: &str) {
        let removed = {
            let mut view = self.shared.view.write();
            let mut next = (**view).clone();
            let removed = next.peers.remove(name).is_some();
            *view = Arc::new(next);
            removed
        };
        if removed {
            tracing::warn!(peer = %name, "peer down");
            self.view_changed();
            if let Some(app) = self.app() {
                app.peer_down(name);
            }
        }
    }

    fn view_changed(&self) {
        metrics::gauge!("switchboard_cluster_nodes").set(self.view().nodes() as f64);
        if let Some(rooms) = self.rooms() {
            rooms.view_changed();
        }
    }

    /// Casts `msg` to a peer's NodeRouter; false if the peer is not live.
    pub fn send(&self, node: &str, msg: &Wire) -> bool {
        match self.router(node) {
            Some(r) => cast(&r, msg),
            None => false,
        }
    }

    /// Casts `msg` to every live peer.
    pub fn broadcast(&self, msg: &Wire) {
        let bytes = msg.encode();
        for router in self.view().peers.values() {
            if router.cast(NodeRouterMsg::Cast(bytes.clone())).is_ok() {
                metrics::counter!("switchboard_cluster_messages_total", "direction" => "out")
                    .increment(1);
            }
        }
    }

    /// Asks `node` to deliver a direct message; how many connections got it.
    pub async fn dm(&self, node: &str, to: &str, event: &[u8]) -> u64 {
        let Some(router) = self.router(node) else {
            return 0;
        };
        let req = Wire::Dm {
            to: to.to_owned(),
            event: serde_bytes::ByteBuf::from(event.to_vec()),
        };
        match call(&router, &req).await {
            Some(Wire::Delivered { count }) => count,
            _ => 0,
        }
    }
}

/// How long a call to a peer may take.
pub(crate) const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) fn cast(router: &ActorRef<NodeRouterMsg>, msg: &Wire) -> bool {
    let ok = router.cast(NodeRouterMsg::Cast(msg.encode())).is_ok();
    if ok {
        metrics::counter!("switchboard_cluster_messages_total", "direction" => "out").increment(1);
    }
    ok
}

pub(crate) async fn call(router: &ActorRef<NodeRouterMsg>, msg: &Wire) -> Option<Wire> {
    let bytes = msg.encode();
    metrics::counter!("switchboard_cluster_messages_total", "direction" => "out").increment(1);
    match router
        .call(
            |reply| NodeRouterMsg::Call(bytes, reply),
            Some(CALL_TIMEOUT),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(reply)) => {
            metrics::counter!("switchboard_cluster_messages_total", "direction" => "in")
                .increment(1);
            Wire::decode(&reply).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_and_is_stable() {
        let nodes = ["a", "b", "c"];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let room = format!("room-{i}");
            let best = nodes
                .iter()
                .enumerate()
                .max_by_key(|(_, n)| score(&room, n))
                .map(|(i, _)| i)
                .unwrap();
            counts[best] += 1;
        }
        assert!(counts.iter().all(|c| *c > 800), "{counts:?}");
        // Removing a node only moves that node's rooms.
        for i in 0..1000 {
            let room = format!("room-{i}");
            let with_c = nodes.iter().max_by_key(|n| score(&room, n)).unwrap();
            let without_c = ["a", "b"].iter().max_by_key(|n| score(&room, n)).unwrap();
            if *with_c != "c" {
                assert_eq!(with_c, without_c);
            }
        }
    }
}
