//! [`FaultDevice`]: a wrapper that injects failures into another [`BlockDevice`], for
//! tests of the layers above (SCSI sense mapping, replication, failover).
//!
//! Owns: the fault configuration, changeable at any time through `&self`.
//! May not touch: the wrapped device's data (requests that are not failed are passed
//! through unchanged).
//!
//! Injected I/O errors are `BlockError::Io` carrying `EIO`; "not ready" is
//! `BlockError::NotReady`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::{check_range, BlockDevice, BlockError, BlockResult, EngineKind, IoOp};

/// Which requests an LBA fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// Reads only.
    Read,
    /// Writes (and discards) only.
    Write,
    /// Reads, writes and discards.
    ReadWrite,
}

/// A range of logical blocks (in the wrapped device's logical block size) that fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaFault {
    /// First failing LBA.
    pub first_lba: u64,
    /// Number of failing LBAs.
    pub lba_count: u64,
    /// Which requests fail.
    pub op: FaultOp,
}

impl LbaFault {
    fn hits(&self, first: u64, count: u64, write: bool) -> bool {
        let applies = match self.op {
            FaultOp::Read => !write,
            FaultOp::Write => write,
            FaultOp::ReadWrite => true,
        };
        applies
            && count > 0
            && first < self.first_lba.saturating_add(self.lba_count)
            && self.first_lba < first.saturating_add(count)
    }
}

/// A fault-injecting wrapper around another block device.
#[derive(Debug)]
pub struct FaultDevice {
    inner: Arc<dyn BlockDevice>,
    lba_faults: RwLock<Vec<LbaFault>>,
    latency_us: AtomicU64,
    fail_flush: AtomicBool,
    not_ready: Mutex<Option<String>>,
    injected: AtomicU64,
}

fn eio(offset_bytes: u64) -> BlockError {
    BlockError::Io {
        offset_bytes,
        source: std::io::Error::from_raw_os_error(libc::EIO),
    }
}

impl FaultDevice {
    /// Wrap `inner`; no faults configured.
    pub fn new(inner: Arc<dyn BlockDevice>) -> Self {
        Self {
            inner,
            lba_faults: RwLock::new(Vec::new()),
            latency_us: AtomicU64::new(0),
            fail_flush: AtomicBool::new(false),
            not_ready: Mutex::new(None),
            injected: AtomicU64::new(0),
        }
    }

    /// The wrapped device.
    pub fn inner(&self) -> &Arc<dyn BlockDevice> {
        &self.inner
    }

    /// Add a failing LBA range.
    pub fn add_lba_fault(&self, fault: LbaFault) {
        self.lba_faults
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fault);
    }

    /// Reads touching `first_lba .. first_lba + lba_count` fail with EIO.
    pub fn fail_reads(&self, first_lba: u64, lba_count: u64) {
        self.add_lba_fault(LbaFault {
            first_lba,
            lba_count,
            op: FaultOp::Read,
        });
    }

    /// Writes and discards touching the range fail with EIO.
    pub fn fail_writes(&self, first_lba: u64, lba_count: u64) {
        self.add_lba_fault(LbaFault {
            first_lba,
            lba_count,
            op: FaultOp::Write,
        });
    }

    /// Reads, writes and discards touching the range fail with EIO.
    pub fn fail_io(&self, first_lba: u64, lba_count: u64) {
        self.add_lba_fault(LbaFault {
            first_lba,
            lba_count,
            op: FaultOp::ReadWrite,
        });
    }

    /// Remove all LBA faults.
    pub fn clear_lba_faults(&self) {
        self.lba_faults
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The configured LBA faults.
    pub fn lba_faults(&self) -> Vec<LbaFault> {
        self.lba_faults
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Added latency per request in microseconds (0 = none). A batch counts as one
    /// request, since its operations run concurrently.
    pub fn set_latency_us(&self, latency_us: u64) {
        self.latency_us.store(latency_us, Ordering::Relaxed);
    }

    /// The added latency per request.
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// Make flushes fail with EIO (or succeed again).
    pub fn set_fail_flush(&self, fail: bool) {
        self.fail_flush.store(fail, Ordering::Relaxed);
    }

    /// Make every request fail with [`BlockError::NotReady`] carrying `reason`, or serve
    /// again with `None`.
    pub fn set_not_ready(&self, reason: Option<String>) {
        *self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// Remove every fault and the added latency.
    pub fn clear_all(&self) {
        self.clear_lba_faults();
        self.set_latency_us(0);
        self.set_fail_flush(false);
        self.set_not_ready(None);
    }

    /// How many errors have been injected so far.
    pub fn injected_errors(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn delay(&self) {
        let us = self.latency_us();
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
    }

    fn check_ready(&self) -> BlockResult<()> {
        match &*self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(reason) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(BlockError::NotReady(reason.clone()))
            }
            None => Ok(()),
        }
    }

    /// The injected failure for a read/write of `len` bytes at `offset`, if any.
    fn check_lbas(&self, offset: u64, len: u64, write: bool) -> BlockResult<()> {
        check_range(self, offset, len)?;
        self.check_ready()?;
        let bs = u64::from(self.inner.logical_block_size().max(1));
        let first = offset / bs;
        let count = offset.saturating_add(len).div_ceil(bs) - first;
        let faults = self
            .lba_faults
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if faults.iter().any(|f| f.hits(first, count, write)) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(eio(offset));
        }
        Ok(())
    }

    fn check_flush(&self) -> BlockResult<()> {
        self.check_ready()?;
        if self.fail_flush.load(Ordering::Relaxed) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(eio(0));
        }
        Ok(())
    }
}

impl BlockDevice for FaultDevice {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }

    fn physical_block_size(&self) -> u32 {
        self.inner.physical_block_size()
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> BlockResult<()> {
        self.delay();
        self.check_lbas(offset_bytes, buf.len() as u64, false)?;
        self.inner.read_at(buf, offset_bytes)
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> BlockResult<()> {
        self.delay();
        self.check_lbas(offset_bytes, buf.len() as u64, true)?;
        self.inner.write_at(buf, offset_bytes, fua)
    }

    fn flush(&self) -> BlockResult<()> {
        self.delay();
        self.check_flush()?;
        self.inner.flush()
    }

    fn discard(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        self.delay();
        self.check_lbas(offset_bytes, len_bytes, true)?;
        self.inner.discard(offset_bytes, len_bytes)
    }

    fn supports_discard(&self) -> bool {
        self.inner.supports_discard()
    }

    fn provisioning_status(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<(bool, u64)> {
        self.delay();
        self.check_lbas(offset_bytes, len_bytes, false)?;
        self.inner.provisioning_status(offset_bytes, len_bytes)
    }

    fn write_cache_enabled(&self) -> bool {
        self.inner.write_cache_enabled()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn engine(&self) -> EngineKind {
        self.inner.engine()
    }

    fn submit_batch(&self, ops: &mut [IoOp<'_>], results: &mut [BlockResult<()>]) {
        self.delay();
        let n = ops.len().min(results.len());
        // Ops that pass the fault checks go to the inner device as one batch, in order.
        let mut passed: Vec<IoOp<'_>> = Vec::with_capacity(n);
        let mut passed_idx: Vec<usize> = Vec::with_capacity(n);
        for (i, op) in ops[..n].iter_mut().enumerate() {
            let check = match op {
                IoOp::Read { offset_bytes, buf } => {
                    self.check_lbas(*offset_bytes, buf.len() as u64, false)
                }
                IoOp::Write {
                    offset_bytes, buf, ..
                } => self.check_lbas(*offset_bytes, buf.len() as u64, true),
                IoOp::Flush => self.check_flush(),
            };
            if let Err(e) = check {
                results[i] = Err(e);
                continue;
            }
            passed.push(match op {
                IoOp::Read { offset_bytes, buf } => IoOp::Read {
                    offset_bytes: *offset_bytes,
                    buf: &mut buf[..],
                },
                IoOp::Write {
                    offset_bytes,
                    buf,
                    fua,
                } => IoOp::Write {
                    offset_bytes: *offset_bytes,
                    buf,
                    fua: *fua,
                },
                IoOp::Flush => IoOp::Flush,
            });
            passed_idx.push(i);
        }
        if passed.is_empty() {
            return;
        }
        let mut inner_results: Vec<BlockResult<()>> = (0..passed.len()).map(|_| Ok(())).collect();
        self.inner.submit_batch(&mut passed, &mut inner_results);
        for (i, r) in passed_idx.into_iter().zip(inner_results) {
            results[i] = r;
        }
    }
}
