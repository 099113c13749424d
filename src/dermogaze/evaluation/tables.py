"""Report tables: the plain-text summary of an evaluation that ``dermogaze evaluate`` prints, and the
formatting of single values that the comparison, Table 3 and demo reports share.

:func:`format_table` reads what :meth:`~dermogaze.metrics.accumulator.EvaluationAccumulator.compute`
returns (or its ``metrics.json``), with the clinical statistics of
:func:`~dermogaze.evaluation.evaluate.clinical_metrics` (:func:`clinical_lines`) and the explanation
measures of :class:`~dermogaze.metrics.explanation.ExplanationAccumulator` (:func:`explanation_lines`);
each block appears only when its section was computed. Undefined values read ``n/a``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..structures import short_names


def format_value(v: Any, digits: int = 4) -> str:
    """A metric for a table: ``digits`` decimals, ``n/a`` for a missing or undefined value."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _missing(v: Any) -> bool:
    return v is None or not math.isfinite(float(v))


def format_interval(value: Any, ci: Any, digits: int = 3) -> str:
    """``"0.847 [0.81, 0.88]"``: ``value`` with ``digits`` decimals, the bounds with ``digits - 1``.

    ``"n/a"`` for a missing or NaN value; the value alone when ``ci`` is missing or has a NaN bound.
    """
    if _missing(value):
        return "n/a"
    text = f"{float(value):.{digits}f}"
    if ci is None or len(ci) != 2 or any(_missing(v) for v in ci):
        return text
    d = max(digits - 1, 0)
    return f"{text} [{float(ci[0]):.{d}f}, {float(ci[1]):.{d}f}]"


def clinical_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Terminal lines of the clinical statistics of an evaluation
    (:func:`~dermogaze.evaluation.evaluate.clinical_metrics`).

    Intervals read ``0.847 [0.81, 0.88]`` (95%, stratified bootstrap); sections that were not
    computed are left out.
    """
    lines: list[str] = []
    d, ci = metrics.get("diagnosis", {}), metrics.get("diagnosis_ci")
    decision = metrics.get("decision")
    if decision:
        lines.append(
            f"  decision threshold {decision['threshold']:.3f} ({decision['rule']}, chosen on the validation split)"
        )
    if ci:
        lines.append(
            "  95% intervals: " + "   ".join(
                f"{name} {format_interval(d.get(key), ci.get(key))}"
                for name, key in (("AUC", "auc"), ("AP", "ap"), ("sensitivity", "sensitivity"),
                                  ("specificity", "specificity"))
            )
        )
    ops = metrics.get("operating_points")
    if ops:
        for kind, other in (("specificity_at_sensitivity", "sensitivity"), ("sensitivity_at_specificity",
                                                                              "specificity")):
            cells = [
                f"{float(level):.0%} {format_interval(value, (ci or {}).get(f'{kind}_{level}'))}"
                for level, value in ops[kind].items()
            ]
            lines.append(f"  {kind.split('_at_')[0]} at {other}: " + "   ".join(cells))
    cal = metrics.get("calibration")
    if cal and cal.get("before"):
        b, a = cal["before"], cal["after"]
        lines.append(
            f"  calibration ({b['n_bins']} equal-mass bins), before -> after temperature scaling "
            f"(T = {cal['temperature']:.3f}): ECE {format_value(b['ece'], 3)} -> {format_value(a['ece'], 3)}   "
            f"MCE {format_value(b['mce'], 3)} -> {format_value(a['mce'], 3)}   "
            f"Brier {format_value(b['brier'], 3)} -> {format_value(a['brier'], 3)}"
        )
    tta = metrics.get("tta")
    if tta:
        auc = format_interval(tta["auc"], (tta["ci"] or {}).get("auc"))
        lines.append(
            f"  test-time augmentation ({tta['views']} views): AUC {auc}"
            f" vs {format_value(tta['auc_without'], 3)} without; P(melanoma) spread across views: mean "
            f"{tta['spread_mean']:.3f}, max {tta['spread_max']:.3f}"
        )
    for field, rows in (metrics.get("subgroups") or {}).items():
        lines += ["", f"Diagnosis by {field} (AUC only for groups with at least 10 melanoma and 10 benign images)"]
        width = max([len(r["group"]) for r in rows] + [5])
        lines.append(f"  {'group':<{width}}  {'images':>6}  {'melanoma':>8}  AUC [95% interval]")
        for r in rows:
            auc = format_interval(r["auc"], r["auc_ci"]) if r["auc"] is not None else "too few to say"
            lines.append(f"  {r['group']:<{width}}  {r['n']:>6}  {r['n_pos']:>8}  {auc}")
    cmp_ = metrics.get("compare")
    if cmp_:
        lines += [
            "",
            f"Comparison with {cmp_['other']} on {cmp_['n']} images (DeLong): AUC {cmp_['auc_a']:.3f} vs "
            f"{cmp_['auc_b']:.3f}, difference {format_interval(cmp_['difference'], cmp_['ci'])}, "
            f"z = {cmp_['z']:.2f}, p = {cmp_['p_value']:.3g}",
        ]
    return lines


def format_table(metrics: Mapping[str, Any]) -> str:
    """A readable plain-text summary of an evaluation's metrics (or their ``metrics.json`` reload).

    Args:
        metrics: :meth:`~dermogaze.metrics.accumulator.EvaluationAccumulator.compute`, with the sections
            ``dermogaze evaluate`` adds (clinical statistics, ``explanation``) when present.

    Returns:
        Multi-line string: diagnosis block, structure block (mAP, accuracy, Jaccard and Task 2 AUC
        per structure) and the row-normalised confusion matrix, each only when available.
    """
    lines: list[str] = []
    d = metrics.get("diagnosis", {})
    if metrics.get("diagnosis_absent"):
        lines.append(f"Diagnosis: not scored: {metrics['diagnosis_absent']}")
    else:
        lines.append(f"Diagnosis (melanoma vs rest): {d.get('n', 0)} images, {d.get('n_pos', 0)} melanoma")
        lines.append(
            f"  AUC {format_value(d.get('auc'))}   AP {format_value(d.get('ap'))}   "
            f"sensitivity {format_value(d.get('sensitivity'))}   specificity {format_value(d.get('specificity'))}   "
            f"(threshold {format_value(d.get('threshold'), 2)})"
        )
        lines += clinical_lines(metrics)
    s = metrics.get("structures")
    sp = metrics.get("superpixel_auc") or {}
    if s:
        lines.append("")
        lines.append(f"Structures: {s.get('n_images', 0)} images with ground truth")
        lines.append(
            f"  mAP@IoU[.50:.95] class-aware {format_value(s.get('map_iou_class_aware'))}   "
            f"class-agnostic {format_value(s.get('map_iou_class_agnostic'))}   "
            f"classification accuracy {format_value(s.get('accuracy'))}"
        )
        lines.append(
            f"  Jaccard lesion+skin {format_value(s.get('jaccard_lesion_skin'))}   "
            f"mean {format_value(s.get('jaccard_mean'))}"
        )
        names = list(s.get("jaccard", {}))
        width = max([len(n) for n in names] + [9])
        lines.append(f"  {'structure':<{width}}  {'present':>7}  {'Jaccard':>7}  {'Task2 AUC' if sp else '':>9}")
        for name in names:
            lines.append(
                f"  {name:<{width}}  {s.get('jaccard_n', {}).get(name, 0):>7}  {format_value(s['jaccard'][name]):>7}"
                f"  {format_value(sp.get(name)) if name in sp else '':>9}"
            )
        if sp:
            lines.append(f"  {'Task 2 mean':<{width}}  {'':>7}  {'':>7}  {format_value(sp.get('mean')):>9}")
        cm = s.get("confusion_matrix")
        if cm:
            short = short_names(names)
            lines.append("")
            lines.append("  Confusion matrix (rows: GT structure, columns: predicted; each row sums to 1)")
            lines.append("  " + " " * 9 + "".join(f"{c:>9}" for c in short))
            for name, row in zip(short, cm, strict=True):
                lines.append(f"  {name:<9}" + "".join(f"{format_value(v, 2):>9}" for v in row))
    elif sp:
        lines.append("")
        lines.append("Task 2 superpixel AUC: " + "  ".join(f"{k} {format_value(v)}" for k, v in sp.items()))
    t2 = metrics.get("task2_jaccard")
    if t2:
        lines.append("")
        lines.append(
            f"ISIC 2018 Task 2 Jaccard ({t2['n_images']} images; official scorer's definition): micro-average "
            f"{format_value(t2['micro_average'])} (the challenge's headline)   mean over attributes "
            f"{format_value(t2['attribute_mean'])}"
        )
        lines.append("  " + "   ".join(f"{k} {format_value(v)}" for k, v in t2["per_attribute"].items()))
    lines += explanation_lines(metrics.get("explanation"))
    return "\n".join(line.rstrip() for line in lines)


def explanation_lines(ex: Mapping[str, Any] | None) -> list[str]:
    """Terminal lines of the explanation measures
    (docs/design.md §6b, :class:`~dermogaze.metrics.explanation.ExplanationAccumulator`).

    A per-structure table (pointing game matched and named, relevance mass and lift, images where
    the structure is absent), then the overall values, the gaze ablation, deletion/insertion against
    a random order, stability and the seconds the costly measures took.
    """
    if not ex:
        return []
    lines = ["", f"Explanations (docs/design.md §6b): {ex['n_images']} images"]
    pm, pn, rm, rl = (ex.get(k) for k in ("pointing_matched", "pointing_named", "relevance_mass", "relevance_lift"))
    if pm:
        pc = ex.get("pointing_centroid") or {"overall": None, "per_structure": {}}
        names = list(pm["per_structure"])
        width = max([len(n) for n in names] + [9])
        head = ("pointing", "named", "centroid", "relevance", "lift", "absent")
        lines.append(f"  {'structure':<{width}}" + "".join(f"{h:>11}" for h in head))
        rows = [(n, pm["per_structure"][n], pn["per_structure"][n], pc["per_structure"].get(n), rm["per_structure"][n],
                 rl["per_structure"][n]) for n in names]
        rows.append(("overall", pm["overall"], pn["overall"], pc["overall"], rm["overall"], rl["overall"]))
        for name, *values in rows:
            absent = pm["excluded"].get(name, "")
            lines.append(f"  {name:<{width}}" + "".join(f"{format_value(v, 3):>11}" for v in values) + f"{absent:>11}")
        hr = ex.get("hallucination_rate") or {}
        lines.append(f"  pointing game: matched (Hungarian) / named (classifier) structure, one cell of tolerance; "
                     f"hallucination rate {format_value(hr.get('overall'), 3)}")
        lines.append("  centroid: no model, a gaze at the centroid of the whole lesion (the pointing game's reference)")
        paper = ex.get("pointing_masks_matched")
        if paper and paper != pm:  # a model trained with loss.attention_matching or class_matching
            lines.append("  matched by the model's loss (beyond the masks); by the masks alone, the paper's: "
                         + ", ".join(f"{n} {format_value(v, 3)}" for n, v in paper["per_structure"].items())
                         + f", overall {format_value(paper['overall'], 3)}")
    ab = ex.get("ablation") or {}
    if ab.get("zero_by_construction"):
        lines.append("  gaze ablation: no gazes, zero effect by construction")
    elif ab:
        per_step = " ".join(format_value(v, 3) for v in ab["mean_abs_delta_per_step"])
        lines.append(f"  gaze ablation: mean |ΔP| per step {per_step}; flips at {format_value(ab['threshold'], 2)}: "
                     f"{format_value(ab['flip_fraction'], 3)}")
    for kind in ("deletion", "insertion"):
        d = ex.get(kind)
        if d:
            lines.append(f"  {kind} AUC {format_value(d['auc'], 3)} (random order {format_value(d['random_auc'], 3)})")
    st = ex.get("stability")
    if st:
        lines.append(f"  stability over 8 flips/rotations: MultiMatch position {format_value(st.get('position'), 3)}, "
                     f"shape {format_value(st.get('shape'), 3)}; "
                     f"P(melanoma) spread {format_value(st.get('p_spread'), 3)}"
                     + (f" ({st['note']})" if st.get("note") else ""))
    sec = ex.get("seconds") or {}
    if ex.get("faithfulness_images"):
        costly = sec.get("deletion_insertion", 0.0) + sec.get("stability", 0.0)
        lines.append(f"  deletion/insertion and stability on {ex['faithfulness_images']} images took {costly:.1f} s "
                     f"(all explanation measures {sec.get('total', 0.0):.1f} s)")
    return lines
