"""The one Dagster resource: the pipeline's clients, built from the environment's settings.

Settings (and so secrets) are read from the environment, never from run config, so they
never show in the launchpad or in a run's config. The clients are the process's warm ones
(``xmatch_pipeline.warm_services``): a long-lived worker reuses them run after run, and
the end of a run only lets go of them, it does not close them.
"""

import os

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings
from xmatch_pipeline.warm_services import warm_services


class XmatchResource(ConfigurableResource):  # type: ignore[type-arg]
    """The process's long-lived clients for the micro-batch job, the backfill job and the
    lag sensor."""

    _services: PipelineServices | None = PrivateAttr(default=None)

    def services(self) -> PipelineServices:
        if self._services is None:
            self._services = warm_services(load_settings(os.environ))
        return self._services

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self._services = None
