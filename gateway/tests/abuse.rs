//! Clients that misbehave on purpose, against a real process: each one is
//! refused or closed, and nobody else notices. (Frames at and over the size
//! limit, deeply nested MessagePack and invalid UTF-8 in room names are in
//! single_node.rs; a client that never finishes its request head, garbage
//! and invalid UTF-8 in user ids in handshake.rs.)

mod common;

use std::time::Duration;

use common::{Server, WAIT};
use switchboard_client::{encode_command, ClientError, ConnectOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_flood_of_connections_from_one_address_is_refused_with_429() {
    let s = Server::start(&[
        ("SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS", "5"),
        ("SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS", "10"),
    ]);
    let mut open = Vec::new();
    let mut refused = 0;
    for i in 0..40 {
        match s.connect(ConnectOptions::user(&format!("f{i}"))).await {
            Ok(c) => open.push(c),
            Err(ClientError::Refused { status: 429, .. }) => refused += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    // The burst, plus what refilled meanwhile; the rest refused.
    assert!((10..=20).contains(&open.len()), "{} accepted", open.len());
    assert_eq!(open.len() + refused, 40);
    // Those accepted work; after a pause the address may connect again.
    open[0].join("r").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.connect(ConnectOptions::user("later")).await.unwrap();
    assert_eq!(
        s.metric(r#"switchboard_connections_refused_total{reason="address_rate"}"#)
            .await,
        refused as f64
    );
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend(mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
    f
}

/// Opens a raw WebSocket to `/ws` and reads past the 101.
async fn raw_socket(addr: &str) -> TcpStream {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(
        b"GET /ws?user=flood HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    sock
}

/// Everything the server sends until it closes the connection.
async fn read_all(sock: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(WAIT, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server did not close the connection"),
        }
    }
}

/// The close code of the first close frame from the server in `bytes`.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let start = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut at = start;
    while at + 2 <= bytes.len() {
        let (op, len) = (bytes[at] & 0x0f, usize::from(bytes[at + 1] & 0x7f));
        let (len, header) = match len {
            126 => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            127 => return None,
            n => (n, 2),
        };
        if op == 0x8 {
            let p = &bytes[at + header..];
            return Some(u16::from_be_bytes([p[0], p[1]]));
        }
        at += header + len;
    }
    None
}

#[tokio::test]
async fn a_ping_flood_is_closed_with_1008_and_others_carry_on() {
    let s = Server::start(&[("SWITCHBOARD__LIMITS__PINGS_PER_S", "10")]);
    let mut member = s.client("calm").await;
    member.join("r").await.unwrap();

    let mut flood = raw_socket(&s.addr).await;
    let ping = masked(0x9, b"are you there");
    let mut burst = Vec::new();
    for _ in 0..5000 {
        burst.extend_from_slice(&ping);
    }
    // The server may close before all of it is written.
    let _ = flood.write_all(&burst).await;
    let answer = read_all(&mut flood).await;
    assert_eq!(close_code(&answer), Some(1008));

    member.publish("r", "still here".into()).await.unwrap();
    assert_eq!(
        member.next_op("msg", WAIT).await.unwrap().str("from"),
        Some("calm")
    );
}

#[tokio::test]
async fn a_client_that_sends_but_never_reads_is_held_back() {
    // Echo answers every message: for a client that never reads them, the
    // server stops reading once 1 MiB waits for it, so the client's own
    // writes stall (TCP backpressure) instead of the server buffering.
    let s = Server::start(&[("SWITCHBOARD__DEBUG__ECHO", "true")]);
    let mut sock = TcpStream::connect(&s.addr).await.unwrap();
    sock.write_all(
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let rss0 = s.rss_kib();
    let message = masked(0x2, &[7u8; 100]);
    let chunk: Vec<u8> = (0..600).flat_map(|_| message.clone()).collect();
    // The kernel's socket buffers on both sides take some megabytes; then
    // the writes must stall.
    let mut sent = 0usize;
    while sent < 256 << 20 {
        match tokio::time::timeout(Duration::from_secs(1), sock.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("closed instead of held back: {e}"),
            Err(_) => break,
        }
    }
    assert!(
        sent < 64 << 20,
        "the server took {} MB from a client that never read",
        sent >> 20
    );
    let rss1 = s.rss_kib();
    assert!(rss1 < rss0 + 16 * 1024, "{rss0} -> {rss1} KiB");
    // Everyone else is served meanwhile.
    let mut other = s.client("other").await;
    other.ping().await.unwrap();
}

#[tokio::test]
async fn many_rooms_on_one_node_and_all_retire_after_the_clients_leave() {
    let s = Server::start(&[
        ("SWITCHBOARD__HISTORY__TTL_S", "1"),
        ("SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS", "1000"),
    ]);
    let rss0 = s.rss_kib();
    let (conns, per_conn) = (40, 100);
    let mut clients = Vec::new();
    for c in 0..conns {
        let mut client = s.client(&format!("u{c}")).await;
        // One message of 100 joins, answered in order.
        let mut batch = Vec::new();
        for r in 0..per_conn {
            let room = format!("room-{c}-{r}");
            batch.extend(encode_command(&[
                ("op", "join".into()),
                ("id", ((r + 1) as u64).into()),
                ("room", room.as_str().into()),
            ]));
        }
        client.send_binary(batch).await.unwrap();
        client.reply(per_conn as u64, WAIT).await.unwrap();
        clients.push(client);
    }
    let rooms = (conns * per_conn) as f64;
    s.wait_metric("switchboard_rooms", rooms, WAIT).await;
    let per_room = (s.rss_kib().saturating_sub(rss0)) as f64 / rooms;
    // A Room actor and its entries (about 16 KiB in a debug build): bounded,
    // with no per-room buffers sized by the limits.
    assert!(per_room < 48.0, "{per_room:.1} KiB per room");
    // Every room still answers.
    clients[7].publish("room-7-99", "x".into()).await.unwrap();

    drop(clients);
    s.wait_metric("switchboard_connections{transport=\"ws\"}", 0.0, WAIT)
        .await;
    s.wait_metric("switchboard_rooms", 0.0, Duration::from_secs(15))
        .await;
    s.wait_metric("switchboard_presence_users", 0.0, WAIT).await;
}

/// A reconnect storm: beyond `limits.connects_per_s` (and its burst) new
/// clients of every transport get 503 with a Retry-After, while probes,
/// metrics and the clients already connected are served as before.
#[tokio::test]
async fn beyond_the_node_admission_rate_new_clients_get_503_and_retry_after() {
    let s = Server::start(&[
        ("SWITCHBOARD__LIMITS__CONNECTS_PER_S", "1"),
        ("SWITCHBOARD__LIMITS__CONNECT_BURST", "3"),
    ]);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..6 {
        match s.connect(ConnectOptions::user(&format!("s{i}"))).await {
            Ok(c) => admitted.push(c),
            Err(ClientError::Refused {
                status: 503,
                retry_after,
            }) => {
                // The client reads the Retry-After it is told.
                assert!(matches!(retry_after, Some(1..=4)), "{retry_after:?}");
                refused += 1;
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert!(
        (3..=4).contains(&admitted.len()),
        "{} admitted",
        admitted.len()
    );
    // The hello tells every client the reconnection policy to follow.
    let policy = admitted[0]
        .hello
        .get("reconnect")
        .expect("reconnect in hello");
    assert_eq!(
        policy.to_string(),
        r#"{"base_ms": 500, "max_ms": 30000, "jitter": "full", "after_drain_ms": 2000}"#
    );
    // The raw answer, for every transport: 503 and a Retry-After of 1 to 4 s.
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    for (path, headers) in [
        ("/ws?user=x", &upgrade[..]),
        ("/sse?rooms=r&user=x", &[][..]),
        ("/poll?rooms=r&user=x", &[][..]),
    ] {
        let (status, head) = raw_head(&s.addr, path, headers).await;
        assert_eq!(status, 503, "{path}: {head}");
        let retry: u32 = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("retry-after: ")
                    .map(str::to_owned)
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{path}: no Retry-After in {head}"));
        assert!((1..=4).contains(&retry), "{path}: Retry-After {retry}");
        refused += 1;
    }
    // Not shed: probes, metrics, and the connected clients.
    assert_eq!(s.http("GET", "/healthz", &[], b"").await.0, 200);
    admitted[0].join("r").await.unwrap();
    admitted[0].publish("r", 1.into()).await.unwrap();
    assert_eq!(
        s.metric(r#"switchboard_connections_refused_total{reason="node_rate"}"#)
            .await,
        refused as f64
    );
    // The allowance refills: a client that retries later gets in.
    let mut later = None;
    for _ in 0..30 {
        if let Ok(c) = s.connect(ConnectOptions::user("later")).await {
            later = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(later.is_some(), "never admitted again");
}

/// One request; the status and the response head.
async fn raw_head(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, sock.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let head = resp.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    (
        resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
        head,
    )
}

// Clients behind proxies. The tests open TCP from 127.0.0.1 and write what
// a proxy would (a PROXY header, X-Forwarded-For); 127.0.0.2 is a client of
// its own (any 127/8 address reaches the loopback listener), used to scrape
// the metrics without touching 127.0.0.1's allowance.

const DIRECT: &str = "127.0.0.2";

/// A WebSocket upgrade request with extra header lines.
fn upgrade_request(extra: &str) -> Vec<u8> {
    format!(
        "GET /ws?user=behind HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn get_request(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").into_bytes()
}

/// Writes `bytes` on a new connection and reads the answer's status; 0 if
/// the server closed the connection without one.
async fn status_of(sock: &mut TcpStream, bytes: &[u8]) -> u16 {
    // The server may close before all of it is written (a refused header).
    let _ = sock.write_all(bytes).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(WAIT, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return 0,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within {WAIT:?}"),
        }
    }
    std::str::from_utf8(&got[9..12]).unwrap().parse().unwrap()
}

/// The status of `bytes` sent on a new connection from 127.0.0.1 (what a
/// proxy on this host opens).
async fn via_proxy(addr: &str, bytes: &[u8]) -> u16 {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    status_of(&mut sock, bytes).await
}

/// Sends `bytes` until the answer is 429, at most `tries` times; returns
/// the statuses before it (a token refills each second, so a few may pass
/// between the burst and the refusal on a slow machine).
async fn until_429(addr: &str, bytes: &[u8], tries: usize) -> Vec<u16> {
    let mut before = Vec::new();
    for _ in 0..tries {
        match via_proxy(addr, bytes).await {
            429 => return before,
            s => before.push(s),
        }
    }
    panic!("never refused with 429 in {tries} tries: {before:?}");
}

fn xff(ip: &str) -> String {
    format!("X-Forwarded-For: 198.51.100.250, {ip}\r\n")
}

fn proxy_v1(ip: &str) -> Vec<u8> {
    let family = if ip.contains(':') { "TCP6" } else { "TCP4" };
    let dst = if ip.contains(':') { "::1" } else { "127.0.0.1" };
    format!("PROXY {family} {ip} {dst} 40000 8080\r\n").into_bytes()
}

fn proxy_v2(command: u8, ip: [u8; 4]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend([0x20 | command, 0x11, 0, 12]);
    h.extend(ip);
    h.extend([127, 0, 0, 1]);
    h.extend(40000u16.to_be_bytes());
    h.extend(8080u16.to_be_bytes());
    h
}

fn cat(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

const SLOW_LIMIT: [(&str, &str); 2] = [
    ("SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS", "1"),
    ("SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS", "10"),
];

/// Statuses that may pass on an address whose allowance is used up: a token
/// comes back each second, so fewer than this many unless the machine
/// takes seconds per connection (a fresh address has `BURST`).
const STILL_REFUSED: usize = 5;
const BURST: usize = 10;

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_limited_by_their_forwarded_address() {
    let mut env = SLOW_LIMIT.to_vec();
    env.push(("SWITCHBOARD__HTTP__TRUSTED_PROXIES", "127.0.0.1/32"));
    let s = Server::start(&env);
    let (a, b) = ("203.0.113.7", "203.0.113.8");

    // a's burst, then 429 for a: a's allowance, not the proxy's (the
    // proxy's is untouched: see the end).
    for _ in 0..BURST {
        assert_eq!(via_proxy(&s.addr, &upgrade_request(&xff(a))).await, 101);
    }
    let passed = until_429(&s.addr, &upgrade_request(&xff(a)), 20).await;
    assert!(passed.iter().all(|st| *st == 101), "{passed:?}");
    let mut refused = 1;
    // b, through the same proxy, has its own: a WebSocket, an event stream
    // and an HTTP request, while a is still refused on each.
    assert_eq!(via_proxy(&s.addr, &upgrade_request(&xff(b))).await, 101);
    let sse = get_request("/sse?rooms=r&user=b", &xff(b));
    assert_eq!(via_proxy(&s.addr, &sse).await, 200);
    let health = get_request("/healthz", &format!("Forwarded: for=\"{b}:4711\"\r\n"));
    assert_eq!(via_proxy(&s.addr, &health).await, 200);
    for request in [
        get_request("/sse?rooms=r&user=a", &xff(a)),
        get_request("/healthz", &format!("Forwarded: for={a}\r\n")),
    ] {
        let passed = until_429(&s.addr, &request, 20).await;
        refused += 1;
        assert!(passed.len() < STILL_REFUSED, "{passed:?}");
    }
    // The proxy's own requests (no forwarding header) are its own.
    assert_eq!(via_proxy(&s.addr, &get_request("/healthz", "")).await, 200);
    assert_eq!(
        s.metric_from(
            DIRECT,
            r#"switchboard_connections_refused_total{reason="address_rate"}"#
        )
        .await,
        refused as f64
    );
}

#[tokio::test]
async fn a_forged_x_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    let mut env = SLOW_LIMIT.to_vec();
    env.push(("SWITCHBOARD__HTTP__TRUSTED_PROXIES", "10.0.0.0/8"));
    let s = Server::start(&env);
    // A PROXY header from a peer that is not a trusted proxy: 400.
    let forged = cat(&proxy_v1("203.0.113.50"), &get_request("/healthz", ""));
    assert_eq!(via_proxy(&s.addr, &forged).await, 400);
    // Every request claims another client; all are 127.0.0.1's.
    let mut answers = Vec::new();
    for i in 1..=3 * BURST {
        let claim = format!("X-Forwarded-For: 203.0.113.{i}\r\nForwarded: for=203.0.113.{i}\r\n");
        let st = via_proxy(&s.addr, &upgrade_request(&claim)).await;
        answers.push(st);
        if st == 429 {
            break;
        }
    }
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    assert_eq!(
        s.metric_from(
            DIRECT,
            r#"switchboard_connections_refused_total{reason="proxy_header"}"#
        )
        .await,
        1.0
    );
    // Another address is not affected by 127.0.0.1's flood.
    let mut direct = common::connect_from(DIRECT, &s.addr).await;
    assert_eq!(status_of(&mut direct, &upgrade_request("")).await, 101);
}

#[tokio::test]
async fn proxy_protocol_names_the_client_and_a_malformed_header_is_refused() {
    let mut env = SLOW_LIMIT.to_vec();
    env.push(("SWITCHBOARD__HTTP__TRUSTED_PROXIES", "127.0.0.1/32"));
    env.push(("SWITCHBOARD__HTTP__PROXY_PROTOCOL", "true"));
    let s = Server::start(&env);
    let ws = upgrade_request("");

    // v2 (what an AWS NLB sends): a's burst, then 429 for a.
    let a = cat(&proxy_v2(1, [203, 0, 113, 7]), &ws);
    for _ in 0..BURST {
        assert_eq!(via_proxy(&s.addr, &a).await, 101);
    }
    until_429(&s.addr, &a, 20).await;
    // v1 (GCP's proxy load balancers) for b and an IPv6 client: their own.
    let b = cat(&proxy_v1("203.0.113.8"), &ws);
    assert_eq!(via_proxy(&s.addr, &b).await, 101);
    let v6 = cat(&proxy_v1("2001:db8::8"), &get_request("/healthz", ""));
    assert_eq!(via_proxy(&s.addr, &v6).await, 200);
    // A forwarding header behind the PROXY header is the client's own
    // word: a, refused, cannot pass as someone else.
    let a_claiming = cat(
        &proxy_v2(1, [203, 0, 113, 7]),
        &upgrade_request("X-Forwarded-For: 198.51.100.1\r\n"),
    );
    let passed = until_429(&s.addr, &a_claiming, 20).await;
    assert!(passed.len() < STILL_REFUSED, "{passed:?}");
    // LOCAL (the load balancer's health check): the peer's own address.
    let local = cat(&proxy_v2(0, [0, 0, 0, 0]), &get_request("/healthz", ""));
    assert_eq!(via_proxy(&s.addr, &local).await, 200);

    // Refused without an answer: no header, a malformed v1, a v2 of an
    // unknown version, garbage.
    let mut bad_v2 = proxy_v2(1, [203, 0, 113, 9]);
    bad_v2[12] = 0x31;
    for bad in [
        get_request("/healthz", ""),
        cat(b"PROXY TCP4 203.0.113.999 127.0.0.1 1 2\r\n", &ws),
        cat(&bad_v2, &ws),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
    ] {
        assert_eq!(via_proxy(&s.addr, &bad).await, 0, "{bad:?}");
    }
    // The node keeps serving: through the proxy, and a direct client
    // (not a trusted proxy: no header expected) too.
    let c = cat(&proxy_v1("203.0.113.10"), &ws);
    assert_eq!(via_proxy(&s.addr, &c).await, 101);
    let (status, _) = common::http_from(DIRECT, &s.addr, "GET", "/healthz", &[]).await;
    assert_eq!(status, 200);
    // A direct client may not send one.
    let mut direct = common::connect_from(DIRECT, &s.addr).await;
    assert_eq!(
        status_of(&mut direct, &cat(&proxy_v1("203.0.113.11"), &ws)).await,
        400
    );
    assert_eq!(
        s.metric_from(
            DIRECT,
            r#"switchboard_connections_refused_total{reason="proxy_header"}"#
        )
        .await,
        5.0
    );
}
