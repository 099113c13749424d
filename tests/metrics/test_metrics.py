"""Metrics of docs/design.md §6 against hand-computed values, independent re-implementations and scikit-learn."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from dermogaze.errors import DataError
from dermogaze.evaluation.evaluate import write_predictions_csv
from dermogaze.evaluation.tables import format_table
from dermogaze.files import read_jsonl, write_json
from dermogaze.metrics.accumulator import EvaluationAccumulator
from dermogaze.metrics.diagnosis import diagnosis_metrics
from dermogaze.metrics.structures import (
    IOU_THRESHOLDS,
    confusion_matrix,
    map_iou,
    pair_with_ground_truth,
    per_structure_jaccard,
    superpixel_auc,
    superpixel_means,
)
from dermogaze.models.output import GazeOutput

LESION, SKIN, PIG, NEG, MIL, STR = range(6)


def crafted_gt(with_pigment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """10×10 image: lesion = columns 0-3 (40 px), pigment network = columns 4-5 (20 px), skin = 6-9 (40 px).

    Without pigment network, columns 4-5 belong to the skin (60 px).
    """
    gt = np.zeros((6, 10, 10), dtype=bool)
    gt[LESION, :, 0:4] = True
    if with_pigment:
        gt[PIG, :, 4:6] = True
        gt[SKIN, :, 6:10] = True
    else:
        gt[SKIN, :, 4:10] = True
    return gt, gt.reshape(6, -1).any(axis=1)


def soft(mask: np.ndarray, inside: float = 0.9, outside: float = 0.1) -> np.ndarray:
    """A confident probability map whose binarisation at 0.5 is ``mask``."""
    return np.where(mask, inside, outside)


def partial(mask: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` pixels (row-major) of ``mask``: IoU with ``mask`` = n / |mask|."""
    flat = mask.reshape(-1)
    keep = np.zeros_like(flat)
    keep[np.flatnonzero(flat)[:n]] = True
    return keep.reshape(mask.shape)


EMPTY = np.full((10, 10), 0.1)  # binarises to no pixel: IoU 0 with everything


# ----------------------------------------------------------------------------------------------
# mAP at IoU thresholds
# ----------------------------------------------------------------------------------------------


def test_thresholds_are_the_data_science_bowl_ones():
    np.testing.assert_array_equal(IOU_THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])


def test_map_perfect_prediction_scores_one():
    gt, present = crafted_gt()
    pred = np.stack([soft(gt[LESION]), soft(gt[SKIN]), soft(gt[PIG])])
    # every present row matched exactly once at every τ: TP = 3, FP = FN = 0 → 1.0
    assert map_iou(gt, present, pred, np.array([LESION, SKIN, PIG])) == pytest.approx(1.0)
    assert map_iou(gt, present, pred) == pytest.approx(1.0)


def test_map_imperfect_mask_counts_only_below_its_iou():
    gt, present = crafted_gt(with_pigment=False)
    # lesion prediction covers 29 of the 40 lesion pixels: IoU 0.725.
    pred = np.stack([soft(partial(gt[LESION], 29)), soft(gt[SKIN])])
    # τ ∈ {.50,.55,.60,.65,.70}: TP = 2 → 1.   τ ∈ {.75,...,.95}: lesion row unmatched (FN = 1), its
    # column unmatched (FP = 1), TP = 1 → 1/3.   mean = (5 * 1 + 5 * 1/3) / 10 = 2/3
    assert map_iou(gt, present, pred, np.array([LESION, SKIN])) == pytest.approx(2 / 3)


def test_map_duplicate_prediction():
    gt, present = crafted_gt(with_pigment=False)
    exact, dup = soft(gt[LESION]), soft(partial(gt[LESION], 29))  # duplicate with IoU 29/40 = 0.725
    pred = np.stack([exact, dup, soft(gt[SKIN])])
    classes = np.array([LESION, LESION, SKIN])
    # τ ≤ .70: the lesion row has two matches (neither TP nor FN), the skin row one: TP = 1,
    #          every column matches: FP = 0, FN = 0 → 1/1 = 1.
    # τ ≥ .75: the duplicate no longer matches: TP = 2, FP = 1 (its column), FN = 0 → 2/3.
    # mean = (5 * 1 + 5 * 2/3) / 10 = 5/6
    assert map_iou(gt, present, pred, classes) == pytest.approx(5 / 6)
    assert map_iou(gt, present, pred) == pytest.approx(5 / 6)
    # Two exact copies of the lesion and no skin prediction: lesion row matched twice, skin row
    # unmatched: TP = 0 → precision 0 at every τ (FN = 1, FP = 0).
    assert map_iou(gt, present, np.stack([exact, exact]), np.array([LESION, LESION])) == 0.0


def test_map_missed_structure():
    gt, present = crafted_gt()
    # lesion and skin exact, pigment network never predicted; the third step is empty.
    pred = np.stack([soft(gt[LESION]), soft(gt[SKIN]), EMPTY])
    # TP = 2 (lesion, skin), FN = 1 (pigment network), FP = 1 (the empty step) → 2/4 at every τ
    assert map_iou(gt, present, pred, np.array([LESION, SKIN, PIG])) == pytest.approx(0.5)
    # with two steps only: TP = 2, FN = 1, FP = 0 → 2/3
    assert map_iou(gt, present, pred[:2], np.array([LESION, SKIN])) == pytest.approx(2 / 3)


def test_map_wrong_class_but_good_mask_class_aware_vs_agnostic():
    gt, present = crafted_gt(with_pigment=False)
    pred = np.stack([soft(gt[LESION]), soft(gt[SKIN])])
    # classes swapped: class-aware, no prediction may match → TP = 0 → 0; class-agnostic: perfect → 1
    assert map_iou(gt, present, pred, np.array([SKIN, LESION])) == 0.0
    assert map_iou(gt, present, pred, None) == pytest.approx(1.0)
    # only the lesion mask misclassified (as skin): class-aware, lesion row FN, lesion column FP,
    # skin row TP → 1/3; class-agnostic still 1
    assert map_iou(gt, present, pred, np.array([SKIN, SKIN])) == pytest.approx(1 / 3)
    assert map_iou(gt, present, pred) == pytest.approx(1.0)


def test_map_no_present_structure_scores_zero():
    gt = np.zeros((6, 10, 10), dtype=bool)
    assert map_iou(gt, np.zeros(6, bool), np.stack([EMPTY, EMPTY])) == 0.0


# ----------------------------------------------------------------------------------------------
# Pairing, confusion matrix, Jaccard
# ----------------------------------------------------------------------------------------------


def test_pairing_highest_soft_iou_gt_may_repeat_and_confusion_matrix():
    gt, present = crafted_gt()  # lesion cols 0-3 (40 px), pigment 4-5 (20 px), skin 6-9 (40 px)
    gt[NEG, :, 0:2] = True  # a mask for an ABSENT structure: must be ignored
    z = np.zeros((10, 10))
    p0 = z.copy()
    p0[:, 0:4] = 0.8  # lesion: ΣP·G = 32, ΣP = 32 → 32 / (32 + 40 - 32) = 0.8; others 0
    p1 = z.copy()
    p1[:, 0:6] = 0.6  # ΣP = 36; lesion 24 / (36 + 40 - 24) = 0.462 > pigment 12 / (36 + 20 - 12) = 0.273
    p2 = z.copy()
    p2[:, 4:7] = 1.0  # ΣP = 30; pigment 20 / (30 + 20 - 20) = 0.667 > skin 10 / (30 + 40 - 10) = 0.167
    p3 = z.copy()
    p3[:, 4:10] = 0.5  # ΣP = 30; pigment 10 / (30 + 20 - 10) = 0.25 < skin 20 / (30 + 40 - 20) = 0.4
    p4 = z.copy()
    p4[:, 0:2] = 1.0  # equals the absent negative-network mask; lesion 20 / (20 + 40 - 20) = 0.5
    pred = np.stack([p0, p1, p2, p3, p4])
    paired = pair_with_ground_truth(gt, present, pred)
    np.testing.assert_array_equal(paired, [LESION, LESION, PIG, SKIN, LESION])

    predicted = np.array([LESION, PIG, PIG, SKIN, STR])
    counts, norm = confusion_matrix(paired, predicted)
    expected = np.zeros((6, 6), dtype=int)
    expected[LESION, [LESION, PIG, STR]] = 1
    expected[PIG, PIG] = 1
    expected[SKIN, SKIN] = 1
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_allclose(norm[LESION], [1 / 3, 0, 1 / 3, 0, 0, 1 / 3])
    np.testing.assert_allclose(norm[SKIN], [0, 1, 0, 0, 0, 0])
    assert np.isnan(norm[[NEG, MIL, STR]]).all()  # rows of GT classes that never occurred
    # a GT of -1 (image without structures) is ignored
    counts2, _ = confusion_matrix(np.array([-1, 0]), np.array([3, 0]))
    assert counts2.sum() == 1 and counts2[0, 0] == 1


def test_pairing_without_present_structure():
    gt = np.zeros((6, 4, 4), dtype=bool)
    np.testing.assert_array_equal(pair_with_ground_truth(gt, np.zeros(6, bool), np.zeros((3, 4, 4))), [-1, -1, -1])


def test_per_structure_jaccard_union_of_claiming_steps():
    gt, present = crafted_gt()
    a = np.zeros((10, 10), bool)
    a[:, 0:3] = True  # 30 lesion pixels
    b = np.zeros((10, 10), bool)
    b[:, 3:5] = True  # 10 lesion + 10 pigment pixels
    pred = np.stack([soft(a), soft(b), soft(gt[SKIN])])
    jac = per_structure_jaccard(gt, present, pred, np.array([LESION, LESION, SKIN]))
    # lesion: union of steps 0 and 1 = columns 0-4 (50 px) ⊇ lesion (40 px) → 40/50 = 0.8
    # skin: exact → 1. pigment network: claimed by no step → empty union → 0. others absent → NaN
    np.testing.assert_allclose(jac[[LESION, SKIN, PIG]], [0.8, 1.0, 0.0])
    assert np.isnan(jac[[NEG, MIL, STR]]).all()


# ----------------------------------------------------------------------------------------------
# Diagnosis
# ----------------------------------------------------------------------------------------------


def test_diagnosis_metrics_hand_computed_and_sklearn():
    labels = np.array([0, 0, 1, 1, 1, 0])
    probs = np.array([0.1, 0.6, 0.4, 0.8, 0.5, 0.3])
    m = diagnosis_metrics(labels, probs)
    # pairs (pos > neg): 0.4 beats 0.1, 0.3; 0.8 beats all three; 0.5 beats 0.1, 0.3 → 7 of 9
    assert m["auc"] == pytest.approx(7 / 9)
    # ranking 0.8+ 0.6- 0.5+ 0.4+ 0.3- 0.1-: precision at each positive 1, 2/3, 3/4 → AP = 29/36
    assert m["ap"] == pytest.approx(29 / 36)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["ap"] == pytest.approx(average_precision_score(labels, probs))
    # prob >= 0.5 is melanoma: positives 0.8 and 0.5 caught (2/3), negatives 0.1 and 0.3 right (2/3)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert (m["n"], m["n_pos"]) == (6, 3)


def test_diagnosis_metrics_single_class_gives_nan_not_crash():
    m = diagnosis_metrics(np.array([0, 0, 0]), np.array([0.2, 0.7, 0.1]))
    assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and math.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(2 / 3)
    empty = diagnosis_metrics(np.array([], int), np.array([]))
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])


# ----------------------------------------------------------------------------------------------
# ISIC 2017 Task 2 superpixel AUC
# ----------------------------------------------------------------------------------------------


def _task2_reference(masks, struct_probs, sp_map, labels):
    """Direct loops: per-pixel max_t M_t·p_t[s], mean per superpixel, skipping superpixels not in the map."""
    t_steps, h, w = masks.shape
    scores, ys = [], []
    for k in range(labels.shape[0]):
        inside = sp_map == k
        if not inside.any():
            continue
        row = []
        for f in range(4):
            s = 2 + f
            pix = np.zeros((h, w))
            for y in range(h):
                for x in range(w):
                    pix[y, x] = max(masks[t, y, x] * struct_probs[t, s] for t in range(t_steps))
            row.append(pix[inside].mean())
        scores.append(row)
        ys.append(labels[k])
    return np.array(scores), np.array(ys)


def test_task2_superpixel_auc_against_sklearn_on_independent_means():
    rng = np.random.default_rng(0)
    h = w = 6
    sp_a = np.repeat(np.arange(4), 9).reshape(h, w)  # superpixels 0..3, 9 px each; label list has 5
    sp_b = (np.arange(h * w).reshape(h, w) // 6) % 3  # superpixels 0..2 by rows
    maps = [sp_a, sp_b]
    labels = [
        np.array([[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0]], float),  # #4 cropped away
        np.array([[0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0.4, 0]], float),  # 0.4 < 0.5 is negative
    ]
    masks = [rng.random((3, h, w)), rng.random((3, h, w))]
    logits = [rng.normal(size=(3, 6)), rng.normal(size=(3, 6))]
    probs = [np.exp(z) / np.exp(z).sum(1, keepdims=True) for z in logits]

    ref_scores, ref_labels = zip(
        *(_task2_reference(m, p, s, y) for m, p, s, y in zip(masks, probs, maps, labels, strict=True)), strict=True
    )
    ref_s, ref_y = np.concatenate(ref_scores), np.concatenate(ref_labels) >= 0.5
    assert ref_s.shape == (7, 4)  # 4 + 3 visible superpixels
    expected = [roc_auc_score(ref_y[:, f], ref_s[:, f]) if 0 < ref_y[:, f].sum() < 7 else np.nan for f in range(4)]
    assert not np.isnan(expected[:3]).any() and np.isnan(expected[3])  # streaks: never positive

    acc = EvaluationAccumulator()
    out = GazeOutput(
        logits=torch.zeros(2, 2),
        masks=torch.from_numpy(np.stack(masks)).float(),
        structure_logits=torch.from_numpy(np.stack(logits)).float(),
    )
    batch = {
        "label": torch.tensor([0, 1]),
        "id": ["a", "b"],
        "masks": torch.ones(2, 6, h, w),
        "present": torch.ones(2, 6, dtype=torch.bool),
        "superpixels": torch.from_numpy(np.stack(maps)),
    }
    acc.update(out, batch, sp_features=labels)
    sp = acc.compute()["superpixel_auc"]
    got = [sp[name] for name in ("pigment_network", "negative_network", "milia_like_cyst", "streaks")]
    np.testing.assert_allclose(got[:3], expected[:3], rtol=1e-5)
    assert math.isnan(got[3])
    assert sp["n_superpixels"] == 7 and sp["n_images"] == 2
    assert sp["mean"] == pytest.approx(np.mean(expected[:3]), rel=1e-5)


def test_superpixel_means_and_bad_index():
    scores = np.arange(4, dtype=float).reshape(1, 2, 2)  # [[0, 1], [2, 3]]
    means, visible = superpixel_means(scores, np.array([[0, 0], [2, 2]]), 3)
    np.testing.assert_allclose(means[:, 0], [0.5, 0.0, 2.5])
    np.testing.assert_array_equal(visible, [True, False, True])
    with pytest.raises(DataError, match="superpixel index 3"):
        superpixel_means(scores, np.array([[0, 3], [1, 1]]), 3)
    assert np.isnan(superpixel_auc([np.zeros((2, 1))], [np.ones((2, 1))])[0])


# ----------------------------------------------------------------------------------------------
# Accumulator, files, table
# ----------------------------------------------------------------------------------------------


def _logits_for(p_melanoma):
    p = torch.tensor(p_melanoma, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).float()  # softmax[:, 1] = p


def test_accumulator_matches_per_image_functions(tmp_path):
    gt1, present1 = crafted_gt()
    gt2, present2 = crafted_gt(with_pigment=False)
    pred1 = np.stack([soft(gt1[LESION]), soft(gt1[SKIN]), EMPTY])
    pred2 = np.stack([soft(gt2[LESION]), soft(gt2[SKIN]), soft(gt2[LESION])])
    cls1, cls2 = np.array([LESION, SKIN, PIG]), np.array([SKIN, SKIN, LESION])
    struct_logits = np.full((2, 3, 6), -5.0)
    for b, cls in enumerate((cls1, cls2)):
        struct_logits[b, np.arange(3), cls] = 5.0
    out = GazeOutput(
        logits=_logits_for([0.3, 0.8]),
        masks=torch.from_numpy(np.stack([pred1, pred2])).float(),
        structure_logits=torch.from_numpy(struct_logits).float(),
    )
    batch = {
        "label": torch.tensor([0, 1]),
        "id": ["ISIC_1", "ISIC_2"],
        "masks": torch.from_numpy(np.stack([gt1, gt2])).float(),
        "present": torch.from_numpy(np.stack([present1, present2])),
    }
    acc = EvaluationAccumulator()
    acc.update(out, batch)
    m = acc.compute()
    s = m["structures"]
    aware = [map_iou(gt1, present1, pred1, cls1), map_iou(gt2, present2, pred2, cls2)]
    agnostic = [map_iou(gt1, present1, pred1), map_iou(gt2, present2, pred2)]
    assert s["map_iou_class_aware"] == pytest.approx(np.mean(aware))
    assert s["map_iou_class_agnostic"] == pytest.approx(np.mean(agnostic))
    # pairings: image 1 → lesion, skin, lesion (its empty 0.1 map ties lesion and skin at 4/46: the
    # lowest index wins); image 2 → lesion, skin, lesion
    pairs = np.concatenate([pair_with_ground_truth(gt1, present1, pred1), pair_with_ground_truth(gt2, present2, pred2)])
    counts, _ = confusion_matrix(pairs, np.concatenate([cls1, cls2]))
    assert s["confusion_counts"] == counts.tolist()
    assert s["accuracy"] == pytest.approx(np.trace(counts) / 6)
    # Jaccard: image 1 lesion 1, skin 1, pigment 0 (its step is empty); image 2 lesion 1 (step 2),
    # skin: union of steps 0 and 1 = columns 0-9 (100 px) vs 60 → 0.6
    assert s["jaccard"]["lesion"] == pytest.approx(1.0)
    assert s["jaccard"]["skin"] == pytest.approx((1.0 + 0.6) / 2)
    assert s["jaccard"]["pigment_network"] == pytest.approx(0.0)
    assert math.isnan(s["jaccard"]["streaks"]) and s["jaccard_n"]["lesion"] == 2 and s["jaccard_n"]["streaks"] == 0
    assert s["jaccard_lesion_skin"] == pytest.approx((1.0 + 0.8) / 2)
    # the best single step, whatever it names: image 2's step 1 is its skin exactly (named Jaccard 0.6, as step 0
    # names skin too); no step of image 1 overlaps its pigment network
    best = s["jaccard_best_step"]
    assert best["lesion"] == pytest.approx(1.0) and best["skin"] == pytest.approx(1.0)
    assert best["pigment_network"] == pytest.approx(0.0) and math.isnan(best["streaks"])
    assert acc.predictions["ids"] == ["ISIC_1", "ISIC_2"]
    np.testing.assert_allclose(acc.predictions["probs"], [0.3, 0.8], rtol=1e-5)
    assert m["diagnosis"]["n"] == 2 and m["diagnosis"]["auc"] == 1.0

    path = write_json(m, tmp_path / "metrics.json")
    reloaded = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert reloaded["structures"]["jaccard"]["streaks"] is None
    assert "NaN" not in path.read_text()
    table = format_table(reloaded)
    assert "AUC 1.0000" in table and "mAP@IoU" in table and "n/a" in table

    csv_path = write_predictions_csv(acc.predictions, tmp_path / "predictions.csv")
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["image_id", "melanoma", "label"]
    assert rows[1][0] == "ISIC_1" and float(rows[1][1]) == pytest.approx(0.3, abs=1e-6) and rows[2][2] == "1"


def test_accumulator_without_decoder_gives_diagnosis_only():
    acc = EvaluationAccumulator()
    acc.update(GazeOutput(logits=_logits_for([0.2, 0.9, 0.6])), {"label": torch.tensor([0, 1, 0])})
    acc.update(GazeOutput(logits=_logits_for([0.4])), {"label": torch.tensor([1])})
    m = acc.compute()
    assert set(m) == {"n_images", "diagnosis"}
    labels, probs = [0, 1, 0, 1], [0.2, 0.9, 0.6, 0.4]
    assert m["diagnosis"]["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert acc.predictions["ids"] == ["0", "1", "2", "3"]
    assert "Structures" not in format_table(m)


# ----------------------------------------------------------------------------------------------
# Evaluation figures (plots.py): written, readable, robust to undefined values
# ----------------------------------------------------------------------------------------------


def _png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_evaluation_figures_are_written(tmp_path):
    from dermogaze.evaluation import plots

    _, norm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 5]))
    reloaded = json.loads(json.dumps(norm.tolist()).replace("NaN", "null"))  # what metrics.json holds
    path = plots.plot_confusion_matrix(reloaded, tmp_path / "cm.png", counts=np.ones((6, 6), int), accuracy=0.5)
    assert _png_size(path)[0] > 400
    labels, probs = np.array([0, 1, 1, 0, 1]), np.array([0.2, 0.9, 0.4, 0.6, 0.7])
    assert _png_size(plots.plot_roc(labels, probs, tmp_path / "roc.png", title="test"))[0] > 400
    assert _png_size(plots.plot_roc([1, 1], [0.3, 0.8], tmp_path / "roc1.png"))[0] > 400  # one class: no crash
    rows = [
        {"epoch": 1, "train_loss": 1.0, "train_diag": 0.5, "val_loss": 1.2, "val_diag": 0.6, "val_auc": None,
         "best": True, "time_s": 2.0},
        {"epoch": 2, "train_loss": 0.8, "train_diag": 0.4, "val_loss": 1.0, "val_diag": 0.5, "val_auc": 0.7,
         "best": True, "time_s": 2.0},
    ]
    history = tmp_path / "metrics.jsonl"
    history.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_jsonl(history) == rows
    assert _png_size(plots.plot_training_curves(history, tmp_path / "curves.png"))[0] > 400
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary file
