//! The Presence actor, driven in-process: `joined`/`left` on a user's
//! first and last connection, heartbeat expiry, and the cleanup of a lost
//! peer's users. Connections are recording sinks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_presence::{PeerLink, PresenceHandle, Replication};
use switchboard_protocol::{event, Bytes, CloseCode, ConnId, EventSink};

/// A connection: keeps (op, room, user) of every event pushed to it, and
/// its closes. Its client talks all the time until it falls silent.
struct Sink {
    events: Mutex<Vec<(String, String, String)>>,
    closes: Mutex<Vec<(CloseCode, Instant)>>,
    silent_since: Mutex<Option<Instant>>,
}

impl Sink {
    fn live() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(Vec::new()),
            closes: Mutex::new(Vec::new()),
            silent_since: Mutex::new(None),
        })
    }

    /// The client said nothing since `at`.
    fn silent_since(&self, at: Instant) {
        *self.silent_since.lock().unwrap() = Some(at);
    }

    fn events(&self) -> Vec<(String, String, String)> {
        self.events.lock().unwrap().clone()
    }

    fn closes(&self) -> Vec<(CloseCode, Instant)> {
        self.closes.lock().unwrap().clone()
    }
}

fn ev(op: &str, room: &str, user: &str) -> (String, String, String) {
    (op.to_owned(), room.to_owned(), user.to_owned())
}

impl EventSink for Sink {
    fn push(&self, event: Bytes) -> bool {
        let mut rest: &[u8] = &event;
        let mut events = self.events.lock().unwrap();
        while !rest.is_empty() {
            let v = rmpv::decode::read_value(&mut rest).expect("events are MessagePack");
            let field = |key: &str| {
                v.as_map()
                    .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)))
                    .and_then(|(_, v)| v.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            events.push((field("op"), field("room"), field("user")));
        }
        true
    }

    fn close(&self, code: CloseCode, _reason: &'static str) {
        self.closes.lock().unwrap().push((code, Instant::now()));
    }

    fn is_closed(&self) -> bool {
        !self.closes.lock().unwrap().is_empty()
    }

    fn last_seen(&self) -> Instant {
        self.silent_since
            .lock()
            .unwrap()
            .unwrap_or_else(Instant::now)
    }
}

/// Records what presence sends its peers.
#[derive(Default)]
struct Link(Mutex<Vec<(Option<String>, Replication)>>);

impl Link {
    fn sent(&self) -> Vec<(Option<String>, Replication)> {
        self.0.lock().unwrap().clone()
    }
}

impl PeerLink for Link {
    fn send(&self, node: &str, payload: Vec<u8>) {
        let r = Replication::decode(&payload).expect("replication decodes");
        self.0.lock().unwrap().push((Some(node.to_owned()), r));
    }

    fn broadcast(&self, payload: Vec<u8>) {
        let r = Replication::decode(&payload).expect("replication decodes");
        self.0.lock().unwrap().push((None, r));
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(2);

async fn start(timeout: Duration, sweep: Duration) -> (PresenceHandle, Arc<Link>) {
    let link = Arc::new(Link::default());
    let (presence, _) = PresenceHandle::start(timeout, sweep, Some(link.clone()), None)
        .await
        .expect("presence starts");
    (presence, link)
}

/// Connects `conn` as `user` and makes it a member of `room`.
fn enter(p: &PresenceHandle, room: &str, conn: u64, user: &str, sink: &Arc<Sink>) {
    p.connect(ConnId(conn), user.into(), sink.clone());
    p.join(room.into(), ConnId(conn), true);
}

/// The users present in `room`. Being a call, it returns after the actor
/// has handled everything cast to it before.
async fn users(p: &PresenceHandle, room: &str) -> Vec<String> {
    p.users(room)
        .await
        .expect("presence answers")
        .iter()
        .map(|u| u.to_string())
        .collect()
}

/// Waits until `cond` holds, polling; fails the test after [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn joined_goes_out_on_a_users_first_connection_only() {
    let (p, _) = start(HOUR, HOUR).await;
    let (bob, alice1, alice2, quiet) = (Sink::live(), Sink::live(), Sink::live(), Sink::live());
    enter(&p, "lobby", 1, "bob", &bob);
    // A member that asked for no presence events.
    p.connect(ConnId(4), "carol".into(), quiet.clone());
    p.join("lobby".into(), ConnId(4), false);
    enter(&p, "lobby", 2, "alice", &alice1);
    enter(&p, "lobby", 3, "alice", &alice2);
    assert_eq!(users(&p, "lobby").await, ["alice", "bob", "carol"]);

    assert_eq!(
        bob.events(),
        [
            ev("joined", "lobby", "bob"),
            ev("joined", "lobby", "carol"),
            ev("joined", "lobby", "alice"),
        ]
    );
    // The joining connection is told too; alice's second connection is no
    // news to anyone, itself included.
    assert_eq!(alice1.events(), [ev("joined", "lobby", "alice")]);
    assert!(alice2.events().is_empty(), "{:?}", alice2.events());
    assert!(quiet.events().is_empty(), "{:?}", quiet.events());
    // Another room is another matter.
    p.join("other".into(), ConnId(3), true);
    assert_eq!(users(&p, "other").await, ["alice"]);
    assert_eq!(alice2.events(), [ev("joined", "other", "alice")]);
    assert_eq!(bob.events().len(), 3, "bob is not in `other`");
}

#[tokio::test]
async fn left_goes_out_when_the_users_last_connection_leaves() {
    let (p, link) = start(HOUR, HOUR).await;
    let (bob, alice1, alice2) = (Sink::live(), Sink::live(), Sink::live());
    enter(&p, "lobby", 1, "bob", &bob);
    enter(&p, "lobby", 2, "alice", &alice1);
    enter(&p, "lobby", 3, "alice", &alice2);
    assert_eq!(users(&p, "lobby").await, ["alice", "bob"]);
    assert_eq!(p.send("alice", &event::dm("x", &[0xc0])), 2);

    // One of two connections leaves the room: alice is still there.
    p.leave("lobby".into(), ConnId(2));
    assert_eq!(users(&p, "lobby").await, ["alice", "bob"]);
    let alice_left = |link: &Link| {
        link.sent()
            .iter()
            .filter(|(_, r)| r.left.contains(&("lobby".into(), "alice".into())))
            .count()
    };
    assert_eq!(alice_left(&link), 0, "peers are not told alice left");
    let before = bob.events().len();
    // The last one goes (disconnects): `left`, to everyone still there.
    p.disconnect(ConnId(3));
    assert_eq!(users(&p, "lobby").await, ["bob"]);
    assert_eq!(bob.events()[before..], [ev("left", "lobby", "alice")]);
    assert_eq!(alice_left(&link), 1, "peers are told alice left");
    assert!(
        !alice2.events().contains(&ev("left", "lobby", "alice")),
        "not to the connection that left"
    );
    // Connection 2 is still online (it only left the room).
    assert_eq!(p.send("alice", &event::dm("x", &[0xc0])), 1);
    p.disconnect(ConnId(2));
    p.leave("lobby".into(), ConnId(1));
    assert!(users(&p, "lobby").await.is_empty());
    assert_eq!(p.send("alice", &event::dm("x", &[0xc0])), 0);
    assert_eq!(p.online_users(), 1, "bob is online, in no room");
    assert_eq!(
        bob.events().iter().filter(|(op, ..)| op == "left").count(),
        1,
        "{:?}",
        bob.events()
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_and_left_after_the_timeout() {
    let timeout = Duration::from_millis(100);
    let (p, _) = start(timeout, Duration::from_millis(5)).await;
    let (bob, alice, carol) = (Sink::live(), Sink::live(), Sink::live());
    enter(&p, "lobby", 1, "bob", &bob);
    enter(&p, "lobby", 2, "alice", &alice);
    enter(&p, "lobby", 3, "carol", &carol);
    assert_eq!(users(&p, "lobby").await, ["alice", "bob", "carol"]);

    // Carol has been silent for a minute: expired at the next sweep.
    // Alice falls silent now: expired once the timeout has passed.
    let now = Instant::now();
    carol.silent_since(now - Duration::from_secs(60));
    alice.silent_since(now);
    eventually("carol's expiry", || !carol.closes().is_empty()).await;
    eventually("alice's expiry", || !alice.closes().is_empty()).await;
    let (code, at) = alice.closes()[0];
    assert_eq!(code, CloseCode::HeartbeatTimeout);
    assert!(
        at.duration_since(now) > timeout,
        "closed {:?} after falling silent, before the timeout",
        at.duration_since(now)
    );
    assert_eq!(carol.closes()[0].0, CloseCode::HeartbeatTimeout);
    assert_eq!(users(&p, "lobby").await, ["bob"]);
    let mut lefts: Vec<_> = bob
        .events()
        .into_iter()
        .filter(|(op, ..)| op == "left")
        .collect();
    lefts.sort();
    assert_eq!(
        lefts,
        [ev("left", "lobby", "alice"), ev("left", "lobby", "carol")]
    );
    // Bob, who keeps talking, stays (more than a timeout has passed).
    assert!(bob.closes().is_empty());
    assert_eq!(alice.closes().len(), 1, "closed once");
    assert_eq!(p.send("alice", &event::dm("x", &[0xc0])), 0);
    assert_eq!(p.online_users(), 1);
}

#[tokio::test]
async fn users_of_a_lost_peer_are_left() {
    let (p, link) = start(HOUR, HOUR).await;
    let bob = Sink::live();
    enter(&p, "lobby", 1, "bob", &bob);
    let from_peer = Replication {
        online: vec!["carol".into(), "alice".into()],
        joined: vec![
            ("lobby".into(), "carol".into()),
            ("lobby".into(), "alice".into()),
        ],
        ..Replication::default()
    };
    p.remote("node-b", &from_peer.encode());
    assert_eq!(users(&p, "lobby").await, ["alice", "bob", "carol"]);
    assert_eq!(p.nodes_of("carol"), [Arc::<str>::from("node-b")]);
    // Alice is here too now: no news.
    let alice = Sink::live();
    enter(&p, "lobby", 2, "alice", &alice);
    assert_eq!(users(&p, "lobby").await, ["alice", "bob", "carol"]);
    assert_eq!(
        bob.events(),
        [
            ev("joined", "lobby", "bob"),
            ev("joined", "lobby", "carol"),
            ev("joined", "lobby", "alice"),
        ]
    );
    // Presence told its peers of its own users only.
    let told: Vec<Replication> = link.sent().into_iter().map(|(_, r)| r).collect();
    assert!(
        told.iter()
            .all(|r| !r.joined.contains(&("lobby".into(), "carol".into()))),
        "{told:?}"
    );
    assert!(told
        .iter()
        .any(|r| r.joined.contains(&("lobby".into(), "alice".into()))));

    p.peer_down("node-b");
    assert_eq!(users(&p, "lobby").await, ["alice", "bob"]);
    // Carol is gone with her node; alice is still here.
    assert_eq!(bob.events()[3..], [ev("left", "lobby", "carol")]);
    assert_eq!(alice.events(), [ev("left", "lobby", "carol")]);
    assert!(p.nodes_of("carol").is_empty());
    assert!(p.nodes_of("alice").is_empty());
}

#[tokio::test]
async fn a_peer_that_comes_up_gets_a_snapshot_and_its_snapshot_reconciles() {
    let (p, link) = start(HOUR, HOUR).await;
    let bob = Sink::live();
    enter(&p, "lobby", 1, "bob", &bob);
    p.peer_up("node-b");
    users(&p, "lobby").await;
    let snapshot = link
        .sent()
        .into_iter()
        .find(|(to, _)| to.as_deref() == Some("node-b"))
        .map(|(_, r)| r)
        .expect("a snapshot to node-b");
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.online, ["bob"]);
    assert_eq!(snapshot.joined, [("lobby".to_owned(), "bob".to_owned())]);

    let snap = |joined: &[&str]| Replication {
        snapshot: true,
        online: joined.iter().map(|u| u.to_string()).collect(),
        joined: joined
            .iter()
            .map(|u| ("lobby".to_owned(), u.to_string()))
            .collect(),
        ..Replication::default()
    };
    p.remote("node-b", &snap(&["carol", "dave"]).encode());
    assert_eq!(users(&p, "lobby").await, ["bob", "carol", "dave"]);
    // A later snapshot replaces the first: only the differences are news.
    p.remote("node-b", &snap(&["dave", "erin"]).encode());
    assert_eq!(users(&p, "lobby").await, ["bob", "dave", "erin"]);
    let mut news = bob.events()[1..].to_vec();
    news[..2].sort();
    assert_eq!(
        news,
        [
            ev("joined", "lobby", "carol"),
            ev("joined", "lobby", "dave"),
            ev("joined", "lobby", "erin"),
            ev("left", "lobby", "carol"),
        ]
    );
    assert!(p.nodes_of("carol").is_empty());
    assert_eq!(p.nodes_of("erin"), [Arc::<str>::from("node-b")]);
}
