"""`python -m services.encoder`: run the encoder gRPC server with settings from ENCODER_* variables."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic import ValidationError

from clipsearch.affinity import pin_process
from clipsearch.checkpoint import CheckpointError
from services.encoder.server import serve
from services.encoder.settings import EncoderSettings

log = logging.getLogger("services.encoder")


def main() -> int:
    try:
        settings = EncoderSettings()
    except ValidationError as exc:
        print(f"encoder: invalid ENCODER_* settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.cpus:  # checked with the settings: a list this machine cannot give is refused there
        log.info("running on CPUs %s", sorted(pin_process(settings.cpus)))
    try:
        asyncio.run(serve(settings))
    except CheckpointError as exc:
        log.error("cannot load the models (none served): %s", exc)
        return 1
    except OSError as exc:  # the port is taken, or similar
        log.error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
