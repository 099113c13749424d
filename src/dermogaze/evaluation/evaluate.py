"""``evaluate``: every docs/design.md §6 metric of a checkpoint on a prepared split, and its files.

Outputs in ``out_dir`` (default ``<checkpoint folder>/eval_<split>``):

- ``metrics.json``: :meth:`~dermogaze.metrics.accumulator.EvaluationAccumulator.compute` plus an ``info``
  block (checkpoint, epoch, variant, cache, split) and the clinical statistics of
  :func:`clinical_metrics`: operating points, bootstrap intervals, calibration before/after
  temperature scaling, and on request test-time augmentation (``tta``), subgroups (``--by``) and
  DeLong's comparison with another model's predictions (``--compare``);
- ``predictions.csv``: ``image_id,melanoma[,label]`` (the ISIC 2017 Part 3 submission shape), the
  calibrated probabilities (:func:`write_predictions_csv`);
- the ``explanation`` section of ``metrics.json``: the docs/design.md §6b measures of
  :class:`~dermogaze.metrics.explanation.ExplanationAccumulator` (pointing game, relevance mass and lift,
  gaze ablation on every image; deletion, insertion and stability on the first ``faithfulness``
  images, with the seconds they cost), from the same pass;
- ``roc.png`` (labelled images), ``reliability.png`` (before/after temperature scaling) and, for
  decoder variants, ``confusion_matrix.png`` (Fig. 6).

The diagnosis uses the checkpoint's calibration (fitted on the validation split during training):
P(melanoma) is temperature-scaled and the decision threshold is the one chosen on validation.

The images are normalised with the checkpoint's training mean/std, so a cache prepared separately
(e.g. only the test split) gives the same inputs as during training. Superpixel maps, when the
cache has them, are center-cropped like the masks and feed the ISIC 2017 Task 2 AUC. The metrics
come from the same evaluation pass as validation during training
(:func:`~dermogaze.training.loop.run_inference`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score
from torch.utils.data import DataLoader

from ..config import DEFAULT_FAITHFULNESS, Config
from ..data.cache import load_info, load_split
from ..data.dataset import DermoscopyDataset
from ..data.metadata import group_labels
from ..errors import DataError, DermogazeError
from ..files import parse_csv_file, write_csv, write_json
from ..metrics.accumulator import EvaluationAccumulator
from ..metrics.clinical import (
    bootstrap_intervals,
    calibration,
    delong_test,
    operating_points,
)
from ..metrics.diagnosis import check_finite_outputs
from ..metrics.explanation import ExplanationAccumulator
from ..metrics.scanpath import view_stability
from ..runtime import autocast_factory, resolve_device
from ..training.checkpoint import check_structure_set, load_checkpoint, model_from_checkpoint
from ..training.loop import run_inference
from ..version import __version__
from .plots import plot_confusion_matrix, plot_reliability, plot_roc

logger = logging.getLogger(__name__)


def check_checkpoint_data(ckpt: Mapping[str, Any], info: Mapping[str, Any], cache: str | Path) -> None:
    """Refuse (one clear line) a cache the checkpoint's model cannot run on; warn on softer mismatches.

    Args:
        ckpt: from :func:`~dermogaze.training.checkpoint.load_checkpoint`.
        info: the cache's ``info.json``.
        cache: the cache folder (for messages).

    Raises:
        DataError: the cache's images are smaller than the model's input size.
        DermogazeError: the cache holds another structure set than the model was trained on.
    """
    check_structure_set(ckpt, info, cache)
    size, image_size, trained_on = int(info["size"]), int(ckpt["image_size"]), int(ckpt["cache_size"])
    if size < image_size:
        raise DataError(
            f"cache {cache} holds {size} px images but the model of {ckpt['path']} takes {image_size} px crops; "
            f"prepare the data with --size {trained_on}"
        )
    if trained_on != size:
        logger.warning(
            "cache %s was prepared at %d px but the model was trained on a %d px cache: the %d px center crop "
            "then covers a different part of the image", cache, size, trained_on, image_size,
        )
    if not np.allclose(info["mean"], ckpt["mean"], atol=1e-3) or not np.allclose(info["std"], ckpt["std"], atol=1e-3):
        logger.info("normalising with the checkpoint's training mean/std, not those of cache %s", cache)


def evaluate_checkpoint(
    checkpoint: str | Path,
    cache: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    *,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int = 0,
    amp: str = "off",
    tta: bool = False,
    by: Sequence[str] = (),
    compare: str | Path | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    faithfulness: int | None = DEFAULT_FAITHFULNESS,
    figures: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of ``cache`` and write the files of the module docstring.

    Args:
        checkpoint: ``RUN/best.pt`` or ``RUN/last.pt``.
        cache: prepared cache; default: the one named in the checkpoint's config.
        split: cache split name (``train``, ``val``, ``test``).
        out_dir: output folder.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: default: the training batch size.
        workers: data-loader workers.
        amp: ``off``, ``bf16`` or ``fp16`` (CUDA only).
        tta: also diagnose under the 8 symmetries of the square and report both.
        by: metadata fields to report the AUC per subgroup of (``sex``, ``age``, ``localization``).
        compare: another model's ``predictions.csv`` on the same images: DeLong's test of the two AUCs.
        n_resamples, seed: of the bootstrap intervals (``seed`` also seeds the random pixel orders of deletion).
        faithfulness: how many images (the first of the split) get the costly explanation measures
            (deletion, insertion, stability); ``None`` = all, 0 = none.
        figures: write the figures.
        progress: show a progress bar.

    Returns:
        ``{"metrics": dict, "out_dir": Path, "files": {name: Path}}``.

    Raises:
        DermogazeError / DataError: unreadable checkpoint, missing cache or split, a cache the
            model cannot run on, a malformed ``compare`` file (:func:`read_predictions_csv`, before the model
            runs), a model whose predictions are NaN or infinite (refused before
            the clinical statistics and before any file is written).
    """
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    cfg = Config.from_dict(ckpt["config"], source=f"{checkpoint} config")
    if cache is None:
        if not cfg.data.cache:
            raise DermogazeError(f"{checkpoint} names no data cache: pass --data CACHE")
        cache = cfg.data.cache
    cache = Path(cache)
    info = load_info(cache)
    if split not in info["splits"]:
        raise DataError(f"cache {cache} has no split {split!r} (it holds {', '.join(info['splits'])})")
    check_checkpoint_data(ckpt, info, cache)
    arrays = load_split(cache, split)
    for field in by:
        if arrays.metadata is None:
            raise DataError(
                f"cache {cache} has no patient metadata for split {split!r} (no *_metadata.csv was prepared): "
                f"--by {field} needs it"
            )
        group_labels(arrays.metadata, field)  # an unknown field fails before the model runs
    if compare is not None:
        read_predictions_csv(compare)  # so does a malformed --compare file
    model = model_from_checkpoint(ckpt)
    dev = resolve_device(device)
    model.to(dev)

    has_sp = bool(info["has_superpixels"]) and model.needs_masks
    dataset = DermoscopyDataset(
        cache, split, image_size=int(ckpt["image_size"]), return_superpixels=has_sp,
        normalisation=(ckpt["mean"], ckpt["std"]),
    )
    loader = DataLoader(
        dataset, batch_size=batch_size or cfg.train.batch_size, shuffle=False, num_workers=workers,
        pin_memory=dev.type == "cuda",
    )
    cal = ckpt["calibration"]
    explanation = ExplanationAccumulator(
        ckpt["structures"], threshold=cal["threshold"], temperature=cal["temperature"], faithfulness=faithfulness,
        seed=seed, stability=view_stability, loss=cfg.loss,
    )
    result = run_inference(
        model, loader, device=dev, structures=ckpt["structures"], autocast=autocast_factory(dev, amp),
        with_masks=dataset.has_masks, sp_features=arrays.sp_features if has_sp else None,
        threshold=cal["threshold"], temperature=cal["temperature"], tta=tta, progress=progress,
        desc=f"evaluate {split}" + (" with TTA (8 views)" if tta else ""), explanation=explanation,
    )
    acc = result.accumulator
    outputs = {"melanoma probabilities": acc.probs, "melanoma log-odds": acc.margins}
    if acc.tta_probs:
        outputs["melanoma probabilities under test-time augmentation"] = acc.tta_probs
    check_finite_outputs(acc.ids, outputs, f"the model in {checkpoint}")
    metrics = result.metrics
    metrics["explanation"] = result.explanation
    groups = {field: group_labels(arrays.metadata, field) for field in by}
    metrics.update(clinical_metrics(
        result.accumulator, cal, groups=groups, compare=compare, n_resamples=n_resamples, seed=seed
    ))
    metrics["info"] = {
        "checkpoint": str(checkpoint),
        "epoch": int(ckpt["epoch"]),
        "variant": ckpt["variant"],
        "cache": str(cache),
        "split": split,
        "image_size": int(ckpt["image_size"]),
        "dermogaze_version": __version__,
    }
    out = Path(out_dir) if out_dir is not None else checkpoint.parent / f"eval_{split}"
    predictions = result.accumulator.predictions
    files = {
        "metrics": write_json(metrics, out / "metrics.json"),
        "predictions": write_predictions_csv(predictions, out / "predictions.csv"),
    }
    if figures:
        files.update(evaluation_figures(metrics, predictions, out, ckpt["structures"]))
        if metrics["calibration"]["before"] is not None:
            files["reliability"] = plot_reliability(
                metrics["calibration"]["before"], metrics["calibration"]["after"], out / "reliability.png",
                title=f"calibration, {split} split (temperature {cal['temperature']:.2f} fitted on validation)",
            )
    logger.info("evaluation of %s on %s/%s written to %s", checkpoint, cache, split, out)
    return {"metrics": metrics, "out_dir": out, "files": files}


def evaluation_figures(
    metrics: Mapping[str, Any], predictions: Mapping[str, Sequence], out: Path, structures: Sequence[str]
) -> dict[str, Path]:
    """``roc.png`` (labelled images only) and, for decoder variants, ``confusion_matrix.png`` (Fig. 6)."""
    files: dict[str, Path] = {}
    known = [k for k, v in enumerate(predictions["labels"]) if v is not None]
    if known:
        split = metrics.get("info", {}).get("split", "")
        files["roc"] = plot_roc(
            [int(predictions["labels"][k]) for k in known],
            [float(predictions["probs"][k]) for k in known],
            out / "roc.png",
            title=f"melanoma diagnosis, {split} split" if split else "",
        )
    s = metrics.get("structures")
    if s and s["n_images"] > 0:
        files["confusion_matrix"] = plot_confusion_matrix(
            s["confusion_matrix"], out / "confusion_matrix.png", counts=s["confusion_counts"], structures=structures,
            accuracy=s["accuracy"],
        )
    return files


def write_predictions_csv(predictions: Mapping[str, Sequence], path: str | Path) -> Path:
    """Write ``predictions.csv``: ``image_id,melanoma`` (ISIC 2017 Part 3 shape) and ``label`` when known.

    Args:
        predictions: :attr:`~dermogaze.metrics.accumulator.EvaluationAccumulator.predictions`.
        path: destination file (written atomically).
    """
    ids, probs, labels = predictions["ids"], predictions["probs"], predictions.get("labels")
    with_labels = labels is not None and all(v is not None for v in labels)
    header = ["image_id", "melanoma"] + (["label"] if with_labels else [])
    rows = (
        [i, f"{p:.6f}"] + ([int(labels[k])] if with_labels else [])
        for k, (i, p) in enumerate(zip(ids, probs, strict=True))
    )
    return write_csv(header, rows, path)


#: Subgroups with fewer positives or negatives than this get their counts and no AUC.
MIN_GROUP_CLASS = 10


def clinical_metrics(
    acc: EvaluationAccumulator,
    cal: Mapping[str, Any],
    *,
    groups: Mapping[str, Sequence[str | None]] | None = None,
    compare: str | Path | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The clinical statistics of an evaluation (labelled images only; :mod:`dermogaze.metrics.clinical`).

    Args:
        acc: the merged accumulator of the split (calibrated probabilities, margins, TTA).
        cal: the checkpoint's ``calibration`` (temperature, threshold, rule).
        groups: per metadata field, the subgroup of every image in dataset order (None = unknown).
        compare: another model's ``predictions.csv`` (``image_id,melanoma``) on the same images.
        n_resamples, seed: of the stratified bootstrap.

    Returns:
        ``{"diagnosis_ci": {...}, "operating_points": {...}, "calibration": {...}}`` and, when
        asked for, ``"tta"``, ``"subgroups"``, ``"compare"`` (see ``metrics.json``).
    """
    known = np.array([k for k, y in enumerate(acc.labels) if y is not None], dtype=np.int64)
    labels = np.array([acc.labels[k] for k in known], dtype=np.int64)
    probs = np.asarray(acc.probs, dtype=np.float64)[known]
    raw = 1.0 / (1.0 + np.exp(-np.asarray(acc.margins, dtype=np.float64)[known]))  # before temperature scaling
    both = 0 < labels.sum() < labels.size
    out: dict[str, Any] = {
        "decision": {"threshold": float(cal["threshold"]), "rule": cal["threshold_rule"], "chosen_on": "validation"},
        "diagnosis_ci": bootstrap_intervals(labels, probs, cal["threshold"], n_resamples=n_resamples, seed=seed)
        if both else None,
        "operating_points": operating_points(labels, probs) if both else None,
        "calibration": {
            "temperature": float(cal["temperature"]),
            "before": calibration(labels, raw) if labels.size else None,
            "after": calibration(labels, probs) if labels.size else None,
        },
    }
    if acc.tta_probs:
        tta = np.asarray(acc.tta_probs, dtype=np.float64)[known]
        out["tta"] = {
            "views": 8,
            "auc": float(roc_auc_score(labels, tta)) if both else None,
            "ap": float(average_precision_score(labels, tta)) if both else None,
            "auc_without": float(roc_auc_score(labels, probs)) if both else None,
            "ci": bootstrap_intervals(labels, tta, cal["threshold"], n_resamples=n_resamples, seed=seed)
            if both else None,
            "spread_mean": float(np.mean(acc.tta_spread)),
            "spread_max": float(np.max(acc.tta_spread)),
        }
    if groups:
        index = np.asarray(acc.indices, dtype=np.int64)[known]  # dataset index of each labelled image
        out["subgroups"] = {
            field: _subgroups([labels_of[i] for i in index], labels, probs, cal["threshold"], n_resamples, seed)
            for field, labels_of in groups.items()
        }
    if compare is not None:
        out["compare"] = _compare(Path(compare), [acc.ids[k] for k in known], labels, probs)
    return out


def _subgroups(
    group_of: Sequence[str | None], labels: np.ndarray, probs: np.ndarray, threshold: float, n_resamples: int,
    seed: int,
) -> list[dict[str, Any]]:
    """AUC with its interval per subgroup (sorted by name; unknown last), and the group sizes."""
    names = sorted({g for g in group_of if g is not None}) + ([None] if None in group_of else [])
    rows = []
    for name in names:
        mask = np.array([g == name for g in group_of])
        y, p = labels[mask], probs[mask]
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        row: dict[str, Any] = {"group": "unknown" if name is None else name, "n": int(y.size), "n_pos": n_pos,
                               "n_neg": n_neg, "auc": None, "auc_ci": None}
        if min(n_pos, n_neg) >= MIN_GROUP_CLASS:
            row["auc"] = float(roc_auc_score(y, p))
            row["auc_ci"] = bootstrap_intervals(y, p, threshold, n_resamples=n_resamples, seed=seed)["auc"]
        rows.append(row)
    return rows


def read_predictions_csv(path: str | Path) -> dict[str, float]:
    """Another model's ``predictions.csv`` (``image_id,melanoma``, as :func:`write_predictions_csv` writes it).

    Returns:
        image id → melanoma probability.

    Raises:
        DataError: a missing or unreadable file (:func:`~dermogaze.files.parse_csv_file`: a byte-order mark is
            fine), no ``image_id``/``melanoma`` column, no row, a repeated or empty id, a probability that is
            not a number in [0, 1] (NaN included); the message names the file and the line.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such predictions file (--compare takes another run's predictions.csv)")
    table = parse_csv_file(path, "predictions file", key="image_id")
    missing = [c for c in ("image_id", "melanoma") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: not a predictions file: no {' or '.join(missing)} column (expected the "
                        f"image_id,melanoma of an evaluation's predictions.csv, found {', '.join(table.columns)})")
    if not table.rows:
        raise DataError(f"{path}: no predictions (only a header)")
    out: dict[str, float] = {}
    for line, row in table.rows:
        image_id, raw = row["image_id"].strip(), row["melanoma"].strip()
        if not image_id:
            raise DataError(f"{path}: line {line}: empty image_id")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:
            raise DataError(f"{path}: line {line}: melanoma {raw!r} of {image_id} is not a probability in [0, 1]")
        out[image_id] = value
    return out


def _compare(path: Path, ids: Sequence[str], labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """DeLong's test of this model's AUC against the model whose ``predictions.csv`` is ``path``."""
    other = read_predictions_csv(path)
    missing = [i for i in ids if i not in other]
    if missing:
        raise DataError(
            f"{path} lacks {len(missing)} of the {len(ids)} evaluated images (e.g. {missing[0]}): "
            "--compare needs predictions on the same images"
        )
    if not 0 < labels.sum() < labels.size:
        raise DataError("--compare needs melanoma and benign images in the evaluated split")
    result = delong_test(labels, probs, np.array([other[i] for i in ids], dtype=np.float64))
    return {"other": str(path), "n": len(ids), **result}
