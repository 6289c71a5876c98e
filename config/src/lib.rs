//! Switchboard's configuration: typed settings, read once at start-up.
//!
//! Sources, later ones winning: the documented defaults (`switchboard.toml`
//! beside this crate lists every key), an optional TOML file, then
//! environment variables `SWITCHBOARD__SECTION__KEY`. A bad file or value is
//! refused with one [`ConfigError`] naming the key, before anything starts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::{Deserialize, Deserializer};

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "SWITCHBOARD__";

/// A configuration problem: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub node: NodeSettings,
    pub http: HttpSettings,
    pub cluster: ClusterSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub heartbeat: HeartbeatSettings,
    pub history: HistorySettings,
    pub limits: LimitSettings,
    pub shutdown: ShutdownSettings,
    pub session: SessionSettings,
    pub sse: SseSettings,
    pub poll: PollSettings,
    pub reconnect: ReconnectSettings,
    pub debug: DebugSettings,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's name, unique in the cluster.
    pub name: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            name: "node-1".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the HTTP listener (WebSocket, health, metrics, API).
    pub listen: SocketAddr,
    /// Serve the demo page (`GET /demo`) and the browser SDK it loads.
    pub demo: bool,
    /// Peers (load balancers, ingress controllers) whose word about the
    /// client's address is taken: a PROXY header, `Forwarded`,
    /// `X-Forwarded-For`. Anyone else's is ignored.
    #[serde(deserialize_with = "cidrs")]
    pub trusted_proxies: Vec<Cidr>,
    /// Every connection from a trusted proxy starts with a PROXY protocol
    /// header (v1 or v2).
    pub proxy_protocol: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            demo: true,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

impl HttpSettings {
    /// Whether `ip` is a trusted proxy. An IPv4 peer of a dual-stack
    /// listener (`::ffff:10.0.0.1`) is matched as the IPv4 address it is.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is
/// the block of that one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as
    /// its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && masked(ip, self.prefix) == self.addr
    }

    /// The number of leading bits that name the block.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// `ip` with every bit after the first `prefix` cleared.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?}: {why}");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IP address or CIDR block (like 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| bad(&format!("prefix length must be 0 to {max}")))?,
        };
        // `10.1.2.3/8` is refused rather than read as 10.0.0.0/8: it is more
        // likely a typo for a single address than a wish to trust a /8.
        let net = masked(addr, prefix);
        if net != addr {
            return Err(bad(&format!(
                "has bits set beyond its prefix (the block would be {net}/{prefix})"
            )));
        }
        Ok(Cidr { addr, prefix })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Address of the inter-node listener; unset means a single node.
    pub listen: Option<SocketAddr>,
    /// Host (name or IP) peers reach this node at; default: the listen IP.
    pub advertise: Option<String>,
    /// Peers to dial, as `host:port`.
    #[serde(deserialize_with = "list_or_commas")]
    pub seeds: Vec<String>,
    /// A DNS name (`name:port`) whose A/AAAA records are the peers.
    pub dns: Option<String>,
    /// Shared secret every node of the cluster presents.
    pub cookie: String,
    /// Nodes that hold each room message before its `ok` (the home and
    /// `replicas - 1` followers; 1 or 2).
    pub replicas: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            listen: None,
            advertise: None,
            seeds: Vec::new(),
            dns: None,
            cookie: "switchboard-dev-cookie".into(),
            replicas: 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No token; the user id is the `user` query parameter.
    #[default]
    None,
    /// An HS256 JWT: `sub` is the user, `exp` enforced, optional `rooms`.
    Jwt,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    pub hs256_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Bearer key for the HTTP API (`POST /api/publish`, presence).
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RawHeartbeat")]
pub struct HeartbeatSettings {
    /// How often the server pings each connection.
    pub interval_ms: u64,
    /// Silence after which a connection is closed (1001); 2 x interval if unset.
    pub timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHeartbeat {
    interval_ms: u64,
    timeout_ms: Option<u64>,
}

impl Default for RawHeartbeat {
    fn default() -> Self {
        Self {
            interval_ms: 30_000,
            timeout_ms: None,
        }
    }
}

impl From<RawHeartbeat> for HeartbeatSettings {
    fn from(raw: RawHeartbeat) -> Self {
        Self {
            interval_ms: raw.interval_ms,
            timeout_ms: raw
                .timeout_ms
                .unwrap_or_else(|| raw.interval_ms.saturating_mul(2)),
        }
    }
}

impl Default for HeartbeatSettings {
    fn default() -> Self {
        RawHeartbeat::default().into()
    }
}

impl HeartbeatSettings {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySettings {
    /// Messages kept per room for recovery with `since`.
    pub size: usize,
    /// Seconds a message is kept.
    pub ttl_s: u64,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            size: 100,
            ttl_s: 300,
        }
    }
}

impl HistorySettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_s)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest WebSocket message accepted from a client (bytes); larger: 1009.
    pub max_frame_bytes: usize,
    /// Events queued per connection before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Publications a connection may make per second, sustained.
    pub publish_per_s: u32,
    /// Publications a connection may make in a burst.
    pub publish_burst: u32,
    /// Rooms one connection may be in at once.
    pub rooms_per_connection: usize,
    /// Time a client has to send a complete request head after connecting.
    pub handshake_timeout_ms: u64,
    /// New connections accepted per second from one client address (behind
    /// `http.trusted_proxies`, the one they name), sustained,
    /// and in a burst; beyond them the connection gets 429 and is closed.
    pub connects_per_s_per_address: u32,
    pub connect_burst_per_address: u32,
    /// New clients (WebSocket upgrades, event streams, poll sessions) the
    /// node admits per second, sustained, and in a burst; beyond them the
    /// client gets 503 with `Retry-After`, so that a reconnect storm is
    /// spread out instead of slowing every connected client down.
    pub connects_per_s: u32,
    pub connect_burst: u32,
    /// WebSocket pings a client may send per second (twice that in a
    /// burst); beyond it the connection is closed with 1008.
    pub pings_per_s: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            outbound_queue: 1024,
            publish_per_s: 50,
            publish_burst: 100,
            rooms_per_connection: 100,
            handshake_timeout_ms: 10_000,
            connects_per_s_per_address: 200,
            connect_burst_per_address: 400,
            // About half of what one node on 2 cores connects and joins
            // per second (docs/benchmarks.md, `connect`): the rest of the
            // CPU stays with the clients already connected.
            connects_per_s: 10_000,
            connect_burst: 10_000,
            pings_per_s: 20,
        }
    }
}

impl LimitSettings {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Seconds over which connections are closed (1012) on SIGTERM.
    pub drain_s: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self { drain_s: 10 }
    }
}

impl ShutdownSettings {
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_s)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// A Session actor idle this long is stopped until the next command; 0: never.
    pub passivate_ms: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { passivate_ms: 5000 }
    }
}

impl SessionSettings {
    pub fn passivate(&self) -> Option<Duration> {
        (self.passivate_ms > 0).then(|| Duration::from_millis(self.passivate_ms))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseSettings {
    /// A comment line is sent on an idle stream this often (at most every
    /// `heartbeat.interval_ms`), so that proxies that cut idle responses keep
    /// it open.
    pub keepalive_ms: u64,
    /// The `retry:` a stream announces, plus up to 50 % jitter: how long a
    /// browser waits before reconnecting after the stream ends.
    pub retry_ms: u64,
}

impl Default for SseSettings {
    fn default() -> Self {
        Self {
            keepalive_ms: 15_000,
            retry_ms: 2_000,
        }
    }
}

impl Settings {
    /// `sse.keepalive_ms`, at most `heartbeat.interval_ms`: a stream counts
    /// as alive for presence at each keepalive it gets out.
    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_millis(self.sse.keepalive_ms.min(self.heartbeat.interval_ms))
    }

    /// `poll.timeout_ms`, at most half of `heartbeat.timeout_ms`: a poll
    /// session is expired by the same silence as a connection, so a held
    /// poll must be answered well before it.
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_millis(self.poll.timeout_ms.min(self.heartbeat.timeout_ms / 2))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollSettings {
    /// How long a poll with nothing to answer is held before it is answered
    /// with no events (at most half of `heartbeat.timeout_ms`).
    pub timeout_ms: u64,
}

impl Default for PollSettings {
    fn default() -> Self {
        Self { timeout_ms: 25_000 }
    }
}

/// The reconnection policy the node announces to clients (in `hello`, and
/// in the close of a drain), so that a whole cluster's clients spread out
/// when they come back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectSettings {
    /// First retry delay ceiling; doubled per failed attempt (full jitter:
    /// a random delay from 0 to the ceiling).
    pub base_ms: u64,
    /// Largest ceiling.
    pub max_ms: u64,
    /// A client closed by a drain (1012) reconnects after a random delay up
    /// to this; the close reason says it.
    pub after_drain_ms: u64,
}

impl Default for ReconnectSettings {
    fn default() -> Self {
        Self {
            base_ms: 500,
            max_ms: 30_000,
            after_drain_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugSettings {
    /// Serve `GET /echo`, a WebSocket echo for conformance tests.
    pub echo: bool,
    /// Fault-injection endpoints for tests (`POST /debug/rooms/{room}/crash`).
    pub faults: bool,
}

/// `trusted_proxies`: a list, or commas in one string like `cluster.seeds`,
/// each entry a [`Cidr`].
fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    list_or_commas(d)?
        .iter()
        .map(|s| s.trim().parse().map_err(serde::de::Error::custom))
        .collect()
}

fn list_or_commas<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seeds {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match Seeds::deserialize(d)? {
        Seeds::List(v) => v,
        Seeds::Commas(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Settings {
    /// Reads the file (if any), then the process environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`load`](Self::load), with the environment given.
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(&shown, format!("cannot read: {e}")))?;
            figment = figment.merge(Toml::string(&text));
        }
        figment = figment.merge(Serialized::defaults(env_dict(env)?));
        let settings: Settings = figment.extract().map_err(|e| figment_error(&e))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value's range and the rules between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |k: &str, p: String| Err(ConfigError::new(k, p));
        let n = &self.node.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return err(
                "node.name",
                format!("{n:?}: must be 1 to 64 bytes of A-Z a-z 0-9 _ - ."),
            );
        }
        if self.http.proxy_protocol && self.http.trusted_proxies.is_empty() {
            // Nobody would be allowed to send the header: every connection
            // from the load balancer would be refused.
            return err(
                "http.proxy_protocol",
                "needs http.trusted_proxies: the addresses the PROXY headers come from".into(),
            );
        }
        for seed in &self.cluster.seeds {
            check_host_port(seed).map_err(|p| ConfigError::new("cluster.seeds", p))?;
        }
        if let Some(dns) = &self.cluster.dns {
            check_host_port(dns).map_err(|p| ConfigError::new("cluster.dns", p))?;
        }
        if self.cluster.cookie.is_empty() {
            return err("cluster.cookie", "must not be empty".into());
        }
        if !(1..=2).contains(&self.cluster.replicas) {
            return err("cluster.replicas", "must be 1 or 2".into());
        }
        if self.auth.mode == AuthMode::Jwt
            && self.auth.hs256_secret.as_deref().unwrap_or("").is_empty()
        {
            return err(
                "auth.hs256_secret",
                "required when auth.mode = \"jwt\"".into(),
            );
        }
        if self.api.key.as_deref() == Some("") {
            return err(
                "api.key",
                "must not be empty (leave it unset instead)".into(),
            );
        }
        let hb = &self.heartbeat;
        if hb.interval_ms < 100 {
            return err(
                "heartbeat.interval_ms",
                format!("{}: must be at least 100", hb.interval_ms),
            );
        }
        if hb.timeout_ms <= hb.interval_ms {
            return err(
                "heartbeat.timeout_ms",
                format!(
                    "{}: must be greater than heartbeat.interval_ms ({})",
                    hb.timeout_ms, hb.interval_ms
                ),
            );
        }
        if self.sse.keepalive_ms < 100 {
            return err(
                "sse.keepalive_ms",
                format!("{}: must be at least 100", self.sse.keepalive_ms),
            );
        }
        if !(100..=600_000).contains(&self.sse.retry_ms) {
            return err(
                "sse.retry_ms",
                format!("{}: must be 100 to 600000", self.sse.retry_ms),
            );
        }
        if self.poll.timeout_ms < 100 {
            return err(
                "poll.timeout_ms",
                format!("{}: must be at least 100", self.poll.timeout_ms),
            );
        }
        if self.history.size > 1_000_000 {
            return err(
                "history.size",
                format!("{}: at most 1000000", self.history.size),
            );
        }
        if self.history.ttl_s == 0 {
            return err("history.ttl_s", "must be at least 1".into());
        }
        let l = &self.limits;
        if !(1024..=16 << 20).contains(&l.max_frame_bytes) {
            return err(
                "limits.max_frame_bytes",
                format!("{}: must be 1024 to 16777216", l.max_frame_bytes),
            );
        }
        for (key, v) in [
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.publish_per_s", l.publish_per_s as usize),
            ("limits.publish_burst", l.publish_burst as usize),
            ("limits.rooms_per_connection", l.rooms_per_connection),
            (
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms as usize,
            ),
            (
                "limits.connects_per_s_per_address",
                l.connects_per_s_per_address as usize,
            ),
            (
                "limits.connect_burst_per_address",
                l.connect_burst_per_address as usize,
            ),
            ("limits.pings_per_s", l.pings_per_s as usize),
            ("limits.connects_per_s", l.connects_per_s as usize),
            ("limits.connect_burst", l.connect_burst as usize),
            ("reconnect.base_ms", self.reconnect.base_ms as usize),
        ] {
            if v == 0 {
                return err(key, "must be at least 1".into());
            }
        }
        if self.shutdown.drain_s > 3600 {
            return err(
                "shutdown.drain_s",
                format!("{}: at most 3600", self.shutdown.drain_s),
            );
        }
        let r = &self.reconnect;
        if r.max_ms < r.base_ms || r.max_ms > 3_600_000 {
            return err(
                "reconnect.max_ms",
                format!("{}: from reconnect.base_ms to 3600000", r.max_ms),
            );
        }
        if r.after_drain_ms > 600_000 {
            return err(
                "reconnect.after_drain_ms",
                format!("{}: at most 600000", r.after_drain_ms),
            );
        }
        Ok(())
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: expected host:port"))?;
    if host.is_empty() {
        return Err(format!("{s:?}: empty host"));
    }
    port.parse::<u16>()
        .map(drop)
        .map_err(|_| format!("{s:?}: bad port"))
}

/// `SWITCHBOARD__LIMITS__OUTBOUND_QUEUE=5` -> `{limits: {outbound_queue: 5}}`.
fn env_dict(env: impl IntoIterator<Item = (String, String)>) -> Result<Dict, ConfigError> {
    let mut root = Dict::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if path.len() != 2 || path.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                name,
                "expected SWITCHBOARD__SECTION__KEY".to_owned(),
            ));
        }
        let value: Value = raw.parse().unwrap_or_else(|_| Value::from(raw.clone()));
        let section = root
            .entry(path[0].clone())
            .or_insert_with(|| Value::from(Dict::new()));
        if let Value::Dict(_, dict) = section {
            dict.insert(path[1].clone(), value);
        }
    }
    Ok(root)
}

fn figment_error(e: &figment::Error) -> ConfigError {
    use figment::error::Kind;
    let mut path = e.path.clone();
    let problem = match &e.kind {
        Kind::UnknownField(field, _) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            "unknown key".to_owned()
        }
        Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value {v:?}, expected one of {}",
                expected.join(", ")
            )
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::Message(m) => m.clone(),
        other => other.to_string(),
    };
    let key = if path.is_empty() {
        "config".to_owned()
    } else {
        path.join(".")
    };
    ConfigError::new(key, problem)
}

#[cfg(test)]
mod tests;
