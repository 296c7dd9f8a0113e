"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM, between two steps.

Inside :func:`stop_on_signals` a signal only records a request; the training loops call
:func:`check_stop` before each step and raise :class:`Interrupted` there, so no write is ever cut
short: the run folder keeps the last complete checkpoint and no temporary file. A second signal
raises at once (for a run stuck elsewhere, e.g. reading its data). The entry scripts print the
message and exit with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "check_stop", "stop_on_signals"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: list[int] = []  # the signals received inside stop_on_signals


class Interrupted(BaseException):
    """A run stopped by a signal; a ``BaseException``, so no ``except Exception`` swallows it."""

    def __init__(self, signum: int, step: int | None = None, phase: str = "", message: str = ""):
        self.signum, self.step, self.phase = signum, step, phase
        self.message = message or f"interrupted by {signal.Signals(signum).name}"
        super().__init__(self.message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _request(signum: int, frame) -> None:
    _requested.append(signum)
    if len(_requested) > 1:  # asked twice: stop now, wherever the run is
        raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM request a stop inside the block (main thread only; elsewhere nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _request) for s in _SIGNALS}
    _requested.clear()
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        _requested.clear()


def check_stop(step: int, phase: str) -> None:
    """Raise :class:`Interrupted` (at ``step`` of ``phase``) when a stop was requested."""
    if _requested:
        raise Interrupted(_requested[0], step, phase)
