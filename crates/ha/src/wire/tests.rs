use super::*;
use proptest::prelude::*;

const SECRET: &[u8] = b"twinsan cluster secret";
const CLUSTER: [u8; 16] = *b"cluster-id-16-by";

fn key() -> ClusterKey {
    ClusterKey::new(SECRET).unwrap()
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        cluster_id: CLUSTER,
        sender: 1,
        link: 1,
        stamp: Stamp { boot: 3, seq: 258 },
        echo: Some(Stamp { boot: 7, seq: 65 }),
        view: View {
            sees_peer: true,
            has_quorum: true,
            wait_for_all_satisfied: true,
            quorum_without_peer: false,
            role_summary: 0x0102_0304,
        },
        dead_time_ms: 600,
        timestamp_ms: 0x0000_0123_4567_89AB,
    }
}

fn request() -> VoteRequest {
    VoteRequest {
        cluster_id: CLUSTER,
        sender: 2,
        stamp: Stamp { boot: 9, seq: 1 },
        release: false,
        sees_peer: true,
        role_summary: 5,
        timestamp_ms: 1000,
    }
}

fn reply() -> VoteReply {
    VoteReply {
        cluster_id: CLUSTER,
        to: 2,
        witness_boot: 4,
        echo: Stamp { boot: 9, seq: 1 },
        status: VoteStatus::Granted,
        holder: Some(2),
        term: (4 << 32) | 1,
        lease_ms: 500,
        timestamp_ms: 77,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mac_of(covered: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(SECRET).unwrap();
    m.update(covered);
    m.finalize().into_bytes().into()
}

/// Recompute the MAC of a (modified) datagram, as a sender with the secret would.
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len();
    let tag = mac_of(&bytes[..n - MAC_BYTES]);
    bytes[n - MAC_BYTES..].copy_from_slice(&tag);
}

// The layouts are spelled out byte by byte (independently of the zerocopy structs),
// and the MAC tail is pinned as hex: a change of layout, endianness or MAC input
// breaks these tests.

#[test]
fn golden_heartbeat() {
    let b = heartbeat().encode(&key());
    let mut want = Vec::new();
    want.extend_from_slice(b"TWHA");
    want.extend_from_slice(&[1, 0, 1, 1]); // version 1, kind heartbeat, sender 1
    want.extend_from_slice(&CLUSTER);
    want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]); // boot 3
    want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0]); // seq 258
    want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]); // echo boot 7
    want.extend_from_slice(&[65, 0, 0, 0, 0, 0, 0, 0]); // echo seq 65
    want.extend_from_slice(&[7, 0, 0, 0]); // view flags
    want.extend_from_slice(&[4, 3, 2, 1]); // role summary
    want.extend_from_slice(&[0x58, 0x02, 0, 0]); // dead time 600
    want.extend_from_slice(&[1, 0, 0, 0]); // link 1, reserved
    want.extend_from_slice(&[0xAB, 0x89, 0x67, 0x45, 0x23, 0x01, 0, 0]); // timestamp
    assert_eq!(want.len(), 80);
    assert_eq!(&b[..80], &want[..]);
    assert_eq!(b[80..], mac_of(&want));
    assert_eq!(
        hex(&b[80..]),
        "3d6f77b4839187632481d6e1898bd6a7cfe2c22dddbc7bfd5d7226a460ddafcc"
    );
}

#[test]
fn golden_vote_request() {
    let b = request().encode(&key());
    let mut want = Vec::new();
    want.extend_from_slice(b"TWHA");
    want.extend_from_slice(&[1, 0, 2, 2]); // version 1, kind request, sender 2
    want.extend_from_slice(&CLUSTER);
    want.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]); // boot 9
    want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // seq 1
    want.extend_from_slice(&[2, 0, 0, 0]); // flags: sees peer
    want.extend_from_slice(&[5, 0, 0, 0]); // role summary
    want.extend_from_slice(&[0xE8, 0x03, 0, 0, 0, 0, 0, 0]); // timestamp 1000
    assert_eq!(want.len(), 56);
    assert_eq!(&b[..56], &want[..]);
    assert_eq!(b[56..], mac_of(&want));
    assert_eq!(
        hex(&b[56..]),
        "4ebdb03dc77524cdd2683487a2dab37fb0a4cd0e3b21d11b8dff822b3e9c70e3"
    );
}

#[test]
fn golden_vote_reply() {
    let b = reply().encode(&key());
    let mut want = Vec::new();
    want.extend_from_slice(b"TWHA");
    want.extend_from_slice(&[1, 0, 3, 0xFF]); // version 1, kind reply, the witness
    want.extend_from_slice(&CLUSTER);
    want.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0]); // witness boot
    want.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]); // echo boot
    want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // echo seq
    want.extend_from_slice(&[1, 0, 0, 0, 4, 0, 0, 0]); // term (4 << 32) | 1
    want.extend_from_slice(&[2, 1, 2, 0]); // to 2, granted, holder 2, reserved
    want.extend_from_slice(&[0xF4, 0x01, 0, 0]); // lease 500
    want.extend_from_slice(&[77, 0, 0, 0, 0, 0, 0, 0]); // timestamp
    assert_eq!(want.len(), 72);
    assert_eq!(&b[..72], &want[..]);
    assert_eq!(b[72..], mac_of(&want));
    assert_eq!(
        hex(&b[72..]),
        "c7a7f3cb544be197832b3080312a8a24a23e2df405a20f8327a166e9df346e05"
    );
}

#[test]
fn round_trips_of_the_golden_messages() {
    let k = key();
    for m in [
        Message::Heartbeat(heartbeat()),
        Message::VoteRequest(request()),
        Message::VoteReply(reply()),
    ] {
        assert_eq!(decode(&m.encode(&k), &k), Ok(m));
    }
}

#[test]
fn header_errors_are_reported_before_the_mac() {
    let k = key();
    let good = heartbeat().encode(&k);
    assert_eq!(decode(&[], &k), Err(WireError::TooShort { len_bytes: 0 }));
    assert_eq!(
        decode(&good[..6], &k),
        Err(WireError::TooShort { len_bytes: 6 })
    );
    let mut b = good;
    b[0] = b'X';
    assert_eq!(decode(&b, &k), Err(WireError::BadMagic(*b"XWHA")));
    let mut b = good;
    b[4] = 2;
    assert_eq!(decode(&b, &k), Err(WireError::UnsupportedVersion(2)));
    let mut b = good;
    b[6] = 9;
    assert_eq!(decode(&b, &k), Err(WireError::UnknownKind(9)));
    assert_eq!(
        decode(&good[..111], &k),
        Err(WireError::BadLength {
            kind: "heartbeat",
            expected_bytes: 112,
            got_bytes: 111
        })
    );
    let mut long = good.to_vec();
    long.push(0);
    assert!(matches!(
        decode(&long, &k),
        Err(WireError::BadLength { got_bytes: 113, .. })
    ));
    // A heartbeat relabelled as a vote request has the wrong length for that kind.
    let mut b = good;
    b[6] = 2;
    assert!(matches!(
        decode(&b, &k),
        Err(WireError::BadLength {
            kind: "vote request",
            ..
        })
    ));
}

#[test]
fn wrong_secret_or_any_flipped_bit_fails() {
    let other = ClusterKey::new(b"another cluster's secret").unwrap();
    for m in [
        Message::Heartbeat(heartbeat()),
        Message::VoteRequest(request()),
        Message::VoteReply(reply()),
    ] {
        let bytes = m.encode(&key());
        assert_eq!(decode(&bytes, &other), Err(WireError::BadMac));
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&b, &key()).is_err(),
                "bit {bit} flipped was accepted"
            );
        }
    }
}

#[test]
fn field_rules_apply_after_the_mac() {
    let k = key();
    let hb = heartbeat().encode(&k);
    let check = |mut b: Vec<u8>, at: usize, v: u8, want: WireError| {
        b[at] = v;
        reseal(&mut b);
        assert_eq!(decode(&b, &k), Err(want));
    };
    check(hb.to_vec(), 56, 0x1F, WireError::UnknownFlags(0x10));
    check(
        hb.to_vec(),
        70,
        1,
        WireError::Invalid("reserved heartbeat bytes are not zero"),
    );
    check(
        hb.to_vec(),
        7,
        0xFF,
        WireError::Invalid("node message with the witness's sender id"),
    );
    let mut zero_boot = hb.to_vec();
    zero_boot[24] = 0;
    check(
        zero_boot,
        24,
        0,
        WireError::Invalid("stamp boot and seq must be at least 1"),
    );
    check(
        hb.to_vec(),
        40,
        0,
        WireError::Invalid("echo seq without echo boot"),
    );
    let rq = request().encode(&k);
    check(rq.to_vec(), 40, 6, WireError::UnknownFlags(4));
    let rp = reply().encode(&k);
    check(rp.to_vec(), 57, 4, WireError::UnknownStatus(4));
    check(
        rp.to_vec(),
        7,
        1,
        WireError::Invalid("vote reply not sent by the witness"),
    );
    check(
        rp.to_vec(),
        59,
        1,
        WireError::Invalid("reserved vote reply byte is not zero"),
    );
    check(
        rp.to_vec(),
        58,
        1,
        WireError::Invalid("granted vote names another holder"),
    );
    check(
        rp.to_vec(),
        56,
        0xFF,
        WireError::Invalid("vote reply addressed to the witness"),
    );
}

#[test]
fn echo_none_and_holder_none_encode_as_zero_and_ff() {
    let k = key();
    let hb = Heartbeat {
        echo: None,
        ..heartbeat()
    };
    let b = hb.encode(&k);
    assert_eq!(&b[40..56], &[0; 16]);
    assert_eq!(decode(&b, &k), Ok(Message::Heartbeat(hb)));
    let rp = VoteReply {
        status: VoteStatus::NotReady,
        holder: None,
        ..reply()
    };
    let b = rp.encode(&k);
    assert_eq!(b[58], 0xFF);
    assert_eq!(decode(&b, &k), Ok(Message::VoteReply(rp)));
}

#[test]
fn secret_rules_and_redacted_debug() {
    assert_eq!(
        ClusterKey::new(b"short").unwrap_err(),
        WireError::SecretTooShort {
            len_bytes: 5,
            min_bytes: 16
        }
    );
    assert_eq!(format!("{:?}", key()), "ClusterKey(..)");
}

fn stamp_strategy() -> impl Strategy<Value = Stamp> {
    (1..u64::MAX, 1..u64::MAX).prop_map(|(boot, seq)| Stamp { boot, seq })
}

fn view_strategy() -> impl Strategy<Value = View> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|(s, q, w, a, r)| View {
            sees_peer: s,
            has_quorum: q,
            wait_for_all_satisfied: w,
            quorum_without_peer: a,
            role_summary: r,
        })
}

fn message_strategy() -> impl Strategy<Value = Message> {
    let hb = (
        any::<[u8; 16]>(),
        0..0xFFu8,
        any::<u8>(),
        stamp_strategy(),
        proptest::option::of(stamp_strategy()),
        view_strategy(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(cluster_id, sender, link, stamp, echo, view, dead_time_ms, timestamp_ms)| {
                Message::Heartbeat(Heartbeat {
                    cluster_id,
                    sender,
                    link,
                    stamp,
                    echo,
                    view,
                    dead_time_ms,
                    timestamp_ms,
                })
            },
        );
    let rq = (
        any::<[u8; 16]>(),
        0..0xFFu8,
        stamp_strategy(),
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(cluster_id, sender, stamp, release, sees_peer, role_summary, timestamp_ms)| {
                Message::VoteRequest(VoteRequest {
                    cluster_id,
                    sender,
                    stamp,
                    release,
                    sees_peer,
                    role_summary,
                    timestamp_ms,
                })
            },
        );
    let rp = (
        any::<[u8; 16]>(),
        0..0xFFu8,
        1..u64::MAX,
        stamp_strategy(),
        0..3u8,
        proptest::option::of(0..0xFFu8),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(cluster_id, to, witness_boot, echo, s, holder, term, lease_ms, timestamp_ms)| {
                let (status, holder) = match s {
                    0 => (VoteStatus::Granted, Some(to)),
                    1 => (VoteStatus::Denied, holder),
                    _ => (VoteStatus::NotReady, holder),
                };
                Message::VoteReply(VoteReply {
                    cluster_id,
                    to,
                    witness_boot,
                    echo,
                    status,
                    holder,
                    term,
                    lease_ms,
                    timestamp_ms,
                })
            },
        );
    prop_oneof![hb, rq, rp]
}

proptest! {
    #[test]
    fn round_trip(m in message_strategy()) {
        let k = key();
        let bytes = m.encode(&k);
        prop_assert!(bytes.len() <= DATAGRAM_BYTES_MAX);
        prop_assert_eq!(decode(&bytes, &k), Ok(m));
    }

    /// Fuzz-style: arbitrary bytes never panic and are never accepted.
    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        prop_assert!(decode(&bytes, &key()).is_err());
    }

    /// Random bodies behind a valid header of every kind and length: refused by the MAC.
    #[test]
    fn random_bodies_behind_a_valid_header_fail_the_mac(
        kind in 1..=3u8,
        body in proptest::collection::vec(any::<u8>(), HEARTBEAT_BYTES),
    ) {
        let len = [HEARTBEAT_BYTES, VOTE_REQUEST_BYTES, VOTE_REPLY_BYTES][kind as usize - 1];
        let mut b = body[..len].to_vec();
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = kind;
        prop_assert_eq!(decode(&b, &key()), Err(WireError::BadMac));
    }

    /// Random bodies with a valid MAC (an insider or a bug): decoded or refused with a
    /// field error, never a panic.
    #[test]
    fn random_authenticated_bodies_never_panic(
        kind in 1..=3u8,
        body in proptest::collection::vec(any::<u8>(), HEARTBEAT_BYTES),
    ) {
        let len = [HEARTBEAT_BYTES, VOTE_REQUEST_BYTES, VOTE_REPLY_BYTES][kind as usize - 1];
        let mut b = body[..len].to_vec();
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = kind;
        reseal(&mut b);
        match decode(&b, &key()) {
            Ok(m) => prop_assert_eq!(m.encode(&key()), b),
            Err(e) => prop_assert!(
                matches!(e, WireError::UnknownFlags(_) | WireError::UnknownStatus(_)
                    | WireError::Invalid(_)),
                "unexpected {e:?}"
            ),
        }
    }
}
