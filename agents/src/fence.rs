//! Fencing (STONITH): taking the peer head out before this head takes over its service.
//!
//! Owns: the fence actions and their fence-agents spellings ([`FenceAction`]); the
//! agents ([`FenceAgent`]) — any fence-agents program (`fence_ipmilan`, `fence_virsh`,
//! ...) over its stdin `key=value` protocol, the built-in `process` agent for tests and
//! the demo (kill the peer's processes, take its network namespace's links down), and a
//! test-only `ssh` agent; reading secret parameters from owner-only files; retries within
//! a time limit ([`Fencer`]); and one-line reports ([`FenceReport`]).
//!
//! May not touch: when to fence, or what to do when fencing fails — that is the HA
//! manager's. Secrets (secret parameter values) never appear in logs, errors, reports or
//! `Debug` output: errors name the file, kept output is redacted.
//!
//! A fence is confirmed, not assumed: a fence-agents program confirms power state itself
//! (exit 0); the `process` agent waits (bounded) until the processes are gone and the
//! links are down; the `ssh` agent waits until the host stops answering.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::exec::{self, ExecError, Invocation, Outcome, ProgramProblem};

/// Default number of extra attempts after a failed one.
pub const DEFAULT_RETRIES: u32 = 2;
/// Default pause between attempts.
pub const DEFAULT_RETRY_INTERVAL_MS: u64 = 500;
/// Default limit on one attempt (and on one run of an agent program).
pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;
/// Default command the `ssh` agent runs to power the host off.
pub const DEFAULT_SSH_OFF_COMMAND: &str = "systemctl poweroff -f -f";

/// How long the `process` agent waits for killed processes to be gone.
const PROCESS_CONFIRM_MS: u64 = 2_000;
/// How often it looks.
const PROCESS_POLL_MS: u64 = 10;
/// Limit on one `ip` command.
const IP_TIMEOUT_MS: u64 = 5_000;
/// How often the `ssh` agent asks whether a host it powered off still answers.
const SSH_CONFIRM_POLL_MS: u64 = 500;
/// Characters of agent output kept in an attempt's message.
const MESSAGE_TAIL_CHARS: usize = 400;
/// Largest secret file accepted.
const SECRET_MAX_BYTES: u64 = 4096;
/// Parameter keys whose value is a secret; they belong in `secret_params`.
const PASSWORD_KEYS: [&str; 2] = ["password", "passwd"];

/// A fence action, spelled as fence-agents spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceAction {
    /// Power off (the usual fencing action).
    Off,
    /// Power on.
    On,
    /// Power off, then on.
    Reboot,
    /// Query the power state.
    Status,
    /// Check that the fence device works.
    Monitor,
}

impl FenceAction {
    /// Every action.
    pub const ALL: [FenceAction; 5] = [
        FenceAction::Off,
        FenceAction::On,
        FenceAction::Reboot,
        FenceAction::Status,
        FenceAction::Monitor,
    ];

    /// The fence-agents spelling (`off`, `on`, `reboot`, `status`, `monitor`).
    pub fn as_str(self) -> &'static str {
        match self {
            FenceAction::Off => "off",
            FenceAction::On => "on",
            FenceAction::Reboot => "reboot",
            FenceAction::Status => "status",
            FenceAction::Monitor => "monitor",
        }
    }
}

impl fmt::Display for FenceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FenceAction {
    type Err = FenceError;

    /// The fence-agents spelling, case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FenceAction::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| FenceError::UnknownAction(s.to_owned()))
    }
}

/// A power state as reported by a `status` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Powered on (fence-agents status exit 0).
    On,
    /// Powered off (fence-agents status exit 2).
    Off,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        })
    }
}

/// Why a fence agent is misconfigured, or a step of the built-in agents failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// Not one of the fence-agents action names.
    #[error("unknown fence action {0:?} (expected off, on, reboot, status or monitor)")]
    UnknownAction(String),
    /// The program does not exist (or is not in `PATH`).
    #[error("fence agent program {} not found", .0.display())]
    ProgramNotFound(PathBuf),
    /// The program is not an executable file.
    #[error("fence agent program {} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// A parameter key or value is unusable.
    #[error("fence parameter {key:?}: {reason}")]
    BadParam {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// A secret file could not be read.
    #[error("cannot read secret file {}: {source}", path.display())]
    SecretIo {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A secret file's mode is not 0600 or 0400.
    #[error("secret file {} has mode {mode:04o}: it must be 0600 or 0400 (chmod 600 {})", path.display(), path.display())]
    SecretMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file is owned by another user.
    #[error("secret file {} is owned by uid {owner}, not by uid {me} running twinsan", path.display())]
    SecretOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// A secret file is not a regular file.
    #[error("secret file {} is not a regular file", .0.display())]
    SecretNotRegular(PathBuf),
    /// A secret file's content is unusable (the content itself is never shown).
    #[error("secret file {}: {reason}", path.display())]
    SecretContent {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A network namespace name that `ip netns` would not accept or that could be
    /// mistaken for an option or a path.
    #[error("network namespace name {0:?} is not valid (1 to 64 of A-Z a-z 0-9 _ . -, not starting with . or -)")]
    BadNetns(String),
    /// `links_down` without a namespace.
    #[error("the process fence agent can only take links down inside a netns")]
    LinksDownWithoutNetns,
    /// Neither a pid file nor a namespace.
    #[error("the process fence agent needs a pid_file, a netns or both")]
    NothingToFence,
    /// A pid file with something else than a pid in it.
    #[error("pid file {}: {reason}", path.display())]
    BadPidFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The target is this very process.
    #[error("refusing to fence pid {0}: that is this process")]
    SelfFence(i32),
    /// A process could not be killed.
    #[error("cannot kill pid {pid}: {source}")]
    Kill {
        /// The process.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// A host or user name for ssh that is empty or could be taken for an option.
    #[error("ssh {what} {value:?} is not valid (empty, whitespace, or starts with -)")]
    BadSshName {
        /// `host` or `user`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// An empty ssh power-off command.
    #[error("the ssh fence agent needs a non-empty off_command")]
    EmptySshCommand,
    /// A zero time limit.
    #[error("fence {0} must be greater than 0")]
    ZeroTimeout(&'static str),
    /// A helper command (`ip ...`) failed.
    #[error("{command}: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Outcome and output tail.
        detail: String,
    },
    /// A program could not be run.
    #[error(transparent)]
    Exec(#[from] ExecError),
}

/// How the peer is fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceAgent {
    /// Any fence-agents program, given its options on stdin as `key=value` lines plus
    /// `action=...`; exit 0 = success, and for `status` exit 0 = on, 2 = off.
    External {
        /// The program (path, or a name looked up in `PATH`).
        program: PathBuf,
        /// Options passed as-is (`ip`, `username`, `port`/`plug`, `lanplus`, ...).
        params: Vec<(String, String)>,
        /// Options whose value is the trimmed content of a file that must be owned by
        /// this user with mode 0600 or 0400 (e.g. `password`).
        secret_params: Vec<(String, PathBuf)>,
        /// Limit on one run of the program.
        timeout_ms: u64,
    },
    /// Built-in (tests and the demo): "power off" = SIGKILL the process in `pid_file`
    /// and every process in network namespace `netns`, and with `links_down` set every
    /// non-loopback link in that namespace down; "power on" = links up.
    Process {
        /// File holding the pid of the peer's main process.
        pid_file: Option<PathBuf>,
        /// The peer's network namespace (`ip netns` name).
        netns: Option<String>,
        /// Also take the namespace's links down on `off` (and up on `on`).
        links_down: bool,
    },
    /// Test only: run a power-off command on the peer over ssh, then wait until the
    /// host no longer accepts connections. Cannot power a host on.
    Ssh {
        /// Host name or address.
        host: String,
        /// Remote user (default: ssh's).
        user: Option<String>,
        /// Private key file (`ssh -i`).
        identity_file: Option<PathBuf>,
        /// Command that powers the host off.
        off_command: String,
        /// Limit on one ssh run.
        timeout_ms: u64,
    },
}

impl FenceAgent {
    /// A fence-agents program with its parameters and the default run limit.
    pub fn external(
        program: impl Into<PathBuf>,
        params: Vec<(String, String)>,
        secret_params: Vec<(String, PathBuf)>,
    ) -> Self {
        FenceAgent::External {
            program: program.into(),
            params,
            secret_params,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// The built-in process agent.
    pub fn process(pid_file: Option<PathBuf>, netns: Option<String>, links_down: bool) -> Self {
        FenceAgent::Process {
            pid_file,
            netns,
            links_down,
        }
    }

    /// The ssh agent with the default off command and run limit.
    pub fn ssh(
        host: impl Into<String>,
        user: Option<String>,
        identity_file: Option<PathBuf>,
    ) -> Self {
        FenceAgent::Ssh {
            host: host.into(),
            user,
            identity_file,
            off_command: DEFAULT_SSH_OFF_COMMAND.to_owned(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Short name for logs and reports: the program's file name, `process`, or
    /// `ssh:HOST`.
    pub fn name(&self) -> String {
        match self {
            FenceAgent::External { program, .. } => program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| program.display().to_string()),
            FenceAgent::Process { .. } => "process".to_owned(),
            FenceAgent::Ssh { host, .. } => format!("ssh:{host}"),
        }
    }

    /// Check the configuration without fencing: the program exists and is executable,
    /// parameters are well-formed, secret files are private and readable, names are
    /// sane. Reads secret files (to check them) but keeps nothing.
    pub fn validate(&self) -> Result<(), FenceError> {
        match self {
            FenceAgent::External {
                program,
                params,
                secret_params,
                timeout_ms,
            } => {
                check_program(program)?;
                if *timeout_ms == 0 {
                    return Err(FenceError::ZeroTimeout("timeout_ms"));
                }
                check_params(params, secret_params)?;
                for (_, path) in secret_params {
                    read_secret(path)?;
                }
                Ok(())
            }
            FenceAgent::Process {
                pid_file,
                netns,
                links_down,
            } => {
                if pid_file.is_none() && netns.is_none() {
                    return Err(FenceError::NothingToFence);
                }
                if let Some(ns) = netns {
                    check_netns(ns)?;
                    check_program(Path::new("ip"))?;
                } else if *links_down {
                    return Err(FenceError::LinksDownWithoutNetns);
                }
                if let Some(pf) = pid_file {
                    read_pid_file(pf)?;
                }
                Ok(())
            }
            FenceAgent::Ssh {
                host,
                user,
                identity_file,
                off_command,
                timeout_ms,
            } => {
                check_ssh_name("host", host)?;
                if let Some(u) = user {
                    check_ssh_name("user", u)?;
                }
                if let Some(id) = identity_file {
                    std::fs::metadata(id).map_err(|source| FenceError::SecretIo {
                        path: id.clone(),
                        source,
                    })?;
                }
                if off_command.trim().is_empty() {
                    return Err(FenceError::EmptySshCommand);
                }
                if *timeout_ms == 0 {
                    return Err(FenceError::ZeroTimeout("timeout_ms"));
                }
                check_program(Path::new("ssh")).map(|_| ())
            }
        }
    }

    /// One attempt, bounded by `deadline`.
    fn attempt(&self, action: FenceAction, deadline: Instant) -> Attempt {
        match self {
            FenceAgent::External {
                program,
                params,
                secret_params,
                timeout_ms,
            } => external_attempt(
                program,
                params,
                secret_params,
                *timeout_ms,
                action,
                deadline,
            ),
            FenceAgent::Process {
                pid_file,
                netns,
                links_down,
            } => {
                let p = ProcessTarget {
                    pid_file: pid_file.as_deref(),
                    netns: netns.as_deref(),
                    links_down: *links_down,
                };
                p.attempt(action, deadline)
            }
            FenceAgent::Ssh {
                host,
                user,
                identity_file,
                off_command,
                timeout_ms,
            } => {
                let s = SshTarget {
                    host,
                    user: user.as_deref(),
                    identity_file: identity_file.as_deref(),
                    off_command,
                    timeout_ms: *timeout_ms,
                };
                s.attempt(action, deadline)
            }
        }
    }
}

/// Runs fence actions with retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fencer {
    /// The agent.
    pub agent: FenceAgent,
    /// Extra attempts after a failed one.
    pub retries: u32,
    /// Pause between attempts.
    pub retry_interval_ms: u64,
    /// Limit on one attempt (an agent program run is also limited by the agent's own
    /// `timeout_ms`; the smaller applies). The whole call therefore takes at most about
    /// `(retries + 1) * timeout_ms + retries * retry_interval_ms`.
    pub timeout_ms: u64,
}

/// What one attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// The attempt succeeded (for `status`: the state was determined).
    pub success: bool,
    /// The power state it established or found, where known.
    pub power: Option<PowerState>,
    /// Exit code of the agent program, if one ran and exited.
    pub exit_code: Option<i32>,
    /// The agent program ran out of time.
    pub timed_out: bool,
    /// Duration of the attempt.
    pub elapsed_ms: u64,
    /// One line: outcome and output tail (redacted), or what the built-in agent did.
    pub message: String,
}

impl fmt::Display for AttemptReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", if self.success { "ok" } else { "failed" })?;
        if let Some(p) = self.power {
            write!(f, ", power {p}")?;
        }
        write!(f, " in {} ms", self.elapsed_ms)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The result of [`Fencer::fence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceReport {
    /// The agent's short name ([`FenceAgent::name`]).
    pub agent: String,
    /// The action.
    pub action: FenceAction,
    /// Some attempt succeeded.
    pub success: bool,
    /// The power state of the last attempt that determined one (for `status`: the
    /// answer).
    pub power: Option<PowerState>,
    /// Every attempt, in order.
    pub attempts: Vec<AttemptReport>,
    /// Duration of the whole call.
    pub elapsed_ms: u64,
}

impl fmt::Display for FenceReport {
    /// One line, e.g. `fence off via fence_ipmilan: ok, power off (1 attempt, 812 ms):
    /// exit 0: Success: Powered OFF`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fence {} via {}: {}",
            self.action,
            self.agent,
            if self.success { "ok" } else { "FAILED" }
        )?;
        if let Some(p) = self.power {
            write!(f, ", power {p}")?;
        }
        let n = self.attempts.len();
        write!(
            f,
            " ({n} attempt{}, {} ms)",
            if n == 1 { "" } else { "s" },
            self.elapsed_ms
        )?;
        if let Some(last) = self.attempts.last() {
            if !last.message.is_empty() {
                write!(f, ": {}", last.message)?;
            }
        }
        Ok(())
    }
}

impl Fencer {
    /// A fencer with the default retries, retry interval and attempt limit.
    pub fn new(agent: FenceAgent) -> Self {
        Self {
            agent,
            retries: DEFAULT_RETRIES,
            retry_interval_ms: DEFAULT_RETRY_INTERVAL_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
        }
    }

    /// Run `action`, retrying failed attempts (a configuration error such as a bad
    /// secret file or a missing program is not retried). Blocks; bounded as described on
    /// [`Fencer::timeout_ms`].
    pub fn fence(&self, action: FenceAction) -> FenceReport {
        let start = Instant::now();
        let agent = self.agent.name();
        let mut attempts: Vec<AttemptReport> = Vec::new();
        let mut power = None;
        let mut success = false;
        for n in 0..=self.retries {
            if n > 0 {
                std::thread::sleep(Duration::from_millis(self.retry_interval_ms));
            }
            let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
            let Attempt { report, permanent } = self.agent.attempt(action, deadline);
            if report.success {
                tracing::debug!(%agent, %action, attempt = n + 1, "fence attempt: {report}");
            } else {
                tracing::warn!(%agent, %action, attempt = n + 1, "fence attempt: {report}");
            }
            success = report.success;
            power = report.power.or(power);
            attempts.push(report);
            if success || permanent {
                break;
            }
        }
        let report = FenceReport {
            agent,
            action,
            success,
            power,
            attempts,
            elapsed_ms: ms_since(start),
        };
        if report.success {
            tracing::info!("{report}");
        } else {
            tracing::error!("{report}");
        }
        report
    }
}

/// An attempt and whether repeating it is pointless.
struct Attempt {
    report: AttemptReport,
    permanent: bool,
}

impl Attempt {
    fn failed(start: Instant, message: String, permanent: bool) -> Self {
        Attempt {
            report: AttemptReport {
                success: false,
                power: None,
                exit_code: None,
                timed_out: false,
                elapsed_ms: ms_since(start),
                message,
            },
            permanent,
        }
    }

    fn ok(start: Instant, power: Option<PowerState>, message: String) -> Self {
        Attempt {
            report: AttemptReport {
                success: true,
                power,
                exit_code: None,
                timed_out: false,
                elapsed_ms: ms_since(start),
                message,
            },
            permanent: false,
        }
    }
}

fn ms_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn ms_until(deadline: Instant) -> u64 {
    u64::try_from(
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// `outcome` plus the tail of its output, on one line.
fn outcome_message(outcome: &Outcome) -> String {
    let tail = outcome.tail(MESSAGE_TAIL_CHARS);
    if tail.is_empty() {
        outcome.to_string()
    } else {
        format!("{outcome}: {tail}")
    }
}

fn check_program(program: &Path) -> Result<PathBuf, FenceError> {
    exec::find_program(program).map_err(|p| match p {
        ProgramProblem::NotFound => FenceError::ProgramNotFound(program.to_owned()),
        ProgramProblem::NotExecutable => FenceError::NotExecutable(program.to_owned()),
    })
}

// ---------------------------------------------------------------------------------------
// External (fence-agents) programs

fn check_key(key: &str) -> Result<(), FenceError> {
    let bad = |reason| {
        Err(FenceError::BadParam {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad("keys are made of A-Z a-z 0-9 _ -");
    }
    if key == "action" || key == "option" {
        return bad("the action is set by the fence call, not by a parameter");
    }
    Ok(())
}

fn check_params(
    params: &[(String, String)],
    secret_params: &[(String, PathBuf)],
) -> Result<(), FenceError> {
    let mut seen = std::collections::HashSet::new();
    for (key, value) in params {
        check_key(key)?;
        if PASSWORD_KEYS.contains(&key.as_str()) {
            return Err(FenceError::BadParam {
                key: key.clone(),
                reason:
                    "passwords belong in a secret file (secret_params), not in the configuration",
            });
        }
        if value.contains(['\n', '\r', '\0']) {
            return Err(FenceError::BadParam {
                key: key.clone(),
                reason: "values must not contain line breaks or NUL",
            });
        }
        if !seen.insert(key.as_str()) {
            return Err(FenceError::BadParam {
                key: key.clone(),
                reason: "given more than once",
            });
        }
    }
    for (key, _) in secret_params {
        check_key(key)?;
        if !seen.insert(key.as_str()) {
            return Err(FenceError::BadParam {
                key: key.clone(),
                reason: "given more than once",
            });
        }
    }
    Ok(())
}

/// Read a secret parameter: a regular file owned by the effective user with mode 0600 or
/// 0400, at most 4 KiB, UTF-8, non-empty after trimming, one line. Errors name the file,
/// never the content.
fn read_secret(path: &Path) -> Result<String, FenceError> {
    let io = |source| FenceError::SecretIo {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    // Checked on the opened file, so a swap of the path after the check changes nothing.
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FenceError::SecretNotRegular(path.to_owned()));
    }
    let mode = meta.mode() & 0o7777;
    if mode != 0o600 && mode != 0o400 {
        return Err(FenceError::SecretMode {
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(FenceError::SecretOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let content_err = |reason| FenceError::SecretContent {
        path: path.to_owned(),
        reason,
    };
    if meta.len() > SECRET_MAX_BYTES {
        return Err(content_err("larger than 4096 bytes"));
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(SECRET_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > SECRET_MAX_BYTES {
        return Err(content_err("larger than 4096 bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|_| content_err("not UTF-8 text"))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(content_err("empty"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(content_err("more than one line (a secret is one line)"));
    }
    Ok(value.to_owned())
}

/// The fence-agents stdin: one `key=value` line per parameter and secret, then
/// `action=...`.
fn stdin_text(
    action: FenceAction,
    params: &[(String, String)],
    secrets: &[(String, String)],
) -> String {
    let mut s = String::new();
    for (k, v) in params.iter().chain(secrets) {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\n');
    }
    s.push_str("action=");
    s.push_str(action.as_str());
    s.push('\n');
    s
}

/// What a fence-agents exit code means for `action`: `Some(power)` on success (power
/// unknown for reboot and monitor), `None` on failure.
fn external_result(action: FenceAction, exit_code: i32) -> Option<Option<PowerState>> {
    match (action, exit_code) {
        (FenceAction::Status, 0) => Some(Some(PowerState::On)),
        (FenceAction::Status, 2) => Some(Some(PowerState::Off)),
        (FenceAction::Status, _) => None,
        (FenceAction::Off, 0) => Some(Some(PowerState::Off)),
        (FenceAction::On, 0) => Some(Some(PowerState::On)),
        (FenceAction::Reboot | FenceAction::Monitor, 0) => Some(None),
        _ => None,
    }
}

fn external_attempt(
    program: &Path,
    params: &[(String, String)],
    secret_params: &[(String, PathBuf)],
    timeout_ms: u64,
    action: FenceAction,
    deadline: Instant,
) -> Attempt {
    let start = Instant::now();
    let mut secrets = Vec::with_capacity(secret_params.len());
    for (key, path) in secret_params {
        match read_secret(path) {
            Ok(v) => secrets.push((key.clone(), v)),
            Err(e) => return Attempt::failed(start, e.to_string(), true),
        }
    }
    // Everything secret: the secret values, and a password given in plain params despite
    // validate() (defence in depth).
    let redact: Vec<String> = secrets
        .iter()
        .map(|(_, v)| v.clone())
        .chain(
            params
                .iter()
                .filter(|(k, _)| PASSWORD_KEYS.contains(&k.as_str()))
                .map(|(_, v)| v.clone()),
        )
        .collect();
    let outcome = Invocation::new(program)
        .stdin(stdin_text(action, params, &secrets))
        .timeout_ms(timeout_ms.min(ms_until(deadline)))
        .secrets(redact)
        .run();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let permanent = matches!(&e, ExecError::Spawn { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied));
            return Attempt::failed(start, e.to_string(), permanent);
        }
    };
    let result = if outcome.timed_out {
        None
    } else {
        outcome.exit_code.and_then(|c| external_result(action, c))
    };
    Attempt {
        report: AttemptReport {
            success: result.is_some(),
            power: result.flatten(),
            exit_code: outcome.exit_code,
            timed_out: outcome.timed_out,
            elapsed_ms: ms_since(start),
            message: outcome_message(&outcome),
        },
        permanent: false,
    }
}

// ---------------------------------------------------------------------------------------
// Built-in process agent

fn check_netns(name: &str) -> Result<(), FenceError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FenceError::BadNetns(name.to_owned()))
    }
}

/// The pid in `path`; `None` when the file does not exist or is empty.
fn read_pid_file(path: &Path) -> Result<Option<i32>, FenceError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FenceError::BadPidFile {
                path: path.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<i32>() {
        Ok(pid) if pid > 1 => Ok(Some(pid)),
        _ => Err(FenceError::BadPidFile {
            path: path.to_owned(),
            reason: "does not hold a process id greater than 1".to_owned(),
        }),
    }
}

/// The process exists and is not a zombie (a killed child nobody reaped yet is dead
/// for fencing purposes).
fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name, which is in parentheses and may
        // itself contain ')'.
        Ok(stat) => match stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
        {
            Some('Z' | 'X') => false,
            Some(_) => true,
            None => false,
        },
        Err(_) => false,
    }
}

fn sigkill(pid: i32) -> Result<(), FenceError> {
    if u32::try_from(pid).ok() == Some(std::process::id()) {
        return Err(FenceError::SelfFence(pid));
    }
    if pid <= 1 {
        return Err(FenceError::Kill {
            pid,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: kill(2) on a single positive pid (checked > 1 above, so never a group or
    // "every process") sends a signal and touches no memory of this process.
    if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(FenceError::Kill { pid, source: e })
    }
}

/// Run `ip ARGS`; stdout on exit 0.
fn ip(args: &[&str], deadline: Instant) -> Result<String, FenceError> {
    let command = format!("ip {}", args.join(" "));
    let outcome = Invocation::new("ip")
        .args(args)
        .timeout_ms(IP_TIMEOUT_MS.min(ms_until(deadline)).max(1))
        .run()?;
    if outcome.success() {
        Ok(outcome.stdout)
    } else {
        Err(FenceError::Command {
            command,
            detail: outcome_message(&outcome),
        })
    }
}

/// One line of `ip -o link`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    name: String,
    up: bool,
    loopback: bool,
}

/// Parse `ip -o link` output: `2: v0@v1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu ...`.
fn parse_links(text: &str) -> Vec<Link> {
    text.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(": ")?;
            let (name, rest) = rest.split_once(": ")?;
            let name = name.split('@').next()?.trim();
            let flags = rest.strip_prefix('<')?.split_once('>')?.0;
            let flags: Vec<&str> = flags.split(',').collect();
            Some(Link {
                name: name.to_owned(),
                up: flags.contains(&"UP"),
                loopback: flags.contains(&"LOOPBACK") || name == "lo",
            })
        })
        .collect()
}

struct ProcessTarget<'a> {
    pid_file: Option<&'a Path>,
    netns: Option<&'a str>,
    links_down: bool,
}

/// What the process agent found.
#[derive(Debug, Default)]
struct ProcessView {
    alive: Vec<i32>,
    links_up: Vec<String>,
}

impl ProcessView {
    fn powered(&self) -> PowerState {
        if self.alive.is_empty() && self.links_up.is_empty() {
            PowerState::Off
        } else {
            PowerState::On
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.alive.is_empty() {
            let pids: Vec<String> = self.alive.iter().map(i32::to_string).collect();
            parts.push(format!("processes alive: {}", pids.join(",")));
        }
        if !self.links_up.is_empty() {
            parts.push(format!("links up: {}", self.links_up.join(",")));
        }
        if parts.is_empty() {
            "no process alive, no link up".to_owned()
        } else {
            parts.join("; ")
        }
    }
}

impl ProcessTarget<'_> {
    fn attempt(&self, action: FenceAction, deadline: Instant) -> Attempt {
        let start = Instant::now();
        let result = match action {
            FenceAction::Off => self.off(deadline).map(|m| (Some(PowerState::Off), m)),
            FenceAction::On => self.on(deadline),
            FenceAction::Reboot => self.off(deadline).and_then(|off| {
                let (power, on) = self.on(deadline)?;
                Ok((power, format!("{off}; {on}")))
            }),
            FenceAction::Status | FenceAction::Monitor => self
                .view(deadline)
                .map(|v| (Some(v.powered()), v.describe())),
        };
        match result {
            Ok((power, message)) => Attempt::ok(start, power, message),
            Err(e) => {
                let permanent = matches!(
                    e,
                    FenceError::BadPidFile { .. }
                        | FenceError::SelfFence(_)
                        | FenceError::BadNetns(_)
                );
                Attempt::failed(start, e.to_string(), permanent)
            }
        }
    }

    fn links(&self, deadline: Instant) -> Result<Vec<Link>, FenceError> {
        match (self.netns, self.links_down) {
            (Some(ns), true) => Ok(parse_links(&ip(&["-n", ns, "-o", "link"], deadline)?)),
            _ => Ok(Vec::new()),
        }
    }

    fn set_links(&self, up: bool, deadline: Instant) -> Result<Vec<String>, FenceError> {
        let Some(ns) = self.netns else {
            return Ok(Vec::new());
        };
        let mut changed = Vec::new();
        for link in self.links(deadline)? {
            if !link.loopback && link.up != up {
                let state = if up { "up" } else { "down" };
                ip(
                    &["-n", ns, "link", "set", "dev", &link.name, state],
                    deadline,
                )?;
                changed.push(link.name);
            }
        }
        Ok(changed)
    }

    /// Live processes to fence: the pid file's and every one in the namespace.
    fn live_pids(&self, deadline: Instant) -> Result<Vec<i32>, FenceError> {
        let mut pids = Vec::new();
        if let Some(pf) = self.pid_file {
            if let Some(pid) = read_pid_file(pf)? {
                pids.push(pid);
            }
        }
        if let Some(ns) = self.netns {
            let out = ip(&["netns", "pids", ns], deadline)?;
            for line in out.lines() {
                let pid = line
                    .trim()
                    .parse::<i32>()
                    .map_err(|_| FenceError::Command {
                        command: format!("ip netns pids {ns}"),
                        detail: format!("unexpected output line {line:?}"),
                    })?;
                pids.push(pid);
            }
        }
        pids.retain(|&p| pid_alive(p));
        pids.sort_unstable();
        pids.dedup();
        if let Some(&me) = pids
            .iter()
            .find(|&&p| u32::try_from(p).ok() == Some(std::process::id()))
        {
            return Err(FenceError::SelfFence(me));
        }
        Ok(pids)
    }

    fn view(&self, deadline: Instant) -> Result<ProcessView, FenceError> {
        Ok(ProcessView {
            alive: self.live_pids(deadline)?,
            links_up: self
                .links(deadline)?
                .into_iter()
                .filter(|l| l.up && !l.loopback)
                .map(|l| l.name)
                .collect(),
        })
    }

    /// Links down, processes killed, then confirmed within [`PROCESS_CONFIRM_MS`]:
    /// the killed processes are gone, nothing new lives in the namespace, no link is up.
    fn off(&self, deadline: Instant) -> Result<String, FenceError> {
        let start = Instant::now();
        let mut downed = if self.links_down {
            self.set_links(false, deadline)?
        } else {
            Vec::new()
        };
        let mut killed: Vec<i32> = Vec::new();
        let confirm_by = deadline.min(Instant::now() + Duration::from_millis(PROCESS_CONFIRM_MS));
        loop {
            // Kill what lives now (first round: everything; later rounds: newcomers).
            let view = self.view(deadline)?;
            for &pid in &view.alive {
                sigkill(pid)?;
                if !killed.contains(&pid) {
                    killed.push(pid);
                }
            }
            if !view.links_up.is_empty() {
                downed.extend(self.set_links(false, deadline)?);
            }
            // Wait for the killed ones to be gone.
            while killed.iter().any(|&p| pid_alive(p)) && Instant::now() < confirm_by {
                std::thread::sleep(Duration::from_millis(PROCESS_POLL_MS));
            }
            let view = self.view(deadline)?;
            if view.powered() == PowerState::Off {
                break;
            }
            if Instant::now() >= confirm_by {
                return Err(FenceError::Command {
                    command: "confirming power off".to_owned(),
                    detail: format!("still {} after {} ms", view.describe(), ms_since(start)),
                });
            }
            std::thread::sleep(Duration::from_millis(PROCESS_POLL_MS));
        }
        downed.sort();
        downed.dedup();
        let pids: Vec<String> = killed.iter().map(i32::to_string).collect();
        Ok(format!(
            "killed [{}], links down [{}], confirmed off in {} ms",
            pids.join(","),
            downed.join(","),
            ms_since(start)
        ))
    }

    fn on(&self, deadline: Instant) -> Result<(Option<PowerState>, String), FenceError> {
        if self.links_down && self.netns.is_some() {
            let upped = self.set_links(true, deadline)?;
            Ok((
                Some(PowerState::On),
                format!("links up [{}]", upped.join(",")),
            ))
        } else {
            Ok((
                None,
                "nothing to power on (processes cannot be restarted)".to_owned(),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Test-only ssh agent

fn check_ssh_name(what: &'static str, value: &str) -> Result<(), FenceError> {
    if value.is_empty() || value.starts_with('-') || value.contains(char::is_whitespace) {
        Err(FenceError::BadSshName {
            what,
            value: value.to_owned(),
        })
    } else {
        Ok(())
    }
}

/// ssh's stderr when the host did not accept a connection (as opposed to refusing us
/// for authentication or a host key, which says nothing about its power state).
const SSH_UNREACHABLE: [&str; 6] = [
    "Connection timed out",
    "Connection refused",
    "No route to host",
    "Network is unreachable",
    "Host is down",
    "Operation timed out",
];

struct SshTarget<'a> {
    host: &'a str,
    user: Option<&'a str>,
    identity_file: Option<&'a Path>,
    off_command: &'a str,
    timeout_ms: u64,
}

impl SshTarget<'_> {
    fn run(&self, command: &str, deadline: Instant) -> Result<Outcome, ExecError> {
        let timeout_ms = self.timeout_ms.min(ms_until(deadline)).max(1);
        let connect_s = (timeout_ms / 1000).clamp(1, 10);
        let mut inv = Invocation::new("ssh")
            .args(["-o", "BatchMode=yes", "-o"])
            .arg(format!("ConnectTimeout={connect_s}"));
        if let Some(id) = self.identity_file {
            inv = inv.arg("-i").arg(id);
        }
        let dest = match self.user {
            Some(u) => format!("{u}@{}", self.host),
            None => self.host.to_owned(),
        };
        inv.args(["--", &dest, command])
            .timeout_ms(timeout_ms)
            .run()
    }

    /// On (answers), off (does not accept connections), or an error message.
    fn status(&self, deadline: Instant) -> Result<(PowerState, Outcome), String> {
        let outcome = self.run("true", deadline).map_err(|e| e.to_string())?;
        if outcome.success() {
            return Ok((PowerState::On, outcome));
        }
        if outcome.exit_code == Some(255)
            && SSH_UNREACHABLE.iter().any(|m| outcome.stderr.contains(m))
        {
            return Ok((PowerState::Off, outcome));
        }
        Err(outcome_message(&outcome))
    }

    fn attempt(&self, action: FenceAction, deadline: Instant) -> Attempt {
        let start = Instant::now();
        let with_outcome = |mut a: Attempt, o: &Outcome| {
            a.report.exit_code = o.exit_code;
            a.report.timed_out = o.timed_out;
            a
        };
        match action {
            FenceAction::Status | FenceAction::Monitor => match self.status(deadline) {
                Ok((power, o)) => {
                    let a = if action == FenceAction::Monitor && power == PowerState::Off {
                        Attempt::failed(
                            start,
                            format!("host does not answer: {}", outcome_message(&o)),
                            false,
                        )
                    } else {
                        Attempt::ok(start, Some(power), outcome_message(&o))
                    };
                    with_outcome(a, &o)
                }
                Err(m) => Attempt::failed(start, m, false),
            },
            FenceAction::On => Attempt::failed(
                start,
                "the ssh agent cannot power a host on".to_owned(),
                true,
            ),
            FenceAction::Off | FenceAction::Reboot => {
                let outcome = match self.run(self.off_command, deadline) {
                    Ok(o) => o,
                    Err(e) => return Attempt::failed(start, e.to_string(), false),
                };
                // 0: the command returned; 255 or a timeout: the connection died with
                // the host. Anything else: the command failed, or ssh refused us.
                let plausible = outcome.timed_out
                    || outcome.exit_code == Some(0)
                    || (outcome.exit_code == Some(255)
                        && !outcome.stderr.contains("Permission denied")
                        && !outcome.stderr.contains("Host key verification failed"));
                if !plausible {
                    return with_outcome(
                        Attempt::failed(start, outcome_message(&outcome), false),
                        &outcome,
                    );
                }
                // Confirm: the host must stop accepting connections.
                loop {
                    match self.status(deadline) {
                        Ok((PowerState::Off, o)) => {
                            let note = if action == FenceAction::Reboot {
                                "; host left off (the ssh agent cannot power on)"
                            } else {
                                ""
                            };
                            let msg = format!(
                                "off command: {outcome}; host no longer answers: {}{note}",
                                outcome_message(&o)
                            );
                            return with_outcome(
                                Attempt::ok(start, Some(PowerState::Off), msg),
                                &outcome,
                            );
                        }
                        Ok((PowerState::On, _)) | Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(
                                SSH_CONFIRM_POLL_MS.min(ms_until(deadline)),
                            ));
                        }
                        Ok((PowerState::On, _)) => {
                            return Attempt::failed(
                                start,
                                "host still answers after the off command".to_owned(),
                                false,
                            )
                        }
                        Err(m) => {
                            return Attempt::failed(
                                start,
                                format!("cannot confirm power off: {m}"),
                                false,
                            )
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_spellings_round_trip() {
        for a in FenceAction::ALL {
            assert_eq!(a.as_str().parse::<FenceAction>().unwrap(), a);
            assert_eq!(a.to_string(), a.as_str());
        }
        assert_eq!("OFF".parse::<FenceAction>().unwrap(), FenceAction::Off);
        assert!(matches!(
            "poweroff".parse::<FenceAction>(),
            Err(FenceError::UnknownAction(_))
        ));
    }

    #[test]
    fn stdin_has_params_secrets_and_action() {
        let params = vec![
            ("ip".to_owned(), "10.0.0.9".to_owned()),
            ("username".to_owned(), "admin".to_owned()),
            ("plug".to_owned(), "node-b".to_owned()),
        ];
        let secrets = vec![("password".to_owned(), "pw".to_owned())];
        assert_eq!(
            stdin_text(FenceAction::Off, &params, &secrets),
            "ip=10.0.0.9\nusername=admin\nplug=node-b\npassword=pw\naction=off\n"
        );
        assert_eq!(stdin_text(FenceAction::Status, &[], &[]), "action=status\n");
    }

    #[test]
    fn exit_codes_map_per_action() {
        use FenceAction::*;
        assert_eq!(external_result(Status, 0), Some(Some(PowerState::On)));
        assert_eq!(external_result(Status, 2), Some(Some(PowerState::Off)));
        assert_eq!(external_result(Status, 1), None);
        assert_eq!(external_result(Off, 0), Some(Some(PowerState::Off)));
        assert_eq!(external_result(Off, 2), None);
        assert_eq!(external_result(Off, 1), None);
        assert_eq!(external_result(On, 0), Some(Some(PowerState::On)));
        assert_eq!(external_result(Reboot, 0), Some(None));
        assert_eq!(external_result(Monitor, 0), Some(None));
        assert_eq!(external_result(Monitor, 1), None);
    }

    #[test]
    fn params_are_checked() {
        let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(check_params(&p("ip", "1.2.3.4"), &[]).is_ok());
        assert!(check_params(&p("action", "on"), &[]).is_err());
        assert!(check_params(&p("ip", "1\naction=on"), &[]).is_err());
        assert!(check_params(&p("bad key", "x"), &[]).is_err());
        assert!(check_params(&p("password", "x"), &[]).is_err());
        assert!(check_params(&p("login", "x"), &[("login".into(), "/f".into())]).is_err());
    }

    #[test]
    fn netns_names_are_checked() {
        assert!(check_netns("tw-b_1.x").is_ok());
        for bad in ["", "-n", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_netns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_ip_link_lines() {
        let text = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT\\    link/loopback 00:00\n\
                    2: v1@v0: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc noop state DOWN\\    link/ether d6\n\
                    3: d0: <BROADCAST,NOARP,UP,LOWER_UP> mtu 1500 qdisc noqueue state UNKNOWN\\    link/ether 42\n";
        assert_eq!(
            parse_links(text),
            vec![
                Link {
                    name: "lo".into(),
                    up: true,
                    loopback: true
                },
                Link {
                    name: "v1".into(),
                    up: false,
                    loopback: false
                },
                Link {
                    name: "d0".into(),
                    up: true,
                    loopback: false
                },
            ]
        );
    }

    #[test]
    fn secret_file_rules_and_no_leak() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = |name: &str, content: &str, mode: u32| {
            let p = d.path().join(name);
            std::fs::write(&p, content).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        assert_eq!(
            read_secret(&f("a", "  s3cret-pw \n", 0o600)).unwrap(),
            "s3cret-pw"
        );
        assert_eq!(
            read_secret(&f("b", "s3cret-pw", 0o400)).unwrap(),
            "s3cret-pw"
        );
        for (name, content, mode) in [
            ("c", "s3cret-pw", 0o640),
            ("d", "s3cret-pw", 0o644),
            ("e", "s3cret-pw", 0o700),
            ("f", "s3cret-pw\nsecond", 0o600),
            ("g", " \n", 0o600),
        ] {
            let p = f(name, content, mode);
            let e = read_secret(&p).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let e = read_secret(&d.path().join("missing")).unwrap_err();
        assert!(matches!(e, FenceError::SecretIo { .. }));
    }

    #[test]
    fn pid_file_parsing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pid");
        assert_eq!(read_pid_file(&p).unwrap(), None);
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pid_file(&p).unwrap(), Some(1234));
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_pid_file(&p).unwrap(), None);
        for bad in ["1", "0", "-5", "abc"] {
            std::fs::write(&p, bad).unwrap();
            assert!(read_pid_file(&p).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_to_kill_itself() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(matches!(sigkill(me), Err(FenceError::SelfFence(_))));
        assert!(pid_alive(me));
    }

    #[test]
    fn report_display_is_one_line() {
        let r = FenceReport {
            agent: "fence_x".into(),
            action: FenceAction::Off,
            success: false,
            power: None,
            attempts: vec![
                AttemptReport {
                    success: false,
                    power: None,
                    exit_code: Some(1),
                    timed_out: false,
                    elapsed_ms: 5,
                    message: "exit 1: bad | worse".into(),
                };
                2
            ],
            elapsed_ms: 12,
        };
        assert_eq!(
            r.to_string(),
            "fence off via fence_x: FAILED (2 attempts, 12 ms): exit 1: bad | worse"
        );
        assert_eq!(
            r.attempts[0].to_string(),
            "failed in 5 ms: exit 1: bad | worse"
        );
    }

    #[test]
    fn validate_process_agent() {
        assert!(matches!(
            FenceAgent::process(None, None, false).validate(),
            Err(FenceError::NothingToFence)
        ));
        assert!(matches!(
            FenceAgent::process(Some("/nonexistent/pid".into()), None, true).validate(),
            Err(FenceError::LinksDownWithoutNetns)
        ));
        assert!(
            FenceAgent::process(Some("/nonexistent/pid".into()), None, false)
                .validate()
                .is_ok()
        );
        assert!(matches!(
            FenceAgent::process(None, Some("-x".into()), true).validate(),
            Err(FenceError::BadNetns(_))
        ));
    }

    #[test]
    fn validate_ssh_agent() {
        assert!(FenceAgent::ssh("-oProxyCommand=x", None, None)
            .validate()
            .is_err());
        assert!(FenceAgent::ssh("peer", Some("a b".into()), None)
            .validate()
            .is_err());
        let mut a = FenceAgent::ssh("peer", None, None);
        if let FenceAgent::Ssh { off_command, .. } = &mut a {
            off_command.clear();
        }
        assert!(matches!(a.validate(), Err(FenceError::EmptySshCommand)));
    }
}
