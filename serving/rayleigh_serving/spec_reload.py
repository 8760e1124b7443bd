"""Local mode's spec reload: `rayleigh up` applies edits of its YAML file while it runs.

Every poll compares the file's modification time and content; on a change the ModelDeployment is
validated again and its Serve config PUT to the local Ray head, the same declarative push the
operator makes in a cluster. A change of the adapter list alone is a `user_config` change, which
Serve applies to the running replicas without restarting them (adapter_sources.py); other changes
(engine, model) restart them, as in a cluster. The local gateway's route file is rewritten too (it
re-reads it every second), so new model names are routed. An invalid edit is reported and ignored:
what runs keeps running.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayleigh_api.errors import FieldErrors


class SpecReloader:
    def __init__(
        self,
        path: Path,
        *,
        deploy: Callable[[dict[str, Any]], None],
        build: Callable[[Any], dict[str, Any]],
        on_model: Callable[[Any], None] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.path = path
        self.deploy = deploy  # LocalRay.deploy
        self.build = build  # ModelDeployment -> Serve config
        self.on_model = on_model  # e.g. rewrite the local gateway's route
        self.say = say
        self._seen = self._stamp()

    def _stamp(self) -> tuple[float, bytes] | None:
        try:
            return self.path.stat().st_mtime, self.path.read_bytes()
        except OSError:
            return None

    def poll(self) -> bool:
        """Apply the file if it changed since the last poll; True when a new config was pushed."""
        stamp = self._stamp()
        if stamp is None or self._seen is None or stamp[1] == self._seen[1]:
            if stamp is not None:
                self._seen = stamp
            return False
        self._seen = stamp
        import yaml

        from rayleigh_api.loading import load_model_deployment

        try:
            md = load_model_deployment(self.path)
            config = self.build(md)
        except (FieldErrors, yaml.YAMLError) as e:
            self.say(f"{self.path} changed but is not valid (still serving the previous spec):\n  {e}")
            return False
        try:
            self.deploy(config)
        except OSError as e:
            self.say(f"{self.path} changed but Ray refused the new config (still serving the previous spec): {e}")
            return False
        if self.on_model is not None:
            self.on_model(md)
        names = ", ".join(md.served_models())
        self.say(f"{self.path} changed: pushed the new config (models: {names}); adapters load without a restart")
        return True
