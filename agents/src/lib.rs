//! Resource and fence agents driven by the HA manager (blocking calls; the manager runs
//! them off its owner task).
//!
//! Owns: how a portal IP is added, announced and removed ([`vip`]), how a peer is fenced
//! ([`fence`]: fence-agents programs over their stdin protocol, built-in `process` and
//! `ssh` agents), how external OCF resource agents are run ([`ocf`]), and the one
//! bounded child-process runner both use ([`exec`]).
//!
//! May not touch: cluster state, quorum or the decision of when to call an agent — that
//! is the HA manager's (appliance `ha` module).

pub mod exec;
pub mod fence;
pub mod ocf;
pub mod vip;
