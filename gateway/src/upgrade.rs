//! The first request on each TCP connection (after the PROXY header, from a
//! trusted load balancer with `http.proxy_protocol`). A WebSocket upgrade to `/ws`
//! is answered here rather than by hyper: the `101` and the `hello` leave
//! in one write and no HTTP state stays behind. Anything else (probes, metrics, the server
//! API) goes to hyper together with the bytes already read.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use switchboard_protocol::handshake::{parse_request_head, HeadError, RequestHead};
use switchboard_protocol::proxy::{
    parse_proxy_header, starts_with_proxy_signature, ProxyHeader, ProxyHeaderError,
};
use switchboard_protocol::SUBPROTOCOL;
use switchboard_telemetry::names;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::auth::Identity;
use crate::client_addr::Origin;
use crate::connection::{self, Endpoint};
use crate::{http, Node};

/// Serves one accepted TCP connection until it closes.
pub async fn serve(mut stream: TcpStream, node: Node, mut origin: Origin) {
    let mut buf = Vec::new();
    // The PROXY header and the request head share one deadline.
    let deadline = tokio::time::Instant::now() + node.settings.limits.handshake_timeout();
    let settings = &node.settings.http;
    if origin.trusted && settings.proxy_protocol {
        match tokio::time::timeout_at(deadline, read_proxy_header(&mut stream, &mut buf)).await {
            Ok(Ok(Some(header))) => {
                origin.proxied = header.source.map(|s| s.ip().to_canonical());
                buf.drain(..header.len);
            }
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                // Closed without an answer: the other end is a load
                // balancer that got its own framing wrong, not a client.
                refused_proxy_header(origin.peer, &e.to_string());
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %origin.peer, "no PROXY header within limits.handshake_timeout_ms");
                return;
            }
        }
    }
    let head = match tokio::time::timeout_at(deadline, read_head(&mut stream, &mut buf)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            let client = origin.client(settings, None, None);
            return refuse(&mut stream, client, 431, "request head too large", "").await;
        }
        Ok(Err(e @ HeadError::Malformed(_))) => {
            let client = origin.client(settings, None, None);
            if starts_with_proxy_signature(&buf) {
                // From a peer not in http.trusted_proxies (or with
                // http.proxy_protocol off): nobody may say who it is.
                refused_proxy_header(origin.peer, "not expected from this peer");
                return refuse(
                    &mut stream,
                    client,
                    400,
                    "unexpected PROXY protocol header",
                    "",
                )
                .await;
            }
            return refuse(&mut stream, client, 400, &e.to_string(), "").await;
        }
        Err(_) => {
            tracing::debug!(peer = %origin.peer, "no request head within limits.handshake_timeout_ms");
            return;
        }
    };
    let client = origin.client(
        settings,
        head.forwarded.as_deref(),
        head.x_forwarded_for.as_deref(),
    );
    // A trusted proxy's connections were let through the accept loop: each
    // is limited here, by the client it is for.
    if origin.trusted && !node.connect_allowed(client) {
        drop((buf, head));
        tracing::debug!(client = %client, peer = %origin.peer, "refused: connection rate of this address");
        return refuse_busy(stream).await;
    }
    if head.path == "/sse" && head.method == "GET" {
        return sse(stream, buf, head, node, client).await;
    }
    let endpoint = match head.path.as_str() {
        "/ws" => Endpoint::Ws,
        "/echo" if node.settings.debug.echo => Endpoint::Echo,
        _ => return serve_http(stream, buf, node, origin).await,
    };
    if head.method != "GET" {
        return serve_http(stream, buf, node, origin).await;
    }
    match accept(&node, &head).and_then(|accepted| match endpoint {
        Endpoint::Ws => node.admit().map(|()| accepted).map_err(|s| {
            let busy = crate::feed::busy(s);
            Refusal {
                status: busy.status,
                reason: busy.reason,
                headers: format!("retry-after: {s}\r\n").into(),
            }
        }),
        Endpoint::Echo => Ok(accepted),
    }) {
        Ok((identity, response)) => {
            // A task of its own, so that nothing of the handshake (the
            // request, this future's larger state) stays behind for the
            // connection's life: 3.7 -> 3.0 KiB per idle connection.
            let rest = buf.split_off(head.len);
            drop((buf, head));
            tokio::spawn(connection::serve(
                node, stream, rest, response, identity, endpoint, client,
            ));
        }
        Err(Refusal {
            status,
            reason,
            headers,
        }) => refuse(&mut stream, client, status, &reason, &headers).await,
    }
}

/// Counts and logs a connection refused for its PROXY header.
fn refused_proxy_header(peer: IpAddr, why: &str) {
    ::metrics::counter!(names::CONNECTIONS_REFUSED_TOTAL, "reason" => "proxy_header").increment(1);
    tracing::debug!(peer = %peer, error = why, "refused: PROXY protocol header");
}

/// `GET /sse`: checked here, like an upgrade, so that a stream holds no
/// HTTP state for its life.
async fn sse(mut stream: TcpStream, buf: Vec<u8>, head: RequestHead, node: Node, client: IpAddr) {
    let checked = crate::sse::check(
        &node,
        head.query.as_deref(),
        head.authorization.as_deref(),
        head.last_event_id.as_deref(),
    );
    drop((buf, head));
    match checked {
        Ok((feed, from)) => {
            tokio::spawn(crate::sse::serve(node, stream, feed, from, client));
        }
        Err(e) => {
            let headers = e
                .retry_after
                .map(|s| format!("retry-after: {s}\r\n"))
                .unwrap_or_default();
            refuse(&mut stream, client, e.status, &e.reason, &headers).await;
        }
    }
}

/// Reads until a request head is complete; `Ok(None)` if the client left.
/// `buf` may hold bytes already (what followed a PROXY header).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<RequestHead>, HeadError> {
    read_until(stream, buf, parse_request_head).await
}

/// Reads until a PROXY header is complete; `Ok(None)` if the peer left.
/// Bytes read past the header (the request, often in the same segment)
/// stay in `buf` after it. A peer that sends no header is refused on its
/// first bytes, without waiting for more.
async fn read_proxy_header(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<ProxyHeader>, ProxyHeaderError> {
    read_until(stream, buf, parse_proxy_header).await
}

/// Reads into `buf` until `parse` finds what it looks for there (or an
/// error); `Ok(None)` if the peer left first.
async fn read_until<T, E>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<Option<T>, E> {
    use tokio::io::AsyncReadExt;
    loop {
        if !buf.is_empty() {
            if let Some(found) = parse(buf)? {
                return Ok(Some(found));
            }
        }
        buf.reserve(1024);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

struct Refusal {
    status: u16,
    reason: String,
    headers: std::borrow::Cow<'static, str>,
}

fn refusal(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        headers: "".into(),
    }
}

/// Checks an upgrade request; on success, who the client is and the `101`.
fn accept(node: &Node, head: &RequestHead) -> Result<(Identity, Vec<u8>), Refusal> {
    if node.draining.load(Ordering::SeqCst) {
        return Err(refusal(503, "draining: reconnect to another node"));
    }
    if !head.upgrade {
        return Err(refusal(426, "expected a WebSocket upgrade"));
    }
    if !head.version_13 {
        return Err(Refusal {
            headers: "Sec-WebSocket-Version: 13\r\n".into(),
            ..refusal(426, "Sec-WebSocket-Version must be 13")
        });
    }
    let Some(key) = head.key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(refusal(400, "missing Sec-WebSocket-Key"));
    };
    // Refused before the upgrade: nothing is upgraded for a bad token.
    let identity = node
        .auth
        .authenticate(head.query.as_deref(), head.authorization.as_deref())
        .map_err(|e| refusal(401, e.to_string()))?;
    let subprotocol = head
        .subprotocols
        .iter()
        .any(|p| p == SUBPROTOCOL)
        .then_some(SUBPROTOCOL);
    Ok((
        identity,
        switchboard_protocol::handshake::switching_protocols(key, subprotocol),
    ))
}

/// Answers with a status and a one-line reason, and closes.
async fn refuse(stream: &mut TcpStream, client: IpAddr, status: u16, reason: &str, headers: &str) {
    tracing::debug!(client = %client, status, reason, "refused");
    let _ = stream
        .write_all(closing_response(status, reason, headers).as_bytes())
        .await;
    let _ = stream.shutdown().await;
}

/// A plain-text answer, one line, after which the connection closes.
fn closing_response(status: u16, reason: &str, headers: &str) -> String {
    let text = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {text}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n{headers}\r\n{reason}\n",
        reason.len() + 1
    )
}

/// Answers a connection over `limits.connects_per_s_per_address` with 429
/// without reading its request, then reads (and drops) what the client sent
/// for a moment, so that closing does not reset the connection before the
/// client has read the answer.
pub async fn refuse_busy(mut stream: TcpStream) {
    let response = closing_response(
        429,
        "too many connections from this address; retry later",
        "retry-after: 1\r\n",
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Hands the connection to hyper, the bytes already read first. Each
/// request's client is found from its own headers: a proxy may send
/// several clients' requests over one kept-alive connection.
async fn serve_http(stream: TcpStream, read: Vec<u8>, node: Node, origin: Origin) {
    // Any request on it may be an event stream: a client gone from one is
    // then found as from a stream that came first (sse.rs).
    crate::sse::keep_alive(&stream, &node);
    let timeout = node.settings.limits.handshake_timeout();
    let service = service_fn(move |req| http::route(node.clone(), origin, req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(Rewind::new(read, stream)), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// A stream with bytes already read from it put back in front.
struct Rewind {
    prefix: Vec<u8>,
    at: usize,
    io: TcpStream,
}

impl Rewind {
    fn new(prefix: Vec<u8>, io: TcpStream) -> Self {
        Self { prefix, at: 0, io }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(rest) = self.prefix.get(self.at..).filter(|r| !r.is_empty()) {
            let (now, _) = rest.split_at(buf.remaining().min(rest.len()));
            buf.put_slice(now);
            let n = now.len();
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
