"""The expected cold start of a replica (scale to zero: from the wake to the model loaded).

    cold start = worker pod ready (scheduled, started, joined to the Ray cluster)
               + replica start (Serve replica, vLLM engine start without the weights)
               + weight bytes / load bandwidth

`rayleigh plan` prints it with its terms. The basis of each default:
- `REPLICA_START_S`: the Serve replica + vLLM engine start with negligible weights (the tiny model's
  are a few MB, so all of it is the fixed part): from the replica scheduled to RUNNING, 42-52 s
  with light load on these 2-core machines (docs/benchmarks/local_start.md, `rayleigh up`).
  bench/cold_start.py measures the same phase end to end (`model_loaded_s` in
  bench/results/cold_start.json): about 160 s on a machine shared with other jobs (load average
  above 20 on 2 cores), an upper bound. CPU build (no CUDA graphs, no torch.compile): a GPU engine
  adds its own graph capture and compilation, not measurable here.
- `WORKER_START_S`: a Ray node starting and joining (`ray start`, 7 s on an idle machine here; 8-22 s
  for a lean head under load, docs/benchmarks/local_start.md), with the image already on the node. An image pull is not included: pre-pull or pin the replica image on GPU nodes.
- `LOAD_BYTES_PER_S`: 1 GiB/s, an assumption, not a measurement: a local NVMe or a page-cached
  volume does more, a network volume or a Hugging Face download less. `--load-bandwidth` sets it.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3

REPLICA_START_S = 45.0
WORKER_START_S = 7.0
LOAD_BYTES_PER_S = 1 * GIB


@dataclass(frozen=True)
class ColdStartEstimate:
    worker_s: float
    replica_start_s: float
    weight_bytes: float
    load_bytes_per_s: float

    @property
    def load_s(self) -> float:
        return self.weight_bytes / self.load_bytes_per_s

    @property
    def seconds(self) -> float:
        return self.worker_s + self.replica_start_s + self.load_s

    def describe(self) -> str:
        return (
            f"~{self.seconds:.0f} s = {self.worker_s:.0f} s worker pod + Ray join, "
            f"{self.replica_start_s:.0f} s Serve replica + engine start, "
            f"{self.weight_bytes / GIB:.2f} GiB weights at {self.load_bytes_per_s / GIB:.2g} GiB/s "
            f"({self.load_s:.0f} s)"
        )

    def as_json(self) -> dict[str, float]:
        return {
            "seconds": round(self.seconds, 1),
            "workerSeconds": self.worker_s,
            "replicaStartSeconds": self.replica_start_s,
            "weightLoadSeconds": round(self.load_s, 1),
            "loadBytesPerSecond": self.load_bytes_per_s,
        }


def estimate(weight_bytes: float, load_bytes_per_s: float = LOAD_BYTES_PER_S) -> ColdStartEstimate:
    """The cold start of a replica holding `weight_bytes` of weights (all its GPUs together: the
    shards of one replica are read from the same volume)."""
    if load_bytes_per_s <= 0:
        raise ValueError("--load-bandwidth must be above 0 (bytes per second, e.g. 1GiB)")
    return ColdStartEstimate(WORKER_START_S, REPLICA_START_S, weight_bytes, load_bytes_per_s)
