"""ISIC 2018 Task 1-2: the reader, prepare, bad input, the divided Training split, the synthetic 2018
layout, and the Task 2 Jaccard against the official scorer (``isic_challenge_scoring.task2``).

The hand-made collection is written here with Pillow: 24×20 images of one colour; the lesion is the
rectangle of rows 4..15 and columns 4..19; attribute ``a`` (index in ATTRIBUTES) of image ``k`` is
the 2×2 block at row 6 + 2a, column 6 + 2k when ``(k + a) % 2 == 0``, empty otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermogaze.data import isic2018
from dermogaze.data.cache import format_stats, load_info, load_split
from dermogaze.data.images import resize_nearest
from dermogaze.data.isic2018 import ATTRIBUTES
from dermogaze.data.prepare import prepare
from dermogaze.data.synth import labels_path, write_synthetic_isic
from dermogaze.errors import DataError
from dermogaze.metrics.structures import task2_confusion, task2_jaccard
from dermogaze.structures import ISIC2018_STRUCTURES

W, H = 24, 20
IDS = {"Training": [f"ISIC_00000{k:02d}" for k in range(10)], "Validation": ["ISIC_0001000", "ISIC_0001001"],
       "Test": ["ISIC_0002000", "ISIC_0002001"]}


def _lesion() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[4:16, 4:20] = True
    return m


def _attribute(k: int, a: int) -> np.ndarray:
    m = np.zeros((H, W), bool)
    if (k + a) % 2 == 0:
        m[6 + 2 * a: 8 + 2 * a, 6 + 2 * k: 8 + 2 * k] = True
    return m


def _png(mask: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_isic2018(root: Path, splits=("Training", "Validation", "Test"), v3: bool = True) -> Path:
    for split in splits:
        task2 = f"ISIC2018_Task2_{split}_GroundTruth" + ("_v3" if v3 else "")
        for k, iid in enumerate(IDS[split]):
            colour = (20 * k % 255, 100, 150)
            (root / f"ISIC2018_Task1-2_{split}_Input").mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(np.full((H, W, 3), colour, np.uint8))
            image.save(root / f"ISIC2018_Task1-2_{split}_Input/{iid}.png")
            _png(_lesion(), root / f"ISIC2018_Task1_{split}_GroundTruth/{iid}_segmentation.png")
            for a, name in enumerate(ATTRIBUTES):
                _png(_attribute(k, a), root / task2 / f"{iid}_attribute_{name}.png")
    (root / "labels.csv").write_text("image_id,melanoma\n" + "".join(
        f"{iid},{k % 2}\n" for k, iid in enumerate(IDS["Training"][:6])))
    return root


def expected_masks(k: int, size: int) -> np.ndarray:
    """Eqs. 17-19 computed directly on the nearest-resized PNG masks."""
    lesion = resize_nearest(_lesion(), size)
    attrs = [resize_nearest(_attribute(k, a), size) for a in range(len(ATTRIBUTES))]
    dermo = np.logical_or.reduce(attrs)
    skin = ~(lesion | dermo)
    return np.stack([lesion & ~dermo, skin, *attrs])


def test_prepare_reads_the_official_layout(tmp_path):
    root = write_isic2018(tmp_path / "isic")
    assert isic2018.is_isic2018(root)
    info = prepare(root, tmp_path / "cache", size=16, progress=False, labels=root / "labels.csv")
    assert info["structures"] == list(ISIC2018_STRUCTURES) and info["layout"] == "isic2018"
    assert info["counts"] == {"train": 10, "val": 2, "test": 2}
    assert info["has_masks"] and not info["has_superpixels"]
    train = load_split(tmp_path / "cache", "train")
    assert train.ids == IDS["Training"] and train.masks.shape == (10, 7, 16, 16)
    for k in range(10):
        np.testing.assert_array_equal(train.masks[k], expected_masks(k, 16))
    np.testing.assert_array_equal(train.sizes, [[W, H]] * 10)
    # labels: the CSV lists the first six images; the rest are unknown (NaN)
    np.testing.assert_array_equal(train.labels[:6], [0, 1, 0, 1, 0, 1])
    assert np.isnan(train.labels[6:]).all()
    assert info["labelled"] == {"train": 6, "val": 0, "test": 0} and info["melanoma"]["train"] == 3
    # Table 1 presences, counted at the cache size (a 2×2 block can fall between the sampled pixels)
    assert info["presences"] == [sum(int(expected_masks(k, 16)[s].any()) for k in range(10)) for s in range(7)]
    assert info["presences"][:2] == [10, 10] and 0 < min(info["presences"])
    assert "globules" in format_stats(info)


def test_an_edited_labels_csv_rebuilds_the_cache(tmp_path):
    root = write_isic2018(tmp_path / "isic")
    info = prepare(root, tmp_path / "cache", size=16, progress=False, labels=root / "labels.csv")
    same = prepare(root, tmp_path / "cache", size=16, progress=False, labels=root / "labels.csv")
    assert same["token"] == info["token"]
    (root / "labels.csv").write_text("image_id,melanoma\n" + "".join(f"{iid},1\n" for iid in IDS["Training"][:6]))
    again = prepare(root, tmp_path / "cache", size=16, progress=False, labels=root / "labels.csv")
    assert again["token"] != info["token"]
    np.testing.assert_array_equal(load_split(tmp_path / "cache", "train").labels[:6], [1] * 6)


def test_tolerated_variations(tmp_path):
    root = write_isic2018(tmp_path / "isic", v3=False)
    # nested input folder and an upper-case .JPG
    inp = root / "ISIC2018_Task1-2_Training_Input"
    nested = inp / inp.name
    nested.mkdir()
    for p in list(inp.glob("*.png")):
        p.rename(nested / p.name)
    Image.open(nested / "ISIC_0000000.png").convert("RGB").save(nested / "ISIC_0000000.JPG", quality=95)
    (nested / "ISIC_0000000.png").unlink()
    (nested / "LICENSE.txt").write_text("licence")
    info = prepare(root, tmp_path / "cache", size=16, progress=False)
    assert info["counts"]["train"] == 10 and info["structures"][-1] == "globules"
    assert np.isnan(load_split(tmp_path / "cache", "train").labels).all()  # structure-only without --labels


@pytest.mark.parametrize(
    "damage, file, message",
    [
        ("wrong_size", "ISIC2018_Task2_Training_GroundTruth_v3/ISIC_0000003_attribute_streaks.png", "but its image"),
        ("non_binary", "ISIC2018_Task1_Training_GroundTruth/ISIC_0000004_segmentation.png", "not binary"),
        ("missing_one", "ISIC2018_Task2_Training_GroundTruth_v3/ISIC_0000005_attribute_globules.png",
         "has the other attribute masks"),
        ("orphan", "ISIC2018_Task2_Training_GroundTruth_v3/ISIC_0000099_attribute_streaks.png", "without its image"),
    ],
)
def test_bad_input_names_the_file_or_is_skipped(tmp_path, damage, file, message):
    root = write_isic2018(tmp_path / "isic")
    path = root / file
    if damage == "wrong_size":
        _png(np.zeros((H + 1, W), bool), path)
    elif damage == "non_binary":
        Image.fromarray(np.where(_lesion(), 255, 7).astype(np.uint8)).save(path)
    elif damage == "missing_one":
        path.unlink()
    else:
        _png(_attribute(0, 0), path)
    with pytest.raises(DataError, match=message) as err:
        prepare(root, tmp_path / "cache", size=16, progress=False)
    assert str(err.value).startswith(str(path))
    info = prepare(root, tmp_path / "cache", size=16, progress=False, skip_bad=True)
    assert [s["file"] for s in info["skipped"]] == [str(path)]
    assert info["counts"]["train"] == (10 if damage == "orphan" else 9)


def test_training_split_is_divided_without_validation_and_test_ground_truth(tmp_path):
    root = write_isic2018(tmp_path / "isic", splits=("Training",))
    (root / "ISIC2018_Task1-2_Validation_Input").mkdir()  # inputs without ground truth are ignored
    info = prepare(root, tmp_path / "cache", size=16, progress=False, labels=root / "labels.csv",
                   split=(0.5, 0.25, 0.25), seed=1)
    ids = {s: load_split(tmp_path / "cache", s).ids for s in ("train", "val", "test")}
    assert sorted(ids["train"] + ids["val"] + ids["test"]) == IDS["Training"]
    assert len(ids["train"]) >= 4 and ids["val"] and ids["test"]
    assert info["official_splits"]["val"].startswith("Training")
    again = prepare(root, tmp_path / "cache2", size=16, progress=False, labels=root / "labels.csv",
                    split=(0.5, 0.25, 0.25), seed=1)
    assert {s: load_split(tmp_path / "cache2", s).ids for s in ids} == ids  # seeded: the same division
    assert again["options"]["seed"] == 1


def test_synthetic_2018_layout_has_the_2017_lesions_and_globules(tmp_path):
    counts = {"Training": 12}
    write_synthetic_isic(tmp_path / "s17", counts=counts, image_size=(64, 48), progress=False)
    write_synthetic_isic(tmp_path / "s18", counts=counts, image_size=(64, 48), progress=False, layout="isic2018")
    truth = json.loads((tmp_path / "s18/ISIC2018_Training_synth_truth.json").read_text())["samples"]
    with_globules = [i for i, p in truth.items() if p["globules"]]
    assert 0 < len(with_globules) < 12
    for iid, params in truth.items():
        a = np.asarray(Image.open(tmp_path / f"s17/ISIC-2017_Training_Data/{iid}.jpg"))
        b = np.asarray(Image.open(tmp_path / f"s18/ISIC2018_Task1-2_Training_Input/{iid}.jpg"))
        assert np.array_equal(a, b) == (not params["globules"])  # only the globules differ
        lesion17 = tmp_path / f"s17/ISIC-2017_Training_Part1_GroundTruth/{iid}_segmentation.png"
        lesion18 = tmp_path / f"s18/ISIC2018_Task1_Training_GroundTruth/{iid}_segmentation.png"
        assert lesion17.read_bytes() == lesion18.read_bytes()
        glob_png = tmp_path / f"s18/ISIC2018_Task2_Training_GroundTruth_v3/{iid}_attribute_globules.png"
        glob = np.asarray(Image.open(glob_png))
        assert glob.dtype == np.uint8 and glob.shape == (48, 64) and set(np.unique(glob)) <= {0, 255}
        assert glob.any() == params["globules"]
        if glob.any():  # inside the lesion; the picture changes where the globules are drawn
            lesion = np.asarray(Image.open(lesion18)) > 0
            region = glob > 0
            assert not (region & ~lesion).any()
            diff = np.abs(a.astype(int) - b.astype(int)).sum(-1)
            assert diff[region].mean() > 3 * diff[~region].mean()
    rows = (tmp_path / "s18" / labels_path("").name).read_text().splitlines()
    assert rows[0] == "image_id,melanoma" and len(rows) == 13


# ------------------------------------------------------------------------------------------
# Official Task 2 scoring
# ------------------------------------------------------------------------------------------


def test_task2_jaccard_matches_the_official_scorer(tmp_path):
    task2 = pytest.importorskip("isic_challenge_scoring.task2")
    rng = np.random.default_rng(0)
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    confusions = []
    for k, (h, w) in enumerate([(20, 30), (40, 25), (16, 16), (33, 47)]):  # image sizes differ: normalisation matters
        gts, preds = [], []
        for a, name in enumerate(ATTRIBUTES):
            gt = rng.random((h, w)) < (0.0 if (k + a) % 3 == 0 else 0.3)  # some attributes absent
            pred = (rng.random((h, w)) < 0.25) if a != 4 else np.zeros((h, w), bool)
            _png(gt, truth_dir / f"ISIC_000000{k}_attribute_{name}.png")
            _png(pred, pred_dir / f"ISIC_000000{k}_attribute_{name}.png")
            gts.append(gt)
            preds.append(pred)
        confusions.append(task2_confusion(np.stack(gts), np.stack(preds)))
    official = task2.score(truth_dir, pred_dir)
    ours = task2_jaccard(np.stack(confusions), ATTRIBUTES)
    assert ours["micro_average"] == pytest.approx(official["micro_average"]["jaccard"], abs=1e-12)
    assert ours["micro_average"] == pytest.approx(official["overall"], abs=1e-12)
    for name in ATTRIBUTES:
        assert ours["per_attribute"][name] == pytest.approx(official[name]["jaccard"], abs=1e-12)
    assert ours["attribute_mean"] == pytest.approx(np.mean([official[n]["jaccard"] for n in ATTRIBUTES]))


def test_task2_jaccard_hand_computed():
    # one 2×2 image, one attribute: TP 1, FP 1, FN 0, TN 2 → fractions (.25, .25, 0, .5), Jaccard 1/2;
    # a second attribute absent and not predicted: the scorer's rule gives 1.
    gt = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]]], bool)
    pred = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], bool)
    c = task2_confusion(gt, pred)
    np.testing.assert_allclose(c, [[0.25, 0.25, 0, 0.5], [0, 0, 0, 1]])
    out = task2_jaccard(c[None], ("a", "b"))
    assert out["per_attribute"] == {"a": 0.5, "b": 1.0}
    assert out["micro_average"] == 0.5 and out["attribute_mean"] == 0.75
    assert not math.isnan(out["micro_average"])


def test_load_info_records_structure_set(tmp_path):
    root = write_isic2018(tmp_path / "isic")
    prepare(root, tmp_path / "cache", size=16, progress=False)
    assert load_info(tmp_path / "cache")["structures"] == list(ISIC2018_STRUCTURES)


def test_cli_synth_prepare_stats_in_the_2018_layout(tmp_path, capsys):
    from dermogaze.cli import main

    data, cache = tmp_path / "synth", tmp_path / "cache"
    assert main(["data", "synth", "--layout", "isic2018", "--out", str(data), "--train", "6", "--val", "2",
                 "--test", "2", "--width", "64", "--height", "48", "--no-progress"]) == 0
    assert (data / "ISIC2018_Task2_Test_GroundTruth_v3").is_dir() and (data / "ISIC2018_synth_labels.csv").is_file()
    assert main(["data", "prepare", "--isic", str(data), "--out", str(cache), "--size", "32", "--labels",
                 str(data / "ISIC2018_synth_labels.csv"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["data", "stats", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "structures (isic2018): lesion, skin, pigment_network, negative_network, streaks, milia_like_cyst, " \
           "globules" in text
    assert "globules" in text.split("Table 2")[1]  # the weights name the seventh structure too
