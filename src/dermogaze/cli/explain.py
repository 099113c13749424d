"""``dermogaze explain`` (gazes, structures, JSON and figures per image), ``dermogaze demo`` (the whole pipeline on
the built-in synthetic data) and ``dermogaze gaze compare`` (a record's gaze sequence vs a human scanpath)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_runtime_arguments, check_output_folder, positive_int


def _cmd_explain(args: argparse.Namespace) -> int:
    from ..explain.run import renamed_outputs, run_explain, summary_line

    records = run_explain(
        args.checkpoint, args.inputs, check_output_folder(args.out), data=args.data, split=args.split,
        limit=args.limit, device=args.device, amp=args.amp, progress=not args.no_progress,
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
    from ..experiments.demo.run import run_demo

    report = run_demo(check_output_folder(args.out), fast=args.fast, device=args.device, amp=args.amp,
                      workers=args.workers, progress=not args.no_progress)
    print(f"\nreport: {report}")
    return 0


def _cmd_gaze_compare(args: argparse.Namespace) -> int:
    from ..metrics.scanpath import SIMILARITIES, compare_record

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


def add_explain(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``explain`` to ``sub``."""
    p = sub.add_parser(
        "explain",
        help=help_line,
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
    add_runtime_arguments(p, workers=False)
    p.set_defaults(func=_cmd_explain)


def add_demo(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``demo`` to ``sub``."""
    p = sub.add_parser(
        "demo",
        help=help_line,
        description="Synthesise the built-in dataset, prepare it, train a small model, evaluate it on the test "
        "split, explain a few test images and write OUT/report.md.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default: runs/demo)")
    p.add_argument("--fast", action="store_true", help="a smaller, shorter run (a smoke test, not a result)")
    add_runtime_arguments(p, follows_machine="demo")
    p.set_defaults(func=_cmd_demo)


def add_gaze(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``gaze`` and its action ``compare`` to ``sub``."""
    parser = sub.add_parser("gaze", help=help_line)
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
