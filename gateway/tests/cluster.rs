//! Three real `switchboard` processes on loopback, clustered over
//! `ractor_cluster`, with real WebSocket clients on every node.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{cluster3, room_homed_on, Server, WAIT};
use rmpv::Value;
use switchboard_client::{Client, Field};

const FAST: &[(&str, &str)] = &[
    ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "100000"),
    ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "100000"),
];

/// Publishes, retrying while the room's home changes hands (503).
async fn publish_until_taken(c: &mut Client, room: &str, data: String) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match c.publish(room, data.as_str().into()).await {
            Ok(off) => return off,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn msgs(c: &mut Client, n: usize) -> Vec<(u64, String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c
            .next_op("msg", WAIT)
            .await
            .unwrap_or_else(|e| panic!("after {} msgs: {e}", out.len()));
        out.push((
            m.u64("offset").unwrap(),
            m.str("from").unwrap().to_owned(),
            m.get("data").unwrap().clone(),
        ));
    }
    out
}

#[tokio::test]
async fn a_member_receives_what_is_published_on_every_node() {
    let nodes = cluster3(FAST).await;
    let mut member = nodes[0].client("member").await;
    member.join("news").await.unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let mut p = node.client(&format!("pub{i}")).await;
        p.publish("news", (i as u64).into()).await.unwrap();
    }
    let got = msgs(&mut member, 3).await;
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        got.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        vec!["pub0", "pub1", "pub2"]
    );
}

#[tokio::test]
async fn concurrent_publishers_on_two_nodes_one_order_everywhere() {
    let nodes = cluster3(FAST).await;
    let mut members = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut m = node.client(&format!("m{i}")).await;
        m.join("order").await.unwrap();
        members.push(m);
    }
    let per_publisher = 300u64;
    let mut tasks = Vec::new();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let mut p = node.client(&format!("p{i}")).await;
        tasks.push(tokio::spawn(async move {
            for k in 0..per_publisher {
                // Pipelined: no waiting for each ok.
                let cmd = switchboard_client::encode_command(&[
                    ("op", "pub".into()),
                    ("room", "order".into()),
                    ("data", Field::Value(Value::from(k))),
                ]);
                p.send_binary(cmd).await.unwrap();
            }
            p.ping().await.unwrap();
            p
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = (2 * per_publisher) as usize;
    let mut seqs = Vec::new();
    for m in &mut members {
        seqs.push(msgs(m, total).await);
    }
    let offsets: Vec<u64> = seqs[0].iter().map(|m| m.0).collect();
    assert_eq!(
        offsets,
        (1..=total as u64).collect::<Vec<_>>(),
        "gaps or duplicates"
    );
    assert_eq!(seqs[0], seqs[1], "node 1 and node 2 differ");
    assert_eq!(seqs[0], seqs[2], "node 1 and node 3 differ");
    // Each publisher's own messages stay in its order.
    for p in ["p1", "p2"] {
        let mine: Vec<&Value> = seqs[0].iter().filter(|m| m.1 == p).map(|m| &m.2).collect();
        let want: Vec<Value> = (0..per_publisher).map(Value::from).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn presence_and_joined_left_are_cluster_wide() {
    let nodes = cluster3(&[]).await;
    let mut watcher = nodes[0].client("watcher").await;
    watcher.join("p").await.unwrap();
    // alice on two nodes, bob on the third.
    let mut a1 = nodes[1].client("alice").await;
    a1.join("p").await.unwrap();
    let mut a2 = nodes[2].client("alice").await;
    a2.join("p").await.unwrap();
    let mut b = nodes[2].client("bob").await;
    b.join("p").await.unwrap();
    let want = vec!["alice", "bob", "watcher"];
    for c in [&mut watcher, &mut a1, &mut b] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let users = c.presence("p").await.unwrap();
            if users == want {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{users:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (_, body) = nodes[1]
        .http("GET", "/api/rooms/p/presence", &[], b"")
        .await;
    assert_eq!(body, r#"{"room":"p","users":["alice","bob","watcher"]}"#);
    // One joined per user, whatever the number of connections and nodes.
    watcher.ping().await.unwrap();
    let joined: Vec<String> = watcher
        .pending()
        .filter(|e| e.op() == "joined")
        .map(|e| e.str("user").unwrap().to_owned())
        .collect();
    assert_eq!(joined, vec!["watcher", "alice", "bob"]);
    // alice leaves on one node: still present; on the other too: left, once.
    a1.leave("p").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a2.close().await.unwrap();
    let left = watcher.next_op("left", WAIT).await.unwrap();
    assert_eq!(left.str("user"), Some("alice"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    watcher.ping().await.unwrap();
    assert_eq!(watcher.pending().filter(|e| e.op() == "left").count(), 0);
    assert_eq!(watcher.presence("p").await.unwrap(), vec!["bob", "watcher"]);
}

#[tokio::test]
async fn send_reaches_users_on_other_nodes_and_counts_them_all() {
    let nodes = cluster3(&[]).await;
    let mut sender = nodes[0].client("sender").await;
    let mut targets = vec![
        nodes[0].client("target").await,
        nodes[1].client("target").await,
        nodes[2].client("target").await,
        nodes[2].client("target").await,
    ];
    // Wait until every node knows where `target` is. Presence registers a
    // connection asynchronously, even on its own node: right after the
    // hellos, `target` may not be known at all yet (404).
    let deadline = tokio::time::Instant::now() + WAIT;
    let delivered = loop {
        let n = match sender.send_to("target", "hi".into()).await {
            Ok(n) => n,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(e, switchboard_client::ClientError::Server { code: 404, .. }),
                    "{e}"
                );
                0
            }
            Err(e) => panic!("{e}"),
        };
        if n == 4 || tokio::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(delivered, 4);
    for t in &mut targets {
        let dm = t.next_op("dm", WAIT).await.unwrap();
        assert_eq!(dm.str("from"), Some("sender"));
    }
    let mut lone = nodes[2].client("lone").await;
    // Presence replication is asynchronous: n1 learns of `lone` shortly.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match sender.send_to("lone", 1.into()).await {
            Ok(n) => {
                assert_eq!(n, 1);
                break;
            }
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lone.next_op("dm", WAIT).await.unwrap();
    match sender.send_to("nobody", 1.into()).await {
        Err(switchboard_client::ClientError::Server { code: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn kill_9_a_node_then_restart_it() {
    let mut nodes = cluster3(FAST).await;
    let names = ["n1", "n2", "n3"];
    // A room homed on a survivor, and one homed on the node that dies.
    let stays = room_homed_on("stays", "n1", &names);
    let moves = room_homed_on("moves", "n3", &names);
    let mut s1 = nodes[0].client("u1").await;
    let mut s2 = nodes[1].client("u2").await;
    let mut s3 = nodes[2].client("u3").await;
    let mut m1 = nodes[0].client("v1").await;
    let mut m2 = nodes[1].client("v2").await;
    for (c, room) in [
        (&mut s1, &stays),
        (&mut s2, &stays),
        (&mut s3, &stays),
        (&mut m1, &moves),
        (&mut m2, &moves),
    ] {
        c.join(room).await.unwrap();
    }
    let epoch = m1
        .join(&moves)
        .await
        .unwrap()
        .str("epoch")
        .unwrap()
        .to_owned();
    s3.publish(&stays, "before".into()).await.unwrap();
    for c in [&mut s1, &mut s2] {
        msgs(c, 1).await;
    }
    // Acknowledged: held by the home (n3) and its follower.
    let before = m2.publish(&moves, "before".into()).await.unwrap();
    assert_eq!(msgs(&mut m1, 1).await[0].0, before);
    let killed_at = std::time::Instant::now();
    nodes[2].kill9();

    // Survivors in a room homed elsewhere: `left` for the lost node's user.
    for c in [&mut s1, &mut s2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match c.next_op("left", Duration::from_millis(200)).await {
                Ok(l) => {
                    assert_eq!(l.str("user"), Some("u3"));
                    break;
                }
                Err(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "no left within 10 s"
                ),
            }
        }
    }
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    nodes[0].wait_nodes(2, WAIT).await;
    nodes[1].wait_nodes(2, WAIT).await;
    // Publishing among the survivors keeps working, in both rooms, to the
    // same connections. The room homed on the lost node continues its
    // epoch on the follower that held a copy: no reset, no gap.
    let off = s1.publish(&stays, "after".into()).await.unwrap();
    assert_eq!(msgs(&mut s2, 1).await[0].0, off);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let off = loop {
        // 503 while the new home takes the room over.
        match m2.publish(&moves, "rehomed".into()).await {
            Ok(off) => break off,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(off, before + 1);
    let next = loop {
        let ev = m1.next_event(WAIT).await.unwrap();
        if matches!(ev.op(), "msg" | "reset") {
            break ev;
        }
    };
    assert_eq!(
        (next.op(), next.u64("offset")),
        ("msg", Some(before + 1)),
        "{next:?}"
    );
    let mut late = nodes[0].client("late").await;
    let ok = late.join_since(&moves, &epoch, 0).await.unwrap();
    assert_eq!(ok.bool("recovered"), Some(true));
    assert_eq!(msgs(&mut late, 2).await[1].2, Value::from("rehomed"));

    // The node comes back, rejoins, and its members receive again.
    common::restart(&mut nodes, 2);
    for n in &nodes {
        n.wait_nodes(3, Duration::from_secs(20)).await;
    }
    let mut back = nodes[2].client("u3").await;
    back.join(&stays).await.unwrap();
    let off = s2.publish(&stays, "welcome back".into()).await.unwrap();
    let got = msgs(&mut back, 1).await;
    assert_eq!(
        (got[0].0, got[0].2.clone()),
        (off, Value::from("welcome back"))
    );
}

#[tokio::test]
async fn a_partition_keeps_both_sides_serving_and_heals() {
    // n1 <-> n2 goes through fault proxies (both directions); n3 reaches both.
    let (nodes, to_n1, to_n2) = common::cluster_with_proxied_link(&[]).await;
    let mut watchers = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut w = n.client(&format!("w{}", i + 1)).await;
        w.join("lobby").await.unwrap();
        watchers.push(w);
    }

    to_n2.cut();
    to_n1.cut();
    nodes[0].wait_nodes(2, Duration::from_secs(10)).await;
    nodes[1].wait_nodes(2, Duration::from_secs(10)).await;
    // What clients see during the partition: each side keeps serving its own
    // clients (join, publish, receive) in rooms that stay on its side.
    for (i, n) in nodes.iter().take(2).enumerate() {
        let side: Vec<&str> = if i == 0 {
            vec!["n1", "n3"]
        } else {
            vec!["n2", "n3"]
        };
        let me = side[0];
        let room = room_homed_on(&format!("side{i}"), me, &side);
        let mut a = n.client(&format!("a{i}")).await;
        let mut b = n.client(&format!("b{i}")).await;
        a.join(&room).await.unwrap();
        b.join(&room).await.unwrap();
        let off = a.publish(&room, "during".into()).await.unwrap();
        assert_eq!(msgs(&mut b, 1).await[0].0, off);
    }

    to_n2.heal();
    to_n1.heal();
    for n in &nodes {
        n.wait_nodes(3, Duration::from_secs(20)).await;
    }
    // A partition closes no connection: a watcher whose room changed home
    // (during the partition or at the heal) was reset, and is still there.
    for w in watchers.iter_mut() {
        w.ping().await.expect("the watcher stayed connected");
    }
    // Converged: presence is the same on every node...
    let mut views = Vec::new();
    for n in &nodes {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, body) = n.http("GET", "/api/rooms/lobby/presence", &[], b"").await;
            if body.contains(r#"["w1","w2","w3"]"#) || tokio::time::Instant::now() > deadline {
                views.push(body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(views.iter().all(|v| *v == views[0]), "{views:?}");
    assert!(views[0].contains(r#"["w1","w2","w3"]"#), "{views:?}");
    // ...and every room has one home: joins on every node get one epoch,
    // and one publication reaches all of them with one offset.
    let mut clients = Vec::new();
    let mut epochs = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut c = n.client(&format!("c{i}")).await;
        let ok = c.join("after-heal").await.unwrap();
        epochs.insert(ok.str("epoch").unwrap().to_owned(), ());
        clients.push(c);
    }
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    let off = clients[0]
        .publish("after-heal", "one".into())
        .await
        .unwrap();
    for c in &mut clients {
        assert_eq!(msgs(c, 1).await[0].0, off);
    }
}

#[tokio::test]
async fn a_silent_partition_is_detected_by_the_watchdog_and_heals() {
    let (nodes, to_n1, to_n2) = common::cluster_with_proxied_link(&[]).await;
    // The link stays open but carries nothing: no TCP error to notice.
    let started = std::time::Instant::now();
    to_n1.blackhole();
    to_n2.blackhole();
    nodes[0].wait_nodes(2, Duration::from_secs(10)).await;
    nodes[1].wait_nodes(2, Duration::from_secs(10)).await;
    let detected = started.elapsed();
    assert!(detected < Duration::from_secs(5), "took {detected:?}");
    assert!(nodes[0].logs().contains("peer not answering"));
    to_n1.heal();
    to_n2.heal();
    for n in &nodes {
        n.wait_nodes(3, Duration::from_secs(20)).await;
    }
}

#[tokio::test]
async fn peers_are_found_through_dns() {
    let cookie = common::cookie();
    let base = [
        ("SWITCHBOARD__CLUSTER__LISTEN", "127.0.0.1:0"),
        ("SWITCHBOARD__CLUSTER__COOKIE", cookie.as_str()),
    ];
    let mut d1_env = base.to_vec();
    d1_env.push(("SWITCHBOARD__NODE__NAME", "d1"));
    let d1 = Server::start(&d1_env);
    // `localhost` resolves to this machine: d2 finds d1 by name (d1's port
    // is known only once it runs, so the lookup goes one way).
    let dns = format!("localhost:{}", common::cluster_port(&d1));
    let mut d2_env = base.to_vec();
    d2_env.push(("SWITCHBOARD__NODE__NAME", "d2"));
    d2_env.push(("SWITCHBOARD__CLUSTER__DNS", &dns));
    let d2 = Server::start(&d2_env);
    for n in [&d1, &d2] {
        n.wait_nodes(2, Duration::from_secs(20)).await;
    }
}

#[tokio::test]
async fn a_room_whose_home_cannot_be_reached_answers_503() {
    let env = [("SWITCHBOARD__LIMITS__ROOMS_PER_CONNECTION", "1")];
    let (nodes, to_n1, to_n2) = common::cluster_with_proxied_link(&env).await;
    let names = ["n1", "n2", "n3"];
    let room = room_homed_on("far", "n2", &names);
    let near = room_homed_on("near", "n1", &names);
    let mut c = nodes[0].client("c").await;
    // The link to the room's home goes silent; until the watchdog drops the
    // peer, the home is in the view but cannot answer.
    to_n1.blackhole();
    to_n2.blackhole();
    match c.join(&room).await {
        Err(switchboard_client::ClientError::Server { code: 503, reason }) => {
            assert!(reason.starts_with("room:"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // The refused join does not count against rooms_per_connection (1).
    c.join(&near).await.unwrap();
    c.leave(&near).await.unwrap();
    // Once the peer is dropped the room is homed on this side, and works.
    nodes[0].wait_nodes(2, Duration::from_secs(10)).await;
    c.join(&room).await.unwrap();
    to_n1.heal();
    to_n2.heal();
}

/// A home (or a node with a user's connections) that has stopped answering
/// delays only what needs its answer: the relay here goes on serving the
/// room's other members, and a connection's next commands do not wait for
/// a `send` to that node.
#[tokio::test]
async fn a_peer_that_does_not_answer_stalls_neither_a_relay_nor_a_session() {
    let (nodes, to_n1, to_n2) = common::cluster_with_proxied_link(&[]).await;
    let names = ["n1", "n2", "n3"];
    let room = room_homed_on("stall", "n2", &names);
    // m1 makes n1 a relay of the room, subscribed at n2.
    let mut m1 = nodes[0].client("m1").await;
    let ok = m1.join(&room).await.unwrap();
    let epoch = ok.str("epoch").unwrap().to_owned();
    let mut m2 = nodes[0].client("m2").await;
    // A user online on n2 only, known to n1's presence.
    let mut far = nodes[1].client("far").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while m1.send_to("far", "hi".into()).await.unwrap_or(0) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "n1 never saw far");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    far.next_op("dm", WAIT).await.unwrap();

    to_n1.blackhole();
    to_n2.blackhole();
    // m2 resumes the room: its join needs the home's answer.
    let since = Value::Map(vec![
        ("epoch".into(), epoch.as_str().into()),
        ("offset".into(), 0u64.into()),
    ]);
    let join = switchboard_client::encode_command(&[
        ("op", "join".into()),
        ("id", Field::Value(Value::from(7u64))),
        ("room", room.as_str().into()),
        ("since", Field::Value(since)),
    ]);
    m2.send_binary(join).await.unwrap();
    // m1 sends far a message, which n2 must count, then pings: the pong
    // comes first (a session that awaited n2 would answer it only after the
    // send's reply, up to the 2 s call timeout later).
    let mut send_then_ping = switchboard_client::encode_command(&[
        ("op", "send".into()),
        ("id", Field::Value(Value::from(1u64))),
        ("to", "far".into()),
        ("data", "psst".into()),
    ]);
    send_then_ping.extend(switchboard_client::encode_command(&[
        ("op", "ping".into()),
        ("id", Field::Value(Value::from(2u64))),
    ]));
    m1.send_binary(send_then_ping).await.unwrap();
    let first = m1
        .next_matching(WAIT, |e| matches!(e.u64("id"), Some(1 | 2)))
        .await
        .unwrap();
    assert_eq!(first.op(), "pong", "{first:?}");
    // Meanwhile m1 leaves the room, and its leave is answered while m2's
    // join still waits (a relay that awaited the home would answer it only
    // after the join).
    m1.leave(&room).await.unwrap();
    match m2.next_event(Duration::ZERO).await {
        Err(switchboard_client::ClientError::Timeout) => {}
        other => panic!("the join was answered before the leave: {other:?}"),
    }
    // Both get their answers once n2 answers or is dropped from the view.
    let answer = m2.reply(7, Duration::from_secs(10)).await.unwrap();
    assert!(
        answer.op() == "ok" || answer.u64("code") == Some(503),
        "{answer:?}"
    );
    let send_reply = m1.reply(1, Duration::from_secs(10)).await.unwrap();
    assert!(matches!(send_reply.op(), "ok" | "err"), "{send_reply:?}");
    to_n1.heal();
    to_n2.heal();
}

#[tokio::test]
async fn clients_of_a_draining_node_recover_elsewhere() {
    let mut env = FAST.to_vec();
    env.push(("SWITCHBOARD__SHUTDOWN__DRAIN_S", "2"));
    let mut nodes = cluster3(&env).await;
    let names = ["n1", "n2", "n3"];
    let rooms = [
        room_homed_on("drain-a", "n1", &names),
        room_homed_on("drain-b", "n2", &names),
        room_homed_on("drain-c", "n3", &names),
    ];
    let mut publisher = nodes[0].client("publisher").await;
    let mut on_n3 = Vec::new();
    for room in &rooms {
        let mut c = nodes[2].client("mobile").await;
        let epoch = c.join(room).await.unwrap().str("epoch").unwrap().to_owned();
        publisher.publish(room, "first".into()).await.unwrap();
        assert_eq!(msgs(&mut c, 1).await[0].0, 1);
        on_n3.push((c, epoch));
    }
    // SIGTERM: every client of n3 is closed with 1012 within the drain.
    nodes[2].signal("TERM");
    for (c, _) in &mut on_n3 {
        let (code, _) = c.closed(Duration::from_secs(10)).await.unwrap();
        assert_eq!(code, 1012);
    }
    for room in &rooms[..2] {
        publisher.publish(room, "missed".into()).await.unwrap();
    }
    // The drained node's own room has moved (or is moving) to its new home;
    // a publisher retries until it is taken.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while publisher.publish(&rooms[2], "missed".into()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(nodes[2].wait_exit(Duration::from_secs(10)).success());
    nodes[0].wait_nodes(2, Duration::from_secs(10)).await;
    // Reconnected to another node, every room recovers what was missed,
    // the one homed on the drained node too: it was handed over to its new
    // home, which continues its epoch.
    for (room, (_, epoch)) in rooms.iter().zip(&on_n3) {
        let mut c = nodes[1].client("mobile").await;
        let ok = c.join_since(room, epoch, 1).await.unwrap();
        assert_eq!(ok.bool("recovered"), Some(true), "{room}");
        assert_eq!(ok.str("epoch"), Some(epoch.as_str()), "{room}");
        let got = msgs(&mut c, 1).await;
        assert_eq!((got[0].0, got[0].2.clone()), (2, Value::from("missed")));
    }
}

/// A home frozen past the watchdog (SIGSTOP: a long GC-like pause, a
/// stopped VM) wakes up to find its follower took the room over and went
/// on. It continues that sequence: no member anywhere is reset, nothing is
/// released twice at one offset (a publication queued on the frozen node
/// is answered with an offset that carries it, or refused), and a rejoin
/// on the woken node recovers.
#[tokio::test]
async fn a_frozen_home_wakes_into_the_sequence_its_follower_went_on_with() {
    let nodes = cluster3(FAST).await;
    let names = ["n1", "n2", "n3"];
    let room = room_homed_on("frozen", "n2", &names);
    let mut a = nodes[0].client("a").await;
    let mut b = nodes[2].client("b").await;
    let mut c = nodes[1].client("c").await;
    let epoch = a
        .join(&room)
        .await
        .unwrap()
        .str("epoch")
        .unwrap()
        .to_owned();
    b.join(&room).await.unwrap();
    c.join(&room).await.unwrap();
    let first = a.publish(&room, "before".into()).await.unwrap();
    for m in [&mut a, &mut b, &mut c] {
        assert_eq!(msgs(m, 1).await[0].0, first);
    }

    nodes[1].freeze();
    // Sent to the frozen node: it reads it when it wakes.
    let queued = switchboard_client::encode_command(&[
        ("op", "pub".into()),
        ("id", Field::Value(Value::from(77u64))),
        ("room", room.as_str().into()),
        ("data", "queued".into()),
    ]);
    c.send_binary(queued).await.unwrap();
    nodes[0].wait_nodes(2, WAIT).await;
    nodes[2].wait_nodes(2, WAIT).await;
    // The follower takes the room over and goes on with its epoch.
    let mut during = Vec::new();
    for i in 0..3 {
        during.push(publish_until_taken(&mut a, &room, format!("during {i}")).await);
    }
    assert_eq!(during, [first + 1, first + 2, first + 3]);
    nodes[1].signal("CONT");
    for n in &nodes {
        n.wait_nodes(3, Duration::from_secs(20)).await;
    }
    let last = publish_until_taken(&mut b, &room, "after".into()).await;

    // Every member, the woken node's too, sees one sequence: no reset, no
    // gap, and at each offset the same message.
    let mut seen: Vec<Vec<(u64, Value)>> = Vec::new();
    let mut answer = None;
    for (i, m) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
        let mut got = Vec::new();
        while got.last().map(|(o, _)| *o) != Some(last) {
            let ev = m
                .next_event(WAIT)
                .await
                .unwrap_or_else(|e| panic!("member {i}: {e} after {got:?}"));
            assert_ne!(ev.op(), "reset", "member {i}: {ev:?}");
            match ev.op() {
                "msg" => got.push((ev.u64("offset").unwrap(), ev.get("data").unwrap().clone())),
                _ if ev.u64("id") == Some(77) => answer = Some(ev),
                _ => {}
            }
        }
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, ((first + 1)..=last).collect::<Vec<_>>());
        seen.push(got);
    }
    // On failure, the nodes' logs tell which node released what.
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "{seen:?}\n{}",
        nodes
            .iter()
            .map(|n| n.logs())
            .collect::<Vec<_>>()
            .join("\n=====\n")
    );
    // The queued publication: at an offset that carries it, or refused.
    let answer = match answer {
        Some(answer) => answer,
        None => c.reply(77, WAIT).await.unwrap(),
    };
    if answer.op() == "ok" {
        let at = answer.u64("offset").unwrap();
        assert!(
            seen[0].contains(&(at, Value::from("queued"))),
            "acknowledged at {at}, delivered {:?}",
            seen[0]
        );
    }
    let mut back = nodes[1].client("back").await;
    let ok = back.join_since(&room, &epoch, first).await.unwrap();
    assert_eq!(
        (ok.bool("recovered"), ok.str("epoch")),
        (Some(true), Some(epoch.as_str()))
    );
}
