"""Adapters added and removed on running replicas, under load: real Ray + vLLM (CPU) + the tiny model.

One module fixture: a private Ray head serving the tiny model with two file:// adapters, `keep`
and `old`. The test then edits the spec's YAML file and lets `rayleigh up`'s reloader push it
(SpecReloader: build_serve_config -> PUT /api/serve/applications/, the operator's push too): `old` leaves, `hub` comes from hf://
(a pre-filled Hugging Face cache, HF_HUB_OFFLINE=1: no network here) and `bucket` from s3:// (a
local moto server: a FAKE of S3, which cannot run on these machines; credentials come from a
mounted-Secret folder). Clients stream to the base model and to `keep` the whole time.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.plugins.adapter_stores import S3_ACCESS_KEY, S3_SECRET_KEY, MotoS3, make_hf_cache, write_secret
from tests.plugins.common import EXAMPLES_DIR, REPO_ROOT
from tests.plugins.serving_stack import TINY_LORA_DIR

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

APP = "hot-adapters"
HF_REPO = "rayleigh-test/tiny-lora"


@dataclass
class HotStack:
    ray: Any
    reloader: Any
    spec_file: Path
    md_doc: dict[str, Any]
    endpoint: str
    base_url: str
    model: str


@pytest.fixture(scope="module")
def hot_stack(tiny_model_dir: Path, moto_s3: MotoS3) -> Iterator[HotStack]:
    from rayleigh_api.loading import load_model_deployment
    from rayleigh_serving.local import LocalRay, wait_for_answer
    from rayleigh_serving.spec_reload import SpecReloader

    work = Path(tempfile.mkdtemp(prefix="rayleigh-hot-adapters-"))
    make_hf_cache(work / "hf", HF_REPO, TINY_LORA_DIR)
    moto_s3.upload_dir("adapters", "tiny/lora", TINY_LORA_DIR)
    write_secret(
        work / "secrets", "s3-creds", {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    )
    md = load_model_deployment(EXAMPLES_DIR / "tiny.yaml")
    doc = md.model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["adapters"] = [
        {"name": "keep", "source": f"file://{TINY_LORA_DIR}"},
        {"name": "old", "source": f"file://{TINY_LORA_DIR}"},
    ]
    ray = LocalRay(
        num_cpus=4,
        log=work / "ray.log",
        env={
            "HF_HUB_OFFLINE": "1",
            "HF_HOME": str(work / "hf"),
            "RAYLEIGH_ADAPTER_SECRETS_DIR": str(work / "secrets"),
            "RAYLEIGH_ADAPTER_CACHE": str(work / "adapter-cache"),
            "RAY_metrics_report_interval_ms": "1000",
        },
    )
    spec_file = work / "md.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    reloader = SpecReloader(spec_file, deploy=ray.deploy, build=build)
    stack = HotStack(ray, reloader, spec_file, doc, moto_s3.endpoint, "", md.served_model_name())
    try:
        ray.start()
        stack.base_url = ray.base_url
        ray.deploy(serve_config(doc))
        ray.wait_running(APP, timeout=480)
        wait_for_answer(ray.base_url, stack.model, timeout=120)
        yield stack
    finally:
        ray.stop()


def build(md: Any) -> dict[str, Any]:
    from rayleigh_serving.config import build_serve_config

    return build_serve_config(md, local_base=REPO_ROOT, app_name=APP)


def serve_config(doc: dict[str, Any]) -> dict[str, Any]:
    from rayleigh_api import ModelDeployment

    return build(ModelDeployment.model_validate(doc))


def replicas(stack: HotStack) -> list[tuple[str, int]]:
    with urllib.request.urlopen(f"{stack.ray.dashboard_url}/api/serve/applications/", timeout=10) as r:
        details = json.loads(r.read())
    deployment = details["applications"][APP]["deployments"]["LLMServer"]
    return sorted((rep["replica_id"], rep["pid"]) for rep in deployment["replicas"])


def model_ids(stack: HotStack) -> set[str]:
    with urllib.request.urlopen(f"{stack.base_url}/v1/models", timeout=10) as r:
        return {m["id"] for m in json.loads(r.read())["data"]}


def chat(stack: HotStack, model: str, *, stream: bool = False) -> tuple[int, bytes]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream}
    req = urllib.request.Request(
        f"{stack.base_url}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@dataclass
class Load:
    """Clients streaming chats back to back to each model until stopped."""

    stack: HotStack
    models: list[str]
    ok: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, model: str) -> None:
        deadline = time.monotonic() + 300  # bounded even if the test never stops it
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                code, body = chat(self.stack, model, stream=True)
            except OSError as e:
                self.failures.append(f"{model}: {e!r}")
                continue
            if code != 200 or not body.rstrip().endswith(b"data: [DONE]") or b'"error"' in body:
                self.failures.append(f"{model}: HTTP {code} {body[-300:]!r}")
            else:
                self.ok[model] = self.ok.get(model, 0) + 1

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self.run, args=(m,), daemon=True) for m in self.models]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)


def wait_until(what: str, check: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_adapters_hot_add_and_remove_under_load_without_restart(hot_stack: HotStack) -> None:
    stack = hot_stack
    assert model_ids(stack) == {stack.model, "keep", "old"}
    before = replicas(stack)
    doc = json.loads(json.dumps(stack.md_doc))
    doc["spec"]["adapters"] = [
        {"name": "keep", "source": f"file://{TINY_LORA_DIR}"},
        {"name": "hub", "source": f"hf://{HF_REPO}"},
        {
            "name": "bucket",
            "source": "s3://adapters/tiny/lora",
            "secretRef": "s3-creds",
            "s3": {"endpoint": stack.endpoint},
        },
    ]
    new_config = serve_config(doc)
    # The change is the deployment's user_config only; the application's args (engine) stay.
    assert new_config["applications"][0]["args"] == serve_config(stack.md_doc)["applications"][0]["args"]

    with Load(stack, [stack.model, "keep"]) as load:
        wait_until("requests flowing", lambda: sum(load.ok.values()) >= 4, timeout=120)
        stack.spec_file.write_text(yaml.safe_dump(doc))
        assert stack.reloader.poll() is True
        wait_until("the new adapter list", lambda: model_ids(stack) == {stack.model, "keep", "hub", "bucket"})
        served = sum(load.ok.values())
        wait_until("requests after the change", lambda: sum(load.ok.values()) >= served + 4, timeout=120)

    assert load.failures == []
    assert load.ok.get(stack.model, 0) > 0 and load.ok.get("keep", 0) > 0
    assert replicas(stack) == before, "a replica was restarted"
    for name in ("hub", "bucket"):
        code, body = chat(stack, name)
        assert code == 200, body
        assert json.loads(body)["model"] == name
    code, body = chat(stack, "old")
    assert code == 404, body
    error = json.loads(body)["error"]
    assert error["type"] == "NotFoundError" and "old" in error["message"]
    with urllib.request.urlopen(f"{stack.base_url}/rayleigh/adapters", timeout=10) as r:
        assert json.loads(r.read()) == {"model": stack.model, "loaded": ["bucket", "hub", "keep"], "failed": {}}


def test_adapter_gauge_counts_loaded_adapters(hot_stack: HotStack) -> None:
    pattern = re.compile(r'^ray_rayleigh_serving_adapters\{(?=[^}]*state="loaded")[^}]*\} (\S+)$', re.M)

    def loaded() -> float | None:
        with urllib.request.urlopen(hot_stack.ray.metrics_url, timeout=10) as r:
            values = pattern.findall(r.read().decode())
        return float(values[-1]) if values else None

    expected = len(model_ids(hot_stack)) - 1
    wait_until("the adapters gauge", lambda: loaded() == expected, timeout=60)


def test_serve_runs_the_pushed_config_so_the_operator_does_not_push_again(hot_stack: HotStack) -> None:
    """The operator pushes when Serve's deployed config does not hold the desired one (needs_push)."""
    from rayleigh_api.loading import load_model_deployment
    from rayleigh_operator import serve_client

    with urllib.request.urlopen(f"{hot_stack.ray.dashboard_url}/api/serve/applications/", timeout=10) as r:
        details = json.loads(r.read())
    desired = build(load_model_deployment(hot_stack.spec_file))
    state = serve_client.app_state(details, APP, "LLMServer")
    assert serve_client.needs_push(desired["applications"][0], state) is False
