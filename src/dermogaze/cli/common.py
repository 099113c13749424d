"""What every command of the ``dermogaze`` command line shares: the parser class, argument types, the runtime
flags, the output checks made before any work, and the one-line form of an operating-system error.

Importing this module costs the standard library only; :func:`add_runtime_arguments` reads its choices from
:mod:`dermogaze.config` when a command's parser is built.

Numeric flags are bounded by their argument types (:func:`int_in`, :func:`number_in`): a value beyond what any
machine could finish or hold is one usage line naming the flag, its limit and why, before any work. The limits
are constants beside what they bound (:mod:`dermogaze.config`'s for the quantities a configuration holds too);
the types that need one import it when they parse.
"""

from __future__ import annotations

import argparse
import errno
import math
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
    errno.EFBIG: "the file is larger than the file system or the limit on file sizes (ulimit -f) allows",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way where a folder is needed",
    errno.EISDIR: "a file is needed there, not a folder",
    errno.ENOENT: "check the path",
}
#: Errors that only a write produces (the others may come from a read as well).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


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
    """Refuse, before any work, an output file that is a folder, a device, a FIFO or a socket (symbolic links
    followed), lies under a file, or whose folder cannot be written (:func:`check_output_folder` for a file; its
    folder is created if missing). An existing regular file is replaced, through :func:`dermogaze.files.atomic_write`,
    which refuses the same paths.

    Raises:
        DermogazeError: naming the folder in the way, the special file, the file in the way or the folder without
            write permission.
    """
    from ..files import check_file_kind

    path = Path(path)
    if path.is_dir():
        raise DermogazeError(f"{option} {path} is a folder: give the file to write, e.g. {path / 'model.onnx'}")
    check_file_kind(path, option, "give the path of a regular file to write (dermogaze never writes into devices, "
                    "FIFOs or sockets)")
    for folder in Path(os.path.realpath(path)).parents:
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
def int_in(low: int, high: int | None = None, why: str | tuple[str, str] = "") -> Callable[[str], int]:
    """``argparse`` type: an integer from ``low`` to ``high`` (``None``: no upper end).

    A value outside is refused in one line naming the end it crosses and, after a colon, the reason for the
    bounds: ``why``, or ``why[0]`` below ``low`` and ``why[1]`` above ``high``.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            end = f">= {low}" if value < low else f"<= {high}"
            reason = why if isinstance(why, str) else why[value > low]
            message = f"expected an integer {end}, got {value}"
            raise argparse.ArgumentTypeError(f"{message}: {reason}" if reason else message)
        return value

    return parse


def number_in(low: float, high: float, why: str = "") -> Callable[[str], float]:
    """``argparse`` type: a finite number above ``low`` and at most ``high`` (a multiplier, a scale), refused
    like :func:`int_in` otherwise."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if not low < value <= high:
            end = f"> {low:g}" if value <= low else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"expected a number {end}, got {value:g}" + (f": {why}" if why else ""))
        return value

    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)


def seed_int(text: str) -> int:
    """``argparse`` type of every ``--seed``: an integer from 0 to :data:`dermogaze.config.MAX_SEED`."""
    from ..config import MAX_SEED

    return int_in(0, MAX_SEED, ("", "seeds are 32-bit"))(text)


def workers_int(minimum: int = 0) -> Callable[[str], int]:
    """``argparse`` type of a ``--workers`` (processes): ``minimum`` to :data:`dermogaze.config.MAX_WORKERS`."""

    def parse(text: str) -> int:
        from ..config import MAX_WORKERS

        return int_in(minimum, MAX_WORKERS, "each worker is a process; more than a machine's cores only add memory")(
            text
        )

    return parse


def batch_size_int(text: str) -> int:
    """``argparse`` type of ``--batch-size``: 1 to :data:`dermogaze.config.MAX_BATCH_SIZE` images."""
    from ..config import MAX_BATCH_SIZE

    return int_in(1, MAX_BATCH_SIZE, "a larger batch only exhausts the memory")(text)


def bootstrap_int(text: str) -> int:
    """``argparse`` type of ``--bootstrap``: resamples of the bootstrap intervals, from
    :data:`~dermogaze.metrics.clinical.MIN_BOOTSTRAP_RESAMPLES` to
    :data:`~dermogaze.metrics.clinical.MAX_BOOTSTRAP_RESAMPLES` (the reasons are theirs)."""
    from ..metrics.clinical import MAX_BOOTSTRAP_RESAMPLES, MIN_BOOTSTRAP_RESAMPLES

    why = ("the ends of a 95% interval are the 2.5th and 97.5th percentiles of the resamples: fewer give intervals "
           "that mean nothing", "more add time, not precision (default 2000)")
    return int_in(MIN_BOOTSTRAP_RESAMPLES, MAX_BOOTSTRAP_RESAMPLES, why)(text)


def add_device_argument(p: argparse.ArgumentParser, *, from_config: bool = False) -> None:
    """``--device auto|cpu|cuda`` (default ``auto``; with ``from_config``, unset leaves the configuration's)."""
    from ..config import DEVICES

    p.add_argument("--device", choices=DEVICES, default=None if from_config else "auto",
                   help="compute device (default: auto, the GPU when there is one)")


def add_amp_argument(p: argparse.ArgumentParser, *, from_config: bool = False, follows_machine: str | None = None
                     ) -> None:
    """``--amp off|bf16|fp16`` (default ``off``; with ``from_config``, unset leaves the configuration's; with
    ``follows_machine`` = ``"demo"`` or ``"serve"``, unset is :func:`dermogaze.runtime.default_amp` of that command,
    its reason in the help)."""
    from ..config import AMP_MODES

    default = {
        None: "off)",
        "demo": "off: a bf16-trained demo moved the named pointing game by up to 0.11, "
                "benchmarks/results/bf16_parity.md)",
        "serve": "bf16 on a CPU with native bf16, where a checkpoint's P(melanoma) stays within 0.01 of float32's, "
                 "benchmarks/results/bf16_parity.md; off elsewhere)",
    }[follows_machine]
    p.add_argument(
        "--amp", choices=AMP_MODES, default=None if from_config or follows_machine else "off",
        help="precision of the network's passes: bf16 autocasts on a CUDA GPU and on a CPU with native bf16 (AVX-512 "
        "BF16 or AMX; another CPU runs float32 and says so), fp16 on a CUDA GPU only; weights, optimiser, loss, "
        "calibration and metrics stay float32 (default: " + default,
    )


def add_runtime_arguments(
    p: argparse.ArgumentParser,
    *,
    amp: bool = True,
    workers: bool = True,
    from_config: bool = False,
    follows_machine: str | None = None,
) -> None:
    """``--device``, ``--amp``, ``--workers``, ``--no-progress``.

    With ``from_config`` (``train``, ``table3``, ``sweep``), an unset flag leaves the configuration's value
    (whose defaults are the same: ``auto``, ``off``, 0). ``follows_machine``: see :func:`add_amp_argument`.
    """
    add_device_argument(p, from_config=from_config)
    if amp:
        add_amp_argument(p, from_config=from_config, follows_machine=follows_machine)
    if workers:
        p.add_argument("--workers", type=workers_int(), default=None if from_config else 0, metavar="N",
                       help="data-loader worker processes (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
