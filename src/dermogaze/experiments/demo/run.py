"""The one-command demo (``dermogaze demo``): the whole pipeline on the built-in synthetic dataset.

:func:`run_demo` synthesises the dataset (:func:`dermogaze.data.synth.write_synthetic_isic`),
prepares it (:func:`dermogaze.data.prepare.prepare`), trains the ``demo`` preset
(:func:`dermogaze.training.train`), evaluates the best checkpoint on the test split
(:func:`dermogaze.evaluation.evaluate.evaluate_checkpoint`), explains a few test images
(:func:`dermogaze.explain.run.run_explain`) and writes ``OUT/report.md``
(:func:`dermogaze.experiments.demo.report.write_report`)::

    OUT/data/isic/           the synthetic dataset, in the ISIC 2017 layout
    OUT/data/cache/          its prepared cache
    OUT/data/demo_data.json  what the data was made with (a re-run with the same recipe reuses it)
    OUT/train/               the run folder: config.yaml, metrics.jsonl, last.pt, best.pt
    OUT/eval/                metrics.json, predictions.csv, confusion_matrix.png, roc.png
    OUT/explain/             <id>.json, <id>_gazes.png, <id>_masks.png for a few test images
    OUT/training_curves.png  loss terms and validation AUC/AP per epoch
    OUT/explanation.png      pointing game and relevance-mass lift per structure (design §6b), for the runs compared
    OUT/report.md            all of the above on one page (relative links)

Decisions: a re-run reuses the synthetic data and cache when ``demo_data.json`` matches the recipe
and the cache loads (synthesis is the slow part), but always retrains. ``--fast`` is a smoke run
(fewer images, two epochs): it exercises every stage but is not expected to reach the floors. The
explanation measures (docs/design.md §6b) run on every test image, except the costly ones (deletion,
insertion, view stability), which run on the first :data:`DEMO_FAITHFULNESS` (the report says how
many). The precision is float32 unless ``amp`` says otherwise (:func:`~dermogaze.runtime.default_amp`: bf16 did
not keep the demo's results within the tolerances), for training, evaluation and explanations alike; the report
names it. The preset trains with the attention supervision (``loss.attention`` = 1,
docs/design.md §6b) and
repeat-factor sampling; the report compares it with the same preset at λ = 0 from shipped benchmark
results (:mod:`dermogaze.experiments.demo.report`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...config import load_config
from ...data.cache import load_info
from ...data.prepare import prepare
from ...data.synth import write_synthetic_isic
from ...errors import DermogazeError
from ...evaluation.evaluate import evaluate_checkpoint
from ...evaluation.plots import plot_explanation_bars, plot_training_curves
from ...explain.run import run_explain
from ...files import write_json
from ...runtime import default_amp, effective_amp, precision_name, resolve_device
from ...training import load_checkpoint, train
from ...version import __version__
from .report import SUPERVISION_RESULTS, compared_explanations, write_report

logger = logging.getLogger(__name__)

#: The synthetic dataset of the demo: official split → images; pictures of (width, height);
#: prepared at ``cache_size`` and center-cropped to the demo's 64 px input (the paper's 224/256 ratio).
DEMO_DATA: dict[str, Any] = {
    "counts": {"Training": 320, "Validation": 80, "Test_v2": 160},
    "image_size": [128, 96],
    "seed": 0,
    "cache_size": 72,
}
#: ``--fast``: the same recipe on fewer images, and fewer epochs.
FAST_DATA: dict[str, Any] = {**DEMO_DATA, "counts": {"Training": 96, "Validation": 32, "Test_v2": 32}}
FAST_OVERRIDES = ["train.epochs=2"]
#: How many test images the demo explains.
EXPLAIN_COUNT = 4
#: Test images that get the costly explanation measures (deletion, insertion, stability): the first
#: ``DEMO_FAITHFULNESS`` of the test split in the demo, a few in the ``--fast`` smoke run (the other
#: measures run on every test image; ``dermogaze evaluate`` keeps its own default,
#: :data:`~dermogaze.config.DEFAULT_FAITHFULNESS`).
DEMO_FAITHFULNESS = 16
FAST_FAITHFULNESS = 8


def prepare_demo_data(data_dir: str | Path, recipe: Mapping[str, Any], *, progress: bool = True) -> Path:
    """Synthesise and prepare the demo dataset, or reuse it when it matches ``recipe``.

    Args:
        data_dir: ``OUT/data``.
        recipe: :data:`DEMO_DATA` or :data:`FAST_DATA`.
        progress: show progress bars.

    Returns:
        The prepared cache folder.
    """
    data_dir = Path(data_dir)
    stamp_path = data_dir / "demo_data.json"
    cache = data_dir / "cache"
    stamp = {**recipe, "dermogaze_version": __version__}
    if stamp_path.is_file():
        try:
            same = json.loads(stamp_path.read_text()) == json.loads(json.dumps(stamp))
            info = load_info(cache) if same else None
        except (ValueError, DermogazeError):
            same, info = False, None
        if same and info is not None:
            logger.info("reusing the synthetic dataset and cache in %s", data_dir)
            return cache
    stamp_path.unlink(missing_ok=True)
    isic = write_synthetic_isic(
        data_dir / "isic",
        counts=recipe["counts"],
        image_size=tuple(recipe["image_size"]),
        seed=recipe["seed"],
        progress=progress,
    )
    prepare(isic, cache, size=recipe["cache_size"], progress=progress)
    write_json(stamp, stamp_path)
    return cache


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    fast: bool = False,
    device: str = "auto",
    amp: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> Path:
    """Run the whole pipeline on the synthetic dataset and write ``OUT/report.md``.

    Args:
        out_dir: output folder (see the module docstring for its layout).
        fast: smaller and shorter (a smoke run).
        device: ``auto``, ``cpu`` or ``cuda``.
        amp: ``off``, ``bf16`` or ``fp16`` for training, evaluation and explanations; None:
            :func:`~dermogaze.runtime.default_amp` (float32). The precision
            that runs (:func:`~dermogaze.runtime.effective_amp`) is the configuration's ``train.amp`` and the report's.
        workers: data-loader workers.
        progress: show progress bars.

    Returns:
        The path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe = FAST_DATA if fast else DEMO_DATA
    timings: dict[str, float] = {}
    start = tic = time.perf_counter()

    logger.info("demo 1/4: synthetic dataset and cache in %s", out / "data")
    cache = prepare_demo_data(out / "data", recipe, progress=progress)
    timings["data (synthesise + prepare)"] = time.perf_counter() - tic

    tic = time.perf_counter()
    cfg = load_config("demo", [*(FAST_OVERRIDES if fast else [])])
    cfg.data.cache = str(cache)
    cfg.data.workers = workers
    cfg.train.device = device
    dev = resolve_device(device)
    cfg.train.amp = amp = effective_amp(dev, default_amp(dev, "demo") if amp is None else amp)
    logger.info(
        "demo 2/4: training %s (width %g, %d px, T=%d, %d epochs, %s)",
        cfg.model.name, cfg.model.width, cfg.model.image_size, cfg.model.steps, cfg.train.epochs, precision_name(amp),
    )
    summary = train(cfg, out / "train", overwrite=True, progress=progress)
    timings["train"] = time.perf_counter() - tic

    tic = time.perf_counter()
    logger.info("demo 3/4: evaluating the best checkpoint on the test split")
    best = out / "train" / "best.pt"
    by = [field for field in ("sex", "age") if field in load_info(cache)["metadata"]]
    evaluation = evaluate_checkpoint(
        best, cache, "test", out / "eval", device=device, amp=amp, by=by, progress=progress,
        faithfulness=FAST_FAITHFULNESS if fast else DEMO_FAITHFULNESS,
    )
    timings["evaluate (explanation measures included)"] = time.perf_counter() - tic

    tic = time.perf_counter()
    logger.info("demo 4/4: explaining %d test images", EXPLAIN_COUNT)
    records = run_explain(
        best, ["test"], out / "explain", data=cache, limit=EXPLAIN_COUNT, device=device, amp=amp, progress=progress
    )
    curves = plot_training_curves(out / "train" / "metrics.jsonl", out / "training_curves.png")
    explanation_runs = compared_explanations(
        evaluation["metrics"].get("explanation"), SUPERVISION_RESULTS, cfg.loss.attention
    )
    figures = {"curves": curves}
    if explanation_runs:
        figures["explanation"] = plot_explanation_bars(
            explanation_runs, out / "explanation.png", title="explanations on the synthetic test split"
        )
    timings["explain + figures"] = time.perf_counter() - tic
    timings["total"] = time.perf_counter() - start

    report = write_report(
        out,
        metrics=evaluation["metrics"],
        history=summary["history"],
        records=records,
        timings=timings,
        config=cfg.to_dict(),
        recipe=recipe,
        files={
            **figures,
            **evaluation["files"],
            "explain_dir": out / "explain",
            "run": out / "train",
        },
        fast=fast,
        explanation_runs=explanation_runs,
        training_data=load_checkpoint(best)["training_data"],
    )
    logger.info("demo finished in %.1f s", timings["total"])
    return report
