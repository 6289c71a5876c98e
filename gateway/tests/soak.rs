//! Soak: thousands of connections with steady traffic and churn, sampling
//! what a leak would grow (RSS, open files, tasks, Session actors, rooms,
//! presence entries, queued events); then every client leaves and all of
//! it must return to the baseline.
//!
//!     cargo test -p switchboard-gateway --test soak -- --nocapture               # short (CI)
//!     SOAK_SECS=3600 SOAK_CONNECTIONS=5000 \
//!       cargo test --release -p switchboard-gateway --test soak -- --nocapture  # an hour

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, WAIT};
use switchboard_client::{Client, ClientError};
use tokio::sync::watch;

/// Members per room.
const ROOM_SIZE: usize = 50;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kib: u64,
    open_files: usize,
    tasks: f64,
    sessions: f64,
    connections: f64,
    rooms: f64,
    presence_users: f64,
    queued: f64,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "t={}s rss={} KiB files={} tasks={} sessions={} connections={} rooms={} \
             presence_users={} queued={}",
            self.at_s,
            self.rss_kib,
            self.open_files,
            self.tasks,
            self.sessions,
            self.connections,
            self.rooms,
            self.presence_users,
            self.queued
        )
    }
}

async fn sample(s: &Server, started: Instant) -> Sample {
    Sample {
        at_s: started.elapsed().as_secs(),
        rss_kib: s.rss_kib(),
        open_files: s.open_files(),
        tasks: s.metric("switchboard_tokio_tasks").await,
        sessions: s.metric("switchboard_session_actors").await,
        connections: s.metric("switchboard_connections{transport=\"ws\"}").await,
        rooms: s.metric("switchboard_rooms").await,
        presence_users: s.metric("switchboard_presence_users").await,
        queued: s.metric("switchboard_outbound_queued_events").await,
    }
}

#[allow(clippy::print_stdout)]
fn report(line: &str) {
    println!("{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let secs = env_or("SOAK_SECS", 15);
    let n = env_or("SOAK_CONNECTIONS", 2000) as usize;
    let s = Server::start(&[
        ("RUST_LOG", "warn,switchboard_gateway=info"),
        ("SWITCHBOARD__HISTORY__TTL_S", "1"),
        ("SWITCHBOARD__SESSION__PASSIVATE_MS", "2000"),
        ("SWITCHBOARD__LIMITS__CONNECT_BURST_PER_ADDRESS", "100000"),
        ("SWITCHBOARD__LIMITS__CONNECTS_PER_S_PER_ADDRESS", "100000"),
    ]);
    let started = Instant::now();
    // Warm: the runtime's threads, the allocator's arenas and the node's
    // tables at the size the soak needs (a table keeps its capacity when
    // emptied; that is not a leak). Then a leak is what grows beyond this.
    let mut warm = Vec::new();
    for i in 0..n {
        let mut c = s.client(&format!("w{i}")).await;
        c.join(&format!("soak-{}", i / ROOM_SIZE)).await.unwrap();
        warm.push(c);
    }
    drop(warm);
    s.wait_metric("switchboard_connections{transport=\"ws\"}", 0.0, WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = sample(&s, started).await;
    report(&format!(
        "soak: {n} connections for {secs} s; baseline {base}"
    ));

    let received = Arc::new(AtomicU64::new(0));
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = s.client(&format!("s{i}")).await;
        c.join(&format!("soak-{}", i / ROOM_SIZE)).await.unwrap();
        tasks.push(tokio::spawn(member(
            c,
            i,
            s.addr.clone(),
            received.clone(),
            stop_rx.clone(),
        )));
    }
    let mut peak = sample(&s, started).await;
    let mut samples = vec![peak];
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs((secs / 10).clamp(1, 60))).await;
        let now = sample(&s, started).await;
        report(&format!("soak: {now}"));
        peak.rss_kib = peak.rss_kib.max(now.rss_kib);
        samples.push(now);
    }
    let _ = stop.send(true);
    let mut published = 0;
    for t in tasks {
        published += t.await.unwrap();
    }
    report(&format!(
        "soak: published {published}, received {}",
        received.load(Ordering::Relaxed)
    ));
    assert!(received.load(Ordering::Relaxed) > 0, "no traffic");

    // Everything the clients held must be gone.
    s.wait_metric("switchboard_connections{transport=\"ws\"}", 0.0, WAIT)
        .await;
    s.wait_metric("switchboard_session_actors", 0.0, Duration::from_secs(10))
        .await;
    s.wait_metric("switchboard_presence_users", 0.0, WAIT).await;
    s.wait_metric("switchboard_rooms", 0.0, Duration::from_secs(15))
        .await;
    s.wait_metric("switchboard_outbound_queued_events", 0.0, WAIT)
        .await;
    // Memory goes back to the allocator within a second or two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(&s, started).await;
    report(&format!("soak: after the clients left {after}"));
    assert!(
        after.open_files <= base.open_files + 2,
        "open files {} -> {}",
        base.open_files,
        after.open_files
    );
    assert!(
        after.tasks <= base.tasks + 2.0,
        "tasks {} -> {}",
        base.tasks,
        after.tasks
    );
    let grown = peak.rss_kib.saturating_sub(base.rss_kib);
    let left = after.rss_kib.saturating_sub(base.rss_kib);
    assert!(
        left <= grown / 4 + 4096,
        "RSS {} KiB at start, {} at peak, {} after: {left} KiB not returned",
        base.rss_kib,
        peak.rss_kib,
        after.rss_kib
    );
}

/// One connection: every tenth publishes once a second; every member
/// counts what it receives; one in fifty reconnects every few seconds
/// (churn through connect, join, leave and close). Returns its publications.
async fn member(
    mut c: Client,
    i: usize,
    addr: String,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    use switchboard_client::ConnectOptions;
    let room = format!("soak-{}", i / ROOM_SIZE);
    let mut published = 0;
    let mut last_pub = Instant::now();
    let mut opened = Instant::now();
    loop {
        if *stop.borrow() {
            let _ = c.close().await;
            return published;
        }
        if i.is_multiple_of(10) && last_pub.elapsed() >= Duration::from_secs(1) {
            last_pub = Instant::now();
            if c.publish(&room, "tick".into()).await.is_ok() {
                published += 1;
            }
        }
        if i % 50 == 1 && opened.elapsed() >= Duration::from_secs(3) {
            let _ = c.close().await;
            let Ok(mut fresh) =
                Client::connect(&addr, ConnectOptions::user(&format!("s{i}"))).await
            else {
                return published;
            };
            if fresh.join(&room).await.is_err() {
                return published;
            }
            c = fresh;
            opened = Instant::now();
        }
        let ev = tokio::select! {
            ev = c.next_event(Duration::from_millis(250)) => ev,
            _ = stop.changed() => continue,
        };
        match ev {
            Ok(ev) if ev.op() == "msg" => {
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) | Err(ClientError::Timeout) => {}
            Err(_) => return published,
        }
    }
}
