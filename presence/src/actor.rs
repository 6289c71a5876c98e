use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchboard_protocol::{event, Bytes, CloseCode, ConnId, EventSink};

use crate::handle::Registry;

pub enum PresenceMsg {
    /// A connection is online (it may receive `send`).
    Connect {
        conn: ConnId,
        user: Arc<str>,
        sink: Arc<dyn EventSink>,
    },
    /// The connection is gone: every entry of it goes.
    Disconnect { conn: ConnId },
    /// The connection became a member of `room`.
    Join { room: Arc<str>, conn: ConnId },
    /// The connection stopped being a member of `room`.
    Leave { room: Arc<str>, conn: ConnId },
    Query {
        room: Arc<str>,
        reply: RpcReplyPort<Vec<Arc<str>>>,
    },
    /// Expire connections whose client has been silent too long.
    Sweep,
}

impl ractor::Message for PresenceMsg {}

pub struct Presence;

pub struct PresenceArgs {
    pub(crate) registry: Arc<Registry>,
    pub(crate) timeout: Duration,
    pub(crate) sweep_every: Duration,
}

struct Conn {
    user: Arc<str>,
    sink: Arc<dyn EventSink>,
    rooms: HashSet<Arc<str>>,
}

#[derive(Default)]
struct RoomEntries {
    /// Connections per user: `joined` at the first, `left` after the last.
    users: BTreeMap<Arc<str>, u32>,
    conns: HashSet<ConnId>,
}

pub struct PresenceState {
    registry: Arc<Registry>,
    timeout: Duration,
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<Arc<str>, RoomEntries>,
}

impl Actor for Presence {
    type Msg = PresenceMsg;
    type State = PresenceState;
    type Arguments = PresenceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PresenceMsg>,
        args: PresenceArgs,
    ) -> Result<PresenceState, ActorProcessingErr> {
        myself.send_interval(args.sweep_every, || PresenceMsg::Sweep);
        Ok(PresenceState {
            registry: args.registry,
            timeout: args.timeout,
            conns: HashMap::new(),
            rooms: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PresenceMsg>,
        msg: PresenceMsg,
        state: &mut PresenceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PresenceMsg::Connect { conn, user, sink } => state.connect(conn, user, sink),
            PresenceMsg::Disconnect { conn } => state.disconnect(conn),
            PresenceMsg::Join { room, conn } => state.join(room, conn),
            PresenceMsg::Leave { room, conn } => state.leave(&room, conn),
            PresenceMsg::Query { room, reply } => {
                let users = state
                    .rooms
                    .get(&room)
                    .map(|r| r.users.keys().cloned().collect())
                    .unwrap_or_default();
                let _ = reply.send(users);
            }
            PresenceMsg::Sweep => state.sweep(Instant::now()),
        }
        Ok(())
    }
}

impl PresenceState {
    fn connect(&mut self, conn: ConnId, user: Arc<str>, sink: Arc<dyn EventSink>) {
        self.registry
            .entry(user.clone())
            .or_default()
            .push((conn, sink.clone()));
        self.conns.insert(
            conn,
            Conn {
                user,
                sink,
                rooms: HashSet::new(),
            },
        );
        self.update_gauge();
    }

    fn disconnect(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for room in &c.rooms {
            self.remove_entry(room, &c.user, conn);
        }
        if let dashmap::Entry::Occupied(mut e) = self.registry.entry(c.user) {
            e.get_mut().retain(|(id, _)| *id != conn);
            if e.get().is_empty() {
                e.remove();
            }
        }
        self.update_gauge();
    }

    fn join(&mut self, room: Arc<str>, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.rooms.insert(room.clone()) {
            return;
        }
        let user = c.user.clone();
        let entries = self.rooms.entry(room.clone()).or_default();
        entries.conns.insert(conn);
        let count = entries.users.entry(user.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.broadcast(&room, event::joined(&room, &user));
        }
    }

    fn leave(&mut self, room: &Arc<str>, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.rooms.remove(room) {
            return;
        }
        let user = c.user.clone();
        self.remove_entry(room, &user, conn);
    }

    fn remove_entry(&mut self, room: &Arc<str>, user: &Arc<str>, conn: ConnId) {
        let Some(entries) = self.rooms.get_mut(room) else {
            return;
        };
        entries.conns.remove(&conn);
        let last = match entries.users.get_mut(user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                entries.users.remove(user);
                true
            }
            None => false,
        };
        if entries.conns.is_empty() {
            self.rooms.remove(room);
        } else if last {
            self.broadcast(room, event::left(room, user));
        }
    }

    fn broadcast(&self, room: &Arc<str>, ev: Bytes) {
        let Some(entries) = self.rooms.get(room) else {
            return;
        };
        for conn in &entries.conns {
            if let Some(c) = self.conns.get(conn) {
                c.sink.push(ev.clone());
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.sink.last_seen()) > self.timeout)
            .map(|(id, _)| *id)
            .collect();
        for conn in expired {
            if let Some(c) = self.conns.get(&conn) {
                tracing::info!(conn = %conn, user = %c.user, "heartbeat timeout");
                c.sink
                    .close(CloseCode::HeartbeatTimeout, "heartbeat timeout");
            }
            self.disconnect(conn);
        }
    }

    fn update_gauge(&self) {
        metrics::gauge!("switchboard_presence_users").set(self.registry.len() as f64);
    }
}
