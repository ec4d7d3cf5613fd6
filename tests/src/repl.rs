//! Two-node replicated pairs for process tests: each node is a real `twinsan serve`
//! process with one `[[replicated]]` volume `r0` (sparse file, internal metadata,
//! `create-md --assume-clean`) under LUN 0 of one target, either on 127.0.0.1 or inside
//! the namespaces of a [`NetPair`]. Nodes can be SIGKILLed and restarted; the
//! operator verbs (`twinsan repl ...`) go to each node's control socket. Also: a
//! minimal reader for the flat `repl status --json` object, a seeded RNG, block
//! patterns that name the write that produced them, and a raw iSCSI login from inside
//! a namespace.
//!
//! Owns: the nodes' processes and scratch directories (killed and removed on drop,
//! also when a test panics). Uses only loopback or the addresses of a [`NetPair`].

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::NetPair;
use crate::raw::{rw16, RawSession};
use crate::{free_port, run_with_timeout, scratch_dir, secret_file, twinsan_bin};

/// Target IQN of every pair.
pub const IQN: &str = "iqn.2026-11.org.twinsan.test:replfault";
/// Volume UUID of every pair (the same on both nodes).
pub const UUID: &str = "7d0b5c1e-2a44-4f0e-9a61-0c9e3b2f11a7";
/// Replicated volume name.
pub const VOLUME: &str = "r0";
/// The default bound of every wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// How to build a pair.
#[derive(Debug, Clone)]
pub struct PairOptions {
    /// Disk size (`size` of the `[[replicated]]` section), e.g. "64MiB".
    pub size: String,
    /// Extra `key = value` lines for the `[[replicated]]` section (policies...).
    pub extra: Vec<String>,
    /// Handlers to configure; each appends `HANDLER NODE PEER_NODE_ID` to the node's
    /// `handlers.log` (see [`ReplNode::handler_log`]).
    pub handlers: Vec<String>,
}

impl Default for PairOptions {
    fn default() -> Self {
        PairOptions {
            size: "64MiB".into(),
            extra: Vec::new(),
            handlers: Vec::new(),
        }
    }
}

/// One node of a pair: its files, addresses and (while running) its process.
pub struct ReplNode {
    /// Node id (1 or 2).
    pub id: u8,
    /// Node name (`node1`, `node2`).
    pub name: String,
    /// Configuration file.
    pub config: PathBuf,
    /// Control socket.
    pub control: PathBuf,
    /// iSCSI portal.
    pub portal: SocketAddr,
    /// Backing file of the replicated volume.
    pub disk: PathBuf,
    /// Namespace the process runs in (`None`: the test's own, loopback addresses).
    pub ns: Option<String>,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    // Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

/// Result of a `twinsan` CLI call, with a printable form.
pub fn out_text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// Run `twinsan ARGS` (bounded).
pub fn twinsan(args: &[&str]) -> Output {
    let mut c = Command::new(twinsan_bin());
    c.args(args);
    run_with_timeout(&mut c, WAIT)
}

/// A free port on 127.0.0.1 below the kernel's ephemeral range, so that a node's
/// portal or link port freed by a SIGKILL cannot be taken by an outgoing connection
/// (the peer's reconnect attempts, the test's sessions) before the node restarts.
/// Falls back to any free port.
fn stable_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (first, span) = (10_000u32, low.saturating_sub(10_000));
    if span >= 1000 {
        let base = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..200 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = first + (base + n.wrapping_mul(37)) % span;
            let port = u16::try_from(port).expect("port");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    free_port()
}

fn loopback() -> SocketAddr {
    format!("127.0.0.1:{}", stable_port())
        .parse()
        .expect("addr")
}

impl ReplNode {
    /// Write node `id`'s configuration into a fresh scratch directory.
    fn setup(
        id: u8,
        me: SocketAddr,
        peer: SocketAddr,
        portal: SocketAddr,
        ns: Option<String>,
        opts: &PairOptions,
    ) -> Self {
        let dir = scratch_dir();
        let name = format!("node{id}");
        let control = dir.path().join("control.sock");
        let secret = secret_file(dir.path(), "r0.secret", "a-shared-replication-secret\n");
        let disk = dir.path().join("r0.img");
        let config = dir.path().join("twinsan.toml");
        let hlog = dir.path().join("handlers.log");
        let mut text = format!(
            r#"
[node]
name = "{name}"
control_socket = "{control}"

[[portal_group]]
tag = 1
listen = ["{portal}"]

[[target]]
iqn = "{IQN}"

[[target.lun]]
lun = 0
replicated = "{VOLUME}"

[[replicated]]
name = "{VOLUME}"
volume_uuid = "{UUID}"
node_id = {id}
peer_node_id = {peer_id}
address = "{me}"
peer_address = "{peer}"
disk = "{disk}"
size = "{size}"
secret_file = "{secret}"
ping_int_ms = 500
ping_timeout_ms = 1000
connect_int_ms = 100
"#,
            control = control.display(),
            peer_id = 3 - id,
            disk = disk.display(),
            size = opts.size,
            secret = secret.display(),
        );
        for l in &opts.extra {
            text.push_str(l);
            text.push('\n');
        }
        if !opts.handlers.is_empty() {
            text.push_str("\n[replicated.handlers]\n");
            for h in &opts.handlers {
                text.push_str(&format!(
                    "{h} = \"echo \\\"$TWINSAN_HANDLER $TWINSAN_NODE $TWINSAN_PEER_NODE_ID\\\" >> {}\"\n",
                    hlog.display()
                ));
            }
        }
        std::fs::write(&config, text).expect("write config");
        let log_path = dir.path().join("twinsan.log");
        ReplNode {
            id,
            name,
            config,
            control,
            portal,
            disk,
            ns,
            log_path,
            child: None,
            starts: 0,
            dir,
        }
    }

    /// The node's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `repl create-md --assume-clean` (offline).
    pub fn create_md(&self) {
        let cfg = self.config.to_str().expect("utf-8");
        let o = twinsan(&[
            "repl",
            "create-md",
            "--config",
            cfg,
            VOLUME,
            "--assume-clean",
        ]);
        assert!(
            o.status.success(),
            "create-md on {}: {}",
            self.name,
            out_text(&o)
        );
    }

    /// Start `twinsan serve` (appending to the node's log) and wait, bounded, until its
    /// control socket answers and (on loopback) its portal accepts connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        self.starts += 1;
        {
            use std::io::Write;
            let _ = writeln!(log, "===== test harness: start #{} =====", self.starts);
        }
        let bin = twinsan_bin();
        let mut c = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        c.args(["serve", "--config", self.config.to_str().expect("utf-8")])
            .env("TWINSAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        self.child = Some(c.spawn().expect("spawn twinsan"));
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!("{} exited early ({st}):\n{}", self.name, self.log());
            }
            let up = self.repl(&["status", VOLUME]).status.success()
                && (self.ns.is_some()
                    || TcpStream::connect_timeout(&self.portal, Duration::from_millis(200))
                        .is_ok());
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up within {WAIT:?}:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded); the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the node logged (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let l = self.log();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// What the configured handlers appended (`HANDLER NODE PEER_NODE_ID` lines).
    pub fn handler_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("handlers.log")).unwrap_or_default()
    }

    /// `twinsan repl VERB ARGS... --control SOCKET`.
    pub fn repl(&self, args: &[&str]) -> Output {
        let mut v = vec!["repl"];
        v.extend_from_slice(args);
        v.push("--control");
        v.push(self.control.to_str().expect("utf-8"));
        twinsan(&v)
    }

    /// A verb that must succeed.
    pub fn repl_ok(&self, args: &[&str]) {
        let o = self.repl(args);
        assert!(
            o.status.success(),
            "repl {args:?} on {}: {}\nlog tail:\n{}",
            self.name,
            out_text(&o),
            self.log_tail(40)
        );
    }

    /// Retry a verb (bounded) until it succeeds, e.g. `primary` while the node has not
    /// yet noticed that its peer is gone.
    pub fn repl_retry(&self, args: &[&str]) {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.repl(args);
            if o.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "repl {args:?} on {} kept failing: {}\nstatus: {}\nlog tail:\n{}",
                self.name,
                out_text(&o),
                self.status_raw(),
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `repl status r0 --json`, or the failure text.
    pub fn status_raw(&self) -> String {
        let o = self.repl(&["status", VOLUME, "--json"]);
        if o.status.success() {
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        } else {
            format!("(status failed: {})", out_text(&o))
        }
    }

    /// `repl status r0 --json`, parsed.
    pub fn status(&self) -> Status {
        let o = self.repl(&["status", VOLUME, "--json"]);
        assert!(
            o.status.success(),
            "status on {}: {}",
            self.name,
            out_text(&o)
        );
        Status(String::from_utf8_lossy(&o.stdout).trim().to_owned())
    }

    /// Poll the status (bounded by [`WAIT`]) until `pred` holds; panics with the last
    /// status of both nodes and this node's log tail otherwise.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.repl(&["status", VOLUME, "--json"]);
            let s = Status(String::from_utf8_lossy(&o.stdout).trim().to_owned());
            if o.status.success() && pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: never {what} within {WAIT:?}; last status: {}\nlog tail:\n{}",
                self.name,
                if o.status.success() {
                    s.0.clone()
                } else {
                    out_text(&o)
                },
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Log in to this node's LUN with the raw initiator (from inside its namespace if
    /// it has one).
    pub fn login(&self, initiator: &str) -> RawSession {
        match &self.ns {
            None => RawSession::login(self.portal, initiator, IQN),
            Some(ns) => login_in_ns(ns, self.portal, initiator, IQN),
        }
    }

    /// Read `len` bytes of the volume's data area straight from the backing file.
    pub fn read_disk(&self, offset: u64, len: usize) -> Vec<u8> {
        read_file_at(&self.disk, offset, len)
    }
}

impl Drop for ReplNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log (tail) -----\n{}",
                self.name,
                self.log_tail(80)
            );
        }
    }
}

/// Read `len` bytes at `offset` of a file (short files read as zeros past the end).
pub fn read_file_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f
            .read_at(&mut buf[done..], offset + done as u64)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        done += n;
    }
    buf
}

/// Log in to `addr` from inside network namespace `ns`: a helper thread enters the
/// namespace (setns affects only the calling thread) and opens the connection there;
/// the socket stays in that namespace.
pub fn login_in_ns(ns: &str, addr: SocketAddr, initiator: &str, target: &str) -> RawSession {
    let (ns, initiator, target) = (ns.to_owned(), initiator.to_owned(), target.to_owned());
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))
            .or_else(|_| std::fs::File::open(format!("/var/run/netns/{ns}")))
            .unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
        // SAFETY: setns with a valid namespace fd; it changes only this thread's network
        // namespace, and the thread ends right after the login.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
        RawSession::login(addr, &initiator, &target)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Two nodes: node 1 (listens for the link) and node 2 (connects). Field order makes
/// the processes die before the namespaces go.
pub struct Pair {
    /// Node 1.
    pub a: ReplNode,
    /// Node 2.
    pub b: ReplNode,
    /// The namespaces, when the pair runs in them.
    pub net: Option<NetPair>,
}

impl Pair {
    /// Two nodes on 127.0.0.1 with fresh metadata (`--assume-clean`), not started.
    pub fn loopback(opts: &PairOptions) -> Self {
        let (ra, rb) = (loopback(), loopback());
        let a = ReplNode::setup(1, ra, rb, loopback(), None, opts);
        let b = ReplNode::setup(2, rb, ra, loopback(), None, opts);
        a.create_md();
        b.create_md();
        Pair { a, b, net: None }
    }

    /// Two nodes in the namespaces of `net` (node 1 in `net.a`), not started.
    pub fn in_netns(net: NetPair, opts: &PairOptions) -> Self {
        let ra: SocketAddr = SocketAddr::new(net.addr_a.into(), 7789);
        let rb: SocketAddr = SocketAddr::new(net.addr_b.into(), 7789);
        let pa = SocketAddr::new(net.addr_a.into(), 3260);
        let pb = SocketAddr::new(net.addr_b.into(), 3260);
        let a = ReplNode::setup(1, ra, rb, pa, Some(net.a.clone()), opts);
        let b = ReplNode::setup(2, rb, ra, pb, Some(net.b.clone()), opts);
        a.create_md();
        b.create_md();
        Pair {
            a,
            b,
            net: Some(net),
        }
    }

    /// Start both and wait until both are Connected with UpToDate data on both sides.
    pub fn start_connected(&mut self) {
        self.a.start();
        self.b.start();
        self.wait_in_sync();
    }

    /// Wait (bounded) until both nodes are Connected, UpToDate on both sides, nothing
    /// out of sync.
    pub fn wait_in_sync(&self) {
        for n in [&self.a, &self.b] {
            n.wait_for(
                "Connected/UpToDate with nothing out of sync",
                Status::in_sync,
            );
        }
    }

    /// Node by id (1 or 2).
    pub fn node(&mut self, id: u8) -> &mut ReplNode {
        if id == 1 {
            &mut self.a
        } else {
            &mut self.b
        }
    }
}

/// One `repl status NAME --json` object, with accessors for its flat keys.
#[derive(Debug, Clone)]
pub struct Status(pub String);

impl Status {
    /// The raw token after `"key":` (a number, `true`/`false`/`null`, or a JSON string
    /// with its quotes). Keys are matched with their opening quote, so `disk` does not
    /// match `peer_disk`.
    pub fn raw(&self, key: &str) -> Option<&str> {
        let pat = format!("\"{key}\":");
        let start = self.0.find(&pat)? + pat.len();
        let rest = &self.0[start..];
        if let Some(s) = rest.strip_prefix('"') {
            let mut escaped = false;
            for (i, c) in s.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => return Some(&rest[..i + 2]),
                    _ => escaped = false,
                }
            }
            None
        } else {
            let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
            Some(rest[..end].trim())
        }
    }

    /// A string value (without quotes; escapes left as they are), `None` for null or
    /// a missing key.
    pub fn str(&self, key: &str) -> Option<&str> {
        let r = self.raw(key)?;
        r.strip_prefix('"').and_then(|r| r.strip_suffix('"'))
    }

    /// A number.
    pub fn num(&self, key: &str) -> u64 {
        self.raw(key)
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no number {key:?} in {}", self.0))
    }

    /// A boolean.
    pub fn flag(&self, key: &str) -> bool {
        self.raw(key) == Some("true")
    }

    /// `role`.
    pub fn role(&self) -> &str {
        self.str("role").unwrap_or("?")
    }

    /// `connection`.
    pub fn conn(&self) -> &str {
        self.str("connection").unwrap_or("?")
    }

    /// `disk`.
    pub fn disk(&self) -> &str {
        self.str("disk").unwrap_or("?")
    }

    /// Connected, UpToDate on both sides, nothing out of sync, no resync running.
    pub fn in_sync(&self) -> bool {
        self.conn() == "Connected"
            && self.disk() == "UpToDate"
            && self.str("peer_disk") == Some("UpToDate")
            && self.raw("out_of_sync_bytes") == Some("0")
            && self.raw("sync") == Some("null")
    }

    /// Whether the configured handler ran (as listed in `handlers`) with this exit code.
    pub fn handler_ran(&self, handler: &str, exit_code: i32) -> bool {
        self.handler_runs(handler, exit_code) > 0
    }

    /// How often the configured handler ran with this exit code (of the last 16 runs
    /// the status lists).
    pub fn handler_runs(&self, handler: &str, exit_code: i32) -> usize {
        self.0
            .matches(&format!(
                "{{\"handler\":\"{handler}\",\"exit_code\":{exit_code},\"configured\":true"
            ))
            .count()
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A small seeded generator (SplitMix64): reproducible runs from a printed seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// From `$TWINSAN_E2E_SEED` if set, else from the clock; prints the seed with `what`.
    pub fn from_env(what: &str) -> Self {
        let seed = std::env::var("TWINSAN_E2E_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                t.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        eprintln!("{what}: seed {seed} (rerun with TWINSAN_E2E_SEED={seed})");
        Rng(seed)
    }

    /// From a fixed seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// What a block holds, decoded from its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// All zeros (never written).
    Zero,
    /// Written by write `tag` (`seq`) to this LBA.
    Written {
        /// Which writer or phase (e.g. the trial number).
        tag: u32,
        /// Sequence number within the tag.
        seq: u32,
    },
    /// Anything else: a pattern for another LBA, a torn or corrupt block.
    Garbage,
}

const MAGIC: &[u8; 4] = b"TWFT";

fn filler(tag: u32, seq: u32, lba: u64, i: usize) -> u8 {
    let x = u64::from(tag)
        .wrapping_mul(0x9E37_79B9)
        .wrapping_add(u64::from(seq).wrapping_mul(0x85EB_CA6B))
        .wrapping_add(lba.wrapping_mul(0xC2B2_AE35))
        .wrapping_add(i as u64 * 31);
    (x ^ (x >> 13) ^ (x >> 29)) as u8
}

/// Fill one block (`buf` is one logical block) with the pattern of write
/// (`tag`, `seq`) at `lba`: a header naming the write and the LBA, then filler derived
/// from all three, so that any mix-up is detected.
pub fn fill_block(buf: &mut [u8], tag: u32, seq: u32, lba: u64) {
    buf[0..4].copy_from_slice(MAGIC);
    buf[4..8].copy_from_slice(&tag.to_le_bytes());
    buf[8..12].copy_from_slice(&seq.to_le_bytes());
    buf[12..20].copy_from_slice(&lba.to_le_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(20) {
        *b = filler(tag, seq, lba, i);
    }
}

/// The pattern of `blocks` blocks of `block_size` starting at `lba`.
pub fn pattern(tag: u32, seq: u32, lba: u64, blocks: u32, block_size: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks as usize * block_size];
    for (i, b) in v.chunks_mut(block_size).enumerate() {
        fill_block(b, tag, seq, lba + i as u64);
    }
    v
}

/// Decode one block read at `lba`.
pub fn decode_block(buf: &[u8], lba: u64) -> Block {
    if buf.iter().all(|&b| b == 0) {
        return Block::Zero;
    }
    if buf.len() < 20 || &buf[0..4] != MAGIC {
        return Block::Garbage;
    }
    let tag = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let seq = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let at = u64::from_le_bytes(buf[12..20].try_into().expect("8 bytes"));
    if at != lba
        || buf
            .iter()
            .enumerate()
            .skip(20)
            .any(|(i, &b)| b != filler(tag, seq, lba, i))
    {
        return Block::Garbage;
    }
    Block::Written { tag, seq }
}

/// SCSI opcodes the tests use.
pub mod scsi {
    /// WRITE(16).
    pub const WRITE16: u8 = 0x8A;
    /// READ(16).
    pub const READ16: u8 = 0x88;
}

/// READ CAPACITY(16): (number of blocks, block size).
pub fn capacity(s: &mut RawSession) -> (u64, usize) {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9E;
    cdb[1] = 0x10;
    cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
    let (st, sense, data, _) = s.command(&cdb, 32, true, &[]).expect("read capacity");
    assert_eq!(st, 0, "READ CAPACITY(16): sense {sense:02x?}");
    let last = u64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
    let bs = u32::from_be_bytes(data[8..12].try_into().expect("4 bytes"));
    (last + 1, bs as usize)
}

/// WRITE(16) of `data` at `lba`; the SCSI status (0 = GOOD), or `None` when the
/// connection broke before the status arrived.
pub fn write_blocks(s: &mut RawSession, lba: u64, data: &[u8], block_size: usize) -> Option<u8> {
    let blocks = u32::try_from(data.len() / block_size).expect("blocks");
    s.command(
        &rw16(scsi::WRITE16, lba, blocks),
        data.len() as u32,
        false,
        data,
    )
    .ok()
    .map(|r| r.0)
}

/// READ(16) of `blocks` blocks at `lba` (in commands of at most 256 KiB); panics on
/// anything but GOOD.
pub fn read_blocks(s: &mut RawSession, lba: u64, blocks: u64, block_size: usize) -> Vec<u8> {
    let per = (256 * 1024 / block_size) as u64;
    let mut out = Vec::with_capacity(blocks as usize * block_size);
    let mut at = lba;
    while at < lba + blocks {
        let n = per.min(lba + blocks - at);
        let len = n as usize * block_size;
        let (st, sense, data, _) = s
            .command(&rw16(scsi::READ16, at, n as u32), len as u32, true, &[])
            .unwrap_or_else(|p| panic!("READ(16) at {at}: connection lost ({:02x?})", &p.bhs[..4]));
        assert_eq!(st, 0, "READ(16) at {at}: sense {sense:02x?}");
        assert_eq!(data.len(), len, "READ(16) at {at}: short data");
        out.extend_from_slice(&data);
        at += n;
    }
    out
}

/// SYNCHRONIZE CACHE(10); panics on anything but GOOD.
pub fn sync_cache(s: &mut RawSession) {
    let (st, sense, ..) = s
        .command(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, false, &[])
        .expect("synchronize cache");
    assert_eq!(st, 0, "SYNCHRONIZE CACHE: sense {sense:02x?}");
}

/// Compare the first `len` bytes of two files in 1 MiB pieces; the byte offsets of the
/// first differing pieces (at most `max`).
pub fn diff_files(a: &Path, b: &Path, len: u64, max: usize) -> Vec<u64> {
    let piece = 1 << 20;
    let mut diffs = Vec::new();
    let mut off = 0u64;
    while off < len && diffs.len() < max {
        let n = piece.min((len - off) as usize);
        let (x, y) = (read_file_at(a, off, n), read_file_at(b, off, n));
        if x != y {
            let first = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(0);
            diffs.push(off + first as u64);
        }
        off += n as u64;
    }
    diffs
}
