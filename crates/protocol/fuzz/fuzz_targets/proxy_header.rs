#![no_main]
//! What a load balancer sends before the request (a PROXY header, v1 or
//! v2) and what an HTTP proxy adds to it (`Forwarded`, `X-Forwarded-For`):
//! read from trusted proxies only, but a proxy passes on what clients wrote.

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::proxy::{
    forwarded_for, parse_proxy_header, x_forwarded_for, V1_MAX_BYTES, V2_MAX_BYTES,
};

fuzz_target!(|input: &[u8]| {
    match parse_proxy_header(input) {
        Ok(Some(header)) => {
            assert!(header.len <= input.len());
            assert!(header.len <= V1_MAX_BYTES.max(V2_MAX_BYTES));
            // Complete at `len`, and the same header from exactly its bytes.
            let again = parse_proxy_header(&input[..header.len]);
            assert_eq!(again, Ok(Some(header)));
        }
        // Waiting for more: a v1 line never exceeds its limit.
        Ok(None) => assert!(input.len() < V2_MAX_BYTES),
        Err(_) => {}
    }
    if let Ok(text) = std::str::from_utf8(input) {
        // Every comma-separated entry gives at most one hop.
        let entries = text.split(',').filter(|e| !e.trim().is_empty()).count();
        assert!(x_forwarded_for(text).len() <= entries);
        // Quoted commas join elements, never split more than commas do.
        assert!(forwarded_for(text).len() <= text.split(',').count());
    }
});
