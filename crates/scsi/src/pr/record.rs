//! The persistent reservation record: [`PrState`] ↔ bytes, version 1.
//!
//! Owns: the byte layout only. The record is written whole on every change (it is small:
//! at most [`REGISTRATIONS_MAX`] entries of 22 bytes plus the initiator name) and read
//! once when the logical unit is created. A replicating store can ship it to the peer
//! synchronously with the data.
//!
//! ## Layout (all integers little-endian)
//!
//! ```text
//! offset size field
//!  0      4   magic "TWPR" (54 57 50 52)
//!  4      2   version = 1
//!  6      2   flags: bit 0 APTPL (the last valid APTPL bit received); others zero
//!  8      4   total length of the record in bytes, header and CRC included
//! 12      4   PRGENERATION
//! 16      1   reservation TYPE (SPC-4 code 1/3/5/6/7/8; 0 = no reservation)
//! 17      1   reservation SCOPE (0 = LU_SCOPE)
//! 18      2   relative target port id of the holding I_T nexus (0 without reservation;
//!             equal to the holder registration's port unless that one is ALL_TG_PT)
//! 20      4   index of the holder's registration (0xFFFF_FFFF without reservation)
//! 24      4   number of registrations M (≤ REGISTRATIONS_MAX)
//! 28          M registration entries, each 22 + L bytes:
//!          +0  8  reservation key (non-zero)
//!          +8  8  ISID (low 48 bits; 0 when absent)
//!         +16  2  relative target port id (0 with ALL_TG_PT)
//!         +18  1  flags: bit 0 all target ports (ALL_TG_PT), bit 1 ISID present
//!         +19  1  reserved (0)
//!         +20  2  initiator name length L (1..=223)
//!         +22  L  initiator name (UTF-8, no terminator)
//! end-4   4   CRC32C (Castagnoli) of every byte before it
//! ```
//!
//! Decoding is total (never panics) and strict: wrong magic, unknown version or flags,
//! length or checksum mismatch, out-of-range values, trailing bytes and broken
//! invariants ([`PrState::validate`]) are errors.

use super::{
    PrState, PrType, RegisteredPort, Registration, Reservation, INITIATOR_NAME_MAX_BYTES,
    REGISTRATIONS_MAX,
};

/// Magic at the start of every record.
pub const MAGIC: [u8; 4] = *b"TWPR";
/// The version this code writes (and the only one it reads).
pub const VERSION: u16 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 28;
/// Fixed part of one registration entry, in bytes.
pub const ENTRY_FIXED_LEN: usize = 22;
/// CRC trailer length in bytes.
pub const CRC_LEN: usize = 4;

const FLAG_APTPL: u16 = 0x0001;
const ENTRY_ALL_TG_PT: u8 = 0x01;
const ENTRY_ISID: u8 = 0x02;
const NO_HOLDER: u32 = 0xFFFF_FFFF;
const ISID_MASK: u64 = (1 << 48) - 1;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than a header and a CRC.
    #[error("record is {0} bytes, shorter than any valid record")]
    TooShort(usize),
    /// Not a persistent reservation record.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Written by a newer (or unknown) version.
    #[error("unsupported record version {0}")]
    UnsupportedVersion(u16),
    /// The length field disagrees with the record's size (torn or padded write).
    #[error("length field says {field} bytes but the record has {actual}")]
    LengthMismatch {
        /// Value of the length field.
        field: u32,
        /// Bytes present.
        actual: usize,
    },
    /// CRC32C mismatch.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC in the record.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// Encode `s` as a version 1 record. `s` must satisfy [`PrState::validate`] (names
/// longer than [`INITIATOR_NAME_MAX_BYTES`] are cut, which decoding would reject).
pub fn encode_record(s: &PrState) -> Vec<u8> {
    let mut b = Vec::with_capacity(
        HEADER_LEN
            + s.registrations
                .iter()
                .map(|r| ENTRY_FIXED_LEN + r.port.initiator_name.len())
                .sum::<usize>()
            + CRC_LEN,
    );
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    let flags = if s.aptpl { FLAG_APTPL } else { 0 };
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&[0; 4]); // total length, filled in below
    b.extend_from_slice(&s.generation.to_le_bytes());
    let holder = s.reservation.as_ref().and_then(|res| {
        s.registrations
            .iter()
            .position(|r| r.port == res.holder)
            .map(|i| (res, i as u32))
    });
    match holder {
        Some((res, i)) => {
            b.push(res.pr_type.code());
            b.push(0);
            b.extend_from_slice(&res.holder_relative_port_id.to_le_bytes());
            b.extend_from_slice(&i.to_le_bytes());
        }
        None => {
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&NO_HOLDER.to_le_bytes());
        }
    }
    b.extend_from_slice(&(s.registrations.len() as u32).to_le_bytes());
    for r in &s.registrations {
        b.extend_from_slice(&r.key.to_le_bytes());
        b.extend_from_slice(&(r.port.isid.unwrap_or(0) & ISID_MASK).to_le_bytes());
        b.extend_from_slice(&r.port.relative_port_id.unwrap_or(0).to_le_bytes());
        let mut flags = 0;
        if r.port.relative_port_id.is_none() {
            flags |= ENTRY_ALL_TG_PT;
        }
        if r.port.isid.is_some() {
            flags |= ENTRY_ISID;
        }
        b.push(flags);
        b.push(0);
        let name = r.port.initiator_name.as_bytes();
        let name = &name[..name.len().min(INITIATOR_NAME_MAX_BYTES)];
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
    }
    let total = (b.len() + CRC_LEN) as u32;
    b[8..12].copy_from_slice(&total.to_le_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// A little-endian reader over a byte slice that never panics.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(RecordError::Invalid("entry runs past the end"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

/// Decode a record (see the module documentation for what is rejected).
pub fn decode_record(bytes: &[u8]) -> Result<PrState, RecordError> {
    if bytes.len() < HEADER_LEN + CRC_LEN {
        return Err(RecordError::TooShort(bytes.len()));
    }
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(RecordError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(RecordError::UnsupportedVersion(version));
    }
    let total = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if total as usize != bytes.len() {
        return Err(RecordError::LengthMismatch {
            field: total,
            actual: bytes.len(),
        });
    }
    let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }

    let mut r = Reader { b: body, at: 6 };
    let flags = r.u16()?;
    if flags & !FLAG_APTPL != 0 {
        return Err(RecordError::Invalid("unknown flags"));
    }
    let _total = r.u32()?;
    let generation = r.u32()?;
    let res_type = r.u8()?;
    let res_scope = r.u8()?;
    let holder_rel = r.u16()?;
    let holder_index = r.u32()?;
    let count = r.u32()? as usize;
    if count > REGISTRATIONS_MAX {
        return Err(RecordError::Invalid("too many registrations"));
    }
    let mut registrations = Vec::with_capacity(count);
    for _ in 0..count {
        let key = r.u64()?;
        let isid = r.u64()?;
        let rel = r.u16()?;
        let eflags = r.u8()?;
        let reserved = r.u8()?;
        if eflags & !(ENTRY_ALL_TG_PT | ENTRY_ISID) != 0 || reserved != 0 {
            return Err(RecordError::Invalid("unknown registration flags"));
        }
        let all_tg_pt = eflags & ENTRY_ALL_TG_PT != 0;
        if all_tg_pt && rel != 0 {
            return Err(RecordError::Invalid("relative port id with ALL_TG_PT"));
        }
        let has_isid = eflags & ENTRY_ISID != 0;
        if isid & !ISID_MASK != 0 || (!has_isid && isid != 0) {
            return Err(RecordError::Invalid("ISID out of range"));
        }
        let name_len = usize::from(r.u16()?);
        if name_len == 0 || name_len > INITIATOR_NAME_MAX_BYTES {
            return Err(RecordError::Invalid("initiator name length"));
        }
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| RecordError::Invalid("initiator name is not UTF-8"))?;
        registrations.push(Registration {
            port: RegisteredPort {
                initiator_name: name.to_owned(),
                isid: has_isid.then_some(isid),
                relative_port_id: (!all_tg_pt).then_some(rel),
            },
            key,
        });
    }
    if r.at != body.len() {
        return Err(RecordError::Invalid("trailing bytes"));
    }
    let reservation = if res_type == 0 {
        if res_scope != 0 || holder_rel != 0 || holder_index != NO_HOLDER {
            return Err(RecordError::Invalid(
                "reservation fields without a reservation",
            ));
        }
        None
    } else {
        let pr_type =
            PrType::from_code(res_type).ok_or(RecordError::Invalid("reservation type"))?;
        if res_scope != 0 {
            return Err(RecordError::Invalid("reservation scope"));
        }
        let holder = registrations
            .get(holder_index as usize)
            .ok_or(RecordError::Invalid("holder index"))?;
        if holder
            .port
            .relative_port_id
            .is_some_and(|p| p != holder_rel)
        {
            return Err(RecordError::Invalid("holder relative port id"));
        }
        Some(Reservation {
            pr_type,
            holder: holder.port.clone(),
            holder_relative_port_id: holder_rel,
        })
    };
    let s = PrState {
        generation,
        aptpl: flags & FLAG_APTPL != 0,
        registrations,
        reservation,
    };
    s.validate().map_err(RecordError::Invalid)?;
    Ok(s)
}
