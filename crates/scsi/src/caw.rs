//! COMPARE AND WRITE (SBC-3 5.2): the atomic test-and-set initiators of a cluster
//! (VMware ATS, cluster file systems) use instead of reservations.
//!
//! Owns: the command's checks and its compare-then-write sequence. Atomicity comes
//! from the LU's write gate ([`crate::gate::WriteGate`], the same range lock ORWRITE
//! uses): the compare and the write run inside one read-modify-write section of the
//! range, so no other COMPARE AND WRITE, ORWRITE, WRITE, WRITE SAME, UNMAP or EXTENDED
//! COPY write to an overlapping range can land between them. To make it atomic across
//! both heads of a dual-primary pair, install a [`ClusterRangeLock`] with
//! [`LogicalUnit::set_cluster_range_lock`]; the section then also holds the range on
//! the peer (see `gate.rs`).
//!
//! Data-out: the verify instance (NUMBER OF LOGICAL BLOCKS blocks) followed by the
//! write instance (as many). Unlike WRITE, a shorter or longer data-out buffer cannot be
//! processed "as far as it goes" — the boundary between the two halves would be
//! ambiguous — so any other length is rejected with INVALID FIELD IN CDB (pointing at
//! NUMBER OF LOGICAL BLOCKS) before the medium is read, as Linux LIO does.
//!
//! Miscompare: MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION with the INFORMATION
//! field set to the offset of the first differing byte from the start of the data-out
//! buffer; nothing is written.

use std::sync::Arc;

use crate::api::ScsiStatus;
use crate::block::{first_diff, scratch, write_protected};
use crate::cdb::BlockRw;
use crate::gate::{ClusterLockError, ClusterRangeLock, GateGuard};
use crate::lun::{CmdResult, Exec, Fail, IoKind, LogicalUnit};
use crate::sense::{asc, key, Sense};

/// MAXIMUM COMPARE AND WRITE LENGTH reported in the block limits VPD page, in logical
/// blocks (the largest value the one-byte CDB field can carry).
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;

/// Byte offset of NUMBER OF LOGICAL BLOCKS in the CDB.
const NLB_BYTE: u16 = 13;

impl LogicalUnit {
    /// Make this LU's read-modify-writes (COMPARE AND WRITE, ORWRITE) exclusive on the
    /// other node(s) too. Returns `false` if a cluster lock was already installed.
    pub fn set_cluster_range_lock(&self, lock: Arc<dyn ClusterRangeLock>) -> bool {
        self.gate.set_cluster_lock(lock)
    }

    /// Enter the write gate for a read-modify-write of `[start, end)`.
    pub(crate) fn rmw_section(&self, start: u64, end: u64) -> Result<GateGuard<'_>, Fail> {
        self.gate
            .read_modify_write(start, end)
            .map_err(|e: ClusterLockError| {
                tracing::warn!(uuid = %self.config().uuid, error = %e, "read-modify-write refused");
                Fail::Check(Sense::new(key::ABORTED_COMMAND, asc::NO_ADDITIONAL_SENSE))
            })
    }

    /// COMPARE AND WRITE(16).
    pub(crate) fn compare_and_write(&self, rw: BlockRw, ex: &mut Exec<'_, '_>) -> CmdResult {
        if rw.protect != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)).into());
        }
        let bs = u64::from(self.block_size());
        let blocks = u64::from(rw.blocks);
        let len = blocks * bs;
        ex.xfer = Some(2 * len);
        if rw.blocks > u32::from(MAX_COMPARE_AND_WRITE_BLOCKS) {
            return Err(Sense::invalid_cdb(NLB_BYTE, None).into());
        }
        if self.write_protected() {
            return Err(write_protected());
        }
        self.check_range(rw.lba, blocks)?;
        let data_out = ex.req.data_out;
        if data_out.len() as u64 != 2 * len {
            return Err(Sense::invalid_cdb(NLB_BYTE, None).into());
        }
        if blocks == 0 {
            return Ok(ScsiStatus::Good);
        }
        let (verify, write) = data_out.split_at(len as usize);
        let off = rw.lba * bs;
        let _section = self.rmw_section(rw.lba, rw.lba + blocks)?;
        let buf = scratch(ex.data_in, len as usize);
        let result = match self.device().read_at(buf, off) {
            Err(e) => Err(self.io_fail(&e, IoKind::Read)),
            Ok(()) => match first_diff(buf, verify) {
                Some(at) => Err(Fail::Check(
                    Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
                        .with_information(at as u64),
                )),
                None => self
                    .device()
                    .write_at(write, off, rw.fua)
                    .map_err(|e| self.io_fail(&e, IoKind::Write)),
            },
        };
        ex.data_in.clear();
        result.map(|()| ScsiStatus::Good)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use proptest::prelude::*;
    use twinsan_blockdev::IoBuf;
    use uuid::Uuid;

    use crate::api::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TaskAttr};
    use crate::fuzzing::MemDisk;
    use crate::{LogicalUnit, LunConfig, LunMap};

    const BS: usize = 512;

    fn nexus(id: u64) -> Nexus {
        Nexus {
            id,
            initiator_port: format!("iqn.caw:{id},i,0x1"),
            relative_port_id: 1,
        }
    }

    fn target(blocks: u64) -> (LunMap, Arc<MemDisk>) {
        let disk = Arc::new(MemDisk::new(blocks, BS as u32, true));
        let lu = LogicalUnit::new(LunConfig::new(Uuid::from_u128(0xCA3)), disk.clone());
        let map = LunMap::new(vec![(0, Arc::new(lu))]);
        for id in 1..=4 {
            run(&map, &nexus(id), &[0; 6], &[]); // consume the power-on unit attention
        }
        (map, disk)
    }

    fn run(map: &LunMap, n: &Nexus, cdb: &[u8], out: &[u8]) -> (ScsiResponse, Vec<u8>) {
        let req = ScsiRequest {
            nexus: n,
            lun: 0,
            cdb,
            data_out: out,
            data_in_len_max: 1 << 20,
            attr: TaskAttr::Simple,
        };
        let mut buf = IoBuf::new();
        let r = map.execute(&req, &mut buf);
        (r, buf.to_vec())
    }

    fn caw_cdb(lba: u64, blocks: u8, flags: u8) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0x89;
        c[1] = flags;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[13] = blocks;
        c
    }

    fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = opcode;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    /// (key, asc, ascq, information if valid) of fixed-format sense data.
    fn sense(r: &ScsiResponse) -> (u8, u8, u8, Option<u32>) {
        let s = r.sense.as_ref().expect("sense data");
        let info = (s[0] & 0x80 != 0).then(|| u32::from_be_bytes([s[3], s[4], s[5], s[6]]));
        (s[2] & 0x0F, s[12], s[13], info)
    }

    fn read(map: &LunMap, n: &Nexus, lba: u64, blocks: u32) -> Vec<u8> {
        let (r, d) = run(map, n, &rw16(0x88, lba, blocks), &[]);
        assert_eq!(r.status, ScsiStatus::Good);
        d
    }

    #[test]
    fn compare_and_write_success_and_miscompare_offset() {
        let (map, disk) = target(64);
        let n = nexus(1);
        let mut out = vec![0u8; 4 * BS];
        out[2 * BS..].fill(0xAB);
        let (r, _) = run(&map, &n, &caw_cdb(10, 2, 0), &out);
        assert_eq!(r.status, ScsiStatus::Good);
        assert_eq!(r.cdb_transfer_len, Some(4 * BS as u64));
        assert_eq!(read(&map, &n, 10, 2), vec![0xAB; 2 * BS]);
        // Wrong verify data: the first difference is reported, nothing is written.
        for at in [0usize, 1, 511, 512, 700, 1023] {
            let mut out = vec![0xABu8; 4 * BS];
            out[at] ^= 0x40;
            out[2 * BS..].fill(0x11);
            let (r, _) = run(&map, &n, &caw_cdb(10, 2, 0), &out);
            assert_eq!(r.status, ScsiStatus::CheckCondition);
            assert_eq!(sense(&r), (0x0E, 0x1D, 0x00, Some(at as u32)));
        }
        assert_eq!(read(&map, &n, 10, 2), vec![0xAB; 2 * BS]);
        // FUA reaches the device.
        let before = disk.fua_writes.load(Ordering::SeqCst);
        let mut out = vec![0xABu8; 2 * BS];
        out[BS..].fill(0x22);
        let (r, _) = run(&map, &n, &caw_cdb(10, 1, 0x18), &out);
        assert_eq!(r.status, ScsiStatus::Good);
        assert_eq!(disk.fua_writes.load(Ordering::SeqCst), before + 1);
        assert_eq!(read(&map, &n, 10, 1), vec![0x22; BS]);
    }

    #[test]
    fn compare_and_write_checks() {
        let (map, _) = target(64);
        let n = nexus(1);
        let invalid_cdb = (5, 0x24, 0x00);
        let k = |r: &ScsiResponse| {
            let s = sense(r);
            (s.0, s.1, s.2)
        };
        // Data-out must be exactly twice NUMBER OF LOGICAL BLOCKS blocks.
        for len in [0, BS, 3 * BS, 4 * BS, 2 * BS + 1] {
            if len == 2 * BS {
                continue;
            }
            let (r, _) = run(&map, &n, &caw_cdb(0, 1, 0), &vec![0; len]);
            assert_eq!(k(&r), invalid_cdb, "data-out {len}");
        }
        // NUMBER OF LOGICAL BLOCKS 0: nothing to do, unless data came with it.
        assert_eq!(
            run(&map, &n, &caw_cdb(0, 0, 0), &[]).0.status,
            ScsiStatus::Good
        );
        assert_eq!(
            k(&run(&map, &n, &caw_cdb(0, 0, 0), &[0; BS]).0),
            invalid_cdb
        );
        // Out of range, protection information.
        let (r, _) = run(&map, &n, &caw_cdb(63, 2, 0), &[0; 4 * BS]);
        assert_eq!(k(&r), (5, 0x21, 0x00));
        let (r, _) = run(&map, &n, &caw_cdb(u64::MAX, 1, 0), &[0; 2 * BS]);
        assert_eq!(k(&r), (5, 0x21, 0x00));
        let (r, _) = run(&map, &n, &caw_cdb(0, 1, 0x20), &[0; 2 * BS]);
        assert_eq!(k(&r), invalid_cdb);
        // The largest reportable length works.
        let blocks = super::MAX_COMPARE_AND_WRITE_BLOCKS;
        let (map, _) = target(300);
        let len = usize::from(blocks) * BS;
        let mut out = vec![0u8; 2 * len];
        out[len..].fill(7);
        assert_eq!(
            run(&map, &n, &caw_cdb(1, blocks, 0), &out).0.status,
            ScsiStatus::Good
        );
    }

    #[test]
    fn compare_and_write_on_write_protected_lu() {
        let disk = Arc::new(MemDisk::new(8, BS as u32, true));
        let mut cfg = LunConfig::new(Uuid::from_u128(7));
        cfg.read_only = true;
        let map = LunMap::new(vec![(0, Arc::new(LogicalUnit::new(cfg, disk)))]);
        let n = nexus(1);
        run(&map, &n, &[0; 6], &[]);
        let (r, _) = run(&map, &n, &caw_cdb(0, 1, 0), &[0; 2 * BS]);
        assert_eq!(sense(&r).0, 0x07);
    }

    /// One "initiator": increment the 64-bit counter kept (repeated) in block `lba`
    /// `rounds` times with read + COMPARE AND WRITE old→old+1, retrying on miscompare.
    /// Returns the number of successful increments.
    fn increment(map: &LunMap, n: &Nexus, lba: u64, rounds: u64) -> u64 {
        let mut done = 0;
        while done < rounds {
            let cur = read(map, n, lba, 1);
            let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
            let mut out = cur.clone();
            for _ in 0..BS / 8 {
                out.extend_from_slice(&(v + 1).to_le_bytes());
            }
            let (r, _) = run(map, n, &caw_cdb(lba, 1, 0), &out);
            match r.status {
                ScsiStatus::Good => done += 1,
                ScsiStatus::CheckCondition => assert_eq!(sense(&r).0, 0x0E, "only miscompares"),
                s => panic!("unexpected status {s:?}"),
            }
        }
        done
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

        /// Two initiators (two I_T nexuses, two threads) increment one counter with
        /// read + COMPARE AND WRITE old→old+1, retrying on miscompare. Every success
        /// is counted exactly once: the final value is the number of successes.
        #[test]
        fn concurrent_compare_and_write_is_atomic(lba in 0u64..8, rounds in 50u64..150) {
            let (map, _) = target(16);
            let map = Arc::new(map);
            let total = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (1..=2)
                .map(|id| {
                    let (map, total) = (map.clone(), total.clone());
                    std::thread::spawn(move || {
                        let n = nexus(id);
                        total.fetch_add(increment(&map, &n, lba, rounds), Ordering::SeqCst);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let n = nexus(3);
            let blk = read(&map, &n, lba, 1);
            let v = u64::from_le_bytes(blk[..8].try_into().unwrap());
            prop_assert_eq!(total.load(Ordering::SeqCst), 2 * rounds);
            prop_assert_eq!(v, 2 * rounds);
            prop_assert!(blk.chunks(8).all(|c| c == v.to_le_bytes()), "torn block");
        }

        /// COMPARE AND WRITE against plain writers: a CAW over blocks [lba, lba+2)
        /// writes back block lba+1 exactly as it compared it, while another initiator
        /// keeps writing new values to block lba+1 with WRITE and checks each one
        /// stays (only it changes that block, and every CAW that succeeds must have
        /// seen its latest value). A write landing between a CAW's compare and its
        /// write would be undone and caught.
        #[test]
        fn compare_and_write_is_atomic_against_writes(lba in 0u64..8, writes in 100u64..300) {
            let (map, _) = target(16);
            let map = Arc::new(map);
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let cas = {
                let (map, stop) = (map.clone(), stop.clone());
                std::thread::spawn(move || {
                    let n = nexus(1);
                    let mut ok = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let cur = read(&map, &n, lba, 2);
                        let mut out = cur.clone();
                        out.extend_from_slice(&cur);
                        let v = u64::from_le_bytes(cur[..8].try_into().unwrap()) + 1;
                        for c in out[2 * BS..3 * BS].chunks_mut(8) {
                            c.copy_from_slice(&v.to_le_bytes());
                        }
                        let (r, _) = run(&map, &n, &caw_cdb(lba, 2, 0), &out);
                        if r.status == ScsiStatus::Good {
                            ok += 1;
                        }
                    }
                    ok
                })
            };
            let n = nexus(2);
            for k in 1..=writes {
                let blk = vec![(k % 251) as u8 + 1; BS];
                let (r, _) = run(&map, &n, &rw16(0x8A, lba + 1, 1), &blk);
                prop_assert_eq!(r.status, ScsiStatus::Good);
                prop_assert_eq!(read(&map, &n, lba + 1, 1), blk, "write {} undone", k);
            }
            stop.store(true, Ordering::SeqCst);
            let ok = cas.join().unwrap();
            let counter = read(&map, &n, lba, 1);
            prop_assert_eq!(u64::from_le_bytes(counter[..8].try_into().unwrap()), ok);
        }
    }
}
