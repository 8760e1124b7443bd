"""The operator's identity in the emulated API: the chart's RBAC, a service account and its token.

`operator_identity(kube)` renders the chart's operator RBAC with the real helm binary
(templates/operator-rbac.yaml: ServiceAccount, ClusterRole or Roles, bindings, the pod patch
ValidatingAdmissionPolicy), applies it with the tests' administrator kubectl, asks the TokenRequest
API for a token of the operator's ServiceAccount (as `kubectl create token` does), writes it to a
file and returns a kubeconfig that names that file (`tokenFile`). An operator started with that
kubeconfig is authorized by the emulator exactly as the chart's roles allow on a real cluster.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
CHART = REPO_ROOT / "charts" / "rayleigh"
RELEASE = "rayleigh"
RELEASE_NAMESPACE = "rayleigh-system"
KUBE_VERSION = "1.34.0"


class KubeLike(Protocol):
    url: str
    workdir: Path

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 30) -> str: ...


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    token_file: Path
    kubeconfig: Path
    documents: tuple[dict[str, Any], ...]

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def render_operator_rbac(values: dict[str, Any] | None = None, release: str = RELEASE) -> list[dict[str, Any]]:
    """`helm template` of the chart's operator RBAC (templates/operator-rbac.yaml) with `values`.

    Releases named differently get differently named roles and service accounts, so several can be
    installed in one emulator (the release name must contain "rayleigh" to keep names short)."""
    args = [
        str(HELM),
        "template",
        release,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/operator-rbac.yaml",
    ]
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def request_token(url: str, namespace: str, service_account: str, expiration_seconds: int = 3600) -> str:
    """TokenRequest: POST .../serviceaccounts/NAME/token (what `kubectl create token` sends)."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": expiration_seconds},
    }
    req = urllib.request.Request(
        f"{url}/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        token: str = json.loads(resp.read())["status"]["token"]
    return token


def write_kubeconfig(path: Path, url: str, token_file: Path, namespace: str = "default") -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        f"users: [{{name: operator, user: {{tokenFile: '{token_file}'}}}}]\n"
        f"contexts: [{{name: emulator, context: {{cluster: emulator, user: operator, namespace: {namespace}}}}}]\n"
        "current-context: emulator\n"
    )
    return path


def install(kube: KubeLike, documents: list[dict[str, Any]], directory: Path) -> Identity:
    """Apply RBAC `documents` (one ServiceAccount among them), issue a token, write a kubeconfig."""
    kube.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--validate=false",
        "-f",
        "-",
        input="".join("---\n" + yaml.safe_dump(d) for d in documents),
    )
    (sa,) = [d for d in documents if d["kind"] == "ServiceAccount"]
    namespace, name = sa["metadata"]["namespace"], sa["metadata"]["name"]
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "token"
    token_file.write_text(request_token(kube.url, namespace, name))
    kubeconfig = write_kubeconfig(directory / "kubeconfig", kube.url, token_file)
    return Identity(namespace, name, token_file, kubeconfig, tuple(documents))


_CACHE: dict[tuple[str, str], Identity] = {}


def operator_identity(kube: KubeLike, values: dict[str, Any] | None = None, release: str = RELEASE) -> Identity:
    """The chart-rendered operator identity (default values: watching every namespace), installed
    once per emulator, release and values."""
    key = (kube.url, release + json.dumps(values or {}, sort_keys=True))
    if key not in _CACHE:
        directory = kube.workdir / f"operator-identity-{len(_CACHE)}"
        _CACHE[key] = install(kube, render_operator_rbac(values, release), directory)
    return _CACHE[key]


def api_call(
    url: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    content_type: str = "application/json",
    params: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One request to the emulator: (HTTP status, parsed JSON body, headers); errors are returned, not raised."""
    import urllib.error
    import urllib.parse

    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"{url}{path}{query}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text), dict(exc.headers)
        except ValueError:
            return exc.code, text.decode(errors="replace"), dict(exc.headers)
