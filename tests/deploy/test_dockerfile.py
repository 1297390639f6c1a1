"""docker/Dockerfile and .dockerignore checked without a Docker engine."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.deploy.deployfiles import (
    REPO,
    Instruction,
    dockerfile_instructions,
    dockerignore_excludes,
    installed_closure,
    project_requirements,
    read_dockerignore,
)

DOCKERFILE = REPO / "docker" / "Dockerfile"
SOURCE_PACKAGES = ("clipsearch", "services", "training")


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions(DOCKERFILE)


def _arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.args:
            name, value = instruction.args.split("=", 1)
            defaults[name] = value
    return defaults


def _copy_sources(instruction: Instruction) -> list[str]:
    words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
    return words[:-1]


def test_copy_sources_exist_and_are_in_the_build_context(instructions: list[Instruction]) -> None:
    patterns = read_dockerignore()
    copies = [i for i in instructions if i.keyword in {"COPY", "ADD"} and "--from=" not in i.args]
    assert copies
    for instruction in copies:
        for source in _copy_sources(instruction):
            path = REPO / source
            assert path.exists(), f"COPY source {source} does not exist"
            assert not dockerignore_excludes(source.rstrip("/"), patterns), f".dockerignore drops {source}"


def test_copy_from_names_an_earlier_stage(instructions: list[Instruction]) -> None:
    seen: set[str] = set()
    for instruction in instructions:
        if instruction.keyword == "FROM" and instruction.stage:
            seen.add(instruction.stage)
        match = re.search(r"--from=(\S+)", instruction.args)
        if instruction.keyword == "COPY" and match:
            assert match.group(1) in seen, f"COPY --from={match.group(1)}: no such earlier stage"


def test_base_images_are_pinned(instructions: list[Instruction]) -> None:
    defaults = _arg_defaults(instructions)
    stages = {i.stage for i in instructions if i.keyword == "FROM" and i.stage}
    external = []
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        image = instruction.args.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        if image not in stages:
            external.append(image)
    assert external
    for image in external:
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*@sha256:[0-9a-f]{64}", image), (
            f"pin {image} to an exact version tag and digest"
        )


def test_both_torch_variants_are_stages(instructions: list[Instruction]) -> None:
    stages = {i.stage for i in instructions if i.keyword == "FROM"}
    variants = {"cpu", "cuda"}
    assert {f"torch-{v}" for v in variants} <= stages
    assert _arg_defaults(instructions)["TORCH_VARIANT"] in variants
    cpu = next(i for i in instructions if i.stage == "torch-cpu" and i.keyword == "RUN")
    assert "torch==2.13.0" in cpu.args
    assert "download.pytorch.org/whl/cpu" in cpu.args


def test_dependencies_are_installed_before_the_source_is_copied(instructions: list[Instruction]) -> None:
    deps = [i for i in instructions if i.stage == "deps"]
    copied = {s for i in deps if i.keyword == "COPY" for s in _copy_sources(i)}
    assert copied == {"pyproject.toml", "requirements.lock"}, "the deps layer must not depend on the source"
    assert any(i.keyword == "RUN" and "-c requirements.lock" in i.args for i in deps)


def test_runtime_is_slim_and_runs_as_non_root(instructions: list[Instruction]) -> None:
    runtime = [i for i in instructions if i.stage == "runtime"]
    assert runtime[0].args.split()[0] == "python-base", "runtime starts from the slim base, not a build stage"
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    copied = {s.rstrip("/") for i in runtime if i.keyword == "COPY" for s in _copy_sources(i)}
    assert set(SOURCE_PACKAGES) <= copied
    assert "tests" not in copied


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = read_dockerignore()
    for path in [".git/config", ".venv/bin/python", "var/checkpoints/x", ".env", "tests/conftest.py"]:
        assert dockerignore_excludes(path, patterns), path
    for path in ["clipsearch/__pycache__/store.cpython-311.pyc", "services/gateway/.mypy_cache/x"]:
        assert dockerignore_excludes(path, patterns), path
    for path in [
        "pyproject.toml",
        "requirements.lock",
        "clipsearch/store/base.py",
        "services/gateway/static",
    ]:
        assert not dockerignore_excludes(path, patterns), path


@pytest.mark.parametrize(
    ("path", "patterns", "excluded"),
    [
        ("a/b.py", ["**", "!a"], False),
        ("a/__pycache__/x.pyc", ["**", "!a", "**/__pycache__"], True),
        ("__pycache__", ["**/__pycache__"], True),
        ("docs/x.md", ["docs"], True),
        ("docsx/y", ["docs"], False),
        ("a/x.pyc", ["*.pyc"], False),  # Docker anchors patterns at the context root
    ],
)
def test_dockerignore_matching_follows_docker(path: str, patterns: list[str], excluded: bool) -> None:
    assert dockerignore_excludes(path, patterns) is excluded


def _stage(instructions: list[Instruction], name: str) -> list[Instruction]:
    stage = [i for i in instructions if i.stage == name]
    assert stage, f"no stage {name}"
    return stage


def _installed_requirements(stage: list[Instruction]) -> list[str]:
    """What a deps stage installs: its `python -c SCRIPT EXTRA... > requirements.in`, run here."""
    run = next(i for i in stage if i.keyword == "RUN" and "requirements.in" in i.args)
    words = shlex.split(run.args)
    start = next(n for n, word in enumerate(words) if word == "-c" and words[n - 1] == "python")
    script, extras = words[start + 1], words[start + 2 : words.index(">", start)]
    printed = subprocess.run(
        [sys.executable, "-c", script, *extras], cwd=REPO, capture_output=True, text=True, check=True
    )
    return printed.stdout.splitlines()


def test_the_torch_image_installs_the_encoder_and_training_extras(instructions: list[Instruction]) -> None:
    deps = _stage(instructions, "deps")
    assert deps[0].args.split()[0] == "torch-${TORCH_VARIANT}"
    assert _installed_requirements(deps) == project_requirements("encoder", "training")


def test_the_torch_free_target_installs_the_gateway_and_indexer_extras(
    instructions: list[Instruction],
) -> None:
    deps = _stage(instructions, "deps-torch-free")
    assert deps[0].args.split()[0] == "python-base", "not on top of a torch stage"
    copied = {s for i in deps if i.keyword == "COPY" for s in _copy_sources(i)}
    assert copied == {"pyproject.toml", "requirements.lock"}, "the deps layer must not depend on the source"
    assert any(i.keyword == "RUN" and "-c requirements.lock" in i.args for i in deps)
    requirements = _installed_requirements(deps)
    assert requirements == project_requirements("gateway", "indexer")
    assert installed_closure(requirements) & {"torch", "transformers"} == set()
    assert not any("torch==" in i.args or "download.pytorch.org" in i.args for i in deps)

    runtime = _stage(instructions, "runtime-torch-free")
    assert runtime[0].args.split()[0] == "python-base"
    sources = {"--from=deps-torch-free"}
    assert {i.args.split()[0] for i in runtime if i.keyword == "COPY" and "--from=" in i.args} == sources
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users
    assert users[-1] not in {"root", "0"}
    copied = {s.rstrip("/") for i in runtime if i.keyword == "COPY" for s in _copy_sources(i)}
    assert {"clipsearch", "services"} <= copied
    assert "tests" not in copied
