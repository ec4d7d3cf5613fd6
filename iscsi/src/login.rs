//! Login phase state machine (RFC 7143 §6, §11.12–11.13), sans-IO.
//!
//! Owns: the stages of one connection's login (security negotiation with
//! `AuthMethod=None|CHAP`, operational negotiation, transit to full feature phase),
//! CHAP (MD5, one-way and mutual, hex and base64 encodings), target lookup, ACLs by
//! initiator name, login status codes and the Continue bit on received text.
//!
//! May not touch: sockets, clocks or the OS random source: the driver passes the random
//! bytes for the CHAP identifier and challenge into [`LoginMachine::new`], so transcripts
//! are deterministic in tests. Session creation (TSIH assignment, reinstatement) is
//! delegated to [`LoginEnv`], implemented by the driver's session registry.

use md5::{Digest, Md5};

use crate::pdu::{LoginReqBhs, LoginRespBhs, Opcode, Pdu, BHS_LEN, FLAG_CONTINUE, FLAG_FINAL};
use crate::text::{self, Negotiator, OperationalParams, Pair, Phase, TargetOffer};

/// CHAP credentials. The secret is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// CHAP_N user name.
    pub user: String,
    /// Shared secret.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ChapCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredentials")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What login needs to know about one target.
#[derive(Debug, Clone)]
pub struct TargetAuthInfo {
    /// Target IQN.
    pub iqn: String,
    /// Optional alias (sent as TargetAlias).
    pub alias: Option<String>,
    /// Initiator names allowed to log in (empty: any).
    pub allowed_initiators: Vec<String>,
    /// Initiator must authenticate with these.
    pub chap: Option<ChapCredentials>,
    /// Target authenticates to the initiator with these (when asked).
    pub mutual_chap: Option<ChapCredentials>,
    /// Portal group tags the target is reachable through (empty: all).
    pub portal_group_tags: Vec<u16>,
}

impl TargetAuthInfo {
    /// Whether `initiator` passes this target's ACL.
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty() || self.allowed_initiators.iter().any(|a| a == initiator)
    }
}

/// Session type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// SCSI I/O.
    Normal,
}

/// Login status (class, detail) codes (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    /// Success.
    pub const SUCCESS: Self = Self(0x0000);
    /// Initiator error (miscellaneous, e.g. malformed text or duplicate keys).
    pub const INITIATOR_ERROR: Self = Self(0x0200);
    /// Authentication failure.
    pub const AUTH_FAILURE: Self = Self(0x0201);
    /// Authorization failure (ACL).
    pub const AUTHORIZATION_FAILURE: Self = Self(0x0202);
    /// Target not found.
    pub const NOT_FOUND: Self = Self(0x0203);
    /// Target removed.
    pub const TARGET_REMOVED: Self = Self(0x0204);
    /// Unsupported version.
    pub const UNSUPPORTED_VERSION: Self = Self(0x0205);
    /// Too many connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self(0x0206);
    /// Missing parameter.
    pub const MISSING_PARAMETER: Self = Self(0x0207);
    /// Can't include in session.
    pub const CANT_INCLUDE_IN_SESSION: Self = Self(0x0208);
    /// Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self(0x0209);
    /// Session does not exist.
    pub const SESSION_DOES_NOT_EXIST: Self = Self(0x020a);
    /// Invalid request during login.
    pub const INVALID_DURING_LOGIN: Self = Self(0x020b);
    /// Target error.
    pub const TARGET_ERROR: Self = Self(0x0300);
    /// Service unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self(0x0301);
    /// Out of resources.
    pub const OUT_OF_RESOURCES: Self = Self(0x0302);
}

/// What login asks of the surrounding server.
pub trait LoginEnv {
    /// Look up a target by IQN.
    fn target(&self, iqn: &str) -> Option<TargetAuthInfo>;
    /// CHAP credentials required for discovery sessions.
    fn discovery_chap(&self) -> Option<ChapCredentials>;
    /// Whether a session with this TSIH exists for this initiator/ISID.
    fn session_exists(&self, tsih: u16, initiator: &str, isid: [u8; 6]) -> bool;
    /// Create the session at the end of a successful login; returns the TSIH. Closes
    /// (reinstates) an existing session with the same initiator name, ISID and target.
    fn create_session(&self, req: &SessionRequest) -> Result<u16, LoginStatus>;
}

/// Data for [`LoginEnv::create_session`].
#[derive(Debug, Clone)]
pub struct SessionRequest {
    /// Initiator name.
    pub initiator_name: String,
    /// ISID.
    pub isid: [u8; 6],
    /// Target IQN (Normal sessions).
    pub target: Option<String>,
    /// Session type.
    pub session_type: SessionType,
}

/// Result of a successful login.
#[derive(Debug, Clone)]
pub struct LoginResult {
    /// Session type.
    pub session_type: SessionType,
    /// InitiatorName.
    pub initiator_name: String,
    /// InitiatorAlias.
    pub initiator_alias: Option<String>,
    /// Target (Normal sessions).
    pub target: Option<TargetAuthInfo>,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH assigned.
    pub tsih: u16,
    /// CID.
    pub cid: u16,
    /// Negotiated parameters.
    pub params: OperationalParams,
    /// ExpCmdSN at the start of full feature phase.
    pub exp_cmd_sn: u32,
    /// Next StatSN to use.
    pub next_stat_sn: u32,
    /// Whether CHAP was used.
    pub authenticated: bool,
}

/// What the driver does after sending [`LoginOutput::response`].
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    /// Wait for the next Login Request.
    Continue,
    /// Close the connection (a failure status was sent).
    Failed(LoginStatus),
    /// Enter full feature phase.
    Complete(Box<LoginResult>),
}

/// One response PDU plus what to do next.
#[derive(Debug, Clone)]
pub struct LoginOutput {
    /// Login Response header.
    pub bhs: [u8; BHS_LEN],
    /// Login Response text.
    pub data: Vec<u8>,
    /// Next step.
    pub outcome: LoginOutcome,
}

/// Static settings for the login of one connection.
#[derive(Debug, Clone)]
pub struct LoginSettings {
    /// Portal group tag of the portal the connection arrived on.
    pub tpgt: u16,
    /// Our operational offer.
    pub offer: TargetOffer,
    /// Queue depth (MaxCmdSN = ExpCmdSN + depth - 1).
    pub queue_depth: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Security,
    Operational,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// AuthMethod not negotiated yet.
    Start,
    /// AuthMethod=None agreed (or not required).
    NoneAgreed,
    /// AuthMethod=CHAP agreed, waiting for CHAP_A.
    WaitAlgorithm,
    /// Challenge sent, waiting for CHAP_N/CHAP_R.
    WaitResponse,
    /// Authenticated.
    Done,
}

/// The login state machine of one connection.
#[derive(Debug)]
pub struct LoginMachine {
    settings: LoginSettings,
    random: [u8; 17],
    stage: Stage,
    first: bool,
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    cmd_sn: u32,
    stat_sn: u32,
    initiator_name: Option<String>,
    initiator_alias: Option<String>,
    session_type: SessionType,
    target: Option<TargetAuthInfo>,
    chap: Option<ChapCredentials>,
    auth: Auth,
    negotiator: Negotiator,
    pending: Vec<u8>,
    sent_declarations: bool,
}

/// Decode a CHAP binary value (`0x` hex or `0b` base64).
pub fn decode_chap_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() % 2 != 0 {
            return None;
        }
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect()
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64_decode(b)
    } else {
        None
    }
}

/// Hex-encode with a `0x` prefix.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// Base64-encode with a `0b` prefix.
pub fn encode_base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::from("0b");
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                s.push(T[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// CHAP response: MD5(identifier || secret || challenge).
pub fn chap_md5(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn get<'a>(pairs: &'a [Pair], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl LoginMachine {
    /// `random`: 1 byte of CHAP identifier + 16 bytes of CHAP challenge (from the OS
    /// random source in the driver; fixed in tests).
    pub fn new(settings: LoginSettings, random: [u8; 17]) -> Self {
        let offer = settings.offer.clone();
        Self {
            settings,
            random,
            stage: Stage::Security,
            first: true,
            isid: [0; 6],
            tsih: 0,
            cid: 0,
            cmd_sn: 0,
            stat_sn: 0,
            initiator_name: None,
            initiator_alias: None,
            session_type: SessionType::Normal,
            target: None,
            chap: None,
            auth: Auth::Start,
            negotiator: Negotiator::new(offer),
            pending: Vec::new(),
            sent_declarations: false,
        }
    }

    /// The initiator name, once known (for logs and status).
    pub fn initiator_name(&self) -> Option<&str> {
        self.initiator_name.as_deref()
    }

    fn response(
        &mut self,
        req: &Pdu,
        flags: u8,
        status: LoginStatus,
        data: Vec<u8>,
        outcome: LoginOutcome,
    ) -> LoginOutput {
        let mut h = LoginRespBhs::zeroed_with(Opcode::LoginResp);
        h.flags = flags;
        h.version_max = 0;
        h.version_active = 0;
        h.isid = self.isid;
        h.tsih.set(
            if matches!(outcome, LoginOutcome::Complete(_)) || status == LoginStatus::SUCCESS {
                self.tsih
            } else {
                0
            },
        );
        h.itt.set(req.itt());
        h.stat_sn.set(self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        h.exp_cmd_sn.set(self.cmd_sn);
        h.max_cmd_sn.set(
            self.cmd_sn
                .wrapping_add(self.settings.queue_depth.max(1) - 1),
        );
        h.status_class = (status.0 >> 8) as u8;
        h.status_detail = status.0 as u8;
        LoginOutput {
            bhs: h.to_bhs(),
            data,
            outcome,
        }
    }

    fn fail(&mut self, req: &Pdu, status: LoginStatus) -> LoginOutput {
        self.stage = Stage::Done;
        let csg = (req.flags() >> 2) & 3;
        self.response(
            req,
            csg << 2,
            status,
            Vec::new(),
            LoginOutcome::Failed(status),
        )
    }

    /// Handle one PDU received during login.
    pub fn on_pdu(&mut self, pdu: &Pdu, env: &dyn LoginEnv) -> LoginOutput {
        if self.stage == Stage::Done {
            return self.fail(pdu, LoginStatus::INVALID_DURING_LOGIN);
        }
        if pdu.opcode() != Opcode::LoginReq {
            return self.fail(pdu, LoginStatus::INVALID_DURING_LOGIN);
        }
        let h = *pdu.view::<LoginReqBhs>();
        if self.first {
            self.isid = h.isid;
            self.tsih = h.tsih.get();
            self.cid = h.cid.get();
            self.cmd_sn = h.cmd_sn.get();
            self.stat_sn = h.exp_stat_sn.get();
            if h.version_min > 0 {
                return self.fail(pdu, LoginStatus::UNSUPPORTED_VERSION);
            }
        } else if h.isid != self.isid || h.tsih.get() != self.tsih || h.cid.get() != self.cid {
            return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
        }
        let transit = h.flags & FLAG_FINAL != 0;
        let cont = h.flags & FLAG_CONTINUE != 0;
        let csg = (h.flags >> 2) & 3;
        let nsg = h.flags & 3;
        if (transit && cont) || csg == 2 || csg == 3 || (transit && (nsg == 2 || nsg <= csg)) {
            return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
        }
        let stage = if csg == 0 {
            Stage::Security
        } else {
            Stage::Operational
        };
        if self.first {
            self.stage = stage;
        } else if stage != self.stage {
            return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
        }
        if self.pending.len() + pdu.data.len() > text::TEXT_LEN_MAX {
            return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
        }
        self.pending.extend_from_slice(&pdu.data);
        if cont {
            // More text follows: acknowledge with an empty response in the same stage.
            return self.response(
                pdu,
                csg << 2,
                LoginStatus::SUCCESS,
                Vec::new(),
                LoginOutcome::Continue,
            );
        }
        let textbuf = std::mem::take(&mut self.pending);
        let Ok(pairs) = text::parse(&textbuf) else {
            return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
        };
        let mut out: Vec<Pair> = Vec::new();
        if self.first {
            if let Err(st) = self.leading(&pairs, env, &mut out) {
                return self.fail(pdu, st);
            }
            self.first = false;
        }
        if let Err(st) = self.check_login_keys(&pairs) {
            return self.fail(pdu, st);
        }
        let auth_required = self.chap.is_some();
        match self.stage {
            Stage::Security => {
                if let Err(st) = self.security(&pairs, auth_required, &mut out) {
                    return self.fail(pdu, st);
                }
                for (k, v) in &pairs {
                    if text::is_login_key(k) {
                        continue;
                    }
                    if self
                        .negotiator
                        .handle(k, v, Phase::Security, &mut out)
                        .is_err()
                    {
                        return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
                    }
                }
            }
            Stage::Operational => {
                if auth_required && self.auth != Auth::Done {
                    // Initiator skipped the security stage the target requires.
                    return self.fail(pdu, LoginStatus::AUTH_FAILURE);
                }
                if !self.sent_declarations {
                    self.sent_declarations = true;
                    self.negotiator.target_declarations(&mut out);
                }
                for (k, v) in &pairs {
                    if matches!(
                        k.as_str(),
                        "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType"
                    ) {
                        continue;
                    }
                    if k == "AuthMethod" || k.starts_with("CHAP_") {
                        return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
                    }
                    if self
                        .negotiator
                        .handle(k, v, Phase::Operational, &mut out)
                        .is_err()
                    {
                        return self.fail(pdu, LoginStatus::INITIATOR_ERROR);
                    }
                }
            }
            Stage::Done => return self.fail(pdu, LoginStatus::INVALID_DURING_LOGIN),
        }
        // Decide whether to transit.
        let can_transit = match self.stage {
            Stage::Security => matches!(self.auth, Auth::NoneAgreed | Auth::Done),
            _ => true,
        };
        let data = text::encode(&out);
        if transit && can_transit {
            if nsg == 3 {
                let req = SessionRequest {
                    initiator_name: self.initiator_name.clone().unwrap_or_default(),
                    isid: self.isid,
                    target: self.target.as_ref().map(|t| t.iqn.clone()),
                    session_type: self.session_type,
                };
                if self.tsih == 0 {
                    match env.create_session(&req) {
                        Ok(tsih) => self.tsih = tsih,
                        Err(st) => return self.fail(pdu, st),
                    }
                }
                self.stage = Stage::Done;
                let params = self.negotiator.finish();
                let result = LoginResult {
                    session_type: self.session_type,
                    initiator_name: req.initiator_name,
                    initiator_alias: self.initiator_alias.clone(),
                    target: self.target.clone(),
                    isid: self.isid,
                    tsih: self.tsih,
                    cid: self.cid,
                    params,
                    exp_cmd_sn: self.cmd_sn,
                    next_stat_sn: self.stat_sn.wrapping_add(1),
                    authenticated: self.auth == Auth::Done,
                };
                let flags = FLAG_FINAL | (csg << 2) | nsg;
                return self.response(
                    pdu,
                    flags,
                    LoginStatus::SUCCESS,
                    data,
                    LoginOutcome::Complete(Box::new(result)),
                );
            }
            self.stage = Stage::Operational;
            let flags = FLAG_FINAL | (csg << 2) | nsg;
            return self.response(
                pdu,
                flags,
                LoginStatus::SUCCESS,
                data,
                LoginOutcome::Continue,
            );
        }
        self.response(
            pdu,
            csg << 2,
            LoginStatus::SUCCESS,
            data,
            LoginOutcome::Continue,
        )
    }

    /// Keys of the first login PDU: names, session type, target, ACL.
    fn leading(
        &mut self,
        pairs: &[Pair],
        env: &dyn LoginEnv,
        out: &mut Vec<Pair>,
    ) -> Result<(), LoginStatus> {
        let iname = get(pairs, "InitiatorName").ok_or(LoginStatus::MISSING_PARAMETER)?;
        if iname.is_empty() {
            return Err(LoginStatus::MISSING_PARAMETER);
        }
        self.initiator_name = Some(iname.to_string());
        self.initiator_alias = get(pairs, "InitiatorAlias").map(str::to_string);
        self.session_type = match get(pairs, "SessionType") {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(LoginStatus::SESSION_TYPE_NOT_SUPPORTED),
        };
        if self.tsih != 0 {
            // Adding a connection to an existing session: we allow one per session.
            if env.session_exists(self.tsih, iname, self.isid) {
                return Err(LoginStatus::TOO_MANY_CONNECTIONS);
            }
            return Err(LoginStatus::SESSION_DOES_NOT_EXIST);
        }
        match self.session_type {
            SessionType::Discovery => {
                self.chap = env.discovery_chap();
            }
            SessionType::Normal => {
                let tname = get(pairs, "TargetName").ok_or(LoginStatus::MISSING_PARAMETER)?;
                let t = env.target(tname).ok_or(LoginStatus::NOT_FOUND)?;
                if !t.portal_group_tags.is_empty()
                    && !t.portal_group_tags.contains(&self.settings.tpgt)
                {
                    return Err(LoginStatus::NOT_FOUND);
                }
                if !t.allows(iname) {
                    return Err(LoginStatus::AUTHORIZATION_FAILURE);
                }
                self.chap = t.chap.clone();
                out.push((
                    "TargetPortalGroupTag".into(),
                    self.settings.tpgt.to_string(),
                ));
                if let Some(a) = &t.alias {
                    out.push(("TargetAlias".into(), a.clone()));
                }
                self.target = Some(t);
            }
        }
        Ok(())
    }

    /// Names repeated in later PDUs must not change.
    fn check_login_keys(&self, pairs: &[Pair]) -> Result<(), LoginStatus> {
        if let (Some(v), Some(n)) = (get(pairs, "InitiatorName"), &self.initiator_name) {
            if v != n {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
        }
        if let (Some(v), Some(t)) = (get(pairs, "TargetName"), &self.target) {
            if v != t.iqn {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
        }
        Ok(())
    }

    fn security(
        &mut self,
        pairs: &[Pair],
        auth_required: bool,
        out: &mut Vec<Pair>,
    ) -> Result<(), LoginStatus> {
        if let Some(methods) = get(pairs, "AuthMethod") {
            if self.auth != Auth::Start {
                return Err(LoginStatus::INITIATOR_ERROR);
            }
            let list: Vec<&str> = methods.split(',').collect();
            let choice = if auth_required {
                list.iter().find(|m| **m == "CHAP")
            } else {
                list.iter().find(|m| **m == "None")
            };
            match choice {
                Some(&"CHAP") => {
                    self.auth = Auth::WaitAlgorithm;
                    out.push(("AuthMethod".into(), "CHAP".into()));
                }
                Some(_) => {
                    self.auth = Auth::NoneAgreed;
                    out.push(("AuthMethod".into(), "None".into()));
                }
                None => return Err(LoginStatus::AUTH_FAILURE),
            }
        } else if self.auth == Auth::Start {
            if auth_required {
                // Security stage without AuthMethod: wait for it unless the initiator
                // wants to move on already.
                let wants_chap_keys = pairs.iter().any(|(k, _)| k.starts_with("CHAP_"));
                if wants_chap_keys {
                    return Err(LoginStatus::AUTH_FAILURE);
                }
            } else {
                self.auth = Auth::NoneAgreed;
            }
        }
        let chap_a = get(pairs, "CHAP_A");
        let chap_n = get(pairs, "CHAP_N");
        let chap_r = get(pairs, "CHAP_R");
        match self.auth {
            Auth::WaitAlgorithm => {
                if let Some(a) = chap_a {
                    if !a.split(',').any(|x| x == "5") {
                        out.push(("CHAP_A".into(), "Reject".into()));
                        return Err(LoginStatus::AUTH_FAILURE);
                    }
                    out.push(("CHAP_A".into(), "5".into()));
                    out.push(("CHAP_I".into(), self.random[0].to_string()));
                    out.push(("CHAP_C".into(), encode_hex(&self.random[1..17])));
                    self.auth = Auth::WaitResponse;
                } else if chap_n.is_some() || chap_r.is_some() {
                    return Err(LoginStatus::AUTH_FAILURE);
                }
            }
            Auth::WaitResponse => {
                let (Some(n), Some(r)) = (chap_n, chap_r) else {
                    return Err(LoginStatus::AUTH_FAILURE);
                };
                let Some(creds) = self.chap.clone() else {
                    return Err(LoginStatus::AUTH_FAILURE);
                };
                let r = decode_chap_binary(r).ok_or(LoginStatus::AUTH_FAILURE)?;
                let expected = chap_md5(self.random[0], &creds.secret, &self.random[1..17]);
                // Evaluate both checks before deciding, so timing does not reveal which failed.
                let name_ok = ct_eq(n.as_bytes(), creds.user.as_bytes());
                let resp_ok = ct_eq(&r, &expected);
                if !(name_ok & resp_ok) {
                    return Err(LoginStatus::AUTH_FAILURE);
                }
                // Mutual CHAP: the initiator challenges us.
                match (get(pairs, "CHAP_I"), get(pairs, "CHAP_C")) {
                    (Some(i), Some(c)) => {
                        let mutual = self
                            .target
                            .as_ref()
                            .and_then(|t| t.mutual_chap.clone())
                            .ok_or(LoginStatus::AUTH_FAILURE)?;
                        let id = text::parse_number(i)
                            .filter(|v| *v <= 255)
                            .ok_or(LoginStatus::AUTH_FAILURE)?
                            as u8;
                        let challenge = decode_chap_binary(c).ok_or(LoginStatus::AUTH_FAILURE)?;
                        if challenge == self.random[1..17] || challenge.is_empty() {
                            // Reflection of our own challenge (RFC 7143 §12.1.3).
                            return Err(LoginStatus::AUTH_FAILURE);
                        }
                        let resp = chap_md5(id, &mutual.secret, &challenge);
                        out.push(("CHAP_N".into(), mutual.user.clone()));
                        out.push(("CHAP_R".into(), encode_hex(&resp)));
                    }
                    (None, None) => {}
                    _ => return Err(LoginStatus::AUTH_FAILURE),
                }
                self.auth = Auth::Done;
            }
            Auth::Start | Auth::NoneAgreed | Auth::Done => {
                if chap_a.is_some() || chap_n.is_some() || chap_r.is_some() {
                    return Err(LoginStatus::INITIATOR_ERROR);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;
    use std::cell::RefCell;

    pub(crate) struct TestEnv {
        pub targets: Vec<TargetAuthInfo>,
        pub discovery_chap: Option<ChapCredentials>,
        pub created: RefCell<Vec<SessionRequest>>,
    }

    impl LoginEnv for TestEnv {
        fn target(&self, iqn: &str) -> Option<TargetAuthInfo> {
            self.targets.iter().find(|t| t.iqn == iqn).cloned()
        }
        fn discovery_chap(&self) -> Option<ChapCredentials> {
            self.discovery_chap.clone()
        }
        fn session_exists(&self, tsih: u16, _: &str, _: [u8; 6]) -> bool {
            tsih == 77
        }
        fn create_session(&self, req: &SessionRequest) -> Result<u16, LoginStatus> {
            self.created.borrow_mut().push(req.clone());
            Ok(0x1234)
        }
    }

    pub(crate) const TGT: &str = "iqn.2026-11.org.example:disk";
    pub(crate) const INI: &str = "iqn.1994-05.com.example:host";

    pub(crate) fn env() -> TestEnv {
        TestEnv {
            targets: vec![TargetAuthInfo {
                iqn: TGT.into(),
                alias: Some("disk".into()),
                allowed_initiators: vec![],
                chap: None,
                mutual_chap: None,
                portal_group_tags: vec![],
            }],
            discovery_chap: None,
            created: RefCell::new(Vec::new()),
        }
    }

    fn settings() -> LoginSettings {
        LoginSettings {
            tpgt: 1,
            offer: TargetOffer::default(),
            queue_depth: 128,
        }
    }

    pub(crate) fn login_pdu(flags: u8, tsih: u16, pairs: &[(&str, &str)]) -> Pdu {
        let mut h = LoginReqBhs::zeroed_with(Opcode::LoginReq);
        h.opcode |= crate::pdu::FLAG_IMMEDIATE;
        h.flags = flags;
        h.isid = [0x80, 0, 0, 0x12, 0x34, 0];
        h.tsih.set(tsih);
        h.itt.set(1);
        h.cmd_sn.set(100);
        let mut data = Vec::new();
        for (k, v) in pairs {
            text::push_pair(&mut data, k, v);
        }
        Pdu::new(h.to_bhs(), Bytes::from(data))
    }

    fn status(o: &LoginOutput) -> u16 {
        let h = LoginRespBhs::view(&o.bhs);
        (u16::from(h.status_class) << 8) | u16::from(h.status_detail)
    }

    fn pairs(o: &LoginOutput) -> Vec<Pair> {
        text::parse(&o.data).unwrap()
    }

    const RANDOM: [u8; 17] = [7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

    #[test]
    fn normal_login_without_auth_in_one_pdu() {
        let e = env();
        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(
            &login_pdu(
                0x87, // T, CSG=1, NSG=3
                0,
                &[
                    ("InitiatorName", INI),
                    ("TargetName", TGT),
                    ("SessionType", "Normal"),
                    ("HeaderDigest", "None"),
                    ("MaxRecvDataSegmentLength", "262144"),
                    ("ImmediateData", "Yes"),
                    ("InitialR2T", "No"),
                ],
            ),
            &e,
        );
        assert_eq!(status(&o), 0);
        let h = LoginRespBhs::view(&o.bhs);
        assert_eq!(h.flags, 0x87);
        assert_eq!(h.tsih.get(), 0x1234);
        assert_eq!(h.exp_cmd_sn.get(), 100);
        assert_eq!(h.max_cmd_sn.get(), 227);
        let p = pairs(&o);
        assert!(p.contains(&("TargetPortalGroupTag".into(), "1".into())));
        assert!(p.contains(&("MaxRecvDataSegmentLength".into(), "262144".into())));
        assert!(p.contains(&("InitialR2T".into(), "No".into())));
        let LoginOutcome::Complete(r) = o.outcome else {
            panic!()
        };
        assert_eq!(r.session_type, SessionType::Normal);
        assert_eq!(r.params.initiator_max_recv_data_segment_len, 262_144);
        assert_eq!(e.created.borrow().len(), 1);
    }

    #[test]
    fn discovery_login_two_stages() {
        let e = env();
        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(
            &login_pdu(
                0x81, // T, CSG=0, NSG=1
                0,
                &[
                    ("InitiatorName", INI),
                    ("SessionType", "Discovery"),
                    ("AuthMethod", "None"),
                ],
            ),
            &e,
        );
        assert_eq!(status(&o), 0);
        assert_eq!(LoginRespBhs::view(&o.bhs).flags, 0x81);
        assert_eq!(
            pairs(&o),
            vec![("AuthMethod".to_string(), "None".to_string())]
        );
        assert!(matches!(o.outcome, LoginOutcome::Continue));
        let o = m.on_pdu(&login_pdu(0x87, 0, &[("HeaderDigest", "None")]), &e);
        assert_eq!(status(&o), 0);
        let LoginOutcome::Complete(r) = o.outcome else {
            panic!()
        };
        assert_eq!(r.session_type, SessionType::Discovery);
        assert!(r.target.is_none());
    }

    #[test]
    fn missing_initiator_name_unknown_target_acl() {
        let mut e = env();
        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(&login_pdu(0x87, 0, &[("TargetName", TGT)]), &e);
        assert_eq!(status(&o), 0x0207);
        assert!(matches!(o.outcome, LoginOutcome::Failed(_)));

        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(
            &login_pdu(
                0x87,
                0,
                &[("InitiatorName", INI), ("TargetName", "iqn.x:nope")],
            ),
            &e,
        );
        assert_eq!(status(&o), 0x0203);

        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(&login_pdu(0x87, 0, &[("InitiatorName", INI)]), &e);
        assert_eq!(status(&o), 0x0207, "normal session needs TargetName");

        e.targets[0].allowed_initiators = vec!["iqn.other".into()];
        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(
            &login_pdu(0x87, 0, &[("InitiatorName", INI), ("TargetName", TGT)]),
            &e,
        );
        assert_eq!(status(&o), 0x0202);

        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(
            &login_pdu(0x87, 99, &[("InitiatorName", INI), ("TargetName", TGT)]),
            &e,
        );
        assert_eq!(status(&o), 0x020a);
    }

    fn chap_env(mutual: bool) -> TestEnv {
        let mut e = env();
        e.targets[0].chap = Some(ChapCredentials {
            user: "alice".into(),
            secret: b"alicesecret12".to_vec(),
        });
        if mutual {
            e.targets[0].mutual_chap = Some(ChapCredentials {
                user: "target".into(),
                secret: b"targetsecret12".to_vec(),
            });
        }
        e
    }

    fn chap_start(m: &mut LoginMachine, e: &TestEnv) -> (u8, Vec<u8>) {
        let o = m.on_pdu(
            &login_pdu(
                0x81,
                0,
                &[
                    ("InitiatorName", INI),
                    ("TargetName", TGT),
                    ("AuthMethod", "CHAP,None"),
                ],
            ),
            e,
        );
        assert_eq!(status(&o), 0);
        assert_eq!(
            LoginRespBhs::view(&o.bhs).flags & 0x80,
            0,
            "no transit before auth"
        );
        assert!(pairs(&o).contains(&("AuthMethod".into(), "CHAP".into())));
        let o = m.on_pdu(&login_pdu(0x01, 0, &[("CHAP_A", "7,5")]), e);
        let p = pairs(&o);
        assert_eq!(get(&p, "CHAP_A"), Some("5"));
        let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
        let c = decode_chap_binary(get(&p, "CHAP_C").unwrap()).unwrap();
        (id, c)
    }

    #[test]
    fn chap_one_way_success_and_base64() {
        for b64 in [false, true] {
            let e = chap_env(false);
            let mut m = LoginMachine::new(settings(), RANDOM);
            let (id, c) = chap_start(&mut m, &e);
            assert_eq!(id, 7);
            assert_eq!(c, RANDOM[1..].to_vec());
            let r = chap_md5(id, b"alicesecret12", &c);
            let enc = if b64 {
                encode_base64(&r)
            } else {
                encode_hex(&r)
            };
            let o = m.on_pdu(
                &login_pdu(0x81, 0, &[("CHAP_N", "alice"), ("CHAP_R", &enc)]),
                &e,
            );
            assert_eq!(status(&o), 0);
            assert_eq!(LoginRespBhs::view(&o.bhs).flags, 0x81);
            let o = m.on_pdu(&login_pdu(0x87, 0, &[]), &e);
            let LoginOutcome::Complete(r) = o.outcome else {
                panic!()
            };
            assert!(r.authenticated);
        }
    }

    #[test]
    fn chap_wrong_secret_fails() {
        let e = chap_env(false);
        let mut m = LoginMachine::new(settings(), RANDOM);
        let (id, c) = chap_start(&mut m, &e);
        let r = chap_md5(id, b"wrongsecret!", &c);
        let o = m.on_pdu(
            &login_pdu(0x81, 0, &[("CHAP_N", "alice"), ("CHAP_R", &encode_hex(&r))]),
            &e,
        );
        assert_eq!(status(&o), 0x0201);
    }

    #[test]
    fn chap_required_but_initiator_offers_none() {
        let e = chap_env(false);
        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(
            &login_pdu(
                0x81,
                0,
                &[
                    ("InitiatorName", INI),
                    ("TargetName", TGT),
                    ("AuthMethod", "None"),
                ],
            ),
            &e,
        );
        assert_eq!(status(&o), 0x0201);
        // Skipping the security stage is refused too.
        let mut m = LoginMachine::new(settings(), RANDOM);
        let o = m.on_pdu(
            &login_pdu(0x87, 0, &[("InitiatorName", INI), ("TargetName", TGT)]),
            &e,
        );
        assert_eq!(status(&o), 0x0201);
    }

    #[test]
    fn chap_bad_algorithm_fails() {
        let e = chap_env(false);
        let mut m = LoginMachine::new(settings(), RANDOM);
        let _ = m.on_pdu(
            &login_pdu(
                0x81,
                0,
                &[
                    ("InitiatorName", INI),
                    ("TargetName", TGT),
                    ("AuthMethod", "CHAP"),
                ],
            ),
            &e,
        );
        let o = m.on_pdu(&login_pdu(0x01, 0, &[("CHAP_A", "56")]), &e);
        assert_eq!(status(&o), 0x0201);
    }

    #[test]
    fn chap_mutual_success_and_reflection_refused() {
        let e = chap_env(true);
        let mut m = LoginMachine::new(settings(), RANDOM);
        let (id, c) = chap_start(&mut m, &e);
        let r = encode_hex(&chap_md5(id, b"alicesecret12", &c));
        let my_c = [9u8; 16];
        let o = m.on_pdu(
            &login_pdu(
                0x81,
                0,
                &[
                    ("CHAP_N", "alice"),
                    ("CHAP_R", &r),
                    ("CHAP_I", "33"),
                    ("CHAP_C", &encode_hex(&my_c)),
                ],
            ),
            &e,
        );
        assert_eq!(status(&o), 0);
        let p = pairs(&o);
        assert_eq!(get(&p, "CHAP_N"), Some("target"));
        let expect = encode_hex(&chap_md5(33, b"targetsecret12", &my_c));
        assert_eq!(get(&p, "CHAP_R"), Some(expect.as_str()));

        // Initiator sends our own challenge back: refused.
        let mut m = LoginMachine::new(settings(), RANDOM);
        let (id, c) = chap_start(&mut m, &e);
        let r = encode_hex(&chap_md5(id, b"alicesecret12", &c));
        let o = m.on_pdu(
            &login_pdu(
                0x81,
                0,
                &[
                    ("CHAP_N", "alice"),
                    ("CHAP_R", &r),
                    ("CHAP_I", "33"),
                    ("CHAP_C", &encode_hex(&c)),
                ],
            ),
            &e,
        );
        assert_eq!(status(&o), 0x0201);
    }

    #[test]
    fn continue_bit_accumulates_text() {
        let e = env();
        let mut m = LoginMachine::new(settings(), RANDOM);
        // First PDU: C=1, CSG=1, text split in the middle of a pair.
        let mut p1 = login_pdu(0x44, 0, &[]);
        p1.data = Bytes::from_static(b"InitiatorName=iqn.1994-05.com.example:host\0TargetNa");
        let o = m.on_pdu(&p1, &e);
        assert_eq!(status(&o), 0);
        assert!(o.data.is_empty());
        let mut p2 = login_pdu(0x87, 0, &[]);
        p2.data = Bytes::from(format!("me={TGT}\0").into_bytes());
        let o = m.on_pdu(&p2, &e);
        assert_eq!(status(&o), 0);
        assert!(matches!(o.outcome, LoginOutcome::Complete(_)));
    }

    #[test]
    fn duplicate_key_and_bad_version() {
        let e = env();
        let mut m = LoginMachine::new(settings(), RANDOM);
        let mut p = login_pdu(0x87, 0, &[]);
        p.data = Bytes::from(
            format!("InitiatorName={INI}\0TargetName={TGT}\0InitialR2T=No\0InitialR2T=No\0")
                .into_bytes(),
        );
        let o = m.on_pdu(&p, &e);
        assert_eq!(status(&o), 0x0200);

        let mut m = LoginMachine::new(settings(), RANDOM);
        let mut p = login_pdu(0x87, 0, &[("InitiatorName", INI), ("TargetName", TGT)]);
        p.bhs[3] = 1; // Version-min 1
        let o = m.on_pdu(&p, &e);
        assert_eq!(status(&o), 0x0205);
    }
}
