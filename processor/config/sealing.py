"""Webhook secrets sealed at rest and in flight: Fernet under METER_SECRETS_KEY.

The admin API seals a tenant's webhook secret before it publishes the
`notifications_configured` command; the worker stores and republishes the sealed
text as it came; only `meter notifier` opens it, to sign. So the secret is never in
clear on a topic, in a changelog, in a log line or in a metric.

METER_SECRETS_KEY is one Fernet key (`Sealer.new_key()`), or several separated by
commas to rotate: the first seals, any of them opens.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

__all__ = ["SealError", "Sealer"]


class SealError(ValueError):
    """A key that is no Fernet key, or a sealed text no configured key opens."""


class Sealer:
    def __init__(self, keys: SecretStr | str) -> None:
        raw = keys.get_secret_value() if isinstance(keys, SecretStr) else keys
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        if not parts:
            raise SealError("METER_SECRETS_KEY holds no key")
        try:
            self._fernet = MultiFernet([Fernet(part.encode("ascii")) for part in parts])
        except (ValueError, UnicodeEncodeError):
            # Never repeat the value: it is the key.
            raise SealError(
                "METER_SECRETS_KEY must be Fernet keys (32 url-safe base64 bytes each, "
                "comma-separated); make one with `python -c 'from cryptography.fernet "
                "import Fernet; print(Fernet.generate_key().decode())'`"
            ) from None

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode("ascii")

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise SealError("the sealed secret opens with none of METER_SECRETS_KEY") from None

    def __repr__(self) -> str:
        return "Sealer(<keys hidden>)"
