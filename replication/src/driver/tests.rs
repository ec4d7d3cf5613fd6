//! The driver over loopback TCP with memory disks: connect, authenticate, replicate,
//! switch roles, refuse a wrong secret, run handlers, persist metadata.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use twinsan_blockdev::{BlockDevice, BlockError, MemDevice};

use super::*;
use crate::meta::CreateOptions;
use crate::types::ConnState;

const UUID: [u8; 16] = *b"driver-test-vol!";
const SIZE: u64 = 64 << 20;

fn free_addr() -> SocketAddr {
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn disk(assume_clean: bool, node: u8, peer: u8) -> Arc<dyn BlockDevice> {
    let d: Arc<dyn BlockDevice> = Arc::new(MemDevice::new(SIZE, 512));
    create_md(
        d.clone(),
        &CreateOptions::new(UUID, node, peer, true),
        assume_clean,
    )
    .unwrap();
    d
}

fn cfg(node: u8, peer: u8, me: SocketAddr, other: SocketAddr, secret: &[u8]) -> DriverConfig {
    let mut r = ReplicaConfig::new(node, &format!("n{node}"), peer, UUID);
    r.ping_int_ms = 200;
    r.ping_timeout_ms = 500;
    r.timeout_ms = 2000;
    let mut c = DriverConfig::new("r0", r, me, other, secret.to_vec());
    c.connect_int_ms = 50;
    c.handshake_timeout_ms = 2000;
    c
}

async fn wait_for(h: &Handle, what: &str, f: impl Fn(&DriverStatus) -> bool) -> DriverStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = h.status().await.expect("status");
        if f(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            s.summary()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn connected_uptodate(s: &DriverStatus) -> bool {
    s.replica.conn == ConnState::Connected
        && s.replica.disk == DiskState::UpToDate
        && s.replica.peer_disk == Some(DiskState::UpToDate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicates_and_switches_roles() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (da, db) = (disk(true, 1, 2), disk(true, 2, 1));
    let secret = b"0123456789abcdef-secret";
    let a = Driver::start(
        cfg(1, 2, a_addr, b_addr, secret),
        da.clone(),
        da.clone(),
        true,
        true,
    )
    .await
    .unwrap();
    let b = Driver::start(
        cfg(2, 1, b_addr, a_addr, secret),
        db.clone(),
        db.clone(),
        true,
        true,
    )
    .await
    .unwrap();
    wait_for(&a.handle, "A connected", connected_uptodate).await;
    wait_for(&b.handle, "B connected", connected_uptodate).await;

    // Secondary refuses I/O through the device.
    let dev_a = a.device.clone();
    let mut buf = vec![0u8; 4096];
    let e = tokio::task::spawn_blocking({
        let d = dev_a.clone();
        move || d.write_at(&[1u8; 4096], 0, false).unwrap_err()
    })
    .await
    .unwrap();
    assert!(
        matches!(e, BlockError::NotReady(ref m) if m.contains("Secondary")),
        "{e}"
    );
    assert!(matches!(
        dev_a.read_at(&mut buf, 0),
        Err(BlockError::NotReady(_))
    ));

    a.handle
        .admin(AdminCmd::Primary { force: false })
        .await
        .unwrap();
    // Writes through the device, from a runtime worker (block_in_place) and from a
    // plain thread; one larger than write_bytes_max (split).
    let pattern: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    {
        let d = dev_a.clone();
        let p = pattern.clone();
        tokio::task::spawn(async move { d.write_at(&p[..4096], 8192, true).unwrap() })
            .await
            .unwrap();
    }
    {
        let d = dev_a.clone();
        let p = pattern.clone();
        std::thread::spawn(move || {
            d.write_at(&p, 1 << 20, false).unwrap();
            d.flush().unwrap();
        })
        .join()
        .unwrap();
    }
    // Protocol C: on B's disk when the write completed.
    let mut got = vec![0u8; pattern.len()];
    db.read_at(&mut got, 1 << 20).unwrap();
    assert!(got == pattern, "B's disk differs");
    dev_a.read_at(&mut buf, 8192).unwrap();
    assert_eq!(&buf[..], &pattern[..4096]);
    let s = a.handle.status().await.unwrap();
    assert!(s.replica.counters.data_sent_bytes >= pattern.len() as u64);
    assert!(
        s.to_json().contains("\"role\":\"Primary\""),
        "{}",
        s.to_json()
    );

    // Switch roles.
    b.handle
        .admin(AdminCmd::Primary { force: false })
        .await
        .expect_err("peer is primary");
    a.handle.admin(AdminCmd::Secondary).await.unwrap();
    wait_for(&b.handle, "A secondary seen by B", |s| {
        s.replica.peer_role == Some(Role::Secondary)
    })
    .await;
    b.handle
        .admin(AdminCmd::Primary { force: false })
        .await
        .unwrap();
    let dev_b = b.device.clone();
    let mut got = vec![0u8; 4096];
    dev_b.read_at(&mut got, 8192).unwrap();
    assert_eq!(&got[..], &pattern[..4096]);

    b.handle.admin(AdminCmd::Secondary).await.unwrap();
    a.stop().await.unwrap();
    b.stop().await.unwrap();

    // Clean metadata after an orderly stop; a restart attaches UpToDate.
    let (_, loaded) = MetaStore::open(da.clone(), true).unwrap();
    assert!(
        loaded.superblock.has(sb_flag::CLEAN),
        "{}",
        sb_flag::names(loaded.superblock.flags)
    );
    assert!(loaded.superblock.has(sb_flag::CONSISTENT));
    let a = Driver::start(
        cfg(1, 2, a_addr, b_addr, secret),
        da.clone(),
        da,
        true,
        false,
    )
    .await
    .unwrap();
    let s = a.handle.status().await.unwrap();
    assert_eq!(s.replica.disk, DiskState::UpToDate);
    assert_eq!(s.replica.conn, ConnState::StandAlone);
    a.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_reported() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (da, db) = (disk(true, 1, 2), disk(true, 2, 1));
    let a = Driver::start(
        cfg(1, 2, a_addr, b_addr, b"the-right-secret-123"),
        da.clone(),
        da,
        true,
        true,
    )
    .await
    .unwrap();
    let b = Driver::start(
        cfg(2, 1, b_addr, a_addr, b"a-wrong-secret-4567"),
        db.clone(),
        db,
        true,
        true,
    )
    .await
    .unwrap();
    let s = wait_for(&a.handle, "auth failure on A", |s| {
        s.last_connect_error
            .as_deref()
            .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    assert_eq!(s.replica.conn, ConnState::Connecting);
    assert!(s.connection.is_none());
    let j = s.to_json();
    assert!(
        !j.contains("right-secret") && !j.contains("wrong-secret"),
        "{j}"
    );
    let s = wait_for(&b.handle, "auth failure on B", |s| {
        s.last_connect_error
            .as_deref()
            .is_some_and(|e| e.contains("authentication failed"))
    })
    .await;
    assert!(s.connection.is_none(), "{}", s.summary());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_after_disconnect_and_handlers_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("handlers.log");
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (da, db) = (disk(true, 1, 2), disk(true, 2, 1));
    let secret = b"0123456789abcdef";
    let mut cb = cfg(2, 1, b_addr, a_addr, secret);
    cb.handlers.insert(
        "before-resync-target".into(),
        format!(
            "echo \"$TWINSAN_HANDLER $TWINSAN_RESOURCE $TWINSAN_NODE_ID\" >> {}",
            marker.display()
        ),
    );
    let a = Driver::start(
        cfg(1, 2, a_addr, b_addr, secret),
        da.clone(),
        da.clone(),
        true,
        true,
    )
    .await
    .unwrap();
    let b = Driver::start(cb, db.clone(), db.clone(), true, true)
        .await
        .unwrap();
    wait_for(&a.handle, "connected", connected_uptodate).await;
    b.handle.admin(AdminCmd::Disconnect).await.unwrap();
    a.handle
        .admin(AdminCmd::Primary { force: false })
        .await
        .unwrap();
    wait_for(&a.handle, "A sees the disconnect", |s| {
        s.connection.is_none()
    })
    .await;
    let data = Bytes::from(vec![0x5Au8; 256 * 1024]);
    a.handle.write(4 << 20, data.clone(), false).await.unwrap();
    let s = a.handle.status().await.unwrap();
    assert_eq!(s.replica.out_of_sync_bytes, 256 * 1024, "{}", s.summary());
    b.handle
        .admin(AdminCmd::Connect {
            discard_my_data: false,
        })
        .await
        .unwrap();
    wait_for(&b.handle, "resynced", |s| {
        connected_uptodate(s) && s.replica.out_of_sync_bytes == 0
    })
    .await;
    let mut got = vec![0u8; data.len()];
    db.read_at(&mut got, 4 << 20).unwrap();
    assert!(got[..] == data[..]);
    let s = wait_for(&b.handle, "handler recorded", |s| {
        s.handlers
            .iter()
            .any(|h| h.handler == "before-resync-target" && h.configured)
    })
    .await;
    assert!(
        s.handlers.iter().all(|h| h.exit_code == 0),
        "{:?}",
        s.handlers
    );
    let log = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(log.trim(), "before-resync-target r0 2");
    a.handle.admin(AdminCmd::Secondary).await.unwrap();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[test]
fn superblock_mapping_round_trips() {
    let d = disk(true, 1, 2);
    let (_, loaded) = MetaStore::open(d, true).unwrap();
    let sb = loaded.superblock;
    let p = persisted_from_superblock(&sb);
    assert_eq!(p.disk, DiskState::UpToDate);
    assert!(p.clean);
    assert_eq!(p.gens.current, assume_clean_generation(&UUID));
    for disk in [
        DiskState::Outdated,
        DiskState::Inconsistent,
        DiskState::UpToDate,
    ] {
        let q = Persisted {
            disk,
            was_primary: true,
            clean: false,
            crashed_primary: true,
            primary_since_ms: 77,
            ..p
        };
        let back = persisted_from_superblock(&superblock_from_persisted(&sb, &q));
        assert_eq!(back, q);
    }
    // Deterministic, never the just-created value, role bit clear.
    let g = assume_clean_generation(&UUID);
    assert_eq!(g, assume_clean_generation(&UUID));
    assert_ne!(g, assume_clean_generation(b"another-volume!!"));
    assert!(g > 0xFF && g & UUID_PRIMARY_BIT == 0);
}
