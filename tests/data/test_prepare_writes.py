"""``prepare``'s writes: one prepare per cache folder (its lock); a full disk is an error, not a crash."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from dermogaze.data.cache import load_info
from dermogaze.data.prepare import prepare
from dermogaze.errors import DataError
from dermogaze.files import PidLock

SIZE = 16


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_prepare_into_a_folder_another_prepare_holds_is_refused(tiny_isic_dir, tmp_path):
    out = tmp_path / "cache"
    holder = PidLock(tmp_path / ".cache.lock")  # what a running prepare into out holds
    assert holder.acquire() is None
    try:
        with pytest.raises(DataError, match=rf"^{out}: another dermogaze data prepare \(pid {os.getpid()}\) is "):
            prepare(tiny_isic_dir, out, size=SIZE, progress=False)
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [".cache.lock", "isic"]
    finally:
        holder.release()
    prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    assert load_info(out)["size"] == SIZE and sorted(p.name for p in tmp_path.iterdir()) == ["cache", "isic"]


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_stale_lock_file_does_not_stop_prepare(tiny_isic_dir, tmp_path):
    (tmp_path / ".cache.lock").write_text("999999999\n")  # left by a killed prepare: no process holds it
    prepare(tiny_isic_dir, tmp_path / "cache", size=SIZE, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "isic"]


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_a_full_disk_is_an_os_error_naming_the_cache_and_keeps_the_old_one(tiny_isic_dir, tmp_path, monkeypatch):
    """The arrays' blocks are reserved before they are mapped: a full disk fails there (writing into the map would
    kill the process with SIGBUS)."""
    out = tmp_path / "cache"
    prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    before = (out / "info.json").read_bytes()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as info:
        prepare(tiny_isic_dir, out, size=SIZE, progress=False, force=True)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out)
    assert (out / "info.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "isic"]  # no staging folder, no lock


def test_a_file_system_that_cannot_reserve_blocks_is_written_as_before(tiny_isic_dir, tmp_path, monkeypatch):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    info = prepare(tiny_isic_dir, tmp_path / "cache", size=SIZE, progress=False)
    assert info["counts"]["train"] > 0


def test_an_empty_staging_folder_of_a_killed_prepare_is_removed(tiny_isic_dir, tmp_path):
    """A prepare killed between creating its staging folder and marking it leaves an empty one; the next prepare
    (holding the folder's lock, so no running prepare owns it) removes it. An empty folder of another name is
    someone else's and stays."""
    killed = tmp_path / ".cache.tmp-0123456789abcdef"
    other = tmp_path / ".cache.tmp-notes"
    killed.mkdir()
    other.mkdir()
    prepare(tiny_isic_dir, tmp_path / "cache", size=SIZE, progress=False)
    assert not killed.exists() and other.is_dir()
