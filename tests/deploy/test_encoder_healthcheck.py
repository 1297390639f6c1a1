"""The encoder container healthcheck and the compose target form, against a real encoder on loopback."""

from __future__ import annotations

import pytest

from bench.stack import free_port
from services.encoder import healthcheck


def test_serving_encoder_is_healthy(encoder_target: str) -> None:
    assert healthcheck.check(encoder_target) is None
    assert healthcheck.main([encoder_target]) == 0


def test_default_target_comes_from_encoder_port(encoder_target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_PORT", encoder_target.rsplit(":", 1)[1])
    assert healthcheck.main([]) == 0


def test_unreachable_encoder_is_unhealthy(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{free_port()}"
    assert healthcheck.main([target]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


async def test_compose_target_form_reaches_the_encoder(encoder_target: str) -> None:
    """docker-compose.yml names the encoder as dns:///HOST:PORT (all replicas, round-robin)."""
    from clipsearch.encoder_client import EncoderClient

    async with EncoderClient(f"dns:///{encoder_target}") as client:
        assert await client.serving()
        vectors = await client.embed_texts(["a handwritten seven"])
    assert vectors.shape[0] == 1
