//! One node's HA core: membership and quorum run together behind one sans-IO
//! interface, the thing a driver (tokio, the simulator, tests) runs.
//!
//! Owns: the order in which the two state machines see inputs (membership first, then
//! quorum with the fresh peer facts, then the heartbeat view from the new quorum state)
//! and the merged action stream.
//!
//! May not touch: sockets, clocks, threads, randomness, resources.
//!
//! Contract: call [`HaNode::handle`] for every datagram, every witness datagram and at
//! [`HaNode::next_timeout_ms`] with [`Input::Tick`]; after each call drain
//! [`HaNode::poll_action`] and perform the actions in order. `now_ms` is a monotonic
//! clock in ms (the same one for every call).

use std::collections::VecDeque;

use crate::membership::{self, Membership, MembershipConfig, MembershipStatus};
use crate::quorum::{self, Quorum, QuorumConfig, QuorumState, QuorumStatus};
use crate::wire::ClusterKey;
use crate::ConfigError;

/// Most actions kept for a driver that does not poll; beyond it the oldest datagram is
/// dropped (events are kept).
pub const ACTIONS_MAX: usize = 512;

/// A node's HA configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// Membership (identity, links, timing, boot counter).
    pub membership: MembershipConfig,
    /// Quorum (wait-for-all, policy, witness).
    pub quorum: QuorumConfig,
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A datagram received on heartbeat link `link`.
    Datagram {
        /// Link index.
        link: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// A datagram received from the witness.
    WitnessDatagram {
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Time passed.
    Tick,
    /// The manager's view of this node: a role summary carried in heartbeats (opaque
    /// here), and whether this node is the active one (runs the resources; the inactive
    /// node defers its witness requests).
    SetLocalView {
        /// Role summary.
        role_summary: u32,
        /// Active.
        active: bool,
    },
}

/// Outputs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send to the peer on heartbeat link `link`.
    Send {
        /// Link index.
        link: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Send to the witness.
    SendWitness {
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Something changed.
    Event(Event),
}

/// Events for the manager, logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A link came up.
    LinkUp {
        /// Link index.
        link: u8,
    },
    /// A link went down.
    LinkDown {
        /// Link index.
        link: u8,
    },
    /// The peer became alive.
    PeerUp,
    /// The peer is no longer alive (every link down).
    PeerDown,
    /// The peer restarted (newer boot).
    PeerRebooted {
        /// Its boot.
        boot: u64,
    },
    /// The quorum decision changed.
    QuorumChanged(QuorumState),
}

/// One view over both state machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaStatus {
    /// Membership and links.
    pub membership: MembershipStatus,
    /// Quorum and witness.
    pub quorum: QuorumStatus,
}

/// One node's HA core.
#[derive(Debug)]
pub struct HaNode {
    membership: Membership,
    quorum: Quorum,
    actions: VecDeque<Action>,
}

impl HaNode {
    /// Build from configuration; `secret` is the cluster secret.
    pub fn new(cfg: HaConfig, secret: &[u8]) -> Result<Self, ConfigError> {
        cfg.membership.validate()?;
        cfg.quorum.validate()?;
        let key = ClusterKey::new(secret)?;
        let m = &cfg.membership;
        let quorum = Quorum::with_key(cfg.quorum, m.cluster_id, m.node_id, m.boot, key.clone());
        Ok(HaNode {
            membership: Membership::with_key(cfg.membership, key),
            quorum,
            actions: VecDeque::new(),
        })
    }

    /// Apply one input at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        let witness_bytes = match input {
            Input::Datagram { link, bytes } => {
                self.membership
                    .handle(now_ms, membership::Input::Datagram { link, bytes });
                None
            }
            Input::WitnessDatagram { bytes } => {
                self.membership.handle(now_ms, membership::Input::Tick);
                Some(bytes)
            }
            Input::Tick => {
                self.membership.handle(now_ms, membership::Input::Tick);
                None
            }
            Input::SetLocalView {
                role_summary,
                active,
            } => {
                self.quorum
                    .handle(now_ms, quorum::Input::SetRoleSummary(role_summary));
                self.quorum.handle(now_ms, quorum::Input::SetActive(active));
                self.membership.handle(now_ms, membership::Input::Tick);
                None
            }
        };
        self.drain_membership();
        let facts = self.membership.peer_facts();
        self.quorum.handle(now_ms, quorum::Input::Peer(facts));
        if let Some(bytes) = witness_bytes {
            self.quorum
                .handle(now_ms, quorum::Input::WitnessDatagram(bytes));
        }
        while let Some(a) = self.quorum.poll_action() {
            self.push(match a {
                quorum::Action::SendWitness { bytes } => Action::SendWitness { bytes },
                quorum::Action::Changed(s) => Action::Event(Event::QuorumChanged(s)),
            });
        }
        self.membership.set_local_view(self.quorum.local_view());
    }

    fn drain_membership(&mut self) {
        while let Some(a) = self.membership.poll_action() {
            self.push(match a {
                membership::Action::Send { link, bytes } => Action::Send { link, bytes },
                membership::Action::Event(e) => Action::Event(match e {
                    membership::Event::LinkUp { link } => Event::LinkUp { link },
                    membership::Event::LinkDown { link } => Event::LinkDown { link },
                    membership::Event::PeerUp => Event::PeerUp,
                    membership::Event::PeerDown => Event::PeerDown,
                    membership::Event::PeerRebooted { boot } => Event::PeerRebooted { boot },
                }),
            });
        }
    }

    fn push(&mut self, a: Action) {
        if self.actions.len() >= ACTIONS_MAX {
            if let Some(i) = self
                .actions
                .iter()
                .position(|a| !matches!(a, Action::Event(_)))
            {
                self.actions.remove(i);
            }
        }
        self.actions.push_back(a);
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to deliver the next [`Input::Tick`] (absolute ms).
    pub fn next_timeout_ms(&self) -> u64 {
        let m = self.membership.next_timeout_ms();
        self.quorum.next_timeout_ms().map_or(m, |q| q.min(m))
    }

    /// The quorum decision.
    pub fn quorum_state(&self) -> QuorumState {
        self.quorum.state()
    }

    /// The peer is alive (at least one link up).
    pub fn peer_alive(&self) -> bool {
        self.membership.peer_alive()
    }

    /// Status of both state machines.
    pub fn status(&self) -> HaStatus {
        HaStatus {
            membership: self.membership.status(),
            quorum: self.quorum.status(),
        }
    }
}

#[cfg(test)]
mod tests;
