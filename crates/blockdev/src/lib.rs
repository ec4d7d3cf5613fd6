//! Block devices for twinsan.
//!
//! Owns: the [`BlockDevice`] trait that every layer above (SCSI engine, replicator,
//! volume manager) reads and writes through, and its backends: regular files (sparse,
//! grown on create), block devices, memory, and a fault-injecting wrapper for tests.
//! File and block-device backends run on an I/O engine chosen at start-up: io_uring
//! (O_DIRECT where the file and buffers allow it) or a pread/pwrite fallback.
//!
//! May not touch: anything above the block layer (no SCSI, no network).
//!
//! All offsets and lengths are in bytes. Callers are expected to pass offsets and
//! lengths that are multiples of [`BlockDevice::logical_block_size`]; backends return
//! [`BlockError::Unaligned`] otherwise, and [`BlockError::OutOfRange`] for I/O past
//! [`BlockDevice::size_bytes`].

mod fault;
mod file;
mod iobuf;
mod mem;
mod slice;
mod sys;
mod uring;

pub use fault::{FaultDevice, FaultOp, LbaFault};
pub use file::{DirectPreference, EnginePreference, FileDevice, FileOptions};
pub use iobuf::IoBuf;
pub use mem::MemDevice;
pub use slice::SliceDevice;

use std::fmt;

/// Errors from block I/O.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// I/O error from the backend (maps to a SCSI MEDIUM ERROR).
    #[error("I/O error at offset {offset_bytes}: {source}")]
    Io {
        /// Byte offset of the failed request.
        offset_bytes: u64,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The device could not be opened or created as asked.
    #[error("{}: {reason}", path.display())]
    Open {
        /// The file or device.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The request extends past the end of the device.
    #[error("request at {offset_bytes}+{len_bytes} is beyond the device size {size_bytes}")]
    OutOfRange {
        /// Byte offset of the request.
        offset_bytes: u64,
        /// Length of the request.
        len_bytes: u64,
        /// Device size.
        size_bytes: u64,
    },
    /// Offset or length not a multiple of the logical block size.
    #[error("request at {offset_bytes}+{len_bytes} is not aligned to {block_size_bytes} bytes")]
    Unaligned {
        /// Byte offset of the request.
        offset_bytes: u64,
        /// Length of the request.
        len_bytes: u64,
        /// Logical block size.
        block_size_bytes: u32,
    },
    /// The device does not accept writes (read-only export, or a replica that is not primary).
    #[error("device is read-only")]
    ReadOnly,
    /// The operation is not supported by this backend.
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    /// The device cannot serve I/O right now (e.g. a replicated device being demoted).
    #[error("device not ready: {0}")]
    NotReady(String),
}

/// Result alias for block I/O.
pub type BlockResult<T> = Result<T, BlockError>;

/// Which I/O engine a file-backed device runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring submission/completion rings.
    Uring,
    /// pread/pwrite/fdatasync system calls.
    Sync,
    /// Memory, no engine.
    Memory,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uring => "io_uring",
            Self::Sync => "pread/pwrite",
            Self::Memory => "memory",
        })
    }
}

/// One operation in a batch submitted with [`BlockDevice::submit_batch`].
#[derive(Debug)]
pub enum IoOp<'a> {
    /// Read `buf.len()` bytes at `offset_bytes` into `buf`.
    Read {
        /// Byte offset.
        offset_bytes: u64,
        /// Destination.
        buf: &'a mut [u8],
    },
    /// Write `buf` at `offset_bytes`; with `fua`, the data is durable when this completes.
    Write {
        /// Byte offset.
        offset_bytes: u64,
        /// Source.
        buf: &'a [u8],
        /// Force unit access: durable before completion.
        fua: bool,
    },
    /// Make every completed write durable.
    Flush,
}

/// A block device: the one interface every layer of twinsan reads and writes through.
///
/// Implementations are shared between threads (`&self` methods); each call is
/// synchronous and returns when the operation is complete. Concurrent calls on
/// non-overlapping ranges are allowed and must not interfere.
pub trait BlockDevice: Send + Sync + fmt::Debug {
    /// Usable size in bytes (a multiple of the logical block size).
    fn size_bytes(&self) -> u64;
    /// Logical block size in bytes (512 or 4096).
    fn logical_block_size(&self) -> u32;
    /// Physical block size in bytes (≥ logical).
    fn physical_block_size(&self) -> u32 {
        self.logical_block_size()
    }
    /// Read `buf.len()` bytes at `offset_bytes`.
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> BlockResult<()>;
    /// Write `buf` at `offset_bytes`. If `fua`, the data is durable on return.
    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> BlockResult<()>;
    /// Make all completed writes durable (fdatasync or equivalent).
    fn flush(&self) -> BlockResult<()>;
    /// Discard (deallocate) a range; later reads of it return zeros.
    fn discard(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        let _ = (offset_bytes, len_bytes);
        Err(BlockError::Unsupported("discard"))
    }
    /// Whether [`BlockDevice::discard`] works here and discarded ranges read back as
    /// zeros (what SCSI reports as thin provisioning with LBPRZ). `false` (the default)
    /// makes the device fully provisioned to initiators.
    fn supports_discard(&self) -> bool {
        false
    }
    /// Provisioning status of the range `[offset_bytes, offset_bytes + len_bytes)`
    /// (block-aligned, `len_bytes > 0`): whether its first block is mapped (backed by
    /// storage) or deallocated, and the length in bytes (a multiple of the logical
    /// block size, `1..=len_bytes` blocks) of the extent from `offset_bytes` with that
    /// same status. A block that is only partly allocated counts as mapped. The default
    /// reports the whole range as mapped.
    fn provisioning_status(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<(bool, u64)> {
        check_geometry(
            self.size_bytes(),
            self.logical_block_size(),
            offset_bytes,
            len_bytes,
        )?;
        Ok((true, len_bytes))
    }
    /// Whether completed writes may sit in a volatile cache until [`BlockDevice::flush`]
    /// (what the SCSI caching mode page reports as WCE). `false` means every completed
    /// write is already durable.
    fn write_cache_enabled(&self) -> bool;
    /// Whether writes are refused.
    fn read_only(&self) -> bool {
        false
    }
    /// A counter that changes whenever the device becomes usable on this node after
    /// having been unavailable here (a replicated volume promoted on this head). Layers
    /// that keep state *on* the device (the persistent-reservation record) reload it
    /// when it changes. Plain devices never change it.
    fn activation_epoch(&self) -> u64 {
        0
    }
    /// The engine this device runs on (for status and logs).
    fn engine(&self) -> EngineKind;
    /// Submit several operations at once and wait for all of them; each op's result
    /// is written to `results[i]`. Engines that can batch (io_uring) override this; the
    /// default runs them one by one.
    fn submit_batch(&self, ops: &mut [IoOp<'_>], results: &mut [BlockResult<()>]) {
        for (op, res) in ops.iter_mut().zip(results.iter_mut()) {
            *res = match op {
                IoOp::Read { offset_bytes, buf } => self.read_at(buf, *offset_bytes),
                IoOp::Write {
                    offset_bytes,
                    buf,
                    fua,
                } => self.write_at(buf, *offset_bytes, *fua),
                IoOp::Flush => self.flush(),
            };
        }
    }
}

/// Check that a request lies inside the device and is block-aligned.
pub fn check_range(dev: &dyn BlockDevice, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
    check_geometry(
        dev.size_bytes(),
        dev.logical_block_size(),
        offset_bytes,
        len_bytes,
    )
}

/// [`check_range`] for a device of `size_bytes` with `block_size` bytes per block.
fn check_geometry(
    size_bytes: u64,
    block_size: u32,
    offset_bytes: u64,
    len_bytes: u64,
) -> BlockResult<()> {
    let bs = u64::from(block_size.max(1));
    if !offset_bytes.is_multiple_of(bs) || !len_bytes.is_multiple_of(bs) {
        return Err(BlockError::Unaligned {
            offset_bytes,
            len_bytes,
            block_size_bytes: block_size,
        });
    }
    match offset_bytes.checked_add(len_bytes) {
        Some(end) if end <= size_bytes => Ok(()),
        _ => Err(BlockError::OutOfRange {
            offset_bytes,
            len_bytes,
            size_bytes,
        }),
    }
}
