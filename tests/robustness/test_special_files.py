"""special-files: paths that are not regular files, a full disk and two prepares into one folder.

* An output path that exists and is not a regular file (a device node, a FIFO, a socket, a folder where a file is
  wanted, a symbolic link to one of those), given as ``--out`` or met inside an output folder, must be refused in
  one line and left as it was: nothing replaces a device node.
* An input path (checkpoint, image, CSV, cache, preset, weights) that is a folder, a FIFO, a device or a socket
  must be named as what it is, not as missing, and a FIFO must not block the command.
* A full disk during a write (a checkpoint, metrics, an export, a cache) must end in one line with the disk-space
  hint, losing nothing: the previous ``last.pt``/``best.pt`` or cache intact, no temporary file left.
* Two ``data prepare`` into one folder: the one that comes second stops in one line naming the other's pid, the
  first finishes a cache that loads; a prepare killed midway leaves nothing that stops the next one.

The small disk is a tmpfs mounted for the case (ENOSPC) where this process may mount one, else a limit on the
size of the files the probed process writes (``ulimit -f``: EFBIG).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cli_probe import (
    ERROR_LINE,
    Probe,
    Proc,
    Verdict,
    both,
    cache_count,
    check,
    first_id,
    run_invariants,
    sha,
    split_folder,
    success,
    user_error,
)

#: Words of a message that names a path as what it is.
KIND_WORDS = ("folder", "FIFO", "device", "socket", "not a regular file")
#: Words of a message that calls an existing path missing.
MISSING_WORDS = ("does not exist", "no such", "missing")


def _error_line(proc: Proc) -> str:
    return next((ln for ln in proc.err.splitlines() if ERROR_LINE.match(ln)), "")


# ----------------------------------------------------------------------------------------------
# Special files
# ----------------------------------------------------------------------------------------------
def _device(path: Path) -> Path:
    """A character device node like ``/dev/null`` (major 1, minor 3), at ``path``."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    """A UNIX socket file (bound, then closed: the file stays); bound by a relative name (a path's length is
    limited to about 100 bytes)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(path.name)
    finally:
        os.chdir(here)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    (path / "keep.txt").write_text("a user's file\n")
    return path


def _link_to_device(path: Path) -> Path:
    path.symlink_to(_device(path.parent / "node"))
    return path


def _link_to_dev_null(path: Path) -> Path:
    path.symlink_to("/dev/null")
    return path


SPECIAL: dict[str, Callable[[Path], Path]] = {
    "device": _device,
    "fifo": _fifo,
    "socket": _socket,
    "folder": _folder,
    "link-to-device": _link_to_device,
    "link-to-dev-null": _link_to_dev_null,
}


def _identity(path: Path) -> tuple:
    """What must not change about a special path: its kind, inode and device number, and its link's target."""
    st = os.lstat(path)
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    pointed = os.stat(path) if target is not None else st
    kids = sorted(p.name for p in path.iterdir()) if stat.S_ISDIR(st.st_mode) else None
    return (stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev, target, stat.S_IFMT(pointed.st_mode), pointed.st_rdev,
            kids)


# ----------------------------------------------------------------------------------------------
# Outputs that are not regular files
# ----------------------------------------------------------------------------------------------
def _export(p: Probe, out: Path) -> list[Any]:
    return ["export", "--checkpoint", p.best, "--out", out]


def _predict(p: Probe, out: Path) -> list[Any]:
    return ["predict", "--checkpoint", p.best, "--data", p.cache, "--format", "isic2017-part3", "--out", out]


def _evaluate(p: Probe, out: Path) -> list[Any]:
    return p.eval_args(p.best, out)


def _explain(p: Probe, out: Path) -> list[Any]:
    return p.explain_args([p.img], out)


def _train(p: Probe, out: Path) -> list[Any]:
    return p.train_args(out)


def _prepare(p: Probe, out: Path) -> list[Any]:
    return ["data", "prepare", "--isic", p.col, "--out", out, "--size", 40]


def _synth(p: Probe, out: Path) -> list[Any]:
    return ["data", "synth", "--out", out, "--train", 2, "--val", 0, "--test", 0, "--width", 64, "--height", 48]


#: case id -> (command given the special path as --out, the kind of path).
OUT_IS_SPECIAL: dict[str, tuple[Callable[[Probe, Path], list[Any]], str]] = {
    "sf-out-export-device": (_export, "device"),
    "sf-out-export-fifo": (_export, "fifo"),
    "sf-out-export-socket": (_export, "socket"),
    "sf-out-export-link-to-device": (_export, "link-to-device"),
    "sf-out-predict-device": (_predict, "device"),
    "sf-out-predict-fifo": (_predict, "fifo"),
    "sf-out-predict-socket": (_predict, "socket"),
    "sf-out-predict-folder": (_predict, "folder"),
    "sf-out-predict-link-to-dev-null": (_predict, "link-to-dev-null"),
    "sf-out-evaluate-device": (_evaluate, "device"),
    "sf-out-explain-fifo": (_explain, "fifo"),
    "sf-out-train-socket": (_train, "socket"),
    "sf-out-prepare-fifo": (_prepare, "fifo"),
    "sf-out-synth-link-to-device": (_synth, "link-to-device"),
}


@pytest.mark.parametrize(("make_args", "kind"), [pytest.param(*v, id=k) for k, v in OUT_IS_SPECIAL.items()])
def test_an_out_path_that_is_not_a_regular_file_is_refused_and_kept(probe: Probe, tmp_path, make_args, kind):
    """``--out`` naming a device node, a FIFO, a socket, a folder where a file is wanted, or a link to a device:
    refused in one line that says what the path is, and the path left as it was (a device stays a device)."""
    path = SPECIAL[kind](tmp_path / "target")
    before = _identity(path)
    proc = probe.run(make_args(probe, path))
    line = _error_line(proc)
    check(both(user_error(proc),
               (any(w in line for w in KIND_WORDS) or "not a folder" in line, "the message does not say what the "
                                                                             "path is"),
               (_identity(path) == before, f"the {kind} at --out was replaced or changed")), probe)


def _metrics_json(p: Probe, out: Path) -> tuple[list[Any], Path]:
    return p.eval_args(p.best, out), out / "metrics.json"


def _explain_record(p: Probe, out: Path) -> tuple[list[Any], Path]:
    return p.explain_args([p.img], out), out / f"{p.img.stem}.json"


def _train_metrics(p: Probe, out: Path) -> tuple[list[Any], Path]:
    return p.train_args(out, "--overwrite"), out / "metrics.jsonl"


def _predictions_csv(p: Probe, out: Path) -> tuple[list[Any], Path]:
    return p.eval_args(p.best, out), out / "predictions.csv"


#: case id -> (the command and the file it writes inside its output folder, the kind of path put there first).
INSIDE_OUT: dict[str, tuple[Callable[[Probe, Path], tuple[list[Any], Path]], str]] = {
    "sf-inside-evaluate-metrics-link-to-device": (_metrics_json, "link-to-device"),
    "sf-inside-explain-record-fifo": (_explain_record, "fifo"),
    "sf-inside-train-metrics-fifo": (_train_metrics, "fifo"),
    "sf-inside-evaluate-predictions-socket": (_predictions_csv, "socket"),
}


@pytest.mark.parametrize(("make", "kind"), [pytest.param(*v, id=k) for k, v in INSIDE_OUT.items()])
def test_a_special_file_where_a_command_writes_is_refused_and_kept(probe: Probe, tmp_path, make, kind):
    """A link to a device, a FIFO or a socket already where the command writes one of its files (``metrics.json``,
    an image's record, ``metrics.jsonl`` under ``--overwrite``, ``predictions.csv``): refused in one line, never
    replaced, no hang."""
    out = tmp_path / "out"
    out.mkdir()
    args, path = make(probe, out)
    SPECIAL[kind](path)
    before = _identity(path)
    proc = probe.run(args)
    line = _error_line(proc)
    check(both(user_error(proc), (any(w in line for w in KIND_WORDS), "the message does not say what the path is"),
               (_identity(path) == before, f"the {kind} at {path.name} was replaced or changed")), probe)


# ----------------------------------------------------------------------------------------------
# Inputs that are not regular files
# ----------------------------------------------------------------------------------------------
def _checkpoint_as(kind: str, command: str) -> Callable[[Probe, Path], list[Any]]:
    def make(p: Probe, d: Path) -> list[Any]:
        ckpt = d / "model.pt"
        if kind == "urandom":
            ckpt.symlink_to("/dev/urandom")
        elif kind == "link-to-fifo":
            ckpt.symlink_to(_fifo(d / "pipe"))
        else:
            SPECIAL[kind](ckpt)
        return p.reader_args(command, ckpt, d / "out")

    return make


def _image_as(kind: str) -> Callable[[Probe, Path], list[Any]]:
    def make(p: Probe, d: Path) -> list[Any]:
        image = d / "lesion.jpg"
        if kind == "dev-urandom":
            return p.explain_args([Path("/dev/urandom")], d / "out")
        if kind == "link-to-dev-zero":
            image.symlink_to("/dev/zero")
        else:
            SPECIAL[kind](image)
        return p.explain_args([image], d / "out")

    return make


def _compare_as(kind: str) -> Callable[[Probe, Path], list[Any]]:
    def make(p: Probe, d: Path) -> list[Any]:
        return p.eval_args(p.best, d / "eval", "--compare", SPECIAL[kind](d / "predictions.csv"))

    return make


def _collection_with(part: str, skip_bad: bool = False) -> Callable[[Probe, Path], list[Any]]:
    """``prepare`` of a copy of the collection whose Part 3 CSV, one image or one Part 2 file is a FIFO."""

    def make(p: Probe, d: Path) -> list[Any]:
        col = p.copy_collection(d / "collection")
        iid = first_id(col, "Training", 4)
        path = {
            "part3": col / "ISIC-2017_Validation_Part3_GroundTruth.csv",
            "image": split_folder(col, "Training", "Data") / f"{iid}.jpg",
            "features": split_folder(col, "Training", "Part2_GroundTruth") / f"{iid}_features.json",
        }[part]
        path.unlink()
        _fifo(path)
        return ["data", "prepare", "--isic", col, "--out", d / "cache", "--size", 40] + (["--skip-bad"] if skip_bad
                                                                                           else [])

    return make


def _preset_fifo(p: Probe, d: Path) -> list[Any]:
    args = p.train_args(d / "run")
    args[args.index("tiny")] = _fifo(d / "preset.yaml")
    return args


def _weights_fifo(p: Probe, d: Path) -> list[Any]:
    return p.train_args(d / "run", "-o", f"model.weights={_fifo(d / 'vgg16_bn.pth')}")


def _cache_as(kind: str, command: str) -> Callable[[Probe, Path], list[Any]]:
    def make(p: Probe, d: Path) -> list[Any]:
        if kind == "dev-zero":
            cache = Path("/dev/zero")
        elif kind == "file":
            cache = d / "cache"
            cache.write_text("not a cache\n")
        else:
            cache = SPECIAL[kind](d / "cache")
        if command == "stats":
            return ["data", "stats", cache]
        if command == "train":
            args = p.train_args(d / "run")
            args[args.index("--data") + 1] = cache
            return args
        return p.eval_args(p.best, d / "eval", data=cache)

    return make


#: case id -> the command line, given the scratch folder (where it makes the special input).
IN_IS_SPECIAL: dict[str, Callable[[Probe, Path], list[Any]]] = {
    "sf-in-ckpt-folder-evaluate": _checkpoint_as("folder", "evaluate"),
    "sf-in-ckpt-fifo-evaluate": _checkpoint_as("fifo", "evaluate"),
    "sf-in-ckpt-urandom-explain": _checkpoint_as("urandom", "explain"),
    "sf-in-ckpt-device-export": _checkpoint_as("device", "export"),
    "sf-in-ckpt-socket-predict": _checkpoint_as("socket", "predict"),
    "sf-in-ckpt-fifo-resume": _checkpoint_as("fifo", "resume"),
    "sf-in-ckpt-fifo-serve": _checkpoint_as("fifo", "serve"),
    "sf-in-ckpt-link-to-fifo-explain": _checkpoint_as("link-to-fifo", "explain"),
    "sf-in-image-fifo-explain": _image_as("fifo"),
    "sf-in-image-dev-urandom-explain": _image_as("dev-urandom"),
    "sf-in-image-link-to-dev-zero-explain": _image_as("link-to-dev-zero"),
    "sf-in-image-socket-explain": _image_as("socket"),
    "sf-in-compare-fifo-evaluate": _compare_as("fifo"),
    "sf-in-compare-folder-evaluate": _compare_as("folder"),
    "sf-in-part3-csv-fifo-prepare": _collection_with("part3"),
    "sf-in-image-fifo-prepare": _collection_with("image"),
    "sf-in-features-fifo-prepare": _collection_with("features"),
    "sf-in-cache-fifo-stats": _cache_as("fifo", "stats"),
    "sf-in-cache-dev-zero-train": _cache_as("dev-zero", "train"),
    "sf-in-cache-file-evaluate": _cache_as("file", "evaluate"),
    "sf-in-preset-fifo-train": _preset_fifo,
    "sf-in-weights-fifo-train": _weights_fifo,
}


@pytest.mark.parametrize("make_args", [pytest.param(v, id=k) for k, v in IN_IS_SPECIAL.items()])
def test_an_input_that_is_not_a_regular_file_is_named_as_what_it_is(probe: Probe, tmp_path, make_args):
    """A checkpoint, image, CSV, Part 2 file, cache, preset or weights file that is a folder, a FIFO, a device, a
    socket or a link to one: one line that says what it is (not that it is missing), no hang on a FIFO."""
    proc = probe.run(make_args(probe, tmp_path))
    line = _error_line(proc)
    check(both(user_error(proc),
               (any(w in line for w in KIND_WORDS), "the message does not say what the path is"),
               (not any(w in line for w in MISSING_WORDS), "the message calls an existing path missing")), probe)


@pytest.mark.parametrize("case", ["sf-in-image-fifo-prepare-skip-bad"])
def test_prepare_skip_bad_skips_a_fifo_image(probe: Probe, tmp_path, case):
    """A training image that is a FIFO, with ``--skip-bad``: prepare succeeds without blocking and skips it (15
    training images)."""
    proc = probe.run(_collection_with("image", skip_bad=True)(probe, tmp_path))
    n = cache_count(tmp_path / "cache", "train")
    check(both(success(proc, "--skip-bad skips the FIFO"), (n == 15, f"train split holds {n} images, expected 15")),
          probe)


# ----------------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------------
class SmallDisk:
    """A folder where a probed command's writes fail once ``room`` bytes are left.

    A tmpfs of :data:`SIZE` bytes mounted on ``root`` when this process may mount (filled to ``room`` by a filler
    file: ENOSPC), else a plain folder and a limit of ``room`` bytes on each file the command writes (``ulimit -f``,
    the signal ignored: EFBIG).
    """

    SIZE = 64 << 20

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filler = root / "filler"
        root.mkdir()
        self.mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.SIZE}", "tmpfs", str(root)], capture_output=True
        ).returncode == 0

    @property
    def hint(self) -> str:
        """What the message of a failed write must say."""
        return "disk space" if self.mounted else "ulimit -f"

    def run(self, probe: Probe, args: list[Any], room: int) -> Proc:
        """``dermogaze ARGS`` with ``room`` bytes left to write."""
        if self.mounted:
            self.free()
            st = os.statvfs(self.root)
            fill = st.f_bavail * st.f_frsize - room
            if fill > 0:
                fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.posix_fallocate(fd, 0, fill)
                finally:
                    os.close(fd)
            return probe.run(args)
        quoted = " ".join(shlex.quote(str(a)) for a in args)
        return probe.bash(f"ulimit -f {max(1, room // 1024)}; trap '' XFSZ; exec $DG {quoted}")

    def free(self) -> None:
        """Make room again."""
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


@pytest.fixture
def disk(tmp_path) -> Iterator[SmallDisk]:
    small = SmallDisk(tmp_path / "disk")
    try:
        yield small
    finally:
        small.close()


def _temporaries(folder: Path) -> list[str]:
    """Files of interrupted writes left under ``folder``: ``.<name>.<random>.tmp`` files, staging folders."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or p.name.endswith(".lock"))


def _full_disk_verdict(proc: Proc, disk: SmallDisk, *checks: tuple[bool, str]) -> Verdict:
    line = _error_line(proc)
    left = _temporaries(disk.root)
    return both(user_error(proc), (disk.hint in line, f"the message has no disk-space hint: {line[:120]!r}"),
                (not left, f"left behind: {', '.join(left)}"), *checks)


@pytest.mark.parametrize("case", ["fd-train-resume-keeps-checkpoints"])
def test_a_full_disk_while_training_loses_nothing(probe: Probe, disk: SmallDisk, case):
    """``train --resume`` for one more epoch with 1 MB left (a checkpoint needs more): one line with the disk-space
    hint, ``last.pt`` and ``best.pt`` unchanged, no temporary file; once there is room, the same resume finishes a
    consistent 2-epoch run."""
    run = disk.root / "run"
    shutil.copytree(probe.run_dir, run)
    before = {name: sha(run / name) for name in ("last.pt", "best.pt")}
    args = ["train", "--resume", run, "-o", "train.epochs=2", "-o", "train.max_train_batches=1"]
    proc = disk.run(probe, args, room=1 << 20)
    kept = [name for name, digest in before.items() if sha(run / name) == digest]
    verdict = _full_disk_verdict(proc, disk, (len(kept) == 2, "last.pt or best.pt changed on a full disk"))
    disk.free()
    again = success(probe.run(args), "resume once there is room")
    check(both(verdict, (again.clean, f"then resume: {again.outcome}"),
               *[(False, msg) for msg in run_invariants(run, 2)]), probe)


@pytest.mark.parametrize("case", ["fd-train-fresh"])
def test_a_full_disk_at_the_first_checkpoint_is_one_line(probe: Probe, disk: SmallDisk, case):
    """A fresh ``train`` with 1 MB left: one line with the disk-space hint, no temporary file or lock left."""
    check(_full_disk_verdict(disk.run(probe, probe.train_args(disk.root / "run"), room=1 << 20), disk), probe)


@pytest.mark.parametrize("case", ["fd-prepare-fresh"])
def test_a_full_disk_while_preparing_is_one_line(probe: Probe, disk: SmallDisk, case):
    """``data prepare`` with 16 kB left (the images need more): one line with the disk-space hint, no crash, no
    staging folder or lock left."""
    check(_full_disk_verdict(disk.run(probe, _prepare(probe, disk.root / "cache"), room=16 << 10), disk), probe)


@pytest.mark.parametrize("case", ["fd-prepare-force-keeps-cache"])
def test_a_full_disk_while_re_preparing_keeps_the_cache(probe: Probe, disk: SmallDisk, case):
    """``data prepare --force`` over a cache with 16 kB left: one line with the disk-space hint, and the old cache
    unchanged and loading (``data stats``)."""
    cache = probe.copy_cache(disk.root / "cache")
    info = sha(cache / "info.json")
    proc = disk.run(probe, [*_prepare(probe, cache), "--force"], room=16 << 10)
    verdict = _full_disk_verdict(proc, disk, (sha(cache / "info.json") == info, "the old cache's info.json changed"))
    disk.free()
    stats = success(probe.run(["data", "stats", cache]))
    check(both(verdict, (stats.clean, f"the old cache no longer loads (data stats {stats.outcome})")), probe)


#: case id -> (command writing under the small disk's OUT, bytes left).
FULL_WRITERS: dict[str, tuple[Callable[[Probe, Path], list[Any]], int]] = {
    "fd-evaluate-metrics": (lambda p, d: p.eval_args(p.best, d / "eval"), 0),
    "fd-explain-records": (lambda p, d: p.explain_args([p.img], d / "out"), 0),
    "fd-export-onnx": (lambda p, d: _export(p, d / "model.onnx"), 256 << 10),
    "fd-predict-csv": (lambda p, d: _predict(p, d / "pred.csv"), 0),
}


@pytest.mark.parametrize(("make_args", "room"), [pytest.param(*v, id=k) for k, v in FULL_WRITERS.items()])
def test_a_full_disk_while_writing_results_is_one_line(probe: Probe, disk: SmallDisk, make_args, room):
    """``evaluate``, ``explain``, ``export`` or ``predict`` writing to a full disk: one line with the disk-space
    hint, no temporary file, no half-written ONNX or CSV."""
    proc = disk.run(probe, make_args(probe, disk.root), room=room)
    partial = [n for n in ("model.onnx", "pred.csv") if (disk.root / n).exists()]
    check(_full_disk_verdict(proc, disk, (not partial, f"{', '.join(partial)} written on a full disk")), probe)


# ----------------------------------------------------------------------------------------------
# Two prepares into one folder
# ----------------------------------------------------------------------------------------------
def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


def _wait_for_staging(out: Path, popen: subprocess.Popen) -> bool:
    """Poll until ``prepare`` into ``out`` has begun building (its staging folder beside ``out``) or has ended."""
    while not _staging(out) and popen.poll() is None:
        time.sleep(0.002)
    return popen.poll() is None


@contextlib.contextmanager
def _stopped(popen: subprocess.Popen) -> Iterator[None]:
    """The process group stopped (SIGSTOP) for the block, continued after."""
    os.killpg(popen.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(popen.pid, signal.SIGCONT)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}"))


#: case id -> (the second prepare's --out: the same folder or a link to it, its extra flags, whether the first one
#: re-prepares an existing cache with --force).
WHILE_BUSY = {
    "cp-second-prepare-refused": ("same", [], False),
    "cp-second-prepare-force-refused": ("same", ["--force"], False),
    "cp-second-prepare-through-link-refused": ("link", [], True),
}


@pytest.mark.parametrize(("via", "extra", "again"), [pytest.param(*v, id=k) for k, v in WHILE_BUSY.items()])
def test_a_second_prepare_into_a_busy_folder_is_refused(probe: Probe, tmp_path, via, extra, again):
    """A ``data prepare`` held (stopped) while it builds a cache (or rebuilds one with ``--force``); a second one into
    the same folder (or a link to it, or with ``--force``): refused in one line naming the first one's pid; the
    first then finishes a cache that loads, and nothing is left beside it."""
    out = tmp_path / "cache"
    if again:
        probe.copy_cache(out)
    first = probe.spawn([*_prepare(probe, out), *(["--force"] if again else [])])
    assert _wait_for_staging(out, first), "the first prepare ended before it began building"
    second_out = out if via == "same" else tmp_path / "alias"
    if via == "link":
        second_out.symlink_to(out, target_is_directory=True)
    with _stopped(first):
        second = probe.run([*_prepare(probe, second_out), *extra])
    done = probe.wait(first)
    stats = success(probe.run(["data", "stats", out]))
    refused = user_error(second)
    check(both(Verdict(refused.clean, "second " + refused.outcome, refused.reason),
               (str(first.pid) in _error_line(second), "the message does not name the running prepare's pid"),
               (done.rc == 0, f"the first prepare failed: {_error_line(done) or done.err[-200:]}"),
               (stats.clean, f"the cache does not load (data stats {stats.outcome})"),
               (not _leftovers(out), f"left beside the cache: {', '.join(_leftovers(out))}")), probe)


@pytest.mark.parametrize("case", ["cp-prepare-after-a-killed-one"])
def test_a_prepare_after_a_killed_one_takes_the_folder_over(probe: Probe, tmp_path, case):
    """A ``data prepare`` killed (SIGKILL) while it builds; the next one into the folder succeeds, the cache loads and
    nothing of the killed one (staging folder, lock) is left."""
    out = tmp_path / "cache"
    first = probe.spawn(_prepare(probe, out))
    assert _wait_for_staging(out, first), "the first prepare ended before it began building"
    probe.kill(first)
    probe.wait(first)
    again = success(probe.run(_prepare(probe, out)), "prepare after a killed one")
    n = cache_count(out, "train")
    check(both(again, (n == 16, f"train split holds {n} images, expected 16"),
               (not _leftovers(out), f"left beside the cache: {', '.join(_leftovers(out))}")), probe)


@pytest.mark.parametrize("case", ["cp-two-prepares-at-once"])
def test_two_prepares_started_at_once_end_clean(probe: Probe, tmp_path, case):
    """Two ``data prepare`` into one folder started together: each succeeds or is refused in one line naming the
    other's pid; at least one succeeds, the cache loads, nothing is left beside it."""
    out = tmp_path / "cache"
    popens = [probe.spawn(_prepare(probe, out)) for _ in range(2)]
    procs = [probe.wait(p) for p in popens]
    verdicts = []
    for proc, other in zip(procs, reversed(popens), strict=True):
        if proc.rc == 0:
            verdicts.append(success(proc))
        else:
            refused = user_error(proc)
            named = str(other.pid) in _error_line(proc)
            verdicts.append(both(refused, (named, "the refusal does not name the other prepare's pid")))
    stats = success(probe.run(["data", "stats", out]))
    bad = next((v for v in verdicts if not v.clean), None)
    check(both(bad or Verdict(True, ", ".join(f"rc={p.rc}" for p in procs)),
               (any(p.rc == 0 for p in procs), "neither prepare finished"),
               (stats.clean, f"the cache does not load (data stats {stats.outcome})"),
               (not _leftovers(out), f"left beside the cache: {', '.join(_leftovers(out))}")), probe)
