"""Every pod Rayleigh renders passes the `restricted` Pod Security Standard; the Ray cluster is locked down.

The checks below implement the `restricted` profile (which includes `baseline`) of
https://kubernetes.io/docs/concepts/security/pod-security-standards/, one function per check of the
Pod Security Admission controller's policy package (k8s.io/pod-security-admission/policy,
check_<name>.go), named as there. They run over every pod template of:
- `rayleigh render` of every manifests/examples/*.yaml (Ray head and workers), plain and with the
  GCS fault-tolerance flags;
- `helm template` of the chart (operator, gateway, Redis, the `helm test` hook) with every value
  combination of tests/chart/test_chart.py (defaults, every optional component on, monitoring CRDs
  served, ...).

Not shown here: the admission controller itself (no kube-apiserver on these machines; the kind
workflow can label a namespace `pod-security.kubernetes.io/enforce=restricted`), and whether Ray and
vLLM run with a read-only root filesystem (only a kubelet shows that).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from rayleigh_operator import render as r
from rayleigh_operator.render_cli import render as render_cmd
from tests.chart.helpers import render as helm_template
from tests.chart.test_chart import COMBINATIONS

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
RENDER_FLAG_SETS = {"plain": [], "gcs-ft": ["--gcs-redis-address", "redis:6379", "--gcs-redis-password-secret", "rp"]}

Pod = dict[str, Any]


def containers(pod: Pod) -> list[dict[str, Any]]:
    """Every container the checks look at: containers, initContainers, ephemeralContainers."""
    return [*pod.get("containers", []), *pod.get("initContainers", []), *pod.get("ephemeralContainers", [])]


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


# --- baseline ----------------------------------------------------------------------------------


def host_namespaces(pod: Pod) -> list[str]:
    return [f"{k}: true" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k)]


def privileged(pod: Pod) -> list[str]:
    return [c["name"] for c in containers(pod) if _sc(c).get("privileged")]


BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip


def capabilities_baseline(pod: Pod) -> list[str]:
    return [
        f"{c['name']} adds {cap}"
        for c in containers(pod)
        for cap in (_sc(c).get("capabilities") or {}).get("add") or []
        if cap not in BASELINE_CAPABILITIES
    ]


def host_path_volumes(pod: Pod) -> list[str]:
    return [v["name"] for v in pod.get("volumes", []) if "hostPath" in v]


def host_ports(pod: Pod) -> list[str]:
    return [f"{c['name']}:{p['hostPort']}" for c in containers(pod) for p in c.get("ports", []) if p.get("hostPort")]


def app_armor_profile(pod: Pod) -> list[str]:
    bad = []
    for where, sc in [("pod", _sc(pod)), *((c["name"], _sc(c)) for c in containers(pod))]:
        profile = sc.get("appArmorProfile")
        if profile and profile.get("type") not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: {profile}")
    return bad


def app_armor_annotations(annotations: dict[str, str]) -> list[str]:
    prefix = "container.apparmor.security.beta.kubernetes.io/"
    return [
        f"{k}={v}"
        for k, v in annotations.items()
        if k.startswith(prefix) and v != "runtime/default" and not v.startswith("localhost/")
    ]


def se_linux_options(pod: Pod) -> list[str]:
    bad = []
    for where, sc in [("pod", _sc(pod)), *((c["name"], _sc(c)) for c in containers(pod))]:
        opts = sc.get("seLinuxOptions") or {}
        if opts.get("type", "") not in ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"):
            bad.append(f"{where}: type {opts['type']}")
        if opts.get("user") or opts.get("role"):
            bad.append(f"{where}: user/role set")
    return bad


def proc_mount(pod: Pod) -> list[str]:
    return [c["name"] for c in containers(pod) if _sc(c).get("procMount", "Default") != "Default"]


def seccomp_profile_baseline(pod: Pod) -> list[str]:
    scs = [("pod", _sc(pod)), *((c["name"], _sc(c)) for c in containers(pod))]
    return [w for w, sc in scs if (sc.get("seccompProfile") or {}).get("type") == "Unconfined"]


SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def sysctls(pod: Pod) -> list[str]:
    return [s["name"] for s in _sc(pod).get("sysctls") or [] if s["name"] not in SAFE_SYSCTLS]


def windows_host_process(pod: Pod) -> list[str]:
    scs = [("pod", _sc(pod)), *((c["name"], _sc(c)) for c in containers(pod))]
    return [w for w, sc in scs if (sc.get("windowsOptions") or {}).get("hostProcess")]


# --- restricted --------------------------------------------------------------------------------

RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def restricted_volumes(pod: Pod) -> list[str]:
    return [
        f"{v['name']}: {sorted(set(v) - {'name'})}"
        for v in pod.get("volumes", [])
        if not (set(v) - {"name"}) <= RESTRICTED_VOLUME_TYPES
    ]


def allow_privilege_escalation(pod: Pod) -> list[str]:
    # Must be set to false explicitly (unset means allowed).
    return [c["name"] for c in containers(pod) if _sc(c).get("allowPrivilegeEscalation") is not False]


def run_as_non_root(pod: Pod) -> list[str]:
    pod_level = _sc(pod).get("runAsNonRoot")
    bad = ["pod: runAsNonRoot false"] if pod_level is False else []
    for c in containers(pod):
        value = _sc(c).get("runAsNonRoot")
        if value is False or (value is None and pod_level is not True):
            bad.append(c["name"])
    return bad


def run_as_user(pod: Pod) -> list[str]:
    scs = [("pod", _sc(pod)), *((c["name"], _sc(c)) for c in containers(pod))]
    return [w for w, sc in scs if sc.get("runAsUser") == 0]


def seccomp_profile_restricted(pod: Pod) -> list[str]:
    ok = ("RuntimeDefault", "Localhost")
    pod_type = (_sc(pod).get("seccompProfile") or {}).get("type")
    bad = [] if pod_type in (None, *ok) else [f"pod: {pod_type}"]
    for c in containers(pod):
        ctype = (_sc(c).get("seccompProfile") or {}).get("type")
        if (ctype is None and pod_type not in ok) or (ctype is not None and ctype not in ok):
            bad.append(f"{c['name']}: {ctype}")
    return bad


def capabilities_restricted(pod: Pod) -> list[str]:
    bad = []
    for c in containers(pod):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad.append(f"{c['name']} does not drop ALL")
        bad += [f"{c['name']} adds {cap}" for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
    return bad


CHECKS: dict[str, Callable[[Pod], list[str]]] = {
    # baseline
    "hostNamespaces": host_namespaces,
    "privileged": privileged,
    "capabilities_baseline": capabilities_baseline,
    "hostPathVolumes": host_path_volumes,
    "hostPorts": host_ports,
    "appArmorProfile": app_armor_profile,
    "seLinuxOptions": se_linux_options,
    "procMount": proc_mount,
    "seccompProfile_baseline": seccomp_profile_baseline,
    "sysctls": sysctls,
    "windowsHostProcess": windows_host_process,
    # restricted
    "restrictedVolumes": restricted_volumes,
    "allowPrivilegeEscalation": allow_privilege_escalation,
    "runAsNonRoot": run_as_non_root,
    "runAsUser": run_as_user,
    "seccompProfile_restricted": seccomp_profile_restricted,
    "capabilities_restricted": capabilities_restricted,
}


def pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, str], Pod]]:
    """(kind/name, annotations, pod spec) of every pod a set of manifests creates."""
    out = []
    for d in docs:
        kind, name = d.get("kind"), d.get("metadata", {}).get("name")
        template = None
        if kind == "Pod":
            template = d
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = d["spec"]["template"]
        elif kind == "CronJob":
            template = d["spec"]["jobTemplate"]["spec"]["template"]
        if template is not None:
            annotations = (template.get("metadata") or {}).get("annotations") or {}
            out.append((f"{kind}/{name}", annotations, template["spec"]))
    return out


def violations(docs: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for where, notes, pod in pod_templates(docs):
        found = {name: check(pod) for name, check in CHECKS.items()}
        found["appArmorProfile"] += app_armor_annotations(notes)
        found = {k: v for k, v in found.items() if v}
        if found:
            out[where] = found
    return out


def rayleigh_render(example: Path, *flags: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(render_cmd, ["-f", str(example), *flags])
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.output) if d]


# --- the checks themselves catch what they must ------------------------------------------------


def test_the_checks_flag_a_pod_that_breaks_each_rule() -> None:
    c = {"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}
    c["securityContext"] = {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}, "procMount": "Unmasked"}
    pod = {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0, "seccompProfile": {"type": "Unconfined"}, "sysctls": [{"name": "vm.x"}]},
        "containers": [c],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
    }
    flagged = {name for name, check in CHECKS.items() if check(pod)}
    assert flagged == set(CHECKS) - {"appArmorProfile", "seLinuxOptions", "windowsHostProcess"}
    assert app_armor_annotations({"container.apparmor.security.beta.kubernetes.io/c": "unconfined"})


# --- Rayleigh's pods -----------------------------------------------------------------------------


@pytest.mark.parametrize("flags", list(RENDER_FLAG_SETS), ids=str)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_ray_pods_of_every_example_pass_the_restricted_profile(example: Path, flags: str) -> None:
    docs = rayleigh_render(example, *RENDER_FLAG_SETS[flags])
    assert len(pod_templates(docs)) == 2  # head and workers
    assert violations(docs) == {}


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_chart_pods_pass_the_restricted_profile(name: str) -> None:
    values, extra = COMBINATIONS[name]
    docs = helm_template(values, *extra)
    assert pod_templates(docs), "no pods rendered"
    assert violations(docs) == {}


def test_every_chart_component_is_checked() -> None:
    """The combinations cover the operator, the gateway, Redis and the helm test hook."""
    seen = {w for values, extra in COMBINATIONS.values() for w, _, _ in pod_templates(helm_template(values, *extra))}
    assert {"Deployment/rayleigh-operator", "Deployment/rayleigh-gateway", "Deployment/rayleigh-redis"} <= seen
    assert any(w.startswith("Pod/") for w in seen), seen  # the helm test hook


# --- the Ray cluster is locked down ------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_ray_pods_use_token_auth_from_the_models_own_secret_and_no_client_port(example: Path) -> None:
    docs = rayleigh_render(example)
    md_name = yaml.safe_load(example.read_text())["metadata"]["name"]
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == f"{md_name}-ray-token"
    assert "data" not in secret and "stringData" not in secret  # the operator creates it with a token
    for where, _, pod in pod_templates(docs):
        for c in pod["containers"]:
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", where
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": secret["metadata"]["name"], "key": r.RAY_TOKEN_KEY}, where
            assert r.CLIENT_PORT not in [p["containerPort"] for p in c.get("ports", [])], where
            assert "ray-client-server-port" not in " ".join(c["command"]), where
            assert _sc(c)["readOnlyRootFilesystem"] is True, where
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/tmp", "/home/ray", "/dev/shm"} <= mounts, where  # Ray's /tmp/ray, vLLM's caches
    for svc in (d for d in docs if d["kind"] == "Service"):
        assert r.CLIENT_PORT not in [p["port"] for p in svc["spec"]["ports"]], svc["metadata"]["name"]
        assert r.CLIENT_PORT not in [p["targetPort"] for p in svc["spec"]["ports"]], svc["metadata"]["name"]
