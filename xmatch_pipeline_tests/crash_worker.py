"""A micro-batch run that SIGKILLs its own process at a named stage (for the crash tests).

Run as ``python -m xmatch_pipeline_tests.crash_worker STAGE OCCURRENCE TOPIC PARTITION START
END RUN_ID`` with the pipeline's settings in the environment. SIGKILL leaves no chance to
clean up (no ``finally``, no abort, no unlock), exactly like an OOM kill or a lost machine.
If the stage is never reached the run finishes and the process exits 0, which the test
reports as a kill that did not happen.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from xmatch_pipeline.microbatch.offset_range import OffsetRange
from xmatch_pipeline.microbatch.runner import STAGES, MicrobatchRunner
from xmatch_pipeline.services import PipelineServices
from xmatch_pipeline.settings import load_settings

#: Time for the producer's background thread to send what is queued, so that the killed
#: run's uncommitted output really is on the broker (the test checks it stays invisible).
DELIVERY_GRACE_SECONDS = 0.5


class _KillAt:
    """Counts the stage's occurrences (once per chunk for the first two) and kills at one."""

    def __init__(self, stage: str, occurrence: int) -> None:
        if stage not in STAGES:
            raise SystemExit(f"unknown stage {stage!r}; choose one of {STAGES}")
        self.stage = stage
        self.occurrence = occurrence
        self.seen = 0

    def __call__(self, stage: str) -> None:
        if stage != self.stage:
            return
        self.seen += 1
        if self.seen == self.occurrence:
            time.sleep(DELIVERY_GRACE_SECONDS)
            os.kill(os.getpid(), signal.SIGKILL)


def main(arguments: list[str]) -> int:
    if len(arguments) != 7:
        print(__doc__, file=sys.stderr)
        return 2
    stage, occurrence, topic, partition, start, end, run_id = arguments
    services = PipelineServices(load_settings(os.environ))
    runner = MicrobatchRunner(
        services.microbatch_config(),
        services.crossmatch_engine,
        services.database,
        stage_hook=_KillAt(stage, int(occurrence)),
    )
    runner.run(OffsetRange(topic, int(partition), int(start), int(end)), run_id=run_id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
