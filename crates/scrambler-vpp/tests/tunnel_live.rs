//! The VPP dataplane between two real VPPs, each in its own test namespace, joined by a
//! veth underlay; a Linux "pod" beside each VPP pings the other across ESP.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use scrambler_core::netns::testing::veth;
use scrambler_core::{Cluster, ClusterSecret, Keys, Netns, Node, NodeId, Tunnel};
use scrambler_vpp::api::af_packet::AfPacketCreateV3;
use scrambler_vpp::api::interface::{SwInterfaceAddDelAddress, SwInterfaceSetFlags};
use scrambler_vpp::api::ipsec::{IpsecSaV5Dump, IpsecSadEntryAddV2};
use scrambler_vpp::api::types::{
    AfPacketMode, IfStatusFlags, IpsecCryptoAlg, IpsecProto, IpsecSadEntryV4, MacAddress,
};
use scrambler_vpp::testing::VppInstance;
use scrambler_vpp::tunnel::{owned_sa, tunnel_instance, VppTunnel};
use scrambler_vpp::VppClient;

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

/// A node: VPP with an underlay interface and a pod (a veth whose Linux end is the pod).
async fn node(vpp: &VppInstance, n: u8) {
    let ns = &vpp.netns;
    // no IPv6 chatter on the wire
    for k in ["all", "default"] {
        ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
        ]);
    }
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

fn ping(vpp: &VppInstance, to: &str) -> (bool, String) {
    vpp.netns
        .exec(&["busybox", "ping", "-c", "3", "-W", "2", to])
}

/// Captures on the underlay while `f` runs; returns tcpdump's text of the packets.
fn capture(vpp: &VppInstance, f: impl FnOnce()) -> String {
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
    f();
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(td.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = td.wait();
    let out = Command::new("tcpdump")
        .args(["-nnr"])
        .arg(&file)
        .output()
        .expect("tcpdump -r");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vpps_ping_across_esp() {
    let a = VppInstance::start("tna", 0).await;
    let b = VppInstance::start("tnb", 1).await;
    for ns in [&a.netns, &b.netns] {
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

    // an SA someone else owns must survive everything we do
    let ca = a.client().await;
    let foreign = IpsecSadEntryV4 {
        sad_id: 10,
        spi: 1001,
        protocol: IpsecProto::IPSEC_API_PROTO_ESP,
        crypto_algorithm: IpsecCryptoAlg::IPSEC_API_CRYPTO_ALG_AES_GCM_128,
        ..Default::default()
    };
    let mut foreign = foreign;
    foreign.crypto_key.length = 16;
    ca.request(&IpsecSadEntryAddV2 { entry: foreign })
        .await
        .unwrap();

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
    let secret = ClusterSecret::from_bytes(vec![0x42; 32]).unwrap();
    let mut cluster = Cluster {
        nodes: vec![mesh_node("a", 1, 1), mesh_node("b", 2, 2)],
        keys: Keys::single(1),
    };
    let (na, nb) = (a.netns.netns(), b.netns.netns());

    let apply = |cluster: Cluster| {
        let dp = dp.clone();
        let secret = secret.clone();
        let (na, nb) = (na.clone(), nb.clone());
        async move {
            let ra = dp
                .reconcile(&na, &cluster.mesh_for("a").unwrap(), &secret)
                .await
                .unwrap();
            let rb = dp
                .reconcile(&nb, &cluster.mesh_for("b").unwrap(), &secret)
                .await
                .unwrap();
            (ra, rb)
        }
    };

    let (ra, rb) = apply(cluster.clone()).await;
    assert!(ra.added >= 5 && rb.added >= 5, "{ra:?} {rb:?}");
    let (ra, rb) = apply(cluster.clone()).await;
    assert!(
        ra.is_noop() && rb.is_noop(),
        "second reconcile changed things: {ra:?} {rb:?}"
    );

    let st = dp
        .status(&na, &cluster.mesh_for("a").unwrap())
        .await
        .unwrap();
    assert!(st.encrypted && st.fail_closed, "{st:?}");
    assert!(st.peers[0].is_up(), "{st:?}");
    let tun = a.vppctl(&["show", "ipsec", "protect"]);
    assert!(
        tun.contains(&format!("ipip{}", tunnel_instance(NodeId::new(2).unwrap()))),
        "{tun}"
    );

    // pod a -> pod b, and only ESP on the underlay
    b.vppctl(&["trace", "add", "af-packet-input", "20"]);
    let mut res = (false, String::new());
    let wire = capture(&a, || res = ping(&a, "10.2.0.2"));
    assert!(
        res.0,
        "ping failed: {}\nA: {}\nB: {}",
        res.1,
        a.vppctl(&["show", "errors"]),
        b.vppctl(&["show", "trace"])
    );
    assert!(wire.contains("ESP"), "no ESP on the wire:\n{wire}");
    assert!(
        !wire.contains("ICMP echo"),
        "cleartext on the wire:\n{wire}"
    );

    // key rotation 1 -> 2, make-before-break, pinging at every step
    for keys in [
        Keys {
            tx: 1,
            rx: BTreeSet::from([1, 2]),
        },
        Keys {
            tx: 2,
            rx: BTreeSet::from([1, 2]),
        },
        Keys::single(2),
    ] {
        cluster.keys = keys.clone();
        let (ra, rb) = apply(cluster.clone()).await;
        assert!(!ra.is_noop() && !rb.is_noop(), "{keys:?}: {ra:?} {rb:?}");
        let (ok, out) = ping(&b, "10.1.0.2");
        assert!(ok, "ping after rotation step {keys:?} failed: {out}");
    }
    let sas: Vec<u32> = ca
        .dump(&IpsecSaV5Dump { sa_id: u32::MAX })
        .await
        .unwrap()
        .iter()
        .map(|d| d.entry.sad_id)
        .collect();
    assert_eq!(
        sas.iter().filter(|id| owned_sa(**id)).count(),
        2,
        "{sas:x?}"
    );

    // remove everything of ours, leave the rest
    let ra = dp.remove(&na).await.unwrap();
    assert!(ra.removed >= 4, "{ra:?}");
    assert!(dp.remove(&na).await.unwrap().is_noop());
    let sas: Vec<u32> = ca
        .dump(&IpsecSaV5Dump { sa_id: u32::MAX })
        .await
        .unwrap()
        .iter()
        .map(|d| d.entry.sad_id)
        .collect();
    assert_eq!(sas, vec![10]);
    let st = dp
        .status(&na, &cluster.mesh_for("a").unwrap())
        .await
        .unwrap();
    assert!(!st.encrypted && !st.peers[0].is_up(), "{st:?}");
    let (ok, _) = ping(&a, "10.2.0.2");
    assert!(!ok, "pods still reach each other without the tunnel");
    ca.close().await.unwrap();
}
