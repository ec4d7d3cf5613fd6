//! Running one node from a validated configuration: open the LUN devices, build the
//! SCSI logical units and iSCSI targets, bind the portals, serve until shutdown.
//!
//! Owns: the mapping from [`NodeConfig`] to runtime objects (including each target's
//! ALUA state and the control socket serving it). It is the only place that opens
//! backing devices and secret files at start-up; protocol logic lives in the
//! `twinsan-iscsi` and `twinsan-scsi` crates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use tracing::info;

use twinsan_blockdev::SliceDevice;
use twinsan_blockdev::{BlockDevice, DirectPreference, EnginePreference, FileDevice, FileOptions};
use twinsan_iscsi::{ChapCredentials, PortalGroup, Server, ServerConfig, TargetConfig};
use twinsan_scsi::{
    AluaState, DeviceReservationStore, FileReservationStore, LogicalUnit, LunConfig, LunMap,
    PrRestore, PR_AREA_BYTES,
};

use crate::config::{self, LunSection, NodeConfig};
use crate::control::{self, ControlSocket};
use crate::secrets::read_secret_file;
use twinsan_replication::driver::{Driver, ReplicatedDevice};

/// Open the backing device of one LUN as the config says.
pub fn open_lun_device(l: &LunSection) -> anyhow::Result<Arc<dyn BlockDevice>> {
    let Some(path) = &l.path else {
        bail!("LUN {} has no path", l.lun);
    };
    let opts = FileOptions {
        read_only: l.read_only,
        create_size_bytes: match &l.size {
            Some(s) => Some(config::parse_size(s).map_err(anyhow::Error::msg)?),
            None => None,
        },
        logical_block_size: l.block_size,
        engine: match l.engine.as_str() {
            "io_uring" => EnginePreference::Uring,
            "sync" => EnginePreference::Sync,
            _ => EnginePreference::Auto,
        },
        direct: match l.direct_io.as_str() {
            "on" => DirectPreference::On,
            "off" => DirectPreference::Off,
            _ => DirectPreference::Auto,
        },
        write_cache: l.write_cache,
    };
    let dev = FileDevice::open(path, &opts).with_context(|| format!("LUN {}", l.lun))?;
    info!(lun = l.lun, "{}", dev.describe());
    Ok(Arc::new(dev))
}

fn chap(
    user: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> anyhow::Result<Option<ChapCredentials>> {
    match (user, file) {
        (Some(user), Some(file)) => Ok(Some(ChapCredentials {
            user: user.clone(),
            secret: read_secret_file(file)?,
        })),
        (None, None) => Ok(None),
        _ => bail!("CHAP needs both a user and a secret file"),
    }
}

/// What [`build_server_config`] builds.
pub struct Built {
    /// The iSCSI server configuration.
    pub server: ServerConfig,
    /// Every portal with its portal group tag.
    pub portals: Vec<(SocketAddr, u16)>,
    /// The ALUA state of every target, by IQN (what the control socket drives).
    pub alua: control::Targets,
}

/// The devices of the node's replicated volumes, by name.
pub type ReplicatedDevices = BTreeMap<String, Arc<ReplicatedDevice>>;

/// Build the iSCSI server configuration (opens devices and reads secrets). LUNs on
/// replicated volumes use the devices in `replicated`.
pub fn build_server_config(
    cfg: &NodeConfig,
    replicated: &ReplicatedDevices,
) -> anyhow::Result<Built> {
    let mut portals = Vec::new();
    let mut groups = BTreeMap::new();
    for pg in &cfg.portal_groups {
        let mut addrs = Vec::new();
        for l in &pg.listen {
            let a: SocketAddr = l.parse().with_context(|| format!("portal {l:?}"))?;
            portals.push((a, pg.tag));
            addrs.push(a);
        }
        groups.insert(
            pg.tag,
            PortalGroup {
                tag: pg.tag,
                portals: addrs,
                relative_port_id: pg.relative_port_id(),
            },
        );
    }
    let mut targets = Vec::new();
    let mut alua_states = Vec::new();
    for t in &cfg.targets {
        let mut luns = Vec::new();
        for l in &t.luns {
            let mut lc = LunConfig::new(
                l.uuid
                    .unwrap_or_else(|| config::derived_lun_uuid(&t.iqn, l.lun)),
            );
            lc.read_only = l.read_only;
            let dev: Arc<dyn BlockDevice> = match &l.replicated {
                Some(name) => {
                    let Some(vol) = replicated.get(name) else {
                        bail!("LUN {}: replicated volume {name:?} is not running", l.lun);
                    };
                    // The reservation record lives in the last 128 KiB of the replicated
                    // volume, so it is replicated with the data and follows the primary
                    // (reloaded when the volume is promoted here); the LUN is the rest.
                    let Some((store, usable)) = DeviceReservationStore::at_end(vol.clone()) else {
                        bail!(
                            "LUN {}: replicated volume {name:?} is too small for a LUN and its \
                             reservation area ({PR_AREA_BYTES} bytes)",
                            l.lun
                        );
                    };
                    lc.pr_store = Some(Arc::new(store));
                    lc.pr_restore = PrRestore::Takeover;
                    Arc::new(
                        SliceDevice::new(vol.clone(), 0, usable).with_context(|| {
                            format!("LUN {}: replicated volume {name:?}", l.lun)
                        })?,
                    )
                }
                None => {
                    if let Some(pr) = l.pr_file() {
                        lc.pr_store = Some(Arc::new(FileReservationStore::new(pr)));
                    }
                    open_lun_device(l)?
                }
            };
            luns.push((l.lun, Arc::new(LogicalUnit::new(lc, dev))));
        }
        let portal_groups = if t.portal_groups.is_empty() {
            groups.values().cloned().collect()
        } else {
            t.portal_groups
                .iter()
                .filter_map(|tag| groups.get(tag).cloned())
                .collect()
        };
        let alua = AluaState::new(config::alua_config(cfg, &t.portal_groups))
            .with_context(|| format!("target {}: ALUA target port groups", t.iqn))?;
        alua_states.push((t.iqn.clone(), alua.clone()));
        targets.push(TargetConfig {
            iqn: t.iqn.clone(),
            alias: t.alias.clone(),
            luns: Arc::new(LunMap::new(luns).with_alua(alua)),
            allowed_initiators: t.allowed_initiators.clone(),
            chap: chap(&t.chap_user, &t.chap_secret_file)?,
            mutual_chap: chap(&t.mutual_chap_user, &t.mutual_chap_secret_file)?,
            portal_groups,
        });
    }
    let is = &cfg.iscsi;
    let sc = ServerConfig {
        targets,
        discovery_chap: chap(&is.discovery_chap_user, &is.discovery_chap_secret_file)?,
        max_recv_data_segment_len_bytes: is.max_recv_data_segment_len_bytes,
        max_burst_len_bytes: is.max_burst_len_bytes,
        first_burst_len_bytes: is.first_burst_len_bytes,
        queue_depth: is.queue_depth,
        nop_in_interval_ms: is.nop_in_interval_ms,
        nop_in_timeout_ms: is.nop_in_timeout_ms,
        max_sessions: is.max_sessions,
        login_timeout_ms: is.login_timeout_ms,
    };
    Ok(Built {
        server: sc,
        portals,
        alua: alua_states,
    })
}

/// The control socket path for `cfg`: configured (`None` when configured empty) or
/// the default for the node name, else for the first portal.
pub fn control_path(cfg: &NodeConfig) -> Option<std::path::PathBuf> {
    match &cfg.node.control_socket {
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(p.clone()),
        None => {
            let name = match &cfg.node.name {
                Some(n) => n.clone(),
                None => format!(
                    "twinsan-{}",
                    cfg.portal_groups
                        .first()
                        .and_then(|g| g.listen.first())
                        .map(String::as_str)
                        .unwrap_or("node")
                ),
            };
            Some(control::default_path(&name))
        }
    }
}

/// Serve `cfg` until `shutdown` is cancelled.
pub async fn run(cfg: &NodeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node = cfg.node.name.as_deref().unwrap_or("(unnamed)");
    info!(
        node,
        version = env!("CARGO_PKG_VERSION"),
        "twinsan node starting"
    );
    // Replicated volumes first (DRBD "up": attach + connect, Secondary), then the
    // target on top of them.
    let drivers = crate::replicated::start_all(cfg).await?;
    let res = serve(cfg, &drivers, shutdown).await;
    for d in drivers {
        let name = d.handle.name().to_string();
        if let Err(e) = d.stop().await {
            tracing::warn!(volume = %name, "replicated volume stopped uncleanly: {e}");
        }
    }
    res?;
    info!("stopped");
    Ok(())
}

async fn serve(
    cfg: &NodeConfig,
    drivers: &[Driver],
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let devices: ReplicatedDevices = drivers
        .iter()
        .map(|d| (d.handle.name().to_string(), d.device.clone()))
        .collect();
    let Built {
        server: sc,
        portals,
        alua,
    } = build_server_config(cfg, &devices)?;
    let portal_addrs: Vec<SocketAddr> = portals.iter().map(|(a, _)| *a).collect();
    let mut listeners = Vec::new();
    for (addr, tag) in portals {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        info!(portal = %l.local_addr()?, tpgt = tag, "listening");
        listeners.push((l, tag));
    }
    for t in &sc.targets {
        info!(target = %t.iqn, luns = t.luns.luns().count(), chap = t.chap.is_some(), mutual_chap = t.mutual_chap.is_some(), acl = t.allowed_initiators.len(), "target ready");
    }
    // The control socket: a configured path must work; the default is best effort
    // (e.g. two unnamed nodes on one host).
    let control = match control_path(cfg) {
        None => None,
        Some(path) => match ControlSocket::bind(&path) {
            Ok(s) => {
                info!(socket = %s.path().display(), "control socket ready");
                Some(s)
            }
            Err(e) if cfg.node.control_socket.is_some() => return Err(e),
            Err(e) => {
                tracing::warn!("no control socket: {e:#}");
                None
            }
        },
    };
    let server = Server::new(sc);
    let volumes: Vec<_> = drivers.iter().map(|d| d.handle.clone()).collect();
    // With [cluster], the HA manager decides which head serves: every target starts in
    // ALUA standby (passive) and the manager promotes, activates and adds the portal
    // IPs on the head it picks.
    let ha_stop = CancellationToken::new();
    let (ha, ha_task) = match &cfg.cluster {
        None => (None, None),
        Some(c) => {
            let res = Arc::new(crate::ha::resources::Resources::new(
                c,
                volumes.clone(),
                alua.clone(),
                server.clone(),
                portal_addrs,
            )?);
            if !res.any_primary() {
                res.set_alua(twinsan_scsi::AccessState::Standby);
            }
            let (h, t) = crate::ha::runtime::start(c, res, ha_stop.clone()).await?;
            (Some(h), Some(t))
        }
    };
    let ctx = Arc::new(control::Context {
        alua,
        replicated: volumes,
        ha,
        server: Some(server.clone()),
    });
    let control_task = control.map(|c| tokio::spawn(c.serve(ctx, shutdown.clone())));
    let res = server
        .run(listeners, shutdown.clone())
        .await
        .context("iSCSI server failed");
    shutdown.cancel();
    ha_stop.cancel();
    if let Some(t) = ha_task {
        let _ = t.await;
    }
    if let Some(t) = control_task {
        let _ = t.await;
    }
    res
}
