"""The encoder picks up new and changed checkpoints while it serves, without a restart: a models
directory and ENCODER_MODELS entries, watched on loopback with real checkpoints written the way the
trainer writes them (clipsearch.checkpoint_files.write_dir_atomically) and the ways it does not."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from clipsearch.checkpoint import WEIGHTS, weights_fingerprint
from clipsearch.checkpoint_files import copy_checkpoint
from clipsearch.encoder_client import EncoderClient, EncoderModelNotFound
from services.encoder.server import EncoderServer, serve_in_thread
from services.encoder.settings import EncoderSettings

POLL_S = 0.1
WAIT_S = 60.0  # a bound on a wait that should take a few polls, not an expectation


def copy_all_but_half_the_weights(checkpoint: Path, target: Path) -> bytes:
    """A copy in place, file by file, stalled halfway through the weights; returns the weights."""
    target.mkdir()
    for path in sorted(checkpoint.iterdir()):
        if path.name != WEIGHTS and path.is_file():
            shutil.copy2(path, target / path.name)
    weights = (checkpoint / WEIGHTS).read_bytes()
    (target / WEIGHTS).write_bytes(weights[: len(weights) // 2])
    return weights


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {WAIT_S:g} s: {what}")
        await asyncio.sleep(POLL_S)


async def served(client: EncoderClient) -> dict[str, list[str]]:
    """name -> fingerprints served under it (current first)."""
    found: dict[str, list[str]] = {}
    for model in await client.list_models():
        found.setdefault(model.name, []).append(model.fingerprint)
    return found


@pytest.fixture
def models_dir(tmp_path: Path, tiny_checkpoint: Path) -> Path:
    directory = tmp_path / "models"
    copy_checkpoint(tiny_checkpoint, directory / "digits")
    return directory


@pytest.fixture
def watching(models_dir: Path) -> Iterator[EncoderServer]:
    settings = EncoderSettings(
        models_dir=models_dir,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        text_runtime="torch",
        cpu_mode="fp32",
        reload_s=POLL_S,
        keep_replaced=1,
        shutdown_grace_s=0.2,
    )
    with serve_in_thread(settings) as server:
        yield server


async def test_a_new_model_directory_is_served_while_the_others_keep_answering(
    watching: EncoderServer, models_dir: Path, other_tiny_checkpoint: Path, tiny_checkpoint: Path
) -> None:
    async with EncoderClient(f"127.0.0.1:{watching.port}") as client:
        assert await served(client) == {"digits": [weights_fingerprint(tiny_checkpoint)]}
        before = await client.embed_texts(["seven"], model="digits")
        answers: list[np.ndarray] = []
        stop = asyncio.Event()

        async def steady() -> None:  # a caller of the old model throughout
            while not stop.is_set():
                answers.append(await client.embed_texts(["seven"], model="digits"))
                await asyncio.sleep(0.01)

        load = asyncio.create_task(steady())
        copy_checkpoint(other_tiny_checkpoint, models_dir / "letters")

        async def letters_served() -> bool:
            return "letters" in await served(client)

        await eventually(letters_served, "the new directory is served")
        stop.set()
        await load
        assert await served(client) == {
            "digits": [weights_fingerprint(tiny_checkpoint)],
            "letters": [weights_fingerprint(other_tiny_checkpoint)],
        }
        assert await client.serving("letters")
        assert await client.serving(weights_fingerprint(other_tiny_checkpoint))
        assert answers  # the old model answered every call meanwhile (a failure would have raised)
        for answer in answers:
            np.testing.assert_array_equal(answer, before)


async def test_a_replaced_checkpoint_takes_the_name_and_the_old_weights_stay_by_fingerprint(
    watching: EncoderServer,
    models_dir: Path,
    tiny_checkpoint: Path,
    other_tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    old, new = weights_fingerprint(tiny_checkpoint), weights_fingerprint(other_tiny_checkpoint)
    async with EncoderClient(f"127.0.0.1:{watching.port}") as client:
        old_vector = await client.embed_texts(["three"], model=old)
        copy_checkpoint(other_tiny_checkpoint, models_dir / "digits")

        async def replaced() -> bool:
            return (await client.model_info("digits")).fingerprint == new

        await eventually(replaced, "the name serves the new weights")
        assert await served(client) == {"digits": [new, old]}
        # The old weights answer by fingerprint exactly as before; the name gives the new ones.
        np.testing.assert_array_equal(await client.embed_texts(["three"], model=old), old_vector)
        assert not np.allclose(await client.embed_texts(["three"], model="digits"), old_vector)
        assert await client.serving(old)

        # A third checkpoint: with keep_replaced=1 the oldest weights are unloaded.
        third = tmp_path / "third"
        shutil.copytree(tiny_checkpoint, third)
        weights = (third / WEIGHTS).read_bytes()
        (third / WEIGHTS).write_bytes(weights[:-4] + bytes(4))  # other weights, same layout
        copy_checkpoint(third, models_dir / "digits")
        newest = weights_fingerprint(third)

        async def replaced_again() -> bool:
            return (await client.model_info("digits")).fingerprint == newest

        await eventually(replaced_again, "the name serves the third weights")
        assert await served(client) == {"digits": [newest, new]}
        with pytest.raises(EncoderModelNotFound):
            await client.embed_texts(["three"], model=old)
        assert not await client.serving(old)


async def test_a_half_written_checkpoint_is_never_loaded(
    watching: EncoderServer, models_dir: Path, other_tiny_checkpoint: Path
) -> None:
    """Copied in place file by file, with the weights stalled half-written for many polls: never
    served until whole, and then with the whole file's fingerprint. Hidden directories never are."""
    async with EncoderClient(f"127.0.0.1:{watching.port}") as client:
        shutil.copytree(other_tiny_checkpoint, models_dir / ".staging-by-hand")
        target = models_dir / "slow"
        weights = copy_all_but_half_the_weights(other_tiny_checkpoint, target)
        await asyncio.sleep(POLL_S * 20)  # many looks at the half-written file
        assert set(await served(client)) == {"digits"}
        assert await client.serving()  # the server kept serving

        (target / WEIGHTS).write_bytes(weights)

        async def slow_served() -> bool:
            return "slow" in await served(client)

        await eventually(slow_served, "the completed directory is served")
        assert (await served(client))["slow"] == [weights_fingerprint(other_tiny_checkpoint)]
        assert ".staging-by-hand" not in await served(client)


async def test_an_encoder_models_entry_is_reloaded_when_its_directory_changes(
    tmp_path: Path, tiny_checkpoint: Path, other_tiny_checkpoint: Path
) -> None:
    directory = tmp_path / "mnist"
    copy_checkpoint(tiny_checkpoint, directory)
    settings = EncoderSettings(
        models=f"mnist={directory}",
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        text_runtime="torch",
        cpu_mode="fp32",
        reload_s=POLL_S,
    )
    with serve_in_thread(settings) as server:
        async with EncoderClient(f"127.0.0.1:{server.port}") as client:
            assert (await client.model_info()).fingerprint == weights_fingerprint(tiny_checkpoint)
            copy_checkpoint(other_tiny_checkpoint, directory)
            new = weights_fingerprint(other_tiny_checkpoint)

            async def reloaded() -> bool:
                return (await client.model_info("mnist")).fingerprint == new

            await eventually(reloaded, "the entry serves its directory's new weights")
            # Unnamed calls still reach the one name, now with the new weights.
            assert (await client.model_info()).fingerprint == new
