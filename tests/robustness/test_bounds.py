"""bounds: a number that no machine could finish (or hold) must be refused before any work, the reason in the line.

Resource bombs: a count, size or budget far beyond what the command can do (billions of bootstrap resamples, a
100 000 px cache, ten billion epochs, a scanpath of raw gaze samples) must not hang, be killed by the kernel or run
for ever: one ``dermogaze: error:`` line naming the flag or ``section.key``, its limit and why, and nothing
written. The limits must also leave room for real work: a value at a limit succeeds.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .cli_probe import Probe, Proc, both, check, success, user_error

BIG = "1000000000"  # a billion: far beyond every bound


def _names_its_limit(proc: Proc, *words: str) -> tuple[bool, str]:
    """The error line holds every one of ``words`` (the flag or key, the limit...)."""
    lines = [ln for ln in proc.err.splitlines() if "error:" in ln]
    missing = [w for w in words if not any(w in ln for ln in lines)]
    return not missing, f"the error line does not name {', '.join(map(repr, missing))}"


def _nothing_written(out: Path) -> tuple[bool, str]:
    return not out.exists(), f"{out.name} was created before the refusal"


# ----------------------------------------------------------------------------------------------
# Flags: bounded by their argument types, before anything runs
# ----------------------------------------------------------------------------------------------
def _synth(out: Path, *extra: Any) -> list[Any]:
    return ["data", "synth", "--out", out, "--train", 2, "--val", 0, "--test", 0, "--width", 64, "--height", 48, *extra]


def _sweep(p: Probe, out: Path, *extra: Any) -> list[Any]:
    return ["sweep", "--preset", "tiny", "--space", "demo", "--study", "bomb", "--trials", 2, "--data", p.cache,
            "--storage", f"sqlite:///{out.parent / 'sweeps.db'}", "--out", out, *extra]


#: case → (the command line of ``(probe, out)``, the words its error line must hold).
BIG_FLAGS: dict[str, tuple[Callable[[Probe, Path], list[Any]], tuple[str, ...]]] = {
    "rb-evaluate-bootstrap-1e9": (lambda p, o: p.eval_args(p.best, o, "--bootstrap", BIG), ("--bootstrap", "100000")),
    "rb-compare-bootstrap-1e9": (lambda p, o: ["compare", p.run_dir, "--out", o, "--bootstrap", BIG],
                                 ("--bootstrap", "100000")),
    "rb-table3-bootstrap-1e9": (lambda p, o: p.table3_args(o, "--bootstrap", BIG), ("--bootstrap", "100000")),
    "rb-prepare-size-100000": (lambda p, o: ["data", "prepare", "--isic", p.col, "--out", o, "--size", 100000],
                               ("--size", "2048")),
    "rb-prepare-workers-100000": (lambda p, o: ["data", "prepare", "--isic", p.col, "--out", o, "--workers", 100000],
                                  ("--workers", "64")),
    "rb-synth-side-100000": (lambda p, o: _synth(o, "--width", 100000, "--height", 100000), ("--width", "2048")),
    "rb-synth-height-50000": (lambda p, o: _synth(o, "--height", 50000), ("--height", "2048")),
    "rb-synth-train-1e6": (lambda p, o: _synth(o, "--train", 1_000_000), ("--train", "10000")),
    "rb-synth-test-5e5": (lambda p, o: _synth(o, "--test", 500_000), ("--test", "10000")),
    "rb-train-workers-100000": (lambda p, o: p.train_args(o, "--workers", 100000), ("--workers", "64")),
    "rb-evaluate-batch-1e9": (lambda p, o: p.eval_args(p.best, o, "--batch-size", BIG), ("--batch-size", "1024")),
    "rb-evaluate-workers-1e6": (lambda p, o: p.eval_args(p.best, o, "--workers", 1_000_000), ("--workers", "64")),
    "rb-evaluate-seed-2e40": (lambda p, o: p.eval_args(p.best, o, "--seed", 2**40), ("--seed", "4294967295")),
    "rb-predict-batch-1e9": (lambda p, o: ["predict", "--checkpoint", p.best, "--data", p.cache, "--format",
                                           "isic2017-part3", "--out", o, "--batch-size", BIG],
                             ("--batch-size", "1024")),
    "rb-summary-steps-100000": (lambda p, o: ["model", "summary", "deco_gap_3", "--steps", 100000], ("--steps", "64")),
    "rb-summary-size-65536": (lambda p, o: ["model", "summary", "deco_gap_3", "--image-size", 65536],
                              ("--image-size", "1024")),
    "rb-summary-width-1000": (lambda p, o: ["model", "summary", "deco_gap_3", "--width", 1000], ("--width", "4")),
    "rb-summary-width-inf": (lambda p, o: ["model", "summary", "deco_gap_3", "--width", "inf"], ("--width",)),
    "rb-table3-epochs-1e9": (lambda p, o: p.table3_args(o, "--epochs", BIG), ("--epochs", "1000")),
    "rb-serve-port-70000": (lambda p, o: ["serve", "--checkpoint", p.best, "--port", 70000], ("--port", "65535")),
    "rb-sweep-trials-1e12": (lambda p, o: _sweep(p, o, "--trials", 10**12), ("--trials", "10000")),
    "rb-sweep-heartbeat-1e9": (lambda p, o: _sweep(p, o, "--heartbeat", BIG), ("--heartbeat", "3600")),
    "rb-sweep-prune-warmup-1e12": (lambda p, o: _sweep(p, o, "--prune-warmup", 10**12), ("--prune-warmup", "1000")),
}


@pytest.mark.parametrize(("make", "words"), [pytest.param(*v, id=k) for k, v in BIG_FLAGS.items()])
def test_a_flag_beyond_any_machine_is_refused_before_work(probe: Probe, tmp_path, make, words):
    """A bootstrap, size, count, batch, worker, seed, epoch, port or trial count of a billion (or of 100 000 or a
    million where the bound is in the thousands): one line naming the flag and its limit, nothing written."""
    out = tmp_path / "out"
    proc = probe.run(make(probe, out))
    check(both(user_error(proc), _names_its_limit(proc, *words), _nothing_written(out)), probe)


# ----------------------------------------------------------------------------------------------
# Configuration values: bounded by config.RANGES, from an override, a preset file or a resumed run
# ----------------------------------------------------------------------------------------------
BIG_OVERRIDES = {
    "rb-epochs-1e12": "train.epochs=1000000000000",
    "rb-epochs-1e12-float": "train.epochs=1e12",
    "rb-batch-size-1e7": "train.batch_size=10000000",
    "rb-steps-100000": "model.steps=100000",
    "rb-image-size-32768": "model.image_size=32768",
    "rb-width-1000": "model.width=1000",
    "rb-data-workers-100000": "data.workers=100000",
    "rb-repeat-threshold-1e9": "train.repeat_threshold=1000000000.0",
    "rb-attention-warmup-1e12": "loss.attention_warmup=1000000000000",
}


@pytest.mark.parametrize("override", [pytest.param(v, id=k) for k, v in BIG_OVERRIDES.items()])
def test_a_config_value_beyond_any_machine_is_refused_before_work(probe: Probe, tmp_path, override):
    """``train -o section.key=HUGE`` (epochs, batch, gazes, input size, width, workers, repeat threshold, warm-up):
    one line naming ``section.key``, no run folder."""
    out = tmp_path / "run"
    proc = probe.run(probe.train_args(out, "-o", override))
    check(both(user_error(proc), _names_its_limit(proc, override.split("=")[0]), _nothing_written(out)), probe)


@pytest.mark.parametrize("case", ["rb-preset-file-epochs-1e12"])
def test_a_preset_file_beyond_any_machine_is_refused(probe: Probe, tmp_path, case):
    """A preset YAML with ``epochs: 1000000000000``: refused naming the file and the key, no run folder."""
    preset = tmp_path / "forever.yaml"
    preset.write_text("model: {name: deco_gap_3, image_size: 32, width: 0.125, steps: 2}\n"
                      "train: {epochs: 1000000000000, batch_size: 4, lr_encoder: 0.0001}\n")
    out = tmp_path / "run"
    proc = probe.run(["train", "--preset", preset, "--data", probe.cache, "--out", out])
    check(both(user_error(proc), _names_its_limit(proc, "forever.yaml", "train.epochs"), _nothing_written(out)), probe)


@pytest.mark.parametrize("case", ["rb-resume-epochs-1e12"])
def test_resuming_beyond_any_machine_is_refused_and_the_run_kept(probe: Probe, tmp_path, case):
    """``train --resume RUN -o train.epochs=1000000000000``: refused, the run's checkpoints untouched."""
    run = Path(shutil.copytree(probe.run_dir, tmp_path / "run"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    proc = probe.run(["train", "--resume", run, "-o", "train.epochs=1000000000000"])
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    check(both(user_error(proc), _names_its_limit(proc, "train.epochs"), (before == after, "the run was changed")),
          probe)


# ----------------------------------------------------------------------------------------------
# A scanpath of raw gaze samples: MultiMatch's alignment grows with the square of its length
# ----------------------------------------------------------------------------------------------
def _record(path: Path, steps: int = 4) -> Path:
    """An explanation record (the fields ``gaze compare`` reads) of a 64×48 image with ``steps`` gazes."""
    record = {"image_id": "ISIC_2000000", "image_size": {"width": 64, "height": 48},
              "steps": [{"step": t + 1, "gaze": {"x": 8 + 12 * t, "y": 10 + 8 * t}, "attention": 0.1 + 0.05 * t}
                        for t in range(steps)]}
    path.write_text(json.dumps(record))
    return path


def _fixations(path: Path, n: int) -> Path:
    rows = (f"{(7 * k) % 64},{(5 * k) % 48},{150 + k % 200}" for k in range(n))
    path.write_text("x,y,duration_ms\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("rows", [pytest.param(200_000, id="rb-gaze-200k-fixations"),
                                  pytest.param(20_000, id="rb-gaze-20k-fixations")])
def test_a_scanpath_of_raw_samples_is_refused_at_once(probe: Probe, tmp_path, rows):
    """``gaze compare`` of a record and a fixations CSV of 20 000 or 200 000 rows (raw eye-tracker samples): one
    line naming the file and the limit (hours of MultiMatch otherwise)."""
    proc = probe.run(["gaze", "compare", _record(tmp_path / "rec.json"), _fixations(tmp_path / "fix.csv", rows)])
    check(both(user_error(proc), _names_its_limit(proc, "fix.csv", "5000")), probe)


@pytest.mark.parametrize("case", ["rb-gaze-5000-fixations"])
def test_a_scanpath_at_the_limit_is_compared(probe: Probe, tmp_path, case):
    """5000 fixations, the limit: compared, five similarities printed."""
    proc = probe.run(["gaze", "compare", _record(tmp_path / "rec.json"), _fixations(tmp_path / "fix.csv", 5000),
                      "--json"])
    try:
        similarities = json.loads(proc.out)["similarities"]
    except (ValueError, KeyError, TypeError):
        similarities = {}
    check(both(success(proc, "5000 fixations"), (len(similarities) == 5, "no similarities printed")), probe)


# ----------------------------------------------------------------------------------------------
# The limits leave room for real work
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["rb-evaluate-bootstrap-100000"])
def test_the_largest_bootstrap_runs(probe: Probe, tmp_path, case):
    """``evaluate --bootstrap 100000`` (the limit) on the shared test split: succeeds, intervals written."""
    out = tmp_path / "eval"
    proc = probe.run(probe.eval_args(probe.best, out, "--bootstrap", 100000, "--faithfulness", 0))
    try:
        ci = json.loads((out / "metrics.json").read_text())["diagnosis_ci"]
    except (OSError, ValueError, KeyError):
        ci = None
    check(both(success(proc, "the largest bootstrap"), (ci is not None, "no diagnosis_ci in metrics.json")), probe)


def _at_limits(p: Probe, out: Path) -> tuple[list[Any], Callable[[], tuple[bool, str]]]:
    args = ["data", "synth", "--out", out, "--train", 1, "--val", 0, "--test", 0, "--width", 2048, "--height", 32]
    return args, lambda: (any(out.rglob("ISIC_*.jpg")), "no picture written")


AT_LIMITS: dict[str, Callable[[Probe, Path], tuple[list[Any], Callable[[], tuple[bool, str]]]]] = {
    "rb-synth-2048-px": _at_limits,
    "rb-summary-at-limits": lambda p, o: (["model", "summary", "deco_gap_3", "--steps", 64, "--image-size", 1024,
                                           "--width", 0.25], lambda: (True, "")),
}


@pytest.mark.parametrize("make", [pytest.param(v, id=k) for k, v in AT_LIMITS.items()])
def test_a_value_at_its_limit_is_accepted(probe: Probe, tmp_path, make):
    """A 2048 px wide synthetic picture; a model summary of 64 gazes at 1024 px: both run."""
    args, done = make(probe, tmp_path / "out")
    proc = probe.run(args)
    check(both(success(proc, "a value at its limit"), done()), probe)

