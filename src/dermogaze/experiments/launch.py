"""``dermogaze train`` in a child process that dies with its parent (used by ``table3`` and ``sweep``).

An experiment that trains in child processes must not leave one behind when it is interrupted:
an orphan would keep training and hold its run folder's lock. On Linux the child asks the kernel,
before it executes the command, for a signal when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
elsewhere nothing is asked and the parent stops its children itself on the way out.
"""

from __future__ import annotations

import ctypes
import functools
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import IO

#: ``prctl`` option (``linux/prctl.h``): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def train_command(args: Sequence[str], launcher: str | None = None) -> list[str]:
    """The command line ``LAUNCHER -m dermogaze train ARGS``.

    Args:
        args: the arguments of ``dermogaze train``.
        launcher: a command that runs a Python program's ``-m`` (e.g. ``torchrun --standalone
            --nproc-per-node 4``), split as a shell would; None: this Python.
    """
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    return [*prefix, "-m", "dermogaze", "train", *args]


def _die_with_parent(death_signal: int) -> None:
    """In the child, before exec: get ``death_signal`` when the parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, death_signal)


def start_child(
    command: Sequence[str],
    *,
    log: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    death_signal: int = signal.SIGKILL,
) -> subprocess.Popen:
    """Start ``command`` in a child process that gets ``death_signal`` when this process dies.

    Args:
        command: the command line (:func:`train_command`).
        log: an open binary file for the child's output and errors; None: this process's terminal.
        env: the child's environment (None: this process's).
        death_signal: ``SIGKILL`` for a training process; ``SIGTERM`` for a launcher such as torchrun,
            which passes it on to its workers.

    Returns:
        The running child.
    """
    return subprocess.Popen(
        list(command), env=None if env is None else dict(env), stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        preexec_fn=functools.partial(_die_with_parent, death_signal) if sys.platform.startswith("linux") else None,
    )

