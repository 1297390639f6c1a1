"""Per-request memory: no single hostile request raises a service's memory by more than ~100 MB.

The encoder and the gateway run as processes with their default limits; before each
request their peak resident memory is reset (/proc/PID/clear_refs), and after it the
new peak is compared with what they held before. Every input here is either refused or
the largest a caller may send; the table of growths is printed at the end of the run.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import grpc
import httpx
import pytest
from PIL import Image

from clipsearch.processes import free_port
from clipsearch.v1 import encoder_pb2, search_pb2
from tests.gateway.conftest import build_index, digit_png
from tests.hardening import raw_http, raw_protobuf
from tests.hardening.bad_inputs import containers, encode, real_bomb_png
from tests.hardening.tally import TALLY
from tests.processes import encoder_env, gateway_env, start

MIB = 1024 * 1024
# What one request may add, with room for the allocator's noise.
MAX_GROWTH_MIB = 120
GROWTHS: list[tuple[str, str, float, str]] = []  # request, service, MiB, outcome


def peak_reset(pid: int) -> int:
    """Reset the peak resident memory of `pid` to its current size; return that size (KiB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kib(pid, "VmRSS")


def peak_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@dataclass
class Stack:
    encoder_pid: int
    gateway_pid: int
    encoder_port: int
    http_port: int
    grpc_port: int


@pytest.fixture(scope="module")
def stack(
    tiny_checkpoint: Path, encoder_target: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("memory")
    indexed = build_index(workdir / "index", encoder_target)
    encoder_port, http_port, grpc_port = free_port(), free_port(), free_port()
    encoder_log, gateway_log = workdir / "encoder.log", workdir / "gateway.log"
    encoder = start("services.encoder", encoder_env(tiny_checkpoint, encoder_port), encoder_log)
    variables = {
        **gateway_env(encoder_port, indexed.store_path, indexed.media_dir, http_port),
        "GATEWAY_GRPC_PORT": str(grpc_port),
    }
    gateway = start("services.gateway", variables, gateway_log)
    try:
        encoder.wait_grpc_serving(f"127.0.0.1:{encoder_port}")
        gateway.wait_http_ready(f"http://127.0.0.1:{http_port}/readyz")
        yield Stack(encoder.pid, gateway.pid, encoder_port, http_port, grpc_port)
    finally:
        gateway.stop()
        encoder.stop()


def measured(stack: Stack, name: str, request: Callable[[], str]) -> None:
    """Send one request, record each service's peak growth over what it held before."""
    pids = {"encoder": stack.encoder_pid, "gateway": stack.gateway_pid}
    before = {service: peak_reset(pid) for service, pid in pids.items()}
    outcome = request()
    time.sleep(0.2)  # work the answer did not wait for (a refused stream's leftovers)
    TALLY.record("memory", name.encode(), outcome)
    for service, pid in pids.items():
        GROWTHS.append((name, service, (peak_kib(pid) - before[service]) / 1024, outcome))


def grpc_raw(port: int, method: str, payload: bytes) -> str:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 128 * MIB)]
    ) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(payload, timeout=120)
        except grpc.RpcError as exc:
            code = exc.code()
        else:
            code = grpc.StatusCode.OK
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
    return code.name


def http_request(port: int, method: str, path: str, **kwargs: object) -> str:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        reply = client.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert reply.status_code < 500 or reply.status_code == 503, reply.text[:300]
    return str(reply.status_code)


def raw_socket(port: int, data: bytes) -> str:
    return str(raw_http.exchange(port, data).status)


def rgb_png(side: int) -> bytes:
    return encode(Image.new("RGB", (side, side), (200, 30, 30)), "PNG")


@cache
def noisy_jpeg(side: int) -> bytes:
    """A real photo-sized JPEG: 6300 a side is 40 MP in about 7.6 MB (under the 10 MB caps)."""
    buffer = io.BytesIO()
    Image.effect_noise((side, side), 12).convert("RGB").save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


@pytest.mark.slow
def test_no_request_raises_a_service_memory_by_more_than_about_100_mb(stack: Stack) -> None:
    encoder, gateway_http, gateway_grpc = stack.encoder_port, stack.http_port, stack.grpc_port
    embed_text = "/clipsearch.v1.Encoder/EmbedText"
    embed_images = "/clipsearch.v1.Encoder/EmbedImages"
    four_k = rgb_png(4000)  # 16 MP of RGB: the largest the decoding budget admits
    # Warm-up: the first good request of each kind allocates what later ones reuse.
    for _ in range(2):
        grpc_raw(encoder, embed_text, encoder_pb2.EmbedTextRequest(texts=["seven"]).SerializeToString())
        grpc_raw(
            encoder, embed_images, encoder_pb2.EmbedImagesRequest(images=[digit_png(7)]).SerializeToString()
        )
        http_request(gateway_http, "GET", "/api/v1/search/text?q=seven")
        http_request(gateway_http, "POST", "/api/v1/search/image", files={"file": ("a.png", digit_png(3))})
    requests: dict[str, Callable[[], str]] = {
        # texts (issue 17, #3: one 8 MB text cost the encoder ~1 GB)
        "encoder: one 8 MB text": lambda: grpc_raw(
            encoder, embed_text, encoder_pb2.EmbedTextRequest(texts=["x" * (8 * MIB)]).SerializeToString()
        ),
        "encoder: 256 texts of 200 KB": lambda: grpc_raw(
            encoder, embed_text, encoder_pb2.EmbedTextRequest(texts=["y" * 200_000] * 256).SerializeToString()
        ),
        "encoder: 256 texts at the length limit": lambda: grpc_raw(
            encoder,
            embed_text,
            encoder_pb2.EmbedTextRequest(texts=["seven " * 400] * 256).SerializeToString(),
        ),
        "encoder: 60 MB of garbage": lambda: grpc_raw(encoder, embed_text, b"\xff" * (60 * MIB)),
        "encoder: 60 MB message of 30M empty texts": lambda: grpc_raw(
            encoder, embed_text, raw_protobuf.field_bytes(1, b"") * (30 * MIB)
        ),
        "encoder: 30 MB message of 15M empty texts": lambda: grpc_raw(
            encoder, embed_text, raw_protobuf.field_bytes(1, b"") * (15 * MIB)
        ),
        "encoder: 30 MB of texts at the length limit": lambda: grpc_raw(
            encoder, embed_text, encoder_pb2.EmbedTextRequest(texts=["z" * 2400] * 12_000).SerializeToString()
        ),
        # images (issue 17, #4: an ICO holding a 9400x9400 PNG cost +300 MB)
        **{
            f"encoder: {name}": (
                lambda data=data: grpc_raw(  # type: ignore[misc]
                    encoder, embed_images, encoder_pb2.EmbedImagesRequest(images=[data]).SerializeToString()
                )
            )
            for name, data in containers().items()
        },
        "encoder: a 16 MP RGB png": lambda: grpc_raw(
            encoder, embed_images, encoder_pb2.EmbedImagesRequest(images=[four_k]).SerializeToString()
        ),
        "encoder: six 16 MP RGB pngs in one call": lambda: grpc_raw(
            encoder, embed_images, encoder_pb2.EmbedImagesRequest(images=[four_k] * 6).SerializeToString()
        ),
        "encoder: a 7.6 MB jpeg of 40 MP": lambda: grpc_raw(
            encoder,
            embed_images,
            encoder_pb2.EmbedImagesRequest(images=[noisy_jpeg(6300)]).SerializeToString(),
        ),
        "encoder: a 20000x20000 1-bit png": lambda: grpc_raw(
            encoder,
            embed_images,
            encoder_pb2.EmbedImagesRequest(images=[real_bomb_png()]).SerializeToString(),
        ),
        "encoder: 256 small images": lambda: grpc_raw(
            encoder,
            embed_images,
            encoder_pb2.EmbedImagesRequest(images=[digit_png(1)] * 256).SerializeToString(),
        ),
        # the gateway's HTTP server (issue 17, #5 and #6)
        "gateway: a 64 MB header": lambda: raw_socket(
            gateway_http, raw_http.request("GET", "/healthz", [("X-Huge", "z" * (64 * MIB))])
        ),
        "gateway: a 40 MB chunked JSON body": lambda: raw_socket(
            gateway_http,
            raw_http.request(
                "POST",
                "/api/v1/search/text",
                [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
                raw_http.chunked(b'{"query": "' + b"q" * (40 * MIB) + b'"}', MIB),
                length=False,
            ),
        ),
        "gateway: a mixed query with a 40 MP jpeg (10 MB of base64)": lambda: http_request(
            gateway_http,
            "POST",
            "/api/v1/search/mixed",
            json={"parts": [{"image": base64.b64encode(noisy_jpeg(6300)).decode()}, {"text": "seven"}]},
        ),
        "gateway: a JSON body of 10,000 empty objects": lambda: http_request(
            gateway_http,
            "POST",
            "/api/v1/search/mixed",
            content=b"[" + b"{}," * 9_990 + b"{}]",
            headers={"content-type": "application/json"},
        ),
        "gateway: 20 MB of JSON values": lambda: http_request(
            gateway_http,
            "POST",
            "/api/v1/search/mixed",
            content=b"[" + b"1," * (10 * MIB) + b"1]",
            headers={"content-type": "application/json"},
        ),
        "gateway: a 7.6 MB upload of 40 MP": lambda: http_request(
            gateway_http,
            "POST",
            "/api/v1/search/image",
            files={"file": ("big.jpg", noisy_jpeg(6300))},
        ),
        "gateway: classify with 1,000 labels in one field": lambda: http_request(
            gateway_http,
            "POST",
            "/api/v1/classify",
            files={"file": ("a.png", digit_png(2))},
            data={"labels": ",".join(f"label {n}" for n in range(1000))},
        ),
        "gateway: gRPC 11 MB of empty labels": lambda: grpc_raw(
            gateway_grpc,
            "/clipsearch.v1.Search/Classify",
            raw_protobuf.field_bytes(1, digit_png(2)) + raw_protobuf.field_bytes(3, b"") * (5 * MIB),
        ),
        "gateway: gRPC filter Struct of 1M nulls": lambda: grpc_raw(
            gateway_grpc,
            "/clipsearch.v1.Search/SearchText",
            search_pb2.TextQuery(query="seven").SerializeToString()
            + raw_protobuf.field_bytes(
                2,
                raw_protobuf.options_with_filter(
                    raw_protobuf.struct_with(
                        b"label", raw_protobuf.field_bytes(6, b"\x0a\x02\x08\x00" * 1_000_000)
                    )
                ),
            ),
        ),
    }
    for name, request in requests.items():
        measured(stack, name, request)
    over = [
        f"{name}: {service} +{growth:.0f} MiB"
        for name, service, growth, _ in GROWTHS
        if growth >= MAX_GROWTH_MIB
    ]
    assert not over, over


def summary() -> str:
    if not GROWTHS:
        return ""
    lines = ["per-request memory growth (peak over what the service held before):"]
    for service in ("encoder", "gateway"):
        rows = sorted((row for row in GROWTHS if row[1] == service), key=lambda row: -row[2])
        worst = rows[0]
        lines.append(f"  {service}: largest {worst[2]:.0f} MiB ({worst[0]}: {worst[3]})")
        lines += [f"    {growth:6.1f} MiB  {name} -> {outcome}" for name, _, growth, outcome in rows[:8]]
    return "\n".join(lines)
