//! Two real VPPs, each in its own test namespace, joined by a veth underlay `ul0`
//! (192.0.2.<n>/24); with [`TwoNodes::start`], beside each VPP a Linux "pod" (10.<n>.0.2/24)
//! on a veth VPP takes with af_packet. Shared by the tunnel, attach, fail-closed and stats
//! tests.
#![allow(dead_code)]

use std::collections::BTreeSet;

use scrambler_core::{
    Cluster, ClusterSecret, Generation, Keys, Mesh, Node, NodeId, ReconcileReport, Tunnel,
};
use scrambler_testkit::netns::veth;
use scrambler_testkit::vpp::{api_sock_resolver, quiet_ipv6, VppInstance};
use scrambler_vpp::tunnel::VppTunnel;

/// The two nodes, the dataplane driving both, and their cluster.
pub struct TwoNodes {
    pub a: VppInstance,
    pub b: VppInstance,
    pub dp: VppTunnel,
    pub secret: ClusterSecret,
    pub cluster: Cluster,
}

/// Node `n` of the mesh: underlay 192.0.2.n, pod CIDR 10.n.0.0/24.
fn mesh_node(name: &str, id: u32, n: u8) -> Node {
    Node {
        name: name.into(),
        id: NodeId::new(id).unwrap(),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
        underlay: vec![format!("192.0.2.{n}").parse().unwrap()],
        pod_cidrs: vec![format!("10.{n}.0.0/24").parse().unwrap()],
        previous_epochs: Vec::new(),
    }
}

/// The pod beside node `n`'s VPP: veth `pod0` (10.n.0.2) in VPP's namespace, its peer
/// `vpod0` taken by VPP (10.n.0.1).
async fn linux_pod(vpp: &VppInstance, n: u8) {
    let ns = &vpp.netns;
    ns.ip(&[
        "link", "add", "vpod0", "type", "veth", "peer", "name", "pod0",
    ]);
    ns.ip(&["link", "set", "vpod0", "up"]);
    ns.ip(&["link", "set", "pod0", "up"]);
    ns.ip(&["addr", "add", &format!("10.{n}.0.2/24"), "dev", "pod0"]);
    ns.ip(&["route", "add", "default", "via", &format!("10.{n}.0.1")]);
    vpp.host_interface("vpod0", [2, 0xfe, 0, 0, 2, n], &format!("10.{n}.0.1/24"))
        .await;
}

impl TwoNodes {
    /// Starts both VPPs (`<prefix>a` on core 0, `<prefix>b` on core 1) and joins them by
    /// the underlay, without pods; the mesh is not applied yet.
    pub async fn underlay(prefix: &str) -> TwoNodes {
        TwoNodes::underlay_of(prefix, false).await
    }

    /// [`TwoNodes::underlay`] on an IPv6 underlay (`fd00:2::<n>/64`), without pods.
    pub async fn underlay_v6(prefix: &str) -> TwoNodes {
        TwoNodes::underlay_of(prefix, true).await
    }

    /// [`TwoNodes::start`] on an IPv6 underlay (`fd00:2::<n>/64`) instead.
    pub async fn start_v6(prefix: &str) -> TwoNodes {
        let t = TwoNodes::underlay_of(prefix, true).await;
        linux_pod(&t.a, 1).await;
        linux_pod(&t.b, 2).await;
        t
    }

    async fn underlay_of(prefix: &str, v6: bool) -> TwoNodes {
        let a = VppInstance::start(&format!("{prefix}a"), 0).await;
        let b = VppInstance::start(&format!("{prefix}b"), 1).await;
        quiet_ipv6(&a.netns);
        quiet_ipv6(&b.netns);
        veth(&a.netns, "ul0", &b.netns, "ul0");
        let ul = |n: u8| {
            if v6 {
                format!("fd00:2::{n}/64")
            } else {
                format!("192.0.2.{n}/24")
            }
        };
        for (vpp, n) in [(&a, 1u8), (&b, 2u8)] {
            vpp.host_interface("ul0", [2, 0xfe, 0, 0, 1, n], &ul(n))
                .await;
        }
        let mut nodes = vec![mesh_node("a", 1, 1), mesh_node("b", 2, 2)];
        if v6 {
            for (node, n) in nodes.iter_mut().zip([1u8, 2]) {
                node.underlay = vec![format!("fd00:2::{n}").parse().unwrap()];
            }
        }
        let dp = VppTunnel::with_resolver(api_sock_resolver(&[&a, &b]));
        TwoNodes {
            a,
            b,
            dp,
            secret: ClusterSecret::from_bytes(vec![0x42; 32]).unwrap(),
            cluster: Cluster {
                nodes,
                keys: Keys::single(1),
                // inside the 10.0.0.0/8 uplink route the fail-closed tests add
                cluster_cidrs: vec!["10.0.0.0/12".parse().unwrap()],
                node_encryption: None,
            },
        }
    }

    /// [`TwoNodes::underlay`] with a Linux pod beside each VPP; the mesh is not applied yet.
    pub async fn start(prefix: &str) -> TwoNodes {
        let t = TwoNodes::underlay(prefix).await;
        linux_pod(&t.a, 1).await;
        linux_pod(&t.b, 2).await;
        t
    }

    /// The VPP of node `name` ("a" or "b").
    pub fn vpp(&self, name: &str) -> &VppInstance {
        if name == "a" {
            &self.a
        } else {
            &self.b
        }
    }

    /// The mesh as node `name` sees it.
    pub fn mesh(&self, name: &str) -> Mesh {
        self.cluster.mesh_for(name).unwrap()
    }

    /// Reconciles node `name`.
    pub async fn reconcile(&self, name: &str) -> ReconcileReport {
        self.dp
            .reconcile(
                &self.vpp(name).netns.netns(),
                &self.mesh(name),
                &self.secret,
            )
            .await
            .unwrap()
    }

    /// Reconciles both nodes.
    pub async fn apply(&self) -> (ReconcileReport, ReconcileReport) {
        (self.reconcile("a").await, self.reconcile("b").await)
    }
}

/// The keys of a make-before-break rotation from generation `from` to `to`: accept both,
/// send with `to`, accept only `to`.
pub fn rotation_steps(from: Generation, to: Generation) -> [Keys; 3] {
    [
        Keys {
            tx: from,
            rx: BTreeSet::from([from, to]),
        },
        Keys {
            tx: to,
            rx: BTreeSet::from([from, to]),
        },
        Keys::single(to),
    ]
}

/// Pings `to` from the pod beside `vpp`: `count` echoes, 0.2 s apart.
pub fn ping(vpp: &VppInstance, to: &str, count: u32) -> (bool, String) {
    vpp.netns.exec(&[
        "busybox",
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        to,
    ])
}

/// Captures on the underlay of `vpp` while `f` runs; returns tcpdump's text of the packets
/// that match the pcap `filter` (empty filter: all).
pub fn capture<T>(vpp: &VppInstance, filter: &str, f: impl FnOnce() -> T) -> (String, T) {
    vpp.capture("ul0", filter, f)
}
