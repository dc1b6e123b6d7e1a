//! scrambler-ipvlan (work in progress).
