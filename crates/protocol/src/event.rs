//! Server events, encoded straight to MessagePack bytes.
//!
//! Each function returns one encoded map. Encoding happens once per event:
//! a room message is encoded once and the same [`Bytes`] is queued for every
//! member. `data` is copied in as the bytes the publisher sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{ErrorCode, VERSION};

/// Writes one MessagePack map: the fields are written by `f`.
struct MapWriter {
    buf: BytesMut,
}

impl MapWriter {
    fn new(entries: u8, capacity: usize) -> Self {
        debug_assert!(entries < 16);
        let mut buf = BytesMut::with_capacity(capacity);
        buf.put_u8(0x80 | entries);
        Self { buf }
    }

    fn key(&mut self, k: &str) -> &mut Self {
        self.str(k)
    }

    fn str(&mut self, s: &str) -> &mut Self {
        let n = s.len();
        if n < 32 {
            self.buf.put_u8(0xa0 | n as u8);
        } else if n <= 0xff {
            self.buf.put_u8(0xd9);
            self.buf.put_u8(n as u8);
        } else if n <= 0xffff {
            self.buf.put_u8(0xda);
            self.buf.put_u16(n as u16);
        } else {
            self.buf.put_u8(0xdb);
            self.buf.put_u32(n as u32);
        }
        self.buf.put_slice(s.as_bytes());
        self
    }

    fn uint(&mut self, v: u64) -> &mut Self {
        if v < 128 {
            self.buf.put_u8(v as u8);
        } else if v <= 0xff {
            self.buf.put_u8(0xcc);
            self.buf.put_u8(v as u8);
        } else if v <= 0xffff {
            self.buf.put_u8(0xcd);
            self.buf.put_u16(v as u16);
        } else if v <= 0xffff_ffff {
            self.buf.put_u8(0xce);
            self.buf.put_u32(v as u32);
        } else {
            self.buf.put_u8(0xcf);
            self.buf.put_u64(v);
        }
        self
    }

    fn bool(&mut self, v: bool) -> &mut Self {
        self.buf.put_u8(if v { 0xc3 } else { 0xc2 });
        self
    }

    fn array_len(&mut self, n: usize) -> &mut Self {
        if n < 16 {
            self.buf.put_u8(0x90 | n as u8);
        } else if n <= 0xffff {
            self.buf.put_u8(0xdc);
            self.buf.put_u16(n as u16);
        } else {
            self.buf.put_u8(0xdd);
            self.buf.put_u32(n as u32);
        }
        self
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.put_slice(bytes);
        self
    }

    fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.buf).freeze()
    }
}

/// The reconnection policy a node asks its clients to follow (`hello`'s
/// `reconnect`): after a failed attempt n (from 0), wait a random delay from
/// 0 to min(`max_ms`, `base_ms` * 2^n) ("full" jitter); after a drain's
/// close, a random delay up to `after_drain_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub base_ms: u64,
    pub max_ms: u64,
    pub after_drain_ms: u64,
}

/// `hello`: the first frame after the upgrade.
pub fn hello(
    conn: &str,
    node: &str,
    user: &str,
    heartbeat_ms: u64,
    max_frame: u64,
    reconnect: &ReconnectPolicy,
) -> Bytes {
    MapWriter::new(8, 128 + conn.len() + node.len() + user.len())
        .key("op")
        .str("hello")
        .key("v")
        .uint(VERSION)
        .key("conn")
        .str(conn)
        .key("node")
        .str(node)
        .key("user")
        .str(user)
        .key("heartbeat_ms")
        .uint(heartbeat_ms)
        .key("max_frame")
        .uint(max_frame)
        .key("reconnect")
        .raw(&[0x84])
        .key("base_ms")
        .uint(reconnect.base_ms)
        .key("max_ms")
        .uint(reconnect.max_ms)
        .key("jitter")
        .str("full")
        .key("after_drain_ms")
        .uint(reconnect.after_drain_ms)
        .finish()
}

/// `ok` with nothing more (`leave`).
pub fn ok(id: u64) -> Bytes {
    MapWriter::new(2, 16)
        .key("op")
        .str("ok")
        .key("id")
        .uint(id)
        .finish()
}

/// `ok` to a `join`. `recovered` is present only when the join had `since`.
pub fn ok_join(id: u64, room: &str, epoch: &str, offset: u64, recovered: Option<bool>) -> Bytes {
    let mut w = MapWriter::new(
        5 + u8::from(recovered.is_some()),
        64 + room.len() + epoch.len(),
    );
    w.key("op")
        .str("ok")
        .key("id")
        .uint(id)
        .key("room")
        .str(room)
        .key("epoch")
        .str(epoch)
        .key("offset")
        .uint(offset);
    if let Some(r) = recovered {
        w.key("recovered").bool(r);
    }
    w.finish()
}

/// `ok` to a `pub`: the offset the sequencer assigned.
/// `ok` to a `pub`: the offset it was given in the room's `epoch`.
pub fn ok_pub(id: u64, epoch: &str, offset: u64) -> Bytes {
    MapWriter::new(4, 48 + epoch.len())
        .key("op")
        .str("ok")
        .key("id")
        .uint(id)
        .key("epoch")
        .str(epoch)
        .key("offset")
        .uint(offset)
        .finish()
}

/// `ok` to a `send`: how many of the user's connections were reached.
pub fn ok_send(id: u64, delivered: u64) -> Bytes {
    MapWriter::new(3, 32)
        .key("op")
        .str("ok")
        .key("id")
        .uint(id)
        .key("delivered")
        .uint(delivered)
        .finish()
}

/// `ok` to a `presence`: the sorted, distinct users present.
pub fn ok_presence<S: AsRef<str>>(id: u64, room: &str, users: &[S]) -> Bytes {
    let cap = 48 + room.len() + users.iter().map(|u| u.as_ref().len() + 3).sum::<usize>();
    let mut w = MapWriter::new(4, cap);
    w.key("op")
        .str("ok")
        .key("id")
        .uint(id)
        .key("room")
        .str(room)
        .key("users")
        .array_len(users.len());
    for u in users {
        w.str(u.as_ref());
    }
    w.finish()
}

/// `pong`, the reply to a `ping` command.
pub fn pong(id: u64) -> Bytes {
    MapWriter::new(2, 16)
        .key("op")
        .str("pong")
        .key("id")
        .uint(id)
        .finish()
}

/// `err`: a command failed.
pub fn err(id: u64, code: ErrorCode, reason: &str) -> Bytes {
    MapWriter::new(4, 32 + reason.len())
        .key("op")
        .str("err")
        .key("id")
        .uint(id)
        .key("code")
        .uint(u64::from(code.code()))
        .key("reason")
        .str(reason)
        .finish()
}

/// `msg`: a room message. `data` is the publisher's MessagePack bytes.
pub fn msg(room: &str, offset: u64, from: &str, data: &[u8]) -> Bytes {
    MapWriter::new(5, 48 + room.len() + from.len() + data.len())
        .key("op")
        .str("msg")
        .key("room")
        .str(room)
        .key("offset")
        .uint(offset)
        .key("from")
        .str(from)
        .key("data")
        .raw(data)
        .finish()
}

/// `reset`: the room's sequence restarted (its home changed and could not
/// continue the epoch). The connection is still a member; messages
/// continue after `offset` in `epoch`, and what came before is not
/// recoverable with `since`.
pub fn reset(room: &str, epoch: &str, offset: u64) -> Bytes {
    MapWriter::new(4, 48 + room.len() + epoch.len())
        .key("op")
        .str("reset")
        .key("room")
        .str(room)
        .key("epoch")
        .str(epoch)
        .key("offset")
        .uint(offset)
        .finish()
}

/// `dm`: a direct message. `data` is the sender's MessagePack bytes.
pub fn dm(from: &str, data: &[u8]) -> Bytes {
    MapWriter::new(3, 24 + from.len() + data.len())
        .key("op")
        .str("dm")
        .key("from")
        .str(from)
        .key("data")
        .raw(data)
        .finish()
}

/// `joined`: a user's first connection in the room, cluster-wide.
pub fn joined(room: &str, user: &str) -> Bytes {
    presence_change("joined", room, user)
}

/// `left`: a user's last connection left the room, cluster-wide.
pub fn left(room: &str, user: &str) -> Bytes {
    presence_change("left", room, user)
}

fn presence_change(op: &str, room: &str, user: &str) -> Bytes {
    MapWriter::new(3, 32 + room.len() + user.len())
        .key("op")
        .str(op)
        .key("room")
        .str(room)
        .key("user")
        .str(user)
        .finish()
}
