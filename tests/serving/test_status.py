"""Serve application status -> ModelDeployment phase and a one-line message (pure)."""

from __future__ import annotations

from rayleigh_serving.status import short_error, summarize

# A DEPLOY_FAILED message in the shape the dashboard returns (Ray 2.60: Serve's traceback around the
# replica's own), with an illustrative vLLM error as the last exception.
FAILED = """Deploying app 'tiny' failed with exception:
Traceback (most recent call last):
  File ".../ray/serve/_private/application_state.py", line 926, in _reconcile_build_app_task
ray.exceptions.RayTaskError(RuntimeError): \x1b[36mray::build_serve_application()\x1b[39m (pid=6743)
RuntimeError: Traceback (most recent call last):
  File ".../vllm/config/model.py", line 512, in __post_init__
pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig
ValueError: max_model_len 999999 exceeds the model's max_position_embeddings 4096
"""


def test_short_error_is_the_last_exception_line() -> None:
    assert short_error(FAILED) == "ValueError: max_model_len 999999 exceeds the model's max_position_embeddings 4096"


def test_deploy_failed_is_failed_phase_with_engine_message() -> None:
    s = summarize({"status": "DEPLOY_FAILED", "message": FAILED, "deployments": {}})
    assert (s.phase, s.reason) == ("Failed", "EngineFailed")
    assert "max_model_len" in s.message and "Traceback" not in s.message


def test_running_counts_ready_replicas() -> None:
    app = {
        "status": "RUNNING",
        "deployments": {"LLMServer": {"replicas": [{"state": "RUNNING"}, {"state": "STARTING"}]}},
    }
    s = summarize(app)
    assert (s.phase, s.ready_replicas, s.replicas) == ("Ready", 1, 2)


def test_deploying_is_loading() -> None:
    assert summarize({"status": "DEPLOYING", "deployments": {}}).reason == "Loading"


def test_missing_app_is_pending() -> None:
    assert summarize(None).phase == "Pending"
