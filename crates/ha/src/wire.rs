//! The HA datagrams: heartbeats between the two nodes, and the vote request and reply
//! exchanged with the witness. Each is one UDP datagram of a fixed size, integers
//! little-endian, versioned, and authenticated with HMAC-SHA256 under the cluster
//! secret.
//!
//! Owns: the byte layouts, encoding, decoding and MAC verification ([`ClusterKey`]).
//! Cluster id, node id, replay and freshness checks belong to the state machines that
//! receive the messages ([`crate::membership`], [`crate::quorum`], [`crate::witness`]).
//!
//! May not touch: sockets, clocks, randomness, logging of the secret or of MACs.
//!
//! ## Sequence numbers and replay protection
//!
//! Every sender stamps its datagrams with a [`Stamp`] `(boot, seq)`, compared
//! lexicographically. `boot` is a counter the driver persists and increments (durably)
//! before each start of the process, so it is strictly greater than any boot of an
//! earlier run; `seq` starts at 1 in every boot and grows with every datagram. A
//! receiver accepts a stamp only if it is newer than the newest it accepted (per link for
//! heartbeats, per node at the witness), so a recorded datagram can never be replayed
//! into a receiver that remembers the sender, and a sender's restart (higher boot)
//! needs no coordination.
//!
//! A receiver that restarted remembers nothing, so the stamp alone cannot stop a replay
//! of old traffic into it. Liveness therefore also needs an *echo*: each heartbeat
//! carries the newest stamp its sender accepted from the receiver on that link, and the
//! receiver counts a heartbeat as proof of life only if the echo names a heartbeat the
//! receiver sent *in its current boot* within the last dead time. A replayed or delayed
//! heartbeat cannot name a recent heartbeat of the receiver, whatever the receiver
//! remembers. Witness replies likewise echo the stamp of the request they answer, and a
//! node accepts a reply only for a request it sent recently and newer than the last
//! answered one; its lease is measured from when it *sent* that request.
//!
//! The magic and the kind byte lead every MAC input, separating these MACs from any other
//! use of the same secret (the replication link's handshake MACs start with the label
//! `twinsan-repl-auth-v1`).
//!
//! ## Common header (24 bytes)
//!
//! ```text
//! offset size field
//!  0      4   magic "TWHA" (54 57 48 41)
//!  4      2   version = 1
//!  6      1   kind: 1 heartbeat, 2 vote request, 3 vote reply
//!  7      1   sender node id (0xFF is the witness; nodes use 0..=0xFE)
//!  8     16   cluster id
//! ```
//!
//! ## Heartbeat (kind 1, 112 bytes)
//!
//! ```text
//! 24  8  stamp boot (>= 1)       32  8  stamp seq
//! 40  8  echo boot (0 = none)    48  8  echo seq (0 when echo boot is 0)
//! 56  4  view flags: bit 0 sees peer, bit 1 has quorum, bit 2 wait-for-all satisfied,
//!        bit 3 quorum without the peer (witness vote or two-node mode); other bits
//!        must be 0
//! 60  4  role summary (opaque to this layer)
//! 64  4  sender's dead time in ms
//! 68  1  link index              69  3  reserved, 0
//! 72  8  sender's clock in ms (informational)
//! 80 32  HMAC-SHA256(secret, bytes 0..80)
//! ```
//!
//! ## Vote request (kind 2, node → witness, 88 bytes)
//!
//! ```text
//! 24  8  stamp boot              32  8  stamp seq
//! 40  4  flags: bit 0 release (give the vote back; no reply), bit 1 sender sees its
//!        peer (informational); other bits must be 0
//! 44  4  role summary (informational)
//! 48  8  sender's clock in ms (informational)
//! 56 32  HMAC-SHA256(secret, bytes 0..56)
//! ```
//!
//! ## Vote reply (kind 3, witness → node, 104 bytes, sender id 0xFF)
//!
//! ```text
//! 24  8  witness boot            32  8  echo boot (the request's stamp)
//! 40  8  echo seq                48  8  term
//! 56  1  recipient node id
//! 57  1  status: 1 granted, 2 denied (held by another node), 3 not ready (witness
//!        starting)
//! 58  1  holder node id (0xFF = none)
//! 59  1  reserved, 0
//! 60  4  lease in ms (granted)
//! 64  8  witness clock in ms (informational)
//! 72 32  HMAC-SHA256(secret, bytes 0..72)
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Magic at the start of every HA datagram.
pub const MAGIC: [u8; 4] = *b"TWHA";
/// Wire version this build speaks.
pub const VERSION: u16 = 1;
/// Length of the common header.
pub const HEADER_BYTES: usize = 24;
/// Length of a heartbeat datagram.
pub const HEARTBEAT_BYTES: usize = 112;
/// Length of a vote request datagram.
pub const VOTE_REQUEST_BYTES: usize = 88;
/// Length of a vote reply datagram.
pub const VOTE_REPLY_BYTES: usize = 104;
/// Length of the MAC that ends every datagram.
pub const MAC_BYTES: usize = 32;
/// Shortest cluster secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;
/// The sender node id of witness replies; no node may use it. Also "no node" in the
/// holder field of a reply.
pub const WITNESS_NODE_ID: u8 = 0xFF;
/// Longest datagram of this protocol (receive buffers may be this size).
pub const DATAGRAM_BYTES_MAX: usize = HEARTBEAT_BYTES;

const KIND_HEARTBEAT: u8 = 1;
const KIND_VOTE_REQUEST: u8 = 2;
const KIND_VOTE_REPLY: u8 = 3;

/// View flag: the sender sees its peer (at least one link up).
pub const VIEW_SEES_PEER: u32 = 1 << 0;
/// View flag: the sender has quorum.
pub const VIEW_HAS_QUORUM: u32 = 1 << 1;
/// View flag: the sender's wait-for-all condition is satisfied.
pub const VIEW_WAIT_FOR_ALL_SATISFIED: u32 = 1 << 2;
/// View flag: the sender has quorum without counting the receiver (it holds the
/// witness's vote, or two-node mode lost the peer).
pub const VIEW_QUORUM_WITHOUT_PEER: u32 = 1 << 3;
const VIEW_KNOWN: u32 =
    VIEW_SEES_PEER | VIEW_HAS_QUORUM | VIEW_WAIT_FOR_ALL_SATISFIED | VIEW_QUORUM_WITHOUT_PEER;

/// Vote request flag: give the vote back.
pub const REQUEST_RELEASE: u32 = 1 << 0;
/// Vote request flag: the sender currently sees its peer.
pub const REQUEST_SEES_PEER: u32 = 1 << 1;
const REQUEST_KNOWN: u32 = REQUEST_RELEASE | REQUEST_SEES_PEER;

const STATUS_GRANTED: u8 = 1;
const STATUS_DENIED: u8 = 2;
const STATUS_NOT_READY: u8 = 3;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 4],
    version: U16,
    kind: u8,
    sender: u8,
    cluster_id: [u8; 16],
}
const _: () = assert!(size_of::<RawHeader>() == HEADER_BYTES);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawHeartbeat {
    hdr: RawHeader,
    boot: U64,
    seq: U64,
    echo_boot: U64,
    echo_seq: U64,
    view_flags: U32,
    role_summary: U32,
    dead_time_ms: U32,
    link: u8,
    reserved: [u8; 3],
    timestamp_ms: U64,
    mac: [u8; MAC_BYTES],
}
const _: () = assert!(size_of::<RawHeartbeat>() == HEARTBEAT_BYTES);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawVoteRequest {
    hdr: RawHeader,
    boot: U64,
    seq: U64,
    flags: U32,
    role_summary: U32,
    timestamp_ms: U64,
    mac: [u8; MAC_BYTES],
}
const _: () = assert!(size_of::<RawVoteRequest>() == VOTE_REQUEST_BYTES);

#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawVoteReply {
    hdr: RawHeader,
    witness_boot: U64,
    echo_boot: U64,
    echo_seq: U64,
    term: U64,
    to: u8,
    status: u8,
    holder: u8,
    reserved: u8,
    lease_ms: U32,
    timestamp_ms: U64,
    mac: [u8; MAC_BYTES],
}
const _: () = assert!(size_of::<RawVoteReply>() == VOTE_REPLY_BYTES);

/// Why a datagram was refused. Nothing here carries the secret or a MAC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The configured secret is too short (refused at construction).
    #[error("cluster secret is {len_bytes} bytes; at least {min_bytes} are required")]
    SecretTooShort {
        /// Length of the secret given.
        len_bytes: usize,
        /// [`MIN_SECRET_BYTES`].
        min_bytes: usize,
    },
    /// Shorter than the fixed part of the header.
    #[error("datagram of {len_bytes} bytes is too short to be a twinsan HA datagram")]
    TooShort {
        /// Received length.
        len_bytes: usize,
    },
    /// Not ours (another service on the port, a scanner).
    #[error("not a twinsan HA datagram (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// A wire version this build does not speak.
    #[error("unsupported HA wire version {0} (this build speaks {VERSION})")]
    UnsupportedVersion(u16),
    /// A message kind this build does not know.
    #[error("unknown HA message kind {0}")]
    UnknownKind(u8),
    /// The length does not match the kind's fixed size.
    #[error("{kind} datagram is {got_bytes} bytes, expected {expected_bytes}")]
    BadLength {
        /// Message kind.
        kind: &'static str,
        /// Its fixed size.
        expected_bytes: usize,
        /// Received.
        got_bytes: usize,
    },
    /// The MAC does not verify: a different cluster secret, or a corrupted datagram.
    #[error("authentication failed: wrong cluster secret or corrupted datagram")]
    BadMac,
    /// Flag bits this version does not define.
    #[error("unknown flag bits {0:#x}")]
    UnknownFlags(u32),
    /// A vote status this version does not define.
    #[error("unknown vote status {0}")]
    UnknownStatus(u8),
    /// A field holds a value the format forbids.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// The cluster secret, prepared for HMAC-SHA256. Its `Debug` output hides the key.
#[derive(Clone)]
pub struct ClusterKey(HmacSha256);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Prepare `secret` (at least [`MIN_SECRET_BYTES`] bytes).
    pub fn new(secret: &[u8]) -> Result<Self, WireError> {
        let too_short = WireError::SecretTooShort {
            len_bytes: secret.len(),
            min_bytes: MIN_SECRET_BYTES,
        };
        if secret.len() < MIN_SECRET_BYTES {
            return Err(too_short);
        }
        // HMAC takes keys of any length; the check above is the only failure.
        HmacSha256::new_from_slice(secret)
            .map(ClusterKey)
            .map_err(|_| too_short)
    }

    pub(crate) fn tag(&self, covered: &[u8]) -> [u8; MAC_BYTES] {
        let mut m = self.0.clone();
        m.update(covered);
        m.finalize().into_bytes().into()
    }

    pub(crate) fn verify(&self, covered: &[u8], tag: &[u8]) -> Result<(), WireError> {
        let mut m = self.0.clone();
        m.update(covered);
        m.verify_slice(tag).map_err(|_| WireError::BadMac)
    }
}

/// A sender's position in its stream of datagrams: persisted boot counter, then
/// per-boot counter. Ordered lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// Boot counter (>= 1), persisted and incremented before every start.
    pub boot: u64,
    /// Datagram counter within the boot (>= 1).
    pub seq: u64,
}

/// What a node tells its peer about itself in every heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct View {
    /// The sender sees the receiver (at least one link up).
    pub sees_peer: bool,
    /// The sender has quorum.
    pub has_quorum: bool,
    /// The sender's wait-for-all condition is satisfied.
    pub wait_for_all_satisfied: bool,
    /// The sender has quorum without counting the receiver (witness vote, or two-node
    /// mode without the peer): the receiver must not count the sender as seeing it.
    pub quorum_without_peer: bool,
    /// The sender's role summary; opaque to this layer (the HA manager defines it).
    pub role_summary: u32,
}

impl View {
    fn flags(&self) -> u32 {
        (if self.sees_peer { VIEW_SEES_PEER } else { 0 })
            | (if self.has_quorum { VIEW_HAS_QUORUM } else { 0 })
            | (if self.wait_for_all_satisfied {
                VIEW_WAIT_FOR_ALL_SATISFIED
            } else {
                0
            })
            | (if self.quorum_without_peer {
                VIEW_QUORUM_WITHOUT_PEER
            } else {
                0
            })
    }
}

/// A heartbeat from one node to its peer over one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Cluster id.
    pub cluster_id: [u8; 16],
    /// Sender's node id.
    pub sender: u8,
    /// Link index the heartbeat was sent on.
    pub link: u8,
    /// Sender's stamp.
    pub stamp: Stamp,
    /// The newest stamp the sender accepted from the receiver on this link.
    pub echo: Option<Stamp>,
    /// Sender's view.
    pub view: View,
    /// Sender's dead time: how long it keeps a link up without fresh heartbeats.
    pub dead_time_ms: u32,
    /// Sender's clock (informational).
    pub timestamp_ms: u64,
}

/// A node asks the witness for its vote, renews it, or gives it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteRequest {
    /// Cluster id.
    pub cluster_id: [u8; 16],
    /// Requesting node.
    pub sender: u8,
    /// Sender's stamp.
    pub stamp: Stamp,
    /// Give the vote back (no reply).
    pub release: bool,
    /// The sender currently sees its peer (informational).
    pub sees_peer: bool,
    /// The sender's role summary (informational).
    pub role_summary: u32,
    /// Sender's clock (informational).
    pub timestamp_ms: u64,
}

/// The witness's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteStatus {
    /// The vote is the recipient's for `lease_ms` from when it sent the request.
    Granted,
    /// Another node holds the vote.
    Denied,
    /// The witness has just started and grants nothing until every lease it may have
    /// granted before its restart has expired.
    NotReady,
}

/// The witness's reply to one vote request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VoteReply {
    /// Cluster id.
    pub cluster_id: [u8; 16],
    /// The node the reply is for.
    pub to: u8,
    /// The witness's boot counter.
    pub witness_boot: u64,
    /// Stamp of the request answered.
    pub echo: Stamp,
    /// The answer.
    pub status: VoteStatus,
    /// The node holding the vote, if any.
    pub holder: Option<u8>,
    /// The holder's term (grant number; grows with every new grant).
    pub term: u64,
    /// Lease length granted (from the request's send time).
    pub lease_ms: u32,
    /// Witness clock (informational).
    pub timestamp_ms: u64,
}

/// Any HA datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Node ↔ node.
    Heartbeat(Heartbeat),
    /// Node → witness.
    VoteRequest(VoteRequest),
    /// Witness → node.
    VoteReply(VoteReply),
}

fn header(kind: u8, sender: u8, cluster_id: [u8; 16]) -> RawHeader {
    RawHeader {
        magic: MAGIC,
        version: U16::new(VERSION),
        kind,
        sender,
        cluster_id,
    }
}

fn seal<const N: usize>(mut bytes: [u8; N], key: &ClusterKey) -> [u8; N] {
    let tag = key.tag(&bytes[..N - MAC_BYTES]);
    bytes[N - MAC_BYTES..].copy_from_slice(&tag);
    bytes
}

impl Heartbeat {
    /// The datagram.
    pub fn encode(&self, key: &ClusterKey) -> [u8; HEARTBEAT_BYTES] {
        let echo = self.echo.unwrap_or(Stamp { boot: 0, seq: 0 });
        let raw = RawHeartbeat {
            hdr: header(KIND_HEARTBEAT, self.sender, self.cluster_id),
            boot: U64::new(self.stamp.boot),
            seq: U64::new(self.stamp.seq),
            echo_boot: U64::new(echo.boot),
            echo_seq: U64::new(echo.seq),
            view_flags: U32::new(self.view.flags()),
            role_summary: U32::new(self.view.role_summary),
            dead_time_ms: U32::new(self.dead_time_ms),
            link: self.link,
            reserved: [0; 3],
            timestamp_ms: U64::new(self.timestamp_ms),
            mac: [0; MAC_BYTES],
        };
        seal(zerocopy::transmute!(raw), key)
    }
}

impl VoteRequest {
    /// The datagram.
    pub fn encode(&self, key: &ClusterKey) -> [u8; VOTE_REQUEST_BYTES] {
        let flags = (if self.release { REQUEST_RELEASE } else { 0 })
            | (if self.sees_peer { REQUEST_SEES_PEER } else { 0 });
        let raw = RawVoteRequest {
            hdr: header(KIND_VOTE_REQUEST, self.sender, self.cluster_id),
            boot: U64::new(self.stamp.boot),
            seq: U64::new(self.stamp.seq),
            flags: U32::new(flags),
            role_summary: U32::new(self.role_summary),
            timestamp_ms: U64::new(self.timestamp_ms),
            mac: [0; MAC_BYTES],
        };
        seal(zerocopy::transmute!(raw), key)
    }
}

impl VoteReply {
    /// The datagram.
    pub fn encode(&self, key: &ClusterKey) -> [u8; VOTE_REPLY_BYTES] {
        let status = match self.status {
            VoteStatus::Granted => STATUS_GRANTED,
            VoteStatus::Denied => STATUS_DENIED,
            VoteStatus::NotReady => STATUS_NOT_READY,
        };
        let raw = RawVoteReply {
            hdr: header(KIND_VOTE_REPLY, WITNESS_NODE_ID, self.cluster_id),
            witness_boot: U64::new(self.witness_boot),
            echo_boot: U64::new(self.echo.boot),
            echo_seq: U64::new(self.echo.seq),
            term: U64::new(self.term),
            to: self.to,
            status,
            holder: self.holder.unwrap_or(WITNESS_NODE_ID),
            reserved: 0,
            lease_ms: U32::new(self.lease_ms),
            timestamp_ms: U64::new(self.timestamp_ms),
            mac: [0; MAC_BYTES],
        };
        seal(zerocopy::transmute!(raw), key)
    }
}

impl Message {
    /// The datagram.
    pub fn encode(&self, key: &ClusterKey) -> Vec<u8> {
        match self {
            Message::Heartbeat(m) => m.encode(key).to_vec(),
            Message::VoteRequest(m) => m.encode(key).to_vec(),
            Message::VoteReply(m) => m.encode(key).to_vec(),
        }
    }
}

/// Decode and authenticate one datagram. Checks, in order: header length, magic,
/// version, kind, the kind's exact length, the MAC, then the fields (flags, status,
/// reserved bytes, stamps, node ids). Never panics.
pub fn decode(bytes: &[u8], key: &ClusterKey) -> Result<Message, WireError> {
    // magic(4) + version(2) + kind(1): enough to name the message.
    if bytes.len() < 7 {
        return Err(WireError::TooShort {
            len_bytes: bytes.len(),
        });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[..4]);
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let (name, expected) = match bytes[6] {
        KIND_HEARTBEAT => ("heartbeat", HEARTBEAT_BYTES),
        KIND_VOTE_REQUEST => ("vote request", VOTE_REQUEST_BYTES),
        KIND_VOTE_REPLY => ("vote reply", VOTE_REPLY_BYTES),
        other => return Err(WireError::UnknownKind(other)),
    };
    if bytes.len() != expected {
        return Err(WireError::BadLength {
            kind: name,
            expected_bytes: expected,
            got_bytes: bytes.len(),
        });
    }
    let (covered, tag) = bytes.split_at(expected - MAC_BYTES);
    key.verify(covered, tag)?;
    match bytes[6] {
        KIND_HEARTBEAT => decode_heartbeat(bytes).map(Message::Heartbeat),
        KIND_VOTE_REQUEST => decode_vote_request(bytes).map(Message::VoteRequest),
        _ => decode_vote_reply(bytes).map(Message::VoteReply),
    }
}

fn node_sender(hdr: &RawHeader) -> Result<u8, WireError> {
    if hdr.sender == WITNESS_NODE_ID {
        return Err(WireError::Invalid(
            "node message with the witness's sender id",
        ));
    }
    Ok(hdr.sender)
}

fn stamp(boot: u64, seq: u64) -> Result<Stamp, WireError> {
    if boot == 0 || seq == 0 {
        return Err(WireError::Invalid("stamp boot and seq must be at least 1"));
    }
    Ok(Stamp { boot, seq })
}

fn decode_heartbeat(bytes: &[u8]) -> Result<Heartbeat, WireError> {
    let raw = RawHeartbeat::read_from_bytes(bytes).map_err(|_| WireError::TooShort {
        len_bytes: bytes.len(),
    })?;
    let flags = raw.view_flags.get();
    if flags & !VIEW_KNOWN != 0 {
        return Err(WireError::UnknownFlags(flags & !VIEW_KNOWN));
    }
    if raw.reserved != [0; 3] {
        return Err(WireError::Invalid("reserved heartbeat bytes are not zero"));
    }
    let echo = match (raw.echo_boot.get(), raw.echo_seq.get()) {
        (0, 0) => None,
        (0, _) => return Err(WireError::Invalid("echo seq without echo boot")),
        (b, s) => Some(stamp(b, s)?),
    };
    Ok(Heartbeat {
        cluster_id: raw.hdr.cluster_id,
        sender: node_sender(&raw.hdr)?,
        link: raw.link,
        stamp: stamp(raw.boot.get(), raw.seq.get())?,
        echo,
        view: View {
            sees_peer: flags & VIEW_SEES_PEER != 0,
            has_quorum: flags & VIEW_HAS_QUORUM != 0,
            wait_for_all_satisfied: flags & VIEW_WAIT_FOR_ALL_SATISFIED != 0,
            quorum_without_peer: flags & VIEW_QUORUM_WITHOUT_PEER != 0,
            role_summary: raw.role_summary.get(),
        },
        dead_time_ms: raw.dead_time_ms.get(),
        timestamp_ms: raw.timestamp_ms.get(),
    })
}

fn decode_vote_request(bytes: &[u8]) -> Result<VoteRequest, WireError> {
    let raw = RawVoteRequest::read_from_bytes(bytes).map_err(|_| WireError::TooShort {
        len_bytes: bytes.len(),
    })?;
    let flags = raw.flags.get();
    if flags & !REQUEST_KNOWN != 0 {
        return Err(WireError::UnknownFlags(flags & !REQUEST_KNOWN));
    }
    Ok(VoteRequest {
        cluster_id: raw.hdr.cluster_id,
        sender: node_sender(&raw.hdr)?,
        stamp: stamp(raw.boot.get(), raw.seq.get())?,
        release: flags & REQUEST_RELEASE != 0,
        sees_peer: flags & REQUEST_SEES_PEER != 0,
        role_summary: raw.role_summary.get(),
        timestamp_ms: raw.timestamp_ms.get(),
    })
}

fn decode_vote_reply(bytes: &[u8]) -> Result<VoteReply, WireError> {
    let raw = RawVoteReply::read_from_bytes(bytes).map_err(|_| WireError::TooShort {
        len_bytes: bytes.len(),
    })?;
    if raw.hdr.sender != WITNESS_NODE_ID {
        return Err(WireError::Invalid("vote reply not sent by the witness"));
    }
    if raw.reserved != 0 {
        return Err(WireError::Invalid("reserved vote reply byte is not zero"));
    }
    if raw.to == WITNESS_NODE_ID {
        return Err(WireError::Invalid("vote reply addressed to the witness"));
    }
    if raw.witness_boot.get() == 0 {
        return Err(WireError::Invalid("witness boot must be at least 1"));
    }
    let status = match raw.status {
        STATUS_GRANTED => VoteStatus::Granted,
        STATUS_DENIED => VoteStatus::Denied,
        STATUS_NOT_READY => VoteStatus::NotReady,
        other => return Err(WireError::UnknownStatus(other)),
    };
    let holder = (raw.holder != WITNESS_NODE_ID).then_some(raw.holder);
    if status == VoteStatus::Granted && holder != Some(raw.to) {
        return Err(WireError::Invalid("granted vote names another holder"));
    }
    Ok(VoteReply {
        cluster_id: raw.hdr.cluster_id,
        to: raw.to,
        witness_boot: raw.witness_boot.get(),
        echo: stamp(raw.echo_boot.get(), raw.echo_seq.get())?,
        status,
        holder,
        term: raw.term.get(),
        lease_ms: raw.lease_ms.get(),
        timestamp_ms: raw.timestamp_ms.get(),
    })
}

#[cfg(test)]
mod tests;
