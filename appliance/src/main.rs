//! `twinsan`: the appliance binary — command line, configuration, signal handling.
//!
//! Owns: the CLI surface and process lifecycle. Everything a command does beyond
//! parsing arguments lives in a module (`config`, `secrets`, `node`) or a library crate.

mod config;
mod control;
mod demo;
mod ha;
mod node;
mod replicated;
mod secrets;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use config::{
    AluaGroupSection, AluaSection, LunSection, NodeConfig, NodeSection, PortalGroupSection,
    TargetSection,
};

/// twinsan — a two-node SAN appliance: iSCSI target, block replication and HA in one binary.
///
/// Today twinsan serves iSCSI LUNs from files, block devices or volumes replicated to a
/// peer node; the HA manager is not implemented yet (see README).
#[derive(Parser, Debug)]
#[command(name = "twinsan", version, about, long_about)]
struct Cli {
    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. "info" or "twinsan_iscsi=debug".
    /// Defaults to $TWINSAN_LOG, then "info".
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve one file or block device as an iSCSI LUN in the foreground (like qemu-nbd).
    ///
    /// Stops cleanly on SIGINT/SIGTERM: stops accepting logins, asks initiators to log
    /// out, lets in-flight commands finish, flushes the device and exits 0.
    Export(Box<ExportArgs>),
    /// Run a node from a configuration file (targets, portals, LUNs, ACLs, CHAP).
    Serve {
        /// Configuration file (TOML; see README "Configuration reference").
        #[arg(long, short)]
        config: PathBuf,
        /// Control socket path (overrides `[node] control_socket`).
        #[arg(long)]
        control: Option<PathBuf>,
    },
    /// Show or set ALUA target port group states of a running node (through its
    /// control socket).
    #[command(subcommand)]
    Alua(AluaCommand),
    /// Replicated volumes (modelled on drbdadm): status and operator verbs against a
    /// running node (through its control socket), create-md offline.
    #[command(subcommand)]
    Repl(ReplCommand),
    /// Validate a configuration file and report every problem with file, key and reason.
    ///
    /// Exits 0 when the file is valid, 1 otherwise. Secret files are checked for
    /// existence, ownership and permissions (their content is never printed).
    Check {
        /// Configuration file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The embedded default: a complete two-head appliance on this machine (`up`,
    /// `status`, `down`), or a single local LUN (`single`).
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Run a witness: the third vote of a two-head cluster (any third machine).
    Witness {
        /// Cluster name (as in the heads' `[cluster] name`).
        #[arg(long)]
        cluster: String,
        /// The two heads' node ids, e.g. `1,2`.
        #[arg(long)]
        nodes: String,
        /// UDP address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The cluster secret file (mode 0600).
        #[arg(long)]
        secret_file: PathBuf,
        /// Directory for the persisted boot counter.
        #[arg(long, default_value = "/var/lib/twinsan/witness")]
        state_dir: PathBuf,
    },
    /// One view of a running head across layers: HA (nodes, links, quorum, service,
    /// fencing, events), replicated volumes, targets and sessions, portal IPs.
    Status {
        /// The head's control socket.
        #[arg(long)]
        control: Option<PathBuf>,
        /// Or its configuration file (the control socket is found from it).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One JSON object (keys in the README).
        #[arg(long)]
        json: bool,
        /// Repeat every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// HA operator commands against a running head (Pacemaker's move/standby/cleanup
    /// for the appliance's one service).
    Ha {
        #[command(subcommand)]
        cmd: HaCommand,
        /// The head's control socket.
        #[arg(long, global = true)]
        control: Option<PathBuf>,
        /// Or its configuration file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum HaCommand {
    /// Move the service to this head (or away from it with --away).
    Move {
        /// Away from this head instead.
        #[arg(long)]
        away: bool,
    },
    /// Forget a move.
    Unmove,
    /// This head runs nothing (the service moves to the peer).
    Standby,
    /// Leave standby.
    Online,
    /// Reset failcounts and a blocked state.
    Cleanup,
    /// Maintenance mode: the managers watch but do not act.
    Maintenance {
        /// on | off.
        state: String,
    },
    /// Operate on one external resource (`[[cluster.resource]]`): start / stop set its
    /// target role (persisted on this head), unmanage leaves it alone (watched only),
    /// manage takes it back, cleanup forgets its failures and blocks.
    Resource {
        /// The resource's name.
        name: String,
        /// start | stop | manage | unmanage | cleanup.
        action: String,
    },
    /// The `fence-peer` handler of a replicated volume under the HA manager (set it as
    /// `handlers.fence-peer` with `fencing = "resource-and-stonith"`): exits 7 when the
    /// peer is fenced or cannot hold quorum (I/O resumes), 1 otherwise (I/O stays
    /// frozen).
    FencePeer,
}

#[derive(Subcommand, Debug)]
enum DemoCommand {
    /// Build and start the two-head demo appliance (as root): namespaces, bridge,
    /// sparse disks, configs, both heads and a witness; waits until the volume is
    /// UpToDate and the portal IP answers, then prints client commands.
    Up {
        /// Directory for configs, disks, logs.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the replicated volume.
        #[arg(long, default_value = "1GiB")]
        size: String,
        /// Name (prefixes the namespaces; lets several demos coexist).
        #[arg(long, default_value = "twinsan")]
        name: String,
        /// No witness (partitions are then decided by fencing alone).
        #[arg(long)]
        no_witness: bool,
        /// Heartbeat dead time.
        #[arg(long, default_value_t = 600)]
        dead_time_ms: u64,
        /// Take over without fencing when the witness settled a partition (then the
        /// losing head demotes itself; a crashed head's portal IP is not removed).
        #[arg(long)]
        no_fence_with_witness: bool,
        /// A TOML file of `[[cluster.resource]]` entries (external OCF agents) appended
        /// to both heads' configurations; `{head}` in it becomes `a` or `b`.
        #[arg(long)]
        resources: Option<PathBuf>,
    },
    /// Show the demo: each head's PID, namespace, service and volume state.
    Status {
        /// Directory given to `up`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Name given to `up`.
        #[arg(long, default_value = "twinsan")]
        name: String,
        /// JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring a fenced or killed head back: links up, its twinsan started again; it
    /// rejoins as the passive head and resyncs.
    Revive {
        /// a or b.
        head: String,
        /// Directory given to `up`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Name given to `up`.
        #[arg(long, default_value = "twinsan")]
        name: String,
    },
    /// Remove everything `up` created (also after a crash; idempotent).
    Down {
        /// Directory given to `up`.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Name given to `up`.
        #[arg(long, default_value = "twinsan")]
        name: String,
    },
    /// A single local LUN (1 GiB sparse) on 127.0.0.1:3260, no replication, in the
    /// foreground. Prints libiscsi and qemu-img commands; Ctrl-C stops it.
    Single {
        /// Directory for the backing file (kept on exit when given).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Size of the demo LUN.
        #[arg(long, default_value = "1GiB")]
        size: String,
        /// Portal to listen on.
        #[arg(long, default_value = "127.0.0.1:3260")]
        listen: String,
    },
}

#[derive(Subcommand, Debug)]
enum AluaCommand {
    /// Print every target port group: target, group id, state, PREF bit, member
    /// relative port ids, cause of the last change.
    Show {
        /// Control socket of the running node.
        #[arg(long)]
        control: PathBuf,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Change the state of a target port group (an implicit transition: initiators get
    /// ASYMMETRIC ACCESS STATE CHANGED).
    Set {
        /// Control socket of the running node.
        #[arg(long)]
        control: PathBuf,
        /// Target port group id.
        #[arg(long)]
        group: u16,
        /// active-optimized | active-non-optimized | standby | unavailable | offline |
        /// transitioning.
        #[arg(long)]
        state: twinsan_scsi::AccessState,
        /// Only on this target (default: every target that has the group).
        #[arg(long)]
        target: Option<String>,
    },
}

/// How a `repl` verb finds the running node.
#[derive(Args, Debug)]
struct NodeArg {
    /// Control socket of the running node.
    #[arg(long)]
    control: Option<PathBuf>,
    /// The node's configuration file (its control socket is used).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ReplCommand {
    /// Role, disk and connection state, peer, out-of-sync bytes, resync progress,
    /// generations, split brain, frozen I/O, counters.
    Status {
        /// Only this volume.
        name: Option<String>,
        /// One line of JSON (an object with NAME, else an array; keys in the README).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Become Primary (refused with stale data unless --force).
    Primary {
        /// Volume.
        name: String,
        /// Promote Inconsistent/Outdated data, making it the newest (the peer resyncs
        /// from it).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Become Secondary (refused while application I/O is in flight).
    Secondary {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Start connecting to the peer.
    Connect {
        /// Volume.
        name: String,
        /// This node is the split-brain victim: its changes are discarded.
        #[arg(long)]
        discard_my_data: bool,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Drop the connection and stop connecting (StandAlone).
    Disconnect {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Online verify against the connected peer.
    Verify {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Discard local data and resync it fully from the connected peer.
    Invalidate {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Mark the local (Secondary) data Outdated.
    Outdate {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Resume application I/O frozen by resource-and-stonith fencing.
    ResumeIo {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Disconnect, demote and mark the metadata clean (the volume stays attached;
    /// `connect` brings it back).
    Down {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
    /// Write fresh replication metadata for a volume of a configuration (offline:
    /// the node must not be running it).
    CreateMd {
        /// Volume.
        name: String,
        /// Configuration file naming the volume.
        #[arg(long, short)]
        config: PathBuf,
        /// Overwrite existing metadata or data.
        #[arg(long)]
        force: bool,
        /// Declare the data consistent (no initial sync). Only for identical disks on
        /// both nodes (e.g. both new and zeroed), both created with --assume-clean.
        #[arg(long)]
        assume_clean: bool,
    },
    /// Grow a replicated volume (not implemented yet).
    Resize {
        /// Volume.
        name: String,
        #[command(flatten)]
        node: NodeArg,
    },
}

#[derive(Args, Debug)]
struct ExportArgs {
    /// File or block device to serve.
    path: PathBuf,
    /// Target name, e.g. iqn.2026-11.org.example:disk1.
    #[arg(long)]
    iqn: String,
    /// Portal to listen on (ADDR:PORT); give it more than once for several portals of
    /// one target portal group.
    #[arg(long, default_value = "0.0.0.0:3260")]
    listen: Vec<String>,
    /// Create the file (sparse) with this size if it does not exist, e.g. 10GiB.
    #[arg(long)]
    size: Option<String>,
    /// LUN number.
    #[arg(long, default_value_t = 0)]
    lun: u64,
    /// Only this initiator may log in (repeatable). Default: any initiator.
    #[arg(long = "allow-initiator", value_name = "IQN")]
    allow_initiator: Vec<String>,
    /// CHAP user the initiator must authenticate as.
    #[arg(long, requires = "chap_secret_file")]
    chap_user: Option<String>,
    /// File with that user's CHAP secret (mode 0600, owned by you).
    #[arg(long, requires = "chap_user")]
    chap_secret_file: Option<PathBuf>,
    /// CHAP user the target answers as (mutual CHAP; needs --chap-user).
    #[arg(long, requires_all = ["mutual_chap_secret_file", "chap_user"])]
    mutual_chap_user: Option<String>,
    /// File with the target's mutual-CHAP secret.
    #[arg(long, requires = "mutual_chap_user")]
    mutual_chap_secret_file: Option<PathBuf>,
    /// Refuse writes (the LUN reports write protection).
    #[arg(long)]
    read_only: bool,
    /// Make every write durable before it completes (WCE=0) instead of caching writes
    /// until SYNCHRONIZE CACHE.
    #[arg(long)]
    no_write_cache: bool,
    /// I/O engine.
    #[arg(long, default_value = "auto", value_parser = ["auto", "io_uring", "sync"])]
    engine: String,
    /// O_DIRECT use.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    direct_io: String,
    /// Logical block size (files only).
    #[arg(long, value_parser = ["512", "4096"])]
    block_size: Option<String>,
    /// Stable LUN identity (default: derived from --iqn and --lun).
    #[arg(long)]
    uuid: Option<uuid::Uuid>,
    /// File for persistent-reservation state (default: PATH.pr for files; none for
    /// block devices, which then refuse APTPL).
    #[arg(long)]
    pr_file: Option<PathBuf>,
    /// Relative target port id of the portals (default 1); the other head of a pair
    /// uses another one.
    #[arg(long)]
    relative_port_id: Option<u16>,
    /// ALUA target port group of the portals (default 1).
    #[arg(long)]
    alua_group_id: Option<u16>,
    /// Initial ALUA state of that group.
    #[arg(long, default_value = "active-optimized")]
    alua_state: twinsan_scsi::AccessState,
    /// Accept SET TARGET PORT GROUPS from initiators (explicit ALUA).
    #[arg(long)]
    explicit_alua: bool,
    /// A target port group of the peer head, reported in REPORT TARGET PORT GROUPS:
    /// ID:PORT[,PORT...][:STATE] (repeatable; default state standby).
    #[arg(long = "alua-remote-group", value_name = "SPEC", value_parser = parse_remote_group)]
    alua_remote_group: Vec<AluaGroupSection>,
    /// Serve a control socket for `twinsan alua` at PATH (without PATH: under
    /// $XDG_RUNTIME_DIR, /run or $TMPDIR, named after the first portal). Default: none.
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    control: Option<Option<PathBuf>>,
}

/// Parse `ID:PORT[,PORT...][:STATE]`.
fn parse_remote_group(s: &str) -> Result<AluaGroupSection, String> {
    let mut parts = s.split(':');
    let id = parts
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| format!("{s:?}: expected ID:PORT[,PORT...][:STATE]"))?;
    let ports = parts
        .next()
        .ok_or_else(|| format!("{s:?}: expected ID:PORT[,PORT...][:STATE]"))?
        .split(',')
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("{s:?}: bad port id {p:?}"))
        })
        .collect::<Result<Vec<u16>, String>>()?;
    let state = match parts.next() {
        Some(st) => {
            st.parse::<twinsan_scsi::AccessState>()
                .map_err(|e| e.to_string())?;
            st.to_owned()
        }
        None => "standby".to_owned(),
    };
    if parts.next().is_some() {
        return Err(format!("{s:?}: expected ID:PORT[,PORT...][:STATE]"));
    }
    Ok(AluaGroupSection {
        id,
        state,
        preferred: false,
        relative_port_ids: ports,
    })
}

impl ExportArgs {
    fn into_config(self) -> NodeConfig {
        let local_group = self.alua_group_id.unwrap_or(1);
        let mut alua_groups = vec![AluaGroupSection {
            id: local_group,
            state: self.alua_state.name().to_owned(),
            preferred: false,
            relative_port_ids: Vec::new(),
        }];
        alua_groups.extend(self.alua_remote_group);
        NodeConfig {
            node: NodeSection {
                name: None,
                control_socket: match self.control {
                    None => Some(PathBuf::new()),
                    Some(path) => path,
                },
            },
            portal_groups: vec![PortalGroupSection {
                tag: 1,
                listen: self.listen,
                relative_port_id: self.relative_port_id,
                alua_group_id: self.alua_group_id,
            }],
            alua: AluaSection {
                explicit: self.explicit_alua,
                groups: alua_groups,
                ..AluaSection::default()
            },
            targets: vec![TargetSection {
                iqn: self.iqn,
                alias: None,
                portal_groups: vec![1],
                allowed_initiators: self.allow_initiator,
                chap_user: self.chap_user,
                chap_secret_file: self.chap_secret_file,
                mutual_chap_user: self.mutual_chap_user,
                mutual_chap_secret_file: self.mutual_chap_secret_file,
                luns: vec![LunSection {
                    lun: self.lun,
                    path: Some(self.path),
                    replicated: None,
                    size: self.size,
                    uuid: self.uuid,
                    read_only: self.read_only,
                    write_cache: !self.no_write_cache,
                    engine: self.engine,
                    direct_io: self.direct_io,
                    block_size: self.block_size.and_then(|s| s.parse().ok()),
                    pr_file: self.pr_file,
                }],
            }],
            ..NodeConfig::default()
        }
    }
}

fn init_logging(filter: Option<&str>) {
    let filter = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("TWINSAN_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let env = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .init();
}

/// Cancel `token` on the first SIGINT or SIGTERM.
fn on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

fn serve_config(cfg: NodeConfig, origin: &std::path::Path) -> anyhow::Result<()> {
    let problems = config::validate(&cfg, origin);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        anyhow::bail!("{} configuration problem(s)", problems.len());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("twinsan")
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let token = CancellationToken::new();
        on_signals(token.clone())?;
        node::run(&cfg, token).await
    })
}

fn demo(dir: Option<PathBuf>, size: String, listen: String) -> anyhow::Result<()> {
    let (dir, _tmp) = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("twinsan-demo-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            (t.path().to_owned(), Some(t))
        }
    };
    let iqn = "iqn.2026-11.org.twinsan:demo".to_owned();
    let path = dir.join("demo-lun0.img");
    println!(
        "twinsan demo: LUN 0 of {iqn} on {listen}, backed by {} ({size}, sparse)",
        path.display()
    );
    println!("Try it from another terminal (apt-get install -y libiscsi-bin qemu-utils qemu-block-extra):");
    println!("  iscsi-ls -s iscsi://{listen}");
    println!("  iscsi-inq iscsi://{listen}/{iqn}/0");
    println!("  iscsi-readcapacity16 iscsi://{listen}/{iqn}/0");
    println!("  qemu-img info iscsi://{listen}/{iqn}/0");
    println!("  qemu-img bench -w -t none -c 20000 -d 32 -s 4k iscsi://{listen}/{iqn}/0");
    println!("Stop with Ctrl-C.");
    let args = ExportArgs {
        path,
        iqn,
        listen: vec![listen],
        size: Some(size),
        lun: 0,
        allow_initiator: vec![],
        chap_user: None,
        chap_secret_file: None,
        mutual_chap_user: None,
        mutual_chap_secret_file: None,
        read_only: false,
        no_write_cache: false,
        engine: "auto".into(),
        direct_io: "auto".into(),
        block_size: None,
        uuid: None,
        pr_file: None,
        relative_port_id: None,
        alua_group_id: None,
        alua_state: twinsan_scsi::AccessState::ActiveOptimized,
        explicit_alua: false,
        alua_remote_group: Vec::new(),
        control: None,
    };
    serve_config(args.into_config(), std::path::Path::new("(demo)"))
}

/// `twinsan alua ...`: one request to a running node's control socket; prints the
/// response lines. Exit 0 on success, 1 when the node refused, 2 when it is unreachable.
fn alua_command(cmd: AluaCommand) -> ExitCode {
    let (path, req) = match cmd {
        AluaCommand::Show { control, target } => (control, control::Request::AluaShow { target }),
        AluaCommand::Set {
            control,
            group,
            state,
            target,
        } => (
            control,
            control::Request::AluaSet {
                group,
                state,
                target,
            },
        ),
    };
    run_request(&path, &req)
}

/// One request to a running node's control socket; prints the response lines. Exit 0
/// on success, 1 when the node refused, 2 when it is unreachable.
fn run_request(path: &std::path::Path, req: &control::Request) -> ExitCode {
    match control::request(path, req) {
        Ok(Ok(lines)) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(reason)) => {
            eprintln!("twinsan: {}: {reason}", path.display());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("twinsan: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The control socket a `repl` verb talks to.
fn resolve_control(node: &NodeArg) -> anyhow::Result<PathBuf> {
    if let Some(c) = &node.control {
        return Ok(c.clone());
    }
    let Some(file) = &node.config else {
        anyhow::bail!("give --control SOCKET or --config FILE of the running node");
    };
    let cfg = config::parse_file(file).map_err(|p| {
        anyhow::anyhow!(
            "{}",
            p.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    node::control_path(&cfg)
        .ok_or_else(|| anyhow::anyhow!("{}: control_socket is disabled", file.display()))
}

/// `twinsan repl ...`. Exit 0 on success, 1 when refused, 2 when unreachable.
fn repl_command(cmd: ReplCommand) -> ExitCode {
    use control::{ReplVerb, Request};
    let (node, req) = match cmd {
        ReplCommand::CreateMd {
            name,
            config: file,
            force,
            assume_clean,
        } => {
            let cfg = match config::load(&file) {
                Ok(c) => c,
                Err(problems) => {
                    for p in &problems {
                        eprintln!("error: {p}");
                    }
                    return ExitCode::from(1);
                }
            };
            return match replicated::create_md(&cfg, &name, force, assume_clean) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("twinsan: create-md {name}: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        ReplCommand::Resize { name, .. } => {
            eprintln!("twinsan: repl resize {name}: not implemented yet (see README, \"Not implemented yet\")");
            return ExitCode::from(1);
        }
        ReplCommand::Status { name, json, node } => (node, Request::ReplStatus { name, json }),
        ReplCommand::Primary { name, force, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::Primary { force },
                name,
            },
        ),
        ReplCommand::Secondary { name, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::Secondary,
                name,
            },
        ),
        ReplCommand::Connect {
            name,
            discard_my_data,
            node,
        } => (
            node,
            Request::Repl {
                verb: ReplVerb::Connect { discard_my_data },
                name,
            },
        ),
        ReplCommand::Disconnect { name, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::Disconnect,
                name,
            },
        ),
        ReplCommand::Verify { name, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::Verify,
                name,
            },
        ),
        ReplCommand::Invalidate { name, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::Invalidate,
                name,
            },
        ),
        ReplCommand::Outdate { name, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::Outdate,
                name,
            },
        ),
        ReplCommand::ResumeIo { name, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::ResumeIo,
                name,
            },
        ),
        ReplCommand::Down { name, node } => (
            node,
            Request::Repl {
                verb: ReplVerb::Down,
                name,
            },
        ),
    };
    let path = match resolve_control(&node) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twinsan: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    run_request(&path, &req)
}

fn demo_dir(dir: Option<PathBuf>, name: &str) -> PathBuf {
    dir.unwrap_or_else(|| {
        if name == "twinsan" {
            PathBuf::from("/var/tmp/twinsan-demo")
        } else {
            PathBuf::from(format!("/var/tmp/twinsan-demo-{name}"))
        }
    })
}

/// `twinsan demo up|status|down`.
fn demo_command(cmd: DemoCommand) -> ExitCode {
    let r: anyhow::Result<()> = match cmd {
        DemoCommand::Up {
            dir,
            size,
            name,
            no_witness,
            dead_time_ms,
            no_fence_with_witness,
            resources,
        } => {
            let resources = match resources.map(|p| {
                std::fs::read_to_string(&p).with_context(|| format!("--resources {}", p.display()))
            }) {
                Some(Err(e)) => {
                    eprintln!("twinsan: error: {e:#}");
                    return ExitCode::from(2);
                }
                Some(Ok(t)) => Some(t),
                None => None,
            };
            let o = demo::UpOptions {
                resources,
                dir: demo_dir(dir, &name),
                size,
                name,
                witness: !no_witness,
                dead_time_ms,
                fence_with_witness: !no_fence_with_witness,
            };
            demo::up(&o).map(|s| print!("{}", demo::banner(&s)))
        }
        DemoCommand::Status { dir, name, json } => {
            demo::read_state(&demo_dir(dir, &name)).map(|s| {
                let v = demo::status_json(&s);
                if json {
                    println!("{v}");
                } else {
                    print!("{}", demo::status_text(&v));
                }
            })
        }
        DemoCommand::Down { dir, name } => demo::down(&name, &demo_dir(dir, &name)).map(|done| {
            if done.is_empty() {
                println!("nothing to remove (demo {name:?} is down)");
            }
            for d in done {
                println!("{d}");
            }
        }),
        DemoCommand::Revive { head, dir, name } => {
            demo::revive(&demo_dir(dir, &name), &head).map(|pid| {
                println!("head {head} started again (pid {pid}); it rejoins as the passive head")
            })
        }
        DemoCommand::Single { .. } => unreachable!("handled in main"),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinsan: demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn witness(
    cluster: &str,
    nodes: &str,
    listen: std::net::SocketAddr,
    secret_file: &std::path::Path,
    state_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let ids: Vec<u8> = nodes
        .split(',')
        .map(|x| x.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--nodes {nodes:?}: the two heads' ids, e.g. 1,2"))?;
    let [a, b] = ids[..] else {
        anyhow::bail!("--nodes {nodes:?}: the two heads' ids, e.g. 1,2");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let stop = CancellationToken::new();
        on_signals(stop.clone())?;
        ha::witness::run(cluster, [a, b], listen, secret_file, state_dir, stop).await
    })
}

/// `twinsan ha ...`. Exit 0 on success, 1 when refused, 2 when unreachable (the
/// `fence-peer` handler exits with its answer's code, 1 when unreachable).
fn ha_command(cmd: HaCommand, control: Option<PathBuf>, config: Option<PathBuf>) -> ExitCode {
    use control::{HaVerb, Request};
    let refuse = |what: String| {
        eprintln!("twinsan: {what}");
        ExitCode::from(1)
    };
    let request = match cmd {
        HaCommand::FencePeer => Request::HaResolvePeer,
        HaCommand::Resource { name, action } => match control::ResourceVerb::parse(&action) {
            Some(verb) => Request::HaResource { name, verb },
            None => {
                return refuse(format!(
                    "ha resource: {action:?}: expected start, stop, manage, unmanage or cleanup"
                ))
            }
        },
        HaCommand::Move { away: false } => Request::Ha(HaVerb::Move),
        HaCommand::Move { away: true } => Request::Ha(HaVerb::MoveAway),
        HaCommand::Unmove => Request::Ha(HaVerb::Unmove),
        HaCommand::Standby => Request::Ha(HaVerb::Standby),
        HaCommand::Online => Request::Ha(HaVerb::Online),
        HaCommand::Cleanup => Request::Ha(HaVerb::Cleanup),
        HaCommand::Maintenance { state } => match state.as_str() {
            "on" => Request::Ha(HaVerb::Maintenance(true)),
            "off" => Request::Ha(HaVerb::Maintenance(false)),
            other => return refuse(format!("ha maintenance: {other:?}: expected on or off")),
        },
    };
    let fence_peer = request == Request::HaResolvePeer;
    let path = match resolve_control(&NodeArg { control, config }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twinsan: error: {e:#}");
            return ExitCode::from(if fence_peer { 1 } else { 2 });
        }
    };
    if !fence_peer {
        return run_request(&path, &request);
    }
    match control::request(&path, &request) {
        Ok(Ok(lines)) => {
            let line = lines.first().cloned().unwrap_or_default();
            let (code, why) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            eprintln!("twinsan ha fence-peer: {why}");
            ExitCode::from(code.parse::<u8>().unwrap_or(1))
        }
        Ok(Err(e)) => {
            eprintln!("twinsan ha fence-peer: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("twinsan ha fence-peer: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `twinsan status`: one JSON object or text, from the head's control socket.
fn status_command(
    control: Option<PathBuf>,
    config: Option<PathBuf>,
    json: bool,
    watch: bool,
) -> ExitCode {
    let path = match resolve_control(&NodeArg { control, config }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("twinsan: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    loop {
        match status::collect(&path) {
            Ok(v) => {
                if json {
                    println!("{v}");
                } else {
                    if watch {
                        print!("\x1b[2J\x1b[H");
                    }
                    print!("{}", status::text(&v));
                }
            }
            Err(e) => {
                eprintln!("twinsan: error: {e:#}");
                if !watch {
                    return ExitCode::from(2);
                }
            }
        }
        if !watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let res = match cli.cmd {
        Command::Export(a) => {
            serve_config((*a).into_config(), std::path::Path::new("(command line)"))
        }
        Command::Serve {
            config,
            control: control_path,
        } => match config::load(&config) {
            Ok(mut cfg) => {
                if control_path.is_some() {
                    cfg.node.control_socket = control_path;
                }
                serve_config(cfg, &config)
            }
            Err(problems) => {
                for p in &problems {
                    eprintln!("error: {p}");
                }
                Err(anyhow::anyhow!(
                    "{} configuration problem(s) in {}",
                    problems.len(),
                    config.display()
                ))
            }
        },
        Command::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                let luns: usize = cfg.targets.iter().map(|t| t.luns.len()).sum();
                println!(
                    "{}: OK ({} portal group(s), {} target(s), {} LUN(s), {} replicated volume(s))",
                    config.display(),
                    cfg.portal_groups.len(),
                    cfg.targets.len(),
                    luns,
                    cfg.replicated.len()
                );
                Ok(())
            }
            Err(problems) => {
                for p in &problems {
                    println!("{p}");
                }
                eprintln!("{} problem(s) found", problems.len());
                return ExitCode::from(1);
            }
        },
        Command::Demo(DemoCommand::Single { dir, size, listen }) => demo(dir, size, listen),
        Command::Demo(cmd) => return demo_command(cmd),
        Command::Witness {
            cluster,
            nodes,
            listen,
            secret_file,
            state_dir,
        } => witness(&cluster, &nodes, listen, &secret_file, &state_dir),
        Command::Status {
            control,
            config,
            json,
            watch,
        } => return status_command(control, config, json, watch),
        Command::Ha {
            cmd,
            control,
            config,
        } => return ha_command(cmd, control, config),
        Command::Alua(cmd) => return alua_command(cmd),
        Command::Repl(cmd) => return repl_command(cmd),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            warn!("{e:#}");
            eprintln!("twinsan: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
