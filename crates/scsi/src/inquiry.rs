//! INQUIRY data (SPC-4 6.6, 7.8; SBC-3 6.6): the standard page and the vital product
//! data pages 0x00 (supported pages), 0x80 (unit serial number), 0x83 (device
//! identification), 0xB0 (block limits), 0xB1 (block device characteristics) and, for
//! thin-provisioned LUs, 0xB2 (logical block provisioning, built by [`crate::thin`]).
//!
//! Owns: the byte layout of these pages and the derivation of the LU's identity
//! (NAA-6 designator, unit serial) from its UUID, so that both heads of a pair report
//! the same device.

use crate::lun::{limits, LunConfig};
use twinsan_blockdev::BlockDevice;

/// VPD pages offered, ascending (as page 0x00 must list them); thin-provisioned LUs
/// add 0xB2 ([`THIN_VPD_PAGES`]).
pub const SUPPORTED_VPD_PAGES: [u8; 5] = [0x00, 0x80, 0x83, 0xB0, 0xB1];

/// VPD pages of a thin-provisioned LU, ascending.
pub const THIN_VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2];

/// IEEE company id used in the NAA-6 designator. The "X" (locally administered) bit of
/// the first octet is set, so it cannot collide with an IEEE-assigned company id.
pub const NAA_COMPANY_ID: u32 = 0x0A_5A_17;

/// Length of the standard INQUIRY data the engine returns.
pub const STANDARD_LEN: usize = 96;

/// Version descriptors claimed: SAM-5, SPC-4, SBC-3, iSCSI (no version claimed).
const VERSION_DESCRIPTORS: [u16; 4] = [0x00A0, 0x0460, 0x04C0, 0x0960];

fn put_ascii(dst: &mut [u8], s: &str) {
    // Space-padded, printable ASCII only (SPC-4 4.4.1); other characters become '?'.
    for (i, d) in dst.iter_mut().enumerate() {
        *d = match s.as_bytes().get(i) {
            Some(&c) if (0x20..=0x7E).contains(&c) => c,
            Some(_) => b'?',
            None => b' ',
        };
    }
}

/// Standard INQUIRY data for a connected direct-access LU.
pub fn standard(cfg: &LunConfig) -> [u8; STANDARD_LEN] {
    let mut b = [0u8; STANDARD_LEN];
    b[0] = 0x00; // peripheral qualifier 000b, direct access block device
    b[1] = 0x00; // not removable
    b[2] = 0x06; // SPC-4
    b[3] = 0x10 | 0x02; // HISUP, response data format 2
    b[4] = (STANDARD_LEN - 5) as u8;
    b[5] = 0x08; // 3PC (EXTENDED COPY); TPGS added per target by ALUA; no PROTECT
    b[6] = 0x00;
    b[7] = 0x02; // CMDQUE
    put_ascii(&mut b[8..16], &cfg.vendor);
    put_ascii(&mut b[16..32], &cfg.product);
    put_ascii(&mut b[32..36], &cfg.revision);
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        b[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    b
}

/// Standard INQUIRY data for a LUN that is not connected (peripheral qualifier 011b,
/// device type 1Fh).
pub fn standard_no_lun() -> [u8; 36] {
    let mut b = [0u8; 36];
    b[0] = 0x7F;
    b[2] = 0x06;
    b[3] = 0x12;
    b[4] = 31;
    b
}

/// The unit serial number: the UUID as 32 lowercase hex digits.
pub fn unit_serial(cfg: &LunConfig) -> String {
    cfg.uuid.simple().to_string()
}

/// The 16-byte NAA IEEE Registered Extended (NAA=6) designator derived from the UUID.
pub fn naa6(cfg: &LunConfig) -> [u8; 16] {
    let u = cfg.uuid.as_u128();
    // 36-bit vendor specific identifier + 64-bit extension = 100 bits; fold the 28 bits
    // that do not fit into the extension so that every UUID bit contributes.
    let vsid = (u >> 92) as u64 & ((1 << 36) - 1);
    let ext = ((u >> 28) as u64) ^ ((u & 0x0FFF_FFFF) as u64);
    let hi = (0x6u64 << 60) | (u64::from(NAA_COMPANY_ID) << 36) | vsid;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&ext.to_be_bytes());
    b
}

/// VPD page 0x00 of a fully provisioned LU.
pub fn vpd_supported_pages() -> Vec<u8> {
    let mut b = vec![0x00, 0x00, 0x00, SUPPORTED_VPD_PAGES.len() as u8];
    b.extend_from_slice(&SUPPORTED_VPD_PAGES);
    b
}

/// VPD page 0x00 for `dev` (with 0xB2 when it is thin-provisioned).
pub fn vpd_supported_pages_for(dev: &dyn BlockDevice) -> Vec<u8> {
    if !crate::thin::is_thin(dev) {
        return vpd_supported_pages();
    }
    let mut b = vec![0x00, 0x00, 0x00, THIN_VPD_PAGES.len() as u8];
    b.extend_from_slice(&THIN_VPD_PAGES);
    b
}

/// VPD page 0x80.
pub fn vpd_unit_serial(cfg: &LunConfig) -> Vec<u8> {
    let serial = unit_serial(cfg);
    let mut b = vec![0x00, 0x80, 0x00, serial.len() as u8];
    b.extend_from_slice(serial.as_bytes());
    b
}

/// VPD page 0x83: NAA-6 (LU), T10 vendor id (LU), relative target port (target port).
pub fn vpd_device_identification(cfg: &LunConfig, relative_port_id: u16) -> Vec<u8> {
    let mut b = vec![0x00, 0x83, 0x00, 0x00];
    // NAA: code set binary, association LU, designator type 3.
    b.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    b.extend_from_slice(&naa6(cfg));
    // T10 vendor id: code set ASCII, association LU, designator type 1:
    // 8-byte vendor id followed by the unit serial number.
    let serial = unit_serial(cfg);
    let mut vendor = [0u8; 8];
    put_ascii(&mut vendor, &cfg.vendor);
    b.extend_from_slice(&[0x02, 0x01, 0x00, (8 + serial.len()) as u8]);
    b.extend_from_slice(&vendor);
    b.extend_from_slice(serial.as_bytes());
    // Relative target port: protocol iSCSI (5), code set binary, PIV=1,
    // association target port (01b), designator type 4.
    b.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0x00, 0x00]);
    b.extend_from_slice(&relative_port_id.to_be_bytes());
    let len = (b.len() - 4) as u16;
    b[2..4].copy_from_slice(&len.to_be_bytes());
    b
}

/// VPD page 0xB0 (SBC-3 length 0x3C).
pub fn vpd_block_limits(dev: &dyn BlockDevice) -> Vec<u8> {
    let bs = dev.logical_block_size().max(1);
    let mut b = vec![0u8; 64];
    b[1] = 0xB0;
    b[3] = 0x3C;
    b[4] = 0x00; // WSNZ=0: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 writes to the end
    b[5] = crate::caw::MAX_COMPARE_AND_WRITE_BLOCKS;
    let granularity = (dev.physical_block_size().max(4096) / bs).clamp(1, u32::from(u16::MAX));
    b[6..8].copy_from_slice(&(granularity as u16).to_be_bytes());
    b[8..12].copy_from_slice(&limits::max_transfer_blocks(bs).to_be_bytes());
    b[12..16].copy_from_slice(&limits::optimal_transfer_blocks(bs).to_be_bytes());
    // 16..20 MAXIMUM PREFETCH LENGTH: 0; 20..36 UNMAP fields (zero unless thin).
    b[20..36].copy_from_slice(&crate::thin::block_limits_unmap_fields(dev));
    b[36..44].copy_from_slice(&limits::max_write_same_blocks(bs).to_be_bytes());
    // 44..64: atomic write fields: 0 (no WRITE ATOMIC).
    b
}

/// VPD page 0xB1: non-rotating medium.
pub fn vpd_block_device_characteristics() -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[1] = 0xB1;
    b[3] = 0x3C;
    b[4..6].copy_from_slice(&1u16.to_be_bytes()); // MEDIUM ROTATION RATE: non-rotating
    b
}

/// The VPD page `page`, or `None` if it is not supported.
pub fn vpd_page(
    page: u8,
    cfg: &LunConfig,
    dev: &dyn BlockDevice,
    relative_port_id: u16,
) -> Option<Vec<u8>> {
    Some(match page {
        0x00 => vpd_supported_pages_for(dev),
        0x80 => vpd_unit_serial(cfg),
        0x83 => vpd_device_identification(cfg, relative_port_id),
        0xB0 => vpd_block_limits(dev),
        0xB1 => vpd_block_device_characteristics(),
        0xB2 => return crate::thin::vpd_logical_block_provisioning(dev),
        _ => return None,
    })
}
