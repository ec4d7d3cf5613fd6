//! Medium access commands (SBC-3): READ, WRITE, ORWRITE, VERIFY and WRITE AND VERIFY,
//! plus the LBA range checks and helpers shared with PRE-FETCH, SYNCHRONIZE CACHE and
//! the commands in `caw.rs`, `thin.rs` (WRITE SAME, UNMAP) and `xcopy.rs`.
//!
//! Owns: the data path. READ and WRITE are a straight line — field checks, range check,
//! one `read_at` into the caller's buffer / one `write_at` from the initiator's data —
//! with no allocation and no lock on the fast path. Commands that need scratch space
//! (ORWRITE, VERIFY, WRITE SAME) use the caller's data-in buffer and leave it empty.
//!
//! Data-out length (WRITE, WRITE AND VERIFY, ORWRITE): the transport may deliver more
//! or less than the CDB's transfer length (iSCSI EDTL ≠ SPDTL). As FCP-4 9.4.2 a)
//! describes and libiscsi's iSCSIResiduals tests (1.19) require, the command is
//! processed for `min(data-out, transfer length)`: surplus data is ignored, and a
//! shortfall of whole blocks writes only the blocks that arrived; either way the status
//! is GOOD and the transport reports the residual from `cdb_transfer_len`. A shortfall
//! that ends inside a block cannot be written as a whole block and is rejected without
//! writing anything, with ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT
//! (0E/03), as Linux LIO does. Commands whose data-out is a fixed-size operand (VERIFY
//! with BYTCHK, WRITE SAME) need exactly that size and otherwise get 0E/03.

use twinsan_blockdev::IoBuf;

use crate::api::ScsiStatus;
use crate::cdb::{BlockRw, VerifyArgs};
use crate::lun::{limits, CmdResult, Exec, Fail, IoKind, LogicalUnit};
use crate::sense::{asc, key, Sense};

/// Byte offset of the TRANSFER LENGTH field for a CDB length (for field pointers).
pub(crate) fn len_field_byte(cdb_len: u8) -> u16 {
    match cdb_len {
        6 => 4,
        10 => 7,
        12 => 6,
        _ => 10,
    }
}

/// Set `buf` to `len` bytes without caring about their contents (they are overwritten
/// by the caller); avoids zero-filling when the buffer already holds enough bytes.
#[inline]
pub(crate) fn scratch(buf: &mut IoBuf, len: usize) -> &mut [u8] {
    buf.resize_for_overwrite(len);
    &mut buf[..len]
}

pub(crate) fn lba_oob() -> Fail {
    Fail::Check(Sense::illegal(asc::LBA_OUT_OF_RANGE))
}

pub(crate) fn bad_data_out_len() -> Fail {
    Fail::Check(Sense::illegal(asc::INVALID_FIELD_IN_CMD_IU))
}

pub(crate) fn write_protected() -> Fail {
    Fail::Check(Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED))
}

impl LogicalUnit {
    /// Check `[lba, lba + blocks)` lies inside the medium.
    #[inline]
    pub(crate) fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Fail> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.num_blocks() => Ok(()),
            _ => Err(lba_oob()),
        }
    }

    /// Range check where `blocks == 0` means "from `lba` to the end of the medium".
    pub(crate) fn check_range_to_end(&self, lba: u64, blocks: u32) -> Result<(), Fail> {
        if blocks == 0 {
            if lba > self.num_blocks() {
                return Err(lba_oob());
            }
            return Ok(());
        }
        self.check_range(lba, u64::from(blocks))
    }

    #[inline]
    fn check_transfer_len(&self, blocks: u32, cdb_len: u8) -> Result<(), Fail> {
        if blocks > limits::max_transfer_blocks(self.block_size()) {
            return Err(Sense::invalid_cdb(len_field_byte(cdb_len), None).into());
        }
        Ok(())
    }

    /// READ(6/10/12/16).
    pub(crate) fn read(&self, rw: BlockRw, ex: &mut Exec<'_, '_>) -> CmdResult {
        if rw.protect != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        self.check_transfer_len(rw.blocks, rw.cdb_len)?;
        let bs = u64::from(self.block_size());
        let total = u64::from(rw.blocks) * bs;
        ex.xfer = Some(total);
        self.check_range(rw.lba, u64::from(rw.blocks))?;
        // Never return more than the transport can take; read whole blocks covering it.
        let n = total.min(u64::from(ex.req.data_in_len_max));
        ex.data_in.clear();
        if n == 0 {
            return Ok(ScsiStatus::Good);
        }
        let n_read = n.div_ceil(bs) * bs;
        let buf = scratch(ex.data_in, n_read as usize);
        if let Err(e) = self.device().read_at(buf, rw.lba * bs) {
            return Err(self.io_fail(&e, IoKind::Read));
        }
        ex.data_in.truncate(n as usize);
        Ok(ScsiStatus::Good)
    }

    /// Common checks of every write command. Returns the byte offset and the number of
    /// bytes to write: the CDB's transfer length, or fewer whole blocks if the
    /// transport delivered less data (see the module documentation).
    #[inline]
    fn write_prologue(
        &self,
        protect: u8,
        lba: u64,
        blocks: u32,
        cdb_len: u8,
        ex: &mut Exec<'_, '_>,
    ) -> Result<(u64, u64), Fail> {
        if protect != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        self.check_transfer_len(blocks, cdb_len)?;
        let bs = u64::from(self.block_size());
        let len = u64::from(blocks) * bs;
        ex.xfer = Some(len);
        if self.write_protected() {
            return Err(write_protected());
        }
        self.check_range(lba, u64::from(blocks))?;
        let got = ex.req.data_out.len() as u64;
        if got >= len {
            return Ok((lba * bs, len));
        }
        if !got.is_multiple_of(bs) {
            return Err(bad_data_out_len());
        }
        Ok((lba * bs, got))
    }

    /// WRITE(6/10/12/16).
    pub(crate) fn write(&self, rw: BlockRw, ex: &mut Exec<'_, '_>) -> CmdResult {
        let (off, len) = self.write_prologue(rw.protect, rw.lba, rw.blocks, rw.cdb_len, ex)?;
        if len == 0 {
            return Ok(ScsiStatus::Good);
        }
        let _g = self.gate.write(rw.lba, rw.lba + u64::from(rw.blocks));
        self.device()
            .write_at(&ex.req.data_out[..len as usize], off, rw.fua)
            .map_err(|e| self.io_fail(&e, IoKind::Write))?;
        Ok(ScsiStatus::Good)
    }

    /// ORWRITE(16): OR the data-out buffer into the medium, atomically with respect to
    /// every other write to the range.
    pub(crate) fn orwrite(&self, rw: BlockRw, ex: &mut Exec<'_, '_>) -> CmdResult {
        let (off, len) = self.write_prologue(rw.protect, rw.lba, rw.blocks, rw.cdb_len, ex)?;
        if len == 0 {
            return Ok(ScsiStatus::Good);
        }
        let data_out = &ex.req.data_out[..len as usize];
        let _g = self.rmw_section(rw.lba, rw.lba + u64::from(rw.blocks))?;
        let buf = scratch(ex.data_in, len as usize);
        let result = self
            .device()
            .read_at(buf, off)
            .map_err(|e| self.io_fail(&e, IoKind::Read))
            .and_then(|()| {
                for (m, d) in buf.iter_mut().zip(data_out) {
                    *m |= *d;
                }
                self.device()
                    .write_at(buf, off, rw.fua)
                    .map_err(|e| self.io_fail(&e, IoKind::Write))
            });
        ex.data_in.clear();
        result.map(|()| ScsiStatus::Good)
    }

    /// Read `[off, off + len)` in chunks and compare each chunk with `expect(pos, chunk)`
    /// (`pos` = byte offset from `off`). Returns the offset of the first mismatch.
    fn read_compare(
        &self,
        off: u64,
        len: u64,
        scratch_buf: &mut IoBuf,
        mut expect: impl FnMut(u64, &[u8]) -> Option<u64>,
    ) -> Result<Option<u64>, Fail> {
        let chunk = limits::CHUNK_BYTES.min(len).max(1);
        let mut pos = 0u64;
        while pos < len {
            let n = chunk.min(len - pos);
            let buf = scratch(scratch_buf, n as usize);
            if let Err(e) = self.device().read_at(buf, off + pos) {
                scratch_buf.clear();
                return Err(self.io_fail(&e, IoKind::Read));
            }
            if let Some(at) = expect(pos, buf) {
                scratch_buf.clear();
                return Ok(Some(at));
            }
            pos += n;
        }
        scratch_buf.clear();
        Ok(None)
    }

    fn miscompare(at: u64) -> Fail {
        Fail::Check(Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_information(at))
    }

    /// VERIFY(10/12/16). BYTCHK 00: the blocks are read (medium check); 01: compare
    /// with the data-out buffer; 11: compare every block with the single data-out block.
    pub(crate) fn verify(&self, v: VerifyArgs, ex: &mut Exec<'_, '_>) -> CmdResult {
        if v.protect != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        if v.bytchk == 0b10 {
            return Err(Sense::invalid_cdb(1, Some(2)).into());
        }
        self.check_transfer_len(v.blocks, v.cdb_len)?;
        let bs = u64::from(self.block_size());
        let len = u64::from(v.blocks) * bs;
        let expected_out = match v.bytchk {
            0 => 0,
            0b01 => len,
            _ => {
                if v.blocks == 0 {
                    0
                } else {
                    bs
                }
            }
        };
        if v.bytchk != 0 {
            ex.xfer = Some(expected_out);
        }
        self.check_range(v.lba, u64::from(v.blocks))?;
        if v.bytchk != 0 && ex.req.data_out.len() as u64 != expected_out {
            return Err(bad_data_out_len());
        }
        if len == 0 {
            return Ok(ScsiStatus::Good);
        }
        let data_out = ex.req.data_out;
        let mismatch = self.read_compare(v.lba * bs, len, ex.data_in, |pos, chunk| {
            let want: &[u8] = match v.bytchk {
                0 => return None,
                0b01 => &data_out[pos as usize..pos as usize + chunk.len()],
                _ => data_out,
            };
            if v.bytchk == 0b01 {
                first_diff(chunk, want).map(|i| pos + i as u64)
            } else {
                chunk.chunks(bs as usize).enumerate().find_map(|(k, blk)| {
                    first_diff(blk, want).map(|i| pos + k as u64 * bs + i as u64)
                })
            }
        })?;
        match mismatch {
            Some(at) => Err(Self::miscompare(at)),
            None => Ok(ScsiStatus::Good),
        }
    }

    /// WRITE AND VERIFY(10/12/16): write (durably), then read back; with BYTCHK=01
    /// compare with the data-out buffer.
    pub(crate) fn write_and_verify(&self, v: VerifyArgs, ex: &mut Exec<'_, '_>) -> CmdResult {
        if v.bytchk > 0b01 {
            return Err(Sense::invalid_cdb(1, Some(2)).into());
        }
        let (off, len) = self.write_prologue(v.protect, v.lba, v.blocks, v.cdb_len, ex)?;
        if len == 0 {
            return Ok(ScsiStatus::Good);
        }
        let data_out = &ex.req.data_out[..len as usize];
        {
            let _g = self.gate.write(v.lba, v.lba + u64::from(v.blocks));
            self.device()
                .write_at(data_out, off, true)
                .map_err(|e| self.io_fail(&e, IoKind::Write))?;
        }
        let bytchk = v.bytchk;
        let mismatch = self.read_compare(off, len, ex.data_in, |pos, chunk| {
            if bytchk == 0 {
                return None;
            }
            first_diff(chunk, &data_out[pos as usize..pos as usize + chunk.len()])
                .map(|i| pos + i as u64)
        })?;
        match mismatch {
            Some(at) => Err(Self::miscompare(at)),
            None => Ok(ScsiStatus::Good),
        }
    }
}

/// Index of the first byte where `a` and `b` differ (over the shorter length).
pub(crate) fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}
