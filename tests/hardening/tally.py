"""Counts the distinct bad inputs the fuzz tests sent, and how each was answered.

A request is identified by a hash of what went over the wire (method, path and
body bytes), so the same input sent twice counts once.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Tally:
    outcomes: dict[str, dict[str, str]] = field(default_factory=dict)  # surface -> request hash -> outcome

    def record(self, surface: str, request: bytes, outcome: str) -> None:
        self.outcomes.setdefault(surface, {})[hashlib.sha256(request).hexdigest()] = outcome

    def distinct(self, surface: str | None = None) -> int:
        surfaces = [surface] if surface else list(self.outcomes)
        return sum(len(self.outcomes.get(name, {})) for name in surfaces)

    def counts(self, surface: str) -> Counter[str]:
        return Counter(self.outcomes.get(surface, {}).values())

    def summary(self) -> str:
        lines = [f"bad inputs tried (distinct): {self.distinct()}"]
        for surface in sorted(self.outcomes):
            outcomes = ", ".join(f"{name} x{count}" for name, count in sorted(self.counts(surface).items()))
            lines.append(f"  {surface}: {self.distinct(surface)} ({outcomes})")
        return "\n".join(lines)


# One per test session: the fuzz modules add to it, the terminal summary prints it.
TALLY = Tally()
