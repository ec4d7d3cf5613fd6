//! Block replication between the two heads (the DRBD model).
//!
//! Owns: the sans-IO replica state machine ([`replica`]), the connect-time decision
//! from generation UUIDs and the split-brain policies ([`gens`]), the dirty bitmap
//! ([`bitmap`]), the on-disk metadata ([`meta`]), the peer messages ([`msg`]) and their
//! byte encoding ([`wire`]) and the link authentication ([`auth`]).
//!
//! May not touch: SCSI or iSCSI (a replicated device is only a `BlockDevice` to them),
//! clocks, sockets or threads inside the core modules; the tokio driver ([`driver`]) is the
//! only place that does I/O.

pub mod auth;
pub mod bitmap;
pub mod driver;
pub mod gens;
pub mod meta;
pub mod msg;
pub mod replica;
pub mod types;
pub mod wire;
