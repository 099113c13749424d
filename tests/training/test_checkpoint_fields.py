"""The checkpoint format: every field checked at load (``validate_checkpoint``), and writes that fail cleanly.

The checkpoints are made in memory from a tiny untrained network (``checkpoint_state`` after one optimiser
step), so each test edits one field of a complete, valid checkpoint.
"""

from __future__ import annotations

import errno
import math
import os

import pytest
import torch

from dermogaze.config import load_config
from dermogaze.errors import DermogazeError
from dermogaze.models import build_model
from dermogaze.training.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint, validate_checkpoint
from dermogaze.training.seeding import get_rng_state

pytestmark = pytest.mark.usefixtures("one_thread")

INFO = {"mean": [0.6, 0.5, 0.45], "std": [0.2, 0.18, 0.22], "size": 40,
        "structures": ["lesion", "skin", "pigment_network", "negative_network", "milia_like_cyst", "streaks"]}
CALIBRATION = {"temperature": 1.3, "threshold": 0.4, "threshold_rule": "sensitivity@0.89"}


@pytest.fixture(scope="module")
def state() -> dict:
    """A complete checkpoint of the ``tiny`` preset's network (32 px, T = 2) after one Adam step."""
    cfg = load_config("tiny")
    torch.manual_seed(0)
    kwargs = {k: getattr(cfg.model, k) for k in ("steps", "image_size", "width", "skip", "batch_norm")}
    model = build_model(cfg.model.name, **kwargs)
    optimizer = torch.optim.Adam([{"params": p, "name": n} for n, p in model.parameter_groups().items() if p])
    out = model(torch.randn(2, 3, cfg.model.image_size, cfg.model.image_size))
    out.logits.sum().backward()
    optimizer.step()
    return checkpoint_state(
        cfg, model, optimizer, torch.amp.GradScaler("cpu", enabled=False), INFO, epoch=2, best_val=0.7, best_epoch=1,
        rngs=[get_rng_state()], metrics={"epoch": 2}, calibration=CALIBRATION,
    )


def _copy(state: dict) -> dict:
    """A deep copy (tensors cloned) that can be edited."""
    def copy(value):
        if isinstance(value, torch.Tensor):
            return value.clone()
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v) for v in value]
        return value

    return copy(state)


def test_a_complete_checkpoint_passes_and_round_trips(state, tmp_path):
    validate_checkpoint(_copy(state), "x.pt", resume=True)
    path = save_checkpoint(tmp_path / "last.pt", state)
    ckpt = load_checkpoint(path, resume=True)
    assert ckpt["path"] == str(path) and ckpt["calibration"] == CALIBRATION and ckpt["epoch"] == 2


def _weight(ckpt: dict, k: int = 0) -> str:
    return [n for n, t in ckpt["model"].items() if t.is_floating_point() and t.dim() > 1][k]


def _moment(ckpt: dict) -> dict:
    return next(iter(ckpt["optimizer"]["state"].values()))


BAD_FIELDS = {
    "temperature-0": (lambda c: c["calibration"].update(temperature=0.0), "calibration.temperature"),
    "temperature-negative": (lambda c: c["calibration"].update(temperature=-2.0), "calibration.temperature"),
    "temperature-inf": (lambda c: c["calibration"].update(temperature=math.inf), "calibration.temperature"),
    "temperature-bool": (lambda c: c["calibration"].update(temperature=True), "calibration.temperature"),
    "threshold-above-1": (lambda c: c["calibration"].update(threshold=1.01), "calibration.threshold"),
    "threshold-nan": (lambda c: c["calibration"].update(threshold=math.nan), "calibration.threshold"),
    "threshold-rule-unknown": (lambda c: c["calibration"].update(threshold_rule="median"), "threshold_rule"),
    "calibration-not-a-mapping": (lambda c: c.update(calibration=(1.0, 0.5)), "calibration must be a mapping"),
    "structures-one-more": (lambda c: c["structures"].append("globules"), "names 7 structures but its model "
                                                                          "predicts 6"),
    "structures-repeated": (lambda c: c["structures"].__setitem__(5, "lesion"), "structures must be"),
    "structures-empty-name": (lambda c: c["structures"].__setitem__(3, ""), "structures must be"),
    "mean-two-channels": (lambda c: c.update(mean=c["mean"][:2]), "mean must be three"),
    "mean-above-1": (lambda c: c.update(mean=[0.5, 2.0, 0.5]), "mean must be three"),
    "std-zero": (lambda c: c.update(std=[0.2, 0.0, 0.2]), "std must be three"),
    "std-nan": (lambda c: c.update(std=[0.2, math.nan, 0.2]), "std must be three"),
    "image-size-not-multiple": (lambda c: c.update(image_size=40), "image_size must be the input size"),
    "image-size-other-multiple": (lambda c: c.update(image_size=64), "image_size must be the input size"),
    "cache-size-below-input": (lambda c: c.update(cache_size=16), "cache_size"),
    "epoch-negative": (lambda c: c.update(epoch=-1), "epoch must be"),
    "epoch-float": (lambda c: c.update(epoch=2.0), "epoch must be"),
    "best-epoch-after-epoch": (lambda c: c.update(best_epoch=3), "best_epoch"),
    "best-val-loss-nan": (lambda c: c.update(best_val_loss=math.nan), "best_val_loss"),
    "version-not-text": (lambda c: c.update(version=2), "version must be"),
    "format-version-text": (lambda c: c.update(format_version="2"), "format_version"),
    "metrics-not-a-mapping": (lambda c: c.update(metrics=[1]), "metrics must be a mapping"),
    "config-out-of-range": (lambda c: c["config"]["train"].update(epochs=-1), "config: train.epochs"),
    "variant-unknown": (lambda c: c.update(variant="resnet"), "variant must be one of"),
    "model-kwargs-unknown": (lambda c: c["model_kwargs"].update(depth=3), "model_kwargs"),
    "weights-missing": (lambda c: c["model"].pop(_weight(c)), "do not fit its 'deco_gap_3' model"),
    "weights-unexpected": (lambda c: c["model"].update(extra=torch.zeros(1)), "unexpected extra"),
    "weights-other-shape": (lambda c: c["model"].update({_weight(c): torch.zeros(1, 1)}), "of shape (1, 1)"),
    "weights-not-tensor": (lambda c: c["model"].update({_weight(c): 0.5}), "not a tensor"),
    "weights-integer": (lambda c: c["model"].update({_weight(c): c["model"][_weight(c)].long()}), "integer tensor"),
    "weights-nan": (lambda c: c["model"][_weight(c)].view(-1).__setitem__(0, math.nan), "non-finite weights"),
    "training-data-kind": (lambda c: c["training_data"].update(kind="photo"), "training_data kind must be one of"),
    "training-data-not-a-mapping": (lambda c: c.update(training_data="isic"), "training_data must be a mapping"),
    "training-data-other-structures": (lambda c: c["training_data"].update(structures=["lesion", "skin"]),
                                       "training_data names the structures lesion, skin"),
    "ood-other-channels": (lambda c: c.update(ood=_ood(16)), "ood mean must be a floating tensor of shape (32,)"),
    "ood-indefinite": (lambda c: c.update(ood={**_ood(), "covariance": -_ood()["covariance"]}),
                       "ood covariance must be symmetric positive definite"),
    "ood-threshold-nan": (lambda c: c.update(ood={**_ood(), "threshold": math.nan}), "ood threshold"),
    "ood-incomplete": (lambda c: c.update(ood={"mean": _ood()["mean"]}), "ood must be a mapping"),
}


def _ood(channels: int = 32) -> dict:
    """The ``ood`` field of a distribution of ``channels`` features (the tiny preset's encoder has 32)."""
    from dermogaze.metrics.ood import FeatureDistribution

    generator = torch.Generator().manual_seed(channels)
    train, val = torch.randn(40, channels, generator=generator), torch.randn(10, channels, generator=generator)
    return FeatureDistribution.fit(train, val).to_state()


@pytest.mark.parametrize(("edit", "message"), list(BAD_FIELDS.values()), ids=list(BAD_FIELDS))
def test_a_bad_field_is_refused_naming_the_file_and_the_field(state, tmp_path, edit, message):
    ckpt = _copy(state)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    with pytest.raises(DermogazeError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert str(path) in text and message in text and "\n" not in text, text


RESUME_FIELDS = {
    "optimizer-empty": (lambda c: c.update(optimizer={}), "optimizer must hold"),
    "optimizer-unknown-group": (lambda c: c["optimizer"]["param_groups"][0].update(name="decoder"),
                                "optimizer.param_groups"),
    "optimizer-group-short": (lambda c: c["optimizer"]["param_groups"][0]["params"].pop(), "holds"),
    "optimizer-moment-shape": (lambda c: _moment(c).update(exp_avg=torch.zeros(3)), r"exp_avg is \(3,\)"),
    "optimizer-step-text": (lambda c: _moment(c).update(step="one"), "step must be a number"),
    "scaler-bogus": (lambda c: c.update(scaler={"scale": -1.0}), "scaler is not"),
    "rng-empty": (lambda c: c.update(rng=[]), "rng must hold"),
    "rng-torch-short": (lambda c: c["rng"][0].update(torch=c["rng"][0]["torch"][:8]), "rng holds"),
    "rng-python-version": (lambda c: c["rng"][0].update(python=[99, [0] * 625, None]), "rng holds"),
    "config-model-variant": (lambda c: c["config"]["model"].update(name="vgg_gap"), "config.model.name"),
    "config-model-steps": (lambda c: c["config"]["model"].update(steps=3), "config.model.steps"),
}


@pytest.mark.parametrize(("edit", "message"), list(RESUME_FIELDS.values()), ids=list(RESUME_FIELDS))
def test_what_resuming_restores_is_checked_when_resuming(state, edit, message):
    """Read for inference, these fields are not used and pass; resuming refuses them."""
    ckpt = _copy(state)
    edit(ckpt)
    validate_checkpoint(_copy(ckpt), "last.pt")
    with pytest.raises(DermogazeError, match=message):
        validate_checkpoint(ckpt, "last.pt", resume=True)


def test_checking_the_rng_states_leaves_the_generators_as_they_were(state):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    validate_checkpoint(_copy(state), "last.pt", resume=True)
    assert torch.equal(torch.rand(3), expected)


def test_a_format_1_checkpoint_gets_the_calibration_it_was_used_with(state):
    ckpt = _copy(state)
    del ckpt["calibration"]
    ckpt["format_version"] = 1
    assert validate_checkpoint(ckpt, "old.pt")["calibration"] == {"temperature": 1.0, "threshold": 0.5,
                                                                  "threshold_rule": "0.5"}


def test_a_checkpoint_written_before_the_training_data_and_the_ood_score_loads_as_unknown(state, tmp_path):
    old = {k: v for k, v in _copy(state).items() if k not in ("training_data", "ood")}
    path = tmp_path / "old.pt"
    torch.save(old, path)
    ckpt = load_checkpoint(path)
    assert ckpt["ood"] is None
    assert ckpt["training_data"]["kind"] == "unknown" and ckpt["training_data"]["name"] == "unknown"
    assert ckpt["training_data"]["structures"] == INFO["structures"]


def test_a_checkpoint_with_its_training_data_and_ood_score_round_trips(state, tmp_path):
    data = {"name": "synth-40", "source": "/data/synth", "kind": "synthetic", "structure_set": "isic2017",
            "structures": INFO["structures"], "size": {"train": 24, "val": 8, "test": 8},
            "fingerprint": "0123456789abcdef"}
    ckpt = {**_copy(state), "training_data": data, "ood": _ood()}
    path = save_checkpoint(tmp_path / "best.pt", ckpt)
    loaded = load_checkpoint(path, resume=True)
    assert loaded["training_data"] == data and loaded["ood"]["threshold"] == ckpt["ood"]["threshold"]
    torch.testing.assert_close(loaded["ood"]["covariance"], ckpt["ood"]["covariance"], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["folder", "fifo", "link-to-dev-null"])
def test_a_checkpoint_path_that_is_not_a_file_is_named_as_what_it_is(tmp_path, kind):
    path = tmp_path / "best.pt"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # never opened: a FIFO without a writer would block the load
    else:
        path.symlink_to("/dev/null")
    expected = {"folder": "is a folder", "fifo": "is a FIFO", "link-to-dev-null": "a character device"}[kind]
    with pytest.raises(DermogazeError, match=f"checkpoint {path} .*{expected}.*not a regular file"):
        load_checkpoint(path)


def _failing_zip_writer(obj, f):
    """What ``torch.save`` does when the disk fills: its zip writer turns the failed write into a RuntimeError."""
    f.write(b"partial")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_a_full_disk_while_saving_is_an_os_error_naming_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"a": torch.ones(3)})
    monkeypatch.setattr(torch, "save", _failing_zip_writer)
    with pytest.raises(OSError) as info:
        save_checkpoint(path, {"a": torch.zeros(3)})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_another_runtime_error_while_saving_is_not_disguised(tmp_path, monkeypatch):
    def broken(obj, f):
        raise RuntimeError("a bug")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        save_checkpoint(tmp_path / "last.pt", {})


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_disk_while_saving(tmp_path):
    """On a 1 MiB tmpfs (where mounting is permitted): a checkpoint of 4 MB fails with ENOSPC naming the file."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with pytest.raises(OSError) as info:
            save_checkpoint(disk / "last.pt", {"a": torch.zeros(1 << 20)})
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(disk / "last.pt")
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
