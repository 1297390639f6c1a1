"""Progress of long loops (indexing, training, distillation): a tqdm bar on a terminal; in a log
file or a pipe, one log line every few seconds and one at the end instead of a redrawn bar
(tqdm's carriage-return updates made the demo's log of one training run megabytes)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from tqdm import tqdm

T = TypeVar("T")
LINE_INTERVAL_S = 5.0
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
UNSIZED_LINE_FORMAT = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"
log = logging.getLogger("clipsearch.progress")

if TYPE_CHECKING:  # generic in the stubs only
    _Tqdm = tqdm[Any]
else:
    _Tqdm = tqdm


@overload
def progress_bar(iterable: Iterable[T], **options: Any) -> tqdm[T]: ...
@overload
def progress_bar(iterable: None = None, **options: Any) -> tqdm[NoReturn]: ...
def progress_bar(iterable: Iterable[Any] | None = None, **options: Any) -> tqdm[Any]:
    """`tqdm(iterable, **options)` where stderr is a terminal, else a tqdm that logs lines."""
    if sys.stderr.isatty():
        return tqdm(iterable, **options)
    return LineProgress(iterable, **options)


class _Discard:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


class LineProgress(_Tqdm):
    """A tqdm whose display is a log line (INFO, logger clipsearch.progress) at most every
    `interval_s`, and a last one when it closes."""

    def __init__(
        self, iterable: Iterable[T] | None = None, *, interval_s: float = LINE_INTERVAL_S, **options: Any
    ):
        self._interval_s = interval_s
        self._last_line_at = float("-inf")
        self._finished = False
        options.pop("dynamic_ncols", None)
        options.pop("leave", None)
        sized = options.get("total") is not None or hasattr(iterable, "__len__")
        line_format = LINE_FORMAT if sized else UNSIZED_LINE_FORMAT
        super().__init__(iterable, file=_Discard(), bar_format=line_format, leave=True, **options)

    def display(self, msg: str | None = None, pos: int | None = None) -> None:
        if msg == "" or self._finished:  # a request to clear the bar, or the close after the last line
            return
        now = time.monotonic()
        if now - self._last_line_at >= self._interval_s:
            self._last_line_at = now
            log.info("%s", str(self))  # now: the record may be formatted later

    def close(self) -> None:
        if not self.disable and not self._finished:
            self._last_line_at = float("-inf")
            self.display()
            self._finished = True
        super().close()
