//! LocalIpam (with its real disk store) against a simple in-memory model: random sequences
//! of allocate / allocate-requested / release / GC must give the model's answers, and the
//! leases must never break the invariants (no duplicate, inside the ranges, never network,
//! broadcast, gateway or excluded).

use proptest::prelude::*;
use scrambler_core::{AllocRequest, AttachmentId};
use scrambler_ipam::range::unusable_reason;
use scrambler_ipam::{IpamConf, LocalIpam};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

#[derive(Debug, Clone)]
enum Op {
    Alloc(u8),
    AllocRequested(u8, u8),
    Release(u8),
    Gc(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..12).prop_map(Op::Alloc),
        2 => (0u8..12, 0u8..16).prop_map(|(k, o)| Op::AllocRequested(k, o)),
        3 => (0u8..12).prop_map(Op::Release),
        1 => proptest::collection::vec(0u8..12, 0..8).prop_map(Op::Gc),
    ]
}

fn id(k: u8) -> AttachmentId {
    // two interfaces of one container are two attachments
    AttachmentId::new(format!("ctr{}", k / 2), format!("eth{}", k % 2))
}

/// Dual stack: v4 has 10.3.0.0/28 with gateway .1, .5 and .8/30 excluded (so .2–.14 minus
/// .5, .8–.11 = 8 usable); v6 has 7 usable addresses.
fn conf(dir: &std::path::Path) -> IpamConf {
    IpamConf::parse(&json!({
        "ranges": [[{"subnet": "10.3.0.0/28"}],
                   [{"subnet": "fd03::/120", "rangeStart": "fd03::1", "rangeEnd": "fd03::8", "gateway": "fd03::4"}]],
        "exclude": ["10.3.0.5", "10.3.0.8/30"],
        "dataDir": dir.display().to_string(),
    }))
    .unwrap()
}

fn usable(c: &IpamConf, set: usize) -> BTreeSet<IpAddr> {
    let r = &c.ranges[set].ranges[0];
    r.subnet
        .hosts()
        .chain([r.subnet.network(), r.subnet.broadcast()])
        .filter(|ip| unusable_reason(r, &c.exclude, *ip).is_none())
        .collect()
}

type Model = BTreeMap<AttachmentId, (IpAddr, IpAddr)>;

fn check_invariants(ipam: &LocalIpam, c: &IpamConf, model: &Model) -> Result<(), TestCaseError> {
    let leases = ipam.list_blocking().unwrap();
    let mut seen = BTreeSet::new();
    for l in &leases {
        prop_assert!(seen.insert(l.address), "duplicate {}", l.address);
        let set = usize::from(l.address.is_ipv6());
        prop_assert!(
            usable(c, set).contains(&l.address),
            "{} not usable",
            l.address
        );
    }
    let mut from_disk: Model = BTreeMap::new();
    for l in &leases {
        let e = from_disk
            .entry(l.id.clone())
            .or_insert((l.address, l.address));
        if l.address.is_ipv4() {
            e.0 = l.address
        } else {
            e.1 = l.address
        }
    }
    prop_assert_eq!(&from_disk, model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let tmp = tempfile::tempdir().unwrap();
        let c = conf(tmp.path());
        let ipam = LocalIpam::new("model", c.clone()).unwrap();
        let (u4, u6) = (usable(&c, 0), usable(&c, 1));
        let mut model: Model = BTreeMap::new();
        for op in ops {
            match op {
                Op::Alloc(k) => {
                    let got = ipam.allocate_blocking(&AllocRequest { id: id(k), requested: vec![] });
                    let used4 = model.values().map(|v| v.0).collect::<BTreeSet<_>>();
                    let used6 = model.values().map(|v| v.1).collect::<BTreeSet<_>>();
                    match (model.get(&id(k)), got) {
                        (Some(&(a4, a6)), Ok(r)) => {
                            prop_assert_eq!(r.ips[0].address.addr(), a4);
                            prop_assert_eq!(r.ips[1].address.addr(), a6);
                        }
                        (Some(_), Err(e)) => prop_assert!(false, "re-allocate failed: {e}"),
                        (None, Ok(r)) => {
                            let (a4, a6) = (r.ips[0].address.addr(), r.ips[1].address.addr());
                            prop_assert!(!used4.contains(&a4) && !used6.contains(&a6));
                            prop_assert_eq!(r.ips[0].gateway, Some("10.3.0.1".parse().unwrap()));
                            prop_assert_eq!(r.ips[1].address.prefix_len(), 120);
                            model.insert(id(k), (a4, a6));
                        }
                        (None, Err(e)) => {
                            prop_assert_eq!(e.code(), 101, "{}", e);
                            prop_assert!(used4.len() == u4.len() || used6.len() == u6.len());
                        }
                    }
                }
                Op::AllocRequested(k, o) => {
                    let want: IpAddr = format!("10.3.0.{o}").parse().unwrap();
                    let got = ipam.allocate_blocking(&AllocRequest { id: id(k), requested: vec![want] });
                    let held_by_other = model.iter().any(|(h, v)| v.0 == want && h != &id(k));
                    let used6 = model.values().map(|v| v.1).collect::<BTreeSet<_>>();
                    match (model.get(&id(k)).copied(), got) {
                        (Some((a4, _)), Ok(r)) => {
                            prop_assert_eq!(a4, want);
                            prop_assert_eq!(r.ips[0].address.addr(), want);
                        }
                        (Some((a4, _)), Err(e)) => {
                            prop_assert!(a4 != want, "{e}");
                        }
                        (None, Ok(r)) => {
                            prop_assert!(u4.contains(&want) && !held_by_other);
                            prop_assert_eq!(r.ips[0].address.addr(), want);
                            model.insert(id(k), (want, r.ips[1].address.addr()));
                        }
                        (None, Err(e)) => {
                            let expected = if !u4.contains(&want) { 7 } else if held_by_other { 102 } else { 101 };
                            prop_assert_eq!(e.code(), expected, "{}", e);
                            if expected == 101 {
                                prop_assert_eq!(used6.len(), u6.len());
                            }
                        }
                    }
                }
                Op::Release(k) => {
                    ipam.release_blocking(&id(k)).unwrap();
                    model.remove(&id(k));
                }
                Op::Gc(keep) => {
                    let valid: Vec<AttachmentId> = keep.iter().map(|k| id(*k)).collect();
                    let released = ipam.gc_blocking(&valid).unwrap();
                    let before = model.len();
                    model.retain(|h, _| valid.contains(h));
                    prop_assert_eq!(released.len(), 2 * (before - model.len()));
                }
            }
            check_invariants(&ipam, &c, &model)?;
        }
    }
}

/// The async `Ipam` trait, as Scrambler's CNI plugin and agent use it.
#[tokio::test(flavor = "current_thread")]
async fn trait_methods_agree_with_the_blocking_ones() {
    use scrambler_core::Ipam;
    let tmp = tempfile::tempdir().unwrap();
    let ipam: Box<dyn Ipam> = Box::new(LocalIpam::new("trait", conf(tmp.path())).unwrap());
    let (a, b) = (id(0), id(1));
    let ra = ipam
        .allocate(&AllocRequest {
            id: a.clone(),
            requested: vec![],
        })
        .await
        .unwrap();
    ipam.allocate(&AllocRequest {
        id: b.clone(),
        requested: vec!["10.3.0.14".parse().unwrap()],
    })
    .await
    .unwrap();
    let held = ipam.check(&a).await.unwrap();
    assert_eq!(held.len(), 2);
    assert_eq!(held[0].address, ra.ips[0].address.addr());
    assert_eq!(held[0].subnet.to_string(), "10.3.0.0/28");
    assert!(ipam.check(&id(5)).await.unwrap().is_empty());
    assert_eq!(ipam.list().await.unwrap().len(), 4);
    let released = ipam.gc(std::slice::from_ref(&b)).await.unwrap();
    assert!(released.iter().all(|l| l.id == a));
    assert_eq!(released.len(), 2);
    ipam.release(&b).await.unwrap();
    ipam.release(&b).await.unwrap();
    assert!(ipam.list().await.unwrap().is_empty());
}
