//! A throwaway iSCSI target over memory LUNs, for trying initiators by hand:
//! `cargo run --release -p twinsan-iscsi --example memtarget -- 127.0.0.1:3260[,127.0.0.1:3261] [size_mib] [file]`
//! With a file path, the LUN is a file device instead of memory.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use twinsan_blockdev::{BlockDevice, FileDevice, FileOptions, MemDevice};
use twinsan_iscsi::{ChapCredentials, Server, ServerConfig, TargetConfig};
use twinsan_scsi::{LogicalUnit, LunConfig, LunMap};

fn creds(user: &str, secret: &str) -> Option<ChapCredentials> {
    Some(ChapCredentials {
        user: std::env::var(user).ok()?,
        secret: std::env::var(secret).ok()?.into_bytes(),
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:3260".into());
    let size_mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let dev: Arc<dyn BlockDevice> = match args.get(3) {
        Some(path) => Arc::new(
            FileDevice::open(
                path,
                &FileOptions {
                    create_size_bytes: Some(size_mib * 1024 * 1024),
                    ..FileOptions::default()
                },
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?,
        ),
        None => Arc::new(MemDevice::new(size_mib * 1024 * 1024, 512)),
    };
    let lu = Arc::new(LogicalUnit::new(LunConfig::new(uuid::Uuid::new_v4()), dev));
    let luns = Arc::new(LunMap::new(vec![(0, lu)]));
    let cfg = ServerConfig {
        targets: vec![TargetConfig {
            iqn: "iqn.2026-11.org.example:disk".into(),
            alias: Some("memdisk".into()),
            luns,
            allowed_initiators: vec![],
            // CHAP_USER/CHAP_SECRET (and MUTUAL_USER/MUTUAL_SECRET) turn on CHAP.
            chap: creds("CHAP_USER", "CHAP_SECRET"),
            mutual_chap: creds("MUTUAL_USER", "MUTUAL_SECRET"),
            portal_groups: vec![],
        }],
        ..ServerConfig::default()
    };
    // EXEC_THREADS overrides the executor pool size (0: none).
    let server = match std::env::var("EXEC_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(n) => Server::with_exec_threads(cfg, n),
        None => Server::new(cfg),
    };
    // Several portals: "127.0.0.1:3260,127.0.0.1:3261" (portal group tags 1, 2, ...).
    let mut listeners = Vec::new();
    for (i, a) in addr.split(',').enumerate() {
        listeners.push((tokio::net::TcpListener::bind(a).await?, i as u16 + 1));
        eprintln!("listening on {a}");
    }
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s2.cancel();
    });
    server.run(listeners, stop).await
}
