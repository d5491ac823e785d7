"""A local key pair that signs tokens, for `make run` and `meter token issue`.

    METER_DATA_DIR/auth/private.pem   the ES256 private key (mode 0600)
    METER_DATA_DIR/auth/jwks.json     its public key set: point METER_AUTH_JWKS here

Made on first use. Production keys live in the identity provider; this is for a
laptop, a demo, a test deployment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "LOCAL_AUDIENCE",
    "LOCAL_ISSUER",
    "LocalKeys",
]

# What `make run` configures, and what tokens are issued for when METER_AUTH_ISSUER /
# METER_AUTH_AUDIENCE are unset.
LOCAL_ISSUER: Final = "credits-meter-local"
LOCAL_AUDIENCE: Final = "credits-meter"
DEFAULT_TTL_SECONDS: Final = 3600
MAX_TTL_SECONDS: Final = 30 * 24 * 3600


class LocalKeys:
    """The key pair under `<data_dir>/auth/`, made on first use."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "auth"
        self.private_path = self.dir / "private.pem"
        self.jwks_path = self.dir / "jwks.json"

    def ensure(self) -> LocalKeys:
        if self.private_path.exists() and self.jwks_path.exists():
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Created 0600 from the start: never readable by others, not even briefly.
        fd = os.open(self.private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.chmod(self.private_path, 0o600)
        self.jwks_path.write_text(json.dumps(jwks_of(key.public_key()), indent=2) + "\n")
        return self

    def _private(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.private_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    @property
    def kid(self) -> str:
        return str(json.loads(self.jwks_path.read_text())["keys"][0]["kid"])

    def issue(
        self,
        role: str,
        tenant_id: str | None = None,
        subject: str | None = None,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        issuer: str = LOCAL_ISSUER,
        audience: str = LOCAL_AUDIENCE,
        now: float | None = None,
    ) -> str:
        if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise ValueError(f"ttl must be 1 to {MAX_TTL_SECONDS} seconds")
        if role == "tenant_admin" and not tenant_id:
            raise ValueError("a tenant_admin token needs a tenant")
        self.ensure()
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "sub": subject or (f"{role}@{tenant_id}" if tenant_id else role),
            "role": role,
            "iss": issuer,
            "aud": audience,
            "iat": issued,
            "exp": issued + ttl_seconds,
        }
        if tenant_id:
            claims["tenant_id"] = tenant_id
        return jwt.encode(claims, self._private(), algorithm="ES256", headers={"kid": self.kid})


def jwks_of(public_key: Any) -> dict[str, Any]:
    """A key set of one public key, its kid the key's RFC 7638 thumbprint."""
    jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public_key))
    canonical = json.dumps(
        {k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    jwk["kid"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    jwk.update({"use": "sig", "alg": "ES256"})
    return {"keys": [jwk]}
