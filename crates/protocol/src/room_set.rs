//! The rooms one connection is in.

use std::sync::Arc;

/// A small set of room names, kept in a vector: a connection is in a few
/// rooms, and a hash set's smallest table is several times the size of a
/// vector that grows from one (a cost every idle connection pays, twice:
/// in its session and in presence).
#[derive(Debug, Default, Clone)]
pub struct RoomSet(Vec<Arc<str>>);

impl RoomSet {
    pub fn contains(&self, room: &str) -> bool {
        self.0.iter().any(|r| **r == *room)
    }

    /// Adds `room`; false if it was there.
    pub fn insert(&mut self, room: Arc<str>) -> bool {
        if self.contains(&room) {
            return false;
        }
        if self.0.len() == self.0.capacity() {
            let more = self.0.len().max(1);
            self.0.reserve_exact(more);
        }
        self.0.push(room);
        true
    }

    /// Removes `room`; false if it was not there.
    pub fn remove(&mut self, room: &str) -> bool {
        match self.0.iter().position(|r| **r == *room) {
            Some(i) => {
                self.0.swap_remove(i);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0.iter()
    }

    /// Empties the set, returning what it held.
    pub fn take(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_rooms() {
        let mut s = RoomSet::default();
        assert!(s.insert("a".into()));
        assert!(!s.insert("a".into()));
        assert!(s.insert("b".into()));
        assert!(s.contains("b") && s.len() == 2);
        assert!(s.remove("a") && !s.remove("a"));
        assert_eq!(s.iter().map(|r| &**r).collect::<Vec<_>>(), ["b"]);
        assert_eq!(s.take().len(), 1);
        assert!(s.is_empty());
    }
}
