use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// A driver that runs the policy's actions against pretend resources: `up` is what
/// really runs; starts/stops succeed unless listed in `fail_start`/`fail_stop`;
/// monitors report `up`, or a failure for names in `broken`.
struct H {
    p: Policy,
    now: u64,
    up: BTreeMap<String, bool>,
    fail_start: BTreeSet<String>,
    fail_stop: BTreeSet<String>,
    broken: BTreeSet<String>,
    ops: Vec<String>,
    escalations: Vec<Action>,
    events: Vec<String>,
    monitors: usize,
}

impl H {
    fn new(defs: &[ResourceDef]) -> H {
        H {
            p: Policy::new(defs).expect("valid definitions"),
            now: 0,
            up: BTreeMap::new(),
            fail_start: BTreeSet::new(),
            fail_stop: BTreeSet::new(),
            broken: BTreeSet::new(),
            ops: Vec::new(),
            escalations: Vec::new(),
            events: Vec::new(),
            monitors: 0,
        }
    }

    fn ctx(&mut self, service_here: bool, service_on_peer: bool, online: bool) {
        self.input(Input::Context(Context {
            service_here,
            service_on_peer,
            online,
            maintenance: false,
        }));
    }

    fn input(&mut self, i: Input) {
        self.p.handle(self.now, i);
        self.drain();
    }

    fn drain(&mut self) {
        for _ in 0..1000 {
            let Some(a) = self.p.poll_action() else {
                return;
            };
            match a {
                Action::Start(n) => {
                    self.ops.push(format!("start {n}"));
                    let ok = !self.fail_start.contains(&n);
                    if ok {
                        self.up.insert(n.clone(), true);
                    }
                    self.p.handle(
                        self.now,
                        Input::OpDone {
                            resource: n,
                            op: RscOp::Start,
                            ok,
                            message: if ok { String::new() } else { "exit 1".into() },
                        },
                    );
                }
                Action::Stop(n) => {
                    self.ops.push(format!("stop {n}"));
                    let ok = !self.fail_stop.contains(&n);
                    if ok {
                        self.up.insert(n.clone(), false);
                        self.broken.remove(&n);
                    }
                    self.p.handle(
                        self.now,
                        Input::OpDone {
                            resource: n,
                            op: RscOp::Stop,
                            ok,
                            message: if ok { String::new() } else { "exit 1".into() },
                        },
                    );
                }
                Action::Monitor(n) => {
                    self.monitors += 1;
                    let result = if self.broken.contains(&n) {
                        MonitorResult::Failed("exit 1 (generic error)".into())
                    } else if self.up.get(&n).copied().unwrap_or(false) {
                        MonitorResult::Running
                    } else {
                        MonitorResult::NotRunning
                    };
                    self.p.handle(
                        self.now,
                        Input::MonitorDone {
                            resource: n,
                            result,
                        },
                    );
                }
                Action::Event(e) => self.events.push(e),
                a @ (Action::Standby(_) | Action::SelfFence(_)) => self.escalations.push(a),
            }
        }
        panic!("the policy does not settle");
    }

    /// Let `ms` pass in steps of at most 100 ms.
    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now = (self.now + 100).min(end);
            self.input(Input::Tick);
        }
    }

    fn phase(&self, name: &str) -> Phase {
        self.status(name).phase
    }

    fn status(&self, name: &str) -> ResourceStatus {
        self.p
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .expect("resource")
    }

    fn is_up(&self, name: &str) -> bool {
        self.up.get(name).copied().unwrap_or(false)
    }

    fn take_ops(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ops)
    }
}

fn with_service(name: &str, after: &[&str]) -> ResourceDef {
    let mut d = ResourceDef::new(name, Placement::WithService);
    d.after = after.iter().map(|s| s.to_string()).collect();
    d
}

fn of(placement: Placement, name: &str) -> ResourceDef {
    let mut d = ResourceDef::new(name, placement);
    d.required = false;
    d
}

#[test]
fn scores_saturate_and_minus_infinity_wins() {
    assert_eq!(Score::parse("INFINITY"), Ok(Score::INFINITY));
    assert_eq!(Score::parse("+infinity"), Ok(Score::INFINITY));
    assert_eq!(Score::parse(" -INFINITY "), Ok(Score::MINUS_INFINITY));
    assert_eq!(Score::parse("250").map(Score::value), Ok(250));
    assert_eq!(Score::parse("-7").map(Score::value), Ok(-7));
    assert_eq!(Score::parse("99999999"), Ok(Score::INFINITY));
    assert!(matches!(
        Score::parse("lots"),
        Err(PolicyError::BadScore(_))
    ));
    assert!(matches!(Score::parse(""), Err(PolicyError::BadScore(_))));
    assert_eq!(
        Score::INFINITY.plus(Score::MINUS_INFINITY),
        Score::MINUS_INFINITY
    );
    assert_eq!(
        Score::MINUS_INFINITY.plus(Score::INFINITY),
        Score::MINUS_INFINITY
    );
    assert_eq!(Score::INFINITY.plus(Score::new(-500)), Score::INFINITY);
    assert_eq!(Score::new(999_999).plus(Score::new(5)), Score::INFINITY);
    assert_eq!(Score::new(100).plus(Score::new(-30)).value(), 70);
    assert_eq!(Score::INFINITY.to_string(), "INFINITY");
    assert_eq!(Score::MINUS_INFINITY.to_string(), "-INFINITY");
    assert_eq!(Score::new(-3).to_string(), "-3");
}

#[test]
fn validation_names_what_is_wrong() {
    let bad = |defs: &[ResourceDef]| validate(defs).unwrap_err();
    assert!(matches!(
        bad(&[with_service("a", &[]), with_service("a", &[])]),
        PolicyError::DuplicateName(n) if n == "a"
    ));
    assert!(matches!(
        bad(&[with_service("a b", &[])]),
        PolicyError::BadName(_)
    ));
    assert!(matches!(
        bad(&[with_service("", &[])]),
        PolicyError::BadName(_)
    ));
    assert!(matches!(
        bad(&[with_service("a", &["nope"])]),
        PolicyError::UnknownAfter { after, .. } if after == "nope"
    ));
    let e = bad(&[
        with_service("a", &["c"]),
        with_service("b", &["a"]),
        with_service("c", &["b"]),
        with_service("d", &[]),
    ]);
    assert_eq!(e, PolicyError::Cycle("a, b, c".into()));
    assert!(matches!(
        bad(&[with_service("a", &["a"])]),
        PolicyError::Cycle(_)
    ));
    let mut away = of(Placement::AwayFromService, "backup");
    away.after = vec!["fs".into()];
    let e = bad(&[with_service("fs", &[]), away]);
    assert!(matches!(e, PolicyError::AfterAcrossPlacement { .. }), "{e}");
    assert!(e.to_string().contains("backup"), "{e}");
    let mut clone = of(Placement::Clone, "dlm");
    clone.required = true;
    assert_eq!(
        bad(&[clone]),
        PolicyError::RequiredNotWithService("dlm".into())
    );
    assert!(Placement::parse("everywhere").is_err());
    assert!(OnFail::parse("panic")
        .unwrap_err()
        .to_string()
        .contains("restart"));
    assert!(TargetRole::parse("master").is_err());
}

#[test]
fn start_order_follows_constraints_and_keeps_the_configured_order_otherwise() {
    let mut clone = of(Placement::Clone, "dlm");
    clone.after = vec![];
    let order = validate(&[
        with_service("fs", &["dlm"]),
        with_service("nfs", &["fs", "ip2"]),
        with_service("ip2", &[]),
        clone,
    ])
    .expect("valid");
    let names: Vec<&str> = order.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["ip2", "dlm", "fs", "nfs"]);
}

#[test]
fn nothing_starts_before_every_probe_answered_and_running_resources_are_adopted() {
    let mut h = H::new(&[with_service("fs", &[]), with_service("app", &["fs"])]);
    h.up.insert("fs".into(), true);
    // Probes are issued at once but answered only when the driver drains; hold them.
    h.p.handle(
        0,
        Input::Context(Context {
            service_here: true,
            service_on_peer: false,
            online: true,
            maintenance: false,
        }),
    );
    let mut first = Vec::new();
    while let Some(a) = h.p.poll_action() {
        first.push(a);
    }
    assert!(
        first
            .iter()
            .all(|a| !matches!(a, Action::Start(_) | Action::Stop(_))),
        "an operation before the probes answered: {first:?}"
    );
    assert_eq!(
        first
            .iter()
            .filter(|a| matches!(a, Action::Monitor(_)))
            .count(),
        2,
        "{first:?}"
    );
    for n in ["fs", "app"] {
        let result = if h.is_up(n) {
            MonitorResult::Running
        } else {
            MonitorResult::NotRunning
        };
        h.input(Input::MonitorDone {
            resource: n.into(),
            result,
        });
    }
    assert_eq!(h.take_ops(), ["start app"], "fs was found running");
    assert_eq!(h.phase("fs"), Phase::Running);
    assert_eq!(h.phase("app"), Phase::Running);
}

#[test]
fn with_service_resources_follow_the_service_in_order() {
    let mut h = H::new(&[
        with_service("fs", &[]),
        with_service("db", &["fs"]),
        with_service("web", &["db"]),
    ]);
    h.ctx(false, true, true);
    assert_eq!(h.take_ops(), Vec::<String>::new(), "passive: nothing runs");
    assert!(h.p.with_service_quiet());
    h.ctx(true, false, true);
    assert_eq!(h.take_ops(), ["start fs", "start db", "start web"]);
    assert!(!h.p.with_service_quiet());
    h.ctx(false, false, true);
    assert_eq!(h.take_ops(), ["stop web", "stop db", "stop fs"]);
    assert!(h.p.with_service_quiet(), "the service's own stop may go on");
}

#[test]
fn away_from_service_runs_on_the_passive_head_while_the_peer_serves() {
    let mut h = H::new(&[of(Placement::AwayFromService, "backup")]);
    h.ctx(false, false, true);
    assert!(!h.is_up("backup"), "the peer does not run the service");
    h.ctx(false, true, true);
    assert!(h.is_up("backup"), "the peer serves: run here");
    h.ctx(true, false, true);
    assert!(!h.is_up("backup"), "this head took over: stopped");
    h.ctx(false, true, false);
    assert!(!h.is_up("backup"), "standby: stopped");
}

#[test]
fn clones_run_on_every_online_head_and_order_before_service_resources() {
    let mut h = H::new(&[with_service("fs", &["dlm"]), of(Placement::Clone, "dlm")]);
    h.ctx(false, true, true);
    assert_eq!(h.take_ops(), ["start dlm"]);
    h.ctx(true, false, true);
    assert_eq!(h.take_ops(), ["start fs"]);
    // Standby: the service goes and so does the clone, fs first.
    h.ctx(false, false, false);
    assert_eq!(h.take_ops(), ["stop fs", "stop dlm"]);
}

#[test]
fn monitor_failure_restarts_the_resource_and_those_after_it_then_bans_it() {
    let mut h = H::new(&[
        with_service("fs", &[]),
        with_service("db", &["fs"]),
        with_service("web", &["db"]),
    ]);
    h.ctx(true, false, true);
    h.take_ops();
    for n in 1..=2u32 {
        h.broken.insert("db".into());
        h.advance(2000);
        assert_eq!(
            h.take_ops(),
            ["stop web", "stop db", "start db", "start web"],
            "restart {n}: only db and what follows it"
        );
        let s = h.status("db");
        assert_eq!(s.failcount, n);
        assert_eq!(s.phase, Phase::Running);
        assert!(s
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("generic error"));
        assert!(h.p.service_allowed_here().is_ok());
    }
    h.broken.insert("db".into());
    h.advance(2000);
    assert_eq!(
        h.take_ops(),
        ["stop web", "stop db"],
        "third failure: banned here"
    );
    let s = h.status("db");
    assert!(s.banned_here && !s.wanted_here, "{s:?}");
    let why = h.p.service_allowed_here().unwrap_err();
    assert!(
        why.contains("db") && why.contains("migration threshold"),
        "{why}"
    );
    assert!(h.is_up("fs"), "fs stays until the service moves");
    // The manager moves the service away.
    h.ctx(false, true, true);
    assert_eq!(h.take_ops(), ["stop fs"]);
    // Cleanup forgets the failures: the service may come back.
    h.p.admin(h.now, ResourceCmd::Cleanup(Some("db".into())))
        .expect("known");
    h.drain();
    assert!(h.p.service_allowed_here().is_ok());
    assert_eq!(h.status("db").failcount, 0);
}

#[test]
fn an_optional_member_that_fails_stays_stopped_and_the_service_stays() {
    let mut opt = with_service("report", &[]);
    opt.required = false;
    opt.migration_threshold = 1;
    let mut h = H::new(&[with_service("fs", &[]), opt]);
    h.ctx(true, false, true);
    h.take_ops();
    h.broken.insert("report".into());
    h.advance(2000);
    assert_eq!(h.take_ops(), ["stop report"]);
    assert!(h.status("report").banned_here);
    assert!(
        h.p.service_allowed_here().is_ok(),
        "optional: the service stays"
    );
    assert!(h.is_up("fs"));
}

#[test]
fn on_fail_policies() {
    let mk = |on_fail| {
        let mut d = with_service("r", &[]);
        d.on_fail = on_fail;
        d
    };
    // stop: stopped and left stopped, though not banned.
    let mut h = H::new(&[mk(OnFail::Stop)]);
    h.ctx(true, false, true);
    h.take_ops();
    h.broken.insert("r".into());
    h.advance(2000);
    assert_eq!(h.take_ops(), ["stop r"]);
    h.advance(10_000);
    assert_eq!(h.take_ops(), Vec::<String>::new(), "stays stopped");
    assert!(h.status("r").stopped_by_failure);
    h.p.admin(h.now, ResourceCmd::Cleanup(None)).expect("ok");
    h.drain();
    assert_eq!(h.take_ops(), ["start r"], "cleanup lets it start again");

    // block: no operation at all, not even monitors, until cleanup.
    let mut h = H::new(&[mk(OnFail::Block)]);
    h.ctx(true, false, true);
    h.take_ops();
    h.broken.insert("r".into());
    h.advance(2000);
    h.advance(10_000);
    assert_eq!(h.take_ops(), Vec::<String>::new());
    let s = h.status("r");
    assert!(s.blocked.is_some(), "{s:?}");
    assert!(
        h.p.with_service_quiet(),
        "a blocked resource does not hold the stop"
    );
    let monitors = h.monitors;
    h.advance(10_000);
    assert_eq!(h.monitors, monitors, "no monitors while blocked");

    // ignore: counted, nothing else.
    let mut h = H::new(&[mk(OnFail::Ignore)]);
    h.ctx(true, false, true);
    h.take_ops();
    h.broken.insert("r".into());
    h.advance(2000);
    assert_eq!(h.take_ops(), Vec::<String>::new());
    assert_eq!(h.status("r").failcount, 1);
    assert_eq!(h.status("r").phase, Phase::Running);

    // standby / fence: escalated to the head.
    for (on_fail, want) in [(OnFail::Standby, "standby"), (OnFail::Fence, "fence")] {
        let mut h = H::new(&[mk(on_fail)]);
        h.ctx(true, false, true);
        h.broken.insert("r".into());
        h.advance(2000);
        assert_eq!(h.escalations.len(), 1, "{want}");
        match (&h.escalations[0], on_fail) {
            (Action::Standby(why), OnFail::Standby) | (Action::SelfFence(why), OnFail::Fence) => {
                assert!(why.contains("resource r") && why.contains(want), "{why}")
            }
            (a, _) => panic!("{want}: {a:?}"),
        }
    }
}

#[test]
fn a_failed_start_bans_and_a_failed_stop_blocks() {
    let mut h = H::new(&[with_service("fs", &[]), with_service("app", &["fs"])]);
    h.fail_start.insert("fs".into());
    h.ctx(true, false, true);
    assert_eq!(
        h.take_ops(),
        ["start fs", "stop fs"],
        "cleaned up after the failed start"
    );
    let s = h.status("fs");
    assert!(s.banned_here, "{s:?}");
    assert!(h.p.service_allowed_here().is_err());
    assert!(!h.is_up("app"), "app follows fs");

    let mut h = H::new(&[with_service("fs", &[])]);
    h.ctx(true, false, true);
    h.fail_stop.insert("fs".into());
    h.ctx(false, false, true);
    assert_eq!(h.take_ops(), ["start fs", "stop fs"]);
    let s = h.status("fs");
    assert!(
        s.blocked.as_deref().unwrap_or("").contains("stop failed"),
        "{s:?}"
    );
    h.advance(10_000);
    assert_eq!(h.take_ops(), Vec::<String>::new(), "blocked: not retried");
    h.fail_stop.clear();
    h.p.admin(h.now, ResourceCmd::Cleanup(Some("fs".into())))
        .expect("ok");
    h.drain();
    assert_eq!(
        h.take_ops(),
        ["stop fs"],
        "cleanup probes, finds it running, stops it"
    );
}

#[test]
fn target_role_and_unmanaged_resources() {
    let mut h = H::new(&[with_service("fs", &[]), with_service("app", &["fs"])]);
    h.ctx(true, false, true);
    h.take_ops();
    h.p.admin(h.now, ResourceCmd::Stop("fs".into()))
        .expect("ok");
    h.drain();
    assert_eq!(
        h.take_ops(),
        ["stop app", "stop fs"],
        "what follows fs stops too"
    );
    assert_eq!(h.status("fs").target_role, TargetRole::Stopped);
    assert!(
        h.p.service_allowed_here().is_ok(),
        "a stopped resource does not keep the service away"
    );
    h.p.admin(h.now, ResourceCmd::Start("fs".into()))
        .expect("ok");
    h.drain();
    assert_eq!(h.take_ops(), ["start fs", "start app"]);
    assert_eq!(
        h.p.overrides(),
        vec![Override {
            name: "fs".into(),
            target_role: Some(TargetRole::Started),
            managed: None
        }]
    );

    // Unmanaged: watched (its state follows reality), never touched.
    h.p.admin(h.now, ResourceCmd::Unmanage("app".into()))
        .expect("ok");
    h.drain();
    h.up.insert("app".into(), false);
    h.advance(2000);
    assert_eq!(h.phase("app"), Phase::Stopped);
    h.ctx(false, true, true);
    assert_eq!(h.take_ops(), ["stop fs"], "app is not touched");
    assert_eq!(h.status("app").failcount, 0, "no failures counted");
    h.up.insert("app".into(), true);
    h.advance(2000);
    assert_eq!(h.phase("app"), Phase::Running, "monitored while unmanaged");
    h.p.admin(h.now, ResourceCmd::Manage("app".into()))
        .expect("ok");
    h.drain();
    assert_eq!(
        h.take_ops(),
        ["stop app"],
        "managed again: not wanted here, stopped"
    );
    assert!(matches!(
        h.p.admin(h.now, ResourceCmd::Stop("nope".into())),
        Err(PolicyError::UnknownResource(_))
    ));
}

#[test]
fn maintenance_mode_touches_nothing() {
    let mut h = H::new(&[with_service("fs", &[])]);
    h.ctx(true, false, true);
    h.take_ops();
    h.input(Input::Context(Context {
        service_here: false,
        service_on_peer: false,
        online: true,
        maintenance: true,
    }));
    h.broken.insert("fs".into());
    h.advance(5000);
    assert_eq!(h.take_ops(), Vec::<String>::new());
    assert_eq!(h.status("fs").failcount, 0);
    assert!(!h.status("fs").managed);
}

#[test]
fn failures_expire_after_the_failure_timeout() {
    let mut d = with_service("fs", &[]);
    d.failure_timeout_ms = 60_000;
    let mut h = H::new(&[d]);
    h.ctx(true, false, true);
    h.broken.insert("fs".into());
    h.advance(2000);
    assert_eq!(h.status("fs").failcount, 1);
    assert!(h.p.next_timeout_ms().is_some());
    h.advance(61_000);
    assert_eq!(h.status("fs").failcount, 0);
}

#[test]
fn banned_by_location_and_service_scores() {
    let mut fs = with_service("fs", &[]);
    fs.score_here = Score::MINUS_INFINITY;
    fs.score_peer = Score::new(50);
    let mut h = H::new(&[fs.clone()]);
    h.ctx(true, false, true);
    assert_eq!(h.take_ops(), Vec::<String>::new());
    assert!(h.p.service_allowed_here().unwrap_err().contains("banned"));
    let mut opt = with_service("x", &[]);
    opt.required = false;
    opt.score_here = Score::INFINITY;
    let (here, peer) = service_scores(&[fs, opt], Score::new(100), Score::new(0));
    assert_eq!(here, Score::MINUS_INFINITY);
    assert_eq!(peer.value(), 50, "optional members do not count");
}

/// One step of a random run.
#[derive(Debug, Clone)]
enum Step {
    Ctx(bool, bool, bool, bool),
    Break(usize),
    FailStarts(usize, bool),
    FailStops(usize, bool),
    Admin(u8, usize),
    Wait(u64),
}

fn step_strategy() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            proptest::bool::weighted(0.1)
        )
            .prop_map(|(a, b, c, d)| Step::Ctx(a, b, c, d)),
        (0..5usize).prop_map(Step::Break),
        (0..5usize, proptest::bool::weighted(0.3)).prop_map(|(i, f)| Step::FailStarts(i, f)),
        (0..5usize, proptest::bool::weighted(0.2)).prop_map(|(i, f)| Step::FailStops(i, f)),
        (0..5u8, 0..5usize).prop_map(|(c, i)| Step::Admin(c, i)),
        (0..5000u64).prop_map(Step::Wait),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Whatever happens (context changes, monitor failures, failing starts and stops,
    /// operator commands, time), the policy never starts a resource before what it is
    /// ordered after runs, never stops one while a managed resource ordered after it
    /// still runs, and once the service leaves and nothing fails any more, every
    /// with-service resource is down (or blocked) — so the service's stop can go on.
    #[test]
    fn random_runs_keep_order_and_let_the_service_stop(
        steps in proptest::collection::vec(step_strategy(), 1..60)
    ) {
        let names = ["base", "fs", "app", "side", "backup"];
        let mut base = of(Placement::Clone, "base");
        base.monitor_interval_ms = 700;
        let mut fs = with_service("fs", &["base"]);
        fs.migration_threshold = 2;
        let app = with_service("app", &["fs"]);
        let mut side = with_service("side", &[]);
        side.required = false;
        side.on_fail = OnFail::Stop;
        let backup = of(Placement::AwayFromService, "backup");
        let defs = [base, fs, app, side, backup];
        let deps: Vec<Vec<&str>> = defs
            .iter()
            .map(|d| d.after.iter().map(String::as_str).collect())
            .collect();
        let mut h = H::new(&defs);
        let check = |h: &H, before: usize| {
            // Replay the operations issued since `before` against the truth.
            let _ = before;
            for (i, n) in names.iter().enumerate() {
                let up = h.is_up(n);
                if up {
                    for d in &deps[i] {
                        assert!(
                            h.is_up(d) || !h.status(d).managed,
                            "{n} runs while {d} does not: ops {:?}",
                            h.ops
                        );
                    }
                }
            }
        };
        for s in steps {
            let before = h.ops.len();
            match s {
                Step::Ctx(a, b, c, d) => h.input(Input::Context(Context {
                    service_here: a,
                    service_on_peer: b && !a,
                    online: c,
                    maintenance: d,
                })),
                Step::Break(i) => {
                    h.broken.insert(names[i].into());
                }
                Step::FailStarts(i, f) => {
                    if f {
                        h.fail_start.insert(names[i].into());
                    } else {
                        h.fail_start.remove(names[i]);
                    }
                }
                Step::FailStops(i, f) => {
                    if f {
                        h.fail_stop.insert(names[i].into());
                    } else {
                        h.fail_stop.remove(names[i]);
                    }
                }
                Step::Admin(c, i) => {
                    let n = names[i].to_string();
                    let cmd = match c {
                        0 => ResourceCmd::Start(n),
                        1 => ResourceCmd::Stop(n),
                        2 => ResourceCmd::Manage(n),
                        3 => ResourceCmd::Unmanage(n),
                        _ => ResourceCmd::Cleanup(Some(n)),
                    };
                    h.p.admin(h.now, cmd).expect("known resource");
                    h.drain();
                }
                Step::Wait(ms) => h.advance(ms),
            }
            check(&h, before);
        }
        // The service leaves; failures stop; everything is managed again.
        h.fail_start.clear();
        h.fail_stop.clear();
        h.broken.clear();
        for n in names {
            h.p.admin(h.now, ResourceCmd::Manage(n.into())).expect("known");
        }
        h.drain();
        h.ctx(false, true, true);
        h.advance(5000);
        check(&h, 0);
        assert!(
            h.p.with_service_quiet(),
            "with-service resources still up: {:?}",
            h.p.status()
        );
        for n in ["fs", "app", "side"] {
            let st = h.status(n);
            assert!(!h.is_up(n) || st.stuck, "{n} still runs: {st:?}");
        }
    }
}
