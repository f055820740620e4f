#!/usr/bin/env bash
# The README's test command: builds the pinned control-plane tools (cached outside git),
# checks formatting and lints, then runs every test against a real control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

step() { echo; echo "== $*"; }

# Lua 5.1 runs the Argo CD health check of docs/gitops.md as Argo CD would (tests/argocd_health.rs).
if ! command -v lua5.1 >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing lua5.1 (Debian package)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.1 >/dev/null
  else
    echo "lua5.1 is missing: install it (Debian: apt-get install lua5.1) or tests/argocd_health.rs is skipped" >&2
  fi
fi

# buildah packages the operator image without a container daemon (scripts/build-image.sh).
if ! command -v buildah >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing buildah (Debian package)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
  else
    echo "buildah is missing: install it (Debian: apt-get install buildah) or tests/image.rs is skipped" >&2
  fi
fi

# The node of tests/e2e_node.rs (containerd, runc, the CNI plugins; Debian packages).
node_pkgs=()
command -v containerd >/dev/null || node_pkgs+=(containerd)
command -v runc >/dev/null || node_pkgs+=(runc)
[ -x /usr/lib/cni/bridge ] || node_pkgs+=(containernetworking-plugins)
if [ "${#node_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing ${node_pkgs[*]} (Debian packages)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${node_pkgs[@]}" >/dev/null
  else
    echo "missing ${node_pkgs[*]}: install them (Debian) or tests/e2e_node.rs is skipped" >&2
  fi
fi

step "pinned tools (kube-apiserver, kube-controller-manager, kubectl, etcd, helm; kubelet, kube-scheduler, kube-proxy and the pause image of the node)"
LINKTOKEN_TOOLS_DIR=$(bash scripts/build-tools.sh | tail -n 1)
export LINKTOKEN_TOOLS_DIR

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo build --release -p linktoken-operator (what the image ships; tests/workspace.rs inspects it)"
cargo build --release --locked -p linktoken-operator

step "operator image: static binary packaged with buildah (scripts/build-image.sh; tests/image.rs reads it)"
if command -v buildah >/dev/null; then
  image_start=$SECONDS
  bash scripts/build-image.sh
  echo "image built in $((SECONDS - image_start))s"
elif [ "${CI:-}" = true ]; then
  echo "buildah is missing in CI" >&2; exit 1
fi

step "cargo test (unit, integration and end-to-end tests on a real control plane)"
# Every crate of the workspace: the operator, atlas-sim, the testkit and the benchmark. The
# operator's tests run its binary built with the fault-injection hook (the reliability tests
# need it; the release binary above has none).
# Tests wait on the control plane and the operator far more than they compute, so run more
# of them at once than there are cores.
cargo test --workspace --all-targets --no-fail-fast --features linktoken-operator/fault-injection \
  -- --test-threads="${TEST_THREADS:-4}"

echo
echo "== all checks passed in $((SECONDS - start))s"
