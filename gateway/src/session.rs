//! The Session actor: carries out a connection's commands that wait on
//! other actors.
//!
//! Commands that only check and cast (`join`, `leave`, `pub`, `ping`) are
//! carried out by the socket's reader itself when nothing earlier is still
//! with a Session, so a connection that chats (publishes, pings, joins)
//! needs no actor awake. A message with a command that waits for an answer
//! (`send`, `presence`) goes to the connection's Session, started on
//! demand; what follows it goes there too until it is handled, so commands
//! are carried out in order. A Session that has handled nothing for
//! `session.passivate_ms` stops itself. Nothing is lost by that: what a
//! connection is (identity, rooms, rate limiter, outbound queue) lives in
//! [`Conn`], shared by the socket's reader and the Session, and deliveries
//! never go through the Session at all. So an idle or chatting socket costs
//! no actor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use switchboard_protocol::{
    decode_commands, event, Bytes, Command, CommandError, CommandKind, ConnId, ErrorCode,
    EventSink, RoomSet,
};
use switchboard_router::{JoinRequest, Member, PublishReply, PublishRequest, RoomMsg};

use crate::auth::RoomGrants;
use crate::node::NodeCtx;
use crate::outbound::Outbound;
use crate::ratelimit::TokenBucket;

/// One connection's state, shared by its reader and its Session actor.
pub struct Conn {
    pub id: ConnId,
    pub user: Arc<str>,
    pub out: Arc<Outbound>,
    grants: Option<Arc<RoomGrants>>,
    /// Rooms joined (or being joined): for the rooms limit and leaving on
    /// close. Shared with the rooms, which take a room back out if its join
    /// is refused after routing.
    joined: Arc<Mutex<RoomSet>>,
    bucket: Mutex<TokenBucket>,
    slot: Mutex<Slot>,
    node: Arc<NodeCtx>,
}

/// The Session actor currently serving the connection, if any.
#[derive(Default)]
struct Slot {
    actor: Option<ActorRef<SessionMsg>>,
    /// Messages sent to it and not yet handled.
    pending: u32,
}

pub enum SessionMsg {
    /// The commands of one binary WebSocket message from the client.
    Commands(Vec<Result<Command, CommandError>>),
    /// Stop if nothing has happened for the passivation period.
    IdleCheck,
}

impl ractor::Message for SessionMsg {}

pub struct Session;

pub struct SessionState {
    conn: Arc<Conn>,
    last_active: Instant,
}

impl Conn {
    pub fn new(
        id: ConnId,
        user: Arc<str>,
        out: Arc<Outbound>,
        grants: Option<Arc<RoomGrants>>,
        node: Arc<NodeCtx>,
    ) -> Self {
        let limits = &node.settings.limits;
        let bucket = TokenBucket::new(limits.publish_per_s, limits.publish_burst);
        Self {
            id,
            user,
            out,
            grants,
            joined: Arc::new(Mutex::new(RoomSet::default())),
            bucket: Mutex::new(bucket),
            slot: Mutex::new(Slot::default()),
            node,
        }
    }

    pub fn node(&self) -> &Arc<NodeCtx> {
        &self.node
    }

    fn sink(&self) -> Arc<dyn EventSink> {
        self.out.clone()
    }

    /// Carries out a client message's commands: here, if none of them
    /// waits for an answer and nothing earlier is still with the Session;
    /// else by the Session, started if none runs.
    pub async fn deliver(self: &Arc<Self>, frame: Bytes) {
        let commands: Vec<_> = decode_commands(&frame).collect();
        if commands.iter().all(needs_no_actor) && self.slot.lock().pending == 0 {
            self.handle_commands(commands).await;
            return;
        }
        let mut msg = SessionMsg::Commands(commands);
        // Only this connection's reader sends here, so a Session started
        // below cannot race another start.
        for _ in 0..2 {
            let actor = {
                let mut slot = self.slot.lock();
                slot.actor.clone().inspect(|_| slot.pending += 1)
            };
            let actor = match actor {
                Some(a) => a,
                None => match self.start_session().await {
                    Some(a) => a,
                    None => return,
                },
            };
            match actor.cast(msg) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(back)) => {
                    // The Session died between lookup and send.
                    let mut slot = self.slot.lock();
                    slot.pending = 0;
                    slot.actor = None;
                    msg = back;
                }
                Err(_) => break,
            }
        }
        self.out.close(
            switchboard_protocol::CloseCode::Internal,
            "session unavailable",
        );
    }

    async fn start_session(self: &Arc<Self>) -> Option<ActorRef<SessionMsg>> {
        let parent = self.node.connections.get_cell();
        match Actor::spawn_linked(None, Session, self.clone(), parent).await {
            Ok((actor, _)) => {
                self.node.sessions.insert(actor.get_id(), self.clone());
                let mut slot = self.slot.lock();
                slot.actor = Some(actor.clone());
                slot.pending += 1;
                Some(actor)
            }
            Err(e) => {
                tracing::error!(conn = %self.id, error = %e, "cannot start session");
                None
            }
        }
    }

    /// The connection is gone: leave every room and presence, stop the Session.
    pub fn finish(&self) {
        let rooms = self.joined.lock().take();
        for room in rooms {
            self.node.rooms.cast_if_running(
                &room,
                RoomMsg::Leave {
                    conn: self.id,
                    ack: None,
                },
            );
        }
        self.node.presence.disconnect(self.id);
        if let Some(actor) = self.slot.lock().actor.take() {
            actor.stop(None);
        }
    }

    fn check_grant(&self, id: u64, room: &str) -> Result<(), CommandError> {
        match &self.grants {
            Some(g) if !g.allows(room) => Err(CommandError::new(
                id,
                ErrorCode::Forbidden,
                format!("room: {room:?} is not allowed by the token's rooms claim"),
            )),
            _ => Ok(()),
        }
    }

    pub async fn handle_commands(&self, commands: Vec<Result<Command, CommandError>>) {
        for cmd in commands {
            let result = match cmd {
                Ok(cmd) => self.handle(cmd).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                self.out.push(event::err(e.id, e.code, &e.reason));
            }
        }
    }

    async fn handle(&self, Command { id, kind }: Command) -> Result<(), CommandError> {
        let unavailable = |e: &dyn std::fmt::Display| {
            CommandError::new(id, ErrorCode::Unavailable, format!("room: {e}"))
        };
        match kind {
            CommandKind::Join {
                room,
                since,
                presence,
            } => {
                self.check_grant(id, &room)?;
                let room: Arc<str> = room.into();
                {
                    let mut joined = self.joined.lock();
                    let limit = self.node.settings.limits.rooms_per_connection;
                    if !joined.contains(&room) {
                        if joined.len() >= limit {
                            return Err(CommandError::new(
                                id,
                                ErrorCode::TooMany,
                                format!("room: rooms_per_connection limit ({limit}) reached"),
                            ));
                        }
                        joined.insert(room.clone());
                    }
                }
                let req = JoinRequest {
                    member: Member {
                        conn: self.id,
                        user: self.user.clone(),
                        sink: self.sink(),
                        presence_events: presence,
                    },
                    id,
                    since,
                    refused: Some(Box::new({
                        let joined = Arc::downgrade(&self.joined);
                        let room = room.clone();
                        move || {
                            if let Some(joined) = joined.upgrade() {
                                joined.lock().remove(&room);
                            }
                        }
                    })),
                };
                if let Err(e) = self
                    .node
                    .rooms
                    .cast(&room, RoomMsg::Join(Box::new(req)))
                    .await
                {
                    self.joined.lock().remove(&room);
                    return Err(unavailable(&e));
                }
            }
            CommandKind::Leave { room } => {
                self.joined.lock().remove(room.as_str());
                let ack = Some((id, self.sink()));
                let sent = self
                    .node
                    .rooms
                    .cast_if_running(&room, RoomMsg::Leave { conn: self.id, ack });
                if !sent && id != 0 {
                    self.out.push(event::ok(id));
                }
            }
            CommandKind::Pub { room, data, msg_id } => {
                self.check_grant(id, &room)?;
                if !self.bucket.lock().take(Instant::now()) {
                    let limits = &self.node.settings.limits;
                    return Err(CommandError::new(
                        id,
                        ErrorCode::TooMany,
                        format!(
                            "rate: publish_per_s limit ({}/s, burst {}) exceeded; not published",
                            limits.publish_per_s, limits.publish_burst
                        ),
                    ));
                }
                let reply = if id == 0 {
                    PublishReply::None
                } else {
                    PublishReply::Ok {
                        id,
                        sink: self.sink(),
                    }
                };
                let req = PublishRequest {
                    from: self.user.clone(),
                    data,
                    msg_id,
                    reply,
                    hops: 0,
                };
                self.node
                    .rooms
                    .cast(&room, RoomMsg::Publish(Box::new(req)))
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            CommandKind::Send { to, data } => {
                let (here, there) = crate::node::send_dm(&self.node, &self.user, &to, &data);
                let reply = move |delivered: u64| match delivered {
                    0 => Some(event::err(
                        id,
                        ErrorCode::NotFound,
                        &format!("to: user {to:?} is not online"),
                    )),
                    _ if id == 0 => None,
                    n => Some(event::ok_send(id, n)),
                };
                match there {
                    None => {
                        if let Some(r) = reply(here) {
                            self.out.push(r);
                        }
                    }
                    // Other nodes answer later: the connection's next
                    // commands do not wait for them; this reply comes when
                    // they did.
                    Some(there) => {
                        let out = self.out.clone();
                        tokio::spawn(async move {
                            if let Some(r) = reply(here + there.await) {
                                out.push(r);
                            }
                        });
                    }
                }
            }
            CommandKind::Presence { room } => {
                self.check_grant(id, &room)?;
                let users = self
                    .node
                    .presence
                    .users(&room)
                    .await
                    .map_err(|e| unavailable(&e))?;
                if id != 0 {
                    self.out.push(event::ok_presence(id, &room, &users));
                }
            }
            CommandKind::Ping => {
                self.out.push(event::pong(id));
            }
        }
        Ok(())
    }
}

/// A command carried out with checks and casts only (a bad one is an
/// error reply): it waits on no other actor's answer.
fn needs_no_actor(command: &Result<Command, CommandError>) -> bool {
    match command {
        Ok(c) => !matches!(
            c.kind,
            CommandKind::Send { .. } | CommandKind::Presence { .. }
        ),
        Err(_) => true,
    }
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = Arc<Conn>;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        conn: Arc<Conn>,
    ) -> Result<SessionState, ActorProcessingErr> {
        if let Some(after) = conn.node.settings.session.passivate() {
            myself.send_after(after, || SessionMsg::IdleCheck);
        }
        Ok(SessionState {
            conn,
            last_active: Instant::now(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Commands(commands) => {
                state.conn.handle_commands(commands).await;
                state.last_active = Instant::now();
                let mut slot = state.conn.slot.lock();
                slot.pending = slot.pending.saturating_sub(1);
            }
            SessionMsg::IdleCheck => {
                let Some(after) = state.conn.node.settings.session.passivate() else {
                    return Ok(());
                };
                let idle = state.last_active.elapsed();
                if idle < after {
                    myself.send_after(after - idle, || SessionMsg::IdleCheck);
                    return Ok(());
                }
                let mut slot = state.conn.slot.lock();
                let me = myself.get_id();
                if slot.pending == 0 && slot.actor.as_ref().is_some_and(|a| a.get_id() == me) {
                    slot.actor = None;
                    drop(slot);
                    myself.stop(Some("passivated".into()));
                } else {
                    drop(slot);
                    myself.send_after(after, || SessionMsg::IdleCheck);
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.conn.node.sessions.remove(&myself.get_id());
        Ok(())
    }
}

/// How long the writer waits on a socket that will not take more bytes once
/// the connection is closing.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
