//! The reconnect storm (issue 14 item 4): N clients of a 2-node cluster
//! lose their connections at once and come back following the server's
//! policy (503 + `Retry-After`, full-jitter backoff from `hello`), while
//! "staying" clients on the surviving node keep receiving a steady publish
//! stream whose publish-to-delivery latency is recorded before, during and
//! after the storm. Driven by `benches/storm.sh`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use rmpv::Value;
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchboard_client::{encode_command, Backoff, Client, ClientError, ConnectOptions, Field};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::child::{join_all, Worker};
use crate::procstat;
use crate::worker::{decode_histogram, encode_histogram, msgs, new_histogram, now_ns};

/// Connections per storm worker process (at most 20,000 open files each).
const PER_WORKER: usize = 9000;

#[derive(clap::Args, Debug)]
pub struct StormArgs {
    /// The two nodes' `host:port`; the first is the one that survives.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Their pids (server CPU; with `--kill-second`, the second is killed).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Clients that lose their connection at once.
    #[arg(long, default_value_t = 20000)]
    pub clients: usize,
    /// Each joins one of this many rooms (`presence: false`).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Clients on the first node that stay connected and are measured.
    #[arg(long, default_value_t = 1000)]
    pub staying: usize,
    /// Rooms of the staying clients (they each join one).
    #[arg(long, default_value_t = 10)]
    pub staying_rooms: usize,
    /// Publications a second, round robin over the staying rooms.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// Seconds of steady stream measured before the storm, and after it.
    #[arg(long, default_value_t = 10)]
    pub before_s: u64,
    #[arg(long, default_value_t = 5)]
    pub after_s: u64,
    /// kill -9 the second node at the storm; every client then comes
    /// back to the first.
    #[arg(long)]
    pub kill_second: bool,
    /// A client that is not back after this long gives up.
    #[arg(long, default_value_t = 180)]
    pub timeout_s: u64,
    /// A name for the row (e.g. the limit setting).
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug, Clone)]
pub struct StormWorkerArgs {
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    #[arg(long)]
    pub connections: usize,
    #[arg(long)]
    pub id: usize,
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Staying clients: join `stay-<k>`, measure the stream, never storm.
    #[arg(long)]
    pub stay: bool,
    /// After the storm every client reconnects here (default: its own node).
    #[arg(long)]
    pub reconnect_to: Option<String>,
    #[arg(long, default_value_t = 180)]
    pub timeout_s: u64,
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
}

/// What a storm worker reports once all its clients are back.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StormReport {
    pub opened: usize,
    pub failed: usize,
    /// 503s answered while the clients first connected.
    pub initial_503: u64,
    pub back: usize,
    pub gave_up: usize,
    /// After the storm: upgrades answered 503, other failed attempts
    /// (connect, handshake, join), and attempts in all.
    pub refused_503: u64,
    pub other_failures: u64,
    pub attempts: u64,
    /// Wall clock (ns) when the worker's clients were told to drop, and of
    /// its last client's rejoin.
    pub storm_ns: u64,
    pub last_back_ns: u64,
    /// Each client's time from the drop to its rejoin, microseconds.
    pub reconnect: String,
}

/// What the staying worker reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StayReport {
    pub opened: usize,
    pub failed: usize,
    pub dropped: usize,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    /// Latency (µs) of deliveries received before, during and after the storm.
    pub phases: Vec<String>,
}

#[derive(Default)]
struct Tally {
    r503: AtomicU64,
    other: AtomicU64,
    attempts: AtomicU64,
}

/// The policy announced in `hello` (`reconnect.base_ms`, `max_ms`).
fn policy(c: &Client) -> (Duration, Duration) {
    let r = c.hello.get("reconnect");
    let field = |k: &str| {
        r.and_then(|v| v.as_map()).and_then(|m| {
            m.iter()
                .find(|(key, _)| key.as_str() == Some(k))
                .and_then(|(_, v)| v.as_u64())
        })
    };
    (
        Duration::from_millis(field("base_ms").unwrap_or(500)),
        Duration::from_millis(field("max_ms").unwrap_or(30_000)),
    )
}

/// Connects and joins `room` quietly as the server asks: the first attempt
/// at once; after a 503 the `Retry-After` it names (plus up to 250 ms);
/// after any other failure a full-jitter delay (`base` doubled per failure
/// up to `cap`). A join answered 503 (the room's home is moving) is
/// retried on the same connection with the same backoff.
async fn connect_with_policy(
    addr: &str,
    user: &str,
    room: &str,
    (base, cap): (Duration, Duration),
    deadline: Instant,
    tally: &Tally,
) -> Option<Client> {
    let mut backoff = Backoff::new(base, cap);
    loop {
        if Instant::now() >= deadline {
            return None;
        }
        tally.attempts.fetch_add(1, Ordering::Relaxed);
        let delay = match Client::connect(addr, ConnectOptions::user(user)).await {
            Ok(mut c) => loop {
                match c.join_quietly(room).await {
                    Ok(_) => return Some(c),
                    Err(ClientError::Server { code: 503, .. }) if Instant::now() < deadline => {
                        tally.other.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(_) => {
                        tally.other.fetch_add(1, Ordering::Relaxed);
                        break backoff.next_delay();
                    }
                }
            },
            Err(ClientError::Refused {
                status: 503,
                retry_after,
            }) => {
                tally.r503.fetch_add(1, Ordering::Relaxed);
                Duration::from_secs(retry_after.unwrap_or(1))
                    + Duration::from_millis(fastrand::u64(0..250))
            }
            Err(_) => {
                tally.other.fetch_add(1, Ordering::Relaxed);
                backoff.next_delay()
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[allow(clippy::print_stdout)]
fn emit(line: &str) {
    println!("{line}");
}

/// Opens `n` clients with at most `concurrency` connecting at once.
async fn open_all(args: &StormWorkerArgs, tally: Arc<Tally>) -> Vec<(usize, Client)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut openers = Vec::new();
    for _ in 0..args.concurrency.min(args.connections.max(1)) {
        let (args, next, tally) = (args.clone(), next.clone(), tally.clone());
        openers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= args.connections {
                    return out;
                }
                let (addr, room) = place(&args, i);
                let user = user(&args, i);
                let p = (Duration::from_millis(500), Duration::from_secs(30));
                if let Some(c) = connect_with_policy(&addr, &user, &room, p, deadline, &tally).await
                {
                    out.push((i, c));
                }
            }
        }));
    }
    let mut clients = Vec::new();
    for o in openers {
        if let Ok(v) = o.await {
            clients.extend(v);
        }
    }
    clients
}

fn user(args: &StormWorkerArgs, i: usize) -> String {
    if args.stay {
        format!("stay{}-{i}", args.id)
    } else {
        format!("storm{}-{i}", args.id)
    }
}

/// The node and room of client `i`: staying clients on the first node,
/// storm clients alternately on each.
fn place(args: &StormWorkerArgs, i: usize) -> (String, String) {
    if args.stay {
        (args.nodes[0].clone(), format!("stay-{}", i % args.rooms))
    } else {
        let global = args.id * 100_000 + i;
        (
            args.nodes[global % args.nodes.len()].clone(),
            format!("storm-{}", global % args.rooms),
        )
    }
}

pub async fn worker(args: StormWorkerArgs) -> Result<()> {
    if args.stay {
        return stay(args).await;
    }
    let tally = Arc::new(Tally::default());
    let clients = open_all(&args, tally.clone()).await;
    let opened = clients.len();
    let initial_503 = tally.r503.swap(0, Ordering::SeqCst);
    tally.other.store(0, Ordering::SeqCst);
    tally.attempts.store(0, Ordering::SeqCst);
    emit(&format!("ready {opened} {}", args.connections - opened));

    let (storm_tx, storm_rx) = tokio::sync::watch::channel(None::<Instant>);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let back = Arc::new(AtomicUsize::new(0));
    let last_back = Arc::new(AtomicU64::new(0));
    let reconnect = Arc::new(std::sync::Mutex::new(new_histogram()));
    let mut tasks = Vec::new();
    for (i, c) in clients {
        let (args, tally, reconnect) = (args.clone(), tally.clone(), reconnect.clone());
        let (mut storm_rx, mut stop_rx) = (storm_rx.clone(), stop_rx.clone());
        let (back, last_back) = (back.clone(), last_back.clone());
        tasks.push(tokio::spawn(async move {
            let policy = policy(&c);
            let mut c = Some(c);
            // Until the storm: read (answering the server's pings).
            let t0 = loop {
                let mut lost = false;
                let read = async {
                    match c.as_mut() {
                        Some(c) => c.next_message(Duration::from_secs(3600)).await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ok = read => lost = !ok,
                    _ = storm_rx.changed() => {
                        if let Some(t0) = *storm_rx.borrow() { break t0 }
                    }
                }
                if lost {
                    c = None;
                }
            };
            // The drop: the socket closed without a close frame.
            drop(c.take());
            let (addr, room) = place(&args, i);
            let addr = args.reconnect_to.clone().unwrap_or(addr);
            let deadline = t0 + Duration::from_secs(args.timeout_s);
            let user = user(&args, i);
            let again = connect_with_policy(&addr, &user, &room, policy, deadline, &tally).await;
            let took = t0.elapsed();
            let Some(mut c) = again else { return };
            if let Ok(mut h) = reconnect.lock() {
                let _ = h.record(took.as_micros() as u64);
            }
            back.fetch_add(1, Ordering::SeqCst);
            last_back.fetch_max(now_ns(), Ordering::SeqCst);
            // Held (and read) until the end of the run.
            loop {
                tokio::select! {
                    r = c.next_message(Duration::from_secs(3600)) => if r.is_err() { break },
                    _ = stop_rx.changed() => break,
                }
            }
        }));
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // "storm", then end of input to stop.
    let line = lines.next_line().await?;
    if line.as_deref() != Some("storm") {
        return Ok(());
    }
    let storm_ns = now_ns();
    let _ = storm_tx.send(Some(Instant::now()));
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s + 5);
    while back.load(Ordering::SeqCst) < opened && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The report is written once all are back (or the time is up).
    let mut report = StormReport {
        opened,
        failed: args.connections - opened,
        initial_503,
        back: back.load(Ordering::SeqCst),
        refused_503: tally.r503.load(Ordering::SeqCst),
        other_failures: tally.other.load(Ordering::SeqCst),
        attempts: tally.attempts.load(Ordering::SeqCst),
        storm_ns,
        last_back_ns: last_back.load(Ordering::SeqCst),
        ..StormReport::default()
    };
    report.gave_up = opened - report.back;
    report.reconnect = match reconnect.lock() {
        Ok(h) => encode_histogram(&h)?,
        Err(_) => bail!("a client task panicked"),
    };
    emit(&serde_json::to_string(&report)?);
    // The clients stay connected (and read) until the parent closes our
    // input.
    let _ = lines.next_line().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    emit("done");
    Ok(())
}

/// Staying clients: each reads its room's stream and records every
/// delivery's latency in the histogram of the current phase (set by the
/// parent: `phase 1` at the storm, `phase 2` once all are back).
async fn stay(args: StormWorkerArgs) -> Result<()> {
    let tally = Arc::new(Tally::default());
    let clients = open_all(&args, tally).await;
    let opened = clients.len();
    emit(&format!("ready {opened} {}", args.connections - opened));
    let phase = Arc::new(AtomicU8::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (_, mut c) in clients {
        let (phase, mut stop_rx) = (phase.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut hists = [new_histogram(), new_histogram(), new_histogram()];
            let (mut received, mut lost, mut reordered) = (0u64, 0u64, 0u64);
            let mut expected: Option<u64> = None;
            let mut dropped = false;
            loop {
                let m = tokio::select! {
                    m = c.next_message(Duration::from_secs(3600)) => m,
                    _ = stop_rx.changed() => break,
                };
                let Ok(m) = m else {
                    dropped = true;
                    break;
                };
                let now = now_ns();
                let p = phase.load(Ordering::Relaxed) as usize;
                for (seq, ts) in msgs(&m) {
                    received += 1;
                    let _ = hists[p.min(2)].record(now.saturating_sub(ts) / 1000);
                    match expected {
                        None => expected = Some(seq + 1),
                        Some(e) if seq == e => expected = Some(e + 1),
                        Some(e) if seq > e => {
                            lost += seq - e;
                            expected = Some(seq + 1);
                        }
                        Some(_) => reordered += 1,
                    }
                }
            }
            (hists, received, lost, reordered, dropped)
        }));
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(p) = line.strip_prefix("phase ") {
            phase.store(p.trim().parse()?, Ordering::SeqCst);
        }
    }
    let _ = stop_tx.send(true);
    let mut total = [new_histogram(), new_histogram(), new_histogram()];
    let mut report = StayReport {
        opened,
        failed: args.connections - opened,
        ..StayReport::default()
    };
    for t in tasks {
        let (hists, received, lost, reordered, dropped) = t.await?;
        for (t, h) in total.iter_mut().zip(hists.iter()) {
            t.add(h)?;
        }
        report.received += received;
        report.lost += lost;
        report.reordered += reordered;
        report.dropped += usize::from(dropped);
    }
    report.phases = total
        .iter()
        .map(encode_histogram)
        .collect::<Result<Vec<_>>>()?;
    emit(&serde_json::to_string(&report)?);
    Ok(())
}

fn pub_command(room: &str, seq: u64) -> Vec<u8> {
    let data = Value::Array(vec![Value::from(seq), Value::from(now_ns())]);
    encode_command(&[
        ("op", "pub".into()),
        ("room", room.into()),
        ("data", Field::Value(data)),
    ])
}

/// `switchboard_connections_refused_total{reason="node_rate"}` of a node.
async fn refused_node_rate(addr: &str) -> Option<f64> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    body.lines()
        .find(|l| l.starts_with("switchboard_connections_refused_total") && l.contains("node_rate"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// Server CPU (cores) of `pids` between two readings.
fn cores(before: u64, after: u64, wall: Duration) -> f64 {
    after.saturating_sub(before) as f64 / wall.as_micros().max(1) as f64
}

fn ms_quantiles(h: &Histogram<u64>) -> serde_json::Value {
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    json!({ "count": h.len(), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": h.max() as f64 / 1000.0 })
}

#[allow(clippy::print_stdout)]
pub async fn run(args: StormArgs) -> Result<()> {
    if args.nodes.len() != 2 || args.pids.len() != 2 {
        bail!("--nodes and --pids: two each");
    }
    let nodes = args.nodes.join(",");
    let common = |n: usize, id: usize| {
        vec![
            "--nodes".to_owned(),
            nodes.clone(),
            "--connections".to_owned(),
            n.to_string(),
            "--id".to_owned(),
            id.to_string(),
            "--timeout-s".to_owned(),
            args.timeout_s.to_string(),
        ]
    };
    println!("== staying clients: {} on {}", args.staying, args.nodes[0]);
    let mut a = common(args.staying, 0);
    a.extend([
        "--stay".into(),
        "--rooms".into(),
        args.staying_rooms.to_string(),
    ]);
    let mut stay = Worker::start("storm-worker", a).await?;
    let workers_n = args.clients.div_ceil(PER_WORKER);
    println!(
        "== {} storm clients in {} rooms over both nodes, {workers_n} worker processes",
        args.clients, args.rooms
    );
    let connect_started = Instant::now();
    let (mut starting, mut storm) = (Vec::new(), Vec::new());
    let mut left = args.clients;
    for w in 0..workers_n {
        let n = left.div_ceil(workers_n - w);
        left -= n;
        let mut a = common(n, w + 1);
        a.extend(["--rooms".into(), args.rooms.to_string()]);
        if args.kill_second {
            a.extend(["--reconnect-to".into(), args.nodes[0].clone()]);
        }
        starting.push(Worker::start("storm-worker", a));
    }
    for w in join_all(starting).await {
        storm.push(w?);
    }
    let opened: usize = storm.iter().map(|p| p.opened).sum();
    let failed: usize = storm.iter().map(|p| p.failed).sum();
    println!(
        "   {opened} connected and joined ({failed} failed) in {:.1} s",
        connect_started.elapsed().as_secs_f64()
    );

    // The stream, from its own connection on the surviving node.
    let mut publisher =
        Client::connect(&args.nodes[0], ConnectOptions::user("storm-publisher")).await?;
    let (pub_stop_tx, mut pub_stop_rx) = tokio::sync::watch::channel(false);
    let (rate, rooms) = (args.rate, args.staying_rooms);
    let publishing = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
        let mut seqs = vec![0u64; rooms];
        let mut n = 0usize;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = pub_stop_rx.changed() => break,
            }
            let k = n % rooms;
            n += 1;
            let bytes = pub_command(&format!("stay-{k}"), seqs[k]);
            seqs[k] += 1;
            if publisher.send_binary(bytes).await.is_err() {
                break;
            }
        }
        n
    });
    // Let the connects' admission bucket refill, then measure the steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("== steady stream for {} s", args.before_s);
    let cpu_before0 = procstat::cpu_us_all(&args.pids)?;
    let before_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.before_s)).await;
    let cpu_before = cores(
        cpu_before0,
        procstat::cpu_us_all(&args.pids)?,
        before_started.elapsed(),
    );
    let refused0 = refused_node_rate(&args.nodes[0]).await.unwrap_or(0.0)
        + refused_node_rate(&args.nodes[1]).await.unwrap_or(0.0);

    println!(
        "== storm: {} clients drop at once{}",
        opened,
        if args.kill_second {
            " and the second node is killed (-9)"
        } else {
            ""
        }
    );
    let survivors: Vec<u32> = if args.kill_second {
        vec![args.pids[0]]
    } else {
        args.pids.clone()
    };
    let cpu_storm0 = procstat::cpu_us_all(&survivors)?;
    let storm_ns = now_ns();
    let storm_at = Instant::now();
    stay.say("phase 1").await?;
    for p in &mut storm {
        p.say("storm").await?;
    }
    if args.kill_second {
        let _ = std::process::Command::new("kill")
            .args(["-9", &args.pids[1].to_string()])
            .status();
    }
    let mut reports = Vec::new();
    for p in &mut storm {
        let line = p.line().await?;
        reports.push(serde_json::from_str::<StormReport>(&line)?);
    }
    let last_back_ns = reports.iter().map(|r| r.last_back_ns).max().unwrap_or(0);
    let recovery_s = last_back_ns.saturating_sub(storm_ns) as f64 / 1e9;
    let cpu_storm = cores(
        cpu_storm0,
        procstat::cpu_us_all(&survivors)?,
        storm_at.elapsed(),
    );
    let storm_cpu_s = (procstat::cpu_us_all(&survivors)? - cpu_storm0) as f64 / 1e6;
    let refused1 = refused_node_rate(&args.nodes[0]).await.unwrap_or(0.0)
        + if args.kill_second {
            0.0
        } else {
            refused_node_rate(&args.nodes[1]).await.unwrap_or(0.0)
        };
    stay.say("phase 2").await?;
    println!("   all back in {recovery_s:.2} s; {} s after", args.after_s);
    let cpu_after0 = procstat::cpu_us_all(&survivors)?;
    let after_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.after_s)).await;
    let cpu_after = cores(
        cpu_after0,
        procstat::cpu_us_all(&survivors)?,
        after_started.elapsed(),
    );
    let _ = pub_stop_tx.send(true);
    let published = publishing.await.unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stay_report: StayReport = serde_json::from_str(&stay.finish().await?)?;
    let mut reconnect = new_histogram();
    for r in &reports {
        reconnect.add(&decode_histogram(&r.reconnect)?)?;
    }
    for p in storm {
        p.finish().await?;
    }
    let phases = stay_report
        .phases
        .iter()
        .map(|s| decode_histogram(s))
        .collect::<Result<Vec<_>>>()?;
    let sum = |f: fn(&StormReport) -> u64| reports.iter().map(f).sum::<u64>();
    let q = |x: f64| reconnect.value_at_quantile(x) as f64 / 1000.0;
    let row = json!({
        "scenario": "storm",
        "label": args.label,
        "kill_second": args.kill_second,
        "clients": opened,
        "failed_to_connect": failed,
        "back": reports.iter().map(|r| r.back).sum::<usize>(),
        "gave_up": reports.iter().map(|r| r.gave_up).sum::<usize>(),
        "recovery_s": recovery_s,
        "reconnect_p50_ms": q(0.5),
        "reconnect_p99_ms": q(0.99),
        "reconnect_max_ms": reconnect.max() as f64 / 1000.0,
        "refused_503": sum(|r| r.refused_503),
        "refused_503_server": refused1 - refused0,
        "other_failures": sum(|r| r.other_failures),
        "attempts": sum(|r| r.attempts),
        "initial_503": sum(|r| r.initial_503),
        "staying": stay_report.opened,
        "staying_dropped": stay_report.dropped,
        "published": published,
        "rate": args.rate,
        "delivered": stay_report.received,
        "lost": stay_report.lost,
        "reordered": stay_report.reordered,
        "latency_before": ms_quantiles(&phases[0]),
        "latency_during": ms_quantiles(&phases[1]),
        "latency_after": ms_quantiles(&phases[2]),
        "server_cores_before": cpu_before,
        "server_cores_during": cpu_storm,
        "server_cpu_s_storm": storm_cpu_s,
        "server_cores_after": cpu_after,
    });
    println!("{}", serde_json::to_string_pretty(&row)?);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&row)?)?;
    Ok(())
}
