//! Node encryption in the lab (`lab up` / `lab run --node-encryption`): the nodes' own
//! traffic between their underlay addresses rides the mesh.
//!
//! * file mode: the lab's mesh file says `"nodeEncryption": {"bypass": […]}` with
//!   [`BYPASS`]; with `--agents` each agent gets `--node-encryption` (the agent adds its
//!   etcd endpoints' ports to the bypass list itself);
//! * `lab test` adds host ↔ host probes ([`host_pings`], [`tcp_probes`]) and judges the
//!   traffic between node addresses on the underlay ([`scope`]): outside ESP and the bypass
//!   ports it is a leak, alongside pod leaks. Without node encryption that traffic is
//!   reported as information.
//!
//! What a VPP node cannot do (see scrambler-vpp's *Node encryption*): its underlay address
//! is VPP's, so a host service listens on its tunnel address instead (the TCP probe to a
//! VPP node goes there), and a kernel node's host, which sends from its underlay address,
//! gets no answer from a VPP node's underlay address (the VPP node's guard drops VPP's
//! answer): that ping is not probed.

use super::capture::NodeScope;
use super::inject::Fault;
use super::{cmd, is_kernel, probe, topology, vppnode, LabState};
use ipnet::IpNet;
use scrambler_core::{BypassPort, Error, NodeEncryption, Result};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The lab's bypass list: etcd's client and peer ports (what an agent adds by itself).
pub const BYPASS: [&str; 2] = ["tcp/2379", "tcp/2380"];

/// The port of the TCP probe: outside [`BYPASS`].
pub const TCP_PORT: u16 = 7777;

/// The underlay networks of the lab's nodes (see [`topology`]): IPv4, and the IPv6 one an
/// IPv6-underlay lab uses.
const UNDERLAY: [&str; 2] = ["192.0.2.0/24", "2001:db8::/64"];

/// The lab's node-encryption setting (the mesh file's `nodeEncryption`).
pub fn setting() -> Result<NodeEncryption> {
    let bypass = BYPASS
        .iter()
        .map(|b| b.parse::<BypassPort>())
        .collect::<Result<Vec<_>>>()?;
    Ok(NodeEncryption { bypass })
}

/// How the capture verdict judges traffic between node addresses in lab `state`.
pub fn scope(state: &LabState) -> Result<NodeScope> {
    let underlay = UNDERLAY
        .iter()
        .map(|n| n.parse::<IpNet>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("lab underlay: {e}")))?;
    Ok(NodeScope {
        underlay,
        bypass: setting()?.bypass,
        encrypted: state.spec.node_encryption,
    })
}

/// Node `i`'s underlay address (of the lab's underlay family).
fn underlay(state: &LabState, i: usize) -> Option<IpAddr> {
    Some(state.family().underlay(i))
}

/// Node `i`'s tunnel address (the first address of its pod CIDR).
fn tunnel_address(state: &LabState, i: usize) -> Option<IpAddr> {
    topology::node_desc(&state.names(), state.family(), i)
        .ok()?
        .tunnel_address(false)
}

/// Host → host pings with their labels: from every node's host namespace to every other
/// node's underlay address, but from a kernel node to a VPP node (see the module docs).
pub fn host_pings(state: &LabState) -> (Vec<probe::Ping>, Vec<String>) {
    let names = state.names();
    let (mut pings, mut labels) = (Vec::new(), Vec::new());
    for i in 1..=state.spec.nodes {
        for j in (1..=state.spec.nodes).filter(|j| *j != i) {
            if is_kernel(state, i) && vppnode::is_vpp(state, j) {
                continue;
            }
            let Some(to) = underlay(state, j) else {
                continue;
            };
            pings.push(probe::Ping {
                from: names.node(i),
                to,
            });
            labels.push(format!(
                "{} host -> {} underlay ({to})",
                names.node(i),
                names.node(j)
            ));
        }
    }
    (pings, labels)
}

/// With node encryption, the host flow a fault's injection adds: from another node's host
/// (one that gets answers from it, see [`host_pings`]) to the underlay address of the node
/// the fault hits; none for `node-join` (the node does not exist yet).
pub fn host_flow(state: &LabState, fault: Fault, node: usize) -> Option<(String, IpAddr)> {
    if !state.spec.node_encryption || fault == Fault::NodeJoin {
        return None;
    }
    let from = (1..=state.spec.nodes)
        .find(|s| *s != node && !(is_kernel(state, *s) && vppnode::is_vpp(state, node)))?;
    Some((state.names().node(from), underlay(state, node)?))
}

/// One TCP probe: from node `from`'s host to `to`:[`TCP_PORT`].
struct TcpProbe {
    from: usize,
    #[cfg_attr(not(test), allow(dead_code))]
    to_node: usize,
    to: IpAddr,
    label: String,
}

/// The TCP probes: from every node's host to every other node's underlay address (a VPP
/// node's tunnel address: its underlay address is VPP's, no host service is reached there).
fn tcp_targets(state: &LabState) -> Vec<TcpProbe> {
    let names = state.names();
    let mut v = Vec::new();
    for i in 1..=state.spec.nodes {
        for j in (1..=state.spec.nodes).filter(|j| *j != i) {
            let (to, what) = match vppnode::is_vpp(state, j) {
                true => (tunnel_address(state, j), "tunnel address"),
                false => (underlay(state, j), "underlay"),
            };
            let Some(to) = to else {
                continue;
            };
            v.push(TcpProbe {
                from: i,
                to_node: j,
                to,
                label: format!(
                    "{} host -> {} {what} ({to}) tcp/{TCP_PORT}",
                    names.node(i),
                    names.node(j)
                ),
            });
        }
    }
    v
}

/// A listener on [`TCP_PORT`] in node `i`'s host namespace, accepting any number of
/// connections (busybox nc), for at most a minute.
fn listen(state: &LabState, i: usize) -> Result<Child> {
    Command::new(cmd::ip_bin())
        .args(["netns", "exec", &state.names().node(i)])
        .args(["busybox", "timeout", "60", "busybox", "nc", "-ll", "-p"])
        .arg(TCP_PORT.to_string())
        .args(["-e", "/bin/true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            Error::io(
                "start a TCP listener (busybox nc)",
                state.names().node(i),
                e,
            )
        })
}

/// Whether node `from`'s host connects to `to`:[`TCP_PORT`] within 3 s.
fn connects(state: &LabState, from: usize, to: IpAddr) -> Result<bool> {
    let out = cmd::netns_exec(
        &state.names().node(from),
        "busybox",
        &[
            "timeout",
            "5",
            "busybox",
            "nc",
            "-w",
            "3",
            &to.to_string(),
            &TCP_PORT.to_string(),
        ],
    )?;
    Ok(out.status.success())
}

/// Runs the TCP probes (a listener on every node, one connection per pair, a failed one
/// tried once more: a TCG guest may be slow); returns (label, connected) per probe.
pub fn tcp_probes(state: &LabState) -> Result<Vec<(String, bool)>> {
    let probes = tcp_targets(state);
    let mut listeners = Vec::new();
    for i in 1..=state.spec.nodes {
        listeners.push(listen(state, i)?);
    }
    std::thread::sleep(Duration::from_millis(300));
    let result = probes
        .iter()
        .map(|p| {
            let ok = connects(state, p.from, p.to)? || connects(state, p.from, p.to)?;
            Ok((p.label.clone(), ok))
        })
        .collect::<Result<Vec<_>>>();
    for mut l in listeners {
        let _ = l.kill();
        let _ = l.wait();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::backend::LabBackend;
    use crate::lab::LabSpec;

    fn lab(backend: &str) -> LabState {
        let backend: LabBackend = backend.parse().unwrap();
        LabState {
            spec: LabSpec {
                name: "t".into(),
                nodes: 3,
                pods_per_node: 1,
                backend,
                agents: false,
                node_encryption: true,
                ipv6: false,
            },
            pods: vec![],
            node_backends: (1..=3).map(|i| backend.node(i)).collect(),
        }
    }

    #[test]
    fn the_bypass_list_holds_etcds_ports_and_not_the_probes() {
        let s = setting().unwrap();
        assert_eq!(s.bypass.len(), 2);
        assert!(s.bypass.iter().all(|b| b.port != TCP_PORT));
        s.validate().unwrap();
    }

    #[test]
    fn host_probes_cover_every_pair_but_kernel_to_vpp_underlay() {
        // all kernel or all VPP: every ordered pair
        for b in ["veth", "vpp"] {
            let (pings, labels) = host_pings(&lab(b));
            assert_eq!(pings.len(), 6, "{b}: {labels:?}");
            assert_eq!(tcp_targets(&lab(b)).len(), 6);
        }
        assert_eq!(
            host_flow(&lab("vpp"), Fault::Reboot, 1),
            Some(("t-n2".to_string(), "192.0.2.1".parse().unwrap()))
        );
        assert_eq!(host_flow(&lab("vpp"), Fault::NodeJoin, 1), None);
        // mixed (1, 3 VPP; 2 kernel): node 2 does not ping 1 and 3's underlay
        let l = lab("mixed");
        assert_eq!(
            host_flow(&l, Fault::LinkDown, 1),
            Some(("t-n3".to_string(), "192.0.2.1".parse().unwrap()))
        );
        let (pings, labels) = host_pings(&l);
        assert_eq!(pings.len(), 4, "{labels:?}");
        assert!(
            !labels.iter().any(|x| x.starts_with("t-n2 host")),
            "{labels:?}"
        );
        // TCP to a VPP node goes to its tunnel address, to a kernel node to its underlay
        let tcp = tcp_targets(&l);
        assert_eq!(tcp.len(), 6);
        for p in &tcp {
            let want = match p.to_node {
                2 => "192.0.2.2".parse().ok(),
                j => tunnel_address(&l, j),
            };
            assert_eq!(Some(p.to), want, "{}", p.label);
        }
    }
}
