//! Test helpers for the client's own code paths, without a VPP: every generated message
//! driven generically ([`codec`]); statistics segments built in memory ([`stats_segment`]).

pub mod codec;
pub mod stats_segment;
