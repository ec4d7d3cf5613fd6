//! [`DeviceReservationStore`]: the persistent-reservation record kept inside the LUN's
//! own backing device, in a reserved area at its end. On a replicated volume the record
//! is therefore replicated synchronously with the data (protocol C) and is on the peer
//! when it takes over, instead of in a host-local file.
//!
//! Owns: the reserved area's format: two slots written alternately (a torn write of one
//! leaves the other intact), each `[header 32 B][record]`: magic `TWPRSLOT`, version 1,
//! generation (u64, the newer valid slot wins), record length, CRC32C over header and
//! record, little-endian. May not touch: anything outside the area.

use std::sync::{Arc, Mutex};

use twinsan_blockdev::BlockDevice;

use super::store::{ReservationStore, StoreError};

/// Bytes reserved at the end of a device for the record (two slots).
pub const PR_AREA_BYTES: u64 = 128 * 1024;
const SLOT_BYTES: u64 = PR_AREA_BYTES / 2;
const HEADER_BYTES: usize = 32;
const MAGIC: &[u8; 8] = b"TWPRSLOT";
const VERSION: u32 = 1;

/// A record store in the last [`PR_AREA_BYTES`] of a block device.
#[derive(Debug)]
pub struct DeviceReservationStore {
    dev: Arc<dyn BlockDevice>,
    area_offset_bytes: u64,
    /// Newest generation seen or written.
    generation: Mutex<u64>,
}

impl DeviceReservationStore {
    /// A store at the end of `dev`; returns it with the number of bytes before the
    /// area (what the LUN may use). `None` if the device is too small.
    pub fn at_end(dev: Arc<dyn BlockDevice>) -> Option<(Self, u64)> {
        let size = dev.size_bytes();
        let bs = u64::from(dev.logical_block_size()).max(1);
        if size < PR_AREA_BYTES * 2 || !SLOT_BYTES.is_multiple_of(bs) {
            return None;
        }
        let area = (size - PR_AREA_BYTES) / bs * bs;
        Some((
            DeviceReservationStore {
                dev,
                area_offset_bytes: area,
                generation: Mutex::new(0),
            },
            area,
        ))
    }

    fn err(e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable(format!("reservation area on the device: {e}"))
    }

    /// Read one slot: `Some((generation, record))` if it holds a valid record.
    fn read_slot(&self, slot: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let mut buf = vec![0u8; SLOT_BYTES as usize];
        self.dev
            .read_at(&mut buf, self.area_offset_bytes + slot * SLOT_BYTES)
            .map_err(Self::err)?;
        if &buf[..8] != MAGIC {
            return Ok(None);
        }
        let le32 = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let version = le32(&buf[8..12]);
        let mut g = [0u8; 8];
        g.copy_from_slice(&buf[16..24]);
        let generation = u64::from_le_bytes(g);
        let len = le32(&buf[24..28]) as usize;
        let crc = le32(&buf[28..32]);
        if version != VERSION || len > SLOT_BYTES as usize - HEADER_BYTES {
            return Ok(None);
        }
        buf[28..32].fill(0);
        if crc32c::crc32c(&buf[..HEADER_BYTES + len]) != crc {
            return Ok(None);
        }
        Ok(Some((
            generation,
            buf[HEADER_BYTES..HEADER_BYTES + len].to_vec(),
        )))
    }
}

impl ReservationStore for DeviceReservationStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let a = self.read_slot(0)?;
        let b = self.read_slot(1)?;
        let newest = match (a, b) {
            (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *g = (*g).max(newest.as_ref().map_or(0, |n| n.0));
        Ok(newest.map(|n| n.1))
    }

    fn save(&self, record: &[u8]) -> Result<(), StoreError> {
        if record.len() > SLOT_BYTES as usize - HEADER_BYTES {
            return Err(StoreError::Unavailable(format!(
                "reservation record of {} bytes exceeds the {} bytes of a slot",
                record.len(),
                SLOT_BYTES as usize - HEADER_BYTES
            )));
        }
        let mut g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        if *g == 0 {
            // First save since start: learn the newest generation on the device.
            drop(g);
            self.load()?;
            g = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        }
        let generation = *g + 1;
        let bs = u64::from(self.dev.logical_block_size()).max(1) as usize;
        let total = (HEADER_BYTES + record.len()).div_ceil(bs) * bs;
        let mut buf = vec![0u8; total];
        buf[..8].copy_from_slice(MAGIC);
        buf[8..12].copy_from_slice(&VERSION.to_le_bytes());
        buf[16..24].copy_from_slice(&generation.to_le_bytes());
        buf[24..28].copy_from_slice(&(record.len() as u32).to_le_bytes());
        buf[HEADER_BYTES..HEADER_BYTES + record.len()].copy_from_slice(record);
        let crc = crc32c::crc32c(&buf[..HEADER_BYTES + record.len()]);
        buf[28..32].copy_from_slice(&crc.to_le_bytes());
        let slot = generation % 2;
        self.dev
            .write_at(&buf, self.area_offset_bytes + slot * SLOT_BYTES, true)
            .map_err(Self::err)?;
        *g = generation;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_blockdev::MemDevice;

    fn dev() -> Arc<dyn BlockDevice> {
        Arc::new(MemDevice::new(1 << 20, 512))
    }

    #[test]
    fn newest_record_wins_and_survives_reopen() {
        let d = dev();
        let (s, usable) = DeviceReservationStore::at_end(d.clone()).unwrap();
        assert_eq!(usable, (1 << 20) - PR_AREA_BYTES);
        assert_eq!(s.load().unwrap(), None);
        s.save(b"first").unwrap();
        s.save(b"second").unwrap();
        s.save(b"third").unwrap();
        let (s2, _) = DeviceReservationStore::at_end(d).unwrap();
        assert_eq!(s2.load().unwrap().as_deref(), Some(&b"third"[..]));
        s2.save(b"fourth").unwrap();
        assert_eq!(s2.load().unwrap().as_deref(), Some(&b"fourth"[..]));
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let d = dev();
        let (s, usable) = DeviceReservationStore::at_end(d.clone()).unwrap();
        s.save(b"older").unwrap(); // generation 1 → slot 1
        s.save(b"newer").unwrap(); // generation 2 → slot 0
                                   // Corrupt the newer slot's record byte.
        let mut b = vec![0u8; 512];
        d.read_at(&mut b, usable).unwrap();
        b[HEADER_BYTES] ^= 0xFF;
        d.write_at(&b, usable, false).unwrap();
        let (s2, _) = DeviceReservationStore::at_end(d).unwrap();
        assert_eq!(s2.load().unwrap().as_deref(), Some(&b"older"[..]));
    }

    #[test]
    fn oversized_records_and_tiny_devices_are_refused() {
        let (s, _) = DeviceReservationStore::at_end(dev()).unwrap();
        assert!(s.save(&vec![1u8; SLOT_BYTES as usize]).is_err());
        assert!(
            DeviceReservationStore::at_end(Arc::new(MemDevice::new(128 * 1024, 512))).is_none()
        );
    }
}
