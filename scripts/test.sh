#!/usr/bin/env bash
# The README's test command: builds the pinned control-plane tools (cached outside git),
# checks formatting and lints, then runs every test against a real control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

step() { echo; echo "== $*"; }

step "pinned tools (kube-apiserver, kube-controller-manager, kubectl, etcd, helm)"
LINKTOKEN_TOOLS_DIR=$(bash scripts/build-tools.sh | tail -n 1)
export LINKTOKEN_TOOLS_DIR

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit, integration and end-to-end tests on a real control plane)"
# Tests wait on the control plane and the operator far more than they compute, so run more
# of them at once than there are cores.
cargo test --all-targets -- --test-threads="${TEST_THREADS:-4}"

echo
echo "== all checks passed in $((SECONDS - start))s"
