#!/usr/bin/env bash
# The main job: build Scrambler and run the lab tour (up, test, failures, down), each
# node's mesh applied from the lab's mesh file. `--agents` as the first argument runs the
# cluster on etcd instead (a real etcd and one `scrambler agent` per node build the mesh;
# on the kernel dataplane in the VM its tour is not in the default job yet: see the README).
# Other arguments go to `scrambler lab run` (e.g. --nodes 5 --pods 3 --backend vpp
# --no-inject).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=()
case "${1:-}" in
  --agents) shift; mode=(--agents) ;;
  --mesh-file) shift ;;
esac
scripts/install-deps.sh lab
cargo build --release --locked -p scrambler -p scrambler-cni -p scrambler-ipam --features lab
exec target/release/scrambler lab run "${mode[@]}" "$@"
