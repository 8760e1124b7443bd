"""The ModelDeployment API (serving.rayleigh.dev/v1alpha1): the single source of truth.

The CRD's OpenAPI schema, its CEL rules, `kubectl explain` text, the docs' field reference and
`rayleigh validate` are all generated from these models, so field descriptions are written for
the people who read them there. Cross-field rules are CEL expressions attached to the model they
constrain (`RULES`); the API server enforces them from the CRD and `rayleigh validate` evaluates
the very same expressions offline, so the two can never disagree.

This package is the ground floor: it imports no other Rayleigh package. `import rayleigh_api as api`
gives every type; loading files (`rayleigh_api.loading`) and validation live in their own modules.
"""

from rayleigh_api.base import Rule, ApiModel, GROUP, VERSION, API_VERSION, KIND, PLURAL, SINGULAR, SHORT_NAMES, CATEGORIES, SOURCE_PATTERN, ADAPTER_SOURCE_PATTERN, DNS_LABEL_PATTERN, MODEL_NAME_PATTERN, CIDR_PATTERN, QUANTITY_PATTERN, DENIED_EXTRA_ARGS, DENY_REGEX, ExtraArg
from rayleigh_api.model_spec import SecretKeyRef, RopeScaling, ModelSpec, EngineSpec, Adapter
from rayleigh_api.workload import Autoscaling, Toleration, Resources, Rollout, ImageSpec, ServingSpec
from rayleigh_api.gateway_spec import JwtAuth, GatewayAuth, RateLimits, GatewaySpec, JwtAlgorithm
from rayleigh_api.status import Phase, ConditionType, Reason, Condition, ModelDeploymentStatus, FAILED_REASONS
from rayleigh_api.resource import ModelDeploymentSpec, ModelDeployment

__all__ = [
    "ADAPTER_SOURCE_PATTERN",
    "API_VERSION",
    "Adapter",
    "ApiModel",
    "Autoscaling",
    "CATEGORIES",
    "CIDR_PATTERN",
    "Condition",
    "ConditionType",
    "DENIED_EXTRA_ARGS",
    "DENY_REGEX",
    "DNS_LABEL_PATTERN",
    "EngineSpec",
    "ExtraArg",
    "FAILED_REASONS",
    "GROUP",
    "GatewayAuth",
    "GatewaySpec",
    "ImageSpec",
    "JwtAlgorithm",
    "JwtAuth",
    "KIND",
    "MODEL_NAME_PATTERN",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelSpec",
    "PLURAL",
    "Phase",
    "QUANTITY_PATTERN",
    "RateLimits",
    "Reason",
    "Resources",
    "Rollout",
    "RopeScaling",
    "Rule",
    "SHORT_NAMES",
    "SINGULAR",
    "SOURCE_PATTERN",
    "SecretKeyRef",
    "ServingSpec",
    "Toleration",
    "VERSION",
]
