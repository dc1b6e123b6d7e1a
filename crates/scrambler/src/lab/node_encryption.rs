//! Node encryption in the lab (`lab up` / `lab run --node-encryption`): the nodes' own
//! traffic between their underlay addresses rides the mesh.
//!
//! * file mode: the lab's mesh file says `"nodeEncryption": {"bypass": […]}` with
//!   [`BYPASS`]; with `--agents` each agent gets `--node-encryption` (the agent adds its
//!   etcd endpoints' ports to the bypass list itself);
//! * `lab test` adds host ↔ host probes ([`host_pings`], [`tcp_probes`], [`syn_probes`],
//!   [`dropped_pings`]) and judges the traffic between node addresses on the underlay
//!   ([`scope`]): outside ESP and the bypass ports it is a leak, alongside pod leaks.
//!   Without node encryption that traffic is reported as information.
//!
//! What a VPP node cannot do (see scrambler-vpp's *Node encryption*): its underlay address
//! is VPP's, so a host service listens on its tunnel address instead (the TCP connection
//! to a VPP node goes there; that is pod-CIDR traffic, carried with or without node
//! encryption); the SYN to its underlay address ([`syn_probes`]) reaches VPP, which has no
//! listener: it counts as carried when the VPP node's SA counted it in from that peer (and
//! the capture, judged as a whole, saw no cleartext between node addresses). A kernel
//! node's host, which sends from its underlay address, gets no answer from a VPP node's
//! underlay address (the VPP node's guard drops VPP's answer, which would otherwise leave
//! in the clear): in mixed labs those pings are probes that must go unanswered
//! ([`dropped_pings`]), and the capture proves no answer leaked.

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
    underlay_pings(state, "", |i, j| {
        !(is_kernel(state, i) && vppnode::is_vpp(state, j))
    })
}

/// Host → host pings that must go unanswered, with their labels: from every kernel node's
/// host to every VPP node's underlay address (see the module docs). They are exactly the
/// traffic whose answer the VPP node's underlay guard drops; an answer means the guard
/// let VPP's reply out (in the clear: the capture's verdict shows it too).
pub fn dropped_pings(state: &LabState) -> (Vec<probe::Ping>, Vec<String>) {
    underlay_pings(state, " answer dropped (expected)", |i, j| {
        is_kernel(state, i) && vppnode::is_vpp(state, j)
    })
}

/// Pings from node `i`'s host to node `j`'s underlay address for every pair of distinct
/// nodes `probed(i, j)` accepts, labelled `… underlay (<address>)<suffix>`.
fn underlay_pings(
    state: &LabState,
    suffix: &str,
    probed: impl Fn(usize, usize) -> bool,
) -> (Vec<probe::Ping>, Vec<String>) {
    let names = state.names();
    let (mut pings, mut labels) = (Vec::new(), Vec::new());
    for i in 1..=state.spec.nodes {
        for j in (1..=state.spec.nodes).filter(|j| *j != i && probed(i, *j)) {
            let Some(to) = underlay(state, j) else {
                continue;
            };
            pings.push(probe::Ping {
                from: names.node(i),
                to,
            });
            labels.push(format!(
                "{} host -> {} underlay ({to}){suffix}",
                names.node(i),
                names.node(j)
            ));
        }
    }
    (pings, labels)
}

/// With node encryption, the host flow a fault's injection adds: from another node's host
/// (one that gets answers from it, see [`host_pings`]) to the underlay address of the node
/// the fault hits. `Err` says why there is none: `node-join` (the node does not exist
/// yet), or no other node's host gets answers from it (a VPP node in a lab whose other
/// nodes are all kernel nodes).
pub fn host_flow(
    state: &LabState,
    fault: Fault,
    node: usize,
) -> std::result::Result<(String, IpAddr), &'static str> {
    if fault == Fault::NodeJoin {
        return Err("node-join: the node does not exist yet");
    }
    let from = (1..=state.spec.nodes)
        .find(|s| *s != node && !(is_kernel(state, *s) && vppnode::is_vpp(state, node)))
        .ok_or("no other node's host gets answers from this VPP node's underlay address")?;
    let to = underlay(state, node).ok_or("the node has no underlay address")?;
    Ok((state.names().node(from), to))
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

/// The packets node `at`'s dataplane decrypted from peer node `from` (its status' count).
async fn packets_in(state: &LabState, at: usize, from: usize) -> Result<u64> {
    let st = super::node_status(state, at).await?;
    let name = state.names().node(from);
    Ok(st
        .tunnel
        .peers
        .iter()
        .find(|p| p.name == name)
        .map_or(0, |p| p.packets_in))
}

/// The SYN probes: from every node's host to every VPP node's underlay address on
/// [`TCP_PORT`] (VPP has no listener: no connection is expected). A probe counts as
/// carried when the VPP node's inbound SA of that peer counted more packets after the
/// SYNs than before; what the capture saw is judged for the whole test (no cleartext
/// between node addresses). Returns (label, carried) per probe.
pub async fn syn_probes(state: &LabState) -> Result<Vec<(String, bool)>> {
    let names = state.names();
    let mut out = Vec::new();
    for j in (1..=state.spec.nodes).filter(|j| vppnode::is_vpp(state, *j)) {
        let Some(to) = underlay(state, j) else {
            continue;
        };
        for i in (1..=state.spec.nodes).filter(|i| *i != j) {
            let before = packets_in(state, j, i).await?;
            let st = state.clone();
            tokio::task::spawn_blocking(move || connects(&st, i, to))
                .await
                .map_err(|e| Error::kernel("run a SYN probe", "lab", e))??;
            let carried = packets_in(state, j, i).await? > before;
            out.push((
                format!(
                    "{} host -> {} underlay ({to}) tcp/{TCP_PORT} SYN carried",
                    names.node(i),
                    names.node(j)
                ),
                carried,
            ));
        }
    }
    Ok(out)
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

    fn lab(backend: &str) -> LabState {
        let mut l = crate::lab::tests::lab(false, backend);
        l.spec.node_encryption = true;
        l
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
            Ok(("t-n2".to_string(), "192.0.2.1".parse().unwrap()))
        );
        assert!(host_flow(&lab("vpp"), Fault::NodeJoin, 1).is_err());
        // no unanswered probes without a kernel and a VPP node
        assert!(dropped_pings(&lab("vpp")).0.is_empty());
        assert!(dropped_pings(&lab("veth")).0.is_empty());
        // mixed (1, 3 VPP; 2 kernel): node 2 does not ping 1 and 3's underlay
        let l = lab("mixed");
        assert_eq!(
            host_flow(&l, Fault::LinkDown, 1),
            Ok(("t-n3".to_string(), "192.0.2.1".parse().unwrap()))
        );
        // node 2 (kernel) -> 1 and 3 (VPP) underlay: must go unanswered
        let (dropped, labels) = dropped_pings(&l);
        assert_eq!(
            dropped
                .iter()
                .map(|p| (p.from.as_str(), p.to))
                .collect::<Vec<_>>(),
            [
                ("t-n2", underlay(&l, 1).unwrap()),
                ("t-n2", underlay(&l, 3).unwrap())
            ],
            "{labels:?}"
        );
        assert!(labels.iter().all(|l| l.ends_with("(expected)")));
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
