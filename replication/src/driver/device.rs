//! [`ReplicatedDevice`]: a replicated volume as a [`BlockDevice`] for the SCSI engine.

use std::sync::Arc;

use bytes::Bytes;
use twinsan_blockdev::{check_range, BlockDevice, BlockError, BlockResult, EngineKind};

use super::Handle;
use crate::replica::AppError;
use crate::types::DiskState;

/// A replicated volume as a block device. Reads go straight to the local data device
/// while this node is Primary with UpToDate data; writes and flushes go through the
/// owner task (and so to the peer). On a Secondary (or an Inconsistent/Outdated node)
/// every I/O fails with [`BlockError::NotReady`], which the SCSI engine reports as
/// NOT READY / LOGICAL UNIT NOT READY. Discard is not supported yet.
#[derive(Debug)]
pub struct ReplicatedDevice {
    handle: Handle,
    data: Arc<dyn BlockDevice>,
}

impl ReplicatedDevice {
    /// The volume behind `handle`, whose local data lives on `data`.
    pub fn new(handle: Handle, data: Arc<dyn BlockDevice>) -> Self {
        ReplicatedDevice { handle, data }
    }

    /// The owner task's handle.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    fn not_ready(&self) -> BlockError {
        let name = self.handle.name();
        if self.handle.is_stopped() {
            return BlockError::NotReady(format!("replicated volume {name} is stopped"));
        }
        match (self.handle.role(), self.handle.disk()) {
            (crate::types::Role::Secondary, _) => BlockError::NotReady(format!(
                "replicated volume {name} is Secondary on this node"
            )),
            (_, d) => BlockError::NotReady(format!(
                "replicated volume {name} is Primary but its local disk is {d} on this node"
            )),
        }
    }

    fn map(&self, e: AppError, offset_bytes: u64) -> BlockError {
        let name = self.handle.name();
        match e {
            AppError::NotPrimary => BlockError::NotReady(format!(
                "replicated volume {name} is Secondary on this node"
            )),
            AppError::DiskNotReady(DiskState::Diskless) if self.handle.is_stopped() => {
                BlockError::NotReady(format!("replicated volume {name} is stopped"))
            }
            AppError::DiskNotReady(d) => {
                BlockError::NotReady(format!("replicated volume {name}: local disk is {d}"))
            }
            AppError::Io => BlockError::Io {
                offset_bytes,
                source: std::io::Error::other(format!("replicated volume {name}: local I/O error")),
            },
            AppError::BadRequest(why) => BlockError::Io {
                offset_bytes,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
            },
        }
    }
}

impl BlockDevice for ReplicatedDevice {
    fn size_bytes(&self) -> u64 {
        self.handle.size_bytes()
    }

    fn logical_block_size(&self) -> u32 {
        self.data.logical_block_size()
    }

    fn physical_block_size(&self) -> u32 {
        self.data.physical_block_size()
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> BlockResult<()> {
        check_range(self, offset_bytes, buf.len() as u64)?;
        if !self.handle.readable() {
            return Err(self.not_ready());
        }
        self.data.read_at(buf, offset_bytes)
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> BlockResult<()> {
        check_range(self, offset_bytes, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.handle
            .write_blocking(offset_bytes, Bytes::copy_from_slice(buf), fua)
            .map_err(|e| self.map(e, offset_bytes))
    }

    fn flush(&self) -> BlockResult<()> {
        self.handle.flush_blocking().map_err(|e| self.map(e, 0))
    }

    fn write_cache_enabled(&self) -> bool {
        self.data.write_cache_enabled()
    }

    fn engine(&self) -> EngineKind {
        self.data.engine()
    }

    fn activation_epoch(&self) -> u64 {
        self.handle.activations()
    }
}
