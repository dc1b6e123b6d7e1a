#!/usr/bin/env bash
# The whole test suite: install what it needs, then format check, clippy, and every test
# (unit, netns, real CNI clients, real VPP, and the qemu-booted stock kernel for ESP/ipvlan).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh test

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# the node tool as a node installs it: without the lab (its tests, above, turn the lab on)
cargo clippy -p scrambler --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads="${SCRAMBLER_TEST_THREADS:-2}"
