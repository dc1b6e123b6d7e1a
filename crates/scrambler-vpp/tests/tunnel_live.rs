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
