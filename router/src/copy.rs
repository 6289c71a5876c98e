//! The follower's side: copies of other homes' sequences of a room.

use std::time::Instant;

use ractor::ActorRef;
use switchboard_cluster::Home;

use crate::history::History;
use crate::room::{Mode, RoomCore, RoomMsg, RoomState};
use crate::rooms::RoomContext;
use crate::wire::RoomWire;

/// A replication message from a peer, for this room.
pub(crate) fn handle(myself: &ActorRef<RoomMsg>, state: &mut RoomState, wire: RoomWire) {
    let mut core = state.core.lock();
    let cluster = &state.ctx.cluster;
    let me = cluster.me().to_string();
    let now = Instant::now();
    match wire {
        RoomWire::Append {
            room,
            home,
            epoch,
            entry,
            term,
        } => {
            let stale_here = step_down_if_stale(&mut core, &state.ctx, &home, &epoch, term);
            let holder = newer_than(&core, &me, &home, &epoch, term, entry.offset);
            let (upto, refused, resend) = if holder.is_some() {
                (0, true, false)
            } else {
                match core.copies.get_mut(home.as_str()) {
                    Some(copy) if copy.epoch == epoch && copy.term == term => {
                        match copy.push(now, entry) {
                            Ok(()) => (copy.last_offset(), false, false),
                            Err(reason) => {
                                tracing::debug!(room = %room, home = %home, reason, "copy out of step");
                                (copy.last_offset(), false, true)
                            }
                        }
                    }
                    _ => (0, false, true),
                }
            };
            let answer = RoomWire::Appended {
                room,
                node: me,
                epoch,
                upto,
                refused,
                resend,
                holder,
                term: Some(term),
            };
            cluster.send(&home, answer.encode());
            if stale_here {
                drop(core);
                crate::home::acquire(myself, state, None);
            }
        }
        RoomWire::Snapshot {
            room,
            home,
            epoch,
            last,
            entries,
            term,
        } => {
            let s = &state.ctx.settings;
            let longer = last > core.history.last_offset();
            let stale_here = step_down_if_stale(&mut core, &state.ctx, &home, &epoch, term);
            let holder = newer_than(&core, &me, &home, &epoch, term, last);
            let refused = if let Some(holder) = &holder {
                if *holder != me {
                    tracing::warn!(room = %room, home = %home, epoch, last, term, holder, "refused a snapshot: that epoch went further elsewhere");
                }
                true
            } else {
                match History::from_wire(
                    s.history_size,
                    s.history_ttl,
                    epoch.clone(),
                    last,
                    entries,
                    now,
                ) {
                    Ok(mut copy) => {
                        copy.term = term;
                        // One copy per epoch: the newest home's.
                        core.copies.retain(|_, c| c.epoch != epoch);
                        core.copies.insert(home.as_str().into(), copy);
                        false
                    }
                    Err(reason) => {
                        tracing::warn!(room = %room, home = %home, reason, "refused a snapshot");
                        true
                    }
                }
            };
            let answer = RoomWire::Appended {
                room: room.clone(),
                node: me,
                epoch,
                upto: last,
                refused,
                resend: false,
                holder,
                term: Some(term),
            };
            cluster.send(&home, answer.encode());
            if stale_here {
                drop(core);
                crate::home::acquire(myself, state, None);
                return;
            }
            let here = cluster.home(&room) == Home::Local;
            if !refused && matches!(core.mode, Mode::Idle) && here {
                // A copy from a home that no longer homes the room, here
                // where it belongs now: take the room.
                drop(core);
                crate::home::acquire(myself, state, None);
            } else if !refused
                && here
                && core.holds
                && longer
                && matches!(core.mode, Mode::Home { .. })
            {
                // Two epochs met (this node started one while it saw nobody,
                // or was frozen while its room was taken over elsewhere):
                // the longer sequence goes on and this one ends. Its members
                // here are reset into that one.
                tracing::info!(room = %room, epoch = %core.history.epoch, holder = %home, "a longer sequence is held elsewhere; fetching it");
                crate::home::unhold(&mut core, &state.ctx);
                drop(core);
                crate::home::acquire(myself, state, None);
            }
        }
        RoomWire::Forget { home, epoch, .. } => {
            if core
                .copies
                .get(home.as_str())
                .is_some_and(|c| c.epoch == epoch)
            {
                core.copies.remove(home.as_str());
            }
        }
        RoomWire::Appended {
            node,
            epoch,
            upto,
            refused,
            resend,
            holder,
            term,
            ..
        } => {
            // An answer to an earlier holding of the epoch by this node.
            if term.is_some_and(|t| t != core.history.term) {
                return;
            }
            let refused = refused.then(|| holder.unwrap_or_else(|| node.clone()));
            if crate::home::on_appended(&mut core, &state.ctx, &node, &epoch, upto, refused, resend)
            {
                drop(core);
                crate::home::acquire(myself, state, None);
            }
        }
        other => tracing::warn!(?other, "not a replication message"),
    }
}

/// A holding or copy of `epoch` here that goes further than the sender's
/// (`term`, up to `last`): the node that has it, and the sender must not
/// go on. A higher term is a later holding; of one term (two holders that
/// both took the epoch over), the longer copy. This node never continues
/// a copy of its own holding of the same term (a stale holder may carry a
/// longer unreleased tail).
fn newer_than(
    core: &RoomCore,
    me: &str,
    home: &str,
    epoch: &str,
    term: u64,
    last: u64,
) -> Option<String> {
    if core.holds && core.history.epoch == epoch && core.history.term >= term {
        return Some(me.to_owned());
    }
    core.copies
        .iter()
        .find(|(h, c)| {
            &***h != home
                && c.epoch == epoch
                && (c.term > term || (c.term == term && c.last_offset() > last))
        })
        .map(|(h, _)| h.to_string())
}

/// This node holds `epoch` under a lower term than `home` does: `home`
/// took it over (or was handed it) after this node's holding, which is
/// stale. It stops holding at once, releasing nothing more, and fetches
/// the room from `home` if it is the room's home (the caller acquires when
/// this returns true).
fn step_down_if_stale(
    core: &mut RoomCore,
    ctx: &RoomContext,
    home: &str,
    epoch: &str,
    term: u64,
) -> bool {
    if !(core.holds && core.history.epoch == epoch && core.history.term < term) {
        return false;
    }
    tracing::warn!(room = %core.name, epoch, term = core.history.term, holder = home, newer = term, "a later holding of this epoch exists; fetching the room");
    crate::home::unhold(core, ctx);
    core.holder_hint = Some(home.into());
    core.follower = None;
    matches!(core.mode, Mode::Home { .. })
}
