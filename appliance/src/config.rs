//! The node configuration file (`twinsan.toml`): its schema, parsing, and validation.
//!
//! Owns: turning a TOML file into a validated [`NodeConfig`], and reporting *every*
//! problem with file, key and reason (`twinsan check`). It reads secret files (through
//! [`crate::secrets`]) only to validate them; it opens no devices and no sockets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Namespace for LUN identities derived from (target IQN, LUN number): both heads that
/// export the same target/LUN derive the same UUID, hence the same NAA id and serial.
pub const LUN_UUID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x7477_696e_7361_6e00_8000_4c55_4e00_0001);

/// Derive the stable identity of LUN `lun` of target `iqn`.
pub fn derived_lun_uuid(iqn: &str, lun: u64) -> uuid::Uuid {
    uuid::Uuid::new_v5(&LUN_UUID_NAMESPACE, format!("{iqn}/{lun}").as_bytes())
}

/// Whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`: node-wide settings.
    #[serde(default)]
    pub node: NodeSection,
    /// `[iscsi]`: iSCSI protocol defaults.
    #[serde(default)]
    pub iscsi: IscsiSection,
    /// `[[portal_group]]`: where targets listen.
    #[serde(default, rename = "portal_group")]
    pub portal_groups: Vec<PortalGroupSection>,
    /// `[alua]`: asymmetric access (target port groups and their states).
    #[serde(default)]
    pub alua: AluaSection,
    /// `[[target]]`: exported targets.
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetSection>,
    /// `[[replicated]]`: replicated volumes (DRBD-like) a LUN can sit on.
    #[serde(default, rename = "replicated")]
    pub replicated: Vec<crate::replicated::ReplicatedSection>,
    /// `[cluster]`: the HA manager (absent: a node driven by hand).
    pub cluster: Option<crate::ha::ClusterSection>,
}

/// `[node]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// A name for logs and status (also names the default control socket).
    pub name: Option<String>,
    /// Control socket (Unix socket, mode 0600) for `twinsan alua ...`; default
    /// `$XDG_RUNTIME_DIR/twinsan/NAME.sock`, `/run/twinsan/NAME.sock` as root, else
    /// `$TMPDIR/twinsan-UID/NAME.sock`. An empty string disables it.
    pub control_socket: Option<PathBuf>,
}

/// `[iscsi]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IscsiSection {
    /// Largest data segment we accept in one PDU (declared to initiators).
    pub max_recv_data_segment_len_bytes: u32,
    /// Largest burst we offer.
    pub max_burst_len_bytes: u32,
    /// Largest unsolicited burst we offer.
    pub first_burst_len_bytes: u32,
    /// Commands an initiator may have outstanding per session.
    pub queue_depth: u32,
    /// Interval of target-initiated NOP-In pings (0 = off).
    pub nop_in_interval_ms: u64,
    /// Drop a connection whose initiator does not answer a ping within this time.
    pub nop_in_timeout_ms: u64,
    /// Most sessions at once (all targets).
    pub max_sessions: u32,
    /// A login must complete within this time.
    pub login_timeout_ms: u64,
    /// CHAP user for discovery sessions (optional).
    pub discovery_chap_user: Option<String>,
    /// File holding the discovery CHAP secret.
    pub discovery_chap_secret_file: Option<PathBuf>,
}

impl Default for IscsiSection {
    fn default() -> Self {
        let d = twinsan_iscsi::ServerConfig::default();
        Self {
            max_recv_data_segment_len_bytes: d.max_recv_data_segment_len_bytes,
            max_burst_len_bytes: d.max_burst_len_bytes,
            first_burst_len_bytes: d.first_burst_len_bytes,
            queue_depth: d.queue_depth,
            nop_in_interval_ms: d.nop_in_interval_ms,
            nop_in_timeout_ms: d.nop_in_timeout_ms,
            max_sessions: d.max_sessions,
            login_timeout_ms: d.login_timeout_ms,
            discovery_chap_user: None,
            discovery_chap_secret_file: None,
        }
    }
}

/// `[[portal_group]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalGroupSection {
    /// Target portal group tag (1..=65535).
    pub tag: u16,
    /// Portals (`ADDR:PORT`).
    pub listen: Vec<String>,
    /// Relative target port identifier of this portal group (1..=65535, unique on the
    /// node and across the two heads of a pair); default: the tag.
    pub relative_port_id: Option<u16>,
    /// ALUA target port group it belongs to; default: the tag.
    pub alua_group_id: Option<u16>,
}

impl PortalGroupSection {
    /// The relative target port id (configured or the tag).
    pub fn relative_port_id(&self) -> u16 {
        self.relative_port_id.unwrap_or(self.tag)
    }

    /// The ALUA target port group id (configured or the tag).
    pub fn alua_group_id(&self) -> u16 {
        self.alua_group_id.unwrap_or(self.tag)
    }
}

/// `[alua]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AluaSection {
    /// Accept SET TARGET PORT GROUPS from initiators (explicit ALUA).
    pub explicit: bool,
    /// IMPLICIT TRANSITION TIME reported to initiators, in seconds.
    pub implicit_transition_time_s: u8,
    /// `[[alua.group]]`: initial state / PREF bit of local groups, and groups of the
    /// peer head's ports.
    #[serde(rename = "group")]
    pub groups: Vec<AluaGroupSection>,
}

impl Default for AluaSection {
    fn default() -> Self {
        Self {
            explicit: false,
            implicit_transition_time_s: twinsan_scsi::AluaConfig::DEFAULT_TRANSITION_TIME_S,
            groups: Vec::new(),
        }
    }
}

/// `[[alua.group]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AluaGroupSection {
    /// Target port group id.
    pub id: u16,
    /// Initial state: active-optimized | active-non-optimized | standby | unavailable |
    /// offline | transitioning.
    #[serde(default = "default_alua_state")]
    pub state: String,
    /// PREF bit.
    #[serde(default)]
    pub preferred: bool,
    /// Member ports that are not portal groups of this node (the peer head's).
    #[serde(default)]
    pub relative_port_ids: Vec<u16>,
}

fn default_alua_state() -> String {
    "active-optimized".to_owned()
}

/// `[[target]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Target name (iqn.YYYY-MM.reversed.domain[:id] or eui./naa.).
    pub iqn: String,
    /// Optional alias shown to initiators.
    pub alias: Option<String>,
    /// Portal groups this target is reachable through (default: all).
    #[serde(default)]
    pub portal_groups: Vec<u16>,
    /// Initiator IQNs allowed to log in; empty = any initiator.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    /// CHAP user the initiator must authenticate as.
    pub chap_user: Option<String>,
    /// File holding that user's secret.
    pub chap_secret_file: Option<PathBuf>,
    /// CHAP user the target answers as (mutual CHAP).
    pub mutual_chap_user: Option<String>,
    /// File holding the target's secret for mutual CHAP.
    pub mutual_chap_secret_file: Option<PathBuf>,
    /// LUNs.
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunSection>,
}

/// `[[target.lun]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunSection {
    /// LUN number (0..=16383).
    pub lun: u64,
    /// Backing file or block device (or `replicated`).
    pub path: Option<PathBuf>,
    /// Name of a `[[replicated]]` volume to serve instead of `path`.
    pub replicated: Option<String>,
    /// Create a sparse file of this size if `path` does not exist (e.g. "10GiB").
    pub size: Option<String>,
    /// Stable identity (NAA id and serial derive from it); default: derived from the
    /// target IQN and LUN number, so both heads report the same device.
    pub uuid: Option<uuid::Uuid>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// Let writes complete from the page/device cache (WCE=1; SYNCHRONIZE CACHE makes
    /// them durable). `false` makes every write durable before it completes.
    #[serde(default = "default_true")]
    pub write_cache: bool,
    /// I/O engine: "auto" | "io_uring" | "sync".
    #[serde(default = "default_auto")]
    pub engine: String,
    /// O_DIRECT: "auto" | "on" | "off".
    #[serde(default = "default_auto")]
    pub direct_io: String,
    /// Logical block size: 512 or 4096 (block devices: their own).
    pub block_size: Option<u32>,
    /// Where persistent-reservation state is kept durably (APTPL). Default for a file:
    /// `<path>.pr` next to the data; for a block device there is no default (state is
    /// then kept in memory only and APTPL is refused). Not allowed on a replicated LUN:
    /// its record lives in the last 128 KiB of the replicated volume, replicated with the
    /// data.
    pub pr_file: Option<PathBuf>,
}

impl LunSection {
    /// The persistent-reservation record file for this LUN, if any.
    pub fn pr_file(&self) -> Option<PathBuf> {
        if let Some(p) = &self.pr_file {
            return Some(p.clone());
        }
        // A replicated LUN keeps its record on the replicated volume instead.
        let path = self.path.as_ref()?;
        let is_block = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
            .unwrap_or(false);
        if is_block {
            None
        } else {
            let mut s = path.clone().into_os_string();
            s.push(".pr");
            Some(PathBuf::from(s))
        }
    }
}

/// The ALUA configuration of a target reachable through `portal_groups` (tags; empty
/// = every portal group): one target port group per distinct `alua_group_id` of those
/// portal groups (members: their relative port ids), plus every `[[alua.group]]`
/// (which may set a local group's state and PREF bit and add peer ports to it).
/// Groups left without ports are dropped. `cfg` must be valid.
pub fn alua_config(cfg: &NodeConfig, portal_groups: &[u16]) -> twinsan_scsi::AluaConfig {
    use twinsan_scsi::{AccessState, PortGroupConfig};
    let mut groups: Vec<PortGroupConfig> = Vec::new();
    for pg in &cfg.portal_groups {
        if !portal_groups.is_empty() && !portal_groups.contains(&pg.tag) {
            continue;
        }
        let id = pg.alua_group_id();
        match groups.iter_mut().find(|g| g.id == id) {
            Some(g) => g.relative_port_ids.push(pg.relative_port_id()),
            None => groups.push(PortGroupConfig {
                id,
                state: AccessState::ActiveOptimized,
                preferred: false,
                relative_port_ids: vec![pg.relative_port_id()],
            }),
        }
    }
    for ag in &cfg.alua.groups {
        let state = ag.state.parse().unwrap_or(AccessState::ActiveOptimized);
        match groups.iter_mut().find(|g| g.id == ag.id) {
            Some(g) => {
                g.state = state;
                g.preferred = ag.preferred;
                g.relative_port_ids.extend_from_slice(&ag.relative_port_ids);
            }
            None => groups.push(PortGroupConfig {
                id: ag.id,
                state,
                preferred: ag.preferred,
                relative_port_ids: ag.relative_port_ids.clone(),
            }),
        }
    }
    // A local group none of whose portal groups serve this target, and with no peer
    // ports, has no ports of this target.
    groups.retain(|g| !g.relative_port_ids.is_empty());
    twinsan_scsi::AluaConfig {
        groups,
        explicit: cfg.alua.explicit,
        implicit_transition_time_s: cfg.alua.implicit_transition_time_s,
    }
}

fn default_true() -> bool {
    true
}

fn default_auto() -> String {
    "auto".to_owned()
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// Dotted key path, e.g. `target[0].lun[1].path`.
    pub key: String,
    /// Why it is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
    }
}

/// Parse a size such as `512`, `64M`, `10GiB`, `1.5T` (binary units) into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G, T)")),
    };
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (e.g. 64M, 10GiB)"));
    }
    let bytes = if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
        let b = v * mult as f64;
        if !(0.0..1.8e19).contains(&b) {
            return Err(format!("{s:?} is out of range"));
        }
        b as u64
    } else {
        let v: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
        v.checked_mul(mult)
            .ok_or_else(|| format!("{s:?} is out of range"))?
    };
    Ok(bytes)
}

/// Whether `name` looks like an iSCSI name (RFC 7143 §4.2.7: iqn., eui., naa.).
pub fn valid_iscsi_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 223 {
        return Err("must be 1 to 223 bytes".into());
    }
    if name
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))
    {
        return Err("may contain only a-z, 0-9, '.', '-' and ':' (lower case)".into());
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("must be lower case".into());
    }
    if let Some(rest) = name.strip_prefix("iqn.") {
        // iqn.YYYY-MM.reversed.domain[:identifier]
        let b = rest.as_bytes();
        let date_ok = b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.';
        if !date_ok {
            return Err("an iqn. name must look like iqn.YYYY-MM.reversed.domain[:id]".into());
        }
        Ok(())
    } else if let Some(hex) = name.strip_prefix("eui.") {
        if hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("an eui. name needs 16 hex digits".into())
        }
    } else if let Some(hex) = name.strip_prefix("naa.") {
        if (hex.len() == 16 || hex.len() == 32) && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err("a naa. name needs 16 or 32 hex digits".into())
        }
    } else {
        Err("must start with iqn., eui. or naa.".into())
    }
}

/// Read and parse a config file without the semantic checks of [`validate`] (for
/// clients that only need the control socket path).
pub fn parse_file(path: &Path) -> Result<NodeConfig, Vec<Problem>> {
    let problem = |key: &str, reason: String| Problem {
        file: path.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![problem("(file)", format!("cannot read: {e}"))])?;
    let cfg: NodeConfig = toml::from_str(&text).map_err(|e| {
        let key = match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}")
            }
            None => "(syntax)".to_owned(),
        };
        vec![problem(&key, e.message().to_owned())]
    })?;
    Ok(cfg)
}

/// Read and parse a config file; on failure, every problem found.
pub fn load(path: &Path) -> Result<NodeConfig, Vec<Problem>> {
    let cfg = parse_file(path)?;
    let problems = validate(&cfg, path);
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(problems)
    }
}

/// Check a parsed config for semantic problems (all of them, not just the first).
pub fn validate(cfg: &NodeConfig, file: &Path) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut p = |key: String, reason: String| {
        out.push(Problem {
            file: file.to_owned(),
            key,
            reason,
        })
    };
    let is = &cfg.iscsi;
    if !(512..=16_777_215).contains(&is.max_recv_data_segment_len_bytes) {
        p(
            "iscsi.max_recv_data_segment_len_bytes".into(),
            "must be 512..=16777215 (RFC 7143)".into(),
        );
    }
    if !(512..=16_777_215).contains(&is.max_burst_len_bytes) {
        p(
            "iscsi.max_burst_len_bytes".into(),
            "must be 512..=16777215".into(),
        );
    }
    if !(512..=16_777_215).contains(&is.first_burst_len_bytes) {
        p(
            "iscsi.first_burst_len_bytes".into(),
            "must be 512..=16777215".into(),
        );
    } else if is.first_burst_len_bytes > is.max_burst_len_bytes {
        p(
            "iscsi.first_burst_len_bytes".into(),
            "must not exceed max_burst_len_bytes (RFC 7143 §13.14)".into(),
        );
    }
    if !(1..=1024).contains(&is.queue_depth) {
        p("iscsi.queue_depth".into(), "must be 1..=1024".into());
    }
    if is.nop_in_interval_ms != 0 && is.nop_in_timeout_ms < is.nop_in_interval_ms {
        p(
            "iscsi.nop_in_timeout_ms".into(),
            "must be at least nop_in_interval_ms".into(),
        );
    }
    if is.max_sessions == 0 {
        p("iscsi.max_sessions".into(), "must be at least 1".into());
    }
    check_chap_pair(
        &mut p,
        "iscsi.discovery_chap",
        &is.discovery_chap_user,
        &is.discovery_chap_secret_file,
    );

    let mut tags = BTreeSet::new();
    let mut rel_ids: BTreeMap<u16, String> = BTreeMap::new();
    let mut addrs: BTreeMap<SocketAddr, u16> = BTreeMap::new();
    if cfg.portal_groups.is_empty() && !cfg.targets.is_empty() {
        p(
            "portal_group".into(),
            "no [[portal_group]] defined: targets would be unreachable".into(),
        );
    }
    for (i, pg) in cfg.portal_groups.iter().enumerate() {
        let key = format!("portal_group[{i}]");
        if pg.tag == 0 {
            p(format!("{key}.tag"), "must be 1..=65535".into());
        }
        if !tags.insert(pg.tag) {
            p(
                format!("{key}.tag"),
                format!("tag {} is used twice", pg.tag),
            );
        }
        if pg.listen.is_empty() {
            p(
                format!("{key}.listen"),
                "needs at least one ADDR:PORT".into(),
            );
        }
        let rel = pg.relative_port_id();
        if rel == 0 {
            p(
                format!("{key}.relative_port_id"),
                "must be 1..=65535 (0 is reserved)".into(),
            );
        } else if let Some(other) = rel_ids.insert(rel, format!("{key}.relative_port_id")) {
            p(
                format!("{key}.relative_port_id"),
                format!("relative port id {rel} is already used by {other} (every portal group is its own target port)"),
            );
        }
        for (j, l) in pg.listen.iter().enumerate() {
            match l.parse::<SocketAddr>() {
                Ok(a) => {
                    if let Some(other) = addrs.insert(a, pg.tag) {
                        p(
                            format!("{key}.listen[{j}]"),
                            format!("{a} is already a portal of group {other}"),
                        );
                    }
                }
                Err(_) => p(
                    format!("{key}.listen[{j}]"),
                    format!("{l:?} is not ADDR:PORT (e.g. 0.0.0.0:3260 or [::1]:3260)"),
                ),
            }
        }
    }

    let local_groups: BTreeSet<u16> = cfg
        .portal_groups
        .iter()
        .map(PortalGroupSection::alua_group_id)
        .collect();
    let mut alua_ids = BTreeSet::new();
    for (i, g) in cfg.alua.groups.iter().enumerate() {
        let key = format!("alua.group[{i}]");
        if !alua_ids.insert(g.id) {
            p(
                format!("{key}.id"),
                format!("group {} is listed twice", g.id),
            );
        }
        if let Err(e) = g.state.parse::<twinsan_scsi::AccessState>() {
            p(format!("{key}.state"), e.to_string());
        }
        if !local_groups.contains(&g.id) && g.relative_port_ids.is_empty() {
            p(
                format!("{key}.relative_port_ids"),
                format!(
                    "group {} is not a local group (no portal group has alua_group_id = {}), so it needs the peer's relative port ids",
                    g.id, g.id
                ),
            );
        }
        for (j, r) in g.relative_port_ids.iter().enumerate() {
            let rkey = format!("{key}.relative_port_ids[{j}]");
            if *r == 0 {
                p(rkey, "must be 1..=65535 (0 is reserved)".into());
            } else if let Some(other) = rel_ids.insert(*r, rkey.clone()) {
                p(
                    rkey,
                    format!("relative port id {r} is already used by {other}"),
                );
            }
        }
    }

    let mut iqns = BTreeSet::new();
    let mut paths: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut repl_users: BTreeMap<String, String> = BTreeMap::new();
    crate::replicated::validate(cfg, &mut p, &mut paths);
    if let Some(c) = &cfg.cluster {
        crate::ha::validate(c, &mut p);
    }
    for (i, t) in cfg.targets.iter().enumerate() {
        let key = format!("target[{i}]");
        if let Err(e) = valid_iscsi_name(&t.iqn) {
            p(format!("{key}.iqn"), format!("{:?}: {e}", t.iqn));
        }
        if !iqns.insert(t.iqn.clone()) {
            p(format!("{key}.iqn"), format!("{} is defined twice", t.iqn));
        }
        for (j, tag) in t.portal_groups.iter().enumerate() {
            if !tags.contains(tag) {
                p(
                    format!("{key}.portal_groups[{j}]"),
                    format!("no [[portal_group]] with tag {tag}"),
                );
            }
        }
        for (j, ini) in t.allowed_initiators.iter().enumerate() {
            if let Err(e) = valid_iscsi_name(ini) {
                p(
                    format!("{key}.allowed_initiators[{j}]"),
                    format!("{ini:?}: {e}"),
                );
            }
        }
        check_chap_pair(
            &mut p,
            &format!("{key}.chap"),
            &t.chap_user,
            &t.chap_secret_file,
        );
        check_chap_pair(
            &mut p,
            &format!("{key}.mutual_chap"),
            &t.mutual_chap_user,
            &t.mutual_chap_secret_file,
        );
        if t.mutual_chap_user.is_some() && t.chap_user.is_none() {
            p(
                format!("{key}.mutual_chap_user"),
                "mutual CHAP needs chap_user/chap_secret_file too (RFC 7143 §12.1.3)".into(),
            );
        }
        if t.luns.is_empty() {
            p(
                format!("{key}.lun"),
                "a target needs at least one [[target.lun]]".into(),
            );
        }
        let mut nums = BTreeSet::new();
        for (j, l) in t.luns.iter().enumerate() {
            let lkey = format!("{key}.lun[{j}]");
            if l.lun > 16383 {
                p(format!("{lkey}.lun"), "must be 0..=16383".into());
            }
            if !nums.insert(l.lun) {
                p(
                    format!("{lkey}.lun"),
                    format!("LUN {} is defined twice", l.lun),
                );
            }
            match (&l.path, &l.replicated) {
                (Some(_), Some(_)) => p(
                    format!("{lkey}.replicated"),
                    "give either path or replicated, not both".into(),
                ),
                (None, None) => p(
                    format!("{lkey}.path"),
                    "a LUN needs path = \"...\" (file or block device) or replicated = \"NAME\""
                        .into(),
                ),
                (None, Some(name)) => {
                    if !cfg.replicated.iter().any(|r| r.name == *name) {
                        p(
                            format!("{lkey}.replicated"),
                            format!("no [[replicated]] volume named {name:?}"),
                        );
                    } else if let Some(other) = repl_users.insert(name.clone(), lkey.clone()) {
                        p(
                            format!("{lkey}.replicated"),
                            format!("replicated volume {name:?} is already used by {other}"),
                        );
                    }
                    if l.size.is_some() {
                        p(
                            format!("{lkey}.size"),
                            "a replicated LUN has the size of its volume (set size in [[replicated]])"
                                .into(),
                        );
                    }
                    if l.block_size.is_some() {
                        p(
                            format!("{lkey}.block_size"),
                            "a replicated LUN has the block size of its volume's disk".into(),
                        );
                    }
                }
                (Some(path), None) => {
                    if let Some(other) = paths.insert(path.clone(), lkey.clone()) {
                        p(
                            format!("{lkey}.path"),
                            format!("{} is already used by {other}", path.display()),
                        );
                    }
                    let exists = path.exists();
                    if l.read_only && !exists {
                        p(
                            format!("{lkey}.path"),
                            format!(
                                "{} does not exist, and a read-only LUN cannot create it",
                                path.display()
                            ),
                        );
                    }
                    match &l.size {
                        Some(s) => match parse_size(s) {
                            Ok(b) if b < 4096 => {
                                p(format!("{lkey}.size"), "must be at least 4KiB".into())
                            }
                            Ok(_) => {}
                            Err(e) => p(format!("{lkey}.size"), e),
                        },
                        None if !exists => p(
                            format!("{lkey}.path"),
                            format!(
                                "{} does not exist (give size = \"...\" to create it)",
                                path.display()
                            ),
                        ),
                        None => {}
                    }
                }
            }
            if !matches!(l.engine.as_str(), "auto" | "io_uring" | "sync") {
                p(
                    format!("{lkey}.engine"),
                    format!("{:?}: must be auto, io_uring or sync", l.engine),
                );
            }
            if !matches!(l.direct_io.as_str(), "auto" | "on" | "off") {
                p(
                    format!("{lkey}.direct_io"),
                    format!("{:?}: must be auto, on or off", l.direct_io),
                );
            }
            if l.pr_file.is_some() && l.replicated.is_some() {
                p(
                    format!("{lkey}.pr_file"),
                    "not used with `replicated`: the reservation record is kept on the \
                     replicated volume itself"
                        .into(),
                );
            }
            if let Some(pr) = &l.pr_file {
                match pr.parent() {
                    Some(d) if d.as_os_str().is_empty() || d.is_dir() => {}
                    _ => p(
                        format!("{lkey}.pr_file"),
                        format!("directory of {} does not exist", pr.display()),
                    ),
                }
            }
            if let Some(bs) = l.block_size {
                if bs != 512 && bs != 4096 {
                    p(format!("{lkey}.block_size"), "must be 512 or 4096".into());
                }
            }
        }
    }
    out
}

fn check_chap_pair(
    p: &mut impl FnMut(String, String),
    key: &str,
    user: &Option<String>,
    file: &Option<PathBuf>,
) {
    match (user, file) {
        (None, None) => {}
        (Some(_), None) => p(
            format!("{key}_secret_file"),
            format!("{key}_user is set but {key}_secret_file is missing"),
        ),
        (None, Some(_)) => p(
            format!("{key}_user"),
            format!("{key}_secret_file is set but {key}_user is missing"),
        ),
        (Some(u), Some(f)) => {
            if u.is_empty() || u.len() > 255 || u.contains('\0') {
                p(format!("{key}_user"), "must be 1..=255 bytes".into());
            }
            if let Err(e) = crate::secrets::read_secret_file(f) {
                p(format!("{key}_secret_file"), e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn iscsi_names() {
        assert!(valid_iscsi_name("iqn.2026-11.org.twinsan:demo").is_ok());
        assert!(valid_iscsi_name("eui.02004567A425678D").is_err()); // upper case
        assert!(valid_iscsi_name("eui.02004567a425678d").is_ok());
        assert!(valid_iscsi_name("iqn.26-11.org").is_err());
        assert!(valid_iscsi_name("foo").is_err());
        assert!(valid_iscsi_name("iqn.2026-11.org.x y").is_err());
    }

    #[test]
    fn derived_uuid_is_stable_and_distinct() {
        let a = derived_lun_uuid("iqn.2026-11.org.twinsan:a", 0);
        assert_eq!(a, derived_lun_uuid("iqn.2026-11.org.twinsan:a", 0));
        assert_ne!(a, derived_lun_uuid("iqn.2026-11.org.twinsan:a", 1));
        assert_ne!(a, derived_lun_uuid("iqn.2026-11.org.twinsan:b", 0));
    }

    #[test]
    fn reports_every_problem_with_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            r#"
[iscsi]
queue_depth = 0

[[portal_group]]
tag = 1
listen = ["127.0.0.1:3260", "nonsense"]

[[target]]
iqn = "Bad Name"
portal_groups = [2]
chap_user = "u"

[[target.lun]]
lun = 0
path = "/nonexistent/x.img"
engine = "fast"
"#,
        )
        .unwrap();
        let probs = load(&f).unwrap_err();
        let keys: Vec<&str> = probs.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "iscsi.queue_depth",
            "portal_group[0].listen[1]",
            "target[0].iqn",
            "target[0].portal_groups[0]",
            "target[0].chap_secret_file",
            "target[0].lun[0].path",
            "target[0].lun[0].engine",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
        assert!(probs[0].to_string().starts_with(&f.display().to_string()));
    }

    #[test]
    fn alua_groups_from_portal_groups_and_alua_sections() {
        use twinsan_scsi::AccessState;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            r#"
[[portal_group]]
tag = 1
listen = ["127.0.0.1:3260"]
relative_port_id = 11
alua_group_id = 5

[[portal_group]]
tag = 2
listen = ["127.0.0.2:3260"]
relative_port_id = 12
alua_group_id = 5

[[portal_group]]
tag = 3
listen = ["127.0.0.3:3260"]

[alua]
explicit = true
implicit_transition_time_s = 9

[[alua.group]]
id = 5
preferred = true

[[alua.group]]
id = 6
state = "standby"
relative_port_ids = [21, 22]
"#,
        )
        .unwrap();
        let cfg = load(&f).unwrap();
        let a = alua_config(&cfg, &[]);
        assert!(a.explicit);
        assert_eq!(a.implicit_transition_time_s, 9);
        let g: Vec<(u16, AccessState, bool, Vec<u16>)> = a
            .groups
            .iter()
            .map(|g| (g.id, g.state, g.preferred, g.relative_port_ids.clone()))
            .collect();
        assert_eq!(
            g,
            vec![
                (5, AccessState::ActiveOptimized, true, vec![11, 12]),
                (3, AccessState::ActiveOptimized, false, vec![3]),
                (6, AccessState::Standby, false, vec![21, 22]),
            ]
        );
        // A target reachable through portal group 3 only.
        let only3 = alua_config(&cfg, &[3]);
        let ids: Vec<u16> = only3.groups.iter().map(|g| g.id).collect();
        assert_eq!(ids, vec![3, 6], "group 5 has no port of this target");
        assert!(twinsan_scsi::AluaState::new(a).is_ok());
    }

    #[test]
    fn alua_problems_are_reported_with_keys() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            r#"
[[portal_group]]
tag = 1
listen = ["127.0.0.1:3260"]

[[portal_group]]
tag = 2
listen = ["127.0.0.2:3260"]
relative_port_id = 1

[[portal_group]]
tag = 3
listen = ["127.0.0.3:3260"]
relative_port_id = 0

[[alua.group]]
id = 9
state = "sleepy"

[[alua.group]]
id = 9
relative_port_ids = [3, 0]
"#,
        )
        .unwrap();
        let probs = load(&f).unwrap_err();
        let keys: Vec<&str> = probs.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "portal_group[1].relative_port_id",
            "portal_group[2].relative_port_id",
            "alua.group[0].state",
            "alua.group[0].relative_port_ids",
            "alua.group[1].id",
            "alua.group[1].relative_port_ids[1]",
        ] {
            assert!(keys.contains(&want), "missing {want} in {probs:#?}");
        }
        assert!(
            !keys.contains(&"alua.group[1].relative_port_ids[0]"),
            "port 3 is free (portal group 3 has id 0): {probs:#?}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t.toml");
        std::fs::write(&f, "[iscsi]\nqueue_depht = 3\n").unwrap();
        let probs = load(&f).unwrap_err();
        assert_eq!(probs.len(), 1);
        assert_eq!(probs[0].key, "line 2");
        assert!(
            probs[0].reason.contains("queue_depht"),
            "{}",
            probs[0].reason
        );
    }
}
