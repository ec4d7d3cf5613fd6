//! Command-level tests of the engine against an in-memory device: golden bytes for
//! INQUIRY/VPD, data path round trips, errors, unit attentions, reservations, mode
//! pages, and the property test that arbitrary CDBs never panic nor stray outside the
//! device.

use std::sync::Arc;

use proptest::prelude::*;
use twinsan_blockdev::{BlockDevice, BlockResult, EngineKind, IoBuf};
use uuid::Uuid;

use crate::api::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TaskAttr, TaskMgmt, TmfError};
use crate::fuzzing::{run_one, MemDisk};
use crate::sense::asc;
use crate::{rsoc, LogicalUnit, LunConfig, LunMap};

const BS: usize = 512;
const BLOCKS: u64 = 4096;
const UUID: u128 = 0x0011_2233_4455_6677_8899_aabb_ccdd_eeff;

struct T {
    map: LunMap,
    disk: Arc<MemDisk>,
    n1: Nexus,
    n2: Nexus,
}

fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.test:{id},i,0x1"),
        relative_port_id: 7,
    }
}

impl T {
    fn with(cfg: LunConfig, wce: bool) -> T {
        let disk = Arc::new(MemDisk::new(BLOCKS, BS as u32, wce));
        let lu = LogicalUnit::new(cfg, disk.clone());
        let t = T {
            map: LunMap::new(vec![(1, Arc::new(lu))]),
            disk,
            n1: nexus(1),
            n2: nexus(2),
        };
        // Consume the power-on unit attention of both nexuses.
        for n in [&t.n1, &t.n2] {
            let (r, _) = t.run(n, 1, &tur(), &[], 0);
            assert_eq!(sense(&r), (6, 0x29, 0x00));
        }
        t
    }

    fn new() -> T {
        Self::with(LunConfig::new(Uuid::from_u128(UUID)), true)
    }

    fn run(
        &self,
        n: &Nexus,
        lun: u64,
        cdb: &[u8],
        out: &[u8],
        max: u32,
    ) -> (ScsiResponse, Vec<u8>) {
        let req = ScsiRequest {
            nexus: n,
            lun: LunMap::encode_lun(lun),
            cdb,
            data_out: out,
            data_in_len_max: max,
            attr: TaskAttr::Simple,
        };
        let mut buf = IoBuf::new();
        let r = self.map.execute(&req, &mut buf);
        assert_eq!(buf.len(), r.data_in_len as usize);
        assert!(r.data_in_len <= max);
        (r, buf.to_vec())
    }

    /// Run on nexus 1, LUN 1.
    fn cmd(&self, cdb: &[u8], out: &[u8], max: u32) -> (ScsiResponse, Vec<u8>) {
        self.run(&self.n1, 1, cdb, out, max)
    }

    /// Run and expect GOOD; returns data-in.
    fn ok(&self, cdb: &[u8], out: &[u8], max: u32) -> Vec<u8> {
        let (r, d) = self.cmd(cdb, out, max);
        assert_eq!(r.status, ScsiStatus::Good, "sense {:?}", sense_opt(&r));
        d
    }

    /// Run and expect CHECK CONDITION; returns (key, asc, ascq).
    fn check(&self, cdb: &[u8], out: &[u8], max: u32) -> (u8, u8, u8) {
        let (r, _) = self.cmd(cdb, out, max);
        assert_eq!(r.status, ScsiStatus::CheckCondition);
        sense(&r)
    }
}

fn sense_opt(r: &ScsiResponse) -> Option<(u8, u8, u8)> {
    let s = r.sense.as_ref()?;
    Some(if s[0] & 0x7F == 0x70 {
        (s[2] & 0x0F, s[12], s[13])
    } else {
        (s[1] & 0x0F, s[2], s[3])
    })
}

fn sense(r: &ScsiResponse) -> (u8, u8, u8) {
    assert_eq!(
        r.status,
        ScsiStatus::CheckCondition,
        "expected CHECK CONDITION"
    );
    sense_opt(r).expect("sense data")
}

const ILLEGAL: u8 = 5;
const INVALID_CDB: (u8, u8, u8) = (ILLEGAL, 0x24, 0x00);
const LBA_OOB: (u8, u8, u8) = (ILLEGAL, 0x21, 0x00);

fn tur() -> [u8; 6] {
    [0; 6]
}
fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, u8::from(evpd), page, a[0], a[1], 0]
}
fn rw10(opcode: u8, lba: u32, blocks: u16, flags: u8) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [opcode, flags, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0]
}
fn rw12(opcode: u8, lba: u32, blocks: u32, flags: u8) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = opcode;
    c[1] = flags;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}
fn rw16(opcode: u8, lba: u64, blocks: u32, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}
fn pattern(blocks: usize, seed: u8) -> Vec<u8> {
    (0..blocks * BS)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------- INQUIRY / VPD

#[test]
fn inquiry_standard_golden() {
    let t = T::new();
    let d = t.ok(&inquiry(false, 0, 255), &[], 255);
    assert_eq!(d.len(), 96);
    // Byte 5: 3PC (EXTENDED COPY).
    assert_eq!(&d[0..8], &[0x00, 0x00, 0x06, 0x12, 91, 0x08, 0x00, 0x02]);
    assert_eq!(&d[8..16], b"TWINSAN ");
    assert_eq!(&d[16..32], b"VIRTUAL-DISK    ");
    assert_eq!(&d[32..36], b"0001");
    assert_eq!(
        &d[58..66],
        &[0x00, 0xA0, 0x04, 0x60, 0x04, 0xC0, 0x09, 0x60]
    );
    assert!(d[66..].iter().all(|&b| b == 0));
    // Truncation and 16-bit allocation lengths.
    assert_eq!(t.ok(&inquiry(false, 0, 5), &[], 255), d[..5].to_vec());
    assert_eq!(t.ok(&inquiry(false, 0, 512), &[], 512), d);
    let (r, _) = t.cmd(&inquiry(false, 0, 255), &[], 10);
    assert_eq!(r.data_in_len, 10);
    assert_eq!(r.cdb_transfer_len, Some(96));
    // PAGE CODE with EVPD=0.
    assert_eq!(t.check(&inquiry(false, 0x80, 255), &[], 255), INVALID_CDB);
    assert_eq!(t.check(&inquiry(true, 0xB2, 255), &[], 255), INVALID_CDB);
}

#[test]
fn vpd_pages_golden() {
    let t = T::new();
    assert_eq!(
        t.ok(&inquiry(true, 0x00, 255), &[], 255),
        vec![0, 0, 0, 5, 0x00, 0x80, 0x83, 0xB0, 0xB1]
    );
    let serial = t.ok(&inquiry(true, 0x80, 255), &[], 255);
    assert_eq!(&serial[0..4], &[0, 0x80, 0, 32]);
    assert_eq!(&serial[4..], b"00112233445566778899aabbccddeeff");

    let id = t.ok(&inquiry(true, 0x83, 255), &[], 255);
    let mut want = vec![0x00, 0x83, 0x00, 0x00];
    // NAA-6: 6 | company id 0x0A5A17 | 36 bits of uuid | 64-bit extension.
    want.extend_from_slice(&[0x01, 0x03, 0x00, 0x10]);
    want.extend_from_slice(&[0x60, 0xA5, 0xA1, 0x70, 0x01, 0x12, 0x23, 0x34]);
    let u = UUID;
    let ext = ((u >> 28) as u64) ^ ((u & 0x0FFF_FFFF) as u64);
    want.extend_from_slice(&ext.to_be_bytes());
    want.extend_from_slice(&[0x02, 0x01, 0x00, 40]);
    want.extend_from_slice(b"TWINSAN 00112233445566778899aabbccddeeff");
    want.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0x00, 0x00, 0x00, 0x07]);
    want[3] = (want.len() - 4) as u8;
    assert_eq!(id, want);

    let bl = t.ok(&inquiry(true, 0xB0, 255), &[], 255);
    assert_eq!(bl.len(), 64);
    // WSNZ=0, MAXIMUM COMPARE AND WRITE LENGTH 255.
    assert_eq!(&bl[0..6], &[0, 0xB0, 0, 0x3C, 0x00, 0xFF]);
    assert_eq!(u16::from_be_bytes([bl[6], bl[7]]), 8);
    assert_eq!(
        u32::from_be_bytes([bl[8], bl[9], bl[10], bl[11]]),
        (8 << 20) / 512
    );
    assert!(
        bl[20..36].iter().all(|&b| b == 0),
        "no UNMAP (fully provisioned)"
    );
    let mut ws = [0u8; 8];
    ws.copy_from_slice(&bl[36..44]);
    assert_eq!(u64::from_be_bytes(ws), (16 << 20) / 512);

    let bdc = t.ok(&inquiry(true, 0xB1, 255), &[], 255);
    assert_eq!(&bdc[0..6], &[0, 0xB1, 0, 0x3C, 0, 1]);
    // Every listed page can be read.
    for p in [0x00, 0x80, 0x83, 0xB0, 0xB1] {
        t.ok(&inquiry(true, p, 255), &[], 255);
    }
}

#[test]
fn identity_is_the_same_on_both_heads() {
    let a = T::new();
    let b = T::new();
    assert_eq!(
        a.ok(&inquiry(true, 0x83, 255), &[], 255),
        b.ok(&inquiry(true, 0x83, 255), &[], 255)
    );
}

// ---------------------------------------------------------------- capacity

#[derive(Debug)]
struct Huge;
impl BlockDevice for Huge {
    fn size_bytes(&self) -> u64 {
        (1u64 << 33) * 512
    }
    fn logical_block_size(&self) -> u32 {
        512
    }
    fn physical_block_size(&self) -> u32 {
        4096
    }
    fn read_at(&self, buf: &mut [u8], _: u64) -> BlockResult<()> {
        buf.fill(0);
        Ok(())
    }
    fn write_at(&self, _: &[u8], _: u64, _: bool) -> BlockResult<()> {
        Ok(())
    }
    fn flush(&self) -> BlockResult<()> {
        Ok(())
    }
    fn write_cache_enabled(&self) -> bool {
        false
    }
    fn engine(&self) -> EngineKind {
        EngineKind::Memory
    }
}

#[test]
fn read_capacity() {
    let t = T::new();
    let d = t.ok(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(d, [0, 0, 0x0F, 0xFF, 0, 0, 2, 0]);
    let mut rc16 = [0u8; 16];
    rc16[0] = 0x9E;
    rc16[1] = 0x10;
    rc16[13] = 32;
    let d = t.ok(&rc16, &[], 32);
    assert_eq!(&d[0..12], &[0, 0, 0, 0, 0, 0, 0x0F, 0xFF, 0, 0, 2, 0]);
    assert!(
        d[12..].iter().all(|&b| b == 0),
        "no PI, LBPME=0, exponent 0"
    );
    for alloc in 0..16u8 {
        rc16[13] = alloc;
        assert_eq!(t.ok(&rc16, &[], 64).len(), alloc as usize);
    }
    // Obsolete LBA field without PMI.
    assert_eq!(
        t.check(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], &[], 8),
        INVALID_CDB
    );

    let lu = LogicalUnit::new(LunConfig::new(Uuid::nil()), Arc::new(Huge));
    let map = LunMap::new(vec![(0, Arc::new(lu))]);
    let n = nexus(9);
    let run = |cdb: &[u8]| {
        let req = ScsiRequest {
            nexus: &n,
            lun: 0,
            cdb,
            data_out: &[],
            data_in_len_max: 64,
            attr: TaskAttr::Simple,
        };
        let mut b = IoBuf::new();
        let r = map.execute(&req, &mut b);
        (r, b.to_vec())
    };
    run(&tur());
    let (_, d) = run(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&d[0..4], &[0xFF; 4]);
    rc16[13] = 32;
    let (_, d) = run(&rc16);
    assert_eq!(&d[0..8], &((1u64 << 33) - 1).to_be_bytes());
    assert_eq!(d[13], 3, "8 logical blocks per physical block");
}

#[test]
fn capacity_change_unit_attention() {
    let t = T::new();
    t.disk.resize_blocks(BLOCKS * 2);
    assert_eq!(t.check(&tur(), &[], 0), (6, 0x2A, 0x09));
    t.ok(&tur(), &[], 0);
    let (r, _) = t.run(&t.n2, 1, &tur(), &[], 0);
    assert_eq!(sense(&r), (6, 0x2A, 0x09));
    let d = t.ok(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(&d[0..4], &((BLOCKS * 2 - 1) as u32).to_be_bytes());
}

// ---------------------------------------------------------------- data path

#[test]
fn read_write_round_trip_every_cdb_size() {
    let t = T::new();
    // WRITE(6)/READ(6).
    let data = pattern(3, 1);
    t.ok(&[0x0A, 0, 0, 5, 3, 0], &data, 0);
    assert_eq!(t.ok(&[0x08, 0, 0, 5, 3, 0], &[], 1 << 20), data);
    // 10.
    let data = pattern(4, 2);
    t.ok(&rw10(0x2A, 100, 4, 0), &data, 0);
    assert_eq!(t.ok(&rw10(0x28, 100, 4, 0), &[], 1 << 20), data);
    // 12.
    let data = pattern(2, 3);
    t.ok(&rw12(0xAA, 200, 2, 0x18), &data, 0);
    assert_eq!(t.ok(&rw12(0xA8, 200, 2, 0x18), &[], 1 << 20), data);
    // 16.
    let data = pattern(5, 4);
    t.ok(&rw16(0x8A, BLOCKS - 5, 5, 0), &data, 0);
    assert_eq!(t.ok(&rw16(0x88, BLOCKS - 5, 5, 0), &[], 1 << 20), data);
    assert_eq!(&t.disk.contents()[(BLOCKS as usize - 5) * BS..], &data[..]);
}

#[test]
fn read6_zero_length_is_256_blocks() {
    let t = T::new();
    let (r, d) = t.cmd(&[0x08, 0, 0, 0, 0, 0], &[], 1 << 20);
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!(d.len(), 256 * BS);
    assert_eq!(r.cdb_transfer_len, Some(256 * BS as u64));
    // WRITE(6) with 0 also means 256 blocks: 100 bytes of data is a length mismatch.
    assert_eq!(
        t.check(&[0x0A, 0, 0, 0, 0, 0], &pattern(1, 0)[..100], 0),
        (ILLEGAL, 0x0E, 0x03)
    );
}

#[test]
fn lba_out_of_range_and_zero_length() {
    let t = T::new();
    assert_eq!(
        t.check(&rw10(0x28, BLOCKS as u32, 1, 0), &[], 4096),
        LBA_OOB
    );
    assert_eq!(
        t.check(&rw10(0x28, BLOCKS as u32 - 1, 2, 0), &[], 4096),
        LBA_OOB
    );
    assert_eq!(t.check(&rw16(0x88, u64::MAX, 1, 0), &[], 4096), LBA_OOB);
    assert_eq!(
        t.check(&rw16(0x8A, u64::MAX, 1, 0), &pattern(1, 0), 0),
        LBA_OOB
    );
    assert_eq!(
        t.check(&rw10(0x28, BLOCKS as u32 + 1, 0, 0), &[], 4096),
        LBA_OOB
    );
    assert_eq!(t.check(&rw16(0x88, u64::MAX, 0, 0), &[], 4096), LBA_OOB);
    // Zero length inside the medium: GOOD, nothing transferred.
    let (r, d) = t.cmd(&rw10(0x28, 0, 0, 0), &[], 4096);
    assert_eq!((r.status, d.len()), (ScsiStatus::Good, 0));
    t.ok(&rw10(0x2A, 0, 0, 0), &[], 0);
    t.ok(&rw16(0x8B, 0, 0, 0), &[], 0);
    // Beyond the maximum transfer length.
    let mut big = rw16(0x88, 0, (8 << 20) / 512 + 1, 0);
    assert_eq!(t.check(&big, &[], u32::MAX), INVALID_CDB);
    big[0] = 0x8A;
    assert_eq!(t.check(&big, &[], 0), INVALID_CDB);
}

#[test]
fn protect_fields_and_flags() {
    let t = T::new();
    for p in 1..8u8 {
        assert_eq!(t.check(&rw10(0x28, 0, 1, p << 5), &[], 512), INVALID_CDB);
        assert_eq!(
            t.check(&rw10(0x2A, 0, 1, p << 5), &pattern(1, 0), 0),
            INVALID_CDB
        );
        assert_eq!(
            t.check(&rw10(0x2F, 0, 1, (p << 5) | 0x02), &pattern(1, 0), 0),
            INVALID_CDB
        );
    }
    // DPO, FUA, FUA_NV accepted; FUA reaches the device.
    let before = t.disk.fua_writes.load(std::sync::atomic::Ordering::SeqCst);
    t.ok(&rw10(0x2A, 0, 1, 0x10), &pattern(1, 0), 0);
    t.ok(&rw10(0x2A, 0, 1, 0x08), &pattern(1, 0), 0);
    t.ok(&rw10(0x2A, 0, 1, 0x1A), &pattern(1, 0), 0);
    t.ok(&rw10(0x28, 0, 1, 0x18), &[], 512);
    assert_eq!(
        t.disk.fua_writes.load(std::sync::atomic::Ordering::SeqCst),
        before + 2
    );
}

#[test]
fn control_byte_naca_link() {
    let t = T::new();
    assert_eq!(t.check(&[0, 0, 0, 0, 0, 0x04], &[], 0), INVALID_CDB);
    assert_eq!(t.check(&[0, 0, 0, 0, 0, 0x01], &[], 0), INVALID_CDB);
    let mut c = rw10(0x28, 0, 1, 0);
    c[9] = 0x04;
    let (r, _) = t.cmd(&c, &[], 512);
    let s = r.sense.unwrap();
    assert_eq!(
        &s[15..18],
        &[0xCA, 0x00, 0x09],
        "field pointer: byte 9 bit 2"
    );
}

#[test]
fn residuals() {
    let t = T::new();
    t.ok(&rw10(0x2A, 0, 1, 0), &pattern(1, 9), 0);
    // EDTL smaller than the transfer: only EDTL bytes, SPDTL reported.
    let (r, d) = t.cmd(&rw10(0x28, 0, 1, 0), &[], 200);
    assert_eq!(
        (r.status, d.len(), r.cdb_transfer_len),
        (ScsiStatus::Good, 200, Some(512))
    );
    assert_eq!(d, pattern(1, 9)[..200].to_vec());
    let (r, d) = t.cmd(&rw10(0x28, 0, 2, 0), &[], 512);
    assert_eq!((d.len(), r.cdb_transfer_len), (512, Some(1024)));
    let (r, d) = t.cmd(&rw10(0x28, 0, 1, 0), &[], 0);
    assert_eq!(
        (r.status, d.len(), r.cdb_transfer_len),
        (ScsiStatus::Good, 0, Some(512))
    );
    // A shortfall ending inside a block: rejected, nothing written.
    let before = t.disk.contents();
    let (r, _) = t.cmd(&rw10(0x2A, 0, 1, 0), &pattern(1, 1)[..200], 0);
    assert_eq!(sense(&r), (ILLEGAL, 0x0E, 0x03));
    assert_eq!(r.cdb_transfer_len, Some(512));
    let (r, _) = t.cmd(&rw10(0x2A, 0, 2, 0), &pattern(2, 1)[..700], 0);
    assert_eq!(sense(&r), (ILLEGAL, 0x0E, 0x03));
    assert_eq!(t.disk.contents(), before);
    // No data at all: GOOD, nothing written, SPDTL reported for the residual.
    let (r, _) = t.cmd(&rw10(0x2A, 0, 1, 0), &[], 0);
    assert_eq!(
        (r.status, r.cdb_transfer_len),
        (ScsiStatus::Good, Some(512))
    );
    assert_eq!(t.disk.contents(), before);
    // More data than the CDB asks for: only the CDB's blocks are written.
    t.ok(&rw10(0x2A, 0, 2, 0), &vec![b'a'; 2 * BS], 0);
    let (r, _) = t.cmd(&rw10(0x2A, 0, 1, 0), &vec![b'b'; 2 * BS], 0);
    assert_eq!(
        (r.status, r.cdb_transfer_len),
        (ScsiStatus::Good, Some(512))
    );
    let d = t.ok(&rw10(0x28, 0, 2, 0), &[], 4096);
    assert!(d[..BS].iter().all(|&b| b == b'b') && d[BS..].iter().all(|&b| b == b'a'));
    // Fewer whole blocks than the CDB asks for: only those are written.
    t.ok(&rw10(0x2A, 0, 2, 0), &vec![b'a'; 2 * BS], 0);
    for op in [0x2A, 0x2E] {
        let (r, _) = t.cmd(&rw10(op, 0, 2, 0), &vec![b'b'; BS], 0);
        assert_eq!(
            (r.status, r.cdb_transfer_len),
            (ScsiStatus::Good, Some(1024))
        );
        let d = t.ok(&rw10(0x28, 0, 2, 0), &[], 4096);
        assert!(d[..BS].iter().all(|&b| b == b'b') && d[BS..].iter().all(|&b| b == b'a'));
        t.ok(&rw10(0x2A, 0, 2, 0), &vec![b'a'; 2 * BS], 0);
    }
}

#[test]
fn medium_error_mapping() {
    let t = T::new();
    t.disk
        .fail_io
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (r, _) = t.cmd(&rw10(0x28, 42, 1, 0), &[], 512);
    assert_eq!(sense(&r), (3, 0x11, 0x00));
    let s = r.sense.unwrap();
    assert_eq!(s[0], 0xF0, "VALID information");
    assert_eq!(&s[3..7], &42u32.to_be_bytes());
    assert_eq!(
        t.check(&rw10(0x2A, 42, 1, 0), &pattern(1, 0), 0),
        (3, 0x0C, 0x00)
    );
}

#[test]
fn read_only_lun() {
    let mut cfg = LunConfig::new(Uuid::from_u128(1));
    cfg.read_only = true;
    let t = T::with(cfg, false);
    let ms = t.ok(&[0x1A, 0, 0x3F, 0, 255, 0], &[], 255);
    assert_eq!(ms[2], 0x90, "WP + DPOFUA");
    let wp = (7, 0x27, 0x00);
    assert_eq!(t.check(&rw10(0x2A, 0, 1, 0), &pattern(1, 0), 0), wp);
    assert_eq!(t.check(&rw16(0x8B, 0, 1, 0), &pattern(1, 0), 0), wp);
    assert_eq!(t.check(&rw10(0x2E, 0, 1, 0x02), &pattern(1, 0), 0), wp);
    assert_eq!(t.check(&rw10(0x41, 0, 1, 0), &pattern(1, 0), 0), wp);
    assert_eq!(
        t.check(&rw10(0x41, 0, 1, 0x08), &[], 0),
        wp,
        "WRITE SAME UNMAP"
    );
    t.ok(&rw10(0x28, 0, 1, 0), &[], 512);
    // WCE=0 device.
    let caching = t.ok(&[0x1A, 0x08, 0x08, 0, 255, 0], &[], 255);
    assert_eq!(caching[4 + 2] & 0x04, 0);
}

#[test]
fn verify_and_miscompare_offset() {
    let t = T::new();
    let data = pattern(4, 5);
    t.ok(&rw10(0x2A, 10, 4, 0), &data, 0);
    t.ok(&rw10(0x2F, 10, 4, 0x02), &data, 0);
    t.ok(&rw16(0x8F, 10, 4, 0x12), &data, 0);
    let mut bad = data.clone();
    bad[1234] ^= 0x58;
    let (r, _) = t.cmd(&rw12(0xAF, 10, 4, 0x02), &bad, 0);
    assert_eq!(sense(&r), (0x0E, 0x1D, 0x00));
    let s = r.sense.unwrap();
    assert_eq!(s[0], 0xF0);
    assert_eq!(&s[3..7], &1234u32.to_be_bytes());
    // BYTCHK=0: no comparison, data-out ignored.
    t.ok(&rw10(0x2F, 10, 4, 0), &[], 0);
    assert_eq!(t.check(&rw10(0x2F, BLOCKS as u32, 1, 0), &[], 0), LBA_OOB);
    assert_eq!(
        t.check(&rw10(0x2F, BLOCKS as u32 + 1, 0, 0x02), &[], 0),
        LBA_OOB
    );
    // BYTCHK=11: one block compared with every block.
    let blk = pattern(1, 7);
    let mut four = Vec::new();
    for _ in 0..4 {
        four.extend_from_slice(&blk);
    }
    t.ok(&rw10(0x2A, 20, 4, 0), &four, 0);
    t.ok(&rw10(0x2F, 20, 4, 0x06), &blk, 0);
    let (r, _) = t.cmd(&rw10(0x2F, 19, 4, 0x06), &blk, 0);
    assert_eq!(sense(&r), (0x0E, 0x1D, 0x00));
    assert_eq!(
        t.check(&rw10(0x2F, 20, 4, 0x04), &blk, 0),
        INVALID_CDB,
        "BYTCHK=10"
    );
}

#[test]
fn write_and_verify() {
    let t = T::new();
    let data = pattern(3, 11);
    t.ok(&rw10(0x2E, 30, 3, 0x02), &data, 0);
    t.ok(&rw12(0xAE, 40, 3, 0x10), &data, 0);
    t.ok(&rw16(0x8E, 50, 3, 0x02), &data, 0);
    for lba in [30, 40, 50] {
        assert_eq!(t.ok(&rw10(0x28, lba, 3, 0), &[], 1 << 20), data);
    }
}

#[test]
fn orwrite_ors_into_the_medium() {
    let t = T::new();
    t.ok(&rw10(0x2A, 0, 2, 0), &vec![0xA0; 2 * BS], 0);
    t.ok(&rw16(0x8B, 0, 2, 0x18), &vec![0x05; 2 * BS], 0);
    assert_eq!(t.ok(&rw10(0x28, 0, 2, 0), &[], 4096), vec![0xA5; 2 * BS]);
    assert_eq!(t.check(&rw16(0x8B, BLOCKS + 1, 0, 0), &[], 0), LBA_OOB);
    assert_eq!(
        t.check(&rw16(0x8B, 0, 1, 0x20), &pattern(1, 0), 0),
        INVALID_CDB
    );
}

#[test]
fn orwrite_is_atomic_against_concurrent_writers() {
    let t = Arc::new(T::new());
    let threads: Vec<_> = (0..8u8)
        .map(|bit| {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    t.ok(&rw16(0x8B, 7, 1, 0), &vec![1u8 << bit; BS], 0);
                    // Unrelated plain writes next to it.
                    t.ok(&rw10(0x2A, 8 + u32::from(bit), 1, 0), &vec![bit; BS], 0);
                }
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
    assert_eq!(t.ok(&rw10(0x28, 7, 1, 0), &[], 512), vec![0xFF; BS]);
}

#[test]
fn write_same_fills() {
    let t = T::new();
    let blk = pattern(1, 3);
    t.ok(&rw10(0x41, 100, 37, 0), &blk, 0);
    let d = t.ok(&rw10(0x28, 100, 37, 0), &[], 1 << 20);
    for c in d.chunks(BS) {
        assert_eq!(c, &blk[..]);
    }
    // Bigger than one chunk, up to the end of the medium.
    t.ok(&rw16(0x93, BLOCKS - 3000, 3000, 0), &blk, 0);
    assert!(t.disk.contents()[(BLOCKS as usize - 3000) * BS..]
        .chunks(BS)
        .all(|c| c == &blk[..]));
    // NDOB writes zeros.
    t.ok(&rw16(0x93, 100, 5, 0x01), &[], 0);
    assert!(t
        .ok(&rw10(0x28, 100, 5, 0), &[], 1 << 20)
        .iter()
        .all(|&b| b == 0));
    // UNMAP (not thin), ANCHOR, wrong data-out size, out of range.
    assert_eq!(t.check(&rw10(0x41, 0, 1, 0x08), &blk, 0), INVALID_CDB);
    assert_eq!(t.check(&rw10(0x41, 0, 1, 0x10), &blk, 0), INVALID_CDB);
    // 0 blocks (WSNZ=0): up to the last block; from past the end: out of range.
    t.ok(&rw10(0x41, BLOCKS as u32 - 7, 0, 0), &blk, 0);
    assert!(t.disk.contents()[(BLOCKS as usize - 7) * BS..]
        .chunks(BS)
        .all(|c| c == &blk[..]));
    assert_eq!(t.check(&rw10(0x41, BLOCKS as u32, 0, 0), &blk, 0), LBA_OOB);
    assert_eq!(t.check(&rw16(0x93, u64::MAX, 0, 0), &blk, 0), LBA_OOB);
    assert_eq!(t.check(&rw10(0x41, 0, 1, 0), &pattern(2, 0), 0).0, ILLEGAL);
    assert_eq!(t.check(&rw10(0x41, 0, 1, 0), &blk[..256], 0).0, ILLEGAL);
    assert_eq!(
        t.check(&rw10(0x41, BLOCKS as u32 - 1, 2, 0), &blk, 0),
        LBA_OOB
    );
    assert_eq!(t.check(&rw16(0x93, u64::MAX, 1, 0), &blk, 0), LBA_OOB);
}

#[test]
fn prefetch_and_synchronize_cache() {
    let t = T::new();
    for op10 in [0x34u8, 0x35] {
        assert_eq!(
            t.cmd(&rw10(op10, 0, 1, 0x02), &[], 0).0.status,
            ScsiStatus::Good
        );
        t.ok(&rw10(op10, BLOCKS as u32 - 256, 256, 0), &[], 0);
        t.ok(&rw10(op10, 5, 0, 0), &[], 0);
        assert_eq!(
            t.check(&rw10(op10, BLOCKS as u32 + 1, 0, 0), &[], 0),
            LBA_OOB
        );
        assert_eq!(
            t.check(&rw10(op10, BLOCKS as u32 - 1, 2, 0), &[], 0),
            LBA_OOB
        );
    }
    t.ok(&rw16(0x90, 0, 8, 0), &[], 0);
    t.ok(&rw16(0x91, 0, 0, 0), &[], 0);
    assert_eq!(t.check(&rw16(0x91, u64::MAX, 1, 0), &[], 0), LBA_OOB);
    assert!(t.disk.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 3);
}

// ---------------------------------------------------------------- mode pages

#[test]
fn mode_sense_changeable_and_wce() {
    let t = T::new();
    let cur = t.ok(&[0x1A, 0x08, 0x3F, 0, 255, 0], &[], 255);
    assert_eq!(cur[3], 0, "DBD: no block descriptor");
    assert_eq!(&cur[4..7], &[0x08, 0x12, 0x04], "WCE=1 like the device");
    let ch = t.ok(&[0x1A, 0x08, 0x40 | 0x3F, 0, 255, 0], &[], 255);
    let pages = &ch[4..];
    assert_eq!(&pages[0..3], &[0x08, 0x12, 0x00], "WCE not changeable");
    assert_eq!(
        &pages[20..24],
        &[0x0A, 0x0A, 0x04, 0x00],
        "only D_SENSE changeable"
    );
    assert!(pages[32..].iter().skip(2).all(|&b| b == 0));
    // Saved values are not supported.
    assert_eq!(
        t.check(&[0x1A, 0, 0xC0 | 0x3F, 0, 255, 0], &[], 255),
        (ILLEGAL, 0x39, 0x00)
    );
    // Block descriptor and truncation (no residual overflow: 4 bytes asked, 4 given).
    let d = t.ok(&[0x1A, 0, 0x0A, 0, 4, 0], &[], 4);
    assert_eq!(d.len(), 4);
    let d = t.ok(&[0x1A, 0, 0x0A, 0, 255, 0], &[], 255);
    assert_eq!(&d[4..12], &[0, 0, 0x10, 0x00, 0, 0, 0x02, 0x00]);
    // MODE SENSE(10) with LLBAA.
    let d = t.ok(&[0x5A, 0x10, 0x08, 0, 0, 0, 0, 0, 255, 0], &[], 255);
    assert_eq!(d[4] & 1, 1);
    assert_eq!(&d[8..16], &BLOCKS.to_be_bytes());
    assert_eq!(t.check(&[0x1A, 0, 0x19, 0, 255, 0], &[], 255), INVALID_CDB);
}

#[test]
fn mode_select_d_sense_and_unit_attention() {
    let t = T::new();
    let mut p = vec![0u8, 0, 0, 0];
    let ctl = t.ok(&[0x1A, 0x08, 0x0A, 0, 255, 0], &[], 255);
    p.extend_from_slice(&ctl[4..16]);
    p[6] |= 0x04; // D_SENSE
    let len = p.len() as u8;
    // SP=1 and PF=0 are rejected.
    assert_eq!(t.check(&[0x15, 0x11, 0, 0, len, 0], &p, 0), INVALID_CDB);
    assert_eq!(t.check(&[0x15, 0x00, 0, 0, len, 0], &p, 0), INVALID_CDB);
    // Parameter list shorter than announced.
    assert_eq!(
        t.check(&[0x15, 0x10, 0, 0, len, 0], &p[..8], 0),
        (ILLEGAL, 0x1A, 0x00)
    );
    t.ok(&[0x15, 0x10, 0, 0, len, 0], &p, 0);
    // Sense is now in descriptor format on this LU.
    let (r, _) = t.cmd(&rw10(0x28, BLOCKS as u32, 1, 0), &[], 512);
    assert_eq!(r.sense.as_ref().unwrap()[0], 0x72);
    assert_eq!(sense(&r), LBA_OOB);
    // The other nexus is told the mode parameters changed (in descriptor format).
    let (r, _) = t.run(&t.n2, 1, &tur(), &[], 0);
    assert_eq!(sense(&r), (6, 0x2A, 0x01));
    assert_eq!(r.sense.unwrap()[0], 0x72);
    // Changing a non-changeable bit.
    p[7] = 0;
    assert_eq!(
        t.check(&[0x15, 0x10, 0, 0, len, 0], &p, 0),
        (ILLEGAL, 0x26, 0x00)
    );
    // MODE SELECT(10) clearing D_SENSE again.
    let mut p10 = vec![0u8; 8];
    p10.extend_from_slice(&ctl[4..16]);
    let l = (p10.len() as u16).to_be_bytes();
    t.ok(&[0x55, 0x10, 0, 0, 0, 0, 0, l[0], l[1], 0], &p10, 0);
    let (r, _) = t.cmd(&rw10(0x28, BLOCKS as u32, 1, 0), &[], 512);
    assert_eq!(r.sense.unwrap()[0], 0x70);
    // Zero-length parameter list is a no-op.
    t.ok(&[0x15, 0x10, 0, 0, 0, 0], &[], 0);
}

// ---------------------------------------------------------------- unit attention

#[test]
fn unit_attention_lifecycle() {
    let disk = Arc::new(MemDisk::new(64, 512, true));
    let lu = Arc::new(LogicalUnit::new(LunConfig::new(Uuid::nil()), disk));
    let map = LunMap::new(vec![(0, lu.clone())]);
    let n = nexus(5);
    let run = |cdb: &[u8]| {
        let req = ScsiRequest {
            nexus: &n,
            lun: 0,
            cdb,
            data_out: &[],
            data_in_len_max: 255,
            attr: TaskAttr::Simple,
        };
        let mut b = IoBuf::new();
        let r = map.execute(&req, &mut b);
        (r, b.to_vec())
    };
    // INQUIRY and REPORT LUNS do not report the pending UA.
    assert_eq!(run(&inquiry(false, 0, 36)).0.status, ScsiStatus::Good);
    assert_eq!(
        run(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]).0.status,
        ScsiStatus::Good
    );
    // REQUEST SENSE returns and clears it.
    let (r, d) = run(&[0x03, 0, 0, 0, 252, 0]);
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!((d[0], d[2], d[12], d[13]), (0x70, 0x06, 0x29, 0x00));
    let (_, d) = run(&[0x03, 0x01, 0, 0, 252, 0]);
    assert_eq!(d, vec![0x72, 0, 0, 0, 0, 0, 0, 0], "descriptor NO SENSE");
    assert_eq!(run(&tur()).0.status, ScsiStatus::Good);
    assert_eq!(lu.nexus_count(), 1);
    // LUN reset: 29/03 for every nexus, the one that asked included (SAM-5 6.3.3).
    let other = nexus(6);
    map.task_mgmt(&other, 0, TaskMgmt::LunReset).unwrap();
    assert_eq!(sense(&run(&tur()).0), (6, 0x29, 0x03));
    assert_eq!(run(&tur()).0.status, ScsiStatus::Good);
    map.task_mgmt(&n, 0, TaskMgmt::LunReset).unwrap();
    assert_eq!(sense(&run(&tur()).0), (6, 0x29, 0x03));
    assert_eq!(run(&tur()).0.status, ScsiStatus::Good);
    map.task_mgmt(&other, 0, TaskMgmt::TargetWarmReset).unwrap();
    assert_eq!(sense(&run(&rw10(0x28, 0, 1, 0)).0), (6, 0x29, 0x00));
    // Nexus loss forgets the nexus: the next session starts with 29/00 again.
    map.nexus_lost(&n);
    assert_eq!(lu.nexus_count(), 0);
    assert_eq!(sense(&run(&tur()).0), (6, 0x29, 0x00));
    assert_eq!(
        map.task_mgmt(&n, LunMap::encode_lun(3), TaskMgmt::LunReset),
        Err(TmfError::NoSuchLun(3 << 48))
    );
    map.task_mgmt(&n, 0, TaskMgmt::AbortTaskSet).unwrap();
}

// ---------------------------------------------------------------- reservations

#[test]
fn reserve6_conflicts_between_nexuses() {
    let t = T::new();
    let reserve = [0x16, 0, 0, 0, 0, 0];
    let release = [0x17, 0, 0, 0, 0, 0];
    t.ok(&reserve, &[], 0);
    t.ok(&reserve, &[], 0);
    let on2 = |cdb: &[u8], out: &[u8]| t.run(&t.n2, 1, cdb, out, 4096).0;
    assert_eq!(on2(&reserve, &[]).status, ScsiStatus::ReservationConflict);
    assert_eq!(
        on2(&release, &[]).status,
        ScsiStatus::Good,
        "release by non-holder is a no-op"
    );
    assert_eq!(
        on2(&[0x1A, 0, 0x3F, 0, 255, 0], &[]).status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(
        on2(&rw10(0x28, 0, 1, 0), &[]).status,
        ScsiStatus::ReservationConflict
    );
    assert_eq!(on2(&tur(), &[]).status, ScsiStatus::ReservationConflict);
    assert_eq!(on2(&inquiry(false, 0, 96), &[]).status, ScsiStatus::Good);
    assert_eq!(on2(&[0x03, 0, 0, 0, 18, 0], &[]).status, ScsiStatus::Good);
    assert_eq!(
        on2(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0], &[]).status,
        ScsiStatus::Good
    );
    t.ok(&[0x1A, 0, 0x3F, 0, 255, 0], &[], 255);
    t.ok(&release, &[], 0);
    assert_eq!(on2(&reserve, &[]).status, ScsiStatus::Good);
    assert_eq!(
        t.cmd(&tur(), &[], 0).0.status,
        ScsiStatus::ReservationConflict
    );
    // Nexus loss releases.
    t.map.nexus_lost(&t.n2);
    t.ok(&reserve, &[], 0);
    // LUN reset releases.
    t.map
        .task_mgmt(&t.n1, LunMap::encode_lun(1), TaskMgmt::LunReset)
        .unwrap();
    assert_eq!(sense(&t.run(&t.n2, 1, &reserve, &[], 0).0), (6, 0x29, 0x00));
    assert_eq!(on2(&reserve, &[]).status, ScsiStatus::Good);
    assert_eq!(on2(&release, &[]).status, ScsiStatus::Good);
}

// ---------------------------------------------------------------- addressing, unsupported

#[test]
fn lun_addressing() {
    assert_eq!(LunMap::decode_lun(0), Some(0));
    assert_eq!(LunMap::decode_lun(0x0001_0000_0000_0000), Some(1));
    assert_eq!(LunMap::decode_lun(0x00FF_0000_0000_0000), Some(255));
    assert_eq!(LunMap::decode_lun(0x4101_0000_0000_0000), Some(0x101));
    assert_eq!(LunMap::decode_lun(0x7FFF_0000_0000_0000), Some(0x3FFF));
    assert_eq!(LunMap::decode_lun(0x0101_0000_0000_0000), None, "bus 1");
    assert_eq!(
        LunMap::decode_lun(0x0001_0000_0000_0001),
        None,
        "second level"
    );
    assert_eq!(LunMap::decode_lun(0xC101_0000_0000_0000), None);
    for n in [0, 1, 255, 256, 1000, 0x3FFF] {
        assert_eq!(LunMap::decode_lun(LunMap::encode_lun(n)), Some(n));
    }
    assert_eq!(LunMap::encode_lun(256), 0x4100_0000_0000_0000);
}

#[test]
fn unknown_lun_and_report_luns() {
    let t = T::new();
    // LUN 0 is not configured.
    let d = t.run(&t.n1, 0, &inquiry(false, 0, 96), &[], 96).1;
    assert_eq!(d[0], 0x7F);
    let (r, _) = t.run(&t.n1, 0, &tur(), &[], 0);
    assert_eq!(sense(&r), (ILLEGAL, 0x25, 0x00));
    let (r, d) = t.run(&t.n1, 0, &[0x03, 0, 0, 0, 18, 0], &[], 18);
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!((d[2], d[12]), (ILLEGAL, 0x25));
    assert_eq!(
        sense(&t.run(&t.n1, 0, &[0x44; 10], &[], 0).0),
        (ILLEGAL, 0x20, 0x00)
    );
    let rl = [0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let (r, d) = t.run(&t.n1, 0, &rl, &[], 256);
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!(d, vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    let (_, d2) = t.run(&t.n1, 1, &rl, &[], 256);
    assert_eq!(d, d2);
    let mut rl1 = rl;
    rl1[2] = 1;
    assert_eq!(t.ok(&rl1, &[], 256), vec![0; 8]);
    rl1[2] = 2;
    assert_eq!(t.ok(&rl1, &[], 256), d);
    rl1[2] = 0x10;
    assert_eq!(t.check(&rl1, &[], 256), INVALID_CDB);
    let mut short = rl;
    short[8] = 0;
    short[9] = 15;
    assert_eq!(t.check(&short, &[], 256), INVALID_CDB);
}

#[test]
fn unsupported_commands() {
    let t = T::new();
    let invalid_opcode = (ILLEGAL, 0x20, 0x00);
    // 0x42 (UNMAP) is only implemented for thin-provisioned LUs; this one is not.
    for opcode in [0x42u8, 0xA4, 0x04, 0x1E, 0x48, 0x9C, 0xC0] {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        assert_eq!(t.check(&cdb, &[], 0), invalid_opcode, "opcode {opcode:#x}");
    }
    let mut cdb32 = [0u8; 32];
    cdb32[0] = 0x7F;
    cdb32[9] = 0x0B; // WRITE(32)
    assert_eq!(t.check(&cdb32, &[], 0), invalid_opcode);
    // Unsupported service actions of opcodes with supported ones: field pointer 1.
    let mut gls = [0u8; 16];
    gls[0] = 0x9E;
    gls[1] = 0x13;
    let (r, _) = t.cmd(&gls, &[], 0);
    assert_eq!(sense(&r), INVALID_CDB);
    assert_eq!(&r.sense.unwrap()[15..18], &[0xCC, 0x00, 0x01]);
    // PERSISTENT RESERVE IN / OUT service actions beyond the implemented ones.
    for (opcode, sa) in [(0x5Eu8, 0x04u8), (0x5E, 0x1F), (0x5F, 0x08), (0x5F, 0x1F)] {
        let (r, _) = t.cmd(&[opcode, sa, 0, 0, 0, 0, 0, 0, 24, 0], &[0; 24], 255);
        assert_eq!(sense(&r), INVALID_CDB, "{opcode:#x}/{sa:#x}");
        assert_eq!(&r.sense.unwrap()[15..18], &[0xCC, 0x00, 0x01]);
    }
    let mut rtpg = [0u8; 12];
    rtpg[0] = 0xA3;
    rtpg[1] = 0x0A;
    assert_eq!(t.check(&rtpg, &[], 0), INVALID_CDB);
    // START STOP UNIT: accepted, LOEJ rejected (nothing removable).
    t.ok(&[0x1B, 0x01, 0, 0, 0x00, 0], &[], 0);
    t.ok(&[0x1B, 0x00, 0, 0, 0x01, 0], &[], 0);
    assert_eq!(t.check(&[0x1B, 0, 0, 0, 0x02, 0], &[], 0), INVALID_CDB);
}

#[test]
fn report_supported_opcodes_matches_executor() {
    let t = T::new();
    let all = t.ok(
        &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0],
        &[],
        65535,
    );
    let len = u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize;
    assert_eq!(len + 4, all.len());
    // UNMAP is listed for thin-provisioned LUs only; this one is fully provisioned.
    let listed = || rsoc::SUPPORTED.iter().filter(|i| i.opcode != 0x42);
    assert_eq!(len / 8, listed().count());
    assert!(all[4..].chunks(8).all(|e| e[0] != 0x42));
    // Every listed command is executed (never INVALID COMMAND OPERATION CODE or
    // an unsupported service action).
    for info in listed() {
        let mut cdb = [0u8; 16];
        cdb[0] = info.opcode;
        if let Some(s) = info.service_action {
            cdb[1] = s as u8;
        }
        let (r, _) = t.cmd(&cdb[..info.usage.len()], &[], 4096);
        if let Some(s) = sense_opt(&r) {
            assert_ne!(s, (ILLEGAL, 0x20, 0x00), "opcode {:#x}", info.opcode);
            if let Some(sense) = &r.sense {
                assert!(
                    !(s == INVALID_CDB && sense[15..18] == [0xCC, 0, 1]),
                    "opcode {:#x} reports unsupported service action",
                    info.opcode
                );
            }
        }
    }
    // One command, with timeouts descriptor.
    let one = t.ok(
        &[0xA3, 0x0C, 0x81, 0x2A, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0],
        &[],
        65535,
    );
    assert_eq!(one[1], 0x83);
    assert_eq!(one.len(), 4 + 10 + 12);
    assert_eq!(one[4 + 1] & 0x18, 0x18, "DPO/FUA usage for WRITE(10)");
    assert_eq!(&one[14..16], &[0, 0x0A]);
    // Reporting option 1 on an opcode with service actions, 2 on one without.
    assert_eq!(
        t.check(
            &[0xA3, 0x0C, 0x01, 0x9E, 0, 0x10, 0, 0, 0xFF, 0xFF, 0, 0],
            &[],
            65535
        ),
        INVALID_CDB
    );
    assert_eq!(
        t.check(
            &[0xA3, 0x0C, 0x02, 0x28, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0],
            &[],
            65535
        ),
        INVALID_CDB
    );
    let rc16 = t.ok(
        &[0xA3, 0x0C, 0x02, 0x9E, 0, 0x10, 0, 0, 0xFF, 0xFF, 0, 0],
        &[],
        65535,
    );
    assert_eq!(rc16[1] & 7, 3);
}

#[test]
fn report_supported_opcodes_lists_exactly_the_implemented_set() {
    // Every opcode not in the table answers INVALID COMMAND OPERATION CODE (or, for
    // opcodes with service actions, an unsupported service action).
    let t = T::new();
    for opcode in 0..=255u8 {
        let listed = rsoc::SUPPORTED.iter().any(|i| i.opcode == opcode) || opcode == 0xA0;
        if listed {
            continue;
        }
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        assert_eq!(
            t.check(&cdb, &[], 0),
            (ILLEGAL, 0x20, 0x00),
            "opcode {opcode:#x}"
        );
    }
}

#[test]
fn sense_constants_are_consistent() {
    assert_eq!(asc::INVALID_FIELD_IN_CDB, (0x24, 0x00));
    assert_eq!(asc::BUS_DEVICE_RESET, (0x29, 0x03));
}

// ---------------------------------------------------------------- property tests

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..2200)) {
        let (map, disk) = crate::fuzzing::small_target(64);
        run_one(&map, &disk, &input);
    }

    #[test]
    fn arbitrary_fields_of_implemented_commands(
        which in 0..rsoc::SUPPORTED.len(),
        fields in proptest::array::uniform16(any::<u8>()),
        out_blocks in 0usize..4,
        max in prop_oneof![Just(0u32), Just(200), Just(4096), Just(1 << 20)],
        second in any::<bool>(),
    ) {
        let (map, disk) = crate::fuzzing::small_target(64);
        let info = &rsoc::SUPPORTED[which];
        let mut cdb = fields;
        cdb[0] = info.opcode;
        if let Some(s) = info.service_action {
            cdb[1] = (cdb[1] & 0xE0) | s as u8;
        }
        let len = info.usage.len();
        // Keep LBAs and lengths small half of the time so that commands get executed.
        if fields[15] & 1 == 0 {
            for b in cdb.iter_mut().take(len - 1).skip(2) {
                *b &= 0x01;
            }
        }
        cdb[len - 1] &= !0x05;
        let mut input = vec![len as u8];
        input.extend_from_slice(&(max.min(65535) as u16).to_le_bytes());
        input.push(u8::from(second));
        input.extend_from_slice(&cdb[..len]);
        input.extend(std::iter::repeat_n(0xA5u8, out_blocks * 512));
        run_one(&map, &disk, &input);
        run_one(&map, &disk, &input);
    }
}
