"""Clinical statistics against hand-computed values and independent re-implementations.

Two hand-made score lists are used throughout (P melanomas, N benign lesions; ROC vertices listed as
(FP, TP) counts from the threshold +inf down to the smallest score):

* ``UNTIED``: melanoma 0.9 0.8 0.6 0.4, benign 0.7 0.5 0.3 0.2 0.1 (P = 4, N = 5). In decreasing
  order + + - + - + - - -, so the vertices are
  (0,0) (0,1)@.9 (0,2)@.8 (1,2)@.7 (1,3)@.6 (2,3)@.5 (2,4)@.4 (3,4)@.3 (4,4)@.2 (5,4)@.1.
* ``TIED``: melanoma 0.9 0.7 0.7 0.3, benign 0.8 0.7 0.5 0.3 0.3 0.1 (P = 4, N = 6). Distinct
  scores .9 (1 mel), .8 (1 ben), .7 (2 mel + 1 ben), .5 (1 ben), .3 (1 mel + 2 ben), .1 (1 ben):
  (0,0) (0,1)@.9 (1,1)@.8 (2,3)@.7 (3,3)@.5 (5,4)@.3 (6,4)@.1, with diagonal segments
  (1,1)→(2,3) and (3,3)→(5,4).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from PIL import Image
from scipy.special import expit
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from dermogaze.errors import DermogazeError
from dermogaze.evaluation.plots import plot_reliability
from dermogaze.evaluation.tables import format_interval
from dermogaze.metrics import clinical
from dermogaze.metrics.clinical import (
    DEFAULT_THRESHOLD_RULE,
    OPERATING_SENSITIVITIES,
    OPERATING_SPECIFICITIES,
    bootstrap_intervals,
    calibration,
    choose_threshold,
    delong_test,
    fit_temperature,
    operating_points,
    sensitivity_at_specificity,
    specificity_at_sensitivity,
)


def _cases(melanoma: list[float], benign: list[float]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([1] * len(melanoma) + [0] * len(benign))
    return labels, np.array(melanoma + benign, dtype=np.float64)


UNTIED = _cases([0.9, 0.8, 0.6, 0.4], [0.7, 0.5, 0.3, 0.2, 0.1])
TIED = _cases([0.9, 0.7, 0.7, 0.3], [0.8, 0.7, 0.5, 0.3, 0.3, 0.1])


def _synthetic(n: int, n_pos: int, seed: int, *, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` cases, ``n_pos`` melanomas; melanoma scores drawn higher; optionally rounded (ties)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[rng.choice(n, n_pos, replace=False)] = 1
    scores = expit(rng.normal(-1.0 + 1.8 * labels, 1.0))
    return labels, (np.round(scores, decimals) if decimals is not None else scores)


def _sens_spec(labels: np.ndarray, scores: np.ndarray, t: float) -> tuple[float, float]:
    pred = scores >= t
    return float(pred[labels == 1].mean()), float((~pred)[labels == 0].mean())


# ----------------------------------------------------------------------------------------------
# Operating points
# ----------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert OPERATING_SENSITIVITIES == (0.82, 0.89, 0.95)
    assert OPERATING_SPECIFICITIES == (0.80, 0.90, 0.95)
    assert DEFAULT_THRESHOLD_RULE == "sensitivity@0.89"


@pytest.mark.parametrize(
    ("sensitivity", "expected"),
    [
        (0.5, 1.0),  # TP = 2 first at vertex (0,2): FP 0
        (0.75, 0.8),  # TP = 3 first at (1,3): 1 - 1/5
        (0.82, 0.6),  # TP = 3.28 on the vertical segment (2,3)→(2,4): 1 - 2/5
        (0.89, 0.6),
        (0.95, 0.6),
        (1.0, 0.6),  # TP = 4 first at (2,4)
    ],
)
def test_specificity_at_sensitivity_untied(sensitivity: float, expected: float) -> None:
    assert specificity_at_sensitivity(*UNTIED, sensitivity) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("specificity", "expected"),
    [
        (0.8, 0.75),  # FP = (1 - 0.8)·5 = 0.9999999999999998 → 1: highest vertex at FP 1 is (1,3)
        (0.9, 0.5),  # FP = 0.5 on the horizontal segment (0,2)→(1,2): TP 2
        (0.95, 0.5),
        (0.6, 1.0),  # FP = 2: (2,4)
        (1.0, 0.5),  # FP = 0: highest vertex at FP 0 is (0,2)
    ],
)
def test_sensitivity_at_specificity_untied(specificity: float, expected: float) -> None:
    assert sensitivity_at_specificity(*UNTIED, specificity) == pytest.approx(expected, abs=1e-12)


def test_operating_points_on_tied_scores() -> None:
    ops = operating_points(*TIED)
    assert set(ops) == {"specificity_at_sensitivity", "sensitivity_at_specificity"}
    assert list(ops["specificity_at_sensitivity"]) == ["0.82", "0.89", "0.95"]
    assert list(ops["sensitivity_at_specificity"]) == ["0.80", "0.90", "0.95"]
    spec = ops["specificity_at_sensitivity"]
    # TP = 0.82·4 = 3.28 on the diagonal (3,3)→(5,4): FP = 3 + 0.28·2 = 3.56, specificity 1 - 3.56/6
    assert spec["0.82"] == pytest.approx(1 - 3.56 / 6)
    assert spec["0.89"] == pytest.approx(1 - 4.12 / 6)  # TP = 3.56: FP = 3 + 0.56·2
    assert spec["0.95"] == pytest.approx(1 - 4.60 / 6)  # TP = 3.80: FP = 3 + 0.80·2
    sens = ops["sensitivity_at_specificity"]
    # FP = 0.2·6 = 1.2 on the diagonal (1,1)→(2,3): TP = 1 + 0.2·2 = 1.4
    assert sens["0.80"] == pytest.approx(1.4 / 4)
    assert sens["0.90"] == pytest.approx(1 / 4)  # FP = 0.6 on the horizontal (0,1)→(1,1)
    assert sens["0.95"] == pytest.approx(1 / 4)  # FP = 0.3, same segment
    # TP = 2 on the diagonal (1,1)→(2,3): FP = 1.5; the ISIC 2017 scorer takes the vertex (2,3): 1 - 2/6
    assert specificity_at_sensitivity(*TIED, 0.5) == pytest.approx(1 - 1.5 / 6)
    # FP = 3 exactly (2/3 specificity, 2.0000000000000004 before rounding): vertex (3,3)
    assert sensitivity_at_specificity(*TIED, 2 / 3) == pytest.approx(0.75)


def _isic_2017_specificity(labels: np.ndarray, scores: np.ndarray, sensitivity: float) -> float:
    """The ISIC 2017 scorer's rule: 1 - FPR at the first ``roc_curve`` vertex with TPR >= s."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(1.0 - fpr[np.argmax(tpr >= sensitivity)])


@pytest.mark.parametrize("seed", range(5))
def test_specificity_at_sensitivity_matches_isic_scorer_without_ties(seed: int) -> None:
    labels, scores = _synthetic(150, 31, seed)  # continuous scores: no ties
    for s in OPERATING_SENSITIVITIES:
        assert specificity_at_sensitivity(labels, scores, s) == pytest.approx(
            _isic_2017_specificity(labels, scores, s), abs=1e-12
        )


def test_operating_points_nan_with_one_class() -> None:
    ops = operating_points([1, 1, 1], [0.2, 0.5, 0.9])
    assert all(math.isnan(v) for group in ops.values() for v in group.values())
    assert math.isnan(specificity_at_sensitivity([0, 0], [0.1, 0.2], 0.9))


def test_operating_point_target_out_of_range() -> None:
    with pytest.raises(ValueError, match="sensitivity"):
        specificity_at_sensitivity(*UNTIED, 0.0)
    with pytest.raises(ValueError, match="specificity"):
        sensitivity_at_specificity(*UNTIED, 1.5)


# ----------------------------------------------------------------------------------------------
# Threshold rules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("sensitivity@0.5", 0.8),  # k = 2: the 2nd largest melanoma score
        ("sensitivity@0.75", 0.6),  # k = 3
        ("sensitivity@0.89", 0.4),  # k = ⌈3.56⌉ = 4
        ("sensitivity@1", 0.4),
        ("specificity@0.8", 0.6),  # k = 4: 4th smallest benign 0.5, smallest score above it 0.6
        ("specificity@0.9", 0.8),  # k = ⌈4.5⌉ = 5: benign 0.7, next score 0.8
        ("specificity@1.0", 0.8),
        # J = TPR - FPR at .9 .8 .7 .6 .5 .4 .3 .2 .1: .25 .5 .3 .55 .35 .6 .4 .2 0 → 0.4
        ("youden", 0.4),
        ("0.5", 0.5),
        (" 0.25 ", 0.25),
        ("0", 0.0),
        ("1", 1.0),
    ],
)
def test_choose_threshold_untied(rule: str, expected: float) -> None:
    labels, scores = UNTIED
    t = choose_threshold(rule, labels, scores)
    assert t == pytest.approx(expected, abs=1e-12)
    if "@" in rule:  # the rule's level is reached at t and not at the next larger score
        kind, level = rule.split("@")
        sens, spec = _sens_spec(labels, scores, t)
        above = scores[scores > t]
        if kind == "sensitivity":
            assert sens >= float(level) - 1e-12
            assert above.size == 0 or _sens_spec(labels, scores, above.min())[0] < float(level)
        else:
            assert spec >= float(level) - 1e-12
            below = scores[scores < t]
            assert below.size == 0 or _sens_spec(labels, scores, below.max())[1] < float(level)


def test_choose_threshold_ties() -> None:
    labels, scores = TIED
    # k = 2: the melanoma scores in decreasing order are .9 .7 .7 .3 → 0.7 (sensitivity 3/4 there)
    assert choose_threshold("sensitivity@0.5", labels, scores) == pytest.approx(0.7)
    # k = ⌈0.5·6⌉ = 3: benign in increasing order .1 .3 .3 .5 .7 .8 → 0.3; smallest score above 0.3 is 0.5
    assert choose_threshold("specificity@0.5", labels, scores) == pytest.approx(0.5)
    # Youden tie: J = .5 at 0.9 (1/2, 0) and at 0.6 (2/2, 1/2): the larger threshold
    assert choose_threshold("youden", [1, 0, 1, 0], [0.9, 0.8, 0.6, 0.1]) == pytest.approx(0.9)


def test_choose_threshold_specificity_above_every_score() -> None:
    labels, scores = [1, 1, 0, 0], [0.2, 0.3, 0.4, 0.5]
    t = choose_threshold("specificity@1.0", labels, scores)  # k = 2: benign 0.5 is the largest score
    assert t > 0.5 and t == pytest.approx(0.5)
    assert _sens_spec(np.array(labels), np.array(scores), t) == (0.0, 1.0)


@pytest.mark.parametrize(
    "rule",
    ["banana", "sensitivity@1.5", "sensitivity@0", "specificity@-0.1", "sens@0.9", "sensitivity@abc",
     "youden@0.5", "1.5", "-0.1", "nan", ""],
)
def test_choose_threshold_bad_rule(rule: str) -> None:
    with pytest.raises(DermogazeError, match="threshold rule"):
        choose_threshold(rule, *UNTIED)


@pytest.mark.parametrize(
    ("rule", "labels", "needs"),
    [
        ("sensitivity@0.89", [0, 0, 0], "melanoma"),
        ("specificity@0.9", [1, 1, 1], "benign"),
        ("youden", [0, 0, 0], "melanoma"),
        ("youden", [1, 1, 1], "benign"),
    ],
)
def test_choose_threshold_missing_class(rule: str, labels: list[int], needs: str) -> None:
    with pytest.raises(DermogazeError, match=needs) as info:
        choose_threshold(rule, labels, [0.1, 0.5, 0.9])
    assert repr(rule) in str(info.value)


def test_choose_threshold_number_needs_no_labels() -> None:
    assert choose_threshold("0.3", [], []) == 0.3


# ----------------------------------------------------------------------------------------------
# Bootstrap intervals
# ----------------------------------------------------------------------------------------------

KEYS = [
    "auc", "ap", "sensitivity", "specificity",
    "specificity_at_sensitivity_0.82", "specificity_at_sensitivity_0.89", "specificity_at_sensitivity_0.95",
    "sensitivity_at_specificity_0.80", "sensitivity_at_specificity_0.90", "sensitivity_at_specificity_0.95",
]


def _point_estimates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    sens, spec = _sens_spec(labels, scores, threshold)
    ops = operating_points(labels, scores)
    out = {"auc": roc_auc_score(labels, scores), "ap": average_precision_score(labels, scores),
           "sensitivity": sens, "specificity": spec}
    out.update({f"specificity_at_sensitivity_{k}": v for k, v in ops["specificity_at_sensitivity"].items()})
    out.update({f"sensitivity_at_specificity_{k}": v for k, v in ops["sensitivity_at_specificity"].items()})
    return out


@pytest.mark.parametrize("seed", range(4))
def test_batched_statistics_equal_point_estimates(seed: int) -> None:
    """The vectorised bootstrap statistic gives the plain functions' values, ties included."""
    labels, scores = _synthetic(90, 23, seed, decimals=1 if seed % 2 else 2)
    expected = _point_estimates(labels, scores, 0.4)
    rows = clinical._resample_statistics(scores[None, labels == 1], scores[None, labels == 0], 0.4)[:, 0]
    assert dict(zip(KEYS, rows, strict=True)) == pytest.approx(expected, abs=1e-12)
    # several resamples at once: each row equals the statistic of that resample alone
    rng = np.random.default_rng(seed)
    pos = rng.choice(scores[labels == 1], size=(3, 23))
    neg = rng.choice(scores[labels == 0], size=(3, 67))
    batch = clinical._resample_statistics(pos, neg, 0.4)
    for b in range(3):
        alone = _point_estimates(*_cases(pos[b].tolist(), neg[b].tolist()), 0.4)
        assert dict(zip(KEYS, batch[:, b], strict=True)) == pytest.approx(alone, abs=1e-12)


def test_bootstrap_contains_estimate_and_is_seeded() -> None:
    labels, scores = _synthetic(600, 117, 0)
    ci = bootstrap_intervals(labels, scores, 0.5, n_resamples=1000, seed=3)
    assert list(ci) == KEYS
    for key, value in _point_estimates(labels, scores, 0.5).items():
        lo, hi = ci[key]
        assert 0.0 <= lo <= value <= hi <= 1.0, key
        assert hi - lo > 0, key
    assert bootstrap_intervals(labels, scores, 0.5, n_resamples=1000, seed=3) == ci
    assert bootstrap_intervals(labels, scores, 0.5, n_resamples=1000, seed=4) != ci


def test_bootstrap_intervals_shrink_with_more_cases() -> None:
    small = bootstrap_intervals(*_synthetic(100, 20, 1), 0.5, n_resamples=1000)
    large = bootstrap_intervals(*_synthetic(1000, 200, 2), 0.5, n_resamples=1000)
    for key in KEYS:  # widths scale like 1/sqrt(n): about a third at ten times the cases
        assert large[key][1] - large[key][0] < 0.75 * (small[key][1] - small[key][0]), key


def test_bootstrap_keeps_class_counts() -> None:
    """With every score tied, AP = precision at the one threshold = P_b / (P_b + N_b) in resample b.

    Stratified resampling keeps P_b = P and N_b = N, so the interval is the single value P / (P + N);
    resampling the cases together would vary the class counts and widen it.
    """
    labels = np.array([1] * 7 + [0] * 23)
    ci = bootstrap_intervals(labels, np.full(30, 0.4), 0.5, n_resamples=300)
    assert ci["ap"] == pytest.approx((7 / 30, 7 / 30), abs=1e-12)
    assert ci["auc"] == pytest.approx((0.5, 0.5))
    assert ci["specificity"] == (1.0, 1.0)  # 0.4 < 0.5: every benign lesion is predicted benign


def test_bootstrap_nan_with_one_class() -> None:
    ci = bootstrap_intervals([1, 1, 1, 1], [0.2, 0.3, 0.8, 0.9], 0.5, n_resamples=50)
    assert list(ci) == KEYS
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in ci.values())


@pytest.mark.parametrize("labels", [[1, 0, 0, 0, 0], [0, 1, 1, 1, 1]])
def test_bootstrap_nan_with_one_case_of_a_class(labels: list[int]) -> None:
    # one melanoma (a subgroup of a small test set): every resample repeats it; NaN, not SciPy's error
    ci = bootstrap_intervals(labels, [0.9, 0.1, 0.2, 0.3, 0.4], 0.5, n_resamples=50)
    assert list(ci) == KEYS
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in ci.values())
    two = bootstrap_intervals([1, 1, 0, 0, 0], [0.9, 0.35, 0.1, 0.2, 0.3], 0.5, n_resamples=50)
    assert all(math.isfinite(lo) and math.isfinite(hi) for lo, hi in (two["auc"], two["ap"]))


def test_bootstrap_separable_scores() -> None:
    """AUC 1 on every resample: the percentile interval is the point itself, not an error or NaN."""
    labels, scores = _cases([0.9, 0.8, 0.85, 0.7], [0.1, 0.3, 0.2, 0.4, 0.5])
    ci = bootstrap_intervals(labels, scores, 0.6, n_resamples=200)
    assert ci["auc"] == (1.0, 1.0) and ci["ap"] == (1.0, 1.0)
    assert ci["sensitivity"] == (1.0, 1.0) and ci["specificity"] == (1.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------

# 20 cases, 4 equal-mass bins of 5; bin means 0.2, 0.4, 0.6, 0.8 (no tie across bins)
CAL_PROBS = [0.1, 0.2, 0.3, 0.2, 0.2, 0.35, 0.4, 0.45, 0.4, 0.4, 0.55, 0.6, 0.65, 0.6, 0.6, 0.7, 0.8, 0.9, 0.8, 0.8]


def _shuffled(labels: list[int], probs: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.asarray(labels)[order], np.asarray(probs)[order]


def test_calibration_perfect() -> None:
    # 1, 2, 3, 4 melanomas of 5 in the bins: each bin's fraction equals its mean probability
    labels = [1, 0, 0, 0, 0] + [1, 1, 0, 0, 0] + [1, 1, 1, 0, 0] + [1, 1, 1, 1, 0]
    cal = calibration(*_shuffled(labels, CAL_PROBS), n_bins=4)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-12)
    assert cal["mce"] == pytest.approx(0.0, abs=1e-12)
    assert cal["n_bins"] == 4
    assert cal["bins"]["count"] == [5, 5, 5, 5]
    assert cal["bins"]["mean_prob"] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert cal["bins"]["frac_pos"] == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_calibration_miscalibrated() -> None:
    # fractions 0, 2/5, 5/5, 4/5 against means .2 .4 .6 .8: gaps .2 0 .4 0
    labels = [0] * 5 + [1, 1, 0, 0, 0] + [1] * 5 + [1, 1, 1, 1, 0]
    cal = calibration(*_shuffled(labels, CAL_PROBS), n_bins=4)
    assert cal["ece"] == pytest.approx(5 / 20 * 0.2 + 5 / 20 * 0.4)  # 0.15
    assert cal["mce"] == pytest.approx(0.4)
    assert cal["bins"]["frac_pos"] == pytest.approx([0.0, 0.4, 1.0, 0.8])
    # Brier: Σ (p - y)² / 20, summed bin by bin
    by_hand = (0.1**2 + 3 * 0.2**2 + 0.3**2  # bin 1, all benign
               + 0.65**2 + 0.6**2 + 0.45**2 + 0.4**2 + 0.4**2  # bin 2: 0.35, 0.4 melanoma
               + 0.45**2 + 3 * 0.4**2 + 0.35**2  # bin 3, all melanoma
               + 0.3**2 + 0.2**2 + 0.1**2 + 0.2**2 + 0.8**2) / 20  # bin 4: 0.7, 0.8, 0.9, 0.8 melanoma
    assert cal["brier"] == pytest.approx(by_hand)


def test_brier_by_hand() -> None:
    # (0.9 - 1)² + (0.2 - 0)² + (0.6 - 0)² = 0.01 + 0.04 + 0.36 = 0.41, over 3
    assert calibration([1, 0, 0], [0.9, 0.2, 0.6])["brier"] == pytest.approx(0.41 / 3)


def test_calibration_bins_remainders_and_ties() -> None:
    # 7 distinct probabilities in 3 bins: position i → bin ⌊3i/7⌋ = 0 0 0 1 1 2 2
    cal = calibration([0] * 7, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], n_bins=3)
    assert cal["bins"]["count"] == [3, 2, 2]
    # positions → bins 0 0 1 1 2 2, but the tie 0.3 0.3 0.3 (positions 2-4) joins bin 1 whole
    labels, probs = [0, 1, 0, 1, 1, 0], [0.1, 0.2, 0.3, 0.3, 0.3, 0.4]
    cal = calibration(labels, probs, n_bins=3)
    assert cal["bins"]["count"] == [2, 3, 1]
    assert cal["bins"]["mean_prob"] == pytest.approx([0.15, 0.3, 0.4])
    shuffled = calibration(*_shuffled(labels, probs, seed=1), n_bins=3)  # not the order of the cases
    assert shuffled["bins"]["count"] == cal["bins"]["count"]
    assert shuffled["bins"]["frac_pos"] == pytest.approx(cal["bins"]["frac_pos"])
    assert shuffled["bins"]["mean_prob"] == pytest.approx(cal["bins"]["mean_prob"])
    # one probability for every case: one bin
    assert calibration([0, 1, 1, 0], [0.5] * 4, n_bins=4)["bins"]["count"] == [4]
    # fewer cases than bins: one bin per case
    assert calibration([0, 1, 1], [0.2, 0.5, 0.7], n_bins=15)["n_bins"] == 3


def test_calibration_empty() -> None:
    cal = calibration([], [])
    assert math.isnan(cal["ece"]) and cal["n_bins"] == 0 and cal["bins"]["count"] == []


# ----------------------------------------------------------------------------------------------
# Temperature scaling
# ----------------------------------------------------------------------------------------------


def test_fit_temperature_recovers_known_temperature() -> None:
    """Labels drawn from sigmoid(m / T0), T0 = 2.5, margins m ~ N(0, 4²), n = 50 000.

    The maximum-likelihood 1/T has standard error 1/sqrt(n·I), I = E[m² σ(1-σ)] ≈ 1.37 (Monte Carlo),
    i.e. 0.0038 for 1/T and T0² · 0.0038 ≈ 0.024 for T: the tolerance 0.1 is about four of them.
    """
    t0 = 2.5
    rng = np.random.default_rng(0)
    margins = rng.normal(0.0, 4.0, 50_000)
    labels = (rng.random(margins.size) < expit(margins / t0)).astype(np.int64)
    t = fit_temperature(margins, labels)
    assert t == pytest.approx(t0, abs=0.1)
    # the same data with margins scaled by 3 need a temperature 3 times larger
    assert fit_temperature(3 * margins, labels) == pytest.approx(3 * t, rel=1e-5)


def test_temperature_keeps_auc() -> None:
    rng = np.random.default_rng(1)
    margins = rng.normal(0.0, 3.0, 400)
    labels = (rng.random(400) < expit(margins / 2.0)).astype(np.int64)
    auc = roc_auc_score(labels, margins)
    for t in (0.5, 1.0, 2.5, 10.0, fit_temperature(margins, labels)):
        assert roc_auc_score(labels, expit(margins / t)) == auc


def test_fit_temperature_edge_cases() -> None:
    assert fit_temperature([1.0, 2.0, -1.0], [1, 1, 1]) == 1.0
    assert fit_temperature([1.0, 2.0, -1.0], [0, 0, 0]) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # huge margins: no overflow in the log-likelihood
        t = fit_temperature([800.0, -900.0, 700.0, -600.0, 500.0], [1, 0, 0, 1, 1])
    assert math.isfinite(t) and t > 1.0  # confidently wrong twice: the fit softens the margins


# ----------------------------------------------------------------------------------------------
# DeLong's test
# ----------------------------------------------------------------------------------------------


def _delong_by_definition(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """DeLong et al. (1988) from the pairwise comparisons ψ(X_i, Y_j), written without ranks."""
    pos, neg = labels == 1, labels == 0
    m, n = int(pos.sum()), int(neg.sum())
    v10, v01, theta = [], [], []
    for s in (a, b):
        x, y = s[pos], s[neg]
        psi = np.array([[1.0 if xi > yj else 0.5 if xi == yj else 0.0 for yj in y] for xi in x])  # (m, n)
        theta.append(psi.sum() / (m * n))
        v10.append(psi.sum(axis=1) / n)  # (m,)
        v01.append(psi.sum(axis=0) / m)  # (n,)
    s10 = [[sum((v10[r][i] - theta[r]) * (v10[q][i] - theta[q]) for i in range(m)) / (m - 1) for q in (0, 1)]
           for r in (0, 1)]
    s01 = [[sum((v01[r][j] - theta[r]) * (v01[q][j] - theta[q]) for j in range(n)) / (n - 1) for q in (0, 1)]
           for r in (0, 1)]
    var = (s10[0][0] + s10[1][1] - 2 * s10[0][1]) / m + (s01[0][0] + s01[1][1] - 2 * s01[0][1]) / n
    se = math.sqrt(var)
    diff = theta[0] - theta[1]
    z = diff / se
    return {"auc_a": theta[0], "auc_b": theta[1], "difference": diff, "se": se, "z": z,
            "p_value": math.erfc(abs(z) / math.sqrt(2)), "ci_lo": diff - 1.959963984540054 * se,
            "ci_hi": diff + 1.959963984540054 * se}


@pytest.mark.parametrize("seed", range(4))
def test_delong_against_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 70
    labels = (rng.random(n) < 0.35).astype(np.int64)
    latent = rng.normal(labels * 1.0, 1.0)
    a = np.round(latent + rng.normal(0, 0.5, n), 1)  # rounded: ties within and across classes
    b = np.round(latent + rng.normal(0, 1.0, n), 1)
    got = delong_test(labels, a, b)
    want = _delong_by_definition(labels, a, b)
    assert got["auc_a"] == pytest.approx(roc_auc_score(labels, a))
    assert got["auc_b"] == pytest.approx(roc_auc_score(labels, b))
    for key in ("auc_a", "auc_b", "difference", "se", "z", "p_value"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert got["ci"] == pytest.approx([want["ci_lo"], want["ci_hi"]], rel=1e-9)


def test_delong_identical_scores() -> None:
    labels, scores = TIED
    got = delong_test(labels, scores, scores.copy())
    assert got["difference"] == 0.0 and got["se"] == 0.0 and got["z"] == 0.0 and got["p_value"] == 1.0
    assert got["ci"] == [0.0, 0.0]


def test_delong_missing_class() -> None:
    got = delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    assert all(math.isnan(v) for k, v in got.items() if k != "ci") and all(math.isnan(v) for v in got["ci"])


# ----------------------------------------------------------------------------------------------
# Formatting and figure
# ----------------------------------------------------------------------------------------------


def test_format_interval() -> None:
    assert format_interval(0.8474, (0.8123, 0.8791)) == "0.847 [0.81, 0.88]"
    assert format_interval(0.8474, [0.8123, 0.8791], digits=4) == "0.8474 [0.812, 0.879]"
    assert format_interval(0.8474, None) == "0.847"
    assert format_interval(0.8474, (math.nan, math.nan)) == "0.847"
    assert format_interval(math.nan, (0.8, 0.9)) == "n/a"
    assert format_interval(None, None) == "n/a"


def test_plot_reliability(tmp_path) -> None:
    labels, probs = _synthetic(300, 60, 0)
    before = calibration(labels, probs)
    after = calibration(labels, expit(np.log(probs / (1 - probs)) / 1.7))
    for name, arg in (("both.png", after), ("before.png", None)):
        out = plot_reliability(before, arg, tmp_path / name, title="validation")
        assert out == tmp_path / name
        with Image.open(out) as im:
            assert im.format == "PNG"
            assert 300 <= im.width <= 1500 and 300 <= im.height <= 1500
    with Image.open(plot_reliability(calibration([], []), None, tmp_path / "empty.png")) as im:
        assert im.format == "PNG"
