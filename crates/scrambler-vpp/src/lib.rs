//! scrambler-vpp (work in progress).
