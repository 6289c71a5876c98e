//! A client that stays connected: [`Reconnecting`].
//!
//! One task (the driver) owns the connection. The handles send it commands
//! over a channel and await their answers; it sends the application
//! [`Event`]s over another. Everything that must survive a reconnection
//! (the rooms joined and their positions, the publications not yet
//! acknowledged) lives in the driver, so a new connection can be brought to
//! where the old one was: rooms rejoined with `since`, publications re-sent
//! with their `msg_id`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, Role, WebSocket, WebSocketWrite,
};
use rmpv::Value;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::prefixed::Prefixed;
use crate::since::{Delivery, Joined, Positions};
use crate::{encode_command, handshake, ClientError, ConnectOptions, Field};

pub use crate::since::Position;

/// The close code reported when a connection ended without a close frame
/// (network loss, a killed node, a ping that went unanswered): 1006, which
/// RFC 6455 reserves for exactly that and no peer ever sends.
pub const ABNORMAL_CLOSURE: u16 = 1006;

/// The close code of a draining node: reconnect at once, elsewhere.
const DRAINING: u16 = 1012;

/// Settings of a [`Reconnecting`] client. [`Default`] gives the documented
/// defaults.
#[derive(Debug, Clone)]
pub struct ReconnectOptions {
    /// The first reconnection delay's ceiling (default 250 ms). It doubles
    /// per failed attempt up to `backoff_cap`; each delay is drawn between
    /// zero and the ceiling (full jitter).
    pub backoff_base: Duration,
    /// The largest delay between attempts (default 10 s).
    pub backoff_cap: Duration,
    /// How often an application `ping` is sent (default 15 s).
    pub ping_interval: Duration,
    /// How long after a `ping` a connection that sent nothing at all is
    /// declared dead (default 10 s). Also bounds every write.
    pub ping_timeout: Duration,
    /// How long one attempt (credentials, TCP, upgrade, `hello`) may take
    /// (default 10 s).
    pub connect_timeout: Duration,
    /// Publications not yet acknowledged, at most (default 1024); one more
    /// is refused with [`ClientError::QueueFull`].
    pub max_queued: usize,
    /// Events the application has not taken yet, at most (default 1024).
    /// When full, the driver waits, and so stops reading the socket: the
    /// server then treats the client as a slow consumer (closes it with
    /// 1008) and it recovers the rooms after reconnecting.
    pub event_buffer: usize,
    /// How long a `join` or `pub` answered 503 (the room's home is moving
    /// between nodes) is retried, with backoff, before the error is handed
    /// over (default 30 s).
    pub retry_unavailable_for: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            ping_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_queued: 1024,
            event_buffer: 1024,
            retry_unavailable_for: Duration::from_secs(30),
        }
    }
}

/// What happens to the client, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An attempt to connect to `addr` starts. `attempt` (here and in
    /// [`Event::Reconnecting`]) counts the attempts that failed since the
    /// last connection that lasted a ping interval.
    Connecting { addr: String, attempt: u32 },
    /// Connected; rooms are being rejoined and publications re-sent.
    Connected {
        addr: String,
        node: String,
        conn: String,
    },
    /// The connection ended: the server's close code and reason, or
    /// [`ABNORMAL_CLOSURE`] with what went wrong.
    Disconnected { code: u16, reason: String },
    /// The next attempt starts after `delay` (zero after a draining node's
    /// 1012).
    Reconnecting { delay: Duration, attempt: u32 },
    /// A message of a joined room, each delivered once and in offset order.
    Message {
        room: String,
        epoch: String,
        offset: u64,
        from: String,
        data: Value,
    },
    /// A room was rejoined with `since` and recovered: what was missed
    /// follows as [`Event::Message`]s.
    Rejoined { room: String, epoch: String },
    /// A room was rejoined but its history could not be recovered (another
    /// epoch, or too old): messages were lost. Reload the room's state;
    /// messages continue after `offset` in `epoch`.
    NotRecovered {
        room: String,
        epoch: String,
        offset: u64,
    },
    /// The room's sequence restarted while joined (its home node changed
    /// and could not continue the epoch). As with
    /// [`Event::NotRecovered`], reload its state; messages continue after
    /// `offset` in `epoch`.
    Reset {
        room: String,
        epoch: String,
        offset: u64,
    },
    /// A rejoin was refused (e.g. 403 with a new token): the room is no
    /// longer joined.
    RejoinFailed {
        room: String,
        code: u16,
        reason: String,
    },
    /// A user's first connection joined a room.
    UserJoined { room: String, user: String },
    /// A user's last connection left a room.
    UserLeft { room: String, user: String },
    /// A direct message.
    Dm { from: String, data: Value },
}

/// A publication's acknowledgement: where the room's sequencer put it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub epoch: String,
    pub offset: u64,
    pub msg_id: String,
}

type Credentials = Box<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<ConnectOptions, ClientError>> + Send>>
        + Send
        + Sync,
>;

/// A handle on a client that reconnects by itself. Cheap to clone; the
/// connection ends with [`close`](Self::close) or when the last handle is
/// dropped.
#[derive(Debug, Clone)]
pub struct Reconnecting {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Command>,
    /// One permit per publication not yet acknowledged.
    queue: Arc<Semaphore>,
    max_queued: usize,
    /// Makes generated `msg_id`s unique to this client.
    msg_prefix: String,
    next_msg: AtomicU64,
}

/// The application's side of the event channel.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl Reconnecting {
    /// Starts a client that connects to `addrs` in turn (any nodes of one
    /// cluster, `host:port`), asking `credentials` for the user or token
    /// before every attempt (so that a token can be renewed). Returns at
    /// once; the connection's progress arrives as [`Event`]s. Must be called
    /// within a Tokio runtime.
    pub fn connect<F, Fut>(
        addrs: Vec<String>,
        credentials: F,
        options: ReconnectOptions,
    ) -> Result<(Reconnecting, Events), ClientError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ConnectOptions, ClientError>> + Send + 'static,
    {
        if addrs.is_empty() {
            return Err(ClientError::Protocol("no address to connect to".into()));
        }
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, rx) = mpsc::channel(options.event_buffer.max(1));
        let shared = Arc::new(Shared {
            commands,
            queue: Arc::new(Semaphore::new(options.max_queued)),
            max_queued: options.max_queued,
            msg_prefix: format!("{:016x}", fastrand::u64(..)),
            next_msg: AtomicU64::new(1),
        });
        let driver = Driver {
            addrs,
            next_addr: 0,
            credentials: Box::new(move || Box::pin(credentials())),
            backoff: Backoff::new(options.backoff_base, options.backoff_cap),
            options,
            commands: commands_rx,
            events: events_tx,
            positions: Positions::default(),
            rooms: BTreeMap::new(),
            pubs: BTreeMap::new(),
            next_pub: 0,
            inflight: HashMap::new(),
            next_id: 1,
            retry_due: None,
        };
        tokio::spawn(driver.run());
        Ok((Reconnecting { shared }, Events { rx }))
    }

    /// Joins `room` (now, or once connected) and keeps it joined across
    /// reconnections. Returns the position delivery continues after: the
    /// room's epoch and newest offset for a first join, the last message
    /// delivered for a room already joined.
    pub async fn join(&self, room: &str) -> Result<Position, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Join {
            room: room.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Leaves `room`; no message of it is delivered after this returns.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Leave {
            room: room.to_owned(),
            reply,
        })?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Publishes `data` to `room` with a generated `msg_id`; see
    /// [`publish_with_id`](Self::publish_with_id).
    pub async fn publish(&self, room: &str, data: Value) -> Result<Ack, ClientError> {
        let n = self.shared.next_msg.fetch_add(1, Ordering::Relaxed);
        let msg_id = format!("{}-{n}", self.shared.msg_prefix);
        self.publish_with_id(room, data, &msg_id).await
    }

    /// Publishes `data` to `room`; resolves once the room acknowledged it.
    /// Until then it is re-sent, with the same `msg_id` (so the room
    /// publishes it once), after every reconnection and after every 503
    /// (for up to [`ReconnectOptions::retry_unavailable_for`]). Publications
    /// are sent in call order; one retried after a 503 may be sequenced
    /// after later ones.
    pub async fn publish_with_id(
        &self,
        room: &str,
        data: Value,
        msg_id: &str,
    ) -> Result<Ack, ClientError> {
        let permit = match self.shared.queue.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                return Err(ClientError::QueueFull(self.shared.max_queued))
            }
            Err(TryAcquireError::Closed) => return Err(ClientError::Stopped),
        };
        let (reply, answer) = oneshot::channel();
        self.command(Command::Publish(Publication {
            room: room.to_owned(),
            data,
            msg_id: msg_id.to_owned(),
            reply,
            _permit: permit,
        }))?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Closes the connection (1000) and stops the driver: publications not
    /// yet acknowledged fail with [`ClientError::Stopped`], and the event
    /// stream ends. Returns once the driver has stopped.
    pub async fn close(&self) {
        let (done, stopped) = oneshot::channel();
        if self.command(Command::Close { done }).is_ok() {
            let _ = stopped.await;
        }
    }

    fn command(&self, command: Command) -> Result<(), ClientError> {
        self.shared
            .commands
            .send(command)
            .map_err(|_| ClientError::Stopped)
    }
}

enum Command {
    Join {
        room: String,
        reply: oneshot::Sender<Result<Position, ClientError>>,
    },
    Leave {
        room: String,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    Publish(Publication),
    Close {
        done: oneshot::Sender<()>,
    },
}

struct Publication {
    room: String,
    data: Value,
    msg_id: String,
    reply: oneshot::Sender<Result<Ack, ClientError>>,
    /// Returned to the queue when the publication is answered or dropped.
    _permit: OwnedSemaphorePermit,
}

/// A room the application wants joined.
#[derive(Default)]
struct Room {
    /// `join` calls waiting for the first `ok`.
    waiters: Vec<oneshot::Sender<Result<Position, ClientError>>>,
    /// The id of the `join` in flight: an answer to an earlier one (sent
    /// before a leave and a new join) says nothing about this membership.
    joining: Option<u64>,
    unavailable: Option<Unavailable>,
}

/// A publication not yet acknowledged.
struct Pending {
    publication: Publication,
    unavailable: Option<Unavailable>,
}

/// A command answered 503, being retried.
struct Unavailable {
    first: Instant,
    backoff: Backoff,
    /// When to send it again; `None` while it is in flight.
    at: Option<Instant>,
}

/// What a command id in flight stands for.
enum Inflight {
    Join(String),
    Leave(oneshot::Sender<Result<(), ClientError>>),
    /// A key of `Driver::pubs`.
    Pub(u64),
    Ping,
}

/// Told to stop: by [`Reconnecting::close`], which waits to be told the
/// driver is done, or (`None`) by the last handle dropped.
type Stop = Option<oneshot::Sender<()>>;

/// Why [`Driver::serve`] returned.
enum End {
    Dropped { code: u16, reason: String },
    Stop(Stop),
}

type Reader = FragmentCollectorRead<ReadHalf<Prefixed>>;
type Writer = WebSocketWrite<WriteHalf<Prefixed>>;

/// A frame from the server, owned.
enum Incoming {
    Binary(Bytes),
    Ping(Vec<u8>),
    Close { code: u16, reason: String },
    Other,
}

struct Driver {
    addrs: Vec<String>,
    next_addr: usize,
    credentials: Credentials,
    backoff: Backoff,
    options: ReconnectOptions,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    positions: Positions,
    rooms: BTreeMap<String, Room>,
    /// In call order (the key), which is the order they are (re)sent in.
    pubs: BTreeMap<u64, Pending>,
    next_pub: u64,
    /// Commands sent on the current connection and not answered yet.
    inflight: HashMap<u64, Inflight>,
    next_id: u64,
    /// The earliest [`Unavailable::at`].
    retry_due: Option<Instant>,
}

/// A random delay up to what a drain's close reason names
/// (`node draining; reconnect within 2000 ms`); none if it names nothing.
fn drain_spread(reason: &str) -> Duration {
    let within = reason
        .split_once("within ")
        .and_then(|(_, rest)| rest.strip_suffix(" ms"))
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(fastrand::u64(0..=within))
}

impl Driver {
    async fn run(mut self) {
        // `None` before the first attempt, which is no reconnection.
        let mut delay: Option<Duration> = None;
        loop {
            if let Some(delay) = delay {
                self.emit(Event::Reconnecting {
                    delay,
                    attempt: self.backoff.attempt(),
                })
                .await;
                if let Some(stop) = self.wait(delay).await {
                    return self.stop(None, stop).await;
                }
            }
            let addr = self.pick_addr();
            self.emit(Event::Connecting {
                addr: addr.clone(),
                attempt: self.backoff.attempt(),
            })
            .await;
            let (reader, mut writer, hello) = match self.open(&addr).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::warn!(%addr, error = %e, "connection attempt failed");
                    delay = Some(self.backoff.next_delay());
                    continue;
                }
                Err(stop) => return self.stop(None, stop).await,
            };
            let connected_at = Instant::now();
            tracing::info!(%addr, node = ?hello.str("node"), "connected");
            self.emit(Event::Connected {
                addr,
                node: hello.str("node").unwrap_or_default().to_owned(),
                conn: hello.str("conn").unwrap_or_default().to_owned(),
            })
            .await;
            match self.serve(reader, &mut writer).await {
                End::Stop(done) => return self.stop(Some(writer), done).await,
                End::Dropped { code, reason } => {
                    tracing::info!(code, %reason, "disconnected");
                    // Only a connection that lasted counts as a success: one
                    // a server accepts and drops at once must not be retried
                    // in a tight loop.
                    if connected_at.elapsed() >= self.options.ping_interval {
                        self.backoff.reset();
                    }
                    self.dropped();
                    let spread = drain_spread(&reason);
                    self.emit(Event::Disconnected { code, reason }).await;
                    // A draining node closed us on purpose, and the others
                    // are ready: no backoff, only the spread it asks for
                    // ("reconnect within N ms"), so that its clients do not
                    // all arrive at once.
                    delay = Some(if code == DRAINING {
                        spread
                    } else {
                        self.backoff.next_delay()
                    });
                }
            }
        }
    }

    fn pick_addr(&mut self) -> String {
        let addr = self
            .addrs
            .get(self.next_addr % self.addrs.len())
            .cloned()
            .unwrap_or_default();
        self.next_addr = self.next_addr.wrapping_add(1);
        addr
    }

    /// Waits `delay` while taking commands; `Some` if told to stop.
    async fn wait(&mut self, delay: Duration) -> Option<Stop> {
        let until = tokio::time::sleep(delay);
        tokio::pin!(until);
        loop {
            tokio::select! {
                _ = &mut until => return None,
                command = self.commands.recv() => {
                    if let Some(stop) = self.take_offline(command) {
                        return Some(stop);
                    }
                }
            }
        }
    }

    /// One attempt: credentials, TCP, upgrade, `hello`, within
    /// `connect_timeout`, taking commands meanwhile. `Err` if told to stop.
    async fn open(
        &mut self,
        addr: &str,
    ) -> Result<Result<(Reader, Writer, crate::Event), ClientError>, Stop> {
        let credentials = (self.credentials)();
        let attempt = tokio::time::timeout(self.options.connect_timeout, async move {
            let opts = credentials.await?;
            open(addr, &opts).await
        });
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                result = &mut attempt => {
                    return Ok(result.unwrap_or(Err(ClientError::Timeout)));
                }
                command = self.commands.recv() => {
                    if let Some(stop) = self.take_offline(command) {
                        return Err(stop);
                    }
                }
            }
        }
    }

    /// Takes a command while not connected; `Some` if it says stop.
    fn take_offline(&mut self, command: Option<Command>) -> Option<Stop> {
        match command {
            None => Some(None),
            Some(Command::Close { done }) => Some(Some(done)),
            Some(Command::Join { room, reply }) => {
                self.want(room, reply);
                None
            }
            Some(Command::Leave { room, reply }) => {
                self.unwant(&room);
                // The next connection will not join it: left already.
                let _ = reply.send(Ok(()));
                None
            }
            Some(Command::Publish(publication)) => {
                self.queue(publication);
                None
            }
        }
    }

    /// Records a `join` call; returns the room if a `join` must be sent
    /// (none is in flight or put off for it).
    fn want(
        &mut self,
        room: String,
        reply: oneshot::Sender<Result<Position, ClientError>>,
    ) -> Option<String> {
        if let Some(at) = self.positions.since(&room) {
            if self.rooms.contains_key(&room) {
                let _ = reply.send(Ok(at.clone()));
                return None;
            }
        }
        let entry = self.rooms.entry(room.clone()).or_default();
        let idle = entry.joining.is_none() && entry.unavailable.is_none();
        entry.waiters.push(reply);
        idle.then_some(room)
    }

    fn unwant(&mut self, room: &str) {
        if let Some(r) = self.rooms.remove(room) {
            for w in r.waiters {
                let _ = w.send(Err(ClientError::Protocol(
                    "left before the join was answered".into(),
                )));
            }
        }
        self.positions.forget(room);
    }

    fn queue(&mut self, publication: Publication) -> u64 {
        let key = self.next_pub;
        self.next_pub += 1;
        self.pubs.insert(
            key,
            Pending {
                publication,
                unavailable: None,
            },
        );
        key
    }

    /// Runs one connection until it drops or the client stops.
    async fn serve(&mut self, reader: Reader, writer: &mut Writer) -> End {
        let dropped = |e: ClientError| End::Dropped {
            code: ABNORMAL_CLOSURE,
            reason: e.to_string(),
        };
        // The new connection is brought to where the last one was: rooms
        // first, so that re-sent publications reach them as members.
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            if let Err(e) = self.send_join(writer, &room).await {
                return dropped(e);
            }
        }
        let keys: Vec<u64> = self.pubs.keys().copied().collect();
        for key in keys {
            if let Err(e) = self.send_pub(writer, key).await {
                return dropped(e);
            }
        }
        let mut reading = Box::pin(read_one(reader));
        let mut ping_at = Instant::now() + self.options.ping_interval;
        let mut pong_by: Option<Instant> = None;
        loop {
            let retry_at = self.retry_due;
            // Biased: a frame already read counts as a sign of life before
            // the ping timer is looked at.
            let step = tokio::select! {
                biased;
                (reader, incoming) = &mut reading => {
                    reading.set(read_one(reader));
                    pong_by = None;
                    match incoming {
                        Ok(incoming) => self.incoming(writer, incoming).await,
                        Err(e) => Err(dropped(e)),
                    }
                }
                command = self.commands.recv() => self.command(writer, command).await,
                _ = tokio::time::sleep_until(pong_by.unwrap_or(ping_at)), if pong_by.is_some() => {
                    Err(End::Dropped { code: ABNORMAL_CLOSURE, reason: "ping timeout".into() })
                }
                _ = tokio::time::sleep_until(ping_at) => {
                    ping_at = Instant::now() + self.options.ping_interval;
                    // A ping already waiting keeps its deadline: pings more
                    // frequent than the timeout must not postpone it.
                    pong_by.get_or_insert(Instant::now() + self.options.ping_timeout);
                    let id = self.id(Inflight::Ping);
                    self.write(writer, encode_command(&[("op", "ping".into()), ("id", id.into())]))
                        .await
                        .map_err(dropped)
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or(ping_at)), if retry_at.is_some() => {
                    self.retry(writer).await.map_err(dropped)
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn incoming(&mut self, writer: &mut Writer, incoming: Incoming) -> Result<(), End> {
        match incoming {
            Incoming::Binary(bytes) => {
                let events = crate::Event::decode_all(&bytes).map_err(|e| End::Dropped {
                    code: ABNORMAL_CLOSURE,
                    reason: e.to_string(),
                })?;
                for event in events {
                    self.event(event).await;
                }
                Ok(())
            }
            Incoming::Ping(payload) => self
                .write_frame(writer, Frame::pong(Payload::Owned(payload)))
                .await
                .map_err(|e| End::Dropped {
                    code: ABNORMAL_CLOSURE,
                    reason: e.to_string(),
                }),
            Incoming::Close { code, reason } => {
                // The echo completes the closing handshake; the socket is
                // dropped either way.
                let _ = self.write_frame(writer, Frame::close(code, b"")).await;
                Err(End::Dropped { code, reason })
            }
            Incoming::Other => Ok(()),
        }
    }

    async fn command(&mut self, writer: &mut Writer, command: Option<Command>) -> Result<(), End> {
        let sent = match command {
            None => return Err(End::Stop(None)),
            Some(Command::Close { done }) => return Err(End::Stop(Some(done))),
            Some(Command::Join { room, reply }) => match self.want(room, reply) {
                Some(room) => self.send_join(writer, &room).await,
                None => Ok(()),
            },
            Some(Command::Leave { room, reply }) => {
                self.unwant(&room);
                let id = self.id(Inflight::Leave(reply));
                self.write(
                    writer,
                    encode_command(&[
                        ("op", "leave".into()),
                        ("id", id.into()),
                        ("room", room.as_str().into()),
                    ]),
                )
                .await
            }
            Some(Command::Publish(publication)) => {
                let key = self.queue(publication);
                self.send_pub(writer, key).await
            }
        };
        sent.map_err(|e| End::Dropped {
            code: ABNORMAL_CLOSURE,
            reason: e.to_string(),
        })
    }

    /// One event from the server.
    async fn event(&mut self, event: crate::Event) {
        let room = || event.str("room").unwrap_or_default().to_owned();
        match event.op() {
            "ok" | "err" | "pong" => self.reply(&event).await,
            "msg" => {
                let offset = event.u64("offset").unwrap_or(0);
                match self.positions.deliver(&room(), offset) {
                    Delivery::Deliver { epoch } => {
                        self.emit(Event::Message {
                            room: room(),
                            epoch,
                            offset,
                            from: event.str("from").unwrap_or_default().to_owned(),
                            data: event.get("data").cloned().unwrap_or(Value::Nil),
                        })
                        .await
                    }
                    Delivery::Duplicate => {
                        tracing::debug!(room = %room(), offset, "already delivered");
                    }
                    Delivery::NotJoined => {
                        tracing::debug!(room = %room(), offset, "message of a room not joined");
                    }
                }
            }
            "reset" => {
                let epoch = event.str("epoch").unwrap_or_default().to_owned();
                let offset = event.u64("offset").unwrap_or(0);
                if self.positions.reset(&room(), &epoch, offset) {
                    tracing::info!(room = %room(), %epoch, offset, "room reset");
                    self.emit(Event::Reset {
                        room: room(),
                        epoch,
                        offset,
                    })
                    .await;
                }
            }
            "joined" | "left" => {
                let user = event.str("user").unwrap_or_default().to_owned();
                self.emit(if event.op() == "joined" {
                    Event::UserJoined { room: room(), user }
                } else {
                    Event::UserLeft { room: room(), user }
                })
                .await;
            }
            "dm" => {
                self.emit(Event::Dm {
                    from: event.str("from").unwrap_or_default().to_owned(),
                    data: event.get("data").cloned().unwrap_or(Value::Nil),
                })
                .await
            }
            op => tracing::debug!(op, "event ignored"),
        }
    }

    /// The answer to a command this connection sent.
    async fn reply(&mut self, event: &crate::Event) {
        let id = event.u64("id").unwrap_or(0);
        let Some(inflight) = self.inflight.remove(&id) else {
            tracing::warn!(?event, "answer to no command in flight");
            return;
        };
        let error = (event.op() == "err").then(|| {
            (
                u16::try_from(event.u64("code").unwrap_or(0)).unwrap_or(0),
                event.str("reason").unwrap_or_default().to_owned(),
            )
        });
        match inflight {
            Inflight::Ping => {}
            Inflight::Leave(reply) => {
                let _ = reply.send(match error {
                    None => Ok(()),
                    Some((code, reason)) => Err(ClientError::Server { code, reason }),
                });
            }
            Inflight::Join(room) => self.join_answered(room, id, event, error).await,
            Inflight::Pub(key) => self.pub_answered(key, event, error),
        }
    }

    async fn join_answered(
        &mut self,
        room: String,
        id: u64,
        event: &crate::Event,
        error: Option<(u16, String)>,
    ) {
        let Some(entry) = self.rooms.get_mut(&room).filter(|r| r.joining == Some(id)) else {
            // Left while the join was in flight; the leave follows it.
            return;
        };
        entry.joining = None;
        if let Some((code, reason)) = error {
            if code == 503
                && retry_later(&mut entry.unavailable, &self.options, &mut self.retry_due)
            {
                tracing::debug!(%room, "join answered 503; retrying");
                return;
            }
            let rejoin = self.positions.since(&room).is_some();
            self.unwant_with(&room, code, &reason);
            if rejoin {
                tracing::warn!(%room, code, %reason, "rejoin refused");
                self.emit(Event::RejoinFailed { room, code, reason }).await;
            }
            return;
        }
        entry.unavailable = None;
        let epoch = event.str("epoch").unwrap_or_default().to_owned();
        let offset = event.u64("offset").unwrap_or(0);
        let waiters = std::mem::take(&mut entry.waiters);
        let outcome = self
            .positions
            .joined(&room, &epoch, offset, event.bool("recovered"));
        let at = self.positions.since(&room).cloned();
        for w in waiters {
            let _ = w.send(at.clone().ok_or(ClientError::Stopped));
        }
        match outcome {
            Joined::Fresh => {}
            Joined::Recovered => self.emit(Event::Rejoined { room, epoch }).await,
            Joined::NotRecovered => {
                tracing::warn!(%room, %epoch, offset, "rejoined without recovering");
                self.emit(Event::NotRecovered {
                    room,
                    epoch,
                    offset,
                })
                .await
            }
        }
    }

    /// Forgets a room whose join was refused, telling its waiters.
    fn unwant_with(&mut self, room: &str, code: u16, reason: &str) {
        if let Some(r) = self.rooms.remove(room) {
            for w in r.waiters {
                let _ = w.send(Err(ClientError::Server {
                    code,
                    reason: reason.to_owned(),
                }));
            }
        }
        self.positions.forget(room);
    }

    fn pub_answered(&mut self, key: u64, event: &crate::Event, error: Option<(u16, String)>) {
        let Some(pending) = self.pubs.get_mut(&key) else {
            return;
        };
        if let Some((503, _)) = error {
            if retry_later(&mut pending.unavailable, &self.options, &mut self.retry_due) {
                tracing::debug!(msg_id = %pending.publication.msg_id, "pub answered 503; retrying");
                return;
            }
        }
        let Some(pending) = self.pubs.remove(&key) else {
            return;
        };
        let p = pending.publication;
        let answer = match error {
            Some((code, reason)) => Err(ClientError::Server { code, reason }),
            None => match event.u64("offset") {
                Some(offset) => Ok(Ack {
                    epoch: event.str("epoch").unwrap_or_default().to_owned(),
                    offset,
                    msg_id: p.msg_id,
                }),
                None => Err(ClientError::Protocol("pub ok without offset".into())),
            },
        };
        let _ = p.reply.send(answer);
    }

    /// Sends again what a 503 put off and is due.
    async fn retry(&mut self, writer: &mut Writer) -> Result<(), ClientError> {
        let now = Instant::now();
        self.retry_due = None;
        let due =
            |u: &Option<Unavailable>| u.as_ref().and_then(|u| u.at).is_some_and(|at| at <= now);
        let rooms: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| due(&r.unavailable))
            .map(|(name, _)| name.clone())
            .collect();
        let keys: Vec<u64> = self
            .pubs
            .iter()
            .filter(|(_, p)| due(&p.unavailable))
            .map(|(k, _)| *k)
            .collect();
        // What is not due yet keeps its time.
        let later = self
            .rooms
            .values()
            .map(|r| &r.unavailable)
            .chain(self.pubs.values().map(|p| &p.unavailable))
            .filter_map(|u| u.as_ref()?.at)
            .filter(|at| *at > now)
            .min();
        self.retry_due = later;
        for room in rooms {
            self.send_join(writer, &room).await?;
        }
        for key in keys {
            self.send_pub(writer, key).await?;
        }
        Ok(())
    }

    async fn send_join(&mut self, writer: &mut Writer, room: &str) -> Result<(), ClientError> {
        let mut fields: Vec<(&str, Field)> = vec![("op", "join".into()), ("room", room.into())];
        if let Some(at) = self.positions.since(room) {
            fields.push((
                "since",
                Field::Value(Value::Map(vec![
                    ("epoch".into(), at.epoch.as_str().into()),
                    ("offset".into(), at.offset.into()),
                ])),
            ));
        }
        let id = self.id(Inflight::Join(room.to_owned()));
        if let Some(r) = self.rooms.get_mut(room) {
            r.joining = Some(id);
            if let Some(u) = r.unavailable.as_mut() {
                u.at = None;
            }
        }
        fields.push(("id", id.into()));
        self.write(writer, encode_command(&fields)).await
    }

    async fn send_pub(&mut self, writer: &mut Writer, key: u64) -> Result<(), ClientError> {
        let Some(pending) = self.pubs.get_mut(&key) else {
            return Ok(());
        };
        if let Some(u) = pending.unavailable.as_mut() {
            u.at = None;
        }
        let p = &pending.publication;
        let mut command = vec![
            ("op", "pub".into()),
            ("room", p.room.as_str().into()),
            ("data", Field::Value(p.data.clone())),
            ("msg_id", p.msg_id.as_str().into()),
        ];
        command.push(("id", self.id(Inflight::Pub(key)).into()));
        let command = encode_command(&command);
        self.write(writer, command).await
    }

    /// Allocates a command id for `what`.
    fn id(&mut self, what: Inflight) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.inflight.insert(id, what);
        id
    }

    async fn write(&mut self, writer: &mut Writer, command: Vec<u8>) -> Result<(), ClientError> {
        self.write_frame(writer, Frame::binary(Payload::Owned(command)))
            .await
    }

    /// Writes one frame, within `ping_timeout`: a peer that stopped
    /// reading is as dead as one that stopped answering.
    async fn write_frame(&self, writer: &mut Writer, frame: Frame<'_>) -> Result<(), ClientError> {
        tokio::time::timeout(self.options.ping_timeout, writer.write_frame(frame))
            .await
            .map_err(|_| ClientError::Timeout)??;
        Ok(())
    }

    /// The connection is gone: what was in flight waits for the next one.
    fn dropped(&mut self) {
        for (_, inflight) in self.inflight.drain() {
            if let Inflight::Leave(reply) = inflight {
                // The next connection will not join it: left already.
                let _ = reply.send(Ok(()));
            }
        }
        // The next connection sends everything at once, 503s put off or not.
        for r in self.rooms.values_mut() {
            r.joining = None;
            r.unavailable = None;
        }
        for p in self.pubs.values_mut() {
            p.unavailable = None;
        }
        self.retry_due = None;
    }

    async fn stop(mut self, writer: Option<Writer>, done: Stop) {
        if let Some(mut writer) = writer {
            let _ = self.write_frame(&mut writer, Frame::close(1000, b"")).await;
            self.emit(Event::Disconnected {
                code: 1000,
                reason: "closed by the client".into(),
            })
            .await;
        }
        tracing::info!(
            unacknowledged = self.pubs.len(),
            "reconnecting client stopped"
        );
        // Dropping the replies fails every waiting call with Stopped.
        self.pubs.clear();
        self.rooms.clear();
        self.inflight.clear();
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    async fn emit(&self, event: Event) {
        // An application that dropped its `Events` does not want them.
        let _ = self.events.send(event).await;
    }
}

/// Schedules the retry of a command answered 503; false once it has been
/// unavailable for longer than `retry_unavailable_for`.
fn retry_later(
    unavailable: &mut Option<Unavailable>,
    options: &ReconnectOptions,
    retry_due: &mut Option<Instant>,
) -> bool {
    let now = Instant::now();
    let u = unavailable.get_or_insert_with(|| Unavailable {
        first: now,
        backoff: Backoff::new(options.backoff_base, options.backoff_cap),
        at: None,
    });
    if now.duration_since(u.first) > options.retry_unavailable_for {
        *unavailable = None;
        return false;
    }
    let at = now + u.backoff.next_delay();
    u.at = Some(at);
    *retry_due = Some(retry_due.map_or(at, |due| due.min(at)));
    true
}

/// Connects to `addr` and reads the `hello`.
async fn open(
    addr: &str,
    opts: &ConnectOptions,
) -> Result<(Reader, Writer, crate::Event), ClientError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (_, rest) = handshake::open(&mut stream, addr, opts).await?;
    let mut ws = WebSocket::after_handshake(Prefixed::new(rest, stream), Role::Client);
    // The read half cannot write: the driver answers pings and echoes the
    // close itself.
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    let (reader, mut writer) = ws.split(tokio::io::split);
    let mut reader = FragmentCollectorRead::new(reader);
    loop {
        let (r, incoming) = read_one(reader).await;
        reader = r;
        match incoming? {
            Incoming::Binary(bytes) => {
                let hello = crate::Event::decode_all(&bytes)?
                    .into_iter()
                    .next()
                    .filter(|e| e.op() == "hello")
                    .ok_or_else(|| ClientError::Protocol("the first event is not hello".into()))?;
                return Ok((reader, writer, hello));
            }
            Incoming::Ping(payload) => {
                writer
                    .write_frame(Frame::pong(Payload::Owned(payload)))
                    .await?;
            }
            Incoming::Close { code, reason } => return Err(ClientError::Closed { code, reason }),
            Incoming::Other => {}
        }
    }
}

/// Reads one message. Takes and gives back the reader so that the read
/// can live across the driver's select loop without being cancelled (a
/// frame half read would be lost).
async fn read_one(mut reader: Reader) -> (Reader, Result<Incoming, ClientError>) {
    let frame = reader
        .read_frame(&mut |_| std::future::ready(Ok::<(), std::io::Error>(())))
        .await;
    let incoming = match frame {
        Err(e) => Err(e.into()),
        Ok(frame) => match frame.opcode {
            OpCode::Binary => Ok(Incoming::Binary(Bytes::from(Vec::from(frame.payload)))),
            OpCode::Ping => Ok(Incoming::Ping(Vec::from(frame.payload))),
            OpCode::Close => {
                let (code, reason) = crate::close_code_and_reason(&frame.payload);
                Ok(Incoming::Close { code, reason })
            }
            OpCode::Text => Err(ClientError::Protocol("text frame from server".into())),
            _ => Ok(Incoming::Other),
        },
    };
    (reader, incoming)
}

#[cfg(test)]
mod tests {
    //! The driver against a scripted server: what a real cluster does only
    //! rarely (a `reset`) or never on cue.

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Accepts one connection and completes the upgrade.
    async fn accept(listener: &TcpListener) -> WebSocket<TcpStream> {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let accept = switchboard_protocol::handshake::accept_key(key.trim());
        stream
            .write_all(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut ws = WebSocket::after_handshake(stream, Role::Server);
        send(&mut ws, &[("op", "hello".into()), ("node", "fake".into())]).await;
        ws
    }

    async fn send(ws: &mut WebSocket<TcpStream>, fields: &[(&str, Field)]) {
        ws.write_frame(Frame::binary(Payload::Owned(encode_command(fields))))
            .await
            .unwrap();
    }

    /// The next command from the client.
    async fn command(ws: &mut WebSocket<TcpStream>) -> crate::Event {
        loop {
            let frame = ws.read_frame().await.unwrap();
            if frame.opcode == OpCode::Binary {
                let bytes = Bytes::from(Vec::from(frame.payload));
                return crate::Event::decode_all(&bytes).unwrap().remove(0);
            }
        }
    }

    fn msg(offset: u64) -> Vec<(&'static str, Field)> {
        vec![
            ("op", "msg".into()),
            ("room", "r".into()),
            ("offset", offset.into()),
            ("from", "a".into()),
            ("data", offset.into()),
        ]
    }

    fn message(epoch: &str, offset: u64) -> Event {
        Event::Message {
            room: "r".into(),
            epoch: epoch.into(),
            offset,
            from: "a".into(),
            data: offset.into(),
        }
    }

    /// The next event that is not about the connection's state.
    async fn next(events: &mut Events) -> Event {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .unwrap()
                .unwrap();
            if !matches!(ev, Event::Connecting { .. } | Event::Connected { .. }) {
                return ev;
            }
        }
    }

    #[tokio::test]
    async fn reset_and_not_recovered_are_events_and_positions_follow_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (client, mut events) = Reconnecting::connect(
            vec![addr],
            || async { Ok(ConnectOptions::user("u")) },
            ReconnectOptions::default(),
        )
        .unwrap();
        let server = tokio::spawn(async move {
            let mut ws = accept(&listener).await;
            let join = command(&mut ws).await;
            assert_eq!((join.op(), join.get("since")), ("join", None));
            let id = join.u64("id").unwrap();
            send(
                &mut ws,
                &[
                    ("op", "ok".into()),
                    ("id", id.into()),
                    ("room", "r".into()),
                    ("epoch", "e1".into()),
                    ("offset", 0.into()),
                ],
            )
            .await;
            send(&mut ws, &msg(1)).await;
            send(
                &mut ws,
                &[
                    ("op", "reset".into()),
                    ("room", "r".into()),
                    ("epoch", "e2".into()),
                    ("offset", 5.into()),
                ],
            )
            .await;
            for offset in [6, 6, 7] {
                send(&mut ws, &msg(offset)).await;
            }
            ws.write_frame(Frame::close(1012, b"node draining"))
                .await
                .unwrap();
            // The rejoin asks for what follows the last message delivered,
            // in the epoch of the reset.
            let mut ws = accept(&listener).await;
            let join = command(&mut ws).await;
            let since = join.get("since").unwrap().clone();
            assert_eq!(
                since,
                Value::Map(vec![
                    ("epoch".into(), "e2".into()),
                    ("offset".into(), 7.into())
                ])
            );
            send(
                &mut ws,
                &[
                    ("op", "ok".into()),
                    ("id", join.u64("id").unwrap().into()),
                    ("room", "r".into()),
                    ("epoch", "e3".into()),
                    ("offset", 2.into()),
                    ("recovered", Field::Value(Value::Boolean(false))),
                ],
            )
            .await;
            send(&mut ws, &msg(3)).await;
            ws
        });
        let at = client.join("r").await.unwrap();
        assert_eq!((at.epoch.as_str(), at.offset), ("e1", 0));
        let mut got = Vec::new();
        for _ in 0..8 {
            got.push(next(&mut events).await);
        }
        assert_eq!(
            got,
            vec![
                message("e1", 1),
                Event::Reset {
                    room: "r".into(),
                    epoch: "e2".into(),
                    offset: 5
                },
                message("e2", 6),
                message("e2", 7),
                Event::Disconnected {
                    code: 1012,
                    reason: "node draining".into()
                },
                Event::Reconnecting {
                    delay: Duration::ZERO,
                    attempt: 0
                },
                Event::NotRecovered {
                    room: "r".into(),
                    epoch: "e3".into(),
                    offset: 2
                },
                message("e3", 3),
            ]
        );
        let _ws = server.await.unwrap();
        client.close().await;
        assert_eq!(
            events.next().await,
            Some(Event::Disconnected {
                code: 1000,
                reason: "closed by the client".into()
            })
        );
        assert_eq!(events.next().await, None);
    }

    #[test]
    fn a_drain_close_is_followed_within_what_it_names() {
        for _ in 0..100 {
            let d = super::drain_spread("node draining; reconnect within 300 ms");
            assert!(d <= std::time::Duration::from_millis(300));
        }
        assert_eq!(
            super::drain_spread("node draining"),
            std::time::Duration::ZERO
        );
        assert_eq!(
            super::drain_spread("within soon ms"),
            std::time::Duration::ZERO
        );
    }
}
