//! Where a text stream (Server-Sent Events, long polling) is in each of its
//! rooms, and the events it carries, turned to JSON.
//!
//! A stream's position is written into every SSE `id` and every poll
//! `cursor`, so that a client resumes every room exactly by handing it back:
//! per room, in the order of the request's `rooms`, `<epoch>.<offset>` (or
//! nothing while the room's join is unanswered), joined by `~`.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::json::{event_to_json, JsonError};
use crate::value::split_value;
use crate::Since;

/// Longest epoch a position may name.
const MAX_EPOCH: usize = 32;

/// Why a position handed back by a client cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    #[error("names {given} rooms, the request {expected}")]
    RoomCount { given: usize, expected: usize },
    #[error("{0:?} is not <epoch>.<offset>")]
    Malformed(String),
}

/// A stream's position in each of its rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positions(Vec<Option<Since>>);

impl Positions {
    /// No position in any of `rooms` rooms.
    pub fn unknown(rooms: usize) -> Self {
        Self(vec![None; rooms])
    }

    /// Reads a position written by [`encode`](Self::encode) for `rooms` rooms.
    pub fn parse(text: &str, rooms: usize) -> Result<Self, PositionError> {
        let parts: Vec<&str> = text.split('~').collect();
        if parts.len() != rooms {
            return Err(PositionError::RoomCount {
                given: parts.len(),
                expected: rooms,
            });
        }
        let one = |part: &str| -> Result<Option<Since>, PositionError> {
            if part.is_empty() {
                return Ok(None);
            }
            let bad = || PositionError::Malformed(part.chars().take(80).collect());
            let (epoch, offset) = part.split_once('.').ok_or_else(bad)?;
            if epoch.is_empty()
                || epoch.len() > MAX_EPOCH
                || !epoch.bytes().all(|b| b.is_ascii_hexdigit())
                || offset.is_empty()
                || !offset.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            Ok(Some(Since {
                epoch: epoch.to_owned(),
                offset: offset.parse().map_err(|_| bad())?,
            }))
        };
        Ok(Self(parts.into_iter().map(one).collect::<Result<_, _>>()?))
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                s.push('~');
            }
            if let Some(p) = p {
                let _ = write!(s, "{}.{}", p.epoch, p.offset);
            }
        }
        s
    }

    /// The position in the `i`th room, if known.
    pub fn get(&self, i: usize) -> Option<&Since> {
        self.0.get(i).and_then(Option::as_ref)
    }

    fn set(&mut self, i: usize, epoch: &str, offset: u64) {
        if let Some(p) = self.0.get_mut(i) {
            *p = Some(Since {
                epoch: epoch.to_owned(),
                offset,
            });
        }
    }

    fn advance(&mut self, i: usize, offset: u64) {
        if let Some(Some(p)) = self.0.get_mut(i) {
            p.offset = offset;
        }
    }
}

/// One event of a text stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEvent {
    /// `hello`, `join`, `msg`, `reset`, `joined`, `left`, `dm`, `err`.
    pub kind: String,
    /// The event's fields, without `op`.
    pub fields: Map<String, Value>,
    /// The stream's position after the event, if the event moved it: the
    /// SSE `id`.
    pub id: Option<String>,
    /// A room could not be joined: the stream must end.
    pub fatal: bool,
}

impl TextEvent {
    pub fn new(kind: &str, fields: Map<String, Value>) -> Self {
        Self {
            kind: kind.to_owned(),
            fields,
            id: None,
            fatal: false,
        }
    }

    /// Appends the event in `text/event-stream` form, with `id` if it
    /// moved the position.
    pub fn write_sse(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(self.kind.as_bytes());
        if let Some(id) = &self.id {
            out.extend_from_slice(b"\nid: ");
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(b"\ndata: ");
        // Compact JSON has no line breaks: one `data:` line.
        let _ = serde_json::to_writer(&mut *out, &self.fields);
        out.extend_from_slice(b"\n\n");
    }

    /// The event as one JSON object with `op`, for long polling.
    pub fn to_json(&self) -> Value {
        let mut fields = self.fields.clone();
        fields.insert("op".into(), Value::String(self.kind.clone()));
        Value::Object(fields)
    }
}

/// Follows a stream's events: turns each to a [`TextEvent`] and keeps the
/// position after it.
#[derive(Debug, Clone)]
pub struct Tracker {
    rooms: Vec<String>,
    positions: Positions,
    /// Rooms whose join was answered (`ok` or `err`).
    answered: Vec<bool>,
}

impl Tracker {
    /// A stream in `rooms`, resuming from `positions` (one per room).
    pub fn new(rooms: Vec<String>, positions: Positions) -> Self {
        debug_assert_eq!(rooms.len(), positions.0.len());
        let answered = vec![false; rooms.len()];
        Self {
            rooms,
            positions,
            answered,
        }
    }

    /// Every room's join has been answered.
    pub fn all_answered(&self) -> bool {
        self.answered.iter().all(|a| *a)
    }

    fn mark_answered(&mut self, i: usize) {
        if let Some(a) = self.answered.get_mut(i) {
            *a = true;
        }
    }

    pub fn positions(&self) -> &Positions {
        &self.positions
    }

    fn room(&self, fields: &Map<String, Value>) -> Option<usize> {
        let name = fields.get("room")?.as_str()?;
        self.rooms.iter().position(|r| r == name)
    }

    /// The text form of what the stream's member received (one or more
    /// MessagePack maps: a join's answer comes with its replay), each event
    /// with the position after it. What a text stream does not show (the
    /// `ok`s of commands it never sent) is left out.
    pub fn translate(&mut self, event: &[u8]) -> Result<Vec<TextEvent>, JsonError> {
        let mut texts = Vec::new();
        let mut rest = event;
        while !rest.is_empty() {
            let (one, after) = split_value(rest).map_err(|_| JsonError::missing("a whole map"))?;
            rest = after;
            if let Some((mut text, positioned)) = self.translate_one(one)? {
                if positioned {
                    text.id = Some(self.positions.encode());
                }
                texts.push(text);
            }
        }
        Ok(texts)
    }

    /// One map; `true` with it if it moved the position.
    fn translate_one(&mut self, event: &[u8]) -> Result<Option<(TextEvent, bool)>, JsonError> {
        let mut fields = event_to_json(event)?;
        let op = match fields.remove("op") {
            Some(Value::String(op)) => op,
            _ => return Err(JsonError::missing("op")),
        };
        let offset = fields.get("offset").and_then(Value::as_u64);
        let epoch = fields
            .get("epoch")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut text = TextEvent::new(&op, fields);
        let mut positioned = false;
        match op.as_str() {
            // The answer to one of the stream's joins.
            "ok" => {
                let (Some(i), Some(epoch), Some(offset)) = (self.room(&text.fields), epoch, offset)
                else {
                    return Ok(None);
                };
                text.fields.remove("id");
                text.kind = "join".into();
                // Resumed: the missed messages follow and move it on.
                let resumed = text.fields.get("recovered") == Some(&Value::Bool(true))
                    && self.positions.get(i).is_some_and(|p| p.epoch == epoch);
                if !resumed {
                    self.positions.set(i, &epoch, offset);
                }
                self.mark_answered(i);
                positioned = true;
            }
            "msg" => {
                if let (Some(i), Some(offset)) = (self.room(&text.fields), offset) {
                    self.positions.advance(i, offset);
                    positioned = true;
                }
            }
            "reset" => {
                if let (Some(i), Some(epoch), Some(offset)) =
                    (self.room(&text.fields), epoch, offset)
                {
                    self.positions.set(i, &epoch, offset);
                    positioned = true;
                }
            }
            "err" => {
                // The stream's joins are numbered from 1 in the order of its
                // rooms: name the room that failed.
                let id = text.fields.remove("id").and_then(|v| v.as_u64());
                let i = id.and_then(|id| usize::try_from(id).ok()?.checked_sub(1));
                if let Some(room) = i.and_then(|i| self.rooms.get(i)) {
                    text.fields
                        .insert("room".into(), Value::String(room.clone()));
                }
                if let Some(i) = i {
                    self.mark_answered(i);
                }
                text.fatal = true;
            }
            "pong" => return Ok(None),
            _ => {}
        }
        Ok(Some((text, positioned)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event;

    fn rooms() -> Vec<String> {
        vec!["a".into(), "b:c".into()]
    }

    #[test]
    fn positions_round_trip_and_refuse_what_they_did_not_write() {
        let p = Positions::parse("ab12.41~", 2).unwrap();
        assert_eq!(p.get(0).unwrap().offset, 41);
        assert!(p.get(1).is_none());
        assert_eq!(p.encode(), "ab12.41~");
        assert_eq!(Positions::parse("", 1).unwrap(), Positions::unknown(1));
        for (bad, n) in [
            ("ab12.41", 2),
            ("ab12.41~~", 2),
            ("zz.1~", 2),
            ("ab12~", 2),
            ("ab12.~", 2),
            ("ab12.-1~", 2),
            (".5~", 2),
            ("ab.99999999999999999999999~", 2),
            ("ab.1\n~", 2),
        ] {
            assert!(Positions::parse(bad, n).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_stream_moves_with_its_events() {
        let mut t = Tracker::new(rooms(), Positions::unknown(2));
        let j = t
            .translate(&event::ok_join(2, "b:c", "e1", 7, None))
            .unwrap()
            .remove(0);
        assert_eq!(j.kind, "join");
        assert_eq!(j.id.as_deref(), Some("~e1.7"));
        assert!(!j.fields.contains_key("id"));
        assert_eq!(t.positions().encode(), "~e1.7");
        assert!(!t.all_answered());
        t.translate(&event::ok_join(1, "a", "e0", 0, None)).unwrap();
        assert!(t.all_answered());
        let m = t
            .translate(&event::msg("b:c", 8, "u", &[0x01]))
            .unwrap()
            .remove(0);
        assert_eq!(m.id.as_deref(), Some("e0.0~e1.8"));
        assert_eq!(t.positions().encode(), "e0.0~e1.8");
        let r = t.translate(&event::reset("a", "e2", 3)).unwrap().remove(0);
        assert_eq!(r.kind, "reset");
        assert_eq!(t.positions().encode(), "e2.3~e1.8");
        let joined = t.translate(&event::joined("a", "u")).unwrap().remove(0);
        assert_eq!(joined.id, None);
        assert!(t.translate(&event::pong(1)).unwrap().is_empty());
        assert!(t.translate(&event::ok(3)).unwrap().is_empty());
    }

    #[test]
    fn a_resumed_join_keeps_the_position_until_the_replay() {
        let mut t = Tracker::new(rooms(), Positions::parse("e1.5~", 2).unwrap());
        let j = t
            .translate(&event::ok_join(1, "a", "e1", 9, Some(true)))
            .unwrap()
            .remove(0);
        assert_eq!(j.fields["recovered"], Value::Bool(true));
        assert_eq!(t.positions().encode(), "e1.5~");
        t.translate(&event::msg("a", 6, "u", &[0x01])).unwrap();
        assert_eq!(t.positions().encode(), "e1.6~");
        // Not recovered: the position restarts where the room is now.
        t.translate(&event::ok_join(1, "a", "e9", 2, Some(false)))
            .unwrap();
        assert_eq!(t.positions().encode(), "e9.2~");
    }

    #[test]
    fn a_join_answered_with_its_replay_in_one_event_moves_through_each() {
        let mut t = Tracker::new(rooms(), Positions::parse("e1.5~", 2).unwrap());
        let mut joined = event::ok_join(1, "a", "e1", 7, Some(true)).to_vec();
        joined.extend_from_slice(&event::msg("a", 6, "u", &[0x01]));
        joined.extend_from_slice(&event::msg("a", 7, "u", &[0x02]));
        let texts = t.translate(&joined).unwrap();
        let ids: Vec<_> = texts.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, [Some("e1.5~"), Some("e1.6~"), Some("e1.7~")]);
        joined.push(0x81);
        assert!(t.translate(&joined).is_err(), "a truncated map is an error");
    }

    #[test]
    fn a_failed_join_names_its_room_and_ends_the_stream() {
        let mut t = Tracker::new(rooms(), Positions::unknown(2));
        let e = t
            .translate(&event::err(2, crate::ErrorCode::Unavailable, "room: x"))
            .unwrap()
            .remove(0);
        assert!(e.fatal);
        assert_eq!(e.fields["room"], Value::String("b:c".into()));
        assert_eq!(e.fields["code"], Value::from(503));
    }

    #[test]
    fn sse_form() {
        let mut t = Tracker::new(vec!["a".into()], Positions::unknown(1));
        t.translate(&event::ok_join(1, "a", "e1", 0, None)).unwrap();
        let m = t
            .translate(&event::msg("a", 1, "u", &[0xa2, b'h', b'i']))
            .unwrap()
            .remove(0);
        let mut out = Vec::new();
        m.write_sse(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: msg\nid: e1.1\ndata: {\"data\":\"hi\",\"from\":\"u\",\"offset\":1,\"room\":\"a\"}\n\n"
        );
        assert_eq!(m.to_json()["op"], Value::String("msg".into()));
    }
}
