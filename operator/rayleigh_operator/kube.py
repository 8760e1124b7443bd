"""A small asyncio Kubernetes API client: what the operator needs and nothing else.

Every request names the (group, resource, verb) it needs; `rbac.PERMISSIONS` lists what the
operator's ClusterRole grants, and the client refuses a request outside it, so a new call site
cannot ship without its RBAC rule (tests run with the same check).
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from rayleigh_operator import rbac

USER_AGENT = "rayleigh-operator/0.1"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if sub:
            base += f"/{sub}"
        return base


# Kinds the operator touches, by (apiVersion, kind).
TYPES: dict[tuple[str, str], ResourceType] = {
    ("apps/v1", "Deployment"): ResourceType("apps", "v1", "deployments"),
    ("v1", "Service"): ResourceType("", "v1", "services"),
    ("v1", "ConfigMap"): ResourceType("", "v1", "configmaps"),
    ("v1", "Event"): ResourceType("", "v1", "events"),
    ("v1", "Node"): ResourceType("", "v1", "nodes", namespaced=False),
    ("v1", "Pod"): ResourceType("", "v1", "pods"),
    ("policy/v1", "PodDisruptionBudget"): ResourceType("policy", "v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "NetworkPolicy"): ResourceType("networking.k8s.io", "v1", "networkpolicies"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"): ResourceType("autoscaling", "v2", "horizontalpodautoscalers"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ResourceType("monitoring.coreos.com", "v1", "podmonitors"),
    ("serving.rayleigh.dev/v1alpha1", "ModelDeployment"): ResourceType(
        "serving.rayleigh.dev", "v1alpha1", "modeldeployments"
    ),
}
MODEL_DEPLOYMENTS = TYPES[("serving.rayleigh.dev/v1alpha1", "ModelDeployment")]
DEPLOYMENTS = TYPES[("apps/v1", "Deployment")]
NODES = TYPES[("v1", "Node")]
EVENTS = TYPES[("v1", "Event")]
PODS = TYPES[("v1", "Pod")]
CONFIGMAPS = TYPES[("v1", "ConfigMap")]


def type_of(obj: dict[str, Any]) -> ResourceType:
    return TYPES[(obj["apiVersion"], obj["kind"])]


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.message, self.reason = status, message, reason


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    namespace: str | None = None

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        if self.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _materialize(data_b64: str | None, path: str | None, base: Path) -> str | None:
    if data_b64:
        fd, name = tempfile.mkstemp(prefix="rayleigh-kube-")
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data_b64))
        return name
    if path:
        return str(base / path) if not os.path.isabs(path) else path
    return None


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """In-cluster service account when running in a pod, else the kubeconfig's current context."""
    if kubeconfig is None and (SA_DIR / "token").exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return Credentials(
            server=f"https://{host}:{port}",
            token=(SA_DIR / "token").read_text().strip(),
            ca_file=str(SA_DIR / "ca.crt"),
            namespace=(SA_DIR / "namespace").read_text().strip() if (SA_DIR / "namespace").exists() else None,
        )
    path = Path(kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or "~/.kube/config").expanduser()
    config = yaml.safe_load(path.read_text())
    ctx_name = context or config.get("current-context")
    ctx = next(c["context"] for c in config.get("contexts", []) if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in config.get("clusters", []) if c["name"] == ctx["cluster"])
    user: dict[str, Any] = next((u["user"] for u in config.get("users", []) if u["name"] == ctx.get("user")), {}) or {}
    base = path.parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return Credentials(
        server=cluster["server"].rstrip("/"),
        token=token,
        ca_file=_materialize(cluster.get("certificate-authority-data"), cluster.get("certificate-authority"), base),
        cert_file=_materialize(user.get("client-certificate-data"), user.get("client-certificate"), base),
        key_file=_materialize(user.get("client-key-data"), user.get("client-key"), base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=ctx.get("namespace"),
    )


class KubeClient:
    """JSON over aiohttp with the operator's identity; one connection pool per process."""

    def __init__(self, credentials: Credentials, *, enforce_rbac: bool = True) -> None:
        self.credentials = credentials
        self.enforce_rbac = enforce_rbac
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
            if self.credentials.token:
                headers["Authorization"] = f"Bearer {self.credentials.token}"
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context(), limit=64)
            self._session = aiohttp.ClientSession(
                base_url=self.credentials.server,
                headers=headers,
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=60, sock_connect=5),
                json_serialize=json.dumps,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        verb: str,
        rtype: ResourceType,
        method: str,
        path: str,
        *,
        sub: str | None = None,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        resource = f"{rtype.plural}/{sub}" if sub else rtype.plural
        if self.enforce_rbac:
            rbac.check(rtype.group, resource, verb)
        session = await self.session()
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        async with session.request(method, path, params=params, data=data, headers=headers) as resp:
            text = await resp.text()
            if resp.status >= 400:
                try:
                    status = json.loads(text)
                    raise ApiError(resp.status, status.get("message", text), status.get("reason", ""))
                except (ValueError, AttributeError):
                    raise ApiError(resp.status, text[:500]) from None
            return json.loads(text) if text else None

    async def apply(self, obj: dict[str, Any], *, field_manager: str, force: bool = True) -> dict[str, Any]:
        """Server-side apply (creates or updates; the API server merges by field ownership)."""
        rtype = type_of(obj)
        meta = obj["metadata"]
        result: dict[str, Any] = await self.request(
            "patch",
            rtype,
            "PATCH",
            rtype.path(meta.get("namespace"), meta["name"]),
            params={"fieldManager": field_manager, "force": "true" if force else "false"},
            body=obj,
            content_type="application/apply-patch+yaml",
        )
        return result

    async def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("get", rtype, "GET", rtype.path(namespace, name))
            return result
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, rtype: ResourceType, namespace: str | None = None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("list", rtype, "GET", rtype.path(namespace), params=params)
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def patch_status(self, rtype: ResourceType, namespace: str, name: str, status: dict[str, Any]) -> Any:
        return await self.request(
            "patch",
            rtype,
            "PATCH",
            rtype.path(namespace, name, "status"),
            sub="status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def patch(self, rtype: ResourceType, namespace: str, name: str, body: dict[str, Any]) -> Any:
        return await self.request(
            "patch", rtype, "PATCH", rtype.path(namespace, name), body=body, content_type="application/merge-patch+json"
        )

    async def create(self, rtype: ResourceType, namespace: str, body: dict[str, Any]) -> Any:
        return await self.request("create", rtype, "POST", rtype.path(namespace), body=body)

    async def watch(
        self,
        rtype: ResourceType,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        resource_version: str | None = None,
        timeout_s: int = 300,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events ({type, object}) from `resource_version` until the server ends the stream.

        An ERROR event (e.g. 410 Gone: the version is too old) is yielded as is; the caller relists.
        """
        if self.enforce_rbac:
            rbac.check(rtype.group, rtype.plural, "watch")
        params = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_s)}
        if label_selector:
            params["labelSelector"] = label_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        session = await self.session()
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=timeout_s + 30)
        async with session.get(rtype.path(namespace), params=params, timeout=timeout) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, (await resp.text())[:500])
            async for line in resp.content:
                if line.strip():
                    event: dict[str, Any] = json.loads(line)
                    yield event

    async def list_with_version(
        self, rtype: ResourceType, namespace: str | None = None, *, label_selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("list", rtype, "GET", rtype.path(namespace), params=params)
        return result.get("items", []), str(result.get("metadata", {}).get("resourceVersion", ""))

    async def discover(self, group_version: str) -> dict[str, Any] | None:
        """An API group version's discovery document, or None when it is not served."""
        rbac.check_non_resource(f"/apis/{group_version}")
        session = await self.session()
        async with session.get(f"/apis/{group_version}") as resp:
            if resp.status >= 400:
                return None
            result: dict[str, Any] = await resp.json(content_type=None)
            return result
