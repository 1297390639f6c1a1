"""Unicode edge cases in every field a caller fills over HTTP: JSON, query string, form
(gRPC fields: test_fuzz_grpc, which runs the Search server; two gateways in one process would
both open the embedded store).

Issue 17, #1: a lone surrogate in a string filter value (body, MatchAny list, GET
parameter, multipart field, mixed query) reached the store and was a 500.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.hardening.bad_inputs import UNICODE_EDGES, valid_images
from tests.hardening.http_fuzz import API, assert_still_serving, post_form, post_json, send, upload

PNG = valid_images()["png"]
SURFACE = "http-unicode"
FIELDS_FOR_FILTERS = ["split", "label", "style", "group", "subgroup"]


def form_bytes(text: str) -> bytes:
    """What a lenient client puts in a form field: UTF-8, surrogates encoded as they stand."""
    return text.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("name", sorted(UNICODE_EDGES))
def test_json_fields(http: TestClient, name: str) -> None:
    edge = UNICODE_EDGES[name]
    bodies: list[tuple[str, Any]] = [
        ("/search/text", {"query": edge}),
        ("/search/text", {"query": "seven", "target": edge}),
    ]
    for key in FIELDS_FOR_FILTERS:
        bodies += [
            ("/search/text", {"query": "seven", "filter": {key: edge}}),
            ("/search/text", {"query": "seven", "filter": {key: ["test", edge]}}),
            ("/search/mixed", {"parts": [{"text": "seven"}], "filter": {key: edge}}),
        ]
    bodies += [
        ("/search/text", {"query": "seven", "filter": {edge: 1}}),
        ("/search/text", {"query": "seven", "k": edge}),
        ("/search/text", {"query": "seven", "collection": edge}),
        ("/search/mixed", {"parts": [{"text": "seven"}], "collection": edge}),
        ("/search/mixed", {"parts": [{"text": edge}]}),
        ("/search/mixed", {"parts": [{"text": "seven", edge: 1}]}),
        ("/search/mixed", {"parts": [{"image": edge}]}),
        ("/search/mixed", {"parts": [{"text": "seven", "weight": edge}]}),
    ]
    for path, body in bodies:
        post_json(http, path, body, SURFACE)
    assert_still_serving(http)


@pytest.mark.parametrize("name", sorted(UNICODE_EDGES))
def test_query_string_fields(http: TestClient, name: str) -> None:
    edge = UNICODE_EDGES[name]
    escaped = quote(edge.encode("utf-8", "surrogatepass"), safe="")
    urls = [
        f"{API}/search/text?q={escaped}",
        f"{API}/search/text?q=seven&target={escaped}",
        f"{API}/search/text?q=seven&k={escaped}",
        f"{API}/search/text?q=seven&collection={escaped}",
    ]
    for key in FIELDS_FOR_FILTERS:
        for spec in ({key: edge}, {key: ["test", edge]}):
            urls.append(f"{API}/search/text?q=seven&filter={quote(json.dumps(spec), safe='')}")
            raw = json.dumps(spec, ensure_ascii=False).encode("utf-8", "surrogatepass")
            urls.append(f"{API}/search/text?q=seven&filter={quote(raw, safe='')}")
    for url in urls:
        send(http, "GET", url, surface=SURFACE)
    assert_still_serving(http)


@pytest.mark.parametrize("name", sorted(UNICODE_EDGES))
def test_form_fields(http: TestClient, name: str) -> None:
    edge = form_bytes(UNICODE_EDGES[name])
    for key in FIELDS_FOR_FILTERS:
        for spec in (
            json.dumps({key: UNICODE_EDGES[name]}).encode(),
            b'{"' + key.encode() + b'": "' + edge + b'"}',
            b'{"' + key.encode() + b'": ["test", "' + edge + b'"]}',
        ):
            post_form(http, "/search/image", [upload(PNG), ("filter", spec, None, None)], SURFACE)
            post_form(http, "/search/sketch", [upload(PNG), ("filter", spec, None, None)], SURFACE)
    for field in ("target", "k", "offset", "collection", "normalization"):
        post_form(http, "/search/image", [upload(PNG), (field, edge, None, None)], SURFACE)
    filename = form_bytes(UNICODE_EDGES[name]).decode("latin-1")
    post_form(http, "/search/image", [("file", PNG, filename, "image/png")], SURFACE)
    labels = [("labels", b"one", None, None), ("labels", b"two", None, None)]
    post_form(
        http,
        "/classify",
        [upload(PNG), ("labels", edge, None, None), ("labels", b"two", None, None)],
        SURFACE,
    )
    post_form(http, "/classify", [upload(PNG), *labels, ("templates", b"a {} " + edge, None, None)], SURFACE)
    post_form(http, "/classify", [upload(PNG), *labels, ("kind", edge, None, None)], SURFACE)
    post_form(http, "/classify", [upload(PNG), *labels, ("collection", edge, None, None)], SURFACE)
    post_form(http, "/classify", [upload(PNG), *labels, ("temperature", edge, None, None)], SURFACE)
    assert_still_serving(http)
