//! The sequencer's log: offsets, the retained history ring and `msg_id`s.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;
use switchboard_protocol::Bytes;

use crate::wire::Logged;

struct Entry {
    offset: u64,
    at: Instant,
    /// The encoded `msg` event, as delivered.
    event: Bytes,
    msg_id: Option<Box<str>>,
}

/// Offsets within one epoch, and the recent messages kept for recovery.
pub(crate) struct History {
    pub(crate) epoch: String,
    /// Which holding of the epoch this is: 0 when the epoch starts, one
    /// more at every take-over and hand-over. A copy keeps its home's. Of
    /// two holders of one epoch, the one with the lower term is stale.
    pub(crate) term: u64,
    last_offset: u64,
    /// The newest offset members may see: a home releases a message once
    /// its follower holds a copy. Unreleased entries are never dropped.
    released: u64,
    entries: VecDeque<Entry>,
    msg_ids: HashMap<Box<str>, u64>,
    size: usize,
    ttl: Duration,
}

/// What a `join` with `since` gets.
pub(crate) enum Recovery<'a> {
    /// Every message after `since` is retained: replay these.
    Replay(Vec<&'a Bytes>),
    /// Other epoch, or the history does not reach back far enough.
    Lost,
}

impl History {
    pub(crate) fn new(size: usize, ttl: Duration) -> Self {
        Self {
            epoch: format!("{:016x}", fastrand::u64(..)),
            term: 0,
            last_offset: 0,
            released: 0,
            entries: VecDeque::with_capacity(size.min(16)),
            msg_ids: HashMap::new(),
            size,
            ttl,
        }
    }

    /// The newest offset sequenced (released or not).
    pub(crate) fn last_offset(&self) -> u64 {
        self.last_offset
    }

    /// The newest offset members may see.
    pub(crate) fn released(&self) -> u64 {
        self.released
    }

    /// Releases everything up to `upto`; returns the newly released events.
    pub(crate) fn release(&mut self, upto: u64) -> Vec<(u64, Bytes)> {
        let upto = upto.min(self.last_offset);
        if upto <= self.released {
            return Vec::new();
        }
        let from = self.released;
        self.released = upto;
        let out = self
            .range(from, upto)
            .map(|e| (e.offset, e.event.clone()))
            .collect();
        self.trim();
        out
    }

    /// The retained entries with offsets in (`after`, `upto`]: the ring
    /// holds consecutive offsets, so this is an index range, not a scan.
    fn range(&self, after: u64, upto: u64) -> impl Iterator<Item = &Entry> {
        let first = self.entries.front().map_or(0, |e| e.offset);
        let len = self.entries.len();
        let start = ((after + 1).saturating_sub(first) as usize).min(len);
        let end = ((upto + 1).saturating_sub(first) as usize).clamp(start, len);
        self.entries.range(start..end)
    }

    /// Keeps at most `size` released entries (unreleased ones stay).
    fn trim(&mut self) {
        while self.entries.len() > self.size
            && self
                .entries
                .front()
                .is_some_and(|e| e.offset <= self.released)
        {
            self.pop_oldest();
        }
    }

    /// The offset a `msg_id` was published at, while it is remembered.
    pub(crate) fn offset_of(&self, msg_id: &str) -> Option<u64> {
        self.msg_ids.get(msg_id).copied()
    }

    /// Assigns the next offset; `encode` builds the event for it.
    pub(crate) fn append(
        &mut self,
        now: Instant,
        msg_id: Option<&str>,
        encode: impl FnOnce(u64) -> Bytes,
    ) -> (u64, Bytes) {
        self.last_offset += 1;
        let offset = self.last_offset;
        let event = encode(offset);
        let msg_id: Option<Box<str>> = msg_id.map(Into::into);
        if let Some(id) = &msg_id {
            self.msg_ids.insert(id.clone(), offset);
        }
        self.entries.push_back(Entry {
            offset,
            at: now,
            event: event.clone(),
            msg_id,
        });
        self.trim();
        (offset, event)
    }

    /// Drops what is older than the history TTL.
    pub(crate) fn expire(&mut self, now: Instant) {
        while self.entries.front().is_some_and(|e| {
            e.offset <= self.released && now.saturating_duration_since(e.at) > self.ttl
        }) {
            self.pop_oldest();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.entries.pop_front() {
            if let Some(id) = old.msg_id {
                if self.msg_ids.get(&id) == Some(&old.offset) {
                    self.msg_ids.remove(&id);
                }
            }
        }
    }

    /// Released messages with an offset greater than `after`, if all are
    /// retained.
    pub(crate) fn since(&self, epoch: &str, after: u64) -> Recovery<'_> {
        if epoch != self.epoch || after > self.released {
            return Recovery::Lost;
        }
        if after == self.released {
            return Recovery::Replay(Vec::new());
        }
        match self.entries.front() {
            Some(first) if first.offset <= after + 1 => {
                Recovery::Replay(self.after(after).collect())
            }
            _ => Recovery::Lost,
        }
    }

    /// The retained messages, as a snapshot carries them.
    pub(crate) fn to_wire(&self, now: Instant) -> Vec<Logged> {
        self.entries
            .iter()
            .map(|e| Logged {
                offset: e.offset,
                msg_id: e.msg_id.as_deref().map(str::to_owned),
                age_ms: now.saturating_duration_since(e.at).as_millis() as u64,
                event: ByteBuf::from(e.event.to_vec()),
            })
            .collect()
    }

    /// A history rebuilt from a snapshot: `epoch`, its newest offset and
    /// the messages retained (consecutive, ending at `last`). Refused, with
    /// the reason, if they are not.
    pub(crate) fn from_wire(
        size: usize,
        ttl: Duration,
        epoch: String,
        last: u64,
        entries: Vec<Logged>,
        now: Instant,
    ) -> Result<Self, String> {
        if epoch.is_empty() || epoch.len() > 64 {
            return Err("bad epoch".into());
        }
        let mut h = Self::new(size, ttl);
        h.epoch = epoch;
        if entries.len() as u64 > last {
            return Err("more entries than offsets".into());
        }
        h.last_offset = last - entries.len() as u64;
        h.released = h.last_offset;
        for e in entries {
            h.push(now, e)?;
        }
        Ok(h)
    }

    /// Appends a message sequenced elsewhere (a follower's copy); it must be
    /// the next offset.
    pub(crate) fn push(&mut self, now: Instant, e: Logged) -> Result<(), String> {
        if e.offset != self.last_offset + 1 {
            return Err(format!(
                "offset {} does not follow {}",
                e.offset, self.last_offset
            ));
        }
        let at = now
            .checked_sub(Duration::from_millis(e.age_ms))
            .unwrap_or(now);
        let event = Bytes::from(e.event.into_vec());
        self.append(at, e.msg_id.as_deref(), |_| event);
        // A copy is all released: whoever takes it over may show all of it.
        self.released = self.last_offset;
        self.trim();
        Ok(())
    }

    /// Released events after `after` (for members of a restarted room).
    pub(crate) fn after(&self, after: u64) -> impl Iterator<Item = &Bytes> {
        self.range(after, self.released).map(|e| &e.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(o: u64) -> Bytes {
        Bytes::from(o.to_string())
    }

    #[test]
    fn ring_keeps_size_and_forgets_msg_ids() {
        let now = Instant::now();
        let mut h = History::new(3, Duration::from_secs(60));
        h.append(now, Some("a"), ev);
        for _ in 0..3 {
            h.append(now, None, ev);
        }
        // Unreleased messages are all kept, and shown to nobody.
        assert_eq!((h.offset_of("a"), h.released()), (Some(1), 0));
        assert!(matches!(h.since(&h.epoch.clone(), 0), Recovery::Replay(v) if v.is_empty()));
        assert_eq!(h.release(4).len(), 4);
        assert_eq!(h.last_offset(), 4);
        assert_eq!(h.offset_of("a"), None);
        let epoch = h.epoch.clone();
        assert!(matches!(h.since(&epoch, 0), Recovery::Lost));
        match h.since(&epoch, 1) {
            Recovery::Replay(v) => assert_eq!(v, vec![&ev(2), &ev(3), &ev(4)]),
            Recovery::Lost => panic!(),
        }
        assert!(matches!(h.since(&epoch, 4), Recovery::Replay(v) if v.is_empty()));
        assert!(matches!(h.since(&epoch, 5), Recovery::Lost));
        assert!(matches!(h.since("other", 3), Recovery::Lost));
    }

    #[test]
    fn snapshots_round_trip_and_bad_ones_are_refused() {
        let now = Instant::now();
        let mut h = History::new(3, Duration::from_secs(60));
        for i in 0..5 {
            h.append(now, Some(&format!("m{i}")), ev);
        }
        h.release(5);
        let wire = h.to_wire(now);
        let mut copy = History::from_wire(
            3,
            Duration::from_secs(60),
            h.epoch.clone(),
            5,
            wire.clone(),
            now,
        )
        .unwrap();
        assert_eq!((copy.last_offset(), copy.offset_of("m4")), (5, Some(5)));
        assert!(matches!(copy.since(&h.epoch, 2), Recovery::Replay(v) if v.len() == 3));
        // Not consecutive, or not ending at `last`: refused.
        let mut gap = wire.clone();
        gap.remove(1);
        assert!(History::from_wire(3, Duration::from_secs(60), "e".into(), 5, gap, now).is_err());
        assert!(History::from_wire(3, Duration::from_secs(60), "e".into(), 1, wire, now).is_err());
        // A follower takes only the next offset.
        let next = |offset| Logged {
            offset,
            msg_id: None,
            age_ms: 0,
            event: ByteBuf::from(vec![1]),
        };
        assert!(copy.push(now, next(7)).is_err());
        copy.push(now, next(6)).unwrap();
        assert_eq!((copy.last_offset(), copy.released()), (6, 6));
    }

    #[test]
    fn ttl_expires() {
        let t0 = Instant::now();
        let mut h = History::new(10, Duration::from_secs(5));
        h.append(t0, Some("x"), ev);
        h.append(t0 + Duration::from_secs(4), None, ev);
        h.release(2);
        h.expire(t0 + Duration::from_secs(6));
        assert_eq!(h.offset_of("x"), None);
        let epoch = h.epoch.clone();
        assert!(matches!(h.since(&epoch, 0), Recovery::Lost));
        assert!(matches!(h.since(&epoch, 1), Recovery::Replay(v) if v.len() == 1));
    }
}
