"""`python -m services.gateway`: HTTP (uvicorn) and gRPC in one process, sharing one search core."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn
from pydantic import ValidationError

from clipsearch.affinity import pin_process
from services.gateway.app import create_app
from services.gateway.deps import build_core
from services.gateway.grpc_server import GrpcGateway
from services.gateway.http_limits import uvicorn_options
from services.gateway.settings import GatewaySettings

log = logging.getLogger("services.gateway")


async def serve(settings: GatewaySettings) -> None:
    core = build_core(settings)
    grpc_gateway = GrpcGateway(core, settings)
    grpc_port = await grpc_gateway.start()
    app = create_app(settings, core)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="info",
        access_log=False,
        lifespan="on",
        **uvicorn_options(settings),  # the HTTP server's limits
    )
    server = uvicorn.Server(config)
    log.info(
        "gRPC on %s:%d; HTTP on http://%s:%d", settings.host, grpc_port, settings.host, settings.http_port
    )
    try:
        # Returns on SIGINT/SIGTERM (uvicorn handles the signals), then gRPC drains.
        await server.serve()
    finally:
        await grpc_gateway.stop()
        await core.close()


def main() -> int:
    try:
        settings = GatewaySettings()
    except ValidationError as exc:
        print(f"gateway: invalid GATEWAY_* settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.cpus:  # checked with the settings: a list this machine cannot give is refused there
        log.info("running on CPUs %s", sorted(pin_process(settings.cpus)))
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
