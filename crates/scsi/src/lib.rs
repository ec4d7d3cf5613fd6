//! Transport-free SCSI engine (SPC-4 / SBC-3) for twinsan disk LUNs.
//!
//! Owns: CDB decoding, sense data, unit attentions, INQUIRY/VPD, mode pages, and the
//! mapping of block commands onto a [`twinsan_blockdev::BlockDevice`]. A transport
//! (the iSCSI target) hands each command to [`LunMap::execute`] together with the data
//! the initiator sent, and gets back a status, sense and data for the initiator.
//!
//! May not touch: sockets, PDUs, sessions (those belong to the transport).
//!
//! ## Interface for transports (stable; the iSCSI crate depends on it)
//!
//! ```text
//! LunMap::new(Vec<(u64 lun, Arc<LogicalUnit>)>)
//! LunMap::execute(&self, &ScsiRequest, &mut Vec<u8> data_in) -> ScsiResponse
//! LunMap::lun_reset(lun, ...) / LunMap::nexus_loss(nexus) / ...
//! ```

pub mod api;

pub use api::*;
