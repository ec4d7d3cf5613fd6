//! A deliberately small, independent iSCSI initiator for tests that must send what real
//! initiators never send (truncated headers, unknown opcodes, oversized segments,
//! out-of-window CmdSNs, data beyond the transfer length). It is written from RFC 7143
//! directly and shares no code with the target, so it is an independent oracle.
//!
//! Owns: nothing but its own socket. Every read has a timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One received PDU: the 48-byte header and the data segment (padding removed).
#[derive(Debug, Clone)]
pub struct Pdu {
    /// Basic header segment.
    pub bhs: [u8; 48],
    /// Data segment.
    pub data: Vec<u8>,
}

impl Pdu {
    /// Opcode (low 6 bits of byte 0).
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }
    /// Initiator task tag.
    pub fn itt(&self) -> u32 {
        be32(&self.bhs[16..20])
    }
    /// A big-endian u32 at `off`.
    pub fn u32_at(&self, off: usize) -> u32 {
        be32(&self.bhs[off..off + 4])
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Opcodes the tests look for.
pub mod op {
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESP: u8 = 0x21;
    /// Login Response.
    pub const LOGIN_RESP: u8 = 0x23;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// A logged-in session over one connection.
pub struct RawSession {
    sock: TcpStream,
    /// Next CmdSN to use.
    pub cmd_sn: u32,
    /// ExpStatSN to send.
    pub exp_stat_sn: u32,
    /// The target's declared MaxRecvDataSegmentLength.
    pub target_mrdsl: u32,
    /// The window end the target last announced.
    pub max_cmd_sn: u32,
    next_itt: u32,
}

/// Build a 48-byte header.
pub fn bhs(opcode: u8, flags: u8, data_len: usize) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[0] = opcode;
    b[1] = flags;
    let dl = u32::try_from(data_len).expect("data length");
    b[5..8].copy_from_slice(&dl.to_be_bytes()[1..]);
    b
}

fn put32(b: &mut [u8; 48], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

impl RawSession {
    /// Connect and log in straight to full feature phase (operational stage only, no
    /// authentication). Panics on any failure: tests call this against a target that
    /// must accept it.
    pub fn login(addr: SocketAddr, initiator: &str, target: &str) -> Self {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        sock.set_nodelay(true).expect("nodelay");
        let mut s = Self {
            sock,
            cmd_sn: 1,
            exp_stat_sn: 0,
            target_mrdsl: 8192,
            max_cmd_sn: 1,
            next_itt: 1,
        };
        let keys = format!(
            "InitiatorName={initiator}\0SessionType=Normal\0TargetName={target}\0HeaderDigest=None\0DataDigest=None\0\
             MaxRecvDataSegmentLength=262144\0ImmediateData=Yes\0InitialR2T=No\0FirstBurstLength=65536\0\
             MaxBurstLength=262144\0ErrorRecoveryLevel=0\0"
        );
        let mut h = bhs(0x43, 0x87, keys.len()); // I, login; T=1 CSG=1 NSG=3
        h[8..14].copy_from_slice(&[0x80, 0x00, 0x12, 0x34, 0x00, 0x01]); // ISID (random format)
        put32(&mut h, 16, 0); // ITT
        put32(&mut h, 24, s.cmd_sn);
        put32(&mut h, 28, 0);
        s.send(&h, keys.as_bytes());
        let r = s.recv().expect("login response");
        assert_eq!(
            r.opcode(),
            op::LOGIN_RESP,
            "expected a login response, got {r:?}"
        );
        assert_eq!(
            (r.bhs[36], r.bhs[37]),
            (0, 0),
            "login refused: status {:02x}{:02x}",
            r.bhs[36],
            r.bhs[37]
        );
        assert_eq!(
            r.bhs[1] & 0x83,
            0x83,
            "target did not move to full feature phase"
        );
        s.exp_stat_sn = r.u32_at(24).wrapping_add(1);
        s.max_cmd_sn = r.u32_at(32);
        for kv in r.data.split(|&b| b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some(v) = kv.strip_prefix("MaxRecvDataSegmentLength=") {
                s.target_mrdsl = v.parse().unwrap_or(8192);
            }
        }
        // A new I_T nexus starts with a POWER ON/RESET unit attention: clear it the way
        // initiators do, with TEST UNIT READY until GOOD (bounded).
        for _ in 0..4 {
            if let Ok((0, ..)) = s.command(&[0u8; 6], 0, false, &[]) {
                return s;
            }
        }
        panic!("TEST UNIT READY never returned GOOD after login");
    }

    /// Send a header and a data segment (padded to 4 bytes).
    pub fn send(&mut self, bhs: &[u8; 48], data: &[u8]) {
        let mut buf = Vec::with_capacity(48 + data.len() + 3);
        buf.extend_from_slice(bhs);
        buf.extend_from_slice(data);
        buf.resize(buf.len().next_multiple_of(4), 0);
        self.sock.write_all(&buf).expect("send");
    }

    /// Set the read timeout of the connection: every later `recv` (and so `command`)
    /// waits at most `t` for the target.
    pub fn set_timeout(&self, t: Duration) {
        self.sock.set_read_timeout(Some(t)).expect("timeout");
    }

    /// Send raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sock.write_all(bytes)
    }

    /// Close our sending side.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    /// Receive one PDU; `None` on EOF, reset or timeout.
    pub fn recv(&mut self) -> Option<Pdu> {
        let mut h = [0u8; 48];
        self.sock.read_exact(&mut h).ok()?;
        let ahs = usize::from(h[4]) * 4;
        let dl = usize::try_from(u32::from_be_bytes([0, h[5], h[6], h[7]])).ok()?;
        let mut rest = vec![0u8; ahs + dl.next_multiple_of(4)];
        self.sock.read_exact(&mut rest).ok()?;
        let data = rest[ahs..ahs + dl].to_vec();
        let p = Pdu { bhs: h, data };
        if matches!(
            p.opcode(),
            op::SCSI_RESP | op::NOP_IN | op::LOGOUT_RESP | op::REJECT | op::ASYNC
        ) || (p.opcode() == op::DATA_IN && p.bhs[1] & 0x01 != 0)
        {
            self.exp_stat_sn = p.u32_at(24).wrapping_add(1);
            self.max_cmd_sn = p.u32_at(32);
        }
        Some(p)
    }

    /// Whether the connection is closed by the target within `wait` (EOF or reset).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.sock.set_read_timeout(Some(wait)).expect("timeout");
        let mut b = [0u8; 4096];
        loop {
            match self.sock.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// A SCSI Command PDU header for `cdb` on LUN 0 (flat addressing), with EDTL and
    /// flags (0x80 F, 0x40 R, 0x20 W; attribute simple). Advances CmdSN.
    pub fn command_bhs(
        &mut self,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        write: bool,
        data_len: usize,
    ) -> ([u8; 48], u32) {
        let itt = self.next_itt;
        self.next_itt += 1;
        let mut flags = 0x80 | 0x01;
        if read {
            flags |= 0x40;
        }
        if write {
            flags |= 0x20;
        }
        let mut h = bhs(0x01, flags, data_len);
        put32(&mut h, 16, itt);
        put32(&mut h, 20, edtl);
        put32(&mut h, 24, self.cmd_sn);
        put32(&mut h, 28, self.exp_stat_sn);
        h[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        (h, itt)
    }

    /// Run a command with optional immediate data; collect Data-In and the final status.
    /// Answers R2Ts from `data` (only for data the target asks for). Returns
    /// (status, sense, data-in, the last PDU).
    pub fn command(
        &mut self,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        data: &[u8],
    ) -> Result<(u8, Vec<u8>, Vec<u8>, Pdu), Pdu> {
        let write = !data.is_empty();
        let imm = data.len().min(self.target_mrdsl as usize).min(65536);
        let (h, itt) = self.command_bhs(cdb, edtl, read, write, imm);
        self.send(&h, &data[..imm]);
        let mut data_in = Vec::new();
        loop {
            let p = self.recv().ok_or_else(|| Pdu {
                bhs: [0; 48],
                data: vec![],
            })?;
            match p.opcode() {
                op::DATA_IN if p.itt() == itt => {
                    data_in.extend_from_slice(&p.data);
                    if p.bhs[1] & 0x01 != 0 {
                        let st = p.bhs[3];
                        return Ok((st, Vec::new(), data_in, p));
                    }
                }
                op::SCSI_RESP if p.itt() == itt => {
                    let sense = if p.data.len() >= 2 {
                        let n = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
                        p.data[2..(2 + n).min(p.data.len())].to_vec()
                    } else {
                        Vec::new()
                    };
                    return Ok((p.bhs[3], sense, data_in, p));
                }
                op::R2T if p.itt() == itt => {
                    let ttt = p.u32_at(20);
                    let off = p.u32_at(40) as usize;
                    let len = p.u32_at(44) as usize;
                    let chunk = &data[off.min(data.len())..(off + len).min(data.len())];
                    for (i, piece) in chunk.chunks(self.target_mrdsl as usize).enumerate() {
                        let last = (i + 1) * self.target_mrdsl as usize >= chunk.len();
                        let mut d = bhs(0x05, if last { 0x80 } else { 0 }, piece.len());
                        put32(&mut d, 16, itt);
                        put32(&mut d, 20, ttt);
                        put32(&mut d, 28, self.exp_stat_sn);
                        put32(&mut d, 36, u32::try_from(i).expect("DataSN"));
                        put32(
                            &mut d,
                            40,
                            u32::try_from(off + i * self.target_mrdsl as usize).expect("offset"),
                        );
                        self.send(&d, piece);
                    }
                }
                op::NOP_IN => {
                    // Answer target pings so the target keeps us.
                    if p.u32_at(20) != 0xffff_ffff {
                        let mut n = bhs(0x40, 0x80, 0);
                        put32(&mut n, 16, 0xffff_ffff);
                        n[20..24].copy_from_slice(&p.bhs[20..24]);
                        put32(&mut n, 24, self.cmd_sn);
                        put32(&mut n, 28, self.exp_stat_sn);
                        self.send(&n, &[]);
                    }
                }
                _ => return Err(p),
            }
        }
    }
}

/// READ(16)/WRITE(16) CDBs.
pub fn rw16(opcode: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// Sense key and ASC/ASCQ from fixed- or descriptor-format sense data.
pub fn sense_key_asc(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}
