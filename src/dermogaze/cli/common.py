"""What every command of the ``dermogaze`` command line shares: the parser class, argument types, the runtime
flags, the output checks made before any work, and the one-line form of an operating-system error.

Importing this module costs the standard library only; :func:`add_runtime_arguments` reads its choices from
:mod:`dermogaze.config` when a command's parser is built.
"""

from __future__ import annotations

import argparse
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ..errors import DermogazeError

#: What to do about an operating-system error, by ``errno``.
_OS_HINTS: dict[int, str] = {
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENOSPC: "free some disk space, or choose a folder on another disk",
    errno.EDQUOT: "free some disk space, or choose a folder on another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way where a folder is needed",
    errno.EISDIR: "a file is needed there, not a folder",
    errno.ENOENT: "check the path",
}
#: Errors that only a write produces (the others may come from a read as well).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are one ``dermogaze: error:`` line (status 2), like every other
    error of the command; the usage it leaves out is one ``--help`` away. Subcommand parsers are of this
    class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dermogaze: error: {message} (see '{self.prog} --help')\n")


def describe_os_error(exc: OSError, out: str | Path | None = None) -> str:
    """One line for an operating-system error: the path, the system's reason and what to do.

    Args:
        exc: the error; its ``filename`` names the path when the system call had one.
        out: the command's output folder, named when the error has no path (a failed write to an
            open file, e.g. a full disk).
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        verb = "write" if exc.errno in _WRITE_ERRNOS else "read" if exc.errno == errno.ENOENT else "access"
        text = f"cannot {verb} {os.fsdecode(exc.filename)}: {reason}"
    elif out is not None:
        text = f"cannot write under {out}: {reason}"
    else:
        text = reason
    hint = _OS_HINTS.get(exc.errno or 0)
    return f"{text} ({hint})" if hint else text


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be written.

    Args:
        path: the folder the command will create or fill.
        option: the flag that named it, for the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DermogazeError: naming the file in the way or the folder without write permission.
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise DermogazeError(
                    f"{option} {path}: cannot write in {folder} (permission denied or read-only): choose another folder"
                )
            return path
        if folder.exists() or folder.is_symlink():
            where = "is not a folder" if folder == path else f"lies under {folder}, which is not a folder"
            raise DermogazeError(f"{option} {path} {where}: give a folder (it is created if missing)")
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output file that is a folder, lies under a file, or whose folder cannot be
    written (:func:`check_output_folder` for a file; its folder is created if missing).

    Raises:
        DermogazeError: naming the folder in the way, the file in the way or the folder without write permission.
    """
    path = Path(path)
    if path.is_dir():
        raise DermogazeError(f"{option} {path} is a folder: give the file to write, e.g. {path / 'model.onnx'}")
    for folder in path.parents:
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise DermogazeError(
                    f"{option} {path}: cannot write in {folder} (permission denied or read-only): choose another folder"
                )
            return path
        if folder.exists() or folder.is_symlink():
            raise DermogazeError(f"{option} {path} lies under {folder}, which is not a folder: give another path")
    return path


# ----------------------------------------------------------------------------------------------
# Argument types and shared flags
# ----------------------------------------------------------------------------------------------
def _int_at_least(minimum: int) -> Callable[[str], int]:
    """``argparse`` type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def add_device_argument(p: argparse.ArgumentParser, *, from_config: bool = False) -> None:
    """``--device auto|cpu|cuda`` (default ``auto``; with ``from_config``, unset leaves the configuration's)."""
    from ..config import DEVICES

    p.add_argument("--device", choices=DEVICES, default=None if from_config else "auto",
                   help="compute device (default: auto, the GPU when there is one)")


def add_runtime_arguments(
    p: argparse.ArgumentParser, *, amp: bool = True, workers: bool = True, from_config: bool = False
) -> None:
    """``--device``, ``--amp``, ``--workers``, ``--no-progress``.

    With ``from_config`` (``train``, ``table3``, ``sweep``), an unset flag leaves the configuration's value
    (whose defaults are the same: ``auto``, ``off``, 0).
    """
    from ..config import AMP_MODES

    add_device_argument(p, from_config=from_config)
    if amp:
        p.add_argument("--amp", choices=AMP_MODES, default=None if from_config else "off",
                       help="mixed precision on CUDA (default: off)")
    if workers:
        p.add_argument("--workers", type=non_negative_int, default=None if from_config else 0, metavar="N",
                       help="data-loader worker processes (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
