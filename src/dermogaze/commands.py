"""``dermogaze train``, ``dermogaze evaluate`` and ``dermogaze demo``.

Configuration precedence for ``train``: the preset (``--preset NAME`` or a YAML path) → the
dataclass defaults it leaves alone (the paper's recipe) → ``-o section.key=value`` overrides →
the explicit flags (``--data``, ``--device``, ``--amp``, ``--workers``, ``--seed``).
``--resume RUN`` starts from the configuration stored in ``RUN/last.pt`` instead of a preset;
overrides and flags still apply (e.g. ``-o train.epochs=30`` to extend a finished run), but the
model section must stay the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import Config, load_config, merge, parse_overrides
from .errors import DermogazeError

logger = logging.getLogger(__name__)


def _add_runtime_arguments(p: argparse.ArgumentParser, *, amp: bool = True, from_config: bool = False) -> None:
    """``--device``, ``--amp``, ``--workers``, ``--no-progress``; ``from_config``: unset leaves the config's."""
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None if from_config else "auto",
                   help="compute device (default: auto)")  # fmt: skip
    if amp:
        p.add_argument("--amp", choices=["off", "bf16", "fp16"], default=None if from_config else "off",
                       help="mixed precision on CUDA (default: off)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None if from_config else 0, metavar="N",
                   help="data-loader worker processes" + ("" if from_config else " (default: 0)"))  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train``, ``evaluate`` and ``demo`` subcommands."""
    p = subparsers.add_parser(
        "train",
        help="train a model on a prepared cache (paper recipe by default)",
        description="Train a gaze network on a prepared cache. Writes RUN/config.yaml, RUN/metrics.jsonl, "
        "RUN/last.pt and RUN/best.pt. Under torchrun, trains on every process (train.batch_size is the global "
        "batch).",
    )
    p.add_argument("--data", metavar="CACHE", help="prepared cache folder (dermogaze data prepare)")
    p.add_argument("--preset", metavar="NAME", help="config preset name (configs/NAME.yaml) or a YAML file")
    p.add_argument("--out", metavar="RUN", help="run folder to write (default: runs/<preset or variant>)")
    p.add_argument(
        "-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config key, e.g. -o train.epochs=3 -o model.width=0.5 (repeatable)",
    )  # fmt: skip
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from RUN/last.pt")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (a CPU run is repeatable)")
    _add_runtime_arguments(p, from_config=True)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "evaluate",
        help="every SPEC §6 metric of a checkpoint on a prepared split",
        description="Evaluate a checkpoint on a prepared split: writes metrics.json, predictions.csv "
        "(image_id,melanoma[,label]), confusion_matrix.png and roc.png, and prints a table.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="RUN/best.pt or RUN/last.pt")
    p.add_argument("--data", metavar="CACHE", help="prepared cache (default: the one the model was trained on)")
    p.add_argument("--split", default="test", help="cache split: train, val or test (default: test)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <checkpoint folder>/eval_<split>)")
    p.add_argument("--batch-size", type=int, metavar="N", help="default: the training batch size")
    _add_runtime_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline on the built-in synthetic dataset (a few minutes on a CPU)",
        description="Synthesise the built-in dataset, prepare it, train a small model, evaluate it on the test "
        "split, explain a few test images and write OUT/report.md.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="a smaller, shorter run (a smoke test, not a result)")
    _add_runtime_arguments(p, amp=False)
    p.set_defaults(func=cmd_demo)


def _train_config(args: argparse.Namespace) -> tuple[Config, Path, bool]:
    """Resolve the config, run folder and resume flag of ``dermogaze train``."""
    from .engine import load_checkpoint

    if args.resume:
        run = Path(args.resume)
        if args.out and Path(args.out).resolve() != run.resolve():
            raise DermogazeError(f"--resume {run} continues that run folder; drop --out {args.out} or make it equal")
        if args.preset:
            raise DermogazeError("--resume takes the configuration stored in the run; drop --preset")
        ckpt = load_checkpoint(run / "last.pt")
        cfg = Config.from_dict(ckpt["config"], source=f"{run / 'last.pt'} config")
        merge(cfg, parse_overrides(args.override), source="command line")
    else:
        cfg = load_config(args.preset, args.override)
        name = Path(args.preset).stem if args.preset else cfg.model.name
        run = Path(args.out) if args.out else Path("runs") / name
    if args.data:
        cfg.data.cache = args.data
    if args.device:
        cfg.train.device = args.device
    if args.amp:
        cfg.train.amp = args.amp
    if args.workers is not None:
        if args.workers < 0:
            raise DermogazeError(f"--workers must be >= 0, got {args.workers}")
        cfg.data.workers = args.workers
    if args.seed is not None:
        cfg.train.seed = args.seed
    return cfg, run, bool(args.resume)


def cmd_train(args: argparse.Namespace) -> int:
    from .engine import train

    cfg, run, resume = _train_config(args)
    summary = train(cfg, run, resume=resume, progress=not args.no_progress)
    if summary.get("is_main", True):
        best = summary["best_val_loss"]
        print(
            f"trained {summary['epochs']} epochs; best validation loss {best:.4f} at epoch {summary['best_epoch']}; "
            f"checkpoints: {summary['best']} (best), {summary['last']} (last)"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .engine import evaluate_checkpoint
    from .metrics import format_table

    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.split,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        amp=args.amp,
        progress=not args.no_progress,
    )
    print(format_table(result["metrics"]))
    print(f"\nwritten to {result['out_dir']}: " + ", ".join(p.name for p in result["files"].values()))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .report import run_demo

    report = run_demo(
        args.out, fast=args.fast, device=args.device, workers=args.workers, progress=not args.no_progress
    )
    print(f"\nreport: {report}", file=sys.stdout)
    return 0
