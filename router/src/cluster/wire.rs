//! What crosses node boundaries: one small enum, encoded with `rmp-serde`
//! and carried as raw bytes inside the NodeRouter's cluster message, so that
//! a bad payload is an ordinary decode error in `handle` (ractor's
//! `BytesConvertable::from_bytes` cannot fail, it would panic).

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A `join` with `since`, as the home sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinceWire {
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Wire {
    /// Who the sender is (the answer to a first contact, and the watchdog).
    Hello {
        node: String,
    },
    /// A node with members of `room` wants its messages (call; answered by
    /// `Subscribed`).
    Subscribe {
        room: String,
        node: String,
        since: Option<SinceWire>,
    },
    Subscribed {
        epoch: String,
        offset: u64,
        recovered: Option<bool>,
        /// Encoded `msg` events after `since`, when recovered.
        replay: Vec<ByteBuf>,
    },
    /// The node has no members of `room` any more.
    Unsubscribe {
        room: String,
        node: String,
    },
    /// A publication for the home to sequence. `ack` names the pending reply
    /// on the origin node, if one is wanted.
    Publish {
        room: String,
        from: String,
        data: ByteBuf,
        msg_id: Option<String>,
        origin: String,
        ack: Option<u64>,
        /// Forwards so far: nodes whose views disagree stop bouncing it.
        hops: u8,
    },
    /// The offset a forwarded publication was given; `None`: it was not
    /// published (no home could take it).
    PubAck {
        room: String,
        ack: u64,
        offset: Option<u64>,
        /// The home's epoch the offset belongs to.
        #[serde(default)]
        epoch: String,
    },
    /// A sequenced message, once per node with members.
    Deliver {
        room: String,
        epoch: String,
        offset: u64,
        event: ByteBuf,
    },
    /// Presence replication: opaque to the router (see the presence crate).
    Presence {
        node: String,
        payload: ByteBuf,
    },
    /// A direct message for `to`'s connections on the receiving node (call;
    /// answered by `Delivered`).
    Dm {
        to: String,
        event: ByteBuf,
    },
    Delivered {
        count: u64,
    },
    /// Call failed on the receiving side.
    Error {
        reason: String,
    },
}

impl Wire {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data with owned strings and byte buffers cannot fail.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Wire, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_bytes() {
        let w = Wire::Deliver {
            room: "r".into(),
            epoch: "e".into(),
            offset: 7,
            event: ByteBuf::from(vec![0x80]),
        };
        assert_eq!(Wire::decode(&w.encode()).unwrap(), w);
        assert!(Wire::decode(&[0xc1, 0x00]).is_err());
    }
}
