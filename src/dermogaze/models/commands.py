"""``dermogaze model list`` and ``dermogaze model summary NAME``: the registered variants and their sizes."""

from __future__ import annotations

import argparse

from ..cli import add_model_size_arguments
from .gazenet import GazeNet, build_model, list_models


def _summary_lines(model: GazeNet) -> list[str]:
    kw = model.init_kwargs
    skip = "n/a" if kw["skip"] is None else ("on" if kw["skip"] else "off")
    frozen = " (encoder frozen)" if model.encoder.frozen else ""
    lines = [
        f"{model.variant}: image {kw['image_size']} px, T={kw['steps']}, width {kw['width']:g}, "
        f"skip {skip}, batch norm {kw['batch_norm']}{frozen}",
        f"{'module':<28}{'parameters':>14}{'trainable':>14}",
    ]
    counts = model.module_parameter_counts()
    for name, (total, trainable) in counts.items():
        lines.append(f"{name:<28}{total:>14,}{trainable:>14,}")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total == sum(t for t, _ in counts.values())  # the split covers the whole model
    lines.append(f"{'total':<28}{total:>14,}{trainable:>14,}")
    groups = model.parameter_groups()
    lines.append(
        "optimiser groups: " + ", ".join(f"{k} {sum(p.numel() for p in v):,}" for k, v in groups.items())
    )
    return lines


def _cmd_list(args: argparse.Namespace) -> int:
    for name in list_models():
        print(name)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    model = build_model(
        args.name, image_size=args.image_size, steps=args.steps, width=args.width, skip=args.skip,
        batch_norm=args.batch_norm, weights=args.weights,
    )
    if args.freeze_encoder:
        model.freeze_encoder()
    print("\n".join(_summary_lines(model)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dermogaze model {list,summary}``."""
    parser = subparsers.add_parser("model", help="list the network variants or show one's parameter counts")
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    p_list = sub.add_parser("list", help="names of the registered variants (Table 3)")
    p_list.set_defaults(func=_cmd_list)

    p_sum = sub.add_parser("summary", help="build a variant and print its parameter counts per module")
    p_sum.add_argument("name", help=f"variant: {', '.join(list_models())}")
    add_model_size_arguments(p_sum)
    p_sum.add_argument("--skip", action=argparse.BooleanOptionalAction, default=None,
                       help="decoder skip averaging (default: the variant's)")
    p_sum.add_argument("--batch-norm", choices=("on", "off", "frozen"), default=None,
                       help="batch norm mode (default: the variant's)")
    p_sum.add_argument("--weights", default=None, help="'imagenet' or a vgg16_bn state dict file")
    p_sum.add_argument("--freeze-encoder", action="store_true",
                       help="count the encoder as frozen (the paper's encoder learning rate of 0)")
    p_sum.set_defaults(func=_cmd_summary)

