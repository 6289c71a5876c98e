//! Client commands and their decoder.

use bytes::Bytes;

use crate::value::{value_len, ValueError};
use crate::{validate_room, validate_user, ErrorCode, MAX_MSG_ID_BYTES};

/// One decoded client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The client's correlation id; 0 means "no reply wanted" (errors are
    /// still reported, with id 0).
    pub id: u64,
    pub kind: CommandKind,
}

/// Where a `join` wants to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandKind {
    Join {
        room: String,
        since: Option<Since>,
        /// `false`: this connection is not sent the room's `joined` and
        /// `left` (it still counts as present). For large rooms, where
        /// every join would otherwise reach every member.
        presence: bool,
    },
    Leave {
        room: String,
    },
    Pub {
        room: String,
        /// The exact MessagePack bytes of the client's `data` value.
        data: Bytes,
        msg_id: Option<String>,
    },
    Send {
        to: String,
        /// The exact MessagePack bytes of the client's `data` value.
        data: Bytes,
    },
    Presence {
        room: String,
    },
    Ping,
}

impl CommandKind {
    /// The `op` string of this command.
    pub fn op(&self) -> &'static str {
        match self {
            CommandKind::Join { .. } => "join",
            CommandKind::Leave { .. } => "leave",
            CommandKind::Pub { .. } => "pub",
            CommandKind::Send { .. } => "send",
            CommandKind::Presence { .. } => "presence",
            CommandKind::Ping => "ping",
        }
    }
}

/// A command that could not be accepted; it becomes an `err` event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {reason}", code.code())]
pub struct CommandError {
    /// The command's `id` if it could be read, else 0.
    pub id: u64,
    pub code: ErrorCode,
    /// One line for the client; names the offending field.
    pub reason: String,
}

impl CommandError {
    pub fn new(id: u64, code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            id,
            code,
            reason: reason.into(),
        }
    }

    fn field(id: u64, field: &str, problem: impl std::fmt::Display) -> Self {
        Self::new(id, ErrorCode::BadRequest, format!("{field}: {problem}"))
    }
}

/// Decodes the commands of one binary WebSocket message.
///
/// Yields one item per MessagePack value in the message. A value that is
/// well-formed MessagePack but not a valid command yields an error and
/// decoding goes on with the next value; bytes that are not well-formed
/// MessagePack yield one error (id 0) and end the message, since the next
/// value's start cannot be found.
pub fn decode_commands(message: &Bytes) -> Commands<'_> {
    Commands {
        message,
        pos: 0,
        failed: false,
    }
}

/// Iterator returned by [`decode_commands`].
#[derive(Debug)]
pub struct Commands<'a> {
    message: &'a Bytes,
    pos: usize,
    failed: bool,
}

impl Iterator for Commands<'_> {
    type Item = Result<Command, CommandError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let rest = self.message.get(self.pos..).filter(|r| !r.is_empty())?;
        let len = match value_len(rest, 0) {
            Ok(len) => len,
            Err(e) => {
                self.failed = true;
                let problem = match e {
                    ValueError::TooDeep => e.to_string(),
                    _ => format!("not valid MessagePack ({e})"),
                };
                return Some(Err(CommandError::field(0, "message", problem)));
            }
        };
        let start = self.pos;
        self.pos += len;
        Some(parse_command(self.message, start, start + len))
    }
}

/// Fields of a command map as read, before checking which the op needs.
#[derive(Default)]
struct Fields<'a> {
    op: Option<&'a str>,
    room: Option<&'a str>,
    to: Option<&'a str>,
    msg_id: Option<&'a str>,
    since: Option<Since>,
    presence: Option<bool>,
    data: Option<(usize, usize)>,
}

fn parse_command(message: &Bytes, start: usize, end: usize) -> Result<Command, CommandError> {
    // `end` is where `value_len` found this value to end, inside `message`.
    #[allow(clippy::indexing_slicing)]
    let buf = &message[..end];
    let mut r = Reader { buf, pos: start };
    let entries = r
        .map_len()
        .map_err(|_| CommandError::field(0, "command", "must be a map"))?;
    // The id is found first so that every later error can carry it.
    let id = find_id(&mut Reader { buf, pos: r.pos }, entries)?;
    let mut f = Fields::default();
    for _ in 0..entries {
        let key = r
            .str()
            .map_err(|_| CommandError::field(id, "command", "keys must be strings"))?;
        match key {
            "op" => f.op = Some(r.str().map_err(|e| CommandError::field(id, "op", e))?),
            "room" => f.room = Some(r.str().map_err(|e| CommandError::field(id, "room", e))?),
            "to" => f.to = Some(r.str().map_err(|e| CommandError::field(id, "to", e))?),
            "msg_id" => f.msg_id = Some(r.str().map_err(|e| CommandError::field(id, "msg_id", e))?),
            "since" => f.since = Some(r.since().map_err(|e| CommandError::field(id, "since", e))?),
            "presence" => {
                f.presence = Some(
                    r.bool()
                        .map_err(|e| CommandError::field(id, "presence", e))?,
                )
            }
            "data" => {
                let at = r.pos;
                r.skip(1).map_err(|e| CommandError::field(id, "data", e))?;
                f.data = Some((at, r.pos));
            }
            _ => r.skip(1).map_err(|e| CommandError::field(id, key, e))?,
        }
    }
    let op =
        f.op.ok_or_else(|| CommandError::field(id, "op", "missing"))?;
    let room = |f: &Fields| -> Result<String, CommandError> {
        let room = f
            .room
            .ok_or_else(|| CommandError::field(id, "room", "missing"))?;
        validate_room(room).map_err(|e| CommandError::field(id, "room", e))?;
        Ok(room.to_owned())
    };
    let data = |f: &Fields| -> Result<Bytes, CommandError> {
        let (a, b) = f
            .data
            .ok_or_else(|| CommandError::field(id, "data", "missing"))?;
        Ok(message.slice(a..b))
    };
    let kind = match op {
        "join" => CommandKind::Join {
            room: room(&f)?,
            since: f.since.take(),
            presence: f.presence.unwrap_or(true),
        },
        "leave" => CommandKind::Leave { room: room(&f)? },
        "pub" => {
            let msg_id = match f.msg_id {
                Some(m) if m.is_empty() || m.len() > MAX_MSG_ID_BYTES => {
                    return Err(CommandError::field(
                        id,
                        "msg_id",
                        format!("must be 1 to {MAX_MSG_ID_BYTES} bytes"),
                    ))
                }
                m => m.map(str::to_owned),
            };
            CommandKind::Pub {
                room: room(&f)?,
                data: data(&f)?,
                msg_id,
            }
        }
        "send" => {
            let to =
                f.to.ok_or_else(|| CommandError::field(id, "to", "missing"))?;
            validate_user(to).map_err(|e| CommandError::field(id, "to", e))?;
            CommandKind::Send {
                to: to.to_owned(),
                data: data(&f)?,
            }
        }
        "presence" => CommandKind::Presence { room: room(&f)? },
        "ping" => CommandKind::Ping,
        other => {
            return Err(CommandError::field(
                id,
                "op",
                format!("unknown op {:?}", truncate(other, 32)),
            ))
        }
    };
    Ok(Command { id, kind })
}

/// Scans a map's entries for `id` only.
fn find_id(r: &mut Reader<'_>, entries: u32) -> Result<u64, CommandError> {
    for _ in 0..entries {
        let key = r
            .str()
            .map_err(|_| CommandError::field(0, "command", "keys must be strings"))?;
        if key == "id" {
            return r.uint().map_err(|e| CommandError::field(0, "id", e));
        }
        r.skip(1).map_err(|e| CommandError::field(0, key, e))?;
    }
    Ok(0)
}

/// The longest prefix of `s` of at most `max` bytes that is whole characters.
fn truncate(s: &str, max: usize) -> &str {
    // `get` refuses an end inside a character; `..0` always succeeds.
    (0..=s.len().min(max))
        .rev()
        .find_map(|end| s.get(..end))
        .unwrap_or_default()
}

/// Reads typed values from a buffer already known to hold well-formed
/// MessagePack.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

#[derive(Debug, thiserror::Error)]
enum FieldError {
    #[error("must be a string")]
    NotStr,
    #[error("must be valid UTF-8")]
    Utf8,
    #[error("must be an unsigned integer")]
    NotUint,
    #[error("must be true or false")]
    NotBool,
    #[error("must be a map with \"epoch\" (string) and \"offset\" (unsigned integer)")]
    NotSince,
    #[error("{0}")]
    Value(#[from] ValueError),
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Result<u8, FieldError> {
        self.buf
            .get(self.pos)
            .copied()
            .ok_or(FieldError::Value(ValueError::Truncated))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FieldError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(FieldError::Value(ValueError::Truncated))?;
        self.pos += n;
        Ok(bytes)
    }

    fn be(&mut self, n: usize) -> Result<u64, FieldError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn skip(&mut self, depth: usize) -> Result<(), FieldError> {
        let rest = self
            .buf
            .get(self.pos..)
            .ok_or(FieldError::Value(ValueError::Truncated))?;
        let n = value_len(rest, depth)?;
        self.pos += n;
        Ok(())
    }

    fn map_len(&mut self) -> Result<u32, FieldError> {
        let m = self.peek()?;
        let n = match m {
            0x80..=0x8f => {
                self.pos += 1;
                u64::from(m & 0x0f)
            }
            0xde => {
                self.pos += 1;
                self.be(2)?
            }
            0xdf => {
                self.pos += 1;
                self.be(4)?
            }
            _ => return Err(FieldError::NotSince),
        };
        Ok(n as u32)
    }

    /// Reads a string; on a type mismatch the value is skipped, so the
    /// caller's error does not leave the reader inside it.
    fn str(&mut self) -> Result<&'a str, FieldError> {
        let m = self.peek()?;
        let len = match m {
            0xa0..=0xbf => {
                self.pos += 1;
                usize::from(m & 0x1f)
            }
            0xd9 => {
                self.pos += 1;
                self.be(1)? as usize
            }
            0xda => {
                self.pos += 1;
                self.be(2)? as usize
            }
            0xdb => {
                self.pos += 1;
                self.be(4)? as usize
            }
            _ => {
                self.skip(1)?;
                return Err(FieldError::NotStr);
            }
        };
        std::str::from_utf8(self.take(len)?).map_err(|_| FieldError::Utf8)
    }

    fn bool(&mut self) -> Result<bool, FieldError> {
        match self.peek()? {
            b @ (0xc2 | 0xc3) => {
                self.pos += 1;
                Ok(b == 0xc3)
            }
            _ => {
                self.skip(1)?;
                Err(FieldError::NotBool)
            }
        }
    }

    /// Reads a non-negative integer, in any of MessagePack's integer encodings.
    fn uint(&mut self) -> Result<u64, FieldError> {
        let m = self.peek()?;
        self.pos += 1;
        let v: i128 = match m {
            0x00..=0x7f => i128::from(m),
            0xcc => self.be(1)?.into(),
            0xcd => self.be(2)?.into(),
            0xce => self.be(4)?.into(),
            0xcf => self.be(8)?.into(),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            _ => {
                self.pos -= 1;
                self.skip(1)?;
                return Err(FieldError::NotUint);
            }
        };
        u64::try_from(v).map_err(|_| FieldError::NotUint)
    }

    fn since(&mut self) -> Result<Since, FieldError> {
        let start = self.pos;
        let entries = match self.map_len() {
            Ok(n) => n,
            Err(_) => {
                self.pos = start;
                self.skip(1)?;
                return Err(FieldError::NotSince);
            }
        };
        let (mut epoch, mut offset) = (None, None);
        for _ in 0..entries {
            match self.str() {
                Ok("epoch") => epoch = Some(self.str()?.to_owned()),
                Ok("offset") => offset = Some(self.uint()?),
                Ok(_) => self.skip(2)?,
                Err(e) => return Err(e),
            }
        }
        match (epoch, offset) {
            (Some(epoch), Some(offset)) => Ok(Since { epoch, offset }),
            _ => Err(FieldError::NotSince),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn bytes<T: Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    fn decode(buf: Vec<u8>) -> Vec<Result<Command, CommandError>> {
        decode_commands(&Bytes::from(buf)).collect()
    }

    #[derive(Serialize)]
    struct Pub<'a> {
        op: &'a str,
        id: u64,
        room: &'a str,
        data: serde_json::Value,
    }

    #[test]
    fn pub_keeps_data_bytes() {
        let mut buf = bytes(&Pub {
            op: "pub",
            id: 7,
            room: "r1",
            data: serde_json::json!({"x": [1, 2.5, "s"]}),
        });
        let data_bytes = bytes(&serde_json::json!({"x": [1, 2.5, "s"]}));
        buf.extend_from_slice(&bytes(&std::collections::BTreeMap::from([("op", "ping")])));
        let cmds = decode(buf);
        assert_eq!(cmds.len(), 2);
        match &cmds[0] {
            Ok(Command {
                id: 7,
                kind:
                    CommandKind::Pub {
                        room,
                        data,
                        msg_id: None,
                    },
            }) => {
                assert_eq!(room, "r1");
                assert_eq!(&data[..], &data_bytes[..]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            cmds[1],
            Ok(Command {
                id: 0,
                kind: CommandKind::Ping
            })
        );
    }

    #[test]
    fn errors_name_the_field_and_keep_the_id() {
        let cmds = decode(bytes(
            &serde_json::json!({"op": "join", "id": 3, "room": "bad room"}),
        ));
        let e = cmds[0].as_ref().unwrap_err();
        assert_eq!((e.id, e.code), (3, ErrorCode::BadRequest));
        assert!(e.reason.starts_with("room:"), "{}", e.reason);

        let cmds = decode(bytes(
            &serde_json::json!({"room": 5, "op": "join", "id": 4}),
        ));
        let e = cmds[0].as_ref().unwrap_err();
        assert_eq!(e.id, 4);
        assert_eq!(e.reason, "room: must be a string");

        let cmds = decode(bytes(&serde_json::json!({"op": "fly", "id": 1})));
        assert!(cmds[0]
            .as_ref()
            .unwrap_err()
            .reason
            .starts_with("op: unknown op"));

        let cmds = decode(bytes(&serde_json::json!({"op": "pub", "room": "a"})));
        assert_eq!(cmds[0].as_ref().unwrap_err().reason, "data: missing");
    }

    #[test]
    fn bad_value_does_not_stop_the_next_command() {
        let mut buf = bytes(&serde_json::json!([1, 2]));
        buf.extend(bytes(&serde_json::json!({"op": "ping", "id": 9})));
        let cmds = decode(buf);
        assert!(cmds[0].is_err());
        assert_eq!(
            cmds[1],
            Ok(Command {
                id: 9,
                kind: CommandKind::Ping
            })
        );
    }

    #[test]
    fn malformed_message_ends_decoding_with_one_error() {
        let mut buf = bytes(&serde_json::json!({"op": "ping", "id": 1}));
        buf.extend([0x82, 0xa2, b'o']);
        let cmds = decode(buf);
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[1].as_ref().unwrap_err().id, 0);
    }

    #[test]
    fn since_and_unknown_keys() {
        let cmds = decode(bytes(&serde_json::json!({
            "op": "join", "id": 2, "room": "r", "future": {"a": [1]},
            "since": {"epoch": "e1", "offset": 12, "extra": true}
        })));
        assert_eq!(
            cmds[0],
            Ok(Command {
                id: 2,
                kind: CommandKind::Join {
                    room: "r".into(),
                    since: Some(Since {
                        epoch: "e1".into(),
                        offset: 12
                    }),
                    presence: true,
                }
            })
        );
        let cmds = decode(bytes(&serde_json::json!({
            "op": "join", "id": 3, "room": "r", "presence": false
        })));
        assert!(matches!(
            &cmds[0],
            Ok(Command {
                kind: CommandKind::Join {
                    presence: false,
                    ..
                },
                ..
            })
        ));
        let cmds = decode(bytes(&serde_json::json!({
            "op": "join", "id": 4, "room": "r", "presence": 0
        })));
        let e = cmds[0].as_ref().expect_err("not a bool");
        assert_eq!(
            (e.id, e.reason.as_str()),
            (4, "presence: must be true or false")
        );
    }

    #[test]
    fn msg_id_length() {
        let long = "x".repeat(65);
        let cmds = decode(bytes(
            &serde_json::json!({"op": "pub", "room": "r", "data": 1, "msg_id": long}),
        ));
        assert!(cmds[0].as_ref().unwrap_err().reason.starts_with("msg_id:"));
    }
}
