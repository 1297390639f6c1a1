"""Security: API keys, constant-time comparison, upload caps, CORS, media confinement,
no pickle, no secrets in logs, non-root container."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import grpc
import pytest

from clipsearch.v1 import encoder_pb2, encoder_pb2_grpc
from services.encoder.server import serve_in_thread
from services.encoder.settings import EncoderSettings
from services.gateway.app import create_app
from tests.gateway.conftest import Indexed, serving
from tests.hardening.bad_inputs import real_bomb_png, valid_images
from tests.hardening.conftest import MAX_UPLOAD_BYTES, hardening_settings
from tests.processes import REPO

API = "/api/v1"
PRODUCT_DIRS = ("clipsearch", "services", "training", "scripts", "bench")
GATEWAY_KEY = "gateway-secret-8d1e2a"
ENCODER_KEY = "encoder-secret-5c7f0b"
WRONG_KEY = "wrong-guess-33aa91"


def product_sources() -> list[Path]:
    return [
        path
        for directory in PRODUCT_DIRS
        for path in sorted((REPO / directory).rglob("*.py"))
        if "clipsearch/v1" not in path.as_posix()
    ]


# --- keys ---


async def test_gateway_api_key_is_off_by_default_and_enforced_when_set(
    indexed: Indexed, encoder_target: str
) -> None:
    async with serving(create_app(hardening_settings(indexed, encoder_target))) as open_gateway:
        anonymous = await open_gateway.post(f"{API}/search/text", json={"query": "seven"})
    settings = hardening_settings(indexed, encoder_target, api_key=GATEWAY_KEY)
    async with serving(create_app(settings)) as guarded:
        missing = await guarded.post(f"{API}/search/text", json={"query": "seven"})
        wrong = await guarded.post(
            f"{API}/search/text", json={"query": "seven"}, headers={"x-api-key": WRONG_KEY}
        )
        prefix = await guarded.post(
            f"{API}/search/text", json={"query": "seven"}, headers={"x-api-key": GATEWAY_KEY[:-1]}
        )
        right = await guarded.post(
            f"{API}/search/text", json={"query": "seven"}, headers={"x-api-key": GATEWAY_KEY}
        )
        probe = await guarded.get("/healthz")
    assert anonymous.status_code == 200
    assert [missing.status_code, wrong.status_code, prefix.status_code] == [401, 401, 401]
    assert right.status_code == 200
    assert probe.status_code == 200


def test_encoder_api_key_is_enforced_on_metadata(tiny_checkpoint: Path) -> None:
    settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0, api_key=ENCODER_KEY
    )
    request = encoder_pb2.EmbedTextRequest(texts=["seven"])
    with serve_in_thread(settings) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        codes = []
        for metadata in [None, (("x-api-key", WRONG_KEY),), (("x-api-key", ""),)]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.EmbedText(request, metadata=metadata, timeout=10)
            codes.append(refused.value.code())
        allowed = stub.EmbedText(request, metadata=(("x-api-key", ENCODER_KEY),), timeout=10)
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert len(allowed.embeddings) == 1


def test_keys_are_compared_in_constant_time() -> None:
    for module in ("services/gateway/deps.py", "services/encoder/auth.py"):
        assert "hmac.compare_digest" in (REPO / module).read_text(), module
    plain_compare = re.compile(r"(api_key|_key)\s*(==|!=)|(==|!=)\s*(self\.)?_?(api_)?key\b")
    for path in product_sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not plain_compare.search(line), f"{path}:{number}: {line.strip()}"


# --- caps ---


async def test_upload_and_pixel_caps(indexed: Indexed, encoder_target: str) -> None:
    too_big = valid_images()["png"] + bytes(MAX_UPLOAD_BYTES)
    async with serving(create_app(hardening_settings(indexed, encoder_target))) as client:
        big = await client.post(f"{API}/search/image", files={"file": ("a.png", too_big, "image/png")})
        body = await client.post(
            f"{API}/search/text",
            content=b" " * (3 * MAX_UPLOAD_BYTES),
            headers={"content-type": "application/json"},
        )
        bomb = await client.post(
            f"{API}/search/image", files={"file": ("b.png", real_bomb_png(), "image/png")}
        )
    assert big.status_code == 413
    assert body.status_code == 413
    assert bomb.status_code == 400
    assert "pixels" in bomb.json()["detail"]


# --- CORS ---


async def test_cors_names_explicit_origins_and_never_allows_credentials(
    indexed: Indexed, encoder_target: str
) -> None:
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    settings = hardening_settings(indexed, encoder_target, cors_origins=["https://search.example.org"])
    async with serving(create_app(settings)) as client:
        allowed = await client.options(
            f"{API}/search/text", headers={"origin": "https://search.example.org", **preflight}
        )
        other = await client.options(
            f"{API}/search/text", headers={"origin": "https://evil.example", **preflight}
        )
    async with serving(create_app(hardening_settings(indexed, encoder_target))) as client:
        default = await client.options(
            f"{API}/search/text", headers={"origin": "https://evil.example", **preflight}
        )
    assert allowed.headers.get("access-control-allow-origin") == "https://search.example.org"
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in default.headers
    for reply in (allowed, other, default):
        assert reply.headers.get("access-control-allow-credentials") != "true"
    assert "allow_credentials" not in (REPO / "services/gateway/app.py").read_text()


# --- media ---


@pytest.mark.parametrize(
    "path",
    [
        "../../../../etc/passwd",
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "%252e%252e%252fetc%252fpasswd",
        "..%5c..%5cetc%5cpasswd",
        "%2fetc%2fpasswd",
        "/etc/passwd",
        "//etc/passwd",
        "....//....//etc/passwd",
        "%00",
        "a" * 64 + "%00.png",
        "A" * 64,
        "0" * 63,
        "0" * 64 + "/../../etc/passwd",
    ],
)
async def test_media_cannot_leave_the_media_store(indexed: Indexed, encoder_target: str, path: str) -> None:
    async with serving(create_app(hardening_settings(indexed, encoder_target))) as client:
        reply = await client.get(f"{API}/media/{path}")
    assert reply.status_code in (404, 400), reply.status_code
    assert b"root:" not in reply.content


async def test_media_does_not_follow_a_symlink_out_of_the_store(
    indexed: Indexed, encoder_target: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret bytes")
    media = tmp_path / "media"
    media.mkdir()
    planted = "ab" * 32
    (media / f"{planted}.png").symlink_to(secret)
    real = indexed.items[0].media_key
    (media / f"{real}.png").write_bytes((indexed.media_dir / f"{real}.png").read_bytes())
    settings = hardening_settings(indexed, encoder_target, media_dir=str(media))
    async with serving(create_app(settings)) as client:
        escaped = await client.get(f"{API}/media/{planted}")
        served = await client.get(f"{API}/media/{real}")
    assert escaped.status_code == 404
    assert b"secret" not in escaped.content
    assert served.status_code == 200


# --- static checks ---


def test_no_pickle_anywhere_in_the_product() -> None:
    forbidden = re.compile(
        r"\bimport pickle\b|\bpickle\.|\bcloudpickle\b|\bdill\b|torch\.load\(|use_safetensors\s*=\s*False"
        r"|weights_only\s*=\s*False|\bjoblib\b|np\.load\([^)]*allow_pickle\s*=\s*True"
        r"|open\([^)]*\.bin\b|load_state_dict\(torch"
    )
    for path in product_sources():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not forbidden.search(line), f"{path}:{number}: {line.strip()}"
    for path in product_sources():
        for call in re.finditer(r"(\w+)\.from_pretrained\(([^)]*)\)", path.read_text()):
            if call.group(1).endswith("Model") or call.group(1).startswith("MODEL_CLASSES"):
                assert "use_safetensors=True" in call.group(2), f"{path}: {call.group(0)}"


def test_the_container_runs_as_a_non_root_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "docker" / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    assert users[-1] not in ("root", "0", "0:0")


# --- secrets ---


async def test_keys_never_appear_in_logs_or_answers(
    indexed: Indexed, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    encoder_settings = EncoderSettings(
        checkpoint=str(tiny_checkpoint), host="127.0.0.1", port=0, metrics_port=0, api_key=ENCODER_KEY
    )
    answers: list[str] = []
    with serve_in_thread(encoder_settings) as encoder:
        target = f"127.0.0.1:{encoder.port}"
        for encoder_key in (ENCODER_KEY, WRONG_KEY):  # the second: the encoder refuses the gateway
            settings = hardening_settings(indexed, target, api_key=GATEWAY_KEY, encoder_api_key=encoder_key)
            async with serving(create_app(settings)) as client:
                for key in (GATEWAY_KEY, WRONG_KEY, None):
                    headers = {"x-api-key": key} if key else {}
                    for reply in [
                        await client.post(f"{API}/search/text", json={"query": "seven"}, headers=headers),
                        await client.post(f"{API}/search/text", json={"query": ""}, headers=headers),
                        await client.get("/readyz"),
                        await client.get(f"{API}/info", headers=headers),
                    ]:
                        answers.append(reply.text)
            assert repr(settings).count(GATEWAY_KEY) == 0
    logged = caplog.text
    assert "401" in " ".join(answers) or any("API key" in answer for answer in answers)
    for secret in (GATEWAY_KEY, ENCODER_KEY, WRONG_KEY):
        assert secret not in logged
        assert not any(secret in answer for answer in answers)
