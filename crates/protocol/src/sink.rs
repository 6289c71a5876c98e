use std::time::Instant;

use bytes::Bytes;

use crate::CloseCode;

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

    /// Closes the connection with `code` once what is already queued is
    /// written. Later pushes are refused.
    fn close(&self, code: CloseCode, reason: &'static str);

    fn is_closed(&self) -> bool;

    /// When the client last sent anything (a frame of any kind).
    fn last_seen(&self) -> Instant;
}
