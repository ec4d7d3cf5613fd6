//! Ordering of overlapping disk operations: an operation may start only when it
//! overlaps no operation registered before it that is still running or waiting.
//! This keeps every byte range's writes (and the resync reads that must see them) in
//! arrival order without serializing unrelated ranges.

/// A registered operation.
#[derive(Debug)]
struct Entry<T> {
    start: u64,
    end: u64,
    token: u64,
    /// `Some` while waiting to start; taken when started.
    pending: Option<T>,
}

/// FIFO-per-range scheduler. `T` is what to do when the operation starts.
#[derive(Debug)]
pub(crate) struct RangeQueue<T> {
    entries: Vec<Entry<T>>,
}

impl<T> Default for RangeQueue<T> {
    fn default() -> Self {
        RangeQueue {
            entries: Vec::new(),
        }
    }
}

impl<T> RangeQueue<T> {
    /// Register an operation on `[start, start+len)`. Returns the operation back if it
    /// may start now (it is then running); otherwise it waits.
    pub fn submit(&mut self, token: u64, start: u64, len: u64, op: T) -> Option<T> {
        let end = start.saturating_add(len.max(1));
        let blocked = self.entries.iter().any(|e| e.start < end && start < e.end);
        if blocked {
            self.entries.push(Entry {
                start,
                end,
                token,
                pending: Some(op),
            });
            None
        } else {
            self.entries.push(Entry {
                start,
                end,
                token,
                pending: None,
            });
            Some(op)
        }
    }

    /// The running operation `token` finished. Returns the operations that may start
    /// now, in order (they are marked running).
    pub fn complete(&mut self, token: u64) -> Vec<(u64, T)> {
        let Some(pos) = self.entries.iter().position(|e| e.token == token) else {
            return Vec::new();
        };
        self.entries.remove(pos);
        let mut started = Vec::new();
        for i in 0..self.entries.len() {
            if self.entries[i].pending.is_none() {
                continue;
            }
            let (s, e) = (self.entries[i].start, self.entries[i].end);
            let blocked = self.entries[..i].iter().any(|x| x.start < e && s < x.end);
            if !blocked {
                if let Some(op) = self.entries[i].pending.take() {
                    started.push((self.entries[i].token, op));
                }
            }
        }
        started
    }

    /// Remove every waiting operation matching `pred` (e.g. peer writes of a dead
    /// connection) and return them; running ones stay until completed.
    pub fn cancel_waiting(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let hit = self.entries[i].pending.as_ref().is_some_and(&mut pred);
            if hit {
                let e = self.entries.remove(i);
                if let Some(op) = e.pending {
                    out.push((e.token, op));
                }
            } else {
                i += 1;
            }
        }
        out
    }

    /// Tokens registered (running or waiting) that are lower than `token`.
    pub fn any_before(&self, token: u64, mut pred: impl FnMut(u64) -> bool) -> bool {
        self.entries
            .iter()
            .any(|e| e.token < token && pred(e.token))
    }

    /// Operations still waiting to start, in registration order.
    pub fn pending(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().filter_map(|e| e.pending.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ops_run_in_arrival_order() {
        let mut q = RangeQueue::default();
        assert_eq!(q.submit(1, 0, 4096, "a"), Some("a"));
        assert_eq!(q.submit(2, 4096, 4096, "b"), Some("b"));
        assert_eq!(q.submit(3, 2048, 4096, "c"), None);
        assert_eq!(q.submit(4, 100_000, 10, "d"), Some("d"));
        assert_eq!(q.submit(5, 2048, 512, "e"), None);
        assert!(q.complete(1).is_empty(), "c still overlaps b");
        // e overlaps c (waiting, earlier) so it must not overtake it.
        assert_eq!(q.complete(2), vec![(3, "c")]);
        assert_eq!(q.complete(3), vec![(5, "e")]);
        assert!(q.complete(99).is_empty());
    }
}
