//! Sans-IO iSCSI PDU codec (RFC 7143 §11).
//!
//! Owns: the 48-byte Basic Header Segment layouts (one zerocopy big-endian struct per
//! opcode), additional header segments, padding, CRC32C header/data digests and the
//! incremental [`Decoder`] (feed bytes, take complete PDUs), plus [`encode_pdu`].
//!
//! May not touch: sockets, session state or SCSI semantics. Digests are connection
//! state, so the decoder/encoder take them as configuration, never inside [`Pdu`].
//!
//! Wire notes: every field is big-endian except the CRC32C digests, which go on the
//! wire least-significant byte first (RFC 7143 A.4).

use bytes::{Buf, Bytes, BytesMut};
use zerocopy::byteorder::big_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Length of a CRC32C digest on the wire.
pub const DIGEST_LEN: usize = 4;
/// Reserved tag value (ITT/TTT "none").
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// Largest data segment the 24-bit DataSegmentLength can express.
pub const DATA_SEGMENT_LEN_MAX: u32 = (1 << 24) - 1;

/// PDU opcodes (byte 0, low six bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// NOP-Out (initiator).
    NopOut,
    /// SCSI Command (initiator).
    ScsiCommand,
    /// Task Management Function Request.
    TaskMgmtReq,
    /// Login Request.
    LoginReq,
    /// Text Request.
    TextReq,
    /// SCSI Data-Out.
    DataOut,
    /// Logout Request.
    LogoutReq,
    /// SNACK Request.
    Snack,
    /// NOP-In (target).
    NopIn,
    /// SCSI Response.
    ScsiResponse,
    /// Task Management Function Response.
    TaskMgmtResp,
    /// Login Response.
    LoginResp,
    /// Text Response.
    TextResp,
    /// SCSI Data-In.
    DataIn,
    /// Logout Response.
    LogoutResp,
    /// Ready To Transfer.
    R2t,
    /// Asynchronous Message.
    AsyncMsg,
    /// Reject.
    Reject,
    /// Anything else (vendor specific or reserved).
    Unknown(u8),
}

impl Opcode {
    /// Decode the low six bits of byte 0.
    pub fn from_u8(b: u8) -> Self {
        match b & 0x3f {
            0x00 => Self::NopOut,
            0x01 => Self::ScsiCommand,
            0x02 => Self::TaskMgmtReq,
            0x03 => Self::LoginReq,
            0x04 => Self::TextReq,
            0x05 => Self::DataOut,
            0x06 => Self::LogoutReq,
            0x10 => Self::Snack,
            0x20 => Self::NopIn,
            0x21 => Self::ScsiResponse,
            0x22 => Self::TaskMgmtResp,
            0x23 => Self::LoginResp,
            0x24 => Self::TextResp,
            0x25 => Self::DataIn,
            0x26 => Self::LogoutResp,
            0x31 => Self::R2t,
            0x32 => Self::AsyncMsg,
            0x3f => Self::Reject,
            other => Self::Unknown(other),
        }
    }

    /// The six-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::NopOut => 0x00,
            Self::ScsiCommand => 0x01,
            Self::TaskMgmtReq => 0x02,
            Self::LoginReq => 0x03,
            Self::TextReq => 0x04,
            Self::DataOut => 0x05,
            Self::LogoutReq => 0x06,
            Self::Snack => 0x10,
            Self::NopIn => 0x20,
            Self::ScsiResponse => 0x21,
            Self::TaskMgmtResp => 0x22,
            Self::LoginResp => 0x23,
            Self::TextResp => 0x24,
            Self::DataIn => 0x25,
            Self::LogoutResp => 0x26,
            Self::R2t => 0x31,
            Self::AsyncMsg => 0x32,
            Self::Reject => 0x3f,
            Self::Unknown(b) => b & 0x3f,
        }
    }

    /// Whether initiators send this opcode.
    pub fn is_initiator_opcode(self) -> bool {
        matches!(
            self,
            Self::NopOut
                | Self::ScsiCommand
                | Self::TaskMgmtReq
                | Self::LoginReq
                | Self::TextReq
                | Self::DataOut
                | Self::LogoutReq
                | Self::Snack
        )
    }
}

/// Byte 0 flag: immediate delivery.
pub const FLAG_IMMEDIATE: u8 = 0x40;
/// Byte 1 flag: Final (F) / Transit (T) bit.
pub const FLAG_FINAL: u8 = 0x80;
/// Byte 1 flag: Continue (C) bit in Login/Text.
pub const FLAG_CONTINUE: u8 = 0x40;

macro_rules! bhs_struct {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(std::mem::size_of::<$name>() == BHS_LEN);
        impl $name {
            /// A zeroed header with the opcode byte set.
            pub fn zeroed_with(opcode: Opcode) -> Self {
                let mut h = <Self as zerocopy::FromZeros>::new_zeroed();
                h.as_mut_bytes()[0] = opcode.as_u8();
                h
            }
            /// The raw 48 bytes.
            pub fn to_bhs(&self) -> [u8; BHS_LEN] {
                let mut out = [0u8; BHS_LEN];
                out.copy_from_slice(self.as_bytes());
                out
            }
            /// View raw BHS bytes as this layout.
            pub fn view(bhs: &[u8; BHS_LEN]) -> &Self {
                zerocopy::transmute_ref!(bhs)
            }
        }
    };
}

bhs_struct!(
    /// Fields common to every BHS.
    CommonBhs {
        /// I bit + opcode.
        pub opcode: u8,
        /// Flags (F bit etc.).
        pub flags: u8,
        /// Opcode specific.
        pub b2: u8,
        /// Opcode specific.
        pub b3: u8,
        /// AHS length in 4-byte words.
        pub total_ahs_len: u8,
        /// Data segment length (24 bit).
        pub data_segment_len: [u8; 3],
        /// LUN or opcode specific.
        pub lun: U64,
        /// Initiator task tag.
        pub itt: U32,
        /// Opcode specific.
        pub rest: [u8; 28],
    }
);

bhs_struct!(
    /// SCSI Command (0x01).
    ScsiCommandBhs {
        /// I + opcode.
        pub opcode: u8,
        /// F R W . . ATTR.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// Expected data transfer length.
        pub edtl: U32,
        /// CmdSN.
        pub cmd_sn: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// CDB (first 16 bytes).
        pub cdb: [u8; 16],
    }
);

/// SCSI Command flag: read.
pub const CMD_FLAG_READ: u8 = 0x40;
/// SCSI Command flag: write.
pub const CMD_FLAG_WRITE: u8 = 0x20;
/// SCSI Command task attribute mask.
pub const CMD_ATTR_MASK: u8 = 0x07;

bhs_struct!(
    /// SCSI Response (0x21).
    ScsiResponseBhs {
        /// Opcode.
        pub opcode: u8,
        /// 1 . . o u O U .
        pub flags: u8,
        /// iSCSI response code.
        pub response: u8,
        /// SCSI status.
        pub status: u8,
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// Reserved.
        pub reserved: [u8; 8],
        /// ITT.
        pub itt: U32,
        /// SNACK tag.
        pub snack_tag: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// ExpDataSN.
        pub exp_data_sn: U32,
        /// Bidirectional read residual count.
        pub bidi_residual: U32,
        /// Residual count.
        pub residual: U32,
    }
);

/// Response/Data-In flag: bidi read residual overflow (o).
pub const RESP_FLAG_BIDI_OVERFLOW: u8 = 0x10;
/// Response/Data-In flag: bidi read residual underflow (u).
pub const RESP_FLAG_BIDI_UNDERFLOW: u8 = 0x08;
/// Response/Data-In flag: residual overflow (O).
pub const RESP_FLAG_OVERFLOW: u8 = 0x04;
/// Response/Data-In flag: residual underflow (U).
pub const RESP_FLAG_UNDERFLOW: u8 = 0x02;
/// Data-In flag: status present (S).
pub const DATA_IN_FLAG_STATUS: u8 = 0x01;
/// Data-In flag: acknowledge requested (A).
pub const DATA_IN_FLAG_ACK: u8 = 0x40;

bhs_struct!(
    /// SCSI Data-In (0x25).
    DataInBhs {
        /// Opcode.
        pub opcode: u8,
        /// F A . . . O U S.
        pub flags: u8,
        /// Reserved.
        pub reserved: u8,
        /// Status (valid with S).
        pub status: u8,
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// StatSN (valid with S).
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// DataSN.
        pub data_sn: U32,
        /// Buffer offset.
        pub buffer_offset: U32,
        /// Residual count (valid with S).
        pub residual: U32,
    }
);

bhs_struct!(
    /// SCSI Data-Out (0x05).
    DataOutBhs {
        /// Opcode.
        pub opcode: u8,
        /// F.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// Reserved.
        pub reserved2: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// Reserved.
        pub reserved3: U32,
        /// DataSN.
        pub data_sn: U32,
        /// Buffer offset.
        pub buffer_offset: U32,
        /// Reserved.
        pub reserved4: U32,
    }
);

bhs_struct!(
    /// Ready To Transfer (0x31).
    R2tBhs {
        /// Opcode.
        pub opcode: u8,
        /// 0x80.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// R2TSN.
        pub r2t_sn: U32,
        /// Buffer offset.
        pub buffer_offset: U32,
        /// Desired data transfer length.
        pub desired_len: U32,
    }
);

bhs_struct!(
    /// NOP-Out (0x00).
    NopOutBhs {
        /// I + opcode.
        pub opcode: u8,
        /// 0x80.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// CmdSN.
        pub cmd_sn: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// Reserved.
        pub reserved2: [u8; 16],
    }
);

bhs_struct!(
    /// NOP-In (0x20).
    NopInBhs {
        /// Opcode.
        pub opcode: u8,
        /// 0x80.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// Reserved.
        pub reserved2: [u8; 12],
    }
);

bhs_struct!(
    /// Task Management Function Request (0x02).
    TmfReqBhs {
        /// I + opcode.
        pub opcode: u8,
        /// 1 + function.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// Referenced task tag.
        pub ref_task_tag: U32,
        /// CmdSN.
        pub cmd_sn: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// RefCmdSN.
        pub ref_cmd_sn: U32,
        /// ExpDataSN.
        pub exp_data_sn: U32,
        /// Reserved.
        pub reserved2: [u8; 8],
    }
);

bhs_struct!(
    /// Task Management Function Response (0x22).
    TmfRespBhs {
        /// Opcode.
        pub opcode: u8,
        /// 0x80.
        pub flags: u8,
        /// Response.
        pub response: u8,
        /// Reserved.
        pub reserved: u8,
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// Reserved.
        pub reserved2: [u8; 8],
        /// ITT.
        pub itt: U32,
        /// Reserved.
        pub reserved3: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// Reserved.
        pub reserved4: [u8; 12],
    }
);

bhs_struct!(
    /// Login Request (0x03).
    LoginReqBhs {
        /// I + opcode (0x43).
        pub opcode: u8,
        /// T C . . CSG NSG.
        pub flags: u8,
        /// Version-max.
        pub version_max: u8,
        /// Version-min.
        pub version_min: u8,
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// ISID.
        pub isid: [u8; 6],
        /// TSIH.
        pub tsih: U16,
        /// ITT.
        pub itt: U32,
        /// CID.
        pub cid: U16,
        /// Reserved.
        pub reserved: U16,
        /// CmdSN.
        pub cmd_sn: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// Reserved.
        pub reserved2: [u8; 16],
    }
);

bhs_struct!(
    /// Login Response (0x23).
    LoginRespBhs {
        /// Opcode.
        pub opcode: u8,
        /// T C . . CSG NSG.
        pub flags: u8,
        /// Version-max.
        pub version_max: u8,
        /// Version-active.
        pub version_active: u8,
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// ISID.
        pub isid: [u8; 6],
        /// TSIH.
        pub tsih: U16,
        /// ITT.
        pub itt: U32,
        /// Reserved.
        pub reserved: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// Status-Class.
        pub status_class: u8,
        /// Status-Detail.
        pub status_detail: u8,
        /// Reserved.
        pub reserved2: [u8; 10],
    }
);

bhs_struct!(
    /// Text Request (0x04).
    TextReqBhs {
        /// I + opcode.
        pub opcode: u8,
        /// F C.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// CmdSN.
        pub cmd_sn: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// Reserved.
        pub reserved2: [u8; 16],
    }
);

bhs_struct!(
    /// Text Response (0x24).
    TextRespBhs {
        /// Opcode.
        pub opcode: u8,
        /// F C.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// Reserved.
        pub reserved2: [u8; 12],
    }
);

bhs_struct!(
    /// Logout Request (0x06).
    LogoutReqBhs {
        /// I + opcode.
        pub opcode: u8,
        /// 1 + reason code.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// Reserved.
        pub reserved2: [u8; 8],
        /// ITT.
        pub itt: U32,
        /// CID.
        pub cid: U16,
        /// Reserved.
        pub reserved3: U16,
        /// CmdSN.
        pub cmd_sn: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// Reserved.
        pub reserved4: [u8; 16],
    }
);

bhs_struct!(
    /// Logout Response (0x26).
    LogoutRespBhs {
        /// Opcode.
        pub opcode: u8,
        /// 0x80.
        pub flags: u8,
        /// Response.
        pub response: u8,
        /// Reserved.
        pub reserved: u8,
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// Reserved.
        pub reserved2: [u8; 8],
        /// ITT.
        pub itt: U32,
        /// Reserved.
        pub reserved3: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// Reserved.
        pub reserved4: U32,
        /// Time2Wait.
        pub time2wait: U16,
        /// Time2Retain.
        pub time2retain: U16,
        /// Reserved.
        pub reserved5: U32,
    }
);

bhs_struct!(
    /// SNACK Request (0x10).
    SnackBhs {
        /// Opcode.
        pub opcode: u8,
        /// 1 + type.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// ITT.
        pub itt: U32,
        /// TTT.
        pub ttt: U32,
        /// Reserved.
        pub reserved2: U32,
        /// ExpStatSN.
        pub exp_stat_sn: U32,
        /// Reserved.
        pub reserved3: U64,
        /// BegRun.
        pub beg_run: U32,
        /// RunLength.
        pub run_length: U32,
    }
);

bhs_struct!(
    /// Asynchronous Message (0x32).
    AsyncMsgBhs {
        /// Opcode.
        pub opcode: u8,
        /// 0x80.
        pub flags: u8,
        /// Reserved.
        pub reserved: [u8; 2],
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// LUN.
        pub lun: U64,
        /// 0xffffffff.
        pub itt: U32,
        /// Reserved.
        pub reserved2: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// AsyncEvent.
        pub async_event: u8,
        /// AsyncVCode.
        pub async_vcode: u8,
        /// Parameter1.
        pub parameter1: U16,
        /// Parameter2.
        pub parameter2: U16,
        /// Parameter3.
        pub parameter3: U16,
        /// Reserved.
        pub reserved3: U32,
    }
);

bhs_struct!(
    /// Reject (0x3f).
    RejectBhs {
        /// Opcode.
        pub opcode: u8,
        /// 0x80.
        pub flags: u8,
        /// Reason.
        pub reason: u8,
        /// Reserved.
        pub reserved: u8,
        /// AHS length.
        pub total_ahs_len: u8,
        /// Data segment length.
        pub data_segment_len: [u8; 3],
        /// Reserved.
        pub reserved2: [u8; 8],
        /// 0xffffffff.
        pub itt: U32,
        /// Reserved.
        pub reserved3: U32,
        /// StatSN.
        pub stat_sn: U32,
        /// ExpCmdSN.
        pub exp_cmd_sn: U32,
        /// MaxCmdSN.
        pub max_cmd_sn: U32,
        /// DataSN/R2TSN.
        pub data_sn: U32,
        /// Reserved.
        pub reserved4: [u8; 8],
    }
);

/// Reject reason codes (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    /// Data (payload) digest error.
    DataDigestError = 0x02,
    /// SNACK reject.
    SnackReject = 0x03,
    /// Protocol error.
    ProtocolError = 0x04,
    /// Command not supported.
    CommandNotSupported = 0x05,
    /// Immediate command reject: too many immediate commands.
    ImmediateCommandReject = 0x06,
    /// Task in progress.
    TaskInProgress = 0x07,
    /// Invalid data ack.
    InvalidDataAck = 0x08,
    /// Invalid PDU field.
    InvalidPduField = 0x09,
    /// Long operation reject: out of resources to generate a TTT.
    LongOperationReject = 0x0a,
    /// Waiting for logout.
    WaitingForLogout = 0x0c,
}

/// Additional header segment types.
pub const AHS_TYPE_EXTENDED_CDB: u8 = 1;
/// Bidirectional read expected data transfer length AHS.
pub const AHS_TYPE_BIDI_READ_LEN: u8 = 2;

/// One decoded PDU. The data segment excludes padding and digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    /// The Basic Header Segment.
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments (raw, a multiple of 4 bytes; usually empty).
    pub ahs: Vec<u8>,
    /// Data segment without padding.
    pub data: Bytes,
    /// Set when data digests are on and the data digest did not match (the header is
    /// still valid; the data must not be used).
    pub data_digest_error: bool,
}

impl Pdu {
    /// A PDU from a header and data.
    pub fn new(bhs: [u8; BHS_LEN], data: Bytes) -> Self {
        Self {
            bhs,
            ahs: Vec::new(),
            data,
            data_digest_error: false,
        }
    }

    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        Opcode::from_u8(self.bhs[0])
    }

    /// The I (immediate) bit.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & FLAG_IMMEDIATE != 0
    }

    /// Byte 1 flags.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    /// Initiator task tag.
    pub fn itt(&self) -> u32 {
        u32::from_be_bytes([self.bhs[16], self.bhs[17], self.bhs[18], self.bhs[19]])
    }

    /// DataSegmentLength as written in the header.
    pub fn data_segment_len_field(&self) -> u32 {
        data_segment_len(&self.bhs)
    }

    /// Typed view of the header.
    pub fn view<T: FromBytes + Immutable + KnownLayout>(&self) -> &T {
        match T::ref_from_bytes(&self.bhs[..]) {
            Ok(v) => v,
            // All BHS structs are 48 bytes with alignment 1 (asserted at compile time).
            Err(_) => unreachable!("BHS view of a type that is not 48 bytes"),
        }
    }

    /// Iterate the AHS entries as (type, specific bytes after the reserved byte).
    pub fn ahs_entries(&self) -> AhsIter<'_> {
        AhsIter { rest: &self.ahs }
    }
}

/// Iterator over additional header segments.
#[derive(Debug)]
pub struct AhsIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for AhsIter<'a> {
    type Item = Result<(u8, &'a [u8]), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 4 {
            self.rest = &[];
            return Some(Err(DecodeError::BadAhs));
        }
        let len = usize::from(u16::from_be_bytes([self.rest[0], self.rest[1]]));
        let ty = self.rest[2];
        // AHSLength counts the specific bytes including the reserved byte 3.
        let total = 3 + len;
        let padded = total.next_multiple_of(4);
        if len == 0 || padded > self.rest.len() {
            self.rest = &[];
            return Some(Err(DecodeError::BadAhs));
        }
        let specific = &self.rest[4..total];
        self.rest = &self.rest[padded..];
        Some(Ok((ty, specific)))
    }
}

/// Read the 24-bit DataSegmentLength of a BHS.
pub fn data_segment_len(bhs: &[u8; BHS_LEN]) -> u32 {
    u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]])
}

fn set_lengths(bhs: &mut [u8; BHS_LEN], ahs_len: usize, data_len: usize) {
    debug_assert!(ahs_len & 3 == 0 && ahs_len / 4 <= 255);
    debug_assert!(data_len <= DATA_SEGMENT_LEN_MAX as usize);
    bhs[4] = (ahs_len / 4) as u8;
    let d = (data_len as u32).to_be_bytes();
    bhs[5..8].copy_from_slice(&d[1..4]);
}

/// Padding needed after `len` bytes to reach a 4-byte boundary.
pub fn pad_len(len: usize) -> usize {
    (4 - (len % 4)) % 4
}

/// CRC32C of `data` followed by `pad` zero bytes (the iSCSI digest definition).
pub fn crc32c_padded(data: &[u8], pad: usize) -> u32 {
    let crc = crc32c::crc32c(data);
    if pad == 0 {
        crc
    } else {
        crc32c::crc32c_append(crc, &[0u8; 3][..pad])
    }
}

/// Which digests are on for one direction of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    /// HeaderDigest=CRC32C.
    pub header: bool,
    /// DataDigest=CRC32C.
    pub data: bool,
}

/// Append one encoded PDU to `out`: BHS (lengths filled in), AHS, header digest, data,
/// padding, data digest.
pub fn encode_pdu(
    out: &mut Vec<u8>,
    bhs: &[u8; BHS_LEN],
    ahs: &[u8],
    data: &[u8],
    digests: Digests,
) {
    encode_pdu_parts(out, bhs, ahs, &[data], digests);
}

/// Like [`encode_pdu`], with a data segment made of several slices (e.g. sense length
/// prefix + sense bytes) to avoid a temporary copy.
pub fn encode_pdu_parts(
    out: &mut Vec<u8>,
    bhs: &[u8; BHS_LEN],
    ahs: &[u8],
    data: &[&[u8]],
    digests: Digests,
) {
    let data_len: usize = data.iter().map(|d| d.len()).sum();
    let pad = pad_len(data_len);
    out.reserve(
        BHS_LEN
            + ahs.len()
            + data_len
            + pad
            + if digests.header { 4 } else { 0 }
            + if digests.data { 4 } else { 0 },
    );
    let mut h = *bhs;
    set_lengths(&mut h, ahs.len(), data_len);
    let start = out.len();
    out.extend_from_slice(&h);
    out.extend_from_slice(ahs);
    if digests.header {
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
    if data_len > 0 {
        let mut crc = 0u32;
        for d in data {
            out.extend_from_slice(d);
            if digests.data {
                crc = crc32c::crc32c_append(crc, d);
            }
        }
        out.extend_from_slice(&[0u8; 3][..pad]);
        if digests.data {
            let crc = crc32c::crc32c_append(crc, &[0u8; 3][..pad]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
    }
}

/// Errors from the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Header digest mismatch (at ERL 0: drop the connection).
    #[error("header digest mismatch: expected {expected:#010x}, received {received:#010x}")]
    HeaderDigest {
        /// Computed.
        expected: u32,
        /// On the wire.
        received: u32,
    },
    /// The data segment is longer than our MaxRecvDataSegmentLength.
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong {
        /// Announced length.
        len: u32,
        /// Our limit.
        max: u32,
        /// The offending header (for a Reject).
        bhs: Box<[u8; BHS_LEN]>,
    },
    /// An additional header segment is malformed.
    #[error("malformed additional header segment")]
    BadAhs,
}

/// Decoder configuration (connection state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Digests expected on received PDUs.
    pub digests: Digests,
    /// Our MaxRecvDataSegmentLength (bytes); longer data segments are an error.
    pub max_recv_data_segment_len: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        Self {
            digests: Digests::default(),
            // During login the limit is 8192 (RFC 7143 §6.1).
            max_recv_data_segment_len: 8192,
        }
    }
}

/// Incremental PDU decoder: feed bytes (or read straight into [`Decoder::buffer_mut`]),
/// then call [`Decoder::decode`] until it returns `Ok(None)` ("need more").
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    /// Current configuration; the session changes it after login.
    pub config: DecoderConfig,
}

impl Decoder {
    /// A decoder with the given configuration.
    pub fn new(config: DecoderConfig) -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            config,
        }
    }

    /// Append received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The receive buffer, for reading directly from a socket.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes still needed before the PDU at the front of the buffer is complete
    /// (a hint for read sizing; 0 when a PDU or nothing is buffered).
    pub fn needed_hint(&self) -> usize {
        if self.buf.len() < BHS_LEN {
            return if self.buf.is_empty() {
                0
            } else {
                BHS_LEN - self.buf.len()
            };
        }
        let total = self.frame_len(self.buf[4], self.data_len_at_front());
        total.saturating_sub(self.buf.len())
    }

    fn data_len_at_front(&self) -> u32 {
        u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]])
    }

    fn frame_len(&self, ahs_words: u8, data_len: u32) -> usize {
        let d = self.config.digests;
        let data_len = data_len as usize;
        let mut total = BHS_LEN + usize::from(ahs_words) * 4;
        if d.header {
            total += DIGEST_LEN;
        }
        if data_len > 0 {
            total += data_len + pad_len(data_len);
            if d.data {
                total += DIGEST_LEN;
            }
        }
        total
    }

    /// Decode the next complete PDU, if the buffer holds one.
    pub fn decode(&mut self) -> Result<Option<Pdu>, DecodeError> {
        if self.buf.len() < BHS_LEN {
            return Ok(None);
        }
        let ahs_words = self.buf[4];
        let data_len = self.data_len_at_front();
        if data_len > self.config.max_recv_data_segment_len {
            let mut bhs = [0u8; BHS_LEN];
            bhs.copy_from_slice(&self.buf[..BHS_LEN]);
            return Err(DecodeError::DataSegmentTooLong {
                len: data_len,
                max: self.config.max_recv_data_segment_len,
                bhs: Box::new(bhs),
            });
        }
        let total = self.frame_len(ahs_words, data_len);
        if self.buf.len() < total {
            // Make sure one read can complete this frame without regrowing repeatedly.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let digests = self.config.digests;
        let hdr_len = BHS_LEN + usize::from(ahs_words) * 4;
        if digests.header {
            let expected = crc32c::crc32c(&self.buf[..hdr_len]);
            let received = u32::from_le_bytes([
                self.buf[hdr_len],
                self.buf[hdr_len + 1],
                self.buf[hdr_len + 2],
                self.buf[hdr_len + 3],
            ]);
            if expected != received {
                return Err(DecodeError::HeaderDigest { expected, received });
            }
        }
        let mut bhs = [0u8; BHS_LEN];
        bhs.copy_from_slice(&self.buf[..BHS_LEN]);
        let ahs = if ahs_words > 0 {
            self.buf[BHS_LEN..hdr_len].to_vec()
        } else {
            Vec::new()
        };
        self.buf
            .advance(hdr_len + if digests.header { DIGEST_LEN } else { 0 });
        let data_len = data_len as usize;
        let mut data_digest_error = false;
        let data = if data_len > 0 {
            let pad = pad_len(data_len);
            if digests.data {
                let expected = crc32c::crc32c(&self.buf[..data_len + pad]);
                let at = data_len + pad;
                let received = u32::from_le_bytes([
                    self.buf[at],
                    self.buf[at + 1],
                    self.buf[at + 2],
                    self.buf[at + 3],
                ]);
                data_digest_error = expected != received;
            }
            let data = self.buf.split_to(data_len).freeze();
            self.buf
                .advance(pad + if digests.data { DIGEST_LEN } else { 0 });
            data
        } else {
            Bytes::new()
        };
        Ok(Some(Pdu {
            bhs,
            ahs,
            data,
            data_digest_error,
        }))
    }
}

/// Serial number arithmetic (RFC 1982, 32-bit): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < (1 << 31)
}

/// `a <= b` in serial number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc32c_vectors_rfc7143_a4() {
        let z = [0u8; 32];
        assert_eq!(crc32c_padded(&z, 0).to_le_bytes(), [0xaa, 0x36, 0x91, 0x8a]);
        let ff = [0xffu8; 32];
        assert_eq!(
            crc32c_padded(&ff, 0).to_le_bytes(),
            [0x43, 0xab, 0xa8, 0x62]
        );
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            crc32c_padded(&inc, 0).to_le_bytes(),
            [0x4e, 0x79, 0xdd, 0x46]
        );
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(
            crc32c_padded(&dec, 0).to_le_bytes(),
            [0x5c, 0xdb, 0x3f, 0x11]
        );
    }

    /// RFC 7143 A.4 "An iSCSI - SCSI Read (10) Command PDU".
    const READ10_BHS: [u8; 48] = [
        0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00,
        0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00,
    ];

    #[test]
    fn read10_example_digest_and_fields() {
        assert_eq!(
            crc32c::crc32c(&READ10_BHS).to_le_bytes(),
            [0x56, 0x3a, 0x96, 0xd9]
        );
        let h = ScsiCommandBhs::view(&READ10_BHS);
        assert_eq!(Opcode::from_u8(h.opcode), Opcode::ScsiCommand);
        assert_eq!(h.flags, 0xc0); // F + R
        assert_eq!(h.itt.get(), 0x1400_0000);
        assert_eq!(h.edtl.get(), 0x400);
        assert_eq!(h.cmd_sn.get(), 0x14);
        assert_eq!(h.exp_stat_sn.get(), 0x18);
        assert_eq!(h.cdb[0], 0x28);
        assert_eq!(h.cdb[8], 0x02);
        // Decode with header digest on.
        let mut wire = READ10_BHS.to_vec();
        wire.extend_from_slice(&[0x56, 0x3a, 0x96, 0xd9]);
        let mut d = Decoder::new(DecoderConfig {
            digests: Digests {
                header: true,
                data: true,
            },
            max_recv_data_segment_len: 8192,
        });
        d.feed(&wire[..30]);
        assert_eq!(d.decode().unwrap(), None);
        d.feed(&wire[30..]);
        let p = d.decode().unwrap().unwrap();
        assert_eq!(p.bhs, READ10_BHS);
        assert!(p.data.is_empty());
        // Re-encode gives identical bytes.
        let mut out = Vec::new();
        encode_pdu(
            &mut out,
            &p.bhs,
            &[],
            &[],
            Digests {
                header: true,
                data: true,
            },
        );
        assert_eq!(out, wire);
        // Corrupt the digest.
        wire[48] ^= 1;
        let mut d2 = Decoder::new(d.config);
        d2.feed(&wire);
        assert!(matches!(d2.decode(), Err(DecodeError::HeaderDigest { .. })));
    }

    #[test]
    fn data_digest_error_is_reported_and_stream_stays_in_sync() {
        let dg = Digests {
            header: true,
            data: true,
        };
        let mut bhs = NopOutBhs::zeroed_with(Opcode::NopOut);
        bhs.flags = FLAG_FINAL;
        bhs.itt.set(7);
        let mut out = Vec::new();
        encode_pdu(&mut out, &bhs.to_bhs(), &[], b"hello", dg);
        let n = out.len();
        out[n - 6] ^= 0xff; // inside the padded data
        encode_pdu(&mut out, &bhs.to_bhs(), &[], b"ok", dg);
        let mut d = Decoder::new(DecoderConfig {
            digests: dg,
            max_recv_data_segment_len: 8192,
        });
        d.feed(&out);
        let p1 = d.decode().unwrap().unwrap();
        assert!(p1.data_digest_error);
        let p2 = d.decode().unwrap().unwrap();
        assert!(!p2.data_digest_error);
        assert_eq!(&p2.data[..], b"ok");
        assert_eq!(d.decode().unwrap(), None);
    }

    #[test]
    fn oversized_data_segment_is_an_error() {
        let mut bhs = NopOutBhs::zeroed_with(Opcode::NopOut).to_bhs();
        set_lengths(&mut bhs, 0, 9000);
        let mut d = Decoder::default();
        d.feed(&bhs);
        assert!(matches!(
            d.decode(),
            Err(DecodeError::DataSegmentTooLong { len: 9000, .. })
        ));
    }

    #[test]
    fn ahs_iteration() {
        // Extended CDB AHS carrying 4 extra CDB bytes, then bidi read length.
        let ahs = [0, 5, 1, 0, 1, 2, 3, 4, 0, 5, 2, 0, 0, 0, 0x10, 0];
        let p = Pdu {
            bhs: [0; 48],
            ahs: ahs.to_vec(),
            data: Bytes::new(),
            data_digest_error: false,
        };
        let v: Vec<_> = p.ahs_entries().map(|e| e.unwrap()).collect();
        assert_eq!(v[0], (1, &[1u8, 2, 3, 4][..]));
        assert_eq!(v[1], (2, &[0u8, 0, 0x10, 0][..]));
    }

    #[test]
    fn serial_arithmetic() {
        assert!(sn_lt(1, 2));
        assert!(sn_lt(0xffff_ffff, 0));
        assert!(!sn_lt(0, 0xffff_ffff));
        assert!(sn_le(5, 5));
    }

    #[test]
    fn opcodes_round_trip() {
        for b in 0u8..64 {
            assert_eq!(Opcode::from_u8(b).as_u8(), b);
        }
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            mut bhs in proptest::collection::vec(any::<u8>(), 48),
            ahs_words in 0usize..4,
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            hd in any::<bool>(), dd in any::<bool>(),
            split in any::<proptest::sample::Index>(),
        ) {
            let digests = Digests { header: hd, data: dd };
            let ahs: Vec<u8> = (0..ahs_words * 4).map(|i| i as u8).collect();
            let bhs_arr: [u8; 48] = {
                let mut a = [0u8; 48];
                bhs[4] = 0; bhs[5] = 0; bhs[6] = 0; bhs[7] = 0;
                a.copy_from_slice(&bhs);
                a
            };
            let mut wire = Vec::new();
            encode_pdu(&mut wire, &bhs_arr, &ahs, &data, digests);
            prop_assert_eq!(wire.len() % 4, 0);
            let mut d = Decoder::new(DecoderConfig { digests, max_recv_data_segment_len: 1 << 20 });
            let at = split.index(wire.len());
            d.feed(&wire[..at]);
            let first = d.decode().unwrap();
            let p = match first {
                Some(p) => p,
                None => { d.feed(&wire[at..]); d.decode().unwrap().unwrap() }
            };
            prop_assert_eq!(&p.data[..], &data[..]);
            prop_assert_eq!(&p.ahs[..], &ahs[..]);
            prop_assert!(!p.data_digest_error);
            prop_assert_eq!(&p.bhs[8..], &bhs_arr[8..]);
            prop_assert_eq!(&p.bhs[..4], &bhs_arr[..4]);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400), hd in any::<bool>(), dd in any::<bool>()) {
            let mut d = Decoder::new(DecoderConfig { digests: Digests { header: hd, data: dd }, max_recv_data_segment_len: 256 });
            d.feed(&bytes);
            for _ in 0..20 {
                match d.decode() {
                    Ok(Some(p)) => { let _ = p.ahs_entries().count(); }
                    _ => break,
                }
            }
        }
    }
}
