//! Asymmetric logical unit access (ALUA, SPC-4 5.15): target port groups, their
//! asymmetric access states, REPORT TARGET PORT GROUPS, SET TARGET PORT GROUPS, and
//! which commands each state lets through.
//!
//! Owns: [`AluaState`] — the target port groups of one target (id, state, preferred
//! bit, member relative target port ids) — its wire formats, the per-state command
//! gate, and the unit attention ASYMMETRIC ACCESS STATE CHANGED that follows every
//! change. Group membership is fixed when the state is built; states and preferred
//! bits change through [`AluaState::set`] (the interface the HA manager drives: an
//! *implicit* transition) or through SET TARGET PORT GROUPS (an *explicit* one, only
//! when [`AluaConfig::explicit`] is set).
//!
//! A transport attaches the state to its LUs with [`crate::LunMap::with_alua`]; a
//! command's target port group is the group whose members contain the command's
//! [`crate::Nexus::relative_port_id`]. A port in no group is treated as active/optimized
//! (and reported without a target port group designator). Without an `AluaState` the
//! LU reports TPGS=00b and answers RTPG/STPG like any unsupported command.
//!
//! Two heads exporting one volume configure the same groups (each head's own ports
//! in its own group, the peer's listed as a remote group) with different relative
//! port ids, so that both report the same device (NAA id, serial) and the same group
//! table, and initiators group the paths by the state each head reports.
//!
//! Concurrency: the per-command check reads a few atomics (no lock). Changes are
//! serialized by a mutex that also covers the unit attention delivery.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::api::{Nexus, ScsiStatus};
use crate::cdb::{op, Command};
use crate::lun::{unsupported_sense, CmdResult, Exec, LogicalUnit};
use crate::rsoc;
use crate::sense::{asc as spc_asc, key, Sense};

/// Service action of REPORT TARGET PORT GROUPS (MAINTENANCE IN) and SET TARGET PORT
/// GROUPS (MAINTENANCE OUT).
pub const SA_TARGET_PORT_GROUPS: u16 = 0x0A;

/// Additional sense codes of ALUA, as `(asc, ascq)`.
pub mod asc {
    /// LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
    pub const STATE_TRANSITION: (u8, u8) = (0x04, 0x0A);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
    pub const TARGET_PORT_STANDBY: (u8, u8) = (0x04, 0x0B);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE.
    pub const TARGET_PORT_UNAVAILABLE: (u8, u8) = (0x04, 0x0C);
    /// LOGICAL UNIT NOT READY, OFFLINE.
    pub const OFFLINE: (u8, u8) = (0x04, 0x12);
    /// ASYMMETRIC ACCESS STATE CHANGED (unit attention).
    pub const STATE_CHANGED: (u8, u8) = (0x2A, 0x06);
}

/// An asymmetric access state (SPC-4 table 36 codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessState {
    /// Active/optimized (0h): every command, best performance.
    ActiveOptimized,
    /// Active/non-optimized (1h): every command, possibly slower.
    ActiveNonOptimized,
    /// Standby (2h): management and reservation commands only; the rest get NOT READY,
    /// TARGET PORT IN STANDBY STATE.
    Standby,
    /// Unavailable (3h): INQUIRY, REPORT LUNS, REQUEST SENSE and the ALUA commands only.
    Unavailable,
    /// Offline (Eh): INQUIRY, REPORT LUNS and REQUEST SENSE only.
    Offline,
    /// Transitioning (Fh): between two states (e.g. during a failover).
    Transitioning,
}

impl AccessState {
    /// Every state, in code order.
    pub const ALL: [AccessState; 6] = [
        AccessState::ActiveOptimized,
        AccessState::ActiveNonOptimized,
        AccessState::Standby,
        AccessState::Unavailable,
        AccessState::Offline,
        AccessState::Transitioning,
    ];

    /// The 4-bit ASYMMETRIC ACCESS STATE code.
    pub const fn code(self) -> u8 {
        match self {
            AccessState::ActiveOptimized => 0x0,
            AccessState::ActiveNonOptimized => 0x1,
            AccessState::Standby => 0x2,
            AccessState::Unavailable => 0x3,
            AccessState::Offline => 0xE,
            AccessState::Transitioning => 0xF,
        }
    }

    /// The state with this code (`None` for reserved codes and logical block
    /// dependent, which the engine does not support).
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Name used in configuration, the control socket and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            AccessState::ActiveOptimized => "active-optimized",
            AccessState::ActiveNonOptimized => "active-non-optimized",
            AccessState::Standby => "standby",
            AccessState::Unavailable => "unavailable",
            AccessState::Offline => "offline",
            AccessState::Transitioning => "transitioning",
        }
    }

    /// Whether medium access commands are processed in this state.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized
        )
    }

    /// The sense data for commands this state does not process.
    pub const fn not_ready_sense(self) -> Option<Sense> {
        let code = match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return None,
            AccessState::Standby => asc::TARGET_PORT_STANDBY,
            AccessState::Unavailable => asc::TARGET_PORT_UNAVAILABLE,
            AccessState::Offline => asc::OFFLINE,
            AccessState::Transitioning => asc::STATE_TRANSITION,
        };
        Some(Sense::new(key::NOT_READY, code))
    }

    /// Whether `cmd` is processed by a LU reached through a port in this state
    /// (SPC-4 5.15.2.4). Commands the engine does not implement pass, so that they
    /// are reported as unsupported rather than as not ready.
    pub fn allows(self, cmd: &Command) -> bool {
        use Command as C;
        // Allowed in every state.
        if matches!(
            cmd,
            C::Inquiry { .. }
                | C::RequestSense { .. }
                | C::ReportLuns { .. }
                | C::Unsupported { .. }
        ) {
            return true;
        }
        match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => true,
            AccessState::Standby => matches!(
                cmd,
                C::ModeSense { .. }
                    | C::ModeSelect { .. }
                    | C::PersistentReserveIn { .. }
                    | C::PersistentReserveOut { .. }
                    | C::ReportTargetPortGroups { .. }
                    | C::SetTargetPortGroups { .. }
                    | C::ReportSupportedOpcodes { .. }
                    | C::ReadCapacity10 { .. }
                    | C::ReadCapacity16 { .. }
            ),
            AccessState::Unavailable => matches!(
                cmd,
                C::ReportTargetPortGroups { .. }
                    | C::SetTargetPortGroups { .. }
                    | C::ReportSupportedOpcodes { .. }
            ),
            AccessState::Transitioning => matches!(
                cmd,
                C::ReportTargetPortGroups { .. } | C::ReportSupportedOpcodes { .. }
            ),
            AccessState::Offline => false,
        }
    }
}

impl std::fmt::Display for AccessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for an unknown state name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ALUA state {0:?} (use active-optimized, active-non-optimized, standby, unavailable, offline or transitioning)")]
pub struct UnknownState(pub String);

impl std::str::FromStr for AccessState {
    type Err = UnknownState;

    /// Accepts the [`AccessState::name`]s, with `_` for `-` and in any case, and the
    /// short forms `ao`, `an`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.trim().to_ascii_lowercase().replace('_', "-");
        match n.as_str() {
            "ao" | "active/optimized" => return Ok(AccessState::ActiveOptimized),
            "an" | "active/non-optimized" => return Ok(AccessState::ActiveNonOptimized),
            _ => {}
        }
        Self::ALL
            .into_iter()
            .find(|st| st.name() == n)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// One target port group as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroupConfig {
    /// TARGET PORT GROUP identifier.
    pub id: u16,
    /// Initial state.
    pub state: AccessState,
    /// PREF bit: the group is a preferred path.
    pub preferred: bool,
    /// Relative target port identifiers of the member ports (1..=65535, at most 255).
    pub relative_port_ids: Vec<u16>,
}

/// The target port groups of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AluaConfig {
    /// The groups (ids and member ports unique).
    pub groups: Vec<PortGroupConfig>,
    /// Explicit ALUA: SET TARGET PORT GROUPS is accepted (TPGS=11b instead of 01b).
    pub explicit: bool,
    /// IMPLICIT TRANSITION TIME reported in the extended RTPG header, in seconds
    /// (how long initiators should allow a transition to take; 0 = unspecified).
    pub implicit_transition_time_s: u8,
}

impl AluaConfig {
    /// Default implicit transition time.
    pub const DEFAULT_TRANSITION_TIME_S: u8 = 30;

    /// Implicit ALUA with these groups.
    pub fn new(groups: Vec<PortGroupConfig>) -> Self {
        Self {
            groups,
            explicit: false,
            implicit_transition_time_s: Self::DEFAULT_TRANSITION_TIME_S,
        }
    }
}

/// Why an ALUA configuration or change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AluaError {
    /// No groups at all.
    #[error("no target port groups")]
    NoGroups,
    /// Two groups with the same id.
    #[error("target port group {0} is defined twice")]
    DuplicateGroup(u16),
    /// A relative port id in two groups (or twice in one).
    #[error("relative target port {0} is in more than one target port group")]
    DuplicatePort(u16),
    /// Relative port id 0 (reserved).
    #[error("relative target port identifier 0 is reserved")]
    ZeroPort,
    /// More member ports than the RTPG descriptor can count.
    #[error("target port group {0} has more than 255 ports")]
    TooManyPorts(u16),
    /// No group with this id.
    #[error("no target port group {0}")]
    NoSuchGroup(u16),
}

/// What RTPG reports as the cause of a group's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ChangeCause {
    /// No status available (initial state).
    None = 0,
    /// Altered by SET TARGET PORT GROUPS.
    Explicit = 1,
    /// Altered by implicit behaviour (the HA manager / the control socket).
    Implicit = 2,
}

/// A snapshot of one group, for status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortGroupStatus {
    /// TARGET PORT GROUP identifier.
    pub id: u16,
    /// Current state.
    pub state: AccessState,
    /// PREF bit.
    pub preferred: bool,
    /// Member relative target port ids.
    pub relative_port_ids: Vec<u16>,
    /// Cause of the last change.
    pub cause: ChangeCause,
}

#[derive(Debug)]
struct Group {
    id: u16,
    ports: Vec<u16>,
    state: AtomicU8,
    preferred: AtomicBool,
    cause: AtomicU8,
}

impl Group {
    fn state(&self) -> AccessState {
        AccessState::from_code(self.state.load(Ordering::Acquire))
            .unwrap_or(AccessState::Transitioning)
    }
}

/// Target port groups of one target and their states. See the module documentation.
pub struct AluaState {
    groups: Vec<Group>,
    explicit: bool,
    transition_time_s: u8,
    /// LUs to notify (unit attention) after a change.
    units: Mutex<Vec<Weak<LogicalUnit>>>,
    /// Serializes changes (and their unit attentions).
    change: Mutex<()>,
}

impl std::fmt::Debug for AluaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AluaState")
            .field("groups", &self.groups)
            .field("explicit", &self.explicit)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A group id and state to apply, as SET TARGET PORT GROUPS or [`AluaState::set_many`]
/// request it.
pub type Transition = (u16, AccessState);

impl AluaState {
    /// Build the state from a configuration (validated: at least one group, unique
    /// group ids, every relative port id nonzero and in at most one group, at most 255
    /// ports per group).
    pub fn new(cfg: AluaConfig) -> Result<Arc<Self>, AluaError> {
        if cfg.groups.is_empty() {
            return Err(AluaError::NoGroups);
        }
        let mut seen_ports = std::collections::BTreeSet::new();
        let mut seen_ids = std::collections::BTreeSet::new();
        for g in &cfg.groups {
            if !seen_ids.insert(g.id) {
                return Err(AluaError::DuplicateGroup(g.id));
            }
            if g.relative_port_ids.len() > 255 {
                return Err(AluaError::TooManyPorts(g.id));
            }
            for &p in &g.relative_port_ids {
                if p == 0 {
                    return Err(AluaError::ZeroPort);
                }
                if !seen_ports.insert(p) {
                    return Err(AluaError::DuplicatePort(p));
                }
            }
        }
        let groups = cfg
            .groups
            .into_iter()
            .map(|g| Group {
                id: g.id,
                ports: g.relative_port_ids,
                state: AtomicU8::new(g.state.code()),
                preferred: AtomicBool::new(g.preferred),
                cause: AtomicU8::new(ChangeCause::None as u8),
            })
            .collect();
        Ok(Arc::new(Self {
            groups,
            explicit: cfg.explicit,
            transition_time_s: cfg.implicit_transition_time_s,
            units: Mutex::new(Vec::new()),
            change: Mutex::new(()),
        }))
    }

    /// Whether SET TARGET PORT GROUPS is accepted.
    pub fn explicit(&self) -> bool {
        self.explicit
    }

    /// The TPGS field of standard INQUIRY data (already shifted into bits 5..4).
    pub fn tpgs_bits(&self) -> u8 {
        if self.explicit {
            0x30
        } else {
            0x10
        }
    }

    fn group(&self, id: u16) -> Option<&Group> {
        self.groups.iter().find(|g| g.id == id)
    }

    fn group_of_port(&self, relative_port_id: u16) -> Option<&Group> {
        self.groups
            .iter()
            .find(|g| g.ports.contains(&relative_port_id))
    }

    /// The group id and state of the port `relative_port_id`; `None` if it is in no
    /// group.
    pub fn port_state(&self, relative_port_id: u16) -> Option<(u16, AccessState)> {
        self.group_of_port(relative_port_id)
            .map(|g| (g.id, g.state()))
    }

    /// The state of group `id`.
    pub fn state(&self, id: u16) -> Option<AccessState> {
        self.group(id).map(Group::state)
    }

    /// Every group, in configuration order.
    pub fn groups(&self) -> Vec<PortGroupStatus> {
        self.groups
            .iter()
            .map(|g| PortGroupStatus {
                id: g.id,
                state: g.state(),
                preferred: g.preferred.load(Ordering::Acquire),
                relative_port_ids: g.ports.clone(),
                cause: match g.cause.load(Ordering::Acquire) {
                    1 => ChangeCause::Explicit,
                    2 => ChangeCause::Implicit,
                    _ => ChangeCause::None,
                },
            })
            .collect()
    }

    /// Implicit transition of group `id` to `state` (what the HA manager calls).
    /// Establishes ASYMMETRIC ACCESS STATE CHANGED for every I_T nexus of every
    /// attached LU when the state actually changes. Returns whether it changed.
    pub fn set(&self, id: u16, state: AccessState) -> Result<bool, AluaError> {
        self.set_many(&[(id, state)], ChangeCause::Implicit, None)
    }

    /// Set or clear the PREF bit of group `id` (no unit attention: the bit is
    /// informational). Returns whether it changed.
    pub fn set_preferred(&self, id: u16, preferred: bool) -> Result<bool, AluaError> {
        let g = self.group(id).ok_or(AluaError::NoSuchGroup(id))?;
        Ok(g.preferred.swap(preferred, Ordering::AcqRel) != preferred)
    }

    /// Apply several transitions at once (all or none: every group must exist), then
    /// establish the unit attention once for every I_T nexus but `except` (the nexus
    /// that sent SET TARGET PORT GROUPS, SPC-4 5.15.2.3). Returns whether any state
    /// changed.
    pub fn set_many(
        &self,
        transitions: &[Transition],
        cause: ChangeCause,
        except: Option<u64>,
    ) -> Result<bool, AluaError> {
        let _serial = lock(&self.change);
        for (id, _) in transitions {
            if self.group(*id).is_none() {
                return Err(AluaError::NoSuchGroup(*id));
            }
        }
        let mut changed = false;
        for (id, state) in transitions {
            if let Some(g) = self.group(*id) {
                let old = g.state.swap(state.code(), Ordering::AcqRel);
                if old != state.code() {
                    changed = true;
                    g.cause.store(cause as u8, Ordering::Release);
                    tracing::info!(group = id, from = %AccessState::from_code(old).map(AccessState::name).unwrap_or("?"), to = %state, "ALUA state change");
                }
            }
        }
        if changed {
            self.notify(except);
        }
        Ok(changed)
    }

    /// Establish ASYMMETRIC ACCESS STATE CHANGED on every attached LU.
    fn notify(&self, except: Option<u64>) {
        let mut units = lock(&self.units);
        units.retain(|w| w.strong_count() > 0);
        for lu in units.iter().filter_map(Weak::upgrade) {
            lu.ua.establish_all(asc::STATE_CHANGED, except);
        }
    }

    /// Report changes to `lu` (called by [`crate::LunMap::with_alua`]).
    pub(crate) fn attach(&self, lu: &Arc<LogicalUnit>) {
        let mut units = lock(&self.units);
        if !units
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(lu)))
        {
            units.push(Arc::downgrade(lu));
        }
    }

    /// The gate applied to every command after unit attentions: `Err` with the sense
    /// to return when the command's port is in a state that does not process it.
    pub fn check(&self, relative_port_id: u16, cmd: &Command) -> Result<(), Sense> {
        let Some(g) = self.group_of_port(relative_port_id) else {
            return Ok(());
        };
        let state = g.state();
        if state.allows(cmd) {
            return Ok(());
        }
        Err(state
            .not_ready_sense()
            .unwrap_or(Sense::new(key::NOT_READY, spc_asc::LUN_NOT_READY)))
    }

    /// REPORT TARGET PORT GROUPS parameter data (untruncated): length-only header
    /// (`extended == false`, format 000b) or extended header (format 001b).
    pub fn report(&self, extended: bool) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        if extended {
            b.extend_from_slice(&[0x10, self.transition_time_s, 0, 0]);
        }
        for g in &self.groups {
            let state = g.state();
            let pref = if g.preferred.load(Ordering::Acquire) {
                0x80
            } else {
                0
            };
            b.push(pref | state.code());
            // T_SUP O_SUP - LBD_SUP U_SUP S_SUP AN_SUP AO_SUP: all but logical block
            // dependent.
            b.push(0xCF);
            b.extend_from_slice(&g.id.to_be_bytes());
            b.push(0);
            b.push(g.cause.load(Ordering::Acquire));
            b.push(0);
            b.push(g.ports.len().min(255) as u8);
            for p in g.ports.iter().take(255) {
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&p.to_be_bytes());
            }
        }
        let len = (b.len() - 4) as u32;
        b[0..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// Append the target port group designator (type 5, association target port) of
    /// `relative_port_id`'s group to a device identification VPD page and fix up its
    /// PAGE LENGTH. Ports in no group get none.
    pub fn append_tpg_designator(&self, page: &mut Vec<u8>, relative_port_id: u16) {
        let Some(g) = self.group_of_port(relative_port_id) else {
            return;
        };
        if page.len() < 4 {
            return;
        }
        // Code set binary (1), association target port (01b), designator type 5.
        page.extend_from_slice(&[0x01, 0x15, 0x00, 0x04, 0x00, 0x00]);
        page.extend_from_slice(&g.id.to_be_bytes());
        let len = (page.len() - 4).min(usize::from(u16::MAX)) as u16;
        page[2..4].copy_from_slice(&len.to_be_bytes());
    }
}

/// Parse a SET TARGET PORT GROUPS parameter list: a 4-byte reserved header, then
/// 4-byte descriptors (state in byte 0 bits 3..0, group id in bytes 2..4). Requested
/// states must be active/optimized, active/non-optimized, standby or unavailable.
pub fn parse_stpg(params: &[u8]) -> Result<Vec<Transition>, Sense> {
    if params.is_empty() {
        return Ok(Vec::new());
    }
    if params.len() < 4 || !(params.len() - 4).is_multiple_of(4) {
        return Err(Sense::illegal(spc_asc::PARAMETER_LIST_LENGTH_ERROR));
    }
    let mut out = Vec::with_capacity((params.len() - 4) / 4);
    for (i, d) in params[4..].chunks_exact(4).enumerate() {
        let at = (4 + 4 * i) as u16;
        let Some(
            state @ (AccessState::ActiveOptimized
            | AccessState::ActiveNonOptimized
            | AccessState::Standby
            | AccessState::Unavailable),
        ) = AccessState::from_code(d[0] & 0x0F)
        else {
            return Err(Sense::invalid_param(at, Some(3)));
        };
        out.push((u16::from_be_bytes([d[2], d[3]]), state));
    }
    Ok(out)
}

/// REPORT TARGET PORT GROUPS: usage data for REPORT SUPPORTED OPERATION CODES.
const RTPG_USAGE: &[u8] = &[
    op::MAINTENANCE_IN,
    0xFF,
    0,
    0,
    0,
    0,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0,
    0x05,
];
/// SET TARGET PORT GROUPS: usage data.
const STPG_USAGE: &[u8] = &[
    op::MAINTENANCE_OUT,
    0x1F,
    0,
    0,
    0,
    0,
    0xFF,
    0xFF,
    0xFF,
    0xFF,
    0,
    0x05,
];

/// The ALUA commands a LU with this state implements (for RSOC).
fn extra_ops(explicit: bool) -> Vec<rsoc::OpInfo> {
    let mut v = vec![rsoc::OpInfo {
        opcode: op::MAINTENANCE_IN,
        service_action: Some(SA_TARGET_PORT_GROUPS),
        usage: RTPG_USAGE,
    }];
    if explicit {
        v.push(rsoc::OpInfo {
            opcode: op::MAINTENANCE_OUT,
            service_action: Some(SA_TARGET_PORT_GROUPS),
            usage: STPG_USAGE,
        });
    }
    v
}

fn timeouts_descriptor() -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t[8..12].copy_from_slice(&30u32.to_be_bytes());
    t
}

/// REPORT SUPPORTED OPERATION CODES for a LU with ALUA: [`rsoc::report`] plus REPORT
/// TARGET PORT GROUPS (and SET TARGET PORT GROUPS when explicit).
pub fn rsoc_report(
    explicit: bool,
    rctd: bool,
    options: u8,
    opcode: u8,
    service_action: u16,
) -> Result<Vec<u8>, Sense> {
    let extra = extra_ops(explicit);
    match options {
        0 => {
            let base = rsoc::report(rctd, 0, opcode, service_action)?;
            let step = if rctd { 20 } else { 8 };
            let mut entries: Vec<Vec<u8>> = base
                .get(4..)
                .unwrap_or(&[])
                .chunks(step)
                .map(<[u8]>::to_vec)
                .collect();
            for i in &extra {
                let mut d = vec![0u8; 8];
                d[0] = i.opcode;
                d[2..4].copy_from_slice(&i.service_action.unwrap_or(0).to_be_bytes());
                d[5] = 0x01 | if rctd { 0x02 } else { 0 };
                d[6..8].copy_from_slice(&(i.usage.len() as u16).to_be_bytes());
                if rctd {
                    d.extend_from_slice(&timeouts_descriptor());
                }
                entries.push(d);
            }
            let sort_key = |e: &Vec<u8>| (e[0], u16::from_be_bytes([e[2], e[3]]));
            entries.sort_by_key(sort_key);
            let mut b = vec![0u8; 4];
            for e in entries {
                b.extend_from_slice(&e);
            }
            let len = (b.len() - 4) as u32;
            b[0..4].copy_from_slice(&len.to_be_bytes());
            Ok(b)
        }
        1 if extra.iter().any(|i| i.opcode == opcode) => {
            // This opcode has service actions: option 1 is invalid for it.
            Err(Sense::invalid_cdb(2, Some(2)))
        }
        2 => match extra
            .iter()
            .find(|i| i.opcode == opcode && i.service_action == Some(service_action))
        {
            Some(i) => {
                let mut b = vec![0u8; 4];
                b[1] = if rctd { 0x80 } else { 0 } | 0x03;
                b[2..4].copy_from_slice(&(i.usage.len() as u16).to_be_bytes());
                b.extend_from_slice(i.usage);
                if rctd {
                    b.extend_from_slice(&timeouts_descriptor());
                }
                Ok(b)
            }
            None => rsoc::report(rctd, options, opcode, service_action),
        },
        _ => rsoc::report(rctd, options, opcode, service_action),
    }
}

impl LogicalUnit {
    /// The ALUA state this LU reports, if any.
    pub fn alua(&self) -> Option<&Arc<AluaState>> {
        self.alua.get()
    }

    /// REPORT TARGET PORT GROUPS.
    pub(crate) fn report_target_port_groups(
        &self,
        format: u8,
        alloc_len: u32,
        ex: &mut Exec<'_, '_>,
    ) -> CmdResult {
        let Some(alua) = self.alua.get() else {
            return Err(unsupported_sense(op::MAINTENANCE_IN, Some(SA_TARGET_PORT_GROUPS)).into());
        };
        let extended = match format {
            0 => false,
            1 => true,
            _ => return Err(Sense::invalid_cdb(1, Some(7)).into()),
        };
        ex.put(&alua.report(extended), alloc_len as usize);
        Ok(ScsiStatus::Good)
    }

    /// SET TARGET PORT GROUPS (explicit ALUA only).
    pub(crate) fn set_target_port_groups(
        &self,
        param_len: u32,
        ex: &mut Exec<'_, '_>,
    ) -> CmdResult {
        let alua = match self.alua.get() {
            Some(a) if a.explicit() => a,
            _ => {
                return Err(
                    unsupported_sense(op::MAINTENANCE_OUT, Some(SA_TARGET_PORT_GROUPS)).into(),
                )
            }
        };
        ex.xfer = Some(u64::from(param_len));
        let Some(params) = usize::try_from(param_len)
            .ok()
            .and_then(|len| ex.req.data_out.get(..len))
        else {
            return Err(Sense::illegal(spc_asc::PARAMETER_LIST_LENGTH_ERROR).into());
        };
        let transitions = parse_stpg(params)?;
        for (i, (id, _)) in transitions.iter().enumerate() {
            if alua.state(*id).is_none() {
                return Err(Sense::invalid_param((4 + 4 * i + 2) as u16, Some(7)).into());
            }
        }
        let issuer: &Nexus = ex.req.nexus;
        alua.set_many(&transitions, ChangeCause::Explicit, Some(issuer.id))
            .map_err(|_| Sense::invalid_param(4, None))?;
        Ok(ScsiStatus::Good)
    }
}

#[cfg(test)]
mod tests;
