//! What the room tests share: a sink that records what it is sent, an
//! observer that records joins and leaves, and a bounded wait.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::ActorRef;
use rmpv::Value;
use switchboard_cluster::Cluster;
use switchboard_protocol::{Bytes, CloseCode, ConnId, EventSink, Since};
use switchboard_router::{
    JoinRequest, Member, MembershipObserver, PublishReply, PublishRequest, RoomMsg, RoomSettings,
    RoomSupervisor, RoomSupervisorMsg, Rooms,
};

/// One decoded event (a MessagePack map).
#[derive(Debug, Clone, PartialEq)]
pub struct Event(pub Value);

impl Event {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0
            .as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    pub fn op(&self) -> &str {
        self.str("op")
    }

    pub fn str(&self, key: &str) -> &str {
        self.get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{key} is not a string in {self:?}"))
    }

    pub fn u64(&self, key: &str) -> u64 {
        self.get(key)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {self:?}"))
    }

    /// `recovered`: `None` when absent.
    pub fn recovered(&self) -> Option<bool> {
        self.get("recovered").map(|v| {
            v.as_bool()
                .unwrap_or_else(|| panic!("recovered is not a bool in {self:?}"))
        })
    }
}

/// An [`EventSink`] that decodes and keeps everything pushed to it.
pub struct Recorder {
    events: Mutex<Vec<Event>>,
    undecodable: AtomicUsize,
    closes: Mutex<Vec<(CloseCode, &'static str)>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            events: Mutex::new(Vec::new()),
            undecodable: AtomicUsize::new(0),
            closes: Mutex::new(Vec::new()),
        })
    }

    /// Everything received so far, in order.
    pub fn events(&self) -> Vec<Event> {
        assert_eq!(
            self.undecodable.load(Ordering::SeqCst),
            0,
            "a pushed event was not MessagePack"
        );
        self.events.lock().unwrap().clone()
    }

    /// The `msg` events as (offset, data), in the order received.
    pub fn msgs(&self) -> Vec<(u64, i64)> {
        self.events()
            .iter()
            .filter(|e| e.op() == "msg")
            .map(|e| (e.u64("offset"), data_of(e)))
            .collect()
    }

    /// The `ok` and `err` replies, in order.
    pub fn replies(&self) -> Vec<Event> {
        self.events()
            .into_iter()
            .filter(|e| matches!(e.op(), "ok" | "err"))
            .collect()
    }

    /// The reply with command id `id`, if it came.
    pub fn reply(&self, id: u64) -> Option<Event> {
        self.replies().into_iter().find(|e| e.u64("id") == id)
    }

    pub fn len(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    pub fn closes(&self) -> Vec<(CloseCode, &'static str)> {
        self.closes.lock().unwrap().clone()
    }
}

impl EventSink for Recorder {
    fn push(&self, event: Bytes) -> bool {
        // Events are self-delimiting maps; one push may hold several.
        let mut rest: &[u8] = &event;
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            match rmpv::decode::read_value(&mut rest) {
                Ok(v) => decoded.push(Event(v)),
                Err(_) => {
                    self.undecodable.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
            }
        }
        self.events.lock().unwrap().extend(decoded);
        true
    }

    fn close(&self, code: CloseCode, reason: &'static str) {
        self.closes.lock().unwrap().push((code, reason));
    }

    fn is_closed(&self) -> bool {
        !self.closes.lock().unwrap().is_empty()
    }

    fn last_seen(&self) -> Instant {
        Instant::now()
    }
}

/// The MessagePack encoding of the integer `n` (what tests publish).
pub fn data(n: i64) -> Bytes {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, &Value::from(n)).expect("encode");
    Bytes::from(buf)
}

/// The integer a `msg` carries as `data`.
pub fn data_of(e: &Event) -> i64 {
    e.get("data")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("data is not an integer in {e:?}"))
}

/// What the observer was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Joined(String, u64),
    Left(String, u64),
}

#[derive(Default)]
pub struct Observer(Mutex<Vec<Seen>>);

impl Observer {
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
}

impl MembershipObserver for Observer {
    fn joined(&self, room: &Arc<str>, member: &Member) {
        self.0
            .lock()
            .unwrap()
            .push(Seen::Joined(room.to_string(), member.conn.0));
    }

    fn left(&self, room: &Arc<str>, conn: ConnId) {
        self.0
            .lock()
            .unwrap()
            .push(Seen::Left(room.to_string(), conn.0));
    }
}

/// A long time: rooms tick only when a test says so.
pub const NEVER: Duration = Duration::from_secs(3600);

pub struct Node {
    pub rooms: Rooms,
    pub supervisor: ActorRef<RoomSupervisorMsg>,
    pub observer: Arc<Observer>,
}

/// A single node's rooms (cluster of one, `replicas` 2 as by default).
pub async fn start(history_size: usize, history_ttl: Duration, tick: Duration) -> Node {
    let settings = RoomSettings {
        history_size,
        history_ttl,
        tick,
        replicas: 2,
    };
    let observer = Arc::new(Observer::default());
    let (rooms, supervisor) =
        RoomSupervisor::start(settings, Cluster::new("test"), observer.clone(), None)
            .await
            .expect("room supervisor starts");
    Node {
        rooms,
        supervisor,
        observer,
    }
}

impl Node {
    pub async fn join(
        &self,
        room: &str,
        conn: u64,
        sink: &Arc<Recorder>,
        id: u64,
        since: Option<(&str, u64)>,
    ) {
        self.rooms
            .cast(room, join_msg(conn, sink, id, since))
            .await
            .expect("join sent");
    }

    pub async fn publish(
        &self,
        room: &str,
        n: i64,
        msg_id: Option<&str>,
        reply: Option<(u64, &Arc<Recorder>)>,
    ) {
        self.rooms
            .cast(room, publish_msg(n, msg_id, reply))
            .await
            .expect("publish sent");
    }

    /// Publishes through the HTTP API's reply path; the offset given.
    pub async fn publish_for_offset(&self, room: &str, n: i64, msg_id: Option<&str>) -> u64 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = PublishRequest {
            from: "api".into(),
            data: data(n),
            msg_id: msg_id.map(str::to_owned),
            reply: PublishReply::Offset(tx),
            hops: 0,
        };
        self.rooms
            .cast(room, RoomMsg::Publish(Box::new(req)))
            .await
            .expect("publish sent");
        tokio::time::timeout(WAIT, rx)
            .await
            .expect("offset in time")
            .expect("offset sent")
    }

    pub fn leave(&self, room: &str, conn: u64, ack: Option<(u64, &Arc<Recorder>)>) {
        assert!(
            self.rooms.cast_if_running(room, leave_msg(conn, ack)),
            "{room} is running"
        );
    }

    /// The room's running actor (started if need be).
    pub async fn open(&self, room: &str) -> ActorRef<RoomMsg> {
        let room: Arc<str> = room.into();
        match self
            .supervisor
            .call(|reply| RoomSupervisorMsg::Open { room, reply }, Some(WAIT))
            .await
        {
            Ok(CallResult::Success(Ok(actor))) => actor,
            _ => panic!("the supervisor did not open the room"),
        }
    }
}

pub fn join_msg(conn: u64, sink: &Arc<Recorder>, id: u64, since: Option<(&str, u64)>) -> RoomMsg {
    let member = Member {
        conn: ConnId(conn),
        user: format!("u{conn}").into(),
        sink: sink.clone(),
        presence_events: true,
    };
    RoomMsg::Join(Box::new(JoinRequest {
        member,
        id,
        since: since.map(|(epoch, offset)| Since {
            epoch: epoch.to_owned(),
            offset,
        }),
        refused: None,
    }))
}

pub fn publish_msg(n: i64, msg_id: Option<&str>, reply: Option<(u64, &Arc<Recorder>)>) -> RoomMsg {
    let reply = match reply {
        Some((id, sink)) => PublishReply::Ok {
            id,
            sink: sink.clone(),
        },
        None => PublishReply::None,
    };
    RoomMsg::Publish(Box::new(PublishRequest {
        from: "pub".into(),
        data: data(n),
        msg_id: msg_id.map(str::to_owned),
        reply,
        hops: 0,
    }))
}

pub fn leave_msg(conn: u64, ack: Option<(u64, &Arc<Recorder>)>) -> RoomMsg {
    RoomMsg::Leave {
        conn: ConnId(conn),
        ack: ack.map(|(id, sink)| (id, sink.clone() as Arc<dyn EventSink>)),
    }
}

/// How long a condition may take before the test fails (it is met within
/// milliseconds when the code works).
pub const WAIT: Duration = Duration::from_secs(2);

/// Waits until `cond` holds, polling; fails the test after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
