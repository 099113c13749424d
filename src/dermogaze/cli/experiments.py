"""``dermogaze compare | table3 | sweep | bench``: runs side by side in one table, Table 3 trained and tabulated,
the Optuna hyperparameter search (``sweep``, and ``sweep show NAME`` for its report), and the training-step
benchmark of a repository checkout."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from ..errors import DermogazeError
from .common import add_runtime_arguments, bootstrap_int, check_output_folder, int_in, non_negative_int, seed_int

#: Where ``dermogaze bench`` finds the benchmark, relative to a repository checkout.
BENCH_SCRIPT = Path("benchmarks") / "bench_train.py"
#: The module beside it that holds its options and parser, and imports no torch.
BENCH_OPTIONS_MODULE = "bench_train_options"
#: The most trials a sweep may ask for: each is a training run, so 10 000 is years of a GPU.
MAX_TRIALS = 10_000
#: The longest heartbeat of a sweep trial (seconds): a dead trial is noticed after two, so an hour is as late
#: as a sweep can usefully learn of it.
MAX_HEARTBEAT_S = 3600


# ----------------------------------------------------------------------------------------------
# compare, table3
# ----------------------------------------------------------------------------------------------
def _cmd_compare(args: argparse.Namespace) -> int:
    from ..evaluation.compare import compare_runs

    result = compare_runs(
        args.runs, split=args.split, cache=args.data, out_dir=check_output_folder(args.out), device=args.device,
        amp=args.amp, workers=args.workers, n_resamples=args.bootstrap, faithfulness=args.faithfulness,
        progress=not args.no_progress,
    )
    print(result["markdown"])
    print(f"written to {result['files']['markdown']} and {result['files']['csv']}")
    return 0


def _cmd_table3(args: argparse.Namespace) -> int:
    from ..experiments.table3 import run_table3

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
    from ..config import DEFAULT_FAITHFULNESS

    p.add_argument("--bootstrap", type=bootstrap_int, default=2000, metavar="N",
                   help="resamples of the 95%% bootstrap intervals, 100 to 100000 (default: 2000)")
    p.add_argument("--faithfulness", type=non_negative_int, default=DEFAULT_FAITHFULNESS, metavar="N",
                   help="deletion/insertion and stability (the costly explanation measures) on the first N images; "
                   f"0 skips them (default: {DEFAULT_FAITHFULNESS})")


def add_compare(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``compare`` to ``sub``."""
    p = sub.add_parser(
        "compare",
        help=help_line,
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
    add_runtime_arguments(p)
    p.set_defaults(func=_cmd_compare)


def add_table3(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``table3`` to ``sub``."""
    from ..config import MAX_EPOCHS, TABLE3_PRESETS

    p = sub.add_parser(
        "table3",
        help=help_line,
        description=f"Train the presets {', '.join(TABLE3_PRESETS)} on one cache with the same overrides (seed, "
        "epochs, batch, rates, size), one after the other or --jobs at once; evaluate each best checkpoint and write "
        "OUT/table3.md and .csv (AUC and AP with 95%% intervals, the paper's figures beside) and the full comparison "
        "in OUT/compare_<split>/. Rerun the same command after an interruption: finished presets are kept, a "
        "half-trained one resumes from its last epoch.",
    )
    p.add_argument("--data", required=True, metavar="CACHE", help="prepared cache (dermogaze data prepare)")
    p.add_argument("--out", required=True, metavar="DIR", help="experiment folder (one run folder per preset)")
    p.add_argument("--epochs", type=int_in(1, MAX_EPOCHS, "50 times the paper's 20"), metavar="N",
                   help="epochs of every preset (default: the paper's 20)")
    p.add_argument("--jobs", type=int_in(1, len(TABLE3_PRESETS), "one training per preset at most"), default=1,
                   metavar="J", help="trainings at once (default: 1)")
    p.add_argument("--presets", type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                   default=list(TABLE3_PRESETS), metavar="P1,P2,...",
                   help="only these rows of Table 3, comma-separated (default: all seven)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config key of every preset, e.g. -o model.width=0.25 (repeatable)")
    p.add_argument("--split", default="test", help="cache split the table is computed on (default: test)")
    _add_evaluation_arguments(p)
    add_runtime_arguments(p, from_config=True)
    p.set_defaults(func=_cmd_table3)


# ----------------------------------------------------------------------------------------------
# sweep (Optuna): ``dermogaze sweep [OPTIONS]`` runs trials, ``dermogaze sweep show NAME`` reports a study
# ----------------------------------------------------------------------------------------------
def _cmd_sweep(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--study", args.study), ("--space", args.space), ("--trials", args.trials))
               if value is None]
    if missing:
        raise DermogazeError(f"dermogaze sweep needs {', '.join(missing)} (see 'dermogaze sweep --help')")
    from ..config import load_config, validate
    from ..experiments.sweep.run import run_sweep

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
    from ..experiments.sweep.report import show_sweep

    out = check_output_folder(args.show_out or Path("runs") / "sweeps" / args.name)
    result = show_sweep(args.name, args.show_storage, out)
    print(result["table"])
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\nwritten to {out}: " + ", ".join(p.name for p in result["files"].values()))
    return 0


def add_sweep(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``sweep`` and its action ``show`` to ``sub``."""
    from ..config import MAX_EPOCHS

    p = sub.add_parser(
        "sweep",
        help=help_line,
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
    p.add_argument("--trials", type=int_in(1, MAX_TRIALS, "each trial is a training run"), metavar="N",
                   help="finished trials the study should hold, counted over every process")
    p.add_argument("--out", metavar="DIR", help="folder of the trials' run folders (default: runs/sweeps/STUDY)")
    p.add_argument("--objective", default="val_auc", metavar="EXPR",
                   help="val_auc (default), val_ap, val_map or a weighted sum such as 0.7*val_auc+0.3*val_map")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed sweep, or join a study that another process runs")
    p.add_argument("--seed", type=seed_int, default=0, metavar="S",
                   help="seed of the sampler (default: 0; give each process of one study its own)")
    p.add_argument("--data", metavar="CACHE", help="prepared cache folder (dermogaze data prepare)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the base configuration (repeatable)")
    p.add_argument("--heartbeat", type=int_in(1, MAX_HEARTBEAT_S, "a dead trial is noticed after two heartbeats"),
                   default=10, metavar="S",
                   help="seconds between a trial's heartbeats; a trial silent for twice that (its process died) "
                   "is marked failed and retried once (default: 10)")
    p.add_argument("--prune-startup", type=int_in(0, MAX_TRIALS, "a sweep holds at most that many trials"), default=5,
                   metavar="N",
                   help="finished trials before the median pruner stops any (default: 5)")
    p.add_argument("--prune-warmup", type=int_in(0, MAX_EPOCHS, "a run trains at most that many epochs"), default=0,
                   metavar="E",
                   help="epochs of a trial before it may be pruned (default: 0)")
    p.add_argument("--launcher", metavar="CMD",
                   help="run each trial as 'CMD -m dermogaze train ...' in a child process, e.g. "
                   "'torchrun --standalone --nproc-per-node 4' (default: in this process)")
    add_runtime_arguments(p, from_config=True)
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
    sys.path.insert(0, str(script.parent))  # the script imports its options and its baseline from the same folder
    try:
        # the options first, without torch: --help and a usage error answer before the benchmark is imported
        importlib.import_module(BENCH_OPTIONS_MODULE).build_parser().parse_args(args.extra)
        return int(importlib.import_module(script.stem).main(args.extra) or 0)
    finally:
        sys.path.remove(str(script.parent))


def add_bench(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``bench`` to ``sub``: every option, ``--help`` included, belongs to the benchmark script."""
    sub.add_parser("bench", add_help=False, help=help_line).set_defaults(func=_cmd_bench)
