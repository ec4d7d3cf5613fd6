use super::*;
use crate::quorum::{QuorumState, Reason};

fn q(has: bool, reason: Reason, fence: bool) -> QuorumState {
    QuorumState {
        has_quorum: has,
        reason,
        needs_fencing: fence,
        wait_for_all_satisfied: !matches!(reason, Reason::WaitingForPeer),
    }
}

fn visible() -> QuorumState {
    q(true, Reason::PeerVisible, false)
}

fn lost_no_witness() -> QuorumState {
    q(true, Reason::PeerLost, true)
}

fn drain(m: &mut Manager) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn ops(m: &mut Manager) -> Vec<Action> {
    drain(m)
        .into_iter()
        .filter(|a| !matches!(a, Action::Event(_) | Action::Summary { .. }))
        .collect()
}

fn cluster(alive: bool, quorum: QuorumState, peer: u32) -> Input {
    Input::Cluster {
        peer_alive: alive,
        quorum,
        peer_summary: Some(peer),
        peer_boot: Some(1),
    }
}

fn node(id: u8, peer: u8, fencing: bool) -> Manager {
    let mut c = ManagerConfig::new(id, peer);
    c.fencing_configured = fencing;
    c.monitor_interval_ms = 0;
    let mut m = Manager::new(c);
    m.handle(0, Input::CanRun(true));
    m
}

fn active(id: u8, peer: u8, fencing: bool) -> Manager {
    let mut m = node(id, peer, fencing);
    m.assume_active(0);
    drain(&mut m);
    m
}

const PEER_PASSIVE: u32 = SUMMARY_CAN_RUN;
const PEER_ACTIVE: u32 = SUMMARY_CAN_RUN | SUMMARY_ACTIVE;

#[test]
fn a_lone_head_that_never_saw_its_peer_waits() {
    let mut m = node(1, 2, true);
    m.handle(
        10,
        cluster(false, q(false, Reason::WaitingForPeer, false), 0),
    );
    m.handle(60_000, Input::Tick);
    assert!(ops(&mut m).is_empty());
    assert_eq!(m.state(), ServiceState::Passive);
    assert!(m.status().waiting.unwrap().contains("wait-for-all"));
}

#[test]
fn with_both_heads_up_only_the_preferred_head_starts() {
    let mut a = node(1, 2, true);
    let mut b = node(2, 1, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    b.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert_eq!(ops(&mut a), vec![Action::Start { takeover: false }]);
    assert!(ops(&mut b).is_empty());
    // A location score overrides the node id.
    let mut c = ManagerConfig::new(2, 1);
    c.location_score = 100;
    let mut b = Manager::new(c);
    b.handle(0, Input::CanRun(true));
    b.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: false }]);
}

#[test]
fn a_head_that_cannot_promote_leaves_the_service_to_the_peer() {
    let mut a = node(1, 2, true);
    a.handle(5, Input::CanRun(false));
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert!(ops(&mut a).is_empty());
    // The peer sees CAN_RUN missing and starts although it is not preferred.
    let mut b = node(2, 1, true);
    b.handle(10, cluster(true, visible(), 0));
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: false }]);
}

#[test]
fn the_passive_head_fences_after_its_delay_then_takes_over() {
    let mut b = node(2, 1, true);
    b.handle(10, cluster(true, visible(), PEER_ACTIVE));
    assert!(ops(&mut b).is_empty());
    b.handle(1000, cluster(false, lost_no_witness(), PEER_ACTIVE));
    assert!(ops(&mut b).is_empty(), "fence delay first");
    assert_eq!(b.next_timeout_ms(), Some(2000));
    b.handle(2000, Input::Tick);
    assert_eq!(ops(&mut b), vec![Action::FencePeer]);
    assert_eq!(b.state(), ServiceState::Fencing);
    b.handle(
        2100,
        Input::FenceDone {
            ok: true,
            report: "off".into(),
        },
    );
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: true }]);
    b.handle(
        2200,
        Input::OpDone {
            op: Op::Start,
            ok: true,
            message: String::new(),
        },
    );
    assert_eq!(b.state(), ServiceState::Active);
}

#[test]
fn a_failed_fence_blocks_the_takeover_and_is_retried() {
    let mut b = node(2, 1, true);
    b.handle(10, cluster(true, visible(), PEER_ACTIVE));
    b.handle(100, cluster(false, lost_no_witness(), PEER_ACTIVE));
    b.handle(1100, Input::Tick);
    assert_eq!(ops(&mut b), vec![Action::FencePeer]);
    b.handle(
        1200,
        Input::FenceDone {
            ok: false,
            report: "exit 1".into(),
        },
    );
    assert!(ops(&mut b).is_empty(), "no takeover after a failed fence");
    assert!(b.status().last_fence.unwrap().contains("exit 1"));
    b.handle(1700, Input::Tick);
    assert!(ops(&mut b).is_empty());
    b.handle(2200, Input::Tick);
    assert_eq!(ops(&mut b), vec![Action::FencePeer], "retried");
}

#[test]
fn without_a_fence_agent_or_witness_a_lost_peer_is_not_taken_over() {
    let mut b = node(2, 1, false);
    b.handle(10, cluster(true, visible(), PEER_ACTIVE));
    b.handle(100, cluster(false, lost_no_witness(), PEER_ACTIVE));
    b.handle(10_000, Input::Tick);
    assert!(ops(&mut b).is_empty());
    assert!(b.status().waiting.unwrap().contains("no fence agent"));
}

#[test]
fn the_witness_vote_settles_a_partition_without_fencing() {
    let mut b = node(2, 1, true);
    b.handle(10, cluster(true, visible(), PEER_ACTIVE));
    b.handle(
        100,
        cluster(false, q(false, Reason::AwaitingWitness, false), PEER_ACTIVE),
    );
    assert!(ops(&mut b).is_empty());
    b.handle(
        900,
        cluster(
            false,
            q(true, Reason::WitnessGranted { term: 3 }, false),
            PEER_ACTIVE,
        ),
    );
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: true }]);
}

#[test]
fn the_active_head_without_quorum_stops_but_holds_while_it_is_pending() {
    let mut a = active(1, 2, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    a.handle(
        100,
        cluster(
            false,
            q(false, Reason::AwaitingWitness, false),
            PEER_PASSIVE,
        ),
    );
    assert!(ops(&mut a).is_empty(), "transient: hold");
    a.handle(
        900,
        cluster(
            false,
            q(false, Reason::WitnessDenied { holder: Some(2) }, false),
            PEER_PASSIVE,
        ),
    );
    assert_eq!(ops(&mut a), vec![Action::Stop]);
}

#[test]
fn the_active_head_fences_a_lost_peer_at_once_and_keeps_running() {
    let mut a = active(1, 2, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    a.handle(100, cluster(false, lost_no_witness(), PEER_PASSIVE));
    assert_eq!(ops(&mut a), vec![Action::FencePeer]);
    assert_eq!(a.state(), ServiceState::Active);
    a.handle(
        200,
        Input::FenceDone {
            ok: true,
            report: "off".into(),
        },
    );
    a.handle(300, Input::Tick);
    assert!(ops(&mut a).is_empty(), "fenced once");
    assert!(a.status().peer_fenced);
}

#[test]
fn a_planned_move_stops_here_then_starts_on_the_peer_and_moves_back() {
    let mut a = active(1, 2, true);
    let mut b = node(2, 1, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    b.handle(10, cluster(true, visible(), a.summary()));
    assert!(ops(&mut a).is_empty());
    assert!(ops(&mut b).is_empty());
    // The operator moves the service on the head it should go to; A learns it from
    // B's heartbeat bits.
    b.handle(20, Input::Admin(AdminCmd::Move { here: true }));
    a.handle(30, cluster(true, visible(), b.summary()));
    assert_eq!(ops(&mut a), vec![Action::Stop]);
    b.handle(50, cluster(true, visible(), a.summary()));
    assert!(ops(&mut b).is_empty(), "waits until A has stopped");
    a.handle(
        60,
        Input::OpDone {
            op: Op::Stop,
            ok: true,
            message: String::new(),
        },
    );
    b.handle(70, cluster(true, visible(), a.summary()));
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: false }]);
    b.handle(
        80,
        Input::OpDone {
            op: Op::Start,
            ok: true,
            message: String::new(),
        },
    );
    // A does not start again although preferred.
    a.handle(90, cluster(true, visible(), b.summary()));
    assert!(ops(&mut a).is_empty());
    // Move back (on A), and it goes back.
    a.handle(100, Input::Admin(AdminCmd::Move { here: true }));
    b.handle(110, cluster(true, visible(), a.summary()));
    assert_eq!(ops(&mut b), vec![Action::Stop]);
}

#[test]
fn monitor_failures_restart_then_move_the_service_after_the_threshold() {
    let mut a = active(1, 2, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    for round in 0..3 {
        a.handle(
            100 + round,
            Input::MonitorFailed {
                resource: "target".into(),
                message: "portal closed".into(),
            },
        );
        assert_eq!(ops(&mut a), vec![Action::Stop], "round {round}");
        a.handle(
            200 + round,
            Input::OpDone {
                op: Op::Stop,
                ok: true,
                message: String::new(),
            },
        );
        let o = ops(&mut a);
        if round < 2 {
            assert_eq!(o, vec![Action::Start { takeover: false }], "restart");
            a.handle(
                300 + round,
                Input::OpDone {
                    op: Op::Start,
                    ok: true,
                    message: String::new(),
                },
            );
        } else {
            assert!(o.is_empty(), "threshold reached: stays stopped");
        }
    }
    let st = a.status();
    assert!(st.failed_here);
    assert_ne!(a.summary() & SUMMARY_MOVE_AWAY, 0);
    // The peer takes it.
    let mut b = node(2, 1, true);
    b.handle(400, cluster(true, visible(), a.summary()));
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: false }]);
    // Cleanup makes A eligible again.
    a.handle(500, Input::Admin(AdminCmd::Cleanup));
    assert!(!a.status().failed_here);
}

#[test]
fn a_failed_stop_blocks_and_cleanup_retries_the_stop() {
    let mut a = active(1, 2, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    a.handle(20, Input::Admin(AdminCmd::Standby));
    assert_eq!(ops(&mut a), vec![Action::Stop]);
    a.handle(
        30,
        Input::OpDone {
            op: Op::Stop,
            ok: false,
            message: "demote refused".into(),
        },
    );
    assert_eq!(a.state(), ServiceState::Blocked);
    assert_ne!(a.summary() & SUMMARY_ACTIVE, 0, "the peer must not start");
    let mut b = node(2, 1, true);
    b.handle(40, cluster(true, visible(), a.summary()));
    assert!(ops(&mut b).is_empty());
    a.handle(50, Input::Admin(AdminCmd::Cleanup));
    assert_eq!(ops(&mut a), vec![Action::Stop]);
}

#[test]
fn both_active_after_a_healed_partition_the_higher_id_stops() {
    let mut a = active(1, 2, true);
    let mut b = active(2, 1, true);
    a.handle(10, cluster(true, visible(), PEER_ACTIVE));
    b.handle(10, cluster(true, visible(), PEER_ACTIVE));
    assert!(ops(&mut a).is_empty());
    assert_eq!(ops(&mut b), vec![Action::Stop]);
}

#[test]
fn maintenance_mode_watches_only() {
    let mut b = node(2, 1, true);
    b.handle(5, Input::Admin(AdminCmd::Maintenance(true)));
    b.handle(10, cluster(true, visible(), PEER_ACTIVE));
    b.handle(100, cluster(false, lost_no_witness(), PEER_ACTIVE));
    b.handle(10_000, Input::Tick);
    assert!(ops(&mut b).is_empty());
}

#[test]
fn a_head_that_leaves_cleanly_is_taken_over_without_fencing() {
    let mut a = active(1, 2, true);
    let mut b = node(2, 1, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    b.handle(10, cluster(true, visible(), a.summary()));
    a.handle(20, Input::Admin(AdminCmd::Leave));
    assert_eq!(ops(&mut a), vec![Action::Stop]);
    a.handle(
        30,
        Input::OpDone {
            op: Op::Stop,
            ok: true,
            message: String::new(),
        },
    );
    assert_ne!(a.summary() & SUMMARY_LEAVING, 0);
    b.handle(40, cluster(true, visible(), a.summary()));
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: false }]);
    b.handle(
        50,
        Input::OpDone {
            op: Op::Start,
            ok: true,
            message: String::new(),
        },
    );
    // A's heartbeats stop: B does not fence it.
    b.handle(700, cluster(false, lost_no_witness(), a.summary()));
    b.handle(5000, Input::Tick);
    assert!(ops(&mut b).is_empty());
}

#[test]
fn a_fenced_peer_that_reboots_is_not_fenced_again_before_it_is_alive() {
    let mut a = active(1, 2, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    a.handle(100, cluster(false, lost_no_witness(), PEER_PASSIVE));
    assert_eq!(ops(&mut a), vec![Action::FencePeer]);
    a.handle(
        200,
        Input::FenceDone {
            ok: true,
            report: "off".into(),
        },
    );
    // Its first heartbeat of a new boot arrives before it proves life (echo).
    a.handle(
        5000,
        Input::Cluster {
            peer_alive: false,
            quorum: lost_no_witness(),
            peer_summary: Some(0),
            peer_boot: Some(2),
        },
    );
    assert!(ops(&mut a).is_empty(), "fenced again while rejoining");
    a.handle(5100, cluster(true, visible(), PEER_PASSIVE));
    assert!(ops(&mut a).is_empty());
    assert!(!a.status().peer_fenced);
    // Lost again later: fenced again.
    a.handle(9000, cluster(false, lost_no_witness(), PEER_PASSIVE));
    assert_eq!(ops(&mut a), vec![Action::FencePeer]);
}

#[test]
fn a_resource_banned_here_moves_the_service_and_the_peer_takes_it() {
    let mut a = active(1, 2, true);
    a.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert!(ops(&mut a).is_empty());
    a.handle(
        20,
        Input::Banned(Some("resource fs failed 3 times here".into())),
    );
    assert_eq!(ops(&mut a), vec![Action::Stop]);
    a.handle(
        30,
        Input::OpDone {
            op: Op::Stop,
            ok: true,
            message: String::new(),
        },
    );
    let st = a.status();
    assert_eq!(st.state, ServiceState::Passive);
    assert!(st.waiting.unwrap().contains("resource fs"));
    let bits = a.summary();
    assert_eq!(bits & SUMMARY_CAN_RUN, 0, "says it cannot run the service");
    assert_ne!(bits & SUMMARY_MOVE_AWAY, 0);
    // The peer, though not preferred, starts.
    let mut b = node(2, 1, true);
    b.handle(40, cluster(true, visible(), bits));
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: false }]);
    // Cleared (cleanup of the resource): head a may run it again, stays passive.
    a.handle(50, cluster(true, visible(), PEER_ACTIVE));
    a.handle(60, Input::Banned(None));
    assert!(ops(&mut a).is_empty());
    assert_ne!(a.summary() & SUMMARY_CAN_RUN, 0);
}

#[test]
fn service_on_fail_policies() {
    let fail = Input::MonitorFailed {
        resource: "portal IP".into(),
        message: "address missing".into(),
    };
    let with = |on_fail| {
        let mut c = ManagerConfig::new(1, 2);
        c.fencing_configured = true;
        c.monitor_interval_ms = 0;
        c.on_fail = on_fail;
        let mut m = Manager::new(c);
        m.handle(0, Input::CanRun(true));
        m.assume_active(0);
        m.handle(10, cluster(true, visible(), PEER_PASSIVE));
        drain(&mut m);
        m
    };
    // demote: stop here at the first failure, the peer promotes; cleanup clears.
    let mut a = with(ServiceOnFail::Demote);
    a.handle(20, fail.clone());
    assert_eq!(ops(&mut a), vec![Action::Stop]);
    a.handle(
        30,
        Input::OpDone {
            op: Op::Stop,
            ok: true,
            message: String::new(),
        },
    );
    assert!(ops(&mut a).is_empty(), "not restarted here");
    assert!(a.status().failed_here);
    assert!(a.status().waiting.unwrap().contains("cleanup"));
    let mut b = node(2, 1, true);
    b.handle(40, cluster(true, visible(), a.summary()));
    assert_eq!(ops(&mut b), vec![Action::Start { takeover: false }]);
    a.handle(50, Input::Admin(AdminCmd::Cleanup));
    assert!(!a.status().failed_here);

    // standby.
    let mut a = with(ServiceOnFail::Standby);
    a.handle(20, fail.clone());
    assert_eq!(ops(&mut a), vec![Action::Stop]);
    assert!(a.status().standby);

    // fence: leave at once.
    let mut a = with(ServiceOnFail::Fence);
    a.handle(20, fail.clone());
    assert_eq!(ops(&mut a), vec![Action::Suicide]);

    // block: nothing more, the peer does not take over, cleanup stops.
    let mut a = with(ServiceOnFail::Block);
    a.handle(20, fail.clone());
    assert!(ops(&mut a).is_empty());
    assert_eq!(a.state(), ServiceState::Blocked);
    assert!(a.status().waiting.unwrap().contains("address missing"));
    assert_ne!(
        a.summary() & SUMMARY_ACTIVE,
        0,
        "the peer must not take over"
    );
    a.handle(30, Input::Admin(AdminCmd::Cleanup));
    assert_eq!(ops(&mut a), vec![Action::Stop]);

    // ignore: counted only.
    let mut a = with(ServiceOnFail::Ignore);
    a.handle(20, fail);
    assert!(ops(&mut a).is_empty());
    assert_eq!(a.state(), ServiceState::Active);
    assert_eq!(a.status().failcount, 1);
    assert_eq!(ServiceOnFail::parse("demote"), Some(ServiceOnFail::Demote));
    assert_eq!(ServiceOnFail::parse("explode"), None);
}

#[test]
fn failback_follows_location_scores_beyond_the_stickiness() {
    let mk = |id: u8, peer: u8, mine: i32, theirs: i32, stickiness: i64| {
        let mut c = ManagerConfig::new(id, peer);
        c.fencing_configured = true;
        c.monitor_interval_ms = 0;
        c.location_score = mine;
        c.peer_location_score = theirs;
        c.resource_stickiness = stickiness;
        let mut m = Manager::new(c);
        m.handle(0, Input::CanRun(true));
        m.assume_active(0);
        drain(&mut m);
        m
    };
    // Default stickiness (INFINITY): the service stays where it runs.
    let mut b = mk(2, 1, 0, 100, crate::policy::INFINITY);
    b.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert!(ops(&mut b).is_empty());
    // Stickiness 50 < margin 100: head b hands the service back.
    let mut b = mk(2, 1, 0, 100, 50);
    b.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert_eq!(ops(&mut b), vec![Action::Stop]);
    // Not while the preferred head cannot run it (e.g. still resyncing) or is in standby.
    let mut b = mk(2, 1, 0, 100, 50);
    b.handle(10, cluster(true, visible(), 0));
    b.handle(
        20,
        cluster(true, visible(), SUMMARY_CAN_RUN | SUMMARY_STANDBY),
    );
    assert!(ops(&mut b).is_empty());
    // Stickiness 150 > margin 100: stays.
    let mut b = mk(2, 1, 0, 100, 150);
    b.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert!(ops(&mut b).is_empty());
    // An operator move here beats the scores.
    let mut b = mk(2, 1, 0, 100, 50);
    b.handle(5, Input::Admin(AdminCmd::Move { here: true }));
    b.handle(10, cluster(true, visible(), PEER_PASSIVE));
    assert!(ops(&mut b).is_empty());
}
