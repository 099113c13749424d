#!/usr/bin/env python
"""Outside robustness probe of the ``dermogaze`` command line: crafted bad inputs and faults.

Every case runs ``PYTHON -m dermogaze ...`` in subprocesses (never imports the package), on
inputs it builds in a scratch folder, and is classified CLEAN or NOT CLEAN. The figure it prints
(clean / total, per class and overall) is the measuring stick of the robustness work: run it on
a frozen copy of the tree before a change and on the working tree after it.

Classes (one per kind of defect an outside user meets):

* ``data-loss``      a fault or a mistake must not destroy or corrupt what is on disk: SIGKILL at
                     epoch-end write boundaries then ``--resume``, two ``train`` on one folder, a
                     fresh ``train`` over an earlier run's ``best.pt``, a failed re-``prepare`` over
                     a good cache, two images whose names map to one output record.
* ``wrong-results``  input that would silently give wrong numbers must be refused (or read
                     right): 16-bit PNGs, Part 2 feature values outside [0, 1], NaN checkpoints,
                     nonsense hyperparameters, an empty validation split.
* ``tracebacks``     user errors must end in one ``dermogaze: error:`` line, never a traceback:
                     bad overrides and flags, ``--out`` under or equal to a file, closed pipes,
                     decompression bombs, broken images and checkpoints, missing caches and splits.
* ``network``        what is on disk must not need the network: resume / evaluate / explain of a
                     run configured with ``model.weights=imagenet`` while downloads fail.

CLEAN for a user error: exit status != 0, exactly one stderr line ``dermogaze: error: ...`` (an
argparse ``usage: ...`` + ``dermogaze ...: error: ...`` counts too), no ``Traceback`` anywhere, no
timeout (``--timeout``), no signal, and whatever the case checks on disk. Cases that must succeed
say what success is (their ``what`` text, printed with ``--list``). Every probed process runs
with an address-space limit (``--mem-gb``, default 6), downloads made to fail fast (proxies to
127.0.0.1:9, an empty ``TORCH_HOME``) and its working folder in the scratch space.

Usage (the "before" figure of a frozen copy, then the "after" figure of the working tree)::

    git -C . worktree add /tmp/probe_before HEAD
    .venv/bin/python benchmarks/probe_robustness.py --python .venv/bin/python \\
        --pythonpath /tmp/probe_before/src --json benchmarks/results/probe_robustness_before.json \\
        > benchmarks/results/probe_robustness_before.txt
    .venv/bin/python benchmarks/probe_robustness.py --python .venv/bin/python --pythonpath src \\
        --json benchmarks/results/probe_robustness_after.json > benchmarks/results/probe_robustness_after.txt

The table goes to stdout, one progress line per case to stderr. ``--list`` shows every case and
what CLEAN means for it; ``--all`` adds the extra variants (about 4 minutes more); ``--case ID``
runs the cases whose id starts with ID. Needs numpy, Pillow and torch in the interpreter running
the probe (it writes images and edits checkpoints itself); about 10 minutes on a 2-core CPU,
mostly the import time of each probed process.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pickle
import random
import re
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CLASSES = ("data-loss", "wrong-results", "tracebacks", "network")

# One stderr line of a clean user error: "dermogaze: error: ..." or argparse's "dermogaze train: error: ...".
ERROR_LINE = re.compile(r"^dermogaze(?: [\w.-]+)*: error: ")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Fault)\b")
PIPE_NOISE = ("Traceback", "Exception ignored", "BrokenPipeError")
OFFLINE_PROXY = "http://127.0.0.1:9"  # the discard port: connections are refused at once


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Proc:
    """One finished subprocess."""

    argv: list[str]
    rc: int | None
    out: str
    err: str
    seconds: float
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err


@dataclasses.dataclass
class Verdict:
    clean: bool
    outcome: str
    reason: str = ""


@dataclasses.dataclass
class Case:
    id: str
    cls: str
    what: str
    fn: Callable[[Probe, Path], Verdict]
    extra: bool = False  # only with --all (kept out of the default ~10-minute set)


CASES: list[Case] = []


#: Cases run only with --all: variants of a default case that cost time and add little.
EXTRA = {
    "dl-fresh-over-best-only",
    "wr-feature-gt1",
    "wr-feature-inf",
    "wr-epochs-0",
    "wr-width-0",
    "wr-loss-alpha-neg",
    "wr-steps-0",
    "tb-grad-clip-neg",
    "tb-lr-schedule-bogus",
    "tb-preset-folder",
    "tb-out-is-file-evaluate",
    "tb-out-is-file-synth",
    "tb-explain-truncated-png",
    "tb-explain-folder",
    "tb-explain-text-file",
    "tb-ckpt-truncated-resume",
    "tb-ckpt-empty-explain",
    "tb-ckpt-shape-mismatch",
    "tb-missing-cache-train",
    "tb-wrong-split-train",
    "tb-model-summary-size-33",
    "tb-eval-compare-garbage",
    "net-summary-imagenet-offline",
}


def case(cid: str, cls: str, what: str) -> Callable:
    assert cls in CLASSES, cls

    def register(fn: Callable[[Probe, Path], Verdict]) -> Callable:
        CASES.append(Case(cid, cls, what, fn, cid in EXTRA))
        return fn

    return register


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
    if proc.timed_out:
        return Verdict(False, f"timeout after {proc.seconds:.0f}s", "hung or far too slow (killed at --timeout)")
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


# ----------------------------------------------------------------------------------------------
# Running dermogaze
# ----------------------------------------------------------------------------------------------
class Probe:
    """The interpreter under test, its environment, the scratch space and the shared fixtures."""

    def __init__(self, python: str, pythonpath: str | None, work: Path, timeout: float, mem_gb: float, seed: int):
        self.python = python
        self.work = work
        self.timeout = timeout
        self.mem_bytes = int(mem_gb * (1 << 30)) if mem_gb > 0 else None
        self.rng = random.Random(seed)
        self.cwd = work / "cwd"  # relative defaults (runs/...) land here, never in a checkout
        self.cwd.mkdir(parents=True, exist_ok=True)
        torch_home = work / "torch_home_empty"
        torch_home.mkdir(exist_ok=True)
        env = dict(os.environ)
        # PYTHONUNBUFFERED dropped: a block-buffered stdout as at a user's shell, so that the pipe cases are
        # deterministic (unbuffered, whether `| head -1` hits a closed pipe is a race between two processes)
        for key in ("NO_PROXY", "no_proxy", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONUNBUFFERED"):
            env.pop(key, None)
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(Path(pythonpath).resolve())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            )
        for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
            env[key] = OFFLINE_PROXY
        env.update(
            TORCH_HOME=str(torch_home), MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1", COLUMNS="120", HF_HUB_OFFLINE="1"
        )
        self.env = env
        self.fx: dict[str, Path] = {}
        self.key_cmd: list[str] = []
        self.commands: list[list[str]] = []

    # -- processes -------------------------------------------------------------------------------
    def argv(self, args: Sequence[Any]) -> list[str]:
        return [self.python, "-m", "dermogaze", *map(str, args)]

    def _preexec(self) -> None:
        os.setsid()  # own process group: a timeout kills the whole tree
        if self.mem_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (self.mem_bytes, self.mem_bytes))

    def spawn(self, args: Sequence[Any], *, key: bool = True, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen:
        argv = self.argv(args)
        self.commands.append(argv)
        if key:
            self.key_cmd = argv
        return subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=self.env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=self._preexec,
        )

    def wait(self, popen: subprocess.Popen, timeout: float | None = None, started: float | None = None) -> Proc:
        started = started or time.monotonic()
        timed_out = False
        try:
            out, err = popen.communicate(timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with _suppress():
                os.killpg(popen.pid, signal.SIGKILL)
            out, err = popen.communicate()
        return Proc(list(popen.args), popen.returncode, out or "", err or "", time.monotonic() - started, timed_out)

    def run(self, args: Sequence[Any], *, key: bool = True, timeout: float | None = None) -> Proc:
        t0 = time.monotonic()
        return self.wait(self.spawn(args, key=key), timeout, t0)

    def bash(self, script: str, *, key_args: Sequence[Any], timeout: float | None = None) -> Proc:
        """Run ``script`` (which may use $DG for the dermogaze command) under bash."""
        env = dict(self.env, DG=" ".join(shlex.quote(a) for a in self.argv([])))
        argv = ["bash", "-c", script]
        self.commands.append(argv)
        self.key_cmd = self.argv(key_args)
        t0 = time.monotonic()
        popen = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            preexec_fn=self._preexec,
        )
        return self.wait(popen, timeout, t0)

    def show(self, argv: Sequence[str]) -> str:
        """A command as the table shows it: ``dermogaze ...`` with the scratch folder as ``$W``."""
        if list(argv[:3]) == [self.python, "-m", "dermogaze"]:
            argv = ["dermogaze", *argv[3:]]
        text = " ".join(a if a == "|" else shlex.quote(a) for a in argv)
        return text.replace(str(self.work), "$W")

    # -- shared inputs ---------------------------------------------------------------------------
    def train_args(self, out: Path, *extra: Any, epochs: int = 1, batches: int | None = 1) -> list[Any]:
        args: list[Any] = [
            "train",
            "--preset",
            "tiny",
            "--data",
            self.fx["cache"],
            "--out",
            out,
            "-o",
            f"train.epochs={epochs}",
        ]
        if batches:
            args += ["-o", f"train.max_train_batches={batches}"]
        return args + list(extra)

    def eval_args(self, ckpt: Path, out: Path, *extra: Any, data: Path | None = None, split: str = "test") -> list:
        return [
            "evaluate",
            "--checkpoint",
            ckpt,
            "--data",
            data or self.fx["cache"],
            "--split",
            split,
            "--out",
            out,
            "--bootstrap",
            "20",
            *extra,
        ]

    def explain_args(self, inputs: Sequence[Any], out: Path, ckpt: Path | None = None) -> list:
        return ["explain", *inputs, "--checkpoint", ckpt or self.fx["best"], "--out", out]

    def copy_collection(self, dst: Path) -> Path:
        shutil.copytree(self.fx["col"], dst)
        return dst

    def copy_cache(self, dst: Path) -> Path:
        shutil.copytree(self.fx["cache"], dst)
        return dst


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError, OSError))


# ----------------------------------------------------------------------------------------------
# Helpers: files, images, checkpoints
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
    rows = (col / f"ISIC-2017_{official}_Part3_GroundTruth.csv").read_text().splitlines()[1:]
    return rows[k].split(",")[0]


def cache_ids(cache: Path, split: str) -> list[str]:
    data = json.loads((cache / split / "ids.json").read_text())
    return list(data["ids"] if isinstance(data, dict) else data)


def cache_count(cache: Path, split: str) -> int | None:
    try:
        import numpy as np

        return int(np.load(cache / split / "images.npy", mmap_mode="r").shape[0])
    except Exception:
        return None


def torch_load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def torch_save(obj: Any, path: Path) -> Path:
    import torch

    torch.save(obj, path)
    return path


def edit_checkpoint(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    ckpt = torch_load(src)
    edit(ckpt)
    return torch_save(ckpt, dst)


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
        except Exception as exc:
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
        except Exception as exc:
            problems.append(f"best.pt unreadable ({type(exc).__name__})")
    return problems


def gray(rgb: Any) -> Any:
    import numpy as np

    return np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------
def prepare_fixtures(p: Probe) -> None:
    fx = p.work / "fixtures"
    fx.mkdir(parents=True, exist_ok=True)
    col, cache, run = fx / "collection", fx / "cache", fx / "run"
    steps = [
        ["data", "synth", "--out", col, "--train", 16, "--val", 8, "--test", 8, "--width", 64, "--height", 48],
        ["data", "prepare", "--isic", col, "--out", cache, "--size", 40],
        ["train", "--preset", "tiny", "--data", cache, "--out", run, "-o", "train.epochs=1"],
    ]
    for args in steps:
        proc = p.run(args, key=False, timeout=max(p.timeout, 300))
        if proc.rc != 0:
            sys.exit(f"fixture step failed: {p.show(proc.argv)}\n{proc.err[-3000:]}")
    p.fx.update(col=col, cache=cache, run=run, best=run / "best.pt", last=run / "last.pt")
    test_images = sorted(split_folder(col, "Test_v2", "Data").glob("ISIC_*[0-9].jpg"))
    p.fx["img"] = Path(shutil.copy(test_images[0], fx / "lesion.jpg"))
    p.fx["img2"] = Path(shutil.copy(test_images[1], fx / "lesion2.jpg"))
    p.fx["bomb"] = write_zero_png(fx / "bomb_20000x10000.png", 20000, 10000)  # 200 MP, ~200 kB


# ----------------------------------------------------------------------------------------------
# data-loss
# ----------------------------------------------------------------------------------------------
def _stat(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def kill_near_epoch_end(p: Probe, d: Path, mode: str) -> Verdict:
    """Train 2 epochs, SIGKILL at an epoch-end write boundary (``mode``), resume, check the run."""
    run = d / "run"
    metrics, last = run / "metrics.jsonl", run / "last.pt"
    t0 = time.monotonic()
    popen = p.spawn(p.train_args(run, epochs=2, batches=None))  # the table shows this command
    deadline = t0 + p.timeout
    trigger = None
    base_m = base_l = None
    delay = p.rng.uniform(0.0, 0.06) if mode == "e2-random" else 0.0
    while time.monotonic() < deadline and popen.poll() is None:
        sm, sl = _stat(metrics), _stat(last)
        if mode == "e1-last":
            if sl is not None:
                trigger = "epoch-1 last.pt written"
        elif sl is not None:
            if base_m is None:
                base_m, base_l = sm, sl
            elif mode in ("e2-metrics", "e2-random") and sm != base_m:
                trigger = "epoch-2 metrics.jsonl written" + (f" + {delay * 1000:.0f} ms" if delay else "")
            elif mode == "e2-last" and sl != base_l:
                trigger = "epoch-2 last.pt written"
        if trigger:
            if delay:
                time.sleep(delay)
            with _suppress():
                os.killpg(popen.pid, signal.SIGKILL)
            break
        time.sleep(0.0005)
    killed = p.wait(popen, timeout=30, started=t0)
    if not trigger:
        bad = failure(killed) or Verdict(False, f"rc={killed.rc}", "")
        return Verdict(False, f"kill point never reached ({bad.outcome})", "the training did not reach the epoch end")
    state = f"killed at {trigger} (files: {', '.join(sorted(f.name for f in run.iterdir()))})"
    resumed = p.run(["train", "--resume", run], key=False)
    verdict = success(resumed, "--resume after a kill")
    problems = run_invariants(run, 2)
    return both(
        Verdict(verdict.clean, f"{state}; resume {verdict.outcome}", verdict.reason),
        *[(False, msg) for msg in problems],
    )


@case(
    "dl-kill-e1-last",
    "data-loss",
    "SIGKILL right after epoch 1's last.pt appears, --resume: metrics 1 row/epoch, best.pt = best epoch",
)
def _(p: Probe, d: Path) -> Verdict:
    return kill_near_epoch_end(p, d, "e1-last")


@case("dl-kill-e2-metrics", "data-loss", "SIGKILL right after epoch 2's metrics.jsonl write, --resume: same checks")
def _(p: Probe, d: Path) -> Verdict:
    return kill_near_epoch_end(p, d, "e2-metrics")


@case(
    "dl-kill-e2-last",
    "data-loss",
    "SIGKILL right after epoch 2's last.pt write (before best.pt), --resume: same checks",
)
def _(p: Probe, d: Path) -> Verdict:
    return kill_near_epoch_end(p, d, "e2-last")


@case(
    "dl-kill-e2-random",
    "data-loss",
    "SIGKILL 0-60 ms (seeded delay) after epoch 2's metrics.jsonl write, --resume: same checks (where the kill "
    "lands depends on the machine's speed: the one timing-dependent case)",
)
def _(p: Probe, d: Path) -> Verdict:
    return kill_near_epoch_end(p, d, "e2-random")


@case(
    "dl-concurrent-train",
    "data-loss",
    "two `train` into one --out 1 s apart: one fails cleanly, the other finishes a consistent run",
)
def _(p: Probe, d: Path) -> Verdict:
    run = d / "run"
    args = p.train_args(run, epochs=2, batches=None)
    t0 = time.monotonic()
    first = p.spawn(args, key=False)
    time.sleep(1.0)
    t1 = time.monotonic()
    second = p.spawn(args)
    a, b = p.wait(first, started=t0), p.wait(second, started=t1)
    problems = run_invariants(run, 2)
    ok = [x for x in (a, b) if x.rc == 0]
    if len(ok) == 2:
        return Verdict(
            False,
            "both rc=0: two trainings wrote one run folder" + (f"; {problems[0]}" if problems else ""),
            "a second train on a busy run folder is not refused",
        )
    if len(ok) == 0:
        return Verdict(False, f"first {success(a).outcome}; second {success(b).outcome}", "neither training finished")
    loser = b if ok[0] is a else a
    verdict = user_error(loser)
    order = "second refused" if loser is b else "FIRST refused, second won"
    return both(
        Verdict(verdict.clean, f"{order}: {verdict.outcome}", verdict.reason), *[(False, msg) for msg in problems]
    )


def fresh_train_over(p: Probe, d: Path, keep: Sequence[str]) -> Verdict:
    run = d / "run"
    run.mkdir()
    for name in keep:
        shutil.copy(p.fx["run"] / name, run / name)
    before = {name: sha(run / name) for name in keep}
    verdict = user_error(p.run(p.train_args(run)))
    lost = [name for name in keep if sha(run / name) != before[name]]
    return both(verdict, (not lost, f"{', '.join(lost)} {'deleted or replaced' if lost else ''}".strip()))


@case(
    "dl-fresh-over-best-metrics",
    "data-loss",
    "fresh `train --out` into a folder with best.pt + metrics.jsonl, no last.pt: refused, files kept",
)
def _(p: Probe, d: Path) -> Verdict:
    return fresh_train_over(p, d, ["best.pt", "metrics.jsonl"])


@case("dl-fresh-over-best-only", "data-loss", "fresh `train --out` into a folder holding only best.pt: refused, kept")
def _(p: Probe, d: Path) -> Verdict:
    return fresh_train_over(p, d, ["best.pt"])


@case(
    "dl-fresh-over-full-run",
    "data-loss",
    "fresh `train --out` into a complete run (last.pt, best.pt, metrics.jsonl, config.yaml): refused, kept",
)
def _(p: Probe, d: Path) -> Verdict:
    return fresh_train_over(p, d, ["last.pt", "best.pt", "metrics.jsonl", "config.yaml"])


def failed_reprepare(p: Probe, d: Path, spoil: Callable[[Path], None]) -> Verdict:
    col = p.copy_collection(d / "collection")
    cache = p.copy_cache(d / "cache")
    spoil(col)
    verdict = user_error(p.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40, "--force"]))
    stats = p.run(["data", "stats", cache], key=False)
    after = success(stats)
    return both(verdict, (after.clean, f"old cache no longer loads (data stats {after.outcome})"))


@case(
    "dl-reprepare-bad-image",
    "data-loss",
    "`data prepare --force` into a good cache from a collection with a corrupt image: fails cleanly, "
    "old cache still loads (data stats)",
)
def _(p: Probe, d: Path) -> Verdict:
    def spoil(col: Path) -> None:
        (split_folder(col, "Training", "Data") / f"{first_id(col, 'Training', 2)}.jpg").write_bytes(b"\xff\xd8garbage")

    return failed_reprepare(p, d, spoil)


@case(
    "dl-reprepare-bad-features",
    "data-loss",
    "`data prepare --force` into a good cache from a collection with unreadable Part 2 JSON: fails cleanly, "
    "old cache still loads",
)
def _(p: Probe, d: Path) -> Verdict:
    def spoil(col: Path) -> None:
        (
            split_folder(col, "Validation", "Part2_GroundTruth") / f"{first_id(col, 'Validation')}_features.json"
        ).write_text('{"pigment_network": [0, ')

    return failed_reprepare(p, d, spoil)


def explain_distinct(p: Probe, d: Path, names: Sequence[str]) -> Verdict:
    from PIL import Image

    inputs = []
    for k, name in enumerate(names):  # three different pictures: lesion, lesion2, lesion mirrored
        im = Image.open(p.fx["img2" if k == 1 else "img"]).convert("RGB")
        (im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k == 2 else im).save(d / name)
        inputs.append(d / name)
    out = d / "out"
    verdict = success(p.run(p.explain_args(inputs, out)))
    records = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))] if out.is_dir() else []
    paths = {str(r.get("image_path")) for r in records}
    return both(
        verdict,
        (
            len(records) == len(names) and len(paths) == len(names),
            f"{len(records)} JSON record(s) for {len(names)} different images",
        ),
    )


@case(
    "dl-explain-collision-space",
    "data-loss",
    "`explain 'a b.jpg' a_b.png` (two different images): two distinct JSON records",
)
def _(p: Probe, d: Path) -> Verdict:
    return explain_distinct(p, d, ["a b.jpg", "a_b.png"])


@case(
    "dl-explain-collision-suffix",
    "data-loss",
    "`explain x.jpg x.png x_2.jpg` (three different images): three distinct JSON records",
)
def _(p: Probe, d: Path) -> Verdict:
    return explain_distinct(p, d, ["x.jpg", "x.png", "x_2.jpg"])


# ----------------------------------------------------------------------------------------------
# wrong-results
# ----------------------------------------------------------------------------------------------
@case(
    "wr-16bit-gray-png",
    "wrong-results",
    "a training image replaced by a 16-bit greyscale PNG of itself: prepare succeeds and the cached image "
    "is not all 255 (mean |difference| to the 8-bit grey < 25 levels)",
)
def _(p: Probe, d: Path) -> Verdict:
    import numpy as np
    from PIL import Image

    col = p.copy_collection(d / "collection")
    iid = first_id(col, "Training", 3)
    jpg = split_folder(col, "Training", "Data") / f"{iid}.jpg"
    grey8 = np.asarray(Image.open(jpg).convert("L"), dtype=np.uint16)
    Image.fromarray(grey8 * 257).save(jpg.with_suffix(".png"))  # mode I;16: a 16-bit greyscale PNG
    jpg.unlink()
    cache = d / "cache"
    verdict = success(
        p.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40]), "a 16-bit PNG is an image"
    )
    if not verdict.clean:
        return verdict
    try:
        k = cache_ids(cache, "train").index(iid)
        img = np.load(cache / "train" / "images.npy", mmap_mode="r")[k]
        ref = np.load(p.fx["cache"] / "train" / "images.npy", mmap_mode="r")[
            cache_ids(p.fx["cache"], "train").index(iid)
        ]
    except Exception as exc:
        return Verdict(False, f"cannot read the cached image ({type(exc).__name__}: {exc})", "cache unreadable")
    diff = float(np.abs(gray(img) - gray(ref)).mean())
    white = bool((np.asarray(img) == 255).all())
    return both(
        Verdict(True, f"rc=0, cached image mean {float(np.mean(img)):.0f}, |diff| {diff:.1f}"),
        (not white, "cached as pure white (all 255)"),
        (white or diff < 25, f"cached image differs by {diff:.0f} levels"),
    )


def feature_value(p: Probe, d: Path, raw: str, *, skip_bad: bool = False) -> Verdict:
    col = p.copy_collection(d / "collection")
    iid = first_id(col, "Training", 1)
    path = split_folder(col, "Training", "Part2_GroundTruth") / f"{iid}_features.json"
    data = json.loads(path.read_text())
    name = next(iter(data))
    values = [json.dumps(v) for v in data[name]]
    values[0] = raw
    data[name] = "@@"
    path.write_text(json.dumps(data).replace('"@@"', "[" + ", ".join(values) + "]"))
    cache = d / "cache"
    args = ["data", "prepare", "--isic", col, "--out", cache, "--size", 40] + (["--skip-bad"] if skip_bad else [])
    proc = p.run(args)
    if not skip_bad:
        return user_error(proc)
    n = cache_count(cache, "train")
    return both(success(proc, "--skip-bad skips the sample"), (n == 15, f"train split holds {n} images, expected 15"))


for _raw, _label in (
    ("-1", "neg"),
    ("NaN", "nan"),
    ("1e300", "huge"),
    ('"x"', "str"),
    ("1.5", "gt1"),
    ("Infinity", "inf"),
):
    case(
        f"wr-feature-{_label}",
        "wrong-results",
        f"a Part 2 feature value {_raw} (outside [0, 1]): `data prepare` refuses cleanly",
    )(lambda p, d, _raw=_raw: feature_value(p, d, _raw))

case(
    "wr-feature-nan-skip-bad",
    "wrong-results",
    "a Part 2 feature value NaN with --skip-bad: prepare succeeds and the sample is skipped (15 train images)",
)(lambda p, d: feature_value(p, d, "NaN", skip_bad=True))


def _nan_weights(ckpt: dict) -> None:
    for tensor in ckpt["model"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))


@case("wr-nan-ckpt-evaluate", "wrong-results", "`evaluate` of a checkpoint with NaN weights: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    ckpt = edit_checkpoint(p.fx["best"], d / "nan.pt", _nan_weights)
    return user_error(p.run(p.eval_args(ckpt, d / "eval")))


@case("wr-nan-ckpt-explain", "wrong-results", "`explain` with a checkpoint with NaN weights: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    ckpt = edit_checkpoint(p.fx["best"], d / "nan.pt", _nan_weights)
    return user_error(p.run(p.explain_args([p.fx["img"]], d / "out", ckpt)))


@case(
    "wr-nan-temperature-evaluate",
    "wrong-results",
    "`evaluate` of a checkpoint whose stored calibration temperature is NaN: clean failure",
)
def _(p: Probe, d: Path) -> Verdict:
    ckpt = edit_checkpoint(p.fx["best"], d / "nan_t.pt", lambda c: c["calibration"].update(temperature=float("nan")))
    return user_error(p.run(p.eval_args(ckpt, d / "eval")))


def bad_override(p: Probe, d: Path, *overrides: str, flags: Sequence[str] = ()) -> Verdict:
    out = d / "run"
    extra: list[str] = []
    for o in overrides:
        extra += ["-o", o]
    verdict = user_error(p.run(p.train_args(out, *extra, *flags)))
    return verdict


for _cid, _override, _why in (
    ("wr-lr-attention-neg", "train.lr_attention=-1", "a negative learning rate"),
    ("wr-lr-branches-nan", "train.lr_branches=nan", "a NaN learning rate"),
    ("wr-max-train-batches-0", "train.max_train_batches=0", "epochs of zero batches"),
    ("wr-epochs-0", "train.epochs=0", "zero epochs"),
    ("wr-steps-0", "model.steps=0", "zero gazes"),
    ("wr-width-0", "model.width=0", "a network of zero channels"),
    ("wr-image-size-over-cache", "model.image_size=64", "an input larger than the 40 px cache"),
    ("wr-loss-alpha-neg", "loss.alpha=-1", "a negative focal weight"),
    ("wr-threshold-bogus", "train.threshold=bogus", "an unknown threshold rule"),
):
    case(_cid, "wrong-results", f"`train -o {_override}` ({_why}): refused cleanly")(
        lambda p, d, _override=_override: bad_override(p, d, _override)
    )


@case(
    "wr-empty-val",
    "wrong-results",
    "a cache whose validation split is empty (CSV header only): `train` is refused cleanly "
    "(or `prepare` refuses the empty split cleanly)",
)
def _(p: Probe, d: Path) -> Verdict:
    col = p.copy_collection(d / "collection")
    for part in ("Data", "Part1_GroundTruth", "Part2_GroundTruth"):
        for f in split_folder(col, "Validation", part).iterdir():
            if f.name.startswith("ISIC_"):
                f.unlink()
    csv = col / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    cache = d / "cache"
    prep = p.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40])
    if prep.rc != 0:
        verdict = user_error(prep)
        return Verdict(verdict.clean, "prepare " + verdict.outcome, verdict.reason)
    args = p.train_args(d / "run")
    args[args.index("--data") + 1] = cache
    verdict = user_error(p.run(args))
    return Verdict(verdict.clean, "prepare rc=0; train " + verdict.outcome, verdict.reason)


# ----------------------------------------------------------------------------------------------
# tracebacks
# ----------------------------------------------------------------------------------------------
for _cid, _override in (
    ("tb-batch-size-0", "train.batch_size=0"),
    ("tb-betas-unclosed", "train.betas=[0.9"),
    ("tb-betas-2-3", "train.betas=[2,3]"),
    ("tb-weight-decay-neg", "train.weight_decay=-1"),
    ("tb-data-workers-neg", "data.workers=-1"),
    ("tb-grad-clip-neg", "train.grad_clip=-1"),
    ("tb-lr-schedule-bogus", "train.lr_schedule=bogus"),
):
    case(_cid, "tracebacks", f"`train -o '{_override}'`: refused cleanly")(
        lambda p, d, _override=_override: bad_override(p, d, _override)
    )


@case("tb-seed-neg", "tracebacks", "`train --seed -1`: refused cleanly and no run folder left behind")
def _(p: Probe, d: Path) -> Verdict:
    out = d / "run"
    verdict = user_error(p.run(p.train_args(out, "--seed", "-1")))
    left = ", ".join(sorted(f.name for f in out.iterdir())) if out.is_dir() else "a file"
    return both(verdict, (not out.exists(), f"run folder left behind ({left})"))


@case("tb-train-workers-neg", "tracebacks", "`train --workers -1`: refused cleanly")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(p.train_args(d / "run", "--workers", "-1")))


@case("tb-eval-batch-size-neg", "tracebacks", "`evaluate --batch-size -2`: refused cleanly")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(p.eval_args(p.fx["best"], d / "eval", "--batch-size", "-2")))


@case("tb-eval-workers-neg", "tracebacks", "`evaluate --workers -1`: refused cleanly")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(p.eval_args(p.fx["best"], d / "eval", "--workers", "-1")))


def bad_preset(p: Probe, d: Path, content: bytes | None, name: str = "preset.yaml") -> Verdict:
    path = d / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    args = p.train_args(d / "run")
    args[args.index("tiny")] = path
    return user_error(p.run(args))


@case("tb-preset-bad-yaml", "tracebacks", "`train --preset broken.yaml` (YAML syntax error): refused cleanly")
def _(p: Probe, d: Path) -> Verdict:
    return bad_preset(p, d, b"train: {epochs: [1,\nmodel: : :\n")


@case("tb-preset-binary", "tracebacks", "`train --preset random.yaml` (random bytes, not UTF-8): refused cleanly")
def _(p: Probe, d: Path) -> Verdict:
    return bad_preset(p, d, bytes(random.Random(1).randrange(256) for _ in range(512)))


@case("tb-preset-list", "tracebacks", "`train --preset list.yaml` (a YAML list, not a mapping): refused cleanly")
def _(p: Probe, d: Path) -> Verdict:
    return bad_preset(p, d, b"- train\n- model\n")


@case("tb-preset-folder", "tracebacks", "`train --preset dir.yaml` (a folder): refused cleanly")
def _(p: Probe, d: Path) -> Verdict:
    return bad_preset(p, d, None, "dir.yaml")


def out_args(p: Probe, cmd: str, d: Path, out: Path) -> list[Any]:
    if cmd == "train":
        return p.train_args(out)
    if cmd == "evaluate":
        return p.eval_args(p.fx["best"], out)
    if cmd == "explain":
        return p.explain_args([p.fx["img"]], out)
    if cmd == "prepare":
        return ["data", "prepare", "--isic", p.fx["col"], "--out", out, "--size", 40]
    return ["data", "synth", "--out", out, "--train", 2, "--val", 0, "--test", 0, "--width", 64, "--height", 48]


def out_vs_file(p: Probe, d: Path, cmd: str, under: bool) -> Verdict:
    blocker = d / "notes.txt"
    blocker.write_text("a user's file\n")
    out = blocker / "out" if under else blocker
    verdict = user_error(p.run(out_args(p, cmd, d, out)))
    return both(
        verdict, (blocker.is_file() and blocker.read_text() == "a user's file\n", "the user's file was changed")
    )


for _cmd in ("train", "evaluate", "explain", "prepare", "synth"):
    case(
        f"tb-out-under-file-{_cmd}",
        "tracebacks",
        f"`{_cmd} --out FILE/sub` (a regular file in the path): refused cleanly, file kept",
    )(lambda p, d, _cmd=_cmd: out_vs_file(p, d, _cmd, True))
    case(
        f"tb-out-is-file-{_cmd}",
        "tracebacks",
        f"`{_cmd} --out FILE` (an existing regular file): refused cleanly, file kept",
    )(lambda p, d, _cmd=_cmd: out_vs_file(p, d, _cmd, False))


def closed_pipe(p: Probe, d: Path, args: Sequence[Any], reader: str) -> Verdict:
    err, rcf = d / "stderr.txt", d / "rc.txt"
    quoted = " ".join(shlex.quote(str(a)) for a in args)
    proc = p.bash(
        f'$DG {quoted} 2>{shlex.quote(str(err))} | {reader}; echo "${{PIPESTATUS[0]}}" > {shlex.quote(str(rcf))}',
        key_args=[*args, "|", *reader.split()],
    )
    if proc.timed_out:
        return Verdict(False, f"timeout after {proc.seconds:.0f}s", "hung")
    text = err.read_text(errors="replace") if err.is_file() else ""
    rc = int(rcf.read_text().strip() or -1) if rcf.is_file() else -1
    noise = [m for m in PIPE_NOISE if m in text]
    tb = traceback_of(Proc([], rc, "", text, 0.0))
    if noise:
        return Verdict(False, f"rc={rc}, {tb or noise[0]}", "traceback / error on a closed pipe")
    if rc not in (0, 141):
        return Verdict(False, f"rc={rc}; stderr: {_short(text, 80)}", "non-zero status on a closed pipe")
    return Verdict(True, f"rc={rc}, quiet")


# With a block-buffered stdout (the probe drops PYTHONUNBUFFERED) a short output leaves in one write at exit, before
# `head -1` can go away: the `| head -1` cases run as a user would and only catch an error raised by a later write
# (or a longer output); the `| true` cases close the pipe before the first write, deterministically.
@case("tb-pipe-stats-head", "tracebacks", "`data stats CACHE | head -1`: no traceback, status 0 (or 141)")
def _(p: Probe, d: Path) -> Verdict:
    return closed_pipe(p, d, ["data", "stats", p.fx["cache"]], "head -1")


@case("tb-pipe-model-list-head", "tracebacks", "`model list | head -1`: no traceback, status 0 (or 141)")
def _(p: Probe, d: Path) -> Verdict:
    return closed_pipe(p, d, ["model", "list"], "head -1")


@case(
    "tb-pipe-stats-closed",
    "tracebacks",
    "`data stats CACHE | true` (reader gone before the first write): no traceback, status 0 (or 141)",
)
def _(p: Probe, d: Path) -> Verdict:
    return closed_pipe(p, d, ["data", "stats", p.fx["cache"]], "true")


@case("tb-pipe-model-list-closed", "tracebacks", "`model list | true`: no traceback, status 0 (or 141)")
def _(p: Probe, d: Path) -> Verdict:
    return closed_pipe(p, d, ["model", "list"], "true")


@case("tb-pipe-help-closed", "tracebacks", "`dermogaze --help | true`: no traceback, status 0 (or 141)")
def _(p: Probe, d: Path) -> Verdict:
    return closed_pipe(p, d, ["--help"], "true")


def bomb_collection(p: Probe, d: Path) -> Path:
    col = p.copy_collection(d / "collection")
    iid = first_id(col, "Training", 5)
    data = split_folder(col, "Training", "Data")
    (data / f"{iid}.jpg").unlink()
    shutil.copy(p.fx["bomb"], data / f"{iid}.png")
    return col


@case(
    "tb-bomb-prepare",
    "tracebacks",
    "a 200 MP decompression-bomb PNG (~200 kB) in the collection: `data prepare` fails cleanly, in time and memory",
)
def _(p: Probe, d: Path) -> Verdict:
    col = bomb_collection(p, d)
    return user_error(p.run(["data", "prepare", "--isic", col, "--out", d / "cache", "--size", 40]))


@case(
    "tb-bomb-prepare-skip-bad",
    "tracebacks",
    "the same bomb with `--skip-bad`: prepare succeeds and skips it (15 train images)",
)
def _(p: Probe, d: Path) -> Verdict:
    col = bomb_collection(p, d)
    cache = d / "cache"
    proc = p.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40, "--skip-bad"])
    n = cache_count(cache, "train")
    return both(success(proc, "--skip-bad"), (n == 15, f"train split holds {n} images, expected 15"))


@case("tb-bomb-explain", "tracebacks", "`explain bomb.png` (200 MP declared): clean failure, in time and memory")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(p.explain_args([p.fx["bomb"]], d / "out")))


def bad_image_explain(p: Probe, d: Path, name: str, content: bytes | None) -> Verdict:
    path = d / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return user_error(p.run(p.explain_args([path], d / "out")))


@case("tb-explain-truncated-jpeg", "tracebacks", "`explain` of a JPEG cut in half: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    data = p.fx["img"].read_bytes()
    return bad_image_explain(p, d, "cut.jpg", data[: len(data) // 2])


@case("tb-explain-truncated-png", "tracebacks", "`explain` of a PNG cut in half: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    from PIL import Image

    Image.open(p.fx["img"]).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    return bad_image_explain(p, d, "cut.png", data[: len(data) // 2])


@case("tb-explain-empty-file", "tracebacks", "`explain` of an empty .jpg: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return bad_image_explain(p, d, "empty.jpg", b"")


@case("tb-explain-random-bytes", "tracebacks", "`explain` of random bytes named .png: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return bad_image_explain(p, d, "noise.png", b"\x89PNG\r\n\x1a\n" + os.urandom(2048))


@case("tb-explain-text-file", "tracebacks", "`explain notes.txt` (not an image): clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return bad_image_explain(p, d, "notes.txt", b"not an image\n")


@case("tb-explain-folder", "tracebacks", "`explain somefolder.jpg` (a folder): clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return bad_image_explain(p, d, "folder.jpg", None)


def bad_checkpoint(p: Probe, d: Path, make: Callable[[Path], None], cmd: str = "evaluate") -> Verdict:
    ckpt = d / "model.pt"
    make(ckpt)
    if cmd == "evaluate":
        return user_error(p.run(p.eval_args(ckpt, d / "eval")))
    if cmd == "explain":
        return user_error(p.run(p.explain_args([p.fx["img"]], d / "out", ckpt)))
    run = d / "run"  # resume: a run folder whose last.pt is the bad file
    run.mkdir()
    shutil.move(ckpt, run / "last.pt")
    return user_error(p.run(["train", "--resume", run]))


@case("tb-ckpt-truncated-evaluate", "tracebacks", "`evaluate` of a checkpoint cut in half: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    data = p.fx["best"].read_bytes()
    return bad_checkpoint(p, d, lambda c: c.write_bytes(data[: len(data) // 2]))


@case("tb-ckpt-truncated-resume", "tracebacks", "`train --resume RUN` whose last.pt is cut in half: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    data = p.fx["last"].read_bytes()
    return bad_checkpoint(p, d, lambda c: c.write_bytes(data[: len(data) // 2]), "resume")


@case("tb-ckpt-empty-explain", "tracebacks", "`explain --checkpoint empty.pt` (0 bytes): clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return bad_checkpoint(p, d, lambda c: c.write_bytes(b""), "explain")


@case("tb-ckpt-plain-pickle", "tracebacks", "`evaluate` of a plain pickle (not a torch file): clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return bad_checkpoint(p, d, lambda c: c.write_bytes(pickle.dumps({"format": "dermogaze", "model": {}})))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@case(
    "tb-ckpt-evil-pickle",
    "tracebacks",
    "`evaluate` of a torch file whose pickle would run a command: clean failure, command not run",
)
def _(p: Probe, d: Path) -> Verdict:
    marker = d / "PWNED"
    verdict = bad_checkpoint(p, d, lambda c: torch_save({"format": "x", "payload": _Evil(marker)}, c))
    return both(verdict, (not marker.exists(), "the pickle's command RAN"))


@case(
    "tb-ckpt-shape-mismatch",
    "tracebacks",
    "`evaluate` of a checkpoint whose weights do not fit its model (width edited): clean failure",
)
def _(p: Probe, d: Path) -> Verdict:
    def make(c: Path) -> None:
        edit_checkpoint(p.fx["best"], c, lambda ck: ck["model_kwargs"].update(width=0.25))

    return bad_checkpoint(p, d, make)


@case("tb-missing-cache-evaluate", "tracebacks", "`evaluate --data MISSING`: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(p.eval_args(p.fx["best"], d / "eval", data=d / "missing")))


@case("tb-missing-cache-train", "tracebacks", "`train --data MISSING`: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    args = p.train_args(d / "run")
    args[args.index("--data") + 1] = d / "missing"
    return user_error(p.run(args))


@case("tb-missing-cache-stats", "tracebacks", "`data stats MISSING`: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(["data", "stats", d / "missing"]))


@case("tb-wrong-split-evaluate", "tracebacks", "`evaluate --split bogus`: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(p.eval_args(p.fx["best"], d / "eval", split="bogus")))


@case("tb-wrong-split-explain", "tracebacks", "`explain bogus --data CACHE`: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(
        p.run(["explain", "bogus", "--data", p.fx["cache"], "--checkpoint", p.fx["best"], "--out", d / "out"])
    )


@case("tb-wrong-split-train", "tracebacks", "`train -o data.val_split=bogus`: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return bad_override(p, d, "data.val_split=bogus")


@case("tb-stats-corrupt-info", "tracebacks", "`data stats CACHE` whose info.json is cut short: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    cache = p.copy_cache(d / "cache")
    text = (cache / "info.json").read_text()
    (cache / "info.json").write_text(text[: len(text) // 2])
    return user_error(p.run(["data", "stats", cache]))


@case("tb-eval-truncated-npy", "tracebacks", "`evaluate` on a cache whose test/images.npy is cut short: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    cache = p.copy_cache(d / "cache")
    npy = cache / "test" / "images.npy"
    data = npy.read_bytes()
    npy.write_bytes(data[: len(data) // 2])
    return user_error(p.run(p.eval_args(p.fx["best"], d / "eval", data=cache)))


@case("tb-synth-prevalence-2", "tracebacks", "`data synth --prevalence streaks=2` (not a probability): clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(out_args(p, "synth", d, d / "col") + ["--prevalence", "streaks=2"]))


@case("tb-model-summary-size-33", "tracebacks", "`model summary deco_gap_3 --image-size 33`: clean failure")
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(["model", "summary", "deco_gap_3", "--image-size", "33"]))


@case("tb-eval-compare-garbage", "tracebacks", "`evaluate --compare random.csv` (random bytes): clean failure")
def _(p: Probe, d: Path) -> Verdict:
    garbage = d / "other.csv"
    garbage.write_bytes(bytes(random.Random(2).randrange(256) for _ in range(600)))
    return user_error(p.run(p.eval_args(p.fx["best"], d / "eval", "--compare", garbage)))


# ----------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------
def _imagenet_config(ckpt: dict) -> None:
    ckpt["config"]["model"]["weights"] = "imagenet"


def imagenet_run(p: Probe, d: Path) -> Path:
    """A copy of the fixture run whose stored configuration says model.weights=imagenet."""
    run = d / "run"
    shutil.copytree(p.fx["run"], run)
    for name in ("last.pt", "best.pt"):
        edit_checkpoint(run / name, run / name, _imagenet_config)
    cfg = run / "config.yaml"
    cfg.write_text(re.sub(r"(?m)^(\s*weights:).*$", r"\1 imagenet", cfg.read_text()))
    return run


@case(
    "net-resume-imagenet",
    "network",
    "`train --resume RUN -o train.epochs=2` of a run configured with model.weights=imagenet, downloads failing: "
    "succeeds without the network (epoch 2 written)",
)
def _(p: Probe, d: Path) -> Verdict:
    run = imagenet_run(p, d)
    verdict = success(p.run(["train", "--resume", run, "-o", "train.epochs=2"]), "the run holds every weight")
    rows = [r.get("epoch") for r in read_rows(run / "metrics.jsonl")]
    return both(verdict, (rows == [1, 2], f"metrics.jsonl epochs {rows}"))


@case("net-evaluate-imagenet", "network", "`evaluate` of that run's best.pt offline: succeeds")
def _(p: Probe, d: Path) -> Verdict:
    run = imagenet_run(p, d)
    return success(p.run(p.eval_args(run / "best.pt", d / "eval")), "the checkpoint holds every weight")


@case("net-explain-imagenet", "network", "`explain` with that run's best.pt offline: succeeds")
def _(p: Probe, d: Path) -> Verdict:
    run = imagenet_run(p, d)
    return success(
        p.run(p.explain_args([p.fx["img"]], d / "out", run / "best.pt")), "the checkpoint holds every weight"
    )


@case(
    "net-train-imagenet-offline",
    "network",
    "fresh `train -o model.weights=imagenet -o model.width=1` with downloads failing: clean failure, fast",
)
def _(p: Probe, d: Path) -> Verdict:
    return bad_override(p, d, "model.weights=imagenet", "model.width=1")


@case(
    "net-summary-imagenet-offline",
    "network",
    "`model summary deco_gap_3 --weights imagenet` with downloads failing: clean failure, fast",
)
def _(p: Probe, d: Path) -> Verdict:
    return user_error(p.run(["model", "summary", "deco_gap_3", "--weights", "imagenet"]))


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def _table(rows: list[dict], totals: dict) -> str:
    lines = [f"{'case':<30} {'class':<13} {'result':<9} command", f"{'':<30} {'':<13} {'':<9} -> outcome | reason"]
    lines.append("-" * 120)
    for r in rows:
        lines.append(
            f"{r['id']:<30} {r['class']:<13} {'CLEAN' if r['clean'] else 'NOT':<9} {_short(r['command'], 140)}"
        )
        tail = r["outcome"] + (f" | {r['reason']}" if r["reason"] and not r["clean"] else "")
        lines.append(f"{'':<30} {'':<13} {'':<9} -> {_short(tail, 200)}")
    lines.append("-" * 120)
    for cls, t in totals.items():
        lines.append(f"{cls:<30} clean {t['clean']:>3} / {t['total']:<3}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter whose `-m dermogaze` is probed")
    ap.add_argument("--pythonpath", help="prepended to PYTHONPATH of the probed processes (e.g. a frozen copy's src)")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a new temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary scratch folder")
    ap.add_argument("--only", choices=CLASSES, action="append", help="run only this class (repeatable)")
    ap.add_argument("--all", action="store_true", help=f"also the {len(EXTRA)} extra variants (about 4 more minutes)")
    ap.add_argument("--case", action="append", default=[], metavar="ID", help="run only cases whose id starts with ID")
    ap.add_argument("--timeout", type=float, default=90, help="seconds per probed process (default 90)")
    ap.add_argument("--mem-gb", type=float, default=6, help="address-space limit of probed processes (default 6)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random kill moments (default 0)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)

    assert EXTRA <= {c.id for c in CASES}, EXTRA - {c.id for c in CASES}
    cases = [
        c
        for c in CASES
        if (not args.only or c.cls in args.only)
        and (args.all or not c.extra or args.case)
        and (not args.case or any(c.id.startswith(x) for x in args.case))
    ]
    if args.list:
        for c in cases:
            print(f"{c.id:<30} {c.cls:<13} {'(extra) ' if c.extra else ''}{c.what}")
        return 0
    if not cases:
        ap.error("no case selected")

    # absolute (not resolved: a venv's python is a symlink that must stay one), as the cwd differs
    args.python = os.path.abspath(args.python) if os.sep in args.python else (shutil.which(args.python) or args.python)
    tmp = None
    if args.work:
        work = args.work.resolve()
        if work.exists() and any(work.iterdir()):
            ap.error(f"--work {work} is not empty (the probe needs fresh folders)")
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = work = Path(tempfile.mkdtemp(prefix="probe_robustness_"))
    probe = Probe(args.python, args.pythonpath, work, args.timeout, args.mem_gb, args.seed)
    started = time.monotonic()
    try:
        who = subprocess.run(
            [args.python, "-c", "import dermogaze; print(dermogaze.__file__, dermogaze.__version__)"],
            env=probe.env,
            cwd=probe.cwd,
            capture_output=True,
            text=True,
        )
        package = who.stdout.strip() or who.stderr.strip()[-300:]
        print(f"probing {package} with {args.python}; scratch {work}", file=sys.stderr)
        prepare_fixtures(probe)
        print(f"fixtures ready in {time.monotonic() - started:.0f}s", file=sys.stderr)
        rows: list[dict] = []
        for n, c in enumerate(cases, 1):
            d = work / "cases" / c.id
            d.mkdir(parents=True)
            probe.key_cmd, probe.commands = [], []
            t0 = time.monotonic()
            try:
                v = c.fn(probe, d)
            except Exception as exc:  # the probe's own fault: report it, never count it clean
                v = Verdict(False, f"PROBE ERROR {type(exc).__name__}: {exc}", "the probe itself failed on this case")
            seconds = time.monotonic() - t0
            cmd = probe.show(probe.key_cmd or (probe.commands[-1] if probe.commands else []))
            rows.append(
                {
                    "id": c.id,
                    "class": c.cls,
                    "clean": v.clean,
                    "command": cmd,
                    "outcome": v.outcome,
                    "reason": "" if v.clean else v.reason,
                    "what": c.what,
                    "seconds": round(seconds, 1),
                    "commands": [probe.show(a) for a in probe.commands],
                }
            )
            print(
                f"[{n:>2}/{len(cases)}] {c.id:<30} {'CLEAN' if v.clean else 'NOT  '} {seconds:5.1f}s  "
                f"{_short(v.outcome, 90)}",
                file=sys.stderr,
            )
        totals: dict[str, dict[str, int]] = {}
        for cls in CLASSES:
            mine = [r for r in rows if r["class"] == cls]
            if mine:
                totals[cls] = {"clean": sum(r["clean"] for r in mine), "total": len(mine)}
        totals["overall"] = {"clean": sum(r["clean"] for r in rows), "total": len(rows)}
        elapsed = time.monotonic() - started
        print(_table(rows, totals))
        print(f"\n{package}; {elapsed:.0f}s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            meta = {
                "python": args.python,
                "pythonpath": args.pythonpath,
                "package": package,
                "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "seconds": round(elapsed, 1),
                "timeout": args.timeout,
                "mem_gb": args.mem_gb,
                "seed": args.seed,
            }
            args.json.write_text(json.dumps({"meta": meta, "totals": totals, "cases": rows}, indent=1) + "\n")
        return 0
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
