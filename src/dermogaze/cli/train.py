"""``dermogaze train`` (a run folder from a preset) and ``dermogaze evaluate`` (a checkpoint on a split).

Configuration precedence for ``train``: the preset (``--preset NAME`` or a YAML path) → the dataclass defaults it
leaves alone (the paper's recipe) → ``-o section.key=value`` overrides → the explicit flags (``--data``,
``--device``, ``--amp``, ``--workers``, ``--seed``). ``--resume RUN`` starts from the configuration stored in
``RUN/last.pt`` instead of a preset; overrides and flags still apply (e.g. ``-o train.epochs=30`` to extend a
finished run), but the model section must stay the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DermogazeError
from .common import (
    add_runtime_arguments,
    batch_size_int,
    bootstrap_int,
    check_output_folder,
    non_negative_int,
    seed_int,
)

if TYPE_CHECKING:
    from ..config import Config


def _train_config(args: argparse.Namespace) -> tuple[Config, Path, bool]:
    """Resolve the config, run folder and resume flag of ``dermogaze train``."""
    from ..config import Config, load_config, merge, parse_overrides, validate

    if args.resume:
        from ..training.checkpoint import load_checkpoint

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
    flags: Mapping[str, tuple[Any, Any]] = {
        "cache": (cfg.data, args.data),
        "device": (cfg.train, args.device),
        "amp": (cfg.train, args.amp),
        "workers": (cfg.data, args.workers),
        "seed": (cfg.train, args.seed),
    }
    for key, (section, value) in flags.items():
        if value is not None:
            setattr(section, key, value)
    validate(cfg, source="command line")
    check_output_folder(run, "--resume" if args.resume else "--out")
    return cfg, run, bool(args.resume)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..data.cache import load_info

    cfg, run, resume = _train_config(args)
    if cfg.data.cache is not None:
        load_info(cfg.data.cache)  # a missing or broken cache said before torch loads
    from ..training.train import train

    summary = train(cfg, run, resume=resume, overwrite=args.overwrite, progress=not args.no_progress)
    if summary["is_main"]:
        print(
            f"trained {summary['epochs']} epochs; best validation loss {summary['best_val_loss']:.4f} at epoch "
            f"{summary['best_epoch']}; checkpoints: {summary['best']} (best), {summary['last']} (last)"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate_checkpoint
    from ..evaluation.tables import format_table

    if args.out is not None:
        check_output_folder(args.out)
    result = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, args.out, device=args.device, batch_size=args.batch_size,
        workers=args.workers, amp=args.amp, tta=args.tta, by=args.by, compare=args.compare,
        n_resamples=args.bootstrap, seed=args.seed, faithfulness=args.faithfulness, progress=not args.no_progress,
    )
    print(format_table(result["metrics"]))
    print(f"\nwritten to {result['out_dir']}: " + ", ".join(p.name for p in result["files"].values()))
    return 0


def add_train(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``train`` to ``sub``."""
    p = sub.add_parser(
        "train",
        help=help_line,
        description="Train a gaze network on a prepared cache. Writes RUN/config.yaml, RUN/metrics.jsonl, "
        "RUN/last.pt and RUN/best.pt. Under torchrun, trains on every process (train.batch_size is the global "
        "batch).",
    )
    p.add_argument("--data", metavar="CACHE", help="prepared cache folder (dermogaze data prepare)")
    p.add_argument("--preset", metavar="NAME", help="a shipped preset (e.g. deco_gap_3, demo) or a YAML file")
    p.add_argument("--out", metavar="RUN", help="run folder to write (default: runs/<preset or variant>)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key, e.g. -o train.epochs=3 -o model.width=0.5 (repeatable)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from RUN/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a run folder that holds an earlier run (its files are replaced)")
    p.add_argument("--seed", type=seed_int, metavar="S", help="random seed (a CPU run is repeatable)")
    add_runtime_arguments(p, from_config=True)
    p.set_defaults(func=_cmd_train)


def add_evaluate(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``evaluate`` to ``sub``."""
    from ..config import DEFAULT_FAITHFULNESS

    p = sub.add_parser(
        "evaluate",
        help=help_line,
        description="Evaluate a checkpoint on a prepared split: writes metrics.json, predictions.csv "
        "(image_id,melanoma[,label]), confusion_matrix.png, roc.png and reliability.png, and prints a table. "
        "The diagnosis uses the checkpoint's calibration (temperature and decision threshold fitted on the "
        "validation split); intervals are stratified bootstrap 95% intervals.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="RUN/best.pt or RUN/last.pt")
    p.add_argument("--data", metavar="CACHE", help="prepared cache (default: the one the model was trained on)")
    p.add_argument("--split", default="test", help="cache split: train, val or test (default: test)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <checkpoint folder>/eval_<split>)")
    p.add_argument("--batch-size", type=batch_size_int, metavar="N", help="default: the training batch size")
    p.add_argument("--tta", action="store_true",
                   help="also diagnose under the 8 flips/rotations, averaged, and report AUC with and without")
    p.add_argument("--by", action="append", default=[], metavar="FIELD",
                   help="AUC per subgroup of a metadata field kept by 'data prepare': sex, age (20-year bands), "
                   "localization (repeatable)")
    p.add_argument("--compare", metavar="CSV",
                   help="another model's predictions.csv on the same images: DeLong's test of the two AUCs")
    p.add_argument("--bootstrap", type=bootstrap_int, default=2000, metavar="N",
                   help="resamples of the 95%% bootstrap intervals, 100 to 100000 (default: 2000)")
    p.add_argument("--seed", type=seed_int, default=0, metavar="S",
                   help="seed of the bootstrap and of deletion's random pixel orders (default: 0)")
    p.add_argument("--faithfulness", type=non_negative_int, default=DEFAULT_FAITHFULNESS, metavar="N",
                   help="explanation measures: run deletion/insertion and stability (the costly ones) on the first N "
                   f"images of the split; 0 skips them (default: {DEFAULT_FAITHFULNESS}); their cost is printed")
    add_runtime_arguments(p)
    p.set_defaults(func=_cmd_evaluate)
