use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use switchboard_protocol::{event, Bytes, CloseCode, ConnId, EventSink, RoomSet};
use switchboard_telemetry::names;

use crate::handle::{Registry, RemoteUsers};
use crate::replication::{PeerLink, Replication};

pub enum PresenceMsg {
    /// A connection is online (it may receive `send`).
    Connect {
        conn: ConnId,
        user: Arc<str>,
        sink: Arc<dyn EventSink>,
    },
    /// The connection is gone: every entry of it goes.
    Disconnect { conn: ConnId },
    /// The connection became a member of `room`; `events`: whether it is
    /// sent the room's `joined` and `left`.
    Join {
        room: Arc<str>,
        conn: ConnId,
        events: bool,
    },
    /// The connection stopped being a member of `room`.
    Leave { room: Arc<str>, conn: ConnId },
    Query {
        room: Arc<str>,
        reply: RpcReplyPort<Vec<Arc<str>>>,
    },
    /// Expire connections whose client has been silent too long.
    Sweep,
    /// A peer node became reachable: send it a snapshot.
    PeerUp { node: Arc<str> },
    /// A peer node was lost: its entries go (and `left` follows).
    PeerDown { node: Arc<str> },
    /// Replication from a peer node.
    Remote { node: Arc<str>, payload: Vec<u8> },
}

impl ractor::Message for PresenceMsg {}

pub struct Presence;

pub struct PresenceArgs {
    pub(crate) registry: Arc<Registry>,
    pub(crate) remote_users: Arc<RemoteUsers>,
    pub(crate) link: Option<Arc<dyn PeerLink>>,
    pub(crate) timeout: Duration,
    pub(crate) sweep_every: Duration,
}

struct Conn {
    user: Arc<str>,
    sink: Arc<dyn EventSink>,
    rooms: RoomSet,
}

#[derive(Default)]
struct RoomEntries {
    /// Local connections per user.
    users: BTreeMap<Arc<str>, u32>,
    conns: HashSet<ConnId>,
    /// Members that asked not to be sent `joined` and `left`.
    quiet: HashSet<ConnId>,
}

/// What a peer node has replicated here.
#[derive(Default)]
struct Peer {
    users: HashSet<Arc<str>>,
    entries: HashSet<(Arc<str>, Arc<str>)>,
}

pub struct PresenceState {
    registry: Arc<Registry>,
    remote_users: Arc<RemoteUsers>,
    link: Option<Arc<dyn PeerLink>>,
    timeout: Duration,
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<Arc<str>, RoomEntries>,
    peers: HashMap<Arc<str>, Peer>,
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
            remote_users: args.remote_users,
            link: args.link,
            timeout: args.timeout,
            conns: HashMap::new(),
            rooms: HashMap::new(),
            peers: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<PresenceMsg>,
        msg: PresenceMsg,
        state: &mut PresenceState,
    ) -> Result<(), ActorProcessingErr> {
        let mut out = Replication::default();
        match msg {
            PresenceMsg::Connect { conn, user, sink } => state.connect(conn, user, sink, &mut out),
            PresenceMsg::Disconnect { conn } => state.disconnect(conn, &mut out),
            PresenceMsg::Join { room, conn, events } => state.join(room, conn, events, &mut out),
            PresenceMsg::Leave { room, conn } => state.leave(&room, conn, &mut out),
            PresenceMsg::Query { room, reply } => {
                let _ = reply.send(state.users_in(&room));
            }
            PresenceMsg::Sweep => state.sweep(Instant::now(), &mut out),
            PresenceMsg::PeerUp { node } => state.send_snapshot(&node),
            PresenceMsg::PeerDown { node } => state.peer_down(&node),
            PresenceMsg::Remote { node, payload } => match Replication::decode(&payload) {
                Ok(r) => state.apply(node, r),
                Err(e) => tracing::warn!(peer = %node, error = %e, "bad presence replication"),
            },
        }
        if !out.is_empty() {
            if let Some(link) = &state.link {
                link.broadcast(out.encode());
            }
        }
        Ok(())
    }
}

impl PresenceState {
    fn connect(
        &mut self,
        conn: ConnId,
        user: Arc<str>,
        sink: Arc<dyn EventSink>,
        out: &mut Replication,
    ) {
        let mut conns = self.registry.entry(user.clone()).or_default();
        if conns.is_empty() {
            out.online.push(user.to_string());
        }
        // Most users have one connection: grow from one, not four.
        if conns.len() == conns.capacity() {
            let more = conns.len().max(1);
            conns.reserve_exact(more);
        }
        conns.push((conn, sink.clone()));
        drop(conns);
        self.conns.insert(
            conn,
            Conn {
                user,
                sink,
                rooms: RoomSet::default(),
            },
        );
        self.update_gauge();
    }

    fn disconnect(&mut self, conn: ConnId, out: &mut Replication) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for room in c.rooms.iter() {
            self.remove_entry(room, &c.user, conn, out);
        }
        if let dashmap::Entry::Occupied(mut e) = self.registry.entry(c.user.clone()) {
            e.get_mut().retain(|(id, _)| *id != conn);
            if e.get().is_empty() {
                e.remove();
                out.offline.push(c.user.to_string());
            }
        }
        self.update_gauge();
    }

    fn join(&mut self, room: Arc<str>, conn: ConnId, events: bool, out: &mut Replication) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.rooms.insert(room.clone()) {
            return;
        }
        let user = c.user.clone();
        let was_present = self.present(&room, &user);
        let entries = self.rooms.entry(room.clone()).or_default();
        entries.conns.insert(conn);
        if !events {
            entries.quiet.insert(conn);
        }
        let count = entries.users.entry(user.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            out.joined.push((room.to_string(), user.to_string()));
        }
        if !was_present {
            self.broadcast(&room, event::joined(&room, &user));
        }
    }

    fn leave(&mut self, room: &Arc<str>, conn: ConnId, out: &mut Replication) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.rooms.remove(room) {
            return;
        }
        let user = c.user.clone();
        self.remove_entry(room, &user, conn, out);
    }

    fn remove_entry(
        &mut self,
        room: &Arc<str>,
        user: &Arc<str>,
        conn: ConnId,
        out: &mut Replication,
    ) {
        let Some(entries) = self.rooms.get_mut(room) else {
            return;
        };
        entries.conns.remove(&conn);
        entries.quiet.remove(&conn);
        let last_local = match entries.users.get_mut(user) {
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
        }
        if last_local {
            out.left.push((room.to_string(), user.to_string()));
            if !self.present(room, user) {
                self.broadcast(room, event::left(room, user));
            }
        }
    }

    /// Whether `user` is in `room` anywhere in the cluster.
    fn present(&self, room: &Arc<str>, user: &Arc<str>) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|e| e.users.contains_key(user))
            || self
                .peers
                .values()
                .any(|p| p.entries.contains(&(room.clone(), user.clone())))
    }

    fn users_in(&self, room: &Arc<str>) -> Vec<Arc<str>> {
        let mut users: BTreeSet<Arc<str>> = self
            .rooms
            .get(room)
            .map(|e| e.users.keys().cloned().collect())
            .unwrap_or_default();
        for peer in self.peers.values() {
            users.extend(
                peer.entries
                    .iter()
                    .filter(|(r, _)| r == room)
                    .map(|(_, u)| u.clone()),
            );
        }
        users.into_iter().collect()
    }

    /// Queues an event to this node's members of `room`.
    fn broadcast(&self, room: &Arc<str>, ev: Bytes) {
        let Some(entries) = self.rooms.get(room) else {
            return;
        };
        for conn in entries.conns.difference(&entries.quiet) {
            if let Some(c) = self.conns.get(conn) {
                c.sink.push(ev.clone());
            }
        }
    }

    fn send_snapshot(&self, node: &str) {
        let Some(link) = &self.link else {
            return;
        };
        let snapshot = Replication {
            snapshot: true,
            online: self.registry.iter().map(|e| e.key().to_string()).collect(),
            joined: self
                .rooms
                .iter()
                .flat_map(|(room, e)| {
                    e.users
                        .keys()
                        .map(move |u| (room.to_string(), u.to_string()))
                })
                .collect(),
            ..Replication::default()
        };
        link.send(node, snapshot.encode());
    }

    fn apply(&mut self, node: Arc<str>, r: Replication) {
        let intern =
            |(room, user): (String, String)| -> (Arc<str>, Arc<str>) { (room.into(), user.into()) };
        if r.snapshot {
            // Reconcile: the snapshot replaces what the peer had here; only
            // real differences become `joined`/`left`.
            let old = self.peers.remove(&node).unwrap_or_default();
            for u in &old.users {
                self.unmark_remote_user(u, &node);
            }
            let new: HashSet<(Arc<str>, Arc<str>)> = r.joined.into_iter().map(intern).collect();
            for (room, user) in new.difference(&old.entries) {
                if !self.present(room, user) {
                    self.broadcast(room, event::joined(room, user));
                }
            }
            for (room, user) in old.entries.difference(&new) {
                if !self.present(room, user) {
                    self.broadcast(room, event::left(room, user));
                }
            }
            self.peers.insert(
                node.clone(),
                Peer {
                    users: HashSet::new(),
                    entries: new,
                },
            );
        } else {
            for entry in r.joined.into_iter().map(intern) {
                let was = self.present(&entry.0, &entry.1);
                self.peers
                    .entry(node.clone())
                    .or_default()
                    .entries
                    .insert(entry.clone());
                if !was {
                    self.broadcast(&entry.0, event::joined(&entry.0, &entry.1));
                }
            }
            for entry in r.left.into_iter().map(intern) {
                if let Some(p) = self.peers.get_mut(&node) {
                    p.entries.remove(&entry);
                }
                if !self.present(&entry.0, &entry.1) {
                    self.broadcast(&entry.0, event::left(&entry.0, &entry.1));
                }
            }
        }
        for user in r.online {
            let user: Arc<str> = user.into();
            self.mark_remote_user(&user, &node);
            self.peers
                .entry(node.clone())
                .or_default()
                .users
                .insert(user);
        }
        for user in r.offline {
            let user: Arc<str> = user.into();
            self.unmark_remote_user(&user, &node);
            if let Some(p) = self.peers.get_mut(&node) {
                p.users.remove(&user);
            }
        }
    }

    fn peer_down(&mut self, node: &Arc<str>) {
        let Some(peer) = self.peers.remove(node) else {
            return;
        };
        for u in &peer.users {
            self.unmark_remote_user(u, node);
        }
        for (room, user) in peer.entries {
            if !self.present(&room, &user) {
                self.broadcast(&room, event::left(&room, &user));
            }
        }
        self.update_gauge();
    }

    fn mark_remote_user(&self, user: &Arc<str>, node: &Arc<str>) {
        self.remote_users
            .entry(user.clone())
            .or_default()
            .insert(node.clone());
    }

    fn unmark_remote_user(&self, user: &Arc<str>, node: &Arc<str>) {
        if let dashmap::Entry::Occupied(mut e) = self.remote_users.entry(user.clone()) {
            e.get_mut().remove(node);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    fn sweep(&mut self, now: Instant, out: &mut Replication) {
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
            self.disconnect(conn, out);
        }
    }

    /// Distinct users online on this node (gauge).
    fn update_gauge(&self) {
        metrics::gauge!(names::PRESENCE_USERS).set(self.registry.len() as f64);
    }
}
