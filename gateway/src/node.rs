//! A gateway node: its actors, and the context every connection shares.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use switchboard_config::Settings;
use switchboard_presence::PresenceHandle;
use switchboard_protocol::{CloseCode, ConnId, EventSink};
use switchboard_telemetry::names;

use switchboard_cluster::{Cluster, Inbound};
use switchboard_presence::{PeerLink, PresenceWire};
use switchboard_router::{
    Member, MembershipObserver, RoomSettings, RoomSupervisor, RoomWire, Rooms,
};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::outbound::Outbound;
use crate::session::Conn;
use crate::GatewayError;

/// What every connection and request handler on this node shares.
pub struct NodeCtx {
    pub settings: Settings,
    pub rooms: Rooms,
    pub presence: PresenceHandle,
    pub cluster: Cluster,
    /// Where the cluster listener is bound (`cluster.listen` may name port 0).
    pub cluster_addr: Option<std::net::SocketAddr>,
    /// This node's NodeRouter, when clustered (told when the node leaves).
    pub node_router: Option<ractor::ActorRef<switchboard_cluster::NodeRouterMsg>>,
    pub auth: Authenticator,
    /// Open connections, for draining.
    pub conns: DashMap<ConnId, Arc<Outbound>>,
    /// Publish rate of clients using the HTTP API with their own token, per
    /// user; full buckets are forgotten.
    pub publish_buckets: DashMap<Arc<str>, crate::ratelimit::TokenBucket>,
    /// New connections per client address (`limits.connects_per_s_per_address`):
    /// taken by the accept loop for direct peers, and once the PROXY header
    /// or request head names the client for a trusted proxy's connections.
    pub connects: parking_lot::Mutex<crate::ratelimit::AddressLimiter>,
    /// Long-polling sessions, by their cursor's session id.
    pub polls: DashMap<ConnId, Arc<crate::poll::PollSession>>,
    /// Running Session actors, so that a failed one's connection is closed.
    pub sessions: Arc<DashMap<ActorId, Arc<Conn>>>,
    /// Supervisor of the Session actors.
    pub connections: ActorRef<ConnectionsMsg>,
    pub draining: AtomicBool,
    /// New clients admitted per second (`limits.connects_per_s`).
    pub admission: parking_lot::Mutex<crate::ratelimit::TokenBucket>,
    /// The close reason of a drain, which tells the client how long it may
    /// wait before it reconnects (`reconnect.after_drain_ms`). Made once.
    pub drain_reason: &'static str,
    pub metrics: PrometheusHandle,
    /// Cancelled to stop the node (SIGTERM, or a core actor failed).
    pub shutdown: CancellationToken,
}

/// Rooms tell presence who joined and left.
struct PresenceObserver(PresenceHandle);

impl MembershipObserver for PresenceObserver {
    fn joined(&self, room: &Arc<str>, member: &Member) {
        self.0
            .join(room.clone(), member.conn, member.presence_events);
    }

    fn left(&self, room: &Arc<str>, conn: ConnId) {
        self.0.leave(room.clone(), conn);
    }
}

/// Presence replicates to peers over the cluster.
struct ClusterLink(Cluster);

impl ClusterLink {
    fn wire(&self, payload: Vec<u8>) -> Vec<u8> {
        PresenceWire::Presence {
            node: self.0.me().to_string(),
            payload,
        }
        .encode()
    }
}

impl PeerLink for ClusterLink {
    fn send(&self, node: &str, payload: Vec<u8>) {
        self.0.send(node, self.wire(payload));
    }

    fn broadcast(&self, payload: Vec<u8>) {
        self.0.broadcast(&self.wire(payload));
    }
}

/// What arrives from peers goes to rooms or presence, by message variant.
struct App {
    rooms: Rooms,
    presence: PresenceHandle,
}

impl Inbound for App {
    async fn cast(&self, variant: &str, bytes: Vec<u8>) {
        if RoomWire::owns(variant) {
            self.rooms.on_cast(&bytes).await;
        } else if PresenceWire::owns(variant) {
            self.presence.on_cast(&bytes);
        } else {
            tracing::warn!(variant, "refused a cluster message nobody here owns");
        }
    }

    async fn call(&self, variant: &str, bytes: Vec<u8>) -> Vec<u8> {
        if RoomWire::owns(variant) {
            self.rooms.on_call(&bytes).await
        } else if PresenceWire::owns(variant) {
            self.presence.on_call(&bytes)
        } else {
            tracing::warn!(variant, "refused a cluster call nobody here owns");
            switchboard_cluster::wire::encode(&switchboard_cluster::wire::Control::Error {
                reason: format!("unknown message {variant}"),
            })
        }
    }

    fn peer_up(&self, node: &str) {
        self.rooms.view_changed();
        self.presence.peer_up(node);
    }

    fn peer_down(&self, node: &str) {
        self.rooms.view_changed();
        self.presence.peer_down(node);
    }

    fn leaving(&self, _node: &str) {
        self.rooms.view_changed();
    }

    fn peer_version(&self, _node: &str, _version: u32) {
        self.rooms.view_changed();
    }
}

/// Sends `data` as a `dm` from `from` to every connection of user `to`:
/// delivered here at once, and sent now to every other node where `to` has
/// connections (after whatever this caller sent before, so one sender's
/// messages to one user keep their order). Returns how many connections
/// here got it and, if other nodes were sent it, the wait for how many
/// there did: a caller that must not wait for another node hands that to
/// a task.
pub fn send_dm(
    node: &NodeCtx,
    from: &str,
    to: &str,
    data: &[u8],
) -> (u64, Option<impl Future<Output = u64> + Send + 'static>) {
    let dm = switchboard_protocol::event::dm(from, data);
    let here = node.presence.send(to, &dm);
    let peers = node.presence.nodes_of(to);
    if peers.is_empty() {
        return (here, None);
    }
    let req = PresenceWire::Dm {
        to: to.to_owned(),
        event: dm.to_vec(),
    }
    .encode();
    let answers: Vec<_> = peers
        .into_iter()
        .filter_map(|peer| node.cluster.request(&peer, req.clone()))
        .collect();
    if answers.is_empty() {
        return (here, None);
    }
    let there = async move {
        let mut delivered = 0;
        // All were sent already: waiting for them one after the other takes
        // as long as the slowest.
        for answer in answers {
            if let Some(Ok(PresenceWire::Delivered { count })) =
                answer.await.map(|a| PresenceWire::decode(&a))
            {
                delivered += count;
            }
        }
        delivered
    };
    (here, Some(there))
}

/// The root of the node's supervision tree. A failure of one of its
/// children (rooms' supervisor, presence, connections) is a bug the node
/// cannot contain, so it stops the node and lets the orchestrator restart it.
pub struct NodeSupervisor;

impl Actor for NodeSupervisor {
    type Msg = ();
    type State = CancellationToken;
    type Arguments = CancellationToken;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        shutdown: CancellationToken,
    ) -> Result<CancellationToken, ActorProcessingErr> {
        Ok(shutdown)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        evt: SupervisionEvent,
        shutdown: &mut CancellationToken,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            tracing::error!(actor = %cell.get_id(), error = %err, "core actor failed; stopping the node");
            shutdown.cancel();
        }
        Ok(())
    }
}

/// Supervises the Session actors: a Session that fails closes its
/// connection with 1011 and nothing else.
pub struct Connections;

pub enum ConnectionsMsg {}

impl ractor::Message for ConnectionsMsg {}

impl Actor for Connections {
    type Msg = ConnectionsMsg;
    type State = Arc<DashMap<ActorId, Arc<Conn>>>;
    type Arguments = Arc<DashMap<ActorId, Arc<Conn>>>;

    async fn pre_start(
        &self,
        _myself: ActorRef<ConnectionsMsg>,
        sessions: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(sessions)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ConnectionsMsg>,
        evt: SupervisionEvent,
        sessions: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            if let Some((_, conn)) = sessions.remove(&cell.get_id()) {
                tracing::error!(conn = %conn.id, error = %err, "session failed; closing its connection");
                conn.out.close(CloseCode::Internal, "internal error");
            }
        }
        Ok(())
    }
}

/// Starts the node's actors and returns its context and root actor.
pub async fn start(
    settings: Settings,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(Arc<NodeCtx>, ActorCell), GatewayError> {
    let spawn_err =
        |what: &str, e: &dyn std::fmt::Display| GatewayError::Start(format!("{what}: {e}"));
    let (root, _) = Actor::spawn(None, NodeSupervisor, shutdown.clone())
        .await
        .map_err(|e| spawn_err("node supervisor", &e))?;
    let root = root.get_cell();

    let cluster = Cluster::new(&settings.node.name);
    let hb = &settings.heartbeat;
    let sweep = (hb.timeout() / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let link: Arc<dyn PeerLink> = Arc::new(ClusterLink(cluster.clone()));
    let (presence, _) = PresenceHandle::start(hb.timeout(), sweep, Some(link), Some(root.clone()))
        .await
        .map_err(|e| spawn_err("presence", &e))?;

    let room_settings = RoomSettings {
        history_size: settings.history.size,
        history_ttl: settings.history.ttl(),
        tick: Duration::from_secs(1).min(settings.history.ttl()),
        replicas: settings.cluster.replicas,
    };
    let observer = Arc::new(PresenceObserver(presence.clone()));
    let (rooms, _) =
        RoomSupervisor::start(room_settings, cluster.clone(), observer, Some(root.clone()))
            .await
            .map_err(|e| spawn_err("rooms", &e))?;
    let mut cluster_addr = None;
    let mut node_router = None;
    if let Some(listen) = settings.cluster.listen {
        let c = &settings.cluster;
        let membership = switchboard_cluster::ClusterSettings {
            listen,
            advertise: c
                .advertise
                .clone()
                .unwrap_or_else(|| listen.ip().to_string()),
            seeds: c.seeds.clone(),
            dns: c.dns.clone(),
            cookie: c.cookie.clone(),
        };
        let app = Arc::new(App {
            rooms: rooms.clone(),
            presence: presence.clone(),
        });
        let (router, bound) = switchboard_cluster::start(
            cluster.clone(),
            membership,
            app,
            root.clone(),
            shutdown.clone(),
        )
        .await
        .map_err(|e| spawn_err("cluster", &e))?;
        tracing::info!(addr = %bound, "cluster listening");
        cluster_addr = Some(bound);
        node_router = Some(router);
    }

    let sessions = Arc::new(DashMap::new());
    let (connections, _) = Actor::spawn_linked(None, Connections, sessions.clone(), root.clone())
        .await
        .map_err(|e| spawn_err("connections", &e))?;

    let auth = Authenticator::new(&settings.auth);
    let admission = parking_lot::Mutex::new(crate::ratelimit::TokenBucket::new(
        settings.limits.connects_per_s,
        settings.limits.connect_burst,
    ));
    let drain_reason: &'static str = Box::leak(
        format!(
            "node draining; reconnect within {} ms",
            settings.reconnect.after_drain_ms
        )
        .into_boxed_str(),
    );
    let connects = parking_lot::Mutex::new(crate::ratelimit::AddressLimiter::new(
        settings.limits.connects_per_s_per_address,
        settings.limits.connect_burst_per_address,
    ));
    let ctx = Arc::new(NodeCtx {
        settings,
        rooms,
        presence,
        cluster,
        cluster_addr,
        node_router,
        auth,
        conns: DashMap::new(),
        connects,
        polls: DashMap::new(),
        publish_buckets: DashMap::new(),
        sessions,
        connections,
        draining: AtomicBool::new(false),
        admission,
        drain_reason,
        metrics,
        shutdown,
    });
    Ok((ctx, root))
}

/// How long a draining node waits for its rooms to be fetched by their new
/// homes before it closes its connections.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

impl NodeCtx {
    /// Takes one publication from a user's HTTP API allowance.
    /// What `hello` asks clients to follow when they reconnect.
    pub fn reconnect_policy(&self) -> switchboard_protocol::event::ReconnectPolicy {
        let r = &self.settings.reconnect;
        switchboard_protocol::event::ReconnectPolicy {
            base_ms: r.base_ms,
            max_ms: r.max_ms,
            after_drain_ms: r.after_drain_ms,
        }
    }

    /// Whether a new client may be admitted now; if not, the `Retry-After`
    /// (seconds) it is told: 1 to 4 at random, so that the clients shed
    /// together do not all come back together.
    pub fn admit(&self) -> Result<(), u32> {
        if self.admission.lock().take(std::time::Instant::now()) {
            Ok(())
        } else {
            metrics::counter!(names::CONNECTIONS_REFUSED_TOTAL, "reason" => "node_rate")
                .increment(1);
            Err(fastrand::u32(1..=4))
        }
    }

    pub fn publish_allowed(&self, user: &Arc<str>) -> bool {
        let l = &self.settings.limits;
        let now = std::time::Instant::now();
        self.publish_buckets
            .entry(user.clone())
            .or_insert_with(|| crate::ratelimit::TokenBucket::new(l.publish_per_s, l.publish_burst))
            .take(now)
    }

    /// Takes one new connection from `client`'s allowance; `false` (counted
    /// as refused) when it is used up.
    pub fn connect_allowed(&self, client: std::net::IpAddr) -> bool {
        let allowed = self
            .connects
            .lock()
            .allow(client, std::time::Instant::now());
        if !allowed {
            metrics::counter!(switchboard_telemetry::names::CONNECTIONS_REFUSED_TOTAL, "reason" => "address_rate")
                .increment(1);
        }
        allowed
    }

    /// Serving: not draining, and (in a cluster) the seeds have been tried.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(std::sync::atomic::Ordering::SeqCst)
            && (self.settings.cluster.listen.is_none() || self.cluster.is_ready())
    }

    /// Closes every connection with 1012, spread over `drain` so that
    /// clients do not all reconnect at once, then waits (up to a grace) for
    /// them to be gone.
    pub async fn drain(&self, drain: Duration) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(router) = &self.node_router {
            // Rooms move off this node first, while it can still hand them
            // over; its clients rejoin elsewhere and recover with `since`.
            let _ = router.cast(switchboard_cluster::NodeRouterMsg::Leave);
            let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
            while self.rooms.held() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::info!(still_held = self.rooms.held(), "rooms handed over");
        }
        let mut conns: Vec<Arc<Outbound>> = self.conns.iter().map(|e| e.value().clone()).collect();
        fastrand::shuffle(&mut conns);
        let n = conns.len();
        tracing::info!(connections = n, drain_s = drain.as_secs_f64(), "draining");
        let start = tokio::time::Instant::now();
        for (i, out) in conns.into_iter().enumerate() {
            let at = start + drain.mul_f64(i as f64 / n.max(1) as f64);
            tokio::time::sleep_until(at).await;
            out.close(CloseCode::Restart, self.drain_reason);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.conns.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
