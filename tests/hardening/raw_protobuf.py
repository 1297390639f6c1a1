"""Protobuf wire bytes no generated client would send: garbage, truncations, bad UTF-8, deep nesting.

Built by hand (protobuf refuses to serialise most of these), deterministically.
"""

from __future__ import annotations

import random
from functools import cache

from clipsearch.v1 import encoder_pb2, search_pb2

VARINT, FIXED64, LENGTH, GROUP_START, GROUP_END, FIXED32 = 0, 1, 2, 3, 4, 5
BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"seven\x80", b"\xc0\xaf"]
# Past the parser's recursion limit (100) for Struct values nested in lists.
DEEP = 200


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint(field << 3 | wire_type)


def field_bytes(field: int, payload: bytes) -> bytes:
    return tag(field, LENGTH) + varint(len(payload)) + payload


def nested_list_value(depth: int) -> bytes:
    """A google.protobuf.Value holding a list holding a value ... `depth` levels down."""
    value = b"\x08\x00"  # null_value
    for _ in range(depth):
        value = field_bytes(6, field_bytes(1, value))  # Value.list_value -> ListValue.values
    return value


def struct_with(key: bytes, value: bytes) -> bytes:
    """A google.protobuf.Struct with one field (a map entry: key = 1, value = 2)."""
    return field_bytes(1, field_bytes(1, key) + field_bytes(2, value))


def string_value(text: bytes) -> bytes:
    return field_bytes(3, text)  # Value.string_value


def options_with_filter(struct: bytes) -> bytes:
    return field_bytes(3, struct)  # QueryOptions.filter


# Method path -> a valid request's bytes, and the string fields (paths of field numbers) it has.
@cache
def valid_requests() -> dict[str, bytes]:
    png = b"\x89PNG\r\n\x1a\n" + bytes(32)
    options = search_pb2.QueryOptions(k=3)
    return {
        "/clipsearch.v1.Encoder/EmbedText": encoder_pb2.EmbedTextRequest(
            texts=["seven", "one"]
        ).SerializeToString(),
        "/clipsearch.v1.Encoder/EmbedImages": encoder_pb2.EmbedImagesRequest(
            images=[png]
        ).SerializeToString(),
        "/clipsearch.v1.Encoder/EmbedSketches": encoder_pb2.EmbedSketchesRequest(
            sketches=[png]
        ).SerializeToString(),
        "/clipsearch.v1.Encoder/GetModelInfo": encoder_pb2.GetModelInfoRequest().SerializeToString(),
        "/clipsearch.v1.Search/SearchText": search_pb2.TextQuery(
            query="seven", options=options
        ).SerializeToString(),
        "/clipsearch.v1.Search/SearchImage": search_pb2.ImageQuery(
            image=png, options=options
        ).SerializeToString(),
        "/clipsearch.v1.Search/SearchMixed": search_pb2.MixedQuery(
            parts=[search_pb2.QueryPart(text="seven")], options=options
        ).SerializeToString(),
        "/clipsearch.v1.Search/Classify": search_pb2.ClassifyRequest(
            image=png, labels=["a", "b"], templates=["a {}"]
        ).SerializeToString(),
    }


def bad_utf8_requests(method: str) -> list[bytes]:
    """The method's request with invalid UTF-8 in each of its string fields."""
    found = []
    for bad in BAD_UTF8:
        if method.endswith(("/EmbedText",)):
            found += [field_bytes(1, bad), field_bytes(1, b"ok") + field_bytes(1, bad), field_bytes(2, bad)]
        elif method.endswith(("/EmbedImages", "/EmbedSketches", "/GetModelInfo")):
            found.append(field_bytes(2, bad) if not method.endswith("/GetModelInfo") else field_bytes(1, bad))
        elif method.endswith("/SearchText"):
            found += [
                field_bytes(1, bad),
                field_bytes(1, b"seven") + field_bytes(2, field_bytes(5, bad)),  # options.collection
                field_bytes(1, b"seven") + field_bytes(2, options_with_filter(struct_with(bad, b"\x08\x00"))),
                field_bytes(1, b"seven")
                + field_bytes(2, options_with_filter(struct_with(b"split", string_value(bad)))),
            ]
        elif method.endswith("/SearchImage"):
            found.append(field_bytes(1, b"x") + field_bytes(2, field_bytes(5, bad)))
        elif method.endswith("/SearchMixed"):
            found.append(field_bytes(1, field_bytes(1, bad)))  # parts[0].text
        elif method.endswith("/Classify"):
            found += [field_bytes(1, b"x") + field_bytes(3, bad), field_bytes(1, b"x") + field_bytes(4, bad)]
    return found


def structural(method: str) -> list[bytes]:
    """Framing damage any message can suffer, and a Struct nested past the parser's limit."""
    valid = valid_requests()[method]
    rng = random.Random(method)
    found = [
        b"\xff" * 16,
        b"\x00",  # field number 0
        tag(1, LENGTH) + varint(2**31),  # a length far past the end
        tag(1, LENGTH) + b"\xff" * 11,  # a varint of more than ten bytes
        tag(1, GROUP_START),  # an unterminated group
        tag(1, GROUP_END),
        tag(1, 7),  # wire type 7 does not exist
        tag(2**29, VARINT) + varint(1),  # largest field number: unknown, skipped
        tag(2**29 + 1, VARINT) + varint(1),  # past the largest field number
        tag(1, VARINT) + varint(5),  # a string field sent as a varint
        tag(1, FIXED64) + bytes(3),  # truncated fixed64
        tag(1, FIXED32) + bytes(4),
        bytes(rng.randrange(256) for _ in range(64)),
        bytes(rng.randrange(256) for _ in range(4096)),
    ]
    found += [valid[:cut] for cut in range(1, len(valid))]  # every truncation
    if ".Search/" in method and not method.endswith("/Classify"):
        deep = options_with_filter(struct_with(b"label", nested_list_value(DEEP)))
        found.append(valid + field_bytes(2, deep))
    return found
