"""``dermogaze data synth | prepare | stats``: write the synthetic dataset, build a cache, print Tables 1-2."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DermogazeError
from .common import check_output_folder, int_in, seed_int, workers_int


def _parse_prevalences(items: list[str]) -> dict[str, float] | None:
    """``--prevalence NAME=P`` values as ``{NAME: P}`` (``None`` when none is given)."""
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
    from ..data.synth import labels_path, write_synthetic_isic

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
              f"{labels_path(out)})")
    else:
        print(f"synthetic ISIC 2017 collection written to {out}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare
    from ..data.splits import parse_fractions

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
    from ..data.cache import format_stats, load_info

    print(format_stats(load_info(args.cache)))
    return 0


def add_data(sub: argparse._SubParsersAction, help_line: str) -> None:
    """Add ``data`` and its actions ``synth``, ``prepare`` and ``stats`` to ``sub``."""
    from ..config import LAYOUTS, MAX_CACHE_SIZE, MAX_IMAGE_SIZE, SYNTH_MAX_COUNT, SYNTH_MAX_SIDE, SYNTH_MIN_SIDE

    count = int_in(0, SYNTH_MAX_COUNT,
                   "synthetic data exercises the pipeline: five times ISIC 2017's training set at most")
    side = int_in(SYNTH_MIN_SIDE, SYNTH_MAX_SIDE, (f"the network's smallest input is {SYNTH_MIN_SIDE} px",
                                                   "larger pictures take minutes and gigabytes each to draw"))
    data = sub.add_parser("data", help=help_line)
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = actions.add_parser("synth", help="write the synthetic dataset in the ISIC 2017 layout (docs/design.md §8)")
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--train", type=count, default=200, help=f"training images (default 200, at most {SYNTH_MAX_COUNT})")
    p.add_argument("--val", type=count, default=50, help="validation images (default 50)")
    p.add_argument("--test", type=count, default=100, help="test images (default 100)")
    p.add_argument("--width", type=side, default=320,
                   help=f"image width in pixels, {SYNTH_MIN_SIDE} to {SYNTH_MAX_SIDE} (default 320)")
    p.add_argument("--height", type=side, default=240, help="image height in pixels (default 240)")
    p.add_argument("--seed", type=seed_int, default=0, help="dataset seed (default 0)")
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
    size = int_in(1, MAX_CACHE_SIZE, f"each cached image takes size² × 3 bytes, and the network's inputs (at most "
                  f"{MAX_IMAGE_SIZE} px) are crops of them")
    p.add_argument("--size", type=size, default=256,
                   help=f"side of the cached square images, up to {MAX_CACHE_SIZE} (default 256)")
    p.add_argument("--workers", type=workers_int(1), default=1, help="decoding processes (default 1)")
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
    p.add_argument("--seed", type=seed_int, default=0, help="seed of that division (default 0)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="the collection's layout (default auto: recognised from the folder names, ISIC-2017_* or "
                        "ISIC2018_Task*)")
    p.set_defaults(func=_cmd_prepare)

    p = actions.add_parser("stats", help="print Table 1 (structure presence) and Table 2 (w, w') of a cache")
    p.add_argument("cache", type=Path, help="cache folder written by `dermogaze data prepare`")
    p.set_defaults(func=_cmd_stats)
