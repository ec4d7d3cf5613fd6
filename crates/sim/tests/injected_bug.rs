//! The simulator must catch deliberately planted replication bugs: a checker that
//! cannot fail proves nothing. Run with
//! `cargo test -p twinsan-sim --features bug-injection --test injected_bug`.
#![cfg(feature = "bug-injection")]

use twinsan_replication::replica::InjectedBug;
use twinsan_replication::types::Protocol;
use twinsan_sim::{run, Scenario, SimConfig};

/// First seed (of up to `max`) on which `bug` is caught, with the violation.
fn first_catch(scenario: Scenario, bug: InjectedBug, max: u64) -> Option<(u64, String)> {
    (1..=max).find_map(|seed| {
        let mut cfg = SimConfig::for_seed(seed);
        cfg.scenario = scenario;
        cfg.protocol = Protocol::C;
        cfg.bug = Some(bug);
        let out = run(cfg);
        out.violations.first().map(|v| (seed, v.clone()))
    })
}

#[test]
fn acking_before_the_peer_is_caught() {
    let caught = first_catch(Scenario::Failover, InjectedBug::AckBeforePeer, 500);
    let (seed, v) = caught.expect("acking protocol-C writes before the peer ack went unnoticed");
    println!("caught on seed {seed}: {v}");
    assert!(
        v.contains("durable acknowledged sectors lost") || v.contains("differ"),
        "{v}"
    );
}

#[test]
fn skipping_the_generation_rotation_is_caught() {
    let caught = first_catch(Scenario::SplitBrain, InjectedBug::NoRotation, 500);
    let (seed, v) = caught.expect("a split brain without new generations went unnoticed");
    println!("caught on seed {seed}: {v}");
}
