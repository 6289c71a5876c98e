//! The opening handshake on `/ws`, byte by byte, against a real process:
//! what a client gets for every way of getting it wrong.

mod common;

use std::time::{Duration, Instant};

use common::{Server, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(extra: &str) -> String {
    format!(
        "GET /ws?user=hs HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}

/// Sends `request` and reads what comes back until the server closes.
async fn exchange_bytes(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .expect("the server did not close")
        .expect("read");
    resp
}

async fn exchange(addr: &str, request: &[u8]) -> String {
    String::from_utf8_lossy(&exchange_bytes(addr, request).await).into_owned()
}

#[tokio::test]
async fn refusals_name_the_problem() {
    let s = Server::start(&[]);
    let no_upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
    let r = exchange(&s.addr, no_upgrade.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    assert!(r.ends_with("expected a WebSocket upgrade\n"), "{r}");

    let r = exchange(&s.addr, upgrade("Sec-WebSocket-Version: 8\r\n").as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    assert!(r.contains("Sec-WebSocket-Version: 13\r\n"), "{r}");

    let no_key = "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Version: 13\r\n\r\n";
    let r = exchange(&s.addr, no_key.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("missing Sec-WebSocket-Key"), "{r}");

    let mut huge = upgrade("Sec-WebSocket-Version: 13\r\n");
    huge.insert_str(huge.len() - 2, &format!("X-Pad: {}\r\n", "a".repeat(9000)));
    let r = exchange(&s.addr, huge.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");

    let r = exchange(
        &s.addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");

    let bad_user = upgrade("Sec-WebSocket-Version: 13\r\n").replace("user=hs", "user=%ff");
    let r = exchange(&s.addr, bad_user.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
}

#[tokio::test]
async fn a_head_in_pieces_is_upgraded_and_the_hello_comes_with_the_101() {
    let s = Server::start(&[]);
    let req = upgrade("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: x, switchboard.v1\r\n");
    let mut sock = TcpStream::connect(&s.addr).await.expect("connect");
    for piece in req.as_bytes().chunks(17) {
        sock.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The 101 and the hello frame arrive together, in one read.
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
        .await
        .expect("timeout")
        .expect("read");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Sec-WebSocket-Protocol: switchboard.v1\r\n"),
        "{text}"
    );
    let head_end = text.find("\r\n\r\n").expect("end of head") + 4;
    assert!(n > head_end, "no hello after the 101");
    assert_eq!(buf[head_end], 0x82, "a binary frame follows the head");
    assert!(text[head_end..].contains("hello"), "{text}");
}

#[tokio::test]
async fn other_requests_still_reach_http_and_ws_must_come_first() {
    let s = Server::start(&[]);
    let two = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n{}",
        upgrade("Sec-WebSocket-Version: 13\r\nConnection: close\r\n")
    );
    let r = exchange(&s.addr, two.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\r\n\r\nok"), "{r}");
    assert!(
        r.contains("a WebSocket upgrade must be the connection's first request"),
        "{r}"
    );
}

#[tokio::test]
async fn a_client_that_never_sends_its_head_is_disconnected() {
    let s = Server::start(&[("SWITCHBOARD__LIMITS__HANDSHAKE_TIMEOUT_MS", "300")]);
    let started = Instant::now();
    let mut silent = TcpStream::connect(&s.addr).await.expect("connect");
    let mut half = TcpStream::connect(&s.addr).await.expect("connect");
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    for sock in [&mut silent, &mut half] {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(WAIT, sock.read_to_end(&mut buf))
            .await
            .expect("still open after the handshake timeout")
            .expect("read");
        assert_eq!(n, 0, "closed without an answer");
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [9u8, 8, 7, 6];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

#[tokio::test]
async fn echo_is_off_by_default_and_echoes_when_on() {
    let off = Server::start(&[]);
    let headers = [
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
    ];
    assert_eq!(off.http("GET", "/echo", &headers, b"").await.0, 404);

    let on = Server::start(&[("SWITCHBOARD__DEBUG__ECHO", "true")]);
    let mut req = upgrade("Sec-WebSocket-Version: 13\r\n")
        .replace("/ws?user=hs", "/echo")
        .into_bytes();
    req.extend(masked(0x1, "héllo".as_bytes()));
    req.extend(masked(0x2, &[0, 1, 2]));
    req.extend(masked(0x1, &[0xce, 0xba, 0xff]));
    let r = exchange_bytes(&on.addr, &req).await;
    let head_end = r
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a 101 head")
        + 4;
    assert!(r.starts_with(b"HTTP/1.1 101"));
    let body = &r[head_end..];
    let text = "héllo".as_bytes();
    let mut want = vec![0x81, text.len() as u8];
    want.extend(text);
    want.extend([0x82, 3, 0, 1, 2]);
    // Then a close with 1007: the third message is not UTF-8.
    want.extend([0x88]);
    assert_eq!(&body[..want.len()], &want[..], "{r:?}");
    assert_eq!(
        &body[want.len() + 1..want.len() + 3],
        &1007u16.to_be_bytes()
    );
}
