"""How to reach the log: Kafka's address and its security (TLS, SASL), defined once for every client.

It lives beside the topic names because both the services and the projections open Kafka clients, and the
projections may not import the services. One frozen value carries the bootstrap servers with the credentials, so
no factory can forget the security options a cluster requires: every producer, consumer, admin and raw client is
built from ``KafkaConnection.client_options()``.

Secrets: the SASL password and the key's password are left out of ``repr`` and ``str``, so a connection in a log
line or an error message shows only where it points and how it authenticates, never with what.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

__all__ = ["KafkaConnection", "KafkaTarget", "SaslMechanism", "SecurityProtocol", "kafka_connection"]

SecurityProtocol: TypeAlias = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism: TypeAlias = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


@dataclass(frozen=True)
class KafkaConnection:
    """Kafka's bootstrap servers and the security every client of tickflow uses to reach them.

    ``ssl_cafile`` is the CA bundle (PEM) that signed the brokers' certificates (None: the system's CAs);
    ``ssl_certfile``/``ssl_keyfile`` a client certificate for mutual TLS. ``ssl_check_hostname`` stays on unless
    the brokers' certificates do not name the addresses they are reached at.
    """

    bootstrap: str
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        if not self.bootstrap:
            raise ValueError("Kafka bootstrap servers are required (host:port[,host:port…])")
        if self.security_protocol not in get_args(SecurityProtocol):
            raise ValueError(f"security protocol must be one of {get_args(SecurityProtocol)}, not "
                             f"{self.security_protocol!r}")
        if self.uses_sasl:
            if self.sasl_mechanism not in get_args(SaslMechanism):
                raise ValueError(f"{self.security_protocol} needs a SASL mechanism, one of {get_args(SaslMechanism)}")
            if not self.sasl_username or not self.sasl_password:
                raise ValueError(f"{self.security_protocol} with {self.sasl_mechanism} needs a username and a password")
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password:
            raise ValueError(f"SASL credentials are set but the security protocol {self.security_protocol} does not "
                             "use them: choose SASL_SSL (or SASL_PLAINTEXT on a trusted network)")
        if not self.uses_tls and (self.ssl_cafile or self.ssl_certfile or self.ssl_keyfile):
            raise ValueError(f"TLS files are set but the security protocol {self.security_protocol} does not use "
                             "TLS: choose SSL or SASL_SSL")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("a client certificate needs both its certificate file and its key file")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def __str__(self) -> str:
        who = f" as {self.sasl_username} ({self.sasl_mechanism})" if self.uses_sasl else ""
        return f"{self.bootstrap} over {self.security_protocol}{who}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context: TLS 1.2 or newer, the brokers' certificates verified against ``ssl_cafile``.

        Built anew for each client, so a rotated CA or client certificate is picked up by the next client."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile and self.ssl_keyfile:
            context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=self.ssl_key_password)
        return context

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client (producer, consumer, admin, raw) takes to connect."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        return options


#: Where a Kafka client connects: a connection, or a bare ``host:port`` list for a plaintext cluster.
KafkaTarget: TypeAlias = KafkaConnection | str


def kafka_connection(target: KafkaTarget) -> KafkaConnection:
    """``target`` as a connection (a bare address means plaintext, as on the local broker)."""
    return target if isinstance(target, KafkaConnection) else KafkaConnection(target)
