//! One logical unit: [`LunConfig`] (identity), [`LogicalUnit`] (device, mode
//! parameters, unit attentions per I_T nexus, the RESERVE(6) holder, persistent
//! reservations) and the command dispatcher that runs a decoded CDB against it.
//!
//! Owns: the order of checks every command goes through (capacity change → unit
//! attention → RESERVE(6) reservation → persistent reservation → command), the
//! non-medium commands (INQUIRY, MODE SENSE/SELECT, REQUEST SENSE, READ CAPACITY, RSOC,
//! RESERVE/RELEASE, START STOP UNIT, PERSISTENT RESERVE IN/OUT — the latter two
//! computed by [`crate::pr`]), the delivery of persistent reservation unit attentions
//! and PREEMPT AND ABORT events, and the transfer-length bookkeeping reported back to
//! the transport. Medium access commands live in `block.rs`.
//!
//! Concurrency: `execute` takes `&self` and is called from many sessions at once. No
//! lock is held across block I/O; the per-command locks are one shard of the unit
//! attention table and, only while a RESERVE(6) is held, the holder mutex, and only
//! while a persistent reservation exists, the persistent reservation state mutex. A
//! PERSISTENT RESERVE OUT holds the RESERVE(6) holder mutex (so that the two kinds of
//! reservation cannot appear at once) while its record is saved.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use twinsan_blockdev::{BlockDevice, BlockError, IoBuf};
use uuid::Uuid;

use crate::alua::AluaState;
use crate::api::{Nexus, PreemptAbort, PreemptAbortHook, ScsiRequest, ScsiResponse, ScsiStatus};
use crate::cdb::{CdbError, Command};
use crate::gate::WriteGate;
use crate::mode::{self, ModeContext};
use crate::pr::{self, PersistentReservations, PrRestore, PrState, ReservationStore, Scsi2};
use crate::sense::{asc, key, Sense};
use crate::ua::UaTable;
use crate::{inquiry, rsoc};

/// Transfer limits the engine enforces and reports in the block limits VPD page.
pub mod limits {
    /// Largest READ/WRITE/VERIFY/ORWRITE transfer, in bytes.
    pub const MAX_TRANSFER_BYTES: u64 = 8 << 20;
    /// Preferred transfer size, in bytes.
    pub const OPTIMAL_TRANSFER_BYTES: u64 = 1 << 20;
    /// Largest WRITE SAME, in bytes of medium written or unmapped (16 MiB: one command
    /// is written synchronously, so this bounds its latency; it also keeps the limit
    /// below 65536 blocks, where libiscsi's WriteSame16.Unmap would issue a WRITE(16)
    /// larger than the maximum transfer length).
    pub const MAX_WRITE_SAME_BYTES: u64 = 16 << 20;
    /// Chunk size WRITE SAME and VERIFY work in, in bytes.
    pub const CHUNK_BYTES: u64 = 1 << 20;

    /// [`MAX_TRANSFER_BYTES`] in blocks of `bs` bytes.
    pub fn max_transfer_blocks(bs: u32) -> u32 {
        (MAX_TRANSFER_BYTES / u64::from(bs.max(1))).max(1) as u32
    }
    /// [`OPTIMAL_TRANSFER_BYTES`] in blocks of `bs` bytes.
    pub fn optimal_transfer_blocks(bs: u32) -> u32 {
        (OPTIMAL_TRANSFER_BYTES / u64::from(bs.max(1))).max(1) as u32
    }
    /// [`MAX_WRITE_SAME_BYTES`] in blocks of `bs` bytes.
    pub fn max_write_same_blocks(bs: u32) -> u64 {
        (MAX_WRITE_SAME_BYTES / u64::from(bs.max(1))).max(1)
    }
}

/// Identity and policy of one LUN.
#[derive(Debug, Clone)]
pub struct LunConfig {
    /// Stable per-LUN identity; the NAA-6 designator and unit serial derive from it.
    pub uuid: Uuid,
    /// T10 vendor identification (8 characters on the wire, space padded).
    pub vendor: String,
    /// Product identification (16 characters on the wire).
    pub product: String,
    /// Product revision level (4 characters on the wire).
    pub revision: String,
    /// Write-protected LUN: WP bit set, writes fail with DATA PROTECT / WRITE PROTECTED.
    pub read_only: bool,
    /// Where the persistent reservation record is kept (see [`crate::pr`]). `None`:
    /// in memory only; then REPORT CAPABILITIES says PTPL_C=0 and APTPL=1 is refused.
    pub pr_store: Option<Arc<dyn ReservationStore>>,
    /// How a record found in `pr_store` is applied when the LU is created.
    pub pr_restore: PrRestore,
}

impl PartialEq for LunConfig {
    /// Field by field; stores compare by identity (the same `Arc`).
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
            && self.vendor == other.vendor
            && self.product == other.product
            && self.revision == other.revision
            && self.read_only == other.read_only
            && self.pr_restore == other.pr_restore
            && match (&self.pr_store, &other.pr_store) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

impl Eq for LunConfig {}

impl LunConfig {
    /// Defaults: vendor `TWINSAN`, product `VIRTUAL-DISK`, revision `0001`, writable,
    /// persistent reservations in memory only, power-on restore semantics.
    pub fn new(uuid: Uuid) -> Self {
        Self {
            uuid,
            vendor: "TWINSAN".into(),
            product: "VIRTUAL-DISK".into(),
            revision: "0001".into(),
            read_only: false,
            pr_store: None,
            pr_restore: PrRestore::PowerOn,
        }
    }
}

/// Why a command did not complete with GOOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fail {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// RESERVATION CONFLICT.
    Conflict,
}

impl From<Sense> for Fail {
    fn from(s: Sense) -> Self {
        Fail::Check(s)
    }
}

impl From<CdbError> for Fail {
    fn from(e: CdbError) -> Self {
        Fail::Check(e.sense())
    }
}

pub(crate) type CmdResult = Result<ScsiStatus, Fail>;

/// Whether a failed block operation was reading or writing (selects the sense code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IoKind {
    Read,
    Write,
}

/// Per-command state the handlers fill in.
pub(crate) struct Exec<'r, 'a> {
    pub req: &'r ScsiRequest<'a>,
    pub data_in: &'r mut IoBuf,
    /// SPDTL: bytes the command would transfer if EDTL did not limit it.
    pub xfer: Option<u64>,
}

impl Exec<'_, '_> {
    /// Return `bytes` as data-in, truncated to `alloc_len` and to the transport's limit.
    pub fn put(&mut self, bytes: &[u8], alloc_len: usize) {
        let n = bytes.len().min(alloc_len);
        self.xfer = Some(n as u64);
        let n_out = n.min(self.req.data_in_len_max as usize);
        self.data_in.clear();
        self.data_in.extend_from_slice(&bytes[..n_out]);
    }
}

/// Build a response from a handler result, leaving `data_in` consistent with it.
pub(crate) fn finish(
    result: CmdResult,
    xfer: Option<u64>,
    data_in: &mut IoBuf,
    descriptor_sense: bool,
) -> ScsiResponse {
    match result {
        Ok(status) => ScsiResponse {
            status,
            sense: None,
            data_in_len: data_in.len() as u32,
            cdb_transfer_len: xfer,
        },
        Err(fail) => {
            data_in.clear();
            let (status, sense) = match fail {
                Fail::Check(s) => (ScsiStatus::CheckCondition, Some(s.encode(descriptor_sense))),
                Fail::Conflict => (ScsiStatus::ReservationConflict, None),
            };
            ScsiResponse {
                status,
                sense,
                data_in_len: 0,
                cdb_transfer_len: xfer,
            }
        }
    }
}

/// The PREEMPT AND ABORT hook of one LU and the LUN number it is reported under.
#[derive(Default)]
struct AbortHookSlot(Mutex<Option<(u64, PreemptAbortHook)>>);

impl std::fmt::Debug for AbortHookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lun = lock(&self.0).as_ref().map(|(lun, _)| *lun);
        f.debug_struct("AbortHookSlot").field("lun", &lun).finish()
    }
}

/// One logical unit. See the module documentation.
#[derive(Debug)]
pub struct LogicalUnit {
    cfg: LunConfig,
    dev: Arc<dyn BlockDevice>,
    block_size: u32,
    d_sense: AtomicBool,
    pub(crate) ua: UaTable,
    reserved: AtomicBool,
    holder: Mutex<Option<u64>>,
    pr: PersistentReservations,
    abort_hook: AbortHookSlot,
    last_size: AtomicU64,
    /// `BlockDevice::activation_epoch` when the reservation record was last loaded.
    pr_epoch: AtomicU64,
    pub(crate) gate: WriteGate,
    mode_lock: Mutex<()>,
    /// Target port groups and their states (set once by [`crate::LunMap::with_alua`]).
    pub(crate) alua: OnceLock<Arc<AluaState>>,
    /// EXTENDED COPY state: reachable LUs, held copy status (see [`crate::xcopy`]).
    pub(crate) copy: crate::xcopy::CopyManager,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogicalUnit {
    /// A logical unit exporting `dev` with identity `cfg`. Persistent reservations are
    /// loaded from `cfg.pr_store` (a missing, unreadable or corrupt record gives a LU
    /// without registrations and an error in the log; this never fails).
    pub fn new(cfg: LunConfig, dev: Arc<dyn BlockDevice>) -> Self {
        let block_size = dev.logical_block_size().max(1);
        let last_size = AtomicU64::new(dev.size_bytes());
        let pr = PersistentReservations::new(cfg.uuid, cfg.pr_store.clone(), cfg.pr_restore);
        let pr_epoch = AtomicU64::new(dev.activation_epoch());
        Self {
            pr_epoch,
            cfg,
            dev,
            block_size,
            d_sense: AtomicBool::new(false),
            ua: UaTable::new(asc::POWER_ON_RESET),
            reserved: AtomicBool::new(false),
            holder: Mutex::new(None),
            pr,
            abort_hook: AbortHookSlot::default(),
            last_size,
            gate: WriteGate::new(),
            mode_lock: Mutex::new(()),
            alua: OnceLock::new(),
            copy: Default::default(),
        }
    }

    /// The exported device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    /// The LU's identity.
    pub fn config(&self) -> &LunConfig {
        &self.cfg
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of logical blocks now.
    pub fn num_blocks(&self) -> u64 {
        self.dev.size_bytes() / u64::from(self.block_size)
    }

    /// Whether sense data is returned in descriptor format (control page D_SENSE).
    pub fn descriptor_sense(&self) -> bool {
        self.d_sense.load(Ordering::Relaxed)
    }

    /// Whether writes are refused (config or device).
    pub fn write_protected(&self) -> bool {
        self.cfg.read_only || self.dev.read_only()
    }

    /// Establish CAPACITY DATA HAS CHANGED for every nexus if the device size changed
    /// since the last call (also checked at the start of every command).
    pub fn capacity_changed(&self) {
        let size = self.dev.size_bytes();
        let old = self.last_size.load(Ordering::Relaxed);
        if size != old
            && self
                .last_size
                .compare_exchange(old, size, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.ua.establish_all(asc::CAPACITY_DATA_CHANGED, None);
        }
    }

    /// Reload the persistent reservation record if the device became usable on this
    /// head since it was loaded (a replicated volume promoted here: the record
    /// replicated with the data is the current one). Checked at the start of every
    /// command.
    pub fn activation_changed(&self) {
        let e = self.dev.activation_epoch();
        let old = self.pr_epoch.load(Ordering::Relaxed);
        if e != old
            && self
                .pr_epoch
                .compare_exchange(old, e, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.pr.reload(PrRestore::Takeover);
        }
    }

    /// Number of I_T nexuses this LU has per-nexus state for.
    pub fn nexus_count(&self) -> usize {
        self.ua.len()
    }

    /// The I_T nexus holding a RESERVE(6) reservation, if any.
    pub fn reservation_holder(&self) -> Option<u64> {
        *lock(&self.holder)
    }

    /// Release a RESERVE(6) reservation held by `nexus_id` (or any holder if `None`).
    pub(crate) fn release_reservation(&self, nexus_id: Option<u64>) {
        let mut h = lock(&self.holder);
        self.release_locked(&mut h, nexus_id);
    }

    fn release_locked(&self, h: &mut Option<u64>, nexus_id: Option<u64>) {
        if nexus_id.is_none() || *h == nexus_id {
            *h = None;
            self.reserved.store(false, Ordering::Release);
        }
    }

    /// A copy of the persistent reservation state (registrations, reservation,
    /// PRGENERATION, APTPL).
    pub fn persistent_reservations(&self) -> PrState {
        self.pr.snapshot()
    }

    /// Report PREEMPT AND ABORT events of this LU to `hook`, as LUN number `lun`
    /// (replaces an earlier hook). See [`PreemptAbort`].
    pub fn set_preempt_abort_hook(&self, lun: u64, hook: PreemptAbortHook) {
        *lock(&self.abort_hook.0) = Some((lun, hook));
    }

    /// Logical unit reset: release RESERVE(6), reset mode parameters to defaults and
    /// establish the unit attention `code` for every nexus except `issuer` (which learns
    /// of the reset from the task management response).
    pub(crate) fn reset(&self, code: (u8, u8), issuer: Option<u64>) {
        self.release_reservation(None);
        self.d_sense.store(false, Ordering::Relaxed);
        self.copy.forget_all();
        self.ua.establish_all(code, issuer);
    }

    /// I_T nexus loss: forget the nexus, release its RESERVE(6) reservation. Persistent
    /// reservations and registrations are kept (SPC-4: they outlive the nexus).
    pub(crate) fn nexus_lost(&self, nexus_id: u64) {
        self.release_reservation(Some(nexus_id));
        self.copy.forget_nexus(nexus_id);
        self.ua.remove(nexus_id);
    }

    /// Whether `nexus` may access this LU for `access` under its RESERVE(6) and
    /// persistent reservations (EXTENDED COPY checks its copy targets with this).
    pub(crate) fn reservation_allows(&self, nexus: &Nexus, access: pr::Access) -> bool {
        if access != pr::Access::Always && self.reserved.load(Ordering::Acquire) {
            let holder = *lock(&self.holder);
            if holder.is_some() && holder != Some(nexus.id) {
                return false;
            }
        }
        self.pr.allows(nexus, access)
    }

    fn mode_context(&self) -> ModeContext {
        ModeContext {
            wce: self.dev.write_cache_enabled(),
            d_sense: self.descriptor_sense(),
            write_protected: self.write_protected(),
            num_blocks: self.num_blocks(),
            block_size: self.block_size,
        }
    }

    /// Map a block error to CHECK CONDITION sense.
    pub(crate) fn io_fail(&self, e: &BlockError, kind: IoKind) -> Fail {
        let bs = u64::from(self.block_size);
        let s = match e {
            BlockError::Io { offset_bytes, .. } => {
                let code = match kind {
                    IoKind::Read => asc::UNRECOVERED_READ_ERROR,
                    IoKind::Write => asc::WRITE_ERROR,
                };
                Sense::new(key::MEDIUM_ERROR, code).with_information(offset_bytes / bs)
            }
            BlockError::OutOfRange { .. } => Sense::illegal(asc::LBA_OUT_OF_RANGE),
            BlockError::ReadOnly => Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED),
            BlockError::NotReady(_) => Sense::new(key::NOT_READY, asc::LUN_NOT_READY),
            BlockError::Unsupported(_) => Sense::illegal(asc::INVALID_OPCODE),
            BlockError::Unaligned { .. } | BlockError::Open { .. } => {
                Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE)
            }
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(uuid = %self.cfg.uuid, error = %e, "block I/O failed");
        }
        Fail::Check(s)
    }

    /// Run one command (already decoded) from `req.nexus`.
    pub(crate) fn execute(
        &self,
        req: &ScsiRequest<'_>,
        decoded: Result<Command, CdbError>,
        data_in: &mut IoBuf,
    ) -> ScsiResponse {
        let nexus = req.nexus.id;
        self.capacity_changed();
        self.activation_changed();

        // Unit attention: reported on every command but INQUIRY, REPORT LUNS and
        // REQUEST SENSE (which returns it as its parameter data).
        let exempt = matches!(
            decoded,
            Ok(Command::Inquiry { .. } | Command::ReportLuns { .. } | Command::RequestSense { .. })
        );
        if let Some(code) = self.ua.check_nexus(req.nexus, !exempt) {
            let s = Sense::new(key::UNIT_ATTENTION, code);
            return finish(Err(Fail::Check(s)), None, data_in, self.descriptor_sense());
        }

        // ALUA: the asymmetric access state of the command's target port group.
        if let (Some(alua), Ok(cmd)) = (self.alua.get(), &decoded) {
            if let Err(s) = alua.check(req.nexus.relative_port_id, cmd) {
                return finish(Err(Fail::Check(s)), None, data_in, self.descriptor_sense());
            }
        }

        // RESERVE(6): other nexuses may only run a few commands; PERSISTENT RESERVE
        // IN/OUT conflict for every nexus, the holder included (SPC-2 5.5.1).
        if self.reserved.load(Ordering::Acquire) {
            let pr_cmd = matches!(
                decoded,
                Ok(Command::PersistentReserveIn { .. } | Command::PersistentReserveOut { .. })
            );
            let allowed = decoded
                .as_ref()
                .map(Command::allowed_under_reservation)
                .unwrap_or(false);
            if pr_cmd || !allowed {
                let holder = *lock(&self.holder);
                if holder.is_some() && (pr_cmd || holder != Some(nexus)) {
                    return finish(Err(Fail::Conflict), None, data_in, self.descriptor_sense());
                }
            }
        }

        // Persistent reservation (a flag check unless one exists).
        if let Ok(cmd) = &decoded {
            if !self.pr.allows(req.nexus, pr::access_of(cmd)) {
                return finish(Err(Fail::Conflict), None, data_in, self.descriptor_sense());
            }
        }

        let mut ex = Exec {
            req,
            data_in,
            xfer: None,
        };
        let result = match decoded {
            Ok(cmd) => self.run(cmd, &mut ex),
            Err(e) => Err(e.into()),
        };
        let xfer = ex.xfer;
        finish(result, xfer, data_in, self.descriptor_sense())
    }

    fn run(&self, cmd: Command, ex: &mut Exec<'_, '_>) -> CmdResult {
        match cmd {
            Command::Read(rw) => self.read(rw, ex),
            Command::Write(rw) => self.write(rw, ex),
            Command::TestUnitReady => Ok(ScsiStatus::Good),
            Command::Inquiry {
                evpd,
                page_code,
                alloc_len,
            } => self.inquiry(evpd, page_code, alloc_len, ex),
            Command::RequestSense { desc, alloc_len } => {
                let s = match self.ua.check(ex.req.nexus.id, true) {
                    Some(code) => Sense::new(key::UNIT_ATTENTION, code),
                    // A port that cannot process commands says why (SPC-4 6.39).
                    None => self
                        .alua
                        .get()
                        .and_then(|a| a.port_state(ex.req.nexus.relative_port_id))
                        .and_then(|(_, st)| st.not_ready_sense())
                        .unwrap_or(Sense::new(key::NO_SENSE, asc::NO_ADDITIONAL_SENSE)),
                };
                ex.put(&s.encode(desc), usize::from(alloc_len));
                Ok(ScsiStatus::Good)
            }
            Command::ModeSense {
                ten,
                dbd,
                llbaa,
                pc,
                page_code,
                subpage_code,
                alloc_len,
            } => {
                let data = mode::mode_sense(
                    &self.mode_context(),
                    ten,
                    dbd,
                    llbaa,
                    pc,
                    page_code,
                    subpage_code,
                )?;
                ex.put(&data, usize::from(alloc_len));
                Ok(ScsiStatus::Good)
            }
            Command::ModeSelect {
                ten,
                pf,
                sp,
                param_len,
            } => self.mode_select(ten, pf, sp, param_len, ex),
            Command::ReadCapacity10 { lba, pmi } => {
                if !pmi && lba != 0 {
                    return Err(Sense::invalid_cdb(2, Some(7)).into());
                }
                let last = self.num_blocks().saturating_sub(1);
                let mut b = [0u8; 8];
                b[0..4].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
                b[4..8].copy_from_slice(&self.block_size.to_be_bytes());
                ex.put(&b, 8);
                Ok(ScsiStatus::Good)
            }
            Command::ReadCapacity16 { alloc_len } => {
                // PROT_EN=0; LBPME/LBPRZ and the exponent: see `thin.rs`.
                let b = crate::thin::read_capacity16(
                    self.dev.as_ref(),
                    self.num_blocks(),
                    self.block_size,
                );
                ex.put(&b, alloc_len as usize);
                Ok(ScsiStatus::Good)
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                service_action,
                alloc_len,
            } => {
                let data = match self.alua.get() {
                    Some(a) => crate::alua::rsoc_report(
                        a.explicit(),
                        rctd,
                        options,
                        opcode,
                        service_action,
                    )?,
                    None => rsoc::report(rctd, options, opcode, service_action)?,
                };
                // UNMAP only on thin-provisioned LUs.
                let data = crate::thin::filter_rsoc(self.dev.as_ref(), data, rctd, options, opcode);
                ex.put(&data, alloc_len as usize);
                Ok(ScsiStatus::Good)
            }
            Command::ReportTargetPortGroups { format, alloc_len } => {
                self.report_target_port_groups(format, alloc_len, ex)
            }
            Command::SetTargetPortGroups { param_len } => {
                self.set_target_port_groups(param_len, ex)
            }
            Command::Reserve6 => {
                let nexus = ex.req.nexus.id;
                let mut h = lock(&self.holder);
                match self.pr.scsi2(ex.req.nexus) {
                    Scsi2::Noop => return Ok(ScsiStatus::Good),
                    Scsi2::Conflict => return Err(Fail::Conflict),
                    Scsi2::Proceed => {}
                }
                match *h {
                    Some(other) if other != nexus => Err(Fail::Conflict),
                    _ => {
                        *h = Some(nexus);
                        self.reserved.store(true, Ordering::Release);
                        Ok(ScsiStatus::Good)
                    }
                }
            }
            Command::Release6 => {
                let mut h = lock(&self.holder);
                match self.pr.scsi2(ex.req.nexus) {
                    Scsi2::Noop => Ok(ScsiStatus::Good),
                    Scsi2::Conflict => Err(Fail::Conflict),
                    Scsi2::Proceed => {
                        self.release_locked(&mut h, Some(ex.req.nexus.id));
                        Ok(ScsiStatus::Good)
                    }
                }
            }
            Command::PersistentReserveIn {
                service_action,
                alloc_len,
            } => {
                ex.put(&self.pr.prin(service_action), usize::from(alloc_len));
                Ok(ScsiStatus::Good)
            }
            Command::PersistentReserveOut {
                service_action,
                scope,
                pr_type,
                param_len,
            } => self.persistent_reserve_out(service_action, scope, pr_type, param_len, ex),
            Command::StartStopUnit { loej, .. } => {
                // No removable medium: nothing to load or eject. START/STOP and power
                // conditions are accepted; the LU stays ready.
                if loej {
                    return Err(Sense::invalid_cdb(4, Some(1)).into());
                }
                Ok(ScsiStatus::Good)
            }
            Command::OrWrite(rw) => self.orwrite(rw, ex),
            Command::Verify(v) => self.verify(v, ex),
            Command::WriteAndVerify(v) => self.write_and_verify(v, ex),
            Command::WriteSame(ws) => self.write_same(ws, ex),
            Command::CompareAndWrite(rw) => self.compare_and_write(rw, ex),
            Command::Unmap { anchor, param_len } => self.unmap(anchor, param_len, ex),
            Command::GetLbaStatus { lba, alloc_len } => self.get_lba_status(lba, alloc_len, ex),
            Command::ReadDefectData(args) => self.read_defect_data(args, ex),
            Command::ExtendedCopy { param_len } => self.extended_copy(param_len, ex),
            Command::ReceiveCopyResults {
                service_action,
                list_id,
                alloc_len,
            } => self.receive_copy_results(service_action, list_id, alloc_len, ex),
            Command::PreFetch { lba, blocks, .. } => {
                self.check_range_to_end(lba, blocks)?;
                // No cache to load: GOOD (not CONDITION MET) per SBC-3 5.10.
                Ok(ScsiStatus::Good)
            }
            Command::SynchronizeCache { lba, blocks, .. } => {
                self.check_range_to_end(lba, blocks)?;
                self.dev
                    .flush()
                    .map_err(|e| self.io_fail(&e, IoKind::Write))?;
                Ok(ScsiStatus::Good)
            }
            Command::ReportLuns { .. } => {
                // Answered by the LunMap before it reaches a LU.
                Err(Sense::illegal(asc::INVALID_OPCODE).into())
            }
            Command::Unsupported {
                opcode,
                service_action: Some(_),
            } if opcode == crate::cdb::op::MAINTENANCE_OUT
                && self.alua.get().is_some_and(|a| a.explicit()) =>
            {
                // MAINTENANCE OUT has a supported service action (STPG): field pointer.
                Err(Sense::invalid_cdb(1, Some(4)).into())
            }
            Command::Unsupported {
                opcode,
                service_action,
            } => Err(unsupported_sense(opcode, service_action).into()),
        }
    }

    fn persistent_reserve_out(
        &self,
        service_action: u8,
        scope: u8,
        pr_type: u8,
        param_len: u32,
        ex: &mut Exec<'_, '_>,
    ) -> CmdResult {
        ex.xfer = Some(u64::from(param_len));
        let Some(params) = usize::try_from(param_len)
            .ok()
            .and_then(|len| ex.req.data_out.get(..len))
        else {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        };
        let req = pr::ProutReq {
            service_action,
            scope,
            pr_type,
            params,
        };
        let notices = {
            // No RESERVE(6) may appear while the persistent state changes.
            let h = lock(&self.holder);
            if h.is_some() {
                return Err(Fail::Conflict);
            }
            self.pr.prout(ex.req.nexus, &req)?
        };
        self.deliver(ex.req.nexus, notices);
        Ok(ScsiStatus::Good)
    }

    /// Establish the unit attentions a PERSISTENT RESERVE OUT asked for (every
    /// connected nexus covered by the named registrations except the issuer) and report
    /// PREEMPT AND ABORT victims to the hook.
    fn deliver(&self, issuer: &Nexus, notices: pr::Notices) {
        for (code, ports) in &notices.ua {
            self.ua
                .establish_matching(*code, Some(issuer.id), |port, rel| {
                    ports.iter().any(|p| p.matches(port, rel))
                });
        }
        if notices.abort.is_empty() {
            return;
        }
        let mut ids = self
            .ua
            .ids_matching(|port, rel| notices.abort.iter().any(|p| p.matches(port, rel)));
        ids.retain(|&id| id != issuer.id);
        if ids.is_empty() {
            return;
        }
        let hook = lock(&self.abort_hook.0).clone();
        match hook {
            Some((lun, hook)) => hook(&PreemptAbort {
                lun,
                issuer: issuer.id,
                nexus_ids: ids,
            }),
            None => tracing::debug!(uuid = %self.cfg.uuid, nexuses = ?ids,
                "PREEMPT AND ABORT: no hook set, tasks of preempted nexuses not aborted"),
        }
    }

    fn inquiry(
        &self,
        evpd: bool,
        page_code: u8,
        alloc_len: u16,
        ex: &mut Exec<'_, '_>,
    ) -> CmdResult {
        if !evpd {
            if page_code != 0 {
                return Err(Sense::invalid_cdb(2, Some(7)).into());
            }
            let mut std_data = inquiry::standard(&self.cfg);
            if let Some(a) = self.alua.get() {
                std_data[5] |= a.tpgs_bits();
            }
            ex.put(&std_data, usize::from(alloc_len));
            return Ok(ScsiStatus::Good);
        }
        let Some(mut page) = inquiry::vpd_page(
            page_code,
            &self.cfg,
            self.dev.as_ref(),
            ex.req.nexus.relative_port_id,
        ) else {
            return Err(Sense::invalid_cdb(2, Some(7)).into());
        };
        if page_code == 0x83 {
            if let Some(a) = self.alua.get() {
                a.append_tpg_designator(&mut page, ex.req.nexus.relative_port_id);
            }
        }
        ex.put(&page, usize::from(alloc_len));
        Ok(ScsiStatus::Good)
    }

    fn mode_select(
        &self,
        ten: bool,
        pf: bool,
        sp: bool,
        param_len: u16,
        ex: &mut Exec<'_, '_>,
    ) -> CmdResult {
        if sp {
            return Err(Sense::invalid_cdb(1, Some(0)).into());
        }
        let len = usize::from(param_len);
        ex.xfer = Some(len as u64);
        if len == 0 {
            return Ok(ScsiStatus::Good);
        }
        if !pf {
            return Err(Sense::invalid_cdb(1, Some(4)).into());
        }
        let Some(params) = ex.req.data_out.get(..len) else {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR).into());
        };
        let _serialize = lock(&self.mode_lock);
        let changes = mode::mode_select(&self.mode_context(), ten, params)?;
        if let Some(d) = changes.d_sense {
            if self.d_sense.swap(d, Ordering::Relaxed) != d {
                self.ua
                    .establish_all(asc::MODE_PARAMETERS_CHANGED, Some(ex.req.nexus.id));
            }
        }
        Ok(ScsiStatus::Good)
    }
}

/// Sense for a command the engine does not implement: INVALID FIELD IN CDB pointing at
/// the service action for an unsupported service action of an opcode that has
/// implemented ones, INVALID COMMAND OPERATION CODE otherwise.
pub(crate) fn unsupported_sense(opcode: u8, service_action: Option<u16>) -> Sense {
    if service_action.is_some() && rsoc::opcode_has_service_actions(opcode) {
        Sense::invalid_cdb(1, Some(4))
    } else {
        Sense::illegal(asc::INVALID_OPCODE)
    }
}
