"""The ModelDeployment object and its spec."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from rayleigh_api.base import ApiModel, Rule
from rayleigh_api.gateway_spec import GatewaySpec, TrafficSpec
from rayleigh_api.model_spec import Adapter, EngineSpec, ModelSpec
from rayleigh_api.routing import Routing
from rayleigh_api.status import ModelDeploymentStatus
from rayleigh_api.workload import Autoscaling, ImageSpec, Resources, Rollout, ServingSpec


class ModelDeploymentSpec(ApiModel):
    """Desired state of a served model."""

    RULES: ClassVar[list[Rule]] = [
        Rule(
            "self.resources.gpus == 0 ? (self.engine.tensorParallelSize == 1 && "
            "self.engine.pipelineParallelSize == 1) : self.resources.gpus == "
            "self.engine.tensorParallelSize * self.engine.pipelineParallelSize",
            "resources.gpus must equal engine.tensorParallelSize x engine.pipelineParallelSize "
            "(one replica uses one GPU per shard); with gpus 0 (CPU) both must be 1",
            field_path=".resources.gpus",
        ),
        Rule(
            "!has(self.adapters) || self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
            "adapter names must be unique",
            field_path=".adapters",
        ),
        Rule(
            "!has(self.model.servedModelName) || !has(self.adapters) || self.adapters.all(a, a.name != self.model.servedModelName)",
            "an adapter name must differ from model.servedModelName",
            field_path=".adapters",
        ),
        Rule(
            "!has(self.autoscaling) || (self.replicas >= self.autoscaling.minReplicas"
            " && self.replicas <= self.autoscaling.maxReplicas)",
            "replicas must lie within autoscaling.minReplicas..maxReplicas (the autoscaler owns it from there)",
            field_path=".replicas",
        ),
        Rule(
            "!has(self.traffic) || has(self.model.servedModelName)",
            "traffic needs model.servedModelName: the members of a split share that name (without it each object "
            "serves its own metadata.name)",
            field_path=".traffic",
        ),
    ]

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec = Field(
        default_factory=EngineSpec, description="vLLM engine settings.", json_schema_extra={"default": {}}
    )
    adapters: list[Adapter] = Field(
        default_factory=list, max_length=32, description="LoRA adapters served as extra model names."
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Number of replicas (each with resources.gpus GPUs).")
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale replicas automatically on a serving signal."
    )
    resources: Resources = Field(
        default_factory=Resources,
        description="Resources per replica (workers), and the Ray head's under `head`.",
        json_schema_extra={"default": {}},
    )
    gateway: GatewaySpec = Field(
        default_factory=GatewaySpec,
        description="Exposure through the Rayleigh gateway.",
        json_schema_extra={"default": {}},
    )
    traffic: TrafficSpec | None = Field(
        default=None,
        description="Weighted traffic between ModelDeployments that serve the same model name (a split); unset: "
        "this object alone serves its names (the oldest ModelDeployment keeps a name).",
    )
    rollout: Rollout = Field(
        default_factory=Rollout, description="Rolling update settings.", json_schema_extra={"default": {}}
    )
    image: ImageSpec = Field(
        default_factory=ImageSpec, description="Replica image overrides.", json_schema_extra={"default": {}}
    )
    serving: ServingSpec = Field(
        default_factory=ServingSpec, description="Ray Serve settings.", json_schema_extra={"default": {}}
    )
    routing: Routing = Field(
        default_factory=Routing,
        description="How requests are spread over the replicas (prefix-cache aware by default).",
        json_schema_extra={"default": {}},
    )


class ModelDeployment(ApiModel):
    """A model served by Rayleigh: Ray Serve replicas wrapping vLLM, behind the gateway."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["serving.rayleigh.dev/v1alpha1"] = "serving.rayleigh.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")

    def served_model_name(self) -> str:
        """The base model's name in the OpenAI `model` field."""
        return self.spec.model.served_model_name or self.name

    def served_models(self) -> list[str]:
        """Every name a client can ask for: the base model, then each adapter."""
        return [self.served_model_name(), *(a.name for a in self.spec.adapters)]
