//! `mesh apply`, `status` and `mesh remove` for one node, through the [`Tunnel`] trait.

use crate::meshfile::MeshFile;
use crate::record::{self, NodeRecord};
use crate::status::StatusReport;
use scrambler_core::{
    Error, KeyId, Ledger, Mesh, Netns, OutboundSa, ReconcileReport, Result, Tunnel, TunnelDataplane,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where `--vpp-socket` points unless told otherwise: VPP's default binary-API socket.
pub const DEFAULT_VPP_SOCKET: &str = scrambler_vpp::attach::DEFAULT_API_SOCKET;

/// What one node-level command acts on.
#[derive(Debug, Clone)]
pub struct ApplyArgs {
    /// Mesh file.
    pub mesh: PathBuf,
    /// This node's name in the mesh.
    pub node: String,
    /// The node's network namespace.
    pub netns: Netns,
    /// Where the node record is kept.
    pub state_dir: PathBuf,
    /// Where the node's ledger of outbound SAs is kept (see [`Ledger`]); must outlive
    /// reboots.
    pub ledger_dir: PathBuf,
    /// Tunnel dataplane.
    pub backend: TunnelDataplane,
    /// With backend `vpp`: the binary-API socket of the node's VPP.
    pub vpp_socket: PathBuf,
    /// With backend `vpp`: the MTU of the node's underlay (the host link's MTU derives
    /// from it, see [`scrambler_vpp::VppTunnel::with_underlay_mtu`]).
    pub underlay_mtu: u32,
}

/// The tunnel dataplane `backend`; `vpp` talks to the VPP whose binary-API socket is
/// `vpp_socket` (connecting per operation, so VPP may restart in between), with the host
/// link ([`scrambler_vpp::VppTunnel::with_host_link`]) in the node's namespace, whose MTU
/// is that of pods on an underlay of MTU `underlay_mtu`.
pub fn tunnel_with(
    backend: TunnelDataplane,
    vpp_socket: &Path,
    underlay_mtu: u32,
) -> Result<Box<dyn Tunnel>> {
    match backend {
        TunnelDataplane::Xfrm => Ok(Box::new(scrambler_xfrm::XfrmTunnel::new(
            scrambler_xfrm::XfrmConfig::default(),
        )?)),
        // the node's host holds its tunnel address on a link into VPP: node <-> remote pod
        // traffic rides the mesh as on the kernel dataplane
        TunnelDataplane::Vpp => Ok(Box::new(
            scrambler_vpp::VppTunnel::new(vpp_socket)
                .with_host_link(true)
                .with_underlay_mtu(underlay_mtu),
        )),
    }
}

/// The text of an error in the node tool's words: no CNI wording ("invalid network
/// config", "unknown container") for what is a node-tool argument or a mesh.
pub fn message(e: &Error) -> String {
    match e {
        Error::InvalidConfig(m) | Error::UnknownContainer(m) => m.clone(),
        e => e.to_string(),
    }
}

/// Adds what to check to a failure to reach the node's VPP: that VPP runs and that
/// `--vpp-socket` is its API socket.
fn hint_vpp_socket(backend: TunnelDataplane, e: Error) -> Error {
    match e {
        Error::Io {
            op: "connect",
            object,
            source,
        } if backend == TunnelDataplane::Vpp => Error::Dataplane {
            dataplane: backend.to_string(),
            op: format!("connect to the API socket {object}"),
            reason: format!(
                "{source}: is VPP running on this node, and is this its API socket \
                 (`socksvr {{ socket-name … }}` in its startup.conf)? Point --vpp-socket at it"
            ),
        },
        e => e,
    }
}

/// The node's network namespace, checked; a missing one is named as the `--netns` argument.
fn check_netns(netns: &Netns) -> Result<()> {
    netns.check().map_err(|e| match e {
        Error::UnknownContainer(msg) => Error::config(format!("--netns: {msg}")),
        e => e,
    })
}

/// Reconciles the node's dataplane to the mesh file and records the change.
///
/// The node's [`Ledger`] admits the mesh first: an outbound SA installed before and not
/// in the dataplane now (a reset dataplane, a lost SA), an older generation or an old
/// epoch of the node stop the apply before anything changes, with an error saying what to
/// do; the outbound SAs it installs are recorded before they are, with the key id of the
/// mesh file's secret (an SA installed before under that secret and replaced since under
/// another one is refused too).
pub async fn apply(args: &ApplyArgs) -> Result<ReconcileReport> {
    let mf = MeshFile::load(&args.mesh)?;
    let mesh = mf.mesh_for(&args.node)?;
    mesh.local
        .check_previous_epoch_deadlines(scrambler_core::mesh::unix_now())
        .map_err(|e| naming_mesh_file_in(e, &args.mesh))?;
    let secret = mf.secret()?;
    check_netns(&args.netns)?;
    let t = tunnel_with(args.backend, &args.vpp_socket, args.underlay_mtu)?;
    // held until the reconcile is done: applies on one node take turns
    let mut ledger = Ledger::open(&args.ledger_dir, &args.node)?;
    let key_id = secret.key_id();
    let installed = installed_outbound(&*t, args, &mesh, &ledger, key_id).await?;
    ledger
        .admit(&mesh, key_id, |peer| installed.contains(&peer.name))
        .map_err(|e| naming_mesh_file(e, &args.mesh))?;
    let report = t
        .reconcile(&args.netns, &mesh, &secret)
        .await
        .map_err(|e| hint_vpp_socket(args.backend, e))?;
    let prev = NodeRecord::load(&args.state_dir, &args.node).ok().flatten();
    NodeRecord::after_apply(prev.as_ref(), &mesh, record::now())
        .save(&args.state_dir, &args.node)?;
    tracing::info!(node = %args.node, added = report.added, updated = report.updated,
        removed = report.removed, "mesh applied");
    Ok(report)
}

/// A mesh error about the contents of `mesh`, the file named in front.
fn naming_mesh_file_in(e: Error, mesh: &Path) -> Error {
    match e {
        Error::InvalidMesh(m) => Error::InvalidMesh(format!("{}: {m}", mesh.display())),
        e => e,
    }
}

/// The ledger's errors name the mesh file where they say `MESHFILE`.
fn naming_mesh_file(e: Error, mesh: &Path) -> Error {
    let name = |s: String| s.replace("MESHFILE", &mesh.display().to_string());
    match e {
        Error::InvalidMesh(m) => Error::InvalidMesh(name(m)),
        Error::AlreadyExists { object, reason } => Error::AlreadyExists {
            object,
            reason: name(reason),
        },
        e => e,
    }
}

/// The peers whose outbound SA of the mesh's tx generation and current epochs the
/// dataplane has now. Asked of the dataplane only when the ledger already holds one of
/// those SAs (otherwise the answer does not matter).
async fn installed_outbound(
    t: &dyn Tunnel,
    args: &ApplyArgs,
    mesh: &Mesh,
    ledger: &Ledger,
    key_id: KeyId,
) -> Result<BTreeSet<String>> {
    if !mesh
        .peers
        .iter()
        .any(|p| ledger.contains(&OutboundSa::to_peer(mesh, p, key_id)))
    {
        return Ok(BTreeSet::new());
    }
    let st = t
        .status(&args.netns, mesh)
        .await
        .map_err(|e| hint_vpp_socket(args.backend, e))?;
    Ok(st
        .peers
        .into_iter()
        .filter(|p| p.outbound)
        .map(|p| p.name)
        .collect())
}

/// The node's status.
pub async fn status(args: &ApplyArgs) -> Result<StatusReport> {
    let mf = MeshFile::load(&args.mesh)?;
    let mesh = mf.mesh_for(&args.node)?;
    check_netns(&args.netns)?;
    let t = tunnel_with(args.backend, &args.vpp_socket, args.underlay_mtu)?;
    let st = t
        .status(&args.netns, &mesh)
        .await
        .map_err(|e| hint_vpp_socket(args.backend, e))?;
    let rec = NodeRecord::load(&args.state_dir, &args.node)?;
    Ok(StatusReport::new(&mesh, st, rec.as_ref()))
}

/// What `mesh remove` does with the fail-closed guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Leave it (the default): pod traffic between nodes is dropped, never cleartext.
    Keep,
    /// Remove it too (`--remove-guard`): everything Scrambler owns goes.
    Remove,
}

/// Removes the node's mesh from its namespace (with `vpp`: from the VPP behind
/// `vpp_socket`), and the fail-closed guard too when `guard` says so.
pub async fn remove(
    netns: &Netns,
    backend: TunnelDataplane,
    vpp_socket: &Path,
    guard: Guard,
) -> Result<ReconcileReport> {
    check_netns(netns)?;
    // removing needs no MTU: the default serves
    let t = tunnel_with(
        backend,
        vpp_socket,
        scrambler_vpp::attach::DEFAULT_UNDERLAY_MTU,
    )?;
    match guard {
        Guard::Keep => t.remove_keeping_guard(netns).await,
        Guard::Remove => t.remove(netns).await,
    }
    .map_err(|e| hint_vpp_socket(backend, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_vpp_socket_says_what_to_check() {
        let gone = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let vpp = TunnelDataplane::Vpp;
        let e = hint_vpp_socket(vpp, Error::io("connect", "/run/vpp/api.sock", gone()));
        let text = e.to_string();
        assert!(text.contains("/run/vpp/api.sock"), "{text}");
        assert!(
            text.contains("is VPP running") && text.contains("--vpp-socket"),
            "{text}"
        );
        // other failures, and other backends, are left as they are
        let e = hint_vpp_socket(TunnelDataplane::Xfrm, Error::io("connect", "/x", gone()));
        assert!(!e.to_string().contains("--vpp-socket"));
        let e = hint_vpp_socket(vpp, Error::io("read", "/x", gone()));
        assert!(!e.to_string().contains("--vpp-socket"));
    }

    #[tokio::test]
    async fn a_previous_epoch_kept_beyond_an_hour_is_refused_before_anything() {
        let dir = tempfile::tempdir().unwrap();
        let mesh = dir.path().join("mesh.json");
        let until = scrambler_core::mesh::unix_now() + 7200;
        let text = format!(
            r#"{{"nodes":[
            {{"name":"a","id":1,"epoch":"0123456789abcdef","underlay":["192.0.2.1"],
              "podCidrs":["10.244.1.0/24"],
              "previousEpochs":[{{"epoch":"00000000000010ff","until":{until}}}]}},
            {{"name":"b","id":2,"epoch":"fedcba9876543210","underlay":["192.0.2.2"],
              "podCidrs":["10.244.2.0/24"]}}],
            "clusterCidrs":["10.244.0.0/16"],"keys":{{"tx":1,"rx":[1]}},"keyFile":"k.hex"}}"#
        );
        std::fs::write(&mesh, text).unwrap();
        let args = ApplyArgs {
            mesh: mesh.clone(),
            node: "a".into(),
            // never reached: the mesh is refused first
            netns: Netns::Path(dir.path().join("no-such-netns")),
            state_dir: dir.path().join("state"),
            ledger_dir: dir.path().join("ledger"),
            backend: TunnelDataplane::Xfrm,
            vpp_socket: dir.path().join("api.sock"),
            underlay_mtu: scrambler_vpp::attach::DEFAULT_UNDERLAY_MTU,
        };
        let e = message(&apply(&args).await.unwrap_err());
        assert!(
            e.contains(&mesh.display().to_string()) && e.contains("at most 3600 s"),
            "{e}"
        );
        assert!(!dir.path().join("state").exists() && !dir.path().join("ledger").exists());
    }

    #[test]
    fn missing_netns_names_the_argument_in_node_tool_words() {
        let e = check_netns(&Netns::Path("/run/netns/scr-no-such-node".into())).unwrap_err();
        assert_eq!(
            message(&e),
            "--netns: network namespace /run/netns/scr-no-such-node does not exist"
        );
        let e = Error::mesh("node \"x\" is not in the mesh");
        assert_eq!(message(&e), "invalid mesh: node \"x\" is not in the mesh");
    }
}
