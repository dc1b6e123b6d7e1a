//! Conversions between VPP's address types and `std::net` / `ipnet`.

use crate::api::types::{
    Address, AddressFamily, AddressUnion, Ip4Address, Ip6Address, MacAddress, Prefix,
};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

impl From<Ipv4Addr> for Ip4Address {
    fn from(a: Ipv4Addr) -> Self {
        Ip4Address(a.octets())
    }
}

impl From<Ip4Address> for Ipv4Addr {
    fn from(a: Ip4Address) -> Self {
        Ipv4Addr::from(a.0)
    }
}

impl From<Ipv6Addr> for Ip6Address {
    fn from(a: Ipv6Addr) -> Self {
        Ip6Address(a.octets())
    }
}

impl From<Ip6Address> for Ipv6Addr {
    fn from(a: Ip6Address) -> Self {
        Ipv6Addr::from(a.0)
    }
}

impl From<IpAddr> for Address {
    fn from(a: IpAddr) -> Self {
        let mut un = [0u8; 16];
        let af = match a {
            IpAddr::V4(v4) => {
                un[..4].copy_from_slice(&v4.octets());
                AddressFamily::ADDRESS_IP4
            }
            IpAddr::V6(v6) => {
                un.copy_from_slice(&v6.octets());
                AddressFamily::ADDRESS_IP6
            }
        };
        Address {
            af,
            un: AddressUnion(un),
        }
    }
}

impl From<Ipv4Addr> for Address {
    fn from(a: Ipv4Addr) -> Self {
        IpAddr::V4(a).into()
    }
}

impl Address {
    /// As a std address; `None` for an unknown address family.
    pub fn to_ip(&self) -> Option<IpAddr> {
        let u = &self.un.0;
        match self.af {
            AddressFamily::ADDRESS_IP4 => Some(IpAddr::V4(Ipv4Addr::new(u[0], u[1], u[2], u[3]))),
            AddressFamily::ADDRESS_IP6 => Some(IpAddr::V6(Ipv6Addr::from(*u))),
            _ => None,
        }
    }
}

impl From<IpNet> for Prefix {
    fn from(n: IpNet) -> Self {
        Prefix {
            address: n.addr().into(),
            len: n.prefix_len(),
        }
    }
}

impl Prefix {
    /// As an `ipnet` prefix (host bits kept); `None` for a bad family or length.
    pub fn to_ipnet(&self) -> Option<IpNet> {
        IpNet::new(self.address.to_ip()?, self.len).ok()
    }
}

impl From<[u8; 6]> for MacAddress {
    fn from(m: [u8; 6]) -> Self {
        MacAddress(m)
    }
}

impl std::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for s in ["192.0.2.1", "2001:db8::1"] {
            let a: IpAddr = s.parse().unwrap();
            assert_eq!(Address::from(a).to_ip(), Some(a));
        }
        let n: IpNet = "10.1.2.0/24".parse().unwrap();
        assert_eq!(Prefix::from(n).to_ipnet(), Some(n));
        assert_eq!(
            MacAddress([2, 0xfe, 0, 0, 0, 1]).to_string(),
            "02:fe:00:00:00:01"
        );
        let a = Address::from(IpAddr::from([192, 0, 2, 9]));
        assert_eq!(a.un.ip4().unwrap(), Ip4Address([192, 0, 2, 9]));
    }
}
