//! Write gate of one logical unit: lets read-modify-write commands (ORWRITE, later
//! COMPARE AND WRITE) run atomically with respect to every other write, while plain
//! writes stay lock-free when no read-modify-write is in flight.
//!
//! Owns: the coordination protocol only (no I/O).
//!
//! Protocol (Dekker-style, all `SeqCst`):
//! - a plain write increments `fast_writers`, then checks `rmw_active`. If it is zero
//!   the write proceeds without any lock and decrements `fast_writers` when done.
//!   Otherwise it backs out and registers its LBA range in the range table instead
//!   (waiting while it overlaps a registered range).
//! - a read-modify-write increments `rmw_active`, waits until `fast_writers` drains to
//!   zero (writes already past the check finish their I/O), then registers its range
//!   like a slow-path writer. While any RMW is active every write takes the slow path,
//!   so overlapping writes serialize through the range table.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Half-open block range `[start, end)`.
type Range = (u64, u64);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct WriteGate {
    fast_writers: AtomicUsize,
    rmw_active: AtomicUsize,
    ranges: Mutex<Vec<Range>>,
    cv: Condvar,
}

/// Held while a write (or RMW) is in progress; releases on drop.
#[must_use]
#[derive(Debug)]
pub struct GateGuard<'a> {
    gate: &'a WriteGate,
    kind: GuardKind,
}

#[derive(Debug)]
enum GuardKind {
    Fast,
    Range(Range),
    RmwRange(Range),
}

fn overlaps(a: Range, b: Range) -> bool {
    a.0 < b.1 && b.0 < a.1
}

impl WriteGate {
    /// A gate with nothing in flight.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock_range(&self, r: Range) {
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        while ranges.iter().any(|&x| overlaps(x, r)) {
            ranges = self.cv.wait(ranges).unwrap_or_else(|e| e.into_inner());
        }
        ranges.push(r);
    }

    fn unlock_range(&self, r: Range) {
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = ranges.iter().position(|&x| x == r) {
            ranges.swap_remove(i);
        }
        drop(ranges);
        self.cv.notify_all();
    }

    /// Enter for a plain write of blocks `[start, end)`.
    #[inline]
    pub fn write(&self, start: u64, end: u64) -> GateGuard<'_> {
        self.fast_writers.fetch_add(1, SeqCst);
        if self.rmw_active.load(SeqCst) == 0 {
            return GateGuard {
                gate: self,
                kind: GuardKind::Fast,
            };
        }
        self.fast_writers.fetch_sub(1, SeqCst);
        self.lock_range((start, end));
        GateGuard {
            gate: self,
            kind: GuardKind::Range((start, end)),
        }
    }

    /// Enter for a read-modify-write of blocks `[start, end)`: on return no other write
    /// to an overlapping range is in flight or can start until the guard is dropped.
    pub fn read_modify_write(&self, start: u64, end: u64) -> GateGuard<'_> {
        self.rmw_active.fetch_add(1, SeqCst);
        let mut spins = 0u32;
        while self.fast_writers.load(SeqCst) != 0 {
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        self.lock_range((start, end));
        GateGuard {
            gate: self,
            kind: GuardKind::RmwRange((start, end)),
        }
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        match self.kind {
            GuardKind::Fast => {
                self.gate.fast_writers.fetch_sub(1, SeqCst);
            }
            GuardKind::Range(r) => self.gate.unlock_range(r),
            GuardKind::RmwRange(r) => {
                self.gate.unlock_range(r);
                self.gate.rmw_active.fetch_sub(1, SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn rmw_excludes_overlapping_writes() {
        let gate = Arc::new(WriteGate::new());
        let counter = Arc::new(Mutex::new((0u64, 0u64))); // (value, torn count)
        let mut handles = Vec::new();
        for t in 0..4 {
            let gate = gate.clone();
            let counter = counter.clone();
            handles.push(std::thread::spawn(move || {
                for _ in 0..200 {
                    if t % 2 == 0 {
                        let _g = gate.read_modify_write(0, 8);
                        let v = counter.lock().unwrap().0;
                        std::thread::yield_now();
                        let mut c = counter.lock().unwrap();
                        if c.0 != v {
                            c.1 += 1;
                        }
                        c.0 = v + 1;
                    } else {
                        let _g = gate.write(4, 12);
                        counter.lock().unwrap().0 += 1000;
                    }
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        // Fast-path writers may interleave only when no RMW is active, so an RMW never
        // observes a change between its read and its write.
        assert_eq!(counter.lock().unwrap().1, 0);
        assert_eq!(gate.fast_writers.load(SeqCst), 0);
        assert_eq!(gate.rmw_active.load(SeqCst), 0);
    }
}
