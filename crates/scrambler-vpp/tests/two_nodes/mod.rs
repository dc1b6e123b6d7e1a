//! Two real VPPs, each in its own test namespace, joined by a veth underlay (192.0.2.0/24);
//! beside each VPP a Linux "pod" (10.<n>.0.2/24) on a veth VPP takes with af_packet.
//! Shared by the fail-closed and stats tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use scrambler_core::netns::testing::veth;
use scrambler_core::{
    Cluster, ClusterSecret, Keys, Mesh, Netns, Node, NodeId, ReconcileReport, Tunnel,
};
use scrambler_vpp::api::af_packet::AfPacketCreateV3;
use scrambler_vpp::api::interface::{SwInterfaceAddDelAddress, SwInterfaceSetFlags};
use scrambler_vpp::api::types::{AfPacketMode, IfStatusFlags, MacAddress};
use scrambler_vpp::testing::VppInstance;
use scrambler_vpp::tunnel::VppTunnel;
use scrambler_vpp::VppClient;

/// The two nodes, the dataplane driving both, and their cluster.
pub struct TwoNodes {
    pub a: VppInstance,
    pub b: VppInstance,
    pub dp: VppTunnel,
    pub secret: ClusterSecret,
    pub cluster: Cluster,
}

async fn host_if(c: &VppClient, name: &str, mac: [u8; 6], addr: &str) {
    let r = c
        .request(&AfPacketCreateV3 {
            mode: AfPacketMode::AF_PACKET_API_MODE_ETHERNET,
            hw_addr: MacAddress(mac),
            host_if_name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.request(&SwInterfaceSetFlags {
        sw_if_index: r.sw_if_index,
        flags: IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP,
    })
    .await
    .unwrap();
    c.request(&SwInterfaceAddDelAddress {
        sw_if_index: r.sw_if_index,
        is_add: true,
        del_all: false,
        prefix: addr.parse::<ipnet::IpNet>().unwrap().into(),
    })
    .await
    .unwrap();
}

/// A node: VPP with an underlay interface and a pod.
async fn node(vpp: &VppInstance, n: u8) {
    let ns = &vpp.netns;
    ns.ip(&[
        "link", "add", "vpod0", "type", "veth", "peer", "name", "pod0",
    ]);
    ns.ip(&["link", "set", "vpod0", "up"]);
    ns.ip(&["link", "set", "pod0", "up"]);
    ns.ip(&["addr", "add", &format!("10.{n}.0.2/24"), "dev", "pod0"]);
    ns.ip(&["route", "add", "default", "via", &format!("10.{n}.0.1")]);
    let c = vpp.client().await;
    host_if(&c, "ul0", [2, 0xfe, 0, 0, 1, n], &format!("192.0.2.{n}/24")).await;
    host_if(
        &c,
        "vpod0",
        [2, 0xfe, 0, 0, 2, n],
        &format!("10.{n}.0.1/24"),
    )
    .await;
    c.close().await.unwrap();
}

fn mesh_node(name: &str, id: u32, n: u8) -> Node {
    Node {
        name: name.into(),
        id: NodeId::new(id).unwrap(),
        underlay: vec![format!("192.0.2.{n}").parse().unwrap()],
        pod_cidrs: vec![format!("10.{n}.0.0/24").parse().unwrap()],
    }
}

impl TwoNodes {
    /// Starts both VPPs (`<prefix>a` on core 0, `<prefix>b` on core 1) and wires them; the
    /// mesh is not applied yet.
    pub async fn start(prefix: &str) -> TwoNodes {
        let a = VppInstance::start(&format!("{prefix}a"), 0).await;
        let b = VppInstance::start(&format!("{prefix}b"), 1).await;
        for ns in [&a.netns, &b.netns] {
            // no IPv6 chatter on the wire
            for k in ["all", "default"] {
                ns.exec(&[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
                ]);
            }
        }
        veth(&a.netns, "ul0", &b.netns, "ul0");
        node(&a, 1).await;
        node(&b, 2).await;
        let socks: HashMap<PathBuf, PathBuf> = [
            (a.netns.path(), a.api_sock()),
            (b.netns.path(), b.api_sock()),
        ]
        .into_iter()
        .collect();
        let dp = VppTunnel::with_resolver(move |ns| match ns {
            Netns::Path(p) => socks
                .get(p)
                .cloned()
                .ok_or_else(|| scrambler_core::Error::config("unknown node")),
            Netns::Current => Err(scrambler_core::Error::config("no VPP here")),
        });
        TwoNodes {
            a,
            b,
            dp,
            secret: ClusterSecret::from_bytes(vec![0x42; 32]).unwrap(),
            cluster: Cluster {
                nodes: vec![mesh_node("a", 1, 1), mesh_node("b", 2, 2)],
                keys: Keys::single(1),
            },
        }
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
    let file = vpp.run_dir.join("ul0.pcap");
    let mut td = Command::new("ip")
        .args([
            "netns",
            "exec",
            &vpp.netns.name,
            "tcpdump",
            "-nni",
            "ul0",
            "-U",
            "-w",
        ])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(1500));
    let r = f();
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(td.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = td.wait();
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-nnr"]).arg(&file);
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    let out = cmd.output().expect("tcpdump -r");
    (String::from_utf8_lossy(&out.stdout).into_owned(), r)
}
