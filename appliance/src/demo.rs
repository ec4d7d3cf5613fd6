//! `twinsan demo up|status|down`: the embedded default — a complete two-head appliance
//! on one machine (as root). Network namespaces for head A, head B, a witness and a
//! client, joined by two bridges in a switch namespace (link 0: the public network
//! with the portal IP; link 1: replication and the second heartbeat link); sparse
//! backing files; generated configurations; both heads and the witness started as
//! real processes.
//!
//! Owns: the demo's namespaces, files and processes, and the state file
//! (`DIR/demo.json`) through which `status` and `down` find them (`down` also works
//! without it, from the names alone, after a crash).
//!
//! May not touch: anything outside its namespaces (no address in the host's
//! namespace, no host routes) and outside DIR.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// The target the demo exports.
pub const DEMO_IQN: &str = "iqn.2026-11.org.twinsan:demo";
/// iSCSI port.
const PORT: u16 = 3260;
/// How long `up` waits for the appliance to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of `demo up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Directory for configs, disks, logs, state.
    pub dir: PathBuf,
    /// Size of the replicated volume.
    pub size: String,
    /// Name prefix of the namespaces (and cluster name).
    pub name: String,
    /// Run a witness.
    pub witness: bool,
    /// Heartbeat dead time.
    pub dead_time_ms: u64,
    /// Fence the peer even when the witness settled a partition (a crashed process
    /// may leave the portal IP behind: the default).
    pub fence_with_witness: bool,
    /// `[[cluster.resource]]` entries appended to both heads' configurations (`{head}`
    /// becomes the head's letter).
    pub resources: Option<String>,
}

/// What `up` records for `status` and `down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoState {
    /// Name prefix.
    pub name: String,
    /// Directory.
    pub dir: PathBuf,
    /// Namespaces: switch, a, b, witness, client.
    pub namespaces: Vec<String>,
    /// Heads: (name, namespace, pid, control socket, address).
    pub heads: Vec<HeadState>,
    /// Witness pid, if any.
    pub witness_pid: Option<u32>,
    /// The portal IP.
    pub vip: Ipv4Addr,
    /// The client namespace.
    pub client_ns: String,
    /// Target IQN.
    pub iqn: String,
}

/// One head of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadState {
    /// "a" or "b".
    pub name: String,
    /// Namespace.
    pub netns: String,
    /// PID of its twinsan.
    pub pid: u32,
    /// Control socket.
    pub control: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its address on the public link.
    pub address: Ipv4Addr,
    /// Its log.
    pub log: PathBuf,
}

fn ns_names(name: &str) -> [String; 5] {
    [
        format!("{name}-sw"),
        format!("{name}-a"),
        format!("{name}-b"),
        format!("{name}-w"),
        format!("{name}-c"),
    ]
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// PIDs of every process in namespace `ns`.
pub fn ns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process exists and is not a zombie (a killed head whose parent, `demo up`, is
/// gone waits for init to reap it).
fn alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    if pid == 0 || unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn write_secret(path: &Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = [0u8; 24];
    getrandom_fill(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(f, "{hex}")?;
    Ok(())
}

fn getrandom_fill(buf: &mut [u8]) -> anyhow::Result<()> {
    crate::secrets::random_bytes(buf).context("cannot read /dev/urandom")
}

/// Run `f` with this thread in network namespace `ns` (a fresh thread, so the caller's
/// namespace is untouched).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let file = std::fs::File::open(&path).with_context(|| format!("no network namespace {ns}"))?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on a valid namespace fd affects only this thread (network
        // namespaces are per thread for sockets created afterwards).
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if r != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// A TCP connect to `addr` from namespace `ns` succeeds.
pub fn reachable_from(ns: &str, addr: SocketAddr) -> bool {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
    })
    .unwrap_or(false)
}

fn head_config(o: &UpOptions, me: char, node_id: u8, peer: char, peer_ns: &str) -> String {
    let dir = o.dir.display();
    let (my, other) = if node_id == 1 { (11, 12) } else { (12, 11) };
    let witness = if o.witness {
        "witness = \"10.231.0.30:7790\"\n".to_string()
    } else {
        String::new()
    };
    format!(
        r#"# Generated by `twinsan demo up`: head {me} of the demo appliance.
[node]
name = "{name}-{me}"
control_socket = "{dir}/{me}.sock"

[[portal_group]]
tag = 1
listen = ["0.0.0.0:{PORT}"]

[[target]]
iqn = "{DEMO_IQN}"
alias = "twinsan demo"

[[target.lun]]
lun = 0
replicated = "vol0"

[[replicated]]
name = "vol0"
volume_uuid = "6d656d6f-7477-696e-7361-6e2d64656d6f"
protocol = "C"
node_id = {node_id}
peer_node_id = {peer_id}
address = "10.231.1.{my}:7788"
peer_address = "10.231.1.{other}:7788"
disk = "{dir}/disk-{me}.img"
size = "{size}"
secret_file = "{dir}/replication.secret"
after_sb_0pri = "discard-zero-changes"
after_sb_1pri = "discard-secondary"
after_sb_2pri = "disconnect"
# Writes the peer has not confirmed are acknowledged only once the HA manager says
# the peer is fenced or cannot hold quorum (no acknowledged write is ever lost).
fencing = "resource-and-stonith"
handler_timeout_ms = 15000

[replicated.handlers]
fence-peer = "{exe} ha fence-peer --control {dir}/{me}.sock"

[cluster]
name = "{name}"
node_id = {node_id}
peer_node_id = {peer_id}
secret_file = "{dir}/cluster.secret"
state_dir = "{dir}/state-{me}"
dead_time_ms = {dead}
{witness}fence_with_witness = {fww}
fence_delay_passive_ms = 500
monitor_interval_ms = 1000

[[cluster.link]]
local = "10.231.0.{my}:7790"
peer = "10.231.0.{other}:7790"

[[cluster.link]]
local = "10.231.1.{my}:7790"
peer = "10.231.1.{other}:7790"

[cluster.fence]
# Demo/test agent: "powers off" head {peer} by killing every process in its
# namespace and setting its links down. Real heads use a fence-agents program
# (agent = "external", program = "/usr/sbin/fence_ipmilan", ...).
agent = "process"
netns = "{peer_ns}"
links_down = true
timeout_ms = 5000

[[cluster.vip]]
address = "10.231.0.50/24"
interface = "eth0"
"#,
        name = o.name,
        peer_id = 3 - node_id,
        size = o.size,
        dead = o.dead_time_ms,
        fww = o.fence_with_witness,
        exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "twinsan".into()),
    )
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("demo.json")
}

/// Read the state file.
pub fn read_state(dir: &Path) -> anyhow::Result<DemoState> {
    let p = state_path(dir);
    let s = std::fs::read_to_string(&p)
        .with_context(|| format!("no demo in {} (run `twinsan demo up` first)", dir.display()))?;
    serde_json::from_str(&s).with_context(|| format!("{} is corrupt", p.display()))
}

fn check_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and needs root (run it with sudo)");
    }
    Ok(())
}

fn spawn_in_ns(ns: &str, args: &[&str], log: &Path) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("cannot find the twinsan binary")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(&exe)
        .args(args)
        .env(
            "TWINSAN_LOG",
            std::env::var("TWINSAN_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start twinsan in {ns}"))?;
    Ok(child.id())
}

/// `twinsan demo up`.
pub fn up(o: &UpOptions) -> anyhow::Result<DemoState> {
    check_root()?;
    if o.name.is_empty() || o.name.len() > 10 || !o.name.chars().all(|c| c.is_ascii_alphanumeric())
    {
        bail!("--name: 1 to 10 letters or digits (it prefixes namespace and interface names)");
    }
    let [sw, a, b, w, c] = ns_names(&o.name);
    for ns in [&sw, &a, &b, &w, &c] {
        if ns_exists(ns) {
            bail!(
                "namespace {ns} exists: a demo named {:?} is already up (run `twinsan demo down{}` first)",
                o.name,
                if o.name == "twinsan" { String::new() } else { format!(" --name {}", o.name) }
            );
        }
    }
    std::fs::create_dir_all(&o.dir)
        .with_context(|| format!("cannot create {}", o.dir.display()))?;
    let dir = o.dir.canonicalize()?;
    let o = &UpOptions {
        dir: dir.clone(),
        ..o.clone()
    };
    let res = build(o, [&sw, &a, &b, &w, &c]);
    if res.is_err() {
        let _ = down(&o.name, &dir);
    }
    res
}

fn build(o: &UpOptions, [sw, a, b, w, c]: [&String; 5]) -> anyhow::Result<DemoState> {
    let dir = &o.dir;
    for ns in [sw, a, b, w, c] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&["-n", sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", sw, "link", "add", "br1", "type", "bridge"])?;
    ip(&["-n", sw, "link", "set", "br0", "up"])?;
    ip(&["-n", sw, "link", "set", "br1", "up"])?;
    // (namespace, switch port prefix, [(interface, bridge, address)]).
    type Port<'a> = (&'a str, &'a str, &'a str);
    let plan: [(&String, &str, Vec<Port>); 4] = [
        (
            a,
            "a",
            vec![
                ("eth0", "br0", "10.231.0.11/24"),
                ("eth1", "br1", "10.231.1.11/24"),
            ],
        ),
        (
            b,
            "b",
            vec![
                ("eth0", "br0", "10.231.0.12/24"),
                ("eth1", "br1", "10.231.1.12/24"),
            ],
        ),
        (w, "w", vec![("eth0", "br0", "10.231.0.30/24")]),
        (c, "c", vec![("eth0", "br0", "10.231.0.100/24")]),
    ];
    for (ns, short, ifs) in &plan {
        for (i, (ifname, br, addr)) in ifs.iter().enumerate() {
            let port = format!("{short}{i}");
            ip(&[
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", ns,
            ])?;
            ip(&["-n", sw, "link", "set", &port, "master", br])?;
            ip(&["-n", sw, "link", "set", &port, "up"])?;
            ip(&["-n", ns, "addr", "add", addr, "dev", ifname])?;
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
        }
    }
    write_secret(&dir.join("cluster.secret"))?;
    write_secret(&dir.join("replication.secret"))?;
    let mut heads = Vec::new();
    for (me, id, peer, peer_ns, ns) in [('a', 1u8, 'b', b, a), ('b', 2u8, 'a', a, b)] {
        let cfg_path = dir.join(format!("twinsan-{me}.toml"));
        let mut cfg = head_config(o, me, id, peer, peer_ns);
        if let Some(r) = &o.resources {
            cfg.push_str("\n# From --resources:\n");
            cfg.push_str(&r.replace("{head}", &me.to_string()));
        }
        std::fs::write(&cfg_path, cfg)?;
        let cfg = crate::config::load(&cfg_path).map_err(|p| {
            anyhow::anyhow!(
                "generated {} is invalid: {}",
                cfg_path.display(),
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let disk = dir.join(format!("disk-{me}.img"));
        let _ = std::fs::remove_file(&disk);
        crate::replicated::create_md(&cfg, "vol0", false, true)
            .with_context(|| format!("create-md on head {me}"))?;
        let log = dir.join(format!("{me}.log"));
        let cfg_s = cfg_path.display().to_string();
        let pid = spawn_in_ns(ns, &["serve", "--config", &cfg_s], &log)?;
        heads.push(HeadState {
            name: me.to_string(),
            netns: ns.clone(),
            pid,
            control: dir.join(format!("{me}.sock")),
            config: cfg_path,
            address: if id == 1 {
                Ipv4Addr::new(10, 231, 0, 11)
            } else {
                Ipv4Addr::new(10, 231, 0, 12)
            },
            log,
        });
    }
    let witness_pid = if o.witness {
        let state = dir.join("state-w");
        let secret = dir.join("cluster.secret");
        Some(spawn_in_ns(
            w,
            &[
                "witness",
                "--cluster",
                &o.name,
                "--nodes",
                "1,2",
                "--listen",
                "10.231.0.30:7790",
                "--secret-file",
                &secret.display().to_string(),
                "--state-dir",
                &state.display().to_string(),
            ],
            &dir.join("w.log"),
        )?)
    } else {
        None
    };
    let state = DemoState {
        name: o.name.clone(),
        dir: dir.clone(),
        namespaces: [sw, a, b, w, c].iter().map(|s| s.to_string()).collect(),
        heads,
        witness_pid,
        vip: Ipv4Addr::new(10, 231, 0, 50),
        client_ns: c.clone(),
        iqn: DEMO_IQN.into(),
    };
    std::fs::write(state_path(dir), serde_json::to_string_pretty(&state)?)?;
    wait_ready(&state)?;
    Ok(state)
}

/// One head's HA and volume facts through its control socket.
pub fn head_facts(h: &HeadState) -> (Option<serde_json::Value>, Option<serde_json::Value>) {
    use crate::control::{request, Request};
    let ha = request(&h.control, &Request::HaStatus)
        .ok()
        .and_then(|r| r.ok())
        .and_then(|l| serde_json::from_str(l.first()?).ok());
    let vol = request(
        &h.control,
        &Request::ReplStatus {
            name: Some("vol0".into()),
            json: true,
        },
    )
    .ok()
    .and_then(|r| r.ok())
    .and_then(|l| serde_json::from_str(l.first()?).ok());
    (ha, vol)
}

fn wait_ready(s: &DemoState) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let vip = SocketAddr::from((s.vip, PORT));
    loop {
        if let Some(w) = s.witness_pid.filter(|&p| !alive(p)) {
            bail!(
                "the witness (pid {w}) exited during start-up; its log:\n{}",
                tail(&s.dir.join("w.log"), 20)
            );
        }
        for h in &s.heads {
            if !alive(h.pid) {
                bail!(
                    "head {} exited during start-up; its log ({}):\n{}",
                    h.name,
                    h.log.display(),
                    tail(&h.log, 20)
                );
            }
        }
        let facts: Vec<_> = s.heads.iter().map(head_facts).collect();
        let up_to_date = facts.iter().all(|(_, v)| {
            let field = |k: &str| {
                v.as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(|d| d.as_str())
                    .map(str::to_owned)
            };
            field("disk").as_deref() == Some("UpToDate")
                && field("connection").as_deref() == Some("Connected")
        });
        let active = facts.iter().any(|(h, _)| {
            h.as_ref()
                .and_then(|h| h.get("service"))
                .and_then(|s| s.as_str())
                == Some("active")
        });
        if up_to_date && active && reachable_from(&s.client_ns, vip) {
            return Ok(());
        }
        if t0.elapsed() > READY_TIMEOUT {
            bail!(
                "the appliance did not become ready within {} s (volume UpToDate and \
                 Connected on both heads: {up_to_date}, a head active: {active}); logs in {}",
                READY_TIMEOUT.as_secs(),
                s.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The text `up` prints.
pub fn banner(s: &DemoState) -> String {
    let vip = format!("{}:{PORT}", s.vip);
    let iqn = &s.iqn;
    let c = &s.client_ns;
    let mut out = format!(
        "twinsan demo {:?} is up (files in {}).\n",
        s.name,
        s.dir.display()
    );
    for h in &s.heads {
        let (ha, _) = head_facts(h);
        let svc = ha
            .as_ref()
            .and_then(|v| v.get("service")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        out += &format!(
            "  head {}: namespace {}, pid {}, address {}, service {svc}\n",
            h.name, h.netns, h.pid, h.address
        );
    }
    if let Some(p) = s.witness_pid {
        out += &format!(
            "  witness: namespace {}-w, pid {p}, 10.231.0.30:7790\n",
            s.name
        );
    }
    out += &format!("  portal (follows the active head): {vip}   target {iqn}   LUN 0\n\n");
    out += "Try it from the client namespace (apt-get install -y libiscsi-bin qemu-utils qemu-block-extra):\n";
    out += &format!("  ip netns exec {c} iscsi-ls -s iscsi://{vip}\n");
    out += &format!("  ip netns exec {c} iscsi-inq iscsi://{vip}/{iqn}/0\n");
    out += &format!(
        "  ip netns exec {c} qemu-img bench -w -t none -c 20000 -d 32 -s 4k --image-opts \
         driver=iscsi,transport=tcp,portal={vip},target={iqn},lun=0\n"
    );
    // Ready to paste: the binary that built the demo, wherever it lives.
    let tw = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "twinsan".into());
    out += "Fail over (the other head takes over, I/O resumes within ~2 s):\n";
    if let Some(h) = s.heads.first() {
        out += &format!(
            "  kill -9 $({tw} demo status --json --dir {} | jq '.heads[] | select(.service==\"active\") | .pid')   # or: kill -9 {}\n",
            s.dir.display(),
            h.pid,
        );
    }
    out += &format!(
        "Status:  {tw} demo status --dir {d}\n         {tw} status --control {d}/a.sock\n",
        d = s.dir.display(),
    );
    out += &format!(
        "Move:    {tw} ha move --control {d}/b.sock\nStop:    {tw} demo down --dir {d}{n}\n",
        d = s.dir.display(),
        n = if s.name == "twinsan" {
            String::new()
        } else {
            format!(" --name {}", s.name)
        }
    );
    out
}

/// `twinsan demo status`: JSON value.
pub fn status_json(s: &DemoState) -> serde_json::Value {
    let heads: Vec<serde_json::Value> = s
        .heads
        .iter()
        .map(|h| {
            let (ha, vol) = head_facts(h);
            serde_json::json!({
                "name": h.name,
                "netns": h.netns,
                "pid": h.pid,
                "running": alive(h.pid),
                "address": h.address.to_string(),
                "control": h.control,
                "log": h.log,
                "service": ha.as_ref().and_then(|v| v.get("service").cloned()),
                "ha": ha,
                "volume": vol,
            })
        })
        .collect();
    serde_json::json!({
        "name": s.name,
        "dir": s.dir,
        "namespaces": s.namespaces,
        "portal": format!("{}:{PORT}", s.vip),
        "iqn": s.iqn,
        "client_netns": s.client_ns,
        "witness_pid": s.witness_pid,
        "witness_running": s.witness_pid.map(alive),
        "portal_reachable": reachable_from(&s.client_ns, SocketAddr::from((s.vip, PORT))),
        "heads": heads,
    })
}

/// `twinsan demo status` as text.
pub fn status_text(v: &serde_json::Value) -> String {
    let mut out = format!(
        "demo {}: portal {} ({}), target {}\n",
        v["name"].as_str().unwrap_or("?"),
        v["portal"].as_str().unwrap_or("?"),
        if v["portal_reachable"].as_bool() == Some(true) {
            "reachable from the client"
        } else {
            "NOT reachable from the client"
        },
        v["iqn"].as_str().unwrap_or("?"),
    );
    for h in v["heads"].as_array().into_iter().flatten() {
        out += &format!(
            "  head {}: pid {} {} in {}, service {}, volume {} {} {}, quorum {}, peer {}\n",
            h["name"].as_str().unwrap_or("?"),
            h["pid"],
            if h["running"].as_bool() == Some(true) {
                "running"
            } else {
                "NOT running"
            },
            h["netns"].as_str().unwrap_or("?"),
            h["service"].as_str().unwrap_or("?"),
            h["volume"]["role"].as_str().unwrap_or("?"),
            h["volume"]["disk"].as_str().unwrap_or("?"),
            h["volume"]["connection"].as_str().unwrap_or("?"),
            h["ha"]["quorum_reason"].as_str().unwrap_or("?"),
            if h["ha"]["peer_alive"].as_bool() == Some(true) {
                "alive"
            } else {
                "lost"
            },
        );
        let rs: Vec<String> = h["ha"]["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{} {}{}",
                    r["name"].as_str().unwrap_or("?"),
                    r["state"].as_str().unwrap_or("?"),
                    if r["managed"].as_bool() == Some(false) {
                        " (unmanaged)"
                    } else {
                        ""
                    }
                )
            })
            .collect();
        if !rs.is_empty() {
            out += &format!("    resources: {}\n", rs.join(", "));
        }
    }
    if let Some(p) = v["witness_pid"].as_u64() {
        out += &format!(
            "  witness: pid {p} {}\n",
            if v["witness_running"].as_bool() == Some(true) {
                "running"
            } else {
                "NOT running"
            }
        );
    }
    out
}

/// `twinsan demo down`: kill every process in the demo's namespaces, delete them, remove
/// the generated files. Idempotent; works without the state file.
pub fn down(name: &str, dir: &Path) -> anyhow::Result<Vec<String>> {
    check_root()?;
    let mut done = Vec::new();
    let mut pids = Vec::new();
    if let Ok(s) = read_state(dir) {
        pids.extend(s.heads.iter().map(|h| h.pid));
        pids.extend(s.witness_pid);
    }
    let names = ns_names(name);
    for ns in &names {
        pids.extend(ns_pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    // Heads first get SIGTERM (clean leave), then SIGKILL after a short grace.
    for &p in &pids {
        // SAFETY: sending a signal has no memory-safety preconditions.
        unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
    }
    let t0 = Instant::now();
    while pids.iter().any(|&p| alive(p)) && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !pids.is_empty() {
        done.push(format!("stopped {} process(es)", pids.len()));
    }
    for ns in &names {
        if ns_exists(ns) {
            ip(&["netns", "del", ns])?;
            done.push(format!("deleted namespace {ns}"));
        }
    }
    for f in [
        "demo.json",
        "twinsan-a.toml",
        "twinsan-b.toml",
        "cluster.secret",
        "replication.secret",
        "disk-a.img",
        "disk-b.img",
        "a.log",
        "b.log",
        "w.log",
        "a.sock",
        "b.sock",
    ] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    for d in ["state-a", "state-b", "state-w"] {
        let p = dir.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    if dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(done)
}

/// `twinsan demo revive HEAD`: bring a fenced or killed head back (links up, process
/// started again); it rejoins as the passive head and resyncs.
pub fn revive(dir: &Path, head: &str) -> anyhow::Result<u32> {
    check_root()?;
    let mut s = read_state(dir)?;
    let Some(h) = s.heads.iter_mut().find(|h| h.name == head) else {
        bail!("no head {head:?} (a or b)");
    };
    // A head killed a moment ago may still be exiting.
    let t0 = Instant::now();
    while alive(h.pid) && t0.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(h.pid) {
        bail!("head {head} is running (pid {})", h.pid);
    }
    for p in ns_pids(&h.netns) {
        // SAFETY: sending a signal has no memory-safety preconditions.
        unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
    }
    for ifname in ["eth0", "eth1"] {
        ip(&["-n", &h.netns, "link", "set", ifname, "up"])?;
    }
    // A VIP left behind by a killed process is removed before the head starts.
    let _ = ip(&[
        "-n",
        &h.netns,
        "addr",
        "del",
        &format!("{}/24", s.vip),
        "dev",
        "eth0",
    ]);
    let cfg = h.config.display().to_string();
    h.pid = spawn_in_ns(&h.netns, &["serve", "--config", &cfg], &h.log)?;
    let pid = h.pid;
    std::fs::write(state_path(dir), serde_json::to_string_pretty(&s)?)?;
    Ok(pid)
}
