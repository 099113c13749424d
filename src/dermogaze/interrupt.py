"""Ctrl-C that is never lost.

CPython runs a signal handler in the main thread at its next bytecode. When that bytecode belongs to a finaliser
run by the garbage collector (a ``__del__`` method, a weakref callback such as SQLAlchemy's), the
``KeyboardInterrupt`` the handler raises cannot propagate: CPython hands it to ``sys.unraisablehook``, which prints
"Exception ignored in ...", and the command carries on as if no key had been pressed (seen on a sweep, whose Optuna
storage leaves such callbacks behind).

The command line therefore runs each command under :func:`catch_interrupts`, which watches that hook for a dropped
``KeyboardInterrupt``, and the long loops (training and inference batches, images prepared, explained or predicted,
the waits of experiments) call :func:`check`, which raises it again: a dropped Ctrl-C stops the command at the next
batch. An interrupt the command catches itself (the viewer's server stops on Ctrl-C and ends normally) is not
dropped, and stays the command's own business.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["catch_interrupts", "check", "pending"]

_dropped = False


def _watching(previous: Callable[[Any], object]) -> Callable[[Any], None]:
    def hook(unraisable: Any) -> None:
        global _dropped
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _dropped = True
        previous(unraisable)

    return hook


def pending() -> bool:
    """Whether a ``KeyboardInterrupt`` was dropped under :func:`catch_interrupts` (cleared when it exits)."""
    return _dropped


def check() -> None:
    """Raise ``KeyboardInterrupt`` again if one was dropped under :func:`catch_interrupts`."""
    if _dropped:
        raise KeyboardInterrupt


@contextlib.contextmanager
def catch_interrupts() -> Iterator[None]:
    """Record, inside the block, a ``KeyboardInterrupt`` that CPython drops, for :func:`check`; one still recorded
    when the block ends is raised then. The SIGINT handler is left as it is (ignored in a background job, say)."""
    global _dropped
    previous = sys.unraisablehook
    sys.unraisablehook = _watching(previous)
    try:
        yield
        check()  # dropped after the last check of a loop: the command still ends as interrupted
    finally:
        sys.unraisablehook = previous
        _dropped = False
