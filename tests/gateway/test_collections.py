"""Several collections behind one gateway, each searched with the model that built it.

One real encoder on loopback serves two tiny models ("first", "second"); one embedded store holds
a collection built by each, and one built by a model the encoder does not serve.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from clipsearch.store import IMAGE_VECTOR, Point, VectorStore
from clipsearch.v1 import search_pb2, search_pb2_grpc
from services.encoder.server import EncoderServer
from services.gateway.app import create_app
from services.gateway.deps import build_core
from services.gateway.grpc_server import running_grpc_server
from services.gateway.search import SearchCore
from tests.gateway.conftest import Indexed, build_index, digit_png, embed_in_thread, serving, settings_for

API = "/api/v1"
ORPHAN_MODEL = "retired-model"


@pytest.fixture(scope="module")
def two_collections(tmp_path_factory: pytest.TempPathFactory, two_model_encoder: EncoderServer) -> Indexed:
    """ "left" built by model "first", "right" by "second" (same images), "orphan" by a model no
    encoder serves; "left" is the default."""
    root = tmp_path_factory.mktemp("collections")
    target = f"127.0.0.1:{two_model_encoder.port}"
    left = build_index(root, target, collection="left", model="first")
    build_index(root, target, collection="right", model="second", shifts=(0,))
    build_index(
        root,
        target,
        collection="orphan",
        fingerprint="f" * 64,
        shifts=(0,),
        recorded_model=ORPHAN_MODEL,
        model="first",
    )
    return left


@asynccontextmanager
async def _gateway(
    indexed: Indexed, server: EncoderServer, **overrides: object
) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings_for(indexed, f"127.0.0.1:{server.port}", collection="left", **overrides)
    async with serving(create_app(settings)) as client:
        yield client


def _top(reply: httpx.Response) -> tuple[str, float]:
    assert reply.status_code == 200, reply.text
    hit = reply.json()["hits"][0]
    return hit["id"], hit["score"]


async def test_each_collection_is_searched_with_its_own_model(
    two_collections: Indexed, two_model_encoder: EncoderServer
) -> None:
    item = two_collections.items[3]
    upload = {"file": ("q.png", item.png, "image/png")}
    async with _gateway(two_collections, two_model_encoder) as client:
        left = await client.post(f"{API}/search/image", files=upload, data={"collection": "left"})
        right = await client.post(f"{API}/search/image", files=upload, data={"collection": "right"})
        default = await client.post(f"{API}/search/image", files=upload)
        text_left = await client.post(f"{API}/search/text", json={"query": "three", "collection": "left"})
        text_right = await client.get(f"{API}/search/text", params={"q": "three", "collection": "right"})
    # The same picture, embedded by the model that built each collection, finds itself at cosine 1.
    assert _top(left) == (item.id, pytest.approx(1.0, abs=1e-3))
    right_id, right_score = _top(right)
    assert right_score == pytest.approx(1.0, abs=1e-3)
    assert right_id != item.id  # "right" holds its own points, built by the other model
    assert _top(default)[0] == item.id
    assert left.json()["collection"] == "left"
    assert right.json()["collection"] == "right"
    assert text_left.json()["collection"] == "left"
    assert text_right.json()["collection"] == "right"
    # And the text query vector differs with the model: the two rankings of "three" are not one.
    assert text_left.json()["hits"][0]["score"] != pytest.approx(text_right.json()["hits"][0]["score"])


async def test_text_queries_are_embedded_by_the_collections_model(
    two_collections: Indexed, two_model_encoder: EncoderServer
) -> None:
    """The scores a text query gets are the cosines with that collection's model's text vector."""
    target = f"127.0.0.1:{two_model_encoder.port}"
    from clipsearch.encoder_client import EncoderClient

    async with EncoderClient(target) as encoder:
        second_text = (await encoder.embed_texts(["a seven"], model="second"))[0]
        second_images = await encoder.embed_images(
            [i.png for i in two_collections.items[:10]], model="second"
        )
    expected = float(np.max(second_images @ second_text))
    async with _gateway(two_collections, two_model_encoder) as client:
        reply = await client.post(f"{API}/search/text", json={"query": "a seven", "collection": "right"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["hits"][0]["score"] == pytest.approx(expected, abs=1e-4)


async def test_a_collection_whose_model_is_not_served_is_503_and_the_others_answer(
    two_collections: Indexed, two_model_encoder: EncoderServer
) -> None:
    async with _gateway(two_collections, two_model_encoder) as client:
        orphan = await client.post(f"{API}/search/text", json={"query": "one", "collection": "orphan"})
        left = await client.post(f"{API}/search/text", json={"query": "one", "collection": "left"})
        right = await client.post(f"{API}/search/text", json={"query": "one", "collection": "right"})
        ready = await client.get("/readyz")
    assert orphan.status_code == 503
    assert ORPHAN_MODEL in orphan.json()["detail"]
    assert left.status_code == right.status_code == 200
    assert ready.status_code == 200  # the default collection answers


async def test_collections_lists_models_points_vectors_and_filter_values(
    two_collections: Indexed, two_model_encoder: EncoderServer
) -> None:
    async with _gateway(two_collections, two_model_encoder) as client:
        reply = await client.get(f"{API}/collections")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["default_collection"] == "left"
    listed = {c["name"]: c for c in body["collections"]}
    assert set(listed) == {"left", "orphan", "right"}
    left, right, orphan = listed["left"], listed["right"], listed["orphan"]
    assert (left["model"], right["model"]) == ("first", "second")
    assert left["points"] == 20
    assert right["points"] == 10
    assert left["vectors"] == ["image"]
    assert left["targets"] == ["images"]
    assert left["filter_fields"]["label"] == list(range(10))
    assert left["filter_fields"]["style"] == ["plain", "shifted"]
    assert left["filter_fields"]["group"] == ["even", "odd"]
    assert right["filter_fields"]["style"] == ["plain"]
    assert left["sketch_normalization"] == "mnist"
    assert left["ready"]
    assert right["ready"]
    assert not orphan["ready"]
    assert ORPHAN_MODEL in orphan["problem"]
    assert orphan["model"] == ORPHAN_MODEL


async def test_collection_is_a_json_field_a_form_field_and_a_query_parameter(
    two_collections: Indexed, two_model_encoder: EncoderServer
) -> None:
    sketch = {"file": ("s.png", digit_png(4, sketch=True, size=200), "image/png")}
    async with _gateway(two_collections, two_model_encoder) as client:
        replies = [
            await client.post(f"{API}/search/sketch", files=sketch, data={"collection": "right"}),
            await client.post(
                f"{API}/search/mixed", json={"collection": "right", "parts": [{"text": "four"}]}
            ),
            await client.post(
                f"{API}/classify",
                files=sketch,
                data={"labels": "four,one", "kind": "sketch", "collection": "right"},
            ),
            await client.get(f"{API}/search/text", params={"q": "four", "collection": "nowhere"}),
            await client.post(f"{API}/search/text", json={"query": "four", "collection": "nowhere"}),
        ]
    sketch_reply, mixed, classified, missing_get, missing_post = replies
    assert sketch_reply.json()["collection"] == "right"
    assert sketch_reply.json()["normalization"] == "mnist"
    assert mixed.json()["collection"] == "right"
    assert classified.status_code == 200, classified.text
    for missing in (missing_get, missing_post):
        assert missing.status_code == 404
        assert "left" in missing.json()["detail"]
        assert "right" in missing.json()["detail"]


async def test_filters_by_style_and_group(two_collections: Indexed, two_model_encoder: EncoderServer) -> None:
    async with _gateway(two_collections, two_model_encoder) as client:
        plain = await client.post(
            f"{API}/search/text", json={"query": "digit", "k": 20, "filter": {"style": "shifted"}}
        )
        odd = await client.post(
            f"{API}/search/text",
            json={"query": "digit", "k": 20, "filter": {"group": "odd", "style": ["plain", "shifted"]}},
        )
    assert plain.status_code == odd.status_code == 200
    assert len(plain.json()["hits"]) == 10
    assert {hit["payload"]["style"] for hit in plain.json()["hits"]} == {"shifted"}
    assert {hit["payload"]["label"] % 2 for hit in odd.json()["hits"]} == {1}


async def test_grpc_routes_by_collection_and_lists_collections(
    two_collections: Indexed, two_model_encoder: EncoderServer
) -> None:
    item = two_collections.items[5]
    settings = settings_for(
        two_collections,
        f"127.0.0.1:{two_model_encoder.port}",
        collection="left",
        host="127.0.0.1",
        grpc_port=0,
    )
    core = build_core(settings)
    try:
        async with (
            running_grpc_server(core, settings) as port,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = search_pb2_grpc.SearchStub(channel)
            left = await stub.SearchImage(
                search_pb2.ImageQuery(image=item.png, options=search_pb2.QueryOptions(collection="left"))
            )
            right = await stub.SearchImage(
                search_pb2.ImageQuery(
                    image=item.png,
                    options=search_pb2.QueryOptions(collection="right"),
                    normalization=search_pb2.NORMALIZATION_OFF,
                )
            )
            listed = await stub.ListCollections(search_pb2.ListCollectionsRequest())
            with pytest.raises(grpc.aio.AioRpcError) as orphan:
                await stub.SearchText(
                    search_pb2.TextQuery(query="x", options=search_pb2.QueryOptions(collection="orphan"))
                )
    finally:
        await core.close()
    assert left.hits[0].id == item.id
    assert left.collection == "left"
    assert right.collection == "right"
    assert right.normalization == "none"
    assert right.hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert listed.default_collection == "left"
    by_name = {c.name: c for c in listed.collections}
    assert by_name["right"].model == "second"
    assert list(by_name["left"].filter_fields["style"].values) == ["plain", "shifted"]
    assert orphan.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_an_upgrade_under_load_loses_no_request_and_never_mixes_models(
    tmp_path: Path, two_model_encoder: EncoderServer
) -> None:
    """The alias moves from model "first"'s version to model "second"'s while queries run: every
    answer comes from one model's vectors (the queried picture finds itself at cosine 1)."""
    target = f"127.0.0.1:{two_model_encoder.port}"
    indexed = build_index(tmp_path, target, collection="live", model="first")
    new_vectors, new_fingerprint, _ = embed_in_thread(target, [i.png for i in indexed.items], "second")
    settings = settings_for(indexed, target, collection="live")
    app = create_app(settings)
    probe = indexed.items[7]
    answers: list[httpx.Response] = []
    stop = asyncio.Event()
    wanted = 20  # answers before the next step
    enough = asyncio.Event()

    async def steady(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            answers.append(
                await client.post(f"{API}/search/image", files={"file": ("q.png", probe.png, "image/png")})
            )
            if len(answers) >= wanted:
                enough.set()

    async with serving(app) as client:
        load = [asyncio.create_task(steady(client)) for _ in range(4)]
        await enough.wait()
        core: SearchCore = app.state.core
        new_ids = [str(uuid.uuid4()) for _ in indexed.items]

        def upgrade(store: VectorStore) -> None:
            version = store.create_version(
                "live",
                dim=new_vectors.shape[1],
                fingerprint=new_fingerprint,
                vector_names=[IMAGE_VECTOR],
                source="tests",
                extra={"model_name": "second"},
            )
            store.upsert(
                version,
                [
                    Point(id=point_id, vectors={IMAGE_VECTOR: vector}, payload={"label": item.label})
                    for point_id, item, vector in zip(new_ids, indexed.items, new_vectors, strict=True)
                ],
            )
            store.finish_version("live", version, keep=1)  # the old one is dropped at once

        await asyncio.to_thread(core.collections.store.call, upgrade)
        enough.clear()
        wanted = len(answers) + 40
        await enough.wait()
        stop.set()
        await asyncio.gather(*load)
    statuses = [answer.status_code for answer in answers]
    assert statuses.count(200) == len(answers), [a.text for a in answers if a.status_code != 200][:3]
    tops = [answer.json()["hits"][0] for answer in answers]
    assert all(top["score"] == pytest.approx(1.0, abs=1e-3) for top in tops)
    old_model = {
        answer.json()["model"] for answer, top in zip(answers, tops, strict=True) if top["id"] == probe.id
    }
    new_id = new_ids[indexed.items.index(probe)]
    assert {top["id"] for top in tops} == {probe.id, new_id}  # both models answered, never a mix
    assert len(old_model) == 1
