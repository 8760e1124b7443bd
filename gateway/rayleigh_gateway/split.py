"""Traffic splits: pick one of a route's weighted backends per request.

Pure and cheap (a few hundred nanoseconds a pick). Without stickiness a pick is a weighted random
draw. With stickiness, each caller's backend is chosen by weighted rendezvous hashing (highest
random weight): every (caller, backend) pair gets a score `-weight / ln(u)`, `u` uniform in (0, 1)
from a hash of the pair, and the caller goes to the best score. Each backend then gets its
weight's share of the callers, and a weight change moves only the callers whose best score
changes hands: raising one backend's weight takes callers only to it, never between the others.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

_TWO_64 = float(1 << 64)


def _unit(caller: str, backend: str) -> float:
    """A hash of (caller, backend) as a float in (0, 1), the same in every process and run."""
    digest = hashlib.blake2b(f"{caller}\x00{backend}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / _TWO_64


@dataclass(slots=True)
class Picker:
    """Chooses an index into `names` (the backends, in config order) with probability weight/sum."""

    names: Sequence[str]
    weights: Sequence[int]
    sticky: bool = False
    _cumulative: list[int] = field(default_factory=list)
    _total: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if len(self.names) != len(self.weights) or not self.names:
            raise ValueError("a picker needs as many weights as backends, at least one")
        if any(w < 0 for w in self.weights):
            raise ValueError("weights must not be negative")
        total = 0
        self._cumulative = []
        for w in self.weights:
            total += w
            self._cumulative.append(total)
        self._total = total

    @property
    def routable(self) -> bool:
        """False when every weight is 0: no backend takes traffic."""
        return self._total > 0

    def pick(self, caller: str = "") -> int:
        """The backend for one request (`caller` matters only when sticky); -1 when all weights are 0."""
        if len(self.names) == 1:
            return 0 if self._total > 0 else -1
        if self._total <= 0:
            return -1
        if self.sticky and caller:
            return self.pick_sticky(caller)
        return bisect.bisect_right(self._cumulative, self._rng.random() * self._total)

    def pick_sticky(self, caller: str) -> int:
        best, best_score = -1, -math.inf
        for i, (name, weight) in enumerate(zip(self.names, self.weights, strict=True)):
            if weight <= 0:
                continue
            score = -weight / math.log(_unit(caller, name))
            if score > best_score:
                best, best_score = i, score
        return best

    def shares(self) -> list[float]:
        """Each backend's expected share of requests, 0..1."""
        return [w / self._total if self._total else 0.0 for w in self.weights]
