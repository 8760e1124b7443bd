"""The queue discipline of fair sharing at saturation: pure (no I/O, no clock, no asyncio).

Strict priority between classes (`PRIORITY_CLASSES`, highest first), and inside one class
start-time fair queuing (SFQ, Goyal et al. 1996) by caller: every request costs 1, a caller
of weight w advances its own finish tag by 1/w per request, and the queue serves the smallest
start tag. So two callers that are always backlogged are served in proportion to their weights,
and a caller that arrives with nothing queued starts at the class's virtual time: it waits
behind at most about one request per other backlogged caller, however long their backlogs are.

Memory is bounded: `max_len` entries at most (`push` says no past it), and a caller's finish tag
is kept only while it can still matter (it has entries queued or its tag is ahead of the
virtual time, in a busy period of its class); everything else is forgotten on `pop`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

# Highest first. The fixed set bounds the `priority` metric label.
PRIORITY_CLASSES = ("high", "normal", "low")
DEFAULT_PRIORITY = "normal"
# The value written into the body for vLLM's `--scheduling-policy priority` (lower runs first).
ENGINE_PRIORITY = {name: i for i, name in enumerate(PRIORITY_CLASSES)}
MAX_WEIGHT = 1000

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Entry(Generic[T]):
    """One queued request; `item` is whatever the caller of `push` wants back from `pop`."""

    item: T
    caller: str
    priority: str
    start: float
    seq: int
    removed: bool = False


@dataclass(slots=True)
class _Class:
    heap: list[tuple[float, int, Entry[Any]]] = field(default_factory=list)
    vtime: float = 0.0  # start tag of the last entry served
    finish: dict[str, float] = field(default_factory=dict)  # caller -> finish tag of its last entry
    queued: dict[str, int] = field(default_factory=dict)  # caller -> entries queued (not removed)
    length: int = 0


class FairQueue(Generic[T]):
    """Weighted fair queue across callers, strict priority across classes, at most `max_len` entries."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self._classes = {name: _Class() for name in PRIORITY_CLASSES}
        self._seq = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def length(self, priority: str) -> int:
        return self._classes[priority].length

    def push(self, item: T, caller: str, weight: int = 1, priority: str = DEFAULT_PRIORITY) -> Entry[T] | None:
        """Queue `item` for `caller`; None when the queue is full. Unknown classes count as the default,
        weights are clamped to 1..MAX_WEIGHT."""
        if self._len >= self.max_len:
            return None
        if priority not in self._classes:
            priority = DEFAULT_PRIORITY
        weight = min(max(int(weight), 1), MAX_WEIGHT)
        cls = self._classes[priority]
        start = max(cls.vtime, cls.finish.get(caller, 0.0))
        cls.finish[caller] = start + 1.0 / weight
        cls.queued[caller] = cls.queued.get(caller, 0) + 1
        self._seq += 1
        entry: Entry[T] = Entry(item, caller, priority, start, self._seq)
        heapq.heappush(cls.heap, (start, entry.seq, entry))
        cls.length += 1
        self._len += 1
        return entry

    def remove(self, entry: Entry[T]) -> None:
        """Take a queued entry out (its request timed out or went away); a no-op if already out."""
        if entry.removed:
            return
        entry.removed = True
        cls = self._classes[entry.priority]
        cls.length -= 1
        self._len -= 1
        self._unqueue(cls, entry.caller)

    def pop(self) -> Entry[T] | None:
        """The next entry to admit: the highest class with entries, smallest start tag first."""
        for cls in self._classes.values():
            while cls.heap:
                _, _, entry = heapq.heappop(cls.heap)
                if entry.removed:
                    continue
                entry.removed = True
                cls.length -= 1
                self._len -= 1
                cls.vtime = max(cls.vtime, entry.start)
                self._unqueue(cls, entry.caller)
                self._forget(cls)
                return entry
        return None

    def callers_tracked(self) -> int:
        """Callers whose finish tag is kept (for the memory-bound test)."""
        return sum(len(c.finish) for c in self._classes.values())

    @staticmethod
    def _unqueue(cls: _Class, caller: str) -> None:
        left = cls.queued[caller] - 1
        if left:
            cls.queued[caller] = left
        else:
            del cls.queued[caller]

    @staticmethod
    def _forget(cls: _Class) -> None:
        # A caller with nothing queued whose finish tag the virtual time has passed would start at
        # the virtual time anyway: drop it. Amortised: only when the map is twice the queued set.
        # The end of a busy period (nothing queued in the class) forgets every tag, as SFQ does.
        if not cls.queued:
            cls.finish.clear()
            cls.heap = []  # only removed entries left
        elif len(cls.finish) > 2 * len(cls.queued) + 16:
            v = cls.vtime
            cls.finish = {c: f for c, f in cls.finish.items() if c in cls.queued or f > v}
