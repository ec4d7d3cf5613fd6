//! Helpers for fuzz targets and property tests: [`MemDisk`], a tiny in-memory
//! [`BlockDevice`] that counts out-of-range accesses, and [`run_one`], which decodes
//! and executes one arbitrary CDB + data against a small LUN and checks the engine's
//! invariants.
//!
//! Owns: test scaffolding only; nothing in the data path uses it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use twinsan_blockdev::{check_range, BlockDevice, BlockResult, EngineKind, IoBuf};
use uuid::Uuid;

use crate::api::{Nexus, ScsiRequest, ScsiStatus, TaskAttr};
use crate::{decode_cdb, LogicalUnit, LunConfig, LunMap};

/// An in-memory block device for tests.
#[derive(Debug)]
pub struct MemDisk {
    data: Mutex<Vec<u8>>,
    block_size: u32,
    size: AtomicU64,
    wce: bool,
    /// Requests the engine sent outside `[0, size)` or unaligned (must stay 0).
    pub bad_requests: AtomicU64,
    /// Number of flushes.
    pub flushes: AtomicU64,
    /// Number of writes with FUA.
    pub fua_writes: AtomicU64,
    /// When set, reads and writes fail with an I/O error.
    pub fail_io: AtomicBool,
}

impl MemDisk {
    /// A zeroed disk of `blocks` blocks of `block_size` bytes.
    pub fn new(blocks: u64, block_size: u32, wce: bool) -> Self {
        let size = blocks * u64::from(block_size);
        Self {
            data: Mutex::new(vec![0u8; size as usize]),
            block_size,
            size: AtomicU64::new(size),
            wce,
            bad_requests: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
            fail_io: AtomicBool::new(false),
        }
    }

    /// Change the size (new bytes are zero).
    pub fn resize_blocks(&self, blocks: u64) {
        let size = blocks * u64::from(self.block_size);
        self.lock().resize(size as usize, 0);
        self.size.store(size, Ordering::SeqCst);
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, off: u64, len: u64) -> BlockResult<()> {
        check_range(self, off, len).inspect_err(|_| {
            self.bad_requests.fetch_add(1, Ordering::SeqCst);
        })?;
        if self.fail_io.load(Ordering::SeqCst) {
            return Err(twinsan_blockdev::BlockError::Io {
                offset_bytes: off,
                source: std::io::Error::other("injected"),
            });
        }
        Ok(())
    }
}

impl BlockDevice for MemDisk {
    fn size_bytes(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }
    fn logical_block_size(&self) -> u32 {
        self.block_size
    }
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> BlockResult<()> {
        self.check(offset_bytes, buf.len() as u64)?;
        let d = self.lock();
        let o = offset_bytes as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> BlockResult<()> {
        self.check(offset_bytes, buf.len() as u64)?;
        if fua {
            self.fua_writes.fetch_add(1, Ordering::SeqCst);
        }
        let mut d = self.lock();
        let o = offset_bytes as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> BlockResult<()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn write_cache_enabled(&self) -> bool {
        self.wce
    }
    fn engine(&self) -> EngineKind {
        EngineKind::Memory
    }
}

/// A one-LUN map (LUN 0) over a fresh [`MemDisk`] of `blocks` 512-byte blocks.
pub fn small_target(blocks: u64) -> (LunMap, Arc<MemDisk>) {
    let disk = Arc::new(MemDisk::new(blocks, 512, true));
    let lu = LogicalUnit::new(LunConfig::new(Uuid::from_u128(0x1234)), disk.clone());
    (LunMap::new(vec![(0, Arc::new(lu))]), disk)
}

/// Decode and execute one command built from arbitrary bytes, checking invariants
/// (panics if one is broken): `decode_cdb` never panics; data-in never exceeds the
/// transport's limit and matches `data_in_len`; CHECK CONDITION carries sense; the
/// device never sees an out-of-range or unaligned request; the size never changes.
///
/// Layout of `input`: byte 0 = CDB length (mod 33), byte 1..3 = data-in limit
/// (little-endian u16), byte 3 = flags (bit 0: second nexus, bit 1: LUN 1), then the
/// CDB, then the data-out bytes.
pub fn run_one(map: &LunMap, disk: &MemDisk, input: &[u8]) {
    let Some((&cdb_len, rest)) = input.split_first() else {
        return;
    };
    let Some((hdr, rest)) = rest.split_at_checked(3) else {
        return;
    };
    let cdb_len = usize::from(cdb_len % 33).min(rest.len());
    let (cdb, data_out) = rest.split_at(cdb_len);
    let _ = decode_cdb(cdb);
    let max = u32::from(u16::from_le_bytes([hdr[0], hdr[1]]));
    let nexus = Nexus {
        id: u64::from(hdr[2] & 1),
        initiator_port: "iqn.fuzz:i,i,0x0".into(),
        relative_port_id: 1,
    };
    let size_before = disk.size_bytes();
    let req = ScsiRequest {
        nexus: &nexus,
        lun: if hdr[2] & 2 != 0 { 1 << 48 } else { 0 },
        cdb,
        data_out,
        data_in_len_max: max,
        attr: TaskAttr::Simple,
    };
    let mut data_in = IoBuf::new();
    let resp = map.execute(&req, &mut data_in);
    assert!(resp.data_in_len <= max, "data-in over the limit");
    assert_eq!(data_in.len(), resp.data_in_len as usize);
    if resp.status == ScsiStatus::CheckCondition {
        assert!(resp.sense.is_some());
        assert_eq!(resp.data_in_len, 0);
    }
    assert_eq!(
        disk.bad_requests.load(Ordering::SeqCst),
        0,
        "out-of-range I/O"
    );
    assert_eq!(disk.size_bytes(), size_before);
}
