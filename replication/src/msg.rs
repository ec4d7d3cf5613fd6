//! The messages two replicas exchange after the link is authenticated, as plain Rust
//! values. The byte encoding lives in [`crate::wire`]; the state machine in
//! [`crate::replica`] only sees these types.
//!
//! Every message travels on one ordered, reliable connection (TCP). Each carries a
//! per-connection sequence number assigned by the wire layer; a gap or repeat is a
//! protocol error that drops the connection (the bitmap then drives a resync).

use bytes::Bytes;

use crate::types::{DiskState, Generations, Protocol, Role};

/// Version of the peer protocol spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Feature bits offered in [`Hello::features`].
pub mod feature {
    /// Checksum-based resync (`RsRequest::digest`).
    pub const CSUMS: u64 = 1 << 0;
    /// Online verify.
    pub const VERIFY: u64 = 1 << 1;
    /// Dual-primary write-conflict resolution by `peer_seq_seen`.
    pub const DUAL_PRIMARY: u64 = 1 << 2;
}

/// Flags in [`Hello::flags`].
pub mod hello_flag {
    /// The node was primary when it crashed (activity log extents marked dirty).
    pub const CRASHED_PRIMARY: u32 = 1 << 0;
    /// The operator asked this node to discard its data in a split brain.
    pub const DISCARD_MY_DATA: u32 = 1 << 1;
    /// `allow-two-primaries` is configured.
    pub const ALLOW_TWO_PRIMARIES: u32 = 1 << 2;
}

/// First message after authentication: everything the peer needs to decide whether
/// and in which direction to resync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol_version: u32,
    /// Feature bits ([`feature`]).
    pub features: u64,
    /// The sender's node id (0..=1 in a two-node appliance; must differ from ours).
    pub node_id: u8,
    /// The sender's node name (for `discard-node-NAME` and status).
    pub node_name: String,
    /// The replicated volume's UUID; a mismatch refuses the connection.
    pub volume_uuid: [u8; 16],
    /// Usable size in bytes; the smaller of the two is used.
    pub size_bytes: u64,
    /// Configured replication protocol; must match.
    pub protocol: Protocol,
    /// Current role.
    pub role: Role,
    /// Current disk state.
    pub disk: DiskState,
    /// Generation UUIDs.
    pub gens: Generations,
    /// [`hello_flag`] bits.
    pub flags: u32,
    /// Number of set bits in the sender's dirty bitmap (its changes since the bitmap
    /// generation), for `discard-least-changes` / `discard-zero-changes`.
    pub bitmap_weight_bits: u64,
    /// When the sender last became primary (driver clock, ms); 0 if it has not been
    /// primary in its current generation. Used by discard-younger/older-primary.
    pub primary_since_ms: u64,
}

/// The outcome of the connect-time decision, as both sides computed it; exchanged
/// so that a disagreement (a bug or mismatched configuration) drops the connection
/// instead of corrupting data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanCode {
    /// Nothing to resync.
    NoSync,
    /// The node with the given id is the sync source; resync only bitmap-marked blocks.
    BitmapFrom(u8),
    /// The node with the given id is the sync source; resync every block.
    FullFrom(u8),
    /// Refuse: disconnect (split brain unresolved, unrelated data, role conflict).
    Refuse,
}

/// One message on the replication link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// State exchange at connect.
    Hello(Hello),
    /// The connect-time decision as the sender computed it.
    Plan(PlanCode),
    /// A chunk of the sender's dirty bitmap: 64-bit words starting at word
    /// `first_word`; the receiver ORs it into its own. `last` ends the transfer.
    Bitmap {
        /// Index of the first 64-bit word.
        first_word: u64,
        /// The words (bit i of word w = block w*64+i).
        words: Vec<u64>,
        /// Whether this is the final chunk.
        last: bool,
    },
    /// An application write replicated to the peer.
    Data {
        /// Sender-assigned write sequence number (per connection, from 1).
        seq: u64,
        /// Highest write `seq` of the receiver that the sender had applied before it
        /// issued this write (dual-primary conflict resolution).
        peer_seq_seen: u64,
        /// The sender's current generation UUID; a mismatch is refused.
        generation: u64,
        /// Byte offset.
        offset_bytes: u64,
        /// Force unit access.
        fua: bool,
        /// The data.
        data: Bytes,
    },
    /// Protocol B: the write with this `seq` was received.
    RecvAck {
        /// The write.
        seq: u64,
    },
    /// The write with this `seq` is on the receiver's disk (sent for every protocol;
    /// protocol C completes the application write on it).
    WriteAck {
        /// The write.
        seq: u64,
    },
    /// The write with this `seq` failed on the receiver's disk; the sender marks the
    /// range out of sync.
    NegAck {
        /// The write.
        seq: u64,
    },
    /// Make every write received before this durable, then answer [`Message::FlushAck`].
    Flush {
        /// Flush id.
        id: u64,
    },
    /// Reply to [`Message::Flush`].
    FlushAck {
        /// Flush id.
        id: u64,
        /// Whether the flush succeeded.
        ok: bool,
    },
    /// Sync target asks for a range; with `digest`, the source may answer
    /// [`Message::RsInSync`] when its block has the same checksum.
    RsRequest {
        /// Request id.
        id: u64,
        /// Byte offset (bitmap-bit aligned).
        offset_bytes: u64,
        /// Length in bytes.
        len_bytes: u32,
        /// CRC32C of the target's current data, for checksum-based resync.
        digest: Option<u32>,
    },
    /// Resync data from the source.
    RsData {
        /// Request id.
        id: u64,
        /// Byte offset.
        offset_bytes: u64,
        /// The data.
        data: Bytes,
    },
    /// The range is already identical (checksum matched).
    RsInSync {
        /// Request id.
        id: u64,
    },
    /// The source could not read the range.
    RsNegAck {
        /// Request id.
        id: u64,
    },
    /// Sync target: resync complete; the target adopts the source's generation.
    RsDone,
    /// Online verify: the verify source's checksum of a range.
    OvRequest {
        /// Request id.
        id: u64,
        /// Byte offset.
        offset_bytes: u64,
        /// Length.
        len_bytes: u32,
        /// CRC32C of the source's data.
        digest: u32,
    },
    /// Online verify result for one range.
    OvReply {
        /// Request id.
        id: u64,
        /// Whether the ranges are identical.
        in_sync: bool,
    },
    /// Online verify finished on the source side.
    OvDone,
    /// Role or disk state changed on the sender.
    State {
        /// New role.
        role: Role,
        /// New disk state.
        disk: DiskState,
    },
    /// The sender (a primary about to write alone, or the fence-peer path) asks the
    /// receiver to mark its disk Outdated; answered by [`Message::OutdateAck`].
    Outdate,
    /// The receiver marked itself Outdated (persisted).
    OutdateAck,
    /// Keep-alive.
    Ping,
    /// Reply to [`Message::Ping`].
    PingAck,
    /// Orderly disconnect with a reason for the peer's log.
    Goodbye {
        /// Human-readable reason.
        reason: String,
    },
}

impl Message {
    /// Short name for logs and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Plan(_) => "Plan",
            Message::Bitmap { .. } => "Bitmap",
            Message::Data { .. } => "Data",
            Message::RecvAck { .. } => "RecvAck",
            Message::WriteAck { .. } => "WriteAck",
            Message::NegAck { .. } => "NegAck",
            Message::Flush { .. } => "Flush",
            Message::FlushAck { .. } => "FlushAck",
            Message::RsRequest { .. } => "RsRequest",
            Message::RsData { .. } => "RsData",
            Message::RsInSync { .. } => "RsInSync",
            Message::RsNegAck { .. } => "RsNegAck",
            Message::RsDone => "RsDone",
            Message::OvRequest { .. } => "OvRequest",
            Message::OvReply { .. } => "OvReply",
            Message::OvDone => "OvDone",
            Message::State { .. } => "State",
            Message::Outdate => "Outdate",
            Message::OutdateAck => "OutdateAck",
            Message::Ping => "Ping",
            Message::PingAck => "PingAck",
            Message::Goodbye { .. } => "Goodbye",
        }
    }

    /// Payload bytes this message carries (data and bitmap words), for accounting.
    pub fn payload_bytes(&self) -> u64 {
        match self {
            Message::Data { data, .. } | Message::RsData { data, .. } => data.len() as u64,
            Message::Bitmap { words, .. } => words.len() as u64 * 8,
            _ => 0,
        }
    }
}
