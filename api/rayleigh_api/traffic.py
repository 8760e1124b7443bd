"""Traffic splits across documents: what `rayleigh validate` can say about several ModelDeployments
that share a served model name before they reach a cluster.

The operator decides who is in a split (rayleigh_operator.route_plan: one namespace, the same
names, adapters included, and every member sets spec.traffic; otherwise the oldest keeps the name).
Offline there is no creation time, so these are warnings: they name what keeps the documents from
forming one split, not who would win.
"""

from __future__ import annotations

import datetime
import math

from rayleigh_api.resource import ModelDeployment


def age_order(created: datetime.datetime | str | None, namespace: str, name: str) -> tuple[float, str, str]:
    """Who is older when several objects claim one model name: by creation time (missing or
    unreadable: the newest), ties by namespace/name. The gateway (`served_routes`) and the operator
    (`route_plan`) both sort by this key, so they drop the same claims."""
    stamp = created
    if isinstance(stamp, str):
        try:
            stamp = datetime.datetime.fromisoformat(stamp)
        except ValueError:
            stamp = None
    if stamp is None:
        return math.inf, namespace, name
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp(), namespace, name


def _who(md: ModelDeployment) -> str:
    return f"{md.namespace}/{md.name}"


def split_warnings(mds: list[ModelDeployment]) -> list[str]:
    """One line per model name that several documents serve where at least one sets spec.traffic
    and they do not form one valid split, or where every member's weight is 0."""
    by_name: dict[str, list[ModelDeployment]] = {}
    for md in mds:
        for name in md.served_models():
            by_name.setdefault(name, []).append(md)
    out: list[str] = []
    for name, group in by_name.items():
        with_traffic = [md for md in group if md.spec.traffic is not None]
        if not with_traffic:
            continue  # no split asked: the oldest keeps the name (a Conflict in the cluster)
        who = ", ".join(_who(md) for md in group)
        if len(group) > 1 and len(with_traffic) != len(group):
            missing = ", ".join(_who(md) for md in group if md.spec.traffic is None)
            out.append(
                f"model {name!r} ({who}): spec.traffic is missing on {missing}; every member of a split must set "
                "it, else the oldest keeps the name and the others get Conflict"
            )
        elif len({md.namespace for md in group}) > 1:
            out.append(f"model {name!r} ({who}): the members of a split must be in one namespace")
        elif len({frozenset(md.served_models()) for md in group}) > 1:
            out.append(
                f"model {name!r} ({who}): the members of a split must serve the same model names, adapters "
                "included; " + "; ".join(f"{_who(md)} serves {md.served_models()}" for md in group)
            )
        elif all(md.spec.traffic is not None and md.spec.traffic.weight == 0 for md in group):
            out.append(f"model {name!r} ({who}): every weight is 0, so the gateway answers 503 for it")
    return list(dict.fromkeys(out))
