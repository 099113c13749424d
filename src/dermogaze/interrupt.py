"""Ctrl-C that is never lost.

CPython runs a signal handler in the main thread at its next bytecode. When that bytecode belongs to a finaliser
run by the garbage collector (a ``__del__`` method, a weakref callback such as SQLAlchemy's), the
``KeyboardInterrupt`` the handler raises is printed as "Exception ignored in ..." and dropped: the command carries
on as if no key had been pressed (seen on a sweep, whose Optuna storage leaves such callbacks behind).

The command line therefore installs :func:`catch_interrupts`, whose handler records the signal before it raises, and
the long loops (training and inference batches, images written or explained, the waits of experiments) call
:func:`check`, which raises the recorded interrupt again: a dropped Ctrl-C stops the command at the next batch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["catch_interrupts", "check", "pending"]

_pending = False


def _record_and_raise(signum: int, frame: FrameType | None) -> None:
    global _pending
    _pending = True
    raise KeyboardInterrupt


def pending() -> bool:
    """Whether SIGINT arrived under :func:`catch_interrupts` (cleared when it exits)."""
    return _pending


def check() -> None:
    """Raise ``KeyboardInterrupt`` if SIGINT arrived under :func:`catch_interrupts`, even one that was dropped."""
    if _pending:
        raise KeyboardInterrupt


@contextlib.contextmanager
def catch_interrupts() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` and is recorded for :func:`check`, inside the block; a recorded one that
    was dropped is raised again when the block ends.

    Only from the main thread, and only over Python's own handler: a process started with SIGINT ignored (in the
    background by a shell) keeps ignoring it, and a handler someone else installed is left alone.
    """
    global _pending
    ours = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if ours:
        signal.signal(signal.SIGINT, _record_and_raise)
    try:
        yield
        check()  # dropped after the last check of a loop: the command still ends as interrupted
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _pending = False
