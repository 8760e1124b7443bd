"""`subset(want, have)`: does an object the operator wrote still hold what it wrote?

One comparison for the two places that ask: drift (a rendered child against the object the
Kubernetes API server returns, which adds defaults, status and metadata around it) and Serve (the
application config the operator builds against the `deployed_app_config` the Ray dashboard
reports, which adds Serve's own defaults). Both need the same rule:

- a dict matches when every key we set is there with a matching value (extra keys are fine);
- a list matches item by item and must have the same length (an extra port or env var is drift);
- numbers compare by value (1 == 1.0: JSON round trips and Serve's schema may turn one into the
  other);
- anything else must be equal, type included: "1" is not 1. Neither the API server (typed
  fields keep the JSON type they were sent with; quantities are rendered as strings already)
  nor Serve turns a value into its text, so a value that only prints the same is a real change
  (for Serve, a different argument to vLLM).
"""

from __future__ import annotations

from typing import Any


def subset(want: Any, have: Any) -> bool:
    """Every field in `want` has its value in `have` (which may hold more around it)."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(subset, want, have))
    if isinstance(want, int | float) and isinstance(have, int | float) and not isinstance(want, bool):
        return float(want) == float(have)
    return bool(want == have)
