//! The home's side of a room: sequencing publications (or forwarding them
//! to the home), releasing them to members and subscribed nodes, and
//! answering subscriptions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use ractor::ActorRef;
use serde_bytes::ByteBuf;
use switchboard_protocol::{event, Bytes};

use switchboard_cluster::Home;
use switchboard_telemetry::names;

use crate::history::Recovery;
use crate::room::{
    add_member, is_home, push_joined, refuse_join, JoinRequest, Mode, PublishReply, PublishRequest,
    RoomCore, RoomMsg, RoomState,
};
use crate::rooms::RoomContext;
use crate::wire::{RoomWire, SinceWire};

/// A join here, at the home: the `ok` (with the replay after `since`, in
/// one queued event) and membership from the newest released offset.
pub(crate) fn join(state: &mut RoomState, req: JoinRequest) {
    let name = state.core.lock().name.clone();
    let JoinRequest {
        member,
        id,
        since,
        refused,
    } = req;
    let mut core = state.core.lock();
    if !is_home(&core) || ahead(&core, since.as_ref().map(|s| (&*s.epoch, s.offset))) {
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
    drop(core);
    state.ctx.observer.joined(&name, &member);
}

pub(crate) fn publish(state: &mut RoomState, req: PublishRequest) {
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

pub(crate) fn sequence(state: &mut RoomState, req: PublishRequest) {
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
                term: core.history.term,
            };
            state.ctx.cluster.send(&f.node, append.encode());
        }
        None if core.solo => release(&mut core, &state.ctx, offset),
        // Released once a follower has it (see `pick_follower`).
        None => {}
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
            send_to_subscribers(subscribers, ctx, name, &history.epoch, offset, &ev);
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

/// Sends a released message to the subscribed nodes: encoded once, sent
/// once per node with members. Nodes that are gone are forgotten.
pub(crate) fn send_to_subscribers(
    subscribers: &mut BTreeSet<Arc<str>>,
    ctx: &RoomContext,
    room: &str,
    epoch: &str,
    offset: u64,
    ev: &Bytes,
) {
    if subscribers.is_empty() {
        return;
    }
    let bytes = RoomWire::Deliver {
        room: room.to_owned(),
        epoch: epoch.to_owned(),
        offset,
        event: ByteBuf::from(ev.to_vec()),
        home: ctx.cluster.me().to_string(),
    }
    .encode();
    subscribers.retain(|node| ctx.cluster.send(node, bytes.clone()));
}

/// (home) A node with members wants this room's messages, from `since`.
pub(crate) fn subscribe(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    node: Arc<str>,
    since: Option<SinceWire>,
    relayed: bool,
    reply: tokio::sync::oneshot::Sender<RoomWire>,
) {
    let name = state.core.lock().name.clone();
    if !matches!(state.ctx.cluster.home(&name), Home::Local) {
        let _ = reply.send(RoomWire::Error {
            reason: format!("{} is not the home of {name}", state.ctx.cluster.me()),
        });
        return;
    }
    let mut core = state.core.lock();
    if !is_home(&core) {
        let _ = reply.send(RoomWire::Error {
            reason: format!("{} does not hold {name} yet", state.ctx.cluster.me()),
        });
        return;
    }
    if let Some(s) = since
        .as_ref()
        .filter(|s| relayed && s.epoch == core.history.epoch && s.offset > core.history.released())
    {
        // That node received an offset of this epoch that this one never
        // released: another node went on with the epoch (it took the room
        // over while this one was frozen or cut off), most likely the
        // node that homes the room without this one, where the fetch
        // goes once the membership has settled. A subscription is a peer's word,
        // never a client's: a client's `since` cannot make a home step
        // down.
        tracing::warn!(room = %name, node = %node, epoch = s.epoch, offset = s.offset, released = core.history.released(), "a peer saw more of this epoch than this node released; fetching the room");
        crate::home::unhold(&mut core, &state.ctx);
        core.holder_hint = None;
        drop(core);
        let msg = RoomMsg::Subscribe {
            node,
            since,
            relayed,
            reply,
        };
        crate::home::acquire(myself, state, Some(msg));
        return;
    }
    if ahead(&core, since.as_ref().map(|s| (&*s.epoch, s.offset))) {
        let _ = reply.send(RoomWire::Error {
            reason: format!("{} is catching up on {name}", state.ctx.cluster.me()),
        });
        return;
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
    let _ = reply.send(RoomWire::Subscribed {
        epoch: history.epoch.clone(),
        offset: history.released(),
        recovered,
        replay,
    });
}

/// Whether a client's `since` names an offset of this home's epoch that it
/// has not released. With a follower, only a stale home (the epoch went on
/// elsewhere, and a relay's subscription is about to tell it) or a client's
/// bug sees that: the join is refused for now (503), and its retry finds the
/// room fetched. Alone, no other node can have gone further: it is answered
/// `recovered: false`, as ever.
fn ahead(core: &RoomCore, since: Option<(&str, u64)>) -> bool {
    since.is_some_and(|(epoch, offset)| {
        !core.solo && epoch == core.history.epoch && offset > core.history.released()
    })
}

/// Forwarding more often than this means the nodes' views disagree; the
/// publication is refused (503) rather than bounced forever.
const MAX_HOPS: u8 = 2;
