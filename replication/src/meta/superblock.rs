//! The 4 KiB superblock: [`Superblock`] ↔ bytes, format version 1.
//!
//! ## Layout (all integers little-endian)
//!
//! ```text
//! offset size field
//!   0     8  magic "TWSNREPL"
//!   8     4  format version = 1
//!  12     4  header length = 176 (bytes of defined fields; the rest of the block is 0)
//!  16     4  flags (sb_flag)
//!  20     4  CRC32C of the whole 4096-byte block with this field taken as zero
//!  24    16  volume UUID
//!  40     1  node id
//!  41     1  peer node id
//!  42     1  layout flags: bit 0 internal metadata; others zero
//!  43     1  reserved (0)
//!  44     4  bytes per bitmap bit = 4096
//!  48     8  data size in bytes
//!  56     4  activity-log extent size in bytes = 4 MiB
//!  60     4  activity-log slots
//!  64     4  activity-log extents max (hot extents one transaction may hold)
//!  68     4  reserved (0)
//!  72     8  current generation UUID
//!  80     8  bitmap generation UUID
//!  88    32  history generation UUIDs [4], newest first
//! 120     8  primary since (Unix ms)
//! 128     8  metadata area offset
//! 136     8  metadata area size
//! 144     8  superblock offset
//! 152     8  activity-log offset
//! 160     8  bitmap offset
//! 168     8  bitmap area size
//! 176  3920  zero
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::al::AL_EXTENTS_CAPACITY;
use super::layout::{Layout, META_BLOCK_BYTES};
use super::{block_crc, MetaError};
use crate::types::{Generations, AL_EXTENT_BYTES, BYTES_PER_BIT, HISTORY_LEN};

/// Magic at byte 0 of the superblock.
pub const SB_MAGIC: [u8; 8] = *b"TWSNREPL";
/// The format version this build writes and reads.
pub const SB_VERSION: u32 = 1;
/// Bytes of defined superblock fields; the rest of the 4 KiB block is zero.
pub const SB_HEADER_LEN: usize = 176;

const SB_BYTES: usize = META_BLOCK_BYTES as usize;
const CRC_AT: usize = 20;
const LAYOUT_INTERNAL: u8 = 1;

/// Superblock flags ([`Superblock::flags`]). The state machine sets and clears them;
/// this module only stores them and rejects unknown bits.
pub mod sb_flag {
    /// The local data is consistent (a complete image of some generation). Absent
    /// after create-md and while this node is a resync target: the disk is
    /// Inconsistent.
    pub const CONSISTENT: u32 = 1 << 0;
    /// The local data is consistent but known to be older than the peer's (the peer
    /// fenced us, or we were disconnected as a secondary while the peer wrote on).
    pub const OUTDATED: u32 = 1 << 1;
    /// This node was primary when the superblock was last written: set on promotion,
    /// cleared on a clean demotion. Found set on attach, it means the primary crashed.
    pub const WAS_PRIMARY: u32 = 1 << 2;
    /// This node crashed while primary: the blocks of its activity-log extents may
    /// differ from the peer's. Set on attach when [`WAS_PRIMARY`] is found, cleared when
    /// a resync with the peer has covered those extents.
    pub const CRASHED_PRIMARY: u32 = 1 << 3;
    /// The device was detached cleanly: the on-disk bitmap is complete and the
    /// activity log need not be applied to it on the next attach. Cleared on attach.
    pub const CLEAN: u32 = 1 << 4;
    /// The operator chose this node as the split-brain victim (`discard-my-data`): on
    /// the next connect its changes are discarded and it becomes sync target.
    pub const DISCARD_MY_DATA: u32 = 1 << 5;
    /// We outdated the peer (resource-only fencing): the peer's data is known to be
    /// older than ours, and it may not be promoted from it.
    pub const PEER_OUTDATED: u32 = 1 << 6;
    /// The on-disk bitmap is not trustworthy (e.g. an interrupted invalidate or a
    /// failed bitmap write): set every bit on the next attach.
    pub const FULL_SYNC: u32 = 1 << 7;
    /// Every defined flag; other bits are rejected as corrupt.
    pub const ALL: u32 = CONSISTENT
        | OUTDATED
        | WAS_PRIMARY
        | CRASHED_PRIMARY
        | CLEAN
        | DISCARD_MY_DATA
        | PEER_OUTDATED
        | FULL_SYNC;

    /// The names of the flags set in `flags`, `|`-separated ("none" when empty).
    pub fn names(flags: u32) -> String {
        const NAMES: [(u32, &str); 8] = [
            (CONSISTENT, "consistent"),
            (OUTDATED, "outdated"),
            (WAS_PRIMARY, "was-primary"),
            (CRASHED_PRIMARY, "crashed-primary"),
            (CLEAN, "clean"),
            (DISCARD_MY_DATA, "discard-my-data"),
            (PEER_OUTDATED, "peer-outdated"),
            (FULL_SYNC, "full-sync"),
        ];
        let mut v: Vec<String> = NAMES
            .iter()
            .filter(|(f, _)| flags & f != 0)
            .map(|(_, n)| (*n).to_string())
            .collect();
        if flags & !ALL != 0 {
            v.push(format!("{:#x}", flags & !ALL));
        }
        if v.is_empty() {
            "none".into()
        } else {
            v.join("|")
        }
    }
}

/// The superblock's defined fields as they lie on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct SbDisk {
    magic: [u8; 8],
    version: U32,
    header_len: U32,
    flags: U32,
    crc32c: U32,
    volume_uuid: [u8; 16],
    node_id: u8,
    peer_node_id: u8,
    layout_flags: u8,
    reserved0: u8,
    bytes_per_bit: U32,
    data_size_bytes: U64,
    al_extent_bytes: U32,
    al_slots: U32,
    al_extents_max: U32,
    reserved1: U32,
    gen_current: U64,
    gen_bitmap: U64,
    gen_history: [U64; 4],
    primary_since_ms: U64,
    meta_offset_bytes: U64,
    meta_size_bytes: U64,
    superblock_offset_bytes: U64,
    al_offset_bytes: U64,
    bitmap_offset_bytes: U64,
    bitmap_bytes: U64,
}

const _: () = assert!(size_of::<SbDisk>() == SB_HEADER_LEN);
// The history array is part of the version-1 format.
const _: () = assert!(HISTORY_LEN == 4);

/// The replication superblock of one node's copy of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// [`sb_flag`] bits.
    pub flags: u32,
    /// Identifies the replicated volume; both nodes carry the same one.
    pub volume_uuid: [u8; 16],
    /// This node's id.
    pub node_id: u8,
    /// The peer's node id (differs from `node_id`).
    pub peer_node_id: u8,
    /// Generation UUIDs.
    pub gens: Generations,
    /// When this node last became primary (Unix milliseconds; 0 = never), for the
    /// `discard-younger-primary`/`discard-older-primary` split-brain policies.
    pub primary_since_ms: u64,
    /// Most extents one activity-log transaction may hold (the hot-set size limit), at
    /// most [`AL_EXTENTS_CAPACITY`].
    pub al_extents_max: u32,
    /// Where the metadata lies and how much data it covers.
    pub layout: Layout,
}

impl Superblock {
    /// Whether `flag` (one or more [`sb_flag`] bits) is entirely set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag == flag
    }

    /// Set or clear `flag`.
    pub fn set_flag(&mut self, flag: u32, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    /// Check the values a version-1 superblock may hold (independent of any device):
    /// known flags, distinct node ids, a non-zero volume UUID, an activity-log limit in
    /// `1..=AL_EXTENTS_CAPACITY` and a well-formed layout.
    pub fn validate(&self) -> Result<(), MetaError> {
        let bad = |why: String| Err(MetaError::Corrupt(format!("superblock: {why}")));
        if self.flags & !sb_flag::ALL != 0 {
            return bad(format!("unknown flags {:#x}", self.flags & !sb_flag::ALL));
        }
        if self.node_id == self.peer_node_id {
            return bad(format!(
                "node id and peer node id are both {}",
                self.node_id
            ));
        }
        if self.volume_uuid == [0; 16] {
            return bad("volume UUID is zero".into());
        }
        if !(1..=AL_EXTENTS_CAPACITY).contains(&self.al_extents_max) {
            return bad(format!(
                "al_extents_max {} is outside 1..={AL_EXTENTS_CAPACITY}",
                self.al_extents_max
            ));
        }
        self.layout.validate(u64::MAX)
    }

    /// The 4096-byte on-disk block.
    pub fn encode(&self) -> [u8; SB_BYTES] {
        let l = &self.layout;
        let d = SbDisk {
            magic: SB_MAGIC,
            version: SB_VERSION.into(),
            header_len: (SB_HEADER_LEN as u32).into(),
            flags: self.flags.into(),
            crc32c: 0.into(),
            volume_uuid: self.volume_uuid,
            node_id: self.node_id,
            peer_node_id: self.peer_node_id,
            layout_flags: if l.internal { LAYOUT_INTERNAL } else { 0 },
            reserved0: 0,
            bytes_per_bit: (BYTES_PER_BIT as u32).into(),
            data_size_bytes: l.data_size_bytes.into(),
            al_extent_bytes: (AL_EXTENT_BYTES as u32).into(),
            al_slots: l.al_slots.into(),
            al_extents_max: self.al_extents_max.into(),
            reserved1: 0.into(),
            gen_current: self.gens.current.into(),
            gen_bitmap: self.gens.bitmap.into(),
            gen_history: self.gens.history.map(U64::new),
            primary_since_ms: self.primary_since_ms.into(),
            meta_offset_bytes: l.meta_offset_bytes.into(),
            meta_size_bytes: l.meta_size_bytes.into(),
            superblock_offset_bytes: l.superblock_offset_bytes.into(),
            al_offset_bytes: l.al_offset_bytes.into(),
            bitmap_offset_bytes: l.bitmap_offset_bytes.into(),
            bitmap_bytes: l.bitmap_bytes.into(),
        };
        let mut block = [0u8; SB_BYTES];
        block[..SB_HEADER_LEN].copy_from_slice(d.as_bytes());
        let crc = block_crc(&block, CRC_AT);
        block[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
        block
    }

    /// Parse and check a superblock (the first 4096 bytes of `block`).
    ///
    /// Errors: [`MetaError::NoMetadata`] without the magic,
    /// [`MetaError::UnsupportedVersion`], [`MetaError::BadChecksum`], and
    /// [`MetaError::Corrupt`] for a checksummed block with impossible values.
    pub fn decode(block: &[u8]) -> Result<Superblock, MetaError> {
        let bad = |why: String| Err(MetaError::Corrupt(format!("superblock: {why}")));
        let Some(block) = block.get(..SB_BYTES) else {
            return bad(format!("{} bytes, expected {SB_BYTES}", block.len()));
        };
        let Ok((d, rest)) = SbDisk::ref_from_prefix(block) else {
            return bad("cannot view header".into());
        };
        if d.magic != SB_MAGIC {
            return Err(MetaError::NoMetadata);
        }
        if d.version.get() != SB_VERSION {
            return Err(MetaError::UnsupportedVersion(d.version.get()));
        }
        let crc = block_crc(block, CRC_AT);
        if crc != d.crc32c.get() {
            return Err(MetaError::BadChecksum {
                what: format!(
                    "superblock (stored CRC32C {:#010x}, computed {crc:#010x})",
                    d.crc32c.get()
                ),
            });
        }
        if d.header_len.get() != SB_HEADER_LEN as u32 {
            return bad(format!(
                "header length {} (version 1 has {SB_HEADER_LEN})",
                d.header_len.get()
            ));
        }
        if rest.iter().any(|b| *b != 0) || d.reserved0 != 0 || d.reserved1.get() != 0 {
            return bad("reserved bytes are not zero".into());
        }
        if u64::from(d.bytes_per_bit.get()) != BYTES_PER_BIT {
            return bad(format!(
                "{} bytes per bitmap bit (this build uses {BYTES_PER_BIT})",
                d.bytes_per_bit.get()
            ));
        }
        if u64::from(d.al_extent_bytes.get()) != AL_EXTENT_BYTES {
            return bad(format!(
                "activity-log extent of {} bytes (this build uses {AL_EXTENT_BYTES})",
                d.al_extent_bytes.get()
            ));
        }
        if d.layout_flags & !LAYOUT_INTERNAL != 0 {
            return bad(format!("unknown layout flags {:#x}", d.layout_flags));
        }
        let sb = Superblock {
            flags: d.flags.get(),
            volume_uuid: d.volume_uuid,
            node_id: d.node_id,
            peer_node_id: d.peer_node_id,
            gens: Generations {
                current: d.gen_current.get(),
                bitmap: d.gen_bitmap.get(),
                history: d.gen_history.map(|h| h.get()),
            },
            primary_since_ms: d.primary_since_ms.get(),
            al_extents_max: d.al_extents_max.get(),
            layout: Layout {
                data_size_bytes: d.data_size_bytes.get(),
                meta_offset_bytes: d.meta_offset_bytes.get(),
                superblock_offset_bytes: d.superblock_offset_bytes.get(),
                al_offset_bytes: d.al_offset_bytes.get(),
                al_slots: d.al_slots.get(),
                bitmap_offset_bytes: d.bitmap_offset_bytes.get(),
                bitmap_bytes: d.bitmap_bytes.get(),
                meta_size_bytes: d.meta_size_bytes.get(),
                internal: d.layout_flags & LAYOUT_INTERNAL != 0,
            },
        };
        sb.validate()?;
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::internal_layout;

    fn sample() -> Superblock {
        Superblock {
            flags: sb_flag::CONSISTENT | sb_flag::WAS_PRIMARY,
            volume_uuid: *b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff",
            node_id: 0,
            peer_node_id: 1,
            gens: Generations {
                current: 0x0123_4567_89ab_cdef,
                bitmap: 0x1111_2222_3333_4444,
                history: [0xa1, 0xa2, 0, 0],
            },
            primary_since_ms: 1_700_000_000_000,
            al_extents_max: 257,
            layout: internal_layout(1 << 30, 8).unwrap(),
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Expected bytes computed independently (a bitwise CRC32C and a struct packer
    /// outside this crate), not by running this encoder.
    #[test]
    fn golden_bytes() {
        let b = sample().encode();
        let rows: Vec<String> = b[..SB_HEADER_LEN].chunks(16).map(hex).collect();
        let expected = [
            // magic "TWSNREPL", version 1, header length 176
            "5457534e5245504c01000000b0000000",
            // flags CONSISTENT|WAS_PRIMARY, CRC32C 0xf647b26a, volume UUID 00..77
            "050000006ab247f60011223344556677",
            // UUID 88..ff, node 0, peer 1, internal, reserved, 4096 bytes per bit
            "8899aabbccddeeff0001010000100000",
            // data size 0x3ffef000, AL extent 4 MiB, 8 AL slots
            "00f0fe3f000000000000400008000000",
            // al_extents_max 257, reserved, current generation
            "0101000000000000efcdab8967452301",
            // bitmap generation, history[0]
            "4444333322221111a100000000000000",
            // history[1], history[2]
            "a2000000000000000000000000000000",
            // history[3], primary since 1_700_000_000_000 ms
            "00000000000000000068e5cf8b010000",
            // meta offset, meta size 0x11000
            "00f0fe3f000000000010010000000000",
            // superblock offset 0x3ffff000, AL offset 0x3fff7000
            "00f0ff3f000000000070ff3f00000000",
            // bitmap offset, bitmap size 32 KiB
            "00f0fe3f000000000080000000000000",
        ];
        assert_eq!(rows, expected);
        assert_eq!(&b[20..24], &[0x6a, 0xb2, 0x47, 0xf6]);
        assert!(b[SB_HEADER_LEN..].iter().all(|x| *x == 0));
        assert_eq!(Superblock::decode(&b).unwrap(), sample());
    }

    #[test]
    fn crc32c_is_castagnoli() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn decode_errors() {
        let good = sample().encode();
        assert!(matches!(
            Superblock::decode(&[0u8; 4096]),
            Err(MetaError::NoMetadata)
        ));
        assert!(matches!(
            Superblock::decode(&good[..4095]),
            Err(MetaError::Corrupt(_))
        ));
        let mut b = good;
        b[8] = 2;
        assert!(matches!(
            Superblock::decode(&b),
            Err(MetaError::UnsupportedVersion(2))
        ));
        for at in [16, 24, 100, 4000, 4095] {
            let mut b = good;
            b[at] ^= 0x01;
            assert!(
                matches!(Superblock::decode(&b), Err(MetaError::BadChecksum { .. })),
                "flip at {at}"
            );
        }
        // Impossible values behind a valid checksum are Corrupt.
        let reseal = |mut b: [u8; 4096]| {
            let crc = block_crc(&b, CRC_AT);
            b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let cases: [(usize, &[u8]); 6] = [
            (44, &512u32.to_le_bytes()),       // bytes per bit
            (56, &(1u32 << 20).to_le_bytes()), // AL extent size
            (16, &(1u32 << 31).to_le_bytes()), // unknown flag
            (41, &[0]),                        // peer id == node id
            (64, &0u32.to_le_bytes()),         // al_extents_max 0
            (3000, &[1]),                      // non-zero padding
        ];
        for (at, bytes) in cases {
            let mut b = good;
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let e = Superblock::decode(&reseal(b)).unwrap_err();
            assert!(matches!(e, MetaError::Corrupt(_)), "at {at}: {e}");
        }
        let mut b = good;
        b[169] = 0; // bitmap area 0 bytes: cannot cover the data
        let e = Superblock::decode(&reseal(b)).unwrap_err();
        assert!(e.to_string().contains("bitmap"), "{e}");
    }

    #[test]
    fn flags() {
        let mut sb = sample();
        assert!(sb.has(sb_flag::CONSISTENT | sb_flag::WAS_PRIMARY));
        sb.set_flag(sb_flag::WAS_PRIMARY, false);
        sb.set_flag(sb_flag::PEER_OUTDATED, true);
        assert_eq!(sb_flag::names(sb.flags), "consistent|peer-outdated");
        assert_eq!(sb_flag::names(0), "none");
        assert_eq!(sb_flag::names(1 << 20), "0x100000");
    }
}
