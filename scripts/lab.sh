#!/usr/bin/env bash
# The main job: build Scrambler and run the lab tour (up, test, failures, down) with the
# cluster on etcd: a real etcd and one `scrambler agent` per node build the mesh.
# `--mesh-file` as the first argument runs the tour without agents (the mesh from the lab's
# mesh file, `scrambler mesh apply` on each node). Other arguments go to `scrambler lab run`
# (e.g. --nodes 5 --pods 3 --backend vpp --no-inject).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=(--agents)
case "${1:-}" in
  --mesh-file) shift; mode=() ;;
  --agents) shift ;; # the default, accepted as a first argument too
esac
scripts/install-deps.sh lab
cargo build --release --locked -p scrambler -p scrambler-cni -p scrambler-ipam --features lab
exec target/release/scrambler lab run "${mode[@]}" "$@"
