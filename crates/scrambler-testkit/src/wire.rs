//! What the VM tests watch and drive between pods, shared by the xfrm, ipvlan and VPP
//! VM tests: nodes on a bridged underlay ([`Underlay`]), numbered UDP streams ([`Stream`])
//! and a ping-reply counter ([`ping_replies`]); [`capture_bridge`] captures the underlay.

use crate::capture::Capture;
use crate::netns::TestNetns;
use scrambler_core::Netns;
use std::collections::HashSet;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `n` nodes on a wire: namespace `wire` holds bridge `br0`; node i (1-based) has
/// `ul0` = 192.0.2.i/24 plugged into it and a default route via 192.0.2.254; one
/// empty pod namespace per node. Everything goes when it is dropped.
pub struct Underlay {
    /// Node namespaces, node i at index i - 1.
    pub nodes: Vec<TestNetns>,
    /// One pod namespace per node, same order.
    pub pods: Vec<TestNetns>,
    /// The wire namespace (capture on its `br0`).
    pub wire: TestNetns,
}

impl Underlay {
    /// Builds it, naming namespaces `<prefix>w`, `<prefix>n<i>`, `<prefix>p<i>`.
    pub fn new(prefix: &str, n: usize) -> Underlay {
        let wire = TestNetns::new(&format!("{prefix}w"));
        wire.ip(&["link", "add", "br0", "type", "bridge"]);
        wire.ip(&["link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 1..=n {
            let node = TestNetns::new(&format!("{prefix}n{i}"));
            let port = format!("w{i}");
            node.ip(&[
                "link", "add", "ul0", "type", "veth", "peer", "name", &port, "netns", &wire.name,
            ]);
            node.ip(&["link", "set", "ul0", "up"]);
            wire.ip(&["link", "set", &port, "master", "br0", "up"]);
            node.ip(&["addr", "add", &format!("192.0.2.{i}/24"), "dev", "ul0"]);
            node.ip(&["route", "add", "default", "via", "192.0.2.254"]);
            nodes.push(node);
            pods.push(TestNetns::new(&format!("{prefix}p{i}")));
        }
        Underlay { nodes, pods, wire }
    }
}

/// Starts capturing the IP packets on bridge `br0` of `wire`; panics when tcpdump does not
/// start.
pub fn capture_bridge(wire: &TestNetns) -> Capture {
    Capture::on(&wire.name, "br0")
        .filter("ip")
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Numbered UDP datagrams from one pod to another, one every `every`, while a receiver
/// thread in the other pod collects them.
pub struct Stream {
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<u32>,
    receiver: std::thread::JoinHandle<HashSet<u32>>,
}

impl Stream {
    /// Starts sending from address `from.1` in namespace `from.0` to `to.1`:5555 in `to.0`.
    pub fn start(from: (&Netns, &str), to: (&Netns, &str), every: Duration) -> Stream {
        let dst = format!("{}:5555", to.1);
        let bind = dst.clone();
        let rx =
            to.0.run(move || Ok(UdpSocket::bind(&bind).unwrap()))
                .unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let src = format!("{}:0", from.1);
        let tx = from
            .0
            .run(move || Ok(UdpSocket::bind(&src).unwrap()))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sending = stop.clone();
        let sender = std::thread::spawn(move || {
            let mut seq = 0u32;
            while !sending.load(Ordering::Relaxed) {
                if let Err(e) = tx.send_to(&seq.to_be_bytes(), &dst) {
                    eprintln!("send {seq}: {e}");
                    break;
                }
                seq += 1;
                std::thread::sleep(every);
            }
            seq
        });
        let receiving = stop.clone();
        let receiver = std::thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut buf = [0u8; 16];
            let mut idle_since: Option<Instant> = None;
            loop {
                match rx.recv(&mut buf) {
                    Ok(4) => {
                        seen.insert(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]));
                        idle_since = None;
                    }
                    Ok(_) => {}
                    Err(_) if receiving.load(Ordering::Relaxed) => {
                        // stopped: wait for stragglers for up to 1 s of silence
                        let t = *idle_since.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_secs(1) {
                            return seen;
                        }
                    }
                    Err(_) => {}
                }
            }
        });
        Stream {
            stop,
            sender,
            receiver,
        }
    }

    /// Stops sending; returns (sent, distinct received).
    pub fn finish(self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.sender.join().unwrap();
        let seen = self.receiver.join().unwrap();
        (sent, seen.len() as u32)
    }
}

/// busybox ping from `pod` to `to` (`count` echoes, 2 s wait after the last); the number
/// of replies.
pub fn ping_replies(pod: &TestNetns, to: &str, count: u32) -> u32 {
    let (_, out) = pod.exec(&["busybox", "ping", "-c", &count.to_string(), "-W", "2", to]);
    eprintln!("ping {} -> {to}: {}", pod.name, out.trim());
    out.split(" packets received")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
