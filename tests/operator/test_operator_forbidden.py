"""A role that lacks a permission: 403 -> phase Degraded, reason Forbidden, naming what is missing.

The real `rayleigh operator` runs against the emulated API server under the chart's ClusterRole
with `create` taken off `services` (tests/emulator_rbac.py enforces RBAC with the API server's
rules: a server-side apply that would create its object is also authorized as `create`, and that
refusal's message names no verb). The operator must not crash-loop: it applies what it may, sets
the status, posts one Warning Event, and retries with backoff; once an administrator grants the
verb (the emulator re-reads roles on every change), the object converges and the condition clears.

Pure parts (the message, the backoff, the status decision) are tested without the emulator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

import rayleigh_api as api
from rayleigh_operator import status
from rayleigh_operator.apply import MAX_RETRY_FACTOR, forbidden_message, retry_delay
from rayleigh_operator.kube import ApiError
from tests.emulator_identity import install, render_operator_rbac
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT
from tests.plugins.kube import Kube, OperatorProcess, wait_for

pytestmark = pytest.mark.timeout(120)

FAST = ["--dashboard-url", "http://127.0.0.1:9", "--local-base", str(REPO_ROOT), "--poll-seconds", "0.3"]
FAST += ["--resync-seconds", "1"]
NS = "default"


def apply_docs(kube: Kube, *docs: dict[str, Any], force: bool = False) -> None:
    extra = ["--force-conflicts"] if force else []
    kube.kubectl(
        "apply",
        "--server-side",
        *extra,
        "--validate=false",
        "-f",
        "-",
        input="".join("---\n" + yaml.safe_dump(d) for d in docs),
    )


def tiny(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES_DIR / "tiny.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NS}
    return doc


def without_create_on_services(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = copy.deepcopy(documents)
    for doc in out:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        rules = []
        for rule in doc.get("rules") or []:
            if rule.get("apiGroups") == [""] and "services" in rule.get("resources", []) and "create" in rule["verbs"]:
                others = [r for r in rule["resources"] if r != "services"]
                if others:
                    rules.append({**rule, "resources": others})
                rules.append({**rule, "resources": ["services"], "verbs": [v for v in rule["verbs"] if v != "create"]})
            else:
                rules.append(rule)
        doc["rules"] = rules
    return out


def md_status(kube: Kube, name: str) -> dict[str, Any]:
    md = kube.api(f"/apis/serving.rayleigh.dev/v1alpha1/namespaces/{NS}/modeldeployments/{name}") or {}
    st: dict[str, Any] = md.get("status") or {}
    return st


def condition(kube: Kube, name: str, ctype: str) -> dict[str, Any]:
    found: dict[str, Any] = next((c for c in md_status(kube, name).get("conditions", []) if c["type"] == ctype), {})
    return found


def owned(kube: Kube, path: str, name: str) -> list[str]:
    items = kube.api(path)["items"]
    return sorted(
        o["metadata"]["name"]
        for o in items
        if (o["metadata"].get("labels") or {}).get("serving.rayleigh.dev/model-deployment") == name
    )


def test_a_role_without_create_on_services_degrades_naming_the_permission_then_converges_once_granted(
    kube: Kube, operator_factory: Callable[..., OperatorProcess]
) -> None:
    release, name = "rayleigh-forbid", "forbid"
    full = render_operator_rbac(release=release)
    identity = install(kube, without_create_on_services(full), kube.workdir / "identity-forbid")
    since = len(kube.denials())
    op = operator_factory(*FAST, kubeconfig=identity.kubeconfig)
    apply_docs(kube, tiny(name))

    degraded = wait_for(
        lambda: (c := condition(kube, name, "Degraded")).get("reason") == api.Reason.FORBIDDEN and c,
        30,
        what="Degraded=True, reason Forbidden",
    )
    assert degraded["status"] == "True"
    message = degraded["message"]
    assert f'create services (API group "") in namespace "{NS}"' in message, message
    assert 'services "forbid-head" is forbidden' in message or 'services "forbid-serve" is forbidden' in message
    st = md_status(kube, name)
    assert st["phase"] == api.Phase.DEGRADED
    ready = condition(kube, name, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", api.Reason.FORBIDDEN)
    assert condition(kube, name, "Progressing")["status"] == "False"
    # What the role allows was applied; the services were refused, by the emulator's RBAC.
    assert owned(kube, f"/apis/apps/v1/namespaces/{NS}/deployments", name) == ["forbid-head", "forbid-workers"]
    assert owned(kube, f"/api/v1/namespaces/{NS}/services", name) == []
    refused = {(d["verb"], d["resource"]) for d in kube.denials()[since:] if d.get("user") == identity.username}
    assert refused == {("create", "services")}, refused
    events = [
        e
        for e in kube.api(f"/api/v1/namespaces/{NS}/events")["items"]
        if e["involvedObject"]["name"] == name and e["reason"] == api.Reason.FORBIDDEN
    ]
    assert len(events) == 1 and events[0]["type"] == "Warning", events
    assert "create services" in events[0]["message"]
    assert op.process is not None and op.process.poll() is None  # no crash

    apply_docs(kube, *full, force=True)  # the administrator grants `create` on services
    wait_for(
        lambda: owned(kube, f"/api/v1/namespaces/{NS}/services", name) == ["forbid-head", "forbid-serve"],
        30,
        what="services created once create is granted",
    )
    cleared = wait_for(
        lambda: (c := condition(kube, name, "Degraded")).get("status") == "False" and c, 15, what="Degraded cleared"
    )
    assert cleared["reason"] != api.Reason.FORBIDDEN
    assert md_status(kube, name)["phase"] == api.Phase.PENDING  # the head is not ready (no kubelet here)
    op.stop()
    kube.kubectl("delete", "md", name, "--wait=false")


# --- pure parts ------------------------------------------------------------------------------------


def service(name: str, namespace: str = "ml") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}}


def test_the_message_names_verb_resource_group_and_namespace() -> None:
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "m", "namespace": "ml"}}
    user = "system:serviceaccount:rayleigh-system:rayleigh-operator"
    refused = [
        # The create check of an apply: the API server names no verb.
        (service("m-head"), ApiError(403, 'services "m-head" is forbidden: ', "Forbidden")),
        (service("m-serve"), ApiError(403, 'services "m-serve" is forbidden: ', "Forbidden")),
        # The authorization filter names the verb it refused.
        (
            pdb,
            ApiError(
                403,
                f'poddisruptionbudgets.policy "m" is forbidden: User "{user}" cannot patch resource '
                '"poddisruptionbudgets" in API group "policy" in the namespace "ml"',
                "Forbidden",
            ),
        ),
    ]
    message = forbidden_message(refused)
    assert message.count('create services (API group "") in namespace "ml"') == 1  # once for both services
    assert 'patch poddisruptionbudgets (API group "policy") in namespace "ml"' in message
    assert "grant it in the operator's Role/ClusterRole" in message


def test_retries_back_off_to_a_bound() -> None:
    delays = [retry_delay(n, 30) for n in range(1, 7)]
    assert delays == [30, 60, 120, 240, 240, 240]
    assert max(delays) == 30 * MAX_RETRY_FACTOR


def observed(**kw: Any) -> status.Observed:
    base: dict[str, Any] = {
        "generation": 1,
        "desired_replicas": 1,
        "selector": "s",
        "served_models": ["m"],
        "endpoint": "http://gw/v1",
    }
    return status.Observed(**{**base, **kw})


def test_forbidden_is_degraded_whatever_else_is_seen_and_keeps_ready_while_serving() -> None:
    err = (api.Reason.FORBIDDEN, "the operator's service account is forbidden to create services")
    pending = status.decide(observed(apply_error=err), None)
    assert pending.phase == api.Phase.DEGRADED
    assert pending.ready[:2] == ("False", api.Reason.FORBIDDEN)
    assert pending.degraded == ("True", api.Reason.FORBIDDEN, err[1])
    assert pending.progressing[0] == "False"
    serving = observed(
        apply_error=err,
        head_ready=True,
        workers_replicas=1,
        workers_ready=1,
        serve_status="RUNNING",
        serve_running_replicas=1,
    )
    d = status.decide(serving, api.Phase.READY)
    assert d.phase == api.Phase.DEGRADED and d.ready[0] == "True" and d.ready_replicas == 1
    # A spec problem still wins: Failed, not retried.
    failed = status.decide(observed(apply_error=err, spec_problem=(api.Reason.INVALID_SPEC, "x")), None)
    assert failed.phase == api.Phase.FAILED
    # One Warning Event naming the permission on the transition.
    current = status.compute_status(observed(apply_error=err), None, "2025-01-01T00:00:00Z")
    (event,) = status.transitions(None, current)
    assert (event.type, event.reason) == ("Warning", api.Reason.FORBIDDEN) and "create services" in event.message
    # Granted: back to what is seen (the head is not ready: Pending, as it never served).
    granted = status.compute_status(observed(), current, "2025-01-01T00:01:00Z")
    assert granted["phase"] == api.Phase.PENDING
    degraded = next(c for c in granted["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"
