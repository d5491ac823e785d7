"""Token verification (processor/auth.py) and the local key pair (processor/tokens.py)."""

from __future__ import annotations

import base64
import json
import stat
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from processor.auth import (
    GRANTS,
    ROUTES,
    Access,
    AuthError,
    Permission,
    Principal,
    TokenVerifier,
)
from processor.settings import Settings
from processor.tokens import LOCAL_AUDIENCE, LOCAL_ISSUER, LocalKeys
from tests.tokens import AUDIENCE, ISSUER, TestKeys


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
        token = keys.token(**{claim: None})  # type: ignore[arg-type]
        refused(verifier, token)
    refused(verifier, keys.token(role="root"))
    refused(verifier, keys.token(role="tenant_admin"))  # no tenant_id
    refused(verifier, keys.token(sub="x" * 129))


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
    token = jwt.encode(keys.claims(), None, algorithm="none")
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
        Settings(_env_file=None, METER_AUTH_LEEWAY_SECONDS=301)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="METER_AUTH_JWKS"):
        Settings(_env_file=None, METER_AUTH="jwt")  # type: ignore[call-arg]
    assert Settings(_env_file=None).auth == "token"  # type: ignore[call-arg]


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
    assert check(access, acme, Permission.FUNDS, "acme") == 403
    assert check(access, operator, Permission.READ, "globex") == 200
    assert check(access, operator, Permission.FUNDS, "globex") == 403
    assert check(access, operator, Permission.CONFIGURE, "globex") == 403
    assert check(access, billing, Permission.FUNDS, "globex") == 200
    assert check(access, billing, Permission.RECHARGE_OUTCOME, "globex") == 200
    assert check(access, billing, Permission.READ, "globex") == 403
    for permission in Permission:
        assert check(access, "static-secret", permission, "any") == 200
    assert check(access, "static-secre", Permission.READ, "any") == 401


def test_only_operators_list_every_tenant(keys: TestKeys, access: Access) -> None:
    """Added with the console: the sink's GET /tenants names no tenant, so READ (which
    a tenant admin holds for its own tenant) must not be what guards it."""
    assert ROUTES[("GET", "/tenants")] is Permission.LIST_TENANTS
    assert check(access, keys.tenant_admin("acme"), Permission.LIST_TENANTS, None) == 403
    assert check(access, keys.token(role="billing"), Permission.LIST_TENANTS, None) == 403
    assert check(access, keys.token(role="operator"), Permission.LIST_TENANTS, None) == 200
    assert ROUTES[("GET", "/tenants/{tenant_id}/recharges")] is Permission.READ


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
