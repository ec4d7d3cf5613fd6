//! The two-head demo appliance (`twinsan demo up`) as a test fixture, a resilient writer
//! that keeps writing through the portal IP across failovers, and the check that every
//! acknowledged write is readable afterwards.
//!
//! - [`Demo`]: one `twinsan demo up` under a unique name (namespaces `NAME-sw`, `-a`,
//!   `-b`, `-w`, `-c`) and a directory under `/dev/shm`; `demo down` runs when it is
//!   dropped, also when a test panics. Status through `demo status --json`, signals to
//!   the heads, `demo revive`, `twinsan ha ...`, bounded waits that print the demo's
//!   status and log tails when they time out, partitions with nft in the switch
//!   namespace.
//! - [`Writer`]: a thread in the client namespace writing 4 KiB blocks (8 × 512 B,
//!   WRITE(16)) stamped with (tag, seq, LBA) to the portal IP; any failure (panic of the
//!   raw initiator, no response, a status other than GOOD) drops the session and logs in
//!   again; every write is recorded with whether and when it was acknowledged.
//! - [`verify`]: reads the region back through the portal IP and checks that for every
//!   block the content is the last acknowledged write or a later unacknowledged one.
//!
//! Owns: the demo it started (processes, namespaces, files) and the writer's thread and
//! sessions. Uses only the demo's own namespaces and addresses.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::raw::{rw16, sense_key_asc, RawSession};
use crate::repl::{capacity, decode_block, pattern, read_blocks, scsi, Block};
use crate::twinsan_bin;

/// Target IQN of the demo.
pub const IQN: &str = "iqn.2026-11.org.twinsan:demo";
/// The portal IP with its prefix, as configured on the heads' eth0.
pub const VIP_CIDR: &str = "10.231.0.50/24";
/// Logical block size of the demo LUN.
pub const BLOCK: usize = 512;
/// Blocks per write of the [`Writer`] (4 KiB).
pub const BLOCKS_PER_WRITE: u32 = 8;

/// The portal (VIP) address.
pub fn vip() -> SocketAddr {
    "10.231.0.50:3260".parse().expect("vip")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// How to build a demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Size of the replicated volume (`--size`).
    pub size: String,
    /// Run a witness (without: `--no-witness`).
    pub witness: bool,
    /// Fence even when the witness settled a partition (without:
    /// `--no-fence-with-witness`).
    pub fence_with_witness: bool,
    /// `--dead-time-ms`.
    pub dead_time_ms: Option<u64>,
    /// Name to use (default: a unique one).
    pub name: Option<String>,
    /// Directory (default: `/dev/shm/twinsan-e2e-NAME`).
    pub dir: Option<PathBuf>,
    /// The twinsan binary (default: [`twinsan_bin`]).
    pub bin: Option<PathBuf>,
    /// `--resources FILE`: `[[cluster.resource]]` entries for both heads.
    pub resources: Option<PathBuf>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            size: "64M".into(),
            witness: true,
            fence_with_witness: true,
            dead_time_ms: None,
            name: None,
            dir: None,
            bin: None,
            resources: None,
        }
    }
}

/// A running demo appliance; `demo down` when dropped.
pub struct Demo {
    /// Name prefix of its namespaces.
    pub name: String,
    /// Its directory (configs, disks, logs, control sockets).
    pub dir: PathBuf,
    bin: PathBuf,
}

/// A unique demo name: "h" + pid % 10000 + a counter (at most 10 characters).
pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("h{}{}", std::process::id() % 10000, n % 100_000)
}

/// Run a command with a time limit, without panicking: the output, or why not.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Err(_) => {
            // SAFETY: kill(2) of our own child (not yet reaped: the waiting thread
            // still holds it), no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            Err(format!("{cmd:?} did not finish within {limit:?} (killed)"))
        }
    }
}

/// Printable form of a command's result.
pub fn out_text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// Remove ANSI colour sequences (the heads log with colours).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            it.next();
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One head's object in a `demo status --json` value (`Null` if absent).
pub fn head<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["heads"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == name))
        .unwrap_or(&Value::Null)
}

/// A head's service state ("active", "passive", ...; "" when unknown).
pub fn service<'a>(status: &'a Value, name: &str) -> &'a str {
    head(status, name)["service"].as_str().unwrap_or("")
}

/// Whether the head's process runs.
pub fn running(status: &Value, name: &str) -> bool {
    head(status, name)["running"].as_bool() == Some(true)
}

/// Whether the head holds the portal IP (its HA status says so).
pub fn vip_held(status: &Value, name: &str) -> bool {
    head(status, name)["ha"]["vips"]
        .as_array()
        .is_some_and(|v| v.iter().any(|x| x[1].as_bool() == Some(true)))
}

/// A field of the head's volume status ("role", "disk", "connection"; "" if unknown).
pub fn vol<'a>(status: &'a Value, name: &str, key: &str) -> &'a str {
    head(status, name)["volume"][key].as_str().unwrap_or("")
}

/// The head's failcount (`None` if unknown).
pub fn failcount(status: &Value, name: &str) -> Option<u64> {
    head(status, name)["ha"]["failcount"].as_u64()
}

/// The head's `waiting` text ("" if none).
pub fn waiting<'a>(status: &'a Value, name: &str) -> &'a str {
    head(status, name)["ha"]["waiting"].as_str().unwrap_or("")
}

/// Whether the client reaches the portal IP.
pub fn portal_reachable(status: &Value) -> bool {
    status["portal_reachable"].as_bool() == Some(true)
}

/// The head is the only active one: running, service active, portal IP held, volume
/// Primary.
pub fn is_active(status: &Value, name: &str) -> bool {
    running(status, name)
        && service(status, name) == "active"
        && vip_held(status, name)
        && vol(status, name, "role") == "Primary"
}

/// The head is a healthy passive: running, service passive, no portal IP, volume
/// Secondary UpToDate Connected.
pub fn is_healthy_passive(status: &Value, name: &str) -> bool {
    let ha = &head(status, name)["ha"];
    running(status, name)
        && service(status, name) == "passive"
        && !vip_held(status, name)
        && vol(status, name, "role") == "Secondary"
        && vol(status, name, "disk") == "UpToDate"
        && vol(status, name, "connection") == "Connected"
        // A restarted head can take over only once it has seen its peer (wait-for-all).
        && ha["quorum"].as_bool() == Some(true)
        && ha["peer_alive"].as_bool() == Some(true)
}

/// The other head.
pub fn other(name: &str) -> &'static str {
    if name == "a" {
        "b"
    } else {
        "a"
    }
}

impl Demo {
    /// Build a demo, or `None` (printing SKIP) when not root. Panics (after removing
    /// what it built) when `demo up` fails.
    pub fn up(opts: DemoOptions) -> Option<Demo> {
        if !is_root() {
            assert!(
                !crate::tools_required(),
                "the HA tests need root (TWINSAN_E2E_REQUIRED=1)"
            );
            eprintln!("SKIP: the demo appliance needs root (network namespaces)");
            return None;
        }
        let name = opts.name.clone().unwrap_or_else(unique_name);
        let dir = opts
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/dev/shm/twinsan-e2e-{name}")));
        let demo = Demo {
            name,
            dir,
            bin: opts.bin.clone().unwrap_or_else(twinsan_bin),
        };
        // Leftovers of an earlier run with the same name (a crashed test process).
        demo.down();
        let mut args: Vec<String> = vec![
            "demo".into(),
            "up".into(),
            "--name".into(),
            demo.name.clone(),
            "--dir".into(),
            demo.dir.display().to_string(),
            "--size".into(),
            opts.size.clone(),
        ];
        if !opts.witness {
            args.push("--no-witness".into());
        }
        if !opts.fence_with_witness {
            args.push("--no-fence-with-witness".into());
        }
        if let Some(r) = &opts.resources {
            args.push("--resources".into());
            args.push(r.display().to_string());
        }
        if let Some(d) = opts.dead_time_ms {
            args.push("--dead-time-ms".into());
            args.push(d.to_string());
        }
        let t0 = Instant::now();
        let out = run_bounded(
            Command::new(&demo.bin).args(&args),
            Duration::from_secs(120),
        );
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("demo up failed: {}\n{}", out_text(&o), demo.logs_text(40)),
            Err(e) => panic!("demo up: {e}\n{}", demo.logs_text(40)),
        }
        // `demo up` returns once a head is active and both disks are UpToDate; the
        // replication link may still be connecting. Tests start from the steady state:
        // one head active, the other passive with its volume Connected.
        demo.wait_until(
            "one head active, the other passive and connected",
            Duration::from_secs(30),
            |s| {
                (is_active(s, "a") && is_healthy_passive(s, "b"))
                    || (is_active(s, "b") && is_healthy_passive(s, "a"))
            },
        );
        eprintln!(
            "demo {} up in {} ms ({})",
            demo.name,
            t0.elapsed().as_millis(),
            demo.dir.display()
        );
        Some(demo)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("TWINSAN_LOG", "warn");
        c
    }

    /// `demo down` (idempotent; never panics). Returns its output text.
    pub fn down(&self) -> String {
        let dir = self.dir.display().to_string();
        match run_bounded(
            self.cmd()
                .args(["demo", "down", "--name", &self.name, "--dir", &dir]),
            Duration::from_secs(60),
        ) {
            Ok(o) => out_text(&o),
            Err(e) => e,
        }
    }

    /// Namespace of head or role `x` ("a", "b", "w", "c", "sw").
    pub fn ns(&self, x: &str) -> String {
        format!("{}-{x}", self.name)
    }

    /// The client namespace.
    pub fn client_ns(&self) -> String {
        self.ns("c")
    }

    /// Where the writer and verifier connect: the portal IP from the client namespace.
    pub fn portal(&self) -> Portal {
        Portal {
            ns: self.client_ns(),
            addr: vip(),
            iqn: IQN.into(),
        }
    }

    /// `demo status --json`, or why not.
    pub fn try_status(&self) -> Result<Value, String> {
        let dir = self.dir.display().to_string();
        let o = run_bounded(
            self.cmd().args([
                "demo", "status", "--name", &self.name, "--dir", &dir, "--json",
            ]),
            Duration::from_secs(45),
        )?;
        if !o.status.success() {
            return Err(format!("demo status: {}", out_text(&o)));
        }
        serde_json::from_slice(&o.stdout).map_err(|e| {
            format!(
                "demo status: bad JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    }

    /// `demo status --json`; panics when it fails.
    pub fn status(&self) -> Value {
        self.try_status().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `demo status` as text (for messages; never panics).
    pub fn status_text(&self) -> String {
        let dir = self.dir.display().to_string();
        match run_bounded(
            self.cmd()
                .args(["demo", "status", "--name", &self.name, "--dir", &dir]),
            Duration::from_secs(45),
        ) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e,
        }
    }

    /// The head whose service is active and that runs, if any.
    pub fn active_head(&self) -> Option<String> {
        let s = self.status();
        ["a", "b"]
            .into_iter()
            .find(|h| running(&s, h) && service(&s, h) == "active")
            .map(str::to_owned)
    }

    /// PID of head `h` (from the demo's state file, which `revive` updates).
    pub fn pid(&self, h: &str) -> u32 {
        let text = std::fs::read_to_string(self.dir.join("demo.json"))
            .unwrap_or_else(|e| panic!("{}/demo.json: {e}", self.dir.display()));
        let v: Value = serde_json::from_str(&text).expect("demo.json");
        v["heads"]
            .as_array()
            .and_then(|hs| hs.iter().find(|x| x["name"] == h))
            .and_then(|x| x["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or_else(|| panic!("no pid of head {h} in demo.json"))
    }

    /// Whether head `h`'s process exists.
    pub fn alive(&self, h: &str) -> bool {
        let pid = self.pid(h);
        // SAFETY: signal 0 only checks that the process exists.
        pid > 0 && unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
    }

    /// Wait (bounded) until head `h`'s process is gone (killed and reaped); panics with
    /// diagnostics on timeout.
    pub fn wait_dead(&self, h: &str, timeout: Duration) {
        let t0 = Instant::now();
        while self.alive(h) {
            assert!(
                t0.elapsed() < timeout,
                "head {h} (pid {}) still exists after {timeout:?}\n{}",
                self.pid(h),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `signal` to head `h`'s process; returns whether it was delivered.
    pub fn kill(&self, h: &str, signal: i32) -> bool {
        let pid = self.pid(h);
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
    }

    /// `demo revive h`; panics when it fails.
    pub fn revive(&self, h: &str) {
        let dir = self.dir.display().to_string();
        let o = run_bounded(
            self.cmd()
                .args(["demo", "revive", h, "--name", &self.name, "--dir", &dir]),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            o.status.success(),
            "demo revive {h}: {}\n{}",
            out_text(&o),
            self.diagnostics()
        );
    }

    /// Control socket of head `h`.
    pub fn control(&self, h: &str) -> PathBuf {
        self.dir.join(format!("{h}.sock"))
    }

    /// `twinsan ha ARGS --control DIR/h.sock`.
    pub fn ha(&self, h: &str, args: &[&str]) -> Output {
        let ctl = self.control(h).display().to_string();
        run_bounded(
            self.cmd().arg("ha").args(args).args(["--control", &ctl]),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Demo::ha`], asserting success.
    pub fn ha_ok(&self, h: &str, args: &[&str]) -> Output {
        let o = self.ha(h, args);
        assert!(
            o.status.success(),
            "twinsan ha {} on {h}: {}\n{}",
            args.join(" "),
            out_text(&o),
            self.diagnostics()
        );
        o
    }

    /// Poll `demo status` every 100 ms until `pred` holds (returns that status); panics
    /// after `timeout` with the status and the log tails.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let t0 = Instant::now();
        let mut last = Value::Null;
        let mut last_err = String::new();
        loop {
            match self.try_status() {
                Ok(s) => {
                    if pred(&s) {
                        return s;
                    }
                    last = s;
                }
                Err(e) => last_err = e,
            }
            if t0.elapsed() > timeout {
                panic!(
                    "timed out after {:?} waiting until {what}\nlast status JSON: {}\n\
                     last status error: {last_err}\n{}",
                    timeout,
                    compact_status(&last),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like [`Demo::wait_until`], and asserts that `pred` keeps holding for `hold`.
    pub fn assert_for(&self, what: &str, hold: Duration, mut pred: impl FnMut(&Value) -> bool) {
        let t0 = Instant::now();
        while t0.elapsed() < hold {
            let s = self.status();
            assert!(
                pred(&s),
                "{what} stopped holding after {:?}\nstatus JSON: {}\n{}",
                t0.elapsed(),
                compact_status(&s),
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last `n` lines of a log: head "a" or "b", or "w" (the witness).
    pub fn log_tail(&self, h: &str, n: usize) -> String {
        let s = std::fs::read_to_string(self.dir.join(format!("{h}.log"))).unwrap_or_default();
        let s = strip_ansi(&s);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn logs_text(&self, n: usize) -> String {
        let mut out = String::new();
        for h in ["a", "b", "w"] {
            out += &format!("----- {h}.log (tail) -----\n{}\n", self.log_tail(h, n));
        }
        out
    }

    /// `demo status` (text) and the tails of the logs.
    pub fn diagnostics(&self) -> String {
        format!(
            "----- demo status -----\n{}\n{}",
            self.status_text(),
            self.logs_text(60)
        )
    }

    /// Apply an nft script in the switch namespace (`nft -f -`); panics on failure.
    pub fn nft(&self, script: &str) {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns("sw"), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write nft script");
        let o = child.wait_with_output().expect("nft");
        assert!(o.status.success(), "nft -f - <<{script}\n{}", out_text(&o));
    }

    /// Drop every frame between the switch ports of each pair (both directions) with a
    /// bridge-family table `part` in the switch namespace. Ports: a0, a1, b0, b1, w0, c0.
    pub fn partition(&self, pairs: &[(&str, &str)]) {
        let mut rules = String::new();
        for (x, y) in pairs {
            rules += &format!("    iifname \"{x}\" oifname \"{y}\" drop\n");
            rules += &format!("    iifname \"{y}\" oifname \"{x}\" drop\n");
        }
        self.nft(&format!(
            "table bridge part {{\n  chain filt {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        ));
    }

    /// Remove the partition table.
    pub fn heal(&self) {
        self.nft("delete table bridge part\n");
    }

    /// Run `ip ARGS` (e.g. `-n NS addr del ...`); panics on failure.
    pub fn ip(&self, args: &[&str]) {
        let o = run_bounded(Command::new("ip").args(args), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            o.status.success(),
            "ip {}: {}",
            args.join(" "),
            out_text(&o)
        );
    }

    /// Compare `len` bytes at `offset` of both heads' backing files (the data area starts
    /// at offset 0); the byte offsets of the first differences (at most 8).
    pub fn disk_diff(&self, offset: u64, len: usize) -> Vec<u64> {
        let a = crate::repl::read_file_at(&self.dir.join("disk-a.img"), offset, len);
        let b = crate::repl::read_file_at(&self.dir.join("disk-b.img"), offset, len);
        a.chunks(BLOCK)
            .zip(b.chunks(BLOCK))
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, _)| offset + (i * BLOCK) as u64)
            .take(8)
            .collect()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- demo {} at the failure -----", self.name);
            eprintln!("{}", self.diagnostics());
            // Keep the whole logs (the tails may be one repeated line).
            let keep = std::env::temp_dir().join(format!("twinsan-e2e-ha-logs-{}", self.name));
            if std::fs::create_dir_all(&keep).is_ok() {
                for f in [
                    "a.log",
                    "b.log",
                    "w.log",
                    "twinsan-a.toml",
                    "twinsan-b.toml",
                ] {
                    let _ = std::fs::copy(self.dir.join(f), keep.join(f));
                }
                eprintln!("logs kept in {}", keep.display());
            }
        }
        let out = self.down();
        if std::thread::panicking() {
            eprintln!("demo down: {out}");
        }
    }
}

/// A status value without the long event lists (for messages).
pub fn compact_status(s: &Value) -> String {
    let mut s = s.clone();
    if let Some(hs) = s["heads"].as_array_mut() {
        for h in hs {
            if let Some(ha) = h["ha"].as_object_mut() {
                if let Some(ev) = ha.get_mut("events").and_then(Value::as_array_mut) {
                    let n = ev.len();
                    ev.drain(..n.saturating_sub(6));
                }
            }
        }
    }
    s.to_string()
}

// ---------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------

/// Where to connect: an address reached from inside a namespace.
#[derive(Debug, Clone)]
pub struct Portal {
    /// Network namespace of the initiator.
    pub ns: String,
    /// Portal address.
    pub addr: SocketAddr,
    /// Target IQN.
    pub iqn: String,
}

/// Move this thread into network namespace `ns` (only this thread; sockets it creates
/// afterwards live there).
pub fn enter_netns(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    // SAFETY: setns with a valid namespace fd; it changes only the calling thread's
    // network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// The raw initiator panics on I/O errors; the writer and the verifier catch those
/// panics. Keep the default hook from printing them (threads named `ha-*`), once per
/// process; other threads' panics print as usual.
fn quiet_panics_in_io_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().map(str::to_owned);
            if !name.is_some_and(|n| n.starts_with("ha-")) {
                prev(info);
            }
        }));
    });
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".into())
}

/// One login attempt from the current thread's namespace: a TCP probe bounded by
/// `probe` (so that an unreachable portal costs that, not the raw initiator's 10 s
/// connect timeout), then the login.
fn try_login(
    p: &Portal,
    initiator: &str,
    probe: Duration,
    read_timeout: Duration,
) -> Result<RawSession, String> {
    TcpStream::connect_timeout(&p.addr, probe).map_err(|e| format!("connect {}: {e}", p.addr))?;
    let s = catch_unwind(AssertUnwindSafe(|| {
        RawSession::login(p.addr, initiator, &p.iqn)
    }))
    .map_err(|e| format!("login: {}", panic_text(&*e)))?;
    s.set_timeout(read_timeout);
    Ok(s)
}

/// Where and how the writer writes.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// First LBA of the region.
    pub base_lba: u64,
    /// Number of 4 KiB slots in the region: write `seq` goes to slot `seq % slots`.
    pub slots: u64,
    /// Tag stamped into every block (tells writers apart).
    pub tag: u32,
    /// Read timeout of a session (a command without an answer within it fails).
    pub read_timeout: Duration,
    /// Bound of the TCP probe before each login attempt.
    pub connect_timeout: Duration,
    /// Pause between failed login attempts.
    pub retry_pause: Duration,
    /// Give up when no login succeeded for this long.
    pub give_up: Duration,
    /// Initiator name.
    pub initiator: String,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            base_lba: 0,
            slots: 256,
            tag: 0x4841_0001,
            read_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(100),
            retry_pause: Duration::from_millis(20),
            give_up: Duration::from_secs(45),
            initiator: "iqn.2026-11.org.twinsan.test:ha-writer".into(),
        }
    }
}

/// One write of the writer.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    /// Sequence number (0, 1, ...).
    pub seq: u64,
    /// First LBA.
    pub lba: u64,
    /// When it was sent.
    pub sent: Instant,
    /// When its outcome was known (acknowledged, failed, timed out).
    pub ended: Instant,
    /// When it was acknowledged with GOOD (`None`: not acknowledged).
    pub acked: Option<Instant>,
    /// SCSI status when it was not GOOD.
    pub status: Option<u8>,
    /// Sense key, ASC, ASCQ when the status carried sense.
    pub sense: Option<(u8, u8, u8)>,
    /// What went wrong (no response, panic...).
    pub error: Option<String>,
}

/// Everything the writer did.
#[derive(Debug, Clone)]
pub struct WriterLog {
    /// Its options.
    pub opts: WriterOptions,
    /// Every write, in order.
    pub records: Vec<WriteRecord>,
    /// Successful logins (the first one included).
    pub logins: u32,
    /// Failed login attempts, with the last reason.
    pub login_failures: u32,
    /// The last login failure.
    pub last_login_error: Option<String>,
    /// Why the writer stopped early, if it did.
    pub gave_up: Option<String>,
}

/// A background writer through the portal IP; see the module documentation.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    handle: Option<JoinHandle<WriterLog>>,
}

impl Writer {
    /// Start writing (the thread logs in from inside `portal.ns`).
    pub fn start(portal: Portal, opts: WriterOptions) -> Writer {
        quiet_panics_in_io_threads();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let (s2, a2) = (stop.clone(), acks.clone());
        let handle = std::thread::Builder::new()
            .name("ha-writer".into())
            .spawn(move || writer_loop(&portal, opts, &s2, &a2))
            .expect("spawn writer");
        Writer {
            stop,
            acks,
            handle: Some(handle),
        }
    }

    /// Acknowledged writes so far.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Whether the thread ended (it gave up).
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Wait (bounded) until the writer has `n` acknowledged writes in total; `false` on
    /// timeout or when the writer gave up.
    pub fn wait_acks(&self, n: u64, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while self.acks() < n {
            if t0.elapsed() > timeout || self.finished() {
                return self.acks() >= n;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stop and return the log.
    pub fn stop(mut self) -> WriterLog {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("writer handle");
        h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The LBA of write `seq`.
pub fn slot_lba(opts: &WriterOptions, seq: u64) -> u64 {
    opts.base_lba + (seq % opts.slots) * u64::from(BLOCKS_PER_WRITE)
}

fn writer_loop(p: &Portal, opts: WriterOptions, stop: &AtomicBool, acks: &AtomicU64) -> WriterLog {
    enter_netns(&p.ns);
    let mut log = WriterLog {
        opts: opts.clone(),
        records: Vec::new(),
        logins: 0,
        login_failures: 0,
        last_login_error: None,
        gave_up: None,
    };
    let mut sess: Option<RawSession> = None;
    let mut last_login_ok = Instant::now();
    let mut seq = 0u64;
    let bytes = BLOCKS_PER_WRITE * BLOCK as u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(s) = sess.as_mut() else {
            match try_login(p, &opts.initiator, opts.connect_timeout, opts.read_timeout) {
                Ok(s) => {
                    sess = Some(s);
                    log.logins += 1;
                    last_login_ok = Instant::now();
                }
                Err(e) => {
                    log.login_failures += 1;
                    log.last_login_error = Some(e.clone());
                    if last_login_ok.elapsed() > opts.give_up {
                        log.gave_up =
                            Some(format!("no login for {:?}; last error: {e}", opts.give_up));
                        break;
                    }
                    std::thread::sleep(opts.retry_pause);
                }
            }
            continue;
        };
        let lba = slot_lba(&opts, seq);
        let data = pattern(opts.tag, seq as u32, lba, BLOCKS_PER_WRITE, BLOCK);
        let cdb = rw16(scsi::WRITE16, lba, BLOCKS_PER_WRITE);
        let sent = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| s.command(&cdb, bytes, false, &data)));
        let mut rec = WriteRecord {
            seq,
            lba,
            sent,
            ended: Instant::now(),
            acked: None,
            status: None,
            sense: None,
            error: None,
        };
        match r {
            Ok(Ok((0, ..))) => {
                rec.acked = Some(rec.ended);
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok((st, sense, ..))) => {
                rec.status = Some(st);
                rec.sense = sense_key_asc(&sense);
            }
            Ok(Err(pdu)) if pdu.bhs == [0; 48] => {
                // recv() gives up on EOF, reset or the read timeout alike; the time tells.
                let waited = rec.ended.duration_since(sent);
                rec.error = Some(if waited + Duration::from_millis(50) >= opts.read_timeout {
                    format!(
                        "no response within the read timeout ({:?})",
                        opts.read_timeout
                    )
                } else {
                    "connection closed or reset".into()
                });
            }
            Ok(Err(pdu)) => {
                rec.error = Some(format!("unexpected PDU opcode {:#04x}", pdu.opcode()));
            }
            Err(e) => rec.error = Some(format!("panic: {}", panic_text(&*e))),
        }
        if rec.acked.is_none() {
            sess = None;
            last_login_ok = Instant::now();
        }
        log.records.push(rec);
        seq += 1;
    }
    log
}

impl WriterLog {
    /// Acknowledgement times, in order.
    pub fn ack_times(&self) -> Vec<Instant> {
        self.records.iter().filter_map(|r| r.acked).collect()
    }

    /// Number of acknowledged writes.
    pub fn acked(&self) -> usize {
        self.records.iter().filter(|r| r.acked.is_some()).count()
    }

    /// Writes that failed (not acknowledged).
    pub fn failed(&self) -> impl Iterator<Item = &WriteRecord> {
        self.records.iter().filter(|r| r.acked.is_none())
    }

    /// Acknowledgements at or after `t`.
    pub fn acked_after(&self, t: Instant) -> usize {
        self.ack_times().iter().filter(|&&a| a >= t).count()
    }

    /// Time from `t` to the first acknowledgement at or after it.
    pub fn first_ack_after(&self, t: Instant) -> Option<Duration> {
        self.ack_times()
            .into_iter()
            .find(|&a| a >= t)
            .map(|a| a.duration_since(t))
    }

    /// Time from `t` to the first acknowledgement after the first failure that ended at
    /// or after `t`: the outage a fault at `t` caused to the writer (a write in flight at
    /// the fault may still be acknowledged; the first failure shows the fault reached
    /// the writer). `None` when no write failed after `t` or none succeeded after that.
    pub fn resumed_after(&self, t: Instant) -> Option<Duration> {
        let fail = self
            .records
            .iter()
            .find(|r| r.acked.is_none() && r.ended >= t)?;
        self.records
            .iter()
            .skip_while(|r| r.seq <= fail.seq)
            .find_map(|r| r.acked)
            .map(|a| a.duration_since(t))
    }

    /// The largest gap between consecutive acknowledgements from the last one before
    /// `t` on (the gap spanning `t` included).
    pub fn max_gap_after(&self, t: Instant) -> Option<Duration> {
        self.max_gap_between(t, None)
    }

    /// The largest gap between consecutive acknowledgements (x, y) with y at or after
    /// `from` and x before `to` (when given).
    pub fn max_gap_between(&self, from: Instant, to: Option<Instant>) -> Option<Duration> {
        self.ack_times()
            .windows(2)
            .filter(|w| w[1] >= from && to.is_none_or(|t| w[0] < t))
            .map(|w| w[1].duration_since(w[0]))
            .max()
    }

    /// The failed writes around `t` (at most `max`), one per line, with their send and
    /// end times relative to `t` in milliseconds.
    pub fn failures_around(&self, t: Instant, max: usize) -> String {
        let ms = |x: Instant| {
            if x >= t {
                x.duration_since(t).as_secs_f64() * 1000.0
            } else {
                -(t.duration_since(x).as_secs_f64() * 1000.0)
            }
        };
        self.failed()
            .take(max)
            .map(|r| {
                format!(
                    "  seq {} LBA {}: sent {:+.0} ms, failed {:+.0} ms: {}",
                    r.seq,
                    r.lba,
                    ms(r.sent),
                    ms(r.ended),
                    match (&r.sense, &r.status, &r.error) {
                        (Some((k, a, q)), _, _) => format!("sense {k:02x}/{a:02x}/{q:02x}"),
                        (None, Some(st), _) => format!("status {st:02x}"),
                        (_, _, Some(e)) => e.clone(),
                        _ => "?".into(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A one-line summary: writes, acks, failures by kind, logins.
    pub fn summary(&self) -> String {
        let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
        for r in self.failed() {
            let k = match (&r.status, &r.sense, &r.error) {
                (_, Some((k, asc, ascq)), _) => {
                    format!("sense {k:02x}/{asc:02x}/{ascq:02x}")
                }
                (Some(st), None, _) => format!("status {st:02x}"),
                (_, _, Some(e)) => e.chars().take(60).collect(),
                _ => "?".into(),
            };
            *kinds.entry(k).or_default() += 1;
        }
        format!(
            "{} writes, {} acknowledged, failures {:?}, {} logins, {} failed login attempts{}{}",
            self.records.len(),
            self.acked(),
            kinds,
            self.logins,
            self.login_failures,
            self.last_login_error
                .as_ref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
            self.gave_up
                .as_ref()
                .map(|g| format!("; GAVE UP: {g}"))
                .unwrap_or_default()
        )
    }
}

// ---------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Slots (4 KiB) checked.
    pub slots: usize,
    /// Slots whose last write was acknowledged and holds it.
    pub acked_current: usize,
    /// Slots holding an unacknowledged write newer than their last acknowledged one.
    pub unacked_newer: usize,
    /// Slots that were never acknowledged and read as zeros.
    pub never_acked_zero: usize,
}

/// Check the region's content `data` (read from `opts.base_lba`, `slots * 8` blocks)
/// against the writer's log: for each slot, every block holds the last acknowledged
/// write of the slot, or a later unacknowledged one; a slot without an acknowledged write
/// holds zeros or one of its unacknowledged writes. Returns the violations (at most 20)
/// on failure.
pub fn check(log: &WriterLog, data: &[u8]) -> Result<VerifyReport, String> {
    let o = &log.opts;
    let per = BLOCKS_PER_WRITE as usize * BLOCK;
    let mut last_acked: Vec<Option<u64>> = vec![None; o.slots as usize];
    let mut unacked: Vec<Vec<u64>> = vec![Vec::new(); o.slots as usize];
    let mut written = vec![false; o.slots as usize];
    for r in &log.records {
        let slot = (r.seq % o.slots) as usize;
        written[slot] = true;
        if r.acked.is_some() {
            last_acked[slot] = Some(r.seq);
        } else {
            unacked[slot].push(r.seq);
        }
    }
    let mut rep = VerifyReport::default();
    let mut bad = Vec::new();
    for slot in 0..o.slots as usize {
        if !written[slot] {
            continue;
        }
        rep.slots += 1;
        let lba0 = o.base_lba + slot as u64 * u64::from(BLOCKS_PER_WRITE);
        let la = last_acked[slot];
        let later: Vec<u64> = unacked[slot]
            .iter()
            .copied()
            .filter(|&s| la.is_none_or(|a| s > a))
            .collect();
        let mut seen = Vec::new();
        for b in 0..BLOCKS_PER_WRITE as usize {
            let off = slot * per + b * BLOCK;
            let lba = lba0 + b as u64;
            let got = decode_block(&data[off..off + BLOCK], lba);
            let ok = match got {
                Block::Zero => la.is_none(),
                Block::Written { tag, seq } => {
                    tag == o.tag && (la == Some(u64::from(seq)) || later.contains(&u64::from(seq)))
                }
                Block::Garbage => false,
            };
            if !ok && bad.len() < 20 {
                bad.push(format!(
                    "LBA {lba} (slot {slot}): read {got:?}; last acknowledged write {la:?}, \
                     later unacknowledged {later:?}"
                ));
            }
            seen.push(got);
        }
        match (la, seen.first()) {
            (None, Some(Block::Zero)) => rep.never_acked_zero += 1,
            (Some(a), Some(Block::Written { seq, .. })) if u64::from(*seq) == a => {
                rep.acked_current += 1;
            }
            _ => rep.unacked_newer += 1,
        }
    }
    if bad.is_empty() {
        Ok(rep)
    } else {
        Err(format!(
            "acknowledged writes not readable ({}):\n  {}",
            log.summary(),
            bad.join("\n  ")
        ))
    }
}

/// Read the writer's region back through `portal` (logging in with retries for up to
/// 30 s) and [`check`] it. `Err` on a violation or when the region cannot be read.
pub fn try_verify(portal: &Portal, log: &WriterLog) -> Result<VerifyReport, String> {
    quiet_panics_in_io_threads();
    let (portal, o) = (portal.clone(), log.opts.clone());
    let data = std::thread::Builder::new()
        .name("ha-verify".into())
        .spawn(move || -> Result<Vec<u8>, String> {
            enter_netns(&portal.ns);
            let t0 = Instant::now();
            let mut s = loop {
                match try_login(
                    &portal,
                    "iqn.2026-11.org.twinsan.test:ha-verify",
                    Duration::from_millis(300),
                    Duration::from_secs(10),
                ) {
                    Ok(s) => break s,
                    Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                        return Err(format!("verify: cannot log in: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            };
            catch_unwind(AssertUnwindSafe(|| {
                let (blocks, bs) = capacity(&mut s);
                assert_eq!(bs, BLOCK, "block size");
                let n = o.slots * u64::from(BLOCKS_PER_WRITE);
                assert!(
                    o.base_lba + n <= blocks,
                    "region {}+{n} beyond the LUN ({blocks} blocks)",
                    o.base_lba
                );
                read_blocks(&mut s, o.base_lba, n, BLOCK)
            }))
            .map_err(|e| format!("verify: reading the region: {}", panic_text(&*e)))
        })
        .expect("spawn verifier")
        .join()
        .map_err(|e| panic_text(&*e))??;
    check(log, &data)
}

/// [`try_verify`], panicking on failure (with the demo's diagnostics when given).
pub fn verify(demo: &Demo, log: &WriterLog) -> VerifyReport {
    match try_verify(&demo.portal(), log) {
        Ok(r) => r,
        Err(e) => panic!("{e}\n{}", demo.diagnostics()),
    }
}
