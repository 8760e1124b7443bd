"""Regenerate the chart files derived from code, or check them (`--check`).

    python charts/sync.py           # files/operator-rules.yaml and files/dashboards/*.json
    python charts/sync.py --check   # exit 1 when a checked-in file is out of date

- files/operator-rules.yaml: the operator's ClusterRole rules from rayleigh_operator.rbac.PERMISSIONS
  (the single source behind manifests/rbac/operator.yaml and the operator's own request checks);
- files/dashboards/*.json and dashboards/*.json: dashboards/build.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RULES_FILE = ROOT / "charts" / "rayleigh" / "files" / "operator-rules.yaml"
HEADER = (
    "# The operator's ClusterRole rules, generated from rayleigh_operator.rbac.PERMISSIONS by\n"
    "# `python charts/sync.py` (do not edit by hand); templates/operator-rbac.yaml includes them.\n"
)


def operator_rules_text() -> str:
    from rayleigh_operator.rbac import cluster_role

    return HEADER + yaml.safe_dump(cluster_role()["rules"], sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("rayleigh_dashboards_build", ROOT / "dashboards" / "build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    rc: int = build.main(["--check"] if args.check else [])
    text = operator_rules_text()
    current = RULES_FILE.read_text() if RULES_FILE.exists() else None
    if current != text:
        if args.check:
            print(f"out of date (run `python charts/sync.py`): {RULES_FILE.relative_to(ROOT)}", file=sys.stderr)
            rc = 1
        else:
            RULES_FILE.write_text(text)
            print(f"wrote {RULES_FILE.relative_to(ROOT)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
