//! The agent against a real etcd-server (Debian's etcd-server; scripts/install-deps.sh
//! test installs it): started by each test on 127.0.0.1, random ports, temporary data dir.

mod common;

use common::*;
use etcd_client::PutOptions;
use scrambler_agent::claims::{self, ClaimRequest};
use scrambler_agent::status::AgentStatus;
use scrambler_agent::{rotation, NodeRecord};
use scrambler_core::{Error, NodeId};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn status(state: &std::path::Path, node: &str) -> Option<AgentStatus> {
    AgentStatus::load(&AgentStatus::path(&state.join(node))).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_register_under_a_lease_and_see_each_other() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    eventually(10, "b sees a", || tb.peer_names() == ["a"]).await;

    // the registration: public fields only, under a lease
    let mut c = store(&etcd).await.client();
    let r = c.get("/scrambler/nodes/a", None).await.unwrap();
    let kv = &r.kvs()[0];
    assert_ne!(kv.lease(), 0, "registration is not under a lease");
    let rec = NodeRecord::decode("/scrambler/nodes/a", kv.value()).unwrap();
    assert_eq!(
        rec.underlay,
        vec!["192.0.2.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_ne!(rec.epoch, 0);
    let v: serde_json::Value = serde_json::from_slice(kv.value()).unwrap();
    let fields: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(fields.len(), 6, "{fields:?}");
    // ids and pod CIDRs claimed, distinct
    let (ma, mb) = (ta.mesh().unwrap(), tb.mesh().unwrap());
    assert_ne!(ma.local.id, mb.local.id);
    assert_ne!(ma.local.pod_cidrs, mb.local.pod_cidrs);
    assert_eq!(ma.peers[0], mb.local);
    // the epoch file is private
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.path().join("a/epoch"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let st = status(state.path(), "a").unwrap();
    assert!(st.etcd_connected && st.registered, "{st:?}");
    assert_eq!(st.epoch, format!("{:016x}", rec.epoch));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_removes_the_node_from_peers_but_keeps_its_claim() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let mut ca = config("a", 1, state.path());
    ca.departed_hold = Duration::ZERO; // departed peers dropped at once
    let a = spawn(&etcd, ca, ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    let b_claim = tb.mesh().unwrap().local;
    b.stop().await; // no revoke: its 2 s lease runs out
    let t = Instant::now();
    eventually(10, "b leaves a's mesh", || ta.peer_names().is_empty()).await;
    println!(
        "b left a's mesh {:?} after its agent stopped (lease TTL 2 s)",
        t.elapsed()
    );
    // the claim outlives the lease: b comes back with the same id and pod CIDR
    let store = store(&etcd).await;
    let c = claims::existing(&store, "b").await.unwrap().unwrap();
    assert_eq!(
        (c.id, c.pod_cidrs.clone()),
        (b_claim.id, b_claim.pod_cidrs.clone())
    );
    let tb2 = FakeTunnel::new("b", None);
    let b = spawn(&etcd, config("b", 2, state.path()), tb2.clone()).await;
    eventually(10, "b is back in a's mesh", || ta.peer_names() == ["b"]).await;
    assert_eq!(ta.mesh().unwrap().peers[0].id, b_claim.id);
    // an explicit deletion releases the claims
    b.stop().await;
    claims::release(&store, "b").await.unwrap().unwrap();
    assert!(claims::existing(&store, "b").await.unwrap().is_none());
    eventually(10, "deleted b leaves a's mesh", || {
        ta.peer_names().is_empty()
    })
    .await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_claimers_never_collide() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let t = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let req = ClaimRequest {
                    name: format!("n{i}"),
                    id: None,
                    pod_cidrs: vec![],
                    pool: Some(("10.244.0.0/16".parse().unwrap(), 24)),
                };
                claims::claim(&store, &req).await.unwrap()
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    println!("20 concurrent claims in {:?}", t.elapsed());
    let ids: HashSet<_> = got.iter().map(|c| c.id).collect();
    let cidrs: HashSet<_> = got.iter().flat_map(|c| c.pod_cidrs.clone()).collect();
    assert_eq!((ids.len(), cidrs.len()), (20, 20), "{got:?}");
    // claiming again returns the same claim
    let again = claims::claim(
        &store,
        &ClaimRequest {
            name: "n3".into(),
            id: None,
            pod_cidrs: vec![],
            pool: Some(("10.244.0.0/16".parse().unwrap(), 24)),
        },
    )
    .await
    .unwrap();
    assert_eq!(again, got[3]);
    // a fixed id or CIDR someone holds is refused, naming the holder
    let e = claims::claim(
        &store,
        &ClaimRequest {
            name: "x".into(),
            id: Some(got[5].id),
            pod_cidrs: vec!["10.99.0.0/24".parse().unwrap()],
            pool: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::AlreadyExists { .. }) && e.to_string().contains("\"n5\""),
        "{e}"
    );
    let e = claims::claim(
        &store,
        &ClaimRequest {
            name: "y".into(),
            id: Some(NodeId::new(4000).unwrap()),
            pod_cidrs: vec![got[7].pod_cidrs[0]],
            pool: None,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("\"n7\""), "{e}");
    // releasing frees both for someone else
    claims::release(&store, "n5").await.unwrap();
    let c = claims::claim(
        &store,
        &ClaimRequest {
            name: "x".into(),
            id: Some(got[5].id),
            pod_cidrs: got[5].pod_cidrs.clone(),
            pool: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(c.id, got[5].id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_100_registrations_costs_a_few_reconciles() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let ta = FakeTunnel::new("a", None);
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    eventually(10, "a registered", || {
        status(state.path(), "a").is_some_and(|s| s.registered)
    })
    .await;
    let before = ta.reconciles();
    let store = store(&etcd).await;
    let mut c = store.client();
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let t = Instant::now();
    let writes: Vec<_> = (0..100u32)
        .map(|i| {
            let mut c = store.client();
            tokio::spawn(async move {
                let r = NodeRecord {
                    name: format!("n{i}"),
                    id: NodeId::new(1000 + i).unwrap(),
                    underlay: vec![format!("198.51.{}.{}", i / 200, 1 + i % 200)
                        .parse()
                        .unwrap()],
                    pod_cidrs: vec![format!("10.244.{}.0/24", 100 + i).parse().unwrap()],
                    epoch: 0x1000 + u64::from(i),
                    dataplane: "xfrm".into(),
                };
                c.put(
                    format!("/scrambler/nodes/n{i}"),
                    r.to_json(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .unwrap();
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap();
    }
    eventually(15, "a sees all 100", || ta.peer_names().len() == 100).await;
    let n = ta.reconciles() - before;
    println!(
        "100 registrations → {n} reconciles on a, converged in {:?}",
        t.elapsed()
    );
    assert!(n <= 5, "100 registrations cost {n} reconciles");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_switches_outbound_only_after_every_live_node_acknowledged() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let names = ["a", "b", "c"];
    let tunnels: Vec<_> = names
        .iter()
        .map(|n| FakeTunnel::new(n, Some(log.clone())))
        .collect();
    let mut agents = Vec::new();
    for (i, n) in names.iter().enumerate() {
        agents.push(
            spawn(
                &etcd,
                config(n, i as u8 + 1, state.path()),
                tunnels[i].clone(),
            )
            .await,
        );
    }
    eventually(10, "full mesh", || {
        tunnels.iter().all(|t| t.peer_names().len() == 2)
    })
    .await;
    // c cannot install generation 2 yet
    tunnels[2]
        .refuse_new_generation
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let store = store(&etcd).await;
    let snap = store.snapshot().await.unwrap();
    let ks = rotation::begin(&snap.keys, 1).unwrap();
    assert!(store.swap_keys(snap.keys_revision, &ks).await.unwrap());
    eventually(10, "a and b install generation 2 inbound", || {
        tunnels[..2]
            .iter()
            .all(|t| t.mesh().unwrap().keys.rx.len() == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for t in &tunnels {
        assert_eq!(
            t.mesh().unwrap().keys.tx,
            1,
            "{} switched before c acknowledged",
            t.name
        );
    }
    let st = status(state.path(), "a").unwrap();
    assert!(
        matches!(&st.rotation, Some(rotation::Phase::Installing { waiting_for, .. }) if waiting_for == &["c"]),
        "{st:?}"
    );
    tunnels[2]
        .refuse_new_generation
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(10, "everyone sends with 2", || {
        tunnels.iter().all(|t| t.mesh().unwrap().keys.tx == 2)
    })
    .await;
    eventually(10, "generation 1 retired after the grace", || {
        tunnels
            .iter()
            .all(|t| t.mesh().unwrap().keys.rx.iter().eq([&2]))
    })
    .await;
    // order on the shared log: the first outbound switch comes after the last node
    // installed generation 2 inbound, and no node dropped 1 before every node sent with 2
    let log = log.lock().unwrap().clone();
    let first = |f: &dyn Fn(&Logged) -> bool, node: &str| {
        log.iter()
            .find(|l| l.node == node && f(l))
            .map(|l| l.at)
            .unwrap()
    };
    let last_inbound = names
        .iter()
        .map(|n| first(&|l| l.mesh.keys.rx.contains(&2), n))
        .max()
        .unwrap();
    let first_switch = names
        .iter()
        .map(|n| first(&|l| l.mesh.keys.tx == 2, n))
        .min()
        .unwrap();
    let last_switch = names
        .iter()
        .map(|n| first(&|l| l.mesh.keys.tx == 2, n))
        .max()
        .unwrap();
    let first_retire = names
        .iter()
        .map(|n| first(&|l| !l.mesh.keys.rx.contains(&1), n))
        .min()
        .unwrap();
    assert!(
        last_inbound < first_switch,
        "a node switched before every node had the inbound SAs"
    );
    assert!(
        last_switch < first_retire,
        "generation 1 retired before every node switched"
    );
    let done = store.snapshot().await.unwrap();
    assert_eq!((done.keys.current, done.keys.next), (2, None));
    for a in agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_keeps_the_mesh_and_the_agent_catches_up_on_reconnect() {
    let mut etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    let mesh = ta.mesh().unwrap();
    let before = ta.reconciles();
    etcd.stop();
    eventually(15, "a says etcd is unreachable", || {
        status(state.path(), "a")
            .is_some_and(|s| !s.etcd_connected && s.etcd_unreachable_since.is_some())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // longer than the lease TTL
    assert_eq!(
        ta.mesh().unwrap(),
        mesh,
        "the mesh changed while etcd was down"
    );
    assert_eq!(ta.reconciles(), before, "a reconciled while etcd was down");
    let text = status(state.path(), "a").unwrap().to_lines(agent_now());
    assert!(
        text.contains("etcd UNREACHABLE") && text.contains("fail static"),
        "{text}"
    );
    etcd.restart();
    eventually(20, "a reconnects", || {
        status(state.path(), "a").is_some_and(|s| s.etcd_connected && s.registered)
    })
    .await;
    // a new node joins after the outage: a catches up with one reconcile, no rebuild
    let tc = FakeTunnel::new("c", None);
    let c = spawn(&etcd, config("c", 3, state.path()), tc.clone()).await;
    eventually(15, "a sees c", || ta.peer_names() == ["b", "c"]).await;
    let after = ta.applied.lock().unwrap()[before..].to_vec();
    assert!(after.len() <= 2, "{} reconciles to catch up", after.len());
    assert_eq!(
        after.last().unwrap().peers[0],
        mesh.peers[0],
        "b changed in a's mesh"
    );
    for x in [a, b, c] {
        x.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_its_epoch_and_a_flushed_dataplane_gets_a_new_one() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    let store = store(&etcd).await;
    let epoch_of = |s: scrambler_agent::Snapshot| s.nodes["a"].epoch;
    let e1 = epoch_of(store.snapshot().await.unwrap());
    let mesh = ta.mesh().unwrap();
    a.stop().await;
    let before = ta.reconciles();
    // restart on a dataplane that kept its SAs: same epoch, same mesh
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    eventually(10, "a re-registered", || {
        status(state.path(), "a").is_some_and(|s| s.registered && s.epoch_reused)
    })
    .await;
    assert_eq!(epoch_of(store.snapshot().await.unwrap()), e1);
    // whatever the restarted agent reconciled is the mesh the dataplane already had
    assert!(ta.applied.lock().unwrap()[before..]
        .iter()
        .all(|m| m == &mesh));
    assert_eq!(ta.mesh().unwrap(), mesh);
    a.stop().await;
    // a dataplane that kept its inbound SAs but lost the outbound one: the epoch is reused
    // at first, the ledger refuses to install that outbound SA again, the agent takes a
    // new epoch, and b re-keys with it; nothing is ever reconciled under e1 again
    ta.lose_outbound
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let before = ta.reconciles();
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    eventually(10, "b sees a's new epoch", || {
        tb.mesh()
            .and_then(|m| m.peer("a").map(|p| p.epoch.get()))
            .is_some_and(|e| e != e1)
    })
    .await;
    let e3 = epoch_of(store.snapshot().await.unwrap());
    assert_ne!(e3, e1);
    let after: Vec<scrambler_core::Mesh> = ta.applied.lock().unwrap()[before..].to_vec();
    assert!(!after.is_empty(), "a reconciled with its new epoch");
    assert!(
        after.iter().all(|m| m.local.epoch.get() == e3),
        "reconciled under the old epoch: {after:?}"
    );
    assert!(status(state.path(), "a").is_some_and(|s| !s.epoch_reused));
    a.stop().await;
    let e1 = e3;
    // a flushed dataplane (reboot): new epoch, published
    use scrambler_core::Tunnel;
    ta.remove(&scrambler_core::Netns::default()).await.unwrap();
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    eventually(10, "a publishes a new epoch", || {
        tb.mesh()
            .and_then(|m| m.peer("a").map(|p| p.epoch.get()))
            .is_some_and(|e| e != e1)
    })
    .await;
    assert!(status(state.path(), "a").is_some_and(|s| s.registered && !s.epoch_reused));
    let e2 = epoch_of(store.snapshot().await.unwrap());
    assert_ne!(e1, e2);
    assert_eq!(
        std::fs::read_to_string(state.path().join("a/epoch"))
            .unwrap()
            .trim(),
        format!("{e2:016x}")
    );
    a.stop().await;
    b.stop().await;
}

fn agent_now() -> u64 {
    scrambler_agent::agent::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_reach_etcd_over_tls_with_a_client_certificate() {
    let (etcd, tls) = Etcd::start_tls();
    let mut cfg = etcd_config(&etcd);
    assert!(cfg.endpoints[0].starts_with("https://"));
    cfg.ca = Some(tls.ca.clone());
    cfg.cert = Some(tls.client_cert.clone());
    cfg.key = Some(tls.client_key.clone());
    let s = scrambler_agent::Store::connect(&cfg).await.unwrap();
    let c = claims::claim(
        &s,
        &ClaimRequest {
            name: "n1".into(),
            id: None,
            pod_cidrs: vec![],
            pool: Some(("10.244.0.0/16".parse().unwrap(), 24)),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.snapshot().await.unwrap().claims["n1"], c);
    // without the client certificate etcd refuses us
    let mut no_cert = cfg.clone();
    no_cert.cert = None;
    no_cert.key = None;
    let s = scrambler_agent::Store::connect(&no_cert).await.unwrap();
    let e = s.snapshot().await.unwrap_err();
    assert!(e.to_string().contains("etcd"), "{e}");
    // TLS files with a plain-text endpoint, or half a client identity: refused up front
    let mut plain = cfg.clone();
    plain.endpoints = vec![etcd.endpoint().replace("https", "http")];
    let e = scrambler_agent::Store::connect(&plain).await.err().unwrap();
    assert!(e.to_string().contains("not https://"), "{e}");
    let mut half = cfg.clone();
    half.key = None;
    let e = scrambler_agent::Store::connect(&half).await.err().unwrap();
    assert!(e.to_string().contains("both"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_asking_for_a_taken_id_says_so_and_stays_out() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let ta = FakeTunnel::new("a", None);
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    eventually(10, "a registered", || {
        status(state.path(), "a").is_some_and(|s| s.registered)
    })
    .await;
    let a_id = ta.mesh().unwrap().local.id;
    let mut cfg = config("x", 9, state.path());
    cfg.id = Some(a_id);
    let tx = FakeTunnel::new("x", None);
    let x = spawn(&etcd, cfg, tx.clone()).await;
    eventually(10, "x reports the refused claim", || {
        status(state.path(), "x")
            .and_then(|s| s.sync_error)
            .is_some_and(|e| e.contains("claimed by node \"a\""))
    })
    .await;
    assert_eq!(tx.reconciles(), 0, "x programmed a mesh without a claim");
    assert!(ta.peer_names().is_empty(), "x joined a's mesh");
    let text = status(state.path(), "x").unwrap().to_lines(agent_now());
    assert!(text.contains("cannot join the cluster"), "{text}");
    x.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_node_is_guarded_before_etcd_answers() {
    let mut etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    let before = ta.mesh().unwrap();
    a.stop().await;
    b.stop().await;
    // the node reboots (dataplane empty) and etcd does not answer
    use scrambler_core::Tunnel;
    ta.remove(&scrambler_core::Netns::default()).await.unwrap();
    etcd.stop();
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    eventually(10, "a guards its dataplane", || ta.mesh().is_some()).await;
    let alone = ta.mesh().unwrap();
    assert!(alone.peers.is_empty(), "{alone:?}");
    assert_eq!(alone.cluster_cidrs, before.cluster_cidrs);
    assert_eq!(alone.local.pod_cidrs, before.local.pod_cidrs);
    assert_ne!(
        alone.local.epoch, before.local.epoch,
        "a new epoch after a reboot"
    );
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataplane_flushed_under_a_running_agent_is_repaired_with_a_new_epoch() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let mut ca = config("a", 1, state.path());
    ca.resync = Duration::from_secs(1);
    let a = spawn(&etcd, ca, ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    let e1 = ta.mesh().unwrap().local.epoch;
    // flushed behind the agent's back; nothing changes in etcd
    use scrambler_core::Tunnel;
    ta.remove(&scrambler_core::Netns::default()).await.unwrap();
    eventually(10, "a re-keys with b under a new epoch", || {
        ta.mesh()
            .is_some_and(|m| m.local.epoch != e1 && m.peer("b").is_some())
            && tb
                .mesh()
                .and_then(|m| m.peer("a").map(|p| p.epoch))
                .is_some_and(|e| e != e1)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

async fn live_nodes(store: &scrambler_agent::Store) -> Vec<String> {
    store.snapshot().await.unwrap().nodes.into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_under_the_same_epoch_is_readmitted_without_any_rekey() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let mut ca = config("a", 1, state.path());
    ca.departed_hold = Duration::from_secs(6);
    let a = spawn(&etcd, ca, ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    let store = store(&etcd).await;
    let snap = store.snapshot().await.unwrap();
    let (ea, eb) = (snap.nodes["a"].epoch, snap.nodes["b"].epoch);
    let mesh = ta.mesh().unwrap();

    // b's agent stops (no revoke): its lease runs out, a holds b with its SAs
    b.stop().await;
    let t = Instant::now();
    let mut live = Vec::new();
    for _ in 0..200 {
        live = live_nodes(&store).await;
        if live == ["a"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(live, ["a"], "b's lease did not expire");
    eventually(5, "a says b departed", || {
        status(state.path(), "a").is_some_and(|s| s.departed.iter().any(|d| d.name == "b"))
    })
    .await;
    println!(
        "b's registration went {:?} after its agent stopped",
        t.elapsed()
    );
    assert_eq!(
        ta.mesh().unwrap(),
        mesh,
        "a changed its mesh when b departed"
    );
    let text = status(state.path(), "a").unwrap().to_lines(agent_now());
    assert!(text.contains("peer b departed"), "{text}");

    // b comes back on its intact dataplane: same epoch, readmitted as it was
    let before = ta.reconciles();
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "b registered again", || {
        status(state.path(), "b").is_some_and(|s| s.registered && s.epoch_reused)
    })
    .await;
    eventually(5, "a no longer holds b", || {
        status(state.path(), "a").is_some_and(|s| s.departed.is_empty())
    })
    .await;
    let snap = store.snapshot().await.unwrap();
    assert_eq!(
        (snap.nodes["a"].epoch, snap.nodes["b"].epoch),
        (ea, eb),
        "a node took a new epoch"
    );
    assert_eq!(ta.mesh().unwrap(), mesh);
    assert_eq!(tb.mesh().unwrap().peer("a").unwrap().epoch.get(), ea);
    assert!(
        ta.applied.lock().unwrap()[before..]
            .iter()
            .all(|m| m == &mesh),
        "a reconciled something else"
    );
    assert!(status(state.path(), "a").unwrap().reconcile_error.is_none());

    // gone for longer than the hold: dropped for good (its outbound SA deleted), and
    // back under that epoch the ledger refuses the deleted SA: a takes a new epoch
    b.stop().await;
    let t = Instant::now();
    eventually(20, "a drops b after the hold", || {
        ta.peer_names().is_empty()
    })
    .await;
    println!(
        "b dropped from a's mesh {:?} after its agent stopped (TTL 2 s, hold 6 s)",
        t.elapsed()
    );
    assert!(
        t.elapsed() >= Duration::from_secs(6),
        "dropped before the hold ran out"
    );
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(15, "a re-keys with b under a new epoch", || {
        ta.mesh()
            .is_some_and(|m| m.local.epoch.get() != ea && m.peer("b").is_some())
    })
    .await;
    assert_eq!(store.snapshot().await.unwrap().nodes["b"].epoch, eb);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_peer_is_not_held() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await; // hold: 600 s
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    b.stop().await;
    let store = store(&etcd).await;
    claims::release(&store, "b").await.unwrap().unwrap();
    eventually(10, "deleted b leaves a's mesh", || {
        ta.peer_names().is_empty()
    })
    .await;
    assert!(status(state.path(), "a").unwrap().departed.is_empty());
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cni_status_file_exists_only_while_the_node_is_guarded() {
    let mut etcd = Etcd::start();
    etcd.stop();
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("run/scrambler/tunnel-status.json");
    let ta = FakeTunnel::new("a", None);
    let mut ca = config("a", 1, state.path());
    ca.tunnel_status_file = Some(file.clone());
    ca.resync = Duration::from_secs(1);
    // files left by a previous run that say all is well: neither is believed
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, r#"{"dataplane":"xfrm","encrypted":true,"failClosed":true,"peers":[],"errors":{},"overhead":57}"#).unwrap();
    let mut old = status(state.path(), "a").unwrap_or_else(|| {
        std::fs::create_dir_all(state.path().join("a")).unwrap();
        serde_json::from_value(serde_json::json!({"node": "a", "id": 1, "epoch": "01",
            "epochReused": true, "etcdConnected": true, "etcdUnreachableSince": null,
            "etcdError": null, "registered": true, "rotation": null, "tx": 1, "rx": [1],
            "peers": 0, "reconciles": 1, "lastReconcile": 1, "reconcileError": null,
            "guarded": true, "pid": 0, "updated": 0}))
        .unwrap()
    });
    old.updated = agent_now();
    assert!(old.ready(agent_now()).is_ok());
    old.save(&state.path().join("a")).unwrap();
    // very first start, id and pod CIDR to be claimed, etcd away: nothing to guard with
    // yet, so no status file and the CNI plugin networks no pod
    let a = spawn(&etcd, ca, ta.clone()).await;
    eventually(10, "a wrote its own status", || {
        status(state.path(), "a").is_some_and(|s| s.pid == std::process::id())
    })
    .await;
    // its very first status is "starting": the old run's readiness is gone with it
    assert!(status(state.path(), "a")
        .unwrap()
        .ready(agent_now())
        .is_err());
    assert!(!file.exists(), "the previous run's status file was kept");
    eventually(10, "a says etcd is unreachable", || {
        status(state.path(), "a").is_some_and(|s| !s.etcd_connected)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ta.mesh().is_none());
    assert!(!file.exists(), "status file before the guard");
    let st = status(state.path(), "a").unwrap();
    assert!(!st.guarded);
    assert!(st.live(agent_now()).is_ok());
    assert!(st.ready(agent_now()).is_err());
    etcd.restart();
    eventually(20, "the status file appears", || file.exists()).await;
    assert!(
        ta.mesh().is_some(),
        "status file before the first reconcile"
    );
    let ts: scrambler_core::TunnelStatus =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(ts.fail_closed && ts.encrypted, "{ts:?}");
    // stamped, and rewritten at every resync (1 s here) even when nothing changed
    let stamp = || -> (u64, u64) {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        (
            v["updated"].as_u64().unwrap(),
            v["maxAge"].as_u64().unwrap(),
        )
    };
    let (t0, max_age) = stamp();
    assert_eq!(max_age, 2 + 30, "two resyncs and a margin");
    // the guarded supernets, which the CNI plugin checks in the dataplane itself
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let want: Vec<String> = ta
        .mesh()
        .unwrap()
        .cluster_cidrs
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(v["clusterCidrs"], serde_json::json!(want));
    assert!(agent_now().abs_diff(t0) <= 2);
    eventually(5, "the status file is rewritten", || {
        file.exists() && stamp().0 > t0
    })
    .await;
    eventually(10, "a is ready", || {
        status(state.path(), "a").is_some_and(|s| s.ready(agent_now()).is_ok())
    })
    .await;
    // the guard goes missing under the agent: the file goes, readiness with it
    ta.unguarded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(10, "the status file goes", || !file.exists()).await;
    assert!(status(state.path(), "a")
        .unwrap()
        .ready(agent_now())
        .is_err());
    ta.unguarded
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(10, "the status file is back", || file.exists()).await;
    // an orderly stop takes it away: a node without a running agent networks no pod
    a.stop().await;
    assert!(!file.exists(), "status file left after the agent stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_peer_left_out_of_the_mesh_is_not_held() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await; // hold: 600 s
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    b.stop().await;
    // b's registration is replaced by one the mesh refuses under a live lease: registered,
    // so not departed, and never held under its old record. First a conflict (a's
    // underlay address), then epoch 0 (which the snapshot cannot even decode).
    let store = store(&etcd).await;
    let good = store.snapshot().await.unwrap().nodes["b"].clone();
    let lease = scrambler_agent::lease::grant(&store, 60).await.unwrap();
    let mut conflict = good.clone();
    conflict.underlay = vec!["192.0.2.1".parse().unwrap()];
    store.register(&conflict, lease).await.unwrap();
    eventually(10, "a drops b", || ta.peer_names().is_empty()).await;
    let st = status(state.path(), "a").unwrap();
    assert!(st.departed.is_empty(), "{:?}", st.departed);
    store.register(&good, lease).await.unwrap();
    eventually(10, "a sees b again", || ta.peer_names() == ["b"]).await;
    let mut zero = good.clone();
    zero.epoch = 0;
    store.register(&zero, lease).await.unwrap();
    eventually(10, "a drops b again", || ta.peer_names().is_empty()).await;
    let st = status(state.path(), "a").unwrap();
    assert!(st.departed.is_empty(), "{:?}", st.departed);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_ended_does_not_restart_while_the_reconcile_fails() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let (ta, tb) = (FakeTunnel::new("a", None), FakeTunnel::new("b", None));
    let mut ca = config("a", 1, state.path());
    ca.departed_hold = Duration::from_secs(3);
    let a = spawn(&etcd, ca, ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a sees b", || ta.peer_names() == ["b"]).await;
    b.stop().await;
    eventually(10, "a holds b", || {
        status(state.path(), "a").is_some_and(|s| !s.departed.is_empty())
    })
    .await;
    ta.refuse_all
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(10, "the hold ends", || {
        status(state.path(), "a").is_some_and(|s| s.departed.is_empty())
    })
    .await;
    // the reconcile dropping b fails (retried every 200 ms): b stays in the dataplane but
    // is not held again
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        let st = status(state.path(), "a").unwrap();
        assert!(st.departed.is_empty(), "hold restarted: {:?}", st.departed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(status(state.path(), "a").unwrap().reconcile_error.is_some());
    assert_eq!(ta.peer_names(), ["b"]);
    ta.refuse_all
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(10, "a drops b", || ta.peer_names().is_empty()).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_hold_longer_than_a_day_is_refused() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let mut c = config("a", 1, state.path());
    c.departed_hold = Duration::from_secs(u64::MAX);
    let store = store(&etcd).await;
    let r = scrambler_agent::Agent::new(
        c.clone(),
        store.clone(),
        FakeTunnel::new("a", None),
        secret(),
    );
    let e = r.err().expect("an unbounded hold was accepted");
    assert!(e.to_string().contains("departed hold"), "{e}");
    c.departed_hold = scrambler_agent::agent::MAX_DEPARTED_HOLD;
    assert!(scrambler_agent::Agent::new(c, store, FakeTunnel::new("a", None), secret()).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_fixed_pod_cidrs_claimed_at_once_never_both_succeed() {
    let etcd = Etcd::start();
    let store = store(&etcd).await;
    let mut won = 0;
    for round in 0..10u8 {
        let net = format!("10.{}.0.0", 60 + round);
        // eight nested fixed CIDRs (/16 ⊃ /17 ⊃ … ⊃ /23) and two claims from a pool of
        // the same /16, all started together: every pair overlaps
        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let tasks: Vec<_> = (0..10u8)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let req = ClaimRequest {
                    name: format!("r{round}n{i}"),
                    id: None,
                    pod_cidrs: if i < 8 {
                        vec![format!("{net}/{}", 16 + i).parse().unwrap()]
                    } else {
                        vec![]
                    },
                    pool: Some((format!("{net}/16").parse().unwrap(), 24)),
                };
                tokio::spawn(async move {
                    barrier.wait().await;
                    claims::claim(&store, &req).await
                })
            })
            .collect();
        let mut got = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(c) => got.push(c),
                Err(Error::AlreadyExists { .. } | Error::RangeExhausted { .. }) => {}
                Err(e) => panic!("unexpected claim error: {e}"),
            }
        }
        let cidrs: Vec<ipnet::IpNet> = got.iter().flat_map(|c| c.pod_cidrs.clone()).collect();
        for (i, a) in cidrs.iter().enumerate() {
            for b in &cidrs[i + 1..] {
                assert!(
                    !a.contains(&b.network()) && !b.contains(&a.network()),
                    "round {round}: {a} and {b} both claimed"
                );
            }
        }
        assert!(!got.is_empty(), "round {round}: nobody won");
        won += got.len();
    }
    println!("10 rounds of 10 overlapping claimers: {won} claims won, none overlapping");
}

/// First time `node` reconciled a mesh for which `f` holds.
fn first(
    log: &Mutex<Vec<Logged>>,
    node: &str,
    f: impl Fn(&scrambler_core::Mesh) -> bool,
) -> Instant {
    log.lock()
        .unwrap()
        .iter()
        .find(|l| l.node == node && f(&l.mesh))
        .map(|l| l.at)
        .unwrap_or_else(|| panic!("{node} never reconciled such a mesh"))
}

/// What an epoch change costs, measured. Without a reset (a lost outbound SA) the node
/// keeps its inbound SAs of the old epoch for `epoch_grace` (`previousEpochs` in its
/// mesh), so the peer's traffic to it, still under the old epoch until the peer
/// re-keys, is received all along: that direction loses nothing. What remains is the
/// other direction: from the node's switch until the peer has reconciled, the node sends
/// under its new epoch and the peer has no inbound SA for it yet (dropped there, never
/// in clear). After the grace the agent drops the old epoch and its next reconcile
/// deletes those SAs. After a reset nothing is kept (the SAs are gone): the peer's
/// traffic is dropped until it re-keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_change_cuts_a_pair_off_until_the_peer_reconciles() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let ta = FakeTunnel::new("a", Some(log.clone()));
    let tb = FakeTunnel::new("b", Some(log.clone()));
    let mut ca = config("a", 1, state.path());
    ca.resync = Duration::from_secs(1);
    ca.epoch_grace = Duration::from_secs(3);
    let a = spawn(&etcd, ca.clone(), ta.clone()).await;
    let b = spawn(&etcd, config("b", 2, state.path()), tb.clone()).await;
    eventually(10, "a and b see each other", || {
        ta.peer_names() == ["b"] && tb.peer_names() == ["a"]
    })
    .await;
    let e1 = ta.mesh().unwrap().local.epoch;
    assert!(ta.mesh().unwrap().local.previous_epochs.is_empty());
    let b_has = |e: scrambler_core::Epoch| {
        move |m: &scrambler_core::Mesh| m.peer("a").is_some_and(|p| p.epoch == e)
    };

    // not a reboot: a's outbound SA to b is lost under the running agent; the ledger
    // refuses it, a takes a new epoch and keeps its inbound SAs of the old one
    let lost = Instant::now();
    ta.lose_outbound
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(10, "b re-keys with a's new epoch", || {
        tb.mesh()
            .and_then(|m| m.peer("a").map(|p| p.epoch))
            .is_some_and(|e| e != e1)
    })
    .await;
    let e2 = tb.mesh().unwrap().peer("a").unwrap().epoch;
    let a_switched = first(&log, "a", |m| m.local.epoch == e2);
    let b_switched = first(&log, "b", b_has(e2));
    // a → b: a sends under e2 from its switch, b receives it from its own
    let a_to_b = b_switched.duration_since(a_switched);
    // b → a: b sends under e1 until its switch; a receives e1 while its applied mesh has
    // it, as its epoch or as a previous epoch whose deadline is after b's switch
    let unix = |at: Instant| {
        std::time::SystemTime::now()
            .checked_sub(at.elapsed())
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
    };
    let b_switched_unix = unix(b_switched);
    let a_meshes: Vec<Logged> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.node == "a" && l.at >= a_switched && l.at <= b_switched)
        .cloned()
        .collect();
    assert!(!a_meshes.is_empty());
    // from the first mesh a applied that no longer receives e1 until b's switch
    let b_to_a = a_meshes
        .iter()
        .find(|l| {
            l.mesh.local.epoch != e1
                && !l
                    .mesh
                    .local
                    .previous_epochs
                    .iter()
                    .any(|p| p.epoch == e1 && Duration::from_secs(p.until) > b_switched_unix)
        })
        .map(|l| b_switched.duration_since(l.at));
    println!(
        "epoch change without reboot: a switched {:?} after losing its SA; b -> a cut for \
         {b_to_a:?} (None: never; a kept its inbound SAs of the old epoch), a -> b cut for \
         {a_to_b:?} (until b reconciled)",
        a_switched.duration_since(lost),
    );
    assert_eq!(b_to_a, None, "{a_meshes:#?}");
    assert!(a_to_b < ca.max_delay + Duration::from_secs(2), "{a_to_b:?}");
    let until = ta.mesh().unwrap().local.previous_epochs[0].until;
    eventually(2, "a's status lists the previous epoch", || {
        status(state.path(), "a").is_some_and(|s| {
            s.previous_epochs
                .iter()
                .any(|p| p.epoch == e1 && p.until == until)
        })
    })
    .await;
    // after the grace the agent drops e1; its reconcile deletes those SAs
    eventually(10, "a drops its previous epoch after the grace", || {
        ta.mesh().is_some_and(|m| {
            m.local.epoch == e2 && m.local.previous_epochs.is_empty() && m.peer("b").is_some()
        })
    })
    .await;
    let dropped = first(&log, "a", |m| {
        m.local.epoch == e2 && m.local.previous_epochs.is_empty()
    });
    let dropped_unix = unix(dropped).as_secs();
    assert!(dropped_unix >= until, "{dropped_unix} < {until}");
    assert!(dropped_unix <= until + 2, "{dropped_unix} > {until} + 2");

    // a reboot: the dataplane is empty, the agent restarts
    a.stop().await;
    use scrambler_core::Tunnel;
    let reset = Instant::now();
    ta.remove(&scrambler_core::Netns::default()).await.unwrap();
    let a = spawn(&etcd, ca, ta.clone()).await;
    eventually(10, "b re-keys with a's rebooted epoch", || {
        tb.mesh()
            .and_then(|m| m.peer("a").map(|p| p.epoch))
            .is_some_and(|e| e != e2)
    })
    .await;
    let e3 = tb.mesh().unwrap().peer("a").unwrap().epoch;
    let a_full = first(&log, "a", |m| m.local.epoch == e3 && m.peer("b").is_some());
    // nothing kept after a reset
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.node == "a" && l.mesh.local.epoch == e3)
        .all(|l| l.mesh.local.previous_epochs.is_empty()));
    let b_switched = first(&log, "b", b_has(e3));
    println!(
        "reboot (agent restarted at once): pair a-b cut for {:?} from the reset until b \
         reconciled (a had its SAs with b {:?} after the reset), plus the reboot itself",
        b_switched.duration_since(reset),
        a_full.duration_since(reset)
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_clears_registered_at_once() {
    let etcd = Etcd::start();
    let state = tempfile::tempdir().unwrap();
    let ta = FakeTunnel::new("a", None);
    let a = spawn(&etcd, config("a", 1, state.path()), ta.clone()).await;
    eventually(10, "a is registered", || {
        status(state.path(), "a").is_some_and(|s| s.registered)
    })
    .await;
    // the next syncs cannot get past their reconcile (the dataplane reads unguarded and
    // every reconcile fails), so nothing re-registers a: only the lost lease can tell
    ta.refuse_all
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ta.unguarded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let store = store(&etcd).await;
    let mut c = store.client();
    let r = c.get(store.layout().node("a"), None).await.unwrap();
    let lease = r.kvs()[0].lease();
    c.lease_revoke(lease).await.unwrap();
    eventually(10, "a's status says it is not registered", || {
        status(state.path(), "a").is_some_and(|s| !s.registered)
    })
    .await;
    assert!(!store.snapshot().await.unwrap().nodes.contains_key("a"));
    ta.refuse_all
        .store(false, std::sync::atomic::Ordering::SeqCst);
    ta.unguarded
        .store(false, std::sync::atomic::Ordering::SeqCst);
    eventually(10, "a registers again", || {
        status(state.path(), "a").is_some_and(|s| s.registered)
    })
    .await;
    a.stop().await;
}
