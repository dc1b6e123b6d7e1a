//! Reachability probes: the all-pairs ping matrix of `lab test`, and a continuous ping that
//! measures how long traffic was lost while a failure is injected.

use super::cmd;
use scrambler_core::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// One ping from a pod to an address.
#[derive(Debug, Clone)]
pub struct Ping {
    /// Source pod namespace.
    pub from: String,
    /// Destination address.
    pub to: IpAddr,
}

/// Runs every ping: one `fping` per source pod probes all of its destinations at once (up
/// to 3 echoes each, one answer suffices: the first packet of a flow may be spent resolving
/// neighbours), `parallel` source pods at a time; a ping none of whose echoes was answered
/// is tried once more (a qemu TCG guest on a loaded machine can hold a packet past fping's
/// 1 s timeout). Returns success per ping, in order.
pub fn ping_all(pings: &[Ping], parallel: usize) -> Vec<bool> {
    let mut ok = ping_round(pings, parallel);
    let failed: Vec<usize> = (0..pings.len()).filter(|i| !ok[*i]).collect();
    if !failed.is_empty() {
        let again: Vec<Ping> = failed.iter().map(|i| pings[*i].clone()).collect();
        for (i, answered) in failed.into_iter().zip(ping_round(&again, parallel)) {
            ok[i] = answered;
        }
    }
    ok
}

/// One round of [`ping_all`]: every ping once.
fn ping_round(pings: &[Ping], parallel: usize) -> Vec<bool> {
    let mut by_source: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in pings.iter().enumerate() {
        by_source.entry(p.from.clone()).or_default().push(i);
    }
    let jobs: Vec<(String, Vec<usize>)> = by_source.into_iter().collect();
    let results = Arc::new(Mutex::new(vec![false; pings.len()]));
    let next = Arc::new(Mutex::new(0usize));
    let (jobs, pings) = (Arc::new(jobs), Arc::new(pings.to_vec()));
    let workers: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let (results, next, jobs, pings) =
                (results.clone(), next.clone(), jobs.clone(), pings.clone());
            std::thread::spawn(move || loop {
                let j = {
                    let mut n = next.lock().unwrap_or_else(|e| e.into_inner());
                    *n += 1;
                    *n - 1
                };
                let Some((from, idx)) = jobs.get(j) else {
                    break;
                };
                let targets: Vec<IpAddr> = idx.iter().map(|i| pings[*i].to).collect();
                let answered = fping(from, &targets);
                let mut r = results.lock().unwrap_or_else(|e| e.into_inner());
                for i in idx {
                    r[*i] = answered.contains(&pings[*i].to);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let r = results.lock().unwrap_or_else(|e| e.into_inner()).clone();
    r
}

/// `fping -c 3` from a pod; the addresses that answered at least once.
fn fping(from: &str, targets: &[IpAddr]) -> BTreeSet<IpAddr> {
    let mut args: Vec<String> = ["-q", "-c", "3", "-p", "200", "-t", "1000"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(targets.iter().map(|t| t.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match cmd::netns_exec(from, "fping", &args) {
        Ok(out) => parse_fping(&String::from_utf8_lossy(&out.stderr)),
        Err(_) => BTreeSet::new(),
    }
}

/// Parses `fping -q -c N` summaries (`10.244.2.2 : xmt/rcv/%loss = 3/3/0%, …`).
pub fn parse_fping(text: &str) -> BTreeSet<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let (addr, rest) = l.split_once(" : ")?;
            let counts = rest.split_once("= ")?.1;
            let rcv: u32 = counts.split('/').nth(1)?.parse().ok()?;
            let ip: IpAddr = addr.trim().parse().ok()?;
            (rcv > 0).then_some(ip)
        })
        .collect()
}

/// A continuous ping (every `interval_ms`) from a pod, running until stopped.
pub struct Flow {
    child: Option<Child>,
    interval_ms: u64,
    /// Description for the report.
    pub label: String,
}

/// What a flow saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowReport {
    /// What was probed.
    pub label: String,
    /// Echo requests sent.
    pub sent: u64,
    /// Replies received.
    pub received: u64,
    /// Longest run of consecutive lost echoes, in milliseconds.
    pub longest_outage_ms: u64,
    /// The `icmp_seq` of every lost echo (the n-th echo was sent about `(n - 1)` intervals
    /// after the flow started), to place a loss among the fault's steps.
    pub lost: Vec<u64>,
}

impl Flow {
    /// Starts pinging `to` from pod `from`.
    pub fn start(from: &str, to: IpAddr, interval_ms: u64) -> Result<Flow> {
        let interval = format!("{:.3}", interval_ms as f64 / 1000.0);
        let child = Command::new(cmd::ip_bin())
            .args([
                "netns", "exec", from, "ping", "-n", "-i", &interval, "-W", "1",
            ])
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io("start ping from", from, e))?;
        Ok(Flow {
            child: Some(child),
            interval_ms,
            label: format!("{from} -> {to}"),
        })
    }

    /// Stops the flow and reports losses.
    pub fn stop(mut self) -> Result<FlowReport> {
        let Some(child) = self.child.take() else {
            return Err(Error::config("flow already stopped"));
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("wait for ping", &self.label, e))?;
        Ok(parse_ping(
            &String::from_utf8_lossy(&out.stdout),
            self.interval_ms,
            &self.label,
        ))
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Parses ping's output: replies by `icmp_seq`, the total from the summary line.
pub fn parse_ping(text: &str, interval_ms: u64, label: &str) -> FlowReport {
    let mut seqs = BTreeSet::new();
    let mut sent = 0;
    for line in text.lines() {
        if let Some(rest) = line.split("icmp_seq=").nth(1) {
            if line.contains("bytes from") {
                if let Ok(n) = rest.split_whitespace().next().unwrap_or("").parse::<u64>() {
                    seqs.insert(n);
                }
            }
        }
        if line.contains("packets transmitted") {
            sent = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    // One echo may still be in flight when the flow is stopped: it is not a loss.
    if sent > 0 && !seqs.contains(&sent) {
        sent -= 1;
    }
    // Longest gap between consecutive replies (and from the start / to the end).
    let first = 1;
    let mut prev = first - 1;
    let mut longest = 0;
    for &s in &seqs {
        longest = longest.max(s.saturating_sub(prev + 1));
        prev = s;
    }
    longest = longest.max(sent.saturating_sub(prev));
    FlowReport {
        label: label.into(),
        sent,
        received: seqs.len() as u64,
        longest_outage_ms: longest * interval_ms,
        lost: (1..=sent).filter(|s| !seqs.contains(s)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fping_summaries_name_who_answered() {
        let text = "10.244.2.2 : xmt/rcv/%loss = 3/3/0%, min/avg/max = 0.1/0.2/0.3\n\
                    10.244.3.2 : xmt/rcv/%loss = 3/0/100%\n\
                    10.244.3.3 : xmt/rcv/%loss = 3/1/66%, min/avg/max = 1/1/1\n";
        let ok = parse_fping(text);
        assert!(ok.contains(&"10.244.2.2".parse().unwrap()));
        assert!(!ok.contains(&"10.244.3.2".parse().unwrap()));
        assert!(ok.contains(&"10.244.3.3".parse().unwrap()));
    }

    #[test]
    fn outage_is_the_longest_run_of_lost_echoes() {
        let text = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\
            64 bytes from 10.244.2.2: icmp_seq=1 ttl=62 time=0.5 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=2 ttl=62 time=0.5 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=6 ttl=62 time=0.5 ms\n\
            64 bytes from 10.244.2.2: icmp_seq=7 ttl=62 time=0.5 ms\n\n\
            --- 10.244.2.2 ping statistics ---\n\
            8 packets transmitted, 4 received, 50% packet loss, time 700ms\n";
        let r = parse_ping(text, 100, "x");
        // the 8th echo was in flight when ping stopped: not a loss
        assert_eq!((r.sent, r.received, r.longest_outage_ms), (7, 4, 300));
        assert_eq!(r.lost, [3, 4, 5]);
        let clean = "64 bytes from a: icmp_seq=1 ttl=1\n64 bytes from a: icmp_seq=2 ttl=1\n2 packets transmitted, 2 received";
        assert_eq!(parse_ping(clean, 50, "y").longest_outage_ms, 0);
    }
}
