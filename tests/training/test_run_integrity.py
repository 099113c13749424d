"""The run folder keeps its data: kills at any write, a second run on the same folder, a rerun over an
earlier run, non-finite weights, empty splits, and a resume that needs no network.

The kill test copies the run folder at every write boundary of an uninterrupted run (just before
and just after each ``os.replace`` of :func:`dermogaze.files.atomic_write`, the temporary file of the
pending write included): each copy is what a ``kill -9`` at that instant leaves. Every copy must
resume into the run of ``pipeline_tiny_run`` (the same config, trained without interruption).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dermogaze.config import Config, load_config
from dermogaze.errors import DataError, DermogazeError

pytestmark = pytest.mark.usefixtures("one_thread")  # as pipeline_tiny_run was trained: results compared at 1e-6

RUN_FILES = ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
#: The order in which messages list them (RunWriter.files).
WRITER_ORDER = ["last.pt", "best.pt", "metrics.jsonl", "config.yaml"]
#: The writes of a fresh 2-epoch run of the ``tiny`` preset (both of its epochs improve), in order; at the end, the
#: out-of-distribution score goes into last.pt, then best.pt (a copy: the same epoch).
WRITES = [
    ("start", "config.yaml"),
    ("start", "metrics.jsonl"),
    ("epoch 1", "metrics.jsonl"),
    ("epoch 1", "last.pt"),
    ("epoch 1", "best.pt"),
    ("epoch 2", "metrics.jsonl"),
    ("epoch 2", "last.pt"),
    ("epoch 2", "best.pt"),
    ("end", "last.pt"),
    ("end", "best.pt"),
]
#: Kill points: just before write k is renamed into place (its temporary file complete), or just after.
KILLS = [(k, when) for k in range(len(WRITES)) for when in ("before", "after")]


def _tiny(cache: Path, *overrides: str) -> Config:
    return load_config("tiny", [f"data.cache={cache}", *overrides])


def _rows(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock time."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def _assert_same_checkpoint(got: Path, expected: Path) -> None:
    from dermogaze.training.checkpoint import load_checkpoint

    a, b = load_checkpoint(expected), load_checkpoint(got)
    for key in ("epoch", "best_epoch", "best_val_loss", "calibration", "config", "training_data"):
        assert b[key] == a[key], (got, key)
    assert a["ood"] is not None and b["ood"] is not None, got  # fitted when the run ends, also a resumed one
    assert b["ood"]["threshold"] == pytest.approx(a["ood"]["threshold"], rel=1e-4), got
    assert {k: v for k, v in b["metrics"].items() if k != "time_s"} == {
        k: v for k, v in a["metrics"].items() if k != "time_s"
    }
    assert b["model"].keys() == a["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=f"{got}: {k}")
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sb[i]["step"] == sa[i]["step"]
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sb[i][moment], sa[i][moment], rtol=0, atol=1e-6, msg=f"{got}: {i} {moment}")


def _assert_same_run(run: Path, reference: Path) -> None:
    """``run`` holds exactly the reference run: its four files, no temporary, no lock."""
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES
    assert _rows(run) == _rows(reference)
    _assert_same_checkpoint(run / "last.pt", reference / "last.pt")
    _assert_same_checkpoint(run / "best.pt", reference / "best.pt")


# --------------------------------------------------------------------------------------------
# Kills at every write boundary
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kill_points(pipeline_cache, tmp_path_factory) -> dict:
    """Copies of a fresh 2-epoch ``tiny`` run folder before and after each of its writes.

    Returns:
        ``{"writes": [(destination name, ...)], "copies": {(k, "before" | "after"): folder}}``.
    """
    import dermogaze.files
    from dermogaze.training import train

    root = tmp_path_factory.mktemp("kills")
    run = root / "run"
    real_replace = os.replace
    writes: list[str] = []
    copies: dict[tuple[int, str], Path] = {}

    def replace(src, dst):
        if Path(dst).parent != run:
            return real_replace(src, dst)
        k = len(writes)
        writes.append(Path(dst).name)
        copies[k, "before"] = Path(shutil.copytree(run, root / f"{k}_before"))
        real_replace(src, dst)
        copies[k, "after"] = Path(shutil.copytree(run, root / f"{k}_after"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dermogaze.files.os, "replace", replace)
        train(_tiny(pipeline_cache), run, progress=False)
    return {"writes": writes, "copies": copies, "run": run}


def test_epoch_end_writes_metrics_then_last_then_best(kill_points, pipeline_tiny_run):
    assert kill_points["writes"] == [name for _, name in WRITES]
    # A pending write leaves its temporary file (.<name>.<random>.tmp), as a kill during it would.
    before_best = kill_points["copies"][WRITES.index(("epoch 2", "best.pt")), "before"]
    assert [p.name for p in before_best.glob(".best.pt.*.tmp")]
    # The instrumented run is the reference run.
    _assert_same_run(kill_points["run"], pipeline_tiny_run)


@pytest.mark.parametrize("k, when", KILLS, ids=[f"{when}-{WRITES[k][0]}-{WRITES[k][1]}" for k, when in KILLS])
def test_a_kill_at_any_write_resumes_into_the_uninterrupted_run(kill_points, pipeline_cache, pipeline_tiny_run,
                                                                 tmp_path, k, when):
    from dermogaze.training import train

    run = tmp_path / "run"
    shutil.copytree(kill_points["copies"][k, when], run)
    assert (run / ".lock").is_file()  # the lock file of the killed process: no process holds it any more
    if not (run / "last.pt").exists():  # killed before the first epoch was saved: nothing to resume
        with pytest.raises(DermogazeError, match=r"(no completed epoch|does not exist)"):
            train(_tiny(pipeline_cache), run, resume=True, progress=False)
        if not any((run / name).exists() for name in RUN_FILES):
            return
        with pytest.raises(DermogazeError, match="--overwrite"):
            train(_tiny(pipeline_cache), run, progress=False)
        if WRITES[k] != ("epoch 1", "last.pt"):
            return  # starting again is the same for every such point: checked once, at the latest one
        train(_tiny(pipeline_cache), run, overwrite=True, progress=False)
    else:
        train(_tiny(pipeline_cache), run, resume=True, progress=False)
    _assert_same_run(run, pipeline_tiny_run)


def test_an_error_during_a_write_keeps_the_run_resumable(pipeline_cache, tmp_path, monkeypatch):
    """An exception (disk full) while best.pt is renamed into place: last.pt is saved, best.pt is not."""
    import dermogaze.files
    from dermogaze.training import train

    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "best.pt":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(dermogaze.files.os, "replace", replace)
    cfg = _tiny(pipeline_cache, "train.epochs=1", "train.max_train_batches=1")
    run = tmp_path / "run"
    with pytest.raises(OSError, match="No space"):
        train(cfg, run, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt", "metrics.jsonl"]  # no lock, no .tmp
    summary = train(cfg, run, resume=True, progress=False)
    assert summary["best_epoch"] == 1
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()  # restored from last.pt


# --------------------------------------------------------------------------------------------
# One run per folder
# --------------------------------------------------------------------------------------------
HOLD_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_second_train_on_a_locked_folder_is_refused(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.training import train

    run = tmp_path / "run"
    shutil.copytree(pipeline_tiny_run, run)
    before = {name: (run / name).read_bytes() for name in RUN_FILES}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / ".lock")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = rf"{re.escape(str(run))} is in use by another dermogaze train \(pid {holder.pid}\)"
        with pytest.raises(DermogazeError, match=message):
            train(_tiny(pipeline_cache, "train.epochs=3"), run, resume=True, progress=False)
        with pytest.raises(DermogazeError, match=message):
            train(_tiny(pipeline_cache), run, overwrite=True, progress=False)
    finally:
        holder.kill()  # a dead process holds no flock
        holder.wait()
    assert {name: (run / name).read_bytes() for name in RUN_FILES} == before
    # The lock died with its holder: the run continues (one more epoch of one batch).
    train(_tiny(pipeline_cache, "train.epochs=3", "train.max_train_batches=1"), run, resume=True, progress=False)
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES  # the lock file goes with the run


def test_run_lock_is_exclusive_and_released(tmp_path):
    from dermogaze.training.run_folder import RunWriter

    first, second = RunWriter(tmp_path / "run"), RunWriter(tmp_path / "run")
    first.lock()
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(DermogazeError, match=rf"in use by another dermogaze train \(pid {os.getpid()}\)"):
        second.lock()
    first.unlock()
    assert not (tmp_path / "run").exists()  # the lock made the folder and nothing filled it
    second.lock()
    second.unlock()
    (tmp_path / "file").write_text("")
    with pytest.raises(DermogazeError, match="is a file, not a run folder"):
        RunWriter(tmp_path / "file").lock()


# --------------------------------------------------------------------------------------------
# A fresh run never deletes an earlier one
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kept", [["best.pt", "metrics.jsonl"], ["config.yaml"], RUN_FILES])
def test_a_fresh_run_refuses_a_folder_with_a_run(pipeline_cache, pipeline_tiny_run, tmp_path, kept):
    from dermogaze.training import train

    run = tmp_path / "run"
    run.mkdir()
    for name in kept:
        shutil.copy(pipeline_tiny_run / name, run / name)
    before = {name: (run / name).read_bytes() for name in kept}
    listed = re.escape(", ".join(sorted(kept, key=WRITER_ORDER.index)))
    with pytest.raises(DermogazeError, match=rf"{re.escape(str(run))} already holds a training run \({listed}\)"):
        train(_tiny(pipeline_cache), run, progress=False)
    assert {name: (run / name).read_bytes() for name in kept} == before
    assert sorted(p.name for p in run.iterdir()) == sorted(kept)
    if "last.pt" not in kept:
        with pytest.raises(DermogazeError, match=rf"{re.escape(str(run))} holds no completed epoch.*--overwrite"):
            train(_tiny(pipeline_cache), run, resume=True, progress=False)


def test_overwrite_replaces_the_run_and_removes_orphaned_temporaries(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.training import train

    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.pt", "metrics.jsonl", "config.yaml"):
        shutil.copy(pipeline_tiny_run / name, run / name)
    (run / ".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    (run / ".metrics.jsonl.x_y_z0.tmp").write_text('{"epoch": 1')
    (run / "notes.txt").write_text("mine")
    train(_tiny(pipeline_cache, "train.epochs=1", "train.max_train_batches=1"), run, overwrite=True, progress=False)
    assert sorted(p.name for p in run.iterdir()) == sorted([*RUN_FILES, "notes.txt"])
    assert [r["epoch"] for r in _rows(run)] == [1]
    assert torch.load(run / "best.pt", weights_only=True)["config"]["train"]["max_train_batches"] == 1


def test_remove_temporaries_takes_only_those_of_the_file(tmp_path):
    from dermogaze.files import atomic_write, remove_temporaries

    names = [".last.pt.abc123.tmp", ".last.pt.x.tmp", ".best.pt.abc123.tmp", ".last.pt.abc123", "last.pt.a.tmp"]
    for name in names:
        (tmp_path / name).write_text("")
    with atomic_write(tmp_path / "last.pt", "wb") as fh:  # its temporary file has the name removed below
        fh.write(b"x")
        pending = {p.name for p in tmp_path.iterdir()} - set(names)
        assert len(pending) == 1 and re.fullmatch(r"\.last\.pt\.\w+\.tmp", pending.pop())
    removed = remove_temporaries(tmp_path / "last.pt")
    assert sorted(p.name for p in removed) == [".last.pt.abc123.tmp", ".last.pt.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*names[2:], "last.pt"])


def test_a_fresh_run_removes_orphaned_temporaries(pipeline_cache, tmp_path):
    from dermogaze.training import train

    run = tmp_path / "run"
    run.mkdir()
    (run / ".best.pt.abcdefgh.tmp").write_bytes(b"partial")
    train(_tiny(pipeline_cache, "train.epochs=1", "train.max_train_batches=1"), run, progress=False)
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES


# --------------------------------------------------------------------------------------------
# Non-finite weights and losses
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_checkpoint_with_non_finite_weights_is_refused(pipeline_tiny_run, tmp_path, value):
    from dermogaze.training.checkpoint import load_checkpoint

    ckpt = torch.load(pipeline_tiny_run / "best.pt", weights_only=True)
    key = [k for k, v in ckpt["model"].items() if v.is_floating_point()][3]
    ckpt["model"][key].view(-1)[0] = value
    bad = tmp_path / "corrupt.pt"
    torch.save(ckpt, bad)
    with pytest.raises(DermogazeError, match=rf"corrupt\.pt holds non-finite weights .*first in '{key}'"):
        load_checkpoint(bad)


@pytest.mark.parametrize("where", ["train loss", "weights"])
@pytest.mark.parametrize("epoch", [1, 2])
def test_divergence_stops_before_writing_the_epoch(pipeline_cache, tmp_path, monkeypatch, where, epoch):
    import dermogaze.training.loop as loop
    train_module = importlib.import_module("dermogaze.training.train")  # the package re-exports train()
    from dermogaze.training import train

    if where == "train loss":  # the loss of the epoch's first batch is NaN
        real_step = loop.train_step
        steps = []

        def train_step(*args, **kwargs):
            terms = real_step(*args, **kwargs)
            steps.append(1)
            if len(steps) == epoch:
                terms["loss"] = torch.tensor(float("nan"))
            return terms

        monkeypatch.setattr(loop, "train_step", train_step)
        message = rf"training diverged: the loss is nan at epoch {epoch}, batch 1"
    else:  # an update that makes a weight infinite (so is the validation loss)
        real_epoch = train_module.train_one_epoch

        def train_one_epoch(net, *args, **kwargs):
            terms = real_epoch(net, *args, **kwargs)
            if kwargs["epoch"] == epoch:
                with torch.no_grad():
                    next(net.parameters()).view(-1)[0] = float("inf")
            return terms

        monkeypatch.setattr(train_module, "train_one_epoch", train_one_epoch)
        message = rf"training diverged: the weights are NaN or infinite \(first in '.+'\) after epoch {epoch}"
    run = tmp_path / "run"
    kept = re.escape(f"{run / 'last.pt'} keeps epoch 1" if epoch == 2 else "no checkpoint was written")
    with pytest.raises(DermogazeError, match=rf"{message}.*; {kept}$"):
        train(_tiny(pipeline_cache, "train.max_train_batches=1"), run, progress=False)
    if epoch == 1:
        assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.jsonl"]
        return
    assert sorted(p.name for p in run.iterdir()) == RUN_FILES  # no temporary, no lock left
    assert [r["epoch"] for r in _rows(run)] == [1]
    for name in ("last.pt", "best.pt"):
        assert torch.load(run / name, weights_only=True)["epoch"] == 1


# --------------------------------------------------------------------------------------------
# Empty splits
# --------------------------------------------------------------------------------------------
@pytest.fixture
def cache_without_validation_images(tiny_isic_factory, tmp_path) -> Path:
    from conftest import TINY_SPLITS
    from dermogaze.data.cache import load_info
    from dermogaze.data.prepare import prepare

    isic = tiny_isic_factory(tmp_path / "isic", splits={"Training": TINY_SPLITS["Training"], "Validation": []})
    prepare(isic, tmp_path / "cache", size=40, progress=False)
    assert load_info(tmp_path / "cache")["counts"] == {"train": 4, "val": 0}
    return tmp_path / "cache"


@pytest.mark.parametrize("split_key, nothing_to", [("val_split", "validate on"), ("train_split", "train on")])
def test_an_empty_split_is_refused_before_any_work(cache_without_validation_images, tmp_path, monkeypatch,
                                                   split_key, nothing_to):
    train_module = importlib.import_module("dermogaze.training.train")  # the package re-exports train()
    from dermogaze.training import train

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(train_module, "build_model", no_model)
    cfg = _tiny(cache_without_validation_images, f"data.{split_key}=val")
    with pytest.raises(DataError, match=rf"split 'val' holds no images, so there is nothing to {nothing_to}"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# Resume needs no network
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weights", ["/nonexistent/vgg16_bn.pth", "imagenet"])
def test_resume_does_not_load_the_pretrained_weights(kill_points, pipeline_tiny_run, tmp_path, monkeypatch, weights):
    """The run's saved config names pretrained weights that cannot be had (a missing file; ImageNet offline)."""
    import dermogaze.models.encoder as encoder
    from dermogaze.training import train
    from dermogaze.training.checkpoint import load_checkpoint, save_checkpoint

    def offline(dst):
        raise OSError("network is unreachable")

    monkeypatch.setattr(encoder, "_download_imagenet", offline)
    monkeypatch.setattr(encoder, "imagenet_cache_path", lambda: tmp_path / "hub" / "vgg16_bn.pth")
    run = tmp_path / "run"
    shutil.copytree(kill_points["copies"][WRITES.index(("epoch 1", "best.pt")), "after"], run)
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / name)
        ckpt.pop("path")
        ckpt["config"]["model"]["weights"] = weights
        save_checkpoint(run / name, ckpt)
    cfg = Config.from_dict(load_checkpoint(run / "last.pt")["config"])  # as `dermogaze train --resume RUN`
    with pytest.raises(DermogazeError, match="could not be downloaded|does not exist"):
        encoder.load_vgg16_bn_weights(weights)
    train(cfg, run, resume=True, progress=False)
    assert _rows(run) == _rows(pipeline_tiny_run)
    a, b = load_checkpoint(pipeline_tiny_run / "last.pt")["model"], load_checkpoint(run / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def test_resume_may_freeze_the_trained_encoder_but_not_change_the_trained_groups(kill_points, pipeline_cache,
                                                                                   tmp_path):
    from dermogaze.models import build_model
    from dermogaze.training import train
    from dermogaze.training.optim import build_optimizer

    # The encoder of a checkpoint is trained: lr 0 freezes it, without pretrained weights in the config.
    cfg = _tiny(pipeline_cache, "train.lr_encoder=0")
    model = build_model("deco_gap_3", width=0.125, image_size=32, steps=2)
    with pytest.raises(DermogazeError, match="random weights"):
        build_optimizer(model, cfg)
    optimizer = build_optimizer(model, cfg, pretrained_encoder=True)
    assert [g["name"] for g in optimizer.param_groups] == ["attention", "branches"]
    assert not any(p.requires_grad for p in model.encoder.parameters())
    # A run that trained its encoder cannot continue Adam's state over other groups: one clear line.
    run = tmp_path / "run"
    shutil.copytree(kill_points["copies"][WRITES.index(("epoch 1", "best.pt")), "after"], run)
    with pytest.raises(DermogazeError, match=r"trained the groups encoder, attention, branches.*attention, branches"):
        train(cfg, run, resume=True, progress=False)
    assert [r["epoch"] for r in _rows(run)] == [1]


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    """Files written atomically follow the umask like open() would, not mkstemp's private 0600."""
    import os

    from dermogaze.files import write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text("x", tmp_path / "atomic.txt")
    assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)
    assert os.access(atomic, os.R_OK)
