//! A room's state that outlives a crash of its actor: members, history,
//! its relation to the home, and what waits for the home.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use switchboard_protocol::{event, Bytes, ConnId};
use switchboard_telemetry::names;

use crate::history::History;
use crate::member::Member;
use crate::room::{JoinRequest, LeaveAck, PublishReply, RoomMsg};
use crate::rooms::RoomContext;

pub(crate) struct Slot {
    pub(crate) member: Member,
    /// Newest offset queued to this member.
    pub(crate) delivered: u64,
}

/// The room's relation to its home.
pub(crate) enum Mode {
    /// No members and not the home of anyone's subscription.
    Idle,
    /// This node sequences the room; `subscribers` are the other nodes with
    /// members.
    Home { subscribers: BTreeSet<Arc<str>> },
    /// Subscribed at `home`, whose current epoch is `epoch`; `last` is the
    /// newest offset received with none missing before it.
    Relay {
        home: Arc<str>,
        epoch: String,
        last: u64,
    },
    /// Subscribing at `home` for the first member here (its join waits in
    /// `RoomCore::joining`): what the home delivers meanwhile is held and
    /// applied after the answer.
    Subscribing {
        home: Arc<str>,
        held: Vec<(String, u64, Bytes)>,
    },
    /// Re-subscribing at `home` after the home changed or a delivery was
    /// missed: asks for what followed `last` in `epoch`. What the home
    /// delivers meanwhile is held and applied after the answer.
    Syncing {
        home: Arc<str>,
        epoch: String,
        last: u64,
        held: Vec<(String, u64, Bytes)>,
        /// How many of `held` arrived before the re-subscription went out:
        /// the answer is newer than they are.
        asked: usize,
    },
    /// This node is the home but does not hold the room yet: it is taking
    /// it over or fetching it (`home.rs`). What needs the home waits in
    /// `queue`; `epoch` is what the members here followed, and how far.
    Acquiring {
        queue: Vec<RoomMsg>,
        epoch: Option<(String, u64)>,
        /// Nodes subscribed while this node was the home before (it is
        /// acquiring the room again: it was refused, or found stale): they
        /// stay subscribed, and get what they missed once it holds.
        subscribers: BTreeSet<Arc<str>>,
    },
}

/// A room's state that outlives a crash of its actor. Its supervisor keeps
/// it and hands it to the restarted Room.
pub struct RoomCore {
    pub(crate) name: Arc<str>,
    pub(crate) history: History,
    pub(crate) members: HashMap<ConnId, Slot>,
    pub(crate) mode: Mode,
    /// Publications forwarded to the home, waiting for their offset.
    pub(crate) pending: HashMap<u64, PublishReply>,
    pub(crate) next_ack: u64,
    /// This node holds the room's sequence (`history.epoch`): it is the
    /// home, or was and has not handed the room over. Only a holder
    /// sequences, and an epoch has one holder at a time.
    pub(crate) holds: bool,
    /// (home) The node that keeps a copy of the sequence and confirms each
    /// message before it is released (`cluster.replicas` = 2).
    pub(crate) follower: Option<crate::home::Follower>,
    /// (home) When the follower was lost together with every other peer:
    /// until the membership has settled again (and `ALONE_GRACE` passed),
    /// this node cannot tell whether the follower took the room over, and
    /// releases nothing.
    pub(crate) lost_alone: Option<Instant>,
    /// (home) This holding's sequence may be held elsewhere too: it had a
    /// follower, or was fetched or taken over. Alone, such a home cannot
    /// tell whether another node went on with it (see `lost_alone`).
    pub(crate) replicated: bool,
    /// (home) Nobody to wait for (one node, `replicas = 1`, no peer that
    /// can follow): a message is released as soon as it is sequenced.
    /// Without a follower and not solo, it waits (see `pick_follower`).
    pub(crate) solo: bool,
    /// (home) Replies waiting for their offset to be released.
    pub(crate) waiting: std::collections::VecDeque<(u64, PublishReply)>,
    /// (follower) Copies of other homes' sequences of this room, by home.
    pub(crate) copies: HashMap<Arc<str>, History>,
    /// When this node, holding the room, stopped being its home.
    pub(crate) moved_at: Option<Instant>,
    /// The node last known to hold the room's sequence after this one:
    /// it was handed the room, or went on with it (see `copy.rs`).
    pub(crate) holder_hint: Option<Arc<str>>,
    /// (relay) Joins waiting for the home's answer to their subscription;
    /// the room handles other messages meanwhile.
    pub(crate) joining: Vec<Joining>,
    /// (relay) What was delivered to the members here while joins wait:
    /// a join whose answer is older than some of it gets the rest here.
    pub(crate) delivered_meanwhile: Vec<(String, u64, Bytes)>,
    pub(crate) next_ticket: u64,
}

/// A join waiting for the home's answer (see `RoomMsg::Joined`).
pub(crate) struct Joining {
    /// The subscription it asked for; `None`: a plain join that waits for
    /// the room's first subscription, in flight, and is answered from it.
    pub(crate) ticket: Option<u64>,
    pub(crate) req: JoinRequest,
    /// The member left before the answer: the leave is carried out right
    /// after the join, so that its `ok` follows the join's.
    pub(crate) leave: Option<LeaveAck>,
}

impl RoomCore {
    pub(crate) fn new(name: Arc<str>, size: usize, ttl: std::time::Duration) -> Self {
        Self {
            name,
            history: History::new(size, ttl),
            members: HashMap::new(),
            mode: Mode::Idle,
            pending: HashMap::new(),
            next_ack: 1,
            holds: false,
            follower: None,
            lost_alone: None,
            replicated: false,
            solo: false,
            waiting: std::collections::VecDeque::new(),
            copies: HashMap::new(),
            moved_at: None,
            holder_hint: None,
            joining: Vec::new(),
            delivered_meanwhile: Vec::new(),
            next_ticket: 1,
        }
    }

    /// Tells every member that the room's sequence restarted: messages
    /// continue after `offset` in `epoch`. They stay members.
    pub(crate) fn reset_members(&mut self, epoch: &str, offset: u64, reason: &'static str) {
        if self.members.is_empty() {
            return;
        }
        tracing::info!(room = %self.name, members = self.members.len(), epoch, offset, reason, "room reset");
        metrics::counter!(names::ROOM_RESETS_TOTAL, "reason" => reason).increment(1);
        let ev = event::reset(&self.name, epoch, offset);
        for slot in self.members.values_mut() {
            slot.member.sink.push(ev.clone());
            slot.delivered = offset;
        }
    }

    /// The home holds `epoch`: an epoch this node still holds is over (the
    /// home had its own, e.g. after a partition healed) and is never
    /// continued.
    pub(crate) fn superseded(&mut self, ctx: &RoomContext, epoch: &str) {
        if self.holds && self.history.epoch != epoch {
            tracing::info!(room = %self.name, epoch = %self.history.epoch, by = epoch, "held epoch superseded");
            crate::home::unhold(self, ctx);
        }
    }

    /// Publications forwarded to a home that will not answer them: their
    /// publishers get an error and retry (with `msg_id`, safely).
    pub(crate) fn fail_pending(&mut self, ctx: &RoomContext) {
        for (_, reply) in self.pending.drain() {
            reply.fail(ctx, &self.name);
        }
        for (_, reply) in self.waiting.drain(..) {
            reply.fail(ctx, &self.name);
        }
    }
}

/// Whether this node is the room's sequencer now (a race with a view change
/// between the gate in `dispatch` and here leaves it not).
pub(crate) fn is_home(core: &RoomCore) -> bool {
    matches!(core.mode, Mode::Home { .. })
}

pub(crate) fn add_member(core: &mut RoomCore, member: Member, delivered: u64) {
    if core.members.is_empty() {
        metrics::gauge!(names::ROOMS).increment(1.0);
    }
    core.members.insert(member.conn, Slot { member, delivered });
}
