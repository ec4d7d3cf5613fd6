//! [`MetaStore`]: create-md, attach (open) and the metadata writes of a running volume.

use std::fmt;
use std::sync::Arc;

use twinsan_blockdev::{BlockDevice, IoBuf};

use super::al::{self, AL_EXTENTS_CAPACITY, DEFAULT_AL_EXTENTS_MAX};
use super::layout::{external_layout, internal_layout, Layout, DEFAULT_AL_SLOTS, META_BLOCK_BYTES};
use super::probe::{self, Signature};
use super::superblock::Superblock;
use super::{fmt_uuid, MetaError};
use crate::bitmap::Bitmap;
use crate::types::{Generations, AL_EXTENT_BYTES, UUID_JUST_CREATED};

const BLOCK: usize = META_BLOCK_BYTES as usize;
/// Largest single metadata read or write (bitmap and zeroing are done in such chunks).
const CHUNK_BYTES: usize = 1 << 20;

/// Options for [`MetaStore::create`] (create-md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// The replicated volume's UUID (the same on both nodes; not all zero).
    pub volume_uuid: [u8; 16],
    /// This node's id.
    pub node_id: u8,
    /// The peer's id (must differ from `node_id`).
    pub peer_node_id: u8,
    /// Activity-log ring slots ([`DEFAULT_AL_SLOTS`]).
    pub al_slots: u32,
    /// Hot-set limit per activity-log transaction ([`DEFAULT_AL_EXTENTS_MAX`]; at most
    /// [`AL_EXTENTS_CAPACITY`]).
    pub al_extents_max: u32,
    /// Overwrite existing metadata or data without asking.
    pub force: bool,
    /// Metadata at the end of the data device (`true`) or on its own device.
    pub internal: bool,
    /// External metadata only: the size of the data device in bytes.
    pub data_size_bytes: Option<u64>,
}

impl CreateOptions {
    /// Options with the default activity-log geometry, without `force`; external
    /// metadata still needs `data_size_bytes`.
    pub fn new(volume_uuid: [u8; 16], node_id: u8, peer_node_id: u8, internal: bool) -> Self {
        CreateOptions {
            volume_uuid,
            node_id,
            peer_node_id,
            al_slots: DEFAULT_AL_SLOTS,
            al_extents_max: DEFAULT_AL_EXTENTS_MAX,
            force: false,
            internal,
            data_size_bytes: None,
        }
    }
}

/// What [`MetaStore::open`] read from the device.
#[derive(Debug, Clone)]
pub struct LoadedMeta {
    /// The superblock as found (the caller decides what its flags imply).
    pub superblock: Superblock,
    /// The persisted dirty bitmap (every page clean). The activity log is *not* applied
    /// to it; see [`LoadedMeta::apply_al_to_bitmap`].
    pub bitmap: Bitmap,
    /// The hot extents of the newest valid activity-log transaction (empty if none).
    pub al_extents: Vec<u32>,
    /// The layout recorded in the superblock, checked against the device.
    pub layout: Layout,
}

impl LoadedMeta {
    /// Set the bitmap bits of every block of the activity-log extents (what a crashed
    /// primary, or an attach after an unclean detach, must resync); returns the number
    /// of bits newly set. Touched pages become dirty.
    pub fn apply_al_to_bitmap(&mut self) -> u64 {
        let mut newly = 0;
        for &e in &self.al_extents {
            let offset_bytes = u64::from(e).saturating_mul(AL_EXTENT_BYTES);
            newly += self.bitmap.set_range_bytes(offset_bytes, AL_EXTENT_BYTES);
        }
        newly
    }
}

/// Reads and writes one volume's metadata on its metadata device. Every write is one
/// FUA write (durable on return).
pub struct MetaStore {
    dev: Arc<dyn BlockDevice>,
    layout: Layout,
    volume_uuid: [u8; 16],
    al_extents_max: u32,
    /// Number of the next activity-log transaction.
    next_tr: u64,
    /// Slot it goes to.
    next_slot: u32,
    /// Aligned scratch buffer (O_DIRECT friendly).
    buf: IoBuf,
}

impl fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetaStore")
            .field("dev", &self.dev)
            .field("layout", &self.layout)
            .field("next_tr", &self.next_tr)
            .field("next_slot", &self.next_slot)
            .finish()
    }
}

/// Metadata is read and written in 4 KiB blocks; the device must accept that.
fn check_device(dev: &dyn BlockDevice) -> Result<(), MetaError> {
    let bs = dev.logical_block_size();
    if bs == 0 || bs as usize > BLOCK || !BLOCK.is_multiple_of(bs as usize) {
        return Err(MetaError::InvalidArgument(format!(
            "metadata needs 4 KiB-aligned I/O; the device's logical block size is {bs}"
        )));
    }
    Ok(())
}

fn read_exact(
    dev: &dyn BlockDevice,
    buf: &mut IoBuf,
    offset_bytes: u64,
    len: usize,
) -> Result<(), MetaError> {
    buf.resize_for_overwrite(len);
    dev.read_at(buf.as_mut_slice(), offset_bytes)?;
    Ok(())
}

/// Write zeros over `[offset_bytes, offset_bytes + len_bytes)` (4 KiB multiples).
fn write_zeros(dev: &dyn BlockDevice, offset_bytes: u64, len_bytes: u64) -> Result<(), MetaError> {
    let mut zeros = IoBuf::new();
    zeros.resize(CHUNK_BYTES.min(usize::try_from(len_bytes).unwrap_or(CHUNK_BYTES)));
    let mut done = 0;
    while done < len_bytes {
        let n = (len_bytes - done).min(zeros.len() as u64) as usize;
        dev.write_at(&zeros.as_slice()[..n], offset_bytes + done, true)?;
        done += n as u64;
    }
    Ok(())
}

/// Non-zero bytes in a range: (count, offset of the first).
fn scan_nonzero(
    dev: &dyn BlockDevice,
    offset_bytes: u64,
    len_bytes: u64,
) -> Result<(u64, Option<u64>), MetaError> {
    let mut buf = IoBuf::new();
    let (mut count, mut first) = (0u64, None);
    let mut done = 0;
    while done < len_bytes {
        let n = (len_bytes - done).min(CHUNK_BYTES as u64) as usize;
        read_exact(dev, &mut buf, offset_bytes + done, n)?;
        for (i, b) in buf.as_slice().iter().enumerate() {
            if *b != 0 {
                count += 1;
                first.get_or_insert(offset_bytes + done + i as u64);
            }
        }
        done += n as u64;
    }
    Ok((count, first))
}

fn validate_options(opts: &CreateOptions) -> Result<(), MetaError> {
    let bad = |why: String| Err(MetaError::InvalidArgument(why));
    if opts.volume_uuid == [0; 16] {
        return bad("the volume UUID is all zero".into());
    }
    if opts.node_id == opts.peer_node_id {
        return bad(format!(
            "node id and peer node id are both {}",
            opts.node_id
        ));
    }
    if !(1..=AL_EXTENTS_CAPACITY).contains(&opts.al_extents_max) {
        return bad(format!(
            "al_extents_max {} is outside 1..={AL_EXTENTS_CAPACITY}",
            opts.al_extents_max
        ));
    }
    Ok(())
}

/// Refuse (without `force`) to overwrite existing metadata or what looks like data.
fn refuse_if_in_use(dev: &dyn BlockDevice, layout: &Layout) -> Result<(), MetaError> {
    let mut buf = IoBuf::new();
    let sb_at = layout.superblock_offset_bytes;
    read_exact(dev, &mut buf, sb_at, BLOCK)?;
    let found = match Superblock::decode(buf.as_slice()) {
        Err(MetaError::NoMetadata) => None,
        Ok(sb) => Some(format!(
            "volume {}, node id {}, peer node id {}, {} data bytes",
            fmt_uuid(&sb.volume_uuid),
            sb.node_id,
            sb.peer_node_id,
            sb.layout.data_size_bytes
        )),
        Err(e) => Some(format!("a damaged superblock: {e}")),
    };
    if let Some(found) = found {
        return Err(MetaError::Exists {
            offset_bytes: sb_at,
            found,
        });
    }

    let head_len = probe::HEAD_BYTES.min(dev.size_bytes() as usize);
    read_exact(dev, &mut buf, 0, head_len)?;
    let sig = probe::detect(buf.as_slice());
    let (nonzero_bytes, first) =
        scan_nonzero(dev, layout.meta_offset_bytes, layout.meta_size_bytes)?;
    let area = format!(
        "bytes {}..{}",
        layout.meta_offset_bytes,
        layout.meta_offset_bytes + layout.meta_size_bytes
    );
    let sig_text = |s: &Signature| match s.size_bytes {
        Some(n) => format!("{} of {n} bytes", s.name),
        None => format!("{} of unknown size", s.name),
    };

    if layout.internal {
        let usable = layout.data_size_bytes;
        let too_big = sig.filter(|s| s.size_bytes.is_none_or(|n| n > usable));
        if let Some(first) = first {
            let sig_note = match &sig {
                Some(s) => format!("; the device starts with {}", sig_text(s)),
                None => String::new(),
            };
            return Err(MetaError::WouldOverwriteData {
                offset_bytes: first,
                nonzero_bytes,
                detail: format!(
                    "the internal metadata area at the end of the device ({area}) holds \
                     {nonzero_bytes} non-zero bytes, the first at byte {first}{sig_note}; this \
                     is probably user data. Use external metadata, shrink the data to at most \
                     {usable} bytes (what internal metadata leaves usable), or pass --force \
                     to overwrite it"
                ),
            });
        }
        if let Some(s) = too_big {
            return Err(MetaError::WouldOverwriteData {
                offset_bytes: 0,
                nonzero_bytes,
                detail: format!(
                    "the device holds {} but internal metadata leaves only {usable} bytes \
                     usable: the metadata would take the end of it, and it would later \
                     overwrite the metadata. Shrink it to at most {usable} bytes first, use \
                     external metadata, or pass --force",
                    sig_text(&s)
                ),
            });
        }
    } else if first.is_some() || sig.is_some() {
        let what = match (&sig, first) {
            (Some(s), _) => sig_text(s),
            (None, Some(first)) => {
                format!("{nonzero_bytes} non-zero bytes in {area}, the first at byte {first}")
            }
            (None, None) => String::new(),
        };
        return Err(MetaError::WouldOverwriteData {
            offset_bytes: first.unwrap_or(0),
            nonzero_bytes,
            detail: format!(
                "the metadata device holds {what}; use a blank device for external metadata \
                 or pass --force to overwrite it"
            ),
        });
    }
    Ok(())
}

impl MetaStore {
    /// create-md: write a fresh superblock (current generation
    /// [`UUID_JUST_CREATED`], bitmap and history generations 0, no flags: the disk is
    /// Inconsistent), an empty activity log and a clear bitmap. Returns the layout.
    ///
    /// Without `force` it refuses ([`MetaError::Exists`]) when a twinsan superblock,
    /// intact or damaged, is already where this one would go, and
    /// ([`MetaError::WouldOverwriteData`]) when the metadata area holds non-zero bytes
    /// or a file system / swap / LVM signature at the start of the device claims space
    /// the metadata would take. Any old superblock is zeroed first and the new one is
    /// written last, so an interrupted create leaves no valid metadata.
    pub fn create(dev: Arc<dyn BlockDevice>, opts: &CreateOptions) -> Result<Layout, MetaError> {
        check_device(&*dev)?;
        validate_options(opts)?;
        let size = dev.size_bytes();
        let layout = if opts.internal {
            if opts.data_size_bytes.is_some() {
                return Err(MetaError::InvalidArgument(
                    "data_size_bytes is for external metadata; internal metadata uses the \
                     device's own size"
                        .into(),
                ));
            }
            internal_layout(size, opts.al_slots)?
        } else {
            let Some(data_size) = opts.data_size_bytes else {
                return Err(MetaError::InvalidArgument(
                    "external metadata needs the size of the data device".into(),
                ));
            };
            external_layout(size, data_size, opts.al_slots)?
        };
        let sb = Superblock {
            flags: 0,
            volume_uuid: opts.volume_uuid,
            node_id: opts.node_id,
            peer_node_id: opts.peer_node_id,
            gens: Generations {
                current: UUID_JUST_CREATED,
                bitmap: 0,
                history: Default::default(),
            },
            primary_since_ms: 0,
            al_extents_max: opts.al_extents_max,
            layout,
        };
        sb.validate()?;
        if !opts.force {
            refuse_if_in_use(&*dev, &layout)?;
        }
        write_zeros(&*dev, layout.superblock_offset_bytes, META_BLOCK_BYTES)?;
        write_zeros(&*dev, layout.meta_offset_bytes, layout.meta_size_bytes)?;
        let mut buf = IoBuf::new();
        buf.extend_from_slice(&sb.encode());
        dev.write_at(buf.as_slice(), layout.superblock_offset_bytes, true)?;
        Ok(layout)
    }

    /// Attach: read the superblock (in the last 4 KiB block of the device for internal
    /// metadata, at offset 0 for external), check its layout against the device, recover
    /// the activity log and read the bitmap.
    ///
    /// For external metadata the caller must check that the data device holds at least
    /// `layout.data_size_bytes`.
    pub fn open(
        dev: Arc<dyn BlockDevice>,
        internal: bool,
    ) -> Result<(MetaStore, LoadedMeta), MetaError> {
        check_device(&*dev)?;
        let size = dev.size_bytes();
        let end = size - size % META_BLOCK_BYTES;
        if end < META_BLOCK_BYTES {
            return Err(MetaError::DeviceTooSmall {
                need_bytes: META_BLOCK_BYTES,
                have_bytes: size,
            });
        }
        let sb_at = if internal { end - META_BLOCK_BYTES } else { 0 };
        let mut buf = IoBuf::with_capacity(BLOCK);
        read_exact(&*dev, &mut buf, sb_at, BLOCK)?;
        let superblock = Superblock::decode(buf.as_slice()).map_err(|e| match e {
            MetaError::BadChecksum { what } => MetaError::BadChecksum {
                what: format!("{what} at byte {sb_at}"),
            },
            e => e,
        })?;
        let layout = superblock.layout;
        if layout.internal != internal {
            return Err(MetaError::InvalidArgument(format!(
                "the superblock describes {} metadata but it was opened as {}",
                if layout.internal {
                    "internal"
                } else {
                    "external"
                },
                if internal { "internal" } else { "external" },
            )));
        }
        if layout.superblock_offset_bytes != sb_at {
            return Err(MetaError::Corrupt(format!(
                "the superblock found at byte {sb_at} records offset {} (was the device \
                 resized?)",
                layout.superblock_offset_bytes
            )));
        }
        layout.validate(size)?;

        let ring_len = layout.al_slots as usize * BLOCK;
        read_exact(&*dev, &mut buf, layout.al_offset_bytes, ring_len)?;
        let recovered = al::recover(buf.as_slice(), layout.al_slots, &superblock.volume_uuid);
        let (next_tr, next_slot) = match recovered.newest {
            Some((tr, slot)) => (tr.wrapping_add(1).max(1), (slot + 1) % layout.al_slots),
            None => (1, 0),
        };

        let mut bitmap = Bitmap::for_size_bytes(layout.data_size_bytes);
        let bitmap_len = bitmap.words().len() * 8;
        let mut done = 0usize;
        while done < bitmap_len {
            let n = (bitmap_len - done).min(CHUNK_BYTES);
            let n_read = n.next_multiple_of(BLOCK);
            read_exact(
                &*dev,
                &mut buf,
                layout.bitmap_offset_bytes + done as u64,
                n_read,
            )?;
            let words: Vec<u64> = buf.as_slice()[..n]
                .chunks_exact(8)
                .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]))
                .collect();
            bitmap.merge_words((done / 8) as u64, &words);
            done += n;
        }
        bitmap.mark_all_clean();

        let store = MetaStore {
            dev,
            layout,
            volume_uuid: superblock.volume_uuid,
            al_extents_max: superblock.al_extents_max,
            next_tr,
            next_slot,
            buf,
        };
        let loaded = LoadedMeta {
            superblock,
            bitmap,
            al_extents: recovered.extents,
            layout,
        };
        Ok((store, loaded))
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The metadata device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// Write `sb` (FUA). Its layout and volume UUID must be the open ones; its
    /// `al_extents_max` becomes the limit for [`MetaStore::write_al`].
    pub fn write_superblock(&mut self, sb: &Superblock) -> Result<(), MetaError> {
        sb.validate().map_err(|e| match e {
            MetaError::Corrupt(why) => MetaError::InvalidArgument(why),
            e => e,
        })?;
        if sb.layout != self.layout {
            return Err(MetaError::InvalidArgument(format!(
                "superblock layout ({}) differs from the open metadata ({})",
                sb.layout, self.layout
            )));
        }
        if sb.volume_uuid != self.volume_uuid {
            return Err(MetaError::InvalidArgument(format!(
                "superblock volume {} differs from the open volume {}",
                fmt_uuid(&sb.volume_uuid),
                fmt_uuid(&self.volume_uuid)
            )));
        }
        self.buf.clear();
        self.buf.extend_from_slice(&sb.encode());
        self.dev.write_at(
            self.buf.as_slice(),
            self.layout.superblock_offset_bytes,
            true,
        )?;
        self.al_extents_max = sb.al_extents_max;
        Ok(())
    }

    /// Append one activity-log transaction holding the complete hot set (FUA) to the
    /// next ring slot. Fails with [`MetaError::TooManyExtents`] past `al_extents_max`
    /// and [`MetaError::InvalidArgument`] for an extent past the end of the data.
    pub fn write_al(&mut self, extents: &[u32]) -> Result<(), MetaError> {
        if extents.len() > self.al_extents_max as usize {
            return Err(MetaError::TooManyExtents {
                count: extents.len(),
                max: self.al_extents_max,
            });
        }
        let count = self.layout.al_extent_count();
        if let Some(e) = extents.iter().find(|e| u64::from(**e) >= count) {
            return Err(MetaError::InvalidArgument(format!(
                "activity-log extent {e} is past the end of the data ({count} extents)"
            )));
        }
        let block = al::encode(self.next_tr, self.next_slot, &self.volume_uuid, extents);
        self.buf.clear();
        self.buf.extend_from_slice(&block);
        let at = self.layout.al_slot_offset_bytes(self.next_slot);
        self.dev.write_at(self.buf.as_slice(), at, true)?;
        self.next_tr = self.next_tr.wrapping_add(1).max(1);
        self.next_slot = (self.next_slot + 1) % self.layout.al_slots;
        Ok(())
    }

    fn check_bitmap(&self, bitmap: &Bitmap) -> Result<(), MetaError> {
        if bitmap.len_bits() != self.layout.bitmap_bits() {
            return Err(MetaError::InvalidArgument(format!(
                "bitmap of {} bits does not match the metadata's {} bits",
                bitmap.len_bits(),
                self.layout.bitmap_bits()
            )));
        }
        Ok(())
    }

    /// Write pages `first..first + n` of `bitmap` in one FUA write and mark them clean.
    fn write_pages(
        &mut self,
        bitmap: &mut Bitmap,
        first: usize,
        n: usize,
    ) -> Result<(), MetaError> {
        self.buf.clear();
        self.buf.resize(n * BLOCK);
        let out = self.buf.as_mut_slice();
        for p in 0..n {
            let words = bitmap.page_words(first + p);
            for (dst, w) in out[p * BLOCK..].chunks_exact_mut(8).zip(words) {
                dst.copy_from_slice(&w.to_le_bytes());
            }
        }
        let at = self.layout.bitmap_page_offset_bytes(first);
        self.dev.write_at(self.buf.as_slice(), at, true)?;
        for p in first..first + n {
            bitmap.mark_page_clean(p);
        }
        Ok(())
    }

    /// Persist bitmap page `page` (see [`Bitmap::page_words`]; a short last page is
    /// padded with zeros) and mark it clean.
    pub fn write_bitmap_page(&mut self, bitmap: &mut Bitmap, page: usize) -> Result<(), MetaError> {
        self.check_bitmap(bitmap)?;
        if page >= bitmap.page_count() {
            return Err(MetaError::InvalidArgument(format!(
                "bitmap page {page} is past the last page {}",
                bitmap.page_count().saturating_sub(1)
            )));
        }
        self.write_pages(bitmap, page, 1)
    }

    /// Persist every bitmap page (in writes of up to 1 MiB) and mark them clean.
    pub fn write_bitmap_all(&mut self, bitmap: &mut Bitmap) -> Result<(), MetaError> {
        self.check_bitmap(bitmap)?;
        let per_write = CHUNK_BYTES / BLOCK;
        let mut page = 0;
        while page < bitmap.page_count() {
            let n = per_write.min(bitmap.page_count() - page);
            self.write_pages(bitmap, page, n)?;
            page += n;
        }
        Ok(())
    }

    /// Persist only the dirty bitmap pages, adjacent ones in one write (up to 1 MiB);
    /// returns how many pages were written.
    pub fn write_bitmap_dirty(&mut self, bitmap: &mut Bitmap) -> Result<usize, MetaError> {
        self.check_bitmap(bitmap)?;
        let dirty = bitmap.dirty_pages();
        let per_write = CHUNK_BYTES / BLOCK;
        let mut i = 0;
        while i < dirty.len() {
            let mut n = 1;
            while i + n < dirty.len() && dirty[i + n] == dirty[i] + n && n < per_write {
                n += 1;
            }
            self.write_pages(bitmap, dirty[i], n)?;
            i += n;
        }
        Ok(dirty.len())
    }
}
