//! A cheap check that the node's fail-closed guard is in place, for a caller about to put
//! a pod on the node (the CNI plugin's ADD): one `XFRM_MSG_GETPOLICY` by selector per
//! cluster supernet, never a dump (a node may hold thousands of policies).

use crate::config::{XfrmConfig, PRIO_GUARD};
use crate::model::{Dir, FoundPolicy, PolicyKey, L4};
use crate::nl::XfrmSocket;
use ipnet::IpNet;
use netlink_packet_xfrm::XfrmMessage;
use scrambler_core::{Error, Netns, Result};

/// Checks, in `netns`, that the guard's block policy `out` anything → `S` (no if_id, at the
/// guard's priority of `cfg`'s band) is in place for every cluster supernet `S` of
/// `cluster_cidrs` — the policy that drops a pod's traffic to any pod CIDR of the cluster
/// that no route sends into the xfrm interface. Fails naming the first supernet whose
/// policy is missing or is not Scrambler's block policy (another priority, an allow
/// policy: someone else's, or a guard replaced behind Scrambler's back); an empty
/// `cluster_cidrs` fails too (there is nothing that could be guarded). Costs one socket
/// and one request per supernet.
///
/// What it does not see: the `in`/`fwd` blocks, the bypass and the per-peer underlay
/// blocks (the agent's sync checks the whole dataplane), and a foreign allow policy that
/// takes precedence over the block (a lower priority value or a marked policy): the check
/// answers "is Scrambler's block there", not "would every packet be dropped".
///
/// ```no_run
/// # async fn f() -> scrambler_core::Result<()> {
/// use scrambler_core::Netns;
/// use scrambler_xfrm::{guard_in_place, XfrmConfig};
/// let cidrs = ["10.244.0.0/16".parse().unwrap()];
/// guard_in_place(&Netns::Current, &cidrs, &XfrmConfig::default()).await?;
/// # Ok(()) }
/// ```
pub async fn guard_in_place(
    netns: &Netns,
    cluster_cidrs: &[IpNet],
    cfg: &XfrmConfig,
) -> Result<()> {
    if cluster_cidrs.is_empty() {
        return Err(Error::CheckFailed {
            object: "xfrm guard".into(),
            reason: "no cluster CIDR to check".into(),
        });
    }
    let keys: Vec<PolicyKey> = cluster_cidrs
        .iter()
        .map(|s| {
            let s = s.trunc();
            PolicyKey {
                dir: Dir::Out,
                src: any(&s),
                dst: s,
                if_id: 0,
                ifindex: 0,
                l4: L4::ANY,
            }
        })
        .collect();
    let priority = cfg.priority(PRIO_GUARD);
    netns
        .run_async(move || {
            let mut sock = XfrmSocket::open()?;
            for key in &keys {
                let object = format!("xfrm guard policy {key}");
                let found = sock.get(key.get_msg(), &object)?;
                let policy = found.as_ref().and_then(|m| match &m.0 {
                    XfrmMessage::AddPolicy(p) | XfrmMessage::UpdatePolicy(p) => {
                        FoundPolicy::parse(p)
                    }
                    _ => None,
                });
                let reason = match policy {
                    None => "missing".to_string(),
                    Some(p) if !p.policy.block => "not a block policy".to_string(),
                    Some(p) if p.policy.priority != priority => format!(
                        "priority {} is not Scrambler's guard priority {priority}",
                        p.policy.priority
                    ),
                    Some(p) if p.policy.key != *key || p.unusual => {
                        "another selector than planned".to_string()
                    }
                    Some(_) => continue,
                };
                return Err(Error::CheckFailed { object, reason });
            }
            Ok(())
        })
        .await
}

/// The default route's prefix of `net`'s family.
fn any(net: &IpNet) -> IpNet {
    match net {
        IpNet::V4(_) => IpNet::V4(Default::default()),
        IpNet::V6(_) => IpNet::V6(Default::default()),
    }
}
