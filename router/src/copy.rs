//! The follower's side: copies of other homes' sequences of a room.

use std::time::Instant;

use ractor::ActorRef;
use switchboard_cluster::Home;

use crate::history::History;
use crate::room::{Mode, RoomMsg, RoomState};
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
        } => {
            let held_here = core.holds && core.history.epoch == epoch;
            let (upto, refused, resend) = if held_here {
                (0, true, false)
            } else {
                match core.copies.get_mut(home.as_str()) {
                    Some(copy) if copy.epoch == epoch => match copy.push(now, entry) {
                        Ok(()) => (copy.last_offset(), false, false),
                        Err(reason) => {
                            tracing::debug!(room = %room, home = %home, reason, "copy out of step");
                            (copy.last_offset(), false, true)
                        }
                    },
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
            };
            cluster.send(&home, answer.encode());
        }
        RoomWire::Snapshot {
            room,
            home,
            epoch,
            last,
            entries,
        } => {
            let s = &state.ctx.settings;
            let longer = last > core.history.last_offset();
            // Never replaced by a copy of itself: which of two holders of
            // one epoch is stale cannot be told from the copies' lengths
            // (a stale one may carry a longer unreleased tail).
            let held_here = core.holds && core.history.epoch == epoch;
            // A copy of this epoch that another home carried further: the
            // sender is stale, and must not go on with it.
            let behind = core
                .copies
                .iter()
                .any(|(h, c)| **h != *home && c.epoch == epoch && c.last_offset() > last);
            let refused = if held_here || behind {
                if behind {
                    tracing::warn!(room = %room, home = %home, epoch, last, "refused a snapshot: that epoch went further elsewhere");
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
                    Ok(copy) => {
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
            };
            cluster.send(&home, answer.encode());
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
            ..
        } => {
            if crate::home::on_appended(&mut core, &state.ctx, &node, &epoch, upto, refused, resend)
            {
                drop(core);
                crate::home::acquire(myself, state, None);
            }
        }
        other => tracing::warn!(?other, "not a replication message"),
    }
}
