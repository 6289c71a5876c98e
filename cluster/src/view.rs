//! The live nodes, and where each room is homed among them.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::ActorRef;

use crate::NodeRouterMsg;

/// The live nodes as this node sees them.
#[derive(Debug, Clone)]
pub struct View {
    pub me: Arc<str>,
    /// Peers' names and their NodeRouters (refreshed on every reconnect).
    pub peers: BTreeMap<Arc<str>, ActorRef<NodeRouterMsg>>,
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
        }
    }

    /// The rendezvous-hash winner for `room` among the live nodes.
    pub fn home(&self, room: &str) -> Home {
        let mut best = (score(room, &self.me), None);
        for name in self.peers.keys() {
            let s = score(room, name);
            if s > best.0 {
                best = (s, Some(name));
            }
        }
        match best.1 {
            None => Home::Local,
            Some(name) => Home::Remote(name.clone()),
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
