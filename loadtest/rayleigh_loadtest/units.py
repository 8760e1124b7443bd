"""Parsing of the command line's durations ("30s", "500ms", "2m") and lists ("1,4,16")."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s|m|h)?\s*$")
_SCALE = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from "30s", "500ms", "2m", "1h", "250us" or a bare number of seconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (examples: 30s, 500ms, 2m)")
    value = float(m.group(1)) * _SCALE[m.group(2)]
    if value <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return value


def parse_int_list(text: str) -> list[int]:
    """[1, 4, 16] from "1,4,16" (each a positive integer)."""
    out = [int(x) for x in _items(text)]
    if not out or any(v < 1 for v in out):
        raise ValueError(f"expected positive integers separated by commas: {text!r}")
    return out


def parse_float_list(text: str) -> list[float]:
    """[2.0, 5.0] from "2,5" (each positive)."""
    out = [float(x) for x in _items(text)]
    if not out or any(v <= 0 for v in out):
        raise ValueError(f"expected positive numbers separated by commas: {text!r}")
    return out


def _items(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def format_load(value: float) -> str:
    """A load level for labels: 4 -> "4", 2.5 -> "2.5"."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
