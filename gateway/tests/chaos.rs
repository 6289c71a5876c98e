//! The chaos checker: a 3-node cluster under steady publish load while
//! faults are injected, then the delivery contract checked from what every
//! client saw (docs/guarantees.md).
//!
//! Faults, in a cycle: `kill -9` of a node and its restart; the link between
//! two nodes cut through a fault proxy, then healed; a node frozen with
//! SIGSTOP for longer than the failure detector waits, then resumed; the link
//! made silent (bytes swallowed, no TCP error), then healed.
//!
//! Checked, per connection and room (its epoch is the one its `join`
//! answered): offsets strictly consecutive from where the join said they
//! start (no gap, no duplicate, no reordering); after `recovered: true`,
//! exactly the missed messages first; every message at an offset is the one
//! the publisher was acknowledged for; every `pub` acknowledged in the epoch
//! a connection follows is delivered to it if it stayed open to the end.
//!
//!     cargo test -p switchboard-gateway --test chaos -- --nocapture              # one cycle (CI)
//!     CHAOS_SECS=1800 cargo test --release -p switchboard-gateway --test chaos -- --nocapture
//!
//! `CHAOS_FAULTS=freeze,kill` runs only the named faults (`kill`, `cut`,
//! `freeze`, `silent`, `deploy`), to study one of them; `CHAOS_LOGS=a|b`
//! prints the nodes' log lines that contain `a` or `b`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Server;
use rmpv::Value;
use switchboard_client::{encode_command, Client, ClientError, ConnectOptions, Field};
use tokio::sync::watch;

const ROOMS: usize = 6;
const MEMBERS_PER_NODE: usize = 3;
const PUBLISHERS: usize = 3;
/// Publications per second, per publisher.
const RATE: u64 = 20;

fn room(i: usize) -> String {
    format!("chaos-{i}")
}

/// Addresses of the nodes' HTTP listeners (`None` while a node is down).
type Addrs = Arc<Mutex<Vec<Option<String>>>>;

/// The fault most recently injected: a rejoin or reset is counted against
/// the fault it followed.
static PHASE: Mutex<&'static str> = Mutex::new("start");

fn phase() -> &'static str {
    *PHASE.lock().unwrap()
}

fn set_phase(p: &'static str) {
    *PHASE.lock().unwrap() = p;
}

fn pick(addrs: &Addrs, preferred: usize, attempt: usize) -> Option<String> {
    let a = addrs.lock().unwrap();
    (0..a.len())
        .map(|k| (preferred + attempt + k) % a.len())
        .find_map(|i| a[i].clone())
}

/// One acknowledged publication.
#[derive(Debug, Clone)]
struct Ack {
    room: String,
    epoch: String,
    offset: u64,
    msg_id: String,
    /// The fault most recently injected when it was acknowledged.
    phase: &'static str,
}

/// What one connection saw of one room.
#[derive(Debug, Default)]
struct RoomLog {
    /// The fault that preceded the join or reset that began this log.
    phase: &'static str,
    /// Begun by a `reset` (not a join).
    by_reset: bool,
    epoch: String,
    /// The first offset this connection must receive next.
    from: u64,
    recovered: Option<bool>,
    /// (offset, msg_id) in arrival order.
    got: Vec<(u64, String)>,
}

/// One WebSocket connection of a member, from join to close.
#[derive(Debug, Default)]
struct ConnLog {
    member: usize,
    rooms: BTreeMap<String, RoomLog>,
    /// What it saw of a room before a `reset` moved it to another epoch.
    before_reset: Vec<(String, RoomLog)>,
    /// Why it ended; `None`: it stayed open to the end of the run.
    ended: Option<String>,
}

#[derive(Default)]
struct Faults {
    kills: u32,
    cuts: u32,
    freezes: u32,
    blackholes: u32,
    deploys: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let secs: u64 = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let env = [
        ("SWITCHBOARD__LIMITS__PUBLISH_PER_S", "1000"),
        ("SWITCHBOARD__LIMITS__PUBLISH_BURST", "1000"),
        ("SWITCHBOARD__HISTORY__SIZE", "10000"),
    ];
    // n1 and n2 reach each other only through fault proxies.
    let (mut nodes, to_n1, to_n2) = common::cluster_with_proxied_link(&env).await;
    let addrs: Addrs = Arc::new(Mutex::new(
        nodes.iter().map(|n| Some(n.addr.clone())).collect(),
    ));

    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let logs = Arc::new(Mutex::new(Vec::<ConnLog>::new()));
    let (stop_pub, stop_pub_rx) = watch::channel(false);
    let (stop_members, stop_members_rx) = watch::channel(false);

    let mut members = Vec::new();
    for m in 0..3 * MEMBERS_PER_NODE {
        members.push(tokio::spawn(member(
            m,
            addrs.clone(),
            logs.clone(),
            stop_members_rx.clone(),
        )));
    }
    // Members are in before anything is published.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        publishers.push(tokio::spawn(publisher(
            p,
            addrs.clone(),
            acks.clone(),
            stop_pub_rx.clone(),
        )));
    }

    // Faults until the time is up; at least one full cycle.
    let started = Instant::now();
    let mut faults = Faults::default();
    let calm = Duration::from_secs(3);
    let set_addr = |i: usize, a: Option<String>| addrs.lock().unwrap()[i] = a;
    let only = std::env::var("CHAOS_FAULTS").ok();
    let runs = |fault: &str| {
        only.as_ref()
            .is_none_or(|o| o.split(',').any(|f| f == fault))
    };
    loop {
        if runs("kill") {
            tokio::time::sleep(calm).await;
            // kill -9 n3 and bring it back.
            set_phase("kill -9");
            set_addr(2, None);
            nodes[2].kill9();
            faults.kills += 1;
            tokio::time::sleep(Duration::from_secs(4)).await;
            common::restart(&mut nodes, 2);
            set_addr(2, Some(nodes[2].addr.clone()));
            wait_all(&nodes).await;
        }
        if runs("cut") {
            tokio::time::sleep(calm).await;
            // Cut the n1-n2 link.
            set_phase("link cut");
            to_n1.cut();
            to_n2.cut();
            faults.cuts += 1;
            tokio::time::sleep(Duration::from_secs(4)).await;
            to_n1.heal();
            to_n2.heal();
            wait_all(&nodes).await;
        }
        if runs("freeze") {
            tokio::time::sleep(calm).await;
            // Freeze n2 for longer than the watchdog waits.
            set_phase("freeze");
            nodes[1].signal("STOP");
            faults.freezes += 1;
            tokio::time::sleep(Duration::from_secs(6)).await;
            nodes[1].signal("CONT");
            wait_all(&nodes).await;
        }
        if runs("silent") {
            tokio::time::sleep(calm).await;
            // A silent n1-n2 link.
            set_phase("silent link");
            to_n1.blackhole();
            to_n2.blackhole();
            faults.blackholes += 1;
            tokio::time::sleep(Duration::from_secs(5)).await;
            to_n1.heal();
            to_n2.heal();
            wait_all(&nodes).await;
        }
        if runs("deploy") {
            tokio::time::sleep(calm).await;
            // A rolling deploy: SIGTERM each node in turn (it drains: its rooms
            // are handed over, its clients closed with 1012), then start it
            // again on a new port.
            set_phase("rolling deploy");
            faults.deploys += 1;
            for i in 0..nodes.len() {
                set_addr(i, None);
                nodes[i].signal("TERM");
                assert!(nodes[i].wait_exit(Duration::from_secs(20)).success());
                redeploy(&mut nodes, i, &to_n1, &to_n2);
                set_addr(i, Some(nodes[i].addr.clone()));
                wait_all(&nodes).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if started.elapsed() >= Duration::from_secs(secs) {
            break;
        }
    }
    // Calm: everything healed; let the last publications arrive.
    tokio::time::sleep(calm).await;
    let _ = stop_pub.send(true);
    for p in publishers {
        p.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stop_members.send(true);
    for m in members {
        m.await.unwrap();
    }

    if let Ok(pattern) = std::env::var("CHAOS_LOGS") {
        let mut lines: Vec<String> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            for line in n
                .logs()
                .lines()
                .filter(|l| pattern.split('|').any(|p| l.contains(p)))
            {
                lines.push(format!("{line} [n{}]", i + 1));
            }
        }
        lines.sort();
        for line in lines {
            report(&line);
        }
    }
    let acks = acks.lock().unwrap().clone();
    let logs = std::mem::take(&mut *logs.lock().unwrap());
    let verdict = check(&acks, &logs);
    report(&format!(
        "chaos: {} s, faults: {} kill -9 + restart, {} link cuts, {} SIGSTOP freezes, {} silent links, \
         {} rolling deploys\n{verdict}",
        started.elapsed().as_secs(),
        faults.kills,
        faults.cuts,
        faults.freezes,
        faults.blackholes,
        faults.deploys
    ));
    assert!(verdict.passed(), "{verdict}");
}

/// The verdict is this tool's output.
#[allow(clippy::print_stdout)]
fn report(text: &str) {
    println!("{text}");
}

/// Starts node `i` again after it exited, seeded the way the cluster was
/// laid out: n1 and n2 reach each other only through the proxies, which
/// learn the new port.
fn redeploy(
    nodes: &mut [Server],
    i: usize,
    to_n1: &common::proxy::FaultProxy,
    to_n2: &common::proxy::FaultProxy,
) {
    let addr = |j: usize| nodes[j].cluster_addr.clone().unwrap_or_default();
    let seeds = match i {
        0 => format!("127.0.0.1:{},{}", to_n2.port, addr(2)),
        1 => format!("127.0.0.1:{},{}", to_n1.port, addr(2)),
        _ => format!("{},{}", addr(0), addr(1)),
    };
    nodes[i].restart_seeded(Some(&seeds));
    let port = common::cluster_port(&nodes[i]);
    match i {
        0 => to_n1.forward_to(port),
        1 => to_n2.forward_to(port),
        _ => {}
    }
}

async fn wait_all(nodes: &[Server]) {
    for n in nodes {
        n.wait_nodes(3, Duration::from_secs(30)).await;
    }
}

/// A member of every room: reconnects when its connection ends and rejoins
/// with `since`, logging everything each connection saw.
async fn member(
    m: usize,
    addrs: Addrs,
    logs: Arc<Mutex<Vec<ConnLog>>>,
    mut stop: watch::Receiver<bool>,
) {
    // Per room: the epoch followed and the last offset received.
    let mut position: HashMap<String, (String, u64)> = HashMap::new();
    let mut attempt = 0;
    while !*stop.borrow() {
        attempt += 1;
        let Some(addr) = pick(&addrs, m % 3, attempt) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let connected = tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect(&addr, ConnectOptions::user(&format!("m{m}"))),
        )
        .await;
        let Ok(Ok(mut c)) = connected else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut log = ConnLog {
            member: m,
            ..ConnLog::default()
        };
        let ended = serve_member(&mut c, &mut log, &mut position, &mut stop).await;
        log.ended = ended;
        logs.lock().unwrap().push(log);
    }
}

/// Joins every room, then reads until the connection ends (`Some(why)`) or
/// the run does (`None`).
async fn serve_member(
    c: &mut Client,
    log: &mut ConnLog,
    position: &mut HashMap<String, (String, u64)>,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
    for r in 0..ROOMS {
        let name = room(r);
        let joined = match position.get(&name) {
            Some((epoch, offset)) => c.join_since(&name, epoch, *offset).await,
            None => c.join(&name).await,
        };
        let ok = match joined {
            Ok(ok) => ok,
            Err(e) => return Some(format!("join: {e}")),
        };
        let epoch = ok.str("epoch").unwrap_or_default().to_owned();
        let newest = ok.u64("offset").unwrap_or(0);
        let recovered = ok.bool("recovered");
        let from = match (recovered, position.get(&name)) {
            (Some(true), Some((_, last))) => last + 1,
            _ => newest + 1,
        };
        position.insert(name.clone(), (epoch.clone(), from - 1));
        log.rooms.insert(
            name,
            RoomLog {
                phase: phase(),
                by_reset: false,
                epoch,
                from,
                recovered,
                got: Vec::new(),
            },
        );
    }
    let mut last_ping = Instant::now();
    loop {
        if *stop.borrow() {
            return None;
        }
        // A frozen or unreachable node answers nothing: give up on it.
        if last_ping.elapsed() > Duration::from_secs(1) {
            let id = c.next_id();
            let ping = encode_command(&[("op", "ping".into()), ("id", id.into())]);
            if c.send_binary(ping).await.is_err() {
                return Some("ping: send failed".into());
            }
            if let Err(e) = c.reply(id, Duration::from_secs(3)).await {
                return Some(format!("ping: {e}"));
            }
            last_ping = Instant::now();
        }
        let ev = tokio::select! {
            ev = c.next_event(Duration::from_millis(500)) => ev,
            _ = stop.changed() => return None,
        };
        match ev {
            Ok(ev) if ev.op() == "msg" => {
                let name = ev.str("room").unwrap_or_default().to_owned();
                let offset = ev.u64("offset").unwrap_or(0);
                let msg_id = ev.str("data").unwrap_or_default().to_owned();
                if let Some(r) = log.rooms.get_mut(&name) {
                    r.got.push((offset, msg_id));
                    position.insert(name, (r.epoch.clone(), offset));
                }
            }
            // Still a member; the sequence goes on after `offset` in `epoch`.
            Ok(ev) if ev.op() == "reset" => {
                let name = ev.str("room").unwrap_or_default().to_owned();
                let epoch = ev.str("epoch").unwrap_or_default().to_owned();
                let offset = ev.u64("offset").unwrap_or(0);
                let next = RoomLog {
                    phase: phase(),
                    by_reset: true,
                    epoch: epoch.clone(),
                    from: offset + 1,
                    recovered: None,
                    got: Vec::new(),
                };
                if let Some(before) = log.rooms.insert(name.clone(), next) {
                    log.before_reset.push((name.clone(), before));
                }
                position.insert(name, (epoch, offset));
            }
            Ok(_) | Err(ClientError::Timeout) => {}
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// Publishes to the rooms in turn with a unique `msg_id` (its `data` too),
/// retrying the same `msg_id` until it is acknowledged.
async fn publisher(
    p: usize,
    addrs: Addrs,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: watch::Receiver<bool>,
) {
    let mut seq = 0usize;
    let mut attempt = 0;
    let every = Duration::from_millis(1000 / RATE);
    'connect: while !*stop.borrow() {
        attempt += 1;
        let Some(addr) = pick(&addrs, p, attempt) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_secs(2),
            Client::connect(&addr, ConnectOptions::user(&format!("p{p}"))),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !*stop.borrow() {
            let name = room(seq % ROOMS);
            let msg_id = format!("p{p}-{seq}");
            let id = c.next_id();
            let cmd = encode_command(&[
                ("op", "pub".into()),
                ("id", id.into()),
                ("room", name.as_str().into()),
                ("data", Field::Value(Value::from(msg_id.as_str()))),
                ("msg_id", msg_id.as_str().into()),
            ]);
            if c.send_binary(cmd).await.is_err() {
                continue 'connect;
            }
            match c.reply(id, Duration::from_secs(3)).await {
                Ok(ok) if ok.op() == "ok" => {
                    acks.lock().unwrap().push(Ack {
                        room: name,
                        epoch: ok.str("epoch").unwrap_or_default().to_owned(),
                        offset: ok.u64("offset").unwrap_or(0),
                        msg_id,
                        phase: phase(),
                    });
                    seq += 1;
                    tokio::time::sleep(every).await;
                }
                // 503 while a home is unreachable: the same msg_id again.
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => continue 'connect,
            }
        }
    }
}

/// Counted against the fault most recently injected.
#[derive(Debug, Default, PartialEq, Eq)]
struct AfterFault {
    /// Rejoins answered `recovered: false`.
    not_recovered: usize,
    resets: usize,
    /// Acknowledged, received by no connection.
    unseen: usize,
}

#[derive(Debug, Default)]
struct Verdict {
    acknowledged: usize,
    delivered: usize,
    connections: usize,
    stayed_open: usize,
    recovered_true: usize,
    recovered_false: usize,
    /// `reset` events received: a room's sequence restarted under members
    /// that stayed connected.
    resets: usize,
    /// What followed each kind of fault.
    by_fault: BTreeMap<&'static str, AfterFault>,
    lost: usize,
    duplicated: usize,
    reordered: usize,
    /// A delivered message that is not the one acknowledged at its offset.
    mismatched: usize,
    /// Acknowledged, but no connection received it: published in an epoch
    /// that every member left (re-homed) before it arrived, or that no
    /// member followed (see docs/guarantees.md).
    seen_by_nobody: usize,
    problems: Vec<String>,
}

impl Verdict {
    fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.mismatched == 0
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "chaos verdict: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        writeln!(
            f,
            "  acknowledged {}, delivered {}, lost {}, duplicated {}, reordered {}, mismatched {}",
            self.acknowledged,
            self.delivered,
            self.lost,
            self.duplicated,
            self.reordered,
            self.mismatched
        )?;
        writeln!(
            f,
            "  connections {} (stayed open to the end {}), rejoins recovered:true {}, recovered:false {}, \
             resets {}, acknowledged but received by no connection {}",
            self.connections,
            self.stayed_open,
            self.recovered_true,
            self.recovered_false,
            self.resets,
            self.seen_by_nobody
        )?;
        for (fault, after) in &self.by_fault {
            writeln!(
                f,
                "  after {fault}: rejoins recovered:false {}, resets {}, acknowledged but received by no connection {}",
                after.not_recovered, after.resets, after.unseen
            )?;
        }
        for p in self.problems.iter().take(20) {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

fn check(acks: &[Ack], logs: &[ConnLog]) -> Verdict {
    let mut v = Verdict {
        acknowledged: acks.len(),
        connections: logs.len(),
        ..Verdict::default()
    };
    // (room, epoch, offset) -> msg_id acknowledged there.
    let mut acked: HashMap<(&str, &str, u64), &str> = HashMap::new();
    for a in acks {
        if let Some(other) = acked.insert((&a.room, &a.epoch, a.offset), &a.msg_id) {
            if other != a.msg_id {
                v.mismatched += 1;
                v.problems.push(format!(
                    "{} epoch {} offset {} acknowledged for {other} and {}",
                    a.room, a.epoch, a.offset, a.msg_id
                ));
            }
        }
    }
    let mut received: std::collections::HashSet<(&str, &str, u64)> = Default::default();
    for log in logs {
        if log.ended.is_none() {
            v.stayed_open += 1;
        }
        v.resets += log.before_reset.len();
        let current = log.rooms.iter().map(|(n, r)| (n, r, true));
        let earlier = log.before_reset.iter().map(|(n, r)| (n, r, false));
        for (name, r, is_current) in current.chain(earlier) {
            match r.recovered {
                Some(true) => v.recovered_true += 1,
                Some(false) => {
                    v.recovered_false += 1;
                    v.by_fault.entry(r.phase).or_default().not_recovered += 1;
                }
                None => {}
            }
            if r.by_reset {
                v.by_fault.entry(r.phase).or_default().resets += 1;
            }
            v.delivered += r.got.len();
            let mut next = r.from;
            for (offset, msg_id) in &r.got {
                received.insert((name, &r.epoch, *offset));
                if *offset == next {
                    next += 1;
                } else if *offset > next {
                    v.lost += (*offset - next) as usize;
                    v.problems.push(format!(
                        "member m{} {name} epoch {}: gap {next}..{offset}",
                        log.member, r.epoch
                    ));
                    next = offset + 1;
                } else if r.got.iter().filter(|(o, _)| o == offset).count() > 1 {
                    v.duplicated += 1;
                    v.problems.push(format!(
                        "member m{} {name} epoch {}: offset {offset} twice",
                        log.member, r.epoch
                    ));
                } else {
                    v.reordered += 1;
                    v.problems.push(format!(
                        "member m{} {name} epoch {}: offset {offset} after {}",
                        log.member,
                        r.epoch,
                        next - 1
                    ));
                }
                if let Some(want) = acked.get(&(name.as_str(), r.epoch.as_str(), *offset)) {
                    if want != msg_id {
                        v.mismatched += 1;
                        v.problems.push(format!(
                            "member m{} {name} epoch {} offset {offset}: got {msg_id}, acknowledged {want}",
                            log.member, r.epoch
                        ));
                    }
                }
            }
            if log.ended.is_some() || !is_current {
                continue;
            }
            // Stayed open: everything acknowledged in its epoch after it
            // joined (or was reset into it) must have arrived.
            let last = next - 1;
            for a in acks
                .iter()
                .filter(|a| a.room == *name && a.epoch == r.epoch && a.offset >= r.from)
            {
                if a.offset > last {
                    v.lost += 1;
                    v.problems.push(format!(
                        "member m{} {name} epoch {}: acknowledged {} (offset {}) never arrived",
                        log.member, r.epoch, a.msg_id, a.offset
                    ));
                }
            }
        }
    }
    for a in acks
        .iter()
        .filter(|a| !received.contains(&(a.room.as_str(), a.epoch.as_str(), a.offset)))
    {
        v.seen_by_nobody += 1;
        v.by_fault.entry(a.phase).or_default().unseen += 1;
    }
    v
}

/// The checker itself must see what it is meant to see.
#[test]
fn the_checker_catches_gaps_duplicates_mismatches_and_missing_messages() {
    let ack = |offset: u64, msg_id: &str| Ack {
        room: "r".into(),
        epoch: "e".into(),
        offset,
        msg_id: msg_id.into(),
        phase: "test",
    };
    let acks = vec![
        ack(1, "a"),
        ack(2, "b"),
        ack(3, "c"),
        ack(4, "d"),
        ack(5, "e"),
    ];
    let conn = |got: &[(u64, &str)], ended: Option<&str>| ConnLog {
        member: 0,
        rooms: BTreeMap::from([(
            "r".to_owned(),
            RoomLog {
                phase: "test",
                by_reset: false,
                epoch: "e".into(),
                from: 1,
                recovered: None,
                got: got.iter().map(|(o, m)| (*o, m.to_string())).collect(),
            },
        )]),
        before_reset: Vec::new(),
        ended: ended.map(str::to_owned),
    };
    let all = [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")];
    assert!(check(&acks, &[conn(&all, None)]).passed());
    // A connection that closed early may stop short; one that stayed open may not.
    assert!(check(&acks, &[conn(&all[..3], Some("1012"))]).passed());
    let v = check(&acks, &[conn(&all[..3], None)]);
    assert_eq!(v.lost, 2);
    let v = check(&acks, &[conn(&[(1, "a"), (3, "c")], Some("closed"))]);
    assert_eq!(v.lost, 1);
    let v = check(&acks, &[conn(&[(1, "a"), (2, "b"), (2, "b")], Some("x"))]);
    assert_eq!(v.duplicated, 1);
    let v = check(&acks, &[conn(&[(1, "a"), (3, "c"), (2, "b")], Some("x"))]);
    assert_eq!((v.lost, v.reordered), (1, 1));
    let v = check(&acks, &[conn(&[(1, "a"), (2, "x")], Some("x"))]);
    assert_eq!(v.mismatched, 1);
    assert!(!v.passed());
    assert_eq!(v.seen_by_nobody, 3);
    // A reset starts a new segment: before it, only consecutiveness counts;
    // after it, everything acknowledged in the new epoch must arrive.
    let mut reset = conn(&[(1, "a")], None);
    let before = reset.rooms.insert(
        "r".into(),
        RoomLog {
            phase: "test",
            by_reset: true,
            epoch: "f".into(),
            from: 1,
            recovered: None,
            got: vec![(1, "z".into())],
        },
    );
    reset.before_reset.push(("r".into(), before.unwrap()));
    let mut f_acks = acks.clone();
    f_acks.push(Ack {
        room: "r".into(),
        epoch: "f".into(),
        offset: 1,
        msg_id: "z".into(),
        phase: "test",
    });
    let v = check(&f_acks, &[reset]);
    assert_eq!((v.resets, v.lost, v.mismatched), (1, 0, 0), "{v}");
    assert_eq!(
        v.by_fault.get("test"),
        Some(&AfterFault {
            not_recovered: 0,
            resets: 1,
            unseen: 4
        })
    );
}
