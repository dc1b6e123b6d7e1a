#!/usr/bin/env bash
# Installs everything Scrambler's tests and lab need on a Debian 12 machine (run as root).
# Idempotent: skips apt when every package is already present.
set -euo pipefail

PACKAGES=(
  iproute2 iputils-ping fping tcpdump procps kmod cpio xz-utils
  nftables                             # scrambler-ipvlan's node setup for encrypted pods (nft -f)
  containernetworking-plugins          # host-local, bridge, portmap, tuning: real CNI peers
  podman runc                          # a real CNI client (podman's CNI backend)
  qemu-system-x86 linux-image-amd64 busybox-static   # Debian's stock kernel for ESP/ipvlan tests
  python3-pip
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

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
