//! Load between two pods for the dataplane bench: Debian's iperf3 (TCP bulk, small-packet
//! UDP) and a TCP request/response ping-pong, each run from inside the pods' network
//! namespaces; and the CPU and kernel counters read around them.

use scrambler_core::Netns;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port iperf3 listens on in the server pod.
const IPERF_PORT: &str = "5201";
/// The port of the ping-pong server.
const RR_PORT: u16 = 5202;
/// Size of one ping-pong request and response.
const RR_SIZE: usize = 64;

/// One iperf3 TCP run, as the receiver counted it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp {
    /// Bytes received.
    pub bytes: u64,
    /// Seconds the receiver measured.
    pub seconds: f64,
    /// TCP retransmissions of the sender.
    pub retransmits: u64,
}

impl Tcp {
    /// Goodput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

/// One iperf3 UDP run of small datagrams, as the receiver counted it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Udp {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams lost on the way (sent − received).
    pub lost: u64,
    /// Seconds of the run.
    pub seconds: f64,
}

impl Udp {
    /// Datagrams received per second.
    pub fn pps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.sent.saturating_sub(self.lost) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Round-trip times of a ping-pong run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rtt {
    /// Round trips made.
    pub count: usize,
    /// Median, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

fn in_netns(ns: &str, argv: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(argv);
    c
}

/// Starts `iperf3 -s -1` (one test, then exit) in namespace `server`.
fn iperf_server(server: &str) -> Result<Child, String> {
    in_netns(server, &["iperf3", "-s", "-1", "-p", IPERF_PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start iperf3 server in {server} (install iperf3): {e}"))
}

/// Runs the iperf3 client `args` in `client` against a fresh server in `server`;
/// returns iperf3's JSON report. Retries while the server is not listening yet.
fn iperf(
    client: &str,
    server: &str,
    dst: &str,
    args: &[&str],
) -> Result<serde_json::Value, String> {
    let mut srv = iperf_server(server)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let result = loop {
        let mut argv = vec!["iperf3", "-c", dst, "-p", IPERF_PORT, "-J"];
        argv.extend_from_slice(args);
        let out = in_netns(client, &argv)
            .output()
            .map_err(|e| format!("run iperf3 in {client}: {e}"))?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "iperf3 output: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        match json.get("error").and_then(|e| e.as_str()) {
            Some(e) if e.contains("connect") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(e) => break Err(format!("iperf3 {args:?} to {dst}: {e}")),
            None => break Ok(json),
        }
    };
    // `-1` ends the server after the test; a server left waiting is ours to stop
    let waited = Instant::now();
    while srv.try_wait().ok().flatten().is_none() {
        if waited.elapsed() > Duration::from_secs(2) {
            let _ = srv.kill();
            let _ = srv.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0)
}

/// TCP bulk from `client` to `dst` (in `server`) for `secs` seconds.
pub fn iperf_tcp(client: &str, server: &str, dst: &str, secs: u32) -> Result<Tcp, String> {
    let j = iperf(client, server, dst, &["-t", &secs.to_string()])?;
    Ok(Tcp {
        bytes: num(&j, &["end", "sum_received", "bytes"]) as u64,
        seconds: num(&j, &["end", "sum_received", "seconds"]),
        retransmits: num(&j, &["end", "sum_sent", "retransmits"]) as u64,
    })
}

/// UDP datagrams of `len` bytes of payload from `client` to `dst`, as fast as the sender
/// can, for `secs` seconds.
pub fn iperf_udp(
    client: &str,
    server: &str,
    dst: &str,
    secs: u32,
    len: u32,
) -> Result<Udp, String> {
    let j = iperf(
        client,
        server,
        dst,
        &[
            "-u",
            "-b",
            "0",
            "-l",
            &len.to_string(),
            "-t",
            &secs.to_string(),
        ],
    )?;
    Ok(Udp {
        sent: num(&j, &["end", "sum", "packets"]) as u64,
        lost: num(&j, &["end", "sum", "lost_packets"]) as u64,
        seconds: num(&j, &["end", "sum", "seconds"]),
    })
}

/// TCP request/response: `client` sends [`RR_SIZE`] bytes to `dst` in `server`, which
/// sends them back, one at a time, for `dur`; Nagle off on both ends.
pub fn ping_pong(
    client: &Netns,
    server: &Netns,
    dst: IpAddr,
    dur: Duration,
) -> Result<Rtt, String> {
    let addr = SocketAddr::new(dst, RR_PORT);
    let listener = server
        .run(move || {
            TcpListener::bind(addr).map_err(|e| scrambler_core::Error::io("bind", addr, e))
        })
        .map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; RR_SIZE];
        loop {
            if let Err(e) = s.read_exact(&mut buf) {
                return match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => Ok(()),
                    _ => Err(e),
                };
            }
            s.write_all(&buf)?;
        }
    });
    let mut s = client
        .run(move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| scrambler_core::Error::io("connect to", addr, e))
        })
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    let mut buf = [0x5cu8; RR_SIZE];
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        s.write_all(&buf)
            .map_err(|e| format!("ping-pong send: {e}"))?;
        s.read_exact(&mut buf)
            .map_err(|e| format!("ping-pong receive: {e}"))?;
        times.push(t.elapsed());
    }
    drop(s);
    let _ = echo.join();
    times.sort();
    let q = |p: f64| -> f64 {
        times
            .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Ok(Rtt {
        count: times.len(),
        p50_us: q(0.50),
        p99_us: q(0.99),
    })
}

/// Clock ticks per second of /proc's CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) process `pid` has used so far.
pub fn process_cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / USER_HZ
}

/// CPU seconds the whole machine (or guest) has spent in the kernel so far: system, irq
/// and softirq time of every CPU (/proc/stat), where a kernel dataplane's work is counted.
pub fn kernel_cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // cpu user nice system idle iowait irq softirq …
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    [2, 5, 6].iter().filter_map(|&i| f.get(i)).sum::<f64>() / USER_HZ
}

/// The process ids whose command line contains `needle` (e.g. a VPP's startup.conf path).
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Runs `cat <file>` in namespace `ns` (per-namespace /proc/net files).
pub fn netns_file(ns: &str, file: &str) -> String {
    in_netns(ns, &["cat", file])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The `/proc/net/snmp` and `/proc/net/netstat` counters of namespace `ns`, as
/// `Proto:Name` → value (e.g. `Ip:FragCreates`, `TcpExt:TCPLostRetransmit`).
pub fn snmp(ns: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = netns_file(ns, file);
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut n = names.split_whitespace();
            let mut v = values.split_whitespace();
            let (Some(proto), Some(_)) = (n.next(), v.next()) else {
                continue;
            };
            for (k, val) in n.zip(v) {
                if let Ok(x) = val.parse() {
                    m.insert(format!("{proto}{k}"), x);
                }
            }
        }
    }
    m
}

/// `/proc/net/xfrm_stat` of namespace `ns` (every XFRM error counter), name → value.
pub fn xfrm_stat(ns: &str) -> BTreeMap<String, u64> {
    netns_file(ns, "/proc/net/xfrm_stat")
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// `after − before` of the counters that changed.
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(*before.get(k).unwrap_or(&0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}
