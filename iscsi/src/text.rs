//! Text keys (RFC 7143 §6, §13): parsing and formatting of `key=value\0` lists and the
//! negotiation rule of each operational key.
//!
//! Owns: [`parse`], [`push_pair`], [`TargetOffer`] (what the target proposes / accepts),
//! [`OperationalParams`] (the negotiated result) and [`Negotiator`], which answers the
//! initiator's keys one by one during login (operational stage) and in full feature
//! phase Text requests.
//!
//! May not touch: login stages, authentication (the login module handles `AuthMethod`,
//! `CHAP_*`, `InitiatorName`, `TargetName`, `SessionType`) or sockets.

use std::collections::HashSet;

/// Longest key name (RFC 7143 §6.1: standard-label up to 63 characters).
pub const KEY_LEN_MAX: usize = 63;
/// Longest ordinary value.
pub const VALUE_LEN_MAX: usize = 255;
/// Longest value for the keys that carry large binary values (CHAP_C, CHAP_R) or
/// long text (TargetAddress lists are one value each, so 255 suffices there).
pub const LONG_VALUE_LEN_MAX: usize = 2048;
/// Largest accumulated text across Continue-bit PDUs.
pub const TEXT_LEN_MAX: usize = 64 * 1024;
/// Largest number of pairs in one request.
pub const PAIRS_MAX: usize = 256;

/// Errors parsing a text segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A pair without `=`.
    #[error("text pair without '='")]
    MissingEquals,
    /// Empty, too long or badly formed key.
    #[error("invalid key name")]
    BadKey,
    /// Value too long.
    #[error("value of {key} too long ({len} bytes)")]
    ValueTooLong {
        /// Key.
        key: String,
        /// Length.
        len: usize,
    },
    /// Not UTF-8.
    #[error("text is not UTF-8")]
    NotUtf8,
    /// Too much text.
    #[error("too much text")]
    TooLong,
    /// The same key appeared twice.
    #[error("key {0} sent more than once")]
    Duplicate(String),
}

fn value_len_max(key: &str) -> usize {
    match key {
        "CHAP_C" | "CHAP_R" => LONG_VALUE_LEN_MAX,
        _ => VALUE_LEN_MAX,
    }
}

fn key_ok(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= KEY_LEN_MAX
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'@' | b'_'))
}

/// Parse a data segment of `key=value\0` pairs. Trailing NULs (padding) are ignored,
/// a final pair without its NUL is accepted. Duplicate keys are an error.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    if data.len() > TEXT_LEN_MAX {
        return Err(TextError::TooLong);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if out.len() >= PAIRS_MAX {
            return Err(TextError::TooLong);
        }
        let s = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s.split_once('=').ok_or(TextError::MissingEquals)?;
        if !key_ok(k) {
            return Err(TextError::BadKey);
        }
        if v.len() > value_len_max(k) {
            return Err(TextError::ValueTooLong {
                key: k.to_string(),
                len: v.len(),
            });
        }
        if out.iter().any(|(ek, _)| ek == k) {
            return Err(TextError::Duplicate(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Append `key=value\0`.
pub fn push_pair(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// Encode a list of pairs.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        push_pair(&mut out, k, v);
    }
    out
}

/// Parse a numerical value: decimal, or hex with a `0x`/`0X` prefix.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 16 {
            return None;
        }
        u64::from_str_radix(h, 16).ok()
    } else {
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse().ok()
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// What the target offers and accepts (configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOffer {
    /// Our MaxRecvDataSegmentLength declaration (bytes).
    pub max_recv_data_segment_len: u32,
    /// Largest MaxBurstLength we accept (bytes).
    pub max_burst_len: u32,
    /// Largest FirstBurstLength we accept (bytes).
    pub first_burst_len: u32,
    /// Our InitialR2T preference (OR function: `false` lets the initiator choose).
    pub initial_r2t: bool,
    /// Whether we accept immediate data (AND function).
    pub immediate_data: bool,
    /// Largest MaxOutstandingR2T we accept.
    pub max_outstanding_r2t: u32,
    /// DefaultTime2Wait we propose (seconds; max function).
    pub default_time2wait: u32,
    /// DefaultTime2Retain we accept (seconds; min function).
    pub default_time2retain: u32,
    /// Allow HeaderDigest=CRC32C.
    pub header_digest_crc32c: bool,
    /// Allow DataDigest=CRC32C.
    pub data_digest_crc32c: bool,
}

impl Default for TargetOffer {
    fn default() -> Self {
        Self {
            max_recv_data_segment_len: 256 * 1024,
            max_burst_len: 1024 * 1024,
            first_burst_len: 256 * 1024,
            initial_r2t: false,
            immediate_data: true,
            max_outstanding_r2t: 8,
            default_time2wait: 2,
            default_time2retain: 20,
            header_digest_crc32c: true,
            data_digest_crc32c: true,
        }
    }
}

/// Negotiated operational parameters of one session/connection. Starts at the RFC
/// defaults; keys the initiator never sends keep them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationalParams {
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    /// What we may send in one data segment (initiator's declaration).
    pub initiator_max_recv_data_segment_len: u32,
    /// What the initiator may send us in one data segment (our declaration; 8192 until
    /// we have declared it).
    pub target_max_recv_data_segment_len: u32,
    /// MaxBurstLength.
    pub max_burst_len: u32,
    /// FirstBurstLength.
    pub first_burst_len: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// DefaultTime2Wait (s).
    pub default_time2wait: u32,
    /// DefaultTime2Retain (s).
    pub default_time2retain: u32,
    /// ErrorRecoveryLevel (always 0 here).
    pub error_recovery_level: u32,
    /// MaxConnections (always 1 here: ERL 0, one connection per session).
    pub max_connections: u32,
}

impl Default for OperationalParams {
    fn default() -> Self {
        Self {
            header_digest: false,
            data_digest: false,
            initiator_max_recv_data_segment_len: 8192,
            target_max_recv_data_segment_len: 8192,
            max_burst_len: 262_144,
            first_burst_len: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

/// Negotiation failures that end the login (initiator error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// A key was negotiated twice.
    #[error("key {0} negotiated more than once")]
    Duplicate(String),
    /// A key not allowed in this phase (e.g. a security key outside the security stage).
    #[error("key {0} not allowed here")]
    NotAllowed(String),
}

/// Where a key arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Login, security negotiation stage.
    Security,
    /// Login, operational negotiation stage.
    Operational,
    /// Text request in full feature phase.
    FullFeature,
}

/// Keys the login module handles itself.
pub fn is_login_key(key: &str) -> bool {
    matches!(
        key,
        "InitiatorName"
            | "InitiatorAlias"
            | "TargetName"
            | "SessionType"
            | "AuthMethod"
            | "TargetAlias"
    ) || key.starts_with("CHAP_")
}

/// Answers operational keys and accumulates [`OperationalParams`].
#[derive(Debug, Clone)]
pub struct Negotiator {
    offer: TargetOffer,
    /// The result so far.
    pub params: OperationalParams,
    seen: HashSet<String>,
    declared_mrdsl: bool,
}

/// One response pair.
pub type Pair = (String, String);

impl Negotiator {
    /// Start from the RFC defaults.
    pub fn new(offer: TargetOffer) -> Self {
        Self {
            offer,
            params: OperationalParams::default(),
            seen: HashSet::new(),
            declared_mrdsl: false,
        }
    }

    /// The target's offer.
    pub fn offer(&self) -> &TargetOffer {
        &self.offer
    }

    /// Keys the target declares on its own in the first operational-stage response
    /// (our MaxRecvDataSegmentLength). Call once when entering that stage.
    pub fn target_declarations(&mut self, out: &mut Vec<Pair>) {
        if !self.declared_mrdsl {
            self.declared_mrdsl = true;
            self.params.target_max_recv_data_segment_len = self.offer.max_recv_data_segment_len;
            out.push((
                "MaxRecvDataSegmentLength".into(),
                self.offer.max_recv_data_segment_len.to_string(),
            ));
        }
    }

    /// Whether our MaxRecvDataSegmentLength has been declared.
    pub fn declared(&self) -> bool {
        self.declared_mrdsl
    }

    /// Answer one initiator key. Appends the response (if the key needs one) to `out`.
    pub fn handle(
        &mut self,
        key: &str,
        value: &str,
        phase: Phase,
        out: &mut Vec<Pair>,
    ) -> Result<(), NegotiationError> {
        if phase != Phase::FullFeature && !self.seen.insert(key.to_string()) {
            return Err(NegotiationError::Duplicate(key.to_string()));
        }
        let resp = |out: &mut Vec<Pair>, v: &str| out.push((key.to_string(), v.to_string()));
        let ffp = phase == Phase::FullFeature;
        let o = &self.offer;
        let p = &mut self.params;
        match key {
            "HeaderDigest" | "DataDigest" => {
                if ffp {
                    resp(out, "Reject");
                    return Ok(());
                }
                let allow_crc = if key == "HeaderDigest" {
                    o.header_digest_crc32c
                } else {
                    o.data_digest_crc32c
                };
                let choice = value
                    .split(',')
                    .find(|v| *v == "None" || (*v == "CRC32C" && allow_crc));
                match choice {
                    Some(c) => {
                        let on = c == "CRC32C";
                        if key == "HeaderDigest" {
                            p.header_digest = on;
                        } else {
                            p.data_digest = on;
                        }
                        resp(out, c);
                    }
                    None => resp(out, "Reject"),
                }
            }
            "MaxRecvDataSegmentLength" => match parse_number(value) {
                Some(n) if n >= 512 => {
                    p.initiator_max_recv_data_segment_len =
                        n.min(u64::from(crate::pdu::DATA_SEGMENT_LEN_MAX)) as u32;
                }
                _ => resp(out, "Reject"),
            },
            "MaxBurstLength" | "FirstBurstLength" => {
                if ffp {
                    resp(out, "Reject");
                    return Ok(());
                }
                match parse_number(value) {
                    Some(n) if (512..=u64::from(crate::pdu::DATA_SEGMENT_LEN_MAX)).contains(&n) => {
                        let n = n as u32;
                        if key == "MaxBurstLength" {
                            p.max_burst_len = n.min(o.max_burst_len);
                            p.first_burst_len = p.first_burst_len.min(p.max_burst_len);
                            resp(out, &p.max_burst_len.to_string());
                        } else {
                            p.first_burst_len = n.min(o.first_burst_len).min(p.max_burst_len);
                            resp(out, &p.first_burst_len.to_string());
                        }
                    }
                    _ => resp(out, "Reject"),
                }
            }
            "InitialR2T" | "ImmediateData" | "DataPDUInOrder" | "DataSequenceInOrder" => {
                if ffp {
                    resp(out, "Reject");
                    return Ok(());
                }
                match parse_bool(value) {
                    Some(b) => {
                        let r = match key {
                            "InitialR2T" => {
                                p.initial_r2t = b || o.initial_r2t;
                                p.initial_r2t
                            }
                            "ImmediateData" => {
                                p.immediate_data = b && o.immediate_data;
                                p.immediate_data
                            }
                            // We need in-order data: OR with our Yes.
                            "DataPDUInOrder" => {
                                p.data_pdu_in_order = true;
                                true
                            }
                            _ => {
                                p.data_sequence_in_order = true;
                                true
                            }
                        };
                        resp(out, yes_no(r));
                    }
                    None => resp(out, "Reject"),
                }
            }
            "MaxOutstandingR2T" => {
                if ffp {
                    resp(out, "Reject");
                    return Ok(());
                }
                match parse_number(value) {
                    Some(n) if (1..=65535).contains(&n) => {
                        p.max_outstanding_r2t = (n as u32).min(o.max_outstanding_r2t).max(1);
                        resp(out, &p.max_outstanding_r2t.to_string());
                    }
                    _ => resp(out, "Reject"),
                }
            }
            "DefaultTime2Wait" | "DefaultTime2Retain" => {
                if ffp {
                    resp(out, "Reject");
                    return Ok(());
                }
                match parse_number(value) {
                    Some(n) if n <= 3600 => {
                        let n = n as u32;
                        if key == "DefaultTime2Wait" {
                            p.default_time2wait = n.max(o.default_time2wait);
                            resp(out, &p.default_time2wait.to_string());
                        } else {
                            p.default_time2retain = n.min(o.default_time2retain);
                            resp(out, &p.default_time2retain.to_string());
                        }
                    }
                    _ => resp(out, "Reject"),
                }
            }
            "ErrorRecoveryLevel" => {
                if ffp {
                    resp(out, "Reject");
                    return Ok(());
                }
                match parse_number(value) {
                    Some(n) if n <= 2 => {
                        p.error_recovery_level = 0;
                        resp(out, "0");
                    }
                    _ => resp(out, "Reject"),
                }
            }
            "MaxConnections" => {
                if ffp {
                    resp(out, "Reject");
                    return Ok(());
                }
                // ERL 0 with one connection per session: always 1.
                match parse_number(value) {
                    Some(n) if (1..=65535).contains(&n) => {
                        p.max_connections = 1;
                        resp(out, "1");
                    }
                    _ => resp(out, "Reject"),
                }
            }
            "OFMarker" | "IFMarker" => match parse_bool(value) {
                Some(_) if !ffp => resp(out, "No"),
                _ => resp(out, "Reject"),
            },
            "OFMarkInt" | "IFMarkInt" => resp(out, "Irrelevant"),
            // Target-only keys sent by an initiator, and keys for other transports.
            "TargetPortalGroupTag" | "TargetAddress" => resp(out, "Reject"),
            "SendTargets" => resp(out, "Irrelevant"),
            _ => {
                if is_login_key(key) {
                    return Err(NegotiationError::NotAllowed(key.to_string()));
                }
                resp(out, "NotUnderstood");
            }
        }
        Ok(())
    }

    /// Final consistency fix-ups once login is complete (FirstBurst ≤ MaxBurst).
    pub fn finish(&mut self) -> OperationalParams {
        let p = &mut self.params;
        p.first_burst_len = p.first_burst_len.min(p.max_burst_len);
        p.clone()
    }
}

/// Is `name` syntactically an iSCSI name (iqn., eui. or naa. format)?
pub fn is_iscsi_name(name: &str) -> bool {
    let ok_chars = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
    };
    if name.len() > 223 {
        return false;
    }
    if let Some(rest) = name.strip_prefix("iqn.") {
        ok_chars(rest)
    } else if let Some(rest) = name.strip_prefix("eui.") {
        rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit())
    } else if let Some(rest) = name.strip_prefix("naa.") {
        (rest.len() == 16 || rest.len() == 32) && rest.bytes().all(|b| b.is_ascii_hexdigit())
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn neg(pairs: &[(&str, &str)]) -> (Vec<Pair>, OperationalParams) {
        let mut n = Negotiator::new(TargetOffer::default());
        let mut out = Vec::new();
        for (k, v) in pairs {
            n.handle(k, v, Phase::Operational, &mut out).unwrap();
        }
        (out, n.finish())
    }

    fn get<'a>(out: &'a [Pair], k: &str) -> Option<&'a str> {
        out.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn parse_basic_and_padding() {
        let v = parse(b"A=1\0B=two\0\0\0").unwrap();
        assert_eq!(
            v,
            vec![("A".into(), "1".into()), ("B".into(), "two".into())]
        );
        assert_eq!(parse(b"A=1").unwrap().len(), 1);
        assert_eq!(parse(b"A\0"), Err(TextError::MissingEquals));
        assert!(matches!(parse(b"A=1\0A=2\0"), Err(TextError::Duplicate(_))));
        assert_eq!(parse(b"=1\0"), Err(TextError::BadKey));
        let long = format!("K={}\0", "x".repeat(256));
        assert!(matches!(
            parse(long.as_bytes()),
            Err(TextError::ValueTooLong { .. })
        ));
        let chap = format!("CHAP_C=0x{}\0", "a".repeat(1000));
        assert!(parse(chap.as_bytes()).is_ok());
        assert_eq!(parse(b"A=\xff\0"), Err(TextError::NotUtf8));
    }

    #[test]
    fn negotiation_rules() {
        let (out, p) = neg(&[
            ("HeaderDigest", "CRC32C,None"),
            ("DataDigest", "None,CRC32C"),
            ("MaxRecvDataSegmentLength", "65536"),
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxOutstandingR2T", "1"),
            ("DefaultTime2Wait", "0"),
            ("DefaultTime2Retain", "60"),
            ("ErrorRecoveryLevel", "2"),
            ("MaxConnections", "8"),
            ("DataPDUInOrder", "No"),
            ("DataSequenceInOrder", "Yes"),
            ("IFMarker", "No"),
            ("OFMarkInt", "2048~2048"),
            ("X-com.example.Foo", "bar"),
        ]);
        assert_eq!(get(&out, "HeaderDigest"), Some("CRC32C"));
        assert_eq!(get(&out, "DataDigest"), Some("None"));
        assert_eq!(get(&out, "MaxRecvDataSegmentLength"), None); // declarative
        assert_eq!(get(&out, "MaxBurstLength"), Some("1048576"));
        assert_eq!(get(&out, "FirstBurstLength"), Some("262144"));
        assert_eq!(get(&out, "InitialR2T"), Some("No"));
        assert_eq!(get(&out, "ImmediateData"), Some("Yes"));
        assert_eq!(get(&out, "DefaultTime2Wait"), Some("2"));
        assert_eq!(get(&out, "DefaultTime2Retain"), Some("20"));
        assert_eq!(get(&out, "ErrorRecoveryLevel"), Some("0"));
        assert_eq!(get(&out, "MaxConnections"), Some("1"));
        assert_eq!(get(&out, "DataPDUInOrder"), Some("Yes"));
        assert_eq!(get(&out, "IFMarker"), Some("No"));
        assert_eq!(get(&out, "OFMarkInt"), Some("Irrelevant"));
        assert_eq!(get(&out, "X-com.example.Foo"), Some("NotUnderstood"));
        assert!(p.header_digest && !p.data_digest);
        assert_eq!(p.initiator_max_recv_data_segment_len, 65536);
        assert!(!p.initial_r2t && p.immediate_data);
    }

    #[test]
    fn invalid_values_are_rejected_and_duplicates_fail() {
        let (out, _) = neg(&[
            ("MaxBurstLength", "12"),
            ("InitialR2T", "maybe"),
            ("HeaderDigest", "MD5"),
            ("MaxRecvDataSegmentLength", "100"),
        ]);
        for k in [
            "MaxBurstLength",
            "InitialR2T",
            "HeaderDigest",
            "MaxRecvDataSegmentLength",
        ] {
            assert_eq!(get(&out, k), Some("Reject"), "{k}");
        }
        let mut n = Negotiator::new(TargetOffer::default());
        let mut out = Vec::new();
        n.handle("InitialR2T", "Yes", Phase::Operational, &mut out)
            .unwrap();
        assert!(n
            .handle("InitialR2T", "Yes", Phase::Operational, &mut out)
            .is_err());
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let (_, p) = neg(&[("FirstBurstLength", "262144"), ("MaxBurstLength", "65536")]);
        assert!(p.first_burst_len <= p.max_burst_len);
    }

    #[test]
    fn iscsi_names() {
        assert!(is_iscsi_name("iqn.2026-11.org.example:disk"));
        assert!(is_iscsi_name("eui.02004567A425678D"));
        assert!(!is_iscsi_name("Alle"));
        assert!(!is_iscsi_name("A"));
    }

    proptest! {
        #[test]
        fn parse_format_round_trip(pairs in proptest::collection::btree_map("[A-Za-z][A-Za-z0-9.+@_-]{0,20}", "[ -~]{0,40}", 0..10)) {
            let v: Vec<Pair> = pairs.into_iter().collect();
            let enc = encode(&v);
            prop_assert_eq!(parse(&enc).unwrap(), v);
        }

        #[test]
        fn numeric_negotiation_is_min(init in 512u32..16_777_215, ours in 512u32..16_777_215) {
            let offer = TargetOffer { max_burst_len: ours, ..TargetOffer::default() };
            let mut n = Negotiator::new(offer);
            let mut out = Vec::new();
            n.handle("MaxBurstLength", &init.to_string(), Phase::Operational, &mut out).unwrap();
            prop_assert_eq!(n.params.max_burst_len, init.min(ours));
            prop_assert_eq!(out[0].1.parse::<u32>().unwrap(), init.min(ours));
        }

        #[test]
        fn boolean_rules(init in any::<bool>(), ours_r2t in any::<bool>(), ours_imm in any::<bool>()) {
            let offer = TargetOffer { initial_r2t: ours_r2t, immediate_data: ours_imm, ..TargetOffer::default() };
            let mut n = Negotiator::new(offer);
            let mut out = Vec::new();
            n.handle("InitialR2T", yes_no(init), Phase::Operational, &mut out).unwrap();
            n.handle("ImmediateData", yes_no(init), Phase::Operational, &mut out).unwrap();
            prop_assert_eq!(n.params.initial_r2t, init || ours_r2t);
            prop_assert_eq!(n.params.immediate_data, init && ours_imm);
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(pairs) = parse(&bytes) {
                let mut n = Negotiator::new(TargetOffer::default());
                let mut out = Vec::new();
                for (k, v) in &pairs {
                    let _ = n.handle(k, v, Phase::Operational, &mut out);
                }
            }
        }
    }
}
