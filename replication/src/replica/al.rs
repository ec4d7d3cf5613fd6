//! The set of hot activity-log extents (4 MiB each), least recently used first, with
//! a count of in-flight writes per extent. Persisting the set is the caller's job
//! (the replica emits an action); this type only decides what changes.

use std::collections::{HashMap, VecDeque};

/// Hot extents.
#[derive(Debug)]
pub(crate) struct HotExtents {
    /// LRU order, least recent first.
    order: VecDeque<u32>,
    /// In-flight writes per hot extent.
    refs: HashMap<u32, u32>,
    max: usize,
}

/// What [`HotExtents::activate`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct AlChange {
    /// Extents added to the hot set (needs an AL transaction before the write).
    pub added: Vec<u32>,
    /// Extents evicted (their bitmap pages must be persisted before the transaction).
    pub evicted: Vec<u32>,
}

impl HotExtents {
    pub fn new(initial: &[u32], max: usize) -> Self {
        let max = max.max(2);
        let mut h = HotExtents {
            order: VecDeque::new(),
            refs: HashMap::new(),
            max,
        };
        for &e in initial.iter().take(max) {
            if !h.refs.contains_key(&e) {
                h.order.push_back(e);
                h.refs.insert(e, 0);
            }
        }
        h
    }

    /// Take a reference on extents `first..=last` for a write; returns what changed.
    pub fn activate(&mut self, first: u32, last: u32) -> AlChange {
        let mut ch = AlChange::default();
        for e in first..=last {
            if let Some(r) = self.refs.get_mut(&e) {
                *r += 1;
                if let Some(pos) = self.order.iter().position(|&x| x == e) {
                    self.order.remove(pos);
                }
                self.order.push_back(e);
                continue;
            }
            if self.order.len() >= self.max {
                // Evict the least recently used idle extent; if every hot extent is
                // busy, the set grows past `max` until writes complete.
                if let Some(pos) = self
                    .order
                    .iter()
                    .position(|x| self.refs.get(x).copied() == Some(0))
                {
                    if let Some(victim) = self.order.remove(pos) {
                        self.refs.remove(&victim);
                        ch.evicted.push(victim);
                    }
                }
            }
            self.order.push_back(e);
            self.refs.insert(e, 1);
            ch.added.push(e);
        }
        ch
    }

    /// Drop the references taken by [`HotExtents::activate`].
    pub fn release(&mut self, first: u32, last: u32) {
        for e in first..=last {
            if let Some(r) = self.refs.get_mut(&e) {
                *r = r.saturating_sub(1);
            }
        }
    }

    /// The hot set, for persisting.
    pub fn extents(&self) -> Vec<u32> {
        self.order.iter().copied().collect()
    }

    /// Forget every idle extent (after a clean demotion or a completed resync).
    pub fn clear_idle(&mut self) -> bool {
        let before = self.order.len();
        let refs = &self.refs;
        self.order.retain(|e| refs.get(e).copied().unwrap_or(0) > 0);
        let keep: std::collections::HashSet<u32> = self.order.iter().copied().collect();
        self.refs.retain(|e, _| keep.contains(e));
        before != self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_eviction_skips_busy_extents() {
        let mut h = HotExtents::new(&[], 2);
        assert_eq!(h.activate(1, 1).added, vec![1]);
        assert_eq!(h.activate(2, 2).added, vec![2]);
        h.release(2, 2);
        let ch = h.activate(3, 3);
        assert_eq!(ch.added, vec![3]);
        assert_eq!(ch.evicted, vec![2], "1 is busy, 2 is idle");
        assert_eq!(h.extents(), vec![1, 3]);
        assert_eq!(h.activate(1, 1), AlChange::default());
    }
}
