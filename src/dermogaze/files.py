"""Files: one atomic write, the JSON, CSV and text writers built on it, the one CSV reader, the check of what
kind of file a path is, and the lock that names its holder.

Every file dermogaze writes (checkpoints, ``config.yaml``, ``metrics.jsonl``, ``metrics.json``,
figures, reports, cache metadata) goes through :func:`atomic_write`: the content goes to a
temporary file in the destination's folder, is flushed to disk, and replaces the destination with
``os.replace`` (atomic on POSIX and Windows), and the folder is flushed too, so that renames reach
the disk in the order they were made. An interrupted write therefore never leaves a truncated file
behind: readers see the previous version or the new one. A process killed during a write leaves
its temporary file (``.<name>.<random>.tmp``); :func:`remove_temporaries` removes those of a file
once no process writes it any more.

:func:`atomic_write` never replaces what is not a regular file: a destination that is a folder, a
device (``/dev/null``), a FIFO or a socket, also through a symbolic link, is refused, and a link to a
regular file is written through (the file it names is replaced). A failed write (a full disk) is an
``OSError`` naming the destination; the previous version stays. Readers of the user's files call
:func:`check_file_kind` before opening one: a folder, a device or a FIFO given where a file is wanted is
named as what it is, from ``stat`` alone (a FIFO is never opened, so nothing blocks).

:class:`PidLock` is the one lock of a folder that a single process may write (a run folder, a cache being
prepared): an exclusive ``flock`` on a file that holds the holder's pid, released by the kernel when
the holder dies, so that a lock file left by a killed process is taken over.

Every CSV dermogaze reads (label, metadata, predictions and fixations files) goes through
:func:`parse_csv_file`: one place that tolerates a byte-order mark, refuses repeated column names,
ragged rows and repeated keys, and names the file and line of what it refuses.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import json
import math
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import DataError

try:
    import fcntl
except ImportError:  # Windows: no flock, PidLock locks nothing
    fcntl = None

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

    Raises:
        DataError: ``path`` (or what its symbolic link names) is a folder, a device, a FIFO or a socket.
        OSError: a failed write (a full disk), naming ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), not {mode!r}")
    check_file_kind(path, "output", "dermogaze replaces only regular files; choose another path")
    path = Path(os.path.realpath(path) if os.path.islink(path) else path)  # a link: replace the file it names
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
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a write to the open file failed: name its destination
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
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


#: The kinds of path that are not regular files, by the test of their ``stat`` mode.
_SPECIAL_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def check_file_kind(path: str | Path, what: str, fix: str, *, folder: bool = False) -> Path:
    """Refuse ``path`` when something other than a regular file (or, with ``folder``, a folder) is there.

    Only ``stat`` is called (symbolic links followed): a FIFO is never opened, so nothing blocks. A path
    where nothing is (or that cannot be examined) passes: whether it may be missing is the caller's to say.

    Args:
        path: the path given by the user.
        what: what it names, for the message (``"checkpoint"``, ``"--out"``).
        fix: what to do instead, ending the message.
        folder: a folder is wanted, not a regular file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: ``"{what} {path} is a character device, not a regular file; {fix}"`` (a symbolic link is
            named with the path it leads to).
    """
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # nothing there, a dangling link, a name too long: the caller's open says so
        return Path(path)
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
        return Path(path)
    kind = "a regular file" if stat.S_ISREG(mode) else next(
        (name for test, name in _SPECIAL_KINDS if test(mode)), "a special file"
    )
    if os.path.islink(path):
        kind = f"a link to {os.path.realpath(path)}, {kind}"
    raise DataError(f"{what} {path} is {kind}, not {'a folder' if folder else 'a regular file'}; {fix}")


class PidLock:
    """An exclusive lock held by one process, named by its pid: ``flock`` on ``path``, which holds the holder's pid.

    The kernel releases a ``flock`` when its process dies, so a lock file left by a killed process (its pid
    dead) is taken over by the next :meth:`acquire`. Without ``fcntl`` (Windows) nothing is locked.

    Args:
        path: the lock file (created; its folder must exist).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None

    def acquire(self) -> str | None:
        """Take the lock without waiting.

        Returns:
            None when taken (or on Windows); the holder's pid (as written in the file, ``"unknown"`` if empty)
            when another process holds it.

        Raises:
            OSError: the lock file cannot be created.
        """
        if fcntl is None or self._fd is not None:
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                return holder
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and our lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return None

    def release(self) -> None:
        """Give the lock up (no-op if not held); the file is removed first, while still locked, so that a process
        that opened it meanwhile sees it gone and retries on a new one."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


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
    import numpy as np  # here, not at the top: the command line's start-up imports this module (via config)

    def convert(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {str(k): convert(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [convert(v) for v in obj]
        if isinstance(obj, np.ndarray):
            return convert(obj.tolist())
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

    return convert(obj)


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


#: The largest CSV file :func:`parse_csv_file` reads: ten times the largest published ISIC table (the ISIC
#: archive's metadata export, some tens of megabytes); a larger file is refused before it is loaded.
MAX_CSV_BYTES = 512 << 20


@dataclasses.dataclass(frozen=True)
class CsvTable:
    """A CSV file read by :func:`parse_csv_file`.

    Attributes:
        path: the file.
        columns: the header, each name stripped and in lower case (``()`` for an empty file).
        rows: ``(line, {column: cell})`` per row that is not blank, in file order; ``line`` is the row's line in
            the file (its last one, for a quoted value spanning lines); cells as written.
        key: the key column (the first of the caller's ``key`` names that the header holds), or None.
    """

    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[int, dict[str, str]], ...]
    key: str | None = None


def parse_csv_file(
    path: str | Path,
    what: str,
    *,
    key: str | Sequence[str] | None = None,
    same_key: Callable[[str], str] | None = None,
) -> CsvTable:
    """Read a CSV file: the one reader of every CSV dermogaze takes (labels, metadata, predictions, fixations).

    The file is UTF-8 text, a byte-order mark tolerated (what spreadsheet programs write); blank lines are
    skipped. Refused, each in one :class:`~dermogaze.errors.DataError` naming the file, ``what`` it should
    be and, for a row, its line: a missing, unreadable or non-UTF-8 file, a folder, FIFO or device
    (:func:`check_file_kind`: never opened, so nothing blocks), a file above :data:`MAX_CSV_BYTES`,
    malformed CSV (``csv.Error``: an unterminated quote, a field beyond ``csv.field_size_limit()``),
    a column name that appears twice (names compared stripped and in lower case), a row with more values than
    the header has columns (a value holding an unquoted comma shifts every value after it; empty values after
    the last column are tolerated), and in a file keyed by ``key`` a key that repeats. The missing cells of a
    shorter row are empty.

    Args:
        path: the CSV file.
        what: what the file is, for messages (``"label CSV"``).
        key: the column that names each row (or names to try, the first present wins): a non-empty key that
            appears on two rows is refused, naming both lines. Empty keys are left to the caller.
        same_key: the form in which two keys are the same (e.g. case-insensitive image ids); default: as written.

    Returns:
        the header and the rows (:class:`CsvTable`).
    """
    path = check_file_kind(path, what, f"give the {what}")
    try:
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise DataError(f"{path}: {size / 2**20:.0f} MiB, too large for a {what} (at most "
                            f"{MAX_CSV_BYTES >> 20} MiB are read)")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: unreadable {what} (not UTF-8 text at byte {exc.start}: save it as CSV UTF-8)") \
            from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable {what} ({exc.strerror or exc})") from None
    reader = csv.reader(text.splitlines(), strict=True)
    try:
        header = next(reader, [])
        columns = tuple(c.strip().lower() for c in header)
        first = {}
        for k, name in enumerate(columns):
            if name and first.setdefault(name, k) != k:
                raise DataError(f"{path}: line 1: column {name!r} appears twice (columns {first[name] + 1} and "
                                f"{k + 1}); a {what} has one column of each name")
        rows: list[tuple[int, dict[str, str]]] = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            line = reader.line_num
            if any(cell.strip() for cell in cells[len(columns):]):
                raise DataError(f"{path}: line {line}: {len(cells)} values, the header has {len(columns)} columns "
                                "(quote a value that holds a comma)")
            cells += [""] * (len(columns) - len(cells))
            rows.append((line, dict(zip(columns, cells, strict=False))))
    except csv.Error as exc:
        raise DataError(f"{path}: malformed {what} ({exc})") from None
    names = (key,) if isinstance(key, str) else tuple(key or ())
    key_column = next((name for name in names if name in columns), None)
    if key_column is not None:
        form = same_key or str
        seen: dict[str, int] = {}
        for line, row in rows:
            raw = row[key_column].strip()
            if raw and seen.setdefault(form(raw), line) != line:
                raise DataError(f"{path}: line {line}: {raw} repeats the row of line {seen[form(raw)]} "
                                f"(one row per {key_column}: remove or merge one of them)")
    return CsvTable(path, columns, tuple(rows), key_column)
