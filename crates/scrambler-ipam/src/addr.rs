//! Address arithmetic: IPv4 and IPv6 addresses as integers of one type.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// The family of `ip`.
pub fn family_of(ip: IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

/// `ip` as an integer (IPv4 in the low 32 bits).
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of family `fam` with integer value `v` (IPv4 takes the low 32 bits).
pub fn from_u128(fam: Family, v: u128) -> IpAddr {
    match fam {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// `ip` moved by `by` addresses, wrapping within its family.
pub fn offset(ip: IpAddr, by: i64) -> IpAddr {
    let v = to_u128(ip).wrapping_add_signed(i128::from(by));
    from_u128(family_of(ip), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for s in ["10.0.0.1", "255.255.255.255", "fd00::1", "::"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(from_u128(family_of(ip), to_u128(ip)), ip);
        }
        assert_eq!(
            offset("10.0.0.255".parse().unwrap(), 1).to_string(),
            "10.0.1.0"
        );
        assert_eq!(offset("fd00::1".parse().unwrap(), -1).to_string(), "fd00::");
    }
}
