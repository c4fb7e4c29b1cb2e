"""Progress that suits the output: tqdm bars on a terminal, plain periodic log lines otherwise.

When stderr is not a terminal (Slurm, nohup, a pipe), bars would write carriage returns and
cursor codes; there `Progress` logs one line per `interval` seconds (and one at the end) through
the `kernelcert.pipeline` logger instead, and nested progress (inside a work unit) is silent.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from types import TracebackType
from typing import Any, Literal, TypeVar

from tqdm.auto import tqdm

logger = logging.getLogger("kernelcert.pipeline")

_T = TypeVar("_T")


def _is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


class Progress:
    """Counts `total` steps; a tqdm bar on a terminal, periodic log lines otherwise, nothing when disabled.

    `nested`: progress inside another one (shown as a transient bar on a terminal, never as lines).
    """

    def __init__(self, total: int | None, enabled: bool, *, desc: str, unit: str, nested: bool = False,
                 interval: float = 30.0) -> None:
        self.total, self.desc, self.unit, self.interval = total, desc, unit, interval
        self.count = 0
        self._bar: Any = None  # a tqdm bar on a terminal
        self._lines = False
        if enabled and _is_terminal():
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=not nested)
        elif enabled and not nested:
            self._lines = True
            self._t0 = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self._log()

    def _log(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        logger.info("%s: %d%s %ss (%.0f s)", self.desc, self.count, of, self.unit, time.monotonic() - self._t0)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._lines:
            self._lines = False
            self._log()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        self.close()
        return False


def progress(iterable: Iterable[_T], enabled: bool, *, desc: str, unit: str, total: int | None = None,
             nested: bool = False) -> Iterator[_T]:
    """Iterate `iterable` while reporting progress (see `Progress`)."""
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    with Progress(total, enabled, desc=desc, unit=unit, nested=nested) as p:
        for item in iterable:
            yield item
            p.update()


__all__ = ["Progress", "progress"]
