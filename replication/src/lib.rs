//! Block replication between the two heads (the DRBD model): peer protocol, metadata,
//! generation UUIDs, bitmap resync, split-brain policies, dual-primary.
//!
//! Not implemented yet: this crate is a placeholder for the replication issue. Nothing in
//! twinsan replicates data today; see README "Not implemented yet".
