"""Every user error of ``dermogaze`` is one line ``dermogaze: error: ...`` on stderr, status 2, no traceback.

The cases of an outside robustness probe, by class:

* non-finite model outputs: ``evaluate`` and ``explain`` name the checkpoint and an image before any
  metric or file is made of them;
* nonsense option values, malformed YAML (overrides, preset files) and bad flag values: refused before
  a run folder is created (the range rules themselves: ``test_config.py``);
* operating-system errors for each command that writes (``train``, ``evaluate``, ``explain``,
  ``data prepare``, ``data synth``, ``demo``): ``--out`` that is a file, lies under a file or cannot
  be written, permission denied and a full disk while writing; a closed standard output.

The tests run as root in some environments, where a folder with mode 0o500 is still writable: the
read-only cases then simulate the refusal (``os.access`` / ``os.mkdir`` monkeypatched) and say so in
their ids; as another user they use a real read-only folder.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dermogaze.cli import EXIT_BROKEN_PIPE, describe_os_error, main
from dermogaze.data.cache import load_split
from dermogaze.errors import DermogazeError
from dermogaze.metrics.diagnosis import check_finite_outputs
from dermogaze.models import GazeNet

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")  # the logging format of cli.main


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """Run ``dermogaze argv`` in-process: (status, stdout, stderr). A parser's usage error exits from argparse."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(status: int, err: str, *fragments: str) -> str:
    """The one ``dermogaze: error:`` line of ``err`` (status 2, no traceback, nothing else but log lines)."""
    assert status == 2, (status, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("dermogaze: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def run_subprocess(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dermogaze", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kwargs)


# ----------------------------------------------------------------------------------------------
# Non-finite model outputs
# ----------------------------------------------------------------------------------------------


def _corrupt_forward(monkeypatch, *, logits: str = "nan", first_only: bool = False, attention: bool = False) -> None:
    """Make every GazeNet return non-finite outputs (whatever a checkpoint-load check refuses, weights stay finite).

    Args:
        logits: ``"nan"`` (both logits NaN), ``"inf"`` (the melanoma logit +inf: a finite probability
            of 1 from an infinite log-odds) or ``"finite"``.
        first_only: corrupt only the first image of each batch.
        attention: also make the attention maps NaN.
    """
    forward_with_state = GazeNet.forward_with_state  # GazeNet.forward and the evaluation both go through it

    def corrupted(self, images, **kwargs):
        out, state = forward_with_state(self, images, **kwargs)
        rows = slice(0, 1) if first_only else slice(None)
        new_logits = out.logits.clone()
        if logits == "nan":
            new_logits[rows] = float("nan")
        elif logits == "inf":
            new_logits[rows, 1] = float("inf")
        changes = {"logits": new_logits}
        if attention and out.attention is not None:
            changes["attention"] = torch.full_like(out.attention, float("nan"))
        return dataclasses.replace(out, **changes), state

    monkeypatch.setattr(GazeNet, "forward_with_state", corrupted)


@pytest.mark.parametrize(
    "logits, first_only, count, what",
    [("nan", False, "8 of 8 images", "melanoma probabilities"),
     ("nan", True, "2 of 8 images", "melanoma probabilities"),  # batches of 4: the first of each
     ("inf", False, "8 of 8 images", "melanoma log-odds")],
)
def test_evaluate_refuses_non_finite_predictions(capsys, monkeypatch, pipeline_cache, pipeline_tiny_run, tmp_path,
                                                 logits, first_only, count, what):
    ckpt = pipeline_tiny_run / "best.pt"
    _corrupt_forward(monkeypatch, logits=logits, first_only=first_only)
    out = tmp_path / "eval"
    status, _, err = run_cli(capsys, ["evaluate", "--checkpoint", ckpt, "--data", pipeline_cache, "--split", "val",
                                      "--out", out, "--no-progress", "--device", "cpu"])
    first = load_split(pipeline_cache, "val").ids[0]
    one_error_line(status, err, f"the model in {ckpt} produced non-finite {what} for {count} (e.g. {first})",
                   "weights are corrupt or it diverged")
    assert not out.exists()  # refused before any file


def test_evaluate_with_tta_refuses_non_finite_predictions(capsys, monkeypatch, pipeline_cache, pipeline_tiny_run,
                                                          tmp_path):
    _corrupt_forward(monkeypatch)
    status, _, err = run_cli(capsys, ["evaluate", "--checkpoint", pipeline_tiny_run / "best.pt", "--data",
                                      pipeline_cache, "--split", "val", "--out", tmp_path / "e", "--tta",
                                      "--no-progress", "--device", "cpu"])
    one_error_line(status, err, "non-finite melanoma probabilities for 8 of 8 images")


@pytest.mark.parametrize(
    "corruption, what",
    [({"logits": "nan"}, "melanoma probabilities"), ({"logits": "inf"}, "melanoma log-odds"),
     ({"logits": "finite", "attention": True}, "attention maps")],
    ids=["nan-logits", "inf-logit", "nan-attention"],
)
def test_explain_refuses_non_finite_outputs(capsys, monkeypatch, pipeline_cache, pipeline_tiny_run, tmp_path,
                                            corruption, what):
    ckpt = pipeline_tiny_run / "best.pt"
    _corrupt_forward(monkeypatch, **corruption)
    out = tmp_path / "explained"
    status, _, err = run_cli(capsys, ["explain", "--checkpoint", ckpt, "--data", pipeline_cache, "--split", "test",
                                      "--out", out, "--no-progress", "--device", "cpu"])
    first = load_split(pipeline_cache, "test").ids[0]
    one_error_line(status, err, f"the model in {ckpt} produced non-finite {what} for {first}:")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("command", ["evaluate", "explain"])
def test_a_checkpoint_with_nan_weights_is_one_line(capsys, pipeline_cache, pipeline_tiny_run, tmp_path, command):
    """A diagnosis weight set to NaN: refused when the checkpoint loads or when the model predicts, in one line
    naming the checkpoint (either check may come first)."""
    from dermogaze.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    key = next(k for k in ckpt["model"] if k.startswith("diagnosis.") and k.endswith("weight"))
    ckpt["model"][key] = torch.full_like(ckpt["model"][key], float("nan"))
    corrupt = save_checkpoint(tmp_path / "nan.pt", {k: v for k, v in ckpt.items() if k != "path"})
    argv = {
        "evaluate": ["evaluate", "--checkpoint", corrupt, "--data", pipeline_cache, "--split", "val"],
        "explain": ["explain", "--checkpoint", corrupt, "--data", pipeline_cache, "--split", "val"],
    }[command]
    status, _, err = run_cli(capsys, [*argv, "--out", tmp_path / "out", "--no-progress", "--device", "cpu"])
    line = one_error_line(status, err, str(corrupt))
    assert "non-finite" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_check_finite_outputs_names_the_first_bad_image():
    check_finite_outputs(["a", "b"], {"melanoma probabilities": [0.1, 0.9]}, "the model")
    check_finite_outputs([], {"melanoma probabilities": []}, "the model")  # an empty split
    with pytest.raises(DermogazeError, match=r"the model in X produced non-finite structure masks for 1 of 3 images "
                                             r"\(e\.g\. b\)"):
        check_finite_outputs(["a", "b", "c"], {"melanoma probabilities": [0.1, 0.2, 0.3],
                                               "structure masks": [[0.0, 0.0], [0.0, float("inf")], [1.0, 1.0]]},
                             "the model in X")


# ----------------------------------------------------------------------------------------------
# Option values: one line, and nothing created
# ----------------------------------------------------------------------------------------------

#: (extra train arguments, what the error line names).
BAD_TRAIN_OPTIONS = [
    (["-o", "train.batch_size=0"], "train.batch_size must be an integer from 1 to 1024, got 0"),
    (["-o", "train.betas=[0.9"], "override 'train.betas=[0.9': the value is not valid YAML"),
    (["-o", "train.betas=[2,3]"], "train.betas must be two numbers in [0, 1), e.g. [0.92, 0.96], got (2.0, 3.0)"),
    (["-o", "train.weight_decay=-1"], "train.weight_decay must be a number >= 0, got -1.0"),
    (["-o", "data.workers=-1"], "data.workers must be an integer from 0 to 64 (processes), got -1"),
    (["-o", "train.lr_encoder=-1e-3"], "train.lr_encoder must be a number >= 0"),  # gradient ascent
    (["-o", "train.max_train_batches=0"], "train.max_train_batches must be an integer >= 1"),  # a loss of 0.0
    (["-o", "model.image_size=48"], "model.image_size must be a multiple of 32 from 32 to 1024"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1 (see 'dermogaze train --help')"),
    (["--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
    (["--amp", "fp32"], "argument --amp: invalid choice: 'fp32'"),
]


@pytest.mark.parametrize("extra, message", BAD_TRAIN_OPTIONS, ids=[" ".join(e) for e, _ in BAD_TRAIN_OPTIONS])
def test_bad_train_options_are_one_line_before_any_folder(capsys, pipeline_cache, tmp_path, extra, message):
    run = tmp_path / "run"
    status, _, err = run_cli(capsys, ["train", "--data", pipeline_cache, "--preset", "tiny", "--out", run,
                                      "--no-progress", *extra])
    one_error_line(status, err, message)
    assert not run.exists()


def test_a_malformed_preset_file_is_one_line(capsys, pipeline_cache, tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("model:\n  name: deco_gap_3\ntrain: {epochs: 3\n")
    status, _, err = run_cli(capsys, ["train", "--data", pipeline_cache, "--preset", preset, "--out", tmp_path / "r"])
    one_error_line(status, err, f"{preset}: not valid YAML (", "at line 4, column 1")
    assert not (tmp_path / "r").exists()


def test_a_bad_override_on_resume_is_one_line(capsys, pipeline_tiny_run, tmp_path):
    status, _, err = run_cli(capsys, ["train", "--resume", pipeline_tiny_run, "-o", "train.batch_size=0"])
    one_error_line(status, err, "command line: train.batch_size must be an integer from 1 to 1024, got 0")


BAD_EVALUATE_OPTIONS = [
    (["--batch-size", "-2"], "argument --batch-size: expected an integer >= 1, got -2"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
    (["--bootstrap", "x"], "argument --bootstrap: expected an integer, got 'x'"),
]


@pytest.mark.parametrize("extra, message", BAD_EVALUATE_OPTIONS, ids=[" ".join(e) for e, _ in BAD_EVALUATE_OPTIONS])
def test_bad_evaluate_options_are_one_line(capsys, pipeline_tiny_run, tmp_path, extra, message):
    out = tmp_path / "eval"
    status, _, err = run_cli(capsys, ["evaluate", "--checkpoint", pipeline_tiny_run / "best.pt", "--out", out, *extra])
    one_error_line(status, err, message, "(see 'dermogaze evaluate --help')")
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [(["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
     (["evaluate"], "the following arguments are required: --checkpoint"),
     (["model", "list", "--nope"], "unrecognized arguments: --nope"),
     (["data", "synth", "--out", "x", "--seed", "-5"], "argument --seed: expected an integer >= 0, got -5")],
)
def test_usage_errors_are_one_line(capsys, argv, message):
    one_error_line(*run_cli(capsys, argv)[::2], message)


@pytest.mark.parametrize(
    "args, message",
    [(["train", "--preset", "tiny", "--seed", "-1"], "argument --seed: expected an integer >= 0, got -1"),
     (["train", "--preset", "tiny", "-o", "train.betas=[0.9"], "the value is not valid YAML")],
    ids=["usage-error", "config-error"],
)
def test_option_errors_in_a_subprocess(tmp_path, args, message):
    """The installed entry point: one line, no usage block, no traceback, status 2, no run folder. (The other
    option cases run in-process above: a subprocess costs seconds of imports.)"""
    proc = run_subprocess([*args, "--out", tmp_path / "out"], cwd=tmp_path)
    line = one_error_line(proc.returncode, proc.stderr, message)
    assert "usage:" not in proc.stderr and line
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------------------------
# Operating-system errors: every command that writes
# ----------------------------------------------------------------------------------------------

WRITERS = ["train", "evaluate", "explain", "data prepare", "data synth", "demo"]


def writer_argv(command: str, out: Path, pipeline_data: dict[str, Path], run: Path) -> list:
    """Fast arguments of each writing command, with ``--out out``."""
    cache, isic, ckpt = pipeline_data["cache"], pipeline_data["isic"], run / "best.pt"
    return {
        "train": ["train", "--data", cache, "--preset", "tiny", "-o", "train.epochs=1", "-o",
                  "train.max_train_batches=1"],
        "evaluate": ["evaluate", "--checkpoint", ckpt, "--data", cache, "--split", "val", "--bootstrap", "100"],
        "explain": ["explain", "--checkpoint", ckpt, "--data", cache, "--split", "val", "--limit", "1"],
        "data prepare": ["data", "prepare", "--isic", isic, "--size", "40"],
        "data synth": ["data", "synth", "--train", "2", "--val", "1", "--test", "1", "--width", "64", "--height", "48"],
        "demo": ["demo", "--fast", "--device", "cpu"],
    }[command] + ["--out", out, "--no-progress"]


@pytest.mark.parametrize("command", WRITERS)
def test_out_is_a_file(capsys, pipeline_data, pipeline_tiny_run, tmp_path, command):
    out = tmp_path / "results.txt"
    out.write_text("keep me")
    status, _, err = run_cli(capsys, writer_argv(command, out, pipeline_data, pipeline_tiny_run))
    one_error_line(status, err, f"--out {out} is not a folder: give a folder")
    assert out.read_text() == "keep me"


@pytest.mark.parametrize("command", WRITERS)
def test_out_under_a_file(capsys, pipeline_data, pipeline_tiny_run, tmp_path, command):
    (tmp_path / "notes.txt").write_text("")
    out = tmp_path / "notes.txt" / "sub" / "out"
    status, _, err = run_cli(capsys, writer_argv(command, out, pipeline_data, pipeline_tiny_run))
    one_error_line(status, err, f"--out {out} lies under {tmp_path / 'notes.txt'}, which is not a folder")


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder nothing may be written in: mode 0o500, and (as root, who may write anyway) ``os.access``
    reporting it unwritable."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    if IS_ROOT:
        access = os.access

        def no_write_access(path, mode, **kwargs):
            if Path(os.path.abspath(path)) == folder and mode & os.W_OK:
                return False
            return access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", no_write_access)
    yield folder
    folder.chmod(0o700)


@pytest.mark.parametrize("command", WRITERS)
def test_read_only_out(capsys, pipeline_data, pipeline_tiny_run, read_only_folder, command):
    out = read_only_folder / "out"
    status, _, err = run_cli(capsys, writer_argv(command, out, pipeline_data, pipeline_tiny_run))
    one_error_line(status, err, f"--out {out}: cannot write in {read_only_folder} (permission denied")
    assert not out.exists()


@pytest.fixture
def mkdir_denied(tmp_path, monkeypatch):
    """A folder that passes the up-front check but where creating anything fails with EACCES while the command
    runs (``os.mkdir`` monkeypatched: a permission lost meanwhile, or a read-only folder as root)."""
    folder = tmp_path / "denied"
    folder.mkdir()
    mkdir = os.mkdir

    def denied(path, *args, **kwargs):
        if Path(os.path.abspath(path)).is_relative_to(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", denied)
    return folder


@pytest.mark.parametrize("command", WRITERS)
def test_permission_denied_while_writing(capsys, pipeline_data, pipeline_tiny_run, mkdir_denied, command):
    out = mkdir_denied / "out"
    status, _, err = run_cli(capsys, writer_argv(command, out, pipeline_data, pipeline_tiny_run))
    # the path and the cause (cli.main's generic handler, or a library message that wraps the OSError)
    one_error_line(status, err, str(mkdir_denied), "Permission denied")


@pytest.fixture
def disk_full(monkeypatch):
    """Every write that reaches the disk fails with ENOSPC: the fsync of each atomic write, and ``Path.write_bytes``
    (the synthetic images). Like a real failed ``write``, the error carries no file name."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(Path, "write_bytes", full)


@pytest.mark.parametrize("command", WRITERS)
def test_disk_full_while_writing(capsys, pipeline_data, pipeline_tiny_run, tmp_path, disk_full, command):
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, writer_argv(command, out, pipeline_data, pipeline_tiny_run))
    one_error_line(status, err, str(out), "No space left on device")


@pytest.mark.parametrize(("kind", "said"), [
    ("fifo", "is a FIFO (named pipe), not a regular file"), ("folder", "is a folder: give the file to write"),
    ("link-to-dev-null", "is a link to /dev/null, a character device, not a regular file"),
])
def test_check_output_file_refuses_what_is_not_a_regular_file(tmp_path, kind, said):
    """An output file (``export --out``, ``predict --out`` CSV) that exists as a FIFO, a folder or a link to a
    device: refused before any work, naming what it is; nothing is created beside it."""
    from dermogaze.cli.common import check_output_file

    path = tmp_path / "model.onnx"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to("/dev/null")
    with pytest.raises(DermogazeError, match=re.escape(f"--out {path} {said}")):
        check_output_file(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_check_output_file_accepts_a_regular_file_and_a_link_to_one(tmp_path):
    from dermogaze.cli.common import check_output_file

    (tmp_path / "old.csv").write_text("x")
    (tmp_path / "link.csv").symlink_to(tmp_path / "old.csv")
    assert check_output_file(tmp_path / "old.csv") == tmp_path / "old.csv"
    assert check_output_file(tmp_path / "link.csv") == tmp_path / "link.csv"
    assert check_output_file(tmp_path / "new" / "pred.csv") == tmp_path / "new" / "pred.csv"


def test_an_efbig_error_has_a_hint():
    line = describe_os_error(OSError(errno.EFBIG, "File too large", "run/last.pt"))
    assert line.startswith("cannot write run/last.pt: File too large (the file is larger than"), line


def test_an_os_error_in_a_subprocess(tmp_path):
    """The installed entry point, --out under a file: one line naming the path."""
    (tmp_path / "f").write_text("")
    proc = run_subprocess(["data", "synth", "--out", tmp_path / "f" / "out", "--train", "1", "--val", "0", "--test",
                           "0", "--no-progress"])
    one_error_line(proc.returncode, proc.stderr, f"{tmp_path / 'f'}, which is not a folder")


@pytest.mark.parametrize(
    "exc, out, expected",
    [(PermissionError(errno.EACCES, "Permission denied", "/data/run/config.yaml"), None,
      "cannot access /data/run/config.yaml: Permission denied (choose a folder you can write to"),
     (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"), None,
      "cannot write /mnt/ro/x: Read-only file system (choose a folder on a writable disk)"),
     (OSError(errno.ENOSPC, "No space left on device"), "runs/x",
      "cannot write under runs/x: No space left on device (free some disk space"),
     (FileNotFoundError(errno.ENOENT, "No such file or directory", "cache/info.json"), None,
      "cannot read cache/info.json: No such file or directory (check the path)"),
     (OSError(errno.EMFILE, "Too many open files"), None, "Too many open files")],
    ids=["EACCES", "EROFS", "ENOSPC-no-file-name", "ENOENT", "EMFILE-no-hint"],
)
def test_describe_os_error(exc, out, expected):
    line = describe_os_error(exc, out)
    assert line.startswith(expected) and "\n" not in line, line


def test_an_os_error_from_any_command_is_one_line(capsys, monkeypatch):
    """The generic handler in cli.main: whatever command raises an OSError."""
    from dermogaze.cli import model as cli_model

    def fail(args):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "runs/x/metrics.json")

    monkeypatch.setattr(cli_model, "_cmd_model_list", fail)
    status, _, err = run_cli(capsys, ["model", "list"])
    one_error_line(status, err, "cannot access runs/x/metrics.json: Is a directory (a file is needed there")


# ----------------------------------------------------------------------------------------------
# A closed standard output (`dermogaze model list | head -1`): quiet, status 141
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["model", "list"], ["data", "stats", "CACHE"], ["--help"], ["train", "--help"]],
                         ids=["model-list", "data-stats", "help", "train-help"])
def test_closed_stdout_ends_quietly(pipeline_cache, argv):
    """The reader has gone before the first write: no BrokenPipeError traceback, status 141 (128 + SIGPIPE)."""
    argv = [str(pipeline_cache) if a == "CACHE" else a for a in argv]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as in a pipe
    proc = subprocess.Popen([sys.executable, "-m", "dermogaze", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    proc.stdout.close()  # before the child interpreter has written anything
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=300) == EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err


def test_piped_into_head(pipeline_cache):
    """The shell pipeline of the probe: the first line, and no traceback on stderr (whether or not the write
    raced the reader's exit; test_closed_stdout_ends_quietly makes it lose)."""
    cmd = f"{sys.executable} -m dermogaze data stats {pipeline_cache}"
    proc = subprocess.run(f"set -o pipefail; {cmd} | head -1", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, EXIT_BROKEN_PIPE) and len(proc.stdout.splitlines()) == 1, proc
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_broken_pipe_in_process(capsys, monkeypatch):
    from dermogaze.cli import model as cli_model

    def closed(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(cli_model, "_cmd_model_list", closed)
    status, _, err = run_cli(capsys, ["model", "list"])
    assert status == EXIT_BROKEN_PIPE and err == ""
