//! CDB decoding: bytes → [`Command`].
//!
//! Owns: the opcode table of the engine, CDB lengths, field extraction and the checks
//! that need no LU state (control byte NACA/LINK, reserved service actions). The
//! decoder is total: any byte string gives `Ok(Command)` or `Err(CdbError)`, never a
//! panic (fuzzed by `fuzz/fuzz_targets/cdb_decode.rs`). Commands the engine does not
//! implement decode to [`Command::Unsupported`]; whether that becomes INVALID COMMAND
//! OPERATION CODE or INVALID FIELD IN CDB is decided by the executor.

use crate::sense::Sense;

/// Operation codes the engine knows.
pub mod op {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0A;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT(6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// RESERVE(6).
    pub const RESERVE_6: u8 = 0x16;
    /// RELEASE(6).
    pub const RELEASE_6: u8 = 0x17;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1B;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2A;
    /// WRITE AND VERIFY(10).
    pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
    /// VERIFY(10).
    pub const VERIFY_10: u8 = 0x2F;
    /// PRE-FETCH(10).
    pub const PRE_FETCH_10: u8 = 0x34;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// READ DEFECT DATA(10).
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    /// WRITE SAME(10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT(10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// COMPARE AND WRITE.
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8A;
    /// ORWRITE(16).
    pub const ORWRITE_16: u8 = 0x8B;
    /// WRITE AND VERIFY(16).
    pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
    /// VERIFY(16).
    pub const VERIFY_16: u8 = 0x8F;
    /// PRE-FETCH(16).
    pub const PRE_FETCH_16: u8 = 0x90;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME(16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// MAINTENANCE IN.
    pub const MAINTENANCE_IN: u8 = 0xA3;
    /// MAINTENANCE OUT.
    pub const MAINTENANCE_OUT: u8 = 0xA4;
    /// READ(12).
    pub const READ_12: u8 = 0xA8;
    /// WRITE(12).
    pub const WRITE_12: u8 = 0xAA;
    /// WRITE AND VERIFY(12).
    pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
    /// VERIFY(12).
    pub const VERIFY_12: u8 = 0xAF;
    /// READ DEFECT DATA(12).
    pub const READ_DEFECT_DATA_12: u8 = 0xB7;
    /// PERSISTENT RESERVE IN.
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    /// PERSISTENT RESERVE OUT.
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    /// Variable-length CDB (READ/WRITE(32) etc.; not implemented).
    pub const VARIABLE_LENGTH: u8 = 0x7F;
    /// THIRD-PARTY COPY OUT: EXTENDED COPY (LID1) is service action 0 (see
    /// [`crate::xcopy`]).
    pub const EXTENDED_COPY: u8 = 0x83;
    /// THIRD-PARTY COPY IN: RECEIVE COPY RESULTS (service actions 0 and 3).
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
}

/// Service actions the engine implements.
pub mod sa {
    /// SERVICE ACTION IN(16) / READ CAPACITY(16).
    pub const READ_CAPACITY_16: u16 = 0x10;
    /// SERVICE ACTION IN(16) / GET LBA STATUS.
    pub const GET_LBA_STATUS: u16 = 0x12;
    /// THIRD-PARTY COPY OUT / EXTENDED COPY (LID1).
    pub const EXTENDED_COPY_LID1: u16 = 0x00;
    /// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
    pub const REPORT_SUPPORTED_OPCODES: u16 = 0x0C;
    /// MAINTENANCE IN / REPORT TARGET PORT GROUPS and MAINTENANCE OUT / SET TARGET
    /// PORT GROUPS (see [`crate::alua`]).
    pub const TARGET_PORT_GROUPS: u16 = 0x0A;
    /// Highest PERSISTENT RESERVE IN service action (READ FULL STATUS); 0 to this one
    /// are implemented (see [`crate::pr::prin_sa`]).
    pub const PRIN_MAX: u8 = 0x03;
    /// Highest PERSISTENT RESERVE OUT service action (REGISTER AND MOVE); 0 to this one
    /// are implemented (see [`crate::pr::prout_sa`]).
    pub const PROUT_MAX: u8 = 0x07;
}

/// Errors from [`decode_cdb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CdbError {
    /// No bytes at all.
    #[error("empty CDB")]
    Empty,
    /// The CDB is shorter than its operation code requires.
    #[error("CDB for opcode {opcode:#04x} needs {needed} bytes, got {got}")]
    TooShort {
        /// Operation code.
        opcode: u8,
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A field has a value the engine does not accept (INVALID FIELD IN CDB).
    #[error("invalid field in CDB at byte {byte}{}", bit.map(|b| format!(" bit {b}")).unwrap_or_default())]
    InvalidField {
        /// Byte offset of the field.
        byte: u16,
        /// Most significant bit of the field, when known.
        bit: Option<u8>,
    },
}

impl CdbError {
    /// The sense data this error is reported with.
    pub fn sense(&self) -> Sense {
        match *self {
            CdbError::Empty | CdbError::TooShort { .. } => Sense::invalid_cdb(0, None),
            CdbError::InvalidField { byte, bit } => Sense::invalid_cdb(byte, bit),
        }
    }
}

/// Fields shared by the block READ/WRITE/ORWRITE families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRw {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (READ(6)/WRITE(6): 0 already mapped to 256).
    pub blocks: u32,
    /// RDPROTECT / WRPROTECT / ORPROTECT / VRPROTECT field.
    pub protect: u8,
    /// Disable page out.
    pub dpo: bool,
    /// Force unit access.
    pub fua: bool,
    /// CDB length (6, 10, 12, 16).
    pub cdb_len: u8,
}

/// VERIFY and WRITE AND VERIFY fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyArgs {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks.
    pub blocks: u32,
    /// VRPROTECT / WRPROTECT field.
    pub protect: u8,
    /// Disable page out.
    pub dpo: bool,
    /// BYTCHK field (2 bits, SBC-4: 00 medium only, 01 compare, 11 compare one block
    /// against every block).
    pub bytchk: u8,
    /// CDB length (10, 12, 16).
    pub cdb_len: u8,
}

/// WRITE SAME fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSameArgs {
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (0: "to the end", rejected because WSNZ=1).
    pub blocks: u32,
    /// WRPROTECT field.
    pub protect: u8,
    /// ANCHOR bit.
    pub anchor: bool,
    /// UNMAP bit.
    pub unmap: bool,
    /// NDOB (no data-out buffer: write zeros) bit (WRITE SAME(16) only).
    pub ndob: bool,
    /// Obsolete LBDATA/PBDATA bits (WRITE SAME(10)), nonzero is rejected.
    pub lb_pb_data: u8,
    /// CDB length (10 or 16).
    pub cdb_len: u8,
}

/// A decoded CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// DESC bit: descriptor-format sense data.
        desc: bool,
        /// Allocation length.
        alloc_len: u8,
    },
    /// INQUIRY.
    Inquiry {
        /// EVPD bit.
        evpd: bool,
        /// Page code.
        page_code: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// MODE SELECT(6) / MODE SELECT(10).
    ModeSelect {
        /// MODE SELECT(10).
        ten: bool,
        /// Page format bit.
        pf: bool,
        /// Save pages bit.
        sp: bool,
        /// Parameter list length.
        param_len: u16,
    },
    /// MODE SENSE(6) / MODE SENSE(10).
    ModeSense {
        /// MODE SENSE(10).
        ten: bool,
        /// Disable block descriptors.
        dbd: bool,
        /// Long LBA accepted (MODE SENSE(10) only).
        llbaa: bool,
        /// Page control.
        pc: u8,
        /// Page code.
        page_code: u8,
        /// Subpage code.
        subpage_code: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// RESERVE(6).
    Reserve6,
    /// RELEASE(6).
    Release6,
    /// START STOP UNIT.
    StartStopUnit {
        /// IMMED bit.
        immed: bool,
        /// POWER CONDITION field.
        power_condition: u8,
        /// NO_FLUSH bit.
        no_flush: bool,
        /// LOEJ bit.
        loej: bool,
        /// START bit.
        start: bool,
    },
    /// READ CAPACITY(10).
    ReadCapacity10 {
        /// LOGICAL BLOCK ADDRESS field (obsolete; must be 0 without PMI).
        lba: u32,
        /// PMI bit (obsolete).
        pmi: bool,
    },
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ(6/10/12/16).
    Read(BlockRw),
    /// WRITE(6/10/12/16).
    Write(BlockRw),
    /// ORWRITE(16).
    OrWrite(BlockRw),
    /// VERIFY(10/12/16).
    Verify(VerifyArgs),
    /// WRITE AND VERIFY(10/12/16).
    WriteAndVerify(VerifyArgs),
    /// WRITE SAME(10/16).
    WriteSame(WriteSameArgs),
    /// COMPARE AND WRITE (`blocks` = NUMBER OF LOGICAL BLOCKS, `cdb_len` 16).
    CompareAndWrite(BlockRw),
    /// UNMAP.
    Unmap {
        /// ANCHOR bit.
        anchor: bool,
        /// PARAMETER LIST LENGTH.
        param_len: u16,
    },
    /// SERVICE ACTION IN(16) / GET LBA STATUS.
    GetLbaStatus {
        /// STARTING LOGICAL BLOCK ADDRESS.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// READ DEFECT DATA(10/12).
    ReadDefectData(crate::defect::DefectArgs),
    /// EXTENDED COPY (LID1).
    ExtendedCopy {
        /// PARAMETER LIST LENGTH.
        param_len: u32,
    },
    /// RECEIVE COPY RESULTS (COPY STATUS, OPERATING PARAMETERS).
    ReceiveCopyResults {
        /// SERVICE ACTION field.
        service_action: u8,
        /// LIST IDENTIFIER.
        list_id: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// PRE-FETCH(10/16).
    PreFetch {
        /// First logical block.
        lba: u64,
        /// Number of blocks (0: to the end).
        blocks: u32,
        /// IMMED bit.
        immed: bool,
    },
    /// SYNCHRONIZE CACHE(10/16).
    SynchronizeCache {
        /// First logical block.
        lba: u64,
        /// Number of blocks (0: to the end).
        blocks: u32,
        /// IMMED bit.
        immed: bool,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT field.
        select_report: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// MAINTENANCE IN / REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// RCTD: return command timeouts descriptors.
        rctd: bool,
        /// REPORTING OPTIONS field.
        options: u8,
        /// REQUESTED OPERATION CODE.
        opcode: u8,
        /// REQUESTED SERVICE ACTION.
        service_action: u16,
        /// Allocation length.
        alloc_len: u32,
    },
    /// MAINTENANCE IN / REPORT TARGET PORT GROUPS.
    ReportTargetPortGroups {
        /// PARAMETER DATA FORMAT (0: length only, 1: extended header).
        format: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// MAINTENANCE OUT / SET TARGET PORT GROUPS.
    SetTargetPortGroups {
        /// PARAMETER LIST LENGTH.
        param_len: u32,
    },
    /// PERSISTENT RESERVE IN (service actions 0 to 3).
    PersistentReserveIn {
        /// SERVICE ACTION field.
        service_action: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT (service actions 0 to 7).
    PersistentReserveOut {
        /// SERVICE ACTION field.
        service_action: u8,
        /// SCOPE field (upper nibble of byte 2).
        scope: u8,
        /// TYPE field (lower nibble of byte 2).
        pr_type: u8,
        /// PARAMETER LIST LENGTH.
        param_len: u32,
    },
    /// Anything the engine does not implement.
    Unsupported {
        /// Operation code.
        opcode: u8,
        /// Service action, for opcodes that carry one.
        service_action: Option<u16>,
    },
}

impl Command {
    /// Whether this command may be executed while another I_T nexus holds a
    /// RESERVE(6) reservation (SPC-2 5.5.1).
    pub fn allowed_under_reservation(&self) -> bool {
        matches!(
            self,
            Command::Inquiry { .. }
                | Command::RequestSense { .. }
                | Command::ReportLuns { .. }
                | Command::Release6
                | Command::ReportSupportedOpcodes { .. }
                | Command::ReportTargetPortGroups { .. }
        )
    }
}

/// CDB length implied by the opcode's group code, or `None` for groups the engine does
/// not decode (variable length, reserved, vendor specific).
pub fn cdb_len_for_opcode(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Decode a CDB.
///
/// Total: never panics on any input. A CDB longer than its opcode requires is fine
/// (transports pad to 16 bytes); the extra bytes are ignored.
pub fn decode_cdb(cdb: &[u8]) -> Result<Command, CdbError> {
    let Some(&opcode) = cdb.first() else {
        return Err(CdbError::Empty);
    };
    let Some(len) = cdb_len_for_opcode(opcode) else {
        return Ok(Command::Unsupported {
            opcode,
            service_action: if opcode == op::VARIABLE_LENGTH && cdb.len() >= 10 {
                Some(be16(cdb, 8))
            } else {
                None
            },
        });
    };
    if cdb.len() < len {
        return Err(CdbError::TooShort {
            opcode,
            needed: len,
            got: cdb.len(),
        });
    }
    let c = &cdb[..len];
    let cmd = decode_fixed(opcode, c);
    if let Command::Unsupported { .. } = cmd {
        // Unknown commands are reported as such, whatever their control byte says.
        return Ok(cmd);
    }
    // Control byte: NACA (bit 2) and LINK (bit 0) are not supported.
    let control = c[len - 1];
    let ctl_byte = (len - 1) as u16;
    if control & 0x04 != 0 {
        return Err(CdbError::InvalidField {
            byte: ctl_byte,
            bit: Some(2),
        });
    }
    if control & 0x01 != 0 {
        return Err(CdbError::InvalidField {
            byte: ctl_byte,
            bit: Some(0),
        });
    }
    Ok(cmd)
}

fn rw10(c: &[u8], blocks: u32) -> BlockRw {
    BlockRw {
        lba: u64::from(be32(c, 2)),
        blocks,
        protect: c[1] >> 5,
        dpo: c[1] & 0x10 != 0,
        fua: c[1] & 0x08 != 0,
        cdb_len: c.len() as u8,
    }
}

fn rw16(c: &[u8]) -> BlockRw {
    BlockRw {
        lba: be64(c, 2),
        blocks: be32(c, 10),
        protect: c[1] >> 5,
        dpo: c[1] & 0x10 != 0,
        fua: c[1] & 0x08 != 0,
        cdb_len: 16,
    }
}

fn verify_args(c: &[u8], lba: u64, blocks: u32) -> VerifyArgs {
    VerifyArgs {
        lba,
        blocks,
        protect: c[1] >> 5,
        dpo: c[1] & 0x10 != 0,
        bytchk: (c[1] >> 1) & 0x03,
        cdb_len: c.len() as u8,
    }
}

fn decode_fixed(opcode: u8, c: &[u8]) -> Command {
    match opcode {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense {
            desc: c[1] & 0x01 != 0,
            alloc_len: c[4],
        },
        op::INQUIRY => Command::Inquiry {
            evpd: c[1] & 0x01 != 0,
            page_code: c[2],
            alloc_len: be16(c, 3),
        },
        op::MODE_SELECT_6 => Command::ModeSelect {
            ten: false,
            pf: c[1] & 0x10 != 0,
            sp: c[1] & 0x01 != 0,
            param_len: u16::from(c[4]),
        },
        op::MODE_SELECT_10 => Command::ModeSelect {
            ten: true,
            pf: c[1] & 0x10 != 0,
            sp: c[1] & 0x01 != 0,
            param_len: be16(c, 7),
        },
        op::MODE_SENSE_6 => Command::ModeSense {
            ten: false,
            dbd: c[1] & 0x08 != 0,
            llbaa: false,
            pc: c[2] >> 6,
            page_code: c[2] & 0x3F,
            subpage_code: c[3],
            alloc_len: u16::from(c[4]),
        },
        op::MODE_SENSE_10 => Command::ModeSense {
            ten: true,
            dbd: c[1] & 0x08 != 0,
            llbaa: c[1] & 0x10 != 0,
            pc: c[2] >> 6,
            page_code: c[2] & 0x3F,
            subpage_code: c[3],
            alloc_len: be16(c, 7),
        },
        op::RESERVE_6 => Command::Reserve6,
        op::RELEASE_6 => Command::Release6,
        op::START_STOP_UNIT => Command::StartStopUnit {
            immed: c[1] & 0x01 != 0,
            power_condition: c[4] >> 4,
            no_flush: c[4] & 0x04 != 0,
            loej: c[4] & 0x02 != 0,
            start: c[4] & 0x01 != 0,
        },
        op::READ_CAPACITY_10 => Command::ReadCapacity10 {
            lba: be32(c, 2),
            pmi: c[8] & 0x01 != 0,
        },
        op::READ_6 | op::WRITE_6 => {
            let lba = (u32::from(c[1] & 0x1F) << 16) | u32::from(be16(c, 2));
            let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
            let rw = BlockRw {
                lba: u64::from(lba),
                blocks,
                protect: 0,
                dpo: false,
                fua: false,
                cdb_len: 6,
            };
            if opcode == op::READ_6 {
                Command::Read(rw)
            } else {
                Command::Write(rw)
            }
        }
        op::READ_10 => Command::Read(rw10(c, u32::from(be16(c, 7)))),
        op::WRITE_10 => Command::Write(rw10(c, u32::from(be16(c, 7)))),
        op::READ_12 => Command::Read(rw10(c, be32(c, 6))),
        op::WRITE_12 => Command::Write(rw10(c, be32(c, 6))),
        op::READ_16 => Command::Read(rw16(c)),
        op::WRITE_16 => Command::Write(rw16(c)),
        op::ORWRITE_16 => Command::OrWrite(rw16(c)),
        op::VERIFY_10 => {
            Command::Verify(verify_args(c, u64::from(be32(c, 2)), u32::from(be16(c, 7))))
        }
        op::VERIFY_12 => Command::Verify(verify_args(c, u64::from(be32(c, 2)), be32(c, 6))),
        op::VERIFY_16 => Command::Verify(verify_args(c, be64(c, 2), be32(c, 10))),
        op::WRITE_AND_VERIFY_10 => {
            Command::WriteAndVerify(verify_args(c, u64::from(be32(c, 2)), u32::from(be16(c, 7))))
        }
        op::WRITE_AND_VERIFY_12 => {
            Command::WriteAndVerify(verify_args(c, u64::from(be32(c, 2)), be32(c, 6)))
        }
        op::WRITE_AND_VERIFY_16 => Command::WriteAndVerify(verify_args(c, be64(c, 2), be32(c, 10))),
        op::WRITE_SAME_10 => Command::WriteSame(WriteSameArgs {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            protect: c[1] >> 5,
            anchor: c[1] & 0x10 != 0,
            unmap: c[1] & 0x08 != 0,
            ndob: false,
            lb_pb_data: (c[1] >> 1) & 0x03,
            cdb_len: 10,
        }),
        op::WRITE_SAME_16 => Command::WriteSame(WriteSameArgs {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            protect: c[1] >> 5,
            anchor: c[1] & 0x10 != 0,
            unmap: c[1] & 0x08 != 0,
            ndob: c[1] & 0x01 != 0,
            lb_pb_data: 0,
            cdb_len: 16,
        }),
        op::COMPARE_AND_WRITE => Command::CompareAndWrite(BlockRw {
            lba: be64(c, 2),
            blocks: u32::from(c[13]),
            protect: c[1] >> 5,
            dpo: c[1] & 0x10 != 0,
            fua: c[1] & 0x08 != 0,
            cdb_len: 16,
        }),
        op::UNMAP => Command::Unmap {
            anchor: c[1] & 0x01 != 0,
            param_len: be16(c, 7),
        },
        op::READ_DEFECT_DATA_10 => Command::ReadDefectData(crate::defect::DefectArgs {
            twelve: false,
            plist: c[2] & 0x10 != 0,
            glist: c[2] & 0x08 != 0,
            format: c[2] & 0x07,
            alloc_len: u32::from(be16(c, 7)),
        }),
        op::READ_DEFECT_DATA_12 => Command::ReadDefectData(crate::defect::DefectArgs {
            twelve: true,
            plist: c[1] & 0x10 != 0,
            glist: c[1] & 0x08 != 0,
            format: c[1] & 0x07,
            alloc_len: be32(c, 6),
        }),
        op::EXTENDED_COPY => match u16::from(c[1] & 0x1F) {
            sa::EXTENDED_COPY_LID1 => Command::ExtendedCopy {
                param_len: be32(c, 10),
            },
            service_action => Command::Unsupported {
                opcode,
                service_action: Some(service_action),
            },
        },
        op::RECEIVE_COPY_RESULTS => match c[1] & 0x1F {
            sa @ (crate::xcopy::rcr_sa::COPY_STATUS
            | crate::xcopy::rcr_sa::OPERATING_PARAMETERS) => Command::ReceiveCopyResults {
                service_action: sa,
                list_id: c[2],
                alloc_len: be32(c, 10),
            },
            service_action => Command::Unsupported {
                opcode,
                service_action: Some(u16::from(service_action)),
            },
        },
        op::PRE_FETCH_10 => Command::PreFetch {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            immed: c[1] & 0x02 != 0,
        },
        op::PRE_FETCH_16 => Command::PreFetch {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            immed: c[1] & 0x02 != 0,
        },
        op::SYNCHRONIZE_CACHE_10 => Command::SynchronizeCache {
            lba: u64::from(be32(c, 2)),
            blocks: u32::from(be16(c, 7)),
            immed: c[1] & 0x02 != 0,
        },
        op::SYNCHRONIZE_CACHE_16 => Command::SynchronizeCache {
            lba: be64(c, 2),
            blocks: be32(c, 10),
            immed: c[1] & 0x02 != 0,
        },
        op::SERVICE_ACTION_IN_16 => {
            let service_action = u16::from(c[1] & 0x1F);
            match service_action {
                sa::READ_CAPACITY_16 => Command::ReadCapacity16 {
                    alloc_len: be32(c, 10),
                },
                sa::GET_LBA_STATUS => Command::GetLbaStatus {
                    lba: be64(c, 2),
                    alloc_len: be32(c, 10),
                },
                _ => Command::Unsupported {
                    opcode,
                    service_action: Some(service_action),
                },
            }
        }
        op::REPORT_LUNS => Command::ReportLuns {
            select_report: c[2],
            alloc_len: be32(c, 6),
        },
        op::MAINTENANCE_IN => {
            let service_action = u16::from(c[1] & 0x1F);
            match service_action {
                sa::REPORT_SUPPORTED_OPCODES => Command::ReportSupportedOpcodes {
                    rctd: c[2] & 0x80 != 0,
                    options: c[2] & 0x07,
                    opcode: c[3],
                    service_action: be16(c, 4),
                    alloc_len: be32(c, 6),
                },
                sa::TARGET_PORT_GROUPS => Command::ReportTargetPortGroups {
                    format: c[1] >> 5,
                    alloc_len: be32(c, 6),
                },
                _ => Command::Unsupported {
                    opcode,
                    service_action: Some(service_action),
                },
            }
        }
        op::PERSISTENT_RESERVE_IN => {
            let service_action = c[1] & 0x1F;
            if service_action <= sa::PRIN_MAX {
                Command::PersistentReserveIn {
                    service_action,
                    alloc_len: be16(c, 7),
                }
            } else {
                Command::Unsupported {
                    opcode,
                    service_action: Some(u16::from(service_action)),
                }
            }
        }
        op::PERSISTENT_RESERVE_OUT => {
            let service_action = c[1] & 0x1F;
            if service_action <= sa::PROUT_MAX {
                Command::PersistentReserveOut {
                    service_action,
                    scope: c[2] >> 4,
                    pr_type: c[2] & 0x0F,
                    param_len: be32(c, 5),
                }
            } else {
                Command::Unsupported {
                    opcode,
                    service_action: Some(u16::from(service_action)),
                }
            }
        }
        op::MAINTENANCE_OUT => match u16::from(c[1] & 0x1F) {
            sa::TARGET_PORT_GROUPS => Command::SetTargetPortGroups {
                param_len: be32(c, 6),
            },
            service_action => Command::Unsupported {
                opcode,
                service_action: Some(service_action),
            },
        },
        _ => Command::Unsupported {
            opcode,
            service_action: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read6_zero_length_means_256() {
        let c = decode_cdb(&[0x08, 0x01, 0x02, 0x03, 0x00, 0x00]).unwrap();
        match c {
            Command::Read(rw) => {
                assert_eq!(rw.lba, 0x010203);
                assert_eq!(rw.blocks, 256);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn read16_fields() {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x88;
        cdb[1] = 0x18 | 0x20;
        cdb[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        cdb[10..14].copy_from_slice(&9u32.to_be_bytes());
        let Command::Read(rw) = decode_cdb(&cdb).unwrap() else {
            panic!()
        };
        assert_eq!(rw.lba, 0x0102_0304_0506_0708);
        assert_eq!(rw.blocks, 9);
        assert!(rw.dpo && rw.fua);
        assert_eq!(rw.protect, 1);
    }

    #[test]
    fn naca_and_link_rejected() {
        assert_eq!(
            decode_cdb(&[0, 0, 0, 0, 0, 0x04]),
            Err(CdbError::InvalidField {
                byte: 5,
                bit: Some(2)
            })
        );
        assert_eq!(
            decode_cdb(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]),
            Err(CdbError::InvalidField {
                byte: 9,
                bit: Some(0)
            })
        );
    }

    #[test]
    fn persistent_reserve_fields() {
        assert_eq!(
            decode_cdb(&[0x5E, 0x03, 0, 0, 0, 0, 0, 0x12, 0x34, 0]).unwrap(),
            Command::PersistentReserveIn {
                service_action: 3,
                alloc_len: 0x1234
            }
        );
        assert_eq!(
            decode_cdb(&[0x5E, 0xE4, 0, 0, 0, 0, 0, 0, 8, 0]).unwrap(),
            Command::Unsupported {
                opcode: 0x5E,
                service_action: Some(4)
            }
        );
        assert_eq!(
            decode_cdb(&[0x5F, 0x07, 0x15, 0, 0, 0x01, 0x02, 0x03, 0x04, 0]).unwrap(),
            Command::PersistentReserveOut {
                service_action: 7,
                scope: 1,
                pr_type: 5,
                param_len: 0x0102_0304
            }
        );
        assert_eq!(
            decode_cdb(&[0x5F, 0x08, 0, 0, 0, 0, 0, 0, 24, 0]).unwrap(),
            Command::Unsupported {
                opcode: 0x5F,
                service_action: Some(8)
            }
        );
        assert!(decode_cdb(&[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0x04]).is_err());
    }

    #[test]
    fn unknown_and_short() {
        assert_eq!(decode_cdb(&[]), Err(CdbError::Empty));
        assert!(matches!(
            decode_cdb(&[0x28, 0]),
            Err(CdbError::TooShort { .. })
        ));
        assert_eq!(
            decode_cdb(&[0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
            Command::Unsupported {
                opcode: 0x44,
                service_action: None
            }
        );
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x13;
        assert_eq!(
            decode_cdb(&cdb).unwrap(),
            Command::Unsupported {
                opcode: 0x9E,
                service_action: Some(0x13)
            }
        );
        assert!(matches!(
            decode_cdb(&[0xC0, 1, 2]).unwrap(),
            Command::Unsupported { opcode: 0xC0, .. }
        ));
    }

    #[test]
    fn provisioning_copy_and_caw_fields() {
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        caw[1] = 0x18;
        caw[2..10].copy_from_slice(&0x1122u64.to_be_bytes());
        caw[13] = 3;
        let Command::CompareAndWrite(rw) = decode_cdb(&caw).unwrap() else {
            panic!()
        };
        assert_eq!((rw.lba, rw.blocks, rw.dpo, rw.fua), (0x1122, 3, true, true));
        assert_eq!(
            decode_cdb(&[0x42, 0x01, 0, 0, 0, 0, 0, 0x01, 0x18, 0]).unwrap(),
            Command::Unmap {
                anchor: true,
                param_len: 0x118
            }
        );
        let mut gls = [0u8; 16];
        gls[0] = 0x9E;
        gls[1] = 0x12;
        gls[9] = 5;
        gls[13] = 24;
        assert_eq!(
            decode_cdb(&gls).unwrap(),
            Command::GetLbaStatus {
                lba: 5,
                alloc_len: 24
            }
        );
        let mut xc = [0u8; 16];
        xc[0] = 0x83;
        xc[13] = 60;
        assert_eq!(
            decode_cdb(&xc).unwrap(),
            Command::ExtendedCopy { param_len: 60 }
        );
        xc[1] = 0x01; // EXTENDED COPY (LID4)
        assert!(matches!(
            decode_cdb(&xc).unwrap(),
            Command::Unsupported {
                opcode: 0x83,
                service_action: Some(1)
            }
        ));
        let mut rcr = [0u8; 16];
        rcr[0] = 0x84;
        rcr[1] = 0x03;
        rcr[2] = 9;
        rcr[12] = 4;
        assert_eq!(
            decode_cdb(&rcr).unwrap(),
            Command::ReceiveCopyResults {
                service_action: 3,
                list_id: 9,
                alloc_len: 1024
            }
        );
        rcr[1] = 0x01; // RECEIVE DATA
        assert!(matches!(
            decode_cdb(&rcr).unwrap(),
            Command::Unsupported { opcode: 0x84, .. }
        ));
        let Command::ReadDefectData(d) =
            decode_cdb(&[0x37, 0, 0x1B, 0, 0, 0, 0, 0, 32, 0]).unwrap()
        else {
            panic!()
        };
        assert!(!d.twelve && d.plist && d.glist && d.format == 3 && d.alloc_len == 32);
        let Command::ReadDefectData(d) =
            decode_cdb(&[0xB7, 0x0C, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]).unwrap()
        else {
            panic!()
        };
        assert!(d.twelve && !d.plist && d.glist && d.format == 4 && d.alloc_len == 256);
    }
}
