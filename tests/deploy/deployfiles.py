"""Readers for the deployment files, for tests that check them without a Docker engine.

YAML is read with PyYAML, `.env` with python-dotenv, `.dockerignore` patterns are matched
with pathspec and requirements with packaging. Compose variable interpolation, the merge
of an override file and Dockerfile instructions have no well-kept Python reader: those
are small, explicit subsets of the real formats that cover what our files use and fail
loudly on anything they do not understand.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import io
import re
import shlex
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec
import yaml
from dotenv import dotenv_values
from dotenv.parser import parse_stream
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
GPU_COMPOSE_FILE = REPO / "docker-compose.gpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"
LOCK_FILE = REPO / "requirements.lock"
MAKEFILE = REPO / "Makefile"
# Installed first, on its own and exactly pinned (its looser specs pull the CUDA build), so not locked.
TORCH_REQUIREMENT = "torch==2.13.0"
# What every virtual environment has, whatever the project asks for.
VENV_BASE = {"pip", "setuptools", "wheel"}

# Variables Compose itself reads from .env (not interpolated into the file).
COMPOSE_BUILTINS = {"COMPOSE_PROFILES", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME"}

_VARIABLE = re.compile(
    r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A required variable (`${VAR:?message}`) has no value."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR:+alt}`, `$$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        empty_counts = bool(op) and op.startswith(":")
        missing = value is None or (empty_counts and value == "")
        if op in {"-", ":-"}:
            return arg if missing else str(value)
        if op in {"?", ":?"}:
            if missing:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        if op in {"+", ":+"}:
            return "" if missing else arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def variables(text: str) -> set[str]:
    """The variable names `text` interpolates (`$$NAME` is a literal, not a reference)."""
    return {m.group("braced") or m.group("bare") for m in _VARIABLE.finditer(text) if m.group(0) != "$$"}


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return data


def merge_services(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge of an override file, for the keys our files use.

    Mappings merge recursively; `environment` lists become mappings first; other
    sequences and scalars are replaced.
    """

    def merge(left: Any, right: Any, key: str = "") -> Any:
        if key == "environment":
            return {**environment(left or {}), **environment(right or {})}
        if isinstance(left, dict) and isinstance(right, dict):
            merged = dict(left)
            for name, value in right.items():
                merged[name] = merge(left.get(name), value, name) if name in left else value
            return merged
        return right

    merged: dict[str, Any] = merge(base, override)
    return merged


def environment(raw: Any) -> dict[str, str | None]:
    """A service's `environment`, list or mapping form, as {NAME: value or None (pass-through)}."""
    if isinstance(raw, dict):
        return {str(k): None if v is None else str(v) for k, v in raw.items()}
    result: dict[str, str | None] = {}
    for item in raw or []:
        name, sep, value = str(item).partition("=")
        result[name] = value if sep else None
    return result


def read_env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(variables set, variables only documented in `# NAME=...` comments) of a .env file."""
    text = path.read_text()
    broken = [binding.original.line for binding in parse_stream(io.StringIO(text)) if binding.error]
    if broken:
        raise ValueError(f"{path}: lines {broken} are not NAME=value")
    parsed = dotenv_values(stream=io.StringIO(text), interpolate=False)
    bare = sorted(name for name, value in parsed.items() if value is None)
    if bare:
        raise ValueError(f"{path}: {bare} have no '=value'")
    values = {name: value for name, value in parsed.items() if value is not None}
    documented = set(re.findall(r"(?m)^\s*#\s*([A-Z][A-Z0-9_]*)=", text))
    return values, documented


def command_words(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(word) for word in command]


def python_modules(command: Any) -> list[str]:
    """Modules run with `python -m MODULE` in a command, including inside `bash -c` scripts."""
    text = " ".join(command_words(command))
    return re.findall(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)", text)


def settings_classes(module_name: str) -> list[type[BaseSettings]]:
    """The BaseSettings classes in `<module_name>.settings` (services.encoder -> EncoderSettings)."""
    try:
        module = importlib.import_module(f"{module_name}.settings")
    except ModuleNotFoundError:
        return []
    return [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseSettings) and cls is not BaseSettings and cls.__module__ == module.__name__
    ]


def settings_env_names(cls: type[BaseSettings]) -> set[str]:
    """Upper-case environment variable names a settings class reads (prefix + field, or alias)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias or field.alias
        if isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


# --- .dockerignore -----------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the build context.

    Docker's rule: the last pattern that matches the path or one of its parents wins;
    `!pattern` re-includes. Docker anchors every pattern at the context root, so each
    one is read as a gitignore pattern with a leading '/'.
    """
    anchored = [
        f"!/{raw[1:].strip('/')}" if raw.startswith("!") else f"/{raw.strip('/')}" for raw in patterns
    ]
    return pathspec.PathSpec.from_lines("gitignore", anchored).match_file(path.strip("/"))


def read_dockerignore(path: Path = DOCKERIGNORE) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# --- Dockerfile ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: str | None  # the `AS name` of the enclosing stage, or None before the first FROM


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += (
            " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        )
        if not stripped.endswith("\\"):
            logical.append(current)
            current = ""
    instructions = []
    stage: str | None = None
    for text in logical:
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\s+AS\s+(\S+)$", args, flags=re.IGNORECASE)
            stage = match.group(1) if match else None
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


# --- pyproject.toml extras and requirements.lock ----------------------------------------


def project_requirements(*extras: str) -> list[str]:
    """[project].dependencies plus the named extras, as written in pyproject.toml."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [
        *project["dependencies"],
        *(r for extra in extras for r in project["optional-dependencies"][extra]),
    ]


def project_extras() -> list[str]:
    return sorted(tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"])


def lock_pins(path: Path = LOCK_FILE) -> dict[NormalizedName, str]:
    """{package: version} of a `name==version` constraints file."""
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            if not sep:
                raise ValueError(f"{path}: not name==version: {line!r}")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def installed_closure(requirements: Iterable[str]) -> set[NormalizedName]:
    """The distributions `requirements` install, transitively: read from the installed packages'
    metadata, with markers evaluated for this interpreter (extras followed where requested)."""
    found: set[NormalizedName] = set()
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    pending = [(Requirement(text), frozenset({""})) for text in requirements]
    while pending:
        requirement, asked_extras = pending.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in asked_extras):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        found.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue  # then the import tests say what is missing
        pending += [(Requirement(text), frozenset({"", *requirement.extras})) for text in requires]
    return found
