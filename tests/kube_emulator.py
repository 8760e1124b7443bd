"""A Kubernetes API for tests and benchmarks: kmock's KubernetesEmulator, fixed where it falls short.

There is no kube-apiserver on these machines. `kmock` (pinned: kmock==0.8, by kopf's author)
serves a stateful, in-memory Kubernetes API over real HTTP, with discovery, Kubernetes-style
errors and a request log. As shipped it blocks kopf and kubectl in the ways listed in
../shared/notes/kubernetes-api-in-tests.md; this subclass keeps kmock's server, request parsing,
discovery and error rendering, and replaces the object store with one that:

- gives objects `uid`, `resourceVersion`, `creationTimestamp`, `generation` (bumped on spec
  changes only) and supports `generateName`;
- keeps `status` apart: the main resource ignores status changes, `/status` changes only status;
  the `/scale` subresource of Deployments and CRDs (specReplicasPath etc. from the CRD);
- implements PUT, merge patch (RFC 7386), strategic merge patch (approximated as merge patch),
  JSON patch (a failed `test` answers 422), and server-side apply (YAML or JSON; creates missing
  objects; removes fields the same field manager applied before and no longer applies; lists
  are atomic; no field-ownership conflicts);
- does not bump resourceVersion or emit a watch event for a no-op write, like the real server;
- lists with `kind`/`apiVersion`/`metadata.resourceVersion`, label and field selectors, and
  meta.k8s.io Table output with a CRD's printer columns (so `kubectl get md` shows them);
- watches that snapshot and subscribe atomically, replay from `resourceVersion` out of a
  history (410 Gone when too old), honour `timeoutSeconds`, `sendInitialEvents` (+ bookmark);
- registers custom resources when a CustomResourceDefinition is created or applied;
- garbage-collects dependents by ownerReferences uid (background propagation) when an owner is
  deleted, and finalizers hold deletion (deletionTimestamp) as in Kubernetes.

- authenticates service-account bearer tokens (issued by the TokenRequest API) and authorizes
  their requests with RBAC over the Roles, ClusterRoles and bindings stored in it, including the
  `create` check of a server-side apply that creates its object (tests/emulator_rbac.py); requests
  without a token are the tests' administrator and stay allowed;
- admits objects of a CRD's kind as the API server does: unknown fields, pruning, defaulting, the
  OpenAPI schema, CEL rules with transition rules and ratcheting, 422 `Invalid` with the field
  paths (tests/emulator_admission.py).

What it still cannot show: admission webhooks and ValidatingAdmissionPolicies of built-in kinds,
schema validation of built-in kinds; real SSA field ownership and conflicts; controllers (no
Deployment -> ReplicaSet -> Pod, no kubelet, no scheduler). Tests that stop short of those say so;
the kind end-to-end workflow covers them.

Run standalone (the benchmark does): `python -m tests.kube_emulator --port 0 --ready-file F`
writes the URL to F once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import dataclasses
import datetime
import json
import re
import signal
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import parsing, rendering
from multidict import CIMultiDict

from tests import emulator_admission, emulator_rbac

HISTORY_LIMIT = 200_000
# Who a request without a token is: the tests' kubectl, a cluster administrator.
ADMIN = emulator_rbac.UserInfo("emulator-admin", ("system:masters", "system:authenticated"))
APPLY_PATCH = "application/apply-patch+yaml"


_kmock_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock's path parser, except for Namespaces themselves: kmock reads `/api/v1/namespaces` as a
    namespace with no name (and fails), `/api/v1/namespaces/NAME` as a namespace with no resource."""
    parts = path.strip("/").split("/")
    if (
        len(parts) >= 3
        and parts[0] == "api"
        and parts[2] == "namespaces"
        and (len(parts) <= 4 or parts[4] in ("status", "finalize"))
    ):
        name = parts[3] if len(parts) > 3 else None
        sub = parts[4] if len(parts) > 4 else None
        return parsing.ParsedPath("", parts[1], "namespaces", None, name, sub)
    return _kmock_parse_path(path)


parsing.parse_path = _parse_path  # rendering.Request._parse calls it through the module


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, status: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.status = status  # a complete Status body, when the API server's has more than a message


@dataclass
class RequestContext:
    """What the write paths need to know about the request being served (set by `_handle`)."""

    user: emulator_rbac.UserInfo | None = None  # None: the tests' administrator (no token)
    field_validation: str = "Warn"
    apply_body: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: set[str] = field(default_factory=set)
    scale: dict[str, str] | None = None  # specReplicasPath, statusReplicasPath, labelSelectorPath
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


@dataclass
class Watcher:
    group: str
    plural: str
    namespace: str | None
    name: str | None
    labels: list[tuple[str, str, str | None]]
    fields: list[tuple[str, str, str]]
    queue: asyncio.Queue[dict[str, Any] | None]


Key = tuple[str, str, str | None, str]  # group, plural, namespace, name


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def json_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test, move, copy); ApiError 422 when it fails."""
    doc = copy.deepcopy(doc)

    def parent(path: str) -> tuple[Any, str]:
        parts = _pointer(path)
        if not parts:
            raise ApiError(422, "Invalid", "cannot patch the document root")
        node = doc
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, parts[-1]

    def get(path: str) -> Any:
        node = doc
        for part in _pointer(path):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        try:
            if kind == "test":
                if get(path) != op.get("value"):
                    raise ApiError(422, "Invalid", f"the server rejected our request: test failed at {path}")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(get(op["from"]))
                if kind == "move":
                    p, k = parent(op["from"])
                    del p[int(k) if isinstance(p, list) else k]
                kind, op = "add", {"path": path, "value": value}
            node, last = parent(path)
            if kind == "add":
                if isinstance(node, list):
                    node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
                else:
                    node[last] = copy.deepcopy(op["value"])
            elif kind == "replace":
                if isinstance(node, list):
                    node[int(last)] = copy.deepcopy(op["value"])
                else:
                    if last not in node:
                        raise ApiError(422, "Invalid", f"replace of a missing path {path}")
                    node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[int(last) if isinstance(node, list) else last]
            else:
                raise ApiError(422, "Invalid", f"unknown JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch failed at {path}: {exc!r}") from None
    return doc


def prune_unapplied(obj: Any, old: Any, new: Any) -> Any:
    """Remove from `obj` what a manager applied before (`old`) and no longer applies (`new`)."""
    if not isinstance(obj, dict) or not isinstance(old, dict):
        return obj
    new = new if isinstance(new, dict) else {}
    for key, value in old.items():
        if key not in new:
            obj.pop(key, None)
        elif isinstance(value, dict) and key in obj:
            obj[key] = prune_unapplied(obj[key], value, new[key])
    return obj


def parse_label_selector(text: str | None) -> list[tuple[str, str, str | None]]:
    out: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in re.split(r",(?![^()]*\))", text or ""))):
        if m := re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(\S*)", part):
            out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
        elif m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", part):
            out.append((m.group(1), m.group(2), m.group(3)))
        elif part.startswith("!"):
            out.append((part[1:], "!exists", None))
        else:
            out.append((part, "exists", None))
    return out


def labels_match(labels: dict[str, str], selector: list[tuple[str, str, str | None]]) -> bool:
    for key, op, value in selector:
        have = labels.get(key)
        if op == "=" and have != value:
            return False
        if op == "!=" and have == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!exists" and key in labels:
            return False
        if op in ("in", "notin"):
            values = {v.strip() for v in (value or "").split(",")}
            if (have in values) != (op == "in"):
                return False
    return True


def parse_field_selector(text: str | None) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        m = re.fullmatch(r"(\S+?)\s*(==|!=|=)\s*(\S*)", part)
        if m:
            out.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return out


def json_path(obj: Any, path: str) -> Any:
    node = obj
    for part in path.lstrip(".").split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def fields_match(obj: dict[str, Any], selector: list[tuple[str, str, str]]) -> bool:
    for path, op, value in selector:
        have = json_path(obj, path)
        have_s = "" if have is None else str(have)
        if (op == "=") != (have_s == value):
            return False
    return True


def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    start = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    secs = int((datetime.datetime.now(tz=datetime.UTC) - start).total_seconds())
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    return f"{secs // 3600}h"


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with a store that behaves enough like kube-apiserver for kopf and kubectl."""

    store: dict[Key, dict[str, Any]] = attrs.field(factory=dict, init=False)
    applied: dict[tuple[Key, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    kinds: dict[tuple[str, str], Kind] = attrs.field(factory=dict, init=False)
    rv: int = attrs.field(default=1000, init=False)
    history: deque[tuple[int, str, str, dict[str, Any]]] = attrs.field(
        factory=lambda: deque(maxlen=HISTORY_LIMIT), init=False
    )
    watchers: list[Watcher] = attrs.field(factory=list, init=False)
    write_count: int = attrs.field(default=0, init=False)
    # Wall-clock creation time of every object ever created (for benchmarks), by key.
    created_at: dict[Key, float] = attrs.field(factory=dict, init=False)
    admission: emulator_admission.CRDAdmission = attrs.field(factory=emulator_admission.CRDAdmission, init=False)
    policies: emulator_admission.PolicyAdmission = attrs.field(factory=emulator_admission.PolicyAdmission, init=False)
    tokens: emulator_rbac.TokenAuthenticator = attrs.field(factory=emulator_rbac.TokenAuthenticator, init=False)
    rbac_objects: dict[str, dict[Key, dict[str, Any]]] = attrs.field(
        factory=lambda: {p: {} for p in emulator_rbac.RBAC_PLURALS}, init=False
    )
    authorizer: emulator_rbac.RBACAuthorizer = attrs.field(init=False)
    # Every request refused by authentication or authorization (for tests): user, verb, resource, message.
    denials: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    ctx: RequestContext = attrs.field(factory=RequestContext, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.authorizer = emulator_rbac.RBACAuthorizer(lambda plural: list(self.rbac_objects[plural].values()))
        self.resources.load_bundled()
        for res in self.resources:
            info = self.resources[res]
            if res.plural and info.kind:
                self.kinds[(res.group or "", res.plural)] = self.kinds.get((res.group or "", res.plural)) or Kind(
                    group=res.group or "",
                    version=res.version or "v1",
                    plural=res.plural,
                    kind=info.kind,
                    namespaced=bool(info.namespaced),
                    subresources=set(info.subresources),
                    scale=(
                        {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        }
                        if "scale" in info.subresources
                        else None
                    ),
                )
        # Real clusters report the preferred versions; kmock's set order is arbitrary.
        self.kinds[("autoscaling", "horizontalpodautoscalers")].version = "v2"

    # --- discovery fixes -------------------------------------------------------------------

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        if isinstance(payload, dict) and payload.get("groupVersion", "").startswith("/"):
            payload["groupVersion"] = payload["groupVersion"][1:]  # kmock says "/v1" for the core group
        if isinstance(payload, dict):
            for entry in payload.get("resources", []):
                if "/" in entry["name"]:
                    # Subresources have no short names or categories ("md" must mean the resource).
                    entry["shortNames"], entry["categories"] = [], []
                    entry["verbs"] = ["get", "patch", "update"]
                    if entry["name"].endswith("/scale"):
                        entry.update(kind="Scale", group="autoscaling", version="v1")
        return payload

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return {
            "major": "1",
            "minor": "35",
            "gitVersion": "v1.35.0-kmock",
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        self.admission.register(crd)
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            subresources = set(version.get("subresources", {}))
            self.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"},
                subresources=subresources,
            )
            if version.get("storage", True) or (spec["group"], names["plural"]) not in self.kinds:
                self.kinds[(spec["group"], names["plural"])] = Kind(
                    group=spec["group"],
                    version=version["name"],
                    plural=names["plural"],
                    kind=names["kind"],
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    subresources=subresources,
                    scale=version.get("subresources", {}).get("scale"),
                    printer_columns=version.get("additionalPrinterColumns", []),
                )

    # --- dispatch --------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if request.url.path == "/_emulator/requests":
            return self._json(
                [
                    {
                        "method": str(r.method.value if hasattr(r.method, "value") else r.method).upper(),
                        "path": r.url.path,
                        "query": r.url.query_string,
                        "userAgent": r.headers.get("User-Agent", ""),
                        "body": r.text[:300] if str(r.method.value).upper() == "PATCH" else "",
                    }
                    for r in self._requests
                ]
            )
        if request.url.path == "/_emulator/custom-metrics" and request.data:
            # Stand-in for prometheus-adapter's discovery: declare pod metrics as served.
            self.resources["custom.metrics.k8s.io/v1beta1/pods"] = kmock.ResourceInfo(
                kind="MetricValueList", namespaced=True, verbs={"get"}, subresources=set(request.data)
            )
            return self._json({"pods": sorted(request.data)})
        if request.url.path == "/_emulator/created":
            return self._json(
                [
                    {
                        "group": k[0],
                        "plural": k[1],
                        "namespace": k[2],
                        "name": k[3],
                        "created": t,
                        "owner": ((self.store.get(k) or {}).get("metadata", {}).get("labels") or {}).get(
                            "serving.rayleigh.dev/model-deployment"
                        ),
                    }
                    for k, t in self.created_at.items()
                ]
            )
        if request.url.path == "/_emulator/admission" and isinstance(request.data, dict):
            # Tests only: switch CRD admission off to store what a real API server would refuse.
            self.admission.enabled = bool(request.data.get("enabled", True))
            return self._json({"enabled": self.admission.enabled})
        if request.url.path == "/_emulator/denials":
            return self._json(self.denials)
        if request.url.path == "/_emulator/close-watches":
            # Tests only: end every watch stream, as a watch timeout or an API server restart does.
            self.close_watches()
            return self._json({"closed": len(self.watchers)})
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        self.ctx = RequestContext(field_validation=request.params.get("fieldValidation") or "Warn")
        refused = self._authenticate_and_authorize(request, method)
        if refused is not None:
            return refused
        res = request.resource
        if res is None or not res.plural or (res.group or "", res.plural) not in self.kinds:
            return await super()._handle(request)
        kind = self.kinds[(res.group or "", res.plural)]
        try:
            if request.params.get("watch") in ("true", "1"):
                return await self._watch(request, kind)
            if request.name is None:
                if method == "GET":
                    return self._json(self._list(request, kind))
                if method == "POST":
                    return self._json(self._create(request, kind), 201)
                raise ApiError(405, "MethodNotAllowed", f"{method} on a collection is not supported")
            key: Key = (kind.group, kind.plural, request.namespace if kind.namespaced else None, request.name)
            sub = request.subresource
            if method == "POST" and sub == "token" and kind.group == "" and kind.plural == "serviceaccounts":
                return self._json(self._token_request(request, key), 201)
            if method == "GET":
                obj = self._get(key, kind, sub)
                if sub is None and "as=Table" in request.headers.get("Accept", ""):
                    return self._json(self._table([obj], kind))
                return self._json(obj)
            if method == "PUT":
                return self._json(self._put(request, key, kind, sub))
            if method == "PATCH":
                obj, created = self._patch(request, key, kind, sub)
                return self._json(obj, 201 if created else 200)
            if method == "DELETE":
                return self._json(self._delete(key, kind))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported")
        except ApiError as exc:
            if exc.status is not None:
                if exc.code == 403:
                    self._record_denial(exc.status)
                return self._json(exc.status, exc.code)
            return self._json(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "message": exc.message,
                    "reason": exc.reason,
                    "code": exc.code,
                },
                exc.code,
            )

    def _json(self, body: Any, status: int = 200) -> aiohttp.web.Response:
        headers = CIMultiDict(("Warning", w) for w in emulator_admission.warning_headers(self.ctx.warnings))
        return aiohttp.web.Response(
            body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers
        )

    # --- authentication and authorization (tests/emulator_rbac.py) -------------------------

    def _authenticate_and_authorize(self, request: rendering.Request, method: str) -> aiohttp.web.Response | None:
        """401 for a bearer token that is not a live service-account token, 403 for a request RBAC
        does not allow; None to go on. No token: the tests' administrator, allowed."""
        header = next((v for k, v in request.headers.items() if k.lower() == "authorization"), "")
        if not header.lower().startswith("bearer "):
            return None
        user = self.tokens.authenticate(header[7:].strip(), self._service_account_uid)
        if user is None:
            self.denials.append({"code": 401, "path": request.url.path, "method": method, "message": "Unauthorized"})
            return self._json(emulator_rbac.UNAUTHORIZED, 401)
        attrs = emulator_rbac.request_attributes(method, request.url.path, request.params, user)
        allowed, reason = self.authorizer.authorize(attrs)
        if not allowed:
            status = emulator_rbac.denial_status(attrs, reason)
            self._record_denial(status, attrs)
            return self._json(status, 403)
        self.ctx.user = user
        return None

    def _authorize_create_on_apply(self, request: rendering.Request, key: Key, kind: Kind) -> None:
        """patch.go: an apply that creates its object is also authorized as `create` of that name."""
        if self.ctx.user is None:
            return
        attrs = dataclasses.replace(
            emulator_rbac.request_attributes("PATCH", request.url.path, request.params, self.ctx.user),
            verb="create",
            subresource="",
        )
        allowed, reason = self.authorizer.authorize(attrs)
        if not allowed:
            status = emulator_rbac.forbidden_status(attrs, reason)
            self._record_denial(status, attrs)
            raise ApiError(403, "Forbidden", status["message"], status=status)

    def _record_denial(self, status: dict[str, Any], attrs: emulator_rbac.Attributes | None = None) -> None:
        if attrs is None:
            self.denials.append({"code": status.get("code"), "message": status.get("message")})
            return
        self.denials.append(
            {
                "code": status.get("code"),
                "user": attrs.user.name,
                "verb": attrs.verb,
                "group": attrs.api_group,
                "resource": f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource,
                "namespace": attrs.namespace,
                "name": attrs.name,
                "path": attrs.path,
                "message": status.get("message"),
            }
        )

    def _service_account_uid(self, namespace: str, name: str) -> str | None:
        sa = self.store.get(("", "serviceaccounts", namespace, name))
        return None if sa is None else sa["metadata"].get("uid")

    def _token_request(self, request: rendering.Request, key: Key) -> dict[str, Any]:
        """TokenRequest (POST .../serviceaccounts/NAME/token): a bound token for the ServiceAccount."""
        sa = self.store.get(key)
        if sa is None:
            raise ApiError(404, "NotFound", f'serviceaccounts "{key[3]}" not found')
        body = self._body(request) if (request.body or b"").strip() else {}
        spec = (body.get("spec") if isinstance(body, dict) else None) or {}
        seconds = int(spec.get("expirationSeconds") or emulator_rbac.DEFAULT_EXPIRATION_SECONDS)
        if seconds < emulator_rbac.MIN_EXPIRATION_SECONDS:
            raise ApiError(
                422,
                "Invalid",
                f'TokenRequest.authentication.k8s.io "{key[3]}" is invalid: spec.expirationSeconds: '
                f"Invalid value: {seconds}: may not specify a duration less than 10 minutes",
            )
        token, expires = self.tokens.issue(key[2] or "", key[3], sa["metadata"]["uid"], seconds)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": key[3], "namespace": key[2], "creationTimestamp": _now()},
            "spec": {
                "audiences": spec.get("audiences") or ["https://kubernetes.default.svc.cluster.local"],
                "expirationSeconds": seconds,
                "boundObjectRef": spec.get("boundObjectRef"),
            },
            "status": {
                "token": token,
                "expirationTimestamp": datetime.datetime.fromtimestamp(expires, tz=datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
            },
        }

    # --- admission (tests/emulator_admission.py) -------------------------------------------

    def _admit(
        self, kind: Kind, new: dict[str, Any], old: dict[str, Any] | None, sub: str | None = None
    ) -> dict[str, Any]:
        """CRD admission (structural schema, defaults, CEL), then ValidatingAdmissionPolicies."""
        try:
            if (kind.group, kind.plural) in self.admission.versions:
                new, warnings = self.admission.admit(
                    kind.group,
                    kind.plural,
                    new,
                    old,
                    field_validation=self.ctx.field_validation,
                    apply_body=self.ctx.apply_body,
                )
                self.ctx.warnings.extend(warnings)
            if self.policies.bindings:
                user = self.ctx.user or ADMIN
                meta = new.get("metadata") or {}
                request = emulator_admission.AdmissionRequest(
                    operation="CREATE" if old is None else "UPDATE",
                    group=kind.group,
                    version=kind.version,
                    resource=kind.plural,
                    subresource=sub or "",
                    namespace=meta.get("namespace") or "",
                    name=meta.get("name") or "",
                    username=user.name,
                    groups=user.groups,
                    uid=user.uid,
                )
                self.ctx.warnings.extend(self.policies.validate(request, new, old))
        except emulator_admission.AdmissionError as exc:
            raise ApiError(
                exc.code, str(exc.status.get("reason", "")), exc.status["message"], status=exc.status
            ) from None
        return new

    # --- reads -----------------------------------------------------------------------------

    def _get(self, key: Key, kind: Kind, sub: str | None) -> dict[str, Any]:
        obj = self.store.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{key[3]}" not found')
        if sub == "scale":
            return self._scale_view(obj, kind)
        return obj

    def _scale_view(self, obj: dict[str, Any], kind: Kind) -> dict[str, Any]:
        if kind.scale is None:
            raise ApiError(404, "NotFound", f"{kind.plural} has no scale subresource")
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: obj["metadata"][k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in obj["metadata"]
            },
            "spec": {"replicas": json_path(obj, kind.scale["specReplicasPath"]) or 0},
            "status": {
                "replicas": json_path(obj, kind.scale.get("statusReplicasPath", ".status.replicas")) or 0,
                "selector": json_path(obj, kind.scale.get("labelSelectorPath", ".status.selector")) or "",
            },
        }

    def _select(self, request: rendering.Request, kind: Kind) -> list[dict[str, Any]]:
        ns = request.namespace if kind.namespaced else None
        label_sel = parse_label_selector(request.params.get("labelSelector"))
        field_sel = parse_field_selector(request.params.get("fieldSelector"))
        out = []
        for (group, plural, obj_ns, _), obj in self.store.items():
            if group != kind.group or plural != kind.plural or (ns is not None and obj_ns != ns):
                continue
            if label_sel and not labels_match(obj["metadata"].get("labels") or {}, label_sel):
                continue
            if field_sel and not fields_match(obj, field_sel):
                continue
            out.append(obj)
        return out

    def _list(self, request: rendering.Request, kind: Kind) -> dict[str, Any]:
        items = sorted(
            self._select(request, kind), key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"])
        )
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept:
            return self._table(items, kind)
        return {
            "apiVersion": kind.api_version,
            "kind": f"{kind.kind}List",
            "metadata": {"resourceVersion": str(self.rv), "continue": ""},
            "items": items,
        }

    def _table(self, items: list[dict[str, Any]], kind: Kind) -> dict[str, Any]:
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name"}]
        paths: list[tuple[str, str]] = []
        for col in kind.printer_columns:
            columns.append(
                {"name": col["name"], "type": col["type"], "format": "", "description": col.get("description", "")}
            )
            paths.append((col["jsonPath"], col["type"]))
        if not kind.printer_columns:
            columns.append({"name": "Age", "type": "string", "format": "", "description": "Age"})
            paths.append((".metadata.creationTimestamp", "date"))
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for path, typ in paths:
                value = json_path(obj, path)
                cells.append(_age(value) if typ == "date" else value)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.rv)},
            "columnDefinitions": columns,
            "rows": rows,
        }

    # --- writes ----------------------------------------------------------------------------

    def _body(self, request: rendering.Request) -> Any:
        if isinstance(request.data, dict | list):
            return request.data
        text = request.text or request.body.decode(errors="replace")
        if not text.strip():
            raise ApiError(400, "BadRequest", "empty request body")
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ApiError(400, "BadRequest", f"body is neither JSON nor YAML: {exc}") from None

    def _create(self, request: rendering.Request, kind: Kind) -> dict[str, Any]:
        body = self._body(request)
        if not isinstance(body, dict):
            raise ApiError(415, "UnsupportedMediaType", "create needs a JSON object (protobuf is not supported)")
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        ns = (request.namespace or meta.get("namespace") or "default") if kind.namespaced else None
        key: Key = (kind.group, kind.plural, ns, meta["name"])
        if key in self.store:
            raise ApiError(409, "AlreadyExists", f'{kind.plural} "{meta["name"]}" already exists')
        return self._store_new(key, kind, body)

    def _store_new(self, key: Key, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if "status" in kind.subresources:
            obj.pop("status", None)
        meta = obj.setdefault("metadata", {})
        meta["name"] = key[3]
        if key[2] is not None:
            meta["namespace"] = key[2]
        else:
            meta.pop("namespace", None)
        meta.pop("generateName", None) if meta.get("name") else None
        obj = self._admit(kind, obj, None)
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        for k in ("resourceVersion", "deletionTimestamp", "managedFields", "selfLink"):
            meta.pop(k, None)
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        self.store[key] = obj
        self.created_at.setdefault(key, time.time())
        self._emit("ADDED", key, obj)
        if kind.group == "apiextensions.k8s.io" and kind.plural == "customresourcedefinitions":
            self.register_crd(obj)
        return obj

    def _put(self, request: rendering.Request, key: Key, kind: Kind, sub: str | None) -> dict[str, Any]:
        body = self._body(request)
        old = self.store.get(key)
        if old is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{key[3]}" not found')
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if sub == "scale":
            return self._set_scale(key, kind, old, (body.get("spec") or {}).get("replicas"))
        new = copy.deepcopy(body)
        new["metadata"] = {
            **old["metadata"],
            **{
                k: v
                for k, v in (body.get("metadata") or {}).items()
                if k in ("labels", "annotations", "finalizers", "ownerReferences")
            },
        }
        for k in ("labels", "annotations", "finalizers", "ownerReferences"):
            if k not in (body.get("metadata") or {}):
                new["metadata"].pop(k, None)
        return self._commit(key, kind, old, new, sub)

    def _set_scale(self, key: Key, kind: Kind, old: dict[str, Any], replicas: Any) -> dict[str, Any]:
        if kind.scale is None:
            raise ApiError(404, "NotFound", f"{kind.plural} has no scale subresource")
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", "spec.replicas: must be a non-negative integer")
        new = copy.deepcopy(old)
        node = new
        parts = kind.scale["specReplicasPath"].lstrip(".").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = replicas
        obj = self._commit(key, kind, old, new, None)
        return self._scale_view(obj, kind)

    def _patch(self, request: rendering.Request, key: Key, kind: Kind, sub: str | None) -> tuple[dict[str, Any], bool]:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = self._body(request)
        old = self.store.get(key)
        if ctype == APPLY_PATCH:
            manager = request.params.get("fieldManager")
            if not manager:
                raise ApiError(422, "Invalid", "fieldManager is required for apply requests")
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "apply needs an object")
            self.ctx.apply_body = body
            if old is None:
                if sub:
                    raise ApiError(404, "NotFound", f'{kind.plural} "{key[3]}" not found')
                self._authorize_create_on_apply(request, key, kind)
                obj = self._store_new(key, kind, body)
                self.applied[(key, manager)] = copy.deepcopy(body)
                return obj, True
            previous = self.applied.get((key, manager), {})
            base = prune_unapplied(copy.deepcopy(old), previous, body)
            new = merge_patch(base, _drop_nulls(body))
            self.applied[(key, manager)] = copy.deepcopy(body)
        else:
            if old is None:
                raise ApiError(404, "NotFound", f'{kind.plural} "{key[3]}" not found')
            if sub == "scale":
                replicas = ((body or {}).get("spec") or {}).get("replicas") if isinstance(body, dict) else None
                if ctype == "application/json-patch+json":
                    replicas = json_patch(self._scale_view(old, kind), body)["spec"]["replicas"]
                return self._set_scale(key, kind, old, replicas), False
            if ctype == "application/json-patch+json":
                if not isinstance(body, list):
                    raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
                new = json_patch(old, body)
            elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                new = merge_patch(old, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {ctype!r}")
        return self._commit(key, kind, old, new, sub), False

    def _commit(
        self, key: Key, kind: Kind, old: dict[str, Any], new: dict[str, Any], sub: str | None
    ) -> dict[str, Any]:
        new = copy.deepcopy(new)
        if "status" in kind.subresources:
            if sub == "status":
                # /status changes status only (and metadata the API server allows there: none here).
                status = new.get("status")
                new = copy.deepcopy(old)
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for k in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        if new == old:
            return old  # a no-op write changes nothing, not even resourceVersion
        new = self._admit(kind, new, old, sub)
        meta = new["metadata"]
        if new == old:
            return old
        spec_changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }
        if spec_changed:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(key, new)
            return new
        self.store[key] = new
        self._emit("MODIFIED", key, new)
        if kind.group == "apiextensions.k8s.io" and kind.plural == "customresourcedefinitions":
            self.register_crd(new)
        return new

    def _delete(self, key: Key, kind: Kind) -> dict[str, Any]:
        obj = self.store.get(key)
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural} "{key[3]}" not found')
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = _now()
                self.rv += 1
                new["metadata"]["resourceVersion"] = str(self.rv)
                self.store[key] = new
                self._emit("MODIFIED", key, new)
                return new
            return obj
        self._remove(key, obj)
        return obj

    def _remove(self, key: Key, obj: dict[str, Any]) -> None:
        self.store.pop(key, None)
        for k in [k for k in self.applied if k[0] == key]:
            del self.applied[k]
        self.rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.rv)
        self._emit("DELETED", key, gone)
        self._collect_garbage(obj["metadata"].get("uid"))

    def _collect_garbage(self, owner_uid: str | None) -> None:
        """Background cascading deletion by ownerReferences, as the garbage collector does."""
        if not owner_uid:
            return
        for key, obj in list(self.store.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in refs) and key in self.store:
                self._delete(key, self.kinds[(key[0], key[1])])

    # --- watches ---------------------------------------------------------------------------

    def _emit(self, event_type: str, key: Key, obj: dict[str, Any]) -> None:
        self.write_count += 1
        if key[0] == emulator_rbac.RBAC_GROUP and key[1] in self.rbac_objects:
            if event_type == "DELETED":
                self.rbac_objects[key[1]].pop(key, None)
            else:
                self.rbac_objects[key[1]][key] = obj
            self.authorizer.invalidate()
        if key[0] == emulator_admission.VAP_GROUP and key[1] in emulator_admission.VAP_PLURALS:
            self.policies.observe(key[1], key[3], None if event_type == "DELETED" else obj)
        self.history.append((self.rv, key[0], key[1], {"type": event_type, "object": obj}))
        for w in self.watchers:
            if self._watch_matches(w, key, obj):
                w.queue.put_nowait({"type": event_type, "object": obj})

    @staticmethod
    def _watch_matches(w: Watcher, key: Key, obj: dict[str, Any]) -> bool:
        if w.group != key[0] or w.plural != key[1]:
            return False
        if w.namespace is not None and key[2] != w.namespace:
            return False
        if w.name is not None and key[3] != w.name:
            return False
        if w.labels and not labels_match(obj["metadata"].get("labels") or {}, w.labels):
            return False
        return not (w.fields and not fields_match(obj, w.fields))

    async def _watch(self, request: rendering.Request, kind: Kind) -> aiohttp.web.StreamResponse:
        params = request.params
        watcher = Watcher(
            group=kind.group,
            plural=kind.plural,
            namespace=request.namespace if kind.namespaced else None,
            name=request.name,
            labels=parse_label_selector(params.get("labelSelector")),
            fields=parse_field_selector(params.get("fieldSelector")),
            queue=asyncio.Queue(),
        )
        if request.name:
            watcher.fields.append(("metadata.name", "=", request.name))
        rv_param = params.get("resourceVersion", "")
        initial: list[dict[str, Any]] = []
        send_initial = params.get("sendInitialEvents") == "true"
        if rv_param in ("", "0") or send_initial:
            for obj in self._select(request, kind):
                if not request.name or obj["metadata"]["name"] == request.name:
                    initial.append({"type": "ADDED", "object": obj})
            if send_initial:
                initial.append(
                    {
                        "type": "BOOKMARK",
                        "object": {
                            "kind": kind.kind,
                            "apiVersion": kind.api_version,
                            "metadata": {
                                "resourceVersion": str(self.rv),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        },
                    }
                )
        else:
            since = int(rv_param)
            if self.history and since < self.history[0][0] - 1 and since < self.rv:
                initial.append(
                    {
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "code": 410,
                            "reason": "Expired",
                            "message": f"too old resource version: {since}",
                        },
                    }
                )
            else:
                for rv, group, plural, event in self.history:
                    if rv > since and group == kind.group and plural == kind.plural:
                        obj = event["object"]
                        meta = obj["metadata"]
                        ns = meta.get("namespace") if kind.namespaced else None
                        if self._watch_matches(watcher, (group, plural, ns, meta["name"]), obj):
                            initial.append(event)
        # Snapshot and subscription happen with no await in between: no event can slip through.
        self.watchers.append(watcher)
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            timeout = float(params.get("timeoutSeconds") or 1800)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self.watchers.remove(watcher)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    def close_watches(self) -> None:
        for w in self.watchers:
            w.queue.put_nowait(None)

    # --- test helpers ----------------------------------------------------------------------

    def objects_of(self, group: str, plural: str) -> Iterable[dict[str, Any]]:
        return [o for (g, p, _, _), o in self.store.items() if g == group and p == plural]


def _drop_nulls(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _drop_nulls(v) for k, v in body.items() if v is not None}
    return body


async def serve(host: str, port: int, ready_file: Path | None, crds: list[Path]) -> None:
    emulator = KubeEmulator()
    for path in crds:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                emulator.register_crd(doc)
    async with emulator, kmock.Server(emulator, host=host, port=port) as server:
        url = f"http://{server.host}:{server.port}"
        if ready_file:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(url)
            tmp.rename(ready_file)
        print(f"kube emulator listening on {url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        emulator.close_watches()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--crd", type=Path, action="append", default=[])
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.ready_file, args.crd))


if __name__ == "__main__":
    main()
