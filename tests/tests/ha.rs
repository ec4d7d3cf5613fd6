//! End-to-end HA tests on the two-head demo appliance (`twinsan demo up`, as root; they
//! skip otherwise): a writer keeps writing through the portal IP from the client
//! namespace while heads are killed, hung, partitioned, moved, put in standby or have
//! their portal IP removed; afterwards every acknowledged write must be readable
//! through the portal IP.
//!
//! The tests are timing-sensitive, so one global lock runs them one at a time.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use twinsan_e2e::ha::{
    failcount, head, is_active, is_healthy_passive, other, portal_reachable, running, service,
    verify, vip_held, vol, waiting, Demo, DemoOptions, Writer, WriterLog, WriterOptions, VIP_CIDR,
};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bound of a wait for a takeover or a move.
const TAKEOVER: Duration = Duration::from_secs(20);
/// Bound of a wait for a head to rejoin (start, connect, resync).
const REJOIN: Duration = Duration::from_secs(30);
/// Bound of a wait for the writer's progress.
const PROGRESS: Duration = Duration::from_secs(30);

/// A scenario's start: one test at a time (the guard), the demo up with head a active.
/// `None`: skipped (not root).
struct Run {
    _g: MutexGuard<'static, ()>,
    t0: Instant,
    demo: Demo,
}

fn begin(opts: DemoOptions) -> Option<Run> {
    let g = serial();
    let t0 = Instant::now();
    let demo = Demo::up(opts)?;
    assert_eq!(demo.active_head().as_deref(), Some("a"), "head a starts");
    Some(Run { _g: g, t0, demo })
}

/// Start the writer and wait until it wrote a little (the portal works).
fn start_writer(demo: &Demo) -> Writer {
    let w = Writer::start(demo.portal(), WriterOptions::default());
    wait_acks(demo, &w, 20, "the first 20 acknowledged writes");
    w
}

/// Wait until the writer has `n` acknowledged writes in total; panic with diagnostics.
fn wait_acks(demo: &Demo, w: &Writer, n: u64, what: &str) {
    if !w.wait_acks(n, PROGRESS) {
        let have = w.acks();
        panic!(
            "writer: {what}: {have} of {n} acknowledged writes after {PROGRESS:?}\n{}",
            demo.diagnostics()
        );
    }
}

/// Print the outage seen by the writer after `t`.
fn report_outage(what: &str, log: &WriterLog, t: Instant) {
    eprintln!(
        "{what}: writes resumed {:?} after the fault, largest gap {:?}; {}",
        log.resumed_after(t),
        log.max_gap_after(t),
        log.summary()
    );
    eprintln!("{}", log.failures_around(t, 10));
}

/// Stop the writer, check that it wrote after `t`, verify every acknowledged write.
fn finish(demo: &Demo, w: Writer, t: Instant, min_after: usize, what: &str) -> WriterLog {
    let log = w.stop();
    report_outage(what, &log, t);
    assert!(
        log.gave_up.is_none(),
        "the writer gave up: {}\n{}",
        log.summary(),
        demo.diagnostics()
    );
    let after = log.acked_after(t);
    assert!(
        after >= min_after,
        "only {after} acknowledged writes after the fault (want >= {min_after}): {}\n{}",
        log.summary(),
        demo.diagnostics()
    );
    let rep = verify(demo, &log);
    eprintln!("{what}: verified {rep:?}");
    log
}

fn done(what: &str, t0: Instant) {
    eprintln!("{what}: passed in {:.1} s", t0.elapsed().as_secs_f64());
}

/// a. SIGKILL of the active head under write load: the other head takes over, writes
/// resume through the portal IP; the killed head, revived, rejoins as the passive head
/// and resyncs.
#[test]
fn sigkill_of_the_active_head() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let act = demo.active_head().expect("an active head after demo up");
    let pas = other(&act);
    let w = start_writer(&demo);
    let t_kill = Instant::now();
    assert!(demo.kill(&act, libc::SIGKILL), "kill -9 head {act}");
    demo.wait_until(&format!("head {pas} is active"), TAKEOVER, |s| {
        is_active(s, pas) && !running(s, &act)
    });
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the takeover");
    let log = finish(&demo, w, t_kill, 50, "SIGKILL");
    demo.revive(&act);
    demo.wait_until(
        &format!("head {act} is passive and in sync again"),
        REJOIN,
        |s| {
            is_healthy_passive(s, &act)
                && is_active(s, pas)
                && vol(s, pas, "disk") == "UpToDate"
                && vol(s, pas, "connection") == "Connected"
        },
    );
    // The resync brought the revived head's disk up to date.
    let region = (log.opts.slots * 8 * 512) as usize;
    let diff = demo.disk_diff(0, region);
    assert!(
        diff.is_empty(),
        "backing files differ after the resync at byte offsets {diff:?}\n{}",
        demo.diagnostics()
    );
    verify(&demo, &log);
    done("SIGKILL", t0);
}

/// b. SIGSTOP of the active head (a hung node), SIGCONT after the takeover: the other
/// head fences it (the process agent kills it) and takes over.
#[test]
fn sigstop_of_the_active_head() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let act = demo.active_head().expect("an active head after demo up");
    let pas = other(&act);
    let w = start_writer(&demo);
    let t_stop = Instant::now();
    assert!(demo.kill(&act, libc::SIGSTOP), "kill -STOP head {act}");
    let st = demo.wait_until(&format!("head {pas} is active"), TAKEOVER, |s| {
        is_active(s, pas)
    });
    // Resume the hung head (if it still exists): it must not come back to life.
    let resumed = demo.kill(&act, libc::SIGCONT);
    eprintln!(
        "SIGCONT to head {act}: {}",
        if resumed {
            "delivered"
        } else {
            "no such process (fenced)"
        }
    );
    assert!(
        !head(&st, pas)["ha"]["last_fence"].is_null(),
        "head {pas} took over without fencing the hung head: {}",
        head(&st, pas)["ha"]
    );
    demo.wait_until(&format!("head {act} is dead (fenced)"), TAKEOVER, |s| {
        !running(s, &act) && is_active(s, pas)
    });
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the takeover");
    finish(&demo, w, t_stop, 50, "SIGSTOP");
    // Still one active head, and the fenced one stays dead.
    let s = demo.status();
    assert!(
        is_active(&s, pas) && !running(&s, &act),
        "after SIGCONT: {}\n{}",
        twinsan_e2e::ha::compact_status(&s),
        demo.diagnostics()
    );
    done("SIGSTOP", t0);
}

/// c. Partition with the witness and `--no-fence-with-witness`: head A (active) is cut
/// off from head B and the witness (the client still reaches it): A loses quorum and
/// stops the service, B takes over with the witness's vote; healed, A rejoins passive.
#[test]
fn partition_with_witness() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions {
        fence_with_witness: false,
        ..DemoOptions::default()
    }) else {
        return;
    };
    let w = start_writer(&demo);
    let t_part = Instant::now();
    demo.partition(&[("a0", "b0"), ("a1", "b1"), ("a0", "w0")]);
    demo.wait_until(
        "head a (minority) stopped the service and head b took over",
        TAKEOVER,
        |s| {
            running(s, "a")
                && service(s, "a") == "passive"
                && !vip_held(s, "a")
                && vol(s, "a", "role") == "Secondary"
                && is_active(s, "b")
        },
    );
    let s = demo.status();
    assert_eq!(
        head(&s, "a")["ha"]["quorum"].as_bool(),
        Some(false),
        "head a keeps quorum in the minority: {}",
        head(&s, "a")["ha"]
    );
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the partition");
    let t_heal = Instant::now();
    demo.heal();
    demo.wait_until("head a rejoined as the passive head", REJOIN, |s| {
        is_healthy_passive(s, "a") && is_active(s, "b") && vol(s, "b", "connection") == "Connected"
    });
    wait_acks(&demo, &w, w.acks() + 20, "20 writes after healing");
    let log = finish(&demo, w, t_part, 50, "partition with witness");
    eprintln!(
        "partition with witness: {} acknowledged writes after healing",
        log.acked_after(t_heal)
    );
    done("partition with witness", t0);
}

/// Only the replication link fails (the heartbeats still arrive over the other link):
/// the active head's I/O freezes, its fence-peer handler has the passive head outdate its
/// data, I/O resumes on the active head alone; the passive head cannot take over with
/// stale data, and after the link heals it resyncs.
#[test]
fn replication_link_failure_outdates_the_peer() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let w = start_writer(&demo);
    wait_acks(&demo, &w, 20, "20 writes before the failure");
    let t_cut = Instant::now();
    // Link 1 carries replication and the second heartbeat link.
    demo.partition(&[("a1", "b1")]);
    demo.wait_until("head b outdated, head a still active", TAKEOVER, |s| {
        is_active(s, "a") && vol(s, "b", "disk") == "Outdated" && service(s, "b") == "passive"
    });
    wait_acks(&demo, &w, w.acks() + 50, "50 writes on head a alone");
    demo.assert_for(
        "head b stays passive (its data is Outdated)",
        Duration::from_secs(2),
        |s| is_active(s, "a") && service(s, "b") == "passive",
    );
    demo.heal();
    demo.wait_until("head b resynced", REJOIN, |s| {
        is_active(s, "a") && is_healthy_passive(s, "b")
    });
    finish(&demo, w, t_cut, 50, "replication link failure");
    done("replication link failure", t0);
}

/// d. Partition without a witness: A and B lose each other on both links; the active
/// head A fences B at once (the passive side waits) and keeps serving.
#[test]
fn partition_without_witness() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions {
        witness: false,
        ..DemoOptions::default()
    }) else {
        return;
    };
    let w = start_writer(&demo);
    let t_part = Instant::now();
    demo.partition(&[("a0", "b0"), ("a1", "b1")]);
    demo.wait_until("head a fenced head b and still serves", TAKEOVER, |s| {
        !running(s, "b") && is_active(s, "a")
    });
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the partition");
    let s = demo.status();
    assert!(
        !head(&s, "a")["ha"]["last_fence"].is_null(),
        "head a reports no fence: {}",
        head(&s, "a")["ha"]
    );
    finish(&demo, w, t_part, 50, "partition without witness");
    done("partition without witness", t0);
}

/// Without a witness, a head the survivor fenced is revived: it must rejoin as the
/// passive head (regression: the survivor used to fence it again as soon as the first
/// heartbeat of its new boot arrived).
#[test]
fn revive_after_fencing_without_witness() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions {
        witness: false,
        ..DemoOptions::default()
    }) else {
        return;
    };
    let w = start_writer(&demo);
    let t_kill = Instant::now();
    assert!(demo.kill("a", libc::SIGKILL), "kill -9 head a");
    demo.wait_until("head b took over", TAKEOVER, |s| is_active(s, "b"));
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the takeover");
    let log = finish(&demo, w, t_kill, 50, "revive without witness");
    demo.revive("a");
    demo.wait_until("head a rejoined as the passive head", REJOIN, |s| {
        is_healthy_passive(s, "a") && is_active(s, "b")
    });
    demo.assert_for("head a stays up", Duration::from_secs(3), |s| {
        is_healthy_passive(s, "a") && is_active(s, "b")
    });
    verify(&demo, &log);
    done("revive without witness", t0);
}

/// A planned move right after a resync whose source was the active head (it had written
/// while disconnected: a new data generation): the new active head's writes must go on
/// (regression: the old head, now Secondary, refused them as "stale generation" because
/// it still expected the generation the target had before the resync).
#[test]
fn planned_move_after_resync() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let repl = |h: &str, args: &[&str]| {
        let ctl = demo.control(h).display().to_string();
        let o = twinsan_e2e::ha::run_bounded(
            std::process::Command::new(twinsan_e2e::twinsan_bin())
                .arg("repl")
                .args(args)
                .args(["--control", &ctl]),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            o.status.success(),
            "repl {args:?} on {h}: {}",
            twinsan_e2e::ha::out_text(&o)
        );
    };
    // Writes on head a while it is disconnected: a new data generation.
    repl("a", &["disconnect", "vol0"]);
    let w = start_writer(&demo);
    wait_acks(&demo, &w, 50, "50 writes while disconnected");
    let log1 = w.stop();
    verify(&demo, &log1);
    // Reconnect: head a resyncs head b.
    repl("a", &["connect", "vol0"]);
    demo.wait_until("head b resynced", REJOIN, |s| {
        is_active(s, "a") && is_healthy_passive(s, "b")
    });
    let w = Writer::start(
        demo.portal(),
        WriterOptions {
            tag: 0x4841_0002,
            base_lba: 4096,
            ..WriterOptions::default()
        },
    );
    wait_acks(&demo, &w, 20, "20 writes after the resync");
    let t_move = Instant::now();
    demo.ha_ok("b", &["move"]);
    demo.wait_until("the service moved to head b", TAKEOVER, |s| {
        is_active(s, "b") && is_healthy_passive(s, "a")
    });
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the move to b");
    finish(&demo, w, t_move, 50, "move after resync");
    done("move after resync", t0);
}

/// e. Planned move to B and back under write load: no write fails with MEDIUM ERROR.
#[test]
fn planned_move_and_back() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let w = start_writer(&demo);
    let t_move = Instant::now();
    demo.ha_ok("b", &["move"]);
    demo.wait_until("the service moved to head b", TAKEOVER, |s| {
        is_active(s, "b") && is_healthy_passive(s, "a")
    });
    let t1 = t_move.elapsed();
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the move to b");
    let t_back = Instant::now();
    demo.ha_ok("a", &["move"]);
    demo.wait_until("the service moved back to head a", TAKEOVER, |s| {
        is_active(s, "a") && is_healthy_passive(s, "b")
    });
    let t2 = t_back.elapsed();
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the move back");
    let log = finish(&demo, w, t_move, 100, "planned move");
    eprintln!(
        "planned move: to b in {t1:?} (outage {:?}), back to a in {t2:?} (outage {:?})",
        log.max_gap_between(t_move, Some(t_back)),
        log.max_gap_after(t_back)
    );
    let medium: Vec<_> = log
        .failed()
        .filter(|r| r.sense.is_some_and(|(k, ..)| k == 0x03))
        .collect();
    assert!(
        medium.is_empty(),
        "writes failed with MEDIUM ERROR during a planned move: {medium:?}"
    );
    done("planned move", t0);
}

/// f. Standby of the active head: the service moves to B; `online` leaves it on B.
#[test]
fn standby_and_online() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let w = start_writer(&demo);
    let t_sb = Instant::now();
    demo.ha_ok("a", &["standby"]);
    demo.wait_until(
        "head b runs the service, head a in standby",
        TAKEOVER,
        |s| is_active(s, "b") && service(s, "a") == "passive" && !vip_held(s, "a"),
    );
    let s = demo.status();
    assert_eq!(
        head(&s, "a")["ha"]["standby"].as_bool(),
        Some(true),
        "head a does not say standby: {}",
        head(&s, "a")["ha"]
    );
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the standby");
    demo.ha_ok("a", &["online"]);
    demo.wait_until("head a left standby", TAKEOVER, |s| {
        head(s, "a")["ha"]["standby"].as_bool() == Some(false)
    });
    demo.assert_for(
        "the service stays on head b after `online` on a",
        Duration::from_secs(3),
        |s| is_active(s, "b") && service(s, "a") == "passive" && !vip_held(s, "a"),
    );
    wait_acks(&demo, &w, w.acks() + 20, "20 writes after online");
    finish(&demo, w, t_sb, 70, "standby");
    done("standby", t0);
}

/// g. Monitor failures: the portal IP removed from the active head's eth0 is noticed,
/// the service restarted there (failcount 1, 2); the third failure moves it to B;
/// `ha cleanup` resets the failcount.
#[test]
fn monitor_failures_move_the_service() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let w = start_writer(&demo);
    let t_first = Instant::now();
    let ns_a = demo.ns("a");
    for i in 1..=3u64 {
        demo.ip(&["-n", &ns_a, "addr", "del", VIP_CIDR, "dev", "eth0"]);
        if i < 3 {
            demo.wait_until(
                &format!("head a restarted the service (failcount {i})"),
                TAKEOVER,
                |s| failcount(s, "a") == Some(i) && is_active(s, "a"),
            );
            wait_acks(&demo, &w, w.acks() + 20, "20 writes after the restart");
        } else {
            demo.wait_until(
                "the third failure moved the service to head b",
                TAKEOVER,
                |s| is_active(s, "b") && service(s, "a") == "passive" && !vip_held(s, "a"),
            );
        }
    }
    let s = demo.status();
    assert_eq!(failcount(&s, "a"), Some(3), "failcount of head a");
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the move to b");
    demo.ha_ok("a", &["cleanup"]);
    demo.wait_until("`ha cleanup` reset head a's failcount", TAKEOVER, |s| {
        failcount(s, "a") == Some(0) && is_active(s, "b")
    });
    finish(&demo, w, t_first, 90, "monitor");
    done("monitor", t0);
}

/// h. Wait-for-all: both heads killed, only B revived: it stays passive (waiting for the
/// peer) and the portal does not answer; with A back, a head starts the service.
#[test]
fn wait_for_all_after_both_heads_die() {
    let Some(Run { _g, t0, demo }) = begin(DemoOptions::default()) else {
        return;
    };
    let w = start_writer(&demo);
    assert!(demo.kill("a", libc::SIGKILL), "kill -9 head a");
    assert!(demo.kill("b", libc::SIGKILL), "kill -9 head b");
    demo.wait_until("both heads are dead", TAKEOVER, |s| {
        !running(s, "a") && !running(s, "b")
    });
    demo.revive("b");
    demo.wait_until("head b is up and waiting for the peer", REJOIN, |s| {
        running(s, "b") && service(s, "b") == "passive" && waiting(s, "b").contains("wait-for-all")
    });
    demo.assert_for(
        "head b alone stays passive and the portal stays dark",
        Duration::from_secs(4),
        |s| {
            service(s, "b") == "passive"
                && waiting(s, "b").contains("wait-for-all")
                && !vip_held(s, "b")
                && !portal_reachable(s)
        },
    );
    let t_revive = Instant::now();
    demo.revive("a");
    let s = demo.wait_until("a head runs the service again", REJOIN, |s| {
        (is_active(s, "a") || is_active(s, "b")) && portal_reachable(s)
    });
    let act = if is_active(&s, "a") { "a" } else { "b" };
    eprintln!(
        "wait-for-all: head {act} active {:?} after reviving a",
        t_revive.elapsed()
    );
    wait_acks(
        &demo,
        &w,
        w.acks() + 50,
        "50 writes after both heads are back",
    );
    finish(&demo, w, t_revive, 50, "wait-for-all");
    done("wait-for-all", t0);
}

/// Fake OCF resources for a demo (agent [`FAKE_OCF`]): each entry is a name and extra
/// TOML lines of its `[[cluster.resource]]`; its state file is `DIR/{head}-NAME`.
struct FakeResources {
    dir: tempfile::TempDir,
}

impl FakeResources {
    fn new(entries: &[(&str, &str)]) -> FakeResources {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("twinsan-e2e-ocf-")
            .tempdir_in("/dev/shm")
            .expect("tempdir");
        let agent = dir.path().join("fake-agent");
        std::fs::write(&agent, FAKE_OCF).expect("write agent");
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut toml = String::new();
        for (name, extra) in entries {
            toml += &format!(
                "[[cluster.resource]]\nname = \"{name}\"\nagent = \"{}\"\nmonitor_interval_ms = 500\n{extra}[cluster.resource.params]\nstate = \"{}/{{head}}-{name}\"\n\n",
                agent.display(),
                dir.path().display(),
            );
        }
        std::fs::write(dir.path().join("resources.toml"), toml).expect("write resources");
        FakeResources { dir }
    }

    /// The `--resources` file.
    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("resources.toml")
    }

    /// Resource `r`'s state file on head `h` (present = running).
    fn state(&self, h: &str, r: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{h}-{r}"))
    }

    /// The starts and stops resource `r` saw on head `h`.
    fn ops(&self, h: &str, r: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{h}-{r}.log")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Resource `r` in head `h`'s status.
fn rsc(s: &serde_json::Value, h: &str, r: &str) -> serde_json::Value {
    head(s, h)["ha"]["resources"]
        .as_array()
        .and_then(|v| v.iter().find(|x| x["name"] == r).cloned())
        .unwrap_or(serde_json::Value::Null)
}

/// Resource `r`'s state on head `h` ("" when unknown).
fn rstate(s: &serde_json::Value, h: &str, r: &str) -> String {
    rsc(s, h, r)["state"].as_str().unwrap_or("").to_string()
}

/// A test OCF agent: `OCF_RESKEY_state` is its "running" file; every start and stop
/// appends a line to `$OCF_RESKEY_state.log`.
const FAKE_OCF: &str = r#"#!/bin/sh
st="$OCF_RESKEY_state"
case "$1" in
meta-data)
cat <<'XML'
<?xml version="1.0"?>
<resource-agent name="Fake" version="0.1">
<version>1.1</version>
<shortdesc lang="en">Test agent: a state file</shortdesc>
<parameters>
<parameter name="state" required="1" unique="1"><content type="string"/></parameter>
</parameters>
<actions>
<action name="start" timeout="5s"/>
<action name="stop" timeout="5s"/>
<action name="monitor" timeout="5s" interval="1s"/>
<action name="meta-data" timeout="5s"/>
<action name="validate-all" timeout="5s"/>
</actions>
</resource-agent>
XML
exit 0 ;;
validate-all) [ -n "$st" ] || exit 6; exit 0 ;;
start) echo start >> "$st.log"; touch "$st"; exit 0 ;;
stop) echo stop >> "$st.log"; rm -f "$st"; exit 0 ;;
monitor) [ -f "$st" ] && exit 0; exit 7 ;;
*) exit 3 ;;
esac
"#;

/// The resource policy on real heads: a clone on both heads, two ordered resources
/// with the service, one away from it. A monitor failure restarts only the failed
/// resource and the one after it (the service and its writes stay on head a); the
/// operator stops and starts a resource (the peer adopts the target role); the failure that reaches the resource's
/// migration threshold moves the whole service to head b, and the away-from-service
/// resource changes sides with it; `ha cleanup` forgets the failures.
#[test]
fn resource_policy_restarts_members_in_place_then_moves_the_service() {
    let fake = FakeResources::new(&[
        ("shared", "placement = \"clone\"\n"),
        ("fs", "after = [\"shared\"]\nmigration_threshold = 2\n"),
        ("app", "after = [\"fs\"]\n"),
        ("backup", "placement = \"away-from-service\"\n"),
    ]);
    let Some(Run { _g, t0, demo }) = begin(DemoOptions {
        resources: Some(fake.file()),
        ..DemoOptions::default()
    }) else {
        return;
    };
    let state = |h: &str, r: &str| fake.state(h, r);
    let ops = |h: &str, r: &str| fake.ops(h, r);
    let placed = |s: &serde_json::Value, a: bool, b: bool| {
        let on = |h: &str, r: &str| rstate(s, h, r) == "running" && state(h, r).exists();
        let off = |h: &str, r: &str| rstate(s, h, r) == "stopped" && !state(h, r).exists();
        let (act, pas) = if a { ("a", "b") } else { ("b", "a") };
        let _ = b;
        on("a", "shared")
            && on("b", "shared")
            && on(act, "fs")
            && on(act, "app")
            && off(pas, "fs")
            && off(pas, "app")
            && on(pas, "backup")
            && off(act, "backup")
    };
    demo.wait_until(
        "clone on both heads, fs+app on a, backup on b",
        TAKEOVER,
        |s| placed(s, true, false),
    );
    let w = start_writer(&demo);
    let t_first = Instant::now();

    // 1. fs fails its monitor on a: app stops, fs restarts, app starts; the service
    //    stays on a.
    std::fs::remove_file(state("a", "fs")).expect("break fs");
    demo.wait_until("fs restarted on head a (failcount 1)", TAKEOVER, |s| {
        rsc(s, "a", "fs")["failcount"].as_u64() == Some(1) && placed(s, true, false)
    });
    assert_eq!(ops("a", "fs"), ["start", "stop", "start"], "fs on a");
    assert_eq!(
        ops("a", "app"),
        ["start", "stop", "start"],
        "app follows fs"
    );
    assert_eq!(ops("a", "shared"), ["start"], "the clone is not touched");
    let s = demo.status();
    assert!(
        is_active(&s, "a") && vip_held(&s, "a"),
        "the service stayed on a"
    );
    assert_eq!(failcount(&s, "a"), Some(0), "no service-level failure");
    wait_acks(
        &demo,
        &w,
        w.acks() + 20,
        "20 writes after the restart of fs",
    );

    // 2. The operator stops app, then starts it again.
    demo.ha_ok("a", &["resource", "app", "stop"]);
    demo.wait_until("app stopped on a, and head b knows", TAKEOVER, |s| {
        rstate(s, "a", "app") == "stopped"
            && rsc(s, "a", "app")["target_role"] == "stopped"
            && !state("a", "app").exists()
            && rsc(s, "b", "app")["target_role"] == "stopped"
    });
    let out = demo.ha("a", &["resource", "nope", "stop"]);
    assert!(!out.status.success(), "an unknown resource is refused");
    assert!(
        twinsan_e2e::ha::out_text(&out).contains("no resource named"),
        "{}",
        twinsan_e2e::ha::out_text(&out)
    );
    demo.ha_ok("a", &["resource", "app", "start"]);
    demo.wait_until("app running again on a, and head b knows", TAKEOVER, |s| {
        placed(s, true, false) && rsc(s, "b", "app")["target_role"] == "started"
    });

    // 3. The second failure of fs reaches its migration threshold: the whole service
    //    moves to b; backup changes sides.
    std::fs::remove_file(state("a", "fs")).expect("break fs again");
    demo.wait_until(
        "the service moved to b with fs and app; backup on a",
        TAKEOVER,
        |s| is_active(s, "b") && !vip_held(s, "a") && placed(s, false, true),
    );
    let s = demo.status();
    assert_eq!(rsc(&s, "a", "fs")["banned_here"], true, "fs banned on a");
    assert!(
        head(&s, "a")["ha"]["banned"]
            .as_str()
            .unwrap_or("")
            .contains("fs"),
        "head a says why: {}",
        head(&s, "a")["ha"]
    );
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the move to b");

    // 4. Cleanup forgets the failures; the service stays on b (stickiness).
    demo.ha_ok("a", &["cleanup"]);
    demo.wait_until("fs failures forgotten on a", TAKEOVER, |s| {
        rsc(s, "a", "fs")["failcount"].as_u64() == Some(0) && head(s, "a")["ha"]["banned"].is_null()
    });
    demo.assert_for(
        "the service stays on b after cleanup",
        Duration::from_secs(2),
        |s| is_active(s, "b") && placed(s, false, true),
    );
    let out = twinsan_e2e::ha::run_bounded(
        std::process::Command::new(twinsan_e2e::twinsan_bin()).args([
            "status",
            "--control",
            &demo.control("b").display().to_string(),
        ]),
        Duration::from_secs(20),
    )
    .expect("twinsan status");
    let text = twinsan_e2e::ha::out_text(&out);
    assert!(
        text.contains("resource fs (with-service): running")
            && text.contains("resource backup (away-from-service): stopped"),
        "`twinsan status` lists the resources:\n{text}"
    );
    let text = demo.status_text();
    assert!(
        text.contains("resources: shared running, fs running, app running, backup stopped"),
        "`demo status` lists head b's resources:\n{text}"
    );
    finish(&demo, w, t_first, 70, "resources");
    drop(demo);
    done("resources", t0);
}

/// A resource with `on_fail = "fence"` fails on the active head: the head leaves at
/// once (no orderly stop), the other head fences it and takes over with the resource;
/// no acknowledged write is lost.
#[test]
fn resource_on_fail_fence_hands_the_service_to_the_peer() {
    let fake = FakeResources::new(&[("guard", "on_fail = \"fence\"\n")]);
    let Some(Run { _g, t0, demo }) = begin(DemoOptions {
        resources: Some(fake.file()),
        ..DemoOptions::default()
    }) else {
        return;
    };
    demo.wait_until("guard runs on head a", TAKEOVER, |s| {
        rstate(s, "a", "guard") == "running" && rstate(s, "b", "guard") == "stopped"
    });
    let w = start_writer(&demo);
    let t_fail = Instant::now();
    std::fs::remove_file(fake.state("a", "guard")).expect("break guard");
    demo.wait_until(
        "head a left, head b fenced it and runs the service with guard",
        TAKEOVER,
        |s| {
            !running(s, "a")
                && is_active(s, "b")
                && rstate(s, "b", "guard") == "running"
                && fake.state("b", "guard").exists()
        },
    );
    let s = demo.status();
    assert!(
        !head(&s, "b")["ha"]["last_fence"].is_null(),
        "head b fenced head a: {}",
        head(&s, "b")["ha"]
    );
    wait_acks(&demo, &w, w.acks() + 50, "50 writes after the takeover");
    finish(&demo, w, t_fail, 50, "on-fail fence");
    done("on-fail fence", t0);
}
