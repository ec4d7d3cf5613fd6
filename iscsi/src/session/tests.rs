//! Session transcripts driven without sockets: PDUs in, PDUs out, a small memory engine.

use std::sync::Mutex;

use bytes::Bytes;
use twinsan_scsi::ScsiStatus;

use super::*;
use crate::pdu::{Decoder, DecoderConfig, FLAG_IMMEDIATE};

/// A memory disk that understands TEST UNIT READY, READ(10) and WRITE(10).
#[derive(Debug)]
pub(crate) struct MemEngine {
    pub data: Mutex<Vec<u8>>,
    pub tmfs: Mutex<Vec<TaskMgmt>>,
}

impl MemEngine {
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            data: Mutex::new((0..bytes).map(|i| (i / 512) as u8).collect()),
            tmfs: Mutex::new(Vec::new()),
        }
    }
}

fn check(key: u8, asc: u8) -> ScsiResponse {
    ScsiResponse {
        status: ScsiStatus::CheckCondition,
        sense: Some(fixed_sense(key, asc, 0)),
        data_in_len: 0,
        cdb_transfer_len: None,
    }
}

impl ScsiEngine for MemEngine {
    fn execute(&self, req: &ScsiRequest<'_>, data_in: &mut IoBuf) -> ScsiResponse {
        let cdb = req.cdb;
        match cdb[0] {
            0x00 => ScsiResponse {
                status: ScsiStatus::Good,
                sense: None,
                data_in_len: 0,
                cdb_transfer_len: None,
            },
            0x28 | 0x2a => {
                let lba = u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]]) as usize;
                let blocks = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
                let len = blocks * 512;
                let mut d = self.data.lock().unwrap();
                if (lba + blocks) * 512 > d.len() {
                    return check(5, 0x21);
                }
                let off = lba * 512;
                if cdb[0] == 0x28 {
                    let n = len.min(req.data_in_len_max as usize);
                    data_in.clear();
                    data_in.extend_from_slice(&d[off..off + n]);
                    ScsiResponse {
                        status: ScsiStatus::Good,
                        sense: None,
                        data_in_len: n as u32,
                        cdb_transfer_len: Some(len as u64),
                    }
                } else {
                    let n = len.min(req.data_out.len()) / 512 * 512;
                    d[off..off + n].copy_from_slice(&req.data_out[..n]);
                    ScsiResponse {
                        status: ScsiStatus::Good,
                        sense: None,
                        data_in_len: 0,
                        cdb_transfer_len: Some(len as u64),
                    }
                }
            }
            _ => check(5, 0x20),
        }
    }

    fn task_mgmt(&self, _nexus: &Nexus, lun: u64, f: TaskMgmt) -> TmfOutcome {
        self.tmfs.lock().unwrap().push(f);
        if lun >> 48 > 3 && !matches!(f, TaskMgmt::TargetWarmReset | TaskMgmt::TargetColdReset) {
            return TmfOutcome::NoSuchLun;
        }
        TmfOutcome::Complete
    }

    fn nexus_lost(&self, _nexus: &Nexus) {}
}

struct Disc;

impl DiscoveryEnv for Disc {
    fn send_targets(
        &self,
        _initiator: &str,
        query: SendTargetsQuery<'_>,
        local: Option<SocketAddr>,
    ) -> Vec<Pair> {
        let name = "iqn.2026-11.org.example:disk";
        if let SendTargetsQuery::Target(n) = query {
            if n != name {
                return vec![];
            }
        }
        let addr = local
            .map(|a| a.to_string())
            .unwrap_or_else(|| "10.0.0.1:3260".into());
        vec![
            ("TargetName".into(), name.into()),
            ("TargetAddress".into(), format!("{addr},1")),
        ]
    }
}

fn params() -> OperationalParams {
    OperationalParams {
        initiator_max_recv_data_segment_len: 65536,
        target_max_recv_data_segment_len: 65536,
        max_burst_len: 262_144,
        first_burst_len: 65_536,
        initial_r2t: false,
        immediate_data: true,
        max_outstanding_r2t: 1,
        ..OperationalParams::default()
    }
}

struct Rig {
    conn: Connection,
    engine: Arc<MemEngine>,
    now: Instant,
    cmd_sn: u32,
}

fn rig_with(p: OperationalParams, session_type: SessionType) -> Rig {
    let engine = Arc::new(MemEngine::new(4 << 20));
    let now = Instant::now();
    let info = SessionInfo {
        session_type,
        initiator_name: "iqn.1994-05.com.example:host".into(),
        target_iqn: Some("iqn.2026-11.org.example:disk".into()),
        isid: [0x80, 0, 0, 0, 0, 1],
        tsih: 1,
        cid: 0,
        nexus: Nexus {
            id: 1,
            initiator_port: "iqn.1994-05.com.example:host,i,0x800000000001".into(),
            relative_port_id: 1,
        },
    };
    let e: Arc<dyn ScsiEngine> = engine.clone();
    let conn = Connection::new(
        ConnectionConfig {
            queue_depth: 16,
            ..ConnectionConfig::default()
        },
        info,
        p,
        text::TargetOffer::default(),
        if session_type == SessionType::Normal {
            Some(e)
        } else {
            None
        },
        Arc::new(Disc),
        1000,
        500,
        now,
    );
    Rig {
        conn,
        engine,
        now,
        cmd_sn: 1000,
    }
}

fn rig() -> Rig {
    rig_with(params(), SessionType::Normal)
}

fn read10(lba: u32, blocks: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(lba: u32, blocks: u16) -> [u8; 16] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

fn cmd(itt: u32, cmd_sn: u32, flags: u8, edtl: u32, cdb: [u8; 16], imm: &[u8]) -> Pdu {
    let mut h = ScsiCommandBhs::zeroed_with(Opcode::ScsiCommand);
    h.flags = flags | 1; // SIMPLE
    h.itt.set(itt);
    h.edtl.set(edtl);
    h.cmd_sn.set(cmd_sn);
    h.cdb = cdb;
    Pdu::new(h.to_bhs(), Bytes::copy_from_slice(imm))
}

fn data_out(itt: u32, ttt: u32, data_sn: u32, offset: u32, data: &[u8], final_: bool) -> Pdu {
    let mut h = DataOutBhs::zeroed_with(Opcode::DataOut);
    h.flags = if final_ { FLAG_FINAL } else { 0 };
    h.itt.set(itt);
    h.ttt.set(ttt);
    h.data_sn.set(data_sn);
    h.buffer_offset.set(offset);
    Pdu::new(h.to_bhs(), Bytes::copy_from_slice(data))
}

impl Rig {
    fn send(&mut self, p: Pdu) {
        self.conn.on_pdu(p, self.now);
    }
    fn next_sn(&mut self) -> u32 {
        let s = self.cmd_sn;
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        s
    }
    /// Run ready commands and decode everything the connection sent.
    fn out(&mut self) -> Vec<Pdu> {
        self.conn.run_ready();
        let bytes = self.conn.take_output(Vec::new());
        let mut d = Decoder::new(DecoderConfig {
            digests: self.conn.digests(),
            max_recv_data_segment_len: 1 << 24,
        });
        d.feed(&bytes);
        let mut v = Vec::new();
        while let Some(p) = d.decode().unwrap() {
            v.push(p);
        }
        assert_eq!(d.buffered_len(), 0);
        v
    }
}

#[test]
fn one_mib_write_with_immediate_unsolicited_and_r2t_data() {
    let mut r = rig();
    let total = 1 << 20;
    let payload: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
    let sn = r.next_sn();
    // 16 KiB immediate data, F=0: unsolicited Data-Out follows up to FirstBurst (64 KiB).
    r.send(cmd(
        0x10,
        sn,
        pdu::CMD_FLAG_WRITE,
        total as u32,
        write10(0, 2048),
        &payload[..16384],
    ));
    assert!(
        r.out().is_empty(),
        "no R2T before the unsolicited burst ends"
    );
    r.send(data_out(
        0x10,
        RESERVED_TAG,
        0,
        16384,
        &payload[16384..49152],
        false,
    ));
    r.send(data_out(
        0x10,
        RESERVED_TAG,
        1,
        49152,
        &payload[49152..65536],
        true,
    ));
    let mut offset_expected = 65536u32;
    let mut r2t_sn = 0;
    let mut out = r.out();
    loop {
        assert_eq!(out.len(), 1, "one R2T at a time (MaxOutstandingR2T=1)");
        let p = out.remove(0);
        if p.opcode() == Opcode::ScsiResponse {
            let h = p.view::<ScsiResponseBhs>();
            assert_eq!(h.status, 0);
            assert_eq!(h.flags & 0x06, 0, "no residual");
            assert_eq!(h.exp_data_sn.get(), 4, "four R2Ts");
            break;
        }
        assert_eq!(p.opcode(), Opcode::R2t);
        let h = *p.view::<R2tBhs>();
        assert_eq!(h.buffer_offset.get(), offset_expected);
        assert_eq!(h.r2t_sn.get(), r2t_sn);
        let len = h.desired_len.get();
        assert_eq!(len, 262_144.min(total as u32 - offset_expected));
        // Answer in 64 KiB Data-Out PDUs (our MaxRecvDataSegmentLength).
        let mut off = offset_expected;
        let end = offset_expected + len;
        let mut dsn = 0;
        while off < end {
            let n = 65536.min(end - off);
            r.send(data_out(
                0x10,
                h.ttt.get(),
                dsn,
                off,
                &payload[off as usize..(off + n) as usize],
                off + n == end,
            ));
            off += n;
            dsn += 1;
        }
        offset_expected = end;
        r2t_sn += 1;
        out = r.out();
    }
    assert_eq!(&r.engine.data.lock().unwrap()[..total], &payload[..]);
    assert_eq!(r.conn.outstanding_tasks(), 0);
}

#[test]
fn read_is_split_by_mrdsl_and_burst_with_collapsed_status() {
    let mut p = params();
    p.max_burst_len = 131_072;
    let mut r = rig_with(p, SessionType::Normal);
    let sn = r.next_sn();
    r.send(cmd(
        0x20,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        262_144,
        read10(8, 512),
        &[],
    ));
    let out = r.out();
    assert_eq!(out.len(), 4);
    let mut all = Vec::new();
    for (i, p) in out.iter().enumerate() {
        assert_eq!(p.opcode(), Opcode::DataIn);
        let h = p.view::<DataInBhs>();
        assert_eq!(h.data_sn.get(), i as u32);
        assert_eq!(h.buffer_offset.get(), i as u32 * 65536);
        assert_eq!(p.data.len(), 65536);
        let f = h.flags & FLAG_FINAL != 0;
        assert_eq!(f, i == 1 || i == 3, "F at the end of each 128 KiB burst");
        let s = h.flags & pdu::DATA_IN_FLAG_STATUS != 0;
        assert_eq!(s, i == 3);
        if s {
            assert_eq!(h.status, 0);
            assert_eq!(h.stat_sn.get(), 500);
            assert_eq!(h.exp_cmd_sn.get(), 1001);
        }
        all.extend_from_slice(&p.data);
    }
    assert_eq!(
        &all[..],
        &r.engine.data.lock().unwrap()[8 * 512..8 * 512 + 262_144]
    );
}

#[test]
fn read_residuals_underflow_overflow_and_zero_edtl() {
    let mut r = rig();
    // EDTL 10000 for one block: underflow 9488 in the phase-collapsed Data-In.
    let sn = r.next_sn();
    r.send(cmd(
        1,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        10000,
        read10(0, 1),
        &[],
    ));
    let out = r.out();
    assert_eq!(out.len(), 1);
    let h = out[0].view::<DataInBhs>();
    assert_eq!(out[0].data.len(), 512);
    assert_eq!(h.flags & pdu::RESP_FLAG_UNDERFLOW, pdu::RESP_FLAG_UNDERFLOW);
    assert_eq!(h.residual.get(), 9488);
    // EDTL 200: overflow 312, only 200 bytes sent.
    let sn = r.next_sn();
    r.send(cmd(
        2,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        200,
        read10(0, 1),
        &[],
    ));
    let out = r.out();
    let h = out[0].view::<DataInBhs>();
    assert_eq!(out[0].data.len(), 200);
    assert_eq!(h.flags & pdu::RESP_FLAG_OVERFLOW, pdu::RESP_FLAG_OVERFLOW);
    assert_eq!(h.residual.get(), 312);
    // EDTL 0: no data, SCSI Response with overflow 512.
    let sn = r.next_sn();
    r.send(cmd(
        3,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        0,
        read10(0, 1),
        &[],
    ));
    let out = r.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].opcode(), Opcode::ScsiResponse);
    let h = out[0].view::<ScsiResponseBhs>();
    assert_eq!(h.flags & pdu::RESP_FLAG_OVERFLOW, pdu::RESP_FLAG_OVERFLOW);
    assert_eq!(h.residual.get(), 512);
}

#[test]
fn write_residuals() {
    let mut r = rig();
    // EDTL 1024 for a one-block write: underflow 512.
    let sn = r.next_sn();
    r.send(cmd(
        1,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        1024,
        write10(0, 1),
        &[0xaa; 1024],
    ));
    let out = r.out();
    let h = out[0].view::<ScsiResponseBhs>();
    assert_eq!(h.flags & pdu::RESP_FLAG_UNDERFLOW, pdu::RESP_FLAG_UNDERFLOW);
    assert_eq!(h.residual.get(), 512);
    // EDTL 512 for a two-block write: overflow 512.
    let sn = r.next_sn();
    r.send(cmd(
        2,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(0, 2),
        &[0xbb; 512],
    ));
    let out = r.out();
    let h = out[0].view::<ScsiResponseBhs>();
    assert_eq!(h.flags & pdu::RESP_FLAG_OVERFLOW, pdu::RESP_FLAG_OVERFLOW);
    assert_eq!(h.residual.get(), 512);
}

#[test]
fn check_condition_carries_sense_with_length_prefix() {
    let mut r = rig();
    let sn = r.next_sn();
    let mut c = [0u8; 16];
    c[0] = 0xee;
    r.send(cmd(5, sn, FLAG_FINAL, 0, c, &[]));
    let out = r.out();
    let h = out[0].view::<ScsiResponseBhs>();
    assert_eq!(h.status, 2);
    assert_eq!(&out[0].data[..2], &[0, 18]);
    assert_eq!(out[0].data[2 + 2], 5);
    assert_eq!(out[0].data[2 + 12], 0x20);
}

#[test]
fn cmd_sn_window() {
    let mut r = rig();
    let tur = [0u8; 16];
    // Too high: MaxCmdSN + 1 = 1000 + 16.
    r.send(cmd(1, 1016, FLAG_FINAL, 0, tur, &[]));
    assert!(r.out().is_empty());
    // Too low.
    r.send(cmd(2, 999, FLAG_FINAL, 0, tur, &[]));
    assert!(r.out().is_empty());
    // In window: answered; window slides.
    r.send(cmd(3, 1000, FLAG_FINAL, 0, tur, &[]));
    let out = r.out();
    assert_eq!(out.len(), 1);
    let h = out[0].view::<ScsiResponseBhs>();
    assert_eq!(h.exp_cmd_sn.get(), 1001);
    assert_eq!(h.max_cmd_sn.get(), 1001 + 15);
    // Out of order inside the window: 1002 waits for 1001.
    r.send(cmd(4, 1002, FLAG_FINAL, 0, tur, &[]));
    assert!(r.out().is_empty());
    r.send(cmd(5, 1001, FLAG_FINAL, 0, tur, &[]));
    let out = r.out();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].itt(), 5);
    assert_eq!(out[1].itt(), 4);
    assert_eq!(out[1].view::<ScsiResponseBhs>().exp_cmd_sn.get(), 1003);
    // Immediate commands do not advance CmdSN.
    let mut p = cmd(6, 1003, FLAG_FINAL, 0, tur, &[]);
    p.bhs[0] |= FLAG_IMMEDIATE;
    r.send(p);
    let out = r.out();
    assert_eq!(out[0].view::<ScsiResponseBhs>().exp_cmd_sn.get(), 1003);
}

#[test]
fn max_cmd_sn_tracks_outstanding_commands() {
    let mut p = params();
    p.initial_r2t = true;
    let mut r = rig_with(p, SessionType::Normal);
    // A write waiting for R2T data holds a slot: MaxCmdSN does not advance.
    let sn = r.next_sn();
    r.send(cmd(
        1,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(0, 1),
        &[],
    ));
    let out = r.out();
    let h = *out[0].view::<R2tBhs>();
    assert_eq!(h.exp_cmd_sn.get(), 1001);
    assert_eq!(h.max_cmd_sn.get(), 1015);
    r.send(data_out(1, h.ttt.get(), 0, 0, &[1; 512], true));
    let out = r.out();
    assert_eq!(out[0].view::<ScsiResponseBhs>().max_cmd_sn.get(), 1016);
}

#[test]
fn nop_out_echo_and_target_ping() {
    let mut r = rig();
    let mut h = NopOutBhs::zeroed_with(Opcode::NopOut);
    h.opcode |= FLAG_IMMEDIATE;
    h.flags = FLAG_FINAL;
    h.itt.set(0x77);
    h.ttt.set(RESERVED_TAG);
    h.cmd_sn.set(1000);
    r.send(Pdu::new(h.to_bhs(), Bytes::from_static(b"nopping\0")));
    let out = r.out();
    assert_eq!(out[0].opcode(), Opcode::NopIn);
    assert_eq!(out[0].itt(), 0x77);
    assert_eq!(&out[0].data[..], b"nopping\0");
    assert_eq!(out[0].view::<NopInBhs>().stat_sn.get(), 500);

    // Silence: ping after the interval, drop after the timeout.
    let t0 = r.now;
    r.conn.on_tick(t0 + Duration::from_millis(4000));
    assert!(r.out().is_empty());
    r.conn.on_tick(t0 + Duration::from_millis(5000));
    let out = r.out();
    assert_eq!(out.len(), 1);
    let ping = *out[0].view::<NopInBhs>();
    assert_eq!(ping.itt.get(), RESERVED_TAG);
    assert_ne!(ping.ttt.get(), RESERVED_TAG);
    assert_eq!(ping.stat_sn.get(), 501, "a ping does not consume a StatSN");
    // Answer it.
    let mut a = NopOutBhs::zeroed_with(Opcode::NopOut);
    a.opcode |= FLAG_IMMEDIATE;
    a.flags = FLAG_FINAL;
    a.itt.set(RESERVED_TAG);
    a.ttt.set(ping.ttt.get());
    r.now = t0 + Duration::from_millis(5100);
    r.send(Pdu::new(a.to_bhs(), Bytes::new()));
    assert!(r.out().is_empty());
    r.conn.on_tick(t0 + Duration::from_millis(9000));
    assert!(
        r.out().is_empty(),
        "answered; next ping only after another interval"
    );
    // Next ping goes unanswered.
    r.conn.on_tick(t0 + Duration::from_millis(10200));
    assert_eq!(r.out().len(), 1);
    r.conn.on_tick(t0 + Duration::from_millis(25000));
    assert!(r.conn.close_reason().is_none());
    r.conn.on_tick(t0 + Duration::from_millis(25300));
    assert_eq!(r.conn.close_reason(), Some(&CloseReason::PingTimeout));
}

fn tmf(itt: u32, function: u8, ref_itt: u32, ref_cmd_sn: u32, cmd_sn: u32, lun: u64) -> Pdu {
    let mut h = TmfReqBhs::zeroed_with(Opcode::TaskMgmtReq);
    h.opcode |= FLAG_IMMEDIATE;
    h.flags = FLAG_FINAL | function;
    h.itt.set(itt);
    h.lun.set(lun);
    h.ref_task_tag.set(ref_itt);
    h.ref_cmd_sn.set(ref_cmd_sn);
    h.cmd_sn.set(cmd_sn);
    Pdu::new(h.to_bhs(), Bytes::new())
}

#[test]
fn abort_task() {
    let mut p = params();
    p.initial_r2t = true;
    let mut r = rig_with(p, SessionType::Normal);
    let sn = r.next_sn();
    r.send(cmd(
        9,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        4096,
        write10(0, 8),
        &[],
    ));
    let out = r.out();
    let ttt = out[0].view::<R2tBhs>().ttt.get();
    r.send(tmf(100, 1, 9, sn, r.cmd_sn, 0));
    let out = r.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].view::<TmfRespBhs>().response, 0);
    // Late data for the aborted task is dropped silently, and no response comes.
    r.send(data_out(9, ttt, 0, 0, &[0; 4096], true));
    assert!(r.out().is_empty());
    // A completed task: "task does not exist".
    let sn = r.next_sn();
    r.send(cmd(10, sn, FLAG_FINAL, 0, [0; 16], &[]));
    assert_eq!(r.out().len(), 1);
    r.send(tmf(101, 1, 10, sn, r.cmd_sn, 0));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 1);
    // LUN reset goes to the engine; an unknown LUN gets "LUN does not exist".
    r.send(tmf(102, 5, RESERVED_TAG, 0, r.cmd_sn, 0));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 0);
    r.send(tmf(103, 5, RESERVED_TAG, 0, r.cmd_sn, 9 << 48));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 2);
    // CLEAR ACA not supported; TASK REASSIGN not supported at ERL 0.
    r.send(tmf(104, 3, RESERVED_TAG, 0, r.cmd_sn, 0));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 5);
    r.send(tmf(105, 8, 9, 0, r.cmd_sn, 0));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 4);
    // TARGET COLD RESET: respond, then close.
    r.send(tmf(106, 7, RESERVED_TAG, 0, r.cmd_sn, 0));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 0);
    assert_eq!(r.conn.close_reason(), Some(&CloseReason::ColdReset));
}

#[test]
fn snack_and_unknown_opcodes_are_rejected() {
    let mut r = rig();
    let mut h = pdu::SnackBhs::zeroed_with(Opcode::Snack);
    h.flags = FLAG_FINAL;
    h.itt.set(5);
    let bhs = h.to_bhs();
    r.send(Pdu::new(bhs, Bytes::new()));
    let out = r.out();
    assert_eq!(out[0].opcode(), Opcode::Reject);
    assert_eq!(
        out[0].view::<RejectBhs>().reason,
        RejectReason::ProtocolError as u8
    );
    assert_eq!(&out[0].data[..], &bhs[..]);
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1c;
    r.send(Pdu::new(bhs, Bytes::new()));
    let out = r.out();
    assert_eq!(
        out[0].view::<RejectBhs>().reason,
        RejectReason::CommandNotSupported as u8
    );
}

#[test]
fn malformed_data_out_is_rejected_and_never_written() {
    let mut p = params();
    p.initial_r2t = true;
    let mut r = rig_with(p, SessionType::Normal);
    let before = r.engine.data.lock().unwrap().clone();
    // Wrong DataSN.
    let sn = r.next_sn();
    r.send(cmd(
        1,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        1024,
        write10(0, 2),
        &[],
    ));
    let ttt = r.out()[0].view::<R2tBhs>().ttt.get();
    r.send(data_out(1, ttt, 0, 0, &[1; 512], false));
    r.send(data_out(1, ttt, 0, 512, &[1; 512], true));
    let out = r.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].opcode(), Opcode::Reject);
    // Data beyond the R2T / EDTL.
    let sn = r.next_sn();
    r.send(cmd(
        2,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(0, 1),
        &[],
    ));
    let ttt = r.out()[0].view::<R2tBhs>().ttt.get();
    r.send(data_out(2, ttt, 0, 0, &[2; 1024], true));
    assert_eq!(r.out()[0].opcode(), Opcode::Reject);
    // Unknown TTT on a live task.
    let sn = r.next_sn();
    r.send(cmd(
        3,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(0, 1),
        &[],
    ));
    let _ = r.out();
    r.send(data_out(3, 0xdead, 0, 0, &[3; 512], true));
    assert_eq!(r.out()[0].opcode(), Opcode::Reject);
    // Immediate data on a read.
    let sn = r.next_sn();
    r.send(cmd(
        4,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        512,
        read10(0, 1),
        &[4; 512],
    ));
    assert_eq!(r.out()[0].opcode(), Opcode::Reject);
    assert_eq!(*r.engine.data.lock().unwrap(), before);
    assert_eq!(r.conn.outstanding_tasks(), 0);
    // The window kept moving: the next command runs.
    let sn = r.next_sn();
    r.send(cmd(5, sn, FLAG_FINAL, 0, [0; 16], &[]));
    assert_eq!(r.out()[0].opcode(), Opcode::ScsiResponse);
}

#[test]
fn data_digest_error_on_data_out_terminates_the_task() {
    let mut p = params();
    p.initial_r2t = true;
    let mut r = rig_with(p, SessionType::Normal);
    let sn = r.next_sn();
    r.send(cmd(
        1,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(0, 1),
        &[],
    ));
    let ttt = r.out()[0].view::<R2tBhs>().ttt.get();
    let mut d = data_out(1, ttt, 0, 0, &[9; 512], true);
    d.data_digest_error = true;
    r.send(d);
    let out = r.out();
    assert_eq!(
        out[0].view::<RejectBhs>().reason,
        RejectReason::DataDigestError as u8
    );
    let h = out[1].view::<ScsiResponseBhs>();
    assert_eq!(h.status, 2);
    assert_eq!(out[1].data[2 + 2], 0x0b);
    assert_eq!(out[1].data[2 + 12], 0x47);
}

fn text_req(itt: u32, ttt: u32, data: &[u8]) -> Pdu {
    let mut h = TextReqBhs::zeroed_with(Opcode::TextReq);
    h.opcode |= FLAG_IMMEDIATE;
    h.flags = FLAG_FINAL;
    h.itt.set(itt);
    h.ttt.set(ttt);
    Pdu::new(h.to_bhs(), Bytes::copy_from_slice(data))
}

#[test]
fn send_targets_in_discovery_and_normal_sessions() {
    let mut r = rig_with(params(), SessionType::Discovery);
    r.send(text_req(1, RESERVED_TAG, b"SendTargets=All\0"));
    let out = r.out();
    assert_eq!(out[0].opcode(), Opcode::TextResp);
    assert_eq!(out[0].flags(), FLAG_FINAL);
    let pairs = text::parse(&out[0].data).unwrap();
    assert_eq!(
        pairs[0],
        ("TargetName".into(), "iqn.2026-11.org.example:disk".into())
    );
    assert!(pairs[1].1.ends_with(",1"));
    // Invalid requests.
    r.send(text_req(2, RESERVED_TAG, b"SendTargets=Alle\0"));
    assert_eq!(text::parse(&r.out()[0].data).unwrap()[0].1, "Reject");
    r.send(text_req(3, RESERVED_TAG, b"sENDtARGETS=aLL\0"));
    assert_eq!(text::parse(&r.out()[0].data).unwrap()[0].1, "NotUnderstood");
    // SCSI commands are not allowed in a discovery session.
    let sn = r.next_sn();
    r.send(cmd(4, sn, FLAG_FINAL, 0, [0; 16], &[]));
    assert_eq!(r.out()[0].opcode(), Opcode::Reject);

    let mut r = rig();
    r.send(text_req(1, RESERVED_TAG, b"SendTargets=All\0"));
    let pairs = text::parse(&r.out()[0].data).unwrap();
    assert_eq!(pairs.len(), 2);
}

#[test]
fn long_text_response_uses_continue_bit() {
    let mut p = params();
    p.initiator_max_recv_data_segment_len = 512;
    let mut r = rig_with(p, SessionType::Discovery);
    // Many unknown keys make a long answer.
    let mut req = Vec::new();
    for i in 0..60 {
        text::push_pair(&mut req, &format!("X-com.example.key{i}"), "v");
    }
    r.send(text_req(1, RESERVED_TAG, &req));
    let mut all = Vec::new();
    let mut out = r.out();
    loop {
        let h = *out[0].view::<TextRespBhs>();
        all.extend_from_slice(&out[0].data);
        if h.flags & FLAG_FINAL != 0 {
            assert_eq!(h.ttt.get(), RESERVED_TAG);
            break;
        }
        assert_eq!(h.flags, FLAG_CONTINUE);
        r.send(text_req(1, h.ttt.get(), &[]));
        out = r.out();
    }
    assert_eq!(text::parse(&all).unwrap().len(), 60);
}

#[test]
fn logout_closes_and_async_logout_request() {
    let mut r = rig();
    r.conn.request_logout(r.now, Duration::from_secs(3));
    let out = r.out();
    let h = out[0].view::<AsyncMsgBhs>();
    assert_eq!(h.async_event, 1);
    assert_eq!(h.parameter3.get(), 3);
    // New commands are refused while waiting for logout.
    let sn = r.next_sn();
    r.send(cmd(4, sn, FLAG_FINAL, 0, [0; 16], &[]));
    assert_eq!(
        r.out()[0].view::<RejectBhs>().reason,
        RejectReason::WaitingForLogout as u8
    );
    let mut l = LogoutReqBhs::zeroed_with(Opcode::LogoutReq);
    l.opcode |= FLAG_IMMEDIATE;
    l.flags = FLAG_FINAL;
    l.itt.set(55);
    r.send(Pdu::new(l.to_bhs(), Bytes::new()));
    let out = r.out();
    assert_eq!(out[0].opcode(), Opcode::LogoutResp);
    assert_eq!(out[0].view::<LogoutRespBhs>().response, 0);
    assert_eq!(r.conn.close_reason(), Some(&CloseReason::Logout));
    // Remove-for-recovery is not supported at ERL 0.
    let mut r = rig();
    l.flags = FLAG_FINAL | 2;
    r.send(Pdu::new(l.to_bhs(), Bytes::new()));
    assert_eq!(r.out()[0].view::<LogoutRespBhs>().response, 2);
}

#[test]
fn stat_sn_increments_per_response() {
    let mut r = rig();
    for i in 0..3u32 {
        let sn = r.next_sn();
        r.send(cmd(i, sn, FLAG_FINAL, 0, [0; 16], &[]));
    }
    let out = r.out();
    let sns: Vec<u32> = out
        .iter()
        .map(|p| p.view::<ScsiResponseBhs>().stat_sn.get())
        .collect();
    assert_eq!(sns, vec![500, 501, 502]);
}

#[test]
fn large_read_by_reference_with_digests_and_vectored_slices() {
    let mut p = params();
    p.header_digest = true;
    p.data_digest = true;
    p.initiator_max_recv_data_segment_len = 8192 + 4; // odd-sized segments need padding
    let mut r = rig_with(p, SessionType::Normal);
    let sn = r.next_sn();
    r.send(cmd(
        0x30,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        65536,
        read10(0, 128),
        &[],
    ));
    r.conn.run_ready();
    let o = r.conn.take_output_vectored(Vec::new());
    assert!(!o.is_contiguous());
    // Slices from any starting point cover exactly the rest of the output.
    let flat = o.to_vec();
    assert_eq!(flat.len(), o.len());
    for skip in [0, 1, 47, 48, 100, flat.len() - 1] {
        let mut v = Vec::new();
        o.io_slices(skip, usize::MAX, &mut v);
        let joined: Vec<u8> = v.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, &flat[skip..]);
    }
    let _ = r.conn.recycle_output(o);
    let mut d = Decoder::new(DecoderConfig {
        digests: Digests {
            header: true,
            data: true,
        },
        max_recv_data_segment_len: 1 << 24,
    });
    d.feed(&flat);
    let mut data = Vec::new();
    while let Some(p) = d.decode().unwrap() {
        assert!(!p.data_digest_error);
        data.extend_from_slice(&p.data);
    }
    assert_eq!(&data[..], &r.engine.data.lock().unwrap()[..65536]);
}

#[test]
fn tmf_response_waits_for_aborted_tasks_on_the_engine() {
    let mut r = rig();
    let sn = r.next_sn();
    r.send(cmd(
        1,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        512,
        read10(0, 1),
        &[],
    ));
    let sn = r.next_sn();
    r.send(cmd(
        2,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        512,
        read10(1, 1),
        &[],
    ));
    let jobs = r.conn.take_runnable();
    assert_eq!(jobs.len(), 2);
    assert_eq!(r.conn.executing(), 2);
    // ABORT TASK for ITT 1 while it is on the engine: no answer yet.
    r.send(tmf(100, 1, 1, 1000, r.cmd_sn, 0));
    assert!(r.out().is_empty());
    // LUN RESET while ITT 2 is on the engine: no answer yet either.
    r.send(tmf(101, 5, RESERVED_TAG, 0, r.cmd_sn, 0));
    assert!(r.out().is_empty());
    assert!(
        r.engine.tmfs.lock().unwrap().is_empty(),
        "reset waits for running tasks"
    );
    let mut jobs = jobs.into_iter();
    let d = jobs.next().unwrap().run();
    r.conn.on_exec_done(d);
    let out = r.out();
    assert_eq!(
        out.len(),
        1,
        "ABORT TASK answered, no data for the aborted read"
    );
    assert_eq!(out[0].itt(), 100);
    assert_eq!(out[0].view::<TmfRespBhs>().response, 0);
    let d = jobs.next().unwrap().run();
    r.conn.on_exec_done(d);
    let out = r.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].itt(), 101);
    assert_eq!(*r.engine.tmfs.lock().unwrap(), vec![TaskMgmt::LunReset]);
    assert_eq!(r.conn.outstanding_tasks(), 0);
    assert_eq!(r.conn.executing(), 0);
}

#[test]
fn ordered_task_waits_for_earlier_tasks() {
    let mut p = params();
    p.initial_r2t = true;
    let mut r = rig_with(p, SessionType::Normal);
    // A SIMPLE write waiting for data, then an ORDERED read, then a SIMPLE read.
    let sn = r.next_sn();
    r.send(cmd(
        1,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(5, 1),
        &[],
    ));
    let ttt = r.out()[0].view::<R2tBhs>().ttt.get();
    let sn = r.next_sn();
    let mut c = cmd(
        2,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        512,
        read10(5, 1),
        &[],
    );
    c.bhs[1] = (c.bhs[1] & !7) | 2; // ORDERED
    r.send(c);
    let sn = r.next_sn();
    r.send(cmd(
        3,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        512,
        read10(6, 1),
        &[],
    ));
    assert!(
        r.out().is_empty(),
        "ORDERED waits for the write; the later SIMPLE waits for ORDERED"
    );
    r.send(data_out(1, ttt, 0, 0, &[0xcd; 512], true));
    let out = r.out();
    let itts: Vec<u32> = out.iter().map(|p| p.itt()).collect();
    assert_eq!(itts, vec![1, 2, 3]);
    assert_eq!(
        &out[1].data[..],
        &[0xcd; 512][..],
        "ORDERED read sees the earlier write"
    );
}

#[test]
fn too_many_immediate_commands_are_rejected() {
    let mut p = params();
    p.initial_r2t = true;
    let mut r = rig_with(p, SessionType::Normal);
    for i in 0..17u32 {
        let mut c = cmd(
            i + 1,
            r.cmd_sn,
            pdu::CMD_FLAG_WRITE | FLAG_FINAL,
            512,
            write10(i, 1),
            &[],
        );
        c.bhs[0] |= FLAG_IMMEDIATE;
        r.send(c);
    }
    let out = r.out();
    assert_eq!(out.iter().filter(|p| p.opcode() == Opcode::R2t).count(), 16);
    let rej: Vec<&Pdu> = out
        .iter()
        .filter(|p| p.opcode() == Opcode::Reject)
        .collect();
    assert_eq!(rej.len(), 1);
    assert_eq!(
        rej[0].view::<RejectBhs>().reason,
        RejectReason::ImmediateCommandReject as u8
    );
}

#[test]
fn tasks_aborted_for_another_nexus_end_with_task_aborted() {
    let mut p = params();
    p.initial_r2t = true;
    let mut r = rig_with(p, SessionType::Normal);
    // A write on LUN 0 waiting for its data (R2T sent), a write on LUN 1 likewise.
    let sn = r.next_sn();
    r.send(cmd(
        9,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(0, 1),
        &[],
    ));
    let ttt = r.out()[0].view::<R2tBhs>().ttt.get();
    let sn = r.next_sn();
    let mut c = cmd(
        10,
        sn,
        pdu::CMD_FLAG_WRITE | FLAG_FINAL,
        512,
        write10(1, 1),
        &[],
    );
    c.bhs[8..16].copy_from_slice(&(1u64 << 48).to_be_bytes());
    r.send(c);
    assert_eq!(r.out().len(), 1, "R2T for the LUN 1 write");
    // A read on LUN 0 already on the engine.
    let sn = r.next_sn();
    r.send(cmd(
        11,
        sn,
        pdu::CMD_FLAG_READ | FLAG_FINAL,
        512,
        read10(3, 1),
        &[],
    ));
    let jobs = r.conn.take_runnable();
    assert_eq!(jobs.len(), 1);
    let before = r.conn.outstanding_tasks();
    // Another nexus preempted-and-aborted (or reset) LUN 0.
    assert_eq!(r.conn.abort_for_other_nexus(Some(0)), 1);
    let out = r.out();
    assert_eq!(out.len(), 1);
    let h = out[0].view::<ScsiResponseBhs>();
    assert_eq!(out[0].opcode(), Opcode::ScsiResponse);
    assert_eq!(h.itt.get(), 9);
    assert_eq!(h.status, ScsiStatus::TaskAborted as u8);
    assert_eq!(r.conn.outstanding_tasks(), before - 1);
    // Its late data is dropped without a reject; nothing was written.
    r.send(data_out(9, ttt, 0, 0, &[0xEE; 512], true));
    assert!(r.out().is_empty());
    assert_ne!(r.engine.data.lock().unwrap()[0], 0xEE);
    // The command on the engine completes with its own status and data.
    for j in jobs {
        let d = j.run();
        r.conn.on_exec_done(d);
    }
    let out = r.out();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].itt(), 11);
    assert_eq!(out[0].bhs[3], 0, "GOOD");
    // Every LUN (target reset from another session): the LUN 1 write goes too.
    assert_eq!(r.conn.abort_for_other_nexus(None), 1);
    let out = r.out();
    assert_eq!(out[0].itt(), 10);
    assert_eq!(out[0].view::<ScsiResponseBhs>().status, 0x40);
    assert_eq!(r.conn.outstanding_tasks(), 0);
    assert_eq!(r.conn.abort_for_other_nexus(None), 0);
}

#[test]
fn task_management_reports_aborts_for_other_sessions() {
    let mut r = rig();
    // ABORT TASK SET only concerns this nexus.
    r.send(tmf(100, 2, RESERVED_TAG, 0, r.cmd_sn, 0));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 0);
    assert!(r.conn.take_third_party_aborts().is_empty());
    // CLEAR TASK SET and LUN RESET: every nexus's tasks on that LUN.
    r.send(tmf(101, 4, RESERVED_TAG, 0, r.cmd_sn, 2 << 48));
    r.send(tmf(102, 5, RESERVED_TAG, 0, r.cmd_sn, 2 << 48));
    assert_eq!(r.out().len(), 2);
    assert_eq!(r.conn.take_third_party_aborts(), vec![Some(2)]);
    // A LUN that does not exist: nothing to abort anywhere.
    r.send(tmf(103, 5, RESERVED_TAG, 0, r.cmd_sn, 9 << 48));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 2);
    assert!(r.conn.take_third_party_aborts().is_empty());
    // Target resets: every LUN.
    r.send(tmf(104, 6, RESERVED_TAG, 0, r.cmd_sn, 0));
    assert_eq!(r.out()[0].view::<TmfRespBhs>().response, 0);
    assert_eq!(r.conn.take_third_party_aborts(), vec![None]);
    assert!(r.conn.take_third_party_aborts().is_empty());
}
