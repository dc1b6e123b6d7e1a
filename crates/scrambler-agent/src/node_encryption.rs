//! The agent's node-encryption setting: the operator's bypass ports plus the datastore's.
//!
//! With node encryption on, a node reaches its peers' underlay addresses through the mesh
//! only. A node that lost its mesh state (a reboot, a flushed dataplane) rebuilds it from
//! etcd, so etcd must stay reachable without the mesh: the agent always adds the port of
//! every etcd endpoint it is given (the client port, 2379 when the endpoint names none)
//! and tcp/2380 (etcd's peer port, for etcd members running on the nodes) to the bypass
//! list, whatever the operator gave.

use scrambler_core::{BypassPort, BypassProto, Error, NodeEncryption, Result};

/// etcd's default client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's default peer port.
pub const ETCD_PEER_PORT: u16 = 2380;

/// The port an etcd endpoint (`http://host:port`, `https://[v6]:port/`, `host:port`,
/// `host`) names, [`ETCD_CLIENT_PORT`] when it names none.
pub fn endpoint_port(endpoint: &str) -> Result<u16> {
    let rest = endpoint
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(endpoint);
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let port = match authority.strip_prefix('[') {
        // [v6]:port or [v6]
        Some(v6) => v6.split_once("]:").map(|(_, p)| p),
        // a bare IPv6 address has several colons and no port
        None if authority.matches(':').count() == 1 => authority.split_once(':').map(|(_, p)| p),
        None => None,
    };
    match port {
        None | Some("") => Ok(ETCD_CLIENT_PORT),
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            Error::config(format!(
                "etcd endpoint {endpoint:?}: port {p:?} is not a port 1..=65535"
            ))
        }),
    }
}

/// The bypass ports the datastore needs: tcp/<port> of every endpoint, and tcp/2380.
pub fn datastore_bypass(endpoints: &[String]) -> Result<Vec<BypassPort>> {
    let mut ports = Vec::new();
    for e in endpoints {
        let p = BypassPort::new(BypassProto::Tcp, endpoint_port(e)?)?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let peer = BypassPort::new(BypassProto::Tcp, ETCD_PEER_PORT)?;
    if !ports.contains(&peer) {
        ports.push(peer);
    }
    Ok(ports)
}

/// The setting the agent puts into the meshes it builds: `None` when `on` is false
/// (then `bypass` must be empty), else the operator's `bypass` ports plus
/// [`datastore_bypass`] of `endpoints` (validated: at most
/// [`scrambler_core::node_encryption::MAX_BYPASS_PORTS`] in all).
pub fn setting(
    on: bool,
    bypass: &[BypassPort],
    endpoints: &[String],
) -> Result<Option<NodeEncryption>> {
    if !on {
        if !bypass.is_empty() {
            return Err(Error::config(
                "--node-encryption-bypass needs --node-encryption",
            ));
        }
        return Ok(None);
    }
    let ne = NodeEncryption::default()
        .with_bypass(bypass.iter().copied())
        .with_bypass(datastore_bypass(endpoints)?);
    ne.validate()?;
    Ok(Some(ne))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ports_come_from_every_spelling_of_an_endpoint() {
        for (e, port) in [
            ("http://127.0.0.1:2379", 2379),
            ("https://etcd.example:12379", 12379),
            ("https://etcd.example:12379/", 12379),
            ("https://user:pw@etcd.example:4001", 4001),
            ("10.0.0.1:3379", 3379),
            ("http://[fd00::1]:2479", 2479),
            ("[fd00::1]:2579", 2579),
            ("http://etcd.example", 2379),
            ("http://[fd00::1]", 2379),
            ("fd00::1", 2379),
            ("etcd", 2379),
        ] {
            assert_eq!(endpoint_port(e).unwrap(), port, "{e}");
        }
        for bad in ["http://etcd:0", "http://etcd:x", "etcd:70000"] {
            assert!(endpoint_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_datastore_ports_are_always_bypassed() {
        let eps = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let names =
            |ne: &NodeEncryption| ne.bypass.iter().map(|b| b.to_string()).collect::<Vec<_>>();
        let ssh: BypassPort = "tcp/22".parse().unwrap();
        let ne = setting(
            true,
            &[ssh],
            &eps(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(names(&ne), ["tcp/22", "tcp/2379", "tcp/2380"]);
        // another client port, given by the operator too: once
        let mine: BypassPort = "tcp/4001".parse().unwrap();
        let ne = setting(true, &[mine], &eps(&["https://etcd:4001"]))
            .unwrap()
            .unwrap();
        assert_eq!(names(&ne), ["tcp/4001", "tcp/2380"]);
        // off: none, and a bypass list without node encryption is refused
        assert_eq!(setting(false, &[], &eps(&["etcd"])).unwrap(), None);
        assert!(setting(false, &[ssh], &eps(&["etcd"])).is_err());
        // too many in all
        let many: Vec<BypassPort> = (1..=15)
            .map(|p| format!("udp/{p}").parse().unwrap())
            .collect();
        let e = setting(true, &many, &eps(&["etcd"])).unwrap_err();
        assert!(e.to_string().contains("at most 16"), "{e}");
    }
}
