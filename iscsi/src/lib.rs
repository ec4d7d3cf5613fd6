//! iSCSI target (RFC 7143, error recovery level 0).
//!
//! Owns: the PDU codec, text-key negotiation, login (CHAP) and session/connection state
//! machines (sans-IO), and a thin tokio driver that runs them over TCP and hands SCSI
//! commands to [`twinsan_scsi::LunMap`].
//!
//! May not touch: block devices directly (only through the SCSI engine).
