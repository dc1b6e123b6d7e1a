//! Fuzzing of rtnetlink answers from the bytes up, the way a [`Nl`](crate::Nl) receives
//! them: netlink-proto's codec splits and deserializes a datagram (netlink-packet-route),
//! then links, routes and addresses become [`LinkState`], [`RouteState`] and prefixes, and
//! the route queries run over them. Every datagram must give messages or a clean error.
//! Corpus: `fuzz/corpus/rtnl_reply/`, this kernel's dump answers in a test namespace
//! ([`capture_corpus`]).

use crate::address::address_of;
use crate::link::link_state;
use crate::route::{default_route, route_state};
use crate::{parse_mac, route_present};
use crate::{LinkState, RouteState};
use bytes::BytesMut;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::proto::{NetlinkCodec, NetlinkMessageCodec};
use scrambler_core::Route;
use scrambler_fuzz::{Shape, Target};
use std::path::Path;

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

/// The messages of one datagram, as the connection task decodes them.
fn decode(buf: &[u8]) -> Vec<NetlinkMessage<RouteNetlinkMessage>> {
    let mut src = BytesMut::from(buf);
    let mut out = Vec::new();
    while let Ok(Some(m)) = NetlinkCodec::decode::<RouteNetlinkMessage>(&mut src) {
        out.push(m);
    }
    out
}

fn check_datagram(buf: &[u8]) {
    let (mut links, mut routes, mut addrs): (Vec<LinkState>, Vec<RouteState>, Vec<_>) =
        Default::default();
    for m in decode(buf) {
        match m.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                links.push(link_state(&l))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                routes.extend(route_state(&r))
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a)) => {
                addrs.extend(address_of(&a))
            }
            _ => {}
        }
    }
    for l in &links {
        if let Some(mac) = &l.mac {
            if mac.len() == 17 {
                assert_eq!(
                    parse_mac(mac).map(|m| crate::format_mac(&m)).as_ref(),
                    Some(mac)
                );
            }
        }
    }
    let _ = (default_route(&routes, false), default_route(&routes, true));
    // every main-table route read is found again by the query ADD and CHECK use
    for r in routes.iter().filter(|r| r.table == crate::MAIN_TABLE) {
        let (Some(oif), true) = (r.oif, r.dst == r.dst.trunc()) else {
            continue;
        };
        let want = Route {
            dst: r.dst,
            gw: r.gw,
            mtu: None,
        };
        assert!(route_present(&routes, &want, oif), "{r:?} not found");
    }
    let _ = addrs;
}

#[test]
fn fuzz_rtnl_reply() {
    let r = Target::new(CRATE, "rtnl_reply", Shape::Bytes, 3000)
        .dictionary([
            &16u16.to_ne_bytes()[..], // RTM_NEWLINK
            &20u16.to_ne_bytes(),     // RTM_NEWADDR
            &24u16.to_ne_bytes(),     // RTM_NEWROUTE
            &3u16.to_ne_bytes(),      // NLMSG_DONE
            &[4, 0, 3, 0],            // empty IFLA_IFNAME
            &[8, 0, 18, 0],           // IFLA_LINKINFO header
            &u32::MAX.to_ne_bytes(),
        ])
        .run(check_datagram);
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}

/// Dumps with `message_type` (RTM_GET*) on a fresh rtnetlink socket of the calling thread's
/// namespace; returns the raw answer datagrams.
fn raw_dump(message_type: u16, family: u8) -> Vec<Vec<u8>> {
    use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket};
    let mut sock = Socket::new(NETLINK_ROUTE).expect("rtnetlink socket");
    sock.bind_auto().expect("bind");
    // nlmsghdr (16 bytes, NLM_F_REQUEST | NLM_F_DUMP) + a 12-byte rtgenmsg-sized body
    let mut req = Vec::new();
    req.extend_from_slice(&28u32.to_ne_bytes());
    req.extend_from_slice(&message_type.to_ne_bytes());
    req.extend_from_slice(&0x301u16.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.push(family);
    req.extend_from_slice(&[0; 11]);
    sock.send(&req, 0).expect("send");
    let mut out = Vec::new();
    loop {
        let mut buf = Vec::with_capacity(64 * 1024);
        sock.recv(&mut buf, 0).expect("recv");
        let done = decode(&buf).iter().any(|m| {
            matches!(
                m.payload,
                NetlinkPayload::Done(_) | NetlinkPayload::Error(_)
            )
        });
        out.push(buf);
        if done {
            return out;
        }
    }
}

/// Writes the `rtnl_reply` corpus: link, address and route dumps of a test namespace with
/// a veth pair (one end aliased the way Scrambler marks its links), addresses of both
/// families and routes via a gateway, on-link and in another table.
#[test]
#[ignore = "regenerates fuzz/corpus/rtnl_reply in a test netns; run with --ignored"]
fn capture_corpus() {
    let dir = Path::new(CRATE).join("fuzz/corpus/rtnl_reply");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let ns = scrambler_testkit::netns::TestNetns::new("nl-fuzz");
    for args in [
        &[
            "link", "add", "scr0", "type", "veth", "peer", "name", "eth0",
        ][..],
        &[
            "link",
            "set",
            "scr0",
            "alias",
            "scrambler/pods/c0ffee/eth0",
            "mtu",
            "1440",
            "up",
        ],
        &["link", "set", "eth0", "up"],
        &["addr", "add", "10.1.0.5/24", "dev", "eth0"],
        &["addr", "add", "fd00:1::5/64", "dev", "eth0", "nodad"],
        &["route", "add", "default", "via", "10.1.0.1", "dev", "eth0"],
        &[
            "route",
            "add",
            "10.9.0.0/16",
            "dev",
            "scr0",
            "proto",
            "250",
            "mtu",
            "1400",
        ],
        &["route", "add", "10.8.0.0/16", "dev", "scr0", "table", "100"],
    ] {
        ns.ip(args);
    }
    let dumps = ns
        .netns()
        .run(|| {
            Ok([
                ("links", raw_dump(18, 0)),
                ("addresses", raw_dump(22, 0)),
                ("routes-v4", raw_dump(26, 2)),
                ("routes-v6", raw_dump(26, 10)),
            ])
        })
        .expect("dump in the namespace");
    for (what, datagrams) in dumps {
        for (i, d) in datagrams.iter().enumerate() {
            std::fs::write(dir.join(format!("{what}-{i}")), d).expect("write");
        }
    }
}
