"""``dermogaze predict`` (submission files) and the ISIC 2018 pipeline: synth → prepare → train → evaluate →
explain → predict, with a partly labelled and a structure-only cache."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dermogaze.apps.predict import attribute_maps, predict, to_original
from dermogaze.cli import main
from dermogaze.config import load_config
from dermogaze.data.cache import load_split
from dermogaze.data.prepare import prepare
from dermogaze.data.synth import labels_path, write_synthetic_isic
from dermogaze.errors import DermogazeError
from dermogaze.evaluation.evaluate import evaluate_checkpoint
from dermogaze.evaluation.tables import format_table
from dermogaze.explain.run import run_explain
from dermogaze.metrics.structures import named_masks
from dermogaze.structures import ISIC2018_STRUCTURES
from dermogaze.training.train import train


def test_attribute_maps_threshold_is_the_union_of_the_naming_steps():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 8, 8)).astype(np.float32)
    classes = np.array([2, 6, 2, 0, 4])
    indices = [2, 3, 4, 5, 6]
    maps = attribute_maps(masks, classes, indices)
    np.testing.assert_array_equal(maps >= 0.5, named_masks(masks, classes, 7)[indices])
    assert not maps[1].any()  # structure 3: named by no step


def test_to_original_places_the_crop_and_resizes():
    prob = np.zeros((4, 4), np.float32)
    prob[1:3, 1:3] = 0.9
    same = to_original(prob, 4, (4, 4))  # no crop, no resize: the thresholded map itself
    np.testing.assert_array_equal(same, prob >= 0.5)
    full = np.ones((4, 4), np.float32)
    placed = to_original(full, 8, (8, 8))  # the 4-px center crop of an 8-px square
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    np.testing.assert_array_equal(placed, expected)
    big = to_original(full, 8, (24, 16))  # back to a 24×16 original: (H, W) = (16, 24)
    assert big.shape == (16, 24) and big[8, 12] and not big[0, 0]


@pytest.fixture(scope="module")
def pipeline_2018(tmp_path_factory):
    root = tmp_path_factory.mktemp("isic2018")
    data = write_synthetic_isic(root / "synth", counts={"Training": 16, "Validation": 6, "Test": 6},
                                image_size=(96, 72), seed=1, progress=False, layout="isic2018")
    rows = labels_path(data).read_text().splitlines()
    partial = root / "labels_partial.csv"  # a partly labelled collection: 4 training images unlabelled
    partial.write_text("\n".join(rows[:13] + rows[17:]) + "\n")
    cache = root / "cache"
    prepare(data, cache, size=40, progress=False, labels=partial)
    run = root / "run"
    train(load_config("tiny", [f"data.cache={cache}", "train.epochs=1", "train.max_train_batches=2"]), run,
          progress=False)
    return {"data": data, "cache": cache, "run": run, "root": root}


@pytest.mark.slow
def test_isic2018_pipeline_evaluate_explain_predict(pipeline_2018, tmp_path):
    p = pipeline_2018
    ckpt = p["run"] / "best.pt"
    train_split = load_split(p["cache"], "train")
    assert np.isnan(train_split.labels).sum() == 4  # trained on a partly labelled split

    result = evaluate_checkpoint(ckpt, p["cache"], "test", tmp_path / "eval", progress=False, n_resamples=20)
    metrics = result["metrics"]
    assert metrics["diagnosis"]["n"] == 6 and "diagnosis_absent" not in metrics
    t2 = metrics["task2_jaccard"]
    assert set(t2["per_attribute"]) == set(ISIC2018_STRUCTURES[2:]) and t2["n_images"] == 6
    assert "micro-average" in format_table(metrics) and "mean over attributes" in format_table(metrics)
    assert len(metrics["structures"]["confusion_matrix"]) == 7

    # the same collection without labels: structure-only, the diagnosis metrics are absent with a reason
    bare = tmp_path / "bare"
    prepare(p["data"], bare, size=40, progress=False)
    bare_eval = evaluate_checkpoint(ckpt, bare, "test", tmp_path / "eval_bare", progress=False, n_resamples=20)
    assert "structure-only" in bare_eval["metrics"]["diagnosis_absent"]
    assert "Diagnosis: not scored" in format_table(bare_eval["metrics"])
    assert bare_eval["metrics"]["task2_jaccard"]["n_images"] == 6

    records = run_explain(ckpt, [], tmp_path / "explain", data=bare, split="test", limit=2, progress=False)
    assert len(records) == 2
    truth = records[0]["ground_truth"]  # no diagnosis label, but the GT structures are known
    assert truth["label"] is None and truth["prediction_correct"] is None
    assert "lesion" in truth["structures_present"] and "skin" in truth["structures_present"]
    assert all(s["structure"] in ISIC2018_STRUCTURES for s in records[0]["steps"])
    assert set(records[0]["steps"][0]["structure_probabilities"]) == set(ISIC2018_STRUCTURES)

    out = tmp_path / "task2"
    info = predict(ckpt, p["cache"], "test", out, progress=False)
    test_ids = load_split(p["cache"], "test").ids
    assert info["files"] == 5 * len(test_ids)
    for iid in test_ids:
        for name in ISIC2018_STRUCTURES[2:]:
            im = Image.open(out / f"{iid}_attribute_{name}.png")
            assert im.mode == "L" and im.size == (96, 72)
            assert set(np.unique(np.asarray(im))) <= {0, 255}
    task2 = pytest.importorskip("isic_challenge_scoring.task2")
    truth = tmp_path / "truth"
    shutil.copytree(p["data"] / "ISIC2018_Task2_Test_GroundTruth_v3", truth)
    score = task2.score(truth, out)  # the official scorer accepts the files
    assert 0.0 <= score["overall"] <= 1.0

    assert main(["predict", "--checkpoint", str(ckpt), "--data", str(p["cache"]), "--split", "test", "--format",
                 "isic2017-part3", "--out", str(tmp_path / "part3.csv"), "--no-progress"]) == 0
    with open(tmp_path / "part3.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image_id"] for r in rows] == test_ids
    assert {r["seborrheic_keratosis"] for r in rows} == {"0.0"}
    probs = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert probs["n_images"] == len(rows)


@pytest.mark.slow
def test_a_2018_model_refuses_a_2017_cache(pipeline_2018, tiny_isic_dir, tmp_path):
    cache17 = tmp_path / "cache17"
    prepare(tiny_isic_dir, cache17, size=40, progress=False)
    ckpt = pipeline_2018["run"] / "best.pt"
    with pytest.raises(DermogazeError, match="trained on the structures .*globules.* holds lesion"):
        evaluate_checkpoint(ckpt, cache17, "test", tmp_path / "eval", progress=False)
    with pytest.raises(DermogazeError, match="trained on the structures"):
        predict(ckpt, cache17, "test", tmp_path / "p", progress=False)


def test_predict_says_what_the_model_was_trained_on(pipeline_tiny_run, pipeline_cache, tiny_isic_dir, tmp_path,
                                                    caplog):
    from dermogaze.data.provenance import DEMONSTRATION_NOTE
    from dermogaze.training.checkpoint import load_checkpoint

    best = pipeline_tiny_run / "best.pt"
    trained_on = load_checkpoint(best)["training_data"]
    caplog.set_level("INFO", logger="dermogaze.apps.predict")
    own = predict(best, pipeline_cache, "test", tmp_path / "own.csv", fmt="isic2017-part3", device="cpu",
                  progress=False)
    assert own["training_data"] == trained_on and trained_on["kind"] == "synthetic" and own["notes"] == []
    assert f"was trained on synthetic collection '{pipeline_cache.name}'" in caplog.text
    assert DEMONSTRATION_NOTE not in caplog.text
    real = tmp_path / "real"  # a collection not written by the synthetic generator (the hand-made one)
    prepare(tiny_isic_dir, real, size=40, progress=False)
    result = predict(best, real, "test", tmp_path / "real.csv", fmt="isic2017-part3", device="cpu", progress=False)
    assert result["notes"] == [DEMONSTRATION_NOTE] and result["n_images"] == 1
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [DEMONSTRATION_NOTE]
