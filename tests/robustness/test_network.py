"""network: what is on disk must not need the network (every download fails at once in this tier)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .cli_probe import Probe, both, check, edit_checkpoint, read_rows, success, user_error


def _imagenet_run(probe: Probe, tmp_path: Path) -> Path:
    """A copy of the shared run whose stored configuration says ``model.weights=imagenet``."""
    run = tmp_path / "run"
    shutil.copytree(probe.run_dir, run)
    for name in ("last.pt", "best.pt"):
        edit_checkpoint(run / name, run / name, lambda ckpt: ckpt["config"]["model"].update(weights="imagenet"))
    cfg = run / "config.yaml"
    cfg.write_text(re.sub(r"(?m)^(\s*weights:).*$", r"\1 imagenet", cfg.read_text()))
    return run


@pytest.mark.slow
@pytest.mark.parametrize("case", ["net-resume-imagenet"])
def test_resume_of_an_imagenet_run_needs_no_download(probe: Probe, tmp_path, case):
    """``train --resume RUN -o train.epochs=2`` of a run configured with ``model.weights=imagenet``: succeeds
    without the network (epoch 2 written)."""
    run = _imagenet_run(probe, tmp_path)
    verdict = success(probe.run(["train", "--resume", run, "-o", "train.epochs=2"]), "the run holds every weight")
    rows = [r.get("epoch") for r in read_rows(run / "metrics.jsonl")]
    check(both(verdict, (rows == [1, 2], f"metrics.jsonl epochs {rows}")), probe)


@pytest.mark.parametrize("command", [pytest.param("evaluate", id="net-evaluate-imagenet"),
                                     pytest.param("explain", id="net-explain-imagenet")])
def test_the_checkpoint_of_an_imagenet_run_needs_no_download(probe: Probe, tmp_path, command):
    """``evaluate`` of, or ``explain`` with, that run's best.pt: succeeds (the checkpoint holds every weight)."""
    best = _imagenet_run(probe, tmp_path) / "best.pt"
    if command == "evaluate":
        args = probe.eval_args(best, tmp_path / "eval")
    else:
        args = probe.explain_args([probe.img], tmp_path / "out", best)
    check(success(probe.run(args), "the checkpoint holds every weight"), probe)


OFFLINE_DOWNLOADS = {
    "net-train-imagenet-offline": lambda p, d: p.train_args(d / "run", "-o", "model.weights=imagenet",
                                                            "-o", "model.width=1"),
    "net-summary-imagenet-offline": lambda p, d: ["model", "summary", "deco_gap_3", "--weights", "imagenet"],
}


@pytest.mark.parametrize("make_args", [pytest.param(v, id=k) for k, v in OFFLINE_DOWNLOADS.items()])
def test_a_download_that_fails_is_a_clean_error(probe: Probe, tmp_path, make_args):
    """A fresh ``train -o model.weights=imagenet -o model.width=1``, or ``model summary deco_gap_3 --weights
    imagenet``, with downloads failing: clean failure."""
    check(user_error(probe.run(make_args(probe, tmp_path))), probe)
