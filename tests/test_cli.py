"""The `clipsearch` command: each subcommand is its `python -m` form, and --help lists the settings
with their environment variables, generated from the settings classes."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from clipsearch.bootstrap import ServiceSettings
from clipsearch.cli import COMMANDS, main
from clipsearch.demo import DemoSettings
from services.encoder.settings import EncoderSettings
from services.gateway.settings import GatewaySettings
from services.indexer.settings import IndexerSettings
from tests.processes import REPO, python_env

SETTINGS: dict[str, type[ServiceSettings]] = {
    "encoder": EncoderSettings,
    "gateway": GatewaySettings,
    "indexer": IndexerSettings,
    "demo": DemoSettings,
}


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes


def test_without_a_command_it_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("encoder", "indexer", "gateway", "train", "distill-text", "evaluate", "demo"):
        assert f"\n  {name} " in out
    assert main([]) == 2


def test_an_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve"]) == 2
    assert "unknown command 'serve'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_help_lists_every_setting_with_its_flag_and_environment_variable(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = SETTINGS[name]
    text = _help(capsys, name, "--help")
    prefix = settings.model_config["env_prefix"]
    assert text.startswith(f"usage: clipsearch {name} ")
    assert " ".join((settings.__doc__ or "").split()) in text
    for field in settings.model_fields:
        assert f"--{field.replace('_', '-')} " in text, field
        assert f"{prefix}{field.upper()}]" in text, field
    assert f"[env: {prefix}LOG_FORMAT]" in text


def test_help_shows_the_descriptions_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = _help(capsys, "indexer", "--help")
    assert "--batch-size int (default: 64) [env: INDEXER_BATCH_SIZE]" in text
    assert (
        "--concurrency int Batches in flight to the encoder. (default: 4) [env: INDEXER_CONCURRENCY]" in text
    )
    assert "--progress, --no-progress" in text
    assert "unset: $MNIST_DIR" in text


@pytest.mark.parametrize(
    ("name", "usage"),
    [
        ("train", "usage: clipsearch train "),
        ("distill-text", "usage: clipsearch distill-text "),
        ("evaluate", "usage: clipsearch evaluate "),
    ],
)
def test_training_commands_show_their_flags(
    name: str, usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(capsys, name, "--help")
    assert text.startswith(usage)
    assert "--mnist-dir" in text or "--output" in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_runs_the_main_of_its_python_m_form(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], str]] = []

    def fake_main(argv: list[str], prog: str) -> int:
        calls.append((argv, prog))
        return 7

    module = importlib.import_module(COMMANDS[name].module)
    monkeypatch.setattr(module, "main", fake_main)
    assert main([name, "--some-flag", "x"]) == 7
    leading = [name] if name in ("train", "distill-text") else []
    assert calls == [([*leading, "--some-flag", "x"], "clipsearch" if leading else f"clipsearch {name}")]


def test_python_m_runs_the_same_mains() -> None:
    python_m = {
        "encoder": "services/encoder/__main__.py",
        "indexer": "services/indexer/__main__.py",
        "gateway": "services/gateway/__main__.py",
        "train": "training/__main__.py",
        "distill-text": "training/__main__.py",
        "evaluate": "training/evaluate.py",
        "demo": "clipsearch/demo.py",
    }
    for name, path in python_m.items():
        module = importlib.import_module(COMMANDS[name].module)
        assert Path(str(module.__file__)).relative_to(REPO).as_posix() == path
    assert "from clipsearch.demo import main" in (REPO / "scripts" / "demo.py").read_text()


@pytest.mark.parametrize("name", ["gateway", "indexer"])
def test_gateway_and_indexer_commands_load_neither_torch_nor_transformers(name: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from clipsearch.cli import main
        try:
            main(["{name}", "--help"])
        except SystemExit:
            pass
        print(sorted(m for m in ("torch", "transformers") if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_the_console_script_is_installed() -> None:
    script = shutil.which("clipsearch", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the clipsearch script is not installed in this environment (pip install -e .)")
    done: Any = subprocess.run(
        [script, "gateway", "--help"], env=python_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "[env: GATEWAY_ENCODER]" in done.stdout
