"""Does the out-of-distribution score tell real dermoscopy from the synthetic images, for a model trained on either?

Run by hand from a repository checkout (never timed in tests; two short trainings, sequentially)::

    nice -n 10 .venv/bin/python benchmarks/ood.py [--out runs/ood] [--epochs 6] [--size 72]
        [--synthetic-checkpoint PT --synthetic-cache DIR] [--summary]

The score is dermogaze's (:mod:`dermogaze.metrics.ood`): the Mahalanobis distance of an image's pooled encoder
features ``GAP(X')`` to the training split's (Ledoit-Wolf covariance), with the threshold at the validation split's
95th percentile, fitted when training ends and stored in the checkpoint. The script

1. writes and prepares the demo's synthetic dataset (:data:`dermogaze.experiments.demo.run.DEMO_DATA`, 320 / 80 /
   160 images, cache 72 px) into ``OUT/synthetic`` and prepares the 800 real ISIC images of
   ``../shared/realdata/isic2018-dev`` (with its ``labels.csv``, split 80/10/10) at the same ``--size`` into
   ``OUT/real/cache`` (both reused when there);
2. trains the ``demo`` preset (64 px input, width 0.25, T = 4) for ``--epochs`` epochs (a short schedule: the demo
   trains 14) on each, into ``OUT/synthetic/run`` and ``OUT/real/run`` (reused when finished);
   ``--synthetic-checkpoint`` adds an existing model trained on the synthetic data (its score fitted on
   ``--synthetic-cache`` into a copy when it has none, :func:`dermogaze.training.ood.fit_checkpoint_ood`);
3. for each model, scores the images it was not trained on: the synthetic test split and the real images — all 800
   for a model trained on synthetic images; the real test split (in distribution) against the synthetic test split
   (out of distribution) for the model trained on the real ones — and reports the AUROC of telling the two apart by
   the distance (``sklearn.metrics.roc_auc_score``, out of distribution = positive), the share of each set above
   the threshold, and for comparison the AUROC of three other scores fitted here on the same splits: the Mahalanobis
   distance of the pooled output of the diagnosis branch's VGG blocks 4-5 (512 · width channels), of the mean and
   standard deviation over the grid of every encoder block's output (pool 1, pool 2, ``X'``), and the cosine
   distance to the 5th nearest training image in the standardised ``GAP(X')`` (k-nearest neighbours).

Without ``--summary`` the table is printed; with it, ``benchmarks/results/ood.md`` and ``.json`` are written.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks
from attention_supervision import trained  # noqa: E402
from bench_train import _cpu_name, _load_average  # noqa: E402
from dermogaze.config import load_config  # noqa: E402
from dermogaze.data.cache import load_info  # noqa: E402
from dermogaze.data.dataset import DermoscopyDataset  # noqa: E402
from dermogaze.data.prepare import prepare  # noqa: E402
from dermogaze.data.provenance import describe  # noqa: E402
from dermogaze.experiments.demo.run import DEMO_DATA, prepare_demo_data  # noqa: E402
from dermogaze.files import write_json, write_text  # noqa: E402
from dermogaze.metrics.ood import FeatureDistribution, pooled_features  # noqa: E402
from dermogaze.training import train  # noqa: E402
from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from dermogaze.training.ood import fit_checkpoint_ood  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
REALDATA = ROOT.parent / "shared" / "realdata" / "isic2018-dev"
BATCH = 32


def train_demo(cache: Path, run: Path, epochs: int) -> Path:
    """The demo preset for ``epochs`` epochs on ``cache`` into ``run`` (reused when finished); its ``best.pt``."""
    cfg = load_config("demo", [f"train.epochs={epochs}"])
    cfg.data.cache = str(cache)
    cfg.train.device = "cpu"
    if not trained(run, cfg):
        train(cfg, run, overwrite=True, progress=False)
    return run / "best.pt"


#: The scores compared with dermogaze's (``encoder``): label → what the table calls them.
COMPARED = {"blocks45": "Mahalanobis, GAP(blocks 4-5)", "moments": "Mahalanobis, mean + std of pool 1, pool 2, X'",
            "knn": "5-NN cosine, GAP(X')"}


@torch.no_grad()
def features(ckpt: dict[str, Any], cache: Path, splits: list[str]) -> dict[str, np.ndarray]:
    """``{"encoder": GAP(X') (N, C), "blocks45": GAP(blocks 4-5 output) (N, 512·width), "moments": mean and std over
    the grid of pool 1, pool 2 and X'}`` of the images of ``splits`` of ``cache``, as the checkpoint's model sees them
    (its normalisation, the evaluation crop)."""
    model = model_from_checkpoint(ckpt)
    out: dict[str, list[np.ndarray]] = {"encoder": [], "blocks45": [], "moments": []}
    for split in splits:
        data = DermoscopyDataset(cache, split, image_size=model.image_size,
                                 normalisation=(ckpt["mean"], ckpt["std"]))
        for batch in DataLoader(data, batch_size=BATCH):
            _, state = model.forward_with_state(batch["image"], decode=False)
            _, skips = model.encoder(batch["image"])  # pool 1, pool 2, pool 3 (= X')
            source = state.x_prime if model.diagnosis.source == "encoder" else state.last_attended
            out["encoder"].append(pooled_features(state.x_prime).numpy())
            out["blocks45"].append(pooled_features(model.diagnosis.blocks(source)).numpy())
            maps = [*skips[:2], state.x_prime]
            out["moments"].append(torch.cat([m.mean(dim=(-2, -1)) for m in maps]
                                            + [m.std(dim=(-2, -1)) for m in maps], dim=1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def knn_distance(train: np.ndarray, queries: np.ndarray, k: int = 5) -> np.ndarray:
    """Cosine distance to the ``k``-th nearest training row, the features standardised by the training split's."""
    mu, sd = train.mean(axis=0), train.std(axis=0) + 1e-6

    def unit(f: np.ndarray) -> np.ndarray:
        z = (f - mu) / sd
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    return NearestNeighbors(n_neighbors=k).fit(unit(train)).kneighbors(unit(queries))[0][:, -1]


def separation(inside: np.ndarray, outside: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUROC of telling ``outside`` (positive) from ``inside`` by the distance, and the shares above the threshold."""
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return {"auroc": float(roc_auc_score(labels, np.r_[inside, outside])), "threshold": float(threshold),
            "flagged_inside": float(np.mean(inside > threshold)),
            "flagged_outside": float(np.mean(outside > threshold)),
            "median_inside": float(np.median(inside)), "median_outside": float(np.median(outside)),
            "n_inside": int(len(inside)), "n_outside": int(len(outside))}


def measure(checkpoint: Path, train_cache: Path, inside: tuple[Path, list[str]], outside: tuple[Path, list[str]],
            ) -> dict[str, Any]:
    """The model's stored score on the two sets, and the scores of :data:`COMPARED` fitted here."""
    ckpt = load_checkpoint(checkpoint)
    stored = FeatureDistribution.from_state(ckpt["ood"])
    data = ckpt["config"]["data"]
    fit_train = features(ckpt, train_cache, [data["train_split"]])
    fit_val = features(ckpt, train_cache, [data["val_split"]])
    a, b = features(ckpt, *inside), features(ckpt, *outside)
    result = {
        "checkpoint": str(checkpoint), "training_data": describe(ckpt["training_data"]), "epochs": ckpt["epoch"],
        "val_auc": ckpt["metrics"].get("val_auc"), "channels": stored.channels,
        "inside": f"{inside[0].name}: {', '.join(inside[1])}", "outside": f"{outside[0].name}: {', '.join(outside[1])}",
        "encoder": separation(stored.distance(a["encoder"]), stored.distance(b["encoder"]), stored.threshold),
    }
    for key in ("blocks45", "moments"):
        fitted = FeatureDistribution.fit(fit_train[key], fit_val[key])
        result[key] = separation(fitted.distance(a[key]), fitted.distance(b[key]), fitted.threshold)
        result[f"{key}_channels"] = fitted.channels
    knn_val = knn_distance(fit_train["encoder"], fit_val["encoder"])
    result["knn"] = separation(knn_distance(fit_train["encoder"], a["encoder"]),
                               knn_distance(fit_train["encoder"], b["encoder"]), float(np.quantile(knn_val, 0.95)))
    return result


def markdown(report: dict[str, Any]) -> str:
    """The results page."""
    m = report["machine"]
    lines = [
        "# Out-of-distribution score: real dermoscopy against the synthetic images",
        "",
        f"Written by `{report['command']}` on {m['cpu']} (torch threads: {m['threads']}, torch {m['torch']}; load "
        f"{m['load_before']} before, {m['load_after']} after), {report['seconds']:.0f} s.",
        "",
        "The score (`dermogaze.metrics.ood`): the Mahalanobis distance of an image's pooled encoder features "
        "`GAP(X')` to the training split's (Ledoit-Wolf shrinkage covariance), threshold at the validation split's "
        "95th percentile; fitted when training ends and stored in the checkpoint. AUROC: telling the images the "
        "model was not trained on (positive) from those of its own kind by the distance. The models are the `demo` "
        f"preset (64 px, width 0.25, T = 4) trained **{report['epochs']} epochs** (a short schedule; the demo trains "
        "14) on the demo's synthetic data and on the 800 real images of `isic2018-dev` (80/10/10 split), both "
        f"prepared at {report['size']} px.",
        "",
        "| model trained on | in distribution | out of distribution | AUROC of the score | flagged in / out "
        "(threshold) | median distance in / out |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["models"].items():
        e = r["encoder"]
        lines.append(
            f"| {name} | {r['inside']} ({e['n_inside']}) | {r['outside']} ({e['n_outside']}) | **{e['auroc']:.3f}** "
            f"| {e['flagged_inside']:.0%} / {e['flagged_outside']:.0%} ({e['threshold']:.2f}) | "
            f"{e['median_inside']:.2f} / {e['median_outside']:.2f} |")
    lines += ["", "Other scores, fitted by the script on the same splits for comparison (AUROC; flagged in / out at "
              "their own validation 95th percentile):", "",
              "| model trained on | " + " | ".join(COMPARED.values()) + " |", "|---|" + "---|" * len(COMPARED)]
    for name, r in report["models"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{r[k]['auroc']:.3f} ({r[k]['flagged_inside']:.0%} / {r[k]['flagged_outside']:.0%})" for k in COMPARED)
            + " |")
    lines += ["", "Models:", ""]
    for name, r in report["models"].items():
        auc = "n/a" if r["val_auc"] is None else f"{r['val_auc']:.3f}"
        lines.append(f"- {name}: `{r['checkpoint']}`, epoch {r['epochs']}, validation AUC {auc}; trained on "
                     f"{r['training_data']}; {r['channels']} encoder channels ({r['blocks45_channels']} in blocks "
                     f"4-5, {r['moments_channels']} moments)")
    lines += ["", "Reading: " + report.get("reading", ""), ""]
    return "\n".join(lines)


def reading(models: dict[str, Any]) -> str:
    """A paragraph on the figures."""
    parts = []
    for name, r in models.items():
        e = r["encoder"]
        parts.append(f"trained on {name}, the score tells the two apart with AUROC {e['auroc']:.3f} and flags "
                     f"{e['flagged_outside']:.0%} of the foreign images at its threshold, against "
                     f"{e['flagged_inside']:.0%} of its own kind's")
    text = "; ".join(parts) + "."
    weak = [name for name, r in models.items() if r["encoder"]["flagged_outside"] < 0.5]
    if weak:
        best = {name: max(COMPARED, key=lambda k: models[name][k]["auroc"]) for name in weak}
        text += (" The direction that matters for the demo works: a model trained on the synthetic images flags real "
                 "photographs. The other direction does not: for the model trained on " + ", ".join(weak) + " the "
                 "synthetic images lie inside the spread of the real images' features (real photographs vary in "
                 "colour, lighting, hair and scale, so the fitted Gaussian is wide, and the rendered images sit within "
                 "it): their distances are like the real test images', and the threshold flags almost none, so a "
                 "model trained on real data given a synthetic image is not warned. Of the scores compared, "
                 + ", ".join(f"{COMPARED[k]} (AUROC {models[n][k]['auroc']:.3f})" for n, k in best.items())
                 + " separates best there (the table above).")
    return text + (" By construction about 5% of in-distribution images exceed the threshold (the validation split's "
                   "95th percentile); a held-out test split may differ a little. The figures come from short trainings "
                   "on 2 CPU cores and one seed.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "ood", help="work folder (default: runs/ood)")
    p.add_argument("--collection", type=Path, default=REALDATA, help="the real ISIC 2018 Task 1-2 folder")
    p.add_argument("--labels", type=Path, default=None, help="its labels CSV (default: COLLECTION/labels.csv)")
    p.add_argument("--size", type=int, default=DEMO_DATA["cache_size"], help="cache size of both collections")
    p.add_argument("--epochs", type=int, default=6, help="epochs of each training (the demo preset trains 14)")
    p.add_argument("--synthetic-checkpoint", type=Path, default=None,
                   help="also measure an existing model trained on the synthetic data (with --synthetic-cache)")
    p.add_argument("--synthetic-cache", type=Path, default=None, help="the cache that model was trained on")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--summary", action="store_true", help="write benchmarks/results/ood.md and .json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), _load_average()
    out = args.out
    synth_cache = prepare_demo_data(out / "synthetic" / "data", {**DEMO_DATA, "cache_size": args.size},
                                    progress=False)
    real_cache = out / "real" / "cache"
    prepare(args.collection, real_cache, size=args.size, labels=args.labels or args.collection / "labels.csv",
            progress=False, workers=1)
    real_splits = list(load_info(real_cache)["splits"])

    models: dict[str, Any] = {}
    synthetic = train_demo(synth_cache, out / "synthetic" / "run", args.epochs)
    models[f"synthetic images ({args.epochs} epochs)"] = measure(
        synthetic, synth_cache, (synth_cache, ["test"]), (real_cache, real_splits))
    if args.synthetic_checkpoint is not None:
        if args.synthetic_cache is None:
            p.error("--synthetic-checkpoint needs --synthetic-cache")
        copy = out / "synthetic_existing" / "best.pt"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.synthetic_checkpoint, copy)
        if load_checkpoint(copy)["ood"] is None:
            fit_checkpoint_ood(copy, args.synthetic_cache, device="cpu", progress=False)
        ckpt = load_checkpoint(copy)
        models[f"synthetic images (existing run, {ckpt['epoch']} epochs)"] = measure(
            copy, args.synthetic_cache, (args.synthetic_cache, ["test"]), (real_cache, real_splits))
    real = train_demo(real_cache, out / "real" / "run", args.epochs)
    models[f"real images ({args.epochs} epochs)"] = measure(real, real_cache, (real_cache, ["test"]),
                                                           (synth_cache, ["test"]))

    report = {
        "command": shlex.join([".venv/bin/python", "benchmarks/ood.py", *(argv if argv is not None else sys.argv[1:])]),
        "epochs": args.epochs, "size": args.size, "seconds": time.perf_counter() - started,
        "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_before": load_before, "load_after": _load_average()},
        "models": models,
    }
    report["reading"] = reading(models)
    text = markdown(report)
    print(text)
    if args.summary:
        write_json(report, RESULTS / "ood.json")
        write_text(text, RESULTS / "ood.md")
        print(f"wrote {RESULTS / 'ood.md'} and {RESULTS / 'ood.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
