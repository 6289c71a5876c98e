//! Rooms: one [`Room`] actor per active room under a [`RoomSupervisor`].
//!
//! The Room is the room's sequencer: it assigns offsets, keeps the history
//! ring, de-duplicates `msg_id`s and fans each message out, encoded once, to
//! its members' event sinks. Members are connections, named by a [`ConnId`]
//! and reached through an [`EventSink`](switchboard_protocol::EventSink);
//! this crate never names gateway types.
//!
//! A Room's sequencer state lives in a [`RoomCore`](room::RoomCore) that its
//! supervisor keeps, so a Room that panics is restarted with the same epoch,
//! offsets, history and members, and replays to each member what the crash
//! kept from it.

mod copy;
mod history;
mod home;
mod member;
mod relay;
mod room;
mod room_core;
mod rooms;
mod sequencer;
mod supervisor;
pub mod wire;

pub use member::{Member, MembershipObserver};
pub use room::{JoinRequest, PublishReply, PublishRequest, Room, RoomMsg};
pub use rooms::{RoomSettings, Rooms};
pub use supervisor::{RoomSupervisor, RoomSupervisorMsg};
pub use switchboard_protocol::ConnId;
pub use wire::RoomWire;

/// Errors at the router's boundary.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("the room supervisor is not running")]
    SupervisorGone,
    #[error("could not start {room}: {reason}")]
    Spawn { room: String, reason: String },
    #[error("room {room} is not reachable: {reason}")]
    Unreachable { room: String, reason: String },
    #[error("room {0} did not answer in time")]
    Timeout(String),
}
