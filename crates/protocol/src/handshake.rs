//! The WebSocket opening handshake (RFC 6455 section 4): the request head a
//! client sends to `/ws` (or `/sse`), parsed here without I/O, and the `101`
//! answer.

use base64::Engine;
use sha1::{Digest, Sha1};

/// Longest request head accepted before the upgrade.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The parts of an HTTP/1.1 request head that an upgrade needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, including the blank line: what follows belongs to
    /// the connection (a client may not send frames before the `101`, but
    /// bytes already read must not be lost).
    pub len: usize,
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub query: Option<String>,
    /// `Upgrade: websocket` and a `Connection` header naming `upgrade`.
    pub upgrade: bool,
    /// `Sec-WebSocket-Version: 13`.
    pub version_13: bool,
    pub key: Option<String>,
    /// Every protocol named in `Sec-WebSocket-Protocol` headers.
    pub subprotocols: Vec<String>,
    pub authorization: Option<String>,
    /// `Last-Event-ID`: where a Server-Sent Events stream resumes.
    pub last_event_id: Option<String>,
    /// Every `Forwarded` header's value, joined with commas (see
    /// [`crate::proxy::forwarded_for`]); believed only from a trusted proxy.
    pub forwarded: Option<String>,
    /// Every `X-Forwarded-For` header's value, joined with commas (see
    /// [`crate::proxy::x_forwarded_for`]); believed only from a trusted proxy.
    pub x_forwarded_for: Option<String>,
}

/// Why a request head cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
}

/// Parses the head at the start of `buf`: `Ok(None)` until it is complete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(HeadError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let headers: &[httparse::Header<'_>] = req.headers;
    let values = |name| header_values(headers, name);
    let first = |name| values(name).next().map(|v| v.trim().to_owned());
    // Repeated headers are one comma-separated list (RFC 9110, 5.3).
    let joined = |name| {
        let all: Vec<&str> = values(name).map(str::trim).collect();
        (!all.is_empty()).then(|| all.join(", "))
    };
    let upgrade = values("upgrade").any(|v| has_token(v, "websocket"))
        && values("connection").any(|v| has_token(v, "upgrade"));
    Ok(Some(RequestHead {
        len,
        method: req.method.unwrap_or("").to_owned(),
        path: path.to_owned(),
        query,
        upgrade,
        version_13: first("sec-websocket-version").as_deref() == Some("13"),
        key: first("sec-websocket-key"),
        subprotocols: values("sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        authorization: first("authorization"),
        last_event_id: first("last-event-id"),
        forwarded: joined("forwarded"),
        x_forwarded_for: joined("x-forwarded-for"),
    }))
}

fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A client's `Sec-WebSocket-Key` from 16 random bytes.
pub fn client_key(nonce: u128) -> String {
    base64::engine::general_purpose::STANDARD.encode(nonce.to_be_bytes())
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The `101 Switching Protocols` head for a request with `key`.
pub fn switching_protocols(key: &str, subprotocol: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(key)
    );
    if let Some(p) = subprotocol {
        head.push_str("Sec-WebSocket-Protocol: ");
        head.push_str(p);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_an_upgrade_in_pieces() {
        let req = b"GET /ws?user=a HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\
            Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: k\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: a, switchboard.v1\r\n\r\nXY";
        assert_eq!(parse_request_head(&req[..20]), Ok(None));
        let head = parse_request_head(req).ok().flatten().expect("complete");
        assert_eq!(head.len, req.len() - 2);
        assert_eq!(head.path, "/ws");
        assert_eq!(head.query.as_deref(), Some("user=a"));
        assert!(head.upgrade && head.version_13);
        assert_eq!(head.subprotocols, ["a", "switchboard.v1"]);
        assert_eq!((head.forwarded, head.x_forwarded_for), (None, None));
    }

    #[test]
    fn repeated_forwarding_headers_are_one_list() {
        let req = b"GET /sse HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7\r\n\
            x-forwarded-for: 10.0.0.2 \r\nForwarded: for=192.0.2.1\r\n\r\n";
        let head = parse_request_head(req).ok().flatten().expect("complete");
        assert_eq!(
            head.x_forwarded_for.as_deref(),
            Some("203.0.113.7, 10.0.0.2")
        );
        assert_eq!(head.forwarded.as_deref(), Some("for=192.0.2.1"));
    }

    #[test]
    fn refuses_oversized_and_garbage_heads() {
        let mut big = b"GET /ws HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES + 10, b'a');
        assert_eq!(parse_request_head(&big), Err(HeadError::TooLarge));
        assert!(matches!(
            parse_request_head(b"\x16\x03\x01 hello\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }
}
