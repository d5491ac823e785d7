"""Token verification (processor/http/auth.py) and the local key pair (processor/http/tokens.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from processor.config.settings import Settings
from processor.http.auth import (
    ACTS,
    GRANTS,
    QUERY_TENANT_ROUTES,
    ROUTES,
    Access,
    AuthError,
    Permission,
    Principal,
    TokenVerifier,
    access_from,
)
from processor.http.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalKeys
from processor.kafka import glue
from tests.support.faust_web import aiohttp_app
from tests.support.tokens import AUDIENCE, ISSUER, TestKeys


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> TestKeys:
    return TestKeys.make(tmp_path_factory.mktemp("keys"))


@pytest.fixture
def verifier(keys: TestKeys) -> TokenVerifier:
    return TokenVerifier(str(keys.jwks_path), ISSUER, AUDIENCE, leeway_seconds=30)


def refused(verifier: TokenVerifier, token: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verifier.verify(token)
    assert caught.value.status == 401
    return caught.value


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_a_valid_token_is_its_principal(keys: TestKeys, verifier: TokenVerifier, alg: str) -> None:
    token = keys.token(alg=alg, role="tenant_admin", tenant_id="acme", sub="alice")
    assert verifier.verify(token) == Principal("alice", "tenant_admin", "acme")


def test_expired_is_401(keys: TestKeys, verifier: TokenVerifier) -> None:
    assert "expired" in refused(verifier, keys.token(exp_in=-31)).detail


def test_wrong_audience_and_issuer_are_401(keys: TestKeys, verifier: TokenVerifier) -> None:
    assert "audience" in refused(verifier, keys.token(aud="someone-else")).detail
    assert "issuer" in refused(verifier, keys.token(iss="https://evil.test/")).detail


def test_missing_claims_are_401(keys: TestKeys, verifier: TokenVerifier) -> None:
    for claim in ("sub", "iss", "aud", "iat"):
        # arg-type: a claim set to None (left out) is the test
        token = keys.token(**{claim: None})  # type: ignore[arg-type]
        refused(verifier, token)
    refused(verifier, keys.token(role="root"))
    refused(verifier, keys.token(role="tenant_admin"))  # no tenant_id
    refused(verifier, keys.token(sub="x" * 129))
    refused(verifier, keys.token(sub="caf\u00e9"))


def test_a_bad_signature_is_401(keys: TestKeys, verifier: TokenVerifier, tmp_path: Path) -> None:
    other = TestKeys.make(tmp_path)
    # Signed by another key that claims this key set's kid.
    refused(verifier, other.token())
    # A token whose payload was changed after signing.
    head, payload, sig = keys.token(role="operator").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["role"] = "billing"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused(verifier, f"{head}.{forged}.{sig}")


def test_alg_none_is_401(keys: TestKeys, verifier: TokenVerifier) -> None:
    token = jwt.encode(keys.claims(), "", algorithm="none")  # "" is the none algorithm's key
    assert "algorithm" in refused(verifier, token).detail


def test_hs256_with_the_public_key_as_secret_is_401(
    keys: TestKeys, verifier: TokenVerifier
) -> None:
    public = keys.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # The classic confusion: HMAC keyed with the (public) verification key.
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT","kid":"rsa-1"}').rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(keys.claims()).encode()).rstrip(b"=")
    import hashlib
    import hmac

    signing = header + b"." + payload
    sig = base64.urlsafe_b64encode(hmac.new(public, signing, hashlib.sha256).digest()).rstrip(b"=")
    assert "algorithm" in refused(verifier, (signing + b"." + sig).decode()).detail


def test_clock_skew_is_bounded(keys: TestKeys, verifier: TokenVerifier) -> None:
    # Within the leeway (30 s): accepted, either way.
    verifier.verify(keys.token(exp_in=-20))
    verifier.verify(keys.token(iat_in=20))
    # Past it: refused.
    refused(verifier, keys.token(exp_in=-40))
    assert "not valid yet" in refused(verifier, keys.token(iat_in=120)).detail
    with pytest.raises(ValueError, match="leeway"):
        TokenVerifier(str(keys.jwks_path), ISSUER, AUDIENCE, leeway_seconds=301)


def test_malformed_tokens_are_401(verifier: TokenVerifier) -> None:
    for token in ("", "abc", "a.b.c", "x" * 9000):
        refused(verifier, token)


def test_settings_bound_the_leeway_and_name_the_keys() -> None:
    with pytest.raises(ValueError):
        Settings(_env_file=None, METER_AUTH_LEEWAY_SECONDS=301)
    with pytest.raises(ValueError, match="METER_AUTH_JWKS, METER_AUTH_ISSUER"):
        access_from(Settings(_env_file=None, METER_AUTH="jwt"))
    assert Settings(_env_file=None).auth == "token"


# ---------------------------------------------------------------------- permissions


@pytest.fixture
def access(verifier: TokenVerifier) -> Access:
    return Access("jwt", SecretStr("static-secret"), verifier)


def check(access: Access, token: str, permission: Permission, tenant: str | None) -> int:
    try:
        access.check({"Authorization": f"Bearer {token}"}, permission, tenant)
    except AuthError as exc:
        return exc.status
    return 200


def test_roles_and_tenants(keys: TestKeys, access: Access) -> None:
    acme = keys.tenant_admin("acme")
    operator = keys.token(role="operator")
    billing = keys.token(role="billing")
    assert check(access, acme, Permission.READ, "acme") == 200
    assert check(access, acme, Permission.CONFIGURE, "acme") == 200
    assert check(access, acme, Permission.READ, "globex") == 403
    assert check(access, acme, Permission.CONFIGURE, "globex") == 403
    assert check(access, acme, Permission.FUNDS, "acme") == 200
    assert check(access, acme, Permission.FUNDS, "globex") == 403
    assert check(access, operator, Permission.READ, "globex") == 200
    assert check(access, operator, Permission.FUNDS, "globex") == 403
    assert check(access, operator, Permission.CONFIGURE, "globex") == 403
    assert check(access, billing, Permission.FUNDS, "globex") == 200
    assert check(access, billing, Permission.RECHARGE_OUTCOME, "globex") == 200
    assert check(access, billing, Permission.READ, "globex") == 403
    for permission in Permission:
        assert check(access, "static-secret", permission, "any") == 200
    assert check(access, "static-secre", Permission.READ, "any") == 401


@pytest.mark.parametrize(
    ("role", "tenant", "permission", "said"),
    [
        ("tenant_admin", "acme", Permission.FUNDS, "a token with the role tenant_admin may not "
         "add funds for this tenant"),
        ("operator", "acme", Permission.FUNDS, "a token with the role operator may not add funds "
         "for this tenant"),
        ("tenant_admin", None, Permission.READ_ALL, "a token with the role tenant_admin may not "
         "list every tenant"),
        ("billing", "acme", Permission.READ, "a token with the role billing may not read "
         "accounts for this tenant"),
    ],
)  # fmt: skip
def test_a_refusal_says_in_words_what_the_role_may_not_do(
    keys: TestKeys,
    access: Access,
    role: str,
    tenant: str | None,
    permission: Permission,
    said: str,
) -> None:
    token = keys.tenant_admin("globex") if role == "tenant_admin" else keys.token(role=role)
    with pytest.raises(AuthError) as refused:
        access.check({"Authorization": f"Bearer {token}"}, permission, tenant)
    assert (refused.value.status, refused.value.detail) == (403, said)


def test_every_permission_is_said_in_words() -> None:
    assert set(ACTS) == set(Permission)


def test_only_operators_list_every_tenant(keys: TestKeys, access: Access) -> None:
    """Added with the console: the sink's GET /tenants names no tenant, so READ (which
    a tenant admin holds for its own tenant) must not be what guards it."""
    assert ROUTES[("GET", "/tenants")] is Permission.READ_ALL
    assert check(access, keys.tenant_admin("acme"), Permission.READ_ALL, None) == 403
    assert check(access, keys.token(role="billing"), Permission.READ_ALL, None) == 403
    assert check(access, keys.token(role="operator"), Permission.READ_ALL, None) == 200
    assert ROUTES[("GET", "/tenants/{tenant_id}/recharges")] is Permission.READ
    # A command's status names its tenant in the query, which the guard reads.
    assert ROUTES[("GET", "/commands/{command_id}")] is Permission.READ
    assert "/commands/{command_id}" in QUERY_TENANT_ROUTES


def test_no_token_is_401_with_a_bare_challenge(access: Access) -> None:
    with pytest.raises(AuthError) as caught:
        access.check({}, Permission.READ, "acme")
    assert caught.value.status == 401
    assert caught.value.challenge() == {"WWW-Authenticate": 'Bearer realm="credits-meter"'}
    with pytest.raises(AuthError) as caught:
        access.check({"Authorization": "Bearer nope"}, Permission.READ, "acme")
    assert 'error="invalid_token"' in caught.value.challenge()["WWW-Authenticate"]


def test_every_route_names_a_permission_a_role_holds() -> None:
    held = set().union(*GRANTS.values())
    assert set(ROUTES.values()) <= held


# ---------------------------------------------------------------------- local keys


def test_the_local_key_pair_is_made_once_private_and_verifies(tmp_path: Path) -> None:
    keys = LocalKeys(tmp_path).ensure()
    assert stat.S_IMODE(keys.private_path.stat().st_mode) == 0o600
    first = keys.private_path.read_bytes()
    LocalKeys(tmp_path).ensure()
    assert keys.private_path.read_bytes() == first
    verifier = TokenVerifier(str(keys.jwks_path), LOCAL_ISSUER, LOCAL_AUDIENCE)
    token = keys.issue("tenant_admin", "acme", subject="ops@acme", ttl_seconds=60)
    assert verifier.verify(token) == Principal("ops@acme", "tenant_admin", "acme")
    assert verifier.verify(keys.issue("operator")).role == "operator"
    expired = keys.issue("operator", ttl_seconds=1, now=time.time() - 120)
    with pytest.raises(AuthError):
        verifier.verify(expired)
    with pytest.raises(ValueError):
        keys.issue("tenant_admin")
    # The public set holds no private part.
    assert "d" not in json.loads(keys.jwks_path.read_text())["keys"][0]


def test_the_demo_runs_on_the_local_key_pair_and_prints_two_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from processor.dev.demo import local_auth, print_tokens

    env = {"METER_DATA_DIR": str(tmp_path)}
    keys = local_auth(env)
    assert keys is not None and env["METER_AUTH"] == "jwt"
    # arg-type: settings given as environment strings, parsed by pydantic
    access = access_from(Settings(_env_file=None, **env))  # type: ignore[arg-type]
    print_tokens(keys, env, "acme-corp", 6066)
    tokens = [
        line.split(": ", 1)[1] for line in capsys.readouterr().out.splitlines() if "token (" in line
    ]
    principals = [access.principal({"Authorization": f"Bearer {t}"}) for t in tokens]
    assert [(p.role, p.tenant_id) for p in principals] == [
        ("tenant_admin", "acme-corp"),
        ("operator", None),
    ]
    # METER_AUTH chosen by the user is left alone.
    assert local_auth({"METER_DATA_DIR": str(tmp_path), "METER_AUTH": "token"}) is None


async def test_every_route_of_the_worker_and_the_sink_is_open_or_named(tmp_path: Path) -> None:
    """Adding an endpoint means naming its permission in auth.ROUTES (or it is open)."""
    from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
    from processor.http.auth import OPEN_PATHS
    from processor.sink.http import build_app
    from processor.sink.store import LedgerStore, database_url
    from processor.worker.app import Broker, Meter

    cfg = Settings(_env_file=None)
    meter = Meter(cfg, load_rate_card(example_rate_card_path()), Broker("127.0.0.1:1"), 4)
    store = await LedgerStore.open(database_url(None, tmp_path))
    try:
        routes = [*aiohttp_app(meter.app).router.routes(), *build_app(store).router.routes()]
        seen = set()
        for route in routes:
            path = route.resource.canonical if route.resource is not None else ""
            if route.method == "HEAD" or path in OPEN_PATHS or path == "/":
                continue
            seen.add((route.method, path))
            assert (route.method, path) in ROUTES, f"{route.method} {path} names no permission"
        assert ("GET", "/tenants/{tenant_id}/ledger.csv") in seen
        assert ("POST", "/tenants/{tenant_id}/recharges/{request_id}/outcome") in seen
        # And the other way: a permission named for a route nothing serves is a promise
        # the docs would repeat (a GET of the notification settings was one).
        assert set(ROUTES) - seen == set()
    finally:
        await store.close()
        await glue.close_http_client(meter.app)


async def test_a_key_set_from_a_url_is_cached_and_fetched_off_the_loop(keys: TestKeys) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    fetched = 0

    async def jwks(request: web.Request) -> web.Response:
        nonlocal fetched
        fetched += 1
        return web.Response(body=keys.jwks_path.read_bytes(), content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    async with TestServer(app) as server:
        url = str(server.make_url("/.well-known/jwks.json"))
        access = Access("jwt", None, TokenVerifier(url, ISSUER, AUDIENCE))
        # The server runs on this loop: a fetch on it would hang; check_async does not.
        for alg in ("ES256", "RS256", "ES256"):
            header = keys.header(keys.token(alg=alg, role="operator"))
            principal = await access.check_async(header, Permission.READ, "acme")
            assert principal.role == "operator"
        assert fetched == 1
        # Made-up key ids: refused, and at most one more fetch within the cooldown.
        for i in range(20):
            header = keys.header(keys.token(kid=f"nope-{i}", role="operator"))
            with pytest.raises(AuthError) as caught:
                await access.check_async(header, Permission.READ, "acme")
            assert caught.value.status == 401
        assert fetched <= 2


def test_a_tenant_admin_reads_no_route_that_names_no_tenant(keys: TestKeys, access: Access) -> None:
    acme = keys.tenant_admin("acme")
    assert check(access, acme, Permission.READ, None) == 403
    assert check(access, acme, Permission.SIGNED_IN, None) == 200
    assert check(access, keys.token(role="operator"), Permission.READ, None) == 200


async def test_the_cli_sends_its_token_to_the_read_api(
    monkeypatch: pytest.MonkeyPatch, keys: TestKeys
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from processor.http.auth import client_headers
    from processor.ops import admin_client
    from processor.ops.reconcile import live_balance

    operator = keys.token(role="operator")
    seen: list[str | None] = []

    async def account(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"tenant_id": "acme", "balance": "1.00"})

    app = web.Application()
    app.router.add_get("/tenants/{tenant_id}/account", account)
    monkeypatch.setenv("METER_ADMIN_TOKEN", "static")
    assert client_headers(Settings()) == {"Authorization": "Bearer static"}
    monkeypatch.setenv("METER_API_TOKEN", operator)
    async with TestServer(app) as server:
        url = str(server.make_url("/"))
        status, _ = await admin_client.get_account(url, "acme")
        assert status == 200
        balance = await asyncio.to_thread(live_balance, url, "acme", client_headers(Settings()))
        assert str(balance) == "1.00"
    assert seen == [f"Bearer {operator}"] * 2
