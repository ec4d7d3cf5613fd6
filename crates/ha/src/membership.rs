//! Membership: is the peer alive, over which links, sans-IO.
//!
//! Owns: this node's heartbeat stream (stamps, cadence, the log of recent sends per
//! link), per-link state (up/down, replay window, counters) and the peer's liveness,
//! boot and latest view. Inputs come through [`Membership::handle`] with `now_ms` (a
//! monotonic clock in ms); outputs are [`Action`]s pulled with
//! [`Membership::poll_action`]; [`Membership::next_timeout_ms`] says when to deliver
//! the next [`Input::Tick`].
//!
//! May not touch: sockets, clocks, threads, randomness, quorum decisions (the quorum
//! module reads [`Membership::peer_facts`]).
//!
//! ## Rules
//!
//! - Every `interval_ms` a heartbeat goes out on every link (one global per-boot
//!   sequence counter; see [`crate::wire`] for stamps and echoes).
//! - A heartbeat from the peer is *accepted* when it decodes, its MAC verifies, it names
//!   our cluster, the configured peer and the link it arrived on, and its stamp is newer
//!   than the newest accepted on that link and not from an older peer boot than one
//!   already seen. Anything else is counted and ignored.
//! - An accepted heartbeat is *fresh* when its echo names a heartbeat we sent on that
//!   link in our current boot less than `dead_time_ms` ago. A fresh heartbeat keeps the
//!   link up until `sent_at(echo) + dead_time_ms`; a link is therefore up only while
//!   heartbeats get through in both directions, and a replayed or long-delayed
//!   heartbeat never brings a link up.
//! - The peer is alive iff at least one link is up: **a link failure alone is not a
//!   node failure**.
//! - A heartbeat from a newer peer boot means the peer restarted: every link goes down
//!   at once ([`Event::PeerRebooted`], then `LinkDown`s and `PeerDown`) and comes back
//!   with the new incarnation's fresh heartbeats.
//!
//! ## Defaults
//!
//! `interval_ms` 100 and `dead_time_ms` 600. A dead peer is noticed 500–600 ms after
//! its last heartbeat: the deadline counts from the send time of the heartbeat of ours
//! that the peer's last one echoed, which lags by up to one interval plus the one-way
//! delay. For the same reason a link rides out three lost heartbeats in a row (four
//! when the two nodes' send phases line up well); at 1 % independent loss that is a
//! false link-down about once in four months per link, and the peer is lost only when
//! every link fails together. Detection in 0.6 s leaves most of the 2 s failover
//! budget for the witness or fencing, promotion and the address move; ten 112-byte
//! datagrams per second per link cost nothing on a LAN. Longer dead times suit lossy
//! or congested links (the manager's failover time grows by the same amount).
//!
//! `peer_view_margin_ms` (50) pads [`Membership::peer_view_expiry_ms`] against timer
//! lateness and clock-rate differences between the nodes.

use std::collections::VecDeque;

use crate::wire::{self, ClusterKey, Heartbeat, Message, Stamp, View, WireError};
use crate::ConfigError;

/// Most heartbeat links a node may have.
pub const LINKS_MAX: u8 = 8;
/// Default heartbeat interval.
pub const DEFAULT_INTERVAL_MS: u64 = 100;
/// Default dead time (six intervals).
pub const DEFAULT_DEAD_TIME_MS: u64 = 600;
/// Default margin added to the peer-view expiry.
pub const DEFAULT_PEER_VIEW_MARGIN_MS: u64 = 50;
/// Most actions kept for the driver; beyond it the oldest queued heartbeat is dropped
/// (and counted). Events are never dropped.
pub const ACTIONS_MAX: usize = 256;
/// Largest `dead_time_ms / interval_ms` (bounds the per-link log of recent sends).
pub const DEAD_INTERVALS_MAX: u64 = 200;

/// Configuration of one node's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Cluster id (both nodes and the witness must agree).
    pub cluster_id: [u8; 16],
    /// This node's id (0..=0xFE).
    pub node_id: u8,
    /// The peer's id.
    pub peer_node_id: u8,
    /// Number of heartbeat links (1..=[`LINKS_MAX`]); link indices are `0..links`.
    pub links: u8,
    /// Heartbeat interval per link.
    pub interval_ms: u64,
    /// A link without fresh heartbeats for this long is down.
    pub dead_time_ms: u64,
    /// Padding of [`Membership::peer_view_expiry_ms`].
    pub peer_view_margin_ms: u64,
    /// This run's boot counter (>= 1): persisted and incremented by the driver before
    /// every start, so it exceeds every earlier run's.
    pub boot: u64,
}

impl MembershipConfig {
    /// Defaults (two links, 100 ms interval, 600 ms dead time) for everything but
    /// identity.
    pub fn new(cluster_id: [u8; 16], node_id: u8, peer_node_id: u8, boot: u64) -> Self {
        MembershipConfig {
            cluster_id,
            node_id,
            peer_node_id,
            links: 2,
            interval_ms: DEFAULT_INTERVAL_MS,
            dead_time_ms: DEFAULT_DEAD_TIME_MS,
            peer_view_margin_ms: DEFAULT_PEER_VIEW_MARGIN_MS,
            boot,
        }
    }

    /// Check every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == wire::WITNESS_NODE_ID || self.peer_node_id == wire::WITNESS_NODE_ID {
            return Err(ConfigError::new(
                "node_id",
                "255 is reserved for the witness",
            ));
        }
        if self.node_id == self.peer_node_id {
            return Err(ConfigError::new(
                "peer_node_id",
                format!("equals this node's id {}", self.node_id),
            ));
        }
        if self.links == 0 || self.links > LINKS_MAX {
            return Err(ConfigError::new(
                "links",
                format!("{} links; 1 to {LINKS_MAX} are supported", self.links),
            ));
        }
        if !(10..=10_000).contains(&self.interval_ms) {
            return Err(ConfigError::new(
                "interval_ms",
                format!("{} is outside 10..=10000", self.interval_ms),
            ));
        }
        if self.dead_time_ms < 2 * self.interval_ms
            || self.dead_time_ms > DEAD_INTERVALS_MAX * self.interval_ms
        {
            return Err(ConfigError::new(
                "dead_time_ms",
                format!(
                    "{} must be 2 to {DEAD_INTERVALS_MAX} times interval_ms ({})",
                    self.dead_time_ms, self.interval_ms
                ),
            ));
        }
        if self.peer_view_margin_ms > self.dead_time_ms {
            return Err(ConfigError::new(
                "peer_view_margin_ms",
                format!(
                    "{} exceeds dead_time_ms ({})",
                    self.peer_view_margin_ms, self.dead_time_ms
                ),
            ));
        }
        if self.boot == 0 {
            return Err(ConfigError::new("boot", "the boot counter starts at 1"));
        }
        Ok(())
    }
}

/// Inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A datagram received on heartbeat link `link`.
    Datagram {
        /// Link index.
        link: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Time passed (deliver at [`Membership::next_timeout_ms`]).
    Tick,
}

/// Outputs, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this datagram to the peer's address on link `link`.
    Send {
        /// Link index.
        link: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Something changed.
    Event(Event),
}

/// Membership events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Fresh heartbeats arrive on this link again.
    LinkUp {
        /// Link index.
        link: u8,
    },
    /// No fresh heartbeat on this link for the dead time (or the peer restarted).
    LinkDown {
        /// Link index.
        link: u8,
    },
    /// The first link came up.
    PeerUp,
    /// The last link went down.
    PeerDown,
    /// The peer runs a newer boot than before: it restarted.
    PeerRebooted {
        /// Its new boot counter.
        boot: u64,
    },
}

/// Per-link counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkCounters {
    /// Heartbeats sent.
    pub sent: u64,
    /// Heartbeats accepted.
    pub received: u64,
    /// Accepted heartbeats whose echo was not fresh (normal while a link comes up).
    pub stale_echo: u64,
    /// Refused: the MAC did not verify.
    pub rejected_mac: u64,
    /// Refused: stamp not newer than the last accepted (replay, duplicate, reorder) or
    /// from an older peer boot.
    pub rejected_replay: u64,
    /// Refused: not a well-formed heartbeat.
    pub rejected_malformed: u64,
    /// Refused: another cluster, another sender, or sent on another link.
    pub rejected_foreign: u64,
}

/// One link's state for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link index.
    pub index: u8,
    /// Up.
    pub up: bool,
    /// Up until this time unless a fresh heartbeat arrives (while up).
    pub up_until_ms: Option<u64>,
    /// Last fresh heartbeat.
    pub last_good_ms: Option<u64>,
    /// Last accepted heartbeat.
    pub last_rx_ms: Option<u64>,
    /// Newest accepted stamp.
    pub last_stamp: Option<Stamp>,
    /// Counters.
    pub counters: LinkCounters,
}

/// Membership status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipStatus {
    /// Time of the last input.
    pub now_ms: u64,
    /// This node.
    pub node_id: u8,
    /// The peer.
    pub peer_node_id: u8,
    /// This node's boot.
    pub boot: u64,
    /// The peer is alive (a link is up).
    pub peer_alive: bool,
    /// The peer has been alive at some point since this node started.
    pub peer_seen: bool,
    /// The peer's newest boot seen.
    pub peer_boot: Option<u64>,
    /// The peer's view from its newest accepted heartbeat.
    pub peer_view: Option<View>,
    /// See [`Membership::peer_view_expiry_ms`].
    pub peer_view_expiry_ms: u64,
    /// Per link.
    pub links: Vec<LinkStatus>,
    /// Datagrams handed in with a link index out of range (a driver bug).
    pub rejected_unknown_link: u64,
    /// Heartbeats dropped because the driver did not poll actions.
    pub dropped_actions: u64,
}

/// What the quorum module needs to know about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerFacts {
    /// At least one link is up.
    pub alive: bool,
    /// The peer's newest heartbeat says it sees us and does not have quorum without
    /// us.
    pub confirms_us: bool,
    /// The peer was alive at some point since this node started (wait-for-all).
    pub seen_since_start: bool,
    /// See [`Membership::peer_view_expiry_ms`].
    pub view_expiry_ms: u64,
}

#[derive(Debug)]
struct Link {
    up: bool,
    up_until_ms: u64,
    last_good_ms: Option<u64>,
    last_rx_ms: Option<u64>,
    /// Newest accepted stamp (the replay window, and what we echo on this link).
    window: Option<Stamp>,
    /// Our recent sends on this link: (seq, sent at), seq ascending.
    sent: VecDeque<(u64, u64)>,
    next_send_ms: u64,
    counters: LinkCounters,
}

/// The membership state machine of one node.
#[derive(Debug)]
pub struct Membership {
    cfg: MembershipConfig,
    key: ClusterKey,
    start_ms: Option<u64>,
    now_ms: u64,
    next_seq: u64,
    links: Vec<Link>,
    sent_log_max: usize,
    peer_boot: Option<u64>,
    peer_alive: bool,
    peer_seen: bool,
    peer_view: Option<(Stamp, View)>,
    peer_dead_time_ms: u64,
    last_accept_ms: Option<u64>,
    local: View,
    actions: VecDeque<Action>,
    rejected_unknown_link: u64,
    dropped_actions: u64,
}

impl Membership {
    /// A node's membership; `secret` is the cluster secret.
    pub fn new(cfg: MembershipConfig, secret: &[u8]) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let key = ClusterKey::new(secret)?;
        Ok(Self::with_key(cfg, key))
    }

    pub(crate) fn with_key(cfg: MembershipConfig, key: ClusterKey) -> Self {
        let links = (0..cfg.links)
            .map(|_| Link {
                up: false,
                up_until_ms: 0,
                last_good_ms: None,
                last_rx_ms: None,
                window: None,
                sent: VecDeque::new(),
                next_send_ms: 0,
                counters: LinkCounters::default(),
            })
            .collect();
        Membership {
            sent_log_max: (cfg.dead_time_ms / cfg.interval_ms + 4) as usize,
            peer_dead_time_ms: cfg.dead_time_ms,
            cfg,
            key,
            start_ms: None,
            now_ms: 0,
            next_seq: 1,
            links,
            peer_boot: None,
            peer_alive: false,
            peer_seen: false,
            peer_view: None,
            last_accept_ms: None,
            local: View::default(),
            actions: VecDeque::new(),
            rejected_unknown_link: 0,
            dropped_actions: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &MembershipConfig {
        &self.cfg
    }

    /// Apply one input at `now_ms` (monotonic; an earlier value than a previous call is
    /// treated as the previous one), then expire links and send due heartbeats.
    pub fn handle(&mut self, now_ms: u64, input: Input) {
        self.now_ms = self.now_ms.max(now_ms);
        self.start_ms.get_or_insert(self.now_ms);
        if let Input::Datagram { link, bytes } = input {
            self.on_datagram(link, &bytes);
        }
        self.expire();
        self.send_due();
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to deliver the next [`Input::Tick`] (absolute ms): the next heartbeat or
    /// the next link deadline.
    pub fn next_timeout_ms(&self) -> u64 {
        self.links
            .iter()
            .map(|l| {
                if l.up {
                    l.next_send_ms.min(l.up_until_ms)
                } else {
                    l.next_send_ms
                }
            })
            .min()
            .unwrap_or(self.now_ms + self.cfg.interval_ms)
    }

    /// Set what our heartbeats say about quorum and role (`sees_peer` is ours to fill).
    pub fn set_local_view(&mut self, view: View) {
        self.local = view;
    }

    /// The peer is alive (at least one link up).
    pub fn peer_alive(&self) -> bool {
        self.peer_alive
    }

    /// The peer has been alive at some point since this node started.
    pub fn peer_seen(&self) -> bool {
        self.peer_seen
    }

    /// The peer's view from its newest accepted heartbeat (current peer boot).
    pub fn peer_view(&self) -> Option<View> {
        self.peer_view.map(|(_, v)| v)
    }

    /// The time after which the peer can no longer consider this node alive: its link
    /// deadlines count from the send time of a heartbeat of its own that we echoed, and
    /// we echo only what we accepted, so every one of them ends by our last acceptance
    /// (or our start) plus the peer's dead time (the larger of ours and the one it
    /// advertises), plus `peer_view_margin_ms`. A node that lost its peer must not act
    /// alone before this time.
    pub fn peer_view_expiry_ms(&self) -> u64 {
        let start = self.start_ms.unwrap_or(self.now_ms);
        let since = self.last_accept_ms.map_or(start, |t| t.max(start));
        since + self.peer_dead_time_ms.max(self.cfg.dead_time_ms) + self.cfg.peer_view_margin_ms
    }

    /// Facts for the quorum module.
    pub fn peer_facts(&self) -> PeerFacts {
        PeerFacts {
            alive: self.peer_alive,
            confirms_us: self.peer_alive
                && self
                    .peer_view()
                    .is_some_and(|v| v.sees_peer && !v.quorum_without_peer),
            seen_since_start: self.peer_seen,
            view_expiry_ms: self.peer_view_expiry_ms(),
        }
    }

    /// Status.
    pub fn status(&self) -> MembershipStatus {
        MembershipStatus {
            now_ms: self.now_ms,
            node_id: self.cfg.node_id,
            peer_node_id: self.cfg.peer_node_id,
            boot: self.cfg.boot,
            peer_alive: self.peer_alive,
            peer_seen: self.peer_seen,
            peer_boot: self.peer_boot,
            peer_view: self.peer_view(),
            peer_view_expiry_ms: self.peer_view_expiry_ms(),
            links: self
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| LinkStatus {
                    index: i as u8,
                    up: l.up,
                    up_until_ms: l.up.then_some(l.up_until_ms),
                    last_good_ms: l.last_good_ms,
                    last_rx_ms: l.last_rx_ms,
                    last_stamp: l.window,
                    counters: l.counters,
                })
                .collect(),
            rejected_unknown_link: self.rejected_unknown_link,
            dropped_actions: self.dropped_actions,
        }
    }

    fn push(&mut self, a: Action) {
        if self.actions.len() >= ACTIONS_MAX {
            if let Some(i) = self
                .actions
                .iter()
                .position(|a| matches!(a, Action::Send { .. }))
            {
                self.actions.remove(i);
                self.dropped_actions += 1;
            }
        }
        self.actions.push_back(a);
    }

    fn on_datagram(&mut self, link: u8, bytes: &[u8]) {
        let now = self.now_ms;
        let Some(l) = self.links.get_mut(link as usize) else {
            self.rejected_unknown_link += 1;
            return;
        };
        let hb = match wire::decode(bytes, &self.key) {
            Ok(Message::Heartbeat(hb)) => hb,
            Ok(_) => {
                l.counters.rejected_malformed += 1;
                return;
            }
            Err(WireError::BadMac) => {
                l.counters.rejected_mac += 1;
                return;
            }
            Err(_) => {
                l.counters.rejected_malformed += 1;
                return;
            }
        };
        if hb.cluster_id != self.cfg.cluster_id
            || hb.sender != self.cfg.peer_node_id
            || hb.link != link
        {
            l.counters.rejected_foreign += 1;
            return;
        }
        if self.peer_boot.is_some_and(|b| hb.stamp.boot < b) || l.window >= Some(hb.stamp) {
            l.counters.rejected_replay += 1;
            return;
        }
        l.window = Some(hb.stamp);
        l.last_rx_ms = Some(now);
        l.counters.received += 1;
        let fresh = hb
            .echo
            .filter(|e| e.boot == self.cfg.boot)
            .and_then(|e| sent_at(&l.sent, e.seq))
            .filter(|&sent| sent + self.cfg.dead_time_ms > now);
        if fresh.is_none() {
            l.counters.stale_echo += 1;
        }
        if self.peer_boot.is_some_and(|b| hb.stamp.boot > b) {
            self.on_peer_reboot(hb.stamp.boot);
        }
        self.peer_boot = Some(hb.stamp.boot);
        self.last_accept_ms = Some(now);
        self.peer_dead_time_ms = u64::from(hb.dead_time_ms);
        if self.peer_view.is_none_or(|(s, _)| s < hb.stamp) {
            self.peer_view = Some((hb.stamp, hb.view));
        }
        let Some(sent) = fresh else { return };
        let l = &mut self.links[link as usize];
        l.up_until_ms = l.up_until_ms.max(sent + self.cfg.dead_time_ms);
        l.last_good_ms = Some(now);
        if !l.up {
            l.up = true;
            self.push(Action::Event(Event::LinkUp { link }));
        }
        if !self.peer_alive {
            self.peer_alive = true;
            self.peer_seen = true;
            self.push(Action::Event(Event::PeerUp));
        }
    }

    fn on_peer_reboot(&mut self, boot: u64) {
        self.push(Action::Event(Event::PeerRebooted { boot }));
        self.peer_view = None;
        for i in 0..self.links.len() {
            if self.links[i].up {
                self.links[i].up = false;
                self.push(Action::Event(Event::LinkDown { link: i as u8 }));
            }
        }
        if self.peer_alive {
            self.peer_alive = false;
            self.push(Action::Event(Event::PeerDown));
        }
    }

    fn expire(&mut self) {
        let now = self.now_ms;
        for i in 0..self.links.len() {
            let l = &mut self.links[i];
            if l.up && l.up_until_ms <= now {
                l.up = false;
                self.push(Action::Event(Event::LinkDown { link: i as u8 }));
            }
        }
        if self.peer_alive && !self.links.iter().any(|l| l.up) {
            self.peer_alive = false;
            self.push(Action::Event(Event::PeerDown));
        }
    }

    fn send_due(&mut self) {
        let now = self.now_ms;
        for i in 0..self.links.len() {
            if self.links[i].next_send_ms > now {
                continue;
            }
            let seq = self.next_seq;
            // A u64 per-boot counter at 10^4 datagrams/s lasts 10^7 years.
            self.next_seq = self.next_seq.saturating_add(1);
            let view = View {
                sees_peer: self.peer_alive,
                ..self.local
            };
            let hb = Heartbeat {
                cluster_id: self.cfg.cluster_id,
                sender: self.cfg.node_id,
                link: i as u8,
                stamp: Stamp {
                    boot: self.cfg.boot,
                    seq,
                },
                echo: self.links[i].window,
                view,
                dead_time_ms: u32::try_from(self.cfg.dead_time_ms).unwrap_or(u32::MAX),
                timestamp_ms: now,
            };
            let bytes = hb.encode(&self.key).to_vec();
            let (interval, dead, log_max) = (
                self.cfg.interval_ms,
                self.cfg.dead_time_ms,
                self.sent_log_max,
            );
            let l = &mut self.links[i];
            while l
                .sent
                .front()
                .is_some_and(|&(_, t)| t + dead <= now || l.sent.len() >= log_max)
            {
                l.sent.pop_front();
            }
            l.sent.push_back((seq, now));
            l.counters.sent += 1;
            // Keep the cadence; after a stall, resume from now instead of bursting.
            l.next_send_ms = if l.next_send_ms + interval > now {
                l.next_send_ms + interval
            } else {
                now + interval
            };
            self.push(Action::Send {
                link: i as u8,
                bytes,
            });
        }
    }
}

fn sent_at(log: &VecDeque<(u64, u64)>, seq: u64) -> Option<u64> {
    log.binary_search_by_key(&seq, |&(s, _)| s)
        .ok()
        .map(|i| log[i].1)
}

#[cfg(test)]
mod tests;
