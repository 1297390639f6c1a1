"""An emoji collection behind the real gateway, over HTTP on loopback: filters by style and group,
captions as a target, and a live model upgrade under a steady query load with the real indexer and
an encoder that picks up the new checkpoint from its models directory, then a rollback.

Each answer must be exactly what one model gives: the query embedded by the model that built the
version it searched. A query embedded by one model and searched in the other's version would give
other hits or other scores than both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from clipsearch.checkpoint import weights_fingerprint
from clipsearch.checkpoint_files import copy_checkpoint
from clipsearch.encoder_client import EncoderClient
from clipsearch.store import VectorStore
from services.encoder.server import EncoderServer, serve_in_thread
from services.encoder.settings import EncoderSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.indexer.job import run_index, run_rollback
from services.indexer.settings import IndexerSettings
from tests.conftest import EmojiModels
from tests.encoder.test_reload import eventually
from tests.gateway.conftest import serve_http

API = "/api/v1"
QUERIES = ("red circle", "star", "blue square")
K = 8


@dataclass
class Stack:
    root: Path
    models_dir: Path
    encoder: EncoderServer
    url: str
    app: Any

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.encoder.port}"

    def indexer(self, **overrides: object) -> IndexerSettings:
        values: dict[str, object] = {
            "encoder": self.target,
            "store_path": self.root / "qdrant",
            "media_dir": self.root / "media",
            "collection": "emoji",
            "source": "emoji",
            "model": "emoji",
            "batch_size": 8,
            "progress": False,
            **overrides,
        }
        return IndexerSettings(**values)  # type: ignore[arg-type]

    def store(self) -> VectorStore:
        """The gateway's open store. The indexer opens its own, as another process would: the
        embedded store lets an indexer publish beside a gateway serving the live version."""
        store: VectorStore = self.app.state.core.collections.store.call(lambda opened: opened)
        return store


@pytest.fixture
def stack(tmp_path: Path, emoji_models: EmojiModels, emoji_layout: Path) -> Iterator[Stack]:
    """The untrained model serves "emoji" from a models directory; its version is indexed and
    published; the gateway serves it over HTTP."""
    models_dir = tmp_path / "models"
    copy_checkpoint(emoji_models.worse, models_dir / "emoji")
    encoder_settings = EncoderSettings(
        models_dir=models_dir,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        text_runtime="torch",
        cpu_mode="fp32",
        reload_s=0.2,
        shutdown_grace_s=1.0,
    )
    with serve_in_thread(encoder_settings) as encoder:
        stack = Stack(tmp_path, models_dir, encoder, "", None)
        first = asyncio.run(run_index(stack.indexer(emoji_dir=emoji_layout)))
        assert first.published
        settings = GatewaySettings(
            encoder=stack.target,
            store_path=str(tmp_path / "qdrant"),
            media_dir=str(tmp_path / "media"),
            collection="emoji",
            info_ttl_s=0.0,
            encoder_timeout_s=10.0,
        )
        stack.app = create_app(settings)
        with serve_http(stack.app) as url:
            stack.url = url
            yield stack


async def test_filters_by_style_and_group_and_captions_name_the_emoji(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        listed = (await client.get(f"{API}/collections")).json()
        line_art = await client.post(
            f"{API}/search/text",
            json={
                "query": "red circle",
                "collection": "emoji",
                "k": 24,
                "filter": {"style": "openmoji-line"},
            },
        )
        travel = await client.get(
            f"{API}/search/text",
            params={"q": "star", "collection": "emoji", "k": 24, "filter": '{"group": "travel & places"}'},
        )
        both = await client.post(
            f"{API}/search/text",
            json={
                "query": "a square",
                "collection": "emoji",
                "k": 24,
                "filter": {"group": "symbols", "style": ["google", "twitter"]},
            },
        )
        named = await client.post(
            f"{API}/search/text",
            json={"query": "star: medium", "collection": "emoji", "k": 4, "target": "captions"},
        )
    emoji = next(c for c in listed["collections"] if c["name"] == "emoji")
    assert emoji["filter_fields"]["style"] == ["google", "openmoji", "openmoji-line", "twitter"]
    assert emoji["filter_fields"]["group"] == ["symbols", "travel & places"]
    assert emoji["targets"] == ["images", "captions"]
    assert "OpenMoji" in emoji["attribution"]
    for reply in (line_art, travel, both, named):
        assert reply.status_code == 200, reply.text
    assert {hit["payload"]["style"] for hit in line_art.json()["hits"]} == {"openmoji-line"}
    assert len(line_art.json()["hits"]) == 6
    assert [hit["payload"]["class_name"] for hit in travel.json()["hits"]] == ["star"] * 4
    hits = both.json()["hits"]
    assert len(hits) == 10  # five symbols in two styles
    assert {(h["payload"]["group"], h["payload"]["style"]) for h in hits} == {
        ("symbols", "google"),
        ("symbols", "twitter"),
    }
    # The caption of "star" is its label and keyword: the four styles answer it at cosine 1.
    assert [hit["payload"]["class_name"] for hit in named.json()["hits"]] == ["star"] * 4
    assert all(hit["score"] == pytest.approx(1.0, abs=1e-4) for hit in named.json()["hits"])


async def expected_answers(
    stack: Stack, fingerprint: str, version: str
) -> dict[str, list[tuple[str, float]]]:
    """What a query gets when `fingerprint` embeds it and `version` is searched."""
    async with EncoderClient(stack.target) as encoder:
        vectors = await encoder.embed_texts(list(QUERIES), model=fingerprint)
    store = stack.store()
    return {
        query: [(hit.id, hit.score) for hit in store.search(version, vector, k=K)]
        for query, vector in zip(QUERIES, vectors, strict=True)
    }


def same(answer: list[tuple[str, float]], expected: list[tuple[str, float]]) -> bool:
    return [i for i, _ in answer] == [i for i, _ in expected] and np.allclose(
        [s for _, s in answer], [s for _, s in expected], atol=1e-5
    )


async def test_an_upgrade_under_load_loses_no_request_and_never_mixes_models(
    stack: Stack, emoji_models: EmojiModels, emoji_layout: Path
) -> None:
    old_fingerprint = weights_fingerprint(emoji_models.worse)
    new_fingerprint = weights_fingerprint(emoji_models.better)
    old_version = stack.store().collection_info("emoji")
    assert old_version is not None
    assert old_version.fingerprint == old_fingerprint
    answers: list[tuple[str, httpx.Response]] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def steady(client: httpx.AsyncClient, offset: int) -> None:
        number = offset
        while not stop.is_set():
            query = QUERIES[number % len(QUERIES)]
            number += 1
            try:
                reply = await client.post(
                    f"{API}/search/text", json={"query": query, "collection": "emoji", "k": K}
                )
            except httpx.HTTPError as exc:  # a lost request: counted, never retried
                failures.append(exc)
                continue
            answers.append((query, reply))

    async def answered(count: int) -> None:
        wanted = len(answers) + count

        async def enough() -> bool:
            return len(answers) >= wanted

        await eventually(enough, f"{count} more answers")

    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        load = [asyncio.create_task(steady(client, offset)) for offset in range(4)]
        await answered(20)

        # Training wrote a better checkpoint: the encoder picks it up and serves it as "emoji",
        # the old weights still served by fingerprint for the live version.
        copy_checkpoint(emoji_models.better, stack.models_dir / "emoji")
        async with EncoderClient(stack.target) as encoder:

            async def new_model_served() -> bool:
                return (await encoder.model_info("emoji")).fingerprint == new_fingerprint

            await eventually(new_model_served, "the encoder serves the new checkpoint")
        await answered(20)

        # The upgrade: the real indexer builds the new model's version beside the live one,
        # evaluates both and publishes the new one, all while the queries run.
        report = await run_index(stack.indexer(emoji_dir=emoji_layout))
        assert report.published, report.summary()
        assert report.evaluation is not None
        assert report.evaluation.gated
        await answered(40)
        upgraded_answers = len(answers)

        back = await run_rollback(stack.indexer())
        assert back.restored.name == old_version.name
        await answered(40)
        stop.set()
        await asyncio.gather(*load)

    assert failures == []
    assert [reply.status_code for _, reply in answers] == [200] * len(answers), next(
        reply.text for _, reply in answers if reply.status_code != 200
    )
    old = await expected_answers(stack, old_fingerprint, old_version.name)
    new = await expected_answers(stack, new_fingerprint, report.collection)
    assert all(not same(old[query], new[query]) for query in QUERIES)  # the two models answer apart
    by_model: list[str] = []
    for query, reply in answers:
        hits = reply.json()["hits"]
        got = [(hit["id"], hit["score"]) for hit in hits]
        if same(got, old[query]):
            by_model.append(old_fingerprint)
        elif same(got, new[query]):
            by_model.append(new_fingerprint)
        else:
            pytest.fail(f"{query!r} got an answer from neither model alone: {got}")
        assert {hit["payload"]["model_fingerprint"] for hit in hits} == {by_model[-1]}
    # Old answers, then new ones after the publish, then old ones again after the rollback.
    assert by_model[0] == old_fingerprint
    assert new_fingerprint in by_model[:upgraded_answers]
    assert by_model[-1] == old_fingerprint
