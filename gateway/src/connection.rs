//! One WebSocket connection's I/O, in one task: it reads frames (holding no
//! buffer while the client is quiet), hands client messages to the Session,
//! and drains the outbound queue, coalescing everything queued into one
//! binary message per write. Writes never wait on reads or the other way
//! round: a socket that will not take more bytes only stalls its own queue,
//! which then overflows into a slow-consumer close.

use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_protocol::frames::{
    write_frame, write_header, FrameError, FrameReader, Incoming, OP_BINARY, OP_CLOSE, OP_PING,
    OP_PONG, OP_TEXT,
};
use switchboard_protocol::{event, CloseCode, ConnId, ErrorCode, EventSink};
use switchboard_telemetry::names;
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::node::NodeCtx;
use crate::outbound::{Batch, Closing, Outbound};
use crate::ratelimit::TokenBucket;
use crate::session::{Conn, CLOSE_GRACE};
use crate::transport::{Registration, Transport};

/// Largest WebSocket message the writer builds from coalesced events.
const COALESCE_BYTES: usize = 256 * 1024;

/// Unsent bytes (pongs, echoes, events) beyond which the connection stops
/// reading until the client has taken them: what the reader adds for the
/// client itself is held back by TCP, not buffered here. (The outbound
/// queue bounds events on its own, with a slow-consumer close.)
const MAX_UNSENT: usize = 1 << 20;

/// Bytes read from a socket in one go before they are handled: a client
/// that sends faster than it is served waits in the kernel's buffers.
const READ_BUDGET: usize = 256 * 1024;

/// Room made in the reader's buffer before each read.
const READ_CHUNK: usize = 4096;

/// What an upgraded connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws`: the Switchboard protocol.
    Ws,
    /// `/echo` (with `debug.echo`): every message sent back as it came, for
    /// the Autobahn conformance cases; the same reader, limits and writer.
    Echo,
}

/// Serves an upgraded connection until it closes. `response` is the `101`
/// (it leaves in one write with the `hello`); `read` holds bytes the client
/// sent after its request head.
pub async fn serve(
    node: Arc<NodeCtx>,
    stream: TcpStream,
    read: Vec<u8>,
    response: Vec<u8>,
    identity: Identity,
    endpoint: Endpoint,
    client: IpAddr,
) {
    let id = ConnId(fastrand::u64(1..));
    let limits = &node.settings.limits;
    let out = Arc::new(Outbound::new(limits.outbound_queue));
    let user: Arc<str> = identity.user.unwrap_or_else(|| format!("anon-{id}")).into();
    let conn = Arc::new(Conn::new(
        id,
        user.clone(),
        out.clone(),
        identity.grants,
        node.clone(),
    ));
    // Runs the cleanup even if this task panics.
    let registration = Registration::new(conn.clone(), Transport::Ws, client);
    let hb = &node.settings.heartbeat;
    if endpoint == Endpoint::Ws {
        node.presence.connect(id, user.clone(), out.clone());
        out.push(event::hello(
            &id.to_string(),
            &node.settings.node.name,
            &user,
            hb.interval_ms,
            limits.max_frame_bytes as u64,
            &node.reconnect_policy(),
        ));
    }

    let mut reader = FrameReader::new(limits.max_frame_bytes);
    if !read.is_empty() {
        reader.push(&read);
    }
    drop(read);
    let mut inbound = Inbound {
        reader,
        pings: TokenBucket::new(limits.pings_per_s, limits.pings_per_s.saturating_mul(2)),
        endpoint,
    };
    run(&stream, &mut inbound, &conn, hb.interval(), response).await;
    drop(registration);
}

/// What the connection is writing.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    written: usize,
    /// The close frame is in `bytes`: once they are out, the connection ends.
    closing: bool,
}

impl Pending {
    fn unsent(&self) -> usize {
        self.bytes.len() - self.written
    }
}

/// The reading side of a connection.
struct Inbound {
    reader: FrameReader,
    /// WebSocket pings the client may still send (`limits.pings_per_s`).
    pings: TokenBucket,
    endpoint: Endpoint,
}

async fn run(
    stream: &TcpStream,
    inbound: &mut Inbound,
    conn: &Arc<Conn>,
    heartbeat: Duration,
    response: Vec<u8>,
) {
    let endpoint = inbound.endpoint;
    let out = &conn.out;
    let mut pending = Pending {
        bytes: response,
        ..Pending::default()
    };
    // The `101` and the `hello` in one write.
    if endpoint == Endpoint::Ws {
        encode(out.next_batch().await, &mut pending);
    }
    if write_available(stream, &mut pending).is_err() {
        return;
    }
    let mut reading = true;
    let mut give_up: Option<tokio::time::Instant> = None;
    // One timer for the next WebSocket ping and, once closing, the moment
    // to give up on a stuck write: one Sleep in the task, no Interval (a
    // boxed Sleep of its own) and no second Sleep in the select.
    let mut next_ping = tokio::time::Instant::now() + heartbeat;
    let timer = tokio::time::sleep_until(next_ping);
    tokio::pin!(timer);
    // Bytes read with the request head.
    if !handle_messages(inbound, conn, &mut pending).await {
        reading = false;
    }
    loop {
        if pending.closing && pending.written == pending.bytes.len() {
            return;
        }
        let idle_writer = pending.bytes.is_empty();
        let wake_at = give_up.unwrap_or(next_ping);
        if timer.deadline() != wake_at {
            timer.as_mut().reset(wake_at);
        }
        tokio::select! {
            biased;
            // poll_fn rather than readable()/writable(): those futures are
            // 152 bytes each, and every idle connection's task holds them.
            ready = poll_fn(|cx| stream.poll_read_ready(cx)), if reading && pending.unsent() < MAX_UNSENT => {
                if ready.is_err() {
                    return;
                }
                match read_available(stream, &mut inbound.reader, out) {
                    Ok(true) => {}
                    // End of stream or a broken socket: the client is gone.
                    Ok(false) | Err(_) => return,
                }
                if !handle_messages(inbound, conn, &mut pending).await {
                    reading = false;
                }
            }
            batch = out.next_batch(), if idle_writer && !pending.closing => {
                encode(batch, &mut pending);
                if pending.closing {
                    give_up.get_or_insert(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                // Usually the socket takes it all at once: no need to wait
                // for writability first.
                if write_available(stream, &mut pending).is_err() {
                    return;
                }
            }
            ready = poll_fn(|cx| stream.poll_write_ready(cx)), if !idle_writer => {
                if ready.is_err() || write_available(stream, &mut pending).is_err() {
                    return;
                }
                // Messages held back while the client was not reading.
                if reading
                    && inbound.reader.buffered() > 0
                    && !handle_messages(inbound, conn, &mut pending).await
                {
                    reading = false;
                }
            }
            // Closing while a write is stuck: give the socket a moment.
            () = out.closing(), if give_up.is_none() && !idle_writer => {
                give_up = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = &mut timer => {
                if give_up.is_some() {
                    return;
                }
                if !pending.closing {
                    write_frame(&mut pending.bytes, OP_PING, &[]);
                }
                next_ping = tokio::time::Instant::now() + heartbeat;
            }
        }
    }
}

/// Reads what the socket has, up to [`READ_BUDGET`]; `Ok(false)` at end of
/// stream.
fn read_available(
    stream: &TcpStream,
    reader: &mut FrameReader,
    out: &Outbound,
) -> std::io::Result<bool> {
    let mut read = 0;
    while read < READ_BUDGET {
        // The reader's buffer is allocated here, for the read, and given
        // back by `next` once it is all parsed: a quiet client costs none.
        let buf = reader.read_buffer();
        buf.reserve(READ_CHUNK);
        match stream.try_read_buf(buf) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                read += n;
                out.touch();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Handles every complete message read so far; `false` once reading must
/// stop (the connection is closing).
async fn handle_messages(inbound: &mut Inbound, conn: &Arc<Conn>, pending: &mut Pending) -> bool {
    let out = &conn.out;
    let echo = inbound.endpoint == Endpoint::Echo;
    loop {
        // The rest waits, parsed later, until the client takes what it has.
        if pending.unsent() >= MAX_UNSENT {
            return true;
        }
        match inbound.reader.next() {
            Ok(None) => return true,
            Ok(Some(Incoming::Binary(payload))) if echo => {
                write_frame(&mut pending.bytes, OP_BINARY, &payload);
            }
            Ok(Some(Incoming::Text(payload))) if echo => {
                write_frame(&mut pending.bytes, OP_TEXT, &payload);
            }
            Err(FrameError::InvalidText) if echo => {
                out.close(CloseCode::InvalidPayload, "invalid UTF-8");
                return false;
            }
            // Boxed: carrying out a command may wait on a room or start a
            // Session, futures larger than all the rest of a connection's
            // state; inline, every idle connection's task would hold their
            // space (2,288 -> 1,424 bytes per connection task).
            Ok(Some(Incoming::Binary(payload))) => Box::pin(conn.deliver(payload)).await,
            Ok(Some(Incoming::Ping(payload))) => {
                if !inbound.pings.take(Instant::now()) {
                    out.close(CloseCode::Policy, "too many pings");
                    return false;
                }
                if !pending.closing {
                    write_frame(&mut pending.bytes, OP_PONG, &payload);
                }
            }
            Ok(Some(Incoming::Pong)) => {}
            Ok(Some(Incoming::Text(_))) | Err(FrameError::InvalidText) => {
                out.push(event::err(
                    0,
                    ErrorCode::BadRequest,
                    "message: text frames are not supported; send binary MessagePack",
                ));
                out.close(CloseCode::UnsupportedData, "text frames are not supported");
                return false;
            }
            Ok(Some(Incoming::Close(payload))) => {
                out.close_echo(payload);
                return false;
            }
            Err(FrameError::TooBig) => {
                out.close(CloseCode::TooBig, "message too big");
                return false;
            }
            Err(e @ (FrameError::Protocol(_) | FrameError::InvalidUtf8)) => {
                tracing::debug!(conn = %conn.id, error = %e, "websocket protocol error");
                out.close(CloseCode::ProtocolError, "protocol error");
                return false;
            }
        }
    }
}

/// Appends a batch: queued events as few binary messages, then the close.
fn encode(batch: Batch, pending: &mut Pending) {
    if !batch.events.is_empty() {
        let latency = metrics::histogram!(names::PUBLISH_TO_DELIVERY_SECONDS);
        let now = Instant::now();
        let mut events = batch.events.iter();
        while !events.as_slice().is_empty() {
            // As many events as fit in one message, and at least one.
            let (mut len, mut count) = (0, 0);
            for (ev, _) in events.clone() {
                if count > 0 && len + ev.len() > COALESCE_BYTES {
                    break;
                }
                len += ev.len();
                count += 1;
            }
            write_header(&mut pending.bytes, OP_BINARY, len);
            for (ev, published) in events.by_ref().take(count) {
                pending.bytes.extend_from_slice(ev);
                if let Some(at) = published {
                    latency.record(now.saturating_duration_since(*at).as_secs_f64());
                }
            }
        }
    }
    if let Some(closing) = batch.closing {
        match closing {
            Closing::Server(code, reason) => {
                let mut payload = code.code().to_be_bytes().to_vec();
                payload.extend_from_slice(reason.as_bytes());
                write_frame(&mut pending.bytes, OP_CLOSE, &payload);
            }
            Closing::Echo(payload) => write_frame(&mut pending.bytes, OP_CLOSE, &payload),
        }
        pending.closing = true;
    }
}

/// Writes what the socket takes; the buffer is freed once all is out.
fn write_available(stream: &TcpStream, pending: &mut Pending) -> std::io::Result<()> {
    while let Some(unsent) = pending
        .bytes
        .get(pending.written..)
        .filter(|u| !u.is_empty())
    {
        match stream.try_write(unsent) {
            Ok(n) => pending.written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    if !pending.closing {
        pending.bytes = Vec::new();
        pending.written = 0;
    }
    Ok(())
}
