"""Variants of the tiny model that differ only in config.json (weights and tokenizer are links)."""

from __future__ import annotations

import json
from pathlib import Path


def short_context_copy(src: Path, dst: Path, positions: int) -> Path:
    """The tiny model with `max_position_embeddings` lowered to `positions` (the context it "was
    trained with"), so that RoPE scaling has a limit to extend. Same weights, same tokenizer."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != "config.json" and not (dst / f.name).exists():
            (dst / f.name).symlink_to(f.resolve())
    config = json.loads((src / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst
