"""The HTTP API refuses bad input with a 4xx and a reason, never a 5xx, and keeps serving."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from tests.hardening.bad_inputs import (
    ODD_TEXTS,
    SERVICE_FUZZ,
    broken_images,
    containers,
    mangled_images,
    odd_but_valid_images,
    valid_images,
)
from tests.hardening.conftest import MAX_UPLOAD_BYTES
from tests.hardening.http_fuzz import (
    API,
    assert_still_serving,
    json_body,
    post_form,
    post_json,
    send,
    upload,
)
from tests.hardening.tally import TALLY

PNG = valid_images()["png"]
ODD_NUMBERS: list[object] = [
    -1,
    0,
    10**12,
    -(10**12),
    10**30,
    1.5,
    "7",
    "seven",
    "",
    None,
    True,
    [],
    {},
    float("nan"),
    float("inf"),
    float("-inf"),
]
ODD_FILTERS: list[object] = [
    "label",
    7,
    [7],
    None,
    {},
    {"label": "seven"},
    {"label": True},
    {"label": None},
    {"label": []},
    {"label": {"gte": 3}},
    {"label": [[1]]},
    {"label": [1, "2"]},
    {"label": 7.5},
    {"label": float("nan")},
    {"label": float("inf")},
    {"label": 10**30},
    {"label": list(range(5000))},
    {"split": 3},
    {"split": ["test", None]},
    {"split": "\x00"},
    {"unknown": 1},
    {"label": 7, "nested": {"deeper": {"deepest": [1, 2, {"x": None}]}}},
    {"": 1},
    {"must": [{"key": "label", "match": {"value": 7}}]},
]
TEXT_ALPHABET = st.characters(codec=None)  # every category, surrogates included


@pytest.mark.parametrize("path", ["/search/image", "/search/sketch", "/classify"])
def test_broken_uploads_are_refused(http: TestClient, path: str) -> None:
    extra = [("labels", b"one,two", None, None)] if path == "/classify" else []
    for data in broken_images().values():
        assert post_form(http, path, [upload(data), *extra]) in (400, 413)
    for data in [*mangled_images().values(), *odd_but_valid_images().values(), *containers().values()]:
        post_form(http, path, [upload(data), *extra])
    assert_still_serving(http)


def test_non_images_sent_as_images_and_wrong_content_types(http: TestClient) -> None:
    for content_type in ["image/png", "image/jpeg", "application/octet-stream", "text/plain", ""]:
        for data in [b"not an image", b"<svg/>", bytes(64)]:
            assert post_form(http, "/search/image", [upload(data, content_type)]) == 400
    assert_still_serving(http)


def test_wrong_multipart_fields(http: TestClient) -> None:
    cases: list[list[tuple[str, bytes, str | None, str | None]]] = [
        [],
        [("image", PNG, "a.png", "image/png")],
        [("file", PNG, None, None)],  # a plain field, not a file
        [upload(PNG), upload(PNG)],
        [upload(b"")],
        [upload(PNG), ("k", b"abc", None, None)],
        [upload(PNG), ("k", b"99999999999999999999999", None, None)],
        [upload(PNG), ("offset", b"-5", None, None)],
        [upload(PNG), ("filter", b"{not json", None, None)],
        [upload(PNG), ("filter", b"[1, 2]", None, None)],
        [upload(PNG), ("filter", b"[" * 5000, None, None)],
        [upload(PNG), ("filter", b'{"label": ' * 3000, None, None)],
        [upload(PNG), ("filter", b"\xff\xfe", None, None)],
        [upload(PNG), ("target", b"nowhere", None, None)],
        [upload(PNG), ("target", b"captions", None, None)],
        [upload(PNG), ("k", b"\xed\xa0\x80", None, None)],
        [upload(PNG * (MAX_UPLOAD_BYTES // len(PNG) + 1))],
    ]
    for fields in cases:
        post_form(http, "/search/image", fields)
        post_form(http, "/search/sketch", fields)
    for body, content_type in [
        (b"--x\r\nbroken", "multipart/form-data; boundary=x"),
        (b"anything", "multipart/form-data"),
        (json_body({"file": "x"}), "application/json"),
        (PNG, "image/png"),
        (b"", "multipart/form-data; boundary=" + "b" * 5000),
    ]:
        send(http, "POST", f"{API}/search/image", content=body, headers={"content-type": content_type})
    assert_still_serving(http)


def test_classify_fields(http: TestClient) -> None:
    labels = [("labels", b"one", None, None), ("labels", b"two", None, None)]
    temperatures = [b"nan", b"NaN", b"inf", b"-inf", b"-1", b"0", b"abc", b"1e308", b"1e-320", b"5e-324", b""]
    for temperature in temperatures:
        post_form(http, "/classify", [upload(PNG), *labels, ("temperature", temperature, None, None)])
    odd_labels = [
        b"",
        b",,,",
        b"one,one",
        ",".join(str(i) for i in range(500)).encode(),
        b"\x00",
        b"\xed\xa0\x80",
        b"\xff",
        "\u202e\u200b".encode(),
        b"x" * 5000,
    ]
    for label in odd_labels:
        post_form(http, "/classify", [upload(PNG), ("labels", label, None, None)])
    for template in [
        b"no placeholder",
        b"{}{}",
        b"{0}",
        b"{label}",
        b"{",
        b"}",
        b"{}" + b"x" * 5000,
        b"\x00{}",
    ]:
        post_form(http, "/classify", [upload(PNG), *labels, ("templates", template, None, None)])
    for kind in [b"video", b"", b"SKETCH"]:
        post_form(http, "/classify", [upload(PNG), *labels, ("kind", kind, None, None)])
    post_form(http, "/classify", [upload(PNG)])
    assert_still_serving(http)


def test_odd_texts(http: TestClient) -> None:
    for text in ODD_TEXTS.values():
        post_json(http, "/search/text", {"query": text})
        post_json(http, "/search/mixed", {"parts": [{"text": text}]})
    for raw in [b"%ED%A0%80", b"%FF%FE", b"%00", b"%C0%AF", b"\xff"]:
        send(http, "GET", f"{API}/search/text?q={raw.decode('latin-1')}")
    assert_still_serving(http)


@SERVICE_FUZZ
@given(text=st.text(TEXT_ALPHABET, max_size=300))
def test_any_unicode_text(http: TestClient, text: str) -> None:
    post_json(http, "/search/text", {"query": text, "k": 2})


@SERVICE_FUZZ
@given(text=st.text(TEXT_ALPHABET, min_size=1, max_size=40))
def test_any_unicode_label(http: TestClient, text: str) -> None:
    post_form(http, "/classify", [upload(PNG), ("labels", text.encode("utf-8", "surrogatepass"), None, None)])


def test_absurd_k_offset_and_target(http: TestClient) -> None:
    for value in ODD_NUMBERS:
        for field in ("k", "offset"):
            post_json(http, "/search/text", {"query": "seven", field: value})
    for raw in ["-1", "0", "1000000000000", "1e3", "abc", "", "9" * 400]:
        send(http, "GET", f"{API}/search/text?q=seven&k={raw}")
        send(http, "GET", f"{API}/search/text?q=seven&offset={raw}")
    for target in ["", "IMAGES", "captions", "../images", None, 1]:
        post_json(http, "/search/text", {"query": "seven", "target": target})
    assert_still_serving(http)


def test_malformed_filters(http: TestClient) -> None:
    for spec in ODD_FILTERS:
        post_json(http, "/search/text", {"query": "seven", "filter": spec})
        raw = json.dumps(spec, allow_nan=True)
        send(http, "GET", f"{API}/search/text?q=seven&filter={raw}")
    assert_still_serving(http)


def test_numbers_past_what_python_converts_are_refused(http: TestClient) -> None:
    """Issue 17, #2: an integer of more than 4,300 digits in a filter (query parameter or form
    field) was a 500; so were JSON bodies with one, anywhere a number goes."""
    for digits in (4_300, 4_301, 20_000, 60_000):
        number = "9" * digits
        spec = f'{{"label": {number}}}'
        assert send(http, "GET", f"{API}/search/text?q=seven&filter={spec}").status_code in (400, 422)
        assert post_form(http, "/search/image", [upload(PNG), ("filter", spec.encode(), None, None)]) in (
            400,
            413,
            422,
        )
        for body in (
            f'{{"query": "seven", "filter": {spec}}}',
            f'{{"query": "seven", "k": {number}}}',
            f'{{"parts": [{{"text": "seven", "weight": {number}}}]}}',
            f'{{"query": "seven", "k": 1e{number}}}',
        ):
            path = "/search/mixed" if "parts" in body else "/search/text"
            reply = send(
                http, "POST", API + path, content=body.encode(), headers={"content-type": "application/json"}
            )
            assert reply.status_code in (400, 413, 422), reply.text[:200]
        for field in ("k", "offset"):
            send(http, "GET", f"{API}/search/text?q=seven&{field}={number}")
            post_form(http, "/search/image", [upload(PNG), (field, number.encode(), None, None)])
    assert_still_serving(http)


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(TEXT_ALPHABET, max_size=8)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
)


@SERVICE_FUZZ
@given(spec=st.dictionaries(st.sampled_from(["label", "split", "other"]), JSON_VALUES, max_size=3))
def test_any_json_filter(http: TestClient, spec: dict[str, object]) -> None:
    post_json(http, "/search/text", {"query": "seven", "filter": spec})


def test_mixed_query_parts_and_weights(http: TestClient) -> None:
    import base64

    image = base64.b64encode(PNG).decode()
    for weight in [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 1e-320, 0, -1, "heavy", None]:
        post_json(http, "/search/mixed", {"parts": [{"text": "seven", "weight": weight}]})
        post_json(http, "/search/mixed", {"parts": [{"text": "a", "weight": weight}, {"image": image}]})
    bodies: list[object] = [
        {},
        {"parts": []},
        {"parts": None},
        {"parts": "seven"},
        {"parts": [{}]},
        {"parts": [{"text": "a", "image": image}]},
        {"parts": [{"image": "not base64!"}]},
        {"parts": [{"sketch": ""}]},
        {"parts": [{"image": base64.b64encode(b"not an image").decode()}]},
        {"parts": [{"text": "seven"}] * 17},
        {"parts": [{"text": "seven", "weight": 1}, {"text": "seven", "weight": -1}]},
        {
            "parts": [
                {"image": base64.b64encode(data).decode()} for data in list(broken_images().values())[:3]
            ]
        },
        [1, 2, 3],
        "parts",
    ]
    for body in bodies:
        post_json(http, "/search/mixed", body)
    for name, data in broken_images().items():
        kind = "sketch" if "truncated" in name else "image"
        post_json(http, "/search/mixed", {"parts": [{kind: base64.b64encode(data).decode()}]})
    assert_still_serving(http)


def test_malformed_bodies_and_paths(http: TestClient) -> None:
    for body in [b"", b"{", b"[" * 100_000, b'{"query": "seven"} trailing', b"\xff\xfe", b"null", b"NaN"]:
        for path in ("/search/text", "/search/mixed"):
            send(http, "POST", API + path, content=body, headers={"content-type": "application/json"})
    send(
        http,
        "POST",
        f"{API}/search/text",
        content=json_body({"query": "x"}),
        headers={"content-type": "text/plain"},
    )
    for method, path in [("GET", "/search/image"), ("DELETE", "/search/text"), ("PUT", "/classify")]:
        send(http, method, API + path)
    for path in ["/nothing", "/api/v2/search/text", "/api/v1/media/", "/api/v1/media/%00"]:
        send(http, "GET", path)
    assert_still_serving(http)


def test_enough_distinct_bad_inputs_were_tried() -> None:
    """Runs last in this module (file order): the count covers the tests above."""
    assert TALLY.distinct("http") >= 400, TALLY.summary()
