"""Loaded at start by interpreters that tests/deploy/test_service_imports.py launches with this folder
on PYTHONPATH.

Hides the installed distributions named in CLIPSEARCH_HIDDEN_DISTRIBUTIONS (comma-separated, canonical
names) as if they were not installed: their modules are not found (find_spec returns None, an import
raises ModuleNotFoundError) and importlib.metadata does not list them. The interpreter then holds only
what one service's extra installs, and code that probes for optional packages sees what it would see there.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from importlib.machinery import ModuleSpec
from importlib.metadata import Distribution, DistributionFinder, packages_distributions
from types import ModuleType
from typing import Any


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_HIDDEN = frozenset(filter(None, os.environ.get("CLIPSEARCH_HIDDEN_DISTRIBUTIONS", "").split(",")))


class _Hiding:
    """Wraps one meta path finder: hidden modules and distributions are not there."""

    def __init__(self, finder: Any, modules: frozenset[str]) -> None:
        self._finder = finder
        self._modules = modules

    def __getattr__(self, name: str) -> Any:
        return getattr(self._finder, name)

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name.partition(".")[0] in self._modules or not hasattr(self._finder, "find_spec"):
            return None
        spec: ModuleSpec | None = self._finder.find_spec(name, path, target)
        return spec

    def find_distributions(self, context: DistributionFinder.Context | None = None) -> Iterable[Distribution]:
        find = getattr(self._finder, "find_distributions", None)
        if find is None:
            return ()
        found = find(context) if context is not None else find()
        return (dist for dist in found if _canonical(dist.metadata["Name"]) not in _HIDDEN)


if _HIDDEN:
    # A module is hidden when every distribution that provides it is (a namespace such as
    # `google` stays while one of its providers is installed).
    _modules = frozenset(
        module
        for module, providers in packages_distributions().items()
        if all(_canonical(provider) in _HIDDEN for provider in providers)
    )
    sys.meta_path[:] = [_Hiding(finder, _modules) for finder in sys.meta_path]
