"""Clinical statistics of the melanoma-vs-rest diagnosis: operating points, threshold rules, bootstrap
intervals, calibration, temperature scaling and DeLong's test of two AUCs.

Conventions: ``labels`` are ``(n,)`` ints, 1 = melanoma, 0 = benign; ``scores`` (``probs``) are
``(n,)`` melanoma probabilities; a case is *predicted melanoma* when ``score >= t``. ``P`` is the
number of melanomas, ``N`` the number of benign lesions.

Definitions::

    TP(t) = #{melanoma: score >= t}           sensitivity(t) = TP(t) / P
    FP(t) = #{benign: score >= t}             specificity(t) = 1 - FP(t) / N

**ROC polyline.** Its vertices are ``(FP(t), TP(t))`` for ``t`` = +inf (the origin) and every
distinct score, from the largest to the smallest (``sklearn.metrics.roc_curve`` with
``drop_intermediate=False``, times ``N`` and ``P``); consecutive vertices are joined by straight
segments. A melanoma tied with a benign lesion gives a diagonal segment, whose points are the
expected operating points of a random tie-break. The operating points read off it::

    specificity at sensitivity s = 1 - FP*/N,  FP* = FP of the FIRST polyline point with TP = s·P
    sensitivity at specificity p = TP*/P,      TP* = the HIGHEST TP of the polyline at FP = (1 - p)·N

so a target that falls on a vertical segment (melanomas only) takes the FP of that segment, and one
that falls on a horizontal segment (benign lesions only) takes its top. Targets ``s·P`` and
``(1 - p)·N`` within 1e-9 of a whole number are that number (0.80 specificity of 10 benign lesions is
2 false positives, not 1.9999999999999996).

The ISIC 2017 challenge scorer (``computeSPECMetrics``, ImageMarkup/isic-challenge-scoring) reports
``1 - FPR`` at the first ``roc_curve`` vertex with ``TPR >= s``, without interpolation. Where no
melanoma ties a benign lesion at the crossing the polyline meets ``TP = s·P`` on a vertical segment
or at a vertex, and the two values are the same; at such a tie the scorer takes the top of the
diagonal segment (lower specificity) and this module the point on it. The scorer has no
sensitivity at specificity.

**Threshold rules** (:func:`choose_threshold`); but for a number, each gives a ROC vertex's threshold::

    "sensitivity@S"  the largest t with sensitivity(t) >= S: the k-th largest melanoma score, k = ⌈S·P⌉
    "specificity@S"  the smallest t with specificity(t) >= S: the smallest score above the k-th
                     smallest benign score, k = ⌈S·N⌉ (just above it when no score is: nothing
                     is predicted melanoma)
    "youden"         the t maximising sensitivity(t) + specificity(t) - 1 (the largest such t)
    "0.5"            that number, in [0, 1]

**Bootstrap intervals** (:func:`bootstrap_intervals`) resample the melanoma scores and the benign
scores separately (stratified: every resample keeps ``P`` and ``N``, so every statistic is defined
on every resample) and report percentile intervals: the ``(1 ± confidence)/2`` quantiles of the
bootstrap distribution. Percentile rather than BCa because (1) BCa's acceleration is a jackknife
estimate, which is inconsistent for quantile-like statistics such as the operating points (they move
with one order statistic of the scores), (2) the bootstrap distributions of sensitivity and
specificity at a fixed threshold are discrete and often constant near 0 or 1, where BCa's bias
correction is undefined, while a percentile interval is simply ``[v, v]``, (3) percentile intervals
stay inside [0, 1] and respect monotone transformations, and (4) it is what pROC's ``ci.se`` and
``ci.sp`` (the usual reference in clinical papers) do by default: 2000 stratified resamples and the
quantiles of their values. One method serves every statistic.

**Calibration** (:func:`calibration`), over ``B`` equal-mass bins of ``n`` cases::

    ECE   = Σ_b (count_b / n) · |frac_pos_b - mean_prob_b|
    MCE   = max_b |frac_pos_b - mean_prob_b|
    Brier = (1/n) Σ_i (prob_i - label_i)²

**Temperature scaling** (Guo et al. 2017) of the two-class diagnosis, with margins
``m = logit_melanoma - logit_benign``::

    p_T(m) = σ(m / T),   T = argmin_{T > 0} (1/n) Σ_i softplus(-(2 y_i - 1) · m_i / T)

(the mean negative log-likelihood, ``-log σ(x) = softplus(-x)``). It changes no ranking, hence no AUC.

**DeLong's test** (DeLong et al. 1988) of two AUCs on the same cases, melanoma scores ``X_i``
(``i < P``) and benign scores ``Y_j`` (``j < N``) of each predictor ``r ∈ {a, b}``::

    ψ(x, y) = 1 if x > y, 1/2 if x = y, 0 if x < y
    AUC^r      = (1 / PN) Σ_i Σ_j ψ(X_i^r, Y_j^r)
    V10^r(i)   = (1/N) Σ_j ψ(X_i^r, Y_j^r)      V01^r(j) = (1/P) Σ_i ψ(X_i^r, Y_j^r)
    S10^{rs}   = 1/(P - 1) Σ_i (V10^r(i) - AUC^r)(V10^s(i) - AUC^s)     (S01 likewise, 1/(N - 1))
    se²        = (S10^aa + S10^bb - 2 S10^ab) / P + (S01^aa + S01^bb - 2 S01^ab) / N
    z          = (AUC^a - AUC^b) / se,   p = 2 (1 - Φ(|z|)),   CI = AUC^a - AUC^b ± Φ⁻¹(0.975) · se

computed from midranks (Sun & Xu 2014) instead of the P×N comparisons: with ``R_Z`` the midrank
among all scores and ``R_X``, ``R_Y`` the midranks within each class,
``V10(i) = (R_Z(X_i) - R_X(X_i)) / N`` and ``V01(j) = 1 - (R_Z(Y_j) - R_Y(Y_j)) / P``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from ..config import parse_threshold_rule
from ..errors import DermogazeError

#: ISIC 2017 leaderboard: specificity at these sensitivities.
OPERATING_SENSITIVITIES: tuple[float, ...] = (0.82, 0.89, 0.95)
#: Sensitivity at these specificities.
OPERATING_SPECIFICITIES: tuple[float, ...] = (0.80, 0.90, 0.95)
#: Rule of :func:`choose_threshold` for the decision threshold when none is asked for.
DEFAULT_THRESHOLD_RULE = "sensitivity@0.89"

#: A target count within this of a whole number is that number (see the module docstring).
_COUNT_TOLERANCE = 1e-9
#: Temperatures searched by :func:`fit_temperature`.
_TEMPERATURE_BOUNDS = (1e-3, 1e3)
#: Scores held at once by one vectorised call of the bootstrap statistic (resamples × cases).
_BOOTSTRAP_BATCH_CELLS = 5_000_000
#: The fewest resamples the command line accepts: the ends of a 95% percentile interval are the 2.5th and
#: 97.5th percentiles of the resamples, so below 100 each end rests on fewer than three of them and the interval
#: (zero-wide with one resample) says nothing about the data. Efron & Tibshirani recommend 1000 or more for
#: percentile intervals; the default is 2000, pROC's.
MIN_BOOTSTRAP_RESAMPLES = 100
#: The most resamples the command line accepts: the Monte Carlo error of an interval's end falls as
#: ``1/sqrt(B)`` and is already far below the interval's width at 2000; beyond 100 000 only the time grows
#: (it grows linearly, and the resampled statistics take ``B × 10`` floats).
MAX_BOOTSTRAP_RESAMPLES = 100_000


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """``labels``, ``scores`` as ``(n,)`` int64 and float64 arrays, checked to match and be 0/1."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in length")
    if np.any((y != 0) & (y != 1)):
        raise ValueError("diagnosis labels must be 0 (benign) or 1 (melanoma)")
    return y.astype(np.int64), s


def _target_count(rate: float, total: int) -> float:
    """``rate · total``, or the whole number it is within :data:`_COUNT_TOLERANCE` of."""
    count = rate * total
    whole = round(count)
    return float(whole) if abs(count - whole) <= _COUNT_TOLERANCE else count


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    return value


# ----------------------------------------------------------------------------------------------
# Operating points
# ----------------------------------------------------------------------------------------------


def _roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve`` with every vertex, imported here: the commands that only apply a model
    (explain, predict, serve) import this module and never need scikit-learn."""
    from sklearn.metrics import roc_curve

    return roc_curve(y, s, drop_intermediate=False)


def _roc_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC polyline vertices in counts: ``(FP, TP, thresholds)``, each ``(V,)``, starting at the origin."""
    fpr, tpr, thresholds = _roc_curve(y, s)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    return np.rint(fpr * n_neg), np.rint(tpr * n_pos), thresholds


def specificity_at_sensitivity(labels: Any, scores: Any, sensitivity: float) -> float:
    """Specificity where the ROC polyline first reaches ``sensitivity`` (see the module docstring).

    Args:
        labels: ``(n,)`` 0/1, 1 = melanoma.
        scores: ``(n,)`` melanoma scores.
        sensitivity: target in (0, 1].

    Returns:
        The specificity, NaN when a class is absent.
    """
    y, s = _check(labels, scores)
    target = _check_rate("sensitivity", sensitivity)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    fp, tp, _ = _roc_counts(y, s)
    tp_star = _target_count(target, n_pos)
    j = int(np.searchsorted(tp, tp_star, side="left"))  # first vertex with TP >= s·P (j >= 1: TP_0 = 0)
    if tp[j] == tp_star:
        fp_star = fp[j]
    else:  # on the segment (j-1, j), TP_{j-1} < s·P < TP_j
        fp_star = fp[j - 1] + (tp_star - tp[j - 1]) / (tp[j] - tp[j - 1]) * (fp[j] - fp[j - 1])
    return float(1.0 - fp_star / n_neg)


def sensitivity_at_specificity(labels: Any, scores: Any, specificity: float) -> float:
    """Sensitivity of the ROC polyline at ``1 - specificity`` (its highest point there; module docstring).

    Args:
        labels: ``(n,)`` 0/1, 1 = melanoma.
        scores: ``(n,)`` melanoma scores.
        specificity: target in (0, 1].

    Returns:
        The sensitivity, NaN when a class is absent.
    """
    y, s = _check(labels, scores)
    target = _check_rate("specificity", specificity)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    fp, tp, _ = _roc_counts(y, s)
    fp_star = _target_count(1.0 - target, n_neg)
    j = int(np.searchsorted(fp, fp_star, side="right")) - 1  # last vertex with FP <= (1-p)·N: the highest TP
    if fp[j] == fp_star:
        tp_star = tp[j]
    else:  # on the segment (j, j+1), FP_j < (1-p)·N < FP_{j+1}
        tp_star = tp[j] + (fp_star - fp[j]) / (fp[j + 1] - fp[j]) * (tp[j + 1] - tp[j])
    return float(tp_star / n_pos)


def _key(value: float) -> str:
    return f"{value:.2f}"


def operating_points(labels: Any, scores: Any) -> dict[str, dict[str, float]]:
    """Specificity at :data:`OPERATING_SENSITIVITIES` and sensitivity at :data:`OPERATING_SPECIFICITIES`.

    Returns:
        ``{"specificity_at_sensitivity": {"0.82": v, "0.89": v, "0.95": v},
        "sensitivity_at_specificity": {"0.80": v, "0.90": v, "0.95": v}}``, NaN when a class is absent.
    """
    return {
        "specificity_at_sensitivity": {
            _key(t): specificity_at_sensitivity(labels, scores, t) for t in OPERATING_SENSITIVITIES
        },
        "sensitivity_at_specificity": {
            _key(t): sensitivity_at_specificity(labels, scores, t) for t in OPERATING_SPECIFICITIES
        },
    }


# ----------------------------------------------------------------------------------------------
# Threshold rules
# ----------------------------------------------------------------------------------------------



def choose_threshold(rule: str, labels: Any, scores: Any) -> float:
    """The decision threshold that ``rule`` picks on these scores (rules in the module docstring).

    Args:
        rule: ``"sensitivity@S"``, ``"specificity@S"``, ``"youden"`` or a number such as ``"0.5"``.
        labels: ``(n,)`` 0/1, 1 = melanoma (not read for a number).
        scores: ``(n,)`` melanoma scores (not read for a number).

    Returns:
        The threshold; a case is predicted melanoma when ``score >= threshold``.

    Raises:
        DermogazeError: an unknown rule, a number outside [0, 1], or no melanoma (sensitivity, Youden)
            or no benign lesion (specificity, Youden) among the labels.
    """
    name, level = parse_threshold_rule(rule)
    if name == "fixed":
        return float(level)
    y, s = _check(labels, scores)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    for needed, count, what in (("sensitivity", n_pos, "melanoma"), ("specificity", n_neg, "benign lesion")):
        if name in (needed, "youden") and count == 0:
            raise DermogazeError(f"threshold rule {rule!r} needs at least one {what} among the labels; there is none")
    if name == "sensitivity":
        k = math.ceil(_target_count(level, n_pos))  # 1 <= k <= P
        return float(np.sort(s[y == 1])[n_pos - k])  # the k-th largest melanoma score
    if name == "specificity":
        k = math.ceil(_target_count(level, n_neg))  # 1 <= k <= N
        kth_benign = np.sort(s[y == 0])[k - 1]  # the k-th smallest benign score
        above = s[s > kth_benign]
        return float(above.min()) if above.size else float(np.nextafter(kth_benign, np.inf))
    fpr, tpr, thresholds = _roc_curve(y, s)
    j = 1 + int(np.argmax((tpr - fpr)[1:]))  # skip the origin (t = +inf); argmax takes the largest t of a tie
    return float(thresholds[j])


# ----------------------------------------------------------------------------------------------
# Bootstrap intervals
# ----------------------------------------------------------------------------------------------


def _bootstrap_keys() -> list[str]:
    return (
        ["auc", "ap", "sensitivity", "specificity"]
        + [f"specificity_at_sensitivity_{_key(t)}" for t in OPERATING_SENSITIVITIES]
        + [f"sensitivity_at_specificity_{_key(t)}" for t in OPERATING_SPECIFICITIES]
    )


def _resample_statistics(pos: np.ndarray, neg: np.ndarray, threshold: float) -> np.ndarray:
    """Every statistic of :func:`bootstrap_intervals` on a batch of resamples, without a loop.

    The same definitions as the point estimates (AUC = Mann-Whitney with midranks =
    ``roc_auc_score``; AP = ``average_precision_score``; the operating points of the module
    docstring), written for ``B`` resamples at once. With ``t`` the k-th largest melanoma score,
    ``k = ⌈s·P⌉``, the polyline crosses ``TP = s·P`` on the segment from the vertex of the scores
    above ``t`` to the vertex of ``t`` itself::

        FP* = FP(>t) + (s·P - TP(>t)) / (TP(>=t) - TP(>t)) · (FP(>=t) - FP(>t))

    and with ``u`` the (m+1)-th largest benign score, ``m = ⌊(1-p)·N⌋``, it crosses
    ``FP = (1-p)·N`` on the segment from the vertex above ``u`` to the vertex of ``u``::

        TP* = TP(>u) + ((1-p)·N - FP(>u)) / (FP(>=u) - FP(>u)) · (TP(>=u) - TP(>u))

    (``TP(>t)`` counts melanoma scores above ``t``, ``FP(>=u)`` benign scores at or above ``u``).

    Args:
        pos: ``(B, P)`` melanoma scores of each resample.
        neg: ``(B, N)`` benign scores of each resample.
        threshold: decision threshold of the sensitivity and specificity.

    Returns:
        ``(K, B)``, rows in :func:`_bootstrap_keys` order.
    """
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    both = np.concatenate([pos, neg], axis=-1)  # (B, P+N)
    mid = stats.rankdata(both, axis=-1)  # (B, P+N) midranks
    auc = (mid[:, :n_pos].sum(-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)  # (B,)
    n_at_or_above = n_pos + n_neg + 1 - stats.rankdata(both, method="min", axis=-1)[:, :n_pos]  # (B, P)
    tp_at_or_above = n_pos + 1 - stats.rankdata(pos, method="min", axis=-1)  # (B, P)
    ap = (tp_at_or_above / n_at_or_above).mean(-1)  # (B,) mean precision at each melanoma's score
    rows = [auc, ap, (pos >= threshold).mean(-1), (neg < threshold).mean(-1)]

    def counts(t: np.ndarray) -> tuple[np.ndarray, ...]:  # t: (B, 1) → TP(>t), TP(>=t), FP(>t), FP(>=t), each (B,)
        return (pos > t).sum(-1), (pos >= t).sum(-1), (neg > t).sum(-1), (neg >= t).sum(-1)

    pos_sorted, neg_sorted = np.sort(pos, axis=-1), np.sort(neg, axis=-1)  # (B, P), (B, N) ascending
    for s in OPERATING_SENSITIVITIES:
        tp_star = _target_count(s, n_pos)
        k = math.ceil(tp_star)
        tp_gt, tp_ge, fp_gt, fp_ge = counts(pos_sorted[:, n_pos - k, None])
        fp_star = fp_gt + (tp_star - tp_gt) / (tp_ge - tp_gt) * (fp_ge - fp_gt)
        rows.append(1.0 - fp_star / n_neg)
    for p in OPERATING_SPECIFICITIES:
        fp_star = _target_count(1.0 - p, n_neg)
        m = math.floor(fp_star)
        tp_gt, tp_ge, fp_gt, fp_ge = counts(neg_sorted[:, n_neg - m - 1, None])
        tp_star = tp_gt + (fp_star - fp_gt) / (fp_ge - fp_gt) * (tp_ge - tp_gt)
        rows.append(tp_star / n_pos)
    return np.stack(rows)  # (K, B)


def bootstrap_intervals(
    labels: Any,
    scores: Any,
    threshold: float,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Stratified percentile bootstrap intervals of AUC, AP, sensitivity/specificity and operating points.

    ``scipy.stats.bootstrap`` resamples the melanoma scores and the benign scores separately
    (``paired=False``), ``n_resamples`` times, and one vector-valued statistic computes every value
    of a resample; the interval method (percentile) and its reasons are in the module docstring.

    Args:
        labels: ``(n,)`` 0/1, 1 = melanoma.
        scores: ``(n,)`` melanoma scores.
        threshold: decision threshold of ``sensitivity`` and ``specificity``.
        n_resamples: bootstrap resamples (the command line takes :data:`MIN_BOOTSTRAP_RESAMPLES` to
            :data:`MAX_BOOTSTRAP_RESAMPLES`).
        confidence: coverage of each (two-sided) interval.
        seed: seed of the resampling; the same seed gives the same intervals.

    Returns:
        ``{"auc", "ap", "sensitivity", "specificity", "specificity_at_sensitivity_0.82", ...,
        "sensitivity_at_specificity_0.95"}`` → ``(low, high)``; ``(nan, nan)`` everywhere when a
        class has fewer than two cases (absent, or one case, which every resample would repeat:
        the "interval" would then only reflect the other class, and SciPy refuses such a sample).
    """
    y, s = _check(labels, scores)
    keys = _bootstrap_keys()
    pos, neg = s[y == 1], s[y == 0]
    if pos.size < 2 or neg.size < 2:
        return {k: (math.nan, math.nan) for k in keys}

    def statistic(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = pos.shape[:-1]  # () for the original sample, (batch,) for resamples
        values = _resample_statistics(pos.reshape(-1, pos.shape[-1]), neg.reshape(-1, neg.shape[-1]), threshold)
        return values.reshape((len(keys),) + lead)  # (K, *lead)

    result = stats.bootstrap(
        (pos, neg),
        statistic,
        n_resamples=n_resamples,
        batch=max(1, _BOOTSTRAP_BATCH_CELLS // s.size),
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        random_state=seed,  # `rng` needs scipy >= 1.15; `random_state` works on every supported scipy
    )
    low, high = result.confidence_interval
    return {k: (float(lo), float(hi)) for k, lo, hi in zip(keys, low, high, strict=True)}


# ----------------------------------------------------------------------------------------------
# Calibration and temperature scaling
# ----------------------------------------------------------------------------------------------


def _equal_mass_bins(probs: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each case: ``(n,)`` ints in ``[0, n_bins)``, non-decreasing with the probability.

    The case at position ``i`` of the probabilities sorted in increasing order goes to bin
    ``⌊i · n_bins / n⌋``: bins of ``⌊n / n_bins⌋`` or ``⌈n / n_bins⌉`` cases, the larger ones spread
    evenly. Tied probabilities share the bin of the first of them, so a tie that straddles a boundary
    joins the lower bin whole (a bin is a probability interval and the result does not depend on the
    order of the cases); such a bin is larger, the next smaller or empty.
    """
    n = probs.size
    order = np.argsort(probs, kind="stable")
    sorted_probs = probs[order]
    by_position = np.arange(n) * n_bins // n  # (n,)
    first_of_value = np.searchsorted(sorted_probs, sorted_probs, side="left")  # (n,) first index of each tie
    bins = np.empty(n, dtype=np.int64)
    bins[order] = by_position[first_of_value]
    return bins


def calibration(labels: Any, probs: Any, n_bins: int = 15) -> dict[str, Any]:
    """Expected and maximum calibration error over equal-mass bins, and the Brier score.

    Definitions in the module docstring; bins as in :func:`_equal_mass_bins`. Empty bins (more bins
    than cases, or ties merging bins) are left out of every sum, list and of ``n_bins``.

    Args:
        labels: ``(n,)`` 0/1, 1 = melanoma.
        probs: ``(n,)`` melanoma probabilities.
        n_bins: bins asked for.

    Returns:
        ``{"ece", "mce", "brier", "n_bins", "bins": {"mean_prob": [...], "frac_pos": [...], "count": [...]}}``,
        ``n_bins`` = bins used, lists in increasing probability; NaN values and empty lists when ``n = 0``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _check(labels, probs)
    n = y.size
    if n == 0:
        return {"ece": math.nan, "mce": math.nan, "brier": math.nan, "n_bins": 0,
                "bins": {"mean_prob": [], "frac_pos": [], "count": []}}
    bins = _equal_mass_bins(p, n_bins)
    count = np.bincount(bins, minlength=n_bins)  # (n_bins,)
    used = count > 0
    count = count[used]
    mean_prob = np.bincount(bins, weights=p, minlength=n_bins)[used] / count
    frac_pos = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins)[used] / count
    gap = np.abs(frac_pos - mean_prob)
    return {
        "ece": float(np.sum(count / n * gap)),
        "mce": float(gap.max()),
        "brier": float(np.mean((p - y) ** 2)),
        "n_bins": int(used.sum()),
        "bins": {"mean_prob": mean_prob.tolist(), "frac_pos": frac_pos.tolist(), "count": count.tolist()},
    }


def fit_temperature(margins: Any, labels: Any) -> float:
    """Temperature ``T`` of the diagnosis margins that minimises the labels' mean negative log-likelihood.

    The likelihood (module docstring) is written with ``softplus = logaddexp(0, ·)`` so that large
    margins neither overflow nor lose the log of a probability rounded to 1. It is minimised over
    ``log T`` in ``[log 1e-3, log 1e3]`` by bounded Brent: the loss is convex in ``1/T`` (a logistic
    regression with one coefficient and no intercept), hence unimodal in ``log T``, so the minimum
    found is the global one. Separable data (loss falling as ``T → 0``) or margins that rank the
    classes backwards (falling as ``T → ∞``) end at a bound.

    Args:
        margins: ``(n,)`` ``logit_melanoma - logit_benign``.
        labels: ``(n,)`` 0/1, 1 = melanoma.

    Returns:
        ``T > 0``; the calibrated probability is ``sigmoid(margin / T)``. 1.0 when a class is absent.
    """
    y, m = _check(labels, margins)
    if y.sum() == 0 or y.sum() == y.size:
        return 1.0
    signed = (2 * y - 1) * m  # (n,) positive when the margin points at the right class

    def nll(log_t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, -signed * math.exp(-log_t))))

    lo, hi = (math.log(b) for b in _TEMPERATURE_BOUNDS)
    result = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-8})
    return float(math.exp(result.x))


# ----------------------------------------------------------------------------------------------
# DeLong's test
# ----------------------------------------------------------------------------------------------


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> dict[str, Any]:
    """DeLong's test of two correlated AUCs on the same cases (fast midrank form; module docstring).

    Args:
        labels: ``(n,)`` 0/1, 1 = melanoma.
        scores_a: ``(n,)`` scores of predictor a.
        scores_b: ``(n,)`` scores of predictor b, same cases in the same order.

    Returns:
        ``{"auc_a", "auc_b", "difference" (a - b), "se", "z", "p_value" (two-sided), "ci": [lo, hi]}``
        (95% interval of the difference). ``se = 0`` (e.g. identical scores) gives ``z = 0, p = 1``
        for a zero difference and ``z = ±inf, p = 0`` otherwise. Everything is NaN when a class is
        absent; everything but the AUCs and their difference when a class has a single case (the
        covariances divide by ``P - 1`` and ``N - 1``).
    """
    y, a = _check(labels, scores_a)
    _, b = _check(labels, scores_b)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    nan = {"auc_a": math.nan, "auc_b": math.nan, "difference": math.nan, "se": math.nan, "z": math.nan,
           "p_value": math.nan, "ci": [math.nan, math.nan]}
    if n_pos == 0 or n_neg == 0:
        return nan
    scores = np.stack([a, b])  # (2, n)
    x, yy = scores[:, y == 1], scores[:, y == 0]  # (2, P), (2, N)
    r_z = stats.rankdata(np.concatenate([x, yy], axis=1), axis=1)  # (2, P+N) midranks among all
    r_x, r_y = stats.rankdata(x, axis=1), stats.rankdata(yy, axis=1)  # (2, P), (2, N) midranks within a class
    v10 = (r_z[:, :n_pos] - r_x) / n_neg  # (2, P)
    v01 = 1.0 - (r_z[:, n_pos:] - r_y) / n_pos  # (2, N)
    auc = v10.mean(axis=1)  # (2,)
    diff = float(auc[0] - auc[1])
    out = dict(nan, auc_a=float(auc[0]), auc_b=float(auc[1]), difference=diff)
    if n_pos < 2 or n_neg < 2:
        return out
    s10, s01 = np.cov(v10), np.cov(v01)  # (2, 2) each, divisors P - 1 and N - 1
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ s10 @ contrast / n_pos + contrast @ s01 @ contrast / n_neg)
    se = math.sqrt(max(var, 0.0))
    if se > 0:
        z = diff / se
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    half = float(special.ndtri(0.975)) * se
    return dict(out, se=se, z=z, p_value=float(2.0 * stats.norm.sf(abs(z))), ci=[diff - half, diff + half])
