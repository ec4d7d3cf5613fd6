//! Hand-written scenarios for two `HaNode`s (+ witness) in the simulated world; the
//! world checks its invariants after every step.

mod common;

use common::{Path, SimCfg, World};
use twinsan_ha::quorum::Reason;
use twinsan_ha::Event;

fn world(witness: bool) -> World {
    let mut w = World::new(SimCfg {
        witness,
        ..SimCfg::new(1)
    });
    if witness {
        w.start_witness();
    }
    w.start_node(0);
    w.start_node(1);
    w.run_until(1000);
    assert!(w.mutual());
    w.set_active(0, true);
    w
}

fn first_quorum_after(w: &mut World, i: usize, from: u64, end: u64) -> Option<u64> {
    while w.now < end {
        if w.has_quorum(i) && w.now >= from && w.reason(i) != Some(Reason::PeerVisible) {
            return Some(w.now);
        }
        w.step(end);
    }
    None
}

fn ok(w: &World) {
    assert!(w.violations.is_empty(), "{:#?}", w.violations);
}

#[test]
fn startup_needs_no_witness_traffic() {
    let mut w = world(true);
    w.run_until(2000);
    ok(&w);
    assert!(w.mutual());
    assert!(w.has_quorum(0) && w.has_quorum(1));
    let st = w.witness.as_ref().unwrap().status();
    assert_eq!(st.nodes[0].1.requests + st.nodes[1].1.requests, 0);
    for i in 0..2 {
        let s = w.nodes[i].node.as_ref().unwrap().status();
        assert!(s.membership.links.iter().all(|l| l.up));
        assert_eq!(s.quorum.state.reason, Reason::PeerVisible);
    }
}

#[test]
fn a_lone_node_waits_for_its_peer() {
    for witness in [true, false] {
        let mut w = World::new(SimCfg {
            witness,
            ..SimCfg::new(2)
        });
        if witness {
            w.start_witness();
        }
        w.start_node(0);
        w.run_until(30_000);
        ok(&w);
        assert!(!w.has_quorum(0));
        assert_eq!(w.reason(0), Some(Reason::WaitingForPeer));
        w.start_node(1);
        w.run_until(30_500);
        ok(&w);
        assert!(w.has_quorum(0) && w.has_quorum(1), "witness {witness}");
    }
}

#[test]
fn a_partition_with_witness_gives_quorum_to_the_active_side_only() {
    let mut w = world(true);
    w.run_until(2000);
    w.set_all_links(Path::CUT);
    let t = first_quorum_after(&mut w, 0, 2000, 10_000);
    w.run_until(10_000);
    ok(&w);
    assert!(w.has_quorum(0) && !w.has_quorum(1));
    assert!(matches!(w.reason(0), Some(Reason::WitnessGranted { .. })));
    assert_eq!(w.reason(1), Some(Reason::WitnessDenied { holder: Some(1) }));
    let t = t.unwrap();
    println!("partition at 2000: node 0 quorate again at {t}");
    assert!(t <= 2000 + 600 + 50 + 20, "{t}");
    // Heal: both see each other, the vote is given back.
    w.set_all_links(Path::GOOD);
    w.run_until(11_000);
    ok(&w);
    assert!(w.mutual());
    assert_eq!(w.witness.as_ref().unwrap().status().holder, None);
}

#[test]
fn a_partition_without_witness_leaves_it_to_fencing() {
    let mut w = world(false);
    w.run_until(2000);
    w.set_all_links(Path::CUT);
    w.run_until(5000);
    ok(&w);
    for i in 0..2 {
        let s = w.nodes[i].node.as_ref().unwrap().quorum_state();
        assert!(s.has_quorum && s.needs_fencing);
        assert_eq!(s.reason, Reason::PeerLost);
    }
}

#[test]
fn failover_after_the_active_node_dies() {
    for witness in [true, false] {
        let mut w = world(witness);
        w.run_until(2000);
        w.crash_node(0);
        // Quorum held all along without a witness; with one it lapses until the vote.
        let mut lost_at = None;
        while w.now < 6000 {
            if !w.has_quorum(1) && lost_at.is_none() {
                lost_at = Some(w.now);
            }
            if w.reason(1) != Some(Reason::PeerVisible) && w.has_quorum(1) {
                break;
            }
            w.step(6000);
        }
        ok(&w);
        let t = w.now - 2000;
        println!("witness {witness}: survivor may take over {t} ms after the crash");
        assert!(w.has_quorum(1));
        if witness {
            assert!(lost_at.is_some());
            // Detection (<= 600) + the inactive side's deferral (200) + round trip,
            // and the peer-view expiry (last receipt + 600 + 50).
            assert!(t <= 600 + 200 + 20, "{t}");
            assert!(matches!(w.reason(1), Some(Reason::WitnessGranted { .. })));
        } else {
            assert!(lost_at.is_none());
            assert!(t <= 600, "{t}");
            assert_eq!(w.reason(1), Some(Reason::PeerLost));
        }
    }
}

#[test]
fn a_one_way_failure_of_every_link_is_a_partition() {
    let mut w = world(true);
    w.run_until(2000);
    for l in 0..2 {
        w.set_link(l, 1, Path::CUT);
    }
    w.run_until(6000);
    ok(&w);
    assert!(!w.peer_alive(0) && !w.peer_alive(1));
    assert!(w.has_quorum(0) && !w.has_quorum(1));
}

#[test]
fn the_side_that_reaches_the_witness_wins() {
    let mut w = world(true);
    w.run_until(2000);
    w.set_witness_paths(0, Path::CUT);
    w.set_all_links(Path::CUT);
    w.run_until(6000);
    ok(&w);
    assert!(!w.has_quorum(0) && w.has_quorum(1));
    assert_eq!(w.reason(0), Some(Reason::WitnessUnreachable));
}

#[test]
fn a_single_link_failure_changes_nothing_but_the_link() {
    let mut w = world(true);
    w.run_until(2000);
    w.set_link(0, 0, Path::CUT);
    w.set_link(0, 1, Path::CUT);
    w.run_until(20_000);
    ok(&w);
    assert!(w.mutual());
    for i in 0..2 {
        let ev = &w.nodes[i].events;
        assert!(ev.iter().any(|e| e.1 == Event::LinkDown { link: 0 }));
        assert!(!ev.iter().any(|e| e.1 == Event::PeerDown));
    }
}

#[test]
fn a_quick_peer_restart_is_seen_as_one() {
    let mut w = world(true);
    w.run_until(2000);
    w.crash_node(1);
    w.run_until(2200);
    w.start_node(1);
    assert_eq!(w.reason(1), Some(Reason::WaitingForPeer));
    w.run_until(4000);
    ok(&w);
    let ev = &w.nodes[0].events;
    assert!(ev.iter().any(|e| e.1 == Event::PeerRebooted { boot: 2 }));
    assert!(w.mutual());
}

#[test]
fn flapping_links_after_a_witness_decision_never_give_two_quorate_sides() {
    // The heal after a witness decision is the delicate moment: the holder must stop
    // counting the vote before the other side counts it as visible. Flap the links
    // (each direction independently) around that moment, many times.
    for seed in 0..20 {
        let mut w = world(true);
        w.run_until(2000);
        w.set_all_links(Path::CUT);
        w.run_until(4000);
        assert!(w.has_quorum(0) && !w.has_quorum(1));
        let mut r = twinsan_sim::Rng::new(seed);
        while w.now < 14_000 {
            let l = r.range(0, 2) as usize;
            let from = r.range(0, 2) as usize;
            let p = if r.chance(50) { Path::GOOD } else { Path::CUT };
            w.set_link(l, from, p);
            let next = w.now + r.range(30, 400);
            w.run_until(next);
        }
        w.set_all_links(Path::GOOD);
        w.run_until(15_000);
        ok(&w);
        assert!(w.mutual(), "seed {seed}");
    }
}
