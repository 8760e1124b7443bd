"""spec.autoscaling, spec.resources, spec.rollout, spec.image and spec.serving: where and how replicas run."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from rayleigh_api.base import QUANTITY_PATTERN, ApiModel, Rule


class Autoscaling(ApiModel):
    """Horizontal autoscaling of replicas by a serving signal (an HPA on the scale subresource)."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must be less than or equal to maxReplicas",
            field_path=".minReplicas",
        ),
        Rule(
            "self.metric != 'kvCacheUsage' || !has(self.target) || (self.target > 0.0 && self.target <= 1.0)",
            "for metric kvCacheUsage, target is a fraction of the KV cache between 0 and 1 (e.g. 0.8)",
            field_path=".target",
        ),
        Rule(
            "self.minReplicas >= 1 || has(self.idleSeconds)",
            "minReplicas 0 (scale to zero) needs idleSeconds: how long the model may see no request before "
            "the operator scales it to zero",
            field_path=".minReplicas",
        ),
        Rule(
            "!has(self.idleSeconds) || self.minReplicas == 0",
            "idleSeconds applies to scale to zero only: set minReplicas to 0",
            field_path=".idleSeconds",
        ),
    ]

    min_replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Fewest replicas the autoscaler keeps. 0 enables scale to zero (with idleSeconds): the "
        "operator, not the HPA, scales to 0 after idleSeconds without a request and back to 1 when the "
        "gateway holds a request for the model; the HPA keeps at least 1 while replicas run.",
    )
    idle_seconds: int | None = Field(
        default=None,
        ge=5,
        le=86400,
        description="Scale to zero: with minReplicas 0, the operator scales the workers to 0 after this many "
        "seconds without a request (the gateway's wake signals and Serve's request count).",
    )
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas the autoscaler may create.")
    metric: Literal["queueDepth", "inFlightRequests", "kvCacheUsage"] = Field(
        default="queueDepth",
        description="Signal to scale on, averaged per replica: 'queueDepth' (requests waiting in vLLM's "
        "queue; the default, because GPU utilisation saturates with one request), 'inFlightRequests' "
        "(running + waiting), or 'kvCacheUsage' (fraction of KV cache in use).",
    )
    target: float | None = Field(
        default=None,
        gt=0,
        le=100000,
        description="Target value of the metric per replica. Defaults: queueDepth 2, inFlightRequests 16, "
        "kvCacheUsage 0.8.",
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="How long a higher recommendation must hold before scaling up."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="How long a lower recommendation must hold before scaling down (model loads are slow: "
        "keep this generous).",
    )


class Toleration(ApiModel):
    key: str | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="'Exists' or 'Equal'.")
    value: str | None = Field(default=None, description="Taint value to match with 'Equal'.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class HeadResources(ApiModel):
    """What the Ray head pod asks the scheduler for (one per ModelDeployment, whatever the replicas).

    The defaults fit a production head (GCS, dashboard, Serve controller and HTTP proxy for many
    replicas); a small cluster (kind, CI) sets e.g. cpu '250m', memory '2560Mi'.
    """

    cpu: str = Field(
        default="2",
        pattern=QUANTITY_PATTERN,
        description="CPU request of the Ray head, e.g. '2' or '500m'. Ray advertises no CPU on the head, so no "
        "replica runs there: it holds GCS, the dashboard, the Serve controller and an HTTP proxy.",
    )
    memory: str = Field(
        default="8Gi",
        pattern=QUANTITY_PATTERN,
        description="Memory request and limit of the Ray head, e.g. '8Gi'.",
    )


class Resources(ApiModel):
    """What one replica asks the scheduler for, and the Ray head's own requests."""

    gpus: int = Field(
        default=1,
        ge=0,
        le=16,
        description="GPUs per replica; must equal tensorParallelSize x pipelineParallelSize. "
        "0 runs on CPU (local mode, tests).",
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-]+$",
        description="Extended resource name of the GPU (e.g. nvidia.com/gpu, amd.com/gpu, or a MIG profile "
        "like nvidia.com/mig-3g.40gb).",
    )
    cpu: str | None = Field(default=None, pattern=QUANTITY_PATTERN, description="CPU request, e.g. '8'.")
    memory: str | None = Field(
        default=None, pattern=QUANTITY_PATTERN, description="Memory request and limit, e.g. '32Gi'."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a replica's pod must match (e.g. GPU product)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations for tainted GPU nodes."
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="Pod affinity rules, as in a Pod spec's `affinity`."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass for replica pods on shared GPU clusters."
    )
    head: HeadResources = Field(
        default_factory=HeadResources,
        description="CPU and memory of the Ray head pod (one per ModelDeployment, not per replica).",
        json_schema_extra={"default": {}},
    )


class Analysis(ApiModel):
    """The check after each rollout step: the new version's error rate and TTFT p95 against the old
    version's over the same window, read from Prometheus (the operator's --prometheus-url)."""

    enabled: bool = Field(
        default=True,
        description="Check each step before the next. Off (or no --prometheus-url on the operator): a step "
        "continues as soon as its new replicas are ready.",
    )
    interval_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="How long the new replicas of a step serve before the analysis reads the metrics, and the "
        "window it reads (both versions over the same window).",
    )
    max_error_rate_increase: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Fail a check when the new version's error rate (4xx/5xx and mid-stream errors per request) "
        "exceeds the old version's by more than this fraction (0.05: 5 points).",
    )
    max_ttft_ratio: float = Field(
        default=1.5,
        ge=1,
        le=100,
        description="Fail a check when the new version's time-to-first-token p95 exceeds the old version's "
        "times this factor.",
    )
    min_requests: int = Field(
        default=10,
        ge=1,
        le=1000000,
        description="Requests the new version must have served in the window for a check to count; fewer: "
        "inconclusive.",
    )
    failure_limit: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Failed checks in a row that roll the rollout back automatically.",
    )
    inconclusive_limit: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Inconclusive checks in a row (too few requests, Prometheus unreachable) that pause the "
        "rollout: `rayleigh rollout promote` continues it, `abort` rolls it back.",
    )


class Rollout(ApiModel):
    """How a spec change that needs new replicas (model, revision, quantization, engine arguments)
    moves: replica by replica on the same GPUs, checked after each step (docs/ROLLOUT.md)."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "!(string(self.maxUnavailable) in ['0', '0%'] && string(self.maxSurge) in ['0', '0%'])",
            "maxUnavailable and maxSurge cannot both be 0: a rollout could never make progress",
            field_path=".maxSurge",
        )
    ]

    max_unavailable: int | str = Field(
        default=1,
        description="Replicas (or a percentage, rounded down) one step drains before their replacements start, "
        "when maxSurge is 0: the new replicas take the GPUs the drained ones freed. Also the worker pods' "
        "rolling update.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    max_surge: int | str = Field(
        default=0,
        description="Extra replicas (or a percentage, rounded up) one step starts before draining old ones; "
        "each needs spare GPUs. 0 (default): no surplus GPUs needed.",
        json_schema_extra={"x-kubernetes-int-or-string": True},
    )
    analysis: Analysis = Field(
        default_factory=Analysis,
        description="The automatic check after each step: continue, pause or roll back.",
        json_schema_extra={"default": {}},
    )


class ImageSpec(ApiModel):
    name: str | None = Field(
        default=None,
        max_length=512,
        description="Override the Ray + vLLM replica image (default: the chart's image for this version).",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy."
    )
    pull_secrets: list[str] = Field(default_factory=list, max_length=16, description="Names of image pull Secrets.")


class ServingSpec(ApiModel):
    """Ray Serve level knobs; changing them updates the Serve config in place, with no pod restart."""

    stream_batching_interval_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="How long Ray Serve gathers streamed chunks before sending them (trades first-token "
        "latency for throughput). Default: Rayleigh's measured setting.",
    )
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, le=100000, description="Requests one replica accepts at once before queueing."
    )
