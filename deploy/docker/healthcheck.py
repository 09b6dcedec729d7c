"""Container HEALTHCHECK of the seedx images (Docker and compose; Kubernetes uses its probes).

The gateway answers ``/healthz`` on SEEDX_GATEWAY_PORT; a worker serves ``/metrics`` on its
SEEDX_{LLM,DIFFUSION}_METRICS_PORT once its model is loaded. Exit 0 when healthy.
"""

import os
import socket
import sys
import urllib.request


def main() -> int:
    gateway_port = os.environ.get("SEEDX_GATEWAY_PORT")
    worker_port = os.environ.get("SEEDX_LLM_METRICS_PORT") or os.environ.get(
        "SEEDX_DIFFUSION_METRICS_PORT"
    )
    try:
        if worker_port:
            socket.create_connection(("127.0.0.1", int(worker_port)), timeout=3).close()
        else:
            url = f"http://127.0.0.1:{gateway_port or 8000}/healthz"
            with urllib.request.urlopen(url, timeout=3) as response:
                return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
