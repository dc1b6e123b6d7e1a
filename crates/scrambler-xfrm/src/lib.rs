//! scrambler-xfrm (work in progress).
