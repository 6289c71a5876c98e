//! Presence: the registry of who is online, in which rooms, on which
//! connections.
//!
//! The [`Presence`] actor owns the entries: one per connection, and one per
//! (user, room, connection). It emits `joined` when a user gets their first
//! connection in a room and `left` when the last one goes, by leave,
//! disconnect or heartbeat expiry. A connection whose client has been silent
//! for longer than the heartbeat timeout is expired by the actor's sweep: its
//! socket is closed with 1001 and its entries removed.
//!
//! Direct messages (`send`) read the user registry ([`PresenceHandle::send`])
//! without going through the actor.

mod actor;
mod handle;
mod replication;

pub use actor::{Presence, PresenceMsg};
pub use handle::PresenceHandle;
pub use replication::{PeerLink, PresenceWire, Replication};

/// Errors at the presence boundary.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("the presence actor is not running")]
    Gone,
    #[error("the presence actor did not answer in time")]
    Timeout,
    #[error("could not start presence: {0}")]
    Spawn(String),
}
