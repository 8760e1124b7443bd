"""The ground floor of the ModelDeployment API: names, field patterns, the CEL `Rule` and the model base.

Every spec section (model_spec, workload, gateway_spec, status, resource) builds on `ApiModel` and
attaches its cross-field rules as `RULES`; see the package docstring for how they are used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, StringConstraints
from pydantic.alias_generators import to_camel

GROUP = "serving.rayleigh.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]
CATEGORIES = ["rayleigh"]

# A model or adapter source: a Hugging Face repo, a path on a PersistentVolumeClaim, an S3 prefix,
# or (local mode only) a directory on this machine.
SOURCE_PATTERN = r"^(hf://[A-Za-z0-9][\w.\-]*/[\w.\-]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|file://.+)$"
# A LoRA adapter's source: a Hugging Face repo (optionally pinned, hf://org/name@revision), an S3
# prefix, a path on a PersistentVolumeClaim, or (local mode) a directory; hf:// and s3:// adapters
# are downloaded by the replica itself when they are added (rayleigh_serving.adapters).
ADAPTER_SOURCE_PATTERN = (
    r"^(hf://[A-Za-z0-9][\w.\-]*/[\w.\-]+(@[\w.\-/]+)?|s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|file://.+)$"
)
# An S3-compatible store's endpoint (MinIO, Ceph RGW, R2...): scheme, host, optional port and path.
S3_ENDPOINT_PATTERN = r"^https?://[A-Za-z0-9.\-\[\]:]+(/.*)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Served model names follow OpenAI's loose conventions: "Qwen/Qwen2.5-7B-Instruct", "tiny-qwen:lora".
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/\-]{0,127}$"
CIDR_PATTERN = (
    r"^(([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])"
    r"|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-8]))$"
)
QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"

# vLLM flags that Rayleigh sets itself (from first-class fields or wiring) and that extraArgs must
# therefore not override: a second value would silently fight the operator's.
DENIED_EXTRA_ARGS = [
    "model",
    "served-model-name",
    "host",
    "port",
    "tensor-parallel-size",
    "pipeline-parallel-size",
    "gpu-memory-utilization",
    "quantization",
    "dtype",
    "max-model-len",
    "kv-cache-dtype",
    "enable-lora",
    "lora-modules",
    "max-loras",
    "max-lora-rank",
    "max-cpu-loras",
    "api-key",
    "ssl-keyfile",
    "ssl-certfile",
    "trust-remote-code",
    "download-dir",
    "chat-template",
]
DENY_REGEX = "^--?(" + "|".join(DENIED_EXTRA_ARGS) + ")(=.*)?$"
ExtraArg = Annotated[
    str, StringConstraints(min_length=2, max_length=512, pattern=r"^--?[A-Za-z0-9][A-Za-z0-9_\-]*(=.*)?$")
]


@dataclass(frozen=True)
class Rule:
    """A CEL rule on the object it is attached to (`self`), as in `x-kubernetes-validations`."""

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_crd(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


class ApiModel(BaseModel):
    """Base for every API object: camelCase keys on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
    )
    RULES: ClassVar[list[Rule]] = []
