"""``compare``: several trained runs evaluated on one split, side by side in one table.

:func:`compare_runs` evaluates each run's ``best.pt`` with
:func:`dermogaze.evaluation.evaluate.evaluate_checkpoint` (the one evaluation path: the same metrics, intervals
and files as ``dermogaze evaluate``) on the same cache and split, and tabulates, one row per run
(column: where it comes from in the run's ``metrics.json``)::

    AUC, AP [95% CI]            diagnosis, diagnosis_ci (stratified bootstrap)
    specificity at sensitivity  operating_points at clinical.OPERATING_SENSITIVITIES (the ISIC 2017
                                leaderboard's), with their diagnosis_ci intervals
    ΔAUC vs first [95% CI], p   compare: DeLong's test against the first run's predictions
                                (evaluate_checkpoint(compare=...), clinical.delong_test)
    structure mAP               structures.map_iou_class_aware (Eq. 20, IoU .50:.95)
    Jaccard lesion+skin         structures.jaccard_lesion_skin
    Task 2 AUC                  superpixel_auc.mean (caches with superpixels)
    explanation quality         explanation (docs/design.md §6b), overall values: pointing game (matched and
                                named structure), relevance lift, hallucination rate, deletion and
                                insertion AUC (a random order's in brackets)

A value that an evaluation does not give (a variant without decoder has no structure mAP, a cache
without superpixels no Task 2 AUC) reads ``n/a`` in the Markdown table and is an empty cell in the
CSV. Files in ``out_dir``: ``compare.md``, ``compare.csv`` and each run's evaluation in
``<label>/`` (``metrics.json``, ``predictions.csv``, figures).

Every run is evaluated on one cache: ``cache``, or else the one all their checkpoints were trained
on (runs trained on different caches need ``cache``, so that no table mixes two test sets).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config import DEFAULT_FAITHFULNESS
from ..errors import DermogazeError
from ..files import write_csv, write_text
from ..metrics.clinical import OPERATING_SENSITIVITIES
from ..training.checkpoint import load_checkpoint
from .evaluate import evaluate_checkpoint
from .tables import format_interval, format_value

#: Explanation metrics shown (``metrics.json``'s ``explanation`` section): key → column header.
EXPLANATION_COLUMNS: dict[str, str] = {
    "pointing_matched": "pointing (matched)",
    "pointing_named": "pointing (named)",
    "relevance_lift": "relevance lift",
    "hallucination_rate": "hallucination rate",
}
#: Perturbation curves of the explanation section: key → column header (their AUC, a random order's beside).
PERTURBATION_COLUMNS: dict[str, str] = {"deletion": "deletion AUC (random)", "insertion": "insertion AUC (random)"}


def _level(t: float) -> str:
    """``0.82`` → ``"0.82"``: how :func:`dermogaze.metrics.clinical.operating_points` keys its levels."""
    return f"{t:.2f}"


def find_checkpoint(run: str | Path) -> Path:
    """``RUN/best.pt`` of a run folder (or a checkpoint file itself).

    Raises:
        DermogazeError: no such folder, or a folder without ``best.pt``.
    """
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise DermogazeError(f"{run}: no such run folder (give folders written by 'dermogaze train')")
    best = run / "best.pt"
    if not best.is_file():
        raise DermogazeError(
            f"{run} has no best.pt: not a run folder of 'dermogaze train', or a run with no completed epoch"
        )
    return best


def _labels(paths: Sequence[Path]) -> list[str]:
    """A short, unique name per run: the folder's name, numbered when two share it."""
    names = [p.name if p.is_dir() else p.parent.name if p.stem in ("best", "last") else p.stem for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{k + 1}_{name}" for k, name in enumerate(names)]


def _common_cache(checkpoints: Sequence[Path]) -> Path:
    """The cache every checkpoint was trained on.

    Raises:
        DermogazeError: a checkpoint names no cache, or two name different ones.
    """
    caches: dict[Path, Path] = {}
    for ckpt_path in checkpoints:
        cache = load_checkpoint(ckpt_path)["config"]["data"].get("cache")
        if not cache:
            raise DermogazeError(f"{ckpt_path} names no data cache: pass --data CACHE")
        caches.setdefault(Path(cache).resolve(), ckpt_path)
    if len(caches) > 1:
        (a, pa), (b, pb) = list(caches.items())[:2]
        raise DermogazeError(
            f"the runs were trained on different caches ({pa}: {a}; {pb}: {b}): their {len(caches)} test sets "
            "differ, so pass --data CACHE to evaluate every run on the same one"
        )
    return next(iter(caches))


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, NaN or infinite)."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _overall(value: Any) -> float | None:
    """An explanation metric's overall value (``{"overall": v, "per_structure": ...}`` or a number)."""
    return _number(value.get("overall") if isinstance(value, Mapping) else value)


def comparison_row(label: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row (the CSV's columns) from an evaluation's ``metrics.json``; None where it gives no value."""
    d = metrics.get("diagnosis", {})
    ci = metrics.get("diagnosis_ci") or {}
    info = metrics.get("info", {})
    row: dict[str, Any] = {
        "run": label,
        "checkpoint": info.get("checkpoint"),
        "variant": info.get("variant"),
        "best_epoch": info.get("epoch"),
        "n": d.get("n"),
        "n_pos": d.get("n_pos"),
    }

    def add(name: str, value: Any, interval: Any) -> None:
        low, high = interval if interval is not None else (None, None)
        row.update({name: _number(value), f"{name}_low": _number(low), f"{name}_high": _number(high)})

    add("auc", d.get("auc"), ci.get("auc"))
    add("ap", d.get("ap"), ci.get("ap"))
    spec = (metrics.get("operating_points") or {}).get("specificity_at_sensitivity", {})
    for t in OPERATING_SENSITIVITIES:
        key = f"specificity_at_sensitivity_{_level(t)}"
        add(key, spec.get(_level(t)), ci.get(key))
    cmp_ = metrics.get("compare")
    add("delta_auc", cmp_["difference"] if cmp_ else None, cmp_["ci"] if cmp_ else None)
    row["delong_p"] = _number(cmp_["p_value"]) if cmp_ else None
    s = metrics.get("structures") or {}
    row["map_iou"] = _number(s.get("map_iou_class_aware"))
    row["jaccard_lesion_skin"] = _number(s.get("jaccard_lesion_skin"))
    row["superpixel_auc"] = _number((metrics.get("superpixel_auc") or {}).get("mean"))
    e = metrics.get("explanation") or {}
    for key in EXPLANATION_COLUMNS:
        row[key] = _overall(e.get(key))
    for key in PERTURBATION_COLUMNS:
        curve = e.get(key) or {}
        row[f"{key}_auc"] = _number(curve.get("auc"))
        row[f"{key}_random_auc"] = _number(curve.get("random_auc"))
    return row


def _interval(row: Mapping[str, Any], name: str) -> str:
    return format_interval(row[name], (row[f"{name}_low"], row[f"{name}_high"]))


def comparison_markdown(rows: Sequence[Mapping[str, Any]], *, cache: Path | str, split: str) -> str:
    """The table of :func:`compare_runs` as Markdown (module docstring), with a title and a legend."""
    spec_headers = [f"spec. at {t:.0%} sens." for t in OPERATING_SENSITIVITIES]
    headers = ["run", "variant", "AUC [95% CI]", "AP [95% CI]", *spec_headers, "ΔAUC vs first [95% CI]", "DeLong p",
               "structure mAP", "Jaccard lesion+skin", "Task 2 AUC", *EXPLANATION_COLUMNS.values(),
               *PERTURBATION_COLUMNS.values()]
    first = rows[0]
    lines = [
        f"# {len(rows)} runs on {cache} ({split} split: {first['n']} images, {first['n_pos']} melanoma)",
        "",
        "95% intervals: stratified bootstrap (AUC, AP, specificity at the ISIC 2017 sensitivities) and DeLong "
        f"(ΔAUC = run - {first['run']}, with DeLong's two-sided p); structure mAP class-aware at IoU .50:.95; "
        "n/a: not given by that evaluation.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for k, r in enumerate(rows):
        cells = [f"`{r['run']}`", str(r["variant"]), _interval(r, "auc"), _interval(r, "ap")]
        cells += [_interval(r, f"specificity_at_sensitivity_{_level(t)}") for t in OPERATING_SENSITIVITIES]
        cells += ["—", "—"] if k == 0 else [_interval(r, "delta_auc"), format_value(r["delong_p"], 3)]
        cells += [format_value(r[key], 3) for key in ("map_iou", "jaccard_lesion_skin", "superpixel_auc")]
        cells += [format_value(r[key], 3) for key in EXPLANATION_COLUMNS]
        cells += [
            "n/a" if r[f"{key}_auc"] is None else
            f"{format_value(r[f'{key}_auc'], 3)} ({format_value(r[f'{key}_random_auc'], 3)})"
            for key in PERTURBATION_COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_runs(
    runs: Sequence[str | Path],
    *,
    split: str = "test",
    cache: str | Path | None = None,
    out_dir: str | Path = Path("runs") / "compare",
    device: str = "auto",
    amp: str = "off",
    workers: int = 0,
    n_resamples: int = 2000,
    seed: int = 0,
    faithfulness: int | None = DEFAULT_FAITHFULNESS,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every run's ``best.pt`` on one cache and split and write the comparison table.

    Args:
        runs: run folders (or checkpoint files); the first is the reference of ΔAUC and DeLong's p.
        split: cache split.
        cache: default: the cache all the runs were trained on.
        out_dir: where ``compare.md``, ``compare.csv`` and the evaluations go.
        device, amp, workers: the evaluation runtime.
        n_resamples, seed: of the bootstrap intervals.
        faithfulness: images that get the costly explanation measures (deletion, insertion, stability;
            :func:`~dermogaze.evaluation.evaluate.evaluate_checkpoint`).
        progress: progress bars.

    Returns:
        ``{"rows": [flat dict per run], "markdown": str, "files": {"markdown", "csv"}, "cache": Path}``.

    Raises:
        DermogazeError: no run, a folder without ``best.pt``, runs trained on different caches
            without ``cache``, or an evaluation error (:func:`~dermogaze.evaluation.evaluate.evaluate_checkpoint`).
    """
    if not runs:
        raise DermogazeError("compare needs at least one run folder")
    checkpoints = [find_checkpoint(r) for r in runs]
    resolved = [c.resolve() for c in checkpoints]
    if len(set(resolved)) < len(resolved):
        twice = next(c for c in checkpoints if resolved.count(c.resolve()) > 1)
        raise DermogazeError(f"{twice} is given twice: compare distinct runs")
    cache = Path(cache) if cache is not None else _common_cache(checkpoints)
    out = Path(out_dir)
    labels = _labels([Path(r) for r in runs])
    rows: list[dict[str, Any]] = []
    reference: Path | None = None
    for label, ckpt in zip(labels, checkpoints, strict=True):
        result = evaluate_checkpoint(
            ckpt, cache, split, out / label, device=device, amp=amp, workers=workers, compare=reference,
            n_resamples=n_resamples, seed=seed, faithfulness=faithfulness, progress=progress,
        )
        reference = reference or result["files"]["predictions"]
        rows.append(comparison_row(label, result["metrics"]))
    markdown = comparison_markdown(rows, cache=cache, split=split)
    files = {
        "markdown": write_text(markdown, out / "compare.md"),
        "csv": write_csv(list(rows[0]), [list(r.values()) for r in rows], out / "compare.csv"),
    }
    return {"rows": rows, "markdown": markdown, "files": files, "cache": cache}
