"""Writing files: one atomic write, and the JSON, CSV and text writers built on it.

Every file dermogaze writes (checkpoints, ``config.yaml``, ``metrics.jsonl``, ``metrics.json``,
figures, reports, cache metadata) goes through :func:`atomic_write`: the content goes to a
temporary file in the destination's folder, is flushed to disk, and replaces the destination with
``os.replace`` (atomic on POSIX and Windows), and the folder is flushed too, so that renames reach
the disk in the order they were made. An interrupted write therefore never leaves a truncated file
behind: readers see the previous version or the new one. A process killed during a write leaves
its temporary file (``.<name>.<random>.tmp``); :func:`remove_temporaries` removes those of a file
once no process writes it any more.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from .errors import DataError

T = TypeVar("T")

#: ``atomic_write(RUN/last.pt)`` writes ``RUN/.last.pt.<random>.tmp`` first.
_TEMPORARY_SUFFIX = ".tmp"


def _temporary_prefix(path: Path) -> str:
    """The name of :func:`atomic_write`'s temporary files for ``path`` starts with this."""
    return f".{path.name}."


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process's file-creation mask, read once at import (os.umask can only be read by setting it).
_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None, fsync: bool = True
) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block ends without an exception.

    Args:
        path: the destination (its folder is created).
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        encoding: text encoding (ignored in binary mode).
        newline: as :func:`open` (``""`` for the csv module).
        fsync: flush the file to disk before the rename, and the folder after it (what makes the write
            durable, not only atomic).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=_TEMPORARY_SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide checkpoints and figures from the user's group
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if fsync:
            _fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename just made) to disk; Windows cannot open a folder, and needs no call."""
    if sys.platform == "win32":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # a file system that cannot flush a folder (some network ones): the rename is done
        pass
    finally:
        os.close(fd)


def remove_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_write` calls for ``path`` left beside it.

    Only safe while no other process writes ``path`` (the caller holds the folder, e.g. a run's lock).

    Returns:
        The files removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f"{glob.escape(_temporary_prefix(path))}*{_TEMPORARY_SUFFIX}"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_write(path) as fh:
        fh.write(text)
    return Path(path)


def copy_file(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically (``last.pt`` → ``best.pt``); returns ``dst``."""
    with atomic_write(dst, "wb") as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out)
    return Path(dst)


def to_jsonable(obj: Any) -> Any:
    """Plain Python values only: numpy scalars and arrays become numbers and lists, paths strings,
    tuples lists, and NaN or infinite floats ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented, strictly valid JSON (:func:`to_jsonable` first), atomically."""
    return write_text(json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n", path)


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line (``metrics.jsonl``), atomically."""
    return write_text("".join(json.dumps(to_jsonable(r), allow_nan=False) + "\n" for r in rows), path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; an absent file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]], path: str | Path) -> Path:
    """Write a CSV file (``header`` then ``rows``), atomically."""
    with atomic_write(path, newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def parse_csv_file(path: str | Path, what: str, parse: Callable[[str], T]) -> T:
    """Read a CSV file as UTF-8 text (a byte-order mark tolerated) and ``parse`` it.

    An unreadable file (missing, not UTF-8) and a malformed one (``csv.Error``: an unterminated quote,
    a field beyond ``csv.field_size_limit()``) are one :class:`~dermogaze.errors.DataError` naming the
    file and ``what`` it should have been.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable {what} ({exc})") from None
    try:
        return parse(text)
    except csv.Error as exc:
        raise DataError(f"{path}: malformed {what} ({exc})") from None
