//! The VPP dataplane between two real VPPs, each in its own test namespace, joined by a
//! veth underlay; a Linux "pod" beside each VPP pings the other across ESP.

mod two_nodes;

use scrambler_core::{NodeId, Tunnel};
use scrambler_vpp::tunnel::{owned_sa, tunnel_instance};
use scrambler_vpp_api::api::ipsec::{IpsecSaV5Dump, IpsecSadEntryAddV2};
use scrambler_vpp_api::api::types::{IpsecCryptoAlg, IpsecProto, IpsecSadEntryV4};
use scrambler_vpp_api::VppClient;
use two_nodes::{capture, ping, rotation_steps, TwoNodes};

/// The ids of every SA VPP has.
async fn sa_ids(c: &VppClient) -> Vec<u32> {
    c.dump(&IpsecSaV5Dump { sa_id: u32::MAX })
        .await
        .unwrap()
        .iter()
        .map(|d| d.entry.sad_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vpps_ping_across_esp() {
    let mut t = TwoNodes::start("tn").await;

    // an SA someone else owns must survive everything we do
    let ca = t.a.client().await;
    let mut foreign = IpsecSadEntryV4::default();
    foreign.sad_id = 10;
    foreign.spi = 1001;
    foreign.protocol = IpsecProto::IPSEC_API_PROTO_ESP;
    foreign.crypto_algorithm = IpsecCryptoAlg::IPSEC_API_CRYPTO_ALG_AES_GCM_128;
    foreign.crypto_key.length = 16;
    ca.request(&IpsecSadEntryAddV2 { entry: foreign })
        .await
        .unwrap();
    let na = t.a.netns.netns();

    let (ra, rb) = t.apply().await;
    assert!(ra.added >= 5 && rb.added >= 5, "{ra:?} {rb:?}");
    let (ra, rb) = t.apply().await;
    assert!(
        ra.is_noop() && rb.is_noop(),
        "second reconcile changed things: {ra:?} {rb:?}"
    );

    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(st.encrypted && st.fail_closed, "{st:?}");
    assert!(st.peers[0].is_up(), "{st:?}");
    let tun = t.a.vppctl(&["show", "ipsec", "protect"]);
    assert!(
        tun.contains(&format!("ipip{}", tunnel_instance(NodeId::new(2).unwrap()))),
        "{tun}"
    );

    // pod a -> pod b, and only ESP on the underlay
    t.b.vppctl(&["trace", "add", "af-packet-input", "20"]);
    let (wire, (ok, out)) = capture(&t.a, "", || ping(&t.a, "10.2.0.2", 3));
    assert!(
        ok,
        "ping failed: {out}\nA: {}\nB: {}",
        t.a.vppctl(&["show", "errors"]),
        t.b.vppctl(&["show", "trace"])
    );
    assert!(wire.contains("ESP"), "no ESP on the wire:\n{wire}");
    assert!(
        !wire.contains("ICMP echo"),
        "cleartext on the wire:\n{wire}"
    );

    // key rotation 1 -> 2, make-before-break, pinging at every step
    for keys in rotation_steps(1, 2) {
        t.cluster.keys = keys.clone();
        let (ra, rb) = t.apply().await;
        assert!(!ra.is_noop() && !rb.is_noop(), "{keys:?}: {ra:?} {rb:?}");
        let (ok, out) = ping(&t.b, "10.1.0.2", 3);
        assert!(ok, "ping after rotation step {keys:?} failed: {out}");
    }
    let sas = sa_ids(&ca).await;
    assert_eq!(
        sas.iter().filter(|id| owned_sa(**id)).count(),
        2,
        "{sas:x?}"
    );

    // remove everything of ours, leave the rest
    let ra = t.dp.remove(&na).await.unwrap();
    assert!(ra.removed >= 4, "{ra:?}");
    assert!(t.dp.remove(&na).await.unwrap().is_noop());
    assert_eq!(sa_ids(&ca).await, vec![10]);
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(!st.encrypted && !st.peers[0].is_up(), "{st:?}");
    let (ok, _) = ping(&t.a, "10.2.0.2", 3);
    assert!(!ok, "pods still reach each other without the tunnel");
    ca.close().await.unwrap();
}

/// The SAs VPP holds for the known-answer nodes carry the vectors' SPIs, keys and salts
/// (read back from VPP's own SA dump). Then node a's VPP loses everything of Scrambler's
/// (what a VPP restart does) and comes back with a new epoch, no rotation: every SA with a
/// has a new SPI and key, no (SPI, sequence number) appears twice on the wire, and the
/// pods ping again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpp_sas_match_the_known_answer_vectors_and_a_new_epoch_rekeys() {
    use scrambler_core::keys::kat;
    let mut t = TwoNodes::start("tk").await;
    t.secret = kat::secret();
    t.cluster.keys = scrambler_core::Keys::single(7);
    for (n, inc) in t.cluster.nodes.iter_mut().zip([kat::A, kat::B]) {
        n.id = inc.id;
        n.epoch = inc.epoch;
    }
    // (SPI, key hex, salt as VPP dumps it) of every owned SA of a node
    async fn owned(c: &VppClient) -> Vec<(u32, String, u32)> {
        c.dump(&IpsecSaV5Dump { sa_id: u32::MAX })
            .await
            .unwrap()
            .iter()
            .filter(|d| owned_sa(d.entry.sad_id))
            .map(|d| {
                let k = &d.entry.crypto_key;
                (
                    d.entry.spi,
                    hex::encode(&k.data[..usize::from(k.length)]),
                    d.entry.salt,
                )
            })
            .collect()
    }
    let (ca, cb) = (t.a.client().await, t.b.client().await);
    let (wire, ()) = capture(&t.a, "esp", || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                t.apply().await;
                let (ok, out) = ping(&t.a, "10.2.0.2", 3);
                assert!(ok, "{out}");
            })
        })
    });
    let before = [owned(&ca).await, owned(&cb).await];
    for sas in &before {
        for (_, _, _, key, salt, spi) in &kat::VECTORS[..2] {
            let (_, k, s) = sas
                .iter()
                .find(|(x, _, _)| x == spi)
                .unwrap_or_else(|| panic!("no SA with SPI {spi:#x}: {sas:x?}"));
            assert_eq!(k, key, "SPI {spi:#x}");
            let want = u32::from_str_radix(salt, 16).unwrap();
            // VPP dumps the salt byte-swapped (see the readback of the tunnel)
            assert!(
                *s == want || s.swap_bytes() == want,
                "SPI {spi:#x}: salt {s:#x}"
            );
        }
    }

    // a's VPP loses everything of ours; a comes back with a new epoch
    t.dp.remove(&t.a.netns.netns()).await.unwrap();
    t.cluster.nodes[0].epoch = kat::A2.epoch;
    let (wire2, ()) = capture(&t.a, "esp", || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                t.apply().await;
                let (ok, out) = ping(&t.a, "10.2.0.2", 3);
                assert!(ok, "after the new epoch: {out}");
            })
        })
    });
    let after = [owned(&ca).await, owned(&cb).await];
    let old: std::collections::HashSet<(u32, String)> = before
        .iter()
        .flatten()
        .map(|(s, k, _)| (*s, k.clone()))
        .collect();
    for sas in &after {
        assert_eq!(sas.len(), 2, "{sas:x?}");
        for (spi, key, _) in sas {
            assert!(
                old.iter().all(|(s, k)| s != spi && k != key),
                "SPI {spi:#x} or its key came back: {sas:x?}"
            );
        }
    }
    assert!(after[0].iter().any(|(s, _, _)| *s == kat::VECTORS[2].5));
    // on the wire: (source, SPI, seq) never twice
    let mut seen = std::collections::HashSet::new();
    let mut esp = 0;
    for l in wire.lines().chain(wire2.lines()) {
        let Some((head, rest)) = l.split_once("ESP(spi=0x") else {
            continue;
        };
        esp += 1;
        let src = head
            .split_whitespace()
            .rev()
            .nth(2)
            .unwrap_or("")
            .to_string();
        let (spi, seq) = rest.split_once(",seq=0x").unwrap();
        let seq = seq.split(')').next().unwrap().to_string();
        assert!(
            seen.insert((src, spi.to_string(), seq)),
            "(SPI, seq) twice on the wire: {l}"
        );
    }
    // the old SA and the new one of a each from sequence number 1, under other SPIs
    let from_1 = |spi: u32| format!("ESP(spi={spi:#010x},seq=0x1)");
    assert!(
        esp >= 8
            && wire.contains(&from_1(kat::VECTORS[0].5))
            && wire2.contains(&from_1(kat::VECTORS[2].5)),
        "ESP on the wire:\n{wire}\n{wire2}"
    );
}

/// ESP over an IPv6 underlay between two real VPPs (IPv4 pods): the mesh reconciles, the
/// pods ping each other, the wire carries ESP over IPv6 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vpps_ping_across_esp_over_an_ipv6_underlay() {
    let t = TwoNodes::start_v6("t6").await;
    let (ra, rb) = t.apply().await;
    assert!(ra.added >= 5 && rb.added >= 5, "{ra:?} {rb:?}");
    assert!(t.apply().await.0.is_noop());
    let (wire, (ok, out)) = capture(&t.a, "", || ping(&t.a, "10.2.0.2", 3));
    assert!(
        ok,
        "ping failed: {out}\nA: {}\nB: {}",
        t.a.vppctl(&["show", "errors"]),
        t.b.vppctl(&["show", "ipsec", "all"])
    );
    let esp = wire
        .lines()
        .filter(|l| l.contains("IP6 fd00:2::") && l.contains("ESP"))
        .count();
    let clear = wire.lines().filter(|l| l.contains(" 10.")).count();
    eprintln!("ESP over IPv6 on the wire: {esp}, cleartext pod packets: {clear}\n{wire}");
    assert!(wire.contains("IP6 fd00:2::1 > fd00:2::2: ESP"), "{wire}");
    // 3 echoes; the first request may go while VPP resolves its IPv6 neighbour
    assert!(esp >= 4 && clear == 0, "{wire}");
    assert!(
        !wire.contains("ICMP echo"),
        "cleartext on the wire:\n{wire}"
    );
    let st = t.dp.status(&t.a.netns.netns(), &t.mesh("a")).await.unwrap();
    assert!(st.encrypted && st.fail_closed, "{st:?}");
    assert_eq!(st.overhead, scrambler_core::esp::esp_overhead(true));
}

/// Dual-stack pods between two real VPPs (IPv4 underlay): IPv6 pod traffic through the
/// tunnels as ESP only, 0 cleartext; the guard's drop route covers the IPv6 cluster CIDR,
/// and a pod's packet to an IPv6 pod CIDR of a node not in the mesh is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vpps_carry_ipv6_pods_in_esp_and_guard_them() {
    use scrambler_vpp_api::api::interface::SwInterfaceAddDelAddress;
    let mut t = TwoNodes::start("p6").await;
    for (vpp, n) in [(&t.a, 1u8), (&t.b, 2u8)] {
        let ns = &vpp.netns;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.pod0.disable_ipv6=0"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("fd10:{n}::2/64"),
            "dev",
            "pod0",
            "nodad",
        ]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("fd10:{n}::1"),
        ]);
        let show = vpp.vppctl(&["show", "interface", "host-vpod0"]);
        let sw: u32 = show
            .lines()
            .find(|l| l.contains("host-vpod0"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("host-vpod0's index: {show}"));
        let prefix: ipnet::IpNet = format!("fd10:{n}::1/64").parse().unwrap();
        let c = vpp.client().await;
        c.request(&SwInterfaceAddDelAddress {
            sw_if_index: sw,
            is_add: true,
            del_all: false,
            prefix: prefix.into(),
        })
        .await
        .unwrap();
    }
    for node in t.cluster.nodes.iter_mut() {
        let n = node.id.get();
        node.pod_cidrs
            .push(format!("fd10:{n}::/64").parse().unwrap());
    }
    t.cluster.cluster_cidrs.push("fd10::/16".parse().unwrap());
    let (ra, rb) = t.apply().await;
    assert!(ra.added >= 5 && rb.added >= 5, "{ra:?} {rb:?}");
    assert!(t.apply().await.0.is_noop());
    let ping6 = |to: &str| {
        t.a.netns
            .exec(&["ping", "-c", "4", "-i", "0.3", "-W", "2", to])
    };
    let (wire, (_, out)) = capture(&t.a, "", || ping6("fd10:2::2"));
    let replies: u32 = out
        .split(" received")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let esp = wire.lines().filter(|l| l.contains("ESP")).count();
    let clear = wire.lines().filter(|l| l.contains(" fd10:")).count();
    eprintln!("IPv6 pods through VPP: {replies}/4 replies, ESP {esp}, cleartext {clear}\n{wire}");
    // the first request may go while VPP resolves the pod's IPv6 neighbour
    assert!(replies >= 3, "{out}\n{}", t.a.vppctl(&["show", "errors"]));
    assert!(esp >= 6 && clear == 0, "{wire}");
    let fib = t.a.vppctl(&["show", "ip6", "fib", "fd10::/16"]);
    assert!(
        fib.contains("fd10::/16") && fib.contains("dpo-drop"),
        "{fib}"
    );
    let (wire, (_, out)) = capture(&t.a, "", || ping6("fd10:3::2"));
    assert!(out.contains(" 0 received"), "{out}");
    assert!(
        !wire.contains("fd10:"),
        "cleartext to an unknown node:\n{wire}"
    );
}

/// Node a changes its epoch without a reset (what its agent does after a lost or refused
/// outbound SA) and keeps the previous one for a grace period: its inbound SA of the old
/// epoch stays in its id slot beside the new one, so b, still sending under a's old epoch
/// until it re-keys, is received all along; after the deadline a reconcile deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_previous_epoch_receives_the_peer_until_it_rekeys() {
    use scrambler_core::{Epoch, PreviousEpoch};
    use scrambler_vpp::tunnel::{sa_id_in_slot, Direction};
    use scrambler_vpp_api::stats::StatsClient;
    let mut t = TwoNodes::start("tp").await;
    t.apply().await;
    let (ok, out) = ping(&t.b, "10.1.0.2", 2);
    assert!(ok, "{out}");
    let na = t.a.netns.netns();
    let ca = t.a.client().await;
    let b_id = NodeId::new(2).unwrap();
    let (kept_id, new_id) = (
        sa_id_in_slot(Direction::Inbound, b_id, 1, 0),
        sa_id_in_slot(Direction::Inbound, b_id, 1, 1),
    );
    // packets decrypted by the SA `id` of a
    let decrypted = |id: u32| {
        let ca = &ca;
        let run_dir = t.a.run_dir.clone();
        async move {
            let d = ca
                .dump(&IpsecSaV5Dump { sa_id: u32::MAX })
                .await
                .unwrap()
                .into_iter()
                .find(|d| d.entry.sad_id == id)
                .unwrap_or_else(|| panic!("no SA {id:#x}"));
            let stats = StatsClient::connect(run_dir.join("stats.sock")).unwrap();
            stats
                .combined("/net/ipsec/sa", d.stat_index as usize)
                .unwrap()
                .packets
        }
    };

    // only a moves to its new epoch; b still knows the old one
    let old = t.cluster.nodes[0].epoch;
    let mut moved = t.cluster.clone();
    moved.nodes[0].epoch = Epoch::new(0x77).unwrap();
    moved.nodes[0].previous_epochs = vec![PreviousEpoch {
        epoch: old,
        until: scrambler_core::mesh::unix_now() + 600,
    }];
    let a_mesh = moved.mesh_for("a").unwrap();
    // b pings a every 10 ms across a's reconcile: every echo request goes under a's old
    // epoch, so the SA in slot 0 (current, then kept) decrypts what arrives; the
    // replacement of a's outbound SA takes the tunnel's protection away for a few API
    // calls, the only window in which b's packets can be dropped
    let before_all = decrypted(kept_id).await;
    let b_ns = &t.b.netns;
    std::thread::scope(|s| {
        let pinger = s.spawn(|| {
            b_ns.exec(&[
                "busybox", "ping", "-c", "300", "-i", "0.01", "-W", "1", "10.1.0.2",
            ])
        });
        std::thread::sleep(std::time::Duration::from_millis(1000));
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current()
                .block_on(t.dp.reconcile(&na, &a_mesh, &t.secret))
                .unwrap()
        });
        pinger.join().unwrap()
    });
    let across = decrypted(kept_id).await - before_all;
    println!("b -> a across a's epoch change: {across} of 300 echo requests received");
    // the kept SA carries b's echo requests through the change: 299-300 of 300 measured
    // (one may be in flight while the protection is updated)
    assert!(across >= 295, "the kept SA received {across} of 300");
    let ids: Vec<u32> = sa_ids(&ca)
        .await
        .into_iter()
        .filter(|i| owned_sa(*i))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:x?}");
    assert!(ids.contains(&kept_id) && ids.contains(&new_id), "{ids:x?}");
    let st = t.dp.status(&na, &a_mesh).await.unwrap();
    assert!(st.fail_closed && st.peers[0].is_up(), "{st:?}");
    let prot = t.a.vppctl(&["show", "ipsec", "protect"]);
    // the tunnel's protection takes the kept SA inbound, by its id (`sa <id> (0x<id>)`)
    assert!(
        prot.contains(&format!("sa {kept_id} (0x{kept_id:x})")),
        "{prot}"
    );

    // b's echo requests, under a's old epoch, are decrypted by the kept SA (a's replies,
    // under its new epoch, are dropped at b until it re-keys: never in clear)
    let before = decrypted(kept_id).await;
    let (ok, _) = ping(&t.b, "10.1.0.2", 3);
    assert!(
        !ok,
        "b reached a before it re-keyed: replies under a's new epoch?"
    );
    let got = decrypted(kept_id).await - before;
    assert!(got >= 3, "kept SA decrypted {got} of 3 echo requests");
    assert_eq!(decrypted(new_id).await, 0);

    // b re-keys: both ways again, on the new epoch's SA
    t.cluster = moved.clone();
    t.reconcile("b").await;
    let (ok, out) = ping(&t.b, "10.1.0.2", 3);
    assert!(ok, "after b re-keyed: {out}");
    assert!(decrypted(new_id).await >= 3);

    // after the deadline a reconcile deletes the kept SA, and only it
    t.cluster.nodes[0].previous_epochs[0].until = 1;
    let r = t.reconcile("a").await;
    assert_eq!(r.removed, 1, "{r:?}");
    let ids: Vec<u32> = sa_ids(&ca)
        .await
        .into_iter()
        .filter(|i| owned_sa(*i))
        .collect();
    assert_eq!(ids.len(), 2, "{ids:x?}");
    assert!(!ids.contains(&kept_id) && ids.contains(&new_id), "{ids:x?}");
    assert!(t.reconcile("a").await.is_noop());
    let (ok, out) = ping(&t.b, "10.1.0.2", 3);
    assert!(ok, "after the grace: {out}");
    ca.close().await.unwrap();
}

/// The agent's case end to end on VPP: a's outbound SA to b is lost behind Scrambler's
/// back (its tunnel protection and the SA deleted); a reconcile of the same mesh keeps the
/// peer lost (never re-created under its key); a takes a new epoch keeping the old one,
/// and its new outbound SA is made (the kept inbound SA is no evidence of a loss); once b
/// has re-keyed, both ways work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_outbound_sa_is_repaired_by_a_new_epoch_keeping_the_old_one() {
    use scrambler_core::{Epoch, PreviousEpoch};
    use scrambler_vpp::tunnel::{sa_id, Direction};
    use scrambler_vpp_api::api::ipsec::{IpsecSadEntryDel, IpsecTunnelProtectDel};
    let mut t = TwoNodes::start("tl").await;
    t.apply().await;
    let (ok, out) = ping(&t.a, "10.2.0.2", 2);
    assert!(ok, "{out}");
    let na = t.a.netns.netns();
    let ca = t.a.client().await;
    let b_id = NodeId::new(2).unwrap();
    let out_id = sa_id(Direction::Outbound, b_id, 1);
    // someone takes a's protection of the tunnel to b and its outbound SA
    let sw = ca
        .dump(&scrambler_vpp_api::api::ipip::IpipTunnelDump {
            sw_if_index: u32::MAX,
        })
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.tunnel.instance == tunnel_instance(b_id))
        .unwrap()
        .tunnel
        .sw_if_index;
    ca.request(&IpsecTunnelProtectDel {
        sw_if_index: sw,
        nh: Default::default(),
    })
    .await
    .unwrap();
    ca.request(&IpsecSadEntryDel { id: out_id }).await.unwrap();
    assert!(!sa_ids(&ca).await.contains(&out_id));
    // the same mesh: lost, not re-created
    t.reconcile("a").await;
    assert!(!sa_ids(&ca).await.contains(&out_id));
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(!st.peers[0].outbound && st.fail_closed, "{st:?}");

    // a new epoch, keeping the old one
    let old = t.cluster.nodes[0].epoch;
    t.cluster.nodes[0].epoch = Epoch::new(0x77).unwrap();
    t.cluster.nodes[0].previous_epochs = vec![PreviousEpoch {
        epoch: old,
        until: scrambler_core::mesh::unix_now() + 600,
    }];
    t.reconcile("a").await;
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(st.peers[0].is_up() && st.fail_closed, "{st:?}");
    t.reconcile("b").await;
    let (ok, out) = ping(&t.a, "10.2.0.2", 3);
    assert!(ok, "a -> b after the new epoch: {out}");
    let (ok, out) = ping(&t.b, "10.1.0.2", 3);
    assert!(ok, "b -> a after the new epoch: {out}");
    ca.close().await.unwrap();
}
