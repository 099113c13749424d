"""The ``dermogaze`` command line: every subcommand, and the only module that knows argparse.

Subcommands, in the order of the dataflow::

    data synth | prepare | stats     write the synthetic dataset, build a cache, print Tables 1-2
    model list | summary             the Table 3 variants and their parameter counts
    train                            a run folder from a preset (torchrun for several processes)
    evaluate                         every SPEC §6 metric of a checkpoint on a prepared split
    predict                          challenge submission files (ISIC 2018 Task 2 masks, ISIC 2017 Part 3 CSV)
    explain                          gazes, structures, JSON and figures per image
    demo                             the whole pipeline on the built-in synthetic data
    gaze compare                     MultiMatch of a record's gaze sequence vs a human scanpath
    compare | table3                 runs side by side in one table; Table 3 trained and tabulated
    sweep [show NAME]                Optuna hyperparameter search (processes share a study); its report
    bench                            the training-step benchmark of a repository checkout
    export                           a checkpoint's network as an ONNX file (for onnxruntime)
    serve                            the gaze viewer in the browser (Gradio, this machine only by default)

Shared runtime flags (:func:`_add_runtime_arguments`): ``--device auto|cpu|cuda`` (default
``auto`` everywhere), ``--amp``, ``--workers``, ``--no-progress``. Library code receives typed
arguments and raises :class:`~dermogaze.errors.DermogazeError`.

Errors: every user error is one line ``dermogaze: error: ...`` on stderr, exit status 2, never a
traceback:

- a :class:`~dermogaze.errors.DermogazeError` (a bad file, folder, checkpoint or option value:
  :func:`dermogaze.config.validate` checks every config value before anything is created);
- a usage error of the parser (a bad flag value such as ``--batch-size -2``): argparse's usual
  usage block is left out, the line ends with where ``--help`` is (:class:`_Parser`);
- an operating-system error (a folder without write permission, a full disk, ``--out`` under a
  file...): ``cannot write|read|access PATH: <the system's reason> (<what to do>)``, or ``cannot
  write under OUT: ...`` when the failed call names no file (a full disk; :func:`describe_os_error`).
  An ``--out`` that is a file, lies under one or is not writable is refused before any work
  (:func:`check_output_folder`).

A closed standard output (``dermogaze model list | head -1``) ends the command quietly, as Unix
tools do: nothing more is written and the exit status is 141 (128 + SIGPIPE, what a shell reports
for a tool killed by SIGPIPE). Ctrl-C prints ``dermogaze: interrupted`` (status 130).

Configuration precedence for ``train``: the preset (``--preset NAME`` or a YAML path) → the
dataclass defaults it leaves alone (the paper's recipe) → ``-o section.key=value`` overrides →
the explicit flags (``--data``, ``--device``, ``--amp``, ``--workers``, ``--seed``).
``--resume RUN`` starts from the configuration stored in ``RUN/last.pt`` instead of a preset;
overrides and flags still apply (e.g. ``-o train.epochs=30`` to extend a finished run), but the
model section must stay the same.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .compare import compare_runs
from .config import Config, load_config, merge, parse_overrides, validate
from .data.cache import LAYOUTS, format_stats, load_info, prepare
from .data.splits import parse_fractions
from .data.synth import labels_path as synth_labels_path
from .data.synth import write_synthetic_isic
from .demo import run_demo
from .errors import DermogazeError
from .evaluate import DEFAULT_FAITHFULNESS, evaluate_checkpoint
from .explain import renamed_outputs, run_explain, summary_line
from .export import export_onnx
from .metrics import format_table
from .models import build_model, list_models
from .predict import FORMATS as PREDICT_FORMATS
from .predict import predict
from .runtime import AMP_MODES, DEVICES
from .scanpath import SIMILARITIES, compare_record
from .serve import DEFAULT_HOST, DEFAULT_PORT, Viewer, launch
from .sweep import run_sweep, show_sweep
from .table3 import TABLE3_PRESETS, run_table3
from .training import load_checkpoint, train

#: Where ``dermogaze bench`` finds the benchmark, relative to a repository checkout.
BENCH_SCRIPT = Path("benchmarks") / "bench_train.py"


#: Exit status of a command whose standard output was closed (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141

#: What to do about an operating-system error, by ``errno``.
_OS_HINTS: dict[int, str] = {
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENOSPC: "free some disk space, or choose a folder on another disk",
    errno.EDQUOT: "free some disk space, or choose a folder on another disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way where a folder is needed",
    errno.EISDIR: "a file is needed there, not a folder",
    errno.ENOENT: "check the path",
}
#: Errors that only a write produces (the others may come from a read as well).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors are one ``dermogaze: error:`` line (status 2), like every other
    error of the command; the usage it leaves out is one ``--help`` away. Subcommand parsers are of this
    class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"dermogaze: error: {message} (see '{self.prog} --help')\n")


def describe_os_error(exc: OSError, out: str | Path | None = None) -> str:
    """One line for an operating-system error: the path, the system's reason and what to do.

    Args:
        exc: the error; its ``filename`` names the path when the system call had one.
        out: the command's output folder, named when the error has no path (a failed write to an
            open file, e.g. a full disk).
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        verb = "write" if exc.errno in _WRITE_ERRNOS else "read" if exc.errno == errno.ENOENT else "access"
        text = f"cannot {verb} {os.fsdecode(exc.filename)}: {reason}"
    elif out is not None:
        text = f"cannot write under {out}: {reason}"
    else:
        text = reason
    hint = _OS_HINTS.get(exc.errno or 0)
    return f"{text} ({hint})" if hint else text


def check_output_folder(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be written.

    Args:
        path: the folder the command will create or fill.
        option: the flag that named it, for the message.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DermogazeError: naming the file in the way or the folder without write permission.
    """
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise DermogazeError(
                    f"{option} {path}: cannot write in {folder} (permission denied or read-only): choose another folder"
                )
            return path
        if folder.exists() or folder.is_symlink():
            where = "is not a folder" if folder == path else f"lies under {folder}, which is not a folder"
            raise DermogazeError(f"{option} {path} {where}: give a folder (it is created if missing)")
    return path


# ----------------------------------------------------------------------------------------------
# Argument types and shared flags
# ----------------------------------------------------------------------------------------------
def _int_at_least(minimum: int) -> Callable[[str], int]:
    """``argparse`` type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _add_runtime_arguments(
    p: argparse.ArgumentParser, *, amp: bool = True, workers: bool = True, from_config: bool = False
) -> None:
    """``--device``, ``--amp``, ``--workers``, ``--no-progress``.

    With ``from_config`` (``train``), an unset flag leaves the configuration's value (whose
    defaults are the same: ``auto``, ``off``, 0).
    """
    p.add_argument("--device", choices=DEVICES, default=None if from_config else "auto",
                   help="compute device (default: auto, the GPU when there is one)")
    if amp:
        p.add_argument("--amp", choices=AMP_MODES, default=None if from_config else "off",
                       help="mixed precision on CUDA (default: off)")
    if workers:
        p.add_argument("--workers", type=non_negative_int, default=None if from_config else 0, metavar="N",
                       help="data-loader worker processes (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def _parse_prevalences(items: list[str]) -> dict[str, float] | None:
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise DermogazeError(f"--prevalence {item!r} must look like NAME=P, e.g. streaks=0.1")
    return out or None


def _cmd_synth(args: argparse.Namespace) -> int:
    test_split = "Test" if args.layout == "isic2018" else "Test_v2"
    out = write_synthetic_isic(
        check_output_folder(args.out),
        counts={"Training": args.train, "Validation": args.val, test_split: args.test},
        image_size=(args.width, args.height),
        seed=args.seed,
        prevalences=_parse_prevalences(args.prevalence),
        progress=not args.no_progress,
        layout=args.layout,
    )
    if args.layout == "isic2018":
        print(f"synthetic ISIC 2018 Task 1-2 collection written to {out} (diagnosis labels for --labels: "
              f"{synth_labels_path(out)})")
    else:
        print(f"synthetic ISIC 2017 collection written to {out}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    info = prepare(
        args.isic, check_output_folder(args.out), size=args.size, workers=args.workers, skip_bad=args.skip_bad,
        progress=not args.no_progress, force=args.force, labels=args.labels, split=parse_fractions(args.split),
        seed=args.seed, layout=args.layout,
    )
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    masks = "with structure masks" if info["has_masks"] else "classification only (no Part 1/Part 2)"
    print(f"cache {args.out}: {counts}; {masks}; {len(info['skipped'])} bad samples skipped")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    print(format_stats(load_info(args.cache)))
    return 0


def _register_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="synthesise, prepare and inspect datasets")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = actions.add_parser("synth", help="write the synthetic dataset in the ISIC 2017 layout (SPEC §8)")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--train", type=non_negative_int, default=200, help="training images (default 200)")
    p.add_argument("--val", type=non_negative_int, default=50, help="validation images (default 50)")
    p.add_argument("--test", type=non_negative_int, default=100, help="test images (default 100)")
    p.add_argument("--width", type=positive_int, default=320, help="image width in pixels (default 320)")
    p.add_argument("--height", type=positive_int, default=240, help="image height in pixels (default 240)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="dataset seed (default 0)")
    p.add_argument(
        "--prevalence", action="append", default=[], metavar="NAME=P",
        help="fraction of images holding a feature (or 'melanoma'); repeatable, e.g. --prevalence streaks=0.1",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--layout", choices=("isic2017", "isic2018"), default="isic2017",
                   help="ISIC 2017 (superpixels, Part 1-3) or ISIC 2018 Task 1-2 (pixel masks, globules) layout "
                        "(default isic2017)")
    p.set_defaults(func=_cmd_synth)

    p = actions.add_parser("prepare", help="decode, resize and cache an ISIC 2017 collection once")
    p.add_argument("--isic", required=True, type=Path,
                   help="folder with the ISIC-2017_* or ISIC2018_Task1-2 folders, or a folder of images (--labels)")
    p.add_argument("--out", required=True, type=Path, help="cache folder to write")
    p.add_argument("--size", type=positive_int, default=256, help="side of the cached square images (default 256)")
    p.add_argument("--workers", type=positive_int, default=1, help="decoding processes (default 1)")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad samples instead of stopping")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--labels", type=Path, metavar="CSV",
                   help="diagnosis CSV for a collection without labels of its own: ISIC 2018 Task 1-2, or --isic "
                        "as a folder of images (HAM10000_metadata.csv, ISIC2018_Task3_Training_GroundTruth.csv, "
                        "ISIC_2019_Training_GroundTruth.csv, ISIC 2020 train.csv, or image_id/isic_id with "
                        "melanoma or diagnosis)")
    p.add_argument("--split", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions where prepare divides a collection into splits, by lesion_id when known "
                        "(default 0.8,0.1,0.1)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of that division (default 0)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="the collection's layout (default auto: recognised from the folder names, ISIC-2017_* or "
                        "ISIC2018_Task*)")
    p.set_defaults(func=_cmd_prepare)

    p = actions.add_parser("stats", help="print Table 1 (structure presence) and Table 2 (w, w') of a cache")
    p.add_argument("cache", type=Path, help="cache folder written by `dermogaze data prepare`")
    p.set_defaults(func=_cmd_stats)


# ----------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------
def _cmd_model_list(args: argparse.Namespace) -> int:
    print("\n".join(list_models()))
    return 0


def _cmd_model_summary(args: argparse.Namespace) -> int:
    model = build_model(
        args.name, image_size=args.image_size, steps=args.steps, width=args.width, skip=args.skip,
        batch_norm=args.batch_norm, weights=args.weights,
    )
    if args.freeze_encoder:
        model.freeze_encoder()
    print(model.summary())
    return 0


def _register_model(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("model", help="list the network variants or show one's parameter counts")
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    p = actions.add_parser("list", help="names of the registered variants (Table 3)")
    p.set_defaults(func=_cmd_model_list)

    p = actions.add_parser("summary", help="build a variant and print its parameter counts per module")
    p.add_argument("name", help=f"variant: {', '.join(list_models())}")
    p.add_argument("--image-size", type=positive_int, default=224, help="input size, multiple of 32 (224)")
    p.add_argument("--steps", type=positive_int, default=5, help="T, number of gazes (5)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = the paper)")
    p.add_argument("--skip", action=argparse.BooleanOptionalAction, default=None,
                   help="decoder skip averaging (default: the variant's)")
    p.add_argument("--batch-norm", choices=("on", "off", "frozen"), default=None,
                   help="batch norm mode (default: the variant's)")
    p.add_argument("--weights", default=None, help="'imagenet' or a vgg16_bn state dict file")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="count the encoder as frozen (the paper's encoder learning rate of 0)")
    p.set_defaults(func=_cmd_model_summary)


# ----------------------------------------------------------------------------------------------
# train, evaluate
# ----------------------------------------------------------------------------------------------
def _train_config(args: argparse.Namespace) -> tuple[Config, Path, bool]:
    """Resolve the config, run folder and resume flag of ``dermogaze train``."""
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
    cfg, run, resume = _train_config(args)
    summary = train(cfg, run, resume=resume, overwrite=args.overwrite, progress=not args.no_progress)
    if summary["is_main"]:
        print(
            f"trained {summary['epochs']} epochs; best validation loss {summary['best_val_loss']:.4f} at epoch "
            f"{summary['best_epoch']}; checkpoints: {summary['best']} (best), {summary['last']} (last)"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
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


def _register_train_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a prepared cache (paper recipe by default)",
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
    p.add_argument("--seed", type=non_negative_int, metavar="S", help="random seed (a CPU run is repeatable)")
    _add_runtime_arguments(p, from_config=True)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="every SPEC §6 metric of a checkpoint on a prepared split",
        description="Evaluate a checkpoint on a prepared split: writes metrics.json, predictions.csv "
        "(image_id,melanoma[,label]), confusion_matrix.png, roc.png and reliability.png, and prints a table. "
        "The diagnosis uses the checkpoint's calibration (temperature and decision threshold fitted on the "
        "validation split); intervals are stratified bootstrap 95% intervals.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="RUN/best.pt or RUN/last.pt")
    p.add_argument("--data", metavar="CACHE", help="prepared cache (default: the one the model was trained on)")
    p.add_argument("--split", default="test", help="cache split: train, val or test (default: test)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <checkpoint folder>/eval_<split>)")
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="default: the training batch size")
    p.add_argument("--tta", action="store_true",
                   help="also diagnose under the 8 flips/rotations, averaged, and report AUC with and without")
    p.add_argument("--by", action="append", default=[], metavar="FIELD",
                   help="AUC per subgroup of a metadata field kept by 'data prepare': sex, age (20-year bands), "
                   "localization (repeatable)")
    p.add_argument("--compare", metavar="CSV",
                   help="another model's predictions.csv on the same images: DeLong's test of the two AUCs")
    p.add_argument("--bootstrap", type=positive_int, default=2000, metavar="N",
                   help="resamples of the 95%% bootstrap intervals (default: 2000)")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S",
                   help="seed of the bootstrap and of deletion's random pixel orders (default: 0)")
    p.add_argument("--faithfulness", type=non_negative_int, default=DEFAULT_FAITHFULNESS, metavar="N",
                   help="explanation measures: run deletion/insertion and stability (the costly ones) on the first N "
                   f"images of the split; 0 skips them (default: {DEFAULT_FAITHFULNESS}); their cost is printed")
    _add_runtime_arguments(p)
    p.set_defaults(func=_cmd_evaluate)


# ----------------------------------------------------------------------------------------------
# explain, demo
# ----------------------------------------------------------------------------------------------
def _cmd_explain(args: argparse.Namespace) -> int:
    records = run_explain(
        args.checkpoint, args.inputs, check_output_folder(args.out), data=args.data, split=args.split,
        limit=args.limit, device=args.device, progress=not args.no_progress,
    )
    for rec in records:
        print(summary_line(rec))
    renamed = renamed_outputs(records)
    note = ""
    if renamed:
        shown = ", ".join(f"{rec['image_id']} ({rec['image_path']}) as {stem}.json" for rec, stem in renamed[:3])
        note = f"; {len(renamed)} saved under another name so that none overwrites another ({shown}" + (
            ", ...)" if len(renamed) > 3 else ")")
    print(f"wrote {len(records)} explanation(s) (JSON + figures) to {args.out}{note}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    report = run_demo(check_output_folder(args.out), fast=args.fast, device=args.device, workers=args.workers,
                      progress=not args.no_progress)
    print(f"\nreport: {report}")
    return 0


def _register_explain_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="explain images with a trained checkpoint: gazes, structures, JSON and figures",
        description=(
            "Explain the diagnosis of each image: the gaze of every step (arg-max of its attention map, in the "
            "image's own pixels), its predicted structure and mask, the melanoma probability, and with --data the "
            "ground truth. Writes OUT/<id>.json, OUT/<id>_gazes.png and, for decoder variants, OUT/<id>_masks.png."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image files (JPEG/PNG of any size), or split names (train/val/test) with --data")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by 'dermogaze train' (RUN/best.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--data", default=None, help="prepared cache: explain its images, with their ground truth")
    p.add_argument("--split", default=None, help="split of --data to explain (default: test)")
    p.add_argument("--limit", type=positive_int, default=None, help="explain at most N images")
    _add_runtime_arguments(p, amp=False, workers=False)
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser(
        "demo",
        help="the whole pipeline on the built-in synthetic dataset (a few minutes on a CPU)",
        description="Synthesise the built-in dataset, prepare it, train a small model, evaluate it on the test "
        "split, explain a few test images and write OUT/report.md.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="a smaller, shorter run (a smoke test, not a result)")
    _add_runtime_arguments(p, amp=False)
    p.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------------------------
# gaze (the model's gaze sequence against a human scanpath)
# ----------------------------------------------------------------------------------------------
def _cmd_gaze_compare(args: argparse.Namespace) -> int:
    result = compare_record(args.record, args.fixations)
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
        return 0
    width, height = result["image_size"]
    print(f"MultiMatch similarity (1 = identical) of {result['image_id']}: {result['model_fixations']} model gazes "
          f"vs {result['human_fixations']} human fixations, on the {width}×{height} px image")
    for name in SIMILARITIES:
        print(f"  {name:<10} {result['similarities'][name]:.3f}")
    print(f"(model gaze durations ∝ attention peak, scaled to the human mean fixation of "
          f"{result['mean_fixation_ms']:.0f} ms)")
    return 0


def _register_gaze(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("gaze", help="compare the model's gaze sequence with a human scanpath (eye tracking)")
    actions = parser.add_subparsers(dest="gaze_command", metavar="ACTION", required=True)
    p = actions.add_parser(
        "compare",
        help="MultiMatch's five similarities between an explanation record and a human fixations CSV",
        description=(
            "Compare the gaze sequence of an explanation record (RECORD.json, written by 'dermogaze explain') with a "
            "human scanpath (FIXATIONS.csv: columns x,y,duration_ms in the image's own pixels, one fixation per row "
            "in viewing order) by MultiMatch: vector, direction, length, position and duration similarity in [0, 1]. "
            "Each gaze is a fixation at its attention peak, lasting in proportion to the peak value, scaled to the "
            "human mean fixation duration. Both need at least three fixations."
        ),
    )
    p.add_argument("record", type=Path, metavar="RECORD.json", help="explanation record of 'dermogaze explain'")
    p.add_argument("fixations", type=Path, metavar="FIXATIONS.csv", help="human fixations: x,y,duration_ms")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_gaze_compare)


# ----------------------------------------------------------------------------------------------
# compare, table3
# ----------------------------------------------------------------------------------------------
def _cmd_compare(args: argparse.Namespace) -> int:
    result = compare_runs(
        args.runs, split=args.split, cache=args.data, out_dir=check_output_folder(args.out), device=args.device,
        amp=args.amp, workers=args.workers, n_resamples=args.bootstrap, faithfulness=args.faithfulness,
        progress=not args.no_progress,
    )
    print(result["markdown"])
    print(f"written to {result['files']['markdown']} and {result['files']['csv']}")
    return 0


def _cmd_table3(args: argparse.Namespace) -> int:
    result = run_table3(
        args.data, check_output_folder(args.out), overrides=args.override, epochs=args.epochs, jobs=args.jobs,
        split=args.split, presets=args.presets, device=args.device, amp=args.amp, workers=args.workers,
        n_resamples=args.bootstrap, faithfulness=args.faithfulness, progress=not args.no_progress,
    )
    print(result["markdown"])
    print(f"written to {result['files']['markdown']} and {result['files']['csv']}; every metric of every run: "
          f"{result['files']['compare_markdown']}")
    return 0


def _add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    """``--bootstrap`` and ``--faithfulness`` of the evaluations that ``compare`` and ``table3`` run."""
    p.add_argument("--bootstrap", type=positive_int, default=2000, metavar="N",
                   help="resamples of the 95%% bootstrap intervals (default: 2000)")
    p.add_argument("--faithfulness", type=non_negative_int, default=DEFAULT_FAITHFULNESS, metavar="N",
                   help="deletion/insertion and stability (the costly explanation measures) on the first N images; "
                   f"0 skips them (default: {DEFAULT_FAITHFULNESS})")


def _register_experiments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="evaluate several runs on one split and tabulate them side by side (with DeLong's test)",
        description="Evaluate the best.pt of every run on the same cache and split and write one table (Markdown "
        "and CSV): AUC, AP, specificity at the ISIC 2017 sensitivities, structure mAP, Jaccard of lesion and skin, "
        "Task 2 superpixel AUC and the explanation metrics, with 95%% intervals and DeLong's p against the first run.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by 'dermogaze train' (the first is "
                   "the reference)")
    p.add_argument("--split", default="test", help="cache split (default: test)")
    p.add_argument("--data", metavar="CACHE", help="prepared cache (default: the one the runs were trained on)")
    p.add_argument("--out", default="runs/compare", metavar="DIR",
                   help="output folder: compare.md, compare.csv and each run's evaluation (default: runs/compare)")
    _add_evaluation_arguments(p)
    _add_runtime_arguments(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser(
        "table3",
        help="train the seven Table 3 presets with one seed and budget, evaluate them and write Table 3",
        description=f"Train the presets {', '.join(TABLE3_PRESETS)} on one cache with the same overrides (seed, "
        "epochs, batch, rates, size), one after the other or --jobs at once; evaluate each best checkpoint and write "
        "OUT/table3.md and .csv (AUC and AP with 95%% intervals, the paper's figures beside) and the full comparison "
        "in OUT/compare_<split>/. Rerun the same command after an interruption: finished presets are kept, a "
        "half-trained one resumes from its last epoch.",
    )
    p.add_argument("--data", required=True, metavar="CACHE", help="prepared cache (dermogaze data prepare)")
    p.add_argument("--out", required=True, metavar="DIR", help="experiment folder (one run folder per preset)")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="epochs of every preset (default: the paper's 20)")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="J", help="trainings at once (default: 1)")
    p.add_argument("--presets", type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                   default=list(TABLE3_PRESETS), metavar="P1,P2,...",
                   help="only these rows of Table 3, comma-separated (default: all seven)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key of every preset, e.g. -o model.width=0.25 (repeatable)")
    p.add_argument("--split", default="test", help="cache split the table is computed on (default: test)")
    _add_evaluation_arguments(p)
    _add_runtime_arguments(p, from_config=True)
    p.set_defaults(func=_cmd_table3)


# ----------------------------------------------------------------------------------------------
# export (ONNX)
# ----------------------------------------------------------------------------------------------
def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output file that is a folder, lies under a file, or whose folder cannot be
    written (:func:`check_output_folder` for a file; its folder is created if missing)."""
    path = Path(path)
    if path.is_dir():
        raise DermogazeError(f"{option} {path} is a folder: give the file to write, e.g. {path / 'model.onnx'}")
    for folder in path.parents:
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise DermogazeError(
                    f"{option} {path}: cannot write in {folder} (permission denied or read-only): choose another folder"
                )
            return path
        if folder.exists() or folder.is_symlink():
            raise DermogazeError(f"{option} {path} lies under {folder}, which is not a folder: give another path")
    return path


def _cmd_export(args: argparse.Namespace) -> int:
    result = export_onnx(args.checkpoint, check_output_file(args.out))
    meta = result["metadata"]
    diffs = ", ".join(f"{name} {diff:.1e}" for name, diff in result["max_abs_diff"].items())
    print(f"exported {meta['variant']} (T={meta['steps']}, input images (batch, 3, {meta['image_size']}, "
          f"{meta['image_size']}) normalised with the metadata's mean/std) to {result['path']}")
    print(f"outputs: {', '.join(result['outputs'])}; checked in onnxruntime, max |ONNX - PyTorch|: {diffs}")
    return 0


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint's network to ONNX (dynamic batch; normalisation, structures and threshold "
        "in its metadata)",
        description="Export the network of a checkpoint to an ONNX file: input 'images' (batch, 3, S, S), "
        "normalised; outputs melanoma_probability (calibrated), logits, and as the variant has them attention, "
        "masks and structure_logits. The batch size is dynamic, T and S are the checkpoint's. The metadata holds "
        "mean, std, structures, image_size, steps, temperature and threshold. The file is checked in onnxruntime "
        "against PyTorch before it is written. Needs the export extra: pip install 'dermogaze[export]'.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="checkpoint written by 'dermogaze train' "
                   "(RUN/best.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. model.onnx")
    p.set_defaults(func=_cmd_export)


# ----------------------------------------------------------------------------------------------
# serve (the gaze viewer in the browser)
# ----------------------------------------------------------------------------------------------
def _cmd_serve(args: argparse.Namespace) -> int:
    viewer = Viewer(args.checkpoint, args.data, device=args.device)
    if args.host not in (DEFAULT_HOST, "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "serving on %s: other machines can reach the viewer, and it has no login", args.host)
    print(f"dermogaze viewer of {args.checkpoint}: open http://{args.host}:{args.port} in a browser (Ctrl-C stops it)")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up requests to its own server
    launch(viewer, host=args.host, port=args.port, quiet=True)
    return 0


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="the gaze viewer in the browser: diagnosis, gazes step by step, switching gazes off",
        description="Serve a web page (Gradio, offline) over a checkpoint: upload a JPEG/PNG or pick an image of a "
        "prepared split (--data, with its ground truth) and see P(melanoma), the decision at the checkpoint's "
        "threshold, the numbered gaze path, each gaze's attention, mask and structure, and the diagnosis recomputed "
        "without the gazes you switch off. Bound to 127.0.0.1 (this machine only) unless --host says otherwise.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="checkpoint written by 'dermogaze train' "
                   "(RUN/best.pt)")
    p.add_argument("--data", metavar="CACHE", help="prepared cache whose images the page offers, with ground truth")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST}, this machine "
                   "only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=positive_int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    p.add_argument("--device", choices=DEVICES, default="auto", help="compute device (default: auto, the GPU when "
                   "there is one)")
    p.set_defaults(func=_cmd_serve)


# ----------------------------------------------------------------------------------------------
# bench (a checkout's benchmarks/, not part of the installed package)
# ----------------------------------------------------------------------------------------------
def find_bench_script(start: Path | None = None) -> Path:
    """``benchmarks/bench_train.py`` of the repository checkout holding ``start`` (default: the working folder).

    Raises:
        DermogazeError: no checkout around ``start``.
    """
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / BENCH_SCRIPT).is_file():
            return folder / BENCH_SCRIPT
    raise DermogazeError(
        f"dermogaze bench runs {BENCH_SCRIPT} of a repository checkout, and there is none around {start}: run it "
        "from the checkout (make bench), or run that script directly"
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    script = find_bench_script()
    sys.path.insert(0, str(script.parent))  # the script imports its baseline from the same folder
    try:
        return int(importlib.import_module(script.stem).main(args.extra) or 0)
    finally:
        sys.path.remove(str(script.parent))


def _register_bench(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "bench",
        add_help=False,  # every option, --help included, belongs to the benchmark script
        help="time dermogaze's training step against the straightforward baseline (from a checkout; "
        "'dermogaze bench --help' lists its options)",
    ).set_defaults(func=_cmd_bench)


# ----------------------------------------------------------------------------------------------
# sweep (Optuna): ``dermogaze sweep [OPTIONS]`` runs trials, ``dermogaze sweep show NAME`` reports a study
# ----------------------------------------------------------------------------------------------
def _cmd_sweep(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--study", args.study), ("--space", args.space), ("--trials", args.trials))
               if value is None]
    if missing:
        raise DermogazeError(f"dermogaze sweep needs {', '.join(missing)} (see 'dermogaze sweep --help')")
    cfg = load_config(args.preset, args.override)
    flags = {"cache": (cfg.data, args.data), "device": (cfg.train, args.device), "amp": (cfg.train, args.amp),
             "workers": (cfg.data, args.workers)}
    for key, (section, value) in flags.items():
        if value is not None:
            setattr(section, key, value)
    validate(cfg, source="command line")
    out = check_output_folder(args.out or Path("runs") / "sweeps" / args.study)
    result = run_sweep(
        cfg, args.space, study=args.study, storage=args.storage, trials=args.trials, out=out,
        objective=args.objective, resume=args.resume, seed=args.seed, heartbeat=args.heartbeat,
        prune_startup=args.prune_startup, prune_warmup=args.prune_warmup, launcher=args.launcher,
        progress=not args.no_progress,
    )
    best = result["best"]
    print(f"study {result['study']}: {result['finished']} finished trials ({len(result['ran'])} run here); "
          + ("no complete trial" if best is None else
             f"best trial {best['number']}, {args.objective} = {best['value']:.4f}: {best['params']}"))
    print(f"report: dermogaze sweep show {args.study} --storage {args.storage}")
    return 0


def _cmd_sweep_show(args: argparse.Namespace) -> int:
    out = check_output_folder(args.show_out or Path("runs") / "sweeps" / args.name)
    result = show_sweep(args.name, args.show_storage, out)
    print(result["table"])
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\nwritten to {out}: " + ", ".join(p.name for p in result["files"].values()))
    return 0


def _register_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="search hyperparameters with Optuna (TPE, median pruning; several processes share one study)",
        description="Train one run per trial from a preset with the trial's values of a search space (YAML: "
        "section.key: {float|log|int|categorical: VALUES}) and maximise a validation metric. Every process started "
        "with the same --study and --storage (an SQLite file on one machine; PostgreSQL or MySQL across machines) "
        "works on the same study until it holds --trials finished trials. Trial run folders: OUT/trial_NNNN. "
        "'dermogaze sweep show NAME' reports a study.",
    )
    p.add_argument("--preset", metavar="NAME", help="the base configuration: a shipped preset or a YAML file")
    p.add_argument("--space", metavar="YAML", help="search space: a YAML file or a shipped space (demo)")
    p.add_argument("--study", metavar="NAME", help="the study's name in the storage")
    p.add_argument("--storage", default="sqlite:///runs/sweeps.db", metavar="URL",
                   help="Optuna storage URL (default: sqlite:///runs/sweeps.db; postgresql://USER:PW@HOST/DB)")
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="finished trials the study should hold, counted over every process")
    p.add_argument("--out", metavar="DIR", help="folder of the trials' run folders (default: runs/sweeps/STUDY)")
    p.add_argument("--objective", default="val_auc", metavar="EXPR",
                   help="val_auc (default), val_ap, val_map or a weighted sum such as 0.7*val_auc+0.3*val_map")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed sweep, or join a study that another process runs")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S",
                   help="seed of the sampler (default: 0; give each process of one study its own)")
    p.add_argument("--data", metavar="CACHE", help="prepared cache folder (dermogaze data prepare)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the base configuration (repeatable)")
    p.add_argument("--heartbeat", type=positive_int, default=10, metavar="S",
                   help="seconds between a trial's heartbeats; a trial silent for twice that (its process died) "
                   "is marked failed and retried once (default: 10)")
    p.add_argument("--prune-startup", type=non_negative_int, default=5, metavar="N",
                   help="finished trials before the median pruner stops any (default: 5)")
    p.add_argument("--prune-warmup", type=non_negative_int, default=0, metavar="E",
                   help="epochs of a trial before it may be pruned (default: 0)")
    p.add_argument("--launcher", metavar="CMD",
                   help="run each trial as 'CMD -m dermogaze train ...' in a child process, e.g. "
                   "'torchrun --standalone --nproc-per-node 4' (default: in this process)")
    _add_runtime_arguments(p, from_config=True)
    p.set_defaults(func=_cmd_sweep)
    actions = p.add_subparsers(dest="sweep_command", metavar="[show]")
    s = actions.add_parser(
        "show",
        help="the trials table, the best configuration as a preset and Optuna's plots",
        description="Write OUT/trials.csv, OUT/trials.md, OUT/best.yaml (the best trial's configuration as a "
        "preset), OUT/importance.png and OUT/history.png (Optuna's parameter importance and optimisation history) "
        "and print the trials table.",
    )
    s.add_argument("name", metavar="NAME", help="the study's name")
    s.add_argument("--storage", dest="show_storage", default="sqlite:///runs/sweeps.db", metavar="URL",
                   help="Optuna storage URL (default: sqlite:///runs/sweeps.db)")
    s.add_argument("--out", dest="show_out", metavar="DIR", help="output folder (default: runs/sweeps/NAME)")
    s.set_defaults(func=_cmd_sweep_show)


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------
def _cmd_predict(args: argparse.Namespace) -> int:
    out = check_output_folder(args.out) if args.format == "isic2018-task2" else args.out
    result = predict(
        args.checkpoint, args.data, args.split, out, fmt=args.format, device=args.device, batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    what = f"{result['files']} attribute masks in {args.out}" if args.format == "isic2018-task2" else result["files"]
    print(f"{result['format']}: {result['n_images']} images of split {args.split}: wrote {what}")
    return 0


def _register_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="challenge submission files of a checkpoint on a prepared split",
        description="Write submission files for every image of a split: isic2018-task2 writes "
        "ISIC_<id>_attribute_<name>.png at each image's original size (per attribute, the union of the gaze "
        "steps that name it, each thresholded at 0.5); isic2017-part3 writes the Part 3 CSV "
        "(image_id,melanoma,seborrheic_keratosis; dermogaze predicts melanoma only, the other column is 0.0).",
    )
    p.add_argument("--checkpoint", required=True, metavar="PT", help="RUN/best.pt or RUN/last.pt")
    p.add_argument("--data", required=True, metavar="CACHE", help="prepared cache (dermogaze data prepare)")
    p.add_argument("--split", default="test", help="cache split: train, val or test (default: test)")
    p.add_argument("--format", required=True, choices=PREDICT_FORMATS, help="submission format")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder (isic2018-task2) or CSV file (isic2017-part3)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per batch (default: 8)")
    _add_runtime_arguments(p, amp=False, workers=False)
    p.set_defaults(func=_cmd_predict)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``dermogaze`` parser with every subcommand."""
    parser = _Parser(
        prog="dermogaze",
        description="Explainable skin-lesion diagnosis from sequences of gazes over dermoscopic structures.",
    )
    parser.add_argument("--version", action="version", version=f"dermogaze {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _register_data(sub)
    _register_model(sub)
    _register_train_evaluate(sub)
    _register_explain_demo(sub)
    _register_gaze(sub)
    _register_experiments(sub)
    _register_bench(sub)
    _register_export(sub)
    _register_serve(sub)
    _register_sweep(sub)
    _register_predict(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _silence_stdout() -> None:
    """Point standard output at the null device, so that nothing more (not even the final flush) fails on a
    closed pipe."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a non-file object (e.g. captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; every user error becomes one ``dermogaze: error:`` line (status 2).

    See the module docstring: :class:`DermogazeError`, usage errors and operating-system errors are
    reported in one line; a closed standard output ends the command quietly with status 141.
    """
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit:  # --help, --version or a usage error: flush here, so that a closed pipe ends quietly too
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
            return EXIT_BROKEN_PIPE
        raise
    args.extra = extra  # only ``bench`` takes arguments it does not declare (the script's own)
    if args.extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(args.extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe fails here, inside the handlers, not at interpreter exit
        return status
    except DermogazeError as exc:
        print(f"dermogaze: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        out = getattr(args, "out", None) or getattr(args, "resume", None)
        print(f"dermogaze: error: {_one_line(describe_os_error(exc, out))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dermogaze: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
