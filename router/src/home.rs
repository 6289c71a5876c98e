//! How a node comes to hold a room, hands it over, and keeps a follower.
//!
//! An epoch has one holder at a time: the node that sequences it. A node
//! that becomes a room's home (by the view) acquires the room first, in
//! the background, while what needs the home waits:
//!
//! - it still holds it (it was the home and nobody took it): go on;
//! - the node whose copy it keeps (its follower copy) is still reachable,
//!   or, without a copy, the node that would be home without this one is:
//!   fetch the room from it (a planned move: a node joined, or the holder
//!   is draining). The holder answers with everything it sequenced and
//!   stops holding;
//! - the copy's home is gone: take the copy over, but only if another node
//!   (a witness) can be asked and none still sees that home. A home that
//!   is only cut off from this node is still seen by someone, and it goes
//!   on with its epoch; this node then starts a new one;
//! - otherwise: a new epoch.
//!
//! While it holds the room, the home sends each message to its follower
//! (the next node in rendezvous order, the one that takes over if the home
//! is lost) and releases it (to members, subscribers and the publisher's
//! `ok`) once the follower has confirmed it. A home that loses its follower
//! goes on with a new follower while it still sees another node. One that
//! lost every peer releases nothing until the membership has settled
//! again: peers back, it goes on with a new follower (which refuses it if
//! it took the room over meanwhile); still alone, it starts a new epoch,
//! since it cannot tell whether the follower took the room over.
//!
//! A holder also learns that it is stale when a node subscribes with an
//! offset of its epoch that it never released: another node went on with
//! the epoch (it took the room over while this one was frozen). It stops
//! holding and fetches the room, like any new home.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::ActorRef;
use switchboard_cluster::{Cluster, Home};
use switchboard_telemetry::names;

use crate::history::History;
use crate::room::{dispatch, release, start_sync, Mode, RoomCore, RoomMsg, RoomState};
use crate::rooms::RoomContext;
use crate::sequencer::send_to_subscribers;
use crate::wire::{Logged, RoomWire};

/// The node that keeps a copy of the home's sequence.
#[derive(Debug)]
pub(crate) struct Follower {
    pub(crate) node: Arc<str>,
    /// The newest offset it confirmed.
    pub(crate) acked: u64,
}

/// How an acquisition ended.
#[derive(Debug)]
pub enum Acquired {
    /// This node still held the room.
    Kept,
    /// The holder handed the room over.
    Fetched {
        epoch: String,
        last: u64,
        entries: Vec<Logged>,
        term: u64,
    },
    /// The copy kept for `origin`, whose home is gone.
    TakeOver { origin: Arc<str> },
    /// Nothing to continue: a new epoch.
    Fresh { why: &'static str },
}

/// How long a home that lost every peer waits for them to come back before
/// it starts a new epoch alone.
const ALONE_GRACE: Duration = Duration::from_secs(1);

/// How long a node that lost sight of a home waits for the witnesses to
/// lose it too (they notice a crash as fast, a silent one within the
/// watchdog's 3 s) before it concludes the home is only cut off from it.
const WITNESS_WAIT: Duration = Duration::from_secs(4);

enum Source {
    Fetch(Arc<str>),
    TakeOver(Arc<str>),
    Fresh,
}

/// Starts acquiring the room (this node is its home by the view); `first`
/// waits with what else needs the home.
pub(crate) fn acquire(myself: &ActorRef<RoomMsg>, state: &mut RoomState, first: Option<RoomMsg>) {
    let mut core = state.core.lock();
    if let Mode::Acquiring { queue, .. } = &mut core.mode {
        queue.extend(first);
        return;
    }
    let members = match &core.mode {
        Mode::Relay { epoch, last, .. } | Mode::Syncing { epoch, last, .. } => {
            Some((epoch.clone(), *last))
        }
        Mode::Home { .. } => Some((core.history.epoch.clone(), core.history.released())),
        _ => None,
    };
    let subscribers = match &mut core.mode {
        Mode::Home { subscribers } => std::mem::take(subscribers),
        _ => Default::default(),
    };
    core.fail_pending(&state.ctx);
    core.mode = Mode::Acquiring {
        queue: first.into_iter().collect(),
        epoch: members,
        subscribers,
    };
    if core.holds {
        drop(core);
        let _ = myself.cast(RoomMsg::Acquired(Box::new(Acquired::Kept)));
        return;
    }
    drop(core);
    find_holder(myself, state);
}

/// Finds out, in the background, who holds the room and how this node
/// takes it; the answer comes back as `Acquired`.
fn find_holder(myself: &ActorRef<RoomMsg>, state: &RoomState) {
    let room = state.core.lock().name.clone();
    let (cluster, core, myself) = (
        state.ctx.cluster.clone(),
        state.core.clone(),
        myself.clone(),
    );
    tokio::spawn(async move {
        // A node that just started, or lost every peer, may not have met
        // the holder (again) yet; once it has, the room may be homed
        // elsewhere, and its view change has routed the room there.
        cluster.settled().await;
        if cluster.home(&room) != Home::Local {
            return;
        }
        let source = {
            let core = core.lock();
            let view = cluster.view();
            let reachable = core.copies.keys().find(|o| view.has(o)).cloned();
            // The node last known to hold the room (this one handed it
            // over, or was overtaken by it): asked even if it is not in
            // view yet (just back from a freeze, this node may not have
            // met it again); a node that stays away is taken over from,
            // or given up on, after the witnesses are heard.
            let handed = core.holder_hint.clone();
            match (handed.or(reachable), core.copies.keys().next().cloned()) {
                (Some(origin), _) => Source::Fetch(origin),
                (None, Some(origin)) => Source::TakeOver(origin),
                (None, None) => view.previous(&room).map_or(Source::Fresh, Source::Fetch),
            }
        };
        if let Some(how) = resolve(&cluster, &room, source).await {
            let _ = myself.cast(RoomMsg::Acquired(Box::new(how)));
        }
    });
}

/// How the room is to be acquired; `None`: it is not (the room is homed
/// elsewhere now, and its view change routed it there).
async fn resolve(cluster: &Cluster, room: &str, mut source: Source) -> Option<Acquired> {
    // A holder that stops answering and comes back (its links were
    // renewed: it was frozen, or its sessions dropped) is asked again, not
    // given up on, until this deadline.
    let deadline = tokio::time::Instant::now() + 2 * WITNESS_WAIT;
    loop {
        source = match source {
            Source::Fresh => {
                return Some(Acquired::Fresh {
                    why: "no node held it",
                })
            }
            Source::Fetch(node) => match fetch(cluster, room, &node).await {
                Fetch::Got(how) => return Some(how),
                Fetch::NotHeld => return Some(ask_others(cluster, room, &node).await),
                // Gone: the copy (if any) is the room.
                Fetch::Gone => Source::TakeOver(node),
            },
            Source::TakeOver(origin) => match take_over(cluster, room, &origin).await? {
                Ok(how) => return Some(how),
                Err(()) if tokio::time::Instant::now() < deadline => Source::Fetch(origin),
                Err(()) => {
                    return Some(Acquired::Fresh {
                        why: "the old home is back, and did not hand the room over",
                    })
                }
            },
        };
    }
}

enum Fetch {
    Got(Acquired),
    /// It answered that it does not hold the room.
    NotHeld,
    /// It left the view before it answered.
    Gone,
}

/// Asks `node` for the room.
async fn fetch(cluster: &Cluster, room: &str, node: &Arc<str>) -> Fetch {
    let ask = RoomWire::Fetch {
        room: room.to_owned(),
        node: cluster.me().to_string(),
    }
    .encode();
    let deadline = tokio::time::Instant::now() + WITNESS_WAIT;
    loop {
        match cluster
            .call(node, ask.clone())
            .await
            .and_then(|a| RoomWire::decode(&a).ok())
        {
            Some(RoomWire::Snapshot {
                epoch,
                last,
                entries,
                term,
                ..
            }) => {
                return Fetch::Got(Acquired::Fetched {
                    epoch,
                    last,
                    entries,
                    term,
                })
            }
            Some(_) => return Fetch::NotHeld,
            // Not answered but still there (a slow link, a busy node): ask
            // again rather than start over.
            None if cluster.view().has(node) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None => return Fetch::Gone,
        }
    }
}

/// The node asked first did not hold the room (it refused a copy because
/// it keeps a longer one, or was only the last hint): the holder, if any,
/// is one of the next nodes in the room's rendezvous order, where a home
/// that was lost is taken over. Asks the next two before a new epoch.
async fn ask_others(cluster: &Cluster, room: &str, asked: &Arc<str>) -> Acquired {
    let others: Vec<Arc<str>> = cluster
        .view()
        .ranked(room)
        .into_iter()
        .filter(|n| n != cluster.me() && n != asked)
        .take(2)
        .collect();
    for node in &others {
        if let Fetch::Got(how) = fetch(cluster, room, node).await {
            return how;
        }
    }
    Acquired::Fresh {
        why: "the previous node held nothing",
    }
}

/// Takes over the copy kept for `origin` once the witnesses agree that it
/// is gone. `None`: the room is homed elsewhere now; `Err`: `origin` is
/// back in the view (ask it for the room).
async fn take_over(
    cluster: &Cluster,
    room: &str,
    origin: &Arc<str>,
) -> Option<Result<Acquired, ()>> {
    let deadline = tokio::time::Instant::now() + WITNESS_WAIT;
    loop {
        if cluster.home(room) != Home::Local {
            return None;
        }
        if cluster.view().has(origin) {
            return Some(Err(()));
        }
        match cluster.witnessed(origin).await {
            Some(false) => {
                return Some(Ok(Acquired::TakeOver {
                    origin: origin.clone(),
                }))
            }
            // Every witness was lost while it was asked: ask again once
            // the membership has settled (see `settled`).
            None if !cluster.is_ready() => cluster.settled().await,
            // A witness's link can fail a moment before the view drops it
            // (a node waking from a freeze finds every link dead, one after
            // the other): only a silence that lasts means no one can tell.
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            None => {
                return Some(Ok(Acquired::Fresh {
                    why: "no witness: the old home may only be cut off",
                }))
            }
            Some(true) if tokio::time::Instant::now() >= deadline => {
                return Some(Ok(Acquired::Fresh {
                    why: "the old home is still seen: a partition",
                }))
            }
            Some(true) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Installs what the acquisition found, becomes the home, and handles what
/// waited.
pub(crate) fn acquired(myself: &ActorRef<RoomMsg>, state: &mut RoomState, how: Acquired) {
    let queue = {
        let mut core = state.core.lock();
        if !matches!(core.mode, Mode::Acquiring { .. }) {
            return;
        }
        let s = &state.ctx.settings;
        let fresh = || History::new(s.history_size, s.history_ttl);
        let outcome = match how {
            Acquired::Kept if core.holds => "kept",
            // Handed over (the views disagreed for a moment) while this
            // was on its way: fetch it back.
            Acquired::Kept => {
                drop(core);
                find_holder(myself, state);
                return;
            }
            Acquired::Fetched {
                epoch,
                last,
                entries,
                term,
            } => match History::from_wire(
                s.history_size,
                s.history_ttl,
                epoch,
                last,
                entries,
                Instant::now(),
            ) {
                Ok(mut h) => {
                    h.term = term + 1;
                    core.history = h;
                    "fetched"
                }
                Err(reason) => {
                    tracing::warn!(room = %core.name, reason, "refused a hand-over");
                    core.history = fresh();
                    "refused"
                }
            },
            Acquired::TakeOver { origin } => match core.copies.remove(&origin) {
                Some(mut copy) => {
                    copy.term += 1;
                    core.history = copy;
                    "taken_over"
                }
                None => {
                    core.history = fresh();
                    "fresh"
                }
            },
            Acquired::Fresh { why } => {
                tracing::info!(room = %core.name, why, "new epoch");
                core.history = fresh();
                "fresh"
            }
        };
        match outcome {
            "fetched" | "taken_over" => core.replicated = true,
            "kept" => {}
            _ => core.replicated = false,
        }
        metrics::counter!(names::ROOM_HANDOVERS_TOTAL, "outcome" => outcome).increment(1);
        tracing::info!(room = %core.name, epoch = %core.history.epoch, offset = core.history.last_offset(), outcome, "room acquired");
        core.copies.clear();
        hold(&state.ctx, &state.core, &mut core);
        let previous = std::mem::replace(&mut core.mode, Mode::Idle);
        let Mode::Acquiring {
            queue,
            epoch,
            subscribers,
        } = previous
        else {
            return;
        };
        core.mode = Mode::Home { subscribers };
        let members_continue = epoch
            .as_ref()
            .is_some_and(|(e, _)| *e == core.history.epoch);
        if !members_continue {
            let (e, at) = (core.history.epoch.clone(), core.history.released());
            core.reset_members(&e, at, "home_changed");
        }
        // What needs no follower goes out here; with one, on its
        // confirmation; while a peer's version is unknown, not yet.
        pick_follower(&mut core, &state.ctx);
        // Members that continue get what they missed of the epoch, and
        // so do the nodes that stayed subscribed.
        let RoomCore {
            name,
            history,
            members,
            mode,
            ..
        } = &mut *core;
        let now = Instant::now();
        for slot in members.values_mut() {
            for ev in history.after(slot.delivered) {
                slot.member.sink.deliver(ev.clone(), now);
            }
            slot.delivered = slot.delivered.max(history.released());
        }
        if let (Some((_, told)), Mode::Home { subscribers }) = (epoch, mode) {
            if members_continue {
                for (i, ev) in history.after(told).enumerate() {
                    let at = told + 1 + i as u64;
                    send_to_subscribers(subscribers, &state.ctx, name, &history.epoch, at, ev);
                }
            }
        }
        queue
    };
    for msg in queue {
        dispatch(myself, state, msg);
    }
}

/// What a node keeps of each room it holds, so that a new home's fetch is
/// answered without the room's actor: that actor may be waiting on a call
/// to the new home (a join's subscription), which waits on this hand-over.
#[derive(Clone)]
pub struct Holder {
    core: Arc<Mutex<RoomCore>>,
    ctx: Weak<RoomContext>,
}

/// (holder) Another node is the room's home now and asks for it: hand
/// over everything and stop holding. The members here follow the new home.
pub(crate) fn hand_over(holder: &Holder, node: Arc<str>) -> RoomWire {
    let Some(ctx) = holder.ctx.upgrade() else {
        return RoomWire::Error {
            reason: "this node is stopping".into(),
        };
    };
    let mut core = holder.core.lock();
    let me = ctx.cluster.me().clone();
    if !core.holds {
        return RoomWire::Error {
            reason: format!("{me} does not hold {}", core.name),
        };
    }
    unhold(&mut core, &ctx);
    core.holder_hint = Some(node.clone());
    let snapshot = snapshot(&ctx, &core);
    // Their publishers retry; the new home knows their msg_ids.
    core.fail_pending(&ctx);
    if let Some(f) = core.follower.take() {
        forget(&ctx, &core, &f.node);
    }
    metrics::counter!(names::ROOM_HANDOVERS_TOTAL, "outcome" => "handed_over").increment(1);
    tracing::info!(room = %core.name, to = %node, epoch = %core.history.epoch, offset = core.history.last_offset(), "room handed over");
    if matches!(core.mode, Mode::Home { .. }) {
        let actor = ctx.map.get(&core.name).map(|a| a.clone());
        if let Some(actor) = actor {
            start_sync(&actor, &ctx, &mut core, node);
        }
    }
    snapshot
}

/// This node holds the room's sequence from now on.
pub(crate) fn hold(ctx: &Arc<RoomContext>, shared: &Arc<Mutex<RoomCore>>, core: &mut RoomCore) {
    core.holds = true;
    core.solo = false;
    core.holder_hint = None;
    let holder = Holder {
        core: shared.clone(),
        ctx: Arc::downgrade(ctx),
    };
    ctx.held.insert(core.name.clone(), holder);
}

/// This node no longer holds the room's sequence.
pub(crate) fn unhold(core: &mut RoomCore, ctx: &RoomContext) {
    core.holds = false;
    core.lost_alone = None;
    ctx.held.remove(&core.name);
}

fn forget(ctx: &RoomContext, core: &RoomCore, node: &str) {
    let msg = RoomWire::Forget {
        room: core.name.to_string(),
        home: ctx.cluster.me().to_string(),
        epoch: core.history.epoch.clone(),
    };
    ctx.cluster.send(node, msg.encode());
}

/// Everything this node sequenced of the room: a follower's copy, or a
/// hand-over.
fn snapshot(ctx: &RoomContext, core: &RoomCore) -> RoomWire {
    RoomWire::Snapshot {
        room: core.name.to_string(),
        home: ctx.cluster.me().to_string(),
        epoch: core.history.epoch.clone(),
        last: core.history.last_offset(),
        entries: core.history.to_wire(Instant::now()),
        term: core.history.term,
    }
}

pub(crate) fn snapshot_to(ctx: &RoomContext, core: &RoomCore, node: &str) {
    ctx.cluster.send(node, snapshot(ctx, core).encode());
}

/// (home) Keeps the follower the next node in rendezvous order that can
/// follow (wire version 2 or later). Called when the room is acquired and
/// when the view changes (a peer's version, learned a moment after it
/// comes up, changes the view too).
pub(crate) fn pick_follower(core: &mut RoomCore, ctx: &RoomContext) {
    if !core.holds || !matches!(core.mode, Mode::Home { .. }) {
        return;
    }
    let cluster = &ctx.cluster;
    let view = cluster.view();
    if let Some(f) = core.follower.as_ref().filter(|f| !view.has(&f.node)) {
        // Crashed, or cut off and about to take the room over. Seeing
        // another node, this one goes on: the follower, if alive, sees
        // this node seen by it and does not take over (and if it did, it
        // refuses what this node sends; see `copy.rs`).
        tracing::warn!(room = %core.name, follower = %f.node, "follower lost");
        core.follower = None;
    }
    if view.peers.is_empty() && core.replicated && core.lost_alone.is_none() {
        // Every peer lost at once (with the follower, or while none was
        // chosen yet) is most often this node's own doing (it was
        // frozen): the membership dials them all again first (see
        // `Cluster::settled`), and this waits for that, and for the peers
        // that come back a moment later (a node without seeds settles at
        // once).
        let lost = Instant::now();
        core.lost_alone = Some(lost);
        let room = ctx.map.get(&core.name).map(|a| a.clone());
        let cluster = cluster.clone();
        tokio::spawn(async move {
            // Settling ends within seconds; a node stopping meanwhile
            // never settles, and this task ends with it.
            let _ = tokio::time::timeout(Duration::from_secs(10), cluster.settled()).await;
            tokio::time::sleep_until((lost + ALONE_GRACE).into()).await;
            if let Some(room) = room {
                let _ = room.cast(RoomMsg::ViewChanged);
            }
        });
    }
    if let Some(lost) = core.lost_alone {
        if !view.peers.is_empty() {
            // Peers are back: the follower picked below gets a snapshot,
            // and refuses it if it took the room over meanwhile (this
            // node then fetches the room from it: see `on_appended`).
            core.lost_alone = None;
        } else if cluster.is_ready() && lost.elapsed() >= ALONE_GRACE {
            // Settled, and still alone: the follower may be going on with
            // the epoch somewhere this node cannot see.
            core.lost_alone = None;
            new_epoch(core, ctx, "follower_lost_alone");
        } else {
            core.solo = false;
            return;
        }
    }
    let want = if ctx.settings.replicas < 2 {
        None
    } else {
        let ranked = view.ranked(&core.name);
        let others = ranked.iter().filter(|n| **n != *cluster.me());
        if others.clone().any(|n| cluster.peer_version(n).is_none()) {
            // A peer that has not said its version yet (it just came up, or
            // came back): it may be the follower, or hold this very epoch.
            // Nothing is released without a follower meanwhile; its version
            // changes the view, which calls this again.
            core.solo = false;
            return;
        }
        others
            .into_iter()
            .find(|n| cluster.peer_version(n).is_some_and(|v| v >= 2))
            .cloned()
    };
    if core.follower.as_ref().map(|f| &f.node) != want.as_ref() {
        if let Some(f) = core.follower.take() {
            forget(ctx, core, &f.node);
        }
        if let Some(node) = want {
            snapshot_to(ctx, core, &node);
            core.follower = Some(Follower { node, acked: 0 });
            core.replicated = true;
        }
    }
    core.solo = core.follower.is_none();
    if core.solo {
        // Nobody to wait for: one node, `replicas = 1`, or no peer that
        // can follow (the others are leaving: the follower was told to
        // forget its copy). (Not reached while a peer's version is
        // unknown.) From here on no other node holds this sequence.
        core.replicated = false;
        let last = core.history.last_offset();
        release(core, ctx, last);
    }
}

/// (home) The follower's confirmation. Returns true when the follower
/// refused: this node no longer holds the room, and must acquire it again
/// (see `copy.rs`).
#[must_use]
pub(crate) fn on_appended(
    core: &mut RoomCore,
    ctx: &RoomContext,
    node: &str,
    epoch: &str,
    upto: u64,
    refused: Option<String>,
    resend: bool,
) -> bool {
    if !core.holds || core.history.epoch != epoch {
        return false;
    }
    let Some(f) = core.follower.as_mut().filter(|f| *f.node == *node) else {
        return false;
    };
    if let Some(holder) = refused {
        // It holds this epoch too (it took the room over while this node
        // was frozen or cut off), or a copy of it that went further. This
        // node stops holding at once, so at most one node releases the
        // epoch, and asks the refuser for the room like any new home:
        // what it released, the refuser confirmed before, so its members
        // continue in the fetched sequence. What it sequenced and nobody
        // confirmed is dropped (its publishers got no `ok` and retry). The
        // refuser names the holder (itself, or the home of the longer
        // copy), which is asked even before it is back in this node's view.
        tracing::warn!(room = %core.name, follower = node, holder, "follower refused: the epoch went on elsewhere; fetching it");
        core.follower = None;
        unhold(core, ctx);
        core.holder_hint = Some(holder.into());
        return true;
    }
    if resend {
        snapshot_to(ctx, core, node);
        return false;
    }
    f.acked = f.acked.max(upto);
    let acked = f.acked;
    metrics::histogram!(names::REPLICATION_LAG_OFFSETS)
        .record(core.history.last_offset().saturating_sub(acked) as f64);
    release(core, ctx, acked);
    false
}

/// Starts a new epoch here: what was sequenced and not released is
/// refused to its publishers (they retry), members are reset.
fn new_epoch(core: &mut RoomCore, ctx: &RoomContext, reason: &'static str) {
    core.fail_pending(ctx);
    core.history = History::new(ctx.settings.history_size, ctx.settings.history_ttl);
    core.replicated = false;
    let epoch = core.history.epoch.clone();
    core.reset_members(&epoch, 0, reason);
}
