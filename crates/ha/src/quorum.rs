//! Two-node quorum, sans-IO: may this node act (keep or take over resources)?
//!
//! Owns: the wait-for-all latch, the quorum decision and its reason, the
//! `no-quorum-policy` setting, and the client side of the witness protocol (requests,
//! renewals, releases, the lease). Inputs come through [`Quorum::handle`] with `now_ms`:
//! the peer facts from [`crate::membership`] after every membership step, witness
//! datagrams, ticks and the local role; outputs are [`Action`]s
//! ([`Quorum::poll_action`]).
//!
//! May not touch: sockets, clocks, threads, randomness, resources. Applying the
//! `no-quorum-policy`, fencing and promotion are the HA manager's; this module only
//! reports [`QuorumState`] (`has_quorum`, `reason`, `needs_fencing`).
//!
//! ## Decision table
//!
//! "Visible" means: the peer is alive (a link is up) and, with a witness, its newest
//! heartbeat says that it sees us and that it does not hold quorum without us (view
//! flag `quorum_without_peer`, set while a node counts the witness's vote). Rows are
//! tried top to bottom.
//!
//! | witness | condition | has_quorum | reason | needs_fencing |
//! |---|---|---|---|---|
//! | any | `wait_for_all` and the peer not seen since this node started | no | `WaitingForPeer` | – |
//! | any | peer visible | yes | `PeerVisible` | no |
//! | none | peer not visible (seen before, or `wait_for_all` off) | yes | `PeerLost` | **yes** |
//! | yes | holding a valid lease, and already counted it or now ≥ peer-view expiry | yes | `WitnessGranted` | no |
//! | yes | holding a valid lease, before the peer-view expiry | no | `PeerViewExpiring` | – |
//! | yes | peer alive but not confirming us, no lease | no | `AwaitingPeerConfirmation` | – |
//! | yes | witness denied (reply within `decision_timeout_ms`) | no | `WitnessDenied` | – |
//! | yes | no reply for `decision_timeout_ms` since the peer was lost | no | `WitnessUnreachable` | – |
//! | yes | otherwise (asked, waiting) | no | `AwaitingWitness` | – |
//!
//! With a witness the node asks for the vote as soon as it loses its peer (after
//! `defer_inactive_ms` if the manager says it is not the active node, so that the side
//! already running the resources wins a clean partition), renews it every
//! `request_interval_ms` while the peer stays lost, and releases it when the peer is
//! visible again. The lease runs from when the request was *sent*, the witness counts it
//! from when it *received* the request and waits a grace period more before granting to
//! the other node, so a node's lease always ends before the other can get the vote. The
//! peer-view expiry ([`crate::membership::Membership::peer_view_expiry_ms`]) is the time
//! by which the peer has certainly stopped seeing this node, so a node starts counting
//! the vote only when the peer can no longer count it as visible; and while it counts
//! the vote its heartbeats say so, so the peer, even if it sees this node again, does
//! not count it as visible before this node has given the vote up (which it does on
//! seeing the peer confirm it). Together: **with a witness, the two nodes never both
//! have quorum while either does not see the other.** The seeded simulation in
//! `tests/sim.rs` checks exactly this after every step.
//!
//! Without a witness two-node mode keeps quorum when the peer is lost (after
//! wait-for-all is satisfied) and both sides may claim it in a partition:
//! `needs_fencing` says the manager must fence the peer before taking anything over.
//!
//! The transient reasons ([`Reason::is_transient`]: `AwaitingWitness`,
//! `PeerViewExpiring`, `AwaitingPeerConfirmation`) end within the dead time plus
//! `decision_timeout_ms`; a manager should freeze rather than apply the
//! `no-quorum-policy` while one holds.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use crate::membership::PeerFacts;
use crate::wire::{self, ClusterKey, Message, Stamp, View, VoteRequest, VoteStatus, WireError};
use crate::ConfigError;

/// Default witness request (and renewal) interval.
pub const DEFAULT_REQUEST_INTERVAL_MS: u64 = 100;
/// Default time without a witness answer before the reason says "unreachable".
pub const DEFAULT_DECISION_TIMEOUT_MS: u64 = 1000;
/// Default delay of the first request of a node the manager marks inactive.
pub const DEFAULT_DEFER_INACTIVE_MS: u64 = 200;
/// Longest lease accepted from a witness (longer ones are cut to this).
pub const LEASE_MAX_MS: u64 = 60_000;
/// Requests remembered for matching replies.
pub const REQUEST_LOG_MAX: usize = 64;
/// Most actions kept for the driver (oldest witness datagram dropped beyond it).
pub const ACTIONS_MAX: usize = 64;

/// What the manager does on this node when it has no quorum (Pacemaker's
/// `no-quorum-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NoQuorumPolicy {
    /// Stop (demote) every resource on this node. The default.
    #[default]
    Stop,
    /// Keep running what runs, start nothing new, freeze I/O where it matters.
    Freeze,
    /// Carry on as if quorate (only safe with fencing; for tests and experts).
    Ignore,
    /// Fence this node itself (reboot).
    Suicide,
}

impl NoQuorumPolicy {
    /// Every policy with its configuration spelling.
    pub const ALL: [NoQuorumPolicy; 4] = [
        NoQuorumPolicy::Stop,
        NoQuorumPolicy::Freeze,
        NoQuorumPolicy::Ignore,
        NoQuorumPolicy::Suicide,
    ];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            NoQuorumPolicy::Stop => "stop",
            NoQuorumPolicy::Freeze => "freeze",
            NoQuorumPolicy::Ignore => "ignore",
            NoQuorumPolicy::Suicide => "suicide",
        }
    }
}

impl fmt::Display for NoQuorumPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `no-quorum-policy` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no-quorum-policy: unknown value {0:?}; expected one of stop, freeze, ignore, suicide")]
pub struct ParsePolicyError(pub String);

impl FromStr for NoQuorumPolicy {
    type Err = ParsePolicyError;

    /// Exact, lower-case spellings as in the configuration file.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NoQuorumPolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParsePolicyError(s.to_string()))
    }
}

/// Client side of the witness protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessClientConfig {
    /// Request and renewal interval while the peer is lost.
    pub request_interval_ms: u64,
    /// Without any answer for this long after losing the peer, the reason becomes
    /// `WitnessUnreachable` (and a denial older than this is forgotten).
    pub decision_timeout_ms: u64,
    /// First request of an episode waits this long when this node is not the active
    /// one ([`Input::SetActive`]).
    pub defer_inactive_ms: u64,
}

impl Default for WitnessClientConfig {
    fn default() -> Self {
        WitnessClientConfig {
            request_interval_ms: DEFAULT_REQUEST_INTERVAL_MS,
            decision_timeout_ms: DEFAULT_DECISION_TIMEOUT_MS,
            defer_inactive_ms: DEFAULT_DEFER_INACTIVE_MS,
        }
    }
}

/// Quorum configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumConfig {
    /// No quorum until the peer has been seen once since this node started.
    pub wait_for_all: bool,
    /// What the manager does without quorum (carried here for status).
    pub no_quorum_policy: NoQuorumPolicy,
    /// The witness, if one is configured.
    pub witness: Option<WitnessClientConfig>,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        QuorumConfig {
            wait_for_all: true,
            no_quorum_policy: NoQuorumPolicy::Stop,
            witness: None,
        }
    }
}

impl QuorumConfig {
    /// Check every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(w) = &self.witness {
            if !(10..=10_000).contains(&w.request_interval_ms) {
                return Err(ConfigError::new(
                    "witness.request_interval_ms",
                    format!("{} is outside 10..=10000", w.request_interval_ms),
                ));
            }
            if w.decision_timeout_ms < w.request_interval_ms || w.decision_timeout_ms > 60_000 {
                return Err(ConfigError::new(
                    "witness.decision_timeout_ms",
                    format!(
                        "{} must be between request_interval_ms ({}) and 60000",
                        w.decision_timeout_ms, w.request_interval_ms
                    ),
                ));
            }
            if w.defer_inactive_ms > 10_000 {
                return Err(ConfigError::new(
                    "witness.defer_inactive_ms",
                    format!("{} exceeds 10000", w.defer_inactive_ms),
                ));
            }
        }
        Ok(())
    }
}

/// Why this node has or lacks quorum (see the module's decision table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Wait-for-all: the peer has not been seen since this node started.
    WaitingForPeer,
    /// Both nodes see each other.
    PeerVisible,
    /// No witness; the peer is lost: two-node mode keeps quorum, fencing decides.
    PeerLost,
    /// The peer is alive but does not confirm seeing us yet.
    AwaitingPeerConfirmation,
    /// The witness's vote is ours.
    WitnessGranted {
        /// The witness's term.
        term: u64,
    },
    /// The vote is ours, but the peer may still see us until `until_ms`.
    PeerViewExpiring {
        /// Peer-view expiry.
        until_ms: u64,
    },
    /// Asked the witness, no decision yet.
    AwaitingWitness,
    /// The witness gave its vote to the other node.
    WitnessDenied {
        /// The holder, as the witness reported it.
        holder: Option<u8>,
    },
    /// No answer from the witness within `decision_timeout_ms`.
    WitnessUnreachable,
}

impl Reason {
    /// A state that resolves by itself within bounded time (freeze, do not stop).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Reason::AwaitingPeerConfirmation
                | Reason::PeerViewExpiring { .. }
                | Reason::AwaitingWitness
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::WaitingForPeer => f.write_str("waiting for the peer (wait-for-all)"),
            Reason::PeerVisible => f.write_str("peer visible"),
            Reason::PeerLost => f.write_str("peer lost (two-node mode, fence before takeover)"),
            Reason::AwaitingPeerConfirmation => f.write_str("peer does not confirm us yet"),
            Reason::WitnessGranted { term } => write!(f, "witness vote held (term {term})"),
            Reason::PeerViewExpiring { until_ms } => {
                write!(f, "witness vote held; peer may see us until {until_ms} ms")
            }
            Reason::AwaitingWitness => f.write_str("asking the witness"),
            Reason::WitnessDenied { holder: Some(h) } => {
                write!(f, "witness vote held by node {h}")
            }
            Reason::WitnessDenied { holder: None } => f.write_str("witness denied its vote"),
            Reason::WitnessUnreachable => f.write_str("witness unreachable"),
        }
    }
}

/// The quorum decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumState {
    /// This node may act.
    pub has_quorum: bool,
    /// Why.
    pub reason: Reason,
    /// Fence the peer before taking over anything it may hold.
    pub needs_fencing: bool,
    /// The wait-for-all condition is satisfied (or `wait_for_all` is off).
    pub wait_for_all_satisfied: bool,
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The peer facts after a membership step.
    Peer(PeerFacts),
    /// A datagram from the witness.
    WitnessDatagram(Vec<u8>),
    /// Time passed.
    Tick,
    /// Whether this node is the active one (runs the resources); the inactive node
    /// defers its witness requests.
    SetActive(bool),
    /// Role summary sent (informationally) to the witness.
    SetRoleSummary(u32),
}

/// Outputs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this datagram to the witness.
    SendWitness {
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// The quorum state changed.
    Changed(QuorumState),
}

/// Witness client counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WitnessCounters {
    /// Requests sent (renewals included).
    pub requests: u64,
    /// Releases sent.
    pub releases: u64,
    /// Replies accepted.
    pub replies: u64,
    /// Refused: bad MAC.
    pub rejected_mac: u64,
    /// Refused: echo not a recent unanswered request of ours (replay, duplicate,
    /// reordered, or from before our restart).
    pub rejected_replay: u64,
    /// Refused: malformed or not a vote reply.
    pub rejected_malformed: u64,
    /// Refused: another cluster or another recipient.
    pub rejected_foreign: u64,
}

/// Witness client status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessClientStatus {
    /// The lease held: (term, valid until).
    pub lease: Option<(u64, u64)>,
    /// The last accepted reply: (status, holder, at).
    pub last_reply: Option<(VoteStatus, Option<u8>, u64)>,
    /// The witness's boot from its last reply.
    pub witness_boot: Option<u64>,
    /// Counters.
    pub counters: WitnessCounters,
}

/// Quorum status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumStatus {
    /// The decision.
    pub state: QuorumState,
    /// The configured policy.
    pub no_quorum_policy: NoQuorumPolicy,
    /// Wait-for-all configured.
    pub wait_for_all: bool,
    /// This node is the active one.
    pub active: bool,
    /// Witness client, if configured.
    pub witness: Option<WitnessClientStatus>,
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    term: u64,
    until_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct Reply {
    status: VoteStatus,
    holder: Option<u8>,
    at_ms: u64,
}

#[derive(Debug)]
struct Client {
    cfg: WitnessClientConfig,
    next_seq: u64,
    /// Requests sent: (seq, sent at), seq ascending.
    sent: VecDeque<(u64, u64)>,
    last_echo_seq: u64,
    /// Since when the vote is needed (the current episode).
    need_since_ms: Option<u64>,
    next_request_ms: u64,
    lease: Option<Lease>,
    /// The lease has been counted as quorum (then the peer-view expiry no longer gates
    /// it).
    in_quorum: bool,
    last_reply: Option<Reply>,
    witness_boot: Option<u64>,
    counters: WitnessCounters,
}

/// The quorum state machine of one node.
#[derive(Debug)]
pub struct Quorum {
    cfg: QuorumConfig,
    cluster_id: [u8; 16],
    node_id: u8,
    boot: u64,
    key: ClusterKey,
    now_ms: u64,
    facts: PeerFacts,
    wfa_satisfied: bool,
    active: bool,
    role_summary: u32,
    client: Option<Client>,
    state: QuorumState,
    actions: VecDeque<Action>,
}

impl Quorum {
    /// A node's quorum; identity as in its
    /// [`MembershipConfig`](crate::membership::MembershipConfig) (`boot` >= 1, the same
    /// counter), `secret` the cluster secret.
    pub fn new(
        cfg: QuorumConfig,
        cluster_id: [u8; 16],
        node_id: u8,
        boot: u64,
        secret: &[u8],
    ) -> Result<Self, ConfigError> {
        cfg.validate()?;
        if boot == 0 {
            return Err(ConfigError::new("boot", "the boot counter starts at 1"));
        }
        if node_id == wire::WITNESS_NODE_ID {
            return Err(ConfigError::new(
                "node_id",
                "255 is reserved for the witness",
            ));
        }
        Ok(Self::with_key(
            cfg,
            cluster_id,
            node_id,
            boot,
            ClusterKey::new(secret)?,
        ))
    }

    pub(crate) fn with_key(
        cfg: QuorumConfig,
        cluster_id: [u8; 16],
        node_id: u8,
        boot: u64,
        key: ClusterKey,
    ) -> Self {
        let client = cfg.witness.clone().map(|cfg| Client {
            cfg,
            next_seq: 1,
            sent: VecDeque::new(),
            last_echo_seq: 0,
            need_since_ms: None,
            next_request_ms: 0,
            lease: None,
            in_quorum: false,
            last_reply: None,
            witness_boot: None,
            counters: WitnessCounters::default(),
        });
        let wfa = !cfg.wait_for_all;
        Quorum {
            state: QuorumState {
                has_quorum: false,
                reason: Reason::WaitingForPeer,
                needs_fencing: false,
                wait_for_all_satisfied: wfa,
            },
            cfg,
            cluster_id,
            node_id,
            boot,
            key,
            now_ms: 0,
            facts: PeerFacts {
                alive: false,
                confirms_us: false,
                seen_since_start: false,
                view_expiry_ms: u64::MAX,
            },
            wfa_satisfied: wfa,
            active: false,
            role_summary: 0,
            client,
            actions: VecDeque::new(),
        }
    }

    /// Apply one input at `now_ms`, then re-evaluate (a change queues
    /// [`Action::Changed`]).
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            Input::Peer(f) => self.facts = f,
            Input::WitnessDatagram(bytes) => self.on_witness_datagram(&bytes),
            Input::Tick => {}
            Input::SetActive(a) => self.active = a,
            Input::SetRoleSummary(r) => self.role_summary = r,
        }
        self.evaluate();
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to deliver the next [`Input::Tick`], if anything is pending.
    pub fn next_timeout_ms(&self) -> Option<u64> {
        let c = self.client.as_ref()?;
        let since = c.need_since_ms?;
        let mut t = c.next_request_ms;
        if let Some(l) = c.lease {
            t = t.min(l.until_ms);
            if !c.in_quorum {
                t = t.min(self.facts.view_expiry_ms);
            }
        }
        let decide = since + c.cfg.decision_timeout_ms;
        if decide > self.now_ms {
            t = t.min(decide);
        }
        Some(t)
    }

    /// The current decision.
    pub fn state(&self) -> QuorumState {
        self.state
    }

    /// Status.
    pub fn status(&self) -> QuorumStatus {
        QuorumStatus {
            state: self.state,
            no_quorum_policy: self.cfg.no_quorum_policy,
            wait_for_all: self.cfg.wait_for_all,
            active: self.active,
            witness: self.client.as_ref().map(|c| WitnessClientStatus {
                lease: c.lease.map(|l| (l.term, l.until_ms)),
                last_reply: c.last_reply.map(|r| (r.status, r.holder, r.at_ms)),
                witness_boot: c.witness_boot,
                counters: c.counters,
            }),
        }
    }

    /// What our heartbeats say about us (the membership fills `sees_peer`).
    pub fn local_view(&self) -> View {
        View {
            sees_peer: false,
            has_quorum: self.state.has_quorum,
            wait_for_all_satisfied: self.state.wait_for_all_satisfied,
            quorum_without_peer: self.state.has_quorum && self.state.reason != Reason::PeerVisible,
            role_summary: self.role_summary,
        }
    }

    fn push(&mut self, a: Action) {
        if self.actions.len() >= ACTIONS_MAX {
            if let Some(i) = self
                .actions
                .iter()
                .position(|a| matches!(a, Action::SendWitness { .. }))
            {
                self.actions.remove(i);
            }
        }
        self.actions.push_back(a);
    }

    fn send_request(&mut self, release: bool) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        let seq = c.next_seq;
        c.next_seq = c.next_seq.saturating_add(1);
        let req = VoteRequest {
            cluster_id: self.cluster_id,
            sender: self.node_id,
            stamp: Stamp {
                boot: self.boot,
                seq,
            },
            release,
            sees_peer: self.facts.alive,
            role_summary: self.role_summary,
            timestamp_ms: self.now_ms,
        };
        if release {
            c.counters.releases += 1;
        } else {
            c.counters.requests += 1;
            if c.sent.len() >= REQUEST_LOG_MAX {
                c.sent.pop_front();
            }
            c.sent.push_back((seq, self.now_ms));
        }
        let bytes = req.encode(&self.key).to_vec();
        self.push(Action::SendWitness { bytes });
    }

    fn on_witness_datagram(&mut self, bytes: &[u8]) {
        let now = self.now_ms;
        let Some(c) = self.client.as_mut() else {
            return;
        };
        let r = match wire::decode(bytes, &self.key) {
            Ok(Message::VoteReply(r)) => r,
            Ok(_) => {
                c.counters.rejected_malformed += 1;
                return;
            }
            Err(WireError::BadMac) => {
                c.counters.rejected_mac += 1;
                return;
            }
            Err(_) => {
                c.counters.rejected_malformed += 1;
                return;
            }
        };
        if r.cluster_id != self.cluster_id || r.to != self.node_id {
            c.counters.rejected_foreign += 1;
            return;
        }
        let sent = (r.echo.boot == self.boot && r.echo.seq > c.last_echo_seq)
            .then(|| {
                c.sent
                    .binary_search_by_key(&r.echo.seq, |&(s, _)| s)
                    .ok()
                    .map(|i| c.sent[i].1)
            })
            .flatten();
        let Some(sent_ms) = sent else {
            c.counters.rejected_replay += 1;
            return;
        };
        c.last_echo_seq = r.echo.seq;
        c.counters.replies += 1;
        c.witness_boot = Some(r.witness_boot);
        c.last_reply = Some(Reply {
            status: r.status,
            holder: r.holder,
            at_ms: now,
        });
        match r.status {
            VoteStatus::Granted if c.need_since_ms.is_some() => {
                let until_ms = sent_ms + u64::from(r.lease_ms).min(LEASE_MAX_MS);
                c.lease = Some(match c.lease {
                    Some(l) if l.term == r.term => Lease {
                        term: l.term,
                        until_ms: l.until_ms.max(until_ms),
                    },
                    _ => {
                        c.in_quorum = false;
                        Lease {
                            term: r.term,
                            until_ms,
                        }
                    }
                });
            }
            // Granted after we stopped needing it: give it back at once.
            VoteStatus::Granted => self.send_request(true),
            VoteStatus::Denied => {
                c.lease = None;
                c.in_quorum = false;
            }
            VoteStatus::NotReady => {}
        }
    }

    fn evaluate(&mut self) {
        let f = self.facts;
        if f.seen_since_start {
            self.wfa_satisfied = true;
        }
        let (has_quorum, reason, needs_fencing) = if !self.wfa_satisfied {
            self.stand_down();
            (false, Reason::WaitingForPeer, false)
        } else if self.client.is_none() {
            if f.alive {
                (true, Reason::PeerVisible, false)
            } else {
                (true, Reason::PeerLost, true)
            }
        } else {
            self.evaluate_with_witness()
        };
        let state = QuorumState {
            has_quorum,
            reason,
            needs_fencing,
            wait_for_all_satisfied: self.wfa_satisfied,
        };
        if state != self.state {
            self.state = state;
            self.push(Action::Changed(state));
        }
    }

    /// Leave the current witness episode, giving back a lease if held.
    fn stand_down(&mut self) {
        let Some(c) = self.client.as_mut() else {
            return;
        };
        c.need_since_ms = None;
        c.in_quorum = false;
        c.last_reply = None;
        if c.lease.take().is_some() {
            self.send_request(true);
        }
    }

    fn evaluate_with_witness(&mut self) -> (bool, Reason, bool) {
        let now = self.now_ms;
        let f = self.facts;
        let active = self.active;
        if f.alive && f.confirms_us {
            self.stand_down();
            return (true, Reason::PeerVisible, false);
        }
        let Some(c) = self.client.as_mut() else {
            return (false, Reason::WitnessUnreachable, false);
        };
        if c.lease.is_some_and(|l| l.until_ms <= now) {
            c.lease = None;
        }
        if c.lease.is_none() {
            c.in_quorum = false;
        }
        // A peer that is alive but not (yet) confirming us is no reason to ask the
        // witness; a lease already held is kept (renewed) until the peer confirms.
        if f.alive && c.lease.is_none() {
            c.need_since_ms = None;
            c.last_reply = None;
            return (false, Reason::AwaitingPeerConfirmation, false);
        }
        let since = match c.need_since_ms {
            Some(s) => s,
            None => {
                c.need_since_ms = Some(now);
                c.last_reply = None;
                c.next_request_ms = if active {
                    now
                } else {
                    now + c.cfg.defer_inactive_ms
                };
                now
            }
        };
        if now >= c.next_request_ms {
            c.next_request_ms = now + c.cfg.request_interval_ms;
            self.send_request(false);
        }
        let Some(c) = self.client.as_mut() else {
            return (false, Reason::WitnessUnreachable, false);
        };
        if let Some(l) = c.lease {
            if c.in_quorum || now >= f.view_expiry_ms {
                c.in_quorum = true;
                return (true, Reason::WitnessGranted { term: l.term }, false);
            }
            return (
                false,
                Reason::PeerViewExpiring {
                    until_ms: f.view_expiry_ms,
                },
                false,
            );
        }
        let timeout = c.cfg.decision_timeout_ms;
        match c.last_reply {
            Some(Reply {
                status: VoteStatus::Denied,
                holder,
                at_ms,
            }) if at_ms + timeout > now => (false, Reason::WitnessDenied { holder }, false),
            Some(r) if r.at_ms + timeout > now => (false, Reason::AwaitingWitness, false),
            _ if now >= since + timeout => (false, Reason::WitnessUnreachable, false),
            _ => (false, Reason::AwaitingWitness, false),
        }
    }
}

#[cfg(test)]
mod tests;
