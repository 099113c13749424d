"""Attention supervision (``loss.attention`` = λ, docs/design.md §6b) against the paper's loss (λ = 0), on the demo.

Run by hand from a repository checkout (never timed in tests; a few minutes per training run on a CPU)::

    nice -n 5 .venv/bin/python benchmarks/attention_supervision.py [--lam 1.0] [--seeds 0 1 2] [--out DIR]

It builds the demo's synthetic dataset (:data:`dermogaze.experiments.demo.run.DEMO_DATA`, reused when already
prepared in ``OUT/data``), trains the ``demo`` preset once with ``loss.attention=0`` (the paper's loss: the
preset's warm-up and matching options off, inert anyway) and once with ``loss.attention=λ`` for each seed
(same seed, same epochs; every other setting, the repeat-factor sampling included, is the preset's),
evaluates each best checkpoint on the synthetic test split (:func:`dermogaze.evaluation.evaluate.evaluate_checkpoint`,
with the explanation measures on every test image) and writes
``benchmarks/results/attention_supervision.md`` and ``.json`` (``--stage evaluate`` evaluates and reports only
the runs already trained; an evaluation newer than its checkpoint is reused): per run the test AUC, the matched
pointing game per structure and the relevance-mass lift per structure, and the issue's targets for
the supervised model checked seed by seed:

* matched pointing game ≥ 0.9 for lesion and skin;
* relevance-mass lift above the unsupervised model's (same seed) for every structure present in at
  least :data:`MIN_IMAGES` test images;
* test AUC at most :data:`MAX_AUC_DROP` below the unsupervised model's (same seed).

``-o SECTION.KEY=VALUE`` changes the preset for both λ (the ``loss.attention*`` options only for λ > 0, where
they act); each set of options trains into its own folder (``OUT/lambda_1+attention_warmup=4+.../seed_0``).
``--split val`` evaluates on the validation split instead (``eval_val``, results stem of your choice): the
options of the supervised model are chosen there, by the same targets, before the test split is looked at.

``--summary`` writes the option search's final table, ``STEM_options.md``, and its record ``STEM_options.json``:
each set of options tried, its split and the targets met per seed, the misses named. The record holds the figures
the table needs from each results file (one entry per results stem); a results file ``STEM*.json`` beside ``STEM``
adds its entry or replaces the one of its name, so a new set of options joins the table without the earlier
results files.

A run whose folder already holds a finished training (``best.pt`` and every epoch in
``metrics.jsonl``) of the same configuration is not retrained (``--retrain`` forces it); one of another
configuration (an earlier preset) is refused by name. ``--stage train`` only trains.

The committed results were made with the options named on the command line even where the preset now holds
them (``-o train.repeat_threshold=1 -o loss.attention_warmup=4 -o loss.attention_matching=true``), so the
command keeps its meaning if the preset changes; results files made before the preset took them are relative
to the preset of their time (see ``attention_supervision_options.md``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from dermogaze.config import Config, load_config
from dermogaze.evaluation.evaluate import evaluate_checkpoint
from dermogaze.experiments.demo.run import DEMO_DATA, prepare_demo_data
from dermogaze.files import read_jsonl, write_json, write_text
from dermogaze.training import train

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: Structures must be present in at least this many test images for the lift target.
MIN_IMAGES = 15
#: The supervised model's test AUC may be at most this much below the unsupervised one's.
MAX_AUC_DROP = 0.02
#: Matched pointing game the supervised model must reach for these structures.
POINTING_TARGET = {"lesion": 0.9, "skin": 0.9}


def applied(overrides: list[str], lam: float) -> list[str]:
    """The overrides that change the run of ``lam``: the ``loss.attention*`` options are inert at λ = 0."""
    return [o for o in overrides if lam != 0 or not o.startswith("loss.attention")]


def run_dir(out: Path, lam: float, seed: int, overrides: list[str] = ()) -> Path:
    """``OUT/lambda_L[+KEY=VALUE...]/seed_S``: runs of other options never share a folder."""
    tag = "".join(f"+{o.removeprefix('loss.').removeprefix('train.')}" for o in applied(list(overrides), lam))
    return out / f"lambda_{lam:g}{tag}" / f"seed_{seed}"


def run_config(cache: Path, lam: float, seed: int, overrides: list[str]) -> Config:
    """The demo preset with λ, the seed and the options that act at λ; λ = 0 is the paper's loss exactly.

    The preset's own attention options (warm-up, matching) are set to their inert defaults at λ = 0, so the
    unsupervised run's configuration reads as the paper's loss whatever the preset holds.
    """
    paper = ["loss.attention_warmup=0", "loss.attention_matching=false"] if lam == 0 else []
    cfg = load_config("demo", [*paper, *applied(overrides, lam), f"loss.attention={lam}", f"train.seed={seed}"])
    cfg.data.cache = str(cache)
    cfg.train.device = "cpu"
    return cfg


def trained(run: Path, cfg: Config) -> bool:
    """The run folder holds a finished training of ``cfg``.

    Raises:
        SystemExit: the folder holds a run of another configuration (an earlier demo preset, say), which
        must not be reused under this one's name.
    """
    history = run / "metrics.jsonl"
    if not ((run / "best.pt").is_file() and history.is_file() and len(read_jsonl(history)) >= cfg.train.epochs):
        return False
    saved = Config.from_dict(yaml.safe_load((run / "config.yaml").read_text()), source=str(run / "config.yaml"))
    now = cfg.to_dict()
    differ = [
        f"{section}.{key}: {value!r} there, {now[section][key]!r} now"
        for section, values in saved.to_dict().items()
        for key, value in values.items()
        if value != now[section][key]
    ]
    if differ:
        raise SystemExit(
            f"{run} holds a run of another configuration ({'; '.join(differ)}): --retrain to replace it, or "
            "--out to train elsewhere"
        )
    return True


def train_run(cache: Path, run: Path, lam: float, seed: int, retrain: bool, overrides: list[str]) -> float | None:
    """Train the demo preset with λ and seed into ``run``; the seconds it took (None when reused).

    An interrupted run (``last.pt`` without every epoch) is resumed.
    """
    cfg = run_config(cache, lam, seed, overrides)
    if not retrain and trained(run, cfg):
        logging.info("reusing %s", run)
        return None
    resume = not retrain and (run / "last.pt").is_file()
    tic = time.perf_counter()
    train(cfg, run, overwrite=not resume, resume=resume, progress=False)
    return time.perf_counter() - tic


def evaluate_run(cache: Path, run: Path, faithfulness: int, split: str = "test") -> dict[str, Any]:
    """AUC and the explanation section of the run's best checkpoint on ``split``."""
    tic = time.perf_counter()
    done = run / f"eval_{split}" / "metrics.json"
    metrics = None
    if done.is_file() and done.stat().st_mtime > (run / "best.pt").stat().st_mtime:
        metrics = json.loads(done.read_text())
        if "pointing_masks_matched" in metrics["explanation"]:  # else: made before the loss's matching was used
            logging.info("reusing the evaluation %s", done)
        else:
            metrics = None
    if metrics is None:
        metrics = evaluate_checkpoint(
            run / "best.pt", cache, split, run / f"eval_{split}", device="cpu", figures=False, progress=False,
            n_resamples=200, faithfulness=faithfulness,
        )["metrics"]
    ex = metrics["explanation"]
    return {
        "auc": metrics["diagnosis"]["auc"],
        "pointing_matched": ex["pointing_matched"],
        "pointing_masks_matched": ex["pointing_masks_matched"],
        "pointing_named": ex["pointing_named"],
        "hallucination_rate": ex["hallucination_rate"],
        "relevance_mass": ex["relevance_mass"],
        "relevance_lift": ex["relevance_lift"],
        "ablation": ex["ablation"],
        "deletion": ex["deletion"],
        "insertion": ex["insertion"],
        "present_images": ex["present_images"],
        "pointing_centroid": ex["pointing_centroid"]["per_structure"],
        "evaluate_s": time.perf_counter() - tic,
        "train_s": sum(row["time_s"] for row in read_jsonl(run / "metrics.jsonl")),
        "epochs": len(read_jsonl(run / "metrics.jsonl")),
    }


def miss_figure(cache: Path, run: Path, structure: str, path: Path, split: str = "test", rows: int = 6) -> Path:
    """The first ``rows`` images of ``split`` where the gaze matched to ``structure`` misses it (pointing game).

    Per image: the picture with the step's attention peak (red cross) and the outline of the structure's
    ground truth, the ground truth of the structure, that of the structure at the peak, and the step's
    attention map; the checkpoint's loss's Hungarian matching, as in the explanation measures.
    """
    import matplotlib.pyplot as plt
    import torch
    from torch.utils.data import DataLoader

    from dermogaze.data.dataset import DermoscopyDataset
    from dermogaze.evaluation.plots import save_figure
    from dermogaze.losses import area_fraction, pairwise_soft_iou_loss
    from dermogaze.metrics.explanation import attention_peaks, hungarian_steps, pointing_and_relevance
    from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(run / "best.pt")
    model = model_from_checkpoint(ckpt).eval()
    loss = Config.from_dict(ckpt["config"]).loss
    names = list(ckpt["structures"])
    s = names.index(structure)
    dataset = DermoscopyDataset(
        cache, split, image_size=int(ckpt["image_size"]), normalisation=(ckpt["mean"], ckpt["std"])
    )
    mean, std = (torch.tensor(ckpt[k]).view(3, 1, 1) for k in ("mean", "std"))
    misses: list[tuple[Any, ...]] = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=32):
            out = model(batch["image"])
            gt = batch["masks"].float()
            grid = area_fraction(gt, tuple(out.attention.shape[-2:]))
            hit, relevance, _ = pointing_and_relevance(out.attention, grid)
            matched = hungarian_steps(pairwise_soft_iou_loss(out.masks, gt), batch["present"], relevance, loss)
            peaks = attention_peaks(out.attention)
            for b, t in zip(*torch.nonzero(matched == s, as_tuple=True), strict=True):
                if not hit[b, t, s] and len(misses) < rows:
                    peak = int(peaks[b, t])
                    at_peak = int(grid[b, :, peak // grid.shape[-1], peak % grid.shape[-1]].argmax())
                    misses.append((batch["id"][b], (batch["image"][b] * std + mean).clamp(0, 1).permute(1, 2, 0),
                                   gt[b], out.attention[b, t], int(t), peak, at_peak, float(relevance[b, t, s])))
    fig, axes = plt.subplots(len(misses), 4, figsize=(10, 2.5 * len(misses)), squeeze=False, layout="constrained")
    for ax, (image_id, image, masks, attention, t, peak, other, rel) in zip(axes, misses, strict=True):
        h, w = attention.shape
        cell = image.shape[0] / h
        y, x = (peak // w + 0.5) * cell - 0.5, (peak % w + 0.5) * cell - 0.5
        ax[0].imshow(image)
        ax[0].contour(masks[s].numpy(), levels=[0.5], colors="yellow", linewidths=0.8)
        ax[0].plot(x, y, "r+", markersize=12, markeredgewidth=2)
        ax[0].set_title(f"{image_id}, gaze {t + 1}", fontsize=8)
        ax[1].imshow(masks[s], cmap="gray", vmin=0, vmax=1)
        ax[1].set_title(f"GT {structure}", fontsize=8)
        ax[2].imshow(masks[other], cmap="gray", vmin=0, vmax=1)
        ax[2].set_title(f"GT {names[other]} (at the peak)", fontsize=8)
        ax[3].imshow(attention, cmap="magma")
        ax[3].set_title(f"attention, mass on {structure} {rel:.2f}", fontsize=8)
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"{structure} pointing-game misses, {run.parent.name}/{run.name} ({split} split)", fontsize=9)
    return save_figure(fig, path)


def check_targets(sup: dict[str, Any], base: dict[str, Any]) -> dict[str, bool]:
    """The issue's targets for one seed: the supervised run ``sup`` against the unsupervised ``base``."""
    point = sup["pointing_matched"]["per_structure"]
    checks = {f"pointing {s} >= {v:g}": bool(point.get(s, 0.0) >= v) for s, v in POINTING_TARGET.items()}
    present = sup["present_images"]
    for s, n in present.items():
        if n >= MIN_IMAGES:
            checks[f"lift {s} above λ=0"] = bool(
                sup["relevance_lift"]["per_structure"][s] > base["relevance_lift"]["per_structure"][s]
            )
    checks[f"AUC within {MAX_AUC_DROP} of λ=0"] = bool(sup["auc"] >= base["auc"] - MAX_AUC_DROP)
    return checks


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _masks_only(run: dict[str, Any]) -> dict[str, float | None]:
    """A run's per-structure pointing game under the paper's matching (results from before it was kept: the
    matched one, which was the paper's then)."""
    return (run.get("pointing_masks_matched") or run["pointing_matched"])["per_structure"]


def _deletion(d: dict[str, Any] | None) -> str:
    """``AUC (random order's)``; ``–`` when not measured (``--faithfulness 0``)."""
    return "–" if d is None else f"{_f(d['auc'])} ({_f(d['random_auc'])})"


def markdown(report: dict[str, Any]) -> str:
    lam, seeds = report["lambda"], report["seeds"]
    runs = report["runs"]
    first = runs[f"0/{seeds[0]}"]
    names = list(first["relevance_lift"]["per_structure"])
    supervised = [o for o in report.get("overrides", []) if o.startswith("loss.attention")]
    both = [o for o in report.get("overrides", []) if not o.startswith("loss.attention")]
    lines = [
        "# Attention supervision on the demo (synthetic data)",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; training {sum(r['train_s'] for r in runs.values()) / 60:.0f} min in all "
        "(sum of the epochs' wall-clock times, several runs at once on a shared, loaded machine: an epoch took "
        f"{min(r['train_s'] / r['epochs'] for r in runs.values()):.0f}-"
        f"{max(r['train_s'] / r['epochs'] for r in runs.values()):.0f} s on average per run).",
        "",
        "The `demo` preset trained with `loss.attention=0` (the paper's loss: warm-up and matching off) and with "
        f"`loss.attention={lam:g}`" + "".join(f", `{o}`" for o in supervised)
        + (f"; both with {', '.join(f'`{o}`' for o in both)}" if both else "")
        + f"; same seed and epochs, seeds {', '.join(map(str, seeds))}; best checkpoints evaluated on the "
        f"synthetic {report.get('split', 'test')} split ({report['test_images']} images). Pointing game = matched "
        "(the loss's Hungarian matching: with `loss.attention_matching=true` it weighs the gazes, as in training), "
        "one attention cell of tolerance; \"masks only\" = under the paper's matching (the same for a model trained "
        "without the option); lift = relevance mass / mean(m_s) (uniform attention = 1).",
        "",
        f"| λ | seed | {report.get('split', 'test')} AUC | " + " | ".join(f"pointing {n}" for n in names) + " | "
        + " | ".join(f"pointing {n}, masks only" for n in POINTING_TARGET) + " | "
        + " | ".join(f"lift {n}" for n in names) + " | ablation flips | deletion AUC (random) | train s (epochs) |",
        "|---|---|---|" + "---|" * (2 * len(names) + len(POINTING_TARGET)) + "---|---|---|",
    ]
    for key, r in runs.items():
        lam_k, seed = key.split("/")
        point, lift = r["pointing_matched"]["per_structure"], r["relevance_lift"]["per_structure"]
        masks_only = _masks_only(r)
        lines.append(
            f"| {lam_k} | {seed} | {_f(r['auc'])} | " + " | ".join(_f(point.get(n)) for n in names) + " | "
            + " | ".join(_f(masks_only.get(n)) for n in POINTING_TARGET) + " | "
            + " | ".join(_f(lift.get(n)) for n in names)
            + f" | {_f(r['ablation']['flip_fraction'])} | {_deletion(r['deletion'])}"
            f" | {r['train_s']:.0f} ({r['epochs']}) |"
        )
    lines += ["", f"{report.get('split', 'test').capitalize()} images per structure: "
              + ", ".join(f"{n} {c}" for n, c in first["present_images"].items()) + "."]
    if report.get("centroid_pointing"):
        lines += ["", "Reference: a gaze at the centroid of the whole lesion (no model, every structure) scores "
                  + ", ".join(f"{n} {_f(v)}" for n, v in report["centroid_pointing"].items())
                  + " in the pointing game on the same images."]
    lines += [""]
    lines += [f"## Targets for λ = {lam:g}, per seed", ""]
    for seed, checks in report["targets"].items():
        met = sum(checks.values())
        lines.append(f"- seed {seed}: {met}/{len(checks)} met; "
                     + "; ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()))
    lines += ["", report.get("notes", ""), ""]
    return "\n".join(lines)


def options_entry(path: Path) -> dict[str, Any]:
    """The figures of one results file that the options table shows: its options and, per seed, the AUCs, the lesion
    pointing games and the targets met."""
    report = json.loads(path.read_text())
    lam, runs = report["lambda"], report["runs"]
    seeds = {}
    for seed in report["seeds"]:
        sup = runs[f"{lam:g}/{seed}"]
        seeds[str(seed)] = {
            "auc_lambda0": runs[f"0/{seed}"]["auc"],
            "auc": sup["auc"],
            "lesion_pointing": sup["pointing_matched"]["per_structure"]["lesion"],
            "lesion_pointing_masks_only": _masks_only(sup)["lesion"],
            "targets": report["targets"][str(seed)],
        }
    return {"results": path.stem, "command": report["command"], "lambda": lam,
            "overrides": report.get("overrides", []), "split": report.get("split", "test"), "seeds": seeds}


def collect_options(stem: Path) -> list[dict[str, Any]]:
    """Every set of options tried: the entries of ``STEM_options.json``, each replaced or joined by the results file
    ``STEM*.json`` of its name beside it, in the order of their names."""
    record = stem.parent / f"{stem.name}_options.json"
    entries = {e["results"]: e for e in json.loads(record.read_text())["options"]} if record.is_file() else {}
    for path in sorted(stem.parent.glob(f"{stem.name}*.json")):
        if path != record:
            entries[path.stem] = options_entry(path)
    return [entries[name] for name in sorted(entries)]


def summary(entries: list[dict[str, Any]]) -> str:
    """Markdown: for every set of options (:func:`options_entry`), its split and the targets met per seed, the
    misses named."""
    lines = [
        "# Attention supervision: every set of options tried",
        "",
        "Written by `python benchmarks/attention_supervision.py --summary` from `attention_supervision_options.json` "
        "(the figures below of every results file of the search, one entry each, named by its results stem) and the "
        "results files beside it; the issue's targets for the supervised model (same seeds and λ = 0 runs), per "
        "seed: met of checked, then the misses. Matched pointing game = the model's own loss's matching; the "
        "masks-only lesion figure = the paper's matching. The results without `train.repeat_threshold` among their "
        "options were made before the demo preset took repeat-factor sampling and the attention supervision: every "
        "image once per epoch, λ = 0 (their options are relative to that preset).",
        "",
        "| results | λ | options | split | per seed: targets met (misses) | lesion pointing | lesion, masks only "
        "| AUC drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        seeds = list(entry["seeds"].values())
        drops = [s["auc_lambda0"] - s["auc"] for s in seeds]
        met = []
        for s in seeds:
            misses = [k for k, v in s["targets"].items() if not v]
            met.append(f"{sum(s['targets'].values())}/{len(s['targets'])}"
                       + (f" ({'; '.join(misses)})" if misses else ""))
        lines.append(
            f"| {entry['results']} | {entry['lambda']:g} | {', '.join(entry['overrides']) or '–'} "
            f"| {entry['split']} | {', '.join(met)} "
            f"| {'/'.join(_f(s['lesion_pointing']) for s in seeds)} "
            f"| {'/'.join(_f(s['lesion_pointing_masks_only']) for s in seeds)} "
            f"| {'/'.join(f'{drop:.3f}' for drop in drops)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lam", type=float, default=1.0, help="λ of the supervised runs (default 1)")
    parser.add_argument("--only", type=float, metavar="LAMBDA",
                        help="train only the runs of this λ (0 or --lam): two processes can share the work")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="change the demo preset for both λ (e.g. train.epochs=8 on a loaded machine)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "attention_supervision")
    parser.add_argument("--stage", choices=("all", "train", "evaluate"), default="all",
                        help="train: only train; evaluate: only evaluate and report the finished runs")
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS / "attention_supervision",
                        help="results stem: STEM.md and STEM.json are written")
    parser.add_argument("--notes", default="", help="a paragraph added to the Markdown (what was tried)")
    parser.add_argument("--figure", metavar="STRUCTURE",
                        help="also draw where the first seed's supervised gazes miss STRUCTURE "
                        "(STEM_STRUCTURE_misses.png)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="evaluate on this split (val: to choose the options without looking at the test split)")
    parser.add_argument("--faithfulness", type=int, default=32,
                        help="test images that get deletion/insertion and stability (default 32)")
    parser.add_argument("--summary", action="store_true",
                        help="only write STEM_options.json and .md: every set of options tried (that record and "
                        "the results files beside STEM), its targets met per seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.summary:
        entries = collect_options(args.results)
        write_json({"options": entries}, args.results.parent / f"{args.results.name}_options.json")
        text = summary(entries)
        write_text(text, args.results.parent / f"{args.results.name}_options.md")
        print(text)
        return 0
    start = time.perf_counter()
    cache = prepare_demo_data(args.out / "data", DEMO_DATA, progress=False)
    runs: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:
        for lam in (0.0, args.lam):
            if args.only is not None and lam != args.only:
                continue
            run = run_dir(args.out, lam, seed, args.override)
            if args.stage == "evaluate":
                if not trained(run, run_config(cache, lam, seed, args.override)):
                    logging.warning("λ=%g seed %d is not trained: left out", lam, seed)
                    continue
            else:
                seconds = train_run(cache, run, lam, seed, args.retrain, args.override)
                logging.info("trained λ=%g seed %d in %s s", lam, seed,
                             "(reused)" if seconds is None else f"{seconds:.0f}")
            if args.stage != "train":
                runs[f"{lam:g}/{seed}"] = evaluate_run(cache, run, args.faithfulness, args.split)
    if args.stage == "train":
        return 0
    if args.figure:
        first = run_dir(args.out, args.lam, args.seeds[0], args.override)
        logging.info("figure: %s", miss_figure(cache, first, args.figure, args.results.parent
                                                / f"{args.results.name}_{args.figure}_misses.png", args.split))
    seeds = [seed for seed in args.seeds if f"0/{seed}" in runs and f"{args.lam:g}/{seed}" in runs]
    argv_shown = sys.argv[1:] if argv is None else argv
    if "--notes" in argv_shown:  # the notes are printed below the table, not in the command
        k = argv_shown.index("--notes")
        argv_shown = argv_shown[:k] + ["--notes", "..."] + argv_shown[k + 2:]
    report = {
        "lambda": args.lam,
        "overrides": args.override,
        "seeds": seeds,
        "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/attention_supervision.py", *argv_shown]),
        "machine": "CPU, 2 cores, shared with other jobs",
        "split": args.split,
        "test_images": DEMO_DATA["counts"][{"test": "Test_v2", "val": "Validation"}[args.split]],
        "runs": runs,
        "targets": {
            str(seed): check_targets(runs[f"{args.lam:g}/{seed}"], runs[f"0/{seed}"]) for seed in seeds
        },
        # the no-model reference: the same for every run (the images and the attention grid), from the evaluations
        "centroid_pointing": runs[f"0/{seeds[0]}"]["pointing_centroid"] if seeds else None,
        "notes": args.notes,
        "total_s": time.perf_counter() - start,
    }
    write_json(report, args.results.parent / f"{args.results.name}.json")
    write_text(markdown(report), args.results.parent / f"{args.results.name}.md")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
