"""Preflight check of a service port: free, or else say who to ask and what to change."""

from __future__ import annotations

import errno
import socket

from xmatch_pipeline.devtools.devstack.errors import PortInUseError


def port_accepts_connections(host: str, port: int, timeout_seconds: float = 1.0) -> bool:
    """Whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def ensure_port_free(host: str, port: int, service: str, environment_variable: str) -> None:
    """Raise a clear error when ``host:port`` cannot be bound by a service we are about to start.

    Only call it for a service that is not already running from this devstack: our own running
    service holding its port is the idempotent case, handled before.
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Same option the JVM and PostgreSQL use, so a port in TIME_WAIT is not reported as taken.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise PortInUseError(
                f"cannot use {host}:{port} for the devstack's {service}: {error.strerror}. "
                f"Choose another port with {environment_variable}=<port>."
            ) from None
        raise PortInUseError(
            f"port {host}:{port} needed by the devstack's {service} is already in use by another "
            f"program (not this devstack). Stop that program (find it with "
            f"'ss -ltnp sport = :{port}') or choose another port with "
            f"{environment_variable}=<port>."
        ) from None
    finally:
        probe.close()
