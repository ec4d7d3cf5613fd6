//! Tests of persistent reservations: the record format (golden bytes, rejection of
//! damaged records), TransportIDs, and every service action driven through
//! [`LunMap::execute`] like a transport would (access matrix per type, unit attentions,
//! PREEMPT AND ABORT hook, REGISTER AND MOVE, SPEC_I_PT / ALL_TG_PT, RESERVE(6)
//! interplay, persistence through stores, store failures).

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use twinsan_blockdev::IoBuf;
use uuid::Uuid;

use super::*;
use crate::api::{PreemptAbort, ScsiRequest, ScsiResponse, ScsiStatus, TaskAttr, TaskMgmt};
use crate::fuzzing::MemDisk;
use crate::{LogicalUnit, LunConfig, LunMap};

const WE: u8 = 1;
const EA: u8 = 3;
const WERO: u8 = 5;
const EARO: u8 = 6;
const WEAR: u8 = 7;
const EAAR: u8 = 8;

const REGISTER: u8 = prout_sa::REGISTER;
const RESERVE: u8 = prout_sa::RESERVE;
const RELEASE: u8 = prout_sa::RELEASE;
const CLEAR: u8 = prout_sa::CLEAR;
const PREEMPT: u8 = prout_sa::PREEMPT;
const PREEMPT_AND_ABORT: u8 = prout_sa::PREEMPT_AND_ABORT;
const RAI: u8 = prout_sa::REGISTER_AND_IGNORE_EXISTING_KEY;
const MOVE: u8 = prout_sa::REGISTER_AND_MOVE;

const SPEC_I_PT: u8 = 0x08;
const ALL_TG_PT: u8 = 0x04;
const APTPL: u8 = 0x01;

const CONFLICT: ScsiStatus = ScsiStatus::ReservationConflict;
const PLL_ERROR: (u8, u8, u8) = (5, 0x1A, 0x00);
const BAD_PARAM: (u8, u8, u8) = (5, 0x26, 0x00);
const BAD_CDB: (u8, u8, u8) = (5, 0x24, 0x00);

const PREFIX: &str = "iqn.2026-01.org.example:";

fn port_name(host: &str, isid: u64) -> String {
    format!("{PREFIX}{host},i,0x{isid:012x}")
}

fn nx(id: u64, host: &str, isid: u64, rel: u16) -> Nexus {
    Nexus {
        id,
        initiator_port: port_name(host, isid),
        relative_port_id: rel,
    }
}

/// Basic PERSISTENT RESERVE OUT parameter list.
fn params(rk: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    p
}

/// iSCSI TransportID built by hand (format 01b when the text has an ISID part).
fn tid(text: &str, format: u8) -> Vec<u8> {
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    while body.len() < 20 || !body.len().is_multiple_of(4) {
        body.push(0);
    }
    let mut b = vec![(format << 6) | 0x05, 0];
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(&body);
    b
}

/// REGISTER AND MOVE parameter list.
fn move_params(rk: u64, sark: u64, unreg: bool, rtpi: u16, tid: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[17] = if unreg { 0x02 } else { 0 };
    p[18..20].copy_from_slice(&rtpi.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

fn sense(r: &ScsiResponse) -> (u8, u8, u8) {
    assert_eq!(r.status, ScsiStatus::CheckCondition, "{r:?}");
    let s = r.sense.as_ref().expect("sense");
    (s[2] & 0x0F, s[12], s[13])
}

struct H {
    map: LunMap,
    lu: Arc<LogicalUnit>,
    /// Never registers: reads the state with PERSISTENT RESERVE IN.
    obs: Nexus,
}

fn cfg_with(store: Option<Arc<dyn ReservationStore>>, restore: PrRestore) -> LunConfig {
    let mut cfg = LunConfig::new(Uuid::from_u128(0xABCD));
    cfg.pr_store = store;
    cfg.pr_restore = restore;
    cfg
}

impl H {
    fn new() -> H {
        Self::with_cfg(cfg_with(None, PrRestore::PowerOn))
    }

    fn with_store(store: Arc<dyn ReservationStore>) -> H {
        Self::with_cfg(cfg_with(Some(store), PrRestore::PowerOn))
    }

    fn with_cfg(cfg: LunConfig) -> H {
        let disk = Arc::new(MemDisk::new(64, 512, true));
        let lu = Arc::new(LogicalUnit::new(cfg, disk));
        H {
            map: LunMap::new(vec![(0, lu.clone())]),
            lu,
            obs: nx(999_999, "observer", 0xFFF, 1),
        }
    }

    fn run_max(&self, n: &Nexus, cdb: &[u8], out: &[u8], max: u32) -> (ScsiResponse, Vec<u8>) {
        let req = ScsiRequest {
            nexus: n,
            lun: 0,
            cdb,
            data_out: out,
            data_in_len_max: max,
            attr: TaskAttr::Simple,
        };
        let mut buf = IoBuf::new();
        let r = self.map.execute(&req, &mut buf);
        assert_eq!(buf.len(), r.data_in_len as usize);
        (r, buf.to_vec())
    }

    fn run(&self, n: &Nexus, cdb: &[u8], out: &[u8]) -> (ScsiResponse, Vec<u8>) {
        self.run_max(n, cdb, out, 1 << 16)
    }

    /// TEST UNIT READY until it stops reporting unit attentions; returns them.
    fn uas(&self, n: &Nexus) -> Vec<(u8, u8)> {
        let mut v = Vec::new();
        loop {
            let (r, _) = self.run(n, &[0; 6], &[]);
            if r.status == ScsiStatus::CheckCondition {
                let (k, a, q) = sense(&r);
                assert_eq!(k, 6, "not a unit attention");
                v.push((a, q));
                assert!(v.len() < 20);
            } else {
                return v;
            }
        }
    }

    /// Connect nexuses: consume their power-on unit attention.
    fn connect(&self, ns: &[&Nexus]) {
        for n in ns {
            assert_eq!(self.uas(n), vec![(0x29, 0x00)]);
        }
    }

    fn prout_raw(&self, n: &Nexus, sa: u8, scope_type: u8, p: &[u8]) -> ScsiResponse {
        let len = (p.len() as u32).to_be_bytes();
        let cdb = [
            0x5F, sa, scope_type, 0, 0, len[0], len[1], len[2], len[3], 0,
        ];
        let (r, d) = self.run(n, &cdb, p);
        assert!(d.is_empty());
        if r.status != CONFLICT {
            assert_eq!(r.cdb_transfer_len, Some(p.len() as u64));
        }
        r
    }

    fn prout(&self, n: &Nexus, sa: u8, ty: u8, rk: u64, sark: u64, flags: u8) -> ScsiResponse {
        self.prout_raw(n, sa, ty, &params(rk, sark, flags))
    }

    fn ok(&self, n: &Nexus, sa: u8, ty: u8, rk: u64, sark: u64, flags: u8) {
        let r = self.prout(n, sa, ty, rk, sark, flags);
        assert_eq!(r.status, ScsiStatus::Good, "PROUT sa {sa}: {r:?}");
    }

    fn prin(&self, n: &Nexus, sa: u8, alloc: u16) -> Vec<u8> {
        let a = alloc.to_be_bytes();
        let (r, d) = self.run(n, &[0x5E, sa, 0, 0, 0, 0, 0, a[0], a[1], 0], &[]);
        assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
        d
    }

    /// (PRGENERATION, keys), read by the observer.
    fn keys(&self) -> (u32, Vec<u64>) {
        self.uas(&self.obs);
        let d = self.prin(&self.obs, 0, 65535);
        let gen = u32::from_be_bytes(d[0..4].try_into().unwrap());
        let len = u32::from_be_bytes(d[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, d.len() - 8);
        let keys = d[8..]
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect();
        (gen, keys)
    }

    /// (key, type) of the reservation, read by the observer.
    fn resv(&self) -> Option<(u64, u8)> {
        self.uas(&self.obs);
        let d = self.prin(&self.obs, 1, 4096);
        match u32::from_be_bytes(d[4..8].try_into().unwrap()) {
            0 => {
                assert_eq!(d.len(), 8);
                None
            }
            16 => {
                assert_eq!(d.len(), 24);
                Some((u64::from_be_bytes(d[8..16].try_into().unwrap()), d[21]))
            }
            l => panic!("additional length {l}"),
        }
    }

    fn read(&self, n: &Nexus) -> ScsiStatus {
        self.run(n, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[])
            .0
            .status
    }

    fn write(&self, n: &Nexus) -> ScsiStatus {
        self.run(n, &[0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0], &[0xA5; 512])
            .0
            .status
    }
}

// ---------------------------------------------------------------- identity, TransportIDs

#[test]
fn initiator_port_parsing() {
    assert_eq!(
        split_initiator_port("iqn.a:b,i,0x00023d000001"),
        ("iqn.a:b", Some(0x23d000001))
    );
    assert_eq!(split_initiator_port("iqn.a:b,I,0X0"), ("iqn.a:b", Some(0)));
    assert_eq!(split_initiator_port("iqn.a:b"), ("iqn.a:b", None));
    assert_eq!(split_initiator_port("iqn.a:b,i,0x"), ("iqn.a:b,i,0x", None));
    assert_eq!(
        split_initiator_port("iqn.a:b,i,0x1234567890abc"),
        ("iqn.a:b,i,0x1234567890abc", None),
        "13 digits"
    );
    assert_eq!(split_initiator_port("x,i,0xzz"), ("x,i,0xzz", None));
    assert_eq!(split_initiator_port("é,i,0x1"), ("é", Some(1)));
    let p = RegisteredPort {
        initiator_name: "IQN.A:B".into(),
        isid: Some(1),
        relative_port_id: Some(3),
    };
    assert!(p.matches("iqn.a:b,i,0x000000000001", 3));
    assert!(!p.matches("iqn.a:b,i,0x000000000002", 3));
    assert!(!p.matches("iqn.a:b,i,0x000000000001", 4));
    assert!(!p.matches("iqn.a:b", 3));
    let node = RegisteredPort {
        isid: None,
        relative_port_id: None,
        ..p.clone()
    };
    assert!(node.matches("iqn.a:b,i,0x7", 9));
    assert_eq!(p.initiator_port(), "IQN.A:B,i,0x000000000001");
}

#[test]
fn transport_id_golden_and_parse() {
    let p = RegisteredPort {
        initiator_name: "iqn.x:y".into(),
        isid: Some(0x80_1234_5678),
        relative_port_id: Some(1),
    };
    // "iqn.x:y,i,0x008012345678" is 24 bytes + NUL = 25 → padded to 28.
    let mut want = vec![0x45, 0x00, 0x00, 28];
    want.extend_from_slice(b"iqn.x:y,i,0x008012345678");
    want.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(p.transport_id(), want);
    assert_eq!(tid("iqn.x:y,i,0x008012345678", 1), want);
    let (t, len) = parse_transport_id(&want).unwrap();
    assert_eq!(len, 32);
    assert_eq!(
        t,
        TransportId {
            name: "iqn.x:y".into(),
            isid: Some(0x80_1234_5678)
        }
    );
    // Format 00b: the minimum length (20 bytes of name field).
    let node = RegisteredPort {
        isid: None,
        ..p.clone()
    };
    let mut want = vec![0x05, 0x00, 0x00, 20];
    want.extend_from_slice(b"iqn.x:y");
    want.resize(24, 0);
    assert_eq!(node.transport_id(), want);
    assert_eq!(
        parse_transport_id(&want).unwrap(),
        (
            TransportId {
                name: "iqn.x:y".into(),
                isid: None
            },
            24
        )
    );
    // Rejections.
    use TransportIdError as E;
    assert_eq!(parse_transport_id(&want[..3]), Err(E::Truncated));
    assert_eq!(parse_transport_id(&want[..23]), Err(E::Truncated));
    let mut w = want.clone();
    w[0] = 0x01; // FCP
    assert_eq!(parse_transport_id(&w), Err(E::Protocol(1)));
    w[0] = 0x85;
    assert_eq!(parse_transport_id(&w), Err(E::Format(2)));
    let mut w = want.clone();
    w[3] = 18;
    assert_eq!(parse_transport_id(&w), Err(E::Length(18)));
    w[3] = 21;
    assert_eq!(parse_transport_id(&w), Err(E::Length(21)));
    let mut w = want.clone();
    w[4..24].fill(b'a');
    assert_eq!(parse_transport_id(&w), Err(E::Name), "no terminator");
    let mut w = want.clone();
    w[4] = 0;
    assert_eq!(parse_transport_id(&w), Err(E::Name), "empty");
    let mut w = want.clone();
    w[0] = 0x45; // format 01b without ISID
    assert_eq!(parse_transport_id(&w), Err(E::Name));
    assert_eq!(
        parse_transport_id(&tid(&"a".repeat(224), 0)),
        Err(E::Name),
        "longer than an iSCSI name"
    );
}

// ---------------------------------------------------------------- record format

fn sample_state() -> PrState {
    let a = RegisteredPort {
        initiator_name: "iqn.x:a".into(),
        isid: Some(0x0000_023d_0000_0001),
        relative_port_id: Some(7),
    };
    PrState {
        generation: 0x0102_0304,
        aptpl: true,
        registrations: vec![
            Registration {
                port: a.clone(),
                key: 0x1122_3344_5566_7788,
            },
            Registration {
                port: RegisteredPort {
                    initiator_name: "iqn.x:b".into(),
                    isid: None,
                    relative_port_id: None,
                },
                key: 2,
            },
        ],
        reservation: Some(Reservation {
            pr_type: PrType::WriteExclusiveRegistrantsOnly,
            holder: a,
            holder_relative_port_id: 7,
        }),
    }
}

#[rustfmt::skip]
const SAMPLE_RECORD: [u8; 90] = [
    b'T', b'W', b'P', b'R',         // magic
    0x01, 0x00,                     // version 1
    0x01, 0x00,                     // flags: APTPL
    90, 0, 0, 0,                    // total length
    0x04, 0x03, 0x02, 0x01,         // PRGENERATION
    0x05, 0x00,                     // type WERO, scope LU
    0x07, 0x00,                     // holder relative port 7
    0x00, 0x00, 0x00, 0x00,         // holder index 0
    0x02, 0x00, 0x00, 0x00,         // 2 registrations
    // registration 0
    0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,
    0x01, 0x00, 0x00, 0x00, 0x3d, 0x02, 0x00, 0x00,
    0x07, 0x00, 0x02, 0x00, 0x07, 0x00,
    b'i', b'q', b'n', b'.', b'x', b':', b'a',
    // registration 1
    0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x01, 0x00, 0x07, 0x00,
    b'i', b'q', b'n', b'.', b'x', b':', b'b',
    // CRC32C
    0x00, 0x00, 0x00, 0x00,
];

fn sample_record() -> Vec<u8> {
    let mut b = SAMPLE_RECORD.to_vec();
    let crc = crc32c::crc32c(&b[..b.len() - 4]);
    let n = b.len();
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn record_golden_bytes() {
    let rec = encode_record(&sample_state());
    assert_eq!(rec, sample_record());
    // The CRC is CRC32C (Castagnoli), little-endian: pin it too.
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(&rec[86..], &crc32c::crc32c(&rec[..86]).to_le_bytes());
    assert_eq!(decode_record(&rec), Ok(sample_state()));
    // The empty state.
    let empty = encode_record(&PrState::default());
    assert_eq!(empty.len(), 32);
    assert_eq!(
        &empty[..28],
        &[
            b'T', b'W', b'P', b'R', 1, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF,
            0xFF, 0xFF, 0, 0, 0, 0
        ]
    );
    assert_eq!(decode_record(&empty), Ok(PrState::default()));
}

/// Patch bytes of a valid record and fix its CRC.
fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = sample_record();
    f(&mut b);
    let n = b.len();
    let crc = crc32c::crc32c(&b[..n - 4]);
    b[n - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn record_rejections() {
    use RecordError as E;
    let good = sample_record();
    assert_eq!(decode_record(&good[..31]), Err(E::TooShort(31)));
    assert_eq!(decode_record(&[]), Err(E::TooShort(0)));
    assert!(matches!(
        decode_record(&good[..60]),
        Err(E::LengthMismatch {
            field: 90,
            actual: 60
        })
    ));
    let mut longer = good.clone();
    longer.push(0);
    assert!(matches!(
        decode_record(&longer),
        Err(E::LengthMismatch { .. })
    ));
    // Every single bit flip is detected.
    for i in 0..good.len() {
        for bit in 0..8 {
            let mut b = good.clone();
            b[i] ^= 1 << bit;
            assert!(decode_record(&b).is_err(), "flip byte {i} bit {bit}");
        }
    }
    assert!(matches!(
        decode_record(&patched(|b| b[0] = b'X')),
        Err(E::BadMagic(_))
    ));
    assert_eq!(
        decode_record(&patched(|b| b[4] = 2)),
        Err(E::UnsupportedVersion(2))
    );
    let invalid = |f: fn(&mut Vec<u8>)| match decode_record(&patched(f)) {
        Err(E::Invalid(why)) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(invalid(|b| b[6] = 0x03), "unknown flags");
    assert_eq!(invalid(|b| b[16] = 2), "reservation type");
    assert_eq!(invalid(|b| b[17] = 1), "reservation scope");
    assert_eq!(invalid(|b| b[18] = 8), "holder relative port id");
    assert_eq!(invalid(|b| b[20] = 2), "holder index");
    assert_eq!(invalid(|b| b[24] = 3), "entry runs past the end");
    assert_eq!(invalid(|b| b[24] = 1), "trailing bytes");
    assert_eq!(invalid(|b| b[46] = 0x04), "unknown registration flags");
    assert_eq!(invalid(|b| b[47] = 1), "unknown registration flags");
    assert_eq!(invalid(|b| b[73] = 1), "relative port id with ALL_TG_PT");
    assert_eq!(invalid(|b| b[46] = 0x00), "ISID out of range");
    assert_eq!(invalid(|b| b[42] = 1), "ISID out of range");
    assert_eq!(invalid(|b| b[48] = 0), "initiator name length");
    assert_eq!(invalid(|b| b[50] = 0xFF), "initiator name is not UTF-8");
    assert_eq!(invalid(|b| b[28..36].fill(0)), "zero reservation key");
    assert_eq!(
        invalid(|b| b[57..62].copy_from_slice(&[0, 0, 0, 0, 0])),
        "zero reservation key"
    );
    // Same identity twice.
    let dup = PrState {
        registrations: vec![
            sample_state().registrations[1].clone(),
            Registration {
                key: 9,
                ..sample_state().registrations[1].clone()
            },
        ],
        ..PrState::default()
    };
    assert_eq!(
        decode_record(&encode_record(&dup)),
        Err(E::Invalid("duplicate registration"))
    );
    // No reservation but holder fields set.
    assert_eq!(
        invalid(|b| {
            b[16] = 0;
            b[18] = 0;
        }),
        "reservation fields without a reservation"
    );
}

fn arb_state() -> impl Strategy<Value = PrState> {
    let reg = (
        "[a-z]{1,6}",
        proptest::option::of(0u64..(1 << 48)),
        proptest::option::of(any::<u16>()),
        1u64..,
    )
        .prop_map(|(name, isid, rel, key)| Registration {
            port: RegisteredPort {
                initiator_name: format!("{PREFIX}{name}"),
                isid,
                relative_port_id: rel,
            },
            key,
        });
    (
        any::<u32>(),
        any::<bool>(),
        proptest::collection::vec(reg, 0..6),
        proptest::option::of((0usize..6, 0usize..6, any::<u16>())),
    )
        .prop_map(|(generation, aptpl, regs, res)| {
            let mut registrations: Vec<Registration> = Vec::new();
            for r in regs {
                if !registrations.iter().any(|o| o.port == r.port) {
                    registrations.push(r);
                }
            }
            let reservation = res.and_then(|(t, h, rel)| {
                let holder = registrations.get(h)?.port.clone();
                Some(Reservation {
                    pr_type: PrType::ALL[t],
                    holder_relative_port_id: holder.relative_port_id.unwrap_or(rel),
                    holder,
                })
            });
            PrState {
                generation,
                aptpl,
                registrations,
                reservation,
            }
        })
}

proptest! {
    #[test]
    fn record_round_trip(s in arb_state()) {
        prop_assert_eq!(s.validate(), Ok(()));
        let rec = encode_record(&s);
        prop_assert_eq!(decode_record(&rec), Ok(s));
    }

    #[test]
    fn record_decoder_is_total(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_record(&b);
        let mut with_header = sample_record();
        with_header.truncate(28);
        with_header.extend_from_slice(&b);
        let n = with_header.len() as u32 + 4;
        with_header[8..12].copy_from_slice(&n.to_le_bytes());
        let crc = crc32c::crc32c(&with_header);
        with_header.extend_from_slice(&crc.to_le_bytes());
        let _ = decode_record(&with_header);
    }

    #[test]
    fn transport_id_parser_is_total(b in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_transport_id(&b);
    }
}

// ---------------------------------------------------------------- PERSISTENT RESERVE IN

#[test]
fn read_keys_register_and_truncation() {
    let h = H::new();
    let (a, b) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1));
    h.connect(&[&a, &b]);
    assert_eq!(h.prin(&a, 0, 100), vec![0; 8]);
    // Unregistered: REGISTER needs RESERVATION KEY 0.
    assert_eq!(h.prout(&a, REGISTER, 0, 5, 0x11, 0).status, CONFLICT);
    // Zero service action key: nothing happens, no generation.
    h.ok(&a, REGISTER, 0, 0, 0, 0);
    assert_eq!(h.keys(), (0, vec![]));
    h.ok(&a, REGISTER, 0, 0, 0x11, 0);
    assert_eq!(h.keys(), (1, vec![0x11]));
    // Registered: REGISTER with the wrong key conflicts (libiscsi reregister).
    assert_eq!(h.prout(&a, REGISTER, 0, 0, 0x12, 0).status, CONFLICT);
    assert_eq!(h.prout(&a, REGISTER, 0, 0x99, 0x12, 0).status, CONFLICT);
    h.ok(&a, RAI, 0, 0x5555, 0x13, 0);
    h.ok(&a, REGISTER, 0, 0x13, 0x14, 0);
    h.ok(&b, RAI, 0, 0, 0x21, 0);
    assert_eq!(h.keys(), (4, vec![0x14, 0x21]));
    // Truncation: ADDITIONAL LENGTH reports the full list.
    let d = h.prin(&a, 0, 8);
    assert_eq!(d, vec![0, 0, 0, 4, 0, 0, 0, 16]);
    let d = h.prin(&a, 0, 12);
    assert_eq!(d, vec![0, 0, 0, 4, 0, 0, 0, 16, 0, 0, 0, 0]);
    let (r, d) = h.run_max(&a, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 100, 0], &[], 10);
    assert_eq!((r.data_in_len, r.cdb_transfer_len), (10, Some(24)));
    assert_eq!(d.len(), 10);
    assert!(h.prin(&a, 0, 0).is_empty());
    // Unregister.
    h.ok(&a, REGISTER, 0, 0x14, 0, 0);
    assert_eq!(h.keys(), (5, vec![0x21]));
    h.ok(&b, RAI, 0, 0, 0, 0);
    assert_eq!(h.keys(), (6, vec![]));
    // Registrations survive on the I_T nexus, not the session.
    h.ok(&a, RAI, 0, 0, 0x31, 0);
    let a2 = nx(9, "a", 1, 1);
    h.connect(&[&a2]);
    assert_eq!(h.prout(&a2, REGISTER, 0, 0, 0x32, 0).status, CONFLICT);
    h.ok(&a2, REGISTER, 0, 0x31, 0x32, 0);
    assert_eq!(h.keys().1, vec![0x32]);
    // Other ISID or other target port: another I_T nexus.
    let (other_isid, other_port) = (nx(10, "a", 2, 1), nx(11, "a", 1, 2));
    h.connect(&[&other_isid, &other_port]);
    assert_eq!(
        h.prout(&other_isid, RESERVE, WE, 0x32, 0, 0).status,
        CONFLICT
    );
    assert_eq!(
        h.prout(&other_port, RESERVE, WE, 0x32, 0, 0).status,
        CONFLICT
    );
}

#[test]
fn report_capabilities_golden() {
    let h = H::new();
    let a = nx(1, "a", 1, 1);
    h.connect(&[&a]);
    assert_eq!(h.prin(&a, 2, 100), vec![0, 8, 0x1C, 0xB0, 0xEA, 0x01, 0, 0]);
    assert_eq!(h.prin(&a, 2, 4), vec![0, 8, 0x1C, 0xB0]);
    // Without a store APTPL=1 is refused.
    assert_eq!(sense(&h.prout(&a, RAI, 0, 0, 1, APTPL)), BAD_PARAM);

    let store = Arc::new(MemReservationStore::new());
    let h = H::with_store(store);
    h.connect(&[&a]);
    assert_eq!(h.prin(&a, 2, 100), vec![0, 8, 0x1D, 0xB0, 0xEA, 0x01, 0, 0]);
    h.ok(&a, RAI, 0, 0, 1, APTPL);
    assert_eq!(h.prin(&a, 2, 100)[3], 0xB1, "PTPL_A");
    h.ok(&a, REGISTER, 0, 1, 2, 0);
    assert_eq!(h.prin(&a, 2, 100)[3], 0xB0);
}

#[test]
fn read_reservation_and_full_status_golden() {
    let h = H::new();
    let a = nx(1, "a", 0x23d000001, 7);
    let b = nx(2, "b", 2, 7);
    h.connect(&[&a, &b]);
    h.ok(&a, RAI, 0, 0, 0x0102_0304_0506_0708, 0);
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    h.ok(&a, RESERVE, WE, 0x0102_0304_0506_0708, 0, 0);
    assert_eq!(
        h.prin(&b, 1, 100),
        vec![0, 0, 0, 2, 0, 0, 0, 16, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0x01, 0, 0]
    );
    let d = h.prin(&b, 3, 1000);
    let tid_a = tid(&port_name("a", 0x23d000001), 1);
    let tid_b = tid(&port_name("b", 2), 1);
    assert_eq!(tid_a.len(), 48);
    let mut want = vec![0, 0, 0, 2];
    want.extend_from_slice(&((24 + 48) as u32 * 2).to_be_bytes());
    // a: holder of Write Exclusive, target port 7.
    want.extend_from_slice(&[
        1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0x01, 0x01, 0, 0, 0, 0, 0, 7,
    ]);
    want.extend_from_slice(&48u32.to_be_bytes());
    want.extend_from_slice(&tid_a);
    // b: registered only.
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0xB, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    want.extend_from_slice(&48u32.to_be_bytes());
    want.extend_from_slice(&tid_b);
    assert_eq!(d, want);
    // Truncated: ADDITIONAL LENGTH unchanged.
    assert_eq!(h.prin(&b, 3, 8), want[..8].to_vec());
    // All registrants: key 0 in READ RESERVATION, every registrant is R_HOLDER.
    h.ok(&a, RELEASE, WE, 0x0102_0304_0506_0708, 0, 0);
    h.ok(&b, RESERVE, EAAR, 0xB, 0, 0);
    assert_eq!(h.resv(), Some((0, EAAR)));
    let d = h.prin(&b, 3, 1000);
    assert_eq!((d[8 + 12], d[8 + 13]), (0x01, EAAR));
    assert_eq!((d[8 + 72 + 12], d[8 + 72 + 13]), (0x01, EAAR));
}

// ---------------------------------------------------------------- PERSISTENT RESERVE OUT

#[test]
fn parameter_list_and_cdb_errors() {
    let h = H::new();
    let a = nx(1, "a", 1, 1);
    h.connect(&[&a]);
    let p = params(0, 7, 0);
    assert_eq!(sense(&h.prout_raw(&a, RAI, 0, &p[..23])), PLL_ERROR);
    let mut long = p.clone();
    long.push(0);
    assert_eq!(sense(&h.prout_raw(&a, RAI, 0, &long)), PLL_ERROR);
    // Parameter list length larger than what the transport delivered.
    let (r, _) = h.run(&a, &[0x5F, RAI, 0, 0, 0, 0, 0, 0, 24, 0], &p[..10]);
    assert_eq!(sense(&r), PLL_ERROR);
    let (r, _) = h.run(&a, &[0x5F, RAI, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0], &p);
    assert_eq!(sense(&r), PLL_ERROR);
    assert_eq!(r.cdb_transfer_len, Some(0xFFFF_FFFF));
    // SPEC_I_PT only with REGISTER; it needs the TransportID list.
    assert_eq!(sense(&h.prout(&a, RAI, 0, 0, 7, SPEC_I_PT)), BAD_PARAM);
    assert_eq!(sense(&h.prout(&a, REGISTER, 0, 0, 7, SPEC_I_PT)), PLL_ERROR);
    let mut sp = params(0, 7, SPEC_I_PT);
    sp.extend_from_slice(&100u32.to_be_bytes());
    assert_eq!(sense(&h.prout_raw(&a, REGISTER, 0, &sp)), PLL_ERROR);
    // SCOPE and TYPE.
    h.ok(&a, RAI, 0, 0, 7, 0);
    assert_eq!(sense(&h.prout(&a, RESERVE, 0x10 | WE, 7, 0, 0)), BAD_CDB);
    for bad in [0u8, 2, 4, 9, 0xF] {
        assert_eq!(
            sense(&h.prout(&a, RESERVE, bad, 7, 0, 0)),
            BAD_CDB,
            "type {bad}"
        );
        assert_eq!(sense(&h.prout(&a, PREEMPT, bad, 7, 7, 0)), BAD_CDB);
    }
    let (r, _) = h.run(
        &a,
        &[0x5F, RESERVE, 0x02, 0, 0, 0, 0, 0, 24, 0],
        &params(7, 0, 0),
    );
    assert_eq!(
        &r.sense.unwrap()[15..18],
        &[0xCB, 0x00, 0x02],
        "field pointer byte 2 bit 3"
    );
    // REGISTER AND MOVE: the TransportID must fit the parameter list.
    h.ok(&a, RESERVE, WE, 7, 0, 0);
    let mut mv = move_params(7, 8, false, 1, &tid(&port_name("b", 2), 1));
    mv.truncate(40);
    assert_eq!(sense(&h.prout_raw(&a, MOVE, 0, &mv)), PLL_ERROR);
    assert_eq!(sense(&h.prout_raw(&a, MOVE, 0, &mv[..20])), PLL_ERROR);
    // Nothing of the above changed anything but the one registration and reservation.
    assert_eq!(h.keys(), (1, vec![7]));
    assert_eq!(h.resv(), Some((7, WE)));
}

#[test]
fn reserve_and_release() {
    let h = H::new();
    let (a, b, c) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1), nx(3, "c", 3, 1));
    h.connect(&[&a, &b, &c]);
    assert_eq!(
        h.prout(&a, RESERVE, WE, 0, 0, 0).status,
        CONFLICT,
        "unregistered"
    );
    h.ok(&a, RAI, 0, 0, 0xAA, 0);
    assert_eq!(
        h.prout(&a, RESERVE, WE, 0xAB, 0, 0).status,
        CONFLICT,
        "wrong key"
    );
    h.ok(&a, RESERVE, WE, 0xAA, 0, 0);
    assert_eq!(h.resv(), Some((0xAA, WE)));
    h.ok(&a, RESERVE, WE, 0xAA, 0, 0);
    assert_eq!(
        h.prout(&a, RESERVE, EA, 0xAA, 0, 0).status,
        CONFLICT,
        "type change"
    );
    assert_eq!(h.prout(&c, RESERVE, WE, 0, 0, 0).status, CONFLICT);
    h.ok(&b, RAI, 0, 0, 0xBB, 0);
    assert_eq!(h.prout(&b, RESERVE, WE, 0xBB, 0, 0).status, CONFLICT);
    // Release by a registrant that does not hold it: GOOD, nothing happens.
    h.ok(&b, RELEASE, WE, 0xBB, 0, 0);
    h.ok(&b, RELEASE, EA, 0xBB, 0, 0);
    assert_eq!(h.prout(&b, RELEASE, WE, 0xBC, 0, 0).status, CONFLICT);
    assert_eq!(
        h.prout(&c, RELEASE, WE, 0, 0, 0).status,
        CONFLICT,
        "unregistered"
    );
    assert_eq!(h.resv(), Some((0xAA, WE)));
    // The holder must name the right type.
    assert_eq!(
        sense(&h.prout(&a, RELEASE, EA, 0xAA, 0, 0)),
        (5, 0x26, 0x04)
    );
    assert_eq!(h.prout(&a, RELEASE, WE, 0xAB, 0, 0).status, CONFLICT);
    h.ok(&a, RELEASE, WE, 0xAA, 0, 0);
    assert_eq!(h.resv(), None);
    h.ok(&a, RELEASE, WE, 0xAA, 0, 0);
    // RESERVE and RELEASE do not count in PRGENERATION.
    assert_eq!(h.keys().0, 2);
    // The key follows a REGISTER of the holder.
    h.ok(&a, RESERVE, EA, 0xAA, 0, 0);
    h.ok(&a, REGISTER, 0, 0xAA, 0xAC, 0);
    assert_eq!(h.resv(), Some((0xAC, EA)));
    // Every type can be reserved and released (libiscsi ProutReserve.Simple).
    h.ok(&a, RELEASE, EA, 0xAC, 0, 0);
    for ty in PrType::ALL {
        let t = ty.code();
        h.ok(&a, RESERVE, t, 0xAC, 0, 0);
        let key = if ty.all_registrants() { 0 } else { 0xAC };
        assert_eq!(h.resv(), Some((key, t)));
        h.ok(&a, RELEASE, t, 0xAC, 0, 0);
        h.uas(&b);
        assert_eq!(h.resv(), None);
    }
}

/// The access matrix: for each type, what the holder, a registrant and a
/// non-registrant may do (SPC-4 / SBC-3 tables; libiscsi ProutReserve.Access*).
#[test]
fn access_matrix_per_type() {
    // (reg read, reg write, unreg read, unreg write)
    let expect: [(u8, [bool; 4]); 6] = [
        (WE, [true, false, true, false]),
        (EA, [false, false, false, false]),
        (WERO, [true, true, true, false]),
        (EARO, [true, true, false, false]),
        (WEAR, [true, true, true, false]),
        (EAAR, [true, true, false, false]),
    ];
    let bs = 512;
    #[derive(Clone, Copy, PartialEq)]
    enum K {
        Always,
        Read,
        Write,
    }
    let cmds: Vec<(&str, Vec<u8>, Vec<u8>, K)> = vec![
        ("TEST UNIT READY", vec![0; 6], vec![], K::Always),
        ("INQUIRY", vec![0x12, 0, 0, 0, 36, 0], vec![], K::Always),
        (
            "REQUEST SENSE",
            vec![0x03, 0, 0, 0, 18, 0],
            vec![],
            K::Always,
        ),
        (
            "REPORT LUNS",
            vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            vec![],
            K::Always,
        ),
        (
            "READ CAPACITY(10)",
            vec![0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            K::Always,
        ),
        (
            "READ CAPACITY(16)",
            vec![0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
            vec![],
            K::Always,
        ),
        (
            "PRIN READ KEYS",
            vec![0x5E, 0, 0, 0, 0, 0, 0, 1, 0, 0],
            vec![],
            K::Always,
        ),
        (
            "START STOP UNIT start",
            vec![0x1B, 0, 0, 0, 0x01, 0],
            vec![],
            K::Always,
        ),
        (
            "READ(10)",
            vec![0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            vec![],
            K::Read,
        ),
        (
            "READ(16)",
            vec![0x88, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
            vec![],
            K::Read,
        ),
        (
            "VERIFY(10)",
            vec![0x2F, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            vec![],
            K::Read,
        ),
        (
            "PRE-FETCH(10)",
            vec![0x34, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            vec![],
            K::Read,
        ),
        (
            "MODE SENSE(6)",
            vec![0x1A, 0, 0x3F, 0, 255, 0],
            vec![],
            K::Read,
        ),
        (
            "RSOC",
            vec![0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
            vec![],
            K::Read,
        ),
        (
            "WRITE(10)",
            vec![0x2A, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            vec![0xA5; bs],
            K::Write,
        ),
        (
            "WRITE SAME(10)",
            vec![0x41, 0, 0, 0, 0, 1, 0, 0, 2, 0],
            vec![0; bs],
            K::Write,
        ),
        (
            "WRITE AND VERIFY(10)",
            vec![0x2E, 0, 0, 0, 0, 1, 0, 0, 1, 0],
            vec![1; bs],
            K::Write,
        ),
        (
            "ORWRITE(16)",
            vec![0x8B, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
            vec![0; bs],
            K::Write,
        ),
        (
            "SYNCHRONIZE CACHE(10)",
            vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vec![],
            K::Write,
        ),
        (
            "MODE SELECT(6)",
            vec![0x15, 0x10, 0, 0, 0, 0],
            vec![],
            K::Write,
        ),
        (
            "START STOP UNIT stop",
            vec![0x1B, 0, 0, 0, 0x00, 0],
            vec![],
            K::Write,
        ),
    ];
    for (ty, [reg_r, reg_w, unreg_r, unreg_w]) in expect {
        let h = H::new();
        let (holder, reg, unreg) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1), nx(3, "c", 3, 1));
        h.connect(&[&holder, &reg, &unreg]);
        h.ok(&holder, RAI, 0, 0, 0xA, 0);
        h.ok(&reg, RAI, 0, 0, 0xB, 0);
        h.ok(&holder, RESERVE, ty, 0xA, 0, 0);
        for (name, cdb, out, kind) in &cmds {
            for (who, n, allowed) in [
                ("holder", &holder, true),
                (
                    "registrant",
                    &reg,
                    match kind {
                        K::Always => true,
                        K::Read => reg_r,
                        K::Write => reg_w,
                    },
                ),
                (
                    "non-registrant",
                    &unreg,
                    match kind {
                        K::Always => true,
                        K::Read => unreg_r,
                        K::Write => unreg_w,
                    },
                ),
            ] {
                let (r, _) = h.run(n, cdb, out);
                if allowed {
                    assert_ne!(r.status, CONFLICT, "type {ty} {who} {name}");
                    assert!(
                        r.status == ScsiStatus::Good,
                        "type {ty} {who} {name}: {r:?}"
                    );
                } else {
                    assert_eq!(r.status, CONFLICT, "type {ty} {who} {name}");
                    assert!(r.sense.is_none());
                }
            }
        }
        // PERSISTENT RESERVE OUT follows its own rules: REGISTER is always allowed.
        h.ok(&unreg, REGISTER, 0, 0, 0xC, 0);
        assert_eq!(
            h.read(&unreg),
            if reg_r { ScsiStatus::Good } else { CONFLICT }
        );
        h.ok(&unreg, REGISTER, 0, 0xC, 0, 0);
        // Release: everybody has access again.
        h.ok(&holder, RELEASE, ty, 0xA, 0, 0);
        for n in [&holder, &reg, &unreg] {
            h.uas(n);
            assert_eq!(h.read(n), ScsiStatus::Good);
            assert_eq!(h.write(n), ScsiStatus::Good);
        }
    }
}

#[test]
fn access_rule_function_matches_the_tables() {
    for ty in PrType::ALL {
        for access in [Access::Always, Access::Read, Access::Write] {
            assert!(allowed(ty, access, true, true), "holder");
            assert!(allowed(ty, Access::Always, false, false));
        }
    }
    assert!(allowed(PrType::WriteExclusive, Access::Read, false, false));
    assert!(!allowed(PrType::ExclusiveAccess, Access::Read, true, false));
    assert!(!allowed(
        PrType::WriteExclusiveRegistrantsOnly,
        Access::Write,
        false,
        false
    ));
    assert!(allowed(
        PrType::WriteExclusiveRegistrantsOnly,
        Access::Read,
        false,
        false
    ));
    assert!(!allowed(
        PrType::ExclusiveAccessAllRegistrants,
        Access::Read,
        false,
        false
    ));
}

#[test]
fn unit_attentions_on_release_clear_preempt_unregister() {
    let h = H::new();
    let (a, b, c, d) = (
        nx(1, "a", 1, 1),
        nx(2, "b", 2, 1),
        nx(3, "c", 3, 1),
        nx(4, "d", 4, 1),
    );
    h.connect(&[&a, &b, &c, &d]);
    for (n, k) in [(&a, 0xA), (&b, 0xB), (&c, 0xC)] {
        h.ok(n, RAI, 0, 0, k, 0);
    }
    let none: Vec<(u8, u8)> = vec![];
    // Release of a registrants-only reservation: RESERVATIONS RELEASED to the other
    // registrants.
    h.ok(&a, RESERVE, WERO, 0xA, 0, 0);
    h.ok(&a, RELEASE, WERO, 0xA, 0, 0);
    assert_eq!(h.uas(&a), none);
    assert_eq!(h.uas(&b), vec![(0x2A, 0x04)]);
    assert_eq!(h.uas(&c), vec![(0x2A, 0x04)]);
    assert_eq!(h.uas(&d), none);
    // Write Exclusive: no unit attention.
    h.ok(&a, RESERVE, WE, 0xA, 0, 0);
    h.ok(&a, RELEASE, WE, 0xA, 0, 0);
    for n in [&a, &b, &c, &d] {
        assert_eq!(h.uas(n), none);
    }
    // The holder of a registrants-only reservation unregisters: released, UA.
    h.ok(&a, RESERVE, EARO, 0xA, 0, 0);
    h.ok(&a, REGISTER, 0, 0xA, 0, 0);
    assert_eq!(h.resv(), None);
    assert_eq!(h.uas(&b), vec![(0x2A, 0x04)]);
    assert_eq!(h.uas(&c), vec![(0x2A, 0x04)]);
    assert_eq!(h.uas(&a), none);
    // A non-holder unregistering changes nothing for the others.
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&a, RESERVE, EA, 0xA, 0, 0);
    h.ok(&c, REGISTER, 0, 0xC, 0, 0);
    assert_eq!(h.resv(), Some((0xA, EA)));
    for n in [&a, &b, &c] {
        assert_eq!(h.uas(n), none);
    }
    // PREEMPT of the holder with a type change: REGISTRATIONS PREEMPTED to the
    // preempted, RESERVATIONS RELEASED to the remaining registrants.
    h.ok(&c, RAI, 0, 0, 0xC, 0);
    let gen = h.keys().0;
    h.ok(&b, PREEMPT, WE, 0xB, 0xA, 0);
    assert_eq!(h.keys(), (gen + 1, vec![0xB, 0xC]));
    assert_eq!(h.resv(), Some((0xB, WE)));
    assert_eq!(h.uas(&a), vec![(0x2A, 0x05)]);
    assert_eq!(h.uas(&c), vec![(0x2A, 0x04)]);
    assert_eq!(h.uas(&b), none);
    // Same type: no RESERVATIONS RELEASED.
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&a, PREEMPT, WE, 0xA, 0xB, 0);
    assert_eq!(h.uas(&b), vec![(0x2A, 0x05)]);
    assert_eq!(h.uas(&c), none);
    // CLEAR: RESERVATIONS PREEMPTED to every other registrant.
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    let gen = h.keys().0;
    assert_eq!(
        h.prout(&d, CLEAR, 0, 0, 0, 0).status,
        CONFLICT,
        "unregistered"
    );
    assert_eq!(
        h.prout(&a, CLEAR, 0, 0xB, 0, 0).status,
        CONFLICT,
        "wrong key"
    );
    h.ok(&a, CLEAR, 0, 0xA, 0, 0);
    assert_eq!(h.keys(), (gen + 1, vec![]));
    assert_eq!(h.resv(), None);
    assert_eq!(h.uas(&a), none);
    assert_eq!(h.uas(&b), vec![(0x2A, 0x03)]);
    assert_eq!(h.uas(&c), vec![(0x2A, 0x03)]);
    assert_eq!(h.uas(&d), none);
}

#[test]
fn preempt_variants() {
    let h = H::new();
    let (a, b, c) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1), nx(3, "c", 3, 1));
    h.connect(&[&a, &b, &c]);
    // libiscsi ProutPreempt.RemoveRegistration: no reservation, remove a key.
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    let gen = h.keys().0;
    h.ok(&b, PREEMPT, EA, 0xB, 0xA, 0);
    assert_eq!(h.keys(), (gen + 1, vec![0xB]));
    assert_eq!(h.resv(), None, "no reservation created");
    assert_eq!(h.uas(&a), vec![(0x2A, 0x05)]);
    assert_eq!(h.uas(&b), vec![]);
    // Unmatched key: conflict. Zero key without all-registrants reservation: invalid.
    assert_eq!(h.prout(&b, PREEMPT, EA, 0xB, 0x77, 0).status, CONFLICT);
    assert_eq!(sense(&h.prout(&b, PREEMPT, EA, 0xB, 0, 0)), BAD_PARAM);
    assert_eq!(
        h.prout(&c, PREEMPT, EA, 0, 0xB, 0).status,
        CONFLICT,
        "unregistered"
    );
    assert_eq!(h.keys().0, gen + 1, "failures do not count");
    // Several nexuses with one key all go.
    h.ok(&a, RAI, 0, 0, 0xD, 0);
    h.ok(&c, RAI, 0, 0, 0xD, 0);
    h.ok(&b, PREEMPT, EA, 0xB, 0xD, 0);
    assert_eq!(h.keys().1, vec![0xB]);
    assert_eq!(h.uas(&a), vec![(0x2A, 0x05)]);
    assert_eq!(h.uas(&c), vec![(0x2A, 0x05)]);
    // The holder preempts itself to change the type; its registration stays.
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&b, RESERVE, WE, 0xB, 0, 0);
    h.ok(&b, PREEMPT, EA, 0xB, 0xB, 0);
    assert_eq!(h.resv(), Some((0xB, EA)));
    assert_eq!(h.keys().1, vec![0xB, 0xA]);
    assert_eq!(h.uas(&a), vec![(0x2A, 0x04)]);
    assert_eq!(h.read(&a), CONFLICT);
    // All registrants, zero key: everybody else goes, the preempter holds the new one.
    h.ok(&c, RAI, 0, 0, 0xC, 0);
    h.ok(&b, RELEASE, EA, 0xB, 0, 0);
    h.ok(&a, RESERVE, EAAR, 0xA, 0, 0);
    h.uas(&c);
    h.ok(&c, PREEMPT, WERO, 0xC, 0, 0);
    assert_eq!(h.keys().1, vec![0xC]);
    assert_eq!(h.resv(), Some((0xC, WERO)));
    assert_eq!(h.uas(&a), vec![(0x2A, 0x05)]);
    assert_eq!(h.uas(&b), vec![(0x2A, 0x05)]);
    assert_eq!(h.uas(&c), vec![]);
    // All registrants, non-zero key: only those registrations go; the reservation stays.
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    h.ok(&c, RELEASE, WERO, 0xC, 0, 0);
    h.ok(&c, RESERVE, WEAR, 0xC, 0, 0);
    for n in [&a, &b] {
        h.uas(n);
    }
    h.ok(&a, PREEMPT, EA, 0xA, 0xC, 0);
    assert_eq!(h.resv(), Some((0, WEAR)));
    assert_eq!(h.keys().1, vec![0xA, 0xB]);
    assert_eq!(h.uas(&c), vec![(0x2A, 0x05)]);
    assert_eq!(
        h.write(&b),
        ScsiStatus::Good,
        "b is still an all-registrants holder"
    );
    assert_eq!(h.write(&c), CONFLICT);
    // The last all-registrants holder leaves: the reservation ends.
    h.ok(&a, REGISTER, 0, 0xA, 0, 0);
    assert_eq!(h.resv(), Some((0, WEAR)));
    h.ok(&b, REGISTER, 0, 0xB, 0, 0);
    assert_eq!(h.resv(), None);
}

#[test]
fn preempt_and_abort_reports_preempted_nexuses() {
    let h = H::new();
    let events: Arc<Mutex<Vec<PreemptAbort>>> = Arc::default();
    // Without a hook nothing breaks.
    let (a, b, c) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1), nx(3, "c", 3, 1));
    h.connect(&[&a, &b, &c]);
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    h.ok(&a, PREEMPT_AND_ABORT, WE, 0xA, 0xB, 0);
    assert_eq!(h.uas(&b), vec![(0x2A, 0x05)]);
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    let ev = events.clone();
    h.map
        .set_preempt_abort_hook(Arc::new(move |e: &PreemptAbort| {
            ev.lock().unwrap().push(e.clone())
        }));
    // b holds Exclusive Access; a (and b's second session through port 2, registered
    // with ALL_TG_PT) are preempted by c.
    let b2 = nx(5, "b", 2, 2);
    h.connect(&[&b2]);
    h.ok(&b, RESERVE, EA, 0xB, 0, 0);
    h.ok(&c, RAI, 0, 0, 0xC, 0);
    h.ok(&b2, RAI, 0, 0, 0xB, ALL_TG_PT);
    h.ok(&c, PREEMPT_AND_ABORT, EA, 0xC, 0xB, 0);
    assert_eq!(
        *events.lock().unwrap(),
        vec![PreemptAbort {
            lun: 0,
            issuer: 3,
            nexus_ids: vec![2, 5]
        }]
    );
    assert_eq!(h.resv(), Some((0xC, EA)));
    assert_eq!(h.uas(&b), vec![(0x2A, 0x05)]);
    assert_eq!(h.uas(&b2), vec![(0x2A, 0x05)]);
    // Plain PREEMPT does not abort; P&A of a registrant nobody is connected as does not
    // call the hook.
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&c, PREEMPT, EA, 0xC, 0xA, 0);
    h.ok(&c, RAI, 0, 0xC, 0xC, 0); // no-op change
    h.map.nexus_lost(&a);
    let a6 = nx(6, "a", 1, 1);
    h.connect(&[&a6]);
    h.ok(&a6, RAI, 0, 0, 0xA, 0);
    h.map.nexus_lost(&a6);
    h.ok(&c, PREEMPT_AND_ABORT, EA, 0xC, 0xA, 0);
    assert_eq!(events.lock().unwrap().len(), 1);
}

#[test]
fn register_and_move() {
    let h = H::new();
    let (a, b, c) = (nx(1, "a", 1, 1), nx(2, "b", 2, 3), nx(3, "c", 3, 1));
    h.connect(&[&a, &b, &c]);
    let tid_b = tid(&port_name("b", 2), 1);
    let mv = |rk, sark, unreg, rtpi, t: &[u8]| move_params(rk, sark, unreg, rtpi, t);
    assert_eq!(
        h.prout_raw(&a, MOVE, 0, &mv(0, 0xB, false, 3, &tid_b))
            .status,
        CONFLICT
    );
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    // No reservation: a is not the holder.
    assert_eq!(
        h.prout_raw(&a, MOVE, 0, &mv(0xA, 0xB, false, 3, &tid_b))
            .status,
        CONFLICT
    );
    h.ok(&a, RESERVE, WE, 0xA, 0, 0);
    h.ok(&c, RAI, 0, 0, 0xC, 0);
    assert_eq!(
        h.prout_raw(&c, MOVE, 0, &mv(0xC, 0xB, false, 3, &tid_b))
            .status,
        CONFLICT
    );
    assert_eq!(
        h.prout_raw(&a, MOVE, 0, &mv(0xB, 0xB, false, 3, &tid_b))
            .status,
        CONFLICT
    );
    assert_eq!(
        sense(&h.prout_raw(&a, MOVE, 0, &mv(0xA, 0, false, 3, &tid_b))),
        BAD_PARAM
    );
    assert_eq!(
        sense(&h.prout_raw(&a, MOVE, 0, &mv(0xA, 0xB, false, 0, &tid_b))),
        BAD_PARAM
    );
    let to_self = tid(&port_name("a", 1), 1);
    assert_eq!(
        sense(&h.prout_raw(&a, MOVE, 0, &mv(0xA, 0xB, false, 2, &to_self))),
        BAD_PARAM
    );
    let to_node = tid(&format!("{PREFIX}a"), 0);
    assert_eq!(
        sense(&h.prout_raw(&a, MOVE, 0, &mv(0xA, 0xB, false, 2, &to_node))),
        BAD_PARAM
    );
    let mut fcp = tid_b.clone();
    fcp[0] = 0x40;
    assert_eq!(
        sense(&h.prout_raw(&a, MOVE, 0, &mv(0xA, 0xB, false, 3, &fcp))),
        BAD_PARAM
    );
    let mut padded = tid_b.clone();
    padded.extend_from_slice(&[0; 4]);
    assert_eq!(
        sense(&h.prout_raw(&a, MOVE, 0, &mv(0xA, 0xB, false, 3, &padded))),
        BAD_PARAM
    );
    let gen = h.keys().0;
    // Move to b on target port 3 (b is not registered yet).
    h.ok_move(&a, &mv(0xA, 0xB, false, 3, &tid_b));
    assert_eq!(h.keys(), (gen + 1, vec![0xA, 0xC, 0xB]));
    assert_eq!(h.resv(), Some((0xB, WE)));
    assert_eq!(h.write(&b), ScsiStatus::Good, "b holds it now");
    assert_eq!(h.write(&a), CONFLICT);
    assert_eq!(h.read(&a), ScsiStatus::Good);
    // b moves it on to c (already registered: its key changes) and unregisters.
    let tid_c = tid(&port_name("c", 3), 1);
    h.ok_move(&b, &mv(0xB, 0xCC, true, 1, &tid_c));
    assert_eq!(h.keys().1, vec![0xA, 0xCC]);
    assert_eq!(h.resv(), Some((0xCC, WE)));
    assert_eq!(h.write(&c), ScsiStatus::Good);
    assert_eq!(h.write(&b), CONFLICT);
    // All-registrants reservations cannot be moved.
    h.ok(&c, RELEASE, WE, 0xCC, 0, 0);
    h.ok(&c, RESERVE, WEAR, 0xCC, 0, 0);
    assert_eq!(
        h.prout_raw(&c, MOVE, 0, &mv(0xCC, 0xB, false, 3, &tid_b))
            .status,
        CONFLICT
    );
}

impl H {
    fn ok_move(&self, n: &Nexus, p: &[u8]) {
        let r = self.prout_raw(n, MOVE, 0, p);
        assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    }
}

#[test]
fn spec_i_pt_and_all_tg_pt() {
    let h = H::new();
    let a = nx(1, "a", 1, 1);
    h.connect(&[&a]);
    let list = |tids: &[Vec<u8>]| {
        let mut p = params(0, 0x5, SPEC_I_PT);
        let all: Vec<u8> = tids.concat();
        p.extend_from_slice(&(all.len() as u32).to_be_bytes());
        p.extend_from_slice(&all);
        p
    };
    // A bad TransportID: nothing is registered.
    let mut bad = tid(&port_name("b", 2), 1);
    bad[0] = 0x41;
    let p = list(&[tid(&port_name("b", 2), 1), bad]);
    let r = h.prout_raw(&a, REGISTER, 0, &p);
    assert_eq!(sense(&r), BAD_PARAM);
    assert_eq!(
        &r.sense.unwrap()[15..18],
        &[0x80, 0, 28 + 48],
        "points at the bad one"
    );
    assert_eq!(h.keys(), (0, vec![]));
    let mut short = tid(&port_name("b", 2), 1);
    short[3] = 22;
    assert_eq!(
        sense(&h.prout_raw(&a, REGISTER, 0, &list(&[short]))),
        BAD_PARAM
    );
    // b (initiator port) and every port of node c, plus a itself; duplicates skipped.
    let p = list(&[
        tid(&port_name("b", 2), 1),
        tid(&format!("{PREFIX}c"), 0),
        tid(&port_name("a", 1), 1),
    ]);
    let r = h.prout_raw(&a, REGISTER, 0, &p);
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    assert_eq!(h.keys(), (1, vec![5, 5, 5]));
    let (b, c7, c9) = (nx(2, "b", 2, 1), nx(3, "c", 7, 1), nx(4, "c", 9, 1));
    h.connect(&[&b, &c7, &c9]);
    h.ok(&c7, RESERVE, EARO, 5, 0, 0);
    assert_eq!(
        h.write(&c9),
        ScsiStatus::Good,
        "node registration covers every ISID"
    );
    let c9p2 = nx(5, "c", 9, 2);
    h.connect(&[&c9p2]);
    assert_eq!(h.write(&c9p2), CONFLICT, "but only on port 1");
    assert_eq!(h.write(&b), ScsiStatus::Good);
    // SPEC_I_PT from a registered nexus.
    assert_eq!(
        sense(&h.prout_raw(&a, REGISTER, 0, &{
            let mut p = list(&[]);
            p[0..8].copy_from_slice(&5u64.to_be_bytes());
            p
        })),
        BAD_PARAM
    );
    h.ok(&c7, CLEAR, 0, 5, 0, 0);
    for n in [&a, &b, &c9] {
        assert_eq!(h.uas(n), vec![(0x2A, 0x03)]);
    }

    // ALL_TG_PT: registered through every target port.
    let (d1, d2) = (nx(6, "d", 4, 1), nx(7, "d", 4, 2));
    h.connect(&[&d1, &d2]);
    h.ok(&d1, RAI, 0, 0, 0xD, ALL_TG_PT);
    h.ok(&d2, RESERVE, EA, 0xD, 0, 0);
    assert_eq!(h.write(&d1), CONFLICT, "holder is the nexus through port 2");
    assert_eq!(h.write(&d2), ScsiStatus::Good);
    let fs = h.prin(&a, 3, 1000);
    assert_eq!(&fs[8 + 12..8 + 14], &[0x03, EA], "ALL_TG_PT, R_HOLDER");
    assert_eq!(&fs[8 + 18..8 + 20], &[0, 2], "holder's port");
    // Changed and removed as a unit through any port.
    h.ok(&d1, REGISTER, 0, 0xD, 0xE, 0);
    assert_eq!(h.resv(), Some((0xE, EA)));
    h.ok(&d1, REGISTER, 0, 0xE, 0, 0);
    assert_eq!(h.keys().1, Vec::<u64>::new());
    assert_eq!(h.resv(), None);
}

// ---------------------------------------------------------------- SPC-2 interplay, nexus loss

#[test]
fn reserve6_interplay() {
    let h = H::new();
    let (a, b, c) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1), nx(3, "c", 3, 1));
    h.connect(&[&a, &b, &c]);
    let reserve6 = [0x16, 0, 0, 0, 0, 0];
    let release6 = [0x17, 0, 0, 0, 0, 0];
    let prin = [0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0];
    // A RESERVE(6) reservation: every PERSISTENT RESERVE command conflicts.
    assert_eq!(h.run(&a, &reserve6, &[]).0.status, ScsiStatus::Good);
    for n in [&a, &b] {
        assert_eq!(h.run(n, &prin, &[]).0.status, CONFLICT);
        assert_eq!(h.prout(n, RAI, 0, 0, 1, 0).status, CONFLICT);
    }
    assert_eq!(h.run(&a, &release6, &[]).0.status, ScsiStatus::Good);
    assert_eq!(h.run(&b, &prin, &[]).0.status, ScsiStatus::Good);
    // Registrations exist: RESERVE/RELEASE(6) conflict, except for the holder and for
    // registrants under registrants-only / all-registrants reservations (CRH=1).
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    for n in [&a, &c] {
        assert_eq!(h.run(n, &reserve6, &[]).0.status, CONFLICT);
        assert_eq!(h.run(n, &release6, &[]).0.status, CONFLICT);
    }
    h.ok(&a, RESERVE, WE, 0xA, 0, 0);
    assert_eq!(h.run(&a, &reserve6, &[]).0.status, ScsiStatus::Good);
    assert_eq!(h.lu.reservation_holder(), None, "no SPC-2 reservation made");
    assert_eq!(h.run(&a, &release6, &[]).0.status, ScsiStatus::Good);
    assert_eq!(
        h.resv(),
        Some((0xA, WE)),
        "persistent reservation not released"
    );
    assert_eq!(h.run(&b, &reserve6, &[]).0.status, CONFLICT);
    h.ok(&a, RELEASE, WE, 0xA, 0, 0);
    h.ok(&a, RESERVE, WERO, 0xA, 0, 0);
    assert_eq!(h.run(&b, &reserve6, &[]).0.status, ScsiStatus::Good);
    assert_eq!(h.run(&b, &release6, &[]).0.status, ScsiStatus::Good);
    assert_eq!(h.run(&c, &reserve6, &[]).0.status, CONFLICT);
    assert_eq!(h.lu.reservation_holder(), None);
    h.ok(&a, CLEAR, 0, 0xA, 0, 0);
    assert_eq!(h.run(&c, &reserve6, &[]).0.status, ScsiStatus::Good);
    assert_eq!(h.lu.reservation_holder(), Some(3));
}

#[test]
fn registrations_survive_nexus_loss_and_resets() {
    let h = H::new();
    let (a, c) = (nx(1, "a", 1, 1), nx(3, "c", 3, 1));
    h.connect(&[&a, &c]);
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&a, RESERVE, EA, 0xA, 0, 0);
    h.map.nexus_lost(&a);
    h.map.task_mgmt(&c, 0, TaskMgmt::LunReset).unwrap();
    h.map.task_mgmt(&c, 0, TaskMgmt::TargetColdReset).unwrap();
    // The reset unit attention reaches the issuer too (SAM-5 6.3.3).
    assert_eq!(
        h.run(&c, &[0u8; 6], &[]).0.status,
        ScsiStatus::CheckCondition
    );
    assert_eq!(h.keys().1, vec![0xA]);
    assert_eq!(h.resv(), Some((0xA, EA)));
    assert_eq!(h.read(&c), CONFLICT);
    // The same I_T nexus in a new session holds it.
    let a2 = nx(42, "a", 1, 1);
    h.connect(&[&a2]);
    assert_eq!(h.write(&a2), ScsiStatus::Good);
    h.ok(&a2, RELEASE, EA, 0xA, 0, 0);
}

// ---------------------------------------------------------------- persistence

#[test]
fn aptpl_survives_reload_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun0.pr");
    let (a, b, c) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1), nx(3, "c", 3, 1));
    let before = {
        let h = H::with_store(Arc::new(FileReservationStore::new(&path)));
        h.connect(&[&a, &b, &c]);
        h.ok(&a, RAI, 0, 0, 0xA, APTPL);
        h.ok(&b, RAI, 0, 0, 0xB, APTPL);
        h.ok(&a, RESERVE, EARO, 0xA, 0, 0);
        assert_eq!(h.keys().0, 2);
        h.lu.persistent_reservations()
    };
    assert!(path.exists());
    assert!(!dir.path().join("lun0.pr.tmp").exists());
    assert_eq!(
        decode_record(&std::fs::read(&path).unwrap()).unwrap(),
        before
    );
    // "Power cycle": a new LU over the same file.
    let h = H::with_store(Arc::new(FileReservationStore::new(&path)));
    let after = h.lu.persistent_reservations();
    assert_eq!(
        after,
        PrState {
            generation: 0,
            ..before.clone()
        }
    );
    h.connect(&[&a, &b, &c]);
    assert_eq!(h.keys(), (0, vec![0xA, 0xB]));
    assert_eq!(h.resv(), Some((0xA, EARO)));
    assert_eq!(h.write(&a), ScsiStatus::Good);
    assert_eq!(h.write(&b), ScsiStatus::Good);
    assert_eq!(h.read(&c), CONFLICT);
    assert_eq!(h.prin(&a, 2, 8)[3] & 1, 1, "PTPL_A");

    // APTPL=0 last: nothing survives a power cycle...
    h.ok(&b, REGISTER, 0, 0xB, 0xBB, 0);
    drop(h);
    let h = H::with_store(Arc::new(FileReservationStore::new(&path)));
    assert_eq!(h.lu.persistent_reservations(), PrState::default());
    h.connect(&[&a]);
    assert_eq!(h.keys(), (0, vec![]));
    assert_eq!(h.write(&a), ScsiStatus::Good);
    drop(h);
    // ...but a takeover by the peer head restores it, generation included.
    let h = H::with_cfg(cfg_with(
        Some(Arc::new(FileReservationStore::new(&path))),
        PrRestore::Takeover,
    ));
    let s = h.lu.persistent_reservations();
    assert_eq!(s.generation, 1);
    assert!(!s.aptpl);
    assert_eq!(s.registrations.len(), 2);
    assert_eq!(
        s.reservation.map(|r| r.pr_type),
        Some(PrType::ExclusiveAccessRegistrantsOnly)
    );
}

#[test]
fn unusable_records_give_an_empty_lu() {
    let a = nx(1, "a", 1, 1);
    let good = sample_record();
    let mut flipped = good.clone();
    flipped[40] ^= 0x10;
    for bytes in [
        vec![],
        b"garbage".to_vec(),
        good[..50].to_vec(),
        flipped,
        patched(|b| b[4] = 9),
    ] {
        let store = Arc::new(MemReservationStore::with_record(bytes));
        let h = H::with_store(store.clone());
        assert_eq!(h.lu.persistent_reservations(), PrState::default());
        h.connect(&[&a]);
        assert_eq!(h.keys(), (0, vec![]));
        // The next change writes a good record.
        h.ok(&a, RAI, 0, 0, 1, APTPL);
        assert_eq!(
            decode_record(&store.record().unwrap())
                .unwrap()
                .registrations
                .len(),
            1
        );
    }
    // A store that cannot even be read (the path is a directory).
    let dir = tempfile::tempdir().unwrap();
    let h = H::with_store(Arc::new(FileReservationStore::new(dir.path())));
    h.connect(&[&a]);
    assert_eq!(h.keys(), (0, vec![]));
    // Saving there fails: HARDWARE ERROR, nothing changes.
    assert_eq!(sense(&h.prout(&a, RAI, 0, 0, 1, 0)), (4, 0x44, 0x00));
    assert_eq!(h.keys(), (0, vec![]));
    // The sample record (APTPL=1) loads.
    let h = H::with_store(Arc::new(MemReservationStore::with_record(good)));
    let s = h.lu.persistent_reservations();
    assert_eq!(
        s,
        PrState {
            generation: 0,
            ..sample_state()
        }
    );
}

#[test]
fn failed_save_changes_nothing() {
    let store = Arc::new(MemReservationStore::new());
    let h = H::with_store(store.clone());
    let (a, b) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1));
    h.connect(&[&a, &b]);
    h.ok(&a, RAI, 0, 0, 0xA, 0);
    h.ok(&b, RAI, 0, 0, 0xB, 0);
    assert_eq!(store.saves(), 2);
    let rec = store.record();
    let state = h.lu.persistent_reservations();
    store.set_fail_saves(true);
    let hw = (4, 0x44, 0x00);
    assert_eq!(sense(&h.prout(&a, RESERVE, EA, 0xA, 0, 0)), hw);
    assert_eq!(sense(&h.prout(&a, PREEMPT, EA, 0xA, 0xB, 0)), hw);
    assert_eq!(sense(&h.prout(&a, CLEAR, 0, 0xA, 0, 0)), hw);
    assert_eq!(sense(&h.prout(&b, REGISTER, 0, 0xB, 0, 0)), hw);
    assert_eq!(h.lu.persistent_reservations(), state);
    assert_eq!(store.record(), rec);
    for n in [&a, &b] {
        assert_eq!(h.uas(n), Vec::<(u8, u8)>::new(), "no unit attentions");
        assert_eq!(h.write(n), ScsiStatus::Good);
    }
    // Commands that change nothing do not need the store.
    let c = nx(3, "c", 3, 1);
    h.connect(&[&c]);
    h.ok(&c, REGISTER, 0, 0, 0, 0);
    h.ok(&a, RELEASE, EA, 0xA, 0, 0);
    assert_eq!(h.prin(&a, 0, 100).len(), 24);
    store.set_fail_saves(false);
    h.ok(&a, RESERVE, EA, 0xA, 0, 0);
    assert_eq!(store.saves(), 3);
    assert_eq!(
        decode_record(&store.record().unwrap()).unwrap(),
        h.lu.persistent_reservations()
    );
}

#[test]
fn registration_limit() {
    let h = H::new();
    for i in 0..REGISTRATIONS_MAX as u64 {
        let n = nx(i + 1, "h", i, 1);
        h.connect(&[&n]);
        h.ok(&n, RAI, 0, 0, i + 1, 0);
    }
    let n = nx(10_000, "h", 0xFFFF, 1);
    h.connect(&[&n]);
    assert_eq!(
        sense(&h.prout(&n, RAI, 0, 0, 1, 0)),
        (5, 0x55, 0x04),
        "INSUFFICIENT REGISTRATION RESOURCES"
    );
    assert_eq!(h.keys().1.len(), REGISTRATIONS_MAX);
}

/// libiscsi ProutReserve.Ownership*: what happens when the holder unregisters.
#[test]
fn libiscsi_ownership_flow() {
    for ty in PrType::ALL {
        let h = H::new();
        let (a, b) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1));
        h.connect(&[&a, &b]);
        h.ok(&a, RAI, 0, 0, 0x1, 0);
        h.ok(&b, RAI, 0, 0, 0x2, 0);
        h.ok(&a, RESERVE, ty.code(), 0x1, 0, 0);
        h.ok(&a, REGISTER, 0, 0x1, 0, 0);
        if ty.all_registrants() {
            assert_eq!(h.resv(), Some((0, ty.code())));
            h.ok(&b, RELEASE, ty.code(), 0x2, 0, 0);
        } else {
            assert_eq!(h.resv(), None);
            h.uas(&b);
        }
        h.ok(&b, REGISTER, 0, 0x2, 0, 0);
        assert_eq!(h.keys().1, Vec::<u64>::new());
    }
}

/// A device shared by two "heads" (like the two replicas of a replicated volume) that
/// is usable on one head at a time; becoming usable bumps its activation epoch.
#[derive(Debug)]
struct HeadView {
    inner: Arc<dyn twinsan_blockdev::BlockDevice>,
    usable: AtomicBool,
    epoch: std::sync::atomic::AtomicU64,
}

impl HeadView {
    fn new(inner: Arc<dyn twinsan_blockdev::BlockDevice>, usable: bool) -> Arc<Self> {
        Arc::new(HeadView {
            inner,
            usable: usable.into(),
            epoch: 0.into(),
        })
    }
    fn set_usable(&self, on: bool) {
        use Ordering::SeqCst;
        if on && !self.usable.swap(true, SeqCst) {
            self.epoch.fetch_add(1, SeqCst);
        }
        if !on {
            self.usable.store(false, SeqCst);
        }
    }
    fn ready(&self) -> twinsan_blockdev::BlockResult<()> {
        if self.usable.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(twinsan_blockdev::BlockError::NotReady("secondary".into()))
        }
    }
}

impl twinsan_blockdev::BlockDevice for HeadView {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> twinsan_blockdev::BlockResult<()> {
        self.ready()?;
        self.inner.read_at(buf, offset_bytes)
    }
    fn write_at(
        &self,
        buf: &[u8],
        offset_bytes: u64,
        fua: bool,
    ) -> twinsan_blockdev::BlockResult<()> {
        self.ready()?;
        self.inner.write_at(buf, offset_bytes, fua)
    }
    fn flush(&self) -> twinsan_blockdev::BlockResult<()> {
        self.ready()
    }
    fn write_cache_enabled(&self) -> bool {
        false
    }
    fn engine(&self) -> twinsan_blockdev::EngineKind {
        twinsan_blockdev::EngineKind::Memory
    }
    fn activation_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

fn head(view: Arc<HeadView>) -> H {
    let dev: Arc<dyn twinsan_blockdev::BlockDevice> = view;
    let (store, usable) = DeviceReservationStore::at_end(dev.clone()).expect("big enough");
    let lun_dev = Arc::new(twinsan_blockdev::SliceDevice::new(dev, 0, usable).expect("slice"));
    let lu = Arc::new(LogicalUnit::new(
        cfg_with(Some(Arc::new(store)), PrRestore::Takeover),
        lun_dev,
    ));
    H {
        map: LunMap::new(vec![(0, lu.clone())]),
        lu,
        obs: nx(999_999, "observer", 0xFFF, 1),
    }
}

#[test]
fn reservations_on_the_device_follow_the_head_that_can_use_it() {
    let shared: Arc<dyn twinsan_blockdev::BlockDevice> =
        Arc::new(twinsan_blockdev::MemDevice::new(1 << 20, 512));
    let (va, vb) = (
        HeadView::new(shared.clone(), true),
        HeadView::new(shared, false),
    );
    let (ha, hb) = (head(va.clone()), head(vb.clone()));
    let (a, b) = (nx(1, "a", 1, 1), nx(2, "b", 2, 1));
    ha.connect(&[&a, &b]);
    ha.ok(&a, REGISTER, 0, 0, 0xA, 0);
    ha.ok(&b, REGISTER, 0, 0, 0xB, 0);
    ha.ok(&a, RESERVE, WE, 0xA, 0, 0);
    // Switch over: A's device becomes unusable, B's usable (promotion).
    va.set_usable(false);
    vb.set_usable(true);
    hb.connect(&[&a, &b]);
    let s = hb.lu.persistent_reservations();
    assert_eq!(
        s.registrations.len(),
        2,
        "registrations did not follow the primary"
    );
    assert_eq!(
        s.reservation.map(|r| r.pr_type),
        Some(PrType::WriteExclusive)
    );
    assert_eq!(
        s.generation, 2,
        "PRGENERATION carried over (RESERVE does not bump it)"
    );
    // And they are enforced there: b is registered but not the holder of WE.
    assert_eq!(hb.write(&b), CONFLICT);
    assert_eq!(hb.write(&a), ScsiStatus::Good);
    // Changes made on B come back to A on the next switch.
    hb.ok(&b, REGISTER, 0, 0xB, 0, 0);
    vb.set_usable(false);
    va.set_usable(true);
    let _ = ha.uas(&a);
    assert_eq!(ha.lu.persistent_reservations().registrations.len(), 1);
}
