//! iSCSI target (RFC 7143, error recovery level 0).
//!
//! Owns: the PDU codec, text-key negotiation, login (CHAP) and session/connection state
//! machines (sans-IO), and a thin tokio driver that runs them over TCP and hands SCSI
//! commands to [`twinsan_scsi::LunMap`].
//!
//! May not touch: block devices directly (only through the SCSI engine).
//!
//! Layers, bottom up:
//! - [`pdu`]: 48-byte BHS layouts (zerocopy, big-endian), AHS, padding, CRC32C digests
//!   (little-endian on the wire), the incremental [`pdu::Decoder`] and [`pdu::encode_pdu`].
//! - [`text`]: `key=value` lists and the negotiation rule of every operational key.
//! - [`login`]: the login state machine (security stage with `AuthMethod=None|CHAP`,
//!   one-way and mutual CHAP-MD5; operational stage; status codes). Randomness comes in
//!   as an argument; session creation goes through [`login::LoginEnv`].
//! - [`session`]: one connection in full feature phase: CmdSN window, tasks, R2T,
//!   Data-In/Out, responses and residuals, NOP, task management, logout, text, reject.
//!   Commands run through [`ScsiEngine`] as [`session::ExecJob`]s.
//! - [`server`]: the tokio driver: listeners, one task per connection, session registry
//!   (TSIH, reinstatement), discovery, status, shutdown.
//!
//! At ERL 0 each session has exactly one connection (MaxConnections=1).

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
