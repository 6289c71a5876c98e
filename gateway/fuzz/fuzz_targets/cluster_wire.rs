#![no_main]
//! What a peer node sends: the cluster envelope, the rooms' and presence's
//! messages and presence replication. A bad payload must be an error,
//! never a panic, and whatever decodes must encode back to the same value.

use libfuzzer_sys::fuzz_target;
use switchboard_cluster::wire::{self, Control};
use switchboard_presence::{PresenceWire, Replication};
use switchboard_router::RoomWire;

fuzz_target!(|input: &[u8]| {
    let _ = wire::variant(input);
    if let Ok(msg) = wire::decode::<Control>(input) {
        assert_eq!(wire::decode::<Control>(&wire::encode(&msg)).ok(), Some(msg));
    }
    if let Ok(msg) = RoomWire::decode(input) {
        assert_eq!(RoomWire::decode(&msg.encode()).ok(), Some(msg));
    }
    if let Ok(msg) = PresenceWire::decode(input) {
        assert_eq!(PresenceWire::decode(&msg.encode()).ok(), Some(msg));
    }
    if let Ok(rep) = Replication::decode(input) {
        assert_eq!(Replication::decode(&rep.encode()).ok(), Some(rep));
    }
});
