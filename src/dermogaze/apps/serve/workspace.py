"""The viewer's own temporary folder: created at start, held while the server runs, removed when it stops.

Everything the server writes goes into one folder, ``$TMPDIR/dermogaze-serve-XXXXXXXX``::

    .lock        an exclusive ``flock`` held by the serving process (its pid inside)
    gradio/      Gradio's temporary folder (``GRADIO_TEMP_DIR``, set by :func:`.page.launch`): uploads, the
                 copies of the files it serves
    pictures/    the gallery's pictures (:class:`.session._Pictures`)
    downloads/   the files of the download button, one folder per request (the newest ones kept)

:meth:`ServerFolder.close` removes it; so do a garbage collection of the folder and the exit of the
process (a ``weakref.finalize``), and :func:`.page.launch` turns SIGTERM and SIGHUP into the Ctrl-C
that stops the server, so that a normal exit, Ctrl-C and ``kill`` all clean up. A process killed
outright (SIGKILL, a power cut) cannot: the next server to start removes the folders whose lock no
live process holds. A folder without a lock (being created, or of another program) is left alone.
Without ``fcntl`` (Windows) folders are still removed at exit, but stale ones are not detected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, no detection of stale folders
    fcntl = None

log = logging.getLogger(__name__)

#: Name prefix of the servers' folders in the temporary folder.
PREFIX = "dermogaze-serve-"
#: The lock file of a server's folder.
LOCK_NAME = ".lock"


def _try_lock(path: Path) -> int | None:
    """An open descriptor of ``path`` holding an exclusive ``flock``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def remove_stale(parent: Path) -> list[Path]:
    """Remove the folders of dead servers in ``parent``: those whose lock file no live process holds.

    Returns:
        The folders removed.
    """
    removed: list[Path] = []
    if fcntl is None:
        return removed
    for folder in sorted(parent.glob(f"{PREFIX}*")):
        try:
            fd = _try_lock(folder / LOCK_NAME)
        except OSError:  # no lock file (being created, or not ours), or not a folder of ours
            continue
        if fd is None:  # a live server
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(folder)
    if removed:
        log.info("removed %d folder(s) of stopped viewers in %s", len(removed), parent)
    return removed


def _remove(path: Path, fd: int | None) -> None:
    """Remove the folder, then release its lock (the finalizer of :class:`ServerFolder`)."""
    shutil.rmtree(path, ignore_errors=True)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class ServerFolder:
    """The server's temporary folder (see the module docstring); stale folders of dead servers are removed first.

    Args:
        parent: where to create it (default: the system's temporary folder, ``$TMPDIR``).

    Attributes:
        path: the folder; ``gradio``, ``pictures`` and ``downloads`` are its sub-folders.
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        parent = Path(parent if parent is not None else tempfile.gettempdir())
        remove_stale(parent)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        fd = None
        if fcntl is not None:
            # locked under another name, then renamed: a cleaner never sees a lock file that is not yet held
            staging = self.path / f"{LOCK_NAME}.new"
            fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.replace(staging, self.path / LOCK_NAME)
        for name in ("gradio", "pictures", "downloads"):
            (self.path / name).mkdir()
        self._finalizer = weakref.finalize(self, _remove, self.path, fd)

    @property
    def gradio(self) -> Path:
        """Gradio's temporary folder (``GRADIO_TEMP_DIR``)."""
        return self.path / "gradio"

    @property
    def pictures(self) -> Path:
        return self.path / "pictures"

    @property
    def downloads(self) -> Path:
        return self.path / "downloads"

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Remove the folder and release its lock (idempotent)."""
        self._finalizer()
