"""Each service's entry module in a fresh interpreter, against what its extra installs.

The gateway and the indexer run on an image without torch and transformers (docker/Dockerfile,
target runtime-torch-free). CI installs every extra, where a missing dependency of one service
would go unseen: these tests start each entry module with only its own extra importable
(tests/extras_env/sitecustomize.py hides every other installed package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name

from clipsearch.processes import free_port
from tests.deploy.deployfiles import REPO, VENV_BASE, installed_closure, project_requirements
from tests.gateway.conftest import digit_png
from tests.indexer.conftest import write_mnist
from tests.processes import start

EXTRAS_ENV = Path(__file__).resolve().parents[1] / "extras_env"
ENTRY_MODULES = {
    "encoder": "services.encoder",
    "gateway": "services.gateway",
    "indexer": "services.indexer",
    "training": "training",
}
TORCH_FREE = ("gateway", "indexer")
MODEL_PACKAGES = {"torch", "transformers"}

# Imports the entry module as `python -m` would load it (without running main), then names every
# module the interpreter holds.
_PROBE = (
    "import importlib, json, sys; importlib.import_module(sys.argv[1] + '.__main__'); "
    "print(json.dumps(sorted(sys.modules)))"
)


def hidden_distributions(service: str) -> list[str]:
    """The installed distributions that `service`'s extra does not install."""
    kept = installed_closure(project_requirements(service)) | VENV_BASE | {"clipsearch"}
    installed = {canonicalize_name(dist.metadata["Name"]) for dist in distributions()}
    return sorted(installed - kept)


def service_env(service: str | None, **variables: str) -> dict[str, str]:
    """The environment of a fresh interpreter; with `service`, only that extra is importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **variables}
    env.pop("CLIPSEARCH_HIDDEN_DISTRIBUTIONS", None)
    if service is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(EXTRAS_ENV), str(REPO)])
        env["CLIPSEARCH_HIDDEN_DISTRIBUTIONS"] = ",".join(hidden_distributions(service))
    return env


def loaded_modules(service: str, *, only_its_extra: bool) -> list[str]:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, ENTRY_MODULES[service]],
        cwd=REPO,
        env=service_env(service if only_its_extra else None),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, f"{service}: {probe.stderr[-3000:]}"
    modules: list[str] = json.loads(probe.stdout)
    return modules


@pytest.mark.parametrize("service", TORCH_FREE)
def test_gateway_and_indexer_extras_install_neither_torch_nor_transformers(service: str) -> None:
    assert installed_closure(project_requirements(service)) & MODEL_PACKAGES == set()


@pytest.mark.parametrize("service", TORCH_FREE)
def test_gateway_and_indexer_import_neither_torch_nor_transformers(service: str) -> None:
    """With torch installed (as here), importing the entry module still loads none of it."""
    loaded = loaded_modules(service, only_its_extra=False)
    heavy = [module for module in loaded if module.partition(".")[0] in MODEL_PACKAGES]
    assert heavy == [], (
        f"{ENTRY_MODULES[service]}.__main__ imports {heavy[:5]}; the traceback of "
        "CLIPSEARCH_HIDDEN_DISTRIBUTIONS=torch,transformers PYTHONPATH=tests/extras_env:. "
        f"python -c 'import {ENTRY_MODULES[service]}.__main__' shows the import chain"
    )


@pytest.mark.parametrize(
    "service",
    # Importing torch and transformers takes seconds.
    [
        pytest.param(name, marks=pytest.mark.slow) if name not in TORCH_FREE else name
        for name in ENTRY_MODULES
    ],
)
def test_entry_module_imports_with_only_its_extra(service: str) -> None:
    """The core dependencies plus the service's extra are enough to load its entry module."""
    loaded = loaded_modules(service, only_its_extra=True)
    assert f"{ENTRY_MODULES[service]}.__main__" in loaded


def test_the_harness_hides_what_the_extra_does_not_install() -> None:
    """In the gateway's interpreter fastapi is there; torch is neither importable nor listed."""
    script = (
        "import importlib.metadata as md, importlib.util as u, fastapi\n"
        "print(u.find_spec('torch'), [d.metadata['Name'] for d in md.distributions() if d.metadata['Name'] == 'torch'])\n"
        "import torch"
    )
    probe = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=service_env("gateway"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.stdout.strip() == "None []", probe.stderr[-2000:]
    assert "ModuleNotFoundError: No module named 'torch'" in probe.stderr


@pytest.mark.slow
def test_indexer_then_gateway_run_with_only_their_extras(tmp_path: Path, encoder_target: str) -> None:
    """`python -m services.indexer` indexes and `python -m services.gateway` answers searches
    while only their extras are importable: torch is not needed past the entry modules either."""
    write_mnist(tmp_path / "mnist")
    indexed = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.indexer",
            *("--encoder", encoder_target, "--store-path", str(tmp_path / "qdrant")),
            *("--media-dir", str(tmp_path / "media"), "--collection", "digits"),
            *("--mnist-dir", str(tmp_path / "mnist"), "--batch-size", "8", "--no-progress"),
        ],
        cwd=REPO,
        env=service_env("indexer"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert indexed.returncode == 0, indexed.stderr[-3000:]
    assert "40 indexed" in indexed.stdout

    port = free_port()
    log = tmp_path / "gateway.log"
    env = service_env(
        "gateway",
        GATEWAY_ENCODER=encoder_target,
        GATEWAY_STORE_PATH=str(tmp_path / "qdrant"),
        GATEWAY_MEDIA_DIR=str(tmp_path / "media"),
        GATEWAY_COLLECTION="digits",
        GATEWAY_HOST="127.0.0.1",
        GATEWAY_HTTP_PORT=str(port),
        GATEWAY_GRPC_PORT="0",
    )
    with start("services.gateway", env, log) as gateway:
        url = f"http://127.0.0.1:{port}"
        gateway.wait_http_ready(url)
        with httpx.Client(base_url=url, timeout=30) as client:
            text = client.post("/api/v1/search/text", json={"query": "a handwritten seven", "k": 5})
            assert text.status_code == 200, text.text
            hits = text.json()["hits"]
            assert len(hits) == 5
            image = client.get(hits[0]["image_url"])
            assert image.status_code == 200
            assert image.headers["content-type"] == "image/png"
            drawing = digit_png(7, sketch=True, size=280)
            sketch = client.post("/api/v1/search/sketch", files={"file": ("s.png", drawing, "image/png")})
            assert sketch.status_code == 200, sketch.text
