//! Running external OCF resource agents (the resource-agents package's `Filesystem`,
//! `IPaddr2`, `VirtualDomain`, ... or any script following the OCF 1.1 API), so users can
//! put their own resources under the HA manager.
//!
//! Owns: the OCF actions and their spellings ([`OcfAction`]); the environment an agent
//! is run with (`OCF_ROOT`, `OCF_RA_VERSION_*`, `OCF_RESOURCE_*`, `OCF_RESKEY_<param>`,
//! `OCF_RESKEY_CRM_meta_timeout`, `OCF_FUNCTIONS_DIR`) and the action as argv\[1\]; the
//! meaning of exit codes ([`OcfStatus`], with Pacemaker's hard/fatal classification);
//! reading an agent's meta-data by plain string scanning (parameters, which are required,
//! advertised actions and their timeouts — no XML crate); checking configured parameters
//! against it ([`check_params`]).
//!
//! May not touch: scheduling (when to start, monitor intervals, fail counts, migration
//! thresholds) and recovery decisions — those are the HA manager's. Agents run through
//! [`crate::exec`] with a hard timeout per action; a timed-out stop is reported as
//! [`OcfStatus::Timeout`], and what follows (fencing) is the manager's call.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::exec::{self, Invocation, ProgramProblem};

/// Where the resource-agents package installs the OCF tree.
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";
/// Default limit on one action (Pacemaker's default operation timeout).
pub const DEFAULT_TIMEOUT_MS: u64 = 20_000;
/// What agents prefix their one-line failure reason with on stderr (`ocf_exit_reason`).
pub const EXIT_REASON_PREFIX: &str = "ocf-exit-reason:";

/// Cap on the meta-data XML read from an agent.
const META_DATA_CAP_BYTES: usize = 1 << 20;
/// Characters of output kept in messages.
const MESSAGE_TAIL_CHARS: usize = 400;

/// An OCF action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OcfAction {
    /// Start the resource.
    Start,
    /// Stop it (must succeed when already stopped).
    Stop,
    /// Check its state.
    Monitor,
    /// Promote a promotable clone instance.
    Promote,
    /// Demote it.
    Demote,
    /// Clone notification (the caller passes the `OCF_RESKEY_CRM_meta_notify_*` env).
    Notify,
    /// Print the agent's meta-data XML.
    MetaData,
    /// Check the parameters.
    ValidateAll,
    /// Apply changed reloadable parameters.
    Reload,
}

impl OcfAction {
    /// Every action.
    pub const ALL: [OcfAction; 9] = [
        OcfAction::Start,
        OcfAction::Stop,
        OcfAction::Monitor,
        OcfAction::Promote,
        OcfAction::Demote,
        OcfAction::Notify,
        OcfAction::MetaData,
        OcfAction::ValidateAll,
        OcfAction::Reload,
    ];

    /// The OCF spelling, passed as argv\[1\].
    pub fn as_str(self) -> &'static str {
        match self {
            OcfAction::Start => "start",
            OcfAction::Stop => "stop",
            OcfAction::Monitor => "monitor",
            OcfAction::Promote => "promote",
            OcfAction::Demote => "demote",
            OcfAction::Notify => "notify",
            OcfAction::MetaData => "meta-data",
            OcfAction::ValidateAll => "validate-all",
            OcfAction::Reload => "reload",
        }
    }
}

impl fmt::Display for OcfAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OcfAction {
    type Err = OcfError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OcfAction::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| OcfError::UnknownAction(s.to_owned()))
    }
}

/// What an agent's run meant, from its exit code (OCF 1.1 / Pacemaker), or why it has
/// none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcfStatus {
    /// 0 `OCF_SUCCESS`.
    Success,
    /// 1 `OCF_ERR_GENERIC`.
    ErrGeneric,
    /// 2 `OCF_ERR_ARGS`: parameters not valid on this node.
    ErrArgs,
    /// 3 `OCF_ERR_UNIMPLEMENTED`.
    ErrUnimplemented,
    /// 4 `OCF_ERR_PERM`.
    ErrPerm,
    /// 5 `OCF_ERR_INSTALLED`: required software missing on this node.
    ErrInstalled,
    /// 6 `OCF_ERR_CONFIGURED`: the configuration is wrong everywhere.
    ErrConfigured,
    /// 7 `OCF_NOT_RUNNING`: cleanly stopped.
    NotRunning,
    /// 8 `OCF_RUNNING_PROMOTED` (formerly `OCF_RUNNING_MASTER`).
    RunningPromoted,
    /// 9 `OCF_FAILED_PROMOTED`: promoted (or maybe) but failed; needs recovery.
    FailedPromoted,
    /// 190 `OCF_DEGRADED`: running, but further failures are more likely.
    Degraded,
    /// 191 `OCF_DEGRADED_PROMOTED`.
    DegradedPromoted,
    /// Any other exit code (a soft error in Pacemaker's terms).
    Unknown(i32),
    /// The action ran out of time and its process group was killed.
    Timeout,
    /// Killed by a signal it was not sent by the timeout.
    Signaled(i32),
    /// The agent could not be run at all.
    SpawnFailed,
}

impl OcfStatus {
    /// The status an exit code means.
    pub fn from_exit_code(code: i32) -> Self {
        match code {
            0 => OcfStatus::Success,
            1 => OcfStatus::ErrGeneric,
            2 => OcfStatus::ErrArgs,
            3 => OcfStatus::ErrUnimplemented,
            4 => OcfStatus::ErrPerm,
            5 => OcfStatus::ErrInstalled,
            6 => OcfStatus::ErrConfigured,
            7 => OcfStatus::NotRunning,
            8 => OcfStatus::RunningPromoted,
            9 => OcfStatus::FailedPromoted,
            190 => OcfStatus::Degraded,
            191 => OcfStatus::DegradedPromoted,
            other => OcfStatus::Unknown(other),
        }
    }

    /// The exit code this status stands for, if it stands for one.
    pub fn exit_code(self) -> Option<i32> {
        Some(match self {
            OcfStatus::Success => 0,
            OcfStatus::ErrGeneric => 1,
            OcfStatus::ErrArgs => 2,
            OcfStatus::ErrUnimplemented => 3,
            OcfStatus::ErrPerm => 4,
            OcfStatus::ErrInstalled => 5,
            OcfStatus::ErrConfigured => 6,
            OcfStatus::NotRunning => 7,
            OcfStatus::RunningPromoted => 8,
            OcfStatus::FailedPromoted => 9,
            OcfStatus::Degraded => 190,
            OcfStatus::DegradedPromoted => 191,
            OcfStatus::Unknown(c) => c,
            OcfStatus::Timeout | OcfStatus::Signaled(_) | OcfStatus::SpawnFailed => return None,
        })
    }

    /// The agent reports the resource active in some role, healthy or not (0, 8, 9, 190,
    /// 191): something a stop would have to stop.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            OcfStatus::Success
                | OcfStatus::RunningPromoted
                | OcfStatus::FailedPromoted
                | OcfStatus::Degraded
                | OcfStatus::DegradedPromoted
        )
    }

    /// Active in the promoted role (8, 9, 191).
    pub fn is_promoted(self) -> bool {
        matches!(
            self,
            OcfStatus::RunningPromoted | OcfStatus::FailedPromoted | OcfStatus::DegradedPromoted
        )
    }

    /// Retrying on this node is pointless (Pacemaker's hard and fatal errors: 2, 3, 4, 5,
    /// and 6). The caller should ban the resource from this node (or, [`is_fatal`], from
    /// every node). A recurring monitor answering 3 is the exception Pacemaker makes; that
    /// is the caller's to apply.
    ///
    /// [`is_fatal`]: OcfStatus::is_fatal
    pub fn is_hard_error(self) -> bool {
        matches!(
            self,
            OcfStatus::ErrArgs
                | OcfStatus::ErrUnimplemented
                | OcfStatus::ErrPerm
                | OcfStatus::ErrInstalled
                | OcfStatus::ErrConfigured
        )
    }

    /// The resource cannot run on any node (6, `OCF_ERR_CONFIGURED`).
    pub fn is_fatal(self) -> bool {
        self == OcfStatus::ErrConfigured
    }

    /// Degraded (190, 191): Pacemaker treats it as success but shows it.
    pub fn is_degraded(self) -> bool {
        matches!(self, OcfStatus::Degraded | OcfStatus::DegradedPromoted)
    }
}

impl fmt::Display for OcfStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            OcfStatus::Success => "success",
            OcfStatus::ErrGeneric => "generic error",
            OcfStatus::ErrArgs => "invalid arguments",
            OcfStatus::ErrUnimplemented => "not implemented",
            OcfStatus::ErrPerm => "insufficient privileges",
            OcfStatus::ErrInstalled => "not installed",
            OcfStatus::ErrConfigured => "not configured",
            OcfStatus::NotRunning => "not running",
            OcfStatus::RunningPromoted => "running promoted",
            OcfStatus::FailedPromoted => "failed promoted",
            OcfStatus::Degraded => "degraded",
            OcfStatus::DegradedPromoted => "degraded promoted",
            OcfStatus::Unknown(c) => return write!(f, "unknown error (exit {c})"),
            OcfStatus::Timeout => "timed out",
            OcfStatus::Signaled(s) => return write!(f, "killed by signal {s}"),
            OcfStatus::SpawnFailed => "could not be run",
        };
        match self.exit_code() {
            Some(c) => write!(f, "{text} ({c})"),
            None => f.write_str(text),
        }
    }
}

/// Why an OCF agent is misconfigured or its meta-data unusable.
#[derive(Debug, thiserror::Error)]
pub enum OcfError {
    /// Not an OCF action name.
    #[error("unknown OCF action {0:?}")]
    UnknownAction(String),
    /// An agent spec that is neither `PROVIDER:TYPE` (`ocf:PROVIDER:TYPE`) nor an
    /// absolute path.
    #[error("OCF agent {0:?} is neither PROVIDER:TYPE nor an absolute path")]
    BadSpec(String),
    /// The agent does not exist.
    #[error("OCF agent {} not found", .0.display())]
    NotFound(PathBuf),
    /// The agent is not an executable file.
    #[error("OCF agent {} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// A name (provider, type, instance, parameter) that cannot be used.
    #[error("OCF {what} {value:?} is not valid: {reason}")]
    BadName {
        /// Which name.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A zero time limit.
    #[error("OCF {0} timeout must be greater than 0")]
    ZeroTimeout(OcfAction),
    /// An action did not succeed where success was needed (meta-data).
    #[error("{agent} {action}: {status}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    Action {
        /// The agent's type.
        agent: String,
        /// The action.
        action: OcfAction,
        /// Its status.
        status: OcfStatus,
        /// Exit reason or output tail.
        detail: String,
    },
    /// Meta-data that cannot be read.
    #[error("meta-data of {agent}: {reason}")]
    BadMetaData {
        /// The agent's type.
        agent: String,
        /// What is wrong.
        reason: String,
    },
    /// Required parameters not configured.
    #[error("resource agent {agent} requires parameter(s) {} which are not configured", names.join(", "))]
    MissingParams {
        /// The agent (meta-data name).
        agent: String,
        /// The missing parameters.
        names: Vec<String>,
    },
}

/// One external OCF resource (an agent and an instance of it with its parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcfAgent {
    /// The agent executable, normally `$ocf_root/resource.d/$provider/$type_name`.
    pub path: PathBuf,
    /// The OCF root (`OCF_ROOT`; `OCF_FUNCTIONS_DIR` is `$OCF_ROOT/lib/heartbeat`).
    pub ocf_root: PathBuf,
    /// `OCF_RESOURCE_PROVIDER`, e.g. `heartbeat`.
    pub provider: String,
    /// `OCF_RESOURCE_TYPE`, e.g. `IPaddr2`.
    pub type_name: String,
    /// `OCF_RESOURCE_INSTANCE`: the resource's name.
    pub instance: String,
    /// Instance parameters, passed as `OCF_RESKEY_<name>=<value>`.
    pub params: Vec<(String, String)>,
    /// Limit of an action without an entry in `timeouts_ms`.
    pub default_timeout_ms: u64,
    /// Per-action limits (passed to the agent as `OCF_RESKEY_CRM_meta_timeout`).
    pub timeouts_ms: Vec<(OcfAction, u64)>,
}

/// The result of one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcfResult {
    /// The action.
    pub action: OcfAction,
    /// What it meant.
    pub status: OcfStatus,
    /// The raw exit code, if the agent exited.
    pub exit_code: Option<i32>,
    /// Its stdout (capped at 64 KiB; 1 MiB for meta-data).
    pub stdout: String,
    /// Its stderr (capped at 64 KiB).
    pub stderr: String,
    /// Duration.
    pub elapsed_ms: u64,
    /// Why it could not be run ([`OcfStatus::SpawnFailed`]).
    pub error: Option<String>,
}

impl OcfResult {
    /// The agent's own reason (the last `ocf-exit-reason:` line on stderr), if any.
    pub fn exit_reason(&self) -> Option<&str> {
        self.stderr
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(EXIT_REASON_PREFIX))
            .map(str::trim)
            .filter(|r| !r.is_empty())
    }

    /// One line explaining the result beyond its status: the spawn error, the exit
    /// reason, or the stderr tail (empty when there is nothing).
    pub fn detail(&self) -> String {
        if let Some(e) = &self.error {
            return e.clone();
        }
        if let Some(r) = self.exit_reason() {
            return r.to_owned();
        }
        exec::one_line_tail(&self.stderr, MESSAGE_TAIL_CHARS)
    }
}

impl fmt::Display for OcfResult {
    /// `start: not running (7) in 12 ms: reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} in {} ms",
            self.action, self.status, self.elapsed_ms
        )?;
        let detail = self.detail();
        if !detail.is_empty() {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

fn check_name(what: &'static str, value: &str, env_safe: bool) -> Result<(), OcfError> {
    let bad = |reason| {
        Err(OcfError::BadName {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if env_safe {
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return bad("only A-Z a-z 0-9 _ are allowed");
        }
    } else if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return bad("no whitespace, control characters or /");
    }
    Ok(())
}

impl OcfAgent {
    /// `$DEFAULT_OCF_ROOT/resource.d/PROVIDER/TYPE` for resource `instance`, no
    /// parameters, default timeouts.
    pub fn new(provider: &str, type_name: &str, instance: &str) -> Self {
        Self::under_root(Path::new(DEFAULT_OCF_ROOT), provider, type_name, instance)
    }

    /// As [`OcfAgent::new`] with another OCF root.
    pub fn under_root(ocf_root: &Path, provider: &str, type_name: &str, instance: &str) -> Self {
        Self {
            path: ocf_root.join("resource.d").join(provider).join(type_name),
            ocf_root: ocf_root.to_owned(),
            provider: provider.to_owned(),
            type_name: type_name.to_owned(),
            instance: instance.to_owned(),
            params: Vec::new(),
            default_timeout_ms: DEFAULT_TIMEOUT_MS,
            timeouts_ms: Vec::new(),
        }
    }

    /// From a configuration spec: `PROVIDER:TYPE` or `ocf:PROVIDER:TYPE` (found under
    /// `ocf_root`), or an absolute path to the agent (provider = its directory's name,
    /// type = its file name).
    pub fn from_spec(spec: &str, instance: &str, ocf_root: &Path) -> Result<Self, OcfError> {
        let bad = || OcfError::BadSpec(spec.to_owned());
        if spec.starts_with('/') {
            let path = PathBuf::from(spec);
            let type_name = path
                .file_name()
                .ok_or_else(bad)?
                .to_string_lossy()
                .into_owned();
            let provider = path
                .parent()
                .and_then(Path::file_name)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "local".to_owned());
            let mut agent = Self::under_root(ocf_root, &provider, &type_name, instance);
            agent.path = path;
            return Ok(agent);
        }
        let rest = spec.strip_prefix("ocf:").unwrap_or(spec);
        let (provider, type_name) = rest.split_once(':').ok_or_else(bad)?;
        check_name("provider", provider, false).map_err(|_| bad())?;
        check_name("type", type_name, false).map_err(|_| bad())?;
        Ok(Self::under_root(ocf_root, provider, type_name, instance))
    }

    /// Add a parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Set the limit of one action.
    pub fn with_timeout_ms(mut self, action: OcfAction, timeout_ms: u64) -> Self {
        self.timeouts_ms.retain(|(a, _)| *a != action);
        self.timeouts_ms.push((action, timeout_ms));
        self
    }

    /// The limit of `action`.
    pub fn timeout_ms(&self, action: OcfAction) -> u64 {
        self.timeouts_ms
            .iter()
            .rev()
            .find(|(a, _)| *a == action)
            .map_or(self.default_timeout_ms, |(_, t)| *t)
    }

    /// Check the configuration without running the agent: it exists and is executable,
    /// names are usable, timeouts are positive.
    pub fn validate(&self) -> Result<(), OcfError> {
        exec::find_program(&self.path).map_err(|p| match p {
            ProgramProblem::NotFound => OcfError::NotFound(self.path.clone()),
            ProgramProblem::NotExecutable => OcfError::NotExecutable(self.path.clone()),
        })?;
        check_name("provider", &self.provider, false)?;
        check_name("type", &self.type_name, false)?;
        check_name("instance", &self.instance, false)?;
        let mut seen = std::collections::HashSet::new();
        for (name, value) in &self.params {
            check_name("parameter name", name, true)?;
            if value.contains('\0') {
                return Err(OcfError::BadName {
                    what: "parameter value of",
                    value: name.clone(),
                    reason: "contains NUL",
                });
            }
            if !seen.insert(name) {
                return Err(OcfError::BadName {
                    what: "parameter",
                    value: name.clone(),
                    reason: "given more than once",
                });
            }
        }
        for action in OcfAction::ALL {
            if self.timeout_ms(action) == 0 {
                return Err(OcfError::ZeroTimeout(action));
            }
        }
        Ok(())
    }

    /// Run `action`. Never fails: a spawn failure is [`OcfStatus::SpawnFailed`].
    pub fn run(&self, action: OcfAction) -> OcfResult {
        self.run_with_env(action, &[])
    }

    /// Run `action` with extra environment (e.g. `OCF_RESKEY_CRM_meta_interval` for a
    /// recurring monitor, `OCF_CHECK_LEVEL`, `OCF_RESKEY_CRM_meta_notify_*`), which is
    /// applied after, and so may override, the standard variables.
    pub fn run_with_env(&self, action: OcfAction, extra_env: &[(String, String)]) -> OcfResult {
        let timeout_ms = self.timeout_ms(action);
        let mut inv = Invocation::new(&self.path)
            .arg(action.as_str())
            .timeout_ms(timeout_ms)
            .env("OCF_ROOT", &self.ocf_root)
            .env(
                "OCF_FUNCTIONS_DIR",
                self.ocf_root.join("lib").join("heartbeat"),
            )
            .env("OCF_RA_VERSION_MAJOR", "1")
            .env("OCF_RA_VERSION_MINOR", "1")
            .env("OCF_RESOURCE_INSTANCE", &self.instance)
            .env("OCF_RESOURCE_TYPE", &self.type_name)
            .env("OCF_RESOURCE_PROVIDER", &self.provider)
            .env("OCF_EXIT_REASON_PREFIX", EXIT_REASON_PREFIX)
            .env("OCF_RESKEY_CRM_meta_timeout", timeout_ms.to_string());
        for (name, value) in &self.params {
            inv = inv.env(format!("OCF_RESKEY_{name}"), value);
        }
        for (name, value) in extra_env {
            inv = inv.env(name, value);
        }
        if action == OcfAction::MetaData {
            inv = inv.output_cap_bytes(META_DATA_CAP_BYTES);
        }
        let result = match inv.run() {
            Ok(o) => OcfResult {
                action,
                status: if o.timed_out {
                    OcfStatus::Timeout
                } else if let Some(code) = o.exit_code {
                    OcfStatus::from_exit_code(code)
                } else {
                    OcfStatus::Signaled(o.signal.unwrap_or(0))
                },
                exit_code: o.exit_code,
                error: (action == OcfAction::MetaData && o.stdout_truncated)
                    .then(|| format!("meta-data larger than {META_DATA_CAP_BYTES} bytes")),
                stdout: o.stdout,
                stderr: o.stderr,
                elapsed_ms: o.elapsed_ms,
            },
            Err(e) => OcfResult {
                action,
                status: OcfStatus::SpawnFailed,
                exit_code: None,
                stdout: String::new(),
                stderr: String::new(),
                elapsed_ms: 0,
                error: Some(e.to_string()),
            },
        };
        let routine = matches!(
            action,
            OcfAction::Monitor | OcfAction::MetaData | OcfAction::ValidateAll
        );
        let expected = match action {
            OcfAction::Monitor => {
                (result.status.is_running() && result.status != OcfStatus::FailedPromoted)
                    || result.status == OcfStatus::NotRunning
            }
            _ => result.status == OcfStatus::Success,
        };
        if !expected {
            tracing::warn!(agent = %self.type_name, instance = %self.instance, "{result}");
        } else if routine {
            tracing::debug!(agent = %self.type_name, instance = %self.instance, "{result}");
        } else {
            tracing::info!(agent = %self.type_name, instance = %self.instance, "{result}");
        }
        result
    }

    /// Run `meta-data` and scan the XML.
    pub fn meta_data(&self) -> Result<MetaData, OcfError> {
        let r = self.run(OcfAction::MetaData);
        if r.status != OcfStatus::Success || r.error.is_some() {
            return Err(OcfError::Action {
                agent: self.type_name.clone(),
                action: OcfAction::MetaData,
                status: r.status,
                detail: r.detail(),
            });
        }
        MetaData::parse(&r.stdout).map_err(|reason| OcfError::BadMetaData {
            agent: self.type_name.clone(),
            reason,
        })
    }

    /// Run `validate-all`.
    pub fn validate_all(&self) -> OcfResult {
        self.run(OcfAction::ValidateAll)
    }

    /// [`check_params`] on this resource's parameters.
    pub fn check_params(&self, meta: &MetaData) -> Result<(), OcfError> {
        check_params(meta, &self.params)
    }
}

/// A parameter an agent advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Its name (`OCF_RESKEY_<name>`).
    pub name: String,
    /// `required="1"`.
    pub required: bool,
    /// `unique="1"`.
    pub unique: bool,
    /// `<content type=...>`.
    pub content_type: Option<String>,
    /// `<content default=...>`.
    pub default: Option<String>,
    /// `<shortdesc>` text.
    pub shortdesc: Option<String>,
}

/// An action an agent advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSpec {
    /// Its name (`start`, `monitor`, ...).
    pub name: String,
    /// Its advertised timeout.
    pub timeout_ms: Option<u64>,
    /// Its advertised interval (recurring monitor).
    pub interval_ms: Option<u64>,
    /// `depth` (`OCF_CHECK_LEVEL`).
    pub depth: Option<String>,
    /// `role` (`Promoted`, `Unpromoted`, or the old `Master`/`Slave`).
    pub role: Option<String>,
}

/// What an agent's meta-data says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaData {
    /// `<resource-agent name=...>`.
    pub name: Option<String>,
    /// `<resource-agent version=...>` (the agent's own version).
    pub agent_version: Option<String>,
    /// `<version>` (the OCF API version it implements).
    pub ocf_version: Option<String>,
    /// Parameters, in document order.
    pub parameters: Vec<ParamSpec>,
    /// Actions, in document order (`monitor` may appear once per role/interval).
    pub actions: Vec<ActionSpec>,
    /// The XML as printed.
    pub xml: String,
}

impl MetaData {
    /// Scan meta-data XML. Only the structure OCF meta-data has is understood: the
    /// `resource-agent` element, `parameter` elements with their `content` and
    /// `shortdesc`, and `action` elements; comments, processing instructions, DOCTYPE and
    /// CDATA are skipped; the five predefined entities and character references are
    /// decoded.
    pub fn parse(xml: &str) -> Result<Self, String> {
        let nodes = scan(xml)?;
        let mut md = MetaData {
            name: None,
            agent_version: None,
            ocf_version: None,
            parameters: Vec::new(),
            actions: Vec::new(),
            xml: xml.to_owned(),
        };
        let mut seen_root = false;
        let mut param: Option<ParamSpec> = None;
        let mut in_text: Option<&str> = None;
        for node in &nodes {
            match node {
                Node::Text(text) => match in_text {
                    Some("version") if param.is_none() => {
                        md.ocf_version = Some(text.trim().to_owned());
                    }
                    Some("shortdesc") => {
                        if let Some(p) = param.as_mut() {
                            p.shortdesc = Some(text.trim().to_owned());
                        }
                    }
                    _ => {}
                },
                Node::Tag(tag) if tag.closing => {
                    in_text = None;
                    if tag.name == "parameter" {
                        md.parameters.extend(param.take());
                    }
                }
                Node::Tag(tag) => {
                    in_text = (!tag.self_closing).then_some(tag.name);
                    match tag.name {
                        "resource-agent" => {
                            seen_root = true;
                            md.name = tag.attr("name").map(str::to_owned);
                            md.agent_version = tag.attr("version").map(str::to_owned);
                        }
                        "parameter" => {
                            md.parameters.extend(param.take());
                            let name = tag
                                .attr("name")
                                .filter(|n| !n.is_empty())
                                .ok_or("a <parameter> without a name")?;
                            let p = ParamSpec {
                                name: name.to_owned(),
                                required: tag.attr("required").is_some_and(is_true),
                                unique: tag.attr("unique").is_some_and(is_true),
                                content_type: None,
                                default: None,
                                shortdesc: None,
                            };
                            if tag.self_closing {
                                md.parameters.push(p);
                            } else {
                                param = Some(p);
                            }
                        }
                        "content" => {
                            if let Some(p) = param.as_mut() {
                                p.content_type = tag.attr("type").map(str::to_owned);
                                p.default = tag.attr("default").map(str::to_owned);
                            }
                        }
                        "action" => {
                            let name = tag
                                .attr("name")
                                .filter(|n| !n.is_empty())
                                .ok_or("an <action> without a name")?;
                            let duration = |attr| match tag.attr(attr) {
                                None => Ok(None),
                                Some(v) => parse_duration_ms(v).map(Some).ok_or_else(|| {
                                    format!("action {name}: {attr}={v:?} is not a duration")
                                }),
                            };
                            md.actions.push(ActionSpec {
                                name: name.to_owned(),
                                timeout_ms: duration("timeout")?,
                                interval_ms: duration("interval")?,
                                depth: tag.attr("depth").map(str::to_owned),
                                role: tag.attr("role").map(str::to_owned),
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        md.parameters.extend(param.take());
        if !seen_root {
            return Err("no <resource-agent> element".to_owned());
        }
        Ok(md)
    }

    /// The parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// The first advertised action called `name` (for `monitor`, there may be more:
    /// one per role).
    pub fn action(&self, name: &str) -> Option<&ActionSpec> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// The advertised timeout of `action`.
    pub fn timeout_ms(&self, action: OcfAction) -> Option<u64> {
        self.action(action.as_str()).and_then(|a| a.timeout_ms)
    }
}

/// Check `params` against meta-data: every parameter marked required must be given,
/// unless the agent also advertises a default for it (a contradiction some agents have;
/// they use the default). Names are also checked to be usable in the environment.
pub fn check_params(meta: &MetaData, params: &[(String, String)]) -> Result<(), OcfError> {
    for (name, _) in params {
        check_name("parameter name", name, true)?;
    }
    let missing: Vec<String> = meta
        .parameters
        .iter()
        .filter(|p| p.required && p.default.is_none())
        .filter(|p| !params.iter().any(|(n, _)| *n == p.name))
        .map(|p| p.name.clone())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(OcfError::MissingParams {
            agent: meta.name.clone().unwrap_or_else(|| "?".to_owned()),
            names: missing,
        })
    }
}

/// Names in `params` the meta-data does not advertise (worth a warning, not an error:
/// Pacemaker passes them anyway).
pub fn unknown_params<'a>(meta: &MetaData, params: &'a [(String, String)]) -> Vec<&'a str> {
    params
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| meta.param(n).is_none())
        .collect()
}

/// A Pacemaker duration: a number with an optional unit — `ms`/`msec`, `us`/`usec`
/// (rounded up to whole ms), `s`/`sec` (the default), `m`/`min`, `h`/`hr`.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" => n.checked_mul(1000),
        "ms" | "msec" => Some(n),
        "us" | "usec" => Some(n.div_ceil(1000)),
        "m" | "min" => n.checked_mul(60_000),
        "h" | "hr" => n.checked_mul(3_600_000),
        _ => None,
    }
}

fn is_true(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "y" | "on"
    )
}

// ---------------------------------------------------------------------------------------
// A minimal XML scanner: enough for OCF meta-data, not a general XML parser.

#[derive(Debug)]
enum Node<'a> {
    Tag(Tag<'a>),
    /// Decoded character data between tags (only non-blank runs).
    Text(String),
}

#[derive(Debug)]
struct Tag<'a> {
    name: &'a str,
    attrs: Vec<(&'a str, String)>,
    closing: bool,
    self_closing: bool,
}

impl Tag<'_> {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decode the predefined entities and character references.
fn decode_entities(s: &str) -> Result<String, String> {
    if !s.contains('&') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("unterminated entity in {s:?}"))?;
        let entity = &after[..end];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| format!("unknown entity &{entity};"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Split `xml` into tags and text.
fn scan(xml: &str) -> Result<Vec<Node<'_>>, String> {
    let mut nodes = Vec::new();
    let mut i = 0;
    let skip_to = |from: usize, end: &str, what: &str| -> Result<usize, String> {
        xml[from..]
            .find(end)
            .map(|p| from + p + end.len())
            .ok_or_else(|| format!("unterminated {what} at byte {from}"))
    };
    while i < xml.len() {
        let Some(lt) = xml[i..].find('<').map(|p| i + p) else {
            let text = decode_entities(&xml[i..])?;
            if !text.trim().is_empty() {
                nodes.push(Node::Text(text));
            }
            break;
        };
        if lt > i {
            let text = decode_entities(&xml[i..lt])?;
            if !text.trim().is_empty() {
                nodes.push(Node::Text(text));
            }
        }
        let rest = &xml[lt..];
        if rest.starts_with("<!--") {
            i = skip_to(lt, "-->", "comment")?;
        } else if rest.starts_with("<![CDATA[") {
            let end = skip_to(lt, "]]>", "CDATA section")?;
            let text = &xml[lt + 9..end - 3];
            if !text.trim().is_empty() {
                nodes.push(Node::Text(text.to_owned()));
            }
            i = end;
        } else if rest.starts_with("<?") {
            i = skip_to(lt, "?>", "processing instruction")?;
        } else if rest.starts_with("<!") {
            // DOCTYPE, possibly with an internal subset in brackets.
            let gt = rest.find('>').ok_or("unterminated declaration")?;
            i = match rest.find('[') {
                Some(b) if b < gt => skip_to(lt, "]>", "DOCTYPE")?,
                _ => lt + gt + 1,
            };
        } else {
            let (tag, end) = scan_tag(xml, lt)?;
            nodes.push(Node::Tag(tag));
            i = end;
        }
    }
    Ok(nodes)
}

/// One tag starting at `xml[start] == '<'`; returns it and the index after its `>`.
fn scan_tag(xml: &str, start: usize) -> Result<(Tag<'_>, usize), String> {
    let b = xml.as_bytes();
    let err = |what: &str, at: usize| format!("{what} at byte {at}");
    let mut i = start + 1;
    let closing = b.get(i) == Some(&b'/');
    if closing {
        i += 1;
    }
    let is_name = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b':' | b'.');
    let name_start = i;
    while i < b.len() && is_name(b[i]) {
        i += 1;
    }
    if i == name_start {
        return Err(err("expected a tag name", name_start));
    }
    let name = &xml[name_start..i];
    let mut attrs = Vec::new();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match b.get(i) {
            None => return Err(err("unterminated tag", start)),
            Some(b'>') => {
                let tag = Tag {
                    name,
                    attrs,
                    closing,
                    self_closing: false,
                };
                return Ok((tag, i + 1));
            }
            Some(b'/') if b.get(i + 1) == Some(&b'>') => {
                let tag = Tag {
                    name,
                    attrs,
                    closing,
                    self_closing: true,
                };
                return Ok((tag, i + 2));
            }
            Some(_) => {}
        }
        let attr_start = i;
        while i < b.len() && is_name(b[i]) {
            i += 1;
        }
        if i == attr_start {
            return Err(err("expected an attribute name", attr_start));
        }
        let attr = &xml[attr_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return Err(err("expected = after attribute name", i));
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let Some(&quote @ (b'"' | b'\'')) = b.get(i) else {
            return Err(err("expected a quoted attribute value", i));
        };
        let value_start = i + 1;
        let value_end = xml[value_start..]
            .find(quote as char)
            .map(|p| value_start + p)
            .ok_or_else(|| err("unterminated attribute value", value_start))?;
        attrs.push((attr, decode_entities(&xml[value_start..value_end])?));
        i = value_end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMMY_META: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Dummy" version="1.0">
<version>1.1</version>
<!-- a comment with <parameter name="fake"> inside -->
<longdesc lang="en">An agent &amp; its <![CDATA[<docs>]]>.</longdesc>
<shortdesc lang="en">Example stateless resource agent</shortdesc>
<parameters>
<parameter name="state" unique="1" required="0">
<longdesc lang="en">Location to store the resource state in.</longdesc>
<shortdesc lang="en">State file</shortdesc>
<content type="string" default="/run/Dummy-${OCF_RESOURCE_INSTANCE}.state" />
</parameter>
<parameter name="ip" required="1">
<shortdesc lang="en">IPv4 &lt;address&gt;</shortdesc>
<content type="string"/>
</parameter>
<parameter name='legacy' required="true" unique="0">
<content type="boolean" default="false"/>
</parameter>
<parameter name="flag"/>
</parameters>
<actions>
<action name="start"        timeout="20s" />
<action name="stop"         timeout="20" />
<action name="monitor"      timeout="20s" interval="10s" depth="0"/>
<action name="monitor"      timeout="30s" interval="9s" role="Promoted"/>
<action name="reload"       timeout="2min" />
<action name="meta-data"    timeout="5000ms" />
<action name="validate-all" timeout="20s" />
</actions>
</resource-agent>
"#;

    #[test]
    fn scans_meta_data() {
        let md = MetaData::parse(DUMMY_META).unwrap();
        assert_eq!(md.name.as_deref(), Some("Dummy"));
        assert_eq!(md.agent_version.as_deref(), Some("1.0"));
        assert_eq!(md.ocf_version.as_deref(), Some("1.1"));
        let names: Vec<&str> = md.parameters.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["state", "ip", "legacy", "flag"]);
        let state = md.param("state").unwrap();
        assert!(!state.required && state.unique);
        assert_eq!(
            state.default.as_deref(),
            Some("/run/Dummy-${OCF_RESOURCE_INSTANCE}.state")
        );
        assert_eq!(state.shortdesc.as_deref(), Some("State file"));
        let ip = md.param("ip").unwrap();
        assert!(ip.required && ip.default.is_none());
        assert_eq!(ip.shortdesc.as_deref(), Some("IPv4 <address>"));
        assert!(md.param("legacy").unwrap().required);
        assert_eq!(
            md.param("legacy").unwrap().content_type.as_deref(),
            Some("boolean")
        );
        assert!(md.param("fake").is_none());
        assert_eq!(md.timeout_ms(OcfAction::Start), Some(20_000));
        assert_eq!(md.timeout_ms(OcfAction::Stop), Some(20_000));
        assert_eq!(md.timeout_ms(OcfAction::Reload), Some(120_000));
        assert_eq!(md.timeout_ms(OcfAction::MetaData), Some(5_000));
        assert_eq!(md.timeout_ms(OcfAction::Promote), None);
        let monitors: Vec<&ActionSpec> =
            md.actions.iter().filter(|a| a.name == "monitor").collect();
        assert_eq!(monitors.len(), 2);
        assert_eq!(monitors[0].interval_ms, Some(10_000));
        assert_eq!(monitors[0].depth.as_deref(), Some("0"));
        assert_eq!(monitors[1].role.as_deref(), Some("Promoted"));
    }

    #[test]
    fn rejects_broken_meta_data() {
        assert!(MetaData::parse("not xml at all").is_err());
        assert!(MetaData::parse("<resource-agent name=\"x\"").is_err());
        assert!(MetaData::parse("<resource-agent name=x>").is_err());
        assert!(
            MetaData::parse("<resource-agent><parameter required=\"1\"/></resource-agent>")
                .is_err()
        );
        assert!(MetaData::parse(
            "<resource-agent><action name=\"start\" timeout=\"soon\"/></resource-agent>"
        )
        .is_err());
        assert!(MetaData::parse("<resource-agent><!-- open </resource-agent>").is_err());
        assert!(MetaData::parse("<resource-agent name=\"a&bogus;\"/>").is_err());
        assert!(
            MetaData::parse("<resource-agent name=\"&#x41;&#66;\"/>")
                .unwrap()
                .name
                .as_deref()
                == Some("AB")
        );
    }

    #[test]
    fn required_params_are_checked() {
        let md = MetaData::parse(DUMMY_META).unwrap();
        let e = check_params(&md, &[]).unwrap_err();
        match &e {
            OcfError::MissingParams { agent, names } => {
                assert_eq!(agent, "Dummy");
                // legacy is required but has a default.
                assert_eq!(names, &["ip".to_owned()]);
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("requires parameter(s) ip"), "{e}");
        let given = vec![
            ("ip".to_owned(), "10.0.0.1".to_owned()),
            ("bogus".to_owned(), "1".to_owned()),
        ];
        assert!(check_params(&md, &given).is_ok());
        assert_eq!(unknown_params(&md, &given), ["bogus"]);
        let bad_name = vec![("ip-addr".to_owned(), "x".to_owned())];
        assert!(matches!(
            check_params(&md, &bad_name),
            Err(OcfError::BadName { .. })
        ));
    }

    #[test]
    fn exit_codes_map_to_statuses() {
        use OcfStatus::*;
        let table = [
            (0, Success),
            (1, ErrGeneric),
            (2, ErrArgs),
            (3, ErrUnimplemented),
            (4, ErrPerm),
            (5, ErrInstalled),
            (6, ErrConfigured),
            (7, NotRunning),
            (8, RunningPromoted),
            (9, FailedPromoted),
            (190, Degraded),
            (191, DegradedPromoted),
            (42, Unknown(42)),
        ];
        for (code, status) in table {
            assert_eq!(OcfStatus::from_exit_code(code), status);
            assert_eq!(status.exit_code(), Some(code));
        }
        for s in [
            Success,
            RunningPromoted,
            FailedPromoted,
            Degraded,
            DegradedPromoted,
        ] {
            assert!(s.is_running(), "{s}");
        }
        for s in [NotRunning, ErrGeneric, Timeout, SpawnFailed, Unknown(42)] {
            assert!(!s.is_running(), "{s}");
        }
        for s in [
            ErrArgs,
            ErrUnimplemented,
            ErrPerm,
            ErrInstalled,
            ErrConfigured,
        ] {
            assert!(s.is_hard_error(), "{s}");
        }
        for s in [
            Success,
            ErrGeneric,
            NotRunning,
            Unknown(42),
            Timeout,
            Signaled(9),
        ] {
            assert!(!s.is_hard_error(), "{s}");
        }
        assert!(ErrConfigured.is_fatal() && !ErrInstalled.is_fatal());
        assert!(RunningPromoted.is_promoted() && !Success.is_promoted());
        assert_eq!(NotRunning.to_string(), "not running (7)");
        assert_eq!(Timeout.to_string(), "timed out");
        assert_eq!(Timeout.exit_code(), None);
        assert_eq!(Unknown(42).to_string(), "unknown error (exit 42)");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("20"), Some(20_000));
        assert_eq!(parse_duration_ms("20s"), Some(20_000));
        assert_eq!(parse_duration_ms(" 15 sec "), Some(15_000));
        assert_eq!(parse_duration_ms("100ms"), Some(100));
        assert_eq!(parse_duration_ms("2m"), Some(120_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("1500us"), Some(2));
        for bad in ["", "s", "-1", "1.5s", "10 parsecs"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn actions_and_specs() {
        for a in OcfAction::ALL {
            assert_eq!(a.as_str().parse::<OcfAction>().unwrap(), a);
        }
        assert!("metadata".parse::<OcfAction>().is_err());
        let root = Path::new("/usr/lib/ocf");
        let a = OcfAgent::from_spec("heartbeat:IPaddr2", "vip", root).unwrap();
        assert_eq!(
            a.path,
            Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2")
        );
        assert_eq!(
            (a.provider.as_str(), a.type_name.as_str()),
            ("heartbeat", "IPaddr2")
        );
        let a = OcfAgent::from_spec("ocf:pacemaker:Dummy", "d", root).unwrap();
        assert_eq!(a.path, Path::new("/usr/lib/ocf/resource.d/pacemaker/Dummy"));
        let a = OcfAgent::from_spec("/opt/ra/acme/app", "x", root).unwrap();
        assert_eq!(a.path, Path::new("/opt/ra/acme/app"));
        assert_eq!((a.provider.as_str(), a.type_name.as_str()), ("acme", "app"));
        for bad in ["IPaddr2", "heartbeat:", ":x", "a/b:c", "rel/path"] {
            assert!(OcfAgent::from_spec(bad, "x", root).is_err(), "{bad}");
        }
        let a = OcfAgent::new("heartbeat", "Dummy", "d")
            .with_timeout_ms(OcfAction::Stop, 5)
            .with_timeout_ms(OcfAction::Stop, 7);
        assert_eq!(a.timeout_ms(OcfAction::Stop), 7);
        assert_eq!(a.timeout_ms(OcfAction::Start), DEFAULT_TIMEOUT_MS);
    }

    #[test]
    fn exit_reason_and_display() {
        let r = OcfResult {
            action: OcfAction::Start,
            status: OcfStatus::ErrConfigured,
            exit_code: Some(6),
            stdout: String::new(),
            stderr: "noise\nocf-exit-reason:ip is not set\nmore noise\n".into(),
            elapsed_ms: 3,
            error: None,
        };
        assert_eq!(r.exit_reason(), Some("ip is not set"));
        assert_eq!(
            r.to_string(),
            "start: not configured (6) in 3 ms: ip is not set"
        );
    }
}
