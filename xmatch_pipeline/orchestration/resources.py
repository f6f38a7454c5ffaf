"""The one Dagster resource: the pipeline's clients, built from the environment's settings.

Settings (and so secrets) are read from the environment, never from run config, so they
never show in the launchpad or in a run's config.
"""

import os

from dagster import ConfigurableResource, InitResourceContext
from pydantic import PrivateAttr

from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings


class XmatchResource(ConfigurableResource):  # type: ignore[type-arg]
    """Long-lived clients for the micro-batch job, the backfill job and the lag sensor."""

    _services: PipelineServices | None = PrivateAttr(default=None)

    def services(self) -> PipelineServices:
        if self._services is None:
            self._services = PipelineServices(load_settings(os.environ))
        return self._services

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._services is not None:
            self._services.dispose()
            self._services = None
