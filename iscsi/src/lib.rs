//! iSCSI target (RFC 7143, error recovery level 0).
//!
//! Owns: the PDU codec, text-key negotiation, login (CHAP) and session/connection state
//! machines (sans-IO), and a thin tokio driver that runs them over TCP and hands SCSI
//! commands to [`twinsan_scsi::LunMap`].
//!
//! May not touch: block devices directly (only through the SCSI engine).

pub mod engine;
pub mod fuzzing;
pub mod login;
pub mod pdu;
pub mod server;
pub mod session;
pub mod text;

pub use engine::{ScsiEngine, TmfOutcome};
pub use server::{
    ChapCredentials, PortalGroup, Server, ServerConfig, ServerStatus, SessionStatus, TargetConfig,
};
