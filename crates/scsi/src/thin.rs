//! Logical block provisioning (SBC-3 4.7): UNMAP, WRITE SAME(10/16) with and without
//! the UNMAP bit, GET LBA STATUS, the provisioning bits of READ CAPACITY(16), the
//! logical block provisioning VPD page (0xB2) and the UNMAP fields of the block limits
//! page (0xB0).
//!
//! Owns: whether a LU is thin and what that means on the wire. A LU is thin-provisioned
//! (LBPME=1) exactly when its device says [`BlockDevice::supports_discard`] — i.e. a
//! discarded range reads back as zeros, so LBPRZ=1 too (regular files: hole punching,
//! with zero-writing where the file system cannot punch; memory devices). Other devices
//! (block device nodes) stay fully provisioned: LBPME=0, no page 0xB2, UNMAP is not
//! offered (INVALID COMMAND OPERATION CODE, and REPORT SUPPORTED OPERATION CODES does
//! not list it) and WRITE SAME with UNMAP=1 is INVALID FIELD IN CDB — libiscsi then
//! skips its thin-provisioning tests, as it should. ANCHOR is not supported (ANC_SUP=0):
//! UNMAP and WRITE SAME with ANCHOR=1 are INVALID FIELD IN CDB.
//!
//! Mapping status (GET LBA STATUS) comes from [`BlockDevice::provisioning_status`]
//! (SEEK_DATA/SEEK_HOLE on files); a block is reported mapped if any of it is
//! allocated, so an UNMAP smaller than the file system block zeroes the blocks (reads
//! return zeros, LBPRZ holds) but leaves them mapped. OPTIMAL UNMAP GRANULARITY tells
//! initiators the device's physical block (the file system block for files).
//!
//! A thin LU reports LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0 in READ
//! CAPACITY(16): GET LBA STATUS describes provisioning per logical block, and
//! initiators (libiscsi's GetLBAStatus tests among them) read the exponent as the
//! granularity of those descriptors. The physical block is still advertised as the
//! unmap and transfer granularity in the block limits page.
//!
//! Writes of every command here enter the LU's write gate, so they are ordered with
//! COMPARE AND WRITE and ORWRITE like plain writes.

use twinsan_blockdev::BlockDevice;

use crate::api::ScsiStatus;
use crate::block::{bad_data_out_len, lba_oob, len_field_byte, scratch, write_protected};
use crate::cdb::{op, WriteSameArgs};
use crate::lun::{limits, CmdResult, Exec, IoKind, LogicalUnit};
use crate::sense::{asc, Sense};

/// MAXIMUM UNMAP LBA COUNT: no limit (hole punching costs little whatever the size).
pub const MAX_UNMAP_LBA_COUNT: u32 = u32::MAX;
/// MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Most LBA status descriptors one GET LBA STATUS returns (bounds the work).
pub const MAX_LBA_STATUS_DESCRIPTORS: usize = 1024;

/// Whether `dev` is exported thin-provisioned (see the module documentation).
pub fn is_thin(dev: &dyn BlockDevice) -> bool {
    dev.supports_discard()
}

/// OPTIMAL UNMAP GRANULARITY in logical blocks: the device's physical block.
pub fn unmap_granularity(dev: &dyn BlockDevice) -> u32 {
    (dev.physical_block_size() / dev.logical_block_size().max(1)).max(1)
}

/// Bytes 20..36 of the block limits VPD page (MAXIMUM UNMAP LBA COUNT, MAXIMUM UNMAP
/// BLOCK DESCRIPTOR COUNT, OPTIMAL UNMAP GRANULARITY, UGAVALID + UNMAP GRANULARITY
/// ALIGNMENT): zero unless the device is thin.
pub fn block_limits_unmap_fields(dev: &dyn BlockDevice) -> [u8; 16] {
    let mut b = [0u8; 16];
    if is_thin(dev) {
        b[0..4].copy_from_slice(&MAX_UNMAP_LBA_COUNT.to_be_bytes());
        b[4..8].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
        b[8..12].copy_from_slice(&unmap_granularity(dev).to_be_bytes());
        b[12] = 0x80; // UGAVALID, UNMAP GRANULARITY ALIGNMENT 0
    }
    b
}

/// VPD page 0xB2 (logical block provisioning), or `None` for a fully provisioned LU.
pub fn vpd_logical_block_provisioning(dev: &dyn BlockDevice) -> Option<Vec<u8>> {
    if !is_thin(dev) {
        return None;
    }
    Some(vec![
        0x00, 0xB2, 0x00, 0x04, 0x00, // THRESHOLD EXPONENT: no thresholds
        0xE4, // LBPU, LBPWS, LBPWS10, LBPRZ=001b; ANC_SUP=0, DP=0
        0x02, // PROVISIONING TYPE: thin
        0x00,
    ])
}

/// READ CAPACITY(16) parameter data (32 bytes).
pub fn read_capacity16(dev: &dyn BlockDevice, num_blocks: u64, block_size: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&num_blocks.saturating_sub(1).to_be_bytes());
    b[8..12].copy_from_slice(&block_size.to_be_bytes());
    // PROT_EN=0 (byte 12).
    if is_thin(dev) {
        // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT 0 (see the module documentation).
        b[14] = 0x80 | 0x40; // LBPME, LBPRZ
    } else {
        let ratio = (dev.physical_block_size() / block_size.max(1)).max(1);
        b[13] = (ratio.trailing_zeros() as u8) & 0x0F;
    }
    b
}

/// REPORT SUPPORTED OPERATION CODES data as the LU should answer it: for a fully
/// provisioned LU, `data` (built from the static table) without UNMAP.
pub fn filter_rsoc(
    dev: &dyn BlockDevice,
    data: Vec<u8>,
    rctd: bool,
    options: u8,
    opcode: u8,
) -> Vec<u8> {
    if is_thin(dev) {
        return data;
    }
    match options {
        0 => {
            let mut out = vec![0u8; 4];
            let mut at = 4;
            while at + 8 <= data.len() {
                let len = if data[at + 5] & 0x02 != 0 { 20 } else { 8 };
                let end = (at + len).min(data.len());
                if data[at] != op::UNMAP {
                    out.extend_from_slice(&data[at..end]);
                }
                at = end;
            }
            let n = (out.len() - 4) as u32;
            out[0..4].copy_from_slice(&n.to_be_bytes());
            out
        }
        1 if opcode == op::UNMAP => {
            // Not supported; keep the command timeouts descriptor if one was asked for.
            let mut out = vec![0, 0x01, 0, 0];
            if rctd && data.len() >= 12 {
                out[1] |= 0x80;
                out.extend_from_slice(&data[data.len() - 12..]);
            }
            out
        }
        _ => data,
    }
}

/// One UNMAP block descriptor, checked.
#[derive(Debug, Clone, Copy)]
struct Extent {
    lba: u64,
    blocks: u64,
}

impl LogicalUnit {
    /// Whether this LU is thin-provisioned.
    pub(crate) fn thin(&self) -> bool {
        is_thin(self.device().as_ref())
    }

    /// Deallocate `[lba, lba + blocks)` under the write gate.
    fn discard_blocks(&self, lba: u64, blocks: u64) -> Result<(), crate::lun::Fail> {
        if blocks == 0 {
            return Ok(());
        }
        let bs = u64::from(self.block_size());
        let _g = self.gate.write(lba, lba + blocks);
        self.device()
            .discard(lba * bs, blocks * bs)
            .map_err(|e| self.io_fail(&e, IoKind::Write))
    }

    /// UNMAP (SBC-3 5.28).
    pub(crate) fn unmap(&self, anchor: bool, param_len: u16, ex: &mut Exec<'_, '_>) -> CmdResult {
        let len = usize::from(param_len);
        ex.xfer = Some(len as u64);
        if !self.thin() {
            return Err(Sense::illegal(asc::INVALID_OPCODE).into());
        }
        if anchor {
            return Err(Sense::invalid_cdb(1, Some(0)).into()); // ANC_SUP=0
        }
        if self.write_protected() {
            return Err(write_protected());
        }
        if len == 0 {
            return Ok(ScsiStatus::Good);
        }
        let Some(params) = ex.req.data_out.get(..len) else {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        };
        if len < 8 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        let data_len = usize::from(u16::from_be_bytes([params[0], params[1]]));
        let desc_len = usize::from(u16::from_be_bytes([params[2], params[3]]));
        // UNMAP DATA LENGTH counts the bytes after itself, BLOCK DESCRIPTOR DATA LENGTH
        // those after the 8-byte header; both must fit the parameter list.
        if data_len + 2 > len || desc_len + 8 > len {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        }
        // An incomplete last descriptor is ignored (SBC-3 5.28.2).
        if desc_len / 16 > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param(2, None).into());
        }
        // Check every descriptor before deallocating anything. MAXIMUM UNMAP LBA COUNT
        // is FFFFFFFFh (no limit), so only the LBA range is checked.
        let mut extents = Vec::with_capacity(desc_len / 16);
        for d in params[8..8 + desc_len].chunks_exact(16) {
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or_default());
            let blocks = u64::from(u32::from_be_bytes(d[8..12].try_into().unwrap_or_default()));
            match lba.checked_add(blocks) {
                Some(end) if end <= self.num_blocks() => {}
                _ => return Err(lba_oob()),
            }
            extents.push(Extent { lba, blocks });
        }
        for e in extents {
            self.discard_blocks(e.lba, e.blocks)?;
        }
        Ok(ScsiStatus::Good)
    }

    /// WRITE SAME(10/16): write the single data-out block (or zeros with NDOB) to every
    /// block of the range; NUMBER OF LOGICAL BLOCKS 0 means "to the last block"
    /// (WSNZ=0). With UNMAP=1 on a thin LU the range is deallocated instead and then
    /// reads as zeros (LBPRZ=1), whatever the data-out block holds: as in SBC-3 and
    /// Linux LIO, UNMAP=1 asks for deallocation, and libiscsi's WriteSame*.Unmap tests
    /// send a non-zero block with it and expect zeros back. The data-out block is still
    /// required (its size is checked) unless NDOB is set.
    pub(crate) fn write_same(&self, ws: WriteSameArgs, ex: &mut Exec<'_, '_>) -> CmdResult {
        if ws.protect != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        if ws.lb_pb_data != 0 {
            return Err(Sense::invalid_cdb(1, Some(2)).into());
        }
        let bs = u64::from(self.block_size());
        let expected_out = if ws.ndob { 0 } else { bs };
        ex.xfer = Some(expected_out);
        if self.write_protected() {
            return Err(write_protected());
        }
        if ws.anchor {
            return Err(Sense::invalid_cdb(1, Some(4)).into()); // ANC_SUP=0
        }
        if ws.unmap && !self.thin() {
            return Err(Sense::invalid_cdb(1, Some(3)).into());
        }
        let len_byte = len_field_byte(ws.cdb_len);
        let blocks = if ws.blocks == 0 {
            match self.num_blocks().checked_sub(ws.lba) {
                Some(n) if n > 0 => n,
                _ => return Err(lba_oob()),
            }
        } else {
            u64::from(ws.blocks)
        };
        if blocks > limits::max_write_same_blocks(self.block_size()) {
            return Err(Sense::invalid_cdb(len_byte, None).into());
        }
        self.check_range(ws.lba, blocks)?;
        if ex.req.data_out.len() as u64 != expected_out {
            return Err(bad_data_out_len());
        }
        if ws.unmap {
            self.discard_blocks(ws.lba, blocks)?;
            return Ok(ScsiStatus::Good);
        }
        let pattern = ex.req.data_out;
        let total = blocks * bs;
        let chunk = limits::CHUNK_BYTES.max(bs).min(total) / bs * bs;
        let buf = scratch(ex.data_in, chunk as usize);
        if ws.ndob {
            buf.fill(0);
        } else {
            for blk in buf.chunks_mut(bs as usize) {
                blk.copy_from_slice(pattern);
            }
        }
        let off = ws.lba * bs;
        let _g = self.gate.write(ws.lba, ws.lba + blocks);
        let mut pos = 0u64;
        let mut result = Ok(ScsiStatus::Good);
        while pos < total {
            let n = chunk.min(total - pos) as usize;
            if let Err(e) = self.device().write_at(&buf[..n], off + pos, false) {
                result = Err(self.io_fail(&e, IoKind::Write));
                break;
            }
            pos += n as u64;
        }
        ex.data_in.clear();
        result
    }

    /// GET LBA STATUS (SBC-3 5.6): mapped / deallocated extents from `lba` on, as many
    /// descriptors as the allocation length holds (at least one).
    pub(crate) fn get_lba_status(
        &self,
        lba: u64,
        alloc_len: u32,
        ex: &mut Exec<'_, '_>,
    ) -> CmdResult {
        let n = self.num_blocks();
        if lba >= n {
            return Err(lba_oob());
        }
        let bs = u64::from(self.block_size());
        let want =
            ((alloc_len as usize).saturating_sub(8) / 16).clamp(1, MAX_LBA_STATUS_DESCRIPTORS);
        // (first LBA, number of blocks, deallocated)
        let mut descs: Vec<(u64, u64, bool)> = Vec::with_capacity(want.min(16));
        let mut at = lba;
        while at < n {
            let (mapped, bytes) = self
                .device()
                .provisioning_status(at * bs, (n - at) * bs)
                .map_err(|e| self.io_fail(&e, IoKind::Read))?;
            let blocks = (bytes / bs).clamp(1, n - at).min(u64::from(u32::MAX));
            let full = descs.len() == want;
            match descs.last_mut() {
                Some(d) if d.2 != mapped && d.1 + blocks <= u64::from(u32::MAX) => d.1 += blocks,
                _ if full => break,
                _ => descs.push((at, blocks, !mapped)),
            }
            at += blocks;
        }
        let mut b = Vec::with_capacity(8 + 16 * descs.len());
        b.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        for (first, blocks, dealloc) in descs {
            b.extend_from_slice(&first.to_be_bytes());
            b.extend_from_slice(&(blocks.min(u64::from(u32::MAX)) as u32).to_be_bytes());
            b.push(u8::from(dealloc)); // PROVISIONING STATUS: 0 mapped, 1 deallocated
            b.extend_from_slice(&[0; 3]);
        }
        ex.put(&b, alloc_len as usize);
        Ok(ScsiStatus::Good)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use twinsan_blockdev::{BlockDevice, DirectPreference, FileDevice, FileOptions};

    use crate::fuzzing::MemDisk;
    use crate::testkit::*;

    const BS: usize = 512;

    fn thin(blocks: u64) -> (Target, Arc<MemDisk>) {
        let disk = Arc::new(MemDisk::new_thin(blocks, BS as u32, true));
        (Target::new(vec![disk.clone()]), disk)
    }

    fn full(blocks: u64) -> Target {
        Target::new(vec![Arc::new(MemDisk::new(blocks, BS as u32, true))])
    }

    fn inquiry(page: u8) -> [u8; 6] {
        [0x12, 1, page, 0, 255, 0]
    }

    fn unmap_cdb(param_len: u16, anchor: bool) -> [u8; 10] {
        let l = param_len.to_be_bytes();
        [0x42, u8::from(anchor), 0, 0, 0, 0, 0, l[0], l[1], 0]
    }

    fn unmap_list(extents: &[(u64, u32)]) -> Vec<u8> {
        let mut p = vec![0u8; 8];
        for &(lba, n) in extents {
            p.extend_from_slice(&lba.to_be_bytes());
            p.extend_from_slice(&n.to_be_bytes());
            p.extend_from_slice(&[0; 4]);
        }
        let data_len = (p.len() - 2) as u16;
        let desc_len = (p.len() - 8) as u16;
        p[0..2].copy_from_slice(&data_len.to_be_bytes());
        p[2..4].copy_from_slice(&desc_len.to_be_bytes());
        p
    }

    fn unmap(t: &Target, extents: &[(u64, u32)]) {
        let p = unmap_list(extents);
        t.ok(0, &unmap_cdb(p.len() as u16, false), &p);
    }

    fn gls(lba: u64, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x9E;
        c[1] = 0x12;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    fn ws(opcode: u8, lba: u64, blocks: u32, flags: u8) -> Vec<u8> {
        if opcode == 0x41 {
            let l = (lba as u32).to_be_bytes();
            let n = (blocks as u16).to_be_bytes();
            vec![0x41, flags, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
        } else {
            let mut c = rw16(0x93, lba, blocks).to_vec();
            c[1] = flags;
            c
        }
    }

    #[test]
    fn vpd_and_read_capacity_golden_thin() {
        let (t, _) = thin(4096);
        assert_eq!(
            t.ok(0, &inquiry(0x00), &[]),
            vec![0, 0, 0, 6, 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
        );
        assert_eq!(
            t.ok(0, &inquiry(0xB2), &[]),
            vec![0x00, 0xB2, 0x00, 0x04, 0x00, 0xE4, 0x02, 0x00]
        );
        let bl = t.ok(0, &inquiry(0xB0), &[]);
        let mut want = vec![0u8; 64];
        want[1] = 0xB0;
        want[3] = 0x3C;
        want[4] = 0x00; // WSNZ=0
        want[5] = 0xFF; // MAXIMUM COMPARE AND WRITE LENGTH
        want[6..8].copy_from_slice(&8u16.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
        want[8..12].copy_from_slice(&16384u32.to_be_bytes()); // MAXIMUM TRANSFER LENGTH
        want[12..16].copy_from_slice(&2048u32.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
        want[20..24].copy_from_slice(&[0xFF; 4]); // MAXIMUM UNMAP LBA COUNT: no limit
        want[24..28].copy_from_slice(&256u32.to_be_bytes()); // MAXIMUM UNMAP BLOCK DESCRIPTORS
        want[28..32].copy_from_slice(&1u32.to_be_bytes()); // OPTIMAL UNMAP GRANULARITY
        want[32] = 0x80; // UGAVALID, alignment 0
        want[36..44].copy_from_slice(&32768u64.to_be_bytes()); // MAXIMUM WRITE SAME LENGTH
        assert_eq!(bl, want);
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9E;
        rc16[1] = 0x10;
        rc16[13] = 32;
        let d = t.ok(0, &rc16, &[]);
        let mut want = vec![0u8; 32];
        want[0..8].copy_from_slice(&4095u64.to_be_bytes());
        want[8..12].copy_from_slice(&512u32.to_be_bytes());
        want[14] = 0xC0; // LBPME, LBPRZ; exponent 0
        assert_eq!(d, want);
        // Fully provisioned: no page 0xB2, LBPME=0.
        let f = full(64);
        assert_eq!(f.check(0, &inquiry(0xB2), &[]), INVALID_CDB);
        assert_eq!(f.ok(0, &rc16, &[])[14], 0);
    }

    #[test]
    fn unmap_punches_holes_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("thin.img");
        let opts = FileOptions {
            create_size_bytes: Some(16 << 20),
            direct: DirectPreference::Off,
            ..FileOptions::default()
        };
        let dev = Arc::new(FileDevice::open(&path, &opts).unwrap());
        assert!(dev.supports_discard());
        let gran = (dev.physical_block_size() as usize / BS).max(1) as u32;
        let t = Target::new(vec![dev.clone()]);
        // VPD 0xB0 reports the file system block as the unmap granularity.
        let bl = t.ok(0, &inquiry(0xB0), &[]);
        assert_eq!(&bl[28..32], &gran.to_be_bytes());
        let data = vec![0x5Au8; 8 << 20];
        for (i, c) in data.chunks(1 << 20).enumerate() {
            t.write(0, (i * 2048) as u64, c, BS);
        }
        t.ok(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]); // SYNCHRONIZE CACHE
        let before = std::fs::metadata(&path).unwrap().blocks();
        // Two descriptors: [0, 4 MiB) and [6 MiB, 7 MiB).
        unmap(&t, &[(0, 8192), (12288, 2048)]);
        dev.flush().unwrap();
        let after = std::fs::metadata(&path).unwrap().blocks();
        assert!(
            after + 5 * (1 << 20) / 512 <= before,
            "st_blocks {before} -> {after}"
        );
        assert!(t.read(0, 0, 8192).iter().all(|&b| b == 0));
        assert!(t.read(0, 12288, 2048).iter().all(|&b| b == 0));
        assert!(t.read(0, 8192, 4096).iter().all(|&b| b == 0x5A));
        // GET LBA STATUS sees the holes.
        let d = t.ok(0, &gls(0, 8 + 4 * 16), &[]);
        let desc = |i: usize| {
            let e = &d[8 + 16 * i..24 + 16 * i];
            (
                u64::from_be_bytes(e[0..8].try_into().unwrap()),
                u32::from_be_bytes(e[8..12].try_into().unwrap()),
                e[12],
            )
        };
        assert_eq!(desc(0), (0, 8192, 1));
        assert_eq!(desc(1), (8192, 4096, 0));
        assert_eq!(desc(2), (12288, 2048, 1));
        assert_eq!(desc(3), (14336, 2048, 0));
        // An unaligned UNMAP zeroes its blocks (LBPRZ) even where it cannot deallocate.
        unmap(&t, &[(8193, 3)]);
        assert_eq!(t.read(0, 8192, 5), {
            let mut v = vec![0x5A; 5 * BS];
            v[BS..4 * BS].fill(0);
            v
        });
        // WRITE SAME with UNMAP deallocates as well.
        t.write(0, 16384, &data[..2 << 20], BS);
        dev.flush().unwrap();
        let written = std::fs::metadata(&path).unwrap().blocks();
        t.ok(0, &ws(0x93, 16384, 4096, 0x08), &[0xEE; BS]);
        dev.flush().unwrap();
        assert!(std::fs::metadata(&path).unwrap().blocks() + 2048 <= written);
        assert!(t.read(0, 16384, 4096).iter().all(|&b| b == 0));
    }

    #[test]
    fn unmap_parameter_list_checks() {
        let (t, disk) = thin(1024);
        t.write(0, 0, &vec![1u8; 1024 * BS], BS);
        let ok_list = unmap_list(&[(0, 8)]);
        // ANCHOR is not supported; an empty list is fine.
        assert_eq!(t.check(0, &unmap_cdb(24, true), &ok_list), INVALID_CDB);
        t.ok(0, &unmap_cdb(0, false), &[]);
        // Shorter than the header, or than the CDB says.
        assert_eq!(t.check(0, &unmap_cdb(6, false), &ok_list[..6]), PLLE);
        assert_eq!(t.check(0, &unmap_cdb(24, false), &ok_list[..20]), PLLE);
        // Header lengths beyond the parameter list.
        let mut bad = ok_list.clone();
        bad[3] = 32;
        assert_eq!(t.check(0, &unmap_cdb(24, false), &bad), PLLE);
        // Too many descriptors.
        let many: Vec<(u64, u32)> = (0..257).map(|i| (i, 1)).collect();
        let p = unmap_list(&many);
        assert_eq!(
            t.check(0, &unmap_cdb(p.len() as u16, false), &p),
            INVALID_PARAM
        );
        // One descriptor out of range: nothing is unmapped.
        let p = unmap_list(&[(0, 8), (1020, 5)]);
        assert_eq!(t.check(0, &unmap_cdb(p.len() as u16, false), &p), LBA_OOB);
        let p = unmap_list(&[(u64::MAX, 1)]);
        assert_eq!(t.check(0, &unmap_cdb(p.len() as u16, false), &p), LBA_OOB);
        assert_eq!(t.read(0, 0, 8), vec![1u8; 8 * BS]);
        // An incomplete last descriptor is ignored; 0-block descriptors are no-ops.
        let mut p = unmap_list(&[(0, 4), (1024, 0)]);
        p.extend_from_slice(&[0xFF; 8]);
        let dl = (p.len() - 8) as u16;
        p[2..4].copy_from_slice(&dl.to_be_bytes());
        let pl = (p.len() - 2) as u16;
        p[0..2].copy_from_slice(&pl.to_be_bytes());
        t.ok(0, &unmap_cdb(p.len() as u16, false), &p);
        assert!(t.read(0, 0, 4).iter().all(|&b| b == 0));
        assert_eq!(t.read(0, 4, 1), vec![1u8; BS]);
        assert_eq!(
            disk.bad_requests.load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        // Fully provisioned LUs do not implement UNMAP.
        assert_eq!(
            full(64).check(0, &unmap_cdb(24, false), &ok_list),
            INVALID_OPCODE
        );
        // Write-protected LUs refuse it.
        let mut cfg = crate::LunConfig::new(uuid(0));
        cfg.read_only = true;
        let ro = Target::with(vec![(cfg, Arc::new(MemDisk::new_thin(64, 512, true)) as _)]);
        assert_eq!(ro.check(0, &unmap_cdb(24, false), &ok_list).0, 0x07);
    }

    #[test]
    fn write_same_unmap_and_zero_length() {
        let (t, _) = thin(4096);
        t.write(0, 100, &vec![0xFF; 64 * BS], BS);
        // UNMAP=1 deallocates whatever the block holds; the range reads zeros.
        t.ok(0, &ws(0x41, 100, 16, 0x08), &[0xAB; BS]);
        assert!(t.read(0, 100, 16).iter().all(|&b| b == 0));
        t.ok(0, &ws(0x93, 116, 16, 0x09), &[]); // UNMAP + NDOB
        assert!(t.read(0, 116, 16).iter().all(|&b| b == 0));
        assert_eq!(t.read(0, 132, 1), vec![0xFF; BS]);
        let d = t.ok(0, &gls(100, 24), &[]);
        assert_eq!(&d[8..20], &[0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 32]);
        assert_eq!(d[20], 1, "deallocated");
        // Without UNMAP the block is written (and mapped).
        t.ok(0, &ws(0x41, 100, 2, 0), &[0x11; BS]);
        assert_eq!(t.read(0, 100, 2), vec![0x11; 2 * BS]);
        // 0 blocks: to the end of the medium.
        t.write(0, 4090, &vec![0x77; 6 * BS], BS);
        t.ok(0, &ws(0x93, 4093, 0, 0x08), &[0; BS]);
        assert_eq!(t.read(0, 4090, 3), vec![0x77; 3 * BS]);
        assert!(t.read(0, 4093, 3).iter().all(|&b| b == 0));
        assert_eq!(t.check(0, &ws(0x93, 4096, 0, 0x08), &[0; BS]), LBA_OOB);
        // ANCHOR (with or without UNMAP), too long, wrong data-out size.
        assert_eq!(t.check(0, &ws(0x41, 0, 1, 0x10), &[0; BS]), INVALID_CDB);
        assert_eq!(t.check(0, &ws(0x41, 0, 1, 0x18), &[0; BS]), INVALID_CDB);
        let (big, _) = thin(40000);
        assert_eq!(
            big.check(0, &ws(0x93, 0, 32769, 0x08), &[0; BS]),
            INVALID_CDB
        );
        assert_eq!(big.check(0, &ws(0x93, 0, 0, 0x08), &[0; BS]), INVALID_CDB);
        big.ok(0, &ws(0x93, 40000 - 32768, 0, 0x08), &[0; BS]);
        assert_eq!(t.check(0, &ws(0x41, 0, 1, 0x08), &[0; BS / 2]).0, ILLEGAL);
        assert_eq!(t.check(0, &ws(0x41, 0, 1, 0x08), &[0; 2 * BS]).0, ILLEGAL);
        // Not thin: UNMAP=1 is an invalid field.
        assert_eq!(
            full(64).check(0, &ws(0x41, 0, 1, 0x08), &[0; BS]),
            INVALID_CDB
        );
    }

    #[test]
    fn get_lba_status_golden() {
        let (t, _) = thin(64);
        t.write(0, 8, &vec![3u8; 8 * BS], BS);
        let d = t.ok(0, &gls(0, 255), &[]);
        let mut want = vec![0, 0, 0, 52, 0, 0, 0, 0];
        for (lba, n, st) in [(0u64, 8u32, 1u8), (8, 8, 0), (16, 48, 1)] {
            want.extend_from_slice(&lba.to_be_bytes());
            want.extend_from_slice(&n.to_be_bytes());
            want.extend_from_slice(&[st, 0, 0, 0]);
        }
        assert_eq!(d, want);
        // Starting inside an extent; one descriptor fits in 24 bytes.
        let d = t.ok(0, &gls(10, 24), &[]);
        assert_eq!(
            d,
            vec![0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 6, 0, 0, 0, 0]
        );
        // Truncated by the allocation length, still GOOD.
        assert_eq!(t.ok(0, &gls(0, 10), &[]).len(), 10);
        t.ok(0, &gls(63, 24), &[]);
        assert_eq!(t.check(0, &gls(64, 24), &[]), LBA_OOB);
        assert_eq!(t.check(0, &gls(u64::MAX, 24), &[]), LBA_OOB);
        // Fully provisioned: everything mapped.
        let d = full(64).ok(0, &gls(5, 24), &[]);
        assert_eq!(
            &d[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 59, 0, 0, 0, 0]
        );
    }

    #[test]
    fn report_supported_opcodes_lists_unmap_only_when_thin() {
        let all = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        let one = [0xA3, 0x0C, 0x01, 0x42, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        let one_rctd = [0xA3, 0x0C, 0x81, 0x42, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        let has_unmap = |d: &[u8]| {
            let mut at = 4;
            let mut found = false;
            while at + 8 <= d.len() {
                found |= d[at] == 0x42;
                at += if d[at + 5] & 2 != 0 { 20 } else { 8 };
            }
            found
        };
        let (t, _) = thin(64);
        assert!(has_unmap(&t.ok(0, &all, &[])));
        let d = t.ok(0, &one, &[]);
        assert_eq!(&d[..4], &[0, 3, 0, 10]);
        assert_eq!(&d[4..], &[0x42, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0x05]);
        let f = full(64);
        let d = f.ok(0, &all, &[]);
        assert!(!has_unmap(&d));
        let mut rctd = all;
        rctd[2] = 0x80;
        let d = f.ok(0, &rctd, &[]);
        assert!(!has_unmap(&d));
        assert_eq!(
            u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize,
            d.len() - 4
        );
        assert_eq!(f.ok(0, &one, &[]), vec![0, 1, 0, 0]);
        let d = f.ok(0, &one_rctd, &[]);
        assert_eq!(&d[..4], &[0, 0x81, 0, 0]);
        assert_eq!(d.len(), 16);
    }
}
