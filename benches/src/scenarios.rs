//! The scenarios, each run against every system given.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use rmpv::Value;
use serde_json::{json, Map};
use switchboard_client::{encode_command, Client, ConnectOptions, Field};

use crate::child::{join_all, Worker};
use crate::procstat;
use crate::worker::{decode_histogram, new_histogram, now_ns, WorkerReport};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// A short run (under five minutes for everything).
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value = "benches/results/latest.json")]
    pub out: PathBuf,
    /// Switchboard under test: `host:port` and the server's pid.
    #[arg(long)]
    pub switchboard: Option<String>,
    #[arg(long)]
    pub switchboard_pid: Option<u32>,
    /// The Redis pub/sub peer: `host:port`, and the pids of its node and
    /// redis-server processes (their CPU is added up).
    #[arg(long)]
    pub baseline: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub baseline_pids: Vec<u32>,
    /// Three-node clusters for the cross-node scenario: addresses and pids.
    #[arg(long, value_delimiter = ',')]
    pub switchboard_cluster: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub switchboard_cluster_pids: Vec<u32>,
    #[arg(long, value_delimiter = ',')]
    pub baseline_cluster: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub baseline_cluster_pids: Vec<u32>,
    /// Add the rows to those already in `--out` instead of replacing them.
    #[arg(long)]
    pub append: bool,
    /// Directory with the built `fanout-floor` and `socket-memory-floor`.
    #[arg(long)]
    pub floor_dir: Option<PathBuf>,
    /// Run only these scenarios (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Connections per worker process (each holds one file per connection).
const PER_WORKER: usize = 5000;

struct System {
    name: &'static str,
    /// One address per node; single-node scenarios use the first.
    addrs: Vec<String>,
    pids: Vec<u32>,
}

/// Which rooms a worker's connections join.
#[derive(Clone)]
enum Rooms {
    /// One of 100 shared rooms each (members see each other's `joined`).
    Shared,
    /// A room of its own each.
    Own,
    /// All the same room, counting its messages.
    Fanout(String),
}

struct Sizes {
    density: usize,
    /// Connections of the chat (memory under activity) scenarios.
    chat: usize,
    connect: usize,
    members: usize,
    /// Smaller rooms, for latency and throughput against room size.
    small_members: Vec<usize>,
    publishes: u64,
    rate: u64,
    rate_secs: u64,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let sizes = if args.quick {
        Sizes {
            density: 5000,
            // The budgets of docs/benchmarks.md are stated at 8,000.
            chat: 8000,
            connect: 10000,
            members: 5000,
            small_members: vec![1000],
            publishes: 200,
            rate: 20,
            rate_secs: 4,
        }
    } else {
        Sizes {
            density: 18000,
            chat: 8000,
            connect: 10000,
            members: 5000,
            small_members: vec![500, 1000, 2000],
            publishes: 1000,
            rate: 20,
            rate_secs: 20,
        }
    };
    let mut systems = Vec::new();
    if let (Some(addr), Some(pid)) = (&args.switchboard, args.switchboard_pid) {
        systems.push(System {
            name: "switchboard",
            addrs: vec![addr.clone()],
            pids: vec![pid],
        });
    }
    if let Some(addr) = &args.baseline {
        systems.push(System {
            name: "redis-baseline",
            addrs: vec![addr.clone()],
            pids: args.baseline_pids.clone(),
        });
    }
    let mut clusters = Vec::new();
    if !args.switchboard_cluster.is_empty() {
        clusters.push(System {
            name: "switchboard",
            addrs: args.switchboard_cluster.clone(),
            pids: args.switchboard_cluster_pids.clone(),
        });
    }
    if !args.baseline_cluster.is_empty() {
        clusters.push(System {
            name: "redis-baseline",
            addrs: args.baseline_cluster.clone(),
            pids: args.baseline_cluster_pids.clone(),
        });
    }
    let mut results = Vec::new();
    if args.append {
        if let Ok(text) = std::fs::read_to_string(&args.out) {
            let old: serde_json::Value = serde_json::from_str(&text)?;
            results.extend(old["scenarios"].as_array().cloned().unwrap_or_default());
        }
    }
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    // Not part of a full run: `--only sse` (benches/sse.sh).
    let named = |s: &str| args.only.iter().any(|o| o == s);
    for sys in &systems {
        if want("rtt") {
            step(&format!("{}: rtt (idle)", sys.name));
            results.push(rtt(sys, "idle").await?);
        }
        if want("density") {
            step(&format!(
                "{}: density, {} connections in 100 shared rooms",
                sys.name, sizes.density
            ));
            let (d, c) = density(sys, sizes.density).await?;
            results.push(d);
            results.push(c);
        }
        if want("chat") {
            let n = sizes.chat;
            for (every_ms, command) in [
                (0, "ping"),
                (1000, "ping"),
                (5000, "ping"),
                (30000, "ping"),
                (5000, "pub"),
            ] {
                step(&format!(
                    "{}: chat, {n} connections, {command} every {every_ms} ms",
                    sys.name
                ));
                results.push(chat(sys, n, every_ms, command).await?);
            }
        }
        if want("connect") {
            step(&format!(
                "{}: connect + join, {} connections",
                sys.name, sizes.connect
            ));
            results.push(connect(sys, sizes.connect).await?);
        }
        if named("sse") {
            // The same room sizes and paces, WebSocket members then SSE
            // streams, one after the other.
            for &m in sizes.small_members.iter().chain([&sizes.members]) {
                for pace in [
                    Pace::FlatOut(sizes.publishes),
                    Pace::Rate(sizes.rate, sizes.rate_secs),
                ] {
                    for transport in ["ws", "sse"] {
                        step(&format!(
                            "{}: sse-fanout, {m} {transport} members, {}",
                            sys.name,
                            pace.label()
                        ));
                        results.push(fanout_over(sys, "sse-fanout", m, &pace, transport).await?);
                    }
                }
            }
        }
        if !want("fanout") {
            continue;
        }
        for &m in &sizes.small_members {
            step(&format!("{}: fan-out flat out, {m} members", sys.name));
            results.push(fanout(sys, "fanout", m, Pace::FlatOut(sizes.publishes)).await?);
            step(&format!(
                "{}: fan-out at {}/s, {m} members",
                sys.name, sizes.rate
            ));
            let pace = Pace::Rate(sizes.rate, sizes.rate_secs);
            results.push(fanout(sys, "fanout", m, pace).await?);
        }
        step(&format!(
            "{}: fan-out flat out, {} members",
            sys.name, sizes.members
        ));
        let max = fanout(sys, "fanout", sizes.members, Pace::FlatOut(sizes.publishes)).await?;
        // Half of what the members could take in, not of what the server
        // acknowledged: the publisher can run ahead of the deliveries.
        let max_deliveries = max["deliveries_per_s"].as_f64().unwrap_or(1.0);
        results.push(max);
        let half = ((max_deliveries / 2.0 / sizes.members as f64).max(1.0)) as u64;
        step(&format!(
            "{}: fan-out at half the maximum rate ({half}/s)",
            sys.name
        ));
        let pace = Pace::Rate(half, sizes.rate_secs);
        results.push(fanout(sys, "fanout", sizes.members, pace).await?);
        step(&format!("{}: fan-out at {}/s", sys.name, sizes.rate));
        let pace = Pace::Rate(sizes.rate, sizes.rate_secs);
        results.push(fanout(sys, "fanout", sizes.members, pace).await?);
    }
    for sys in clusters.iter().filter(|_| want("cross-node")) {
        let n = sys.addrs.len();
        step(&format!(
            "{}: cross-node fan-out flat out, {} members over {n} nodes",
            sys.name, sizes.members
        ));
        let pace = Pace::FlatOut(sizes.publishes);
        results.push(fanout(sys, "cross-node", sizes.members, pace).await?);
        step(&format!(
            "{}: cross-node fan-out at {}/s",
            sys.name, sizes.rate
        ));
        let pace = Pace::Rate(sizes.rate, sizes.rate_secs);
        results.push(fanout(sys, "cross-node", sizes.members, pace).await?);
    }
    if let (Some(dir), true) = (&args.floor_dir, want("floor")) {
        step("floor: kernel fan-out and socket memory");
        for &m in sizes.small_members.iter().chain([&sizes.members]) {
            results.push(floor_fanout(dir, m)?);
        }
        results.push(floor_memory(dir, sizes.density.min(9000))?);
    }
    let doc = json!({ "quick": args.quick, "scenarios": results });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&doc)?)?;
    step(&format!("wrote {}", args.out.display()));
    Ok(())
}

#[allow(clippy::print_stdout)]
fn step(what: &str) {
    println!("== {what}");
}

/// Waits (up to 10 s) until the system is idle, so that one scenario does
/// not pay for the last one's clean-up (closing thousands of connections).
async fn settle(sys: &System) -> Result<()> {
    let window = Duration::from_millis(250);
    for _ in 0..40 {
        let before = procstat::cpu_us_all(&sys.pids)?;
        tokio::time::sleep(window).await;
        let used = procstat::cpu_us_all(&sys.pids)? - before;
        // Under 10 % of one core.
        if used * 10 < window.as_micros() as u64 {
            break;
        }
    }
    Ok(())
}

/// Starts a load worker (`worker`) for `connections` connections to `addr`.
async fn spawn_worker(
    addr: String,
    connections: usize,
    id: usize,
    rooms: Rooms,
    extra: Vec<String>,
) -> Result<Worker> {
    let mut args = vec![
        "--addr".to_owned(),
        addr,
        "--connections".to_owned(),
        connections.to_string(),
        "--id".to_owned(),
        id.to_string(),
    ];
    match rooms {
        Rooms::Shared => {}
        Rooms::Own => args.push("--own-rooms".to_owned()),
        Rooms::Fanout(room) => args.extend(["--fanout-room".to_owned(), room]),
    }
    args.extend(extra);
    Worker::start("worker", args).await
}

/// The report a worker ends with.
async fn report_of(w: Worker) -> Result<WorkerReport> {
    Ok(serde_json::from_str(&w.finish().await?)?)
}

/// `total` connections in workers of at most `per_worker` each, the
/// workers spread round robin over the system's nodes.
async fn spawn_workers(
    sys: &System,
    total: usize,
    per_worker: usize,
    first_id: usize,
    rooms: Rooms,
) -> Result<Vec<Worker>> {
    spawn_workers_with(sys, total, per_worker, first_id, rooms, &[]).await
}

/// Like [`spawn_workers`], passing `extra` arguments to every worker.
async fn spawn_workers_with(
    sys: &System,
    total: usize,
    per_worker: usize,
    first_id: usize,
    rooms: Rooms,
    extra: &[String],
) -> Result<Vec<Worker>> {
    let mut workers = Vec::new();
    let mut left = total;
    let mut pending = Vec::new();
    while left > 0 {
        let n = left.min(per_worker.min(PER_WORKER));
        let addr = sys.addrs[pending.len() % sys.addrs.len()].clone();
        pending.push(spawn_worker(
            addr,
            n,
            first_id + pending.len(),
            rooms.clone(),
            extra.to_vec(),
        ));
        left -= n;
    }
    for w in join_all(pending).await {
        workers.push(w?);
    }
    Ok(workers)
}

fn row(scenario: &str, system: &str) -> Map<String, serde_json::Value> {
    let mut m = Map::new();
    m.insert("scenario".into(), json!(scenario));
    m.insert("system".into(), json!(system));
    m
}

/// Idle connections, each in one of 100 rooms: server RSS per connection
/// above a warm baseline, and the rate at which they connected and joined.
async fn density(sys: &System, n: usize) -> Result<(serde_json::Value, serde_json::Value)> {
    settle(sys).await?;
    let pid = sys.pids[0];
    let warm = spawn_workers(sys, 500, PER_WORKER, 9000, Rooms::Shared).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = procstat::rss_kib(pid)?;
    let started = Instant::now();
    let workers = spawn_workers(sys, n, PER_WORKER, 0, Rooms::Shared).await?;
    let connect_secs = started.elapsed().as_secs_f64();
    // Idle means idle: past the session passivation period (default 5 s).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let rss1 = procstat::rss_kib(pid)?;
    let mut opened = 0;
    let mut failed = 0;
    for w in workers {
        let r = report_of(w).await?;
        opened += r.opened;
        failed += r.failed;
    }
    for w in warm {
        w.finish().await?;
    }
    let mut d = row("density", sys.name);
    d.insert("connections".into(), json!(opened));
    d.insert("failed".into(), json!(failed));
    d.insert("rss_kib_baseline".into(), json!(rss0));
    d.insert("rss_kib".into(), json!(rss1));
    d.insert(
        "rss_kib_per_connection".into(),
        json!((rss1.saturating_sub(rss0)) as f64 / opened.max(1) as f64),
    );
    let mut c = row("connect", sys.name);
    c.insert("rooms".into(), json!("100 shared"));
    c.insert("connections".into(), json!(opened));
    c.insert(
        "connections_per_s".into(),
        json!(opened as f64 / connect_secs),
    );
    Ok((serde_json::Value::Object(d), serde_json::Value::Object(c)))
}

/// Memory under a chat-like load: `n` connections (100 shared rooms,
/// `presence: false`; with `pub`, a room of its own each, so that fan-out
/// does not dominate), each sending `command` every `every_ms` (0: never).
/// Server RSS per connection above a warm baseline, 2 s and 10 s after the
/// last join and, under load, averaged over one period in steady state.
async fn chat(sys: &System, n: usize, every_ms: u64, command: &str) -> Result<serde_json::Value> {
    settle(sys).await?;
    let pid = sys.pids[0];
    let warm = spawn_workers(sys, 500, PER_WORKER, 9000, Rooms::Shared).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = procstat::rss_kib(pid)?;
    let extra = [
        "--quiet".to_owned(),
        "--every-ms".to_owned(),
        every_ms.to_string(),
        "--command".to_owned(),
        command.to_owned(),
    ];
    let rooms = if command == "pub" {
        Rooms::Own
    } else {
        Rooms::Shared
    };
    let workers = spawn_workers_with(sys, n, PER_WORKER, 40, rooms, &extra).await?;
    let joined = Instant::now();
    let opened: usize = workers.iter().map(|w| w.opened).sum();
    let per_conn = |rss: u64| rss.saturating_sub(rss0) as f64 / opened.max(1) as f64;
    let at = |secs: u64| joined + Duration::from_secs(secs);
    tokio::time::sleep_until(at(2).into()).await;
    let after_2s = per_conn(procstat::rss_kib(pid)?);
    tokio::time::sleep_until(at(10).into()).await;
    let after_10s = per_conn(procstat::rss_kib(pid)?);
    let mut steady = None;
    if every_ms > 0 {
        // Past the first period and the passivation period (5 s): sample
        // five times over one period.
        let period = Duration::from_millis(every_ms);
        let start = joined + period.max(Duration::from_secs(10)) + period;
        tokio::time::sleep_until(start.into()).await;
        let mut sum = 0.0;
        for _ in 0..5 {
            sum += per_conn(procstat::rss_kib(pid)?);
            tokio::time::sleep(period / 5).await;
        }
        steady = Some(sum / 5.0);
    }
    let mut failed = 0;
    for w in workers {
        failed += report_of(w).await?.failed;
    }
    for w in warm {
        w.finish().await?;
    }
    let mut c = row("chat", sys.name);
    c.insert("command".into(), json!(command));
    c.insert("every_ms".into(), json!(every_ms));
    c.insert("connections".into(), json!(opened));
    c.insert("failed".into(), json!(failed));
    c.insert("rss_kib_per_connection_2s".into(), json!(after_2s));
    c.insert("rss_kib_per_connection_10s".into(), json!(after_10s));
    c.insert("rss_kib_per_connection_steady".into(), json!(steady));
    Ok(serde_json::Value::Object(c))
}

/// Connections per second, each joining a room of its own, from two
/// worker processes; and the server's CPU time per connection.
async fn connect(sys: &System, n: usize) -> Result<serde_json::Value> {
    settle(sys).await?;
    let cpu0 = procstat::cpu_us_all(&sys.pids)?;
    let started = Instant::now();
    let workers = spawn_workers(sys, n, n.div_ceil(2), 20, Rooms::Own).await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu1 = procstat::cpu_us_all(&sys.pids)?;
    let opened: usize = workers.iter().map(|w| w.opened).sum();
    let failed: usize = workers.iter().map(|w| w.failed).sum();
    for w in workers {
        w.finish().await?;
    }
    let mut c = row("connect", sys.name);
    c.insert("rooms".into(), json!("own"));
    c.insert("connections".into(), json!(opened));
    c.insert("failed".into(), json!(failed));
    c.insert("connections_per_s".into(), json!(opened as f64 / secs));
    c.insert(
        "server_cpu_us_per_connection".into(),
        json!((cpu1 - cpu0) as f64 / opened.max(1) as f64),
    );
    Ok(serde_json::Value::Object(c))
}

enum Pace {
    /// This many publications, as fast as the server acknowledges them.
    FlatOut(u64),
    /// This many a second, for this many seconds.
    Rate(u64, u64),
}

impl Pace {
    fn label(&self) -> String {
        match self {
            Pace::FlatOut(_) => "max".to_owned(),
            Pace::Rate(r, _) => format!("{r}/s"),
        }
    }
}

fn pub_command(room: &str, seq: u64, id: u64) -> Vec<u8> {
    let data = Value::Array(vec![Value::from(seq), Value::from(now_ns())]);
    encode_command(&[
        ("op", "pub".into()),
        ("room", room.into()),
        ("data", Field::Value(data)),
        ("id", id.into()),
    ])
}

/// One room with `members` members spread evenly over the system's nodes,
/// one publisher on the first node.
async fn fanout(
    sys: &System,
    scenario: &str,
    members: usize,
    pace: Pace,
) -> Result<serde_json::Value> {
    fanout_over(sys, scenario, members, &pace, "ws").await
}

/// [`fanout`] to members of a `transport` (`ws`, or `sse`: streams); the
/// publisher is a WebSocket connection either way.
async fn fanout_over(
    sys: &System,
    scenario: &str,
    members: usize,
    pace: &Pace,
    transport: &str,
) -> Result<serde_json::Value> {
    settle(sys).await?;
    let room = format!("fanout-{}", now_ns() % 1_000_000);
    let per_worker = members.div_ceil(sys.addrs.len());
    let rooms = Rooms::Fanout(room.clone());
    let extra = ["--transport".to_owned(), transport.to_owned()];
    let mut workers = spawn_workers_with(sys, members, per_worker, 100, rooms, &extra).await?;
    let joined: usize = workers.iter().map(|w| w.opened).sum();
    let failed: usize = workers.iter().map(|w| w.failed).sum();
    let addr = &sys.addrs[0];
    let mut publisher = Client::connect(addr, ConnectOptions::user("publisher")).await?;
    let mut pinger = Client::connect(addr, ConnectOptions::user("pinger")).await?;
    let cpu0 = procstat::cpu_us_all(&sys.pids)?;
    let started = Instant::now();
    let rtt_task = tokio::spawn(async move {
        let mut h = new_histogram();
        for _ in 0..50 {
            let t = Instant::now();
            if pinger.ping().await.is_err() {
                break;
            }
            let _ = h.record(t.elapsed().as_micros() as u64);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h
    });
    let mut published = 0u64;
    match *pace {
        Pace::FlatOut(total) => {
            // Batches of 20 in one message; the next batch after the last ok.
            let mut id = 0;
            while published < total {
                let mut batch = Vec::new();
                for _ in 0..20.min(total - published) {
                    id += 1;
                    batch.extend(pub_command(&room, published, id));
                    published += 1;
                }
                publisher.send_binary(batch).await?;
                publisher.reply(id, Duration::from_secs(30)).await?;
            }
        }
        Pace::Rate(per_s, secs) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s as f64));
            let total = per_s * secs;
            while published < total {
                tick.tick().await;
                published += 1;
                publisher
                    .send_binary(pub_command(&room, published - 1, published))
                    .await?;
            }
            publisher.reply(published, Duration::from_secs(30)).await?;
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    // Let deliveries drain: until all arrived, or nothing more for 10 s.
    let expected = published * joined as u64;
    let (mut seen, mut since) = (0u64, Instant::now());
    loop {
        let mut now_seen = 0;
        for w in &mut workers {
            now_seen += w.received().await?;
        }
        if now_seen >= expected || since.elapsed() > Duration::from_secs(10) {
            break;
        }
        if now_seen > seen {
            (seen, since) = (now_seen, Instant::now());
        }
    }
    let cpu1 = procstat::cpu_us_all(&sys.pids)?;
    let mut received = 0u64;
    let mut reordered = 0u64;
    let (mut first, mut last) = (u64::MAX, 0u64);
    let mut hist = new_histogram();
    for w in workers {
        let r = report_of(w).await?;
        received += r.received;
        reordered += r.reordered;
        if r.first_ns > 0 {
            first = first.min(r.first_ns);
        }
        last = last.max(r.last_ns);
        hist.add(&decode_histogram(&r.latency)?)?;
    }
    let rtt = rtt_task.await?;
    let lost = expected.saturating_sub(received.saturating_sub(reordered));
    let span = (last.saturating_sub(first)) as f64 / 1e9;
    let mut m = row(scenario, sys.name);
    m.insert("nodes".into(), json!(sys.addrs.len()));
    m.insert("transport".into(), json!(transport));
    m.insert("pace".into(), json!(pace.label()));
    m.insert("members".into(), json!(joined));
    m.insert("members_failed_to_join".into(), json!(failed));
    m.insert("published".into(), json!(published));
    m.insert(
        "publishes_per_s".into(),
        json!(published as f64 / publish_secs),
    );
    m.insert("deliveries".into(), json!(received));
    m.insert(
        "deliveries_per_s".into(),
        json!(received as f64 / span.max(1e-6)),
    );
    m.insert(
        "server_cpu_us_per_delivery".into(),
        json!((cpu1 - cpu0) as f64 / received.max(1) as f64),
    );
    quantiles(
        &mut m,
        "",
        &hist,
        &[(0.5, "p50"), (0.99, "p99"), (0.999, "p999")],
    );
    m.insert("latency_cdf".into(), cdf(&hist));
    m.insert("lost".into(), json!(lost));
    m.insert("reordered".into(), json!(reordered));
    quantiles(&mut m, "rtt_", &rtt, &[(0.5, "p50"), (0.99, "p99")]);
    Ok(serde_json::Value::Object(m))
}

/// `[percentile, ms]` points of a microsecond histogram, for plotting.
fn cdf(h: &hdrhistogram::Histogram<u64>) -> serde_json::Value {
    const AT: [f64; 16] = [
        0.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9,
        100.0,
    ];
    json!(AT
        .iter()
        .map(|p| json!([p, h.value_at_quantile(p / 100.0) as f64 / 1000.0]))
        .collect::<Vec<_>>())
}

/// `ping`/`pong` round trips on an otherwise idle server.
async fn rtt(sys: &System, load: &str) -> Result<serde_json::Value> {
    let mut c = Client::connect(&sys.addrs[0], ConnectOptions::user("rtt")).await?;
    let mut h = new_histogram();
    for _ in 0..500 {
        let t = Instant::now();
        c.ping().await?;
        let _ = h.record(t.elapsed().as_micros() as u64);
    }
    let mut m = row("rtt", sys.name);
    m.insert("load".into(), json!(load));
    quantiles(
        &mut m,
        "",
        &h,
        &[(0.5, "p50"), (0.99, "p99"), (0.999, "p999")],
    );
    Ok(serde_json::Value::Object(m))
}

/// Adds `<prefix><name>_ms` for each quantile of a microsecond histogram.
fn quantiles(
    m: &mut Map<String, serde_json::Value>,
    prefix: &str,
    h: &hdrhistogram::Histogram<u64>,
    which: &[(f64, &str)],
) {
    for (q, name) in which {
        let ms = h.value_at_quantile(*q) as f64 / 1000.0;
        m.insert(format!("{prefix}{name}_ms"), json!(ms));
    }
}

/// The kernel's fan-out floor on this machine (shared/tools/fanout-floor.c):
/// one frame per write to `members` loopback sockets.
fn floor_fanout(dir: &std::path::Path, members: usize) -> Result<serde_json::Value> {
    const ROUNDS: usize = 20;
    // A `msg` event of this benchmark is about 60 bytes, plus the frame header.
    let out = std::process::Command::new(dir.join("fanout-floor"))
        .args([
            members.to_string(),
            "66".into(),
            "1".into(),
            ROUNDS.to_string(),
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let num_before = |marker: &str| -> Option<f64> {
        let i = text.find(marker)?;
        text[..i].split_whitespace().last()?.parse().ok()
    };
    let num_after = |marker: &str| -> Option<f64> {
        let i = text.find(marker)? + marker.len();
        text[i..]
            .split_whitespace()
            .next()?
            .trim_end_matches('s')
            .parse()
            .ok()
    };
    let mut f = row("fanout", "floor");
    f.insert("pace".into(), json!("max"));
    f.insert("members".into(), json!(members));
    f.insert(
        "deliveries_per_s".into(),
        json!(num_before(" M deliveries/s").unwrap_or(0.0) * 1e6),
    );
    f.insert(
        "server_cpu_us_per_delivery".into(),
        json!(num_before(" ns sender-CPU/delivery").unwrap_or(0.0) / 1000.0),
    );
    // How long one publication's writes take on one core: no fan-out of
    // one frame per write can reach its last member sooner.
    f.insert(
        "one_publication_ms".into(),
        json!(num_after("sender wall ").unwrap_or(0.0) * 1000.0 / ROUNDS as f64),
    );
    f.insert("lost".into(), json!(0));
    f.insert("reordered".into(), json!(0));
    f.insert("raw".into(), json!(text.trim()));
    Ok(serde_json::Value::Object(f))
}

/// Kernel memory per idle loopback connection (shared/tools/socket-memory-floor.c).
fn floor_memory(dir: &std::path::Path, sockets: usize) -> Result<serde_json::Value> {
    let out = std::process::Command::new(dir.join("socket-memory-floor"))
        .arg(sockets.to_string())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let per_conn = text
        .lines()
        .find(|l| l.starts_with("Slab delta"))
        .and_then(|l| {
            l.split("-> ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    let mut d = row("density", "floor");
    d.insert("connections".into(), json!(sockets));
    d.insert("rss_kib_per_connection".into(), json!(0.0));
    d.insert("kernel_kib_per_connection".into(), json!(per_conn / 1024.0));
    d.insert("raw".into(), json!(text.trim()));
    Ok(serde_json::Value::Object(d))
}
