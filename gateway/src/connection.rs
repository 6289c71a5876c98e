//! One WebSocket connection's I/O: a reader that hands client messages to
//! the Session, and a writer that drains the outbound queue, coalescing
//! everything queued into one binary message per write.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fastwebsockets::{
    FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use switchboard_protocol::{event, CloseCode, ConnId, ErrorCode, EventSink};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::node::NodeCtx;
use crate::outbound::{Batch, Closing, Outbound};
use crate::session::{Conn, CLOSE_GRACE};

type ReadStream = Prefixed<OwnedReadHalf>;
type WriteStream = OwnedWriteHalf;

/// Largest WebSocket message the writer builds from coalesced events.
const COALESCE_BYTES: usize = 256 * 1024;

/// Serves an upgraded connection until it closes.
pub async fn serve(
    node: Arc<NodeCtx>,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    id: ConnId,
    identity: Identity,
) {
    let (read, write) = match upgrade.await {
        Ok(ws) => match into_tcp(ws.into_inner().into_inner()) {
            Some(halves) => halves,
            None => {
                tracing::warn!(conn = %id, "upgraded connection is not TCP");
                return;
            }
        },
        Err(e) => {
            tracing::debug!(conn = %id, error = %e, "upgrade failed");
            return;
        }
    };
    let limits = &node.settings.limits;
    let (mut rd, wr) =
        fastwebsockets::after_handshake_split(read, write, fastwebsockets::Role::Server);
    // A message exactly at the limit is accepted; one byte more is not.
    rd.set_max_message_size(limits.max_frame_bytes + 1);
    let rd = FragmentCollectorRead::new(rd);

    let out = Arc::new(Outbound::new(limits.outbound_queue));
    let user: Arc<str> = identity.user.unwrap_or_else(|| format!("anon-{id}")).into();
    let conn = Arc::new(Conn::new(
        id,
        user.clone(),
        out.clone(),
        identity.grants,
        node.clone(),
    ));
    node.conns.insert(id, out.clone());
    metrics::gauge!("switchboard_connections").increment(1.0);
    metrics::counter!("switchboard_connections_opened_total").increment(1);
    node.presence.connect(id, user.clone(), out.clone());
    let hb = &node.settings.heartbeat;
    out.push(event::hello(
        &id.to_string(),
        &node.settings.node.name,
        &user,
        hb.interval_ms,
        limits.max_frame_bytes as u64,
    ));
    tracing::debug!(conn = %id, user = %user, "connected");

    let writer = tokio::spawn(write_loop(wr, out.clone(), hb.interval()));
    // Runs the cleanup even if the reader panics.
    let guard = Finish {
        conn: conn.clone(),
        node: node.clone(),
    };
    read_loop(rd, &conn, limits.max_frame_bytes).await;
    drop(guard);
    let _ = writer.await;
}

/// Leaves rooms and presence and updates the metrics when a connection ends.
struct Finish {
    conn: Arc<Conn>,
    node: Arc<NodeCtx>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let out = &self.conn.out;
        // A reader that ends without a close (the socket went away) still
        // has to stop the writer.
        let reason = match out.closing_reason() {
            Some(Closing::Server(code, _)) => code.label(),
            Some(Closing::Echo(_)) => "client_close",
            None => {
                out.close(CloseCode::Normal, "");
                "client_gone"
            }
        };
        self.conn.finish();
        self.node.conns.remove(&self.conn.id);
        metrics::gauge!("switchboard_connections").decrement(1.0);
        metrics::counter!("switchboard_connections_closed_total", "reason" => reason).increment(1);
        tracing::debug!(conn = %self.conn.id, reason, "closed");
    }
}

async fn read_loop(mut rd: FragmentCollectorRead<ReadStream>, conn: &Arc<Conn>, max_frame: usize) {
    let out = conn.out.clone();
    // Frames the protocol obliges us to send (pong, close echo) go through
    // the outbound queue so that only the writer writes.
    let obligated = {
        let out = out.clone();
        move |frame: Frame<'_>| {
            let payload = Bytes::from(Vec::from(frame.payload));
            match frame.opcode {
                OpCode::Pong => out.push_pong(payload),
                OpCode::Close => out.close_echo(payload),
                _ => {}
            }
            std::future::ready(Ok::<(), Infallible>(()))
        }
    };
    let mut obligated = obligated;
    loop {
        let frame = tokio::select! {
            biased;
            () = out.closing() => return,
            frame = rd.read_frame(&mut obligated) => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                match e {
                    WebSocketError::FrameTooLarge => {
                        out.close(CloseCode::TooBig, "message too big")
                    }
                    WebSocketError::IoError(_)
                    | WebSocketError::UnexpectedEOF
                    | WebSocketError::ConnectionClosed => {}
                    _ => out.close(CloseCode::ProtocolError, "protocol error"),
                }
                return;
            }
        };
        out.touch();
        match frame.opcode {
            OpCode::Binary => {
                let payload = match frame.payload {
                    Payload::Bytes(b) => b.freeze(),
                    other => Bytes::from(Vec::from(other)),
                };
                // Fragments are collected first, so the whole message is
                // checked here too.
                if payload.len() > max_frame {
                    out.close(CloseCode::TooBig, "message too big");
                    return;
                }
                conn.deliver(payload).await;
            }
            OpCode::Text => {
                out.push(event::err(
                    0,
                    ErrorCode::BadRequest,
                    "message: text frames are not supported; send binary MessagePack",
                ));
                out.close(CloseCode::UnsupportedData, "text frames are not supported");
                return;
            }
            OpCode::Close => return,
            _ => {}
        }
    }
}

async fn write_loop(mut wr: WebSocketWrite<WriteStream>, out: Arc<Outbound>, heartbeat: Duration) {
    let start = tokio::time::Instant::now() + heartbeat;
    let mut ping = tokio::time::interval_at(start, heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            batch = out.next_batch() => batch,
            _ = ping.tick() => {
                if write(&mut wr, &out, Frame::new(true, OpCode::Ping, None, Payload::Borrowed(&[]))).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if write_batch(&mut wr, &out, batch).await.is_err() {
            break;
        }
    }
    // The socket is done for (written to the end, or broken): make sure the
    // reader stops too.
    out.close(CloseCode::Normal, "");
}

/// Writes one batch; `Err` once the connection is finished.
async fn write_batch(
    wr: &mut WebSocketWrite<WriteStream>,
    out: &Outbound,
    batch: Batch,
) -> Result<(), ()> {
    for pong in batch.pongs {
        write(wr, out, Frame::pong(Payload::Owned(pong.to_vec()))).await?;
    }
    if !batch.events.is_empty() {
        let latency = metrics::histogram!("switchboard_publish_to_delivery_seconds");
        let mut events = batch.events.iter().peekable();
        while events.peek().is_some() {
            let mut buf = Vec::new();
            while let Some((ev, _)) = events.peek() {
                if !buf.is_empty() && buf.len() + ev.len() > COALESCE_BYTES {
                    break;
                }
                buf.extend_from_slice(ev);
                events.next();
            }
            write(wr, out, Frame::binary(Payload::Owned(buf))).await?;
        }
        let now = Instant::now();
        for published in batch.events.iter().filter_map(|(_, p)| *p) {
            latency.record(now.saturating_duration_since(published).as_secs_f64());
        }
    }
    match batch.closing {
        None => Ok(()),
        Some(closing) => {
            let frame = match &closing {
                Closing::Server(code, reason) => Frame::close(code.code(), reason.as_bytes()),
                Closing::Echo(payload) => Frame::close_raw(Payload::Owned(payload.to_vec())),
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, wr.write_frame(frame)).await;
            Err(())
        }
    }
}

/// Writes a frame, giving up shortly after the connection starts closing
/// if the socket will not take it (a client that stopped reading).
async fn write(
    wr: &mut WebSocketWrite<WriteStream>,
    out: &Outbound,
    frame: Frame<'_>,
) -> Result<(), ()> {
    tokio::select! {
        r = wr.write_frame(frame) => r.map_err(|_| ()),
        () = async {
            out.closing().await;
            tokio::time::sleep(CLOSE_GRACE).await;
        } => Err(()),
    }
}

/// Takes the TCP socket back from hyper once the upgrade is done, so that
/// no HTTP buffers or boxed I/O stay behind for the life of the connection;
/// bytes hyper had already read go first.
fn into_tcp(upgraded: Upgraded) -> Option<(ReadStream, WriteStream)> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    let (read, write) = parts.io.into_inner().into_split();
    let prefix = (!parts.read_buf.is_empty()).then_some(parts.read_buf);
    Some((
        Prefixed {
            prefix,
            inner: read,
        },
        write,
    ))
}

/// A reader that yields `prefix` before reading from `inner`.
pub struct Prefixed<R> {
    prefix: Option<Bytes>,
    inner: R,
}

impl<R: AsyncRead + Unpin> AsyncRead for Prefixed<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(prefix) = &mut self.prefix {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix.split_to(n));
            if prefix.is_empty() {
                self.prefix = None;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}
