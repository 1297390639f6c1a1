"""pyproject.toml's core dependencies and extras against requirements.lock and the Makefile."""

from __future__ import annotations

import re
from collections import defaultdict

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.deployfiles import (
    MAKEFILE,
    TORCH_REQUIREMENT,
    VENV_BASE,
    installed_closure,
    lock_pins,
    project_extras,
    project_requirements,
)


def _all_requirements() -> list[Requirement]:
    return [Requirement(text) for text in project_requirements(*project_extras())]


def test_the_extras_are_one_per_service_and_dev() -> None:
    assert project_extras() == ["dev", "encoder", "gateway", "indexer", "training"]


def test_the_lock_pins_exactly_what_the_extras_install() -> None:
    """Every package that the core and all extras pull in is locked, and nothing else."""
    installs = installed_closure(project_requirements(*project_extras())) - VENV_BASE
    torch = canonicalize_name(Requirement(TORCH_REQUIREMENT).name)
    locked = set(lock_pins())
    assert torch not in locked, "torch is installed first, on its own (see TORCH_REQUIREMENT)"
    assert installs - {torch} - locked == set(), "not in requirements.lock"
    assert locked - installs == set(), "locked but nothing requires it"


def test_every_requirement_accepts_its_locked_version() -> None:
    pins = lock_pins()
    for requirement in _all_requirements():
        name = canonicalize_name(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_a_package_is_required_the_same_way_everywhere() -> None:
    """Extras repeat some requirements (grpcio, qdrant-client, torch): their pins must not drift apart."""
    specs: dict[str, set[str]] = defaultdict(set)
    for requirement in _all_requirements():
        specs[canonicalize_name(requirement.name)].add(str(requirement.specifier))
    assert {name: spec for name, spec in specs.items() if len(spec) > 1} == {}


def test_torch_is_pinned_exactly_and_installed_first() -> None:
    torch = [r for r in _all_requirements() if canonicalize_name(r.name) == "torch"]
    assert torch
    assert {str(r) for r in torch} == {TORCH_REQUIREMENT}
    recipe = MAKEFILE.read_text()
    first_torch = recipe.index(f"pip install -q {TORCH_REQUIREMENT}\n")
    project = re.search(r"pip install -q -c requirements\.lock -e '\.\[([\w,]+)\]'", recipe)
    assert project, "make setup installs the project under the lock"
    assert first_torch < project.start()
    assert sorted(project.group(1).split(",")) == project_extras(), "make setup installs every extra"
