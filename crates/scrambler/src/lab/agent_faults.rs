//! The faults of a lab on etcd (`lab up --agents`): what breaks and how the agents bring
//! the mesh back. The probes and the capture around them are [`super::inject`]'s.

use super::agents::{self, agent_status};
use super::inject::Fault;
use super::{pods, probe, topology, vppnode, LabState};
use scrambler_agent::rotation::Phase;
use scrambler_core::{Error, Result};
use std::time::{Duration, Instant};

/// How long the agents get to carry out a rotation, catch up with etcd or drop a peer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Injects `fault` on node `node` of a lab whose mesh comes from etcd.
pub async fn inject(
    state: &mut LabState,
    fault: Fault,
    node: usize,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<()> {
    match fault {
        Fault::Reboot => reboot(state, node, hold, step).await,
        Fault::KillAgent => kill_agent(state, node, hold, step).await,
        Fault::Rotate => rotate(state, hold, step).await,
        Fault::EtcdDown => etcd_down(state, hold, step).await,
        Fault::NodeLeave => node_leave(state, node, hold, step).await,
        Fault::NodeJoin => node_join(state, node, step).await,
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
) -> Result<()> {
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
    topology::create_node(&names, node)?;
    if vppnode::is_vpp(state, node) {
        vppnode::start(&state.spec.name, node).await?;
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
    Ok(())
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
) -> Result<()> {
    let names = state.names();
    let before = agent_status(state, node).map(|s| (s.epoch, s.reconciles));
    agents::stop_agent(state, node, true);
    step(format!("agent of {} killed (SIGKILL)", names.node(node)));
    tokio::time::sleep(hold).await;
    agents::start_agent(state, node)?;
    // the restarted agent's first reconcile is the one to look at
    let t0 = Instant::now();
    while t0.elapsed() < AGENT_TIMEOUT {
        let fresh = agent_status(state, node).is_some_and(|s| {
            s.registered
                && before
                    .as_ref()
                    .is_none_or(|(_, n)| s.reconciles < *n || *n == 0)
        });
        if fresh {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agents::wait_converged(state, &all_nodes(state)).await?;
    let st = agent_status(state, node);
    let r = st.as_ref().and_then(|s| s.last_report.clone());
    step(format!(
        "agent of {} restarted: epoch {} ({}), its reconcile did {}",
        names.node(node),
        st.as_ref().map(|s| s.epoch.as_str()).unwrap_or("-"),
        match (&before, &st) {
            (Some((e, _)), Some(s)) if *e == s.epoch => "kept",
            _ => "!!! CHANGED",
        },
        r.map(|r| format!(
            "+{} ~{} -{} ({} unchanged)",
            r.added, r.updated, r.removed, r.unchanged
        ))
        .unwrap_or_else(|| "-".into())
    ));
    Ok(())
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

/// etcd stops for `hold`: every agent keeps its mesh (fail static) and says etcd is
/// unreachable; after etcd is back they reconnect and catch up.
async fn etcd_down(
    state: &mut LabState,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<()> {
    let all = all_nodes(state);
    let epochs: Vec<String> = all.iter().map(|i| epoch_of(state, *i)).collect();
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
    agents::start_etcd(state).await?;
    step("etcd started again (same data dir)".into());
    let back = agents::wait_status(state, &all, AGENT_TIMEOUT, |s| {
        s.etcd_connected && s.registered
    })
    .await;
    let took = agents::wait_converged(state, &all).await?;
    let same = all
        .iter()
        .zip(&epochs)
        .all(|(i, e)| epoch_of(state, *i) == *e);
    step(format!(
        "agents caught up {}: mesh complete after {:.2}s, epochs {}",
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
    Ok(())
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
    // a node that joins later under this name is a new machine: no agent state, no leases
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
    topology::create_node(&names, node)?;
    if vppnode::is_vpp(state, node) {
        vppnode::start(&state.spec.name, node).await?;
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
