//! Resource agents driven by the HA manager: replicated volume, iSCSI target, portal IP,
//! external OCF agents, fence agents.
//!
//! Not implemented yet: this crate is a placeholder for the HA issue; see README
//! "Not implemented yet".
