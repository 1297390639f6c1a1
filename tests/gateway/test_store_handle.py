"""StoreHandle: which stores are called on the event loop, and which from a worker thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipsearch.store import open_store
from services.gateway.deps import build_core
from services.gateway.schemas import TextQuery
from services.gateway.store_handle import StoreHandle
from tests.gateway.conftest import Indexed, settings_for


def test_only_an_open_in_process_store_is_called_inline(tmp_path: Path) -> None:
    edge = StoreHandle(lambda: open_store(None, tmp_path / "edge"), "edge")
    assert not edge.in_process  # not open yet: opening may wait on a lock, so it runs in a thread
    edge.ping()
    assert edge.in_process
    edge.close()
    local = StoreHandle(lambda: open_store(None, tmp_path / "local", backend="local"), "local mode")
    local.ping()
    assert not local.in_process  # slow Python search: keep it off the event loop
    local.close()


async def test_edge_searches_run_on_the_event_loop_thread(indexed: Indexed, encoder_target: str) -> None:
    # Edge holds the GIL while it searches: a worker thread would add hand-offs and no parallelism.
    core = build_core(settings_for(indexed, encoder_target))
    threads: list[str] = []
    original = core.collections.store.call

    def recording(call: Callable[[Any], Any]) -> Any:
        threads.append(threading.current_thread().name)
        return original(call)

    core.collections.store.call = recording  # type: ignore[method-assign]
    try:
        await core.search_text(TextQuery(query="seven", k=3))  # opens the store, in a worker thread
        found = await core.search_text(TextQuery(query="the number seven", k=3))  # searches it inline
    finally:
        await core.close()
    assert len(found.hits) == 3
    loop_thread = threading.current_thread().name
    assert threads[0] != loop_thread
    assert threads[-1] == loop_thread
