"""How every Kafka client of the project authenticates: SASL and TLS from the environment.

    KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default) | SSL | SASL_PLAINTEXT | SASL_SSL
    KAFKA_SASL_MECHANISM      PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD
    KAFKA_SSL_CAFILE          CA bundle that signed the brokers' certificates
    KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE, KAFKA_SSL_KEY_PASSWORD   client certificate (mTLS)

`kafka_client_options(cfg)` gives the keyword arguments for any aiokafka client
(`AIOKafkaProducer(**opts)`, consumers, the admin client); `faust_credentials(cfg)`
gives the same as Faust's `broker_credentials`. One function decides both, so the
worker's Faust app, its topic creation and the command-line tools can never disagree
about how to reach the cluster.

A half-configured setup (a mechanism without a password, a CA file with PLAINTEXT)
raises `KafkaConfigError` naming the variables, instead of silently connecting
without the security the operator asked for. Passwords only ever live in
`SecretStr` and in the client objects; `describe(cfg)` is what may be logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any, Final

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from processor.config.settings import Settings

__all__ = [
    "KafkaAccessError",
    "KafkaConfigError",
    "describe",
    "diagnose",
    "faust_credentials",
    "kafka_client_options",
    "ssl_context",
]

_TLS: Final = frozenset({"SSL", "SASL_SSL"})
_SASL: Final = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
# A diagnosis must not hang as long as a client's default 40 s request timeout.
_PROBE_TIMEOUT_SECONDS: Final = 10.0


class KafkaConfigError(ValueError):
    """The KAFKA_* security settings contradict each other or miss a part."""


class KafkaAccessError(RuntimeError):
    """Kafka could not be reached or refused us; the message says which and why."""


def ssl_context(cfg: Settings) -> ssl.SSLContext:
    """A verifying TLS context: the given CA (else the system's), optional client cert."""
    if (cfg.kafka_ssl_certfile is None) != (cfg.kafka_ssl_keyfile is None):
        raise KafkaConfigError("set both KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE, or neither")
    password = cfg.kafka_ssl_key_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=cfg.kafka_ssl_cafile,
            certfile=cfg.kafka_ssl_certfile,
            keyfile=cfg.kafka_ssl_keyfile,
            password=None if password is None else password.get_secret_value(),
        )
    except (OSError, ssl.SSLError) as exc:
        # Names the file, never the key password.
        raise KafkaConfigError(f"cannot load the KAFKA_SSL_* files: {exc}") from None
    return context


def _sasl(cfg: Settings) -> tuple[str, str, str] | None:
    protocol = cfg.kafka_security_protocol
    given = {
        "KAFKA_SASL_MECHANISM": cfg.kafka_sasl_mechanism,
        "KAFKA_SASL_USERNAME": cfg.kafka_sasl_username,
        "KAFKA_SASL_PASSWORD": cfg.kafka_sasl_password,
    }
    if protocol not in _SASL:
        extra = sorted(name for name, value in given.items() if value is not None)
        if extra:
            raise KafkaConfigError(
                f"{', '.join(extra)} set, but KAFKA_SECURITY_PROTOCOL is {protocol}; "
                "use SASL_SSL (or SASL_PLAINTEXT) to authenticate"
            )
        return None
    missing = sorted(name for name, value in given.items() if not value)
    if missing:
        raise KafkaConfigError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(missing)}")
    assert cfg.kafka_sasl_mechanism and cfg.kafka_sasl_username and cfg.kafka_sasl_password
    return (
        cfg.kafka_sasl_mechanism,
        cfg.kafka_sasl_username,
        cfg.kafka_sasl_password.get_secret_value(),
    )


def _check_tls_files(cfg: Settings) -> None:
    if cfg.kafka_security_protocol in _TLS:
        return
    files = {
        "KAFKA_SSL_CAFILE": cfg.kafka_ssl_cafile,
        "KAFKA_SSL_CERTFILE": cfg.kafka_ssl_certfile,
        "KAFKA_SSL_KEYFILE": cfg.kafka_ssl_keyfile,
    }
    extra = sorted(name for name, value in files.items() if value is not None)
    if extra:
        raise KafkaConfigError(
            f"{', '.join(extra)} set, but KAFKA_SECURITY_PROTOCOL is "
            f"{cfg.kafka_security_protocol}; use SSL or SASL_SSL for TLS"
        )


def kafka_client_options(cfg: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client: security protocol, SASL, TLS."""
    _check_tls_files(cfg)
    options: dict[str, Any] = {"security_protocol": cfg.kafka_security_protocol}
    if cfg.kafka_security_protocol in _TLS:
        options["ssl_context"] = ssl_context(cfg)
    sasl = _sasl(cfg)
    if sasl is not None:
        mechanism, username, password = sasl
        options.update(
            sasl_mechanism=mechanism,
            # aiokafka's names; SCRAM uses the same two settings as PLAIN.
            sasl_plain_username=username,
            sasl_plain_password=password,
        )
    return options


def faust_credentials(cfg: Settings) -> Any:
    """Faust's `broker_credentials` for the same settings; None for PLAINTEXT."""
    import faust

    _check_tls_files(cfg)
    context = ssl_context(cfg) if cfg.kafka_security_protocol in _TLS else None
    sasl = _sasl(cfg)
    if sasl is not None:
        mechanism, username, password = sasl
        # Faust picks SASL_SSL itself when it is given a TLS context.
        return faust.SASLCredentials(
            username=username, password=password, mechanism=mechanism, ssl_context=context
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def describe(cfg: Settings) -> str:
    """How we connect, for logs and error messages: never a password."""
    parts: list[str] = [cfg.kafka_security_protocol]
    if cfg.kafka_sasl_mechanism:
        parts.append(cfg.kafka_sasl_mechanism)
    if cfg.kafka_sasl_username:
        parts.append(f"as {cfg.kafka_sasl_username!r}")
    return " ".join(parts)


def _describe_options(options: dict[str, Any]) -> str:
    parts = [str(options.get("security_protocol", "PLAINTEXT"))]
    if options.get("sasl_mechanism"):
        parts.append(str(options["sasl_mechanism"]))
    if options.get("sasl_plain_username"):
        parts.append(f"as {options['sasl_plain_username']!r}")
    return " ".join(parts)


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    hosts = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            hosts.append((host.strip("[]"), int(port)))
    return hosts


async def diagnose(bootstrap: str, options: dict[str, Any], how: str = "") -> KafkaAccessError:
    """Why clients with these options cannot use the cluster, as one clear error.

    aiokafka's bootstrap logs the cause and then raises only "Unable to bootstrap";
    a single direct connection per broker gets the broker's own answer (wrong
    password, unsupported mechanism, TLS failure, refused).
    """
    how = how or _describe_options(options)
    reasons: list[str] = []
    for host, port in _hosts(bootstrap):
        try:
            async with asyncio.timeout(_PROBE_TIMEOUT_SECONDS):
                conn = await create_conn(
                    host, port, request_timeout_ms=int(_PROBE_TIMEOUT_SECONDS * 1000), **options
                )
        except KafkaError as exc:
            name = type(exc).__name__
            if "Sasl" in name or "Authentication" in name:
                return KafkaAccessError(
                    f"Kafka at {host}:{port} refused our credentials ({how}): "
                    f"{exc}; check KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD"
                )
            reasons.append(f"{host}:{port}: {exc!r}")
        except (OSError, TimeoutError) as exc:
            reasons.append(f"{host}:{port}: {exc!r}")
        else:
            with contextlib.suppress(Exception):
                conn.close()
            reasons.append(f"{host}:{port}: connects and authenticates, but metadata failed")
    detail = "; ".join(reasons) or f"no host:port in {bootstrap!r}"
    return KafkaAccessError(f"cannot use Kafka at {bootstrap} ({how}): {detail}")
