//! The resource policy of one head, sans-IO: which of the user's resources (external
//! OCF agents) run here, in which order they start and stop, how often they are
//! monitored and what a failure does — Pacemaker's semantics, fitted to two heads and
//! the one promotable service (replicated volumes → targets → portal IPs) that
//! [`crate::manager`] places.
//!
//! Owns: resource definitions and their validation (names, order constraints without
//! cycles, placements, scores with ±INFINITY), each resource's phase here (probing,
//! stopped, starting, running, stopping, failed), failcounts with migration threshold
//! and failure timeout, target-role and managed overrides, blocked resources, and the
//! schedule of start/stop/monitor operations.
//!
//! May not touch: processes, clocks, the service group's own resources. The driver
//! runs the [`Action`]s and reports with [`Input::OpDone`] and [`Input::MonitorDone`];
//! it tells the policy where the service runs with [`Input::Context`].
//!
//! ## Model
//!
//! | placement | runs on | Pacemaker equivalent |
//! |---|---|---|
//! | `with-service` (default) | the head running the service, after its start sequence; stopped before the service stops | group member / colocation with the promoted role, score INFINITY |
//! | `away-from-service` | the head that does *not* run the service, while the peer runs it | colocation with the promoted role, score -INFINITY |
//! | `clone` | every head that is online (not standby, quorate) | clone |
//!
//! * **Order**: `after = [names]` is a mandatory order: a resource starts only once
//!   each of them runs here, stops before any of them stops, and cannot run where one
//!   of them cannot. It may name resources of the same placement or clones.
//! * **Location**: a score per head (integers, `INFINITY`, `-INFINITY`); `-INFINITY`
//!   bans the resource from a head. The scores of required `with-service` resources add
//!   to the service's own location score (Pacemaker's group scores).
//! * **Required** (`with-service` only, default on): the service cannot run on a head
//!   where the resource cannot (banned, or failed `migration_threshold` times there),
//!   so such a failure moves the whole service — a group's behaviour. Optional members
//!   stay stopped instead.
//! * **target-role** `started`/`stopped` and **managed** (unmanaged: monitored and
//!   reported, never started or stopped), from the configuration or at run time.
//!   Maintenance mode makes every resource unmanaged.
//! * **Probes**: at start-up each resource is monitored once to learn whether it
//!   already runs here; no operation is scheduled before every probe answered.
//! * **on-fail** of a monitor failure: `restart` (stop, then start again here, with the
//!   resources ordered after it), `stop` (stop and leave stopped until cleanup),
//!   `block` (leave it as it is, no more operations until cleanup), `ignore` (count and
//!   report only), `standby` (this head goes to standby: everything moves to the peer),
//!   `fence` (this head leaves at once without stopping anything, so the peer fences it
//!   and takes over). A failed start bans the resource from this head (Pacemaker's
//!   start-failure-is-fatal); a failed stop blocks it (its state is unknown).
//! * One start or stop runs at a time, stops first (in reverse order), then starts in
//!   order; monitors run alongside.

use std::collections::VecDeque;
use std::fmt;

/// Pacemaker's INFINITY: scores saturate here.
pub const INFINITY: i64 = 1_000_000;

/// A constraint score: an integer in ±[`INFINITY`]. `-INFINITY` plus anything is
/// `-INFINITY`; otherwise `INFINITY` plus anything is `INFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Score(i64);

impl Score {
    /// +INFINITY.
    pub const INFINITY: Score = Score(INFINITY);
    /// -INFINITY (banned).
    pub const MINUS_INFINITY: Score = Score(-INFINITY);

    /// A score, clamped to ±INFINITY.
    pub fn new(v: i64) -> Score {
        Score(v.clamp(-INFINITY, INFINITY))
    }

    /// The value (±[`INFINITY`] at the ends).
    pub fn value(self) -> i64 {
        self.0
    }

    /// Pacemaker's score addition.
    pub fn plus(self, o: Score) -> Score {
        if self == Score::MINUS_INFINITY || o == Score::MINUS_INFINITY {
            Score::MINUS_INFINITY
        } else if self == Score::INFINITY || o == Score::INFINITY {
            Score::INFINITY
        } else {
            Score::new(self.0.saturating_add(o.0))
        }
    }

    /// `INFINITY`, `+INFINITY`, `-INFINITY` (any case) or an integer.
    pub fn parse(s: &str) -> Result<Score, PolicyError> {
        let t = s.trim();
        match t.to_ascii_uppercase().as_str() {
            "INFINITY" | "+INFINITY" => return Ok(Score::INFINITY),
            "-INFINITY" => return Ok(Score::MINUS_INFINITY),
            _ => {}
        }
        t.parse::<i64>()
            .map(Score::new)
            .map_err(|_| PolicyError::BadScore(s.to_string()))
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Score::INFINITY => f.write_str("INFINITY"),
            Score::MINUS_INFINITY => f.write_str("-INFINITY"),
            Score(v) => write!(f, "{v}"),
        }
    }
}

/// Where a resource runs (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the head running the service.
    WithService,
    /// On the head not running the service, while the peer runs it.
    AwayFromService,
    /// On every online head.
    Clone,
}

impl Placement {
    /// Configuration spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Placement::WithService => "with-service",
            Placement::AwayFromService => "away-from-service",
            Placement::Clone => "clone",
        }
    }

    /// Parse the configuration spelling.
    pub fn parse(s: &str) -> Result<Placement, PolicyError> {
        match s {
            "with-service" => Ok(Placement::WithService),
            "away-from-service" => Ok(Placement::AwayFromService),
            "clone" => Ok(Placement::Clone),
            _ => Err(PolicyError::BadValue {
                field: "placement",
                value: s.into(),
                expected: "with-service | away-from-service | clone",
            }),
        }
    }
}

/// What a monitor failure does (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    /// Stop and start again here.
    Restart,
    /// Stop and leave stopped until cleanup.
    Stop,
    /// No more operations until cleanup.
    Block,
    /// Count and report only.
    Ignore,
    /// This head goes to standby.
    Standby,
    /// This head leaves at once so the peer fences it.
    Fence,
}

impl OnFail {
    /// Configuration spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            OnFail::Restart => "restart",
            OnFail::Stop => "stop",
            OnFail::Block => "block",
            OnFail::Ignore => "ignore",
            OnFail::Standby => "standby",
            OnFail::Fence => "fence",
        }
    }

    /// Parse the configuration spelling.
    pub fn parse(s: &str) -> Result<OnFail, PolicyError> {
        Ok(match s {
            "restart" => OnFail::Restart,
            "stop" => OnFail::Stop,
            "block" => OnFail::Block,
            "ignore" => OnFail::Ignore,
            "standby" => OnFail::Standby,
            "fence" => OnFail::Fence,
            _ => {
                return Err(PolicyError::BadValue {
                    field: "on_fail",
                    value: s.into(),
                    expected: "restart | stop | block | ignore | standby | fence",
                })
            }
        })
    }
}

/// Whether a resource should run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetRole {
    /// Run it where the policy places it.
    Started,
    /// Keep it stopped everywhere.
    Stopped,
}

impl TargetRole {
    /// Configuration spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetRole::Started => "started",
            TargetRole::Stopped => "stopped",
        }
    }

    /// Parse the configuration spelling.
    pub fn parse(s: &str) -> Result<TargetRole, PolicyError> {
        match s {
            "started" => Ok(TargetRole::Started),
            "stopped" => Ok(TargetRole::Stopped),
            _ => Err(PolicyError::BadValue {
                field: "target_role",
                value: s.into(),
                expected: "started | stopped",
            }),
        }
    }
}

/// One resource's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// Unique name.
    pub name: String,
    /// Where it runs.
    pub placement: Placement,
    /// Mandatory order: start after these (stop before them).
    pub after: Vec<String>,
    /// Location score of this head.
    pub score_here: Score,
    /// Location score of the peer head.
    pub score_peer: Score,
    /// `with-service`: the service cannot run where this resource cannot.
    pub required: bool,
    /// What a monitor failure does.
    pub on_fail: OnFail,
    /// Configured target role.
    pub target_role: TargetRole,
    /// Configured managed flag.
    pub managed: bool,
    /// Monitor interval while running (0 = probe only).
    pub monitor_interval_ms: u64,
    /// Failures here before it is banned from this head (0 = never).
    pub migration_threshold: u32,
    /// Failures older than this are forgotten (0 = never).
    pub failure_timeout_ms: u64,
}

impl ResourceDef {
    /// A `with-service`, required, started, managed resource with restart on failure,
    /// 2 s monitors and a migration threshold of 3.
    pub fn new(name: &str, placement: Placement) -> Self {
        ResourceDef {
            name: name.into(),
            placement,
            after: Vec::new(),
            score_here: Score::default(),
            score_peer: Score::default(),
            required: placement == Placement::WithService,
            on_fail: OnFail::Restart,
            target_role: TargetRole::Started,
            managed: true,
            monitor_interval_ms: 2000,
            migration_threshold: 3,
            failure_timeout_ms: 0,
        }
    }
}

/// A refused resource configuration or command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Two resources share a name.
    #[error("resource name {0:?} is used twice")]
    DuplicateName(String),
    /// A name is empty or has characters outside `[A-Za-z0-9._-]`.
    #[error("resource name {0:?}: use 1-64 characters of A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// `after` names an unknown resource.
    #[error("resource {resource}: after = {after:?}: no such resource")]
    UnknownAfter {
        /// The resource.
        resource: String,
        /// The unknown name.
        after: String,
    },
    /// `after` across placements (other than after a clone).
    #[error(
        "resource {resource} ({placement}) cannot be ordered after {after} ({after_placement}): \
         order constraints must stay within one placement or follow a clone"
    )]
    AfterAcrossPlacement {
        /// The resource.
        resource: String,
        /// Its placement.
        placement: &'static str,
        /// The resource it follows.
        after: String,
        /// That one's placement.
        after_placement: &'static str,
    },
    /// The order constraints form a cycle.
    #[error("order constraints form a cycle through {0}")]
    Cycle(String),
    /// `required` on a resource that is not `with-service`.
    #[error("resource {0}: required applies to with-service resources only")]
    RequiredNotWithService(String),
    /// A score that is not an integer or ±INFINITY.
    #[error("score {0:?}: use an integer, INFINITY or -INFINITY")]
    BadScore(String),
    /// A value outside its set.
    #[error("{field} = {value:?}: expected {expected}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// What is allowed.
        expected: &'static str,
    },
    /// A command names an unknown resource.
    #[error("no resource named {0:?}")]
    UnknownResource(String),
}

/// Validate definitions and return them in start order (a topological order of the
/// `after` constraints that keeps the configured order where it is free).
pub fn validate(defs: &[ResourceDef]) -> Result<Vec<ResourceDef>, PolicyError> {
    for (i, d) in defs.iter().enumerate() {
        let ok = !d.name.is_empty()
            && d.name.len() <= 64
            && d.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(PolicyError::BadName(d.name.clone()));
        }
        if defs[..i].iter().any(|o| o.name == d.name) {
            return Err(PolicyError::DuplicateName(d.name.clone()));
        }
        if d.required && d.placement != Placement::WithService {
            return Err(PolicyError::RequiredNotWithService(d.name.clone()));
        }
    }
    let index = |n: &str| defs.iter().position(|d| d.name == n);
    let mut deps = Vec::with_capacity(defs.len());
    for d in defs {
        let mut v = Vec::new();
        for a in &d.after {
            let j = index(a).ok_or_else(|| PolicyError::UnknownAfter {
                resource: d.name.clone(),
                after: a.clone(),
            })?;
            let p = defs[j].placement;
            if p != d.placement && p != Placement::Clone {
                return Err(PolicyError::AfterAcrossPlacement {
                    resource: d.name.clone(),
                    placement: d.placement.as_str(),
                    after: a.clone(),
                    after_placement: p.as_str(),
                });
            }
            v.push(j);
        }
        deps.push(v);
    }
    // Kahn's algorithm, always taking the lowest configured index that is free.
    let mut placed = vec![false; defs.len()];
    let mut out = Vec::with_capacity(defs.len());
    while out.len() < defs.len() {
        let next = (0..defs.len()).find(|&i| !placed[i] && deps[i].iter().all(|&j| placed[j]));
        match next {
            Some(i) => {
                placed[i] = true;
                out.push(defs[i].clone());
            }
            None => {
                let left: Vec<&str> = (0..defs.len())
                    .filter(|&i| !placed[i])
                    .map(|i| defs[i].name.as_str())
                    .collect();
                return Err(PolicyError::Cycle(left.join(", ")));
            }
        }
    }
    Ok(out)
}

/// An operator's override of a resource's configured target role or managed flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The resource.
    pub name: String,
    /// Target role, if overridden.
    pub target_role: Option<TargetRole>,
    /// Managed flag, if overridden.
    pub managed: Option<bool>,
}

/// Where the service runs, from the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Context {
    /// The service runs here and its start sequence finished (false while stopping).
    pub service_here: bool,
    /// The peer is alive and runs the service.
    pub service_on_peer: bool,
    /// This head may run resources: not standby, has quorum (or ignores its loss).
    pub online: bool,
    /// Maintenance mode: every resource is unmanaged.
    pub maintenance: bool,
}

/// A start or a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RscOp {
    /// Start.
    Start,
    /// Stop.
    Stop,
}

/// What a monitor found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorResult {
    /// Running (OCF 0, or 8 for a promoted instance).
    Running,
    /// Cleanly not running (OCF 7).
    NotRunning,
    /// Failed (other codes, timeouts).
    Failed(String),
}

/// Operator commands on resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceCmd {
    /// target-role started.
    Start(String),
    /// target-role stopped.
    Stop(String),
    /// Manage again.
    Manage(String),
    /// Unmanage: watch only.
    Unmanage(String),
    /// Forget failures, blocks and failure stops (one resource or all), probe again.
    Cleanup(Option<String>),
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed.
    Tick,
    /// Where the service runs.
    Context(Context),
    /// A start or stop ended.
    OpDone {
        /// Resource.
        resource: String,
        /// Which.
        op: RscOp,
        /// Success.
        ok: bool,
        /// Why not.
        message: String,
    },
    /// A monitor (or probe) ended.
    MonitorDone {
        /// Resource.
        resource: String,
        /// What it found.
        result: MonitorResult,
    },
}

/// Outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a resource; answer with [`Input::OpDone`].
    Start(String),
    /// Stop a resource; answer with [`Input::OpDone`].
    Stop(String),
    /// Monitor a resource; answer with [`Input::MonitorDone`].
    Monitor(String),
    /// on-fail=standby: put this head in standby.
    Standby(String),
    /// on-fail=fence: this head must leave at once (the peer fences it).
    SelfFence(String),
    /// Something worth a log line and a status entry.
    Event(String),
}

/// A resource's phase here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not known yet (probe pending).
    Unknown,
    /// Not running.
    Stopped,
    /// Start in flight.
    Starting,
    /// Running.
    Running,
    /// Stop in flight.
    Stopping,
    /// Failed while running here: must be stopped (recovery).
    Failed,
}

impl Phase {
    /// Status spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Unknown => "unknown",
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }

    fn active(&self) -> bool {
        matches!(
            self,
            Phase::Starting | Phase::Running | Phase::Stopping | Phase::Failed
        )
    }
}

#[derive(Debug, Clone)]
struct RscState {
    phase: Phase,
    failures_ms: Vec<u64>,
    blocked: Option<String>,
    stopped_by_failure: bool,
    role: Option<TargetRole>,
    managed: Option<bool>,
    next_monitor_ms: Option<u64>,
    monitor_in_flight: bool,
    last_error: Option<String>,
}

/// One resource in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    /// Name.
    pub name: String,
    /// Placement.
    pub placement: Placement,
    /// Phase here.
    pub phase: Phase,
    /// Effective target role.
    pub target_role: TargetRole,
    /// Effective managed flag (false in maintenance mode too).
    pub managed: bool,
    /// Should run here now.
    pub wanted_here: bool,
    /// Failures here within the failure timeout.
    pub failcount: u32,
    /// Banned from this head (location -INFINITY or migration threshold reached).
    pub banned_here: bool,
    /// Blocked: why.
    pub blocked: Option<String>,
    /// Stopped after a failure (on-fail=stop) until cleanup.
    pub stopped_by_failure: bool,
    /// Newest failure.
    pub last_error: Option<String>,
    /// on-fail.
    pub on_fail: OnFail,
    /// The policy cannot stop it (unmanaged, blocked, or a resource ordered after it
    /// is).
    pub stuck: bool,
}

/// The resource policy of one head.
#[derive(Debug)]
pub struct Policy {
    defs: Vec<ResourceDef>,
    deps: Vec<Vec<usize>>,
    st: Vec<RscState>,
    ctx: Context,
    now_ms: u64,
    in_flight: Option<usize>,
    actions: VecDeque<Action>,
}

impl Policy {
    /// A policy over definitions (validated and put in start order).
    pub fn new(defs: &[ResourceDef]) -> Result<Self, PolicyError> {
        let defs = validate(defs)?;
        let deps = defs
            .iter()
            .map(|d| {
                d.after
                    .iter()
                    .filter_map(|a| defs.iter().position(|o| &o.name == a))
                    .collect()
            })
            .collect();
        let st = defs
            .iter()
            .map(|_| RscState {
                phase: Phase::Unknown,
                failures_ms: Vec::new(),
                blocked: None,
                stopped_by_failure: false,
                role: None,
                managed: None,
                next_monitor_ms: Some(0),
                monitor_in_flight: false,
                last_error: None,
            })
            .collect();
        Ok(Policy {
            defs,
            deps,
            st,
            ctx: Context::default(),
            now_ms: 0,
            in_flight: None,
            actions: VecDeque::new(),
        })
    }

    /// The definitions in start order.
    pub fn defs(&self) -> &[ResourceDef] {
        &self.defs
    }

    fn index(&self, name: &str) -> Result<usize, PolicyError> {
        self.defs
            .iter()
            .position(|d| d.name == name)
            .ok_or_else(|| PolicyError::UnknownResource(name.into()))
    }

    /// Apply one input at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        match input {
            Input::Tick => {}
            Input::Context(c) => self.ctx = c,
            Input::OpDone {
                resource,
                op,
                ok,
                message,
            } => {
                if let Ok(i) = self.index(&resource) {
                    self.op_done(i, op, ok, message);
                }
            }
            Input::MonitorDone { resource, result } => {
                if let Ok(i) = self.index(&resource) {
                    self.monitor_done(i, result);
                }
            }
        }
        self.step();
    }

    /// An operator command.
    pub fn admin(&mut self, now_ms: u64, cmd: ResourceCmd) -> Result<(), PolicyError> {
        self.now_ms = self.now_ms.max(now_ms);
        match cmd {
            ResourceCmd::Start(n) => {
                let i = self.index(&n)?;
                self.st[i].role = Some(TargetRole::Started);
                self.event(format!("operator: target-role of {n} started"));
            }
            ResourceCmd::Stop(n) => {
                let i = self.index(&n)?;
                self.st[i].role = Some(TargetRole::Stopped);
                self.event(format!("operator: target-role of {n} stopped"));
            }
            ResourceCmd::Manage(n) => {
                let i = self.index(&n)?;
                self.st[i].managed = Some(true);
                // Learn its state again before acting on it.
                self.reprobe(i);
                self.event(format!("operator: manage {n}"));
            }
            ResourceCmd::Unmanage(n) => {
                let i = self.index(&n)?;
                self.st[i].managed = Some(false);
                self.event(format!("operator: unmanage {n} (watched, not touched)"));
            }
            ResourceCmd::Cleanup(n) => {
                let which: Vec<usize> = match &n {
                    Some(n) => vec![self.index(n)?],
                    None => (0..self.defs.len()).collect(),
                };
                for i in which {
                    let s = &mut self.st[i];
                    s.failures_ms.clear();
                    s.blocked = None;
                    s.stopped_by_failure = false;
                    s.last_error = None;
                    if self.in_flight != Some(i) {
                        self.reprobe(i);
                    }
                }
                self.event(format!(
                    "operator: cleanup of {}",
                    n.as_deref().unwrap_or("every resource")
                ));
            }
        }
        self.step();
        Ok(())
    }

    /// Apply an operator override (persisted, or from the peer).
    pub fn set_override(&mut self, o: &Override) -> Result<(), PolicyError> {
        let i = self.index(&o.name)?;
        if o.managed == Some(true) && self.st[i].managed == Some(false) {
            self.reprobe(i);
        }
        self.st[i].role = o.target_role;
        self.st[i].managed = o.managed;
        Ok(())
    }

    /// Replace every override with `set` (the peer's newer set): resources it does not
    /// name lose theirs. Returns the names this head does not know.
    pub fn replace_overrides(&mut self, set: &[Override]) -> Vec<String> {
        let mut unknown = Vec::new();
        for i in 0..self.defs.len() {
            let o = set
                .iter()
                .find(|o| o.name == self.defs[i].name)
                .cloned()
                .unwrap_or(Override {
                    name: self.defs[i].name.clone(),
                    target_role: None,
                    managed: None,
                });
            let _ = self.set_override(&o);
        }
        for o in set {
            if self.index(&o.name).is_err() {
                unknown.push(o.name.clone());
            }
        }
        self.step();
        unknown
    }

    /// Operator overrides, to persist (and to share with the peer).
    pub fn overrides(&self) -> Vec<Override> {
        self.defs
            .iter()
            .zip(&self.st)
            .filter(|(_, s)| s.role.is_some() || s.managed.is_some())
            .map(|(d, s)| Override {
                name: d.name.clone(),
                target_role: s.role,
                managed: s.managed,
            })
            .collect()
    }

    fn reprobe(&mut self, i: usize) {
        let s = &mut self.st[i];
        if !matches!(s.phase, Phase::Starting | Phase::Stopping) {
            s.phase = Phase::Unknown;
            s.next_monitor_ms = Some(self.now_ms);
        }
    }

    fn role(&self, i: usize) -> TargetRole {
        self.st[i].role.unwrap_or(self.defs[i].target_role)
    }

    fn managed(&self, i: usize) -> bool {
        !self.ctx.maintenance && self.st[i].managed.unwrap_or(self.defs[i].managed)
    }

    fn failed_here(&self, i: usize) -> bool {
        let t = self.defs[i].migration_threshold;
        t > 0 && self.st[i].failures_ms.len() as u32 >= t
    }

    fn banned_here(&self, i: usize) -> bool {
        self.defs[i].score_here == Score::MINUS_INFINITY || self.failed_here(i)
    }

    /// Whether each resource should run here now, in start order.
    fn wanted(&self) -> Vec<bool> {
        let mut w = vec![false; self.defs.len()];
        for i in 0..self.defs.len() {
            let d = &self.defs[i];
            let s = &self.st[i];
            let placed = match d.placement {
                Placement::WithService => self.ctx.service_here,
                Placement::AwayFromService => {
                    self.ctx.online && !self.ctx.service_here && self.ctx.service_on_peer
                }
                Placement::Clone => self.ctx.online,
            };
            let deps_ok = self.deps[i].iter().all(|&j| {
                if self.managed(j) {
                    w[j]
                } else {
                    self.st[j].phase == Phase::Running
                }
            });
            w[i] = placed
                && deps_ok
                && self.role(i) == TargetRole::Started
                && s.blocked.is_none()
                && !s.stopped_by_failure
                && !self.banned_here(i);
        }
        w
    }

    /// The service may run here as far as its required resources go: none is banned
    /// here. `Err` names the first that is.
    pub fn service_allowed_here(&self) -> Result<(), String> {
        for (i, d) in self.defs.iter().enumerate() {
            if d.placement != Placement::WithService
                || !d.required
                || self.role(i) != TargetRole::Started
                || !self.managed(i)
            {
                continue;
            }
            if d.score_here == Score::MINUS_INFINITY {
                return Err(format!("resource {} is banned from this head", d.name));
            }
            if self.failed_here(i) {
                return Err(format!(
                    "resource {} failed {} times here (migration threshold)",
                    d.name,
                    self.st[i].failures_ms.len()
                ));
            }
        }
        Ok(())
    }

    /// No `with-service` resource is running or busy here (unmanaged and blocked ones
    /// aside): the service's own stop sequence may go on.
    pub fn with_service_quiet(&self) -> bool {
        self.in_flight
            .is_none_or(|i| self.defs[i].placement != Placement::WithService)
            && (0..self.defs.len()).all(|i| {
                self.defs[i].placement != Placement::WithService
                    || !self.st[i].phase.active()
                    || self.stuck(i)
            })
    }

    /// The policy cannot stop this resource: it is unmanaged or blocked, or something
    /// ordered after it that may still run is stuck.
    pub fn stuck(&self, i: usize) -> bool {
        !self.managed(i)
            || self.st[i].blocked.is_some()
            || (0..self.defs.len())
                .any(|k| self.deps[k].contains(&i) && self.st[k].phase.active() && self.stuck(k))
    }

    /// Nothing runs or is busy here (blocked and unmanaged resources aside): a
    /// leaving head may go.
    pub fn quiet(&self) -> bool {
        self.in_flight.is_none()
            && (0..self.defs.len()).all(|i| !self.st[i].phase.active() || self.stuck(i))
    }

    /// Every managed resource's state is known (probes answered).
    pub fn probed(&self) -> bool {
        (0..self.defs.len()).all(|i| self.st[i].phase != Phase::Unknown)
    }

    fn op_done(&mut self, i: usize, op: RscOp, ok: bool, message: String) {
        if self.in_flight == Some(i) {
            self.in_flight = None;
        }
        let name = self.defs[i].name.clone();
        match (op, self.st[i].phase) {
            (RscOp::Start, Phase::Starting) => {
                if ok {
                    self.st[i].phase = Phase::Running;
                    self.st[i].next_monitor_ms = self.monitor_after(i);
                    self.event(format!("resource {name} started"));
                } else {
                    // A failed start bans the resource from this head.
                    let t = self.defs[i].migration_threshold.max(1) as usize;
                    let s = &mut self.st[i];
                    while s.failures_ms.len() < t {
                        s.failures_ms.push(self.now_ms);
                    }
                    s.phase = Phase::Failed;
                    s.last_error = Some(format!("start: {message}"));
                    self.event(format!(
                        "resource {name}: start FAILED: {message}; banned from this head until cleanup"
                    ));
                    self.escalate(i, &message);
                }
            }
            (RscOp::Stop, Phase::Stopping) => {
                if ok {
                    self.st[i].phase = Phase::Stopped;
                    self.st[i].next_monitor_ms = None;
                    self.event(format!("resource {name} stopped"));
                } else {
                    self.st[i].phase = Phase::Failed;
                    self.st[i].blocked = Some(format!("stop failed: {message}"));
                    self.st[i].last_error = Some(format!("stop: {message}"));
                    self.event(format!(
                        "resource {name}: stop FAILED: {message}; blocked (state unknown) until cleanup"
                    ));
                }
            }
            (op, phase) => self.event(format!(
                "resource {name}: ignored a late {op:?} result in phase {}",
                phase.as_str()
            )),
        }
    }

    fn monitor_done(&mut self, i: usize, result: MonitorResult) {
        self.st[i].monitor_in_flight = false;
        let name = self.defs[i].name.clone();
        let phase = self.st[i].phase;
        if !self.managed(i) || phase == Phase::Unknown {
            // A probe, or watching an unmanaged resource: record what is there.
            let (p, err) = match &result {
                MonitorResult::Running => (Phase::Running, None),
                MonitorResult::NotRunning => (Phase::Stopped, None),
                MonitorResult::Failed(m) => (Phase::Failed, Some(m.clone())),
            };
            if phase == Phase::Unknown {
                self.event(format!("resource {name}: probe: {}", p.as_str()));
            } else if p != phase {
                self.event(format!("resource {name} (unmanaged) is now {}", p.as_str()));
            }
            if !matches!(phase, Phase::Starting | Phase::Stopping) {
                self.st[i].phase = p;
            }
            if let Some(e) = err {
                self.st[i].last_error = Some(format!("monitor: {e}"));
            }
            self.st[i].next_monitor_ms = self.monitor_after(i);
            return;
        }
        if phase != Phase::Running || self.st[i].blocked.is_some() {
            return;
        }
        self.st[i].next_monitor_ms = self.monitor_after(i);
        let what = match result {
            MonitorResult::Running => return,
            MonitorResult::NotRunning => "not running".to_string(),
            MonitorResult::Failed(m) => m,
        };
        self.failure(i, what);
    }

    fn failure(&mut self, i: usize, what: String) {
        self.st[i].failures_ms.push(self.now_ms);
        self.expire(i);
        let d = &self.defs[i];
        let n = self.st[i].failures_ms.len();
        let name = d.name.clone();
        let on_fail = d.on_fail;
        let threshold = if d.migration_threshold > 0 {
            format!(" of {}", d.migration_threshold)
        } else {
            String::new()
        };
        self.st[i].last_error = Some(format!("monitor: {what}"));
        self.event(format!(
            "resource {name}: monitor FAILED: {what} (failcount {n}{threshold}, on-fail {})",
            on_fail.as_str()
        ));
        match on_fail {
            OnFail::Ignore => {}
            OnFail::Block => self.st[i].blocked = Some(format!("monitor failed: {what}")),
            OnFail::Restart => self.st[i].phase = Phase::Failed,
            OnFail::Stop => {
                self.st[i].phase = Phase::Failed;
                self.st[i].stopped_by_failure = true;
            }
            OnFail::Standby | OnFail::Fence => {
                self.st[i].phase = Phase::Failed;
                self.escalate(i, &what);
            }
        }
    }

    fn escalate(&mut self, i: usize, what: &str) {
        let name = &self.defs[i].name;
        match self.defs[i].on_fail {
            OnFail::Standby => self.actions.push_back(Action::Standby(format!(
                "resource {name} failed ({what}); on-fail=standby"
            ))),
            OnFail::Fence => self.actions.push_back(Action::SelfFence(format!(
                "resource {name} failed ({what}); on-fail=fence"
            ))),
            OnFail::Block => {
                self.st[i].blocked = Some(format!("failed: {what}"));
            }
            _ => {}
        }
    }

    fn expire(&mut self, i: usize) {
        let t = self.defs[i].failure_timeout_ms;
        if t > 0 {
            let keep_after = self.now_ms.saturating_sub(t);
            let before = self.st[i].failures_ms.len();
            self.st[i].failures_ms.retain(|&f| f > keep_after);
            if self.st[i].failures_ms.len() < before {
                let name = self.defs[i].name.clone();
                self.event(format!(
                    "resource {name}: failures older than {t} ms forgotten"
                ));
            }
        }
    }

    fn monitor_after(&self, i: usize) -> Option<u64> {
        let iv = self.defs[i].monitor_interval_ms;
        (iv > 0).then(|| self.now_ms + iv)
    }

    fn step(&mut self) {
        for i in 0..self.defs.len() {
            self.expire(i);
        }
        // Monitors and probes, alongside operations.
        for i in 0..self.defs.len() {
            let s = &self.st[i];
            let watch = s.phase == Phase::Unknown
                || (!self.managed(i) && !matches!(s.phase, Phase::Starting | Phase::Stopping))
                || (s.phase == Phase::Running && s.blocked.is_none());
            if !watch || s.monitor_in_flight || self.in_flight == Some(i) {
                continue;
            }
            if let Some(at) = s.next_monitor_ms {
                if self.now_ms >= at {
                    self.st[i].monitor_in_flight = true;
                    self.st[i].next_monitor_ms = None;
                    self.actions
                        .push_back(Action::Monitor(self.defs[i].name.clone()));
                }
            } else if s.phase == Phase::Running && self.managed(i) {
                self.st[i].next_monitor_ms = self.monitor_after(i);
            }
        }
        if self.in_flight.is_some() || !self.probed() {
            return;
        }
        let wanted = self.wanted();
        let operable = |p: &Policy, i: usize| p.managed(i) && p.st[i].blocked.is_none();
        // Stops first, last in order first.
        for i in (0..self.defs.len()).rev() {
            if !operable(self, i) {
                continue;
            }
            let p = self.st[i].phase;
            let dep_down = self.deps[i]
                .iter()
                .any(|&j| self.managed(j) && self.st[j].phase != Phase::Running);
            let must_stop = matches!(p, Phase::Running | Phase::Failed)
                && (!wanted[i] || p == Phase::Failed || dep_down);
            if !must_stop {
                continue;
            }
            // Everything ordered after it stops first — also what the policy may not
            // stop (blocked or unmanaged, and maybe running): then it stays.
            let dependents_up = (0..self.defs.len())
                .any(|k| self.deps[k].contains(&i) && self.st[k].phase.active());
            if dependents_up {
                continue;
            }
            self.st[i].phase = Phase::Stopping;
            self.in_flight = Some(i);
            let name = self.defs[i].name.clone();
            self.event(format!("stopping resource {name}"));
            self.actions.push_back(Action::Stop(name));
            return;
        }
        // Then starts, in order.
        for (i, &want) in wanted.iter().enumerate() {
            if !operable(self, i) || !want || self.st[i].phase != Phase::Stopped {
                continue;
            }
            if self.deps[i]
                .iter()
                .any(|&j| self.st[j].phase != Phase::Running)
            {
                continue;
            }
            self.st[i].phase = Phase::Starting;
            self.in_flight = Some(i);
            let name = self.defs[i].name.clone();
            self.event(format!("starting resource {name}"));
            self.actions.push_back(Action::Start(name));
            return;
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
        let mut t: Option<u64> = None;
        for (d, s) in self.defs.iter().zip(&self.st) {
            let mut consider = |x: u64| t = Some(t.map_or(x, |t: u64| t.min(x)));
            if let Some(m) = s.next_monitor_ms {
                if !s.monitor_in_flight {
                    consider(m);
                }
            }
            if d.failure_timeout_ms > 0 {
                if let Some(&f) = s.failures_ms.first() {
                    consider(f + d.failure_timeout_ms + 1);
                }
            }
        }
        t
    }

    /// Every resource, in start order.
    pub fn status(&self) -> Vec<ResourceStatus> {
        let wanted = self.wanted();
        (0..self.defs.len())
            .map(|i| {
                let d = &self.defs[i];
                let s = &self.st[i];
                ResourceStatus {
                    name: d.name.clone(),
                    placement: d.placement,
                    phase: s.phase,
                    target_role: self.role(i),
                    managed: self.managed(i),
                    wanted_here: wanted[i],
                    failcount: s.failures_ms.len() as u32,
                    banned_here: self.banned_here(i),
                    blocked: s.blocked.clone(),
                    stopped_by_failure: s.stopped_by_failure,
                    last_error: s.last_error.clone(),
                    on_fail: d.on_fail,
                    stuck: self.stuck(i),
                }
            })
            .collect()
    }
}

/// The service's location scores (here, peer) with the required `with-service`
/// resources' scores added to the configured ones.
pub fn service_scores(defs: &[ResourceDef], here: Score, peer: Score) -> (Score, Score) {
    defs.iter()
        .filter(|d| d.placement == Placement::WithService && d.required)
        .fold((here, peer), |(h, p), d| {
            (h.plus(d.score_here), p.plus(d.score_peer))
        })
}

#[cfg(test)]
mod tests;
