"""Clients used as ``with`` blocks: leaving the block closes them, whatever happened."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosedOnExit:
    """Gives a class with ``close()`` the ``with`` protocol; ``__enter__`` returns the client."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
