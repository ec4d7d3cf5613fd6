//! ALUA tests: RTPG golden bytes, INQUIRY/VPD, the command matrix per state, unit
//! attentions after a change, SET TARGET PORT GROUPS, REPORT SUPPORTED OPERATION CODES.

use std::sync::Arc;

use twinsan_blockdev::IoBuf;
use uuid::Uuid;

use super::*;
use crate::api::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TaskAttr, TaskMgmt};
use crate::fuzzing::MemDisk;
use crate::{LunConfig, LunMap};

const G1: u16 = 0x0101;
const G2: u16 = 0x0202;

struct H {
    map: LunMap,
    alua: Arc<AluaState>,
}

fn nx(id: u64, rel: u16) -> Nexus {
    Nexus {
        id,
        initiator_port: format!("iqn.test:{id},i,0x1"),
        relative_port_id: rel,
    }
}

fn two_groups(explicit: bool) -> AluaConfig {
    AluaConfig {
        groups: vec![
            PortGroupConfig {
                id: G1,
                state: AccessState::ActiveOptimized,
                preferred: true,
                relative_port_ids: vec![1, 3],
            },
            PortGroupConfig {
                id: G2,
                state: AccessState::Standby,
                preferred: false,
                relative_port_ids: vec![2],
            },
        ],
        explicit,
        implicit_transition_time_s: 30,
    }
}

impl H {
    fn new(explicit: bool) -> H {
        let disk = Arc::new(MemDisk::new(2048, 512, true));
        let lu = Arc::new(LogicalUnit::new(
            LunConfig::new(Uuid::from_u128(0xA1)),
            disk,
        ));
        let alua = AluaState::new(two_groups(explicit)).unwrap();
        let map = LunMap::new(vec![(0, lu)]).with_alua(alua.clone());
        H { map, alua }
    }

    fn run_max(&self, n: &Nexus, cdb: &[u8], out: &[u8], max: u32) -> (ScsiResponse, Vec<u8>) {
        let mut data_in = IoBuf::new();
        let req = ScsiRequest {
            nexus: n,
            lun: 0,
            cdb,
            data_out: out,
            data_in_len_max: max,
            attr: TaskAttr::Simple,
        };
        let r = self.map.execute(&req, &mut data_in);
        (r, data_in.to_vec())
    }

    fn run(&self, n: &Nexus, cdb: &[u8]) -> (ScsiResponse, Vec<u8>) {
        self.run_max(n, cdb, &[], 4096)
    }

    /// Run and return the sense triple (or `None` for GOOD).
    fn sense(&self, n: &Nexus, cdb: &[u8], out: &[u8]) -> Option<(u8, u8, u8)> {
        let (r, _) = self.run_max(n, cdb, out, 4096);
        match r.status {
            ScsiStatus::Good => None,
            ScsiStatus::CheckCondition => {
                let s = r.sense.expect("sense");
                Some((s[2] & 0x0F, s[12], s[13]))
            }
            other => panic!("unexpected status {other:?}"),
        }
    }

    /// Log the nexus in: consume its power-on unit attention.
    fn connect(&self, n: &Nexus) {
        assert_eq!(self.sense(n, &TUR, &[]), Some((6, 0x29, 0x00)));
    }
}

const INQ: [u8; 6] = [0x12, 0, 0, 0, 0xFF, 0];
const TUR: [u8; 6] = [0; 6];
const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
const WRITE10: [u8; 10] = [0x2A, 0, 0, 0, 0, 0, 0, 0, 1, 0];

fn rtpg(format: u8, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = (format << 5) | 0x0A;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn stpg(len: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA4;
    c[1] = 0x0A;
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

const NOT_READY_STANDBY: Option<(u8, u8, u8)> = Some((2, 0x04, 0x0B));
const NOT_READY_UNAVAILABLE: Option<(u8, u8, u8)> = Some((2, 0x04, 0x0C));
const NOT_READY_TRANSITION: Option<(u8, u8, u8)> = Some((2, 0x04, 0x0A));
const NOT_READY_OFFLINE: Option<(u8, u8, u8)> = Some((2, 0x04, 0x12));
const STATE_CHANGED: Option<(u8, u8, u8)> = Some((6, 0x2A, 0x06));

#[test]
fn state_names_and_codes_round_trip() {
    for s in AccessState::ALL {
        assert_eq!(AccessState::from_code(s.code()), Some(s));
        assert_eq!(s.name().parse::<AccessState>(), Ok(s));
        assert_eq!(s.to_string(), s.name());
    }
    assert_eq!(
        "AO".parse::<AccessState>(),
        Ok(AccessState::ActiveOptimized)
    );
    assert_eq!(
        "Active_Non_Optimized".parse::<AccessState>(),
        Ok(AccessState::ActiveNonOptimized)
    );
    assert!("standbye".parse::<AccessState>().is_err());
    assert_eq!(AccessState::from_code(0x4), None);
    assert_eq!(AccessState::from_code(0x8), None);
}

#[test]
fn config_validation() {
    let g = |id, ports: Vec<u16>| PortGroupConfig {
        id,
        state: AccessState::ActiveOptimized,
        preferred: false,
        relative_port_ids: ports,
    };
    assert_eq!(
        AluaState::new(AluaConfig::new(vec![])).unwrap_err(),
        AluaError::NoGroups
    );
    assert_eq!(
        AluaState::new(AluaConfig::new(vec![g(1, vec![1]), g(1, vec![2])])).unwrap_err(),
        AluaError::DuplicateGroup(1)
    );
    assert_eq!(
        AluaState::new(AluaConfig::new(vec![g(1, vec![1]), g(2, vec![1])])).unwrap_err(),
        AluaError::DuplicatePort(1)
    );
    assert_eq!(
        AluaState::new(AluaConfig::new(vec![g(1, vec![0])])).unwrap_err(),
        AluaError::ZeroPort
    );
    assert_eq!(
        AluaState::new(AluaConfig::new(vec![g(1, (1..=256).collect())])).unwrap_err(),
        AluaError::TooManyPorts(1)
    );
    let a = AluaState::new(AluaConfig::new(vec![g(0, vec![]), g(7, vec![9])])).unwrap();
    assert_eq!(
        a.set(8, AccessState::Standby),
        Err(AluaError::NoSuchGroup(8))
    );
    assert_eq!(a.port_state(9), Some((7, AccessState::ActiveOptimized)));
    assert_eq!(a.port_state(1), None);
}

#[test]
fn rtpg_golden_both_formats() {
    let h = H::new(false);
    let n = nx(1, 1);
    h.connect(&n);
    let (r, d) = h.run(&n, &rtpg(0, 4096));
    assert_eq!(r.status, ScsiStatus::Good);
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        0, 0, 0, 28,
        // group 0x0101: PREF | active/optimized, all but LBD supported, 2 ports
        0x80, 0xCF, 0x01, 0x01, 0, 0, 0, 2,
        0, 0, 0, 1,
        0, 0, 0, 3,
        // group 0x0202: standby, 1 port
        0x02, 0xCF, 0x02, 0x02, 0, 0, 0, 1,
        0, 0, 0, 2,
    ];
    assert_eq!(d, want);
    assert_eq!(r.cdb_transfer_len, Some(32));
    // Extended header: format type 1, implicit transition time 30 s.
    let (_, e) = h.run(&n, &rtpg(1, 4096));
    assert_eq!(&e[0..8], &[0, 0, 0, 32, 0x10, 30, 0, 0]);
    assert_eq!(&e[8..], &want[4..]);
    // Allocation length truncates; the length field still reports everything.
    let (r, d) = h.run(&n, &rtpg(0, 4));
    assert_eq!(d, vec![0, 0, 0, 28]);
    assert_eq!(r.cdb_transfer_len, Some(4));
    let (_, d) = h.run(&n, &rtpg(0, 0));
    assert!(d.is_empty());
    // Reserved formats: INVALID FIELD IN CDB at byte 1 bit 7.
    let (r, _) = h.run(&n, &rtpg(2, 4096));
    let s = r.sense.unwrap();
    assert_eq!((s[2], s[12], s[13]), (5, 0x24, 0));
    assert_eq!(&s[15..18], &[0xCF, 0x00, 0x01]);
    // After an implicit change the status code says so.
    h.alua.set(G2, AccessState::Unavailable).unwrap();
    assert_eq!(h.sense(&n, &rtpg(0, 4096), &[]), STATE_CHANGED);
    let (_, d) = h.run(&n, &rtpg(0, 4096));
    assert_eq!(&d[20..28], &[0x03, 0xCF, 0x02, 0x02, 0, 2, 0, 1]);
}

#[test]
fn inquiry_reports_tpgs_and_port_group_designator() {
    let h = H::new(false);
    let n1 = nx(1, 1);
    let n2 = nx(2, 2);
    let n9 = nx(9, 9); // a port in no group
    let (_, std) = h.run(&n1, &INQ);
    assert_eq!(std[5] & 0x30, 0x10, "implicit ALUA");
    assert_eq!(H::new(true).run(&n1, &INQ).1[5] & 0x30, 0x30);
    let vpd83 = [0x12, 0x01, 0x83, 0x01, 0x00, 0];
    let (_, p1) = h.run(&n1, &vpd83);
    let (_, p2) = h.run(&n2, &vpd83);
    let (_, p9) = h.run(&n9, &vpd83);
    // NAA + T10 vendor id + relative port, then the target port group (type 5).
    assert_eq!(p9.len(), 4 + 20 + 44 + 8);
    assert_eq!(&p1[4..68], &p9[4..68], "same device identity on every port");
    assert_eq!(p1.len(), 76 + 8);
    assert_eq!(&p1[4 + 64..4 + 72], &[0x51, 0x94, 0, 4, 0, 0, 0, 1]);
    assert_eq!(&p1[76..], &[0x01, 0x15, 0, 4, 0, 0, 0x01, 0x01]);
    assert_eq!(&p2[76..], &[0x01, 0x15, 0, 4, 0, 0, 0x02, 0x02]);
    assert_eq!(u16::from_be_bytes([p1[2], p1[3]]) as usize, p1.len() - 4);
    // Without ALUA: TPGS 00b and no designator.
    let plain = LunMap::new(vec![(
        0,
        Arc::new(LogicalUnit::new(
            LunConfig::new(Uuid::from_u128(0xA1)),
            Arc::new(MemDisk::new(64, 512, true)),
        )),
    )]);
    let p = H {
        map: plain,
        alua: h.alua.clone(),
    };
    assert_eq!(p.run(&n1, &INQ).1[5] & 0x30, 0);
    let mut want = p1[..76].to_vec();
    want[3] = 72;
    assert_eq!(p.run(&n1, &vpd83).1, want);
}

/// The command matrix: what each state lets through and the sense of the rest.
#[test]
fn commands_allowed_per_state() {
    let h = H::new(true);
    let n = nx(1, 1);
    h.connect(&n);
    let mode_sense6 = [0x1A, 0, 0x3F, 0, 0xFF, 0];
    let read_cap10 = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let prin_keys = [0x5E, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0];
    let rsoc = [0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
    let report_luns = [0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0, 0];
    let sync_cache = [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let unsupported = [0xC0u8, 0, 0, 0, 0, 0];
    let cases: [(&[u8], &str); 11] = [
        (&INQ, "inquiry"),
        (&report_luns, "report luns"),
        (&rtpg(0, 255), "rtpg"),
        (&mode_sense6, "mode sense"),
        (&read_cap10, "read capacity"),
        (&prin_keys, "prin"),
        (&rsoc, "rsoc"),
        (&TUR, "tur"),
        (&READ10, "read"),
        (&sync_cache, "sync cache"),
        (&unsupported, "unsupported"),
    ];
    use AccessState as S;
    // true: processed (whatever its own result), false: refused with the state's sense.
    let matrix: [(S, [bool; 11]); 6] = [
        (S::ActiveOptimized, [true; 11]),
        (S::ActiveNonOptimized, [true; 11]),
        (
            S::Standby,
            [
                true, true, true, true, true, true, true, false, false, false, true,
            ],
        ),
        (
            S::Unavailable,
            [
                true, true, true, false, false, false, true, false, false, false, true,
            ],
        ),
        (
            S::Transitioning,
            [
                true, true, true, false, false, false, true, false, false, false, true,
            ],
        ),
        (
            S::Offline,
            [
                true, true, false, false, false, false, false, false, false, false, true,
            ],
        ),
    ];
    let not_ready = |got: Option<(u8, u8, u8)>| got.is_some_and(|s| (s.0, s.1) == (2, 0x04));
    for (state, allowed) in matrix {
        if h.alua.set(G1, state).unwrap() {
            // The change's unit attention comes first (INQUIRY never reports it).
            assert_eq!(h.sense(&n, &INQ, &[]), None);
            assert_eq!(h.sense(&n, &TUR, &[]), STATE_CHANGED, "{state}");
        }
        let refusal = state.not_ready_sense().map(|s| (s.key, s.asc, s.ascq));
        for ((cdb, name), ok) in cases.iter().zip(allowed) {
            let got = h.sense(&n, cdb, &[]);
            if ok {
                assert!(!not_ready(got), "{name} in {state}: {got:?}");
            } else {
                assert_eq!(got, refusal, "{name} in {state}");
            }
        }
        // STPG is processed in the active states, standby and unavailable.
        let body = [0, 0, 0, 0, state.code().min(3), 0, 0x01, 0x01];
        let got = h.sense(&n, &stpg(8), &body);
        if matches!(state, S::Transitioning | S::Offline) {
            assert_eq!(got, refusal, "stpg in {state}");
        } else {
            assert_eq!(got, None, "stpg in {state}");
        }
    }
    // Concrete sense codes.
    for (state, want) in [
        (S::Standby, NOT_READY_STANDBY),
        (S::Unavailable, NOT_READY_UNAVAILABLE),
        (S::Transitioning, NOT_READY_TRANSITION),
        (S::Offline, NOT_READY_OFFLINE),
    ] {
        h.alua.set(G1, state).unwrap();
        assert_eq!(h.sense(&n, &READ10, &[]), STATE_CHANGED);
        assert_eq!(h.sense(&n, &READ10, &[]), want, "{state}");
        assert_eq!(h.sense(&n, &WRITE10, &[0; 512]), want, "{state}");
        // REQUEST SENSE reports why the port cannot process commands.
        let (_, d) = h.run(&n, &[0x03, 0, 0, 0, 18, 0]);
        assert_eq!((d[2], d[12], d[13]), want.unwrap(), "{state}");
    }
    h.alua.set(G1, S::ActiveOptimized).unwrap();
    assert_eq!(h.sense(&n, &TUR, &[]), STATE_CHANGED);
    assert_eq!(h.sense(&n, &READ10, &[]), None);
    let (_, d) = h.run(&n, &[0x03, 0, 0, 0, 18, 0]);
    assert_eq!(d[2] & 0x0F, 0, "no sense when accessible");
}

#[test]
fn state_change_unit_attention_reaches_every_nexus_once() {
    let h = H::new(false);
    let a = nx(1, 1);
    let b = nx(2, 2);
    let c = nx(3, 3);
    for n in [&a, &b, &c] {
        h.connect(n);
    }
    // Port 2 (group 2) is standby: medium access refused, INQUIRY fine.
    assert_eq!(h.sense(&b, &READ10, &[]), NOT_READY_STANDBY);
    assert_eq!(h.sense(&b, &INQ, &[]), None);
    assert_eq!(h.alua.set(G2, AccessState::ActiveOptimized), Ok(true));
    // Every nexus, on every port, gets the unit attention exactly once.
    for n in [&a, &b, &c] {
        assert_eq!(h.sense(n, &INQ, &[]), None, "INQUIRY does not report it");
        assert_eq!(h.sense(n, &READ10, &[]), STATE_CHANGED);
        assert_eq!(h.sense(n, &READ10, &[]), None);
    }
    // Setting the same state again changes nothing and reports nothing.
    assert_eq!(h.alua.set(G2, AccessState::ActiveOptimized), Ok(false));
    assert_eq!(h.sense(&b, &TUR, &[]), None);
    // The PREF bit is informational: no unit attention.
    assert_eq!(h.alua.set_preferred(G2, true), Ok(true));
    assert_eq!(h.sense(&b, &TUR, &[]), None);
    assert_eq!(h.run(&b, &rtpg(0, 255)).1[20], 0x80);
    // A nexus that logs in after the change sees only its power-on condition.
    h.alua.set(G1, AccessState::ActiveNonOptimized).unwrap();
    let d = nx(4, 1);
    assert_eq!(h.sense(&d, &TUR, &[]), Some((6, 0x29, 0x00)));
    assert_eq!(h.sense(&d, &TUR, &[]), None);
    assert_eq!(h.sense(&a, &TUR, &[]), STATE_CHANGED);
    let status = h.alua.groups();
    assert_eq!(status[0].state, AccessState::ActiveNonOptimized);
    assert_eq!(status[0].cause, ChangeCause::Implicit);
    assert_eq!(status[1].relative_port_ids, vec![2]);
}

#[test]
fn set_target_port_groups() {
    // Implicit only: MAINTENANCE OUT has no supported service action.
    let h = H::new(false);
    let n = nx(1, 1);
    h.connect(&n);
    let body = [0, 0, 0, 0, 0x00, 0, 0x02, 0x02];
    assert_eq!(h.sense(&n, &stpg(8), &body), Some((5, 0x20, 0x00)));
    assert_eq!(h.alua.state(G2), Some(AccessState::Standby));

    let h = H::new(true);
    let (a, b) = (nx(1, 1), nx(2, 2));
    h.connect(&a);
    h.connect(&b);
    // Group 2 to active/optimized and group 1 to standby, in one command from b.
    let body = [0, 0, 0, 0, 0x00, 0, 0x02, 0x02, 0x02, 0, 0x01, 0x01];
    assert_eq!(h.sense(&b, &stpg(12), &body), None);
    assert_eq!(h.alua.state(G1), Some(AccessState::Standby));
    assert_eq!(h.alua.state(G2), Some(AccessState::ActiveOptimized));
    assert_eq!(h.alua.groups()[0].cause, ChangeCause::Explicit);
    // The issuer gets no unit attention; the other nexus does.
    assert_eq!(h.sense(&b, &READ10, &[]), None);
    assert_eq!(h.sense(&a, &READ10, &[]), STATE_CHANGED);
    assert_eq!(h.sense(&a, &READ10, &[]), NOT_READY_STANDBY);
    // Transitioning / offline / reserved states cannot be requested.
    for st in [0x0F, 0x0E, 0x04] {
        let body = [0, 0, 0, 0, st, 0, 0x01, 0x01];
        assert_eq!(
            h.sense(&b, &stpg(8), &body),
            Some((5, 0x26, 0x00)),
            "{st:#x}"
        );
    }
    // Unknown group: nothing changes, not even the groups listed before it.
    let body = [0, 0, 0, 0, 0x00, 0, 0x01, 0x01, 0x00, 0, 0x09, 0x09];
    let (r, _) = h.run_max(&b, &stpg(12), &body, 0);
    let s = r.sense.unwrap();
    assert_eq!((s[2], s[12], s[13]), (5, 0x26, 0x00));
    assert_eq!(&s[15..18], &[0x8F, 0x00, 10]);
    assert_eq!(h.alua.state(G1), Some(AccessState::Standby));
    // Parameter list length: zero is a no-op; partial descriptors and a list longer
    // than the data sent are errors.
    assert_eq!(h.sense(&b, &stpg(0), &[]), None);
    assert_eq!(
        h.sense(&b, &stpg(6), &[0, 0, 0, 0, 0, 0]),
        Some((5, 0x1A, 0x00))
    );
    assert_eq!(h.sense(&b, &stpg(8), &[0, 0, 0, 0]), Some((5, 0x1A, 0x00)));
    // Other MAINTENANCE OUT service actions: INVALID FIELD IN CDB (byte 1).
    let mut other = stpg(0);
    other[1] = 0x06;
    let (r, _) = h.run(&b, &other);
    let s = r.sense.unwrap();
    assert_eq!((s[2], s[12], s[13]), (5, 0x24, 0x00));
    assert_eq!(&s[15..18], &[0xCC, 0x00, 0x01]);
    // Standby ports may send STPG (to make themselves active).
    let body = [0, 0, 0, 0, 0x00, 0, 0x01, 0x01];
    assert_eq!(h.sense(&a, &stpg(8), &body), None);
    assert_eq!(h.alua.state(G1), Some(AccessState::ActiveOptimized));
}

#[test]
fn report_supported_opcodes_lists_alua_commands() {
    for explicit in [false, true] {
        let h = H::new(explicit);
        let n = nx(1, 1);
        h.connect(&n);
        let all = h
            .run_max(
                &n,
                &[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0],
                &[],
                65535,
            )
            .1;
        let len = u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize;
        assert_eq!(len + 4, all.len());
        let entries: Vec<(u8, u16)> = all[4..]
            .chunks(8)
            .map(|e| (e[0], u16::from_be_bytes([e[2], e[3]])))
            .collect();
        // UNMAP is listed only for thin-provisioned LUs (see `thin.rs`); this one is not.
        let base = rsoc::SUPPORTED.iter().filter(|i| i.opcode != 0x42).count();
        assert_eq!(entries.len(), base + 1 + usize::from(explicit));
        let mut sorted = entries.clone();
        sorted.sort_unstable();
        assert_eq!(entries, sorted);
        assert!(entries.contains(&(0xA3, 0x0A)));
        assert_eq!(entries.contains(&(0xA4, 0x0A)), explicit);
        // Every listed command is implemented.
        for (opcode, sa) in entries {
            let mut cdb = [0u8; 16];
            cdb[0] = opcode;
            cdb[1] = sa as u8;
            let len = crate::cdb::cdb_len_for_opcode(opcode).unwrap();
            if let Some(s) = h.sense(&n, &cdb[..len], &[]) {
                assert_ne!((s.0, s.1), (5, 0x20), "{opcode:#x}/{sa:#x}");
            }
        }
        // One command: RTPG usage data; with timeouts descriptor.
        let one = h
            .run(
                &n,
                &[0xA3, 0x0C, 0x82, 0xA3, 0, 0x0A, 0, 0, 0xFF, 0xFF, 0, 0],
            )
            .1;
        assert_eq!(one[1], 0x83);
        assert_eq!(&one[2..4], &[0, 12]);
        assert_eq!(&one[4..16], RTPG_USAGE);
        assert_eq!(one.len(), 4 + 12 + 12);
        let stpg_one = h
            .run(
                &n,
                &[0xA3, 0x0C, 0x02, 0xA4, 0, 0x0A, 0, 0, 0xFF, 0xFF, 0, 0],
            )
            .1;
        assert_eq!(stpg_one[1] & 0x07, if explicit { 3 } else { 1 });
        // Other service actions of MAINTENANCE IN are still reported.
        let rsoc_one = h
            .run(
                &n,
                &[0xA3, 0x0C, 0x02, 0xA3, 0, 0x0C, 0, 0, 0xFF, 0xFF, 0, 0],
            )
            .1;
        assert_eq!(rsoc_one[1] & 0x07, 3);
        assert_eq!(rsoc_one[4], 0xA3);
        // Reporting option 1 on an opcode with service actions is invalid.
        let opt1 = [0xA3, 0x0C, 0x01, 0xA4, 0, 0, 0, 0, 0xFF, 0xFF, 0, 0];
        if explicit {
            assert_eq!(h.sense(&n, &opt1, &[]), Some((5, 0x24, 0)));
        } else {
            assert_eq!(h.run(&n, &opt1).1, vec![0, 1, 0, 0]);
        }
    }
}

#[test]
fn rtpg_and_reservations() {
    let h = H::new(true);
    let (a, b) = (nx(1, 1), nx(2, 3));
    h.connect(&a);
    h.connect(&b);
    // RESERVE(6) by a: b may still ask for the port groups, not change them.
    assert_eq!(h.sense(&a, &[0x16, 0, 0, 0, 0, 0], &[]), None);
    assert_eq!(h.run(&b, &rtpg(0, 255)).0.status, ScsiStatus::Good);
    let body = [0, 0, 0, 0, 0x01, 0, 0x01, 0x01];
    assert_eq!(
        h.run_max(&b, &stpg(8), &body, 0).0.status,
        ScsiStatus::ReservationConflict
    );
    // A LUN reset releases it; the unit attention reaches both nexuses.
    h.map
        .task_mgmt(&a, 0, TaskMgmt::LunReset)
        .expect("LUN reset");
    assert_eq!(h.sense(&a, &TUR, &[]), Some((6, 0x29, 0x03)));
    assert_eq!(h.sense(&b, &TUR, &[]), Some((6, 0x29, 0x03)));
    assert_eq!(h.sense(&b, &stpg(8), &body), None);
    // The ALUA state is not part of what a reset resets.
    assert_eq!(h.alua.state(G1), Some(AccessState::ActiveNonOptimized));
}

#[test]
fn ports_outside_every_group_are_active() {
    let h = H::new(false);
    let n = nx(1, 77);
    h.connect(&n);
    h.alua.set(G1, AccessState::Unavailable).unwrap();
    h.alua.set(G2, AccessState::Unavailable).unwrap();
    assert_eq!(h.sense(&n, &TUR, &[]), STATE_CHANGED);
    assert_eq!(h.sense(&n, &READ10, &[]), None);
}
