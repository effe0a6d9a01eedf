"""What a route handler is given: the request, the verified principal, parsed input,
the process's services, and places to put response metadata and headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from urllib.parse import parse_qsl

from starlette.requests import Request

if TYPE_CHECKING:
    from shared.services import Services
    from shared.settings import Settings


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller. Never built from anything the client declares."""

    user_id: str
    role: str  # authenticated | service_role
    session_id: str | None = None
    tier_hint: str | None = None  # from app_metadata; the rate limiter's Redis key wins
    expires_at: int = 0
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_service(self) -> bool:
        return self.role == "service_role"


def header_map(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers as a dict (names lower-case, as ASGI sends them), built once per
    request and kept in the scope. Cheaper than Starlette's `Headers`, whose lookups scan the
    list and raise KeyError for every absent header."""
    cached = scope.get("_edgefn_headers")
    if cached is None:
        cached = scope["_edgefn_headers"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
    return cached  # type: ignore[no-any-return]


#: Query parameters a client library adds for Supabase's own gateway, not for the function:
#: supabase-js's `functions.invoke(name, {region})` sends `?forceFunctionRegion=<region>`
#: beside the `x-region` header. Dropped here, so strict query models do not refuse them
#: and they split no cache key.
GATEWAY_QUERY_PARAMS = frozenset({"forceFunctionRegion"})


def query_map(scope: dict[str, Any]) -> dict[str, str]:
    """The query string as a dict (the last value of a repeated name wins, as with
    `dict(request.query_params)`) without `GATEWAY_QUERY_PARAMS`, built once per request;
    an empty query costs nothing."""
    cached = scope.get("_edgefn_query")
    if cached is None:
        raw = scope.get("query_string", b"")
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True) if raw else ()
        cached = {k: v for k, v in pairs if k not in GATEWAY_QUERY_PARAMS}
        scope["_edgefn_query"] = cached
    return cached  # type: ignore[no-any-return]


@dataclass(slots=True)
class RequestContext:
    request: Request
    request_id: str
    services: Services
    settings: Settings
    route_name: str
    principal: Principal | None = None
    client_ip: str = ""
    query: Any = None
    body: Any = None
    path_params: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    response_headers: dict[str, str] = field(default_factory=dict)
    tier: str = "anonymous"
    #: anything the middleware learnt that handlers or metadata may use
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return header_map(self.request.scope)

    @property
    def query_params(self) -> dict[str, str]:
        return query_map(self.request.scope)

    def end_user(self, what: str = "this is") -> str:
        """The caller's user id, for routes that act on a signed-in user's own data: a
        service token (no user) or a subject that is not a uuid is refused. `what` names
        the resource, with its verb, in the message ("a deck is")."""
        import uuid

        from shared import errors

        p = self.principal
        if p is None:
            raise errors.Unauthenticated("authentication required", code="AUTH_REQUIRED")
        if p.is_service:
            raise errors.Forbidden(f"{what} a signed-in user's; a service token has no user", code="USER_TOKEN_REQUIRED")
        try:
            uuid.UUID(p.user_id)
        except ValueError:
            raise errors.Forbidden("the token's subject is not a user id", code="INVALID_SUBJECT") from None
        return p.user_id

    @property
    def user_id(self) -> str:
        if self.principal is None:
            from shared.errors import Unauthenticated

            raise Unauthenticated("authentication required", code="AUTH_REQUIRED")
        return self.principal.user_id
