"""Progress (clipsearch.progress): a bar on a terminal, log lines in a file or a pipe."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap

import pytest
from tqdm import tqdm

from clipsearch.progress import LineProgress, progress_bar
from tests.processes import REPO, python_env


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(range(3), desc="work")
    assert type(bar) is tqdm
    assert list(bar) == [0, 1, 2]
    assert "\r" in terminal.getvalue()


def test_elsewhere_the_loop_is_logged_at_its_start_and_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clipsearch.progress")
    bar = progress_bar(range(1000), desc="indexing", unit="img")
    assert isinstance(bar, LineProgress)
    for _ in bar:
        bar.set_postfix(loss="0.5")  # refreshes on every step, as training does
    lines = [record.getMessage() for record in caplog.records if record.name == "clipsearch.progress"]
    assert len(lines) == 2, lines  # within one interval: the first line and the last
    assert lines[0].startswith("indexing: 0/1000 (0%)")
    assert lines[1].startswith("indexing: 1000/1000 (100%)")
    assert "img/s" in lines[1]
    assert "loss=0.5" in lines[1]


def test_lines_come_every_interval_and_a_total_is_not_needed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clipsearch.progress")
    bar = LineProgress(total=None, desc="steps", interval_s=0.0, mininterval=0.0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = [record.getMessage() for record in caplog.records if record.name == "clipsearch.progress"]
    assert lines[-1].startswith("steps: 3 [")
    assert len(lines) >= 4  # the first, one per update, and the last


def test_a_disabled_bar_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="clipsearch.progress")
    assert sum(progress_bar(range(5), disable=True)) == 10
    assert not [record for record in caplog.records if record.name == "clipsearch.progress"]


def test_a_pipe_gets_lines_not_carriage_returns() -> None:
    script = textwrap.dedent(
        """
        from clipsearch.logs import configure_logging
        from clipsearch.progress import progress_bar
        configure_logging()
        for step in progress_bar(range(20000), desc="epoch 1/1", leave=False):
            pass
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=python_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert "epoch 1/1: 20000/20000 (100%)" in lines[-1]
    assert all("clipsearch.progress" in line for line in lines), lines
