//! What the text transports (`/sse`, `/poll`) share: the request's rooms,
//! checked before anything is joined, and the member that joins them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::json;
use switchboard_protocol::position::{Positions, TextEvent};
use switchboard_protocol::{validate_room, Command, CommandKind, ConnId};

use crate::auth::{query_param, Identity};
use crate::node::NodeCtx;
use crate::outbound::Outbound;
use crate::session::Conn;
use crate::transport::{Registration, Transport};

/// A request refused before anything is joined: a status and one line.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub reason: String,
    /// Seconds for a `Retry-After` header (the node is admitting no more
    /// new clients this second).
    pub retry_after: Option<u32>,
}

pub(crate) fn refused(status: u16, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        reason: reason.into(),
        retry_after: None,
    }
}

/// The refusal of a client the node cannot admit now
/// (`limits.connects_per_s`).
pub(crate) fn busy(retry_after: u32) -> Refused {
    Refused {
        retry_after: Some(retry_after),
        ..refused(
            503,
            "busy: too many new clients (limits.connects_per_s); retry after Retry-After seconds",
        )
    }
}

/// A checked request for a stream of rooms.
pub struct Feed {
    pub rooms: Vec<String>,
    pub presence: bool,
    pub identity: Identity,
}

impl Feed {
    /// Checks a request: the node serves, the client is who it says, and
    /// it may be in every room it names.
    pub fn parse(
        node: &NodeCtx,
        query: Option<&str>,
        authorization: Option<&str>,
    ) -> Result<Self, Refused> {
        if node.draining.load(Ordering::SeqCst) {
            return Err(refused(503, "draining: reconnect to another node"));
        }
        let identity = node
            .auth
            .authenticate(query, authorization)
            .map_err(|e| refused(401, e.to_string()))?;
        let param = |name| query_param(query, name).map_err(|e| refused(400, e.to_string()));
        let list = param("rooms")?.unwrap_or_default();
        if list.is_empty() {
            return Err(refused(
                400,
                "rooms: required, the rooms to join, comma-separated",
            ));
        }
        let rooms: Vec<String> = list.split(',').map(str::to_owned).collect();
        let limit = node.settings.limits.rooms_per_connection;
        if rooms.len() > limit {
            return Err(refused(
                429,
                format!("rooms: rooms_per_connection limit ({limit}) reached"),
            ));
        }
        for (i, room) in rooms.iter().enumerate() {
            validate_room(room).map_err(|e| refused(400, format!("rooms: {room:?}: {e}")))?;
            if rooms.get(..i).is_some_and(|before| before.contains(room)) {
                return Err(refused(400, format!("rooms: {room:?} is named twice")));
            }
            if let Some(g) = &identity.grants {
                if !g.allows(room) {
                    return Err(refused(
                        403,
                        format!("rooms: {room:?} is not allowed by the token's rooms claim"),
                    ));
                }
            }
        }
        let presence = match param("presence")?.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(refused(400, "presence: must be true or false")),
        };
        Ok(Self {
            rooms,
            presence,
            identity,
        })
    }

    /// Reads a position handed back by the client (`what` names it in the
    /// refusal).
    pub fn positions(&self, text: Option<&str>, what: &str) -> Result<Positions, Refused> {
        match text {
            None => Ok(Positions::unknown(self.rooms.len())),
            Some(t) => Positions::parse(t, self.rooms.len())
                .map_err(|e| refused(400, format!("{what}: {e}"))),
        }
    }

    /// Starts a member in every room, resuming from `from`: registered on
    /// the node and present, like a WebSocket connection. Each join's answer
    /// (or error) arrives on the member's queue, numbered from 1 in the
    /// order of `rooms`.
    pub async fn open(
        &self,
        node: &Arc<NodeCtx>,
        from: &Positions,
        transport: Transport,
        client: std::net::IpAddr,
    ) -> (Arc<Conn>, Registration) {
        let id = ConnId(fastrand::u64(1..));
        let out = Arc::new(Outbound::new(node.settings.limits.outbound_queue));
        let user: Arc<str> = match &self.identity.user {
            Some(u) => u.as_str().into(),
            None => format!("anon-{id}").into(),
        };
        let conn = Arc::new(Conn::new(
            id,
            user.clone(),
            out.clone(),
            self.identity.grants.clone(),
            node.clone(),
        ));
        let registration = Registration::new(conn.clone(), transport, client);
        node.presence.connect(id, user, out);
        let joins = self
            .rooms
            .iter()
            .zip(1..)
            .enumerate()
            .map(|(i, (room, id))| {
                Ok(Command {
                    id,
                    kind: CommandKind::Join {
                        room: room.clone(),
                        since: from.get(i).cloned(),
                        presence: self.presence,
                    },
                })
            })
            .collect();
        conn.handle_commands(joins).await;
        (conn, registration)
    }

    /// The first event of a stream or poll session.
    pub fn hello(&self, node: &NodeCtx, conn: &Conn) -> TextEvent {
        let mut fields = serde_json::Map::new();
        fields.insert("conn".into(), json!(conn.id.to_string()));
        fields.insert("node".into(), json!(node.settings.node.name));
        fields.insert("user".into(), json!(&*conn.user));
        fields.insert(
            "heartbeat_ms".into(),
            json!(node.settings.heartbeat.interval_ms),
        );
        fields.insert("rooms".into(), json!(self.rooms));
        let r = node.reconnect_policy();
        fields.insert(
            "reconnect".into(),
            json!({"base_ms": r.base_ms, "max_ms": r.max_ms, "jitter": "full",
                   "after_drain_ms": r.after_drain_ms}),
        );
        TextEvent::new("hello", fields)
    }
}
