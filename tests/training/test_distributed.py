"""Distributed training: 2 processes (gloo, CPU) under torchrun follow the single-process run.

Same global batch (4 = 2 per process × 2), same seed, same data. The variant has no structure
decoder and batch norm is off, so the loss is a per-sample mean (DDP's average of per-rank means is
the global mean) and no per-rank batch statistics exist: the two runs must agree up to floating-point
rounding. The distributed run is interrupted after one epoch and resumed under torchrun, which
checks distributed resume at the same time. A second test launches two torchrun "nodes" of one
process each on this machine (static rendezvous, ``--node-rank``): every process has
``LOCAL_RANK`` 0, only the global rank tells them apart.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dermogaze.config import load_config

pytestmark = pytest.mark.slow  # torchrun: three to four processes a test

OVERRIDES = ["model.name=vgg_attconvlstm_gap", "model.batch_norm=off", "train.batch_size=4"]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dermogaze", "train", "--no-progress", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def single_run(pipeline_cache, tmp_path_factory) -> Path:
    """The single-process run both distributed runs must follow."""
    from dermogaze.training import train

    single = tmp_path_factory.mktemp("single") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same reduction order in the ops
    try:
        train(load_config("tiny", [f"data.cache={pipeline_cache}", *OVERRIDES]), single, progress=False)
    finally:
        torch.set_num_threads(threads)
    return single


def _assert_follows(single: Path, ddp: Path) -> None:
    from dermogaze.training.checkpoint import load_checkpoint

    # Tolerances: the same sums, not the same kernels. A process convolves a batch of 2, the single run a batch of 4,
    # and oneDNN may pick another algorithm (another summation order) per batch size on some CPUs (AVX-512): float32
    # rounding then moves the losses by ~1e-4 relative after two epochs. A wrong reduction (a sum instead of a mean)
    # or a wrong data shard moves them by far more.
    a, b = _rows(single), _rows(ddp)
    assert [r["epoch"] for r in b] == [1, 2]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_diag"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-3, abs=1e-6), key
        for key in ("val_auc", "val_ap"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), key
    # Adam moves a weight by at most about lr a step whatever the gradient's size, so on a gradient near zero a
    # rounding difference can flip the step: the weights of the two runs may differ by up to 2·lr per step taken.
    ca, cb = load_checkpoint(single / "last.pt"), load_checkpoint(ddp / "last.pt")
    steps = max(int(state["step"]) for state in ca["optimizer"]["state"].values())
    assert steps == max(int(state["step"]) for state in cb["optimizer"]["state"].values())
    bound = 2 * max(group["lr"] for group in ca["optimizer"]["param_groups"]) * steps
    for k, wa in ca["model"].items():
        if wa.is_floating_point():
            assert (cb["model"][k] - wa).abs().max().item() <= bound, k
        else:
            assert torch.equal(cb["model"][k], wa), k


def test_two_processes_match_one_process(pipeline_cache, single_run, tmp_path):
    from dermogaze.training.checkpoint import load_checkpoint

    ddp = tmp_path / "ddp"
    overrides = [x for o in OVERRIDES for x in ("-o", o)]
    first = _torchrun(["--data", str(pipeline_cache), "--preset", "tiny", "--out", str(ddp), *overrides,
                       "-o", "train.epochs=1"])
    assert "world size 2" in first.stderr
    assert first.stderr.count("epoch 1/1:") == 1  # only rank 0 logs
    assert sorted(p.name for p in ddp.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    assert load_checkpoint(ddp / "last.pt")["epoch"] == 1
    assert len(load_checkpoint(ddp / "last.pt")["rng"]) == 2  # each rank's generators

    _torchrun(["--resume", str(ddp), "-o", "train.epochs=2"])
    assert sorted(p.name for p in ddp.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    _assert_follows(single_run, ddp)


def test_two_nodes_match_one_process(pipeline_cache, single_run, tmp_path):
    """``torchrun --nnodes 2 --node-rank R``, one process per node, both writing to the same --out."""
    port = _free_port()
    out = tmp_path / "nodes"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    overrides = [x for o in OVERRIDES for x in ("-o", o)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
             "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
             "-m", "dermogaze", "train", "--no-progress", "--data", str(pipeline_cache), "--preset", "tiny",
             "--out", str(out), *overrides],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for rank in (0, 1)
    ]
    logs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, logs, strict=True):
        assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert all("world size 2" in stderr for _, stderr in logs)
    assert sum(stderr.count("epoch 2/2:") for _, stderr in logs) == 1  # only global rank 0 logs
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    _assert_follows(single_run, out)


def test_repeat_factor_sampling_in_two_processes_matches_one_process(pipeline_cache, tmp_path):
    """``train.repeat_threshold``: both ranks draw the same epoch and each takes its shard, as one process would."""
    from dermogaze.training import train

    repeat = [*OVERRIDES, "train.repeat_threshold=1"]
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("tiny", [f"data.cache={pipeline_cache}", *repeat]), single, progress=False)
    finally:
        torch.set_num_threads(threads)
    ddp = tmp_path / "ddp"
    log = _torchrun(["--data", str(pipeline_cache), "--preset", "tiny", "--out", str(ddp),
                     *[x for o in repeat for x in ("-o", o)]])
    assert "repeat-factor sampling (t = 1)" in log.stderr
    _assert_follows(single, ddp)
