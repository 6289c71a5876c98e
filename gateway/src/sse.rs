//! One Server-Sent Events stream (`GET /sse`), in one task: a room member
//! like a WebSocket connection whose queued events are written as
//! `text/event-stream`, each with the stream's position as its `id`, so
//! that a browser's `EventSource` resumes every room with `Last-Event-ID`.
//!
//! The stream ends when its member is closed (the node drains, the client
//! falls `limits.outbound_queue` behind, a room cannot be joined, presence
//! expires it) or the client goes; the browser then reconnects by itself.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::position::{Positions, Tracker};
use switchboard_protocol::{CloseCode, EventSink};
use tokio::net::TcpStream;

use crate::feed::Feed;
use crate::node::NodeCtx;
use crate::outbound::Outbound;
use crate::session::CLOSE_GRACE;
use crate::transport::Transport;

/// Bytes a client may send on a stream (it has nothing to say) read in one
/// go before they are dropped.
const DISCARD_BUDGET: usize = 64 * 1024;

/// Serves a stream whose request was checked, resuming from `from` (the
/// client's `Last-Event-ID`).
pub async fn serve(
    node: Arc<NodeCtx>,
    stream: TcpStream,
    feed: Feed,
    from: Positions,
    client: std::net::IpAddr,
) {
    keep_alive(&stream, &node);
    let (conn, registration) = feed.open(&node, &from, Transport::Sse, client).await;
    let mut tracker = Tracker::new(feed.rooms.clone(), from);
    let retry = node.settings.sse.retry_ms;
    let retry = retry + fastrand::u64(0..=retry / 2);
    let mut pending = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\nconnection: close\r\n\r\nretry: {retry}\n\n"
    )
    .into_bytes();
    feed.hello(&node, &conn).write_sse(&mut pending);
    drop(feed);
    run(
        &stream,
        &conn.out,
        &mut tracker,
        pending,
        node.settings.sse_keepalive(),
    )
    .await;
    drop(registration);
}

/// Dead clients are found by TCP: keepalive probes while the stream is idle,
/// and a bound on unacknowledged writes, both within the heartbeat timeout.
fn keep_alive(stream: &TcpStream, node: &NodeCtx) {
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
                for (event, _) in &batch.events {
                    match tracker.translate(event) {
                        Ok(texts) => {
                            for text in texts {
                                text.write_sse(&mut pending);
                                if text.fatal {
                                    out.close(CloseCode::Internal, "a room could not be joined");
                                }
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "an event has no JSON form"),
                    }
                }
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
