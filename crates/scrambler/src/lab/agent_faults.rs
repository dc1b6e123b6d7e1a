//! The faults of a lab on etcd (`lab up --agents`): what breaks and how the agents bring
//! the mesh back. The probes and the capture around them are [`super::inject`]'s.

use super::agents::{self, agent_status};
use super::inject::Fault;
use super::{pods, probe, topology, vppnode, LabState};
use scrambler_agent::rotation::Phase;
use scrambler_agent::status::STATUS_FILE;
use scrambler_core::{Error, Result};
use std::time::{Duration, Instant};

/// How long the agents get to carry out a rotation, catch up with etcd or drop a peer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Injects `fault` on node `node` of a lab whose mesh comes from etcd. Returns what the
/// fault's checks found wrong (empty: they held); an error stops the injection itself.
pub async fn inject(
    state: &mut LabState,
    fault: Fault,
    node: usize,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<Vec<String>> {
    match fault {
        Fault::Reboot => reboot(state, node, hold, step).await,
        Fault::KillAgent => kill_agent(state, node, hold, step).await,
        Fault::Rotate => rotate(state, hold, step).await.map(|()| vec![]),
        Fault::EtcdDown => etcd_down(state, hold, step).await,
        Fault::NodeLeave => node_leave(state, node, hold, step).await.map(|()| vec![]),
        Fault::NodeJoin => node_join(state, node, step).await.map(|()| vec![]),
        Fault::LinkDown | Fault::DeleteState => Err(Error::Unsupported(format!(
            "{fault:?} is not an agent fault"
        ))),
    }
}

fn all_nodes(state: &LabState) -> Vec<usize> {
    (1..=state.spec.nodes).collect()
}

fn epoch_of(state: &LabState, i: usize) -> String {
    agent_status(state, i)
        .map(|s| s.epoch)
        .unwrap_or_else(|| "-".into())
}

/// Every agent's tx generation, or an error naming the first that has none.
fn tx_generations(state: &LabState) -> Vec<Option<scrambler_core::Generation>> {
    all_nodes(state)
        .into_iter()
        .map(|i| agents::generations(state, i).0)
        .collect()
}

/// The node's dataplane is flushed (its namespace, pods and VPP go) and its agent dies
/// with it; the node comes back, its agent finds no SA, takes a new epoch and the peers
/// re-key just that node's pairs: no rotation.
async fn reboot(
    state: &mut LabState,
    node: usize,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<Vec<String>> {
    let names = state.names();
    let gens = tx_generations(state);
    let old_epoch = epoch_of(state, node);
    agents::stop_agent(state, node, true);
    for p in state.pods_of(node) {
        topology::delete_netns(&p.name);
    }
    vppnode::stop(&state.spec.name, node);
    topology::delete_netns(&names.node(node));
    step(format!(
        "{} and its pods removed, its agent killed",
        names.node(node)
    ));
    tokio::time::sleep(hold).await;
    topology::create_node(&names, state.family(), node)?;
    if vppnode::is_vpp(state, node) {
        vppnode::start(&state.spec.name, state.family(), node).await?;
    }
    agents::start_agent(state, node)?;
    step(format!("{} re-created, agent started", names.node(node)));
    let took = agents::wait_converged(state, &all_nodes(state)).await?;
    let new_epoch = epoch_of(state, node);
    step(format!(
        "mesh rebuilt from etcd in {:.2}s: {} epoch {old_epoch} -> {new_epoch}{}",
        took.as_secs_f64(),
        names.node(node),
        if new_epoch == old_epoch {
            " !!! SAME EPOCH"
        } else {
            " (new)"
        }
    ));
    if new_epoch == old_epoch {
        return Err(Error::Dataplane {
            dataplane: "lab".into(),
            op: format!("reboot {}", names.node(node)),
            reason: "its agent kept the old epoch on a flushed dataplane".into(),
        });
    }
    reattach_pods(state, node, step)?;
    let after = tx_generations(state);
    step(format!(
        "tx generations {} (before {}): {}",
        show(&after),
        show(&gens),
        if after == gens {
            "no rotation"
        } else {
            "!!! CHANGED"
        }
    ));
    if after != gens {
        return Ok(vec![format!(
            "reboot of {}: the tx generations changed from {} to {} (a reboot takes a new \
             epoch, not a rotation)",
            names.node(node),
            show(&gens),
            show(&after)
        )]);
    }
    Ok(vec![])
}

fn show(g: &[Option<scrambler_core::Generation>]) -> String {
    g.iter()
        .map(|g| g.map(|g| g.to_string()).unwrap_or_else(|| "-".into()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Re-creates node `node`'s pods through the CNI plugin (same names), updating the lab's
/// state with their addresses.
fn reattach_pods(state: &mut LabState, node: usize, step: &mut impl FnMut(String)) -> Result<()> {
    let cni = pods::find_cni_binary()?;
    let mut rebuilt = vec![];
    for j in 1..=state.spec.pods_per_node {
        rebuilt.push(super::start_pod(state, &cni, node, j)?);
    }
    for p in rebuilt {
        match state.pods.iter_mut().find(|o| o.name == p.name) {
            Some(old) => {
                if old.ip != p.ip {
                    step(format!(
                        "pod {} came back as {} (was {})",
                        p.name, p.ip, old.ip
                    ));
                }
                old.ip = p.ip;
                old.ip6 = p.ip6;
            }
            None => state.pods.push(p),
        }
    }
    state.save()?;
    step(format!("pods of {} attached", state.names().node(node)));
    Ok(())
}

/// The agent is SIGKILLed and restarted: its reconcile finds the dataplane in place (no
/// change, same epoch).
async fn kill_agent(
    state: &mut LabState,
    node: usize,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<Vec<String>> {
    let names = state.names();
    let name = names.node(node);
    let Some(before) = agent_status(state, node) else {
        return Ok(vec![format!(
            "kill-agent: the agent of {name} has no status"
        )]);
    };
    agents::stop_agent(state, node, true);
    // the status left is the dead agent's: gone, any status is the restarted agent's
    let status = agents::agent_dir(state, node).join(STATUS_FILE);
    std::fs::remove_file(&status).map_err(|e| Error::io("remove", status.display(), e))?;
    step(format!("agent of {name} killed (SIGKILL)"));
    tokio::time::sleep(hold).await;
    agents::start_agent(state, node)?;
    // the restarted agent's first reconcile is the one to look at
    let fresh = agents::wait_status(state, &[node], AGENT_TIMEOUT, |s| {
        s.registered && s.last_report.is_some()
    })
    .await;
    if fresh.is_none() {
        step(format!(
            "!!! the restarted agent of {name} reported no reconcile within {}s",
            AGENT_TIMEOUT.as_secs()
        ));
        return Ok(vec![format!(
            "kill-agent: the restarted agent of {name} did not reconcile and register within \
             {}s: {}",
            AGENT_TIMEOUT.as_secs(),
            agents::agent_log(state, node)
        )]);
    }
    agents::wait_converged(state, &all_nodes(state)).await?;
    let Some(st) = agent_status(state, node) else {
        return Ok(vec![format!(
            "kill-agent: the restarted agent of {name} has no status"
        )]);
    };
    let kept = st.epoch == before.epoch;
    step(format!(
        "agent of {name} restarted: epoch {} ({}), its reconcile did {}",
        st.epoch,
        if kept { "kept" } else { "!!! CHANGED" },
        st.last_report
            .as_ref()
            .map(|r| format!(
                "+{} ~{} -{} ({} unchanged)",
                r.added, r.updated, r.removed, r.unchanged
            ))
            .unwrap_or_else(|| "-".into())
    ));
    if !kept {
        return Ok(vec![format!(
            "kill-agent: the restarted agent of {name} took epoch {} (was {}) although its \
             dataplane kept every SA",
            st.epoch, before.epoch
        )]);
    }
    Ok(vec![])
}

/// `scrambler rotate --etcd-endpoints …`; the agents install the next generation inbound,
/// acknowledge, switch when all have, and retire the old one after the grace (`hold`).
async fn rotate(state: &mut LabState, hold: Duration, step: &mut impl FnMut(String)) -> Result<()> {
    let before = tx_generations(state);
    let grace = hold.as_secs().max(1).to_string();
    let out = agents::scrambler_on_etcd(state, &["rotate", "--grace-secs", &grace])?;
    step(format!("scrambler rotate --etcd-endpoints: {out}"));
    let all = all_nodes(state);
    let switched = agents::wait_status(state, &all, AGENT_TIMEOUT, |s| {
        s.tx.is_some() && !before.contains(&s.tx)
    })
    .await;
    step(match switched {
        Some(t) => format!(
            "every agent sends with generation {} after {:.2}s",
            show(&tx_generations(state)),
            t.as_secs_f64()
        ),
        None => format!(
            "!!! not every agent switched within {}s: tx {}",
            AGENT_TIMEOUT.as_secs(),
            show(&tx_generations(state))
        ),
    });
    let retired = agents::wait_status(state, &all, AGENT_TIMEOUT, |s| {
        matches!(s.rotation, None | Some(Phase::Stable { .. }))
            && s.rx.len() == 1
            && s.tx.is_some()
            && Some(s.rx[0]) == s.tx
    })
    .await;
    step(match retired {
        Some(t) => format!(
            "old generation retired on every node {:.2}s later (grace {grace}s)",
            t.as_secs_f64()
        ),
        None => "!!! the old generation was not retired everywhere".into(),
    });
    if switched.is_none() || retired.is_none() {
        return Err(Error::TryAgainLater(
            "the agents did not finish the rotation (see `lab status`)".into(),
        ));
    }
    Ok(())
}

/// An agent's epoch and reconcile count, `None` when it has no status.
type Mark = Option<(String, u64)>;

fn marks(state: &LabState, nodes: &[usize]) -> Vec<Mark> {
    nodes
        .iter()
        .map(|i| agent_status(state, *i).map(|s| (s.epoch, s.reconciles)))
        .collect()
}

/// The agents (named by `names`) whose epoch or reconcile count is not the same in `after`
/// as in `before`, or that have no status: one message each. Fail static means none: the
/// agent touched nothing in its dataplane.
fn changed_agents(names: &[String], before: &[Mark], after: &[Mark], during: &str) -> Vec<String> {
    let mut why = vec![];
    for ((name, b), a) in names.iter().zip(before).zip(after) {
        match (b, a) {
            (Some((e0, r0)), Some((e1, r1))) => {
                if e0 != e1 {
                    why.push(format!("{name}: epoch {e0} -> {e1} {during}"));
                }
                if r0 != r1 {
                    why.push(format!(
                        "{name}: {} reconciles {during} (count {r0} -> {r1})",
                        r1.abs_diff(*r0)
                    ));
                }
            }
            _ => why.push(format!("{name}: no agent status {during}")),
        }
    }
    why
}

/// etcd stops for `hold`: every agent keeps its mesh (fail static: no reconcile, same
/// epoch, checked from their status when etcd comes back) and says etcd is unreachable;
/// after etcd is back they reconnect and catch up without a rebuild (same epochs).
async fn etcd_down(
    state: &mut LabState,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<Vec<String>> {
    let all = all_nodes(state);
    let names: Vec<String> = all.iter().map(|i| state.names().node(*i)).collect();
    let before = marks(state, &all);
    agents::stop_etcd(&state.spec.name);
    let t0 = Instant::now();
    step("etcd stopped".into());
    let noticed = agents::wait_status(state, &all, hold, |s| !s.etcd_connected).await;
    match noticed {
        Some(t) => {
            let mut up = 0;
            let mut peers = 0;
            for i in &all {
                if let Ok(r) = super::node_status(state, *i).await {
                    up += r.tunnel.peers.iter().filter(|p| p.is_up()).count();
                    peers += r.tunnel.peers.len();
                }
            }
            step(format!(
                "every agent reports etcd unreachable after {:.2}s (fail static): tunnels up {up}/{peers}",
                t.as_secs_f64()
            ));
        }
        None => step(format!(
            "!!! not every agent noticed etcd was down within {:.1}s",
            hold.as_secs_f64()
        )),
    }
    if let Some(rest) = hold.checked_sub(t0.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    // what the agents did while etcd was away: nothing
    let during = marks(state, &all);
    let mut why = changed_agents(&names, &before, &during, "while etcd was down");
    step(format!(
        "reconcile counts while etcd was down: {}",
        if why.is_empty() {
            "unchanged on every agent (dataplane untouched)".to_string()
        } else {
            format!("!!! {}", why.join("; "))
        }
    ));
    agents::start_etcd(state).await?;
    step("etcd started again (same data dir)".into());
    let back = agents::wait_status(state, &all, AGENT_TIMEOUT, |s| {
        s.etcd_connected && s.registered
    })
    .await;
    let took = agents::wait_converged(state, &all).await?;
    let after = marks(state, &all);
    let same = after
        .iter()
        .zip(&before)
        .all(|(a, b)| a.as_ref().map(|a| &a.0) == b.as_ref().map(|b| &b.0));
    let caught_up: u64 = after
        .iter()
        .zip(&during)
        .map(|(a, d)| match (a, d) {
            (Some(a), Some(d)) => a.1.saturating_sub(d.1),
            _ => 0,
        })
        .sum();
    step(format!(
        "agents caught up {}: mesh complete after {:.2}s ({caught_up} reconciles), epochs {}",
        back.map(|t| format!("after {:.2}s", t.as_secs_f64()))
            .unwrap_or_else(|| "!!! not all".into()),
        took.as_secs_f64(),
        if same {
            "unchanged (no rebuild)"
        } else {
            "!!! CHANGED"
        }
    ));
    if noticed.is_none() || back.is_none() {
        return Err(Error::TryAgainLater(
            "the agents did not report etcd's outage and return (see `lab status`)".into(),
        ));
    }
    for ((name, b), a) in names.iter().zip(&before).zip(&after) {
        let (e0, e1) = (b.as_ref().map(|m| &m.0), a.as_ref().map(|m| &m.0));
        if e0 != e1 {
            why.push(format!(
                "{name}: epoch {} -> {} after etcd came back (a rebuild)",
                e0.map_or("-", |e| e.as_str()),
                e1.map_or("-", |e| e.as_str())
            ));
        }
    }
    Ok(why.into_iter().map(|w| format!("etcd-down: {w}")).collect())
}

/// Node `node` (the last) leaves: agent stopped, node deleted in etcd, peers drop it when
/// its lease expires, its pods keep sending for `hold`; then node and pods go.
async fn node_leave(
    state: &mut LabState,
    node: usize,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<()> {
    let names = state.names();
    let name = names.node(node);
    agents::stop_agent(state, node, false);
    step(format!("agent of {name} stopped"));
    let out = agents::scrambler_on_etcd(state, &["delete-node", &name])?;
    step(format!("scrambler delete-node {name}: {out}"));
    let others: Vec<usize> = all_nodes(state)
        .into_iter()
        .filter(|i| *i != node)
        .collect();
    let peers = others.len() - 1;
    let dropped = agents::wait_status(state, &others, AGENT_TIMEOUT, |s| s.peers == peers).await;
    step(match dropped {
        Some(t) => format!(
            "{name} left every peer's mesh after {:.2}s (lease TTL {}s)",
            t.as_secs_f64(),
            agents::LEASE_TTL_SECS
        ),
        None => format!("!!! {name} is still in some peer's mesh"),
    });
    tokio::time::sleep(hold).await;
    // the node goes: its pods through CNI DEL (their leases released), then its namespace
    let cni = pods::find_cni_binary()?;
    for p in state.pods_of(node) {
        let _ = pods::cni(&cni, "DEL", &name, &p.name, &super::pod_conf(state, node));
        topology::delete_netns(&p.name);
    }
    vppnode::stop(&state.spec.name, node);
    topology::delete_netns(&name);
    // a node that joins later under this name starts like a new machine's agent: no agent
    // state (so a new epoch) and no leases; the lab's ledger dir keeps the node's record of
    // the keys it sent with, so none of them can be installed again
    let _ = std::fs::remove_dir_all(agents::agent_dir(state, node));
    let _ = std::fs::remove_dir_all(state.ipam_dir(node));
    state.pods.retain(|p| p.node != node);
    state.spec.nodes -= 1;
    state.node_backends.truncate(state.spec.nodes);
    state.save()?;
    step(format!(
        "{name} and its pods removed; the lab has {} nodes",
        state.spec.nodes
    ));
    agents::wait_converged(state, &others).await?;
    if dropped.is_none() {
        return Err(Error::TryAgainLater(format!(
            "{name} did not leave its peers' meshes"
        )));
    }
    Ok(())
}

/// Node `node` (the next index) joins while other nodes' pods send to its first pod's
/// address; reports when every node has it up and when the first pod answers.
async fn node_join(state: &mut LabState, node: usize, step: &mut impl FnMut(String)) -> Result<()> {
    let names = state.names();
    let name = names.node(node);
    state.spec.nodes = node;
    state.node_backends.push(state.spec.backend.node(node));
    state.save()?;
    topology::create_node(&names, state.family(), node)?;
    if vppnode::is_vpp(state, node) {
        vppnode::start(&state.spec.name, state.family(), node).await?;
    }
    agents::start_agent(state, node)?;
    let t0 = Instant::now();
    step(format!("{name} created, its agent started"));
    let took = agents::wait_converged(state, &all_nodes(state)).await?;
    step(format!(
        "{name} registered: every node has it up after {:.2}s",
        took.as_secs_f64()
    ));
    reattach_pods(state, node, step)?;
    let first = state
        .pods_of(node)
        .next()
        .cloned()
        .ok_or_else(|| Error::config(format!("{name} has no pod")))?;
    let from = state
        .pods_of(1)
        .next()
        .cloned()
        .ok_or_else(|| Error::config("node 1 has no pod"))?;
    let answered = wait_reachable(&from.name, first.ip, Duration::from_secs(20)).await;
    step(match answered {
        true => format!(
            "{} -> {} answers, {:.2}s after the agent of {name} started",
            from.name,
            first.ip,
            t0.elapsed().as_secs_f64()
        ),
        false => format!("!!! {} -> {} does not answer", from.name, first.ip),
    });
    if !answered {
        return Err(Error::TryAgainLater(format!(
            "the pod of the new node {name} does not answer"
        )));
    }
    Ok(())
}

/// Pings `to` from pod `from` until one answers (true) or `timeout` passes.
async fn wait_reachable(from: &str, to: std::net::IpAddr, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        let ok = tokio::task::spawn_blocking({
            let from = from.to_string();
            move || probe::ping_all(&[probe::Ping { from, to }], 1)
        })
        .await
        .map(|v| v.iter().all(|o| *o))
        .unwrap_or(false);
        if ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(epoch: &str, reconciles: u64) -> Mark {
        Some((epoch.into(), reconciles))
    }

    #[test]
    fn fail_static_means_same_epoch_and_no_reconcile() {
        let names = ["n1".to_string(), "n2".to_string(), "n3".to_string()];
        let before = [m("a1", 3), m("b2", 4), m("c3", 2)];
        assert!(changed_agents(&names, &before, &before, "while etcd was down").is_empty());
        let why = changed_agents(
            &names,
            &before,
            &[m("a1", 4), m("bb", 4), None],
            "while etcd was down",
        );
        assert_eq!(
            why,
            [
                "n1: 1 reconciles while etcd was down (count 3 -> 4)",
                "n2: epoch b2 -> bb while etcd was down",
                "n3: no agent status while etcd was down",
            ]
        );
        // a restarted agent counts from 0 again: a change too
        let why = changed_agents(&names[..1], &before[..1], &[m("a1", 1)], "x");
        assert_eq!(why, ["n1: 2 reconciles x (count 3 -> 1)"]);
    }
}
