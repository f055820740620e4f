#!/usr/bin/env bash
# The README's run command: the operator end to end on this machine, on loopback only.
#
#   bash scripts/run-local.sh          start (or repair) everything, apply the examples, wait Ready
#   bash scripts/run-local.sh --pod    the same, but the operator runs as the chart's Pod on a
#                                      local node (root only; see "Pod mode" below)
#   bash scripts/run-local.sh status   what runs, where
#   bash scripts/run-local.sh stop     stop the operator, atlas-sim and the control plane
#   bash scripts/run-local.sh clean    stop, then delete .local/ (cluster data, logs, ports)
#
# Start does, skipping what is already done:
#   1. builds the pinned tools (scripts/build-tools.sh, cached in ~/.cache/linktoken-operator)
#      and the Rust binaries (cargo build: controlplane, atlas-sim, linktoken-operator);
#   2. starts the local control plane (controlplane start --dir .local/controlplane) and
#      installs the CRD (crds/);
#   3. starts atlas-sim --demo in the background (pid and log under .local/);
#   4. starts the operator in the background against both (pid and log under .local/);
#   5. applies deploy/examples/ and waits until every LinkToken is Ready;
#   6. hands atlas-link's token to atlas-sim's Cloud Manager side (spec.source) and waits until
#      it is Linked (docs/source-link.md);
#   7. prints the LinkTokens, their Secrets (the token masked: length and sha256 prefix) and
#      what to try next.
# Running it again reuses what runs and restarts what died (or was rebuilt since it started).
# Every listener is on 127.0.0.1. Ports are chosen once (the usual ones when free) and kept in
# .local/ports.env, so URLs stay the same across restarts.
#
# Pod mode (--pod, with start/status/stop/clean): the operator runs as users run it. The
# control plane gets a node (containerd, kubelet, kube-scheduler, kube-proxy: controlplane start
# --node, in .local/node-cluster), the image is built (scripts/build-image.sh) and imported with
# ctr, and the chart is installed with helm (image linktoken-operator:dev, namespace
# linktoken-system, restricted Pod Security). atlas-sim and the API server then listen on the
# machine's own address, the one place outside the Pod network the node lets Pods reach.
set -euo pipefail

POD_MODE=0
args=()
for a in "$@"; do
  if [[ "$a" == "--pod" ]]; then POD_MODE=1; else args+=("$a"); fi
done
set -- "${args[@]+"${args[@]}"}"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOCAL="$ROOT/.local"
CP_DIR="$LOCAL/controlplane"
((POD_MODE)) && CP_DIR="$LOCAL/node-cluster"
RELEASE_NS=linktoken-system
OPERATOR_LOGS="$LOCAL/linktoken-operator.log"
((POD_MODE)) && OPERATOR_LOGS="kubectl logs -n $RELEASE_NS deploy/linktoken-operator"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/debug"
WAIT_READY_TIMEOUT=${RUN_LOCAL_READY_TIMEOUT:-120s}

log() { echo "[run-local] $*" >&2; }
die() { echo "[run-local] ERROR: $*" >&2; exit 1; }

now() { date +%s%3N; }   # milliseconds
# secs_since START: seconds since START (from now), one decimal.
secs_since() {
  local ms=$(($(now) - $1))
  printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100))
}
PHASES=()
# phase_done NAME START: prints how long a phase took and keeps it for the summary.
phase_done() {
  local line
  line=$(printf '%-34s %6ss' "$1" "$(secs_since "$2")")
  PHASES+=("$line")
  log "$line"
}

# --- processes we started: pid files under .local/ ---------------------------------------------

# running NAME: true when .local/NAME.pid names a live process of that binary.
running() {
  local name=$1 pidfile="$LOCAL/$1.pid" pid cmd
  [[ -f "$pidfile" ]] || return 1
  pid=$(<"$pidfile")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  [[ "$cmd" == *"/$name "* ]]
}

# stale NAME: true when the binary was rebuilt after the running process started.
stale() {
  local name=$1
  [[ "$BIN/$name" -nt "$LOCAL/$name.pid" ]]
}

# stop_process NAME SECONDS: SIGTERM, wait, then SIGKILL; removes the pid file.
stop_process() {
  local name=$1 within=$2 pid i
  if running "$name"; then
    pid=$(<"$LOCAL/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < within * 10; i++)); do
      [[ -d "/proc/$pid" ]] || break
      sleep 0.1
    done
    if [[ -d "/proc/$pid" ]]; then
      log "$name (pid $pid) did not stop within ${within}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "$name stopped (pid $pid)"
  fi
  rm -f "$LOCAL/$name.pid"
}

# spawn NAME ARGS...: starts $BIN/NAME in its own session (Ctrl-C here or closing the terminal
# does not stop it), output to .local/NAME.log, pid in .local/NAME.pid.
spawn() {
  local name=$1; shift
  # Without job control a background child is not a group leader, so setsid does not fork and
  # $! is the binary's own pid.
  setsid "$BIN/$name" "$@" </dev/null >"$LOCAL/$name.log" 2>&1 &
  echo $! >"$LOCAL/$name.pid"
}

# --- ports ------------------------------------------------------------------------------------

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port PREFERRED TAKEN...: PREFERRED if free, else the next free port above it.
pick_port() {
  local p=$1; shift
  while ! port_free "$p" || [[ " $* " == *" $p "* ]]; do p=$((p + 1)); done
  echo "$p"
}

load_ports() {
  if [[ -f "$LOCAL/ports.env" ]]; then
    # shellcheck source=/dev/null
    source "$LOCAL/ports.env"
  else
    SIM_PORT=$(pick_port 8090)
    SIM_ADMIN_PORT=$(pick_port 8091 "$SIM_PORT")
    METRICS_PORT=$(pick_port 8080 "$SIM_PORT" "$SIM_ADMIN_PORT")
    PROBE_PORT=$(pick_port 8081 "$SIM_PORT" "$SIM_ADMIN_PORT" "$METRICS_PORT")
    printf 'SIM_PORT=%s\nSIM_ADMIN_PORT=%s\nMETRICS_PORT=%s\nPROBE_PORT=%s\n' \
      "$SIM_PORT" "$SIM_ADMIN_PORT" "$METRICS_PORT" "$PROBE_PORT" >"$LOCAL/ports.env"
  fi
  # atlas-sim's Cloud Manager / Ops Manager side; added to a ports.env of an older run.
  if [[ -z ${SOURCE_PORT:-} ]]; then
    SOURCE_PORT=$(pick_port 8092 "$SIM_PORT" "$SIM_ADMIN_PORT" "$METRICS_PORT" "$PROBE_PORT")
    printf 'SOURCE_PORT=%s\n' "$SOURCE_PORT" >>"$LOCAL/ports.env"
  fi
  SIM_HOST=127.0.0.1
  if ((POD_MODE)) && [[ -f "$CP_DIR/node-ip" ]]; then SIM_HOST=$(<"$CP_DIR/node-ip"); fi
  ATLAS_URL="http://$SIM_HOST:$SIM_PORT"
  SOURCE_URL="http://$SIM_HOST:$SOURCE_PORT"
  ADMIN_URL="http://127.0.0.1:$SIM_ADMIN_PORT"
  METRICS_URL="http://127.0.0.1:$METRICS_PORT/metrics"
  METRICS_CMD="curl -s $METRICS_URL"
  # In the Pod, metrics are reached through the API server's service proxy.
  ((POD_MODE)) && METRICS_CMD="kubectl get --raw /api/v1/namespaces/$RELEASE_NS/services/linktoken-operator-metrics:8080/proxy/metrics"
  PROBE_URL="http://127.0.0.1:$PROBE_PORT"
}

# http_ok URL: true when URL answers 2xx.
http_ok() { curl -fsS --noproxy '*' -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# --- phases -----------------------------------------------------------------------------------

build() {
  command -v go >/dev/null || die "go is not installed (needed once, to build the pinned Kubernetes tools)"
  command -v cargo >/dev/null || die "cargo is not installed"
  local t
  t=$(now)
  TOOLS_DIR=$(bash scripts/build-tools.sh | tail -n 1)
  phase_done "pinned tools (build-tools.sh)" "$t"
  t=$(now)
  # The operator (default features: what ships) and the two harness commands it runs with.
  cargo build -p linktoken-operator -p atlas-sim -p testkit --bins
  phase_done "cargo build" "$t"
}

start_control_plane() {
  local t kc
  t=$(now)
  CP_RESTARTED=0
  if ! "$BIN/controlplane" kubeconfig --dir "$CP_DIR" >/dev/null 2>&1; then
    CP_RESTARTED=1
  fi
  local node_flag=()
  ((POD_MODE)) && node_flag=(--node)
  kc=$(LINKTOKEN_TOOLS_DIR="$TOOLS_DIR" "$BIN/controlplane" start --dir "$CP_DIR" "${node_flag[@]+"${node_flag[@]}"}")
  export KUBECONFIG="$kc"
  if ((CP_RESTARTED)); then phase_done "control plane (started)" "$t"
  else phase_done "control plane (already running)" "$t"; fi
}

start_sim() {
  local t i
  t=$(now)
  SIM_RESTARTED=0
  # Listening where this mode needs it (Pod mode: the machine's address, else loopback).
  if running atlas-sim && ! stale atlas-sim && http_ok "$ADMIN_URL/healthz" &&
    tr '\0' ' ' <"/proc/$(<"$LOCAL/atlas-sim.pid")/cmdline" | grep -q -- "--listen $SIM_HOST:$SIM_PORT "; then
    phase_done "atlas-sim (already running)" "$t"
    return
  fi
  stop_process atlas-sim 10
  port_free "$SIM_PORT" || die "port $SIM_PORT (atlas-sim) is taken by another process; delete .local/ports.env to pick new ports"
  port_free "$SIM_ADMIN_PORT" || die "port $SIM_ADMIN_PORT (atlas-sim admin) is taken; delete .local/ports.env to pick new ports"
  port_free "$SOURCE_PORT" || die "port $SOURCE_PORT (atlas-sim source side) is taken; delete .local/ports.env to pick new ports"
  spawn atlas-sim --demo --listen "$SIM_HOST:$SIM_PORT" --admin-listen "127.0.0.1:$SIM_ADMIN_PORT" \
    --source-listen "$SIM_HOST:$SOURCE_PORT"
  for ((i = 0; i < 300; i++)); do
    grep -q '^atlas-sim ready' "$LOCAL/atlas-sim.log" 2>/dev/null && break
    running atlas-sim || { tail -n 20 "$LOCAL/atlas-sim.log" >&2; die "atlas-sim exited; log: $LOCAL/atlas-sim.log"; }
    sleep 0.1
  done
  grep -q '^atlas-sim ready' "$LOCAL/atlas-sim.log" || die "atlas-sim not ready after 30s; log: $LOCAL/atlas-sim.log"
  SIM_RESTARTED=1
  phase_done "atlas-sim (started)" "$t"
}

start_operator() {
  local t i why=""
  t=$(now)
  if running linktoken-operator; then
    if ((CP_RESTARTED)); then why="the control plane was restarted"
    elif ((SIM_RESTARTED)); then why="atlas-sim was restarted"
    elif stale linktoken-operator; then why="the binary was rebuilt"
    elif ! http_ok "$PROBE_URL/healthz"; then why="it does not answer /healthz"
    else
      phase_done "operator (already running)" "$t"
      return
    fi
    log "restarting the operator: $why"
  fi
  stop_process linktoken-operator 30
  port_free "$METRICS_PORT" || die "port $METRICS_PORT (metrics) is taken; delete .local/ports.env to pick new ports"
  port_free "$PROBE_PORT" || die "port $PROBE_PORT (probes) is taken; delete .local/ports.env to pick new ports"
  # The operator honours HTTP(S)_PROXY; the simulator is on loopback, never through a proxy.
  NO_PROXY="127.0.0.1,localhost,::1${NO_PROXY:+,$NO_PROXY}" \
    RUST_LOG="${RUST_LOG:-info}" \
    spawn linktoken-operator \
    --atlas-url="$ATLAS_URL" \
    --allowed-source-urls="$SOURCE_URL" \
    --metrics-bind-address="127.0.0.1:$METRICS_PORT" \
    --health-probe-bind-address="127.0.0.1:$PROBE_PORT" \
    --log-format=text
  # /healthz: the process is up and talked to the API server. Whether it reconciles is what the
  # wait for Ready LinkTokens below proves.
  for ((i = 0; i < 600; i++)); do
    http_ok "$PROBE_URL/healthz" && break
    running linktoken-operator || { tail -n 20 "$LOCAL/linktoken-operator.log" >&2; die "the operator exited; log: $LOCAL/linktoken-operator.log"; }
    sleep 0.1
  done
  http_ok "$PROBE_URL/healthz" || die "the operator does not answer /healthz after 60s; log: $LOCAL/linktoken-operator.log"
  phase_done "operator (started)" "$t"
}

# The operator's caches sync (and /readyz answers) only once the CRD exists: install it first.
install_crd() {
  local t
  t=$(now)
  kubectl apply --server-side -f crds/ >/dev/null
  kubectl wait --for=condition=Established crd/linktokens.atlasmigration.io --timeout=60s >/dev/null
  phase_done "CRD installed (crds/)" "$t"
}

apply_examples() {
  local t
  t=$(now)
  kubectl apply -f deploy/examples/ >/dev/null
  if ! kubectl wait --for=condition=Ready lt --all --timeout="$WAIT_READY_TIMEOUT" >/dev/null; then
    kubectl get lt >&2 || true
    die "not every LinkToken turned Ready; see kubectl describe lt and $OPERATOR_LOGS"
  fi
  phase_done "examples applied and Ready" "$t"
}

# The whole link: atlas-link's token handed to atlas-sim's Cloud Manager side (the demo source
# org and its Organization Owner key); Ready only once the source reports it SYNCED.
link_source() {
  local t
  t=$(now)
  if ((POD_MODE)); then
    # The CRD allows plain http:// for a source only on loopback, and atlas-sim's binary serves
    # plain HTTP; the Pod reaches atlas-sim on the machine's address, so the link step is a
    # host-mode demo (tests/e2e_source_link.rs covers TLS sources).
    log "Pod mode: skipping the source link step (needs a loopback or https source URL)"
    return 0
  fi
  kubectl create secret generic source-api-key --from-literal=publicApiKey=demosourcepublic \
    --from-literal=privateApiKey=demo-source-private-0000 --dry-run=client -o yaml |
    kubectl apply -f - >/dev/null
  kubectl patch lt atlas-link --type=merge -p \
    "{\"spec\":{\"source\":{\"url\":\"$SOURCE_URL\",\"orgId\":\"6a1e9b2a3c4d5e6f7a8b9c0d\",\"credentialsSecretRef\":{\"name\":\"source-api-key\"}}}}" >/dev/null
  if ! kubectl wait --for=condition=Linked lt/atlas-link --timeout="$WAIT_READY_TIMEOUT" >/dev/null; then
    kubectl get lt atlas-link -o jsonpath='{range .status.conditions[*]}{.type}={.status} {.reason}: {.message}{"\n"}{end}' >&2 || true
    die "atlas-link did not turn Linked; see kubectl describe lt atlas-link and $LOCAL/linktoken-operator.log"
  fi
  phase_done "atlas-link linked to the source" "$t"
}

write_env() {
  cat >"$LOCAL/env" <<EOF
# source .local/env   (written by scripts/run-local.sh)
export KUBECONFIG='$KUBECONFIG'
export PATH='$TOOLS_DIR':"\$PATH"
export ATLAS_URL='$ATLAS_URL'
export ATLAS_SIM_ADMIN='$ADMIN_URL'
export ATLAS_SIM_SOURCE='$SOURCE_URL'
export METRICS_URL='$METRICS_URL'
EOF
}

# mask: reads a token on stdin, prints only its length and the start of its sha256.
mask() {
  local tok
  tok=$(cat)
  printf '%d bytes, sha256 %s...' "${#tok}" "$(printf %s "$tok" | sha256sum | cut -c1-12)"
}

show() {
  echo
  echo "== LinkTokens"
  kubectl get lt
  echo
  echo "== Token Secrets (the token itself is never printed)"
  local name secret key sha
  while read -r name secret key; do
    [[ -n "$name" ]] || continue
    [[ -n "$key" ]] || key=linkToken
    sha=$(kubectl get secret "$secret" -o go-template='{{index .metadata.annotations "atlasmigration.io/token-sha256"}}' 2>/dev/null || true)
    printf '  %-16s secret/%-24s key %-16s %s; annotation token-sha256 %s...\n' "$name" "$secret" "$key" \
      "$(kubectl get secret "$secret" -o go-template="{{index .data \"$key\"}}" | base64 -d | mask)" "${sha:0:12}"
  done < <(kubectl get lt -o go-template='{{range .items}}{{.metadata.name}} {{.status.tokenSecretName}} {{with .spec.tokenSecret}}{{.key}}{{end}}{{"\n"}}{{end}}')
  echo
  echo "== The link at the source (atlas-sim's Cloud Manager side, $SOURCE_URL)"
  if ((POD_MODE)); then
    # link_source skipped it: nothing to show but why.
    echo "  not made in Pod mode (a plain-http source must be on loopback); run without --pod for it"
  else
    kubectl get lt atlas-link -o jsonpath='  atlas-link: Linked={.status.conditions[?(@.type=="Linked")].status}: {.status.conditions[?(@.type=="Linked")].message}{"\n"}  source org {.status.link.orgId} holds the token with sha256 {.status.link.tokenSha256}{"\n"}'
  fi
  cat <<EOF

== Try next
  source .local/env                   # KUBECONFIG, kubectl on PATH, ATLAS_SIM_ADMIN, ATLAS_SIM_SOURCE, METRICS_URL
  kubectl describe lt atlas-link      # conditions, status.issuedFor, events
  kubectl events --for lt/atlas-link
  kubectl annotate lt/atlas-link atlasmigration.io/rotate="\$(date +%s)" --overwrite   # rotate
  kubectl delete secret atlas-link    # drift: the operator revokes and reissues
  kubectl delete lt atlas-link        # unlinks at the source, then revokes the token in Atlas
  curl -s --digest -u demosourcepublic:demo-source-private-0000 \\
    $SOURCE_URL/api/public/v1.0/orgs/6a1e9b2a3c4d5e6f7a8b9c0d/liveExport/migrationLink/status
  curl -s $ADMIN_URL/state            # atlas-sim: live links per org, calls made
  $METRICS_CMD | grep '^linktoken_'
  docs/quickstart-local.md walks through all of it.

  logs:  $OPERATOR_LOGS  $LOCAL/atlas-sim.log  $CP_DIR/controlplane.log
  stop:  bash scripts/run-local.sh stop     (clean: also delete the cluster's data)
EOF
}

# --- Pod mode -----------------------------------------------------------------------------------

build_image() {
  local t
  t=$(now)
  bash scripts/build-image.sh >"$LOCAL/build-image.log" 2>&1 || { tail -n 20 "$LOCAL/build-image.log" >&2; die "the image build failed; log: $LOCAL/build-image.log"; }
  phase_done "image (scripts/build-image.sh)" "$t"
}

# The chart's Pods on the local node, with the image just built: imported into the node's
# containerd, installed (or upgraded) with helm, restarted so a rebuilt image is used.
install_chart() {
  local t sock
  t=$(now)
  sock="$CP_DIR/node/containerd/containerd.sock"
  ctr --address "$sock" --namespace k8s.io images import target/image/linktoken-operator-image.tar >/dev/null
  kubectl create namespace "$RELEASE_NS" --dry-run=client -o yaml |
    kubectl label -f - --local -o yaml pod-security.kubernetes.io/enforce=restricted |
    kubectl apply -f - >/dev/null
  helm upgrade --install linktoken-operator charts/linktoken-operator -n "$RELEASE_NS" \
    --set image.repository=linktoken-operator --set image.tag=dev --set image.pullPolicy=Never \
    --set atlasUrl="$ATLAS_URL" --set allowInsecureAtlasUrl=true --wait --timeout=3m >/dev/null
  kubectl rollout restart -n "$RELEASE_NS" deploy/linktoken-operator >/dev/null
  kubectl rollout status -n "$RELEASE_NS" deploy/linktoken-operator --timeout=3m >/dev/null
  phase_done "operator Pod (helm, image imported)" "$t"
}

cmd_start() {
  local total
  total=$(now)
  mkdir -p "$LOCAL"
  if ((POD_MODE)); then
    [[ "$(id -u)" == 0 ]] || die "--pod runs a node (containerd, kubelet): it needs root"
  fi
  build
  export PATH="$TOOLS_DIR:$PATH"
  if ((POD_MODE)); then build_image; fi
  start_control_plane
  load_ports
  if ((POD_MODE)); then
    start_sim
    install_chart
  else
    install_crd
    start_sim
    start_operator
  fi
  apply_examples
  link_source
  write_env
  show
  echo
  echo "== Timings"
  printf '  %s\n' "${PHASES[@]}"
  printf '  %-34s %6ss\n' "total" "$(secs_since "$total")"
}

cmd_stop() {
  local t dir
  t=$(now)
  stop_process linktoken-operator 30
  stop_process atlas-sim 10
  # Both modes' clusters (the node's teardown deletes its Pods and the rules it added).
  for dir in "$LOCAL/controlplane" "$LOCAL/node-cluster"; do
    [[ -d "$dir" ]] || continue
    if [[ -x "$BIN/controlplane" ]]; then
      "$BIN/controlplane" stop --dir "$dir"
    elif [[ -f "$dir/owner.pid" ]]; then
      die "the control plane binary is missing ($BIN/controlplane); run cargo build -p testkit --bin controlplane, then stop again"
    fi
  done
  phase_done "stopped" "$t"
}

cmd_status() {
  load_ports
  local name
  local names=(atlas-sim linktoken-operator)
  ((POD_MODE)) && names=(atlas-sim)
  for name in "${names[@]}"; do
    if running "$name"; then echo "$name: running (pid $(<"$LOCAL/$name.pid"))"
    else echo "$name: not running"; fi
  done
  if [[ -x "$BIN/controlplane" ]] && "$BIN/controlplane" kubeconfig --dir "$CP_DIR" >/dev/null 2>&1; then
    echo "control plane: running (KUBECONFIG=$("$BIN/controlplane" kubeconfig --dir "$CP_DIR"))"
  else
    echo "control plane: not running"
  fi
  echo "atlas-sim: $ATLAS_URL (admin $ADMIN_URL, source side $SOURCE_URL); metrics: $METRICS_CMD"
  if ((POD_MODE)) && [[ -f "$CP_DIR/kubeconfig" ]]; then
    PATH="$(bash scripts/build-tools.sh --print-dir):$PATH" KUBECONFIG="$CP_DIR/kubeconfig" \
      kubectl get pods -n "$RELEASE_NS" -o wide 2>/dev/null || true
  fi
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) mkdir -p "$LOCAL"; cmd_stop ;;
  status) mkdir -p "$LOCAL"; cmd_status ;;
  clean) mkdir -p "$LOCAL"; cmd_stop; rm -rf "$LOCAL"; log "deleted $LOCAL" ;;
  -h | --help | help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$1' (start, status, stop, clean)" ;;
esac
