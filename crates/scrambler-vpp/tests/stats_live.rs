//! VPP's counters through the stats segment: the SA and tunnel counters of a peer grow with
//! the traffic sent to it, agree with VPP's own view, and `status` reports them.

mod two_nodes;

use scrambler_core::{ClusterSecret, NodeId, Tunnel};
use scrambler_vpp::tunnel::{sa_id, Direction, STATS_UNAVAILABLE};
use scrambler_vpp_api::api::ipsec::IpsecSaV5Dump;
use scrambler_vpp_api::stats::{StatValue, StatsClient};
use two_nodes::{ping, TwoNodes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sa_and_tunnel_counters_follow_the_traffic() {
    let t = TwoNodes::start("scr-st").await;
    t.apply().await;
    let na = t.a.netns.netns();
    let mesh = t.mesh("a");

    // first packets wait for ARP on either side: warm up, then count
    let (ok, out) = ping(&t.a, "10.2.0.2", 2);
    assert!(ok, "ping failed: {out}");
    let before = t.dp.status(&na, &mesh).await.unwrap();
    assert!(!before.errors.contains_key(STATS_UNAVAILABLE), "{before:?}");
    let (ok, out) = ping(&t.a, "10.2.0.2", 5);
    assert!(ok, "ping failed: {out}");
    let after = t.dp.status(&na, &mesh).await.unwrap();
    let (p0, p1) = (&before.peers[0], &after.peers[0]);
    assert!(p1.packets_out >= p0.packets_out + 5, "{p0:?}\n{p1:?}");
    assert!(p1.packets_in >= p0.packets_in + 5, "{p0:?}\n{p1:?}");
    // 84-byte echoes (IP + ICMP + 56 bytes of data)
    assert!(p1.bytes_out >= p0.bytes_out + 5 * 84, "{p0:?}\n{p1:?}");
    assert!(p1.bytes_in >= p0.bytes_in + 5 * 84, "{p0:?}\n{p1:?}");
    assert_eq!((p1.replay_errors, p1.integrity_errors), (0, 0), "{p1:?}");

    // the tunnel interface saw the same packets, in clear, before encryption
    let pc = t.dp.counters(&na, &mesh).await.unwrap();
    assert_eq!(pc[0].sa_out.packets, p1.packets_out, "{pc:?}");
    assert!(
        pc[0].tunnel_tx.packets >= 5 && pc[0].tunnel_rx.packets >= 5,
        "{pc:?}"
    );

    // the raw reader: the outbound SA's entry, found by the stat_index VPP reports for it
    let out_id = sa_id(Direction::Outbound, NodeId::new(2).unwrap(), 1);
    let c = t.a.client().await;
    let d = c.dump(&IpsecSaV5Dump { sa_id: out_id }).await.unwrap();
    c.close().await.unwrap();
    let stats = StatsClient::connect(t.a.run_dir.join("stats.sock")).unwrap();
    assert!(stats.names().unwrap().iter().any(|n| n == "/if/names"));
    let sa = stats
        .combined("/net/ipsec/sa", d[0].stat_index as usize)
        .unwrap();
    assert_eq!(sa.packets, p1.packets_out);
    assert_eq!(sa.bytes, p1.bytes_out);
    // VPP's CLI counts the same
    let list = t.a.vppctl(&["show", "ipsec", "sa"]);
    let pool_index = list
        .lines()
        .find(|l| l.contains(&format!(" sa {out_id} (")))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(']').next())
        .unwrap_or_else(|| panic!("SA {out_id} not in:\n{list}"));
    let cli = t.a.vppctl(&["show", "ipsec", "sa", pool_index]);
    assert!(
        cli.contains(&format!("packets:{}", sa.packets)),
        "stats segment says {sa:?}, CLI says:\n{cli}"
    );
    // interface names and a scalar
    match stats.read("/if/names").unwrap() {
        StatValue::Names(n) => assert!(n.iter().flatten().any(|n| n == "host-ul0"), "{n:?}"),
        other => panic!("/if/names is {other:?}"),
    }
    assert!(matches!(
        stats.read("/sys/heartbeat").unwrap(),
        StatValue::Scalar(_)
    ));

    // informational: what a counter read costs, beside the same SA through the API's CLI
    let t0 = std::time::Instant::now();
    for _ in 0..50 {
        stats
            .combined("/net/ipsec/sa", d[0].stat_index as usize)
            .unwrap();
    }
    let seg = t0.elapsed() / 50;
    let c = t.a.client().await;
    let t0 = std::time::Instant::now();
    for _ in 0..50 {
        c.cli(&format!("show ipsec sa {pool_index}")).await.unwrap();
    }
    let cli = t0.elapsed() / 50;
    c.close().await.unwrap();
    eprintln!("one SA counter: stats segment {seg:?}, cli_inband {cli:?}");

    // a peer that re-created its SAs with other keys: its first packets reuse sequence
    // numbers A has seen (replay drops, checked first), the later ones fail the ICV
    let wrong = ClusterSecret::from_bytes(vec![0x17; 32]).unwrap();
    t.dp.reconcile(&t.b.netns.netns(), &t.mesh("b"), &wrong)
        .await
        .unwrap();
    let sent = after.peers[0].packets_in + 2;
    let (ok, _) = ping(&t.b, "10.1.0.2", sent as u32 + 3);
    assert!(!ok, "pods talk across mismatched keys");
    let st = t.dp.status(&na, &mesh).await.unwrap();
    let p = &st.peers[0];
    assert!(p.replay_errors >= 1 && p.integrity_errors >= 1, "{st:?}");
    // AES-GCM: a tag mismatch is VPP's `decryption_failed`
    assert!(
        st.errors
            .get("ipsec-sa/decryption_failed")
            .is_some_and(|n| *n >= 1),
        "{st:?}"
    );

    // without the stats segment status says so instead of showing zeros as measured
    let blind =
        t.dp.clone()
            .with_stats_socket(|_| Ok("/nonexistent/stats.sock".into()));
    let st = blind.status(&na, &mesh).await.unwrap();
    assert_eq!(st.errors.get(STATS_UNAVAILABLE), Some(&1), "{st:?}");
    assert_eq!(st.peers[0].packets_out, 0);
}
