//! A rolling deploy runs two releases side by side: the previous release
//! (the first, wire version 1, built from this repository's history by
//! scripts/previous-release.sh) and this build, as real processes in one
//! cluster.

mod common;

use std::time::Duration;

use common::{Server, WAIT};
use rmpv::Value;
use switchboard_client::Client;
use switchboard_cluster::rendezvous;

const FAST: &[(&str, &str)] = &[
    ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "100000"),
    ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "100000"),
];

fn previous_release() -> String {
    let built = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/previous/ec3b930/bin/switchboard"
    );
    std::env::var("SWITCHBOARD_PREVIOUS_BIN")
        .ok()
        .or_else(|| {
            std::path::Path::new(built)
                .exists()
                .then(|| built.to_owned())
        })
        .expect(
            "the previous release is not built: run scripts/previous-release.sh \
             (scripts/test.sh does) or set SWITCHBOARD_PREVIOUS_BIN",
        )
}

fn node_env<'a>(name: &'a str, seeds: &'a str, cookie: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = FAST.to_vec();
    env.extend([
        ("SWITCHBOARD__NODE__NAME", name),
        ("SWITCHBOARD__CLUSTER__LISTEN", "127.0.0.1:0"),
        ("SWITCHBOARD__CLUSTER__SEEDS", seeds),
        ("SWITCHBOARD__CLUSTER__COOKIE", cookie),
    ]);
    env
}

fn room_homed_on(prefix: &str, home: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| rendezvous(r, &["n1", "n2"]) == Some(home))
        .unwrap()
}

/// The next `msg` of `room`: (epoch-less) offset and data. Other rooms'
/// messages stay queued.
async fn next_msg(c: &mut Client, room: &str) -> (u64, Value) {
    let m = c
        .next_matching(WAIT, |e| e.op() == "msg" && e.str("room") == Some(room))
        .await
        .unwrap_or_else(|e| panic!("no msg in {room}: {e}"));
    (m.u64("offset").unwrap(), m.get("data").unwrap().clone())
}

/// Asks again (every 100 ms, for up to `WAIT`) until `$ask` is `Some`.
macro_rules! eventually {
    ($what:expr, $ask:expr) => {{
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = $ask {
                break v;
            }
            assert!(tokio::time::Instant::now() < deadline, "never: {}", $what);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

#[tokio::test]
async fn a_previous_release_node_and_this_one_serve_one_cluster_through_an_upgrade() {
    let bin = previous_release();
    let cookie = common::cookie();
    let new = Server::start(&node_env("n1", "", &cookie));
    let seeds = new
        .cluster_addr
        .clone()
        .expect("n1 reports its cluster address");
    let mut old = Server::start_bin(&bin, &node_env("n2", &seeds, &cookie), None)
        .unwrap_or_else(|e| panic!("the previous release did not start: {e}"));
    new.wait_nodes(2, Duration::from_secs(20)).await;
    old.wait_nodes(2, Duration::from_secs(20)).await;

    // One room homed on each release; a member and a publisher on each node.
    let on_new = room_homed_on("up-a", "n1");
    let on_old = room_homed_on("up-b", "n2");
    let rooms = [on_new.as_str(), on_old.as_str()];
    let mut m1 = new.client("m1").await;
    let mut m2 = old.client("m2").await;
    let mut epochs = Vec::new();
    for room in rooms {
        let ok = m1.join(room).await.unwrap();
        epochs.push(ok.str("epoch").unwrap().to_owned());
        m2.join(room).await.unwrap();
    }
    let mut p1 = new.client("p1").await;
    let mut p2 = old.client("p2").await;
    for k in 0..5u64 {
        for room in rooms {
            p1.publish(room, Value::from(2 * k)).await.unwrap();
            p2.publish(room, Value::from(2 * k + 1)).await.unwrap();
        }
    }
    // Both nodes see each room's one order, whoever sequences it.
    for room in rooms {
        let mut seen = Vec::new();
        for m in [&mut m1, &mut m2] {
            let mut got = Vec::new();
            for _ in 0..10 {
                got.push(next_msg(m, room).await);
            }
            seen.push(got);
        }
        let offsets: Vec<u64> = seen[0].iter().map(|m| m.0).collect();
        assert_eq!(offsets, (1..=10).collect::<Vec<_>>(), "{room}");
        assert_eq!(seen[0], seen[1], "{room}: the two releases differ");
    }
    // Presence and direct messages cross the releases too.
    eventually!(
        "presence across releases",
        (m1.presence(&on_new).await.unwrap() == ["m1", "m2"]).then_some(())
    );
    eventually!(
        "a direct message to the old node",
        p1.send_to("m2", "hi".into()).await.ok().filter(|n| *n == 1)
    );
    m2.next_op("dm", WAIT).await.unwrap();

    // Upgrade n2: the previous release drains (its clients get 1012) and
    // this build takes its place under the same name.
    old.signal("TERM");
    let (code, _) = m2.closed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(code, 1012);
    assert!(old.wait_exit(Duration::from_secs(20)).success());
    // The first release cannot hand a room over: its room starts a new
    // epoch here, and the member on the surviving node is told so with a
    // reset, not a close.
    let reset = m1
        .next_matching(Duration::from_secs(10), |e| {
            e.op() == "reset" && e.str("room") == Some(on_old.as_str())
        })
        .await
        .unwrap();
    let restarted = reset.str("epoch").unwrap().to_owned();
    assert_ne!(restarted, epochs[1]);
    let mut up = Server::start(&node_env("n2", &seeds, &cookie));
    new.wait_nodes(2, Duration::from_secs(20)).await;
    up.wait_nodes(2, Duration::from_secs(20)).await;
    // Between two releases that can, the room homed on n2 moves back by a
    // hand-over: the same epoch goes on, with no reset.
    let mut p3 = up.client("p3").await;
    let offset = eventually!(
        "the upgraded node sequences its room",
        p3.publish(&on_old, "after".into()).await.ok()
    );
    assert_eq!(offset, reset.u64("offset").unwrap() + 1);
    let (at, data) = next_msg(&mut m1, &on_old).await;
    assert_eq!((at, data), (offset, Value::from("after")));
    // The room that stayed on n1 never restarted.
    assert_eq!(p3.publish(&on_new, "after".into()).await.unwrap(), 11);
    assert_eq!(next_msg(&mut m1, &on_new).await.0, 11);
    m1.ping().await.unwrap();
    assert_eq!(
        m1.pending()
            .filter(|e| e.op() == "reset" || e.op() == "close")
            .count(),
        0,
        "one reset only"
    );
    up.signal("TERM");
    assert!(up.wait_exit(Duration::from_secs(20)).success());
}
