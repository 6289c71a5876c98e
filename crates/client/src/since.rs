//! Per room, the position `(epoch, offset)` of the last message handed to
//! the application: what a rejoin asks for with `since`, and what tells a
//! replayed message the application already has from a new one.
//!
//! `msg` events carry no epoch, so the epoch is the one the last `join` ok
//! or `reset` named; offsets compare only within it.

use std::collections::HashMap;

/// Where a room's delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// What a join's `ok` meant for the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The first join: delivery starts after the room's newest offset.
    Fresh,
    /// A rejoin that recovered: what was missed follows the `ok`.
    Recovered,
    /// A rejoin the history could not serve (another epoch, or too old):
    /// delivery continues after the new position; what came between is lost.
    NotRecovered,
}

/// What to do with a `msg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// New: hand it over (in this epoch).
    Deliver { epoch: String },
    /// At or before the last one handed over: a replay of what the
    /// application already has.
    Duplicate,
    /// A room not joined (left, or its join not answered yet).
    NotJoined,
}

/// The positions of every joined room.
#[derive(Debug, Default)]
pub struct Positions {
    rooms: HashMap<String, Position>,
}

impl Positions {
    /// The `since` to rejoin `room` with; `None` for a room never joined.
    pub fn since(&self, room: &str) -> Option<&Position> {
        self.rooms.get(room)
    }

    /// A join's `ok`: `epoch` and `offset` are the room's, `recovered` is
    /// the answer to a `since`, if one was asked.
    pub fn joined(
        &mut self,
        room: &str,
        epoch: &str,
        offset: u64,
        recovered: Option<bool>,
    ) -> Joined {
        let outcome = match (self.rooms.get(room), recovered) {
            (None, _) => Joined::Fresh,
            (Some(at), Some(true)) if at.epoch == epoch => return Joined::Recovered,
            _ => Joined::NotRecovered,
        };
        self.rooms.insert(
            room.to_owned(),
            Position {
                epoch: epoch.to_owned(),
                offset,
            },
        );
        outcome
    }

    /// A `reset`: the room's sequence restarted; messages continue after
    /// `offset` in `epoch`.
    pub fn reset(&mut self, room: &str, epoch: &str, offset: u64) -> bool {
        match self.rooms.get_mut(room) {
            Some(at) => {
                *at = Position {
                    epoch: epoch.to_owned(),
                    offset,
                };
                true
            }
            None => false,
        }
    }

    /// A `msg` of `room` at `offset`.
    pub fn deliver(&mut self, room: &str, offset: u64) -> Delivery {
        let Some(at) = self.rooms.get_mut(room) else {
            return Delivery::NotJoined;
        };
        if offset <= at.offset {
            return Delivery::Duplicate;
        }
        if offset != at.offset + 1 {
            // The server promises no gaps on a connection it keeps open;
            // one here is a server bug worth seeing, not a reason to stall.
            tracing::warn!(room, after = at.offset, offset, "gap in a room's offsets");
        }
        at.offset = offset;
        Delivery::Deliver {
            epoch: at.epoch.clone(),
        }
    }

    /// The room was left: forget its position.
    pub fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver_all(p: &mut Positions, room: &str, offsets: &[u64]) -> Vec<u64> {
        offsets
            .iter()
            .copied()
            .filter(|&o| matches!(p.deliver(room, o), Delivery::Deliver { .. }))
            .collect()
    }

    #[test]
    fn a_fresh_join_starts_after_the_newest_offset() {
        let mut p = Positions::default();
        assert_eq!(p.since("r"), None);
        assert_eq!(p.joined("r", "e1", 41, None), Joined::Fresh);
        assert_eq!(
            p.since("r"),
            Some(&Position {
                epoch: "e1".into(),
                offset: 41
            })
        );
        assert_eq!(deliver_all(&mut p, "r", &[41, 42, 43]), vec![42, 43]);
        assert_eq!(p.since("r").map(|s| s.offset), Some(43));
    }

    #[test]
    fn a_recovered_rejoin_keeps_the_position_and_drops_what_was_already_delivered() {
        let mut p = Positions::default();
        p.joined("r", "e1", 0, None);
        deliver_all(&mut p, "r", &[1, 2, 3]);
        // The ok names the room's newest offset (5); the position stays at 3
        // so that the replayed 4 and 5 are delivered.
        assert_eq!(p.joined("r", "e1", 5, Some(true)), Joined::Recovered);
        assert_eq!(p.since("r").map(|s| s.offset), Some(3));
        assert_eq!(deliver_all(&mut p, "r", &[3, 4, 5, 4, 6]), vec![4, 5, 6]);
    }

    #[test]
    fn a_rejoin_not_recovered_moves_to_the_new_epoch() {
        let mut p = Positions::default();
        p.joined("r", "e1", 0, None);
        deliver_all(&mut p, "r", &[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(p.joined("r", "e2", 2, Some(false)), Joined::NotRecovered);
        assert_eq!(
            p.since("r"),
            Some(&Position {
                epoch: "e2".into(),
                offset: 2
            })
        );
        // Offsets lower than before are new in the new epoch.
        assert_eq!(deliver_all(&mut p, "r", &[3, 4]), vec![3, 4]);
        assert_eq!(p.deliver("r", 5), Delivery::Deliver { epoch: "e2".into() });
    }

    #[test]
    fn recovered_in_another_epoch_is_not_believed() {
        let mut p = Positions::default();
        p.joined("r", "e1", 9, None);
        assert_eq!(p.joined("r", "e2", 0, Some(true)), Joined::NotRecovered);
        assert_eq!(p.since("r").map(|s| s.epoch.as_str()), Some("e2"));
    }

    #[test]
    fn a_reset_continues_after_its_offset_in_its_epoch() {
        let mut p = Positions::default();
        p.joined("r", "e1", 0, None);
        deliver_all(&mut p, "r", &[1, 2, 3]);
        assert!(p.reset("r", "e2", 1));
        assert_eq!(deliver_all(&mut p, "r", &[1, 2]), vec![2]);
        assert_eq!(
            p.since("r").map(|s| (s.epoch.as_str(), s.offset)),
            Some(("e2", 2))
        );
        assert!(!p.reset("other", "e9", 0), "a room not joined is not reset");
    }

    #[test]
    fn messages_of_rooms_not_joined_or_left_are_not_delivered() {
        let mut p = Positions::default();
        assert_eq!(p.deliver("r", 1), Delivery::NotJoined);
        p.joined("r", "e1", 0, None);
        p.forget("r");
        assert_eq!(p.deliver("r", 1), Delivery::NotJoined);
        assert_eq!(p.since("r"), None);
    }
}
