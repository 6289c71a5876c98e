//! What rooms send each other across nodes, framed as
//! `switchboard_cluster::wire` says (variant names route it; fields are
//! named). The variants and fields are those of the first release, which
//! had one enum for everything; new fields come with defaults.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// A `join` with `since`, as the home sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinceWire {
    pub epoch: String,
    pub offset: u64,
}

/// One retained message, as a follower's copy and a hand-over carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Logged {
    pub offset: u64,
    pub msg_id: Option<String>,
    /// How long ago it was sequenced (history expires by age).
    pub age_ms: u64,
    /// The encoded `msg` event.
    pub event: ByteBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum RoomWire {
    /// A node with members of `room` wants its messages (call; answered by
    /// `Subscribed`).
    Subscribe {
        room: String,
        node: String,
        since: Option<SinceWire>,
        /// `since` is where this node's relay got to (what homes
        /// released to it), not a client's word: a home that never
        /// released that far learns from it that it is stale.
        #[serde(default)]
        relayed: bool,
    },
    Subscribed {
        epoch: String,
        offset: u64,
        recovered: Option<bool>,
        /// Encoded `msg` events after `since`, when recovered.
        replay: Vec<ByteBuf>,
    },
    /// The node has no members of `room` any more.
    Unsubscribe { room: String, node: String },
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
        /// The home that released it (empty from the first release): a
        /// relay takes deliveries only from the home it follows.
        #[serde(default)]
        home: String,
    },
    /// Call failed on the receiving side.
    Error { reason: String },
    /// (home -> follower) A message sequenced in `epoch`, before it is
    /// released to anyone: the follower keeps a copy and confirms.
    Append {
        room: String,
        home: String,
        epoch: String,
        entry: Logged,
        /// The home's term of `epoch` (0 from a release without terms).
        #[serde(default)]
        term: u64,
    },
    /// (follower -> home) Holds `epoch` up to `upto`. `refused`: it will
    /// not follow this home's `epoch` (it holds the epoch itself now).
    Appended {
        room: String,
        node: String,
        epoch: String,
        upto: u64,
        #[serde(default)]
        refused: bool,
        /// It holds no copy that this message follows: send a snapshot.
        #[serde(default)]
        resend: bool,
        /// (refused) The node that holds the epoch, or whose copy of it
        /// went further: where the refused home fetches the room.
        #[serde(default)]
        holder: Option<String>,
        /// The term of the `Append` or `Snapshot` answered: a home takes
        /// only its current holding's confirmations (`None` from a
        /// release without terms).
        #[serde(default)]
        term: Option<u64>,
    },
    /// The room's whole state: from a home to a new follower (its copy), or
    /// as the answer to `Fetch` (the room handed over).
    Snapshot {
        room: String,
        home: String,
        epoch: String,
        last: u64,
        entries: Vec<Logged>,
        /// The sender's term of `epoch` (0 from a release without terms).
        #[serde(default)]
        term: u64,
    },
    /// (home -> former follower) Drop the copy of `epoch`.
    Forget {
        room: String,
        home: String,
        epoch: String,
    },
    /// (new home -> the node that held the room; a call) Hand the room
    /// over: answered by `Snapshot`, or `Error` if it holds nothing.
    Fetch { room: String, node: String },
}

impl RoomWire {
    /// Whether a message with this variant name is the rooms'.
    pub fn owns(variant: &str) -> bool {
        matches!(
            variant,
            "Subscribe"
                | "Subscribed"
                | "Unsubscribe"
                | "Publish"
                | "PubAck"
                | "Deliver"
                | "Append"
                | "Appended"
                | "Snapshot"
                | "Forget"
                | "Fetch"
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        switchboard_cluster::wire::encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        switchboard_cluster::wire::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first release's one enum for everything, frozen: it wrote
    /// fields positionally (`rmp_serde::to_vec`).
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    enum FirstRelease {
        Hello {
            node: String,
        },
        Subscribe {
            room: String,
            node: String,
            since: Option<SinceWire>,
        },
        Subscribed {
            epoch: String,
            offset: u64,
            recovered: Option<bool>,
            replay: Vec<ByteBuf>,
        },
        Unsubscribe {
            room: String,
            node: String,
        },
        Publish {
            room: String,
            from: String,
            data: ByteBuf,
            msg_id: Option<String>,
            origin: String,
            ack: Option<u64>,
            hops: u8,
        },
        PubAck {
            room: String,
            ack: u64,
            offset: Option<u64>,
            #[serde(default)]
            epoch: String,
        },
        Deliver {
            room: String,
            epoch: String,
            offset: u64,
            event: ByteBuf,
        },
        Presence {
            node: String,
            payload: ByteBuf,
        },
        Dm {
            to: String,
            event: ByteBuf,
        },
        Delivered {
            count: u64,
        },
        Error {
            reason: String,
        },
    }

    fn old(w: &FirstRelease) -> Vec<u8> {
        rmp_serde::to_vec(w).unwrap()
    }

    #[test]
    fn reads_the_first_release_and_is_read_by_it() {
        let deliver = old(&FirstRelease::Deliver {
            room: "r".into(),
            epoch: "e".into(),
            offset: 3,
            event: ByteBuf::from(vec![0x80]),
        });
        assert_eq!(
            switchboard_cluster::wire::variant(&deliver),
            Some("Deliver")
        );
        assert_eq!(
            RoomWire::decode(&deliver).unwrap(),
            RoomWire::Deliver {
                room: "r".into(),
                epoch: "e".into(),
                offset: 3,
                event: ByteBuf::from(vec![0x80]),
                home: String::new(),
            }
        );
        // A first-release PubAck had no epoch: it defaults to empty.
        #[derive(Serialize)]
        enum OldestPubAck {
            PubAck {
                room: String,
                ack: u64,
                offset: Option<u64>,
            },
        }
        let ack = rmp_serde::to_vec(&OldestPubAck::PubAck {
            room: "r".into(),
            ack: 1,
            offset: Some(2),
        })
        .unwrap();
        assert!(matches!(
            RoomWire::decode(&ack).unwrap(),
            RoomWire::PubAck { ack: 1, offset: Some(2), epoch, .. } if epoch.is_empty()
        ));
        let publish = RoomWire::Publish {
            room: "r".into(),
            from: "u".into(),
            data: ByteBuf::from(vec![0xc0]),
            msg_id: Some("m".into()),
            origin: "n1".into(),
            ack: Some(4),
            hops: 1,
        };
        assert_eq!(
            rmp_serde::from_slice::<FirstRelease>(&publish.encode()).unwrap(),
            FirstRelease::Publish {
                room: "r".into(),
                from: "u".into(),
                data: ByteBuf::from(vec![0xc0]),
                msg_id: Some("m".into()),
                origin: "n1".into(),
                ack: Some(4),
                hops: 1,
            }
        );
        let subscribe = RoomWire::Subscribe {
            room: "r".into(),
            node: "n2".into(),
            since: Some(SinceWire {
                epoch: "e".into(),
                offset: 9,
            }),
            relayed: true,
        };
        assert!(matches!(
            rmp_serde::from_slice::<FirstRelease>(&subscribe.encode()).unwrap(),
            FirstRelease::Subscribe { since: Some(s), .. } if s.offset == 9
        ));
    }

    #[test]
    fn round_trip_and_bad_bytes() {
        let w = RoomWire::Deliver {
            room: "r".into(),
            epoch: "e".into(),
            offset: 7,
            event: ByteBuf::from(vec![0x80]),
            home: "n1".into(),
        };
        assert_eq!(RoomWire::decode(&w.encode()).unwrap(), w);
        assert!(RoomWire::decode(&[0xc1, 0x00]).is_err());
    }
}
