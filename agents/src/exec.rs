//! The one bounded child-process runner behind fence agents ([`crate::fence`]) and OCF
//! resource agents ([`crate::ocf`]).
//!
//! Owns: starting a program in its own process group with extra environment and optional
//! stdin bytes (written, then closed), a hard timeout after which the whole process group
//! is killed with SIGKILL, capturing stdout and stderr up to a cap each while the child
//! runs (both pipes are read non-blocking with `poll(2)` on the calling thread, so a
//! chatty child can never block on a full pipe and no reader thread outlives the call),
//! and redaction: every caller-supplied secret is replaced by `***` in the output kept.
//!
//! May not touch: what an exit code means (each agent module decides), retries, and
//! logging of anything but the program name and the outcome.
//!
//! Notes:
//! - Only a timeout kills the process group. A child that exits normally may leave
//!   processes behind on purpose (an OCF `start` often launches a daemon); those keep
//!   running and output they write after the child exited is not waited for.
//! - Processes that leave the group (`setsid`) escape the timeout kill.
//! - Writing stdin to a child that exited without reading it needs SIGPIPE ignored in
//!   this process, which the Rust runtime does for every binary.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Default cap on the stdout and on the stderr kept from one run.
pub const DEFAULT_OUTPUT_CAP_BYTES: usize = 64 * 1024;

/// What replaces a secret in kept output.
pub const REDACTED: &str = "***";

/// How long to wait for a SIGKILLed process group leader to be reaped before handing it
/// to a background reaper (a process stuck in uninterruptible sleep cannot die at once).
const KILL_REAP_WAIT_MS: u64 = 5_000;

/// Longest single sleep of the wait loop once no pipe is left to poll.
const MAX_TICK_MS: u64 = 10;

/// Why a program could not be run at all. A program that runs and fails, or times out,
/// is an [`Outcome`], not an error.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program could not be started (not found, not executable, ...).
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Supervising the running program failed; it was killed.
    #[error("running {}: {what}: {source}", program.display())]
    Io {
        /// The program.
        program: PathBuf,
        /// Which step failed.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// One bounded run of a program. Build with [`Invocation::new`] and the builder methods,
/// then [`Invocation::run`].
#[derive(Clone)]
pub struct Invocation {
    /// The program (a path, or a name looked up in `PATH`).
    pub program: PathBuf,
    /// Its arguments (without argv\[0\]).
    pub args: Vec<OsString>,
    /// Variables added to (or replacing those of) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Bytes written to its stdin, which is then closed; `None`: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Hard limit on the run; at expiry the process group is killed with SIGKILL.
    pub timeout_ms: u64,
    /// Cap on the bytes kept from stdout, and separately from stderr.
    pub output_cap_bytes: usize,
    /// Strings replaced by [`REDACTED`] in the kept stdout and stderr.
    pub secrets: Vec<String>,
}

impl fmt::Debug for Invocation {
    // Hand-written so that stdin (which may carry a password), environment values and
    // secrets never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invocation")
            .field("program", &self.program)
            .field("args", &self.args)
            .field(
                "env_keys",
                &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("stdin_len_bytes", &self.stdin.as_ref().map(Vec::len))
            .field("timeout_ms", &self.timeout_ms)
            .field("output_cap_bytes", &self.output_cap_bytes)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish()
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The exit code, if the program exited (rather than being killed by a signal).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did (SIGKILL after a timeout).
    pub signal: Option<i32>,
    /// The timeout expired and the process group was killed.
    pub timed_out: bool,
    /// Captured stdout (lossy UTF-8), at most the cap, secrets redacted.
    pub stdout: String,
    /// Captured stderr (lossy UTF-8), at most the cap, secrets redacted.
    pub stderr: String,
    /// The program wrote more stdout than the cap; the rest was discarded.
    pub stdout_truncated: bool,
    /// The program wrote more stderr than the cap; the rest was discarded.
    pub stderr_truncated: bool,
    /// Wall time from spawn to the end of the run.
    pub elapsed_ms: u64,
}

impl Outcome {
    /// Exited with code 0 before the timeout.
    pub fn success(&self) -> bool {
        !self.timed_out && self.exit_code == Some(0)
    }

    /// The last `max_chars` characters of stderr (or of stdout when stderr is blank),
    /// trimmed, with line breaks shown as ` | ` so the text fits on one log line.
    pub fn tail(&self, max_chars: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        one_line_tail(text, max_chars)
    }
}

impl fmt::Display for Outcome {
    /// `exit 0`, `killed by signal 9`, or `timed out after N ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.timed_out {
            write!(f, "timed out after {} ms", self.elapsed_ms)
        } else if let Some(code) = self.exit_code {
            write!(f, "exit {code}")
        } else if let Some(sig) = self.signal {
            write!(f, "killed by signal {sig}")
        } else {
            f.write_str("ended without status")
        }
    }
}

/// Why [`find_program`] refused a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramProblem {
    /// No such file (or, for a bare name, none in `PATH`).
    NotFound,
    /// It exists but is not a regular file with an execute bit.
    NotExecutable,
}

/// Resolve `program` the way spawning will: a name containing `/` is taken as a path, a
/// bare name is looked up in `PATH`. The result must be a regular file with an execute
/// bit set.
pub fn find_program(program: &Path) -> Result<PathBuf, ProgramProblem> {
    use std::os::unix::fs::PermissionsExt;
    let check = |p: &Path| match std::fs::metadata(p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(p.to_owned()),
        Ok(_) => Err(ProgramProblem::NotExecutable),
        Err(_) => Err(ProgramProblem::NotFound),
    };
    if program.as_os_str().is_empty() {
        return Err(ProgramProblem::NotFound);
    }
    if program.components().count() > 1 || program.is_absolute() {
        return check(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut found_other = false;
    for dir in std::env::split_paths(&path) {
        match check(&dir.join(program)) {
            Ok(p) => return Ok(p),
            Err(ProgramProblem::NotExecutable) => found_other = true,
            Err(ProgramProblem::NotFound) => {}
        }
    }
    Err(if found_other {
        ProgramProblem::NotExecutable
    } else {
        ProgramProblem::NotFound
    })
}

/// The last `max_chars` characters of `text`, trimmed, line breaks as ` | `.
pub fn one_line_tail(text: &str, max_chars: usize) -> String {
    let trimmed = text.trim();
    let count = trimmed.chars().count();
    let tail: String = if count > max_chars {
        let skip = count - max_chars;
        let mut s = String::from("...");
        s.extend(trimmed.chars().skip(skip));
        s
    } else {
        trimmed.to_owned()
    };
    tail.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Replace every occurrence of every non-empty secret in `text` by [`REDACTED`]. Where
/// secrets overlap, the longest match at a position wins.
pub fn redact<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let bytes = redact_bytes(text.as_bytes(), secrets, false);
    // Only whole (valid UTF-8) secrets were replaced by ASCII, so this stays valid.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// [`redact`] on bytes. With `truncated` (the data was cut off at a cap), a tail that is
/// the beginning of a secret is masked as well, so a cut never exposes part of a secret.
pub fn redact_bytes<S: AsRef<str>>(data: &[u8], secrets: &[S], truncated: bool) -> Vec<u8> {
    let mut secrets: Vec<&[u8]> = secrets
        .iter()
        .map(|s| s.as_ref().as_bytes())
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() {
        return data.to_vec();
    }
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if let Some(s) = secrets.iter().find(|s| data[i..].starts_with(s)) {
            out.extend_from_slice(REDACTED.as_bytes());
            i += s.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    if truncated {
        let mut cut = None;
        for s in &secrets {
            for k in (1..s.len().min(out.len() + 1)).rev() {
                if out.ends_with(&s[..k]) {
                    cut = Some(cut.map_or(k, |c: usize| c.max(k)));
                    break;
                }
            }
        }
        if let Some(k) = cut {
            out.truncate(out.len() - k);
            out.extend_from_slice(REDACTED.as_bytes());
        }
    }
    out
}

impl Invocation {
    /// A run of `program` with no arguments, no stdin, a 10 s timeout and the default
    /// output cap.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout_ms: 10_000,
            output_cap_bytes: DEFAULT_OUTPUT_CAP_BYTES,
            secrets: Vec::new(),
        }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Append arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Add an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Bytes to write to stdin (then closed).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// The hard time limit.
    pub fn timeout_ms(mut self, timeout_ms: u64) -> Self {
        self.timeout_ms = timeout_ms;
        self
    }

    /// The cap on kept stdout and on kept stderr.
    pub fn output_cap_bytes(mut self, cap: usize) -> Self {
        self.output_cap_bytes = cap;
        self
    }

    /// Strings to redact from the kept output.
    pub fn secrets<I, S>(mut self, secrets: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.secrets.extend(secrets.into_iter().map(Into::into));
        self
    }

    /// Run the program to completion or timeout. Blocks the calling thread for at most
    /// about `timeout_ms` (plus, after a timeout kill, up to 5 s for the kernel to let the
    /// killed leader go).
    pub fn run(&self) -> Result<Outcome, ExecError> {
        let start = Instant::now();
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        tracing::debug!(program = %self.program.display(), pid = child.id(), "started");
        let deadline = start + Duration::from_millis(self.timeout_ms);
        let mut pipes = Pipes {
            stdin: child.stdin.take(),
            stdin_data: self.stdin.as_deref().unwrap_or_default(),
            stdin_pos: 0,
            stdout: Capture::new(child.stdout.take(), self.output_cap_bytes),
            stderr: Capture::new(child.stderr.take(), self.output_cap_bytes),
        };
        let supervised = supervise(&mut child, &mut pipes, deadline);
        let (status, timed_out) = match supervised {
            Ok(Some(status)) => (Some(status), false),
            Ok(None) => (kill_group_and_reap(child, &self.program), true),
            Err((what, source)) => {
                kill_group_and_reap(child, &self.program);
                return Err(ExecError::Io {
                    program: self.program.clone(),
                    what,
                    source,
                });
            }
        };
        // Whatever is in the pipes now was written before the end; take it without
        // waiting for processes left behind that may still hold the write ends.
        pipes.stdin = None;
        pipes.drain_available();
        let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let outcome = Outcome {
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            timed_out,
            stdout: pipes.stdout.finish(&self.secrets),
            stderr: pipes.stderr.finish(&self.secrets),
            stdout_truncated: pipes.stdout.truncated,
            stderr_truncated: pipes.stderr.truncated,
            elapsed_ms,
        };
        tracing::debug!(program = %self.program.display(), outcome = %outcome, "finished");
        Ok(outcome)
    }
}

/// Output of one pipe, kept up to a cap.
struct Capture<R> {
    pipe: Option<R>,
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl<R: Read + AsRawFd> Capture<R> {
    fn new(pipe: Option<R>, cap: usize) -> Self {
        Self {
            pipe,
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Read what is available; closes the pipe at end of file or on an error.
    fn read_available(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => {
                    let room = self.cap.saturating_sub(self.buf.len());
                    if n > room {
                        self.truncated = true;
                    }
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pipe = None;
                    return;
                }
            }
        }
    }

    fn finish<S: AsRef<str>>(&self, secrets: &[S]) -> String {
        let bytes = redact_bytes(&self.buf, secrets, self.truncated);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

struct Pipes<'a> {
    stdin: Option<ChildStdin>,
    stdin_data: &'a [u8],
    stdin_pos: usize,
    stdout: Capture<ChildStdout>,
    stderr: Capture<ChildStderr>,
}

impl Pipes<'_> {
    /// Write what the pipe takes now; closes stdin when all is written or the reader
    /// went away.
    fn write_available(&mut self) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        while self.stdin_pos < self.stdin_data.len() {
            match stdin.write(&self.stdin_data[self.stdin_pos..]) {
                Ok(0) => break,
                Ok(n) => self.stdin_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // EPIPE: the child does not read its stdin; nothing more to do.
                Err(_) => break,
            }
        }
        self.stdin = None;
    }

    fn drain_available(&mut self) {
        self.stdout.read_available();
        self.stderr.read_available();
    }
}

/// Set `O_NONBLOCK` on a pipe end we own.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor owned by a live `Child*` handle of the caller;
    // F_GETFL reads its flags and touches no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL only changes the descriptor's status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Pump the pipes until the child exits (`Some(status)`) or the deadline passes (`None`).
fn supervise(
    child: &mut Child,
    pipes: &mut Pipes<'_>,
    deadline: Instant,
) -> Result<Option<ExitStatus>, (&'static str, io::Error)> {
    let fds = [
        pipes.stdin.as_ref().map(AsRawFd::as_raw_fd),
        pipes.stdout.pipe.as_ref().map(AsRawFd::as_raw_fd),
        pipes.stderr.pipe.as_ref().map(AsRawFd::as_raw_fd),
    ];
    for fd in fds.into_iter().flatten() {
        set_nonblocking(fd).map_err(|e| ("setting pipes non-blocking", e))?;
    }
    if pipes.stdin_data.is_empty() {
        pipes.stdin = None;
    }
    let mut idle_tick_ms = 1;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| ("waiting for exit", e))? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let left_ms = u64::try_from((deadline - now).as_millis()).unwrap_or(u64::MAX);
        let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(3);
        if let Some(p) = &pipes.stdin {
            pollfds.push(pollfd(p.as_raw_fd(), libc::POLLOUT));
        }
        if let Some(p) = &pipes.stdout.pipe {
            pollfds.push(pollfd(p.as_raw_fd(), libc::POLLIN));
        }
        if let Some(p) = &pipes.stderr.pipe {
            pollfds.push(pollfd(p.as_raw_fd(), libc::POLLIN));
        }
        if pollfds.is_empty() {
            // Nothing to pump: the child closed its output but has not exited yet.
            std::thread::sleep(Duration::from_millis(idle_tick_ms.min(left_ms.max(1))));
            idle_tick_ms = (idle_tick_ms * 2).min(MAX_TICK_MS);
            continue;
        }
        // Exit is noticed by `try_wait`, not by poll; wake up regularly for it.
        let wait_ms = left_ms.clamp(1, MAX_TICK_MS) as libc::c_int;
        // SAFETY: `pollfds` is a live, exclusively borrowed array of `pollfds.len()`
        // initialised `pollfd`s for the duration of the call.
        let rc =
            unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, wait_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(("polling pipes", e));
        }
        if rc > 0 {
            pipes.write_available();
            pipes.drain_available();
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// SIGKILL the child's process group and reap the leader, waiting a bounded time; a
/// leader that does not go in time is reaped by a background thread.
fn kill_group_and_reap(mut child: Child, program: &Path) -> Option<ExitStatus> {
    let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
        return None;
    };
    // SAFETY: kill(2) with a negative pid signals the process group whose id is the
    // child's pid (it was spawned with `process_group(0)`, so that group is its own and
    // cannot be ours); it touches no memory of this process.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    // The leader itself, in case it had left its group.
    let _ = child.kill();
    let until = Instant::now() + Duration::from_millis(KILL_REAP_WAIT_MS);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    tracing::warn!(
        program = %program.display(),
        pid = pgid,
        "killed process did not exit within {KILL_REAP_WAIT_MS} ms; reaping it in the background"
    );
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Invocation {
        Invocation::new("/bin/sh").arg("-c").arg(script)
    }

    #[test]
    fn redacts_all_occurrences_longest_first() {
        let secrets = ["pass", "password1"];
        assert_eq!(
            redact("user=a password1=x pass password1", &secrets),
            "user=a ***=x *** ***"
        );
        assert_eq!(redact("nothing here", &secrets), "nothing here");
        assert_eq!(redact("x", &[""]), "x");
        let none: [&str; 0] = [];
        assert_eq!(redact("pass", &none), "pass");
    }

    #[test]
    fn redacts_secret_prefix_at_a_truncation_cut() {
        let out = redact_bytes(b"login ok, passwd=hunt", &["hunter2"], true);
        assert_eq!(out, b"login ok, passwd=***");
        // Not truncated: a tail that merely resembles a prefix is left alone.
        let out = redact_bytes(b"login ok, passwd=hunt", &["hunter2"], false);
        assert_eq!(out, b"login ok, passwd=hunt");
    }

    #[test]
    fn runs_and_captures_with_stdin_and_env() {
        let o = sh("cat; echo \"v=$TW_X\" >&2; exit 3")
            .stdin(b"hello\n".to_vec())
            .env("TW_X", "42")
            .timeout_ms(5_000)
            .run()
            .unwrap();
        assert_eq!(o.exit_code, Some(3));
        assert!(!o.timed_out);
        assert_eq!(o.stdout, "hello\n");
        assert_eq!(o.stderr, "v=42\n");
        assert!(!o.success());
        assert_eq!(o.to_string(), "exit 3");
    }

    #[test]
    fn spawn_error_names_the_program() {
        let e = Invocation::new("/nonexistent/tw-prog").run().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tw-prog"), "{e}");
    }

    #[test]
    fn output_is_capped_and_redacted() {
        let o =
            sh("i=0; while [ $i -lt 2000 ]; do echo 'line with s3cr3t in it'; i=$((i+1)); done")
                .output_cap_bytes(1000)
                .secrets(["s3cr3t"])
                .timeout_ms(10_000)
                .run()
                .unwrap();
        assert!(o.success(), "{o:?}");
        assert!(o.stdout_truncated);
        assert!(o.stdout.len() <= 1000 + REDACTED.len());
        assert!(!o.stdout.contains("s3cr"));
        assert!(o.stdout.contains("line with *** in it"));
    }

    #[test]
    fn chatty_child_does_not_block_and_large_stdin_is_delivered() {
        // 1 MiB in, 1 MiB out, 1 MiB on stderr: more than any pipe buffer.
        let input = vec![b'a'; 1 << 20];
        let o = sh("cat; head -c 1048576 /dev/zero >&2")
            .stdin(input)
            .timeout_ms(20_000)
            .run()
            .unwrap();
        assert!(o.success(), "{o}");
        assert!(o.stdout_truncated && o.stderr_truncated);
        assert_eq!(o.stdout.len(), DEFAULT_OUTPUT_CAP_BYTES);
    }

    #[test]
    fn child_that_ignores_stdin_is_fine() {
        let o = sh("exit 0")
            .stdin(vec![b'x'; 1 << 20])
            .timeout_ms(5_000)
            .run()
            .unwrap();
        assert!(o.success(), "{o}");
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("gc.pid");
        let script = format!(
            "sleep 60 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let t0 = Instant::now();
        let o = sh(&script).timeout_ms(300).run().unwrap();
        assert!(o.timed_out);
        assert_eq!(o.signal, Some(libc::SIGKILL));
        assert_eq!(o.exit_code, None);
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(o.stdout, "started\n");
        assert!(o.to_string().starts_with("timed out after"));
        let gc: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while proc_alive(gc) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!proc_alive(gc), "grandchild {gc} survived the timeout");
    }

    #[test]
    fn background_process_holding_stdout_does_not_delay_return() {
        let t0 = Instant::now();
        let o = sh("sleep 3 & echo done").timeout_ms(10_000).run().unwrap();
        assert!(o.success());
        assert_eq!(o.stdout, "done\n");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    }

    #[test]
    fn tail_is_one_line() {
        let o = Outcome {
            exit_code: Some(1),
            signal: None,
            timed_out: false,
            stdout: "out".into(),
            stderr: "first\nsecond\n\nthird\n".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            elapsed_ms: 1,
        };
        assert_eq!(o.tail(100), "first | second | third");
        assert_eq!(o.tail(5), "...third");
        let o = Outcome {
            stderr: " \n".into(),
            ..o
        };
        assert_eq!(o.tail(100), "out");
    }

    #[test]
    fn debug_hides_stdin_and_secrets() {
        let inv = Invocation::new("x")
            .stdin(b"password=hunter2\n".to_vec())
            .env("K", "envsecret")
            .secrets(["hunter2"]);
        let s = format!("{inv:?}");
        assert!(!s.contains("hunter2") && !s.contains("envsecret"), "{s}");
    }

    /// Alive and not a zombie.
    fn proc_alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, r)| r.trim_start().chars().next()),
                Some('Z' | 'X') | None
            ),
            Err(_) => false,
        }
    }
}
