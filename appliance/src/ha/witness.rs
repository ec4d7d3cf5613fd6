//! `twinsan witness`: the tiny third-site process that gives its vote to one head of a
//! partitioned two-head cluster (sans-IO logic in `twinsan_ha::witness`; this is its
//! UDP driver).
//!
//! Owns: the witness's UDP socket, its persisted boot counter and its log lines.
//!
//! May not touch: anything of the heads; it only answers their vote requests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

use twinsan_ha::witness::{Action, Event, Input, Witness, WitnessConfig};

/// Run a witness for cluster `name` (node ids `nodes`) on `listen` until `shutdown`.
pub async fn run(
    name: &str,
    nodes: [u8; 2],
    listen: SocketAddr,
    secret_file: &Path,
    state_dir: &Path,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let secret = crate::replicated::read_secret(secret_file).context("--secret-file")?;
    let boot = super::next_boot(state_dir)?;
    let cfg = WitnessConfig::new(super::cluster_id(name), nodes, boot);
    let mut w = Witness::new(cfg, &secret).map_err(|e| anyhow::anyhow!("witness: {e}"))?;
    let sock = tokio::net::UdpSocket::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    info!(cluster = name, nodes = ?nodes, %listen, boot, "witness ready");
    let t0 = Instant::now();
    let mut buf = vec![0u8; 512];
    loop {
        let now = t0.elapsed().as_millis() as u64;
        let sleep_ms = w
            .next_timeout_ms()
            .map_or(1000, |t| t.saturating_sub(now).clamp(1, 1000));
        let from = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {
                w.handle(t0.elapsed().as_millis() as u64, Input::Tick);
                None
            }
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    w.handle(t0.elapsed().as_millis() as u64, Input::Datagram { bytes: buf[..n].to_vec() });
                    Some(from)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "receive failed");
                    None
                }
            }
        };
        while let Some(a) = w.poll_action() {
            match a {
                Action::Reply { bytes, .. } => {
                    if let Some(to) = from {
                        let _ = sock.try_send_to(&bytes, to);
                    }
                }
                Action::Event(e) => match e {
                    Event::Granted { node, term } => {
                        info!(node, term, "vote granted")
                    }
                    Event::Expired { node, term } => info!(node, term, "vote expired"),
                    Event::Released { node, term } => info!(node, term, "vote released"),
                    #[allow(unreachable_patterns)]
                    other => info!(?other, "witness event"),
                },
            }
        }
    }
    info!("witness stopped");
    Ok(())
}
