"""Access per tenant: who may call which endpoint, for which tenant.

With ``METER_AUTH=jwt`` every tenant endpoint of a worker and of the ledger sink
takes ``Authorization: Bearer <token>``: a JSON Web Token signed RS256 or ES256 by a
key of the configured key set (``METER_AUTH_JWKS``, a file or an http(s) URL, fetched
through PyJWKClient with caching), with the configured issuer and audience, not
expired (``METER_AUTH_LEEWAY_SECONDS`` of clock skew, at most 300). Its claims:

    sub        the actor (written into the commands it causes, and their ledger entries)
    role       tenant_admin | operator | billing
    tenant_id  the tenant a tenant_admin administers (required with that role)
    iss, aud, exp, iat

What each role may do is `GRANTS`; what each endpoint needs is `ROUTES`, the one place
an endpoint names its permission (an endpoint missing there is refused to every token
but the static one; a test checks every route is named). ``METER_ADMIN_TOKEN`` stays
for automation: that bearer is a principal with every permission (actor
``admin-token``). ``/metrics``, ``/health``, ``/ready`` and ``/openapi.json`` stay open.

401 (with ``WWW-Authenticate: Bearer``, RFC 6750) for a missing, malformed, expired or
foreign token; 403 for a valid token without the permission. With ``METER_AUTH=token``
(the default) nothing changes: the read API is open and the admin API takes the
static token (processor/http/admin_gate.py).
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import jwt
import orjson
from aiohttp import web
from pydantic import SecretStr

from processor.http.problems import problem
from schemas.types import ID_PATTERN

__all__ = [
    "ADMIN_TOKEN_ACTOR",
    "ALGORITHMS",
    "GRANTS",
    "OPEN_PATHS",
    "PRINCIPAL",
    "ROLES",
    "ROUTES",
    "Access",
    "AuthError",
    "Permission",
    "Principal",
    "TokenVerifier",
    "access_from",
    "middleware",
]

log = logging.getLogger(__name__)

# Asymmetric only: never `none`, never HS* (a public key must not become a secret).
ALGORITHMS: Final = ("RS256", "ES256")
ROLES: Final = ("tenant_admin", "operator", "billing")
Role = Literal["tenant_admin", "operator", "billing", "admin"]
ADMIN_TOKEN_ACTOR: Final = "admin-token"  # noqa: S105 (a name, not a secret)
MAX_LEEWAY_SECONDS: Final = 300
# JWKS fetched from a URL is kept this long (PyJWKClient's cache), and a token naming
# an unknown key makes it fetch again at most this often (a rotated key is found, a
# flood of made-up key ids costs the identity provider nothing).
JWKS_CACHE_SECONDS: Final = 300
JWKS_REFRESH_COOLDOWN_SECONDS: Final = 30
MAX_SUBJECT_LENGTH: Final = 128
MAX_TOKEN_BYTES: Final = 8 * 1024
_SUBJECT: Final = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))


class Permission(enum.Enum):
    READ = "read"  # account, authorize, ledger, usage, statement
    CONFIGURE = "configure"  # auto-recharge, limits, notifications
    FUNDS = "funds"  # post a top-up
    RECHARGE_OUTCOME = "recharge_outcome"  # billing's answer to a recharge request
    SIGNED_IN = "signed_in"  # any valid token (whoami)
    # Added: reads that name no tenant (the sink's GET /tenants): operators, never a
    # tenant admin. A command's status names its tenant in the query (READ).
    READ_ALL = "read_all"


# Each permission as a refusal says it: "a token with the role billing may not ...".
ACTS: Final[dict[Permission, str]] = {
    Permission.READ: "read accounts",
    Permission.CONFIGURE: "change settings",
    Permission.FUNDS: "add funds",
    Permission.RECHARGE_OUTCOME: "answer recharge requests",
    Permission.SIGNED_IN: "sign in",
    Permission.READ_ALL: "list every tenant",
}

# What each role may do; a tenant_admin only for its own tenant. A tenant admin adds
# funds to its own tenant (the console's "Add funds", as in the admin center this
# product follows); billing's answers to recharge requests stay billing's.
GRANTS: Final[dict[str, frozenset[Permission]]] = {
    "tenant_admin": frozenset(
        {Permission.READ, Permission.CONFIGURE, Permission.FUNDS, Permission.SIGNED_IN}
    ),
    "operator": frozenset({Permission.READ, Permission.SIGNED_IN, Permission.READ_ALL}),
    "billing": frozenset({Permission.FUNDS, Permission.RECHARGE_OUTCOME, Permission.SIGNED_IN}),
    "admin": frozenset(Permission),
}

# Every endpoint that needs a token, by method and route, with what it needs. The
# worker's and the sink's; an endpoint added later names its permission here.
ROUTES: Final[dict[tuple[str, str], Permission]] = {
    ("GET", "/tenants/{tenant_id}/account"): Permission.READ,
    ("GET", "/tenants/{tenant_id}/authorize"): Permission.READ,
    ("POST", "/tenants/{tenant_id}/funds"): Permission.FUNDS,
    ("PUT", "/tenants/{tenant_id}/auto-recharge"): Permission.CONFIGURE,
    ("PATCH", "/tenants/{tenant_id}/auto-recharge"): Permission.CONFIGURE,
    ("DELETE", "/tenants/{tenant_id}/auto-recharge"): Permission.CONFIGURE,
    ("PUT", "/tenants/{tenant_id}/limits"): Permission.CONFIGURE,
    ("PUT", "/tenants/{tenant_id}/notifications"): Permission.CONFIGURE,
    ("PATCH", "/tenants/{tenant_id}/notifications"): Permission.CONFIGURE,
    (
        "POST",
        "/tenants/{tenant_id}/recharges/{request_id}/outcome",
    ): Permission.RECHARGE_OUTCOME,
    ("GET", "/tenants/{tenant_id}/ledger"): Permission.READ,
    ("GET", "/tenants/{tenant_id}/usage"): Permission.READ,
    ("GET", "/tenants/{tenant_id}/ledger.csv"): Permission.READ,
    ("GET", "/auth/whoami"): Permission.SIGNED_IN,
    # Added with the console (the sink's): every tenant's row, and one tenant's recharges.
    ("GET", "/tenants"): Permission.READ_ALL,
    ("GET", "/tenants/{tenant_id}/recharges"): Permission.READ,
    # A command's status: its tenant is the `tenant_id` query parameter (the 202's
    # Location names it), so a tenant admin reads its own commands' status only.
    ("GET", "/commands/{command_id}"): Permission.READ,
}
# Routes whose tenant is the `tenant_id` query parameter rather than a path part.
QUERY_TENANT_ROUTES: Final = frozenset({"/commands/{command_id}"})
# Open to anyone, whatever METER_AUTH says.
OPEN_PATHS: Final = frozenset({"/metrics", "/health", "/ready", "/openapi.json"})

PRINCIPAL: Final = web.RequestKey("meter_principal", object)


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    tenant_id: str | None = None

    def may(self, permission: Permission, tenant_id: str | None) -> bool:
        if permission not in GRANTS.get(self.role, frozenset()):
            return False
        if self.role == "tenant_admin":
            # Its own tenant only; a route that names no tenant only when it needs no
            # more than a signed-in caller (whoami).
            return tenant_id == self.tenant_id or permission is Permission.SIGNED_IN
        return True

    def view(self) -> dict[str, Any]:
        return {"subject": self.subject, "role": self.role, "tenant_id": self.tenant_id}


ADMIN_PRINCIPAL: Final = Principal(ADMIN_TOKEN_ACTOR, "admin")


class AuthError(Exception):
    """A refusal: 401 (who are you?) or 403 (not you)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail

    def challenge(self, realm: str = "credits-meter") -> dict[str, str]:
        if self.status != 401:
            return {}
        # RFC 6750 section 3: no error attribute when no token was sent at all.
        if self.code == "unauthorized":
            return {"WWW-Authenticate": f'Bearer realm="{realm}"'}
        return {
            "WWW-Authenticate": f'Bearer realm="{realm}", error="invalid_token", '
            f'error_description="{self.detail[:100].replace(chr(34), chr(39))}"'
        }

    def answer(self, tenant_id: str | None) -> web.Response:
        return problem(
            self.status, self.code, self.detail, headers=self.challenge(), tenant_id=tenant_id
        )


def _unauthorized(detail: str) -> AuthError:
    return AuthError(401, "invalid_token", detail)


class TokenVerifier:
    """Verifies a token's signature, algorithm, issuer, audience and times."""

    def __init__(self, jwks: str, issuer: str, audience: str, leeway_seconds: int = 30) -> None:
        if not 0 <= leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ValueError(f"leeway must be 0 to {MAX_LEEWAY_SECONDS} seconds")
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        self._client: jwt.PyJWKClient | None = None
        self._keys: jwt.PyJWKSet | None = None
        if jwks.startswith(("https://", "http://")):
            self._client = jwt.PyJWKClient(
                jwks,
                cache_jwk_set=True,
                lifespan=JWKS_CACHE_SECONDS,
                timeout=5,
                cooldown_duration=JWKS_REFRESH_COOLDOWN_SECONDS,
            )
        else:
            self._keys = jwt.PyJWKSet.from_json(Path(jwks).read_text())

    @property
    def fetches(self) -> bool:
        """The key set comes from a URL: a verification may wait for the network."""
        return self._client is not None

    def _key(self, token: str) -> Any:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise _unauthorized(f"algorithm {str(alg)[:20]!r} is not accepted (RS256, ES256)")
        kid = header.get("kid")
        try:
            if self._client is not None:
                if kid is None:
                    raise _unauthorized("the token names no key (kid)")
                return self._client.get_signing_key(kid).key
            assert self._keys is not None
            keys = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        except jwt.PyJWKClientError as exc:
            raise _unauthorized(f"no key for this token: {exc}") from None
        if not keys:
            raise _unauthorized("no key of the key set signed this token")
        return keys[0].key

    def verify(self, token: str) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise _unauthorized("the token is too long")
        key = self._key(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["sub", "iss", "aud", "exp", "iat"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("the token is from another issuer") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("the token is not valid yet (iat or nbf in the future)") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        return _principal(claims)


def _principal(claims: Mapping[str, Any]) -> Principal:
    subject, role, tenant_id = claims.get("sub"), claims.get("role"), claims.get("tenant_id")
    # The actor of the commands it sends: the contract's Actor (schemas/types.py).
    if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
        raise _unauthorized(
            f"sub must be 1 to {MAX_SUBJECT_LENGTH} printable ASCII characters (the actor)"
        )
    if role not in ROLES:
        raise _unauthorized(f"role must be one of {', '.join(ROLES)}")
    if tenant_id is not None and not isinstance(tenant_id, str):
        raise _unauthorized("tenant_id must be a string")
    if role == "tenant_admin" and not tenant_id:
        raise _unauthorized("a tenant_admin token needs a tenant_id")
    return Principal(subject, role, tenant_id if role == "tenant_admin" else None)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def bearer(headers: Mapping[str, str]) -> str | None:
    """The bearer token of an Authorization header, or None."""
    scheme, _, given = (_header(headers, "Authorization") or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return None
    return given


class Access:
    """Who a request's bearer is, and whether they may do what they ask."""

    def __init__(
        self,
        mode: Literal["token", "jwt"],
        admin_token: SecretStr | None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        if mode == "jwt" and verifier is None:
            raise ValueError("METER_AUTH=jwt needs a token verifier")
        self.mode = mode
        self.verifier = verifier
        self._token = None if admin_token is None else admin_token.get_secret_value().encode()

    @property
    def jwt(self) -> bool:
        return self.mode == "jwt"

    def principal(self, headers: Mapping[str, str]) -> Principal:
        """The bearer's principal; AuthError 401 when there is none or it is invalid."""
        given = bearer(headers)
        if given is None:
            raise AuthError(401, "unauthorized", "missing bearer token")
        if self._token and hmac.compare_digest(given.encode(), self._token):
            return ADMIN_PRINCIPAL
        if self.verifier is None:
            raise AuthError(401, "invalid_token", "wrong bearer token")
        return self.verifier.verify(given)

    async def check_async(
        self, headers: Mapping[str, str], permission: Permission, tenant_id: str | None
    ) -> Principal:
        """`check`, off the event loop when the key set may have to be fetched (the
        worker's loop also runs the stream: it must never wait on the network)."""
        if self.verifier is not None and self.verifier.fetches:
            return await asyncio.to_thread(self.check, headers, permission, tenant_id)
        return self.check(headers, permission, tenant_id)

    def check(
        self, headers: Mapping[str, str], permission: Permission, tenant_id: str | None
    ) -> Principal:
        principal = self.principal(headers)
        if not principal.may(permission, tenant_id):
            log.warning(
                "access: %s (%s) may not %s for tenant %r",
                principal.subject,
                principal.role,
                permission.value,
                tenant_id,
            )
            raise AuthError(
                403,
                "forbidden",
                f"a token with the role {principal.role} may not {ACTS[permission]}"
                + (" for this tenant" if tenant_id is not None else ""),
            )
        return principal


def access_from(cfg: Any) -> Access:
    """The Access a Settings asks for (the key set is read, or its client made, here)."""
    verifier = None
    if cfg.auth == "jwt":
        missing = [
            name
            for name, value in (
                ("METER_AUTH_JWKS", cfg.auth_jwks),
                ("METER_AUTH_ISSUER", cfg.auth_issuer),
                ("METER_AUTH_AUDIENCE", cfg.auth_audience),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"METER_AUTH=jwt needs {', '.join(missing)} set as well")
        verifier = TokenVerifier(
            cfg.auth_jwks, cfg.auth_issuer, cfg.auth_audience, cfg.auth_leeway_seconds
        )
    return Access(cfg.auth, cfg.admin_token, verifier)


def client_headers(cfg: Any) -> dict[str, str]:
    """What the `meter` CLI sends to a worker: METER_API_TOKEN's or METER_ADMIN_TOKEN's
    bearer, when one is set."""
    secret = cfg.api_token or cfg.admin_token
    if secret is None or not secret.get_secret_value():
        return {}
    return {"Authorization": f"Bearer {secret.get_secret_value()}"}


def _route(request: web.Request) -> str | None:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = None if route is None else route.resource
    return None if resource is None else resource.canonical


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(access: Access) -> Any:
    """With METER_AUTH=jwt: every request but an open path's needs its permission."""

    @web.middleware
    async def check_access(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not access.jwt or request.path in OPEN_PATHS:
            return await handler(request)
        route = _route(request)
        if route is None:  # no route: a 404 or 405 from the router, nothing to guard
            return await handler(request)
        method = "GET" if request.method == "HEAD" else request.method
        permission = ROUTES.get((method, route))
        tenant_id = request.match_info.get("tenant_id")
        if route in QUERY_TENANT_ROUTES:
            tenant_id = request.query.get("tenant_id")
        try:
            if permission is None:
                # Unnamed: only the static token passes (see ROUTES).
                principal = await access.check_async(request.headers, Permission.SIGNED_IN, None)
                if principal.role != "admin":
                    raise AuthError(403, "forbidden", "this endpoint names no permission")
            else:
                principal = await access.check_async(request.headers, permission, tenant_id)
        except AuthError as refused:
            return refused.answer(tenant_id)
        request[PRINCIPAL] = principal
        return await handler(request)

    return check_access


def principal_of(request: Any) -> Principal | None:
    """The principal the middleware found for this request (None: not checked)."""
    found = request.get(PRINCIPAL)
    return found if isinstance(found, Principal) else None


def whoami_body(principal: Principal) -> bytes:
    return orjson.dumps(principal.view())
