"""The ModelDeployment status: observed state, written only by the operator."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from rayleigh_api.base import ApiModel


class Phase(StrEnum):
    """The lifecycle phase `kubectl get md` shows.

    Pending    the Ray head is not ready yet (nothing can be deployed)
    Deploying  the Serve application is being deployed / the model is loading / workers starting
    Ready      Serve runs the application and at least one replica serves
    Degraded   it served before (or still serves) but something is wrong
    Failed     it cannot work as specified; the operator waits for a spec change
    """

    PENDING = "Pending"
    DEPLOYING = "Deploying"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    AUTOSCALING_METRIC_MISSING = "AutoscalingMetricMissing"
    # A model name this object serves is served by an older ModelDeployment: no gateway route.
    CONFLICT = "Conflict"
    # Scale to zero (autoscaling.minReplicas 0): True while the operator holds the workers at zero.
    SCALED_TO_ZERO = "ScaledToZero"


class Reason(StrEnum):
    """Condition reasons: stable, documented in docs/OPERATOR.md, used by alerts and tests."""

    INVALID_SPEC = "InvalidSpec"
    INSUFFICIENT_GPU = "InsufficientGPU"
    RAY_HEAD_NOT_READY = "RayHeadNotReady"
    SERVE_DEPLOY_FAILED = "ServeDeployFailed"
    SERVE_UNHEALTHY = "ServeUnhealthy"
    MODEL_LOADING = "ModelLoading"
    WORKERS_NOT_READY = "WorkersNotReady"
    SCALING = "Scaling"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    ALL_REPLICAS_READY = "AllReplicasReady"
    METRIC_MISSING = "AutoscalingMetricMissing"
    METRIC_AVAILABLE = "MetricAvailable"
    # The API server refused an apply (403): the operator's role lacks a permission; retried.
    FORBIDDEN = "Forbidden"
    # Conflict condition: True while an older ModelDeployment serves one of this one's names.
    MODEL_NAME_CONFLICT = "ModelNameConflict"
    NO_CONFLICT = "NoConflict"
    # ScaledToZero condition: idle past autoscaling.idleSeconds (True), woken by a request (False).
    IDLE = "Idle"
    WOKEN = "Woken"


# Reasons that mean the spec cannot work as written: the phase is Failed until the spec changes.
FAILED_REASONS = frozenset({Reason.INVALID_SPEC, Reason.INSUFFICIENT_GPU})


class Condition(ApiModel):
    type: str = Field(description="Condition type: Ready, Progressing, Degraded, ...")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", description="CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str | None = Field(default=None, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="Generation this condition reflects.")


class TrafficStatus(ApiModel):
    """This object's part in a traffic split (spec.traffic), as the gateway routes it."""

    weight: int = Field(description="spec.traffic.weight as applied.")
    share: float = Field(description="Percent of the split's requests this object gets: weight / sum of weights.")
    members: int = Field(description="ModelDeployments in the split, this one included.")
    route: str = Field(description="The split's gateway route, namespace/name of its oldest member.")


class ColdStart(ApiModel):
    """A start from zero replicas: from the wake signal to the first ready replica."""

    requested_at: str = Field(description="When the wake signal arrived (RFC 3339).")
    ready_at: str = Field(description="When a replica served again (RFC 3339).")
    seconds: float = Field(description="readyAt - requestedAt, in seconds.")
    workers_ready_seconds: float | None = Field(
        default=None,
        description="From the wake to the first worker pod ready: scheduled, started and joined to the Ray "
        "cluster (its readiness probe).",
    )
    model_loaded_seconds: float | None = Field(
        default=None,
        description="From the wake to the first Serve replica running: vLLM loaded the model (absent while the "
        "Ray dashboard cannot be read). The first token is measured at the gateway "
        "(rayleigh_gateway_cold_start_hold_seconds).",
    )


class ModelDeploymentStatus(ApiModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    phase: Phase | None = Field(default=None, description="Pending, Deploying, Ready, Degraded or Failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Latest observations, one per type.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(default=None, description="Replicas that exist.")
    ready_replicas: int | None = Field(default=None, description="Replicas that can serve requests.")
    selector: str | None = Field(default=None, description="Label selector of replica pods (for the HPA).")
    endpoint: str | None = Field(default=None, description="OpenAI base URL through the gateway.")
    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    served_models: list[str] = Field(
        default_factory=list, max_length=64, description="Model names served (base + adapters)."
    )
    traffic: TrafficStatus | None = Field(
        default=None, description="The traffic split this object takes part in (spec.traffic), and its share."
    )
    last_cold_start: ColdStart | None = Field(
        default=None, description="The last start from zero replicas (scale to zero), once it served."
    )
