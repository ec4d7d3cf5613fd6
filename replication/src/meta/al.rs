//! The activity log: a ring of 4 KiB transaction blocks, each holding the complete set
//! of hot (possibly being written) 4 MiB extents at the time it was written.
//!
//! Writing the whole set each time makes recovery trivial: the valid transaction with
//! the highest number is the hot set. A torn or garbage slot fails its checksum and is
//! ignored, so the previous transaction (one slot back) wins.
//!
//! ## Transaction block layout (all integers little-endian)
//!
//! ```text
//! offset size field
//!   0     4  magic "TWAL"
//!   4     2  version = 1
//!   6     2  reserved (0)
//!   8     4  CRC32C of the whole 4096-byte block with this field taken as zero
//!  12     4  extent count N (≤ 1012)
//!  16     8  transaction number (monotonic, first = 1)
//!  24    16  volume UUID (a block of another volume is ignored)
//!  40     4  slot index the block was written to (a misdirected block is ignored)
//!  44     4  reserved (0)
//!  48  4048  1012 extent numbers (u32); the first N are the hot set, the rest zero
//! ```

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::block_crc;
use super::layout::META_BLOCK_BYTES;

/// Magic at byte 0 of an activity-log transaction.
pub const AL_MAGIC: [u8; 4] = *b"TWAL";
/// Version of the transaction format.
pub const AL_VERSION: u16 = 1;
/// Most extents one transaction block can hold.
pub const AL_EXTENTS_CAPACITY: u32 = 1012;
/// Default hot-set limit: 1000 extents of 4 MiB (about 4 GiB of recently written data,
/// DRBD's default is 1237; fewer activity-log transactions on scattered writes, and
/// after a primary crash at most that much is resynchronized on top of the bitmap).
pub const DEFAULT_AL_EXTENTS_MAX: u32 = 1000;

const BLOCK: usize = META_BLOCK_BYTES as usize;
const CRC_AT: usize = 8;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct AlDisk {
    magic: [u8; 4],
    version: U16,
    reserved0: U16,
    crc32c: U32,
    count: U32,
    tr_number: U64,
    volume_uuid: [u8; 16],
    slot: U32,
    reserved1: U32,
    extents: [U32; AL_EXTENTS_CAPACITY as usize],
}

const _: () = assert!(size_of::<AlDisk>() == BLOCK);

/// One decoded transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlTransaction {
    /// Transaction number.
    pub tr_number: u64,
    /// The hot set.
    pub extents: Vec<u32>,
}

/// Encode one transaction for `slot`. `extents.len()` must be at most
/// [`AL_EXTENTS_CAPACITY`] (the caller checks; extra extents are dropped).
pub(crate) fn encode(
    tr_number: u64,
    slot: u32,
    volume_uuid: &[u8; 16],
    extents: &[u32],
) -> [u8; BLOCK] {
    debug_assert!(extents.len() <= AL_EXTENTS_CAPACITY as usize);
    let mut d = AlDisk::new_zeroed();
    d.magic = AL_MAGIC;
    d.version = AL_VERSION.into();
    d.tr_number = tr_number.into();
    d.volume_uuid = *volume_uuid;
    d.slot = slot.into();
    let n = extents.len().min(AL_EXTENTS_CAPACITY as usize);
    for (dst, e) in d.extents.iter_mut().zip(&extents[..n]) {
        *dst = (*e).into();
    }
    d.count = (n as u32).into();
    let mut block = [0u8; BLOCK];
    block.copy_from_slice(d.as_bytes());
    let crc = block_crc(&block, CRC_AT);
    block[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    block
}

/// Decode the block read from `slot`; `None` unless it is an intact version-1
/// transaction of this volume written to this slot.
pub(crate) fn decode(block: &[u8], slot: u32, volume_uuid: &[u8; 16]) -> Option<AlTransaction> {
    let (d, _) = AlDisk::ref_from_prefix(block).ok()?;
    let count = d.count.get();
    let valid = d.magic == AL_MAGIC
        && d.version.get() == AL_VERSION
        && block_crc(&block[..BLOCK], CRC_AT) == d.crc32c.get()
        && d.volume_uuid == *volume_uuid
        && d.slot.get() == slot
        && count <= AL_EXTENTS_CAPACITY;
    valid.then(|| AlTransaction {
        tr_number: d.tr_number.get(),
        extents: d.extents[..count as usize]
            .iter()
            .map(|e| e.get())
            .collect(),
    })
}

/// What recovery found in the ring.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Recovered {
    /// The hot set of the newest valid transaction (empty if none).
    pub extents: Vec<u32>,
    /// Its transaction number and slot, if any transaction was valid.
    pub newest: Option<(u64, u32)>,
}

/// Scan the whole ring (`slots` blocks) and return the newest valid transaction.
pub(crate) fn recover(ring: &[u8], slots: u32, volume_uuid: &[u8; 16]) -> Recovered {
    let mut best = Recovered::default();
    for (slot, block) in (0..slots).zip(ring.chunks_exact(BLOCK)) {
        if let Some(t) = decode(block, slot, volume_uuid) {
            if best.newest.is_none_or(|(n, _)| t.tr_number > n) {
                best = Recovered {
                    extents: t.extents,
                    newest: Some((t.tr_number, slot)),
                };
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = [7; 16];

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Expected bytes computed outside this crate (struct packer and bitwise CRC32C).
    #[test]
    fn golden_bytes() {
        let b = encode(0x0102_0304_0506_0708, 3, &UUID, &[5, 0x0001_0000]);
        assert_eq!(
            hex(&b[..56]),
            concat!(
                "5457414c",
                "0100",
                "0000", // magic, version, reserved
                "ceb61757",
                "02000000",                         // CRC32C 0x5717b6ce, count 2
                "0807060504030201",                 // transaction number
                "07070707070707070707070707070707", // volume UUID
                "03000000",
                "00000000", // slot 3, reserved
                "05000000",
                "00000100", // extents 5, 65536
            )
        );
        assert!(b[56..].iter().all(|x| *x == 0));
        let t = decode(&b, 3, &UUID).unwrap();
        assert_eq!(t.tr_number, 0x0102_0304_0506_0708);
        assert_eq!(t.extents, vec![5, 0x10000]);
    }

    #[test]
    fn decode_rejects() {
        let b = encode(9, 1, &UUID, &[1, 2, 3]);
        assert!(decode(&b, 1, &UUID).is_some());
        assert!(decode(&b, 2, &UUID).is_none(), "misdirected");
        assert!(decode(&b, 1, &[8; 16]).is_none(), "other volume");
        let mut t = b;
        t[100] ^= 4;
        assert!(decode(&t, 1, &UUID).is_none(), "torn");
        assert!(decode(&[0; BLOCK], 0, &UUID).is_none());
        assert!(decode(&b[..100], 1, &UUID).is_none());
    }

    #[test]
    fn full_capacity_round_trips() {
        let ext: Vec<u32> = (0..AL_EXTENTS_CAPACITY).map(|i| i * 7 + 1).collect();
        let b = encode(1, 0, &UUID, &ext);
        assert_eq!(decode(&b, 0, &UUID).unwrap().extents, ext);
    }

    #[test]
    fn recovery_takes_the_newest_valid() {
        let slots = 4u32;
        let mut ring = vec![0u8; BLOCK * slots as usize];
        assert_eq!(recover(&ring, slots, &UUID), Recovered::default());
        // Ten transactions wrap the ring: slots hold 9, 10, 7, 8.
        for tr in 1..=10u64 {
            let slot = ((tr - 1) % u64::from(slots)) as u32;
            let b = encode(tr, slot, &UUID, &[tr as u32]);
            ring[slot as usize * BLOCK..][..BLOCK].copy_from_slice(&b);
        }
        let r = recover(&ring, slots, &UUID);
        assert_eq!(r.extents, vec![10]);
        assert_eq!(r.newest, Some((10, 1)));
        // Tear the newest: the previous one (slot 0) wins.
        ring[BLOCK + 2000] ^= 0xff;
        let r = recover(&ring, slots, &UUID);
        assert_eq!((r.extents, r.newest), (vec![9], Some((9, 0))));
        // All garbage: empty set.
        for (i, x) in ring.iter_mut().enumerate() {
            *x = (i * 31 % 251) as u8;
        }
        assert_eq!(recover(&ring, slots, &UUID), Recovered::default());
    }
}
