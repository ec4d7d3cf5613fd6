//! The simulated world: two nodes, the network between them, the workload, the HA
//! controller and the invariant checks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

use bytes::Bytes;
use twinsan_replication::bitmap::Bitmap;
use twinsan_replication::gens::Policies;
use twinsan_replication::msg::Message;
use twinsan_replication::replica::{
    Action, AdminCmd, Event as REvent, Input, Persisted, Replica, ReplicaConfig,
};
use twinsan_replication::types::{AfterSb0Pri, AfterSb1Pri, ConnState, DiskState, Protocol, Role};

use crate::disk::{SimDisk, SECTOR};
use crate::Rng;

const SIZE_BYTES: u64 = 12 << 20;
const SECTORS: u64 = SIZE_BYTES / SECTOR;

/// What a run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// One primary; crashes of either node, partitions, link resets, corrupted
    /// streams; the controller fails over only to a node that was in sync.
    Failover,
    /// Both nodes forced primary during a partition, both write, then heal: split
    /// brain must be detected and handled per policy.
    SplitBrain,
    /// allow-two-primaries, both write overlapping ranges concurrently, link resets.
    DualPrimary,
}

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed (print it to reproduce).
    pub seed: u64,
    /// Scenario.
    pub scenario: Scenario,
    /// Replication protocol.
    pub protocol: Protocol,
    /// Random steps before the final heal-and-check phase.
    pub steps: u32,
    /// Fencing `resource-and-stonith` (writes the peer never confirmed are acknowledged
    /// only once the fence-peer handler says the peer is fenced).
    pub stonith: bool,
    /// A deliberate bug to plant (simulator self-test).
    #[cfg(feature = "bug-injection")]
    pub bug: Option<twinsan_replication::replica::InjectedBug>,
}

impl SimConfig {
    /// A run for `seed`: scenario and protocol are derived from the seed.
    pub fn for_seed(seed: u64) -> Self {
        let mut r = Rng::new(seed.wrapping_mul(31));
        let scenario = match r.range(0, 10) {
            0..=5 => Scenario::Failover,
            6..=7 => Scenario::SplitBrain,
            _ => Scenario::DualPrimary,
        };
        let protocol = match (scenario, r.range(0, 5)) {
            (Scenario::DualPrimary, _) => Protocol::C,
            (_, 0) => Protocol::A,
            (_, 1) => Protocol::B,
            _ => Protocol::C,
        };
        SimConfig {
            seed,
            scenario,
            protocol,
            stonith: scenario == Scenario::Failover && seed % 4 == 1,
            steps: 400,
            #[cfg(feature = "bug-injection")]
            bug: None,
        }
    }
}

/// Result of a run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Invariant violations (empty = pass).
    pub violations: Vec<String>,
    /// Application writes acknowledged.
    pub writes_acked: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Split brains detected (events).
    pub split_brains: u64,
    /// Virtual time at the end (ms).
    pub end_ms: u64,
    /// Disk I/O errors injected.
    pub io_errors: u64,
}

#[derive(Debug)]
enum Ev {
    DiskDone {
        node: usize,
        inc: u64,
        token: u64,
        read: Option<(u64, u32)>,
    },
    Deliver {
        conn: u64,
        to: usize,
        msg: Message,
    },
    LinkDown {
        conn: u64,
        to: usize,
    },
    Tick {
        node: usize,
    },
    TryConnect,
    Restart {
        node: usize,
    },
    /// A node whose disk failed is rebooted (the disk "replaced" by itself).
    Repair {
        node: usize,
        inc: u64,
    },
    /// A handler (fence-peer under resource-and-stonith) finishes.
    HandlerDone {
        node: usize,
        inc: u64,
        handler: twinsan_replication::replica::Handler,
        exit_code: i32,
    },
    /// The HA layer gives up frozen I/O (`DropFrozenIo`) or resumes it (`ResumeIo`).
    FrozenIo {
        node: usize,
        inc: u64,
        drop: bool,
    },
    Heal,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    alive: [bool; 2],
    /// Last scheduled delivery time per direction (index = receiver).
    last_ms: [u64; 2],
}

#[derive(Debug, Clone)]
struct Meta {
    persisted: Persisted,
    al: Vec<u32>,
    bitmap_words: Vec<u64>,
}

#[derive(Debug)]
struct Node {
    replica: Option<Replica>,
    inc: u64,
    disk: SimDisk,
    meta: Meta,
    want_conn: bool,
    /// In-flight disk writes: token → (offset, data).
    inflight: HashMap<u64, (u64, Vec<u8>)>,
    events: Vec<REvent>,
}

#[derive(Debug, Clone)]
struct WriteRec {
    node: usize,
    offset: u64,
    sectors: u64,
    fua: bool,
}

struct World {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: HashMap<usize, Ev>,
    next_ev: usize,
    nodes: [Node; 2],
    conn: Option<Conn>,
    next_conn: u64,
    partitioned: bool,
    held: Vec<(u64, usize, Message)>,
    connect_pending: bool,
    next_app: u64,
    writes: HashMap<u64, WriteRec>,
    inflight_apps: HashMap<u64, usize>,
    acked: Vec<u64>,
    /// Flushes in flight: id → (node, writes acked on that node before it was issued).
    flushes: HashMap<u64, (usize, Vec<u64>)>,
    /// Per sector, the newest write id that must not be rolled back.
    durable_min: BTreeMap<u64, u64>,
    out: Outcome,
    forced_two_primaries: bool,
    /// A split-brain partition was started (the forced promotion follows once the
    /// secondary notices).
    sb_started: bool,
    /// The final heal-and-check phase: no more faults.
    finishing: bool,
    dead_since_inc: [Option<bool>; 2],
    pols: Policies,
}

fn trace_sector() -> Option<u64> {
    std::env::var("TWINSAN_SIM_TRACE_SECTOR")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn touches(offset: u64, len: u64, sector: u64) -> bool {
    let s = sector * SECTOR;
    offset <= s && s < offset + len
}

fn tag(write_id: u64, sector: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&write_id.to_le_bytes());
    t[8..].copy_from_slice(&sector.to_le_bytes());
    t
}

fn write_data(write_id: u64, first_sector: u64, sectors: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((sectors * SECTOR) as usize);
    for s in 0..sectors {
        let t = tag(write_id, first_sector + s);
        for _ in 0..SECTOR / 16 {
            v.extend_from_slice(&t);
        }
    }
    v
}

fn parse_sector(data: &[u8]) -> Option<(u64, u64)> {
    if data.iter().all(|&b| b == 0) {
        return None;
    }
    let id = u64::from_le_bytes(data[..8].try_into().ok()?);
    let s = u64::from_le_bytes(data[8..16].try_into().ok()?);
    Some((id, s))
}

impl World {
    fn new(cfg: SimConfig) -> Self {
        let mut rng = Rng::new(cfg.seed);
        let pols = match cfg.scenario {
            Scenario::SplitBrain => {
                let after_sb_0pri = match rng.range(0, 5) {
                    0 => AfterSb0Pri::Disconnect,
                    1 => AfterSb0Pri::DiscardNode(format!("n{}", rng.range(0, 2))),
                    2 => AfterSb0Pri::DiscardLeastChanges,
                    3 => AfterSb0Pri::DiscardZeroChanges,
                    _ => AfterSb0Pri::DiscardYoungerPrimary,
                };
                Policies {
                    after_sb_0pri,
                    after_sb_1pri: AfterSb1Pri::DiscardSecondary,
                    ..Policies::default()
                }
            }
            Scenario::DualPrimary => Policies {
                allow_two_primaries: true,
                ..Policies::default()
            },
            Scenario::Failover => Policies::default(),
        };
        // Most runs start from two replicas declared identical (new, zeroed disks
        // created "clean"); every fifth starts just created and runs the initial full
        // sync from a forced primary.
        let mut persisted = Persisted::just_created();
        let clean_start = !cfg.seed.is_multiple_of(5);
        if clean_start {
            persisted.gens.current = 0x7000_0000_0000_1000;
            persisted.disk = DiskState::UpToDate;
        }
        let meta = Meta {
            persisted,
            al: Vec::new(),
            bitmap_words: Bitmap::for_size_bytes(SIZE_BYTES).words().to_vec(),
        };
        let mk = || Node {
            replica: None,
            inc: 0,
            disk: SimDisk::default(),
            meta: meta.clone(),
            want_conn: false,
            inflight: HashMap::new(),
            events: Vec::new(),
        };
        let mut w = World {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            evs: HashMap::new(),
            next_ev: 0,
            nodes: [mk(), mk()],
            conn: None,
            next_conn: 1,
            partitioned: false,
            held: Vec::new(),
            connect_pending: false,
            next_app: 1,
            writes: HashMap::new(),
            inflight_apps: HashMap::new(),
            acked: Vec::new(),
            flushes: HashMap::new(),
            durable_min: BTreeMap::new(),
            out: Outcome::default(),
            forced_two_primaries: false,
            sb_started: false,
            finishing: false,
            dead_since_inc: [None, None],
            pols,
        };
        for n in 0..2 {
            w.boot(n);
        }
        w
    }

    fn rcfg(&self, n: usize) -> ReplicaConfig {
        let mut c = ReplicaConfig::new(n as u8, &format!("n{n}"), 1 - n as u8, [7; 16]);
        c.protocol = self.cfg.protocol;
        c.policies = self.pols.clone();
        c.ping_int_ms = 300;
        c.ping_timeout_ms = 200;
        c.timeout_ms = 1500;
        c.ko_count = 4;
        c.al_extents_max = 2;
        c.resync_requests_max = 8;
        c.resync_request_bytes_max = 32 * 1024;
        c.epoch_writes_max = 16;
        c.bitmap_chunk_words = 16;
        c.csums = self.cfg.seed.is_multiple_of(3);
        if self.cfg.stonith {
            c.fencing = twinsan_replication::types::Fencing::ResourceAndStonith;
        }
        if self.cfg.seed.is_multiple_of(7) {
            // Rate-controlled resync: capped, and throttled further under writes.
            c.resync_rate_max_bytes_per_s = 8 << 20;
            c.resync_rate_min_bytes_per_s = 1 << 20;
        }
        #[cfg(feature = "bug-injection")]
        {
            c.injected_bug = self.cfg.bug;
        }
        c
    }

    fn schedule(&mut self, at: u64, ev: Ev) {
        let id = self.next_ev;
        self.next_ev += 1;
        self.seq += 1;
        self.evs.insert(id, ev);
        self.queue.push(Reverse((at, self.seq, id)));
    }

    fn boot(&mut self, n: usize) {
        let cfg = self.rcfg(n);
        let m = self.nodes[n].meta.clone();
        let mut bm = Bitmap::for_size_bytes(SIZE_BYTES);
        bm.merge_words(0, &m.bitmap_words);
        let seed = self.rng.next_u64();
        let r = Replica::new(cfg, SIZE_BYTES, m.persisted, bm, &m.al, seed, self.now);
        let node = &mut self.nodes[n];
        node.replica = Some(r);
        node.inc += 1;
        node.inflight.clear();
        node.want_conn = false;
        self.dead_since_inc[n] = None;
        self.input(
            n,
            Input::Admin {
                id: 0,
                cmd: AdminCmd::Connect {
                    discard_my_data: false,
                },
            },
        );
        let t = self.now + 50;
        self.schedule(t, Ev::Tick { node: n });
    }

    fn alive(&self, n: usize) -> bool {
        self.nodes[n].replica.is_some()
    }

    fn input(&mut self, n: usize, input: Input) {
        let Some(r) = self.nodes[n].replica.as_mut() else {
            return;
        };
        if std::env::var_os("TWINSAN_SIM_TRACE_ALL").is_some() {
            match &input {
                Input::Message { conn, msg } => {
                    eprintln!("t={} n{n} <- c{conn} {}", self.now, msg.kind())
                }
                Input::LinkUp { conn } | Input::LinkDown { conn } => {
                    eprintln!("t={} n{n} {input:?} c{conn}", self.now)
                }
                _ => {}
            }
        }
        r.handle(self.now, input);
        self.drain(n);
    }

    fn drain(&mut self, n: usize) {
        loop {
            let Some(a) = self.nodes[n].replica.as_mut().and_then(|r| r.poll_action()) else {
                break;
            };
            self.act(n, a);
        }
    }

    fn disk_delay(&mut self) -> u64 {
        self.rng.range(1, 8)
    }

    fn net_delay(&mut self) -> u64 {
        if self.rng.chance(5) {
            self.rng.range(20, 120)
        } else {
            self.rng.range(1, 6)
        }
    }

    fn act(&mut self, n: usize, a: Action) {
        let inc = self.nodes[n].inc;
        match a {
            Action::PersistState(p) => self.nodes[n].meta.persisted = p,
            Action::PersistAl {
                extents,
                flush_data_first,
            } => {
                if flush_data_first {
                    self.nodes[n].disk.flush();
                }
                self.nodes[n].meta.al = extents;
            }
            Action::PersistBitmap(pages) => {
                self.nodes[n].disk.flush();
                for (page, words) in pages {
                    let first = page * Bitmap::WORDS_PER_PAGE;
                    let m = &mut self.nodes[n].meta.bitmap_words;
                    for (i, w) in words.iter().enumerate() {
                        if let Some(slot) = m.get_mut(first + i) {
                            *slot = *w;
                        }
                    }
                }
            }
            Action::DiskWrite {
                token,
                offset_bytes,
                data,
                fua,
            } => {
                if let Some(ts) = trace_sector() {
                    if touches(offset_bytes, data.len() as u64, ts) {
                        let i = ((ts * SECTOR - offset_bytes) as usize)
                            ..((ts * SECTOR - offset_bytes + 16) as usize);
                        eprintln!(
                            "t={} n{n}: disk write token {token} fua {fua} sector {ts} <- {:?}",
                            self.now,
                            parse_sector(&data[i])
                        );
                    }
                }
                self.nodes[n]
                    .inflight
                    .insert(token, (offset_bytes, data.to_vec()));
                let _ = fua;
                let t = self.now + self.disk_delay();
                self.schedule(
                    t,
                    Ev::DiskDone {
                        node: n,
                        inc,
                        token,
                        read: None,
                    },
                );
                // Remember FUA through the inflight entry's completion.
                if fua {
                    self.nodes[n]
                        .inflight
                        .insert(token | (1 << 63), (offset_bytes, Vec::new()));
                }
            }
            Action::DiskRead {
                token,
                offset_bytes,
                len_bytes,
            } => {
                let t = self.now + self.disk_delay();
                self.schedule(
                    t,
                    Ev::DiskDone {
                        node: n,
                        inc,
                        token,
                        read: Some((offset_bytes, len_bytes)),
                    },
                );
            }
            Action::DiskFlush { token } => {
                let t = self.now + self.disk_delay();
                self.schedule(
                    t,
                    Ev::DiskDone {
                        node: n,
                        inc,
                        token,
                        read: Some((u64::MAX, 0)),
                    },
                );
            }
            Action::Send { conn, msg } => self.send(n, conn, msg),
            Action::Close { conn } => self.close(n, conn),
            Action::WantConnection(w) => {
                self.nodes[n].want_conn = w;
                self.maybe_connect();
            }
            Action::Complete { id, result } => {
                if let Some(ts) = trace_sector() {
                    if let Some(w) = self.writes.get(&id) {
                        if touches(w.offset, w.sectors * SECTOR, ts) {
                            eprintln!(
                                "t={} n{n}: write {id} complete {result:?} fua {}",
                                self.now, w.fua
                            );
                        }
                    } else {
                        eprintln!("t={} n{n}: flush/other {id} complete {result:?}", self.now);
                    }
                }
                self.completed(n, id, result.is_ok())
            }
            Action::AdminDone { result, .. } => {
                if let (Err(e), true) = (result, std::env::var_os("TWINSAN_SIM_TRACE").is_some()) {
                    eprintln!("t={} n{n}: admin refused: {e}", self.now);
                }
            }
            Action::RunHandler(h) => {
                if self.cfg.stonith && h == twinsan_replication::replica::Handler::FencePeer {
                    // The HA layer answers after a while: mostly "peer fenced" (7),
                    // sometimes "not safe" (1), after which it later drops or resumes
                    // the frozen I/O.
                    let inc = self.nodes[n].inc;
                    let t = self.now + self.rng.range(5, 300);
                    let exit_code = if self.rng.range(0, 4) == 0 { 1 } else { 7 };
                    self.schedule(
                        t,
                        Ev::HandlerDone {
                            node: n,
                            inc,
                            handler: h,
                            exit_code,
                        },
                    );
                    if exit_code == 1 {
                        let t2 = t + self.rng.range(100, 1000);
                        let drop = self.rng.range(0, 2) == 0;
                        self.schedule(t2, Ev::FrozenIo { node: n, inc, drop });
                    }
                    return;
                }
                self.input(
                    n,
                    Input::HandlerDone {
                        handler: h,
                        exit_code: 0,
                    },
                );
            }
            Action::Event(e) => {
                if std::env::var_os("TWINSAN_SIM_TRACE").is_some() {
                    eprintln!("t={} n{n}: {e:?}", self.now);
                }
                if matches!(e, REvent::SplitBrain { .. }) {
                    self.out.split_brains += 1;
                }
                self.nodes[n].events.push(e);
            }
        }
    }

    fn send(&mut self, from: usize, conn: u64, msg: Message) {
        let to = 1 - from;
        if std::env::var_os("TWINSAN_SIM_TRACE_ALL").is_some() {
            eprintln!(
                "t={} n{from} -> c{conn} {} (partitioned {})",
                self.now,
                msg.kind(),
                self.partitioned
            );
        }
        let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) else {
            return;
        };
        if !c.alive[to] {
            return;
        }
        if self.partitioned {
            self.held.push((conn, to, msg));
            return;
        }
        let d = self.net_delay();
        let Some(c) = self.conn.as_mut() else { return };
        let at = (self.now + d).max(c.last_ms[to]);
        c.last_ms[to] = at;
        self.schedule(at, Ev::Deliver { conn, to, msg });
    }

    fn close(&mut self, from: usize, conn: u64) {
        let to = 1 - from;
        let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) else {
            return;
        };
        c.alive[from] = false;
        let notify = c.alive[to] && !self.partitioned;
        let at = c.last_ms[to].max(self.now) + 1;
        let both_gone = !c.alive[0] && !c.alive[1];
        if notify {
            self.schedule(at, Ev::LinkDown { conn, to });
        }
        if both_gone {
            self.conn = None;
            self.maybe_connect();
        }
    }

    fn maybe_connect(&mut self) {
        if self.connect_pending || self.conn.is_some() {
            return;
        }
        if self.alive(0) && self.alive(1) && self.nodes[0].want_conn && self.nodes[1].want_conn {
            self.connect_pending = true;
            let t = self.now + self.rng.range(10, 200);
            self.schedule(t, Ev::TryConnect);
        }
    }

    fn completed(&mut self, n: usize, id: u64, ok: bool) {
        if id == 0 {
            return;
        }
        self.inflight_apps.remove(&id);
        if let Some((_, covered)) = self.flushes.remove(&id) {
            if ok {
                for w in covered {
                    self.make_durable(w);
                }
            }
            return;
        }
        let Some(w) = self.writes.get(&id).cloned() else {
            return;
        };
        if !ok {
            return;
        }
        let role_ok = self.nodes[n]
            .replica
            .as_ref()
            .is_some_and(|r| r.role() == Role::Primary);
        if !role_ok {
            self.violation(format!("node {n} completed write {id} while not Primary"));
        }
        self.out.writes_acked += 1;
        self.acked.push(id);
        if w.fua {
            self.make_durable(id);
        }
    }

    fn make_durable(&mut self, id: u64) {
        let Some(w) = self.writes.get(&id) else {
            return;
        };
        for s in w.offset / SECTOR..w.offset / SECTOR + w.sectors {
            let e = self.durable_min.entry(s).or_insert(0);
            *e = (*e).max(id);
        }
    }

    fn violation(&mut self, v: String) {
        if self.out.violations.len() < 20 {
            self.out.violations.push(format!("t={}ms: {v}", self.now));
        }
    }

    fn crash(&mut self, n: usize) {
        if !self.alive(n) {
            return;
        }
        if trace_sector().is_some() {
            eprintln!("t={} n{n}: CRASH (role {:?})", self.now, self.st(n));
        }
        self.out.crashes += 1;
        let inflight: Vec<(u64, Vec<u8>)> = self.nodes[n]
            .inflight
            .iter()
            .filter(|(t, _)| *t & (1 << 63) == 0)
            .map(|(_, v)| v.clone())
            .collect();
        let mut rng = Rng::new(self.rng.next_u64());
        let before =
            trace_sector().map(|ts| parse_sector(&self.nodes[n].disk.read(ts * SECTOR, SECTOR)));
        self.nodes[n].disk.crash(&mut rng, &inflight);
        if let Some(ts) = trace_sector() {
            eprintln!(
                "t={} n{n}: sector {ts} {:?} -> {:?} over crash",
                self.now,
                before,
                parse_sector(&self.nodes[n].disk.read(ts * SECTOR, SECTOR))
            );
        }
        self.nodes[n].replica = None;
        self.nodes[n].inflight.clear();
        self.nodes[n].want_conn = false;
        // In-flight application requests on this node are lost (never acknowledged).
        self.inflight_apps.retain(|_, node| *node != n);
        // Writes acknowledged before the crash but not yet durable can no longer be
        // made durable by a later flush on this node.
        let writes = &self.writes;
        self.acked
            .retain(|w| writes.get(w).is_some_and(|r| r.node != n));
        self.flushes.retain(|_, (node, _)| *node != n);
        if let Some(c) = self.conn.as_ref() {
            let id = c.id;
            self.close(n, id);
        }
        let t = self.now + self.rng.range(200, 2000);
        self.schedule(t, Ev::Restart { node: n });
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|&n| {
            self.nodes[n]
                .replica
                .as_ref()
                .is_some_and(|r| r.role() == Role::Primary)
        })
    }

    fn st(&self, n: usize) -> Option<(Role, DiskState, ConnState)> {
        self.nodes[n]
            .replica
            .as_ref()
            .map(|r| (r.role(), r.disk(), r.conn()))
    }

    /// The HA controller: promote a node that certainly has every acknowledged write.
    fn controller(&mut self) {
        if self.cfg.scenario == Scenario::SplitBrain && self.sb_started {
            return;
        }
        let want_two = self.cfg.scenario == Scenario::DualPrimary;
        for n in 0..2 {
            let Some((role, disk, conn)) = self.st(n) else {
                continue;
            };
            if role == Role::Primary || disk != DiskState::UpToDate {
                continue;
            }
            let other = 1 - n;
            let other_st = self.st(other);
            let ok = match other_st {
                // Peer connected and in sync: promote if nobody is primary (or both
                // may be).
                Some((orole, DiskState::UpToDate, _)) if conn == ConnState::Connected => {
                    orole != Role::Primary || want_two
                }
                // Peer dead: only if we were in sync with it when it died.
                None => self.dead_since_inc[other] == Some(true),
                _ => false,
            };
            if ok && (self.primary().is_none() || want_two) {
                self.input(
                    n,
                    Input::Admin {
                        id: 0,
                        cmd: AdminCmd::Primary { force: false },
                    },
                );
            }
        }
    }

    fn workload(&mut self) {
        let primaries: Vec<usize> = (0..2)
            .filter(|&n| {
                self.st(n)
                    .is_some_and(|(r, d, _)| r == Role::Primary && d == DiskState::UpToDate)
            })
            .collect();
        for n in primaries {
            let inflight = self.inflight_apps.values().filter(|&&x| x == n).count();
            if inflight >= 6 || !self.rng.chance(60) {
                continue;
            }
            let id = self.next_app;
            self.next_app += 1;
            if self.rng.chance(8) {
                let covered: Vec<u64> = self
                    .acked
                    .iter()
                    .copied()
                    .filter(|w| self.writes.get(w).is_some_and(|r| r.node == n))
                    .collect();
                self.flushes.insert(id, (n, covered));
                self.inflight_apps.insert(id, n);
                self.input(n, Input::Flush { id });
                continue;
            }
            let sectors = self.rng.range(1, 17);
            let first = if self.rng.chance(50) {
                self.rng.range(0, 128)
            } else {
                self.rng.range(0, SECTORS - sectors)
            };
            let fua = self.rng.chance(20);
            let data = write_data(id, first, sectors);
            self.writes.insert(
                id,
                WriteRec {
                    node: n,
                    offset: first * SECTOR,
                    sectors,
                    fua,
                },
            );
            self.inflight_apps.insert(id, n);
            self.input(
                n,
                Input::Write {
                    id,
                    offset_bytes: first * SECTOR,
                    data: Bytes::from(data),
                    fua,
                },
            );
        }
    }

    fn fault(&mut self) {
        match self.cfg.scenario {
            Scenario::Failover | Scenario::DualPrimary => {
                let r = self.rng.range(0, 100);
                if r < 3 && self.cfg.scenario == Scenario::Failover {
                    let n = self.rng.range(0, 2) as usize;
                    self.note_sync_state(n);
                    self.crash(n);
                } else if r < 6 && !self.partitioned {
                    self.partitioned = true;
                    let t = self.now + self.rng.range(100, 3000);
                    self.schedule(t, Ev::Heal);
                } else if r < 8 {
                    if let Some(c) = self.conn.as_ref() {
                        let id = c.id;
                        let who = self.rng.range(0, 2) as usize;
                        if self.rng.chance(50) {
                            self.input(
                                who,
                                Input::ProtocolError {
                                    conn: id,
                                    reason: "frame sequence gap (simulated reorder)".into(),
                                },
                            );
                        } else {
                            self.input(who, Input::LinkDown { conn: id });
                        }
                    }
                } else if r < 10 && self.cfg.scenario == Scenario::Failover {
                    // Planned switchover: the primary demotes while connected and in
                    // sync (refused while its writes are in flight); the controller then
                    // promotes the peer, which replicates back to it.
                    if let Some(p) = self.primary() {
                        let in_sync = self.st(1 - p).is_some_and(|(_, d, c)| {
                            d == DiskState::UpToDate && c == ConnState::Connected
                        });
                        if in_sync {
                            self.input(
                                p,
                                Input::Admin {
                                    id: 0,
                                    cmd: AdminCmd::Secondary,
                                },
                            );
                        }
                    }
                }
            }
            Scenario::SplitBrain => {
                if !self.sb_started && self.now > 2000 && self.rng.chance(3) {
                    // Partition; once the secondary notices, force it primary: a real
                    // split brain.
                    self.partitioned = true;
                    self.sb_started = true;
                    let t = self.now + self.rng.range(3000, 6000);
                    self.schedule(t, Ev::Heal);
                }
                if self.sb_started && !self.forced_two_primaries && self.partitioned {
                    let sec = (0..2).find(|&n| {
                        self.st(n)
                            .is_some_and(|s| s.0 == Role::Secondary && s.2 == ConnState::Connecting)
                    });
                    let pri = self.primary().is_some();
                    if let (Some(n), true) = (sec, pri) {
                        self.forced_two_primaries = true;
                        self.input(
                            n,
                            Input::Admin {
                                id: 0,
                                cmd: AdminCmd::Primary { force: true },
                            },
                        );
                    }
                }
            }
        }
    }

    /// Record, when a node is about to die, whether its peer had all its writes.
    fn note_sync_state(&mut self, dying: usize) {
        let other = 1 - dying;
        let in_sync = self
            .st(other)
            .is_some_and(|(_, d, c)| d == DiskState::UpToDate && c == ConnState::Connected)
            && self
                .st(dying)
                .is_some_and(|(_, _, c)| c == ConnState::Connected);
        // Protocol A/B may lose acknowledged writes on failover by design: only
        // promote such a peer when the stricter guarantee is not being checked.
        self.dead_since_inc[dying] = Some(in_sync && self.cfg.protocol == Protocol::C);
    }

    fn step_event(&mut self) -> bool {
        let Some(Reverse((at, _, id))) = self.queue.pop() else {
            return false;
        };
        self.now = self.now.max(at);
        let Some(ev) = self.evs.remove(&id) else {
            return true;
        };
        match ev {
            Ev::DiskDone {
                node,
                inc,
                token,
                read,
            } => {
                if self.nodes[node].inc != inc || !self.alive(node) {
                    return true;
                }
                // Rare I/O errors (failover runs only): the replica detaches; the node is
                // rebooted a little later, as an operator would after a disk problem.
                if self.cfg.scenario == Scenario::Failover
                    && !self.finishing
                    && self.rng.range(0, 1000) < 2
                {
                    if let Some((off, data)) = self.nodes[node].inflight.remove(&token) {
                        // A failed write may have reached part of the medium.
                        let _ = self.nodes[node].inflight.remove(&(token | (1 << 63)));
                        let mut rng = Rng::new(self.rng.next_u64());
                        self.nodes[node].disk.crash_write(&mut rng, off, &data);
                    }
                    self.out.io_errors += 1;
                    self.input(
                        node,
                        Input::DiskDone {
                            token,
                            result: Err(()),
                        },
                    );
                    let t = self.now + self.rng.range(100, 1000);
                    self.schedule(t, Ev::Repair { node, inc });
                    return true;
                }
                let result = match read {
                    Some((u64::MAX, _)) => {
                        if trace_sector().is_some() {
                            eprintln!("t={} n{node}: disk flush token {token}", self.now);
                        }
                        self.nodes[node].disk.flush();
                        Ok(None)
                    }
                    Some((off, len)) => Ok(Some(Bytes::from(
                        self.nodes[node].disk.read(off, u64::from(len)),
                    ))),
                    None => {
                        let fua = self.nodes[node]
                            .inflight
                            .remove(&(token | (1 << 63)))
                            .is_some();
                        if let Some((off, data)) = self.nodes[node].inflight.remove(&token) {
                            self.nodes[node].disk.write(off, &data, fua);
                        }
                        Ok(None)
                    }
                };
                self.input(node, Input::DiskDone { token, result });
            }
            Ev::Deliver { conn, to, msg } => {
                let alive = self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.id == conn && c.alive[to]);
                if !alive && std::env::var_os("TWINSAN_SIM_TRACE_ALL").is_some() {
                    eprintln!(
                        "t={} dropped {} to n{to} on c{conn} (current {:?})",
                        self.now,
                        msg.kind(),
                        self.conn.as_ref().map(|c| (c.id, c.alive))
                    );
                }
                if alive {
                    self.input(to, Input::Message { conn, msg });
                }
            }
            Ev::LinkDown { conn, to } => {
                let hit = self
                    .conn
                    .as_ref()
                    .is_some_and(|c| c.id == conn && c.alive[to]);
                if hit {
                    self.input(to, Input::LinkDown { conn });
                    if let Some(c) = self.conn.as_mut() {
                        c.alive[to] = false;
                        if !c.alive[0] && !c.alive[1] {
                            self.conn = None;
                        }
                    }
                    self.maybe_connect();
                }
            }
            Ev::Tick { node } => {
                if self.alive(node) {
                    self.input(node, Input::Tick);
                    let t = self.now + 50;
                    self.schedule(t, Ev::Tick { node });
                }
            }
            Ev::TryConnect => {
                self.connect_pending = false;
                let ok = self.conn.is_none()
                    && !self.partitioned
                    && self.alive(0)
                    && self.alive(1)
                    && self.nodes[0].want_conn
                    && self.nodes[1].want_conn;
                if ok {
                    let id = self.next_conn;
                    self.next_conn += 1;
                    self.conn = Some(Conn {
                        id,
                        alive: [true, true],
                        last_ms: [self.now, self.now],
                    });
                    self.input(0, Input::LinkUp { conn: id });
                    self.input(1, Input::LinkUp { conn: id });
                } else {
                    self.maybe_connect();
                    if !self.connect_pending && !self.partitioned {
                        // Someone is not ready yet; retry later.
                    }
                }
            }
            Ev::Repair { node, inc } => {
                if self.nodes[node].inc == inc && self.alive(node) {
                    self.note_sync_state(node);
                    self.crash(node);
                }
            }
            Ev::HandlerDone {
                node,
                inc,
                handler,
                exit_code,
            } => {
                if self.nodes[node].inc == inc && self.alive(node) {
                    self.input(node, Input::HandlerDone { handler, exit_code });
                }
            }
            Ev::FrozenIo { node, inc, drop } => {
                if self.nodes[node].inc == inc && self.alive(node) {
                    let cmd = if drop {
                        AdminCmd::DropFrozenIo
                    } else {
                        AdminCmd::ResumeIo
                    };
                    self.input(node, Input::Admin { id: 0, cmd });
                }
            }
            Ev::Restart { node } => {
                if !self.alive(node) {
                    self.boot(node);
                }
            }
            Ev::Heal => {
                if !self.partitioned {
                    return true;
                }
                self.partitioned = false;
                let held = std::mem::take(&mut self.held);
                for (conn, to, msg) in held {
                    let alive = self
                        .conn
                        .as_ref()
                        .is_some_and(|c| c.id == conn && c.alive[to]);
                    if alive {
                        let d = self.net_delay();
                        if let Some(c) = self.conn.as_mut() {
                            let at = (self.now + d).max(c.last_ms[to]);
                            c.last_ms[to] = at;
                            self.schedule(at, Ev::Deliver { conn, to, msg });
                        }
                    }
                }
                // A side that closed during the partition: the other now gets the reset.
                if let Some((id, alive, last)) =
                    self.conn.as_ref().map(|c| (c.id, c.alive, c.last_ms))
                {
                    for to in 0..2 {
                        if alive[to] && !alive[1 - to] {
                            let at = last[to].max(self.now) + 1;
                            self.schedule(at, Ev::LinkDown { conn: id, to });
                        }
                    }
                }
                self.maybe_connect();
            }
        }
        true
    }

    fn check_step(&mut self) {
        let both = self.primary().is_some()
            && (0..2).all(|n| self.st(n).is_some_and(|s| s.0 == Role::Primary));
        if both && !self.pols.allow_two_primaries && !self.forced_two_primaries {
            self.violation("two Primaries without allow-two-primaries".into());
        }
        if both && !self.pols.allow_two_primaries {
            let connected = (0..2).all(|n| self.st(n).is_some_and(|s| s.2.is_connected()));
            if connected {
                self.violation("two Primaries connected to each other".into());
            }
        }
    }

    fn run(mut self) -> Outcome {
        if self.cfg.seed.is_multiple_of(5) {
            // Initial full sync: node 0 is forced primary (its data is the source).
            self.input(
                0,
                Input::Admin {
                    id: 0,
                    cmd: AdminCmd::Primary { force: true },
                },
            );
        }
        let mut steps = 0;
        let mut guard = 0u64;
        while steps < self.cfg.steps && guard < 200_000 {
            guard += 1;
            let next_at = self.queue.peek().map(|Reverse((t, _, _))| *t);
            if self.rng.chance(30) || next_at.is_none() {
                steps += 1;
                self.now += self.rng.range(0, 20);
                self.controller();
                self.workload();
                self.fault();
            } else {
                self.step_event();
            }
            self.check_step();
        }
        self.finish();
        self.out.end_ms = self.now;
        self.out
    }

    fn run_until_quiet(&mut self, max_ms: u64) {
        let end = self.now + max_ms;
        let mut guard = 0;
        while guard < 500_000 {
            guard += 1;
            let Some(Reverse((t, _, _))) = self.queue.peek() else {
                break;
            };
            if *t > end {
                break;
            }
            self.step_event();
            self.check_step();
            if self.converged() && self.inflight_apps.is_empty() {
                break;
            }
        }
    }

    fn converged(&self) -> bool {
        (0..2).all(|n| {
            self.st(n)
                .is_some_and(|(_, d, c)| d == DiskState::UpToDate && c == ConnState::Connected)
        }) && (0..2).all(|n| self.nodes[n].replica.as_ref().is_some_and(|r| r.idle()))
    }

    fn finish(&mut self) {
        self.finishing = true;
        // Heal everything, restart the dead, stop the workload.
        if self.partitioned {
            self.schedule(self.now, Ev::Heal);
        }
        for n in 0..2 {
            if !self.alive(n) {
                self.boot(n);
            }
        }
        self.run_until_quiet(20_000);
        let sb_states: Vec<bool> = (0..2)
            .map(|n| self.st(n).is_some_and(|s| s.2 == ConnState::SplitBrain))
            .collect();
        if self.cfg.scenario == Scenario::SplitBrain && self.forced_two_primaries {
            self.check_split_brain(sb_states.iter().any(|&b| b));
        }
        // Two primaries after a split brain: demote the younger one (the operator's job).
        if self.cfg.scenario != Scenario::DualPrimary {
            if let (Some(_), true) = (
                self.primary(),
                (0..2).all(|n| self.st(n).is_some_and(|s| s.0 == Role::Primary)),
            ) {
                self.input(
                    1,
                    Input::Admin {
                        id: 0,
                        cmd: AdminCmd::Secondary,
                    },
                );
            }
        }
        let stuck = (0..2).any(|n| {
            self.st(n)
                .is_some_and(|s| matches!(s.2, ConnState::SplitBrain | ConnState::StandAlone))
        });
        if sb_states.iter().any(|&b| b) || stuck {
            // Manual recovery, as the README tells the operator: node 1 steps down and
            // discards its data, both connect.
            self.input(
                1,
                Input::Admin {
                    id: 0,
                    cmd: AdminCmd::Secondary,
                },
            );
            self.input(
                1,
                Input::Admin {
                    id: 0,
                    cmd: AdminCmd::Connect {
                        discard_my_data: true,
                    },
                },
            );
            self.input(
                0,
                Input::Admin {
                    id: 0,
                    cmd: AdminCmd::Connect {
                        discard_my_data: false,
                    },
                },
            );
            self.run_until_quiet(20_000);
        }
        // Nobody primary after all this? Promote a node so the final state is servable.
        if !self.converged() {
            self.run_until_quiet(20_000);
        }
        if !self.converged() {
            let s: Vec<_> = (0..2).map(|n| self.st(n)).collect();
            self.violation(format!("did not converge to Connected/UpToDate: {s:?}"));
            return;
        }
        self.check_data();
    }

    fn check_split_brain(&mut self, left_standalone: bool) {
        for n in 0..2 {
            let seen = self.nodes[n]
                .events
                .iter()
                .any(|e| matches!(e, REvent::SplitBrain { .. }));
            if !seen {
                self.violation(format!(
                    "node {n}: split brain after forced dual primary was not reported"
                ));
            }
        }
        let resolved_by_disconnect = matches!(self.pols.after_sb_0pri, AfterSb0Pri::Disconnect)
            && (0..2).all(|n| self.st(n).is_some_and(|s| s.0 == Role::Secondary));
        if resolved_by_disconnect && !left_standalone {
            self.violation("after-sb-0pri disconnect, but the split brain was resolved".into());
        }
    }

    fn check_data(&mut self) {
        let a = &self.nodes[0].disk;
        let b = &self.nodes[1].disk;
        let mut sectors: HashSet<u64> = a.sectors().into_iter().collect();
        sectors.extend(b.sectors());
        let mut sectors: Vec<u64> = sectors.into_iter().collect();
        sectors.sort_unstable();
        let mut diffs = Vec::new();
        for &s in &sectors {
            let da = a.read(s * SECTOR, SECTOR);
            let db = b.read(s * SECTOR, SECTOR);
            if da != db {
                diffs.push(s);
            }
        }
        if !diffs.is_empty() {
            let s0 = diffs[0];
            let who = |d: &SimDisk| parse_sector(&d.read(s0 * SECTOR, SECTOR));
            let detail = format!("sector {s0}: n0 has {:?}, n1 has {:?}", who(a), who(b));
            self.violation(format!(
                "replicas differ after resync in {} sectors (first {:?}); {detail}",
                diffs.len(),
                &diffs[..diffs.len().min(5)]
            ));
        }
        // Durability: no sector rolled back past a write that was acknowledged and
        // made durable (FUA or a later flush), under protocol C without forced
        // split brains (whose victim loses its changes by policy).
        if self.cfg.protocol != Protocol::C
            || self.forced_two_primaries
            || self.out.split_brains > 0
        {
            return;
        }
        let dmin: Vec<(u64, u64)> = self.durable_min.iter().map(|(k, v)| (*k, *v)).collect();
        let mut lost = Vec::new();
        for (s, min_id) in dmin {
            let d = self.nodes[0].disk.read(s * SECTOR, SECTOR);
            match parse_sector(&d) {
                Some((id, sec)) if sec == s && id >= min_id => {}
                other => lost.push((s, min_id, other)),
            }
        }
        if !lost.is_empty() {
            self.violation(format!(
                "{} durable acknowledged sectors lost or rolled back, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(3)]
            ));
        }
    }
}

/// Run one simulation.
pub fn run(cfg: SimConfig) -> Outcome {
    World::new(cfg).run()
}
