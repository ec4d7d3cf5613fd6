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
    /// Thin disks: which blocks are allocated (`None`: fully provisioned, no discard).
    allocated: Option<Mutex<Vec<bool>>>,
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
            allocated: None,
            block_size,
            size: AtomicU64::new(size),
            wce,
            bad_requests: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fua_writes: AtomicU64::new(0),
            fail_io: AtomicBool::new(false),
        }
    }

    /// A zeroed, thin-provisioned disk: it supports discard (discarded blocks read as
    /// zeros) and reports per-block allocation (blocks are allocated when written).
    pub fn new_thin(blocks: u64, block_size: u32, wce: bool) -> Self {
        Self {
            allocated: Some(Mutex::new(vec![false; blocks as usize])),
            ..Self::new(blocks, block_size, wce)
        }
    }

    /// Change the size (new bytes are zero).
    pub fn resize_blocks(&self, blocks: u64) {
        let size = blocks * u64::from(self.block_size);
        self.lock().resize(size as usize, 0);
        if let Some(a) = &self.allocated {
            a.lock()
                .unwrap_or_else(|e| e.into_inner())
                .resize(blocks as usize, false);
        }
        self.size.store(size, Ordering::SeqCst);
    }

    /// Mark the blocks of `[off, off + len)` allocated or not (thin disks).
    fn set_allocated(&self, off: u64, len: u64, allocated: bool) {
        if let Some(a) = &self.allocated {
            let bs = u64::from(self.block_size);
            let mut a = a.lock().unwrap_or_else(|e| e.into_inner());
            for b in &mut a[(off / bs) as usize..((off + len) / bs) as usize] {
                *b = allocated;
            }
        }
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
        drop(d);
        self.set_allocated(offset_bytes, buf.len() as u64, true);
        Ok(())
    }
    fn discard(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        if self.allocated.is_none() {
            return Err(twinsan_blockdev::BlockError::Unsupported("discard"));
        }
        self.check(offset_bytes, len_bytes)?;
        let o = offset_bytes as usize;
        self.lock()[o..o + len_bytes as usize].fill(0);
        self.set_allocated(offset_bytes, len_bytes, false);
        Ok(())
    }
    fn supports_discard(&self) -> bool {
        self.allocated.is_some()
    }
    fn provisioning_status(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<(bool, u64)> {
        self.check(offset_bytes, len_bytes)?;
        let Some(a) = &self.allocated else {
            return Ok((true, len_bytes));
        };
        let bs = u64::from(self.block_size);
        let a = a.lock().unwrap_or_else(|e| e.into_inner());
        let blocks = &a[(offset_bytes / bs) as usize..((offset_bytes + len_bytes) / bs) as usize];
        let first = blocks.first().copied().unwrap_or(true);
        let n = blocks.iter().take_while(|&&b| b == first).count().max(1) as u64;
        Ok((first, n * bs))
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

/// A two-LUN map over a fresh thin [`MemDisk`] of `blocks` 512-byte blocks: LUN 0 and
/// LUN 1 are two LUs (two identities) over the same disk, so EXTENDED COPY between
/// LUs is exercised with every access still checked against the one disk.
pub fn small_target(blocks: u64) -> (LunMap, Arc<MemDisk>) {
    let disk = Arc::new(MemDisk::new_thin(blocks, 512, true));
    let lu0 = LogicalUnit::new(LunConfig::new(Uuid::from_u128(0x1234)), disk.clone());
    let lu1 = LogicalUnit::new(LunConfig::new(Uuid::from_u128(0x5678)), disk.clone());
    (
        LunMap::new(vec![(0, Arc::new(lu0)), (1, Arc::new(lu1))]),
        disk,
    )
}

/// Decode and execute one command built from arbitrary bytes, checking invariants
/// (panics if one is broken): `decode_cdb` never panics; data-in never exceeds the
/// transport's limit and matches `data_in_len`; CHECK CONDITION carries sense; the
/// device never sees an out-of-range or unaligned request; the size never changes;
/// GET LBA STATUS data is well formed (contiguous descriptors from the requested LBA).
///
/// Layout of `input`: byte 0 = CDB length (mod 33), byte 1..3 = data-in limit
/// (little-endian u16), byte 3 = flags (bit 0: second nexus, bit 1: LUN 1, bit 2: a LUN
/// that does not exist), then the CDB, then the data-out bytes.
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
        lun: match hdr[2] & 6 {
            0 => 0,
            2 => 1 << 48,
            _ => 5 << 48,
        },
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
    if resp.status == ScsiStatus::Good {
        if let Ok(crate::Command::GetLbaStatus { lba, .. }) = decode_cdb(cdb) {
            check_lba_status(lba, &data_in, disk.size_bytes() / 512);
        }
    }
}

/// GET LBA STATUS parameter data (possibly truncated): descriptors start at `lba`,
/// follow each other without gaps, stay inside the medium and have a valid status.
fn check_lba_status(lba: u64, data: &[u8], num_blocks: u64) {
    if data.len() >= 4 {
        let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
        assert!(
            len >= 4 + 16 && (len - 4).is_multiple_of(16),
            "parameter data length {len}"
        );
    }
    let mut next = lba;
    for d in data.get(8..).unwrap_or(&[]).chunks_exact(16) {
        let first = u64::from_be_bytes(d[0..8].try_into().unwrap_or_default());
        let n = u64::from(u32::from_be_bytes(d[8..12].try_into().unwrap_or_default()));
        assert_eq!(first, next, "descriptors contiguous");
        assert!(
            n > 0 && first + n <= num_blocks,
            "descriptor inside the medium"
        );
        assert!(d[12] & 0x0F <= 1, "mapped or deallocated");
        next = first + n;
    }
}
