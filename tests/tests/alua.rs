//! End-to-end: ALUA and multipath behaviour of the real binary. One target served
//! through two portals of one portal group; its target port group driven through the
//! control socket (`twinsan alua set|show`); the sense each state gives and the unit
//! attention after a change; two "heads" reporting the same device with different
//! relative port ids and port groups; PERSISTENT RESERVE OUT / PREEMPT AND ABORT
//! aborting a command queued on another session.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use twinsan_e2e::raw::{op, rw16, sense_key_asc, RawSession};
use twinsan_e2e::{free_port, run_with_timeout, scratch_dir, twinsan_bin, Twinsan};

const IQN: &str = "iqn.2026-11.org.twinsan.test:alua";
const INI_A: &str = "iqn.2026-11.org.twinsan.test:host-a";
const INI_B: &str = "iqn.2026-11.org.twinsan.test:host-b";

/// `twinsan export` on two portals of one portal group with a control socket in the
/// scratch directory. Returns the target, its second portal and the socket path.
fn two_portals(extra: &[&str]) -> (Twinsan, SocketAddr, std::path::PathBuf) {
    let dir = scratch_dir();
    let p1: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let p2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let img = dir.path().join("lun0.img");
    let sock = dir.path().join("control.sock");
    let (img_s, sock_s) = (
        img.to_str().unwrap().to_owned(),
        sock.to_str().unwrap().to_owned(),
    );
    let (l1, l2) = (p1.to_string(), p2.to_string());
    let mut args = vec![
        "export",
        &img_s,
        "--iqn",
        IQN,
        "--listen",
        &l1,
        "--listen",
        &l2,
        "--size",
        "16M",
        "--control",
        &sock_s,
    ];
    args.extend_from_slice(extra);
    let t = Twinsan::start(&args, p1, dir);
    // The control socket comes up right after the portals.
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(sock.exists(), "no control socket:\n{}", t.log());
    (t, p2, sock)
}

fn alua(sock: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(twinsan_bin());
    c.arg("alua")
        .arg(args[0])
        .arg("--control")
        .arg(sock)
        .args(&args[1..]);
    run_with_timeout(&mut c, Duration::from_secs(20))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Status and (key, asc, ascq) of one command (`edtl` is the read length; writes
/// transfer all of `data`).
fn run(
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
    let (st, sense, data_in, _) = s.command(cdb, edtl, read, data).expect("command");
    (st, sense_key_asc(&sense), data_in)
}

const TUR: [u8; 6] = [0; 6];
const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
const VPD83: [u8; 6] = [0x12, 1, 0x83, 0, 255, 0];

fn rtpg() -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xA3;
    c[1] = 0x0A;
    c[6..10].copy_from_slice(&1024u32.to_be_bytes());
    c
}

/// (designator type, association, value) of every designator in VPD page 0x83.
fn designators(page: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut v = Vec::new();
    let mut off = 4;
    while off + 4 <= page.len() {
        let len = usize::from(page[off + 3]);
        let body = page[off + 4..(off + 4 + len).min(page.len())].to_vec();
        v.push((page[off + 1] & 0x0F, (page[off + 1] >> 4) & 0x03, body));
        off += 4 + len;
    }
    v
}

/// RTPG descriptors: (group id, state code, PREF, member relative port ids).
fn groups(data: &[u8]) -> Vec<(u16, u8, bool, Vec<u16>)> {
    let mut v = Vec::new();
    let mut off = 4;
    while off + 8 <= data.len() {
        let d = &data[off..];
        let n = usize::from(d[7]);
        let ports = (0..n)
            .map(|i| u16::from_be_bytes([d[8 + 4 * i + 2], d[8 + 4 * i + 3]]))
            .collect();
        v.push((
            u16::from_be_bytes([d[2], d[3]]),
            d[0] & 0x0F,
            d[0] & 0x80 != 0,
            ports,
        ));
        off += 8 + 4 * n;
    }
    v
}

#[test]
fn standby_refuses_medium_access_and_active_comes_back_with_unit_attention() {
    let (t, p2, sock) = two_portals(&[]);
    let mut a = RawSession::login(t.addr, INI_A, IQN);
    let mut b = RawSession::login(p2, INI_B, IQN);

    // Implicit ALUA, one group (id 1) with the portal group's relative port (1).
    let (st, _, inq) = run(&mut a, &INQUIRY, 96, &[]);
    assert_eq!(st, 0);
    assert_eq!(inq[5] & 0x30, 0x10, "TPGS = implicit");
    let (_, _, page) = run(&mut b, &VPD83, 255, &[]);
    let d = designators(&page);
    assert!(
        d.contains(&(4, 1, vec![0, 0, 0, 1])),
        "relative port 1: {d:?}"
    );
    assert!(d.contains(&(5, 1, vec![0, 0, 0, 1])), "port group 1: {d:?}");
    let (st, _, data) = run(&mut a, &rtpg(), 1024, &[]);
    assert_eq!(st, 0);
    assert_eq!(groups(&data), vec![(1, 0, false, vec![1])]);
    let show = alua(&sock, &["show"]);
    assert!(show.status.success(), "{show:?}");
    assert_eq!(
        stdout(&show).trim(),
        format!("target={IQN} group=1 state=active-optimized preferred=no ports=1 cause=none")
    );

    // Standby through the control socket.
    let set = alua(&sock, &["set", "--group", "1", "--state", "standby"]);
    assert!(set.status.success(), "{set:?}");
    assert!(stdout(&set).contains("state=standby"), "{}", stdout(&set));
    for s in [&mut a, &mut b] {
        // The change is announced first (INQUIRY neither reports nor clears it) ...
        let (st, _, _) = run(s, &INQUIRY, 96, &[]);
        assert_eq!(st, 0);
        let (st, sense, _) = run(s, &rw16(0x88, 0, 1), 512, &[]);
        assert_eq!(
            (st, sense),
            (2, Some((6, 0x2A, 0x06))),
            "ASYMMETRIC ACCESS STATE CHANGED"
        );
        // ... then medium access is refused: NOT READY, TARGET PORT IN STANDBY STATE.
        let (st, sense, _) = run(s, &rw16(0x88, 0, 1), 512, &[]);
        assert_eq!((st, sense), (2, Some((2, 0x04, 0x0B))));
        let (st, sense, _) = run(s, &rw16(0x8A, 0, 1), 0, &[0x5A; 512]);
        assert_eq!((st, sense), (2, Some((2, 0x04, 0x0B))));
        let (st, sense, _) = run(s, &TUR, 0, &[]);
        assert_eq!((st, sense), (2, Some((2, 0x04, 0x0B))));
        // INQUIRY and REPORT TARGET PORT GROUPS still work.
        let (st, _, inq) = run(s, &INQUIRY, 96, &[]);
        assert_eq!((st, inq.len()), (0, 96));
        let (st, _, data) = run(s, &rtpg(), 1024, &[]);
        assert_eq!(st, 0);
        assert_eq!(groups(&data), vec![(1, 2, false, vec![1])]);
    }
    assert!(
        std::fs::read(t.image()).unwrap()[..512]
            .iter()
            .all(|&b| b == 0),
        "nothing written in standby"
    );

    // Back to active/optimized: unit attention, then GOOD.
    let set = alua(
        &sock,
        &["set", "--group", "1", "--state", "active-optimized"],
    );
    assert!(set.status.success(), "{set:?}");
    let (st, sense, _) = run(&mut a, &TUR, 0, &[]);
    assert_eq!((st, sense), (2, Some((6, 0x2A, 0x06))));
    let (st, sense, data) = run(&mut a, &rw16(0x88, 0, 1), 512, &[]);
    assert_eq!((st, sense, data.len()), (0, None, 512));
    let (st, sense, _) = run(&mut b, &rw16(0x8A, 0, 1), 0, &[0x5A; 512]);
    assert_eq!((st, sense), (2, Some((6, 0x2A, 0x06))));
    let (st, _, _) = run(&mut b, &rw16(0x8A, 0, 1), 0, &[0x5A; 512]);
    assert_eq!(st, 0);
    let show = stdout(&alua(&sock, &["show", "--target", IQN]));
    assert!(
        show.contains("state=active-optimized") && show.contains("cause=implicit"),
        "{show}"
    );

    // Refused requests change nothing and say why.
    let bad = alua(&sock, &["set", "--group", "9", "--state", "standby"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no target has target port group 9"));
    let bad = alua(&sock, &["set", "--group", "1", "--state", "sleepy"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let (st, _, _) = run(&mut a, &TUR, 0, &[]);
    assert_eq!(st, 0);
    let mode = std::fs::metadata(&sock).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(mode.unwrap(), 0o600);
    drop((a, b));
    let mut t = t;
    assert_eq!(t.stop(), Some(0));
    assert!(!sock.exists(), "control socket removed at exit");
}

/// Two heads exporting the same target: same NAA id and serial, different relative
/// port ids and port groups, the same group table (each head's state for its own
/// group).
#[test]
fn two_heads_report_one_device_through_different_port_groups() {
    let (head_a, _, _) = two_portals(&[
        "--relative-port-id",
        "1",
        "--alua-group-id",
        "1",
        "--alua-remote-group",
        "2:2:standby",
    ]);
    let (head_b, _, sock_b) = two_portals(&[
        "--relative-port-id",
        "2",
        "--alua-group-id",
        "2",
        "--alua-remote-group",
        "1:1:active-optimized",
        "--explicit-alua",
    ]);
    let mut a = RawSession::login(head_a.addr, INI_A, IQN);
    let mut b = RawSession::login(head_b.addr, INI_A, IQN);
    // Head B's own group goes standby (as its HA manager would do).
    let set = alua(&sock_b, &["set", "--group", "2", "--state", "standby"]);
    assert!(set.status.success(), "{set:?}");
    assert_eq!(run(&mut b, &TUR, 0, &[]).1, Some((6, 0x2A, 0x06)));
    let (_, _, pa) = run(&mut a, &VPD83, 255, &[]);
    let (_, _, pb) = run(&mut b, &VPD83, 255, &[]);
    let (da, db) = (designators(&pa), designators(&pb));
    let lu = |d: &[(u8, u8, Vec<u8>)]| -> Vec<(u8, u8, Vec<u8>)> {
        d.iter().filter(|x| x.1 == 0).cloned().collect()
    };
    assert_eq!(lu(&da), lu(&db), "same NAA and T10 designators");
    assert!(lu(&da).iter().any(|x| x.0 == 3), "NAA designator");
    assert!(da.contains(&(4, 1, vec![0, 0, 0, 1])) && da.contains(&(5, 1, vec![0, 0, 0, 1])));
    assert!(db.contains(&(4, 1, vec![0, 0, 0, 2])) && db.contains(&(5, 1, vec![0, 0, 0, 2])));
    let serial = [0x12, 1, 0x80, 0, 255, 0];
    assert_eq!(
        run(&mut a, &serial, 255, &[]).2,
        run(&mut b, &serial, 255, &[]).2
    );
    // Both heads report both groups; head B's port is standby.
    let (_, _, ga) = run(&mut a, &rtpg(), 1024, &[]);
    let (st, _, gb) = run(&mut b, &rtpg(), 1024, &[]);
    assert_eq!(st, 0);
    assert_eq!(
        groups(&ga),
        vec![(1, 0, false, vec![1]), (2, 2, false, vec![2])]
    );
    assert_eq!(
        groups(&gb),
        vec![(2, 2, false, vec![2]), (1, 0, false, vec![1])]
    );
    let (_, _, inq) = run(&mut b, &INQUIRY, 96, &[]);
    assert_eq!(
        inq[5] & 0x30,
        0x30,
        "TPGS = implicit and explicit on head B"
    );
    let (st, sense, _) = run(&mut b, &rw16(0x88, 0, 1), 512, &[]);
    assert_eq!((st, sense), (2, Some((2, 0x04, 0x0B))));
    // Explicit ALUA: the initiator moves head B's group to active/optimized.
    let stpg = [0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    let (st, sense, _) = run(&mut b, &stpg, 8, &[0, 0, 0, 0, 0x00, 0, 0, 2]);
    assert_eq!((st, sense), (0, None));
    let (st, sense, _) = run(&mut b, &rw16(0x88, 0, 1), 512, &[]);
    assert_eq!((st, sense), (0, None), "the issuer gets no unit attention");
    // Head A takes no SET TARGET PORT GROUPS (implicit only).
    let (st, sense, _) = run(&mut a, &stpg, 8, &[0, 0, 0, 0, 0x02, 0, 0, 1]);
    assert_eq!((st, sense), (2, Some((5, 0x20, 0x00))));
}

fn prout(sa: u8, pr_type: u8, key: u64, sark: u64) -> ([u8; 10], Vec<u8>) {
    let cdb = [0x5F, sa, pr_type, 0, 0, 0, 0, 0, 24, 0];
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    (cdb, p)
}

/// PERSISTENT RESERVE OUT / PREEMPT AND ABORT from one session aborts the command the
/// preempted initiator has queued on another session (waiting for its data): it ends
/// with TASK ABORTED (the control mode page reports TAS=1) and never reaches the disk.
#[test]
fn preempt_and_abort_aborts_the_preempted_sessions_queued_command() {
    let (t, p2, _) = two_portals(&[]);
    let mut a = RawSession::login(t.addr, INI_A, IQN);
    let mut b = RawSession::login(p2, INI_B, IQN);
    const WE: u8 = 0x01;
    let (c, p) = prout(0x00, 0, 0, 0xBB); // REGISTER
    assert_eq!(run(&mut b, &c, 24, &p).0, 0);
    let (c, p) = prout(0x01, WE, 0xBB, 0); // RESERVE, write exclusive
    assert_eq!(run(&mut b, &c, 24, &p).0, 0);
    let (c, p) = prout(0x00, 0, 0, 0xAA);
    assert_eq!(run(&mut a, &c, 24, &p).0, 0);

    // B queues a WRITE(16) without data: the target asks for it (R2T) and waits.
    let (h, itt) = b.command_bhs(&rw16(0x8A, 8, 1), 512, false, true, 0);
    b.send(&h, &[]);
    let r2t = b.recv().expect("R2T");
    assert_eq!(r2t.opcode(), op::R2T, "{r2t:?}");

    // A preempts B's registration and reservation, aborting B's tasks.
    let (c, p) = prout(0x05, WE, 0xAA, 0xBB);
    let (st, sense, _) = run(&mut a, &c, 24, &p);
    assert_eq!((st, sense), (0, None));
    let resp = b.recv().expect("a response for the aborted write");
    assert_eq!(resp.opcode(), op::SCSI_RESP, "{resp:?}");
    assert_eq!(resp.itt(), itt);
    assert_eq!(resp.bhs[3], 0x40, "TASK ABORTED");
    // B learns why; its registration is gone and A holds the reservation.
    let (st, sense, _) = run(&mut b, &TUR, 0, &[]);
    assert_eq!((st, sense.map(|s| s.0)), (2, Some(6)), "unit attention");
    let (st, _, _) = run(&mut b, &rw16(0x8A, 8, 1), 0, &[0x77; 512]);
    assert_eq!(st, 0x18, "RESERVATION CONFLICT for the preempted initiator");
    let (st, _, data) = run(&mut a, &rw16(0x88, 8, 1), 512, &[]);
    assert_eq!(st, 0);
    assert!(
        data.iter().all(|&x| x == 0),
        "the aborted write never reached the disk"
    );
    let (c, p) = prout(0x02, WE, 0xAA, 0); // RELEASE
    assert_eq!(run(&mut a, &c, 24, &p).0, 0);
}

/// LOGICAL UNIT RESET on one path: every path (the issuer's too) gets BUS DEVICE RESET
/// FUNCTION OCCURRED, and a command queued on the other session is aborted.
#[test]
fn lun_reset_reaches_both_paths() {
    let (t, p2, _) = two_portals(&[]);
    let mut a = RawSession::login(t.addr, INI_A, IQN);
    let mut b = RawSession::login(p2, INI_B, IQN);
    let (h, itt) = b.command_bhs(&rw16(0x8A, 16, 1), 512, false, true, 0);
    b.send(&h, &[]);
    assert_eq!(b.recv().expect("R2T").opcode(), op::R2T);
    // TMF request: immediate, function 5 (LOGICAL UNIT RESET), LUN 0.
    let mut tmf = twinsan_e2e::raw::bhs(0x42, 0x85, 0);
    tmf[16..20].copy_from_slice(&0x7777u32.to_be_bytes());
    tmf[20..24].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
    tmf[24..28].copy_from_slice(&a.cmd_sn.to_be_bytes());
    tmf[28..32].copy_from_slice(&a.exp_stat_sn.to_be_bytes());
    a.send(&tmf, &[]);
    let resp = a.recv().expect("TMF response");
    assert_eq!((resp.opcode(), resp.bhs[2]), (0x22, 0), "function complete");
    let aborted = b.recv().expect("response for the queued write");
    assert_eq!(
        (aborted.opcode(), aborted.itt(), aborted.bhs[3]),
        (op::SCSI_RESP, itt, 0x40)
    );
    for s in [&mut a, &mut b] {
        let (st, sense, _) = run(s, &TUR, 0, &[]);
        assert_eq!((st, sense), (2, Some((6, 0x29, 0x03))));
        assert_eq!(run(s, &TUR, 0, &[]).0, 0);
    }
}
