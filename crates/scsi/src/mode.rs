//! Mode parameters (SPC-4 7.5, SBC-3 6.4): MODE SENSE(6/10) data and MODE SELECT(6/10)
//! parameter list validation.
//!
//! Owns: the byte layout of the mode parameter header, block descriptors and the
//! pages the engine offers — caching (0x08, WCE mirrors the device's volatile cache
//! truthfully, not changeable), control (0x0A, D_SENSE changeable) and informational
//! exceptions control (0x1C, nothing changeable) — and which bits are changeable.
//! Saved parameters are not supported. The LU owns the current values.

use crate::sense::{asc, Sense};

/// Mode page codes offered, ascending (the order of "all pages").
pub const PAGES: [u8; 3] = [0x08, 0x0A, 0x1C];

/// Page control values.
pub mod pc {
    /// Current values.
    pub const CURRENT: u8 = 0;
    /// Changeable values (bit masks).
    pub const CHANGEABLE: u8 = 1;
    /// Default values.
    pub const DEFAULT: u8 = 2;
    /// Saved values (not supported).
    pub const SAVED: u8 = 3;
}

/// The values mode data is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeContext {
    /// Volatile write cache enabled (device truth).
    pub wce: bool,
    /// Current D_SENSE (descriptor format sense data).
    pub d_sense: bool,
    /// Write protected LU (WP bit).
    pub write_protected: bool,
    /// Number of logical blocks.
    pub num_blocks: u64,
    /// Logical block length in bytes.
    pub block_size: u32,
}

/// What a successful MODE SELECT asks to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModeChanges {
    /// New D_SENSE value, when a control page was sent.
    pub d_sense: Option<bool>,
}

/// Build page `code` for page control `pc` (not SAVED), or `None` if not offered.
pub fn page(code: u8, pcv: u8, ctx: &ModeContext) -> Option<Vec<u8>> {
    let changeable = pcv == pc::CHANGEABLE;
    let default = pcv == pc::DEFAULT;
    Some(match code {
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if !changeable && ctx.wce {
                p[2] |= 0x04; // WCE
            }
            p
        }
        0x0A => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0A;
            p[1] = 0x0A;
            if changeable {
                p[2] = 0x04; // D_SENSE is changeable
            } else {
                p[2] = 0x02; // GLTSD: no log parameters are saved
                if ctx.d_sense && !default {
                    p[2] |= 0x04;
                }
                p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                p[5] = 0x40; // TAS: tasks aborted for another nexus end with TASK ABORTED
            }
            p
        }
        0x1C => {
            let mut p = vec![0u8; 12];
            p[0] = 0x1C;
            p[1] = 0x0A;
            if !changeable {
                p[2] = 0x08; // DEXCPT: informational exceptions are not reported
            }
            p
        }
        _ => return None,
    })
}

/// MODE SENSE data (untruncated) for the decoded CDB fields.
pub fn mode_sense(
    ctx: &ModeContext,
    ten: bool,
    dbd: bool,
    llbaa: bool,
    pcv: u8,
    page_code: u8,
    subpage_code: u8,
) -> Result<Vec<u8>, Sense> {
    if pcv == pc::SAVED {
        return Err(Sense::illegal(asc::SAVING_PARAMS_NOT_SUPPORTED));
    }
    // Pages to return.
    let mut pages: Vec<u8> = Vec::new();
    if page_code == 0x3F {
        if subpage_code != 0x00 && subpage_code != 0xFF {
            return Err(Sense::invalid_cdb(3, Some(7)));
        }
        for &p in &PAGES {
            pages.extend_from_slice(&page(p, pcv, ctx).unwrap_or_default());
        }
    } else {
        let Some(p) = page(page_code, pcv, ctx) else {
            return Err(Sense::invalid_cdb(2, Some(5)));
        };
        if subpage_code != 0x00 && subpage_code != 0xFF {
            return Err(Sense::invalid_cdb(3, Some(7)));
        }
        pages = p;
    }

    let long_lba = ten && llbaa;
    let mut bd: Vec<u8> = Vec::new();
    if !dbd {
        if long_lba {
            bd = vec![0u8; 16];
            if pcv != pc::CHANGEABLE {
                bd[0..8].copy_from_slice(&ctx.num_blocks.to_be_bytes());
                bd[12..16].copy_from_slice(&ctx.block_size.to_be_bytes());
            }
        } else {
            bd = vec![0u8; 8];
            if pcv != pc::CHANGEABLE {
                let n = u32::try_from(ctx.num_blocks).unwrap_or(u32::MAX);
                bd[0..4].copy_from_slice(&n.to_be_bytes());
                bd[5..8].copy_from_slice(&ctx.block_size.to_be_bytes()[1..4]);
            }
        }
    }

    let mut dsp = 0x10u8; // DPOFUA: DPO and FUA are supported
    if ctx.write_protected {
        dsp |= 0x80;
    }
    let mut out = Vec::with_capacity(8 + bd.len() + pages.len());
    if ten {
        out.extend_from_slice(&[0, 0, 0x00, dsp, u8::from(long_lba), 0, 0, 0]);
        let bdl = bd.len() as u16;
        out[6..8].copy_from_slice(&bdl.to_be_bytes());
        out.extend_from_slice(&bd);
        out.extend_from_slice(&pages);
        let mdl = (out.len() - 2) as u16;
        out[0..2].copy_from_slice(&mdl.to_be_bytes());
    } else {
        out.extend_from_slice(&[0, 0x00, dsp, bd.len() as u8]);
        out.extend_from_slice(&bd);
        out.extend_from_slice(&pages);
        out[0] = (out.len() - 1) as u8;
    }
    Ok(out)
}

fn pll_error() -> Sense {
    Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR)
}

fn top_bit(x: u8) -> u8 {
    7 - x.leading_zeros() as u8
}

/// Validate a MODE SELECT parameter list (`params` already cut to the PARAMETER LIST
/// LENGTH) against the current values and changeable masks. Nothing is applied.
pub fn mode_select(ctx: &ModeContext, ten: bool, params: &[u8]) -> Result<ModeChanges, Sense> {
    let hdr = if ten { 8 } else { 4 };
    if params.len() < hdr {
        return Err(pll_error());
    }
    let (bd_len, bd_len_at, long_lba) = if ten {
        (
            usize::from(u16::from_be_bytes([params[6], params[7]])),
            6u16,
            params[4] & 0x01 != 0,
        )
    } else {
        (usize::from(params[3]), 3u16, false)
    };
    let want_bd = if long_lba { 16 } else { 8 };
    if bd_len != 0 && bd_len != want_bd {
        return Err(Sense::invalid_param(bd_len_at, None));
    }
    if hdr + bd_len > params.len() {
        return Err(pll_error());
    }
    if bd_len != 0 {
        let bd = &params[hdr..hdr + bd_len];
        let (blocks, block_len, len_at) = if long_lba {
            let mut n = [0u8; 8];
            n.copy_from_slice(&bd[0..8]);
            (
                u64::from_be_bytes(n),
                u32::from_be_bytes([bd[12], bd[13], bd[14], bd[15]]),
                hdr + 12,
            )
        } else {
            (
                u64::from(u32::from_be_bytes([bd[0], bd[1], bd[2], bd[3]])),
                u32::from_be_bytes([0, bd[5], bd[6], bd[7]]),
                hdr + 5,
            )
        };
        let cur_blocks = if long_lba {
            ctx.num_blocks
        } else {
            ctx.num_blocks.min(u64::from(u32::MAX))
        };
        if blocks != 0 && blocks != cur_blocks {
            return Err(Sense::invalid_param(hdr as u16, None));
        }
        if block_len != ctx.block_size {
            return Err(Sense::invalid_param(len_at as u16, None));
        }
    }

    let mut changes = ModeChanges::default();
    let mut off = hdr + bd_len;
    while off < params.len() {
        if off + 2 > params.len() {
            return Err(pll_error());
        }
        let b0 = params[off];
        if b0 & 0x40 != 0 {
            // SPF: no subpages are offered.
            return Err(Sense::invalid_param(off as u16, Some(6)));
        }
        let code = b0 & 0x3F;
        let plen = usize::from(params[off + 1]);
        if off + 2 + plen > params.len() {
            return Err(pll_error());
        }
        let (Some(cur), Some(mask)) = (
            page(code, pc::CURRENT, ctx),
            page(code, pc::CHANGEABLE, ctx),
        ) else {
            return Err(Sense::invalid_param(off as u16, Some(5)));
        };
        if plen + 2 != cur.len() {
            return Err(Sense::invalid_param((off + 1) as u16, None));
        }
        let new = &params[off..off + 2 + plen];
        for i in 2..cur.len() {
            let diff = (new[i] ^ cur[i]) & !mask[i];
            if diff != 0 {
                return Err(Sense::invalid_param((off + i) as u16, Some(top_bit(diff))));
            }
        }
        if code == 0x0A {
            changes.d_sense = Some(new[2] & 0x04 != 0);
        }
        off += 2 + plen;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ModeContext {
        ModeContext {
            wce: true,
            d_sense: false,
            write_protected: false,
            num_blocks: 2048,
            block_size: 512,
        }
    }

    #[test]
    fn sense6_all_pages_golden() {
        let d = mode_sense(&ctx(), false, false, false, pc::CURRENT, 0x3F, 0).unwrap();
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(&d[1..4], &[0x00, 0x10, 8]);
        assert_eq!(&d[4..12], &[0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
        assert_eq!(&d[12..16], &[0x08, 0x12, 0x04, 0x00]);
        assert_eq!(&d[32..36], &[0x0A, 0x0A, 0x02, 0x10]);
        assert_eq!(&d[44..48], &[0x1C, 0x0A, 0x08, 0x00]);
        assert_eq!(d.len(), 4 + 8 + 20 + 12 + 12);
    }

    #[test]
    fn changeable_masks() {
        let d = mode_sense(&ctx(), false, true, false, pc::CHANGEABLE, 0x3F, 0).unwrap();
        assert_eq!(d[3], 0); // DBD
        let pages = &d[4..];
        assert!(
            pages[..20].iter().skip(2).all(|&b| b == 0),
            "caching not changeable"
        );
        assert_eq!(&pages[20..24], &[0x0A, 0x0A, 0x04, 0x00]);
        assert!(pages[22 + 2..32].iter().all(|&b| b == 0));
        assert!(pages[32 + 2..].iter().all(|&b| b == 0));
    }

    #[test]
    fn wce_truthful_and_saved_rejected() {
        let mut c = ctx();
        c.wce = false;
        let d = mode_sense(&c, false, true, false, pc::CURRENT, 0x08, 0).unwrap();
        assert_eq!(d[4 + 2] & 0x04, 0);
        let e = mode_sense(&c, false, true, false, pc::SAVED, 0x08, 0).unwrap_err();
        assert_eq!(e.code(), asc::SAVING_PARAMS_NOT_SUPPORTED);
        let e = mode_sense(&c, false, true, false, pc::CURRENT, 0x19, 0).unwrap_err();
        assert_eq!(e.code(), asc::INVALID_FIELD_IN_CDB);
    }

    #[test]
    fn sense10_long_lba() {
        let d = mode_sense(&ctx(), true, false, true, pc::CURRENT, 0x0A, 0).unwrap();
        assert_eq!(u16::from_be_bytes([d[0], d[1]]) as usize, d.len() - 2);
        assert_eq!(d[4], 1);
        assert_eq!(u16::from_be_bytes([d[6], d[7]]), 16);
        assert_eq!(&d[8..16], &2048u64.to_be_bytes());
        assert_eq!(&d[20..24], &512u32.to_be_bytes());
    }

    #[test]
    fn select_validates() {
        let c = ctx();
        // Header + control page with D_SENSE set.
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(&page(0x0A, pc::CURRENT, &c).unwrap());
        p[4 + 2] |= 0x04;
        assert_eq!(
            mode_select(&c, false, &p).unwrap(),
            ModeChanges {
                d_sense: Some(true)
            }
        );
        // Changing QAM is not allowed.
        p[4 + 3] = 0;
        let e = mode_select(&c, false, &p).unwrap_err();
        assert_eq!(e.code(), asc::INVALID_FIELD_IN_PARAM_LIST);
        assert_eq!(e.field.unwrap().byte, 7);
        // WCE is not changeable.
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(&page(0x08, pc::CURRENT, &c).unwrap());
        p[6] = 0;
        assert!(mode_select(&c, false, &p).is_err());
        // Truncated page.
        let p = vec![0, 0, 0, 0, 0x0A, 0x0A, 0x02];
        assert_eq!(
            mode_select(&c, false, &p).unwrap_err().code(),
            asc::PARAMETER_LIST_LENGTH_ERROR
        );
        // Block descriptor with a different block length.
        let mut p = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0x00];
        assert!(mode_select(&c, false, &p).is_err());
        p[10] = 0x02;
        assert_eq!(mode_select(&c, false, &p).unwrap(), ModeChanges::default());
    }
}
