//! The LUNs of one target: [`LunMap`]. Entry point of the engine for transports.
//!
//! Owns: SAM LUN field encoding/decoding (single level, peripheral 00b and flat 01b
//! addressing), routing a command to its LU, the answers for LUNs that do not exist,
//! REPORT LUNS, task management functions and I_T nexus loss, and the ALUA state
//! ([`crate::alua::AluaState`]) its LUs share.

use std::sync::Arc;

use twinsan_blockdev::IoBuf;

use crate::alua::AluaState;
use crate::api::{
    Nexus, PreemptAbortHook, ScsiRequest, ScsiResponse, ScsiStatus, TaskMgmt, TmfError,
};
use crate::cdb::{decode_cdb, Command};
use crate::inquiry;
use crate::lun::{finish, unsupported_sense, Exec, Fail, LogicalUnit};
use crate::sense::{asc, Sense};

/// Highest LUN number the engine addresses (flat space addressing, 14 bits).
pub const LUN_MAX: u64 = 0x3FFF;

/// Errors from [`LunMap::try_new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LunMapError {
    /// LUN number above [`LUN_MAX`].
    #[error("LUN {0} is above the highest addressable LUN {LUN_MAX}")]
    LunTooLarge(u64),
    /// The same LUN number twice.
    #[error("LUN {0} is configured twice")]
    Duplicate(u64),
}

/// The LUNs of one target.
#[derive(Debug, Default)]
pub struct LunMap {
    /// Sorted by LUN number.
    luns: Vec<(u64, Arc<LogicalUnit>)>,
    /// Target port groups of the target (ALUA); `None`: no ALUA (TPGS=00b).
    alua: Option<Arc<AluaState>>,
}

impl LunMap {
    /// A map of the given LUNs. Entries with a LUN number above [`LUN_MAX`] or a
    /// duplicate number are dropped with a warning; use [`LunMap::try_new`] to get an
    /// error instead.
    pub fn new(luns: Vec<(u64, Arc<LogicalUnit>)>) -> Self {
        let mut out: Vec<(u64, Arc<LogicalUnit>)> = Vec::with_capacity(luns.len());
        for (n, lu) in luns {
            if n > LUN_MAX {
                tracing::warn!(lun = n, "LUN number too large; LUN not exported");
                continue;
            }
            if out.iter().any(|(m, _)| *m == n) {
                tracing::warn!(lun = n, "duplicate LUN number; later entry not exported");
                continue;
            }
            out.push((n, lu));
        }
        out.sort_by_key(|(n, _)| *n);
        crate::xcopy::link_peers(&out); // EXTENDED COPY between the LUs of this map
        Self {
            luns: out,
            alua: None,
        }
    }

    /// Report ALUA through `alua` on every LU of this map: TPGS in standard INQUIRY,
    /// the target port group designator in VPD 0x83, REPORT (and, if explicit, SET)
    /// TARGET PORT GROUPS, the per-state command gate, and ASYMMETRIC ACCESS STATE
    /// CHANGED after every change of `alua`. An LU keeps the first state attached to it.
    pub fn with_alua(mut self, alua: Arc<AluaState>) -> Self {
        for (n, lu) in &self.luns {
            let _ = lu.alua.set(alua.clone());
            match lu.alua.get() {
                Some(a) if Arc::ptr_eq(a, &alua) => alua.attach(lu),
                _ => tracing::warn!(lun = n, "LU already has another ALUA state; keeping it"),
            }
        }
        self.alua = Some(alua);
        self
    }

    /// The ALUA state attached with [`LunMap::with_alua`].
    pub fn alua(&self) -> Option<&Arc<AluaState>> {
        self.alua.as_ref()
    }

    /// Like [`LunMap::new`] but rejects invalid or duplicate LUN numbers.
    pub fn try_new(luns: Vec<(u64, Arc<LogicalUnit>)>) -> Result<Self, LunMapError> {
        for (i, (n, _)) in luns.iter().enumerate() {
            if *n > LUN_MAX {
                return Err(LunMapError::LunTooLarge(*n));
            }
            if luns[..i].iter().any(|(m, _)| m == n) {
                return Err(LunMapError::Duplicate(*n));
            }
        }
        Ok(Self::new(luns))
    }

    /// The LUNs, ascending.
    pub fn luns(&self) -> impl Iterator<Item = (u64, &Arc<LogicalUnit>)> {
        self.luns.iter().map(|(n, lu)| (*n, lu))
    }

    /// The LU with LUN number `lun`.
    pub fn get(&self, lun: u64) -> Option<&Arc<LogicalUnit>> {
        self.luns
            .binary_search_by_key(&lun, |(n, _)| *n)
            .ok()
            .map(|i| &self.luns[i].1)
    }

    /// SAM LUN field (8 bytes, big-endian, as a `u64`) → LUN number. Accepts
    /// single-level peripheral device addressing (00b, bus 0) and flat space
    /// addressing (01b); `None` for anything else.
    pub fn decode_lun(raw: u64) -> Option<u64> {
        if raw & 0x0000_FFFF_FFFF_FFFF != 0 {
            return None; // second to fourth levels must be empty
        }
        let top = (raw >> 48) as u16;
        match top >> 14 {
            0b00 => {
                if top >> 8 != 0 {
                    None // bus identifier != 0
                } else {
                    Some(u64::from(top & 0xFF))
                }
            }
            0b01 => Some(u64::from(top & 0x3FFF)),
            _ => None,
        }
    }

    /// LUN number → SAM LUN field: peripheral addressing below 256, flat space
    /// addressing up to [`LUN_MAX`]. Larger numbers are clamped to [`LUN_MAX`].
    pub fn encode_lun(lun: u64) -> u64 {
        if lun < 256 {
            lun << 48
        } else {
            (0x4000 | lun.min(LUN_MAX)) << 48
        }
    }

    /// Execute one command. Fills `data_in` (never more than `req.data_in_len_max`
    /// bytes; `data_in.len() == response.data_in_len` on return).
    pub fn execute(&self, req: &ScsiRequest<'_>, data_in: &mut IoBuf) -> ScsiResponse {
        let decoded = decode_cdb(req.cdb);
        let lu = Self::decode_lun(req.lun).and_then(|n| self.get(n));
        if let Ok(Command::ReportLuns {
            select_report,
            alloc_len,
        }) = decoded
        {
            let mut ex = Exec {
                req,
                data_in,
                xfer: None,
            };
            let r = self.report_luns(select_report, alloc_len, &mut ex);
            let xfer = ex.xfer;
            let desc = lu.map(|l| l.descriptor_sense()).unwrap_or(false);
            return finish(r, xfer, data_in, desc);
        }
        match lu {
            Some(lu) => lu.execute(req, decoded, data_in),
            None => self.execute_no_lun(req, decoded, data_in),
        }
    }

    fn report_luns(
        &self,
        select_report: u8,
        alloc_len: u32,
        ex: &mut Exec<'_, '_>,
    ) -> Result<ScsiStatus, Fail> {
        if alloc_len < 16 {
            return Err(Sense::invalid_cdb(6, None).into());
        }
        let list: Vec<u64> = match select_report {
            0x00 | 0x02 => self.luns.iter().map(|(n, _)| *n).collect(),
            0x01 => Vec::new(), // no well-known LUNs
            _ => return Err(Sense::invalid_cdb(2, Some(7)).into()),
        };
        let mut b = Vec::with_capacity(8 + 8 * list.len());
        b.extend_from_slice(&((8 * list.len()) as u32).to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        for n in list {
            b.extend_from_slice(&Self::encode_lun(n).to_be_bytes());
        }
        ex.put(&b, alloc_len as usize);
        Ok(ScsiStatus::Good)
    }

    /// A command to a LUN that does not exist (SPC-4 / SAM-5 rules).
    fn execute_no_lun(
        &self,
        req: &ScsiRequest<'_>,
        decoded: Result<Command, crate::cdb::CdbError>,
        data_in: &mut IoBuf,
    ) -> ScsiResponse {
        let mut ex = Exec {
            req,
            data_in,
            xfer: None,
        };
        let not_supported = Sense::illegal(asc::LUN_NOT_SUPPORTED);
        let r = match decoded {
            Ok(Command::Inquiry {
                evpd: false,
                page_code: 0,
                alloc_len,
            }) => {
                ex.put(&inquiry::standard_no_lun(), usize::from(alloc_len));
                Ok(ScsiStatus::Good)
            }
            Ok(Command::RequestSense { desc, alloc_len }) => {
                ex.put(&not_supported.encode(desc), usize::from(alloc_len));
                Ok(ScsiStatus::Good)
            }
            Ok(Command::Unsupported {
                opcode,
                service_action,
            }) => Err(unsupported_sense(opcode, service_action).into()),
            Err(e) => Err(e.into()),
            Ok(_) => Err(not_supported.into()),
        };
        let xfer = ex.xfer;
        finish(r, xfer, data_in, false)
    }

    /// A task management function from `nexus` for the LUN whose SAM LUN field is
    /// `lun` (raw, like [`ScsiRequest::lun`]; ignored for target resets).
    ///
    /// The engine has no queued tasks (every `execute` runs to completion), so aborts
    /// only need the transport to drop its own pending commands. Resets release
    /// RESERVE(6) reservations, reset mode parameters and establish unit attentions:
    /// BUS DEVICE RESET FUNCTION OCCURRED (29/03) for a LUN reset, POWER ON, RESET, OR
    /// BUS DEVICE RESET OCCURRED (29/00) for target resets — for every I_T nexus, the
    /// one that asked included (SAM-5 6.3.3: "for the initiator port associated with
    /// every I_T nexus"; libiscsi's MultipathIO.Reset checks both paths). Persistent
    /// reservations and registrations are not affected.
    ///
    /// Aborting tasks is the transport's part: ABORT TASK SET covers the issuer's tasks
    /// on the LU, CLEAR TASK SET and LOGICAL UNIT RESET every nexus's tasks on the LU,
    /// target resets every task (the control mode page reports TAS=1: tasks of other
    /// nexuses end with TASK ABORTED status).
    pub fn task_mgmt(&self, nexus: &Nexus, lun: u64, f: TaskMgmt) -> Result<(), TmfError> {
        // Every nexus gets the reset unit attention; the issuer is only logged.
        tracing::debug!(nexus = nexus.id, ?f, "task management");
        match f {
            TaskMgmt::TargetWarmReset | TaskMgmt::TargetColdReset => {
                for (_, lu) in &self.luns {
                    lu.reset(asc::POWER_ON_RESET, None);
                }
                Ok(())
            }
            TaskMgmt::AbortTaskSet | TaskMgmt::ClearTaskSet | TaskMgmt::LunReset => {
                let lu = Self::decode_lun(lun)
                    .and_then(|n| self.get(n))
                    .ok_or(TmfError::NoSuchLun(lun))?;
                if f == TaskMgmt::LunReset {
                    lu.reset(asc::BUS_DEVICE_RESET, None);
                }
                Ok(())
            }
        }
    }

    /// Have PERSISTENT RESERVE OUT / PREEMPT AND ABORT on any LU of this map report the
    /// nexuses whose tasks must be aborted to `hook` (see [`crate::PreemptAbort`]).
    /// Without a hook those tasks are not aborted (the preemption itself still happens).
    pub fn set_preempt_abort_hook(&self, hook: PreemptAbortHook) {
        for (n, lu) in &self.luns {
            lu.set_preempt_abort_hook(*n, hook.clone());
        }
    }

    /// I_T nexus loss (session closed or dropped): forget per-nexus state on every LU
    /// and release RESERVE(6) reservations held through it. Persistent reservation
    /// registrations are kept: they belong to the I_T nexus identity (initiator port +
    /// target port), which a later session can take up again.
    pub fn nexus_lost(&self, nexus: &Nexus) {
        for (_, lu) in &self.luns {
            lu.nexus_lost(nexus.id);
        }
    }
}
