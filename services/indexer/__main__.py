"""`python -m services.indexer`: index a collection (settings from INDEXER_* env, overridden by flags;
`--help` lists them)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from clipsearch.bootstrap import UserError, run_service
from clipsearch.logs import REQUEST_ID, new_request_id

from .settings import IndexerSettings

INTERRUPTED = 130


def main(argv: Sequence[str] | None = None, prog: str = "python -m services.indexer") -> int:
    return run_service("indexer", IndexerSettings, index, argv=argv, prog=prog)


def index(settings: IndexerSettings) -> int:
    from .job import (  # once the settings are good: --help answers at once
        USER_ERRORS,
        run_index,
        run_rollback,
    )

    # One id for the run: its log lines and its encoder calls name it.
    token = REQUEST_ID.set(f"index-{new_request_id()}")
    try:
        if settings.rollback:
            print(asyncio.run(run_rollback(settings)).summary())
            return 0
        report = asyncio.run(run_index(settings))
    except USER_ERRORS as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        print("indexer: interrupted; run again to resume", file=sys.stderr)
        return INTERRUPTED
    finally:
        REQUEST_ID.reset(token)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
