"""Matplotlib figures: confusion matrix (Fig. 6), ROC, training curves, the gaze figures of §4.4, and the
explanation measures of docs/design.md §6b (:func:`plot_explanation_bars`).

Every function draws with the non-interactive ``Agg`` backend, writes one PNG atomically
(:func:`dermogaze.files.atomic_write`) and returns its path; none of them shows a window, so they run
on servers and in tests.

Gaze figures place everything in the image's own pixel coordinates: the network input covers the
*input region* of the image (``(top, left, bottom, right)`` as fractions of its height and width:
:data:`FULL_REGION` for the whole image, :func:`dermogaze.explain.record.cache_region` for a cached one),
so attention maps and masks are drawn with the matching ``imshow`` extent and the gaze points
(integer pixel column ``x`` and row ``y``) land where :func:`dermogaze.metrics.explanation.gaze_points` says
they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from ..files import atomic_write, read_jsonl  # noqa: E402
from ..structures import STRUCTURES, short_names  # noqa: E402

#: Colour of every known structure, by name, so that a structure keeps its colour in every structure
#: set. Chosen to stand out on skin tones and brown lesions.
STRUCTURE_COLOR: dict[str, str] = {
    "lesion": "#e7298a",
    "skin": "#1b9e77",
    "pigment_network": "#377eb8",
    "negative_network": "#a6d854",
    "milia_like_cyst": "#ffd92f",
    "streaks": "#ff7f00",
    "globules": "#984ea3",
}
#: Colours of the default (ISIC 2017) set, in its order.
STRUCTURE_COLORS: tuple[str, ...] = tuple(STRUCTURE_COLOR[s] for s in STRUCTURES)


def structure_color(name: str) -> str:
    """The figure colour of a structure (a neutral cyan for a name no set knows)."""
    return STRUCTURE_COLOR.get(name, "#00e5ff")
CORRECT_COLOR = "#1a9850"
WRONG_COLOR = "#d73027"
NEUTRAL_COLOR = "#222222"
#: The whole image as an input region ``(top, left, bottom, right)``, fractions of its height and width.
FULL_REGION: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

_DPI = 110
#: Longest side of the copy of a photograph drawn in a figure: a panel is a few inches at _DPI, so more pixels are
#: never seen, and drawing a 100-megapixel original would cost gigabytes and a minute. Coordinates stay the original's.
DISPLAY_MAX_SIDE = 1024


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and close it."""
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=_DPI, bbox_inches="tight", facecolor="white")
    finally:
        plt.close(fig)
    return Path(path)


def _short(structures: Sequence[str]) -> list[str]:
    return short_names(structures)


# ----------------------------------------------------------------------------------------------
# Evaluation figures
# ----------------------------------------------------------------------------------------------


def plot_confusion_matrix(
    matrix: Sequence[Sequence[float | None]],
    path: str | Path,
    *,
    counts: Sequence[Sequence[int]] | None = None,
    structures: Sequence[str] = STRUCTURES,
    accuracy: float | None = None,
    title: str = "Structure classification",
) -> Path:
    """Row-normalised structure confusion matrix in the style of Fig. 6.

    Args:
        matrix: ``(S, S)`` row-normalised proportions (rows = GT, columns = predicted); ``None`` or
            NaN for a GT class that never occurred (drawn grey, marked "n/a").
        path: output PNG.
        counts: optional ``(S, S)`` counts, printed under each proportion.
        structures: class names in index order.
        accuracy: optional classification accuracy, shown in the title.
        title: figure title.

    Returns:
        ``path``.
    """
    m = np.array([[math.nan if v is None else float(v) for v in row] for row in matrix], dtype=np.float64)
    n = m.shape[0]
    labels = _short(structures)
    fig, ax = plt.subplots(figsize=(1.05 * n + 2.2, 1.0 * n + 1.2))
    cmap = plt.get_cmap("Blues").with_extremes(bad="#e0e0e0")
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(n):
        if np.isnan(m[i]).all():
            ax.text((n - 1) / 2, i, "no prediction paired with this GT structure", ha="center", va="center",
                    fontsize=8.5, color="#666666", style="italic")
            continue
        for j in range(n):
            text = f"{m[i, j]:.2f}"
            if counts is not None:
                text += f"\n({int(counts[i][j])})"
            color = "white" if m[i, j] > 0.55 else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=8.5, color=color)
    ax.set_xticks(range(n), labels, rotation=35, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted structure")
    ax.set_ylabel("ground-truth structure")
    ax.set_title(title + (f" (accuracy {accuracy:.3f})" if accuracy is not None and math.isfinite(accuracy) else ""))
    ax.set_xticks(np.arange(n + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="proportion of the GT row")
    return save_figure(fig, path)


def plot_roc(
    labels: Sequence[int], probs: Sequence[float], path: str | Path, *, threshold: float = 0.5, title: str = ""
) -> Path:
    """ROC curve and precision-recall curve of the melanoma probability, side by side.

    The operating point ``prob >= threshold`` is marked on both curves. With a single class present
    the curves are undefined: the figure says so instead of failing.

    Args:
        labels: ``(N,)`` 0/1 (1 = melanoma).
        probs: ``(N,)`` melanoma probabilities.
        path: output PNG.
        threshold: decision threshold to mark.
        title: optional suptitle (e.g. the split).

    Returns:
        ``path``.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10, 4.6))
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        for ax in (ax_roc, ax_pr):
            ax.text(0.5, 0.5, "undefined: only one class present", ha="center", va="center", transform=ax.transAxes)
    else:
        fpr, tpr, _ = roc_curve(y, p)
        auc = roc_auc_score(y, p)
        pred = p >= threshold
        sens, fpr_op = (pred & (y == 1)).sum() / n_pos, (pred & (y == 0)).sum() / n_neg
        ax_roc.plot(fpr, tpr, color="#2166ac", lw=2, label=f"AUC = {auc:.3f}")
        ax_roc.fill_between(fpr, tpr, alpha=0.12, color="#2166ac")
        ax_roc.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
        ax_roc.plot(fpr_op, sens, "o", color=WRONG_COLOR, ms=7, label=f"p ≥ {threshold:g}: sens {sens:.2f}, "
                    f"spec {1 - fpr_op:.2f}")
        prec, rec, _ = precision_recall_curve(y, p)
        ap = average_precision_score(y, p)
        ax_pr.step(rec, prec, where="post", color="#b2182b", lw=2, label=f"AP = {ap:.3f}")
        ax_pr.axhline(n_pos / len(y), ls="--", color="grey", lw=1, label=f"prevalence {n_pos / len(y):.2f}")
        prec_op = (pred & (y == 1)).sum() / max(int(pred.sum()), 1)
        ax_pr.plot(sens, prec_op, "o", color=WRONG_COLOR, ms=7, label=f"p ≥ {threshold:g}")
        ax_roc.legend(loc="lower right", fontsize=9)
        ax_pr.legend(loc="lower left", fontsize=9)
    ax_roc.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate (sensitivity)",
               title=f"ROC, melanoma vs rest ({n_pos} melanoma, {n_neg} benign)")
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall")
    for ax in (ax_roc, ax_pr):
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_reliability(
    before: Mapping[str, Any], after: Mapping[str, Any] | None, path: str | Path, *, title: str = ""
) -> Path:
    """Reliability diagram of the melanoma probability, before and (optionally) after temperature scaling.

    Top: per equal-mass bin, the observed melanoma fraction against the mean predicted probability,
    with the diagonal of perfect calibration; the legend gives each curve's ECE. Bottom: the cases in
    each bin, as a stem at the bin's mean probability (equal-mass bins hold about the same number of
    cases, so the stems show where the probabilities lie).

    Args:
        before: :func:`dermogaze.metrics.clinical.calibration` of the network's own probabilities.
        after: the same after temperature scaling, or ``None``.
        path: output PNG.
        title: optional suptitle (e.g. the split and the temperature).

    Returns:
        ``path``.
    """
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.4, 6.6), sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    curves = [(before, "#b2182b", "o", "before")]
    if after is not None:
        curves.append((after, "#2166ac", "s", "after temperature scaling"))
    drawn = False
    for k, (cal, color, marker, name) in enumerate(curves):
        bins = cal.get("bins", {})
        mean_prob, frac_pos, count = (np.asarray(bins.get(key, []), dtype=np.float64)
                                      for key in ("mean_prob", "frac_pos", "count"))
        if mean_prob.size == 0:
            continue
        drawn = True
        ece = cal.get("ece")
        label = f"{name}: ECE {ece:.3f}" if isinstance(ece, (int, float)) and math.isfinite(ece) else name
        ax.plot(mean_prob, frac_pos, marker=marker, ms=5, color=color, lw=1.5, label=label)
        offset = 0.004 * (2 * k - (len(curves) - 1))  # side by side when both are drawn
        ax_n.vlines(mean_prob + offset, 0, count, color=color, lw=2, alpha=0.8)
    if not drawn:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
    ax.set(ylabel="observed melanoma fraction", title=f"Reliability ({before.get('n_bins', 0)} equal-mass bins)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="upper left", fontsize=9)
    ax_n.set(xlabel="mean predicted melanoma probability", ylabel="cases per bin")
    ax_n.set_ylim(bottom=0)
    for a in (ax, ax_n):
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_explanation_bars(runs: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Per-structure matched pointing game and relevance-mass lift (docs/design.md §6b), one bar per run and structure.

    Args:
        runs: label → the ``explanation`` section of an evaluation (or a mean over seeds of the same
            shape): ``pointing_matched`` and ``relevance_lift`` with ``per_structure`` values
            (``None`` = no pair, drawn as no bar). Structures are those of the first run, in its order.
        path: output PNG.
        title: figure title.

    Returns:
        ``path``.
    """
    labels = list(runs)
    names = list(next(iter(runs.values()))["pointing_matched"]["per_structure"])
    x = np.arange(len(names))
    width = 0.8 / max(len(labels), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.8 * len(names) + 2.0), 3.8))
    panels = (("pointing_matched", "pointing game (matched structure)", 1.0),
              ("relevance_lift", "relevance-mass lift (uniform attention = 1)", None))
    for ax, (key, ylabel, top) in zip(axes, panels, strict=True):
        for k, label in enumerate(labels):
            per = runs[label][key]["per_structure"]
            values = [math.nan if per.get(n) is None else float(per[n]) for n in names]
            bars = ax.bar(x + (k - (len(labels) - 1) / 2) * width, values, width, label=label)
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
        if top is not None:
            ax.set_ylim(0, top * 1.12)
        else:
            ax.axhline(1.0, color=NEUTRAL_COLOR, lw=0.8, ls="--")
        ax.set_xticks(x, _short(names), rotation=30, ha="right")
        ax.set_ylabel(ylabel)
    handles, legend = axes[0].get_legend_handles_labels()
    fig.legend(handles, legend, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 1.0),
               frameon=False)
    if title:
        fig.suptitle(title, y=1.07)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return save_figure(fig, path)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}_"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plot_training_curves(history: str | Path | Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Training curves from ``RUN/metrics.jsonl``: one panel per loss term, train vs validation, and scores.

    Each row of the history is an epoch: ``epoch`` plus numeric ``train_<term>`` and ``val_<term>``
    values (nested ``{"train": {...}}`` dicts are flattened the same way). Loss terms (``loss``,
    ``diag``, ``seg``, ``cls``, ...) get one panel each with both phases; validation scores (``auc``,
    ``ap``, ...; any term without a training counterpart) share a last panel in [0, 1]. Epochs whose
    row has ``best: true`` are marked; the last one is the kept checkpoint.

    Args:
        history: path of ``metrics.jsonl`` or its rows.
        path: output PNG.

    Returns:
        ``path``.
    """
    rows = read_jsonl(history) if isinstance(history, (str, Path)) else list(history)
    flat = [_flatten(r) for r in rows]
    epochs = [r.get("epoch", k + 1) for k, r in enumerate(flat)]

    def series(key: str) -> np.ndarray:
        return np.array([np.nan if not isinstance(r.get(key), (int, float)) or isinstance(r.get(key), bool)
                         else float(r[key]) for r in flat])

    terms: dict[str, dict[str, str]] = {}
    for r in flat:
        for key, v in r.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            phase, _, term = key.partition("_")
            if phase in ("train", "val") and term:
                terms.setdefault(term, {})[phase] = key
    loss_terms = [t for t in terms if "train" in terms[t]]
    score_terms = [t for t in terms if "train" not in terms[t]]
    order = ("loss", "diag", "seg", "cls", "att")  # Eq. 14: total, then its terms; the attention supervision
    loss_terms.sort(key=lambda t: (order.index(t) if t in order else len(order), t))
    n_panels = len(loss_terms) + (1 if score_terms else 0)
    best = [e for e, r in zip(epochs, flat, strict=True) if r.get("best") is True]
    fig, axes = plt.subplots(1, max(n_panels, 1), figsize=(3.6 * max(n_panels, 1), 3.3), squeeze=False)
    axes = axes[0]
    if n_panels == 0:
        axes[0].text(0.5, 0.5, "no numeric train_/val_ values", ha="center", va="center")
    marker = "o" if len(epochs) <= 30 else None
    for ax, term in zip(axes, loss_terms, strict=False):
        for phase, color in (("train", "#2166ac"), ("val", "#b2182b")):
            if phase in terms[term]:
                ax.plot(epochs, series(terms[term][phase]), marker=marker, ms=3, color=color, label=phase)
        ax.set_title("total loss" if term == "loss" else f"{term} loss")
    if score_terms:
        ax = axes[len(loss_terms)]
        for term in sorted(score_terms):
            ax.plot(epochs, series(terms[term]["val"]), marker=marker, ms=3, label=f"val {term.upper()}")
        ax.set_ylim(0, 1.02)
        ax.set_title("validation scores")
    for ax in axes[:n_panels]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if best:
            ax.axvline(best[-1], color="grey", ls=":", lw=1.2, label=f"best (epoch {best[-1]})")
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------
# Gaze figures (Figs. 5, 7 and 8)
# ----------------------------------------------------------------------------------------------


def region_extent(region: Sequence[float], image_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """``imshow`` extent (left, right, bottom, top) of the network input over an ``(H, W)`` image.

    Pixel ``(row, col)`` of the image is drawn centred on ``(col, row)``, so the image spans
    ``[-0.5, W - 0.5]``; a region ``(top, left, bottom, right)`` (fractions) spans the matching part.
    """
    h, w = image_hw
    top, left, bottom, right = region
    return (left * w - 0.5, right * w - 0.5, bottom * h - 0.5, top * h - 0.5)


def _image_axes(ax: plt.Axes, image: np.ndarray) -> None:
    """Draw a photograph in its own pixel coordinates (a reduced copy of a large one: see DISPLAY_MAX_SIDE)."""
    h, w = image.shape[:2]
    factor = math.ceil(max(h, w) / DISPLAY_MAX_SIDE)
    shown = np.asarray(Image.fromarray(image).reduce(factor)) if factor > 1 else image  # box filter
    ax.imshow(shown, interpolation="bilinear", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _step_color(correct: bool | None) -> str:
    return NEUTRAL_COLOR if correct is None else (CORRECT_COLOR if correct else WRONG_COLOR)


def _draw_path(ax: plt.Axes, points: Sequence[tuple[int, int]], colors: Sequence[str], size: float) -> None:
    """Numbered gaze path: arrows from step to step, one numbered disc per gazed pixel.

    Steps that gaze at the same pixel share one disc labelled with all their numbers ("2,5").
    """
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:], strict=True):
        if (x0, y0) != (x1, y1):
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="-|>", color="white", lw=2.2, shrinkA=size * 0.5,
                                        shrinkB=size * 0.5, mutation_scale=14, alpha=0.9))
    groups: dict[tuple[int, int], list[int]] = {}
    for k, p in enumerate(points):
        groups.setdefault((int(p[0]), int(p[1])), []).append(k)
    for (x, y), steps in groups.items():
        label = ",".join(str(k + 1) for k in steps)
        color = colors[steps[0]] if len({colors[k] for k in steps}) == 1 else NEUTRAL_COLOR
        ax.text(x, y, label, ha="center", va="center", color="white", fontsize=size * 0.4, fontweight="bold",
                bbox=dict(boxstyle="circle,pad=0.25" if len(steps) == 1 else "round,pad=0.3", fc=color, ec="white",
                          lw=1.8, alpha=0.95))


def plot_gazes(
    image: np.ndarray,
    attention: np.ndarray,
    points: Sequence[tuple[int, int]],
    path: str | Path,
    *,
    region: Sequence[float] = FULL_REGION,
    masks: np.ndarray | None = None,
    step_labels: Sequence[str] | None = None,
    gt_labels: Sequence[str | None] | None = None,
    correct: Sequence[bool | None] | None = None,
    mask_colors: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """The sequence of gazes of one image (Figs. 7 and 8).

    Left: the image with the numbered gaze path (arrows in order of the steps). Right, one column
    per step: the attention map ``A_t`` over the image with its maximum (red dot, Fig. 7) and,
    for decoder variants, the step's predicted mask; each step is titled with its predicted
    structure, green/red when the GT structure is known and right/wrong (Fig. 8).

    Args:
        image: ``(H, W, 3)`` uint8, the image in its own pixels.
        attention: ``(T, h, w)`` attention maps.
        points: T gaze positions ``(x, y)`` in image pixels.
        path: output PNG.
        region: the image part the network saw, ``(top, left, bottom, right)`` fractions.
        masks: optional ``(T, H', W')`` predicted mask probabilities over ``region``.
        step_labels: optional T strings (e.g. ``"lesion 0.83"``).
        gt_labels: optional T GT structure names.
        correct: optional T bools (None = unknown), colouring the steps.
        mask_colors: optional T colours of the predicted masks (e.g. of their predicted structure).
        title: figure title (diagnosis).

    Returns:
        ``path``.
    """
    att = np.asarray(attention, dtype=np.float64)
    t_steps = att.shape[0]
    h0, w0 = image.shape[:2]
    extent = region_extent(region, (h0, w0))
    correct = list(correct) if correct is not None else [None] * t_steps
    colors = [_step_color(c) if c is not None else plt.get_cmap("viridis")(0.05 + 0.8 * k / max(t_steps - 1, 1))
              for k, c in enumerate(correct)]
    n_rows = 2 if masks is not None else 1
    panel = 2.3
    fig = plt.figure(figsize=(panel * (t_steps + 2) + 0.4, panel * max(n_rows, 2) * 1.1 + 0.5))
    gs = fig.add_gridspec(2, t_steps + 2, width_ratios=[1, 1] + [1] * t_steps, wspace=0.08, hspace=0.28)
    ax_big = fig.add_subplot(gs[:, :2])
    _image_axes(ax_big, image)
    if tuple(region) != FULL_REGION:  # the part of the image the network saw
        left, right, bottom, top = extent
        ax_big.add_patch(plt.Rectangle((left, top), right - left, bottom - top, fill=False, ec="white", lw=1.2,
                                       ls="--", alpha=0.8))
    _draw_path(ax_big, points, colors, 26.0)
    ax_big.set_title("sequence of gazes" + (" (dashed: network input)" if tuple(region) != FULL_REGION else ""),
                     fontsize=11)

    cmap = plt.get_cmap("inferno")
    vmax = float(att.max()) if att.size else 1.0
    for t in range(t_steps):
        ax = fig.add_subplot(gs[0, 2 + t] if n_rows == 2 else gs[:, 2 + t])
        _image_axes(ax, image)
        ax.imshow(att[t], cmap=cmap, alpha=0.6, extent=extent, vmin=0.0, vmax=vmax, interpolation="nearest")
        x, y = points[t]
        ax.plot(x, y, "o", ms=7, mfc="red", mec="white", mew=1.5)
        label = step_labels[t] if step_labels is not None else ""
        head = f"t = {t + 1}" + (f"\n{label}" if label else "")
        ax.set_title(head, fontsize=9.5, color=_step_color(correct[t]))
        if gt_labels is not None and gt_labels[t] is not None:
            mark = "✓" if correct[t] else ("✗" if correct[t] is False else "")
            ax.set_xlabel(f"GT: {gt_labels[t]} {mark}", fontsize=9, color=_step_color(correct[t]))
        if masks is not None:
            axm = fig.add_subplot(gs[1, 2 + t])
            _image_axes(axm, image)
            m = np.asarray(masks[t], dtype=np.float64)
            overlay = np.zeros(m.shape + (4,))
            color = mask_colors[t] if mask_colors is not None else "#00e5ff"
            overlay[..., :3] = matplotlib.colors.to_rgb(color)
            overlay[..., 3] = 0.6 * np.clip(m, 0, 1)
            axm.imshow(overlay, extent=extent, interpolation="bilinear")
            axm.contour(np.linspace(extent[0], extent[1], m.shape[1]), np.linspace(extent[3], extent[2], m.shape[0]),
                        m, levels=[0.5], colors="white", linewidths=1.0)
            area = float((m >= 0.5).mean())
            axm.set_title(f"mask {t + 1} ({area:.0%} of input)", fontsize=8.5)
    if title:
        fig.suptitle(title, fontsize=12, y=0.99)
    return save_figure(fig, path)


def plot_masks(
    image: np.ndarray,
    pred_masks: np.ndarray,
    path: str | Path,
    *,
    region: Sequence[float] = FULL_REGION,
    gt_masks: np.ndarray | None = None,
    present: Sequence[bool] | None = None,
    structures: Sequence[str] = STRUCTURES,
    step_labels: Sequence[str] | None = None,
    correct: Sequence[bool | None] | None = None,
    pred_classes: Sequence[int] | None = None,
    gt_labels: Sequence[str | None] | None = None,
    title: str = "",
) -> Path:
    """GT structure masks (top row) against the predicted mask of every step (bottom row), Fig. 5.

    Args:
        image: ``(H, W, 3)`` uint8.
        pred_masks: ``(T, H', W')`` predicted probabilities over ``region``.
        path: output PNG.
        region: the image part the network saw (fractions, top/left/bottom/right).
        gt_masks: optional ``(S, H', W')`` GT masks over ``region`` (cropped like the input).
        present: optional ``(S,)`` presence of each GT structure.
        structures: structure names.
        step_labels: optional T titles for the predicted masks.
        correct: optional T bools colouring the step titles.
        pred_classes: optional T predicted structure indices: each mask takes its structure's colour.
        gt_labels: optional T names of the GT structure paired with each step.
        title: figure title.

    Returns:
        ``path``.
    """
    pred = np.asarray(pred_masks, dtype=np.float64)
    t_steps = pred.shape[0]
    n_struct = len(structures)
    n_cols = 1 + max(t_steps, n_struct if gt_masks is not None else 0)
    n_rows = 2 if gt_masks is not None else 1
    panel = 2.2
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel * n_cols, panel * n_rows * 1.12 + 0.4), squeeze=False)
    extent = region_extent(region, image.shape[:2])
    correct = list(correct) if correct is not None else [None] * t_steps
    for ax in axes.ravel():
        ax.axis("off")

    def show_mask(ax: plt.Axes, m: np.ndarray, color: str) -> None:
        _image_axes(ax, image)
        ax.axis("on")
        overlay = np.zeros(m.shape + (4,))
        overlay[..., :3] = matplotlib.colors.to_rgb(color)
        overlay[..., 3] = 0.7 * np.clip(m, 0, 1)
        ax.imshow(overlay, extent=extent, interpolation="nearest")
        if m.max() >= 0.5 > m.min():
            ax.contour(np.linspace(extent[0], extent[1], m.shape[1]), np.linspace(extent[3], extent[2], m.shape[0]),
                       m, levels=[0.5], colors="white", linewidths=0.8)

    row = 0
    if gt_masks is not None:
        gt = np.asarray(gt_masks) > 0
        pres = np.asarray(present, dtype=bool) if present is not None else gt.reshape(n_struct, -1).any(1)
        _image_axes(axes[0, 0], image)
        axes[0, 0].axis("on")
        axes[0, 0].set_title("image", fontsize=9.5)
        axes[0, 0].set_ylabel("ground truth", fontsize=10)
        for s in range(n_struct):
            ax = axes[0, 1 + s]
            show_mask(ax, gt[s].astype(float), structure_color(structures[s]))
            ax.set_title(_short(structures)[s] + ("" if pres[s] else " (absent)"), fontsize=9.5,
                         color=NEUTRAL_COLOR if pres[s] else "#888888")
            if not pres[s]:
                ax.imshow(np.ones((1, 1, 4)) * [1, 1, 1, 0.55], extent=region_extent(FULL_REGION, image.shape[:2]))
        row = 1
    _image_axes(axes[row, 0], image)
    axes[row, 0].axis("on")
    axes[row, 0].set_ylabel("prediction", fontsize=10)
    for t in range(t_steps):
        ax = axes[row, 1 + t]
        k = int(pred_classes[t]) if pred_classes is not None else -1
        show_mask(ax, pred[t], structure_color(structures[k]) if k >= 0 else structure_color(""))
        label = step_labels[t] if step_labels is not None else ""
        ax.set_title(f"t = {t + 1}" + (f": {label}" if label else ""), fontsize=9.5, color=_step_color(correct[t]))
        if gt_labels is not None and gt_labels[t] is not None:
            mark = "✓" if correct[t] else ("✗" if correct[t] is False else "")
            ax.set_xlabel(f"GT: {gt_labels[t]} {mark}", fontsize=9, color=_step_color(correct[t]))
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)
