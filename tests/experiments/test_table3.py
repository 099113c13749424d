"""``dermogaze table3``: resumes after a kill, keeps finished presets untouched, refuses a changed experiment."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dermogaze.cli import main
from dermogaze.errors import DermogazeError
from dermogaze.experiments.table3 import PAPER_TABLE3, TABLE3_PRESETS, preset_config, run_table3

#: Every preset at the tiny test size: 32 px, width 1/8, T = 2, two batches per epoch, a random encoder that trains.
TINY = [
    "model.width=0.125", "model.image_size=32", "model.steps=2", "model.batch_norm=on", "train.batch_size=4",
    "train.lr_encoder=1e-3", "train.lr_attention=1e-3", "train.lr_branches=1e-3", "train.max_train_batches=2",
]
#: Two rows of Table 3 (one without, one with the structure decoder): the resume logic is per preset.
PRESETS = ("vgg_gap", "deco_gap_3")


def _args(cache: Path, out: Path, *extra: str) -> list[str]:
    overrides = [a for item in TINY for a in ("-o", item)]
    return ["table3", "--data", str(cache), "--out", str(out), "--presets", ",".join(PRESETS), "--device", "cpu",
            "--bootstrap", "100", "--faithfulness", "0", "--no-progress", *overrides, *extra]


def _fingerprint(run: Path) -> dict[str, tuple[str, int]]:
    return {name: (hashlib.sha256((run / name).read_bytes()).hexdigest(), (run / name).stat().st_mtime_ns)
            for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml")}


@pytest.mark.slow  # a child training killed and resumed
def test_table3_resumes_after_a_kill(pipeline_cache, tmp_path, caplog):
    out = tmp_path / "t3"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe: the run never waits on a reader
    with stderr.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dermogaze", *_args(pipeline_cache, out, "--epochs", "1")],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
    second = out / "configs" / f"{PRESETS[1]}.yaml"  # written when the first preset has finished
    while not second.exists() and proc.poll() is None:  # an event of the run (or its end), never a duration
        time.sleep(0.05)
    assert second.exists(), stderr.read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "table3.md").exists()
    first = out / PRESETS[0]
    assert torch.load(first / "last.pt", weights_only=True)["epoch"] == 1
    before = _fingerprint(first)

    caplog.set_level(logging.INFO, logger="dermogaze.experiments.table3")
    assert main(_args(pipeline_cache, out, "--epochs", "1", "--jobs", "2")) == 0  # parallel: output to a log
    assert _fingerprint(first) == before  # the finished preset was neither retrained nor rewritten
    assert f"{PRESETS[0]}: already trained (1 epochs)" in caplog.text
    assert f"[2/2] {PRESETS[1]}: training 1 epochs (log {out / 'logs' / PRESETS[1]}.log)" in caplog.text
    assert "trained 1 epochs; best validation loss" in (out / "logs" / f"{PRESETS[1]}.log").read_text()

    with (out / "table3.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["preset"] for r in rows] == list(PRESETS)
    compare = {r["run"]: r for r in csv.DictReader((out / "compare_test" / "compare.csv").open(newline=""))}
    for r in rows:
        assert 0.0 <= float(r["auc"]) <= 1.0 and r["epochs"] == "1"
        assert r["auc"] == compare[r["preset"]]["auc"] and r["ap"] == compare[r["preset"]]["ap"]
        assert (float(r["paper_auc"]), float(r["paper_ap"])) == PAPER_TABLE3[r["preset"]][1:]
        assert float(r["train_s"]) >= 0  # a number (rounded to 0.1 s: a tiny run may show 0.0)
    assert (rows[0]["rank_paper_auc"], rows[1]["rank_paper_auc"]) == ("1", "2")  # 0.8661 > 0.8291
    table = [line for line in (out / "table3.md").read_text().splitlines() if line.startswith("| `")]
    assert [line.split("|")[1].strip() for line in table] == [f"`{p}`" for p in PRESETS]
    # The same seed and budget for both presets: their training sections are equal.
    configs = [torch.load(out / p / "best.pt", weights_only=True)["config"] for p in PRESETS]
    assert configs[0]["train"] == configs[1]["train"]
    assert configs[0]["model"]["width"] == configs[1]["model"]["width"] == 0.125


@pytest.mark.slow  # trains two presets
def test_table3_continues_a_half_trained_preset(pipeline_cache, tmp_path, caplog):
    """A preset killed after epoch 1 of 2 continues from its last.pt (train --resume), not from scratch."""
    from dermogaze.config import save_config
    from dermogaze.training import train
    from dermogaze.training.checkpoint import save_checkpoint

    out = tmp_path / "t3"
    run = out / "vgg_gap"
    # With a constant learning rate, epoch 1 of a 2-epoch run is a 1-epoch run: train that, then label it as the
    # 2-epoch run it belongs to (what a kill after epoch 1 leaves behind).
    train(preset_config("vgg_gap", pipeline_cache, TINY, epochs=1, device="cpu"), run, progress=False)
    cfg2 = preset_config("vgg_gap", pipeline_cache, TINY, epochs=2, device="cpu")
    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["config"]["train"]["epochs"] = 2
        save_checkpoint(run / name, ckpt)
    save_config(cfg2, run / "config.yaml")
    epoch1 = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])

    caplog.set_level(logging.INFO, logger="dermogaze.experiments.table3")
    result = run_table3(pipeline_cache, out, overrides=TINY, epochs=2, presets=["vgg_gap"], device="cpu",
                        n_resamples=50, faithfulness=0, progress=False)
    assert "vgg_gap: resuming after epoch 1 of 2" in caplog.text
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and history[0] == epoch1
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    assert [r["preset"] for r in result["rows"]] == ["vgg_gap"] and result["rows"][0]["epochs"] == 2

    # Another budget on the same folder is refused before any work, naming what differs.
    with pytest.raises(DermogazeError, match=r"another configuration \(train.epochs 2 vs 3"):
        run_table3(pipeline_cache, out, overrides=TINY, epochs=3, presets=["vgg_gap"], device="cpu")


def test_table3_refuses_bad_options_before_training(pipeline_cache, tmp_path, capsys):
    out = tmp_path / "t3"
    assert main(_args(pipeline_cache, out, "-o", "model.skip=true")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "preset vgg_gap with these options" in err and "skip" in err
    assert main(_args(pipeline_cache, out, "--presets", "vgg,resnet")) == 2
    assert "not a Table 3 preset: resnet" in capsys.readouterr().err
    for empty in ("", " , "):
        assert main(_args(pipeline_cache, out, "--presets", empty)) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("dermogaze: error: no preset to run: name some of vgg, vgg_gap, vgg_attconvlstm, "
                       "vgg_attconvlstm_gap, deco_gap_3, deco_gap_5, deco_gap_17 (comma-separated)")
    # The paper's recipe freezes the encoder (learning rate 0), which a random encoder cannot afford.
    assert main(["table3", "--data", str(pipeline_cache), "--out", str(out), "--presets", "vgg"]) == 2
    assert "preset vgg with these options" in capsys.readouterr().err
    assert not out.exists()
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    assert main(_args(pipeline_cache, taken)) == 2
    assert f"--out {taken} is not a folder" in capsys.readouterr().err and taken.read_text() == "keep me"
    assert list(PAPER_TABLE3) == list(TABLE3_PRESETS) == [
        "vgg", "vgg_gap", "vgg_attconvlstm", "vgg_attconvlstm_gap", "deco_gap_3", "deco_gap_5", "deco_gap_17"]
