"""The ModelDeployment API (serving.rayleigh.dev/v1alpha1): the single source of truth.

The CRD's OpenAPI schema, its CEL rules, `kubectl explain` text, the docs' field reference and
`rayleigh validate` are all generated from these models, so field descriptions are written for
the people who read them there. Cross-field rules are CEL expressions attached to the model they
constrain (`RULES`); the API server enforces them from the CRD and `rayleigh validate` evaluates
the very same expressions offline, so the two can never disagree.

This package is the ground floor: it imports no other Rayleigh package. `import rayleigh_api as api`
gives every type; loading files (`rayleigh_api.loading`) and validation live in their own modules.
"""

from rayleigh_api.base import (
    ADAPTER_SOURCE_PATTERN,
    API_VERSION,
    CATEGORIES,
    CIDR_PATTERN,
    DENIED_EXTRA_ARGS,
    DENY_REGEX,
    DNS_LABEL_PATTERN,
    GROUP,
    KIND,
    MODEL_NAME_PATTERN,
    PLURAL,
    QUANTITY_PATTERN,
    S3_ENDPOINT_PATTERN,
    SHORT_NAMES,
    SINGULAR,
    SOURCE_PATTERN,
    VERSION,
    ApiModel,
    ExtraArg,
    Rule,
)
from rayleigh_api.gateway_spec import Fairness, GatewayAuth, GatewaySpec, JwtAlgorithm, JwtAuth, RateLimits, TrafficSpec
from rayleigh_api.model_spec import Adapter, EngineSpec, ModelSpec, RopeScaling, S3Options, SecretKeyRef
from rayleigh_api.resource import ModelDeployment, ModelDeploymentSpec
from rayleigh_api.routing import Routing
from rayleigh_api.status import (
    FAILED_REASONS,
    ColdStart,
    Condition,
    ConditionType,
    ModelDeploymentStatus,
    Phase,
    Reason,
    RolloutAnalysisStatus,
    RolloutStatus,
    TrafficStatus,
)
from rayleigh_api.workload import (
    Analysis,
    Autoscaling,
    HeadResources,
    ImageSpec,
    Resources,
    Rollout,
    ServingSpec,
    Toleration,
)

__all__ = [
    "ADAPTER_SOURCE_PATTERN",
    "API_VERSION",
    "CATEGORIES",
    "CIDR_PATTERN",
    "DENIED_EXTRA_ARGS",
    "DENY_REGEX",
    "DNS_LABEL_PATTERN",
    "FAILED_REASONS",
    "GROUP",
    "KIND",
    "MODEL_NAME_PATTERN",
    "PLURAL",
    "QUANTITY_PATTERN",
    "S3_ENDPOINT_PATTERN",
    "SHORT_NAMES",
    "SINGULAR",
    "SOURCE_PATTERN",
    "VERSION",
    "Adapter",
    "Analysis",
    "ApiModel",
    "Autoscaling",
    "ColdStart",
    "Condition",
    "ConditionType",
    "EngineSpec",
    "ExtraArg",
    "Fairness",
    "GatewayAuth",
    "GatewaySpec",
    "HeadResources",
    "ImageSpec",
    "JwtAlgorithm",
    "JwtAuth",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSpec",
    "Phase",
    "RateLimits",
    "Reason",
    "Resources",
    "Rollout",
    "RolloutAnalysisStatus",
    "RolloutStatus",
    "RopeScaling",
    "Routing",
    "Rule",
    "S3Options",
    "SecretKeyRef",
    "ServingSpec",
    "Toleration",
    "TrafficSpec",
    "TrafficStatus",
]
