//! READ DEFECT DATA(10) and READ DEFECT DATA(12) (SBC-3 5.13, 5.14).
//!
//! Owns: the answer of a virtual disk, which has no grown or primary defects: a header
//! with an empty defect list in the requested format. PLISTV / GLISTV are set for the
//! lists asked for (an empty list is a valid list). Every address descriptor format
//! SBC-3 defines is accepted (short block, extended bytes from index, extended physical
//! sector, long block, bytes from index, physical sector); the vendor-specific and
//! reserved formats (110b, 111b) are INVALID FIELD IN CDB.

use crate::api::ScsiStatus;
use crate::lun::{CmdResult, Exec, LogicalUnit};
use crate::sense::Sense;

/// READ DEFECT DATA request fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefectArgs {
    /// READ DEFECT DATA(12) (else (10)).
    pub twelve: bool,
    /// REQ_PLIST: return the primary defect list.
    pub plist: bool,
    /// REQ_GLIST: return the grown defect list.
    pub glist: bool,
    /// DEFECT LIST FORMAT.
    pub format: u8,
    /// Allocation length.
    pub alloc_len: u32,
}

/// The parameter data (untruncated): the 4-byte (10) or 8-byte (12) header of an empty
/// list, or the byte and bit of the offending CDB field.
pub fn defect_data(a: DefectArgs) -> Result<Vec<u8>, (u16, u8)> {
    if a.format >= 0b110 {
        return Err((if a.twelve { 1 } else { 2 }, 2));
    }
    let flags = (u8::from(a.plist) << 4) | (u8::from(a.glist) << 3) | a.format;
    // (10): DEFECT LIST LENGTH in bytes 2..4; (12): bytes 4..8. Both zero.
    Ok(if a.twelve {
        vec![0, flags, 0, 0, 0, 0, 0, 0]
    } else {
        vec![0, flags, 0, 0]
    })
}

impl LogicalUnit {
    /// READ DEFECT DATA(10/12).
    pub(crate) fn read_defect_data(&self, a: DefectArgs, ex: &mut Exec<'_, '_>) -> CmdResult {
        let data = defect_data(a).map_err(|(byte, bit)| Sense::invalid_cdb(byte, Some(bit)))?;
        ex.put(&data, a.alloc_len as usize);
        Ok(ScsiStatus::Good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::MemDisk;
    use crate::testkit::{Target, INVALID_CDB};

    #[test]
    fn through_the_engine() {
        let t = Target::new(vec![std::sync::Arc::new(MemDisk::new(64, 512, true))]);
        assert_eq!(
            t.ok(0, &[0x37, 0, 0, 0, 0, 0, 0, 0, 32, 0], &[]),
            vec![0, 0, 0, 0]
        );
        assert_eq!(
            t.ok(0, &[0x37, 0, 0x18, 0, 0, 0, 0, 0, 2, 0], &[]),
            vec![0, 0x18]
        );
        assert_eq!(
            t.ok(0, &[0xB7, 0x08, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], &[]),
            vec![0, 0x08, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            t.check(0, &[0x37, 0, 0x07, 0, 0, 0, 0, 0, 32, 0], &[]),
            INVALID_CDB
        );
    }

    #[test]
    fn empty_lists_golden() {
        let a = DefectArgs {
            twelve: false,
            plist: false,
            glist: false,
            format: 0,
            alloc_len: 32,
        };
        assert_eq!(defect_data(a).unwrap(), vec![0, 0, 0, 0]);
        let both = DefectArgs {
            plist: true,
            glist: true,
            format: 0b101,
            ..a
        };
        assert_eq!(defect_data(both).unwrap(), vec![0, 0x1D, 0, 0]);
        let twelve = DefectArgs {
            twelve: true,
            glist: true,
            format: 0b011,
            ..a
        };
        assert_eq!(
            defect_data(twelve).unwrap(),
            vec![0, 0x0B, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(defect_data(DefectArgs { format: 6, ..a }), Err((2, 2)));
        assert_eq!(
            defect_data(DefectArgs {
                format: 7,
                ..twelve
            }),
            Err((1, 2))
        );
    }
}
