//! The allocator: which address of a range set to hand out next, and whether a requested
//! address may be handed out. Pure logic over a snapshot of taken addresses; the store
//! supplies the snapshot under its lock.
//!
//! Like host-local, allocation rotates: it starts after the last address reserved from the
//! set and wraps around, so a just-released address is not reused at once. Network
//! addresses, IPv4 broadcasts, gateways and `exclude` entries are skipped; an excluded
//! subnet is jumped over in one step, so a large exclusion in an IPv6 /64 costs nothing.

use crate::addr::{family_of, from_u128, to_u128};
use crate::conf::{Range, RangeSet};
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;

/// Why `ip` may not be handed out from `range` (taken addresses aside), or `None`.
pub fn unusable_reason(range: &Range, exclude: &[IpNet], ip: IpAddr) -> Option<String> {
    if !range.contains(ip) {
        return Some(format!("{ip} is outside {range}"));
    }
    if let Some(why) = range.reserved_reason(ip) {
        return Some(format!("{ip} is {why} of {}", range.subnet));
    }
    exclude
        .iter()
        .find(|n| n.contains(&ip))
        .map(|n| format!("{ip} is excluded by {n}"))
}

/// The next address of `set` to hand out: the first usable, untaken address after `last`
/// (the set's last reserved address), wrapping around; `None` when the set is exhausted.
pub fn next_free<'a>(
    set: &'a RangeSet,
    exclude: &[IpNet],
    taken: &HashSet<IpAddr>,
    last: Option<IpAddr>,
) -> Option<(IpAddr, &'a Range)> {
    let n = set.ranges.len();
    let resume = last.and_then(|ip| {
        set.ranges
            .iter()
            .position(|r| r.contains(ip))
            .map(|k| (k, to_u128(ip)))
    });
    let mut segments: Vec<(usize, u128, u128)> = Vec::with_capacity(n + 1);
    match resume {
        Some((k, at)) => {
            let r = &set.ranges[k];
            if at < to_u128(r.range_end) {
                segments.push((k, at + 1, to_u128(r.range_end)));
            }
            for i in (k + 1..n).chain(0..k) {
                let r = &set.ranges[i];
                segments.push((i, to_u128(r.range_start), to_u128(r.range_end)));
            }
            segments.push((k, to_u128(r.range_start), at));
        }
        None => {
            for (i, r) in set.ranges.iter().enumerate() {
                segments.push((i, to_u128(r.range_start), to_u128(r.range_end)));
            }
        }
    }
    segments.into_iter().find_map(|(i, lo, hi)| {
        let r = &set.ranges[i];
        first_free(r, exclude, taken, lo, hi).map(|ip| (ip, r))
    })
}

/// The first usable, untaken address of `range` in `lo..=hi`.
///
/// Each step either returns, passes one taken or reserved address, or jumps over one
/// excluded subnet, so the loop is bounded by the number of those.
fn first_free(
    range: &Range,
    exclude: &[IpNet],
    taken: &HashSet<IpAddr>,
    lo: u128,
    hi: u128,
) -> Option<IpAddr> {
    let fam = family_of(range.range_start);
    let mut x = lo;
    while x <= hi {
        let ip = from_u128(fam, x);
        let next = if let Some(net) = exclude.iter().find(|n| n.contains(&ip)) {
            to_u128(net.broadcast()).checked_add(1)
        } else if taken.contains(&ip) || range.reserved_reason(ip).is_some() {
            x.checked_add(1)
        } else {
            return Some(ip);
        };
        x = next?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::IpamConf;
    use proptest::prelude::*;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> IpamConf {
        IpamConf::parse(&v).unwrap()
    }

    #[test]
    fn skips_gateway_and_rotates_after_last() {
        let c = conf(json!({"subnet": "10.0.0.0/29"}));
        let set = &c.ranges[0];
        let mut taken = HashSet::new();
        let (a, _) = next_free(set, &[], &taken, None).unwrap();
        assert_eq!(a.to_string(), "10.0.0.2"); // .1 is the gateway
        taken.insert(a);
        let (b, _) = next_free(set, &[], &taken, Some(a)).unwrap();
        assert_eq!(b.to_string(), "10.0.0.3");
        // resumes after the last reserved one even when an earlier address is free
        let (c2, _) = next_free(set, &[], &HashSet::new(), Some(b)).unwrap();
        assert_eq!(c2.to_string(), "10.0.0.4");
        // wraps around past the end; .7 is broadcast, .0 network
        let last: IpAddr = "10.0.0.6".parse().unwrap();
        let (d, _) = next_free(set, &[], &HashSet::new(), Some(last)).unwrap();
        assert_eq!(d.to_string(), "10.0.0.2");
    }

    #[test]
    fn jumps_over_large_v6_exclusions() {
        let c = conf(json!({"subnet": "fd00::/64", "exclude": ["fd00::/65"]}));
        let (a, _) = next_free(&c.ranges[0], &c.exclude, &HashSet::new(), None).unwrap();
        assert_eq!(a.to_string(), "fd00::8000:0:0:0");
    }

    #[test]
    fn exhausted_is_none() {
        let c = conf(json!({"subnet": "10.0.0.0/30", "exclude": ["10.0.0.2"]}));
        assert!(next_free(&c.ranges[0], &c.exclude, &HashSet::new(), None).is_none());
    }

    fn small_conf() -> impl Strategy<Value = IpamConf> {
        // One /27 split into up to three ranges, a gateway, and a few exclusions.
        (
            0u8..32,
            proptest::collection::vec((0u8..32, 0u8..4), 0..3),
            proptest::collection::vec(0u8..32, 0..3),
        )
            .prop_map(|(gw, splits, excl)| {
                let mut bounds: Vec<u8> = splits.iter().map(|(s, _)| *s).collect();
                bounds.sort();
                bounds.dedup();
                let mut ranges = Vec::new();
                let mut lo = 0u8;
                for b in bounds.into_iter().chain([31]) {
                    if b > lo {
                        ranges.push(json!({"subnet": "10.7.0.0/27",
                            "rangeStart": format!("10.7.0.{lo}"),
                            "rangeEnd": format!("10.7.0.{}", b),
                            "gateway": format!("10.7.0.{gw}")}));
                        lo = b + 1;
                    }
                }
                if ranges.is_empty() {
                    ranges.push(json!({"subnet": "10.7.0.0/27"}));
                }
                let exclude: Vec<String> = excl
                    .iter()
                    .map(|e| {
                        if e % 5 == 0 {
                            format!("10.7.0.{}/30", e & !3)
                        } else {
                            format!("10.7.0.{e}")
                        }
                    })
                    .collect();
                conf(json!({"ranges": [ranges], "exclude": exclude}))
            })
    }

    proptest! {
        #[test]
        fn next_free_is_usable_and_none_only_when_nothing_is(
            c in small_conf(),
            taken in proptest::collection::hash_set(0u8..32, 0..32),
            last in proptest::option::of(0u8..32),
        ) {
            let taken: HashSet<IpAddr> = taken.iter().map(|t| format!("10.7.0.{t}").parse().unwrap()).collect();
            let last = last.map(|l| format!("10.7.0.{l}").parse().unwrap());
            let set = &c.ranges[0];
            let usable: Vec<IpAddr> = (0..32u8)
                .map(|i| format!("10.7.0.{i}").parse().unwrap())
                .filter(|ip| !taken.contains(ip))
                .filter(|ip| set.range_for(*ip).is_some_and(|r| unusable_reason(r, &c.exclude, *ip).is_none()))
                .collect();
            match next_free(set, &c.exclude, &taken, last) {
                Some((ip, r)) => {
                    prop_assert!(usable.contains(&ip), "{ip} not usable");
                    prop_assert!(r.contains(ip));
                }
                None => prop_assert!(usable.is_empty(), "exhausted but {usable:?} free"),
            }
        }
    }
}
