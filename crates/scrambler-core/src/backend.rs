//! The names of Scrambler's dataplanes, as confs and command lines spell them.
//!
//! - [`Backend`]: a CNI conf's `"backend"`, how a pod is attached: `veth` (a routed veth
//!   pair), `ipvlan` or `vpp`. `"backend": "xfrm"` (the name of the mesh that encrypts a
//!   veth pod's traffic) is accepted as an alias of `veth`. Parsing accepts every name and
//!   the alias; [`Display`](std::fmt::Display) and serialisation always give the canonical
//!   name (`veth`).
//! - [`TunnelDataplane`]: the node tool's `--backend`, what runs the encrypted mesh between
//!   nodes: `xfrm` (the kernel) or `vpp`. [`Backend::tunnel`] tells which one carries a
//!   backend's pod traffic to other nodes.

use crate::error::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The attachment a CNI conf selects with `"backend"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// A routed veth pair into the pod; the node's kernel XFRM mesh encrypts what it routes.
    Veth,
    /// An ipvlan sub-interface of the node's uplink (encrypted by the kernel XFRM mesh with
    /// `"encrypt": true`, modes l3 and l3s).
    Ipvlan,
    /// A veth whose node end FD.io VPP takes; VPP's own mesh encrypts.
    Vpp,
}

impl Backend {
    /// Every backend, in the order error messages list them.
    pub const ALL: [Backend; 3] = [Backend::Veth, Backend::Ipvlan, Backend::Vpp];

    /// The other name `"backend": "xfrm"` gives [`Backend::Veth`].
    pub const VETH_ALIAS: &'static str = "xfrm";

    /// Every accepted `"backend"` value, as error messages list them.
    pub const ACCEPTED: &'static str = "veth (alias xfrm), ipvlan, vpp";

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Veth => "veth",
            Backend::Ipvlan => "ipvlan",
            Backend::Vpp => "vpp",
        }
    }

    /// The tunnel dataplane that encrypts this backend's pod traffic to other nodes.
    pub fn tunnel(self) -> TunnelDataplane {
        match self {
            Backend::Veth | Backend::Ipvlan => TunnelDataplane::Xfrm,
            Backend::Vpp => TunnelDataplane::Vpp,
        }
    }

    /// Parses the conf's `"backend"`; a missing one is an error listing the valid values.
    pub fn parse(s: Option<&str>) -> crate::Result<Self> {
        match s {
            Some(s) => Ok(s.parse()?),
            None => Err(Error::config(format!(
                "missing field \"backend\": valid backends are {}",
                Backend::ACCEPTED
            ))),
        }
    }
}

impl FromStr for Backend {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "veth" | Backend::VETH_ALIAS => Ok(Backend::Veth),
            "ipvlan" => Ok(Backend::Ipvlan),
            "vpp" => Ok(Backend::Vpp),
            other => Err(UnknownBackend {
                kind: "backend",
                given: other.to_string(),
                accepted: Backend::ACCEPTED,
            }),
        }
    }
}

/// The dataplane that runs the encrypted mesh between nodes (`scrambler mesh apply
/// --backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelDataplane {
    /// The kernel's XFRM (scrambler-xfrm).
    Xfrm,
    /// FD.io VPP, over its binary API (scrambler-vpp).
    Vpp,
}

impl TunnelDataplane {
    /// Every tunnel dataplane, in the order error messages list them.
    pub const ALL: [TunnelDataplane; 2] = [TunnelDataplane::Xfrm, TunnelDataplane::Vpp];

    /// Every accepted name, as error messages list them.
    pub const ACCEPTED: &'static str = "xfrm, vpp";

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelDataplane::Xfrm => "xfrm",
            TunnelDataplane::Vpp => "vpp",
        }
    }
}

impl FromStr for TunnelDataplane {
    type Err = UnknownBackend;

    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "xfrm" => Ok(TunnelDataplane::Xfrm),
            "vpp" => Ok(TunnelDataplane::Vpp),
            other => Err(UnknownBackend {
                kind: "tunnel backend",
                given: other.to_string(),
                accepted: TunnelDataplane::ACCEPTED,
            }),
        }
    }
}

/// A name that is no [`Backend`] or [`TunnelDataplane`]; it lists the valid ones, and is
/// an invalid conf (CNI code 7) as an [`Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {given:?}: valid backends are {accepted}")]
pub struct UnknownBackend {
    kind: &'static str,
    given: String,
    accepted: &'static str,
}

impl From<UnknownBackend> for Error {
    fn from(e: UnknownBackend) -> Error {
        Error::config(e.to_string())
    }
}

/// Display, serialisation and deserialisation through the name ([`FromStr`] and `as_str`).
macro_rules! named {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named!(Backend);
named!(TunnelDataplane);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfrm_is_an_alias_of_veth() {
        assert_eq!("xfrm".parse::<Backend>(), Ok(Backend::Veth));
        assert_eq!("veth".parse::<Backend>(), Ok(Backend::Veth));
        let from_conf: Backend = serde_json::from_str("\"xfrm\"").unwrap();
        assert_eq!(from_conf, Backend::Veth);
        assert_eq!(Backend::Veth.to_string(), "veth");
        assert_eq!(serde_json::to_string(&Backend::Veth).unwrap(), "\"veth\"");
    }

    #[test]
    fn names_round_trip() {
        for b in Backend::ALL {
            assert!(Backend::ACCEPTED.contains(b.as_str()), "{b}");
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
            let json = serde_json::to_value(b).unwrap();
            assert_eq!(serde_json::from_value::<Backend>(json).unwrap(), b);
        }
        for t in TunnelDataplane::ALL {
            assert!(TunnelDataplane::ACCEPTED.contains(t.as_str()), "{t}");
            assert_eq!(t.to_string().parse::<TunnelDataplane>(), Ok(t));
            let json = serde_json::to_value(t).unwrap();
            assert_eq!(serde_json::from_value::<TunnelDataplane>(json).unwrap(), t);
        }
    }

    #[test]
    fn each_backend_names_its_tunnel() {
        assert_eq!(Backend::Veth.tunnel(), TunnelDataplane::Xfrm);
        assert_eq!(Backend::Ipvlan.tunnel(), TunnelDataplane::Xfrm);
        assert_eq!(Backend::Vpp.tunnel(), TunnelDataplane::Vpp);
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let e = "wireguard".parse::<Backend>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown backend \"wireguard\": valid backends are veth (alias xfrm), ipvlan, vpp"
        );
        assert_eq!(Error::from(e).code(), 7);
        let e = "veth".parse::<TunnelDataplane>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown tunnel backend \"veth\": valid backends are xfrm, vpp"
        );
        let e = serde_json::from_str::<Backend>("\"Veth\"").unwrap_err();
        assert!(
            e.to_string().contains("veth (alias xfrm), ipvlan, vpp"),
            "{e}"
        );
        let e = Backend::parse(None).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("missing field \"backend\""), "{e}");
    }
}
