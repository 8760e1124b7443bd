"""The replica's request metrics label a request by its route within the application, whatever
route prefix the application is on (a rollout's second slot serves under `/b`)."""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")

from rayleigh_serving.middleware import route_label


@pytest.mark.parametrize(
    ("root_path", "path", "label"),
    [
        ("", "/v1/chat/completions", "/v1/chat/completions"),
        ("/roll-op", "/roll-op/v1/chat/completions", "/v1/chat/completions"),
        ("/roll-op/b", "/roll-op/b/v1/completions", "/v1/completions"),
        ("/roll-op/", "/roll-op/health", "/health"),
        ("/roll-op", "/roll-op/admin", "other"),
        ("/roll-op", "/roll-opv1/chat/completions", "other"),
    ],
)
def test_the_route_label_is_the_path_within_the_application(root_path: str, path: str, label: str) -> None:
    assert route_label({"type": "http", "root_path": root_path, "path": path}) == label
