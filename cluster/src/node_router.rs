//! The NodeRouter: the one actor other nodes see.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::{NodeServerMessage, RactorClusterMessage};
use switchboard_telemetry::names;

use crate::wire::{self, Control};
use crate::{Cluster, Inbound};

/// The `pg` group every node's router is in.
pub(crate) const NODES_GROUP: &str = "switchboard.nodes";
/// Routers are named `router@<node>`, which is how peers learn node names.
pub(crate) const NAME_PREFIX: &str = "router@";
/// How often each peer is pinged, how long an answer may take, and how many
/// misses in a row kill its session. The timeout is generous because a
/// saturated node answers late without being gone: with 0.9 s, a benchmark
/// that kept two cores busy had sessions killed, and every member of the
/// re-homed rooms reconnecting made the overload worse. A silent peer is
/// still declared lost within about 3 s.
const WATCHDOG_EVERY: Duration = Duration::from_millis(500);
const WATCHDOG_TIMEOUT: Duration = Duration::from_millis(2000);
const WATCHDOG_MISSES: u32 = 2;

#[derive(RactorClusterMessage)]
pub enum NodeRouterMsg {
    /// One encoded message (see [`crate::wire`]).
    Cast(Vec<u8>),
    /// One encoded request; the reply is one encoded message.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Local timer: ping every peer.
    Watchdog,
    /// Local: this node is draining; tell every peer.
    Leave,
}

/// Generic over what the node does with inbound messages, which it is given
/// before it can receive any: nothing from a peer arrives unhandled.
pub struct NodeRouter<A>(PhantomData<fn() -> A>);

impl<A> NodeRouter<A> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

pub struct NodeRouterArgs<A> {
    pub cluster: Cluster,
    pub app: Arc<A>,
    pub node_server: ActorRef<NodeServerMessage>,
}

pub struct NodeRouterState<A> {
    cluster: Cluster,
    app: Arc<A>,
    node_server: ActorRef<NodeServerMessage>,
    misses: Arc<Mutex<HashMap<Arc<str>, u32>>>,
}

impl<A> NodeRouter<A> {
    pub(crate) fn name_for(node: &str) -> String {
        format!("{NAME_PREFIX}{node}")
    }

    /// The peers' routers among `cells`, with their node names.
    fn remote(cells: Vec<ActorCell>) -> impl Iterator<Item = (Arc<str>, ActorCell)> {
        cells
            .into_iter()
            .filter(|c| !c.get_id().is_local())
            .filter_map(|c| Some((Self::peer_name(&c)?, c)))
    }

    fn peer_name(cell: &ActorCell) -> Option<Arc<str>> {
        let name = cell.get_name()?;
        name.strip_prefix(NAME_PREFIX).map(Arc::from)
    }
}

impl<A: Inbound> NodeRouterState<A> {
    fn peer_up(&self, name: Arc<str>, router: ActorRef<NodeRouterMsg>) {
        self.misses.lock().remove(&name);
        if self.cluster.peer_up(name.clone(), router.clone()) {
            self.app.peer_up(&name);
            // Its version now rather than at the next watchdog round: rooms
            // choose followers by it.
            tokio::spawn(hello(self.cluster.clone(), self.app.clone(), name, router));
        }
    }

    fn peer_down(&self, name: &str) {
        if self.cluster.peer_down(name) {
            self.app.peer_down(name);
        }
    }
}

impl<A: Inbound> Actor for NodeRouter<A> {
    type Msg = NodeRouterMsg;
    type State = NodeRouterState<A>;
    type Arguments = NodeRouterArgs<A>;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeRouterMsg>,
        args: NodeRouterArgs<A>,
    ) -> Result<NodeRouterState<A>, ActorProcessingErr> {
        let state = NodeRouterState {
            cluster: args.cluster,
            app: args.app,
            node_server: args.node_server,
            misses: Arc::new(Mutex::new(HashMap::new())),
        };
        ractor::pg::join(NODES_GROUP.into(), vec![myself.get_cell()]);
        ractor::pg::monitor(NODES_GROUP.into(), myself.get_cell());
        for (name, cell) in Self::remote(ractor::pg::get_members(&NODES_GROUP.to_owned())) {
            state.peer_up(name, cell.into());
        }
        myself.send_interval(WATCHDOG_EVERY, || NodeRouterMsg::Watchdog);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeRouterMsg>,
        msg: NodeRouterMsg,
        state: &mut NodeRouterState<A>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeRouterMsg::Cast(bytes) => {
                metrics::counter!(names::CLUSTER_MESSAGES_TOTAL, "direction" => "in").increment(1);
                // Awaited here, so one peer's messages are handled in order.
                match wire::variant(&bytes) {
                    Some("Leaving") => match wire::decode::<Control>(&bytes) {
                        Ok(Control::Leaving { node }) => {
                            if state.cluster.set_leaving(&node) {
                                state.app.leaving(&node);
                            }
                        }
                        _ => refuse(&bytes, "undecodable"),
                    },
                    Some("Hello" | "Error") | None => refuse(&bytes, "not a cast"),
                    Some(variant) => {
                        let variant = variant.to_owned();
                        state.app.cast(&variant, bytes).await;
                    }
                }
            }
            NodeRouterMsg::Call(bytes, reply) => {
                metrics::counter!(names::CLUSTER_MESSAGES_TOTAL, "direction" => "in").increment(1);
                let (cluster, app) = (state.cluster.clone(), state.app.clone());
                // Answered off the router's loop: a call may wait on a room.
                tokio::spawn(async move {
                    let answer = match wire::variant(&bytes) {
                        Some("Hello") => wire::encode(&Control::Hello {
                            node: cluster.me().to_string(),
                            version: wire::VERSION,
                        }),
                        Some("Sees") => match wire::decode::<Control>(&bytes) {
                            Ok(Control::Sees { node }) => wire::encode(&Control::Seen {
                                seen: cluster.view().has(&node),
                                node,
                            }),
                            _ => wire::encode(&Control::Error {
                                reason: "undecodable".into(),
                            }),
                        },
                        Some(variant) => {
                            let variant = variant.to_owned();
                            app.call(&variant, bytes).await
                        }
                        None => {
                            refuse(&bytes, "no message variant");
                            wire::encode(&Control::Error {
                                reason: "no message variant".into(),
                            })
                        }
                    };
                    let _ = reply.send(answer);
                });
            }
            NodeRouterMsg::Watchdog => watchdog(state),
            NodeRouterMsg::Leave => {
                let me = state.cluster.me().clone();
                if state.cluster.set_leaving(&me) {
                    state.app.leaving(&me);
                }
                state.cluster.broadcast(&wire::encode(&Control::Leaving {
                    node: me.to_string(),
                }));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<NodeRouterMsg>,
        evt: SupervisionEvent,
        state: &mut NodeRouterState<A>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = evt {
            match change {
                GroupChangeMessage::Join(_, group, cells) if group == NODES_GROUP => {
                    for (name, cell) in Self::remote(cells) {
                        state.peer_up(name, cell.into());
                    }
                }
                GroupChangeMessage::Leave(_, group, cells) if group == NODES_GROUP => {
                    for cell in cells.into_iter().filter(|c| !c.get_id().is_local()) {
                        let Some(name) = Self::peer_name(&cell) else {
                            continue;
                        };
                        // Only if the view still has this incarnation.
                        let current = state.cluster.router(&name);
                        if current.is_some_and(|r| r.get_id() == cell.get_id()) {
                            state.peer_down(&name);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Pings every peer; a peer that misses twice in a row has its session
/// killed, which `ractor_cluster` turns into a `pg` leave (peer down), and
/// membership re-dials it.
fn watchdog<A: Inbound>(state: &NodeRouterState<A>) {
    let view = state.cluster.view();
    for (name, router) in view.peers.iter() {
        let (name, router) = (name.clone(), router.clone());
        let misses = state.misses.clone();
        let cluster = state.cluster.clone();
        let app = state.app.clone();
        let node_server = state.node_server.clone();
        tokio::spawn(async move {
            let answered = hello(cluster, app, name.clone(), router.clone()).await;
            let missed = {
                let mut m = misses.lock();
                let n = m.entry(name.clone()).or_insert(0);
                *n = if answered { 0 } else { *n + 1 };
                *n
            };
            if missed >= WATCHDOG_MISSES {
                tracing::warn!(peer = %name, missed, "peer not answering; dropping its session");
                misses.lock().remove(&name);
                kill_session(&node_server, router.get_id().node()).await;
            }
        });
    }
}

/// Pings a peer; learns its wire version from the answer. Whether it
/// answered in time.
async fn hello<A: Inbound>(
    cluster: Cluster,
    app: Arc<A>,
    name: Arc<str>,
    router: ActorRef<NodeRouterMsg>,
) -> bool {
    let bytes = wire::encode(&Control::Hello {
        node: cluster.me().to_string(),
        version: wire::VERSION,
    });
    let answer = router
        .call(|r| NodeRouterMsg::Call(bytes, r), Some(WATCHDOG_TIMEOUT))
        .await;
    match answer {
        Ok(ractor::rpc::CallResult::Success(reply)) => {
            if let Ok(Control::Hello { version, .. }) = wire::decode(&reply) {
                if cluster.set_version(&name, version) {
                    app.peer_version(&name, version);
                }
            }
            true
        }
        _ => false,
    }
}

pub(crate) async fn kill_session(node_server: &ActorRef<NodeServerMessage>, node_id: u64) {
    if let Ok(ractor::rpc::CallResult::Success(sessions)) = node_server
        .call(NodeServerMessage::GetSessions, Some(Duration::from_secs(1)))
        .await
    {
        for s in sessions.values().filter(|s| s.node_id == node_id) {
            s.actor.kill();
        }
    }
}

fn refuse(bytes: &[u8], reason: &str) {
    tracing::warn!(
        variant = wire::variant(bytes).unwrap_or("?"),
        len = bytes.len(),
        reason,
        "refused a cluster message"
    );
}
