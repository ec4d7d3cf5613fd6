use super::*;

pub(crate) const CLUSTER: [u8; 16] = *b"twinsan-cluster1";
pub(crate) const SECRET: &[u8] = b"correct horse battery staple";

fn cfg(node: u8, peer: u8, boot: u64) -> MembershipConfig {
    MembershipConfig::new(CLUSTER, node, peer, boot)
}

fn node(node: u8, peer: u8, boot: u64) -> Membership {
    Membership::new(cfg(node, peer, boot), SECRET).unwrap()
}

/// Two memberships joined by links with a 1 ms delay; `cut[link][dir]` drops
/// datagrams from node `dir` to the other.
struct Pair {
    now: u64,
    m: [Membership; 2],
    cut: Vec<[bool; 2]>,
    flight: Vec<(u64, usize, u8, Vec<u8>)>,
    events: [Vec<(u64, Event)>; 2],
    /// Every datagram sent: (to, link, bytes).
    tap: Vec<(usize, u8, Vec<u8>)>,
}

impl Pair {
    fn new() -> Self {
        Self::with(node(1, 2, 1), node(2, 1, 1))
    }

    fn with(a: Membership, b: Membership) -> Self {
        let links = a.config().links as usize;
        Pair {
            now: 0,
            m: [a, b],
            cut: vec![[false; 2]; links],
            flight: Vec::new(),
            events: [Vec::new(), Vec::new()],
            tap: Vec::new(),
        }
    }

    fn cut_all(&mut self, cut: bool) {
        for c in &mut self.cut {
            *c = [cut; 2];
        }
    }

    fn drain(&mut self, i: usize) {
        while let Some(a) = self.m[i].poll_action() {
            match a {
                Action::Send { link, bytes } => {
                    self.tap.push((1 - i, link, bytes.clone()));
                    if !self.cut[link as usize][i] {
                        self.flight.push((self.now + 1, 1 - i, link, bytes));
                    }
                }
                Action::Event(e) => self.events[i].push((self.now, e)),
            }
        }
    }

    fn deliver(&mut self, to: usize, link: u8, bytes: Vec<u8>) {
        self.m[to].handle(self.now, Input::Datagram { link, bytes });
        self.drain(to);
    }

    fn run_until(&mut self, end: u64) {
        loop {
            let t = self.flight.iter().map(|f| f.0).min().unwrap_or(u64::MAX);
            let t = t
                .min(self.m[0].next_timeout_ms())
                .min(self.m[1].next_timeout_ms());
            if t > end {
                self.now = end;
                return;
            }
            self.now = t;
            let (due, rest) = self
                .flight
                .drain(..)
                .partition::<Vec<_>, _>(|f| f.0 <= self.now);
            self.flight = rest;
            for (_, to, link, bytes) in due {
                self.deliver(to, link, bytes);
            }
            for i in 0..2 {
                if self.m[i].next_timeout_ms() <= self.now {
                    self.m[i].handle(self.now, Input::Tick);
                    self.drain(i);
                }
            }
        }
    }

    fn count(&self, i: usize, e: &Event) -> usize {
        self.events[i].iter().filter(|(_, x)| x == e).count()
    }

    fn last(&self, i: usize, e: &Event) -> Option<u64> {
        self.events[i]
            .iter()
            .rev()
            .find(|(_, x)| x == e)
            .map(|(t, _)| *t)
    }
}

#[test]
fn both_nodes_see_each_other_after_one_round_trip() {
    let mut p = Pair::new();
    p.run_until(1000);
    for i in 0..2 {
        assert!(p.m[i].peer_alive() && p.m[i].peer_seen());
        // Heartbeats at 0 carry no echo; those at 100 echo them: up at 101.
        assert_eq!(p.last(i, &Event::PeerUp), Some(101));
        assert_eq!(p.count(i, &Event::LinkUp { link: 0 }), 1);
        assert_eq!(p.count(i, &Event::LinkUp { link: 1 }), 1);
        let st = p.m[i].status();
        assert!(st.links.iter().all(|l| l.up && l.counters.received == 10));
        assert!(st.links.iter().all(|l| l.counters.sent == 11));
        assert_eq!(st.peer_boot, Some(1));
    }
}

#[test]
fn hearing_the_peer_one_way_does_not_bring_a_link_up() {
    let mut p = Pair::new();
    // Node 0's heartbeats never reach node 1: node 1 never echoes them.
    for c in &mut p.cut {
        c[0] = true;
    }
    p.run_until(3000);
    for i in 0..2 {
        assert!(!p.m[i].peer_alive(), "node {i}");
        assert!(!p.m[i].peer_seen(), "node {i}");
    }
    let st = p.m[0].status();
    assert!(st.links.iter().all(|l| l.counters.received == 30));
    assert!(st.links.iter().all(|l| l.counters.stale_echo == 30));
    // Open the other direction: both come up.
    for c in &mut p.cut {
        c[0] = false;
    }
    p.run_until(3300);
    assert!(p.m[0].peer_alive() && p.m[1].peer_alive());
}

#[test]
fn a_link_failure_alone_is_not_a_node_failure() {
    let mut p = Pair::new();
    p.run_until(1000);
    p.cut[0] = [true, true];
    p.run_until(10_000);
    for i in 0..2 {
        assert!(p.m[i].peer_alive());
        assert_eq!(p.count(i, &Event::LinkDown { link: 0 }), 1);
        assert_eq!(p.count(i, &Event::PeerDown), 0);
        let st = p.m[i].status();
        assert!(!st.links[0].up && st.links[1].up);
    }
    // One direction of the other link fails too: the link is down both ways.
    p.cut[1][1] = true;
    p.run_until(12_000);
    assert!(!p.m[0].peer_alive() && !p.m[1].peer_alive());
    // The first link heals: the peer is back.
    p.cut[0] = [false, false];
    p.run_until(12_300);
    assert!(p.m[0].peer_alive() && p.m[1].peer_alive());
    assert_eq!(p.count(0, &Event::PeerDown), 1);
    assert_eq!(p.count(0, &Event::PeerUp), 2);
}

#[test]
fn a_dead_peer_is_detected_within_the_dead_time() {
    let mut p = Pair::new();
    p.run_until(1050);
    p.cut_all(true);
    p.run_until(5000);
    // The last heartbeat from node 1 (sent at 1000) echoed node 0's of 900.
    assert_eq!(p.last(0, &Event::PeerDown), Some(900 + 600));
    assert_eq!(p.last(1, &Event::PeerDown), Some(1500));
    let st = p.m[0].status();
    assert!(st
        .links
        .iter()
        .all(|l| !l.up && l.last_good_ms == Some(1001)));
    // Our last acceptance was at 1001: the peer stops seeing us by 1001 + 600 (+ margin).
    assert_eq!(p.m[0].peer_view_expiry_ms(), 1001 + 600 + 50);
    assert!(p.m[0].peer_view_expiry_ms() >= p.last(1, &Event::PeerDown).unwrap());
}

#[test]
fn delayed_heartbeats_do_not_extend_liveness() {
    let mut p = Pair::new();
    p.run_until(1050);
    p.cut_all(true);
    let tapped = p.tap.len();
    p.run_until(3000);
    // An attacker holds back node 1's heartbeats sent during the partition and
    // delivers them late, in order: newer than anything accepted, but their echoes
    // are old.
    let held: Vec<_> = p.tap[tapped..]
        .iter()
        .filter(|(to, _, _)| *to == 0)
        .cloned()
        .collect();
    assert!(!held.is_empty());
    for (_, link, bytes) in held {
        p.deliver(0, link, bytes);
    }
    assert!(!p.m[0].peer_alive());
    assert_eq!(p.count(0, &Event::PeerUp), 1);
    let st = p.m[0].status();
    assert!(st.links.iter().all(|l| l.counters.stale_echo > 0));
}

#[test]
fn replayed_and_reordered_heartbeats_are_rejected() {
    let mut p = Pair::new();
    p.run_until(550);
    let to0: Vec<_> = p
        .tap
        .iter()
        .filter(|(to, link, _)| *to == 0 && *link == 0)
        .map(|(_, _, b)| b.clone())
        .collect();
    let before = p.m[0].status().links[0].counters;
    // The newest again (duplicate), and an older one (reorder/replay).
    p.deliver(0, 0, to0[to0.len() - 1].clone());
    p.deliver(0, 0, to0[1].clone());
    let after = p.m[0].status().links[0].counters;
    assert_eq!(after.rejected_replay, before.rejected_replay + 2);
    assert_eq!(after.received, before.received);
    // A heartbeat is only good on its own link.
    p.deliver(0, 1, to0[to0.len() - 1].clone());
    assert_eq!(p.m[0].status().links[1].counters.rejected_foreign, 1);
}

#[test]
fn replay_protection_survives_a_peer_restart() {
    let mut p = Pair::new();
    p.run_until(1000);
    let old: Vec<_> = p
        .tap
        .iter()
        .filter(|(to, _, _)| *to == 0)
        .cloned()
        .collect();
    // Node 1 restarts with the next boot.
    p.m[1] = node(2, 1, 2);
    p.run_until(2000);
    let reboot_at = p.last(0, &Event::PeerRebooted { boot: 2 }).unwrap();
    assert!(p.events[0]
        .iter()
        .any(|(t, e)| *t == reboot_at && *e == Event::PeerDown));
    assert!(p.m[0].peer_alive());
    assert_eq!(p.m[0].status().peer_boot, Some(2));
    // Node 1's old-boot heartbeats are refused, even the newest ones.
    let before: u64 = p.m[0]
        .status()
        .links
        .iter()
        .map(|l| l.counters.rejected_replay)
        .sum();
    for (_, link, bytes) in &old {
        p.deliver(0, *link, bytes.clone());
    }
    let after: u64 = p.m[0]
        .status()
        .links
        .iter()
        .map(|l| l.counters.rejected_replay)
        .sum();
    assert_eq!(after - before, old.len() as u64);
    assert!(p.m[0].peer_alive());
    assert_eq!(p.count(0, &Event::PeerRebooted { boot: 2 }), 1);
}

#[test]
fn replays_into_a_restarted_node_do_not_fake_the_peer() {
    let mut p = Pair::new();
    p.run_until(1000);
    let recorded: Vec<_> = p
        .tap
        .iter()
        .filter(|(to, _, _)| *to == 0)
        .cloned()
        .collect();
    // Node 0 restarts (boot 2) while node 1 is gone; an attacker replays node 1's
    // recorded heartbeats. They are new to the fresh node (accepted into its window)
    // but echo heartbeats of node 0's previous boot: never proof of life.
    let mut fresh = node(1, 2, 2);
    fresh.handle(5000, Input::Tick);
    for (_, link, bytes) in recorded {
        fresh.handle(5000, Input::Datagram { link, bytes });
    }
    assert!(!fresh.peer_alive() && !fresh.peer_seen());
    let st = fresh.status();
    assert!(st.links.iter().all(|l| l.counters.stale_echo > 0 && !l.up));
}

#[test]
fn bad_macs_and_foreign_heartbeats_are_counted_and_ignored() {
    let mut p = Pair::new();
    p.run_until(300);
    let (_, link, good) = p
        .tap
        .iter()
        .rev()
        .find(|(to, _, _)| *to == 0)
        .cloned()
        .unwrap();
    let mut bad = good.clone();
    bad[30] ^= 1;
    p.deliver(0, link, bad);
    assert_eq!(
        p.m[0].status().links[link as usize].counters.rejected_mac,
        1
    );
    // Another cluster's secret.
    let mut other = Membership::new(cfg(2, 1, 1), b"some other cluster secret").unwrap();
    other.handle(300, Input::Tick);
    let Some(Action::Send { link, bytes }) = other.poll_action() else {
        panic!("no heartbeat")
    };
    p.deliver(0, link, bytes);
    assert_eq!(
        p.m[0].status().links[link as usize].counters.rejected_mac,
        1
    );
    // Same secret, another cluster id.
    let mut c = cfg(2, 1, 1);
    c.cluster_id = [9; 16];
    let mut other = Membership::new(c, SECRET).unwrap();
    other.handle(300, Input::Tick);
    let Some(Action::Send { link, bytes }) = other.poll_action() else {
        panic!("no heartbeat")
    };
    p.deliver(0, link, bytes);
    // Our own heartbeat reflected back at us.
    let (_, link, own) = p
        .tap
        .iter()
        .rev()
        .find(|(to, link, _)| *to == 1 && *link == 0)
        .cloned()
        .unwrap();
    p.deliver(0, link, own);
    let st = p.m[0].status();
    assert_eq!(st.links[0].counters.rejected_foreign, 2);
    // Garbage and an unknown link index.
    p.deliver(0, 0, b"GET / HTTP/1.0\r\n\r\n".to_vec());
    assert_eq!(p.m[0].status().links[0].counters.rejected_malformed, 1);
    p.deliver(0, 7, good);
    assert_eq!(p.m[0].status().rejected_unknown_link, 1);
    assert!(p.m[0].peer_alive());
}

#[test]
fn cadence_timeouts_and_stalls() {
    let mut m = node(1, 2, 1);
    m.handle(1000, Input::Tick);
    let sends = std::iter::from_fn(|| m.poll_action()).count();
    assert_eq!(sends, 2);
    assert_eq!(m.next_timeout_ms(), 1100);
    m.handle(1050, Input::Tick);
    assert!(m.poll_action().is_none());
    m.handle(1100, Input::Tick);
    assert_eq!(std::iter::from_fn(|| m.poll_action()).count(), 2);
    // A stalled driver gets one heartbeat per link, then the cadence resumes from now.
    m.handle(9000, Input::Tick);
    assert_eq!(std::iter::from_fn(|| m.poll_action()).count(), 2);
    assert_eq!(m.next_timeout_ms(), 9100);
    // Time never runs backwards.
    m.handle(5, Input::Tick);
    assert_eq!(m.status().now_ms, 9000);
}

#[test]
fn the_action_queue_is_bounded_when_nobody_polls() {
    let mut m = node(1, 2, 1);
    for t in 0..1000 {
        m.handle(t * 100, Input::Tick);
    }
    let st = m.status();
    assert_eq!(st.dropped_actions, 2000 - ACTIONS_MAX as u64);
    assert_eq!(std::iter::from_fn(|| m.poll_action()).count(), ACTIONS_MAX);
}

#[test]
fn views_travel_in_heartbeats() {
    let mut p = Pair::new();
    p.m[0].set_local_view(View {
        sees_peer: false,
        has_quorum: true,
        wait_for_all_satisfied: true,
        quorum_without_peer: false,
        role_summary: 42,
    });
    p.run_until(1000);
    let v = p.m[1].peer_view().unwrap();
    assert!(v.sees_peer && v.has_quorum && v.wait_for_all_satisfied);
    assert_eq!(v.role_summary, 42);
    let f = p.m[1].peer_facts();
    assert!(f.alive && f.confirms_us && f.seen_since_start);
    // A peer that holds quorum without us does not confirm us, even while it sees us.
    p.m[0].set_local_view(View {
        quorum_without_peer: true,
        ..v
    });
    p.run_until(1200);
    assert!(p.m[1].peer_view().unwrap().sees_peer);
    assert!(!p.m[1].peer_facts().confirms_us);
    p.m[0].set_local_view(v);
    p.run_until(1400);
    assert!(p.m[1].peer_facts().confirms_us);
    // After a one-way failure the peer's newest heartbeats say it no longer sees us.
    for c in &mut p.cut {
        c[1] = true;
    }
    p.run_until(2100);
    assert!(!p.m[0].peer_alive());
    assert!(!p.m[1].peer_view().unwrap().sees_peer);
    assert!(!p.m[1].peer_facts().confirms_us);
}

#[test]
fn peer_view_expiry_uses_the_longer_dead_time() {
    let mut b = cfg(2, 1, 1);
    b.dead_time_ms = 1500;
    let mut p = Pair::with(node(1, 2, 1), Membership::new(b, SECRET).unwrap());
    p.run_until(1050);
    p.cut_all(true);
    p.run_until(5000);
    assert_eq!(p.m[0].peer_view_expiry_ms(), 1001 + 1500 + 50);
    assert!(p.m[0].peer_view_expiry_ms() >= p.last(1, &Event::PeerDown).unwrap());
    // Before anything was accepted the expiry counts from our start.
    let mut lone = node(1, 2, 1);
    lone.handle(7000, Input::Tick);
    assert_eq!(lone.peer_view_expiry_ms(), 7000 + 600 + 50);
}

#[test]
fn configuration_errors_name_the_field() {
    let bad = |f: fn(&mut MembershipConfig)| {
        let mut c = cfg(1, 2, 1);
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert_eq!(
        bad(|c| c.peer_node_id = 1),
        "peer_node_id: equals this node's id 1"
    );
    assert_eq!(
        bad(|c| c.node_id = 255),
        "node_id: 255 is reserved for the witness"
    );
    assert_eq!(bad(|c| c.links = 0), "links: 0 links; 1 to 8 are supported");
    assert_eq!(bad(|c| c.links = 9), "links: 9 links; 1 to 8 are supported");
    assert_eq!(
        bad(|c| c.interval_ms = 5),
        "interval_ms: 5 is outside 10..=10000"
    );
    assert_eq!(
        bad(|c| c.dead_time_ms = 150),
        "dead_time_ms: 150 must be 2 to 200 times interval_ms (100)"
    );
    assert_eq!(
        bad(|c| c.peer_view_margin_ms = 700),
        "peer_view_margin_ms: 700 exceeds dead_time_ms (600)"
    );
    assert_eq!(bad(|c| c.boot = 0), "boot: the boot counter starts at 1");
    assert_eq!(
        Membership::new(cfg(1, 2, 1), b"short")
            .unwrap_err()
            .to_string(),
        "cluster secret is 5 bytes; at least 16 are required"
    );
    assert!(cfg(1, 2, 1).validate().is_ok());
}
