//! The Room actor: one per active room per node.
//!
//! On the room's home node it is the **sequencer** (`sequencer.rs`): it
//! assigns offsets, keeps the history, de-duplicates `msg_id`s, queues each
//! message to its local members and sends it once to every other node that
//! has members. On any other node it is a **relay** (`relay.rs`): it
//! subscribes its node at the home, forwards publications there, and queues
//! what the home sends to its local members. What outlives a crash of the
//! actor is its [`RoomCore`] (`room_core.rs`); how a node comes to hold a
//! room is `home.rs`. This module routes each message to one of them.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use switchboard_protocol::{event, Bytes, ConnId, ErrorCode, EventSink, Since};

use switchboard_cluster::Home;
use switchboard_telemetry::names;

use crate::member::Member;
pub(crate) use crate::relay::start_sync;
use crate::relay::{deliver, joined, resync_again, resynced};
pub(crate) use crate::room_core::{add_member, is_home, Joining, Mode, RoomCore};
use crate::rooms::RoomContext;
pub(crate) use crate::sequencer::release;
use crate::sequencer::{publish, subscribe};
use crate::wire::{RoomWire, SinceWire};

/// Messages a Room handles. Rare, large requests are boxed to keep every
/// queued message small.
pub enum RoomMsg {
    Join(Box<JoinRequest>),
    /// The connection leaves; `ack` gets the `ok` once it is out, so that
    /// no `msg` of the room follows the `ok`.
    Leave {
        conn: ConnId,
        ack: LeaveAck,
    },
    Publish(Box<PublishRequest>),
    /// Expire history; retire the room when it has nothing left to do.
    Tick,
    /// The set of live nodes changed: the room's home may have moved.
    ViewChanged,
    /// (home) A node with members wants this room's messages.
    Subscribe {
        node: Arc<str>,
        since: Option<SinceWire>,
        /// `since` is the subscribing node's relay position, not a
        /// client's (see `RoomWire::Subscribe`).
        relayed: bool,
        reply: tokio::sync::oneshot::Sender<RoomWire>,
    },
    /// (home) A node has no members left.
    Unsubscribe {
        node: Arc<str>,
    },
    /// (relay) The home's answer to a forwarded publication.
    PubAck {
        ack: u64,
        offset: Option<u64>,
        epoch: String,
    },
    /// (relay) A message sequenced by the home.
    Deliver {
        epoch: String,
        offset: u64,
        event: Bytes,
        /// Empty from a first-release home.
        home: String,
    },
    /// (relay) The home's answer to a re-subscription; `None`: no answer.
    Resynced {
        home: Arc<str>,
        answer: Option<RoomWire>,
    },
    /// (relay) Try the re-subscription again.
    Resync,
    /// (relay) The home's answer to the subscription of a waiting join
    /// (`RoomCore::joining`); `None`: no answer.
    Joined {
        ticket: u64,
        home: Arc<str>,
        answer: Option<RoomWire>,
    },
    /// (home) How this node came to hold the room (see `home.rs`).
    Acquired(Box<crate::home::Acquired>),
    /// A peer's replication message for this room (`Append`, `Appended`,
    /// `Snapshot`, `Forget`).
    Replication(Box<RoomWire>),
    /// Fault injection (`debug.faults`): the room panics.
    Crash,
}

impl ractor::Message for RoomMsg {}

/// Who gets a leave's `ok`: its command id and the connection's sink.
pub type LeaveAck = Option<(u64, Arc<dyn EventSink>)>;

pub struct JoinRequest {
    pub member: Member,
    /// The command id to answer; 0 for no `ok`.
    pub id: u64,
    pub since: Option<Since>,
    /// Called if the join is refused after it was accepted for routing (the
    /// room's home could not be reached): the session forgets the room.
    pub refused: Option<Box<dyn FnOnce() + Send>>,
}

pub struct PublishRequest {
    pub from: Arc<str>,
    /// The publisher's `data`, as MessagePack bytes.
    pub data: Bytes,
    pub msg_id: Option<String>,
    pub reply: PublishReply,
    /// Times this publication was forwarded between nodes.
    pub hops: u8,
}

/// Who learns the offset a publication was given.
pub enum PublishReply {
    None,
    /// An `ok` with this command id, to this connection (which need not be
    /// a member).
    Ok {
        id: u64,
        sink: Arc<dyn EventSink>,
    },
    /// The HTTP publish API.
    Offset(tokio::sync::oneshot::Sender<u64>),
    /// A publication forwarded by another node: ack it there.
    Remote {
        node: Arc<str>,
        ack: u64,
    },
}

impl PublishReply {
    pub(crate) fn send(self, ctx: &RoomContext, room: &str, epoch: &str, offset: u64) {
        match self {
            PublishReply::None => {}
            PublishReply::Ok { id, sink } => {
                sink.push(event::ok_pub(id, epoch, offset));
            }
            PublishReply::Offset(tx) => {
                let _ = tx.send(offset);
            }
            PublishReply::Remote { node, ack } => {
                let msg = RoomWire::PubAck {
                    room: room.to_owned(),
                    ack,
                    offset: Some(offset),
                    epoch: epoch.to_owned(),
                };
                ctx.cluster.send(&node, msg.encode());
            }
        }
    }

    /// The publication could not be sequenced.
    pub(crate) fn fail(self, ctx: &RoomContext, room: &str) {
        match self {
            PublishReply::None | PublishReply::Offset(_) => {}
            PublishReply::Ok { id, sink } => {
                sink.push(event::err(
                    id,
                    ErrorCode::Unavailable,
                    "room: its home node is unavailable; retry (a msg_id makes retries safe)",
                ));
            }
            PublishReply::Remote { node, ack } => {
                let msg = RoomWire::PubAck {
                    room: room.to_owned(),
                    ack,
                    offset: None,
                    epoch: String::new(),
                };
                ctx.cluster.send(&node, msg.encode());
            }
        }
    }
}

/// The Room actor. Its state is [`RoomState`].
pub struct Room;

pub struct RoomArgs {
    pub(crate) core: Arc<Mutex<RoomCore>>,
    pub(crate) ctx: Arc<RoomContext>,
}

pub struct RoomState {
    pub(crate) core: Arc<Mutex<RoomCore>>,
    pub(crate) ctx: Arc<RoomContext>,
    /// Removed from the registry and draining: whatever still arrives is
    /// forwarded to the room's next incarnation.
    retiring: bool,
}

impl Actor for Room {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RoomMsg>,
        args: RoomArgs,
    ) -> Result<RoomState, ActorProcessingErr> {
        // After a crash, give every member what the failed incarnation had
        // sequenced but not queued to it, and start over the joins it left
        // waiting (their answers would go to the failed incarnation).
        {
            let mut core = args.core.lock();
            if let Mode::Subscribing { .. } = core.mode {
                core.mode = Mode::Idle;
            }
            for waiting in std::mem::take(&mut core.joining) {
                let conn = waiting.req.member.conn;
                let _ = myself.cast(RoomMsg::Join(Box::new(waiting.req)));
                if let Some(ack) = waiting.leave {
                    let _ = myself.cast(RoomMsg::Leave { conn, ack });
                }
            }
            core.delivered_meanwhile.clear();
            let RoomCore {
                history, members, ..
            } = &mut *core;
            let last = history.released();
            for slot in members.values_mut().filter(|s| s.delivered < last) {
                for ev in history.after(slot.delivered) {
                    slot.member.sink.push(ev.clone());
                }
                slot.delivered = last;
            }
        }
        Ok(RoomState {
            core: args.core,
            ctx: args.ctx,
            retiring: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        if state.retiring {
            return forward(state, msg).await;
        }
        dispatch(&myself, state, msg);
        Ok(())
    }
}

/// Whether handling `msg` here needs this node to hold the room.
fn needs_holder(msg: &RoomMsg) -> bool {
    matches!(
        msg,
        RoomMsg::Join(_) | RoomMsg::Publish(_) | RoomMsg::Subscribe { .. }
    )
}

/// Whether `msg` is handled now: what needs this node to hold the room
/// while it does not (yet) waits for it; `None` if it was taken.
pub(crate) fn gate(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    msg: RoomMsg,
) -> Option<RoomMsg> {
    let mut core = state.core.lock();
    if let Mode::Acquiring { queue, .. } = &mut core.mode {
        // Member changes keep their order with the joins that wait.
        if needs_holder(&msg) || matches!(msg, RoomMsg::Leave { .. }) {
            queue.push(msg);
            return None;
        }
    } else if needs_holder(&msg)
        && !matches!(core.mode, Mode::Home { .. })
        && state.ctx.cluster.home(&core.name) == Home::Local
    {
        drop(core);
        crate::home::acquire(myself, state, Some(msg));
        return None;
    }
    Some(msg)
}

pub(crate) fn dispatch(myself: &ActorRef<RoomMsg>, state: &mut RoomState, msg: RoomMsg) {
    let Some(msg) = gate(myself, state, msg) else {
        return;
    };
    match msg {
        RoomMsg::Join(req) => join(myself, state, *req),
        RoomMsg::Leave { conn, ack } => leave(state, conn, ack),
        RoomMsg::Publish(req) => publish(state, *req),
        RoomMsg::Tick => tick(myself, state),
        RoomMsg::ViewChanged => view_changed(myself, state),
        RoomMsg::Subscribe {
            node,
            since,
            relayed,
            reply,
        } => subscribe(myself, state, node, since, relayed, reply),
        RoomMsg::Unsubscribe { node } => {
            if let Mode::Home { subscribers } = &mut state.core.lock().mode {
                subscribers.remove(&node);
            }
        }
        RoomMsg::PubAck { ack, offset, epoch } => {
            let reply = state.core.lock().pending.remove(&ack);
            let name = state.core.lock().name.clone();
            match (reply, offset) {
                (Some(r), Some(o)) => r.send(&state.ctx, &name, &epoch, o),
                (Some(r), None) => r.fail(&state.ctx, &name),
                (None, _) => {}
            }
        }
        RoomMsg::Deliver {
            epoch,
            offset,
            event,
            home,
        } => deliver(myself, state, &home, epoch, offset, event),
        RoomMsg::Resynced { home, answer } => resynced(myself, state, home, answer),
        RoomMsg::Resync => resync_again(myself, state),
        RoomMsg::Joined {
            ticket,
            home,
            answer,
        } => joined(myself, state, ticket, home, answer),
        RoomMsg::Acquired(how) => crate::home::acquired(myself, state, *how),
        RoomMsg::Replication(wire) => crate::copy::handle(myself, state, *wire),
        RoomMsg::Crash => panic!("room crash injected (debug.faults)"),
    }
}

pub(crate) fn join(myself: &ActorRef<RoomMsg>, state: &mut RoomState, req: JoinRequest) {
    let name = state.core.lock().name.clone();
    if state.core.lock().members.contains_key(&req.member.conn) {
        // Already a member: messages have been flowing; nothing to replay.
        let core = state.core.lock();
        let (epoch, last) = match &core.mode {
            Mode::Relay { epoch, last, .. } => (epoch.clone(), *last),
            _ => (core.history.epoch.clone(), core.history.released()),
        };
        if req.id != 0 {
            let recovered = req.since.map(|s| s.epoch == epoch);
            req.member
                .sink
                .push(event::ok_join(req.id, &name, &epoch, last, recovered));
        }
        return;
    }
    match state.ctx.cluster.home(&name) {
        Home::Local => crate::sequencer::join(state, req),
        Home::Remote(home) => crate::relay::join(myself, state, req, home),
    }
}

/// A join's answer and its replay, as one queued event (the maps
/// concatenated): a member that resumes takes one place in its outbound
/// queue, however much it missed, so a replay of up to `history.size`
/// messages never makes it a slow consumer.
pub(crate) fn push_joined<'a>(
    sink: &dyn EventSink,
    ok: Option<Bytes>,
    replay: impl ExactSizeIterator<Item = &'a [u8]>,
) {
    if replay.len() == 0 {
        if let Some(ok) = ok {
            sink.push(ok);
        }
        return;
    }
    let mut joined = ok.map(Vec::from).unwrap_or_default();
    for ev in replay {
        joined.extend_from_slice(ev);
    }
    sink.push(Bytes::from(joined));
}

/// The room's home could not take the join: the client retries.
pub(crate) fn refuse_join(member: Member, id: u64, refused: Option<Box<dyn FnOnce() + Send>>) {
    // Before the answer: the client may send its next join as soon as it
    // reads it.
    if let Some(refused) = refused {
        refused();
    }
    member.sink.push(event::err(
        id,
        ErrorCode::Unavailable,
        "room: its home node is unavailable; retry",
    ));
}

pub(crate) fn leave(state: &mut RoomState, conn: ConnId, ack: LeaveAck) {
    let mut core = state.core.lock();
    if let Some(waiting) = core.joining.iter_mut().find(|j| j.req.member.conn == conn) {
        // Carried out right after the join, whose answer comes first.
        waiting.leave = Some(ack);
        return;
    }
    if let Some((id, sink)) = ack.filter(|(id, _)| *id != 0) {
        sink.push(event::ok(id));
    }
    if core.members.remove(&conn).is_none() {
        return;
    }
    let name = core.name.clone();
    if core.members.is_empty() && core.joining.is_empty() {
        metrics::gauge!(names::ROOMS).decrement(1.0);
        if let Mode::Relay { home, .. } | Mode::Syncing { home, .. } = &core.mode {
            let msg = RoomWire::Unsubscribe {
                room: name.to_string(),
                node: state.ctx.cluster.me().to_string(),
            };
            state.ctx.cluster.send(home, msg.encode());
            core.mode = Mode::Idle;
        }
    }
    drop(core);
    state.ctx.observer.left(&name, conn);
}

pub(crate) fn view_changed(myself: &ActorRef<RoomMsg>, state: &mut RoomState) {
    let mut core = state.core.lock();
    let name = core.name.clone();
    let home = state.ctx.cluster.home(&name);
    let has_state = !core.copies.is_empty() || core.holds;
    match (&mut core.mode, home) {
        (Mode::Home { .. }, Home::Remote(to)) => {
            // Stop sequencing; keep holding until the new home fetches
            // the room. A copy sent there starts the room if nothing else
            // does (it fetches the rest). Members here follow the new
            // home, other nodes' relays re-subscribe there themselves.
            core.fail_pending(&state.ctx);
            crate::home::snapshot_to(&state.ctx, &core, &to);
            start_sync(myself, &state.ctx, &mut core, to);
        }
        (Mode::Acquiring { .. }, Home::Remote(to)) => {
            // The view moved on first: what waited goes the new way.
            let Mode::Acquiring { queue, epoch, .. } =
                std::mem::replace(&mut core.mode, Mode::Idle)
            else {
                return;
            };
            if let Some((epoch, last)) = epoch {
                core.mode = Mode::Relay {
                    home: to.clone(),
                    epoch,
                    last,
                };
                start_sync(myself, &state.ctx, &mut core, to);
            }
            for msg in queue {
                let _ = myself.cast(msg);
            }
        }
        (Mode::Relay { home: from, .. } | Mode::Syncing { home: from, .. }, Home::Remote(to))
            if *from != to =>
        {
            core.fail_pending(&state.ctx);
            start_sync(myself, &state.ctx, &mut core, to);
        }
        (Mode::Subscribing { home: from, held }, Home::Remote(to)) if *from != to => {
            // The joins waiting there start over at the new home when the
            // old one answers (or does not).
            *from = to;
            held.clear();
        }
        (Mode::Relay { .. } | Mode::Syncing { .. } | Mode::Subscribing { .. }, Home::Local) => {
            drop(core);
            crate::home::acquire(myself, state, None);
        }
        // A follower's copy whose home moved here: take the room now, not
        // at its next use (its clients may rejoin with `since` later).
        (Mode::Idle, Home::Local) if has_state => {
            drop(core);
            crate::home::acquire(myself, state, None);
        }
        (Mode::Home { subscribers }, Home::Local) => {
            let view = state.ctx.cluster.view();
            subscribers.retain(|n| view.peers.contains_key(n));
            crate::home::pick_follower(&mut core, &state.ctx);
        }
        _ => {}
    }
}

/// How long a node that stopped being a room's home keeps its sequence for
/// the new home to fetch.
const HANDOVER_UNASKED: std::time::Duration = std::time::Duration::from_secs(10);

fn tick(myself: &ActorRef<RoomMsg>, state: &mut RoomState) {
    let mut core = state.core.lock();
    let now = Instant::now();
    core.history.expire(now);
    core.copies.retain(|_, c| {
        c.expire(now);
        !c.is_empty()
    });
    if core.holds && !matches!(core.mode, Mode::Home { .. } | Mode::Acquiring { .. }) {
        let since = *core.moved_at.get_or_insert(now);
        if now.duration_since(since) > HANDOVER_UNASKED {
            // The new home did not ask: it had the room already.
            tracing::info!(room = %core.name, "hand-over not asked for; epoch over");
            crate::home::unhold(&mut core, &state.ctx);
        }
    } else {
        core.moved_at = None;
    }
    let idle = core.members.is_empty()
        && core.joining.is_empty()
        && core.history.is_empty()
        && core.pending.is_empty()
        && core.waiting.is_empty()
        && core.copies.is_empty()
        && match &core.mode {
            Mode::Home { subscribers } => subscribers.is_empty(),
            Mode::Relay { .. }
            | Mode::Syncing { .. }
            | Mode::Subscribing { .. }
            | Mode::Acquiring { .. } => false,
            Mode::Idle => true,
        };
    if !idle {
        return;
    }
    let name = core.name.clone();
    crate::home::unhold(&mut core, &state.ctx);
    drop(core);
    // Leave the registry first, so new requests start a new incarnation,
    // then drain: what was already queued here is forwarded to it.
    let me = myself.get_id();
    state.ctx.map.remove_if(&name, |_, r| r.get_id() == me);
    state.retiring = true;
    if myself.drain().is_err() {
        tracing::debug!(room = %name, "room already stopping");
    }
}

/// (retiring) Hands `msg` to the room's next incarnation. A `Leave` goes
/// too: a join queued before it was forwarded there, and the leave's `ok`
/// is owed either way.
async fn forward(state: &RoomState, msg: RoomMsg) -> Result<(), ActorProcessingErr> {
    if matches!(
        msg,
        RoomMsg::Join(_)
            | RoomMsg::Leave { .. }
            | RoomMsg::Publish(_)
            | RoomMsg::Subscribe { .. }
            | RoomMsg::Replication(_)
    ) {
        let name = state.core.lock().name.clone();
        state.ctx.rooms().cast(&name, msg).await?;
    }
    Ok(())
}
