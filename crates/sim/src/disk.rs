//! A simulated disk: 512-byte sectors, a volatile write cache, and crash semantics
//! (cached writes are lost, kept or torn sector by sector; in-flight writes may land
//! partly). Stored sparsely: unwritten sectors read as zeros.

use std::collections::HashMap;

use crate::Rng;

/// Sector size of the simulated disk.
pub const SECTOR: u64 = 512;

/// A crashable disk.
#[derive(Debug, Default, Clone)]
pub struct SimDisk {
    durable: HashMap<u64, Vec<u8>>,
    /// Completed writes not yet durable, oldest first: (sector, data).
    cache: Vec<(u64, Vec<u8>)>,
    /// The newest cached data per sector (index into `cache`).
    newest: HashMap<u64, usize>,
}

impl SimDisk {
    fn put(map: &mut HashMap<u64, Vec<u8>>, sector: u64, data: &[u8]) {
        if data.iter().all(|&b| b == 0) {
            map.remove(&sector);
        } else {
            map.insert(sector, data.to_vec());
        }
    }

    /// Complete a write: into the cache, or durable with `fua`.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) {
        if fua {
            self.flush();
        }
        for (i, chunk) in data.chunks(SECTOR as usize).enumerate() {
            let s = offset / SECTOR + i as u64;
            if fua {
                Self::put(&mut self.durable, s, chunk);
            } else {
                self.newest.insert(s, self.cache.len());
                self.cache.push((s, chunk.to_vec()));
            }
        }
    }

    /// Read through the cache.
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        for i in 0..len / SECTOR {
            let s = offset / SECTOR + i;
            let dst = &mut out[(i * SECTOR) as usize..((i + 1) * SECTOR) as usize];
            if let Some(&i) = self.newest.get(&s) {
                dst.copy_from_slice(&self.cache[i].1);
            } else if let Some(d) = self.durable.get(&s) {
                dst.copy_from_slice(d);
            }
        }
        out
    }

    /// Make the cache durable.
    pub fn flush(&mut self) {
        self.newest.clear();
        for (s, d) in std::mem::take(&mut self.cache) {
            Self::put(&mut self.durable, s, &d);
        }
    }

    /// Power loss: each cached sector write independently survives or not; in-flight
    /// writes (`inflight`) may land partly.
    pub fn crash(&mut self, rng: &mut Rng, inflight: &[(u64, Vec<u8>)]) {
        self.newest.clear();
        for (s, d) in std::mem::take(&mut self.cache) {
            if rng.chance(50) {
                Self::put(&mut self.durable, s, &d);
            }
        }
        for (off, data) in inflight {
            for (i, chunk) in data.chunks(SECTOR as usize).enumerate() {
                if rng.chance(30) {
                    Self::put(&mut self.durable, off / SECTOR + i as u64, chunk);
                }
            }
        }
    }

    /// A write that failed part-way: some of its sectors may have landed.
    pub fn crash_write(&mut self, rng: &mut Rng, offset: u64, data: &[u8]) {
        self.crash_inflight(rng, &[(offset, data.to_vec())]);
    }

    fn crash_inflight(&mut self, rng: &mut Rng, inflight: &[(u64, Vec<u8>)]) {
        for (off, data) in inflight {
            for (i, chunk) in data.chunks(SECTOR as usize).enumerate() {
                if rng.chance(30) {
                    let s = off / SECTOR + i as u64;
                    // Through the cache, like any write.
                    self.newest.insert(s, self.cache.len());
                    self.cache.push((s, chunk.to_vec()));
                }
            }
        }
    }

    /// Every sector that is non-zero through the cache.
    pub fn sectors(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.durable.keys().copied().collect();
        v.extend(self.cache.iter().map(|(s, _)| *s));
        v.sort_unstable();
        v.dedup();
        v
    }
}
