//! Deterministic simulation of two twinsan replicas.
//!
//! Owns: a virtual clock and event queue, a network between the two nodes with delay,
//! partitions, connection resets and corrupted streams (reorder/duplicate of frames
//! reaches a node as the protocol error the wire decoder would raise), disks with a
//! volatile write cache that a crash loses or tears, a workload with an oracle of
//! acknowledged writes, a small HA controller, and invariant checks after every step.
//! Every run is reproducible from its seed.
//!
//! May not touch: real time, sockets, files. It drives `twinsan_replication::replica`
//! exactly as the tokio driver does: inputs in, actions out, persist actions applied
//! before the next action.

mod disk;
mod rng;
mod world;

pub use rng::Rng;
pub use world::{run, Outcome, Scenario, SimConfig};
