#![no_main]
//! What a peer node sends: the NodeRouter's messages and presence
//! replication. A bad payload must be an error, never a panic, and whatever
//! decodes must encode back to the same value.

use libfuzzer_sys::fuzz_target;
use switchboard_presence::Replication;
use switchboard_router::cluster::wire::Wire;

fuzz_target!(|input: &[u8]| {
    if let Ok(wire) = Wire::decode(input) {
        assert_eq!(Wire::decode(&wire.encode()).ok(), Some(wire));
    }
    if let Ok(rep) = Replication::decode(input) {
        assert_eq!(Replication::decode(&rep.encode()).ok(), Some(rep));
    }
});
