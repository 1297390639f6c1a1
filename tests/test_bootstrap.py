"""How every service starts (clipsearch.bootstrap): settings from the environment and flags,
logging, and exit codes a supervisor can act on."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from clipsearch.bootstrap import UserError, load_settings, run_service
from services.encoder.settings import EncoderSettings
from services.gateway.settings import GatewaySettings


def test_flags_win_over_the_environment_which_wins_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MAX_K", "50")
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9000")
    settings = load_settings(GatewaySettings, ["--max-k", "20"])
    assert (settings.max_k, settings.http_port, settings.grpc_port) == (20, 9000, 50052)


def test_empty_variables_are_unset_as_compose_files_leave_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "GATEWAY_API_KEY",
        "GATEWAY_ENCODER_API_KEY",
        "GATEWAY_QDRANT_API_KEY",
        "GATEWAY_QDRANT_URL",
        "GATEWAY_PUBLIC_URL",
        "GATEWAY_CORS_ORIGINS",
        "ENCODER_API_KEY",
        "ENCODER_ONNX_CACHE_DIR",
    ):
        monkeypatch.setenv(name, "")
    gateway, encoder = GatewaySettings(), EncoderSettings()
    assert gateway.api_key is gateway.encoder_api_key is gateway.qdrant_api_key is None
    assert gateway.qdrant_url is gateway.public_url is None
    assert gateway.cors_origins == []
    assert encoder.api_key is encoder.onnx_cache_dir is None


def test_log_level_is_checked_and_any_case_will_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENCODER_LOG_LEVEL", "debug")
    assert EncoderSettings().log_level == "DEBUG"
    monkeypatch.setenv("ENCODER_LOG_LEVEL", "chatty")
    with pytest.raises(ValidationError, match="debug, info, warning"):
        EncoderSettings()


def test_a_settings_mistake_exits_2_naming_the_variable_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_MAX_K", "zero")
    served: list[GatewaySettings] = []
    assert run_service("gateway", GatewaySettings, served.append, argv=[]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "gateway: invalid settings:\n  max_k (--max-k, GATEWAY_MAX_K): Input should be a valid integer"
    )
    assert "Traceback" not in err
    assert not served


def test_a_user_error_exits_1_as_one_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    def serve(settings: GatewaySettings) -> None:
        raise UserError("cannot start: port 8080 is taken")

    assert run_service("gateway", GatewaySettings, serve, argv=["--log-format", "json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("ERROR", "gateway", "cannot start: port 8080 is taken")
    ]


def test_the_service_gets_its_settings_and_its_status_is_the_exit_status() -> None:
    seen: list[GatewaySettings] = []

    def serve(settings: GatewaySettings) -> int:
        seen.append(settings)
        return 3

    assert run_service("gateway", GatewaySettings, serve, argv=["--collection", "emoji"]) == 3
    assert [s.collection for s in seen] == ["emoji"]
    assert logging.getLogger().level == logging.INFO  # configured from the settings
