#!/usr/bin/env bash
# Installs what Scrambler needs on a Debian 12 machine (run as root), per profile:
#   install-deps.sh lab    what `scrambler lab` (scripts/lab.sh) needs
#   install-deps.sh test   what the whole test suite (scripts/test.sh) needs: the lab's
#                          packages and the tests' real peers (CNI plugins, podman, vpp-papi)
# Idempotent: skips apt when every package is already present. Checks for a Rust toolchain
# (1.85 or newer, which it does not install).
set -euo pipefail

profile="${1:-}"

# The lab: namespaces and links (iproute2), pings and the underlay capture (iputils-ping,
# fping, tcpdump), nft for the ipvlan backend's node setup, and Debian's stock kernel under
# qemu where the running kernel lacks ESP/ipvlan (kmod loads its modules in the guest,
# xz-utils unpacks kernel and VPP tarball), etcd-server and etcd-client (etcdctl) for the
# node agents' datastore, protobuf-compiler (protoc) to build the etcd-client crate.
LAB_PACKAGES=(
  iproute2 iputils-ping fping tcpdump nftables kmod xz-utils
  qemu-system-x86 linux-image-amd64 busybox-static
  etcd-server etcd-client protobuf-compiler
)
# The tests, on top: real CNI peers (host-local, bridge, portmap, tuning), a real CNI client
# (podman with runc), pgrep/ps (procps), cpio (checks the VM initramfs), pip for vpp-papi,
# openssl (a test PKI for etcd over TLS), file (scripts/build-image.sh checks the image's
# binaries are static; podman builds and runs that image in image_live), iperf3 (the load
# generator of the dataplane bench).
TEST_PACKAGES=(
  containernetworking-plugins podman runc procps cpio python3-pip openssl file iperf3
)

case "$profile" in
  lab) packages=("${LAB_PACKAGES[@]}") ;;
  test) packages=("${LAB_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  *)
    echo "usage: $0 lab|test" >&2
    exit 2
    ;;
esac

need_rust() {
  local min=1.85 have
  if ! have="$(cargo --version 2>/dev/null | awk '{print $2}')" || [ -z "$have" ]; then
    echo "install-deps: no Rust toolchain (cargo) on PATH: install Rust $min or newer (https://rustup.rs)" >&2
    exit 1
  fi
  if [ "$(printf '%s\n%s\n' "$min" "${have%%-*}" | sort -V | head -n1)" != "$min" ]; then
    echo "install-deps: Rust $have is too old: Scrambler needs $min or newer (rustup update)" >&2
    exit 1
  fi
}
need_rust

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "$profile" = test ] || exit 0

# rustfmt and clippy are part of the test command.
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# vpp-papi (PyPI) is a real client of VPP's binary API: the VPP crate cross-checks its
# message encoding against it.
if ! python3 -c 'import vpp_papi' >/dev/null 2>&1; then
  echo "install-deps: installing vpp-papi==2.4.2"
  python3 -m pip install --quiet vpp-papi==2.4.2 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages vpp-papi==2.4.2
fi
