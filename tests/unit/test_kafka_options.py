"""processor/kafka/options.py: one source of SASL/TLS options for Faust and aiokafka."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types.auth import AuthProtocol, SASLMechanism

from processor.config.settings import Settings
from processor.core.rate_card_parser import example_rate_card_path, load_rate_card
from processor.kafka.options import (
    KafkaConfigError,
    describe,
    faust_credentials,
    kafka_client_options,
)
from processor.worker.app import Broker, Meter

PASSWORD = "pa55-w0rd-never-shown"
CA = ssl.get_default_verify_paths().cafile


def settings(**env: Any) -> Settings:
    return Settings(_env_file=None, **env)


SCRAM = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "meter",
    "KAFKA_SASL_PASSWORD": PASSWORD,
}


def test_plaintext_by_default() -> None:
    cfg = settings()
    assert kafka_client_options(cfg) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(cfg) is None
    assert describe(cfg) == "PLAINTEXT"


def test_sasl_scram_for_aiokafka_and_faust() -> None:
    cfg = settings(**SCRAM)
    assert kafka_client_options(cfg) == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "meter",
        "sasl_plain_password": PASSWORD,
    }
    creds = faust_credentials(cfg)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism is SASLMechanism.SCRAM_SHA_512
    assert creds.protocol is AuthProtocol.SASL_PLAINTEXT
    assert (creds.username, creds.password) == ("meter", PASSWORD)


@pytest.mark.skipif(not CA or not Path(CA).is_file(), reason="no system CA bundle")
def test_sasl_ssl_plain_and_plain_tls() -> None:
    cfg = settings(
        **{**SCRAM, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
        KAFKA_SSL_CAFILE=CA,
    )
    options = kafka_client_options(cfg)
    assert options["security_protocol"] == "SASL_SSL" and options["sasl_mechanism"] == "PLAIN"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    # Brokers are verified: a TLS setting must never mean "encrypted to anyone".
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    creds = faust_credentials(cfg)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_SSL and creds.ssl_context is not None

    tls = settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=CA)
    assert set(kafka_client_options(tls)) == {"security_protocol", "ssl_context"}
    assert isinstance(faust_credentials(tls), faust.SSLCredentials)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM"),
        ({**SCRAM, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD"),
        ({**SCRAM, "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME"),
        ({**SCRAM, "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"}, "use SASL_SSL"),
        ({"KAFKA_SSL_CAFILE": "/etc/ca.pem"}, "use SSL or SASL_SSL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c.pem"},
            "KAFKA_SSL_KEYFILE",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/such/ca.pem"},
            "cannot load the KAFKA_SSL_* files",
        ),
    ],
)
def test_half_configured_security_is_refused_naming_the_variable(
    env: dict[str, str], named: str
) -> None:
    cfg = settings(**env)
    with pytest.raises(KafkaConfigError, match=named.replace("*", r"\*")) as exc_info:
        kafka_client_options(cfg)
    assert PASSWORD not in str(exc_info.value)
    with pytest.raises(KafkaConfigError):
        faust_credentials(cfg)


def test_unknown_protocol_or_mechanism_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match=r"KAFKA_SECURITY_PROTOCOL|kafka_security_protocol"):
        settings(KAFKA_SECURITY_PROTOCOL="SASL")
    with pytest.raises(ValueError, match=r"KAFKA_SASL_MECHANISM|kafka_sasl_mechanism"):
        settings(**{**SCRAM, "KAFKA_SASL_MECHANISM": "GSSAPI"})


def test_secrets_never_show_in_descriptions_or_settings_dumps() -> None:
    cfg = settings(**SCRAM, METER_ADMIN_TOKEN="admin-t0ken")
    assert describe(cfg) == "SASL_PLAINTEXT SCRAM-SHA-512 as 'meter'"
    for text in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(faust_credentials(cfg))):
        assert PASSWORD not in text and "admin-t0ken" not in text


def test_the_worker_app_gets_the_credentials() -> None:
    meter = Meter(
        settings(**SCRAM),
        load_rate_card(example_rate_card_path()),
        Broker("127.0.0.1:1"),
        partitions=1,
    )
    creds = meter.app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism is SASLMechanism.SCRAM_SHA_512
