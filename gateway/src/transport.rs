//! What every kind of client connection (a WebSocket, an SSE stream, a poll
//! session) does when it opens and when it ends, counted per transport.

use std::net::IpAddr;
use std::sync::Arc;

use switchboard_protocol::{CloseCode, EventSink};
use switchboard_telemetry::names;

use crate::outbound::Closing;
use crate::session::Conn;

/// How a client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `/ws` (and `/echo`).
    Ws,
    /// `/sse`: Server-Sent Events.
    Sse,
    /// `/poll`: a long-polling session.
    Poll,
}

impl Transport {
    /// The `transport` label of the connection metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

/// A connection's place on its node: open for draining and the metrics
/// while it lives. Dropping it (also when the connection's task panics)
/// leaves every room and presence and counts the close.
pub struct Registration {
    conn: Arc<Conn>,
    transport: Transport,
    /// The client's address (behind trusted proxies, the one they named).
    client: IpAddr,
}

impl Registration {
    pub fn new(conn: Arc<Conn>, transport: Transport, client: IpAddr) -> Self {
        let node = conn.node();
        node.conns.insert(conn.id, conn.out.clone());
        let t = transport.label();
        metrics::gauge!(names::CONNECTIONS, "transport" => t).increment(1.0);
        metrics::counter!(names::CONNECTIONS_OPENED_TOTAL, "transport" => t).increment(1);
        tracing::debug!(conn = %conn.id, user = %conn.user, client = %client, transport = t, "connected");
        Self {
            conn,
            transport,
            client,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let out = &self.conn.out;
        let reason = match out.closing_reason() {
            Some(Closing::Server(code, _)) => code.label(),
            Some(Closing::Echo(_)) => "client_close",
            None => {
                out.close(CloseCode::Normal, "");
                "client_gone"
            }
        };
        self.conn.finish();
        self.conn.node().conns.remove(&self.conn.id);
        let t = self.transport.label();
        metrics::gauge!(names::CONNECTIONS, "transport" => t).decrement(1.0);
        metrics::counter!(names::CONNECTIONS_CLOSED_TOTAL, "reason" => reason, "transport" => t)
            .increment(1);
        tracing::debug!(conn = %self.conn.id, client = %self.client, reason, transport = t, "closed");
    }
}
