//! The replica state machine: one replicated volume on one node, sans-IO.
//!
//! Owns: role, disk and connection state, generation UUIDs, the dirty bitmap and the
//! activity-log hot set of one volume; the application write path (local write +
//! replication per protocol A/B/C), applying the peer's writes, the connect-time
//! handshake and plan, bitmap exchange, target-driven resync (optionally checksum
//! based), online verify, keep-alive and dead-peer rules, fencing freeze, split-brain
//! handling and dual-primary write-conflict resolution.
//!
//! Inputs come through [`Replica::handle`] together with `now_ms`; outputs are
//! [`Action`]s pulled with [`Replica::poll_action`]. The driver must execute actions in
//! order and must finish every `Persist*` action (durably) before executing the next
//! action: that is how "metadata before data" ordering is expressed. Disk and handler
//! operations are asynchronous and report back with a token.
//!
//! May not touch: sockets, files, clocks, threads, randomness (a seeded generator
//! supplied at construction makes generation UUIDs), SCSI.

mod al;
mod range;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::bitmap::Bitmap;
use crate::gens::{self, NodeView, Plan, Policies};
use crate::msg::{feature, hello_flag, Hello, Message, PlanCode, PROTOCOL_VERSION};
use crate::types::{
    uuid_eq, ConnState, DiskState, Fencing, Generations, OnIoError, Protocol, Role,
    AL_EXTENT_BYTES, BYTES_PER_BIT, HISTORY_LEN, UUID_JUST_CREATED, UUID_PRIMARY_BIT,
};
use al::HotExtents;
use range::RangeQueue;

/// Configuration of one replica (both nodes must agree on protocol and policies).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node's id.
    pub node_id: u8,
    /// This node's name.
    pub node_name: String,
    /// The peer's node id.
    pub peer_node_id: u8,
    /// The volume UUID (identity; must match the peer's).
    pub volume_uuid: [u8; 16],
    /// Replication protocol.
    pub protocol: Protocol,
    /// Split-brain and role-conflict policies.
    pub policies: Policies,
    /// Fencing policy.
    pub fencing: Fencing,
    /// Local I/O error policy.
    pub on_io_error: OnIoError,
    /// Checksum-based resync.
    pub csums: bool,
    /// Idle time before a keep-alive ping.
    pub ping_int_ms: u64,
    /// Time to wait for the ping answer.
    pub ping_timeout_ms: u64,
    /// Time to wait for an expected reply (handshake steps, write acks × `ko_count`).
    pub timeout_ms: u64,
    /// A peer that does not acknowledge a write within `ko_count × timeout_ms` is
    /// disconnected.
    pub ko_count: u32,
    /// Resync rate cap; 0 = unlimited (only `resync_requests_max` bounds it).
    pub resync_rate_max_bytes_per_s: u64,
    /// Dynamic control: while application writes were seen within the last second,
    /// the resync is throttled to this rate so that it does not compete with them
    /// (DRBD's c-min-rate idea); 0 = off (always run up to the maximum).
    pub resync_rate_min_bytes_per_s: u64,
    /// Resync requests in flight at most.
    pub resync_requests_max: u32,
    /// Bytes per resync request at most (multiple of 4 KiB).
    pub resync_request_bytes_max: u32,
    /// Writes acknowledged by the peer between automatic peer flushes (epoch size).
    pub epoch_writes_max: u32,
    /// Hot activity-log extents at most.
    pub al_extents_max: u32,
    /// Bitmap words per Bitmap message.
    pub bitmap_chunk_words: u32,
    /// Largest application write in bytes.
    pub write_bytes_max: u32,
    /// A deliberate bug for the simulator's self-test (feature `bug-injection` only).
    #[cfg(feature = "bug-injection")]
    pub injected_bug: Option<InjectedBug>,
}

/// Deliberate bugs the simulator must catch (feature `bug-injection` only).
#[cfg(feature = "bug-injection")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// Complete protocol-C writes before the peer acknowledged them.
    AckBeforePeer,
    /// Skip the generation rotation on the first write without the peer (makes split
    /// brain look like a plain resync).
    NoRotation,
}

impl ReplicaConfig {
    /// Defaults for everything but identity.
    pub fn new(node_id: u8, node_name: &str, peer_node_id: u8, volume_uuid: [u8; 16]) -> Self {
        ReplicaConfig {
            node_id,
            node_name: node_name.to_string(),
            peer_node_id,
            volume_uuid,
            protocol: Protocol::C,
            policies: Policies::default(),
            fencing: Fencing::DontCare,
            on_io_error: OnIoError::Detach,
            csums: false,
            ping_int_ms: 1000,
            ping_timeout_ms: 500,
            timeout_ms: 6000,
            ko_count: 7,
            resync_rate_max_bytes_per_s: 0,
            resync_rate_min_bytes_per_s: 0,
            resync_requests_max: 32,
            resync_request_bytes_max: 128 * 1024,
            epoch_writes_max: 2048,
            al_extents_max: 127,
            bitmap_chunk_words: 4096,
            write_bytes_max: 1 << 20,
            #[cfg(feature = "bug-injection")]
            injected_bug: None,
        }
    }
}

/// The part of the state kept in the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Persisted {
    /// Generation UUIDs.
    pub gens: Generations,
    /// Disk state to restore (Inconsistent, Outdated, Consistent or UpToDate).
    pub disk: DiskState,
    /// Primary at the time of writing.
    pub was_primary: bool,
    /// Cleanly shut down (set only by an orderly `down`).
    pub clean: bool,
    /// The node crashed while primary and the activity log has not been resynced yet.
    pub crashed_primary: bool,
    /// When it last became primary (ms, driver clock).
    pub primary_since_ms: u64,
}

impl Persisted {
    /// State of freshly created metadata.
    pub fn just_created() -> Self {
        Persisted {
            gens: Generations {
                current: UUID_JUST_CREATED,
                bitmap: 0,
                history: [0; HISTORY_LEN],
            },
            disk: DiskState::Inconsistent,
            was_primary: false,
            clean: true,
            crashed_primary: false,
            primary_since_ms: 0,
        }
    }
}

/// An application request to the replicated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppError {
    /// This node is not primary.
    NotPrimary,
    /// The local disk cannot serve I/O (state given).
    DiskNotReady(DiskState),
    /// Out of range or malformed.
    BadRequest(String),
    /// The local disk failed the I/O.
    Io,
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::NotPrimary => f.write_str("not primary (Secondary refuses writes)"),
            AppError::DiskNotReady(d) => write!(f, "local disk is {d}"),
            AppError::BadRequest(s) => f.write_str(s),
            AppError::Io => f.write_str("local I/O error"),
        }
    }
}

/// Operator commands (modelled on drbdadm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCmd {
    /// Become primary; `force` also promotes an Inconsistent/Outdated disk (making it
    /// the sync source of the next resync).
    Primary {
        /// Promote even without UpToDate data.
        force: bool,
    },
    /// Become secondary (refused while application writes are in flight).
    Secondary,
    /// Start connecting; with `discard_my_data`, this node is the victim of a split
    /// brain found at the next handshake.
    Connect {
        /// Discard this node's changes on split brain.
        discard_my_data: bool,
    },
    /// Drop the connection and stop connecting.
    Disconnect,
    /// Discard local data and resync it fully from the connected peer.
    Invalidate,
    /// Online verify of the whole device against the connected peer.
    Verify,
    /// Mark the local (secondary) disk Outdated.
    Outdate,
    /// Resume application I/O frozen by `resource-and-stonith` fencing.
    ResumeIo,
    /// Give up application I/O frozen by `resource-and-stonith` fencing: every held
    /// write and every write whose peer acknowledgement was outstanding when the link
    /// was lost completes with an I/O error (none is reported as written), and I/O
    /// unfreezes. The HA manager does this on a head that lost the cluster, after
    /// closing its initiators' connections, before demoting it.
    DropFrozenIo,
    /// Orderly shutdown: persist everything and mark the metadata clean.
    Down,
}

/// Why an admin command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

/// A handler (hook command) the driver runs; it answers with
/// [`Input::HandlerDone`] and the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Handler {
    /// Split brain detected (runs whether or not it was resolved).
    SplitBrain,
    /// Online verify found out-of-sync blocks.
    OutOfSync,
    /// The peer was lost while primary and fencing is configured.
    FencePeer,
    /// About to become sync target (e.g. snapshot the consistent data first). Resync
    /// waits for it.
    BeforeResyncTarget,
    /// Finished a resync as target.
    AfterResyncTarget,
    /// Local disk I/O error.
    LocalIoError,
    /// This node is the victim of a split-brain resolution while primary.
    PriLostAfterSb,
    /// This node is primary and would have become sync target (rr-conflict).
    PriLost,
}

impl Handler {
    /// The configuration key naming this handler.
    pub fn name(self) -> &'static str {
        match self {
            Handler::SplitBrain => "split-brain",
            Handler::OutOfSync => "out-of-sync",
            Handler::FencePeer => "fence-peer",
            Handler::BeforeResyncTarget => "before-resync-target",
            Handler::AfterResyncTarget => "after-resync-target",
            Handler::LocalIoError => "local-io-error",
            Handler::PriLostAfterSb => "pri-lost-after-sb",
            Handler::PriLost => "pri-lost",
        }
    }
}

/// Notable events for logs, status and the simulator's invariant checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Role, disk or connection state changed.
    StateChanged {
        /// Role.
        role: Role,
        /// Disk.
        disk: DiskState,
        /// Connection.
        conn: ConnState,
    },
    /// Handshake finished with this plan.
    Handshake {
        /// Rule and outcome, human-readable.
        plan: String,
    },
    /// Split brain detected.
    SplitBrain {
        /// Policy that resolved it, or `None` if left unresolved.
        resolved_by: Option<String>,
        /// The node whose changes are discarded, if resolved.
        victim: Option<u8>,
    },
    /// Resync started.
    ResyncStarted {
        /// This node is the source.
        source: bool,
        /// Blocks to resync.
        bits: u64,
        /// Full sync.
        full: bool,
    },
    /// Resync finished on this node.
    ResyncFinished {
        /// This node was the source.
        source: bool,
    },
    /// Online verify finished (on the source).
    VerifyFinished {
        /// Out-of-sync blocks found.
        out_of_sync_bits: u64,
    },
    /// A new data generation was started.
    NewGeneration {
        /// The new current UUID.
        current: u64,
    },
    /// The connection was lost or refused.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Application I/O is frozen (fencing) or resumed.
    IoFrozen {
        /// Frozen now.
        frozen: bool,
    },
}

/// Inputs to the state machine.
#[derive(Debug)]
pub enum Input {
    /// Application write.
    Write {
        /// Caller's id, echoed in [`Action::Complete`].
        id: u64,
        /// Byte offset.
        offset_bytes: u64,
        /// Data.
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Application flush (SYNCHRONIZE CACHE).
    Flush {
        /// Caller's id.
        id: u64,
    },
    /// A disk operation finished. Reads return their data.
    DiskDone {
        /// Token from the action.
        token: u64,
        /// Result: `Ok(Some(data))` for reads, `Ok(None)` for writes/flushes.
        result: Result<Option<Bytes>, ()>,
    },
    /// A connection to the peer is up and authenticated.
    LinkUp {
        /// Driver's connection id.
        conn: u64,
    },
    /// The connection is gone (reset, closed, failed).
    LinkDown {
        /// Driver's connection id.
        conn: u64,
    },
    /// A message arrived on a connection.
    Message {
        /// Driver's connection id.
        conn: u64,
        /// The message.
        msg: Message,
    },
    /// The peer sent something that could not be decoded (the driver closes the
    /// connection after this).
    ProtocolError {
        /// Driver's connection id.
        conn: u64,
        /// Why.
        reason: String,
    },
    /// Timers may have expired.
    Tick,
    /// Operator command; the result comes back as [`Action::AdminDone`].
    Admin {
        /// Caller's id.
        id: u64,
        /// The command.
        cmd: AdminCmd,
    },
    /// A handler finished.
    HandlerDone {
        /// Which.
        handler: Handler,
        /// Exit code (not configured = 0).
        exit_code: i32,
    },
}

/// Outputs of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Persist the superblock state (durably, before the next action).
    PersistState(Persisted),
    /// Persist the activity-log hot set (durably, before the next action). With
    /// `flush_data_first`, every completed data write must be made durable (flush the
    /// data device) before the transaction is written: an extent leaving the log must
    /// not leave behind cached writes a crash could lose unnoticed.
    PersistAl {
        /// The complete hot set.
        extents: Vec<u32>,
        /// Flush completed data writes first (an extent was evicted).
        flush_data_first: bool,
    },
    /// Persist these bitmap pages (page index, words) durably before the next action.
    /// Every completed data write must be made durable first (flush the data device):
    /// a cleared bit must never reach the disk before the data it vouches for.
    PersistBitmap(Vec<(usize, Vec<u64>)>),
    /// Write to the local disk; answer with [`Input::DiskDone`].
    DiskWrite {
        /// Token.
        token: u64,
        /// Byte offset.
        offset_bytes: u64,
        /// Data.
        data: Bytes,
        /// Force unit access.
        fua: bool,
    },
    /// Read from the local disk.
    DiskRead {
        /// Token.
        token: u64,
        /// Byte offset.
        offset_bytes: u64,
        /// Length.
        len_bytes: u32,
    },
    /// Flush the local disk's cache.
    DiskFlush {
        /// Token.
        token: u64,
    },
    /// Send a message on a connection.
    Send {
        /// Connection id.
        conn: u64,
        /// Message.
        msg: Message,
    },
    /// Close a connection (after sending what was queued before).
    Close {
        /// Connection id.
        conn: u64,
    },
    /// Keep (re)connecting to the peer (`true`) or stop trying (`false`).
    WantConnection(bool),
    /// Complete an application request.
    Complete {
        /// Caller's id.
        id: u64,
        /// Result.
        result: Result<(), AppError>,
    },
    /// Complete an admin command.
    AdminDone {
        /// Caller's id.
        id: u64,
        /// Result.
        result: Result<(), AdminError>,
    },
    /// Run a handler.
    RunHandler(Handler),
    /// Something worth logging.
    Event(Event),
}

/// Progress of a resync or verify, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SyncProgress {
    /// Bits to process at the start.
    pub total_bits: u64,
    /// Bits done.
    pub done_bits: u64,
    /// Bytes of resync data received (target) or sent (source).
    pub bytes: u64,
    /// Elapsed ms.
    pub elapsed_ms: u64,
}

impl SyncProgress {
    /// Percent done.
    pub fn percent(&self) -> f64 {
        if self.total_bits == 0 {
            100.0
        } else {
            100.0 * self.done_bits as f64 / self.total_bits as f64
        }
    }
    /// Average rate in bytes per second.
    pub fn rate_bytes_per_s(&self) -> u64 {
        (self.done_bits * BYTES_PER_BIT * 1000)
            .checked_div(self.elapsed_ms)
            .unwrap_or(0)
    }
    /// Estimated seconds to finish, if a rate is known.
    pub fn eta_s(&self) -> Option<u64> {
        let rate = self.rate_bytes_per_s();
        (rate > 0)
            .then(|| (self.total_bits - self.done_bits.min(self.total_bits)) * BYTES_PER_BIT / rate)
    }
}

/// Counters for status and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Application write bytes replicated to the peer.
    pub data_sent_bytes: u64,
    /// Peer write bytes applied locally.
    pub data_received_bytes: u64,
    /// Resync payload bytes sent (source).
    pub resync_sent_bytes: u64,
    /// Resync payload bytes received (target).
    pub resync_received_bytes: u64,
    /// Resync ranges skipped because checksums matched.
    pub resync_skipped_bytes: u64,
    /// Dual-primary write conflicts resolved.
    pub write_conflicts: u64,
    /// Split brains detected.
    pub split_brains: u64,
}

/// A snapshot of the replica's state for status output.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Role.
    pub role: Role,
    /// Local disk state.
    pub disk: DiskState,
    /// Connection state.
    pub conn: ConnState,
    /// Peer role, when connected.
    pub peer_role: Option<Role>,
    /// Peer disk, when connected.
    pub peer_disk: Option<DiskState>,
    /// Generations.
    pub gens: Generations,
    /// Out-of-sync bytes according to the bitmap.
    pub out_of_sync_bytes: u64,
    /// Resync or verify progress.
    pub sync: Option<SyncProgress>,
    /// Application I/O frozen by fencing.
    pub io_frozen: bool,
    /// Split brain detected and not resolved.
    pub split_brain: bool,
    /// Last reason the connection was lost or refused.
    pub last_disconnect: Option<String>,
    /// Counters.
    pub counters: Counters,
}

// ---------------------------------------------------------------------------------
// Internal state

/// What a disk token is for.
#[derive(Debug)]
enum DiskPurpose {
    AppWrite {
        app: u64,
    },
    PeerWrite {
        link: u64,
        seq: u64,
        offset: u64,
        len: u64,
        extents: (u32, u32),
    },
    ResyncWrite {
        link: u64,
        req: u64,
        offset: u64,
        len: u64,
    },
    ResyncRead {
        link: u64,
        req: u64,
        offset: u64,
        digest: Option<u32>,
    },
    CsumRead {
        link: u64,
        req: u64,
        offset: u64,
        len: u32,
    },
    VerifyRead {
        link: u64,
        req: u64,
        offset: u64,
        len: u32,
        source: bool,
    },
    AppFlush {
        flush: u64,
    },
    PeerFlush {
        link: u64,
        id: u64,
    },
}

/// An operation waiting in the range queue.
#[derive(Debug)]
enum RangeOp {
    AppWrite {
        app: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
        /// (link id, highest peer write seq received) when the write was ordered.
        seen: (u64, u64),
    },
    PeerWrite {
        link: u64,
        seq: u64,
        offset: u64,
        data: Bytes,
        fua: bool,
        extents: (u32, u32),
    },
    ResyncWrite {
        link: u64,
        req: u64,
        offset: u64,
        data: Bytes,
    },
    ResyncRead {
        link: u64,
        req: u64,
        offset: u64,
        len: u32,
        digest: Option<u32>,
    },
    CsumRead {
        link: u64,
        req: u64,
        offset: u64,
        len: u32,
    },
    VerifyRead {
        link: u64,
        req: u64,
        offset: u64,
        len: u32,
        source: bool,
    },
}

#[derive(Debug)]
struct AppWrite {
    offset: u64,
    len: u64,
    local_done: bool,
    local_failed: bool,
    peer_done: bool,
    extents: (u32, u32),
}

#[derive(Debug)]
struct Unacked {
    app: Option<u64>,
    offset: u64,
    data: Bytes,
    sent_ms: u64,
    /// Activity-log reference held until the peer settles the write (ack, negative
    /// ack, or the link is lost and the range is marked): an extent must not leave
    /// the log while a write in it may be missing on the peer and is not yet marked.
    extents: (u32, u32),
}

#[derive(Debug)]
struct AppFlush {
    local_done: bool,
    peer_done: bool,
    failed: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Hello sent, waiting for the peer's.
    Hello,
    /// Plans exchanged or pending.
    Plan,
    /// Exchanging bitmaps before a bitmap resync.
    Bitmaps,
    /// Handshake complete.
    Established,
}

#[derive(Debug)]
struct ResyncTarget {
    next_bit: u64,
    inflight: HashMap<u64, (u64, u64)>,
    next_req: u64,
    progress: SyncProgress,
    started_ms: u64,
    tokens_bytes: f64,
    refill_ms: u64,
    waiting_handler: bool,
    failed_bits: u64,
}

#[derive(Debug)]
struct Verify {
    next_bit: u64,
    inflight: u32,
    next_req: u64,
    out_of_sync: u64,
    progress: SyncProgress,
    started_ms: u64,
}

#[derive(Debug)]
struct Link {
    conn: u64,
    /// Monotonic id of this link (tokens of a dead link are ignored).
    id: u64,
    phase: Phase,
    opened_ms: u64,
    peer: Option<Hello>,
    my_plan: Option<Plan>,
    peer_plan: Option<PlanCode>,
    bitmap_sent: bool,
    bitmap_received: bool,
    peer_role: Role,
    peer_disk: DiskState,
    next_seq: u64,
    peer_seq_received: u64,
    unacked: BTreeMap<u64, Unacked>,
    /// Ranges acknowledged by the peer but not yet covered by a peer flush.
    epoch: VecDeque<(u64, u64)>,
    /// Entries drained from the front of `epoch` so far.
    epoch_base: u64,
    /// Flushes in flight: id → (app flush id, absolute end of the epoch it covers).
    flushes: HashMap<u64, (Option<u64>, u64)>,
    next_flush: u64,
    last_rx_ms: u64,
    ping_sent_ms: Option<u64>,
    /// Pending peer flushes waiting for earlier peer writes: (id, barrier token).
    peer_flush_wait: Vec<(u64, u64)>,
    resync_target: Option<ResyncTarget>,
    resync_source: Option<SyncProgress>,
    resync_source_started_ms: u64,
    verify: Option<Verify>,
    verify_target_out_of_sync: u64,
    /// Verify target: request id → the source's digest.
    ov_pending: HashMap<u64, u32>,
}

/// A tiny seeded generator for generation UUIDs (SplitMix64).
#[derive(Debug, Clone)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The replica state machine. See the module documentation.
#[derive(Debug)]
pub struct Replica {
    cfg: ReplicaConfig,
    size_bytes: u64,
    now_ms: u64,
    rng: SplitMix,

    role: Role,
    disk: DiskState,
    conn: ConnState,
    gens: Generations,
    crashed_primary: bool,
    primary_since_ms: u64,
    discard_my_data: bool,
    /// A new generation was started since the peer was last in sync.
    rotated: bool,
    split_brain: bool,
    frozen: bool,
    last_disconnect: Option<String>,

    bitmap: Bitmap,
    hot: HotExtents,

    link: Option<Link>,
    next_link_id: u64,
    want_connection: bool,

    next_token: u64,
    disk_ops: HashMap<u64, DiskPurpose>,
    ranges: RangeQueue<RangeOp>,
    app_writes: HashMap<u64, AppWrite>,
    app_flushes: HashMap<u64, AppFlush>,
    /// Writes held while I/O is frozen or a handshake runs.
    frozen_queue: VecDeque<Input>,
    /// Peer parts (`(is_flush, app id)`) of writes and flushes in flight when the link
    /// was lost under `resource-and-stonith`: completed only when I/O unfreezes (a
    /// write is acknowledged only once the peer is known fenced), failed by
    /// [`AdminCmd::DropFrozenIo`].
    frozen_peer_parts: Vec<(bool, u64)>,
    /// When the last application write arrived (dynamic resync throttling).
    last_app_write_ms: Option<u64>,
    /// Resync progress since the bitmap was last persisted.
    resync_unpersisted_bytes: u64,

    counters: Counters,
    actions: VecDeque<Action>,
}

fn extent_span(offset: u64, len: u64) -> (u32, u32) {
    let first = offset / AL_EXTENT_BYTES;
    let last = (offset + len.max(1) - 1) / AL_EXTENT_BYTES;
    (
        u32::try_from(first).unwrap_or(u32::MAX),
        u32::try_from(last).unwrap_or(u32::MAX),
    )
}

fn overlap(a_off: u64, a_len: u64, b_off: u64, b_len: u64) -> Option<(u64, u64)> {
    let s = a_off.max(b_off);
    let e = (a_off + a_len).min(b_off + b_len);
    (s < e).then_some((s, e))
}

impl Replica {
    /// Build a replica from loaded metadata. `bitmap` and `al_extents` come from the
    /// metadata store; `seed` seeds generation UUIDs (random in production).
    pub fn new(
        cfg: ReplicaConfig,
        size_bytes: u64,
        persisted: Persisted,
        bitmap: Bitmap,
        al_extents: &[u32],
        seed: u64,
        now_ms: u64,
    ) -> Self {
        let al_max = cfg.al_extents_max as usize;
        let mut r = Replica {
            rng: SplitMix(seed ^ (u64::from(cfg.node_id) << 56)),
            size_bytes,
            now_ms,
            role: Role::Secondary,
            disk: persisted.disk,
            conn: ConnState::StandAlone,
            gens: persisted.gens,
            crashed_primary: persisted.crashed_primary,
            primary_since_ms: persisted.primary_since_ms,
            discard_my_data: false,
            rotated: false,
            split_brain: false,
            frozen: false,
            last_disconnect: None,
            bitmap,
            hot: HotExtents::new(al_extents, al_max),
            link: None,
            next_link_id: 1,
            want_connection: false,
            next_token: 1,
            disk_ops: HashMap::new(),
            ranges: RangeQueue::default(),
            app_writes: HashMap::new(),
            app_flushes: HashMap::new(),
            frozen_queue: VecDeque::new(),
            frozen_peer_parts: Vec::new(),
            last_app_write_ms: None,
            resync_unpersisted_bytes: 0,
            counters: Counters::default(),
            actions: VecDeque::new(),
            cfg,
        };
        if !persisted.clean {
            // Crashed: every extent that may have had writes in flight (as primary: its
            // own; as secondary: the peer's, possibly still in a lost write cache) is out
            // of sync with the peer.
            r.crashed_primary = persisted.was_primary || persisted.crashed_primary;
            for e in al_extents {
                let off = u64::from(*e) * AL_EXTENT_BYTES;
                if off < r.size_bytes {
                    let len = AL_EXTENT_BYTES.min(r.size_bytes - off);
                    r.bitmap.set_range_bytes(off, len);
                }
            }
            r.persist_bitmap_dirty();
        }
        if r.disk == DiskState::Diskless || r.disk == DiskState::Attaching {
            r.disk = DiskState::Inconsistent;
        }
        r.persist_state(false);
        r
    }

    /// Feed one input at time `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            Input::Write {
                id,
                offset_bytes,
                data,
                fua,
            } => self.app_write(id, offset_bytes, data, fua),
            Input::Flush { id } => self.app_flush(id),
            Input::DiskDone { token, result } => self.disk_done(token, result),
            Input::LinkUp { conn } => self.link_up(conn),
            Input::LinkDown { conn } => {
                if self.link.as_ref().is_some_and(|l| l.conn == conn) {
                    self.lose_link("connection lost".into(), false);
                }
            }
            Input::Message { conn, msg } => {
                if self.link.as_ref().is_some_and(|l| l.conn == conn) {
                    if let Some(l) = self.link.as_mut() {
                        l.last_rx_ms = self.now_ms;
                        l.ping_sent_ms = None;
                    }
                    if let Err(reason) = self.on_message(msg) {
                        self.lose_link(format!("protocol error: {reason}"), false);
                    }
                }
            }
            Input::ProtocolError { conn, reason } => {
                if self.link.as_ref().is_some_and(|l| l.conn == conn) {
                    self.lose_link(format!("protocol error: {reason}"), false);
                }
            }
            Input::Tick => self.tick(),
            Input::Admin { id, cmd } => {
                let result = self.admin(cmd);
                self.actions.push_back(Action::AdminDone { id, result });
            }
            Input::HandlerDone { handler, exit_code } => self.handler_done(handler, exit_code),
        }
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the driver should deliver [`Input::Tick`] next (absolute ms).
    pub fn next_timeout_ms(&self) -> Option<u64> {
        let l = self.link.as_ref()?;
        let mut t = if l.phase == Phase::Established {
            match l.ping_sent_ms {
                Some(p) => p + self.cfg.ping_timeout_ms,
                None => l.last_rx_ms + self.cfg.ping_int_ms,
            }
        } else {
            l.opened_ms + self.cfg.timeout_ms
        };
        if let Some((_, u)) = l.unacked.iter().next() {
            t = t.min(u.sent_ms + self.cfg.timeout_ms * u64::from(self.cfg.ko_count.max(1)));
        }
        if let Some(rt) = &l.resync_target {
            if self.resync_rate_now() > 0 && !rt.waiting_handler {
                t = t.min(rt.refill_ms + 10);
            }
        }
        Some(t)
    }

    /// The resync rate cap in effect now (0 = unlimited).
    fn resync_rate_now(&self) -> u64 {
        let min = self.cfg.resync_rate_min_bytes_per_s;
        let busy = self
            .last_app_write_ms
            .is_some_and(|t| self.now_ms < t + 1000);
        match (busy && min > 0, self.cfg.resync_rate_max_bytes_per_s) {
            (true, 0) => min,
            (true, max) => min.min(max),
            (false, max) => max,
        }
    }

    /// Status snapshot.
    pub fn status(&self) -> Status {
        let l = self.link.as_ref().filter(|l| l.phase == Phase::Established);
        let sync = l.and_then(|l| {
            if let Some(rt) = &l.resync_target {
                Some(SyncProgress {
                    elapsed_ms: self.now_ms - rt.started_ms,
                    ..rt.progress
                })
            } else if let Some(p) = &l.resync_source {
                Some(SyncProgress {
                    elapsed_ms: self.now_ms - l.resync_source_started_ms,
                    ..*p
                })
            } else {
                l.verify.as_ref().map(|v| SyncProgress {
                    elapsed_ms: self.now_ms - v.started_ms,
                    ..v.progress
                })
            }
        });
        Status {
            role: self.role,
            disk: self.disk,
            conn: self.conn,
            peer_role: l.map(|l| l.peer_role),
            peer_disk: l.map(|l| l.peer_disk),
            gens: self.gens,
            out_of_sync_bytes: self.bitmap.weight() * BYTES_PER_BIT,
            sync,
            io_frozen: self.frozen,
            split_brain: self.split_brain,
            last_disconnect: self.last_disconnect.clone(),
            counters: self.counters,
        }
    }

    /// Role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Disk state.
    pub fn disk(&self) -> DiskState {
        self.disk
    }
    /// Connection state.
    pub fn conn(&self) -> ConnState {
        self.conn
    }
    /// Generation UUIDs.
    pub fn gens(&self) -> Generations {
        self.gens
    }
    /// The dirty bitmap (read-only).
    pub fn bitmap(&self) -> &Bitmap {
        &self.bitmap
    }
    /// Usable size.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    /// Whether local reads return current data (UpToDate, or Consistent/Outdated on
    /// a node that is not primary).
    pub fn readable(&self) -> bool {
        self.disk == DiskState::UpToDate
    }
    /// Whether no application write or flush is in progress.
    pub fn idle(&self) -> bool {
        self.app_writes.is_empty() && self.app_flushes.is_empty()
    }

    // -----------------------------------------------------------------------------
    // helpers

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn emit(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    fn send(&mut self, msg: Message) {
        if let Some(l) = &self.link {
            let conn = l.conn;
            self.actions.push_back(Action::Send { conn, msg });
        }
    }

    fn persisted(&self, clean: bool) -> Persisted {
        Persisted {
            gens: self.gens,
            disk: self.disk,
            was_primary: self.role == Role::Primary,
            clean,
            crashed_primary: self.crashed_primary,
            primary_since_ms: self.primary_since_ms,
        }
    }

    fn persist_state(&mut self, clean: bool) {
        let p = self.persisted(clean);
        self.emit(Action::PersistState(p));
    }

    fn persist_bitmap_dirty(&mut self) {
        let pages = self.bitmap.dirty_pages();
        if pages.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(pages.len());
        for p in pages {
            out.push((p, self.bitmap.page_words(p).to_vec()));
            self.bitmap.mark_page_clean(p);
        }
        self.emit(Action::PersistBitmap(out));
    }

    fn persist_bitmap_range(&mut self, offset: u64, len: u64) {
        let range = self.bitmap.pages_for_range_bytes(offset, len);
        let dirty: Vec<usize> = self
            .bitmap
            .dirty_pages()
            .into_iter()
            .filter(|p| range.contains(p))
            .collect();
        if dirty.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for p in dirty {
            out.push((p, self.bitmap.page_words(p).to_vec()));
            self.bitmap.mark_page_clean(p);
        }
        self.emit(Action::PersistBitmap(out));
    }

    fn state_event(&mut self) {
        let ev = Event::StateChanged {
            role: self.role,
            disk: self.disk,
            conn: self.conn,
        };
        self.emit(Action::Event(ev));
    }

    fn set_conn(&mut self, c: ConnState) {
        if self.conn != c {
            self.conn = c;
            self.state_event();
        }
    }

    fn set_disk(&mut self, d: DiskState) {
        if self.disk != d {
            self.disk = d;
            self.state_event();
            self.persist_state(false);
            if self
                .link
                .as_ref()
                .is_some_and(|l| l.phase == Phase::Established)
            {
                let (role, disk) = (self.role, self.disk);
                self.send(Message::State { role, disk });
            }
        }
    }

    fn new_uuid(&mut self) -> u64 {
        loop {
            let u = self.rng.next() & !UUID_PRIMARY_BIT;
            if u > 0xFF {
                return u;
            }
        }
    }

    /// Start a new data generation: the current one becomes the bitmap generation (or
    /// history, if the bitmap already tracks an older one).
    fn rotate_generation(&mut self) {
        if self.gens.bitmap == 0 {
            self.gens.bitmap = self.gens.current;
        } else {
            self.push_history(self.gens.current);
        }
        let mut u = self.new_uuid();
        if self.role == Role::Primary {
            u |= UUID_PRIMARY_BIT;
        }
        self.gens.current = u;
        self.rotated = true;
        self.persist_state(false);
        self.emit(Action::Event(Event::NewGeneration { current: u }));
    }

    fn push_history(&mut self, uuid: u64) {
        if uuid == 0 || uuid == UUID_JUST_CREATED {
            return;
        }
        if self.gens.history.iter().any(|&h| uuid_eq(h, uuid)) {
            return;
        }
        self.gens.history.rotate_right(1);
        self.gens.history[0] = uuid;
    }

    /// Whether application writes are sent to the peer now.
    fn replicating(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.phase == Phase::Established && l.peer_disk != DiskState::Diskless)
    }

    fn my_view(&self) -> NodeView {
        NodeView {
            node_id: self.cfg.node_id,
            node_name: self.cfg.node_name.clone(),
            role: self.role,
            disk: self.disk,
            gens: self.gens,
            crashed_primary: self.crashed_primary,
            discard_my_data: self.discard_my_data,
            bitmap_weight_bits: self.bitmap.weight(),
            primary_since_ms: if self.gens.bitmap != 0 || self.role == Role::Primary {
                self.primary_since_ms
            } else {
                0
            },
        }
    }

    fn hello(&self) -> Hello {
        let v = self.my_view();
        let mut flags = 0;
        if self.crashed_primary {
            flags |= hello_flag::CRASHED_PRIMARY;
        }
        if self.discard_my_data {
            flags |= hello_flag::DISCARD_MY_DATA;
        }
        if self.cfg.policies.allow_two_primaries {
            flags |= hello_flag::ALLOW_TWO_PRIMARIES;
        }
        Hello {
            protocol_version: PROTOCOL_VERSION,
            features: feature::CSUMS | feature::VERIFY | feature::DUAL_PRIMARY,
            node_id: self.cfg.node_id,
            node_name: self.cfg.node_name.clone(),
            volume_uuid: self.cfg.volume_uuid,
            size_bytes: self.size_bytes,
            protocol: self.cfg.protocol,
            role: self.role,
            disk: self.disk,
            gens: self.gens,
            flags,
            bitmap_weight_bits: v.bitmap_weight_bits,
            primary_since_ms: v.primary_since_ms,
        }
    }

    fn complete(&mut self, id: u64, result: Result<(), AppError>) {
        self.emit(Action::Complete { id, result });
    }
}

mod io;
mod link;
mod resync;
