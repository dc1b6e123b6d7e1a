//! Benchmarks of Scrambler (see benches/).
#![warn(missing_docs)]

pub mod load;
pub mod mesh;
pub mod run;
