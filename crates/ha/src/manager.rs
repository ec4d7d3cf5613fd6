//! The HA manager's decisions, sans-IO: which head runs the service (the replicated
//! volumes as Primary, the targets active, the portal IPs, external OCF resources), when
//! to fence the peer, when to stop, and the role summary both heads exchange in their
//! heartbeats so they agree without a separate protocol.
//!
//! Owns: the service state on this head (passive, fencing, starting, active, stopping,
//! blocked), failcounts and the migration threshold, standby / move / maintenance, the
//! fence-before-takeover rule, and the role-summary bits.
//!
//! May not touch: sockets, processes, clocks, resources. The driver runs the
//! [`Action`]s (fence, start, stop, monitor) and reports back with
//! [`Input::FenceDone`], [`Input::OpDone`] and [`Input::MonitorFailed`].
//!
//! ## Model
//!
//! One service group per cluster, started in order and stopped in reverse: promote the
//! replicated volumes, set the targets' ALUA groups active/optimized, add the portal IPs
//! (with gratuitous ARP), start external OCF resources. The passive head keeps the
//! volumes Secondary and the ALUA groups in standby, so its own portals answer with
//! NOT READY / STANDBY (initiators retry on the other path).
//!
//! ## Who runs the service
//!
//! Tried in order, on every input:
//!
//! | situation | this head |
//! |---|---|
//! | maintenance mode | does nothing (watches only) |
//! | active, no quorum (non-transient reason) | applies `no-quorum-policy` (stop / freeze / ignore / suicide) |
//! | active, standby, moved away or failed here, or moved to the peer | stops, then says `MOVE_AWAY` so the peer starts |
//! | active, peer also active (both sides ran: a healed partition without fencing) | the higher node id stops |
//! | active, peer lost and quorum says fence | fences the peer at once (the passive side waits `fence_delay_passive_ms`, so in a partition the active head wins the fence race) |
//! | passive, not allowed (standby, failed here, moved away, cannot run) | stays passive |
//! | passive, no quorum (e.g. wait-for-all: never saw the peer) | stays passive |
//! | passive, peer visible and active (and not moving away) | stays passive |
//! | passive, peer visible and not active | starts if the peer cannot or will not run, or the service was moved here, or this head is preferred (location score, then the lower node id) |
//! | passive, peer lost | fences the peer first when quorum says so (a failed fence blocks the takeover unless `fence_failure_blocks` is off); with the witness's vote no fencing is needed; then starts as a takeover |
//!
//! A takeover (peer lost) drops the replication link before promoting, so a link that
//! has not timed out yet cannot refuse the promotion; a planned move does not.

use std::collections::VecDeque;
use std::fmt;

use crate::quorum::{NoQuorumPolicy, QuorumState, Reason};

/// Role-summary bit: this head runs (or is starting) the service.
pub const SUMMARY_ACTIVE: u32 = 1 << 0;
/// Role-summary bit: this head is in standby.
pub const SUMMARY_STANDBY: u32 = 1 << 1;
/// Role-summary bit: this head could run the service (its data is UpToDate).
pub const SUMMARY_CAN_RUN: u32 = 1 << 2;
/// Role-summary bit: this head wants the peer to run the service (moved away, failed
/// here, standby).
pub const SUMMARY_MOVE_AWAY: u32 = 1 << 3;
/// Role-summary bit: the operator moved the service to this head.
pub const SUMMARY_MOVED_HERE: u32 = 1 << 4;
/// Role-summary bit: maintenance mode (the managers watch but do not act).
pub const SUMMARY_MAINTENANCE: u32 = 1 << 5;
/// Role-summary bit: this head stopped everything and is shutting down cleanly; when
/// its heartbeats stop, the peer takes over without fencing it.
pub const SUMMARY_LEAVING: u32 = 1 << 6;

/// Manager configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// This head's node id.
    pub node_id: u8,
    /// The peer's node id.
    pub peer_node_id: u8,
    /// Location score of this head for the service (higher is preferred; ties go to the
    /// lower node id). Pacemaker's location constraint, for the one service group.
    pub location_score: i32,
    /// The peer's location score (both heads' configurations carry both).
    pub peer_location_score: i32,
    /// Failures on this head before the service moves away (0 = never move).
    pub migration_threshold: u32,
    /// Failcounts older than this are forgotten (0 = never).
    pub failure_timeout_ms: u64,
    /// A fence agent is configured.
    pub fencing_configured: bool,
    /// A failed fence blocks the takeover (the safe default).
    pub fence_failure_blocks: bool,
    /// Delay before the passive head fences (the active head fences at once).
    pub fence_delay_passive_ms: u64,
    /// Pause between failed fence attempts of one episode.
    pub fence_retry_interval_ms: u64,
    /// Fence even when the witness settled a partition.
    pub fence_with_witness: bool,
    /// What to do without quorum.
    pub no_quorum_policy: NoQuorumPolicy,
    /// Interval of resource monitors while active (0 = none).
    pub monitor_interval_ms: u64,
    /// What a monitor failure of the service's own resources does.
    pub on_fail: ServiceOnFail,
    /// How much the service prefers to stay where it runs: it moves back to a head
    /// whose location score exceeds the running head's by more than this (automatic
    /// failback). [`crate::policy::INFINITY`] (the default) never moves it back.
    pub resource_stickiness: i64,
}

/// What a monitor failure of the service's own resources (volumes, targets, portal
/// IPs) does; every failure counts towards the migration threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceOnFail {
    /// Stop and start again here (the service moves once the migration threshold is
    /// reached).
    #[default]
    Restart,
    /// Demote here at once; the peer promotes (until `cleanup`).
    Demote,
    /// This head goes to standby.
    Standby,
    /// This head leaves at once without stopping anything; the peer fences it and takes
    /// over.
    Fence,
    /// Keep the service as it is and do nothing more until `cleanup` (the peer does
    /// not take over: the state here is unknown).
    Block,
    /// Count and report only.
    Ignore,
}

impl ServiceOnFail {
    /// Configuration spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceOnFail::Restart => "restart",
            ServiceOnFail::Demote => "demote",
            ServiceOnFail::Standby => "standby",
            ServiceOnFail::Fence => "fence",
            ServiceOnFail::Block => "block",
            ServiceOnFail::Ignore => "ignore",
        }
    }

    /// Parse the configuration spelling.
    pub fn parse(s: &str) -> Option<Self> {
        [
            ServiceOnFail::Restart,
            ServiceOnFail::Demote,
            ServiceOnFail::Standby,
            ServiceOnFail::Fence,
            ServiceOnFail::Block,
            ServiceOnFail::Ignore,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl ManagerConfig {
    /// Defaults for everything but identity.
    pub fn new(node_id: u8, peer_node_id: u8) -> Self {
        ManagerConfig {
            node_id,
            peer_node_id,
            location_score: 0,
            peer_location_score: 0,
            migration_threshold: 3,
            failure_timeout_ms: 0,
            fencing_configured: false,
            fence_failure_blocks: true,
            fence_delay_passive_ms: 1000,
            fence_retry_interval_ms: 1000,
            fence_with_witness: false,
            no_quorum_policy: NoQuorumPolicy::Stop,
            monitor_interval_ms: 2000,
            on_fail: ServiceOnFail::Restart,
            resource_stickiness: crate::policy::INFINITY,
        }
    }
}

/// The service state on this head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Not running here.
    Passive,
    /// Fencing the peer before a takeover.
    Fencing,
    /// Start in progress (`takeover`: the peer was lost).
    Starting {
        /// A takeover after losing the peer.
        takeover: bool,
    },
    /// Running here.
    Active,
    /// Stop in progress.
    Stopping,
    /// A stop failed: the service state here is unknown; the operator must look
    /// (`cleanup` retries).
    Blocked,
}

impl ServiceState {
    /// Short name for status.
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceState::Passive => "passive",
            ServiceState::Fencing => "fencing",
            ServiceState::Starting { takeover: false } => "starting",
            ServiceState::Starting { takeover: true } => "taking-over",
            ServiceState::Active => "active",
            ServiceState::Stopping => "stopping",
            ServiceState::Blocked => "blocked",
        }
    }

    fn runs(&self) -> bool {
        matches!(
            self,
            ServiceState::Starting { .. } | ServiceState::Active | ServiceState::Stopping
        )
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCmd {
    /// Move the service to this head (`true`) or away from it (`false`).
    Move {
        /// To this head.
        here: bool,
    },
    /// Forget a move.
    Unmove,
    /// Standby: this head runs nothing.
    Standby,
    /// Leave standby.
    Online,
    /// Reset failcounts and a blocked state.
    Cleanup,
    /// Maintenance mode on or off (watch, do not act).
    Maintenance(bool),
    /// Clean shutdown of this head: stop the service here (the peer takes it), then
    /// say so in the heartbeats, so the peer does not fence this head when they stop.
    Leave,
}

/// Which operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The start sequence.
    Start,
    /// The stop sequence.
    Stop,
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed.
    Tick,
    /// Cluster facts after an HA core step.
    Cluster {
        /// The peer is alive on some link.
        peer_alive: bool,
        /// The quorum decision.
        quorum: QuorumState,
        /// The peer's role summary from its newest heartbeat.
        peer_summary: Option<u32>,
        /// The peer rebooted since it was last seen (a fenced peer is back).
        peer_boot: Option<u64>,
    },
    /// Whether this head could run the service (every volume UpToDate, or already
    /// Primary here).
    CanRun(bool),
    /// A required resource cannot run here (banned by location or failed up to its
    /// migration threshold; see [`crate::policy`]): why, or `None` when it can again.
    /// Like the service's own migration threshold, this moves the service away.
    Banned(Option<String>),
    /// An operator command.
    Admin(AdminCmd),
    /// A fence attempt ended.
    FenceDone {
        /// The peer is confirmed off.
        ok: bool,
        /// One line for logs and status.
        report: String,
    },
    /// A start or stop ended.
    OpDone {
        /// Which.
        op: Op,
        /// Success.
        ok: bool,
        /// Why not.
        message: String,
    },
    /// A monitor found a resource failed while active.
    MonitorFailed {
        /// Resource name.
        resource: String,
        /// What was found.
        message: String,
    },
}

/// Outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fence the peer (action off); answer with [`Input::FenceDone`].
    FencePeer,
    /// Run the start sequence; answer with [`Input::OpDone`].
    Start {
        /// The peer was lost: drop the replication link before promoting.
        takeover: bool,
    },
    /// Run the stop sequence; answer with [`Input::OpDone`].
    Stop,
    /// Monitor every resource; report failures with [`Input::MonitorFailed`].
    Monitor,
    /// The role summary to carry in heartbeats changed.
    Summary {
        /// The bits.
        summary: u32,
        /// This head runs the service (quorum's "active").
        active: bool,
    },
    /// No quorum with `no-quorum-policy = suicide`: the driver stops this head hard.
    Suicide,
    /// Something worth a log line and a status entry.
    Event(String),
}

/// Manager status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerStatus {
    /// Service state here.
    pub state: ServiceState,
    /// Standby.
    pub standby: bool,
    /// Maintenance mode.
    pub maintenance: bool,
    /// Move request: `Some(true)` here, `Some(false)` away.
    pub moved: Option<bool>,
    /// Failures on this head (within the failure timeout).
    pub failcount: u32,
    /// The migration threshold was reached here.
    pub failed_here: bool,
    /// A required resource cannot run here: why.
    pub banned: Option<String>,
    /// This head could run the service.
    pub can_run: bool,
    /// The peer's role summary.
    pub peer_summary: Option<u32>,
    /// The peer is alive.
    pub peer_alive: bool,
    /// The peer was fenced and has not come back since.
    pub peer_fenced: bool,
    /// Last fence report.
    pub last_fence: Option<String>,
    /// Why this head is not doing more (e.g. "waiting for the peer (wait-for-all)").
    pub waiting: Option<String>,
    /// Time the service last became active here.
    pub active_since_ms: Option<u64>,
}

/// The manager of one head.
#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    now_ms: u64,
    state: ServiceState,
    standby: bool,
    maintenance: bool,
    leaving: bool,
    moved: Option<bool>,
    failures_ms: Vec<u64>,
    banned: Option<String>,
    /// on-fail=demote happened here (until cleanup).
    demoted: bool,
    /// Why the state is Blocked.
    blocked_why: Option<String>,
    can_run: bool,
    peer_alive: bool,
    peer_summary: Option<u32>,
    peer_boot: Option<u64>,
    quorum: Option<QuorumState>,
    /// The peer was confirmed off (cleared when it is alive again).
    peer_fenced: bool,
    /// When the peer was lost (for the passive fence delay).
    peer_lost_at_ms: Option<u64>,
    /// No fence attempt before this time (retry pacing).
    fence_not_before_ms: u64,
    last_fence: Option<String>,
    fence_failed: bool,
    restart_pending: bool,
    next_monitor_ms: Option<u64>,
    active_since_ms: Option<u64>,
    summary_sent: Option<(u32, bool)>,
    waiting: Option<String>,
    actions: VecDeque<Action>,
}

impl Manager {
    /// A manager in the passive state.
    pub fn new(cfg: ManagerConfig) -> Self {
        Manager {
            cfg,
            now_ms: 0,
            state: ServiceState::Passive,
            standby: false,
            maintenance: false,
            leaving: false,
            moved: None,
            failures_ms: Vec::new(),
            banned: None,
            demoted: false,
            blocked_why: None,
            can_run: false,
            peer_alive: false,
            peer_summary: None,
            peer_boot: None,
            quorum: None,
            peer_fenced: false,
            peer_lost_at_ms: None,
            fence_not_before_ms: 0,
            last_fence: None,
            fence_failed: false,
            restart_pending: false,
            next_monitor_ms: None,
            active_since_ms: None,
            summary_sent: None,
            waiting: None,
            actions: VecDeque::new(),
        }
    }

    /// Start from a head that already runs the service (e.g. volumes found Primary at
    /// start-up after a restart of the manager alone).
    pub fn assume_active(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.state = ServiceState::Active;
        self.active_since_ms = Some(now_ms);
        self.next_monitor_ms = self.monitor_after(now_ms);
        self.publish();
    }

    /// Apply one input at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            Input::Tick => {}
            Input::Cluster {
                peer_alive,
                quorum,
                peer_summary,
                peer_boot,
            } => {
                if peer_alive && !self.peer_alive {
                    self.peer_lost_at_ms = None;
                    if self.peer_fenced {
                        self.event("the fenced peer is back".into());
                    }
                    self.peer_fenced = false;
                    self.fence_failed = false;
                } else if !peer_alive && self.peer_alive {
                    self.peer_lost_at_ms = Some(self.now_ms);
                    let bits = self.peer_summary.unwrap_or(0);
                    if bits & SUMMARY_LEAVING != 0 && bits & SUMMARY_ACTIVE == 0 {
                        // It stopped everything and said goodbye: nothing to fence.
                        self.peer_fenced = true;
                        self.event("the peer left the cluster cleanly".into());
                    } else {
                        self.event("peer lost".into());
                    }
                } else if !peer_alive && self.peer_lost_at_ms.is_none() {
                    self.peer_lost_at_ms = Some(self.now_ms);
                }
                // A fenced peer stays fenced until it is alive again (above): a new boot
                // seen before its heartbeats prove life must not make it fenceable.
                self.peer_boot = peer_boot.or(self.peer_boot);
                self.peer_alive = peer_alive;
                if let Some(bits) = peer_summary {
                    let was = self.peer_summary.unwrap_or(0);
                    if bits & SUMMARY_MOVED_HERE != 0
                        && was & SUMMARY_MOVED_HERE == 0
                        && self.moved == Some(true)
                    {
                        // The newer move (on the peer) wins over ours.
                        self.moved = None;
                        self.event("the operator moved the service to the peer".into());
                    }
                    self.peer_summary = Some(bits);
                }
                self.quorum = Some(quorum);
            }
            Input::CanRun(c) => self.can_run = c,
            Input::Banned(b) => {
                if b != self.banned {
                    match &b {
                        Some(why) => self.event(format!("the service cannot run here: {why}")),
                        None => self.event("no resource keeps the service away any more".into()),
                    }
                    self.banned = b;
                }
            }
            Input::Admin(cmd) => self.admin(cmd),
            Input::FenceDone { ok, report } => {
                if self.state == ServiceState::Fencing {
                    self.state = ServiceState::Passive;
                }
                self.last_fence = Some(report.clone());
                if ok {
                    self.peer_fenced = true;
                    self.fence_failed = false;
                    self.fence_not_before_ms = 0;
                    self.event(format!("peer fenced: {report}"));
                } else {
                    self.fence_failed = true;
                    self.fence_not_before_ms = self.now_ms + self.cfg.fence_retry_interval_ms;
                    self.event(format!("fencing the peer FAILED: {report}"));
                }
            }
            Input::OpDone { op, ok, message } => self.op_done(op, ok, message),
            Input::MonitorFailed { resource, message } => {
                if self.state == ServiceState::Active {
                    let what = format!("monitor of {resource} failed: {message}");
                    self.failure(format!("{what} (on-fail {})", self.cfg.on_fail.as_str()));
                    match self.cfg.on_fail {
                        ServiceOnFail::Restart => self.restart_pending = true,
                        ServiceOnFail::Demote => self.demoted = true,
                        ServiceOnFail::Standby => {
                            self.standby = true;
                            self.event("on-fail=standby: this head goes to standby".into());
                        }
                        ServiceOnFail::Fence => {
                            self.event(
                                "on-fail=fence: leaving at once; the peer fences this head".into(),
                            );
                            self.actions.push_back(Action::Suicide);
                        }
                        ServiceOnFail::Block => {
                            self.state = ServiceState::Blocked;
                            self.blocked_why = Some(what);
                            self.next_monitor_ms = None;
                        }
                        ServiceOnFail::Ignore => {}
                    }
                }
            }
        }
        self.step();
        self.publish();
    }

    fn admin(&mut self, cmd: AdminCmd) {
        match cmd {
            AdminCmd::Move { here } => {
                self.moved = Some(here);
                self.event(format!(
                    "operator: move the service {}",
                    if here { "here" } else { "away" }
                ));
            }
            AdminCmd::Unmove => {
                self.moved = None;
                self.event("operator: unmove".into());
            }
            AdminCmd::Standby => {
                self.standby = true;
                self.event("operator: standby".into());
            }
            AdminCmd::Online => {
                self.standby = false;
                self.event("operator: online".into());
            }
            AdminCmd::Cleanup => {
                self.failures_ms.clear();
                self.demoted = false;
                self.blocked_why = None;
                self.fence_failed = false;
                self.fence_not_before_ms = 0;
                if self.state == ServiceState::Blocked {
                    // Unknown state: stop everything to get to a known one.
                    self.state = ServiceState::Stopping;
                    self.actions.push_back(Action::Stop);
                }
                self.event("operator: cleanup (failcounts reset)".into());
            }
            AdminCmd::Leave => {
                self.standby = true;
                self.leaving = true;
                self.maintenance = false;
                self.event("leaving the cluster: stopping the service here".into());
            }
            AdminCmd::Maintenance(on) => {
                self.maintenance = on;
                self.event(format!(
                    "operator: maintenance {}",
                    if on { "on" } else { "off" }
                ));
            }
        }
    }

    fn op_done(&mut self, op: Op, ok: bool, message: String) {
        match (op, self.state) {
            (Op::Start, ServiceState::Starting { .. }) => {
                if ok {
                    self.state = ServiceState::Active;
                    self.active_since_ms = Some(self.now_ms);
                    self.next_monitor_ms = self.monitor_after(self.now_ms);
                    self.event("service started here".into());
                } else {
                    self.failure(format!("start failed: {message}"));
                    // Clean up whatever part started.
                    self.state = ServiceState::Stopping;
                    self.actions.push_back(Action::Stop);
                }
            }
            (Op::Stop, ServiceState::Stopping) => {
                if ok {
                    self.state = ServiceState::Passive;
                    self.active_since_ms = None;
                    self.next_monitor_ms = None;
                    self.event("service stopped here".into());
                } else {
                    self.state = ServiceState::Blocked;
                    self.blocked_why = Some(format!("a stop failed: {message}"));
                    self.event(format!(
                        "stop FAILED: {message}; blocked until `twinsan ha cleanup`"
                    ));
                }
            }
            (op, state) => self.event(format!(
                "ignored a late {op:?} result in state {state} ({})",
                if ok { "ok" } else { message.as_str() }
            )),
        }
    }

    fn failure(&mut self, what: String) {
        self.failures_ms.push(self.now_ms);
        self.expire_failures();
        let n = self.failures_ms.len();
        self.event(format!(
            "{what} (failcount {n}{})",
            if self.cfg.migration_threshold > 0 {
                format!(" of {}", self.cfg.migration_threshold)
            } else {
                String::new()
            }
        ));
    }

    fn expire_failures(&mut self) {
        if self.cfg.failure_timeout_ms > 0 {
            let keep_after = self.now_ms.saturating_sub(self.cfg.failure_timeout_ms);
            self.failures_ms.retain(|&t| t > keep_after);
        }
    }

    fn failed_here(&self) -> bool {
        self.cfg.migration_threshold > 0
            && self.failures_ms.len() as u32 >= self.cfg.migration_threshold
            || self.banned.is_some()
            || self.demoted
    }

    /// The service may run here (ignoring the peer).
    fn allowed_here(&self) -> bool {
        !self.standby && !self.failed_here() && self.moved != Some(false) && self.can_run
    }

    fn peer_bits(&self) -> u32 {
        self.peer_summary.unwrap_or(0)
    }

    fn preferred_here(&self) -> bool {
        let (mine, theirs) = (self.cfg.location_score, self.cfg.peer_location_score);
        mine > theirs || (mine == theirs && self.cfg.node_id < self.cfg.peer_node_id)
    }

    fn step(&mut self) {
        self.expire_failures();
        self.waiting = None;
        if self.maintenance || self.peer_bits() & SUMMARY_MAINTENANCE != 0 && self.peer_alive {
            self.waiting = Some("maintenance mode: watching only".into());
            return;
        }
        let Some(q) = self.quorum else {
            self.waiting = Some("no cluster facts yet".into());
            return;
        };
        let quorate = q.has_quorum || self.cfg.no_quorum_policy == NoQuorumPolicy::Ignore;
        match self.state {
            ServiceState::Starting { .. } | ServiceState::Stopping | ServiceState::Fencing => {}
            ServiceState::Blocked => {
                self.waiting = Some(format!(
                    "blocked: {}; run `twinsan ha cleanup`",
                    self.blocked_why.as_deref().unwrap_or("state unknown")
                ));
            }
            ServiceState::Active => self.step_active(q, quorate),
            ServiceState::Passive => self.step_passive(q, quorate),
        }
    }

    fn step_active(&mut self, q: QuorumState, quorate: bool) {
        if !quorate {
            if q.reason.is_transient() {
                self.waiting = Some(format!("quorum pending ({:?}); holding", q.reason));
                return;
            }
            match self.cfg.no_quorum_policy {
                NoQuorumPolicy::Stop => {
                    self.event(format!(
                        "lost quorum ({:?}): stopping the service (no-quorum-policy=stop)",
                        q.reason
                    ));
                    self.stop();
                }
                NoQuorumPolicy::Freeze => {
                    self.waiting = Some("no quorum: frozen (no-quorum-policy=freeze)".into());
                }
                NoQuorumPolicy::Suicide => {
                    self.event("lost quorum: suicide (no-quorum-policy=suicide)".into());
                    self.actions.push_back(Action::Suicide);
                }
                NoQuorumPolicy::Ignore => {}
            }
            return;
        }
        if self.standby || self.failed_here() || self.moved == Some(false) {
            let why = if self.standby {
                "standby"
            } else if let Some(b) = &self.banned {
                b.as_str()
            } else if self.demoted {
                "a monitor failed (on-fail=demote)"
            } else if self.failed_here() {
                "migration threshold reached"
            } else {
                "moved away"
            };
            let why = why.to_string();
            self.event(format!("stopping the service here: {why}"));
            self.stop();
            return;
        }
        if self.peer_alive && self.peer_bits() & SUMMARY_ACTIVE != 0 && !self.peer_bits_moving() {
            if self.cfg.node_id > self.cfg.peer_node_id {
                self.event(
                    "BOTH heads run the service (a partition healed without fencing); this \
                     head has the higher node id and stops"
                        .into(),
                );
                self.stop();
                return;
            }
            self.waiting = Some("both heads active; the peer (higher id) stops".into());
        }
        if self.peer_alive
            && self.peer_bits() & (SUMMARY_MOVED_HERE | SUMMARY_CAN_RUN)
                == SUMMARY_MOVED_HERE | SUMMARY_CAN_RUN
            && self.moved != Some(true)
        {
            self.event("stopping the service here: the operator moved it to the peer".into());
            self.stop();
            return;
        }
        if self.failback_due() {
            self.event(format!(
                "failback: the peer's location score {} exceeds this head's {} by more than \
                 the resource stickiness {}; moving the service there",
                self.cfg.peer_location_score, self.cfg.location_score, self.cfg.resource_stickiness
            ));
            self.stop();
            return;
        }
        if self.restart_pending {
            self.restart_pending = false;
            self.event("restarting the service after a monitor failure".into());
            self.stop();
            return;
        }
        if !self.peer_alive && q.needs_fencing && self.cfg.fencing_configured && !self.peer_fenced {
            self.fence_now_if_due();
        }
        if let Some(at) = self.next_monitor_ms {
            if self.now_ms >= at {
                self.actions.push_back(Action::Monitor);
                self.next_monitor_ms = self.monitor_after(self.now_ms);
            }
        }
    }

    /// Automatic failback: the peer may run the service and prefers it by more than
    /// the stickiness (never with the default, INFINITY).
    fn failback_due(&self) -> bool {
        let peer = self.peer_bits();
        let margin = i64::from(self.cfg.peer_location_score) - i64::from(self.cfg.location_score);
        self.cfg.resource_stickiness < crate::policy::INFINITY
            && self.peer_alive
            && self.moved != Some(true)
            && peer & SUMMARY_CAN_RUN != 0
            && peer & (SUMMARY_STANDBY | SUMMARY_MOVE_AWAY | SUMMARY_MAINTENANCE) == 0
            && margin > self.cfg.resource_stickiness
    }

    fn peer_bits_moving(&self) -> bool {
        self.peer_bits() & SUMMARY_MOVE_AWAY != 0
    }

    fn step_passive(&mut self, q: QuorumState, quorate: bool) {
        if !self.allowed_here() {
            self.waiting = Some(if self.standby {
                "standby".to_string()
            } else if let Some(b) = &self.banned {
                format!("{b}; `twinsan ha cleanup` resets")
            } else if self.failed_here() {
                "migration threshold reached here; `twinsan ha cleanup` resets".to_string()
            } else if self.moved == Some(false) {
                "moved away".to_string()
            } else {
                "the local data cannot be promoted (not UpToDate)".to_string()
            });
            return;
        }
        if !quorate {
            self.waiting = Some(match q.reason {
                Reason::WaitingForPeer => "waiting for the peer (wait-for-all)".into(),
                r => format!("no quorum ({r:?})"),
            });
            return;
        }
        if self.peer_alive {
            let peer = self.peer_bits();
            if peer & SUMMARY_ACTIVE != 0 {
                self.waiting = Some(if peer & SUMMARY_MOVE_AWAY != 0 {
                    "the peer is stopping the service".into()
                } else {
                    "the peer runs the service".into()
                });
                return;
            }
            let peer_declines =
                peer & (SUMMARY_STANDBY | SUMMARY_MOVE_AWAY) != 0 || peer & SUMMARY_CAN_RUN == 0;
            let go = self.moved == Some(true)
                || peer_declines
                || (peer & SUMMARY_MOVED_HERE == 0 && self.preferred_here());
            if go {
                self.start(false);
            } else {
                self.waiting = Some("the peer is preferred and will start the service".into());
            }
            return;
        }
        // The peer is lost.
        let fence_needed = (q.needs_fencing
            || (self.cfg.fence_with_witness && self.cfg.fencing_configured))
            && !self.peer_fenced;
        if fence_needed {
            if !self.cfg.fencing_configured {
                self.waiting = Some(
                    "the peer is lost and no fence agent is configured: not taking over (it may \
                     still be writing); configure [cluster.fence] or a witness"
                        .into(),
                );
                return;
            }
            let lost_at = self.peer_lost_at_ms.unwrap_or(self.now_ms);
            if self.now_ms < lost_at + self.cfg.fence_delay_passive_ms {
                self.waiting = Some("peer lost: fence delay of the passive head".into());
                return;
            }
            if self.fence_failed
                && self.cfg.fence_failure_blocks
                && self.now_ms < self.fence_not_before_ms
            {
                self.waiting = Some("fencing failed; retrying (takeover blocked)".into());
                return;
            }
            if self.fence_failed && !self.cfg.fence_failure_blocks {
                self.event(
                    "fencing failed and fence_failure_blocks is off: taking over anyway".into(),
                );
                self.start(true);
                return;
            }
            self.fence_now_if_due();
            return;
        }
        self.start(true);
    }

    fn fence_now_if_due(&mut self) {
        if self.now_ms < self.fence_not_before_ms {
            return;
        }
        if self.state == ServiceState::Passive {
            self.state = ServiceState::Fencing;
        }
        // One attempt in flight: pace the next.
        self.fence_not_before_ms = u64::MAX;
        self.event("fencing the peer".into());
        self.actions.push_back(Action::FencePeer);
    }

    fn start(&mut self, takeover: bool) {
        self.state = ServiceState::Starting { takeover };
        self.event(if takeover {
            "taking over the service".into()
        } else {
            "starting the service here".into()
        });
        self.actions.push_back(Action::Start { takeover });
    }

    fn stop(&mut self) {
        self.state = ServiceState::Stopping;
        self.actions.push_back(Action::Stop);
    }

    fn monitor_after(&self, now_ms: u64) -> Option<u64> {
        (self.cfg.monitor_interval_ms > 0).then(|| now_ms + self.cfg.monitor_interval_ms)
    }

    fn summary(&self) -> u32 {
        let mut s = 0;
        if self.state.runs() && self.state != ServiceState::Stopping
            || self.state == ServiceState::Blocked
        {
            s |= SUMMARY_ACTIVE;
        }
        if self.state == ServiceState::Stopping {
            s |= SUMMARY_ACTIVE | SUMMARY_MOVE_AWAY;
        }
        if self.standby {
            s |= SUMMARY_STANDBY;
        }
        if self.can_run && !self.failed_here() {
            s |= SUMMARY_CAN_RUN;
        }
        if self.standby || self.failed_here() || self.moved == Some(false) {
            s |= SUMMARY_MOVE_AWAY;
        }
        if self.moved == Some(true) {
            s |= SUMMARY_MOVED_HERE;
        }
        if self.maintenance {
            s |= SUMMARY_MAINTENANCE;
        }
        if self.leaving && self.state == ServiceState::Passive {
            s |= SUMMARY_LEAVING;
        }
        s
    }

    fn publish(&mut self) {
        let s = (
            self.summary(),
            self.state.runs() || self.state == ServiceState::Blocked,
        );
        if self.summary_sent != Some(s) {
            self.summary_sent = Some(s);
            self.actions.push_back(Action::Summary {
                summary: s.0,
                active: s.1,
            });
        }
    }

    fn event(&mut self, s: String) {
        self.actions.push_back(Action::Event(s));
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to deliver the next [`Input::Tick`] (absolute ms), if anything is timed.
    pub fn next_timeout_ms(&self) -> Option<u64> {
        let mut t: Option<u64> = self.next_monitor_ms;
        let mut consider = |x: u64| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(lost) = self.peer_lost_at_ms {
            let due = lost + self.cfg.fence_delay_passive_ms;
            if due > self.now_ms {
                consider(due);
            }
        }
        if self.fence_not_before_ms != u64::MAX && self.fence_not_before_ms > self.now_ms {
            consider(self.fence_not_before_ms);
        }
        if self.cfg.failure_timeout_ms > 0 {
            if let Some(&first) = self.failures_ms.first() {
                consider(first + self.cfg.failure_timeout_ms + 1);
            }
        }
        t
    }

    /// The service state here.
    pub fn state(&self) -> ServiceState {
        self.state
    }

    /// Status.
    pub fn status(&self) -> ManagerStatus {
        ManagerStatus {
            state: self.state,
            standby: self.standby,
            maintenance: self.maintenance,
            moved: self.moved,
            failcount: self.failures_ms.len() as u32,
            failed_here: self.failed_here(),
            banned: self.banned.clone(),
            can_run: self.can_run,
            peer_summary: self.peer_summary,
            peer_alive: self.peer_alive,
            peer_fenced: self.peer_fenced,
            last_fence: self.last_fence.clone(),
            waiting: self.waiting.clone(),
            active_since_ms: self.active_since_ms,
        }
    }
}

#[cfg(test)]
mod tests;
