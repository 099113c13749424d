"""dermogaze.files: the atomic writer never replaces a special file, names the file of a failed write; the check of
what kind of file a path is; the lock that names its holder."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import subprocess
import sys

import pytest

from dermogaze.errors import DataError
from dermogaze.files import PidLock, atomic_write, check_file_kind, write_text


def _special(path, kind):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "link-to-dev-null":
        path.symlink_to("/dev/null")
    elif kind == "socket":
        here = os.getcwd()
        os.chdir(path.parent)  # a socket's path is limited to about 100 bytes: bind its name
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(path.name)
        finally:
            os.chdir(here)
    return path


@pytest.mark.parametrize(("kind", "said"), [("fifo", "a FIFO (named pipe)"), ("folder", "a folder"),
                                            ("socket", "a socket"),
                                            ("link-to-dev-null", "a link to /dev/null, a character device")])
def test_atomic_write_refuses_a_special_destination_and_leaves_it(tmp_path, kind, said):
    path = _special(tmp_path / "out.json", kind)
    before = os.lstat(path)
    with pytest.raises(DataError, match=re.escape(f"output {path} is {said}, not a regular file")):
        write_text("{}", path)
    after = os.lstat(path)
    assert (after.st_ino, stat.S_IFMT(after.st_mode)) == (before.st_ino, stat.S_IFMT(before.st_mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left


def test_atomic_write_through_a_link_replaces_the_file_it_names(tmp_path):
    target = tmp_path / "real" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "metrics.json"
    link.symlink_to(target)
    write_text("new", link)
    assert link.is_symlink() and target.read_text() == "new"


def test_a_failed_write_names_the_destination(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(OSError) as info, atomic_write(path) as fh:
        fh.write("x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() on a full disk: no file name
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.mark.parametrize(("kind", "folder", "said"), [
    ("fifo", False, "is a FIFO (named pipe), not a regular file"),
    ("folder", False, "is a folder, not a regular file"),
    ("file", True, "is a regular file, not a folder"),
    ("link-to-dev-null", True, "is a link to /dev/null, a character device, not a folder"),
])
def test_check_file_kind_names_what_is_there(tmp_path, kind, folder, said):
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("")
    else:
        _special(path, kind)
    with pytest.raises(DataError, match=f"^{re.escape(f'cache {path} {said}; do this')}$"):
        check_file_kind(path, "cache", "do this", folder=folder)


def test_check_file_kind_passes_the_wanted_kind_and_missing_paths(tmp_path):
    (tmp_path / "f").write_text("")
    assert check_file_kind(tmp_path / "f", "x", "y") == tmp_path / "f"
    assert check_file_kind(tmp_path, "x", "y", folder=True) == tmp_path
    assert check_file_kind(tmp_path / "missing", "x", "y") == tmp_path / "missing"
    assert check_file_kind(tmp_path / "f" / "under", "x", "y") == tmp_path / "f" / "under"  # ENOTDIR: the caller's


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_pid_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    path = tmp_path / ".lock"
    first, second = PidLock(path), PidLock(path)
    assert first.acquire() is None and first.held
    assert path.read_text().strip() == str(os.getpid())
    assert second.acquire() == str(os.getpid()) and not second.held
    first.release()
    assert not path.exists() and not first.held
    assert second.acquire() is None
    second.release()


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_pid_lock_of_a_dead_process_is_taken_over(tmp_path):
    """A process that took the lock and died (its file stays, naming a pid that no longer runs)."""
    path = tmp_path / ".lock"
    code = f"from dermogaze.files import PidLock; import os; PidLock({str(path)!r}).acquire(); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert path.read_text().strip().isdigit()
    lock = PidLock(path)
    assert lock.acquire() is None and path.read_text().strip() == str(os.getpid())
    lock.release()


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_pid_lock_held_by_another_process_names_it(tmp_path):
    path = tmp_path / ".lock"
    code = (f"from dermogaze.files import PidLock; import sys; lock = PidLock({str(path)!r}); lock.acquire(); "
            "print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert PidLock(path).acquire() == str(holder.pid)
    finally:
        holder.communicate("", timeout=120)
    lock = PidLock(path)
    assert lock.acquire() is None
    lock.release()
