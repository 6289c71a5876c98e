//! One Server-Sent Events stream (`GET /sse`), in one task: a room member
//! like a WebSocket connection whose queued events are written as
//! `text/event-stream`, each with the stream's position as its `id`, so
//! that a browser's `EventSource` resumes every room with `Last-Event-ID`.
//!
//! A stream that is its connection's first request is written straight to
//! the socket ([`serve`]); one that follows other requests on a kept-alive
//! connection (clients that pool connections send it so) is hyper's
//! response body ([`serve_body`]).
//!
//! The stream ends when its member is closed (the node drains, the client
//! falls `limits.outbound_queue` behind, a room cannot be joined, presence
//! expires it) or the client goes; the browser then reconnects by itself.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::channel::Sender;
use switchboard_protocol::position::{Positions, Tracker};
use switchboard_protocol::{Bytes, CloseCode, EventSink};
use tokio::net::TcpStream;

use crate::auth::query_param;
use crate::feed::{Feed, Refused};
use crate::node::NodeCtx;
use crate::outbound::{Batch, Outbound};
use crate::session::CLOSE_GRACE;
use crate::transport::Transport;

/// Bytes a client may send on a stream (it has nothing to say) read in one
/// go before they are dropped.
const DISCARD_BUDGET: usize = 64 * 1024;

/// Checks a request for a stream: who, which rooms, from where
/// (`Last-Event-ID`, the header winning over the `last_event_id` query
/// parameter), and whether the node admits a new client now.
pub fn check(
    node: &NodeCtx,
    query: Option<&str>,
    authorization: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<(Feed, Positions), Refused> {
    let feed = Feed::parse(node, query, authorization)?;
    let query_id = query_param(query, "last_event_id")
        .map_err(|e| crate::feed::refused(400, e.to_string()))?;
    let id = last_event_id.map(str::to_owned).or(query_id);
    let from = feed.positions(id.as_deref().filter(|i| !i.is_empty()), "Last-Event-ID")?;
    node.admit().map_err(crate::feed::busy)?;
    Ok((feed, from))
}

/// The response headers of a stream.
pub const HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // Tells nginx not to buffer the stream.
    ("x-accel-buffering", "no"),
];

/// What a stream starts with: its `retry:` (jittered) and `hello`.
async fn open(
    node: &Arc<NodeCtx>,
    feed: Feed,
    from: Positions,
    client: std::net::IpAddr,
) -> (Stream, Vec<u8>) {
    let (conn, registration) = feed.open(node, &from, Transport::Sse, client).await;
    let tracker = Tracker::new(feed.rooms.clone(), from);
    let retry = node.settings.sse.retry_ms;
    let retry = retry + fastrand::u64(0..=retry / 2);
    let mut first = format!("retry: {retry}\n\n").into_bytes();
    feed.hello(node, &conn).write_sse(&mut first);
    let stream = Stream {
        conn,
        tracker,
        _registration: registration,
    };
    (stream, first)
}

/// A stream's member and where it is.
struct Stream {
    conn: Arc<crate::session::Conn>,
    tracker: Tracker,
    _registration: crate::transport::Registration,
}

/// Serves a stream whose request was checked, as its connection's first
/// request: written straight to the socket, which closes when it ends.
pub async fn serve(
    node: Arc<NodeCtx>,
    stream: TcpStream,
    feed: Feed,
    from: Positions,
    client: std::net::IpAddr,
) {
    keep_alive(&stream, &node);
    // Boxed, and freed once the rooms are joined: otherwise this task would
    // hold the space of the joins' future for the stream's life, a larger
    // allocation class per idle stream.
    let (mut member, first) = Box::pin(open(&node, feed, from, client)).await;
    run(
        &stream,
        &member.conn.out,
        &mut member.tracker,
        with_response_head(first),
        node.settings.sse_keepalive(),
    )
    .await;
}

/// The response head, then `first`, consumed: a buffer kept alive here
/// would stay with every idle stream for its life.
fn with_response_head(first: Vec<u8>) -> Vec<u8> {
    let mut pending = b"HTTP/1.1 200 OK\r\n".to_vec();
    for (name, value) in HEADERS {
        pending.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    pending.extend_from_slice(b"connection: close\r\n\r\n");
    pending.extend_from_slice(&first);
    pending
}

/// Serves a stream whose request was checked, on a connection hyper serves
/// (the request came after others on the same connection: clients that
/// pool connections do that): written as the response body, which hyper
/// sends chunked.
pub async fn serve_body(
    node: Arc<NodeCtx>,
    mut body: Sender<Bytes>,
    feed: Feed,
    from: Positions,
    client: std::net::IpAddr,
) {
    // Boxed for the same reason as in `serve`.
    let (mut stream, first) = Box::pin(open(&node, feed, from, client)).await;
    let out = &stream.conn.out;
    if !send(&mut body, out, first).await {
        return;
    }
    let mut keepalive = tokio::time::interval(node.settings.sse_keepalive());
    keepalive.reset();
    loop {
        let mut pending = Vec::new();
        let ending = tokio::select! {
            batch = out.next_batch() => {
                write_batch(&batch, out, &mut stream.tracker, &mut pending);
                batch.closing.is_some()
            }
            _ = keepalive.tick() => {
                // Alive for presence while the client takes what it is sent.
                out.touch();
                pending.extend_from_slice(b": keepalive\n\n");
                false
            }
        };
        if !pending.is_empty() && !send(&mut body, out, pending).await {
            return;
        }
        if ending {
            return;
        }
    }
}

/// Hands bytes to hyper once the client took the previous ones; once the
/// member is closing, the client gets CLOSE_GRACE more. `false`: the
/// stream is over.
async fn send(body: &mut Sender<Bytes>, out: &Outbound, bytes: Vec<u8>) -> bool {
    let gone = async {
        out.closing().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        sent = body.send_data(Bytes::from(bytes)) => sent.is_ok(),
        () = gone => false,
    }
}

/// Appends a batch's events in `text/event-stream` form.
fn write_batch(batch: &Batch, out: &Outbound, tracker: &mut Tracker, pending: &mut Vec<u8>) {
    for (event, _) in &batch.events {
        match tracker.translate(event) {
            Ok(texts) => {
                for text in texts {
                    text.write_sse(pending);
                    if text.fatal {
                        out.close(CloseCode::Internal, "a room could not be joined");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "an event has no JSON form"),
        }
    }
}

/// Dead clients are found by TCP: keepalive probes while the stream is idle,
/// and a bound on unacknowledged writes, both within the heartbeat timeout.
pub fn keep_alive(stream: &TcpStream, node: &NodeCtx) {
    let hb = &node.settings.heartbeat;
    let sock = socket2::SockRef::from(stream);
    let probes = socket2::TcpKeepalive::new()
        .with_time(hb.interval())
        .with_interval((hb.timeout() - hb.interval()) / 3)
        .with_retries(3);
    if let Err(e) = sock
        .set_tcp_keepalive(&probes)
        .and_then(|()| sock.set_tcp_user_timeout(Some(hb.timeout())))
    {
        tracing::debug!(error = %e, "cannot set TCP keepalive on a stream");
    }
}

async fn run(
    stream: &TcpStream,
    out: &Outbound,
    tracker: &mut Tracker,
    mut pending: Vec<u8>,
    keepalive: Duration,
) {
    let mut written = 0;
    let mut ending = false;
    let mut give_up: Option<tokio::time::Instant> = None;
    let mut next_keepalive = tokio::time::Instant::now() + keepalive;
    let timer = tokio::time::sleep_until(next_keepalive);
    tokio::pin!(timer);
    loop {
        if written == pending.len() {
            if ending {
                return;
            }
            pending = Vec::new();
            written = 0;
        }
        let idle_writer = pending.is_empty();
        let wake_at = give_up.unwrap_or(next_keepalive);
        if timer.deadline() != wake_at {
            timer.as_mut().reset(wake_at);
        }
        tokio::select! {
            biased;
            ready = poll_fn(|cx| stream.poll_read_ready(cx)) => {
                if ready.is_err() || !discard_input(stream) {
                    return;
                }
            }
            batch = out.next_batch(), if idle_writer && !ending => {
                write_batch(&batch, out, tracker, &mut pending);
                if batch.closing.is_some() {
                    ending = true;
                    give_up = Some(tokio::time::Instant::now() + CLOSE_GRACE);
                }
                if write_available(stream, &pending, &mut written).is_err() {
                    return;
                }
            }
            ready = poll_fn(|cx| stream.poll_write_ready(cx)), if !idle_writer => {
                if ready.is_err() || write_available(stream, &pending, &mut written).is_err() {
                    return;
                }
            }
            () = out.closing(), if give_up.is_none() && !idle_writer => {
                give_up = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = &mut timer => {
                if give_up.is_some() {
                    return;
                }
                // Alive for presence while the client takes what it is sent.
                if idle_writer {
                    out.touch();
                    pending.extend_from_slice(b": keepalive\n\n");
                    if write_available(stream, &pending, &mut written).is_err() {
                        return;
                    }
                }
                next_keepalive = tokio::time::Instant::now() + keepalive;
            }
        }
    }
}

/// Reads and drops what the client sent; `false` once it is gone.
fn discard_input(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    let mut read = 0;
    while read < DISCARD_BUDGET {
        match stream.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

fn write_available(stream: &TcpStream, pending: &[u8], written: &mut usize) -> std::io::Result<()> {
    while let Some(unsent) = pending.get(*written..).filter(|u| !u.is_empty()) {
        match stream.try_write(unsent) {
            Ok(n) => *written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    fn future_size5<A, B, C, D, E, F: Future>(_: &impl Fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size7<A, B, C, D, E, G, H, F: Future>(
        _: &impl Fn(A, B, C, D, E, G, H) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle stream's task holds its future: an idle stream should cost
    /// no more than an idle WebSocket connection (docs/benchmarks.md, "SSE
    /// next to WebSocket").
    #[test]
    fn a_streams_task_is_no_larger_than_a_connections() {
        let stream = future_size5(&super::serve);
        let connection = future_size7(&crate::connection::serve);
        assert!(
            stream <= connection,
            "sse::serve's future is {stream} bytes, connection::serve's {connection}"
        );
    }
}
