//! Benchmarks of Scrambler (see benches/).
