//! Full feature phase of one connection (RFC 7143 ERL 0), sans-IO.
//!
//! Owns: everything one connection does after login: CmdSN/ExpCmdSN/MaxCmdSN windowing
//! (RFC 1982 serial arithmetic), StatSN, the task table (one entry per outstanding ITT),
//! immediate and unsolicited data, R2T generation (MaxBurstLength, MaxOutstandingR2T,
//! R2TSN, TTT), Data-Out assembly into per-task [`IoBuf`]s from a small per-connection
//! pool, Data-In splitting with phase-collapsed status, SCSI Response with sense and
//! residuals, NOP-In/Out (echo and target pings), task management, Logout, Text
//! (SendTargets and full-feature negotiation), Reject, SNACK refusal and the logout
//! request Async Message.
//!
//! Inputs: [`Connection::on_pdu`], [`Connection::run_ready`] (executes the commands whose
//! data is complete, synchronously, through a [`ScsiEngine`]), [`Connection::on_tick`]
//! (time passes), [`Connection::request_logout`]. Outputs: encoded PDUs in
//! [`Connection::take_output`], and [`Connection::close_reason`].
//!
//! May not touch: sockets, clocks (time is passed in), the OS random source, block
//! devices (only through the engine). One task owns one `Connection`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinsan_blockdev::IoBuf;
use twinsan_scsi::{LunMap, Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TaskAttr, TaskMgmt};

use crate::engine::{ScsiEngine, TmfOutcome};
use crate::login::SessionType;
use crate::pdu::{
    self, encode_pdu, encode_pdu_parts, sn_le, sn_lt, AsyncMsgBhs, DataInBhs, DataOutBhs, Digests,
    LogoutReqBhs, LogoutRespBhs, NopInBhs, NopOutBhs, Opcode, Pdu, R2tBhs, RejectBhs, RejectReason,
    ScsiCommandBhs, ScsiResponseBhs, TextReqBhs, TextRespBhs, TmfReqBhs, TmfRespBhs, BHS_LEN,
    FLAG_CONTINUE, FLAG_FINAL, RESERVED_TAG,
};
use crate::text::{self, Negotiator, OperationalParams, Pair, Phase};

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Commands in flight per session (window size).
    pub queue_depth: u32,
    /// Send a NOP-In ping after this much silence from the initiator.
    pub nop_in_interval: Duration,
    /// Drop the connection when a ping stays unanswered this long.
    pub nop_in_timeout: Duration,
    /// Largest expected data transfer length buffered for one command.
    pub max_transfer_len_bytes: u32,
    /// Largest total of data buffers held for outstanding commands.
    pub max_inflight_bytes: u64,
    /// Largest total of idle buffers kept in the pool.
    pub pool_bytes_max: usize,
    /// Portal group tag of this connection's portal.
    pub tpgt: u16,
    /// Local address of the connection (for SendTargets with wildcard portals).
    pub local_addr: Option<SocketAddr>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            queue_depth: 128,
            nop_in_interval: Duration::from_millis(5000),
            nop_in_timeout: Duration::from_millis(15000),
            max_transfer_len_bytes: 64 * 1024 * 1024,
            max_inflight_bytes: 512 * 1024 * 1024,
            pool_bytes_max: 64 * 1024 * 1024,
            tpgt: 1,
            local_addr: None,
        }
    }
}

/// Which targets a SendTargets asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTargetsQuery<'a> {
    /// Every target the initiator may see.
    All,
    /// One target by name.
    Target(&'a str),
}

/// Discovery information, provided by the server.
pub trait DiscoveryEnv: Send + Sync {
    /// `TargetName=`/`TargetAddress=` pairs for the query, filtered by the initiator's ACLs.
    fn send_targets(
        &self,
        initiator: &str,
        query: SendTargetsQuery<'_>,
        local: Option<SocketAddr>,
    ) -> Vec<Pair>;
}

/// Why the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Logout completed.
    Logout,
    /// NOP-In ping not answered in time.
    PingTimeout,
    /// TARGET COLD RESET.
    ColdReset,
    /// Unrecoverable protocol error (ERL 0).
    ProtocolError(String),
    /// The server asked the initiator to log out and the grace period ended.
    Shutdown,
}

/// Counters for status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// SCSI commands executed.
    pub commands: u64,
    /// Bytes received as write data.
    pub bytes_out: u64,
    /// Bytes sent as read data.
    pub bytes_in: u64,
    /// Reject PDUs sent.
    pub rejects: u64,
}

#[derive(Debug)]
struct R2tSeq {
    ttt: u32,
    offset: u32,
    end: u32,
    next: u32,
    data_sn: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TaskState {
    /// Waiting for write data.
    Collecting,
    /// All data present; waiting to run.
    Ready,
    /// Handed to the engine.
    Executing,
}

#[derive(Debug)]
struct Task {
    itt: u32,
    lun: u64,
    cmd_sn: u32,
    immediate: bool,
    attr: TaskAttr,
    read: bool,
    write: bool,
    edtl: u32,
    bidi_read_len: Option<u32>,
    cdb: [u8; 16],
    cdb_long: Option<Vec<u8>>,
    buf: IoBuf,
    unsol_end: u32,
    unsol_next: u32,
    unsol_data_sn: u32,
    unsol_done: bool,
    r2t_next: u32,
    r2ts: Vec<R2tSeq>,
    r2t_sn: u32,
    state: TaskState,
    counted: bool,
    charged_bytes: u64,
    /// Aborted while executing: the result is dropped when the engine returns.
    aborted: bool,
}

impl Task {
    fn data_complete(&self) -> bool {
        !self.write || (self.unsol_done && self.r2t_next >= self.edtl && self.r2ts.is_empty())
    }
}

/// One command to run on the engine, owning everything it needs (so it can run on a
/// worker thread while the connection keeps reading).
pub struct ExecJob {
    itt: u32,
    engine: Arc<dyn ScsiEngine>,
    nexus: Arc<Nexus>,
    lun: u64,
    cdb: [u8; 16],
    cdb_long: Option<Vec<u8>>,
    data_out: IoBuf,
    data_in: IoBuf,
    data_in_len_max: u32,
    attr: TaskAttr,
}

impl std::fmt::Debug for ExecJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecJob")
            .field("itt", &self.itt)
            .field("lun", &self.lun)
            .finish()
    }
}

impl ExecJob {
    /// Execute synchronously (blocks on block I/O).
    pub fn run(mut self) -> ExecDone {
        let cdb: &[u8] = match &self.cdb_long {
            Some(c) => c,
            None => &self.cdb,
        };
        let req = ScsiRequest {
            nexus: &self.nexus,
            lun: self.lun,
            cdb,
            data_out: &self.data_out,
            data_in_len_max: self.data_in_len_max,
            attr: self.attr,
        };
        let started = Instant::now();
        let resp = self.engine.execute(&req, &mut self.data_in);
        ExecDone {
            itt: self.itt,
            resp,
            data_out: self.data_out,
            data_in: self.data_in,
            elapsed: started.elapsed(),
        }
    }
}

/// Result of an [`ExecJob`].
#[derive(Debug)]
pub struct ExecDone {
    itt: u32,
    resp: ScsiResponse,
    data_out: IoBuf,
    data_in: IoBuf,
    elapsed: Duration,
}

impl ExecDone {
    /// How long the engine took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

/// Reads at least this long go out by reference (vectored write) instead of being
/// copied into the output buffer.
const VECTORED_DATA_MIN_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, Copy)]
enum OutSeg {
    /// `out[start..end]`.
    Inline(usize, usize),
    /// `out_held[i][start..end]`.
    Held(usize, usize, usize),
}

/// Encoded output of a connection: inline bytes plus Data-In buffers sent by reference.
/// Write it with [`Output::io_slices`] (vectored) or [`Output::to_vec`], then give it
/// back with [`Connection::recycle_output`].
#[derive(Debug, Default)]
pub struct Output {
    bytes: Vec<u8>,
    segs: Vec<OutSeg>,
    held: Vec<IoBuf>,
}

impl Output {
    /// Total length in bytes.
    pub fn len(&self) -> usize {
        if self.segs.is_empty() {
            return self.bytes.len();
        }
        self.segs
            .iter()
            .map(|s| match *s {
                OutSeg::Inline(a, b) | OutSeg::Held(_, a, b) => b - a,
            })
            .sum()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether everything is in one contiguous buffer ([`Output::inline_bytes`]).
    pub fn is_contiguous(&self) -> bool {
        self.segs.is_empty()
    }

    /// The inline bytes (the whole output when [`Output::is_contiguous`]).
    pub fn inline_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn seg(&self, s: OutSeg) -> &[u8] {
        match s {
            OutSeg::Inline(a, b) => &self.bytes[a..b],
            OutSeg::Held(i, a, b) => &self.held[i][a..b],
        }
    }

    /// Up to `max` slices covering the output after its first `skip` bytes.
    pub fn io_slices<'a>(
        &'a self,
        mut skip: usize,
        max: usize,
        out: &mut Vec<std::io::IoSlice<'a>>,
    ) {
        out.clear();
        if self.segs.is_empty() {
            if skip < self.bytes.len() {
                out.push(std::io::IoSlice::new(&self.bytes[skip..]));
            }
            return;
        }
        for s in &self.segs {
            let b = self.seg(*s);
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            if !b[skip..].is_empty() {
                out.push(std::io::IoSlice::new(&b[skip..]));
            }
            skip = 0;
            if out.len() >= max {
                return;
            }
        }
    }

    /// Everything in one buffer (copies).
    pub fn to_vec(&self) -> Vec<u8> {
        if self.segs.is_empty() {
            return self.bytes.clone();
        }
        let mut v = Vec::with_capacity(self.len());
        for s in &self.segs {
            v.extend_from_slice(self.seg(*s));
        }
        v
    }
}

/// A task management response waiting for aborted tasks that are still on the engine.
#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    function: Option<TaskMgmt>,
    lun: u64,
    response: u8,
    waiting: Vec<u32>,
}

#[derive(Debug)]
struct TextContinuation {
    itt: u32,
    ttt: u32,
    data: Vec<u8>,
    offset: usize,
}

/// Identity of the session this connection belongs to.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session type.
    pub session_type: SessionType,
    /// InitiatorName.
    pub initiator_name: String,
    /// Target IQN (Normal sessions).
    pub target_iqn: Option<String>,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: u16,
    /// CID.
    pub cid: u16,
    /// I_T nexus.
    pub nexus: Nexus,
}

/// One connection in full feature phase.
pub struct Connection {
    cfg: ConnectionConfig,
    info: SessionInfo,
    nexus: Arc<Nexus>,
    executing: usize,
    params: OperationalParams,
    negotiator: Negotiator,
    engine: Option<Arc<dyn ScsiEngine>>,
    discovery: Arc<dyn DiscoveryEnv>,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    stat_sn: u32,
    future_sns: Vec<u32>,
    tasks: HashMap<u32, Task, TagHash>,
    immediate_in_table: u32,
    /// Tasks whose data is complete: (ITT, CmdSN, immediate), non-immediate ones in
    /// CmdSN order.
    ready: VecDeque<(u32, u32, bool)>,
    ordered_in_table: u32,
    active_counted: u32,
    dead_itts: VecDeque<u32>,
    next_ttt: u32,
    pool: Vec<IoBuf>,
    pool_bytes: usize,
    inflight_bytes: u64,
    out: Vec<u8>,
    /// Segments of the output before `out_inline_start`; the rest of `out` is inline.
    out_segs: Vec<OutSeg>,
    out_inline_start: usize,
    /// Data-In buffers referenced by `out_segs` (sent without copying).
    out_held: Vec<IoBuf>,
    digests: Digests,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    text_in: Vec<u8>,
    text_cont: Option<TextContinuation>,
    pending_tmfs: Vec<PendingTmf>,
    /// Completed task management functions whose tasks on other I_T nexuses the
    /// driver must abort: `Some(lun)` for one LUN, `None` for every LUN.
    third_party_aborts: Vec<Option<u64>>,
    logout_requested: Option<Instant>,
    close: Option<CloseReason>,
    stats: ConnStats,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("info", &self.info)
            .field("exp_cmd_sn", &self.exp_cmd_sn)
            .field("max_cmd_sn", &self.max_cmd_sn)
            .field("stat_sn", &self.stat_sn)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

const DEAD_ITTS_MAX: usize = 256;
/// Immediate SCSI commands (outside the CmdSN window) one connection may have open.
const IMMEDIATE_TASKS_MAX: u32 = 16;

/// Hasher for task tags. The table is bounded (queue depth + [`IMMEDIATE_TASKS_MAX`]),
/// so a fast multiplicative hash is safe even though initiators choose the tags.
#[derive(Debug, Default, Clone, Copy)]
struct TagHasher(u64);

impl std::hash::Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (u64::from(v) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type TagHash = std::hash::BuildHasherDefault<TagHasher>;
const POOL_BUFFERS_MAX: usize = 64;
const TEXT_RESPONSE_MAX: usize = 1024 * 1024;

/// Fixed-format sense data (18 bytes).
pub fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key & 0x0f;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

fn attr_from_flags(flags: u8) -> TaskAttr {
    match flags & pdu::CMD_ATTR_MASK {
        0 => TaskAttr::Untagged,
        1 => TaskAttr::Simple,
        2 => TaskAttr::Ordered,
        3 => TaskAttr::HeadOfQueue,
        4 => TaskAttr::Aca,
        _ => TaskAttr::Simple,
    }
}

impl Connection {
    /// A connection entering full feature phase after a successful login.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ConnectionConfig,
        info: SessionInfo,
        params: OperationalParams,
        offer: text::TargetOffer,
        engine: Option<Arc<dyn ScsiEngine>>,
        discovery: Arc<dyn DiscoveryEnv>,
        exp_cmd_sn: u32,
        stat_sn: u32,
        now: Instant,
    ) -> Self {
        let depth = cfg.queue_depth.max(1);
        let mut negotiator = Negotiator::new(offer);
        negotiator.params = params.clone();
        let digests = Digests {
            header: params.header_digest,
            data: params.data_digest,
        };
        Self {
            cfg,
            nexus: Arc::new(info.nexus.clone()),
            executing: 0,
            info,
            params,
            negotiator,
            engine,
            discovery,
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn.wrapping_add(depth - 1),
            stat_sn,
            future_sns: Vec::new(),
            tasks: HashMap::with_capacity_and_hasher(depth as usize, TagHash::default()),
            immediate_in_table: 0,
            ready: VecDeque::with_capacity(depth as usize),
            ordered_in_table: 0,
            active_counted: 0,
            dead_itts: VecDeque::new(),
            next_ttt: 1,
            pool: Vec::new(),
            pool_bytes: 0,
            inflight_bytes: 0,
            out: Vec::with_capacity(256 * 1024),
            out_segs: Vec::new(),
            out_inline_start: 0,
            out_held: Vec::new(),
            digests,
            last_rx: now,
            ping: None,
            text_in: Vec::new(),
            text_cont: None,
            pending_tmfs: Vec::new(),
            third_party_aborts: Vec::new(),
            logout_requested: None,
            close: None,
            stats: ConnStats::default(),
        }
    }

    /// Negotiated parameters.
    pub fn params(&self) -> &OperationalParams {
        &self.params
    }

    /// Session identity.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// Digests in force (both directions).
    pub fn digests(&self) -> Digests {
        self.digests
    }

    /// Our MaxRecvDataSegmentLength (decoder limit).
    pub fn max_recv_data_segment_len(&self) -> u32 {
        self.params.target_max_recv_data_segment_len
    }

    /// Counters.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Number of outstanding tasks.
    pub fn outstanding_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Whether commands are waiting for [`Connection::run_ready`].
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Set when the connection must close once the output is flushed.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close.as_ref()
    }

    /// Whether there is output to send.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Take the encoded output as one contiguous buffer (copies referenced Data-In).
    pub fn take_output(&mut self, spare: Vec<u8>) -> Vec<u8> {
        let o = self.take_output_vectored(spare);
        let v = o.to_vec();
        let _ = self.recycle_output(o);
        v
    }

    /// Take the encoded output for a vectored write; `spare` becomes the next output
    /// buffer. Hand the result back with [`Connection::recycle_output`] once written.
    pub fn take_output_vectored(&mut self, spare: Vec<u8>) -> Output {
        let mut spare = spare;
        spare.clear();
        if !self.out_segs.is_empty() && self.out_inline_start < self.out.len() {
            self.out_segs
                .push(OutSeg::Inline(self.out_inline_start, self.out.len()));
        }
        self.out_inline_start = 0;
        Output {
            bytes: std::mem::replace(&mut self.out, spare),
            segs: std::mem::take(&mut self.out_segs),
            held: std::mem::take(&mut self.out_held),
        }
    }

    /// Return a written [`Output`]: its Data-In buffers go back to the pool; the byte
    /// buffer is returned for reuse as the next `spare`.
    pub fn recycle_output(&mut self, o: Output) -> Vec<u8> {
        let Output { bytes, segs, held } = o;
        let mut segs = segs;
        segs.clear();
        if self.out_segs.capacity() == 0 {
            self.out_segs = segs;
        }
        for b in held {
            self.put_buf(b);
        }
        bytes
    }

    /// Borrow the encoded output (tests).
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    // ---------------------------------------------------------------- helpers

    fn update_max_cmd_sn(&mut self) {
        let depth = self.cfg.queue_depth.max(1);
        let used = self.active_counted.min(depth);
        let candidate = self.exp_cmd_sn.wrapping_add(depth - used).wrapping_sub(1);
        if sn_lt(self.max_cmd_sn, candidate) {
            self.max_cmd_sn = candidate;
        }
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn get_buf(&mut self) -> IoBuf {
        match self.pool.pop() {
            Some(b) => {
                self.pool_bytes -= b.capacity();
                b
            }
            None => IoBuf::new(),
        }
    }

    fn put_buf(&mut self, b: IoBuf) {
        if b.capacity() == 0 {
            return;
        }
        if self.pool.len() >= POOL_BUFFERS_MAX
            || self.pool_bytes + b.capacity() > self.cfg.pool_bytes_max
        {
            return;
        }
        // The length is kept: a write buffer resized to a length it already had is not
        // zero-filled again. Every byte of a write buffer is overwritten by in-order data
        // before the command runs (sequence checks in `on_data_out`), and data-in buffers
        // are cleared before they go to the engine.
        self.pool_bytes += b.capacity();
        self.pool.push(b);
    }

    fn mark_dead(&mut self, itt: u32) {
        if self.dead_itts.len() >= DEAD_ITTS_MAX {
            self.dead_itts.pop_front();
        }
        self.dead_itts.push_back(itt);
    }

    fn remove_task(&mut self, itt: u32) -> Option<Task> {
        let mut t = self.tasks.remove(&itt)?;
        self.release_task(&mut t);
        Some(t)
    }

    /// Give back the window slot, memory charge and buffer of a task leaving the table.
    fn release_task(&mut self, t: &mut Task) {
        if t.counted {
            self.active_counted = self.active_counted.saturating_sub(1);
        } else if t.immediate {
            self.immediate_in_table = self.immediate_in_table.saturating_sub(1);
            t.immediate = false;
        }
        if t.attr == TaskAttr::Ordered {
            self.ordered_in_table = self.ordered_in_table.saturating_sub(1);
        }
        self.inflight_bytes = self.inflight_bytes.saturating_sub(t.charged_bytes);
        t.counted = false;
        t.charged_bytes = 0;
        if t.attr == TaskAttr::Ordered {
            t.attr = TaskAttr::Simple;
        }
        let buf = std::mem::take(&mut t.buf);
        self.put_buf(buf);
        self.update_max_cmd_sn();
    }

    /// Check the CmdSN of a non-immediate PDU; on success it counts as received.
    /// Returns false when the PDU must be dropped silently.
    fn accept_cmd_sn(&mut self, cmd_sn: u32) -> bool {
        if !(sn_le(self.exp_cmd_sn, cmd_sn) && sn_le(cmd_sn, self.max_cmd_sn)) {
            tracing::debug!(
                cmd_sn,
                exp = self.exp_cmd_sn,
                max = self.max_cmd_sn,
                "CmdSN outside window; dropped"
            );
            return false;
        }
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            while let Some(i) = self.future_sns.iter().position(|s| *s == self.exp_cmd_sn) {
                self.future_sns.swap_remove(i);
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            }
        } else {
            if self.future_sns.contains(&cmd_sn) {
                return false; // duplicate
            }
            self.future_sns.push(cmd_sn);
        }
        true
    }

    fn reject(&mut self, bhs: &[u8; BHS_LEN], reason: RejectReason) {
        // Callers reject only PDUs that leave no task behind, so the window is final.
        self.update_max_cmd_sn();
        let mut h = RejectBhs::zeroed_with(Opcode::Reject);
        h.flags = FLAG_FINAL;
        h.reason = reason as u8;
        h.itt.set(RESERVED_TAG);
        h.stat_sn.set(self.next_stat_sn());
        h.exp_cmd_sn.set(self.exp_cmd_sn);
        h.max_cmd_sn.set(self.max_cmd_sn);
        encode_pdu(&mut self.out, &h.to_bhs(), &[], bhs, self.digests);
        self.stats.rejects += 1;
    }

    fn protocol_error(&mut self, why: &str) {
        tracing::warn!(initiator = %self.info.initiator_name, "protocol error: {why}; closing connection");
        if self.close.is_none() {
            self.close = Some(CloseReason::ProtocolError(why.to_string()));
        }
    }

    // ---------------------------------------------------------------- input

    /// Handle one received PDU.
    pub fn on_pdu(&mut self, pdu: Pdu, now: Instant) {
        self.last_rx = now;
        if self.close.is_some() {
            return;
        }
        match pdu.opcode() {
            Opcode::ScsiCommand => self.on_scsi_command(pdu),
            Opcode::DataOut => self.on_data_out(pdu),
            Opcode::NopOut => self.on_nop_out(pdu),
            Opcode::TaskMgmtReq => self.on_tmf(pdu),
            Opcode::TextReq => self.on_text(pdu),
            Opcode::LogoutReq => self.on_logout(pdu),
            Opcode::Snack => {
                // ERL 0: SNACK is not supported.
                self.reject(&pdu.bhs, RejectReason::ProtocolError);
            }
            Opcode::LoginReq => self.reject(&pdu.bhs, RejectReason::ProtocolError),
            Opcode::Unknown(_) => self.reject(&pdu.bhs, RejectReason::CommandNotSupported),
            _ => self.reject(&pdu.bhs, RejectReason::ProtocolError),
        }
    }

    /// A PDU whose data segment was longer than our MaxRecvDataSegmentLength: reject it
    /// and close (the byte stream cannot be trusted at ERL 0).
    pub fn on_oversized_pdu(&mut self, bhs: &[u8; BHS_LEN]) {
        self.reject(bhs, RejectReason::ProtocolError);
        self.protocol_error("data segment longer than MaxRecvDataSegmentLength");
    }

    fn on_scsi_command(&mut self, pdu: Pdu) {
        let h = *pdu.view::<ScsiCommandBhs>();
        let itt = h.itt.get();
        let immediate = pdu.immediate();
        if self.info.session_type == SessionType::Discovery || self.engine.is_none() {
            if immediate || self.accept_cmd_sn(h.cmd_sn.get()) {
                self.reject(&pdu.bhs, RejectReason::ProtocolError);
            }
            return;
        }
        if !immediate && !self.accept_cmd_sn(h.cmd_sn.get()) {
            return;
        }
        if self.logout_requested.is_some() {
            self.update_max_cmd_sn();
            self.reject(&pdu.bhs, RejectReason::WaitingForLogout);
            return;
        }
        if itt == RESERVED_TAG || self.tasks.contains_key(&itt) {
            self.reject(&pdu.bhs, RejectReason::InvalidPduField);
            return;
        }
        if immediate && self.immediate_in_table >= IMMEDIATE_TASKS_MAX {
            self.reject(&pdu.bhs, RejectReason::ImmediateCommandReject);
            return;
        }
        // Additional header segments: extended CDB and bidirectional read length.
        let mut cdb_long: Option<Vec<u8>> = None;
        let mut bidi_read_len: Option<u32> = None;
        for e in pdu.ahs_entries() {
            match e {
                Ok((pdu::AHS_TYPE_EXTENDED_CDB, ext)) if cdb_long.is_none() => {
                    let mut c = h.cdb.to_vec();
                    c.extend_from_slice(ext);
                    cdb_long = Some(c);
                }
                Ok((pdu::AHS_TYPE_BIDI_READ_LEN, b)) if b.len() >= 4 => {
                    bidi_read_len = Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                }
                _ => {
                    self.mark_dead(itt);
                    self.reject(&pdu.bhs, RejectReason::ProtocolError);
                    return;
                }
            }
        }
        let read = h.flags & pdu::CMD_FLAG_READ != 0;
        let write = h.flags & pdu::CMD_FLAG_WRITE != 0;
        let final_bit = h.flags & FLAG_FINAL != 0;
        let edtl = h.edtl.get();
        let imm = &pdu.data;
        let imm_len = imm.len() as u32;
        if imm_len > 0
            && (!write
                || !self.params.immediate_data
                || imm_len > edtl
                || imm_len > self.params.first_burst_len)
        {
            self.mark_dead(itt);
            self.reject(&pdu.bhs, RejectReason::ProtocolError);
            return;
        }
        let attr = attr_from_flags(h.flags);
        let lun = h.lun.get();
        let mut task = Task {
            itt,
            lun,
            cmd_sn: h.cmd_sn.get(),
            immediate,
            attr,
            read,
            write,
            edtl,
            bidi_read_len: if read && write { bidi_read_len } else { None },
            cdb: h.cdb,
            cdb_long,
            buf: IoBuf::new(),
            unsol_end: 0,
            unsol_next: 0,
            unsol_data_sn: 0,
            unsol_done: true,
            r2t_next: 0,
            r2ts: Vec::new(),
            r2t_sn: 0,
            state: TaskState::Collecting,
            counted: !immediate,
            charged_bytes: 0,
            aborted: false,
        };
        if pdu.data_digest_error {
            // RFC 7143 §7.8: reject the data, terminate the task with CHECK CONDITION
            // (ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR).
            self.reject(&pdu.bhs, RejectReason::DataDigestError);
            self.mark_dead(itt);
            self.update_max_cmd_sn();
            self.send_status_only(
                &task,
                ScsiStatus::CheckCondition,
                Some(&fixed_sense(0x0b, 0x47, 0x05)),
            );
            return;
        }
        // Bound the memory one command, and all outstanding commands, may hold.
        let data_out_len = if write { u64::from(edtl) } else { 0 };
        let data_in_len = if read {
            u64::from(edtl.min(self.cfg.max_transfer_len_bytes))
        } else {
            0
        };
        if write && edtl > self.cfg.max_transfer_len_bytes {
            self.mark_dead(itt);
            self.update_max_cmd_sn();
            self.send_status_only(
                &task,
                ScsiStatus::CheckCondition,
                Some(&fixed_sense(0x05, 0x24, 0x00)),
            );
            return;
        }
        let charge = data_out_len + data_in_len;
        if self.inflight_bytes + charge > self.cfg.max_inflight_bytes && !self.tasks.is_empty() {
            self.mark_dead(itt);
            self.update_max_cmd_sn();
            self.send_status_only(&task, ScsiStatus::TaskSetFull, None);
            return;
        }
        task.charged_bytes = charge;
        self.inflight_bytes += charge;
        if write {
            let mut buf = self.get_buf();
            buf.resize(edtl as usize);
            buf[..imm.len()].copy_from_slice(imm);
            self.stats.bytes_out += u64::from(imm_len);
            task.buf = buf;
            task.unsol_next = imm_len;
            if self.params.initial_r2t || final_bit {
                task.unsol_done = true;
                task.r2t_next = imm_len;
            } else {
                task.unsol_end = self.params.first_burst_len.min(edtl);
                task.unsol_done = task.unsol_next >= task.unsol_end;
                task.r2t_next = if task.unsol_done {
                    imm_len
                } else {
                    task.unsol_end
                };
            }
        }
        if task.counted {
            self.active_counted += 1;
        } else {
            self.immediate_in_table += 1;
        }
        if attr == TaskAttr::Ordered {
            self.ordered_in_table += 1;
        }
        self.update_max_cmd_sn();
        self.tasks.insert(itt, task);
        self.advance_task(itt);
    }

    /// Issue R2Ts as allowed and move the task to the ready queue once its data is in.
    fn advance_task(&mut self, itt: u32) {
        let Some(task) = self.tasks.get(&itt) else {
            return;
        };
        if task.state != TaskState::Collecting {
            return;
        }
        if task.write && task.unsol_done {
            self.issue_r2ts(itt);
        }
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        if task.data_complete() {
            task.state = TaskState::Ready;
            let (sn, imm) = (task.cmd_sn, task.immediate);
            let mut at = self.ready.len();
            if !imm {
                while at > 0 {
                    let (_, psn, pimm) = self.ready[at - 1];
                    if pimm || !sn_lt(sn, psn) {
                        break;
                    }
                    at -= 1;
                }
            }
            self.ready.insert(at, (itt, sn, imm));
        }
    }

    fn issue_r2ts(&mut self, itt: u32) {
        let max_out = self.params.max_outstanding_r2t.max(1) as usize;
        let max_burst = self.params.max_burst_len.max(512);
        loop {
            let ttt = self.next_ttt;
            let (stat_sn, exp, max) = (self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn);
            let Some(task) = self.tasks.get_mut(&itt) else {
                return;
            };
            if task.r2ts.len() >= max_out || task.r2t_next >= task.edtl {
                return;
            }
            let offset = task.r2t_next;
            let len = max_burst.min(task.edtl - offset);
            task.r2ts.push(R2tSeq {
                ttt,
                offset,
                end: offset + len,
                next: offset,
                data_sn: 0,
            });
            task.r2t_next = offset + len;
            let r2t_sn = task.r2t_sn;
            task.r2t_sn += 1;
            let lun = task.lun;
            let mut h = R2tBhs::zeroed_with(Opcode::R2t);
            h.flags = FLAG_FINAL;
            h.lun.set(lun);
            h.itt.set(itt);
            h.ttt.set(ttt);
            h.stat_sn.set(stat_sn);
            h.exp_cmd_sn.set(exp);
            h.max_cmd_sn.set(max);
            h.r2t_sn.set(r2t_sn);
            h.buffer_offset.set(offset);
            h.desired_len.set(len);
            encode_pdu(&mut self.out, &h.to_bhs(), &[], &[], self.digests);
            self.alloc_ttt();
        }
    }

    fn on_data_out(&mut self, pdu: Pdu) {
        let h = *pdu.view::<DataOutBhs>();
        let itt = h.itt.get();
        let ttt = h.ttt.get();
        let Some(task) = self.tasks.get(&itt) else {
            if ttt == RESERVED_TAG || self.dead_itts.contains(&itt) {
                // Unsolicited data for a command we dropped (CmdSN window) or ended.
                return;
            }
            self.reject(&pdu.bhs, RejectReason::ProtocolError);
            return;
        };
        if !task.write || task.state != TaskState::Collecting {
            self.reject(&pdu.bhs, RejectReason::ProtocolError);
            self.abort_task_silently(itt);
            return;
        }
        if pdu.data_digest_error {
            self.reject(&pdu.bhs, RejectReason::DataDigestError);
            if let Some(t) = self.remove_task(itt) {
                self.mark_dead(itt);
                self.send_status_only(
                    &t,
                    ScsiStatus::CheckCondition,
                    Some(&fixed_sense(0x0b, 0x47, 0x05)),
                );
            }
            return;
        }
        let offset = h.buffer_offset.get();
        let data_sn = h.data_sn.get();
        let len = pdu.data.len() as u32;
        let final_bit = h.flags & FLAG_FINAL != 0;
        let initial_r2t = self.params.initial_r2t;
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        // Locate the sequence and check DataSN and offset (in-order data only).
        let ok = if ttt == RESERVED_TAG {
            let fits = !initial_r2t
                && !task.unsol_done
                && data_sn == task.unsol_data_sn
                && offset == task.unsol_next
                && offset.checked_add(len).is_some_and(|e| e <= task.unsol_end);
            if fits {
                task.buf[offset as usize..(offset + len) as usize].copy_from_slice(&pdu.data);
                task.unsol_next += len;
                task.unsol_data_sn += 1;
                if final_bit || task.unsol_next >= task.unsol_end {
                    task.unsol_done = true;
                    task.r2t_next = task.unsol_next.max(task.r2t_next.min(task.unsol_next));
                    task.r2t_next = task.unsol_next;
                }
            }
            fits
        } else if let Some(i) = task.r2ts.iter().position(|s| s.ttt == ttt) {
            let s = &mut task.r2ts[i];
            let fits = data_sn == s.data_sn
                && offset == s.next
                && offset.checked_add(len).is_some_and(|e| e <= s.end)
                && (!final_bit || offset + len == s.end);
            if fits {
                task.buf[offset as usize..(offset + len) as usize].copy_from_slice(&pdu.data);
                s.next += len;
                s.data_sn += 1;
                if s.next == s.end {
                    debug_assert!(s.offset < s.end);
                    task.r2ts.swap_remove(i);
                }
            }
            fits
        } else {
            false
        };
        if !ok {
            tracing::debug!(
                itt,
                ttt,
                offset,
                data_sn,
                len,
                "bad Data-Out; rejecting and ending the task"
            );
            self.reject(&pdu.bhs, RejectReason::ProtocolError);
            self.abort_task_silently(itt);
            return;
        }
        self.stats.bytes_out += u64::from(len);
        self.advance_task(itt);
    }

    /// End a task without a response (the initiator saw a Reject for it).
    /// Returns true when the task is still executing (it is marked aborted and leaves
    /// the table when the engine returns).
    fn abort_task_silently(&mut self, itt: u32) -> bool {
        if let Some(t) = self.tasks.get_mut(&itt) {
            if t.state == TaskState::Executing {
                t.aborted = true;
                return true;
            }
        }
        if self.remove_task(itt).is_some() {
            self.mark_dead(itt);
        }
        self.ready.retain(|r| r.0 != itt);
        false
    }

    fn on_nop_out(&mut self, pdu: Pdu) {
        let h = *pdu.view::<NopOutBhs>();
        let itt = h.itt.get();
        let ttt = h.ttt.get();
        if ttt != RESERVED_TAG && self.ping.is_some_and(|(t, _)| t == ttt) {
            self.ping = None;
        }
        if itt == RESERVED_TAG {
            // Answer to our ping (or a pure ExpStatSN update): no response.
            return;
        }
        if !pdu.immediate() && !self.accept_cmd_sn(h.cmd_sn.get()) {
            return;
        }
        if pdu.data_digest_error {
            self.reject(&pdu.bhs, RejectReason::DataDigestError);
            return;
        }
        let mut r = NopInBhs::zeroed_with(Opcode::NopIn);
        r.flags = FLAG_FINAL;
        r.lun = h.lun;
        r.itt.set(itt);
        r.ttt.set(RESERVED_TAG);
        r.stat_sn.set(self.next_stat_sn());
        r.exp_cmd_sn.set(self.exp_cmd_sn);
        r.max_cmd_sn.set(self.max_cmd_sn);
        let max = self.params.initiator_max_recv_data_segment_len as usize;
        let data = &pdu.data[..pdu.data.len().min(max)];
        encode_pdu(&mut self.out, &r.to_bhs(), &[], data, self.digests);
    }

    fn on_tmf(&mut self, pdu: Pdu) {
        let h = *pdu.view::<TmfReqBhs>();
        if !pdu.immediate() && !self.accept_cmd_sn(h.cmd_sn.get()) {
            return;
        }
        let itt = h.itt.get();
        let function = h.flags & 0x7f;
        let lun = h.lun.get();
        if self.info.session_type == SessionType::Discovery || self.engine.is_none() {
            self.send_tmf_response(itt, 5);
            return;
        }
        let kind = match function {
            1 => {
                let (response, waiting) =
                    self.tmf_abort_task(h.ref_task_tag.get(), h.ref_cmd_sn.get(), h.cmd_sn.get());
                self.finish_or_defer_tmf(itt, None, lun, response, waiting);
                return;
            }
            2 => TaskMgmt::AbortTaskSet,
            4 => TaskMgmt::ClearTaskSet,
            5 => TaskMgmt::LunReset,
            6 => TaskMgmt::TargetWarmReset,
            7 => TaskMgmt::TargetColdReset,
            // TASK REASSIGN at ERL 0: task allegiance reassignment not supported.
            8 => {
                self.send_tmf_response(itt, 4);
                return;
            }
            // CLEAR ACA (no NACA support) and unknown functions: not supported.
            _ => {
                self.send_tmf_response(itt, 5);
                return;
            }
        };
        let whole_target = matches!(kind, TaskMgmt::TargetWarmReset | TaskMgmt::TargetColdReset);
        let victims: Vec<u32> = self
            .tasks
            .values()
            .filter(|t| whole_target || t.lun == lun)
            .map(|t| t.itt)
            .collect();
        let mut waiting = Vec::new();
        for v in victims {
            if self.abort_task_silently(v) {
                waiting.push(v);
            }
        }
        self.finish_or_defer_tmf(itt, Some(kind), lun, 0, waiting);
    }

    /// Respond now, or once the aborted tasks still on the engine have returned (the
    /// response must not overtake the termination of the tasks it affects).
    fn finish_or_defer_tmf(
        &mut self,
        itt: u32,
        function: Option<TaskMgmt>,
        lun: u64,
        response: u8,
        waiting: Vec<u32>,
    ) {
        if waiting.is_empty() {
            self.finish_tmf(itt, function, lun, response);
        } else {
            self.pending_tmfs.push(PendingTmf {
                itt,
                function,
                lun,
                response,
                waiting,
            });
        }
    }

    fn finish_tmf(&mut self, itt: u32, function: Option<TaskMgmt>, lun: u64, response: u8) {
        let response = match (function, self.engine.clone()) {
            (Some(f), Some(engine)) => match engine.task_mgmt(&self.info.nexus, lun, f) {
                TmfOutcome::Complete => 0,
                TmfOutcome::NoSuchLun => 2,
                TmfOutcome::NotSupported => 5,
            },
            (Some(_), None) => 5,
            (None, _) => response,
        };
        self.send_tmf_response(itt, response);
        if response == 0 {
            // SAM-5: CLEAR TASK SET and LOGICAL UNIT RESET abort the tasks of every
            // I_T nexus on the LU, target resets every task.
            let others = match function {
                Some(TaskMgmt::ClearTaskSet | TaskMgmt::LunReset) => {
                    LunMap::decode_lun(lun).map(Some)
                }
                Some(TaskMgmt::TargetWarmReset | TaskMgmt::TargetColdReset) => Some(None),
                _ => None,
            };
            if let Some(scope) = others {
                if !self.third_party_aborts.contains(&scope) {
                    self.third_party_aborts.push(scope);
                }
            }
        }
        if function == Some(TaskMgmt::TargetColdReset) && response == 0 {
            self.close = Some(CloseReason::ColdReset);
        }
    }

    /// Task management functions completed on this connection that abort tasks of
    /// other I_T nexuses too (`Some(lun)`: that LUN number, `None`: every LUN): the
    /// driver hands each to the other sessions of the target, which call
    /// [`Connection::abort_for_other_nexus`].
    pub fn take_third_party_aborts(&mut self) -> Vec<Option<u64>> {
        std::mem::take(&mut self.third_party_aborts)
    }

    /// Abort this connection's tasks on LUN number `lun` (`None`: every LUN) because
    /// another I_T nexus asked: CLEAR TASK SET, LOGICAL UNIT RESET or a target reset
    /// from another session, or PERSISTENT RESERVE OUT / PREEMPT AND ABORT that removed
    /// this nexus's registration. The control mode page reports TAS=1, so every
    /// aborted task ends with TASK ABORTED status (late Data-Out for it is dropped).
    /// Tasks already on the engine cannot be stopped: they complete with their own
    /// status. Returns the number of tasks aborted.
    pub fn abort_for_other_nexus(&mut self, lun: Option<u64>) -> usize {
        let mut victims: Vec<(u32, u32)> = self
            .tasks
            .values()
            .filter(|t| t.state != TaskState::Executing && !t.aborted)
            .filter(|t| lun.is_none_or(|n| LunMap::decode_lun(t.lun) == Some(n)))
            .map(|t| (t.cmd_sn, t.itt))
            .collect();
        victims.sort_unstable_by(|a, b| {
            if sn_lt(a.0, b.0) {
                std::cmp::Ordering::Less
            } else if a.0 == b.0 {
                a.1.cmp(&b.1)
            } else {
                std::cmp::Ordering::Greater
            }
        });
        for &(_, itt) in &victims {
            self.ready.retain(|r| r.0 != itt);
            if let Some(t) = self.remove_task(itt) {
                self.mark_dead(itt);
                if self.close.is_none() {
                    tracing::debug!(itt, lun = ?lun, "task aborted for another I_T nexus");
                    self.send_status_only(&t, ScsiStatus::TaskAborted, None);
                }
            }
        }
        victims.len()
    }

    fn send_tmf_response(&mut self, itt: u32, response: u8) {
        let mut r = TmfRespBhs::zeroed_with(Opcode::TaskMgmtResp);
        r.flags = FLAG_FINAL;
        r.response = response;
        r.itt.set(itt);
        r.stat_sn.set(self.next_stat_sn());
        r.exp_cmd_sn.set(self.exp_cmd_sn);
        r.max_cmd_sn.set(self.max_cmd_sn);
        encode_pdu(&mut self.out, &r.to_bhs(), &[], &[], self.digests);
    }

    /// An aborted task came back from the engine: release TMF responses waiting for it.
    fn resolve_pending_tmfs(&mut self, done_itt: u32) {
        if self.pending_tmfs.is_empty() {
            return;
        }
        for p in &mut self.pending_tmfs {
            p.waiting.retain(|i| *i != done_itt);
        }
        let mut i = 0;
        while i < self.pending_tmfs.len() {
            if self.pending_tmfs[i].waiting.is_empty() {
                let p = self.pending_tmfs.remove(i);
                self.finish_tmf(p.itt, p.function, p.lun, p.response);
            } else {
                i += 1;
            }
        }
    }

    /// ABORT TASK: (response, tasks still executing that must finish first).
    fn tmf_abort_task(&mut self, ref_itt: u32, ref_cmd_sn: u32, cmd_sn: u32) -> (u8, Vec<u32>) {
        if self.tasks.contains_key(&ref_itt) {
            let executing = self.abort_task_silently(ref_itt);
            return (0, if executing { vec![ref_itt] } else { Vec::new() });
        }
        // Not found: a command that never arrived but whose CmdSN is inside the window
        // and before this TMF counts as received (RFC 7143 §11.5.1 b); a completed
        // command is "task does not exist".
        if sn_le(self.exp_cmd_sn, ref_cmd_sn)
            && sn_le(ref_cmd_sn, self.max_cmd_sn)
            && sn_lt(ref_cmd_sn, cmd_sn)
        {
            if self.accept_cmd_sn(ref_cmd_sn) {
                self.update_max_cmd_sn();
            }
            self.mark_dead(ref_itt);
            return (0, Vec::new());
        }
        (1, Vec::new())
    }

    fn on_logout(&mut self, pdu: Pdu) {
        let h = *pdu.view::<LogoutReqBhs>();
        if !pdu.immediate() && !self.accept_cmd_sn(h.cmd_sn.get()) {
            return;
        }
        let reason = h.flags & 0x7f;
        let response = match reason {
            0 => 0,
            1 if h.cid.get() == self.info.cid => 0,
            1 => 1, // CID not found
            2 => 2, // connection recovery not supported at ERL 0
            _ => {
                self.reject(&pdu.bhs, RejectReason::ProtocolError);
                return;
            }
        };
        let mut r = LogoutRespBhs::zeroed_with(Opcode::LogoutResp);
        r.flags = FLAG_FINAL;
        r.response = response;
        r.itt.set(h.itt.get());
        r.stat_sn.set(self.next_stat_sn());
        r.exp_cmd_sn.set(self.exp_cmd_sn);
        r.max_cmd_sn.set(self.max_cmd_sn);
        encode_pdu(&mut self.out, &r.to_bhs(), &[], &[], self.digests);
        if response == 0 {
            self.close = Some(CloseReason::Logout);
        }
    }

    fn on_text(&mut self, pdu: Pdu) {
        let h = *pdu.view::<TextReqBhs>();
        if !pdu.immediate() && !self.accept_cmd_sn(h.cmd_sn.get()) {
            return;
        }
        if pdu.data_digest_error {
            self.reject(&pdu.bhs, RejectReason::DataDigestError);
            return;
        }
        let itt = h.itt.get();
        let ttt = h.ttt.get();
        let cont = h.flags & FLAG_CONTINUE != 0;
        // Continuation of our own long response.
        if ttt != RESERVED_TAG {
            match self.text_cont.take() {
                Some(c) if c.ttt == ttt && c.itt == itt => {
                    self.send_text_chunk(c);
                }
                _ => self.reject(&pdu.bhs, RejectReason::ProtocolError),
            }
            return;
        }
        // A new request resets any unfinished exchange.
        self.text_cont = None;
        if self.text_in.len() + pdu.data.len() > text::TEXT_LEN_MAX {
            self.text_in.clear();
            self.reject(&pdu.bhs, RejectReason::ProtocolError);
            return;
        }
        self.text_in.extend_from_slice(&pdu.data);
        if cont {
            // Initiator's text continues: acknowledge with an empty response.
            let ttt = self.alloc_ttt();
            self.send_text_response(itt, ttt, false, &[]);
            return;
        }
        let req = std::mem::take(&mut self.text_in);
        let Ok(pairs) = text::parse(&req) else {
            self.reject(&pdu.bhs, RejectReason::ProtocolError);
            return;
        };
        let mut resp: Vec<Pair> = Vec::new();
        for (k, v) in &pairs {
            if k == "SendTargets" {
                self.send_targets(v, &mut resp);
            } else if self
                .negotiator
                .handle(k, v, Phase::FullFeature, &mut resp)
                .is_err()
            {
                resp.push((k.clone(), "Reject".into()));
            }
        }
        self.params.initiator_max_recv_data_segment_len =
            self.negotiator.params.initiator_max_recv_data_segment_len;
        let mut data = text::encode(&resp);
        data.truncate(TEXT_RESPONSE_MAX);
        let c = TextContinuation {
            itt,
            ttt: 0,
            data,
            offset: 0,
        };
        self.send_text_chunk(c);
    }

    fn send_targets(&mut self, value: &str, resp: &mut Vec<Pair>) {
        let normal = self.info.session_type == SessionType::Normal;
        let own = self.info.target_iqn.clone();
        let query = match value {
            "All" if normal => own.as_deref().map(SendTargetsQuery::Target),
            "All" => Some(SendTargetsQuery::All),
            "" => own.as_deref().map(SendTargetsQuery::Target),
            name if text::is_iscsi_name(name) => Some(SendTargetsQuery::Target(name)),
            _ => {
                resp.push(("SendTargets".into(), "Reject".into()));
                return;
            }
        };
        if let Some(q) = query {
            if normal && matches!(q, SendTargetsQuery::Target(n) if Some(n) != own.as_deref()) {
                return; // a Normal session only reports its own target
            }
            resp.extend(self.discovery.send_targets(
                &self.info.initiator_name,
                q,
                self.cfg.local_addr,
            ));
        }
    }

    fn send_text_chunk(&mut self, mut c: TextContinuation) {
        let max = self.params.initiator_max_recv_data_segment_len.max(512) as usize;
        let rest = c.data.len() - c.offset;
        if rest <= max {
            let chunk = c.data[c.offset..].to_vec();
            self.send_text_response(c.itt, RESERVED_TAG, true, &chunk);
        } else {
            let chunk = c.data[c.offset..c.offset + max].to_vec();
            c.offset += max;
            c.ttt = self.alloc_ttt();
            self.send_text_response(c.itt, c.ttt, false, &chunk);
            self.text_cont = Some(c);
        }
    }

    fn send_text_response(&mut self, itt: u32, ttt: u32, final_: bool, data: &[u8]) {
        let mut r = TextRespBhs::zeroed_with(Opcode::TextResp);
        r.flags = if final_ { FLAG_FINAL } else { FLAG_CONTINUE };
        r.itt.set(itt);
        r.ttt.set(ttt);
        r.stat_sn.set(self.next_stat_sn());
        r.exp_cmd_sn.set(self.exp_cmd_sn);
        r.max_cmd_sn.set(self.max_cmd_sn);
        encode_pdu(&mut self.out, &r.to_bhs(), &[], data, self.digests);
    }

    // ---------------------------------------------------------------- execution

    fn can_run(&self, t: &Task) -> bool {
        if !t.immediate && !sn_lt(t.cmd_sn, self.exp_cmd_sn) {
            return false; // an earlier CmdSN has not arrived yet
        }
        if self.ordered_in_table == 0 || t.attr == TaskAttr::HeadOfQueue {
            return true;
        }
        let earlier = |o: &Task| o.itt != t.itt && !o.immediate && sn_lt(o.cmd_sn, t.cmd_sn);
        if t.attr == TaskAttr::Ordered {
            !self.tasks.values().any(earlier)
        } else {
            !self
                .tasks
                .values()
                .any(|o| o.attr == TaskAttr::Ordered && earlier(o))
        }
    }

    /// Take every command that may start now (data complete, CmdSN order and task
    /// attributes respected) as jobs for [`ExecJob::run`]; hand each result back to
    /// [`Connection::on_exec_done`]. Jobs may run concurrently, on other threads.
    pub fn take_runnable(&mut self) -> Vec<ExecJob> {
        let mut jobs = Vec::new();
        let Some(engine) = self.engine.clone() else {
            self.ready.clear();
            return jobs;
        };
        let mut deferred: VecDeque<(u32, u32, bool)> = VecDeque::new();
        while let Some(entry) = self.ready.pop_front() {
            let itt = entry.0;
            let runnable = match self.tasks.get(&itt) {
                Some(t) => self.can_run(t),
                None => continue,
            };
            if !runnable {
                deferred.push_back(entry);
                continue;
            }
            let mut data_in = self.get_buf();
            data_in.clear();
            let max_xfer = self.cfg.max_transfer_len_bytes;
            let Some(task) = self.tasks.get_mut(&itt) else {
                continue;
            };
            task.state = TaskState::Executing;
            let data_in_len_max = if task.read {
                task.bidi_read_len.unwrap_or(task.edtl).min(max_xfer)
            } else {
                0
            };
            jobs.push(ExecJob {
                itt,
                engine: engine.clone(),
                nexus: self.nexus.clone(),
                lun: task.lun,
                cdb: task.cdb,
                cdb_long: task.cdb_long.take(),
                data_out: if task.write {
                    std::mem::take(&mut task.buf)
                } else {
                    IoBuf::new()
                },
                data_in,
                data_in_len_max,
                attr: task.attr,
            });
        }
        self.ready = deferred;
        self.executing += jobs.len();
        jobs
    }

    /// A job from [`Connection::take_runnable`] finished: send its Data-In/response.
    pub fn on_exec_done(&mut self, done: ExecDone) {
        self.executing = self.executing.saturating_sub(1);
        self.stats.commands += 1;
        let ExecDone {
            itt,
            resp,
            data_out,
            data_in,
            elapsed: _,
        } = done;
        self.put_buf(data_out);
        if self.tasks.get(&itt).is_some_and(|t| t.aborted) {
            // Aborted while executing: drop the result, then answer waiting TMFs.
            self.remove_task(itt);
            self.mark_dead(itt);
            self.put_buf(data_in);
            self.resolve_pending_tmfs(itt);
            return;
        }
        if let Some(mut task) = self.tasks.remove(&itt) {
            // Free the window slot first so the response already carries the new MaxCmdSN.
            self.release_task(&mut task);
            if self.close.is_none() {
                self.complete(&task, &resp, data_in);
                return;
            }
        }
        self.put_buf(data_in);
    }

    /// Commands handed out by [`Connection::take_runnable`] and not yet done.
    pub fn executing(&self) -> usize {
        self.executing
    }

    /// Execute every runnable command synchronously on this thread (tests, and drivers
    /// without a worker pool). Returns the number executed.
    pub fn run_ready(&mut self) -> usize {
        let mut n = 0;
        loop {
            let jobs = self.take_runnable();
            if jobs.is_empty() {
                return n;
            }
            for j in jobs {
                let d = j.run();
                self.on_exec_done(d);
                n += 1;
            }
        }
    }

    /// Residual flags and count for the main (non-bidi) direction.
    fn residual(task: &Task, resp: &ScsiResponse, data_in_len: u32) -> (u8, u32) {
        let edtl = u64::from(task.edtl);
        let clamp = |v: u64| v.min(u64::from(u32::MAX)) as u32;
        if task.read && !task.write {
            if let Some(cdb) = resp.cdb_transfer_len {
                if cdb > edtl {
                    return (pdu::RESP_FLAG_OVERFLOW, clamp(cdb - edtl));
                }
            }
            if data_in_len < task.edtl {
                return (pdu::RESP_FLAG_UNDERFLOW, task.edtl - data_in_len);
            }
            return (0, 0);
        }
        match resp.cdb_transfer_len {
            Some(cdb) if cdb > edtl => (pdu::RESP_FLAG_OVERFLOW, clamp(cdb - edtl)),
            Some(cdb) if cdb < edtl && task.write => (pdu::RESP_FLAG_UNDERFLOW, clamp(edtl - cdb)),
            _ => (0, 0),
        }
    }

    fn complete(&mut self, task: &Task, resp: &ScsiResponse, data_in: IoBuf) {
        let data_len = (resp.data_in_len as usize).min(data_in.len());
        let data_len = if task.read { data_len } else { 0 };
        let (mut flags, residual) = Self::residual(task, resp, data_len as u32);
        let mut bidi_residual = 0;
        if let Some(bl) = task.bidi_read_len {
            if (data_len as u32) < bl {
                flags |= pdu::RESP_FLAG_BIDI_UNDERFLOW;
                bidi_residual = bl - data_len as u32;
            }
        }
        let good = resp.status == ScsiStatus::Good && resp.sense.is_none();
        if !good {
            tracing::debug!(
                itt = task.itt,
                opcode = task.cdb[0],
                status = ?resp.status,
                sense = ?resp.sense.as_deref().map(|s| &s[..s.len().min(18)]),
                "command did not complete with GOOD"
            );
        }
        let mut data_sn = 0u32;
        let by_reference = data_len >= VECTORED_DATA_MIN_BYTES;
        if data_len > 0 {
            let seg_max = self.params.initiator_max_recv_data_segment_len.max(512) as usize;
            let burst_max = self.params.max_burst_len.max(512) as usize;
            let collapse = good && task.bidi_read_len.is_none();
            let mut off = 0usize;
            let mut burst_left = burst_max;
            while off < data_len {
                let n = seg_max.min(data_len - off).min(burst_left);
                let last = off + n == data_len;
                burst_left -= n;
                let mut h = DataInBhs::zeroed_with(Opcode::DataIn);
                let mut f = 0u8;
                if last || burst_left == 0 {
                    f |= FLAG_FINAL;
                    burst_left = burst_max;
                }
                h.itt.set(task.itt);
                h.ttt.set(RESERVED_TAG);
                if last && collapse {
                    f |= pdu::DATA_IN_FLAG_STATUS | flags;
                    h.status = resp.status as u8;
                    h.stat_sn.set(self.next_stat_sn());
                    h.residual.set(residual);
                }
                h.flags = f;
                h.exp_cmd_sn.set(self.exp_cmd_sn);
                h.max_cmd_sn.set(self.max_cmd_sn);
                h.data_sn.set(data_sn);
                h.buffer_offset.set(off as u32);
                if by_reference {
                    self.encode_data_in_by_reference(&h.to_bhs(), &data_in, off, n);
                } else {
                    encode_pdu(
                        &mut self.out,
                        &h.to_bhs(),
                        &[],
                        &data_in[off..off + n],
                        self.digests,
                    );
                }
                data_sn += 1;
                off += n;
            }
            self.stats.bytes_in += data_len as u64;
        }
        if by_reference {
            self.out_held.push(data_in);
        } else {
            self.put_buf(data_in);
        }
        if data_len > 0 && good && task.bidi_read_len.is_none() {
            return; // status went with the last Data-In
        }
        let mut h = ScsiResponseBhs::zeroed_with(Opcode::ScsiResponse);
        h.flags = FLAG_FINAL | flags;
        h.response = 0;
        h.status = resp.status as u8;
        h.itt.set(task.itt);
        h.stat_sn.set(self.next_stat_sn());
        h.exp_cmd_sn.set(self.exp_cmd_sn);
        h.max_cmd_sn.set(self.max_cmd_sn);
        h.exp_data_sn.set(data_sn + task.r2t_sn);
        h.bidi_residual.set(bidi_residual);
        h.residual.set(residual);
        match &resp.sense {
            Some(s) if !s.is_empty() => {
                let len = (s.len().min(0xffff) as u16).to_be_bytes();
                encode_pdu_parts(
                    &mut self.out,
                    &h.to_bhs(),
                    &[],
                    &[&len, &s[..s.len().min(0xffff)]],
                    self.digests,
                );
            }
            _ => encode_pdu(&mut self.out, &h.to_bhs(), &[], &[], self.digests),
        }
    }

    /// Encode a Data-In whose data segment stays in `data` (the buffer that will be
    /// pushed to `out_held` next): header, then a reference, then padding and digest.
    fn encode_data_in_by_reference(
        &mut self,
        bhs: &[u8; BHS_LEN],
        data: &IoBuf,
        off: usize,
        n: usize,
    ) {
        let mut h = *bhs;
        h[4] = 0;
        let d = (n as u32).to_be_bytes();
        h[5..8].copy_from_slice(&d[1..4]);
        let start = self.out.len();
        self.out.extend_from_slice(&h);
        if self.digests.header {
            let crc = crc32c::crc32c(&self.out[start..]);
            self.out.extend_from_slice(&crc.to_le_bytes());
        }
        self.out_segs
            .push(OutSeg::Inline(self.out_inline_start, self.out.len()));
        let idx = self.out_held.len();
        self.out_segs.push(OutSeg::Held(idx, off, off + n));
        self.out_inline_start = self.out.len();
        let pad = pdu::pad_len(n);
        self.out.extend_from_slice(&[0u8; 3][..pad]);
        if self.digests.data {
            let crc = pdu::crc32c_padded(&data[off..off + n], pad);
            self.out.extend_from_slice(&crc.to_le_bytes());
        }
    }

    /// A SCSI Response without data for a task that is not executed.
    fn send_status_only(&mut self, task: &Task, status: ScsiStatus, sense: Option<&[u8]>) {
        let resp = ScsiResponse {
            status,
            sense: sense.map(<[u8]>::to_vec),
            data_in_len: 0,
            cdb_transfer_len: None,
        };
        let fake = Task {
            read: false,
            write: false,
            bidi_read_len: None,
            cdb_long: None,
            buf: IoBuf::new(),
            r2ts: Vec::new(),
            ..*task
        };
        self.complete(&fake, &resp, IoBuf::new());
    }

    // ---------------------------------------------------------------- time

    /// Time passed: send NOP-In pings, drop the connection on ping timeout or when a
    /// requested logout did not happen in time.
    pub fn on_tick(&mut self, now: Instant) {
        if self.close.is_some() {
            return;
        }
        if let Some(deadline) = self.logout_requested {
            if now >= deadline {
                self.close = Some(CloseReason::Shutdown);
                return;
            }
        }
        match self.ping {
            Some((_, sent)) => {
                if now.saturating_duration_since(sent.max(self.last_rx)) >= self.cfg.nop_in_timeout
                    && self.last_rx <= sent
                {
                    tracing::warn!(initiator = %self.info.initiator_name, "NOP-In ping timed out; closing connection");
                    self.close = Some(CloseReason::PingTimeout);
                } else if self.last_rx > sent {
                    // Traffic after the ping proves the initiator is alive.
                    self.ping = None;
                }
            }
            None => {
                if !self.cfg.nop_in_interval.is_zero()
                    && now.saturating_duration_since(self.last_rx) >= self.cfg.nop_in_interval
                {
                    let ttt = self.alloc_ttt();
                    let mut h = NopInBhs::zeroed_with(Opcode::NopIn);
                    h.flags = FLAG_FINAL;
                    h.itt.set(RESERVED_TAG);
                    h.ttt.set(ttt);
                    h.stat_sn.set(self.stat_sn);
                    h.exp_cmd_sn.set(self.exp_cmd_sn);
                    h.max_cmd_sn.set(self.max_cmd_sn);
                    encode_pdu(&mut self.out, &h.to_bhs(), &[], &[], self.digests);
                    self.ping = Some((ttt, now));
                }
            }
        }
    }

    /// When the next [`Connection::on_tick`] is due.
    pub fn next_timeout(&self) -> Instant {
        let mut t = match self.ping {
            Some((_, sent)) => sent + self.cfg.nop_in_timeout,
            None => self.last_rx + self.cfg.nop_in_interval.max(Duration::from_millis(100)),
        };
        if let Some(d) = self.logout_requested {
            t = t.min(d);
        }
        t
    }

    /// Ask the initiator to log out (Async Message, event 1) within `grace`; after it
    /// the connection closes. New commands are rejected with "waiting for logout".
    pub fn request_logout(&mut self, now: Instant, grace: Duration) {
        if self.logout_requested.is_some() || self.close.is_some() {
            return;
        }
        self.logout_requested = Some(now + grace);
        let mut h = AsyncMsgBhs::zeroed_with(Opcode::AsyncMsg);
        h.flags = FLAG_FINAL;
        h.itt.set(RESERVED_TAG);
        h.stat_sn.set(self.next_stat_sn());
        h.exp_cmd_sn.set(self.exp_cmd_sn);
        h.max_cmd_sn.set(self.max_cmd_sn);
        h.async_event = 1;
        h.parameter3.set(grace.as_secs().clamp(1, 3600) as u16);
        encode_pdu(&mut self.out, &h.to_bhs(), &[], &[], self.digests);
    }

    /// Abort every outstanding task (connection is closing).
    pub fn abort_all(&mut self) {
        let itts: Vec<u32> = self.tasks.keys().copied().collect();
        for itt in itts {
            self.abort_task_silently(itt);
        }
        self.ready.clear();
    }
}

#[cfg(test)]
mod tests;
