"""A small asyncio Kubernetes API client: what the operator needs and nothing else.

Every request names the (group, resource, verb) it needs; `rbac.PERMISSIONS` lists what the
operator's roles grant, and the client refuses a request outside it, so a new call site cannot ship
without its RBAC rule (tests run with the same check). A server-side apply needs `create` as well
as `patch`: the API server authorizes an apply that creates its object as a create.

Bearer tokens from a file (the pod's projected service-account token, or a kubeconfig `tokenFile`)
are re-read when the file changes: bound tokens are rotated by the kubelet (about hourly) and the
old one expires, so a token read once at start-up would leave the operator answered 401 until it
restarts. `TokenSource` re-reads on a change of the file (checked at most every second), every
minute regardless (as client-go's cached file token source does), and at once after a 401, after
which the request is retried once with the new token. `Credentials.token` always returns the
current token, so kopf's re-login after its own 401 (the `login` handler in run.py) gets it too.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from rayleigh_operator import rbac

USER_AGENT = "rayleigh-operator/0.1"
APPLY_PATCH = "application/apply-patch+yaml"
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
    ("v1", "Secret"): ResourceType("", "v1", "secrets"),
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
SECRETS = TYPES[("v1", "Secret")]


def type_of(obj: dict[str, Any]) -> ResourceType:
    return TYPES[(obj["apiVersion"], obj["kind"])]


log = logging.getLogger("rayleigh.operator.kube")


class ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.message, self.reason = status, message, reason


class TokenSource:
    """A bearer token, static or read from a file and re-read when the file is rotated.

    `current()` is cheap: it stats the file at most every `check_seconds` and reads it only when its
    identity (inode, size, mtime) changed or `max_age_seconds` passed since the last read;
    `refresh()` re-reads now (after a 401). A file that cannot be read keeps the last good token.
    """

    def __init__(
        self,
        token: str | None = None,
        path: str | os.PathLike[str] | None = None,
        *,
        check_seconds: float = 1.0,
        max_age_seconds: float = 60.0,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.check_seconds = check_seconds
        self.max_age_seconds = max_age_seconds
        self._token = token
        self._identity: tuple[int, int, int] | None = None
        self._read_at = float("-inf")
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        if self.path is not None:
            self.refresh()

    def _read(self, now: float) -> None:
        assert self.path is not None
        try:
            st = self.path.stat()
            token = self.path.read_text().strip()
        except OSError as exc:
            log.warning("cannot read the token file %s: %s; keeping the last token", self.path, exc)
            return
        if token and token != self._token and self._token is not None:
            log.info("token file %s changed: using the new token", self.path)
        if token:
            self._token = token
        self._identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        self._read_at = now

    def refresh(self) -> str | None:
        """Re-read the file now; the token (unchanged for a static token)."""
        with self._lock:
            if self.path is not None:
                now = time.monotonic()
                self._checked_at = now
                self._read(now)
            return self._token

    def current(self, *, force_check: bool = False) -> str | None:
        if self.path is None:
            return self._token
        with self._lock:
            now = time.monotonic()
            if not force_check and now - self._checked_at < self.check_seconds:
                return self._token
            self._checked_at = now
            if now - self._read_at >= self.max_age_seconds:
                self._read(now)
                return self._token
            try:
                st = self.path.stat()
            except OSError:
                return self._token
            if (st.st_ino, st.st_size, st.st_mtime_ns) != self._identity:
                self._read(now)
            return self._token


@dataclass(frozen=True)
class Credentials:
    server: str
    static_token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    namespace: str | None = None
    token_file: str | None = None
    tokens: TokenSource = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.tokens is None:
            object.__setattr__(self, "tokens", TokenSource(self.static_token, self.token_file))

    @property
    def token(self) -> str | None:
        """The current bearer token (re-read from its file if that changed)."""
        return self.tokens.current(force_check=True)

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
            token_file=str(SA_DIR / "token"),
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
    token_file = None
    if not token and user.get("tokenFile"):
        token_file = str(base / user["tokenFile"]) if not os.path.isabs(user["tokenFile"]) else user["tokenFile"]
    return Credentials(
        server=cluster["server"].rstrip("/"),
        static_token=token,
        token_file=token_file,
        ca_file=_materialize(cluster.get("certificate-authority-data"), cluster.get("certificate-authority"), base),
        cert_file=_materialize(user.get("client-certificate-data"), user.get("client-certificate"), base),
        key_file=_materialize(user.get("client-key-data"), user.get("client-key"), base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        namespace=ctx.get("namespace"),
    )


def _bearer(headers: dict[str, str], token: str | None) -> dict[str, str]:
    return {**headers, "Authorization": f"Bearer {token}"} if token else headers


class KubeClient:
    """JSON over aiohttp with the operator's identity; one connection pool per process."""

    def __init__(self, credentials: Credentials, *, enforce_rbac: bool = True) -> None:
        self.credentials = credentials
        self.enforce_rbac = enforce_rbac
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
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
            if content_type == APPLY_PATCH:
                rbac.check(rtype.group, resource, "create")  # an apply that creates is also a create
        session = await self.session()
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        token = self.credentials.tokens.current()
        for attempt in (1, 2):
            async with session.request(method, path, params=params, data=data, headers=_bearer(headers, token)) as resp:
                status, text = resp.status, await resp.text()
            if status == 401 and attempt == 1 and (fresh := self._fresh_token(token)) is not None:
                token = fresh  # the token file was rotated: retry once with the new token
                continue
            break
        if status >= 400:
            try:
                body_status = json.loads(text)
                raise ApiError(status, body_status.get("message", text), body_status.get("reason", ""))
            except (ValueError, AttributeError):
                raise ApiError(status, text[:500]) from None
        return json.loads(text) if text else None

    def _fresh_token(self, used: str | None) -> str | None:
        """After a 401: the token re-read from its file if it differs from the one `used`, else None."""
        if self.credentials.tokens.path is None:
            return None
        fresh = self.credentials.tokens.refresh()
        return fresh if fresh and fresh != used else None

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
            content_type=APPLY_PATCH,
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
        token = self.credentials.tokens.current()
        for attempt in (1, 2):
            resp = await session.get(rtype.path(namespace), params=params, timeout=timeout, headers=_bearer({}, token))
            if resp.status == 401 and attempt == 1 and (fresh := self._fresh_token(token)) is not None:
                resp.release()
                token = fresh
                continue
            break
        async with resp:
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
        headers = _bearer({}, self.credentials.tokens.current())
        async with session.get(f"/apis/{group_version}", headers=headers) as resp:
            if resp.status >= 400:
                return None
            result: dict[str, Any] = await resp.json(content_type=None)
            return result
