"""Evaluation of a checkpoint: files, the one evaluation path, calibration, TTA, subgroups, DeLong (evaluate.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from dermogaze.errors import DataError, DermogazeError
from dermogaze.metrics.clinical import choose_threshold, fit_temperature
from dermogaze.models import GazeOutput

pytestmark = pytest.mark.usefixtures("one_thread")  # as pipeline_tiny_run was trained: results compared at 1e-6


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _test_probs(model, cache: Path, split: str, temperature: float):
    """An independent forward pass over a split: its dataset, calibrated probabilities and margins."""
    from dermogaze.data.dataset import DermoscopyDataset

    ds = DermoscopyDataset(cache, split, image_size=32)
    with torch.no_grad():
        images = torch.stack([ds[i]["image"] for i in range(len(ds))])
        logits = model(images).logits.double()
    margins = (logits[:, 1] - logits[:, 0]).numpy()
    return ds, 1.0 / (1.0 + np.exp(-margins / temperature)), margins


def test_evaluate_checkpoint_writes_metrics_predictions_and_figures(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.evaluation.evaluate import evaluate_checkpoint
    from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint

    result = evaluate_checkpoint(pipeline_tiny_run / "best.pt", pipeline_cache, "test", tmp_path, progress=False,
                                 n_resamples=200)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["confusion_matrix.png", "metrics.json", "predictions.csv", "reliability.png", "roc.png"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["info"]["split"] == "test" and metrics["n_images"] == 8
    assert {"diagnosis", "structures", "superpixel_auc", "calibration", "decision"} <= set(metrics)

    # Independent forward pass: the same (temperature-scaled) probabilities, the AUC scikit-learn gives on them,
    # and sensitivity/specificity at the checkpoint's threshold.
    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    cal = ckpt["calibration"]
    ds, probs, _ = _test_probs(model_from_checkpoint(ckpt), pipeline_cache, "test", cal["temperature"])
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_id", "melanoma", "label"]
    assert [r["image_id"] for r in rows] == ds.ids
    np.testing.assert_allclose([float(r["melanoma"]) for r in rows], probs, atol=2e-6)
    assert [int(r["label"]) for r in rows] == ds.labels.tolist()
    assert metrics["diagnosis"]["auc"] == pytest.approx(roc_auc_score(ds.labels, probs))
    assert result["metrics"]["diagnosis"]["n"] == 8
    predicted = probs >= cal["threshold"]
    pos = ds.labels == 1
    assert metrics["diagnosis"]["threshold"] == pytest.approx(cal["threshold"])
    assert metrics["diagnosis"]["sensitivity"] == pytest.approx(predicted[pos].mean())
    assert metrics["diagnosis"]["specificity"] == pytest.approx((~predicted[~pos]).mean())
    assert metrics["decision"] == {"threshold": pytest.approx(cal["threshold"]), "rule": "sensitivity@0.89",
                                   "chosen_on": "validation"}
    lo, hi = metrics["diagnosis_ci"]["auc"]
    assert lo <= metrics["diagnosis"]["auc"] <= hi

    # docs/design.md §6b: the explanation section, its names from the checkpoint, its counts from the cache
    ex = metrics["explanation"]
    names = list(ckpt["structures"])
    present = torch.stack([ds[i]["present"] for i in range(len(ds))]).sum(0)  # images where each is present
    for key in ("pointing_matched", "pointing_masks_matched", "pointing_named", "hallucination_rate", "relevance_mass",
                "relevance_lift"):
        assert set(ex[key]) == {"overall", "per_structure", "excluded"} and list(ex[key]["per_structure"]) == names
        assert ex[key]["excluded"] == {n: 8 - ex["present_images"][n] for n in names}
    assert [ex["present_images"][n] for n in names] == present.tolist()
    assert len(ex["ablation"]["mean_abs_delta_per_step"]) == ckpt["config"]["model"]["steps"]
    assert ex["faithfulness_images"] == 8  # the default (100) covers the whole test split
    for kind in ("deletion", "insertion"):
        assert 0.0 <= ex[kind]["auc"] <= 1.0 and 0.0 <= ex[kind]["random_auc"] <= 1.0
    assert set(ex["stability"]) >= {"position", "shape", "p_spread"} and ex["seconds"]["total"] > 0


def test_faithfulness_limits_the_costly_explanation_measures(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.evaluation.evaluate import evaluate_checkpoint

    ex = evaluate_checkpoint(pipeline_tiny_run / "best.pt", pipeline_cache, "test", tmp_path, progress=False,
                             n_resamples=50, figures=False, faithfulness=0)["metrics"]["explanation"]
    assert ex["faithfulness_images"] == 0 and ex["deletion"] is None and ex["stability"] is None
    assert ex["n_images"] == 8 and ex["pointing_matched"] is not None  # the cheap measures cover every image


def test_each_checkpoint_carries_the_calibration_of_its_own_validation(pipeline_cache, pipeline_tiny_run):
    """Temperature and threshold in best.pt = fitting them afresh on an independent forward pass over validation."""
    from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(pipeline_tiny_run / "best.pt")
    cal = ckpt["calibration"]
    ds, _, margins = _test_probs(model_from_checkpoint(ckpt), pipeline_cache, "val", 1.0)
    assert cal["temperature"] == pytest.approx(fit_temperature(margins, ds.labels), rel=1e-4)
    probs = 1.0 / (1.0 + np.exp(-margins / cal["temperature"]))
    assert cal["threshold"] == pytest.approx(choose_threshold("sensitivity@0.89", ds.labels, probs), abs=1e-6)
    assert cal["threshold_rule"] == "sensitivity@0.89"
    row = _rows(pipeline_tiny_run)[ckpt["epoch"] - 1]
    assert row["temperature"] == cal["temperature"] and row["threshold"] == cal["threshold"]


def test_a_format_1_checkpoint_loads_uncalibrated(pipeline_tiny_run, tmp_path):
    from dermogaze.training.checkpoint import load_checkpoint, save_checkpoint

    old = load_checkpoint(pipeline_tiny_run / "best.pt")
    old.pop("path")
    old.pop("calibration")
    old["format_version"] = 1
    save_checkpoint(tmp_path / "v1.pt", old)
    assert load_checkpoint(tmp_path / "v1.pt")["calibration"] == {
        "temperature": 1.0, "threshold": 0.5, "threshold_rule": "0.5"
    }


def test_evaluate_refuses_a_cache_smaller_than_the_model_input(pipeline_data, pipeline_tiny_run, tmp_path):
    from dermogaze.data.prepare import prepare
    from dermogaze.evaluation.evaluate import evaluate_checkpoint

    small = tmp_path / "cache24"
    prepare(pipeline_data["isic"], small, size=24, progress=False)
    with pytest.raises(DataError, match="24 px images but the model .* takes 32 px"):
        evaluate_checkpoint(pipeline_tiny_run / "best.pt", small, "test", tmp_path / "out", progress=False)


def test_validation_map_matches_the_evaluation(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.evaluation.evaluate import evaluate_checkpoint

    last = _rows(pipeline_tiny_run)[-1]
    result = evaluate_checkpoint(pipeline_tiny_run / "last.pt", pipeline_cache, "val", tmp_path, figures=False,
                                 progress=False, n_resamples=50)
    assert last["val_map"] == pytest.approx(result["metrics"]["structures"]["map_iou_class_aware"], abs=1e-12)
    assert last["val_auc"] == pytest.approx(result["metrics"]["diagnosis"]["auc"], abs=1e-12)


def test_compare_with_itself_and_with_missing_images(pipeline_cache, pipeline_tiny_run, tmp_path):
    from dermogaze.evaluation.evaluate import evaluate_checkpoint

    first = evaluate_checkpoint(pipeline_tiny_run / "best.pt", pipeline_cache, "test", tmp_path / "a",
                                figures=False, progress=False, n_resamples=50)
    other = first["files"]["predictions"]
    same = evaluate_checkpoint(pipeline_tiny_run / "best.pt", pipeline_cache, "test", tmp_path / "b",
                               figures=False, progress=False, n_resamples=50, compare=other)["metrics"]["compare"]
    assert same["n"] == 8 and same["difference"] == pytest.approx(0.0, abs=1e-12)
    assert same["auc_a"] == same["auc_b"] == pytest.approx(first["metrics"]["diagnosis"]["auc"])
    lines = other.read_text().splitlines()
    short = tmp_path / "short.csv"
    short.write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(DataError, match=r"short\.csv lacks 2 of the 8"):
        evaluate_checkpoint(pipeline_tiny_run / "best.pt", pipeline_cache, "test", tmp_path / "c", figures=False,
                            progress=False, n_resamples=50, compare=short)


# --------------------------------------------------------------------------------------------
# Test-time augmentation
# --------------------------------------------------------------------------------------------
class _Probe(nn.Module):
    """A diagnosis-only model whose logits are fixed functions of the image (invariant or not to the views)."""

    def __init__(self, invariant: bool):
        super().__init__()
        self.invariant = invariant
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward(self, images: torch.Tensor) -> GazeOutput:
        if self.invariant:  # the mean of every channel: the same under any rotation or flip
            z = images.mean(dim=(1, 2, 3))
        else:  # the mean of the top-left quarter: changes with the view
            s = images.shape[-1] // 2
            z = images[:, :, :s, :s].mean(dim=(1, 2, 3))
        return GazeOutput(logits=torch.stack([torch.zeros_like(z), self.scale * z], dim=1))


def _loader(n: int = 12, size: int = 8):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, size, size, generator=g)
    items = [{"image": images[i], "label": torch.tensor(i % 2), "id": f"img{i}", "index": i} for i in range(n)]
    return DataLoader(items, batch_size=5)


@pytest.mark.parametrize("invariant", [True, False])
def test_tta_of_an_invariant_model_equals_no_tta(invariant):
    from dermogaze.training.loop import run_inference

    result = run_inference(_Probe(invariant), _loader(), device=torch.device("cpu"), structures=("lesion",),
                           temperature=1.5, tta=True, progress=False)
    acc = result.accumulator
    assert len(acc.tta_probs) == len(acc.probs) == 12
    if invariant:
        np.testing.assert_allclose(acc.tta_probs, acc.probs, rtol=0, atol=1e-7)
        assert max(acc.tta_spread) < 1e-6
    else:
        assert max(abs(a - b) for a, b in zip(acc.tta_probs, acc.probs, strict=True)) > 1e-3
        assert min(acc.tta_spread) > 0


def test_tta_views_are_the_eight_symmetries():
    from dermogaze.data.transforms import dihedral_views

    x = torch.arange(9.0).view(1, 1, 3, 3)
    views = dihedral_views(x)
    assert torch.equal(views[0], x) and len(views) == 8
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8  # all distinct for an asymmetric image


# --------------------------------------------------------------------------------------------
# Subgroups
# --------------------------------------------------------------------------------------------
def test_subgroups_report_auc_only_for_large_enough_groups():
    from dermogaze.evaluation.evaluate import MIN_GROUP_CLASS, _subgroups

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(12), np.zeros(14), np.ones(3), np.zeros(30), np.ones(2)].astype(int)
    groups = ["female"] * 26 + ["male"] * 33 + [None] * 2
    probs = rng.random(labels.size)
    rows = _subgroups(groups, labels, probs, 0.5, n_resamples=100, seed=0)
    assert [r["group"] for r in rows] == ["female", "male", "unknown"]
    female, male, unknown = rows
    assert (female["n"], female["n_pos"], female["n_neg"]) == (26, 12, 14)
    assert female["auc"] == pytest.approx(roc_auc_score(labels[:26], probs[:26]))
    lo, hi = female["auc_ci"]
    assert lo <= female["auc"] <= hi
    assert male["n_pos"] == 3 < MIN_GROUP_CLASS and male["auc"] is None and male["auc_ci"] is None
    assert (unknown["n"], unknown["n_pos"]) == (2, 2) and unknown["auc"] is None


def test_subgroups_of_the_synthetic_metadata(pipeline_cache, pipeline_tiny_run, tmp_path):
    """The synthetic collection ships *_metadata.csv: the groups partition the labelled test images."""
    from dermogaze.data.cache import load_split
    from dermogaze.data.metadata import group_labels
    from dermogaze.evaluation.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(pipeline_tiny_run / "best.pt", pipeline_cache, "test", tmp_path, by=["sex", "age"],
                                  figures=False, progress=False, n_resamples=50)["metrics"]
    expected = group_labels(load_split(pipeline_cache, "test").metadata, "sex")
    rows = metrics["subgroups"]["sex"]
    assert sum(r["n"] for r in rows) == metrics["diagnosis"]["n"] == 8
    for r in rows:
        name = None if r["group"] == "unknown" else r["group"]
        assert r["n"] == expected.count(name)
        assert r["auc"] is None  # 8 test images: no group reaches 10 melanomas and 10 benign images
    assert {r["group"] for r in metrics["subgroups"]["age"]} <= {"0-19", "20-39", "40-59", "60-79", "80+", "unknown"}
    with pytest.raises(DermogazeError, match="colour"):
        evaluate_checkpoint(pipeline_tiny_run / "best.pt", pipeline_cache, "test", tmp_path, by=["colour"],
                            progress=False)


def test_by_needs_metadata(tiny_isic_dir, pipeline_tiny_run, tmp_path):
    """A collection without *_metadata.csv: --by is refused before the model runs."""
    from dermogaze.data.cache import load_split
    from dermogaze.data.prepare import prepare
    from dermogaze.evaluation.evaluate import evaluate_checkpoint

    for csv_file in tiny_isic_dir.rglob("*_metadata.csv"):
        csv_file.unlink()
    cache = tmp_path / "cache"
    prepare(tiny_isic_dir, cache, size=40, progress=False)
    assert load_split(cache, "test").metadata is None
    with pytest.raises(DataError, match="no patient metadata"):
        evaluate_checkpoint(pipeline_tiny_run / "best.pt", cache, "test", tmp_path / "out", by=["sex"],
                            progress=False)
