//! RoomSupervisor: starts rooms on demand, restarts the ones that fail.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use ractor::ActorStatus;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use crate::member::MembershipObserver;
use crate::room::{Room, RoomArgs, RoomCore, RoomMsg};
use crate::rooms::{RoomContext, RoomSettings, Rooms};
use crate::RouterError;
use switchboard_cluster::Cluster;

pub enum RoomSupervisorMsg {
    /// The running room of that name, started if need be.
    Open {
        room: Arc<str>,
        reply: RpcReplyPort<Result<ActorRef<RoomMsg>, RouterError>>,
    },
    /// Periodic: every room expires history and retires if idle.
    Tick,
}

impl ractor::Message for RoomSupervisorMsg {}

pub struct RoomSupervisor;

pub struct RoomSupervisorArgs {
    pub settings: RoomSettings,
    pub cluster: Cluster,
    pub observer: Arc<dyn MembershipObserver>,
}

pub struct RoomSupervisorState {
    ctx: Arc<RoomContext>,
    /// The state each running room would be restarted with.
    cores: HashMap<ActorId, Arc<Mutex<RoomCore>>>,
}

impl RoomSupervisor {
    /// Starts the supervisor under `parent` and returns the handle callers use.
    pub async fn start(
        settings: RoomSettings,
        cluster: Cluster,
        observer: Arc<dyn MembershipObserver>,
        parent: Option<ActorCell>,
    ) -> Result<(Rooms, ActorRef<RoomSupervisorMsg>), RouterError> {
        let map = Arc::new(DashMap::new());
        let held = Arc::new(DashMap::new());
        let args = (
            (map.clone(), held.clone()),
            RoomSupervisorArgs {
                settings,
                cluster: cluster.clone(),
                observer,
            },
        );
        let spawned = match parent {
            Some(p) => Actor::spawn_linked(None, RoomSupervisor, args, p).await,
            None => Actor::spawn(None, RoomSupervisor, args).await,
        };
        let (actor, _) = spawned.map_err(|e| RouterError::Spawn {
            room: "<supervisor>".into(),
            reason: e.to_string(),
        })?;
        let rooms = Rooms {
            map,
            supervisor: actor.clone(),
            held,
        };
        Ok((rooms, actor))
    }

    async fn spawn_room(
        myself: &ActorRef<RoomSupervisorMsg>,
        state: &mut RoomSupervisorState,
        core: Arc<Mutex<RoomCore>>,
    ) -> Result<ActorRef<RoomMsg>, RouterError> {
        let name = core.lock().name.clone();
        let args = RoomArgs {
            core: core.clone(),
            ctx: state.ctx.clone(),
        };
        let (room, _) = Actor::spawn_linked(None, Room, args, myself.get_cell())
            .await
            .map_err(|e| RouterError::Spawn {
                room: name.to_string(),
                reason: e.to_string(),
            })?;
        state.cores.insert(room.get_id(), core);
        state.ctx.map.insert(name, room.clone());
        Ok(room)
    }
}

impl RoomSupervisor {
    async fn new_room(
        myself: &ActorRef<RoomSupervisorMsg>,
        state: &mut RoomSupervisorState,
        room: Arc<str>,
    ) -> Result<ActorRef<RoomMsg>, RouterError> {
        let s = &state.ctx.settings;
        let core = RoomCore::new(room, s.history_size, s.history_ttl);
        Self::spawn_room(myself, state, Arc::new(Mutex::new(core))).await
    }
}

type Args = (
    (
        Arc<DashMap<Arc<str>, ActorRef<RoomMsg>>>,
        Arc<DashMap<Arc<str>, crate::home::Holder>>,
    ),
    RoomSupervisorArgs,
);

impl Actor for RoomSupervisor {
    type Msg = RoomSupervisorMsg;
    type State = RoomSupervisorState;
    type Arguments = Args;

    async fn pre_start(
        &self,
        myself: ActorRef<RoomSupervisorMsg>,
        ((map, held), args): Args,
    ) -> Result<RoomSupervisorState, ActorProcessingErr> {
        myself.send_interval(args.settings.tick, || RoomSupervisorMsg::Tick);
        Ok(RoomSupervisorState {
            ctx: Arc::new(RoomContext {
                map,
                cluster: args.cluster,
                supervisor: myself,
                observer: args.observer,
                settings: args.settings,
                held,
            }),
            cores: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomSupervisorMsg>,
        msg: RoomSupervisorMsg,
        state: &mut RoomSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomSupervisorMsg::Open { room, reply } => {
                let existing = state.ctx.map.get(&room).map(|r| r.clone());
                let result = match existing {
                    // Alive (starting, as just spawned, counts).
                    Some(r) if ractor::ACTIVE_STATES.contains(&r.get_status()) => Ok(r),
                    // Retiring: its successor starts afresh.
                    Some(r) if r.get_status() == ActorStatus::Draining => {
                        state.ctx.map.remove(&room);
                        Self::new_room(&myself, state, room).await
                    }
                    // A room that failed, whose failure is not handled yet:
                    // restart it now, with its state, rather than start a
                    // stranger under its name.
                    Some(dead) => match state.cores.remove(&dead.get_id()) {
                        Some(core) => {
                            tracing::error!(room = %room, "room failed; restarting it");
                            state.ctx.map.remove(&room);
                            Self::spawn_room(&myself, state, core).await
                        }
                        None => {
                            state.ctx.map.remove(&room);
                            Self::new_room(&myself, state, room).await
                        }
                    },
                    None => Self::new_room(&myself, state, room).await,
                };
                let _ = reply.send(result);
            }
            RoomSupervisorMsg::Tick => {
                for room in state.ctx.map.iter() {
                    let _ = room.cast(RoomMsg::Tick);
                }
            }
        }
        Ok(())
    }

    // Overridden so that a room ending, normally or not, never stops the
    // supervisor (ractor's default would).
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RoomSupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut RoomSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.cores.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(core) = state.cores.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let name = core.lock().name.clone();
                tracing::error!(room = %name, error = %err, "room failed; restarting it");
                let id = cell.get_id();
                // Only take over the registry entry if it is still the failed room's.
                let still_registered = state.ctx.map.get(&name).is_some_and(|r| r.get_id() == id);
                if still_registered {
                    state.ctx.map.remove(&name);
                    Self::spawn_room(&myself, state, core).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
