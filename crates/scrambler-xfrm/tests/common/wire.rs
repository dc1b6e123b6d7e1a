//! What the VM tests watch and drive between pods: a tcpdump of the underlay bridge and
//! numbered UDP streams. Also used by scrambler-vpp's interop test and scrambler-ipvlan's
//! VM tests (through `#[path]`), so it depends on nothing but scrambler-core.
#![allow(dead_code)]

use scrambler_core::netns::testing::TestNetns;
use scrambler_core::Netns;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// tcpdump of the IP packets on bridge `br0` of a wire namespace.
pub struct Capture {
    child: Child,
}

impl Capture {
    /// Starts tcpdump on `br0` of `wire` and waits until it listens.
    pub fn start(wire: &TestNetns) -> Capture {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &wire.name])
            .args(["tcpdump", "-Z", "root", "-n", "-l", "-U", "-i", "br0", "ip"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let stderr = child.stderr.take().unwrap();
        // wait for "listening on br0"
        for l in BufReader::new(stderr).lines() {
            if l.unwrap_or_default().contains("listening on") {
                break;
            }
        }
        Capture { child }
    }

    /// Stops the capture and returns its lines.
    pub fn finish(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut o, &mut out);
        }
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
