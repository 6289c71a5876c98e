use std::time::Instant;

use bytes::Bytes;

use crate::CloseCode;

/// A connection's id, unique within a node for the life of the process.
/// On the wire (`hello.conn`) it is written in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Where a connection's outbound events go.
///
/// The gateway implements it with a bounded queue drained by the socket's
/// writer; rooms and presence hold it to deliver without going through any
/// actor's mailbox and without ever waiting on a socket.
pub trait EventSink: Send + Sync + 'static {
    /// Queues one encoded event (one or more MessagePack maps). Returns
    /// `false` when the connection is closed, or has just been closed because
    /// its queue was full (a slow consumer): the event was not queued.
    fn push(&self, event: Bytes) -> bool;

    /// Queues a room message published at `published`, so that the time to
    /// the socket can be measured. The default just pushes it.
    fn deliver(&self, event: Bytes, published: Instant) -> bool {
        let _ = published;
        self.push(event)
    }

    /// Closes the connection with `code` once what is already queued is
    /// written. Later pushes are refused.
    fn close(&self, code: CloseCode, reason: &'static str);

    fn is_closed(&self) -> bool;

    /// When the client last sent anything (a frame of any kind).
    fn last_seen(&self) -> Instant;
}
