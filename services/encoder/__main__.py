"""`python -m services.encoder`: the encoder gRPC server, set up by ENCODER_* variables or flags (`--help`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from clipsearch.bootstrap import UserError, run_service
from services.encoder.settings import EncoderSettings


def main(argv: Sequence[str] | None = None, prog: str = "python -m services.encoder") -> int:
    return run_service("encoder", EncoderSettings, serve, argv=argv, prog=prog)


def serve(settings: EncoderSettings) -> None:
    # Imported once the settings are good: --help and a settings mistake answer without loading torch.
    from clipsearch.checkpoint import CheckpointError
    from services.encoder.server import serve as serve_grpc

    try:
        asyncio.run(serve_grpc(settings))
    except CheckpointError as exc:
        raise UserError(f"cannot load the models (none served): {exc}") from None
    except OSError as exc:  # the port is taken, or similar
        raise UserError(f"cannot start: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
