//! WebSocket frames, server side, without I/O: [`FrameReader`] turns bytes
//! read from a client into messages; [`write_frame`] appends a frame.
//!
//! Written here rather than taken from fastwebsockets' reader because that
//! one keeps an 8 KiB buffer per connection for its whole life; this one
//! holds bytes only while a frame is incomplete, so an idle connection
//! costs nothing here.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A complete message (or control frame) from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Binary(Bytes),
    /// A text message, its payload checked to be UTF-8.
    Text(Bytes),
    Ping(Bytes),
    Pong,
    /// The close frame's payload (code and reason), already validated.
    Close(Bytes),
}

/// Why the connection must close.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("message too big")]
    TooBig,
    #[error("invalid UTF-8 in a close reason")]
    InvalidUtf8,
    #[error("a text message that is not UTF-8")]
    InvalidText,
}

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Reassembles client frames into messages.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max_message: usize,
    /// A fragmented message in progress: its opcode and what has come.
    fragments: Option<(u8, BytesMut)>,
}

impl FrameReader {
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_message,
            fragments: None,
        }
    }

    /// Bytes read and not yet parsed into messages.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds bytes read from the socket.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read from the socket into, for a caller that reads
    /// straight into it rather than copying with [`push`](Self::push).
    /// Bytes appended count as pushed; the bytes already in it must be left
    /// as they are. An empty buffer holds no memory
    /// ([`next`](Self::next) gives it back once everything is parsed), so a
    /// reader reserves room here before each read.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete message, if the bytes pushed so far hold one.
    // Not an `Iterator`: `None` means "not yet", and more bytes may follow.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Incoming>, FrameError> {
        loop {
            let Some((fin, opcode, payload)) = self.frame()? else {
                if self.buf.is_empty() && self.buf.capacity() > 0 {
                    // Nothing pending: hold no memory while idle.
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            match opcode {
                CLOSE => return Ok(Some(Incoming::Close(check_close(payload)?))),
                PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                PONG => return Ok(Some(Incoming::Pong)),
                CONTINUATION => {
                    let Some((_, so_far)) = &mut self.fragments else {
                        return Err(FrameError::Protocol("continuation without a message"));
                    };
                    if so_far.len() + payload.len() > self.max_message {
                        return Err(FrameError::TooBig);
                    }
                    so_far.extend_from_slice(&payload);
                    if fin {
                        if let Some((op, all)) = self.fragments.take() {
                            return message(op, all).map(Some);
                        }
                    }
                }
                TEXT | BINARY => {
                    if self.fragments.is_some() {
                        return Err(FrameError::Protocol("new message inside a fragmented one"));
                    }
                    if fin {
                        return message(opcode, payload).map(Some);
                    }
                    self.fragments = Some((opcode, payload));
                }
                _ => return Err(FrameError::Protocol("unknown opcode")),
            }
        }
    }

    /// One whole frame off the buffer: (fin, opcode, unmasked payload).
    fn frame(&mut self) -> Result<Option<(bool, u8, BytesMut)>, FrameError> {
        let b: &[u8] = &self.buf;
        let Some((&[first, second], rest)) = b.split_first_chunk::<2>() else {
            return Ok(None);
        };
        let (fin, rsv, opcode) = (first & 0x80 != 0, first & 0x70, first & 0x0f);
        if rsv != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if second & 0x80 == 0 {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        let (len, rest) = match second & 0x7f {
            126 => match rest.split_first_chunk::<2>() {
                Some((n, rest)) => (u64::from(u16::from_be_bytes(*n)), rest),
                None => return Ok(None),
            },
            127 => match rest.split_first_chunk::<8>() {
                Some((n, rest)) => (u64::from_be_bytes(*n), rest),
                None => return Ok(None),
            },
            n => (u64::from(n), rest),
        };
        let control = opcode >= 0x8;
        if control && (!fin || len > 125) {
            return Err(FrameError::Protocol(
                "control frames must be whole and at most 125 bytes",
            ));
        }
        if len > self.max_message as u64 {
            return Err(FrameError::TooBig);
        }
        let len = len as usize; // At most max_message, a usize.
        let header = b.len() - rest.len();
        let Some((&mask, _)) = rest
            .split_first_chunk::<4>()
            .filter(|(_, payload)| payload.len() >= len)
        else {
            // Room for what is on its way, not for all the header announces:
            // a client that announces max_message and sends nothing more
            // must not hold that much here. The buffer grows as bytes come.
            let missing = 4 + len - rest.len();
            self.buf.reserve(missing.min(RESERVE_AHEAD));
            return Ok(None);
        };
        self.buf.advance(header + 4);
        let mut payload = self.buf.split_to(len);
        unmask(&mut payload, mask);
        Ok(Some((fin, opcode, payload)))
    }
}

/// Most room reserved ahead of an incomplete frame's bytes: as much as the
/// gateway reserves before each read, so announcing a payload costs no
/// more than sending a few bytes of it.
const RESERVE_AHEAD: usize = 4096;

/// XORs `data` with `mask` repeated, the first byte with `mask[0]`; eight
/// bytes at a time (this is every byte a client sends).
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let word = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = data.chunks_exact_mut(8);
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // Eight is a multiple of four: the tail starts again at `mask[0]`.
    for (byte, m) in words.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

fn message(opcode: u8, payload: BytesMut) -> Result<Incoming, FrameError> {
    if opcode == TEXT {
        std::str::from_utf8(&payload).map_err(|_| FrameError::InvalidText)?;
        Ok(Incoming::Text(payload.freeze()))
    } else {
        Ok(Incoming::Binary(payload.freeze()))
    }
}

fn check_close(payload: BytesMut) -> Result<Bytes, FrameError> {
    if payload.is_empty() {
        return Ok(payload.freeze());
    }
    let Some((&code, reason)) = payload.split_first_chunk::<2>() else {
        return Err(FrameError::Protocol("close frame of one byte"));
    };
    let allowed = matches!(
        u16::from_be_bytes(code),
        1000..=1003 | 1007..=1014 | 3000..=4999
    );
    if !allowed {
        return Err(FrameError::Protocol("invalid close code"));
    }
    std::str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
    Ok(payload.freeze())
}

/// Appends one unmasked server frame.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    write_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends the header of an unmasked, final server frame of `len` bytes.
pub fn write_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= 0xffff {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

pub const OP_TEXT: u8 = TEXT;
pub const OP_BINARY: u8 = BINARY;
pub const OP_CLOSE: u8 = CLOSE;
pub const OP_PING: u8 = PING;
pub const OP_PONG: u8 = PONG;

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n <= 0xffff {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
        f.extend(mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    #[test]
    fn byte_by_byte_and_fragments_with_a_ping_between() {
        let mut wire = client_frame(false, BINARY, b"hel");
        wire.extend(client_frame(true, PING, b"p"));
        wire.extend(client_frame(true, CONTINUATION, b"lo"));
        wire.extend(client_frame(true, BINARY, &vec![7u8; 70_000]));
        let mut r = FrameReader::new(100_000);
        let mut got = Vec::new();
        for b in wire {
            r.push(&[b]);
            while let Some(m) = r.next().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Incoming::Ping(Bytes::from_static(b"p")));
        assert_eq!(got[1], Incoming::Binary(Bytes::from_static(b"hello")));
        assert!(matches!(&got[2], Incoming::Binary(b) if b.len() == 70_000));
        assert_eq!(r.buf.capacity(), 0, "an idle reader holds no buffer");
    }

    #[test]
    fn limits_and_protocol_errors() {
        let mut r = FrameReader::new(10);
        r.push(&client_frame(true, BINARY, &[0; 10]));
        assert!(matches!(r.next(), Ok(Some(Incoming::Binary(_)))));
        r.push(&client_frame(true, BINARY, &[0; 11]));
        assert_eq!(r.next(), Err(FrameError::TooBig));

        let mut r = FrameReader::new(10);
        r.push(&client_frame(false, BINARY, &[0; 6]));
        r.push(&client_frame(true, CONTINUATION, &[0; 6]));
        assert_eq!(r.next(), Err(FrameError::TooBig));

        let cases: Vec<Vec<u8>> = vec![
            vec![0xC2, 0x80, 0, 0, 0, 0],             // RSV1
            vec![0x82, 0x00],                         // unmasked
            client_frame(false, PING, b""),           // fragmented control
            client_frame(true, 0x3, b""),             // reserved opcode
            client_frame(true, CONTINUATION, b"x"),   // nothing to continue
            client_frame(true, CLOSE, &[0x03]),       // one-byte close
            client_frame(true, CLOSE, &[0x03, 0xed]), // 1005 is not sendable
        ];
        for wire in cases {
            let mut r = FrameReader::new(100);
            r.push(&wire);
            assert!(matches!(r.next(), Err(FrameError::Protocol(_))), "{wire:?}");
        }
        let mut r = FrameReader::new(100);
        r.push(&client_frame(true, CLOSE, &[0x03, 0xe8, 0xff]));
        assert_eq!(r.next(), Err(FrameError::InvalidUtf8));
        let mut r = FrameReader::new(100);
        r.push(&client_frame(true, CLOSE, &[0x03, 0xe8, b'o', b'k']));
        assert_eq!(
            r.next(),
            Ok(Some(Incoming::Close(Bytes::from_static(&[
                0x03, 0xe8, b'o', b'k'
            ]))))
        );
    }

    #[test]
    fn unmask_matches_byte_at_a_time() {
        let data: Vec<u8> = (0..67u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for phase in 0..4 {
            let mut mask = [0x12u8, 0x34, 0x56, 0x78];
            mask.rotate_left(phase);
            for len in 0..64 {
                // Starting `phase` bytes in, so the words are not aligned
                // the same way each time.
                let mut fast = data.clone();
                unmask(&mut fast[phase..phase + len], mask);
                let mut slow = data.clone();
                for (i, byte) in slow[phase..phase + len].iter_mut().enumerate() {
                    *byte ^= mask[i & 3];
                }
                assert_eq!(fast, slow, "phase {phase}, len {len}");
            }
        }
    }

    #[test]
    fn an_announced_payload_is_not_reserved_before_it_comes() {
        let mut r = FrameReader::new(16 << 20);
        let whole = client_frame(true, BINARY, &vec![9u8; 1 << 20]);
        // The header and mask, then the payload a piece at a time.
        r.push(&whole[..14]);
        assert_eq!(r.next(), Ok(None));
        assert!(
            r.buf.capacity() <= 14 + RESERVE_AHEAD,
            "{}",
            r.buf.capacity()
        );
        for piece in whole[14..].chunks(100_000) {
            assert_eq!(r.next(), Ok(None));
            r.push(piece);
        }
        assert!(
            matches!(r.next(), Ok(Some(Incoming::Binary(b))) if b.len() == 1 << 20 && b.iter().all(|&x| x == 9))
        );
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        write_frame(&mut out, OP_BINARY, b"abc");
        write_frame(&mut out, OP_BINARY, &[0; 300]);
        assert_eq!(&out[..5], &[0x82, 3, b'a', b'b', b'c']);
        assert_eq!(&out[5..9], &[0x82, 126, 1, 44]);
        assert_eq!(out.len(), 5 + 4 + 300);
    }
}
