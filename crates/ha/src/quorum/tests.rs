use super::*;
use crate::wire::{decode, VoteReply};

const CLUSTER: [u8; 16] = *b"twinsan-cluster1";
const SECRET: &[u8] = b"correct horse battery staple";

fn key() -> ClusterKey {
    ClusterKey::new(SECRET).unwrap()
}

fn facts(alive: bool, confirms_us: bool, seen: bool, view_expiry_ms: u64) -> PeerFacts {
    PeerFacts {
        alive,
        confirms_us,
        seen_since_start: seen,
        view_expiry_ms,
    }
}

const VISIBLE: PeerFacts = PeerFacts {
    alive: true,
    confirms_us: true,
    seen_since_start: true,
    view_expiry_ms: u64::MAX,
};

/// A quorum under test, with the requests it sent and the states it reported.
struct T {
    q: Quorum,
    sent: Vec<(u64, VoteRequest)>,
    changes: Vec<(u64, QuorumState)>,
}

impl T {
    fn new(cfg: QuorumConfig) -> Self {
        T {
            q: Quorum::new(cfg, CLUSTER, 1, 5, SECRET).unwrap(),
            sent: Vec::new(),
            changes: Vec::new(),
        }
    }

    fn with_witness() -> Self {
        Self::new(QuorumConfig {
            witness: Some(WitnessClientConfig::default()),
            ..QuorumConfig::default()
        })
    }

    fn step(&mut self, now: u64, input: Input) -> QuorumState {
        self.q.handle(now, input);
        while let Some(a) = self.q.poll_action() {
            match a {
                Action::SendWitness { bytes } => {
                    let Ok(Message::VoteRequest(r)) = decode(&bytes, &key()) else {
                        panic!("not a vote request")
                    };
                    self.sent.push((now, r));
                }
                Action::Changed(s) => self.changes.push((now, s)),
            }
        }
        self.q.state()
    }

    fn facts(&mut self, now: u64, f: PeerFacts) -> QuorumState {
        self.step(now, Input::Peer(f))
    }

    /// Answer request number `i` (0-based) as the witness would.
    fn answer(
        &mut self,
        now: u64,
        i: usize,
        status: VoteStatus,
        holder: Option<u8>,
    ) -> QuorumState {
        let bytes = self.reply(i, status, holder, 7).encode(&key()).to_vec();
        self.step(now, Input::WitnessDatagram(bytes))
    }

    fn reply(&self, i: usize, status: VoteStatus, holder: Option<u8>, term: u64) -> VoteReply {
        VoteReply {
            cluster_id: CLUSTER,
            to: 1,
            witness_boot: 1,
            echo: self.sent[i].1.stamp,
            status,
            holder,
            term,
            lease_ms: 500,
            timestamp_ms: 0,
        }
    }

    fn requests(&self) -> usize {
        self.sent.iter().filter(|(_, r)| !r.release).count()
    }
}

#[test]
fn wait_for_all_blocks_a_node_that_never_saw_its_peer() {
    for witness in [false, true] {
        let mut t = if witness {
            T::with_witness()
        } else {
            T::new(QuorumConfig::default())
        };
        for now in (0..60_000).step_by(100) {
            let s = t.facts(now, facts(false, false, false, now + 650));
            assert!(!s.has_quorum);
            assert_eq!(s.reason, Reason::WaitingForPeer);
            assert!(!s.wait_for_all_satisfied);
        }
        // Never asked the witness: it could not help.
        assert!(t.sent.is_empty());
        assert_eq!(t.q.next_timeout_ms(), None);
        // The peer shows up: satisfied for good.
        let s = t.facts(60_000, VISIBLE);
        assert!(s.has_quorum && s.wait_for_all_satisfied);
        assert_eq!(s.reason, Reason::PeerVisible);
    }
}

#[test]
fn two_node_mode_keeps_quorum_on_peer_loss_and_asks_for_fencing() {
    let mut t = T::new(QuorumConfig::default());
    assert_eq!(t.q.state().reason, Reason::WaitingForPeer);
    t.facts(0, VISIBLE);
    let s = t.facts(1000, facts(false, false, true, 1650));
    assert_eq!(
        s,
        QuorumState {
            has_quorum: true,
            reason: Reason::PeerLost,
            needs_fencing: true,
            wait_for_all_satisfied: true,
        }
    );
    let s = t.facts(2000, VISIBLE);
    assert!(s.has_quorum && !s.needs_fencing);
    // Only changes are reported.
    t.facts(2100, VISIBLE);
    assert_eq!(t.changes.len(), 3);
}

#[test]
fn without_wait_for_all_a_lone_node_has_quorum_but_must_fence() {
    let mut t = T::new(QuorumConfig {
        wait_for_all: false,
        ..QuorumConfig::default()
    });
    let s = t.facts(0, facts(false, false, false, 650));
    assert!(s.has_quorum && s.needs_fencing && s.wait_for_all_satisfied);
    assert_eq!(s.reason, Reason::PeerLost);
}

#[test]
fn witness_vote_gives_quorum_once_the_peer_view_expired() {
    let mut t = T::with_witness();
    t.step(0, Input::SetActive(true));
    t.facts(0, VISIBLE);
    assert!(t.sent.is_empty());
    // Peer lost at 1000; it may see us until 1200.
    let s = t.facts(1000, facts(false, false, true, 1200));
    assert_eq!(s.reason, Reason::AwaitingWitness);
    assert!(!s.has_quorum);
    assert_eq!(t.requests(), 1);
    assert_eq!(t.sent[0].1.stamp, Stamp { boot: 5, seq: 1 });
    let s = t.answer(1002, 0, VoteStatus::Granted, Some(1));
    assert_eq!(s.reason, Reason::PeerViewExpiring { until_ms: 1200 });
    assert!(!s.has_quorum);
    assert_eq!(t.q.next_timeout_ms(), Some(1100));
    let s = t.step(1199, Input::Tick);
    assert!(!s.has_quorum);
    let s = t.step(1200, Input::Tick);
    assert!(s.has_quorum && !s.needs_fencing);
    assert_eq!(s.reason, Reason::WitnessGranted { term: 7 });
    // Lease counted from the request's send time (1000).
    assert_eq!(t.q.status().witness.unwrap().lease, Some((7, 1500)));
    // Our heartbeats now tell the peer not to count us as seeing it.
    let v = t.q.local_view();
    assert!(v.has_quorum && v.quorum_without_peer && v.wait_for_all_satisfied);
    t.facts(1300, VISIBLE);
    let v = t.q.local_view();
    assert!(v.has_quorum && !v.quorum_without_peer);
}

#[test]
fn renewals_keep_the_vote_and_a_lapsed_lease_loses_quorum() {
    let mut t = T::with_witness();
    t.step(0, Input::SetActive(true));
    t.facts(0, VISIBLE);
    t.facts(1000, facts(false, false, true, 1000));
    t.answer(1001, 0, VoteStatus::Granted, Some(1));
    assert!(t.q.state().has_quorum);
    // Renewals go out every 100 ms; answer them for a while.
    for now in (1100..3000).step_by(100) {
        t.step(now, Input::Tick);
        let i = t.sent.len() - 1;
        assert!(
            t.answer(now + 1, i, VoteStatus::Granted, Some(1))
                .has_quorum
        );
    }
    assert_eq!(t.requests(), 20);
    // The witness goes silent: the lease from the request sent at 2900 ends at 3400.
    for now in (3000..3400).step_by(100) {
        assert!(t.step(now, Input::Tick).has_quorum);
    }
    assert_eq!(t.q.next_timeout_ms(), Some(3400));
    let s = t.step(3400, Input::Tick);
    assert!(!s.has_quorum);
    assert_eq!(s.reason, Reason::AwaitingWitness);
    // No answer at all for the decision timeout since the peer was lost? The last
    // reply was at 2901, so unreachable from 3901.
    assert_eq!(t.step(3900, Input::Tick).reason, Reason::AwaitingWitness);
    assert_eq!(t.step(3901, Input::Tick).reason, Reason::WitnessUnreachable);
    // A grant after the lapse needs the peer-view expiry again, which has passed.
    let i = t.sent.len() - 1;
    assert!(t.answer(3950, i, VoteStatus::Granted, Some(1)).has_quorum);
}

#[test]
fn a_denied_node_has_no_quorum() {
    let mut t = T::with_witness();
    t.facts(0, VISIBLE);
    t.facts(1000, facts(false, false, true, 1000));
    // Inactive: the first request waits 200 ms.
    assert_eq!(t.requests(), 0);
    assert_eq!(t.q.next_timeout_ms(), Some(1200));
    t.step(1199, Input::Tick);
    assert_eq!(t.requests(), 0);
    t.step(1200, Input::Tick);
    assert_eq!(t.requests(), 1);
    let s = t.answer(1201, 0, VoteStatus::Denied, Some(2));
    assert_eq!(s.reason, Reason::WitnessDenied { holder: Some(2) });
    assert!(!s.has_quorum);
    // It keeps asking (the holder may die).
    t.step(1300, Input::Tick);
    assert_eq!(t.requests(), 2);
    let s = t.answer(1301, 1, VoteStatus::Granted, Some(1));
    assert!(s.has_quorum);
}

#[test]
fn no_answer_means_unreachable_after_the_decision_timeout() {
    let mut t = T::with_witness();
    t.step(0, Input::SetActive(true));
    t.facts(0, VISIBLE);
    t.facts(1000, facts(false, false, true, 1000));
    assert_eq!(t.step(1999, Input::Tick).reason, Reason::AwaitingWitness);
    assert_eq!(t.step(2000, Input::Tick).reason, Reason::WitnessUnreachable);
    assert_eq!(t.requests(), 2);
    assert!(Reason::AwaitingWitness.is_transient());
    assert!(!Reason::WitnessUnreachable.is_transient());
}

#[test]
fn the_vote_is_released_when_the_peer_is_visible_again() {
    let mut t = T::with_witness();
    t.step(0, Input::SetActive(true));
    t.facts(0, VISIBLE);
    t.facts(1000, facts(false, false, true, 1000));
    t.answer(1001, 0, VoteStatus::Granted, Some(1));
    assert!(t.q.state().has_quorum);
    // The peer comes back but does not confirm us yet: the counted vote still holds
    // and is renewed.
    let s = t.facts(1100, facts(true, false, true, 1800));
    assert_eq!(s.reason, Reason::WitnessGranted { term: 7 });
    assert_eq!(t.requests(), 2);
    // Mutual again: release.
    let s = t.facts(1150, VISIBLE);
    assert_eq!(s.reason, Reason::PeerVisible);
    let (at, last) = t.sent.last().unwrap();
    assert!(last.release && *at == 1150);
    assert_eq!(t.q.status().witness.unwrap().lease, None);
    // A grant arriving late (for the renewal) is given back at once.
    t.answer(1160, 1, VoteStatus::Granted, Some(1));
    assert!(t.sent.last().unwrap().1.release);
    assert_eq!(t.q.status().witness.unwrap().lease, None);
    assert_eq!(t.q.state().reason, Reason::PeerVisible);
}

#[test]
fn an_unconfirmed_peer_gives_no_quorum_and_no_witness_traffic() {
    let mut t = T::with_witness();
    t.step(0, Input::SetActive(true));
    let s = t.facts(0, facts(true, false, true, 650));
    assert!(!s.has_quorum && s.wait_for_all_satisfied);
    assert_eq!(s.reason, Reason::AwaitingPeerConfirmation);
    assert!(t.sent.is_empty());
    // Without a witness an alive peer is enough.
    let mut t = T::new(QuorumConfig::default());
    assert!(t.facts(0, facts(true, false, true, 650)).has_quorum);
}

#[test]
fn replies_are_matched_to_recent_requests_only() {
    let mut t = T::with_witness();
    t.step(0, Input::SetActive(true));
    t.facts(0, VISIBLE);
    t.facts(1000, facts(false, false, true, 1000));
    t.step(1100, Input::Tick);
    assert_eq!(t.requests(), 2);
    let grant1 = t
        .reply(1, VoteStatus::Granted, Some(1), 7)
        .encode(&key())
        .to_vec();
    let grant0 = t
        .reply(0, VoteStatus::Granted, Some(1), 7)
        .encode(&key())
        .to_vec();
    assert!(
        t.step(1101, Input::WitnessDatagram(grant1.clone()))
            .has_quorum
    );
    // The same reply again, and the older request's reply after the newer one.
    t.step(1102, Input::WitnessDatagram(grant1));
    t.step(1103, Input::WitnessDatagram(grant0));
    // A reply to a request never sent, one for another node, one for another
    // cluster, one with a bad MAC, one from a previous boot of ours.
    let mut never = t.reply(1, VoteStatus::Granted, Some(1), 7);
    never.echo.seq = 40;
    let other_node = VoteReply {
        to: 2,
        holder: Some(2),
        ..t.reply(1, VoteStatus::Granted, Some(2), 7)
    };
    let other_cluster = VoteReply {
        cluster_id: [3; 16],
        ..t.reply(1, VoteStatus::Granted, Some(1), 7)
    };
    let mut old_boot = t.reply(1, VoteStatus::Granted, Some(1), 7);
    old_boot.echo.boot = 4;
    let mut tampered = t
        .reply(1, VoteStatus::Granted, Some(1), 7)
        .encode(&key())
        .to_vec();
    tampered[50] ^= 1;
    for bytes in [
        never.encode(&key()).to_vec(),
        other_node.encode(&key()).to_vec(),
        other_cluster.encode(&key()).to_vec(),
        old_boot.encode(&key()).to_vec(),
        tampered,
        b"junk".to_vec(),
    ] {
        t.step(1104, Input::WitnessDatagram(bytes));
    }
    let c = t.q.status().witness.unwrap().counters;
    assert_eq!(c.replies, 1);
    assert_eq!(c.rejected_replay, 4);
    assert_eq!(c.rejected_foreign, 2);
    assert_eq!(c.rejected_mac, 1);
    assert_eq!(c.rejected_malformed, 1);
}

#[test]
fn a_denial_after_a_grant_drops_the_lease() {
    let mut t = T::with_witness();
    t.step(0, Input::SetActive(true));
    t.facts(0, VISIBLE);
    t.facts(1000, facts(false, false, true, 1000));
    t.answer(1001, 0, VoteStatus::Granted, Some(1));
    t.step(1100, Input::Tick);
    let s = t.answer(1101, 1, VoteStatus::Denied, Some(2));
    assert!(!s.has_quorum);
    assert_eq!(s.reason, Reason::WitnessDenied { holder: Some(2) });
}

#[test]
fn no_quorum_policy_parses_the_configuration_spellings() {
    assert_eq!("stop".parse(), Ok(NoQuorumPolicy::Stop));
    assert_eq!("freeze".parse(), Ok(NoQuorumPolicy::Freeze));
    assert_eq!("ignore".parse(), Ok(NoQuorumPolicy::Ignore));
    assert_eq!("suicide".parse(), Ok(NoQuorumPolicy::Suicide));
    for p in NoQuorumPolicy::ALL {
        assert_eq!(p.to_string().parse(), Ok(p));
    }
    assert_eq!(NoQuorumPolicy::default(), NoQuorumPolicy::Stop);
    for bad in ["Stop", "", " stop", "halt", "demote"] {
        let e = bad.parse::<NoQuorumPolicy>().unwrap_err();
        assert_eq!(e, ParsePolicyError(bad.to_string()));
        assert_eq!(
            e.to_string(),
            format!(
                "no-quorum-policy: unknown value {bad:?}; expected one of stop, freeze, \
                 ignore, suicide"
            )
        );
    }
}

#[test]
fn configuration_errors_name_the_field() {
    let bad = |f: fn(&mut WitnessClientConfig)| {
        let mut w = WitnessClientConfig::default();
        f(&mut w);
        let cfg = QuorumConfig {
            witness: Some(w),
            ..QuorumConfig::default()
        };
        Quorum::new(cfg, CLUSTER, 1, 1, SECRET)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        bad(|w| w.request_interval_ms = 0),
        "witness.request_interval_ms: 0 is outside 10..=10000"
    );
    assert_eq!(
        bad(|w| w.decision_timeout_ms = 50),
        "witness.decision_timeout_ms: 50 must be between request_interval_ms (100) and 60000"
    );
    assert_eq!(
        bad(|w| w.defer_inactive_ms = 20_000),
        "witness.defer_inactive_ms: 20000 exceeds 10000"
    );
    assert_eq!(
        Quorum::new(QuorumConfig::default(), CLUSTER, 1, 0, SECRET)
            .unwrap_err()
            .to_string(),
        "boot: the boot counter starts at 1"
    );
}
