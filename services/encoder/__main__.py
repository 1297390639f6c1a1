"""`python -m services.encoder`: the encoder gRPC server, set up by ENCODER_* variables or flags (`--help`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from clipsearch.bootstrap import run_service
from clipsearch.checkpoint import CheckpointError
from services.encoder.settings import EncoderSettings


def main(argv: Sequence[str] | None = None, prog: str = "python -m services.encoder") -> int:
    return run_service(
        "encoder",
        EncoderSettings,
        serve,
        argv=argv,
        prog=prog,
        # OSError: the port is taken, or similar.
        user_errors={CheckpointError: "cannot load the model", OSError: "cannot start"},
    )


def serve(settings: EncoderSettings) -> None:
    from services.encoder.server import serve as serve_grpc

    asyncio.run(serve_grpc(settings))


if __name__ == "__main__":
    sys.exit(main())
