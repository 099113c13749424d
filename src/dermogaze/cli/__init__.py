"""The ``dermogaze`` command line: every subcommand, and the only package that knows argparse.

Subcommands, in the order of the dataflow::

    data synth | prepare | stats     write the synthetic dataset, build a cache, print Tables 1-2
    model list | summary             the Table 3 variants and their parameter counts
    train                            a run folder from a preset (torchrun for several processes)
    evaluate                         every docs/design.md §6 metric of a checkpoint on a prepared split
    predict                          challenge submission files (ISIC 2018 Task 2 masks, ISIC 2017 Part 3 CSV)
    explain                          gazes, structures, JSON and figures per image
    demo                             the whole pipeline on the built-in synthetic data
    gaze compare                     MultiMatch of a record's gaze sequence vs a human scanpath
    compare | table3                 runs side by side in one table; Table 3 trained and tabulated
    sweep [show NAME]                Optuna hyperparameter search (processes share a study); its report
    bench                            the training-step benchmark of a repository checkout
    export                           a checkpoint's network as an ONNX file (for onnxruntime)
    serve                            the gaze viewer in the browser (Gradio, this machine only by default)

One module per command group declares the arguments and runs the commands: :mod:`~dermogaze.cli.data`,
:mod:`~dermogaze.cli.model`, :mod:`~dermogaze.cli.train` (train, evaluate), :mod:`~dermogaze.cli.explain`
(explain, demo, gaze), :mod:`~dermogaze.cli.experiments` (compare, table3, sweep, bench) and
:mod:`~dermogaze.cli.apps` (export, serve, predict); :mod:`~dermogaze.cli.common` holds what they share.

Start-up: :func:`build_parser` lists every command by its help line (:data:`COMMANDS`) and adds the arguments of
only the command that ``argv`` names, by importing that command's module; a command imports the library code it
uses when it runs. ``dermogaze --help`` and ``--version`` thus import no library code (no torch, no numpy).

Shared runtime flags (:func:`~dermogaze.cli.common.add_runtime_arguments`): ``--device auto|cpu|cuda``
(default ``auto`` everywhere), ``--amp``, ``--workers``, ``--no-progress``. Library code receives typed
arguments and raises :class:`~dermogaze.errors.DermogazeError`. The configuration precedence of ``train``:
:mod:`dermogaze.cli.train`.

Errors: every user error is one line ``dermogaze: error: ...`` on stderr, exit status 2, never a
traceback:

- a :class:`~dermogaze.errors.DermogazeError` (a bad file, folder, checkpoint or option value:
  :func:`dermogaze.config.validate` checks every config value before anything is created);
- a usage error of the parser (a bad flag value such as ``--batch-size -2``): argparse's usual
  usage block is left out, the line ends with where ``--help`` is (:class:`~dermogaze.cli.common.Parser`);
- an operating-system error (a folder without write permission, a full disk, ``--out`` under a
  file...): ``cannot write|read|access PATH: <the system's reason> (<what to do>)``, or ``cannot
  write under OUT: ...`` when the failed call names no file (a full disk; :func:`describe_os_error`).
  An ``--out`` that is a file, lies under one or is not writable is refused before any work
  (:func:`~dermogaze.cli.common.check_output_folder`).

A closed standard output (``dermogaze model list | head -1``) ends the command quietly, as Unix
tools do: nothing more is written and the exit status is 141 (128 + SIGPIPE, what a shell reports
for a tool killed by SIGPIPE). Ctrl-C prints ``dermogaze: interrupted`` (status 130), even one that Python drops
in a finaliser (:mod:`dermogaze.interrupt`). Every command runs with glibc's malloc keeping the memory a batch
frees for the next (:mod:`dermogaze.allocator`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from ..allocator import keep_freed_memory
from ..errors import DermogazeError
from ..interrupt import catch_interrupts
from ..version import __version__
from .common import Parser, describe_os_error

__all__ = ["COMMANDS", "EXIT_BROKEN_PIPE", "build_parser", "describe_os_error", "main"]

#: Exit status of a command whose standard output was closed (128 + SIGPIPE, as a shell reports it).
EXIT_BROKEN_PIPE = 141

#: Every command in the order ``dermogaze --help`` lists them: name → (``module:function`` under
#: :mod:`dermogaze.cli` that adds its parser to the subcommands, its one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data:add_data", "synthesise, prepare and inspect datasets"),
    "model": ("model:add_model", "list the network variants or show one's parameter counts"),
    "train": ("train:add_train", "train a model on a prepared cache (paper recipe by default)"),
    "evaluate": ("train:add_evaluate", "every docs/design.md §6 metric of a checkpoint on a prepared split"),
    "explain": ("explain:add_explain", "explain images with a trained checkpoint: gazes, structures, JSON and figures"),
    "demo": ("explain:add_demo", "the whole pipeline on the built-in synthetic dataset (a few minutes on a CPU)"),
    "gaze": ("explain:add_gaze", "compare the model's gaze sequence with a human scanpath (eye tracking)"),
    "compare": ("experiments:add_compare",
                "evaluate several runs on one split and tabulate them side by side (with DeLong's test)"),
    "table3": ("experiments:add_table3",
               "train the seven Table 3 presets with one seed and budget, evaluate them and write Table 3"),
    "bench": ("experiments:add_bench", "time dermogaze's training step against the straightforward baseline (from a "
              "checkout; 'dermogaze bench --help' lists its options)"),
    "export": ("apps:add_export", "export a checkpoint's network to ONNX (dynamic batch; normalisation, structures "
               "and threshold in its metadata)"),
    "serve": ("apps:add_serve", "the gaze viewer in the browser: diagnosis, gazes step by step, switching gazes off"),
    "sweep": ("experiments:add_sweep",
              "search hyperparameters with Optuna (TPE, median pruning; several processes share one study)"),
    "predict": ("apps:add_predict", "challenge submission files of a checkpoint on a prepared split"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``dermogaze`` parser: every command with its help line, and the arguments of ``command``.

    Args:
        command: the command whose arguments to add (its module under :mod:`dermogaze.cli` is imported);
            ``None`` or an unknown name adds none, which is enough for ``--help``, ``--version`` and the
            usage error of an unknown command.
    """
    parser = Parser(
        prog="dermogaze",
        description="Explainable skin-lesion diagnosis from sequences of gazes over dermoscopic structures.",
    )
    parser.add_argument("--version", action="version", version=f"dermogaze {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (target, help_line) in COMMANDS.items():
        if name == command:
            module, _, function = target.partition(":")
            getattr(importlib.import_module(f"{__name__}.{module}"), function)(sub, help_line)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def _command_named(argv: Sequence[str]) -> str | None:
    """The command that ``argv`` names: its first word that is not an option (the top-level options take no
    value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def _one_line(text: object) -> str:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; every user error becomes one ``dermogaze: error:`` line (status 2).

    See the module docstring: :class:`DermogazeError`, usage errors and operating-system errors are
    reported in one line; a closed standard output ends the command quietly with status 141.

    Args:
        argv: the arguments after ``dermogaze`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_named(argv))
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
    keep_freed_memory()  # glibc's malloc keeps the memory a batch frees for the next (dermogaze.allocator)
    try:
        with catch_interrupts():  # a Ctrl-C dropped in a finaliser still stops the command (dermogaze.interrupt)
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
