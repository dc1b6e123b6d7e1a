//! End-to-end tests of [`IpvlanAttach`] against the real kernel: two "nodes" (network
//! namespaces) whose uplinks `ul0` meet on a bridge in a `wire` namespace, pods (empty
//! namespaces) attached as ipvlan slaves of `ul0`.
//!
//! The build machine's kernel has no ipvlan: every `vm_ipvlan_*` test then re-runs inside
//! Debian's stock kernel under qemu through scrambler-vmtest (one boot for the group).

use scrambler_core::{
    AttachRequest, AttachmentId, CniResult, Error, IpConfig, NetConf, Netns, Route,
};
use scrambler_ipvlan::{IpvlanAttach, IpvlanConfig, Mode};
use scrambler_netlink::AttachOnce;
use scrambler_testkit::vm::{Feature, VmSuite};
use std::process::Command;

static VM: VmSuite = VmSuite::new("vm_ipvlan_");
const FEATURES: &[Feature] = &[Feature::Ipvlan];

use scrambler_testkit::netns::TestNetns as Ns;
use scrambler_testkit::wire::Underlay;

/// Two nodes on a wire (see [`Underlay`]); node i has `ul0` = 192.0.2.i/24 and a default
/// route via 192.0.2.254; one empty pod namespace per node.
struct Lab {
    nodes: Vec<Ns>,
    pods: Vec<Ns>,
    wire: Ns,
}

impl Lab {
    fn new() -> Lab {
        let Underlay { nodes, pods, wire } = Underlay::new("iv", 2);
        Lab { nodes, pods, wire }
    }

    fn req(&self, i: usize) -> AttachRequest {
        AttachRequest {
            id: AttachmentId::new(format!("c{i}"), "eth0"),
            pod_netns: self.pods[i].netns(),
            args: vec![],
            mtu: None,
        }
    }
}

fn ipvlan(mode: Mode, master: Option<&str>) -> IpvlanAttach {
    IpvlanAttach::new(IpvlanConfig {
        network: "pods".into(),
        master: master.map(str::to_string),
        mode,
        ..Default::default()
    })
    .unwrap()
}

fn addrs(addr: &str, gw: Option<&str>) -> CniResult {
    CniResult {
        ips: vec![IpConfig {
            address: addr.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            interface: None,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn vm_ipvlan_l2_pods_reach_each_other_across_nodes() {
    if VM.delegate("vm_ipvlan_l2_pods_reach_each_other_across_nodes", FEATURES) {
        return;
    }
    let lab = Lab::new();
    let a = ipvlan(Mode::L2, Some("ul0"));
    let mut results = Vec::new();
    for i in 0..2 {
        let r = a
            .attach_in(
                &lab.nodes[i].netns(),
                &lab.req(i),
                &addrs(&format!("10.10.0.{}/24", i + 2), Some("10.10.0.1")),
            )
            .await
            .unwrap();
        assert_eq!(r.interfaces[0].name, "eth0");
        assert_eq!(r.interfaces[0].mtu, Some(1500));
        assert_eq!(r.routes.len(), 1, "{r:?}");
        a.check_in(&lab.nodes[i].netns(), &lab.req(i), &r)
            .await
            .unwrap();
        results.push(r);
    }
    let link = lab.pods[0].ip(&["-d", "link", "show", "eth0"]);
    assert!(
        link.contains("ipvlan") && link.contains("mode l2 bridge"),
        "{link}"
    );
    let routes = lab.pods[0].ip(&["route"]);
    assert!(
        routes.contains("default via 10.10.0.1 dev eth0"),
        "{routes}"
    );
    assert!(lab.pods[0].ping("10.10.0.3"), "pod1 -> pod2 over l2");
    assert!(lab.pods[1].ping("10.10.0.2"), "pod2 -> pod1 over l2");

    // CHECK is honest: a missing address is reported
    lab.pods[0].ip(&["addr", "del", "10.10.0.2/24", "dev", "eth0"]);
    let e = a
        .check_in(&lab.nodes[0].netns(), &lab.req(0), &results[0])
        .await
        .unwrap_err();
    assert_eq!(e.code(), 103, "{e}");
    assert!(e.to_string().contains("10.10.0.2/24"), "{e}");
    // … and so is a different mode
    let e = ipvlan(Mode::L3, Some("ul0"))
        .check_in(&lab.nodes[1].netns(), &lab.req(1), &results[1])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expected l3"), "{e}");

    // DEL is idempotent
    for _ in 0..2 {
        a.detach_in(&lab.nodes[0].netns(), &lab.req(0))
            .await
            .unwrap();
    }
    assert!(!lab.pods[0].ip(&["link"]).contains("eth0"));
}

async fn l3_lab(mode: Mode) {
    let lab = Lab::new();
    let a = ipvlan(mode, Some("ul0"));
    for i in 0..2 {
        // the other node's pod subnet via the other node's underlay
        let j = 1 - i;
        lab.nodes[i].ip(&[
            "route",
            "add",
            &format!("10.1.{}.0/24", j + 1),
            "via",
            &format!("192.0.2.{}", j + 1),
        ]);
        let r = a
            .attach_in(
                &lab.nodes[i].netns(),
                &lab.req(i),
                &addrs(&format!("10.1.{}.2/24", i + 1), Some("10.1.1.1")),
            )
            .await
            .unwrap();
        assert_eq!(r.routes[0].gw, None, "{r:?}");
        a.check_in(&lab.nodes[i].netns(), &lab.req(i), &r)
            .await
            .unwrap();
    }
    let link = lab.pods[0].ip(&["-d", "link", "show", "eth0"]);
    assert!(
        link.contains(&format!("mode {} bridge", mode.as_str())),
        "{link}"
    );
    let routes = lab.pods[0].ip(&["route"]);
    assert!(routes.contains("default dev eth0"), "{routes}");
    assert!(lab.pods[0].ping("10.1.2.2"), "pod1 -> pod2 over {mode:?}");
    assert!(lab.pods[1].ping("10.1.1.2"), "pod2 -> pod1 over {mode:?}");
    for i in 0..2 {
        a.detach_in(&lab.nodes[i].netns(), &lab.req(i))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn vm_ipvlan_l3_pods_reach_each_other_across_nodes() {
    if VM.delegate("vm_ipvlan_l3_pods_reach_each_other_across_nodes", FEATURES) {
        return;
    }
    l3_lab(Mode::L3).await;
}

#[tokio::test]
async fn vm_ipvlan_l3s_pods_reach_each_other_across_nodes() {
    if VM.delegate("vm_ipvlan_l3s_pods_reach_each_other_across_nodes", FEATURES) {
        return;
    }
    l3_lab(Mode::L3s).await;
}

#[tokio::test]
async fn vm_ipvlan_master_defaults_to_default_route_and_bad_masters_fail() {
    if VM.delegate(
        "vm_ipvlan_master_defaults_to_default_route_and_bad_masters_fail",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    let node = lab.nodes[0].netns();
    // no master: the default route's interface (ul0); its MTU is taken
    lab.nodes[0].ip(&["link", "set", "ul0", "mtu", "1400"]);
    let a = ipvlan(Mode::L3, None);
    let r = a
        .attach_in(&node, &lab.req(0), &addrs("10.1.1.2/24", None))
        .await
        .unwrap();
    assert_eq!(r.interfaces[0].mtu, Some(1400));
    let link = lab.pods[0].ip(&["-d", "link", "show", "eth0"]);
    assert!(
        link.contains("mtu 1400") && link.contains("ipvlan"),
        "{link}"
    );
    // the same ifname again: refused, the first one untouched
    let e = a
        .attach_in(&node, &lab.req(0), &addrs("10.1.1.3/24", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 102, "{e}");
    a.check_in(&node, &lab.req(0), &r).await.unwrap();

    // a master that does not exist
    let e = ipvlan(Mode::L2, Some("nope0"))
        .attach_in(&node, &lab.req(1), &addrs("10.1.1.4/24", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 7, "{e}");
    assert!(e.to_string().contains("\"nope0\" does not exist"), "{e}");

    // a master that is itself an ipvlan slave
    lab.nodes[0].ip(&[
        "link", "add", "iv0", "link", "ul0", "type", "ipvlan", "mode", "l3",
    ]);
    let e = ipvlan(Mode::L3, Some("iv0"))
        .attach_in(&node, &lab.req(1), &addrs("10.1.1.4/24", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 7, "{e}");
    assert!(e.to_string().contains("itself an ipvlan slave"), "{e}");

    // no master and no default route
    lab.nodes[1].ip(&["route", "del", "default"]);
    let e = ipvlan(Mode::L3, None)
        .attach_in(
            &lab.nodes[1].netns(),
            &lab.req(1),
            &addrs("10.1.2.2/24", None),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), 7, "{e}");
    assert!(e.to_string().contains("no default route"), "{e}");
    assert!(!lab.pods[1].ip(&["link"]).contains("eth0"));

    // l2 + encrypt is refused by the conf
    let conf: NetConf = serde_json::from_value(serde_json::json!({
        "cniVersion": "1.1.0", "name": "n", "type": "scrambler-cni", "backend": "ipvlan",
        "mode": "l2", "encrypt": true}))
    .unwrap();
    assert_eq!(IpvlanAttach::from_netconf(&conf).unwrap_err().code(), 7);
}

#[tokio::test]
async fn vm_ipvlan_failed_add_leaves_nothing_and_del_is_idempotent() {
    if VM.delegate(
        "vm_ipvlan_failed_add_leaves_nothing_and_del_is_idempotent",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    let node = lab.nodes[0].netns();
    let a = ipvlan(Mode::L2, Some("ul0"));
    // a route via a gateway that is not on-link fails after the link exists
    let mut bad = addrs("10.10.0.2/24", Some("10.10.0.1"));
    bad.routes.push(Route {
        dst: "10.20.0.0/16".parse().unwrap(),
        gw: Some("172.16.0.1".parse().unwrap()),
        mtu: None,
    });
    let e = a.attach_in(&node, &lab.req(0), &bad).await.unwrap_err();
    assert_eq!(e.code(), 100, "{e}");
    assert!(!lab.pods[0].ip(&["link"]).contains("eth0"), "undone");

    // DEL: interface gone, netns gone, no netns at all
    a.detach_in(&node, &lab.req(0)).await.unwrap();
    let r = a
        .attach_in(&node, &lab.req(0), &addrs("10.10.0.2/24", None))
        .await
        .unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.10.0.2/24");
    // an interface that is not ours is left alone
    let other = ipvlan(Mode::L2, Some("ul0"));
    let mut foreign = lab.req(0);
    foreign.id = AttachmentId::new("someone-else", "eth0");
    other.detach_in(&node, &foreign).await.unwrap();
    assert!(lab.pods[0].ip(&["link"]).contains("eth0"));
    let gone = AttachRequest {
        pod_netns: Netns::path("/run/netns/scr-does-not-exist"),
        ..lab.req(0)
    };
    a.detach_in(&node, &gone).await.unwrap();
    let none = AttachRequest {
        pod_netns: Netns::Path(Default::default()),
        ..lab.req(0)
    };
    a.detach_in(&node, &none).await.unwrap();
    // CHECK of a missing pod netns is code 3
    let e: Error = a.check_in(&node, &gone, &r).await.unwrap_err();
    assert_eq!(e.code(), 3, "{e}");
}

/// DEL's use of the attachment records needs no ipvlan in the kernel: with the pod netns
/// gone, a record made in this node namespace is used (nothing to unregister here: no
/// setup) and removed; a record of another node namespace, and an unreadable one, are
/// removed without touching this node; without a record nothing happens.
#[tokio::test]
async fn del_with_netns_gone_consumes_the_record() {
    use scrambler_ipvlan::record::{host_id, Record};
    let node = Ns::new("ivr");
    let state = tempfile::tempdir().unwrap();
    let a = IpvlanAttach::new(IpvlanConfig {
        network: "pods".into(),
        mode: Mode::L3,
        encrypt: true,
        cluster_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        state_dir: Some(state.path().into()),
        ..Default::default()
    })
    .unwrap()
    .with_node_dir(state.path().join("node"))
    .unwrap();
    let records = a.records().unwrap();
    assert_eq!(records.dir(), state.path().join("pods"));
    let gone = |cid: &str| AttachRequest {
        id: AttachmentId::new(cid, "eth0"),
        pod_netns: Netns::path("/run/netns/scr-ivr-gone"),
        args: vec![],
        mtu: None,
    };
    let rec = |cid: &str, host| Record {
        id: AttachmentId::new(cid, "eth0"),
        host,
        ips: vec!["10.1.1.9".parse().unwrap()],
    };
    records
        .write(&rec("here", host_id(&node.netns()).unwrap()))
        .unwrap();
    records.write(&rec("elsewhere", 1)).unwrap();
    std::fs::write(records.dir().join("garbled:eth0"), "{").unwrap();
    for cid in ["here", "elsewhere", "garbled", "never-added"] {
        a.detach_in(&node.netns(), &gone(cid)).await.unwrap();
        a.detach_in(&node.netns(), &gone(cid)).await.unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(records.dir()).unwrap().collect();
    assert!(left.is_empty(), "records left: {left:?}");
    assert!(!node.ip(&["link"]).contains("scr-ipvl"));
    // GC of an empty store is a no-op
    assert!(a.gc(&node.netns(), &[]).await.unwrap().is_empty());
}

/// Concurrent ADDs and DELs of `"encrypt": true` pods on one node, each in its own task as
/// separate CNI processes would be: every ADD and DEL succeeds, a pod is registered with a
/// present setup (node link, nft table) whenever its ADD has returned — the DEL of another,
/// momentarily last, pod never removes the setup under it — and the setup goes with the
/// last DEL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_ipvlan_concurrent_add_del_keep_the_node_setup() {
    if VM.delegate("vm_ipvlan_concurrent_add_del_keep_the_node_setup", FEATURES) {
        return;
    }
    use scrambler_ipvlan::IpvlanNode;
    use std::net::IpAddr;
    use std::sync::Arc;
    let lab = Lab::new();
    let node = lab.nodes[0].netns();
    let pods: Vec<Ns> = (0..4).map(|i| Ns::new(&format!("ivc{i}"))).collect();
    let state = tempfile::tempdir().unwrap();
    let a = Arc::new(
        IpvlanAttach::new(IpvlanConfig {
            network: "pods".into(),
            master: Some("ul0".into()),
            mode: Mode::L3,
            encrypt: true,
            cluster_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            state_dir: Some(state.path().into()),
            ..Default::default()
        })
        .unwrap(),
    );
    let reqs: Vec<AttachRequest> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| AttachRequest {
            id: AttachmentId::new(format!("cc{i}"), "eth0"),
            pod_netns: p.netns(),
            args: vec![],
            mtu: None,
        })
        .collect();
    let ip = |i: usize| -> IpAddr { format!("10.1.1.{}", i + 2).parse().unwrap() };
    let mut tasks = Vec::new();
    for (i, req) in reqs.iter().cloned().enumerate() {
        let (a, node) = (a.clone(), node.clone());
        tasks.push(tokio::spawn(async move {
            let cidr = format!("{}/24", ip(i));
            for round in 0..4 {
                a.attach_in(&node, &req, &addrs(&cidr, None))
                    .await
                    .unwrap_or_else(|e| panic!("ADD of pod {i}, round {round}: {e}"));
                assert!(
                    IpvlanNode::pods(&node).await.unwrap().contains(&ip(i)),
                    "pod {i} unregistered right after its ADD (round {round})"
                );
                assert_eq!(
                    scrambler_ipvlan::nft::families(&node).await.unwrap(),
                    ["ip"],
                    "no nft table right after the ADD of pod {i} (round {round})"
                );
                if round < 3 {
                    a.detach_in(&node, &req)
                        .await
                        .unwrap_or_else(|e| panic!("DEL of pod {i}, round {round}: {e}"));
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut registered = IpvlanNode::pods(&node).await.unwrap();
    registered.sort();
    assert_eq!(registered, (0..4).map(ip).collect::<Vec<_>>());
    let dels: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|req| {
            let (a, node) = (a.clone(), node.clone());
            tokio::spawn(async move { a.detach_in(&node, &req).await })
        })
        .collect();
    for d in dels {
        d.await.unwrap().unwrap();
    }
    assert!(
        !IpvlanNode::present(&node).await.unwrap(),
        "the last DEL removed the setup"
    );
    assert!(a.records().unwrap().list().unwrap().is_empty());
}

/// Two `"encrypt": true` networks on one node, with different `clusterCidrs` and their
/// records under different `stateDir`s (network `a` and `a-b`: names that share a prefix):
/// they share the node setup through the node registry (one lock, one table made of both
/// networks' rules), a network on a second master or in another mode on the shared master
/// is refused (code 7) leaving nothing behind, and the guard of one network stays while it
/// has pods: after the DEL of the other's last pod, and after a DEL that finds `scr-ipvl`
/// missing. The last DEL removes everything.
#[tokio::test]
async fn vm_ipvlan_two_encrypted_networks_share_the_node_setup() {
    if VM.delegate(
        "vm_ipvlan_two_encrypted_networks_share_the_node_setup",
        FEATURES,
    ) {
        return;
    }
    use scrambler_ipvlan::node::NODE_LINK;
    use scrambler_ipvlan::IpvlanNode;
    let lab = Lab::new();
    let n = &lab.nodes[0];
    let node = n.netns();
    let peer = Ns::new("ivm2");
    n.veth("ul1", &peer, "ul1p");
    let state = tempfile::tempdir().unwrap();
    let net = |name: &str, master: &str, mode: Mode, encrypt: bool, cluster: &str| {
        IpvlanAttach::new(IpvlanConfig {
            network: name.into(),
            master: Some(master.into()),
            mode,
            encrypt,
            cluster_cidrs: if encrypt {
                vec![cluster.parse().unwrap()]
            } else {
                vec![]
            },
            state_dir: Some(state.path().join(format!("state-{name}"))),
            ..Default::default()
        })
        .unwrap()
    };
    let a = net("a", "ul0", Mode::L3, true, "10.1.0.0/16");
    let b = net("a-b", "ul0", Mode::L3, true, "10.2.0.0/16");
    let pod = |cid: &str, ns: &Ns| AttachRequest {
        id: AttachmentId::new(cid, "eth0"),
        pod_netns: ns.netns(),
        args: vec![],
        mtu: None,
    };
    let (pa_ns, pb_ns, px_ns) = (Ns::new("ivma"), Ns::new("ivmb"), Ns::new("ivmx"));
    let (pa, pb, px) = (pod("pa", &pa_ns), pod("pb", &pb_ns), pod("px", &px_ns));
    let table = || {
        let (ok, t) = n.exec(&["nft", "list", "table", "ip", "scrambler-ipvlan"]);
        if ok {
            t
        } else {
            String::new()
        }
    };
    let guard_a = "oifname \"ul0\" ip saddr 10.1.0.0/16 ip daddr 10.1.0.0/16 rt ipsec missing";
    let guard_b = "oifname \"ul0\" ip saddr 10.2.0.0/16 ip daddr 10.2.0.0/16 rt ipsec missing";
    let reroute_a = "ip saddr 10.1.1.0/24 counter";
    let reroute_b = "ip saddr 10.2.1.0/24 counter";
    let networks = || -> Vec<String> {
        a.registry(&node)
            .unwrap()
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.network)
            .collect()
    };

    a.attach_in(&node, &pa, &addrs("10.1.1.2/24", None))
        .await
        .unwrap();
    b.attach_in(&node, &pb, &addrs("10.2.1.2/24", None))
        .await
        .unwrap();
    // one node registry and lock in the fixed place, whatever each stateDir says
    let reg = a.registry(&node).unwrap();
    assert_eq!(reg, b.registry(&node).unwrap());
    assert!(reg
        .lock_path()
        .starts_with(scrambler_ipvlan::registry::NODE_DIR));
    assert_eq!(networks(), ["a", "a-b"]);
    let t = table();
    for rule in [guard_a, guard_b, reroute_a, reroute_b] {
        assert!(t.contains(rule), "{rule} missing from the table:\n{t}");
    }
    let routes = n.ip(&["route", "show", "dev", NODE_LINK]);
    for r in ["10.1.1.0/24", "10.2.1.0/24", "10.1.1.2 ", "10.2.1.2 "] {
        assert!(routes.contains(r), "{r} missing: {routes}");
    }

    // a third encrypted network on a second master, or another mode on ul0 (encrypted or
    // not: one mode per master), is refused naming the network in its way; nothing is left
    let refused = [
        (
            net("c", "ul1", Mode::L3, true, "10.3.0.0/16"),
            "share one master",
        ),
        (
            net("c", "ul0", Mode::L3s, true, "10.3.0.0/16"),
            "one ipvlan mode per master",
        ),
        (
            net("c", "ul0", Mode::L2, false, ""),
            "one ipvlan mode per master",
        ),
    ];
    for (c, why) in &refused {
        let e = c
            .attach_in(&node, &px, &addrs("10.3.1.2/24", None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert!(e.to_string().contains(why), "{e}");
        assert!(e.to_string().contains("network \"a\""), "{e}");
        assert!(!px_ns.ip(&["link"]).contains("eth0"), "no pod link");
        assert_eq!(networks(), ["a", "a-b"], "no entry for c");
        assert!(c.records().unwrap().list().unwrap().is_empty(), "no record");
        assert_eq!(table(), t, "table untouched");
        assert!(!n.ip(&["route"]).contains("10.3."), "no route");
    }
    // an unencrypted network on the other master is none of the registry's business
    let l2 = net("plain", "ul1", Mode::L2, false, "");
    l2.attach_in(&node, &px, &addrs("10.3.1.2/24", None))
        .await
        .unwrap();
    l2.detach_in(&node, &px).await.unwrap();

    // the DEL of network a's last pod leaves network a-b's guard and re-route; a's go
    a.detach_in(&node, &pa).await.unwrap();
    let t = table();
    assert!(t.contains(guard_b) && t.contains(reroute_b), "{t}");
    assert!(!t.contains("10.1."), "a's rules left: {t}");
    assert_eq!(networks(), ["a-b"]);
    let routes = n.ip(&["route", "show", "dev", NODE_LINK]);
    assert!(!routes.contains("10.1."), "a's routes left: {routes}");
    assert!(routes.contains("10.2.1.2 "), "{routes}");

    // a pod of a again; then scr-ipvl goes missing and a's last pod is deleted: a-b still
    // has a pod, so its guard stays (pods are counted from records, not from links)
    a.attach_in(&node, &pa, &addrs("10.1.1.2/24", None))
        .await
        .unwrap();
    assert!(table().contains(guard_a));
    n.ip(&["link", "del", NODE_LINK]);
    a.detach_in(&node, &pa).await.unwrap();
    let t = table();
    assert!(
        t.contains(guard_b) && t.contains(reroute_b),
        "guard of a-b lost: {t}"
    );
    assert!(!t.contains("10.1."), "{t}");
    assert_eq!(networks(), ["a-b"]);

    // an ADD brings the node link back; the last DEL removes everything
    a.attach_in(&node, &pa, &addrs("10.1.1.2/24", None))
        .await
        .unwrap();
    let routes = n.ip(&["route", "show", "dev", NODE_LINK]);
    for r in ["10.1.1.0/24", "10.2.1.0/24", "10.1.1.2 ", "10.2.1.2 "] {
        assert!(routes.contains(r), "{r} not back: {routes}");
    }
    b.detach_in(&node, &pb).await.unwrap();
    let t = table();
    assert!(t.contains(guard_a) && !t.contains("10.2."), "{t}");
    assert_eq!(networks(), ["a"]);
    a.detach_in(&node, &pa).await.unwrap();
    assert!(!IpvlanNode::present(&node).await.unwrap(), "setup left");
    assert!(table().is_empty());
    assert!(networks().is_empty());
    let routes = n.ip(&["route"]);
    assert!(
        !routes.contains("10.1.") && !routes.contains("10.2."),
        "{routes}"
    );
    for x in [&a, &b] {
        assert!(x.records().unwrap().list().unwrap().is_empty());
    }
}

mod encrypted {
    //! `"encrypt": true` in l3: the node's xfrm mesh (scrambler-xfrm) carries pod traffic
    //! between nodes as ESP only.

    use super::*;
    use scrambler_core::{ClusterSecret, Keys, Mesh, Node, NodeId, Tunnel};
    use scrambler_ipvlan::IpvlanNode;
    use scrambler_testkit::wire::capture_bridge;
    use scrambler_xfrm::{XfrmConfig, XfrmTunnel};

    const FEATURES: &[Feature] = &[Feature::Ipvlan, Feature::Esp, Feature::XfrmInterface];

    fn node(id: u32) -> Node {
        Node {
            name: format!("node{id}"),
            id: NodeId::new(id).unwrap(),
            epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
            underlay: vec![format!("192.0.2.{id}").parse().unwrap()],
            pod_cidrs: vec![format!("10.1.{id}.0/24").parse().unwrap()],
            previous_epochs: Vec::new(),
        }
    }

    fn mesh(local: u32) -> Mesh {
        Mesh {
            local: node(local),
            peers: vec![node(3 - local)],
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            node_encryption: None,
        }
    }

    /// What a node has, for failure messages.
    fn diag(n: &Ns) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &n.name, "sh", "-c"])
            .arg(
                "ip route; ip -s link show scrambler0; ip xfrm policy; ip -s xfrm state | head -40; \
                 cat /proc/net/xfrm_stat | grep -v ' 0$'; nft list ruleset; lsmod | grep nf; \
                 nstat -az 2>/dev/null | grep -v ' 0 ' | head -40",
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// The node's setup as the CLI tools see it: our link, our nft table.
    fn setup_seen(n: &Ns) -> (bool, bool) {
        let link = n
            .ip(&["-d", "link"])
            .contains(scrambler_ipvlan::node::NODE_LINK);
        let (_, tables) = n.exec(&["nft", "list", "tables"]);
        (link, tables.contains("scrambler-ipvlan"))
    }

    /// Pods in l3/l3s with `"encrypt": true` on two nodes: the attachment makes the node
    /// setup itself (re-route chain, cleartext guard, node-side slave, forwarding). Before
    /// the mesh exists, pod traffic on a cleartext route is dropped by the guard; with the
    /// mesh, pods reach each other and the wire carries ESP only; the DEL of a node's last
    /// pod, or `IpvlanNode::remove`, leaves nothing of ours.
    async fn encrypted_lab(mode: Mode) {
        let lab = Lab::new();
        let tunnel = XfrmTunnel::new(XfrmConfig {
            guard_supernets: vec!["10.1.0.0/16".parse().unwrap()],
            ..XfrmConfig::default()
        })
        .unwrap();
        let secret = ClusterSecret::from_bytes(vec![0x42; 32]).unwrap();
        let state = tempfile::tempdir().unwrap();
        let a = IpvlanAttach::new(IpvlanConfig {
            network: "pods".into(),
            master: Some("ul0".into()),
            mode,
            encrypt: true,
            cluster_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            state_dir: Some(state.path().into()),
            ..Default::default()
        })
        .unwrap();
        let records = a.records().unwrap();
        let mut results = Vec::new();
        for i in 0..2 {
            let id = i as u32 + 1;
            let n = &lab.nodes[i];
            // a cleartext path to the other node's pods, as if the mesh were missing
            n.ip(&[
                "route",
                "add",
                &format!("10.1.{}.0/24", 3 - id),
                "via",
                &format!("192.0.2.{}", 3 - id),
            ]);
            let r = a
                .attach_in(
                    &n.netns(),
                    &lab.req(i),
                    &addrs(&format!("10.1.{id}.2/24"), None),
                )
                .await
                .unwrap();
            assert_eq!(
                r.interfaces[0].mtu,
                Some(scrambler_core::esp::pod_mtu(1500, true))
            );
            assert_eq!(setup_seen(n), (true, true), "setup on node{id}");
            let (ok, chain) =
                n.exec(&["nft", "list", "chain", "ip", "scrambler-ipvlan", "reroute"]);
            assert!(ok && chain.contains("meta mark set"), "{chain}");
            assert_eq!(
                IpvlanNode::pods(&n.netns()).await.unwrap(),
                vec![format!("10.1.{id}.2").parse::<std::net::IpAddr>().unwrap()]
            );
            let link = n.ip(&["-d", "link", "show", scrambler_ipvlan::node::NODE_LINK]);
            assert!(link.contains(&format!("mode {} ", mode.as_str())), "{link}");
            a.check_in(&n.netns(), &lab.req(i), &r).await.unwrap();
            let rec = records.read(&lab.req(i).id).unwrap().expect("record");
            assert_eq!(rec.ips, IpvlanNode::pods(&n.netns()).await.unwrap());
            results.push(r);
        }
        // a second pod on node1
        let pod3 = Ns::new("ivp3");
        let req3 = AttachRequest {
            id: AttachmentId::new("c2", "eth0"),
            pod_netns: pod3.netns(),
            args: vec![],
            mtu: None,
        };
        a.attach_in(&lab.nodes[0].netns(), &req3, &addrs("10.1.1.3/24", None))
            .await
            .unwrap();
        assert_eq!(records.list().unwrap().len(), 3);
        // ensure of what the node registry says is idempotent
        let node1 = lab.nodes[0].netns();
        let entries = a.registry(&node1).unwrap().entries().unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        let again = scrambler_ipvlan::registry::node_setup(&entries)
            .unwrap()
            .ensure(&node1)
            .await
            .unwrap();
        assert_eq!(again, Default::default());

        // no mesh yet: the guard drops pod traffic on the cleartext route
        let cap = capture_bridge(&lab.wire);
        assert!(!lab.pods[0].ping("10.1.2.2"), "expected drop without mesh");
        let lines = cap.finish();
        assert!(
            !lines.iter().any(|l| l.contains(" 10.1.")),
            "cleartext without the mesh: {lines:#?}"
        );

        for i in 0..2 {
            let id = i as u32 + 1;
            let n = &lab.nodes[i];
            n.ip(&["route", "del", &format!("10.1.{}.0/24", 3 - id)]);
            tunnel
                .reconcile(&n.netns(), &mesh(id), &secret)
                .await
                .unwrap();
        }
        let cap = capture_bridge(&lab.wire);
        let there = lab.pods[0].ping("10.1.2.2");
        let back = lab.pods[1].ping("10.1.1.2");
        let lines = cap.finish();
        assert!(
            there && back,
            "{mode:?}: pings {there} {back}; wire: {lines:#?}\nnode1: {}",
            diag(&lab.nodes[0])
        );
        let clear: Vec<_> = lines.iter().filter(|l| l.contains(" 10.1.")).collect();
        assert!(
            clear.is_empty(),
            "cleartext pod traffic on the wire: {clear:#?}"
        );
        let esp = lines.iter().filter(|l| l.contains("ESP")).count();
        assert!(esp >= 8, "ESP on the wire: {lines:#?}");
        // pods to the other node's underlay address (the `kubernetes` Service on a
        // control-plane node, a kubelet): through the mesh too, never in the clear
        let cap = capture_bridge(&lab.wire);
        let there = lab.pods[0].ping("192.0.2.2");
        let back = lab.pods[1].ping("192.0.2.1");
        let lines = cap.finish();
        assert!(
            there && back,
            "{mode:?}: pod -> peer underlay {there} {back}; wire: {lines:#?}\nnode1: {}",
            diag(&lab.nodes[0])
        );
        let clear: Vec<_> = lines.iter().filter(|l| l.contains(" 10.1.")).collect();
        assert!(
            clear.is_empty(),
            "pod -> peer underlay in the clear: {clear:#?}"
        );
        assert!(
            lines.iter().filter(|l| l.contains("ESP")).count() >= 4,
            "ESP on the wire: {lines:#?}"
        );

        // node1: DEL after the pod's netns is gone (kubelet after a runtime crash)
        // unregisters exactly that pod, from its record
        let node1 = lab.nodes[0].netns();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        lab.pods[0].delete();
        for _ in 0..2 {
            a.detach_in(&node1, &lab.req(0)).await.unwrap();
        }
        assert_eq!(
            IpvlanNode::pods(&node1).await.unwrap(),
            vec![ip("10.1.1.3")]
        );
        assert_eq!(
            setup_seen(&lab.nodes[0]),
            (true, true),
            "pod c2 still needs it"
        );
        assert_eq!(records.read(&lab.req(0).id).unwrap(), None);
        // GC keeps valid attachments and never touches another node's records
        let swept = a.gc(&node1, std::slice::from_ref(&req3.id)).await.unwrap();
        assert!(swept.is_empty(), "{swept:?}");
        assert!(
            records.read(&lab.req(1).id).unwrap().is_some(),
            "node2's record"
        );
        // the DEL of node1's last pod, netns gone, removes the setup (twice: idempotent)
        pod3.delete();
        for _ in 0..2 {
            a.detach_in(&node1, &req3).await.unwrap();
        }
        assert_eq!(setup_seen(&lab.nodes[0]), (false, false));
        assert!(!IpvlanNode::present(&node1).await.unwrap());
        // (the mesh's own routes, proto 92, take the node's tunnel address 10.1.1.1 as
        // their source: they are the tunnel's, not the setup's)
        let routes = lab.nodes[0].ip(&["route"]);
        assert!(
            !routes
                .lines()
                .any(|l| l.contains("10.1.1.") && !l.contains("proto 92")),
            "left behind: {routes}"
        );
        assert_eq!(records.read(&req3.id).unwrap(), None);
        // node2: removing the setup removes all of it; the pod's DEL then is harmless
        assert!(IpvlanNode::remove(&lab.nodes[1].netns()).await.unwrap());
        assert!(!IpvlanNode::remove(&lab.nodes[1].netns()).await.unwrap());
        assert_eq!(setup_seen(&lab.nodes[1]), (false, false));
        // CHECK notices the missing node setup
        let e = a
            .check_in(&lab.nodes[1].netns(), &lab.req(1), &results[1])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("ipvlan setup"), "{e}");
        // GC sweeps the record of an attachment the runtime no longer lists
        let node2 = lab.nodes[1].netns();
        assert!(a.gc(&node2, &[lab.req(1).id]).await.unwrap().is_empty());
        let swept = a.gc(&node2, &[]).await.unwrap();
        assert_eq!(swept, ["ipvlan attachment c1/eth0 (10.1.2.2)"]);
        a.detach_in(&node2, &lab.req(1)).await.unwrap();
        assert!(!lab.pods[1].ip(&["link"]).contains("eth0"));
        let left: Vec<_> = std::fs::read_dir(records.dir()).unwrap().collect();
        assert!(left.is_empty(), "files left in the state dir: {left:?}");
        for i in 0..2 {
            tunnel.remove(&lab.nodes[i].netns()).await.unwrap();
            let routes = lab.nodes[i].ip(&["route"]);
            assert!(!routes.contains("10.1."), "left behind: {routes}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vm_ipvlan_l3_encrypted_by_xfrm_mesh_is_esp_only_on_the_wire() {
        if VM.delegate(
            "vm_ipvlan_l3_encrypted_by_xfrm_mesh_is_esp_only_on_the_wire",
            FEATURES,
        ) {
            return;
        }
        encrypted_lab(Mode::L3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vm_ipvlan_l3s_encrypted_by_xfrm_mesh_is_esp_only_on_the_wire() {
        if VM.delegate(
            "vm_ipvlan_l3s_encrypted_by_xfrm_mesh_is_esp_only_on_the_wire",
            FEATURES,
        ) {
            return;
        }
        encrypted_lab(Mode::L3s).await;
    }
}
