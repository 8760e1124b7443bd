"""Authentication and RBAC authorization for the emulated Kubernetes API (tests/kube_emulator.py).

The emulator answers a request that carries a service-account bearer token the way kube-apiserver
does, read from its source (kubernetes/kubernetes; each rule names the file and function it copies):

- Authentication. Tokens come from the TokenRequest API, as `kubectl create token` gets them
  (`POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`; pkg/registry/core/serviceaccount/
  storage/token.go `TokenREST.Create`). A token maps to the user `system:serviceaccount:NS:NAME` with
  the groups `system:serviceaccounts`, `system:serviceaccounts:NS` and `system:authenticated`
  (staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go `MakeUsername`,
  `MakeGroupNames`; .../authentication/group/authenticated_group_adder.go). It is valid while it has
  not expired and its ServiceAccount still exists with the same uid (pkg/serviceaccount/claims.go
  `validator.Validate`: a bound token dies with its ServiceAccount). Any other bearer token is
  answered 401 `Unauthorized` (staging/src/k8s.io/apiserver/pkg/endpoints/filters/
  authentication.go `WithAuthentication` -> `Unauthorized`). Requests without a token are the
  tests' own kubectl, an administrator: they stay allowed.
- Request attributes. The verb comes from the HTTP method as in staging/src/k8s.io/apiserver/pkg/
  endpoints/request/requestinfo.go `RequestInfoFactory.NewRequestInfo`: GET of one object -> get,
  GET of a collection -> list, `?watch=true|1` on a collection -> watch, POST -> create, PUT ->
  update, PATCH -> patch, DELETE of one -> delete, of a collection -> deletecollection; the
  subresource (`status`, `scale`, `token`...) is part of the resource (`pods/status`).
- A server-side apply that creates its object is ALSO authorized as `create` for that name
  (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/patch.go `PatchResource`:
  `createAuthorizerAttributes` with Verb "create", checked by update.go `withAuthorization` only when
  the object does not exist; other patch types never create). The emulator calls
  `authorize_create_on_apply` from its apply path.
- Authorization. RBAC, as plugin/pkg/auth/authorizer/rbac/rbac.go `RBACAuthorizer.Authorize` and
  `RuleAllows`: rules come from every ClusterRoleBinding and, for a namespaced request, every
  RoleBinding of that namespace whose subjects name the user, a group of it, or its ServiceAccount
  (a subject without a namespace means the binding's; pkg/registry/rbac/validation/rule.go
  `DefaultRuleResolver.VisitRulesFor`, `appliesToUser`); a RoleBinding may reference a Role of its
  namespace or a ClusterRole (`GetRoleReferenceRules`). A rule matches by verb (`*` allowed),
  apiGroup (`*`), resource (`*`, exact `resource/subresource`, or `*/subresource`) and, when it lists
  resourceNames, the request's name (pkg/apis/rbac/v1/evaluation_helpers.go `VerbMatches`,
  `APIGroupMatches`, `ResourceMatches`, `ResourceNameMatches`, `NonResourceURLMatches`). A missing
  Role/ClusterRole is a resolution error that becomes the denial's reason (`RBAC: clusterrole...
  not found`). The bootstrap roles every authenticated user has are built in:
  `system:discovery` (GET /api, /api/*, /apis, /apis/*, /version, /healthz, /livez, /readyz,
  /openapi, /openapi/*) and `system:basic-user` (create selfsubjectaccessreviews,
  selfsubjectrulesreviews, selfsubjectreviews) (plugin/pkg/auth/authorizer/rbac/bootstrappolicy/
  policy.go `ClusterRoles`, `ClusterRoleBindings`).
- Denials are 403 `Forbidden` Status objects with the API server's wording
  (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go `Forbidden`,
  `forbiddenMessage`; staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go `NewForbidden`):
  `deployments.apps "x" is forbidden: User "system:serviceaccount:ns:sa" cannot patch resource
  "deployments" in API group "apps" in the namespace "ns"`. The create-on-apply denial is built by
  update.go `withAuthorization` from the authorizer's reason only, which RBAC leaves empty unless a
  role could not be resolved: `deployments.apps "x" is forbidden: ` (sic), as on a real cluster.

Not modelled: aggregated ClusterRoles (`aggregationRule`), impersonation, RBAC escalation checks on
writes of roles and bindings (`escalate`/`bind`), Node and webhook authorizers, audiences.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_PLURALS = ("roles", "rolebindings", "clusterroles", "clusterrolebindings")

# plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go: bound to system:authenticated.
BOOTSTRAP_RULES: tuple[dict[str, Any], ...] = (
    {  # system:discovery (and system:public-info-viewer's subset)
        "verbs": ["get"],
        "nonResourceURLs": [
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
            "/healthz",
            "/livez",
            "/openapi",
            "/openapi/*",
            "/readyz",
            "/version",
            "/version/",
        ],
    },
    {  # system:basic-user
        "verbs": ["create"],
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
    },
    {"verbs": ["create"], "apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"]},
)


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...]
    uid: str = ""


@dataclass(frozen=True)
class Attributes:
    """authorizer.Attributes: what is asked, by whom."""

    user: UserInfo
    verb: str
    path: str
    resource_request: bool
    api_group: str = ""
    api_version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""


def service_account_user(namespace: str, name: str, uid: str = "") -> UserInfo:
    """serviceaccount.MakeUsername / MakeGroupNames, plus system:authenticated."""
    return UserInfo(
        name=f"system:serviceaccount:{namespace}:{name}",
        groups=("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
        uid=uid,
    )


def request_attributes(method: str, path: str, query: Mapping[str, str], user: UserInfo) -> Attributes:
    """RequestInfoFactory.NewRequestInfo for the core (`/api`) and named-group (`/apis`) prefixes."""
    method = method.upper()
    parts = [p for p in path.strip("/").split("/") if p]
    non_resource = Attributes(user=user, verb=method.lower(), path=path, resource_request=False)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    prefix, parts = parts[0], parts[1:]
    group = ""
    if prefix == "apis":
        if len(parts) < 3:
            return non_resource
        group, parts = parts[0], parts[1:]
    version, parts = parts[0], parts[1:]
    if parts[0] in ("watch", "proxy"):  # deprecated /watch/ paths and proxy
        verb, parts = parts[0], parts[1:]
    else:
        verb = {
            "POST": "create",
            "GET": "get",
            "HEAD": "get",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }.get(method, "")
    namespace = ""
    if parts and parts[0] == "namespaces" and len(parts) > 1:
        namespace = parts[1]
        if len(parts) > 2 and parts[2] not in ("status", "finalize"):
            parts = parts[2:]
    resource = parts[0] if parts else ""
    name = parts[1] if len(parts) > 1 else ""
    subresource = parts[2] if len(parts) > 2 and verb != "proxy" else ""
    if not name and verb == "get":
        watch = str(query.get("watch", "")).lower()
        verb = "watch" if "watch" in query and watch not in ("false", "0") else "list"
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(
        user=user,
        verb=verb,
        path=path,
        resource_request=True,
        api_group=group,
        api_version=version,
        namespace=namespace,
        resource=resource,
        subresource=subresource,
        name=name,
    )


def rule_allows(attrs: Attributes, rule: Mapping[str, Any]) -> bool:
    """rbac.go RuleAllows with the evaluation_helpers.go matchers."""
    verbs = rule.get("verbs") or []
    if "*" not in verbs and attrs.verb not in verbs:
        return False
    if not attrs.resource_request:
        for url in rule.get("nonResourceURLs") or []:
            if url == "*" or url == attrs.path or (url.endswith("*") and attrs.path.startswith(url.rstrip("*"))):
                return True
        return False
    groups = rule.get("apiGroups") or []
    if "*" not in groups and attrs.api_group not in groups:
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or []
    if not any(r == "*" or r == combined or (attrs.subresource and r == f"*/{attrs.subresource}") for r in resources):
        return False
    names = rule.get("resourceNames") or []
    return not names or attrs.name in names


def _applies_to(user: UserInfo, subject: Mapping[str, Any], namespace: str) -> bool:
    """rule.go appliesToUser."""
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return user.name == name
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        sa_namespace = subject.get("namespace") or namespace
        return bool(sa_namespace) and user.name == f"system:serviceaccount:{sa_namespace}:{name}"
    return False


class RBACAuthorizer:
    """RBAC over the emulator's own Role/ClusterRole/RoleBinding/ClusterRoleBinding objects.

    `objects(plural)` returns the stored objects of one rbac.authorization.k8s.io resource; the rules
    each user has are cached per namespace until an RBAC object changes (`invalidate`).
    """

    def __init__(self, objects: Callable[[str], Iterable[dict[str, Any]]]) -> None:
        self._objects = objects
        self._cache: dict[tuple[UserInfo, str], tuple[list[dict[str, Any]], list[str]]] = {}

    def invalidate(self) -> None:
        self._cache.clear()

    def _role_rules(self, ref: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
        kind, name = ref.get("kind"), ref.get("name")
        if kind == "Role":
            for role in self._objects("roles"):
                if role["metadata"]["name"] == name and role["metadata"].get("namespace") == namespace:
                    return list(role.get("rules") or [])
            raise LookupError(f'role.rbac.authorization.k8s.io "{name}" not found')
        if kind == "ClusterRole":
            for role in self._objects("clusterroles"):
                if role["metadata"]["name"] == name:
                    return list(role.get("rules") or [])
            raise LookupError(f'clusterrole.rbac.authorization.k8s.io "{name}" not found')
        raise LookupError(f'unsupported role reference kind: "{kind}"')

    def rules_for(self, user: UserInfo, namespace: str) -> tuple[list[dict[str, Any]], list[str]]:
        """DefaultRuleResolver.VisitRulesFor: the user's rules in `namespace` and resolution errors."""
        key = (user, namespace)
        if key in self._cache:
            return self._cache[key]
        rules: list[dict[str, Any]] = list(BOOTSTRAP_RULES) if "system:authenticated" in user.groups else []
        errors: list[str] = []
        for binding in self._objects("clusterrolebindings"):
            if any(_applies_to(user, s, "") for s in binding.get("subjects") or []):
                try:
                    rules.extend(self._role_rules(binding.get("roleRef") or {}, ""))
                except LookupError as exc:
                    errors.append(str(exc))
        if namespace:
            for binding in self._objects("rolebindings"):
                if binding["metadata"].get("namespace") != namespace:
                    continue
                if any(_applies_to(user, s, namespace) for s in binding.get("subjects") or []):
                    try:
                        rules.extend(self._role_rules(binding.get("roleRef") or {}, namespace))
                    except LookupError as exc:
                        errors.append(str(exc))
        self._cache[key] = (rules, errors)
        return rules, errors

    def authorize(self, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason): RBACAuthorizer.Authorize. The reason of a denial is empty unless a
        binding's role could not be resolved."""
        rules, errors = self.rules_for(attrs.user, attrs.namespace)
        if any(rule_allows(attrs, r) for r in rules):
            return True, ""
        reason = ""
        if errors:
            reason = "RBAC: " + (errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]")
        return False, reason


def forbidden_message(attrs: Attributes) -> str:
    """responsewriters/errors.go forbiddenMessage."""
    if not attrs.resource_request:
        return f'User "{attrs.user.name}" cannot {attrs.verb} path "{attrs.path}"'
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    if attrs.namespace:
        return (
            f'User "{attrs.user.name}" cannot {attrs.verb} resource "{resource}" in API group '
            f'"{attrs.api_group}" in the namespace "{attrs.namespace}"'
        )
    return (
        f'User "{attrs.user.name}" cannot {attrs.verb} resource "{resource}" in API group '
        f'"{attrs.api_group}" at the cluster scope'
    )


def forbidden_status(attrs: Attributes, detail: str) -> dict[str, Any]:
    """errors.go NewForbidden(GroupResource, name, detail) as a Status object."""
    if not attrs.resource_request or not attrs.resource:
        message = f"forbidden: {detail}"
    else:
        qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
        message = (
            f'{qualified} "{attrs.name}" is forbidden: {detail}'
            if attrs.name
            else f"{qualified} is forbidden: {detail}"
        )
    details: dict[str, Any] = {}
    if attrs.resource_request:
        details = {"group": attrs.api_group, "kind": attrs.resource}
        if attrs.name:
            details["name"] = attrs.name
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": "Forbidden",
        "code": 403,
    }
    if details:
        status["details"] = details
    return status


def denial_status(attrs: Attributes, reason: str) -> dict[str, Any]:
    """The authorization filter's denial: responsewriters.Forbidden (message, then `: reason`)."""
    detail = forbidden_message(attrs)
    if reason:
        detail = f"{detail}: {reason}"
    return forbidden_status(attrs, detail)


UNAUTHORIZED: dict[str, Any] = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "Unauthorized",
    "reason": "Unauthorized",
    "code": 401,
}


@dataclass
class IssuedToken:
    namespace: str
    service_account: str
    uid: str
    expires: float


@dataclass
class TokenAuthenticator:
    """Bound service-account tokens: issued by TokenRequest, valid until expiry or until their
    ServiceAccount (by uid) is gone."""

    tokens: dict[str, IssuedToken] = field(default_factory=dict)

    def issue(self, namespace: str, service_account: str, uid: str, expiration_seconds: int) -> tuple[str, float]:
        token = "emulator-sa-token." + secrets.token_urlsafe(24)
        expires = time.time() + expiration_seconds
        self.tokens[token] = IssuedToken(namespace, service_account, uid, expires)
        return token, expires

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def authenticate(self, token: str, service_account_uid: Callable[[str, str], str | None]) -> UserInfo | None:
        issued = self.tokens.get(token)
        if issued is None or issued.expires <= time.time():
            return None
        if service_account_uid(issued.namespace, issued.service_account) != issued.uid:
            return None
        return service_account_user(issued.namespace, issued.service_account, issued.uid)


# pkg/apis/authentication/validation: TokenRequest expirationSeconds at least 10 minutes, at most 2^32 s;
# pkg/registry/core/serviceaccount/storage/token.go defaults it to one hour.
MIN_EXPIRATION_SECONDS = 600
DEFAULT_EXPIRATION_SECONDS = 3600
