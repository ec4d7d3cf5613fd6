use super::*;
use crate::quorum::{Reason, WitnessClientConfig};
use crate::wire::{decode, Message};

const CLUSTER: [u8; 16] = *b"twinsan-cluster1";
const SECRET: &[u8] = b"correct horse battery staple";

fn cfg(node: u8, peer: u8, witness: bool) -> HaConfig {
    HaConfig {
        membership: MembershipConfig::new(CLUSTER, node, peer, 1),
        quorum: QuorumConfig {
            witness: witness.then(WitnessClientConfig::default),
            ..QuorumConfig::default()
        },
    }
}

fn drain(n: &mut HaNode) -> Vec<Action> {
    std::iter::from_fn(|| n.poll_action()).collect()
}

/// Run two nodes joined by perfect zero-delay links (every 10 ms of virtual time).
fn exchange(a: &mut HaNode, b: &mut HaNode, from_ms: u64, to_ms: u64) -> [Vec<Event>; 2] {
    let mut events = [Vec::new(), Vec::new()];
    let mut now = from_ms;
    while now <= to_ms {
        let mut pending: Vec<(usize, Action)> = Vec::new();
        for (i, n) in [&mut *a, &mut *b].into_iter().enumerate() {
            n.handle(now, Input::Tick);
            pending.extend(drain(n).into_iter().map(|x| (i, x)));
        }
        while let Some((from, act)) = pending.pop() {
            match act {
                Action::Send { link, bytes } => {
                    let to = if from == 0 { &mut *b } else { &mut *a };
                    to.handle(now, Input::Datagram { link, bytes });
                    pending.extend(drain(to).into_iter().map(|x| (1 - from, x)));
                }
                Action::SendWitness { .. } => {}
                Action::Event(e) => events[from].push(e),
            }
        }
        now += 10;
    }
    events
}

#[test]
fn configuration_is_validated_as_a_whole() {
    let mut c = cfg(1, 2, true);
    c.membership.links = 0;
    assert_eq!(
        HaNode::new(c, SECRET).unwrap_err().to_string(),
        "links: 0 links; 1 to 8 are supported"
    );
    let mut c = cfg(1, 2, true);
    if let Some(w) = c.quorum.witness.as_mut() {
        w.request_interval_ms = 1;
    }
    assert!(HaNode::new(c, SECRET).is_err());
    assert_eq!(
        HaNode::new(cfg(1, 2, false), b"too short")
            .unwrap_err()
            .to_string(),
        "cluster secret is 9 bytes; at least 16 are required"
    );
}

#[test]
fn two_nodes_come_up_together() {
    let mut a = HaNode::new(cfg(1, 2, true), SECRET).unwrap();
    let mut b = HaNode::new(cfg(2, 1, true), SECRET).unwrap();
    assert_eq!(a.quorum_state().reason, Reason::WaitingForPeer);
    let ev = exchange(&mut a, &mut b, 0, 1000);
    for (n, ev) in [(&a, &ev[0]), (&b, &ev[1])] {
        assert!(n.peer_alive());
        assert_eq!(n.quorum_state().reason, Reason::PeerVisible);
        assert!(ev.contains(&Event::PeerUp));
        assert!(ev.contains(&Event::LinkUp { link: 0 }));
        assert!(ev.contains(&Event::LinkUp { link: 1 }));
        assert!(ev
            .iter()
            .any(|e| matches!(e, Event::QuorumChanged(s) if s.has_quorum)));
        let st = n.status();
        assert!(st.membership.peer_alive);
        assert!(st.quorum.state.has_quorum);
        let pv = st.membership.peer_view.unwrap();
        assert!(pv.sees_peer && pv.has_quorum && pv.wait_for_all_satisfied);
        assert!(!pv.quorum_without_peer);
    }
}

#[test]
fn the_local_view_travels_to_the_peer() {
    let mut a = HaNode::new(cfg(1, 2, false), SECRET).unwrap();
    let mut b = HaNode::new(cfg(2, 1, false), SECRET).unwrap();
    exchange(&mut a, &mut b, 0, 500);
    a.handle(
        500,
        Input::SetLocalView {
            role_summary: 0xABCD,
            active: true,
        },
    );
    drain(&mut a);
    exchange(&mut a, &mut b, 510, 800);
    assert_eq!(
        b.status().membership.peer_view.unwrap().role_summary,
        0xABCD
    );
    assert!(a.status().quorum.active);
}

#[test]
fn losing_the_peer_asks_the_witness_and_timeouts_cover_it() {
    let mut a = HaNode::new(cfg(1, 2, true), SECRET).unwrap();
    let mut b = HaNode::new(cfg(2, 1, true), SECRET).unwrap();
    exchange(&mut a, &mut b, 0, 1000);
    a.handle(
        1000,
        Input::SetLocalView {
            role_summary: 1,
            active: true,
        },
    );
    drain(&mut a);
    // b falls silent; a keeps ticking at its own timeouts.
    let mut now = 1000;
    let mut asked = None;
    while now < 3000 && asked.is_none() {
        now = a.next_timeout_ms();
        a.handle(now, Input::Tick);
        for act in drain(&mut a) {
            if let Action::SendWitness { bytes } = act {
                let key = ClusterKey::new(SECRET).unwrap();
                let Ok(Message::VoteRequest(r)) = decode(&bytes, &key) else {
                    panic!("not a vote request")
                };
                assert!(!r.release && r.sender == 1);
                asked = Some(now);
            }
        }
    }
    let asked = asked.unwrap();
    assert!((1500..=1610).contains(&asked), "{asked}");
    assert!(!a.peer_alive());
    assert_eq!(a.quorum_state().reason, Reason::AwaitingWitness);
    // The next timeout is the renewal, not the next heartbeat.
    assert_eq!(a.next_timeout_ms(), asked + 100);
}

#[test]
fn the_action_queue_is_bounded() {
    let mut a = HaNode::new(cfg(1, 2, false), SECRET).unwrap();
    for t in 0..2000 {
        a.handle(t * 100, Input::Tick);
    }
    assert_eq!(drain(&mut a).len(), ACTIONS_MAX);
}
