//! Switchboard wire protocol, version 1.
//!
//! Everything a client and the gateway exchange over a WebSocket: the
//! commands a client sends ([`Command`]), the events the server sends
//! ([`event`]), the opening [`handshake`] (and what a [`proxy`] in front
//! of the server says about the client), the server side of the WebSocket
//! framing ([`frames`]), the MessagePack codec for both, validation of names and
//! fields, and the close codes. This crate does no I/O and knows nothing of
//! tokio or actors, so it can be tested and fuzzed on its own.
//!
//! A binary WebSocket message carries one or more MessagePack maps,
//! concatenated. [`decode_commands`] walks them; the `data` of a `pub` or
//! `send` is kept as the exact bytes the client sent (a [`Bytes`] slice of
//! the message) and written back out unchanged by [`event::msg`] and
//! [`event::dm`], so payloads are never re-encoded.

// This crate reads what clients send: a slice or an index out of bounds
// there would be a panic a client can cause.
#![cfg_attr(not(test), warn(clippy::string_slice, clippy::indexing_slicing))]

mod close;
mod command;
mod error;
pub mod event;
pub mod frames;
pub mod handshake;
pub mod json;
mod name;
pub mod position;
pub mod proxy;
mod room_set;
mod sink;
mod value;

pub use bytes::Bytes;
pub use close::CloseCode;
pub use command::{decode_commands, Command, CommandError, CommandKind, Commands, Since};
pub use error::ErrorCode;
pub use name::{validate_room, validate_user, InvalidName, MAX_ROOM_BYTES, MAX_USER_BYTES};
pub use room_set::RoomSet;
pub use sink::{ConnId, EventSink};
pub use value::{split_value, ValueError, MAX_DEPTH};

/// Protocol version announced in `hello`.
pub const VERSION: u64 = 1;

/// The WebSocket subprotocol the server selects when a client offers it.
pub const SUBPROTOCOL: &str = "switchboard.v1";

/// Longest `msg_id` accepted on a `pub`.
pub const MAX_MSG_ID_BYTES: usize = 64;
