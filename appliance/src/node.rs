//! Running one node from a validated configuration: open the LUN devices, build the
//! SCSI logical units and iSCSI targets, bind the portals, serve until shutdown.
//!
//! Owns: the mapping from [`NodeConfig`] to runtime objects. It is the only place that
//! opens backing devices and secret files at start-up; protocol logic lives in the
//! `twinsan-iscsi` and `twinsan-scsi` crates.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;
use tracing::info;

use twinsan_blockdev::{BlockDevice, DirectPreference, EnginePreference, FileDevice, FileOptions};
use twinsan_iscsi::{ChapCredentials, PortalGroup, Server, ServerConfig, TargetConfig};
use twinsan_scsi::{FileReservationStore, LogicalUnit, LunConfig, LunMap};

use crate::config::{self, LunSection, NodeConfig};
use crate::secrets::read_secret_file;

/// Open the backing device of one LUN as the config says.
pub fn open_lun_device(l: &LunSection) -> anyhow::Result<Arc<dyn BlockDevice>> {
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
    let dev = FileDevice::open(&l.path, &opts).with_context(|| format!("LUN {}", l.lun))?;
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

/// Build the iSCSI server configuration (opens devices and reads secrets).
pub fn build_server_config(
    cfg: &NodeConfig,
) -> anyhow::Result<(ServerConfig, Vec<(SocketAddr, u16)>)> {
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
            },
        );
    }
    let mut targets = Vec::new();
    for t in &cfg.targets {
        let mut luns = Vec::new();
        for l in &t.luns {
            let dev = open_lun_device(l)?;
            let mut lc = LunConfig::new(
                l.uuid
                    .unwrap_or_else(|| config::derived_lun_uuid(&t.iqn, l.lun)),
            );
            lc.read_only = l.read_only;
            if let Some(pr) = l.pr_file() {
                lc.pr_store = Some(Arc::new(FileReservationStore::new(pr)));
            }
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
        targets.push(TargetConfig {
            iqn: t.iqn.clone(),
            alias: t.alias.clone(),
            luns: Arc::new(LunMap::new(luns)),
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
    Ok((sc, portals))
}

/// Serve `cfg` until `shutdown` is cancelled.
pub async fn run(cfg: &NodeConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let node = cfg.node.name.as_deref().unwrap_or("(unnamed)");
    info!(
        node,
        version = env!("CARGO_PKG_VERSION"),
        "twinsan node starting"
    );
    let (sc, portals) = build_server_config(cfg)?;
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
    let server = Server::new(sc);
    server
        .run(listeners, shutdown)
        .await
        .context("iSCSI server failed")?;
    info!("stopped");
    Ok(())
}
