"""The ``dermogaze`` command line.

Each area of the package registers its own subcommands (``register(subparsers)`` in the modules
listed in :data:`COMMAND_MODULES`), so this file only wires them together and turns user errors
(:class:`~dermogaze.errors.DermogazeError`) into one clear line and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import DermogazeError

#: Modules exposing ``register(subparsers)``; order = order in ``dermogaze --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "dermogaze.data.commands",
    "dermogaze.models.commands",
    "dermogaze.commands",
    "dermogaze.explain",
    "dermogaze.bench",
)


def positive_int(text: str) -> int:
    """``argparse`` type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_model_size_arguments(parser: argparse.ArgumentParser, image_size: int = 224, steps: int = 5,
                             width: float = 1.0) -> None:  # fmt: skip
    """``--image-size``, ``--steps`` (T) and ``--width`` (defaults: the paper's configuration)."""
    parser.add_argument("--image-size", type=positive_int, default=image_size,
                        help=f"input size, multiple of 32 ({image_size})")  # fmt: skip
    parser.add_argument("--steps", type=positive_int, default=steps, help=f"T, number of gazes ({steps})")
    parser.add_argument("--width", type=float, default=width, help="channel multiplier (1.0 = the paper)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermogaze",
        description="Explainable skin-lesion diagnosis from sequences of gazes over dermoscopic structures.",
    )
    parser.add_argument("--version", action="version", version=f"dermogaze {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DermogazeError as exc:
        print(f"dermogaze: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dermogaze: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
