//! The SCSI engine as the iSCSI session sees it.
//!
//! Owns: the [`ScsiEngine`] trait (what a session calls to execute commands and task
//! management) and its implementation for [`twinsan_scsi::LunMap`]. Tests plug in small
//! in-memory engines through the same trait.
//!
//! May not touch: PDUs or session state.

use twinsan_blockdev::IoBuf;
use twinsan_scsi::{LunMap, Nexus, ScsiRequest, ScsiResponse, TaskMgmt, TmfError};

/// Outcome of a task management function in the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfOutcome {
    /// Done.
    Complete,
    /// The LUN field does not address a LUN.
    NoSuchLun,
    /// Not supported.
    NotSupported,
}

/// A SCSI engine: synchronous, shared between connections.
pub trait ScsiEngine: Send + Sync + std::fmt::Debug {
    /// Execute one command; fill `data_in` with at most `req.data_in_len_max` bytes.
    fn execute(&self, req: &ScsiRequest<'_>, data_in: &mut IoBuf) -> ScsiResponse;
    /// A task management function for the LUN field `lun` (raw SAM format).
    fn task_mgmt(&self, nexus: &Nexus, lun: u64, f: TaskMgmt) -> TmfOutcome;
    /// The I_T nexus is gone (session closed).
    fn nexus_lost(&self, nexus: &Nexus);
    /// Make completed writes of every LUN durable (used at shutdown).
    fn flush_all(&self) {}
}

impl ScsiEngine for LunMap {
    fn execute(&self, req: &ScsiRequest<'_>, data_in: &mut IoBuf) -> ScsiResponse {
        LunMap::execute(self, req, data_in)
    }

    fn task_mgmt(&self, nexus: &Nexus, lun: u64, f: TaskMgmt) -> TmfOutcome {
        match LunMap::task_mgmt(self, nexus, lun, f) {
            Ok(()) => TmfOutcome::Complete,
            Err(TmfError::NoSuchLun(_)) => TmfOutcome::NoSuchLun,
            Err(TmfError::NotSupported) => TmfOutcome::NotSupported,
        }
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        LunMap::nexus_lost(self, nexus);
    }

    fn flush_all(&self) {
        for (n, lu) in self.luns() {
            if let Err(e) = lu.device().flush() {
                tracing::warn!(lun = n, error = %e, "flush at shutdown failed");
            }
        }
    }
}
