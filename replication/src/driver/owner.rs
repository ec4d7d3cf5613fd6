//! The owner task of one replicated volume: the only place its [`Replica`], its
//! [`MetaStore`] and its connection live. See the module documentation of
//! [`crate::driver`] for the rules it keeps.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use twinsan_blockdev::BlockDevice;

use super::net::{self, AuthParams, NetEvent, SendQueue};
use super::status::{ConnectionInfo, DriverStatus, HandlerRun};
use super::{
    disk_code, role_code, superblock_from_persisted, Cmd, DriverConfig, Shared,
    SEND_QUEUE_HIGH_BYTES,
};
use crate::bitmap::Bitmap;
use crate::meta::{MetaError, MetaStore, Superblock};
use crate::replica::{
    Action, AdminCmd, AdminError, AppError, Event, Handler, Input, Persisted, Replica,
};
use crate::types::{ConnState, DiskState, Role};

/// Handler runs kept for status.
const HANDLER_HISTORY: usize = 16;
/// Network events waiting for the owner at most (the reader then waits: TCP flow
/// control reaches the peer).
const NET_QUEUE_LEN: usize = 256;
/// How long an orderly close may take to send what was queued.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bound on the orderly stop (Down retries, then outstanding disk I/O).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Wall-clock milliseconds since the UNIX epoch (see the driver's module docs).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The metadata store, a shadow of the on-disk bitmap, and the superblock template.
pub(super) struct MetaParts {
    pub store: MetaStore,
    pub shadow: Bitmap,
    pub sb: Superblock,
}

/// Completions of work the owner started.
#[derive(Debug)]
enum Done {
    Disk {
        token: u64,
        result: Result<Option<Bytes>, ()>,
    },
    Handler {
        handler: Handler,
        exit_code: i32,
        configured: bool,
    },
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    since_ms: u64,
    queue: Arc<SendQueue>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Admin id of the promotion `become_primary_on_both` issues (no caller waits for it).
const AUTO_PROMOTE_ID: u64 = u64::MAX;

pub(super) struct Owner {
    cfg: DriverConfig,
    replica: Replica,
    meta: Option<MetaParts>,
    data: Arc<dyn BlockDevice>,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Cmd>,
    net_tx: mpsc::Sender<NetEvent>,
    net_rx: mpsc::Receiver<NetEvent>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    need_tx: watch::Sender<bool>,
    listener: Option<TcpListener>,
    net_tasks: Vec<JoinHandle<()>>,
    conn: Option<Conn>,
    next_conn: u64,
    want_connection: bool,
    stopping: bool,
    next_id: u64,
    app_waiters: HashMap<u64, oneshot::Sender<Result<(), AppError>>>,
    admin_waiters: HashMap<u64, oneshot::Sender<Result<(), AdminError>>>,
    /// `become_primary_on_both` has acted.
    auto_promoted: bool,
    disk_inflight: usize,
    last_connect_error: Option<(String, u64)>,
    handler_runs: VecDeque<HandlerRun>,
    meta_error: Option<String>,
    /// The deadline of the last Tick delivered (to avoid spinning on a past deadline).
    last_tick_due: u64,
    /// Moving average of a data write's duration (ns), from both paths below.
    write_avg_ns: Arc<AtomicU64>,
}

/// Data writes up to this size run on the owner task itself while the moving average
/// of a write stays below [`INLINE_WRITE_AVG_MAX_NS`] (page cache, tmpfs, NVMe with a
/// write cache): a hand-off to the blocking pool and back costs more than the write.
const INLINE_WRITE_BYTES_MAX: usize = 128 * 1024;
/// See [`INLINE_WRITE_BYTES_MAX`].
const INLINE_WRITE_AVG_MAX_NS: u64 = 30_000;

/// Fold one write's duration into the moving average (weight 1/8).
fn note_write_ns(avg: &AtomicU64, ns: u64) {
    let old = avg.load(Ordering::Relaxed);
    let new = if old == 0 { ns } else { old - old / 8 + ns / 8 };
    avg.store(new, Ordering::Relaxed);
}

impl Owner {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: DriverConfig,
        meta: MetaParts,
        data: Arc<dyn BlockDevice>,
        persisted: Persisted,
        bitmap: Bitmap,
        al_extents: &[u32],
        seed: u64,
        shared: Arc<Shared>,
        cmds: mpsc::Receiver<Cmd>,
        listener: Option<TcpListener>,
    ) -> Self {
        let replica = Replica::new(
            cfg.replica.clone(),
            shared.size_bytes,
            persisted,
            bitmap,
            al_extents,
            seed,
            now_ms(),
        );
        let (net_tx, net_rx) = mpsc::channel(NET_QUEUE_LEN);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (need_tx, _) = watch::channel(false);
        Owner {
            cfg,
            replica,
            meta: Some(meta),
            data,
            shared,
            cmds,
            net_tx,
            net_rx,
            done_tx,
            done_rx,
            need_tx,
            listener,
            net_tasks: Vec::new(),
            conn: None,
            next_conn: 1,
            want_connection: false,
            stopping: false,
            next_id: 1,
            app_waiters: HashMap::new(),
            admin_waiters: HashMap::new(),
            auto_promoted: false,
            disk_inflight: 0,
            last_connect_error: None,
            handler_runs: VecDeque::new(),
            meta_error: None,
            last_tick_due: 0,
            write_avg_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn start_network(&mut self) {
        let r = &self.cfg.replica;
        let params = AuthParams {
            node_id: r.node_id,
            peer_node_id: r.peer_node_id,
            volume_uuid: r.volume_uuid,
            secret: Arc::new(self.cfg.secret.clone()),
            timeout: Duration::from_millis(self.cfg.handshake_timeout_ms.max(100)),
        };
        let need = self.need_tx.subscribe();
        let events = self.net_tx.clone();
        let task = match self.listener.take() {
            Some(l) => {
                tracing::info!(volume = %self.cfg.name, address = %self.cfg.address, "replication: listening for the peer");
                tokio::spawn(net::listen(l, need, params, events))
            }
            None => {
                tracing::info!(volume = %self.cfg.name, peer = %self.cfg.peer_address, "replication: will connect to the peer");
                tokio::spawn(net::connect_loop(
                    self.cfg.address,
                    self.cfg.peer_address,
                    Duration::from_millis(self.cfg.connect_int_ms.max(10)),
                    need,
                    params,
                    events,
                ))
            }
        };
        self.net_tasks.push(task);
    }

    pub(super) async fn run(mut self) {
        self.start_network();
        // The constructor's actions (crash recovery, the attach superblock write).
        self.drain().await;
        self.publish();
        loop {
            let space = self
                .conn
                .as_ref()
                .filter(|c| c.queue.queued_bytes() > SEND_QUEUE_HIGH_BYTES)
                .map(|c| c.queue.clone());
            let throttled = space.is_some();
            let deadline = self.next_tick();
            // Not biased: under a steady stream of peer messages, commands and ticks
            // still get their turn.
            tokio::select! {
                Some(d) = self.done_rx.recv() => self.on_done(d).await,
                Some(ev) = self.net_rx.recv() => self.on_net(ev).await,
                _ = tokio::time::sleep_until(deadline.0) => {
                    self.last_tick_due = deadline.1;
                    self.input(Input::Tick).await;
                }
                cmd = self.cmds.recv(), if !throttled => match cmd {
                    None => {
                        let _ = self.stop().await;
                        break;
                    }
                    Some(Cmd::Shutdown { reply }) => {
                        let r = self.stop().await;
                        let _ = reply.send(r);
                        break;
                    }
                    Some(c) => self.on_cmd(c).await,
                },
                _ = async {
                    if let Some(q) = &space {
                        q.space.notified().await;
                    }
                }, if throttled => {}
            }
        }
        self.finish();
    }

    /// When to deliver the next Tick: (instant, due ms).
    fn next_tick(&self) -> (Instant, u64) {
        let now = now_ms();
        let mut due = self
            .replica
            .next_timeout_ms()
            .unwrap_or(now + 1000)
            .min(now + 1000);
        if matches!(
            self.replica.conn(),
            ConnState::SyncSource
                | ConnState::SyncTarget
                | ConnState::PausedSyncSource
                | ConnState::PausedSyncTarget
                | ConnState::VerifySource
                | ConnState::VerifyTarget
        ) {
            due = due.min(now + 100);
        }
        if due <= now && due == self.last_tick_due {
            // The replica did not move its deadline on the last Tick: do not spin.
            due = now + 50;
        }
        (
            Instant::now() + Duration::from_millis(due.saturating_sub(now)),
            due,
        )
    }

    async fn input(&mut self, i: Input) {
        self.replica.handle(now_ms(), i);
        // Published before the replies go out (a caller told "you are Primary" must
        // find the device readable).
        self.publish();
        self.drain().await;
        self.publish();
        self.maybe_become_primary().await;
    }

    /// `become_primary_on_both`: the first time this node is Connected with both disks
    /// UpToDate after the volume started, it promotes itself (both nodes do; needs
    /// allow-two-primaries). Once only: an operator's later `secondary` sticks.
    async fn maybe_become_primary(&mut self) {
        if !self.cfg.become_primary_on_both || self.auto_promoted || self.stopping {
            return;
        }
        let st = self.replica.status();
        let ready = st.role == Role::Secondary
            && st.conn == ConnState::Connected
            && st.disk == DiskState::UpToDate
            && st.peer_disk == Some(DiskState::UpToDate);
        if !ready {
            return;
        }
        self.auto_promoted = true;
        tracing::info!(volume = %self.cfg.name, "become-primary-on-both: promoting");
        self.replica.handle(
            now_ms(),
            Input::Admin {
                id: AUTO_PROMOTE_ID,
                cmd: AdminCmd::Primary { force: false },
            },
        );
        self.publish();
        self.drain().await;
        self.publish();
    }

    async fn drain(&mut self) {
        while let Some(a) = self.replica.poll_action() {
            self.execute(a).await;
        }
    }

    /// Publish the state readers use without asking, and whether the network tasks
    /// should produce a connection.
    fn publish(&mut self) {
        let role = self.replica.role();
        let readable = !self.stopping && role == Role::Primary && self.replica.readable();
        if readable && !self.shared.readable.load(Ordering::Acquire) {
            self.shared.activations.fetch_add(1, Ordering::AcqRel);
        }
        self.shared.readable.store(readable, Ordering::Release);
        self.shared.role.store(role_code(role), Ordering::Release);
        self.shared
            .disk
            .store(disk_code(self.replica.disk()), Ordering::Release);
        let need = self.want_connection && self.conn.is_none() && !self.stopping;
        self.need_tx.send_if_modified(|v| {
            let changed = *v != need;
            *v = need;
            changed
        });
    }

    async fn on_cmd(&mut self, c: Cmd) {
        match c {
            Cmd::Write {
                offset_bytes,
                data,
                fua,
                reply,
            } => {
                if self.meta_error.is_some() {
                    let _ = reply.send(Err(AppError::Io));
                    return;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.app_waiters.insert(id, reply);
                self.input(Input::Write {
                    id,
                    offset_bytes,
                    data,
                    fua,
                })
                .await;
            }
            Cmd::Flush { reply } => {
                let id = self.next_id;
                self.next_id += 1;
                self.app_waiters.insert(id, reply);
                self.input(Input::Flush { id }).await;
            }
            Cmd::Admin { cmd, reply } => {
                tracing::info!(volume = %self.cfg.name, ?cmd, "operator command");
                let id = self.next_id;
                self.next_id += 1;
                self.admin_waiters.insert(id, reply);
                self.input(Input::Admin { id, cmd }).await;
            }
            Cmd::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Cmd::Shutdown { reply } => {
                // Handled in `run`.
                let _ = reply.send(Ok(()));
            }
        }
    }

    async fn on_done(&mut self, d: Done) {
        match d {
            Done::Disk { token, result } => {
                self.disk_inflight = self.disk_inflight.saturating_sub(1);
                self.input(Input::DiskDone { token, result }).await;
            }
            Done::Handler {
                handler,
                exit_code,
                configured,
            } => {
                self.handler_runs.push_back(HandlerRun {
                    handler: handler.name().to_string(),
                    exit_code,
                    configured,
                    at_ms: now_ms(),
                });
                while self.handler_runs.len() > HANDLER_HISTORY {
                    self.handler_runs.pop_front();
                }
                self.input(Input::HandlerDone { handler, exit_code }).await;
            }
        }
    }

    async fn on_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Authenticated {
                stream,
                leftover,
                peer,
            } => {
                if self.stopping || !self.want_connection {
                    tracing::info!(volume = %self.cfg.name, %peer, "replication connection closed: not connecting now");
                    return;
                }
                if let Some(c) = &self.conn {
                    tracing::info!(volume = %self.cfg.name, %peer, established = %c.peer, "replication connection refused: one is already established");
                    return;
                }
                let id = self.next_conn;
                self.next_conn += 1;
                let (rd, wr) = stream.into_split();
                let queue = Arc::new(SendQueue::default());
                let reader = tokio::spawn(net::reader(id, rd, leftover, self.net_tx.clone()));
                let writer = tokio::spawn(net::writer(id, wr, queue.clone(), self.net_tx.clone()));
                self.conn = Some(Conn {
                    id,
                    peer,
                    since_ms: now_ms(),
                    queue,
                    reader,
                    writer,
                });
                self.last_connect_error = None;
                tracing::info!(volume = %self.cfg.name, %peer, conn = id, "replication link authenticated");
                self.input(Input::LinkUp { conn: id }).await;
            }
            NetEvent::Failed { reason } => {
                let same = self
                    .last_connect_error
                    .as_ref()
                    .is_some_and(|(r, _)| *r == reason);
                if same {
                    tracing::debug!(volume = %self.cfg.name, "replication connection failed: {reason}");
                } else {
                    tracing::warn!(volume = %self.cfg.name, "replication connection failed: {reason}");
                }
                self.last_connect_error = Some((reason, now_ms()));
            }
            NetEvent::Message { conn, msg } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.input(Input::Message { conn, msg }).await;
                }
            }
            NetEvent::Down { conn, reason } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    tracing::info!(volume = %self.cfg.name, conn, "replication link down: {reason}");
                    self.drop_conn(false);
                    self.input(Input::LinkDown { conn }).await;
                }
            }
            NetEvent::ProtocolError { conn, reason } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    tracing::warn!(volume = %self.cfg.name, conn, "replication protocol error: {reason}");
                    self.drop_conn(false);
                    self.input(Input::ProtocolError { conn, reason }).await;
                }
            }
        }
    }

    /// Forget the live connection. `graceful`: let the writer send what is queued
    /// (bounded by [`CLOSE_GRACE`]).
    fn drop_conn(&mut self, graceful: bool) {
        let Some(c) = self.conn.take() else { return };
        c.reader.abort();
        c.queue.close();
        if graceful {
            let writer = c.writer;
            tokio::spawn(async move {
                let abort = writer.abort_handle();
                if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
                    abort.abort();
                }
            });
        } else {
            c.writer.abort();
        }
    }

    async fn execute(&mut self, a: Action) {
        match a {
            Action::PersistState(p) => {
                self.persist("superblock", move |m, _| {
                    let sb = superblock_from_persisted(&m.sb, &p);
                    m.store.write_superblock(&sb)?;
                    m.sb = sb;
                    Ok(())
                })
                .await;
            }
            Action::PersistAl {
                extents,
                flush_data_first,
            } => {
                self.persist("activity log", move |m, data| {
                    if flush_data_first {
                        data.flush()?;
                    }
                    m.store.write_al(&extents)
                })
                .await;
            }
            Action::PersistBitmap(pages) => {
                self.persist("bitmap", move |m, data| {
                    // A cleared bit must not reach the disk before the data it vouches
                    // for: completed data writes become durable first.
                    data.flush()?;
                    for (page, words) in &pages {
                        let first_bit = *page as u64 * Bitmap::BITS_PER_PAGE;
                        m.shadow.clear_bits(first_bit, Bitmap::BITS_PER_PAGE);
                        m.shadow
                            .merge_words((*page * Bitmap::WORDS_PER_PAGE) as u64, words);
                    }
                    m.store.write_bitmap_dirty(&mut m.shadow).map(|_| ())
                })
                .await;
            }
            Action::DiskWrite {
                token,
                offset_bytes,
                data,
                fua,
            } => {
                let (dev, tx, name) = (
                    self.data.clone(),
                    self.done_tx.clone(),
                    self.cfg.name.clone(),
                );
                self.disk_inflight += 1;
                let avg = self.write_avg_ns.clone();
                let inline = !fua
                    && data.len() <= INLINE_WRITE_BYTES_MAX
                    && avg.load(Ordering::Relaxed) < INLINE_WRITE_AVG_MAX_NS;
                let write = move || {
                    let t0 = std::time::Instant::now();
                    let r = dev.write_at(&data, offset_bytes, fua);
                    note_write_ns(&avg, t0.elapsed().as_nanos() as u64);
                    if let Err(e) = &r {
                        tracing::error!(volume = %name, "data write failed: {e}");
                    }
                    let _ = tx.send(Done::Disk {
                        token,
                        result: r.map(|()| None).map_err(|_| ()),
                    });
                };
                if inline {
                    // Completion still arrives through the done channel, in order with
                    // everything else the owner handles.
                    write();
                } else {
                    tokio::task::spawn_blocking(write);
                }
            }
            Action::DiskRead {
                token,
                offset_bytes,
                len_bytes,
            } => {
                let (dev, tx, name) = (
                    self.data.clone(),
                    self.done_tx.clone(),
                    self.cfg.name.clone(),
                );
                self.disk_inflight += 1;
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len_bytes as usize];
                    let r = dev.read_at(&mut buf, offset_bytes);
                    if let Err(e) = &r {
                        tracing::error!(volume = %name, "data read failed: {e}");
                    }
                    let _ = tx.send(Done::Disk {
                        token,
                        result: r.map(|()| Some(Bytes::from(buf))).map_err(|_| ()),
                    });
                });
            }
            Action::DiskFlush { token } => {
                let (dev, tx, name) = (
                    self.data.clone(),
                    self.done_tx.clone(),
                    self.cfg.name.clone(),
                );
                self.disk_inflight += 1;
                tokio::task::spawn_blocking(move || {
                    let r = dev.flush();
                    if let Err(e) = &r {
                        tracing::error!(volume = %name, "data flush failed: {e}");
                    }
                    let _ = tx.send(Done::Disk {
                        token,
                        result: r.map(|()| None).map_err(|_| ()),
                    });
                });
            }
            Action::Send { conn, msg } => {
                if let Some(c) = self.conn.as_ref().filter(|c| c.id == conn) {
                    c.queue.push(msg);
                }
            }
            Action::Close { conn } => {
                if self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.drop_conn(true);
                }
            }
            Action::WantConnection(w) => {
                self.want_connection = w;
            }
            Action::Complete { id, result } => {
                if let Some(w) = self.app_waiters.remove(&id) {
                    let _ = w.send(result);
                }
            }
            Action::AdminDone { id, result } => {
                if let Err(e) = &result {
                    tracing::info!(volume = %self.cfg.name, "operator command refused: {e}");
                }
                if let Some(w) = self.admin_waiters.remove(&id) {
                    let _ = w.send(result);
                }
            }
            Action::RunHandler(h) => self.run_handler(h),
            Action::Event(e) => self.log_event(&e),
        }
    }

    /// Run a metadata write on the blocking pool and wait for it. A failure is retried
    /// once, then recorded in `meta_error`.
    async fn persist<F>(&mut self, what: &'static str, f: F)
    where
        F: Fn(&mut MetaParts, &Arc<dyn BlockDevice>) -> Result<(), MetaError>
            + Send
            + Sync
            + 'static,
    {
        let Some(mut m) = self.meta.take() else {
            return;
        };
        let data = self.data.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut r = f(&mut m, &data);
            if r.is_err() {
                r = f(&mut m, &data);
            }
            (m, r)
        })
        .await;
        match joined {
            Ok((m, r)) => {
                self.meta = Some(m);
                if let Err(e) = r {
                    let msg = format!("{what} write failed: {e}");
                    tracing::error!(volume = %self.cfg.name, "metadata {msg}; refusing application writes from now on");
                    self.meta_error = Some(msg);
                }
            }
            Err(e) => {
                let msg = format!("{what} write task failed: {e}");
                tracing::error!(volume = %self.cfg.name, "metadata {msg}; refusing application writes from now on");
                self.meta_error = Some(msg);
            }
        }
    }

    fn run_handler(&mut self, h: Handler) {
        let name = h.name();
        let tx = self.done_tx.clone();
        let Some(cmd) = self.cfg.handlers.get(name).cloned() else {
            tracing::info!(volume = %self.cfg.name, handler = name, "handler not configured: exit code 0");
            let _ = tx.send(Done::Handler {
                handler: h,
                exit_code: 0,
                configured: false,
            });
            return;
        };
        let r = &self.cfg.replica;
        let env = [
            ("TWINSAN_RESOURCE", self.cfg.name.clone()),
            ("TWINSAN_HANDLER", name.to_string()),
            ("TWINSAN_NODE", r.node_name.clone()),
            ("TWINSAN_NODE_ID", r.node_id.to_string()),
            ("TWINSAN_PEER", self.cfg.peer_address.to_string()),
            ("TWINSAN_PEER_NODE_ID", r.peer_node_id.to_string()),
            (
                "TWINSAN_VOLUME_UUID",
                crate::auth::VolumeUuid(r.volume_uuid).to_string(),
            ),
        ];
        let volume = self.cfg.name.clone();
        let limit = Duration::from_millis(self.cfg.handler_timeout_ms.max(1));
        tracing::info!(volume = %volume, handler = name, command = %cmd, "running handler");
        tokio::spawn(async move {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c")
                .arg(&cmd)
                .envs(env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            let exit_code = match c.spawn() {
                Err(e) => {
                    tracing::error!(volume = %volume, handler = name, "cannot start handler: {e}");
                    -1
                }
                Ok(child) => match tokio::time::timeout(limit, child.wait_with_output()).await {
                    Err(_) => {
                        tracing::error!(volume = %volume, handler = name, "handler killed after {} ms", limit.as_millis());
                        -1
                    }
                    Ok(Err(e)) => {
                        tracing::error!(volume = %volume, handler = name, "handler failed: {e}");
                        -1
                    }
                    Ok(Ok(out)) => {
                        let text = |b: &[u8]| {
                            let s = String::from_utf8_lossy(&b[..b.len().min(2048)]);
                            s.trim().to_string()
                        };
                        let code = out.status.code().unwrap_or(-1);
                        tracing::info!(
                            volume = %volume,
                            handler = name,
                            exit_code = code,
                            stdout = %text(&out.stdout),
                            stderr = %text(&out.stderr),
                            "handler finished"
                        );
                        code
                    }
                },
            };
            let _ = tx.send(Done::Handler {
                handler: h,
                exit_code,
                configured: true,
            });
        });
    }

    fn log_event(&self, e: &Event) {
        let v = self.name();
        match e {
            Event::StateChanged { role, disk, conn } => {
                tracing::info!(volume = %v, %role, %disk, %conn, "state changed");
            }
            Event::Handshake { plan } => tracing::info!(volume = %v, plan = %plan, "handshake"),
            Event::SplitBrain {
                resolved_by,
                victim,
            } => match resolved_by {
                Some(p) => {
                    tracing::warn!(volume = %v, policy = %p, victim = ?victim, "split brain detected and resolved automatically");
                }
                None => {
                    tracing::error!(volume = %v, "split brain detected, not resolved: StandAlone until an operator acts (connect --discard-my-data on the victim, connect on the survivor)");
                }
            },
            Event::ResyncStarted { source, bits, full } => tracing::info!(
                volume = %v,
                source,
                full,
                bytes = bits * crate::types::BYTES_PER_BIT,
                "resync started"
            ),
            Event::ResyncFinished { source } => {
                tracing::info!(volume = %v, source, "resync finished");
            }
            Event::VerifyFinished { out_of_sync_bits } => tracing::info!(
                volume = %v,
                out_of_sync_bytes = out_of_sync_bits * crate::types::BYTES_PER_BIT,
                "online verify finished"
            ),
            Event::NewGeneration { current } => {
                tracing::info!(volume = %v, current = format!("{current:016X}"), "new data generation");
            }
            Event::Disconnected { reason } => {
                tracing::info!(volume = %v, "disconnected: {reason}");
            }
            Event::IoFrozen { frozen } => {
                if *frozen {
                    tracing::warn!(volume = %v, "application I/O frozen until fence-peer confirms (or resume-io)");
                } else {
                    tracing::info!(volume = %v, "application I/O resumed");
                }
            }
        }
    }

    fn status(&self) -> DriverStatus {
        let r = &self.cfg.replica;
        DriverStatus {
            name: self.cfg.name.clone(),
            node_id: r.node_id,
            peer_node_id: r.peer_node_id,
            protocol: r.protocol,
            size_bytes: self.shared.size_bytes,
            address: self.cfg.address,
            peer_address: self.cfg.peer_address,
            replica: self.replica.status(),
            connection: self.conn.as_ref().map(|c| ConnectionInfo {
                peer: c.peer,
                conn: c.id,
                since_ms: c.since_ms,
                send_queue_bytes: c.queue.queued_bytes(),
            }),
            last_connect_error: self.last_connect_error.as_ref().map(|(r, _)| r.clone()),
            last_connect_error_ms: self.last_connect_error.as_ref().map(|(_, t)| *t),
            handlers: self.handler_runs.iter().cloned().collect(),
            meta_error: self.meta_error.clone(),
        }
    }

    /// Process completions, network events and ticks (no commands) for up to `d`.
    async fn pump_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                biased;
                Some(x) = self.done_rx.recv() => self.on_done(x).await,
                Some(ev) = self.net_rx.recv() => self.on_net(ev).await,
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// Orderly stop: Down (retried while application I/O drains), close the link, wait
    /// for outstanding disk I/O, flush the data device.
    async fn stop(&mut self) -> Result<(), AdminError> {
        let deadline = Instant::now() + STOP_GRACE;
        let result = loop {
            let (tx, rx) = oneshot::channel();
            let id = self.next_id;
            self.next_id += 1;
            self.admin_waiters.insert(id, tx);
            self.input(Input::Admin {
                id,
                cmd: AdminCmd::Down,
            })
            .await;
            let r = rx
                .await
                .unwrap_or_else(|_| Err(AdminError("no answer to down".into())));
            match r {
                Err(_) if !self.replica.idle() && Instant::now() < deadline => {
                    self.pump_for(Duration::from_millis(100)).await;
                }
                r => break r,
            }
        };
        if let Err(e) = &result {
            tracing::warn!(volume = %self.cfg.name, "stopping without a clean down: {e}");
        }
        self.stopping = true;
        self.publish();
        self.drop_conn(true);
        for t in self.net_tasks.drain(..) {
            t.abort();
        }
        while self.disk_inflight > 0 && Instant::now() < deadline {
            tokio::select! {
                Some(x) = self.done_rx.recv() => self.on_done(x).await,
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let data = self.data.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || data.flush()).await {
            tracing::error!(volume = %self.cfg.name, "final data flush failed: {e}");
        }
        tracing::info!(volume = %self.cfg.name, "replicated volume stopped");
        result
    }

    fn finish(&mut self) {
        self.stopping = true;
        self.shared.readable.store(false, Ordering::Release);
        self.shared.stopped.store(true, Ordering::Release);
        self.drop_conn(false);
        for t in self.net_tasks.drain(..) {
            t.abort();
        }
        // Waiters still registered get "stopped" when their senders drop.
        self.app_waiters.clear();
        self.admin_waiters.clear();
    }
}
