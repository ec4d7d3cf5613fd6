//! The witness: a third party that gives its vote to at most one node of a two-node
//! cluster at a time, sans-IO. The `twinsan witness` process wraps it with a UDP socket.
//!
//! Owns: the vote (holder, term, lease), the per-node replay windows, the startup quiet
//! period, counters. Inputs come through [`Witness::handle`] with `now_ms`; outputs are
//! [`Action`]s ([`Witness::poll_action`]): every [`Action::Reply`] answers the datagram
//! handed in by the same call and goes back to that datagram's source address.
//!
//! May not touch: sockets, clocks, threads, randomness, persistent state (a restart is
//! handled by the quiet period, not by remembering).
//!
//! ## Rules
//!
//! - A request is accepted when it decodes, its MAC verifies, it names our cluster and
//!   one of the two configured nodes, and its stamp is newer than the last accepted
//!   from that node (a node's restart raises its boot).
//! - The vote is free, or held by one node until `expires_ms` (its last request's
//!   receipt + `lease_ms`). A holder's renewal extends it (same term). The other node is
//!   denied until `expires_ms + grace_ms`; after that the vote is free again. The grace
//!   covers the difference between the holder counting its lease from its *send* time
//!   (earlier) and clock-rate differences, so the holder's lease always ends first.
//! - A free vote goes to the first node that asks, with a new term:
//!   `(boot << 32) | grants_in_this_boot`, so terms grow across restarts.
//! - A release from the holder frees the vote at once (no reply).
//! - After a start the witness grants nothing for `lease_ms + grace_ms` (replies "not
//!   ready"): any lease it granted before the restart has ended by then.
//! - Unauthenticated or replayed datagrams get no reply.
//!
//! Nodes ask only when they have lost their peer; while both see each other, the
//! witness sees no traffic. `lease_ms` defaults to 500 (five request intervals): a
//! holder keeps its vote through four lost renewals in a row, and a holder that died
//! during a partition is replaced 550 ms after its last renewal.

use std::collections::VecDeque;

use crate::wire::{self, ClusterKey, Message, Stamp, VoteReply, VoteStatus, WireError};
use crate::ConfigError;

/// Default lease.
pub const DEFAULT_LEASE_MS: u64 = 500;
/// Default grace after a lease before the other node can get the vote.
pub const DEFAULT_GRACE_MS: u64 = 50;
/// Most actions kept for the driver (one reply per datagram normally).
pub const ACTIONS_MAX: usize = 64;

/// Witness configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessConfig {
    /// The cluster served.
    pub cluster_id: [u8; 16],
    /// The two nodes' ids.
    pub node_ids: [u8; 2],
    /// Lease granted per request.
    pub lease_ms: u64,
    /// Extra wait after a lease before granting to the other node.
    pub grace_ms: u64,
    /// The witness's boot counter (>= 1, < 2^32), persisted and incremented by the
    /// driver before every start.
    pub boot: u64,
}

impl WitnessConfig {
    /// Defaults for everything but identity.
    pub fn new(cluster_id: [u8; 16], node_ids: [u8; 2], boot: u64) -> Self {
        WitnessConfig {
            cluster_id,
            node_ids,
            lease_ms: DEFAULT_LEASE_MS,
            grace_ms: DEFAULT_GRACE_MS,
            boot,
        }
    }

    /// Check every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let [a, b] = self.node_ids;
        if a == b || a == wire::WITNESS_NODE_ID || b == wire::WITNESS_NODE_ID {
            return Err(ConfigError::new(
                "node_ids",
                format!("{a} and {b}: two different ids below 255 are required"),
            ));
        }
        if !(50..=60_000).contains(&self.lease_ms) {
            return Err(ConfigError::new(
                "lease_ms",
                format!("{} is outside 50..=60000", self.lease_ms),
            ));
        }
        if self.grace_ms > self.lease_ms {
            return Err(ConfigError::new(
                "grace_ms",
                format!("{} exceeds lease_ms ({})", self.grace_ms, self.lease_ms),
            ));
        }
        if self.boot == 0 || self.boot > u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "boot",
                format!("{} is outside 1..=4294967295", self.boot),
            ));
        }
        Ok(())
    }
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A datagram received.
    Datagram {
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Time passed (only needed to report expiries promptly).
    Tick,
}

/// Outputs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send to the source of the datagram just handled (node `to`).
    Reply {
        /// Recipient node id.
        to: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Something changed.
    Event(Event),
}

/// Witness events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new term: the vote went to `node`.
    Granted {
        /// Holder.
        node: u8,
        /// Term.
        term: u64,
    },
    /// The holder stopped renewing; the vote is free.
    Expired {
        /// Former holder.
        node: u8,
        /// Its term.
        term: u64,
    },
    /// The holder gave the vote back.
    Released {
        /// Former holder.
        node: u8,
        /// Its term.
        term: u64,
    },
}

/// Per-node counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeCounters {
    /// Requests accepted (renewals and releases included).
    pub requests: u64,
    /// Granted answers.
    pub granted: u64,
    /// Denied answers.
    pub denied: u64,
    /// Not-ready answers.
    pub not_ready: u64,
    /// Refused: stamp not newer than the last accepted.
    pub rejected_replay: u64,
}

/// Counters of datagrams that name no known node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WitnessCounters {
    /// Bad MAC.
    pub rejected_mac: u64,
    /// Malformed or not a vote request.
    pub rejected_malformed: u64,
    /// Another cluster, or a node id not configured.
    pub rejected_foreign: u64,
}

/// Witness status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessStatus {
    /// Time of the last input.
    pub now_ms: u64,
    /// Granting (the startup quiet period is over).
    pub ready: bool,
    /// The holder: (node, term, lease expires at).
    pub holder: Option<(u8, u64, u64)>,
    /// Per configured node, in `node_ids` order.
    pub nodes: [(u8, NodeCounters); 2],
    /// Others.
    pub counters: WitnessCounters,
}

#[derive(Debug, Clone, Copy)]
struct Holder {
    node: u8,
    term: u64,
    expires_ms: u64,
}

/// The witness state machine.
#[derive(Debug)]
pub struct Witness {
    cfg: WitnessConfig,
    key: ClusterKey,
    start_ms: Option<u64>,
    now_ms: u64,
    holder: Option<Holder>,
    grants: u32,
    windows: [Option<Stamp>; 2],
    node_counters: [NodeCounters; 2],
    counters: WitnessCounters,
    actions: VecDeque<Action>,
}

impl Witness {
    /// A witness for one cluster; `secret` is the cluster secret.
    pub fn new(cfg: WitnessConfig, secret: &[u8]) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Witness {
            key: ClusterKey::new(secret)?,
            cfg,
            start_ms: None,
            now_ms: 0,
            holder: None,
            grants: 0,
            windows: [None; 2],
            node_counters: [NodeCounters::default(); 2],
            counters: WitnessCounters::default(),
            actions: VecDeque::new(),
        })
    }

    /// Apply one input at `now_ms` (monotonic).
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        self.start_ms.get_or_insert(self.now_ms);
        self.expire();
        if let Input::Datagram { bytes } = input {
            self.on_datagram(&bytes);
        }
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the current vote frees up (a [`Input::Tick`] then reports
    /// [`Event::Expired`]).
    pub fn next_timeout_ms(&self) -> Option<u64> {
        self.holder.map(|h| h.expires_ms + self.cfg.grace_ms)
    }

    /// Status.
    pub fn status(&self) -> WitnessStatus {
        let [a, b] = self.cfg.node_ids;
        WitnessStatus {
            now_ms: self.now_ms,
            ready: self.ready(),
            holder: self.holder.map(|h| (h.node, h.term, h.expires_ms)),
            nodes: [(a, self.node_counters[0]), (b, self.node_counters[1])],
            counters: self.counters,
        }
    }

    fn ready(&self) -> bool {
        self.start_ms
            .is_some_and(|s| self.now_ms >= s + self.cfg.lease_ms + self.cfg.grace_ms)
    }

    fn push(&mut self, a: Action) {
        if self.actions.len() >= ACTIONS_MAX {
            if let Some(i) = self
                .actions
                .iter()
                .position(|a| matches!(a, Action::Reply { .. }))
            {
                self.actions.remove(i);
            }
        }
        self.actions.push_back(a);
    }

    fn expire(&mut self) {
        if let Some(h) = self.holder {
            if self.now_ms >= h.expires_ms + self.cfg.grace_ms {
                self.holder = None;
                self.push(Action::Event(Event::Expired {
                    node: h.node,
                    term: h.term,
                }));
            }
        }
    }

    fn on_datagram(&mut self, bytes: &[u8]) {
        let now = self.now_ms;
        let req = match wire::decode(bytes, &self.key) {
            Ok(Message::VoteRequest(r)) => r,
            Ok(_) => {
                self.counters.rejected_malformed += 1;
                return;
            }
            Err(WireError::BadMac) => {
                self.counters.rejected_mac += 1;
                return;
            }
            Err(_) => {
                self.counters.rejected_malformed += 1;
                return;
            }
        };
        let Some(idx) = self.cfg.node_ids.iter().position(|&n| n == req.sender) else {
            self.counters.rejected_foreign += 1;
            return;
        };
        if req.cluster_id != self.cfg.cluster_id {
            self.counters.rejected_foreign += 1;
            return;
        }
        if self.windows[idx] >= Some(req.stamp) {
            self.node_counters[idx].rejected_replay += 1;
            return;
        }
        self.windows[idx] = Some(req.stamp);
        self.node_counters[idx].requests += 1;
        if req.release {
            if let Some(h) = self.holder.filter(|h| h.node == req.sender) {
                self.holder = None;
                self.push(Action::Event(Event::Released {
                    node: h.node,
                    term: h.term,
                }));
            }
            return;
        }
        let status = if !self.ready() {
            self.node_counters[idx].not_ready += 1;
            VoteStatus::NotReady
        } else {
            match &mut self.holder {
                Some(h) if h.node == req.sender => {
                    h.expires_ms = now + self.cfg.lease_ms;
                    self.node_counters[idx].granted += 1;
                    VoteStatus::Granted
                }
                Some(_) => {
                    self.node_counters[idx].denied += 1;
                    VoteStatus::Denied
                }
                None => {
                    self.grants = self.grants.saturating_add(1);
                    let term = (self.cfg.boot << 32) | u64::from(self.grants);
                    self.holder = Some(Holder {
                        node: req.sender,
                        term,
                        expires_ms: now + self.cfg.lease_ms,
                    });
                    self.node_counters[idx].granted += 1;
                    self.push(Action::Event(Event::Granted {
                        node: req.sender,
                        term,
                    }));
                    VoteStatus::Granted
                }
            }
        };
        let reply = VoteReply {
            cluster_id: self.cfg.cluster_id,
            to: req.sender,
            witness_boot: self.cfg.boot,
            echo: req.stamp,
            status,
            holder: self.holder.map(|h| h.node),
            term: self.holder.map_or(0, |h| h.term),
            lease_ms: u32::try_from(self.cfg.lease_ms).unwrap_or(u32::MAX),
            timestamp_ms: now,
        };
        let bytes = reply.encode(&self.key).to_vec();
        self.push(Action::Reply {
            to: req.sender,
            bytes,
        });
    }
}

#[cfg(test)]
mod tests;
