//! What presence sends to peer nodes (opaque bytes to the cluster layer).

use serde::{Deserialize, Serialize};

/// Presence replication between nodes: a full snapshot when a peer comes
/// up (so a reconnect reconciles, not only deltas), then deltas.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Replication {
    /// A snapshot replaces everything the receiver holds for the sender.
    pub snapshot: bool,
    /// Users with a connection on the sender (gone: `offline`).
    pub online: Vec<String>,
    pub offline: Vec<String>,
    /// (room, user) present on the sender (gone: `left`).
    pub joined: Vec<(String, String)>,
    pub left: Vec<(String, String)>,
}

impl Replication {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }

    pub fn is_empty(&self) -> bool {
        !self.snapshot
            && self.online.is_empty()
            && self.offline.is_empty()
            && self.joined.is_empty()
            && self.left.is_empty()
    }
}

/// What presence sends peer nodes, framed as `switchboard_cluster::wire`
/// says: variant names route it, fields are named. The variants and fields
/// are those of the first release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PresenceWire {
    /// Replication: an encoded [`Replication`].
    Presence {
        node: String,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A direct message for `to`'s connections on the receiving node (a
    /// call, answered by `Delivered`).
    Dm {
        to: String,
        #[serde(with = "serde_bytes")]
        event: Vec<u8>,
    },
    Delivered {
        count: u64,
    },
}

impl PresenceWire {
    /// Whether a message with this variant name is presence's.
    pub fn owns(variant: &str) -> bool {
        matches!(variant, "Presence" | "Dm" | "Delivered")
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// How presence reaches its peers (the gateway wires it to the cluster).
pub trait PeerLink: Send + Sync + 'static {
    fn send(&self, node: &str, payload: Vec<u8>);
    fn broadcast(&self, payload: Vec<u8>);
}
