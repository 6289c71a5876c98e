use std::fmt;
use std::sync::Arc;

use switchboard_protocol::{ConnId, EventSink};

/// A connection that is a member of a room.
#[derive(Clone)]
pub struct Member {
    pub conn: ConnId,
    pub user: Arc<str>,
    pub sink: Arc<dyn EventSink>,
    /// Whether it is sent the room's `joined` and `left`.
    pub presence_events: bool,
}

impl fmt::Debug for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("conn", &self.conn)
            .field("user", &self.user)
            .finish()
    }
}

/// Told when a connection becomes or stops being a member of a room, after
/// the room has acted on it. The gateway wires this to presence, so the
/// router does not depend on it.
pub trait MembershipObserver: Send + Sync + 'static {
    fn joined(&self, room: &Arc<str>, member: &Member);
    fn left(&self, room: &Arc<str>, conn: ConnId);
}
