//! The sequencer's log: offsets, the retained history ring and `msg_id`s.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use switchboard_protocol::Bytes;

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
    last_offset: u64,
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
            last_offset: 0,
            entries: VecDeque::with_capacity(size.min(16)),
            msg_ids: HashMap::new(),
            size,
            ttl,
        }
    }

    pub(crate) fn last_offset(&self) -> u64 {
        self.last_offset
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
        if self.size > 0 {
            if self.entries.len() == self.size {
                self.pop_oldest();
            }
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
        }
        (offset, event)
    }

    /// Drops what is older than the history TTL.
    pub(crate) fn expire(&mut self, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > self.ttl)
        {
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

    /// Messages with an offset greater than `after`, if all are retained.
    pub(crate) fn since(&self, epoch: &str, after: u64) -> Recovery<'_> {
        if epoch != self.epoch || after > self.last_offset {
            return Recovery::Lost;
        }
        if after == self.last_offset {
            return Recovery::Replay(Vec::new());
        }
        match self.entries.front() {
            Some(first) if first.offset <= after + 1 => Recovery::Replay(
                self.entries
                    .iter()
                    .filter(|e| e.offset > after)
                    .map(|e| &e.event)
                    .collect(),
            ),
            _ => Recovery::Lost,
        }
    }

    /// Events after `after` (for members of a restarted room).
    pub(crate) fn after(&self, after: u64) -> impl Iterator<Item = &Bytes> {
        self.entries
            .iter()
            .filter(move |e| e.offset > after)
            .map(|e| &e.event)
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
    fn ttl_expires() {
        let t0 = Instant::now();
        let mut h = History::new(10, Duration::from_secs(5));
        h.append(t0, Some("x"), ev);
        h.append(t0 + Duration::from_secs(4), None, ev);
        h.expire(t0 + Duration::from_secs(6));
        assert_eq!(h.offset_of("x"), None);
        let epoch = h.epoch.clone();
        assert!(matches!(h.since(&epoch, 0), Recovery::Lost));
        assert!(matches!(h.since(&epoch, 1), Recovery::Replay(v) if v.len() == 1));
    }
}
