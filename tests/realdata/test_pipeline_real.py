"""A short training on the prepared real collection, then ``evaluate``, ``explain``, ``predict`` and the official
ISIC 2018 Task 2 scorer on its checkpoint (every command through :func:`dermogaze.cli.main`).

The model is barely trained (one epoch of a few batches): these tests check that the commands run on real
photographs and real masks and that what they write is well-formed and consistent with the cache, not how good
the model is.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermogaze.cli import main
from dermogaze.data.cache import load_info, load_split
from dermogaze.files import read_jsonl
from dermogaze.training.checkpoint import load_checkpoint

from .conftest import ATTRIBUTES, CACHE_SIZE, IMAGE_SIZE, IMAGES, TASK2

STRUCTURES = ("lesion", "skin", *ATTRIBUTES)
CROP = slice((CACHE_SIZE - IMAGE_SIZE) // 2, (CACHE_SIZE + IMAGE_SIZE) // 2)  # the model's center crop
SIDE = 256  # the collection's images are 256×256


def crop_presence(cache: Path, split: str) -> np.ndarray:
    """``(N, 7)`` bool: each structure present in each image's center crop (what the model is scored on)."""
    masks = np.asarray(load_split(cache, split).masks)[:, :, CROP, CROP]  # (N, 7, s, s)
    return masks.reshape(*masks.shape[:2], -1).any(-1)


@pytest.fixture(scope="module")
def real_eval(real_run: Path, real_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``dermogaze evaluate`` of the short run on the test split; its ``metrics.json`` and output folder."""
    out = tmp_path_factory.mktemp("realdata_eval")
    argv = ["evaluate", "--checkpoint", str(real_run / "best.pt"), "--data", str(real_cache), "--split", "test",
            "--out", str(out), "--bootstrap", "100", "--faithfulness", "4", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    return {"metrics": json.loads((out / "metrics.json").read_text()), "out": out}


def test_short_training_writes_a_checkpoint_of_the_real_structures(real_run, real_cache):
    assert {p.name for p in real_run.iterdir()} >= {"best.pt", "last.pt", "config.yaml", "metrics.jsonl"}
    (epoch,) = read_jsonl(real_run / "metrics.jsonl")
    assert all(math.isfinite(epoch[k]) for k in ("train_loss", "val_loss", "train_seg", "train_cls"))
    ckpt = load_checkpoint(real_run / "best.pt")
    info = load_info(real_cache)
    assert tuple(ckpt["structures"]) == STRUCTURES and ckpt["image_size"] == IMAGE_SIZE
    assert ckpt["cache_size"] == CACHE_SIZE and ckpt["mean"] == info["mean"] and ckpt["std"] == info["std"]
    assert 0.0 < ckpt["calibration"]["threshold"] < 1.0  # fitted on the real validation split (both classes)


def test_evaluate_scores_the_real_test_split(real_eval, real_cache):
    m = real_eval["metrics"]
    test = load_split(real_cache, "test")
    assert m["diagnosis"]["n"] == len(test) == 80 and m["diagnosis"]["n_pos"] == int(test.labels.sum())
    low, high = m["diagnosis_ci"]["auc"]
    assert 0.0 <= low <= m["diagnosis"]["auc"] <= high <= 1.0
    present = dict(zip(STRUCTURES, crop_presence(real_cache, "test").sum(0).tolist(), strict=True))
    assert m["structures"]["jaccard_n"] == present  # scored on the images whose crop holds the structure
    assert all(0.0 <= v <= 1.0 for v in m["structures"]["jaccard"].values())
    t2 = m["task2_jaccard"]
    assert set(t2["per_attribute"]) == set(ATTRIBUTES) and t2["n_images"] == 80
    ex = m["explanation"]
    assert ex["present_images"] == present and ex["faithfulness_images"] == 4
    for name, n in present.items():  # the no-model reference is defined wherever the structure is
        value = ex["pointing_centroid"]["per_structure"][name]
        assert (value is None) == (n == 0) and (value is None or 0.0 <= value <= 1.0)
    assert 0.0 <= ex["deletion"]["auc"] <= 1.0 and 0.0 <= ex["deletion"]["random_auc"] <= 1.0
    assert len(ex["ablation"]["mean_abs_delta_per_step"]) == load_checkpoint(
        real_eval["metrics"]["info"]["checkpoint"])["config"]["model"]["steps"]
    with open(real_eval["out"] / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == test.ids


def test_best_step_jaccard_is_the_best_overlap_of_any_step(real_eval, real_run, real_cache):
    """The evaluation's best single step per structure, whatever it names, against a direct count of intersection and
    union pixels, step by step, on the real test split."""
    import torch

    from dermogaze.data.dataset import DermoscopyDataset
    from dermogaze.training.checkpoint import model_from_checkpoint

    got = real_eval["metrics"]["structures"]["jaccard_best_step"]
    ckpt = load_checkpoint(real_run / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    data = DermoscopyDataset(real_cache, "test", image_size=int(ckpt["image_size"]),
                             normalisation=(ckpt["mean"], ckpt["std"]))
    batch = int(ckpt["config"]["train"]["batch_size"])  # evaluate's batches (another size may round a mask otherwise)
    expected: dict[str, list[float]] = {name: [] for name in STRUCTURES}
    with torch.no_grad():
        for first in range(0, len(data), batch):
            items = [data[i] for i in range(first, min(first + batch, len(data)))]
            masks = model(torch.stack([item["image"] for item in items])).masks.numpy() >= 0.5
            for item, steps in zip(items, masks, strict=True):
                for k in np.flatnonzero(item["present"].numpy()):
                    truth = item["masks"][k].numpy().astype(bool)
                    ious = [(t & truth).sum() / (t | truth).sum() if (t | truth).any() else 0.0 for t in steps]
                    expected[data.structures[k]].append(max(ious))
    for name, values in expected.items():
        if values:
            assert got[name] == pytest.approx(np.mean(values), abs=1e-9), name
        else:
            assert got[name] is None, name  # NaN in metrics.json is written as null
    assert any(0.0 < v < 1.0 for v in got.values() if v is not None)


def test_explain_a_real_test_image_and_a_real_photograph(real_run, real_cache, tmp_path):
    ckpt = str(real_run / "best.pt")
    out = tmp_path / "split"
    assert main(["explain", "--checkpoint", ckpt, "--data", str(real_cache), "--split", "test", "--limit", "3",
                 "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    test = load_split(real_cache, "test")
    presence = crop_presence(real_cache, "test")
    for k, image_id in enumerate(test.ids[:3]):
        assert (out / f"{image_id}_gazes.png").is_file() and (out / f"{image_id}_masks.png").is_file()
        rec = json.loads((out / f"{image_id}.json").read_text())
        assert rec["image_size"] == {"width": CACHE_SIZE, "height": CACHE_SIZE}  # the cache image's pixels
        region = rec["input_region"]
        assert (region["x0"], region["x1"]) == (CROP.start, CROP.stop)
        truth = rec["ground_truth"]
        assert truth["label"] == int(test.labels[k])
        assert truth["structures_present"] == [s for s, p in zip(STRUCTURES, presence[k], strict=True) if p]
        for step in rec["steps"]:
            assert CROP.start <= step["gaze"]["x"] < CROP.stop and CROP.start <= step["gaze"]["y"] < CROP.stop
            assert step["structure"] in STRUCTURES and step["gt_structure"] in truth["structures_present"]

    photo = IMAGES / f"{test.ids[0]}.jpg"  # the same photograph as a user's own file: resized whole, no crop
    assert main(["explain", "--checkpoint", ckpt, str(photo), "--out", str(tmp_path / "photo"), "--device", "cpu",
                 "--no-progress"]) == 0
    rec = json.loads((tmp_path / "photo" / f"{photo.stem}.json").read_text())
    assert rec["image_size"] == {"width": SIDE, "height": SIDE} and rec["ground_truth"] is None
    assert all(0 <= s["gaze"]["x"] < SIDE and 0 <= s["gaze"]["y"] < SIDE for s in rec["steps"])


def test_predict_writes_task2_files_the_official_scorer_accepts(real_run, real_cache, tmp_path):
    ckpt = str(real_run / "best.pt")
    out = tmp_path / "task2"
    assert main(["predict", "--checkpoint", ckpt, "--data", str(real_cache), "--split", "test", "--format",
                 "isic2018-task2", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    ids = load_split(real_cache, "test").ids
    assert len(list(out.iterdir())) == len(ATTRIBUTES) * len(ids)
    truth = tmp_path / "truth"  # the scorer reads a folder of the ground truth of exactly the scored images
    truth.mkdir()
    for image_id in ids:
        for name in ATTRIBUTES:
            with Image.open(out / f"{image_id}_attribute_{name}.png") as im:
                assert im.mode == "L" and im.size == (SIDE, SIDE)  # the original image's size
                assert set(np.unique(np.asarray(im)).tolist()) <= {0, 255}
            (truth / f"{image_id}_attribute_{name}.png").symlink_to(TASK2 / f"{image_id}_attribute_{name}.png")
    # imported here: `make test` collects this module without running it
    from isic_challenge_scoring.task2 import score as score_task2

    scores = score_task2(truth, out)
    assert set(scores) == {*ATTRIBUTES, "micro_average", "overall"}
    assert 0.0 <= scores["overall"] == scores["micro_average"]["jaccard"] <= 1.0
    assert all(0.0 <= scores[name]["jaccard"] <= 1.0 for name in ATTRIBUTES)

    part3 = tmp_path / "part3.csv"
    assert main(["predict", "--checkpoint", ckpt, "--data", str(real_cache), "--split", "test", "--format",
                 "isic2017-part3", "--out", str(part3), "--device", "cpu", "--no-progress"]) == 0
    with open(part3, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == ids and all(0.0 <= float(r["melanoma"]) <= 1.0 for r in rows)
