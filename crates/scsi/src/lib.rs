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
//! LunMap::execute(&self, &ScsiRequest, &mut IoBuf data_in) -> ScsiResponse
//! LunMap::task_mgmt(&self, &Nexus, raw LUN field, TaskMgmt) -> Result<(), TmfError>
//! LunMap::nexus_lost(&self, &Nexus)
//! LunMap::decode_lun(raw) / LunMap::encode_lun(lun)
//! ```
//!
//! The engine is `Send + Sync`; `execute` may be called concurrently from any number
//! of threads and does block I/O synchronously on the calling thread, holding no lock
//! across it.
//!
//! ## Modules
//!
//! - [`cdb`]: CDB → [`Command`] (total, fuzzed).
//! - [`sense`]: fixed and descriptor sense data.
//! - `lun`: [`LogicalUnit`], [`LunConfig`], command dispatch and non-medium commands.
//! - `block`: READ/WRITE/VERIFY/ORWRITE/WRITE SAME (the data path).
//! - [`inquiry`], [`mode`], [`rsoc`]: INQUIRY/VPD, mode pages, supported opcodes.
//! - `ua`, `gate`: unit attention table, read-modify-write exclusion.
//! - `lunmap`: [`LunMap`], LUN addressing, REPORT LUNS, task management.
//! - [`fuzzing`]: a memory device and a one-call harness for fuzzers and property tests.

pub mod api;
mod block;
pub mod cdb;
pub mod fuzzing;
mod gate;
pub mod inquiry;
mod lun;
mod lunmap;
pub mod mode;
pub mod rsoc;
pub mod sense;
mod ua;

pub use api::*;
pub use cdb::{decode_cdb, CdbError, Command};
pub use lun::{limits, LogicalUnit, LunConfig};
pub use lunmap::{LunMap, LunMapError, LUN_MAX};
pub use sense::Sense;

#[cfg(test)]
mod tests;
