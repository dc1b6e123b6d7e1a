//! 200 ADD/DEL, 8 at a time, with faults injected at every ADD stage and pod namespaces
//! deleted while ADD runs: afterwards no address, interface, route or lease is left.

mod common;

use common::*;
use scrambler_core::fault::FaultStage;
use scrambler_testkit::netns::TestNetns;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const TOTAL: usize = 200;
const PARALLEL: usize = 8;

#[derive(Default, Debug)]
struct Tally {
    added: usize,
    failed_as_injected: usize,
    failed_otherwise: Vec<String>,
    netns_deleted: usize,
}

#[test]
fn parallel_add_del_with_faults_leaves_nothing_behind() {
    let node = Node::new("stress");
    let conf = node.conf("1.1.0", "10.40.0.0/24");
    let next = AtomicUsize::new(0);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= TOTAL {
                    break;
                }
                one(&node, &conf, i, &tally);
            });
        }
    });
    let t = tally.into_inner().unwrap();
    eprintln!("stress: {t:?}");
    assert!(t.failed_otherwise.is_empty(), "{:?}", t.failed_otherwise);
    assert!(t.added > TOTAL / 2, "{t:?}");
    // 40 ADDs carry a fault; a few of them also lose their netns before the fault stage
    assert!(t.failed_as_injected >= TOTAL / 5 - 8, "{t:?}");
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(node.our_routes().trim().is_empty(), "{}", node.our_routes());
    assert!(node.leases().is_empty(), "{:?}", node.leases());
    let addrs = node.ns.ip(&["-o", "addr"]);
    assert!(!addrs.contains("169.254.1.1"), "{addrs}");
    assert_eq!(links(&node.ns).len(), 3, "lo + uplink pair only");
}

fn one(node: &Node, conf: &serde_json::Value, i: usize, tally: &Mutex<Tally>) {
    let pod = TestNetns::new("stresspod");
    let cid = format!("stress{i}");
    let mut add = Invocation::new("ADD", &cid, &pod.path(), "eth0");
    let fault = (i % 5 == 0).then(|| FaultStage::ALL[(i / 5) % FaultStage::ALL.len()]);
    if let Some(f) = fault {
        add = add.env("SCRAMBLER_FAULT", f.name());
    }
    let delete_midway = i % 7 == 3;
    let out = std::thread::scope(|s| {
        if delete_midway {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis((i % 4) as u64 * 2));
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &pod.name])
                    .status();
            });
        }
        node.ours(&add, conf)
    });
    {
        let mut t = tally.lock().unwrap();
        if delete_midway {
            t.netns_deleted += 1;
        }
        if out.ok {
            t.added += 1;
        } else if fault.is_some() && out.stdout.contains("fault injected") {
            t.failed_as_injected += 1;
        } else if delete_midway
            && [3, 4, 5, 100].contains(&out.json()["code"].as_u64().unwrap_or(0))
        {
            // the sandbox vanished under ADD: unknown container, invalid CNI_NETNS
            // (file caught between unmount and unlink), I/O or kernel error
        } else {
            t.failed_otherwise.push(format!("{i}: {}", out.stdout));
        }
    }
    let mut del = add.cmd("DEL");
    del.extra_env.clear();
    if delete_midway && i % 2 == 0 {
        del.netns = None;
    }
    let d = node.ours(&del, conf);
    if !d.ok {
        tally
            .lock()
            .unwrap()
            .failed_otherwise
            .push(format!("{i} DEL: {}", d.stdout));
    }
}
