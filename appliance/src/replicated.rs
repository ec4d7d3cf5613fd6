//! Replicated volumes in the node configuration (`[[replicated]]`): schema,
//! validation, and turning a section into a running `twinsan_replication` driver or
//! into fresh metadata (create-md).
//!
//! Owns: the mapping from configuration to [`DriverConfig`] and the device opening
//! rules for replicated disks. Replication logic lives in `twinsan-replication`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::Deserialize;

use twinsan_blockdev::BlockDevice;
use twinsan_replication::driver::{self, Driver, DriverConfig};
use twinsan_replication::gens::Policies;
use twinsan_replication::meta::CreateOptions;
use twinsan_replication::replica::{Handler, ReplicaConfig};
use twinsan_replication::types::{
    AfterSb0Pri, AfterSb1Pri, AfterSb2Pri, Fencing, OnIoError, Protocol, RrConflict,
};

use crate::config::{parse_size, NodeConfig};

/// Shortest replication secret (bytes, after one trailing newline is removed).
pub const MIN_SECRET_BYTES: usize = twinsan_replication::auth::MIN_SECRET_BYTES;

/// Every handler name accepted in `[replicated.handlers]`.
const HANDLERS: [Handler; 8] = [
    Handler::SplitBrain,
    Handler::OutOfSync,
    Handler::FencePeer,
    Handler::BeforeResyncTarget,
    Handler::AfterResyncTarget,
    Handler::LocalIoError,
    Handler::PriLostAfterSb,
    Handler::PriLost,
];

/// `[[replicated]]`: one replicated volume as this node sees it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatedSection {
    /// Resource name (the operator verbs and `[[target.lun]] replicated` use it).
    pub name: String,
    /// Identity of the volume; the same on both nodes.
    pub volume_uuid: uuid::Uuid,
    /// Replication protocol: A, B or C.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// This node's id (0..=255; the two nodes differ).
    pub node_id: u8,
    /// The peer's node id.
    pub peer_node_id: u8,
    /// This node's replication address (`ADDR:PORT`); the node with the lower id
    /// listens on it, the other connects from its IP.
    pub address: String,
    /// The peer's replication address.
    pub peer_address: String,
    /// Backing file or block device of this node's copy.
    pub disk: PathBuf,
    /// Create `disk` (sparse) with this size when it does not exist (create-md).
    pub size: Option<String>,
    /// "internal" (at the end of `disk`) or the path of a metadata file/device.
    #[serde(default = "default_internal")]
    pub meta_disk: String,
    /// Shared secret for the link (0600, at least 16 bytes).
    pub secret_file: PathBuf,
    /// Both nodes may be Primary at once (protocol C only).
    #[serde(default)]
    pub allow_two_primaries: bool,
    /// Each node promotes itself once, the first time it is connected with both disks
    /// UpToDate (needs `allow_two_primaries`).
    #[serde(default)]
    pub become_primary_on_both: bool,
    /// `after-sb-0pri` policy.
    #[serde(default = "default_disconnect")]
    pub after_sb_0pri: String,
    /// `after-sb-1pri` policy.
    #[serde(default = "default_disconnect")]
    pub after_sb_1pri: String,
    /// `after-sb-2pri` policy.
    #[serde(default = "default_disconnect")]
    pub after_sb_2pri: String,
    /// `rr-conflict` policy.
    #[serde(default = "default_disconnect")]
    pub rr_conflict: String,
    /// Fencing policy.
    #[serde(default = "default_fencing")]
    pub fencing: String,
    /// Local I/O error policy.
    #[serde(default = "default_on_io_error")]
    pub on_io_error: String,
    /// Checksum-based resync.
    #[serde(default)]
    pub csums: bool,
    /// Resync rate cap; 0 = unlimited.
    #[serde(default)]
    pub resync_rate_max_bytes_per_s: u64,
    /// Resync rate while the application writes (dynamic throttling); 0 = off.
    #[serde(default)]
    pub resync_rate_min_bytes_per_s: u64,
    /// Idle time before a keep-alive ping.
    #[serde(default = "default_ping_int")]
    pub ping_int_ms: u64,
    /// Time to wait for the ping answer.
    #[serde(default = "default_ping_timeout")]
    pub ping_timeout_ms: u64,
    /// Time to wait for an expected reply.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// A write unacknowledged for `ko_count × timeout_ms` drops the peer.
    #[serde(default = "default_ko_count")]
    pub ko_count: u32,
    /// Interval between connection attempts.
    #[serde(default = "default_connect_int")]
    pub connect_int_ms: u64,
    /// A handler still running after this long is killed.
    #[serde(default = "default_handler_timeout")]
    pub handler_timeout_ms: u64,
    /// Handler commands by name (`split-brain`, `fence-peer`, ...), run with `/bin/sh -c`.
    #[serde(default)]
    pub handlers: BTreeMap<String, String>,
}

fn default_protocol() -> String {
    "C".into()
}
fn default_internal() -> String {
    "internal".into()
}
fn default_disconnect() -> String {
    "disconnect".into()
}
fn default_fencing() -> String {
    "dont-care".into()
}
fn default_on_io_error() -> String {
    "detach".into()
}
fn default_ping_int() -> u64 {
    1000
}
fn default_ping_timeout() -> u64 {
    500
}
fn default_timeout() -> u64 {
    6000
}
fn default_ko_count() -> u32 {
    7
}
fn default_connect_int() -> u64 {
    500
}
fn default_handler_timeout() -> u64 {
    60_000
}

impl ReplicatedSection {
    /// External metadata path, `None` for internal.
    pub fn meta_path(&self) -> Option<&Path> {
        (self.meta_disk != "internal").then(|| Path::new(&self.meta_disk))
    }

    fn policies(&self) -> Result<Policies, Vec<(&'static str, String)>> {
        let mut errs = Vec::new();
        let mut take = |key: &'static str, r: Result<(), String>| {
            if let Err(e) = r {
                errs.push((key, e));
            }
        };
        let mut pol = Policies {
            allow_two_primaries: self.allow_two_primaries,
            ..Policies::default()
        };
        take(
            "after_sb_0pri",
            self.after_sb_0pri
                .parse::<AfterSb0Pri>()
                .map(|v| pol.after_sb_0pri = v)
                .map_err(|e| e.to_string()),
        );
        take(
            "after_sb_1pri",
            self.after_sb_1pri
                .parse::<AfterSb1Pri>()
                .map(|v| pol.after_sb_1pri = v)
                .map_err(|e| e.to_string()),
        );
        take(
            "after_sb_2pri",
            self.after_sb_2pri
                .parse::<AfterSb2Pri>()
                .map(|v| pol.after_sb_2pri = v)
                .map_err(|e| e.to_string()),
        );
        take(
            "rr_conflict",
            self.rr_conflict
                .parse::<RrConflict>()
                .map(|v| pol.rr_conflict = v)
                .map_err(|e| e.to_string()),
        );
        if errs.is_empty() {
            Ok(pol)
        } else {
            Err(errs)
        }
    }

    /// The driver configuration (reads the secret). `node_name` names this node in the
    /// handshake (`discard-node-NAME`) and to handlers. The section must be valid.
    pub fn driver_config(&self, node_name: &str) -> anyhow::Result<DriverConfig> {
        let policies = self.policies().map_err(|errs| {
            anyhow::anyhow!(
                "{}",
                errs.iter()
                    .map(|(k, e)| format!("{k}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let mut r = ReplicaConfig::new(
            self.node_id,
            node_name,
            self.peer_node_id,
            *self.volume_uuid.as_bytes(),
        );
        r.protocol = self.protocol.parse::<Protocol>()?;
        r.policies = policies;
        r.fencing = self.fencing.parse::<Fencing>()?;
        r.on_io_error = self.on_io_error.parse::<OnIoError>()?;
        r.csums = self.csums;
        r.resync_rate_max_bytes_per_s = self.resync_rate_max_bytes_per_s;
        r.resync_rate_min_bytes_per_s = self.resync_rate_min_bytes_per_s;
        r.ping_int_ms = self.ping_int_ms;
        r.ping_timeout_ms = self.ping_timeout_ms;
        r.timeout_ms = self.timeout_ms;
        r.ko_count = self.ko_count;
        let secret = read_secret(&self.secret_file)?;
        let mut c = DriverConfig::new(
            &self.name,
            r,
            self.address.parse().context("address")?,
            self.peer_address.parse().context("peer_address")?,
            secret,
        );
        c.connect_int_ms = self.connect_int_ms;
        c.handlers = self.handlers.clone();
        c.handler_timeout_ms = self.handler_timeout_ms;
        c.become_primary_on_both = self.become_primary_on_both;
        Ok(c)
    }

    /// Open the data device, creating a missing file when `size` is set and `create`.
    fn open_data(&self, create: bool) -> anyhow::Result<Arc<dyn BlockDevice>> {
        let size = match (&self.size, create && !self.disk.exists()) {
            (Some(s), true) => Some(parse_size(s).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        let d = driver::open_device(&self.disk, size)
            .with_context(|| format!("replicated volume {}: disk", self.name))?;
        tracing::info!(volume = %self.name, "disk: {}", d.describe());
        let d: Arc<dyn BlockDevice> = d;
        Ok(d)
    }

    /// (data, metadata, internal).
    fn open_devices(&self, create: bool) -> anyhow::Result<Devices> {
        let data = self.open_data(create)?;
        match self.meta_path() {
            None => Ok((data.clone(), data, true)),
            Some(p) => {
                let m: Arc<dyn BlockDevice> = driver::open_device(p, None)
                    .with_context(|| format!("replicated volume {}: meta_disk", self.name))?;
                Ok((data, m, false))
            }
        }
    }
}

/// Data device, metadata device, whether the metadata is internal.
type Devices = (Arc<dyn BlockDevice>, Arc<dyn BlockDevice>, bool);

/// Read a replication secret (the secret-file rules, plus the minimum length).
pub fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let s = crate::secrets::read_secret_file(path)?;
    if s.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "secret in {} is {} bytes; replication needs at least {MIN_SECRET_BYTES}",
            path.display(),
            s.len()
        );
    }
    Ok(s)
}

/// Check every `[[replicated]]` section; `paths` collects disk paths (shared with the
/// LUN path check).
pub fn validate(
    cfg: &NodeConfig,
    p: &mut impl FnMut(String, String),
    paths: &mut BTreeMap<PathBuf, String>,
) {
    let mut names = BTreeMap::new();
    let mut addrs: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (i, r) in cfg.replicated.iter().enumerate() {
        let key = format!("replicated[{i}]");
        if r.name.is_empty()
            || r.name.len() > 64
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            p(
                format!("{key}.name"),
                format!("{:?}: 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'", r.name),
            );
        }
        if let Some(other) = names.insert(r.name.clone(), key.clone()) {
            p(
                format!("{key}.name"),
                format!("{:?} is already the name of {other}", r.name),
            );
        }
        if r.volume_uuid.is_nil() {
            p(format!("{key}.volume_uuid"), "must not be all zero".into());
        }
        if r.node_id == r.peer_node_id {
            p(
                format!("{key}.peer_node_id"),
                format!(
                    "equals node_id {} (the two nodes need different ids)",
                    r.node_id
                ),
            );
        }
        let mut parse_addr = |k: &str, v: &str| match v.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                p(
                    format!("{key}.{k}"),
                    format!("{v:?} is not ADDR:PORT (e.g. 10.0.0.1:7789)"),
                );
                None
            }
        };
        let addr = parse_addr("address", &r.address);
        let peer = parse_addr("peer_address", &r.peer_address);
        if let Some(a) = addr {
            if a.port() == 0 {
                p(format!("{key}.address"), "needs a port".into());
            }
            if let Some(other) = addrs.insert(a, format!("{key}.address")) {
                p(
                    format!("{key}.address"),
                    format!("{a} is already used by {other} (one port per volume)"),
                );
            }
        }
        if let (Some(a), Some(b)) = (addr, peer) {
            if a == b {
                p(
                    format!("{key}.peer_address"),
                    "equals address (the peer is another node)".into(),
                );
            }
        }
        if r.become_primary_on_both && !r.allow_two_primaries {
            p(
                format!("{key}.become_primary_on_both"),
                "needs allow_two_primaries = true".into(),
            );
        }
        if let Err(e) = r.protocol.parse::<Protocol>() {
            p(format!("{key}.protocol"), e.to_string());
        } else if r.allow_two_primaries && r.protocol.parse::<Protocol>().ok() != Some(Protocol::C)
        {
            p(
                format!("{key}.allow_two_primaries"),
                "dual-primary needs protocol C".into(),
            );
        }
        if let Err(errs) = r.policies() {
            for (k, e) in errs {
                p(format!("{key}.{k}"), e);
            }
        }
        if let Err(e) = r.fencing.parse::<Fencing>() {
            p(format!("{key}.fencing"), e.to_string());
        }
        if let Err(e) = r.on_io_error.parse::<OnIoError>() {
            p(format!("{key}.on_io_error"), e.to_string());
        }
        for (k, v, min) in [
            ("ping_int_ms", r.ping_int_ms, 10),
            ("ping_timeout_ms", r.ping_timeout_ms, 10),
            ("timeout_ms", r.timeout_ms, 10),
            ("connect_int_ms", r.connect_int_ms, 10),
            ("handler_timeout_ms", r.handler_timeout_ms, 1),
        ] {
            if v < min {
                p(format!("{key}.{k}"), format!("must be at least {min}"));
            }
        }
        if r.ko_count == 0 {
            p(format!("{key}.ko_count"), "must be at least 1".into());
        }
        for name in r.handlers.keys() {
            if !HANDLERS.iter().any(|h| h.name() == name) {
                let known: Vec<&str> = HANDLERS.iter().map(|h| h.name()).collect();
                p(
                    format!("{key}.handlers.{name}"),
                    format!("unknown handler; known: {}", known.join(", ")),
                );
            }
        }
        if let Err(e) = read_secret(&r.secret_file) {
            p(format!("{key}.secret_file"), format!("{e:#}"));
        }
        if let Some(other) = paths.insert(r.disk.clone(), format!("{key}.disk")) {
            p(
                format!("{key}.disk"),
                format!("{} is already used by {other}", r.disk.display()),
            );
        }
        match &r.size {
            Some(s) => match parse_size(s) {
                Ok(b) if b < (1 << 20) => p(format!("{key}.size"), "must be at least 1MiB".into()),
                Ok(_) => {}
                Err(e) => p(format!("{key}.size"), e),
            },
            None if !r.disk.exists() => p(
                format!("{key}.disk"),
                format!(
                    "{} does not exist (give size = \"...\" to create it at create-md)",
                    r.disk.display()
                ),
            ),
            None => {}
        }
        if let Some(m) = r.meta_path() {
            if !m.exists() {
                p(
                    format!("{key}.meta_disk"),
                    format!(
                        "{} does not exist (\"internal\" or an existing file/device)",
                        m.display()
                    ),
                );
            } else if let Some(other) = paths.insert(m.to_owned(), format!("{key}.meta_disk")) {
                p(
                    format!("{key}.meta_disk"),
                    format!("{} is already used by {other}", m.display()),
                );
            }
        }
    }
}

/// This node's name for the handshake and handlers.
pub fn node_name(cfg: &NodeConfig, r: &ReplicatedSection) -> String {
    cfg.node
        .name
        .clone()
        .unwrap_or_else(|| format!("node{}", r.node_id))
}

/// "up": attach and connect every replicated volume (role Secondary).
pub async fn start_all(cfg: &NodeConfig) -> anyhow::Result<Vec<Driver>> {
    let mut out = Vec::new();
    for r in &cfg.replicated {
        let dc = r.driver_config(&node_name(cfg, r))?;
        let (data, meta, internal) = r.open_devices(false)?;
        let d = Driver::start(dc, data, meta, internal, true)
            .await
            .with_context(|| format!("replicated volume {}", r.name))?;
        tracing::info!(volume = %r.name, size_bytes = d.handle.size_bytes(), "replicated volume up (Secondary, connecting)");
        out.push(d);
    }
    Ok(out)
}

/// create-md for the volume `name` of `cfg`.
pub fn create_md(
    cfg: &NodeConfig,
    name: &str,
    force: bool,
    assume_clean: bool,
) -> anyhow::Result<String> {
    let r = cfg
        .replicated
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| anyhow::anyhow!("no [[replicated]] volume named {name:?}"))?;
    let (data, meta, internal) = r.open_devices(true)?;
    let mut opts = CreateOptions::new(
        *r.volume_uuid.as_bytes(),
        r.node_id,
        r.peer_node_id,
        internal,
    );
    opts.force = force;
    if !internal {
        opts.data_size_bytes = Some(data.size_bytes());
    }
    let layout = driver::create_md(meta, &opts, assume_clean)?;
    Ok(format!(
        "{name}: metadata written ({}; usable size {} bytes{})",
        if internal {
            "internal".to_string()
        } else {
            format!("external on {}", r.meta_disk)
        },
        layout.data_size_bytes,
        if assume_clean {
            "; data declared consistent (assume-clean): no initial sync"
        } else {
            "; data Inconsistent: the first primary needs --force and a full sync follows"
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secret(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    #[test]
    fn valid_section_builds_a_driver_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = secret(dir.path(), "r.secret", "0123456789abcdef0123\n");
        let f = dir.path().join("t.toml");
        std::fs::write(
            &f,
            format!(
                r#"
[node]
name = "alpha"

[[portal_group]]
tag = 1
listen = ["127.0.0.1:3260"]

[[target]]
iqn = "iqn.2026-11.org.x:r"

[[target.lun]]
lun = 0
replicated = "r0"

[[replicated]]
name = "r0"
volume_uuid = "3f0c6a52-9d1e-4c35-8b7e-2a61f0d4c9e1"
protocol = "B"
node_id = 1
peer_node_id = 2
address = "10.0.0.1:7789"
peer_address = "10.0.0.2:7789"
disk = "{d}"
size = "64MiB"
secret_file = "{s}"
after_sb_0pri = "discard-node-alpha"
after_sb_1pri = "consensus"
fencing = "resource-only"
resync_rate_max_bytes_per_s = 1000000
[replicated.handlers]
split-brain = "logger split brain"
"#,
                d = dir.path().join("r0.img").display(),
                s = s.display()
            ),
        )
        .unwrap();
        let cfg = crate::config::load(&f).unwrap();
        let r = &cfg.replicated[0];
        let dc = r.driver_config(&node_name(&cfg, r)).unwrap();
        assert_eq!(dc.replica.protocol, Protocol::B);
        assert_eq!(dc.replica.node_name, "alpha");
        assert_eq!(
            dc.replica.policies.after_sb_0pri,
            AfterSb0Pri::DiscardNode("alpha".into())
        );
        assert_eq!(dc.replica.fencing, Fencing::ResourceOnly);
        assert_eq!(dc.replica.resync_rate_max_bytes_per_s, 1_000_000);
        assert_eq!(dc.secret, b"0123456789abcdef0123");
        assert_eq!(dc.handlers["split-brain"], "logger split brain");
        assert_eq!(dc.connect_int_ms, 500);
    }

    #[test]
    fn problems_are_reported_with_keys() {
        let dir = tempfile::tempdir().unwrap();
        let short = secret(dir.path(), "short.secret", "tooshort\n");
        let f = dir.path().join("t.toml");
        let img = dir.path().join("lun.img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        std::fs::write(
            &f,
            format!(
                r#"
[[portal_group]]
tag = 1
listen = ["127.0.0.1:3260"]

[[target]]
iqn = "iqn.2026-11.org.x:r"

[[target.lun]]
lun = 0
replicated = "r0"
path = "{img}"

[[target.lun]]
lun = 1
replicated = "nosuch"

[[target.lun]]
lun = 2

[[replicated]]
name = "r0"
volume_uuid = "00000000-0000-0000-0000-000000000000"
protocol = "D"
node_id = 1
peer_node_id = 1
address = "nowhere"
peer_address = "10.0.0.2:7789"
disk = "{missing}"
secret_file = "{short}"
after_sb_0pri = "sometimes"
after_sb_2pri = "discard-secondary"
rr_conflict = "retry-connect"
fencing = "maybe"
on_io_error = "explode"
ko_count = 0
[replicated.handlers]
split-brian = "true"
"#,
                img = img.display(),
                missing = dir.path().join("missing.img").display(),
                short = short.display()
            ),
        )
        .unwrap();
        let probs = crate::config::load(&f).unwrap_err();
        let keys: Vec<&str> = probs.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "target[0].lun[0].replicated",
            "target[0].lun[1].replicated",
            "target[0].lun[2].path",
            "replicated[0].volume_uuid",
            "replicated[0].protocol",
            "replicated[0].peer_node_id",
            "replicated[0].address",
            "replicated[0].disk",
            "replicated[0].secret_file",
            "replicated[0].after_sb_0pri",
            "replicated[0].after_sb_2pri",
            "replicated[0].fencing",
            "replicated[0].on_io_error",
            "replicated[0].ko_count",
            "replicated[0].handlers.split-brian",
        ] {
            assert!(keys.contains(&want), "missing {want} in {probs:#?}");
        }
        assert!(
            !keys.contains(&"replicated[0].rr_conflict"),
            "retry-connect is valid: {probs:#?}"
        );
        let sb = probs
            .iter()
            .find(|p| p.key == "replicated[0].after_sb_0pri")
            .unwrap();
        assert!(
            sb.reason.contains("discard-younger-primary"),
            "{}",
            sb.reason
        );
        let sec = probs
            .iter()
            .find(|p| p.key == "replicated[0].secret_file")
            .unwrap();
        assert!(sec.reason.contains("at least 16"), "{}", sec.reason);
        assert!(!sec.reason.contains("tooshort"), "secret leaked");
    }
}
