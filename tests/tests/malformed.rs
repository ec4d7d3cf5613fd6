//! End-to-end: malformed input from an initiator gets the RFC's answer (Reject, a
//! CHECK CONDITION, a silent drop or a closed connection), never a crash, and the
//! backing file is intact afterwards: only blocks a valid command wrote have changed.

use std::time::Duration;

use twinsan_e2e::raw::{bhs, op, rw16, sense_key_asc, RawSession};
use twinsan_e2e::{scratch_dir, Twinsan};

const IQN: &str = "iqn.2026-11.org.twinsan.test:malformed";
const INI: &str = "iqn.2026-11.org.twinsan.test:fuzzer";
const SIZE_BYTES: usize = 8 << 20;
const BLOCKS: u64 = (SIZE_BYTES / 512) as u64;

fn pattern() -> Vec<u8> {
    (0..SIZE_BYTES)
        .map(|i| (i / 512 % 251) as u8 ^ (i % 7) as u8)
        .collect()
}

/// Start a target on a file filled with a known pattern.
fn target() -> Twinsan {
    let dir = scratch_dir();
    std::fs::write(dir.path().join("lun0.img"), pattern()).unwrap();
    Twinsan::export_in(dir, IQN, "8M", &[])
}

fn assert_intact(t: &Twinsan, changed_blocks: &[(u64, u8)]) {
    let mut want = pattern();
    for &(lba, byte) in changed_blocks {
        let o = usize::try_from(lba).unwrap() * 512;
        want[o..o + 512].fill(byte);
    }
    let got = std::fs::read(t.image()).unwrap();
    assert_eq!(got.len(), want.len(), "backing file size changed");
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!("backing file differs at byte {i} (block {})", i / 512);
    }
}

/// The target still serves a new session correctly (it did not crash or wedge).
fn still_serves(t: &Twinsan) {
    let mut s = RawSession::login(t.addr, INI, IQN);
    let (st, _, data, _) = s.command(&rw16(0x88, 0, 1), 512, true, &[]).expect("read");
    assert_eq!(st, 0);
    assert_eq!(data.len(), 512);
}

#[test]
fn truncated_bhs_closes_connection() {
    let t = target();
    let mut s = RawSession::login(t.addr, INI, IQN);
    s.send_raw(&bhs(0x01, 0x81, 0)[..20]).unwrap();
    s.shutdown_write();
    assert!(
        s.closed_within(Duration::from_secs(10)),
        "target kept a half-sent PDU's connection open"
    );
    still_serves(&t);
    assert_intact(&t, &[]);
}

#[test]
fn unknown_opcode_is_rejected() {
    let t = target();
    let mut s = RawSession::login(t.addr, INI, IQN);
    let mut h = bhs(0x1e, 0x80, 0); // not an initiator opcode
    h[16..20].copy_from_slice(&7u32.to_be_bytes());
    s.send(&h, &[]);
    let p = s.recv().expect("an answer to an unknown opcode");
    assert_eq!(p.opcode(), op::REJECT, "want Reject, got {p:?}");
    assert!(
        matches!(p.bhs[2], 0x04 | 0x05),
        "reject reason {:#x}",
        p.bhs[2]
    );
    assert_eq!(
        &p.data[..48],
        &h[..],
        "Reject must carry the offending header"
    );
    // The session goes on.
    let (st, _, _, _) = s
        .command(&rw16(0x88, 0, 1), 512, true, &[])
        .expect("read after reject");
    assert_eq!(st, 0);
    assert_intact(&t, &[]);
}

#[test]
fn oversized_data_segment_is_refused_and_nothing_written() {
    let t = target();
    let mut s = RawSession::login(t.addr, INI, IQN);
    let too_big = usize::try_from(s.target_mrdsl).unwrap() + 512;
    let data = vec![0xEEu8; too_big];
    let blocks = u32::try_from(too_big / 512).unwrap();
    let (h, _) = s.command_bhs(
        &rw16(0x8a, 16, blocks),
        u32::try_from(too_big).unwrap(),
        false,
        true,
        too_big,
    );
    let mut buf = h.to_vec();
    buf.extend_from_slice(&data);
    let _ = s.send_raw(&buf);
    // Either a Reject followed by a drop, or a drop: never a write.
    match s.recv() {
        None => {}
        Some(p) => assert_eq!(p.opcode(), op::REJECT, "want Reject or close, got {p:?}"),
    }
    still_serves(&t);
    assert_intact(&t, &[]);
}

#[test]
fn cmdsn_outside_window_is_ignored() {
    let t = target();
    let mut s = RawSession::login(t.addr, INI, IQN);
    let good_sn = s.cmd_sn;
    s.cmd_sn = s.max_cmd_sn.wrapping_add(1000);
    let data = vec![0x11u8; 512];
    let (h, bad_itt) = s.command_bhs(&rw16(0x8a, 3, 1), 512, false, true, 512);
    s.send(&h, &data);
    s.cmd_sn = good_sn;
    // A valid command after it completes, and no answer ever names the bad one.
    let (st, _, _, last) = s.command(&rw16(0x88, 3, 1), 512, true, &[]).expect("read");
    assert_eq!(st, 0);
    assert_ne!(last.itt(), bad_itt);
    assert_intact(&t, &[]);
}

#[test]
fn data_beyond_transfer_length_writes_nothing_extra() {
    let t = target();
    let mut s = RawSession::login(t.addr, INI, IQN);
    // EDTL 512 (one block) but 1024 bytes of immediate data.
    let data = vec![0x22u8; 1024];
    let (h, itt) = s.command_bhs(&rw16(0x8a, 5, 1), 512, false, true, 1024);
    s.send(&h, &data);
    let p = s.recv();
    match p {
        None => {}
        Some(p) if p.opcode() == op::REJECT => {}
        Some(p) if p.opcode() == op::SCSI_RESP && p.itt() == itt => {
            // A CHECK CONDITION is also acceptable; GOOD would hide the error.
            assert_eq!(p.bhs[3], 0x02, "data beyond EDTL accepted silently");
        }
        Some(p) => panic!("unexpected answer {p:?}"),
    }
    still_serves(&t);
    // Block 6 must never be touched; block 5 may hold the command's data or not.
    let got = std::fs::read(t.image()).unwrap();
    let b5 = &got[5 * 512..6 * 512];
    let untouched = pattern()[5 * 512..6 * 512].to_vec();
    let changed = if b5 == untouched.as_slice() {
        vec![]
    } else {
        vec![(5, 0x22)]
    };
    assert_intact(&t, &changed);
}

#[test]
fn lba_beyond_end_is_check_condition() {
    let t = target();
    let mut s = RawSession::login(t.addr, INI, IQN);
    let (st, sense, _, _) = s
        .command(&rw16(0x88, BLOCKS, 1), 512, true, &[])
        .expect("read");
    assert_eq!(st, 0x02);
    assert_eq!(
        sense_key_asc(&sense),
        Some((0x05, 0x21, 0x00)),
        "sense {sense:02x?}"
    );
    let (st, sense, _, _) = s
        .command(&rw16(0x8a, BLOCKS - 1, 2), 1024, false, &[0x33; 1024])
        .expect("write");
    assert_eq!(st, 0x02);
    assert_eq!(
        sense_key_asc(&sense),
        Some((0x05, 0x21, 0x00)),
        "sense {sense:02x?}"
    );
    // A valid write at the last block lands exactly there.
    let (st, _, _, _) = s
        .command(&rw16(0x8a, BLOCKS - 1, 1), 512, false, &[0x44; 512])
        .expect("write");
    assert_eq!(st, 0);
    drop(s);
    let mut t = t;
    assert_eq!(t.stop(), Some(0));
    assert_intact(&t, &[(BLOCKS - 1, 0x44)]);
}
