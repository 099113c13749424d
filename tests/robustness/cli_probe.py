"""The scaffolding of the robustness tier: ``python -m dermogaze ...`` run as a user runs it, and its verdict.

:class:`Probe` runs the command line in subprocesses (never the package in this process), in a scratch folder,
each process with an address-space limit (:data:`MEMORY_LIMIT`), no GPU, downloads made to fail at once (proxies
to 127.0.0.1:9, an empty ``TORCH_HOME``) and a hang guard (:data:`HANG_GUARD_S`, far above any case's need: it
catches a hang, never a slow machine). The shared inputs (a synthetic collection, its prepared cache, a tiny
trained run, two test images, a decompression bomb) are built on first use, once per session.

A case's :class:`Verdict` is CLEAN or not:

* a user error (:func:`user_error`): exit status != 0, exactly one ``dermogaze: error: ...`` stderr line (an
  argparse ``usage: ...`` + ``dermogaze CMD: error: ...`` counts too), no ``Traceback`` anywhere, no signal, no
  hang;
* a command that must succeed (:func:`success`): exit status 0, no traceback, no signal, no hang;
* plus whatever the case checks on disk (:func:`both`).

:func:`check` turns a verdict into the test's assertion, naming the commands the case ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

#: Seconds a probed process may run before it is killed as hung (the slowest case needs a small fraction);
#: ``$DERMOGAZE_PROBE_HANG_S`` sets another (60: the issue's "no hang past 60 s", for a count against an older version).
HANG_GUARD_S = float(os.environ.get("DERMOGAZE_PROBE_HANG_S", 900.0))
#: Address-space limit of every probed process (bytes): a decompression bomb must fail, not eat the machine.
MEMORY_LIMIT = 6 << 30

# One stderr line of a clean user error: "dermogaze: error: ..." or argparse's "dermogaze train: error: ...".
ERROR_LINE = re.compile(r"^dermogaze(?: [\w.-]+)*: error: ")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Fault)\b")
PIPE_NOISE = ("Traceback", "Exception ignored", "BrokenPipeError")
OFFLINE_PROXY = "http://127.0.0.1:9"  # the discard port: connections are refused at once


# ----------------------------------------------------------------------------------------------
# Results and verdicts
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Proc:
    """One finished subprocess."""

    argv: list[str]
    rc: int | None
    out: str
    err: str
    hung: bool = False

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err


@dataclasses.dataclass
class Verdict:
    """CLEAN or not, what happened (``outcome``) and, when not clean, why it is a defect (``reason``)."""

    clean: bool
    outcome: str
    reason: str = ""


def _short(text: str, n: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def traceback_of(proc: Proc) -> str | None:
    """``"Traceback: <exception line>"`` when the output holds a traceback (or a crash marker), else None."""
    text = proc.text
    for marker in ("Traceback (most recent call last)", "Exception ignored", "Fatal Python error"):
        pos = text.rfind(marker)
        if pos < 0:
            continue
        tail = [ln for ln in text[pos:].splitlines()[1:] if ln.strip()]
        last = next((ln for ln in reversed(tail) if EXCEPTION_LINE.match(ln)), None)  # progress bars interleave
        last = last or next((ln for ln in reversed(tail) if not ln.startswith((" ", "\t")) and ":" in ln), None)
        last = last or (tail[-1] if tail else marker)
        return f"{marker.split(' (')[0]}: {_short(last, 90)}"
    if "MemoryError" in text:
        return "MemoryError"
    return None


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _stderr_tail(proc: Proc, n: int = 2) -> str:
    lines = [ln for ln in proc.err.splitlines() if ln.strip()]
    return _short(" | ".join(lines[-n:]) or "(empty)", 100)


def failure(proc: Proc) -> Verdict | None:
    """A NOT-clean verdict for a process that hung, crashed or printed a traceback; None otherwise."""
    if proc.hung:
        return Verdict(False, f"still running after {HANG_GUARD_S:.0f} s", "hung (killed by the hang guard)")
    tb = traceback_of(proc)
    if tb:
        return Verdict(False, f"rc={proc.rc}, {tb}", "traceback")
    if proc.rc is not None and proc.rc < 0:
        return Verdict(False, f"killed by {_signal_name(proc.rc)}", "crashed (signal)")
    return None


def user_error(proc: Proc) -> Verdict:
    """CLEAN iff non-zero status, exactly one ``dermogaze...: error:`` stderr line, no traceback."""
    bad = failure(proc)
    if bad:
        return bad
    if proc.rc == 0:
        return Verdict(False, "rc=0: accepted", "bad input accepted (should be refused with an error)")
    lines = [ln for ln in proc.err.splitlines() if ERROR_LINE.match(ln)]
    if len(lines) != 1:
        return Verdict(
            False,
            f"rc={proc.rc}, {len(lines)} error lines; stderr: {_stderr_tail(proc)}",
            "not exactly one 'dermogaze: error:' line",
        )
    return Verdict(True, f"rc={proc.rc}, {_short(lines[0], 100)}")


def success(proc: Proc, what: str = "") -> Verdict:
    """CLEAN iff exit status 0 and no traceback."""
    bad = failure(proc)
    if bad:
        return bad
    if proc.rc != 0:
        lines = [ln for ln in proc.err.splitlines() if ERROR_LINE.match(ln)]
        msg = lines[-1] if lines else _stderr_tail(proc)
        return Verdict(False, f"rc={proc.rc}, {_short(msg, 100)}", f"should succeed{': ' + what if what else ''}")
    return Verdict(True, "rc=0")


def both(first: Verdict, *checks: tuple[bool, str]) -> Verdict:
    """``first`` plus extra on-disk checks ``(ok, problem)``; the first failing problem makes it NOT clean."""
    problems = [msg for ok, msg in checks if not ok]
    if not first.clean:
        return Verdict(False, first.outcome + ("; " + "; ".join(problems) if problems else ""), first.reason)
    if problems:
        return Verdict(False, first.outcome + "; " + "; ".join(problems), problems[0])
    return first


def check(verdict: Verdict, probe: Probe) -> None:
    """The test's assertion: ``verdict`` is CLEAN; otherwise the outcome, the reason and the commands run."""
    commands = "\n".join(f"  $ {probe.show(argv)}" for argv in probe.commands)
    assert verdict.clean, f"NOT CLEAN: {verdict.outcome} | {verdict.reason}\n{commands}"


# ----------------------------------------------------------------------------------------------
# Running dermogaze
# ----------------------------------------------------------------------------------------------
def _kill_group(popen: subprocess.Popen) -> None:
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except OSError:  # already gone
        pass


class Probe:
    """The interpreter under test, its environment, the scratch space and the shared inputs (built on first use).

    Args:
        python: the interpreter whose ``-m dermogaze`` is probed.
        src: prepended to the probed processes' ``PYTHONPATH`` (the folder holding the package under test).
        work: the scratch folder; the processes' working folder is ``work/cwd`` (relative defaults land there).
    """

    def __init__(self, python: str, src: Path, work: Path) -> None:
        self.python = python
        self.work = work
        self.cwd = work / "cwd"
        self.cwd.mkdir(parents=True, exist_ok=True)
        torch_home = work / "torch_home_empty"
        torch_home.mkdir(exist_ok=True)
        env = dict(os.environ)
        # PYTHONUNBUFFERED dropped: a block-buffered stdout as at a user's shell, so that the pipe cases are
        # deterministic (unbuffered, whether `| head -1` hits a closed pipe is a race between two processes)
        for key in ("NO_PROXY", "no_proxy", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONUNBUFFERED"):
            env.pop(key, None)
        env["PYTHONPATH"] = os.pathsep.join([str(src)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            env[key] = OFFLINE_PROXY
        env.update(TORCH_HOME=str(torch_home), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1", COLUMNS="120",
                   HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")  # the CPU on every machine, no GPU driver to start
        self.env = env
        self.commands: list[list[str]] = []  # the current case's, for its failure message
        self._inputs: dict[str, Path] = {}
        self._inputs_failed: str | None = None

    # -- processes -------------------------------------------------------------------------------
    def argv(self, args: Sequence[Any]) -> list[str]:
        return [self.python, "-m", "dermogaze", *map(str, args)]

    @staticmethod
    def _preexec() -> None:
        os.setsid()  # own process group: the hang guard kills the whole tree
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    def _popen(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        self.commands.append(argv)
        return subprocess.Popen(
            argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, errors="replace", preexec_fn=self._preexec,
        )

    def spawn(self, args: Sequence[Any]) -> subprocess.Popen:
        """Start ``dermogaze ARGS``; :meth:`wait` collects it."""
        return self._popen(self.argv(args), self.env)

    def wait(self, popen: subprocess.Popen) -> Proc:
        """The finished process (killed, with its group, past :data:`HANG_GUARD_S`)."""
        hung = False
        try:
            out, err = popen.communicate(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            hung = True
            _kill_group(popen)
            out, err = popen.communicate()
        return Proc(list(popen.args), popen.returncode, out or "", err or "", hung)

    def kill(self, popen: subprocess.Popen) -> None:
        """SIGKILL the process and its group (a fault the run must survive)."""
        _kill_group(popen)

    def run(self, args: Sequence[Any]) -> Proc:
        """``dermogaze ARGS``, to its end."""
        return self.wait(self.spawn(args))

    def bash(self, script: str) -> Proc:
        """Run ``script`` under bash, ``$DG`` standing for the dermogaze command."""
        env = dict(self.env, DG=" ".join(shlex.quote(a) for a in self.argv([])))
        return self.wait(self._popen(["bash", "-c", script], env))

    def show(self, argv: Sequence[str]) -> str:
        """A command as a message shows it: ``dermogaze ...`` with the scratch folder as ``$W``."""
        if list(argv[:3]) == [self.python, "-m", "dermogaze"]:
            argv = ["dermogaze", *argv[3:]]
        return " ".join(shlex.quote(a) for a in argv).replace(str(self.work), "$W")

    # -- shared inputs, built on first use -------------------------------------------------------
    def _input(self, name: str) -> Path:
        if not self._inputs:
            self._build_inputs()
        return self._inputs[name]

    def _build_inputs(self) -> None:
        if self._inputs_failed:
            raise RuntimeError(self._inputs_failed)
        fx = self.work / "inputs"
        fx.mkdir(parents=True, exist_ok=True)
        col, cache, run = fx / "collection", fx / "cache", fx / "run"
        steps = [
            ["data", "synth", "--out", col, "--train", 16, "--val", 8, "--test", 8, "--width", 64, "--height", 48],
            ["data", "prepare", "--isic", col, "--out", cache, "--size", 40],
            ["train", "--preset", "tiny", "--data", cache, "--out", run, "-o", "train.epochs=1"],
        ]
        for args in steps:
            proc = self.run(args)
            if proc.rc != 0:
                self._inputs_failed = f"the shared inputs failed: {self.show(proc.argv)}\n{proc.err[-3000:]}"
                raise RuntimeError(self._inputs_failed)
        test_images = sorted(split_folder(col, "Test_v2", "Data").glob("ISIC_*[0-9].jpg"))
        self._inputs.update(
            col=col, cache=cache, run=run, best=run / "best.pt", last=run / "last.pt",
            img=Path(shutil.copy(test_images[0], fx / "lesion.jpg")),
            img2=Path(shutil.copy(test_images[1], fx / "lesion2.jpg")),
            bomb=write_zero_png(fx / "bomb_20000x10000.png", 20000, 10000),  # 200 MP, ~200 kB
        )

    @property
    def col(self) -> Path:
        """A synthetic collection in the ISIC 2017 layout: 16/8/8 images of 64×48."""
        return self._input("col")

    @property
    def cache(self) -> Path:
        """:attr:`col` prepared at 40 px."""
        return self._input("cache")

    @property
    def run_dir(self) -> Path:
        """A finished 1-epoch run of the ``tiny`` preset on :attr:`cache`."""
        return self._input("run")

    @property
    def best(self) -> Path:
        return self._input("best")

    @property
    def last(self) -> Path:
        return self._input("last")

    @property
    def img(self) -> Path:
        """A test image of :attr:`col` (JPEG)."""
        return self._input("img")

    @property
    def img2(self) -> Path:
        """Another test image of :attr:`col`."""
        return self._input("img2")

    @property
    def bomb(self) -> Path:
        """An 8-bit greyscale PNG declaring 20000×10000 pixels (~200 kB on disk)."""
        return self._input("bomb")

    # -- command lines ---------------------------------------------------------------------------
    def train_args(self, out: Path, *extra: Any, epochs: int = 1, batches: int | None = 1) -> list[Any]:
        args: list[Any] = ["train", "--preset", "tiny", "--data", self.cache, "--out", out,
                           "-o", f"train.epochs={epochs}"]
        if batches:
            args += ["-o", f"train.max_train_batches={batches}"]
        return args + list(extra)

    def eval_args(self, ckpt: Path, out: Path, *extra: Any, data: Path | None = None, split: str = "test") -> list:
        return ["evaluate", "--checkpoint", ckpt, "--data", data or self.cache, "--split", split, "--out", out,
                "--bootstrap", "100", *extra]

    def table3_args(self, out: Path, *extra: Any) -> list[Any]:
        """``table3`` of the one preset ``vgg_gap`` at the ``tiny`` preset's scale on :attr:`cache`: one epoch of one
        batch, then its evaluation."""
        tiny = ["model.width=0.125", "model.image_size=32", "model.steps=2", "train.batch_size=4",
                "train.lr_encoder=1e-3", "train.max_train_batches=1"]
        return ["table3", "--data", self.cache, "--out", out, "--presets", "vgg_gap", "--epochs", "1",
                "--faithfulness", "0", *(a for o in tiny for a in ("-o", o)), *extra]

    def explain_args(self, inputs: Sequence[Any], out: Path, ckpt: Path | None = None) -> list:
        return ["explain", *inputs, "--checkpoint", ckpt or self.best, "--out", out]

    def reader_args(self, command: str, ckpt: Path, out: Path) -> list[Any]:
        """``COMMAND`` reading the checkpoint ``ckpt``, writing under ``out``: ``evaluate``, ``explain`` (one image),
        ``predict`` (the Part 3 CSV ``out/pred.csv``), ``export`` (``out/model.onnx``), ``serve``, or ``resume``:
        ``train --resume out`` one epoch further, ``out`` a copy of :attr:`run_dir` whose ``last.pt`` is ``ckpt``."""
        if command == "evaluate":
            return self.eval_args(ckpt, out)
        if command == "explain":
            return self.explain_args([self.img], out, ckpt)
        if command == "predict":
            return ["predict", "--checkpoint", ckpt, "--data", self.cache, "--format", "isic2017-part3",
                    "--out", out / "pred.csv"]
        if command == "export":
            return ["export", "--checkpoint", ckpt, "--out", out / "model.onnx"]
        if command == "serve":  # refused before it serves; an accepted checkpoint ends at the address it cannot bind
            return ["serve", "--checkpoint", ckpt, "--host", "256.256.256.256"]
        if command != "resume":
            raise ValueError(f"no command {command!r} reads a checkpoint")
        shutil.copytree(self.run_dir, out)
        (out / "last.pt").unlink()
        os.replace(ckpt, out / "last.pt")  # a rename: a FIFO, a folder or a link moves as what it is
        return ["train", "--resume", out, "-o", "train.epochs=2", "-o", "train.max_train_batches=1"]

    def copy_collection(self, dst: Path) -> Path:
        shutil.copytree(self.col, dst)
        return dst

    def copy_cache(self, dst: Path) -> Path:
        shutil.copytree(self.cache, dst)
        return dst


def wait_for(path: Path, popen: subprocess.Popen) -> bool:
    """Poll until ``path`` exists or the process ends (an event of the run, never a duration); whether it exists."""
    while not path.exists() and popen.poll() is None:
        time.sleep(0.005)
    return path.exists()


# ----------------------------------------------------------------------------------------------
# Files, images, checkpoints
# ----------------------------------------------------------------------------------------------
def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_zero_png(path: Path, width: int, height: int) -> Path:
    """An 8-bit greyscale PNG of zeros, compressed row by row (a 200 MP image is a ~200 kB file)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0 + pixels
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    )
    return path


def split_folder(col: Path, official: str, part: str) -> Path:
    return col / f"ISIC-2017_{official}_{part}"


def first_id(col: Path, official: str = "Training", k: int = 0) -> str:
    """The ``k``-th image id of a split's Part 3 CSV."""
    rows = (col / f"ISIC-2017_{official}_Part3_GroundTruth.csv").read_text().splitlines()[1:]
    return rows[k].split(",")[0]


def cache_ids(cache: Path, split: str) -> list[str]:
    data = json.loads((cache / split / "ids.json").read_text())
    return list(data["ids"] if isinstance(data, dict) else data)


def cache_count(cache: Path, split: str) -> int | None:
    """Images in a cache split; None when it cannot be read."""
    try:
        return int(np.load(cache / split / "images.npy", mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return None


def torch_load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def edit_checkpoint(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    ckpt = torch_load(src)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def run_invariants(run: Path, epochs: int) -> list[str]:
    """Problems of a finished run folder: one metrics row per epoch, last.pt at the end, best.pt = best row."""
    problems: list[str] = []
    rows = read_rows(run / "metrics.jsonl")
    got = [r.get("epoch") for r in rows]
    if got != list(range(1, epochs + 1)):
        problems.append(f"metrics.jsonl epochs {got}, expected {list(range(1, epochs + 1))}")
    if not (run / "last.pt").is_file():
        problems.append("last.pt missing")
    else:
        try:
            if (e := torch_load(run / "last.pt").get("epoch")) != epochs:
                problems.append(f"last.pt holds epoch {e}, expected {epochs}")
        except Exception as exc:  # a corrupt file is the finding, not an error of the test
            problems.append(f"last.pt unreadable ({type(exc).__name__})")
    losses = [(r.get("val_loss"), r.get("epoch")) for r in rows if isinstance(r.get("val_loss"), (int, float))]
    best_epoch = min(losses, key=lambda t: t[0])[1] if losses else None
    if not (run / "best.pt").is_file():
        problems.append("best.pt missing")
    elif best_epoch is not None:
        try:
            if (e := torch_load(run / "best.pt").get("epoch")) != best_epoch:
                problems.append(
                    f"best.pt holds epoch {e} but the lowest val_loss in metrics.jsonl is epoch {best_epoch}"
                )
        except Exception as exc:  # a corrupt file is the finding, not an error of the test
            problems.append(f"best.pt unreadable ({type(exc).__name__})")
    return problems


def gray(rgb: Any) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


def save_image(src: Path, dst: Path, *, mirrored: bool = False) -> Path:
    """``src`` re-encoded as ``dst`` (format from its suffix), mirrored left-right if asked."""
    im = Image.open(src).convert("RGB")
    (im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirrored else im).save(dst)
    return dst
