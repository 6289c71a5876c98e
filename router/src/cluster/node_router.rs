//! The NodeRouter: the one actor other nodes see.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use ractor::pg::GroupChangeMessage;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::{NodeServerMessage, RactorClusterMessage};
use switchboard_protocol::Bytes;

use super::wire::Wire;
use super::{call, Cluster};
use crate::room::{PublishReply, PublishRequest, RoomMsg};

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
    /// One encoded [`Wire`] message.
    Cast(Vec<u8>),
    /// One encoded [`Wire`] request; the reply is one encoded [`Wire`].
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// Local timer: ping every peer.
    Watchdog,
}

pub struct NodeRouter;

pub struct NodeRouterArgs {
    pub cluster: Cluster,
    pub node_server: Option<ActorRef<NodeServerMessage>>,
}

pub struct NodeRouterState {
    cluster: Cluster,
    node_server: Option<ActorRef<NodeServerMessage>>,
    misses: Arc<Mutex<HashMap<Arc<str>, u32>>>,
}

impl NodeRouter {
    pub(crate) fn name_for(node: &str) -> String {
        format!("{NAME_PREFIX}{node}")
    }

    fn peer_name(cell: &ActorCell) -> Option<Arc<str>> {
        let name = cell.get_name()?;
        name.strip_prefix(NAME_PREFIX).map(Arc::from)
    }
}

impl Actor for NodeRouter {
    type Msg = NodeRouterMsg;
    type State = NodeRouterState;
    type Arguments = NodeRouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeRouterMsg>,
        args: NodeRouterArgs,
    ) -> Result<NodeRouterState, ActorProcessingErr> {
        ractor::pg::join(NODES_GROUP.into(), vec![myself.get_cell()]);
        ractor::pg::monitor(NODES_GROUP.into(), myself.get_cell());
        for cell in ractor::pg::get_members(&NODES_GROUP.to_owned()) {
            if !cell.get_id().is_local() {
                if let Some(name) = Self::peer_name(&cell) {
                    args.cluster.peer_up(name, cell.into());
                }
            }
        }
        myself.send_interval(WATCHDOG_EVERY, || NodeRouterMsg::Watchdog);
        Ok(NodeRouterState {
            cluster: args.cluster,
            node_server: args.node_server,
            misses: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeRouterMsg>,
        msg: NodeRouterMsg,
        state: &mut NodeRouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeRouterMsg::Cast(bytes) => {
                metrics::counter!("switchboard_cluster_messages_total", "direction" => "in")
                    .increment(1);
                match Wire::decode(&bytes) {
                    Ok(wire) => on_cast(&state.cluster, wire).await,
                    Err(e) => tracing::warn!(error = %e, "undecodable cluster message"),
                }
            }
            NodeRouterMsg::Call(bytes, reply) => {
                metrics::counter!("switchboard_cluster_messages_total", "direction" => "in")
                    .increment(1);
                let cluster = state.cluster.clone();
                // Answered off the router's loop: a call may wait on a room.
                tokio::spawn(async move {
                    let answer = match Wire::decode(&bytes) {
                        Ok(wire) => on_call(&cluster, wire).await,
                        Err(e) => Wire::Error {
                            reason: e.to_string(),
                        },
                    };
                    let _ = reply.send(answer.encode());
                });
            }
            NodeRouterMsg::Watchdog => watchdog(state),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<NodeRouterMsg>,
        evt: SupervisionEvent,
        state: &mut NodeRouterState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = evt {
            match change {
                GroupChangeMessage::Join(_, group, cells) if group == NODES_GROUP => {
                    for cell in cells.into_iter().filter(|c| !c.get_id().is_local()) {
                        if let Some(name) = Self::peer_name(&cell) {
                            state.misses.lock().remove(&name);
                            state.cluster.peer_up(name, cell.into());
                        }
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
                            state.cluster.peer_down(&name);
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
fn watchdog(state: &NodeRouterState) {
    let view = state.cluster.view();
    for (name, router) in view.peers.iter() {
        let (name, router) = (name.clone(), router.clone());
        let misses = state.misses.clone();
        let me = state.cluster.me().clone();
        let node_server = state.node_server.clone();
        tokio::spawn(async move {
            let ping = Wire::Hello {
                node: me.to_string(),
            };
            let bytes = ping.encode();
            let answered = matches!(
                router
                    .call(|r| NodeRouterMsg::Call(bytes, r), Some(WATCHDOG_TIMEOUT))
                    .await,
                Ok(ractor::rpc::CallResult::Success(_))
            );
            let missed = {
                let mut m = misses.lock();
                let n = m.entry(name.clone()).or_insert(0);
                *n = if answered { 0 } else { *n + 1 };
                *n
            };
            if missed >= WATCHDOG_MISSES {
                tracing::warn!(peer = %name, missed, "peer not answering; dropping its session");
                misses.lock().remove(&name);
                if let Some(ns) = node_server {
                    kill_session(&ns, router.get_id().node()).await;
                }
            }
        });
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

async fn on_cast(cluster: &Cluster, wire: Wire) {
    let Some(rooms) = cluster.rooms() else {
        return;
    };
    match wire {
        Wire::Unsubscribe { room, node } => {
            rooms.cast_if_running(&room, RoomMsg::Unsubscribe { node: node.into() });
        }
        Wire::Publish {
            room,
            from,
            data,
            msg_id,
            origin,
            ack,
            hops,
        } => {
            let reply = match ack {
                Some(ack) => PublishReply::Remote {
                    node: origin.into(),
                    ack,
                },
                None => PublishReply::None,
            };
            let req = PublishRequest {
                from: from.into(),
                data: Bytes::from(data.into_vec()),
                msg_id,
                reply,
                hops,
            };
            let _ = rooms.cast(&room, RoomMsg::Publish(Box::new(req))).await;
        }
        Wire::PubAck {
            room,
            ack,
            offset,
            epoch,
        } => {
            rooms.cast_if_running(&room, RoomMsg::PubAck { ack, offset, epoch });
        }
        Wire::Deliver {
            room,
            epoch,
            offset,
            event,
        } => {
            rooms.cast_if_running(
                &room,
                RoomMsg::Deliver {
                    epoch,
                    offset,
                    event: Bytes::from(event.into_vec()),
                },
            );
        }
        Wire::Presence { node, payload } => {
            if let Some(app) = cluster.app() {
                app.presence(&node, &payload);
            }
        }
        other => tracing::debug!(?other, "unexpected cluster cast"),
    }
}

async fn on_call(cluster: &Cluster, wire: Wire) -> Wire {
    match wire {
        Wire::Hello { .. } => Wire::Hello {
            node: cluster.me().to_string(),
        },
        Wire::Subscribe { room, node, since } => match cluster.rooms() {
            Some(rooms) => rooms
                .subscribe(&room, node.into(), since)
                .await
                .unwrap_or_else(|e| Wire::Error {
                    reason: e.to_string(),
                }),
            None => Wire::Error {
                reason: "starting".into(),
            },
        },
        Wire::Dm { to, event } => Wire::Delivered {
            count: cluster
                .app()
                .map_or(0, |app| app.dm(&to, Bytes::from(event.into_vec()))),
        },
        other => Wire::Error {
            reason: format!("not a call: {other:?}"),
        },
    }
}

/// Asks `router`'s node to subscribe this node to `room`.
pub(crate) async fn subscribe(
    router: &ActorRef<NodeRouterMsg>,
    room: &str,
    me: &str,
    since: Option<super::wire::SinceWire>,
) -> Option<Wire> {
    call(
        router,
        &Wire::Subscribe {
            room: room.to_owned(),
            node: me.to_owned(),
            since,
        },
    )
    .await
}
