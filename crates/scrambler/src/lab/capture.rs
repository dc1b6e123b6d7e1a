//! Capturing the underlay and judging it: every packet between nodes must be ESP, and no
//! packet carrying a pod address may cross in the clear; with node encryption on, neither
//! may an IP packet between two node (underlay) addresses but for the bypass ports (see
//! [`NodeScope`]).
//!
//! tcpdump writes the capture (classic pcap); this module reads it itself, so the verdict
//! does not depend on a capture-filter's reading of the headers.
//!
//! The lab captures `-i any -Q in` in the wire namespace: every frame entering the bridge
//! through any node's port, once. (A capture on the bridge device alone would miss unicast
//! that the bridge forwards port to port.)

use ipnet::IpNet;
use scrambler_core::{BypassPort, BypassProto, Error, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// A running capture of the lab's underlay.
pub struct Capture(scrambler_testkit::capture::Capture);

impl Capture {
    /// Starts capturing what enters every interface of `netns` into `file`; returns once
    /// tcpdump listens.
    pub fn start(netns: &str, file: &Path) -> Result<Capture> {
        scrambler_testkit::capture::Capture::on(netns, "any")
            .inbound()
            .snaplen(256)
            .to_file(file)
            .start()
            .map(Capture)
            .map_err(|e| Error::io("capture", format!("the underlay in {netns}"), e))
    }

    /// Stops tcpdump (flushing the file) and judges the capture.
    pub fn stop(self, pods: &[IpNet]) -> Result<Verdict> {
        self.stop_with_nodes(pods, &NodeScope::default())
    }

    /// [`Capture::stop`], also judging the traffic between node addresses (`nodes`).
    pub fn stop_with_nodes(self, pods: &[IpNet], nodes: &NodeScope) -> Result<Verdict> {
        let file = self.0.file().to_path_buf();
        let data = self
            .0
            .pcap()
            .map_err(|e| Error::io("read capture", file.display(), e))?;
        judge_with_nodes(&data, pods, nodes)
    }
}

/// The nodes' own (host ↔ host) traffic as the verdict judges it: an IP packet whose
/// source and destination are both in `underlay`, not ESP, not on a `bypass` port (TCP or
/// UDP, source or destination port), not ICMPv6 neighbour discovery (ARP is no IP packet)
/// is host cleartext: a leak when `encrypted` (node encryption on), information otherwise.
#[derive(Debug, Clone, Default)]
pub struct NodeScope {
    /// The nodes' underlay networks.
    pub underlay: Vec<IpNet>,
    /// The bypass ports of node encryption.
    pub bypass: Vec<BypassPort>,
    /// Node encryption is on: host cleartext is a leak.
    pub encrypted: bool,
}

/// What crossed the underlay.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// Every frame seen.
    pub frames: u64,
    /// ESP packets.
    pub esp: u64,
    /// ESP packets per (outer source, outer destination).
    pub esp_by_pair: BTreeMap<(IpAddr, IpAddr), u64>,
    /// Packets with a pod address as source or destination that were not ESP: leaks.
    pub cleartext: u64,
    /// A few of the leaked packets, for the report.
    pub cleartext_examples: Vec<String>,
    /// With node encryption on: IP packets between node addresses that were neither ESP
    /// nor on a bypass port (nor neighbour discovery): leaks (see [`NodeScope`]).
    pub node_cleartext: u64,
    /// A few of them, for the report.
    pub node_cleartext_examples: Vec<String>,
    /// With node encryption off: the same packets, as information (not a leak).
    pub host_cleartext: u64,
    /// Packets between node addresses on a bypass port (information).
    pub bypassed: u64,
}

/// Reads a classic pcap (Ethernet link type) and classifies every packet.
pub fn judge(pcap: &[u8], pods: &[IpNet]) -> Result<Verdict> {
    judge_with_nodes(pcap, pods, &NodeScope::default())
}

/// [`judge`], also judging the traffic between node addresses (see [`NodeScope`]).
pub fn judge_with_nodes(pcap: &[u8], pods: &[IpNet], nodes: &NodeScope) -> Result<Verdict> {
    let bad = |r: &str| Error::decode("capture", r);
    if pcap.len() < 24 {
        return Err(bad("shorter than a pcap header"));
    }
    let magic = u32::from_le_bytes([pcap[0], pcap[1], pcap[2], pcap[3]]);
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        _ => return Err(bad("not a pcap file")),
    };
    let rd32 = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let linktype = rd32(&pcap[20..24]);
    if !matches!(
        linktype,
        LINKTYPE_ETHERNET | LINKTYPE_LINUX_SLL | LINKTYPE_LINUX_SLL2
    ) {
        return Err(bad(&format!(
            "link type {linktype}, expected Ethernet or Linux cooked"
        )));
    }
    let mut v = Verdict::default();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = rd32(&pcap[off + 8..off + 12]) as usize;
        let start = off + 16;
        let end = start + incl;
        if end > pcap.len() {
            break; // truncated last record (capture stopped mid-write)
        }
        v.frames += 1;
        classify(linktype, &pcap[start..end], pods, nodes, &mut v);
        off = end;
    }
    Ok(v)
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;

/// Where the ethertype and the layer-3 header are in a frame of `linktype`.
fn l2_header(linktype: u32) -> (usize, usize) {
    match linktype {
        LINKTYPE_LINUX_SLL => (14, 16),
        LINKTYPE_LINUX_SLL2 => (0, 20),
        _ => (12, 14),
    }
}

fn classify(linktype: u32, frame: &[u8], pods: &[IpNet], nodes: &NodeScope, v: &mut Verdict) {
    let (et_at, mut l3) = l2_header(linktype);
    if frame.len() < l3 {
        return;
    }
    let mut et = u16::from_be_bytes([frame[et_at], frame[et_at + 1]]);
    if et == 0x8100 && frame.len() >= l3 + 4 {
        et = u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]]);
        l3 += 4;
    }
    let p = &frame[l3..];
    // the protocol, the addresses and where the transport header starts (None: a later
    // IPv4 fragment, or an IPv6 header chain not followed)
    let (proto, src, dst, l4) = match et {
        0x0800 if p.len() >= 20 => {
            let s: [u8; 4] = [p[12], p[13], p[14], p[15]];
            let d: [u8; 4] = [p[16], p[17], p[18], p[19]];
            let ihl = usize::from(p[0] & 0x0f) * 4;
            let first = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
            (p[9], IpAddr::from(s), IpAddr::from(d), first.then_some(ihl))
        }
        0x86dd if p.len() >= 40 => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&p[8..24]);
            d.copy_from_slice(&p[24..40]);
            (p[6], IpAddr::from(s), IpAddr::from(d), Some(40))
        }
        _ => return,
    };
    if proto == 50 {
        v.esp += 1;
        *v.esp_by_pair.entry((src, dst)).or_default() += 1;
        return;
    }
    if pods.iter().any(|n| n.contains(&src) || n.contains(&dst)) {
        v.cleartext += 1;
        if v.cleartext_examples.len() < 5 {
            v.cleartext_examples
                .push(format!("{src} -> {dst} proto {proto}"));
        }
        return;
    }
    let node = |a: &IpAddr| nodes.underlay.iter().any(|n| n.contains(a));
    if !node(&src) || !node(&dst) {
        return;
    }
    let l4 = l4.and_then(|at| p.get(at..)).unwrap_or_default();
    // ICMPv6 router/neighbour solicitation and advertisement (133..=136); not a redirect
    // (137): its Redirected Header option carries a copy of the packet, maybe cleartext
    if proto == 58 && l4.first().is_some_and(|t| (133..=136).contains(t)) {
        return;
    }
    let ports = (l4.len() >= 4).then(|| {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    });
    let bypassed = ports.is_some_and(|(sp, dp)| {
        nodes.bypass.iter().any(|b| {
            let n = match b.proto {
                BypassProto::Tcp => 6,
                BypassProto::Udp => 17,
            };
            n == proto && (b.port == sp || b.port == dp)
        })
    });
    if bypassed {
        v.bypassed += 1;
    } else if nodes.encrypted {
        v.node_cleartext += 1;
        if v.node_cleartext_examples.len() < 5 {
            let what = match ports {
                Some((sp, dp)) if proto == 6 || proto == 17 => {
                    format!("{src}:{sp} -> {dst}:{dp} proto {proto}")
                }
                _ => format!("{src} -> {dst} proto {proto}"),
            };
            v.node_cleartext_examples.push(what);
        }
    } else {
        v.host_cleartext += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&[2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&256u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for f in frames {
            out.extend_from_slice(&[0u8; 8]);
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(&(f.len() as u32).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut h = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, proto, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        f.extend_from_slice(&h);
        f
    }

    #[test]
    fn esp_counts_and_cleartext_pod_traffic_is_a_leak() {
        let pods: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap()];
        let data = pcap(&[
            ipv4(50, [192, 0, 2, 1], [192, 0, 2, 2]),
            ipv4(50, [192, 0, 2, 2], [192, 0, 2, 1]),
            ipv4(1, [10, 244, 1, 5], [10, 244, 2, 5]),
            ipv4(1, [192, 0, 2, 1], [192, 0, 2, 2]),
        ]);
        let v = judge(&data, &pods).unwrap();
        assert_eq!(v.frames, 4);
        assert_eq!(v.esp, 2);
        assert_eq!(v.cleartext, 1);
        assert!(v.cleartext_examples[0].contains("10.244.1.5"));
        assert!(judge(b"nonsense-nonsense-nonsense", &pods).is_err());
    }

    /// An IPv4 frame with a transport header: ports `sp` → `dp` (ICMP: type `sp >> 8`).
    fn ipv4_ports(proto: u8, src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut f = ipv4(proto, src, dst);
        f.extend_from_slice(&sp.to_be_bytes());
        f.extend_from_slice(&dp.to_be_bytes());
        f.extend_from_slice(&[0u8; 16]);
        f
    }

    fn ipv6(next: u8, src: &str, dst: &str, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut h = vec![0x60, 0, 0, 0, 0, l4.len() as u8, next, 255];
        let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
            (src.parse().unwrap(), dst.parse().unwrap());
        h.extend_from_slice(&s.octets());
        h.extend_from_slice(&d.octets());
        f.extend_from_slice(&h);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn cleartext_between_node_addresses_is_a_leak_with_node_encryption_but_for_bypass() {
        let pods: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap()];
        let (a, b) = ([192, 0, 2, 1], [192, 0, 2, 2]);
        let data = pcap(&[
            ipv4(50, a, b),
            // ICMP echo, a TCP SYN to 7777, TCP from and to the bypass port 2379
            ipv4_ports(1, a, b, 0x0800, 0),
            ipv4_ports(6, a, b, 40000, 7777),
            ipv4_ports(6, a, b, 40000, 2379),
            ipv4_ports(6, b, a, 2379, 40000),
            // UDP on 2379 is not bypassed (only tcp/2379 is listed)
            ipv4_ports(17, a, b, 40000, 2379),
            // a node to something that is not a node: none of the verdict's business
            ipv4_ports(6, a, [198, 51, 100, 1], 40000, 7777),
            // IPv6 neighbour discovery is no leak, an IPv6 echo and a redirect are
            ipv6(58, "fd00:2::1", "fd00:2::2", &[135, 0, 0, 0]),
            ipv6(58, "fd00:2::1", "fd00:2::2", &[128, 0, 0, 0]),
            ipv6(58, "fd00:2::1", "fd00:2::2", &[137, 0, 0, 0]),
        ]);
        let mut scope = NodeScope {
            underlay: vec![
                "192.0.2.0/24".parse().unwrap(),
                "fd00:2::/64".parse().unwrap(),
            ],
            bypass: vec!["tcp/2379".parse().unwrap()],
            encrypted: true,
        };
        let v = judge_with_nodes(&data, &pods, &scope).unwrap();
        assert_eq!((v.esp, v.cleartext), (1, 0));
        assert_eq!(
            (v.node_cleartext, v.bypassed, v.host_cleartext),
            (5, 2, 0),
            "{v:?}"
        );
        assert!(v.node_cleartext_examples[1].contains("192.0.2.1:40000 -> 192.0.2.2:7777"));
        // node encryption off: the same packets are information
        scope.encrypted = false;
        let v = judge_with_nodes(&data, &pods, &scope).unwrap();
        assert_eq!((v.node_cleartext, v.host_cleartext), (0, 5), "{v:?}");
        // without a node scope (the former verdict): nothing about hosts
        let v = judge(&data, &pods).unwrap();
        assert_eq!((v.node_cleartext, v.host_cleartext, v.bypassed), (0, 0, 0));
    }

    #[test]
    fn both_families_of_pod_traffic_are_judged_and_esp_over_ipv6_counts_per_pair() {
        let pods: Vec<IpNet> = vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/48".parse().unwrap(),
        ];
        let data = pcap(&[
            ipv6(50, "2001:db8::1", "2001:db8::2", &[]),
            ipv6(50, "2001:db8::2", "2001:db8::1", &[]),
            ipv6(50, "2001:db8::1", "2001:db8::2", &[]),
            ipv6(58, "fd00:10:244:1::2", "fd00:10:244:2::2", &[]),
            ipv6(58, "2001:db8::1", "2001:db8::3", &[]),
            ipv4(1, [10, 244, 1, 2], [10, 244, 3, 2]),
        ]);
        let v = judge(&data, &pods).unwrap();
        assert_eq!((v.frames, v.esp, v.cleartext), (6, 3, 2));
        let pair = |a: &str, b: &str| (a.parse().unwrap(), b.parse().unwrap());
        assert_eq!(v.esp_by_pair[&pair("2001:db8::1", "2001:db8::2")], 2);
        assert_eq!(v.esp_by_pair[&pair("2001:db8::2", "2001:db8::1")], 1);
        assert!(v.cleartext_examples[0].contains("fd00:10:244:1::2"));
        // with the IPv4 supernet alone the IPv6 leak would go unseen: both are passed
        assert_eq!(judge(&data, &pods[..1]).unwrap().cleartext, 1);
    }

    #[test]
    fn linux_cooked_v2_frames_are_read() {
        let pods: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap()];
        // SLL2: protocol first, then 18 bytes of header, then IPv4.
        let sll2 = |eth: Vec<u8>| {
            let mut f = vec![0x08, 0x00];
            f.extend_from_slice(&[0u8; 18]);
            f.extend_from_slice(&eth[14..]);
            f
        };
        let mut data = pcap(&[
            sll2(ipv4(50, [192, 0, 2, 1], [192, 0, 2, 2])),
            sll2(ipv4(6, [10, 244, 1, 5], [10, 244, 2, 5])),
        ]);
        data[20..24].copy_from_slice(&276u32.to_le_bytes());
        let v = judge(&data, &pods).unwrap();
        assert_eq!((v.esp, v.cleartext), (1, 1));
    }
}
