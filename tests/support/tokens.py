"""Tokens for tests: a key set built here (ES256 and RS256 keys) and a token builder.

    keys = TestKeys.make(tmp_path)       # writes keys.jwks_path
    keys.token(role="operator")          # a valid ES256 token for ISSUER / AUDIENCE
    keys.token(role="tenant_admin", tenant_id="acme", exp_in=-60)   # expired

`env()` is what a worker or sink needs to verify them (METER_AUTH=jwt).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://issuer.test/"
AUDIENCE = "credits-meter-test"
_OMIT = object()


@dataclass
class TestKeys:
    __test__ = False  # not a test class

    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    jwks_path: Path

    @classmethod
    def make(cls, directory: Path) -> TestKeys:
        ec_key = ec.generate_private_key(ec.SECP256R1())
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        keys = []
        for kid, jwk_text in (
            ("ec-1", jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())),
            ("rsa-1", jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())),
        ):
            jwk = json.loads(jwk_text)
            jwk.update({"kid": kid, "use": "sig"})
            keys.append(jwk)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "test-jwks.json"
        path.write_text(json.dumps({"keys": keys}))
        return cls(ec_key, rsa_key, path)

    def env(self) -> dict[str, str]:
        return {
            "METER_AUTH": "jwt",
            "METER_AUTH_JWKS": str(self.jwks_path),
            "METER_AUTH_ISSUER": ISSUER,
            "METER_AUTH_AUDIENCE": AUDIENCE,
        }

    def claims(
        self,
        role: str = "operator",
        tenant_id: Any = _OMIT,
        sub: Any = _OMIT,
        iss: Any = ISSUER,
        aud: Any = AUDIENCE,
        exp_in: float = 300,
        iat_in: float = 0,
        now: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        t = time.time() if now is None else now
        claims: dict[str, Any] = {
            "sub": (f"{role}-user" if sub is _OMIT else sub),
            "role": role,
            "iss": iss,
            "aud": aud,
            "iat": int(t + iat_in),
            "exp": int(t + exp_in),
            **extra,
        }
        if tenant_id is not _OMIT:
            claims["tenant_id"] = tenant_id
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, alg: str = "ES256", kid: str | None = None, **claims: Any) -> str:
        key: Any = self.ec_key if alg == "ES256" else self.rsa_key
        kid = kid or ("ec-1" if alg == "ES256" else "rsa-1")
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers={"kid": kid})

    def tenant_admin(self, tenant_id: str, **claims: Any) -> str:
        return self.token(role="tenant_admin", tenant_id=tenant_id, **claims)

    def header(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}
