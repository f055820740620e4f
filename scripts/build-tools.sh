#!/usr/bin/env bash
# Builds the pinned control-plane and packaging tools from their Go modules:
#   kube-apiserver, kube-controller-manager, kubectl  (k8s.io/kubernetes)
#   kubelet, kube-scheduler, kube-proxy              (k8s.io/kubernetes, the same build: the node
#                                                     that tests/e2e_node.rs runs Pods on)
#   pause.tar                                        (the node's sandbox image: a static C
#                                                     program calling pause(), packaged with buildah)
#   etcd                                             (go.etcd.io/etcd/server/v3)
#   helm                                             (helm.sh/helm/v3)
#   kstatus                                          (tools/kstatus: sigs.k8s.io/cli-utils' kstatus,
#                                                     the status logic Flux and kpt use)
# into a cache folder outside git. A finished tool is reused; an interrupted build
# leaves no half-written binary behind (each binary is built to a temp name and
# renamed), so the script is safe to interrupt and rerun.
#
# Usage: scripts/build-tools.sh            builds what is missing, prints the bin dir last
#        scripts/build-tools.sh --print-dir prints the bin dir only (builds nothing)
#        scripts/build-tools.sh --no-node   skips the node's binaries and pause image
set -euo pipefail

# Pinned versions. Kubernetes matches k8s-openapi's newest feature (v1_37); etcd is the
# newest 3.6 release (3.6 is the series kubeadm ships for 1.34+; the 3.7 client inside
# kube-apiserver 1.37 speaks to it).
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.22.0
# cli-utils is pinned in tools/kstatus/go.mod (with its go.sum); this must name the same version.
# It is not part of BIN_DIR's name (adding it would orphan the cached Kubernetes build): the binary
# reports the version it was built from, and a mismatch rebuilds it.
CLI_UTILS_VERSION=v0.37.2

CACHE_ROOT=${LINKTOKEN_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/linktoken-operator}
BIN_DIR="$CACHE_ROOT/bin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
SRC_DIR="$CACHE_ROOT/src"

with_node=true
case "${1:-}" in
  --print-dir) echo "$BIN_DIR"; exit 0 ;;
  --no-node) with_node=false ;;
  "") ;;
  *) echo "usage: $0 [--print-dir | --no-node]" >&2; exit 2 ;;
esac

mkdir -p "$BIN_DIR" "$SRC_DIR"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

log() { echo "[build-tools] $*" >&2; }

have_all() {
  local b
  for b in "$@"; do [[ -x "$BIN_DIR/$b" ]] || return 1; done
}

# go_build_into MODULE_DIR LDFLAGS PKG=NAME...: builds packages and renames them into BIN_DIR.
go_build_into() {
  local dir=$1 ldflags=$2; shift 2
  local tmp="$dir/.out"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local pkgs=() names=() spec
  for spec in "$@"; do pkgs+=("${spec%%=*}"); names+=("${spec##*=}"); done
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
  local i built
  for i in "${!pkgs[@]}"; do
    built="$tmp/$(basename "${pkgs[$i]}")"
    # a package path ending in a major-version suffix (/v3) is named after its parent
    [[ -f "$built" ]] || built="$tmp/$(basename "$(dirname "${pkgs[$i]}")")"
    mv -f "$built" "$BIN_DIR/${names[$i]}"
  done
  rm -rf "$tmp"
}

timed() {
  local label=$1; shift
  local start=$SECONDS
  "$@"
  log "$label took $((SECONDS - start))s"
}

# kubernetes_module_ready: the k8s.io/kubernetes module, its staging modules pinned, in SRC_DIR.
kubernetes_module() {
  local dir="$SRC_DIR/kubernetes-$K8S_VERSION"
  mkdir -p "$dir"
  local minor=${K8S_VERSION#v1.}   # 37.2
  local staging_version="v0.$minor"
  (
    cd "$dir"
    [[ -f go.mod ]] || printf 'module linktoken-operator/tools/kubernetes\n\ngo 1.26\n' > go.mod
    # k8s.io/kubernetes requires every staging module at v0.0.0, which no proxy serves:
    # pin each one with a replace to the matching v0.X.Y. The list is read from the
    # module's own go.mod so that a version bump needs no edit here.
    local modfile
    modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    local staging
    staging=$(grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$modfile" | awk '{print $1}')
    local args=() m
    for m in $staging; do args+=("-replace=$m=$m@$staging_version"); done
    args+=("-replace=k8s.io/kubernetes=k8s.io/kubernetes@$K8S_VERSION")
    go mod edit "${args[@]}"
    go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1 || go get "k8s.io/kubernetes@$K8S_VERSION"
  )
}

# build_kubernetes PKG=NAME...: builds commands of k8s.io/kubernetes with its version stamped.
build_kubernetes() {
  kubernetes_module
  local dir="$SRC_DIR/kubernetes-$K8S_VERSION" minor=${K8S_VERSION#v1.}
  local vpkg=k8s.io/component-base/version
  local ld="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=${minor%%.*} -X $vpkg.gitTreeState=clean"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor%%.*}"
  go_build_into "$dir" "$ld" "$@"
}

# The node's sandbox ("pause") image. No registry is reachable, so it cannot be pulled: a
# static program that sleeps in pause() until SIGINT/SIGTERM and reaps orphans (what the
# upstream pause container does), on an empty base, exported as a docker-archive that the
# test harness imports into containerd and names in its sandbox_image.
PAUSE_IMAGE=localhost/linktoken-pause:1
build_pause_image() {
  local dir="$SRC_DIR/pause"
  rm -rf "$dir"; mkdir -p "$dir/rootfs"
  cat >"$dir/pause.c" <<'C'
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, NULL);
  sigaction(SIGTERM, &q, NULL);
  sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
C
  cc -static -Os -s -o "$dir/rootfs/pause" "$dir/pause.c"
  find "$dir/rootfs" -exec touch -h -d @0 {} +
  local storage="$dir/storage" ctr
  bah() { buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs "$@"; }
  ctr=$(bah from scratch)
  bah copy --chown 0:0 "$ctr" "$dir/rootfs/pause" /pause >/dev/null
  bah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  bah commit --quiet --timestamp 0 --omit-history --rm "$ctr" "$PAUSE_IMAGE" >/dev/null
  rm -f "$dir/pause.tar"
  bah push --quiet "$PAUSE_IMAGE" "docker-archive:$dir/pause.tar:$PAUSE_IMAGE"
  mv -f "$dir/pause.tar" "$BIN_DIR/pause.tar"
  rm -rf "$dir"
}

build_etcd() {
  local dir="$SRC_DIR/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  (
    cd "$dir"
    [[ -f go.mod ]] || printf 'module linktoken-operator/tools/etcd\n\ngo 1.26\n' > go.mod
    # Built from our own main module so that etcd's local replace directives do not apply;
    # its sibling modules resolve to the same release through its requirements.
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 || go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  )
  go_build_into "$dir" "-s -w" go.etcd.io/etcd/server/v3=etcd
}

build_helm() {
  local dir="$SRC_DIR/helm-$HELM_VERSION"
  mkdir -p "$dir"
  (
    cd "$dir"
    [[ -f go.mod ]] || printf 'module linktoken-operator/tools/helm\n\ngo 1.26\n' > go.mod
    go get "helm.sh/helm/v3@$HELM_VERSION" >/dev/null 2>&1 || go get "helm.sh/helm/v3@$HELM_VERSION"
  )
  # The Kubernetes version helm assumes without a cluster (`helm template`, `helm lint`, a chart's
  # kubeVersion check): helm's own Makefile stamps the client-go it is built with; unstamped it
  # would be 1.20 and refuse the chart (kubeVersion >=1.31).
  local modfile kube_minor
  modfile=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  kube_minor=$(sed -n 's/^\s*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$modfile" | head -n 1)
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kube_minor"
  done
  go_build_into "$dir" "$ld" helm.sh/helm/v3/cmd/helm=helm
  echo "1.$kube_minor" > "$BIN_DIR/helm.kube-version"
}

# A helm built before it was stamped with its Kubernetes version is rebuilt.
helm_current() {
  [[ -x "$BIN_DIR/helm" && -f "$BIN_DIR/helm.kube-version" ]]
}

build_kstatus() {
  local repo dir
  repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  dir="$SRC_DIR/kstatus-$CLI_UTILS_VERSION"
  # Built from a copy so the repository's module stays as committed (-mod=mod may tidy it).
  rm -rf "$dir"; mkdir -p "$dir"
  cp "$repo/tools/kstatus/go.mod" "$repo/tools/kstatus/go.sum" "$repo/tools/kstatus/main.go" "$dir/"
  if ! grep -q "sigs.k8s.io/cli-utils $CLI_UTILS_VERSION\$" "$dir/go.mod"; then
    log "tools/kstatus/go.mod does not pin sigs.k8s.io/cli-utils $CLI_UTILS_VERSION"; return 1
  fi
  go_build_into "$dir" "-s -w -X main.version=$CLI_UTILS_VERSION" linktoken-operator/tools/kstatus=kstatus
}

kstatus_current() {
  [[ -x "$BIN_DIR/kstatus" ]] && [[ "$("$BIN_DIR/kstatus" --version 2>/dev/null)" == "$CLI_UTILS_VERSION" ]]
}

total_start=$SECONDS
if have_all kube-apiserver kube-controller-manager kubectl; then log "kubernetes $K8S_VERSION: cached"
else timed "kubernetes $K8S_VERSION (kube-apiserver, kube-controller-manager, kubectl)" build_kubernetes \
    k8s.io/kubernetes/cmd/kube-apiserver=kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager=kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl=kubectl; fi
if have_all etcd; then log "etcd $ETCD_VERSION: cached"
else timed "etcd $ETCD_VERSION" build_etcd; fi
if helm_current; then log "helm $HELM_VERSION: cached"
else timed "helm $HELM_VERSION" build_helm; fi
if kstatus_current; then log "kstatus (cli-utils $CLI_UTILS_VERSION): cached"
else timed "kstatus (cli-utils $CLI_UTILS_VERSION)" build_kstatus; fi
if [[ "$with_node" == true ]]; then
  # Built separately from the control plane so that a cache made before they existed gains
  # them without rebuilding the rest.
  if have_all kubelet kube-scheduler kube-proxy; then log "node $K8S_VERSION: cached"
  else timed "node $K8S_VERSION (kubelet, kube-scheduler, kube-proxy)" build_kubernetes \
      k8s.io/kubernetes/cmd/kubelet=kubelet \
      k8s.io/kubernetes/cmd/kube-scheduler=kube-scheduler \
      k8s.io/kubernetes/cmd/kube-proxy=kube-proxy; fi
  if [[ -f "$BIN_DIR/pause.tar" ]]; then log "pause image: cached"
  elif command -v buildah >/dev/null && printf 'int main(void){return 0;}' | cc -static -x c - -o /dev/null 2>/dev/null; then
    timed "pause image" build_pause_image
  else log "pause image skipped: needs buildah and a C compiler with a static libc (Debian: gcc libc6-dev); the node tests cannot run without it"; fi
fi
log "all tools ready in $((SECONDS - total_start))s; $(du -sh "$BIN_DIR" | cut -f1) of binaries in $BIN_DIR"
echo "$BIN_DIR"
