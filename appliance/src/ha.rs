//! The HA manager of a head: the `[cluster]` configuration section, its validation,
//! and the runtime that drives `twinsan-ha`'s sans-IO membership, quorum and manager
//! over UDP and applies the manager's decisions to this head's resources.
//!
//! Owns: `[cluster]` parsing/validation ([`ClusterSection`]), the persisted boot
//! counter, the HA owner task ([`runtime`]), the start/stop/monitor sequences over the
//! resources ([`resources`]) and the `twinsan witness` process ([`witness`]).
//!
//! May not touch: replication, SCSI or iSCSI state except through their handles
//! (replicated volume admin verbs, ALUA states, the server's connection kick).

pub mod resources;
pub mod runtime;
pub mod witness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use twinsan_ha::manager::{ManagerConfig, ServiceOnFail};
use twinsan_ha::membership::MembershipConfig;
use twinsan_ha::policy::{OnFail, Placement, PolicyError, ResourceDef, Score, TargetRole};
use twinsan_ha::quorum::{NoQuorumPolicy, QuorumConfig, WitnessClientConfig};
use twinsan_ha::HaConfig;

/// `[cluster]`: this head's view of the two-head cluster. Present = the HA manager runs
/// and decides which head serves; absent = a plain node driven by hand.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name; both heads and the witness must use the same one.
    pub name: String,
    /// This head's node id (0..=254; the heads differ).
    pub node_id: u8,
    /// The peer head's node id.
    pub peer_node_id: u8,
    /// Cluster secret file (HMAC key of heartbeats and witness messages; ≥ 16 bytes,
    /// mode 0600/0400).
    pub secret_file: PathBuf,
    /// Directory for the persisted boot counter.
    pub state_dir: PathBuf,
    /// Heartbeat interval per link.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// A link without heartbeats this long is down; all links down = the peer is lost.
    #[serde(default = "default_dead_time_ms")]
    pub dead_time_ms: u64,
    /// A head that never saw its peer since it started does not take over.
    #[serde(default = "default_true")]
    pub wait_for_all: bool,
    /// stop | freeze | ignore | suicide.
    #[serde(default = "default_policy")]
    pub no_quorum_policy: String,
    /// The witness (`ADDR:PORT` of `twinsan witness`), if any.
    pub witness: Option<String>,
    /// Witness: no answer for this long = unreachable.
    #[serde(default = "default_witness_decision_timeout_ms")]
    pub witness_decision_timeout_ms: u64,
    /// Location score of this head (higher = preferred for the service).
    #[serde(default)]
    pub location_score: i32,
    /// Location score of the peer head.
    #[serde(default)]
    pub peer_location_score: i32,
    /// The service moves back to a head whose location score exceeds the running
    /// head's by more than this (automatic failback, as a planned move): an integer or
    /// "INFINITY" (the default: never).
    #[serde(default)]
    pub resource_stickiness: Option<ScoreSpec>,
    /// Failures on a head before the service moves away (0 = never).
    #[serde(default = "default_migration_threshold")]
    pub migration_threshold: u32,
    /// Failures older than this are forgotten (0 = never).
    #[serde(default)]
    pub failure_timeout_ms: u64,
    /// Resource monitor interval while active (0 = off).
    #[serde(default = "default_monitor_interval_ms")]
    pub monitor_interval_ms: u64,
    /// What a monitor failure of the service's own resources (volumes, targets, portal
    /// IPs) does: restart | demote | standby | fence | block | ignore.
    #[serde(default = "default_on_fail")]
    pub on_fail: String,
    /// The passive head waits this long before fencing (the active one fences at once).
    #[serde(default = "default_fence_delay_passive_ms")]
    pub fence_delay_passive_ms: u64,
    /// A failed fence blocks the takeover.
    #[serde(default = "default_true")]
    pub fence_failure_blocks: bool,
    /// Fence even when the witness settled a partition.
    #[serde(default)]
    pub fence_with_witness: bool,
    /// Heartbeat links (≥ 1; two or more recommended).
    #[serde(rename = "link")]
    pub links: Vec<LinkSection>,
    /// How this head fences its peer.
    pub fence: Option<FenceSection>,
    /// Portal IPs that follow the service.
    #[serde(default, rename = "vip")]
    pub vips: Vec<VipSection>,
    /// External OCF resources started after the portal IPs (stopped before them).
    #[serde(default, rename = "resource")]
    pub resources: Vec<OcfSection>,
}

/// `[[cluster.link]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSection {
    /// This head's heartbeat address (`ADDR:PORT`).
    pub local: String,
    /// The peer's heartbeat address on this link.
    pub peer: String,
}

/// `[cluster.fence]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceSection {
    /// `external` (a fence-agents program), `process` (tests/demo: kill the peer's
    /// processes / namespace) or `ssh` (tests only).
    pub agent: String,
    /// external: the program (e.g. /usr/sbin/fence_ipmilan).
    pub program: Option<PathBuf>,
    /// external: key=value parameters passed on stdin (never secrets).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// external: parameters whose value is read from a file (mode 0600), e.g.
    /// `password = "/etc/twinsan/ipmi.secret"`.
    #[serde(default)]
    pub secret_params: BTreeMap<String, PathBuf>,
    /// process: PID file of the peer's twinsan.
    pub pid_file: Option<PathBuf>,
    /// process: the peer's network namespace (every process in it is killed).
    pub netns: Option<String>,
    /// process: also set the namespace's links down ("power off").
    #[serde(default = "default_true")]
    pub links_down: bool,
    /// ssh: host.
    pub host: Option<String>,
    /// ssh: user.
    pub user: Option<String>,
    /// ssh: identity file.
    pub identity_file: Option<PathBuf>,
    /// Per attempt.
    #[serde(default = "default_fence_timeout_ms")]
    pub timeout_ms: u64,
    /// Extra attempts after a failure.
    #[serde(default = "default_fence_retries")]
    pub retries: u32,
    /// Pause between attempts.
    #[serde(default = "default_fence_retry_interval_ms")]
    pub retry_interval_ms: u64,
}

/// `[[cluster.vip]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipSection {
    /// `ADDR/PREFIX`, IPv4 or IPv6.
    pub address: String,
    /// Interface to add it to.
    pub interface: String,
    /// Gratuitous ARPs / unsolicited neighbour advertisements sent.
    #[serde(default = "default_arp_count")]
    pub arp_count: u32,
}

/// `[[cluster.resource]]`: an external OCF resource agent in the service group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcfSection {
    /// Instance name.
    pub name: String,
    /// `provider:type`, e.g. `heartbeat:Filesystem` (found under
    /// `$ocf_root/resource.d/provider/type`), or an absolute path to the agent.
    pub agent: String,
    /// OCF root.
    #[serde(default = "default_ocf_root")]
    pub ocf_root: PathBuf,
    /// OCF_RESKEY_* parameters.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Timeout of start/stop/monitor.
    #[serde(default = "default_ocf_timeout_ms")]
    pub timeout_ms: u64,
    /// `with-service` (default: on the head running the service, after its portal
    /// IPs), `away-from-service` (on the other head, while the peer serves) or `clone`
    /// (on every online head). See `twinsan_ha::policy`.
    #[serde(default = "default_placement")]
    pub placement: String,
    /// Start only after these resources run here (stop before them).
    #[serde(default)]
    pub after: Vec<String>,
    /// Location score of this head: an integer, "INFINITY" or "-INFINITY" (banned).
    #[serde(default)]
    pub location_score: Option<ScoreSpec>,
    /// Location score of the peer head.
    #[serde(default)]
    pub peer_location_score: Option<ScoreSpec>,
    /// with-service: the service cannot run where this resource cannot (default true).
    pub required: Option<bool>,
    /// restart | stop | block | ignore | standby | fence.
    #[serde(default = "default_on_fail")]
    pub on_fail: String,
    /// started | stopped.
    #[serde(default = "default_target_role")]
    pub target_role: String,
    /// false: monitored and reported, never started or stopped.
    #[serde(default = "default_true")]
    pub managed: bool,
    /// Monitor interval (default: the cluster's monitor_interval_ms).
    pub monitor_interval_ms: Option<u64>,
    /// Failures here before the resource is banned from this head (default: the
    /// cluster's migration_threshold).
    pub migration_threshold: Option<u32>,
    /// Failures older than this are forgotten (default: the cluster's).
    pub failure_timeout_ms: Option<u64>,
}

/// A score in the configuration: an integer or a string ("INFINITY", "-INFINITY").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ScoreSpec {
    /// An integer.
    Int(i64),
    /// "INFINITY", "-INFINITY" or an integer in a string.
    Text(String),
}

impl ScoreSpec {
    fn score(&self) -> Result<Score, PolicyError> {
        match self {
            ScoreSpec::Int(v) => Ok(Score::new(*v)),
            ScoreSpec::Text(t) => Score::parse(t),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_interval_ms() -> u64 {
    twinsan_ha::membership::DEFAULT_INTERVAL_MS
}
fn default_dead_time_ms() -> u64 {
    twinsan_ha::membership::DEFAULT_DEAD_TIME_MS
}
fn default_policy() -> String {
    "stop".into()
}
fn default_witness_decision_timeout_ms() -> u64 {
    twinsan_ha::quorum::DEFAULT_DECISION_TIMEOUT_MS
}
fn default_migration_threshold() -> u32 {
    3
}
fn default_monitor_interval_ms() -> u64 {
    2000
}
fn default_fence_delay_passive_ms() -> u64 {
    1000
}
fn default_fence_timeout_ms() -> u64 {
    20_000
}
fn default_fence_retries() -> u32 {
    2
}
fn default_fence_retry_interval_ms() -> u64 {
    500
}
fn default_arp_count() -> u32 {
    3
}
fn default_placement() -> String {
    "with-service".into()
}
fn default_on_fail() -> String {
    "restart".into()
}
fn default_target_role() -> String {
    "started".into()
}
fn default_ocf_root() -> PathBuf {
    PathBuf::from("/usr/lib/ocf")
}
fn default_ocf_timeout_ms() -> u64 {
    20_000
}

/// The 16-byte cluster id of a cluster name (the same on both heads and the witness).
pub fn cluster_id(name: &str) -> [u8; 16] {
    const NS: uuid::Uuid = uuid::Uuid::from_bytes([
        0x74, 0x77, 0x69, 0x6e, 0x73, 0x61, 0x6e, 0x2d, 0x63, 0x6c, 0x75, 0x73, 0x74, 0x65, 0x72,
        0x31,
    ]);
    *uuid::Uuid::new_v5(&NS, name.as_bytes()).as_bytes()
}

impl ClusterSection {
    /// Parsed heartbeat links (local, peer); the section must be valid.
    pub fn link_addrs(&self) -> Vec<(SocketAddr, SocketAddr)> {
        self.links
            .iter()
            .filter_map(|l| Some((l.local.parse().ok()?, l.peer.parse().ok()?)))
            .collect()
    }

    /// The HA core configuration for this run's `boot`.
    pub fn ha_config(&self, boot: u64) -> HaConfig {
        let mut m = MembershipConfig::new(
            cluster_id(&self.name),
            self.node_id,
            self.peer_node_id,
            boot,
        );
        m.links = self.links.len() as u8;
        m.interval_ms = self.interval_ms;
        m.dead_time_ms = self.dead_time_ms;
        let q = QuorumConfig {
            wait_for_all: self.wait_for_all,
            no_quorum_policy: self.policy(),
            witness: self.witness.as_ref().map(|_| WitnessClientConfig {
                decision_timeout_ms: self.witness_decision_timeout_ms,
                ..WitnessClientConfig::default()
            }),
        };
        HaConfig {
            membership: m,
            quorum: q,
        }
    }

    fn policy(&self) -> NoQuorumPolicy {
        self.no_quorum_policy.parse().unwrap_or_default()
    }

    /// One resource's policy definition (`Err` names the field).
    fn resource_def(&self, r: &OcfSection) -> Result<ResourceDef, (&'static str, PolicyError)> {
        let placement = Placement::parse(&r.placement).map_err(|e| ("placement", e))?;
        let mut d = ResourceDef::new(&r.name, placement);
        d.after = r.after.clone();
        if let Some(s) = &r.location_score {
            d.score_here = s.score().map_err(|e| ("location_score", e))?;
        }
        if let Some(s) = &r.peer_location_score {
            d.score_peer = s.score().map_err(|e| ("peer_location_score", e))?;
        }
        d.required = r.required.unwrap_or(placement == Placement::WithService);
        d.on_fail = OnFail::parse(&r.on_fail).map_err(|e| ("on_fail", e))?;
        d.target_role = TargetRole::parse(&r.target_role).map_err(|e| ("target_role", e))?;
        d.managed = r.managed;
        d.monitor_interval_ms = r.monitor_interval_ms.unwrap_or(self.monitor_interval_ms);
        d.migration_threshold = r.migration_threshold.unwrap_or(self.migration_threshold);
        d.failure_timeout_ms = r.failure_timeout_ms.unwrap_or(self.failure_timeout_ms);
        Ok(d)
    }

    /// The resources' policy definitions (the section must be valid).
    pub fn resource_defs(&self) -> Vec<ResourceDef> {
        self.resources
            .iter()
            .filter_map(|r| self.resource_def(r).ok())
            .collect()
    }

    /// The manager configuration.
    pub fn manager_config(&self) -> ManagerConfig {
        let mut c = ManagerConfig::new(self.node_id, self.peer_node_id);
        // Required with-service resources add their location scores (a group's).
        let (here, peer) = twinsan_ha::policy::service_scores(
            &self.resource_defs(),
            Score::new(i64::from(self.location_score)),
            Score::new(i64::from(self.peer_location_score)),
        );
        c.location_score = here.value() as i32;
        c.peer_location_score = peer.value() as i32;
        c.migration_threshold = self.migration_threshold;
        c.failure_timeout_ms = self.failure_timeout_ms;
        c.fencing_configured = self.fence.is_some();
        c.fence_failure_blocks = self.fence_failure_blocks;
        c.fence_delay_passive_ms = self.fence_delay_passive_ms;
        c.fence_with_witness = self.fence_with_witness;
        c.no_quorum_policy = self.policy();
        c.monitor_interval_ms = self.monitor_interval_ms;
        c.on_fail = ServiceOnFail::parse(&self.on_fail).unwrap_or_default();
        c.resource_stickiness = self
            .resource_stickiness
            .as_ref()
            .and_then(|s| s.score().ok())
            .map_or(twinsan_ha::policy::INFINITY, Score::value);
        if let Some(f) = &self.fence {
            c.fence_retry_interval_ms = f.retry_interval_ms.max(100);
        }
        c
    }
}

/// Check `[cluster]`; `p(key, reason)` collects problems.
pub fn validate(c: &ClusterSection, p: &mut impl FnMut(String, String)) {
    if c.name.is_empty() || c.name.len() > 64 {
        p("cluster.name".into(), "1 to 64 characters".into());
    }
    if c.node_id == c.peer_node_id {
        p(
            "cluster.peer_node_id".into(),
            format!(
                "{} is this head's node_id too; the heads need different ids",
                c.node_id
            ),
        );
    }
    for (k, v) in [
        ("cluster.node_id", c.node_id),
        ("cluster.peer_node_id", c.peer_node_id),
    ] {
        if v == twinsan_ha::wire::WITNESS_NODE_ID {
            p(k.into(), format!("{v} is reserved for the witness"));
        }
    }
    if c.no_quorum_policy.parse::<NoQuorumPolicy>().is_err() {
        p(
            "cluster.no_quorum_policy".into(),
            format!(
                "{:?}: expected stop, freeze, ignore or suicide",
                c.no_quorum_policy
            ),
        );
    }
    match c.resource_stickiness.as_ref().map(ScoreSpec::score) {
        Some(Err(e)) => p("cluster.resource_stickiness".into(), e.to_string()),
        Some(Ok(s)) if s.value() < 0 => p(
            "cluster.resource_stickiness".into(),
            "must not be negative".into(),
        ),
        _ => {}
    }
    if ServiceOnFail::parse(&c.on_fail).is_none() {
        p(
            "cluster.on_fail".into(),
            format!(
                "{:?}: expected restart, demote, standby, fence, block or ignore",
                c.on_fail
            ),
        );
    }
    if c.links.is_empty() {
        p(
            "cluster.link".into(),
            "at least one [[cluster.link]] (two recommended: a link failure alone is then \
             not a node failure)"
                .into(),
        );
    }
    if c.links.len() > usize::from(twinsan_ha::membership::LINKS_MAX) {
        p(
            "cluster.link".into(),
            format!("at most {} links", twinsan_ha::membership::LINKS_MAX),
        );
    }
    for (i, l) in c.links.iter().enumerate() {
        for (k, v) in [("local", &l.local), ("peer", &l.peer)] {
            if v.parse::<SocketAddr>().is_err() {
                p(
                    format!("cluster.link[{i}].{k}"),
                    format!("{v:?} is not ADDR:PORT"),
                );
            }
        }
    }
    if let Some(w) = &c.witness {
        if w.parse::<SocketAddr>().is_err() {
            p("cluster.witness".into(), format!("{w:?} is not ADDR:PORT"));
        }
    }
    let core = c.ha_config(1);
    if let Err(e) = core.membership.validate() {
        p("cluster".into(), e.to_string());
    }
    if let Err(e) = core.quorum.validate() {
        p("cluster".into(), e.to_string());
    }
    if let Some(f) = &c.fence {
        match f.agent.as_str() {
            "external" => {
                if f.program.is_none() {
                    p(
                        "cluster.fence.program".into(),
                        "the external agent needs the fence-agents program".into(),
                    );
                }
            }
            "process" => {
                if f.pid_file.is_none() && f.netns.is_none() {
                    p(
                        "cluster.fence".into(),
                        "the process agent needs pid_file or netns".into(),
                    );
                }
            }
            "ssh" => {
                if f.host.is_none() {
                    p(
                        "cluster.fence.host".into(),
                        "the ssh agent needs host".into(),
                    );
                }
            }
            other => p(
                "cluster.fence.agent".into(),
                format!("{other:?}: expected external, process or ssh"),
            ),
        }
    }
    for (i, v) in c.vips.iter().enumerate() {
        if let Err(e) = twinsan_agents::vip::Vip::parse_cidr(&v.address) {
            p(format!("cluster.vip[{i}].address"), e.to_string());
        }
        if v.interface.is_empty() || v.interface.len() > 15 {
            p(
                format!("cluster.vip[{i}].interface"),
                "an interface name of 1 to 15 characters".into(),
            );
        }
    }
    let mut defs = Vec::new();
    for (i, r) in c.resources.iter().enumerate() {
        if resources::ocf_agent_path(r).is_none() {
            p(
                format!("cluster.resource[{i}].agent"),
                format!("{:?}: expected PROVIDER:TYPE or an absolute path", r.agent),
            );
        }
        match c.resource_def(r) {
            Ok(d) => defs.push(d),
            Err((key, e)) => p(format!("cluster.resource[{i}].{key}"), e.to_string()),
        }
    }
    if defs.len() == c.resources.len() {
        if let Err(e) = twinsan_ha::policy::validate(&defs) {
            p("cluster.resource".into(), e.to_string());
        }
    }
}

/// Read, increment and persist the boot counter in `dir` (created with mode 0700).
/// Every run of a head gets a boot number larger than every earlier one, which makes
/// recorded heartbeats of an earlier run worthless (replay protection).
pub fn next_boot(dir: &Path) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create state_dir {}", dir.display()))?;
    let path = dir.join("boot");
    let prev = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{} is corrupt (not a number)", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let next = prev + 1;
    if next > u64::from(u32::MAX) {
        anyhow::bail!("{}: boot counter exhausted", path.display());
    }
    let tmp = dir.join("boot.tmp");
    {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        writeln!(f, "{next}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_counter_grows_across_runs() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("state");
        assert_eq!(next_boot(&s).unwrap(), 1);
        assert_eq!(next_boot(&s).unwrap(), 2);
        std::fs::write(s.join("boot"), "garbage").unwrap();
        let e = next_boot(&s).unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }

    fn problems(toml_text: &str) -> Vec<String> {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t.toml");
        std::fs::write(&f, toml_text).unwrap();
        match crate::config::load(&f) {
            Ok(_) => Vec::new(),
            Err(ps) => ps
                .iter()
                .map(|p| format!("{}: {}", p.key, p.reason))
                .collect(),
        }
    }

    const GOOD: &str = r#"
[cluster]
name = "c1"
node_id = 1
peer_node_id = 2
secret_file = "/nonexistent/secret"
state_dir = "/tmp/x"
[[cluster.link]]
local = "10.0.0.1:7790"
peer = "10.0.0.2:7790"
[cluster.fence]
agent = "process"
netns = "peer"
[[cluster.vip]]
address = "10.0.0.100/24"
interface = "eth0"
"#;

    #[test]
    fn a_valid_cluster_section_passes_and_every_mistake_is_named() {
        assert!(problems(GOOD).is_empty(), "{:?}", problems(GOOD));
        let cases = [
            (
                "peer_node_id = 2",
                "peer_node_id = 1",
                "cluster.peer_node_id",
            ),
            (
                "peer = \"10.0.0.2:7790\"",
                "peer = \"10.0.0.2\"",
                "cluster.link[0].peer",
            ),
            (
                "agent = \"process\"",
                "agent = \"ipmi\"",
                "cluster.fence.agent",
            ),
            ("netns = \"peer\"", "", "cluster.fence"),
            ("10.0.0.100/24", "10.0.0.100/40", "cluster.vip[0].address"),
            (
                "name = \"c1\"",
                "name = \"c1\"\nno_quorum_policy = \"panic\"",
                "cluster.no_quorum_policy",
            ),
            (
                "name = \"c1\"",
                "name = \"c1\"\nwitness = \"w:1\"",
                "cluster.witness",
            ),
            (
                "name = \"c1\"",
                "name = \"c1\"\non_fail = \"stop\"",
                "cluster.on_fail",
            ),
            (
                "name = \"c1\"",
                "name = \"c1\"\nresource_stickiness = \"sticky\"",
                "cluster.resource_stickiness",
            ),
            (
                "name = \"c1\"",
                "name = \"c1\"\nresource_stickiness = -5",
                "cluster.resource_stickiness",
            ),
        ];
        for (from, to, key) in cases {
            let text = GOOD.replacen(from, to, 1);
            let ps = problems(&text);
            assert!(
                ps.iter().any(|p| p.starts_with(key)),
                "{key} not named for {to:?}: {ps:?}"
            );
        }
        let no_links = GOOD.replace(
            "[[cluster.link]]\nlocal = \"10.0.0.1:7790\"\npeer = \"10.0.0.2:7790\"\n",
            "",
        );
        assert!(problems(&no_links).iter().any(|p| p.contains("link")));
    }

    const RESOURCES: &str = r#"
[[cluster.resource]]
name = "fs"
agent = "heartbeat:Filesystem"
location_score = 100
peer_location_score = "-INFINITY"
[[cluster.resource]]
name = "app"
agent = "/opt/agents/app"
after = ["fs", "dlm"]
on_fail = "standby"
[[cluster.resource]]
name = "dlm"
agent = "pacemaker:controld"
placement = "clone"
[[cluster.resource]]
name = "backup"
agent = "/opt/agents/backup"
placement = "away-from-service"
target_role = "stopped"
managed = false
"#;

    #[test]
    fn resources_with_constraints_pass_and_every_mistake_is_named() {
        let good = format!("{GOOD}{RESOURCES}");
        assert!(problems(&good).is_empty(), "{:?}", problems(&good));
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t.toml");
        std::fs::write(&f, &good).unwrap();
        let cfg = crate::config::load(&f).map_err(|_| ()).unwrap();
        let c = cfg.cluster.expect("[cluster]");
        let defs = c.resource_defs();
        assert_eq!(defs.len(), 4);
        assert_eq!(defs[0].score_peer, Score::MINUS_INFINITY);
        assert_eq!(defs[1].on_fail, OnFail::Standby);
        assert_eq!(defs[2].placement, Placement::Clone);
        assert!(!defs[2].required, "clones are not required");
        assert!(!defs[3].managed);
        assert_eq!(defs[3].target_role, TargetRole::Stopped);
        // fs (required, with-service) bans the peer: the service's scores follow.
        let m = c.manager_config();
        assert_eq!(m.location_score, 100);
        assert_eq!(
            i64::from(m.peer_location_score),
            -twinsan_ha::policy::INFINITY
        );
        let cases = [
            (
                "placement = \"clone\"",
                "placement = \"everywhere\"",
                "cluster.resource[2].placement",
            ),
            (
                "on_fail = \"standby\"",
                "on_fail = \"panic\"",
                "cluster.resource[1].on_fail",
            ),
            (
                "location_score = 100",
                "location_score = \"lots\"",
                "cluster.resource[0].location_score",
            ),
            (
                "target_role = \"stopped\"",
                "target_role = \"master\"",
                "cluster.resource[3].target_role",
            ),
            (
                "after = [\"fs\", \"dlm\"]",
                "after = [\"fs\", \"nope\"]",
                "cluster.resource",
            ),
            (
                "placement = \"clone\"",
                "placement = \"clone\"\nafter = [\"app\"]",
                "cluster.resource",
            ),
            ("name = \"backup\"", "name = \"fs\"", "cluster.resource"),
            (
                "placement = \"away-from-service\"",
                "placement = \"away-from-service\"\nrequired = true",
                "cluster.resource",
            ),
        ];
        for (from, to, key) in cases {
            let text = good.replacen(from, to, 1);
            assert_ne!(text, good, "{from}");
            let ps = problems(&text);
            assert!(
                ps.iter().any(|p| p.starts_with(key)),
                "{key} not named for {to:?}: {ps:?}"
            );
        }
        // The cycle is named as one.
        let cyc = good.replacen(
            "placement = \"clone\"",
            "placement = \"clone\"\nafter = [\"dlm\"]",
            1,
        );
        assert!(
            problems(&cyc).iter().any(|p| p.contains("cycle")),
            "{:?}",
            problems(&cyc)
        );
    }

    #[test]
    fn both_heads_derive_the_same_cluster_id_and_names_differ() {
        assert_eq!(cluster_id("demo"), cluster_id("demo"));
        assert_ne!(cluster_id("demo"), cluster_id("demo2"));
    }
}
