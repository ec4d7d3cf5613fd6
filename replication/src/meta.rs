//! On-disk replication metadata: where it lives ([`Layout`]), the superblock
//! ([`Superblock`]: identity, flags, generation UUIDs), the activity log (a ring of
//! checksummed transactions naming the hot 4 MiB extents) and the persisted dirty
//! bitmap; [`MetaStore`] reads and writes them through a [`BlockDevice`].
//!
//! Owns: the byte formats (version 1, little-endian, CRC32C) and the create-md safety
//! checks. May not touch: replication policy — what the flags and generations mean is
//! decided by the state machine (`crate::replica`); this module stores what it is told
//! and reports what it finds. Sockets, threads and clocks are out of bounds too.
//!
//! ## Areas
//!
//! Internal metadata sits at the end of the data device, external metadata at the start
//! of its own device; every area is 4 KiB-aligned:
//!
//! ```text
//! internal: [ data ............ ][ bitmap ][ AL ring ][ superblock ]  <- device end
//! external: [ superblock ][ AL ring ][ bitmap ]                         <- offset 0
//! ```
//!
//! The bitmap holds one bit per 4 KiB block of data (32 KiB per GiB), stored as
//! little-endian 64-bit words, one 4 KiB page per [`Bitmap::WORDS_PER_PAGE`] words. It
//! carries no checksum: a page is rewritten whole and a torn page can only lose or add
//! dirty bits within one write (the activity log covers a crashed primary's writes).
//!
//! Every metadata write is a single 4 KiB-aligned write with FUA: durable when the call
//! returns. [`MetaStore::create`] writes the superblock last (after first zeroing an old
//! one), so an interrupted create-md leaves no valid superblock behind.
//!
//! [`BlockDevice`]: twinsan_blockdev::BlockDevice
//! [`Bitmap::WORDS_PER_PAGE`]: crate::bitmap::Bitmap::WORDS_PER_PAGE

#![warn(missing_docs)]

mod al;
mod layout;
mod probe;
mod store;
mod superblock;
#[cfg(test)]
mod tests;

pub use al::{AL_EXTENTS_CAPACITY, AL_MAGIC, AL_VERSION, DEFAULT_AL_EXTENTS_MAX};
pub use layout::{
    external_layout, internal_layout, Layout, DEFAULT_AL_SLOTS, MAX_AL_SLOTS, META_BLOCK_BYTES,
    MIN_AL_SLOTS,
};
pub use store::{CreateOptions, LoadedMeta, MetaStore};
pub use superblock::{sb_flag, Superblock, SB_HEADER_LEN, SB_MAGIC, SB_VERSION};

use twinsan_blockdev::BlockError;

/// Errors reading, validating or writing replication metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// No twinsan superblock where one was expected (magic absent).
    #[error(
        "no twinsan replication metadata found (superblock magic absent); run create-md first"
    )]
    NoMetadata,
    /// Metadata written by a format version this build does not read.
    #[error("replication metadata format version {0} is not supported (this build reads version {SB_VERSION})")]
    UnsupportedVersion(u32),
    /// A checksummed block failed its CRC32C check.
    #[error("{what}: checksum mismatch")]
    BadChecksum {
        /// Which block (e.g. "superblock at byte 1073737728").
        what: String,
    },
    /// A block with a valid checksum holds impossible values.
    #[error("corrupt replication metadata: {0}")]
    Corrupt(String),
    /// create-md found existing twinsan metadata and `force` was not given.
    #[error(
        "twinsan metadata already exists at byte {offset_bytes} of the device ({found}); \
         refusing to overwrite it without --force"
    )]
    Exists {
        /// Where the superblock was found.
        offset_bytes: u64,
        /// What was found: volume UUID and node id, or why it is unreadable.
        found: String,
    },
    /// create-md would overwrite what looks like user data and `force` was not given.
    #[error("refusing to write metadata: {detail}")]
    WouldOverwriteData {
        /// First non-zero byte found in the metadata area (0 if the area is clear and the
        /// refusal is for a file system signature).
        offset_bytes: u64,
        /// Number of non-zero bytes in the metadata area.
        nonzero_bytes: u64,
        /// The full explanation with advice (external metadata, shrinking, --force).
        detail: String,
    },
    /// The device cannot hold the metadata (or the data) asked for.
    #[error("device too small: need {need_bytes} bytes, have {have_bytes}")]
    DeviceTooSmall {
        /// Bytes required.
        need_bytes: u64,
        /// Bytes available.
        have_bytes: u64,
    },
    /// More hot extents than one activity-log transaction may hold.
    #[error("activity log transaction with {count} extents exceeds al_extents_max {max}")]
    TooManyExtents {
        /// Extents given.
        count: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A parameter is out of range (create options, a superblock for another layout...).
    #[error("invalid metadata parameter: {0}")]
    InvalidArgument(String),
    /// The device failed.
    #[error("metadata I/O: {0}")]
    Io(#[from] BlockError),
}

/// CRC32C of a 4 KiB block whose 4-byte checksum field at `crc_at` counts as zero.
fn block_crc(block: &[u8], crc_at: usize) -> u32 {
    let crc = crc32c::crc32c(&block[..crc_at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &block[crc_at + 4..])
}

/// A volume UUID in the usual 8-4-4-4-12 hex form (for messages).
fn fmt_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
