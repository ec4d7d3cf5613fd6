//! [`MemDevice`]: a block device in memory, for tests and scratch volumes.
//!
//! Owns: its chunked storage. Memory is allocated per 1 MiB chunk on first write, so a
//! large, mostly empty device is cheap; a discard that covers a whole chunk frees it.
//! May not touch: anything outside this module.
//!
//! Each chunk has its own `RwLock`, so concurrent reads never block each other and
//! writes to different chunks run in parallel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use crate::{check_range, BlockDevice, BlockError, BlockResult, EngineKind};

const CHUNK_SHIFT: u32 = 20;
const CHUNK_BYTES: usize = 1 << CHUNK_SHIFT;

/// One chunk of storage; `None` until first written (reads as zeros).
type Chunk = RwLock<Option<Box<[u8]>>>;

/// A memory-backed block device. Writes are durable at once (no write cache); discarded
/// ranges read as zeros.
pub struct MemDevice {
    size_bytes: u64,
    logical_block_size: u32,
    chunks: Box<[Chunk]>,
    read_only: AtomicBool,
}

impl std::fmt::Debug for MemDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDevice")
            .field("size_bytes", &self.size_bytes)
            .field("logical_block_size", &self.logical_block_size)
            .field("read_only", &self.read_only())
            .finish()
    }
}

impl MemDevice {
    /// A zero-filled device of `size_bytes` (rounded down to whole blocks).
    ///
    /// # Panics
    ///
    /// If `logical_block_size` is not a power of two in 512..=65536 or the size is less
    /// than one block; use [`MemDevice::try_new`] for values from configuration.
    pub fn new(size_bytes: u64, logical_block_size: u32) -> Self {
        match Self::try_new(size_bytes, logical_block_size) {
            Ok(d) => d,
            Err(e) => panic!("MemDevice::new({size_bytes}, {logical_block_size}): {e}"),
        }
    }

    /// Like [`MemDevice::new`], but returns an error for bad parameters.
    pub fn try_new(size_bytes: u64, logical_block_size: u32) -> BlockResult<Self> {
        let bs = logical_block_size;
        if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
            return Err(BlockError::Io {
                offset_bytes: 0,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("memory device: logical block size {bs} is not a power of two in 512..=65536"),
                ),
            });
        }
        let size = size_bytes - size_bytes % u64::from(bs);
        if size == 0 {
            return Err(BlockError::Io {
                offset_bytes: 0,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("memory device: size {size_bytes} is smaller than one {bs}-byte block"),
                ),
            });
        }
        let n_chunks =
            usize::try_from(size.div_ceil(CHUNK_BYTES as u64)).map_err(|_| BlockError::Io {
                offset_bytes: 0,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("memory device: size {size_bytes} too large"),
                ),
            })?;
        let chunks = (0..n_chunks).map(|_| RwLock::new(None)).collect();
        Ok(Self {
            size_bytes: size,
            logical_block_size: bs,
            chunks,
            read_only: AtomicBool::new(false),
        })
    }

    /// Refuse (or accept again) writes and discards.
    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.store(read_only, Ordering::Release);
    }

    /// Bytes of memory currently allocated for data.
    pub fn allocated_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| {
                c.read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map_or(0, |b| b.len() as u64)
            })
            .sum()
    }

    fn chunk_len(&self, idx: usize) -> usize {
        let start = (idx as u64) << CHUNK_SHIFT;
        (self.size_bytes - start).min(CHUNK_BYTES as u64) as usize
    }

    /// Call `f(chunk_index, offset_in_chunk, range_in_request)` for each chunk a request
    /// touches.
    fn for_each_piece(
        offset: u64,
        len: usize,
        mut f: impl FnMut(usize, usize, std::ops::Range<usize>),
    ) {
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let idx = (pos >> CHUNK_SHIFT) as usize;
            let in_chunk = (pos as usize) & (CHUNK_BYTES - 1);
            let n = (CHUNK_BYTES - in_chunk).min(len - done);
            f(idx, in_chunk, done..done + n);
            done += n;
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> BlockResult<()> {
        check_range(self, offset, len)?;
        if self.read_only() {
            return Err(BlockError::ReadOnly);
        }
        Ok(())
    }
}

impl BlockDevice for MemDevice {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> BlockResult<()> {
        check_range(self, offset_bytes, buf.len() as u64)?;
        Self::for_each_piece(offset_bytes, buf.len(), |idx, at, range| {
            let dst = &mut buf[range];
            let chunk = self.chunks[idx]
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match chunk.as_ref() {
                Some(data) => dst.copy_from_slice(&data[at..at + dst.len()]),
                None => dst.fill(0),
            }
        });
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset_bytes: u64, _fua: bool) -> BlockResult<()> {
        self.check_write(offset_bytes, buf.len() as u64)?;
        Self::for_each_piece(offset_bytes, buf.len(), |idx, at, range| {
            let src = &buf[range];
            let mut chunk = self.chunks[idx]
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let data =
                chunk.get_or_insert_with(|| vec![0u8; self.chunk_len(idx)].into_boxed_slice());
            data[at..at + src.len()].copy_from_slice(src);
        });
        Ok(())
    }

    fn flush(&self) -> BlockResult<()> {
        Ok(())
    }

    fn discard(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        self.check_write(offset_bytes, len_bytes)?;
        let len = usize::try_from(len_bytes).map_err(|_| BlockError::OutOfRange {
            offset_bytes,
            len_bytes,
            size_bytes: self.size_bytes,
        })?;
        Self::for_each_piece(offset_bytes, len, |idx, at, range| {
            let mut chunk = self.chunks[idx]
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if at == 0 && range.len() == self.chunk_len(idx) {
                *chunk = None;
            } else if let Some(data) = chunk.as_mut() {
                data[at..at + range.len()].fill(0);
            }
        });
        Ok(())
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn provisioning_status(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<(bool, u64)> {
        check_range(self, offset_bytes, len_bytes)?;
        // Allocation is per chunk: a chunk never written (or discarded whole) is
        // deallocated, any other is mapped.
        let end = offset_bytes + len_bytes;
        let allocated = |idx: usize| {
            self.chunks[idx]
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
        };
        let first = (offset_bytes >> CHUNK_SHIFT) as usize;
        let mapped = allocated(first);
        let mut idx = first + 1;
        while (idx as u64) << CHUNK_SHIFT < end && allocated(idx) == mapped {
            idx += 1;
        }
        let extent_end = ((idx as u64) << CHUNK_SHIFT).min(end);
        Ok((mapped, extent_end - offset_bytes))
    }

    fn write_cache_enabled(&self) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    fn engine(&self) -> EngineKind {
        EngineKind::Memory
    }
}
