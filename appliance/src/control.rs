//! The control socket: a Unix stream socket (mode 0600) through which a running node
//! is inspected and driven (`twinsan alua show|set`; later the HA manager's peer).
//!
//! Owns: the control protocol (a sans-IO request parser and handler, tested without
//! sockets), the socket's lifecycle (stale socket removal, permissions, removal at
//! exit) and the client used by the CLI.
//!
//! Protocol (version 1), one request per connection, UTF-8 text:
//!
//! ```text
//! request  = command LF                      (at most 1024 bytes)
//! command  = "ping"
//!          | "alua" SP "show" [SP target]
//!          | "alua" SP "set" SP group SP state [SP target]
//!          | "repl" SP "status" [SP name] [SP "json"]
//!          | "repl" SP verb SP name [SP option]
//! verb     = "primary" [SP "force"] | "secondary" | "connect" [SP "discard-my-data"]
//!          | "disconnect" | "verify" | "invalidate" | "outdate" | "resume-io" | "down"
//! response = ("ok" | "error: " reason) LF *(line LF)   then the server closes
//! line     = "target=" iqn SP "group=" id SP "state=" state SP "preferred=" yes|no
//!            SP "ports=" id *("," id) SP "cause=" none|explicit|implicit
//! ```
//!
//! `alua set` changes the group on every target that has it (or only on `target`),
//! answers with the resulting lines of those groups, and is an *implicit* transition:
//! every I_T nexus of the affected LUs gets ASYMMETRIC ACCESS STATE CHANGED. Malformed
//! requests get `error: ...` naming what is wrong; nothing is changed then.
//!
//! `repl status` answers one line per replicated volume (`name=... role=... disk=...
//! conn=...`), or with `json` one line of JSON: an object for a named volume, an array
//! otherwise. A `repl` verb answers `ok` once the volume's owner task accepted it, or
//! `error: REASON` when the replica refused (e.g. promoting stale data without force).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use twinsan_scsi::alua::ChangeCause;
use twinsan_scsi::{AccessState, AluaState};

/// Longest request line accepted, in bytes (newline included).
pub const REQUEST_MAX_BYTES: usize = 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The ALUA state of every target of the node, by IQN.
pub type Targets = Vec<(String, Arc<AluaState>)>;

/// What the control socket drives: ALUA states and replicated volumes.
#[derive(Debug, Default)]
pub struct Context {
    /// ALUA state of every target.
    pub alua: Targets,
    /// Every replicated volume's owner task.
    pub replicated: Vec<twinsan_replication::driver::Handle>,
    /// The HA manager, when `[cluster]` is configured.
    pub ha: Option<crate::ha::runtime::HaHandle>,
    /// The iSCSI server (sessions for status).
    pub server: Option<Arc<twinsan_iscsi::Server>>,
}

/// An operator verb on one replicated volume (modelled on drbdadm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplVerb {
    /// Become primary.
    Primary {
        /// Also with Inconsistent/Outdated data (it becomes the newest).
        force: bool,
    },
    /// Become secondary.
    Secondary,
    /// Start connecting.
    Connect {
        /// This node is the split-brain victim.
        discard_my_data: bool,
    },
    /// Drop the connection, stop connecting.
    Disconnect,
    /// Online verify against the peer.
    Verify,
    /// Discard local data; full resync from the peer.
    Invalidate,
    /// Mark the local (secondary) data Outdated.
    Outdate,
    /// Resume I/O frozen by fencing.
    ResumeIo,
    /// Disconnect, demote, mark the metadata clean (the volume stays attached).
    Down,
}

impl ReplVerb {
    fn words(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ReplVerb::Primary { force } => ("primary", force.then_some("force")),
            ReplVerb::Secondary => ("secondary", None),
            ReplVerb::Connect { discard_my_data } => {
                ("connect", discard_my_data.then_some("discard-my-data"))
            }
            ReplVerb::Disconnect => ("disconnect", None),
            ReplVerb::Verify => ("verify", None),
            ReplVerb::Invalidate => ("invalidate", None),
            ReplVerb::Outdate => ("outdate", None),
            ReplVerb::ResumeIo => ("resume-io", None),
            ReplVerb::Down => ("down", None),
        }
    }

    fn admin(&self) -> twinsan_replication::replica::AdminCmd {
        use twinsan_replication::replica::AdminCmd;
        match *self {
            ReplVerb::Primary { force } => AdminCmd::Primary { force },
            ReplVerb::Secondary => AdminCmd::Secondary,
            ReplVerb::Connect { discard_my_data } => AdminCmd::Connect { discard_my_data },
            ReplVerb::Disconnect => AdminCmd::Disconnect,
            ReplVerb::Verify => AdminCmd::Verify,
            ReplVerb::Invalidate => AdminCmd::Invalidate,
            ReplVerb::Outdate => AdminCmd::Outdate,
            ReplVerb::ResumeIo => AdminCmd::ResumeIo,
            ReplVerb::Down => AdminCmd::Down,
        }
    }
}

const REPL_USAGE: &str = "usage: repl status [NAME] [json] | repl primary NAME [force] | \
     repl secondary NAME | repl connect NAME [discard-my-data] | repl disconnect NAME | \
     repl verify NAME | repl invalidate NAME | repl outdate NAME | repl resume-io NAME | \
     repl down NAME";

fn parse_repl(words: &[&str]) -> Result<Request, String> {
    let own = |w: &&str| (*w).to_owned();
    match words {
        ["status"] => Ok(Request::ReplStatus {
            name: None,
            json: false,
        }),
        ["status", "json"] => Ok(Request::ReplStatus {
            name: None,
            json: true,
        }),
        ["status", n] => Ok(Request::ReplStatus {
            name: Some(own(n)),
            json: false,
        }),
        ["status", n, "json"] => Ok(Request::ReplStatus {
            name: Some(own(n)),
            json: true,
        }),
        [verb, n, rest @ ..] => {
            let v = match (*verb, rest) {
                ("primary", []) => ReplVerb::Primary { force: false },
                ("primary", ["force"]) => ReplVerb::Primary { force: true },
                ("secondary", []) => ReplVerb::Secondary,
                ("connect", []) => ReplVerb::Connect {
                    discard_my_data: false,
                },
                ("connect", ["discard-my-data"]) => ReplVerb::Connect {
                    discard_my_data: true,
                },
                ("disconnect", []) => ReplVerb::Disconnect,
                ("verify", []) => ReplVerb::Verify,
                ("invalidate", []) => ReplVerb::Invalidate,
                ("outdate", []) => ReplVerb::Outdate,
                ("resume-io", []) => ReplVerb::ResumeIo,
                ("down", []) => ReplVerb::Down,
                _ => return Err(REPL_USAGE.into()),
            };
            Ok(Request::Repl {
                verb: v,
                name: own(n),
            })
        }
        _ => Err(REPL_USAGE.into()),
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Liveness check.
    Ping,
    /// Show the target port groups (of one target).
    AluaShow {
        /// Only this target.
        target: Option<String>,
    },
    /// Implicit transition of a group.
    AluaSet {
        /// Target port group id.
        group: u16,
        /// New state.
        state: AccessState,
        /// Only this target.
        target: Option<String>,
    },
    /// Status of the replicated volumes (or one).
    ReplStatus {
        /// Only this volume.
        name: Option<String>,
        /// One JSON line instead of text.
        json: bool,
    },
    /// An operator verb on a replicated volume.
    Repl {
        /// What to do.
        verb: ReplVerb,
        /// The volume.
        name: String,
    },
    /// The HA manager's view as one JSON line.
    HaStatus,
    /// An HA operator command.
    Ha(HaVerb),
    /// An operator command on one external resource of the HA manager.
    HaResource {
        /// The resource.
        name: String,
        /// What to do.
        verb: ResourceVerb,
    },
    /// Logged-in iSCSI sessions as one JSON line.
    Sessions,
    /// A replicated volume's fence-peer handler: may this head write alone? Answers
    /// `ok` and one line `EXIT_CODE reason`.
    HaResolvePeer,
}

/// An HA operator command (Pacemaker's crm_resource/crm_node verbs for the one service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaVerb {
    /// Move the service to this head.
    Move,
    /// Move the service away from this head.
    MoveAway,
    /// Forget the move.
    Unmove,
    /// This head runs nothing.
    Standby,
    /// Leave standby.
    Online,
    /// Reset failcounts / a blocked state.
    Cleanup,
    /// Maintenance mode on/off.
    Maintenance(bool),
}

impl HaVerb {
    fn words(&self) -> &'static str {
        match self {
            HaVerb::Move => "move",
            HaVerb::MoveAway => "move away",
            HaVerb::Unmove => "unmove",
            HaVerb::Standby => "standby",
            HaVerb::Online => "online",
            HaVerb::Cleanup => "cleanup",
            HaVerb::Maintenance(true) => "maintenance on",
            HaVerb::Maintenance(false) => "maintenance off",
        }
    }

    fn admin(&self) -> twinsan_ha::manager::AdminCmd {
        use twinsan_ha::manager::AdminCmd;
        match *self {
            HaVerb::Move => AdminCmd::Move { here: true },
            HaVerb::MoveAway => AdminCmd::Move { here: false },
            HaVerb::Unmove => AdminCmd::Unmove,
            HaVerb::Standby => AdminCmd::Standby,
            HaVerb::Online => AdminCmd::Online,
            HaVerb::Cleanup => AdminCmd::Cleanup,
            HaVerb::Maintenance(on) => AdminCmd::Maintenance(on),
        }
    }
}

/// An operator command on one external resource (Pacemaker's crm_resource verbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceVerb {
    /// target-role started.
    Start,
    /// target-role stopped.
    Stop,
    /// Manage it again.
    Manage,
    /// Watch only.
    Unmanage,
    /// Forget its failures and blocks, probe again.
    Cleanup,
}

impl ResourceVerb {
    /// The word.
    pub fn word(&self) -> &'static str {
        match self {
            ResourceVerb::Start => "start",
            ResourceVerb::Stop => "stop",
            ResourceVerb::Manage => "manage",
            ResourceVerb::Unmanage => "unmanage",
            ResourceVerb::Cleanup => "cleanup",
        }
    }

    /// Parse the word.
    pub fn parse(w: &str) -> Option<Self> {
        [
            ResourceVerb::Start,
            ResourceVerb::Stop,
            ResourceVerb::Manage,
            ResourceVerb::Unmanage,
            ResourceVerb::Cleanup,
        ]
        .into_iter()
        .find(|v| v.word() == w)
    }

    fn command(&self, name: &str) -> twinsan_ha::policy::ResourceCmd {
        use twinsan_ha::policy::ResourceCmd;
        let n = name.to_string();
        match self {
            ResourceVerb::Start => ResourceCmd::Start(n),
            ResourceVerb::Stop => ResourceCmd::Stop(n),
            ResourceVerb::Manage => ResourceCmd::Manage(n),
            ResourceVerb::Unmanage => ResourceCmd::Unmanage(n),
            ResourceVerb::Cleanup => ResourceCmd::Cleanup(Some(n)),
        }
    }
}

const HA_USAGE: &str = "usage: ha status | ha move [away] | ha unmove | ha standby | ha online | \
     ha cleanup | ha maintenance on|off | ha fence-peer | \
     ha resource NAME start|stop|manage|unmanage|cleanup";

fn parse_ha(words: &[&str]) -> Result<Request, String> {
    Ok(match words {
        ["status"] => Request::HaStatus,
        ["move"] => Request::Ha(HaVerb::Move),
        ["move", "away"] => Request::Ha(HaVerb::MoveAway),
        ["unmove"] => Request::Ha(HaVerb::Unmove),
        ["standby"] => Request::Ha(HaVerb::Standby),
        ["online"] => Request::Ha(HaVerb::Online),
        ["cleanup"] => Request::Ha(HaVerb::Cleanup),
        ["maintenance", "on"] => Request::Ha(HaVerb::Maintenance(true)),
        ["maintenance", "off"] => Request::Ha(HaVerb::Maintenance(false)),
        ["fence-peer"] => Request::HaResolvePeer,
        ["resource", name, verb] => match ResourceVerb::parse(verb) {
            Some(verb) => Request::HaResource {
                name: (*name).to_string(),
                verb,
            },
            None => return Err(HA_USAGE.into()),
        },
        _ => return Err(HA_USAGE.into()),
    })
}

impl Request {
    /// Parse one request line (without or with its trailing newline).
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() >= REQUEST_MAX_BYTES {
            return Err(format!("request longer than {REQUEST_MAX_BYTES} bytes"));
        }
        let words: Vec<&str> = line.split_ascii_whitespace().collect();
        let target = |w: Option<&&str>| w.map(|t| (*t).to_owned());
        match words.as_slice() {
            [] => Err("empty request (try \"alua show\")".into()),
            ["ping"] => Ok(Request::Ping),
            ["alua", "show"] | ["alua", "show", _] => Ok(Request::AluaShow {
                target: target(words.get(2)),
            }),
            ["alua", "set", group, state] | ["alua", "set", group, state, _] => {
                let group = group.parse::<u16>().map_err(|_| {
                    format!("group {group:?} is not a target port group id (0..=65535)")
                })?;
                let state = state.parse::<AccessState>().map_err(|e| e.to_string())?;
                Ok(Request::AluaSet {
                    group,
                    state,
                    target: target(words.get(4)),
                })
            }
            ["alua"] => Err("usage: alua show [TARGET] | alua set GROUP STATE [TARGET]".into()),
            ["alua", "set", ..] => Err("usage: alua set GROUP STATE [TARGET]".into()),
            ["alua", "show", ..] => Err("usage: alua show [TARGET]".into()),
            ["alua", other, ..] => Err(format!("unknown alua command {other:?} (show, set)")),
            ["repl", rest @ ..] => parse_repl(rest),
            ["ha", rest @ ..] => parse_ha(rest),
            ["sessions"] => Ok(Request::Sessions),
            [other, ..] => Err(format!(
                "unknown command {other:?} (ping, alua, repl, ha, sessions)"
            )),
        }
    }

    /// The request line (with newline) for this request.
    pub fn encode(&self) -> String {
        match self {
            Request::Ping => "ping\n".into(),
            Request::AluaShow { target: None } => "alua show\n".into(),
            Request::AluaShow { target: Some(t) } => format!("alua show {t}\n"),
            Request::AluaSet {
                group,
                state,
                target,
            } => match target {
                None => format!("alua set {group} {state}\n"),
                Some(t) => format!("alua set {group} {state} {t}\n"),
            },
            Request::ReplStatus { name, json } => {
                let mut l = "repl status".to_owned();
                if let Some(n) = name {
                    l.push(' ');
                    l.push_str(n);
                }
                if *json {
                    l.push_str(" json");
                }
                l.push('\n');
                l
            }
            Request::Repl { verb, name } => match verb.words() {
                (v, None) => format!("repl {v} {name}\n"),
                (v, Some(o)) => format!("repl {v} {name} {o}\n"),
            },
            Request::HaStatus => "ha status\n".into(),
            Request::Ha(v) => format!("ha {}\n", v.words()),
            Request::Sessions => "sessions\n".into(),
            Request::HaResolvePeer => "ha fence-peer\n".into(),
            Request::HaResource { name, verb } => {
                format!("ha resource {name} {}\n", verb.word())
            }
        }
    }
}

/// A response: `Ok(lines)` or `Err(reason)`.
pub type Response = Result<Vec<String>, String>;

/// Encode a response for the wire.
pub fn encode_response(r: &Response) -> String {
    let mut out = String::new();
    match r {
        Ok(lines) => {
            out.push_str("ok\n");
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        Err(e) => {
            out.push_str("error: ");
            out.push_str(&e.replace('\n', " "));
            out.push('\n');
        }
    }
    out
}

/// Decode a response read up to the server's close.
pub fn decode_response(text: &str) -> Response {
    let mut lines = text.lines();
    match lines.next() {
        Some("ok") => Ok(lines.map(str::to_owned).collect()),
        Some(l) => match l.strip_prefix("error: ") {
            Some(e) => Err(e.to_owned()),
            None => Err(format!("malformed response {l:?}")),
        },
        None => Err("empty response (is this a twinsan control socket?)".into()),
    }
}

fn group_line(target: &str, g: &twinsan_scsi::PortGroupStatus) -> String {
    let ports: Vec<String> = g.relative_port_ids.iter().map(u16::to_string).collect();
    let cause = match g.cause {
        ChangeCause::None => "none",
        ChangeCause::Explicit => "explicit",
        ChangeCause::Implicit => "implicit",
    };
    format!(
        "target={target} group={} state={} preferred={} ports={} cause={cause}",
        g.id,
        g.state,
        if g.preferred { "yes" } else { "no" },
        ports.join(",")
    )
}

fn selected<'a>(
    targets: &'a Targets,
    only: &Option<String>,
) -> Result<Vec<&'a (String, Arc<AluaState>)>, String> {
    let v: Vec<_> = targets
        .iter()
        .filter(|(iqn, _)| only.as_ref().is_none_or(|t| t == iqn))
        .collect();
    match (only, v.is_empty()) {
        (Some(t), true) => Err(format!("no target {t}")),
        _ => Ok(v),
    }
}

/// Execute one request line against the node (ALUA requests are answered at once,
/// replicated volumes through their owner tasks).
pub async fn handle_async(line: &str, ctx: &Context) -> Response {
    match Request::parse(line)? {
        Request::ReplStatus { name, json } => {
            let chosen: Vec<_> = ctx
                .replicated
                .iter()
                .filter(|h| name.as_ref().is_none_or(|n| n == h.name()))
                .collect();
            if let (Some(n), true) = (&name, chosen.is_empty()) {
                return Err(format!("no replicated volume {n}"));
            }
            let mut statuses = Vec::new();
            for h in chosen {
                match h.status().await {
                    Some(s) => statuses.push(s),
                    None => return Err(format!("replicated volume {} is stopped", h.name())),
                }
            }
            if json {
                let objs: Vec<String> = statuses.iter().map(|s| s.to_json()).collect();
                Ok(vec![if name.is_some() {
                    objs.concat()
                } else {
                    format!("[{}]", objs.join(","))
                }])
            } else {
                Ok(statuses.iter().map(|s| s.summary()).collect())
            }
        }
        Request::Repl { verb, name } => {
            let Some(h) = ctx.replicated.iter().find(|h| h.name() == name) else {
                return Err(format!("no replicated volume {name}"));
            };
            tracing::info!(volume = %name, ?verb, "replication verb through the control socket");
            h.admin(verb.admin()).await.map_err(|e| e.to_string())?;
            Ok(Vec::new())
        }
        Request::HaStatus => match &ctx.ha {
            None => Err("this node has no [cluster] section (no HA manager)".into()),
            Some(h) => Ok(vec![
                serde_json::to_string(&*h.snapshot()).map_err(|e| e.to_string())?
            ]),
        },
        Request::Ha(verb) => match &ctx.ha {
            None => Err("this node has no [cluster] section (no HA manager)".into()),
            Some(h) => {
                tracing::info!(verb = verb.words(), "HA command through the control socket");
                h.admin(verb.admin()).await?;
                Ok(Vec::new())
            }
        },
        Request::HaResource { name, verb } => match &ctx.ha {
            None => Err("this node has no [cluster] section (no HA manager)".into()),
            Some(h) => {
                tracing::info!(resource = %name, verb = verb.word(), "resource command through the control socket");
                h.resource(verb.command(&name)).await?;
                Ok(Vec::new())
            }
        },
        Request::HaResolvePeer => match &ctx.ha {
            None => Err("this node has no [cluster] section (no HA manager)".into()),
            Some(h) => {
                let (code, why) = h.resolve_peer().await;
                Ok(vec![format!("{code} {why}")])
            }
        },
        Request::Sessions => {
            let sessions = ctx
                .server
                .as_ref()
                .map(|s| s.status().sessions)
                .unwrap_or_default();
            let v: Vec<serde_json::Value> = sessions
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "initiator": s.initiator_name,
                        "isid": s.isid,
                        "tsih": s.tsih,
                        "target": s.target,
                        "discovery": s.discovery,
                        "peer": s.peer.to_string(),
                    })
                })
                .collect();
            Ok(vec![serde_json::Value::Array(v).to_string()])
        }
        _ => handle(line, &ctx.alua),
    }
}

/// Execute one request line against the node's targets (ALUA and ping; replication
/// requests need [`handle_async`]).
pub fn handle(line: &str, targets: &Targets) -> Response {
    match Request::parse(line)? {
        Request::ReplStatus { .. }
        | Request::Repl { .. }
        | Request::HaStatus
        | Request::Ha(_)
        | Request::Sessions
        | Request::HaResource { .. }
        | Request::HaResolvePeer => Err("not served here".into()),
        Request::Ping => Ok(vec!["pong".into()]),
        Request::AluaShow { target } => {
            let mut out = Vec::new();
            for (iqn, alua) in selected(targets, &target)? {
                for g in alua.groups() {
                    out.push(group_line(iqn, &g));
                }
            }
            Ok(out)
        }
        Request::AluaSet {
            group,
            state,
            target,
        } => {
            let chosen: Vec<_> = selected(targets, &target)?
                .into_iter()
                .filter(|(_, a)| a.state(group).is_some())
                .collect();
            if chosen.is_empty() {
                return Err(match target {
                    Some(t) => format!("target {t} has no target port group {group}"),
                    None => format!("no target has target port group {group}"),
                });
            }
            let mut out = Vec::new();
            for (iqn, alua) in chosen {
                alua.set(group, state).map_err(|e| e.to_string())?;
                for g in alua.groups().iter().filter(|g| g.id == group) {
                    out.push(group_line(iqn, g));
                }
                tracing::info!(target = %iqn, group, %state, "ALUA state set through the control socket");
            }
            Ok(out)
        }
    }
}

/// Where the control socket goes when the configuration does not say: a `twinsan`
/// directory in `$XDG_RUNTIME_DIR`, in `/run` as root, else `$TMPDIR/twinsan-UID`.
pub fn default_path(name: &str) -> PathBuf {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let file = format!("{name}.sock");
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("twinsan").join(file);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/twinsan").join(file);
    }
    std::env::temp_dir()
        .join(format!("twinsan-{uid}"))
        .join(file)
}

/// A bound control socket; the socket file is removed when it is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Bind `path` (mode 0600). Creates a missing parent directory with mode 0700. An
    /// existing socket that nobody answers on is replaced; a live one is an error (a
    /// second node with the same name), as is any other file there.
    pub fn bind(path: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if !m.file_type().is_socket() {
                anyhow::bail!("{} exists and is not a socket", path.display());
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                anyhow::bail!(
                    "{} is in use by another running twinsan (give --control another path)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        let listener = tokio::net::UnixListener::bind(path)
            .with_context(|| format!("cannot bind control socket {}", path.display()))?;
        let sock = Self {
            listener,
            path: path.to_owned(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
        Ok(sock)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve requests until `shutdown`.
    pub async fn serve(self, targets: Arc<Context>, shutdown: tokio_util::sync::CancellationToken) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok((stream, _)) => {
                        if conns.len() >= 16 {
                            tracing::warn!("too many control connections; dropping one");
                            continue;
                        }
                        let t = targets.clone();
                        conns.spawn(async move {
                            if let Err(e) = serve_one(stream, &t).await {
                                tracing::debug!(error = %e, "control connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.abort_all();
    }
}

async fn serve_one(mut stream: tokio::net::UnixStream, ctx: &Context) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(128);
    let read = async {
        let mut chunk = [0u8; 256];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.contains(&b'\n') || buf.len() >= REQUEST_MAX_BYTES {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => Err("request timed out".to_owned()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {
            let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
            if end >= REQUEST_MAX_BYTES {
                Err(format!("request longer than {REQUEST_MAX_BYTES} bytes"))
            } else {
                match std::str::from_utf8(&buf[..end]) {
                    Ok(line) => handle_async(line, ctx).await,
                    Err(_) => Err("request is not UTF-8".to_owned()),
                }
            }
        }
    };
    stream
        .write_all(encode_response(&response).as_bytes())
        .await?;
    stream.shutdown().await
}

/// Send one request to the control socket at `path` and return its response.
pub fn request(path: &Path, req: &Request) -> anyhow::Result<Response> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("cannot connect to control socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(req.encode().as_bytes())
        .context("cannot send the request")?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .context("cannot read the response")?;
    Ok(decode_response(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinsan_scsi::{AluaConfig, PortGroupConfig};

    fn targets() -> Targets {
        let mk = |groups: Vec<(u16, AccessState, Vec<u16>)>| {
            AluaState::new(AluaConfig::new(
                groups
                    .into_iter()
                    .map(|(id, state, ports)| PortGroupConfig {
                        id,
                        state,
                        preferred: false,
                        relative_port_ids: ports,
                    })
                    .collect(),
            ))
            .unwrap()
        };
        vec![
            (
                "iqn.2026-11.org.x:a".into(),
                mk(vec![
                    (1, AccessState::ActiveOptimized, vec![1]),
                    (2, AccessState::Standby, vec![2]),
                ]),
            ),
            (
                "iqn.2026-11.org.x:b".into(),
                mk(vec![(1, AccessState::ActiveOptimized, vec![1, 3])]),
            ),
        ]
    }

    #[test]
    fn parse_and_encode_round_trip() {
        for r in [
            Request::Ping,
            Request::AluaShow { target: None },
            Request::AluaShow {
                target: Some("iqn.2026-11.org.x:a".into()),
            },
            Request::AluaSet {
                group: 7,
                state: AccessState::Standby,
                target: None,
            },
            Request::AluaSet {
                group: 65535,
                state: AccessState::ActiveNonOptimized,
                target: Some("iqn.2026-11.org.x:b".into()),
            },
            Request::ReplStatus {
                name: None,
                json: false,
            },
            Request::ReplStatus {
                name: None,
                json: true,
            },
            Request::ReplStatus {
                name: Some("r0".into()),
                json: true,
            },
            Request::Repl {
                verb: ReplVerb::Primary { force: true },
                name: "r0".into(),
            },
            Request::Repl {
                verb: ReplVerb::Connect {
                    discard_my_data: true,
                },
                name: "r0".into(),
            },
            Request::Repl {
                verb: ReplVerb::ResumeIo,
                name: "r1".into(),
            },
            Request::Repl {
                verb: ReplVerb::Down,
                name: "r1".into(),
            },
        ] {
            assert_eq!(Request::parse(&r.encode()), Ok(r));
        }
        for bad in [
            "repl",
            "repl primary",
            "repl primary r0 now",
            "repl frob r0",
            "repl status a b",
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert!(e.starts_with("usage: repl"), "{bad}: {e}");
        }
        assert_eq!(
            Request::parse("  alua   set 1 AO\r\n"),
            Ok(Request::AluaSet {
                group: 1,
                state: AccessState::ActiveOptimized,
                target: None
            })
        );
    }

    #[test]
    fn ha_requests_round_trip_and_malformed_ones_get_the_usage() {
        for r in [
            Request::HaStatus,
            Request::HaResolvePeer,
            Request::Sessions,
            Request::Ha(HaVerb::Move),
            Request::Ha(HaVerb::MoveAway),
            Request::Ha(HaVerb::Unmove),
            Request::Ha(HaVerb::Standby),
            Request::Ha(HaVerb::Online),
            Request::Ha(HaVerb::Cleanup),
            Request::Ha(HaVerb::Maintenance(true)),
            Request::Ha(HaVerb::Maintenance(false)),
            Request::HaResource {
                name: "fs".into(),
                verb: ResourceVerb::Unmanage,
            },
            Request::HaResource {
                name: "db-1".into(),
                verb: ResourceVerb::Cleanup,
            },
        ] {
            assert_eq!(Request::parse(&r.encode()), Ok(r));
        }
        for bad in [
            "ha",
            "ha move here",
            "ha maintenance",
            "ha maintenance maybe",
            "ha frob",
            "ha status now",
            "ha resource",
            "ha resource fs",
            "ha resource fs frob",
            "ha resource fs stop now",
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert!(e.starts_with("usage: ha"), "{bad}: {e}");
        }
        // Without [cluster], HA requests are refused with a reason, not served.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let ctx = Context::default();
        for line in [
            "ha status",
            "ha move",
            "ha fence-peer",
            "ha resource fs stop",
        ] {
            let e = rt.block_on(handle_async(line, &ctx)).unwrap_err();
            assert!(e.contains("no [cluster] section"), "{line}: {e}");
        }
    }

    #[test]
    fn malformed_requests_are_refused_with_a_reason() {
        let t = targets();
        for (line, want) in [
            ("", "empty request"),
            ("   \n", "empty request"),
            ("hello", "unknown command \"hello\""),
            ("alua", "usage"),
            ("alua frob", "unknown alua command \"frob\""),
            ("alua set", "usage: alua set"),
            ("alua set 1", "usage: alua set"),
            (
                "alua set x standby",
                "group \"x\" is not a target port group id",
            ),
            ("alua set 70000 standby", "is not a target port group id"),
            ("alua set -1 standby", "is not a target port group id"),
            ("alua set 1 sleepy", "unknown ALUA state \"sleepy\""),
            ("alua set 1 standby t extra", "usage: alua set"),
            ("alua show a b", "usage: alua show"),
            ("alua set 9 standby", "no target has target port group 9"),
            (
                "alua set 2 standby iqn.2026-11.org.x:b",
                "target iqn.2026-11.org.x:b has no target port group 2",
            ),
            (
                "alua show iqn.2026-11.org.x:zz",
                "no target iqn.2026-11.org.x:zz",
            ),
        ] {
            let r = handle(line, &t);
            let e = r.expect_err(line);
            assert!(e.contains(want), "{line:?}: {e}");
        }
        let long = format!("alua show {}", "x".repeat(2000));
        assert!(handle(&long, &t).unwrap_err().contains("longer than"));
        // Nothing changed.
        assert_eq!(t[0].1.state(2), Some(AccessState::Standby));
        assert_eq!(t[0].1.state(1), Some(AccessState::ActiveOptimized));
        assert_eq!(t[1].1.state(1), Some(AccessState::ActiveOptimized));
    }

    #[test]
    fn show_and_set() {
        let t = targets();
        assert_eq!(handle("ping", &t), Ok(vec!["pong".to_owned()]));
        assert_eq!(
            handle("alua show", &t).unwrap(),
            vec![
                "target=iqn.2026-11.org.x:a group=1 state=active-optimized preferred=no ports=1 cause=none",
                "target=iqn.2026-11.org.x:a group=2 state=standby preferred=no ports=2 cause=none",
                "target=iqn.2026-11.org.x:b group=1 state=active-optimized preferred=no ports=1,3 cause=none",
            ]
        );
        // Group 1 on every target that has it.
        assert_eq!(
            handle("alua set 1 standby", &t).unwrap(),
            vec![
                "target=iqn.2026-11.org.x:a group=1 state=standby preferred=no ports=1 cause=implicit",
                "target=iqn.2026-11.org.x:b group=1 state=standby preferred=no ports=1,3 cause=implicit",
            ]
        );
        // Only one target.
        let r = handle("alua set 1 active-non-optimized iqn.2026-11.org.x:b", &t).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(t[0].1.state(1), Some(AccessState::Standby));
        assert_eq!(t[1].1.state(1), Some(AccessState::ActiveNonOptimized));
        assert_eq!(
            handle("alua show iqn.2026-11.org.x:b", &t).unwrap().len(),
            1
        );
    }

    #[test]
    fn response_encoding() {
        for r in [
            Ok(vec![]),
            Ok(vec!["a=b".to_owned(), "c".to_owned()]),
            Err("no target x".to_owned()),
        ] {
            assert_eq!(decode_response(&encode_response(&r)), r);
        }
        assert_eq!(
            decode_response(&encode_response(&Err("two\nlines".into()))),
            Err("two lines".to_owned())
        );
        assert!(decode_response("").is_err());
        assert!(decode_response("HTTP/1.1 200 OK\n").is_err());
    }

    #[test]
    fn default_path_is_per_name() {
        let p = default_path("export-127.0.0.1:3260");
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            "export-127.0.0.1-3260.sock"
        );
        let dir = p.parent().unwrap().file_name().unwrap().to_str().unwrap();
        assert!(dir == "twinsan" || dir.starts_with("twinsan-"), "{dir}");
    }

    #[test]
    fn socket_round_trip_permissions_and_stale_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("n.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ctx = Arc::new(Context {
            alua: targets(),
            ..Context::default()
        });
        let t = &ctx.alua;
        rt.block_on(async {
            let sock = ControlSocket::bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            let dmode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(dmode & 0o777, 0o700);
            // A second node cannot take a live socket.
            let err = ControlSocket::bind(&path).unwrap_err().to_string();
            assert!(err.contains("in use"), "{err}");
            let stop = tokio_util::sync::CancellationToken::new();
            let server = tokio::spawn(sock.serve(ctx.clone(), stop.clone()));
            let p = path.clone();
            let r = tokio::task::spawn_blocking(move || {
                let a = request(
                    &p,
                    &Request::AluaSet {
                        group: 2,
                        state: AccessState::ActiveOptimized,
                        target: None,
                    },
                )
                .unwrap();
                // A raw malformed request.
                let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
                s.write_all(b"alua set two standby\n").unwrap();
                let mut text = String::new();
                s.read_to_string(&mut text).unwrap();
                (a, text)
            })
            .await
            .unwrap();
            assert_eq!(r.0.unwrap().len(), 1);
            assert!(r.1.starts_with("error: group \"two\""), "{}", r.1);
            stop.cancel();
            server.await.unwrap();
        });
        assert_eq!(t[0].1.state(2), Some(AccessState::ActiveOptimized));
        assert!(!path.exists(), "socket removed at shutdown");
        // A stale socket file (nobody listening) is replaced.
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(l);
        assert!(path.exists());
        rt.block_on(async {
            let s = ControlSocket::bind(&path).unwrap();
            assert_eq!(s.path(), path.as_path());
        });
        // Any other file is left alone.
        std::fs::write(&path, b"x").unwrap();
        rt.block_on(async {
            let err = ControlSocket::bind(&path).unwrap_err().to_string();
            assert!(err.contains("not a socket"), "{err}");
        });
    }
}
