//! The tokio driver: runs one [`Replica`] per replicated volume for real — its
//! metadata on a [`MetaStore`], its data on a [`BlockDevice`], its peer over an
//! authenticated TCP connection, its handlers as shell commands — and exposes the
//! volume as a [`BlockDevice`] ([`ReplicatedDevice`]) and to operators ([`Handle`]).
//!
//! Owns: one owner task per volume ("one owner per state": it alone holds the
//! `Replica`, the `MetaStore` and the connection state and applies events in order),
//! the network tasks (listener or connector, the link authentication, one reader and
//! one writer task per connection), disk I/O on tokio's blocking pool, handler
//! processes, and the translation between the synchronous `BlockDevice` world and the
//! owner task.
//!
//! May not touch: replication policy (every decision is the replica's), SCSI/iSCSI.
//!
//! ## Rules the owner keeps
//!
//! - Actions run in the order the replica emits them. `Persist*` actions are durable
//!   (FUA metadata writes, awaited) before the next action runs; `PersistBitmap` and
//!   `PersistAl { flush_data_first: true }` flush the data device first; `DiskWrite`, `DiskRead`
//!   and `DiskFlush` run concurrently on the blocking pool and come back as
//!   [`Input::DiskDone`].
//! - Time is wall-clock milliseconds since the UNIX epoch: `primary_since_ms` is
//!   persisted and compared between the nodes (discard-younger/older-primary), so both
//!   must use the same clock. The replica never lets its clock go backwards (it keeps
//!   the maximum it has seen); a large forward step of the system clock can expire
//!   timers early (one reconnect, no data risk).
//! - [`Input::Tick`] comes at [`Replica::next_timeout_ms`], at least once a second, and
//!   at least every 100 ms while a resync or verify runs.
//! - Connections: the node with the lower node id listens, the other connects (every
//!   `connect_int_ms` while the replica wants a connection). Each connection is
//!   authenticated ([`crate::auth`], 32 random bytes of challenge, bounded by
//!   `handshake_timeout_ms`) before the first frame; only one connection is live at a
//!   time; a second one is refused.
//! - The writer of a connection never blocks the owner: messages are queued, Ping and
//!   PingAck ahead of bulk traffic, and the owner stops taking new application writes
//!   while more than [`SEND_QUEUE_HIGH_BYTES`] wait to be sent.
//! - A metadata write that fails is logged and shown in status (`meta_error`); from
//!   then on application writes fail with an I/O error (the activity log and bitmap
//!   could no longer protect them), reads keep working.

mod device;
mod net;
mod owner;
mod status;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use twinsan_blockdev::{BlockDevice, FileDevice};

use crate::bitmap::Bitmap;
use crate::meta::{sb_flag, CreateOptions, Layout, MetaError, MetaStore, Superblock};
use crate::replica::{AdminCmd, AdminError, AppError, Persisted, ReplicaConfig};
use crate::types::{DiskState, Generations, Role, UUID_PRIMARY_BIT};

pub use device::ReplicatedDevice;
pub use status::{ConnectionInfo, DriverStatus, HandlerRun};

/// Messages and bytes a connection's writer may hold before the owner stops taking
/// new application writes (until the writer has caught up).
pub const SEND_QUEUE_HIGH_BYTES: u64 = 64 << 20;
/// Commands waiting for the owner task at most (callers wait beyond that).
const COMMAND_QUEUE_LEN: usize = 1024;

/// Configuration of one replicated volume's driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Resource name (logs, status, handler environment).
    pub name: String,
    /// The replica's configuration (identity, protocol, policies, timers).
    pub replica: ReplicaConfig,
    /// This node's replication address (listened on by the node with the lower id; the
    /// other node connects from its IP).
    pub address: SocketAddr,
    /// The peer's replication address.
    pub peer_address: SocketAddr,
    /// The shared secret (≥ 16 bytes) for link authentication. Never logged.
    pub secret: Vec<u8>,
    /// Interval between connection attempts.
    pub connect_int_ms: u64,
    /// Limit for TCP connect plus authentication of one connection.
    pub handshake_timeout_ms: u64,
    /// Handler commands by handler name ([`crate::replica::Handler::name`]); run with
    /// `/bin/sh -c`. A handler not listed exits 0 at once.
    pub handlers: BTreeMap<String, String>,
    /// A handler still running after this long is killed (exit code -1).
    pub handler_timeout_ms: u64,
    /// Promote this node by itself the first time it is connected with both disks
    /// UpToDate (DRBD's `become-primary-on-both`; needs allow-two-primaries).
    pub become_primary_on_both: bool,
}

impl DriverConfig {
    /// Defaults (500 ms connect interval, 5 s handshake, no handlers, 60 s handler
    /// timeout) around a replica configuration.
    pub fn new(
        name: &str,
        replica: ReplicaConfig,
        address: SocketAddr,
        peer_address: SocketAddr,
        secret: Vec<u8>,
    ) -> Self {
        DriverConfig {
            name: name.to_string(),
            replica,
            address,
            peer_address,
            secret,
            connect_int_ms: 500,
            handshake_timeout_ms: 5000,
            handlers: BTreeMap::new(),
            handler_timeout_ms: 60_000,
            become_primary_on_both: false,
        }
    }
}

/// Why a volume could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The metadata could not be read or is not this volume's.
    #[error("replicated volume {name}: {source}")]
    Meta {
        /// Volume.
        name: String,
        /// Why.
        source: MetaError,
    },
    /// The metadata belongs to another volume or node.
    #[error("replicated volume {name}: {reason}")]
    Mismatch {
        /// Volume.
        name: String,
        /// What differs.
        reason: String,
    },
    /// The replication address could not be bound.
    #[error("replicated volume {name}: cannot listen on {address}: {source}")]
    Listen {
        /// Volume.
        name: String,
        /// Address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Anything else at start-up (the secret, the random source, a task).
    #[error("replicated volume {name}: {reason}")]
    Other {
        /// Volume.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Requests to the owner task.
#[derive(Debug)]
enum Cmd {
    Write {
        offset_bytes: u64,
        data: Bytes,
        fua: bool,
        reply: oneshot::Sender<Result<(), AppError>>,
    },
    Flush {
        reply: oneshot::Sender<Result<(), AppError>>,
    },
    Admin {
        cmd: AdminCmd,
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
    Status {
        reply: oneshot::Sender<DriverStatus>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<(), AdminError>>,
    },
}

/// State the owner publishes after every input, read without asking it.
#[derive(Debug)]
struct Shared {
    name: String,
    size_bytes: u64,
    write_bytes_max: u32,
    /// Primary with current (UpToDate) data: local reads are served.
    readable: AtomicBool,
    /// Incremented each time `readable` goes from false to true.
    activations: AtomicU64,
    /// [`role_code`] of the current role.
    role: AtomicU8,
    /// [`disk_code`] of the current disk state.
    disk: AtomicU8,
    /// The owner task has stopped.
    stopped: AtomicBool,
}

fn role_code(r: Role) -> u8 {
    match r {
        Role::Primary => 1,
        Role::Secondary => 2,
    }
}

fn disk_code(d: DiskState) -> u8 {
    match d {
        DiskState::Diskless => 0,
        DiskState::Attaching => 1,
        DiskState::Inconsistent => 2,
        DiskState::Outdated => 3,
        DiskState::Consistent => 4,
        DiskState::UpToDate => 5,
    }
}

fn disk_from_code(c: u8) -> DiskState {
    match c {
        1 => DiskState::Attaching,
        2 => DiskState::Inconsistent,
        3 => DiskState::Outdated,
        4 => DiskState::Consistent,
        5 => DiskState::UpToDate,
        _ => DiskState::Diskless,
    }
}

/// A clonable handle to a running volume's owner task.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
}

/// What a caller gets when the owner task is gone.
fn stopped_app() -> AppError {
    AppError::DiskNotReady(DiskState::Diskless)
}

fn stopped_admin(name: &str) -> AdminError {
    AdminError(format!("replicated volume {name} is stopped"))
}

/// Run `f`, which blocks, from any thread: directly on a plain thread, inside
/// `block_in_place` on a multi-threaded runtime's worker, on a helper thread inside a
/// current-thread runtime (which cannot block).
fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match tokio::runtime::Handle::try_current() {
        Err(_) => f(),
        Ok(h) => match h.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
            _ => std::thread::scope(|s| match s.spawn(f).join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }),
        },
    }
}

impl Handle {
    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Usable size of the replicated data in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.shared.size_bytes
    }

    /// Whether local reads are served now (Primary with UpToDate data).
    pub fn readable(&self) -> bool {
        self.shared.readable.load(Ordering::Acquire)
    }

    /// How many times the volume became readable here (see
    /// `BlockDevice::activation_epoch`).
    pub fn activations(&self) -> u64 {
        self.shared.activations.load(Ordering::Acquire)
    }

    /// The current role (as of the last input the owner processed).
    pub fn role(&self) -> Role {
        if self.shared.role.load(Ordering::Acquire) == role_code(Role::Primary) {
            Role::Primary
        } else {
            Role::Secondary
        }
    }

    /// The current local disk state.
    pub fn disk(&self) -> DiskState {
        disk_from_code(self.shared.disk.load(Ordering::Acquire))
    }

    /// Whether the owner task has stopped.
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Replicated write of `data` at `offset_bytes` (split into pieces of at most the
    /// replica's `write_bytes_max`); completes per the protocol (C: on both disks).
    pub async fn write(&self, offset_bytes: u64, data: Bytes, fua: bool) -> Result<(), AppError> {
        let mut waits = Vec::new();
        for (off, piece) in self.pieces(offset_bytes, data) {
            let (reply, rx) = oneshot::channel();
            let cmd = Cmd::Write {
                offset_bytes: off,
                data: piece,
                fua,
                reply,
            };
            if self.tx.send(cmd).await.is_err() {
                return Err(stopped_app());
            }
            waits.push(rx);
        }
        let mut result = Ok(());
        for rx in waits {
            let r = rx.await.unwrap_or_else(|_| Err(stopped_app()));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    fn pieces(&self, offset_bytes: u64, data: Bytes) -> Vec<(u64, Bytes)> {
        let max = self.shared.write_bytes_max.max(4096) as usize;
        if data.len() <= max {
            return vec![(offset_bytes, data)];
        }
        let mut v = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + max).min(data.len());
            v.push((offset_bytes + at as u64, data.slice(at..end)));
            at = end;
        }
        v
    }

    /// Make every completed write durable on both nodes (local flush plus a peer flush
    /// while connected).
    pub async fn flush(&self) -> Result<(), AppError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Flush { reply }).await.is_err() {
            return Err(stopped_app());
        }
        rx.await.unwrap_or_else(|_| Err(stopped_app()))
    }

    /// Run an operator command.
    pub async fn admin(&self, cmd: AdminCmd) -> Result<(), AdminError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Admin { cmd, reply }).await.is_err() {
            return Err(stopped_admin(self.name()));
        }
        rx.await.unwrap_or_else(|_| Err(stopped_admin(self.name())))
    }

    /// A status snapshot; `None` if the owner has stopped.
    pub async fn status(&self) -> Option<DriverStatus> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Status { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Orderly stop: `AdminCmd::Down` (disconnect, demote, persist, mark the metadata
    /// clean), wait (bounded) for outstanding disk I/O, flush the data device, end the
    /// owner task. Returns the result of `Down` (the owner stops either way; a refused
    /// `Down` leaves the metadata unclean, so the next start resyncs the activity log).
    pub async fn shutdown(&self) -> Result<(), AdminError> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown { reply }).await.is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// [`Handle::write`] for synchronous callers (any thread).
    pub fn write_blocking(
        &self,
        offset_bytes: u64,
        data: Bytes,
        fua: bool,
    ) -> Result<(), AppError> {
        let pieces = self.pieces(offset_bytes, data);
        blocking(|| {
            let mut waits = Vec::new();
            for (off, piece) in pieces {
                let (reply, rx) = oneshot::channel();
                let cmd = Cmd::Write {
                    offset_bytes: off,
                    data: piece,
                    fua,
                    reply,
                };
                if self.tx.blocking_send(cmd).is_err() {
                    return Err(stopped_app());
                }
                waits.push(rx);
            }
            let mut result = Ok(());
            for rx in waits {
                let r = rx.blocking_recv().unwrap_or_else(|_| Err(stopped_app()));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }

    /// [`Handle::flush`] for synchronous callers.
    pub fn flush_blocking(&self) -> Result<(), AppError> {
        blocking(|| {
            let (reply, rx) = oneshot::channel();
            if self.tx.blocking_send(Cmd::Flush { reply }).is_err() {
                return Err(stopped_app());
            }
            rx.blocking_recv().unwrap_or_else(|_| Err(stopped_app()))
        })
    }

    /// [`Handle::admin`] for synchronous callers.
    pub fn admin_blocking(&self, cmd: AdminCmd) -> Result<(), AdminError> {
        blocking(|| {
            let (reply, rx) = oneshot::channel();
            if self.tx.blocking_send(Cmd::Admin { cmd, reply }).is_err() {
                return Err(stopped_admin(self.name()));
            }
            rx.blocking_recv()
                .unwrap_or_else(|_| Err(stopped_admin(self.name())))
        })
    }

    /// [`Handle::status`] for synchronous callers.
    pub fn status_blocking(&self) -> Option<DriverStatus> {
        blocking(|| {
            let (reply, rx) = oneshot::channel();
            self.tx.blocking_send(Cmd::Status { reply }).ok()?;
            rx.blocking_recv().ok()
        })
    }
}

/// A started volume: its handle and the owner task.
#[derive(Debug)]
pub struct Driver {
    /// Talk to the owner task.
    pub handle: Handle,
    /// The volume as a block device (for a LUN).
    pub device: Arc<ReplicatedDevice>,
    task: tokio::task::JoinHandle<()>,
}

impl Driver {
    /// Attach and start a volume: open its metadata (`meta_dev`, internal when it is
    /// the data device itself), check that it is this volume's and this node's, build
    /// the replica (role Secondary, StandAlone) and start the owner task. With
    /// `connect`, the replica is told to connect (drbdadm "up" = attach + connect).
    /// Must be called inside a tokio runtime.
    pub async fn start(
        cfg: DriverConfig,
        data: Arc<dyn BlockDevice>,
        meta_dev: Arc<dyn BlockDevice>,
        internal: bool,
        connect: bool,
    ) -> Result<Driver, DriverError> {
        let name = cfg.name.clone();
        let meta_err = |source| DriverError::Meta {
            name: name.clone(),
            source,
        };
        let md = meta_dev.clone();
        let (mut store, loaded) =
            tokio::task::spawn_blocking(move || MetaStore::open(md, internal))
                .await
                .map_err(|e| DriverError::Other {
                    name: name.clone(),
                    reason: format!("metadata task failed: {e}"),
                })?
                .map_err(meta_err)?;
        let sb = loaded.superblock;
        check_identity(&cfg, &sb).map_err(|reason| DriverError::Mismatch {
            name: name.clone(),
            reason,
        })?;
        let layout = loaded.layout;
        if data.size_bytes() < layout.data_size_bytes {
            return Err(DriverError::Mismatch {
                name,
                reason: format!(
                    "the data device has {} bytes, the metadata covers {}",
                    data.size_bytes(),
                    layout.data_size_bytes
                ),
            });
        }
        let mut bitmap = loaded.bitmap;
        let mut sb_template = sb;
        if sb.has(sb_flag::FULL_SYNC) {
            tracing::warn!(volume = %name, "metadata asks for a full resync (full-sync flag): marking every block out of sync");
            bitmap.set_all();
            let mut bm = bitmap.clone();
            let r = tokio::task::spawn_blocking(move || {
                let r = store.write_bitmap_all(&mut bm);
                (store, r)
            })
            .await
            .map_err(|e| DriverError::Other {
                name: name.clone(),
                reason: format!("metadata task failed: {e}"),
            })?;
            store = r.0;
            r.1.map_err(meta_err)?;
            bitmap.mark_all_clean();
            sb_template.set_flag(sb_flag::FULL_SYNC, false);
        }
        let persisted = persisted_from_superblock(&sb);
        tracing::info!(
            volume = %name,
            flags = %sb_flag::names(sb.flags),
            disk = %persisted.disk,
            current = format!("{:016X}", sb.gens.current),
            out_of_sync_bytes = bitmap.weight() * crate::types::BYTES_PER_BIT,
            hot_extents = loaded.al_extents.len(),
            data_bytes = layout.data_size_bytes,
            "attached"
        );
        let mut rcfg = cfg.replica.clone();
        // The hot-set size is a property of the metadata (create-md), not of the config.
        rcfg.al_extents_max = sb.al_extents_max.max(2);
        let cfg = DriverConfig {
            replica: rcfg,
            ..cfg
        };
        let mut seed = [0u8; 8];
        getrandom::getrandom(&mut seed).map_err(|e| DriverError::Other {
            name: name.clone(),
            reason: format!("no random numbers: {e}"),
        })?;
        let listener = if cfg.replica.node_id < cfg.replica.peer_node_id {
            Some(
                tokio::net::TcpListener::bind(cfg.address)
                    .await
                    .map_err(|source| DriverError::Listen {
                        name: name.clone(),
                        address: cfg.address,
                        source,
                    })?,
            )
        } else {
            None
        };
        let shared = Arc::new(Shared {
            name: name.clone(),
            size_bytes: layout.data_size_bytes,
            write_bytes_max: cfg.replica.write_bytes_max,
            readable: AtomicBool::new(false),
            activations: AtomicU64::new(0),
            role: AtomicU8::new(role_code(Role::Secondary)),
            disk: AtomicU8::new(disk_code(persisted.disk)),
            stopped: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_LEN);
        let handle = Handle {
            tx,
            shared: shared.clone(),
        };
        let owner = owner::Owner::new(
            cfg,
            owner::MetaParts {
                store,
                shadow: bitmap.clone(),
                sb: sb_template,
            },
            data.clone(),
            persisted,
            bitmap,
            &loaded.al_extents,
            u64::from_le_bytes(seed),
            shared,
            rx,
            listener,
        );
        let task = tokio::spawn(owner.run());
        if connect {
            handle
                .admin(AdminCmd::Connect {
                    discard_my_data: false,
                })
                .await
                .map_err(|e| DriverError::Other {
                    name: name.clone(),
                    reason: format!("connect refused: {e}"),
                })?;
        }
        let device = Arc::new(ReplicatedDevice::new(handle.clone(), data));
        Ok(Driver {
            handle,
            device,
            task,
        })
    }

    /// Stop the volume ([`Handle::shutdown`]) and wait for the owner task.
    pub async fn stop(self) -> Result<(), AdminError> {
        let r = self.handle.shutdown().await;
        let _ = self.task.await;
        r
    }
}

fn check_identity(cfg: &DriverConfig, sb: &Superblock) -> Result<(), String> {
    let r = &cfg.replica;
    if sb.volume_uuid != r.volume_uuid {
        return Err(format!(
            "the metadata belongs to volume {}, the configuration names {} (wrong disk?)",
            crate::auth::VolumeUuid(sb.volume_uuid),
            crate::auth::VolumeUuid(r.volume_uuid)
        ));
    }
    if sb.node_id != r.node_id || sb.peer_node_id != r.peer_node_id {
        return Err(format!(
            "the metadata was created for node id {} with peer {}, the configuration says \
             node id {} with peer {} (run create-md with the right node ids)",
            sb.node_id, sb.peer_node_id, r.node_id, r.peer_node_id
        ));
    }
    Ok(())
}

/// The replica's persisted state from a superblock: CONSISTENT → UpToDate,
/// CONSISTENT|OUTDATED → Outdated, otherwise Inconsistent.
pub fn persisted_from_superblock(sb: &Superblock) -> Persisted {
    let disk = if sb.has(sb_flag::CONSISTENT) {
        if sb.has(sb_flag::OUTDATED) {
            DiskState::Outdated
        } else {
            DiskState::UpToDate
        }
    } else {
        DiskState::Inconsistent
    };
    Persisted {
        gens: sb.gens,
        disk,
        was_primary: sb.has(sb_flag::WAS_PRIMARY),
        clean: sb.has(sb_flag::CLEAN),
        crashed_primary: sb.has(sb_flag::CRASHED_PRIMARY),
        primary_since_ms: sb.primary_since_ms,
    }
}

/// The superblock to write for `p`, keeping identity and layout of `template`.
pub fn superblock_from_persisted(template: &Superblock, p: &Persisted) -> Superblock {
    let mut sb = *template;
    let consistent = matches!(
        p.disk,
        DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
    );
    sb.set_flag(sb_flag::CONSISTENT, consistent);
    sb.set_flag(sb_flag::OUTDATED, p.disk == DiskState::Outdated);
    sb.set_flag(sb_flag::WAS_PRIMARY, p.was_primary);
    sb.set_flag(sb_flag::CLEAN, p.clean);
    sb.set_flag(sb_flag::CRASHED_PRIMARY, p.crashed_primary);
    sb.gens = p.gens;
    sb.primary_since_ms = p.primary_since_ms;
    sb
}

/// The generation UUID `create-md --assume-clean` gives a volume: derived from the
/// volume UUID only, so both nodes' fresh metadata agree without a sync.
pub fn assume_clean_generation(volume_uuid: &[u8; 16]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"twinsan-assume-clean-v1");
    h.update(volume_uuid);
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    let mut u = u64::from_le_bytes(b) & !UUID_PRIMARY_BIT;
    if u <= 0xFF {
        u |= 1 << 40;
    }
    u
}

/// create-md: write fresh metadata ([`MetaStore::create`]); with `assume_clean`,
/// then declare the data consistent with generation [`assume_clean_generation`] and a
/// clear bitmap. Only correct when the two nodes' disks hold identical data (e.g. both
/// new and zeroed) and both are created with `assume_clean`.
pub fn create_md(
    dev: Arc<dyn BlockDevice>,
    opts: &CreateOptions,
    assume_clean: bool,
) -> Result<Layout, MetaError> {
    let layout = MetaStore::create(dev.clone(), opts)?;
    if assume_clean {
        let (mut store, loaded) = MetaStore::open(dev, opts.internal)?;
        let mut sb = loaded.superblock;
        sb.gens = Generations {
            current: assume_clean_generation(&opts.volume_uuid),
            bitmap: 0,
            history: Default::default(),
        };
        sb.set_flag(sb_flag::CONSISTENT, true);
        sb.set_flag(sb_flag::CLEAN, true);
        store.write_superblock(&sb)?;
        let mut bm = Bitmap::for_size_bytes(layout.data_size_bytes);
        store.write_bitmap_all(&mut bm)?;
    }
    Ok(layout)
}

/// Open a file or block device for replicated data or metadata (page-cache or
/// O_DIRECT per `direct`, write cache on: the replica flushes). `create_size_bytes`
/// creates a missing file (sparse).
pub fn open_device(
    path: &std::path::Path,
    create_size_bytes: Option<u64>,
) -> Result<Arc<FileDevice>, twinsan_blockdev::BlockError> {
    let opts = twinsan_blockdev::FileOptions {
        read_only: false,
        create_size_bytes,
        logical_block_size: None,
        engine: twinsan_blockdev::EnginePreference::Auto,
        direct: twinsan_blockdev::DirectPreference::Auto,
        write_cache: true,
    };
    FileDevice::open(path, &opts).map(Arc::new)
}
