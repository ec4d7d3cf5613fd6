//! A deterministic world for the HA core: two `HaNode`s and an optional `Witness`
//! joined by simulated UDP paths (delay, loss, corruption, cuts, replay injection), a
//! virtual clock, crashes with restarts (a new boot each time), a minimal "manager"
//! that marks the node holding the resources active, and the invariants that must hold
//! after every step. Used by the scenario tests and the seeded simulation.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use twinsan_ha::membership::MembershipConfig;
use twinsan_ha::quorum::{QuorumConfig, Reason, WitnessClientConfig};
use twinsan_ha::witness::{self, Witness, WitnessConfig};
use twinsan_ha::{Action, Event, HaConfig, HaNode, Input};
use twinsan_sim::Rng;

pub const CLUSTER: [u8; 16] = *b"twinsan-sim-clus";
pub const SECRET: &[u8] = b"simulated cluster secret";
pub const NODE_IDS: [u8; 2] = [1, 2];
/// Longest one-way delay of any path.
pub const DELAY_MAX_MS: u64 = 5;
const RECORDED_MAX: usize = 512;

/// One direction of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    pub up: bool,
    pub loss_pct: u64,
    pub corrupt_pct: u64,
}

impl Path {
    pub const GOOD: Path = Path {
        up: true,
        loss_pct: 0,
        corrupt_pct: 0,
    };
    pub const CUT: Path = Path {
        up: false,
        loss_pct: 0,
        corrupt_pct: 0,
    };

    fn healthy(&self) -> bool {
        *self == Path::GOOD
    }
}

/// The world's configuration.
#[derive(Debug, Clone)]
pub struct SimCfg {
    pub seed: u64,
    pub links: u8,
    pub witness: bool,
    pub interval_ms: u64,
    pub dead_time_ms: [u64; 2],
    pub wait_for_all: bool,
}

impl SimCfg {
    pub fn new(seed: u64) -> Self {
        SimCfg {
            seed,
            links: 2,
            witness: true,
            interval_ms: 100,
            dead_time_ms: [600, 600],
            wait_for_all: true,
        }
    }

    pub fn dead_max_ms(&self) -> u64 {
        self.dead_time_ms[0].max(self.dead_time_ms[1])
    }
}

#[derive(Debug, Clone, Copy)]
enum Dest {
    Node { idx: usize, link: u8 },
    NodeFromWitness { idx: usize },
    Witness,
}

#[derive(Debug, Clone)]
struct Packet {
    dest: Dest,
    bytes: Vec<u8>,
}

/// A datagram as an eavesdropper saw it.
#[derive(Debug, Clone)]
struct Recorded {
    packet: Packet,
    /// It reached its destination (was not lost or cut).
    delivered: bool,
}

pub struct Slot {
    pub node: Option<HaNode>,
    pub boot: u64,
    pub started_ms: Option<u64>,
    pub crashed_ms: Option<u64>,
    /// This incarnation has reported PeerUp.
    pub peer_up_seen: bool,
    pub active: bool,
    pub events: Vec<(u64, Event)>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub delivered: u64,
    pub lost: u64,
    pub corrupted: u64,
    pub replayed: u64,
    pub peer_downs: u64,
    pub witness_grants: u64,
}

pub struct World {
    pub cfg: SimCfg,
    pub now: u64,
    pub rng: Rng,
    pub nodes: [Slot; 2],
    pub witness: Option<Witness>,
    pub witness_boot: u64,
    pub witness_started_ms: Option<u64>,
    /// `links[link][from]`.
    links: Vec<[Path; 2]>,
    /// Since when each link has been healthy both ways.
    link_ok_since: Vec<Option<u64>>,
    /// Since when every link has been cut both ways.
    all_cut_since: Option<u64>,
    /// Node → witness and witness → node, per node.
    to_witness: [Path; 2],
    from_witness: [Path; 2],
    flight: BTreeMap<(u64, u64), Packet>,
    flight_seq: u64,
    recorded: VecDeque<Recorded>,
    /// An attacker relays (delays) datagrams, including ones a cut dropped: it acts as
    /// an extra network path, so "cut" no longer means "cannot see each other", and
    /// the invariants that assume it are off.
    pub relaying: bool,
    pub violations: Vec<String>,
    pub stats: Stats,
    trace: bool,
}

impl World {
    pub fn new(cfg: SimCfg) -> Self {
        let links = cfg.links as usize;
        World {
            rng: Rng::new(cfg.seed),
            cfg,
            now: 0,
            nodes: [0, 1].map(|_| Slot {
                node: None,
                boot: 0,
                started_ms: None,
                crashed_ms: None,
                peer_up_seen: false,
                active: false,
                events: Vec::new(),
            }),
            witness: None,
            witness_boot: 0,
            witness_started_ms: None,
            links: vec![[Path::GOOD; 2]; links],
            link_ok_since: vec![Some(0); links],
            all_cut_since: None,
            to_witness: [Path::GOOD; 2],
            from_witness: [Path::GOOD; 2],
            flight: BTreeMap::new(),
            flight_seq: 0,
            recorded: VecDeque::new(),
            relaying: false,
            violations: Vec::new(),
            stats: Stats::default(),
            trace: std::env::var_os("TWINSAN_HA_SIM_TRACE").is_some(),
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>6} {}", self.now, what());
        }
    }

    fn violation(&mut self, what: String) {
        self.log(|| format!("VIOLATION {what}"));
        if self.violations.len() < 20 {
            self.violations.push(format!("t={} {what}", self.now));
        }
    }

    // ---- configuration of the world -------------------------------------------------

    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].node.is_none());
        let s = &mut self.nodes[i];
        s.boot += 1;
        let mut m = MembershipConfig::new(CLUSTER, NODE_IDS[i], NODE_IDS[1 - i], s.boot);
        m.links = self.cfg.links;
        m.interval_ms = self.cfg.interval_ms;
        m.dead_time_ms = self.cfg.dead_time_ms[i];
        let q = QuorumConfig {
            wait_for_all: self.cfg.wait_for_all,
            witness: self.cfg.witness.then(WitnessClientConfig::default),
            ..QuorumConfig::default()
        };
        let node = HaNode::new(
            HaConfig {
                membership: m,
                quorum: q,
            },
            SECRET,
        )
        .expect("valid config");
        s.node = Some(node);
        s.started_ms = Some(self.now);
        s.crashed_ms = None;
        s.peer_up_seen = false;
        s.active = false;
        let boot = s.boot;
        self.log(|| format!("node {i} starts (boot {boot})"));
        self.tick_node(i);
    }

    pub fn crash_node(&mut self, i: usize) {
        if self.nodes[i].node.take().is_some() {
            self.nodes[i].crashed_ms = Some(self.now);
            self.nodes[i].started_ms = None;
            self.log(|| format!("node {i} crashes"));
        }
    }

    pub fn start_witness(&mut self) {
        assert!(self.witness.is_none());
        self.witness_boot += 1;
        let w = Witness::new(
            WitnessConfig::new(CLUSTER, NODE_IDS, self.witness_boot),
            SECRET,
        )
        .expect("valid witness config");
        self.witness = Some(w);
        self.witness_started_ms = Some(self.now);
        let now = self.now;
        if let Some(w) = self.witness.as_mut() {
            w.handle(now, witness::Input::Tick);
        }
        self.log(|| "witness starts".into());
    }

    pub fn crash_witness(&mut self) {
        if self.witness.take().is_some() {
            self.witness_started_ms = None;
            self.log(|| "witness crashes".into());
        }
    }

    pub fn set_link(&mut self, link: usize, from: usize, p: Path) {
        self.links[link][from] = p;
        self.after_path_change();
    }

    pub fn set_all_links(&mut self, p: Path) {
        for l in &mut self.links {
            *l = [p; 2];
        }
        self.after_path_change();
    }

    pub fn set_witness_paths(&mut self, node: usize, p: Path) {
        self.to_witness[node] = p;
        self.from_witness[node] = p;
    }

    pub fn witness_paths_good(&self) -> bool {
        self.to_witness
            .iter()
            .chain(&self.from_witness)
            .all(Path::healthy)
    }

    pub fn links_cut_both_ways(&self) -> bool {
        self.links.iter().all(|l| !l[0].up && !l[1].up)
    }

    fn after_path_change(&mut self) {
        let now = self.now;
        for (l, since) in self.links.iter().zip(&mut self.link_ok_since) {
            let ok = l[0].healthy() && l[1].healthy();
            *since = match (ok, *since) {
                (true, Some(s)) => Some(s),
                (true, None) => Some(now),
                (false, _) => None,
            };
        }
        let all_cut = self.links_cut_both_ways();
        self.all_cut_since = match (all_cut, self.all_cut_since) {
            (true, Some(s)) => Some(s),
            (true, None) => Some(now),
            (false, _) => None,
        };
        let desc = format!("{:?}", self.links);
        self.log(|| format!("links {desc}"));
    }

    /// An attacker re-sends `n` copies of datagrams it saw delivered (any age, any
    /// destination), regardless of cuts: pure replays, which must change nothing.
    pub fn inject_replays(&mut self, n: usize) {
        self.inject(n, false);
    }

    /// An attacker delivers `n` recorded datagrams, also ones a cut or loss dropped,
    /// 0–50 ms from now: a delaying relay (sets [`World::relaying`]).
    pub fn inject_relayed(&mut self, n: usize) {
        self.relaying = true;
        self.inject(n, true);
    }

    fn inject(&mut self, n: usize, undelivered_too: bool) {
        for _ in 0..n {
            if self.recorded.is_empty() {
                return;
            }
            let i = self.rng.range(0, self.recorded.len() as u64) as usize;
            let r = &self.recorded[i];
            if !r.delivered && !undelivered_too {
                continue;
            }
            let p = r.packet.clone();
            let at = self.now + self.rng.range(0, 50);
            self.schedule(at, p);
            self.stats.replayed += 1;
        }
    }

    // ---- queries ---------------------------------------------------------------------

    pub fn running(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    pub fn has_quorum(&self, i: usize) -> bool {
        self.nodes[i]
            .node
            .as_ref()
            .is_some_and(|n| n.quorum_state().has_quorum)
    }

    pub fn reason(&self, i: usize) -> Option<Reason> {
        self.nodes[i].node.as_ref().map(|n| n.quorum_state().reason)
    }

    pub fn peer_alive(&self, i: usize) -> bool {
        self.nodes[i].node.as_ref().is_some_and(HaNode::peer_alive)
    }

    pub fn mutual(&self) -> bool {
        (0..2).all(|i| self.reason(i) == Some(Reason::PeerVisible))
    }

    pub fn witness_ready_since(&self) -> Option<u64> {
        let lease = witness::DEFAULT_LEASE_MS + witness::DEFAULT_GRACE_MS;
        self.witness_started_ms.map(|s| s + lease)
    }

    // ---- the engine --------------------------------------------------------------------

    fn schedule(&mut self, at: u64, p: Packet) {
        self.flight_seq += 1;
        self.flight.insert((at, self.flight_seq), p);
    }

    fn transmit(&mut self, path: Path, dest: Dest, mut bytes: Vec<u8>) {
        if self.recorded.len() >= RECORDED_MAX {
            self.recorded.pop_front();
        }
        let delivered = path.up && !self.rng.chance(path.loss_pct);
        self.recorded.push_back(Recorded {
            packet: Packet {
                dest,
                bytes: bytes.clone(),
            },
            delivered,
        });
        if !delivered {
            self.stats.lost += 1;
            return;
        }
        if self.rng.chance(path.corrupt_pct) && !bytes.is_empty() {
            let bit = self.rng.range(0, bytes.len() as u64 * 8);
            bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
            self.stats.corrupted += 1;
        }
        let at = self.now + self.rng.range(1, DELAY_MAX_MS + 1);
        self.schedule(at, Packet { dest, bytes });
    }

    fn drain_node(&mut self, i: usize) {
        loop {
            let Some(a) = self.nodes[i].node.as_mut().and_then(HaNode::poll_action) else {
                return;
            };
            match a {
                Action::Send { link, bytes } => {
                    let path = self.links[link as usize][i];
                    self.transmit(path, Dest::Node { idx: 1 - i, link }, bytes);
                }
                Action::SendWitness { bytes } => {
                    let path = self.to_witness[i];
                    self.transmit(path, Dest::Witness, bytes);
                }
                Action::Event(e) => self.on_event(i, e),
            }
        }
    }

    fn on_event(&mut self, i: usize, e: Event) {
        let now = self.now;
        self.log(|| format!("node {i}: {e:?}"));
        match &e {
            Event::PeerUp => {
                self.nodes[i].peer_up_seen = true;
                // Proof of life must come from a running peer (or one that crashed
                // no longer ago than a datagram can be in flight).
                let p = &self.nodes[1 - i];
                let recent = p.crashed_ms.is_some_and(|c| c + DELAY_MAX_MS >= now);
                if p.node.is_none() && !recent && !self.relaying {
                    self.violation(format!("node {i}: PeerUp while the peer is down"));
                }
            }
            Event::PeerDown => {
                self.stats.peer_downs += 1;
                self.check_peer_down(i);
            }
            _ => {}
        }
        self.nodes[i].events.push((now, e));
    }

    /// A single failed link never causes PeerDown while another link works.
    fn check_peer_down(&mut self, i: usize) {
        let (Some(a), Some(b)) = (self.nodes[0].started_ms, self.nodes[1].started_ms) else {
            return;
        };
        let settle = self.cfg.dead_max_ms() + 3 * self.cfg.interval_ms;
        for (l, since) in self.link_ok_since.clone().into_iter().enumerate() {
            if let Some(s) = since {
                if s.max(a).max(b) + settle <= self.now {
                    self.violation(format!(
                        "node {i}: PeerDown although link {l} has worked both ways since {}",
                        s.max(a).max(b)
                    ));
                }
            }
        }
    }

    fn drain_witness(&mut self) {
        loop {
            let Some(a) = self.witness.as_mut().and_then(Witness::poll_action) else {
                return;
            };
            match a {
                witness::Action::Reply { to, bytes } => {
                    let idx = NODE_IDS.iter().position(|&n| n == to).expect("known node");
                    let path = self.from_witness[idx];
                    self.transmit(path, Dest::NodeFromWitness { idx }, bytes);
                }
                witness::Action::Event(e) => {
                    if matches!(e, witness::Event::Granted { .. }) {
                        self.stats.witness_grants += 1;
                    }
                    self.log(|| format!("witness: {e:?}"));
                }
            }
        }
    }

    fn tick_node(&mut self, i: usize) {
        let now = self.now;
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.handle(now, Input::Tick);
        }
        self.drain_node(i);
    }

    fn deliver(&mut self, p: Packet) {
        let now = self.now;
        match p.dest {
            Dest::Node { idx, link } => {
                if let Some(n) = self.nodes[idx].node.as_mut() {
                    self.stats.delivered += 1;
                    n.handle(
                        now,
                        Input::Datagram {
                            link,
                            bytes: p.bytes,
                        },
                    );
                    self.drain_node(idx);
                }
            }
            Dest::NodeFromWitness { idx } => {
                if let Some(n) = self.nodes[idx].node.as_mut() {
                    self.stats.delivered += 1;
                    n.handle(now, Input::WitnessDatagram { bytes: p.bytes });
                    self.drain_node(idx);
                }
            }
            Dest::Witness => {
                if let Some(w) = self.witness.as_mut() {
                    self.stats.delivered += 1;
                    w.handle(now, witness::Input::Datagram { bytes: p.bytes });
                    self.drain_witness();
                }
            }
        }
    }

    fn next_event_ms(&self) -> u64 {
        let mut t = self.flight.keys().next().map_or(u64::MAX, |k| k.0);
        for s in &self.nodes {
            if let Some(n) = &s.node {
                t = t.min(n.next_timeout_ms());
            }
        }
        if let Some(w) = self.witness.as_ref().and_then(Witness::next_timeout_ms) {
            t = t.min(w);
        }
        t.max(self.now)
    }

    /// Process everything due at the next event time, if it is at most `end`; else move
    /// the clock to `end`. Checks the invariants after the step. Returns whether an
    /// event was processed.
    pub fn step(&mut self, end: u64) -> bool {
        let t = self.next_event_ms();
        if t > end {
            self.now = end;
            return false;
        }
        self.now = t;
        while let Some(entry) = self.flight.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let p = entry.remove();
            self.deliver(p);
        }
        for i in 0..2 {
            if self.nodes[i]
                .node
                .as_ref()
                .is_some_and(|n| n.next_timeout_ms() <= t)
            {
                self.tick_node(i);
            }
        }
        if let Some(w) = self.witness.as_mut() {
            if w.next_timeout_ms().is_some_and(|x| x <= t) {
                w.handle(t, witness::Input::Tick);
                self.drain_witness();
            }
        }
        self.manage();
        self.check();
        true
    }

    pub fn run_until(&mut self, end: u64) {
        while self.step(end) {}
    }

    /// The minimal manager: the node that holds quorum without its peer takes the
    /// resources (becomes active); a node without quorum gives them up (after a
    /// transient reason has resolved).
    fn manage(&mut self) {
        for i in 0..2 {
            let Some(n) = self.nodes[i].node.as_ref() else {
                continue;
            };
            let s = n.quorum_state();
            // Both visible: nothing moves. Transient reasons: freeze (keep). Otherwise
            // quorum decides (take over, or stop per no-quorum-policy).
            let active = if s.reason == Reason::PeerVisible || s.reason.is_transient() {
                self.nodes[i].active
            } else {
                s.has_quorum
            };
            if active != self.nodes[i].active {
                self.nodes[i].active = active;
                let now = self.now;
                if let Some(n) = self.nodes[i].node.as_mut() {
                    n.handle(
                        now,
                        Input::SetLocalView {
                            role_summary: u32::from(active),
                            active,
                        },
                    );
                }
                self.drain_node(i);
            }
        }
    }

    pub fn set_active(&mut self, i: usize, active: bool) {
        self.nodes[i].active = active;
        let now = self.now;
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.handle(
                now,
                Input::SetLocalView {
                    role_summary: u32::from(active),
                    active,
                },
            );
        }
        self.drain_node(i);
    }

    /// Invariants after every step.
    fn check(&mut self) {
        let q = [self.has_quorum(0), self.has_quorum(1)];
        let alive = [self.peer_alive(0), self.peer_alive(1)];
        if self.cfg.witness && q[0] && q[1] && !(alive[0] && alive[1]) {
            let r = [self.reason(0), self.reason(1)];
            self.violation(format!(
                "both nodes have quorum but do not see each other (alive {alive:?}, {r:?})"
            ));
        }
        for (i, sees) in alive.into_iter().enumerate() {
            let Some(n) = self.nodes[i].node.as_ref() else {
                continue;
            };
            let s = n.quorum_state();
            if self.cfg.wait_for_all && !self.nodes[i].peer_up_seen {
                if s.has_quorum {
                    self.violation(format!("node {i} has quorum but never saw its peer"));
                }
                if s.wait_for_all_satisfied {
                    self.violation(format!("node {i}: wait-for-all satisfied without PeerUp"));
                }
            }
            if !self.cfg.witness && self.nodes[i].peer_up_seen && !s.has_quorum {
                self.violation(format!("node {i}: two-node mode lost quorum ({s:?})"));
            }
            if s.has_quorum && !sees && !self.cfg.witness && !s.needs_fencing {
                self.violation(format!("node {i}: quorum without the peer and no fencing"));
            }
        }
        // Every link cut both ways for long enough: nobody may think the peer alive,
        // whatever an attacker replays.
        if let Some(since) = self.all_cut_since.filter(|_| !self.relaying) {
            let settle = self.cfg.dead_max_ms() + self.cfg.interval_ms + 2 * DELAY_MAX_MS;
            if self.now >= since + settle && (alive[0] || alive[1]) {
                self.violation(format!(
                    "peer alive {alive:?} although every link is cut since {since}"
                ));
            }
        }
    }
}
