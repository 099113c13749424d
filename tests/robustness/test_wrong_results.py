"""wrong-results: input that would silently give wrong numbers must be refused (or read right)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from .cli_probe import (
    Probe,
    Verdict,
    both,
    cache_count,
    cache_ids,
    check,
    edit_checkpoint,
    first_id,
    gray,
    split_folder,
    success,
    user_error,
)


@pytest.mark.parametrize("case", ["wr-16bit-gray-png"])
def test_a_16_bit_png_is_read_as_the_image_it_is(probe: Probe, tmp_path, case):
    """A training image replaced by a 16-bit greyscale PNG of itself: prepare succeeds and the
    cached image is not all 255 (mean |difference| to the 8-bit grey < 25 levels)."""
    col = probe.copy_collection(tmp_path / "collection")
    iid = first_id(col, "Training", 3)
    jpg = split_folder(col, "Training", "Data") / f"{iid}.jpg"
    grey8 = np.asarray(Image.open(jpg).convert("L"), dtype=np.uint16)
    Image.fromarray(grey8 * 257).save(jpg.with_suffix(".png"))  # mode I;16: a 16-bit greyscale PNG
    jpg.unlink()
    cache = tmp_path / "cache"
    verdict = success(probe.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40]),
                      "a 16-bit PNG is an image")
    check(verdict, probe)
    img = np.load(cache / "train" / "images.npy", mmap_mode="r")[cache_ids(cache, "train").index(iid)]
    ref = np.load(probe.cache / "train" / "images.npy", mmap_mode="r")[cache_ids(probe.cache, "train").index(iid)]
    diff = float(np.abs(gray(img) - gray(ref)).mean())
    white = bool((np.asarray(img) == 255).all())
    check(both(Verdict(True, f"rc=0, cached image mean {float(np.mean(img)):.0f}, |diff| {diff:.1f}"),
               (not white, "cached as pure white (all 255)"),
               (white or diff < 25, f"cached image differs by {diff:.0f} levels")), probe)


def _collection_with_feature_value(probe: Probe, tmp_path, raw: str):
    """A copy of the collection whose first Part 2 value of one training image is the JSON text ``raw``."""
    col = probe.copy_collection(tmp_path / "collection")
    path = split_folder(col, "Training", "Part2_GroundTruth") / f"{first_id(col, 'Training', 1)}_features.json"
    data = json.loads(path.read_text())
    name = next(iter(data))
    values = [json.dumps(v) for v in data[name]]
    values[0] = raw
    data[name] = "@@"
    path.write_text(json.dumps(data).replace('"@@"', "[" + ", ".join(values) + "]"))
    return col


FEATURE_VALUES = {
    "wr-feature-neg": "-1",
    "wr-feature-nan": "NaN",
    "wr-feature-huge": "1e300",
    "wr-feature-str": '"x"',
    "wr-feature-gt1": "1.5",
    "wr-feature-inf": "Infinity",
}


@pytest.mark.parametrize("raw", [pytest.param(v, id=k) for k, v in FEATURE_VALUES.items()])
def test_a_feature_value_outside_0_1_is_refused(probe: Probe, tmp_path, raw):
    """A Part 2 feature value outside [0, 1] (or not a number): ``data prepare`` refuses cleanly."""
    col = _collection_with_feature_value(probe, tmp_path, raw)
    check(user_error(probe.run(["data", "prepare", "--isic", col, "--out", tmp_path / "cache", "--size", 40])), probe)


@pytest.mark.parametrize("case", ["wr-feature-nan-skip-bad"])
def test_a_nan_feature_value_with_skip_bad_skips_the_sample(probe: Probe, tmp_path, case):
    """A Part 2 feature value NaN with ``--skip-bad``: prepare succeeds and the sample is skipped (15 train images)."""
    col = _collection_with_feature_value(probe, tmp_path, "NaN")
    cache = tmp_path / "cache"
    proc = probe.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40, "--skip-bad"])
    n = cache_count(cache, "train")
    check(both(success(proc, "--skip-bad skips the sample"), (n == 15, f"train split holds {n} images, expected 15")),
          probe)


def _nan_weights(ckpt: dict) -> None:
    for tensor in ckpt["model"].values():
        if tensor.is_floating_point():
            tensor.fill_(float("nan"))


def _nan_temperature(ckpt: dict) -> None:
    ckpt["calibration"].update(temperature=float("nan"))


NAN_CHECKPOINTS = {
    "wr-nan-ckpt-evaluate": ("evaluate", _nan_weights),
    "wr-nan-ckpt-explain": ("explain", _nan_weights),
    "wr-nan-temperature-evaluate": ("evaluate", _nan_temperature),
}


@pytest.mark.parametrize(("command", "edit"), [pytest.param(*v, id=k) for k, v in NAN_CHECKPOINTS.items()])
def test_a_checkpoint_holding_nan_is_refused(probe: Probe, tmp_path, command, edit):
    """``evaluate`` or ``explain`` with a checkpoint whose weights (or stored calibration temperature) are NaN:
    clean failure."""
    ckpt = edit_checkpoint(probe.best, tmp_path / "nan.pt", edit)
    if command == "evaluate":
        args = probe.eval_args(ckpt, tmp_path / "eval")
    else:
        args = probe.explain_args([probe.img], tmp_path / "out", ckpt)
    check(user_error(probe.run(args)), probe)


BAD_OVERRIDES = {
    "wr-lr-attention-neg": "train.lr_attention=-1",  # a negative learning rate
    "wr-lr-branches-nan": "train.lr_branches=nan",  # a NaN learning rate
    "wr-max-train-batches-0": "train.max_train_batches=0",  # epochs of zero batches
    "wr-epochs-0": "train.epochs=0",
    "wr-steps-0": "model.steps=0",  # zero gazes
    "wr-width-0": "model.width=0",  # a network of zero channels
    "wr-image-size-over-cache": "model.image_size=64",  # an input larger than the 40 px cache
    "wr-loss-alpha-neg": "loss.alpha=-1",  # a negative focal weight
    "wr-threshold-bogus": "train.threshold=bogus",  # an unknown threshold rule
}


@pytest.mark.parametrize("override", [pytest.param(v, id=k) for k, v in BAD_OVERRIDES.items()])
def test_a_nonsense_hyperparameter_is_refused(probe: Probe, tmp_path, override):
    """``train -o OVERRIDE`` of a value that cannot train right: refused cleanly."""
    check(user_error(probe.run(probe.train_args(tmp_path / "run", "-o", override))), probe)


@pytest.mark.parametrize("case", ["wr-empty-val"])
def test_an_empty_validation_split_is_refused(probe: Probe, tmp_path, case):
    """A collection whose validation split is empty (CSV header only): ``train`` on its cache is refused cleanly
    (or ``prepare`` refuses the empty split cleanly)."""
    col = probe.copy_collection(tmp_path / "collection")
    for part in ("Data", "Part1_GroundTruth", "Part2_GroundTruth"):
        for f in split_folder(col, "Validation", part).iterdir():
            if f.name.startswith("ISIC_"):
                f.unlink()
    csv = col / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    cache = tmp_path / "cache"
    prep = probe.run(["data", "prepare", "--isic", col, "--out", cache, "--size", 40])
    if prep.rc != 0:
        verdict = user_error(prep)
        check(Verdict(verdict.clean, "prepare " + verdict.outcome, verdict.reason), probe)
        return
    args = probe.train_args(tmp_path / "run")
    args[args.index("--data") + 1] = cache
    verdict = user_error(probe.run(args))
    check(Verdict(verdict.clean, "prepare rc=0; train " + verdict.outcome, verdict.reason), probe)
