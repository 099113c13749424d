"""tracebacks: user errors must end in one ``dermogaze: error:`` line, never a traceback."""

from __future__ import annotations

import os
import pickle
import random
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from .cli_probe import (
    PIPE_NOISE,
    Probe,
    Proc,
    Verdict,
    _short,
    both,
    cache_count,
    check,
    edit_checkpoint,
    first_id,
    split_folder,
    success,
    traceback_of,
    user_error,
)

# ----------------------------------------------------------------------------------------------
# Bad options
# ----------------------------------------------------------------------------------------------
BAD_TRAIN_OPTIONS = {
    "tb-batch-size-0": ["-o", "train.batch_size=0"],
    "tb-betas-unclosed": ["-o", "train.betas=[0.9"],
    "tb-betas-2-3": ["-o", "train.betas=[2,3]"],
    "tb-weight-decay-neg": ["-o", "train.weight_decay=-1"],
    "tb-data-workers-neg": ["-o", "data.workers=-1"],
    "tb-grad-clip-neg": ["-o", "train.grad_clip=-1"],
    "tb-lr-schedule-bogus": ["-o", "train.lr_schedule=bogus"],
    "tb-wrong-split-train": ["-o", "data.val_split=bogus"],
    "tb-train-workers-neg": ["--workers", "-1"],
}


@pytest.mark.parametrize("options", [pytest.param(v, id=k) for k, v in BAD_TRAIN_OPTIONS.items()])
def test_train_refuses_a_bad_option(probe: Probe, tmp_path, options):
    """``train`` with an override or flag it cannot take: refused cleanly."""
    check(user_error(probe.run(probe.train_args(tmp_path / "run", *options))), probe)


@pytest.mark.parametrize("case", ["tb-seed-neg"])
def test_train_refuses_a_negative_seed_and_leaves_no_folder(probe: Probe, tmp_path, case):
    """``train --seed -1``: refused cleanly and no run folder left behind."""
    out = tmp_path / "run"
    verdict = user_error(probe.run(probe.train_args(out, "--seed", "-1")))
    left = ", ".join(sorted(f.name for f in out.iterdir())) if out.is_dir() else "a file"
    check(both(verdict, (not out.exists(), f"run folder left behind ({left})")), probe)


BAD_EVALUATE_OPTIONS = {
    "tb-eval-batch-size-neg": ["--batch-size", "-2"],
    "tb-eval-workers-neg": ["--workers", "-1"],
}


@pytest.mark.parametrize("options", [pytest.param(v, id=k) for k, v in BAD_EVALUATE_OPTIONS.items()])
def test_evaluate_refuses_a_bad_option(probe: Probe, tmp_path, options):
    """``evaluate --batch-size -2`` or ``--workers -1``: refused cleanly."""
    check(user_error(probe.run(probe.eval_args(probe.best, tmp_path / "eval", *options))), probe)


BAD_PRESETS: dict[str, tuple[str, bytes | None]] = {
    "tb-preset-bad-yaml": ("preset.yaml", b"train: {epochs: [1,\nmodel: : :\n"),  # a YAML syntax error
    "tb-preset-binary": ("preset.yaml", bytes(random.Random(1).randrange(256) for _ in range(512))),  # not UTF-8
    "tb-preset-list": ("preset.yaml", b"- train\n- model\n"),  # a YAML list, not a mapping
    "tb-preset-folder": ("dir.yaml", None),  # a folder
}


@pytest.mark.parametrize(("name", "content"), [pytest.param(*v, id=k) for k, v in BAD_PRESETS.items()])
def test_train_refuses_a_broken_preset_file(probe: Probe, tmp_path, name, content):
    """``train --preset FILE`` of broken YAML, random bytes, a YAML list or a folder: refused cleanly."""
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    args = probe.train_args(tmp_path / "run")
    args[args.index("tiny")] = path
    check(user_error(probe.run(args)), probe)


# ----------------------------------------------------------------------------------------------
# --out under or equal to a file
# ----------------------------------------------------------------------------------------------
def _out_args(probe: Probe, command: str, out: Path) -> list[Any]:
    if command == "train":
        return probe.train_args(out)
    if command == "evaluate":
        return probe.eval_args(probe.best, out)
    if command == "explain":
        return probe.explain_args([probe.img], out)
    if command == "prepare":
        return ["data", "prepare", "--isic", probe.col, "--out", out, "--size", 40]
    return ["data", "synth", "--out", out, "--train", 2, "--val", 0, "--test", 0, "--width", 64, "--height", 48]


OUT_VS_FILE = [
    pytest.param(command, under, id=f"tb-out-{'under' if under else 'is'}-file-{command}")
    for command in ("train", "evaluate", "explain", "prepare", "synth")
    for under in (True, False)
]


@pytest.mark.parametrize(("command", "under"), OUT_VS_FILE)
def test_an_out_path_through_or_at_a_file_is_refused_and_the_file_kept(probe: Probe, tmp_path, command, under):
    """``COMMAND --out FILE/sub`` (a regular file in the path) or ``--out FILE``: refused cleanly, the file kept."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a user's file\n")
    verdict = user_error(probe.run(_out_args(probe, command, blocker / "out" if under else blocker)))
    kept = blocker.is_file() and blocker.read_text() == "a user's file\n"
    check(both(verdict, (kept, "the user's file was changed")), probe)


# ----------------------------------------------------------------------------------------------
# Closed pipes
# ----------------------------------------------------------------------------------------------
# With a block-buffered stdout (the probe drops PYTHONUNBUFFERED) a short output leaves in one write at exit, before
# `head -1` can go away: the `| head -1` cases run as a user would and only catch an error raised by a later write
# (or a longer output); the `| true` cases close the pipe before the first write, deterministically.
PIPES = {
    "tb-pipe-stats-head": ("stats", "head -1"),
    "tb-pipe-model-list-head": ("model list", "head -1"),
    "tb-pipe-stats-closed": ("stats", "true"),
    "tb-pipe-model-list-closed": ("model list", "true"),
    "tb-pipe-help-closed": ("--help", "true"),
}


@pytest.mark.parametrize(("command", "reader"), [pytest.param(*v, id=k) for k, v in PIPES.items()])
def test_a_closed_pipe_is_quiet(probe: Probe, tmp_path, command, reader):
    """``dermogaze data stats CACHE``, ``model list`` or ``--help`` into ``| head -1`` or ``| true``: no traceback,
    status 0 (or 141, SIGPIPE)."""
    args = ["data", "stats", probe.cache] if command == "stats" else command.split()
    err, rcf = tmp_path / "stderr.txt", tmp_path / "rc.txt"
    quoted = " ".join(shlex.quote(str(a)) for a in args)
    proc = probe.bash(
        f'$DG {quoted} 2>{shlex.quote(str(err))} | {reader}; echo "${{PIPESTATUS[0]}}" > {shlex.quote(str(rcf))}'
    )
    text = err.read_text(errors="replace") if err.is_file() else ""
    rc = int(rcf.read_text().strip() or -1) if rcf.is_file() else -1
    noise = [m for m in PIPE_NOISE if m in text]
    if proc.hung:
        verdict = Verdict(False, "still running", "hung")
    elif noise:
        verdict = Verdict(False, f"rc={rc}, {traceback_of(Proc([], rc, '', text)) or noise[0]}",
                          "traceback / error on a closed pipe")
    elif rc not in (0, 141):
        verdict = Verdict(False, f"rc={rc}; stderr: {_short(text, 80)}", "non-zero status on a closed pipe")
    else:
        verdict = Verdict(True, f"rc={rc}, quiet")
    check(verdict, probe)


# ----------------------------------------------------------------------------------------------
# Decompression bombs
# ----------------------------------------------------------------------------------------------
def _bomb_collection(probe: Probe, tmp_path: Path) -> Path:
    """A copy of the collection with one training image replaced by the 200 MP bomb."""
    col = probe.copy_collection(tmp_path / "collection")
    data = split_folder(col, "Training", "Data")
    iid = first_id(col, "Training", 5)
    (data / f"{iid}.jpg").unlink()
    shutil.copy(probe.bomb, data / f"{iid}.png")
    return col


@pytest.mark.parametrize("case", ["tb-bomb-prepare"])
def test_prepare_refuses_a_decompression_bomb(probe: Probe, tmp_path, case):
    """A 200 MP decompression-bomb PNG (~200 kB) in the collection: ``data prepare`` fails cleanly, within the
    memory limit."""
    col = _bomb_collection(probe, tmp_path)
    check(user_error(probe.run(["data", "prepare", "--isic", col, "--out", tmp_path / "cache", "--size", 40])), probe)


@pytest.mark.parametrize("case", ["tb-bomb-prepare-skip-bad"])
def test_prepare_skip_bad_skips_a_decompression_bomb(probe: Probe, tmp_path, case):
    """The same bomb with ``--skip-bad``: prepare succeeds and skips it (15 train images)."""
    col = _bomb_collection(probe, tmp_path)
    cache = tmp_path / "cache"
    proc = probe.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40, "--skip-bad"])
    n = cache_count(cache, "train")
    check(both(success(proc, "--skip-bad"), (n == 15, f"train split holds {n} images, expected 15")), probe)


# ----------------------------------------------------------------------------------------------
# Broken images and checkpoints
# ----------------------------------------------------------------------------------------------
def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def _half_png(probe: Probe, tmp_path: Path) -> bytes:
    Image.open(probe.img).save(tmp_path / "full.png")
    return _half(tmp_path / "full.png")


BAD_IMAGES: dict[str, tuple[str, Callable[[Probe, Path], Path | bytes | None]]] = {
    "tb-bomb-explain": ("bomb", lambda p, d: p.bomb),  # 200 MP declared
    "tb-explain-truncated-jpeg": ("cut.jpg", lambda p, d: _half(p.img)),
    "tb-explain-truncated-png": ("cut.png", _half_png),
    "tb-explain-empty-file": ("empty.jpg", lambda p, d: b""),
    "tb-explain-random-bytes": ("noise.png", lambda p, d: b"\x89PNG\r\n\x1a\n" + os.urandom(2048)),
    "tb-explain-text-file": ("notes.txt", lambda p, d: b"not an image\n"),
    "tb-explain-folder": ("folder.jpg", lambda p, d: None),
}


@pytest.mark.parametrize(("name", "make"), [pytest.param(*v, id=k) for k, v in BAD_IMAGES.items()])
def test_explain_refuses_what_is_not_a_readable_image(probe: Probe, tmp_path, name, make):
    """``explain`` of a decompression bomb, a JPEG or PNG cut in half, an empty file, random bytes, a text file or
    a folder: clean failure."""
    content = make(probe, tmp_path)
    if isinstance(content, Path):
        path = content
    elif content is None:
        path = tmp_path / name
        path.mkdir()
    else:
        path = tmp_path / name
        path.write_bytes(content)
    check(user_error(probe.run(probe.explain_args([path], tmp_path / "out"))), probe)


class _Evil:
    """A pickle that runs ``touch MARKER`` when loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _plain_pickle(probe: Probe, path: Path) -> None:
    path.write_bytes(pickle.dumps({"format": "dermogaze", "model": {}}))


def _evil_pickle(probe: Probe, path: Path) -> None:
    torch.save({"format": "x", "payload": _Evil(path.parent / "PWNED")}, path)


def _shape_mismatch(probe: Probe, path: Path) -> None:
    edit_checkpoint(probe.best, path, lambda ck: ck["model_kwargs"].update(width=0.25))


BAD_CHECKPOINTS: dict[str, tuple[str, Callable[[Probe, Path], Any]]] = {
    "tb-ckpt-truncated-evaluate": ("evaluate", lambda p, c: c.write_bytes(_half(p.best))),
    "tb-ckpt-truncated-resume": ("resume", lambda p, c: c.write_bytes(_half(p.last))),
    "tb-ckpt-empty-explain": ("explain", lambda p, c: c.write_bytes(b"")),
    "tb-ckpt-plain-pickle": ("evaluate", _plain_pickle),  # not a torch file
    "tb-ckpt-evil-pickle": ("evaluate", _evil_pickle),  # refused, and its command not run
    "tb-ckpt-shape-mismatch": ("evaluate", _shape_mismatch),  # weights that do not fit the model (width edited)
}


@pytest.mark.parametrize(("command", "make"), [pytest.param(*v, id=k) for k, v in BAD_CHECKPOINTS.items()])
def test_a_broken_checkpoint_is_refused(probe: Probe, tmp_path, command, make):
    """``evaluate``, ``explain`` or ``train --resume`` of a checkpoint cut in half, empty, a plain pickle, a pickle
    that would run a command (which must not run), or weights that do not fit its model: clean failure."""
    ckpt = tmp_path / "model.pt"
    make(probe, ckpt)
    if command == "evaluate":
        args = probe.eval_args(ckpt, tmp_path / "eval")
    elif command == "explain":
        args = probe.explain_args([probe.img], tmp_path / "out", ckpt)
    else:  # a run folder whose last.pt is the bad file
        run = tmp_path / "run"
        run.mkdir()
        shutil.move(ckpt, run / "last.pt")
        args = ["train", "--resume", run]
    marker = tmp_path / "PWNED"
    check(both(user_error(probe.run(args)), (not marker.exists(), "the pickle's command RAN")), probe)


# ----------------------------------------------------------------------------------------------
# Missing or broken caches, unknown splits, bad values of other commands
# ----------------------------------------------------------------------------------------------
def _truncated(path: Path) -> Path:
    path.write_bytes(_half(path))
    return path


def _train_on_missing_cache(p: Probe, d: Path) -> list[Any]:
    args = p.train_args(d / "run")
    args[args.index("--data") + 1] = d / "missing"
    return args


def _stats_of_corrupt_info(p: Probe, d: Path) -> list[Any]:
    cache = p.copy_cache(d / "cache")
    _truncated(cache / "info.json")
    return ["data", "stats", cache]


def _evaluate_truncated_npy(p: Probe, d: Path) -> list[Any]:
    cache = p.copy_cache(d / "cache")
    _truncated(cache / "test" / "images.npy")
    return p.eval_args(p.best, d / "eval", data=cache)


def _compare_garbage(p: Probe, d: Path) -> list[Any]:
    garbage = d / "other.csv"
    garbage.write_bytes(bytes(random.Random(2).randrange(256) for _ in range(600)))
    return p.eval_args(p.best, d / "eval", "--compare", garbage)


MISSING_OR_BROKEN: dict[str, Callable[[Probe, Path], list[Any]]] = {
    "tb-missing-cache-evaluate": lambda p, d: p.eval_args(p.best, d / "eval", data=d / "missing"),
    "tb-missing-cache-train": _train_on_missing_cache,
    "tb-missing-cache-stats": lambda p, d: ["data", "stats", d / "missing"],
    "tb-wrong-split-evaluate": lambda p, d: p.eval_args(p.best, d / "eval", split="bogus"),
    "tb-wrong-split-explain": lambda p, d: ["explain", "bogus", "--data", p.cache, "--checkpoint", p.best,
                                            "--out", d / "out"],
    "tb-stats-corrupt-info": _stats_of_corrupt_info,  # info.json cut short
    "tb-eval-truncated-npy": _evaluate_truncated_npy,  # test/images.npy cut short
    "tb-synth-prevalence-2": lambda p, d: _out_args(p, "synth", d / "col") + ["--prevalence", "streaks=2"],
    "tb-model-summary-size-33": lambda p, d: ["model", "summary", "deco_gap_3", "--image-size", "33"],
    "tb-eval-compare-garbage": _compare_garbage,  # --compare of random bytes
}


@pytest.mark.parametrize("make_args", [pytest.param(v, id=k) for k, v in MISSING_OR_BROKEN.items()])
def test_a_missing_or_broken_input_is_a_clean_error(probe: Probe, tmp_path, make_args):
    """A missing or cut-short cache, an unknown split, a probability of 2, an image size that is not a multiple of
    32, a ``--compare`` file of random bytes: clean failure."""
    check(user_error(probe.run(make_args(probe, tmp_path))), probe)
