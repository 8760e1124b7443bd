"""Ray pod requests come from the spec: spec.resources for each worker, spec.resources.head for the head."""

from __future__ import annotations

from typing import Any

from rayleigh_api import crd
from rayleigh_api.validation import apply_defaults, validate_document
from rayleigh_operator import render as r
from rayleigh_operator.render.options import RenderOptions


def model(resources: dict[str, Any]) -> Any:
    doc = {
        "apiVersion": "serving.rayleigh.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"model": {"source": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, "resources": resources, "replicas": 3},
    }
    return validate_document(doc)


def container(objs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    deployment = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith(suffix))
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def test_head_defaults_keep_production_requests_and_the_crd_defaults_agree() -> None:
    head = container(r.render(model({"gpus": 1}), options=RenderOptions()), "-head")
    assert head["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    defaulted = apply_defaults(crd.openapi_schema(), {"spec": {"model": {"source": "hf://a/b"}}})
    assert defaulted["spec"]["resources"]["head"] == {"cpu": "2", "memory": "8Gi"}


def test_head_and_workers_take_their_requests_from_the_spec() -> None:
    objs = r.render(
        model({"gpus": 0, "cpu": "500m", "memory": "3Gi", "head": {"cpu": "250m", "memory": "3Gi"}}),
        options=RenderOptions(),
    )
    head, worker = container(objs, "-head"), container(objs, "-workers")
    assert head["resources"] == {"requests": {"cpu": "250m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    assert worker["resources"] == {"requests": {"cpu": "500m", "memory": "3Gi"}, "limits": {"memory": "3Gi"}}
    # Ray advertises the worker's CPU request rounded up, and none on the head: no replica runs there.
    assert "--num-cpus=1 " in worker["command"][-1]
    assert "--num-gpus=0 --num-cpus=0 " in head["command"][-1]


def test_a_head_resource_change_leaves_the_worker_template_alone() -> None:
    """The head's size is not part of the workers' pod template: resizing it does not roll the workers."""
    small = r.render(model({"gpus": 1, "head": {"cpu": "1", "memory": "4Gi"}}), options=RenderOptions())
    large = r.render(model({"gpus": 1, "head": {"cpu": "4", "memory": "16Gi"}}), options=RenderOptions())
    workers = [next(o for o in objs if o["metadata"]["name"] == "m-workers") for objs in (small, large)]
    assert workers[0] == workers[1]


def test_gpu_models_get_the_cuda_image_cpu_models_the_cpu_image_and_spec_image_wins() -> None:
    options = RenderOptions(image="cpu:1", gpu_image="cuda:1")

    def images(resources: dict[str, Any], image: str | None = None) -> set[str]:
        md = model(resources)
        if image:
            md.spec.image.name = image
        return {
            c["image"]
            for o in r.render(md, options=options)
            if o["kind"] == "Deployment"
            for c in o["spec"]["template"]["spec"]["containers"]
        }

    assert images({"gpus": 1}) == {"cuda:1"}
    assert images({"gpus": 0, "cpu": "2", "memory": "4Gi"}) == {"cpu:1"}
    assert images({"gpus": 1}, image="mine:2") == {"mine:2"}
