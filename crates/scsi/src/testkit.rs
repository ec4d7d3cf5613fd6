//! Test helpers shared by the unit tests of `caw.rs`, `thin.rs` and `xcopy.rs`: a
//! target of LUs over given devices, command execution and sense decoding.

use std::sync::Arc;

use twinsan_blockdev::{BlockDevice, IoBuf};
use uuid::Uuid;

use crate::api::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TaskAttr};
use crate::{LogicalUnit, LunConfig, LunMap};

/// A target whose LUN `i` exports `devs[i]` with UUID `i + 1`.
pub struct Target {
    pub map: LunMap,
}

pub fn nexus(id: u64) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.test:{id},i,0x1"),
        relative_port_id: 1,
    }
}

pub fn uuid(lun: u64) -> Uuid {
    Uuid::from_u128(0xABCD_0000 + u128::from(lun) + 1)
}

impl Target {
    pub fn new(devs: Vec<Arc<dyn BlockDevice>>) -> Self {
        Self::with(
            devs.into_iter()
                .map(|d| (LunConfig::new(Uuid::nil()), d))
                .collect(),
        )
    }

    /// LUs with explicit configurations (the UUID is replaced by [`uuid`]).
    pub fn with(luns: Vec<(LunConfig, Arc<dyn BlockDevice>)>) -> Self {
        let luns = luns
            .into_iter()
            .enumerate()
            .map(|(i, (mut cfg, dev))| {
                cfg.uuid = uuid(i as u64);
                (i as u64, Arc::new(LogicalUnit::new(cfg, dev)))
            })
            .collect::<Vec<_>>();
        let n = luns.len() as u64;
        let t = Self {
            map: LunMap::new(luns),
        };
        for id in 1..=4 {
            for lun in 0..n {
                // Consume the power-on unit attention.
                t.run(&nexus(id), lun, &[0; 6], &[]);
            }
        }
        t
    }

    pub fn lu(&self, lun: u64) -> &Arc<LogicalUnit> {
        self.map.get(lun).expect("LUN")
    }

    pub fn run(&self, n: &Nexus, lun: u64, cdb: &[u8], out: &[u8]) -> (ScsiResponse, Vec<u8>) {
        let req = ScsiRequest {
            nexus: n,
            lun: LunMap::encode_lun(lun),
            cdb,
            data_out: out,
            data_in_len_max: 1 << 24,
            attr: TaskAttr::Simple,
        };
        let mut buf = IoBuf::new();
        let r = self.map.execute(&req, &mut buf);
        assert_eq!(buf.len(), r.data_in_len as usize);
        (r, buf.to_vec())
    }

    /// Run on nexus 1 and expect GOOD; returns data-in.
    pub fn ok(&self, lun: u64, cdb: &[u8], out: &[u8]) -> Vec<u8> {
        let (r, d) = self.run(&nexus(1), lun, cdb, out);
        assert_eq!(r.status, ScsiStatus::Good, "sense {:?}", sense_of(&r));
        d
    }

    /// Run on nexus 1 and expect CHECK CONDITION; returns (key, asc, ascq).
    pub fn check(&self, lun: u64, cdb: &[u8], out: &[u8]) -> (u8, u8, u8) {
        let (r, _) = self.run(&nexus(1), lun, cdb, out);
        assert_eq!(r.status, ScsiStatus::CheckCondition);
        let s = sense_of(&r).expect("sense");
        (s.0, s.1, s.2)
    }

    pub fn read(&self, lun: u64, lba: u64, blocks: u32) -> Vec<u8> {
        self.ok(lun, &rw16(0x88, lba, blocks), &[])
    }

    pub fn write(&self, lun: u64, lba: u64, data: &[u8], bs: usize) {
        self.ok(lun, &rw16(0x8A, lba, (data.len() / bs) as u32), data);
    }
}

/// (key, asc, ascq, INFORMATION if valid, sense-key-specific bytes) of fixed-format
/// sense data.
pub type SenseParts = (u8, u8, u8, Option<u32>, [u8; 3]);

pub fn sense_of(r: &ScsiResponse) -> Option<SenseParts> {
    let s = r.sense.as_ref()?;
    assert_eq!(s[0] & 0x7F, 0x70, "fixed format");
    let info = (s[0] & 0x80 != 0).then(|| u32::from_be_bytes([s[3], s[4], s[5], s[6]]));
    Some((s[2] & 0x0F, s[12], s[13], info, [s[15], s[16], s[17]]))
}

pub fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub const ILLEGAL: u8 = 5;
pub const INVALID_CDB: (u8, u8, u8) = (ILLEGAL, 0x24, 0x00);
pub const INVALID_PARAM: (u8, u8, u8) = (ILLEGAL, 0x26, 0x00);
pub const PLLE: (u8, u8, u8) = (ILLEGAL, 0x1A, 0x00);
pub const LBA_OOB: (u8, u8, u8) = (ILLEGAL, 0x21, 0x00);
pub const INVALID_OPCODE: (u8, u8, u8) = (ILLEGAL, 0x20, 0x00);
