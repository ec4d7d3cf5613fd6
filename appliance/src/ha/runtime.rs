//! The HA owner task: one tokio task owns this head's [`HaNode`] (membership + quorum)
//! and [`Manager`], feeds them heartbeat and witness datagrams, ticks and operator
//! commands in order, and carries out their actions (datagrams, fencing, start/stop/
//! monitor sequences on their own tasks, whose results come back as inputs).
//!
//! Owns: the UDP sockets of the heartbeat links and of the witness client, the HA
//! clock (ms since the task started), the recent-events ring and the status snapshot.
//!
//! May not touch: resources directly — sequences run in [`super::resources`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use twinsan_ha::clients::{is_client_list, ClientList};
use twinsan_ha::manager::{self, AdminCmd, Manager, Op};
use twinsan_ha::outdate::{is_outdate, Outdate};
use twinsan_ha::overrides::{is_overrides, OverrideSet};
use twinsan_ha::policy::{self, Override, Policy, ResourceCmd};
use twinsan_ha::wire::{ClusterKey, Stamp};
use twinsan_ha::{Action, Event, HaNode, Input};

use super::resources::Resources;
use super::ClusterSection;

/// Recent events kept for status.
pub const EVENTS_MAX: usize = 64;
/// Longest a portal IP holding shown in status may be old.
const VIP_STATUS_MAX_AGE_MS: u64 = 1000;
/// Largest datagram read (a full client list is 1232 bytes, a full override set 4376;
/// a larger datagram would arrive truncated and fail its MAC).
const DATAGRAM_MAX_BYTES: usize = 8192;

/// One event for status.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    /// Wall-clock time, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// What happened.
    pub what: String,
}

/// One heartbeat link in status.
#[derive(Debug, Clone, Serialize)]
pub struct LinkSnapshot {
    /// Index.
    pub index: u8,
    /// Local address.
    pub local: String,
    /// Peer address.
    pub peer: String,
    /// Heartbeats arrive.
    pub up: bool,
    /// ms since the last accepted heartbeat.
    pub last_rx_ago_ms: Option<u64>,
    /// Heartbeats refused (bad MAC, replays, malformed, foreign).
    pub rejected: u64,
}

/// The HA view for `twinsan status` (keys documented in the README).
#[derive(Debug, Clone, Serialize, Default)]
pub struct HaSnapshot {
    /// Cluster name.
    pub cluster: String,
    /// This head's node id.
    pub node_id: u8,
    /// The peer's node id.
    pub peer_node_id: u8,
    /// This run's boot counter.
    pub boot: u64,
    /// passive | fencing | starting | taking-over | active | stopping | blocked.
    pub service: String,
    /// Why this head is not doing more, if anything.
    pub waiting: Option<String>,
    /// Standby.
    pub standby: bool,
    /// Maintenance mode.
    pub maintenance: bool,
    /// "here", "away" or null.
    pub moved: Option<String>,
    /// Failures here (within failure_timeout_ms).
    pub failcount: u32,
    /// The migration threshold was reached here.
    pub failed_here: bool,
    /// The data here could be promoted.
    pub can_run: bool,
    /// The peer is alive on some link.
    pub peer_alive: bool,
    /// The peer's service flags from its heartbeats.
    pub peer_active: bool,
    /// The peer is in standby.
    pub peer_standby: bool,
    /// The peer was fenced and has not come back.
    pub peer_fenced: bool,
    /// Quorum.
    pub quorum: bool,
    /// Quorum reason.
    pub quorum_reason: String,
    /// Fencing needed before a takeover.
    pub needs_fencing: bool,
    /// no-quorum-policy.
    pub no_quorum_policy: String,
    /// Witness address, if configured.
    pub witness: Option<String>,
    /// Last fence report.
    pub last_fence: Option<String>,
    /// Heartbeat links.
    pub links: Vec<LinkSnapshot>,
    /// Portal IPs and whether this head holds them.
    pub vips: Vec<(String, bool)>,
    /// A required resource keeps the service away from this head: why.
    pub banned: Option<String>,
    /// External OCF resources on this head, in start order.
    pub resources: Vec<ResourceSnapshot>,
    /// Recent events, oldest first.
    pub events: Vec<EventRecord>,
}

/// One external OCF resource in status.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceSnapshot {
    /// Instance name.
    pub name: String,
    /// with-service | away-from-service | clone.
    pub placement: &'static str,
    /// unknown | stopped | starting | running | stopping | failed.
    pub state: &'static str,
    /// started | stopped (configured, or set with `twinsan ha resource`).
    pub target_role: &'static str,
    /// false: watched only (unmanaged, or maintenance mode).
    pub managed: bool,
    /// The policy wants it running on this head now.
    pub wanted_here: bool,
    /// Failures here within the failure timeout.
    pub failcount: u32,
    /// Banned from this head (location -INFINITY or migration threshold).
    pub banned_here: bool,
    /// Blocked (no operations until cleanup): why.
    pub blocked: Option<String>,
    /// Stopped by on-fail=stop until cleanup.
    pub stopped_by_failure: bool,
    /// Newest failure.
    pub last_error: Option<String>,
    /// restart | stop | block | ignore | standby | fence.
    pub on_fail: &'static str,
}

impl From<policy::ResourceStatus> for ResourceSnapshot {
    fn from(r: policy::ResourceStatus) -> Self {
        ResourceSnapshot {
            name: r.name,
            placement: r.placement.as_str(),
            state: r.phase.as_str(),
            target_role: r.target_role.as_str(),
            managed: r.managed,
            wanted_here: r.wanted_here,
            failcount: r.failcount,
            banned_here: r.banned_here,
            blocked: r.blocked,
            stopped_by_failure: r.stopped_by_failure,
            last_error: r.last_error,
            on_fail: r.on_fail.as_str(),
        }
    }
}

/// What the control socket sends the owner task.
#[derive(Debug)]
pub enum Request {
    /// An operator command.
    Admin(AdminCmd, oneshot::Sender<Result<(), String>>),
    /// The replicated volume's `fence-peer` handler asks whether this head may write
    /// alone (its replication link is gone): answered with DRBD's exit codes, 7 (the
    /// peer is fenced or cannot hold quorum: resume I/O) or 1 (not safe: keep I/O
    /// frozen; the manager stops the service if this head lost the cluster).
    ResolvePeer(oneshot::Sender<(i32, String)>),
    /// An operator command on one external resource.
    Resource(ResourceCmd, oneshot::Sender<Result<(), String>>),
}

/// How long a `fence-peer` question may wait for the cluster to settle (below the
/// control client's 10 s read timeout).
const RESOLVE_PEER_WAIT_MS: u64 = 8_000;

/// Handle on a running HA owner task.
#[derive(Debug, Clone)]
pub struct HaHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<Arc<HaSnapshot>>,
}

impl HaHandle {
    /// Answer a `fence-peer` handler (see [`Request::ResolvePeer`]).
    pub async fn resolve_peer(&self) -> (i32, String) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::ResolvePeer(tx)).await.is_err() {
            return (1, "the HA manager is stopped".into());
        }
        rx.await.unwrap_or((1, "the HA manager is stopped".into()))
    }

    /// Run an operator command.
    pub async fn admin(&self, cmd: AdminCmd) -> Result<(), String> {
        self.ask(|tx| Request::Admin(cmd, tx)).await
    }

    /// Run an operator command on external resources.
    pub async fn resource(&self, cmd: ResourceCmd) -> Result<(), String> {
        self.ask(|tx| Request::Resource(cmd, tx)).await
    }

    /// Send a request that carries its reply channel and wait for the reply.
    async fn ask(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Request,
    ) -> Result<(), String> {
        let stopped = || "the HA manager is stopped".to_string();
        let (tx, rx) = oneshot::channel();
        self.tx.send(request(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// The newest snapshot.
    pub fn snapshot(&self) -> Arc<HaSnapshot> {
        self.status.borrow().clone()
    }
}

enum Internal {
    Datagram {
        link: u8,
        bytes: Vec<u8>,
    },
    Clients(Vec<u8>),
    Outdate(Vec<u8>),
    Overrides(Vec<u8>),
    /// This head's volumes were (or could not be) outdated for the peer's request.
    OutdatedForPeer {
        nonce: u64,
        ok: bool,
    },
    Witness(Vec<u8>),
    Done(manager::Input),
    Policy(policy::Input),
}

/// Report a finished start or stop sequence to the owner task.
async fn op_done(tx: &mpsc::Sender<Internal>, op: Op, r: Result<(), String>) {
    let (ok, message) = match r {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e),
    };
    let _ = tx
        .send(Internal::Done(manager::Input::OpDone { op, ok, message }))
        .await;
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if crate::secrets::random_bytes(&mut b).is_err() {
        // Uniqueness per request is all that matters (the MAC authenticates).
        return unix_ms() ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(b)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Start the HA owner task for `cluster` over `res`; it runs until `shutdown`.
pub async fn start(
    cluster: &ClusterSection,
    res: Arc<Resources>,
    shutdown: CancellationToken,
) -> anyhow::Result<(HaHandle, tokio::task::JoinHandle<()>)> {
    let secret =
        crate::replicated::read_secret(&cluster.secret_file).context("cluster.secret_file")?;
    let boot = super::next_boot(&cluster.state_dir)?;
    let core = cluster.ha_config(boot);
    let node = HaNode::new(core, &secret).map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
    let key = ClusterKey::new(&secret).map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
    let mgr = Manager::new(cluster.manager_config());
    let mut policy = Policy::new(&cluster.resource_defs())
        .map_err(|e| anyhow::anyhow!("cluster.resource: {e}"))?;
    let overrides_path = cluster.state_dir.join(OVERRIDES_FILE);
    let (overrides_version, overrides) = read_overrides(&overrides_path)?;
    for o in overrides {
        if let Err(e) = policy.set_override(&o) {
            warn!("{}: {e} (ignored)", overrides_path.display());
        }
    }
    let links = cluster.link_addrs();
    let mut sockets = Vec::new();
    for (local, _) in &links {
        let s = UdpSocket::bind(local)
            .await
            .with_context(|| format!("cannot bind heartbeat link {local}"))?;
        sockets.push(Arc::new(s));
    }
    let witness_addr: Option<SocketAddr> = match &cluster.witness {
        Some(w) => Some(w.parse().context("cluster.witness")?),
        None => None,
    };
    let witness_sock = match witness_addr {
        Some(w) => {
            let bind: SocketAddr = if w.is_ipv4() {
                "0.0.0.0:0".parse()?
            } else {
                "[::]:0".parse()?
            };
            Some(Arc::new(
                UdpSocket::bind(bind).await.context("witness socket")?,
            ))
        }
        None => None,
    };
    let (itx, irx) = mpsc::channel::<Internal>(1024);
    for (i, s) in sockets.iter().enumerate() {
        let s = s.clone();
        let tx = itx.clone();
        let peer = links[i].1;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; DATAGRAM_MAX_BYTES];
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = s.recv_from(&mut buf) => match r {
                        Ok((n, from)) => {
                            // Only the configured peer address; the MAC check decides the rest.
                            if from.ip() != peer.ip() {
                                continue;
                            }
                            let bytes = buf[..n].to_vec();
                            let m = if is_client_list(&bytes) {
                                Internal::Clients(bytes)
                            } else if is_outdate(&bytes) {
                                Internal::Outdate(bytes)
                            } else if is_overrides(&bytes) {
                                Internal::Overrides(bytes)
                            } else {
                                Internal::Datagram { link: i as u8, bytes }
                            };
                            if tx.try_send(m).is_err() {
                                tracing::debug!("HA input queue full; heartbeat dropped");
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "heartbeat receive failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
        });
    }
    if let (Some(s), Some(w)) = (&witness_sock, witness_addr) {
        let s = s.clone();
        let tx = itx.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; DATAGRAM_MAX_BYTES];
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = s.recv_from(&mut buf) => match r {
                        Ok((n, from)) if from == w => {
                            let _ = tx.try_send(Internal::Witness(buf[..n].to_vec()));
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        });
    }
    let (req_tx, req_rx) = mpsc::channel(16);
    let (status_tx, status_rx) = watch::channel(Arc::new(HaSnapshot::default()));
    let mut owner = Owner {
        cluster: cluster.clone(),
        node,
        mgr,
        policy,
        overrides_path,
        overrides_version,
        overrides_seq: 0,
        service_stop_pending: false,
        banned_sent: None,
        boot,
        started: Instant::now(),
        sockets,
        links,
        witness: witness_sock.zip(witness_addr),
        res,
        itx,
        events: VecDeque::new(),
        status: status_tx,
        resolve: Vec::new(),
        key,
        outdate: None,
        vip_cache: None,
        clients_seq: 0,
        peer_clients: None,
    };
    info!(
        cluster = %cluster.name,
        node_id = cluster.node_id,
        boot,
        links = owner.links.len(),
        witness = ?cluster.witness,
        fencing = cluster.fence.as_ref().map(|f| f.agent.as_str()).unwrap_or("none"),
        "HA manager starting (passive until the cluster decides)"
    );
    let task = tokio::spawn(async move { owner.run(irx, req_rx, shutdown).await });
    Ok((
        HaHandle {
            tx: req_tx,
            status: status_rx,
        },
        task,
    ))
}

struct Owner {
    cluster: ClusterSection,
    node: HaNode,
    mgr: Manager,
    /// The external resources' policy.
    policy: Policy,
    /// Where operator overrides of the resources persist.
    overrides_path: std::path::PathBuf,
    /// Lamport version of the override set (shared with the peer).
    overrides_version: u64,
    overrides_seq: u64,
    /// The manager asked to stop the service; its own stop sequence waits until the
    /// `with-service` resources have stopped.
    service_stop_pending: bool,
    /// The last `Banned` input given to the manager.
    banned_sent: Option<Option<String>>,
    boot: u64,
    started: Instant,
    sockets: Vec<Arc<UdpSocket>>,
    links: Vec<(SocketAddr, SocketAddr)>,
    witness: Option<(Arc<UdpSocket>, SocketAddr)>,
    res: Arc<Resources>,
    itx: mpsc::Sender<Internal>,
    events: VecDeque<EventRecord>,
    status: watch::Sender<Arc<HaSnapshot>>,
    /// Open `fence-peer` questions: (asked at ms, reply).
    resolve: Vec<(u64, oneshot::Sender<(i32, String)>)>,
    key: ClusterKey,
    /// Our outdate request while a fence-peer question is open: (nonce, last sent ms,
    /// the peer's answer).
    outdate: Option<(u64, u64, Option<bool>)>,
    /// (taken at ms, portal IP holdings) for status.
    vip_cache: Option<(u64, Vec<(String, bool)>)>,
    clients_seq: u64,
    /// The peer's newest client list (its initiators' connections on the portal IPs).
    peer_clients: Option<ClientList>,
}

impl Owner {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(
        &mut self,
        mut irx: mpsc::Receiver<Internal>,
        mut req_rx: mpsc::Receiver<Request>,
        shutdown: CancellationToken,
    ) {
        // The volumes may already be Primary here (the manager alone restarted):
        // then this head runs the service.
        if self.res.any_primary() {
            self.mgr.assume_active(self.now_ms());
            self.record("volumes found Primary at start-up: this head runs the service".into());
        }
        let mut can_run_tick = tokio::time::interval(Duration::from_millis(100));
        can_run_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_can_run = None;
        let mut clients_tick = tokio::time::interval(Duration::from_millis(500));
        clients_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Clean shutdown: (deadline, passive since).
        let mut leaving: Option<(Instant, Option<Instant>)> = None;
        loop {
            if let Some((deadline, passive_since)) = &mut leaving {
                if self.mgr.state() == manager::ServiceState::Passive && self.policy.quiet() {
                    let since = *passive_since.get_or_insert_with(Instant::now);
                    // Let a few heartbeats carry "leaving" before they stop.
                    if since.elapsed() >= Duration::from_millis(4 * self.cluster.interval_ms) {
                        break;
                    }
                }
                if Instant::now() >= *deadline {
                    warn!("the service did not stop in time; leaving anyway");
                    break;
                }
            }
            let now = self.now_ms();
            self.node.handle(now, Input::Tick);
            self.pump(now);
            let next = [self.mgr.next_timeout_ms(), self.policy.next_timeout_ms()]
                .into_iter()
                .flatten()
                .fold(self.node.next_timeout_ms(), u64::min);
            let sleep_ms = next.saturating_sub(self.now_ms()).min(1000);
            self.answer_resolve();
            let sleep_ms = if leaving.is_some() || !self.resolve.is_empty() {
                sleep_ms.min(20)
            } else {
                sleep_ms
            };
            tokio::select! {
                _ = shutdown.cancelled(), if leaving.is_none() => {
                    let now = self.now_ms();
                    self.mgr.handle(now, manager::Input::Admin(AdminCmd::Leave));
                    leaving = Some((Instant::now() + Duration::from_secs(30), None));
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                _ = clients_tick.tick() => {
                    self.send_clients();
                    self.send_overrides();
                }
                _ = can_run_tick.tick() => {
                    let c = self.res.can_run();
                    if last_can_run != Some(c) {
                        last_can_run = Some(c);
                        let now = self.now_ms();
                        self.mgr.handle(now, manager::Input::CanRun(c));
                    }
                }
                m = irx.recv() => {
                    let Some(m) = m else { break };
                    let now = self.now_ms();
                    match m {
                        Internal::Datagram { link, bytes } => {
                            self.node.handle(now, Input::Datagram { link, bytes });
                        }
                        Internal::Clients(bytes) => self.on_clients(&bytes),
                        Internal::Outdate(bytes) => self.on_outdate(&bytes),
                        Internal::Overrides(bytes) => self.on_overrides(&bytes),
                        Internal::OutdatedForPeer { nonce, ok } => {
                            self.record(format!(
                                "the peer asked this head to outdate its data (its replication link failed): {}",
                                if ok { "done" } else { "refused" }
                            ));
                            self.send_outdate(Outdate {
                                reply: Some(ok),
                                sender: self.cluster.node_id,
                                cluster_id: super::cluster_id(&self.cluster.name),
                                boot: self.boot,
                                nonce,
                            });
                        }
                        Internal::Witness(bytes) => {
                            self.node.handle(now, Input::WitnessDatagram { bytes });
                        }
                        Internal::Done(i) => {
                            // A start, stop or monitor may have changed the portal IPs.
                            self.vip_cache = None;
                            self.mgr.handle(now, i);
                        }
                        Internal::Policy(i) => self.policy.handle(now, i),
                    }
                }
                r = req_rx.recv() => {
                    let now = self.now_ms();
                    match r {
                        Some(Request::Admin(cmd, reply)) => {
                            self.mgr.handle(now, manager::Input::Admin(cmd));
                            if cmd == AdminCmd::Cleanup {
                                let _ = self.policy.admin(now, ResourceCmd::Cleanup(None));
                            }
                            let _ = reply.send(Ok(()));
                        }
                        Some(Request::Resource(cmd, reply)) => {
                            let persist = matches!(
                                cmd,
                                ResourceCmd::Start(_)
                                    | ResourceCmd::Stop(_)
                                    | ResourceCmd::Manage(_)
                                    | ResourceCmd::Unmanage(_)
                            );
                            let r = self.policy.admin(now, cmd).map_err(|e| e.to_string());
                            let r = match r {
                                Ok(()) if persist => {
                                    // One more than any version seen: the peer adopts it.
                                    self.overrides_version += 1;
                                    self.send_overrides();
                                    write_overrides(
                                        &self.overrides_path,
                                        self.overrides_version,
                                        &self.policy.overrides(),
                                    )
                                    .map_err(|e| format!("applied, but not persisted: {e:#}"))
                                }
                                r => r,
                            };
                            let _ = reply.send(r);
                        }
                        Some(Request::ResolvePeer(reply)) => {
                            self.record("replication lost its peer: fence-peer asks whether this head may write alone".into());
                            self.resolve.push((now, reply));
                        }
                        None => {}
                    }
                }
            }
        }
        self.record("HA manager stopped".into());
        self.publish();
    }

    /// Drain both state machines until quiet, then publish status.
    fn pump(&mut self, now: u64) {
        for _ in 0..16 {
            let mut any = false;
            while let Some(a) = self.node.poll_action() {
                any = true;
                match a {
                    Action::Send { link, bytes } => {
                        if let (Some(s), Some((_, peer))) = (
                            self.sockets.get(usize::from(link)),
                            self.links.get(usize::from(link)),
                        ) {
                            // Best effort: a down link is the membership's business.
                            let _ = s.try_send_to(&bytes, *peer);
                        }
                    }
                    Action::SendWitness { bytes } => {
                        if let Some((s, w)) = &self.witness {
                            let _ = s.try_send_to(&bytes, *w);
                        }
                    }
                    Action::Event(e) => self.record(match e {
                        Event::LinkUp { link } => format!("heartbeat link {link} up"),
                        Event::LinkDown { link } => format!("heartbeat link {link} DOWN"),
                        Event::PeerUp => "peer up".into(),
                        Event::PeerDown => "peer DOWN (every heartbeat link)".into(),
                        Event::PeerRebooted { boot } => format!("peer restarted (boot {boot})"),
                        Event::QuorumChanged(q) => format!(
                            "quorum {} ({:?})",
                            if q.has_quorum { "yes" } else { "no" },
                            q.reason
                        ),
                    }),
                }
            }
            let st = self.node.status();
            let peer_summary = st.membership.peer_view.map(|v| v.role_summary);
            self.mgr.handle(
                now,
                manager::Input::Cluster {
                    peer_alive: st.membership.peer_alive,
                    quorum: st.quorum.state,
                    peer_summary,
                    peer_boot: st.membership.peer_boot,
                },
            );
            while let Some(a) = self.mgr.poll_action() {
                any = true;
                self.apply(now, a);
            }
            any |= self.pump_policy(now, peer_summary);
            if !any {
                break;
            }
        }
        self.publish();
    }

    fn apply(&mut self, now: u64, a: manager::Action) {
        match a {
            manager::Action::Summary { summary, active } => {
                self.node.handle(
                    now,
                    Input::SetLocalView {
                        role_summary: summary,
                        active,
                    },
                );
            }
            manager::Action::Event(e) => self.record(e),
            manager::Action::FencePeer => {
                let res = self.res.clone();
                let tx = self.itx.clone();
                let active = self.mgr.state() == manager::ServiceState::Active;
                tokio::spawn(async move {
                    let (ok, report) = res.fence_peer().await;
                    if ok && active {
                        // The peer is off: writes still waiting for its acknowledgement
                        // need not wait for the replication link's ping timeout.
                        res.reset_replication_links().await;
                    }
                    let _ = tx
                        .send(Internal::Done(manager::Input::FenceDone { ok, report }))
                        .await;
                });
            }
            manager::Action::Start { takeover } => {
                let res = self.res.clone();
                let tx = self.itx.clone();
                // The old holder's initiator connections, to tickle once the portal IPs
                // are here (after a takeover, and after a planned move too: the old
                // holder's close cannot reach them once its portal IPs are gone).
                let tickle = self
                    .peer_clients
                    .take()
                    .map(|c| c.connections)
                    .unwrap_or_default();
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = res.start(takeover, tickle).await;
                    info!(
                        takeover,
                        elapsed_ms = t0.elapsed().as_millis() as u64,
                        ok = r.is_ok(),
                        "start sequence done"
                    );
                    op_done(&tx, Op::Start, r).await;
                });
            }
            manager::Action::Stop => {
                // The with-service resources stop first (the policy sees the service
                // leave); the service's own sequence follows in pump_policy.
                self.service_stop_pending = true;
            }
            manager::Action::Monitor => {
                let res = self.res.clone();
                let tx = self.itx.clone();
                tokio::spawn(async move {
                    if let Err((resource, message)) = res.monitor().await {
                        let _ = tx
                            .send(Internal::Done(manager::Input::MonitorFailed {
                                resource,
                                message,
                            }))
                            .await;
                    }
                });
            }
            manager::Action::Suicide => {
                self.self_fence(
                    "the HA manager self-fences this head (no-quorum-policy=suicide or on_fail=fence)",
                );
            }
        }
    }

    /// Fence ourselves: no orderly stop (that is what `stop` is for); only the portal
    /// IPs go, so the peer's takeover does not meet them. The peer fences this head
    /// when its heartbeats stop.
    fn self_fence(&mut self, why: &str) {
        tracing::error!("{why}: exiting at once");
        self.res.server.drop_connections();
        let res = self.res.clone();
        std::thread::spawn(move || {
            res.remove_vips_now();
            std::process::exit(70);
        });
    }

    /// Tell the resource policy where the service runs, carry out its actions, start
    /// the service's own stop once the with-service resources are down, and tell the
    /// manager whether a required resource keeps the service away. True when anything
    /// happened.
    fn pump_policy(&mut self, now: u64, peer_summary: Option<u32>) -> bool {
        let m = self.mgr.status();
        let peer = if m.peer_alive {
            peer_summary.unwrap_or(0)
        } else {
            0
        };
        let quorate = self.node.status().quorum.state.has_quorum
            || self.cluster.policy() == twinsan_ha::quorum::NoQuorumPolicy::Ignore;
        let ctx = policy::Context {
            service_here: m.state == manager::ServiceState::Active && !self.service_stop_pending,
            service_on_peer: peer & manager::SUMMARY_ACTIVE != 0
                && peer & manager::SUMMARY_MOVE_AWAY == 0,
            online: !m.standby && quorate,
            // A blocked service (its state unknown) freezes the resources too, until
            // `ha cleanup`.
            maintenance: m.maintenance
                || peer & manager::SUMMARY_MAINTENANCE != 0
                || m.state == manager::ServiceState::Blocked,
        };
        self.policy.handle(now, policy::Input::Context(ctx));
        let mut any = false;
        while let Some(a) = self.policy.poll_action() {
            any = true;
            self.apply_policy(now, a);
        }
        if self.service_stop_pending && self.policy.with_service_quiet() {
            self.service_stop_pending = false;
            any = true;
            let res = self.res.clone();
            let tx = self.itx.clone();
            tokio::spawn(async move {
                op_done(&tx, Op::Stop, res.stop().await).await;
            });
        }
        let banned = self.policy.service_allowed_here().err();
        if self.banned_sent.as_ref() != Some(&banned) {
            self.banned_sent = Some(banned.clone());
            self.mgr.handle(now, manager::Input::Banned(banned));
            any = true;
        }
        any
    }

    fn apply_policy(&mut self, now: u64, a: policy::Action) {
        match a {
            policy::Action::Event(e) => self.record(e),
            policy::Action::Start(name) => self.spawn_ocf_op(name, true),
            policy::Action::Stop(name) => self.spawn_ocf_op(name, false),
            policy::Action::Monitor(name) => {
                let res = self.res.clone();
                let tx = self.itx.clone();
                tokio::spawn(async move {
                    let n = name.clone();
                    let result = tokio::task::spawn_blocking(move || res.ocf_monitor(&n))
                        .await
                        .unwrap_or_else(|e| policy::MonitorResult::Failed(e.to_string()));
                    let _ = tx
                        .send(Internal::Policy(policy::Input::MonitorDone {
                            resource: name,
                            result,
                        }))
                        .await;
                });
            }
            policy::Action::Standby(why) => {
                self.record(format!("{why}: this head goes to standby"));
                self.mgr
                    .handle(now, manager::Input::Admin(AdminCmd::Standby));
            }
            policy::Action::SelfFence(why) => self.self_fence(&why),
        }
    }

    /// Start or stop one external resource on a blocking task; the result comes back
    /// to the policy.
    fn spawn_ocf_op(&self, name: String, start: bool) {
        let res = self.res.clone();
        let tx = self.itx.clone();
        tokio::spawn(async move {
            let n = name.clone();
            let r = tokio::task::spawn_blocking(move || res.ocf_op(&n, start))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let (ok, message) = match r {
                Ok(()) => (true, String::new()),
                Err(e) => (false, e),
            };
            let op = if start {
                policy::RscOp::Start
            } else {
                policy::RscOp::Stop
            };
            let _ = tx
                .send(Internal::Policy(policy::Input::OpDone {
                    resource: name,
                    op,
                    ok,
                    message,
                }))
                .await;
        });
    }

    /// While active: tell the peer which initiator connections this head holds on the
    /// portal IPs (for tickle ACKs after a takeover).
    fn send_clients(&mut self) {
        if self.mgr.state() != manager::ServiceState::Active || self.sockets.is_empty() {
            return;
        }
        let vips = self.res.vip_ips();
        let connections: Vec<(SocketAddr, SocketAddr)> = self
            .res
            .server
            .status()
            .sessions
            .iter()
            .filter_map(|s| {
                let local = s.local?;
                vips.contains(&local.ip()).then_some((local, s.peer))
            })
            .collect();
        self.clients_seq += 1;
        let list = ClientList {
            sender: self.cluster.node_id,
            cluster_id: super::cluster_id(&self.cluster.name),
            stamp: Stamp {
                boot: self.boot,
                seq: self.clients_seq,
            },
            connections,
        };
        let bytes = list.encode(&self.key);
        for (s, (_, peer)) in self.sockets.iter().zip(&self.links) {
            let _ = s.try_send_to(&bytes, *peer);
        }
    }

    /// Tell the peer this head's resource overrides (once any was ever set).
    fn send_overrides(&mut self) {
        if self.overrides_version == 0 || self.sockets.is_empty() {
            return;
        }
        self.overrides_seq += 1;
        let set = OverrideSet {
            sender: self.cluster.node_id,
            cluster_id: super::cluster_id(&self.cluster.name),
            stamp: Stamp {
                boot: self.boot,
                seq: self.overrides_seq,
            },
            version: self.overrides_version,
            overrides: self.policy.overrides(),
        };
        match set.encode(&self.key) {
            Ok(bytes) => {
                for (s, (_, peer)) in self.sockets.iter().zip(&self.links) {
                    let _ = s.try_send_to(&bytes, *peer);
                }
            }
            Err(e) => warn!("cannot send the resource overrides: {e}"),
        }
    }

    /// The peer's override set: adopt it when it is newer.
    fn on_overrides(&mut self, bytes: &[u8]) {
        let Ok(set) = OverrideSet::decode(bytes, &self.key) else {
            return;
        };
        if set.sender != self.cluster.peer_node_id
            || set.cluster_id != super::cluster_id(&self.cluster.name)
            || !set.wins_over(self.overrides_version, self.cluster.node_id)
            || (set.version == self.overrides_version && set.overrides == self.policy.overrides())
        {
            return;
        }
        let unknown = self.policy.replace_overrides(&set.overrides);
        self.overrides_version = set.version;
        self.record(format!(
            "resource overrides from the peer adopted (version {}){}",
            set.version,
            if unknown.is_empty() {
                String::new()
            } else {
                format!(
                    "; resources unknown here (the configurations differ): {}",
                    unknown.join(", ")
                )
            }
        ));
        if let Err(e) = write_overrides(&self.overrides_path, set.version, &set.overrides) {
            warn!("cannot persist the peer's resource overrides: {e:#}");
        }
    }

    fn send_outdate(&self, o: Outdate) {
        let bytes = o.encode(&self.key);
        for (s, (_, peer)) in self.sockets.iter().zip(&self.links) {
            let _ = s.try_send_to(&bytes, *peer);
        }
    }

    fn on_outdate(&mut self, bytes: &[u8]) {
        let Ok(o) = Outdate::decode(bytes, &self.key) else {
            return;
        };
        if o.sender != self.cluster.peer_node_id
            || o.cluster_id != super::cluster_id(&self.cluster.name)
        {
            return;
        }
        match o.reply {
            Some(ok) => {
                if let Some((nonce, sent, None)) = self.outdate {
                    if nonce == o.nonce {
                        self.outdate = Some((nonce, sent, Some(ok)));
                        if !ok {
                            self.record("the peer refused to outdate its data".into());
                        }
                    }
                }
            }
            None => {
                // Only a head that does not run the service outdates itself.
                let passive = self.mgr.state() == manager::ServiceState::Passive;
                let res = self.res.clone();
                let tx = self.itx.clone();
                let nonce = o.nonce;
                tokio::spawn(async move {
                    let ok = passive && res.outdate_volumes().await;
                    let _ = tx.send(Internal::OutdatedForPeer { nonce, ok }).await;
                });
            }
        }
    }

    fn on_clients(&mut self, bytes: &[u8]) {
        let Ok(list) = ClientList::decode(bytes, &self.key) else {
            return;
        };
        if list.sender != self.cluster.peer_node_id
            || list.cluster_id != super::cluster_id(&self.cluster.name)
            || self
                .peer_clients
                .as_ref()
                .is_some_and(|c| c.stamp >= list.stamp)
        {
            return;
        }
        self.peer_clients = Some(list);
    }

    /// Answer open `fence-peer` questions whose answer is known.
    fn answer_resolve(&mut self) {
        if self.resolve.is_empty() {
            return;
        }
        let now = self.now_ms();
        let m = self.mgr.status();
        let q = self.node.quorum_state();
        let runs = matches!(
            m.state,
            manager::ServiceState::Active | manager::ServiceState::Starting { .. }
        );
        let answer: Option<(i32, String)> = if !runs {
            Some((1, "this head does not run the service".into()))
        } else if m.peer_fenced {
            Some((7, "the peer is fenced".into()))
        } else if !m.peer_alive
            && q.has_quorum
            && matches!(q.reason, twinsan_ha::quorum::Reason::WitnessGranted { .. })
        {
            Some((
                7,
                "the witness gave its vote to this head: the peer cannot take over".into(),
            ))
        } else if !q.has_quorum && !q.reason.is_transient() && !m.peer_alive {
            Some((1, format!("this head lost quorum ({:?})", q.reason)))
        } else if self.outdate.is_some_and(|(_, _, r)| r == Some(true)) {
            Some((
                4,
                "the peer marked its data Outdated (only the replication link failed)".into(),
            ))
        } else {
            None
        };
        // Only the replication link failed (heartbeats still arrive): ask the peer to
        // outdate its data, so that it cannot be promoted while this head writes alone.
        if answer.is_none() && runs && m.peer_alive {
            let resend = match self.outdate {
                None => true,
                Some((_, sent, None)) => now >= sent + 200,
                Some(_) => false,
            };
            if resend {
                let nonce = self.outdate.map_or_else(rand_u64, |(n, _, _)| n);
                self.outdate = Some((nonce, now, None));
                self.send_outdate(Outdate {
                    reply: None,
                    sender: self.cluster.node_id,
                    cluster_id: super::cluster_id(&self.cluster.name),
                    boot: self.boot,
                    nonce,
                });
            }
        }
        let mut keep = Vec::new();
        for (at, reply) in std::mem::take(&mut self.resolve) {
            match &answer {
                Some(a) => {
                    let _ = reply.send(a.clone());
                }
                None if now >= at + RESOLVE_PEER_WAIT_MS => {
                    let _ = reply.send((
                        1,
                        "the replication link is down but the peer still answers heartbeats: \
                         I/O stays frozen until the link returns or `twinsan repl resume-io`"
                            .into(),
                    ));
                }
                None => keep.push((at, reply)),
            }
        }
        if let Some((code, why)) = answer {
            self.record(format!("fence-peer answered {code}: {why}"));
        }
        self.resolve = keep;
        if self.resolve.is_empty() {
            self.outdate = None;
        }
    }

    fn record(&mut self, what: String) {
        if what.contains("FAILED") || what.contains("DOWN") || what.contains("BOTH") {
            warn!(target: "twinsan::ha", "{what}");
        } else {
            info!(target: "twinsan::ha", "{what}");
        }
        if self.events.len() >= EVENTS_MAX {
            self.events.pop_front();
        }
        self.events.push_back(EventRecord {
            at_unix_ms: unix_ms(),
            what,
        });
    }

    /// Portal IP holdings for status, refreshed at most every [`VIP_STATUS_MAX_AGE_MS`]
    /// (each look is a netlink dump; status is published after every datagram).
    fn vip_holdings(&mut self) -> Vec<(String, bool)> {
        let now = self.now_ms();
        let fresh = self
            .vip_cache
            .as_ref()
            .is_some_and(|(at, _)| now < at + VIP_STATUS_MAX_AGE_MS);
        if !fresh {
            self.vip_cache = Some((now, self.res.vip_holdings()));
        }
        self.vip_cache
            .as_ref()
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn publish(&mut self) {
        let st = self.node.status();
        let m = self.mgr.status();
        let now = st.membership.now_ms;
        let peer = m.peer_summary.unwrap_or(0);
        let snap = HaSnapshot {
            cluster: self.cluster.name.clone(),
            node_id: self.cluster.node_id,
            peer_node_id: self.cluster.peer_node_id,
            boot: self.boot,
            service: m.state.as_str().into(),
            waiting: m.waiting,
            standby: m.standby,
            maintenance: m.maintenance,
            moved: m.moved.map(|h| if h { "here" } else { "away" }.to_string()),
            failcount: m.failcount,
            failed_here: m.failed_here,
            can_run: m.can_run,
            peer_alive: m.peer_alive,
            peer_active: m.peer_alive && peer & manager::SUMMARY_ACTIVE != 0,
            peer_standby: m.peer_alive && peer & manager::SUMMARY_STANDBY != 0,
            peer_fenced: m.peer_fenced,
            quorum: st.quorum.state.has_quorum,
            quorum_reason: format!("{:?}", st.quorum.state.reason),
            needs_fencing: st.quorum.state.needs_fencing,
            no_quorum_policy: st.quorum.no_quorum_policy.to_string(),
            witness: self.cluster.witness.clone(),
            last_fence: m.last_fence,
            links: st
                .membership
                .links
                .iter()
                .map(|l| LinkSnapshot {
                    index: l.index,
                    local: self
                        .links
                        .get(usize::from(l.index))
                        .map(|x| x.0.to_string())
                        .unwrap_or_default(),
                    peer: self
                        .links
                        .get(usize::from(l.index))
                        .map(|x| x.1.to_string())
                        .unwrap_or_default(),
                    up: l.up,
                    last_rx_ago_ms: l.last_rx_ms.map(|t| now.saturating_sub(t)),
                    rejected: l.counters.rejected_mac
                        + l.counters.rejected_replay
                        + l.counters.rejected_malformed
                        + l.counters.rejected_foreign,
                })
                .collect(),
            vips: self.vip_holdings(),
            banned: m.banned,
            resources: self
                .policy
                .status()
                .into_iter()
                .map(ResourceSnapshot::from)
                .collect(),
            events: self.events.iter().cloned().collect(),
        };
        self.status.send_replace(Arc::new(snap));
    }
}

/// The file in `state_dir` that keeps operator overrides of resources.
const OVERRIDES_FILE: &str = "resource-overrides";

/// Read persisted overrides: a line `version N`, then lines
/// `NAME target-role=started|stopped managed=true|false`.
fn read_overrides(path: &std::path::Path) -> anyhow::Result<(u64, Vec<Override>)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Vec::new();
    let mut version = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || anyhow::anyhow!("{}:{}: {line:?} is corrupt", path.display(), n + 1);
        let mut words = line.split_ascii_whitespace();
        let name = words.next().ok_or_else(bad)?.to_string();
        if name == "version" {
            version = words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(bad)?;
            continue;
        }
        let (mut role, mut managed) = (None, None);
        for w in words {
            match w.split_once('=') {
                Some(("target-role", v)) => {
                    role = Some(policy::TargetRole::parse(v).map_err(|_| bad())?)
                }
                Some(("managed", v)) => managed = Some(v.parse::<bool>().map_err(|_| bad())?),
                _ => return Err(bad()),
            }
        }
        out.push(Override {
            name,
            target_role: role,
            managed,
        });
    }
    Ok((version, out))
}

/// Persist overrides (atomically: a new file renamed over the old one).
fn write_overrides(
    path: &std::path::Path,
    version: u64,
    overrides: &[Override],
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut text = format!(
        "# operator overrides of [[cluster.resource]] (twinsan ha resource), shared with the peer\nversion {version}\n"
    );
    for o in overrides {
        text.push_str(&o.name);
        if let Some(r) = o.target_role {
            text.push_str(&format!(" target-role={}", r.as_str()));
        }
        if let Some(m) = o.managed {
            text.push_str(&format!(" managed={m}"));
        }
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_persist_and_corrupt_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(OVERRIDES_FILE);
        assert_eq!(
            read_overrides(&p).unwrap(),
            (0, Vec::new()),
            "no file: none"
        );
        let o = vec![
            Override {
                name: "fs".into(),
                target_role: Some(policy::TargetRole::Stopped),
                managed: None,
            },
            Override {
                name: "app".into(),
                target_role: None,
                managed: Some(false),
            },
        ];
        write_overrides(&p, 7, &o).unwrap();
        assert_eq!(read_overrides(&p).unwrap(), (7, o));
        std::fs::write(&p, "fs target-role=sideways\n").unwrap();
        let e = read_overrides(&p).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("corrupt"), "{e}");
        std::fs::write(&p, "fs colour=blue\n").unwrap();
        assert!(read_overrides(&p).is_err());
    }
}
