//! The WebSocket opening handshake, written by hand: one write of the
//! request, reads until the end of the response head, and the bytes that
//! followed it (the server's first frames) handed back to be parsed.

use switchboard_protocol::handshake::{accept_key, client_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{ClientError, ConnectOptions};

/// A response head larger than this is not a WebSocket server's.
const MAX_HEAD: usize = 16 * 1024;

/// Sends the upgrade request and checks the response. Returns the selected
/// subprotocol and the bytes read past the response head.
pub(crate) async fn open(
    stream: &mut TcpStream,
    addr: &str,
    opts: &ConnectOptions,
) -> Result<(Option<String>, Vec<u8>), ClientError> {
    let key = client_key(fastrand::u128(..));
    stream
        .write_all(request(addr, &key, opts).as_bytes())
        .await?;
    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() > MAX_HEAD {
            return Err(ClientError::WebSocket("response head too large".into()));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::WebSocket(
                "connection closed during the handshake".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(ClientError::WebSocket(format!("bad response: {e}"))),
        };
        let status = resp.code.unwrap_or(0);
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        if status != 101 {
            let retry_after = header("Retry-After").and_then(|v| v.trim().parse().ok());
            return Err(ClientError::Refused {
                status,
                retry_after,
            });
        }
        if header("Sec-WebSocket-Accept") != Some(accept_key(&key).as_str()) {
            return Err(ClientError::WebSocket(
                "wrong or missing Sec-WebSocket-Accept".into(),
            ));
        }
        let subprotocol = header("Sec-WebSocket-Protocol").map(str::to_owned);
        return Ok((subprotocol, buf.split_off(head_len)));
    }
}

fn request(addr: &str, key: &str, opts: &ConnectOptions) -> String {
    let mut query = Vec::new();
    if let Some(u) = &opts.user {
        query.push(format!("user={}", encode_query(u)));
    }
    if let Some(t) = &opts.token {
        query.push(format!("token={}", encode_query(t)));
    }
    let path = if query.is_empty() {
        "/ws".to_owned()
    } else {
        format!("/ws?{}", query.join("&"))
    };
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if opts.subprotocol {
        req.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            switchboard_protocol::SUBPROTOCOL
        ));
    }
    if let Some(b) = &opts.bearer {
        req.push_str(&format!("Authorization: Bearer {b}\r\n"));
    }
    req.push_str("\r\n");
    req
}

fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
