"""Ctrl-C and SIGTERM while a run trains: the first asks it to stop at its next safe point (after
the step, between gradient-accumulation micro-batches, between evaluation batches) and save a
checkpoint; a second stops it at once (`stop_now`, exit 130 for Ctrl-C), which loses only the work
since the last checkpoint, because every checkpoint is written into a temp dir and renamed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# a Ctrl-C in a terminal reaches every process of the foreground group, and torchrun forwards its own
# copy to each worker as well: under torchrun a second signal this soon after the first is that copy
TORCHRUN_ECHO_S = 1.0


def stop_now(signum: int) -> KeyboardInterrupt:
    """What a second stop signal raises: a KeyboardInterrupt (which no `except Exception` keeps) that
    says which signal it was (`signum`), unlike the one a Ctrl-C raises before the handlers are in place."""
    stop = KeyboardInterrupt(signal.Signals(signum).name)
    stop.signum = signum  # type: ignore[attr-defined]
    return stop


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopRequests:
    """Installs SIGINT and SIGTERM handlers for a `with` block; `signum` is the first signal caught.

    `where` ("after this step", ...) is what the first signal's message promises; `announce` is
    false on every rank but the first, so that one line is printed per run.
    """

    def __init__(self, *, announce: bool, under_torchrun: bool) -> None:
        self.announce = announce
        self.echo_s = TORCHRUN_ECHO_S if under_torchrun else 0.0
        self.where = "after this step"
        self.signum: int | None = None
        self._first_at = 0.0
        self._deferred = 0
        self._pending: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequests:
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a second signal does not cut short (files that land together): it stops
        right after the block instead."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        if self._deferred == 0 and self._pending is not None:
            raise stop_now(self._pending)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
            again = "Ctrl-C again" if signum == signal.SIGINT else f"{signal_name(signum)} again"
            self._say(f"{signal_name(signum)}: stopping {self.where} ({again} to stop now)")
            return
        if time.monotonic() - self._first_at < self.echo_s:
            return
        if self._deferred:
            self._pending = signum
            return
        raise stop_now(signum)

    def _say(self, line: str) -> None:
        """One line on stderr, written with os.write: a handler may run while print is writing."""
        if self.announce:
            os.write(2, (line + "\n").encode())
