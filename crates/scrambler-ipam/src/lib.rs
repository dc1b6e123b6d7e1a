//! scrambler-ipam (work in progress).
