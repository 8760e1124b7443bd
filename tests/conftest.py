"""Root conftest: shared session fixtures live in tests/plugins/, one module per component.

Each plugin module owns its fixtures (real servers started once per session); listing them here
lets tests in any folder use them, e.g. gateway end-to-end tests reuse the serving stack.
"""

import importlib.util

pytest_plugins = [
    name
    for name in (
        "tests.plugins.common",
        "tests.plugins.redis_server",
        "tests.plugins.serving_stack",
        "tests.plugins.adapter_stores",
        "tests.plugins.kube",
    )
    if importlib.util.find_spec(name) is not None
]
