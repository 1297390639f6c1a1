"""`python -m services.encoder.healthcheck [HOST:PORT]`: exit 0 when the encoder reports SERVING.

A container healthcheck (docker compose, Kubernetes exec probes) through the standard
grpc.health.v1 service, which stays open when an API key is set. The default target is
this container's encoder port: ENCODER_PORT (the same variable EncoderSettings reads),
read directly so a probe every few seconds does not import torch through the settings
module.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_PORT = "50051"
TIMEOUT_S = 3.0


def check(target: str, *, service: str = "", timeout_s: float = TIMEOUT_S) -> str | None:
    """None when `target` is SERVING, else a one-line reason."""
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as exc:
            return f"{target}: {exc.code().name}: {exc.details()}"
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
    return None


def main(argv: list[str]) -> int:
    target = argv[0] if argv else f"127.0.0.1:{os.environ.get('ENCODER_PORT', DEFAULT_PORT)}"
    problem = check(target)
    if problem is not None:
        print(f"encoder not healthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
