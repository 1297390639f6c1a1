"""The encoder and Search gRPC services answer bad input with INVALID_ARGUMENT, never INTERNAL/UNKNOWN."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc, search_pb2, search_pb2_grpc
from tests.hardening import raw_protobuf
from tests.hardening.bad_inputs import (
    ODD_TEXTS,
    SERVICE_FUZZ,
    UNICODE_EDGES,
    broken_images,
    containers,
    mangled_images,
    odd_but_valid_images,
    utf8_encodable,
    valid_images,
)
from tests.hardening.grpc_fuzz import ALLOWED, CALL_TIMEOUT_S, call
from tests.hardening.stalls import GoodClient, grpc_good_call
from tests.hardening.tally import TALLY

PNG = valid_images()["png"]


def texts() -> Iterator[str]:
    """ODD_TEXTS that protobuf can carry (it refuses to serialise lone surrogates)."""
    for text in ODD_TEXTS.values():
        try:
            encoder_pb2.EmbedTextRequest(texts=[text]).SerializeToString()
        except (ValueError, UnicodeEncodeError):
            continue
        yield text


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    found = struct_pb2.Struct()
    found.update(value)
    return found


ALL_IMAGES = [
    *broken_images().values(),
    *mangled_images().values(),
    *odd_but_valid_images().values(),
    *containers().values(),
]


# --- encoder ---


def test_encoder_images_and_sketches(encoder_stub: encoder_pb2_grpc.EncoderStub) -> None:
    for data in ALL_IMAGES:
        call(encoder_stub.EmbedImages, encoder_pb2.EmbedImagesRequest(images=[data]), "grpc-encoder")
        call(encoder_stub.EmbedSketches, encoder_pb2.EmbedSketchesRequest(sketches=[data]), "grpc-encoder")
    for data in broken_images().values():
        request = encoder_pb2.EmbedImagesRequest(images=[PNG, data])
        assert call(encoder_stub.EmbedImages, request, "grpc-encoder") == grpc.StatusCode.INVALID_ARGUMENT
    for request in [
        encoder_pb2.EmbedImagesRequest(images=[]),
        encoder_pb2.EmbedImagesRequest(images=[PNG] * 257),
        encoder_pb2.EmbedImagesRequest(images=[b""]),
        encoder_pb2.EmbedImagesRequest(images=[PNG * 40_000]),  # over the 10 MiB item cap
    ]:
        call(encoder_stub.EmbedImages, request, "grpc-encoder")
    good = encoder_stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[PNG]), timeout=CALL_TIMEOUT_S)
    assert len(good.embeddings) == 1


def test_encoder_texts(encoder_stub: encoder_pb2_grpc.EncoderStub) -> None:
    for text in texts():
        call(encoder_stub.EmbedText, encoder_pb2.EmbedTextRequest(texts=[text]), "grpc-encoder")
        call(encoder_stub.EmbedText, encoder_pb2.EmbedTextRequest(texts=["seven", text]), "grpc-encoder")
    for request in [
        encoder_pb2.EmbedTextRequest(texts=[]),
        encoder_pb2.EmbedTextRequest(texts=["seven"] * 257),
        encoder_pb2.EmbedTextRequest(texts=["x" * 2_000_000]),
    ]:
        call(encoder_stub.EmbedText, request, "grpc-encoder")


def test_huge_texts_are_refused_by_length_without_stalling_the_encoder(
    encoder_stub: encoder_pb2_grpc.EncoderStub,
) -> None:
    """Issue 17, #3: one 8 MB text was tokenized whole on the event loop (4-7 s stall, +1 GB)."""
    info = grpc_good_call(lambda: encoder_stub.GetModelInfo(encoder_pb2.GetModelInfoRequest(), timeout=60))
    with GoodClient(info, "huge texts to the encoder") as report:
        for size in (8 * 1024 * 1024, 4 * 1024 * 1024, 100_000):
            for text in ("x" * size, "seven " * (size // 6), "\u4e03" * (size // 3)):
                request = encoder_pb2.EmbedTextRequest(texts=["seven", text])
                assert (
                    call(encoder_stub.EmbedText, request, "grpc-encoder") == grpc.StatusCode.INVALID_ARGUMENT
                )
    assert report.server_errors == 0, report.line()


@SERVICE_FUZZ
@given(text=st.text(st.characters(codec="utf-8"), max_size=200))
def test_encoder_any_text(encoder_stub: encoder_pb2_grpc.EncoderStub, text: str) -> None:
    call(encoder_stub.EmbedText, encoder_pb2.EmbedTextRequest(texts=[text]), "grpc-encoder")


def test_encoder_stream_reports_bad_items_inline(encoder_stub: encoder_pb2_grpc.EncoderStub) -> None:
    items = [encoder_pb2.ImageItem(id=str(i), data=data) for i, data in enumerate(ALL_IMAGES)]
    batches = [encoder_pb2.ImageBatch(items=items[i : i + 32]) for i in range(0, len(items), 32)]
    replies = list(encoder_stub.StreamEmbedImages(iter(batches), timeout=CALL_TIMEOUT_S))
    results = [result for reply in replies for result in reply.results]
    assert [result.id for result in results] == [item.id for item in items]
    refused = {result.id for result in results if result.error}
    assert {str(i) for i in range(len(broken_images()))} <= refused
    for batch in batches:
        TALLY.record("grpc-encoder", b"stream\n" + batch.SerializeToString(), "OK")
    with pytest.raises(grpc.RpcError) as too_big:
        list(encoder_stub.StreamEmbedImages(iter([encoder_pb2.ImageBatch(items=items[:1] * 300)])))
    assert too_big.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- Search ---


def test_search_uploads(search_stub: search_pb2_grpc.SearchStub) -> None:
    for data in ALL_IMAGES:
        call(search_stub.SearchImage, search_pb2.ImageQuery(image=data), "grpc-search")
        call(search_stub.SearchSketch, search_pb2.ImageQuery(image=data), "grpc-search")
    for data in list(broken_images().values())[::4]:
        call(search_stub.Classify, search_pb2.ClassifyRequest(image=data, labels=["a", "b"]), "grpc-search")
        call(search_stub.Classify, search_pb2.ClassifyRequest(sketch=data, labels=["a", "b"]), "grpc-search")


def test_search_texts_options_and_filters(search_stub: search_pb2_grpc.SearchStub) -> None:
    for text in texts():
        call(search_stub.SearchText, search_pb2.TextQuery(query=text), "grpc-search")
    numbers = [0, 1, 100, 101, 10_000, 10_001, 2**31, 2**32 - 1]
    for k in numbers:
        for offset in numbers[::2]:
            options = search_pb2.QueryOptions(k=k, offset=offset)
            call(search_stub.SearchText, search_pb2.TextQuery(query="seven", options=options), "grpc-search")
    for target in (3, 99, 2**31 - 1, -1):
        options = search_pb2.QueryOptions(target=target)  # type: ignore[arg-type]  # unknown enum values
        call(search_stub.SearchText, search_pb2.TextQuery(query="seven", options=options), "grpc-search")
    filters: list[dict[str, Any]] = [
        {},
        {"label": "seven"},
        {"label": True},
        {"label": None},
        {"label": []},
        {"label": {"gte": 3}},
        {"label": [[1]]},
        {"label": 7.5},
        {"label": float("nan")},
        {"label": float("inf")},
        {"label": 1e300},
        {"label": list(range(5000))},
        {"split": 3},
        {"unknown": 1},
        {"label": 7, "nested": {"a": {"b": [1, {"c": None}]}}},
    ]
    for spec in filters:
        options = search_pb2.QueryOptions(filter=struct(spec))
        call(search_stub.SearchText, search_pb2.TextQuery(query="seven", options=options), "grpc-search")


def test_search_mixed_and_classify_numbers(search_stub: search_pb2_grpc.SearchStub) -> None:
    odd = [float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45, 0.0, -1.0]
    for weight in odd:
        parts = [search_pb2.QueryPart(text="seven", weight=weight)]
        call(search_stub.SearchMixed, search_pb2.MixedQuery(parts=parts), "grpc-search")
        parts.append(search_pb2.QueryPart(image=PNG, weight=1.0))
        call(search_stub.SearchMixed, search_pb2.MixedQuery(parts=parts), "grpc-search")
    for request in [
        search_pb2.MixedQuery(),
        search_pb2.MixedQuery(parts=[search_pb2.QueryPart()]),
        search_pb2.MixedQuery(parts=[search_pb2.QueryPart(text="seven")] * 17),
        search_pb2.MixedQuery(parts=[search_pb2.QueryPart(sketch=b"")]),
        search_pb2.MixedQuery(
            parts=[search_pb2.QueryPart(text="a", weight=1), search_pb2.QueryPart(text="a", weight=-1)]
        ),
    ]:
        call(search_stub.SearchMixed, request, "grpc-search")
    for temperature in [*odd, 1e-30, 1e-4, 1e30]:
        request = search_pb2.ClassifyRequest(image=PNG, labels=["one", "two"], temperature=temperature)
        call(search_stub.Classify, request, "grpc-search")
    label_sets = [
        [],
        [""],
        ["a", "a"],
        [str(i) for i in range(101)],
        ["x" * 5000],
        ["\x00"],
        ["\u202e\u200b"],
    ]
    for labels in label_sets:
        call(search_stub.Classify, search_pb2.ClassifyRequest(image=PNG, labels=labels), "grpc-search")
    for templates in [["no placeholder"], ["{}{}"], ["{0}"], ["{"], ["a {}"] * 33]:
        request = search_pb2.ClassifyRequest(image=PNG, labels=["a", "b"], templates=templates)
        call(search_stub.Classify, request, "grpc-search")
    call(search_stub.Classify, search_pb2.ClassifyRequest(labels=["a"]), "grpc-search")


@SERVICE_FUZZ
@given(
    text=st.text(st.characters(codec="utf-8"), max_size=100),
    k=st.integers(0, 2**32 - 1),
    offset=st.integers(0, 2**32 - 1),
    weight=st.floats(width=32),
)
def test_search_any_query(
    search_stub: search_pb2_grpc.SearchStub, text: str, k: int, offset: int, weight: float
) -> None:
    options = search_pb2.QueryOptions(k=k, offset=offset)
    call(search_stub.SearchText, search_pb2.TextQuery(query=text, options=options), "grpc-search")
    part = search_pb2.QueryPart(text=text, weight=weight)
    call(search_stub.SearchMixed, search_pb2.MixedQuery(parts=[part], options=options), "grpc-search")


# --- raw protobuf bytes (issue 17, #7: UNKNOWN and an ERROR traceback on both services) ---


def raw_call(channel: grpc.Channel, method: str, payload: bytes, surface: str) -> grpc.StatusCode:
    """Send `payload` as the request's wire bytes (no serialiser), check the answer, tally it."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=CALL_TIMEOUT_S)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        details = exc.details() or ""
        assert code in ALLOWED, f"{code.name}: {details[:300]} for {method} {payload[:80]!r}"
        assert details.strip(), f"no message for {method} {payload[:80]!r}"
    TALLY.record(surface, method.encode() + b"\n" + payload, code.name)
    return code


def channels(encoder_target: str, search_port: int) -> dict[str, tuple[grpc.Channel, str]]:
    return {
        "/clipsearch.v1.Encoder/": (grpc.insecure_channel(encoder_target), "grpc-raw"),
        "/clipsearch.v1.Search/": (grpc.insecure_channel(f"127.0.0.1:{search_port}"), "grpc-raw"),
    }


def test_raw_bytes_that_do_not_decode_are_invalid_argument(
    encoder_target: str, search_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    routes = channels(encoder_target, search_port)
    refused = 0
    for method, valid in raw_protobuf.valid_requests().items():
        channel, surface = next(route for prefix, route in routes.items() if method.startswith(prefix))
        assert raw_call(channel, method, valid, surface) in ALLOWED
        for payload in raw_protobuf.bad_utf8_requests(method) + raw_protobuf.structural(method):
            refused += raw_call(channel, method, payload, surface) == grpc.StatusCode.INVALID_ARGUMENT
    for channel, _ in routes.values():
        channel.close()
    assert refused > 100
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert not errors, [record.getMessage()[:200] for record in errors[:5]]
    assert any("does not decode" in record.getMessage() for record in caplog.records)


def test_a_stream_batch_that_does_not_decode_ends_the_stream_invalid_argument(
    encoder_target: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    good = encoder_pb2.ImageBatch(items=[encoder_pb2.ImageItem(id="a", data=PNG)]).SerializeToString()
    with grpc.insecure_channel(encoder_target) as channel:
        stream = channel.stream_stream(
            "/clipsearch.v1.Encoder/StreamEmbedImages", request_serializer=None, response_deserializer=None
        )
        for bad in (raw_protobuf.field_bytes(1, raw_protobuf.field_bytes(1, b"\xff")), b"\xff" * 8):
            replies = stream(iter([good, bad, good]), timeout=CALL_TIMEOUT_S)
            with pytest.raises(grpc.RpcError) as refused:
                list(replies)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            TALLY.record("grpc-raw", b"stream\n" + bad, refused.value.code().name)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert not errors, [record.getMessage()[:200] for record in errors[:5]]


@SERVICE_FUZZ
@given(payload=st.binary(max_size=200), which=st.integers(0, 7))
def test_any_bytes(encoder_target: str, search_port: int, payload: bytes, which: int) -> None:
    method = sorted(raw_protobuf.valid_requests())[which]
    target = encoder_target if ".Encoder/" in method else f"127.0.0.1:{search_port}"
    with grpc.insecure_channel(target) as channel:
        raw_call(channel, method, payload, "grpc-raw")


FILTER_FIELDS = ["split", "label", "style", "group", "subgroup"]


@pytest.mark.parametrize("name", sorted(name for name, edge in UNICODE_EDGES.items() if utf8_encodable(edge)))
def test_unicode_edges_in_every_field(
    search_stub: search_pb2_grpc.SearchStub, encoder_stub: encoder_pb2_grpc.EncoderStub, name: str
) -> None:
    """Strings protobuf can carry (it will not serialise a lone surrogate; invalid UTF-8 on the
    wire is the raw-bytes family above)."""
    edge = UNICODE_EDGES[name]
    calls: list[tuple[Callable[..., Any], Any, str]] = [
        (encoder_stub.EmbedText, encoder_pb2.EmbedTextRequest(texts=[edge]), "grpc-unicode"),
        (encoder_stub.EmbedText, encoder_pb2.EmbedTextRequest(texts=["seven"], model=edge), "grpc-unicode"),
        (search_stub.SearchText, search_pb2.TextQuery(query=edge), "grpc-unicode"),
        (
            search_stub.SearchMixed,
            search_pb2.MixedQuery(parts=[search_pb2.QueryPart(text=edge)]),
            "grpc-unicode",
        ),
        (
            search_stub.Classify,
            search_pb2.ClassifyRequest(image=PNG, labels=[edge, "two"], templates=["a {} " + edge]),
            "grpc-unicode",
        ),
    ]
    options = search_pb2.QueryOptions(collection=edge)
    calls.append(
        (search_stub.SearchText, search_pb2.TextQuery(query="seven", options=options), "grpc-unicode")
    )
    calls.append((encoder_stub.GetModelInfo, encoder_pb2.GetModelInfoRequest(model=edge), "grpc-unicode"))
    for key in [*FILTER_FIELDS, edge]:
        for value in (edge, ["test", edge]):
            options = search_pb2.QueryOptions(filter=struct({key: value}))
            calls.append(
                (search_stub.SearchText, search_pb2.TextQuery(query="seven", options=options), "grpc-unicode")
            )
    for method, request, surface in calls:
        assert call(method, request, surface) in ALLOWED


def test_services_still_answer_and_enough_inputs_were_tried(
    encoder_stub: encoder_pb2_grpc.EncoderStub, search_stub: search_pb2_grpc.SearchStub
) -> None:
    reply = search_stub.SearchText(search_pb2.TextQuery(query="a handwritten seven"), timeout=CALL_TIMEOUT_S)
    assert len(reply.hits) == 10
    embedded = encoder_stub.EmbedText(encoder_pb2.EmbedTextRequest(texts=["seven"]), timeout=CALL_TIMEOUT_S)
    assert len(embedded.embeddings) == 1
    assert TALLY.distinct("grpc-encoder") + TALLY.distinct("grpc-search") >= 300, TALLY.summary()
