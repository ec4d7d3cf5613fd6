//! Write gate of one logical unit: lets read-modify-write commands (ORWRITE, COMPARE
//! AND WRITE) run atomically with respect to every other write (WRITE, WRITE SAME,
//! UNMAP, EXTENDED COPY, other read-modify-writes), while plain writes stay lock-free
//! when no read-modify-write is in flight.
//!
//! Owns: the coordination protocol only (no I/O), and the [`ClusterRangeLock`]
//! extension point that makes a read-modify-write exclusive on the peer head too.
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
//!
//! Cluster-wide atomicity (dual-primary): the gate only orders the writes of this node.
//! When both heads accept writes, a read-modify-write must also keep the peer's writes
//! out of its range. That is the job of a [`ClusterRangeLock`] installed with
//! [`WriteGate::set_cluster_lock`] (the replication layer provides it: it asks the peer
//! to hold back overlapping writes — DRBD-style conflict detection already serializes
//! overlapping writes of the two primaries — and answers when the peer has drained
//! them). [`WriteGate::read_modify_write`] takes the local range first and then the
//! cluster range, and releases both when its guard drops; plain writes never touch the
//! cluster lock (the peer's replicator checks its own side). Without a cluster lock the
//! gate is purely local, which is exact for a single primary.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Half-open block range `[start, end)`.
type Range = (u64, u64);

/// Extends a read-modify-write's exclusion over block range `[start, end)` of one LU
/// to the other node(s) exporting the same volume (see the module documentation).
///
/// Contract: [`ClusterRangeLock::acquire`] returns once no write to an overlapping
/// range is in flight on another node, and none can start there until the returned
/// guard is dropped. It may block (a round trip to the peer); it is called with the
/// local range already held, never with an engine mutex held. An error fails the
/// command (ABORTED COMMAND, which initiators retry) without touching the medium.
pub trait ClusterRangeLock: Send + Sync + std::fmt::Debug {
    /// Take `[start, end)` (in logical blocks) cluster-wide.
    fn acquire(&self, start: u64, end: u64) -> Result<ClusterRangeGuard, ClusterLockError>;
}

/// Releases a cluster-wide range when dropped.
pub type ClusterRangeGuard = Box<dyn Send>;

/// Why a cluster-wide range could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster range lock unavailable: {0}")]
pub struct ClusterLockError(pub String);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct WriteGate {
    fast_writers: AtomicUsize,
    rmw_active: AtomicUsize,
    ranges: Mutex<Vec<Range>>,
    cv: Condvar,
    cluster: OnceLock<Arc<dyn ClusterRangeLock>>,
}

/// Held while a write (or RMW) is in progress; releases on drop.
#[must_use]
pub struct GateGuard<'a> {
    gate: &'a WriteGate,
    kind: GuardKind,
    /// The cluster-wide part of a read-modify-write (released after the local part).
    _cluster: Option<ClusterRangeGuard>,
}

impl std::fmt::Debug for GateGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateGuard")
            .field("kind", &self.kind)
            .field("cluster", &self._cluster.is_some())
            .finish()
    }
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
                _cluster: None,
            };
        }
        self.fast_writers.fetch_sub(1, SeqCst);
        self.lock_range((start, end));
        GateGuard {
            gate: self,
            kind: GuardKind::Range((start, end)),
            _cluster: None,
        }
    }

    /// Install the cluster-wide extension of read-modify-writes. Returns `false` (and
    /// keeps the first one) if one is already installed.
    pub fn set_cluster_lock(&self, lock: Arc<dyn ClusterRangeLock>) -> bool {
        self.cluster.set(lock).is_ok()
    }

    /// Enter for a read-modify-write of blocks `[start, end)`: on return no other write
    /// to an overlapping range is in flight or can start until the guard is dropped —
    /// on this node, and on the peer too when a [`ClusterRangeLock`] is installed.
    pub fn read_modify_write(
        &self,
        start: u64,
        end: u64,
    ) -> Result<GateGuard<'_>, ClusterLockError> {
        let mut guard = self.local_read_modify_write(start, end);
        if let Some(cluster) = self.cluster.get() {
            // On error the local part is released when `guard` drops.
            guard._cluster = Some(cluster.acquire(start, end)?);
        }
        Ok(guard)
    }

    fn local_read_modify_write(&self, start: u64, end: u64) -> GateGuard<'_> {
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
            _cluster: None,
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
                        let _g = gate.read_modify_write(0, 8).unwrap();
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

    /// A cluster lock that records what it was asked and can be told to fail.
    #[derive(Debug, Default)]
    struct Peer {
        held: Arc<Mutex<Vec<Range>>>,
        fail: std::sync::atomic::AtomicBool,
    }

    struct PeerGuard(Arc<Mutex<Vec<Range>>>, Range);
    impl Drop for PeerGuard {
        fn drop(&mut self) {
            self.0.lock().unwrap().retain(|&r| r != self.1);
        }
    }

    impl ClusterRangeLock for Peer {
        fn acquire(&self, start: u64, end: u64) -> Result<ClusterRangeGuard, ClusterLockError> {
            if self.fail.load(SeqCst) {
                return Err(ClusterLockError("peer unreachable".into()));
            }
            self.held.lock().unwrap().push((start, end));
            Ok(Box::new(PeerGuard(self.held.clone(), (start, end))))
        }
    }

    #[test]
    fn cluster_lock_extends_read_modify_write() {
        let gate = WriteGate::new();
        let peer = Arc::new(Peer::default());
        assert!(gate.set_cluster_lock(peer.clone()));
        assert!(!gate.set_cluster_lock(Arc::new(Peer::default())));
        {
            let g = gate.read_modify_write(3, 9).unwrap();
            assert_eq!(*peer.held.lock().unwrap(), vec![(3, 9)]);
            assert!(format!("{g:?}").contains("cluster: true"));
            // Plain writes never ask the peer.
            drop(gate.write(20, 21));
            assert_eq!(peer.held.lock().unwrap().len(), 1);
        }
        assert!(peer.held.lock().unwrap().is_empty());
        // A failed cluster acquisition releases the local range.
        peer.fail.store(true, SeqCst);
        assert!(gate.read_modify_write(0, 4).is_err());
        assert_eq!(gate.rmw_active.load(SeqCst), 0);
        assert!(gate.ranges.lock().unwrap().is_empty());
        peer.fail.store(false, SeqCst);
        drop(gate.read_modify_write(0, 4).unwrap());
    }
}
