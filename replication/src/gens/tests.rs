use super::*;
use proptest::prelude::*;

fn view(id: u8, current: u64, bitmap: u64, history: [u64; 4]) -> NodeView {
    NodeView {
        node_id: id,
        node_name: format!("n{id}"),
        role: Role::Secondary,
        disk: DiskState::UpToDate,
        gens: Generations {
            current,
            bitmap,
            history,
        },
        crashed_primary: false,
        discard_my_data: false,
        bitmap_weight_bits: 0,
        primary_since_ms: 0,
    }
}

#[test]
fn decision_table() {
    let a = view(0, 0x100, 0, [0; 4]);
    let b = view(1, 0x101, 0, [0; 4]);
    assert_eq!(compare(&a, &b), Verdict::NoSync(Rule::Equal));

    // b wrote alone after a disconnect: b.bitmap = old current, b.current = new.
    let b2 = view(1, 0x201, 0x100, [0; 4]);
    assert_eq!(
        compare(&a, &b2),
        Verdict::Sync {
            source: 1,
            full: false,
            rule: Rule::Bitmap
        }
    );
    // Both wrote alone from the same ancestor: split brain, auto.
    let a2 = view(0, 0x301, 0x100, [0; 4]);
    assert_eq!(compare(&a2, &b2), Verdict::SplitBrain { auto: true });
    // a's current is in b's history only: full sync from b.
    let b3 = view(1, 0x401, 0, [0x100, 0, 0, 0]);
    assert_eq!(
        compare(&a, &b3),
        Verdict::Sync {
            source: 1,
            full: true,
            rule: Rule::History
        }
    );
    // Only an older ancestor shared: manual split brain.
    let a4 = view(0, 0x501, 0x502, [0x900, 0, 0, 0]);
    let b4 = view(1, 0x601, 0x602, [0x900, 0, 0, 0]);
    assert_eq!(compare(&a4, &b4), Verdict::SplitBrain { auto: false });
    // Nothing shared.
    let u = view(1, 0x7001, 0x7002, [0x7003, 0, 0, 0]);
    assert_eq!(compare(&a4, &u), Verdict::Unrelated);
    // Just created.
    let n = view(1, UUID_JUST_CREATED, 0, [0; 4]);
    assert_eq!(
        compare(&a, &n),
        Verdict::Sync {
            source: 0,
            full: true,
            rule: Rule::JustCreated
        }
    );
    let n0 = view(0, UUID_JUST_CREATED, 0, [0; 4]);
    assert_eq!(compare(&n0, &n), Verdict::NoSync(Rule::JustCreatedBoth));
}

#[test]
fn interrupted_resync_resumes_from_the_consistent_side() {
    let a = view(0, 0x100, 0, [0; 4]);
    let mut b = view(1, 0x100, 0, [0; 4]);
    b.disk = DiskState::Inconsistent;
    b.bitmap_weight_bits = 10;
    assert_eq!(
        compare(&a, &b),
        Verdict::Sync {
            source: 0,
            full: false,
            rule: Rule::EqualResume
        }
    );
}

#[test]
fn crashed_primary_with_equal_generations_is_source() {
    let a = view(0, 0x100, 0, [0; 4]);
    let mut b = view(1, 0x100, 0, [0; 4]);
    b.crashed_primary = true;
    assert!(matches!(
        compare(&a, &b),
        Verdict::Sync {
            source: 1,
            full: false,
            ..
        }
    ));
}

fn sb_pair() -> (NodeView, NodeView) {
    let mut a = view(0, 0x301, 0x100, [0; 4]);
    let mut b = view(1, 0x201, 0x100, [0; 4]);
    a.bitmap_weight_bits = 5;
    b.bitmap_weight_bits = 50;
    a.primary_since_ms = 1000;
    b.primary_since_ms = 2000;
    (a, b)
}

fn victim_of(plan: &Plan) -> Option<u8> {
    match plan {
        Plan::Sync { source, .. } => Some(1 - *source),
        _ => None,
    }
}

#[test]
fn after_sb_0pri_policies() {
    let (a, b) = sb_pair();
    let mut p = Policies::default();
    assert!(matches!(
        plan(&a, &b, &p),
        Plan::SplitBrainDisconnect { .. }
    ));
    p.after_sb_0pri = AfterSb0Pri::DiscardLeastChanges;
    assert_eq!(victim_of(&plan(&a, &b, &p)), Some(0));
    p.after_sb_0pri = AfterSb0Pri::DiscardYoungerPrimary;
    assert_eq!(victim_of(&plan(&a, &b, &p)), Some(1));
    p.after_sb_0pri = AfterSb0Pri::DiscardOlderPrimary;
    assert_eq!(victim_of(&plan(&a, &b, &p)), Some(0));
    p.after_sb_0pri = AfterSb0Pri::DiscardNode("n1".into());
    assert_eq!(victim_of(&plan(&a, &b, &p)), Some(1));
    p.after_sb_0pri = AfterSb0Pri::DiscardZeroChanges;
    assert!(matches!(
        plan(&a, &b, &p),
        Plan::SplitBrainDisconnect { .. }
    ));
    let mut a0 = a.clone();
    a0.bitmap_weight_bits = 0;
    assert_eq!(victim_of(&plan(&a0, &b, &p)), Some(0));
}

#[test]
fn after_sb_1pri_and_2pri_policies() {
    let (mut a, b) = sb_pair();
    a.role = Role::Primary;
    let mut p = Policies {
        after_sb_0pri: AfterSb0Pri::DiscardLeastChanges,
        ..Policies::default()
    };
    // 0pri would discard a (fewer changes), a is primary.
    assert!(matches!(
        plan(&a, &b, &p),
        Plan::SplitBrainDisconnect { .. }
    ));
    p.after_sb_1pri = AfterSb1Pri::DiscardSecondary;
    assert_eq!(victim_of(&plan(&a, &b, &p)), Some(1));
    p.after_sb_1pri = AfterSb1Pri::Consensus;
    assert!(matches!(
        plan(&a, &b, &p),
        Plan::SplitBrainDisconnect { .. }
    ));
    p.after_sb_1pri = AfterSb1Pri::CallPriLostAfterSb;
    match plan(&a, &b, &p) {
        Plan::Sync {
            source: 1,
            call_pri_lost_on: Some(0),
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let mut b2 = b.clone();
    b2.role = Role::Primary;
    p.allow_two_primaries = true;
    assert!(matches!(
        plan(&a, &b2, &p),
        Plan::SplitBrainDisconnect { .. }
    ));
    p.after_sb_2pri = AfterSb2Pri::ViolentlyAs0p;
    assert_eq!(victim_of(&plan(&a, &b2, &p)), Some(0));
}

#[test]
fn discard_my_data_names_the_victim() {
    let (a, mut b) = sb_pair();
    b.discard_my_data = true;
    let p = Policies::default();
    assert_eq!(victim_of(&plan(&a, &b, &p)), Some(1));
}

#[test]
fn primary_would_become_target_is_rr_conflict() {
    let mut a = view(0, 0x100, 0, [0; 4]);
    a.role = Role::Primary;
    let b = view(1, 0x201, 0x100, [0; 4]);
    let p = Policies::default();
    assert!(matches!(
        plan(&a, &b, &p),
        Plan::Refuse { retry: false, .. }
    ));
    let p = Policies {
        rr_conflict: RrConflict::Violently,
        ..Policies::default()
    };
    assert!(matches!(plan(&a, &b, &p), Plan::Sync { source: 1, .. }));
}

fn arb_view(id: u8) -> impl Strategy<Value = NodeView> {
    let uuid = prop_oneof![Just(0u64), Just(UUID_JUST_CREATED), 0x10u64..0x18];
    (
        uuid.clone(),
        uuid.clone(),
        proptest::array::uniform4(uuid),
        0u64..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u64..3,
    )
        .prop_map(move |(c, bm, h, w, pri, crashed, inc, since)| NodeView {
            node_id: id,
            node_name: format!("n{id}"),
            role: if pri { Role::Primary } else { Role::Secondary },
            disk: if inc {
                DiskState::Inconsistent
            } else {
                DiskState::UpToDate
            },
            gens: Generations {
                current: if c == 0 { 0x10 } else { c },
                bitmap: bm,
                history: h,
            },
            crashed_primary: crashed,
            discard_my_data: false,
            bitmap_weight_bits: w,
            primary_since_ms: since,
        })
}

proptest! {
    #[test]
    fn both_nodes_reach_the_same_plan(a in arb_view(0), b in arb_view(1), sb0 in 0usize..6) {
        let pols = [
            AfterSb0Pri::Disconnect, AfterSb0Pri::DiscardYoungerPrimary,
            AfterSb0Pri::DiscardOlderPrimary, AfterSb0Pri::DiscardZeroChanges,
            AfterSb0Pri::DiscardLeastChanges, AfterSb0Pri::DiscardNode("n0".into()),
        ];
        let p = Policies { after_sb_0pri: pols[sb0].clone(), allow_two_primaries: true, ..Policies::default() };
        prop_assert_eq!(plan(&a, &b, &p), plan(&b, &a, &p));
        // A plan never syncs from an Inconsistent node.
        if let Plan::Sync { source, .. } = plan(&a, &b, &p) {
            let src = if source == 0 { &a } else { &b };
            prop_assert!(src.disk != DiskState::Inconsistent);
        }
    }
}
