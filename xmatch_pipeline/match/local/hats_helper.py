"""The helper process that reads a HATS catalog's metadata with the hats library, so that
long-lived processes never import it (hats_catalog.py says why).

    python -m xmatch_pipeline.match.local.hats_helper DIRECTORY

writes the ``HatsCatalog`` pickled to stdout, or exits with ``FORMAT_ERROR_STATUS`` and the
``HatsFormatError``'s message on stderr.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

from xmatch_pipeline.match.local.hats_catalog import (
    FORMAT_ERROR_STATUS,
    HatsFormatError,
    read_with_hats,
)


def main() -> None:
    answer = sys.stdout.buffer
    sys.stdout = sys.stderr  # whatever a library prints must not mix with the answer
    try:
        catalog = read_with_hats(Path(sys.argv[1]))
    except HatsFormatError as error:
        print(error, file=sys.stderr)
        raise SystemExit(FORMAT_ERROR_STATUS) from None
    answer.write(pickle.dumps(catalog, protocol=pickle.HIGHEST_PROTOCOL))
    answer.flush()


if __name__ == "__main__":
    main()
