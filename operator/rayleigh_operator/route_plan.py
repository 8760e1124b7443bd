"""Who gets a gateway route: route conflicts (the oldest ModelDeployment keeps a model name) and
traffic splits (ModelDeployments in one namespace that serve the same names and all set
spec.traffic share one weighted route). Pure; `state.Tracked` keeps the claims and the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import rayleigh_api as api
from rayleigh_api.traffic import age_order


def traffic_of(md: api.ModelDeployment) -> tuple[int, bool] | None:
    """spec.traffic as (weight, sticky), None when unset."""
    t = md.spec.traffic
    return None if t is None else (t.weight, t.sticky)


@dataclass(frozen=True)
class Conflict:
    """`model` is already served by the older ModelDeployment `owner` (namespace, name)."""

    model: str
    owner: tuple[str, str]
    owner_created: str | None = None
    # Why the two do not form a traffic split, when at least one of them sets spec.traffic.
    not_a_split: str = ""

    def message(self) -> str:
        since = f", created {self.owner_created}" if self.owner_created else ""
        split = f"; not a traffic split: {self.not_a_split}" if self.not_a_split else ""
        return (
            f"model name {self.model!r} is already served by ModelDeployment {self.owner[0]}/{self.owner[1]} "
            f"(older{since}): this one gets no gateway route until that one stops serving the name "
            f"(the oldest ModelDeployment serving a name keeps it){split}"
        )


@dataclass(frozen=True)
class Claim:
    """The model names one ModelDeployment's route serves, when the object was created, and its
    spec.traffic (weight, sticky) if it sets one."""

    key: tuple[str, str]
    created: str | None
    models: tuple[str, ...]
    traffic: tuple[int, bool] | None = None


@dataclass(frozen=True)
class Share:
    """One member's part in a traffic split: ModelDeployments in one namespace that serve the same
    model names and all set spec.traffic get one gateway route, named after the oldest (`route`),
    whose backends are the members (`members`, oldest first, with their `weights`)."""

    route: tuple[str, str]
    members: tuple[tuple[str, str], ...]
    weights: tuple[int, ...]
    sticky: bool
    weight: int  # this member's

    @property
    def percent(self) -> float:
        """This member's share of the split's requests, in percent (0 when every weight is 0)."""
        total = sum(self.weights)
        return round(100.0 * self.weight / total, 2) if total else 0.0

    def status(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "share": self.percent,
            "members": len(self.members),
            "route": f"{self.route[0]}/{self.route[1]}",
        }


def _age(claim: Claim) -> tuple[float, str, str]:
    """Oldest first: the gateway's own order (rayleigh_gateway.routes.served_routes uses the same
    key), so both drop the same routes."""
    return age_order(claim.created, claim.key[0], claim.key[1])


def _not_a_split(claim: Claim, owner: Claim) -> str:
    """Why `claim` cannot join `owner`'s traffic split ("" when it can, or when neither asks)."""
    if claim.traffic is None and owner.traffic is None:
        return ""
    if claim.traffic is None:
        return f"{owner.key[0]}/{owner.key[1]} sets spec.traffic and this one does not (every member must)"
    if owner.traffic is None:
        return f"this one sets spec.traffic and {owner.key[0]}/{owner.key[1]} does not (every member must)"
    if claim.key[0] != owner.key[0]:
        return f"the members of a split must be in one namespace ({owner.key[0]}, not {claim.key[0]})"
    if set(claim.models) != set(owner.models):
        return (
            f"the members of a split must serve the same model names, adapters included "
            f"({sorted(owner.models)}, not {sorted(claim.models)})"
        )
    return ""


def route_plan(
    claims: Iterable[Claim],
) -> tuple[dict[tuple[str, str], Conflict], dict[tuple[str, str], Share]]:
    """Which ModelDeployments get no route (conflicts), and which take part in a traffic split.

    Oldest wins (creationTimestamp, ties by namespace/name); a ModelDeployment left without a route
    claims nothing, so a younger one may still serve its other names, exactly as the gateway drops
    conflicting routes on its own (`rayleigh_gateway.routes.served_routes`). The one exception is a
    traffic split: a younger object that sets spec.traffic, in the namespace of an older one that
    also sets it and serves the very same names (base and adapters), joins its split instead.
    Every object that sets spec.traffic and gets a route has a Share, even alone in its split."""
    owner: dict[str, Claim] = {}
    out: dict[tuple[str, str], Conflict] = {}
    groups: dict[tuple[str, str], list[Claim]] = {}
    for claim in sorted(claims, key=_age):
        taken = next((m for m in claim.models if m in owner), None)
        if taken is not None:
            winner = owner[taken]
            why = _not_a_split(claim, winner)
            if claim.traffic is not None and winner.traffic is not None and not why:
                groups[winner.key].append(claim)
                continue
            out[claim.key] = Conflict(taken, winner.key, winner.created, why)
            continue
        for model in claim.models:
            owner[model] = claim
        if claim.traffic is not None:
            groups[claim.key] = [claim]
    shares: dict[tuple[str, str], Share] = {}
    for leader, members in groups.items():
        keys = tuple(c.key for c in members)
        weights = tuple(c.traffic[0] if c.traffic else 0 for c in members)
        sticky = any(c.traffic is not None and c.traffic[1] for c in members)
        for member, weight in zip(members, weights, strict=True):
            shares[member.key] = Share(leader, keys, weights, sticky, weight)
    return out, shares


def route_conflicts(claims: Iterable[Claim]) -> dict[tuple[str, str], Conflict]:
    """The ModelDeployments that get no route (`route_plan`'s conflicts)."""
    return route_plan(claims)[0]
