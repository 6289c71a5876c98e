//! The Room actor: one per active room, the room's sequencer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use switchboard_protocol::{event, Bytes, EventSink, Since};

use crate::history::{History, Recovery};
use crate::member::Member;
use crate::rooms::RoomContext;
use switchboard_protocol::ConnId;

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
    /// Expire history; retire the room when it has no members and no history.
    Tick,
    /// Fault injection (`debug.faults`): the room panics.
    Crash,
}

impl ractor::Message for RoomMsg {}

pub struct JoinRequest {
    pub member: Member,
    /// The command id to answer; 0 for no `ok`.
    pub id: u64,
    pub since: Option<Since>,
}

pub struct PublishRequest {
    pub from: Arc<str>,
    /// The publisher's `data`, as MessagePack bytes.
    pub data: Bytes,
    pub msg_id: Option<String>,
    pub reply: PublishReply,
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
}

impl PublishReply {
    fn send(self, offset: u64) {
        match self {
            PublishReply::None => {}
            PublishReply::Ok { id, sink } => {
                sink.push(event::ok_pub(id, offset));
            }
            PublishReply::Offset(tx) => {
                let _ = tx.send(offset);
            }
        }
    }
}

struct Slot {
    member: Member,
    /// Newest offset queued to this member: what a restart replays after.
    delivered: u64,
}

/// A room's state that outlives a crash of its actor: the sequencer's log
/// and the members. Its supervisor keeps it and hands it to the restarted
/// Room.
pub struct RoomCore {
    pub(crate) name: Arc<str>,
    history: History,
    members: HashMap<ConnId, Slot>,
}

impl RoomCore {
    pub(crate) fn new(name: Arc<str>, size: usize, ttl: std::time::Duration) -> Self {
        Self {
            name,
            history: History::new(size, ttl),
            members: HashMap::new(),
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
    core: Arc<Mutex<RoomCore>>,
    ctx: Arc<RoomContext>,
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
            let last = history.last_offset();
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
        match msg {
            RoomMsg::Join(req) => join(state, *req),
            RoomMsg::Leave { conn, ack } => leave(state, conn, ack),
            RoomMsg::Publish(req) => publish(state, *req),
            RoomMsg::Tick => tick(&myself, state),
            RoomMsg::Crash => panic!("room crash injected (debug.faults)"),
        }
        Ok(())
    }
}

fn join(state: &mut RoomState, req: JoinRequest) {
    let JoinRequest { member, id, since } = req;
    let mut core = state.core.lock();
    let RoomCore {
        name,
        history,
        members,
    } = &mut *core;
    let last = history.last_offset();
    if members.contains_key(&member.conn) {
        // Already a member: messages have been flowing; nothing to replay.
        if id != 0 {
            let recovered = since.map(|s| s.epoch == history.epoch);
            member
                .sink
                .push(event::ok_join(id, name, &history.epoch, last, recovered));
        }
        return;
    }
    let (recovered, replay) = match &since {
        None => (None, Vec::new()),
        Some(s) => match history.since(&s.epoch, s.offset) {
            Recovery::Replay(events) => (Some(true), events),
            Recovery::Lost => (Some(false), Vec::new()),
        },
    };
    if id != 0 {
        member
            .sink
            .push(event::ok_join(id, name, &history.epoch, last, recovered));
    }
    for ev in replay {
        member.sink.push(ev.clone());
    }
    if members.is_empty() {
        metrics::gauge!("switchboard_rooms").increment(1.0);
    }
    let name = name.clone();
    members.insert(
        member.conn,
        Slot {
            member: member.clone(),
            delivered: last,
        },
    );
    drop(core);
    state.ctx.observer.joined(&name, &member);
}

fn leave(state: &mut RoomState, conn: ConnId, ack: Option<(u64, Arc<dyn EventSink>)>) {
    if let Some((id, sink)) = ack.filter(|(id, _)| *id != 0) {
        sink.push(event::ok(id));
    }
    let mut core = state.core.lock();
    if core.members.remove(&conn).is_none() {
        return;
    }
    if core.members.is_empty() {
        metrics::gauge!("switchboard_rooms").decrement(1.0);
    }
    let name = core.name.clone();
    drop(core);
    state.ctx.observer.left(&name, conn);
}

fn publish(state: &mut RoomState, req: PublishRequest) {
    let now = Instant::now();
    let mut core = state.core.lock();
    let RoomCore {
        name,
        history,
        members,
    } = &mut *core;
    let msg_id = req.msg_id.as_deref();
    if let Some(offset) = msg_id.and_then(|m| history.offset_of(m)) {
        drop(core);
        req.reply.send(offset);
        return;
    }
    let (offset, ev) = history.append(now, msg_id, |offset| {
        event::msg(name, offset, &req.from, &req.data)
    });
    let mut delivered = 0u64;
    for slot in members.values_mut() {
        if slot.member.sink.deliver(ev.clone(), now) {
            delivered += 1;
        }
        slot.delivered = offset;
    }
    drop(core);
    metrics::counter!("switchboard_messages_published_total").increment(1);
    metrics::counter!("switchboard_messages_delivered_total").increment(delivered);
    req.reply.send(offset);
}

fn tick(myself: &ActorRef<RoomMsg>, state: &mut RoomState) {
    let mut core = state.core.lock();
    core.history.expire(Instant::now());
    if !core.members.is_empty() || !core.history.is_empty() {
        return;
    }
    let name = core.name.clone();
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

async fn forward(state: &RoomState, msg: RoomMsg) -> Result<(), ActorProcessingErr> {
    if matches!(msg, RoomMsg::Join(_) | RoomMsg::Publish(_)) {
        let name = state.core.lock().name.clone();
        state.ctx.rooms().cast(&name, msg).await?;
    }
    Ok(())
}
