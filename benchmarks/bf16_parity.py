"""Does bf16 on the CPU keep the demo's results? fp32 against bf16 training, and bf16 inference of fp32 checkpoints.

Run by hand from a repository checkout (never timed in tests; six demo trainings, sequentially)::

    .venv/bin/python benchmarks/bf16_parity.py [--seeds 0 1 2] [--threads N] [--out runs/bf16_parity] [--summary]

It builds the demo's synthetic dataset (:data:`dermogaze.experiments.demo.run.DEMO_DATA`, reused when already
prepared in ``OUT/data``) and, for each seed, trains the ``demo`` preset twice on the CPU, ``train.amp=off`` and
``train.amp=bf16`` (the order alternates from seed to seed, so that a drift in the machine's load does not
favour one precision), evaluates each best checkpoint on the synthetic test split in its own precision
(:func:`dermogaze.evaluation.evaluate.evaluate_checkpoint`, the costly explanation measures off) and runs the
float32 checkpoint on the test split in both precisions (the demo's model, batch 16). The criteria, per seed:

* **training** (bf16 run against the fp32 run of the same seed): test AUC within :data:`TOLERANCE` ``["auc"]``,
  mean Jaccard of lesion and skin within ``["jaccard"]``, matched and named pointing game (overall) within
  ``["pointing"]``;
* **inference** (the fp32 checkpoint run in bf16 against float32): calibrated P(melanoma) within ``["p"]`` on
  every test image, the same decision (the checkpoint's threshold) on at least ``["decision"]`` of the images,
  the same named structure (arg-max of the structure classifier) at at least ``["named"]`` of the steps;
* **time**: the bf16 training's seconds over the fp32 one's (the sum of ``metrics.jsonl``'s ``time_s``), against
  :data:`TARGET_TIME_RATIO`.

On a CPU without native bf16 (:func:`dermogaze.runtime.native_cpu_bf16`), where dermogaze runs float32 when
asked for bf16, the script makes it autocast anyway (``emulated`` in the results): the roundings are bf16's
(bf16 inputs and outputs of the convolutions and matrix products, float32 accumulation), the kernels are not
the native ones, so the results measure bf16's effect on the figures but its times are not native bf16's.

``--noise-floor`` adds, per seed, a third training: float32 again on one thread (``fp32_1thread``), which differs
from the float32 run only in the order of its float additions. Its differences from the float32 run (the same four
training figures) are how far two float32 trainings of one seed land apart, the floor under which no precision
can be judged by one training per seed.

A run folder holding a finished training of the same configuration is reused (``--retrain`` forces it).
Without ``--summary`` the table is printed; with it, ``benchmarks/results/bf16_parity.md`` and ``.json`` are
written.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks
from attention_supervision import trained  # noqa: E402
from bench_train import _cpu_name, _load_average  # noqa: E402
from dermogaze import runtime  # noqa: E402
from dermogaze.config import Config, load_config  # noqa: E402
from dermogaze.data.dataset import DermoscopyDataset  # noqa: E402
from dermogaze.evaluation.evaluate import evaluate_checkpoint  # noqa: E402
from dermogaze.experiments.demo.run import DEMO_DATA, prepare_demo_data  # noqa: E402
from dermogaze.files import read_jsonl, write_json, write_text  # noqa: E402
from dermogaze.training import train  # noqa: E402
from dermogaze.training.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from dermogaze.training.loop import forward_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRECISIONS = ("off", "bf16")
#: The criteria of the module docstring.
TOLERANCE = {"auc": 0.01, "jaccard": 0.02, "pointing": 0.02, "p": 0.01, "decision": 0.99, "named": 0.98}
#: bf16 training time over fp32's, the target on a CPU with native bf16.
TARGET_TIME_RATIO = 0.55
#: The demo's batch (the inference comparison's).
BATCH = 16


def run_config(cache: Path, amp: str, seed: int) -> Config:
    """The demo preset on the CPU with ``train.amp=amp`` and the seed."""
    cfg = load_config("demo", [f"train.amp={amp}", f"train.seed={seed}"])
    cfg.data.cache = str(cache)
    cfg.train.device = "cpu"
    return cfg


def train_run(cache: Path, run: Path, amp: str, seed: int, retrain: bool) -> None:
    """Train the demo preset into ``run`` (reused when already trained; an interrupted run resumes)."""
    cfg = run_config(cache, amp, seed)
    if not retrain and trained(run, cfg):
        logging.info("reusing %s", run)
        return
    resume = not retrain and (run / "last.pt").is_file()
    logging.info("training %s", run)
    train(cfg, run, overwrite=not resume, resume=resume, progress=False)


def evaluate_run(cache: Path, run: Path, amp: str) -> dict[str, Any]:
    """Test AUC, Jaccard of lesion and skin and the pointing games of the run's best checkpoint, in ``amp``."""
    metrics = evaluate_checkpoint(
        run / "best.pt", cache, "test", run / "eval_test", device="cpu", amp=amp, figures=False, progress=False,
        n_resamples=200, faithfulness=0,
    )["metrics"]
    ex = metrics["explanation"]
    history = read_jsonl(run / "metrics.jsonl")
    return {
        "auc": metrics["diagnosis"]["auc"],
        "jaccard": metrics["structures"]["jaccard_lesion_skin"],
        "pointing_matched": ex["pointing_matched"]["overall"],
        "pointing_named": ex["pointing_named"]["overall"],
        "train_s": sum(row["time_s"] for row in history),
        "epochs": len(history),
    }


def train_one_thread(cache: Path, run: Path, seed: int, retrain: bool) -> None:
    """:func:`train_run` in float32 on one torch thread (the noise floor's run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(cache, run, "off", seed, retrain)
    finally:
        torch.set_num_threads(threads)


#: The training figures compared between two runs, and the tolerance of each.
TRAINING_FIGURES = {"test AUC": ("auc", "auc"), "Jaccard lesion+skin": ("jaccard", "jaccard"),
                    "matched pointing game": ("pointing_matched", "pointing"),
                    "named pointing game": ("pointing_named", "pointing")}


def training_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """``|b - a|`` of each of :data:`TRAINING_FIGURES`."""
    return {name: abs(b[key] - a[key]) for name, (key, _) in TRAINING_FIGURES.items()}


@torch.no_grad()
def inference(checkpoint: Path, cache: Path, amp: str) -> dict[str, np.ndarray]:
    """Calibrated P(melanoma) ``(N,)`` and named structures ``(N, T)`` of ``checkpoint`` on the test split."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    dataset = DermoscopyDataset(cache, "test", image_size=int(ckpt["image_size"]),
                                normalisation=(ckpt["mean"], ckpt["std"]))
    autocast = runtime.autocast_factory(torch.device("cpu"), amp)
    temperature = float(ckpt["calibration"]["temperature"])
    probs, named = [], []
    for batch in DataLoader(dataset, batch_size=BATCH, shuffle=False):
        _, out = forward_batch(model, batch, torch.device("cpu"), autocast=autocast)
        probs.append(out.calibrated_melanoma_prob(temperature).numpy())
        named.append(out.structure_logits.argmax(-1).numpy())
    return {"p": np.concatenate(probs), "named": np.concatenate(named), "threshold": ckpt["calibration"]["threshold"]}


def inference_parity(checkpoint: Path, cache: Path) -> dict[str, Any]:
    """The fp32 checkpoint in bf16 against float32: the largest |ΔP|, decision and named-structure agreement."""
    ref, low = inference(checkpoint, cache, "off"), inference(checkpoint, cache, "bf16")
    threshold = ref["threshold"]
    return {
        "images": int(ref["p"].size),
        "steps": int(ref["named"].size),
        "max_abs_dp": float(np.abs(low["p"] - ref["p"]).max()),
        "decision_agreement": float(np.mean((low["p"] >= threshold) == (ref["p"] >= threshold))),
        "named_agreement": float(np.mean(low["named"] == ref["named"])),
    }


def criteria(fp32: dict[str, Any], bf16: dict[str, Any], parity: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each criterion of the module docstring: its value, its limit and whether it is met."""
    differences = training_differences(fp32, bf16)
    rows = {
        **{f"{name}, difference": (differences[name], TOLERANCE[tol], "≤")
           for name, (_, tol) in TRAINING_FIGURES.items()},
        "inference: largest P(melanoma) difference": (parity["max_abs_dp"], TOLERANCE["p"], "≤"),
        "inference: same decision": (parity["decision_agreement"], TOLERANCE["decision"], "≥"),
        "inference: same named structure": (parity["named_agreement"], TOLERANCE["named"], "≥"),
        "training time bf16 / fp32": (bf16["train_s"] / fp32["train_s"], TARGET_TIME_RATIO, "≤"),
    }
    return {name: {"value": v, "limit": limit, "op": op, "met": bool(v <= limit if op == "≤" else v >= limit)}
            for name, (v, limit, op) in rows.items()}


def markdown(report: dict[str, Any]) -> str:
    """The results page: the machine, the per-run figures and the criteria per seed."""
    seeds = report["seeds"]
    kind = report["bf16"]
    lines = [
        "# bf16 on the CPU: does it keep the demo's results?",
        "",
        f"Written by `{report['command']}`. The demo preset trained on the CPU in float32 and in bf16 autocast "
        "(seeds " + ", ".join(seeds) + "), each best checkpoint evaluated on the synthetic test split in its own "
        "precision; the float32 checkpoint of each seed also run in bf16 on the same split.",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['threads']} torch threads, torch "
        f"{report['machine']['torch']}; native bf16: **{'yes' if kind == 'native' else 'no'}**. Load average before "
        f"{report['machine']['load_before']}, after {report['machine']['load_after']}.",
        "",
    ]
    if kind != "native":
        lines += [
            "This CPU has no native bf16, so dermogaze would run float32 when asked for bf16; the script made it "
            "autocast anyway (emulated bf16: bf16's roundings, not its kernels). The accuracy figures measure bf16; "
            "the times are those of emulated bf16 and say nothing of a CPU with native bf16.",
            "",
        ]
    lines += [
        "| seed | precision | test AUC | Jaccard lesion+skin | matched pointing | named pointing | training s |",
        "|---|---|---|---|---|---|---|",
    ]
    for seed, r in seeds.items():
        runs = [("fp32", r["fp32"]), ("bf16", r["bf16"])] + ([("fp32, 1 thread", r["fp32_1thread"])]
                                                             if "fp32_1thread" in r else [])
        for name, run in runs:
            lines.append(f"| {seed} | {name} | {run['auc']:.4f} | {run['jaccard']:.4f} | {run['pointing_matched']:.4f} "
                         f"| {run['pointing_named']:.4f} | {run['train_s']:.0f} |")
    names = list(next(iter(seeds.values()))["criteria"])
    lines += ["", "| criterion (bf16 against fp32, differences absolute) | limit | "
              + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|---|" + "---|" * len(seeds)]
    for name in names:
        first = next(iter(seeds.values()))["criteria"][name]
        cells = []
        for r in seeds.values():
            c = r["criteria"][name]
            cells.append(f"{c['value']:.4f} {'met' if c['met'] else '**not met**'}")
        lines.append(f"| {name} | {first['op']} {first['limit']:g} | " + " | ".join(cells) + " |")
    if all("noise_floor" in r for r in seeds.values()):
        lines += ["", "The noise floor: the float32 training of each seed again on one thread (another order of float "
                  "additions, nothing else changed) against the float32 run, next to bf16 against the float32 run.",
                  "", "| difference from the float32 run | limit | " + " | ".join(
                      f"seed {s}: fp32 1 thread / bf16" for s in seeds) + " |", "|---|---|" + "---|" * len(seeds)]
        for name, (_, tol) in TRAINING_FIGURES.items():
            cells = [f"{r['noise_floor'][name]:.4f} / {r['criteria'][name + ', difference']['value']:.4f}"
                     for r in seeds.values()]
            lines.append(f"| {name} | ≤ {TOLERANCE[tol]:g} | " + " | ".join(cells) + " |")
    verdict = report["verdict"]
    lines += [
        "",
        f"Inference on {next(iter(seeds.values()))['inference']['images']} test images "
        f"({next(iter(seeds.values()))['inference']['steps']} gaze steps) per seed.",
        "",
        "**Results kept** (every accuracy criterion met on every seed): "
        f"**{'yes' if verdict['results_kept'] else 'no'}**"
        + ("" if verdict["results_kept"] else " (missed: " + ", ".join(verdict["missed"]) + ")")
        + f". **Training time** bf16 / fp32 over all seeds: {verdict['time_ratio']:.2f} (target ≤ "
        f"{TARGET_TIME_RATIO:g}{', not meaningful here: emulated bf16' if kind != 'native' else ''}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bf16_parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/bf16_parity"),
                   help="runs and data (default: runs/bf16_parity)")
    p.add_argument("--threads", type=int, help="torch threads (default: PyTorch's, the cores; 1 on a busy machine, "
                   "where threads waiting for each other cost more than they bring)")
    p.add_argument("--retrain", action="store_true", help="retrain runs already trained")
    p.add_argument("--noise-floor", action="store_true",
                   help="also train each seed in float32 on one thread: how far two float32 trainings land apart")
    p.add_argument("--summary", action="store_true",
                   help="write benchmarks/results/bf16_parity.md and .json (else print the table)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = _load_average()
    kind = "native" if runtime.native_cpu_bf16() else "emulated"
    if kind == "emulated":
        runtime.native_cpu_bf16 = lambda: True  # autocast in bf16 all the same (see the module docstring)
    cache = prepare_demo_data(args.out / "data", DEMO_DATA, progress=False)
    seeds: dict[str, Any] = {}
    for k, seed in enumerate(args.seeds):
        order = PRECISIONS if k % 2 == 0 else PRECISIONS[::-1]
        runs = {amp: args.out / f"seed_{seed}" / ("fp32" if amp == "off" else amp) for amp in PRECISIONS}
        for amp in order:
            train_run(cache, runs[amp], amp, seed, args.retrain)
        fp32, bf16 = evaluate_run(cache, runs["off"], "off"), evaluate_run(cache, runs["bf16"], "bf16")
        parity = inference_parity(runs["off"] / "best.pt", cache)
        seeds[str(seed)] = {"fp32": fp32, "bf16": bf16, "inference": parity, "criteria": criteria(fp32, bf16, parity),
                            "order": ["fp32" if a == "off" else a for a in order]}
        if args.noise_floor:
            again = args.out / f"seed_{seed}" / "fp32_1thread"
            train_one_thread(cache, again, seed, args.retrain)
            seeds[str(seed)]["fp32_1thread"] = evaluate_run(cache, again, "off")
            seeds[str(seed)]["noise_floor"] = training_differences(fp32, seeds[str(seed)]["fp32_1thread"])
    accuracy = [name for name in next(iter(seeds.values()))["criteria"] if not name.startswith("training time")]
    missed = sorted(f"{name} (seed {s})" for s, r in seeds.items() for name in accuracy
                    if not r["criteria"][name]["met"])
    report = {
        "command": "python benchmarks/bf16_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "bf16": kind,
        "machine": {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_before": load_before, "load_after": _load_average()},
        "tolerance": TOLERANCE,
        "seeds": seeds,
        "verdict": {
            "results_kept": not missed,
            "missed": missed,
            "time_ratio": sum(r["bf16"]["train_s"] for r in seeds.values())
            / sum(r["fp32"]["train_s"] for r in seeds.values()),
        },
        "written": time.strftime("%Y-%m-%d %H:%M"),
    }
    text = markdown(report)
    if args.summary:
        write_json(report, RESULTS / "bf16_parity.json")
        write_text(text, RESULTS / "bf16_parity.md")
        print(f"written to {RESULTS / 'bf16_parity.md'} and .json")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
