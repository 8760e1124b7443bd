"""The Helm chart, rendered by the real helm binary (v4) and validated offline.

Built-in kinds are validated with kubernetes-validate against the Kubernetes 1.34 OpenAPI schemas
(strict: unknown fields fail). Installing into a real cluster (scheduling, the API server's own
admission, `helm test`) needs a kubelet and runs in the kind workflow (.github/workflows/e2e-kind.yml).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rayleigh_gateway.keys import KeyStore
from rayleigh_gateway.routes import parse_config
from rayleigh_operator.rbac import cluster_role
from rayleigh_operator.render import AUTOSCALING_METRICS, RenderOptions
from tests.chart.helpers import (
    ADAPTER_FILE,
    CHART,
    K8S_VERSION,
    RULES_FILE,
    find,
    helm,
    kinds,
    render,
    template_args,
)

pytestmark = pytest.mark.timeout(120)

MONITORING = ("--api-versions", "monitoring.coreos.com/v1")

# Value combinations every one of which must render manifests the API server's schemas accept.
COMBINATIONS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "defaults": ({}, ()),
    "with-prometheus-operator": ({}, MONITORING),
    "external-redis-with-password": (
        {"redis.enabled": False, "redis.url": "redis://redis.example:6380/0", "redis.existingSecret": "redis-auth"},
        (),
    ),
    "gateway-only": ({"operator.enabled": False, "monitoring.dashboards.enabled": False}, ()),
    "operator-only-namespaced": (
        {
            "gateway.enabled": False,
            "operator.watchNamespaces": ["ml", "research"],
            "networkPolicy.enabled": False,
            "operator.endpoint": "http://llm.example.com/v1",
            "operator.externalGateway": {"namespace": "edge", "routesConfigMap": "edge-gateway-routes"},
        },
        (),
    ),
    "ingress-and-httproute": (
        {
            "gateway.ingress": {
                "enabled": True,
                "className": "nginx",
                "hosts": ["llm.example.com"],
                "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
            },
            "gateway.httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}]},
        },
        (),
    ),
    "renamed": ({"nameOverride": "1", "operator.serviceAccount.name": "0", "fullnameOverride": ""}, ()),
    "everything-forced-on-single-gateway": (
        {
            "gateway.replicas": 1,
            "gateway.service": {"type": "NodePort", "port": 80, "nodePort": 30080},
            "monitoring.serviceMonitors": "true",
            "monitoring.prometheusRule": "true",
            "monitoring.labels": {"release": "kube-prometheus-stack"},
            "networkPolicy.metricsNamespaces": ["monitoring"],
            "networkPolicy.gatewayFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}],
            "tests.apiKeySecret": "helm-test-key",
            "gateway.routes": [{"name": "ext", "backend": "http://vllm.example:8000", "models": ["ext-model"]}],
        },
        (),
    ),
}


def test_helm_lint_strict_passes() -> None:
    result = helm("lint", "--strict", str(CHART), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("name", COMBINATIONS)
def test_rendered_builtin_kinds_pass_strict_kubernetes_schema(name: str) -> None:
    values, extra = COMBINATIONS[name]
    docs = render(values, *extra)
    assert docs, "nothing rendered"
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(("monitoring.coreos.com/", "gateway.networking.k8s.io/")):
            continue  # a CRD kind: not in the built-in schemas (structure checked in their own tests)
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 5


def test_default_install_has_operator_gateway_redis_and_no_monitoring_kinds() -> None:
    docs = render()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("Deployment", "rayleigh-operator"),
        ("Deployment", "rayleigh-gateway"),
        ("Service", "rayleigh-gateway"),
        ("Deployment", "rayleigh-redis"),
        ("ClusterRole", "rayleigh-operator"),
        ("PodDisruptionBudget", "rayleigh-gateway"),
        ("Pod", "rayleigh-test-gateway"),
    ]:
        assert expected in names
    # Without monitoring.coreos.com/v1 in the cluster, "auto" renders no Prometheus Operator kinds.
    assert not {"ServiceMonitor", "PrometheusRule"} & kinds(docs)


def test_monitoring_kinds_render_when_the_cluster_serves_them() -> None:
    docs = render({}, *MONITORING)
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceMonitor"} == {
        "rayleigh-gateway",
        "rayleigh-operator",
    }
    rule = find(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())


def test_every_container_is_non_root_read_only_without_capabilities_and_bounded() -> None:
    docs = render({}, *MONITORING)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    pods += [d["spec"] for d in docs if d["kind"] == "Pod"]
    assert len(pods) == 4
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]


def test_operator_cluster_role_is_exactly_the_operators_rbac_table() -> None:
    role = find(render(), "ClusterRole", "-operator")
    assert role["rules"] == cluster_role()["rules"]


def test_operator_cluster_role_matches_the_plain_manifests() -> None:
    docs = yaml.safe_load_all((CHART.parents[1] / "manifests" / "rbac" / "operator.yaml").read_text())
    (plain,) = [d for d in docs if d and d["kind"] == "ClusterRole"]
    assert find(render(), "ClusterRole", "-operator")["rules"] == plain["rules"]


def test_operator_is_bound_to_its_service_account() -> None:
    docs = render()
    binding = find(docs, "ClusterRoleBinding", "-operator")
    deployment = find(docs, "Deployment", "-operator")
    sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "rayleigh-system"}]
    assert binding["roleRef"]["name"] == find(docs, "ClusterRole")["metadata"]["name"]
    assert find(docs, "ServiceAccount")["metadata"]["name"] == sa


def test_operator_flags_parse_with_the_real_operator_command() -> None:
    from rayleigh_operator.run import operator

    container = find(render(), "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["rayleigh", "operator"]
    ctx = operator.make_context("operator", list(container["args"]))
    assert ctx.params["image"] == "ghcr.io/rayleigh-llm/rayleigh-replica:0.1.0"
    assert ctx.params["gateway_namespace"] == "rayleigh-system"
    assert ctx.params["endpoint"] == "http://rayleigh-gateway.rayleigh-system.svc:80/v1"


def test_gateway_flags_parse_with_the_real_gateway_command() -> None:
    from rayleigh_gateway.cli import gateway

    container = find(render(), "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["rayleigh", "gateway"]
    ctx = gateway.make_context("gateway", list(container["args"]))
    assert ctx.params["config_path"] == "/etc/rayleigh/gateway"
    assert ctx.params["keys_path"] == "/etc/rayleigh/keys/keys.yaml"
    assert ctx.params["port"] == 8080
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/rayleigh/gateway"] == "config" and mounts["/etc/rayleigh/keys"] == "keys"


def test_gateway_pods_carry_the_labels_the_operators_network_policies_admit() -> None:
    docs = render()
    pod_labels = find(docs, "Deployment", "-gateway")["spec"]["template"]["metadata"]["labels"]
    for key, value in RenderOptions().gateway_pod_labels.items():
        assert pod_labels[key] == value
    operator_labels = find(docs, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    for key, value in RenderOptions().operator_pod_labels.items():
        assert operator_labels[key] == value


def test_gateway_config_is_accepted_by_the_gateways_own_config_model() -> None:
    route = {"name": "ext", "namespace": "apps", "backend": "http://vllm.example:8000", "models": ["m1", "m1-lora"]}
    cm = find(
        render({"gateway.routes": [route], "gateway.config.trustedProxies": ["10.0.0.0/8"]}), "ConfigMap", "-gateway"
    )
    config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]), "gateway ConfigMap")
    assert [r.name for r in config.routes] == ["ext"]
    assert config.trusted_proxies == ["10.0.0.0/8"]


def test_generated_key_store_is_loadable_and_holds_no_key() -> None:
    secret = find(render(), "Secret", "-api-keys")
    text = base64.b64decode(secret["data"]["keys.yaml"]).decode()
    store = KeyStore.from_dict(yaml.safe_load(text), "api-keys Secret")
    assert store.records == {}
    assert len(store.salt) == 32
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_existing_key_secret_is_mounted_and_none_is_generated() -> None:
    docs = render({"gateway.apiKeys.existingSecret": "my-keys"})
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == ["rayleigh-redis-auth"]
    volumes = find(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "keys", "secret": {"secretName": "my-keys"}} in volumes


def _env(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def test_gateway_uses_bundled_redis_by_service_dns_name_with_the_generated_password() -> None:
    """The password reaches the gateway as a mounted file only (tests/chart/test_chart_redis.py
    covers every Redis combination)."""
    docs = render()
    env = _env(docs, "-gateway")
    url = "redis://rayleigh-redis.rayleigh-system.svc:6379/0"
    assert env == [{"name": "RAYLEIGH_GATEWAY_REDIS_URL", "value": url}]
    ref = {"secretKeyRef": {"name": "rayleigh-redis-auth", "key": "password"}}
    assert {"name": "REDIS_PASSWORD", "valueFrom": ref} in _env(docs, "-redis")
    container = find(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert [a for a in container["args"] if "redis" in a] == ["--redis-password-file=/etc/rayleigh/redis-auth/password"]
    secret = find(docs, "Secret", "-redis-auth")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) == 40 and password.isalnum()
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_generated_redis_password_is_kept_across_upgrades() -> None:
    """`lookup` reads the live Secret back: simulated by rendering the template against a Secret
    that helm cannot see offline, so only the code path is shown here; the kind workflow upgrades."""
    text = (CHART / "templates" / "redis-auth.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in text
    assert 'index $existing.data "password"' in text


def test_bundled_redis_runs_in_protected_mode_with_a_patched_version() -> None:
    container = find(render(), "Deployment", "-redis")["spec"]["template"]["spec"]["containers"][0]
    assert "--protected-mode yes" in container["args"][0]
    assert "--protected-mode no" not in container["args"][0]
    assert '--requirepass "$REDIS_PASSWORD"' in container["args"][0]
    version = tuple(int(x) for x in container["image"].split(":")[1].split("-")[0].split("."))
    assert version >= (7, 4, 6), "CVE-2025-49844 is fixed in Redis 7.4.6"


def test_gateway_disabled_renders_no_redis_and_points_the_operator_at_the_external_gateway() -> None:
    values = {
        "gateway.enabled": False,
        "operator.endpoint": "http://llm.example.com/v1",
        "operator.externalGateway": {"namespace": "edge", "routesConfigMap": "edge-gateway-routes"},
    }
    docs = render(values)
    assert not [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"]
    from rayleigh_operator.run import operator

    args = find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    params = operator.make_context("operator", list(args)).params
    assert params["endpoint"] == "http://llm.example.com/v1"
    assert params["gateway_namespace"] == "edge"
    assert params["routes_configmap"] == "edge-gateway-routes"


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"gateway.enabled": False}, "/operator/endpoint"),
        ({"gateway.enabled": False, "operator.endpoint": "http://x/v1"}, "/operator/externalGateway/routesConfigMap"),
    ],
    ids=["no-endpoint", "no-routes-configmap"],
)
def test_operator_without_this_releases_gateway_must_be_told_where_it_is(values: dict[str, Any], path: str) -> None:
    result = helm(*template_args(values), check=False)
    assert result.returncode != 0 and path in result.stderr, result.stderr


def test_routes_configmap_is_per_release_and_the_same_on_both_sides() -> None:
    from rayleigh_operator.run import operator

    for release in ("rayleigh", "team-b"):
        out = helm(
            "template", release, str(CHART), "--namespace", "rayleigh-system", "--kube-version", K8S_VERSION
        ).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        op = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
        gw = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-gateway"))
        params = operator.make_context("operator", list(op["spec"]["template"]["spec"]["containers"][0]["args"])).params
        sources = gw["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
        mounted = [s["configMap"]["name"] for s in sources if s["configMap"].get("optional")]
        expected = "rayleigh-gateway-routes" if release == "rayleigh" else "team-b-rayleigh-gateway-routes"
        assert params["routes_configmap"] == expected and mounted == [expected]


def test_name_override_keeps_the_labels_the_operators_network_policies_select() -> None:
    docs = render({"nameOverride": "llm"})
    assert find(docs, "Deployment", "-llm-gateway")
    for component in ("gateway", "operator"):
        labels = find(docs, "Deployment", f"-llm-{component}")["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "rayleigh"
        assert labels["app.kubernetes.io/component"] == component
    # Every selector of the chart matches the pods it means.
    pods = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    for doc in docs:
        spec = doc.get("spec") or {}
        selector = spec.get("selector") if doc["kind"] == "Service" else (spec.get("selector") or {}).get("matchLabels")
        if doc["kind"] == "NetworkPolicy":
            selector = spec["podSelector"]["matchLabels"]
        if selector:
            assert any(selector.items() <= labels.items() for labels in pods.values()), doc["metadata"]["name"]


def test_numeric_looking_names_stay_strings() -> None:
    docs = render({"nameOverride": "1", "operator.serviceAccount.name": "0"})
    assert find(docs, "ServiceAccount")["metadata"]["name"] == "0"
    assert find(docs, "Deployment", "-1-operator")["spec"]["template"]["spec"]["serviceAccountName"] == "0"


def test_subchart_global_values_are_accepted() -> None:
    assert render({"global": {"imageRegistry": "registry.example", "storageClass": "fast"}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway.replicas": 2, "gateway.pdb.minAvailable": 3}, "gateway.pdb.minAvailable=3 is not below"),
        ({"gateway.replicas": 2, "gateway.pdb.minAvailable": 2}, "gateway.pdb.minAvailable=2 is not below"),
        ({"gateway.replicas": 3, "gateway.pdb.minAvailable": "100%"}, "/gateway/pdb/minAvailable"),
    ],
    ids=["above", "equal", "percent"],
)
def test_a_budget_that_blocks_every_eviction_is_refused(values: dict[str, Any], message: str) -> None:
    result = helm(*template_args(values), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_ingress_has_the_nginx_streaming_annotations_and_routes_to_the_gateway() -> None:
    values = {"gateway.ingress": {"enabled": True, "hosts": ["llm.example.com"], "annotations": {"a": "b"}}}
    ingress = find(render(values), "Ingress", "-gateway")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "4194304"
    assert annotations["a"] == "b"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "llm.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "rayleigh-gateway", "port": {"name": "http"}}
    overridden = {
        "gateway.ingress": {"enabled": True, "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"}}
    }
    annotations = find(render(overridden), "Ingress", "-gateway")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "60"


def test_httproute_attaches_to_the_named_gateway_with_a_long_timeout() -> None:
    values = {"gateway.httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gw"}]}}
    route = find(render(values), "HTTPRoute", "-gateway")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gw"}]
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": "rayleigh-gateway", "port": 80}]
    assert rule["timeouts"] == {"request": "3600s"}
    result = helm(*template_args({"gateway.httpRoute.enabled": True}), check=False)
    assert result.returncode != 0 and "/gateway/httpRoute/parentRefs" in result.stderr, result.stderr


def test_narrowed_gateway_policy_still_admits_scrapes_and_the_helm_test_pod() -> None:
    clients = [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]
    docs = render({"networkPolicy.gatewayFrom": clients, "networkPolicy.metricsNamespaces": ["monitoring"]})
    rules = find(docs, "NetworkPolicy", "-gateway")["spec"]["ingress"]
    assert rules[0]["from"] == clients
    peers = rules[1]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in peers
    test_pod_labels = find(docs, "Pod", "-test-gateway")["metadata"]["labels"]
    (selector,) = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p]
    assert selector.items() <= test_pod_labels.items()


def test_redis_admits_only_gateway_pods() -> None:
    docs = render()
    policy = find(docs, "NetworkPolicy", "-redis")
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    gateway_labels = find(docs, "Deployment", "-gateway")["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_dashboards_are_configmaps_with_grafana_label_and_the_checked_in_json() -> None:
    cms = [d for d in render() if d["kind"] == "ConfigMap" and "-dashboard-" in d["metadata"]["name"]]
    assert len(cms) == 3
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((filename, text),) = cm["data"].items()
        assert text + "\n" == (CHART / "files" / "dashboards" / filename).read_text()
        assert json.loads(text)["title"].startswith("Rayleigh / ")


def test_adapter_rules_expose_every_metric_the_operators_hpas_use() -> None:
    cm = find(render(), "ConfigMap", "-adapter-rules")
    rules = yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    exposed = {r["name"]["as"] for r in rules}
    assert exposed == set(AUTOSCALING_METRICS.values())
    for rule in rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert yaml.safe_load(ADAPTER_FILE.read_text())["rules"] == rules


def test_helm_test_hook_calls_gateway_health_and_models() -> None:
    pod = find(render(), "Pod", "-test-gateway")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert 'base="http://rayleigh-gateway.rayleigh-system.svc:80"' in script
    assert '"$base/healthz"' in script
    assert '"$base/v1/models"' in script


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway.replicas": 0}, "/gateway/replicas"),
        ({"gateway.bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"redis.url": "http://not-redis"}, "/redis/url"),
        ({"podSecurityContext.runAsNonRoot": False}, "/podSecurityContext/runAsNonRoot"),
        ({"operator.logLevel": "verbose"}, "/operator/logLevel"),
        ({"monitoring.serviceMonitors": "maybe"}, "/monitoring/serviceMonitors"),
        ({"gateway.resources.limits": None}, "missing property 'limits'"),
    ],
    ids=["zero-replicas", "unknown-key", "bad-redis-url", "root", "log-level", "monitoring-switch", "no-limits"],
)
def test_values_schema_rejects_bad_values_naming_the_field(values: dict[str, Any], message: str) -> None:
    result = helm(*template_args(values), check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_no_redis_at_all_is_refused_by_the_schema_naming_redis_url() -> None:
    result = helm(*template_args({"redis.enabled": False}), check=False)
    assert result.returncode != 0
    assert "/redis/url" in result.stderr, result.stderr


def test_notes_show_how_to_deploy_and_call_a_model() -> None:
    """Shapes only; tests/chart/test_notes.py runs the commands against the API emulator."""
    result = helm("install", "rayleigh", str(CHART), "--dry-run=client", "--namespace", "rayleigh-system")
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "kubectl -n default apply -f -" in notes and "file:///opt/rayleigh/.cache/models/tiny-qwen" in notes
    assert "--dry-run=client -o yaml | kubectl apply -f -" in notes
    assert "/v1/chat/completions" in notes
    assert "helm test rayleigh" in notes
    assert "docs/UPGRADE.md" in notes


@pytest.mark.parametrize("password", ["Gen3rated0Password", "s3cret pass"], ids=["generated", "with-space"])
def test_redis_command_line_and_probe_work_with_the_real_redis_server(password: str, tmp_path: Any) -> None:
    """The chart's Redis container command and readiness probe, run by sh with the real
    /usr/bin/redis-server and redis-cli (on a free loopback port instead of 6379)."""
    import os
    import shutil
    import signal
    import subprocess
    import time

    from tests.plugins.common import free_port

    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/install-system.sh installs it)")
    values = {"redis.existingSecret": "redis-auth"} if " " in password else {}
    container = find(render(values), "Deployment", "-redis")["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    command = container["args"][0].replace("--dir /data", f"--dir {tmp_path} --port {port} --bind 127.0.0.1")
    env = {**os.environ, "REDIS_PASSWORD": password}
    server = subprocess.Popen(
        [*container["command"], command], env=env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        probe = container["readinessProbe"]["exec"]["command"]
        probe = [*probe[:-1], probe[-1].replace("redis-cli ", f"redis-cli -p {port} ", 1)]
        deadline = time.monotonic() + 10
        while subprocess.run(probe, env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "the readiness probe never passed"
            time.sleep(0.1)
        # Without the password, Redis refuses commands: --requirepass took effect.
        unauth = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        assert "NOAUTH" in unauth.stdout + unauth.stderr
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_chart_crd_is_the_generated_one_and_passes_the_schema() -> None:
    chart_crds = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in chart_crds] == ["serving.rayleigh.dev_modeldeployments.yaml"]
    for path in chart_crds:
        assert path.read_text() == (CHART.parents[1] / "manifests" / "crds" / path.name).read_text()
        kubernetes_validate.validate(yaml.safe_load(path.read_text()), K8S_VERSION, strict=True)
    crds = [d for d in render({}, "--include-crds") if d["kind"] == "CustomResourceDefinition"]
    assert [c["metadata"]["name"] for c in crds] == ["modeldeployments.serving.rayleigh.dev"]


def test_route_rendered_by_the_operator_fits_the_charts_static_routes() -> None:
    """The e2e workflow feeds the operator's route ConfigMap into gateway.routes: the chart's
    schema accepts it and the gateway's config model loads the result."""
    from rayleigh_api.loading import load_model_deployment
    from rayleigh_operator.render import ROUTE_KEY, render_route

    md = load_model_deployment(CHART.parents[1] / "manifests" / "examples" / "tiny.yaml")
    route = json.loads(render_route(md, RenderOptions())["data"][ROUTE_KEY])
    cm = find(render({"gateway.routes": [route]}), "ConfigMap", "-gateway")
    config = parse_config(yaml.safe_load(cm["data"]["gateway.yaml"]), "gateway ConfigMap")
    assert [r.models for r in config.routes] == [["tiny-qwen"]]
