//! End to end: run `Server` on 127.0.0.1:0 and talk to it with a tiny initiator built
//! from the crate's own codec (discovery, login, WRITE/READ, status, logout, shutdown).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use twinsan_blockdev::{BlockDevice, MemDevice};
use twinsan_iscsi::pdu::{
    encode_pdu, Decoder, DecoderConfig, Digests, LoginReqBhs, LoginRespBhs, LogoutReqBhs, Opcode,
    Pdu, ScsiCommandBhs, ScsiResponseBhs, TextReqBhs, CMD_FLAG_READ, CMD_FLAG_WRITE, FLAG_FINAL,
    FLAG_IMMEDIATE, RESERVED_TAG,
};
use twinsan_iscsi::text;
use twinsan_iscsi::{Server, ServerConfig, TargetConfig};
use twinsan_scsi::{LogicalUnit, LunConfig, LunMap};

const IQN: &str = "iqn.2026-11.org.example:disk";
const INI: &str = "iqn.1994-05.com.example:client";

struct Client {
    s: TcpStream,
    d: Decoder,
    digests: Digests,
    cmd_sn: u32,
    itt: u32,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Self {
            s: TcpStream::connect(addr).await.unwrap(),
            d: Decoder::new(DecoderConfig {
                digests: Digests::default(),
                max_recv_data_segment_len: 1 << 20,
            }),
            digests: Digests::default(),
            cmd_sn: 1,
            itt: 1,
        }
    }

    async fn send(&mut self, bhs: [u8; 48], data: &[u8]) {
        let mut out = Vec::new();
        encode_pdu(&mut out, &bhs, &[], data, self.digests);
        self.s.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Pdu {
        loop {
            if let Some(p) = self.d.decode().unwrap() {
                return p;
            }
            let n =
                tokio::time::timeout(Duration::from_secs(5), self.s.read_buf(self.d.buffer_mut()))
                    .await
                    .expect("timeout waiting for a PDU")
                    .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    async fn login(&mut self, pairs: &[(&str, &str)]) -> (u16, Vec<(String, String)>) {
        let mut h = LoginReqBhs::zeroed_with(Opcode::LoginReq);
        h.opcode |= FLAG_IMMEDIATE;
        h.flags = FLAG_FINAL | (1 << 2) | 3; // CSG=1 → NSG=3
        h.isid = [0x80, 0, 0, 0, 0, 7];
        h.itt.set(self.itt);
        h.cmd_sn.set(self.cmd_sn);
        let mut data = Vec::new();
        for (k, v) in pairs {
            text::push_pair(&mut data, k, v);
        }
        self.send(h.to_bhs(), &data).await;
        let r = self.recv().await;
        assert_eq!(r.opcode(), Opcode::LoginResp);
        let rh = r.view::<LoginRespBhs>();
        assert_eq!((rh.status_class, rh.status_detail), (0, 0), "login status");
        assert_eq!(rh.flags & 0x83, 0x83, "transit to full feature phase");
        let kv = text::parse(&r.data).unwrap();
        if kv.iter().any(|(k, v)| k == "HeaderDigest" && v == "CRC32C") {
            self.digests.header = true;
        }
        if kv.iter().any(|(k, v)| k == "DataDigest" && v == "CRC32C") {
            self.digests.data = true;
        }
        self.d.config.digests = self.digests;
        (rh.tsih.get(), kv)
    }

    async fn scsi(&mut self, flags: u8, edtl: u32, cdb: [u8; 16], imm: &[u8]) -> (u8, Vec<u8>) {
        self.itt += 1;
        let mut h = ScsiCommandBhs::zeroed_with(Opcode::ScsiCommand);
        h.flags = FLAG_FINAL | flags | 1;
        h.itt.set(self.itt);
        h.edtl.set(edtl);
        h.cmd_sn.set(self.cmd_sn);
        self.cmd_sn += 1;
        h.cdb = cdb;
        self.send(h.to_bhs(), imm).await;
        let mut data = Vec::new();
        loop {
            let p = self.recv().await;
            assert_eq!(p.itt(), self.itt);
            match p.opcode() {
                Opcode::DataIn => {
                    data.extend_from_slice(&p.data);
                    if p.flags() & 1 != 0 {
                        return (p.bhs[3], data);
                    }
                }
                Opcode::ScsiResponse => return (p.view::<ScsiResponseBhs>().status, data),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn logout(&mut self) {
        let mut h = LogoutReqBhs::zeroed_with(Opcode::LogoutReq);
        h.opcode |= FLAG_IMMEDIATE;
        h.flags = FLAG_FINAL;
        h.itt.set(0xabc);
        h.cmd_sn.set(self.cmd_sn);
        self.send(h.to_bhs(), &[]).await;
        let p = self.recv().await;
        assert_eq!(p.opcode(), Opcode::LogoutResp);
        assert_eq!(p.bhs[2], 0);
    }
}

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

type Running = (
    Arc<Server>,
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

async fn start() -> Running {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Running {
    start_full(tweak, 0).await
}

/// A memory device that takes 200 µs per I/O (an O_DIRECT disk, roughly).
#[derive(Debug)]
struct SlowDev(MemDevice);

impl BlockDevice for SlowDev {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.0.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> twinsan_blockdev::BlockResult<()> {
        std::thread::sleep(Duration::from_micros(200));
        self.0.read_at(buf, offset_bytes)
    }
    fn write_at(
        &self,
        buf: &[u8],
        offset_bytes: u64,
        fua: bool,
    ) -> twinsan_blockdev::BlockResult<()> {
        std::thread::sleep(Duration::from_micros(200));
        self.0.write_at(buf, offset_bytes, fua)
    }
    fn flush(&self) -> twinsan_blockdev::BlockResult<()> {
        self.0.flush()
    }
    fn write_cache_enabled(&self) -> bool {
        false
    }
    fn engine(&self) -> twinsan_blockdev::EngineKind {
        twinsan_blockdev::EngineKind::Memory
    }
}

async fn start_full(tweak: impl FnOnce(&mut ServerConfig), exec_threads: usize) -> Running {
    let mem = MemDevice::new(8 << 20, 512);
    let dev: Arc<dyn BlockDevice> = if exec_threads > 0 {
        Arc::new(SlowDev(mem))
    } else {
        Arc::new(mem)
    };
    let lu = Arc::new(LogicalUnit::new(LunConfig::new(uuid::Uuid::new_v4()), dev));
    let cfg = ServerConfig {
        targets: vec![TargetConfig {
            iqn: IQN.into(),
            alias: None,
            luns: Arc::new(LunMap::new(vec![(0, lu)])),
            allowed_initiators: vec![],
            chap: None,
            mutual_chap: None,
            portal_groups: vec![],
        }],
        ..ServerConfig::default()
    };
    let mut cfg = cfg;
    tweak(&mut cfg);
    let server = Server::with_exec_threads(cfg, exec_threads);
    let lis = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = lis.local_addr().unwrap();
    let stop = CancellationToken::new();
    let h = tokio::spawn(server.clone().run(vec![(lis, 1)], stop.clone()));
    (server, addr, stop, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_discovery_write_read_logout() {
    let (server, addr, stop, handle) = start().await;

    // Discovery.
    let mut c = Client::connect(addr).await;
    c.login(&[("InitiatorName", INI), ("SessionType", "Discovery")])
        .await;
    let mut h = TextReqBhs::zeroed_with(Opcode::TextReq);
    h.opcode |= FLAG_IMMEDIATE;
    h.flags = FLAG_FINAL;
    h.itt.set(9);
    h.ttt.set(RESERVED_TAG);
    h.cmd_sn.set(c.cmd_sn);
    c.send(h.to_bhs(), b"SendTargets=All\0").await;
    let p = c.recv().await;
    let kv = text::parse(&p.data).unwrap();
    assert_eq!(kv[0], ("TargetName".to_string(), IQN.to_string()));
    assert_eq!(kv[1], ("TargetAddress".to_string(), format!("{addr},1")));
    c.logout().await;

    // Normal session with digests, write then read back.
    let mut c = Client::connect(addr).await;
    let (tsih, kv) = c
        .login(&[
            ("InitiatorName", INI),
            ("TargetName", IQN),
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "CRC32C,None"),
            ("ImmediateData", "Yes"),
            ("InitialR2T", "No"),
            ("MaxRecvDataSegmentLength", "65536"),
        ])
        .await;
    assert!(tsih != 0);
    assert!(kv
        .iter()
        .any(|(k, v)| k == "TargetPortalGroupTag" && v == "1"));
    let st = server.status();
    assert_eq!(st.sessions.len(), 1);
    assert!(st.sessions[0].header_digest && st.sessions[0].data_digest);
    assert_eq!(st.sessions[0].target.as_deref(), Some(IQN));

    // Clear the power-on unit attention.
    let (status, _) = c.scsi(0, 0, [0; 16], &[]).await;
    if status == 2 {
        let (status, _) = c.scsi(0, 0, [0; 16], &[]).await;
        assert_eq!(status, 0);
    }
    let payload: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
    let (status, _) = c
        .scsi(CMD_FLAG_WRITE, 8192, rw10(0x2a, 16, 16), &payload)
        .await;
    assert_eq!(status, 0);
    let (status, data) = c.scsi(CMD_FLAG_READ, 8192, rw10(0x28, 16, 16), &[]).await;
    assert_eq!(status, 0);
    assert_eq!(data, payload);
    c.logout().await;

    // Give the server a moment to drop the session, then shut down.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.status().sessions.is_empty());
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_async_logout_request() {
    let (_server, addr, stop, handle) = start().await;
    let mut c = Client::connect(addr).await;
    c.login(&[("InitiatorName", INI), ("TargetName", IQN)])
        .await;
    stop.cancel();
    let p = c.recv().await;
    assert_eq!(p.opcode(), Opcode::AsyncMsg);
    assert_eq!(p.bhs[36], 1);
    c.logout().await;
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = Bytes::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_reinstatement_closes_the_old_session() {
    let (server, addr, stop, handle) = start().await;
    let mut a = Client::connect(addr).await;
    let (tsih_a, _) = a
        .login(&[("InitiatorName", INI), ("TargetName", IQN)])
        .await;
    // Same initiator name and ISID, TSIH 0: the old session is closed.
    let mut b = Client::connect(addr).await;
    let (tsih_b, _) = b
        .login(&[("InitiatorName", INI), ("TargetName", IQN)])
        .await;
    assert_ne!(tsih_a, tsih_b);
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), a.s.read(&mut buf))
        .await
        .expect("old connection must be closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let st = server.status();
    assert_eq!(st.sessions.len(), 1);
    assert_eq!(st.sessions[0].tsih, tsih_b);
    let (status, _) = b.scsi(0, 0, [0; 16], &[]).await;
    assert!(status == 0 || status == 2);
    b.logout().await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_target_and_missing_initiator_name_are_refused() {
    let (_server, addr, stop, handle) = start().await;
    for (pairs, expect) in [
        (
            vec![
                ("InitiatorName", INI),
                ("TargetName", "iqn.2026-11.org.example:nope"),
            ],
            (2u8, 3u8),
        ),
        (vec![("TargetName", IQN)], (2, 7)),
    ] {
        let mut c = Client::connect(addr).await;
        let mut h = LoginReqBhs::zeroed_with(Opcode::LoginReq);
        h.opcode |= FLAG_IMMEDIATE;
        h.flags = FLAG_FINAL | (1 << 2) | 3;
        let mut data = Vec::new();
        for (k, v) in &pairs {
            text::push_pair(&mut data, k, v);
        }
        c.send(h.to_bhs(), &data).await;
        let r = c.recv().await;
        let rh = r.view::<LoginRespBhs>();
        assert_eq!((rh.status_class, rh.status_detail), expect);
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// One login PDU in the security stage; returns (status, flags, pairs).
async fn login_step(
    c: &mut Client,
    flags: u8,
    pairs: &[(&str, &str)],
) -> (u16, u8, Vec<(String, String)>) {
    let mut h = LoginReqBhs::zeroed_with(Opcode::LoginReq);
    h.opcode |= FLAG_IMMEDIATE;
    h.flags = flags;
    h.isid = [0x80, 0, 0, 0, 0, 9];
    h.itt.set(1);
    h.cmd_sn.set(1);
    let mut data = Vec::new();
    for (k, v) in pairs {
        text::push_pair(&mut data, k, v);
    }
    c.send(h.to_bhs(), &data).await;
    let r = c.recv().await;
    let rh = r.view::<LoginRespBhs>();
    let st = (u16::from(rh.status_class) << 8) | u16::from(rh.status_detail);
    (st, rh.flags, text::parse(&r.data).unwrap())
}

fn get<'a>(kv: &'a [(String, String)], k: &str) -> &'a str {
    kv.iter()
        .find(|(kk, _)| kk == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_chap_login_and_wrong_secret() {
    use twinsan_iscsi::login::{chap_md5, decode_chap_binary, encode_hex};
    use twinsan_iscsi::ChapCredentials;
    let (_server, addr, stop, handle) = start_with(|cfg| {
        cfg.targets[0].chap = Some(ChapCredentials {
            user: "alice".into(),
            secret: b"alice-secret-1".to_vec(),
        });
        cfg.targets[0].mutual_chap = Some(ChapCredentials {
            user: "tgt".into(),
            secret: b"target-secret-1".to_vec(),
        });
    })
    .await;
    for secret in [&b"alice-secret-1"[..], &b"wrong-secret-1"[..]] {
        let mut c = Client::connect(addr).await;
        let (st, _, kv) = login_step(
            &mut c,
            0x81,
            &[
                ("InitiatorName", INI),
                ("TargetName", IQN),
                ("AuthMethod", "CHAP,None"),
            ],
        )
        .await;
        assert_eq!(st, 0);
        assert_eq!(get(&kv, "AuthMethod"), "CHAP");
        let (st, _, kv) = login_step(&mut c, 0x01, &[("CHAP_A", "5")]).await;
        assert_eq!(st, 0);
        let id: u8 = get(&kv, "CHAP_I").parse().unwrap();
        let chal = decode_chap_binary(get(&kv, "CHAP_C")).unwrap();
        let resp = encode_hex(&chap_md5(id, secret, &chal));
        let my_chal = [0x42u8; 16];
        let (st, flags, kv) = login_step(
            &mut c,
            0x81,
            &[
                ("CHAP_N", "alice"),
                ("CHAP_R", &resp),
                ("CHAP_I", "7"),
                ("CHAP_C", &encode_hex(&my_chal)),
            ],
        )
        .await;
        if secret == b"alice-secret-1" {
            assert_eq!(st, 0);
            assert_eq!(flags & 0x80, 0x80);
            assert_eq!(get(&kv, "CHAP_N"), "tgt");
            assert_eq!(
                get(&kv, "CHAP_R"),
                encode_hex(&chap_md5(7, b"target-secret-1", &my_chal))
            );
            let (st, flags, _) = login_step(&mut c, 0x87, &[]).await;
            assert_eq!(st, 0);
            assert_eq!(flags & 0x83, 0x83);
        } else {
            assert_eq!(st, 0x0201);
        }
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_pool_runs_commands_concurrently() {
    let (_server, addr, stop, handle) = start_full(|_| {}, 3).await;
    let mut c = Client::connect(addr).await;
    c.login(&[
        ("InitiatorName", INI),
        ("TargetName", IQN),
        ("ImmediateData", "Yes"),
    ])
    .await;
    let (status, _) = c.scsi(0, 0, [0; 16], &[]).await;
    if status == 2 {
        assert_eq!(c.scsi(0, 0, [0; 16], &[]).await.0, 0);
    }
    for i in 0..20u32 {
        let payload = vec![i as u8; 4096];
        assert_eq!(
            c.scsi(CMD_FLAG_WRITE, 4096, rw10(0x2a, i * 8, 8), &payload)
                .await
                .0,
            0
        );
        let (status, data) = c.scsi(CMD_FLAG_READ, 4096, rw10(0x28, i * 8, 8), &[]).await;
        assert_eq!(status, 0);
        assert_eq!(data, payload);
    }
    // Pipelined: 16 reads in flight at once, answered in any order.
    let mut want = std::collections::HashMap::new();
    for i in 0..16u32 {
        c.itt += 1;
        let mut h = ScsiCommandBhs::zeroed_with(Opcode::ScsiCommand);
        h.flags = FLAG_FINAL | CMD_FLAG_READ | 1;
        h.itt.set(c.itt);
        h.edtl.set(4096);
        h.cmd_sn.set(c.cmd_sn);
        c.cmd_sn += 1;
        h.cdb = rw10(0x28, i * 8, 8);
        c.send(h.to_bhs(), &[]).await;
        want.insert(c.itt, vec![i as u8; 4096]);
    }
    let mut got: std::collections::HashMap<u32, Vec<u8>> = std::collections::HashMap::new();
    while !want.is_empty() {
        let p = c.recv().await;
        assert_eq!(p.opcode(), Opcode::DataIn);
        let e = got.entry(p.itt()).or_default();
        e.extend_from_slice(&p.data);
        if p.flags() & 1 != 0 {
            assert_eq!(p.bhs[3], 0);
            let w = want.remove(&p.itt()).expect("known ITT");
            assert_eq!(*e, w);
        }
    }
    c.logout().await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
