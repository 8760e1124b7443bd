"""Regenerate the chart files derived from code, or check them (`--check`).

    python charts/sync.py           # files/operator-rules.yaml and files/dashboards/*.json
    python charts/sync.py --check   # exit 1 when a checked-in file is out of date

- files/operator-rules.yaml: the operator's RBAC rules from rayleigh_operator.rbac.TABLE (the single
  source behind manifests/rbac/operator.yaml and the operator's own request checks): the ClusterRole
  when watching every namespace, the small ClusterRole and the per-namespace Role when watching some,
  the verbs on the routes ConfigMap, and the pod patch ValidatingAdmissionPolicy's rules;
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
    "# The operator's RBAC rules, generated from rayleigh_operator.rbac.TABLE by `python charts/sync.py`\n"
    "# (do not edit by hand); templates/operator-rbac.yaml renders them.\n"
)


def operator_rules_text() -> str:
    from rayleigh_operator import rbac

    sections = [
        ("The ClusterRole when the operator watches every namespace.", {"all": rbac.all_rules()}),
        (
            "When it watches some (operator.watchNamespaces): the ClusterRole, cluster-scoped resources only,",
            {"cluster": rbac.cluster_rules()},
        ),
        ("and the Role in each watched namespace.", {"namespaced": rbac.namespaced_rules()}),
        (
            "Verbs on the gateway routes ConfigMap (by name) in the gateway's namespace when it is not watched.",
            {"routesVerbs": list(rbac.ROUTES_VERBS)},
        ),
        (
            "The ValidatingAdmissionPolicy that limits the operator's pod patches to the deletion-cost annotation.",
            {"podPatchPolicy": {"matchConstraints": rbac.POD_PATCH_MATCH, "validations": rbac.POD_PATCH_VALIDATIONS}},
        ),
    ]
    return HEADER + "".join(
        f"# {comment}\n" + yaml.safe_dump(doc, sort_keys=False, width=1000) for comment, doc in sections
    )


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
