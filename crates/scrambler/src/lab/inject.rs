//! Failure injection: break one thing while pods ping across nodes, let Scrambler recover,
//! and report how long traffic was lost and whether any cleartext reached the underlay.

use super::{apply_node, capture, cmd, pods, probe, topology, LabState};
use crate::meshfile::{next_rotation_phase, MeshFile};
use scrambler_core::{Backend, Error, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The failures the lab can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The node's underlay link goes down for a while, then up.
    LinkDown,
    /// The node is removed and re-added: its namespace and pods rebuilt from scratch. As
    /// its dataplane lost every SA, it comes back with a new epoch (fresh keys and SPIs
    /// with every peer, no rotation): the mesh is applied on it and on its peers, pods are
    /// re-attached.
    Reboot,
    /// The agent (`scrambler mesh apply`) is killed mid-reconcile during a key rotation,
    /// then restarted.
    KillAgent,
    /// An outbound ESP state is deleted behind Scrambler's back. The next apply is refused
    /// by the node's ledger and that peer stays dropped (re-creating the SA under the same
    /// key would reuse GCM nonces); a new epoch for the node, applied on every node,
    /// repairs it without a rotation.
    DeleteState,
    /// A full key rotation under load: in file mode prepare, switch, finish on every node;
    /// with agents `scrambler rotate --etcd-endpoints` and the agents carry it out.
    Rotate,
    /// (agents) etcd is stopped for the hold time (30 s unless `--hold-ms` says otherwise),
    /// then started again: the agents keep their last mesh (fail static, still fail
    /// closed) and say so in their status, then catch up.
    EtcdDown,
    /// (agents) The lab's last node leaves while traffic flows: its agent stops, the node
    /// is deleted from etcd (`scrambler delete-node`), its peers drop it when its lease
    /// expires; then the node and its pods go. Needs 3 nodes or more.
    NodeLeave,
    /// (agents) A new node (the lab's next index) joins while pods of other nodes already
    /// send to its first pod's address: the cluster guard drops that traffic until the
    /// node's agent registers and the mesh includes it, then pings start working.
    NodeJoin,
}

impl Fault {
    /// True for faults that need the agents (etcd).
    pub fn needs_agents(self) -> bool {
        matches!(self, Fault::EtcdDown | Fault::NodeLeave | Fault::NodeJoin)
    }
}

/// Refuses a fault this lab cannot inject on node `i` (see [`Fault::needs_agents`] and
/// [`super::vppnode::check_fault`]).
pub fn check_fault(state: &LabState, fault: Fault, i: usize) -> Result<()> {
    super::vppnode::check_fault(state, fault, i)?;
    if fault.needs_agents() && !state.spec.agents {
        return Err(Error::Unsupported(format!(
            "{} needs the agents: build the lab with `lab up --agents`",
            fault_name(fault)
        )));
    }
    if fault == Fault::DeleteState && state.spec.agents {
        return Err(Error::Unsupported(
            "delete-state with agents: the agent finds a lost SA only at its next full \
             resync (30 s) and then takes a new epoch; inject it on a lab without --agents"
                .into(),
        ));
    }
    if fault == Fault::NodeLeave && state.spec.nodes < 3 {
        return Err(Error::Unsupported(
            "node-leave needs 3 nodes or more (a cluster stays after one leaves)".into(),
        ));
    }
    if fault == Fault::NodeJoin && state.spec.nodes >= topology::MAX_NODES {
        return Err(Error::Unsupported(format!(
            "node-join: the lab has {} nodes already",
            topology::MAX_NODES
        )));
    }
    Ok(())
}

fn fault_name(f: Fault) -> String {
    use clap::ValueEnum;
    f.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_else(|| format!("{f:?}"))
}

/// The node a fault hits: `node` for most; the lab's last node for `node-leave`, the next
/// one for `node-join`.
pub fn target(state: &LabState, fault: Fault, node: usize) -> usize {
    match fault {
        Fault::NodeLeave => state.spec.nodes,
        Fault::NodeJoin => state.spec.nodes + 1,
        _ => node,
    }
}

/// The address the first pod of a node that has not joined yet will get (the first
/// address after the gateway of its pod CIDR).
fn first_pod_ip(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 244, i as u8, 2))
}

/// What an injection did to traffic.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectReport {
    /// The fault.
    pub fault: Fault,
    /// The node it hit.
    pub node: String,
    /// What was done, step by step.
    pub steps: Vec<String>,
    /// The probes' losses.
    pub flows: Vec<probe::FlowReport>,
    /// The underlay during the whole injection.
    pub underlay: capture::Verdict,
    /// What the fault's own checks found wrong (an agent that changed its epoch, a
    /// rotation where none should be, …); empty when they all held.
    pub failures: Vec<String>,
    /// Per VPP node that had any during the injection: packets its VPP dropped on a full
    /// af_packet TX ring ([`super::vppnode::tx_ring_overruns`]), the mark of a burst after
    /// the host held a VPP back rather than of a mesh change.
    pub vpp_tx_ring_overruns: Vec<(String, u64)>,
}

/// Why an injection failed: the fault's own checks ([`InjectReport::failures`]), any
/// cleartext on the underlay, a flow that proves nothing (no echo sent, or none answered:
/// a probe that did not run, or a pair that never worked), and the fault's loss rule:
/// no echo lost in `rotate`; in `etcd-down`, where the agents' unchanged reconcile counts
/// (the fault's own check) prove the dataplane untouched, at most
/// [`ETCD_DOWN_MAX_LOSS_PERCENT`] of a flow's echoes and no gap of
/// [`ETCD_DOWN_MAX_OUTAGE_MS`] or more. Empty: pass.
pub fn verdict(r: &InjectReport) -> Vec<String> {
    let mut why = r.failures.clone();
    if r.underlay.cleartext > 0 {
        why.push(format!(
            "{} cleartext packets between pod CIDRs on the underlay",
            r.underlay.cleartext
        ));
    }
    if r.underlay.node_cleartext > 0 {
        why.push(format!(
            "{} cleartext packets between node addresses on the underlay (node encryption \
             on, outside ESP and the bypass ports)",
            r.underlay.node_cleartext
        ));
    }
    for f in &r.flows {
        if f.sent == 0 {
            why.push(format!(
                "flow {}: no echo sent (the probe did not run)",
                f.label
            ));
        } else if f.received == 0 {
            why.push(format!("flow {}: no echo answered of {}", f.label, f.sent));
        } else if r.fault == Fault::EtcdDown && etcd_down_loss_too_high(f) {
            why.push(format!(
                "flow {}: {} of {} echoes lost ({} ms longest outage); etcd-down allows \
                 {ETCD_DOWN_MAX_LOSS_PERCENT} % and gaps under {ETCD_DOWN_MAX_OUTAGE_MS} ms",
                f.label,
                f.sent - f.received,
                f.sent,
                f.longest_outage_ms,
            ));
        } else if r.fault == Fault::Rotate && f.received < f.sent {
            why.push(format!(
                "flow {}: {} of {} echoes lost ({} ms longest outage); {} loses none",
                f.label,
                f.sent - f.received,
                f.sent,
                f.longest_outage_ms,
                fault_name(r.fault)
            ));
        }
    }
    why
}

/// Loss allowed on a flow during `etcd-down`. The agents leave the dataplane alone (their
/// reconcile counts prove it), so a lost echo there is the host's, not the mesh's: on the
/// shared 2-core machine, with builds running, runs lost 1–5 of ~200 echoes with gaps up
/// to 250 ms; a torn-down tunnel or a re-key costs a second or more (link-down, reboot).
pub const ETCD_DOWN_MAX_LOSS_PERCENT: u64 = 5;

/// Longest gap allowed on a flow during `etcd-down` (see [`ETCD_DOWN_MAX_LOSS_PERCENT`]).
pub const ETCD_DOWN_MAX_OUTAGE_MS: u64 = 1000;

fn etcd_down_loss_too_high(f: &probe::FlowReport) -> bool {
    let lost = f.sent.saturating_sub(f.received);
    lost * 100 > f.sent * ETCD_DOWN_MAX_LOSS_PERCENT
        || f.longest_outage_ms >= ETCD_DOWN_MAX_OUTAGE_MS
}

/// Interval of the probe flows.
const FLOW_INTERVAL_MS: u64 = 50;

/// Injects `fault` on node `node` (1-based), holding the failure `hold` long where that
/// applies.
pub async fn inject(name: &str, fault: Fault, node: usize, hold: Duration) -> Result<InjectReport> {
    let mut state = LabState::load(name)?;
    let names = state.names();
    let n = state.spec.nodes;
    if node == 0 || node > n {
        return Err(Error::config(format!("--node {node} out of range 1..={n}")));
    }
    check_fault(&state, fault, node)?;
    let node = target(&state, fault, node);
    let other = if node == 1 { 2 } else { 1 };
    let first_pod = |i: usize| {
        state
            .pods_of(i)
            .next()
            .cloned()
            .ok_or_else(|| Error::config(format!("node {i} has no pod")))
    };
    let b = first_pod(other)?;
    let pcap = LabState::dir(name).join(format!("inject-{fault:?}.pcap"));
    let cap = capture::Capture::start(&names.wire(), &pcap)?;
    let overruns = |state: &LabState| -> Vec<(usize, Option<u64>)> {
        (1..=state.spec.nodes)
            .filter(|i| state.node_backend(*i) == Backend::Vpp)
            .map(|i| (i, super::vppnode::tx_ring_overruns(&state.spec.name, i)))
            .collect()
    };
    let overruns_before = overruns(&state);
    let mut flows = match fault {
        // the joining node's first pod does not exist yet: pods of two nodes send to it
        Fault::NodeJoin => {
            let c = first_pod(if other == 1 { 2 } else { 1 })?;
            vec![
                probe::Flow::start(&b.name, first_pod_ip(node), FLOW_INTERVAL_MS)?,
                probe::Flow::start(&c.name, first_pod_ip(node), FLOW_INTERVAL_MS)?,
                probe::Flow::start(&b.name, c.ip, FLOW_INTERVAL_MS)?,
            ]
        }
        _ => {
            let a = first_pod(node)?;
            let mut v = vec![
                probe::Flow::start(&a.name, b.ip, FLOW_INTERVAL_MS)?,
                probe::Flow::start(&b.name, a.ip, FLOW_INTERVAL_MS)?,
            ];
            // an `--ipv6` lab's pods are dual-stack: IPv6 pod traffic is probed too
            if let Some(b6) = b.ip6 {
                v.push(probe::Flow::start(&a.name, b6, FLOW_INTERVAL_MS)?);
            }
            v
        }
    };
    if n >= 3 && fault != Fault::NodeJoin {
        // A control flow between two nodes the fault does not touch directly.
        let third = (1..=n).find(|i| *i != node && *i != other).unwrap_or(other);
        if let (Some(c), Some(d)) = (state.pods_of(other).next(), state.pods_of(third).next()) {
            flows.push(probe::Flow::start(&c.name, d.ip, FLOW_INTERVAL_MS)?);
        }
    }
    if state.spec.node_encryption {
        // with node encryption, host traffic too: it must stay encrypted through the fault
        match super::node_encryption::host_flow(&state, fault, node) {
            Ok((from, to)) => flows.push(probe::Flow::start(&from, to, FLOW_INTERVAL_MS)?),
            Err(why) => eprintln!("[lab] no host flow for this fault ({why})"),
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut steps = vec![];
    let t0 = Instant::now();
    let mut failures = vec![];
    let mut step = |s: String| {
        eprintln!("[lab] {:>6.2}s {s}", t0.elapsed().as_secs_f64());
        steps.push(format!("{:.2}s {s}", t0.elapsed().as_secs_f64()));
    };
    match fault {
        _ if state.spec.agents && fault != Fault::LinkDown => {
            failures =
                super::agent_faults::inject(&mut state, fault, node, hold, &mut step).await?;
        }
        Fault::EtcdDown | Fault::NodeLeave | Fault::NodeJoin => {
            return Err(Error::Unsupported(format!(
                "{} needs the agents",
                fault_name(fault)
            )))
        }
        Fault::LinkDown => {
            topology::set_underlay(&names, node, false)?;
            step(format!("underlay of {} down", names.node(node)));
            tokio::time::sleep(hold).await;
            topology::set_underlay(&names, node, true)?;
            step(format!("underlay of {} up", names.node(node)));
        }
        Fault::Reboot => {
            for p in state.pods_of(node) {
                topology::delete_netns(&p.name);
            }
            super::vppnode::stop(name, node);
            topology::delete_netns(&names.node(node));
            step(format!("{} and its pods removed", names.node(node)));
            tokio::time::sleep(hold).await;
            topology::create_node(&names, state.family(), node)?;
            if super::vppnode::is_vpp(&state, node) {
                super::vppnode::start(name, state.family(), node).await?;
            }
            // The rebooted node lost its SAs: re-creating them under the same keys would
            // restart sequence numbers and reuse GCM nonces (its ledger refuses that). It
            // comes back with a new epoch, so every key with it is new: no rotation.
            let epoch = new_epoch(&state, node)?;
            let r = apply_node(&state, node).await?;
            step(format!(
                "{} re-created with epoch {epoch}, mesh applied (+{})",
                names.node(node),
                r.added
            ));
            apply_on_peers(&state, node).await?;
            step(format!(
                "new epoch of {} applied on its peers",
                names.node(node)
            ));
            let cni = pods::find_cni_binary()?;
            let mut rebuilt = vec![];
            for j in 1..=state.spec.pods_per_node {
                rebuilt.push(super::start_pod(&state, &cni, node, j)?);
            }
            for p in rebuilt {
                if let Some(old) = state.pods.iter_mut().find(|o| o.name == p.name) {
                    if old.ip != p.ip {
                        step(format!(
                            "pod {} came back as {} (was {})",
                            p.name, p.ip, old.ip
                        ));
                    }
                    old.ip = p.ip;
                    old.ip6 = p.ip6;
                }
            }
            state.save()?;
            step(format!("pods of {} re-attached", names.node(node)));
        }
        Fault::KillAgent => {
            let mesh_path = state.mesh_path();
            let mut mf = MeshFile::load(&mesh_path)?;
            let (phase, keys) = next_rotation_phase(&mf.cluster.keys)?;
            mf.cluster.keys = keys;
            mf.save(&mesh_path)?;
            step(format!("rotation phase {phase}"));
            let killed_after = kill_agent_mid_apply(&state, node).await?;
            step(format!(
                "agent on {} killed after {killed_after} ms",
                names.node(node)
            ));
            tokio::time::sleep(hold).await;
            let r = apply_node(&state, node).await?;
            step(format!(
                "agent restarted on {}: it still had +{} ~{} -{} to do",
                names.node(node),
                r.added,
                r.updated,
                r.removed
            ));
            for i in (1..=n).filter(|i| *i != node) {
                apply_node(&state, i).await?;
            }
            step("phase applied on the other nodes".into());
            rotate_phases(&state, None, 2, hold, &mut step).await?;
        }
        Fault::DeleteState => {
            let spi = delete_outbound_state(&state, node, other)?;
            step(format!(
                "outbound state spi {spi} deleted on {}",
                names.node(node)
            ));
            tokio::time::sleep(hold).await;
            // Re-creating the lost SA under the same key would reuse GCM nonces: the node's
            // ledger refuses the apply (the peer stays dropped, fail closed), and a new
            // epoch for the node repairs it without a rotation.
            match apply_node(&state, node).await {
                Ok(r) => {
                    return Err(Error::Dataplane {
                        dataplane: "lab".into(),
                        op: format!("apply on {} after its SA was lost", names.node(node)),
                        reason: format!("the ledger should have refused it, it applied {r:?}"),
                    })
                }
                Err(e) => step(format!(
                    "apply on {} refused by its ledger: {}",
                    names.node(node),
                    crate::apply::message(&e)
                )),
            }
            let epoch = new_epoch(&state, node)?;
            let r = apply_node(&state, node).await?;
            step(format!(
                "{} given epoch {epoch}, mesh applied (+{} ~{} -{})",
                names.node(node),
                r.added,
                r.updated,
                r.removed
            ));
            apply_on_peers(&state, node).await?;
            step(format!(
                "new epoch of {} applied on its peers",
                names.node(node)
            ));
        }
        Fault::Rotate => {
            rotate_phases(&state, None, 3, hold, &mut step).await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut reports = vec![];
    for f in flows {
        reports.push(f.stop()?);
    }
    let underlay = cap.stop_with_nodes(
        &state.family().cluster_cidrs(),
        &super::node_encryption::scope(&state)?,
    )?;
    let vpp_tx_ring_overruns = overruns(&state)
        .into_iter()
        .filter_map(|(i, after)| {
            let before = overruns_before
                .iter()
                .find(|(j, _)| *j == i)?
                .1
                .unwrap_or(0);
            let n = after?.saturating_sub(before);
            (n > 0).then(|| (names.node(i), n))
        })
        .collect();
    Ok(InjectReport {
        fault,
        node: names.node(node),
        steps,
        flows: reports,
        underlay,
        failures,
        vpp_tx_ring_overruns,
    })
}

/// Gives node `node` a new epoch in the lab's mesh file (`scrambler mesh epoch`).
fn new_epoch(state: &LabState, node: usize) -> Result<scrambler_core::Epoch> {
    crate::meshfile::new_epoch(&state.mesh_path(), &state.names().node(node)).map(|(_, e)| e)
}

/// Applies the mesh file on every node but `node`.
async fn apply_on_peers(state: &LabState, node: usize) -> Result<()> {
    for i in (1..=state.spec.nodes).filter(|i| *i != node) {
        apply_node(state, i).await?;
    }
    Ok(())
}

/// Applies the next `phases` rotation phases on every node (but `skip`), with the grace
/// period `hold` before the old generation goes.
async fn rotate_phases(
    state: &LabState,
    skip: Option<usize>,
    phases: usize,
    hold: Duration,
    step: &mut impl FnMut(String),
) -> Result<()> {
    let mesh_path = state.mesh_path();
    for _ in 0..phases {
        let mut mf = MeshFile::load(&mesh_path)?;
        let (phase, keys) = next_rotation_phase(&mf.cluster.keys)?;
        if matches!(phase, crate::meshfile::RotationPhase::Finish) {
            tokio::time::sleep(hold).await;
        }
        mf.cluster.keys = keys;
        mf.save(&mesh_path)?;
        let nodes: Vec<usize> = (1..=state.spec.nodes)
            .filter(|i| Some(*i) != skip)
            .collect();
        for i in &nodes {
            apply_node(state, *i).await?;
        }
        step(format!(
            "phase {phase} applied on {} nodes (tx={} rx={:?})",
            nodes.len(),
            mf.cluster.keys.tx,
            mf.cluster.keys.rx
        ));
    }
    Ok(())
}

/// Runs `scrambler mesh apply` for the node as a separate process and SIGKILLs it halfway
/// through (timed from a previous full run). Returns when it was killed, in ms.
async fn kill_agent_mid_apply(state: &LabState, node: usize) -> Result<u64> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "own executable", e))?;
    let names = state.names();
    let node_name = names.node(node);
    let netns = format!("/run/netns/{node_name}");
    let mesh = state.mesh_path();
    let sd = state.state_dir();
    let spawn = || {
        std::process::Command::new(&exe)
            .args(["mesh", "apply", "--node", &node_name, "--netns", &netns])
            .arg("--mesh")
            .arg(&mesh)
            .arg("--state-dir")
            .arg(&sd)
            .arg("--ledger-dir")
            .arg(state.ledger_dir())
            .args(super::vppnode::apply_flags(state, node))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Error::io("spawn agent", &node_name, e))
    };
    // The apply itself takes about as long as starting the process; kill just after start-up
    // (measured on `--version`), i.e. while it is reconciling.
    let t = Instant::now();
    let mut probe_child = std::process::Command::new(&exe)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::io("spawn", exe.display(), e))?;
    let _ = probe_child.wait();
    let startup = t.elapsed();
    let mut child = spawn()?;
    let wait = startup + Duration::from_millis(2);
    tokio::time::sleep(wait).await;
    let _ = child.kill();
    let _ = child.wait();
    Ok(wait.as_millis() as u64)
}

/// Deletes node `node`'s outbound ESP state towards node `to` with iproute2 (behind
/// Scrambler's back).
fn delete_outbound_state(state: &LabState, node: usize, to: usize) -> Result<String> {
    let names = state.names();
    let ns = names.node(node);
    let family = state.family();
    let (me, peer) = (
        family.underlay(node).to_string(),
        family.underlay(to).to_string(),
    );
    let out = cmd::ip(&ns, &["xfrm", "state", "list"])?;
    for block in out.split("src ").skip(1) {
        let mut it = block.split_whitespace();
        let src = it.next().unwrap_or("");
        let dst = it.nth(1).unwrap_or("");
        if src != me || dst != peer {
            continue;
        }
        if let Some(spi) = block
            .split("spi ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
        {
            cmd::ip(
                &ns,
                &[
                    "xfrm", "state", "delete", "src", src, "dst", dst, "proto", "esp", "spi", spi,
                ],
            )?;
            return Ok(spi.to_string());
        }
    }
    Err(Error::config(format!("no outbound state found on {ns}")))
}

/// Prints an injection report: the fault, each flow's losses and the underlay verdict.
pub fn print_report(r: &InjectReport) {
    // the steps were shown as they happened, on stderr (`[lab]` lines), and are in the JSON
    println!("fault {:?} on {}", r.fault, r.node);
    println!(
        "{:<40} {:>6} {:>9} {:>14}",
        "FLOW", "SENT", "RECEIVED", "LONGEST OUTAGE"
    );
    for f in &r.flows {
        println!(
            "{:<40} {:>6} {:>9} {:>11} ms",
            f.label, f.sent, f.received, f.longest_outage_ms
        );
    }
    // where the losses fell: echo n left about (n - 1) intervals after the flow started,
    // which is about 1 s before the fault's first step
    for f in r.flows.iter().filter(|f| !f.lost.is_empty()) {
        let at: Vec<String> = f
            .lost
            .iter()
            .map(|s| {
                let t = (*s as f64 - 1.0) * FLOW_INTERVAL_MS as f64 / 1000.0 - 1.0;
                format!("{s} ({t:+.2}s)")
            })
            .collect();
        println!("  {} lost icmp_seq {}", f.label, at.join(", "));
    }
    for (node, n) in &r.vpp_tx_ring_overruns {
        println!(
            "  VPP of {node} dropped {n} packets on a full af_packet TX ring (tx ring overrun: \
             a burst after the host held a VPP back)"
        );
    }
    println!(
        "underlay: {} ESP packets, {} cleartext packets between pod CIDRs{}",
        r.underlay.esp,
        r.underlay.cleartext,
        if r.underlay.cleartext == 0 {
            " (none: fail-closed held)"
        } else {
            " !!! LEAK"
        }
    );
    super::print_host_cleartext(&r.underlay);
    let why = verdict(r);
    if why.is_empty() {
        println!("fault verdict: PASS");
    }
    for w in &why {
        println!("fault verdict: FAIL: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{backend::LabBackend, LabSpec};

    fn lab(nodes: usize, agents: bool, backend: &str) -> LabState {
        let backend: LabBackend = backend.parse().unwrap();
        LabState {
            spec: LabSpec {
                name: "t".into(),
                nodes,
                pods_per_node: 1,
                backend,
                agents,
                node_encryption: false,
                ipv6: false,
            },
            pods: vec![],
            node_backends: (1..=nodes).map(|i| backend.node(i)).collect(),
        }
    }

    #[test]
    fn agent_faults_need_agents_and_file_faults_need_files() {
        let files = lab(3, false, "veth");
        for f in [Fault::EtcdDown, Fault::NodeLeave, Fault::NodeJoin] {
            let e = check_fault(&files, f, 1).unwrap_err().to_string();
            assert!(e.contains("needs the agents"), "{f:?}: {e}");
        }
        for f in [
            Fault::LinkDown,
            Fault::DeleteState,
            Fault::KillAgent,
            Fault::Rotate,
            Fault::Reboot,
        ] {
            check_fault(&files, f, 1).unwrap();
        }
        let agents = lab(3, true, "veth");
        let e = check_fault(&agents, Fault::DeleteState, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("delete-state with agents"), "{e}");
        for f in [
            Fault::EtcdDown,
            Fault::NodeLeave,
            Fault::NodeJoin,
            Fault::Reboot,
            Fault::Rotate,
        ] {
            check_fault(&agents, f, 1).unwrap();
        }
        // a 2-node lab keeps 2 nodes: nobody leaves
        let e = check_fault(&lab(2, true, "vpp"), Fault::NodeLeave, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 nodes or more"), "{e}");
    }

    #[test]
    fn node_leave_takes_the_last_node_and_node_join_adds_the_next() {
        let l = lab(4, true, "mixed");
        assert_eq!(target(&l, Fault::NodeLeave, 1), 4);
        assert_eq!(target(&l, Fault::NodeJoin, 2), 5);
        assert_eq!(target(&l, Fault::Reboot, 2), 2);
        assert_eq!(first_pod_ip(5).to_string(), "10.244.5.2");
    }

    fn report(fault: Fault, flows: &[(u64, u64, u64)]) -> InjectReport {
        InjectReport {
            fault,
            node: "t-n1".into(),
            steps: vec![],
            flows: flows
                .iter()
                .map(|&(sent, received, longest_outage_ms)| probe::FlowReport {
                    label: "p -> q".into(),
                    sent,
                    received,
                    longest_outage_ms,
                    lost: vec![],
                })
                .collect(),
            underlay: capture::Verdict::default(),
            failures: vec![],
            vpp_tx_ring_overruns: vec![],
        }
    }

    #[test]
    fn a_flow_that_proves_nothing_fails_every_fault() {
        for fault in [
            Fault::LinkDown,
            Fault::Reboot,
            Fault::KillAgent,
            Fault::Rotate,
            Fault::EtcdDown,
            Fault::NodeLeave,
            Fault::NodeJoin,
        ] {
            assert!(
                verdict(&report(fault, &[(100, 100, 0)])).is_empty(),
                "{fault:?}"
            );
            // no ping output at all: nothing sent, nothing lost, no outage
            let why = verdict(&report(fault, &[(100, 100, 0), (0, 0, 0)]));
            assert!(
                why.len() == 1 && why[0].contains("no echo sent"),
                "{fault:?}: {why:?}"
            );
            let why = verdict(&report(fault, &[(40, 0, 2000)]));
            assert!(
                why.len() == 1 && why[0].contains("no echo answered"),
                "{fault:?}: {why:?}"
            );
        }
    }

    #[test]
    fn rotate_loses_no_echo_etcd_down_little_others_may() {
        // every 5th echo lost: never more than 50 ms in a row, 20 % in all
        for fault in [Fault::Rotate, Fault::EtcdDown] {
            let why = verdict(&report(fault, &[(600, 480, 50)]));
            assert!(
                why.len() == 1 && why[0].contains("120 of 600 echoes lost"),
                "{why:?}"
            );
        }
        assert_eq!(verdict(&report(Fault::Rotate, &[(600, 599, 50)])).len(), 1);
        // host noise on an untouched path: 5 of 198, a 250 ms gap
        assert!(verdict(&report(Fault::EtcdDown, &[(198, 193, 250)])).is_empty());
        // a gap of a second is a path that changed
        assert_eq!(
            verdict(&report(Fault::EtcdDown, &[(600, 590, 1000)])).len(),
            1
        );
        for fault in [Fault::LinkDown, Fault::Reboot, Fault::NodeLeave] {
            assert!(verdict(&report(fault, &[(100, 60, 2000)])).is_empty());
        }
    }

    #[test]
    fn the_faults_own_findings_and_cleartext_fail_it() {
        let mut r = report(Fault::KillAgent, &[(100, 100, 0)]);
        r.failures.push("kill-agent: epoch changed".into());
        assert_eq!(verdict(&r), vec!["kill-agent: epoch changed".to_string()]);
        let mut r = report(Fault::LinkDown, &[(100, 90, 500)]);
        r.underlay.cleartext = 3;
        let why = verdict(&r);
        assert!(why.len() == 1 && why[0].contains("3 cleartext"), "{why:?}");
    }
}
