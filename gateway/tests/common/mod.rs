//! Starts real `switchboard` processes on free 127.0.0.1 ports and talks to
//! them over real sockets.
#![allow(dead_code)]

pub mod proxy;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_client::{Client, ConnectOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Server {
    child: Child,
    pub addr: String,
    /// The cluster listener's address, as the node reported it.
    pub cluster_addr: Option<String>,
    logs: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
    /// The executable: this build's, or another release's.
    bin: String,
}

impl Server {
    /// Starts a node with these `SWITCHBOARD__…` variables (on top of a free
    /// port and quiet defaults).
    pub fn start(env: &[(&str, &str)]) -> Server {
        Self::start_with(env, None).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    pub fn start_with(env: &[(&str, &str)], config: Option<&str>) -> Result<Server, String> {
        Self::start_bin(env!("CARGO_BIN_EXE_switchboard"), env, config)
    }

    /// Like [`Server::start_with`], running the executable at `bin` (e.g.
    /// the previous release, see scripts/previous-release.sh).
    pub fn start_bin(
        bin: &str,
        env: &[(&str, &str)],
        config: Option<&str>,
    ) -> Result<Server, String> {
        let mut cmd = Command::new(bin);
        cmd.env("SWITCHBOARD__HTTP__LISTEN", "127.0.0.1:0")
            .env("SWITCHBOARD__SHUTDOWN__DRAIN_S", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(path) = config {
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                // Both listeners may name port 0: the node logs what it got,
                // the cluster's (if any) before the HTTP one.
                let mut cluster_addr = None;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("cluster listening") {
                        cluster_addr = field(&line, "addr");
                    } else if line.contains("listening") {
                        if let Some(addr) = field(&line, "addr") {
                            let _ = tx.send((addr, cluster_addr.take()));
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, cluster_addr)) => Ok(Server {
                child,
                addr,
                cluster_addr,
                logs,
                env: env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                bin: bin.to_owned(),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(logs.lock().unwrap().join("\n"))
            }
        }
    }

    /// `kill -9`: no drain, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again with the same settings (new ports).
    pub fn restart(&mut self) {
        self.restart_seeded(None);
    }

    /// Like [`Server::restart`], dialing `seeds` instead of the seeds it
    /// was started with (whose ports may be another node's by now).
    pub fn restart_seeded(&mut self, seeds: Option<&str>) {
        self.kill9();
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| seeds.is_none() || *k != "SWITCHBOARD__CLUSTER__SEEDS")
            .collect();
        if let Some(seeds) = seeds {
            env.push(("SWITCHBOARD__CLUSTER__SEEDS", seeds));
        }
        let fresh = Self::start_bin(&self.bin, &env, None)
            .unwrap_or_else(|e| panic!("server did not start: {e}"));
        let old = std::mem::replace(self, fresh);
        // The earlier incarnations' logs stay, first.
        let mut earlier = std::mem::take(&mut *old.logs.lock().unwrap());
        let mut logs = self.logs.lock().unwrap();
        earlier.append(&mut logs);
        *logs = earlier;
    }

    /// Polls `/metrics` until `switchboard_cluster_nodes` is `n`.
    pub async fn wait_nodes(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let want = format!("switchboard_cluster_nodes {n}\n");
        loop {
            let (_, body) = self.http("GET", "/metrics", &[], b"").await;
            if body.contains(&want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node at {} never saw {n} nodes; logs:\n{}",
                self.addr,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The value of one unlabelled metric (or with exactly these labels,
    /// e.g. `name{reason="x"}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http("GET", "/metrics", &[], b"").await;
        metric_in(&body, series)
    }

    /// [`Server::metric`], scraped from the loopback address `local`: a
    /// scrape that neither uses nor is limited by 127.0.0.1's allowance.
    pub async fn metric_from(&self, local: &str, series: &str) -> f64 {
        let (status, body) = http_from(local, &self.addr, "GET", "/metrics", &[]).await;
        assert_eq!(status, 200, "scrape from {local}: {body}");
        metric_in(&body, series)
    }
}

/// One series' value in a Prometheus scrape, 0 if absent.
fn metric_in(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

impl Server {
    /// Waits until `series` is `want`.
    pub async fn wait_metric(&self, series: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.metric(series).await;
            if now == want {
                return;
            }
            assert!(Instant::now() < deadline, "{series} is {now}, not {want}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Open file descriptors of the process.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory of the process, KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.addr, ConnectOptions::user(user))
            .await
            .unwrap_or_else(|e| panic!("connect {user}: {e}"))
    }

    pub async fn connect(
        &self,
        opts: ConnectOptions,
    ) -> Result<Client, switchboard_client::ClientError> {
        Client::connect(&self.addr, opts).await
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGSTOP, and waits until every thread of the process has stopped
    /// (the signal takes effect a moment after `kill` returns: a thread
    /// may still read a socket meanwhile).
    pub fn freeze(&self) {
        self.signal("STOP");
        let tasks = format!("/proc/{}/task", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stopped = std::fs::read_dir(&tasks).expect("tasks").all(|t| {
                let stat = std::fs::read_to_string(t.expect("task").path().join("stat"))
                    .unwrap_or_default();
                // The state follows the command name's closing parenthesis.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            });
            if stopped {
                return;
            }
            assert!(Instant::now() < deadline, "the process did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One HTTP/1.1 request; returns (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        http(&self.addr, method, path, headers, body).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    let rest = &line[start..];
    Some(rest.split_whitespace().next()?.trim_matches('"').to_owned())
}

pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    http_on(s, addr, method, path, headers, body).await
}

/// A TCP connection to `addr` from the loopback address `local` (any of
/// 127.0.0.0/8): a client with an address of its own, for tests of
/// per-address limits and trusted proxies.
pub async fn connect_from(local: &str, addr: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{local}:0").parse().expect("local address"))
        .expect("bind");
    sock.connect(addr.parse().expect("server address"))
        .await
        .expect("connect")
}

/// [`http`] over a connection from `local` (see [`connect_from`]).
pub async fn http_from(
    local: &str,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let s = connect_from(local, addr).await;
    http_on(s, addr, method, path, headers, b"").await
}

/// One HTTP/1.1 request on an open connection; returns (status, body).
pub async fn http_on(
    mut s: tokio::net::TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .expect("http timeout")
        .expect("read");
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// MessagePack bytes of a value.
pub fn mp(v: &rmpv::Value) -> Vec<u8> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, v).unwrap();
    buf
}

/// Restarts `nodes[i]` (kill -9, then start) seeded with every other
/// node's current cluster address.
pub fn restart(nodes: &mut [Server], i: usize) {
    let seeds = nodes
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .filter_map(|(_, n)| n.cluster_addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    nodes[i].restart_seeded(Some(&seeds));
}

/// A cookie of this cluster's own: a node of another test that ends up on a
/// port this cluster once used fails the handshake instead of joining.
pub fn cookie() -> String {
    format!("test-{:016x}", fastrand::u64(..))
}

/// Starts `n` nodes `n1..` on loopback, each on a cluster port of its own
/// choosing (port 0: no port is reserved and released, so none is raced
/// for), seeded with the nodes started before it. Waits until all see `n`
/// nodes.
pub async fn cluster_with(n: usize, env: &[(&str, &str)]) -> Vec<Server> {
    let cookie = cookie();
    let mut nodes: Vec<Server> = Vec::new();
    for i in 0..n {
        let name = format!("n{}", i + 1);
        let seeds = nodes
            .iter()
            .filter_map(|n| n.cluster_addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        let mut e: Vec<(&str, &str)> = vec![
            ("SWITCHBOARD__NODE__NAME", &name),
            ("SWITCHBOARD__CLUSTER__LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD__CLUSTER__SEEDS", &seeds),
            ("SWITCHBOARD__CLUSTER__COOKIE", &cookie),
        ];
        e.extend_from_slice(env);
        nodes.push(Server::start(&e));
    }
    for node in &nodes {
        node.wait_nodes(n, Duration::from_secs(20)).await;
    }
    nodes
}

/// The port of a node's cluster listener.
pub fn cluster_port(node: &Server) -> u16 {
    node.cluster_addr
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("the node reports its cluster address")
}

/// Starts n1, n2, n3 where n1 and n2 reach each other only through the two
/// proxies (one per direction) and n3 reaches both directly. n3 starts
/// first; n1 and n2 dial it and, through the proxies, each other.
pub async fn cluster_with_proxied_link(
    env: &[(&str, &str)],
) -> (Vec<Server>, proxy::FaultProxy, proxy::FaultProxy) {
    let to_n1 = proxy::FaultProxy::start().await;
    let to_n2 = proxy::FaultProxy::start().await;
    let (p1, p2) = (to_n1.port, to_n2.port);
    let n3_addr = std::sync::Mutex::new(String::new());
    // Started in the order n3, n1, n2, then put back in name order.
    let order = [2usize, 0, 1];
    let names = ["n3", "n1", "n2"];
    let cookie = cookie();
    let mut started = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let seeds = match i {
            0 => format!("127.0.0.1:{p2},{}", n3_addr.lock().unwrap()),
            1 => format!("127.0.0.1:{p1},{}", n3_addr.lock().unwrap()),
            _ => String::new(),
        };
        let mut e: Vec<(&str, &str)> = vec![
            ("SWITCHBOARD__NODE__NAME", names[k]),
            ("SWITCHBOARD__CLUSTER__LISTEN", "127.0.0.1:0"),
            ("SWITCHBOARD__CLUSTER__SEEDS", &seeds),
            ("SWITCHBOARD__CLUSTER__COOKIE", &cookie),
        ];
        e.extend_from_slice(env);
        let node = Server::start(&e);
        match i {
            0 => to_n1.forward_to(cluster_port(&node)),
            1 => to_n2.forward_to(cluster_port(&node)),
            _ => *n3_addr.lock().unwrap() = node.cluster_addr.clone().unwrap_or_default(),
        }
        started.push((i, node));
    }
    started.sort_by_key(|(i, _)| *i);
    let nodes: Vec<Server> = started.into_iter().map(|(_, n)| n).collect();
    for node in &nodes {
        node.wait_nodes(3, Duration::from_secs(20)).await;
    }
    (nodes, to_n1, to_n2)
}

/// A room name whose home (among `nodes`) is `home`.
pub fn room_homed_on(prefix: &str, home: &str, nodes: &[&str]) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|r| switchboard_cluster::rendezvous(r, nodes) == Some(home))
        .unwrap()
}

/// Three nodes seeded with each other.
pub async fn cluster3(env: &[(&str, &str)]) -> Vec<Server> {
    cluster_with(3, env).await
}

/// Where a protocol test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    /// Three clustered nodes; clients are spread over them in turn.
    Cluster,
}

/// One node, or three clustered ones, behind one interface.
pub struct Nodes {
    pub servers: Vec<Server>,
    next: std::sync::atomic::AtomicUsize,
}

impl Nodes {
    pub async fn start(mode: Mode, env: &[(&str, &str)]) -> Nodes {
        let servers = match mode {
            Mode::Single => vec![Server::start(env)],
            Mode::Cluster => cluster3(env).await,
        };
        Nodes {
            servers,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> &Server {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        &self.servers[i % self.servers.len()]
    }

    /// A client on the next node in turn.
    pub async fn client(&self, user: &str) -> Client {
        self.pick().client(user).await
    }

    pub async fn connect(
        &self,
        opts: ConnectOptions,
    ) -> Result<Client, switchboard_client::ClientError> {
        self.pick().connect(opts).await
    }

    /// An HTTP request to the first node.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        self.servers[0].http(method, path, headers, body).await
    }

    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(Server::logs)
            .collect::<Vec<_>>()
            .join("\n")
    }
}
