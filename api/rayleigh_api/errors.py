"""The one error shape every layer uses for a spec it cannot accept: a list of (field path, message)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class Problem(NamedTuple):
    """One thing wrong with a spec: the field's path (e.g. `spec.engine.extraArgs[0]`) and what to do."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class FieldErrors(ValueError):
    """A spec that cannot be accepted; `problems` lists every problem found, not just the first.

    Subclasses say which layer refused it (the API rules, the renderers, the serving config, the gateway),
    so callers can catch one layer or all of them.
    """

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = [Problem(*p) for p in problems]
        super().__init__("; ".join(str(p) for p in self.problems))
