use super::*;
use crate::wire::{decode, VoteRequest};

const CLUSTER: [u8; 16] = *b"twinsan-cluster1";
const SECRET: &[u8] = b"correct horse battery staple";

fn key() -> ClusterKey {
    ClusterKey::new(SECRET).unwrap()
}

fn witness(boot: u64) -> Witness {
    Witness::new(WitnessConfig::new(CLUSTER, [1, 2], boot), SECRET).unwrap()
}

/// A node's requests: its own stamp counter.
struct Asker {
    node: u8,
    boot: u64,
    seq: u64,
}

impl Asker {
    fn new(node: u8) -> Self {
        Asker {
            node,
            boot: 1,
            seq: 0,
        }
    }

    fn request(&mut self, release: bool) -> Vec<u8> {
        self.seq += 1;
        VoteRequest {
            cluster_id: CLUSTER,
            sender: self.node,
            stamp: Stamp {
                boot: self.boot,
                seq: self.seq,
            },
            release,
            sees_peer: false,
            role_summary: 0,
            timestamp_ms: 0,
        }
        .encode(&key())
        .to_vec()
    }
}

/// Hand a datagram to the witness; return its reply (decoded) and events.
fn ask(w: &mut Witness, now: u64, bytes: Vec<u8>) -> (Option<VoteReply>, Vec<Event>) {
    w.handle(now, Input::Datagram { bytes });
    let mut reply = None;
    let mut events = Vec::new();
    while let Some(a) = w.poll_action() {
        match a {
            Action::Reply { to, bytes } => {
                let Ok(Message::VoteReply(r)) = decode(&bytes, &key()) else {
                    panic!("bad reply")
                };
                assert_eq!(r.to, to);
                assert!(reply.replace(r).is_none(), "two replies");
            }
            Action::Event(e) => events.push(e),
        }
    }
    (reply, events)
}

fn status(w: &mut Witness, now: u64, a: &mut Asker) -> VoteStatus {
    let req = a.request(false);
    ask(w, now, req).0.expect("no reply").status
}

/// A witness past its startup quiet period (550 ms).
fn ready_witness() -> Witness {
    let mut w = witness(1);
    w.handle(0, Input::Tick);
    w.handle(1000, Input::Tick);
    w
}

#[test]
fn the_vote_goes_to_one_node_only_and_sticks_while_renewed() {
    let mut w = ready_witness();
    let (mut a, mut b) = (Asker::new(1), Asker::new(2));
    let req = a.request(false);
    let (r, ev) = ask(&mut w, 1000, req);
    let r = r.unwrap();
    assert_eq!(r.status, VoteStatus::Granted);
    assert_eq!(r.holder, Some(1));
    assert_eq!(r.term, (1 << 32) | 1);
    assert_eq!(r.lease_ms, 500);
    assert_eq!(r.echo, Stamp { boot: 1, seq: 1 });
    assert_eq!(
        ev,
        vec![Event::Granted {
            node: 1,
            term: r.term
        }]
    );
    // Node 2 is denied, and keeps being denied while node 1 renews, for a long time.
    for t in (1000..20_000).step_by(100) {
        let req = b.request(false);
        let rb = ask(&mut w, t + 50, req).0.unwrap();
        assert_eq!(rb.status, VoteStatus::Denied);
        assert_eq!((rb.holder, rb.term), (Some(1), r.term));
        let req = a.request(false);
        let ra = ask(&mut w, t + 100, req).0.unwrap();
        assert_eq!((ra.status, ra.term), (VoteStatus::Granted, r.term));
    }
    let st = w.status();
    assert_eq!(st.holder, Some((1, r.term, 20_000 + 500)));
    assert_eq!(st.nodes[1].1.denied, 190);
}

#[test]
fn an_unrenewed_lease_expires_and_the_vote_goes_to_the_other_node() {
    let mut w = ready_witness();
    let (mut a, mut b) = (Asker::new(1), Asker::new(2));
    assert_eq!(status(&mut w, 1000, &mut a), VoteStatus::Granted);
    // Lease until 1500, grace until 1550.
    assert_eq!(w.next_timeout_ms(), Some(1550));
    assert_eq!(status(&mut w, 1549, &mut b), VoteStatus::Denied);
    let req = b.request(false);
    let (r, ev) = ask(&mut w, 1550, req);
    let r = r.unwrap();
    assert_eq!(r.status, VoteStatus::Granted);
    assert_eq!(r.term, (1 << 32) | 2);
    assert_eq!(
        ev,
        vec![
            Event::Expired {
                node: 1,
                term: (1 << 32) | 1
            },
            Event::Granted {
                node: 2,
                term: r.term
            }
        ]
    );
    // Node 1 coming back is denied now.
    assert_eq!(status(&mut w, 1600, &mut a), VoteStatus::Denied);
}

#[test]
fn a_tick_reports_the_expiry() {
    let mut w = ready_witness();
    let mut a = Asker::new(1);
    assert_eq!(status(&mut w, 1000, &mut a), VoteStatus::Granted);
    w.handle(1549, Input::Tick);
    assert!(w.poll_action().is_none());
    w.handle(1550, Input::Tick);
    assert!(matches!(
        w.poll_action(),
        Some(Action::Event(Event::Expired { node: 1, .. }))
    ));
    assert_eq!(w.status().holder, None);
    assert_eq!(w.next_timeout_ms(), None);
}

#[test]
fn the_holder_renewing_late_keeps_its_term_until_the_grace_ends() {
    let mut w = ready_witness();
    let mut a = Asker::new(1);
    let req = a.request(false);
    let term = ask(&mut w, 1000, req).0.unwrap().term;
    // Past the lease but within the grace: still the holder, same term.
    let req = a.request(false);
    let r = ask(&mut w, 1520, req).0.unwrap();
    assert_eq!((r.status, r.term), (VoteStatus::Granted, term));
}

#[test]
fn a_release_frees_the_vote_at_once() {
    let mut w = ready_witness();
    let (mut a, mut b) = (Asker::new(1), Asker::new(2));
    assert_eq!(status(&mut w, 1000, &mut a), VoteStatus::Granted);
    // A release by the non-holder changes nothing.
    let req = b.request(true);
    assert_eq!(ask(&mut w, 1010, req), (None, vec![]));
    assert_eq!(status(&mut w, 1020, &mut b), VoteStatus::Denied);
    let req = a.request(true);
    let (r, ev) = ask(&mut w, 1030, req);
    assert!(r.is_none());
    assert!(matches!(ev[..], [Event::Released { node: 1, .. }]));
    assert_eq!(status(&mut w, 1040, &mut b), VoteStatus::Granted);
}

#[test]
fn nothing_is_granted_during_the_startup_quiet_period() {
    let mut w = witness(3);
    let mut a = Asker::new(1);
    w.handle(10_000, Input::Tick);
    let req = a.request(false);
    let r = ask(&mut w, 10_000, req).0.unwrap();
    assert_eq!(
        (r.status, r.holder, r.witness_boot),
        (VoteStatus::NotReady, None, 3)
    );
    assert_eq!(status(&mut w, 10_549, &mut a), VoteStatus::NotReady);
    assert!(!w.status().ready);
    let req = a.request(false);
    let r = ask(&mut w, 10_550, req).0.unwrap();
    assert_eq!(r.status, VoteStatus::Granted);
    // Terms of a later boot are larger than any of an earlier boot.
    assert_eq!(r.term, (3 << 32) | 1);
    assert!(r.term > (2 << 32) | u64::from(u32::MAX));
    assert_eq!(w.status().nodes[0].1.not_ready, 2);
}

#[test]
fn replayed_requests_get_no_answer() {
    let mut w = ready_witness();
    let mut a = Asker::new(1);
    let first = a.request(false);
    assert!(ask(&mut w, 1000, first.clone()).0.is_some());
    assert_eq!(ask(&mut w, 1001, first.clone()), (None, vec![]));
    let second = a.request(false);
    let third = a.request(false);
    assert!(ask(&mut w, 1002, third).0.is_some());
    assert_eq!(ask(&mut w, 1003, second), (None, vec![]));
    assert_eq!(w.status().nodes[0].1.rejected_replay, 2);
    // A restarted node (newer boot) is accepted from seq 1; its old boot is not.
    let mut reborn = Asker {
        node: 1,
        boot: 2,
        seq: 0,
    };
    assert_eq!(status(&mut w, 1004, &mut reborn), VoteStatus::Granted);
    assert_eq!(ask(&mut w, 1005, first), (None, vec![]));
    assert_eq!(w.status().nodes[0].1.rejected_replay, 3);
}

#[test]
fn unauthenticated_foreign_and_malformed_datagrams_get_no_answer() {
    let mut w = ready_witness();
    let mut a = Asker::new(1);
    let mut bad = a.request(false);
    bad[30] ^= 4;
    assert_eq!(ask(&mut w, 1000, bad), (None, vec![]));
    let other_cluster = VoteRequest {
        cluster_id: [0; 16],
        sender: 1,
        stamp: Stamp { boot: 1, seq: 99 },
        release: false,
        sees_peer: false,
        role_summary: 0,
        timestamp_ms: 0,
    };
    assert_eq!(
        ask(&mut w, 1000, other_cluster.encode(&key()).to_vec()),
        (None, vec![])
    );
    let stranger = VoteRequest {
        cluster_id: CLUSTER,
        sender: 3,
        ..other_cluster
    };
    assert_eq!(
        ask(&mut w, 1000, stranger.encode(&key()).to_vec()),
        (None, vec![])
    );
    assert_eq!(ask(&mut w, 1000, vec![0; 88]), (None, vec![]));
    let c = w.status().counters;
    assert_eq!(
        (c.rejected_mac, c.rejected_foreign, c.rejected_malformed),
        (1, 2, 1)
    );
    // None of it disturbed the real node's window or the vote.
    assert_eq!(status(&mut w, 1001, &mut a), VoteStatus::Granted);
}

#[test]
fn configuration_errors_name_the_field() {
    let bad = |f: fn(&mut WitnessConfig)| {
        let mut c = WitnessConfig::new(CLUSTER, [1, 2], 1);
        f(&mut c);
        Witness::new(c, SECRET).unwrap_err().to_string()
    };
    assert_eq!(
        bad(|c| c.node_ids = [1, 1]),
        "node_ids: 1 and 1: two different ids below 255 are required"
    );
    assert_eq!(
        bad(|c| c.lease_ms = 10),
        "lease_ms: 10 is outside 50..=60000"
    );
    assert_eq!(
        bad(|c| c.grace_ms = 501),
        "grace_ms: 501 exceeds lease_ms (500)"
    );
    assert_eq!(bad(|c| c.boot = 0), "boot: 0 is outside 1..=4294967295");
    assert_eq!(
        bad(|c| c.boot = 1 << 32),
        "boot: 4294967296 is outside 1..=4294967295"
    );
}
