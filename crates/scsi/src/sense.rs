//! Sense data (SPC-4 4.5): the [`Sense`] value the engine attaches to CHECK CONDITION,
//! its fixed-format (0x70) and descriptor-format (0x72) encodings, and the sense key /
//! additional sense code constants the engine uses.
//!
//! Owns: byte layout of sense data only. Which sense a command gets is decided by the
//! command handlers.

/// Sense keys (SPC-4 table 49).
pub mod key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xB;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xE;
}

/// Additional sense code + qualifier pairs (SPC-4 table 50), as `(asc, ascq)`.
pub mod asc {
    /// NO ADDITIONAL SENSE INFORMATION.
    pub const NO_ADDITIONAL_SENSE: (u8, u8) = (0x00, 0x00);
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    pub const LUN_NOT_READY: (u8, u8) = (0x04, 0x00);
    /// WRITE ERROR.
    pub const WRITE_ERROR: (u8, u8) = (0x0C, 0x00);
    /// INVALID FIELD IN COMMAND INFORMATION UNIT.
    pub const INVALID_FIELD_IN_CMD_IU: (u8, u8) = (0x0E, 0x03);
    /// UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: (u8, u8) = (0x11, 0x00);
    /// PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: (u8, u8) = (0x1A, 0x00);
    /// MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: (u8, u8) = (0x1D, 0x00);
    /// INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    /// INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    /// LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    /// INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAM_LIST: (u8, u8) = (0x26, 0x00);
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE_OF_PR: (u8, u8) = (0x26, 0x04);
    /// WRITE PROTECTED.
    pub const WRITE_PROTECTED: (u8, u8) = (0x27, 0x00);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    /// BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
    pub const BUS_DEVICE_RESET: (u8, u8) = (0x29, 0x03);
    /// MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2A, 0x01);
    /// RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: (u8, u8) = (0x2A, 0x03);
    /// RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: (u8, u8) = (0x2A, 0x04);
    /// REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: (u8, u8) = (0x2A, 0x05);
    /// CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_DATA_CHANGED: (u8, u8) = (0x2A, 0x09);
    /// SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMS_NOT_SUPPORTED: (u8, u8) = (0x39, 0x00);
    /// INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: (u8, u8) = (0x44, 0x00);
    /// INSUFFICIENT REGISTRATION RESOURCES.
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: (u8, u8) = (0x55, 0x04);
}

/// Where a sense-key-specific FIELD POINTER points (SPC-4 4.5.2.4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// `true`: the field is in the CDB (C/D=1); `false`: in the parameter list.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// Most significant bit of the field inside that byte, when known.
    pub bit: Option<u8>,
}

/// One sense condition, independent of its wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (e.g. LBA of a medium error, offset of a miscompare).
    pub information: Option<u64>,
    /// Sense-key-specific field pointer (ILLEGAL REQUEST only).
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data the engine produces.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// A sense condition with the given key and `(asc, ascq)`.
    pub const fn new(key: u8, code: (u8, u8)) -> Self {
        Self {
            key,
            asc: code.0,
            ascq: code.1,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub const fn invalid_cdb(byte: u16, bit: Option<u8>) -> Self {
        Self {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Self::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte` (and `bit`).
    pub const fn invalid_param(byte: u16, bit: Option<u8>) -> Self {
        Self {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Self::new(key::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_PARAM_LIST)
        }
    }

    /// ILLEGAL REQUEST with the given code and no pointer.
    pub const fn illegal(code: (u8, u8)) -> Self {
        Self::new(key::ILLEGAL_REQUEST, code)
    }

    /// Set the INFORMATION field.
    pub const fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    /// `(asc, ascq)` of this condition.
    pub const fn code(&self) -> (u8, u8) {
        (self.asc, self.ascq)
    }

    fn sks_bytes(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80u8; // SKSV
        if f.in_cdb {
            b0 |= 0x40; // C/D
        }
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 0x07); // BPV + bit pointer
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed-format (response code 0x70, current error) sense data, 18 bytes.
    pub fn to_fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        if let Some(info) = self.information {
            if let Ok(info32) = u32::try_from(info) {
                b[0] |= 0x80; // VALID
                b[3..7].copy_from_slice(&info32.to_be_bytes());
            }
        }
        b[2] = self.key & 0x0F;
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sks_bytes() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Descriptor-format (response code 0x72, current error) sense data, with an
    /// information descriptor and a sense-key-specific descriptor when present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + 12 + 8);
        b.extend_from_slice(&[0x72, self.key & 0x0F, self.asc, self.ascq, 0, 0, 0, 0]);
        if let Some(info) = self.information {
            // Information descriptor (type 0x00), VALID=1.
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks_bytes() {
            // Sense key specific descriptor (type 0x02).
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00, sks[0], sks[1], sks[2], 0x00]);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// Encode in descriptor format if `descriptor`, else fixed format.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.to_descriptor()
        } else {
            self.to_fixed().to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_invalid_field_in_cdb_golden() {
        let s = Sense::invalid_cdb(1, Some(4));
        assert_eq!(
            s.to_fixed(),
            [0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0xCC, 0x00, 0x01]
        );
    }

    #[test]
    fn fixed_miscompare_with_information_golden() {
        let s = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_information(0x1234);
        assert_eq!(
            s.to_fixed(),
            [0xF0, 0, 0x0E, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x1D, 0x00, 0, 0, 0, 0]
        );
    }

    #[test]
    fn fixed_information_too_large_is_not_valid() {
        let s =
            Sense::new(key::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR).with_information(1 << 40);
        let b = s.to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(&b[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_golden() {
        let s = Sense::new(key::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE);
        assert_eq!(s.to_descriptor(), vec![0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]);

        let s = Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY)
            .with_information(0x0102_0304_0506_0708);
        assert_eq!(
            s.to_descriptor(),
            vec![
                0x72, 0x0E, 0x1D, 0x00, 0, 0, 0, 12, 0x00, 0x0A, 0x80, 0x00, 1, 2, 3, 4, 5, 6, 7, 8
            ]
        );

        let s = Sense::invalid_param(2, None);
        assert_eq!(
            s.to_descriptor(),
            vec![0x72, 0x05, 0x26, 0x00, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0x80, 0x00, 0x02, 0x00]
        );
    }
}
