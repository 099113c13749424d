"""Writing files: one atomic write, and the JSON, CSV and text writers built on it.

Every file dermogaze writes (checkpoints, ``config.yaml``, ``metrics.jsonl``, ``metrics.json``,
figures, reports, cache metadata) goes through :func:`atomic_write`: the content goes to a
temporary file in the destination's folder, is flushed to disk, and replaces the destination with
``os.replace`` (atomic on POSIX and Windows). An interrupted write therefore never leaves a
truncated file behind: readers see the previous version or the new one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np


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
        fsync: flush the file to disk before the rename (what makes the write durable, not only atomic).

    Yields:
        The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write opens files for writing ('w' or 'wb'), not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": newline}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
