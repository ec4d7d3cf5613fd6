//! Recognizing what a device already holds, so create-md can say why it refuses: a few
//! common signatures at the start of a device, with the size they claim where the
//! format records it. A heuristic for messages and safety checks, not a parser.

/// A recognized signature at the start of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signature {
    /// What it is, for messages ("an ext2/3/4 file system").
    pub name: &'static str,
    /// Bytes of the device it claims, when the format records that.
    pub size_bytes: Option<u64>,
}

/// Bytes of the device start [`detect`] looks at.
pub(crate) const HEAD_BYTES: usize = 4096;

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Look for XFS, swap, LVM2 and ext2/3/4 signatures in the first [`HEAD_BYTES`] of a
/// device.
pub(crate) fn detect(head: &[u8]) -> Option<Signature> {
    if head.get(0..4) == Some(b"XFSB") {
        // sb_blocksize (big-endian u32 at 4) x sb_dblocks (big-endian u64 at 8).
        let size = be_u64(head, 8)
            .zip(be_u32(head, 4))
            .and_then(|(blocks, bs)| blocks.checked_mul(u64::from(bs)));
        return Some(Signature {
            name: "an XFS file system",
            size_bytes: size,
        });
    }
    if head.get(4086..4096) == Some(b"SWAPSPACE2") {
        // last_page (u32 at 1028), 4 KiB pages.
        let size = le_u32(head, 1028).map(|last| (u64::from(last) + 1) * 4096);
        return Some(Signature {
            name: "a swap area",
            size_bytes: size,
        });
    }
    if head.get(512..520) == Some(b"LABELONE") {
        return Some(Signature {
            name: "an LVM2 physical volume",
            size_bytes: None,
        });
    }
    if head.get(1080..1082) == Some(&[0x53, 0xef]) {
        // Superblock at 1024: s_blocks_count_lo at +4, s_log_block_size at +24,
        // s_feature_incompat at +0x60 (64BIT = 0x80), s_blocks_count_hi at +0x150.
        let size = (|| {
            let lo = le_u32(head, 1024 + 4)?;
            let log = le_u32(head, 1024 + 24)?;
            let incompat = le_u32(head, 1024 + 0x60)?;
            let hi = if incompat & 0x80 != 0 {
                le_u32(head, 1024 + 0x150)?
            } else {
                0
            };
            let blocks = u64::from(hi) << 32 | u64::from(lo);
            let bs = 1024u64.checked_shl(log).filter(|_| log <= 6)?;
            blocks.checked_mul(bs)
        })();
        return Some(Signature {
            name: "an ext2/3/4 file system",
            size_bytes: size,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let mut h = vec![0u8; HEAD_BYTES];
        assert_eq!(detect(&h), None);

        h[1080..1082].copy_from_slice(&0xef53u16.to_le_bytes());
        h[1028..1032].copy_from_slice(&1000u32.to_le_bytes());
        h[1048..1052].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB blocks
        assert_eq!(
            detect(&h),
            Some(Signature {
                name: "an ext2/3/4 file system",
                size_bytes: Some(4_096_000)
            })
        );
        h[1120] = 0x80; // 64bit
        h[1360..1364].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            detect(&h).unwrap().size_bytes,
            Some(((1 << 32) + 1000) * 4096)
        );

        let mut h = vec![0u8; HEAD_BYTES];
        h[0..4].copy_from_slice(b"XFSB");
        h[4..8].copy_from_slice(&4096u32.to_be_bytes());
        h[8..16].copy_from_slice(&262_144u64.to_be_bytes());
        assert_eq!(detect(&h).unwrap().size_bytes, Some(1 << 30));

        let mut h = vec![0u8; HEAD_BYTES];
        h[512..520].copy_from_slice(b"LABELONE");
        assert_eq!(detect(&h).unwrap().name, "an LVM2 physical volume");

        let mut h = vec![0u8; HEAD_BYTES];
        h[4086..].copy_from_slice(b"SWAPSPACE2");
        h[1028..1032].copy_from_slice(&255u32.to_le_bytes());
        assert_eq!(detect(&h).unwrap().size_bytes, Some(1 << 20));
        assert_eq!(detect(&h[..100]), None);
    }
}
