//! Failover-time benchmark on the two-head demo appliance (not a test; as root; run by
//! `scripts/bench-failover`, which builds release binaries first).
//!
//! `demo up` once; then for each trial: a writer (4 KiB WRITE(16), one command at a
//! time, from the client namespace to the portal IP, on its own 1 MiB region) runs,
//! the active head gets SIGKILL, and the writer keeps going until 50 writes were
//! acknowledged after the kill; the trial's figure is the time from the SIGKILL to the
//! first write acknowledged after the writer saw the old head go (the first failed
//! command after the kill): a write in flight at the kill may still be acknowledged
//! by the dying head's kernel buffers and does not count. Both instants come from the
//! same monotonic clock in this process. Then every acknowledged write of the trial is
//! read back through the portal IP and checked, the killed head is revived, and the
//! next trial starts once it is passive with its volume UpToDate and Connected (so the
//! heads alternate). Prints each trial and the median, worst and mean; `demo down` at
//! the end, also on failure (panic) — the script also runs it on exit.
//!
//! Usage: failover-bench [--trials N] [--no-witness] [--size SIZE] [--name NAME]
//!        [--dir DIR] [--bin TWINSAN]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use twinsan_e2e::ha::{
    is_active, is_healthy_passive, other, try_verify, Demo, DemoOptions, Writer, WriterOptions,
};

struct Args {
    trials: u32,
    witness: bool,
    size: String,
    name: Option<String>,
    dir: Option<PathBuf>,
    bin: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: failover-bench [--trials N] [--no-witness] [--size SIZE] [--name NAME] \
         [--dir DIR] [--bin TWINSAN]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        trials: 20,
        witness: true,
        size: "256M".into(),
        name: None,
        dir: None,
        bin: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--trials" => a.trials = val().parse().unwrap_or_else(|_| usage()),
            "--no-witness" => a.witness = false,
            "--size" => a.size = val(),
            "--name" => a.name = Some(val()),
            "--dir" => a.dir = Some(PathBuf::from(val())),
            "--bin" => a.bin = Some(PathBuf::from(val())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if a.trials == 0 {
        usage();
    }
    a
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One trial's figures.
struct Trial {
    killed: String,
    resumed: Duration,
    gap: Duration,
    rejoin: Duration,
}

fn stats(name: &str, v: &[Duration]) {
    let mut s: Vec<f64> = v.iter().copied().map(ms).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    let mean = s.iter().sum::<f64>() / n as f64;
    println!(
        "{name}: median {median:.0} ms, worst {:.0} ms, best {:.0} ms, mean {mean:.0} ms ({n} trials)",
        s[n - 1],
        s[0]
    );
}

fn main() {
    let args = parse_args();
    // The twinsan binary next to this one (target/<profile>/twinsan), unless given.
    let bin = args.bin.clone().or_else(|| {
        std::env::var_os("TWINSAN_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| Some(e.parent()?.join("twinsan")))
            })
    });
    let Some(demo) = Demo::up(DemoOptions {
        size: args.size.clone(),
        witness: args.witness,
        name: args.name.clone(),
        dir: args.dir.clone(),
        bin,
        ..DemoOptions::default()
    }) else {
        std::process::exit(1);
    };
    println!(
        "failover benchmark: demo {} (witness {}, dead time 600 ms, fence delay of the \
         passive head 500 ms), {} trials; writer: 4 KiB WRITE(16), queue depth 1, through \
         the portal IP from the client namespace",
        demo.name,
        if args.witness { "on" } else { "off" },
        args.trials
    );
    let mut trials = Vec::new();
    for t in 0..args.trials {
        let n = t + 1;
        let act = demo.active_head().expect("an active head");
        let pas = other(&act);
        let opts = WriterOptions {
            base_lba: u64::from(t) * 2048,
            tag: 0x4642_0000 + t,
            ..WriterOptions::default()
        };
        let w = Writer::start(demo.portal(), opts);
        assert!(
            w.wait_acks(100, Duration::from_secs(30)),
            "trial {n}: the writer did not get going\n{}",
            demo.diagnostics()
        );
        let before = w.acks();
        let t_kill = Instant::now();
        assert!(
            demo.kill(&act, libc::SIGKILL),
            "trial {n}: kill -9 head {act}"
        );
        let ok = w.wait_acks(before + 50, Duration::from_secs(30));
        let log = w.stop();
        assert!(
            ok,
            "trial {n}: writes did not resume within 30 s after killing head {act}: {}\n{}",
            log.summary(),
            demo.diagnostics()
        );
        let resumed = log.resumed_after(t_kill).unwrap_or_else(|| {
            panic!(
                "trial {n}: no failed write after the kill, or none acknowledged after it: {}",
                log.summary()
            )
        });
        let gap = log.max_gap_after(t_kill).unwrap_or_default();
        let raw_first = log.first_ack_after(t_kill).unwrap_or_default();
        let rep = match try_verify(&demo.portal(), &log) {
            Ok(r) => r,
            Err(e) => panic!("trial {n}: {e}\n{}", demo.diagnostics()),
        };
        demo.wait_dead(&act, Duration::from_secs(10));
        print!(
            "trial {:2}: killed head {act}, head {pas} took over; writes resumed after \
             {:6.0} ms (largest gap between acks {:6.0} ms; any ack after the kill: \
             {:.1} ms); {} writes, {} failed; verified {} slots; ",
            t + 1,
            ms(resumed),
            ms(gap),
            ms(raw_first),
            log.records.len(),
            log.records.len() - log.acked(),
            rep.slots,
        );
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let t_revive = Instant::now();
        demo.revive(&act);
        demo.wait_until(
            &format!("trial {n}: head {act} passive and in sync again"),
            Duration::from_secs(60),
            |s| is_healthy_passive(s, &act) && is_active(s, pas),
        );
        let rejoin = t_revive.elapsed();
        println!("revived head rejoined in {:.1} s", rejoin.as_secs_f64());
        trials.push(Trial {
            killed: act,
            resumed,
            gap,
            rejoin,
        });
    }
    println!();
    stats(
        "SIGKILL -> first acknowledged write on the new head",
        &trials.iter().map(|t| t.resumed).collect::<Vec<_>>(),
    );
    stats(
        "largest gap between acknowledged writes",
        &trials.iter().map(|t| t.gap).collect::<Vec<_>>(),
    );
    stats(
        "revived head passive and in sync",
        &trials.iter().map(|t| t.rejoin).collect::<Vec<_>>(),
    );
    for h in ["a", "b"] {
        let v: Vec<Duration> = trials
            .iter()
            .filter(|t| t.killed == h)
            .map(|t| t.resumed)
            .collect();
        if !v.is_empty() {
            stats(&format!("  killed head {h}"), &v);
        }
    }
    drop(demo);
}
