"""The demo's report (``OUT/report.md``): the run's configuration, metrics, timings and figures on one page.

:func:`write_report` writes it from what :func:`~dermogaze.experiments.demo.run.run_demo` produced;
the sections are Markdown built by :func:`metrics_markdown`, :func:`clinical_markdown` and
:func:`explanation_markdown`. Image links are relative to ``OUT``.

The demo trains its preset once (with the attention supervision, λ = 1); the same preset with λ = 0
(the paper's loss) is not trained by the demo (it would double its time). The report cites instead
the results of ``benchmarks/attention_supervision.py`` for both λ, three seeds each: the part of them
it reads ships with the package (:data:`SUPERVISION_RESULTS`, cut from the benchmark's results by
:func:`supervision_excerpt`), so that an installed package writes the same report as a checkout.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...data.provenance import describe
from ...evaluation.tables import format_interval, format_value
from ...files import write_text
from ...runtime import precision_name
from ...version import __version__

logger = logging.getLogger(__name__)

#: What the demo must reach on its synthetic test split: diagnosis AUC and the mean
#: Jaccard of the lesion and skin structures (stated in the report beside the results).
DEMO_FLOORS = {"auc": 0.80, "jaccard_lesion_skin": 0.5}
#: The attention-supervision results the report compares this run with (the preset with λ = 0 and
#: λ > 0 on three seeds, :func:`compared_explanations`), shipped with the package.
SUPERVISION_RESULTS = Path(__file__).with_name("attention_supervision.json")
#: Sections of a benchmark run that the comparison reads (their ``per_structure`` figures).
SUPERVISION_SECTIONS = ("pointing_matched", "pointing_masks_matched", "relevance_lift")

#: The report's numbers: three decimals, ``n/a`` when undefined.
_fmt = functools.partial(format_value, digits=3)


def supervision_excerpt(bench: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``benchmarks/results/attention_supervision.json`` that the report reads
    (:data:`SUPERVISION_RESULTS` is this of the committed results).

    Args:
        bench: the benchmark's results (``lambda``, ``overrides``, ``seeds``, ``runs`` by ``"λ/seed"``).

    Returns:
        The same mapping with, per run, only the ``per_structure`` figures of :data:`SUPERVISION_SECTIONS`,
        and the benchmark's command, split and number of test images for provenance.
    """
    runs = {
        key: {k: {"per_structure": dict(run[k]["per_structure"])} for k in SUPERVISION_SECTIONS if run.get(k)}
        for key, run in bench["runs"].items()
    }
    provenance = {k: bench[k] for k in ("command", "split", "test_images") if k in bench}
    return {"lambda": bench["lambda"], "overrides": list(bench.get("overrides", [])), "seeds": list(bench["seeds"]),
            **provenance, "runs": runs}


def _mark(step: Mapping[str, Any]) -> str:
    """`` ✓``, `` ✗ (GT s)`` or nothing, for a step's structure against its ground truth."""
    if step.get("structure_correct") is None:
        return ""
    return " ✓" if step["structure_correct"] else f" ✗ (GT {step['gt_structure']})"


def _rel(path: str | Path, base: Path) -> str:
    """``path`` relative to ``base``, with forward slashes (a Markdown link)."""
    return Path(os.path.relpath(Path(path), base)).as_posix()


def clinical_markdown(metrics: Mapping[str, Any]) -> str:
    """Markdown of the clinical statistics: threshold, intervals, operating points, calibration, subgroups.

    Args:
        metrics: ``dermogaze evaluate``'s metrics (:func:`dermogaze.evaluation.evaluate.clinical_metrics` sections).
    """
    d, ci, decision = metrics.get("diagnosis", {}), metrics.get("diagnosis_ci") or {}, metrics.get("decision")
    lines = ["**Clinical statistics** (95% intervals: stratified bootstrap)", ""]
    if decision:
        lines += [f"Decision threshold {decision['threshold']:.3f} (`{decision['rule']}`, chosen on the validation "
                  "split).", ""]
    lines += [
        "| AUC | AP | sensitivity | specificity |",
        "|---|---|---|---|",
        "| " + " | ".join(format_interval(d.get(k), ci.get(k)) for k in ("auc", "ap", "sensitivity", "specificity"))
        + " |",
    ]
    ops = metrics.get("operating_points")
    if ops:
        lines += ["", "| operating point | value |", "|---|---|"]
        for kind, other in (("specificity_at_sensitivity", "sensitivity"),
                            ("sensitivity_at_specificity", "specificity")):
            what = kind.split("_at_")[0]
            for level, value in ops[kind].items():
                interval = format_interval(value, ci.get(f"{kind}_{level}"))
                lines.append(f"| {what} at {other} {float(level):.0%} | {interval} |")
    cal = metrics.get("calibration")
    if cal and cal.get("before"):
        b, a = cal["before"], cal["after"]
        lines += [
            "",
            f"| calibration ({b['n_bins']} equal-mass bins) | ECE | MCE | Brier |",
            "|---|---|---|---|",
            f"| before temperature scaling | {_fmt(b['ece'])} | {_fmt(b['mce'])} | {_fmt(b['brier'])} |",
            f"| after (T = {cal['temperature']:.3f}, fitted on validation) | {_fmt(a['ece'])} | {_fmt(a['mce'])} | "
            f"{_fmt(a['brier'])} |",
        ]
    for field, rows in (metrics.get("subgroups") or {}).items():
        lines += ["", f"| {field} | images | melanoma | AUC |", "|---|---|---|---|"]
        for r in rows:
            auc = format_interval(r["auc"], r["auc_ci"]) if r["auc"] is not None else "too few (< 10 per class)"
            lines.append(f"| {r['group']} | {r['n']} | {r['n_pos']} | {auc} |")
    return "\n".join(lines)


def metrics_markdown(metrics: Mapping[str, Any]) -> str:
    """Markdown tables of an evaluation (diagnosis, structures, per-structure Jaccard and Task 2 AUC).

    Args:
        metrics: :meth:`dermogaze.metrics.accumulator.EvaluationAccumulator.compute` output.

    Returns:
        Markdown text.
    """
    d = metrics.get("diagnosis", {})
    lines = [
        f"**Diagnosis** (melanoma vs rest, {d.get('n', 0)} images, {d.get('n_pos', 0)} melanoma)",
        "",
        "| AUC | AP | sensitivity | specificity | accuracy |",
        "|---|---|---|---|---|",
        f"| {_fmt(d.get('auc'))} | {_fmt(d.get('ap'))} | {_fmt(d.get('sensitivity'))} | "
        f"{_fmt(d.get('specificity'))} | {_fmt(d.get('accuracy'))} |",
    ]
    s = metrics.get("structures")
    if s:
        sp = metrics.get("superpixel_auc") or {}
        lines += [
            "",
            f"**Structures** ({s.get('n_images', 0)} images with ground truth)",
            "",
            "| mAP@IoU[.50:.95] class-aware | class-agnostic | classification accuracy | Jaccard lesion+skin "
            "| mean Jaccard |",
            "|---|---|---|---|---|",
            f"| {_fmt(s.get('map_iou_class_aware'))} | {_fmt(s.get('map_iou_class_agnostic'))} | "
            f"{_fmt(s.get('accuracy'))} | {_fmt(s.get('jaccard_lesion_skin'))} | {_fmt(s.get('jaccard_mean'))} |",
            "",
            "| structure | images present | Jaccard | Task 2 superpixel AUC |",
            "|---|---|---|---|",
        ]
        for name, value in s.get("jaccard", {}).items():
            task2 = _fmt(sp.get(name)) if name in sp else ""
            lines.append(f"| {name} | {s.get('jaccard_n', {}).get(name, 0)} | {_fmt(value)} | {task2} |")
        if sp:
            lines.append(f"| *Task 2 mean* | | | {_fmt(sp.get('mean'))} |")
    return "\n".join(lines)


def _seed_mean(sections: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The per-structure matched pointing game (the loss's matching and the paper's, masks only) and lift averaged
    over runs (``None`` where no run has a value; results without the masks-only figures: the matched ones).
    """
    mean: dict[str, Any] = {}
    for key in ("pointing_matched", "pointing_masks_matched", "relevance_lift"):
        of = [s.get(key) or s["pointing_matched"] for s in sections]
        names = list(of[0]["per_structure"])
        per = {}
        for n in names:
            values = [s["per_structure"][n] for s in of if s["per_structure"].get(n) is not None]
            per[n] = sum(values) / len(values) if values else None
        mean[key] = {"per_structure": per}
    return mean


def compared_explanations(
    explanation: Mapping[str, Any] | None, results: str | Path = SUPERVISION_RESULTS, attention: float = 0.0
) -> dict[str, Mapping[str, Any]]:
    """The runs the demo report compares: this run's explanation measures and, when the results of
    ``benchmarks/attention_supervision.py`` are found, its λ = 0 and λ > 0 runs averaged over their seeds.

    Args:
        explanation: the ``explanation`` section of this run's evaluation (``None`` or without the pointing game:
            not shown).
        results: the benchmark's results or their excerpt (:func:`supervision_excerpt`); default: the shipped one.
        attention: this run's λ (``loss.attention``), for its label.

    Returns:
        label → a section with ``pointing_matched`` and ``relevance_lift`` (``per_structure``), in display order.
    """
    runs: dict[str, Mapping[str, Any]] = {}
    if explanation and explanation.get("pointing_matched"):
        runs[f"this demo (λ = {attention:g})"] = explanation
    path = Path(results)
    if path.is_file():
        try:
            bench = json.loads(path.read_text())
            seeds = bench["seeds"]
            options = [o.removeprefix("loss.") for o in bench.get("overrides", []) if o.startswith("loss.")]
            for lam in (0, bench["lambda"]):
                sections = [bench["runs"][f"{lam:g}/{seed}"] for seed in seeds]
                label = f"λ = {lam:g}" + (f" ({', '.join(options)})" if lam and options else "")
                if sections:
                    runs[f"{label}, mean of {len(seeds)} seeds (benchmark)"] = _seed_mean(sections)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("could not read the attention-supervision results %s: %s", path, exc)
    return runs


def explanation_markdown(metrics: Mapping[str, Any], runs: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown of the docs/design.md §6b measures: this run per structure, ablation, deletion/insertion, stability, and
    the matched pointing game and lift of the ``runs`` compared (:func:`compared_explanations`).
    """
    ex = metrics.get("explanation")
    if not ex:
        return "No explanation measures (the evaluation computed none)."
    lines = []
    pm = ex.get("pointing_matched")
    if pm:
        pn, rm, rl = ex["pointing_named"], ex["relevance_mass"], ex["relevance_lift"]
        pc = ex.get("pointing_centroid") or {"overall": None, "per_structure": {}}
        lines += [
            "| structure | images present | pointing game (matched) | pointing game (named) | centroid (no model) "
            "| relevance mass | lift |",
            "|---|---|---|---|---|---|---|",
        ]
        for n in pm["per_structure"]:
            lines.append(
                f"| {n} | {ex['present_images'][n]} | {_fmt(pm['per_structure'][n])} | {_fmt(pn['per_structure'][n])} "
                f"| {_fmt(pc['per_structure'].get(n))} | {_fmt(rm['per_structure'][n])} "
                f"| {_fmt(rl['per_structure'][n])} |"
            )
        lines.append(f"| *overall* | | {_fmt(pm['overall'])} | {_fmt(pn['overall'])} | {_fmt(pc['overall'])} "
                     f"| {_fmt(rm['overall'])} | {_fmt(rl['overall'])} |")
        lines += ["", "Centroid: no model, a gaze at the centroid of the whole lesion, scored like the gazes; the "
                  "pointing game of a gaze that only finds the lesion's middle."]
        lines += ["", f"Hallucination rate (a step names a structure absent from the image): "
                  f"{_fmt(ex['hallucination_rate']['overall'])}."]
    ab = ex.get("ablation") or {}
    if ab.get("zero_by_construction"):
        lines += ["", "Gaze ablation: the model has no gazes; zero effect by construction."]
    elif ab:
        lines += ["", "Gaze ablation (one gaze's attended features removed from the diagnosis input): mean "
                  "|ΔP(melanoma)| per step " + ", ".join(_fmt(v) for v in ab["mean_abs_delta_per_step"])
                  + f"; decisions flipped at the threshold {_fmt(ab['threshold'])}: {_fmt(ab['flip_fraction'])}."]
    dele, ins, st = ex.get("deletion"), ex.get("insertion"), ex.get("stability")
    if dele and ins:
        lines += ["", f"Deletion / insertion (RISE, {ex['faithfulness_images']} images, 20 steps, pixels by "
                  f"decreasing Σ_t A_t): area under P(predicted class) {_fmt(dele['auc'])} / {_fmt(ins['auc'])}, "
                  f"random order {_fmt(dele['random_auc'])} / {_fmt(ins['random_auc'])} (faithful gazes: lower "
                  "deletion and higher insertion than random)."]
    if st:
        lines += ["", f"Stability over the 8 flips/rotations: MultiMatch position {_fmt(st.get('position'))}, shape "
                  f"{_fmt(st.get('shape'))}; spread of P(melanoma) {_fmt(st.get('p_spread'))}."]
    sec = ex.get("seconds") or {}
    lines += ["", f"These measures took {sec.get('total', 0.0):.1f} s (deletion/insertion "
              f"{sec.get('deletion_insertion', 0.0):.1f} s, stability {sec.get('stability', 0.0):.1f} s)."]
    sampled, n_images = ex.get("faithfulness_images"), ex.get("n_images")
    if (dele or st) and sampled is not None and n_images is not None and sampled < n_images:
        lines[-1] += (f" Deletion, insertion and stability ran on the first {sampled} of the {n_images} images, "
                      "the other measures on all of them (`dermogaze evaluate --faithfulness N` sets the number).")
    if len(runs) > 1:
        names = list(next(iter(runs.values()))["pointing_matched"]["per_structure"])
        lines += ["", "Attention supervision (`loss.attention` = λ, beyond the paper): the demo trains its preset "
                  "once (first column), as a second model would double its time; the other columns are the committed "
                  "results of `benchmarks/attention_supervision.py` (`benchmarks/results/attention_supervision.md`: "
                  "the same preset with λ = 0, the paper's loss, and with λ > 0; same data and epochs).", "",
                  "| structure | " + " | ".join(f"pointing, {k} | lift, {k}" for k in runs) + " |",
                  "|---|" + "---|---|" * len(runs)]
        for n in names:
            cells = [(r["pointing_matched"]["per_structure"].get(n), r["relevance_lift"]["per_structure"].get(n))
                     for r in runs.values()]
            lines.append(f"| {n} | " + " | ".join(f"{_fmt(p)} | {_fmt(lift)}" for p, lift in cells) + " |")
        other = {k: r["pointing_masks_matched"]["per_structure"] for k, r in runs.items()
                 if (r.get("pointing_masks_matched") or r["pointing_matched"]) != r["pointing_matched"]}
        lines += ["", "Matched: the structure the model's own loss pairs each step with (with "
                  "`loss.attention_matching`, a matching that weighs the gazes too, as in training)."]
        for k, per in other.items():
            lines[-1] += (f" Under the paper's matching (masks only), {k}: "
                          + ", ".join(f"{n} {_fmt(per.get(n))}" for n in ("lesion", "skin") if n in per) + ".")
    return "\n".join(lines)


def _supervision_text(config: Mapping[str, Any]) -> str:
    """The options beyond the paper of a run's configuration, for the report ("" when it trains the paper's loss)."""
    loss, t = config["loss"], config["train"]
    parts = []
    if loss.get("attention", 0) > 0:
        parts.append(f"attention supervision λ = {loss['attention']:g}"
                     + (f" (reached over {loss['attention_warmup']} epochs)" if loss.get("attention_warmup") else "")
                     + (", matching on the gazes too" if loss.get("attention_matching") else ""))
    if loss.get("class_matching"):
        parts.append("matching on the structure classifier too")
    if t.get("repeat_threshold", 0) > 0:
        parts.append(f"repeat-factor sampling t = {t['repeat_threshold']:g}")
    return "".join(f"{p}, " for p in parts)


def provenance_markdown(training_data: Mapping[str, Any] | None, records: Sequence[Mapping[str, Any]]) -> str:
    """The report's line on what the model was trained on and the out-of-distribution score of the explained images.

    Args:
        training_data: the checkpoint's ``training_data``, or None: that of the first record that has one.
        records: the explanation records (their ``ood``).
    """
    if training_data is None:
        training_data = next((r["training_data"] for r in records if r.get("training_data")), None)
    line = f"- trained on: {describe(training_data)}"
    scores = [r["ood"] for r in records if r.get("ood")]
    if scores:
        out = sum(bool(s["out_of_distribution"]) for s in scores)
        line += (f"; out-of-distribution threshold {scores[0]['threshold']:.2f} (the validation images' 95th "
                 f"percentile of the Mahalanobis distance of the pooled encoder features), exceeded by {out} of the "
                 f"{len(scores)} explained test images")
    return line


def write_report(
    out_dir: str | Path,
    *,
    metrics: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]],
    records: Sequence[Mapping[str, Any]],
    timings: Mapping[str, float],
    config: Mapping[str, Any],
    recipe: Mapping[str, Any],
    files: Mapping[str, Path],
    fast: bool = False,
    explanation_runs: Mapping[str, Mapping[str, Any]] | None = None,
    training_data: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``OUT/report.md``: timings, configuration, metrics, curves, Fig. 6, ROC and gaze figures.

    Image links are relative to ``OUT``, so the folder can be moved or viewed on a code host.

    Args:
        out_dir: the demo folder (the report goes to ``out_dir/report.md``).
        metrics: the test-split evaluation.
        history: the training rows of ``metrics.jsonl``.
        records: explanation records (:func:`dermogaze.explain.run.run_explain`).
        timings: stage → seconds.
        config: the resolved training configuration (``Config.to_dict()``).
        recipe: the synthetic data recipe.
        files: paths of ``curves``, ``roc``, ``confusion_matrix``, ``explanation``, ``metrics``,
            ``predictions``, ``explain_dir`` and ``run`` (those present are linked).
        fast: the run was a ``--fast`` smoke run.
        explanation_runs: the runs the explanation section compares (default: :func:`compared_explanations`).
        training_data: the checkpoint's ``training_data`` (:mod:`dermogaze.data.provenance`); default: that of the
            records.

    Returns:
        The report's path.
    """
    out = Path(out_dir)
    m, t = config["model"], config["train"]
    d = metrics.get("diagnosis", {})
    s = metrics.get("structures") or {}
    auc, jac = d.get("auc"), s.get("jaccard_lesion_skin")
    best = [r for r in history if r.get("best")]
    lines = [
        "# dermogaze demo report",
        "",
        "The whole pipeline on the built-in synthetic dataset (docs/design.md §8), written by `dermogaze demo`"
        + (" with `--fast` (a smoke run: small data, two epochs; not expected to reach the floors)" if fast else "")
        + ".",
        "",
        f"- dermogaze {__version__}; synthetic data: "
        + ", ".join(f"{k} {v}" for k, v in recipe["counts"].items())
        + f" images of {recipe['image_size'][0]}×{recipe['image_size'][1]} px, prepared at {recipe['cache_size']} px",
        f"- model: `{m['name']}`, width {m['width']}, {m['image_size']} px input, T = {m['steps']} gazes, "
        f"batch norm {m['batch_norm'] or 'variant default'}, "
        + (f"encoder weights `{m['weights']}`" if m.get("weights") else "encoder trained from scratch (no ImageNet"
           " weights)"),
        f"- training: {t['epochs']} epochs, batch {t['batch_size']}, Adam betas {tuple(t['betas'])}, learning rates "
        f"encoder {t['lr_encoder']:g} / attentive ConvLSTM {t['lr_attention']:g} / branches {t['lr_branches']:g}, "
        f"{t.get('lr_schedule', 'constant')} schedule, loss balancing `{config['loss']['balancing']}`, "
        + _supervision_text(config)
        + f"seed {t['seed']}",
        f"- precision: {precision_name(t.get('amp', 'off'))} (training, evaluation and explanations; "
        "`dermogaze demo --amp off|bf16` chooses, the default is float32)",
        "- kept checkpoint: epoch "
        + (f"{best[-1]['epoch']} (validation loss {format_value(best[-1].get('val_loss'), 4)})" if best else "n/a"),
        provenance_markdown(training_data, records),
        "",
        "## Result on the synthetic test split",
        "",
        f"- diagnosis AUC **{_fmt(auc)}** (floor {DEMO_FLOORS['auc']}), mean Jaccard of lesion and skin "
        f"**{_fmt(jac)}** (floor {DEMO_FLOORS['jaccard_lesion_skin']})",
        "",
        metrics_markdown(metrics),
        "",
        clinical_markdown(metrics),
        "",
        "## Time",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in timings.items()],
        "",
        "## Training curves",
        "",
    ]
    if "curves" in files:
        lines += [f"![training curves]({_rel(files['curves'], out)})", ""]
    lines += ["## Structure classification (Fig. 6) and ROC", ""]
    if "confusion_matrix" in files:
        lines += [f"![confusion matrix]({_rel(files['confusion_matrix'], out)})", ""]
    if "roc" in files:
        lines += [f"![ROC and precision-recall]({_rel(files['roc'], out)})", ""]
    if "reliability" in files:
        lines += ["## Calibration", "", f"![reliability diagram]({_rel(files['reliability'], out)})", ""]
    lines += ["## Explanations measured (docs/design.md §6b)", "",
              explanation_markdown(metrics, explanation_runs or compared_explanations(
                  metrics.get("explanation"), attention=config.get("loss", {}).get("attention", 0.0))), ""]
    if "explanation" in files:
        lines += [f"![pointing game and relevance-mass lift per structure]({_rel(files['explanation'], out)})", ""]
    lines += ["## Sequences of gazes (Figs. 5, 7, 8)", ""]
    explain_dir = Path(files.get("explain_dir", out / "explain"))
    for rec in records:
        gt = rec.get("ground_truth") or {}
        path = " → ".join(f"{st['structure'] or '?'}{_mark(st)}" for st in rec.get("steps", []))
        lines += [
            f"### {rec['image_id']}: P(melanoma) = {rec['melanoma_probability']:.3f}"
            + (f", ground truth {gt['diagnosis']}" if gt.get("diagnosis") is not None else ""),
            "",
            f"Gazes: {path}" if path else "",
            "",
        ]
        for key, caption in (("gazes", "gaze path, attention maps and masks"), ("masks", "GT vs predicted masks")):
            name = (rec.get("files") or {}).get(key)
            if name:
                lines += [f"![{rec['image_id']} {caption}]({_rel(explain_dir / name, out)})", ""]
    lines += [
        "## Files",
        "",
        "| path | what it is |",
        "|---|---|",
        "| `data/isic/` | the synthetic dataset in the ISIC 2017 layout (images, superpixels, Part 1-3 ground truth) |",
        "| `data/cache/` | the prepared cache (resized arrays, training mean/std, structure presences) |",
        "| `train/config.yaml` | the resolved training configuration |",
        "| `train/metrics.jsonl` | per epoch: training and validation loss terms, validation AUC and AP |",
        "| `train/best.pt`, `train/last.pt` | checkpoints: lowest validation loss, and the last epoch |",
        "| `eval/metrics.json` | every evaluation metric of the test split |",
        "| `eval/predictions.csv` | `image_id,melanoma,label` (ISIC 2017 Part 3 submission shape) |",
        "| `eval/confusion_matrix.png`, `eval/roc.png` | Fig. 6 and the ROC / precision-recall curves |",
        "| `eval/reliability.png` | reliability diagram before and after temperature scaling |",
        "| `explain/` | per explained image: JSON record, gaze figure, mask figure |",
        "| `explanation.png` | pointing game and relevance-mass lift per structure, for the runs compared |",
        "| `training_curves.png` | the curves above |",
        "",
    ]
    return write_text("\n".join(lines), out / "report.md")
