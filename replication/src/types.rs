//! Plain state types shared by the replication core, its wire codec, its metadata and
//! the simulator: roles, disk and connection states, protocols, generation UUIDs and
//! the DRBD-named policies. No I/O and no logic beyond parsing and display.

use std::fmt;

/// Bytes of data tracked by one bit of the dirty bitmap.
pub const BYTES_PER_BIT: u64 = 4096;
/// Bytes covered by one activity-log extent.
pub const AL_EXTENT_BYTES: u64 = 4 << 20;
/// Number of history generation UUIDs kept per node.
pub const HISTORY_LEN: usize = 4;
/// The current UUID of a freshly created device that has never been synchronized or
/// declared consistent ("just created").
pub const UUID_JUST_CREATED: u64 = 4;
/// The lowest bit of a generation UUID: set when the generation was started by a primary.
pub const UUID_PRIMARY_BIT: u64 = 1;

/// Role of a node for one replicated volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts application I/O and replicates writes to the peer.
    Primary,
    /// Applies the peer's writes; refuses application writes.
    Secondary,
}

/// State of the local disk as DRBD names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiskState {
    /// No local disk (detached after an I/O error, or never attached).
    Diskless,
    /// Metadata is being read.
    Attaching,
    /// The data is not usable (sync target, or never synchronized).
    Inconsistent,
    /// Consistent, but known to be older than the peer's.
    Outdated,
    /// Consistent; whether it is the newest is not known (peer unreachable).
    Consistent,
    /// Consistent and current.
    UpToDate,
}

/// State of the replication link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// Not trying to connect (administratively down, or refused after a handshake).
    StandAlone,
    /// Trying to reach the peer.
    Connecting,
    /// Connected, authenticated and in sync (or no resync needed).
    Connected,
    /// Connected; sending resync data to the peer.
    SyncSource,
    /// Connected; receiving resync data from the peer.
    SyncTarget,
    /// Resync paused on the source side.
    PausedSyncSource,
    /// Resync paused on the target side.
    PausedSyncTarget,
    /// Online verify: this node sends digests.
    VerifySource,
    /// Online verify: this node compares digests.
    VerifyTarget,
    /// Split brain detected and not resolved automatically; StandAlone until an operator
    /// acts (`discard-my-data` on the victim, `connect` on both).
    SplitBrain,
}

impl ConnState {
    /// Whether a live, handshaken connection exists in this state.
    pub fn is_connected(self) -> bool {
        !matches!(
            self,
            ConnState::StandAlone | ConnState::Connecting | ConnState::SplitBrain
        )
    }
}

/// Replication protocol: when a write completes to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Local disk done and the write handed to the transport.
    A,
    /// Local disk done and the peer has received the write.
    B,
    /// Local disk done and the write is on the peer's disk (default).
    C,
}

/// Generation UUIDs of one node (the data-generation identifiers of DRBD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Generations {
    /// Identifies the current data generation. Bit 0 is [`UUID_PRIMARY_BIT`].
    pub current: u64,
    /// The generation the dirty bitmap tracks changes against; 0 when the bitmap is
    /// not tracking (connected and in sync).
    pub bitmap: u64,
    /// Older generations, newest first; 0 = empty slot.
    pub history: [u64; HISTORY_LEN],
}

/// Compare two UUIDs ignoring the role bit.
pub fn uuid_eq(a: u64, b: u64) -> bool {
    a != 0 && b != 0 && (a | UUID_PRIMARY_BIT) == (b | UUID_PRIMARY_BIT)
}

/// `after-sb-0pri`: split brain detected with no node primary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AfterSb0Pri {
    /// Do not resolve; both go StandAlone (default).
    Disconnect,
    /// Discard the node that became primary last (younger).
    DiscardYoungerPrimary,
    /// Discard the node that became primary first (older).
    DiscardOlderPrimary,
    /// If only one node changed data, keep its changes; otherwise disconnect.
    DiscardZeroChanges,
    /// Discard the node with fewer changed blocks.
    DiscardLeastChanges,
    /// Always discard the named node's data.
    DiscardNode(String),
}

/// `after-sb-1pri`: split brain detected with exactly one node primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AfterSb1Pri {
    /// Do not resolve (default).
    Disconnect,
    /// Discard the secondary if the 0pri policy also picks it; otherwise disconnect.
    Consensus,
    /// Always discard the secondary.
    DiscardSecondary,
    /// Apply the 0pri verdict; if it picks the primary, run `pri-lost-after-sb` there.
    CallPriLostAfterSb,
    /// Apply the 0pri verdict even if it discards the primary's data.
    ViolentlyAs0p,
}

/// `after-sb-2pri`: split brain detected with both nodes primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AfterSb2Pri {
    /// Do not resolve (default).
    Disconnect,
    /// Apply the 0pri verdict even though the victim is primary.
    ViolentlyAs0p,
    /// Apply the 0pri verdict and run `pri-lost-after-sb` on the victim.
    CallPriLostAfterSb,
}

/// `rr-conflict`: the resync direction conflicts with the current roles (a primary would
/// become sync target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RrConflict {
    /// Drop the connection (default).
    Disconnect,
    /// Drop it and keep retrying.
    RetryConnect,
    /// Resync anyway: the primary's data changes under it.
    Violently,
    /// Run `pri-lost` on the primary that would become target.
    CallPriLost,
}

/// Fencing policy when the peer is lost while primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fencing {
    /// Keep writing alone (default).
    DontCare,
    /// Run `fence-peer` (which should outdate the peer) and keep writing.
    ResourceOnly,
    /// Freeze application I/O until `fence-peer` confirms the peer is outdated or fenced.
    ResourceAndStonith,
}

/// What to do on a local disk I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OnIoError {
    /// Go Diskless; serve I/O from the peer (default).
    Detach,
    /// Report the error upwards and mark the blocks out of sync.
    PassOn,
    /// Run the `local-io-error` handler, then detach.
    CallLocalIoError,
}

/// A parse error for one of the policy names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {key}; expected one of: {expected}")]
pub struct PolicyParseError {
    /// The option name.
    pub key: &'static str,
    /// What was given.
    pub value: String,
    /// The accepted values.
    pub expected: &'static str,
}

fn perr(key: &'static str, value: &str, expected: &'static str) -> PolicyParseError {
    PolicyParseError {
        key,
        value: value.to_string(),
        expected,
    }
}

impl std::str::FromStr for Protocol {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Protocol::A),
            "B" | "b" => Ok(Protocol::B),
            "C" | "c" => Ok(Protocol::C),
            _ => Err(perr("protocol", s, "A, B, C")),
        }
    }
}

impl std::str::FromStr for AfterSb0Pri {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const EXP: &str = "disconnect, discard-younger-primary, discard-older-primary, \
                           discard-zero-changes, discard-least-changes, discard-node-NAME";
        Ok(match s {
            "disconnect" => AfterSb0Pri::Disconnect,
            "discard-younger-primary" => AfterSb0Pri::DiscardYoungerPrimary,
            "discard-older-primary" => AfterSb0Pri::DiscardOlderPrimary,
            "discard-zero-changes" => AfterSb0Pri::DiscardZeroChanges,
            "discard-least-changes" => AfterSb0Pri::DiscardLeastChanges,
            _ => match s.strip_prefix("discard-node-") {
                Some(name) if !name.is_empty() => AfterSb0Pri::DiscardNode(name.to_string()),
                _ => return Err(perr("after-sb-0pri", s, EXP)),
            },
        })
    }
}

impl std::str::FromStr for AfterSb1Pri {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disconnect" => AfterSb1Pri::Disconnect,
            "consensus" => AfterSb1Pri::Consensus,
            "discard-secondary" => AfterSb1Pri::DiscardSecondary,
            "call-pri-lost-after-sb" => AfterSb1Pri::CallPriLostAfterSb,
            "violently-as0p" => AfterSb1Pri::ViolentlyAs0p,
            _ => return Err(perr(
                "after-sb-1pri",
                s,
                "disconnect, consensus, discard-secondary, call-pri-lost-after-sb, violently-as0p",
            )),
        })
    }
}

impl std::str::FromStr for AfterSb2Pri {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disconnect" => AfterSb2Pri::Disconnect,
            "violently-as0p" => AfterSb2Pri::ViolentlyAs0p,
            "call-pri-lost-after-sb" => AfterSb2Pri::CallPriLostAfterSb,
            _ => {
                return Err(perr(
                    "after-sb-2pri",
                    s,
                    "disconnect, violently-as0p, call-pri-lost-after-sb",
                ))
            }
        })
    }
}

impl std::str::FromStr for RrConflict {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disconnect" => RrConflict::Disconnect,
            "retry-connect" => RrConflict::RetryConnect,
            "violently" => RrConflict::Violently,
            "call-pri-lost" => RrConflict::CallPriLost,
            _ => {
                return Err(perr(
                    "rr-conflict",
                    s,
                    "disconnect, retry-connect, violently, call-pri-lost",
                ))
            }
        })
    }
}

impl std::str::FromStr for Fencing {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "dont-care" => Fencing::DontCare,
            "resource-only" => Fencing::ResourceOnly,
            "resource-and-stonith" => Fencing::ResourceAndStonith,
            _ => {
                return Err(perr(
                    "fencing",
                    s,
                    "dont-care, resource-only, resource-and-stonith",
                ))
            }
        })
    }
}

impl std::str::FromStr for OnIoError {
    type Err = PolicyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "detach" => OnIoError::Detach,
            "pass_on" | "pass-on" => OnIoError::PassOn,
            "call-local-io-error" => OnIoError::CallLocalIoError,
            _ => {
                return Err(perr(
                    "on-io-error",
                    s,
                    "detach, pass_on, call-local-io-error",
                ))
            }
        })
    }
}

macro_rules! display_debugish {
    ($t:ty, $($v:pat => $s:expr),+ $(,)?) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(match self { $($v => $s),+ })
            }
        }
    };
}

display_debugish!(Role, Role::Primary => "Primary", Role::Secondary => "Secondary");
display_debugish!(DiskState,
    DiskState::Diskless => "Diskless", DiskState::Attaching => "Attaching",
    DiskState::Inconsistent => "Inconsistent", DiskState::Outdated => "Outdated",
    DiskState::Consistent => "Consistent", DiskState::UpToDate => "UpToDate");
display_debugish!(ConnState,
    ConnState::StandAlone => "StandAlone", ConnState::Connecting => "Connecting",
    ConnState::Connected => "Connected", ConnState::SyncSource => "SyncSource",
    ConnState::SyncTarget => "SyncTarget", ConnState::PausedSyncSource => "PausedSyncS",
    ConnState::PausedSyncTarget => "PausedSyncT", ConnState::VerifySource => "VerifyS",
    ConnState::VerifyTarget => "VerifyT", ConnState::SplitBrain => "SplitBrain");
display_debugish!(Protocol, Protocol::A => "A", Protocol::B => "B", Protocol::C => "C");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_parse_as_drbd_spells_them() {
        assert_eq!(
            "discard-node-alpha".parse::<AfterSb0Pri>().unwrap(),
            AfterSb0Pri::DiscardNode("alpha".into())
        );
        assert!("discard-node-".parse::<AfterSb0Pri>().is_err());
        assert_eq!(
            "call-pri-lost-after-sb".parse::<AfterSb2Pri>().unwrap(),
            AfterSb2Pri::CallPriLostAfterSb
        );
        let e = "sometimes".parse::<Fencing>().unwrap_err();
        assert!(e.to_string().contains("resource-and-stonith"), "{e}");
    }

    #[test]
    fn uuid_compare_ignores_role_bit_and_empty() {
        assert!(uuid_eq(0x10, 0x11));
        assert!(!uuid_eq(0, 0));
        assert!(!uuid_eq(0x10, 0x12));
    }
}
