//! Per-I_T-nexus state of one logical unit: the unit attention queue (SAM-5 5.14).
//!
//! Owns: which unit attention conditions are pending for which nexus. A nexus seen for
//! the first time starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29/00)
//! pending. Resets, mode changes and capacity changes add conditions for every known
//! nexus (or every nexus but the one that caused them).
//!
//! The table is sharded by nexus id so that the per-command check is one uncontended
//! mutex lock in the common case.
//!
//! Each entry also remembers the nexus's port identity (initiator port name and relative
//! target port id) as the transport reported it, so that persistent reservation events,
//! which are addressed to registered I_T nexuses rather than to session ids, can be
//! routed to the sessions currently connected through those ports.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::api::Nexus;

/// How many conditions one nexus may have queued; older ones are dropped first (a
/// reset condition supersedes the rest anyway).
const UA_QUEUE_MAX: usize = 8;
const SHARDS: usize = 16;

/// A pending unit attention, as `(asc, ascq)` (sense key is always UNIT ATTENTION).
pub type UaCode = (u8, u8);

#[derive(Debug, Default)]
struct NexusUa {
    pending: Vec<UaCode>,
    /// Initiator port name and relative target port id, once known.
    port: Option<(Box<str>, u16)>,
}

impl NexusUa {
    fn push(&mut self, code: UaCode) {
        if self.pending.contains(&code) {
            return;
        }
        // A reset (ASC 29h) makes every older condition moot.
        if code.0 == 0x29 {
            self.pending.clear();
        }
        if self.pending.len() >= UA_QUEUE_MAX {
            self.pending.remove(0);
        }
        self.pending.push(code);
    }
}

/// Unit attention state of one logical unit, for all nexuses.
#[derive(Debug)]
pub struct UaTable {
    shards: [Mutex<HashMap<u64, NexusUa>>; SHARDS],
    initial: UaCode,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (plain inserts
    // and removals), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UaTable {
    /// An empty table; nexuses seen for the first time get `initial` pending.
    pub fn new(initial: UaCode) -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            initial,
        }
    }

    fn shard(&self, nexus_id: u64) -> &Mutex<HashMap<u64, NexusUa>> {
        // Mix the id so that sequential ids spread over the shards.
        let h = nexus_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
        &self.shards[h as usize % SHARDS]
    }

    /// Register the nexus if new; then, if `take`, remove and return its oldest pending
    /// condition. With `take == false` only registers and returns `None`.
    pub fn check(&self, nexus_id: u64, take: bool) -> Option<UaCode> {
        self.check_inner(nexus_id, None, take)
    }

    /// [`UaTable::check`] that also records the nexus's port identity (first time only).
    pub fn check_nexus(&self, nexus: &Nexus, take: bool) -> Option<UaCode> {
        self.check_inner(nexus.id, Some(nexus), take)
    }

    fn check_inner(&self, nexus_id: u64, nexus: Option<&Nexus>, take: bool) -> Option<UaCode> {
        let mut map = lock(self.shard(nexus_id));
        let initial = self.initial;
        let e = map.entry(nexus_id).or_insert_with(|| NexusUa {
            pending: vec![initial],
            port: None,
        });
        if e.port.is_none() {
            if let Some(n) = nexus {
                e.port = Some((n.initiator_port.as_str().into(), n.relative_port_id));
            }
        }
        if take && !e.pending.is_empty() {
            Some(e.pending.remove(0))
        } else {
            None
        }
    }

    /// Add `code` for every known nexus except `except`.
    pub fn establish_all(&self, code: UaCode, except: Option<u64>) {
        for shard in &self.shards {
            let mut map = lock(shard);
            for (id, e) in map.iter_mut() {
                if Some(*id) != except {
                    e.push(code);
                }
            }
        }
    }

    /// Add `code` for every known nexus except `except` whose port identity satisfies
    /// `matches(initiator_port, relative_port_id)` (nexuses whose identity is unknown are
    /// skipped).
    pub fn establish_matching(
        &self,
        code: UaCode,
        except: Option<u64>,
        matches: impl Fn(&str, u16) -> bool,
    ) {
        for shard in &self.shards {
            let mut map = lock(shard);
            for (id, e) in map.iter_mut() {
                if Some(*id) == except {
                    continue;
                }
                if let Some((port, rel)) = &e.port {
                    if matches(port, *rel) {
                        e.push(code);
                    }
                }
            }
        }
    }

    /// Ids of the known nexuses whose port identity satisfies `matches`, ascending.
    pub fn ids_matching(&self, matches: impl Fn(&str, u16) -> bool) -> Vec<u64> {
        let mut ids = Vec::new();
        for shard in &self.shards {
            let map = lock(shard);
            for (id, e) in map.iter() {
                if let Some((port, rel)) = &e.port {
                    if matches(port, *rel) {
                        ids.push(*id);
                    }
                }
            }
        }
        ids.sort_unstable();
        ids
    }

    /// Forget a nexus (I_T nexus loss).
    pub fn remove(&self, nexus_id: u64) {
        lock(self.shard(nexus_id)).remove(&nexus_id);
    }

    /// Number of known nexuses.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let t = UaTable::new((0x29, 0x00));
        assert_eq!(t.check(1, false), None);
        assert_eq!(t.check(1, true), Some((0x29, 0x00)));
        assert_eq!(t.check(1, true), None);
        t.check(2, true);
        t.establish_all((0x2A, 0x01), Some(2));
        assert_eq!(t.check(2, true), None);
        assert_eq!(t.check(1, true), Some((0x2A, 0x01)));
        t.establish_all((0x2A, 0x09), None);
        t.establish_all((0x2A, 0x09), None);
        assert_eq!(t.check(1, true), Some((0x2A, 0x09)));
        assert_eq!(t.check(1, true), None);
        t.establish_all((0x2A, 0x01), None);
        t.establish_all((0x29, 0x03), None);
        assert_eq!(t.check(2, true), Some((0x29, 0x03)));
        assert_eq!(t.check(2, true), None);
        assert_eq!(t.len(), 2);
        t.remove(1);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn routing_by_port_identity() {
        let t = UaTable::new((0x29, 0x00));
        let n = |id: u64, port: &str, rel: u16| Nexus {
            id,
            initiator_port: port.into(),
            relative_port_id: rel,
        };
        for x in [n(1, "a,i,0x1", 1), n(2, "a,i,0x1", 2), n(3, "b,i,0x1", 1)] {
            assert_eq!(t.check_nexus(&x, true), Some((0x29, 0x00)));
        }
        t.check(4, true); // identity unknown: never matched
        t.establish_matching((0x2A, 0x05), Some(2), |p, _| p == "a,i,0x1");
        assert_eq!(t.check(1, true), Some((0x2A, 0x05)));
        assert_eq!(t.check(2, true), None, "excluded");
        assert_eq!(t.check(3, true), None);
        assert_eq!(t.check(4, true), None);
        assert_eq!(t.ids_matching(|_, rel| rel == 1), vec![1, 3]);
    }
}
