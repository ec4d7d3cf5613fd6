//! Runs the simulator over many seeds; every invariant must hold for every seed.
//! `TWINSAN_SIM_SEEDS` (default 10000) and `TWINSAN_SIM_FIRST_SEED` pick the slice;
//! a failure prints the seed and how to rerun it alone.

use twinsan_sim::{run, SimConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn invariants_hold_for_every_seed() {
    let first = env_u64("TWINSAN_SIM_FIRST_SEED", 1);
    let count = env_u64("TWINSAN_SIM_SEEDS", 10_000);
    // Seeds are independent: split them over the available cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let results: Vec<(Vec<String>, u64, u64, u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let (mut fails, mut acked, mut crashes, mut sbs, mut eio) =
                        (Vec::new(), 0, 0, 0, 0);
                    let mut seed = first + t;
                    while seed < first + count && fails.len() < 5 {
                        let cfg = SimConfig::for_seed(seed);
                        let desc = format!("{:?}/{:?}", cfg.scenario, cfg.protocol);
                        let out = run(cfg);
                        acked += out.writes_acked;
                        crashes += out.crashes;
                        sbs += out.split_brains;
                        eio += out.io_errors;
                        if !out.violations.is_empty() {
                            fails.push(format!("seed {seed} ({desc}): {:#?}", out.violations));
                        }
                        seed += threads;
                    }
                    (fails, acked, crashes, sbs, eio)
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
    let (mut acked, mut crashes, mut sbs, mut eio) = (0, 0, 0, 0);
    for (f, a, c, s, e) in results {
        eio += e;
        failures.extend(f);
        acked += a;
        crashes += c;
        sbs += s;
    }
    println!(
        "simulated {count} seeds from {first}: {acked} writes acknowledged, {crashes} crashes, \
         {eio} disk I/O errors, {sbs} split-brain detections"
    );
    assert!(
        failures.is_empty(),
        "rerun one with TWINSAN_SIM_FIRST_SEED=N TWINSAN_SIM_SEEDS=1:\n{}",
        failures.join("\n")
    );
    assert!(
        acked > count,
        "the workload hardly ran: {acked} acked writes"
    );
}
