"""Kafka connection settings: what every client is given, what is refused at start, and that a password never shows."""

from __future__ import annotations

import ssl

import pytest
from pydantic import ValidationError

from tickflow.events.connection import KafkaConnection, kafka_connection
from tickflow.settings import Settings

PASSWORD = "s3cret-Pa55word"


def test_a_bare_address_is_plaintext_with_nothing_else() -> None:
    assert kafka_connection("h:1").client_options() == {"bootstrap_servers": "h:1", "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_gives_every_client_credentials_and_a_verifying_tls_context() -> None:
    options = KafkaConnection("h:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                              sasl_username="u", sasl_password=PASSWORD).client_options()
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("u", PASSWORD)
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs a SASL mechanism"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "username and a password"),
        ({"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"}, "does not use them"),
        ({"ssl_cafile": "/ca.pem"}, "does not use TLS"),
        ({"security_protocol": "SSL", "ssl_certfile": "/c.pem"}, "both its certificate file and its key file"),
        ({"security_protocol": "TLS"}, "security protocol must be one of"),
    ],
)
def test_incoherent_settings_are_refused_with_what_to_fix(kwargs: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        KafkaConnection("h:1", **kwargs)  # type: ignore[arg-type]


def test_the_password_is_in_no_repr_and_no_str() -> None:
    connection = KafkaConnection("h:1", security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u",
                                 sasl_password=PASSWORD, ssl_key_password=PASSWORD)
    assert PASSWORD not in repr(connection) and PASSWORD not in str(connection)
    assert str(connection) == "h:1 over SASL_SSL as u (PLAIN)"


def test_settings_read_security_from_the_environment_and_never_print_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TICKFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TICKFLOW_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TICKFLOW_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("TICKFLOW_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("TICKFLOW_KAFKA_SSL_CAFILE", "/etc/kafka/ca.pem")
    settings = Settings()
    assert settings.kafka.sasl_password == PASSWORD and settings.kafka.ssl_cafile == "/etc/kafka/ca.pem"
    assert settings.with_(prefix="other").kafka.sasl_password == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.kafka)


def test_a_settings_error_names_the_variables_and_not_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_KAFKA_SASL_PASSWORD", PASSWORD)  # SASL credentials on a PLAINTEXT connection
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "TICKFLOW_KAFKA_SECURITY_PROTOCOL" in str(refused.value)
    assert PASSWORD not in str(refused.value)
