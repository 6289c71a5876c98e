use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef};
use switchboard_protocol::{Bytes, ConnId, EventSink};

use crate::actor::{Presence, PresenceArgs, PresenceMsg};
use crate::replication::PeerLink;
use crate::replication::PresenceWire;
use crate::PresenceError;

/// How long a `presence` query may wait for the presence actor before the
/// client gets an error instead.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// user -> that user's connections on this node.
pub(crate) type Registry = DashMap<Arc<str>, Vec<(ConnId, Arc<dyn EventSink>)>>;
/// user -> the peer nodes where that user has connections.
pub(crate) type RemoteUsers = DashMap<Arc<str>, BTreeSet<Arc<str>>>;

/// A cloneable handle to the Presence actor and its registry.
#[derive(Clone)]
pub struct PresenceHandle {
    actor: ActorRef<PresenceMsg>,
    registry: Arc<Registry>,
    remote_users: Arc<RemoteUsers>,
}

impl std::fmt::Debug for PresenceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceHandle")
            .field("users", &self.registry.len())
            .finish()
    }
}

impl PresenceHandle {
    /// Starts the Presence actor. Connections silent for `timeout` are
    /// expired; the sweep runs every `sweep_every`.
    pub async fn start(
        timeout: Duration,
        sweep_every: Duration,
        link: Option<Arc<dyn PeerLink>>,
        parent: Option<ActorCell>,
    ) -> Result<(Self, ActorRef<PresenceMsg>), PresenceError> {
        let registry = Arc::new(Registry::new());
        let remote_users = Arc::new(RemoteUsers::new());
        let args = PresenceArgs {
            registry: registry.clone(),
            remote_users: remote_users.clone(),
            link,
            timeout,
            sweep_every,
        };
        let spawned = match parent {
            Some(p) => Actor::spawn_linked(None, Presence, args, p).await,
            None => Actor::spawn(None, Presence, args).await,
        };
        let (actor, _) = spawned.map_err(|e| PresenceError::Spawn(e.to_string()))?;
        Ok((
            Self {
                actor: actor.clone(),
                registry,
                remote_users,
            },
            actor,
        ))
    }

    pub fn connect(&self, conn: ConnId, user: Arc<str>, sink: Arc<dyn EventSink>) {
        let _ = self.actor.cast(PresenceMsg::Connect { conn, user, sink });
    }

    pub fn disconnect(&self, conn: ConnId) {
        let _ = self.actor.cast(PresenceMsg::Disconnect { conn });
    }

    /// `events`: whether the connection is sent the room's `joined` and `left`.
    pub fn join(&self, room: Arc<str>, conn: ConnId, events: bool) {
        let _ = self.actor.cast(PresenceMsg::Join { room, conn, events });
    }

    pub fn leave(&self, room: Arc<str>, conn: ConnId) {
        let _ = self.actor.cast(PresenceMsg::Leave { room, conn });
    }

    /// The sorted, distinct users present in `room`.
    pub async fn users(&self, room: &str) -> Result<Vec<Arc<str>>, PresenceError> {
        let room: Arc<str> = room.into();
        match self
            .actor
            .call(
                |reply| PresenceMsg::Query { room, reply },
                Some(QUERY_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(users)) => Ok(users),
            Ok(CallResult::Timeout) => Err(PresenceError::Timeout),
            _ => Err(PresenceError::Gone),
        }
    }

    pub fn peer_up(&self, node: &str) {
        let _ = self.actor.cast(PresenceMsg::PeerUp { node: node.into() });
    }

    pub fn peer_down(&self, node: &str) {
        let _ = self.actor.cast(PresenceMsg::PeerDown { node: node.into() });
    }

    /// Replication received from a peer node.
    pub fn remote(&self, node: &str, payload: &[u8]) {
        let _ = self.actor.cast(PresenceMsg::Remote {
            node: node.into(),
            payload: payload.to_vec(),
        });
    }

    /// Peer nodes where `user` has connections.
    pub fn nodes_of(&self, user: &str) -> Vec<Arc<str>> {
        self.remote_users
            .get(user)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Queues `event` to every connection of `user`; returns how many took it.
    pub fn send(&self, user: &str, event: &Bytes) -> u64 {
        self.registry.get(user).map_or(0, |conns| {
            conns
                .iter()
                .filter(|(_, sink)| sink.push(event.clone()))
                .count() as u64
        })
    }

    /// A presence message from a peer (see [`PresenceWire`]).
    pub fn on_cast(&self, bytes: &[u8]) {
        match PresenceWire::decode(bytes) {
            Ok(PresenceWire::Presence { node, payload }) => self.remote(&node, &payload),
            Ok(other) => tracing::warn!(?other, "refused a presence message that is not a cast"),
            Err(e) => tracing::warn!(error = %e, "refused an undecodable presence message"),
        }
    }

    /// A presence request from a peer (a direct message); the encoded answer.
    pub fn on_call(&self, bytes: &[u8]) -> Vec<u8> {
        let count = match PresenceWire::decode(bytes) {
            Ok(PresenceWire::Dm { to, event }) => self.send(&to, &Bytes::from(event)),
            Ok(other) => {
                tracing::warn!(?other, "refused a presence message that is not a call");
                0
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused an undecodable presence message");
                0
            }
        };
        PresenceWire::Delivered { count }.encode()
    }

    /// Distinct users online on this node.
    pub fn online_users(&self) -> usize {
        self.registry.len()
    }
}
