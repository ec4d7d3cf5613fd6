//! [`SliceDevice`]: a window `[offset, offset + len)` of another [`BlockDevice`],
//! presented as a device of its own (e.g. a LUN that leaves the tail of a replicated
//! volume to the persistent-reservation record).
//!
//! Owns: the translation and the bounds check. May not touch: anything outside the
//! window.

use std::sync::Arc;

use crate::{check_range, BlockDevice, BlockError, BlockResult, EngineKind, IoOp};

/// A window of another device.
#[derive(Debug, Clone)]
pub struct SliceDevice {
    inner: Arc<dyn BlockDevice>,
    offset_bytes: u64,
    len_bytes: u64,
}

impl SliceDevice {
    /// The window `[offset_bytes, offset_bytes + len_bytes)` of `inner`; both must be
    /// multiples of the logical block size and inside `inner`.
    pub fn new(
        inner: Arc<dyn BlockDevice>,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> BlockResult<Self> {
        check_range(inner.as_ref(), offset_bytes, len_bytes)?;
        Ok(SliceDevice {
            inner,
            offset_bytes,
            len_bytes,
        })
    }

    fn map(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<u64> {
        check_range(self, offset_bytes, len_bytes)?;
        Ok(self.offset_bytes + offset_bytes)
    }
}

impl BlockDevice for SliceDevice {
    fn size_bytes(&self) -> u64 {
        self.len_bytes
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn physical_block_size(&self) -> u32 {
        self.inner.physical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> BlockResult<()> {
        let o = self.map(offset_bytes, buf.len() as u64)?;
        self.inner.read_at(buf, o)
    }
    fn write_at(&self, buf: &[u8], offset_bytes: u64, fua: bool) -> BlockResult<()> {
        let o = self.map(offset_bytes, buf.len() as u64)?;
        self.inner.write_at(buf, o, fua)
    }
    fn flush(&self) -> BlockResult<()> {
        self.inner.flush()
    }
    fn discard(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<()> {
        let o = self.map(offset_bytes, len_bytes)?;
        self.inner.discard(o, len_bytes)
    }
    fn supports_discard(&self) -> bool {
        self.inner.supports_discard()
    }
    fn provisioning_status(&self, offset_bytes: u64, len_bytes: u64) -> BlockResult<(bool, u64)> {
        let o = self.map(offset_bytes, len_bytes)?;
        self.inner.provisioning_status(o, len_bytes)
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
    fn activation_epoch(&self) -> u64 {
        self.inner.activation_epoch()
    }
    fn submit_batch(&self, ops: &mut [IoOp<'_>], results: &mut [BlockResult<()>]) {
        // Translate offsets; a request outside the window fails alone.
        let mut mapped: Vec<IoOp<'_>> = Vec::with_capacity(ops.len());
        let mut bad: Vec<Option<BlockError>> = Vec::with_capacity(ops.len());
        for op in ops.iter_mut() {
            match op {
                IoOp::Read { offset_bytes, buf } => match self.map(*offset_bytes, buf.len() as u64)
                {
                    Ok(o) => {
                        mapped.push(IoOp::Read {
                            offset_bytes: o,
                            buf: &mut buf[..],
                        });
                        bad.push(None);
                    }
                    Err(e) => {
                        mapped.push(IoOp::Flush);
                        bad.push(Some(e));
                    }
                },
                IoOp::Write {
                    offset_bytes,
                    buf,
                    fua,
                } => match self.map(*offset_bytes, buf.len() as u64) {
                    Ok(o) => {
                        mapped.push(IoOp::Write {
                            offset_bytes: o,
                            buf,
                            fua: *fua,
                        });
                        bad.push(None);
                    }
                    Err(e) => {
                        mapped.push(IoOp::Flush);
                        bad.push(Some(e));
                    }
                },
                IoOp::Flush => {
                    mapped.push(IoOp::Flush);
                    bad.push(None);
                }
            }
        }
        self.inner.submit_batch(&mut mapped, results);
        for (r, b) in results.iter_mut().zip(bad) {
            if let Some(e) = b {
                *r = Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemDevice;

    #[test]
    fn window_translates_and_bounds() {
        let inner: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(64 * 1024, 512));
        let s = SliceDevice::new(inner.clone(), 8192, 16384).unwrap();
        assert_eq!(s.size_bytes(), 16384);
        s.write_at(&[7u8; 512], 512, false).unwrap();
        let mut b = [0u8; 512];
        inner.read_at(&mut b, 8192 + 512).unwrap();
        assert_eq!(b, [7u8; 512]);
        assert!(matches!(
            s.write_at(&[1u8; 512], 16384, false),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(SliceDevice::new(inner, 60 * 1024, 8192).is_err());
    }
}
