//! Harness for twinsan's end-to-end tests: start the real `twinsan` binary as a child
//! process on a loopback port, wait (bounded) until it accepts connections, run real
//! initiator tools against it, and always stop it (SIGTERM, then SIGKILL) and remove its
//! files, also when a test fails.
//!
//! Owns: process and temp-file lifecycle for tests. It never talks iSCSI itself.

pub mod ha;
pub mod netns;
pub mod raw;
pub mod repl;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The twinsan binary built by cargo next to this test binary (same profile), or
/// `$TWINSAN_BIN`.
pub fn twinsan_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TWINSAN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/twinsan
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("twinsan");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build -p twinsan)",
        bin.display()
    );
    bin
}

/// Whether missing tools must fail the test (set by scripts/test) instead of skipping.
pub fn tools_required() -> bool {
    std::env::var("TWINSAN_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// Returns false (and prints why) if `tool` is not on PATH and tools are optional;
/// panics if tools are required.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !tools_required(),
            "{tool} is required (TWINSAN_E2E_REQUIRED=1) but not installed: run scripts/install-deps"
        );
        eprintln!("SKIP: {tool} not installed (run scripts/install-deps)");
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Run a command with a time limit; returns its output. Panics on spawn failure or
/// timeout (the child is killed).
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// A running `twinsan` process; stopped when dropped.
pub struct Twinsan {
    child: Option<Child>,
    /// The portal it listens on.
    pub addr: SocketAddr,
    /// Scratch directory (backing files, secrets, logs); removed when dropped.
    pub dir: tempfile::TempDir,
    log_path: PathBuf,
}

impl Twinsan {
    /// Start `twinsan ARGS...` and wait until `addr` accepts TCP connections.
    pub fn start(args: &[&str], addr: SocketAddr, dir: tempfile::TempDir) -> Self {
        let log_path = dir.path().join("twinsan.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(twinsan_bin())
            .args(args)
            .env("TWINSAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn twinsan");
        let mut t = Self {
            child: Some(child),
            addr,
            dir,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if let Some(Ok(Some(st))) = t.child.as_mut().map(Child::try_wait) {
                panic!("twinsan exited early ({st}):\n{}", t.log());
            }
            assert!(
                Instant::now() < deadline,
                "twinsan did not listen on {addr} within 30 s:\n{}",
                t.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    /// Export a fresh sparse file of `size` (e.g. "64M") with extra `twinsan export` args.
    pub fn export(iqn: &str, size: &str, extra: &[&str]) -> Self {
        Self::export_in(scratch_dir(), iqn, size, extra)
    }

    /// Like [`Twinsan::export`], in a scratch directory the caller prepared (e.g. with
    /// secret files in it).
    pub fn export_in(dir: tempfile::TempDir, iqn: &str, size: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let img = dir.path().join("lun0.img");
        let img = img.to_str().expect("utf-8 path").to_owned();
        let listen = addr.to_string();
        let mut args = vec![
            "export", &img, "--iqn", iqn, "--listen", &listen, "--size", size,
        ];
        args.extend_from_slice(extra);
        Self::start(&args, addr, dir)
    }

    /// Path of the LUN 0 backing file created by [`Twinsan::export`].
    pub fn image(&self) -> PathBuf {
        self.dir.path().join("lun0.img")
    }

    /// `iscsi://127.0.0.1:PORT/IQN/LUN`
    pub fn url(&self, iqn: &str, lun: u32) -> String {
        format!("iscsi://{}/{iqn}/{lun}", self.addr)
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Send SIGTERM and wait (bounded) for exit; returns the exit code.
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
}

impl Drop for Twinsan {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A new scratch directory, removed when dropped.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("twinsan-e2e-")
        .tempdir()
        .expect("tempdir")
}

/// Write `content` to `dir/name` with mode 0600 (a secret file).
pub fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write secret");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}
