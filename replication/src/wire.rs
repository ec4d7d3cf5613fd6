//! Byte encoding of the peer messages ([`crate::msg::Message`]): frames, payload layouts
//! and the incremental stream [`Decoder`] / sequence-numbering [`Encoder`].
//!
//! Owns: the 24-byte frame header, one payload layout per message type, the optional
//! CRC32C trailer and the per-connection frame sequence check.
//!
//! May not touch: sockets (sans-IO: bytes in, messages out), the replica state machine,
//! link authentication ([`crate::auth`] runs before the first frame).
//!
//! ## Frame (all integers little-endian)
//!
//! ```text
//! offset size field
//!  0      4   magic "TWRL" (54 57 52 4c)
//!  4      2   version = FRAME_VERSION (1, the peer protocol version)
//!  6      2   message type (see `msg_type`)
//!  8      2   flags: bit 0 FLAG_PAYLOAD_CRC32C; every other bit must be 0
//! 10      2   reserved, must be 0
//! 12      8   frame sequence number (per connection and direction, from 1)
//! 20      4   payload length in bytes (CRC trailer included)
//! 24      …   payload
//! ```
//!
//! With `FLAG_PAYLOAD_CRC32C` the payload's last 4 bytes are the CRC32C (Castagnoli) of
//! the 24 header bytes followed by the payload bytes before the trailer. Without it, TCP
//! and the authenticated link are all that protect the frame.
//!
//! ## Payloads
//!
//! Fixed fields in declaration order, little-endian; `bool` is one byte 0/1; enums are
//! one byte (codes below, 0 is never valid); strings are a u16 byte length and UTF-8
//! (node names ≤ [`NAME_MAX_BYTES`], reasons ≤ [`REASON_MAX_BYTES`]); `Data`/`RsData`
//! data and `Bitmap` words (u64 each) are the rest of the payload. `Option<u32>` is a
//! presence byte and a u32 that is 0 when absent. Decoding is strict: truncated
//! payloads, trailing bytes, non-canonical values (a bool of 2, a digest with presence
//! 0 but a non-zero value) and unknown codes are errors, so every accepted frame
//! re-encodes to the same bytes.

use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::msg::{Hello, Message, PlanCode, PROTOCOL_VERSION};
use crate::types::{DiskState, Generations, Protocol, Role, HISTORY_LEN};

/// Length of the frame header.
pub const HEADER_BYTES: usize = 24;
/// Magic at the start of every frame.
pub const MAGIC: [u8; 4] = *b"TWRL";
/// Frame format version: the peer protocol version ([`PROTOCOL_VERSION`]).
pub const FRAME_VERSION: u16 = PROTOCOL_VERSION as u16;
const _: () = assert!(PROTOCOL_VERSION <= u16::MAX as u32);
/// Header flag: the payload ends in a CRC32C of header and payload.
pub const FLAG_PAYLOAD_CRC32C: u16 = 1 << 0;
const FLAGS_KNOWN: u16 = FLAG_PAYLOAD_CRC32C;
/// Length of the CRC32C trailer.
pub const CRC_BYTES: usize = 4;
/// Largest `data` a `Data` or `RsData` message should carry (1 MiB); the replica
/// splits larger writes and resync requests.
pub const MAX_DATA_BYTES: usize = 1 << 20;
/// Largest number of words a `Bitmap` chunk should carry (1 MiB of words).
pub const MAX_BITMAP_WORDS: usize = MAX_DATA_BYTES / 8;
/// Default payload limit: [`MAX_DATA_BYTES`] plus 4 KiB of headroom for the fixed
/// fields and the CRC trailer, so every message within the limits above fits.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u32 = (MAX_DATA_BYTES as u32) + 4096;
/// Longest node name on the wire, in bytes.
pub const NAME_MAX_BYTES: usize = 255;
/// Longest `Goodbye` reason on the wire, in bytes.
pub const REASON_MAX_BYTES: usize = 1024;

/// Message type codes (header offset 6), grouped by purpose.
pub mod msg_type {
    /// [`Message::Hello`](crate::msg::Message::Hello).
    pub const HELLO: u16 = 0x0001;
    /// [`Message::Plan`](crate::msg::Message::Plan).
    pub const PLAN: u16 = 0x0002;
    /// [`Message::Bitmap`](crate::msg::Message::Bitmap).
    pub const BITMAP: u16 = 0x0003;
    /// [`Message::Data`](crate::msg::Message::Data).
    pub const DATA: u16 = 0x0010;
    /// [`Message::RecvAck`](crate::msg::Message::RecvAck).
    pub const RECV_ACK: u16 = 0x0011;
    /// [`Message::WriteAck`](crate::msg::Message::WriteAck).
    pub const WRITE_ACK: u16 = 0x0012;
    /// [`Message::NegAck`](crate::msg::Message::NegAck).
    pub const NEG_ACK: u16 = 0x0013;
    /// [`Message::Flush`](crate::msg::Message::Flush).
    pub const FLUSH: u16 = 0x0014;
    /// [`Message::FlushAck`](crate::msg::Message::FlushAck).
    pub const FLUSH_ACK: u16 = 0x0015;
    /// [`Message::RsRequest`](crate::msg::Message::RsRequest).
    pub const RS_REQUEST: u16 = 0x0020;
    /// [`Message::RsData`](crate::msg::Message::RsData).
    pub const RS_DATA: u16 = 0x0021;
    /// [`Message::RsInSync`](crate::msg::Message::RsInSync).
    pub const RS_IN_SYNC: u16 = 0x0022;
    /// [`Message::RsNegAck`](crate::msg::Message::RsNegAck).
    pub const RS_NEG_ACK: u16 = 0x0023;
    /// [`Message::RsDone`](crate::msg::Message::RsDone).
    pub const RS_DONE: u16 = 0x0024;
    /// [`Message::OvRequest`](crate::msg::Message::OvRequest).
    pub const OV_REQUEST: u16 = 0x0030;
    /// [`Message::OvReply`](crate::msg::Message::OvReply).
    pub const OV_REPLY: u16 = 0x0031;
    /// [`Message::OvDone`](crate::msg::Message::OvDone).
    pub const OV_DONE: u16 = 0x0032;
    /// [`Message::State`](crate::msg::Message::State).
    pub const STATE: u16 = 0x0040;
    /// [`Message::Outdate`](crate::msg::Message::Outdate).
    pub const OUTDATE: u16 = 0x0041;
    /// [`Message::OutdateAck`](crate::msg::Message::OutdateAck).
    pub const OUTDATE_ACK: u16 = 0x0042;
    /// [`Message::Ping`](crate::msg::Message::Ping).
    pub const PING: u16 = 0x0050;
    /// [`Message::PingAck`](crate::msg::Message::PingAck).
    pub const PING_ACK: u16 = 0x0051;
    /// [`Message::Goodbye`](crate::msg::Message::Goodbye).
    pub const GOODBYE: u16 = 0x0052;

    /// Whether `t` is a type this build decodes.
    pub fn is_known(t: u16) -> bool {
        matches!(
            t,
            HELLO
                | PLAN
                | BITMAP
                | DATA
                | RECV_ACK
                | WRITE_ACK
                | NEG_ACK
                | FLUSH
                | FLUSH_ACK
                | RS_REQUEST
                | RS_DATA
                | RS_IN_SYNC
                | RS_NEG_ACK
                | RS_DONE
                | OV_REQUEST
                | OV_REPLY
                | OV_DONE
                | STATE
                | OUTDATE
                | OUTDATE_ACK
                | PING
                | PING_ACK
                | GOODBYE
        )
    }
}

/// Why bytes from the peer could not be decoded. Every error is fatal for the
/// connection: the stream position is lost or the peer is not speaking this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with [`MAGIC`]: not a twinsan replication stream, or
    /// the stream lost its framing.
    #[error("bad frame magic {0:02x?}: not a twinsan replication frame")]
    BadMagic([u8; 4]),
    /// A field holds a value this build does not know (frame version, flags, enum
    /// codes, booleans, reserved fields).
    #[error("unsupported {what} {value}")]
    Unsupported {
        /// The field.
        what: &'static str,
        /// The value received.
        value: u64,
    },
    /// Unknown message type code.
    #[error("unknown message type {0:#06x}")]
    UnknownType(u16),
    /// The header announces a payload above the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: u32,
        /// Configured limit.
        max: u32,
    },
    /// The payload ended before a field.
    #[error("payload truncated in {what}")]
    Truncated {
        /// The field being read.
        what: &'static str,
    },
    /// Bytes left over after the last field.
    #[error("{extra} trailing bytes after a {kind} payload")]
    Trailing {
        /// The message kind.
        kind: &'static str,
        /// Number of extra bytes.
        extra: usize,
    },
    /// The payload handed to [`decode_payload`] is not as long as its header says.
    #[error("header announces {header} payload bytes but {actual} were given")]
    PayloadLength {
        /// Length from the header.
        header: u32,
        /// Bytes given.
        actual: usize,
    },
    /// The bitmap words are not a whole number of u64.
    #[error("bitmap payload has {len_bytes} bytes of words, not a multiple of 8")]
    BitmapLength {
        /// Bytes after the fixed fields.
        len_bytes: usize,
    },
    /// A string longer than its limit.
    #[error("{what} is {len_bytes} bytes, longer than the limit of {max_bytes}")]
    StringTooLong {
        /// The field.
        what: &'static str,
        /// Length received.
        len_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A string that is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    Utf8 {
        /// The field.
        what: &'static str,
    },
    /// CRC32C trailer mismatch.
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC in the frame.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A frame sequence number other than the next one: a lost, repeated or reordered
    /// frame.
    #[error("frame sequence {got}, expected {expected}")]
    Sequence {
        /// The next sequence number.
        expected: u64,
        /// The one received.
        got: u64,
    },
}

/// The 24 header bytes as laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 4],
    version: U16,
    msg_type: U16,
    flags: U16,
    reserved: U16,
    seq: U64,
    payload_len: U32,
}
const _: () = assert!(size_of::<RawHeader>() == HEADER_BYTES);

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message type code ([`msg_type`]); always a known one.
    pub msg_type: u16,
    /// Header flags ([`FLAG_PAYLOAD_CRC32C`]).
    pub flags: u16,
    /// Frame sequence number (not checked here; [`Decoder`] checks it).
    pub seq: u64,
    /// Payload length in bytes, CRC trailer included; at most the configured limit.
    pub payload_len: u32,
}

impl FrameHeader {
    fn to_raw(self) -> RawHeader {
        RawHeader {
            magic: MAGIC,
            version: U16::new(FRAME_VERSION),
            msg_type: U16::new(self.msg_type),
            flags: U16::new(self.flags),
            reserved: U16::new(0),
            seq: U64::new(self.seq),
            payload_len: U32::new(self.payload_len),
        }
    }
}

/// Validate a frame header: magic, version, flags, reserved field, message type and
/// the payload length against `max_payload_bytes`, before any payload is read.
pub fn decode_header(
    buf: &[u8; HEADER_BYTES],
    max_payload_bytes: u32,
) -> Result<FrameHeader, WireError> {
    let raw: &RawHeader = zerocopy::transmute_ref!(buf);
    if raw.magic != MAGIC {
        return Err(WireError::BadMagic(raw.magic));
    }
    if raw.version.get() != FRAME_VERSION {
        return Err(WireError::Unsupported {
            what: "frame version",
            value: raw.version.get().into(),
        });
    }
    let flags = raw.flags.get();
    if flags & !FLAGS_KNOWN != 0 {
        return Err(WireError::Unsupported {
            what: "frame flags",
            value: flags.into(),
        });
    }
    if raw.reserved.get() != 0 {
        return Err(WireError::Unsupported {
            what: "reserved header field",
            value: raw.reserved.get().into(),
        });
    }
    let payload_len = raw.payload_len.get();
    if payload_len > max_payload_bytes {
        return Err(WireError::TooLarge {
            len: payload_len,
            max: max_payload_bytes,
        });
    }
    let msg_type = raw.msg_type.get();
    if !msg_type::is_known(msg_type) {
        return Err(WireError::UnknownType(msg_type));
    }
    Ok(FrameHeader {
        msg_type,
        flags,
        seq: raw.seq.get(),
        payload_len,
    })
}

/// The type code of a message.
pub fn type_of(msg: &Message) -> u16 {
    use msg_type::*;
    match msg {
        Message::Hello(_) => HELLO,
        Message::Plan(_) => PLAN,
        Message::Bitmap { .. } => BITMAP,
        Message::Data { .. } => DATA,
        Message::RecvAck { .. } => RECV_ACK,
        Message::WriteAck { .. } => WRITE_ACK,
        Message::NegAck { .. } => NEG_ACK,
        Message::Flush { .. } => FLUSH,
        Message::FlushAck { .. } => FLUSH_ACK,
        Message::RsRequest { .. } => RS_REQUEST,
        Message::RsData { .. } => RS_DATA,
        Message::RsInSync { .. } => RS_IN_SYNC,
        Message::RsNegAck { .. } => RS_NEG_ACK,
        Message::RsDone => RS_DONE,
        Message::OvRequest { .. } => OV_REQUEST,
        Message::OvReply { .. } => OV_REPLY,
        Message::OvDone => OV_DONE,
        Message::State { .. } => STATE,
        Message::Outdate => OUTDATE,
        Message::OutdateAck => OUTDATE_ACK,
        Message::Ping => PING,
        Message::PingAck => PING_ACK,
        Message::Goodbye { .. } => GOODBYE,
    }
}

/// Append one frame (header and payload, no CRC trailer) carrying `msg` with frame
/// sequence number `seq` to `out`.
///
/// Strings longer than their limit are cut at a character boundary. The caller keeps
/// `data` within [`MAX_DATA_BYTES`] and bitmap chunks within [`MAX_BITMAP_WORDS`];
/// a larger frame is encoded but a peer with the default limit refuses it.
///
/// # Panics
/// If the payload exceeds `u32::MAX` bytes (a local programming error, never peer
/// input).
pub fn encode(seq: u64, msg: &Message, out: &mut BytesMut) {
    encode_frame(seq, msg, false, out);
}

/// Like [`encode`], optionally with the CRC32C trailer ([`FLAG_PAYLOAD_CRC32C`]).
///
/// # Panics
/// As [`encode`].
pub fn encode_frame(seq: u64, msg: &Message, payload_crc32c: bool, out: &mut BytesMut) {
    let start = out.len();
    out.put_bytes(0, HEADER_BYTES);
    if let Some(data) = encode_payload_head(msg, out) {
        out.put_slice(data);
    }
    let mut payload_len = out.len() - start - HEADER_BYTES;
    if payload_crc32c {
        payload_len += CRC_BYTES;
    }
    let flags = if payload_crc32c {
        FLAG_PAYLOAD_CRC32C
    } else {
        0
    };
    fill_header(out, start, msg, flags, seq, payload_len);
    if payload_crc32c {
        let crc = crc32c::crc32c(&out[start..]);
        out.put_u32_le(crc);
    }
}

/// Write the header of the frame starting at `out[start]` (its 24 bytes reserved).
/// Panics only for a payload over 4 GiB, which no message this process builds has
/// (application and resync data are at most 1 MiB per message).
fn fill_header(
    out: &mut BytesMut,
    start: usize,
    msg: &Message,
    flags: u16,
    seq: u64,
    payload_len: usize,
) {
    let header = FrameHeader {
        msg_type: type_of(msg),
        flags,
        seq,
        payload_len: u32::try_from(payload_len).expect("replication frame payload over 4 GiB"),
    };
    out[start..start + HEADER_BYTES].copy_from_slice(header.to_raw().as_bytes());
}

fn put_bool(out: &mut BytesMut, b: bool) {
    out.put_u8(u8::from(b));
}

fn put_str(out: &mut BytesMut, s: &str, max_bytes: usize) {
    let mut end = s.len().min(max_bytes);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    // `end` ≤ REASON_MAX_BYTES, so it fits a u16.
    out.put_u16_le(end as u16);
    out.put_slice(&s.as_bytes()[..end]);
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Primary => 1,
        Role::Secondary => 2,
    }
}

fn disk_code(d: DiskState) -> u8 {
    match d {
        DiskState::Diskless => 1,
        DiskState::Attaching => 2,
        DiskState::Inconsistent => 3,
        DiskState::Outdated => 4,
        DiskState::Consistent => 5,
        DiskState::UpToDate => 6,
    }
}

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::A => 1,
        Protocol::B => 2,
        Protocol::C => 3,
    }
}

/// Encode `msg`'s payload, except the data of `Data` and `RsData`, which is returned
/// for the caller to append (or to send as a separate chunk).
fn encode_payload_head<'m>(msg: &'m Message, out: &mut BytesMut) -> Option<&'m Bytes> {
    match msg {
        Message::Hello(h) => {
            out.put_u32_le(h.protocol_version);
            out.put_u64_le(h.features);
            out.put_u8(h.node_id);
            out.put_slice(&h.volume_uuid);
            out.put_u64_le(h.size_bytes);
            out.put_u8(protocol_code(h.protocol));
            out.put_u8(role_code(h.role));
            out.put_u8(disk_code(h.disk));
            out.put_u64_le(h.gens.current);
            out.put_u64_le(h.gens.bitmap);
            for u in h.gens.history {
                out.put_u64_le(u);
            }
            out.put_u32_le(h.flags);
            out.put_u64_le(h.bitmap_weight_bits);
            out.put_u64_le(h.primary_since_ms);
            put_str(out, &h.node_name, NAME_MAX_BYTES);
        }
        Message::Plan(p) => {
            let (code, node) = match *p {
                PlanCode::NoSync => (1, 0),
                PlanCode::BitmapFrom(n) => (2, n),
                PlanCode::FullFrom(n) => (3, n),
                PlanCode::Refuse => (4, 0),
            };
            out.put_u8(code);
            out.put_u8(node);
        }
        Message::Bitmap {
            first_word,
            words,
            last,
        } => {
            out.put_u64_le(*first_word);
            put_bool(out, *last);
            out.reserve(words.len() * 8);
            for w in words {
                out.put_u64_le(*w);
            }
        }
        Message::Data {
            seq,
            peer_seq_seen,
            generation,
            offset_bytes,
            fua,
            data,
        } => {
            out.put_u64_le(*seq);
            out.put_u64_le(*peer_seq_seen);
            out.put_u64_le(*generation);
            out.put_u64_le(*offset_bytes);
            put_bool(out, *fua);
            return Some(data);
        }
        Message::RecvAck { seq } | Message::WriteAck { seq } | Message::NegAck { seq } => {
            out.put_u64_le(*seq);
        }
        Message::Flush { id } | Message::RsInSync { id } | Message::RsNegAck { id } => {
            out.put_u64_le(*id)
        }
        Message::FlushAck { id, ok } => {
            out.put_u64_le(*id);
            put_bool(out, *ok);
        }
        Message::RsRequest {
            id,
            offset_bytes,
            len_bytes,
            digest,
        } => {
            out.put_u64_le(*id);
            out.put_u64_le(*offset_bytes);
            out.put_u32_le(*len_bytes);
            put_bool(out, digest.is_some());
            out.put_u32_le(digest.unwrap_or(0));
        }
        Message::RsData {
            id,
            offset_bytes,
            data,
        } => {
            out.put_u64_le(*id);
            out.put_u64_le(*offset_bytes);
            return Some(data);
        }
        Message::OvRequest {
            id,
            offset_bytes,
            len_bytes,
            digest,
        } => {
            out.put_u64_le(*id);
            out.put_u64_le(*offset_bytes);
            out.put_u32_le(*len_bytes);
            out.put_u32_le(*digest);
        }
        Message::OvReply { id, in_sync } => {
            out.put_u64_le(*id);
            put_bool(out, *in_sync);
        }
        Message::State { role, disk } => {
            out.put_u8(role_code(*role));
            out.put_u8(disk_code(*disk));
        }
        Message::Goodbye { reason } => put_str(out, reason, REASON_MAX_BYTES),
        Message::RsDone
        | Message::OvDone
        | Message::Outdate
        | Message::OutdateAck
        | Message::Ping
        | Message::PingAck => {}
    }
    None
}

/// Reads fields off a payload; every read is bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < n {
            return Err(WireError::Truncated { what });
        }
        self.pos += n;
        Ok(&rest[..n])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, WireError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::Unsupported {
                what,
                value: v.into(),
            }),
        }
    }

    fn string(&mut self, what: &'static str, max_bytes: usize) -> Result<String, WireError> {
        let len = usize::from(self.u16(what)?);
        if len > max_bytes {
            return Err(WireError::StringTooLong {
                what,
                len_bytes: len,
                max_bytes,
            });
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| WireError::Utf8 { what })
    }

    fn role(&mut self) -> Result<Role, WireError> {
        match self.u8("role")? {
            1 => Ok(Role::Primary),
            2 => Ok(Role::Secondary),
            v => Err(WireError::Unsupported {
                what: "role",
                value: v.into(),
            }),
        }
    }

    fn disk(&mut self) -> Result<DiskState, WireError> {
        Ok(match self.u8("disk state")? {
            1 => DiskState::Diskless,
            2 => DiskState::Attaching,
            3 => DiskState::Inconsistent,
            4 => DiskState::Outdated,
            5 => DiskState::Consistent,
            6 => DiskState::UpToDate,
            v => {
                return Err(WireError::Unsupported {
                    what: "disk state",
                    value: v.into(),
                })
            }
        })
    }

    fn protocol(&mut self) -> Result<Protocol, WireError> {
        Ok(match self.u8("protocol")? {
            1 => Protocol::A,
            2 => Protocol::B,
            3 => Protocol::C,
            v => {
                return Err(WireError::Unsupported {
                    what: "protocol",
                    value: v.into(),
                })
            }
        })
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn finish(&self, kind: &'static str) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(WireError::Trailing { kind, extra }),
        }
    }
}

/// Decode the payload of a frame whose header [`decode_header`] accepted. `payload`
/// must be exactly `h.payload_len` bytes (CRC trailer included, which is verified
/// and stripped). `Data` and `RsData` keep zero-copy slices of `payload`.
pub fn decode_payload(h: &FrameHeader, payload: Bytes) -> Result<Message, WireError> {
    if payload.len() != h.payload_len as usize {
        return Err(WireError::PayloadLength {
            header: h.payload_len,
            actual: payload.len(),
        });
    }
    let payload = if h.flags & FLAG_PAYLOAD_CRC32C != 0 {
        let Some(body_len) = payload.len().checked_sub(CRC_BYTES) else {
            return Err(WireError::Truncated { what: "CRC32C" });
        };
        let mut trailer = [0u8; CRC_BYTES];
        trailer.copy_from_slice(&payload[body_len..]);
        let stored = u32::from_le_bytes(trailer);
        let computed =
            crc32c::crc32c_append(crc32c::crc32c(h.to_raw().as_bytes()), &payload[..body_len]);
        if stored != computed {
            return Err(WireError::Checksum { stored, computed });
        }
        payload.slice(..body_len)
    } else {
        payload
    };
    let mut r = Reader {
        buf: &payload,
        pos: 0,
    };
    use msg_type::*;
    let msg = match h.msg_type {
        HELLO => {
            let protocol_version = r.u32("protocol version")?;
            let features = r.u64("features")?;
            let node_id = r.u8("node id")?;
            let volume_uuid = r.array("volume uuid")?;
            let size_bytes = r.u64("size")?;
            let protocol = r.protocol()?;
            let role = r.role()?;
            let disk = r.disk()?;
            let current = r.u64("current uuid")?;
            let bitmap = r.u64("bitmap uuid")?;
            let mut history = [0u64; HISTORY_LEN];
            for slot in &mut history {
                *slot = r.u64("history uuid")?;
            }
            let flags = r.u32("hello flags")?;
            let bitmap_weight_bits = r.u64("bitmap weight")?;
            let primary_since_ms = r.u64("primary since")?;
            let node_name = r.string("node name", NAME_MAX_BYTES)?;
            Message::Hello(Hello {
                protocol_version,
                features,
                node_id,
                node_name,
                volume_uuid,
                size_bytes,
                protocol,
                role,
                disk,
                gens: Generations {
                    current,
                    bitmap,
                    history,
                },
                flags,
                bitmap_weight_bits,
                primary_since_ms,
            })
        }
        PLAN => {
            let code = r.u8("plan code")?;
            let node = r.u8("plan node")?;
            let plan = match code {
                1 => PlanCode::NoSync,
                2 => PlanCode::BitmapFrom(node),
                3 => PlanCode::FullFrom(node),
                4 => PlanCode::Refuse,
                v => {
                    return Err(WireError::Unsupported {
                        what: "plan code",
                        value: v.into(),
                    })
                }
            };
            if matches!(plan, PlanCode::NoSync | PlanCode::Refuse) && node != 0 {
                return Err(WireError::Unsupported {
                    what: "plan node for a plan without a source",
                    value: node.into(),
                });
            }
            Message::Plan(plan)
        }
        BITMAP => {
            let first_word = r.u64("first word")?;
            let last = r.bool("last flag")?;
            let rest = r.take(r.remaining(), "bitmap words")?;
            if rest.len() % 8 != 0 {
                return Err(WireError::BitmapLength {
                    len_bytes: rest.len(),
                });
            }
            let words = rest
                .chunks_exact(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(c);
                    u64::from_le_bytes(w)
                })
                .collect();
            Message::Bitmap {
                first_word,
                words,
                last,
            }
        }
        DATA => {
            let seq = r.u64("write seq")?;
            let peer_seq_seen = r.u64("peer seq seen")?;
            let generation = r.u64("generation")?;
            let offset_bytes = r.u64("offset")?;
            let fua = r.bool("fua flag")?;
            Message::Data {
                seq,
                peer_seq_seen,
                generation,
                offset_bytes,
                fua,
                data: payload.slice(r.pos..),
            }
        }
        RECV_ACK => Message::RecvAck {
            seq: r.u64("write seq")?,
        },
        WRITE_ACK => Message::WriteAck {
            seq: r.u64("write seq")?,
        },
        NEG_ACK => Message::NegAck {
            seq: r.u64("write seq")?,
        },
        FLUSH => Message::Flush {
            id: r.u64("flush id")?,
        },
        FLUSH_ACK => Message::FlushAck {
            id: r.u64("flush id")?,
            ok: r.bool("flush ok flag")?,
        },
        RS_REQUEST => {
            let id = r.u64("request id")?;
            let offset_bytes = r.u64("offset")?;
            let len_bytes = r.u32("length")?;
            let present = r.bool("digest presence")?;
            let value = r.u32("digest")?;
            let digest = match (present, value) {
                (true, v) => Some(v),
                (false, 0) => None,
                (false, v) => {
                    return Err(WireError::Unsupported {
                        what: "digest value without presence",
                        value: v.into(),
                    })
                }
            };
            Message::RsRequest {
                id,
                offset_bytes,
                len_bytes,
                digest,
            }
        }
        RS_DATA => {
            let id = r.u64("request id")?;
            let offset_bytes = r.u64("offset")?;
            Message::RsData {
                id,
                offset_bytes,
                data: payload.slice(r.pos..),
            }
        }
        RS_IN_SYNC => Message::RsInSync {
            id: r.u64("request id")?,
        },
        RS_NEG_ACK => Message::RsNegAck {
            id: r.u64("request id")?,
        },
        RS_DONE => Message::RsDone,
        OV_REQUEST => Message::OvRequest {
            id: r.u64("request id")?,
            offset_bytes: r.u64("offset")?,
            len_bytes: r.u32("length")?,
            digest: r.u32("digest")?,
        },
        OV_REPLY => Message::OvReply {
            id: r.u64("request id")?,
            in_sync: r.bool("in-sync flag")?,
        },
        OV_DONE => Message::OvDone,
        STATE => Message::State {
            role: r.role()?,
            disk: r.disk()?,
        },
        OUTDATE => Message::Outdate,
        OUTDATE_ACK => Message::OutdateAck,
        PING => Message::Ping,
        PING_ACK => Message::PingAck,
        GOODBYE => Message::Goodbye {
            reason: r.string("goodbye reason", REASON_MAX_BYTES)?,
        },
        t => return Err(WireError::UnknownType(t)),
    };
    if !matches!(msg, Message::Data { .. } | Message::RsData { .. }) {
        r.finish(msg.kind())?;
    }
    Ok(msg)
}

/// Assigns frame sequence numbers (from 1) to outgoing messages of one connection.
#[derive(Debug, Clone)]
pub struct Encoder {
    next_seq: u64,
    payload_crc32c: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder for a fresh connection, without CRC trailers.
    pub fn new() -> Self {
        Encoder {
            next_seq: 1,
            payload_crc32c: false,
        }
    }

    /// An encoder that appends the CRC32C trailer to every frame.
    pub fn with_payload_crc32c() -> Self {
        Encoder {
            payload_crc32c: true,
            ..Self::new()
        }
    }

    /// Append the next frame carrying `msg` to `out`. Panics as [`encode`].
    pub fn encode(&mut self, msg: &Message, out: &mut BytesMut) {
        encode_frame(self.next_seq, msg, self.payload_crc32c, out);
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// Like [`Encoder::encode`], but the data of a `Data` or `RsData` message (without
    /// CRC trailers) is not copied into `out`: it is returned, and the frame is `out`'s
    /// new bytes followed by it. A transport sends both with one vectored write.
    pub fn encode_split(&mut self, msg: &Message, out: &mut BytesMut) -> Option<Bytes> {
        let data = match msg {
            Message::Data { data, .. } | Message::RsData { data, .. } if !self.payload_crc32c => {
                data.clone()
            }
            _ => {
                self.encode(msg, out);
                return None;
            }
        };
        let start = out.len();
        out.put_bytes(0, HEADER_BYTES);
        let _ = encode_payload_head(msg, out);
        let payload_len = out.len() - start - HEADER_BYTES + data.len();
        fill_header(out, start, msg, 0, self.next_seq, payload_len);
        self.next_seq = self.next_seq.wrapping_add(1);
        Some(data)
    }

    /// The sequence number the next frame gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Incremental decoder for one connection's byte stream: feed bytes as they arrive,
/// pull complete messages. Checks that frame sequence numbers run 1, 2, 3, …
///
/// After the first error the decoder stays failed (every call returns that error):
/// the connection must be dropped.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_payload_bytes: u32,
    header: Option<FrameHeader>,
    expected_seq: u64,
    failed: Option<WireError>,
}

impl Decoder {
    /// A decoder for a fresh connection refusing payloads above `max_payload_bytes`
    /// (usually [`DEFAULT_MAX_PAYLOAD_BYTES`]).
    pub fn new(max_payload_bytes: u32) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_payload_bytes,
            header: None,
            expected_seq: 1,
            failed: None,
        }
    }

    /// Append bytes received from the peer. Ignored once the decoder has failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The internal buffer, prepared for a direct read from the transport (append only;
    /// e.g. `AsyncReadExt::read_buf`): with room for at least `min_bytes`, and for the
    /// whole payload of the frame being received, so that a large payload lands in one
    /// allocation without being copied or regrown.
    pub fn read_buffer(&mut self, min_bytes: usize) -> &mut BytesMut {
        let frame_rest = match self.header {
            Some(h) => (h.payload_len as usize).saturating_sub(self.buf.len()),
            None => HEADER_BYTES.saturating_sub(self.buf.len()),
        };
        self.buf.reserve(frame_rest.max(min_bytes));
        &mut self.buf
    }

    /// Bytes buffered but not yet returned as messages.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next complete message and its frame sequence number, `Ok(None)` if more
    /// bytes are needed. A bad header (including an oversized payload length or a
    /// sequence gap) is reported as soon as its 24 bytes are in, before the payload.
    pub fn next_message(&mut self) -> Result<Option<(u64, Message)>, WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step() {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = BytesMut::new();
                Err(e)
            }
        }
    }

    fn step(&mut self) -> Result<Option<(u64, Message)>, WireError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                let Some(raw) = self.buf.get(..HEADER_BYTES) else {
                    return Ok(None);
                };
                let mut bytes = [0u8; HEADER_BYTES];
                bytes.copy_from_slice(raw);
                let h = decode_header(&bytes, self.max_payload_bytes)?;
                if h.seq != self.expected_seq {
                    return Err(WireError::Sequence {
                        expected: self.expected_seq,
                        got: h.seq,
                    });
                }
                let _ = self.buf.split_to(HEADER_BYTES);
                self.header = Some(h);
                h
            }
        };
        let len = header.payload_len as usize;
        if self.buf.len() < len {
            return Ok(None);
        }
        let payload = self.buf.split_to(len).freeze();
        self.header = None;
        let msg = decode_payload(&header, payload)?;
        self.expected_seq = self.expected_seq.wrapping_add(1);
        Ok(Some((header.seq, msg)))
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn split_encoding_is_byte_identical_to_the_plain_one() {
        let msgs = [
            Message::Ping,
            Message::Data {
                seq: 7,
                peer_seq_seen: 3,
                generation: 0xABCD,
                offset_bytes: 4096,
                fua: true,
                data: Bytes::from(vec![5u8; 4096]),
            },
            Message::RsData {
                id: 9,
                offset_bytes: 8192,
                data: Bytes::from(vec![6u8; 512]),
            },
            Message::WriteAck { seq: 7 },
        ];
        let (mut a, mut b) = (Encoder::new(), Encoder::new());
        let (mut plain, mut split) = (BytesMut::new(), BytesMut::new());
        for m in &msgs {
            a.encode(m, &mut plain);
            if let Some(tail) = b.encode_split(m, &mut split) {
                split.extend_from_slice(&tail);
            }
        }
        assert_eq!(plain, split);
    }
}

/// Fuzz entry point (`fuzz/fuzz_targets/repl_decode.rs` and the corpus replay test):
/// decode arbitrary bytes with a small limit, fed in chunks whose sizes the input's
/// first byte picks, and check that every accepted message re-encodes to the exact
/// bytes it came from. Never panics unless that invariant breaks.
pub fn fuzz_decode(bytes: &[u8]) {
    let chunk = bytes.first().map_or(1, |b| usize::from(b % 64) + 1);
    let mut d = Decoder::new(4096);
    let mut consumed = 0usize;
    for piece in bytes.chunks(chunk) {
        d.feed(piece);
        while let Ok(Some((seq, msg))) = d.next_message() {
            let mut again = BytesMut::new();
            let crc = bytes.get(consumed + 8).is_some_and(|f| f & 1 == 1);
            encode_frame(seq, &msg, crc, &mut again);
            assert_eq!(
                bytes.get(consumed..consumed + again.len()),
                Some(&again[..]),
                "re-encoding {msg:?} changed its bytes"
            );
            consumed += again.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{feature, hello_flag};
    use proptest::prelude::*;

    fn frame(seq: u64, msg: &Message) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(seq, msg, &mut out);
        out.to_vec()
    }

    fn decode_one(bytes: &[u8]) -> Result<Option<(u64, Message)>, WireError> {
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES);
        d.feed(bytes);
        d.next_message()
    }

    fn sample_hello() -> Hello {
        Hello {
            protocol_version: 1,
            features: feature::CSUMS | feature::DUAL_PRIMARY,
            node_id: 1,
            node_name: "b".into(),
            volume_uuid: [
                0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
                0x1e, 0x1f,
            ],
            size_bytes: 1 << 30,
            protocol: Protocol::C,
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            gens: Generations {
                current: 0x0a0b,
                bitmap: 0,
                history: [3, 0, 0, 0],
            },
            flags: hello_flag::DISCARD_MY_DATA,
            bitmap_weight_bits: 9,
            primary_since_ms: 0,
        }
    }

    #[rustfmt::skip]
    const PING_GOLDEN: [u8; 24] = [
        0x54, 0x57, 0x52, 0x4c, // "TWRL"
        0x01, 0x00,             // version 1
        0x50, 0x00,             // type PING
        0x00, 0x00,             // flags
        0x00, 0x00,             // reserved
        0x01, 0, 0, 0, 0, 0, 0, 0, // seq 1
        0x00, 0x00, 0x00, 0x00, // payload length 0
    ];

    #[test]
    fn golden_ping() {
        assert_eq!(frame(1, &Message::Ping), PING_GOLDEN);
        assert_eq!(decode_one(&PING_GOLDEN), Ok(Some((1, Message::Ping))));
    }

    #[rustfmt::skip]
    const DATA_GOLDEN: [u8; 24 + 37] = [
        0x54, 0x57, 0x52, 0x4c, 0x01, 0x00,
        0x10, 0x00,             // type DATA
        0x00, 0x00, 0x00, 0x00,
        0x01, 0, 0, 0, 0, 0, 0, 0, // frame seq 1
        0x25, 0x00, 0x00, 0x00, // payload length 37
        0x07, 0, 0, 0, 0, 0, 0, 0, // write seq 7
        0x03, 0, 0, 0, 0, 0, 0, 0, // peer seq seen 3
        0x89, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // generation
        0x00, 0x10, 0, 0, 0, 0, 0, 0, // offset 4096
        0x01,                   // fua
        b'a', b'b', b'c', b'd', // data
    ];

    fn sample_data() -> Message {
        Message::Data {
            seq: 7,
            peer_seq_seen: 3,
            generation: 0x1122_3344_5566_7789,
            offset_bytes: 4096,
            fua: true,
            data: Bytes::from_static(b"abcd"),
        }
    }

    #[test]
    fn golden_data() {
        assert_eq!(frame(1, &sample_data()), DATA_GOLDEN);
        assert_eq!(decode_one(&DATA_GOLDEN), Ok(Some((1, sample_data()))));
    }

    #[rustfmt::skip]
    const HELLO_GOLDEN: [u8; 24 + 111] = [
        0x54, 0x57, 0x52, 0x4c, 0x01, 0x00,
        0x01, 0x00,             // type HELLO
        0x00, 0x00, 0x00, 0x00,
        0x01, 0, 0, 0, 0, 0, 0, 0, // frame seq 1
        0x6f, 0x00, 0x00, 0x00, // payload length 111
        0x01, 0x00, 0x00, 0x00, // protocol version 1
        0x05, 0, 0, 0, 0, 0, 0, 0, // features CSUMS | DUAL_PRIMARY
        0x01,                   // node id
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, // volume uuid
        0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
        0x00, 0x00, 0x00, 0x40, 0, 0, 0, 0, // size 1 GiB
        0x03,                   // protocol C
        0x02,                   // role Secondary
        0x06,                   // disk UpToDate
        0x0b, 0x0a, 0, 0, 0, 0, 0, 0, // current uuid
        0, 0, 0, 0, 0, 0, 0, 0, // bitmap uuid
        0x03, 0, 0, 0, 0, 0, 0, 0, // history[0]
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0x02, 0x00, 0x00, 0x00, // flags DISCARD_MY_DATA
        0x09, 0, 0, 0, 0, 0, 0, 0, // bitmap weight
        0, 0, 0, 0, 0, 0, 0, 0, // primary since
        0x01, 0x00, b'b',       // node name
    ];

    #[test]
    fn golden_hello() {
        let msg = Message::Hello(sample_hello());
        assert_eq!(frame(1, &msg), HELLO_GOLDEN);
        assert_eq!(decode_one(&HELLO_GOLDEN), Ok(Some((1, msg))));
    }

    fn all_kinds() -> Vec<Message> {
        vec![
            Message::Hello(sample_hello()),
            Message::Plan(PlanCode::NoSync),
            Message::Plan(PlanCode::BitmapFrom(1)),
            Message::Plan(PlanCode::FullFrom(0)),
            Message::Plan(PlanCode::Refuse),
            Message::Bitmap {
                first_word: 5,
                words: vec![1, u64::MAX, 0],
                last: true,
            },
            sample_data(),
            Message::RecvAck { seq: 1 },
            Message::WriteAck { seq: 2 },
            Message::NegAck { seq: 3 },
            Message::Flush { id: 4 },
            Message::FlushAck { id: 4, ok: false },
            Message::RsRequest {
                id: 5,
                offset_bytes: 8192,
                len_bytes: 4096,
                digest: Some(0),
            },
            Message::RsRequest {
                id: 5,
                offset_bytes: 8192,
                len_bytes: 4096,
                digest: None,
            },
            Message::RsData {
                id: 6,
                offset_bytes: 0,
                data: Bytes::from(vec![0xa5; 100]),
            },
            Message::RsInSync { id: 7 },
            Message::RsNegAck { id: 8 },
            Message::RsDone,
            Message::OvRequest {
                id: 9,
                offset_bytes: 1,
                len_bytes: 2,
                digest: 3,
            },
            Message::OvReply {
                id: 9,
                in_sync: true,
            },
            Message::OvDone,
            Message::State {
                role: Role::Primary,
                disk: DiskState::Diskless,
            },
            Message::Outdate,
            Message::OutdateAck,
            Message::Ping,
            Message::PingAck,
            Message::Goodbye {
                reason: "shutting down ✓".into(),
            },
        ]
    }

    #[test]
    fn every_kind_has_a_distinct_known_type() {
        let mut types: Vec<u16> = all_kinds().iter().map(type_of).collect();
        assert!(types.iter().all(|t| msg_type::is_known(*t)));
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), 23);
    }

    #[test]
    fn every_prefix_of_a_frame_needs_more_and_never_errors() {
        for (i, msg) in all_kinds().iter().enumerate() {
            for crc in [false, true] {
                let mut out = BytesMut::new();
                encode_frame(1, msg, crc, &mut out);
                for cut in 0..out.len() {
                    assert_eq!(decode_one(&out[..cut]), Ok(None), "kind {i} cut {cut}");
                }
                assert_eq!(decode_one(&out), Ok(Some((1, msg.clone()))));
            }
        }
    }

    #[test]
    fn every_shortened_payload_is_refused_or_a_shorter_message() {
        for msg in all_kinds() {
            let full = frame(1, &msg);
            for cut in 0..full.len() - HEADER_BYTES {
                let mut f = full[..HEADER_BYTES + cut].to_vec();
                f[20..24].copy_from_slice(&(cut as u32).to_le_bytes());
                let got = decode_one(&f);
                match &msg {
                    Message::Data { .. } | Message::RsData { .. } | Message::Bitmap { .. } => {
                        // Shorter data / fewer words may still be a valid message.
                        if let Ok(Some((_, m))) = got {
                            assert_eq!(m.kind(), msg.kind());
                            assert!(m.payload_bytes() < msg.payload_bytes());
                        }
                    }
                    _ => assert!(got.is_err(), "{msg:?} cut to {cut}: {got:?}"),
                }
            }
            // One extra byte is trailing garbage for everything but the data carriers
            // and bitmaps (where it breaks the word alignment).
            let mut f = full.clone();
            f.push(0);
            let len = (f.len() - HEADER_BYTES) as u32;
            f[20..24].copy_from_slice(&len.to_le_bytes());
            let got = decode_one(&f);
            if matches!(msg, Message::Data { .. } | Message::RsData { .. }) {
                assert!(matches!(got, Ok(Some(_))));
            } else {
                assert!(got.is_err(), "{msg:?} + 1 byte: {got:?}");
            }
        }
    }

    #[test]
    fn oversize_payload_is_refused_from_the_header_alone() {
        let mut h = PING_GOLDEN;
        h[20..24].copy_from_slice(&(DEFAULT_MAX_PAYLOAD_BYTES + 1).to_le_bytes());
        assert_eq!(
            decode_one(&h),
            Err(WireError::TooLarge {
                len: DEFAULT_MAX_PAYLOAD_BYTES + 1,
                max: DEFAULT_MAX_PAYLOAD_BYTES
            })
        );
        // The largest data chunk fits the default limit, with and without CRC.
        let big = Message::RsData {
            id: 1,
            offset_bytes: 0,
            data: Bytes::from(vec![7u8; MAX_DATA_BYTES]),
        };
        let mut out = BytesMut::new();
        encode_frame(1, &big, true, &mut out);
        assert_eq!(decode_one(&out), Ok(Some((1, big))));
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut h = PING_GOLDEN;
        h[6..8].copy_from_slice(&0x7777u16.to_le_bytes());
        assert_eq!(decode_one(&h), Err(WireError::UnknownType(0x7777)));

        let mut h = PING_GOLDEN;
        h[0] = b'G';
        assert!(matches!(decode_one(&h), Err(WireError::BadMagic(_))));
        let e = decode_one(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
        assert!(e.to_string().contains("not a twinsan"), "{e}");

        let mut h = PING_GOLDEN;
        h[4] = 2;
        assert_eq!(
            decode_one(&h),
            Err(WireError::Unsupported {
                what: "frame version",
                value: 2
            })
        );
        let mut h = PING_GOLDEN;
        h[8] = 2;
        assert_eq!(
            decode_one(&h),
            Err(WireError::Unsupported {
                what: "frame flags",
                value: 2
            })
        );
        let mut h = PING_GOLDEN;
        h[11] = 1;
        assert!(matches!(
            decode_one(&h),
            Err(WireError::Unsupported {
                what: "reserved header field",
                ..
            })
        ));
    }

    #[test]
    fn bad_values_are_unsupported() {
        let state = frame(
            1,
            &Message::State {
                role: Role::Primary,
                disk: DiskState::UpToDate,
            },
        );
        let mut f = state.clone();
        f[24] = 3;
        assert_eq!(
            decode_one(&f),
            Err(WireError::Unsupported {
                what: "role",
                value: 3
            })
        );
        let mut f = state;
        f[25] = 0;
        assert_eq!(
            decode_one(&f),
            Err(WireError::Unsupported {
                what: "disk state",
                value: 0
            })
        );

        let mut f = frame(1, &Message::Plan(PlanCode::NoSync));
        f[24] = 9;
        assert_eq!(
            decode_one(&f),
            Err(WireError::Unsupported {
                what: "plan code",
                value: 9
            })
        );
        let mut f = frame(1, &Message::Plan(PlanCode::Refuse));
        f[25] = 1;
        assert!(matches!(decode_one(&f), Err(WireError::Unsupported { .. })));

        let mut f = HELLO_GOLDEN;
        f[24 + 37] = 4; // protocol
        assert_eq!(
            decode_one(&f),
            Err(WireError::Unsupported {
                what: "protocol",
                value: 4
            })
        );

        let mut f = DATA_GOLDEN;
        f[24 + 32] = 2; // fua
        assert_eq!(
            decode_one(&f),
            Err(WireError::Unsupported {
                what: "fua flag",
                value: 2
            })
        );

        let mut f = frame(
            1,
            &Message::RsRequest {
                id: 1,
                offset_bytes: 0,
                len_bytes: 1,
                digest: None,
            },
        );
        f[24 + 21] = 1; // digest value while absent
        assert!(matches!(decode_one(&f), Err(WireError::Unsupported { .. })));
    }

    #[test]
    fn strings_are_bounded_and_utf8() {
        let mut f = HELLO_GOLDEN.to_vec();
        f[24 + 110] = 0xff; // name byte
        assert_eq!(decode_one(&f), Err(WireError::Utf8 { what: "node name" }));

        // A 256-byte name announced on the wire is refused; the encoder cuts it.
        let mut h = sample_hello();
        h.node_name = "n".repeat(300);
        let f = frame(1, &Message::Hello(h.clone()));
        let Ok(Some((_, Message::Hello(back)))) = decode_one(&f) else {
            panic!("cut hello does not decode");
        };
        assert_eq!(back.node_name.len(), NAME_MAX_BYTES);
        let mut g = f[..f.len() - NAME_MAX_BYTES - 2].to_vec();
        g.extend_from_slice(&256u16.to_le_bytes());
        g.extend_from_slice(&[b'n'; 256]);
        let len = (g.len() - HEADER_BYTES) as u32;
        g[20..24].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            decode_one(&g),
            Err(WireError::StringTooLong {
                what: "node name",
                len_bytes: 256,
                max_bytes: NAME_MAX_BYTES
            })
        );

        // Cutting respects character boundaries.
        let reason = "é".repeat(600); // 1200 bytes
        let f = frame(1, &Message::Goodbye { reason });
        let Ok(Some((_, Message::Goodbye { reason }))) = decode_one(&f) else {
            panic!("cut goodbye does not decode");
        };
        assert_eq!(reason.len(), REASON_MAX_BYTES);
    }

    #[test]
    fn bitmap_words_must_be_whole() {
        let mut f = frame(
            1,
            &Message::Bitmap {
                first_word: 0,
                words: vec![1],
                last: false,
            },
        );
        f.pop();
        let len = (f.len() - HEADER_BYTES) as u32;
        f[20..24].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            decode_one(&f),
            Err(WireError::BitmapLength { len_bytes: 7 })
        );
    }

    #[test]
    fn sequence_gap_and_repeat_are_refused_and_stick() {
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES);
        d.feed(&frame(1, &Message::Ping));
        d.feed(&frame(3, &Message::PingAck));
        assert_eq!(d.next_message(), Ok(Some((1, Message::Ping))));
        let e = Err(WireError::Sequence {
            expected: 2,
            got: 3,
        });
        assert_eq!(d.next_message(), e);
        d.feed(&frame(2, &Message::PingAck));
        assert_eq!(d.next_message(), e, "a failed decoder stays failed");

        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES);
        d.feed(&frame(1, &Message::Ping));
        d.feed(&frame(1, &Message::Ping));
        assert!(d.next_message().unwrap().is_some());
        assert_eq!(
            d.next_message(),
            Err(WireError::Sequence {
                expected: 2,
                got: 1
            })
        );

        assert_eq!(
            decode_one(&frame(0, &Message::Ping)),
            Err(WireError::Sequence {
                expected: 1,
                got: 0
            })
        );
    }

    #[test]
    fn crc_trailer_is_checked() {
        let mut enc = Encoder::with_payload_crc32c();
        let mut out = BytesMut::new();
        enc.encode(&sample_data(), &mut out);
        enc.encode(&Message::Ping, &mut out);
        assert_eq!(enc.next_seq(), 3);
        let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES);
        d.feed(&out);
        assert_eq!(d.next_message(), Ok(Some((1, sample_data()))));
        assert_eq!(d.next_message(), Ok(Some((2, Message::Ping))));
        assert_eq!(d.next_message(), Ok(None));
        // Flip one bit anywhere in the data frame except the flag bit itself: either
        // the header check or the CRC catches it.
        let data_len = HEADER_BYTES + 37 + CRC_BYTES;
        for i in 0..data_len * 8 {
            if i == 8 * 8 {
                continue;
            }
            let mut f = out[..data_len].to_vec();
            f[i / 8] ^= 1 << (i % 8);
            let got = decode_one(&f);
            assert!(
                !matches!(got, Ok(Some(_))),
                "bit {i} flipped and still decoded: {got:?}"
            );
        }
        // A flipped data bit is a checksum error.
        let mut f = out[..data_len].to_vec();
        f[24 + 36] ^= 0x40;
        assert!(matches!(decode_one(&f), Err(WireError::Checksum { .. })));
    }

    #[test]
    fn data_is_a_zero_copy_slice_of_the_payload() {
        let h = decode_header(DATA_GOLDEN[..24].try_into().unwrap(), 1 << 20).unwrap();
        let payload = Bytes::copy_from_slice(&DATA_GOLDEN[24..]);
        let range = payload.as_ptr_range();
        let Ok(Message::Data { data, .. }) = decode_payload(&h, payload.clone()) else {
            panic!("not data");
        };
        assert!(range.contains(&data.as_ptr()));
        assert_eq!(
            decode_payload(&h, payload.slice(1..)),
            Err(WireError::PayloadLength {
                header: 37,
                actual: 36
            })
        );
    }

    #[test]
    fn fuzz_entry_accepts_valid_streams() {
        let mut out = BytesMut::new();
        let mut enc = Encoder::new();
        for m in all_kinds() {
            enc.encode(&m, &mut out);
        }
        fuzz_decode(&out);
        fuzz_decode(&[]);
        fuzz_decode(b"TWRL");
    }

    fn arb_role() -> impl Strategy<Value = Role> {
        prop_oneof![Just(Role::Primary), Just(Role::Secondary)]
    }

    fn arb_disk() -> impl Strategy<Value = DiskState> {
        prop_oneof![
            Just(DiskState::Diskless),
            Just(DiskState::Attaching),
            Just(DiskState::Inconsistent),
            Just(DiskState::Outdated),
            Just(DiskState::Consistent),
            Just(DiskState::UpToDate),
        ]
    }

    fn arb_bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn arb_hello() -> impl Strategy<Value = Hello> {
        (
            (any::<u32>(), any::<u64>(), any::<u8>(), "\\PC{0,60}"),
            (any::<[u8; 16]>(), any::<u64>()),
            (
                prop_oneof![Just(Protocol::A), Just(Protocol::B), Just(Protocol::C)],
                arb_role(),
                arb_disk(),
            ),
            (any::<u64>(), any::<u64>(), any::<[u64; HISTORY_LEN]>()),
            (any::<u32>(), any::<u64>(), any::<u64>()),
        )
            .prop_map(
                |(
                    (protocol_version, features, node_id, node_name),
                    (volume_uuid, size_bytes),
                    (protocol, role, disk),
                    (current, bitmap, history),
                    (flags, bitmap_weight_bits, primary_since_ms),
                )| Hello {
                    protocol_version,
                    features,
                    node_id,
                    node_name,
                    volume_uuid,
                    size_bytes,
                    protocol,
                    role,
                    disk,
                    gens: Generations {
                        current,
                        bitmap,
                        history,
                    },
                    flags,
                    bitmap_weight_bits,
                    primary_since_ms,
                },
            )
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let u = any::<u64>;
        prop_oneof![
            arb_hello().prop_map(Message::Hello),
            prop_oneof![
                Just(PlanCode::NoSync),
                any::<u8>().prop_map(PlanCode::BitmapFrom),
                any::<u8>().prop_map(PlanCode::FullFrom),
                Just(PlanCode::Refuse),
            ]
            .prop_map(Message::Plan),
            (u(), proptest::collection::vec(u(), 0..40), any::<bool>()).prop_map(
                |(first_word, words, last)| Message::Bitmap {
                    first_word,
                    words,
                    last
                }
            ),
            (u(), u(), u(), u(), any::<bool>(), arb_bytes()).prop_map(
                |(seq, peer_seq_seen, generation, offset_bytes, fua, data)| Message::Data {
                    seq,
                    peer_seq_seen,
                    generation,
                    offset_bytes,
                    fua,
                    data
                }
            ),
            u().prop_map(|seq| Message::RecvAck { seq }),
            u().prop_map(|seq| Message::WriteAck { seq }),
            u().prop_map(|seq| Message::NegAck { seq }),
            u().prop_map(|id| Message::Flush { id }),
            (u(), any::<bool>()).prop_map(|(id, ok)| Message::FlushAck { id, ok }),
            (u(), u(), any::<u32>(), any::<Option<u32>>()).prop_map(
                |(id, offset_bytes, len_bytes, digest)| Message::RsRequest {
                    id,
                    offset_bytes,
                    len_bytes,
                    digest
                }
            ),
            (u(), u(), arb_bytes()).prop_map(|(id, offset_bytes, data)| Message::RsData {
                id,
                offset_bytes,
                data
            }),
            u().prop_map(|id| Message::RsInSync { id }),
            u().prop_map(|id| Message::RsNegAck { id }),
            Just(Message::RsDone),
            (u(), u(), any::<u32>(), any::<u32>()).prop_map(
                |(id, offset_bytes, len_bytes, digest)| Message::OvRequest {
                    id,
                    offset_bytes,
                    len_bytes,
                    digest
                }
            ),
            (u(), any::<bool>()).prop_map(|(id, in_sync)| Message::OvReply { id, in_sync }),
            Just(Message::OvDone),
            (arb_role(), arb_disk()).prop_map(|(role, disk)| Message::State { role, disk }),
            Just(Message::Outdate),
            Just(Message::OutdateAck),
            Just(Message::Ping),
            Just(Message::PingAck),
            "\\PC{0,250}".prop_map(|reason| Message::Goodbye { reason }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip_through_encoder_and_decoder(
            msgs in proptest::collection::vec(arb_message(), 1..12),
            crc in any::<bool>(),
            chunk in 1usize..200,
        ) {
            let mut enc = if crc { Encoder::with_payload_crc32c() } else { Encoder::new() };
            let mut out = BytesMut::new();
            for m in &msgs {
                enc.encode(m, &mut out);
            }
            let mut d = Decoder::new(DEFAULT_MAX_PAYLOAD_BYTES);
            let mut got = Vec::new();
            for piece in out.chunks(chunk) {
                d.feed(piece);
                while let Some((seq, m)) = d.next_message().unwrap() {
                    prop_assert_eq!(seq, got.len() as u64 + 1);
                    got.push(m);
                }
            }
            prop_assert_eq!(d.buffered_bytes(), 0);
            prop_assert_eq!(got, msgs);
            fuzz_decode(&out);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            fuzz_decode(&bytes);
            let mut d = Decoder::new(256);
            d.feed(&bytes);
            while let Ok(Some(_)) = d.next_message() {}
        }
    }
}
