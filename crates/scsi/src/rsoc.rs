//! REPORT SUPPORTED OPERATION CODES (SPC-4 6.35): the table of every command the engine
//! implements, with its CDB usage bitmap, and the encoding of the three reporting
//! options (all commands, one opcode, one opcode + service action) with or without
//! command timeouts descriptors.
//!
//! Owns: the list of implemented commands as initiators see it. It must list exactly
//! what the executor implements (libiscsi uses it to decide which tests to run); a unit
//! test in `lun.rs` cross-checks it against the executor.

use crate::cdb::{op, sa};
use crate::sense::Sense;

/// One implemented command.
#[derive(Debug, Clone, Copy)]
pub struct OpInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action, for opcodes that use one.
    pub service_action: Option<u16>,
    /// CDB usage data: byte 0 is the opcode, then a bit set for every CDB bit the
    /// device server evaluates.
    pub usage: &'static [u8],
}

/// Control byte usage: NACA and LINK are evaluated (and rejected when set).
const CTL: u8 = 0x05;

const fn info(opcode: u8, service_action: Option<u16>, usage: &'static [u8]) -> OpInfo {
    OpInfo {
        opcode,
        service_action,
        usage,
    }
}

/// PERSISTENT RESERVE IN: service action, allocation length.
const PRIN_USAGE: &[u8] = &[
    op::PERSISTENT_RESERVE_IN,
    0x1F,
    0,
    0,
    0,
    0,
    0,
    0xFF,
    0xFF,
    CTL,
];
/// PERSISTENT RESERVE OUT: service action, scope and type, parameter list length.
const PROUT_USAGE: &[u8] = &[
    op::PERSISTENT_RESERVE_OUT,
    0x1F,
    0xFF,
    0,
    0,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    CTL,
];

/// EXTENDED COPY (LID1): service action, parameter list length.
const XCOPY_USAGE: &[u8] = &[
    op::EXTENDED_COPY,
    0x1F,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0,
    CTL,
];
/// RECEIVE COPY RESULTS: service action, list identifier, allocation length.
const RCR_USAGE: &[u8] = &[
    op::RECEIVE_COPY_RESULTS,
    0x1F,
    0xFF,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0,
    CTL,
];

/// Every command the engine implements, sorted by (opcode, service action).
pub static SUPPORTED: &[OpInfo] = &[
    info(
        op::TEST_UNIT_READY,
        None,
        &[op::TEST_UNIT_READY, 0, 0, 0, 0, CTL],
    ),
    info(
        op::REQUEST_SENSE,
        None,
        &[op::REQUEST_SENSE, 0x01, 0, 0, 0xFF, CTL],
    ),
    info(op::READ_6, None, &[op::READ_6, 0x1F, 0xFF, 0xFF, 0xFF, CTL]),
    info(
        op::WRITE_6,
        None,
        &[op::WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, CTL],
    ),
    info(
        op::INQUIRY,
        None,
        &[op::INQUIRY, 0x01, 0xFF, 0xFF, 0xFF, CTL],
    ),
    info(
        op::MODE_SELECT_6,
        None,
        &[op::MODE_SELECT_6, 0x11, 0, 0, 0xFF, CTL],
    ),
    info(op::RESERVE_6, None, &[op::RESERVE_6, 0, 0, 0, 0, CTL]),
    info(op::RELEASE_6, None, &[op::RELEASE_6, 0, 0, 0, 0, CTL]),
    info(
        op::MODE_SENSE_6,
        None,
        &[op::MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, CTL],
    ),
    info(
        op::START_STOP_UNIT,
        None,
        &[op::START_STOP_UNIT, 0x01, 0, 0, 0xF7, CTL],
    ),
    info(
        op::READ_CAPACITY_10,
        None,
        &[
            op::READ_CAPACITY_10,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
            0x01,
            CTL,
        ],
    ),
    info(
        op::READ_10,
        None,
        &[
            op::READ_10,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::WRITE_10,
        None,
        &[
            op::WRITE_10,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::WRITE_AND_VERIFY_10,
        None,
        &[
            op::WRITE_AND_VERIFY_10,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::VERIFY_10,
        None,
        &[
            op::VERIFY_10,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::PRE_FETCH_10,
        None,
        &[
            op::PRE_FETCH_10,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::SYNCHRONIZE_CACHE_10,
        None,
        &[
            op::SYNCHRONIZE_CACHE_10,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::READ_DEFECT_DATA_10,
        None,
        &[
            op::READ_DEFECT_DATA_10,
            0,
            0x1F,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::WRITE_SAME_10,
        None,
        &[
            op::WRITE_SAME_10,
            0xFE,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(
        op::UNMAP,
        None,
        &[op::UNMAP, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL],
    ),
    info(
        op::MODE_SELECT_10,
        None,
        &[op::MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, CTL],
    ),
    info(
        op::MODE_SENSE_10,
        None,
        &[
            op::MODE_SENSE_10,
            0x18,
            0xFF,
            0xFF,
            0,
            0,
            0,
            0xFF,
            0xFF,
            CTL,
        ],
    ),
    info(op::PERSISTENT_RESERVE_IN, Some(0), PRIN_USAGE),
    info(op::PERSISTENT_RESERVE_IN, Some(1), PRIN_USAGE),
    info(op::PERSISTENT_RESERVE_IN, Some(2), PRIN_USAGE),
    info(op::PERSISTENT_RESERVE_IN, Some(3), PRIN_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(0), PROUT_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(1), PROUT_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(2), PROUT_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(3), PROUT_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(4), PROUT_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(5), PROUT_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(6), PROUT_USAGE),
    info(op::PERSISTENT_RESERVE_OUT, Some(7), PROUT_USAGE),
    info(op::EXTENDED_COPY, Some(sa::EXTENDED_COPY_LID1), XCOPY_USAGE),
    info(op::RECEIVE_COPY_RESULTS, Some(0), RCR_USAGE),
    info(op::RECEIVE_COPY_RESULTS, Some(3), RCR_USAGE),
    info(
        op::READ_16,
        None,
        &[
            op::READ_16,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::COMPARE_AND_WRITE,
        None,
        &[
            op::COMPARE_AND_WRITE,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            0,
            0,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::WRITE_16,
        None,
        &[
            op::WRITE_16,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::ORWRITE_16,
        None,
        &[
            op::ORWRITE_16,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::WRITE_AND_VERIFY_16,
        None,
        &[
            op::WRITE_AND_VERIFY_16,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::VERIFY_16,
        None,
        &[
            op::VERIFY_16,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::PRE_FETCH_16,
        None,
        &[
            op::PRE_FETCH_16,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::SYNCHRONIZE_CACHE_16,
        None,
        &[
            op::SYNCHRONIZE_CACHE_16,
            0x02,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::WRITE_SAME_16,
        None,
        &[
            op::WRITE_SAME_16,
            0xF9,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::SERVICE_ACTION_IN_16,
        Some(sa::READ_CAPACITY_16),
        &[
            op::SERVICE_ACTION_IN_16,
            0x1F,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::SERVICE_ACTION_IN_16,
        Some(sa::GET_LBA_STATUS),
        &[
            op::SERVICE_ACTION_IN_16,
            0x1F,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::REPORT_LUNS,
        None,
        &[
            op::REPORT_LUNS,
            0,
            0xFF,
            0,
            0,
            0,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::MAINTENANCE_IN,
        Some(sa::REPORT_SUPPORTED_OPCODES),
        &[
            op::MAINTENANCE_IN,
            0x1F,
            0x87,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::READ_12,
        None,
        &[
            op::READ_12,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::WRITE_12,
        None,
        &[
            op::WRITE_12,
            0xF8,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::WRITE_AND_VERIFY_12,
        None,
        &[
            op::WRITE_AND_VERIFY_12,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::VERIFY_12,
        None,
        &[
            op::VERIFY_12,
            0xF6,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
    info(
        op::READ_DEFECT_DATA_12,
        None,
        &[
            op::READ_DEFECT_DATA_12,
            0x1F,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0,
            CTL,
        ],
    ),
];

/// Whether any implemented command of this opcode uses service actions.
pub fn opcode_has_service_actions(opcode: u8) -> bool {
    SUPPORTED
        .iter()
        .any(|i| i.opcode == opcode && i.service_action.is_some())
}

/// Look up an implemented command.
pub fn lookup(opcode: u8, service_action: Option<u16>) -> Option<&'static OpInfo> {
    SUPPORTED
        .iter()
        .find(|i| i.opcode == opcode && i.service_action == service_action)
}

/// Command timeouts descriptor (12 bytes): no nominal time given, 30 s recommended.
fn timeouts_descriptor() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t[8..12].copy_from_slice(&30u32.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES parameter data (untruncated).
pub fn report(rctd: bool, options: u8, opcode: u8, service_action: u16) -> Result<Vec<u8>, Sense> {
    match options {
        0 => {
            let mut b = vec![0u8; 4];
            for i in SUPPORTED {
                let mut d = [0u8; 8];
                d[0] = i.opcode;
                d[2..4].copy_from_slice(&i.service_action.unwrap_or(0).to_be_bytes());
                d[5] = u8::from(i.service_action.is_some()) | if rctd { 0x02 } else { 0 };
                d[6..8].copy_from_slice(&(i.usage.len() as u16).to_be_bytes());
                b.extend_from_slice(&d);
                if rctd {
                    b.extend_from_slice(&timeouts_descriptor());
                }
            }
            let len = (b.len() - 4) as u32;
            b[0..4].copy_from_slice(&len.to_be_bytes());
            Ok(b)
        }
        1 | 2 => {
            let has_sa = opcode_has_service_actions(opcode);
            let found = if options == 1 {
                if has_sa {
                    // This opcode has service actions: option 1 is invalid for it.
                    return Err(Sense::invalid_cdb(2, Some(2)));
                }
                lookup(opcode, None)
            } else {
                if lookup(opcode, None).is_some() {
                    // No service actions for this opcode: option 2 is invalid.
                    return Err(Sense::invalid_cdb(2, Some(2)));
                }
                lookup(opcode, Some(service_action))
            };
            let mut b = vec![0u8; 4];
            b[1] = if rctd { 0x80 } else { 0 };
            match found {
                Some(i) => {
                    b[1] |= 0x03; // supported in conformance with a standard
                    b[2..4].copy_from_slice(&(i.usage.len() as u16).to_be_bytes());
                    b.extend_from_slice(i.usage);
                }
                None => b[1] |= 0x01, // not supported
            }
            if rctd {
                b.extend_from_slice(&timeouts_descriptor());
            }
            Ok(b)
        }
        _ => Err(Sense::invalid_cdb(2, Some(2))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::{cdb_len_for_opcode, decode_cdb, Command};

    #[test]
    fn table_sorted_and_usage_consistent() {
        for w in SUPPORTED.windows(2) {
            assert!(
                (w[0].opcode, w[0].service_action) < (w[1].opcode, w[1].service_action),
                "{:#x} before {:#x}",
                w[0].opcode,
                w[1].opcode
            );
        }
        for i in SUPPORTED {
            assert_eq!(i.usage[0], i.opcode);
            assert_eq!(Some(i.usage.len()), cdb_len_for_opcode(i.opcode));
            // Every listed command decodes to something other than Unsupported.
            let mut cdb = [0u8; 16];
            cdb[0] = i.opcode;
            if let Some(s) = i.service_action {
                cdb[1] = s as u8;
            }
            let c = decode_cdb(&cdb).unwrap();
            assert!(!matches!(c, Command::Unsupported { .. }), "{:#x}", i.opcode);
        }
    }

    #[test]
    fn all_and_one() {
        let all = report(false, 0, 0, 0).unwrap();
        let len = u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize;
        assert_eq!(len, all.len() - 4);
        assert_eq!(len, SUPPORTED.len() * 8);
        let with_to = report(true, 0, 0, 0).unwrap();
        assert_eq!(with_to.len() - 4, SUPPORTED.len() * 20);

        let one = report(false, 1, op::WRITE_10, 0).unwrap();
        assert_eq!(one[1], 0x03);
        assert_eq!(u16::from_be_bytes([one[2], one[3]]), 10);
        assert_eq!(one[4], op::WRITE_10);
        assert_eq!(one[5] & 0x18, 0x18);

        assert!(report(false, 1, op::SERVICE_ACTION_IN_16, 0x10).is_err());
        for sa in 0..8u16 {
            let pr = report(false, 2, op::PERSISTENT_RESERVE_OUT, sa).unwrap();
            assert_eq!(pr[1] & 0x07, 0x03);
            assert_eq!(&pr[4..], PROUT_USAGE);
        }
        assert_eq!(
            report(false, 2, op::PERSISTENT_RESERVE_OUT, 8).unwrap(),
            vec![0, 1, 0, 0]
        );
        assert_eq!(
            &report(false, 2, op::PERSISTENT_RESERVE_IN, 3).unwrap()[4..],
            PRIN_USAGE
        );
        assert!(report(false, 1, op::PERSISTENT_RESERVE_IN, 0).is_err());
        let rc16 = report(false, 2, op::SERVICE_ACTION_IN_16, 0x10).unwrap();
        assert_eq!(rc16[1] & 0x07, 0x03);
        assert!(report(false, 2, op::READ_10, 0).is_err());
        let none = report(false, 1, 0x44, 0).unwrap();
        assert_eq!(none, vec![0, 1, 0, 0]);
        assert!(report(false, 3, 0, 0).is_err());
    }
}
