//! End-to-end: SPC-4 persistent reservations of the real binary across a restart. One
//! target on two portals of one portal group; registrations and a Write Exclusive –
//! Registrants Only reservation made through both portals by different initiators;
//! the target stopped with SIGTERM and started again on the same backing file (and its
//! `<file>.pr` record). With APTPL=1 the registrations and the reservation come back
//! (PRGENERATION restarts at zero, as after any power on) and are enforced; with
//! APTPL=0 they are gone.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use twinsan_e2e::raw::{rw16, sense_key_asc, RawSession};
use twinsan_e2e::{free_port, scratch_dir, Twinsan};

const IQN: &str = "iqn.2026-11.org.twinsan.test:reservations";
const I1: &str = "iqn.2026-11.org.twinsan.test:pr-host-1";
const I2: &str = "iqn.2026-11.org.twinsan.test:pr-host-2";
const I3: &str = "iqn.2026-11.org.twinsan.test:pr-bystander";
const SIZE: &str = "16M";

const K1: u64 = 0xA1A1_0000_0000_0001;
const K2: u64 = 0xB2B2_0000_0000_0002;

/// PERSISTENT RESERVE IN / OUT service actions used here.
const READ_KEYS: u8 = 0x00;
const READ_RESERVATION: u8 = 0x01;
const REPORT_CAPABILITIES: u8 = 0x02;
const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;

/// Write Exclusive – Registrants Only.
const WR_EX_RO: u8 = 0x5;

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const RESERVATION_CONFLICT: u8 = 0x18;

fn new_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Wait (bounded) until `addr` accepts TCP connections.
fn wait_listening(t: &Twinsan, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "second portal {addr} not listening within 20 s:\n{}",
            t.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `twinsan export` of `dir/lun0.img` on the harness's portal (A) and `b`.
fn export_two_portals(dir: tempfile::TempDir, b: SocketAddr) -> Twinsan {
    let b_s = b.to_string();
    let t = Twinsan::export_in(dir, IQN, SIZE, &["--listen", &b_s]);
    wait_listening(&t, b);
    t
}

/// Status, (sense key, asc, ascq) and data-in of one command (`edtl` is the read
/// length; writes transfer all of `data`).
fn once(
    s: &mut RawSession,
    cdb: &[u8],
    edtl: u32,
    data: &[u8],
) -> (u8, Option<(u8, u8, u8)>, Vec<u8>) {
    let read = data.is_empty() && edtl > 0;
    let edtl = if data.is_empty() {
        edtl
    } else {
        u32::try_from(data.len()).unwrap()
    };
    let (st, sense, data_in, _) = s
        .command(cdb, edtl, read, data)
        .unwrap_or_else(|p| panic!("no answer to CDB {cdb:02x?}: {p:?}"));
    (st, sense_key_asc(&sense), data_in)
}

/// Like [`once`], but a unit attention (CHECK CONDITION, sense key UNIT ATTENTION) is
/// taken as cleared and the command is sent once more.
fn run(
    s: &mut RawSession,
    cdb: &[u8],
    edtl: u32,
    data: &[u8],
) -> (u8, Option<(u8, u8, u8)>, Vec<u8>) {
    let first = once(s, cdb, edtl, data);
    if first.0 == CHECK_CONDITION && matches!(first.1, Some((6, _, _))) {
        eprintln!(
            "unit attention {:02x?} on CDB {cdb:02x?}; retrying",
            first.1
        );
        return once(s, cdb, edtl, data);
    }
    first
}

/// PERSISTENT RESERVE IN `sa`; must be GOOD. Returns the parameter data.
fn prin(s: &mut RawSession, sa: u8) -> Vec<u8> {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5E;
    cdb[1] = sa;
    cdb[7..9].copy_from_slice(&1024u16.to_be_bytes());
    let (st, sense, data) = run(s, &cdb, 1024, &[]);
    assert_eq!(
        st, GOOD,
        "PERSISTENT RESERVE IN {sa:#x}: sense {sense:02x?}"
    );
    data
}

/// PERSISTENT RESERVE OUT `sa` (scope LU_SCOPE, `ty`) with the basic 24-byte
/// parameter list. Returns status and sense.
fn prout(
    s: &mut RawSession,
    sa: u8,
    ty: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> (u8, Option<(u8, u8, u8)>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5F;
    cdb[1] = sa;
    cdb[2] = ty & 0x0F; // SCOPE 0 (LU_SCOPE) in the high nibble
    cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p[20] = u8::from(aptpl);
    let (st, sense, _) = run(s, &cdb, 0, &p);
    (st, sense)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// READ KEYS data: (PRGENERATION, keys). Checks ADDITIONAL LENGTH against the data.
fn parse_keys(d: &[u8]) -> (u32, Vec<u64>) {
    assert!(d.len() >= 8, "READ KEYS data too short: {d:02x?}");
    let addl = be32(&d[4..]) as usize;
    assert_eq!(addl % 8, 0, "READ KEYS additional length {addl}");
    assert_eq!(d.len(), 8 + addl, "READ KEYS length: {d:02x?}");
    (be32(d), d[8..].chunks(8).map(be64).collect())
}

/// READ RESERVATION data: (PRGENERATION, Some((key, scope/type byte)) if reserved).
fn parse_reservation(d: &[u8]) -> (u32, Option<(u64, u8)>) {
    assert!(d.len() >= 8, "READ RESERVATION data too short: {d:02x?}");
    let addl = be32(&d[4..]) as usize;
    assert_eq!(d.len(), 8 + addl, "READ RESERVATION length: {d:02x?}");
    match addl {
        0 => (be32(d), None),
        16 => {
            assert_eq!(&d[16..21], &[0; 5], "obsolete/reserved bytes: {d:02x?}");
            assert_eq!(&d[22..24], &[0; 2], "obsolete bytes: {d:02x?}");
            (be32(d), Some((be64(&d[8..]), d[21])))
        }
        n => panic!("READ RESERVATION additional length {n}: {d:02x?}"),
    }
}

/// (PTPL_C, PTPL_A) from REPORT CAPABILITIES.
fn ptpl(s: &mut RawSession) -> (bool, bool) {
    let d = prin(s, REPORT_CAPABILITIES);
    assert!(d.len() >= 8, "REPORT CAPABILITIES data: {d:02x?}");
    (d[2] & 0x01 != 0, d[3] & 0x01 != 0)
}

fn read_block(s: &mut RawSession, lba: u64) -> (u8, Vec<u8>) {
    let (st, sense, data) = run(s, &rw16(0x88, lba, 1), 512, &[]);
    assert!(st != CHECK_CONDITION, "READ({lba}): sense {sense:02x?}");
    (st, data)
}

fn write_block(s: &mut RawSession, lba: u64, byte: u8) -> (u8, Option<(u8, u8, u8)>) {
    let (st, sense, _) = run(s, &rw16(0x8A, lba, 1), 0, &[byte; 512]);
    (st, sense)
}

/// What the first target run left behind, seen through PERSISTENT RESERVE IN.
struct Before {
    keys: Vec<u8>,
    reservation: Vec<u8>,
}

/// Start a target on two portals; I1 (portal A) registers K1 and reserves WR_EX_RO;
/// I2 (portal B) registers K2; both REGISTERs carry `aptpl`. Checks the state and its
/// enforcement, stops the target with SIGTERM (exit 0) and starts it again on the same
/// file with a fresh second portal. Returns the new target, its second portal and the
/// PERSISTENT RESERVE IN data read before the restart.
fn reserve_and_restart(aptpl: bool) -> (Twinsan, SocketAddr, Before) {
    let b = new_addr();
    let mut t = export_two_portals(scratch_dir(), b);

    let mut i1 = RawSession::login(t.addr, I1, IQN);
    assert_eq!(
        prout(&mut i1, REGISTER, 0, 0, K1, aptpl),
        (GOOD, None),
        "REGISTER K1 from I1"
    );
    assert_eq!(
        prout(&mut i1, RESERVE, WR_EX_RO, K1, 0, false),
        (GOOD, None),
        "RESERVE WR_EX_RO from I1"
    );
    let mut i2 = RawSession::login(b, I2, IQN);
    assert_eq!(
        prout(&mut i2, REGISTER, 0, 0, K2, aptpl),
        (GOOD, None),
        "REGISTER K2 from I2"
    );

    // Both portals report the same state (one device server behind both).
    let keys = prin(&mut i2, READ_KEYS);
    let reservation = prin(&mut i2, READ_RESERVATION);
    assert_eq!(
        prin(&mut i1, READ_KEYS),
        keys,
        "READ KEYS differs by portal"
    );
    assert_eq!(
        prin(&mut i1, READ_RESERVATION),
        reservation,
        "READ RESERVATION differs by portal"
    );
    // Two REGISTERs count, RESERVE does not (SPC-4 PRGENERATION).
    assert_eq!(parse_keys(&keys), (2, vec![K1, K2]), "{keys:02x?}");
    assert_eq!(
        parse_reservation(&reservation),
        (2, Some((K1, WR_EX_RO))),
        "{reservation:02x?}"
    );
    assert_eq!(ptpl(&mut i1), (true, aptpl), "PTPL_C / PTPL_A");

    // The reservation is in effect: a non-registrant may read but not write.
    let mut i3 = RawSession::login(t.addr, I3, IQN);
    assert_eq!(write_block(&mut i3, 8, 0xC3), (RESERVATION_CONFLICT, None));
    assert_eq!(read_block(&mut i3, 8), (GOOD, vec![0; 512]));

    drop((i1, i2, i3));
    assert_eq!(t.stop(), Some(0), "SIGTERM exit:\n{}", t.log());
    let record = t.dir.path().join("lun0.img.pr");
    assert!(
        record.exists(),
        "no persistent reservation record at {}",
        record.display()
    );
    let dir = std::mem::replace(&mut t.dir, scratch_dir());
    drop(t);

    let b2 = new_addr();
    let t = export_two_portals(dir, b2);
    (t, b2, Before { keys, reservation })
}

#[test]
fn aptpl_state_survives_restart_and_reads_back_through_second_portal() {
    let (mut t, b, before) = reserve_and_restart(true);

    // New sessions of both registrants, through the second portal.
    let mut i2 = RawSession::login(b, I2, IQN);
    let mut i1 = RawSession::login(b, I1, IQN);
    let keys = prin(&mut i2, READ_KEYS);
    let reservation = prin(&mut i1, READ_RESERVATION);
    assert_eq!(prin(&mut i1, READ_KEYS), keys);
    assert_eq!(prin(&mut i2, READ_RESERVATION), reservation);

    // PRGENERATION restarts at zero at power on; everything else is as before.
    let (generation, mut got_keys) = parse_keys(&keys);
    assert_eq!(generation, 0, "PRGENERATION after power on: {keys:02x?}");
    got_keys.sort_unstable();
    assert_eq!(
        got_keys,
        vec![K1, K2],
        "registered keys after restart; log:\n{}",
        t.log()
    );
    assert_eq!(
        parse_reservation(&reservation),
        (0, Some((K1, WR_EX_RO))),
        "reservation after restart: {reservation:02x?}"
    );
    assert_eq!(
        &keys[4..],
        &before.keys[4..],
        "READ KEYS after restart: {keys:02x?}, before: {:02x?}",
        before.keys
    );
    assert_eq!(
        &reservation[4..],
        &before.reservation[4..],
        "READ RESERVATION after restart: {reservation:02x?}, before: {:02x?}",
        before.reservation
    );
    assert_eq!(ptpl(&mut i2), (true, true), "PTPL_C / PTPL_A after restart");

    // The restored reservation is enforced: WR_EX_RO lets everyone read and only
    // registrants write.
    let mut i3 = RawSession::login(t.addr, I3, IQN);
    assert_eq!(
        write_block(&mut i3, 8, 0xC3),
        (RESERVATION_CONFLICT, None),
        "WRITE from a non-registrant"
    );
    assert_eq!(
        write_block(&mut i2, 16, 0xB2),
        (GOOD, None),
        "WRITE from a registrant"
    );
    assert_eq!(
        write_block(&mut i1, 24, 0xA1),
        (GOOD, None),
        "WRITE from the holder"
    );
    assert_eq!(
        read_block(&mut i3, 8),
        (GOOD, vec![0; 512]),
        "refused write"
    );
    assert_eq!(read_block(&mut i3, 16), (GOOD, vec![0xB2; 512]));
    assert_eq!(read_block(&mut i3, 24), (GOOD, vec![0xA1; 512]));

    drop((i1, i2, i3));
    assert_eq!(t.stop(), Some(0), "SIGTERM exit:\n{}", t.log());
    let img = std::fs::read(t.image()).unwrap();
    assert!(img[8 * 512..9 * 512].iter().all(|&x| x == 0), "block 8");
    assert!(
        img[16 * 512..17 * 512].iter().all(|&x| x == 0xB2),
        "block 16"
    );
    assert!(
        img[24 * 512..25 * 512].iter().all(|&x| x == 0xA1),
        "block 24"
    );
}

#[test]
fn without_aptpl_state_is_gone_after_restart() {
    let (mut t, b, before) = reserve_and_restart(false);
    assert_eq!(parse_keys(&before.keys).1, vec![K1, K2]);

    let mut i2 = RawSession::login(b, I2, IQN);
    let mut i1 = RawSession::login(b, I1, IQN);
    let keys = prin(&mut i2, READ_KEYS);
    let reservation = prin(&mut i1, READ_RESERVATION);
    assert_eq!(keys, vec![0; 8], "READ KEYS after restart: no keys");
    assert_eq!(
        reservation,
        vec![0; 8],
        "READ RESERVATION after restart: no reservation"
    );
    assert_eq!(
        ptpl(&mut i2),
        (true, false),
        "PTPL_C / PTPL_A after restart"
    );

    // Nothing is enforced and nobody is registered any more.
    let mut i3 = RawSession::login(t.addr, I3, IQN);
    assert_eq!(write_block(&mut i3, 8, 0xC3), (GOOD, None));
    assert_eq!(read_block(&mut i3, 8), (GOOD, vec![0xC3; 512]));
    assert_eq!(
        prout(&mut i1, RESERVE, WR_EX_RO, K1, 0, false),
        (RESERVATION_CONFLICT, None),
        "RESERVE with a key that is no longer registered"
    );
    assert_eq!(prin(&mut i1, READ_KEYS), vec![0; 8]);

    drop((i1, i2, i3));
    assert_eq!(t.stop(), Some(0), "SIGTERM exit:\n{}", t.log());
}
