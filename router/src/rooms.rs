//! The registry of running rooms, and how callers reach them.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr};

use switchboard_cluster::Cluster;
use switchboard_protocol::Bytes;

use crate::home::Holder;
use crate::member::MembershipObserver;
use crate::room::{PublishReply, PublishRequest, RoomMsg};
use crate::supervisor::RoomSupervisorMsg;
use crate::wire::{RoomWire, SinceWire};
use crate::RouterError;

/// What rooms are configured with.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    /// `history.size`: messages kept per room for recovery.
    pub history_size: usize,
    /// `history.ttl_s`: how long a message is kept.
    pub history_ttl: Duration,
    /// How often rooms expire history and retire when idle.
    pub tick: Duration,
    /// `cluster.replicas`: nodes that hold each message before it is
    /// released (the home and, with 2, its follower).
    pub replicas: usize,
}

/// Shared by the supervisor and all its rooms.
pub(crate) struct RoomContext {
    pub(crate) map: Arc<DashMap<Arc<str>, ActorRef<RoomMsg>>>,
    pub(crate) cluster: Cluster,
    pub(crate) supervisor: ActorRef<RoomSupervisorMsg>,
    pub(crate) observer: Arc<dyn MembershipObserver>,
    pub(crate) settings: RoomSettings,
    /// The rooms whose sequence this node holds (see `home.rs`).
    pub(crate) held: Arc<DashMap<Arc<str>, Holder>>,
}

impl RoomContext {
    pub(crate) fn rooms(&self) -> Rooms {
        Rooms {
            map: self.map.clone(),
            supervisor: self.supervisor.clone(),
            held: self.held.clone(),
        }
    }
}

/// A cheap, cloneable handle for sending to rooms by name.
#[derive(Clone)]
pub struct Rooms {
    pub(crate) map: Arc<DashMap<Arc<str>, ActorRef<RoomMsg>>>,
    pub(crate) supervisor: ActorRef<RoomSupervisorMsg>,
    pub(crate) held: Arc<DashMap<Arc<str>, Holder>>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("running", &self.map.len())
            .finish()
    }
}

/// How many times a message is re-sent when the room it found was retiring.
const RETRIES: usize = 4;

/// How long opening a room may take: the supervisor only spawns an actor,
/// so a longer wait means it is stuck, and the caller gets an error rather
/// than hanging with it.
const SUPERVISOR_TIMEOUT: Duration = Duration::from_secs(5);

impl Rooms {
    /// Sends `msg` to the room, starting it if it is not running. A room that
    /// retires while the message is on its way hands it to its successor, so
    /// nothing sent here is lost to a retirement.
    pub async fn cast(&self, room: &str, mut msg: RoomMsg) -> Result<(), RouterError> {
        let mut fresh = false;
        for _ in 0..RETRIES {
            let mut actor = if fresh {
                self.ask_supervisor(room).await?
            } else {
                self.open(room).await?
            };
            // A room that just failed may still take messages it will never
            // handle: go to the supervisor, which restarts it with its state.
            if !ractor::ACTIVE_STATES.contains(&actor.get_status()) {
                actor = self.ask_supervisor(room).await?;
            }
            match actor.cast(msg) {
                Ok(()) => return Ok(()),
                // Retired or failed: the supervisor knows which, and hands
                // out the successor (a restarted room keeps its state).
                Err(MessagingErr::SendErr(back)) => {
                    msg = back;
                    fresh = true;
                }
                Err(e) => {
                    return Err(RouterError::Spawn {
                        room: room.to_owned(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Err(RouterError::Unreachable {
            room: room.to_owned(),
            reason: "it kept retiring".into(),
        })
    }

    /// Sends `msg` only if the room is running (for leaving: a room that is
    /// not running has no members). Returns whether it was sent.
    pub fn cast_if_running(&self, room: &str, msg: RoomMsg) -> bool {
        self.map
            .get(room)
            .is_some_and(|actor| actor.cast(msg).is_ok())
    }

    async fn open(&self, room: &str) -> Result<ActorRef<RoomMsg>, RouterError> {
        if let Some(actor) = self.map.get(room) {
            return Ok(actor.clone());
        }
        self.ask_supervisor(room).await
    }

    async fn ask_supervisor(&self, room: &str) -> Result<ActorRef<RoomMsg>, RouterError> {
        let name: Arc<str> = room.into();
        match self
            .supervisor
            .call(
                |reply| RoomSupervisorMsg::Open { room: name, reply },
                Some(SUPERVISOR_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(RouterError::Timeout(room.to_owned())),
            _ => Err(RouterError::SupervisorGone),
        }
    }

    /// (home) Subscribes `node` to `room`; the answer for the subscriber.
    async fn subscribe(
        &self,
        room: &str,
        node: Arc<str>,
        since: Option<SinceWire>,
        relayed: bool,
    ) -> Result<RoomWire, RouterError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let msg = RoomMsg::Subscribe {
            node,
            since,
            relayed,
            reply,
        };
        self.cast(room, msg).await?;
        tokio::time::timeout(switchboard_cluster::CALL_TIMEOUT, rx)
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| RouterError::Timeout(room.to_owned()))
    }

    /// A rooms' message from a peer (see [`RoomWire`]).
    pub async fn on_cast(&self, bytes: &[u8]) {
        let wire = match RoomWire::decode(bytes) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "refused an undecodable room message");
                return;
            }
        };
        match wire {
            RoomWire::Unsubscribe { room, node } => {
                self.cast_if_running(&room, RoomMsg::Unsubscribe { node: node.into() });
            }
            RoomWire::Publish {
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
                if let Err(e) = self.cast(&room, RoomMsg::Publish(Box::new(req))).await {
                    tracing::warn!(room = %room, error = %e, "forwarded publication not taken");
                }
            }
            RoomWire::PubAck {
                room,
                ack,
                offset,
                epoch,
            } => {
                self.cast_if_running(&room, RoomMsg::PubAck { ack, offset, epoch });
            }
            RoomWire::Deliver {
                room,
                epoch,
                offset,
                event,
                home,
            } => {
                self.cast_if_running(
                    &room,
                    RoomMsg::Deliver {
                        epoch,
                        offset,
                        event: Bytes::from(event.into_vec()),
                        home,
                    },
                );
            }
            RoomWire::Append { ref room, .. } | RoomWire::Snapshot { ref room, .. } => {
                let room = room.clone();
                if let Err(e) = self.cast(&room, RoomMsg::Replication(Box::new(wire))).await {
                    tracing::warn!(room = %room, error = %e, "replication not taken");
                }
            }
            RoomWire::Appended { ref room, .. } | RoomWire::Forget { ref room, .. } => {
                let room = room.clone();
                self.cast_if_running(&room, RoomMsg::Replication(Box::new(wire)));
            }
            other => tracing::warn!(?other, "refused a room message that is not a cast"),
        }
    }

    /// A rooms' request from a peer; the encoded answer.
    pub async fn on_call(&self, bytes: &[u8]) -> Vec<u8> {
        let answer = match RoomWire::decode(bytes) {
            Ok(RoomWire::Subscribe {
                room,
                node,
                since,
                relayed,
            }) => self
                .subscribe(&room, node.into(), since, relayed)
                .await
                .unwrap_or_else(|e| RoomWire::Error {
                    reason: e.to_string(),
                }),
            // Answered here, not by the room's actor (see `Holder`).
            Ok(RoomWire::Fetch { room, node }) => {
                let holder = self.held.get(room.as_str()).map(|h| h.clone());
                match holder {
                    Some(holder) => crate::home::hand_over(&holder, node.into()),
                    None => RoomWire::Error {
                        reason: format!("{room} is not held here"),
                    },
                }
            }
            Ok(other) => RoomWire::Error {
                reason: format!("not a call: {other:?}"),
            },
            Err(e) => RoomWire::Error {
                reason: e.to_string(),
            },
        };
        answer.encode()
    }

    /// Every running room re-checks its home (the set of live nodes changed).
    pub fn view_changed(&self) {
        for room in self.map.iter() {
            let _ = room.cast(RoomMsg::ViewChanged);
        }
    }

    /// Rooms running on this node.
    pub fn running(&self) -> usize {
        self.map.len()
    }

    /// Rooms whose sequence this node holds (a draining node waits for
    /// them to be handed over).
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Fault injection: makes the room panic (when it is running).
    pub fn crash(&self, room: &str) -> bool {
        self.map
            .get(room)
            .is_some_and(|a| a.cast(RoomMsg::Crash).is_ok())
    }
}
