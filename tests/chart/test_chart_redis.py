"""The chart's Redis settings: ACL user, password from a mounted Secret, TLS, Sentinel.

Each combination is rendered by the real helm binary; the gateway container's arguments and
environment are then parsed by the real `rayleigh gateway` command (click), so a renamed flag or
environment variable fails here, and turned into the gateway's own RedisOptions against files laid
out as the kubelet would mount the rendered Secret volumes: the paths in the arguments must be files
that the volumes provide, from the keys the docs name. The password is never in an environment
variable, an argument or the URL.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest

from rayleigh_gateway.cli import gateway
from rayleigh_gateway.redis_conn import ENV, ENV_URL, RedisOptions
from rayleigh_gateway.redis_flags import redis_options
from tests.chart.helpers import CHART, K8S_VERSION, NAMESPACE, find, helm, render, template_args

pytestmark = pytest.mark.timeout(120)

PASSWORD = "s3cret pass/@:word"  # not URL-safe: a file needs no escaping
EXTERNAL = {"redis.enabled": False}
FLAG_PARAMS = (
    "redis_username",
    "redis_password_file",
    "redis_ca",
    "redis_cert",
    "redis_key",
    "redis_sentinel",
    "redis_sentinel_master",
)

# name -> (values, what the gateway's RedisOptions must say)
COMBINATIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "bundled": (
        {},
        {"host": "rayleigh-redis.rayleigh-system.svc", "port": 6379, "password": True, "tls": False},
    ),
    "bundled-existing-secret": (
        {"redis.existingSecret": "my-redis"},
        {"host": "rayleigh-redis.rayleigh-system.svc", "password": True, "secret": "my-redis"},
    ),
    "external-no-password": (
        {**EXTERNAL, "redis.url": "redis://r.example:6380/2"},
        {"host": "r.example", "port": 6380, "db": 2, "password": False, "tls": False},
    ),
    "external-password": (
        {**EXTERNAL, "redis.url": "redis://r.example:6379/0", "redis.existingSecret": "rp"},
        {"host": "r.example", "password": True, "secret": "rp", "username": None},
    ),
    # Written for earlier charts: the kubelet expanded $(REDIS_PASSWORD); now the file wins and the
    # URL keeps only its user.
    "legacy-url-with-user-and-password-reference": (
        {**EXTERNAL, "redis.url": "redis://rl:$(REDIS_PASSWORD)@r.example:6379/0", "redis.existingSecret": "rp"},
        {"host": "r.example", "password": True, "username": "rl", "url": "redis://rl@r.example:6379/0"},
    ),
    "legacy-url-with-password-reference-only": (
        {**EXTERNAL, "redis.url": "redis://:$(REDIS_PASSWORD)@r.example:6379/0", "redis.existingSecret": "rp"},
        {"host": "r.example", "password": True, "username": None, "url": "redis://r.example:6379/0"},
    ),
    "url-with-user-and-no-secret-used-as-is": (
        {**EXTERNAL, "redis.url": "redis://rl@r.example:6379/0"},
        {"username": "rl", "password": False, "url": "redis://rl@r.example:6379/0"},
    ),
    "acl-user": (
        {**EXTERNAL, "redis.url": "redis://r.example:6379/0", "redis.existingSecret": "rp", "redis.username": "rl"},
        {"username": "rl", "password": True},
    ),
    "acl-user-wins-over-the-url": (
        {**EXTERNAL, "redis.url": "redis://old@r.example:6379/0", "redis.existingSecret": "rp", "redis.username": "rl"},
        {"username": "rl", "password": True},
    ),
    "tls-system-cas": (
        {**EXTERNAL, "redis.url": "rediss://r.example:6380/0", "redis.existingSecret": "rp", "redis.tls.enabled": True},
        {"tls": True, "ca": None, "cert": None, "password": True},
    ),
    "tls-private-ca-acl": (
        {
            **EXTERNAL,
            "redis.url": "rediss://r.example:6380/0",
            "redis.existingSecret": "rp",
            "redis.username": "rl",
            "redis.tls": {"enabled": True, "caSecret": "redis-ca"},
        },
        {"tls": True, "ca": "redis-ca:ca.crt", "cert": None, "username": "rl", "password": True},
    ),
    "mutual-tls": (
        {
            **EXTERNAL,
            "redis.url": "rediss://r.example:6380/0",
            "redis.tls": {"enabled": True, "caSecret": "redis-ca", "clientCertSecret": "gw-client"},
        },
        {
            "tls": True,
            "ca": "redis-ca:ca.crt",
            "cert": "gw-client:tls.crt",
            "key": "gw-client:tls.key",
            "password": False,
        },
    ),
    "sentinel": (
        {
            **EXTERNAL,
            "redis.existingSecret": "rp",
            "redis.sentinel": {
                "hosts": ["s-0.sentinel:26379", "s-1.sentinel:26379", "[fd00::1]:5000"],
                "masterName": "mymaster",
            },
        },
        {
            "sentinels": (("s-0.sentinel", 26379), ("s-1.sentinel", 26379), ("fd00::1", 5000)),
            "master": "mymaster",
            "tls": False,
            "password": True,
        },
    ),
    "sentinel-tls-acl-with-url-for-the-db": (
        {
            **EXTERNAL,
            "redis.url": "rediss://ignored.example:6379/3",
            "redis.existingSecret": "rp",
            "redis.username": "rl",
            "redis.tls": {"enabled": True, "caSecret": "redis-ca"},
            "redis.sentinel": {"hosts": ["s-0.sentinel:26379"], "masterName": "cache"},
        },
        {
            "sentinels": (("s-0.sentinel", 26379),),
            "master": "cache",
            "tls": True,
            "db": 3,
            "ca": "redis-ca:ca.crt",
            "username": "rl",
            "password": True,
        },
    ),
    "sentinel-tls-without-url": (
        {
            **EXTERNAL,
            "redis.tls.enabled": True,
            "redis.sentinel": {"hosts": ["s-0.sentinel:26379"], "masterName": "mymaster"},
        },
        {"sentinels": (("s-0.sentinel", 26379),), "tls": True, "db": 0, "password": False},
    ),
}


def gateway_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = find(docs, "Deployment", "-gateway")["spec"]["template"]["spec"]
    return pod


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    c: dict[str, Any] = gateway_pod(docs)["containers"][0]
    assert c["name"] == "gateway"
    return c


def mount_secrets(pod: dict[str, Any], root: Path) -> None:
    """Lay out the gateway's Secret volumes under root as the kubelet would mount them: each item
    `key` of Secret `name` at <mountPath>/<path>, holding `name:key` (the password: PASSWORD)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in pod["containers"][0]["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None or "items" not in secret:
            continue
        assert mount["readOnly"] is True, mount
        for item in secret["items"]:
            path = root / mount["mountPath"].lstrip("/") / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(PASSWORD + "\n" if item["key"] == "password" else f"{secret['secretName']}:{item['key']}")


def parse_gateway(
    docs: list[dict[str, Any]], root: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], RedisOptions]:
    """The rendered command line and environment through `rayleigh gateway`'s click parser, then
    into RedisOptions (with the mounted paths under root)."""
    c = container(docs)
    for var in [ENV_URL, *ENV.values()]:
        monkeypatch.delenv(var, raising=False)
    for entry in c.get("env", []):
        assert "valueFrom" not in entry, f"the gateway reads no Secret through its environment: {entry}"
        monkeypatch.setenv(entry["name"], entry["value"])
    assert c["command"] == ["rayleigh", "gateway"]
    params = gateway.make_context("gateway", list(c["args"])).params
    flags = {
        name: (str(root / params[name].lstrip("/")) if params[name] and params[name].startswith("/") else params[name])
        for name in FLAG_PARAMS
    }
    mount_secrets(gateway_pod(docs), root)
    options = redis_options(params["redis_url"], flags)
    assert options is not None
    return params, options


def read(path: str | None) -> str | None:
    return Path(path).read_text() if path else None


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_each_combination_renders_valid_objects_and_a_command_line_the_gateway_accepts(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values, want = COMBINATIONS[name]
    docs = render(values)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    if values.get("redis.enabled") is False:
        names = {(d["kind"], d["metadata"]["name"]) for d in docs}
        assert ("Deployment", "rayleigh-redis") not in names and ("Secret", "rayleigh-redis-auth") not in names
    params, options = parse_gateway(docs, tmp_path, monkeypatch)
    checks = {
        "host": options.host,
        "port": options.port,
        "db": options.db,
        "tls": options.tls,
        "username": options.username,
        "password": options.current_password() == PASSWORD,
        "ca": read(options.ca_file),
        "cert": read(options.cert_file),
        "key": read(options.key_file),
        "sentinels": options.sentinels,
        "master": options.sentinel_master,
        "url": params["redis_url"],
    }
    for key, value in want.items():
        if key == "secret":
            volume = next(v for v in gateway_pod(docs)["volumes"] if v["name"] == "redis-auth")
            assert volume["secret"]["secretName"] == value
            continue
        assert checks[key] == value, f"{key}: {checks[key]!r} != {value!r}"
    if want.get("password"):
        # Only from the file: none in the URL.
        assert options.password is None
        assert params["redis_password_file"] == "/etc/rayleigh/redis-auth/password"
    else:
        assert params["redis_password_file"] is None
        assert "redis-auth" not in {v["name"] for v in gateway_pod(docs)["volumes"]}


@pytest.mark.parametrize("name", list(COMBINATIONS))
def test_the_password_is_never_in_an_env_var_an_argument_or_the_url(name: str) -> None:
    values, _ = COMBINATIONS[name]
    docs = render(values)
    c = container(docs)
    env_text = json.dumps(c.get("env", []))
    assert "secretKeyRef" not in env_text and "REDIS_PASSWORD" not in env_text
    assert not [a for a in c["args"] if "REDIS_PASSWORD" in a or "password=" in a.lower()]
    url = next(e["value"] for e in c["env"] if e["name"] == ENV_URL)
    assert urlparse(url).password is None
    generated = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "rayleigh-redis-auth"]
    for secret in generated:
        password = base64.b64decode(secret["data"]["password"]).decode()
        assert password not in json.dumps(find(docs, "Deployment", "-gateway"))


def test_bundled_redis_keeps_its_generated_password_secret_and_server_command() -> None:
    docs = render()
    secret = find(docs, "Secret", "-redis-auth")
    assert len(base64.b64decode(secret["data"]["password"]).decode()) == 40
    server = find(docs, "Deployment", "-redis")["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "REDIS_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "rayleigh-redis-auth", "key": "password"}},
    } in server["env"]
    volume = next(v for v in gateway_pod(docs)["volumes"] if v["name"] == "redis-auth")
    assert volume["secret"] == {
        "secretName": "rayleigh-redis-auth",
        "defaultMode": 0o440,
        "items": [{"key": "password", "path": "password"}],
    }


def test_secret_files_are_readable_by_the_gateway_without_an_fs_group() -> None:
    """0440 relies on the pod's fsGroup; without one the non-root gateway needs 0444."""
    values = {
        **EXTERNAL,
        "redis.url": "rediss://r.example:6380/0",
        "redis.existingSecret": "rp",
        "redis.tls": {"enabled": True, "clientCertSecret": "gw-client"},
    }
    modes = {v["name"]: v["secret"].get("defaultMode") for v in gateway_pod(render(values))["volumes"] if "secret" in v}
    assert modes["redis-auth"] == modes["redis-client"] == 0o440
    no_fs_group = {**values, "podSecurityContext.fsGroup": None}
    pod = gateway_pod(render(no_fs_group))
    assert "fsGroup" not in pod["securityContext"]
    modes = {v["name"]: v["secret"].get("defaultMode") for v in pod["volumes"] if "secret" in v}
    assert modes["redis-auth"] == modes["redis-client"] == 0o444


def _checksum(values: dict[str, Any]) -> str:
    annotations = find(render(values), "Deployment", "-gateway")["spec"]["template"]["metadata"]["annotations"]
    checksum: str = annotations["checksum/redis"]
    return checksum


def test_the_gateway_restarts_when_any_redis_setting_changes() -> None:
    base = {
        **EXTERNAL,
        "redis.url": "rediss://r.example:6380/0",
        "redis.existingSecret": "rp",
        "redis.username": "rl",
        "redis.tls": {"enabled": True, "caSecret": "ca", "clientCertSecret": "client"},
        "redis.sentinel": {"hosts": ["s-0:26379"], "masterName": "mymaster"},
    }
    changes = {
        "url": {"redis.url": "rediss://r.example:6380/1"},
        "existingSecret": {"redis.existingSecret": "rp2"},
        "username": {"redis.username": "rl2"},
        "caSecret": {"redis.tls": {**base["redis.tls"], "caSecret": "ca2"}},  # type: ignore[dict-item]
        "clientCertSecret": {"redis.tls": {**base["redis.tls"], "clientCertSecret": "client2"}},  # type: ignore[dict-item]
        "sentinel.hosts": {"redis.sentinel": {"hosts": ["s-0:26379", "s-1:26379"], "masterName": "mymaster"}},
        "sentinel.masterName": {"redis.sentinel": {"hosts": ["s-0:26379"], "masterName": "other"}},
    }
    first = _checksum(base)
    assert first == _checksum(dict(base))
    for what, change in changes.items():
        assert _checksum({**base, **change}) != first, f"changing {what} does not restart the gateway"


REFUSED = {
    "sentinel-with-bundled-redis": (
        {"redis.sentinel": {"hosts": ["s-0:26379"], "masterName": "mymaster"}},
        "redis.sentinel.hosts is set, but redis.enabled=true",
    ),
    "tls-with-bundled-redis": ({"redis.tls.enabled": True}, "the bundled Redis (redis.enabled=true) serves no TLS"),
    "username-with-bundled-redis": ({"redis.username": "rl"}, "redis.username is set, but the bundled Redis"),
    "ca-without-tls": (
        {**EXTERNAL, "redis.url": "redis://r.example:6379/0", "redis.tls.caSecret": "ca"},
        "redis.tls.caSecret is set, but redis.tls.enabled=false",
    ),
    "client-cert-without-tls": (
        {**EXTERNAL, "redis.url": "redis://r.example:6379/0", "redis.tls.clientCertSecret": "c"},
        "redis.tls.clientCertSecret is set, but redis.tls.enabled=false",
    ),
    "tls-with-a-plain-url": (
        {**EXTERNAL, "redis.url": "redis://r.example:6379/0", "redis.tls.enabled": True},
        "write it rediss://HOST:PORT/DB",
    ),
    "rediss-url-without-tls": (
        {**EXTERNAL, "redis.url": "rediss://r.example:6379/0"},
        "redis.url is a rediss:// (TLS) URL, but redis.tls.enabled=false",
    ),
    "password-reference-without-a-secret": (
        {**EXTERNAL, "redis.url": "redis://rl:$(REDIS_PASSWORD)@r.example:6379/0"},
        "redis.url refers to $(REDIS_PASSWORD), but redis.existingSecret is empty",
    ),
    "sentinel-without-master": (
        {**EXTERNAL, "redis.sentinel.hosts": ["s-0:26379"]},
        "redis.sentinel.hosts needs redis.sentinel.masterName",
    ),
    "master-without-sentinels": (
        {**EXTERNAL, "redis.url": "redis://r.example:6379/0", "redis.sentinel.masterName": "mymaster"},
        "redis.sentinel.masterName needs redis.sentinel.hosts",
    ),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_inconsistent_combinations_are_refused_with_what_to_change(name: str) -> None:
    values, message = REFUSED[name]
    result = helm(*template_args(values), check=False)
    assert result.returncode != 0
    assert "execution error at" in result.stderr and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"redis.sentinel.hosts": ["s-0"]}, "/redis/sentinel/hosts/0"),
        ({"redis.sentinel.hosts": ["s-0:65536"]}, "/redis/sentinel/hosts/0"),
        ({"redis.sentinel.hosts": ["s-0:26379", "s-0:26379"]}, "/redis/sentinel/hosts"),
        ({"redis.sentinel.masterName": "my master"}, "/redis/sentinel/masterName"),
        ({"redis.username": "$(X)"}, "/redis/username"),
        ({"redis.tls.caSecret": "Not_A_Name"}, "/redis/tls/caSecret"),
        ({"redis.tls.verify": False}, "/redis/tls"),
        ({"redis.url": "rediss://r.example:6379/0?ssl_cert_reqs=none"}, "/redis/url"),
    ],
    ids=["no-port", "port-range", "duplicate", "master-space", "username-reference", "ca-name", "unknown", "query"],
)
def test_the_schema_refuses_malformed_redis_values(values: dict[str, Any], path: str) -> None:
    result = helm(*template_args(values), check=False)
    assert result.returncode != 0
    assert f"at '{path}'" in result.stderr, result.stderr


def test_sentinel_needs_no_url() -> None:
    """The schema's rule "an external Redis needs redis.url" makes room for Sentinel."""
    values = {**EXTERNAL, "redis.sentinel": {"hosts": ["s-0:26379"], "masterName": "mymaster"}}
    result = helm(*template_args(values), check=False)
    assert result.returncode == 0, result.stderr
    no_redis = helm(*template_args(EXTERNAL), check=False)
    assert no_redis.returncode != 0 and "/redis/url" in no_redis.stderr


def test_notes_say_how_the_gateway_reaches_redis() -> None:
    values = {
        **EXTERNAL,
        "redis.existingSecret": "rp",
        "redis.username": "rl",
        "redis.tls.enabled": True,
        "redis.sentinel": {"hosts": ["s-0:26379", "s-1:26379"], "masterName": "mymaster"},
    }
    args = ["install", "rayleigh", str(CHART), "--dry-run=client", "--namespace", NAMESPACE]
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("Redis:"))
    assert line.split(None, 1)[1] == (
        "external, master mymaster via Sentinel s-0:26379,s-1:26379, TLS, user rl, password in Secret rp"
    )
