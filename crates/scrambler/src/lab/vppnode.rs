//! VPP nodes of the lab: `--backend vpp` (every node) and `--backend mixed` (odd nodes VPP,
//! even nodes the kernel's xfrm).
//!
//! A VPP node is the same namespace on the underlay bridge as a kernel node, with one VPP
//! process running inside it:
//!
//! * the VPP is the one [`scrambler_testkit::dist::find`] finds: `SCRAMBLER_VPP_DIST` (a VPP
//!   tree or a tarball of one), else an installed VPP (`vpp` on PATH), else the project's
//!   CI fixture;
//! * its run directory is `<lab dir>/vpp-n<i>/` (startup.conf, `api.sock`, `cli.sock`, log,
//!   `vpp.pid`), its shared-memory prefix `<lab>-n<i>-vpp`, its heap [`HEAP`]; the
//!   startup.conf is the lab's own ([`startup_conf`]): no DPDK or hugepages, only the
//!   plugins the lab uses, and no API trace (it would record SA keys);
//! * it is started detached (its own session), so it outlives `lab up`; `lab down` (and a
//!   failed `lab up`) stops it through the pid file and removes its files;
//! * it takes the node's underlay veth with af_packet (fixed MAC `02:fe:00:00:01:<i>`) and
//!   holds the node's underlay address (`192.0.2.<i>/24`, or `2001:db8::<i>/64` in an
//!   `--ipv6` lab, see [`topology::Family`]) itself: the kernel side of the veth keeps no
//!   address (and has IPv6 off), so only VPP answers ARP and neighbour solicitations for it;
//! * the mesh is applied with `VppTunnel` over its API socket, pods are attached by the
//!   `scrambler-cni` binary with `"backend": "vpp"` and `"vpp": {"apiSocket": …}` (plus
//!   `"underlayIpv6": true` in an `--ipv6` lab: the pods' MTU leaves room for ESP's IPv6
//!   outer header).

use super::{cmd, topology, LabState};
use scrambler_core::{Backend, Error, Result, TunnelDataplane};
use scrambler_testkit::dist::VppInstall;
use scrambler_vpp_api::api::af_packet::AfPacketCreateV3;
use scrambler_vpp_api::api::interface::{
    SwInterfaceAddDelAddress, SwInterfaceSetFlags, SwInterfaceSetRxMode,
};
use scrambler_vpp_api::api::types::{AfPacketMode, IfStatusFlags, MacAddress, RxMode};
use scrambler_vpp_api::{ConnectOptions, VppClient};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Main heap of each lab VPP.
pub const HEAP: &str = "128M";
/// af_packet ring frame size of the uplink (an MTU-1500 frame and its headers fit).
const RING_FRAME_SIZE: u32 = 2048;
/// af_packet ring frames per block of the uplink.
const RING_FRAMES_PER_BLOCK: u32 = 64;
/// How long a starting VPP may take to answer its API (TCG-emulated guests are slow).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// True when node `i` of the lab runs VPP.
pub fn is_vpp(state: &LabState, i: usize) -> bool {
    state.node_backend(i) == Backend::Vpp
}

/// Node `i`'s VPP run directory.
pub fn run_dir(lab: &str, i: usize) -> PathBuf {
    LabState::dir(lab).join(format!("vpp-n{i}"))
}

/// Node `i`'s VPP binary-API socket.
pub fn api_socket(lab: &str, i: usize) -> PathBuf {
    run_dir(lab, i).join("api.sock")
}

/// Packets node `i`'s VPP dropped because an af_packet interface's TX ring was full (VPP's
/// `tx ring overrun` error counters, summed over its interfaces, read with `vppctl` on
/// the node's CLI socket): a burst the ring of a pod or of the uplink could not take, as
/// when the host held a VPP back and it then forwards its backlog at once. A lost echo
/// with such drops beside it is the host's, not a mesh change's. None when the counters
/// cannot be read.
pub fn tx_ring_overruns(lab: &str, i: usize) -> Option<u64> {
    let vpp = dist().ok()?;
    let mut c = std::process::Command::new(vpp.vpp.with_file_name("vppctl"));
    c.arg("-s")
        .arg(run_dir(lab, i).join("cli.sock"))
        .args(["show", "errors"]);
    if let Some(libs) = &vpp.libs {
        c.env("LD_LIBRARY_PATH", libs);
    }
    let out = c.output().ok().filter(|o| o.status.success())?;
    Some(parse_tx_ring_overruns(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

/// The `tx ring overrun` counts of `show errors` (`<count> <node> tx ring overrun error`),
/// summed.
fn parse_tx_ring_overruns(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.contains("tx ring overrun"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn api_prefix(lab: &str, i: usize) -> String {
    format!("{lab}-n{i}-vpp")
}

/// The fixed MAC VPP gives node `i`'s uplink; node indexes above 255 have none.
fn uplink_mac(i: usize) -> Result<[u8; 6]> {
    let last = u8::try_from(i)
        .map_err(|_| Error::config(format!("VPP node {i}: node index above 255")))?;
    Ok([0x02, 0xfe, 0, 0, 1, last])
}

/// The VPP the lab runs (see [`scrambler_testkit::dist::find`]).
pub fn dist() -> Result<VppInstall> {
    scrambler_testkit::dist::find().map_err(|e| Error::config(format!("VPP lab: {e}")))
}

/// `SCRAMBLER_VPP_DIST` for the lab VM: the VPP tree found here (the guest sees this
/// machine's files), or empty for an installed VPP (the guest finds it on PATH too) or
/// when there is no VPP (then only kernel labs run there).
pub fn dist_for_guest() -> String {
    match dist() {
        Ok(VppInstall {
            libs: Some(lib), ..
        }) => lib
            .parent()
            .map(|root| root.display().to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// Memory of the lab VM (MiB): room for the VPPs of a mixed lab beside the kernel nodes.
pub const VM_MEMORY_MB: u32 = 3072;

/// Starts node `i`'s VPP (detached), hands it the node's underlay and waits until it
/// answers. The node namespace must exist.
pub async fn start(lab: &str, family: topology::Family, i: usize) -> Result<()> {
    let vpp = dist()?;
    let node = super::topology::Names { lab: lab.into() }.node(i);
    let dir = run_dir(lab, i);
    // a VPP still running for this node is found through its pid file: stop it before
    // the run dir (and that file) goes
    stop(lab, i);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create VPP run dir", dir.display(), e))?;
    let conf = startup_conf(&vpp.plugins, &dir, &api_prefix(lab, i), i);
    let conf_path = dir.join("startup.conf");
    std::fs::write(&conf_path, conf).map_err(|e| Error::io("write", conf_path.display(), e))?;
    release_underlay(&node)?;
    let pid = spawn_detached(&vpp, &node, &dir, &conf_path)?;
    let pid_file = dir.join("vpp.pid");
    std::fs::write(&pid_file, format!("{pid}\n"))
        .map_err(|e| Error::io("write", pid_file.display(), e))?;
    let ready = match wait_ready(lab, i, pid).await {
        Ok(c) => {
            let r = take_underlay(&c, family, i).await;
            let _ = c.close().await;
            r
        }
        Err(e) => Err(e),
    };
    if ready.is_err() {
        // never leave a VPP behind that nothing will stop
        stop(lab, i);
    }
    ready
}

/// Node `i`'s startup.conf: sockets and log in `dir`, shared-memory prefix `prefix`, 4k
/// pages (no hugepages, no DPDK), the main loop sleeping when idle (several VPPs share few
/// cores), few buffers (64 MB at VPP's default 16384 is far more than a lab needs), only
/// the plugins the lab uses, from `plugins`. No `api-trace`: with it VPP records every API
/// message — SA keys included (`ipsec_sad_entry_add`) — which `api trace dump/save` and
/// post-mortem dumps write out.
fn startup_conf(plugins: &Path, dir: &Path, prefix: &str, i: usize) -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (dir, plugins) = (dir.display(), plugins.display());
    let main_core = (i - 1) % cores;
    format!(
        "unix {{
  nodaemon
  poll-sleep-usec 100
  cli-listen {dir}/cli.sock
  log {dir}/vpp.log
}}
api-segment {{ prefix {prefix} }}
socksvr {{ socket-name {dir}/api.sock }}
buffers {{
  buffers-per-numa 8192
  page-size 4k
}}
memory {{
  main-heap-size {HEAP}
  main-heap-page-size 4k
}}
statseg {{
  socket-name {dir}/stats.sock
  size 32M
  page-size 4k
}}
cpu {{ main-core {main_core} }}
plugins {{
  path {plugins}
  plugin default {{ disable }}
  plugin af_packet_plugin.so {{ enable }}
  plugin ping_plugin.so {{ enable }}
  plugin tap_plugin.so {{ enable }}
  plugin ipip_plugin.so {{ enable }}
}}
"
    )
}

/// The kernel gives up the underlay address (VPP holds it) and stays quiet on the wire.
fn release_underlay(node: &str) -> Result<()> {
    cmd::ip(node, &["addr", "flush", "dev", topology::UNDERLAY_IF])?;
    cmd::sysctl(
        node,
        &format!("net.ipv6.conf.{}.disable_ipv6", topology::UNDERLAY_IF),
        "1",
    )
}

fn spawn_detached(vpp: &VppInstall, node: &str, dir: &Path, conf: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let log = dir.join("vpp.stdout");
    let out = std::fs::File::create(&log).map_err(|e| Error::io("create", log.display(), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("dup", log.display(), e))?;
    let mut c = std::process::Command::new(cmd::ip_bin());
    c.args(["netns", "exec", node])
        .arg(&vpp.vpp)
        .arg("-c")
        .arg(conf)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    if let Some(libs) = &vpp.libs {
        c.env("LD_LIBRARY_PATH", libs);
    }
    // SAFETY: setsid is async-signal-safe; VPP must outlive `lab up` and its terminal.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = c.spawn().map_err(|e| Error::io("start VPP in", node, e))?;
    // `ip netns exec` execs VPP in place: the child's pid is VPP's. Nobody waits for it
    // here; when it exits, init (or the lab VM's agent) reaps it.
    Ok(child.id())
}

async fn wait_ready(lab: &str, i: usize, pid: u32) -> Result<VppClient> {
    let sock = api_socket(lab, i);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if !alive(pid) {
            return Err(Error::Dataplane {
                dataplane: TunnelDataplane::Vpp.to_string(),
                op: format!("start VPP of node {i}"),
                reason: format!("it exited: {}", logs(lab, i)),
            });
        }
        if sock.exists() {
            let opts = ConnectOptions {
                name: "scrambler-lab".into(),
                timeout: Duration::from_secs(5),
            };
            if let Ok(c) = VppClient::connect_with(&sock, opts).await {
                if c.control_ping().await.is_ok() {
                    return Ok(c);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Error::TryAgainLater(format!(
                "VPP of node {i} did not answer on {} within {} s: {}",
                sock.display(),
                START_TIMEOUT.as_secs(),
                logs(lab, i)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// VPP takes the underlay veth (af_packet, fixed MAC, interrupt mode) with the node's
/// underlay address.
async fn take_underlay(c: &VppClient, family: topology::Family, i: usize) -> Result<()> {
    let what = |op: &str| format!("{op} host-{} on node {i}", topology::UNDERLAY_IF);
    let fail = |op: String| {
        move |e: scrambler_vpp_api::VppError| Error::Dataplane {
            dataplane: TunnelDataplane::Vpp.to_string(),
            op,
            reason: e.to_string(),
        }
    };
    let r = c
        .request(&AfPacketCreateV3 {
            mode: AfPacketMode::AF_PACKET_API_MODE_ETHERNET,
            hw_addr: MacAddress(uplink_mac(i)?),
            host_if_name: topology::UNDERLAY_IF.into(),
            // small rings: af_packet's default rings take ~76 MB per interface
            rx_frame_size: RING_FRAME_SIZE,
            tx_frame_size: RING_FRAME_SIZE,
            rx_frames_per_block: RING_FRAMES_PER_BLOCK,
            tx_frames_per_block: RING_FRAMES_PER_BLOCK,
            ..Default::default()
        })
        .await
        .map_err(fail(what("create")))?;
    let sw = r.sw_if_index;
    // interrupt mode where af_packet supports it: idle VPPs then leave the cores alone
    let _ = c
        .request(&SwInterfaceSetRxMode {
            sw_if_index: sw,
            mode: RxMode::RX_MODE_API_INTERRUPT,
            ..Default::default()
        })
        .await;
    c.request(&SwInterfaceSetFlags {
        sw_if_index: sw,
        flags: IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP,
    })
    .await
    .map_err(fail(what("set up")))?;
    let prefix = family.underlay_prefix(i);
    c.request(&SwInterfaceAddDelAddress {
        sw_if_index: sw,
        is_add: true,
        del_all: false,
        prefix: prefix.into(),
    })
    .await
    .map_err(fail(what("address")))?;
    Ok(())
}

fn alive(pid: u32) -> bool {
    // a zombie (exited, not yet reaped) counts as dead
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// The tail of node `i`'s VPP output and log, for error messages.
pub fn logs(lab: &str, i: usize) -> String {
    let dir = run_dir(lab, i);
    let mut s = String::new();
    for f in ["vpp.stdout", "vpp.log"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(f)) {
            s.push_str(&t);
        }
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Stops node `i`'s VPP (SIGTERM, SIGKILL after 3 s) if its pid file names a VPP of this
/// run directory, and removes its shared memory and run directory. Nothing running is fine.
pub fn stop(lab: &str, i: usize) {
    stop_dir(&run_dir(lab, i), &api_prefix(lab, i));
}

fn stop_dir(dir: &Path, prefix: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = std::fs::read_to_string(dir.join("vpp.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(pid) = pid.filter(|p| is_our_vpp(*p, dir)) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while alive(pid as u32) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid as u32) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(3);
            while alive(pid as u32) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/dev/shm") {
        let p = format!("{prefix}-");
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&p) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// True when `pid` runs VPP with the startup.conf of `dir` (a recycled pid is left alone).
fn is_our_vpp(pid: i32, dir: &Path) -> bool {
    let conf = dir.join("startup.conf").display().to_string();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .any(|arg| String::from_utf8_lossy(arg) == conf)
        })
        .unwrap_or(false)
}

/// Stops every VPP of lab `lab` (whatever nodes its state directory has run dirs for).
pub fn stop_all(lab: &str) {
    let Ok(rd) = std::fs::read_dir(LabState::dir(lab)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(i) = name
            .strip_prefix("vpp-n")
            .and_then(|n| n.parse::<usize>().ok())
        {
            stop(lab, i);
        }
    }
}

/// The CNI network conf of a pod on VPP node `i`: `base` with `"backend": "vpp"` and the
/// node's VPP API socket; on an IPv6 underlay (`underlay_v6`) `"underlayIpv6": true`.
pub fn pod_conf(
    mut base: serde_json::Value,
    lab: &str,
    i: usize,
    underlay_v6: bool,
) -> serde_json::Value {
    base["backend"] = Backend::Vpp.as_str().into();
    base["vpp"] = serde_json::json!({ "apiSocket": api_socket(lab, i) });
    if underlay_v6 {
        base["vpp"]["underlayIpv6"] = true.into();
    }
    base
}

/// The `scrambler mesh apply` flags selecting node `i`'s dataplane.
pub fn apply_flags(state: &LabState, i: usize) -> Vec<String> {
    if is_vpp(state, i) {
        vec![
            "--backend".into(),
            TunnelDataplane::Vpp.to_string(),
            "--vpp-socket".into(),
            api_socket(&state.spec.name, i).display().to_string(),
        ]
    } else {
        vec![]
    }
}

/// Refuses a fault that has no VPP equivalent on a VPP node.
pub fn check_fault(state: &LabState, fault: super::inject::Fault, i: usize) -> Result<()> {
    use super::inject::Fault;
    if fault == Fault::DeleteState && is_vpp(state, i) {
        return Err(Error::Unsupported(format!(
            "delete-state on VPP node {}: VPP keeps an SA that tunnel protection uses (deleting \
             it through the API leaves it in place), so there is no state to lose behind \
             Scrambler's back; inject it on a kernel (xfrm) node",
            state.names().node(i)
        )));
    }
    Ok(())
}

/// The node a fault of the `lab run` tour hits: node 1, or the first node where the fault
/// applies; `None` when it applies nowhere in this lab.
pub fn tour_target(state: &LabState, fault: super::inject::Fault) -> Option<usize> {
    (1..=state.spec.nodes).find(|i| super::inject::check_fault(state, fault, *i).is_ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tx_ring_overruns_are_summed_over_interfaces() {
        let text = "   Count                  Node                              Reason               Severity \n\
               1229          af-packet-input                    timed out block             error  \n\
                 23       host-scvc8aebb4b4d8-tx                tx ring overrun             error  \n\
                  2             host-ul0-tx                     tx ring overrun             error  \n";
        assert_eq!(super::parse_tx_ring_overruns(text), 25);
        assert_eq!(
            super::parse_tx_ring_overruns("   Count  Node  Reason  Severity\n"),
            0
        );
    }

    use super::*;

    #[test]
    fn startup_conf_has_no_api_trace_and_only_the_lab_plugins() {
        let conf = startup_conf(
            Path::new("/usr/lib/x86_64-linux-gnu/vpp_plugins"),
            Path::new("/run/scrambler-lab/l/vpp-n2"),
            "l-n2-vpp",
            2,
        );
        assert!(!conf.contains("api-trace"), "{conf}");
        assert!(conf.contains("path /usr/lib/x86_64-linux-gnu/vpp_plugins\n"));
        assert!(conf.contains("socket-name /run/scrambler-lab/l/vpp-n2/api.sock"));
        assert!(conf.contains("prefix l-n2-vpp"));
        assert!(conf.contains("plugin default { disable }"));
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn pod_conf_points_at_the_node_vpp() {
        let base = serde_json::json!({"backend": "xfrm", "name": "l"});
        let c = pod_conf(base.clone(), "l", 3, false);
        assert_eq!(c["backend"], "vpp");
        assert_eq!(
            c["vpp"]["apiSocket"],
            "/run/scrambler-lab/l/vpp-n3/api.sock"
        );
        assert!(c["vpp"].get("underlayIpv6").is_none());
        let c6 = pod_conf(base, "l", 3, true);
        assert_eq!(c6["vpp"]["underlayIpv6"], true);
    }
}
