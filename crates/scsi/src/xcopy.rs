//! The copy manager (SPC-4 6.4, 6.18): EXTENDED COPY (LID1) with identification CSCD
//! descriptors and block-to-block segment descriptors, and RECEIVE COPY RESULTS
//! (COPY STATUS, OPERATING PARAMETERS).
//!
//! Owns: parameter list parsing and validation, the mapping of CSCD descriptors to the
//! LUs of the target, the copy itself, and the per-LU held copy status.
//!
//! Copy targets: a CSCD identification descriptor (0xE4) names a LU by an LU-associated
//! NAA designator from VPD page 0x83 — the NAA-6 designator [`crate::inquiry::naa6`]
//! derives from the LU's UUID, so the same descriptor works on both heads. The copy
//! manager (the LU the command was sent to) finds it among the LUs of its
//! [`crate::LunMap`] (itself included), so copies work within a LU and between LUs of
//! the same target. A descriptor that matches no LU is COPY ABORTED / UNREACHABLE COPY
//! TARGET.
//!
//! Execution is synchronous, on the calling thread, in chunks of
//! [`limits::CHUNK_BYTES`]; total work per command is bounded by the limits reported in
//! OPERATING PARAMETERS ([`MAX_SEGMENT_DESCRIPTORS`] × [`MAX_SEGMENT_BYTES`] = 256 MiB).
//! Every segment is validated before the first byte is copied (descriptor indexes,
//! LBA ranges, block sizes, reservations, write protection), so a rejected list changes
//! nothing. Reads and writes go through each LU's device; writes enter the destination
//! LU's write gate (so they are ordered with COMPARE AND WRITE / ORWRITE). Overlapping
//! source and destination ranges of one LU are copied back to front when needed, so
//! the result equals copying through a buffer.
//!
//! Access rules: the source must be readable and the destination writable by the I_T
//! nexus that sent EXTENDED COPY under each LU's RESERVE(6) and persistent reservations
//! (the copy acts on that nexus's behalf); otherwise the command ends with RESERVATION
//! CONFLICT and nothing is copied.
//!
//! Errors (libiscsi's ExtendedCopy tests check these): parameter list shorter than its
//! header says, or descriptor lists longer than MAXIMUM DESCRIPTOR LIST LENGTH:
//! PARAMETER LIST LENGTH ERROR; more CSCD / segment descriptors than supported: TOO MANY
//! TARGET / SEGMENT DESCRIPTORS; other descriptor types: UNSUPPORTED TARGET / SEGMENT
//! DESCRIPTOR TYPE CODE; a segment naming a missing descriptor: COPY ABORTED /
//! UNREACHABLE COPY TARGET; a segment outside its LU: COPY ABORTED / NO ADDITIONAL
//! SENSE INFORMATION with the sense-key-specific segment pointer at the offending LBA
//! field; I/O errors: COPY ABORTED with the copy target's additional sense code.
//!
//! Held data: with LIST ID USAGE 00b the status of the copy (in progress, completed,
//! completed with errors; segments processed; bytes transferred) is kept per I_T
//! nexus and list identifier for RECEIVE COPY RESULTS / COPY STATUS, until the same
//! list identifier is reused, the nexus is lost, the LU is reset, or
//! [`MAX_HELD_STATUS`] newer ones push it out. An EXTENDED COPY reusing the list
//! identifier of a copy still running for the same nexus is OPERATION IN PROGRESS.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock, Weak};

use crate::api::ScsiStatus;
use crate::block::scratch;
use crate::inquiry;
use crate::lun::{limits, CmdResult, Exec, Fail, IoKind, LogicalUnit};
use crate::pr::Access;
use crate::sense::{asc, FieldPointer, Sense};

/// MAXIMUM CSCD DESCRIPTOR COUNT.
pub const MAX_CSCD_DESCRIPTORS: u16 = 8;
/// MAXIMUM SEGMENT DESCRIPTOR COUNT.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 8;
/// MAXIMUM DESCRIPTOR LIST LENGTH (CSCD + segment descriptor lists), in bytes.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 = 1024;
/// MAXIMUM SEGMENT LENGTH, in bytes.
pub const MAX_SEGMENT_BYTES: u32 = 32 << 20;
/// Held copy statuses kept per LU (oldest dropped first).
pub const MAX_HELD_STATUS: usize = 64;

/// COPY ABORTED sense key.
const COPY_ABORTED: u8 = 0x0A;
/// UNREACHABLE COPY TARGET.
const UNREACHABLE_COPY_TARGET: (u8, u8) = (0x08, 0x04);
/// OPERATION IN PROGRESS.
const OPERATION_IN_PROGRESS: (u8, u8) = (0x00, 0x16);
/// TOO MANY TARGET DESCRIPTORS.
const TOO_MANY_TARGET_DESCRIPTORS: (u8, u8) = (0x26, 0x06);
/// UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
const UNSUPPORTED_TARGET_DESCRIPTOR: (u8, u8) = (0x26, 0x07);
/// TOO MANY SEGMENT DESCRIPTORS.
const TOO_MANY_SEGMENT_DESCRIPTORS: (u8, u8) = (0x26, 0x08);
/// UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
const UNSUPPORTED_SEGMENT_DESCRIPTOR: (u8, u8) = (0x26, 0x09);

/// CSCD descriptor type code: identification descriptor.
pub const CSCD_IDENTIFICATION: u8 = 0xE4;
/// Segment descriptor type code: block device to block device.
pub const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;
/// Length of an identification CSCD descriptor.
const CSCD_LEN: usize = 32;
/// Length of a block-to-block segment descriptor.
const SEGMENT_LEN: usize = 28;
/// Parameter list header length.
const HEADER_LEN: usize = 16;

/// RECEIVE COPY RESULTS service actions implemented.
pub mod rcr_sa {
    /// COPY STATUS.
    pub const COPY_STATUS: u8 = 0x00;
    /// OPERATING PARAMETERS.
    pub const OPERATING_PARAMETERS: u8 = 0x03;
}

/// Status of one copy, as COPY STATUS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    InProgress,
    Done,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    nexus: u64,
    list_id: u8,
    state: State,
    segments: u16,
    bytes: u64,
}

/// Copy manager state of one LU: the LUs it can reach and the held copy statuses.
#[derive(Debug, Default)]
pub(crate) struct CopyManager {
    /// The LUs of the target this LU belongs to (set by [`link_peers`]).
    peers: RwLock<Vec<Weak<LogicalUnit>>>,
    held: Mutex<VecDeque<Held>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CopyManager {
    /// Forget what was held for an I_T nexus (nexus loss).
    pub(crate) fn forget_nexus(&self, nexus: u64) {
        lock(&self.held).retain(|h| h.nexus != nexus || h.state == State::InProgress);
    }

    /// Forget everything held (logical unit reset).
    pub(crate) fn forget_all(&self) {
        lock(&self.held).retain(|h| h.state == State::InProgress);
    }

    fn find(&self, nexus: u64, list_id: u8) -> Option<Held> {
        lock(&self.held)
            .iter()
            .find(|h| h.nexus == nexus && h.list_id == list_id)
            .copied()
    }

    /// Register a copy starting; `false` if one with this list id is still running.
    fn start(&self, nexus: u64, list_id: u8) -> bool {
        let mut held = lock(&self.held);
        if let Some(i) = held
            .iter()
            .position(|h| h.nexus == nexus && h.list_id == list_id)
        {
            if held[i].state == State::InProgress {
                return false;
            }
            held.remove(i);
        }
        if held.len() >= MAX_HELD_STATUS {
            if let Some(i) = held.iter().position(|h| h.state != State::InProgress) {
                held.remove(i);
            }
        }
        held.push_back(Held {
            nexus,
            list_id,
            state: State::InProgress,
            segments: 0,
            bytes: 0,
        });
        true
    }

    fn update(&self, nexus: u64, list_id: u8, f: impl FnOnce(&mut Held)) {
        if let Some(h) = lock(&self.held)
            .iter_mut()
            .find(|h| h.nexus == nexus && h.list_id == list_id)
        {
            f(h);
        }
    }
}

/// Let every LU of a target reach the others as copy targets (called by
/// [`crate::LunMap::new`]).
pub(crate) fn link_peers(luns: &[(u64, Arc<LogicalUnit>)]) {
    let all: Vec<Weak<LogicalUnit>> = luns.iter().map(|(_, lu)| Arc::downgrade(lu)).collect();
    for (_, lu) in luns {
        *lu.copy.peers.write().unwrap_or_else(|e| e.into_inner()) = all.clone();
    }
}

/// OPERATING PARAMETERS parameter data.
pub fn operating_parameters() -> Vec<u8> {
    let mut b = vec![0u8; 44];
    // SNLID=0: no EXTENDED COPY (LID4).
    b[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    b[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    b[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    b[16..20].copy_from_slice(&MAX_SEGMENT_BYTES.to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE:
    // 0 (no inline data, no RECEIVE DATA, no stream devices).
    b[34..36].copy_from_slice(&1u16.to_be_bytes()); // TOTAL CONCURRENT COPIES
    b[36] = 1; // MAXIMUM CONCURRENT COPIES
               // DATA SEGMENT / INLINE DATA / HELD DATA GRANULARITY: 0.
    let implemented = [SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION];
    b[43] = implemented.len() as u8;
    b.extend_from_slice(&implemented);
    let len = (b.len() - 4) as u32;
    b[0..4].copy_from_slice(&len.to_be_bytes());
    b
}

fn copy_status_data(h: &Held) -> Vec<u8> {
    let status = match h.state {
        State::InProgress => 0x00,
        State::Done => 0x01,
        State::Failed => 0x02,
    };
    // TRANSFER COUNT UNITS: the smallest power of 1024 the count fits in 32 bits with.
    let mut units = 0u8;
    let mut count = h.bytes;
    while count > u64::from(u32::MAX) {
        count >>= 10;
        units += 1;
    }
    let mut b = vec![0u8; 12];
    b[0..4].copy_from_slice(&8u32.to_be_bytes());
    b[4] = status; // HDD=0
    b[5..7].copy_from_slice(&h.segments.to_be_bytes());
    b[7] = units;
    b[8..12].copy_from_slice(&(count as u32).to_be_bytes());
    b
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn plle() -> Fail {
    Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into()
}

/// ILLEGAL REQUEST with `code`, pointing at parameter list byte `at`.
fn param_error(code: (u8, u8), at: usize) -> Fail {
    let mut s = Sense::invalid_param(at.min(usize::from(u16::MAX)) as u16, None);
    s.asc = code.0;
    s.ascq = code.1;
    s.into()
}

/// COPY ABORTED with `code`, the segment pointer at parameter list byte `at`.
fn aborted(code: (u8, u8), at: usize) -> Fail {
    let mut s = param_error(code, at);
    if let Fail::Check(ref mut sense) = s {
        sense.key = COPY_ABORTED;
    }
    s
}

/// A copy target: the copy manager itself, or another LU of the target.
enum Target {
    Me,
    Peer(Arc<LogicalUnit>),
}

/// One validated block-to-block segment.
#[derive(Debug, Clone, Copy)]
struct Segment {
    src: usize,
    dst: usize,
    src_lba: u64,
    dst_lba: u64,
    bytes: u64,
    /// Offset of the descriptor in the parameter list (for segment pointers).
    at: usize,
}

impl LogicalUnit {
    fn target<'a>(&'a self, t: &'a Target) -> &'a LogicalUnit {
        match t {
            Target::Me => self,
            Target::Peer(lu) => lu,
        }
    }

    /// The LU whose NAA designator is `naa`.
    fn find_copy_target(&self, naa: &[u8]) -> Option<Target> {
        if inquiry::naa6(self.config())[..] == *naa {
            return Some(Target::Me);
        }
        let peers = self.copy.peers.read().unwrap_or_else(|e| e.into_inner());
        peers
            .iter()
            .filter_map(Weak::upgrade)
            .find(|lu| inquiry::naa6(lu.config())[..] == *naa)
            .map(Target::Peer)
    }

    /// Parse an identification CSCD descriptor at `at` into its copy target.
    fn resolve_cscd(&self, d: &[u8], at: usize) -> Result<Target, Fail> {
        if d[1] & 0x1F != 0 {
            // Only block devices (peripheral device type 0).
            return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, at + 1));
        }
        // Designation descriptor in bytes 4..24: association LU, NAA, 16 bytes.
        let association = (d[5] >> 4) & 0x03;
        let designator_type = d[5] & 0x0F;
        let len = usize::from(d[7]);
        if len > 16 {
            return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, at + 7));
        }
        let target = if association == 0 && designator_type == 3 {
            self.find_copy_target(&d[8..8 + len])
        } else {
            None
        };
        let Some(target) = target else {
            return Err(aborted(UNREACHABLE_COPY_TARGET, at + 4));
        };
        let disk_block_length = u32::from_be_bytes([0, d[29], d[30], d[31]]);
        if disk_block_length != self.target(&target).block_size() {
            return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, at + 29));
        }
        Ok(target)
    }

    /// EXTENDED COPY (LID1).
    pub(crate) fn extended_copy(&self, param_len: u32, ex: &mut Exec<'_, '_>) -> CmdResult {
        ex.xfer = Some(u64::from(param_len));
        if param_len == 0 {
            return Ok(ScsiStatus::Good);
        }
        let Some(p) = usize::try_from(param_len)
            .ok()
            .and_then(|len| ex.req.data_out.get(..len))
        else {
            return Err(plle());
        };
        if p.len() < HEADER_LEN {
            return Err(plle());
        }
        let list_id = p[0];
        let usage = (p[1] >> 3) & 0x03;
        if usage == 0b01 {
            return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, 1));
        }
        if usage == 0b11 && list_id != 0 {
            return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, 0));
        }
        let cscd_len = usize::from(be16(p, 2));
        let seg_len = be32(p, 8) as usize;
        let inline_len = be32(p, 12) as usize;
        let lists = cscd_len as u64 + seg_len as u64;
        if HEADER_LEN as u64 + lists + inline_len as u64 > p.len() as u64
            || lists > u64::from(MAX_DESCRIPTOR_LIST_LENGTH)
        {
            return Err(plle());
        }
        if inline_len != 0 {
            return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, 12));
        }

        // CSCD descriptors: count and type first, then what they name.
        let cscd_start = HEADER_LEN;
        let mut cscd_at = Vec::new();
        let mut at = cscd_start;
        while at < cscd_start + cscd_len {
            if cscd_at.len() == usize::from(MAX_CSCD_DESCRIPTORS) {
                return Err(param_error(TOO_MANY_TARGET_DESCRIPTORS, at));
            }
            if p[at] != CSCD_IDENTIFICATION {
                return Err(param_error(UNSUPPORTED_TARGET_DESCRIPTOR, at));
            }
            if at + CSCD_LEN > cscd_start + cscd_len {
                return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, 2));
            }
            cscd_at.push(at);
            at += CSCD_LEN;
        }
        let seg_start = cscd_start + cscd_len;
        let mut seg_at = Vec::new();
        let mut at = seg_start;
        while at < seg_start + seg_len {
            if seg_at.len() == usize::from(MAX_SEGMENT_DESCRIPTORS) {
                return Err(param_error(TOO_MANY_SEGMENT_DESCRIPTORS, at));
            }
            if p[at] != SEGMENT_BLOCK_TO_BLOCK {
                return Err(param_error(UNSUPPORTED_SEGMENT_DESCRIPTOR, at));
            }
            if at + 4 > seg_start + seg_len || usize::from(be16(p, at + 2)) != SEGMENT_LEN - 4 {
                return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, at + 2));
            }
            if at + SEGMENT_LEN > seg_start + seg_len {
                return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, 8));
            }
            seg_at.push(at);
            at += SEGMENT_LEN;
        }
        let targets = cscd_at
            .iter()
            .map(|&at| self.resolve_cscd(&p[at..at + CSCD_LEN], at))
            .collect::<Result<Vec<Target>, Fail>>()?;

        // Validate every segment before copying anything.
        let mut segments = Vec::with_capacity(seg_at.len());
        for &at in &seg_at {
            let s = &p[at..at + SEGMENT_LEN];
            let dc = s[1] & 0x02 != 0;
            let (src, dst) = (usize::from(be16(s, 4)), usize::from(be16(s, 6)));
            let (Some(src_t), Some(dst_t)) = (targets.get(src), targets.get(dst)) else {
                let field = if src >= targets.len() { at + 4 } else { at + 6 };
                return Err(aborted(UNREACHABLE_COPY_TARGET, field));
            };
            let (src_lu, dst_lu) = (self.target(src_t), self.target(dst_t));
            let (sbs, dbs) = (
                u64::from(src_lu.block_size()),
                u64::from(dst_lu.block_size()),
            );
            let blocks = u64::from(be16(s, 10));
            let bytes = blocks * if dc { dbs } else { sbs };
            if bytes % sbs != 0 || bytes % dbs != 0 || bytes > u64::from(MAX_SEGMENT_BYTES) {
                return Err(param_error(asc::INVALID_FIELD_IN_PARAM_LIST, at + 10));
            }
            let (src_lba, dst_lba) = (be64(s, 12), be64(s, 20));
            if src_lu.check_range(src_lba, bytes / sbs).is_err() {
                return Err(aborted(asc::NO_ADDITIONAL_SENSE, at + 12));
            }
            if dst_lu.check_range(dst_lba, bytes / dbs).is_err() {
                return Err(aborted(asc::NO_ADDITIONAL_SENSE, at + 20));
            }
            if bytes > 0 {
                if !src_lu.reservation_allows(ex.req.nexus, Access::Read)
                    || !dst_lu.reservation_allows(ex.req.nexus, Access::Write)
                {
                    return Err(Fail::Conflict);
                }
                if dst_lu.write_protected() {
                    return Err(aborted(asc::WRITE_PROTECTED, at + 6));
                }
            }
            segments.push(Segment {
                src,
                dst,
                src_lba,
                dst_lba,
                bytes,
                at,
            });
        }

        let nexus = ex.req.nexus.id;
        let hold = usage != 0b11;
        if hold && !self.copy.start(nexus, list_id) {
            return Err(Sense::illegal(OPERATION_IN_PROGRESS).into());
        }
        let mut result = Ok(ScsiStatus::Good);
        for (i, seg) in segments.iter().enumerate() {
            if let Err(f) = self.copy_segment(&targets, seg, ex) {
                result = Err(f);
                break;
            }
            if hold {
                self.copy.update(nexus, list_id, |h| {
                    h.segments = (i + 1) as u16;
                    h.bytes += seg.bytes;
                });
            }
        }
        ex.data_in.clear();
        if hold {
            let state = if result.is_ok() {
                State::Done
            } else {
                State::Failed
            };
            if usage == 0b00 {
                self.copy.update(nexus, list_id, |h| h.state = state);
            } else {
                // LIST ID USAGE 10b: the list identifier was only reserved while running.
                lock(&self.copy.held).retain(|h| h.nexus != nexus || h.list_id != list_id);
            }
        }
        result
    }

    /// Copy one validated segment, in chunks, through `ex.data_in` as the buffer.
    fn copy_segment(
        &self,
        targets: &[Target],
        seg: &Segment,
        ex: &mut Exec<'_, '_>,
    ) -> Result<(), Fail> {
        if seg.bytes == 0 {
            return Ok(());
        }
        let src = self.target(&targets[seg.src]);
        let dst = self.target(&targets[seg.dst]);
        let (sbs, dbs) = (u64::from(src.block_size()), u64::from(dst.block_size()));
        let (src_off, dst_off) = (seg.src_lba * sbs, seg.dst_lba * dbs);
        // Chunks are whole blocks of both LUs (block sizes are powers of two).
        let unit = sbs.max(dbs);
        let chunk = (limits::CHUNK_BYTES / unit).max(1) * unit;
        let n_chunks = seg.bytes.div_ceil(chunk);
        // Same LU, destination after an overlapping source: back to front.
        let backwards =
            std::ptr::eq(src, dst) && dst_off > src_off && dst_off < src_off + seg.bytes;
        // The copy target's error, reported as COPY ABORTED with the segment pointer.
        let to_copy_aborted = |f: Fail| match f {
            Fail::Check(mut s) => {
                s.key = COPY_ABORTED;
                s.field = Some(FieldPointer {
                    in_cdb: false,
                    byte: seg.at.min(usize::from(u16::MAX)) as u16,
                    bit: None,
                });
                Fail::Check(s)
            }
            other => other,
        };
        for k in 0..n_chunks {
            let k = if backwards { n_chunks - 1 - k } else { k };
            let pos = k * chunk;
            let n = chunk.min(seg.bytes - pos);
            let buf = scratch(ex.data_in, n as usize);
            src.device()
                .read_at(buf, src_off + pos)
                .map_err(|e| to_copy_aborted(src.io_fail(&e, IoKind::Read)))?;
            let first = (dst_off + pos) / dbs;
            let _g = dst.gate.write(first, first + n / dbs);
            dst.device()
                .write_at(buf, dst_off + pos, false)
                .map_err(|e| to_copy_aborted(dst.io_fail(&e, IoKind::Write)))?;
        }
        Ok(())
    }

    /// RECEIVE COPY RESULTS (COPY STATUS, OPERATING PARAMETERS).
    pub(crate) fn receive_copy_results(
        &self,
        service_action: u8,
        list_id: u8,
        alloc_len: u32,
        ex: &mut Exec<'_, '_>,
    ) -> CmdResult {
        let data = match service_action {
            rcr_sa::COPY_STATUS => match self.copy.find(ex.req.nexus.id, list_id) {
                Some(h) => copy_status_data(&h),
                None => return Err(Sense::invalid_cdb(2, None).into()),
            },
            rcr_sa::OPERATING_PARAMETERS => operating_parameters(),
            _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
        };
        ex.put(&data, alloc_len as usize);
        Ok(ScsiStatus::Good)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use twinsan_blockdev::BlockDevice;

    use crate::api::ScsiStatus;
    use crate::fuzzing::MemDisk;
    use crate::testkit::*;
    use crate::{inquiry, LunConfig};

    const BS: usize = 512;

    fn two_luns(blocks: u64) -> Target {
        Target::new(vec![
            Arc::new(MemDisk::new(blocks, BS as u32, true)) as Arc<dyn BlockDevice>,
            Arc::new(MemDisk::new(blocks, BS as u32, true)),
        ])
    }

    /// Identification CSCD descriptor naming LUN `lun` of a [`Target`].
    fn cscd(lun: u64) -> Vec<u8> {
        cscd_bs(lun, BS as u32)
    }

    fn cscd_bs(lun: u64, bs: u32) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0] = 0xE4;
        d[4] = 0x01; // binary
        d[5] = 0x03; // association LU, NAA
        d[7] = 16;
        d[8..24].copy_from_slice(&inquiry::naa6(&LunConfig::new(uuid(lun))));
        d[29..32].copy_from_slice(&bs.to_be_bytes()[1..]);
        d
    }

    fn segment(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
        let mut s = vec![0u8; 28];
        s[0] = 0x02;
        s[2..4].copy_from_slice(&24u16.to_be_bytes());
        s[4..6].copy_from_slice(&src.to_be_bytes());
        s[6..8].copy_from_slice(&dst.to_be_bytes());
        s[10..12].copy_from_slice(&blocks.to_be_bytes());
        s[12..20].copy_from_slice(&src_lba.to_be_bytes());
        s[20..28].copy_from_slice(&dst_lba.to_be_bytes());
        s
    }

    fn list(list_id: u8, usage: u8, cscds: &[Vec<u8>], segs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[0] = list_id;
        p[1] = usage << 3;
        let c: Vec<u8> = cscds.concat();
        let s: Vec<u8> = segs.concat();
        p[2..4].copy_from_slice(&(c.len() as u16).to_be_bytes());
        p[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
        p.extend_from_slice(&c);
        p.extend_from_slice(&s);
        p
    }

    fn xcopy_cdb(len: usize) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x83;
        c[10..14].copy_from_slice(&(len as u32).to_be_bytes());
        c
    }

    fn rcr(sa: u8, list_id: u8, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x84;
        c[1] = sa;
        c[2] = list_id;
        c[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
        (0..blocks * BS)
            .map(|i| (i / 7) as u8 ^ seed.wrapping_mul(31))
            .collect()
    }

    fn xcopy(t: &Target, lun: u64, p: &[u8]) -> (crate::api::ScsiResponse, Vec<u8>) {
        t.run(&nexus(1), lun, &xcopy_cdb(p.len()), p)
    }

    #[test]
    fn copy_within_and_between_luns() {
        let t = two_luns(256);
        let a = pattern(32, 1);
        t.write(0, 0, &a, BS);
        // Within LUN 0.
        let p = list(1, 0b10, &[cscd(0)], &[segment(0, 0, 32, 0, 200)]);
        t.ok(0, &xcopy_cdb(p.len()), &p);
        assert_eq!(t.read(0, 200, 32), a);
        // LUN 0 → LUN 1, sent to LUN 0 (the copy manager is the source) and, the other
        // way round, LUN 1 → LUN 0 sent to LUN 0 (the copy manager is the destination).
        let p = list(2, 0b10, &[cscd(0), cscd(1)], &[segment(0, 1, 32, 0, 10)]);
        t.ok(0, &xcopy_cdb(p.len()), &p);
        assert_eq!(t.read(1, 10, 32), a);
        let p = list(3, 0b10, &[cscd(1), cscd(0)], &[segment(0, 1, 16, 10, 100)]);
        t.ok(0, &xcopy_cdb(p.len()), &p);
        assert_eq!(t.read(0, 100, 16), a[..16 * BS]);
        // Sent to LUN 1 naming only LUN 0 and itself, several segments.
        let p = list(
            4,
            0b00,
            &[cscd(0), cscd(1)],
            &[
                segment(0, 1, 8, 0, 50),
                segment(1, 0, 8, 50, 150),
                segment(0, 0, 0, 0, 0),
            ],
        );
        t.ok(1, &xcopy_cdb(p.len()), &p);
        assert_eq!(t.read(0, 150, 8), a[..8 * BS]);
        // Parameter list length 0: nothing to do.
        t.ok(0, &xcopy_cdb(0), &[]);
    }

    #[test]
    fn overlapping_copy_within_a_lun_is_a_move() {
        let t = two_luns(64);
        let a = pattern(40, 9);
        t.write(0, 0, &a, BS);
        let p = list(1, 0b10, &[cscd(0)], &[segment(0, 0, 32, 0, 8)]);
        t.ok(0, &xcopy_cdb(p.len()), &p);
        assert_eq!(t.read(0, 8, 32), a[..32 * BS]);
        assert_eq!(t.read(0, 0, 8), a[..8 * BS]);
        // And backwards.
        let b = t.read(0, 0, 40);
        let p = list(1, 0b10, &[cscd(0)], &[segment(0, 0, 30, 10, 2)]);
        t.ok(0, &xcopy_cdb(p.len()), &p);
        assert_eq!(t.read(0, 2, 30), b[10 * BS..40 * BS]);
    }

    #[test]
    fn parameter_list_errors() {
        let t = two_luns(4096);
        let good = list(1, 0, &[cscd(0)], &[segment(0, 0, 16, 0, 100)]);
        // Truncated lists.
        for len in [1, 15, 16 + 31, good.len() - 1] {
            let (r, _) = xcopy(&t, 0, &good[..len]);
            assert_eq!(sense_of(&r).map(|s| (s.0, s.1, s.2)), Some(PLLE), "{len}");
        }
        // CDB length beyond the data delivered.
        let (r, _) = t.run(&nexus(1), 0, &xcopy_cdb(good.len() + 4), &good);
        assert_eq!(sense_of(&r).map(|s| (s.0, s.1, s.2)), Some(PLLE));
        // Too many descriptors, descriptor lists too long.
        let nine: Vec<Vec<u8>> = (0..9).map(|_| cscd(0)).collect();
        let p = list(1, 0, &nine, &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), (ILLEGAL, 0x26, 0x06));
        let segs: Vec<Vec<u8>> = (0..9).map(|_| segment(0, 0, 1, 0, 1)).collect();
        let p = list(1, 0, &[cscd(0)], &segs);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), (ILLEGAL, 0x26, 0x08));
        let segs: Vec<Vec<u8>> = (0..36).map(|_| segment(0, 0, 1, 0, 1)).collect();
        let p = list(1, 0, &nine, &segs);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), PLLE);
        // Unsupported descriptor types.
        let mut fc = cscd(0);
        fc[0] = 0xE0;
        let p = list(1, 0, &[fc], &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), (ILLEGAL, 0x26, 0x07));
        let mut s2s = segment(0, 0, 1, 0, 1);
        s2s[0] = 0x03;
        let p = list(1, 0, &[cscd(0)], &[s2s]);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), (ILLEGAL, 0x26, 0x09));
        // Reserved LIST ID USAGE, list id with 11b, inline data.
        let mut p = good.clone();
        p[1] = 0b01 << 3;
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), INVALID_PARAM);
        p[1] = 0b11 << 3;
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), INVALID_PARAM);
        let mut p = good.clone();
        p[15] = 4;
        p.extend_from_slice(&[0; 4]);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), INVALID_PARAM);
        // Wrong disk block length, not a block device.
        let mut c = cscd(0);
        c[30] = 0x10;
        let p = list(1, 0, &[c], &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), INVALID_PARAM);
        let mut c = cscd(0);
        c[1] = 0x01;
        let p = list(1, 0, &[c], &[segment(0, 0, 1, 0, 1)]);
        assert_eq!(t.check(0, &xcopy_cdb(p.len()), &p), INVALID_PARAM);
        // The LU ID TYPE and NUL bits are ignored (SPC-4).
        let mut c = cscd(0);
        c[1] = 0x80 | 0x20;
        let p = list(1, 0, &[c], &[segment(0, 0, 1, 0, 1)]);
        t.ok(0, &xcopy_cdb(p.len()), &p);
        // EXTENDED COPY (LID4) is not implemented.
        let mut lid4 = xcopy_cdb(good.len());
        lid4[1] = 0x01;
        assert_eq!(t.check(0, &lid4, &good), INVALID_CDB);
    }

    #[test]
    fn copy_aborted_errors_change_nothing() {
        let t = two_luns(256);
        let a = pattern(8, 3);
        t.write(0, 0, &a, BS);
        let aborted = |p: &[u8]| {
            let (r, _) = xcopy(&t, 0, p);
            let s = sense_of(&r).expect("sense");
            (s.0, s.1, s.2, s.4)
        };
        // Missing descriptor index: UNREACHABLE COPY TARGET, pointer at the index.
        let p = list(1, 0, &[cscd(0)], &[segment(0, 1, 8, 0, 16)]);
        assert_eq!(aborted(&p), (0x0A, 0x08, 0x04, [0x80, 0, 16 + 32 + 6]));
        // A designator no LU of the target has.
        let mut c = cscd(0);
        c[20] ^= 0xFF;
        let p = list(1, 0, &[c], &[segment(0, 0, 8, 0, 16)]);
        let s = aborted(&p);
        assert_eq!((s.0, s.1, s.2), (0x0A, 0x08, 0x04));
        // A valid segment followed by one beyond the end: neither is copied.
        let p = list(
            1,
            0,
            &[cscd(0), cscd(1)],
            &[segment(0, 1, 8, 0, 0), segment(0, 1, 8, 0, 250)],
        );
        let s = aborted(&p);
        assert_eq!((s.0, s.1, s.2), (0x0A, 0, 0));
        assert_eq!(s.3, [0x80, 0, 16 + 64 + 28 + 20]);
        assert!(t.read(1, 0, 8).iter().all(|&b| b == 0));
        let p = list(1, 0, &[cscd(0)], &[segment(0, 0, 8, u64::MAX - 2, 0)]);
        assert_eq!(aborted(&p).0, 0x0A);
        // A segment longer than MAXIMUM SEGMENT LENGTH (32 MiB: 8192 4-KiB blocks).
        let big = Target::new(vec![Arc::new(MemDisk::new(20000, 4096, true))]);
        let p = list(1, 0, &[cscd_bs(0, 4096)], &[segment(0, 0, 8193, 0, 10000)]);
        assert_eq!(big.check(0, &xcopy_cdb(p.len()), &p), INVALID_PARAM);
        let p = list(1, 0, &[cscd_bs(0, 4096)], &[segment(0, 0, 8192, 0, 10000)]);
        big.ok(0, &xcopy_cdb(p.len()), &p);
    }

    #[test]
    fn copy_targets_obey_reservations() {
        let t = two_luns(64);
        t.write(0, 0, &pattern(4, 5), BS);
        let to_lun1 = list(1, 0b10, &[cscd(0), cscd(1)], &[segment(0, 1, 4, 0, 0)]);
        let from_lun1 = list(1, 0b10, &[cscd(0), cscd(1)], &[segment(1, 0, 4, 0, 8)]);
        // RESERVE(6) of LUN 1 by nexus 2: nexus 1 may neither read nor write it.
        let (r, _) = t.run(&nexus(2), 1, &[0x16, 0, 0, 0, 0, 0], &[]);
        assert_eq!(r.status, ScsiStatus::Good);
        assert_eq!(
            xcopy(&t, 0, &to_lun1).0.status,
            ScsiStatus::ReservationConflict
        );
        assert_eq!(
            xcopy(&t, 0, &from_lun1).0.status,
            ScsiStatus::ReservationConflict
        );
        let (_, d) = t.run(&nexus(2), 1, &rw16(0x88, 0, 4), &[]);
        assert!(d.iter().all(|&b| b == 0));
        // The holder may.
        let (r, _) = t.run(&nexus(2), 0, &xcopy_cdb(to_lun1.len()), &to_lun1);
        assert_eq!(r.status, ScsiStatus::Good);
        t.run(&nexus(2), 1, &[0x17, 0, 0, 0, 0, 0], &[]);
        // Persistent reservation WRITE EXCLUSIVE on LUN 1 by nexus 2: reading is
        // allowed, writing conflicts.
        let mut reg = vec![0u8; 24];
        reg[8..16].copy_from_slice(&7u64.to_be_bytes());
        let (r, _) = t.run(&nexus(2), 1, &[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0], &reg);
        assert_eq!(r.status, ScsiStatus::Good);
        let mut res = vec![0u8; 24];
        res[0..8].copy_from_slice(&7u64.to_be_bytes());
        let (r, _) = t.run(&nexus(2), 1, &[0x5F, 1, 0x01, 0, 0, 0, 0, 0, 24, 0], &res);
        assert_eq!(r.status, ScsiStatus::Good);
        assert_eq!(
            xcopy(&t, 0, &to_lun1).0.status,
            ScsiStatus::ReservationConflict
        );
        assert_eq!(xcopy(&t, 0, &from_lun1).0.status, ScsiStatus::Good);
        assert!(t.lu(1).persistent_reservations().reservation.is_some());
    }

    #[test]
    fn receive_copy_results() {
        let t = two_luns(256);
        // OPERATING PARAMETERS golden.
        let d = t.ok(0, &rcr(3, 0, 1024), &[]);
        let mut want = vec![0u8; 46];
        want[3] = 42;
        want[8..10].copy_from_slice(&8u16.to_be_bytes());
        want[10..12].copy_from_slice(&8u16.to_be_bytes());
        want[12..16].copy_from_slice(&1024u32.to_be_bytes());
        want[16..20].copy_from_slice(&(32u32 << 20).to_be_bytes());
        want[34..36].copy_from_slice(&1u16.to_be_bytes());
        want[36] = 1;
        want[43] = 2;
        want[44] = 0x02;
        want[45] = 0xE4;
        assert_eq!(d, want);
        assert_eq!(t.ok(0, &rcr(3, 0, 10), &[]), want[..10]);
        // COPY STATUS: nothing held yet.
        assert_eq!(t.check(0, &rcr(0, 5, 1024), &[]), INVALID_CDB);
        // A held copy: completed, 2 segments, 12 blocks.
        let p = list(
            5,
            0b00,
            &[cscd(0)],
            &[segment(0, 0, 8, 0, 100), segment(0, 0, 4, 0, 120)],
        );
        t.ok(0, &xcopy_cdb(p.len()), &p);
        let d = t.ok(0, &rcr(0, 5, 1024), &[]);
        assert_eq!(d, vec![0, 0, 0, 8, 0x01, 0, 2, 0, 0, 0, 0x18, 0]);
        // Per nexus and per LU.
        let (r, _) = t.run(&nexus(2), 0, &rcr(0, 5, 1024), &[]);
        assert_eq!(r.status, ScsiStatus::CheckCondition);
        assert_eq!(t.check(1, &rcr(0, 5, 1024), &[]), INVALID_CDB);
        // A failed held copy: completed with errors, 1 segment done.
        let p = list(
            6,
            0b00,
            &[cscd(0)],
            &[segment(0, 0, 8, 0, 100), segment(0, 1, 4, 0, 120)],
        );
        let (r, _) = xcopy(&t, 0, &p);
        assert_eq!(r.status, ScsiStatus::CheckCondition);
        // Validation failures happen before the copy starts: nothing held.
        assert_eq!(t.check(0, &rcr(0, 6, 1024), &[]), INVALID_CDB);
        // LIST ID USAGE 10b and 11b hold nothing.
        let p = list(7, 0b10, &[cscd(0)], &[segment(0, 0, 1, 0, 1)]);
        t.ok(0, &xcopy_cdb(p.len()), &p);
        assert_eq!(t.check(0, &rcr(0, 7, 1024), &[]), INVALID_CDB);
        // Nexus loss forgets the held status.
        t.map.nexus_lost(&nexus(1));
        t.run(&nexus(1), 0, &[0; 6], &[]);
        assert_eq!(t.check(0, &rcr(0, 5, 1024), &[]), INVALID_CDB);
        // RECEIVE DATA / FAILED SEGMENT DETAILS are not implemented.
        assert_eq!(t.check(0, &rcr(1, 5, 1024), &[]), INVALID_CDB);
        assert_eq!(t.check(0, &rcr(4, 5, 1024), &[]), INVALID_CDB);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 500, .. proptest::prelude::ProptestConfig::default()
        })]

        /// Mutated but mostly well-formed parameter lists (naming the two LUs of
        /// [`crate::fuzzing::small_target`]) never panic, never reach the device out of
        /// range, and keep the engine's other invariants.
        #[test]
        fn mutated_parameter_lists_keep_invariants(
            segs in proptest::collection::vec(
                (0u16..3, 0u16..3, 0u16..80, 0u64..80, 0u64..80, proptest::bool::ANY), 0..10),
            cscds in proptest::collection::vec(0u8..3, 0..10),
            usage in 0u8..4,
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 0..4),
            cut in proptest::prelude::any::<u16>(),
            lun1 in proptest::bool::ANY,
        ) {
            let (map, disk) = crate::fuzzing::small_target(64);
            let ids = [0x1234u128, 0x5678, 0x9999];
            let cscds: Vec<Vec<u8>> = cscds
                .iter()
                .map(|&i| {
                    let mut d = cscd(0);
                    d[8..24].copy_from_slice(&inquiry::naa6(&LunConfig::new(
                        uuid::Uuid::from_u128(ids[usize::from(i)]),
                    )));
                    d
                })
                .collect();
            let segs: Vec<Vec<u8>> = segs
                .iter()
                .map(|&(s, d, n, sl, dl, dc)| {
                    let mut seg = segment(s, d, n, sl, dl);
                    seg[1] = u8::from(dc) << 1;
                    seg
                })
                .collect();
            let mut p = list(1, usage, &cscds, &segs);
            for (at, v) in flips {
                if let Some(b) = p.get_mut(at) {
                    *b = v;
                }
            }
            let len = if cut % 4 == 0 { usize::from(cut) % (p.len() + 1) } else { p.len() };
            let cdb = xcopy_cdb(len);
            let mut input = vec![16u8, 0xFF, 0xFF, if lun1 { 2 } else { 0 }];
            input.extend_from_slice(&cdb);
            input.extend_from_slice(&p[..len.min(p.len())]);
            crate::fuzzing::run_one(&map, &disk, &input);
        }
    }

    #[test]
    fn copy_status_units() {
        let h = super::Held {
            nexus: 1,
            list_id: 2,
            state: super::State::Failed,
            segments: 3,
            bytes: 5 << 40,
        };
        assert_eq!(
            super::copy_status_data(&h),
            vec![0, 0, 0, 8, 0x02, 0, 3, 2, 0, 5 << 4, 0, 0]
        );
    }
}
