"""Local Kafka broker and PostgreSQL server for development, tests and the demo."""

from xmatch_pipeline.devtools.devstack.errors import (
    DevstackError,
    PortInUseError,
    PrerequisiteMissingError,
    ServiceStartError,
)
from xmatch_pipeline.devtools.devstack.settings import DevstackSettings, devstack_settings
from xmatch_pipeline.devtools.devstack.stack import (
    ServiceHealth,
    check_health,
    ensure_devstack_running,
    stop_devstack,
)

__all__ = [
    "DevstackError",
    "DevstackSettings",
    "PortInUseError",
    "PrerequisiteMissingError",
    "ServiceHealth",
    "ServiceStartError",
    "check_health",
    "devstack_settings",
    "ensure_devstack_running",
    "stop_devstack",
]
