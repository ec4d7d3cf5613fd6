//! Focused tests of the replica state machine with two replicas wired back to back
//! (in-memory disks, a FIFO network, actions executed in order). The randomized
//! coverage lives in `crates/sim`; these pin down specific behaviours.

use std::collections::{HashMap, VecDeque};

use super::*;
use crate::types::UUID_JUST_CREATED;

const SIZE: u64 = 8 << 20;

struct Pair {
    r: [Replica; 2],
    disk: [Vec<u8>; 2],
    net: VecDeque<(usize, Message)>,
    done: HashMap<u64, Result<(), AppError>>,
    sent_payload_bytes: [u64; 2],
    hold_net: bool,
    now: u64,
}

fn persisted_clean() -> Persisted {
    Persisted {
        gens: Generations {
            current: 0x5000_0000_0000_0100,
            bitmap: 0,
            history: [0; HISTORY_LEN],
        },
        disk: DiskState::UpToDate,
        was_primary: false,
        clean: true,
        crashed_primary: false,
        primary_since_ms: 0,
    }
}

impl Pair {
    fn new(protocol: Protocol, two_primaries: bool) -> Self {
        Self::with(protocol, two_primaries, |_| {})
    }

    fn with(protocol: Protocol, two_primaries: bool, tune: impl Fn(&mut ReplicaConfig)) -> Self {
        let mk = |id: u8| {
            let mut c = ReplicaConfig::new(id, &format!("n{id}"), 1 - id, [9; 16]);
            c.protocol = protocol;
            c.policies.allow_two_primaries = two_primaries;
            tune(&mut c);
            Replica::new(
                c,
                SIZE,
                persisted_clean(),
                Bitmap::for_size_bytes(SIZE),
                &[],
                u64::from(id) + 1,
                0,
            )
        };
        let mut p = Pair {
            r: [mk(0), mk(1)],
            disk: [vec![0; SIZE as usize], vec![0; SIZE as usize]],
            net: VecDeque::new(),
            done: HashMap::new(),
            sent_payload_bytes: [0; 2],
            hold_net: false,
            now: 1,
        };
        for n in 0..2 {
            p.input(
                n,
                Input::Admin {
                    id: 0,
                    cmd: AdminCmd::Connect {
                        discard_my_data: false,
                    },
                },
            );
        }
        p.input(0, Input::LinkUp { conn: 1 });
        p.input(1, Input::LinkUp { conn: 1 });
        p.run();
        p
    }

    fn input(&mut self, n: usize, i: Input) {
        self.r[n].handle(self.now, i);
        self.drain(n);
    }

    fn drain(&mut self, n: usize) {
        while let Some(a) = self.r[n].poll_action() {
            match a {
                Action::DiskWrite {
                    token,
                    offset_bytes,
                    data,
                    ..
                } => {
                    let o = offset_bytes as usize;
                    self.disk[n][o..o + data.len()].copy_from_slice(&data);
                    self.input(
                        n,
                        Input::DiskDone {
                            token,
                            result: Ok(None),
                        },
                    );
                }
                Action::DiskRead {
                    token,
                    offset_bytes,
                    len_bytes,
                } => {
                    let o = offset_bytes as usize;
                    let d = Bytes::copy_from_slice(&self.disk[n][o..o + len_bytes as usize]);
                    self.input(
                        n,
                        Input::DiskDone {
                            token,
                            result: Ok(Some(d)),
                        },
                    );
                }
                Action::DiskFlush { token } => self.input(
                    n,
                    Input::DiskDone {
                        token,
                        result: Ok(None),
                    },
                ),
                Action::Send { msg, .. } => {
                    self.sent_payload_bytes[n] += msg.payload_bytes();
                    self.net.push_back((1 - n, msg));
                }
                Action::Complete { id, result } => {
                    self.done.insert(id, result);
                }
                Action::RunHandler(h) => self.input(
                    n,
                    Input::HandlerDone {
                        handler: h,
                        exit_code: 0,
                    },
                ),
                _ => {}
            }
        }
    }

    fn run(&mut self) {
        let mut guard = 0;
        while !self.hold_net {
            let Some((to, msg)) = self.net.pop_front() else {
                break;
            };
            self.input(to, Input::Message { conn: 1, msg });
            guard += 1;
            assert!(guard < 1_000_000, "no quiescence");
        }
    }

    fn write(&mut self, n: usize, id: u64, offset: u64, byte: u8, len: usize) {
        self.input(
            n,
            Input::Write {
                id,
                offset_bytes: offset,
                data: Bytes::from(vec![byte; len]),
                fua: false,
            },
        );
    }
}

#[test]
fn protocol_c_completes_only_after_the_peer_has_the_write() {
    let mut p = Pair::new(Protocol::C, false);
    assert_eq!(p.r[0].conn(), ConnState::Connected);
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    p.run();
    p.hold_net = true;
    p.write(0, 7, 4096, 0xAB, 4096);
    assert!(
        !p.done.contains_key(&7),
        "completed before the peer acknowledged"
    );
    p.hold_net = false;
    p.run();
    assert_eq!(p.done.get(&7), Some(&Ok(())));
    assert_eq!(p.disk[1][4096..8192], [0xAB; 4096][..]);
}

#[test]
fn protocol_a_completes_on_send() {
    let mut p = Pair::new(Protocol::A, false);
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    p.run();
    p.hold_net = true;
    p.write(0, 7, 0, 1, 512);
    assert_eq!(p.done.get(&7), Some(&Ok(())));
}

#[test]
fn secondary_refuses_writes_and_promotion_needs_a_secondary_peer() {
    let mut p = Pair::new(Protocol::C, false);
    p.write(1, 1, 0, 1, 512);
    assert_eq!(p.done.get(&1), Some(&Err(AppError::NotPrimary)));
    p.input(
        0,
        Input::Admin {
            id: 5,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    p.run();
    p.r[1].handle(
        p.now,
        Input::Admin {
            id: 6,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    let refused = std::iter::from_fn(|| p.r[1].poll_action()).any(|a| {
        matches!(a, Action::AdminDone { id: 6, result: Err(ref e) } if e.0.contains("allow-two-primaries"))
    });
    assert!(refused);
}

#[test]
fn a_stale_generation_write_is_refused() {
    let mut p = Pair::new(Protocol::C, false);
    p.input(
        1,
        Input::Message {
            conn: 1,
            msg: Message::Data {
                seq: 1,
                peer_seq_seen: 0,
                generation: 0x1234_5678_9ABC_DE00,
                offset_bytes: 0,
                fua: false,
                data: Bytes::from(vec![9u8; 512]),
            },
        },
    );
    assert_eq!(p.r[1].conn(), ConnState::Connecting);
    assert!(p.r[1]
        .status()
        .last_disconnect
        .is_some_and(|r| r.contains("stale generation")));
    assert_eq!(p.disk[1][0], 0, "the stale write reached the disk");
}

#[test]
fn dual_primary_concurrent_overlapping_writes_end_identical() {
    let mut p = Pair::new(Protocol::C, true);
    for n in 0..2 {
        p.input(
            n,
            Input::Admin {
                id: 0,
                cmd: AdminCmd::Primary { force: false },
            },
        );
    }
    p.run();
    assert_eq!(p.r[0].role(), Role::Primary);
    assert_eq!(p.r[1].role(), Role::Primary);
    // Both write overlapping ranges before either sees the other's write.
    p.hold_net = true;
    p.write(0, 1, 0, 0xA0, 8192);
    p.write(1, 2, 4096, 0xB1, 8192);
    p.hold_net = false;
    p.run();
    assert_eq!(p.done.get(&1), Some(&Ok(())));
    assert_eq!(p.done.get(&2), Some(&Ok(())));
    assert_eq!(p.disk[0][..16384], p.disk[1][..16384], "replicas diverged");
    // The documented resolution: on the overlap, the lower node id's write wins.
    assert_eq!(p.disk[0][4096..8192], [0xA0; 4096][..]);
    assert_eq!(p.disk[0][8192..12288], [0xB1; 4096][..]);
    assert!(p.r[0].status().counters.write_conflicts > 0);
    // A write issued after seeing the other's is not a conflict: it simply wins.
    p.write(1, 3, 0, 0xC2, 4096);
    p.run();
    assert_eq!(p.disk[0][..4096], [0xC2; 4096][..]);
    assert_eq!(p.disk[0][..16384], p.disk[1][..16384]);
}

#[test]
fn resync_after_a_disconnect_sends_only_the_dirty_blocks() {
    let mut p = Pair::new(Protocol::C, false);
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    p.run();
    p.input(0, Input::LinkDown { conn: 1 });
    p.input(1, Input::LinkDown { conn: 1 });
    p.net.clear();
    // 20 scattered 4 KiB writes while disconnected.
    for i in 0..20u64 {
        p.write(0, 100 + i, i * 97 * 4096 % (SIZE - 4096), 0x5A, 4096);
    }
    let dirty = p.r[0].status().out_of_sync_bytes;
    assert_eq!(dirty, 20 * 4096);
    let before = p.sent_payload_bytes[0];
    p.input(0, Input::LinkUp { conn: 1 });
    p.input(1, Input::LinkUp { conn: 1 });
    p.run();
    assert_eq!(p.r[1].conn(), ConnState::Connected);
    assert_eq!(p.r[1].disk(), DiskState::UpToDate);
    assert_eq!(p.disk[0], p.disk[1]);
    let bitmap_bytes = (SIZE / BYTES_PER_BIT).div_ceil(64) * 8;
    let data_sent = p.sent_payload_bytes[0] - before - bitmap_bytes;
    assert_eq!(data_sent, dirty, "resync sent more than the dirty blocks");
}

#[test]
fn both_just_created_need_an_explicit_source() {
    let mk = |id: u8| {
        let c = ReplicaConfig::new(id, "x", 1 - id, [1; 16]);
        Replica::new(
            c,
            SIZE,
            Persisted::just_created(),
            Bitmap::for_size_bytes(SIZE),
            &[],
            3,
            0,
        )
    };
    let r = mk(0);
    assert_eq!(r.gens().current, UUID_JUST_CREATED);
    assert_eq!(r.disk(), DiskState::Inconsistent);
    let mut r = r;
    r.handle(
        0,
        Input::Admin {
            id: 1,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    let refused = std::iter::from_fn(|| r.poll_action()).any(|a| {
        matches!(
            a,
            Action::AdminDone {
                id: 1,
                result: Err(_)
            }
        )
    });
    assert!(refused, "promoted an Inconsistent disk without --force");
    let _ = mk(1);
}

#[test]
fn resync_rate_cap_holds_in_virtual_time() {
    const RATE: u64 = 1 << 20;
    let mut p = Pair::with(Protocol::C, false, |c| c.resync_rate_max_bytes_per_s = RATE);
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    p.run();
    p.input(0, Input::LinkDown { conn: 1 });
    p.input(1, Input::LinkDown { conn: 1 });
    p.net.clear();
    let dirty: u64 = 4 << 20;
    for i in 0..dirty / 65536 {
        p.write(0, 1000 + i, i * 65536, 0x11, 65536);
    }
    assert_eq!(p.r[0].status().out_of_sync_bytes, dirty);
    let start = p.now;
    p.input(0, Input::LinkUp { conn: 1 });
    p.input(1, Input::LinkUp { conn: 1 });
    p.run();
    let mut guard = 0;
    while p.r[1].conn() != ConnState::Connected {
        p.now += 10;
        for n in 0..2 {
            p.input(n, Input::Tick);
        }
        p.run();
        guard += 1;
        assert!(guard < 10_000, "resync did not finish");
    }
    let elapsed_ms = p.now - start;
    // At most one second of burst above the cap.
    let min_ms = (dirty - RATE) * 1000 / RATE;
    assert!(
        elapsed_ms >= min_ms,
        "{dirty} bytes resynced in {elapsed_ms} ms of virtual time at a {RATE} B/s cap"
    );
    assert!(
        elapsed_ms <= 2 * dirty * 1000 / RATE,
        "far slower than the cap: {elapsed_ms} ms"
    );
    assert_eq!(p.disk[0], p.disk[1]);
}

fn frozen_pair() -> Pair {
    let mut p = Pair::with(Protocol::C, false, |c| {
        c.fencing = Fencing::ResourceAndStonith;
    });
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    p.run();
    // A write in flight (sent, not acknowledged) when the link is lost, then one
    // more while frozen.
    p.hold_net = true;
    p.write(0, 7, 4096, 0xAB, 4096);
    p.input(0, Input::LinkDown { conn: 1 });
    p.net.clear();
    p.write(0, 8, 8192, 0xCD, 4096);
    p
}

#[test]
fn resource_and_stonith_acknowledges_nothing_unconfirmed_until_the_peer_is_fenced() {
    let mut p = frozen_pair();
    assert!(p.r[0].status().io_frozen);
    assert!(!p.done.contains_key(&7), "acknowledged before the fence");
    assert!(!p.done.contains_key(&8));
    // fence-peer says the peer was STONITHed (exit 7): both complete.
    p.input(
        0,
        Input::HandlerDone {
            handler: Handler::FencePeer,
            exit_code: 7,
        },
    );
    assert_eq!(p.done.get(&7), Some(&Ok(())));
    assert_eq!(p.done.get(&8), Some(&Ok(())));
    assert!(!p.r[0].status().io_frozen);
}

#[test]
fn dropping_frozen_io_fails_every_unconfirmed_write_and_allows_demotion() {
    let mut p = frozen_pair();
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::DropFrozenIo,
        },
    );
    assert_eq!(p.done.get(&7), Some(&Err(AppError::Io)));
    assert_eq!(p.done.get(&8), Some(&Err(AppError::Io)));
    assert!(!p.r[0].status().io_frozen);
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::Secondary,
        },
    );
    assert_eq!(p.r[0].status().role, Role::Secondary);
}

#[test]
fn after_a_resync_the_former_target_can_be_promoted_and_replicate_back() {
    let mut p = Pair::new(Protocol::C, false);
    p.input(
        0,
        Input::Admin {
            id: 0,
            cmd: AdminCmd::Primary { force: false },
        },
    );
    p.run();
    // Disconnected, node 0 writes alone (a new generation), then they reconnect and
    // node 0 resyncs node 1.
    p.input(0, Input::LinkDown { conn: 1 });
    p.input(1, Input::LinkDown { conn: 1 });
    p.net.clear();
    p.write(0, 1, 0, 0x11, 4096);
    assert_eq!(p.done.get(&1), Some(&Ok(())));
    p.input(0, Input::LinkUp { conn: 1 });
    p.input(1, Input::LinkUp { conn: 1 });
    p.run();
    assert_eq!(p.r[1].status().disk, DiskState::UpToDate);
    assert_eq!(p.r[1].conn(), ConnState::Connected);
    // Planned switchover: 0 demotes, 1 promotes and writes; 0 must accept it.
    for (n, cmd) in [
        (0, AdminCmd::Secondary),
        (1, AdminCmd::Primary { force: false }),
    ] {
        p.input(n, Input::Admin { id: 0, cmd });
        p.run();
    }
    assert_eq!(p.r[1].status().role, Role::Primary);
    p.write(1, 2, 8192, 0x22, 4096);
    p.run();
    assert_eq!(p.done.get(&2), Some(&Ok(())));
    assert_eq!(
        p.r[0].conn(),
        ConnState::Connected,
        "the former source refused the write"
    );
    assert_eq!(p.disk[0][8192..12288], [0x22; 4096][..]);
}
