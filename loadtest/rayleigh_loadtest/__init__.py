"""`rayleigh bench`: load-test any OpenAI-compatible endpoint.

Time to first token, inter-token latency, end-to-end latency, tokens/s, requests/s and goodput
under SLOs, for closed-loop concurrency sweeps and open-loop Poisson arrivals; plots; side-by-side
comparison of two endpoints in interleaved rounds with bootstrap confidence intervals.

This package imports nothing from the other Rayleigh packages: it runs from an installed
`rayleigh[bench]` against a Rayleigh endpoint, vLLM's own server or any OpenAI-compatible server.
The schema of what it writes is in docs/BENCH.md.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
