//! The connect-time decision: given both nodes' generation UUIDs, disk states, roles
//! and flags, decide whether to resync, in which direction, from the bitmap or in
//! full, or whether this is a split brain or unrelated data; and the split-brain
//! recovery policies (`after-sb-0pri/1pri/2pri`, `rr-conflict`, `discard-my-data`).
//!
//! Owns: pure functions only. The result is symmetric: both nodes evaluate it on the
//! same pair of views (each its own as `a` or `b`) and must reach the same verdict,
//! which they then cross-check on the wire ([`crate::msg::PlanCode`]).
//!
//! May not touch: state, I/O.

use crate::types::{
    uuid_eq, AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, DiskState, Generations, Role, RrConflict,
    UUID_JUST_CREATED,
};

/// What one node reports about itself at connect (from its Hello).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Node id.
    pub node_id: u8,
    /// Node name.
    pub node_name: String,
    /// Role.
    pub role: Role,
    /// Disk state.
    pub disk: DiskState,
    /// Generation UUIDs.
    pub gens: Generations,
    /// Primary when it crashed.
    pub crashed_primary: bool,
    /// Operator asked to discard this node's data on split brain.
    pub discard_my_data: bool,
    /// Set bits in its bitmap.
    pub bitmap_weight_bits: u64,
    /// When it last became primary (ms), 0 if not in this generation.
    pub primary_since_ms: u64,
}

/// Which rule of the decision table matched (for logs and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Both sides were just created: nothing to sync, the operator must pick a source
    /// (`primary --force`) or declare them clean.
    JustCreatedBoth,
    /// One side was just created: full sync to it.
    JustCreated,
    /// Same current generation.
    Equal,
    /// Same current generation; one side is Inconsistent (an interrupted resync):
    /// bitmap resync from the consistent side.
    EqualResume,
    /// Same current generation; one side crashed as primary or has bits set:
    /// bitmap resync.
    EqualCrashed,
    /// One side's bitmap generation is the other's current: bitmap resync from the
    /// side that has moved on.
    Bitmap,
    /// One side's current is in the other's history: full sync from the newer side.
    History,
    /// Both bitmaps track the same ancestor but the currents differ: split brain,
    /// auto-recovery policies apply.
    SplitBrainAuto,
    /// They share only an older ancestor: split brain, manual recovery.
    SplitBrainManual,
    /// No generation in common.
    Unrelated,
    /// Both Inconsistent with the same generation: no source exists.
    NoSource,
    /// The table named an Inconsistent node as source (or a split brain with one side
    /// unusable): full sync from the consistent side.
    InconsistentSource,
}

/// The verdict from the generation comparison alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to resync.
    NoSync(Rule),
    /// Resync from `source` (a node id).
    Sync {
        /// Node id of the sync source.
        source: u8,
        /// Every block (true) or only bitmap-marked blocks.
        full: bool,
        /// The rule.
        rule: Rule,
    },
    /// Split brain; `auto` when the after-sb policies may resolve it.
    SplitBrain {
        /// Whether the policies apply (common bitmap ancestor).
        auto: bool,
    },
    /// Refuse to connect: unrelated data.
    Unrelated,
}

fn consistent(d: DiskState) -> bool {
    matches!(
        d,
        DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
    )
}

fn in_history(g: &Generations, uuid: u64) -> bool {
    g.history.iter().any(|&h| uuid_eq(h, uuid))
}

/// Order two views so that the result does not depend on which is "local".
fn ordered<'a>(a: &'a NodeView, b: &'a NodeView) -> (&'a NodeView, &'a NodeView) {
    if a.node_id <= b.node_id {
        (a, b)
    } else {
        (b, a)
    }
}

/// Compare generations. Symmetric in `a` and `b`.
///
/// An Inconsistent node is never a sync source: where the table would pick one (or
/// calls a split brain in which one side holds no usable data), the consistent side
/// becomes the source of a full sync; with neither side consistent there is no source.
pub fn compare(a: &NodeView, b: &NodeView) -> Verdict {
    let (a, b) = ordered(a, b);
    let v = compare_gens(a, b);
    let usable = |id: u8| consistent(if id == a.node_id { a.disk } else { b.disk });
    let other = |id: u8| {
        if id == a.node_id {
            b.node_id
        } else {
            a.node_id
        }
    };
    match v {
        Verdict::Sync { source, .. } if !usable(source) => {
            if usable(other(source)) {
                Verdict::Sync {
                    source: other(source),
                    full: true,
                    rule: Rule::InconsistentSource,
                }
            } else {
                Verdict::NoSync(Rule::NoSource)
            }
        }
        Verdict::SplitBrain { .. } if usable(a.node_id) != usable(b.node_id) => Verdict::Sync {
            source: if usable(a.node_id) {
                a.node_id
            } else {
                b.node_id
            },
            full: true,
            rule: Rule::InconsistentSource,
        },
        Verdict::SplitBrain { .. } if !usable(a.node_id) && !usable(b.node_id) => {
            Verdict::NoSync(Rule::NoSource)
        }
        v => v,
    }
}

fn compare_gens(a: &NodeView, b: &NodeView) -> Verdict {
    let (ga, gb) = (&a.gens, &b.gens);
    let a_new = ga.current == UUID_JUST_CREATED;
    let b_new = gb.current == UUID_JUST_CREATED;
    match (a_new, b_new) {
        (true, true) => return Verdict::NoSync(Rule::JustCreatedBoth),
        (true, false) if consistent(b.disk) => {
            return Verdict::Sync {
                source: b.node_id,
                full: true,
                rule: Rule::JustCreated,
            }
        }
        (false, true) if consistent(a.disk) => {
            return Verdict::Sync {
                source: a.node_id,
                full: true,
                rule: Rule::JustCreated,
            }
        }
        (true, false) | (false, true) => return Verdict::NoSync(Rule::NoSource),
        (false, false) => {}
    }
    if uuid_eq(ga.current, gb.current) {
        let (ca, cb) = (consistent(a.disk), consistent(b.disk));
        return match (ca, cb) {
            (false, false) => Verdict::NoSync(Rule::NoSource),
            (true, false) => Verdict::Sync {
                source: a.node_id,
                full: false,
                rule: Rule::EqualResume,
            },
            (false, true) => Verdict::Sync {
                source: b.node_id,
                full: false,
                rule: Rule::EqualResume,
            },
            (true, true) => {
                if a.bitmap_weight_bits == 0
                    && b.bitmap_weight_bits == 0
                    && !a.crashed_primary
                    && !b.crashed_primary
                {
                    Verdict::NoSync(Rule::Equal)
                } else {
                    // Some blocks may differ (writes in flight when a primary crashed,
                    // or left over from an interrupted exchange). Either side's data
                    // is a valid state of the unacknowledged writes; prefer a node that
                    // is primary now, then one that crashed as primary, then the
                    // lower node id.
                    let source = if a.role == Role::Primary {
                        a.node_id
                    } else if b.role == Role::Primary {
                        b.node_id
                    } else if a.crashed_primary {
                        a.node_id
                    } else if b.crashed_primary {
                        b.node_id
                    } else {
                        a.node_id
                    };
                    Verdict::Sync {
                        source,
                        full: false,
                        rule: Rule::EqualCrashed,
                    }
                }
            }
        };
    }
    if ga.bitmap != 0 && uuid_eq(ga.bitmap, gb.bitmap) {
        return Verdict::SplitBrain { auto: true };
    }
    if uuid_eq(gb.bitmap, ga.current) {
        return Verdict::Sync {
            source: b.node_id,
            full: false,
            rule: Rule::Bitmap,
        };
    }
    if uuid_eq(ga.bitmap, gb.current) {
        return Verdict::Sync {
            source: a.node_id,
            full: false,
            rule: Rule::Bitmap,
        };
    }
    let a_in_b = in_history(gb, ga.current);
    let b_in_a = in_history(ga, gb.current);
    if a_in_b && !b_in_a {
        return Verdict::Sync {
            source: b.node_id,
            full: true,
            rule: Rule::History,
        };
    }
    if b_in_a && !a_in_b {
        return Verdict::Sync {
            source: a.node_id,
            full: true,
            rule: Rule::History,
        };
    }
    let ancestors_a = std::iter::once(ga.bitmap).chain(ga.history);
    let shared = ancestors_a
        .filter(|&u| u != 0)
        .any(|u| uuid_eq(u, gb.bitmap) || in_history(gb, u) || uuid_eq(u, gb.current));
    if shared || in_history(ga, gb.bitmap) {
        return Verdict::SplitBrain { auto: false };
    }
    Verdict::Unrelated
}

/// Split-brain and role-conflict policies (from the configuration; both nodes must
/// have the same ones, which the handshake checks through the plan exchange).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policies {
    /// `after-sb-0pri`.
    pub after_sb_0pri: AfterSb0Pri,
    /// `after-sb-1pri`.
    pub after_sb_1pri: AfterSb1Pri,
    /// `after-sb-2pri`.
    pub after_sb_2pri: AfterSb2Pri,
    /// `rr-conflict`.
    pub rr_conflict: RrConflict,
    /// `allow-two-primaries`.
    pub allow_two_primaries: bool,
}

impl Default for Policies {
    fn default() -> Self {
        Policies {
            after_sb_0pri: AfterSb0Pri::Disconnect,
            after_sb_1pri: AfterSb1Pri::Disconnect,
            after_sb_2pri: AfterSb2Pri::Disconnect,
            rr_conflict: RrConflict::Disconnect,
            allow_two_primaries: false,
        }
    }
}

/// The final plan for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Connected, nothing to sync.
    NoSync {
        /// Why.
        rule: Rule,
    },
    /// Resync from `source`.
    Sync {
        /// Node id of the source.
        source: u8,
        /// Full or bitmap-based.
        full: bool,
        /// The rule.
        rule: Rule,
        /// Split brain resolved automatically by this policy (for status and the
        /// notify handler), if it was one.
        split_brain_policy: Option<&'static str>,
        /// Node on which the `pri-lost-after-sb` / `pri-lost` handler must run.
        call_pri_lost_on: Option<u8>,
    },
    /// Split brain not resolved: both sides go StandAlone and wait for the operator.
    SplitBrainDisconnect {
        /// Why the policies did not resolve it.
        reason: String,
    },
    /// Refuse the connection for another reason (unrelated data, role conflict).
    Refuse {
        /// Why.
        reason: String,
        /// Keep trying to connect (rr-conflict retry-connect).
        retry: bool,
        /// Node on which to run `pri-lost` (rr-conflict call-pri-lost).
        call_pri_lost_on: Option<u8>,
    },
}

impl Plan {
    /// The wire form for the cross-check.
    pub fn code(&self) -> crate::msg::PlanCode {
        use crate::msg::PlanCode;
        match self {
            Plan::NoSync { .. } => PlanCode::NoSync,
            Plan::Sync {
                source, full: true, ..
            } => PlanCode::FullFrom(*source),
            Plan::Sync { source, .. } => PlanCode::BitmapFrom(*source),
            Plan::SplitBrainDisconnect { .. } | Plan::Refuse { .. } => PlanCode::Refuse,
        }
    }
}

/// Victim chosen by the `after-sb-0pri` policy, `None` = disconnect.
fn victim_0pri(a: &NodeView, b: &NodeView, p: &AfterSb0Pri) -> Option<u8> {
    let least_changes = || {
        // The node with fewer changes is discarded; on a tie, the higher node id.
        if a.bitmap_weight_bits < b.bitmap_weight_bits {
            a.node_id
        } else if b.bitmap_weight_bits < a.bitmap_weight_bits {
            b.node_id
        } else {
            a.node_id.max(b.node_id)
        }
    };
    match p {
        AfterSb0Pri::Disconnect => None,
        AfterSb0Pri::DiscardYoungerPrimary | AfterSb0Pri::DiscardOlderPrimary => {
            let (pa, pb) = (a.primary_since_ms, b.primary_since_ms);
            if pa == 0 || pb == 0 || pa == pb {
                // Not both became primary in their generations (or at the same
                // instant): fall back to least changes, as DRBD does.
                Some(least_changes())
            } else {
                let younger = if pa > pb { a.node_id } else { b.node_id };
                let older = if pa > pb { b.node_id } else { a.node_id };
                Some(if matches!(p, AfterSb0Pri::DiscardYoungerPrimary) {
                    younger
                } else {
                    older
                })
            }
        }
        AfterSb0Pri::DiscardZeroChanges => {
            match (a.bitmap_weight_bits == 0, b.bitmap_weight_bits == 0) {
                (true, false) => Some(a.node_id),
                (false, true) => Some(b.node_id),
                // Neither changed anything: either choice loses nothing.
                (true, true) => Some(a.node_id.max(b.node_id)),
                (false, false) => None,
            }
        }
        AfterSb0Pri::DiscardLeastChanges => Some(least_changes()),
        AfterSb0Pri::DiscardNode(name) => {
            if &a.node_name == name {
                Some(a.node_id)
            } else if &b.node_name == name {
                Some(b.node_id)
            } else {
                None
            }
        }
    }
}

fn policy_name_0pri(p: &AfterSb0Pri) -> &'static str {
    match p {
        AfterSb0Pri::Disconnect => "after-sb-0pri disconnect",
        AfterSb0Pri::DiscardYoungerPrimary => "after-sb-0pri discard-younger-primary",
        AfterSb0Pri::DiscardOlderPrimary => "after-sb-0pri discard-older-primary",
        AfterSb0Pri::DiscardZeroChanges => "after-sb-0pri discard-zero-changes",
        AfterSb0Pri::DiscardLeastChanges => "after-sb-0pri discard-least-changes",
        AfterSb0Pri::DiscardNode(_) => "after-sb-0pri discard-node",
    }
}

/// Decide the plan for a connection between `a` and `b`. Symmetric in `a` and `b`.
pub fn plan(a: &NodeView, b: &NodeView, p: &Policies) -> Plan {
    let (a, b) = ordered(a, b);
    let both_primary = a.role == Role::Primary && b.role == Role::Primary;
    let verdict = compare(a, b);
    // Two primaries meeting is refused unless configured, but a split brain between
    // them is still reported as one (and after-sb-2pri applies).
    if both_primary && !p.allow_two_primaries && !matches!(verdict, Verdict::SplitBrain { .. }) {
        return Plan::Refuse {
            reason: "both nodes are Primary and allow-two-primaries is off".into(),
            retry: false,
            call_pri_lost_on: None,
        };
    }
    match verdict {
        Verdict::NoSync(rule) => Plan::NoSync { rule },
        Verdict::Unrelated => Plan::Refuse {
            reason: "unrelated data: the nodes share no data generation (wrong peer or \
                     re-created metadata); refusing to connect"
                .into(),
            retry: false,
            call_pri_lost_on: None,
        },
        Verdict::Sync { source, full, rule } => {
            let target = if source == a.node_id { b } else { a };
            if target.role == Role::Primary {
                rr_conflict(source, full, rule, target, p)
            } else {
                Plan::Sync {
                    source,
                    full,
                    rule,
                    split_brain_policy: None,
                    call_pri_lost_on: None,
                }
            }
        }
        Verdict::SplitBrain { auto } => split_brain(a, b, auto, p),
    }
}

fn rr_conflict(source: u8, full: bool, rule: Rule, target: &NodeView, p: &Policies) -> Plan {
    let reason = format!(
        "resync would make Primary node {} ({}) a sync target (rr-conflict)",
        target.node_id, target.node_name
    );
    match p.rr_conflict {
        RrConflict::Violently => Plan::Sync {
            source,
            full,
            rule,
            split_brain_policy: None,
            call_pri_lost_on: None,
        },
        RrConflict::Disconnect => Plan::Refuse {
            reason,
            retry: false,
            call_pri_lost_on: None,
        },
        RrConflict::RetryConnect => Plan::Refuse {
            reason,
            retry: true,
            call_pri_lost_on: None,
        },
        RrConflict::CallPriLost => Plan::Refuse {
            reason,
            retry: false,
            call_pri_lost_on: Some(target.node_id),
        },
    }
}

fn split_brain(a: &NodeView, b: &NodeView, auto: bool, p: &Policies) -> Plan {
    // Manual recovery first: discard-my-data on exactly one side names the victim.
    match (a.discard_my_data, b.discard_my_data) {
        (true, false) | (false, true) => {
            let victim = if a.discard_my_data { a } else { b };
            let survivor = if a.discard_my_data { b } else { a };
            if victim.role == Role::Primary {
                return Plan::SplitBrainDisconnect {
                    reason: format!(
                        "split brain: node {} asked to discard its data but is Primary; \
                         demote it first",
                        victim.node_name
                    ),
                };
            }
            return Plan::Sync {
                source: survivor.node_id,
                full: !auto,
                rule: if auto {
                    Rule::SplitBrainAuto
                } else {
                    Rule::SplitBrainManual
                },
                split_brain_policy: Some("discard-my-data"),
                call_pri_lost_on: None,
            };
        }
        (true, true) => {
            return Plan::SplitBrainDisconnect {
                reason: "split brain: both nodes asked to discard their data".into(),
            }
        }
        (false, false) => {}
    }
    if !auto {
        return Plan::SplitBrainDisconnect {
            reason: "split brain with only an older common ancestor: the bitmaps cannot \
                     bound the divergence; resolve manually (discard-my-data on the victim)"
                .into(),
        };
    }
    let primaries = [a, b].iter().filter(|n| n.role == Role::Primary).count();
    let v0 = victim_0pri(a, b, &p.after_sb_0pri);
    let mk = |victim: u8, policy: &'static str, pri_lost: bool| {
        let source = if victim == a.node_id {
            b.node_id
        } else {
            a.node_id
        };
        Plan::Sync {
            source,
            full: false,
            rule: Rule::SplitBrainAuto,
            split_brain_policy: Some(policy),
            call_pri_lost_on: pri_lost.then_some(victim),
        }
    };
    let no = |policy: &str| Plan::SplitBrainDisconnect {
        reason: format!("split brain detected; {policy} left it unresolved"),
    };
    match primaries {
        0 => match v0 {
            Some(v) => mk(v, policy_name_0pri(&p.after_sb_0pri), false),
            None => no(policy_name_0pri(&p.after_sb_0pri)),
        },
        1 => {
            let pri = if a.role == Role::Primary { a } else { b };
            let sec = if a.role == Role::Primary { b } else { a };
            match p.after_sb_1pri {
                AfterSb1Pri::Disconnect => no("after-sb-1pri disconnect"),
                AfterSb1Pri::DiscardSecondary => {
                    mk(sec.node_id, "after-sb-1pri discard-secondary", false)
                }
                AfterSb1Pri::Consensus => match v0 {
                    Some(v) if v == sec.node_id => mk(v, "after-sb-1pri consensus", false),
                    _ => no("after-sb-1pri consensus"),
                },
                AfterSb1Pri::ViolentlyAs0p => match v0 {
                    Some(v) => mk(v, "after-sb-1pri violently-as0p", false),
                    None => no("after-sb-1pri violently-as0p"),
                },
                AfterSb1Pri::CallPriLostAfterSb => match v0 {
                    Some(v) => mk(v, "after-sb-1pri call-pri-lost-after-sb", v == pri.node_id),
                    None => no("after-sb-1pri call-pri-lost-after-sb"),
                },
            }
        }
        _ => match p.after_sb_2pri {
            AfterSb2Pri::Disconnect => no("after-sb-2pri disconnect"),
            AfterSb2Pri::ViolentlyAs0p => match v0 {
                Some(v) => mk(v, "after-sb-2pri violently-as0p", false),
                None => no("after-sb-2pri violently-as0p"),
            },
            AfterSb2Pri::CallPriLostAfterSb => match v0 {
                Some(v) => mk(v, "after-sb-2pri call-pri-lost-after-sb", true),
                None => no("after-sb-2pri call-pri-lost-after-sb"),
            },
        },
    }
}

#[cfg(test)]
mod tests;
