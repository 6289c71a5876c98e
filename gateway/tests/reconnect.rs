//! The Rust client's reconnecting handle against real `switchboard`
//! processes: drained, killed and silenced nodes, with nothing lost,
//! duplicated or hidden from the application.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proxy::FaultProxy;
use common::{cluster3, room_homed_on, Server, WAIT};
use rmpv::Value;
use switchboard_client::reconnect::Event;
use switchboard_client::{ClientError, ConnectOptions, Events, ReconnectOptions, Reconnecting};

const FAST: &[(&str, &str)] = &[
    ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "100000"),
    ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "100000"),
];

/// Quick to notice and quick to retry, for tests.
fn options() -> ReconnectOptions {
    ReconnectOptions {
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(500),
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(800),
        connect_timeout: Duration::from_secs(2),
        ..ReconnectOptions::default()
    }
}

fn connect(addrs: &[&str], user: &str, options: ReconnectOptions) -> (Reconnecting, Watch) {
    let user = user.to_owned();
    connect_with(addrs, options, move || {
        let opts = ConnectOptions::user(&user);
        async move { Ok(opts) }
    })
}

fn connect_with<F, Fut>(
    addrs: &[&str],
    options: ReconnectOptions,
    credentials: F,
) -> (Reconnecting, Watch)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<ConnectOptions, ClientError>> + Send + 'static,
{
    let (client, events) = Reconnecting::connect(
        addrs.iter().map(|a| a.to_string()).collect(),
        credentials,
        options,
    )
    .unwrap();
    (
        client,
        Watch {
            events,
            seen: Vec::new(),
        },
    )
}

/// A client's events, and every one taken so far.
struct Watch {
    events: Events,
    seen: Vec<Event>,
}

impl Watch {
    /// The next event `wanted` picks; the ones before it are kept in `seen`.
    async fn until(&mut self, timeout: Duration, wanted: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .unwrap_or_else(|_| panic!("timed out; events so far: {:#?}", self.seen))
                .expect("the event stream ended");
            self.seen.push(ev.clone());
            if wanted(&ev) {
                return ev;
            }
        }
    }

    async fn connected(&mut self) -> String {
        match self
            .until(WAIT, |e| matches!(e, Event::Connected { .. }))
            .await
        {
            Event::Connected { addr, .. } => addr,
            _ => unreachable!(),
        }
    }

    /// Waits for `room`'s message at `offset`.
    async fn message(&mut self, room: &str, offset: u64, timeout: Duration) {
        self.until(
            timeout,
            |e| matches!(e, Event::Message { room: r, offset: o, .. } if r == room && *o == offset),
        )
        .await;
    }

    /// Per room, the (offset, data) of every message delivered so far.
    fn messages(&self) -> BTreeMap<String, Vec<(u64, Value)>> {
        let mut out: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
        for e in &self.seen {
            if let Event::Message {
                room, offset, data, ..
            } = e
            {
                out.entry(room.clone())
                    .or_default()
                    .push((*offset, data.clone()));
            }
        }
        out
    }

    fn count(&self, wanted: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|e| wanted(e)).count()
    }
}

fn port(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn a_client_of_a_draining_node_reconnects_elsewhere_and_misses_nothing() {
    let mut env = FAST.to_vec();
    env.push(("SWITCHBOARD__SHUTDOWN__DRAIN_S", "2"));
    env.push(("SWITCHBOARD__RECONNECT__AFTER_DRAIN_MS", "200"));
    let mut nodes = cluster3(&env).await;
    let names = ["n1", "n2", "n3"];
    let rooms: Vec<String> = names
        .iter()
        .map(|home| room_homed_on(&format!("rc-{home}"), home, &names))
        .collect();
    // The client starts on n3, the node about to drain. Its credentials
    // come from a callback; the second call (the reconnection) takes a
    // while, as a token renewal might, and notes how many publications
    // were acknowledged meanwhile: those the rejoin must recover.
    let addrs = [&nodes[2].addr, &nodes[0].addr, &nodes[1].addr].map(String::as_str);
    let acked = Arc::new(AtomicU64::new(0));
    let missed = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (client, mut watch) = {
        let (acked, missed) = (acked.clone(), missed.clone());
        connect_with(&addrs, options(), move || {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            let (acked, missed) = (acked.clone(), missed.clone());
            async move {
                if call == 1 {
                    let before = acked.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    missed.store(acked.load(Ordering::SeqCst) - before, Ordering::SeqCst);
                }
                Ok(ConnectOptions::user("mobile"))
            }
        })
    };
    assert_eq!(watch.connected().await, nodes[2].addr);
    for room in &rooms {
        client.join(room).await.unwrap();
    }
    // Another client on n1 publishes to every room, before, during and
    // after the drain.
    let (publisher, _publisher_events) = connect(&[&nodes[0].addr], "publisher", options());
    let per_room = 40u64;
    let publishing = {
        let rooms = rooms.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for k in 0..per_room {
                for room in &rooms {
                    let ack = publisher.publish(room, Value::from(k)).await.unwrap();
                    acks.push((room.clone(), ack.offset));
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            acks
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    nodes[2].signal("TERM");
    let acks = publishing.await.unwrap();
    for room in &rooms {
        watch.message(room, per_room, Duration::from_secs(20)).await;
    }
    // Every message, once, in order, in every room: the one homed on the
    // drained node included.
    let want: Vec<(u64, Value)> = (0..per_room).map(|k| (k + 1, Value::from(k))).collect();
    let got = watch.messages();
    for room in &rooms {
        assert_eq!(got.get(room), Some(&want), "{room}");
        let acked: Vec<u64> = acks
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(acked, (1..=per_room).collect::<Vec<_>>(), "{room}");
    }
    let missed = missed.load(Ordering::SeqCst);
    assert!(
        missed > 0,
        "nothing was published while the client was away"
    );
    // How it went: 1012, a retry on the next node without backoff, within
    // the spread the close names, every room rejoined with `since` and
    // recovered.
    let drained = watch
        .seen
        .iter()
        .position(|e| {
            matches!(e, Event::Disconnected { code: 1012, reason }
                if reason == "node draining; reconnect within 200 ms")
        })
        .unwrap_or_else(|| panic!("no 1012: {:#?}", watch.seen));
    assert!(
        matches!(
            watch.seen.get(drained + 1),
            Some(Event::Reconnecting { delay, .. }) if *delay <= Duration::from_millis(200)
        ),
        "{:#?}",
        watch.seen
    );
    let back = watch.seen[drained..]
        .iter()
        .find_map(|e| match e {
            Event::Connected { addr, .. } => Some(addr.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(back, nodes[0].addr);
    for room in &rooms {
        assert_eq!(
            watch.count(|e| matches!(e, Event::Rejoined { room: r, .. } if r == room)),
            1,
            "{room}: {:#?}",
            watch.seen
        );
    }
    assert_eq!(
        watch.count(|e| matches!(
            e,
            Event::NotRecovered { .. } | Event::Reset { .. } | Event::RejoinFailed { .. }
        )),
        0,
        "{:#?}",
        watch.seen
    );
    assert!(nodes[2].wait_exit(Duration::from_secs(10)).success());
    client.close().await;
}

#[tokio::test]
async fn a_publication_in_flight_when_the_connection_dies_is_delivered_once() {
    let node = Server::start(FAST);
    let proxy = FaultProxy::start().await;
    proxy.forward_to(port(&node.addr));
    let via = format!("127.0.0.1:{}", proxy.port);
    let mut observer = node.client("observer").await;
    observer.join("once").await.unwrap();
    let (client, mut watch) = connect(&[&via], "mobile", options());
    watch.connected().await;
    client.join("once").await.unwrap();
    assert_eq!(
        client
            .publish("once", "before".into())
            .await
            .unwrap()
            .offset,
        1
    );
    watch.message("once", 1, WAIT).await;
    assert_eq!(
        observer.next_op("msg", WAIT).await.unwrap().u64("offset"),
        Some(1)
    );

    // The node gets the next publication, but nothing it says comes back:
    // its ok is lost, and the client's pings go unanswered.
    proxy.deafen();
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("once", "in flight".into()).await })
    };
    let published = observer.next_op("msg", WAIT).await.unwrap();
    assert_eq!(published.u64("offset"), Some(2));
    // The dead connection is noticed, the room recovered (the message
    // comes back as a replay), and the publication re-sent with its msg_id:
    // the room remembers it and answers with its offset, publishing nothing.
    let ack = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the publication was never acknowledged")
        .unwrap()
        .unwrap();
    assert_eq!(ack.offset, 2);
    watch.message("once", 2, WAIT).await;
    assert_eq!(
        client.publish("once", "after".into()).await.unwrap().offset,
        3
    );
    watch.message("once", 3, WAIT).await;
    let after = observer.next_op("msg", WAIT).await.unwrap();
    assert_eq!(
        (after.u64("offset"), after.str("data")),
        (Some(3), Some("after"))
    );
    assert_eq!(
        watch.messages().remove("once").unwrap(),
        vec![
            (1, Value::from("before")),
            (2, Value::from("in flight")),
            (3, Value::from("after")),
        ]
    );
    assert_eq!(
        watch.count(|e| matches!(
            e,
            Event::Disconnected { code: 1006, reason } if reason == "ping timeout"
        )),
        1,
        "{:#?}",
        watch.seen
    );
    assert_eq!(
        watch.count(|e| matches!(e, Event::Rejoined { .. })),
        1,
        "{:#?}",
        watch.seen
    );
    client.close().await;
}

#[tokio::test]
async fn a_rejoin_that_cannot_recover_is_an_event_and_delivery_goes_on() {
    let mut node = Server::start(FAST);
    let proxy = FaultProxy::start().await;
    proxy.forward_to(port(&node.addr));
    let via = format!("127.0.0.1:{}", proxy.port);
    let (client, mut watch) = connect(&[&via], "mobile", options());
    watch.connected().await;
    let joined = client.join("fragile").await.unwrap();
    for k in 0..3u64 {
        client.publish("fragile", k.into()).await.unwrap();
    }
    watch.message("fragile", 3, WAIT).await;

    // The node dies with the room's history; it comes back empty, on
    // another port behind the same address.
    node.kill9();
    watch
        .until(WAIT, |e| {
            matches!(e, Event::Disconnected { code: 1006, .. })
        })
        .await;
    node.restart();
    proxy.forward_to(port(&node.addr));
    let lost = watch
        .until(Duration::from_secs(10), |e| {
            matches!(e, Event::NotRecovered { .. })
        })
        .await;
    let Event::NotRecovered {
        room,
        epoch,
        offset,
    } = lost
    else {
        unreachable!()
    };
    assert_eq!(room, "fragile");
    assert_ne!(epoch, joined.epoch);
    assert_eq!(offset, 0);
    assert!(
        watch.count(|e| matches!(e, Event::Reconnecting { delay, .. } if !delay.is_zero())) >= 1,
        "{:#?}",
        watch.seen
    );
    // The new epoch's offsets start again at 1, and are delivered.
    let ack = client.publish("fragile", "fresh".into()).await.unwrap();
    assert_eq!((ack.epoch.as_str(), ack.offset), (epoch.as_str(), 1));
    let fresh = watch
        .until(WAIT, |e| matches!(e, Event::Message { .. }))
        .await;
    assert_eq!(
        fresh,
        Event::Message {
            room: "fragile".into(),
            epoch,
            offset: 1,
            from: "mobile".into(),
            data: "fresh".into(),
        }
    );
    client.close().await;
}

#[tokio::test]
async fn the_outgoing_queue_is_bounded_and_close_stops_everything() {
    // Nothing to connect to: a proxy that forwards nowhere.
    let proxy = FaultProxy::start().await;
    let via = format!("127.0.0.1:{}", proxy.port);
    let (client, mut watch) = connect(
        &[&via],
        "offline",
        ReconnectOptions {
            max_queued: 2,
            ..options()
        },
    );
    let queued: Vec<_> = (0..2)
        .map(|k| {
            let client = client.clone();
            tokio::spawn(async move { client.publish("r", Value::from(k)).await })
        })
        .collect();
    // Each queued publication holds its place until answered (the tasks
    // take theirs as soon as they run).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        client.publish("r", 2.into()).await,
        Err(ClientError::QueueFull(2))
    ));
    watch
        .until(WAIT, |e| matches!(e, Event::Reconnecting { .. }))
        .await;
    client.close().await;
    for q in queued {
        assert!(matches!(q.await.unwrap(), Err(ClientError::Stopped)));
    }
    assert!(matches!(
        client.publish("r", 3.into()).await,
        Err(ClientError::Stopped)
    ));
    // The stream ends once the client has stopped.
    while watch.events.next().await.is_some() {}
}
