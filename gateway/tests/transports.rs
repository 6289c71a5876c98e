//! Server-Sent Events and long polling against real `switchboard`
//! processes, read with a plain HTTP/1.1 client over TCP: the same messages
//! in the same order as a WebSocket member, resumption without loss or
//! duplicates, presence, refusals, and a drained node.

mod common;

use std::time::Duration;

use common::{cluster_with, http, Server, WAIT};
use rmpv::Value as Mp;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One event of a stream.
#[derive(Debug, Clone)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: Value,
}

/// An open `text/event-stream` response.
struct Stream {
    reader: BufReader<TcpStream>,
    retry_ms: Option<u64>,
    /// The last `id` seen, as `EventSource` keeps it.
    last_id: Option<String>,
}

/// `GET path` with `headers`: the stream, or the refusal's status and body.
async fn sse(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Stream, (u16, String)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    tokio::time::timeout(WAIT, reader.read_line(&mut status_line))
        .await
        .expect("no status line")
        .expect("read");
    let status: u16 = status_line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.expect("read");
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-type") {
                content_type = v.trim().to_owned();
            }
        }
    }
    if status != 200 {
        let mut body = String::new();
        let _ = tokio::time::timeout(WAIT, reader.read_to_string(&mut body)).await;
        return Err((status, body));
    }
    assert_eq!(content_type, "text/event-stream");
    Ok(Stream {
        reader,
        retry_ms: None,
        last_id: None,
    })
}

impl Stream {
    /// The next event; `None` once the server ended the stream.
    async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let (mut event, mut id, mut data) = (String::new(), None, String::new());
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(timeout, self.reader.read_line(&mut line))
                .await
                .expect("no event in time")
                .map_err(|e| eprintln!("read error: {e}"))
                .ok()?;
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if data.is_empty() {
                    continue;
                }
                if id.is_some() {
                    self.last_id.clone_from(&id);
                }
                let data = serde_json::from_str(&data).expect("data is JSON");
                return Some(SseEvent { event, id, data });
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "" => {} // a comment: the keepalive
                "event" => event = value.to_owned(),
                "id" => id = Some(value.to_owned()),
                "data" => data.push_str(value),
                "retry" => self.retry_ms = value.parse().ok(),
                other => panic!("unexpected field {other:?}"),
            }
        }
    }

    /// The next event named `name`; the ones before it are dropped.
    async fn next_named(&mut self, name: &str) -> SseEvent {
        loop {
            let ev = self.next(WAIT).await.expect("the stream ended");
            if ev.event == name {
                return ev;
            }
        }
    }

    /// The next `n` `msg` events.
    async fn msgs(&mut self, n: usize) -> Vec<SseEvent> {
        let mut got = Vec::new();
        while got.len() < n {
            got.push(self.next_named("msg").await);
        }
        got
    }

    /// The next `n` `msg` events of a resumed stream, whose every `join`
    /// must say `recovered: true` (each join's replay follows it, before the
    /// other rooms' joins: they are answered in any order).
    async fn resumed_msgs(&mut self, n: usize) -> Vec<SseEvent> {
        let mut got = Vec::new();
        while got.len() < n {
            let ev = self.next(WAIT).await.expect("the stream ended");
            match ev.event.as_str() {
                "join" => assert_eq!(ev.data["recovered"], true, "{ev:?}"),
                "msg" => got.push(ev),
                _ => {}
            }
        }
        got
    }

    /// Reads until the server ends the stream.
    async fn ended(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::timeout_at(deadline, self.next(timeout))
            .await
            .expect("the stream did not end")
            .is_some()
        {}
    }
}

/// One poll: (status, JSON body or the refusal as a string).
async fn poll(addr: &str, query: &str) -> (u16, Value) {
    let (status, body) = http(addr, "GET", &format!("/poll?{query}"), &[], b"").await;
    let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, v)
}

fn events<'a>(answer: &'a Value, op: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(move |e| e["op"] == op)
}

async fn publish_http(
    addr: &str,
    room: &str,
    data: Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({"room": room, "data": data})).unwrap();
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    let (status, body) = http(addr, "POST", "/api/publish", &h, &body).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

const FAST: [(&str, &str); 2] = [
    ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "100000"),
    ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "100000"),
];

#[tokio::test]
async fn an_sse_stream_sees_what_a_websocket_member_sees_in_the_same_order() {
    let s = Server::start(&FAST);
    let mut ws = s.client("alice").await;
    ws.join("feed").await.unwrap();
    let mut stream = sse(&s.addr, "/sse?rooms=feed,other&user=bob", &[])
        .await
        .unwrap();
    let hello = stream.next_named("hello").await;
    assert_eq!(hello.data["user"], "bob");
    assert_eq!(hello.data["rooms"], json!(["feed", "other"]));
    let retry = stream.retry_ms.expect("retry: is sent first");
    assert!((2000..=3000).contains(&retry), "retry {retry}");
    // Both rooms joined, in whichever order their answers came.
    let mut joined = Vec::new();
    for _ in 0..2 {
        joined.push(stream.next_named("join").await.data["room"].clone());
    }
    joined.sort_by_key(|r| r.to_string());
    assert_eq!(joined, [json!("feed"), json!("other")]);
    // From WebSocket, from HTTP, and one that JSON cannot hold (binary).
    let mut sent = Vec::new();
    for i in 0..60u64 {
        let data = match i % 3 {
            0 => {
                let d = Mp::Map(vec![("n".into(), i.into()), ("via".into(), "ws".into())]);
                ws.publish("feed", d).await.unwrap();
                json!({"n": i, "via": "ws"})
            }
            1 => {
                let d = json!({"n": i, "via": "http"});
                let (status, _) = publish_http(&s.addr, "feed", d.clone(), &[]).await;
                assert_eq!(status, 200);
                d
            }
            _ => {
                ws.publish("feed", Mp::Binary(vec![i as u8, 0xff]))
                    .await
                    .unwrap();
                Value::Null
            }
        };
        sent.push(data);
    }
    let mut seen_ws = Vec::new();
    while seen_ws.len() < 60 {
        let m = ws.next_op("msg", WAIT).await.unwrap();
        seen_ws.push(m.u64("offset").unwrap());
    }
    let got = stream.msgs(60).await;
    let offsets: Vec<u64> = got
        .iter()
        .map(|e| e.data["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, seen_ws, "the same order");
    for (i, (ev, want)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(ev.data["room"], "feed");
        if want.is_null() {
            assert_eq!(
                ev.data["data_msgpack"],
                json!(b64(&[0xc4, 2, i as u8, 0xff]))
            );
            assert!(ev.data.get("data").is_none());
        } else {
            assert_eq!(&ev.data["data"], want);
        }
        // Each id is the position after it: this room's offset, the other
        // room as it was joined.
        let id = ev.id.as_deref().unwrap();
        let (feed, _) = id.split_once('~').unwrap();
        assert!(feed.ends_with(&format!(".{}", offsets[i])), "{id}");
    }
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn a_stream_cut_midway_resumes_from_last_event_id_with_nothing_lost_or_repeated() {
    let s = Server::start(&FAST);
    let mut ws = s.client("alice").await;
    let mut stream = sse(&s.addr, "/sse?rooms=a,b&user=bob", &[]).await.unwrap();
    stream.next_named("join").await;
    stream.next_named("join").await;
    let mut total = 0;
    let mut publish = |n: usize| {
        let start = total;
        total += n;
        start..total
    };
    for i in publish(30) {
        let room = if i % 2 == 0 { "a" } else { "b" };
        ws.publish(room, (i as u64).into()).await.unwrap();
    }
    let mut got: Vec<(String, u64, u64)> = Vec::new();
    let mut take = |evs: Vec<SseEvent>| {
        for e in evs {
            got.push((
                e.data["room"].as_str().unwrap().to_owned(),
                e.data["offset"].as_u64().unwrap(),
                e.data["data"].as_u64().unwrap(),
            ));
        }
    };
    take(stream.msgs(11).await);
    let last = stream.last_id.clone().unwrap();
    drop(stream);
    for i in publish(30) {
        let room = if i % 2 == 0 { "a" } else { "b" };
        ws.publish(room, (i as u64).into()).await.unwrap();
    }
    // As EventSource does: the header.
    let mut stream = sse(
        &s.addr,
        "/sse?rooms=a,b&user=bob",
        &[("Last-Event-ID", &last)],
    )
    .await
    .unwrap();
    take(stream.resumed_msgs(20).await);
    let last = stream.last_id.clone().unwrap();
    drop(stream);
    for i in publish(10) {
        let room = if i % 2 == 0 { "a" } else { "b" };
        ws.publish(room, (i as u64).into()).await.unwrap();
    }
    // A client that cannot set headers: the query parameter.
    let mut stream = sse(
        &s.addr,
        &format!("/sse?rooms=a,b&user=bob&last_event_id={last}"),
        &[],
    )
    .await
    .unwrap();
    take(stream.resumed_msgs(39).await);
    let mut values: Vec<u64> = got.iter().map(|(_, _, v)| *v).collect();
    values.sort_unstable();
    assert_eq!(values, (0..70).collect::<Vec<_>>(), "every message once");
    for room in ["a", "b"] {
        let offsets: Vec<u64> = got.iter().filter(|g| g.0 == room).map(|g| g.1).collect();
        let first = offsets[0];
        assert_eq!(
            offsets,
            (first..first + 35).collect::<Vec<_>>(),
            "room {room} in order"
        );
    }
    // Nothing more than that.
    ws.publish("a", 999u64.into()).await.unwrap();
    assert_eq!(stream.next_named("msg").await.data["data"], 999);
}

/// Clients that pool connections (httpx, Node's fetch, a browser's
/// EventSource after the page's own requests) send the stream's request on
/// a connection that served others: it is served there too (chunked), and
/// the connection stays usable for API calls before it.
#[tokio::test]
async fn a_stream_requested_on_a_kept_alive_connection_is_served_there() {
    // A client gone from such a stream is noticed when a write fails: the
    // keepalive comments' (every 200 ms here).
    let mut env = FAST.to_vec();
    env.push(("SWITCHBOARD__SSE__KEEPALIVE_MS", "200"));
    let s = Server::start(&env);
    let mut tcp = TcpStream::connect(&s.addr).await.unwrap();
    let publish = |n: u64| {
        let body = format!(r#"{{"room":"pool","data":{n}}}"#);
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Two API calls on the connection, kept alive.
    let mut seen = Vec::new();
    for n in 1..=2 {
        tcp.write_all(publish(n).as_bytes()).await.unwrap();
        read_until(&mut tcp, &mut seen, &format!("\"offset\":{n}")).await;
    }
    // Then the stream, resuming from offset 1: offset 2 is replayed.
    let epoch = {
        let mut ws = s.client("alice").await;
        let ok = ws.join("pool").await.unwrap();
        ok.str("epoch").unwrap().to_owned()
    };
    let req = format!(
        "GET /sse?rooms=pool&user=bob HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {epoch}.1\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    seen.clear();
    read_until(&mut tcp, &mut seen, "\"data\":2").await;
    let text = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    assert!(text.contains("event: join"), "{text}");
    assert!(text.contains("\"recovered\":true"), "{text}");
    // Live messages follow on it.
    let mut ws = s.client("carol").await;
    ws.publish("pool", 3u64.into()).await.unwrap();
    read_until(&mut tcp, &mut seen, "\"data\":3").await;
    assert_eq!(
        s.metric("switchboard_connections{transport=\"sse\"}").await,
        1.0
    );
    drop(tcp);
    s.wait_metric("switchboard_connections{transport=\"sse\"}", 0.0, WAIT)
        .await;
}

/// Reads from `tcp` into `seen` until it holds `want`.
async fn read_until(tcp: &mut TcpStream, seen: &mut Vec<u8>, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(seen).contains(want) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {want:?} in {}", String::from_utf8_lossy(seen)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {want:?}: {}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_long_poll_client_sees_every_message_once_across_100_polls() {
    let mut env = FAST.to_vec();
    env.push(("SWITCHBOARD__POLL__TIMEOUT_MS", "200"));
    let s = Server::start(&env);
    let (status, first) = poll(&s.addr, "rooms=chat&user=carol").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(events(&first, "hello").count(), 1);
    let join = events(&first, "join")
        .next()
        .expect("the join is answered at once")
        .clone();
    assert_eq!(join["room"], "chat");
    let publisher = {
        let addr = s.addr.clone();
        tokio::spawn(async move {
            let server_client = switchboard_client::Client::connect(
                &addr,
                switchboard_client::ConnectOptions::user("alice"),
            );
            let mut ws = server_client.await.unwrap();
            for i in 0..300u64 {
                ws.publish("chat", i.into()).await.unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
        })
    };
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    let mut seen = Vec::new();
    let mut lost_answers = 0;
    for i in 0..100 {
        let (status, answer) =
            poll(&s.addr, &format!("rooms=chat&user=carol&cursor={cursor}")).await;
        assert_eq!(status, 200, "{answer}");
        if i % 10 == 5 && events(&answer, "msg").count() > 0 {
            // This answer is "lost": polling with the same cursor again
            // gets its events again, then anything newer.
            let (_, again) = poll(&s.addr, &format!("rooms=chat&user=carol&cursor={cursor}")).await;
            let before: Vec<&Value> = events(&answer, "msg").collect();
            let after: Vec<&Value> = events(&again, "msg").collect();
            assert_eq!(
                &after[..before.len()],
                &before[..],
                "the lost answer is repeated"
            );
            lost_answers += 1;
            seen.extend(after.iter().map(|e| e["data"].as_u64().unwrap()));
            cursor = again["cursor"].as_str().unwrap().to_owned();
            continue;
        }
        seen.extend(events(&answer, "msg").map(|e| e["data"].as_u64().unwrap()));
        cursor = answer["cursor"].as_str().unwrap().to_owned();
    }
    publisher.await.unwrap();
    while seen.len() < 300 {
        let (_, answer) = poll(&s.addr, &format!("rooms=chat&user=carol&cursor={cursor}")).await;
        let new: Vec<u64> = events(&answer, "msg")
            .map(|e| e["data"].as_u64().unwrap())
            .collect();
        assert!(
            !new.is_empty(),
            "messages missing after {} of 300: {seen:?}",
            seen.len()
        );
        seen.extend(new);
        cursor = answer["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(
        seen,
        (0..300).collect::<Vec<_>>(),
        "each message once, in order"
    );
    assert!(lost_answers > 0, "no answer was replayed");
    // Quiet: a poll waits for the timeout and answers with no events.
    let (_, answer) = poll(&s.addr, &format!("rooms=chat&user=carol&cursor={cursor}")).await;
    assert_eq!(answer["events"], json!([]));
}

/// A poll session holds at most `limits.outbound_queue` events between
/// polls: one that overflows ends, and the next poll resumes from its
/// cursor, with `recovered: false` where history no longer reaches back.
#[tokio::test]
async fn a_poll_session_that_overflows_is_resumed_or_told_recovered_false() {
    let mut env = FAST.to_vec();
    env.push(("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "8"));
    env.push(("SWITCHBOARD__HISTORY__SIZE", "10"));
    let s = Server::start(&env);
    let mut ws = s.client("alice").await;
    let (_, first) = poll(&s.addr, "rooms=near,far&user=carol").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    // 5 to one room (history reaches back), 30 to the other (it does not):
    // 35 events, more than the session holds.
    for i in 0..5u64 {
        ws.publish("near", i.into()).await.unwrap();
    }
    for i in 0..30u64 {
        ws.publish("far", i.into()).await.unwrap();
    }
    s.wait_metric("switchboard_connections{transport=\"poll\"}", 0.0, WAIT)
        .await;
    let (status, answer) = poll(
        &s.addr,
        &format!("rooms=near,far&user=carol&cursor={cursor}"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let joins: Vec<(String, bool)> = events(&answer, "join")
        .map(|j| {
            (
                j["room"].as_str().unwrap().to_owned(),
                j["recovered"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(joins.contains(&("near".to_owned(), true)), "{joins:?}");
    assert!(joins.contains(&("far".to_owned(), false)), "{joins:?}");
    let near: Vec<u64> = events(&answer, "msg")
        .filter(|m| m["room"] == "near")
        .map(|m| m["data"].as_u64().unwrap())
        .collect();
    assert_eq!(near, [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_cursor_whose_session_is_gone_resumes_on_a_new_one_or_says_recovered_false() {
    let s = Server::start(&FAST);
    let mut ws = s.client("alice").await;
    ws.join("r").await.unwrap();
    let (_, first) = poll(&s.addr, "rooms=r&user=carol").await;
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    let (_, position) = cursor.split_once('~').unwrap();
    for i in 0..5u64 {
        ws.publish("r", i.into()).await.unwrap();
    }
    // Another session id (the node restarted, or the poll reached another
    // node): a new session resumes from the cursor's position.
    let (status, answer) = poll(
        &s.addr,
        &format!("rooms=r&user=carol&cursor=1-1~{position}"),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(events(&answer, "join").next().unwrap()["recovered"], true);
    let mut got: Vec<u64> = events(&answer, "msg")
        .map(|e| e["data"].as_u64().unwrap())
        .collect();
    let mut cursor = answer["cursor"].as_str().unwrap().to_owned();
    while got.len() < 5 {
        let (_, a) = poll(&s.addr, &format!("rooms=r&user=carol&cursor={cursor}")).await;
        got.extend(events(&a, "msg").map(|e| e["data"].as_u64().unwrap()));
        cursor = a["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    // A position in an epoch the room never had: recovered false, at once.
    let (_, answer) = poll(&s.addr, "rooms=r&user=carol&cursor=2-1~deadbeef.3").await;
    assert_eq!(events(&answer, "join").next().unwrap()["recovered"], false);
    let mut stream = sse(
        &s.addr,
        "/sse?rooms=r&user=bob",
        &[("Last-Event-ID", "deadbeef.3")],
    )
    .await
    .unwrap();
    assert_eq!(stream.next_named("join").await.data["recovered"], false);
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx() {
    let s = Server::start(&[("SWITCHBOARD__LIMITS__ROOMS_PER_CONNECTION", "2")]);
    type Refusal<'a> = (&'a str, &'a [(&'a str, &'a str)], u16, &'a str);
    let refusals: &[Refusal] = &[
        ("/sse?user=bob", &[], 400, "rooms: required"),
        ("/sse?rooms=&user=bob", &[], 400, "rooms: required"),
        ("/sse?rooms=a,&user=bob", &[], 400, "rooms: \"\""),
        ("/sse?rooms=a,a&user=bob", &[], 400, "named twice"),
        (
            "/sse?rooms=a,b,c&user=bob",
            &[],
            429,
            "rooms_per_connection",
        ),
        ("/sse?rooms=a&presence=maybe", &[], 400, "presence:"),
        (
            "/sse?rooms=a,b",
            &[("Last-Event-ID", "zz.1~")],
            400,
            "Last-Event-ID",
        ),
        (
            "/sse?rooms=a,b",
            &[("Last-Event-ID", "ab.1")],
            400,
            "Last-Event-ID",
        ),
        (
            "/sse?rooms=a,b",
            &[("Last-Event-ID", "ab.x~")],
            400,
            "Last-Event-ID",
        ),
        ("/sse?rooms=a&last_event_id=%zz", &[], 400, ""),
    ];
    for (path, headers, status, reason) in refusals {
        let Err((got, body)) = sse(&s.addr, path, headers).await else {
            panic!("{path} was served");
        };
        assert_eq!(got, *status, "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body}");
    }
    for (query, reason) in [
        ("rooms=a&cursor=nonsense", "cursor:"),
        ("rooms=a&cursor=1-1~ab.1~cd.2", "cursor:"),
        ("rooms=a&cursor=zz-1~", "cursor:"),
        ("cursor=1-1~", "rooms:"),
    ] {
        let (status, body) = poll(&s.addr, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(reason), "{query}: {body}");
    }
    // Still serving.
    let mut stream = sse(&s.addr, "/sse?rooms=a", &[]).await.unwrap();
    stream.next_named("join").await;
}

fn jwt(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn in_a_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60
}

#[tokio::test]
async fn client_tokens_stream_poll_publish_and_send_within_their_claim_and_rate() {
    let secret = "a-test-secret-that-is-long-enough!";
    let s = Server::start(&[
        ("SWITCHBOARD__AUTH__MODE", "jwt"),
        ("SWITCHBOARD__AUTH__HS256_SECRET", secret),
        ("SWITCHBOARD__API__KEY", "sekret"),
        ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "1"),
        ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "5"),
    ]);
    let alice = jwt(
        secret,
        json!({"sub": "alice", "exp": in_a_minute(), "rooms": ["team:*"]}),
    );
    let bob = jwt(secret, json!({"sub": "bob", "exp": in_a_minute()}));
    // No token, or a forged one: 401, for both transports.
    assert_eq!(
        sse(&s.addr, "/sse?rooms=team:a", &[])
            .await
            .err()
            .map(|e| e.0),
        Some(401)
    );
    assert_eq!(poll(&s.addr, "rooms=team:a").await.0, 401);
    let forged = jwt(
        "another-secret-another-secret-xx",
        json!({"sub": "x", "exp": in_a_minute()}),
    );
    assert_eq!(
        poll(&s.addr, &format!("rooms=team:a&token={forged}"))
            .await
            .0,
        401
    );
    // Outside the claim: 403.
    let (status, body) = poll(&s.addr, &format!("rooms=team:a,other&token={alice}")).await;
    assert_eq!(status, 403, "{body}");
    // Bob streams with his token in the header.
    let auth = format!("Bearer {bob}");
    let mut stream = sse(&s.addr, "/sse?rooms=team:a", &[("Authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(stream.next_named("hello").await.data["user"], "bob");
    stream.next_named("join").await;
    // Alice publishes over HTTP with her own token, within her claim ...
    let alice_auth = format!("Bearer {alice}");
    let (status, body) = publish_http(
        &s.addr,
        "team:a",
        json!("hi"),
        &[("Authorization", &alice_auth)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let msg = stream.next_named("msg").await;
    assert_eq!(
        (msg.data["from"].clone(), msg.data["data"].clone()),
        (json!("alice"), json!("hi"))
    );
    // ... not outside it ...
    let (status, body) = publish_http(
        &s.addr,
        "other",
        json!(1),
        &[("Authorization", &alice_auth)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // ... sends to bob as herself ...
    let (status, body) = http(
        &s.addr,
        "POST",
        "/api/send",
        &[
            ("Authorization", &alice_auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"to":"bob","data":{"ping":1}}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let dm = stream.next_named("dm").await;
    assert_eq!(
        (dm.data["from"].clone(), dm.data["data"].clone()),
        (json!("alice"), json!({"ping": 1}))
    );
    // ... and at her user's publish rate (burst 5: 2 used).
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(
            publish_http(
                &s.addr,
                "team:a",
                json!(i),
                &[("Authorization", &alice_auth)],
            )
            .await
            .0,
        );
    }
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // The API key is not limited that way.
    for i in 0..6 {
        let (status, _) = publish_http(
            &s.addr,
            "other",
            json!(i),
            &[("Authorization", "Bearer sekret")],
        )
        .await;
        assert_eq!(status, 200);
    }
}

async fn presence_event(
    ws: &mut switchboard_client::Client,
    op: &str,
    user: &str,
    timeout: Duration,
) {
    ws.next_matching(timeout, |e| e.op() == op && e.str("user") == Some(user))
        .await
        .unwrap_or_else(|e| panic!("no {op} of {user}: {e}"));
}

#[tokio::test]
async fn streams_and_poll_sessions_are_present_and_leave_when_their_client_goes() {
    let s = Server::start(&[
        ("SWITCHBOARD__HEARTBEAT__INTERVAL_MS", "500"),
        ("SWITCHBOARD__HEARTBEAT__TIMEOUT_MS", "2000"),
        ("SWITCHBOARD__POLL__TIMEOUT_MS", "300"),
    ]);
    let mut ws = s.client("alice").await;
    ws.join("room").await.unwrap();
    let mut stream = sse(&s.addr, "/sse?rooms=room&user=bob", &[]).await.unwrap();
    stream.next_named("join").await;
    presence_event(&mut ws, "joined", "bob", WAIT).await;
    assert_eq!(
        s.metric("switchboard_connections{transport=\"sse\"}").await,
        1.0
    );
    // The stream outlives the heartbeat timeout while its client reads
    // (alice pings: she is held to the same timeout).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ws.ping().await.unwrap();
    }
    let mut who = ws.presence("room").await.unwrap();
    who.sort();
    assert_eq!(who, ["alice", "bob"]);
    drop(stream);
    presence_event(&mut ws, "left", "bob", WAIT).await;

    let (_, first) = poll(&s.addr, "rooms=room&user=carol").await;
    presence_event(&mut ws, "joined", "carol", WAIT).await;
    // Polling keeps the session present ...
    let mut cursor = first["cursor"].as_str().unwrap().to_owned();
    for _ in 0..10 {
        let (_, a) = poll(&s.addr, &format!("rooms=room&user=carol&cursor={cursor}")).await;
        cursor = a["cursor"].as_str().unwrap().to_owned();
        ws.ping().await.unwrap();
    }
    assert!(ws
        .presence("room")
        .await
        .unwrap()
        .contains(&"carol".to_owned()));
    assert_eq!(
        s.metric("switchboard_connections{transport=\"poll\"}")
            .await,
        1.0
    );
    // ... and one that stops polling leaves after the heartbeat timeout.
    presence_event(&mut ws, "left", "carol", Duration::from_secs(6)).await;
    s.wait_metric("switchboard_connections{transport=\"poll\"}", 0.0, WAIT)
        .await;
}

#[tokio::test]
async fn a_slow_stream_is_cut_and_resumes_with_nothing_lost() {
    let mut env = FAST.to_vec();
    env.push(("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "16"));
    env.push(("SWITCHBOARD__HISTORY__SIZE", "1000"));
    let s = Server::start(&env);
    let mut ws = s.client("alice").await;
    // A reader that reads nothing while 16 MiB are published: more than
    // the socket buffers and the queue hold.
    let mut stream = sse(&s.addr, "/sse?rooms=big&user=bob", &[]).await.unwrap();
    let pad = "x".repeat(32 * 1024);
    let total = 512u64;
    for i in 0..total {
        let data = Mp::Map(vec![
            ("n".into(), i.into()),
            ("pad".into(), pad.as_str().into()),
        ]);
        ws.publish("big", data).await.unwrap();
    }
    let mut got = Vec::new();
    while let Some(ev) = stream.next(WAIT).await {
        eprintln!("{} {:?}", ev.event, ev.id);
        if ev.event == "msg" {
            got.push(ev.data["data"]["n"].as_u64().unwrap());
        }
    }
    eprintln!("{}", s.logs());
    assert!((got.len() as u64) < total, "the slow stream was not cut");
    assert!(s.metric("switchboard_slow_consumers_total").await >= 1.0);
    // Resuming as EventSource does, again each time a replay larger than
    // the queue cuts the stream, gets everything, once.
    let mut resumed = 0;
    while (got.len() as u64) < total {
        let last = stream.last_id.clone().unwrap();
        stream = sse(
            &s.addr,
            "/sse?rooms=big&user=bob",
            &[("Last-Event-ID", &last)],
        )
        .await
        .unwrap();
        resumed += 1;
        assert!(resumed < 200, "no progress: {} of {total}", got.len());
        while let Some(ev) = stream.next(WAIT).await {
            match ev.event.as_str() {
                "join" => assert_eq!(ev.data["recovered"], true),
                "msg" => got.push(ev.data["data"]["n"].as_u64().unwrap()),
                _ => {}
            }
            if got.len() as u64 == total {
                break;
            }
        }
    }
    assert_eq!(got, (0..total).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_drained_node_ends_its_streams_which_resume_on_another_node() {
    let nodes = cluster_with(2, &FAST).await;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let mut ws = n1.client("alice").await;
    let mut stream = sse(&n2.addr, "/sse?rooms=x,y&user=bob", &[]).await.unwrap();
    stream.next_named("join").await;
    stream.next_named("join").await;
    for i in 0..10u64 {
        ws.publish(if i % 2 == 0 { "x" } else { "y" }, i.into())
            .await
            .unwrap();
    }
    let mut got: Vec<u64> = stream
        .msgs(10)
        .await
        .iter()
        .map(|e| e.data["data"].as_u64().unwrap())
        .collect();
    n2.signal("TERM");
    stream.ended(Duration::from_secs(10)).await;
    for i in 10..20u64 {
        ws.publish(if i % 2 == 0 { "x" } else { "y" }, i.into())
            .await
            .unwrap();
    }
    let last = stream.last_id.clone().unwrap();
    let mut stream = sse(
        &n1.addr,
        "/sse?rooms=x,y&user=bob",
        &[("Last-Event-ID", &last)],
    )
    .await
    .unwrap();
    got.extend(
        stream
            .resumed_msgs(10)
            .await
            .iter()
            .map(|e| e.data["data"].as_u64().unwrap()),
    );
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<_>>());
}

/// Waits until one line of the node's log contains every one of `parts`.
async fn wait_log(s: &Server, parts: &[&str]) {
    let deadline = std::time::Instant::now() + WAIT;
    while !s
        .logs()
        .lines()
        .any(|l| parts.iter().all(|p| l.contains(p)))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with {parts:?}:\n{}",
            s.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn streams_and_polls_behind_a_trusted_proxy_are_known_by_the_forwarded_address() {
    let s = Server::start(&[
        ("SWITCHBOARD__HTTP__TRUSTED_PROXIES", "127.0.0.1/32"),
        ("SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS", "1"),
        ("SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS", "3"),
        ("RUST_LOG", "info,switchboard_gateway=debug"),
    ]);
    // What an ingress writes: the client's forged entry, then the address
    // it saw.
    let carol = [("X-Forwarded-For", "192.0.2.1, 203.0.113.7")];
    let mut stream = sse(&s.addr, "/sse?rooms=r&user=carol", &carol)
        .await
        .unwrap();
    stream.next_named("join").await;
    wait_log(&s, &["connected", "client=203.0.113.7", "sse"]).await;
    drop(stream);
    wait_log(&s, &["closed", "client=203.0.113.7", "sse"]).await;

    let dave = [("Forwarded", "for=\"[2001:db8::8]:4711\"")];
    let (status, body) = http(&s.addr, "GET", "/poll?rooms=r&user=dave", &dave, b"").await;
    assert_eq!(status, 200, "{body}");
    wait_log(&s, &["connected", "client=2001:db8::8", "poll"]).await;
    wait_log(&s, &["http request", "client=2001:db8::8", "/poll"]).await;

    // Carol's address runs out of connections; another client behind the
    // same proxy still gets a stream.
    let mut refused = false;
    for _ in 0..20 {
        match sse(&s.addr, "/sse?rooms=r&user=carol", &carol).await {
            Ok(_) => {}
            Err((429, _)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(refused, "carol was never refused");
    let erin = [("X-Forwarded-For", "203.0.113.9")];
    let mut stream = sse(&s.addr, "/sse?rooms=r&user=erin", &erin).await.unwrap();
    stream.next_named("join").await;
    wait_log(&s, &["refused", "client=203.0.113.7"]).await;
}
