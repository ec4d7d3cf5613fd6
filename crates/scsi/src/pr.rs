//! Persistent reservations (SPC-4 5.13, 6.15, 6.16): PERSISTENT RESERVE IN and OUT, the
//! access rules every other command is checked against, and the durable record of the
//! state.
//!
//! Owns: the registrations and the persistent reservation of one logical unit
//! ([`PrState`]), the service actions that change them, the parameter data that
//! reports them, the per-command access decision (SPC-4 table "SPC commands that are
//! allowed in the presence of various reservations" and the SBC-3 table for block
//! commands), the iSCSI TransportID format, the persistent record ([`record`]) and the
//! stores that keep it ([`store`]). It does not own the SPC-2 RESERVE(6) holder (that
//! stays in `lun.rs`) nor unit attention delivery (it returns *which* registrations must
//! be told *what*; `lun.rs` routes that through the unit attention table).
//!
//! ## Identity
//!
//! Registrations belong to I_T nexuses, which outlive sessions: a registration is keyed
//! by the initiator port (iSCSI: initiator name + ISID, from [`Nexus::initiator_port`],
//! `<name>,i,0x<isid>`) and the relative target port id, never by the transport's
//! session id. Names compare case-insensitively. Two extensions of a plain I_T nexus:
//! a registration without ISID (made through a TransportID of format 00b) covers every
//! initiator port of that iSCSI node, and an ALL_TG_PT registration covers every target
//! port. The most specific registration that covers a nexus is the one it acts through;
//! an ALL_TG_PT registration is changed or removed as a unit through any of its ports.
//!
//! ## Decisions
//!
//! - CRH=1 (SPC-4 5.13.3): RESERVE(6)/RELEASE(6) complete with GOOD and do nothing when
//!   sent by the reservation holder, or by a registrant while a registrants-only or
//!   all-registrants reservation exists; otherwise they get RESERVATION CONFLICT while
//!   any registration exists. While a RESERVE(6) reservation exists, every PERSISTENT
//!   RESERVE IN/OUT gets RESERVATION CONFLICT, also from the holder (SPC-2 5.5.1; Linux
//!   LIO does the same).
//! - Registrations survive I_T nexus loss and logical unit resets (SPC-4).
//! - PTPL_C (and APTPL=1) only with a store ([`crate::LunConfig::pr_store`]); without
//!   one APTPL=1 is refused with INVALID FIELD IN PARAMETER LIST.
//! - Every PERSISTENT RESERVE OUT that changes the state is written to the store before
//!   the command completes; if the store fails, the command ends with HARDWARE ERROR /
//!   INTERNAL TARGET FAILURE (44/00) and the state in memory is unchanged.
//! - PRGENERATION counts every successful REGISTER, REGISTER AND IGNORE EXISTING KEY,
//!   CLEAR, PREEMPT, PREEMPT AND ABORT and REGISTER AND MOVE, except a REGISTER from an
//!   unregistered nexus with a zero service action key (which does nothing at all).
//! - REGISTER AND MOVE without a persistent reservation, or from a registrant that does
//!   not hold it, gets RESERVATION CONFLICT (SPC-4 table "register behaviors for a
//!   REGISTER AND MOVE service action").
//! - At most [`REGISTRATIONS_MAX`] registrations; more get INSUFFICIENT REGISTRATION
//!   RESOURCES (55/04).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::api::Nexus;
use crate::cdb::Command;
use crate::lun::Fail;
use crate::sense::{asc, key, Sense};

pub mod device_store;
pub mod record;
pub mod store;

pub use device_store::{DeviceReservationStore, PR_AREA_BYTES};
pub use record::{decode_record, encode_record, RecordError};
pub use store::{FileReservationStore, MemReservationStore, ReservationStore, StoreError};

/// Most registrations one logical unit holds.
pub const REGISTRATIONS_MAX: usize = 512;

/// Longest initiator name the engine registers, in bytes (iSCSI names are at most 223
/// bytes, RFC 7143 6.6).
pub const INITIATOR_NAME_MAX_BYTES: usize = 223;

/// PROTOCOL IDENTIFIER of iSCSI in TransportIDs.
pub const PROTOCOL_ISCSI: u8 = 0x5;

/// PERSISTENT RESERVE IN service actions.
pub mod prin_sa {
    /// READ KEYS.
    pub const READ_KEYS: u8 = 0x00;
    /// READ RESERVATION.
    pub const READ_RESERVATION: u8 = 0x01;
    /// REPORT CAPABILITIES.
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    /// READ FULL STATUS.
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// PERSISTENT RESERVE OUT service actions.
pub mod prout_sa {
    /// REGISTER.
    pub const REGISTER: u8 = 0x00;
    /// RESERVE.
    pub const RESERVE: u8 = 0x01;
    /// RELEASE.
    pub const RELEASE: u8 = 0x02;
    /// CLEAR.
    pub const CLEAR: u8 = 0x03;
    /// PREEMPT.
    pub const PREEMPT: u8 = 0x04;
    /// PREEMPT AND ABORT.
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    /// REGISTER AND IGNORE EXISTING KEY.
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
    /// REGISTER AND MOVE.
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// Persistent reservation types (SPC-4 table "Persistent reservation type codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PrType {
    /// Write Exclusive.
    WriteExclusive = 0x1,
    /// Exclusive Access.
    ExclusiveAccess = 0x3,
    /// Write Exclusive – Registrants Only.
    WriteExclusiveRegistrantsOnly = 0x5,
    /// Exclusive Access – Registrants Only.
    ExclusiveAccessRegistrantsOnly = 0x6,
    /// Write Exclusive – All Registrants.
    WriteExclusiveAllRegistrants = 0x7,
    /// Exclusive Access – All Registrants.
    ExclusiveAccessAllRegistrants = 0x8,
}

impl PrType {
    /// Every type, by code.
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// The type with TYPE code `code`, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The TYPE code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// All-registrants type: every registrant is a reservation holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants-only type.
    pub fn registrants_only(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveRegistrantsOnly | PrType::ExclusiveAccessRegistrantsOnly
        )
    }

    /// A write exclusive type (reads stay open to everyone).
    pub fn write_exclusive(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive
                | PrType::WriteExclusiveRegistrantsOnly
                | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// Split an initiator port name `<name>,i,0x<isid hex>` into the name and the ISID.
/// Strings without a well-formed ISID part (1 to 12 hex digits) are a name only.
pub fn split_initiator_port(port: &str) -> (&str, Option<u64>) {
    const SEP: &[u8] = b",i,0x";
    let b = port.as_bytes();
    if b.len() > SEP.len() {
        for i in (0..=b.len() - SEP.len()).rev() {
            if b[i..i + SEP.len()].eq_ignore_ascii_case(SEP) {
                // `i` and `i + 5` sit next to ASCII bytes: both are char boundaries.
                let hex = &port[i + SEP.len()..];
                if (1..=12).contains(&hex.len()) && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                    if let Ok(isid) = u64::from_str_radix(hex, 16) {
                        return (&port[..i], Some(isid));
                    }
                }
                break;
            }
        }
    }
    (port, None)
}

/// The I_T nexus (or set of them) a registration belongs to.
#[derive(Debug, Clone)]
pub struct RegisteredPort {
    /// Initiator name (iSCSI name), as first received.
    pub initiator_name: String,
    /// ISID; `None`: every initiator port of the node (TransportID format 00b).
    pub isid: Option<u64>,
    /// Relative target port id; `None`: every target port (ALL_TG_PT).
    pub relative_port_id: Option<u16>,
}

impl PartialEq for RegisteredPort {
    /// Same registration identity (initiator names compare case-insensitively).
    fn eq(&self, other: &Self) -> bool {
        self.initiator_name
            .eq_ignore_ascii_case(&other.initiator_name)
            && self.isid == other.isid
            && self.relative_port_id == other.relative_port_id
    }
}

impl Eq for RegisteredPort {}

impl RegisteredPort {
    /// How specifically this registration covers the nexus (`None`: not at all; higher
    /// is more specific).
    fn covers(&self, who: &Who<'_>) -> Option<u8> {
        if !self.initiator_name.eq_ignore_ascii_case(who.name) {
            return None;
        }
        let mut score = 0;
        match self.isid {
            Some(i) if Some(i) == who.isid => score += 2,
            Some(_) => return None,
            None => {}
        }
        match self.relative_port_id {
            Some(p) if p == who.rel => score += 1,
            Some(_) => return None,
            None => {}
        }
        Some(score)
    }

    /// Whether the I_T nexus with this initiator port name (as in
    /// [`Nexus::initiator_port`]) and relative target port id is covered.
    pub fn matches(&self, initiator_port: &str, relative_port_id: u16) -> bool {
        let (name, isid) = split_initiator_port(initiator_port);
        self.covers(&Who {
            name,
            isid,
            rel: relative_port_id,
        })
        .is_some()
    }

    /// The initiator port name: `<name>,i,0x<isid as 12 hex digits>`, or the name alone
    /// when the registration has no ISID.
    pub fn initiator_port(&self) -> String {
        match self.isid {
            Some(isid) => format!("{},i,0x{isid:012x}", self.initiator_name),
            None => self.initiator_name.clone(),
        }
    }

    /// The iSCSI TransportID of this initiator port (format 01b with an ISID, 00b
    /// without), null terminated and padded to a multiple of 4 bytes (at least 24).
    pub fn transport_id(&self) -> Vec<u8> {
        let format = u8::from(self.isid.is_some());
        let text = self.initiator_port();
        let body_len = (text.len() + 1).max(20).next_multiple_of(4);
        let mut b = Vec::with_capacity(4 + body_len);
        b.push((format << 6) | PROTOCOL_ISCSI);
        b.push(0);
        b.extend_from_slice(&(body_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
        b.extend_from_slice(text.as_bytes());
        b.resize(4 + body_len, 0);
        b
    }
}

/// An initiator port named by a TransportID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportId {
    /// iSCSI name.
    pub name: String,
    /// ISID (format 01b), or `None` (format 00b: the initiator node).
    pub isid: Option<u64>,
}

/// Why a TransportID was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransportIdError {
    /// Fewer bytes than the header or its ADDITIONAL LENGTH says.
    #[error("TransportID truncated")]
    Truncated,
    /// PROTOCOL IDENTIFIER other than iSCSI.
    #[error("TransportID protocol {0:#x} is not iSCSI")]
    Protocol(u8),
    /// FORMAT CODE other than 00b / 01b.
    #[error("TransportID format code {0} not supported")]
    Format(u8),
    /// ADDITIONAL LENGTH below 20 or not a multiple of 4.
    #[error("TransportID additional length {0} invalid")]
    Length(u16),
    /// The name is missing its null terminator, empty, too long, not UTF-8 or malformed.
    #[error("TransportID name malformed")]
    Name,
}

/// Parse one iSCSI TransportID at the start of `b`; returns it and its length in bytes.
pub fn parse_transport_id(b: &[u8]) -> Result<(TransportId, usize), TransportIdError> {
    let hdr = b.get(..4).ok_or(TransportIdError::Truncated)?;
    let proto = hdr[0] & 0x0F;
    if proto != PROTOCOL_ISCSI {
        return Err(TransportIdError::Protocol(proto));
    }
    let format = hdr[0] >> 6;
    let addl = u16::from_be_bytes([hdr[2], hdr[3]]);
    if addl < 20 || !addl.is_multiple_of(4) {
        return Err(TransportIdError::Length(addl));
    }
    let len = 4 + usize::from(addl);
    let body = b.get(4..len).ok_or(TransportIdError::Truncated)?;
    let nul = body
        .iter()
        .position(|&c| c == 0)
        .ok_or(TransportIdError::Name)?;
    let text = std::str::from_utf8(&body[..nul]).map_err(|_| TransportIdError::Name)?;
    let (name, isid) = match format {
        0 => (text, None),
        1 => match split_initiator_port(text) {
            (name, Some(isid)) => (name, Some(isid)),
            (_, None) => return Err(TransportIdError::Name),
        },
        f => return Err(TransportIdError::Format(f)),
    };
    if name.is_empty()
        || name.len() > INITIATOR_NAME_MAX_BYTES
        || name.bytes().any(|c| c.is_ascii_control() || c == b',')
    {
        return Err(TransportIdError::Name);
    }
    Ok((
        TransportId {
            name: name.to_owned(),
            isid,
        },
        len,
    ))
}

/// One registration: an I_T nexus (or set, see [`RegisteredPort`]) and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Who is registered.
    pub port: RegisteredPort,
    /// The reservation key (never zero).
    pub key: u64,
}

/// The persistent reservation (scope is always LU_SCOPE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Type.
    pub pr_type: PrType,
    /// The registration of the holder (for all-registrants types: the registration
    /// that created it, or any remaining one; every registrant is a holder).
    pub holder: RegisteredPort,
    /// The target port of the holding I_T nexus (matters for ALL_TG_PT registrations).
    pub holder_relative_port_id: u16,
}

/// Persistent reservation state of one logical unit.
///
/// Invariants (checked when a record is decoded): registration identities are unique,
/// keys are non-zero, and the reservation's holder is one of the registrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrState {
    /// PRGENERATION.
    pub generation: u32,
    /// The last valid APTPL bit received (activate persist through power loss).
    pub aptpl: bool,
    /// Registrations, in the order they were made.
    pub registrations: Vec<Registration>,
    /// The persistent reservation, if any.
    pub reservation: Option<Reservation>,
}

/// The nexus a command came from, parsed once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Who<'a> {
    pub name: &'a str,
    pub isid: Option<u64>,
    pub rel: u16,
}

impl<'a> Who<'a> {
    pub fn of(n: &'a Nexus) -> Self {
        let (name, isid) = split_initiator_port(&n.initiator_port);
        Who {
            name,
            isid,
            rel: n.relative_port_id,
        }
    }

    fn own_port(&self, all_tg_pt: bool) -> RegisteredPort {
        RegisteredPort {
            initiator_name: self.name.to_owned(),
            isid: self.isid,
            relative_port_id: if all_tg_pt { None } else { Some(self.rel) },
        }
    }
}

impl PrState {
    /// Index of the registration the nexus acts through (the most specific one).
    fn find(&self, who: &Who<'_>) -> Option<usize> {
        self.registrations
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.port.covers(who).map(|s| (s, i)))
            .max_by_key(|&(s, i)| (s, std::cmp::Reverse(i)))
            .map(|(_, i)| i)
    }

    fn index_of(&self, port: &RegisteredPort) -> Option<usize> {
        self.registrations.iter().position(|r| r.port == *port)
    }

    /// Whether the nexus (acting through registration `reg`) holds the reservation.
    fn is_holder(&self, who: &Who<'_>, reg: Option<usize>) -> bool {
        let (Some(res), Some(i)) = (&self.reservation, reg) else {
            return false;
        };
        res.pr_type.all_registrants()
            || (self.registrations[i].port == res.holder && who.rel == res.holder_relative_port_id)
    }

    /// The reservation key READ RESERVATION reports: the holder's key, or zero for the
    /// all-registrants types. `None` without a reservation.
    pub fn reservation_key(&self) -> Option<u64> {
        let res = self.reservation.as_ref()?;
        if res.pr_type.all_registrants() {
            return Some(0);
        }
        Some(
            self.index_of(&res.holder)
                .map_or(0, |i| self.registrations[i].key),
        )
    }

    /// Check the invariants (see the type documentation).
    pub fn validate(&self) -> Result<(), &'static str> {
        let mut seen = std::collections::HashSet::with_capacity(self.registrations.len());
        for r in &self.registrations {
            if r.key == 0 {
                return Err("zero reservation key");
            }
            if r.port.initiator_name.is_empty()
                || r.port.initiator_name.len() > INITIATOR_NAME_MAX_BYTES
            {
                return Err("initiator name empty or too long");
            }
            let id = (
                r.port.initiator_name.to_ascii_lowercase(),
                r.port.isid,
                r.port.relative_port_id,
            );
            if !seen.insert(id) {
                return Err("duplicate registration");
            }
        }
        if self.registrations.len() > REGISTRATIONS_MAX {
            return Err("too many registrations");
        }
        if let Some(res) = &self.reservation {
            if self.index_of(&res.holder).is_none() {
                return Err("reservation holder is not registered");
            }
        }
        Ok(())
    }

    /// After registrations were removed: an all-registrants reservation moves to a
    /// remaining registration (or ends with the last one); any other reservation whose
    /// holder is gone ends. Returns the type of a reservation that ended.
    fn fix_holder(&mut self) -> Option<PrType> {
        let res = self.reservation.as_mut()?;
        if self.registrations.iter().any(|r| r.port == res.holder) {
            return None;
        }
        let ty = res.pr_type;
        match self.registrations.first() {
            Some(r) if ty.all_registrants() => {
                res.holder = r.port.clone();
                if let Some(p) = r.port.relative_port_id {
                    res.holder_relative_port_id = p;
                }
                None
            }
            _ => {
                self.reservation = None;
                Some(ty)
            }
        }
    }

    /// Remove the registrations `pred` selects; returns their ports.
    fn remove_where(
        &mut self,
        mut pred: impl FnMut(usize, &Registration) -> bool,
    ) -> Vec<RegisteredPort> {
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(self.registrations.len());
        for (i, r) in self.registrations.drain(..).enumerate() {
            if pred(i, &r) {
                removed.push(r.port);
            } else {
                kept.push(r);
            }
        }
        self.registrations = kept;
        removed
    }

    fn ports(&self) -> Vec<RegisteredPort> {
        self.registrations.iter().map(|r| r.port.clone()).collect()
    }
}

/// How a command is treated in the presence of a persistent reservation, for an I_T
/// nexus that does not hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Allowed under every reservation (INQUIRY, TEST UNIT READY, READ CAPACITY, ...).
    /// PERSISTENT RESERVE OUT and RESERVE/RELEASE(6) are here too: they apply their own
    /// rules.
    Always,
    /// Reads data or state: allowed under write exclusive types, and for registrants
    /// under registrants-only / all-registrants types.
    Read,
    /// Changes the medium or state: allowed only for registrants under
    /// registrants-only / all-registrants types.
    Write,
}

/// The access class of a command (SPC-4 and SBC-3 tables of commands allowed in the
/// presence of persistent reservations).
pub fn access_of(cmd: &Command) -> Access {
    match cmd {
        Command::TestUnitReady
        | Command::Inquiry { .. }
        | Command::RequestSense { .. }
        | Command::ReportLuns { .. }
        | Command::ReadCapacity10 { .. }
        | Command::ReadCapacity16 { .. }
        | Command::PersistentReserveIn { .. }
        | Command::PersistentReserveOut { .. }
        | Command::ReportTargetPortGroups { .. }
        | Command::Reserve6
        | Command::Release6
        | Command::Unsupported { .. } => Access::Always,
        Command::StartStopUnit {
            start: true,
            power_condition: 0,
            ..
        } => Access::Always,
        Command::ModeSense { .. }
        | Command::ReportSupportedOpcodes { .. }
        | Command::Read(_)
        | Command::Verify(_)
        | Command::PreFetch { .. }
        | Command::GetLbaStatus { .. }
        | Command::ReadDefectData(_)
        | Command::ReceiveCopyResults { .. } => Access::Read,
        Command::ModeSelect { .. }
        | Command::SetTargetPortGroups { .. }
        | Command::StartStopUnit { .. }
        | Command::Write(_)
        | Command::OrWrite(_)
        | Command::WriteAndVerify(_)
        | Command::WriteSame(_)
        | Command::CompareAndWrite(_)
        | Command::Unmap { .. }
        | Command::ExtendedCopy { .. }
        | Command::SynchronizeCache { .. } => Access::Write,
    }
}

/// Whether a command of class `access` from a nexus that is (or is not) registered and
/// is (or is not) the holder may run under a reservation of type `ty`.
pub fn allowed(ty: PrType, access: Access, registered: bool, holder: bool) -> bool {
    if holder || access == Access::Always {
        return true;
    }
    match ty {
        PrType::WriteExclusive => access == Access::Read,
        PrType::ExclusiveAccess => false,
        _ => registered || (access == Access::Read && ty.write_exclusive()),
    }
}

/// What RESERVE(6)/RELEASE(6) should do given the persistent reservation state (CRH=1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scsi2 {
    /// No registrations: process as SPC-2 defines.
    Proceed,
    /// Complete with GOOD without doing anything.
    Noop,
    /// RESERVATION CONFLICT.
    Conflict,
}

/// Unit attentions and aborts a PERSISTENT RESERVE OUT asks for (addressed to
/// registrations; `lun.rs` routes them to the connected nexuses, except the issuer).
#[derive(Debug, Default)]
pub(crate) struct Notices {
    /// `(asc, ascq)` for every nexus covered by one of the ports.
    pub ua: Vec<((u8, u8), Vec<RegisteredPort>)>,
    /// PREEMPT AND ABORT: the nexuses whose tasks must be aborted.
    pub abort: Vec<RegisteredPort>,
}

impl Notices {
    fn ua(&mut self, code: (u8, u8), ports: Vec<RegisteredPort>) {
        if !ports.is_empty() {
            self.ua.push((code, ports));
        }
    }
}

/// A decoded PERSISTENT RESERVE OUT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProutReq<'a> {
    pub service_action: u8,
    pub scope: u8,
    pub pr_type: u8,
    /// The parameter list (exactly PARAMETER LIST LENGTH bytes).
    pub params: &'a [u8],
}

#[derive(Debug)]
struct Outcome {
    state: PrState,
    changed: bool,
    notices: Notices,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn pll_error() -> Fail {
    Fail::Check(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR))
}

fn no_resources() -> Fail {
    Fail::Check(Sense::illegal(asc::INSUFFICIENT_REGISTRATION_RESOURCES))
}

fn name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= INITIATOR_NAME_MAX_BYTES
}

/// PERSISTENT RESERVE OUT against `cur`, as a pure function: the new state and what to
/// tell whom, or the failure.
fn prout_compute(
    cur: &PrState,
    who: &Who<'_>,
    req: &ProutReq<'_>,
    ptpl_capable: bool,
) -> Result<Outcome, Fail> {
    use prout_sa::*;
    let sa = req.service_action;

    // CDB fields: SCOPE and TYPE where the service action uses them.
    let ty = if matches!(sa, RESERVE | RELEASE | PREEMPT | PREEMPT_AND_ABORT) {
        if req.scope != 0 {
            return Err(Sense::invalid_cdb(2, Some(7)).into());
        }
        Some(PrType::from_code(req.pr_type).ok_or(Fail::Check(Sense::invalid_cdb(2, Some(3))))?)
    } else {
        None
    };

    // Parameter list.
    let p = req.params;
    if p.len() < 24 {
        return Err(pll_error());
    }
    let rk = be64(p, 0);
    let sark = be64(p, 8);
    let (spec_i_pt, all_tg_pt, aptpl);
    if sa == REGISTER_AND_MOVE {
        let tid_len = be32(p, 20) as usize;
        if 24usize.saturating_add(tid_len) > p.len() {
            return Err(pll_error());
        }
        spec_i_pt = false;
        all_tg_pt = false;
        aptpl = p[17] & 0x01 != 0;
        if aptpl && !ptpl_capable {
            return Err(Sense::invalid_param(17, Some(0)).into());
        }
    } else {
        spec_i_pt = p[20] & 0x08 != 0;
        all_tg_pt = p[20] & 0x04 != 0;
        aptpl = p[20] & 0x01 != 0;
        if spec_i_pt && sa != REGISTER {
            return Err(Sense::invalid_param(20, Some(3)).into());
        }
        if spec_i_pt {
            if p.len() < 28 {
                return Err(pll_error());
            }
            if 28usize.saturating_add(be32(p, 24) as usize) > p.len() {
                return Err(pll_error());
            }
        } else if p.len() != 24 {
            return Err(pll_error());
        }
        if aptpl && !ptpl_capable && matches!(sa, REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY) {
            return Err(Sense::invalid_param(20, Some(0)).into());
        }
    }

    // RESERVATION KEY must match the nexus's registration (SPC-4 6.16.3), except for
    // REGISTER AND IGNORE EXISTING KEY and REGISTER from an unregistered nexus (zero).
    let reg = cur.find(who);
    match (sa, reg) {
        (REGISTER_AND_IGNORE_EXISTING_KEY, _) => {}
        (REGISTER, None) if rk != 0 => return Err(Fail::Conflict),
        (REGISTER, None) => {}
        (_, None) => return Err(Fail::Conflict),
        (_, Some(i)) if cur.registrations[i].key != rk => return Err(Fail::Conflict),
        _ => {}
    }

    let mut s = cur.clone();
    let mut n = Notices::default();
    match sa {
        REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY => match reg {
            None => {
                if sark == 0 {
                    // Nothing to register: GOOD, no change at all.
                    return Ok(Outcome {
                        state: s,
                        changed: false,
                        notices: n,
                    });
                }
                if !name_ok(who.name) {
                    return Err(no_resources());
                }
                let mut ports = vec![who.own_port(all_tg_pt)];
                if spec_i_pt {
                    let tpdl = be32(p, 24) as usize;
                    let list = &p[28..28 + tpdl];
                    let mut off = 0;
                    while off < list.len() {
                        let (tid, len) = parse_transport_id(&list[off..]).map_err(|_| {
                            Fail::Check(Sense::invalid_param(
                                u16::try_from(28 + off).unwrap_or(u16::MAX),
                                None,
                            ))
                        })?;
                        off += len;
                        ports.push(RegisteredPort {
                            initiator_name: tid.name,
                            isid: tid.isid,
                            relative_port_id: if all_tg_pt { None } else { Some(who.rel) },
                        });
                    }
                }
                for port in ports {
                    if s.index_of(&port).is_none() {
                        s.registrations.push(Registration { port, key: sark });
                    }
                }
                if s.registrations.len() > REGISTRATIONS_MAX {
                    return Err(no_resources());
                }
            }
            Some(i) => {
                if spec_i_pt {
                    return Err(Sense::invalid_param(20, Some(3)).into());
                }
                if sark != 0 {
                    s.registrations[i].key = sark;
                } else {
                    // Unregister; the holder's registration going away releases the
                    // reservation (all-registrants: only with the last registrant).
                    let removed = s.remove_where(|j, _| j == i);
                    debug_assert_eq!(removed.len(), 1);
                    if let Some(released) = s.fix_holder() {
                        if released.registrants_only() {
                            n.ua(asc::RESERVATIONS_RELEASED, s.ports());
                        }
                    }
                }
            }
        },
        RESERVE => {
            let ty = ty.unwrap_or(PrType::WriteExclusive);
            match &s.reservation {
                Some(res) => {
                    if !cur.is_holder(who, reg) || res.pr_type != ty {
                        return Err(Fail::Conflict);
                    }
                    return Ok(Outcome {
                        state: s,
                        changed: false,
                        notices: n,
                    });
                }
                None => {
                    let i = reg.ok_or(Fail::Conflict)?;
                    s.reservation = Some(Reservation {
                        pr_type: ty,
                        holder: s.registrations[i].port.clone(),
                        holder_relative_port_id: who.rel,
                    });
                }
            }
        }
        RELEASE => {
            let ty = ty.unwrap_or(PrType::WriteExclusive);
            let Some(res) = &cur.reservation else {
                return Ok(Outcome {
                    state: s,
                    changed: false,
                    notices: n,
                });
            };
            if !cur.is_holder(who, reg) {
                return Ok(Outcome {
                    state: s,
                    changed: false,
                    notices: n,
                });
            }
            if res.pr_type != ty {
                return Err(Sense::illegal(asc::INVALID_RELEASE_OF_PR).into());
            }
            s.reservation = None;
            if ty.registrants_only() || ty.all_registrants() {
                n.ua(asc::RESERVATIONS_RELEASED, s.ports());
            }
        }
        CLEAR => {
            n.ua(asc::RESERVATIONS_PREEMPTED, s.ports());
            s.registrations.clear();
            s.reservation = None;
            s.aptpl = false;
        }
        PREEMPT | PREEMPT_AND_ABORT => {
            let ty = ty.unwrap_or(PrType::WriteExclusive);
            let issuer = reg.map(|i| cur.registrations[i].port.clone());
            let all_reg = cur
                .reservation
                .as_ref()
                .is_some_and(|r| r.pr_type.all_registrants());
            if sark == 0 && !all_reg {
                return Err(Sense::invalid_param(8, None).into());
            }
            let holder_case = match &cur.reservation {
                None => false,
                Some(r) if r.pr_type.all_registrants() => sark == 0,
                Some(_) => cur.reservation_key() == Some(sark),
            };
            if !holder_case {
                // Remove the registrations with that key; the reservation stays.
                let removed = s.remove_where(|_, r| r.key == sark);
                if removed.is_empty() {
                    return Err(Fail::Conflict);
                }
                s.fix_holder();
                n.ua(asc::REGISTRATIONS_PREEMPTED, removed.clone());
                if sa == PREEMPT_AND_ABORT {
                    n.abort = removed;
                }
            } else {
                let old_type = cur.reservation.as_ref().map(|r| r.pr_type);
                let removed = s.remove_where(|_, r| {
                    Some(&r.port) != issuer.as_ref() && (sark == 0 || r.key == sark)
                });
                let Some(issuer) = issuer else {
                    return Err(Fail::Conflict);
                };
                s.reservation = Some(Reservation {
                    pr_type: ty,
                    holder: issuer,
                    holder_relative_port_id: who.rel,
                });
                n.ua(asc::REGISTRATIONS_PREEMPTED, removed.clone());
                if old_type != Some(ty) {
                    n.ua(asc::RESERVATIONS_RELEASED, s.ports());
                }
                if sa == PREEMPT_AND_ABORT {
                    n.abort = removed;
                }
            }
        }
        REGISTER_AND_MOVE => {
            let Some(i) = reg else {
                return Err(Fail::Conflict);
            };
            if sark == 0 {
                return Err(Sense::invalid_param(8, None).into());
            }
            let Some(res) = &cur.reservation else {
                return Err(Fail::Conflict);
            };
            if !cur.is_holder(who, reg) || res.pr_type.all_registrants() {
                return Err(Fail::Conflict);
            }
            let rtpi = be16(p, 18);
            if rtpi == 0 {
                return Err(Sense::invalid_param(18, None).into());
            }
            let tid_len = be32(p, 20) as usize;
            let (tid, len) = parse_transport_id(&p[24..24 + tid_len])
                .map_err(|_| Fail::Check(Sense::invalid_param(24, None)))?;
            if len != tid_len {
                return Err(Sense::invalid_param(20, None).into());
            }
            if tid.name.eq_ignore_ascii_case(who.name)
                && (tid.isid.is_none() || tid.isid == who.isid)
            {
                // The destination is the issuing initiator port itself.
                return Err(Sense::invalid_param(24, None).into());
            }
            let dest = RegisteredPort {
                initiator_name: tid.name,
                isid: tid.isid,
                relative_port_id: Some(rtpi),
            };
            match s.index_of(&dest) {
                Some(j) => s.registrations[j].key = sark,
                None => {
                    s.registrations.push(Registration {
                        port: dest.clone(),
                        key: sark,
                    });
                    if s.registrations.len() > REGISTRATIONS_MAX {
                        return Err(no_resources());
                    }
                }
            }
            let pr_type = res.pr_type;
            s.reservation = Some(Reservation {
                pr_type,
                holder: dest,
                holder_relative_port_id: rtpi,
            });
            if p[17] & 0x02 != 0 {
                let own = cur.registrations[i].port.clone();
                s.remove_where(|_, r| r.port == own);
            }
        }
        _ => return Err(Sense::invalid_cdb(1, Some(4)).into()),
    }

    // Bookkeeping of the service actions that count.
    if matches!(
        sa,
        REGISTER
            | REGISTER_AND_IGNORE_EXISTING_KEY
            | CLEAR
            | PREEMPT
            | PREEMPT_AND_ABORT
            | REGISTER_AND_MOVE
    ) {
        s.generation = s.generation.wrapping_add(1);
    }
    if matches!(
        sa,
        REGISTER | REGISTER_AND_IGNORE_EXISTING_KEY | REGISTER_AND_MOVE
    ) {
        s.aptpl = aptpl;
    }
    Ok(Outcome {
        state: s,
        changed: true,
        notices: n,
    })
}

/// PERSISTENT RESERVE IN parameter data (untruncated) for service action `sa` (0..=3).
pub(crate) fn prin_data(s: &PrState, sa: u8, ptpl_capable: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 8 * s.registrations.len());
    if sa == prin_sa::REPORT_CAPABILITIES {
        b.resize(8, 0);
        b[1] = 8; // LENGTH
                  // CRH, SIP_C, ATP_C, PTPL_C.
        b[2] = 0x10 | 0x08 | 0x04 | u8::from(ptpl_capable);
        // TMV, ALLOW COMMANDS 011b (TEST UNIT READY through WE/EA; MODE SENSE, RSOC,
        // ... through WE), PTPL_A.
        b[3] = 0x80 | (0b011 << 4) | u8::from(ptpl_capable && s.aptpl);
        // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
        b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
        b[5] = 0x01;
        return b;
    }
    b.extend_from_slice(&s.generation.to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    match sa {
        prin_sa::READ_KEYS => {
            for r in &s.registrations {
                b.extend_from_slice(&r.key.to_be_bytes());
            }
        }
        prin_sa::READ_RESERVATION => {
            if let (Some(res), Some(key)) = (&s.reservation, s.reservation_key()) {
                b.extend_from_slice(&key.to_be_bytes());
                b.extend_from_slice(&[0; 4]); // obsolete
                b.push(0);
                b.push(res.pr_type.code()); // SCOPE 0 (LU_SCOPE) | TYPE
                b.extend_from_slice(&[0; 2]); // obsolete
            }
        }
        _ => {
            // READ FULL STATUS.
            for r in &s.registrations {
                let (holder, scope_type, rel) = match &s.reservation {
                    Some(res) if res.pr_type.all_registrants() => (
                        true,
                        res.pr_type.code(),
                        r.port.relative_port_id.unwrap_or(0),
                    ),
                    Some(res) if res.holder == r.port => (
                        true,
                        res.pr_type.code(),
                        r.port
                            .relative_port_id
                            .unwrap_or(res.holder_relative_port_id),
                    ),
                    _ => (false, 0, r.port.relative_port_id.unwrap_or(0)),
                };
                let tid = r.port.transport_id();
                b.extend_from_slice(&r.key.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                b.push(
                    if r.port.relative_port_id.is_none() {
                        0x02
                    } else {
                        0
                    } | u8::from(holder),
                );
                b.push(scope_type);
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&rel.to_be_bytes());
                b.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                b.extend_from_slice(&tid);
            }
        }
    }
    let addl = (b.len() - 8) as u32;
    b[4..8].copy_from_slice(&addl.to_be_bytes());
    b
}

/// How a stored record is applied when the logical unit is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrRestore {
    /// SPC-4 power-on semantics: registrations and the reservation come back only if
    /// the last APTPL bit received was one; PRGENERATION restarts at zero.
    #[default]
    PowerOn,
    /// The peer head takes over the logical unit (HA failover): the record is applied
    /// as it is, APTPL or not, PRGENERATION included — for the initiators this is not a
    /// power loss. Both heads must give the same target ports the same relative port
    /// ids (and the same initiator port names), or registrations will not match.
    Takeover,
}

/// Decode what `store` holds and apply `restore`; never fails (a missing or unusable
/// record gives the empty state, logged).
fn load_state(uuid: Uuid, store: &dyn ReservationStore, restore: PrRestore) -> PrState {
    let bytes = match store.load() {
        Ok(Some(b)) => b,
        Ok(None) => return PrState::default(),
        Err(StoreError::Unavailable(why)) => {
            // E.g. the record lives on a replicated volume that is Secondary here; it is
            // loaded when the volume becomes usable on this head.
            tracing::info!(%uuid, reason = %why,
                "persistent reservation record not readable now; starting without registrations");
            return PrState::default();
        }
        Err(e) => {
            tracing::error!(%uuid, error = %e,
                "cannot read the persistent reservation record; starting without registrations");
            return PrState::default();
        }
    };
    match decode_record(&bytes) {
        Ok(mut s) => match restore {
            PrRestore::Takeover => s,
            PrRestore::PowerOn if s.aptpl => {
                s.generation = 0;
                s
            }
            PrRestore::PowerOn => {
                if !s.registrations.is_empty() {
                    tracing::info!(%uuid, registrations = s.registrations.len(),
                        "persistent reservation record has APTPL=0; registrations dropped at power on");
                }
                PrState::default()
            }
        },
        Err(e) => {
            tracing::error!(%uuid, error = %e,
                "persistent reservation record is unusable; starting without registrations");
            PrState::default()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Persistent reservation state of one logical unit at run time.
///
/// Locking: `state` is taken briefly by commands only while a reservation exists (a
/// relaxed flag short-circuits the check otherwise), and by PERSISTENT RESERVE IN.
/// PERSISTENT RESERVE OUT serializes on `out`, computes the new state from a copy,
/// writes it to the store with `state` unlocked, then swaps it in.
#[derive(Debug)]
pub(crate) struct PersistentReservations {
    uuid: Uuid,
    state: Mutex<PrState>,
    reserved: AtomicBool,
    out: Mutex<()>,
    store: Option<Arc<dyn ReservationStore>>,
}

impl PersistentReservations {
    /// State loaded from `store` (if any) according to `restore`.
    pub fn new(uuid: Uuid, store: Option<Arc<dyn ReservationStore>>, restore: PrRestore) -> Self {
        let state = match &store {
            Some(st) => load_state(uuid, st.as_ref(), restore),
            None => PrState::default(),
        };
        Self {
            uuid,
            reserved: AtomicBool::new(state.reservation.is_some()),
            state: Mutex::new(state),
            out: Mutex::new(()),
            store,
        }
    }

    /// Replace the state with what the store holds now, applied per `restore` (the
    /// device holding the record became usable on this head: a takeover).
    pub fn reload(&self, restore: PrRestore) {
        let Some(store) = &self.store else { return };
        let _out = lock(&self.out);
        let state = load_state(self.uuid, store.as_ref(), restore);
        tracing::info!(uuid = %self.uuid, registrations = state.registrations.len(),
            reserved = state.reservation.is_some(),
            "persistent reservations reloaded from the replicated record");
        let mut cur = lock(&self.state);
        self.reserved
            .store(state.reservation.is_some(), Ordering::Release);
        *cur = state;
    }

    /// Whether APTPL=1 is supported (a store exists).
    pub fn ptpl_capable(&self) -> bool {
        self.store.is_some()
    }

    /// A copy of the state.
    pub fn snapshot(&self) -> PrState {
        lock(&self.state).clone()
    }

    /// Whether a command of class `access` from `nexus` may run now.
    pub fn allows(&self, nexus: &Nexus, access: Access) -> bool {
        if access == Access::Always || !self.reserved.load(Ordering::Acquire) {
            return true;
        }
        let s = lock(&self.state);
        let Some(res) = &s.reservation else {
            return true;
        };
        let who = Who::of(nexus);
        let reg = s.find(&who);
        allowed(res.pr_type, access, reg.is_some(), s.is_holder(&who, reg))
    }

    /// CRH=1 handling of RESERVE(6) / RELEASE(6) from `nexus`.
    pub fn scsi2(&self, nexus: &Nexus) -> Scsi2 {
        let s = lock(&self.state);
        if s.registrations.is_empty() {
            return Scsi2::Proceed;
        }
        let who = Who::of(nexus);
        let reg = s.find(&who);
        let shared = s
            .reservation
            .as_ref()
            .is_some_and(|r| r.pr_type.registrants_only() || r.pr_type.all_registrants());
        if reg.is_some() && (s.is_holder(&who, reg) || shared) {
            Scsi2::Noop
        } else {
            Scsi2::Conflict
        }
    }

    /// PERSISTENT RESERVE IN parameter data (untruncated).
    pub fn prin(&self, service_action: u8) -> Vec<u8> {
        prin_data(&lock(&self.state), service_action, self.ptpl_capable())
    }

    /// PERSISTENT RESERVE OUT from `nexus`: on success the new state is durable and in
    /// effect, and the returned notices must be delivered.
    pub fn prout(&self, nexus: &Nexus, req: &ProutReq<'_>) -> Result<Notices, Fail> {
        let _serialize = lock(&self.out);
        let cur = lock(&self.state).clone();
        let who = Who::of(nexus);
        let out = prout_compute(&cur, &who, req, self.ptpl_capable())?;
        if !out.changed {
            return Ok(out.notices);
        }
        debug_assert_eq!(out.state.validate(), Ok(()));
        if let Some(store) = &self.store {
            if let Err(e) = store.save(&encode_record(&out.state)) {
                tracing::error!(uuid = %self.uuid, error = %e,
                    "cannot store the persistent reservation record; PERSISTENT RESERVE OUT failed");
                return Err(Sense::new(key::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE).into());
            }
        }
        let reserved = out.state.reservation.is_some();
        *lock(&self.state) = out.state;
        self.reserved.store(reserved, Ordering::Release);
        Ok(out.notices)
    }
}

#[cfg(test)]
mod tests;
