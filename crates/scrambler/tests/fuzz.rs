//! Fuzzing of the node tool's files: the mesh file (read by every command) and the node
//! record under the state directory. A mesh file loads, or fails with a configuration error
//! (code 7); a loaded one is valid from every node's point of view, through every rotation
//! phase, and its SAs derive. Corpus: `fuzz/corpus/<target>/`; `SCRAMBLER_FUZZ_CASES` runs
//! longer.

use scrambler::meshfile::{next_rotation_phase, MeshFile};
use scrambler::record::NodeRecord;
use scrambler::status::StatusReport;
use scrambler_core::keys::spi_parts;
use scrambler_core::{ClusterSecret, Mesh, TunnelStatus};
use scrambler_fuzz::{expect_codes, Shape, Target};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

const MESH_WORDS: &[&str] = &[
    "nodes",
    "name",
    "id",
    "epoch",
    "underlay",
    "podCidrs",
    "keys",
    "tx",
    "rx",
    "keyFile",
    "lastApply",
    "peers",
    "generations",
    "peerChanged",
];

/// What `mesh apply`, `status` and `rotate` derive from a mesh: every SA of the node, its
/// record, its status report.
fn use_mesh(mesh: &Mesh, secret: &ClusterSecret) {
    for peer in &mesh.peers {
        for g in &mesh.keys.rx {
            let (l, p) = (mesh.local.incarnation(), peer.incarnation());
            for (from, to) in [(l, p), (p, l)] {
                let sa = secret.sa(from, to, *g);
                assert_eq!(spi_parts(sa.spi).map(|p| p.1), Some(from.id.get()));
            }
        }
    }
    let record = NodeRecord::after_apply(None, mesh, 1);
    let again = NodeRecord::after_apply(Some(&record), mesh, 2);
    assert_eq!(record.peer_changed, again.peer_changed, "nothing changed");
    let report = StatusReport::new(mesh, TunnelStatus::default(), Some(&record));
    let _ = report.to_table(3);
}

#[test]
fn fuzz_mesh_file() {
    let dir = scrambler_fuzz::scratch_dir();
    let path = dir.path().join("mesh.json");
    let secret = ClusterSecret::from_bytes(vec![7; 32]).expect("secret");
    let r = Target::new(CRATE, "mesh_file", Shape::Json, 3000)
        .dictionary(MESH_WORDS)
        .run(|input| {
            std::fs::write(&path, input).expect("write mesh file");
            let Some(mf) = expect_codes("load", MeshFile::load(&path), &[7]) else {
                return;
            };
            let mut cluster = mf.cluster.clone();
            for _ in 0..3 {
                for node in &cluster.nodes {
                    let mesh = cluster
                        .mesh_for(&node.name)
                        .expect("a loaded mesh is valid from every node");
                    use_mesh(&mesh, &secret);
                }
                let Some((_, keys)) =
                    expect_codes("rotate", next_rotation_phase(&cluster.keys), &[7])
                else {
                    break;
                };
                cluster.keys = keys;
            }
        });
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}

#[test]
fn fuzz_node_record() {
    let dir = scrambler_fuzz::scratch_dir();
    let mesh_path = dir.path().join("mesh.json");
    std::fs::copy(
        std::path::Path::new(CRATE).join("fuzz/corpus/mesh_file/readme-two-nodes.json"),
        &mesh_path,
    )
    .expect("copy mesh");
    let mesh = MeshFile::load(&mesh_path)
        .expect("mesh")
        .cluster
        .mesh_for("node1")
        .expect("node1");
    let r = Target::new(CRATE, "node_record", Shape::Json, 3000)
        .dictionary(MESH_WORDS)
        .run(|input| {
            std::fs::write(NodeRecord::path(dir.path(), "node1").expect("path"), input)
                .expect("write");
            let Some(Some(prev)) =
                expect_codes("load", NodeRecord::load(dir.path(), "node1"), &[107])
            else {
                return;
            };
            let next = NodeRecord::after_apply(Some(&prev), &mesh, u64::MAX);
            let report = StatusReport::new(&mesh, TunnelStatus::default(), Some(&next));
            let _ = report.to_table(0);
            let _ = StatusReport::new(&mesh, TunnelStatus::default(), Some(&prev)).to_table(1);
        });
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}
