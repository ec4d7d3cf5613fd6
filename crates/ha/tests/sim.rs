//! Seeded simulation of two `HaNode`s and a witness: random link cuts (both ways, one
//! way, single links), loss, corruption, flapping, crashes and restarts of nodes and of
//! the witness, late starts (wait-for-all), witness reachability loss and an attacker
//! replaying recorded datagrams. Invariants (checked by the world after every step):
//!
//! - with a witness, never do both nodes have quorum while either does not see the
//!   other;
//! - a node that has not seen its peer since it started never has quorum;
//! - PeerUp only while the peer runs (replays never fake a peer);
//! - a PeerDown never happens while some link has worked both ways for the dead time;
//! - every link cut both ways: both nodes stop seeing each other within the dead time;
//! - without a witness, a node that saw its peer keeps quorum (and must fence).
//!
//! and, checked here: a clean partition with a reachable witness gives quorum to exactly
//! one node within a bound, until the partition heals.
//!
//! `TWINSAN_HA_SIM_SEEDS` (default 2000) and `TWINSAN_HA_SIM_FIRST_SEED` pick the
//! slice; `TWINSAN_HA_SIM_TRACE=1` prints a run (use with one seed).

mod common;

use common::{Path, SimCfg, World, DELAY_MAX_MS};
use twinsan_ha::quorum::{DEFAULT_DEFER_INACTIVE_MS, DEFAULT_REQUEST_INTERVAL_MS};
use twinsan_ha::witness::{DEFAULT_GRACE_MS, DEFAULT_LEASE_MS};
use twinsan_sim::Rng;

const RUN_MS: u64 = 4_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Default, Clone)]
struct Figures {
    seeds: u64,
    with_witness: u64,
    virtual_ms: u64,
    delivered: u64,
    lost: u64,
    corrupted: u64,
    replayed: u64,
    peer_downs: u64,
    witness_grants: u64,
    clean_partitions: u64,
    /// Time from a clean partition's start until exactly one node has quorum.
    settle_ms_sum: u64,
    settle_ms_max: u64,
    faults: u64,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.seeds += o.seeds;
        self.with_witness += o.with_witness;
        self.virtual_ms += o.virtual_ms;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.corrupted += o.corrupted;
        self.replayed += o.replayed;
        self.peer_downs += o.peer_downs;
        self.witness_grants += o.witness_grants;
        self.clean_partitions += o.clean_partitions;
        self.settle_ms_sum += o.settle_ms_sum;
        self.settle_ms_max = self.settle_ms_max.max(o.settle_ms_max);
        self.faults += o.faults;
    }
}

fn random_path(r: &mut Rng) -> Path {
    Path {
        up: !r.chance(20),
        loss_pct: if r.chance(50) { r.range(5, 60) } else { 0 },
        corrupt_pct: if r.chance(20) { r.range(1, 10) } else { 0 },
    }
}

/// Run one seed; returns violations and figures.
fn run(seed: u64) -> (Vec<String>, Figures) {
    let mut r = Rng::new(seed.wrapping_mul(0x9E37_79B9));
    let mut cfg = SimCfg::new(seed);
    cfg.links = match r.range(0, 10) {
        0 => 1,
        1 => 3,
        _ => 2,
    };
    cfg.witness = r.chance(75);
    if r.chance(25) {
        cfg.dead_time_ms = [r.range(3, 13) * 100, r.range(3, 13) * 100];
    }
    let dead_max = cfg.dead_max_ms();
    let interval = cfg.interval_ms;
    // Clean partition: loss detection and peer-view expiry, the inactive side's
    // deferral, a lease the loser may still hold from an earlier episode (+ grace),
    // renewals and round trips.
    let bound = dead_max
        + 50
        + DEFAULT_DEFER_INACTIVE_MS
        + DEFAULT_LEASE_MS
        + DEFAULT_GRACE_MS
        + 2 * DEFAULT_REQUEST_INTERVAL_MS
        + 4 * DELAY_MAX_MS;
    let mut w = World::new(cfg.clone());
    let mut fig = Figures {
        seeds: 1,
        with_witness: u64::from(cfg.witness),
        ..Figures::default()
    };
    if cfg.witness {
        w.start_witness();
    }
    w.start_node(0);
    // Sometimes the second node starts late: the first must wait for it.
    let late = if r.chance(30) { r.range(0, 4000) } else { 0 };
    w.run_until(late);
    w.start_node(1);
    w.run_until(late + 1000);

    while w.now < RUN_MS {
        fig.faults += 1;
        let start = w.now;
        let kind = r.range(0, 100);
        let dur = r.range(500, 3000);
        // Replays by an attacker on the wire, during any fault; sometimes it also
        // relays (delays) datagrams a cut dropped, becoming a path of its own.
        let replay = r.chance(30);
        let relay = replay && r.chance(25);
        let mut crashed = None;
        let mut witness_crashed = false;
        let mut clean = None;
        match kind {
            // A clean partition: every link cut both ways.
            0..=24 => {
                let dur = bound + r.range(200, 1500);
                let eligible = cfg.witness
                    && !relay
                    && w.witness_paths_good()
                    && w.witness_ready_since().is_some_and(|t| t <= start)
                    && w.mutual();
                w.set_all_links(Path::CUT);
                clean = Some((eligible, start + dur));
            }
            // One link fails (both ways or one way); the others stay good.
            25..=39 => {
                let l = r.range(0, u64::from(cfg.links)) as usize;
                if r.chance(50) {
                    w.set_link(l, 0, Path::CUT);
                    w.set_link(l, 1, Path::CUT);
                } else {
                    w.set_link(l, r.range(0, 2) as usize, Path::CUT);
                }
            }
            // Every path random: lossy, corrupting, cut, one-way.
            40..=54 => {
                for l in 0..cfg.links as usize {
                    for from in 0..2 {
                        w.set_link(l, from, random_path(&mut r));
                    }
                }
                for n in 0..2 {
                    let p = random_path(&mut r);
                    w.set_witness_paths(n, Path { up: true, ..p });
                }
            }
            // One direction of every link.
            55..=62 => {
                let from = r.range(0, 2) as usize;
                for l in 0..cfg.links as usize {
                    w.set_link(l, from, Path::CUT);
                }
            }
            // A node crashes (and restarts later with a new boot).
            63..=74 => {
                let n = r.range(0, 2) as usize;
                w.crash_node(n);
                crashed = Some(n);
            }
            // A partition where one node cannot reach the witness.
            75..=84 => {
                w.set_witness_paths(r.range(0, 2) as usize, Path::CUT);
                w.set_all_links(Path::CUT);
            }
            // The witness restarts during a partition.
            85..=89 => {
                w.set_all_links(Path::CUT);
                if cfg.witness {
                    w.crash_witness();
                    witness_crashed = true;
                }
            }
            // Flapping links.
            _ => {
                let end = start + dur;
                while w.now < end {
                    let l = r.range(0, u64::from(cfg.links)) as usize;
                    let p = if r.chance(50) { Path::GOOD } else { Path::CUT };
                    w.set_link(l, r.range(0, 2) as usize, p);
                    let next = w.now + r.range(20, 300);
                    w.run_until(next.min(end));
                }
            }
        }
        let end = clean.map_or(start + dur, |(_, e)| e);
        let mut settled_at = None;
        let mut next_replay = start;
        while w.now < end {
            if replay && w.now >= next_replay {
                let n = r.range(1, 20) as usize;
                if relay {
                    w.inject_relayed(n);
                } else {
                    w.inject_replays(n);
                }
                next_replay = w.now + r.range(50, 400);
            }
            if witness_crashed && w.witness.is_none() && w.now >= start + dur / 2 {
                w.start_witness();
            }
            let until = if replay {
                end.min(next_replay.max(w.now + 1))
            } else {
                end
            };
            w.step(until);
            if let Some((true, _)) = clean {
                let one = w.has_quorum(0) != w.has_quorum(1);
                if one && settled_at.is_none() {
                    settled_at = Some(w.now);
                }
                if !one {
                    settled_at = None;
                }
                if w.now >= start + bound && !one {
                    w.violations.push(format!(
                        "t={} clean partition since {start}: quorum {:?} / {:?} ({:?} / {:?}), \
                         expected exactly one after {bound} ms",
                        w.now,
                        w.has_quorum(0),
                        w.has_quorum(1),
                        w.reason(0),
                        w.reason(1)
                    ));
                    break;
                }
            }
        }
        if let Some((true, _)) = clean {
            fig.clean_partitions += 1;
            let s = settled_at.map_or(bound, |t| t - start);
            fig.settle_ms_sum += s;
            fig.settle_ms_max = fig.settle_ms_max.max(s);
        }
        // Heal everything, restart what crashed, and let it settle.
        w.set_all_links(Path::GOOD);
        for n in 0..2 {
            w.set_witness_paths(n, Path::GOOD);
        }
        if let Some(n) = crashed {
            w.start_node(n);
        }
        if cfg.witness && w.witness.is_none() {
            w.start_witness();
        }
        let gap = r.range(200, 1200);
        w.run_until(w.now + gap);
        w.relaying = false;
        if !w.violations.is_empty() {
            break;
        }
    }
    // Everything healed for long enough: both nodes see each other and are quorate.
    w.set_all_links(Path::GOOD);
    let end = w.now + 10 * interval;
    w.run_until(end);
    if w.violations.is_empty() && !(w.mutual() && w.has_quorum(0) && w.has_quorum(1)) {
        w.violations.push(format!(
            "not converged after healing: {:?} / {:?}",
            w.reason(0),
            w.reason(1)
        ));
    }
    fig.virtual_ms = w.now;
    fig.delivered = w.stats.delivered;
    fig.lost = w.stats.lost;
    fig.corrupted = w.stats.corrupted;
    fig.replayed = w.stats.replayed;
    fig.peer_downs = w.stats.peer_downs;
    fig.witness_grants = w.stats.witness_grants;
    (w.violations, fig)
}

#[test]
fn invariants_hold_for_every_seed() {
    let first = env_u64("TWINSAN_HA_SIM_FIRST_SEED", 1);
    let count = env_u64("TWINSAN_HA_SIM_SEEDS", 2000);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let started = std::time::Instant::now();
    let results: Vec<(Vec<String>, Figures)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut fails = Vec::new();
                    let mut fig = Figures::default();
                    let mut seed = first + t;
                    while seed < first + count && fails.len() < 5 {
                        let (v, f) = run(seed);
                        if !v.is_empty() {
                            fails.push(format!("seed {seed}: {v:#?}"));
                        }
                        fig.add(&f);
                        seed += threads;
                    }
                    (fails, fig)
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    assert_eq!(
        results.len() as u64,
        threads,
        "a simulation thread panicked"
    );
    let mut failures = Vec::new();
    let mut fig = Figures::default();
    for (f, x) in results {
        failures.extend(f);
        fig.add(&x);
    }
    println!(
        "simulated {} seeds from {first} ({} with witness) in {:.1} s: {} s virtual, {} \
         faults, {} datagrams delivered, {} lost, {} corrupted, {} replayed, {} PeerDown, \
         {} witness grants; {} clean partitions settled to one quorate side in {} ms mean, \
         {} ms max",
        fig.seeds,
        fig.with_witness,
        started.elapsed().as_secs_f64(),
        fig.virtual_ms / 1000,
        fig.faults,
        fig.delivered,
        fig.lost,
        fig.corrupted,
        fig.replayed,
        fig.peer_downs,
        fig.witness_grants,
        fig.clean_partitions,
        fig.settle_ms_sum / fig.clean_partitions.max(1),
        fig.settle_ms_max,
    );
    assert!(
        failures.is_empty(),
        "rerun one with TWINSAN_HA_SIM_FIRST_SEED=N TWINSAN_HA_SIM_SEEDS=1 \
         TWINSAN_HA_SIM_TRACE=1:\n{}",
        failures.join("\n")
    );
    assert!(
        fig.clean_partitions > count / 10,
        "too few clean partitions"
    );
}
