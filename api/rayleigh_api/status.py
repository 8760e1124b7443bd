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
    # A rollout (docs/ROLLOUT.md): True after the last one was rolled back, with the reason; False
    # once a rollout completes.
    ROLLED_BACK = "RolledBack"


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
    # Rollouts: Progressing while steps run (RolloutStep) or wait (RolloutPaused); RolledBack True with
    # AnalysisFailed, NewVersionFailed or Aborted, False with RolloutComplete.
    ROLLOUT_STEP = "RolloutStep"
    ROLLOUT_PAUSED = "RolloutPaused"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ANALYSIS_FAILED = "AnalysisFailed"
    NEW_VERSION_FAILED = "NewVersionFailed"
    ABORTED = "Aborted"


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


class RolloutAnalysisStatus(ApiModel):
    """The last check of a rollout step: both versions over the same window."""

    result: Literal["Passed", "Failed", "Inconclusive"] = Field(description="Passed, Failed or Inconclusive.")
    message: str = Field(default="", description="What was compared, and why it failed or was inconclusive.")
    new_error_rate: float | None = Field(default=None, description="Errors per request of the new version.")
    old_error_rate: float | None = Field(default=None, description="Errors per request of the old version.")
    new_ttft_p95_seconds: float | None = Field(default=None, description="TTFT p95 of the new version.")
    old_ttft_p95_seconds: float | None = Field(default=None, description="TTFT p95 of the old version.")
    new_requests: float | None = Field(default=None, description="Requests the new version served in the window.")
    failures: int = Field(default=0, description="Failed checks in a row.")
    inconclusive: int = Field(default=0, description="Inconclusive checks in a row.")
    checked_at: str | None = Field(default=None, description="When (RFC 3339).")


class RolloutStatus(ApiModel):
    """The rollout in progress, or the last one (docs/ROLLOUT.md)."""

    phase: Literal["Progressing", "Paused", "Completed", "RolledBack"] = Field(
        description="Progressing, Paused (waits for `rayleigh rollout promote` or `abort`), Completed or RolledBack."
    )
    step: int = Field(default=0, description="Replicas on the new version (the step reached).")
    steps: int = Field(default=0, description="Replicas to move (spec.replicas).")
    old_replicas: int = Field(default=0, description="Serve replicas of the old version that exist.")
    new_replicas: int = Field(default=0, description="Serve replicas of the new version that exist.")
    old_revision: str | None = Field(default=None, description="Hash of the old version's Serve config.")
    new_revision: str | None = Field(default=None, description="Hash of the new version's Serve config.")
    new_weight: int | None = Field(default=None, description="Percent of the gateway's requests the new version gets.")
    reason: str = Field(default="", description="Why it paused or rolled back (a Reason).")
    message: str = Field(default="", description="Human-readable detail.")
    analysis: RolloutAnalysisStatus | None = Field(default=None, description="The last step check.")


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
    rollout: RolloutStatus | None = Field(
        default=None, description="The rollout in progress, or the last one (docs/ROLLOUT.md)."
    )
