//! The Room actor: one per active room per node.
//!
//! On the room's home node it is the **sequencer**: it assigns offsets, keeps
//! the history, de-duplicates `msg_id`s, queues each message to its local
//! members and sends it once to every other node that has members. On any
//! other node it is a **relay**: it subscribes its node at the home, forwards
//! publications there, and queues what the home sends to its local members.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_bytes::ByteBuf;
use switchboard_protocol::{event, Bytes, ConnId, ErrorCode, EventSink, Since};

use switchboard_cluster::Home;
use switchboard_telemetry::names;

use crate::history::{History, Recovery};
use crate::member::Member;
use crate::rooms::RoomContext;
use crate::wire::{RoomWire, SinceWire};

/// Messages a Room handles. Rare, large requests are boxed to keep every
/// queued message small.
pub enum RoomMsg {
    Join(Box<JoinRequest>),
    /// The connection leaves; `ack` gets the `ok` once it is out, so that
    /// no `msg` of the room follows the `ok`.
    Leave {
        conn: ConnId,
        ack: Option<(u64, Arc<dyn EventSink>)>,
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
    /// (home) How this node came to hold the room (see `home.rs`).
    Acquired(Box<crate::home::Acquired>),
    /// A peer's replication message for this room (`Append`, `Appended`,
    /// `Snapshot`, `Forget`).
    Replication(Box<RoomWire>),
    /// Fault injection (`debug.faults`): the room panics.
    Crash,
}

impl ractor::Message for RoomMsg {}

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

/// Forwarding more often than this means the nodes' views disagree; the
/// publication is refused (503) rather than bounced forever.
const MAX_HOPS: u8 = 2;

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
    next_ack: u64,
    /// This node holds the room's sequence (`history.epoch`): it is the
    /// home, or was and has not handed the room over. Only a holder
    /// sequences, and an epoch has one holder at a time.
    pub(crate) holds: bool,
    /// (home) The node that keeps a copy of the sequence and confirms each
    /// message before it is released (`cluster.replicas` = 2).
    pub(crate) follower: Option<crate::home::Follower>,
    /// (home) Replies waiting for their offset to be released.
    pub(crate) waiting: std::collections::VecDeque<(u64, PublishReply)>,
    /// (follower) Copies of other homes' sequences of this room, by home.
    pub(crate) copies: HashMap<Arc<str>, History>,
    /// When this node, holding the room, stopped being its home.
    moved_at: Option<Instant>,
    /// The node last known to hold the room's sequence after this one:
    /// it was handed the room, or went on with it (see `copy.rs`).
    pub(crate) holder_hint: Option<Arc<str>>,
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
            waiting: std::collections::VecDeque::new(),
            copies: HashMap::new(),
            moved_at: None,
            holder_hint: None,
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
        _myself: ActorRef<RoomMsg>,
        args: RoomArgs,
    ) -> Result<RoomState, ActorProcessingErr> {
        // After a crash, give every member what the failed incarnation had
        // sequenced but not queued to it.
        {
            let mut core = args.core.lock();
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
        dispatch(&myself, state, msg).await;
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

pub(crate) async fn dispatch(myself: &ActorRef<RoomMsg>, state: &mut RoomState, msg: RoomMsg) {
    {
        let mut core = state.core.lock();
        if let Mode::Acquiring { queue, .. } = &mut core.mode {
            // Member changes keep their order with the joins that wait.
            if needs_holder(&msg) || matches!(msg, RoomMsg::Leave { .. }) {
                queue.push(msg);
                return;
            }
        } else if needs_holder(&msg)
            && !matches!(core.mode, Mode::Home { .. })
            && state.ctx.cluster.home(&core.name) == Home::Local
        {
            drop(core);
            crate::home::acquire(myself, state, Some(msg));
            return;
        }
    }
    match msg {
        RoomMsg::Join(req) => join(state, *req).await,
        RoomMsg::Leave { conn, ack } => leave(state, conn, ack),
        RoomMsg::Publish(req) => publish(state, *req),
        RoomMsg::Tick => tick(myself, state),
        RoomMsg::ViewChanged => view_changed(myself, state),
        RoomMsg::Subscribe { node, since, reply } => {
            let _ = reply.send(subscribe(state, node, since));
        }
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
        RoomMsg::Acquired(how) => Box::pin(crate::home::acquired(myself, state, *how)).await,
        RoomMsg::Replication(wire) => crate::copy::handle(myself, state, *wire),
        RoomMsg::Crash => panic!("room crash injected (debug.faults)"),
    }
}

/// Whether this node is the room's sequencer now (a race with a view change
/// between the gate in `dispatch` and here leaves it not).
fn is_home(core: &RoomCore) -> bool {
    matches!(core.mode, Mode::Home { .. })
}

pub(crate) fn add_member(core: &mut RoomCore, member: Member, delivered: u64) {
    if core.members.is_empty() {
        metrics::gauge!(names::ROOMS).increment(1.0);
    }
    core.members.insert(member.conn, Slot { member, delivered });
}

async fn join(state: &mut RoomState, req: JoinRequest) {
    let JoinRequest {
        member,
        id,
        since,
        refused,
    } = req;
    let name = state.core.lock().name.clone();
    if state.core.lock().members.contains_key(&member.conn) {
        // Already a member: messages have been flowing; nothing to replay.
        let core = state.core.lock();
        let (epoch, last) = match &core.mode {
            Mode::Relay { epoch, last, .. } => (epoch.clone(), *last),
            _ => (core.history.epoch.clone(), core.history.released()),
        };
        if id != 0 {
            let recovered = since.map(|s| s.epoch == epoch);
            member
                .sink
                .push(event::ok_join(id, &name, &epoch, last, recovered));
        }
        return;
    }
    match state.ctx.cluster.home(&name) {
        Home::Local => {
            let mut core = state.core.lock();
            if !is_home(&core) {
                drop(core);
                refuse_join(member, id, refused);
                return;
            }
            let history = &core.history;
            let last = history.released();
            let (recovered, replay) = match &since {
                None => (None, Vec::new()),
                Some(s) => match history.since(&s.epoch, s.offset) {
                    Recovery::Replay(events) => (Some(true), events),
                    Recovery::Lost => (Some(false), Vec::new()),
                },
            };
            let ok = (id != 0).then(|| event::ok_join(id, &name, &history.epoch, last, recovered));
            push_joined(&*member.sink, ok, replay.iter().map(|ev| &ev[..]));
            add_member(&mut core, member.clone(), last);
        }
        Home::Remote(home) => {
            // A relay that is subscribed answers a plain join itself.
            let local = match &state.core.lock().mode {
                Mode::Relay {
                    home: h,
                    epoch,
                    last,
                } if *h == home && since.is_none() => Some((epoch.clone(), *last)),
                _ => None,
            };
            let (epoch, last) = match local {
                Some(known) => {
                    if id != 0 {
                        member
                            .sink
                            .push(event::ok_join(id, &name, &known.0, known.1, None));
                    }
                    known
                }
                None => {
                    let since_wire = since.map(|s| SinceWire {
                        epoch: s.epoch,
                        offset: s.offset,
                    });
                    let me = state.ctx.cluster.me().clone();
                    let req = RoomWire::Subscribe {
                        room: name.to_string(),
                        node: me.to_string(),
                        since: since_wire,
                    };
                    let answer = state.ctx.cluster.call(&home, req.encode()).await;
                    match answer.map(|a| RoomWire::decode(&a)) {
                        Some(Ok(RoomWire::Subscribed {
                            epoch,
                            offset,
                            recovered,
                            replay,
                        })) => {
                            let mut core = state.core.lock();
                            // Already following this sequence: deliveries up to
                            // `offset` may still be on their way to the members
                            // here (or a re-subscription is filling a gap), so
                            // the relay's position stays.
                            let same = match &core.mode {
                                Mode::Relay {
                                    home: h, epoch: e, ..
                                }
                                | Mode::Syncing {
                                    home: h, epoch: e, ..
                                } => *h == home && *e == epoch,
                                _ => false,
                            };
                            if !same {
                                core.fail_pending(&state.ctx);
                                core.reset_members(&epoch, offset, "home_changed");
                                core.superseded(&state.ctx, &epoch);
                                core.mode = Mode::Relay {
                                    home: home.clone(),
                                    epoch: epoch.clone(),
                                    last: offset,
                                };
                            }
                            let ok = (id != 0)
                                .then(|| event::ok_join(id, &name, &epoch, offset, recovered));
                            push_joined(&*member.sink, ok, replay.iter().map(|ev| &ev[..]));
                            (epoch, offset)
                        }
                        other => {
                            tracing::warn!(room = %name, home = %home, ?other, "subscribe failed");
                            refuse_join(member, id, refused);
                            return;
                        }
                    }
                }
            };
            let _ = epoch;
            add_member(&mut state.core.lock(), member.clone(), last);
        }
    }
    state.ctx.observer.joined(&name, &member);
}

/// The room's home could not take the join: the client retries.
/// A join's answer and its replay, as one queued event (the maps
/// concatenated): a member that resumes takes one place in its outbound
/// queue, however much it missed, so a replay of up to `history.size`
/// messages never makes it a slow consumer.
fn push_joined<'a>(
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

fn refuse_join(member: Member, id: u64, refused: Option<Box<dyn FnOnce() + Send>>) {
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

fn leave(state: &mut RoomState, conn: ConnId, ack: Option<(u64, Arc<dyn EventSink>)>) {
    if let Some((id, sink)) = ack.filter(|(id, _)| *id != 0) {
        sink.push(event::ok(id));
    }
    let mut core = state.core.lock();
    if core.members.remove(&conn).is_none() {
        return;
    }
    let name = core.name.clone();
    if core.members.is_empty() {
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

fn publish(state: &mut RoomState, req: PublishRequest) {
    let name = state.core.lock().name.clone();
    match state.ctx.cluster.home(&name) {
        Home::Local => sequence(state, req),
        Home::Remote(home) => {
            if req.hops >= MAX_HOPS {
                req.reply.fail(&state.ctx, &name);
                return;
            }
            let (origin, ack) = match req.reply {
                // Forwarded already: the origin waits for the ack, not us.
                PublishReply::Remote { node, ack } => (node, Some(ack)),
                PublishReply::None => (state.ctx.cluster.me().clone(), None),
                reply => {
                    let mut core = state.core.lock();
                    let ack = core.next_ack;
                    core.next_ack += 1;
                    core.pending.insert(ack, reply);
                    (state.ctx.cluster.me().clone(), Some(ack))
                }
            };
            let msg = RoomWire::Publish {
                room: name.to_string(),
                from: req.from.to_string(),
                data: ByteBuf::from(req.data.to_vec()),
                msg_id: req.msg_id,
                origin: origin.to_string(),
                ack,
                hops: req.hops + 1,
            };
            if !state.ctx.cluster.send(&home, msg.encode()) {
                tracing::warn!(room = %name, home = %home, "cannot reach the home");
                let failed = ack.and_then(|a| state.core.lock().pending.remove(&a));
                if let Some(r) = failed {
                    r.fail(&state.ctx, &name);
                }
            }
        }
    }
}

fn sequence(state: &mut RoomState, req: PublishRequest) {
    let now = Instant::now();
    let mut core = state.core.lock();
    if !is_home(&core) {
        let name = core.name.clone();
        drop(core);
        req.reply.fail(&state.ctx, &name);
        return;
    }
    let name = core.name.clone();
    let epoch = core.history.epoch.clone();
    let msg_id = req.msg_id.as_deref();
    if let Some(offset) = msg_id.and_then(|m| core.history.offset_of(m)) {
        if offset <= core.history.released() {
            drop(core);
            req.reply.send(&state.ctx, &name, &epoch, offset);
        } else {
            core.waiting.push_back((offset, req.reply));
        }
        return;
    }
    let (offset, ev) = core.history.append(now, msg_id, |offset| {
        event::msg(&name, offset, &req.from, &req.data)
    });
    metrics::counter!(names::MESSAGES_PUBLISHED_TOTAL).increment(1);
    core.waiting.push_back((offset, req.reply));
    match &core.follower {
        Some(f) => {
            let append = RoomWire::Append {
                room: name.to_string(),
                home: state.ctx.cluster.me().to_string(),
                epoch,
                entry: crate::wire::Logged {
                    offset,
                    msg_id: req.msg_id.clone(),
                    age_ms: 0,
                    event: ByteBuf::from(ev.to_vec()),
                },
            };
            state.ctx.cluster.send(&f.node, append.encode());
        }
        None => release(&mut core, &state.ctx, offset),
    }
}

/// Delivers everything sequenced up to `upto` that was not yet: to the
/// members here, once to each subscribed node, and the publishers' `ok`s.
pub(crate) fn release(core: &mut RoomCore, ctx: &RoomContext, upto: u64) {
    let now = Instant::now();
    let events = core.history.release(upto);
    let RoomCore {
        name,
        history,
        members,
        mode,
        waiting,
        ..
    } = core;
    let mut delivered = 0u64;
    for (offset, ev) in events {
        for slot in members.values_mut().filter(|s| s.delivered < offset) {
            if slot.member.sink.deliver(ev.clone(), now) {
                delivered += 1;
            }
            slot.delivered = offset;
        }
        if let Mode::Home { subscribers } = mode {
            if !subscribers.is_empty() {
                // Encoded once, sent once per node with members.
                let bytes = RoomWire::Deliver {
                    room: name.to_string(),
                    epoch: history.epoch.clone(),
                    offset,
                    event: ByteBuf::from(ev.to_vec()),
                    home: ctx.cluster.me().to_string(),
                }
                .encode();
                subscribers.retain(|node| ctx.cluster.send(node, bytes.clone()));
            }
        }
    }
    metrics::counter!(names::MESSAGES_DELIVERED_TOTAL).increment(delivered);
    let released = history.released();
    while waiting.front().is_some_and(|(o, _)| *o <= released) {
        if let Some((offset, reply)) = waiting.pop_front() {
            reply.send(ctx, name, &history.epoch, offset);
        }
    }
}

fn subscribe(state: &mut RoomState, node: Arc<str>, since: Option<SinceWire>) -> RoomWire {
    let name = state.core.lock().name.clone();
    if !matches!(state.ctx.cluster.home(&name), Home::Local) {
        return RoomWire::Error {
            reason: format!("{} is not the home of {name}", state.ctx.cluster.me()),
        };
    }
    let mut core = state.core.lock();
    if !is_home(&core) {
        return RoomWire::Error {
            reason: format!("{} does not hold {name} yet", state.ctx.cluster.me()),
        };
    }
    let RoomCore { history, mode, .. } = &mut *core;
    if let Mode::Home { subscribers } = mode {
        subscribers.insert(node);
    }
    let (recovered, replay) = match &since {
        None => (None, Vec::new()),
        Some(s) => match history.since(&s.epoch, s.offset) {
            Recovery::Replay(events) => (
                Some(true),
                events
                    .into_iter()
                    .map(|e| ByteBuf::from(e.to_vec()))
                    .collect(),
            ),
            Recovery::Lost => (Some(false), Vec::new()),
        },
    };
    RoomWire::Subscribed {
        epoch: history.epoch.clone(),
        offset: history.released(),
        recovered,
        replay,
    }
}

fn deliver(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    from: &str,
    epoch: String,
    offset: u64,
    ev: Bytes,
) {
    let mut core = state.core.lock();
    if let Mode::Relay { home, .. } | Mode::Syncing { home, .. } = &core.mode {
        // A node that released it after the room moved on (it no longer
        // holds the room, or never learnt it moved): not this relay's
        // sequence. Its members get the room from the home it follows.
        if !from.is_empty() && **home != *from {
            tracing::debug!(room = %core.name, from, following = %home, offset, "delivery from a node not followed");
            return;
        }
    }
    let resync = relay(&mut core, epoch, offset, ev);
    if let Some(home) = resync {
        start_sync(myself, &state.ctx, &mut core, home);
    }
}

/// Applies one delivery from the home. Never delivers past a gap or
/// across epochs: holds the message and returns the home to re-subscribe
/// at, whose answer fills the gap or resets the members.
fn relay(core: &mut RoomCore, epoch: String, offset: u64, ev: Bytes) -> Option<Arc<str>> {
    let (home, e, last) = match &mut core.mode {
        Mode::Relay { home, epoch, last } => (home.clone(), epoch, last),
        Mode::Syncing { held, .. } => {
            held.push((epoch, offset, ev));
            return None;
        }
        // Not subscribed (any more): a message still on its way.
        _ => return None,
    };
    if *e == epoch && offset <= *last {
        return None;
    }
    if *e != epoch || offset != *last + 1 {
        tracing::info!(room = %core.name, home = %home, epoch, offset, following = %e, last = *last, "gap or new epoch from the home; re-subscribing");
        let held = vec![(epoch, offset, ev)];
        if let Mode::Relay { home, epoch, last } = std::mem::replace(&mut core.mode, Mode::Idle) {
            core.mode = Mode::Syncing {
                home,
                epoch,
                last,
                held,
                asked: 0,
            };
        }
        return Some(home);
    }
    *last = offset;
    let now = Instant::now();
    let mut delivered = 0u64;
    for slot in core.members.values_mut() {
        if slot.delivered < offset {
            slot.member.sink.deliver(ev.clone(), now);
            slot.delivered = offset;
            delivered += 1;
        }
    }
    metrics::counter!(names::MESSAGES_DELIVERED_TOTAL).increment(delivered);
    None
}

/// Re-subscribes at `home` without waiting for it: the answer comes back
/// as `Resynced`. Members stay; deliveries are held meanwhile.
pub(crate) fn start_sync(
    myself: &ActorRef<RoomMsg>,
    ctx: &RoomContext,
    core: &mut RoomCore,
    home: Arc<str>,
) {
    if core.members.is_empty() {
        core.mode = Mode::Idle;
        return;
    }
    let (epoch, last, held) = match std::mem::replace(&mut core.mode, Mode::Idle) {
        Mode::Relay { epoch, last, .. } => (epoch, last, Vec::new()),
        Mode::Syncing {
            epoch, last, held, ..
        } => (epoch, last, held),
        Mode::Acquiring {
            epoch: Some((epoch, last)),
            ..
        } => (epoch, last, Vec::new()),
        Mode::Home { .. } | Mode::Idle | Mode::Acquiring { .. } => (
            core.history.epoch.clone(),
            core.history.released(),
            Vec::new(),
        ),
    };
    let req = RoomWire::Subscribe {
        room: core.name.to_string(),
        node: ctx.cluster.me().to_string(),
        since: Some(SinceWire {
            epoch: epoch.clone(),
            offset: last,
        }),
    };
    core.mode = Mode::Syncing {
        home: home.clone(),
        epoch,
        last,
        asked: held.len(),
        held,
    };
    let (cluster, myself) = (ctx.cluster.clone(), myself.clone());
    tokio::spawn(async move {
        let answer = cluster
            .call(&home, req.encode())
            .await
            .and_then(|a| RoomWire::decode(&a).ok());
        let _ = myself.cast(RoomMsg::Resynced { home, answer });
    });
}

/// How long a relay waits before asking a home that did not answer again.
const RESYNC_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

fn resynced(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    home: Arc<str>,
    answer: Option<RoomWire>,
) {
    let mut core = state.core.lock();
    let (epoch, last) = match &core.mode {
        Mode::Syncing {
            home: h,
            epoch,
            last,
            ..
        } if *h == home => (epoch.clone(), *last),
        // Overtaken by a join's own subscription or another move.
        _ => return,
    };
    let Some(RoomWire::Subscribed {
        epoch: now_epoch,
        offset,
        recovered,
        replay,
    }) = answer
    else {
        tracing::debug!(room = %core.name, home = %home, "re-subscription not answered; retrying");
        myself.send_after(RESYNC_RETRY, || RoomMsg::Resync);
        return;
    };
    let Mode::Syncing { held, asked, .. } = std::mem::replace(&mut core.mode, Mode::Idle) else {
        return;
    };
    let continued = recovered == Some(true) && now_epoch == epoch;
    core.mode = Mode::Relay {
        home: home.clone(),
        epoch: now_epoch.clone(),
        last: if continued { last } else { offset },
    };
    if continued {
        for (i, ev) in replay.into_iter().enumerate() {
            let at = last + 1 + i as u64;
            relay(&mut core, now_epoch.clone(), at, Bytes::from(ev.into_vec()));
        }
    } else {
        core.reset_members(&now_epoch, offset, "home_changed");
        core.superseded(&state.ctx, &now_epoch);
    }
    let mut again = None;
    for (i, (e, o, ev)) in held.into_iter().enumerate() {
        // An epoch the home had left when it answered: never again (else
        // such a delivery would send the relay back to the home forever).
        if i < asked && e != now_epoch {
            tracing::debug!(room = %core.name, epoch = e, offset = o, "delivery of an epoch the home left");
            continue;
        }
        if let Some(h) = relay(&mut core, e, o, ev) {
            again = Some(h);
        }
    }
    if let Some(home) = again {
        start_sync(myself, &state.ctx, &mut core, home);
    }
}

fn resync_again(myself: &ActorRef<RoomMsg>, state: &mut RoomState) {
    let mut core = state.core.lock();
    let Mode::Syncing { home, .. } = &core.mode else {
        return;
    };
    let home = home.clone();
    match state.ctx.cluster.home(&core.name) {
        Home::Remote(now) if now == home => start_sync(myself, &state.ctx, &mut core, home),
        // The view moved on; its ViewChanged re-routes the room.
        _ => {}
    }
}

fn view_changed(myself: &ActorRef<RoomMsg>, state: &mut RoomState) {
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
            let Mode::Acquiring { queue, epoch } = std::mem::replace(&mut core.mode, Mode::Idle)
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
        (Mode::Relay { .. } | Mode::Syncing { .. }, Home::Local) => {
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
        && core.history.is_empty()
        && core.pending.is_empty()
        && core.waiting.is_empty()
        && core.copies.is_empty()
        && match &core.mode {
            Mode::Home { subscribers } => subscribers.is_empty(),
            Mode::Relay { .. } | Mode::Syncing { .. } | Mode::Acquiring { .. } => false,
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
