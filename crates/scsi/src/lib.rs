//! Transport-free SCSI engine (SPC-4 / SBC-3) for twinsan disk LUNs.
//!
//! Owns: CDB decoding, sense data, unit attentions, INQUIRY/VPD, mode pages, SPC-2
//! RESERVE/RELEASE and SPC-4 persistent reservations (with their durable record), and
//! the mapping of block commands onto a [`twinsan_blockdev::BlockDevice`]. A transport
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
//! LunMap::set_preempt_abort_hook(&self, PreemptAbortHook)   // optional
//! LunMap::with_alua(self, Arc<AluaState>) -> LunMap           // optional (ALUA)
//! LogicalUnit::set_cluster_range_lock(&self, Arc<dyn ClusterRangeLock>) // optional
//! ```
//!
//! The engine is `Send + Sync`; `execute` may be called concurrently from any number
//! of threads and does block I/O synchronously on the calling thread, holding no lock
//! across it.
//!
//! Persistent reservations need two things from the transport: a [`Nexus`] whose
//! `initiator_port` / `relative_port_id` identify the I_T nexus across sessions
//! (registrations are keyed by them, not by `Nexus::id`), and, for PREEMPT AND ABORT,
//! a [`PreemptAbortHook`] that aborts the listed nexuses' tasks on that LUN. Their
//! durability comes from [`LunConfig::pr_store`] (a [`ReservationStore`]: in memory,
//! a sidecar file, or a replicated store).
//!
//! ## Modules
//!
//! - [`cdb`]: CDB → [`Command`] (total, fuzzed).
//! - [`sense`]: fixed and descriptor sense data.
//! - `lun`: [`LogicalUnit`], [`LunConfig`], command dispatch and non-medium commands.
//! - `block`: READ/WRITE/VERIFY/ORWRITE (the data path).
//! - [`caw`]: COMPARE AND WRITE, atomic through the write gate; a [`ClusterRangeLock`]
//!   extends that atomicity to the peer head (dual-primary).
//! - [`thin`]: thin provisioning — UNMAP, WRITE SAME (with the UNMAP bit), GET LBA
//!   STATUS, LBPME/LBPRZ in READ CAPACITY(16), VPD 0xB2 and the UNMAP fields of 0xB0.
//!   A LU is thin exactly when its device supports discard that reads back zeros
//!   ([`twinsan_blockdev::BlockDevice::supports_discard`]: files, memory); others
//!   report full provisioning.
//! - [`xcopy`]: the copy manager — EXTENDED COPY (LID1: identification CSCD
//!   descriptors naming LUs of the same target by NAA designator, block-to-block
//!   segments) and RECEIVE COPY RESULTS (COPY STATUS, OPERATING PARAMETERS).
//! - [`defect`]: READ DEFECT DATA(10/12) (an empty defect list).
//! - [`inquiry`], [`mode`], [`rsoc`]: INQUIRY/VPD, mode pages, supported opcodes.
//! - [`pr`]: persistent reservations: PERSISTENT RESERVE IN/OUT, access rules, the
//!   versioned record ([`pr::record`]) and its stores ([`pr::store`]).
//! - `ua`, `gate`: unit attention table, read-modify-write exclusion (one range lock
//!   for ORWRITE, COMPARE AND WRITE and every write).
//! - `lunmap`: [`LunMap`], LUN addressing, REPORT LUNS, task management.
//! - [`alua`]: target port groups and asymmetric access states ([`AluaState`], shared
//!   by the LUs of a target through [`LunMap::with_alua`]), REPORT/SET TARGET PORT
//!   GROUPS and the per-state command gate. [`AluaState::set`] is the interface the HA
//!   manager drives.
//! - [`fuzzing`]: a memory device and a one-call harness for fuzzers and property tests.

pub mod alua;
pub mod api;
mod block;
pub mod caw;
pub mod cdb;
pub mod defect;
pub mod fuzzing;
mod gate;
pub mod inquiry;
mod lun;
mod lunmap;
pub mod mode;
pub mod pr;
pub mod rsoc;
pub mod sense;
pub mod thin;
mod ua;
pub mod xcopy;

pub use alua::{AccessState, AluaConfig, AluaError, AluaState, PortGroupConfig, PortGroupStatus};
pub use api::*;
pub use cdb::{decode_cdb, CdbError, Command};
pub use gate::{ClusterLockError, ClusterRangeGuard, ClusterRangeLock};
pub use lun::{limits, LogicalUnit, LunConfig};
pub use lunmap::{LunMap, LunMapError, LUN_MAX};
pub use pr::{
    DeviceReservationStore, FileReservationStore, MemReservationStore, PrRestore, PrState, PrType,
    ReservationStore, StoreError, PR_AREA_BYTES,
};
pub use sense::Sense;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
