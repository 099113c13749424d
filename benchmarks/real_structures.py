"""Do the gazes land on real structures, are the structures named, and does the diagnosis use them? On real ISIC images.

Run by hand from a repository checkout (never timed in tests; one training per seed, sequentially)::

    nice -n 5 .venv/bin/python benchmarks/real_structures.py [--collection DIR] [--labels CSV] [--out OUT]
        [--seeds 0 1 2] [--preset real] [-o SECTION.KEY=VALUE ...] [--compare-paper-loss] [--summary]

The collection is an ISIC 2018 Task 1-2 folder with real lesion and attribute masks (default: the 800 real images
of ``../shared/realdata/isic2018-dev`` beside the repository, with its ``labels.csv``). The script

1. prepares it once into ``OUT/data/cache_<size>`` (:func:`dermogaze.data.prepare.prepare`, reused when up to
   date); ``--size`` defaults to the model's input times 256/224, the paper's ratio of cache to crop;
2. trains the preset (a shipped name or a YAML file; ``-o`` changes it) once per seed into ``OUT/seed_<s>``, and
   with ``--compare-paper-loss`` the same preset with the paper's loss (``loss.attention=0``, the attention options
   off) into ``OUT/paper_loss/seed_<s>``. A finished run of the same configuration is reused, an interrupted one
   resumed (:func:`attention_supervision.trained`), ``--retrain`` starts afresh;
3. evaluates each best checkpoint on the test split with dermogaze's own evaluation
   (:func:`dermogaze.evaluation.evaluate.evaluate_checkpoint`, into ``RUN/eval_test``; reused when newer than the
   checkpoint): AUC with its bootstrap interval, Jaccard per structure, and from ``metrics.json``'s ``explanation``
   section the pointing game per structure (matched by the model's own loss, matched by the paper's masks-only
   matching, named by the classifier), its no-model reference (a gaze at the centroid of the whole lesion, per
   structure, from the same test masks: ``pointing_centroid``), the relevance lift, the gaze ablation and
   deletion/insertion against a random order;
4. writes the ISIC 2018 Task 2 files of the test split (:func:`dermogaze.apps.predict.predict`, what ``dermogaze
   predict --format isic2018-task2`` writes, into ``RUN/task2_test``) and scores them with the official scorer
   (``isic-challenge-scoring``, micro-average and per attribute), beside the trivial reference "pigment network =
   the true lesion mask, the other attributes empty" scored alike;
5. explains the first :data:`FIGURE_IMAGES` test images with the first seed's model (:func:`dermogaze.explain.run.
   run_explain`, the project's gaze figures: numbered gazes, the structure each names) and stacks their figures
   into one image.

It prints the table of the figures (mean over seeds, then each seed) and the targets below, seed by seed; with
``--summary`` it also writes ``STEM.md``, ``STEM.json`` and ``STEM_gazes.jpg`` (``--results STEM``, default
``benchmarks/results/real_structures``), with the command lines that made them.

Targets (every seed, the preset's runs): named pointing game of the lesion ≥ 0.9; masks-only matched pointing game
of the lesion ≥ 0.9 and of pigment network ≥ 0.7; official Task 2 Jaccard (micro) ≥ 0.22 with pigment network and
globules above 0; Jaccard of the lesion ≥ 0.6; AUC ≥ 0.65 and at most 0.02 below the paper loss's on the same seed
(measured with ``--compare-paper-loss``); deletion AUC ≤ 0.95 × the random order's; and the training within 20
minutes (:data:`TARGETS`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from isic_challenge_scoring.task2 import score as score_task2
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks
from attention_supervision import trained  # noqa: E402
from bench_train import _cpu_name, _load_average  # noqa: E402
from dermogaze.apps.predict import predict  # noqa: E402
from dermogaze.config import Config, load_config  # noqa: E402
from dermogaze.data.cache import load_info, load_split  # noqa: E402
from dermogaze.data.isic2018 import ATTRIBUTES  # noqa: E402
from dermogaze.data.prepare import prepare, read_collection  # noqa: E402
from dermogaze.errors import DermogazeError  # noqa: E402
from dermogaze.evaluation.evaluate import evaluate_checkpoint  # noqa: E402
from dermogaze.explain.run import run_explain  # noqa: E402
from dermogaze.files import read_jsonl, write_json, write_text  # noqa: E402
from dermogaze.training import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: The real-data development collection beside the repository.
COLLECTION = ROOT / "../shared/realdata/isic2018-dev"
#: The options of the paper's loss, appended to the preset's and the command line's for the comparison runs.
PAPER_LOSS = ("loss.attention=0", "loss.attention_warmup=0", "loss.attention_matching=false",
              "loss.class_matching=false")
#: Test images drawn in the figure (the first of the split, not chosen).
FIGURE_IMAGES = 8
#: The issue's targets, checked on every seed's run of the preset.
TARGETS = {
    "pointing_named": {"lesion": 0.9},
    "pointing_masks_matched": {"lesion": 0.9, "pigment_network": 0.7},
    "task2_micro": 0.22,
    "task2_above_zero": ("pigment_network", "globules"),
    "jaccard": {"lesion": 0.6},
    "auc": 0.65,
    "auc_max_drop": 0.02,  # below the paper loss's AUC, same seed
    "deletion_ratio": 0.95,  # deletion AUC over the random order's
    "train_minutes": 20.0,
}


# ----------------------------------------------------------------------------------------------
# Data, training
# ----------------------------------------------------------------------------------------------


def run_config(preset: str, overrides: Sequence[str], cache: Path, seed: int, paper_loss: bool) -> Config:
    """The preset with the overrides (and the paper's loss for the comparison runs), the seed and the cache."""
    cfg = load_config(preset, [*overrides, *(PAPER_LOSS if paper_loss else ()), f"train.seed={seed}"])
    cfg.data.cache = str(cache)
    return cfg


def cache_size(cfg: Config) -> int:
    """The cache side for the model's input: ``image_size · 256 / 224`` (the paper's 256-px cache, 224-px crop)."""
    return round(cfg.model.image_size * 256 / 224)


def train_run(cfg: Config, run: Path, retrain: bool) -> None:
    """Train ``cfg`` into ``run``: reused when finished with the same configuration, resumed when interrupted."""
    if not retrain and trained(run, cfg):
        logging.info("reusing %s", run)
        return
    resume = not retrain and (run / "last.pt").is_file()
    logging.info("%s %s", "resuming" if resume else "training", run)
    train(cfg, run, overwrite=not resume, resume=resume, progress=False)


def newer(path: Path, than: Path) -> bool:
    """``path`` exists and was written after ``than``."""
    return path.is_file() and path.stat().st_mtime > than.stat().st_mtime


# ----------------------------------------------------------------------------------------------
# Task 2 files and the official scorer
# ----------------------------------------------------------------------------------------------


def task2_truth(collection: Path, labels: Path | None, cache: Path, out: Path) -> dict[str, Any]:
    """The test split's ground truth for the scorer: its attribute masks copied into ``out/truth`` and the reference
    prediction "pigment network = the lesion mask, the other attributes empty" written into ``out/reference``.

    The files are found by the reader that prepared the cache, with the cache's split options, and the test ids are
    checked against the cache's. Returns ``{"truth": folder, "reference": folder}``.
    """
    info = load_info(cache)
    options = info["options"]
    split = read_collection(collection, options["layout"], labels=labels, split=options["split"],
                            seed=options["seed"]).splits["test"]
    ids = load_split(cache, "test").ids
    if [s.id for s in split.samples] != ids:
        raise SystemExit(f"{collection}: its test split no longer matches the cache {cache}: prepare it again")
    truth, reference = out / "truth", out / "reference"
    if (out / "done").is_file():
        return {"truth": truth, "reference": reference}
    shutil.rmtree(out, ignore_errors=True)
    truth.mkdir(parents=True)
    reference.mkdir()
    for sample in split.samples:
        for name, path in zip(ATTRIBUTES, sample.attributes, strict=True):
            shutil.copyfile(path, truth / f"{sample.id}_attribute_{name}.png")
        with Image.open(sample.segmentation) as im:
            lesion = np.asarray(im.convert("L")) > 127  # (H, W)
        for name in ATTRIBUTES:
            mask = lesion if name == "pigment_network" else np.zeros_like(lesion)
            Image.fromarray(mask.astype(np.uint8) * 255).save(reference / f"{sample.id}_attribute_{name}.png")
    write_text("", out / "done")
    return {"truth": truth, "reference": reference}


def official_task2(truth: Path, predicted: Path) -> dict[str, Any]:
    """The official ISIC 2018 Task 2 Jaccard of the files in ``predicted``: micro-average and per attribute."""
    scores = score_task2(truth, predicted)
    per_attribute = {k: float(v["jaccard"]) for k, v in scores.items() if k not in ("micro_average", "overall")}
    return {"micro": float(scores["micro_average"]["jaccard"]), "per_attribute": per_attribute}


def task2_run(run: Path, cache: Path, truth: Path, device: str) -> dict[str, Any]:
    """Predict the test split's Task 2 files of ``run/best.pt`` into ``run/task2_test`` and score them (reused when
    the score is newer than the checkpoint)."""
    done = run / "task2_test_score.json"
    if newer(done, run / "best.pt"):
        return json.loads(done.read_text())
    files = run / "task2_test"
    shutil.rmtree(files, ignore_errors=True)  # the scorer must find one file per image and attribute
    predict(run / "best.pt", cache, "test", files, fmt="isic2018-task2", device=device, progress=False)
    scores = official_task2(truth, files)
    write_json(scores, done)
    return scores


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def evaluate_run(run: Path, cache: Path, faithfulness: int, device: str) -> dict[str, Any]:
    """The figures of one run on the test split, from dermogaze's evaluation (``run/eval_test/metrics.json``)."""
    done = run / "eval_test" / "metrics.json"
    metrics = json.loads(done.read_text()) if newer(done, run / "best.pt") else None
    if (metrics is not None and "jaccard_best_step" in metrics["structures"]
            and metrics["explanation"]["faithfulness_images"] == min(faithfulness, metrics["n_images"])):
        logging.info("reusing the evaluation %s", done)
    else:
        metrics = evaluate_checkpoint(run / "best.pt", cache, "test", run / "eval_test", device=device, figures=False,
                                      progress=False, faithfulness=faithfulness)["metrics"]
    ex = metrics["explanation"]
    history = read_jsonl(run / "metrics.jsonl")

    def per_structure(section: dict[str, Any] | None) -> dict[str, float | None]:
        return dict(section["per_structure"]) if section else {}

    return {
        "auc": metrics["diagnosis"]["auc"],
        "auc_ci": metrics["diagnosis_ci"]["auc"],
        "jaccard": metrics["structures"]["jaccard"],
        "jaccard_images": metrics["structures"]["jaccard_n"],
        "jaccard_best_step": metrics["structures"]["jaccard_best_step"],
        "task2_dermogaze": metrics["task2_jaccard"],  # the scorer's definition on the model's crop of the cache
        "pointing_matched": per_structure(ex["pointing_matched"]),
        "pointing_masks_matched": per_structure(ex["pointing_masks_matched"]),
        "pointing_named": per_structure(ex["pointing_named"]),
        "pointing_centroid": per_structure(ex["pointing_centroid"]),
        "hallucination_rate": (ex["hallucination_rate"] or {}).get("overall"),
        "relevance_lift": per_structure(ex["relevance_lift"]),
        "present_images": ex["present_images"],
        "ablation_flip_fraction": ex["ablation"]["flip_fraction"],
        "ablation_mean_abs_delta": float(np.mean(ex["ablation"]["mean_abs_delta_per_step"] or [0.0])),
        "deletion": None if ex["deletion"] is None else
        {"auc": ex["deletion"]["auc"], "random_auc": ex["deletion"]["random_auc"]},
        "insertion": None if ex["insertion"] is None else
        {"auc": ex["insertion"]["auc"], "random_auc": ex["insertion"]["random_auc"]},
        "faithfulness_images": ex["faithfulness_images"],
        "test_images": metrics["n_images"],
        "train_s": sum(row["time_s"] for row in history),
        "epochs": len(history),
    }


def check_targets(run: dict[str, Any], paper: dict[str, Any] | None) -> dict[str, bool | None]:
    """The targets of one seed's preset run (``None``: not measured, e.g. no paper-loss run to compare with)."""

    def at_least(value: float | None, target: float) -> bool:
        return value is not None and value >= target

    checks: dict[str, bool | None] = {}
    for s, v in TARGETS["pointing_named"].items():
        checks[f"named pointing game {s} >= {v:g}"] = at_least(run["pointing_named"].get(s), v)
    for s, v in TARGETS["pointing_masks_matched"].items():
        checks[f"masks-only pointing game {s} >= {v:g}"] = at_least(run["pointing_masks_matched"].get(s), v)
    task2 = run["task2"]
    checks[f"Task 2 Jaccard >= {TARGETS['task2_micro']:g}"] = at_least(task2["micro"], TARGETS["task2_micro"])
    for s in TARGETS["task2_above_zero"]:
        checks[f"Task 2 Jaccard {s} > 0"] = task2["per_attribute"].get(s, 0.0) > 0.0
    for s, v in TARGETS["jaccard"].items():
        checks[f"Jaccard {s} >= {v:g}"] = at_least(run["jaccard"].get(s), v)
    checks[f"AUC >= {TARGETS['auc']:g}"] = at_least(run["auc"], TARGETS["auc"])
    drop = f"AUC at most {TARGETS['auc_max_drop']:g} below the paper loss's"
    checks[drop] = None if paper is None else bool(run["auc"] >= paper["auc"] - TARGETS["auc_max_drop"])
    deletion = run["deletion"]
    checks[f"deletion AUC <= {TARGETS['deletion_ratio']:g} x random"] = None if deletion is None else bool(
        deletion["auc"] <= TARGETS["deletion_ratio"] * deletion["random_auc"])
    checks[f"training <= {TARGETS['train_minutes']:g} min"] = run["train_s"] <= 60 * TARGETS["train_minutes"]
    return checks


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------


def gaze_figure(run: Path, cache: Path, path: Path, device: str, n: int = FIGURE_IMAGES) -> Path:
    """The project's gaze figures of the first ``n`` test images (``run/explain_test``), stacked into ``path``."""
    folder = run / "explain_test"
    shutil.rmtree(folder, ignore_errors=True)
    records = run_explain(run / "best.pt", ["test"], folder, data=cache, limit=n, device=device, progress=False)
    panels = [Image.open(folder / r["files"]["gazes"]).convert("RGB") for r in records]
    width = max(p.width for p in panels)
    sheet = Image.new("RGB", (width, sum(p.height for p in panels)), "white")
    y = 0
    for p in panels:
        sheet.paste(p, (0, y))
        y += p.height
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, quality=85, optimize=True)  # JPEG: a palette would band the photographs, PNG weighs 3.5 MB
    return path


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def over_seeds(runs: dict[str, dict[str, Any]], get: Callable[[dict[str, Any]], float | None],
               fmt: Callable[[float | None], str] = _f) -> str:
    """``mean (seed 0 / seed 1 / ...)`` of one figure, or the single value with one seed."""
    values = [get(r) for r in runs.values()]
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(_mean(values))} ({' / '.join(fmt(v) for v in values)})"


def means(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of every number of the runs' figures (nested dicts kept, lists and ``None`` left out)."""

    def walk(items: list[Any]) -> Any:
        first = next((i for i in items if i is not None), None)
        if isinstance(first, dict):
            return {k: walk([i.get(k) for i in items if isinstance(i, dict)]) for k in first}
        if isinstance(first, bool) or not isinstance(first, int | float):
            return None
        return _mean([i for i in items if isinstance(i, int | float)])

    return walk(list(runs.values()))


def markdown(report: dict[str, Any]) -> str:
    variants = report["runs"]
    names = report["structures"]
    attributes = names[2:]
    heads = list(variants)
    first = next(iter(variants[heads[0]].values()))

    def row(label: str, get: Callable[[dict[str, Any]], float | None], fmt: Callable[[float | None], str] = _f) -> str:
        return f"| {label} | " + " | ".join(over_seeds(variants[v], get, fmt) for v in heads) + " |"

    def nested(key: str, sub: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda r: (r.get(key) or {}).get(sub)

    ref = report["reference"]
    cache = report["cache"]
    lines = [
        "# Real structures: gazes, named structures and the diagnosis on real ISIC images",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['threads']} threads, torch "
        f"{report['machine']['torch']}; load average before/after {report['machine']['load_before']} / "
        f"{report['machine']['load_after']}; written {report['written']}.",
        "",
        f"Collection `{report['collection']}` prepared at {cache['size']} px: train {cache['counts']['train']}, "
        f"val {cache['counts']['val']}, test {cache['counts']['test']} images ({cache['melanoma']['test']} melanomas "
        f"in the test split); preset `{report['preset']}`"
        + ("".join(f", `{o}`" for o in report["overrides"]) if report["overrides"] else "")
        + f" ({report['model']}); seeds {', '.join(map(str, report['seeds']))}. Every figure is on the test split: "
        "the mean over the seeds, then each seed in parentheses.",
        "",
        "| | " + " | ".join(report["labels"][v] for v in heads) + " |",
        "|---|" + "---|" * len(heads),
        row("AUC", lambda r: r["auc"]),
        "| AUC 95% interval | " + " | ".join(
            " / ".join(f"[{lo:.2f}, {hi:.2f}]" for lo, hi in (r["auc_ci"] for r in variants[v].values()))
            for v in heads) + " |",
    ]
    lines += [row(f"Jaccard {s}", nested("jaccard", s)) for s in names]
    lines += [row(f"Jaccard {s}, best single step (any name)", nested("jaccard_best_step", s))
              for s in ("lesion", "skin", "pigment_network", "globules")]
    lines += [row("Task 2 Jaccard, official scorer, micro", lambda r: r["task2"]["micro"])]
    lines += [row(f"Task 2 Jaccard, official scorer, {s}", lambda r, s=s: r["task2"]["per_attribute"].get(s))
              for s in attributes]
    lines += [row("Task 2 Jaccard, dermogaze's evaluation (model's crop), micro",
                  lambda r: r["task2_dermogaze"]["micro_average"])]
    lines += ["| reference \"pigment network = the true lesion mask\": official micro / pigment network | "
              + " | ".join(f"{_f(ref['micro'])} / {_f(ref['per_attribute'].get('pigment_network'))}" for _ in heads)
              + " |"]
    for s in names:
        lines.append(f"| pointing game {s}: matched / masks-only / named | " + " | ".join(
            " / ".join(_f(_mean([r[k].get(s) for r in variants[v].values()]))
                       for k in ("pointing_matched", "pointing_masks_matched", "pointing_named")) for v in heads)
            + " |")
    lines += [row(f"no-model reference (a gaze at the lesion's centroid): {s}", nested("pointing_centroid", s))
              for s in names]
    lines += [row("hallucination rate (named, absent)", lambda r: r["hallucination_rate"])]
    lines += [row(f"relevance lift {s}", nested("relevance_lift", s)) for s in names]
    lines += [
        row("gaze ablation: decisions flipped", lambda r: r["ablation_flip_fraction"]),
        row("gaze ablation: mean \\|ΔP(melanoma)\\|", lambda r: r["ablation_mean_abs_delta"]),
        row("deletion AUC (most attended first)", lambda r: (r["deletion"] or {}).get("auc")),
        row("deletion AUC, random order", lambda r: (r["deletion"] or {}).get("random_auc")),
        row("insertion AUC", lambda r: (r["insertion"] or {}).get("auc")),
        row("insertion AUC, random order", lambda r: (r["insertion"] or {}).get("random_auc")),
        row("training minutes", lambda r: r["train_s"] / 60, lambda v: f"{v:.1f}"),
        row("epochs", lambda r: r["epochs"], lambda v: f"{v:g}"),
        "",
        "Test images per structure (center crop): "
        + ", ".join(f"{s} {n}" for s, n in first["present_images"].items())
        + f"; deletion/insertion on {first['faithfulness_images']} of {first['test_images']} images. Pointing game: "
        "matched = the model's own loss's Hungarian matching; masks-only = the paper's matching (masks only); named = "
        "the structure the step's classifier names (naming an absent one is a miss). The no-model reference "
        "scores a gaze at the centroid of the whole lesion for every structure. The Task 2 reference predicts the "
        "true lesion mask as pigment network and nothing else. Jaccard = the union of the steps that name the "
        "structure against its mask; best single step = the step whose mask overlaps it most, whatever it names "
        "(how well the decoder segments it at all).",
        "",
        f"## Targets, per seed ({report['labels'][heads[0]]})",
        "",
    ]
    for seed, checks in report["targets"].items():
        measured = {k: v for k, v in checks.items() if v is not None}
        lines.append(f"- seed {seed}: {sum(measured.values())}/{len(measured)} met; " + "; ".join(
            f"{k}: {'not measured' if v is None else 'met' if v else 'NOT met'}" for k, v in checks.items()))
    lines += ["", f"All targets met on every seed: **{'yes' if report['all_met'] else 'no'}** (a target not "
              "measured is not met: the AUC comparison needs `--compare-paper-loss`).", ""]
    if report.get("figure"):
        lines += [f"![Gazes of the first {FIGURE_IMAGES} test images]({report['figure']})", "",
                  f"The first {FIGURE_IMAGES} test images (not chosen), seed {report['seeds'][0]}'s model of the "
                  "preset: the numbered gaze path, each gaze's attention and the structure it names (`dermogaze "
                  "explain`'s figures, stacked).", ""]
    lines += ["## Commands", "", "```", *report["commands"], "```", ""]
    if report.get("notes"):
        lines += ["## Notes", "", report["notes"], ""]
    return "\n".join(lines)


def shown(path: Path) -> str:
    """A path as a command line shows it: relative to the repository when inside it or beside it."""
    path = Path(os.path.abspath(path))
    for base, prefix in ((ROOT, ""), (ROOT.parent, "../")):
        if path.is_relative_to(base):
            return prefix + str(path.relative_to(base))
    return str(path)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="real_structures", description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", type=Path, default=COLLECTION,
                   help="ISIC 2018 Task 1-2 folder with real masks (default: ../shared/realdata/isic2018-dev)")
    p.add_argument("--labels", type=Path, help="its diagnosis CSV (default: COLLECTION/labels.csv)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "real_structures",
                   help="data and runs (default: runs/real_structures)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="real", help="a shipped preset or a YAML file (default: real)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change the preset (every run, the paper-loss runs included)")
    p.add_argument("--size", type=int, help="cache side (default: model.image_size x 256/224)")
    p.add_argument("--compare-paper-loss", action="store_true",
                   help="also train the preset with the paper's loss (loss.attention=0) per seed, as a second column")
    p.add_argument("--faithfulness", type=int, default=100,
                   help="test images that get deletion/insertion and stability (default 100: the whole test split of "
                   "the default collection)")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's)")
    p.add_argument("--retrain", action="store_true", help="retrain runs already trained")
    p.add_argument("--results", type=Path, default=RESULTS / "real_structures",
                   help="results stem of --summary: STEM.md, STEM.json, STEM_gazes.jpg")
    p.add_argument("--notes", default="", help="a paragraph added to the Markdown (what was tried and what it did)")
    p.add_argument("--summary", action="store_true", help="write the results files (else print the table only)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = args.labels or args.collection / "labels.csv"
    load_before = _load_average()
    start = time.perf_counter()

    variants = {"preset": False, **({"paper_loss": True} if args.compare_paper_loss else {})}
    try:
        probe = run_config(args.preset, args.override, Path("."), args.seeds[0], False)
        size = args.size or cache_size(probe)
        cache = (args.out / "data" / f"cache_{size}").resolve()
        info = prepare(args.collection, cache, size=size, labels=labels, progress=False)
        configs = {(v, s): run_config(args.preset, args.override, cache, s, paper)
                   for v, paper in variants.items() for s in args.seeds}
    except DermogazeError as exc:
        raise SystemExit(f"real_structures: {exc}") from None
    if info.get("layout") != "isic2018" or not info.get("has_masks"):
        raise SystemExit(f"{args.collection}: not an ISIC 2018 Task 1-2 collection with masks (its cache: {cache})")
    dirs = {(v, s): (args.out if v == "preset" else args.out / v) / f"seed_{s}" for v, s in configs}
    for key in sorted(configs, key=lambda k: (k[1], k[0])):  # seed by seed, the preset first
        train_run(configs[key], dirs[key], args.retrain)

    reference_files = task2_truth(args.collection, labels, cache, args.out / "data" / "task2_test")
    reference = official_task2(reference_files["truth"], reference_files["reference"])
    runs: dict[str, dict[str, Any]] = {v: {} for v in variants}
    for (v, s), run in dirs.items():
        device = configs[v, s].train.device
        figures = evaluate_run(run, cache, args.faithfulness, device)
        figures["task2"] = task2_run(run, cache, reference_files["truth"], device)
        runs[v][str(s)] = figures
    targets = {str(s): check_targets(runs["preset"][str(s)], runs.get("paper_loss", {}).get(str(s)))
               for s in args.seeds}

    figure_path = (args.results.parent / f"{args.results.name}_gazes.jpg" if args.summary
                   else args.out / "real_structures_gazes.jpg")
    gaze_figure(dirs["preset", args.seeds[0]], cache, figure_path, configs["preset", args.seeds[0]].train.device)

    argv_shown = list(sys.argv[1:] if argv is None else argv)
    if "--notes" in argv_shown:  # the notes are printed below the table, not in the command
        k = argv_shown.index("--notes")
        argv_shown = argv_shown[:k] + ["--notes", "..."] + argv_shown[k + 2:]
    overrides = "".join(f" -o {shlex.quote(o)}" for o in args.override)
    commands = [
        " ".join(shlex.quote(a) for a in ["python", "benchmarks/real_structures.py", *argv_shown]),
        "# what it ran, as dermogaze commands:",
        f"dermogaze data prepare --isic {shown(args.collection)} --labels {shown(labels)} --out {shown(cache)} "
        f"--size {size}",
    ]
    for (v, s), run in dirs.items():
        paper = "".join(f" -o {o}" for o in PAPER_LOSS) if v == "paper_loss" else ""
        commands += [f"dermogaze train --data {shown(cache)} --preset {args.preset}{overrides}{paper} "
                     f"-o train.seed={s} --out {shown(run)}",
                     f"dermogaze evaluate --checkpoint {shown(run / 'best.pt')} --split test --faithfulness "
                     f"{args.faithfulness} --out {shown(run / 'eval_test')}",
                     f"dermogaze predict --checkpoint {shown(run / 'best.pt')} --data {shown(cache)} --split test "
                     f"--format isic2018-task2 --out {shown(run / 'task2_test')}"]
    model = probe.model
    report = {
        "command": commands[0],
        "commands": commands,
        "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_before": load_before, "load_after": _load_average()},
        "written": time.strftime("%Y-%m-%d %H:%M"),
        "collection": shown(args.collection),
        "cache": {k: info[k] for k in ("size", "counts", "melanoma", "presences")},
        "preset": args.preset,
        "overrides": args.override,
        "model": f"{model.name}, {model.image_size} px, width {model.width:g}, T = {model.steps}",
        "seeds": args.seeds,
        "structures": list(info["structures"]),
        "labels": {"preset": f"`{args.preset}`", "paper_loss": f"`{args.preset}` with the paper's loss (λ = 0)"},
        "runs": runs,
        "mean": {v: means(r) for v, r in runs.items()},
        "reference": reference,
        "targets": targets,
        "target_values": TARGETS,
        "all_met": all(v is True for checks in targets.values() for v in checks.values()),
        "figure": figure_path.name if args.summary else str(figure_path),
        "notes": args.notes,
        "total_s": time.perf_counter() - start,
    }
    text = markdown(report)
    if args.summary:
        write_json(report, args.results.parent / f"{args.results.name}.json")
        write_text(text, args.results.parent / f"{args.results.name}.md")
        logging.info("written %s.md, .json and %s", args.results, figure_path.name)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
