//! The live nodes, and where each room is homed among them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ractor::ActorRef;

use crate::NodeRouterMsg;

/// The live nodes as this node sees them.
#[derive(Debug, Clone)]
pub struct View {
    pub me: Arc<str>,
    /// Peers' names and their NodeRouters (refreshed on every reconnect).
    pub peers: BTreeMap<Arc<str>, ActorRef<NodeRouterMsg>>,
    /// Nodes that announced they are draining (this one included): still
    /// reachable, but they home no room, so their rooms move while they can
    /// still hand them over.
    pub leaving: BTreeSet<Arc<str>>,
}

/// Where a room is sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    Local,
    Remote(Arc<str>),
}

impl View {
    pub(crate) fn alone(me: Arc<str>) -> Self {
        Self {
            me,
            peers: BTreeMap::new(),
            leaving: BTreeSet::new(),
        }
    }

    /// The nodes that may home `room`, best first: the live ones that are
    /// not leaving, in rendezvous order. The first is the room's home, the
    /// second the node that takes over if the home is lost.
    pub fn ranked(&self, room: &str) -> Vec<Arc<str>> {
        let mut nodes: Vec<(u64, &Arc<str>)> = std::iter::once(&self.me)
            .chain(self.peers.keys())
            .filter(|n| !self.leaving.contains(*n))
            .map(|n| (score(room, n).0, n))
            .collect();
        nodes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1)));
        nodes.into_iter().map(|(_, n)| n.clone()).collect()
    }

    /// The rendezvous-hash winner for `room` among the live nodes that are
    /// not leaving (a node that is leaving itself sees every room elsewhere;
    /// alone and leaving, it keeps them).
    pub fn home(&self, room: &str) -> Home {
        match self.ranked(room).first() {
            Some(n) if *n != self.me => Home::Remote(n.clone()),
            _ => Home::Local,
        }
    }

    /// The peer (leaving ones included) that would home `room` if this
    /// node were not there: where a new home looks for the room's state.
    pub fn previous(&self, room: &str) -> Option<Arc<str>> {
        self.peers.keys().max_by_key(|n| score(room, n)).cloned()
    }

    /// Whether `node` is in the view (this node or a live peer).
    pub fn has(&self, node: &str) -> bool {
        *self.me == *node || self.peers.contains_key(node)
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
            let with_c = rendezvous(&room, &nodes).unwrap();
            let without_c = rendezvous(&room, &["a", "b"]).unwrap();
            if with_c != "c" {
                assert_eq!(with_c, without_c);
            }
        }
    }
}
