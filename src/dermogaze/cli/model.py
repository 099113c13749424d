"""``dermogaze model list | summary``: the Table 3 variants and their parameter counts."""

from __future__ import annotations

import argparse

from .common import int_in, number_in


def _cmd_model_list(args: argparse.Namespace) -> int:
    from ..models import list_models

    print("\n".join(list_models()))
    return 0


def _cmd_model_summary(args: argparse.Namespace) -> int:
    from ..models import build_model

    model = build_model(
        args.name, image_size=args.image_size, steps=args.steps, width=args.width, skip=args.skip,
        batch_norm=args.batch_norm, weights=args.weights,
    )
    if args.freeze_encoder:
        model.freeze_encoder()
    print(model.summary())
    return 0


def add_model(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``model`` and its actions ``list`` and ``summary`` to ``sub``."""
    from ..config import MAX_IMAGE_SIZE, MAX_STEPS, MAX_WIDTH, MODEL_NAMES  # without importing torch

    parser = sub.add_parser("model", help=help_line)
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    p = actions.add_parser("list", help="names of the registered variants (Table 3)")
    p.set_defaults(func=_cmd_model_list)

    p = actions.add_parser("summary", help="build a variant and print its parameter counts per module")
    p.add_argument("name", help=f"variant: {', '.join(MODEL_NAMES)}")
    p.add_argument("--image-size", type=int_in(32, MAX_IMAGE_SIZE, "larger inputs exhaust the memory"), default=224,
                   help=f"input size, a multiple of 32 up to {MAX_IMAGE_SIZE} (224)")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS, "each gaze is a decoder pass; the paper uses 3 to 17"),
                   default=5, help=f"T, number of gazes, up to {MAX_STEPS} (5)")
    p.add_argument("--width", type=number_in(0, MAX_WIDTH, f"{MAX_WIDTH:g} is 16 times the paper's parameters"),
                   default=1.0, help=f"channel multiplier, above 0 and up to {MAX_WIDTH:g} (1.0 = the paper)")
    p.add_argument("--skip", action=argparse.BooleanOptionalAction, default=None,
                   help="decoder skip averaging (default: the variant's)")
    p.add_argument("--batch-norm", choices=("on", "off", "frozen"), default=None,
                   help="batch norm mode (default: the variant's)")
    p.add_argument("--weights", default=None, help="'imagenet' or a vgg16_bn state dict file")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="count the encoder as frozen (the paper's encoder learning rate of 0)")
    p.set_defaults(func=_cmd_model_summary)
