//! The service group of a head and its sequences: start (promote the replicated
//! volumes → targets' ALUA groups active/optimized → portal IPs with gratuitous ARP),
//! stop (the reverse, closing the iSCSI connections so that initiators reconnect to the
//! new holder of the portal IP), monitor, fencing the peer, and single operations of
//! external OCF resources (the resource policy schedules them around the service).
//!
//! Owns: the order of operations and their retries/timeouts, and how each resource's
//! state is read for `can_run`/monitor.
//!
//! May not touch: the HA decisions (the runtime's manager decides; this module only
//! carries them out and reports).
//!
//! While a head is passive its targets' ALUA groups are in standby, so initiators that
//! reach its own portals get NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN
//! STANDBY STATE (04/0B) and use another path. When the service leaves a head, its
//! connections are closed (not answered with errors): initiators reconnect — to the
//! portal IP, which then lives on the other head — and reissue every command that had
//! not completed, so no application sees an error during a planned move or a
//! failover.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use twinsan_agents::fence::{FenceAction, FenceAgent, Fencer};
use twinsan_agents::ocf::{OcfAction, OcfAgent, OcfStatus};
use twinsan_agents::vip::{Vip, VipConfig};
use twinsan_ha::policy::MonitorResult;
use twinsan_iscsi::Server;
use twinsan_replication::driver::Handle;
use twinsan_replication::replica::AdminCmd;
use twinsan_replication::types::{DiskState, Role};
use twinsan_scsi::AccessState;

use super::{ClusterSection, OcfSection};
use crate::control::Targets;

/// How long a demotion waits for in-flight application I/O to drain.
const DEMOTE_WAIT_MS: u64 = 10_000;
/// How long a promotion retries while the peer's demotion is still on its way.
const PROMOTE_WAIT_MS: u64 = 3_000;

/// This head's resources.
pub struct Resources {
    /// Replicated volumes (promotable).
    pub volumes: Vec<Handle>,
    /// Targets' ALUA states.
    pub alua: Targets,
    /// The iSCSI server (connections are closed when the service leaves).
    pub server: Arc<Server>,
    /// Portal IPs (name, agent).
    pub vips: Vec<(String, Arc<std::sync::Mutex<Vip>>)>,
    /// External OCF resources.
    pub ocf: Vec<OcfAgent>,
    /// Fencing of the peer.
    pub fencer: Option<Fencer>,
    /// Portal listen addresses (the target monitor connects to each portal IP on the
    /// ports of those bound to the wildcard or to that IP).
    pub portals: Vec<std::net::SocketAddr>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("volumes", &self.volumes.len())
            .field("targets", &self.alua.len())
            .field("vips", &self.vips.len())
            .field("ocf", &self.ocf.len())
            .finish()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agent script of an `[[cluster.resource]]`.
pub fn ocf_agent_path(r: &OcfSection) -> Option<PathBuf> {
    if r.agent.starts_with('/') {
        return Some(PathBuf::from(&r.agent));
    }
    let (provider, kind) = r.agent.split_once(':')?;
    if provider.is_empty() || kind.is_empty() || provider.contains('/') || kind.contains('/') {
        return None;
    }
    Some(r.ocf_root.join("resource.d").join(provider).join(kind))
}

impl Resources {
    /// Build from configuration (reads fence secrets).
    pub fn new(
        cluster: &ClusterSection,
        volumes: Vec<Handle>,
        alua: Targets,
        server: Arc<Server>,
        portals: Vec<std::net::SocketAddr>,
    ) -> anyhow::Result<Self> {
        let mut vips = Vec::new();
        for v in &cluster.vips {
            let mut c = VipConfig::from_cidr(&v.interface, &v.address)
                .map_err(|e| anyhow::anyhow!("cluster.vip {}: {e}", v.address))?;
            c.arp_count = v.arp_count;
            let vip = Vip::new(c).map_err(|e| anyhow::anyhow!("cluster.vip {}: {e}", v.address))?;
            vips.push((
                format!("{} on {}", v.address, v.interface),
                Arc::new(std::sync::Mutex::new(vip)),
            ));
        }
        let mut ocf = Vec::new();
        for r in &cluster.resources {
            let mut a = OcfAgent::from_spec(&r.agent, &r.name, &r.ocf_root)
                .map_err(|e| anyhow::anyhow!("cluster.resource {}: {e}", r.name))?;
            a.params = r
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            a.default_timeout_ms = r.timeout_ms;
            // Refuse at start what would only fail at the first failover: a missing or
            // non-executable agent, parameters its meta-data requires, validate-all.
            a.validate()
                .map_err(|e| anyhow::anyhow!("cluster.resource {}: {e}", r.name))?;
            let meta = a
                .meta_data()
                .map_err(|e| anyhow::anyhow!("cluster.resource {}: {e}", r.name))?;
            a.check_params(&meta)
                .map_err(|e| anyhow::anyhow!("cluster.resource {}: {e}", r.name))?;
            let v = a.validate_all();
            if !matches!(v.status, OcfStatus::Success | OcfStatus::ErrUnimplemented) {
                anyhow::bail!("cluster.resource {}: validate-all: {v}", r.name);
            }
            ocf.push(a);
        }
        let fencer = match &cluster.fence {
            None => None,
            Some(f) => {
                let agent = match f.agent.as_str() {
                    "external" => FenceAgent::External {
                        program: f.program.clone().unwrap_or_default(),
                        params: f
                            .params
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        secret_params: f
                            .secret_params
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        timeout_ms: f.timeout_ms,
                    },
                    "process" => FenceAgent::Process {
                        pid_file: f.pid_file.clone(),
                        netns: f.netns.clone(),
                        links_down: f.links_down,
                    },
                    "ssh" => FenceAgent::Ssh {
                        host: f.host.clone().unwrap_or_default(),
                        user: f.user.clone(),
                        identity_file: f.identity_file.clone(),
                        off_command: "systemctl poweroff -f -f".into(),
                        timeout_ms: f.timeout_ms,
                    },
                    other => anyhow::bail!("cluster.fence.agent {other:?}"),
                };
                agent
                    .validate()
                    .map_err(|e| anyhow::anyhow!("cluster.fence: {e}"))?;
                let mut fencer = Fencer::new(agent);
                fencer.retries = f.retries;
                fencer.retry_interval_ms = f.retry_interval_ms;
                fencer.timeout_ms = f.timeout_ms;
                Some(fencer)
            }
        };
        Ok(Resources {
            volumes,
            alua,
            server,
            vips,
            ocf,
            fencer,
            portals,
        })
    }

    /// Put every target's ALUA groups in standby (a head starts passive).
    pub fn set_alua(&self, state: AccessState) {
        for (iqn, alua) in &self.alua {
            for g in alua.groups() {
                if let Err(e) = alua.set(g.id, state) {
                    tracing::warn!(target = %iqn, group = g.id, "cannot set ALUA state {state}: {e}");
                }
            }
        }
    }

    /// Every volume could be promoted here (UpToDate, or already Primary).
    pub fn can_run(&self) -> bool {
        self.volumes
            .iter()
            .all(|h| h.role() == Role::Primary || h.disk() == DiskState::UpToDate)
    }

    /// Some volume is Primary here.
    pub fn any_primary(&self) -> bool {
        self.volumes.iter().any(|h| h.role() == Role::Primary)
    }

    /// Portal IPs and whether this head holds them.
    pub fn vip_holdings(&self) -> Vec<(String, bool)> {
        self.vips
            .iter()
            .map(|(name, v)| (name.clone(), lock(v).monitor().unwrap_or(false)))
            .collect()
    }

    /// Fence the peer (off): (confirmed, one-line report).
    pub async fn fence_peer(self: &Arc<Self>) -> (bool, String) {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || match &me.fencer {
            None => (false, "no fence agent configured".to_string()),
            Some(f) => {
                let r = f.fence(FenceAction::Off);
                (r.success, r.to_string())
            }
        })
        .await
        {
            Ok(r) => r,
            Err(e) => (false, format!("fence task failed: {e}")),
        }
    }

    /// After the peer was fenced while this head runs the service: drop replication
    /// links that have not noticed yet and listen again (the peer rejoins when it is
    /// back), so writes waiting for the dead peer complete now.
    pub async fn reset_replication_links(&self) {
        for h in &self.volumes {
            let connected = h
                .status()
                .await
                .is_some_and(|s| s.replica.conn.is_connected());
            if !connected {
                continue;
            }
            tracing::info!(volume = %h.name(), "the peer is fenced: dropping its replication link");
            if let Err(e) = h.admin(AdminCmd::Disconnect).await {
                tracing::warn!(volume = %h.name(), "disconnect: {e}");
            }
            if let Err(e) = h
                .admin(AdminCmd::Connect {
                    discard_my_data: false,
                })
                .await
            {
                tracing::warn!(volume = %h.name(), "connect: {e}");
            }
        }
    }

    /// Mark every volume's data Outdated (the peer writes alone because only its
    /// replication link failed): true when all are Outdated, or none was UpToDate.
    pub async fn outdate_volumes(&self) -> bool {
        let mut ok = true;
        for h in &self.volumes {
            if let Err(e) = h.admin(AdminCmd::Outdate).await {
                tracing::warn!(volume = %h.name(), "cannot outdate for the peer: {e}");
                ok = false;
            }
        }
        ok
    }

    /// Remove every portal IP at once (blocking; for self-fencing).
    pub fn remove_vips_now(&self) {
        for (name, v) in &self.vips {
            if let Err(e) = lock(v).stop() {
                tracing::error!(vip = %name, "cannot remove the portal IP: {e}");
            }
        }
    }

    /// The portal IP addresses.
    pub fn vip_ips(&self) -> Vec<std::net::IpAddr> {
        self.vips
            .iter()
            .map(|(_, v)| lock(v).config().address)
            .collect()
    }

    /// The start sequence; `tickle` lists the old holder's initiator connections
    /// (local, client) to send tickle ACKs to once the portal IPs are up.
    pub async fn start(
        self: &Arc<Self>,
        takeover: bool,
        tickle: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        for h in &self.volumes {
            if h.role() == Role::Primary {
                continue;
            }
            if takeover {
                // The peer is gone (fenced, or the witness settled it): a replication
                // link that has not timed out yet must not refuse the promotion.
                h.admin(AdminCmd::Disconnect)
                    .await
                    .map_err(|e| format!("volume {}: disconnect: {e}", h.name()))?;
            }
            let deadline = Instant::now() + Duration::from_millis(PROMOTE_WAIT_MS);
            loop {
                match h.admin(AdminCmd::Primary { force: false }).await {
                    Ok(()) => break,
                    Err(e) if e.0.contains("peer is Primary") && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(format!("volume {}: promote: {e}", h.name())),
                }
            }
            if takeover {
                h.admin(AdminCmd::Connect {
                    discard_my_data: false,
                })
                .await
                .map_err(|e| format!("volume {}: connect: {e}", h.name()))?;
            }
            tracing::info!(volume = %h.name(), elapsed_ms = t0.elapsed().as_millis() as u64, "promoted");
        }
        self.set_alua(AccessState::ActiveOptimized);
        for (name, v) in &self.vips {
            let v = v.clone();
            tokio::task::spawn_blocking(move || lock(&v).start())
                .await
                .map_err(|e| format!("portal IP {name}: {e}"))?
                .map_err(|e| format!("portal IP {name}: {e}"))?;
            tracing::info!(vip = %name, elapsed_ms = t0.elapsed().as_millis() as u64, "portal IP added and announced");
        }
        let ips = self.vip_ips();
        let tickle: Vec<_> = tickle
            .into_iter()
            .filter(|(local, _)| ips.contains(&local.ip()))
            .collect();
        if !tickle.is_empty() {
            let n = tickle.len();
            // Best effort: a client that misses it reconnects after its own timeout.
            let r = tokio::task::spawn_blocking(move || {
                tickle
                    .iter()
                    .filter_map(|(l, c)| twinsan_agents::vip::send_tickle_ack(*l, *c, 3).err())
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            tracing::info!(
                connections = n,
                failed = r.len(),
                "tickle ACKs sent to the old holder's initiators"
            );
            for e in r {
                tracing::warn!("tickle ACK: {e}");
            }
        }
        Ok(())
    }

    /// The stop sequence (reverse order).
    pub async fn stop(self: &Arc<Self>) -> Result<(), String> {
        let mut errors = Vec::new();
        for (name, v) in self.vips.iter().rev() {
            let v = v.clone();
            match tokio::task::spawn_blocking(move || lock(&v).stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(format!("portal IP {name}: {e}")),
                Err(e) => errors.push(format!("portal IP {name}: {e}")),
            }
        }
        self.set_alua(AccessState::Standby);
        // Initiators reconnect to the portal IP's next holder and reissue.
        self.server.drop_connections();
        for h in &self.volumes {
            if let Err(e) = self.demote(h).await {
                errors.push(format!("volume {}: demote: {e}", h.name()));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Demote one volume. The initiators' connections are already closed, so nothing
    /// completed from here on reaches an initiator: I/O frozen by fencing is failed,
    /// and writes still waiting for a peer that is gone are cut loose by dropping the
    /// replication link (then it reconnects).
    async fn demote(&self, h: &Handle) -> Result<(), String> {
        let t0 = Instant::now();
        let mut disconnected = false;
        loop {
            // Again on every round: the replication link may time out (and freeze the
            // writes still waiting for the peer) while this head is stopping.
            h.admin(AdminCmd::DropFrozenIo)
                .await
                .map_err(|e| e.to_string())?;
            match h.admin(AdminCmd::Secondary).await {
                Ok(()) => break,
                Err(e) if e.0.contains("in progress") => {
                    let waited = t0.elapsed();
                    if waited > Duration::from_millis(DEMOTE_WAIT_MS) {
                        return Err(e.to_string());
                    }
                    if !disconnected && waited > Duration::from_millis(1500) {
                        tracing::warn!(volume = %h.name(), "writes still wait for the peer; dropping the replication link to demote");
                        h.admin(AdminCmd::Disconnect)
                            .await
                            .map_err(|e| e.to_string())?;
                        disconnected = true;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        if disconnected {
            h.admin(AdminCmd::Connect {
                discard_my_data: false,
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn ocf_agent(&self, name: &str) -> Option<&OcfAgent> {
        self.ocf.iter().find(|a| a.instance == name)
    }

    /// Start or stop one external OCF resource (blocking: call from a blocking task).
    /// A stop that finds it not running (7) succeeded.
    pub fn ocf_op(&self, name: &str, start: bool) -> Result<(), String> {
        let a = self
            .ocf_agent(name)
            .ok_or_else(|| format!("no resource {name}"))?;
        let r = a.run(if start {
            OcfAction::Start
        } else {
            OcfAction::Stop
        });
        match r.status {
            OcfStatus::Success => Ok(()),
            OcfStatus::NotRunning if !start => Ok(()),
            _ => Err(r.to_string()),
        }
    }

    /// Monitor one external OCF resource (blocking): 0, 8 and the degraded codes are
    /// running, 7 is cleanly stopped, anything else failed.
    pub fn ocf_monitor(&self, name: &str) -> MonitorResult {
        let Some(a) = self.ocf_agent(name) else {
            return MonitorResult::Failed(format!("no resource {name}"));
        };
        let r = a.run(OcfAction::Monitor);
        match r.status {
            OcfStatus::Success
            | OcfStatus::RunningPromoted
            | OcfStatus::Degraded
            | OcfStatus::DegradedPromoted => MonitorResult::Running,
            OcfStatus::NotRunning => MonitorResult::NotRunning,
            _ => MonitorResult::Failed(r.to_string()),
        }
    }

    /// Monitor the service group's own resources (volumes, targets, portal IPs) while
    /// it runs here: Err((resource, what)). External OCF resources are monitored by
    /// the resource policy.
    pub async fn monitor(self: &Arc<Self>) -> Result<(), (String, String)> {
        for h in &self.volumes {
            if h.role() != Role::Primary {
                return Err((
                    format!("volume {}", h.name()),
                    format!("not Primary (role {:?}, disk {:?})", h.role(), h.disk()),
                ));
            }
        }
        for (iqn, alua) in &self.alua {
            if let Some(g) = alua
                .groups()
                .into_iter()
                .find(|g| g.state != AccessState::ActiveOptimized)
            {
                return Err((
                    format!("target {iqn}"),
                    format!("ALUA group {} is {}", g.id, g.state),
                ));
            }
        }
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || {
            for (name, v) in &me.vips {
                match lock(v).monitor() {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err((format!("portal IP {name}"), "address missing".into()))
                    }
                    Err(e) => return Err((format!("portal IP {name}"), e.to_string())),
                }
            }
            Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(("monitor".into(), e.to_string())),
        }
        // The target answers on every portal IP.
        for ip in self.vip_ips() {
            for p in &self.portals {
                if !(p.ip().is_unspecified() || p.ip() == ip) {
                    continue;
                }
                let addr = std::net::SocketAddr::new(ip, p.port());
                match tokio::time::timeout(
                    Duration::from_millis(1000),
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err((format!("target portal {addr}"), e.to_string())),
                    Err(_) => {
                        return Err((format!("target portal {addr}"), "connect timed out".into()))
                    }
                }
            }
        }
        Ok(())
    }
}
