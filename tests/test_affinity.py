"""CPU pinning: CPU lists, every thread pinned, and settings that refuse bad lists with a message."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from clipsearch.affinity import CpuSpecError, available_cpus, parse_cpus, split_for_services
from clipsearch.processes import run
from services.encoder.settings import EncoderSettings
from services.gateway.settings import GatewaySettings
from tests.processes import REPO, python_env


@pytest.mark.parametrize(
    ("spec", "cpus"),
    [("0", {0}), ("0-3", {0, 1, 2, 3}), ("0,2,4-5", {0, 2, 4, 5}), (" 1 , 3 ", {1, 3}), ("2-2", {2})],
)
def test_parse_cpus_reads_linux_cpu_lists(spec: str, cpus: set[int]) -> None:
    assert parse_cpus(spec) == cpus


@pytest.mark.parametrize(
    ("spec", "message"), [("abc", "write CPUs as"), ("3-1", "runs backwards"), ("", "write")]
)
def test_parse_cpus_refuses_what_is_not_a_cpu_list(spec: str, message: str) -> None:
    with pytest.raises(CpuSpecError, match=message):
        parse_cpus(spec)


def test_split_gives_the_encoder_and_the_gateway_disjoint_halves() -> None:
    split = split_for_services()
    if len(available_cpus()) < 2:
        assert split is None
        return
    assert split is not None
    encoder, gateway = (parse_cpus(part) for part in split)
    assert encoder
    assert gateway
    assert not encoder & gateway
    assert encoder | gateway == available_cpus()


def test_pinning_reaches_threads_started_before_and_after() -> None:
    cpu = min(available_cpus())
    script = textwrap.dedent(
        f"""
        import os, threading
        from clipsearch.affinity import pin_process
        stop = threading.Event()
        early = threading.Thread(target=stop.wait); early.start()
        pin_process("{cpu}")
        late = threading.Thread(target=stop.wait); late.start()
        print(sorted({{cpu for task in os.listdir("/proc/self/task")
                     for cpu in os.sched_getaffinity(int(task))}}))
        stop.set()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=python_env(),
    )
    assert done.stdout.strip() == f"[{cpu}]"


@pytest.mark.parametrize("settings", [EncoderSettings, GatewaySettings])
def test_settings_refuse_a_bad_cpu_list_and_treat_empty_as_unset(
    settings: type[EncoderSettings] | type[GatewaySettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = "ENCODER_" if settings is EncoderSettings else "GATEWAY_"
    monkeypatch.setenv(f"{prefix}CPUS", "0-")
    with pytest.raises(ValidationError, match="write CPUs as"):
        settings()
    monkeypatch.setenv(f"{prefix}CPUS", "")
    assert settings().cpus is None


@pytest.mark.parametrize(
    ("module", "variable"),
    [
        pytest.param("services.encoder", "ENCODER_CPUS", marks=pytest.mark.slow),  # loads torch
        ("services.gateway", "GATEWAY_CPUS"),
    ],
)
def test_services_refuse_cpus_they_cannot_have_with_a_message(module: str, variable: str) -> None:
    missing = max(available_cpus()) + 1
    done = run(module, env=python_env(**{variable: str(missing)}), cwd=REPO, timeout_s=60)
    assert done.returncode == 2
    assert f"CPU {missing} is not available here" in done.stderr
    assert "Traceback" not in done.stderr
