"""``dermogaze train`` / ``evaluate`` on the command line, and bad input: one clear line, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from dermogaze.cli import main


def _one_error_line(capsys, argv: list[str], pattern: str) -> str:
    """Run the CLI in-process; it must fail with exactly one ``dermogaze: error:`` line on stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dermogaze: error:")]
    assert rc != 0
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert pattern in errors[0], errors[0]
    return errors[0]


def test_missing_cache_in_a_subprocess(tmp_path):
    """The installed entry point: one line, no traceback, non-zero exit status."""
    proc = subprocess.run(
        [sys.executable, "-m", "dermogaze", "train", "--data", str(tmp_path / "nowhere"), "--preset", "tiny",
         "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dermogaze: error:")]
    assert len(errors) == 1 and "nowhere" in errors[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_wrong_split_name(capsys, pipeline_cache, pipeline_tiny_run, tmp_path):
    line = _one_error_line(
        capsys,
        ["evaluate", "--checkpoint", str(pipeline_tiny_run / "best.pt"), "--data", str(pipeline_cache),
         "--split", "tset", "--out", str(tmp_path)],
        "no split 'tset'",
    )
    assert "train, val, test" in line


def test_non_image_file_to_explain(capsys, pipeline_tiny_run, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    _one_error_line(
        capsys,
        ["explain", "--checkpoint", str(pipeline_tiny_run / "best.pt"), str(notes), "--out", str(tmp_path / "x")],
        "notes.png",
    )


def test_checkpoint_of_another_variant(capsys, pipeline_cache, pipeline_tiny_run, tmp_path):
    """A checkpoint whose weights do not belong to the variant it names (e.g. files mixed by hand)."""
    ckpt = torch.load(pipeline_tiny_run / "best.pt", weights_only=True)
    ckpt["variant"] = "deco_gap_17"
    forged = tmp_path / "forged.pt"
    torch.save(ckpt, forged)
    _one_error_line(
        capsys,
        ["evaluate", "--checkpoint", str(forged), "--data", str(pipeline_cache), "--out", str(tmp_path / "e")],
        "do not fit its 'deco_gap_17' model",
    )


def test_truncated_checkpoint(capsys, pipeline_cache, pipeline_tiny_run, tmp_path):
    data = (pipeline_tiny_run / "best.pt").read_bytes()
    bad = tmp_path / "best.pt"
    bad.write_bytes(data[:1000])
    _one_error_line(
        capsys, ["evaluate", "--checkpoint", str(bad), "--data", str(pipeline_cache)], "truncated or corrupt"
    )


def test_resume_without_a_run(capsys, tmp_path):
    _one_error_line(capsys, ["train", "--resume", str(tmp_path / "run")], "does not exist")


def test_bad_override(capsys, pipeline_cache, tmp_path):
    _one_error_line(
        capsys,
        ["train", "--data", str(pipeline_cache), "--preset", "tiny", "--out", str(tmp_path / "r"),
         "-o", "train.epochz=3"],
        "unknown key train.epochz",
    )


def test_train_resume_and_evaluate_on_the_command_line(capsys, pipeline_cache, tmp_path):
    run = tmp_path / "run"
    base = ["--no-progress", "--seed", "1", "--workers", "0"]
    assert main(["train", "--data", str(pipeline_cache), "--preset", "tiny", "--out", str(run),
                 "-o", "train.epochs=1", "-o", "train.max_train_batches=1", "-o", "train.lr_encoder=1e-4", *base]) == 0
    assert "best validation loss" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "-o", "train.epochs=2", *base]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    assert ckpt["config"]["train"]["seed"] == 1 and ckpt["config"]["train"]["lr_encoder"] == 1e-4

    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--split", "val", "--out", str(out),
                 "--no-progress"]) == 0  # (the cache is taken from the checkpoint's config)
    printed = capsys.readouterr().out
    assert "Diagnosis (melanoma vs rest): 8 images" in printed
    assert {p.name for p in out.iterdir()} >= {"metrics.json", "predictions.csv", "roc.png"}


@pytest.mark.parametrize("argv", [["train", "--help"], ["evaluate", "--help"], ["demo", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert argv[0] in capsys.readouterr().out


def test_commands_are_registered():
    from dermogaze.cli import build_parser
    from dermogaze.config import available_presets

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {
        "data", "model", "train", "evaluate", "explain", "demo", "gaze", "bench",
        "serve", "export", "sweep", "compare", "table3", "predict",
    }
    assert {"tiny", "demo", "deco_gap_3"} <= set(available_presets())
