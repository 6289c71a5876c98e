#![no_main]
//! The WebSocket frame reader, fed a client's bytes in arbitrary pieces, as
//! the socket happens to deliver them.

use libfuzzer_sys::fuzz_target;
use switchboard_protocol::frames::{FrameReader, Incoming};

const MAX_MESSAGE: usize = 1024;

/// The smallest client frame: two header bytes and the mask.
const MIN_FRAME: usize = 6;

fuzz_target!(|input: &[u8]| {
    // The first byte says how many of the next ones are piece sizes; the
    // rest is what the client sent.
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let (sizes, wire) = rest.split_at(usize::from(n % 16).min(rest.len()));
    let mut sizes = sizes.iter().cycle();
    let mut reader = FrameReader::new(MAX_MESSAGE);
    let mut pushed = 0;
    let mut messages = 0;
    let mut left = wire;
    let mut turn = 0u32;
    while !left.is_empty() {
        // 255 (or no sizes at all): everything left at once.
        let size = match sizes.next() {
            Some(&s) if s < 255 => usize::from(s) + 1,
            _ => left.len(),
        };
        let (piece, after) = left.split_at(size.min(left.len()));
        left = after;
        // Both ways in: copied, and read straight into the buffer as the
        // gateway does.
        if turn % 2 == 0 {
            reader.push(piece);
        } else {
            let buf = reader.read_buffer();
            buf.reserve(4096);
            buf.extend_from_slice(piece);
        }
        turn += 1;
        pushed += piece.len();
        loop {
            let next = reader.next();
            assert!(reader.buffered() <= pushed, "more buffered than pushed");
            match next {
                Ok(Some(message)) => {
                    messages += 1;
                    assert!(messages * MIN_FRAME <= pushed, "messages from nothing");
                    check(&message);
                }
                Ok(None) => break,
                // The connection closes: nothing more is read.
                Err(_) => return,
            }
        }
    }
});

fn check(message: &Incoming) {
    match message {
        Incoming::Binary(b) => assert!(b.len() <= MAX_MESSAGE),
        Incoming::Text(t) => {
            assert!(t.len() <= MAX_MESSAGE);
            assert!(std::str::from_utf8(t).is_ok(), "text that is not UTF-8");
        }
        Incoming::Ping(p) => assert!(p.len() <= 125),
        Incoming::Pong => {}
        Incoming::Close(c) => {
            assert!(c.len() <= 125);
            if let Some((&[hi, lo], reason)) = c.split_first_chunk::<2>() {
                let code = u16::from_be_bytes([hi, lo]);
                assert!(
                    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "close code {code}"
                );
                assert!(std::str::from_utf8(reason).is_ok());
            } else {
                assert!(c.is_empty(), "a close payload of one byte");
            }
        }
    }
}
