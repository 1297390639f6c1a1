"""The HTTP API end to end: real app, real encoder on loopback, embedded store in a temp dir."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import httpx
import pytest

from clipsearch.store import open_store
from services.gateway.search import SearchCore
from tests.gateway.conftest import COLLECTION, GatewayFactory, Indexed, digit_png

API = "/api/v1"
RECOVERY_DEADLINE_S = 15.0


async def _first_success(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> httpx.Response:
    """POST until it stops answering 503 (a dependency coming back), or the deadline passes."""
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while True:
        reply = await client.post(path, json=body)
        if reply.status_code != 503 or time.monotonic() > deadline:
            return reply
        await asyncio.sleep(0.2)


async def test_text_search_returns_ranked_hits_with_labels_and_media(
    gateway: GatewayFactory, indexed: Indexed
) -> None:
    async with gateway() as client:
        reply = await client.post(f"{API}/search/text", json={"query": "a handwritten seven", "k": 5})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == indexed.model_name
    assert body["collection"] == COLLECTION
    assert body["took_ms"] > 0
    hits = body["hits"]
    assert len(hits) == 5
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    known = {item.id: item for item in indexed.items}
    for hit in hits:
        item = known[hit["id"]]
        assert hit["payload"]["label"] == item.label
        assert isinstance(hit["payload"]["label"], int)
        assert hit["image_url"] == f"{API}/media/{item.media_key}"


async def test_get_text_search_matches_post(gateway: GatewayFactory) -> None:
    async with gateway() as client:
        got = await client.get(f"{API}/search/text", params={"q": "three", "k": 4})
        posted = await client.post(f"{API}/search/text", json={"query": "three", "k": 4})
    assert got.status_code == 200, got.text
    assert [h["id"] for h in got.json()["hits"]] == [h["id"] for h in posted.json()["hits"]]


async def test_image_search_finds_the_same_image_first(gateway: GatewayFactory, indexed: Indexed) -> None:
    item = indexed.items[13]
    async with gateway() as client:
        reply = await client.post(
            f"{API}/search/image", files={"file": ("q.png", item.png, "image/png")}, data={"k": "3"}
        )
    assert reply.status_code == 200, reply.text
    top = reply.json()["hits"][0]
    assert top["id"] == item.id
    assert top["score"] == pytest.approx(1.0, abs=1e-3)


async def test_sketch_search_answers_a_canvas_drawing(gateway: GatewayFactory) -> None:
    drawing = digit_png(7, sketch=True, size=280)
    async with gateway() as client:
        reply = await client.post(f"{API}/search/sketch", files={"file": ("s.png", drawing, "image/png")})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["hits"]) == 10


async def test_filter_and_paging(gateway: GatewayFactory) -> None:
    async with gateway() as client:
        one = await client.post(
            f"{API}/search/text", json={"query": "digit", "k": 10, "filter": {"label": 3}}
        )
        some = await client.post(
            f"{API}/search/text", json={"query": "digit", "k": 10, "filter": {"label": [1, 7]}}
        )
        page = await client.post(f"{API}/search/text", json={"query": "digit", "k": 4})
        second = await client.post(f"{API}/search/text", json={"query": "digit", "k": 2, "offset": 2})
        form = await client.post(
            f"{API}/search/image",
            files={"file": ("q.png", digit_png(4), "image/png")},
            data={"filter": json.dumps({"label": 4}), "k": "5"},
        )
    assert {h["payload"]["label"] for h in one.json()["hits"]} == {3}
    assert len(one.json()["hits"]) == 2  # two images of each digit are indexed
    assert {h["payload"]["label"] for h in some.json()["hits"]} == {1, 7}
    assert [h["id"] for h in second.json()["hits"]] == [h["id"] for h in page.json()["hits"]][2:4]
    assert {h["payload"]["label"] for h in form.json()["hits"]} == {4}


async def test_mixed_query_combines_weighted_parts(gateway: GatewayFactory, indexed: Indexed) -> None:
    item, other = indexed.items[5], indexed.items[6]
    encoded, other_encoded = base64.b64encode(item.png).decode(), base64.b64encode(other.png).decode()
    async with gateway() as client:
        alone = await client.post(f"{API}/search/mixed", json={"parts": [{"image": encoded}], "k": 20})
        steered = await client.post(
            f"{API}/search/mixed",
            json={
                "parts": [{"image": encoded, "weight": 1}, {"image": other_encoded, "weight": -0.5}],
                "k": 20,
            },
        )
        with_text = await client.post(
            f"{API}/search/mixed", json={"parts": [{"text": "five", "weight": 0.3}, {"image": encoded}]}
        )
        cancelled = await client.post(
            f"{API}/search/mixed",
            json={"parts": [{"image": encoded, "weight": 1}, {"image": encoded, "weight": -1}]},
        )
        no_parts = await client.post(f"{API}/search/mixed", json={"parts": []})
        two_contents = await client.post(
            f"{API}/search/mixed", json={"parts": [{"text": "a", "image": encoded}]}
        )
        bad_base64 = await client.post(f"{API}/search/mixed", json={"parts": [{"image": "%%%"}]})
    assert alone.json()["hits"][0]["id"] == item.id
    assert steered.status_code == 200
    alone_ids = [h["id"] for h in alone.json()["hits"]]
    steered_ids = [h["id"] for h in steered.json()["hits"]]
    # Every item ranked above `other` stays above it once the query steers away from `other`.
    assert steered_ids.index(other.id) >= alone_ids.index(other.id)
    assert set(steered_ids[: alone_ids.index(other.id)]) >= set(alone_ids[: alone_ids.index(other.id)]) - {
        other.id
    }
    assert with_text.status_code == 200
    assert cancelled.status_code == 400
    assert "cancel" in cancelled.json()["detail"]
    assert no_parts.status_code == 400
    assert two_contents.status_code == 422
    assert "exactly one" in two_contents.json()["detail"]
    assert bad_base64.status_code == 400


async def test_classify_returns_a_distribution_over_labels(gateway: GatewayFactory) -> None:
    image = ("d.png", digit_png(2), "image/png")
    labels = ["zero", "one", "two", "three"]
    async with gateway() as client:
        default = await client.post(f"{API}/classify", files={"file": image}, data={"labels": labels})
        sharp = await client.post(
            f"{API}/classify", files={"file": image}, data={"labels": labels, "temperature": "0.001"}
        )
        comma = await client.post(
            f"{API}/classify",
            files={"file": ("d.png", digit_png(2, sketch=True), "image/png")},
            data={"labels": "cat,dog", "kind": "sketch", "templates": ["a sketch of a {}"]},
        )
        bad_template = await client.post(
            f"{API}/classify", files={"file": image}, data={"labels": labels, "templates": "no placeholder"}
        )
        duplicate = await client.post(f"{API}/classify", files={"file": image}, data={"labels": ["a", "a"]})
        negative = await client.post(
            f"{API}/classify", files={"file": image}, data={"labels": labels, "temperature": "-1"}
        )
    assert default.status_code == 200, default.text
    body = default.json()
    probabilities = [s["probability"] for s in body["scores"]]
    assert sorted(s["label"] for s in body["scores"]) == sorted(labels)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert probabilities == sorted(probabilities, reverse=True)
    assert body["temperature"] > 0
    assert len(body["templates"]) >= 1
    # A tiny temperature sharpens the same ranking.
    assert sharp.json()["scores"][0]["label"] == body["scores"][0]["label"]
    assert sharp.json()["scores"][0]["probability"] >= probabilities[0]
    assert comma.status_code == 200, comma.text
    assert {s["label"] for s in comma.json()["scores"]} == {"cat", "dog"}
    assert comma.json()["templates"] == ["a sketch of a {}"]
    for reply in (bad_template, duplicate, negative):
        assert reply.status_code == 400, reply.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"query": "   "}, "empty"),
        ({"query": "seven", "k": 0}, "k must be"),
        ({"query": "seven", "k": 101}, "k must be"),
        ({"query": "seven", "offset": -1}, "offset must be"),
        ({"query": "seven", "offset": 10_001}, "offset must be"),
        ({"query": "seven", "filter": {"colour": "red"}}, "unknown filter field"),
        ({"query": "seven", "filter": {"label": "seven"}}, "takes int"),
        ({"query": "seven", "target": "captions"}, "no captions vectors"),
        ({"query": "seven", "target": "sounds"}, "target must be"),
        ({"query": "x" * 5000}, "limit"),
    ],
)
async def test_bad_text_queries_are_400_with_a_message(
    gateway: GatewayFactory, body: dict[str, object], fragment: str
) -> None:
    async with gateway() as client:
        reply = await client.post(f"{API}/search/text", json=body)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["detail"]


async def test_bad_requests_are_4xx_json_never_500(gateway: GatewayFactory) -> None:
    async with gateway(max_upload_bytes=2_000) as client:
        no_body = await client.post(f"{API}/search/text", json={})
        k_word = await client.post(f"{API}/search/text", json={"query": "a", "k": "many"})
        bad_json = await client.post(
            f"{API}/search/text", content=b"{not json", headers={"content-type": "application/json"}
        )
        undecodable = await client.post(
            f"{API}/search/image", files={"file": ("x.png", b"this is not an image", "image/png")}
        )
        empty = await client.post(f"{API}/search/sketch", files={"file": ("x.png", b"", "image/png")})
        missing_file = await client.post(f"{API}/search/image", data={"k": "3"})
        filter_text = await client.post(
            f"{API}/search/image",
            files={"file": ("q.png", digit_png(1), "image/png")},
            data={"filter": "label=1"},
        )
        over_cap = await client.post(
            f"{API}/search/image", files={"file": ("big.png", b"\x89PNG" + b"0" * 3_000, "image/png")}
        )
        far_over_cap = await client.post(
            f"{API}/search/image", files={"file": ("big.png", b"0" * 200_000, "image/png")}
        )
        unknown_route = await client.get(f"{API}/nothing-here")
    assert no_body.status_code == 422
    assert "query" in no_body.json()["detail"]
    assert k_word.status_code == 422
    assert "k" in k_word.json()["detail"]
    assert bad_json.status_code == 422
    assert undecodable.status_code == 400
    assert "image" in undecodable.json()["detail"]
    assert empty.status_code == 400
    assert "empty" in empty.json()["detail"]
    assert missing_file.status_code == 422
    assert "file" in missing_file.json()["detail"]
    assert filter_text.status_code == 400
    assert "JSON object" in filter_text.json()["detail"]
    assert over_cap.status_code == 413
    assert "limit" in over_cap.json()["detail"]
    assert far_over_cap.status_code == 413
    assert unknown_route.status_code == 404
    for reply in (no_body, undecodable, over_cap, far_over_cap):
        assert isinstance(reply.json()["detail"], str)


async def test_unexpected_errors_are_a_json_500_without_traceback(
    gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: SearchCore, *args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(SearchCore, "search_text", broken)
    async with gateway() as client:
        reply = await client.post(f"{API}/search/text", json={"query": "seven"})
    assert reply.status_code == 500
    assert reply.json() == {"detail": "internal error; it has been logged"}
    assert "secret" not in reply.text
    assert "Traceback" not in reply.text


async def test_media_is_served_immutable_and_traversal_is_refused(
    gateway: GatewayFactory, indexed: Indexed
) -> None:
    item = indexed.items[0]
    (indexed.media_dir.parent / "secret.txt").write_text("do not serve")
    async with gateway() as client:
        found = await client.get(f"{API}/media/{item.media_key}")
        again = await client.get(
            f"{API}/media/{item.media_key}", headers={"if-none-match": found.headers["etag"]}
        )
        attempts = [
            await client.get(f"{API}/media/{path}")
            for path in (
                "..%2Fsecret.txt",
                "%2E%2E%2Fsecret.txt",
                "..%5Csecret.txt",
                "%2Fetc%2Fpasswd",
                item.media_key.upper(),
                item.media_key + ".png",
                "0" * 64,
            )
        ]
        plain_dots = await client.get(f"{API}/media/../../secret.txt")
    assert found.status_code == 200
    assert found.content == item.png
    assert found.headers["content-type"] == "image/png"
    assert "immutable" in found.headers["cache-control"]
    assert found.headers["etag"] == f'"{item.media_key}"'
    assert again.status_code == 304
    for reply in [*attempts, plain_dots]:
        assert reply.status_code == 404, reply.request.url
        assert b"do not serve" not in reply.content


async def test_probes_info_docs_metrics_and_page(gateway: GatewayFactory, indexed: Indexed) -> None:
    async with gateway() as client:
        await client.post(f"{API}/search/text", json={"query": "nine"})
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        info = await client.get(f"{API}/info")
        metrics = await client.get("/metrics")
        docs = await client.get("/docs")
        schema = await client.get("/openapi.json")
        page = await client.get("/")
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True
    assert ready.json()["fingerprint"] == indexed.fingerprint
    assert info.json()["model"]["name"] == indexed.model_name
    assert info.json()["collection"]["count"] == len(indexed.items)
    assert info.json()["collection"]["targets"] == ["images"]
    assert (
        'clipsearch_gateway_requests_total{frontend="http",operation="/api/v1/search/text",outcome="200"}'
        in (metrics.text)
    )
    assert "clipsearch_gateway_stage_seconds_bucket" in metrics.text
    assert docs.status_code == 200
    assert "/api/v1/search/sketch" in schema.json()["paths"]
    assert page.status_code == 200
    assert "<canvas" in page.text


async def test_repeated_text_query_is_answered_from_the_cache(gateway: GatewayFactory) -> None:
    async with gateway() as client:
        first = await client.post(f"{API}/search/text", json={"query": "a handwritten seven"})
        again = await client.post(f"{API}/search/text", json={"query": "a handwritten seven"})
        metrics = (await client.get("/metrics")).text
    async with gateway(query_cache_size=0) as client:
        uncached = await client.post(f"{API}/search/text", json={"query": "a handwritten seven"})
        off_metrics = (await client.get("/metrics")).text
    assert first.status_code == again.status_code == uncached.status_code == 200
    assert first.json()["hits"] == again.json()["hits"] == uncached.json()["hits"]
    assert 'clipsearch_gateway_query_cache_total{result="miss"} 1.0' in metrics
    assert 'clipsearch_gateway_query_cache_total{result="hit"} 1.0' in metrics
    assert 'clipsearch_gateway_query_cache_total{result="hit"}' not in off_metrics


async def test_concurrent_text_queries_share_encoder_calls_and_a_rejected_one_fails_alone(
    gateway: GatewayFactory,
) -> None:
    queries = [f"the number {word}" for word in ("one", "two", "three", "four", "five", "six")]
    too_long = " ".join(["seven"] * 60)  # more tokens than the tiny model takes: the encoder refuses it

    async def search(client: httpx.AsyncClient, query: str) -> httpx.Response:
        return await client.post(f"{API}/search/text", json={"query": query})

    async with gateway(query_cache_size=0, encoder_calls_in_flight=0) as client:
        alone = [await search(client, query) for query in queries]
    async with gateway(query_cache_size=0, info_ttl_s=60.0) as client:
        await search(client, "warm up")  # model and collection facts fetched once, before the burst
        together = await asyncio.gather(*(search(client, query) for query in [*queries, too_long]))
        metrics = (await client.get("/metrics")).text
    *answered, refused = together
    assert [response.status_code for response in answered] == [200] * len(queries)
    assert [response.json()["hits"] for response in answered] == [
        response.json()["hits"] for response in alone
    ]
    assert refused.status_code == 400
    assert "tokens" in refused.json()["detail"]
    buckets = {
        line.split('le="')[1].split('"')[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("clipsearch_gateway_encoder_call_texts_bucket")
    }
    assert buckets["1.0"] < buckets["+Inf"], "no encoder call carried more than one query"


async def test_api_key_guards_the_api_but_not_probes_or_media(
    gateway: GatewayFactory, indexed: Indexed
) -> None:
    async with gateway(api_key="s3cret") as client:
        missing = await client.post(f"{API}/search/text", json={"query": "one"})
        wrong = await client.post(f"{API}/search/text", json={"query": "one"}, headers={"x-api-key": "nope"})
        right = await client.post(
            f"{API}/search/text", json={"query": "one"}, headers={"x-api-key": "s3cret"}
        )
        health = await client.get("/healthz")
        media = await client.get(f"{API}/media/{indexed.items[0].media_key}")
    assert missing.status_code == 401
    assert "API key" in missing.json()["detail"]
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert health.status_code == 200
    assert media.status_code == 200


async def test_cors_allows_only_configured_origins(gateway: GatewayFactory) -> None:
    async with gateway(cors_origins=["https://app.example"]) as client:
        allowed = await client.get("/healthz", headers={"origin": "https://app.example"})
        other = await client.get("/healthz", headers={"origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


async def test_readyz_reports_a_fingerprint_mismatch(
    tmp_path_factory: pytest.TempPathFactory, encoder_target: str
) -> None:
    from services.gateway.app import create_app
    from tests.gateway.conftest import build_index, serving, settings_for

    stale = build_index(tmp_path_factory.mktemp("stale"), encoder_target, fingerprint="0" * 64, shifts=(0,))
    async with serving(create_app(settings_for(stale, encoder_target))) as client:
        ready = await client.get("/readyz")
        search = await client.post(f"{API}/search/text", json={"query": "seven"})
    assert ready.status_code == 503
    assert any("re-run the indexer" in reason for reason in ready.json()["reasons"])
    assert search.status_code == 503
    assert "re-run the indexer" in search.json()["detail"]


async def test_missing_collection_is_503_with_a_reason(gateway: GatewayFactory) -> None:
    async with gateway(collection="not-indexed") as client:
        ready = await client.get("/readyz")
        search = await client.post(f"{API}/search/text", json={"query": "seven"})
        info = await client.get(f"{API}/info")
    assert ready.status_code == 503
    assert any("not found" in reason for reason in ready.json()["reasons"])
    assert search.status_code == 503
    assert "run the indexer" in search.json()["detail"]
    assert info.status_code == 200
    assert info.json()["collection"] is None


async def test_encoder_down_is_503_and_recovers_without_restart(
    indexed: Indexed, tiny_checkpoint: object
) -> None:
    from bench.stack import free_port
    from services.encoder.server import serve_in_thread
    from services.encoder.settings import EncoderSettings
    from services.gateway.app import create_app
    from tests.gateway.conftest import serving, settings_for

    port = free_port()
    app = create_app(settings_for(indexed, f"127.0.0.1:{port}", encoder_timeout_s=1.0))
    async with serving(app) as client:
        down = await client.post(f"{API}/search/text", json={"query": "seven"})
        down_image = await client.post(
            f"{API}/search/image", files={"file": ("q.png", indexed.items[0].png, "image/png")}
        )
        not_ready = await client.get("/readyz")
        settings = EncoderSettings(
            checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=port, metrics_port=0
        )
        with serve_in_thread(settings):
            back = await _first_success(client, f"{API}/search/text", {"query": "seven"})
            ready = await client.get("/readyz")
    assert down.status_code == 503
    assert "encoder" in down.json()["detail"]
    assert down_image.status_code == 503
    assert not_ready.status_code == 503
    assert any("encoder" in reason for reason in not_ready.json()["reasons"])
    assert back.status_code == 200, back.text
    assert ready.status_code == 200, ready.text


async def test_store_held_elsewhere_is_503_and_recovers(gateway: GatewayFactory, indexed: Indexed) -> None:
    holder = open_store(None, indexed.store_path)
    try:
        assert holder.collection_info(COLLECTION) is not None  # one process at a time per version
        async with gateway() as client:
            held = await client.post(f"{API}/search/text", json={"query": "seven"})
            not_ready = await client.get("/readyz")
            holder.close()
            back = await _first_success(client, f"{API}/search/text", {"query": "seven"})
    finally:
        holder.close()
    assert held.status_code == 503
    assert "in use" in held.json()["detail"]
    assert not_ready.status_code == 503
    assert back.status_code == 200, back.text


def test_settings_treat_empty_values_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.settings import GatewaySettings

    monkeypatch.setenv("GATEWAY_API_KEY", "")
    monkeypatch.setenv("GATEWAY_QDRANT_URL", "")
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", '["https://a.example"]')
    settings = GatewaySettings()
    assert settings.api_key is None
    assert settings.qdrant_url is None
    assert settings.cors_origins == ["https://a.example"]
