#!/usr/bin/env bash
# Renders deploy/ (plain manifests) from charts/linktoken-operator with default values, for
# users who do not use Helm. tests/helm.rs fails when deploy/ drifts from the chart; rerun this
# script after any change to the chart:
#
#   bash scripts/render-deploy.sh            # copies crds/linktoken.yaml into the chart, writes deploy/
#   bash scripts/render-deploy.sh OUT_DIR    # writes OUT_DIR only (the test compares)
#
# Uses $HELM, else `helm` from scripts/build-tools.sh's folder, else helm on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-deploy}
helm=${HELM:-}
if [[ -z $helm ]]; then
  dir=$(bash scripts/build-tools.sh --print-dir 2>/dev/null || true)
  if [[ -n $dir && -x $dir/helm ]]; then helm=$dir/helm; else helm=helm; fi
fi

# The namespace and release name users get; the kustomization can change the namespace.
namespace=linktoken-system
release=linktoken-operator
mkdir -p "$out"
if [[ -z ${1:-} ]]; then
  # The chart ships the generated CRD (crdgen writes crds/); keep its copy identical.
  cp crds/linktoken.yaml charts/linktoken-operator/crds/linktoken.yaml
fi

header() {
  echo "# Generated from charts/linktoken-operator by scripts/render-deploy.sh. Do not edit."
}

{
  header
  cat <<YAML
# The operator's namespace, labelled to enforce Pod Security "restricted" (the pod complies).
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: linktoken-operator
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
YAML
} >"$out/namespace.yaml"

{
  header
  "$helm" show crds charts/linktoken-operator
} >"$out/crd.yaml"

{
  header
  "$helm" template "$release" charts/linktoken-operator --namespace "$namespace"
} >"$out/linktoken-operator.yaml"

{
  header
  cat <<YAML
# kubectl apply -k deploy/     (or: kubectl apply --server-side -k deploy/)
# Example LinkTokens live in deploy/examples/ and are not part of the install.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - namespace.yaml
  - crd.yaml
  - linktoken-operator.yaml
YAML
} >"$out/kustomization.yaml"
echo "rendered $out/{namespace,crd,linktoken-operator,kustomization}.yaml" >&2
