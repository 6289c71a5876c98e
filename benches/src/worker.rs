//! A load-generating worker process: holds a share of the connections (a
//! process may hold at most 20,000 open files here) and reports back on
//! stdout, one JSON line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use switchboard_client::{Client, ConnectOptions};
use tokio::io::AsyncBufReadExt;

use crate::sse::SseStream;

#[derive(clap::Args, Debug, Clone)]
pub struct WorkerArgs {
    /// `host:port` of the server.
    #[arg(long)]
    pub addr: String,
    /// Connections this worker opens.
    #[arg(long)]
    pub connections: usize,
    /// Each connection joins one of this many rooms (`density-<i>`), or ...
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// ... each connection joins a room of its own, or ...
    #[arg(long)]
    pub own_rooms: bool,
    /// ... every connection joins this one room and counts its messages.
    #[arg(long)]
    pub fanout_room: Option<String>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// A unique number for this worker (user names).
    #[arg(long, default_value_t = 0)]
    pub id: usize,
    /// Join without `joined`/`left` events (`presence: false`).
    #[arg(long)]
    pub quiet: bool,
    /// Every connection sends a command this often (0: never), each at its
    /// own phase of the period: a chat-like load that keeps sessions awake.
    #[arg(long, default_value_t = 0)]
    pub every_ms: u64,
    /// What it sends: `ping`, or `pub` (to its own room, answered by the
    /// `ok` and the message itself).
    #[arg(long, default_value = "ping")]
    pub command: String,
    /// `ws`, or `sse`: each member is a Server-Sent Events stream
    /// (`GET /sse`) instead of a WebSocket connection (receiving only).
    #[arg(long, default_value = "ws")]
    pub transport: String,
}

/// What a worker reports.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub opened: usize,
    pub failed: usize,
    /// Time to open and join all connections.
    pub connect_ms: f64,
    pub received: u64,
    pub lost: u64,
    pub reordered: u64,
    /// Wall clock (ns since the Unix epoch) of the first and last message.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Publish-to-delivery latency, microseconds, hdrhistogram V2 + base64.
    pub latency: String,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2)
        .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()))
}

#[derive(Default)]
struct MemberStats {
    received: u64,
    lost: u64,
    reordered: u64,
    first_ns: u64,
    last_ns: u64,
}

pub async fn run(args: WorkerArgs) -> Result<()> {
    if args.transport == "sse" {
        return run_sse(args).await;
    }
    let started = Instant::now();
    let (mut clients, failed) = open_all(&args, |addr, user, room, quiet| async move {
        open(&addr, &user, &room, quiet).await
    })
    .await?;
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    let opened = clients.len();

    let stop = tokio_util_stop();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut members = Vec::new();
    let mut chatters = Vec::new();
    if args.fanout_room.is_some() {
        for (c, _) in clients.drain(..) {
            members.push(tokio::spawn(member(c, stop.1.clone(), received.clone())));
        }
    } else if args.every_ms > 0 {
        let every = Duration::from_millis(args.every_ms);
        let publish = args.command == "pub";
        for (c, room) in clients.drain(..) {
            let stop = stop.1.clone();
            chatters.push(tokio::spawn(chatter(c, room, every, publish, stop)));
        }
    }
    let mut report = counted_when_told(
        WorkerReport {
            opened,
            failed,
            connect_ms,
            ..WorkerReport::default()
        },
        members,
        &received,
        &stop.0,
    )
    .await?;
    for c in chatters {
        if !c.await? {
            report.failed += 1;
        }
    }
    drop(clients);
    emit(&serde_json::to_string(&report)?);
    Ok(())
}

/// Opens `args.connections` members, `args.concurrency` at a time, each
/// with `open(addr, user, room, quiet)` in the room the arguments give it;
/// returns those opened, with their room, and how many failed.
async fn open_all<T, F, Fut>(args: &WorkerArgs, open: F) -> Result<(Vec<(T, String)>, usize)>
where
    T: Send + 'static,
    F: Fn(String, String, String, bool) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<T>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut openers = Vec::new();
    for _ in 0..args.concurrency.min(args.connections.max(1)) {
        let (args, next, failed, open) = (args.clone(), next.clone(), failed.clone(), open.clone());
        openers.push(tokio::spawn(async move {
            let mut opened = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= args.connections {
                    return opened;
                }
                let user = format!("w{}-{i}", args.id);
                let room = match &args.fanout_room {
                    Some(r) => r.clone(),
                    None if args.own_rooms => format!("own-{}-{i}", args.id),
                    None => format!("density-{}", (args.id * 7919 + i) % args.rooms),
                };
                // Members of the fan-out room join quietly: the benchmark
                // measures messages, and 5,000 joins would otherwise queue
                // 12.5 million `joined` events ahead of them (the peer sends
                // none).
                let quiet = args.quiet || args.fanout_room.is_some();
                match open(args.addr.clone(), user, room.clone(), quiet).await {
                    Ok(m) => opened.push((m, room)),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for o in openers {
        all.extend(o.await?);
    }
    Ok((all, failed.load(Ordering::SeqCst)))
}

/// Says `ready`, reports how many messages the members received until the
/// parent closes our stdin (or writes a line), then stops them and adds up
/// what they counted into `report`.
async fn counted_when_told(
    mut report: WorkerReport,
    members: Vec<tokio::task::JoinHandle<(MemberStats, Histogram<u64>)>>,
    received: &Arc<std::sync::atomic::AtomicU64>,
    stop: &tokio::sync::watch::Sender<bool>,
) -> Result<WorkerReport> {
    emit(&format!("ready {} {}", report.opened, report.failed));
    // Progress, so that the parent knows when deliveries have drained.
    let progress = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                emit(&format!("received {}", received.load(Ordering::Relaxed)));
            }
        })
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let _ = lines.next_line().await;
    let _ = stop.send(true);
    progress.abort();
    let mut hist = new_histogram();
    for m in members {
        let (stats, h) = m.await?;
        report.received += stats.received;
        report.lost += stats.lost;
        report.reordered += stats.reordered;
        if stats.first_ns != 0 && (report.first_ns == 0 || stats.first_ns < report.first_ns) {
            report.first_ns = stats.first_ns;
        }
        report.last_ns = report.last_ns.max(stats.last_ns);
        hist.add(&h)?;
    }
    report.latency = encode_histogram(&hist)?;
    Ok(report)
}

fn tokio_util_stop() -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    tokio::sync::watch::channel(false)
}

#[allow(clippy::print_stdout)]
fn emit(line: &str) {
    println!("{line}");
}

async fn open(addr: &str, user: &str, room: &str, quiet: bool) -> Result<Client> {
    let mut c = Client::connect(addr, ConnectOptions::user(user)).await?;
    if quiet {
        c.join_quietly(room).await?;
    } else {
        c.join(room).await?;
    }
    Ok(c)
}

/// Sends a command every `every` until stopped (the first at a random
/// point of the period) and reads what it gets back; `false` if the
/// connection failed.
async fn chatter(
    mut c: Client,
    room: String,
    every: Duration,
    publish: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut next = tokio::time::Instant::now() + every.mul_f64(fastrand::f64());
    let mut seq = 0u64;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return true,
        }
        next += every;
        seq += 1;
        let done = if publish {
            let data = rmpv::Value::Array(vec![seq.into(), now_ns().into()]);
            c.publish(&room, data).await.is_ok()
                && c.next_op("msg", Duration::from_secs(10)).await.is_ok()
        } else {
            c.ping().await.is_ok()
        };
        if !done {
            return false;
        }
    }
}

/// Like [`run`] with SSE streams: they only receive, so they are either
/// idle or, with `--fanout-room`, members counting its messages.
async fn run_sse(args: WorkerArgs) -> Result<()> {
    if args.every_ms > 0 {
        anyhow::bail!("an SSE stream cannot send: --every-ms needs --transport ws");
    }
    let started = Instant::now();
    let (mut streams, failed) = open_all(&args, |addr, user, room, quiet| async move {
        SseStream::open(&addr, &user, &room, quiet).await
    })
    .await?;
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
    let opened = streams.len();
    let stop = tokio_util_stop();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut members = Vec::new();
    if args.fanout_room.is_some() {
        for (s, _) in streams.drain(..) {
            members.push(tokio::spawn(sse_member(
                s,
                stop.1.clone(),
                received.clone(),
            )));
        }
    }
    let report = counted_when_told(
        WorkerReport {
            opened,
            failed,
            connect_ms,
            ..WorkerReport::default()
        },
        members,
        &received,
        &stop.0,
    )
    .await?;
    drop(streams);
    emit(&serde_json::to_string(&report)?);
    Ok(())
}

/// [`member`] for an SSE stream.
async fn sse_member(
    mut s: SseStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
    received: Arc<std::sync::atomic::AtomicU64>,
) -> (MemberStats, Histogram<u64>) {
    let mut stats = MemberStats::default();
    let mut hist = new_histogram();
    let mut expected = 0u64;
    let mut got = Vec::new();
    loop {
        got.clear();
        let read = tokio::select! {
            r = s.next_msgs(&mut got) => r,
            _ = stop.changed() => break,
        };
        let now = now_ns();
        for &(seq, ts) in &got {
            stats.count(seq, ts, now, &mut expected, &mut hist);
            received.fetch_add(1, Ordering::Relaxed);
        }
        if read.is_err() {
            break;
        }
    }
    (stats, hist)
}

impl MemberStats {
    fn count(
        &mut self,
        seq: u64,
        ts: u64,
        now: u64,
        expected: &mut u64,
        hist: &mut Histogram<u64>,
    ) {
        self.received += 1;
        if self.first_ns == 0 {
            self.first_ns = now;
        }
        self.last_ns = now;
        let _ = hist.record(now.saturating_sub(ts) / 1000);
        if seq == *expected {
            *expected += 1;
        } else if seq > *expected {
            self.lost += seq - *expected;
            *expected = seq + 1;
        } else {
            self.reordered += 1;
        }
    }
}

/// Counts one member's messages: `data` is `[seq, published_ns]`.
async fn member(
    mut c: Client,
    mut stop: tokio::sync::watch::Receiver<bool>,
    received: Arc<std::sync::atomic::AtomicU64>,
) -> (MemberStats, Histogram<u64>) {
    let mut stats = MemberStats::default();
    let mut hist = new_histogram();
    let mut expected = 0u64;
    loop {
        let message = tokio::select! {
            m = c.next_message(Duration::from_secs(3600)) => m,
            _ = stop.changed() => break,
        };
        let Ok(message) = message else { break };
        let now = now_ns();
        for (seq, ts) in msgs(&message) {
            stats.count(seq, ts, now, &mut expected, &mut hist);
            received.fetch_add(1, Ordering::Relaxed);
        }
    }
    (stats, hist)
}

/// The `[seq, ts]` of every `msg` event in one message, read in place
/// (decoding into values would make the generator, not the server, the
/// bottleneck).
pub(crate) fn msgs(message: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut rest = message;
    while let Ok((map, tail)) = switchboard_protocol::split_value(rest) {
        rest = tail;
        let mut r = map;
        let Ok(n) = rmp::decode::read_map_len(&mut r) else {
            continue;
        };
        let (mut is_msg, mut data) = (false, None);
        for _ in 0..n {
            let Ok((key, tail)) = switchboard_protocol::split_value(r) else {
                break;
            };
            let Ok((value, tail)) = switchboard_protocol::split_value(tail) else {
                break;
            };
            r = tail;
            match key {
                [0xa2, b'o', b'p'] => is_msg = value == [0xa3, b'm', b's', b'g'],
                [0xa4, b'd', b'a', b't', b'a'] => data = Some(value),
                _ => {}
            }
        }
        if let (true, Some(d)) = (is_msg, data.and_then(seq_and_ts)) {
            out.push(d);
        }
        if rest.is_empty() {
            break;
        }
    }
    out
}

/// `[seq, ts]` read straight from the MessagePack bytes.
fn seq_and_ts(mut data: &[u8]) -> Option<(u64, u64)> {
    if rmp::decode::read_array_len(&mut data).ok()? != 2 {
        return None;
    }
    let seq = rmp::decode::read_int(&mut data).ok()?;
    let ts = rmp::decode::read_int(&mut data).ok()?;
    Some((seq, ts))
}

pub fn encode_histogram(h: &Histogram<u64>) -> Result<String> {
    use base64::Engine;
    use hdrhistogram::serialization::Serializer;
    let mut buf = Vec::new();
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub fn decode_histogram(s: &str) -> Result<Histogram<u64>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}
