#![no_main]
//! The upgrade request head, parsed before anything else about a client is
//! known.

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::handshake::{parse_request_head, switching_protocols, MAX_HEAD_BYTES};

fuzz_target!(|input: &[u8]| {
    match parse_request_head(input) {
        Ok(Some(head)) => {
            assert!(head.len <= input.len() && head.len <= MAX_HEAD_BYTES);
            if let Some(key) = &head.key {
                let response = switching_protocols(key, Some("switchboard.v1"));
                assert!(response.ends_with(b"\r\n\r\n"));
            }
        }
        Ok(None) => assert!(input.len() <= MAX_HEAD_BYTES),
        Err(_) => {}
    }
});
