"""`python -m services.gateway`: HTTP (uvicorn) and gRPC in one process, sharing one search core;
set up by GATEWAY_* variables or flags (`--help`)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import uvicorn

from clipsearch.bootstrap import UserError, run_service
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
        # Uvicorn's records go through the one logging set-up (clipsearch.logs), not its own.
        log_config=None,
        log_level=settings.log_level.lower(),
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


def main(argv: Sequence[str] | None = None, prog: str = "python -m services.gateway") -> int:
    return run_service("gateway", GatewaySettings, run, argv=argv, prog=prog)


def run(settings: GatewaySettings) -> None:
    try:
        asyncio.run(serve(settings))
    except OSError as exc:  # the port is taken, or similar
        raise UserError(f"cannot start: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
