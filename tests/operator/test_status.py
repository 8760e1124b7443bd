"""Pure status computation: phases, conditions, reasons, transitions (no I/O)."""

from __future__ import annotations

from dataclasses import replace

import rayleigh_api as api
from rayleigh_api import Reason
from rayleigh_operator import status as s

BASE = s.Observed(
    generation=3,
    desired_replicas=2,
    selector="app.kubernetes.io/component=workers,serving.rayleigh.dev/model-deployment=m",
    served_models=["m", "m-lora"],
    endpoint="http://gw/v1",
)
NOW = "2026-11-23T12:00:00Z"


def cond(st: dict, ctype: str) -> dict:  # type: ignore[type-arg]
    return next(c for c in st["conditions"] if c["type"] == ctype)


def test_head_not_ready_is_pending_with_reason() -> None:
    st = s.compute_status(BASE, None, NOW)
    assert st["phase"] == "Pending"
    assert cond(st, "Ready")["reason"] == Reason.RAY_HEAD_NOT_READY
    assert cond(st, "Progressing")["status"] == "True"
    assert st["endpoint"] is None


def test_serve_deploying_is_model_loading() -> None:
    obs = replace(BASE, head_ready=True, workers_ready=2, workers_replicas=2, serve_status="DEPLOYING")
    st = s.compute_status(obs, None, NOW)
    assert (st["phase"], cond(st, "Ready")["reason"]) == ("Deploying", Reason.MODEL_LOADING)


def test_running_with_all_replicas_is_ready_with_endpoint() -> None:
    obs = replace(
        BASE, head_ready=True, workers_ready=2, workers_replicas=2, serve_status="RUNNING", serve_running_replicas=2
    )
    st = s.compute_status(obs, None, NOW)
    assert st["phase"] == "Ready" and st["readyReplicas"] == 2 and st["endpoint"] == "http://gw/v1"
    assert cond(st, "Progressing")["status"] == "False"
    assert st["observedGeneration"] == 3 and cond(st, "Ready")["observedGeneration"] == 3
    assert st["servedModels"] == ["m", "m-lora"]


def test_ready_replicas_counts_only_pods_that_are_ready_and_serving() -> None:
    obs = replace(
        BASE, head_ready=True, workers_ready=1, workers_replicas=2, serve_status="RUNNING", serve_running_replicas=2
    )
    assert s.compute_status(obs, None, NOW)["readyReplicas"] == 1


def test_scaling_up_stays_ready_and_progressing() -> None:
    obs = replace(
        BASE,
        desired_replicas=3,
        head_ready=True,
        workers_ready=2,
        workers_replicas=3,
        serve_status="RUNNING",
        serve_running_replicas=2,
    )
    st = s.compute_status(obs, None, NOW)
    assert (st["phase"], cond(st, "Progressing")["reason"]) == ("Ready", Reason.SCALING)


def test_lost_replica_without_scaling_is_degraded() -> None:
    obs = replace(
        BASE, head_ready=True, workers_ready=1, workers_replicas=2, serve_status="RUNNING", serve_running_replicas=2
    )
    st = s.compute_status(obs, None, NOW)
    assert (st["phase"], cond(st, "Degraded")["reason"]) == ("Degraded", Reason.REPLICAS_UNAVAILABLE)


def test_deploy_failed_before_serving_is_failed() -> None:
    obs = replace(BASE, head_ready=True, workers_ready=2, serve_status="DEPLOY_FAILED", serve_message="boom")
    st = s.compute_status(obs, None, NOW)
    assert st["phase"] == "Failed"
    assert cond(st, "Ready")["reason"] == Reason.SERVE_DEPLOY_FAILED and "boom" in cond(st, "Ready")["message"]


def test_deploy_failed_while_old_replicas_serve_is_degraded() -> None:
    obs = replace(BASE, head_ready=True, workers_ready=2, serve_status="DEPLOY_FAILED", serve_running_replicas=1)
    assert s.compute_status(obs, None, NOW)["phase"] == "Degraded"


def test_push_error_is_serve_deploy_failed() -> None:
    obs = replace(BASE, head_ready=True, serve_status="MISSING", serve_push_error="route prefix / taken")
    st = s.compute_status(obs, None, NOW)
    assert st["phase"] == "Failed" and "route prefix" in cond(st, "Degraded")["message"]


def test_spec_problem_is_failed_with_its_reason() -> None:
    obs = replace(BASE, spec_problem=(Reason.INSUFFICIENT_GPU, "no node offers 8 GPUs"))
    st = s.compute_status(obs, None, NOW)
    assert (st["phase"], cond(st, "Ready")["reason"]) == ("Failed", Reason.INSUFFICIENT_GPU)


def test_head_lost_after_serving_is_degraded() -> None:
    st = s.compute_status(BASE, {"phase": "Ready"}, NOW)
    assert (st["phase"], cond(st, "Degraded")["status"]) == ("Degraded", "True")


def test_metric_missing_condition_only_with_autoscaling() -> None:
    assert "AutoscalingMetricMissing" not in [c["type"] for c in s.compute_status(BASE, None, NOW)["conditions"]]
    obs = replace(BASE, autoscaling=True, metric_missing=("MetricNotFound", "no pods/x"))
    assert cond(s.compute_status(obs, None, NOW), "AutoscalingMetricMissing")["status"] == "True"


def test_transition_time_kept_while_status_unchanged() -> None:
    first = s.compute_status(BASE, None, NOW)
    again = s.compute_status(BASE, first, "2026-11-23T13:00:00Z")
    assert cond(again, "Ready")["lastTransitionTime"] == NOW
    assert not s.status_differs(first, again)


def test_phase_change_is_one_event_and_warning_for_failures() -> None:
    first = s.compute_status(BASE, None, NOW)
    (t,) = s.transitions(None, first)
    assert (t.type, t.reason) == ("Normal", Reason.RAY_HEAD_NOT_READY)
    failed = s.compute_status(replace(BASE, spec_problem=(Reason.INVALID_SPEC, "bad")), first, NOW)
    (t,) = s.transitions(first, failed)
    assert (t.type, t.reason) == ("Warning", Reason.INVALID_SPEC)


def test_no_event_without_a_change() -> None:
    first = s.compute_status(BASE, None, NOW)
    assert s.transitions(first, s.compute_status(BASE, first, NOW)) == []


def test_status_is_the_typed_api_status_and_a_lost_endpoint_is_cleared() -> None:
    serving = replace(
        BASE, head_ready=True, workers_ready=2, workers_replicas=2, serve_status="RUNNING", serve_running_replicas=2
    )
    ready = s.compute_status(serving, None, NOW)
    typed = api.ModelDeploymentStatus.model_validate(ready)
    assert typed.phase == api.Phase.READY and typed.ready_replicas == 2
    assert [c.type for c in typed.conditions] == [
        api.ConditionType.READY,
        api.ConditionType.PROGRESSING,
        api.ConditionType.DEGRADED,
    ]
    # Written as a merge patch: the endpoint goes away only when sent as null.
    lost = s.compute_status(BASE, ready, NOW)
    assert "endpoint" in lost and lost["endpoint"] is None


def test_spec_problems_are_the_failed_reasons() -> None:
    for reason in api.FAILED_REASONS:
        assert s.compute_status(replace(BASE, spec_problem=(reason, "x")), None, NOW)["phase"] == api.Phase.FAILED


def test_phase_gauges_count_each_object_once_and_drop_it_when_deleted() -> None:
    from prometheus_client import REGISTRY

    from rayleigh_operator.status_writer import StatusWriter

    def per_object(ns: str, name: str, phase: str) -> float | None:
        labels = {"model_namespace": ns, "model_deployment": name, "phase": phase}
        return REGISTRY.get_sample_value("rayleigh_operator_model_deployment_phase", labels)

    def count(phase: str) -> float | None:
        return REGISTRY.get_sample_value("rayleigh_operator_model_deployments", {"phase": phase})

    writer = StatusWriter(kube=None, config=None, on_gone=lambda ns, name: None)  # type: ignore[arg-type]
    before = count("Ready") or 0.0
    writer.count_phase(("gauge-ns", "a"), "Deploying")
    writer.count_phase(("gauge-ns", "a"), "Ready")
    writer.count_phase(("gauge-ns", "a"), "Ready")  # an unchanged status (e.g. after a restart)
    writer.count_phase(("gauge-ns", "b"), "Ready")
    assert per_object("gauge-ns", "a", "Deploying") is None  # the previous phase's series is gone
    assert per_object("gauge-ns", "a", "Ready") == 1.0 and per_object("gauge-ns", "b", "Ready") == 1.0
    assert count("Ready") == before + 2
    writer.count_phase(("gauge-ns", "a"), None)  # deleted
    assert per_object("gauge-ns", "a", "Ready") is None and count("Ready") == before + 1
