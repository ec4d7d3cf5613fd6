//! twinsan HA core, sans-IO: who is alive and who may act, for a two-node cluster with
//! an optional witness.
//!
//! Owns: the HA datagram formats ([`wire`]), membership over several heartbeat links
//! ([`membership`]), the two-node quorum decision with wait-for-all, `no-quorum-policy`
//! and the witness client ([`quorum`]), the witness itself ([`witness`]), and
//! [`node::HaNode`], which runs membership and quorum together for one node, and the
//! manager's decisions ([`manager`]: which head runs the service, fencing first), the
//! policy of external resources ([`policy`]) and the datagrams the heads exchange
//! besides heartbeats ([`clients`], [`outdate`], [`overrides`]).
//!
//! May not touch: sockets, clocks, threads, randomness, files, resources. The drivers
//! (UDP sockets, timers, persisting the boot counter) and the HA manager (fencing,
//! promotion, the no-quorum policy) live elsewhere and drive these state machines:
//! `handle(now_ms, input)`, then `poll_action()` until `None`, then sleep until
//! `next_timeout_ms()` or the next datagram.

pub mod clients;
pub mod manager;
pub mod membership;
pub mod node;
pub mod outdate;
pub mod overrides;
pub mod policy;
pub mod quorum;
pub mod wire;
pub mod witness;

pub use node::{Action, Event, HaConfig, HaNode, HaStatus, Input};

/// A configuration value was refused; names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field breaks a rule.
    #[error("{key}: {reason}")]
    Invalid {
        /// The field.
        key: &'static str,
        /// The rule it breaks.
        reason: String,
    },
    /// The cluster secret is unusable.
    #[error(transparent)]
    Secret(#[from] wire::WireError),
}

impl ConfigError {
    pub(crate) fn new(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            reason: reason.into(),
        }
    }
}
