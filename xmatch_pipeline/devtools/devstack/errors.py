"""Errors that tell a developer what is missing and how to get it, never a bare stack trace."""

from __future__ import annotations


class DevstackError(RuntimeError):
    """The local services could not be started, stopped or reached; the message says why."""


class PrerequisiteMissingError(DevstackError):
    """A tool, package, network access or permission the devstack needs is not available."""


class PortInUseError(DevstackError):
    """A port the devstack needs is held by a process that is not the devstack's own."""


class ServiceStartError(DevstackError):
    """A service was launched but did not answer in time; the message names its log file."""
