"""The one Dagster resource: the pipeline's clients, for the settings it was built with.

``build_definitions`` builds it from the settings validated when the code location loads,
and tests build it from settings of their own, so nothing here reads the environment.
Settings (and so secrets) never go through run config, so they never show in the
launchpad or in a run's config. The clients are the process's warm ones
(``xmatch_pipeline.warm_services``): a long-lived worker reuses them run after run.
"""

from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import PipelineSettings
from xmatch_pipeline.warm_services import warm_services


class XmatchResource:
    """The process's long-lived clients for the micro-batch job, the backfill job and the
    lag sensor (ops and the sensor take it as ``ResourceParam[XmatchResource]``)."""

    def __init__(self, settings: PipelineSettings) -> None:
        self.settings = settings

    def services(self) -> PipelineServices:
        return warm_services(self.settings)
