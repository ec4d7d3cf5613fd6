//! Where the metadata areas and the usable data lie on the devices ([`Layout`]).

use std::fmt;

use super::MetaError;
use crate::types::BYTES_PER_BIT;

/// Unit and alignment of every metadata area: superblock, activity-log slot and bitmap
/// page are each one 4 KiB block.
pub const META_BLOCK_BYTES: u64 = 4096;
/// Default number of activity-log transaction slots (a 32 KiB ring).
pub const DEFAULT_AL_SLOTS: u32 = 8;
/// Fewest slots: with two, a torn write of the newest still leaves the previous one.
pub const MIN_AL_SLOTS: u32 = 2;
/// Most slots (a 4 MiB ring); more only slows recovery, which reads them all.
pub const MAX_AL_SLOTS: u32 = 1024;

/// Data bytes tracked by one 4 KiB bitmap page (32768 bits x 4 KiB = 128 MiB).
const DATA_BYTES_PER_BITMAP_PAGE: u64 = META_BLOCK_BYTES * 8 * BYTES_PER_BIT;

/// Where the metadata of one volume lives and how much data it covers. Offsets are
/// bytes on the metadata device (the data device itself for internal metadata); all
/// are multiples of [`META_BLOCK_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Usable (replicated) data size in bytes: what the volume exports.
    pub data_size_bytes: u64,
    /// Start of the whole metadata area.
    pub meta_offset_bytes: u64,
    /// Offset of the 4 KiB superblock.
    pub superblock_offset_bytes: u64,
    /// Offset of the activity-log ring.
    pub al_offset_bytes: u64,
    /// Number of 4 KiB transaction blocks in the activity-log ring.
    pub al_slots: u32,
    /// Offset of the bitmap area.
    pub bitmap_offset_bytes: u64,
    /// Size of the bitmap area (a multiple of 4 KiB, at least one bit per data block).
    pub bitmap_bytes: u64,
    /// Size of the whole metadata area (superblock, activity log and bitmap).
    pub meta_size_bytes: u64,
    /// Metadata at the end of the data device (`true`) or on its own device.
    pub internal: bool,
}

fn check_slots(al_slots: u32) -> Result<(), MetaError> {
    if (MIN_AL_SLOTS..=MAX_AL_SLOTS).contains(&al_slots) {
        Ok(())
    } else {
        Err(MetaError::InvalidArgument(format!(
            "al_slots {al_slots} is outside {MIN_AL_SLOTS}..={MAX_AL_SLOTS}"
        )))
    }
}

/// Bitmap area size for `data_size_bytes`: one bit per 4 KiB block, rounded up to 4 KiB.
fn bitmap_area_bytes(data_size_bytes: u64) -> u64 {
    data_size_bytes
        .div_ceil(DATA_BYTES_PER_BITMAP_PAGE)
        .saturating_mul(META_BLOCK_BYTES)
}

/// Layout of internal metadata on a data device of `device_size_bytes`:
/// `[data][bitmap][AL ring][superblock]`, the superblock in the last whole 4 KiB block.
/// The data is everything before the bitmap (a multiple of 4 KiB) and the bitmap is
/// the smallest whole number of pages that covers it, so the overhead is at most 32 KiB
/// per GiB of device (rounded up to a GiB) plus the ring, the superblock and the
/// sub-4 KiB tail.
pub fn internal_layout(device_size_bytes: u64, al_slots: u32) -> Result<Layout, MetaError> {
    check_slots(al_slots)?;
    let end = device_size_bytes - device_size_bytes % META_BLOCK_BYTES;
    let al_bytes = u64::from(al_slots) * META_BLOCK_BYTES;
    // Superblock, ring, one bitmap page and at least one data block.
    let need_bytes = META_BLOCK_BYTES + al_bytes + 2 * META_BLOCK_BYTES;
    if end < need_bytes {
        return Err(MetaError::DeviceTooSmall {
            need_bytes,
            have_bytes: device_size_bytes,
        });
    }
    let superblock_offset_bytes = end - META_BLOCK_BYTES;
    let al_offset_bytes = superblock_offset_bytes - al_bytes;
    // Smallest page count p with p * 128 MiB >= al_offset - p * 4 KiB.
    let pages = al_offset_bytes.div_ceil(DATA_BYTES_PER_BITMAP_PAGE + META_BLOCK_BYTES);
    let bitmap_bytes = pages * META_BLOCK_BYTES;
    let bitmap_offset_bytes = al_offset_bytes - bitmap_bytes;
    Ok(Layout {
        data_size_bytes: bitmap_offset_bytes,
        meta_offset_bytes: bitmap_offset_bytes,
        superblock_offset_bytes,
        al_offset_bytes,
        al_slots,
        bitmap_offset_bytes,
        bitmap_bytes,
        meta_size_bytes: end - bitmap_offset_bytes,
        internal: true,
    })
}

/// Layout of external metadata for `data_size_bytes` of data on a metadata device of
/// `meta_device_size_bytes`: `[superblock][AL ring][bitmap]` from offset 0. Fails with
/// [`MetaError::DeviceTooSmall`] naming the size required when the device is too small.
pub fn external_layout(
    meta_device_size_bytes: u64,
    data_size_bytes: u64,
    al_slots: u32,
) -> Result<Layout, MetaError> {
    check_slots(al_slots)?;
    if data_size_bytes == 0 {
        return Err(MetaError::InvalidArgument(
            "external metadata needs the size of the data device (got 0)".into(),
        ));
    }
    let al_offset_bytes = META_BLOCK_BYTES;
    let bitmap_offset_bytes = al_offset_bytes + u64::from(al_slots) * META_BLOCK_BYTES;
    let bitmap_bytes = bitmap_area_bytes(data_size_bytes);
    let meta_size_bytes = bitmap_offset_bytes.saturating_add(bitmap_bytes);
    if meta_size_bytes > meta_device_size_bytes {
        return Err(MetaError::DeviceTooSmall {
            need_bytes: meta_size_bytes,
            have_bytes: meta_device_size_bytes,
        });
    }
    Ok(Layout {
        data_size_bytes,
        meta_offset_bytes: 0,
        superblock_offset_bytes: 0,
        al_offset_bytes,
        al_slots,
        bitmap_offset_bytes,
        bitmap_bytes,
        meta_size_bytes,
        internal: false,
    })
}

impl Layout {
    /// Bytes the replicated volume exports (the same as `data_size_bytes`).
    pub fn usable_size_bytes(&self) -> u64 {
        self.data_size_bytes
    }

    /// Number of bitmap bits: one per 4 KiB block of data, a partial last block included.
    pub fn bitmap_bits(&self) -> u64 {
        self.data_size_bytes.div_ceil(BYTES_PER_BIT)
    }

    /// Number of 4 MiB activity-log extents the data spans (valid extent numbers are
    /// below this).
    pub fn al_extent_count(&self) -> u64 {
        self.data_size_bytes.div_ceil(crate::types::AL_EXTENT_BYTES)
    }

    /// Offset of activity-log slot `slot` (`slot < al_slots`).
    pub fn al_slot_offset_bytes(&self, slot: u32) -> u64 {
        self.al_offset_bytes + u64::from(slot) * META_BLOCK_BYTES
    }

    /// Offset of bitmap page `page` (see [`crate::bitmap::Bitmap::page_words`]).
    pub fn bitmap_page_offset_bytes(&self, page: usize) -> u64 {
        self.bitmap_offset_bytes + page as u64 * META_BLOCK_BYTES
    }

    /// Check the layout is well-formed and lies within a metadata device of
    /// `device_size_bytes`: aligned areas that do not overlap, a bitmap large enough for
    /// the data, and (internal) data that ends before the metadata and a superblock in
    /// the last block of the area.
    pub fn validate(&self, device_size_bytes: u64) -> Result<(), MetaError> {
        let corrupt = |why: String| Err(MetaError::Corrupt(format!("layout: {why}")));
        let block = META_BLOCK_BYTES;
        for (name, v) in [
            ("meta offset", self.meta_offset_bytes),
            ("superblock offset", self.superblock_offset_bytes),
            ("activity log offset", self.al_offset_bytes),
            ("bitmap offset", self.bitmap_offset_bytes),
            ("bitmap size", self.bitmap_bytes),
            ("metadata size", self.meta_size_bytes),
        ] {
            if !v.is_multiple_of(block) {
                return corrupt(format!("{name} {v} is not a multiple of {block}"));
            }
        }
        if !(MIN_AL_SLOTS..=MAX_AL_SLOTS).contains(&self.al_slots) {
            return corrupt(format!("{} activity log slots", self.al_slots));
        }
        if self.data_size_bytes == 0 {
            return corrupt("data size is 0".into());
        }
        let need = bitmap_area_bytes(self.data_size_bytes);
        if self.bitmap_bytes < need {
            return corrupt(format!(
                "bitmap area of {} bytes cannot cover {} bytes of data (needs {need})",
                self.bitmap_bytes, self.data_size_bytes
            ));
        }
        let Some(meta_end) = self.meta_offset_bytes.checked_add(self.meta_size_bytes) else {
            return corrupt("metadata area ends past 2^64".into());
        };
        let areas = [
            ("superblock", self.superblock_offset_bytes, block),
            (
                "activity log",
                self.al_offset_bytes,
                u64::from(self.al_slots) * block,
            ),
            ("bitmap", self.bitmap_offset_bytes, self.bitmap_bytes),
        ];
        for (i, &(name, start, len)) in areas.iter().enumerate() {
            match start.checked_add(len) {
                Some(end) if start >= self.meta_offset_bytes && end <= meta_end => {}
                _ => {
                    return corrupt(format!(
                        "{name} {start}+{len} lies outside the metadata area {}+{}",
                        self.meta_offset_bytes, self.meta_size_bytes
                    ))
                }
            }
            for &(other, s2, l2) in &areas[i + 1..] {
                if start < s2 + l2 && s2 < start + len {
                    return corrupt(format!("{name} overlaps {other}"));
                }
            }
        }
        if meta_end > device_size_bytes {
            return Err(MetaError::DeviceTooSmall {
                need_bytes: meta_end,
                have_bytes: device_size_bytes,
            });
        }
        if self.internal {
            if self.data_size_bytes > self.meta_offset_bytes {
                return corrupt(format!(
                    "data size {} runs into the metadata at {}",
                    self.data_size_bytes, self.meta_offset_bytes
                ));
            }
            if self.superblock_offset_bytes + block != meta_end {
                return corrupt("internal superblock is not the last block of the area".into());
            }
        } else if self.superblock_offset_bytes != 0 || self.meta_offset_bytes != 0 {
            return corrupt("external metadata does not start at offset 0".into());
        }
        Ok(())
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} metadata: {} usable data bytes; bitmap {} bytes at {}, activity log {} x {} \
             bytes at {}, superblock at {} (metadata area {} bytes at {})",
            if self.internal {
                "internal"
            } else {
                "external"
            },
            self.data_size_bytes,
            self.bitmap_bytes,
            self.bitmap_offset_bytes,
            self.al_slots,
            META_BLOCK_BYTES,
            self.al_offset_bytes,
            self.superblock_offset_bytes,
            self.meta_size_bytes,
            self.meta_offset_bytes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const KIB: u64 = 1 << 10;

    #[test]
    fn internal_overhead_is_32k_per_gib_plus_a_constant() {
        for size in [
            GIB,
            100 * GIB,
            1 << 40,
            1 << 40 | 512,
            3 * GIB + 7 * 4096,
            8 * 4096 * 3,
        ] {
            let l = internal_layout(size, DEFAULT_AL_SLOTS).unwrap();
            l.validate(size).unwrap();
            let overhead = size - l.data_size_bytes;
            let constant = (u64::from(DEFAULT_AL_SLOTS) + 1) * 4096 + 4096;
            let bound = size.div_ceil(GIB) * 32 * KIB + constant;
            assert!(overhead <= bound, "{size}: overhead {overhead} > {bound}");
            assert_eq!(l.data_size_bytes % 4096, 0);
            assert_eq!(l.bitmap_offset_bytes, l.data_size_bytes);
            assert!(l.bitmap_bytes * 8 * 4096 >= l.data_size_bytes, "{l:?}");
            // Minimal: one page less would not cover the data even if it gained 4 KiB.
            assert!((l.bitmap_bytes - 4096) * 8 * 4096 < l.data_size_bytes + 4096);
            assert_eq!(l.superblock_offset_bytes + 4096, size - size % 4096);
        }
        let l = internal_layout(GIB, DEFAULT_AL_SLOTS).unwrap();
        assert_eq!(l.bitmap_bytes, 32 * KIB);
        assert_eq!(l.data_size_bytes, GIB - 32 * KIB - 9 * 4096);
        let l = internal_layout(1 << 40, DEFAULT_AL_SLOTS).unwrap();
        assert_eq!(l.bitmap_bytes, 32 * KIB * 1024);
    }

    #[test]
    fn internal_too_small() {
        let need = (2 + 8 + 1) * 4096;
        assert!(internal_layout(need, 8).is_ok());
        match internal_layout(need - 1, 8) {
            Err(MetaError::DeviceTooSmall {
                need_bytes,
                have_bytes,
            }) => assert_eq!((need_bytes, have_bytes), (need, need - 1)),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            internal_layout(GIB, 1),
            Err(MetaError::InvalidArgument(_))
        ));
    }

    #[test]
    fn external() {
        let l = external_layout(GIB, 100 * GIB, DEFAULT_AL_SLOTS).unwrap();
        assert_eq!(l.al_offset_bytes, 4096);
        assert_eq!(l.bitmap_offset_bytes, 9 * 4096);
        assert_eq!(l.bitmap_bytes, 3200 * KIB);
        assert_eq!(l.meta_size_bytes, 9 * 4096 + 3200 * KIB);
        l.validate(GIB).unwrap();
        let e = external_layout(64 * KIB, 100 * GIB, 8).unwrap_err();
        assert!(
            matches!(e, MetaError::DeviceTooSmall { need_bytes, .. } if need_bytes == l.meta_size_bytes)
        );
        assert!(
            e.to_string().contains(&l.meta_size_bytes.to_string()),
            "{e}"
        );
        // A partial last block still gets a bit.
        let l = external_layout(GIB, 4097, 8).unwrap();
        assert_eq!(l.bitmap_bits(), 2);
        assert_eq!(l.bitmap_bytes, 4096);
    }

    #[test]
    fn validate_rejects_overlaps_and_misalignment() {
        let good = internal_layout(GIB, 8).unwrap();
        let mut l = good;
        l.al_offset_bytes -= 4096;
        assert!(matches!(l.validate(GIB), Err(MetaError::Corrupt(_))));
        let mut l = good;
        l.bitmap_offset_bytes += 1;
        assert!(matches!(l.validate(GIB), Err(MetaError::Corrupt(_))));
        let mut l = good;
        l.data_size_bytes += 4096;
        assert!(matches!(l.validate(GIB), Err(MetaError::Corrupt(_))));
        assert!(matches!(
            good.validate(GIB - 4096),
            Err(MetaError::DeviceTooSmall { .. })
        ));
        let mut l = external_layout(GIB, GIB, 8).unwrap();
        l.data_size_bytes *= 2;
        assert!(matches!(l.validate(GIB), Err(MetaError::Corrupt(_))));
    }
}
