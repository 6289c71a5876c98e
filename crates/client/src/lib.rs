//! A small async client for Switchboard, in two forms.
//!
//! [`Client`] is one connection, driven by the caller: commands are sent
//! with ids and their replies awaited; events that arrive meanwhile are
//! kept, in order, for [`Client::next_event`]. The tests use it to say
//! exactly what goes on the wire.
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::{Client, ConnectOptions};
//! let mut c = Client::connect("127.0.0.1:8080", ConnectOptions::user("alice")).await?;
//! let joined = c.join("lobby").await?;
//! let offset = c.publish("lobby", "hello".into()).await?;
//! let msg = c.next_op("msg", std::time::Duration::from_secs(1)).await?;
//! # let _ = (joined, offset, msg); Ok(()) }
//! ```
//!
//! [`Reconnecting`] is what an application wants: a cheap-to-clone handle on
//! a task that stays connected to any node of a cluster. It reconnects with
//! backoff and jitter (at once after a draining node's 1012), rejoins every
//! room with `since` and delivers each message once and in order, tells the
//! application when messages were lost ([`reconnect::Event::NotRecovered`],
//! [`reconnect::Event::Reset`]), and re-sends publications not yet
//! acknowledged with their `msg_id`, so each is published once
//! (docs/protocol.md, "A reconnecting client, step by step").
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::ClientError> {
//! use switchboard_client::reconnect::Event;
//! use switchboard_client::{ConnectOptions, ReconnectOptions, Reconnecting};
//!
//! let (client, mut events) = Reconnecting::connect(
//!     vec!["10.0.0.1:8080".into(), "10.0.0.2:8080".into()],
//!     // Asked before every attempt: a place to renew a token.
//!     || async { Ok(ConnectOptions::user("alice")) },
//!     ReconnectOptions::default(),
//! )?;
//! client.join("lobby").await?;
//! let ack = client.publish("lobby", "hello".into()).await?;
//! println!("published at {} in epoch {}", ack.offset, ack.epoch);
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message { room, offset, data, .. } => println!("{room} {offset}: {data}"),
//!         Event::NotRecovered { room, .. } | Event::Reset { room, .. } => {
//!             println!("{room}: messages were lost; reload its state")
//!         }
//!         Event::Disconnected { code, reason } => println!("disconnected ({code}: {reason})"),
//!         _ => {}
//!     }
//! }
//! client.close().await;
//! # Ok(()) }
//! ```

mod backoff;
mod event;
mod handshake;
mod prefixed;
pub mod reconnect;
mod since;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload, Role, WebSocket, WebSocketError};
use rmpv::Value;
use tokio::net::TcpStream;

use prefixed::Prefixed;

pub use backoff::Backoff;
pub use event::Event;
pub use reconnect::{Ack, Events, Position, ReconnectOptions, Reconnecting};

/// Errors at the client's boundary.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// `retry_after`: the seconds of a `Retry-After` header, if the answer
    /// had one (a node over `limits.connects_per_s` answers 503 with one).
    #[error("the server refused the upgrade with HTTP {status}")]
    Refused {
        status: u16,
        retry_after: Option<u64>,
    },
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("connection closed ({code}: {reason})")]
    Closed { code: u16, reason: String },
    #[error("timed out")]
    Timeout,
    #[error("bad event from server: {0}")]
    Protocol(String),
    #[error("server error {code}: {reason}")]
    Server { code: u16, reason: String },
    /// [`Reconnecting::publish`] with as many publications not yet
    /// acknowledged as [`ReconnectOptions::max_queued`] allows.
    #[error("the outgoing queue is full ({0} publications not yet acknowledged)")]
    QueueFull(usize),
    /// The [`Reconnecting`] client was closed.
    #[error("the client was closed")]
    Stopped,
}

impl From<WebSocketError> for ClientError {
    fn from(e: WebSocketError) -> Self {
        match e {
            WebSocketError::InvalidStatusCode(status) => ClientError::Refused {
                status,
                retry_after: None,
            },
            other => ClientError::WebSocket(other.to_string()),
        }
    }
}

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `?user=` (for `auth.mode = "none"`).
    pub user: Option<String>,
    /// `?token=`.
    pub token: Option<String>,
    /// `Authorization: Bearer`.
    pub bearer: Option<String>,
    /// Offer the `switchboard.v1` subprotocol.
    pub subprotocol: bool,
}

impl ConnectOptions {
    pub fn user(user: &str) -> Self {
        Self {
            user: Some(user.to_owned()),
            ..Self::default()
        }
    }
}

/// How long a command waits for its reply by default.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client.
pub struct Client {
    ws: FragmentCollector<Prefixed>,
    events: VecDeque<Event>,
    next_id: u64,
    /// The server's `hello`.
    pub hello: Event,
    /// The subprotocol the server selected.
    pub subprotocol: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("hello", &self.hello)
            .finish()
    }
}

impl Client {
    /// Connects to `addr` (`host:port`) at `/ws` and reads the `hello`.
    pub async fn connect(addr: &str, opts: ConnectOptions) -> Result<Client, ClientError> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (subprotocol, rest) = handshake::open(&mut stream, addr, &opts).await?;
        let ws = WebSocket::after_handshake(Prefixed::new(rest, stream), Role::Client);
        let mut ws = ws;
        // Pongs and close echoes are written by hand so that a write to a
        // socket the server already closed does not hide its close frame.
        ws.set_auto_pong(false);
        ws.set_auto_close(false);
        let mut client = Client {
            ws: FragmentCollector::new(ws),
            events: VecDeque::new(),
            next_id: 1,
            hello: Event::default(),
            subprotocol,
        };
        client.hello = client.next_op("hello", REPLY_TIMEOUT).await?;
        Ok(client)
    }

    /// Sends raw bytes as one binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.ws
            .write_frame(Frame::binary(Payload::Owned(bytes)))
            .await?;
        Ok(())
    }

    /// Sends a text message (which the protocol forbids; for tests).
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
            .await?;
        Ok(())
    }

    /// Allocates a command id.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends a command built from `fields` (an `id` is added) and waits for
    /// its reply (`ok`, `pong` or `err`, returned as an event).
    pub async fn request(&mut self, fields: Vec<(&str, Field)>) -> Result<Event, ClientError> {
        let id = self.next_id();
        let mut fields = fields;
        fields.push(("id", Field::Value(Value::from(id))));
        self.send_binary(encode_command(&fields)).await?;
        self.reply(id, REPLY_TIMEOUT).await
    }

    /// Like [`request`](Self::request), but an `err` reply is an error.
    pub async fn call(&mut self, fields: Vec<(&str, Field)>) -> Result<Event, ClientError> {
        let ev = self.request(fields).await?;
        if ev.op() == "err" {
            return Err(ClientError::Server {
                code: ev.u64("code").unwrap_or(0) as u16,
                reason: ev.str("reason").unwrap_or_default().to_owned(),
            });
        }
        Ok(ev)
    }

    /// Waits for the reply to command `id`, keeping other events.
    pub async fn reply(&mut self, id: u64, timeout: Duration) -> Result<Event, ClientError> {
        self.take_first(timeout, |e| {
            e.u64("id") == Some(id) && matches!(e.op(), "ok" | "err" | "pong")
        })
        .await
    }

    pub async fn join(&mut self, room: &str) -> Result<Event, ClientError> {
        self.call(vec![("op", "join".into()), ("room", room.into())])
            .await
    }

    /// Joins, asking for what was missed after `offset` of `epoch`.
    pub async fn join_since(
        &mut self,
        room: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<Event, ClientError> {
        let since = Value::Map(vec![
            ("epoch".into(), epoch.into()),
            ("offset".into(), offset.into()),
        ]);
        self.call(vec![
            ("op", "join".into()),
            ("room", room.into()),
            ("since", Field::Value(since)),
        ])
        .await
    }

    /// Joins without being sent the room's `joined` and `left` (for large
    /// rooms, where every join would otherwise reach every member).
    pub async fn join_quietly(&mut self, room: &str) -> Result<Event, ClientError> {
        self.call(vec![
            ("op", "join".into()),
            ("room", room.into()),
            ("presence", Field::Value(Value::Boolean(false))),
        ])
        .await
    }

    pub async fn leave(&mut self, room: &str) -> Result<Event, ClientError> {
        self.call(vec![("op", "leave".into()), ("room", room.into())])
            .await
    }

    /// Publishes `data`; returns the offset.
    pub async fn publish(&mut self, room: &str, data: Value) -> Result<u64, ClientError> {
        let fields = vec![
            ("op", "pub".into()),
            ("room", room.into()),
            ("data", Field::Value(data)),
        ];
        self.call_for(fields, "offset").await
    }

    /// Sends a direct message; returns how many connections got it.
    pub async fn send_to(&mut self, to: &str, data: Value) -> Result<u64, ClientError> {
        let fields = vec![
            ("op", "send".into()),
            ("to", to.into()),
            ("data", Field::Value(data)),
        ];
        self.call_for(fields, "delivered").await
    }

    /// Calls, then reads one unsigned field of the `ok`.
    async fn call_for(
        &mut self,
        fields: Vec<(&str, Field)>,
        key: &str,
    ) -> Result<u64, ClientError> {
        let ev = self.call(fields).await?;
        ev.u64(key)
            .ok_or_else(|| ClientError::Protocol(format!("ok without {key}")))
    }

    /// The users present in `room`.
    pub async fn presence(&mut self, room: &str) -> Result<Vec<String>, ClientError> {
        let ev = self
            .call(vec![("op", "presence".into()), ("room", room.into())])
            .await?;
        match ev.get("users") {
            Some(Value::Array(users)) => Ok(users
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()),
            _ => Err(ClientError::Protocol("presence without users".into())),
        }
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.call(vec![("op", "ping".into())]).await.map(drop)
    }

    /// The next event, in arrival order (replies to commands included if
    /// not yet taken).
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        if self.events.is_empty() {
            self.read_more(timeout).await?;
        }
        self.events
            .pop_front()
            .ok_or_else(|| ClientError::Protocol("no event".into()))
    }

    /// The next event with this `op`, skipping and keeping others.
    pub async fn next_op(&mut self, op: &str, timeout: Duration) -> Result<Event, ClientError> {
        self.take_first(timeout, |e| e.op() == op).await
    }

    /// The first event, queued or still to come, that `wanted` picks;
    /// the others stay queued in order.
    pub async fn next_matching(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        self.take_first(timeout, wanted).await
    }

    async fn take_first(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Event) -> bool,
    ) -> Result<Event, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.events.iter().position(&wanted) {
                if let Some(ev) = self.events.remove(pos) {
                    return Ok(ev);
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.read_more(left).await?;
        }
    }

    /// The next binary WebSocket message from the server, undecoded (for
    /// load generators; events already decoded stay queued). Pings are
    /// answered; a close is an error.
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Bytes, ClientError> {
        loop {
            let frame = tokio::time::timeout(timeout, self.ws.read_frame())
                .await
                .map_err(|_| ClientError::Timeout)??;
            match frame.opcode {
                OpCode::Binary => return Ok(Bytes::from(Vec::from(frame.payload))),
                OpCode::Ping => {
                    let payload = Vec::from(frame.payload);
                    let _ = self
                        .ws
                        .write_frame(Frame::pong(Payload::Owned(payload)))
                        .await;
                }
                OpCode::Close => {
                    return Err(ClientError::Closed {
                        code: 1000,
                        reason: String::new(),
                    })
                }
                _ => {}
            }
        }
    }

    /// Events received and not taken yet.
    pub fn pending(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// Reads until the server closes; returns its close code and reason.
    /// Events read meanwhile are kept.
    pub async fn closed(&mut self, timeout: Duration) -> Result<(u16, String), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_more(left).await {
                Ok(()) => {}
                Err(ClientError::Closed { code, reason }) => return Ok((code, reason)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a close frame.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.write_frame(Frame::close(1000, b"")).await?;
        Ok(())
    }

    /// Reads one WebSocket message and queues its events.
    async fn read_more(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let frame = tokio::time::timeout(timeout, self.ws.read_frame())
            .await
            .map_err(|_| ClientError::Timeout)??;
        match frame.opcode {
            OpCode::Binary => {
                let bytes = Bytes::from(Vec::from(frame.payload));
                for ev in Event::decode_all(&bytes)? {
                    self.events.push_back(ev);
                }
                Ok(())
            }
            OpCode::Ping => {
                let payload = Vec::from(frame.payload);
                let _ = self
                    .ws
                    .write_frame(Frame::pong(Payload::Owned(payload)))
                    .await;
                Ok(())
            }
            OpCode::Close => {
                let payload = Vec::from(frame.payload);
                let _ = self
                    .ws
                    .write_frame(Frame::close_raw(Payload::Owned(payload.clone())))
                    .await;
                let (code, reason) = close_code_and_reason(&payload);
                Err(ClientError::Closed { code, reason })
            }
            OpCode::Text => Err(ClientError::Protocol("text frame from server".into())),
            _ => Ok(()),
        }
    }
}

/// A close frame's code and reason (1005, "no status", when it has none).
fn close_code_and_reason(payload: &[u8]) -> (u16, String) {
    let code = payload
        .get(..2)
        .map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default()).into();
    (code, reason)
}

/// A command field: a value to encode, or MessagePack bytes to send as-is.
#[derive(Debug, Clone)]
pub enum Field {
    Value(Value),
    Raw(Vec<u8>),
}

impl From<&str> for Field {
    fn from(s: &str) -> Self {
        Field::Value(Value::from(s))
    }
}

impl From<u64> for Field {
    fn from(n: u64) -> Self {
        Field::Value(Value::from(n))
    }
}

/// Encodes one command map.
pub fn encode_command(fields: &[(&str, Field)]) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = rmp::encode::write_map_len(&mut buf, fields.len() as u32);
    for (k, v) in fields {
        let _ = rmp::encode::write_str(&mut buf, k);
        match v {
            Field::Value(v) => {
                let _ = rmpv::encode::write_value(&mut buf, v);
            }
            Field::Raw(raw) => buf.extend_from_slice(raw),
        }
    }
    buf
}
