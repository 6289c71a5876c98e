//! A relay's side of a room: joins that wait for the home's answer without
//! stopping the room, deliveries applied in order (never past a gap or
//! across epochs), and re-subscribing when the home changed or a delivery
//! was missed.

use std::sync::Arc;
use std::time::Instant;

use ractor::ActorRef;
use switchboard_protocol::{event, Bytes};

use switchboard_cluster::Home;
use switchboard_telemetry::names;

use crate::room::{
    add_member, gate, leave, push_joined, refuse_join, view_changed, JoinRequest, Joining,
    LeaveAck, Mode, RoomCore, RoomMsg, RoomState,
};
use crate::rooms::RoomContext;
use crate::wire::{RoomWire, SinceWire};

/// A join on a node that is not the room's home. A relay already
/// following the home answers a plain join itself; otherwise the join waits
/// for the home's answer (`joined`) while the room goes on serving.
pub(crate) fn join(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    req: JoinRequest,
    home: Arc<str>,
) {
    let name = state.core.lock().name.clone();
    let stale = match &state.core.lock().mode {
        Mode::Home { .. } => true,
        Mode::Relay { home: h, .. }
        | Mode::Syncing { home: h, .. }
        | Mode::Subscribing { home: h, .. } => *h != home,
        Mode::Idle | Mode::Acquiring { .. } => false,
    };
    if stale {
        // The view moved before this room heard of it: hand over
        // and follow the new home first, so that the members here
        // continue (or get a `reset`) before this join is answered.
        view_changed(myself, state);
    }
    let mut core = state.core.lock();
    // A relay that is subscribed answers a plain join itself.
    let known = match &core.mode {
        Mode::Relay {
            home: h,
            epoch,
            last,
        } if *h == home && req.since.is_none() => Some((epoch.clone(), *last)),
        _ => None,
    };
    if let Some((epoch, last)) = known {
        if req.id != 0 {
            req.member
                .sink
                .push(event::ok_join(req.id, &name, &epoch, last, None));
        }
        let member = req.member;
        add_member(&mut core, member.clone(), last);
        drop(core);
        state.ctx.observer.joined(&name, &member);
        return;
    }
    // The room's first subscription is on its way: a plain join needs
    // nothing else from the home, and is answered from it.
    if req.since.is_none() && matches!(&core.mode, Mode::Subscribing { home: h, .. } if *h == home)
    {
        core.joining.push(Joining {
            ticket: None,
            req,
            leave: None,
        });
        return;
    }
    // Ask the home without waiting for it: the answer comes back as
    // `Joined`, and the room serves its members meanwhile.
    match &core.mode {
        Mode::Relay { .. } | Mode::Syncing { .. } => {}
        Mode::Subscribing { home: h, .. } if *h == home => {}
        _ => {
            core.mode = Mode::Subscribing {
                home: home.clone(),
                held: Vec::new(),
            }
        }
    }
    let since = req.since.as_ref().map(|s| SinceWire {
        epoch: s.epoch.clone(),
        offset: s.offset,
    });
    let ticket = core.next_ticket;
    core.next_ticket += 1;
    core.joining.push(Joining {
        ticket: Some(ticket),
        req,
        leave: None,
    });
    drop(core);
    subscribe_at(
        myself,
        &state.ctx,
        &name,
        home,
        since,
        false,
        move |home, answer| RoomMsg::Joined {
            ticket,
            home,
            answer,
        },
    );
}

/// Asks `home` to subscribe this node to the room from `since`, now, and
/// without waiting: its answer (`None` if there is none) comes back to the
/// room as the message `reply` makes of it.
fn subscribe_at(
    myself: &ActorRef<RoomMsg>,
    ctx: &RoomContext,
    room: &str,
    home: Arc<str>,
    since: Option<SinceWire>,
    relayed: bool,
    reply: impl FnOnce(Arc<str>, Option<RoomWire>) -> RoomMsg + Send + 'static,
) {
    let wire = RoomWire::Subscribe {
        room: room.to_owned(),
        node: ctx.cluster.me().to_string(),
        since,
        relayed,
    };
    let answer = ctx.cluster.request(&home, wire.encode());
    let myself = myself.clone();
    tokio::spawn(async move {
        let answer = match answer {
            Some(waiting) => waiting.await.and_then(|a| RoomWire::decode(&a).ok()),
            None => None,
        };
        let _ = myself.cast(reply(home, answer));
    });
}

/// The home answered a waiting join's subscription: the member gets its
/// `ok` and replay, then what the members here were delivered since the
/// home answered, and is a member from there on.
pub(crate) fn joined(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    ticket: u64,
    home: Arc<str>,
    answer: Option<RoomWire>,
) {
    let mut core = state.core.lock();
    let Some(at) = core.joining.iter().position(|j| j.ticket == Some(ticket)) else {
        return;
    };
    let Joining {
        req,
        leave: then_leave,
        ..
    } = core.joining.swap_remove(at);
    // The plain joins that waited for this answer are answered after it,
    // from where it leaves the room (or, if it failed, try on their own).
    let (riders, asked): (Vec<_>, Vec<_>) =
        core.joining.drain(..).partition(|j| j.ticket.is_none());
    core.joining = asked;
    let name = core.name.clone();
    let conn = req.member.conn;
    let still_home = state.ctx.cluster.home(&name) == Home::Remote(home.clone());
    let answered = match answer {
        Some(RoomWire::Subscribed {
            epoch,
            offset,
            recovered,
            replay,
        }) if still_home => Some((epoch, offset, recovered, replay)),
        _ => None,
    };
    let Some((epoch, offset, recovered, replay)) = answered else {
        forget_meanwhile(&mut core);
        if let Mode::Subscribing { .. } = core.mode {
            if core.joining.is_empty() {
                core.mode = Mode::Idle;
            }
        }
        drop(core);
        if still_home {
            tracing::warn!(room = %name, home = %home, "subscribe failed");
            refuse_join(req.member, req.id, req.refused);
            if let Some(ack) = then_leave {
                leave(state, conn, ack);
            }
        } else {
            // The home moved while the join waited: it goes the new way.
            rejoin(myself, state, req, then_leave);
        }
        rejoin_all(myself, state, riders);
        return;
    };
    let held = match &mut core.mode {
        Mode::Subscribing { home: h, held } if *h == home => {
            let held = std::mem::take(held);
            core.mode = Mode::Relay {
                home: home.clone(),
                epoch: epoch.clone(),
                last: offset,
            };
            Some(held)
        }
        _ => None,
    };
    let following = match &core.mode {
        Mode::Relay {
            home: h,
            epoch: e,
            last,
        } if *h == home && *e == epoch => Some(*last),
        _ => None,
    };
    let Some(last) = following else {
        // Re-subscribing, or following another epoch: the join starts over
        // against where the room is now.
        forget_meanwhile(&mut core);
        drop(core);
        rejoin(myself, state, req, then_leave);
        rejoin_all(myself, state, riders);
        return;
    };
    let JoinRequest { member, id, .. } = req;
    let ok = (id != 0).then(|| event::ok_join(id, &name, &epoch, offset, recovered));
    let mut events: Vec<&[u8]> = replay.iter().map(|ev| &ev[..]).collect();
    // Delivered here after the home answered (the answer took longer than
    // they did to arrive).
    events.extend(
        core.delivered_meanwhile
            .iter()
            .filter(|(e, o, _)| *e == epoch && *o > offset && *o <= last)
            .map(|(_, _, ev)| &ev[..]),
    );
    push_joined(&*member.sink, ok, events.into_iter());
    add_member(&mut core, member.clone(), last.max(offset));
    forget_meanwhile(&mut core);
    let mut again = None;
    for (e, o, ev) in held.into_iter().flatten() {
        if let Some(h) = relay(&mut core, e, o, ev) {
            again = Some(h);
        }
    }
    if let Some(h) = again {
        start_sync(myself, &state.ctx, &mut core, h);
    }
    drop(core);
    state.ctx.observer.joined(&name, &member);
    if let Some(ack) = then_leave {
        leave(state, conn, ack);
    }
    rejoin_all(myself, state, riders);
}

fn rejoin_all(myself: &ActorRef<RoomMsg>, state: &mut RoomState, waiting: Vec<Joining>) {
    for j in waiting {
        rejoin(myself, state, j.req, j.leave);
    }
}

/// What was delivered while joins waited is kept only while one does.
fn forget_meanwhile(core: &mut RoomCore) {
    if core.joining.is_empty() {
        core.delivered_meanwhile.clear();
    }
}

/// Handles a waiting join (and the leave that followed it) again, now: a
/// message queued meanwhile must not overtake it.
pub(crate) fn rejoin(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    req: JoinRequest,
    then_leave: Option<LeaveAck>,
) {
    let conn = req.member.conn;
    if let Some(RoomMsg::Join(req)) = gate(myself, state, RoomMsg::Join(Box::new(req))) {
        crate::room::join(myself, state, *req);
    }
    if let Some(ack) = then_leave {
        if let Some(RoomMsg::Leave { conn, ack }) =
            gate(myself, state, RoomMsg::Leave { conn, ack })
        {
            leave(state, conn, ack);
        }
    }
}

pub(crate) fn deliver(
    myself: &ActorRef<RoomMsg>,
    state: &mut RoomState,
    from: &str,
    epoch: String,
    offset: u64,
    ev: Bytes,
) {
    let mut core = state.core.lock();
    if let Mode::Relay { home, .. } | Mode::Syncing { home, .. } | Mode::Subscribing { home, .. } =
        &core.mode
    {
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
pub(crate) fn relay(
    core: &mut RoomCore,
    epoch: String,
    offset: u64,
    ev: Bytes,
) -> Option<Arc<str>> {
    let (home, e, last) = match &mut core.mode {
        Mode::Relay { home, epoch, last } => (home.clone(), epoch, last),
        Mode::Syncing { held, .. } | Mode::Subscribing { held, .. } => {
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
    if !core.joining.is_empty() {
        core.delivered_meanwhile.push((epoch, offset, ev.clone()));
    }
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
        Mode::Home { .. } | Mode::Idle | Mode::Acquiring { .. } | Mode::Subscribing { .. } => (
            core.history.epoch.clone(),
            core.history.released(),
            Vec::new(),
        ),
    };
    let since = Some(SinceWire {
        epoch: epoch.clone(),
        offset: last,
    });
    core.mode = Mode::Syncing {
        home: home.clone(),
        epoch,
        last,
        asked: held.len(),
        held,
    };
    subscribe_at(
        myself,
        ctx,
        &core.name,
        home,
        since,
        true,
        |home, answer| RoomMsg::Resynced { home, answer },
    );
}

pub(crate) fn resynced(
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
        tracing::info!(room = %core.name, home = %home, epoch, last, now_epoch, offset, ?recovered, "the home does not continue this node's sequence");
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

pub(crate) fn resync_again(myself: &ActorRef<RoomMsg>, state: &mut RoomState) {
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

/// How long a relay waits before asking a home that did not answer again.
const RESYNC_RETRY: std::time::Duration = std::time::Duration::from_millis(500);
