//! The types a transport uses to talk to the SCSI engine.

/// Identifies one I_T nexus (initiator port ↔ target port). The transport assigns it
/// (iSCSI: one per session, from the initiator name + ISID and the target portal group).
///
/// Persistent reservation registrations belong to the pair (`initiator_port`,
/// `relative_port_id`), which must therefore name the same I_T nexus in every session
/// (and, for a takeover, on both heads); `id` only tells sessions apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Transport-unique id of this nexus (stable for the life of the session).
    pub id: u64,
    /// Initiator port name, e.g. `iqn.1994-05.com.redhat:host,i,0x00023d000001`.
    pub initiator_port: String,
    /// Relative target port identifier (1-based; one per target portal group).
    pub relative_port_id: u16,
}

/// SAM task attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    /// Untagged.
    Untagged,
    /// Simple.
    Simple,
    /// Ordered.
    Ordered,
    /// Head of queue.
    HeadOfQueue,
    /// ACA.
    Aca,
}

/// One SCSI command as the transport received it.
#[derive(Debug)]
pub struct ScsiRequest<'a> {
    /// Who sent it.
    pub nexus: &'a Nexus,
    /// The 8-byte SAM LUN field as received (single-level flat or peripheral addressing).
    pub lun: u64,
    /// The CDB (6 to 16 bytes; longer CDBs from additional header segments allowed).
    pub cdb: &'a [u8],
    /// Data the initiator sent with the command (write data / parameter lists). Its
    /// length is what the transport actually received (iSCSI: up to the expected data
    /// transfer length).
    pub data_out: &'a [u8],
    /// The expected data transfer length for data-in (iSCSI EDTL for READ direction, or
    /// the bidirectional read length). The engine never returns more data-in than this.
    pub data_in_len_max: u32,
    /// Task attribute.
    pub attr: TaskAttr,
}

/// SCSI status codes (SAM-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    /// GOOD.
    Good = 0x00,
    /// CHECK CONDITION (sense data attached).
    CheckCondition = 0x02,
    /// CONDITION MET.
    ConditionMet = 0x04,
    /// BUSY.
    Busy = 0x08,
    /// RESERVATION CONFLICT.
    ReservationConflict = 0x18,
    /// TASK SET FULL.
    TaskSetFull = 0x28,
    /// ACA ACTIVE.
    AcaActive = 0x30,
    /// TASK ABORTED.
    TaskAborted = 0x40,
}

/// What the engine answers to one command.
#[derive(Debug, Clone)]
pub struct ScsiResponse {
    /// SCSI status.
    pub status: ScsiStatus,
    /// Sense data bytes (fixed or descriptor format), present with CHECK CONDITION.
    pub sense: Option<Vec<u8>>,
    /// Number of data-in bytes placed in the caller's buffer (≤ `data_in_len_max`).
    pub data_in_len: u32,
    /// The number of bytes the command would transfer (data-in or data-out) if the
    /// transport's expected data transfer length did not limit it — iSCSI's SPDTL: for
    /// READ/WRITE the CDB's transfer length in bytes, for commands with an allocation
    /// length `min(allocation length, available data)`. `None` for commands without a
    /// transfer. The transport compares it with its expected data transfer length to
    /// report residual overflow/underflow (also on CHECK CONDITION).
    pub cdb_transfer_len: Option<u64>,
}

/// Task management functions a transport forwards to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskMgmt {
    /// ABORT TASK SET for one nexus on one LUN.
    AbortTaskSet,
    /// CLEAR TASK SET (all nexuses) on one LUN.
    ClearTaskSet,
    /// LOGICAL UNIT RESET.
    LunReset,
    /// TARGET WARM RESET (all LUNs).
    TargetWarmReset,
    /// TARGET COLD RESET (all LUNs).
    TargetColdReset,
}

/// Why a task management function could not be performed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TmfError {
    /// The LUN field does not address a configured LUN (iSCSI: "LUN does not exist").
    #[error("no such LUN (LUN field {0:#018x})")]
    NoSuchLun(u64),
    /// The function is not supported (iSCSI: "task management function not supported").
    #[error("task management function not supported")]
    NotSupported,
}

/// What PERSISTENT RESERVE OUT with the PREEMPT AND ABORT service action asks the
/// transport to do: abort every task of these I_T nexuses on this LUN (SPC-4
/// "Preempting and aborting": as if each of them had sent ABORT TASK SET; with TAS=0 the
/// aborted tasks get no status).
///
/// The engine runs every command to completion inside [`crate::LunMap::execute`], so
/// only the transport knows which tasks are queued or in flight; it receives this
/// through the hook set with [`crate::LunMap::set_preempt_abort_hook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreemptAbort {
    /// LUN number (as in [`crate::LunMap::get`], not the raw SAM LUN field).
    pub lun: u64,
    /// The nexus that sent the PREEMPT AND ABORT (its tasks are not aborted).
    pub issuer: u64,
    /// [`Nexus::id`]s of the connected I_T nexuses whose registrations were preempted,
    /// ascending, never containing `issuer`.
    pub nexus_ids: Vec<u64>,
}

/// Callback for [`PreemptAbort`] events.
///
/// Called on the thread executing the PERSISTENT RESERVE OUT, after the new
/// reservation state is durable and in effect and before the command's response is
/// returned, with no engine lock held. It must not block for long (queue the aborts
/// and return); it may call back into the engine.
pub type PreemptAbortHook = std::sync::Arc<dyn Fn(&PreemptAbort) + Send + Sync>;
