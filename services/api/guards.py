"""Where the API may be reached from: the trusted hosts and the bind check (``tickflow.api.gate`` checks each
unsafe request's origin, credentials and body).

Trusted hosts defend a token-less API on loopback from DNS rebinding: a page of ``evil.example`` that re-resolves
its name to 127.0.0.1 reaches the port, but with ``Host: evil.example``, which is refused (400). An API bound
beyond loopback must have a token (``check_bind`` refuses to start otherwise); then a rebinding page has no
credential, and the hosts default to any.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["LOOPBACK_HOSTS", "allowed_hosts", "check_bind", "is_loopback"]

#: The names a browser on this machine may use for a loopback-bound API.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve the API beyond this machine without a token (every route would be open to the network)."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"TICKFLOW_API_HOST={host} serves the API beyond this machine, and no TICKFLOW_API_TOKEN is set: every "
            "route (starting runs, SQL, admin) would be open to anyone who can reach it. Set TICKFLOW_API_TOKEN, or "
            "bind 127.0.0.1"
        )


def allowed_hosts(host: str, configured: Sequence[str] | None) -> list[str]:
    """The Host header values the API answers: as configured, else the loopback names (and the bind address)
    for a loopback bind, else any (an API beyond loopback has a token; see the module docstring)."""
    if configured:
        return list(configured)
    if is_loopback(host):
        return sorted({*LOOPBACK_HOSTS, host})
    return ["*"]
