//! The whole protocol against one real `switchboard` process, over real
//! WebSockets.

mod common;

use std::time::Duration;

use common::{mp, Mode, Nodes, Server, WAIT};
use rmpv::Value;
use switchboard_client::{encode_command, ClientError, ConnectOptions, Field};

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

#[tokio::test]
async fn hello_and_subprotocol() {
    let s = Server::start(&[("SWITCHBOARD__NODE__NAME", "n-hello")]);
    let c = s
        .connect(ConnectOptions {
            user: Some("alice".into()),
            subprotocol: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(c.subprotocol.as_deref(), Some("switchboard.v1"));
    let h = &c.hello;
    assert_eq!(h.u64("v"), Some(1));
    assert_eq!(h.str("node"), Some("n-hello"));
    assert_eq!(h.str("user"), Some("alice"));
    assert_eq!(h.u64("heartbeat_ms"), Some(30000));
    assert_eq!(h.u64("max_frame"), Some(65536));
    assert!(!h.str("conn").unwrap().is_empty());

    let anon = s.connect(ConnectOptions::default()).await.unwrap();
    assert_eq!(anon.subprotocol, None);
    let user = anon.hello.str("user").unwrap();
    assert_eq!(user, format!("anon-{}", anon.hello.str("conn").unwrap()));
}

async fn join_pub_msg_leave_ping(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    let mut b = s.client("bob").await;
    let ok = a.join("lobby").await.unwrap();
    assert_eq!(ok.str("room"), Some("lobby"));
    assert_eq!(ok.u64("offset"), Some(0));
    assert!(ok.get("recovered").is_none());
    let epoch = ok.str("epoch").unwrap().to_owned();
    let ok = b.join("lobby").await.unwrap();
    assert_eq!(ok.str("epoch"), Some(epoch.as_str()));

    assert_eq!(b.publish("lobby", "hi".into()).await.unwrap(), 1);
    for c in [&mut a, &mut b] {
        let m = c.next_op("msg", WAIT).await.unwrap();
        assert_eq!(m.str("room"), Some("lobby"));
        assert_eq!(m.u64("offset"), Some(1));
        assert_eq!(m.str("from"), Some("bob"));
        assert_eq!(m.get("data"), Some(&Value::from("hi")));
    }
    a.leave("lobby").await.unwrap();
    // The ok names the epoch the offset belongs to.
    let ok = b
        .call(vec![
            ("op", "pub".into()),
            ("room", "lobby".into()),
            ("data", 2.into()),
        ])
        .await
        .unwrap();
    assert_eq!(
        (ok.str("epoch"), ok.u64("offset")),
        (Some(epoch.as_str()), Some(2))
    );
    b.next_op("msg", WAIT).await.unwrap();
    a.ping().await.unwrap();
    assert!(
        a.pending().all(|e| e.op() != "msg"),
        "left member got a msg"
    );
    // Leaving a room you are not in is ok.
    a.leave("never-joined").await.unwrap();
}

async fn ping_command_gets_pong(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    let ev = a.request(vec![("op", "ping".into())]).await.unwrap();
    assert_eq!(ev.op(), "pong");
}

async fn data_passes_through_byte_for_byte(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    a.join("raw").await.unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xcc, 0x05],                   // 5 as uint8, not the shortest form
        vec![0xd3, 0, 0, 0, 0, 0, 0, 0, 7], // 7 as int64
        vec![0xca, 0x3f, 0x80, 0, 0],       // float32 1.0
        vec![0xc4, 3, 1, 2, 3],             // bin
        vec![0xd6, 0xff, 0, 0, 0, 1],       // timestamp ext
        vec![0xc0],                         // nil
        mp(&map(vec![(
            "nested",
            Value::Array(vec![1.into(), "x".into(), Value::Nil]),
        )])),
        vec![0xdb, 0, 0, 0, 2, b'h', b'i'], // str32 for a short string
    ];
    for p in &payloads {
        let ev = a
            .request(vec![
                ("op", "pub".into()),
                ("room", "raw".into()),
                ("data", Field::Raw(p.clone())),
            ])
            .await
            .unwrap();
        assert_eq!(ev.op(), "ok", "{ev:?}");
        let m = a.next_op("msg", WAIT).await.unwrap();
        assert_eq!(m.data_raw(), Some(&p[..]));
    }
    // Direct messages too (bob's node may take a moment to be known).
    let mut b = s.client("bob").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let ev = loop {
        let cmd = vec![
            ("op", "send".into()),
            ("to", "bob".into()),
            ("data", Field::Raw(payloads[0].clone())),
        ];
        let ev = a.request(cmd).await.unwrap();
        if ev.op() == "ok" || tokio::time::Instant::now() > deadline {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ev.u64("delivered"), Some(1));
    let dm = b.next_op("dm", WAIT).await.unwrap();
    assert_eq!(dm.str("from"), Some("alice"));
    assert_eq!(dm.data_raw(), Some(&payloads[0][..]));
}

async fn batched_commands_in_one_message(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    let mut batch = Vec::new();
    batch.extend(encode_command(&[
        ("op", "join".into()),
        ("room", "b".into()),
        ("id", 1u64.into()),
    ]));
    batch.extend(encode_command(&[
        ("op", "pub".into()),
        ("room", "b".into()),
        ("data", "x".into()),
        ("id", 2u64.into()),
    ]));
    batch.extend(encode_command(&[
        ("op", "bogus".into()),
        ("id", 3u64.into()),
    ]));
    batch.extend(encode_command(&[
        ("op", "ping".into()),
        ("id", 4u64.into()),
    ]));
    a.send_binary(batch).await.unwrap();
    assert_eq!(a.reply(1, WAIT).await.unwrap().op(), "ok");
    assert_eq!(a.reply(2, WAIT).await.unwrap().u64("offset"), Some(1));
    let e = a.reply(3, WAIT).await.unwrap();
    assert_eq!((e.op(), e.u64("code")), ("err", Some(400)));
    assert_eq!(a.reply(4, WAIT).await.unwrap().op(), "pong");
    assert_eq!(a.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(1));
}

async fn bad_commands_get_400_naming_the_field_and_keep_the_connection(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    let cases: Vec<(Vec<(&str, Field)>, &str)> = vec![
        (
            vec![("op", "join".into()), ("room", "has space".into())],
            "room:",
        ),
        (vec![("op", "join".into())], "room: missing"),
        (
            vec![("op", "join".into()), ("room", Field::Value(5.into()))],
            "room: must be a string",
        ),
        (
            vec![("op", "pub".into()), ("room", "r".into())],
            "data: missing",
        ),
        (
            vec![("op", "send".into()), ("data", "x".into())],
            "to: missing",
        ),
        (vec![("op", "nope".into())], "op: unknown op"),
        (vec![("room", "r".into())], "op: missing"),
        (
            vec![
                ("op", "pub".into()),
                ("room", "r".into()),
                ("data", 1u64.into()),
                ("msg_id", Field::Value("m".repeat(65).into())),
            ],
            "msg_id:",
        ),
        (
            vec![
                ("op", "join".into()),
                ("room", Field::Value("r".repeat(129).into())),
            ],
            "room:",
        ),
    ];
    for (fields, reason) in cases {
        let e = a.request(fields).await.unwrap();
        assert_eq!(e.op(), "err");
        assert_eq!(e.u64("code"), Some(400));
        assert!(
            e.str("reason").unwrap().starts_with(reason),
            "{:?} !~ {reason}",
            e.str("reason")
        );
    }
    // Not MessagePack at all: err with id 0.
    a.send_binary(vec![0xc1, 0x00]).await.unwrap();
    let e = a.next_op("err", WAIT).await.unwrap();
    assert_eq!((e.u64("id"), e.u64("code")), (Some(0), Some(400)));
    // Invalid UTF-8 in a room name.
    let mut bad = encode_command(&[("op", "join".into()), ("id", 77u64.into())]);
    bad[0] += 1;
    bad.extend([0xa4, b'r', b'o', b'o', b'm', 0xa2, 0xff, 0xfe]);
    a.send_binary(bad).await.unwrap();
    let e = a.reply(77, WAIT).await.unwrap();
    assert_eq!(e.u64("code"), Some(400));
    // Deeply nested data.
    let deep = [vec![0x91; 100], vec![0x01]].concat();
    let e = a
        .request(vec![
            ("op", "pub".into()),
            ("room", "r".into()),
            ("data", Field::Raw(deep)),
        ])
        .await;
    // The nesting breaks the whole message, so the error has id 0.
    match e {
        Err(ClientError::Timeout) => {
            let e = a.next_op("err", WAIT).await.unwrap();
            assert!(e.str("reason").unwrap().contains("nested deeper"));
        }
        other => panic!("{other:?}"),
    }
    // Still connected and working.
    a.ping().await.unwrap();
}

async fn text_frame_is_400_then_1003(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    a.send_text("{\"op\":\"ping\"}").await.unwrap();
    let (code, _) = a.closed(WAIT).await.unwrap();
    assert_eq!(code, 1003);
    let e = a.next_op("err", Duration::ZERO).await.unwrap();
    assert_eq!(e.u64("code"), Some(400));
}

async fn frame_limit_exact_is_ok_one_more_is_1009(mode: Mode) {
    let s = Nodes::start(mode, &[("SWITCHBOARD__LIMITS__MAX_FRAME_BYTES", "2048")]).await;
    let mut a = s.client("alice").await;
    let head = encode_command(&[
        ("op", "ping".into()),
        ("id", 1u64.into()),
        ("pad", Field::Raw(vec![])),
    ]);
    // head ends with the key "pad"; pad it with a bin value to the limit.
    let make = |total: usize| {
        let mut m = head.clone();
        let n = total - m.len() - 3;
        m.extend([0xc5, (n >> 8) as u8, n as u8]);
        m.extend(std::iter::repeat_n(0u8, n));
        m
    };
    a.send_binary(make(2048)).await.unwrap();
    assert_eq!(a.reply(1, WAIT).await.unwrap().op(), "pong");
    a.send_binary(make(2049)).await.unwrap();
    let (code, _) = a.closed(WAIT).await.unwrap();
    assert_eq!(code, 1009);
}

async fn recovery_with_since(mode: Mode) {
    let s = Nodes::start(mode, &[("SWITCHBOARD__HISTORY__SIZE", "5")]).await;
    let mut p = s.client("pub").await;
    let ok = p.join("r").await.unwrap();
    let epoch = ok.str("epoch").unwrap().to_owned();
    for i in 1..=3u64 {
        assert_eq!(p.publish("r", i.into()).await.unwrap(), i);
    }
    // A client that saw offset 1 comes back.
    let mut c = s.client("late").await;
    let ok = c.join_since("r", &epoch, 1).await.unwrap();
    assert_eq!(ok.bool("recovered"), Some(true));
    assert_eq!(ok.u64("offset"), Some(3));
    for want in [2u64, 3] {
        let m = c.next_op("msg", WAIT).await.unwrap();
        assert_eq!(m.u64("offset"), Some(want));
    }
    // New messages follow the replay without a gap.
    p.publish("r", 4.into()).await.unwrap();
    assert_eq!(c.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(4));

    // Other epoch: nothing replayed, recovered false.
    let mut d = s.client("d").await;
    let ok = d.join_since("r", "not-the-epoch", 1).await.unwrap();
    assert_eq!(ok.bool("recovered"), Some(false));
    // History no longer reaches back (size 5, 10 messages).
    for i in 5..=10u64 {
        p.publish("r", i.into()).await.unwrap();
    }
    let mut e = s.client("e").await;
    let ok = e.join_since("r", &epoch, 2).await.unwrap();
    assert_eq!(ok.bool("recovered"), Some(false));
    let ok = e.join_since("r2", &epoch, 0).await.unwrap();
    assert_eq!(ok.bool("recovered"), Some(false));
    e.ping().await.unwrap();
    assert!(d
        .pending()
        .chain(e.pending())
        .all(|ev| ev.op() != "msg" || ev.u64("offset") > Some(10)));
}

async fn msg_id_retry_is_not_published_twice(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    a.join("r").await.unwrap();
    let publish = |id: &str| {
        vec![
            ("op", Field::from("pub")),
            ("room", "r".into()),
            ("data", "x".into()),
            ("msg_id", Field::Value(id.into())),
        ]
    };
    let first = a.call(publish("m-1")).await.unwrap().u64("offset");
    let again = a.call(publish("m-1")).await.unwrap().u64("offset");
    let other = a.call(publish("m-2")).await.unwrap().u64("offset");
    assert_eq!(first, Some(1));
    assert_eq!(again, Some(1));
    assert_eq!(other, Some(2));
    assert_eq!(a.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(1));
    assert_eq!(a.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(2));
}

async fn presence_joined_left_on_close(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    a.join("room").await.unwrap();
    assert_eq!(
        a.next_op("joined", WAIT).await.unwrap().str("user"),
        Some("alice")
    );
    let mut b1 = s.client("bob").await;
    b1.join("room").await.unwrap();
    let j = a.next_op("joined", WAIT).await.unwrap();
    assert_eq!((j.str("room"), j.str("user")), (Some("room"), Some("bob")));
    // A second connection of bob: no new joined.
    let mut b2 = s.client("bob").await;
    b2.join("room").await.unwrap();
    assert_eq!(a.presence("room").await.unwrap(), vec!["alice", "bob"]);
    let (status, body) = s.http("GET", "/api/rooms/room/presence", &[], b"").await;
    assert_eq!(status, 200);
    assert_eq!(body, r#"{"room":"room","users":["alice","bob"]}"#);
    // One of bob's connections goes: still present, no left.
    b1.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.presence("room").await.unwrap(), vec!["alice", "bob"]);
    b2.close().await.unwrap();
    let l = a.next_op("left", WAIT).await.unwrap();
    assert_eq!(l.str("user"), Some("bob"));
    assert_eq!(a.presence("room").await.unwrap(), vec!["alice"]);
    assert_eq!(
        a.pending().filter(|e| e.op() == "joined").count(),
        0,
        "joined once per user"
    );
    assert_eq!(
        a.pending().filter(|e| e.op() == "left").count(),
        0,
        "left once per user"
    );
}

async fn a_quiet_member_gets_messages_but_no_presence_events(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut quiet = s.client("quiet").await;
    quiet.join_quietly("big").await.unwrap();
    let mut a = s.client("alice").await;
    a.join("big").await.unwrap();
    // Others still see the quiet member join, and it is present.
    let j = a.next_op("joined", WAIT).await.unwrap();
    assert!(matches!(j.str("user"), Some("quiet" | "alice")));
    // In a cluster, presence reaches the other nodes a moment later.
    wait_presence(&mut quiet, "big", &["alice", "quiet"]).await;
    a.publish("big", "hi".into()).await.unwrap();
    assert_eq!(
        quiet.next_op("msg", WAIT).await.unwrap().str("from"),
        Some("alice")
    );
    a.close().await.unwrap();
    let mut b = s.client("bob").await;
    b.join("big").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.publish("big", "again".into()).await.unwrap();
    assert_eq!(
        quiet.next_op("msg", WAIT).await.unwrap().str("from"),
        Some("bob")
    );
    wait_presence(&mut quiet, "big", &["bob", "quiet"]).await;
    let presence_events = quiet
        .pending()
        .filter(|e| e.op() == "joined" || e.op() == "left")
        .count();
    assert_eq!(presence_events, 0);
}

async fn wait_presence(c: &mut switchboard_client::Client, room: &str, users: &[&str]) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = c.presence(room).await.unwrap();
        if now == users {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "presence {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn heartbeat_expiry_of_a_frozen_client(mode: Mode) {
    let s = Nodes::start(
        mode,
        &[
            ("SWITCHBOARD__HEARTBEAT__INTERVAL_MS", "200"),
            ("SWITCHBOARD__HEARTBEAT__TIMEOUT_MS", "800"),
        ],
    )
    .await;
    let mut watcher = s.client("watcher").await;
    watcher.join("hb").await.unwrap();
    let mut frozen = s.client("frozen").await;
    frozen.join("hb").await.unwrap();
    watcher.next_op("joined", WAIT).await.unwrap();
    watcher.next_op("joined", WAIT).await.unwrap();
    // `frozen` now neither reads nor answers pings; `watcher` keeps answering
    // (reading answers pings) and pinging.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let left = loop {
        watcher.ping().await.unwrap();
        if let Some(l) = watcher.pending().find(|e| e.op() == "left").cloned() {
            break l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no left for the frozen client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(left.str("user"), Some("frozen"));
    let (code, _) = frozen.closed(WAIT).await.unwrap();
    assert_eq!(code, 1001);
    assert_eq!(watcher.presence("hb").await.unwrap(), vec!["watcher"]);
}

async fn publish_rate_limit_is_429_and_not_published(mode: Mode) {
    let s = Nodes::start(
        mode,
        &[
            ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "1"),
            ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "3"),
        ],
    )
    .await;
    let mut a = s.client("alice").await;
    a.join("r").await.unwrap();
    let mut codes = Vec::new();
    for i in 0..5u64 {
        let ev = a
            .request(vec![
                ("op", "pub".into()),
                ("room", "r".into()),
                ("data", i.into()),
            ])
            .await
            .unwrap();
        codes.push(if ev.op() == "ok" {
            200
        } else {
            ev.u64("code").unwrap()
        });
    }
    assert_eq!(codes, vec![200, 200, 200, 429, 429]);
    a.ping().await.unwrap();
    assert_eq!(a.pending().filter(|e| e.op() == "msg").count(), 3);
}

async fn rooms_per_connection_limit_is_429(mode: Mode) {
    let s = Nodes::start(mode, &[("SWITCHBOARD__LIMITS__ROOMS_PER_CONNECTION", "2")]).await;
    let mut a = s.client("alice").await;
    a.join("a").await.unwrap();
    a.join("b").await.unwrap();
    a.join("a").await.unwrap(); // re-joining does not count twice
    match a.join("c").await {
        Err(ClientError::Server { code: 429, reason }) => {
            assert!(reason.contains("rooms_per_connection"))
        }
        other => panic!("{other:?}"),
    }
    a.leave("a").await.unwrap();
    a.join("c").await.unwrap();
}

async fn send_reaches_every_connection_or_404(mode: Mode) {
    let s = Nodes::start(mode, &[]).await;
    let mut a = s.client("alice").await;
    let mut b1 = s.client("bob").await;
    let mut b2 = s.client("bob").await;
    b1.ping().await.unwrap();
    b2.ping().await.unwrap();
    // In a cluster, bob's connections become known to alice's node shortly.
    let deadline = tokio::time::Instant::now() + WAIT;
    let delivered = loop {
        let n = a.send_to("bob", "hey".into()).await.unwrap_or(0);
        if n == 2 || tokio::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivered, 2);
    for b in [&mut b1, &mut b2] {
        let dm = b.next_op("dm", WAIT).await.unwrap();
        assert_eq!(
            (dm.str("from"), dm.get("data")),
            (Some("alice"), Some(&Value::from("hey")))
        );
    }
    match a.send_to("nobody", 1.into()).await {
        Err(ClientError::Server { code: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
}

async fn slow_consumer_is_closed_and_nobody_else_waits(mode: Mode) {
    let s = Nodes::start(
        mode,
        &[
            ("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "16"),
            ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "100000"),
            ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "100000"),
        ],
    )
    .await;
    let mut fast = s.client("fast").await;
    let mut slow = s.client("slow").await;
    fast.join("flood").await.unwrap();
    slow.join("flood").await.unwrap();
    let mut publisher = s.client("pub").await;
    let big = Value::Binary(vec![7u8; 16 * 1024]);
    // `slow` never reads: its socket buffers fill, then its queue.
    let n = 400u64;
    for i in 1..=n {
        let ev = publisher
            .request(vec![
                ("op", "pub".into()),
                ("room", "flood".into()),
                ("data", Field::Value(big.clone())),
                ("msg_id", Field::Value(format!("m{i}").into())),
            ])
            .await
            .unwrap();
        assert_eq!(ev.u64("offset"), Some(i));
        // `fast` reads everything in order as it goes.
        let m = fast.next_op("msg", WAIT).await.unwrap();
        assert_eq!(m.u64("offset"), Some(i));
    }
    // The close frame queues behind megabytes the client has not read; the
    // server abandons a write the socket will not take 1 s into closing, so
    // a client that drains its socket slower than that (a loaded machine)
    // sees the connection end without it. The metric below names the cause.
    match slow.closed(Duration::from_secs(10)).await {
        Ok((code, reason)) => assert_eq!((code, reason.as_str()), (1008, "slow consumer")),
        Err(switchboard_client::ClientError::WebSocket(e)) => {
            assert!(e.contains("EOF") || e.contains("reset"), "{e}")
        }
        Err(e) => panic!("{e:?}"),
    }
    // Counted on the node that held the slow connection.
    let mut counted = false;
    for server in &s.servers {
        let (_, metrics) = server.http("GET", "/metrics", &[], b"").await;
        counted |= metrics.contains("switchboard_slow_consumers_total 1");
    }
    assert!(counted, "no node counted the slow consumer");
}

fn jwt(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn jwt_refusals_before_upgrade_and_rooms_claim(mode: Mode) {
    let secret = "a-test-secret-that-is-long-enough!";
    let s = Nodes::start(
        mode,
        &[
            ("SWITCHBOARD__AUTH__MODE", "jwt"),
            ("SWITCHBOARD__AUTH__HS256_SECRET", secret),
        ],
    )
    .await;
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let (status, body) = s.http("GET", "/ws", &upgrade, b"").await;
    assert_eq!(status, 401);
    assert!(body.starts_with("missing token"), "{body}");
    let expired = jwt(
        secret,
        serde_json::json!({"sub": "alice", "exp": now() - 10}),
    );
    let (status, body) = s
        .http("GET", &format!("/ws?token={expired}"), &upgrade, b"")
        .await;
    assert_eq!((status, body.trim()), (401, "token expired"));
    let forged = jwt(
        "another-secret-another-secret-xx",
        serde_json::json!({"sub": "alice", "exp": now() + 60}),
    );
    let (status, body) = s
        .http("GET", &format!("/ws?token={forged}"), &upgrade, b"")
        .await;
    assert_eq!(status, 401);
    assert!(body.starts_with("invalid token"), "{body}");
    assert!(matches!(
        s.connect(ConnectOptions {
            token: Some(forged),
            ..Default::default()
        })
        .await,
        Err(ClientError::Refused { status: 401, .. })
    ));

    let good = jwt(
        secret,
        serde_json::json!({"sub": "alice", "exp": now() + 60, "rooms": ["team-7:*"]}),
    );
    let mut a = s
        .connect(ConnectOptions {
            bearer: Some(good),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(a.hello.str("user"), Some("alice"));
    a.join("team-7:general").await.unwrap();
    match a.join("team-8:general").await {
        Err(ClientError::Server { code: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
    match a.publish("team-8:general", 1.into()).await {
        Err(ClientError::Server { code: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
    let all = jwt(secret, serde_json::json!({"sub": "bob", "exp": now() + 60}));
    let mut b = s
        .connect(ConnectOptions {
            token: Some(all),
            ..Default::default()
        })
        .await
        .unwrap();
    b.join("team-8:general").await.unwrap();
}

async fn http_publish_with_and_without_the_key(mode: Mode) {
    let s = Nodes::start(mode, &[("SWITCHBOARD__API__KEY", "sekret")]).await;
    let mut a = s.client("alice").await;
    a.join("news").await.unwrap();
    let body = br#"{"room":"news","data":{"headline":"hi","n":3}}"#;
    let (status, _) = s
        .http(
            "POST",
            "/api/publish",
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer wrong")],
            body,
        )
        .await;
    assert_eq!(status, 401);
    let (status, resp) = s
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer sekret")],
            body,
        )
        .await;
    assert_eq!(
        (status, resp.as_str()),
        (200, r#"{"offset":1,"room":"news"}"#)
    );
    let m = a.next_op("msg", WAIT).await.unwrap();
    assert_eq!(m.str("from"), Some("api"));
    let data = m.get("data").unwrap();
    assert_eq!(data["headline"].as_str(), Some("hi"));
    // MessagePack body: data kept byte for byte.
    let raw = [0xcd, 0x00, 0x05];
    let mut body = vec![
        0x82, 0xa4, b'r', b'o', b'o', b'm', 0xa4, b'n', b'e', b'w', b's', 0xa4, b'd', b'a', b't',
        b'a',
    ];
    body.extend(raw);
    let (status, _) = s
        .http(
            "POST",
            "/api/publish",
            &[
                ("Authorization", "Bearer sekret"),
                ("Content-Type", "application/msgpack"),
            ],
            &body,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        a.next_op("msg", WAIT).await.unwrap().data_raw(),
        Some(&raw[..])
    );
    let (status, _) = s
        .http(
            "POST",
            "/api/publish",
            &[("Authorization", "Bearer sekret")],
            br#"{"room":"bad room","data":1}"#,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn metrics_exports_every_name() {
    let s = Server::start(&[]);
    let mut a = s.client("alice").await;
    a.join("m").await.unwrap();
    a.publish("m", 1.into()).await.unwrap();
    a.next_op("msg", WAIT).await.unwrap();
    let (status, body) = s.http("GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_connections{transport=\"ws\"} 1",
        "switchboard_connections_opened_total{transport=\"ws\"} 1",
        "switchboard_connections_closed_total{reason=",
        "switchboard_rooms ",
        "switchboard_messages_published_total 1",
        "switchboard_messages_delivered_total 1",
        "switchboard_slow_consumers_total ",
        "switchboard_presence_users ",
        "switchboard_cluster_nodes 1",
        "switchboard_cluster_messages_total{direction=\"in\"}",
        "switchboard_publish_to_delivery_seconds_bucket",
        "switchboard_build_info{version=\"0.1.0\",git=\"",
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(body.contains(name), "{name} missing from\n{body}");
    }
    // Read at scrape: this process's own descriptors, a few at least.
    let open_fds = body
        .lines()
        .find_map(|l| l.strip_prefix("process_open_fds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("process_open_fds has a value");
    assert!(open_fds >= 3.0, "{open_fds}");
    assert_eq!(s.http("GET", "/healthz", &[], b"").await.0, 200);
    assert_eq!(s.http("GET", "/readyz", &[], b"").await.0, 200);
}

#[tokio::test]
async fn sigterm_drains_with_1012_and_exits_0() {
    let mut s = Server::start(&[("SWITCHBOARD__SHUTDOWN__DRAIN_S", "2")]);
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(s.client(&format!("u{i}")).await);
    }
    let started = std::time::Instant::now();
    s.signal("TERM");
    let waiting: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let closed = c.closed(Duration::from_secs(10)).await;
                (closed, started.elapsed())
            })
        })
        .collect();
    // While draining, readiness fails and no new connection is taken.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.http("GET", "/readyz", &[], b"").await.0, 503);
    assert!(matches!(
        s.connect(ConnectOptions::default()).await,
        Err(ClientError::Refused { status: 503, .. })
    ));
    let mut closed_at = Vec::new();
    for w in waiting {
        let (closed, at) = w.await.unwrap();
        // The close says how long the client may wait before it reconnects.
        assert_eq!(
            closed.unwrap(),
            (1012, "node draining; reconnect within 2000 ms".to_owned())
        );
        closed_at.push(at);
    }
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}\n{}", s.logs());
    // Closes were spread over the window, not all at once.
    let first = closed_at.iter().min().unwrap();
    let last = closed_at.iter().max().unwrap();
    assert!(
        *last - *first >= Duration::from_millis(800),
        "{closed_at:?}"
    );
}

#[tokio::test]
async fn bad_config_value_is_refused_naming_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("limits.outbound_queue"), "{err}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .env("SWITCHBOARD__HEARTBEAT__INTERVAL_MS", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat.interval_ms"));
}

#[tokio::test]
async fn a_crashed_room_restarts_and_members_lose_nothing() {
    let s = Server::start(&[("SWITCHBOARD__DEBUG__FAULTS", "true")]);
    let mut a = s.client("alice").await;
    let mut p = s.client("pub").await;
    a.join("fragile").await.unwrap();
    let epoch = p
        .join("fragile")
        .await
        .unwrap()
        .str("epoch")
        .unwrap()
        .to_owned();
    p.publish("fragile", 1.into()).await.unwrap();
    let (status, _) = s.http("POST", "/debug/rooms/fragile/crash", &[], b"").await;
    assert_eq!(status, 200);
    // Commands already queued to the room when it fails are lost (clients
    // retry with msg_id); publish once the restart has happened.
    let deadline = std::time::Instant::now() + WAIT;
    while !s.logs().contains("room failed; restarting it") {
        assert!(std::time::Instant::now() < deadline, "no restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.publish("fragile", 2.into()).await.unwrap();
    assert_eq!(a.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(1));
    assert_eq!(a.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(2));
    // Same sequencer state: same epoch, history intact.
    let mut late = s.client("late").await;
    let ok = late.join_since("fragile", &epoch, 0).await.unwrap();
    assert_eq!(
        (ok.bool("recovered"), ok.u64("offset")),
        (Some(true), Some(2))
    );
}

async fn idle_sessions_passivate_and_wake(mode: Mode) {
    let s = Nodes::start(mode, &[("SWITCHBOARD__SESSION__PASSIVATE_MS", "100")]).await;
    let mut a = s.client("alice").await;
    a.join("p").await.unwrap();
    for i in 1..=3u64 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.publish("p", i.into()).await.unwrap(), i);
        assert_eq!(a.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(i));
    }
}

async fn a_member_that_stops_reading_blocks_nobody(mode: Mode) {
    let s = Nodes::start(
        mode,
        &[
            ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "100000"),
            ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "100000"),
        ],
    )
    .await;
    let mut stuck = s.client("stuck").await;
    stuck.join("r").await.unwrap();
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut c = s.client(&format!("reader{i}")).await;
        c.join("r").await.unwrap();
        readers.push(c);
    }
    let mut p = s.client("pub").await;
    // Enough to fill `stuck`'s socket buffers many times over, but not its queue.
    let chunk = Value::Binary(vec![1u8; 8 * 1024]);
    for i in 1..=200u64 {
        p.request(vec![
            ("op", "pub".into()),
            ("room", "r".into()),
            ("data", Field::Value(chunk.clone())),
        ])
        .await
        .unwrap();
        for r in &mut readers {
            assert_eq!(r.next_op("msg", WAIT).await.unwrap().u64("offset"), Some(i));
        }
    }
}

/// Every test above runs against one node and against three clustered
/// nodes with the clients spread over them (round robin).
macro_rules! on_one_node_and_on_a_cluster {
    ($($name:ident),* $(,)?) => {
        mod one_node {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Mode::Single).await
            })*
        }
        mod cluster_of_three {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Mode::Cluster).await
            })*
        }
    };
}

on_one_node_and_on_a_cluster!(
    join_pub_msg_leave_ping,
    a_quiet_member_gets_messages_but_no_presence_events,
    ping_command_gets_pong,
    data_passes_through_byte_for_byte,
    batched_commands_in_one_message,
    bad_commands_get_400_naming_the_field_and_keep_the_connection,
    text_frame_is_400_then_1003,
    frame_limit_exact_is_ok_one_more_is_1009,
    recovery_with_since,
    msg_id_retry_is_not_published_twice,
    presence_joined_left_on_close,
    heartbeat_expiry_of_a_frozen_client,
    publish_rate_limit_is_429_and_not_published,
    rooms_per_connection_limit_is_429,
    send_reaches_every_connection_or_404,
    slow_consumer_is_closed_and_nobody_else_waits,
    jwt_refusals_before_upgrade_and_rooms_claim,
    http_publish_with_and_without_the_key,
    idle_sessions_passivate_and_wake,
    a_member_that_stops_reading_blocks_nobody,
);

/// Paths of every shape near the routes that take a room: an answer each
/// (4xx for what is malformed), never a dropped connection, and the node
/// serves on.
#[tokio::test]
async fn malformed_paths_get_an_answer() {
    let s = Server::start(&[("SWITCHBOARD__DEBUG__FAULTS", "true")]);
    for (method, path, want) in [
        ("GET", "/api/rooms/presence", 404),
        ("GET", "/api/rooms//presence", 400),
        ("GET", "/api/rooms/", 404),
        ("GET", "/api/rooms", 404),
        ("GET", "/api/rooms/presence/presence", 200),
        ("GET", "/api/rooms/a%20b/presence", 400),
        ("POST", "/debug/rooms/crash", 404),
        ("POST", "/debug/rooms//crash", 404),
        ("POST", "/debug/rooms/", 404),
        ("POST", "/debug/rooms/nothing-here/crash", 404),
    ] {
        let (status, body) = s.http(method, path, &[], b"").await;
        assert_eq!(status, want, "{method} {path}: {body}");
    }
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
    let (status, _) = s.http("GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
}

/// `join`, `pub`, `leave` and `ping` are carried out without a Session
/// actor; `presence` and `send` wake one, and what follows them waits for
/// them: replies keep the commands' order.
#[tokio::test]
async fn only_commands_that_wait_wake_a_session_and_order_holds() {
    let s = Server::start(&[("SWITCHBOARD__SESSION__PASSIVATE_MS", "300")]);
    let mut a = s.client("alice").await;
    a.join("p").await.unwrap();
    assert_eq!(a.publish("p", 1.into()).await.unwrap(), 1);
    a.ping().await.unwrap();
    assert_eq!(s.metric("switchboard_session_actors").await, 0.0);
    // One message with `presence` then `pub`, and right behind it a `ping`:
    // the Session carries out all three, in order.
    let mut batch = encode_command(&[
        ("op", "presence".into()),
        ("id", 101u64.into()),
        ("room", "p".into()),
    ]);
    batch.extend(encode_command(&[
        ("op", "pub".into()),
        ("id", 102u64.into()),
        ("room", "p".into()),
        ("data", Field::Value(Value::from(2))),
    ]));
    a.send_binary(batch).await.unwrap();
    a.send_binary(encode_command(&[
        ("op", "ping".into()),
        ("id", 103u64.into()),
    ]))
    .await
    .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 3 {
        let ev = a.next_event(WAIT).await.unwrap();
        if let Some(id) = ev.u64("id") {
            replies.push((id, ev.op().to_owned(), ev.u64("offset")));
        }
    }
    // Carried out in order: the presence answered before the pub went to
    // the room, the pub sequenced at 2. The pong is the Session's own
    // answer and may come before the room's `ok` for the pub (protocol.md,
    // "Commands").
    let at = |id: u64| replies.iter().position(|r| r.0 == id).unwrap();
    assert!(at(101) < at(102), "{replies:?}");
    replies.sort();
    assert_eq!(
        replies,
        [
            (101, "ok".to_owned(), None),
            (102, "ok".to_owned(), Some(2)),
            (103, "pong".to_owned(), None)
        ]
    );
    assert_eq!(s.metric("switchboard_session_actors").await, 1.0);
    s.wait_metric("switchboard_session_actors", 0.0, WAIT).await;
    assert_eq!(a.publish("p", 3.into()).await.unwrap(), 3);
}

#[tokio::test]
async fn the_demo_page_and_the_sdk_it_loads_are_served_unless_turned_off() {
    let s = Server::start(&[]);
    let (status, page) = s.http("GET", "/demo", &[], b"").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"src="/demo/app.js""#), "{page}");
    let (status, app) = s.http("GET", "/demo/app.js", &[], b"").await;
    assert_eq!(status, 200);
    assert!(app.contains(r#"from "/demo/switchboard.js""#));
    let (status, sdk) = s.http("GET", "/demo/switchboard.js", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        sdk.contains("switchboard.v1"),
        "the bundle speaks the protocol"
    );
    assert_eq!(s.http("GET", "/demo/", &[], b"").await.0, 200);
    assert_eq!(s.http("GET", "/demo/nothing.js", &[], b"").await.0, 404);
    assert_eq!(s.http("GET", "/demonstration", &[], b"").await.0, 404);

    let off = Server::start(&[("SWITCHBOARD__HTTP__DEMO", "false")]);
    assert_eq!(off.http("GET", "/demo", &[], b"").await.0, 404);
    assert_eq!(
        off.http("GET", "/demo/switchboard.js", &[], b"").await.0,
        404
    );
}

/// The lag of a member that stops reading is visible at scrape: what it has
/// queued (events, bytes), for how long, and in the per-connection
/// histograms; it drains back to zero once the member reads.
#[tokio::test]
async fn a_member_that_does_not_read_shows_as_queued_events_bytes_and_age() {
    let s = Server::start(&[
        ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "100000"),
        ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "100000"),
    ]);
    let mut reader = s.client("alice").await;
    reader.join("lag").await.unwrap();
    let mut publisher = s.client("bob").await;
    // 16 MiB: more than the socket buffers between the node and alice.
    let pad = Value::from("x".repeat(60 * 1024));
    for _ in 0..280 {
        publisher.publish("lag", pad.clone()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = s.metric("switchboard_outbound_queued_events").await;
    let bytes = s.metric("switchboard_outbound_queued_bytes").await;
    let age = s
        .metric("switchboard_outbound_oldest_event_age_seconds")
        .await;
    assert!(events >= 1.0, "queued events {events}");
    assert!(
        bytes >= events * 60.0 * 1024.0,
        "queued bytes {bytes} for {events} events"
    );
    assert!(age >= 0.3, "oldest event age {age}");
    // Two connections (alice lagging, bob not) per scrape so far.
    let (_, body) = s.http("GET", "/metrics", &[], b"").await;
    let count = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_count "))?.parse().ok())
            .unwrap_or(0.0)
    };
    for h in [
        "switchboard_connection_queued_events",
        "switchboard_connection_queued_bytes",
        "switchboard_connection_oldest_event_age_seconds",
    ] {
        assert!(count(h) >= 6.0, "{h}: {}", count(h));
    }
    let lagging = body
        .lines()
        .find_map(|l| {
            l.strip_prefix("switchboard_connection_oldest_event_age_seconds_bucket{le=\"0.25\"} ")
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(
        lagging < count("switchboard_connection_oldest_event_age_seconds"),
        "no sample above 0.25 s"
    );
    // Reading everything drains it.
    let mut got = 0;
    while got < 280 {
        reader.next_op("msg", WAIT).await.unwrap();
        got += 1;
    }
    s.wait_metric("switchboard_outbound_queued_events", 0.0, WAIT)
        .await;
    assert_eq!(
        s.metric("switchboard_outbound_oldest_event_age_seconds")
            .await,
        0.0
    );
}
