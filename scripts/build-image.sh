#!/bin/sh
# Builds Scrambler's node image FROM scratch (deploy/Containerfile) with podman (or docker:
# ENGINE=docker): the three binaries statically linked and position-dependent, as the CNI
# reference plugins ship theirs.
#   scripts/build-image.sh [tag]      default tag: localhost/scrambler:<workspace version>
# Environment: ENGINE (podman), CARGO_TARGET_DIR (target), PROFILE (release; the tests use
# dev, which builds faster).
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
engine=${ENGINE:-podman}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n1)
tag=${1:-localhost/scrambler:$version}
triple="$(uname -m)-unknown-linux-gnu"
target=${CARGO_TARGET_DIR:-$here/target}/plugin-static
profile=${PROFILE:-release}
# the static build has a target dir of its own (the IPAM and CNI benches share it): its
# RUSTFLAGS would otherwise rebuild the workspace's ordinary build from scratch
(cd "$here" && CARGO_TARGET_DIR="$target" \
  RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  cargo build --profile "$profile" --target "$triple" \
    -p scrambler -p scrambler-cni -p scrambler-ipam)
# cargo puts the dev profile's output under debug/
case $profile in dev) out=debug ;; *) out=$profile ;; esac
bin="$target/$triple/$out"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
for b in scrambler scrambler-cni scrambler-ipam; do
  cp "$bin/$b" "$ctx/$b"
  # a dynamic binary would not start on the empty base
  if ! command -v file >/dev/null; then
    echo "build-image: file not found: install file (scripts/install-deps.sh test)" >&2
    exit 1
  fi
  if file "$ctx/$b" | grep -q 'dynamically linked'; then
    echo "build-image: $b is dynamically linked" >&2
    exit 1
  fi
done
cp "$here/deploy/Containerfile" "$ctx/Containerfile"
"$engine" build --quiet -f "$ctx/Containerfile" -t "$tag" "$ctx"
echo "$tag"
