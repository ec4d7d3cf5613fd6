//! Entry points for the fuzz targets (`fuzz/fuzz_targets/{pdu_decode,text_keys}.rs`) and
//! the corpus-replay tests: feed arbitrary bytes through the decoder, the session state
//! machine, the text parser, negotiation and login. None of them may panic.
//!
//! Owns: nothing persistent; a trivial in-memory engine for driving sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use twinsan_blockdev::IoBuf;
use twinsan_scsi::{Nexus, ScsiRequest, ScsiResponse, ScsiStatus, TaskMgmt};

use crate::engine::{ScsiEngine, TmfOutcome};
use crate::login::{
    LoginEnv, LoginMachine, LoginSettings, LoginStatus, SessionRequest, SessionType, TargetAuthInfo,
};
use crate::pdu::{encode_pdu, Decoder, DecoderConfig, Digests};
use crate::session::{Connection, ConnectionConfig, DiscoveryEnv, SendTargetsQuery, SessionInfo};
use crate::text::{self, Negotiator, OperationalParams, Pair, Phase, TargetOffer};

#[derive(Debug)]
struct NullEngine;

impl ScsiEngine for NullEngine {
    fn execute(&self, req: &ScsiRequest<'_>, data_in: &mut IoBuf) -> ScsiResponse {
        let n = req.data_in_len_max.min(4096) as usize;
        data_in.clear();
        data_in.resize(n);
        ScsiResponse {
            status: if req.cdb.first() == Some(&0xff) {
                ScsiStatus::CheckCondition
            } else {
                ScsiStatus::Good
            },
            sense: (req.cdb.first() == Some(&0xff))
                .then(|| vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0]),
            data_in_len: n as u32,
            cdb_transfer_len: Some(u64::from(req.cdb.get(8).copied().unwrap_or(0)) * 512),
        }
    }
    fn task_mgmt(&self, _: &Nexus, _: u64, _: TaskMgmt) -> TmfOutcome {
        TmfOutcome::Complete
    }
    fn nexus_lost(&self, _: &Nexus) {}
}

struct NullDiscovery;

impl DiscoveryEnv for NullDiscovery {
    fn send_targets(
        &self,
        _: &str,
        _: SendTargetsQuery<'_>,
        _: Option<std::net::SocketAddr>,
    ) -> Vec<Pair> {
        vec![("TargetName".into(), "iqn.2026-11.org.example:t".into())]
    }
}

/// Decode `bytes` (with and without digests) and drive a full-feature session with
/// every PDU that decodes. Checks that re-encoding a decoded PDU decodes to the same PDU.
pub fn pdu_decode(bytes: &[u8]) {
    for (hd, dd) in [(false, false), (true, true)] {
        let digests = Digests {
            header: hd,
            data: dd,
        };
        let mut d = Decoder::new(DecoderConfig {
            digests,
            max_recv_data_segment_len: 64 * 1024,
        });
        d.feed(bytes);
        let now = Instant::now();
        let params = OperationalParams {
            header_digest: hd,
            data_digest: dd,
            initial_r2t: bytes.first().is_some_and(|b| b & 1 == 1),
            max_outstanding_r2t: 2,
            max_burst_len: 8192,
            first_burst_len: 4096,
            ..OperationalParams::default()
        };
        let mut conn = Connection::new(
            ConnectionConfig {
                queue_depth: 8,
                max_transfer_len_bytes: 1 << 20,
                max_inflight_bytes: 4 << 20,
                nop_in_interval: Duration::from_millis(10),
                nop_in_timeout: Duration::from_millis(20),
                ..ConnectionConfig::default()
            },
            SessionInfo {
                session_type: SessionType::Normal,
                initiator_name: "iqn.x:i".into(),
                target_iqn: Some("iqn.2026-11.org.example:t".into()),
                isid: [0; 6],
                tsih: 1,
                cid: 0,
                nexus: Nexus {
                    id: 1,
                    initiator_port: "iqn.x:i,i,0x0".into(),
                    relative_port_id: 1,
                },
            },
            params,
            TargetOffer::default(),
            Some(Arc::new(NullEngine)),
            Arc::new(NullDiscovery),
            0,
            0,
            now,
        );
        let mut t = now;
        for _ in 0..512 {
            match d.decode() {
                Ok(Some(p)) => {
                    let mut re = Vec::new();
                    encode_pdu(&mut re, &p.bhs, &p.ahs, &p.data, digests);
                    let mut d2 = Decoder::new(DecoderConfig {
                        digests,
                        max_recv_data_segment_len: 1 << 24,
                    });
                    d2.feed(&re);
                    if let Ok(Some(q)) = d2.decode() {
                        if !p.data_digest_error {
                            assert_eq!(q.data, p.data);
                            assert_eq!(q.ahs, p.ahs);
                        }
                    }
                    let _ = p.ahs_entries().count();
                    conn.on_pdu(p, t);
                    conn.run_ready();
                    t += Duration::from_millis(7);
                    conn.on_tick(t);
                    let _ = conn.take_output(Vec::new());
                }
                _ => break,
            }
        }
        conn.abort_all();
    }
}

struct FuzzLoginEnv;

impl LoginEnv for FuzzLoginEnv {
    fn target(&self, iqn: &str) -> Option<TargetAuthInfo> {
        (iqn.len() & 1 == 0).then(|| TargetAuthInfo {
            iqn: iqn.to_string(),
            alias: None,
            allowed_initiators: vec![],
            chap: (iqn.len() & 3 == 0).then(|| crate::login::ChapCredentials {
                user: "u".into(),
                secret: b"secretsecret".to_vec(),
            }),
            mutual_chap: None,
            portal_group_tags: vec![],
        })
    }
    fn discovery_chap(&self) -> Option<crate::login::ChapCredentials> {
        None
    }
    fn session_exists(&self, _: u16, _: &str, _: [u8; 6]) -> bool {
        false
    }
    fn create_session(&self, _: &SessionRequest) -> Result<u16, LoginStatus> {
        Ok(1)
    }
}

/// Parse `bytes` as text keys, negotiate them in every phase, and run login with them.
pub fn text_keys(bytes: &[u8]) {
    if let Ok(pairs) = text::parse(bytes) {
        let enc = text::encode(&pairs);
        assert_eq!(text::parse(&enc).ok(), Some(pairs.clone()));
        for phase in [Phase::Security, Phase::Operational, Phase::FullFeature] {
            let mut n = Negotiator::new(TargetOffer::default());
            let mut out = Vec::new();
            n.target_declarations(&mut out);
            for (k, v) in &pairs {
                let _ = n.handle(k, v, phase, &mut out);
            }
            let p = n.finish();
            assert!(p.first_burst_len <= p.max_burst_len);
            assert_eq!(p.max_connections, 1);
            assert_eq!(p.error_recovery_level, 0);
        }
    }
    // Login: the same bytes as the text of a sequence of login PDUs.
    let mut m = LoginMachine::new(
        LoginSettings {
            tpgt: 1,
            offer: TargetOffer::default(),
            queue_depth: 8,
        },
        [3; 17],
    );
    for (i, chunk) in bytes.chunks(97).take(8).enumerate() {
        let mut h = crate::pdu::LoginReqBhs::zeroed_with(crate::pdu::Opcode::LoginReq);
        h.flags = chunk.first().copied().unwrap_or(0) & 0xcf;
        if i == 0 {
            h.flags = 0x87;
        }
        let p = crate::pdu::Pdu::new(h.to_bhs(), bytes::Bytes::copy_from_slice(chunk));
        let o = m.on_pdu(&p, &FuzzLoginEnv);
        if !matches!(o.outcome, crate::login::LoginOutcome::Continue) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]
        #[test]
        fn fuzz_pdu_decode(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            pdu_decode(&bytes);
        }

        #[test]
        fn fuzz_text_keys(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            text_keys(&bytes);
        }

        #[test]
        fn fuzz_text_keys_structured(pairs in proptest::collection::vec(("[A-Za-z_]{1,20}", "[ -~]{0,30}"), 0..20)) {
            let mut b = Vec::new();
            for (k, v) in &pairs { text::push_pair(&mut b, k, v); }
            text_keys(&b);
        }
    }

    /// Valid-looking PDU streams: real headers with random fields reach deep session paths.
    #[test]
    fn structured_session_streams() {
        use crate::pdu::*;
        let mut rng = 0x1234_5678_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..300 {
            let mut wire = Vec::new();
            for _ in 0..20 {
                let op = [0x01u8, 0x05, 0x00, 0x02, 0x04, 0x06, 0x10][(next() % 7) as usize];
                let mut bhs = [0u8; 48];
                for b in bhs.iter_mut() {
                    *b = next() as u8;
                }
                bhs[0] = op | if next() % 2 == 0 { FLAG_IMMEDIATE } else { 0 };
                bhs[4] = 0;
                bhs[20..24].copy_from_slice(&((next() % 3) as u32 * 4096).to_be_bytes()); // EDTL / TTT
                bhs[24..28].copy_from_slice(&((next() % 6) as u32).to_be_bytes()); // CmdSN
                bhs[16..20].copy_from_slice(&((next() % 4) as u32).to_be_bytes()); // ITT
                bhs[36..40].copy_from_slice(&((next() % 3) as u32).to_be_bytes()); // DataSN
                bhs[40..44].copy_from_slice(&((next() % 3) as u32 * 512).to_be_bytes()); // offset
                let len = [0usize, 512, 1000, 4096][(next() % 4) as usize];
                let data = vec![0x5a; len];
                encode_pdu(&mut wire, &bhs, &[], &data, Digests::default());
            }
            pdu_decode(&wire);
        }
    }
}
