"""Faults: the encoder killed under load, the indexer killed mid-run, the store unreachable or
locked, a broken checkpoint. Clear errors, bounded waits, recovery, nothing lost."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clipsearch.processes import free_port, run
from clipsearch.store import open_store
from services.gateway.app import create_app
from services.indexer.__main__ import main as indexer_main
from services.indexer.sources import item_id
from tests.gateway.conftest import Indexed, serving
from tests.hardening.conftest import hardening_settings
from tests.indexer.conftest import write_mnist
from tests.processes import encoder_env, python_env, start

API = "/api/v1"
CLIENTS = 4
# Recovery promised once the encoder is back on its port (the client reconnects within ~2 s).
RECOVERY_S = 5.0
# A request taking longer than this while a dependency is down counts as a hang.
HANG_S = 10.0
ENCODER_KEY = "encoder-secret-4f9b1c"


@pytest.mark.slow
async def test_encoder_killed_under_load_is_503_then_recovers(
    indexed: Indexed, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "encoder.log"
    env = encoder_env(tiny_checkpoint, port, ENCODER_API_KEY=ENCODER_KEY)
    encoder = start("services.encoder", env, log)
    settings = hardening_settings(
        indexed, f"127.0.0.1:{port}", encoder_timeout_s=1.0, encoder_api_key=ENCODER_KEY
    )
    results: list[tuple[float, int, float]] = []  # (sent at, status, seconds)
    stopping = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, number: int) -> None:
        while not stopping.is_set():
            sent = time.monotonic()
            reply = await client.post(f"{API}/search/text", json={"query": f"digit {number}", "k": 3})
            results.append((sent, reply.status_code, time.monotonic() - sent))
            await asyncio.sleep(0.02)

    try:
        await asyncio.to_thread(encoder.wait_grpc_serving, f"127.0.0.1:{port}")
        async with serving(create_app(settings)) as client:
            load = [asyncio.create_task(client_loop(client, n)) for n in range(CLIENTS)]
            await asyncio.sleep(1.0)
            encoder.send_signal(signal.SIGKILL)
            encoder.wait(timeout=10)
            killed_at = time.monotonic()
            await asyncio.sleep(2.0)  # the load goes on against a dead encoder
            restarted_at = time.monotonic()
            encoder = start("services.encoder", env, log)
            await asyncio.to_thread(encoder.wait_grpc_serving, f"127.0.0.1:{port}")
            back_at = time.monotonic()
            while not any(sent > back_at and status == 200 for sent, status, _ in results):
                assert time.monotonic() - back_at < 30, "the gateway did not recover"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            stopping.set()
            await asyncio.gather(*load)
    finally:
        encoder.stop()
    statuses = {status for _, status, _ in results}
    assert statuses <= {200, 503}, statuses
    during = [status for sent, status, _ in results if killed_at + 0.2 < sent < restarted_at]
    assert during, "no request was sent while the encoder was down"
    assert set(during) == {503}
    assert max(seconds for _, _, seconds in results) < HANG_S
    recovered = min(sent + seconds for sent, status, seconds in results if sent > back_at and status == 200)
    assert recovered - back_at < RECOVERY_S
    assert ENCODER_KEY not in log.read_text()
    print(
        f"\nencoder kill: {len(results)} requests, {len(during)} answered 503 while down "
        f"(slowest {max(s for _, _, s in results):.2f} s), recovered {recovered - back_at:.2f} s "
        f"after the encoder was back"
    )


def _indexer_args(root: Path, encoder: str) -> list[str]:
    return [
        "--encoder",
        encoder,
        "--store-path",
        str(root / "qdrant"),
        "--media-dir",
        str(root / "media"),
        "--collection",
        "digits",
        "--mnist-dir",
        str(root / "mnist"),
        "--batch-size",
        "16",
        "--concurrency",
        "2",
        "--no-progress",
    ]


@pytest.mark.slow
def test_indexer_killed_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, encoder_target: str
) -> None:
    items = 1500
    write_mnist(tmp_path / "mnist", test=items, train=0, seed=3)
    args = _indexer_args(tmp_path, encoder_target)
    rng = random.Random(8)
    kill_after = sorted(rng.sample(range(20, items - 100), 3))  # media files written before each kill
    kills = 0
    for threshold in kill_after:
        log = tmp_path / f"indexer-{threshold}.log"
        process = start("services.indexer", python_env(), log, *args)
        while process.poll() is None and len(list((tmp_path / "media").glob("*.png"))) < threshold:
            time.sleep(0.005)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
    assert kills >= 2, "the runs finished before they could be killed"
    final = run("services.indexer", *args, env=python_env(), timeout_s=300)
    assert final.returncode == 0, final.stderr
    store = open_store(None, tmp_path / "qdrant")
    try:
        info = store.collection_info("digits")
        assert info is not None
        stored = store.ids(info.name)
    finally:
        store.close()
    expected = {item_id("mnist:test", str(index)) for index in range(items)}
    assert len(stored) == len(set(stored)), "duplicate ids"
    assert set(stored) == expected, (
        f"missing {len(expected - set(stored))}, extra {len(set(stored) - expected)}"
    )
    print(
        f"\nindexer: killed {kills} times at {kill_after}; {len(stored)}/{items} items, 0 lost, 0 duplicated"
    )


async def test_unreachable_qdrant_is_a_clear_503(indexed: Indexed, encoder_target: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with serving(create_app(hardening_settings(indexed, encoder_target, qdrant_url=closed))) as client:
        started = time.monotonic()
        search = await client.post(f"{API}/search/text", json={"query": "seven"})
        took = time.monotonic() - started
        ready = await client.get("/readyz")
    assert search.status_code == 503
    assert "store" in search.json()["detail"]
    assert took < HANG_S
    assert ready.status_code == 503


def test_unreachable_qdrant_stops_the_indexer_with_a_message(
    tmp_path: Path, encoder_target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_mnist(tmp_path / "mnist", test=20, train=0)
    args = [*_indexer_args(tmp_path, encoder_target), "--qdrant-url", f"http://127.0.0.1:{free_port()}"]
    assert indexer_main(args) == 1
    err = capsys.readouterr().err
    assert "127.0.0.1" in err
    assert "Traceback" not in err


_HOLD_STORE = """
import sys, time
from pathlib import Path
from clipsearch.store import open_store
store = open_store(None, Path(sys.argv[1]))
assert store.collection_info("digits") is not None  # opens the live version, as a gateway does
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture
def held_store(indexed: Indexed, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A copy of the indexed store whose live version another process holds open."""
    store_copy = tmp_path / "qdrant"
    shutil.copytree(indexed.store_path, store_copy)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_STORE, str(store_copy)],
        env=python_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        yield store_copy, holder
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()


async def test_a_version_held_by_another_process_is_a_clear_error_and_a_new_one_is_built_beside_it(
    indexed: Indexed,
    encoder_target: str,
    tmp_path: Path,
    held_store: tuple[Path, subprocess.Popen[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_copy, holder = held_store
    settings = hardening_settings(indexed, encoder_target, store_path=str(store_copy))
    async with serving(create_app(settings)) as client:
        held = await client.post(f"{API}/search/text", json={"query": "seven"})
        write_mnist(tmp_path / "mnist", test=20, train=0)
        args = _indexer_args(tmp_path, encoder_target)
        beside = await asyncio.to_thread(indexer_main, args)  # a new version, published beside the held one
        holder.send_signal(signal.SIGKILL)  # dies holding the version: the OS releases it
        await asyncio.to_thread(holder.wait, 10)
        back = await client.post(f"{API}/search/text", json={"query": "seven", "k": 100})
    assert held.status_code == 503
    assert "in use" in held.json()["detail"]
    assert "Traceback" not in capsys.readouterr().err
    assert beside == 0
    assert back.status_code == 200, back.text
    assert {hit["payload"]["split"] for hit in back.json()["hits"]} == {"test"}
    assert len(back.json()["hits"]) == 20  # the new version's 20 MNIST images


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_encoder_refuses_a_corrupt_weights_file(tiny_checkpoint: Path, tmp_path: Path, damage: str) -> None:
    broken = tmp_path / "broken-checkpoint"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(
        b"\x07not safetensors at all" * 100 if damage == "garbage" else data[: len(data) // 2]
    )
    result = run("services.encoder", env=encoder_env(broken, free_port()), timeout_s=120)
    assert result.returncode != 0
    assert "model.safetensors" in result.stderr
    assert "Traceback" not in result.stderr
