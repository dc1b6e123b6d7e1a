#!/usr/bin/env bash
# The main job: build Scrambler and run the lab tour (up, test, failures, down).
# Extra arguments go to `scrambler lab run` (e.g. --nodes 5 --pods 3 --no-inject).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh lab
cargo build --release --locked -p scrambler -p scrambler-cni -p scrambler-ipam --features lab
exec target/release/scrambler lab run "$@"
