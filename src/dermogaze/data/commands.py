"""``dermogaze data synth | prepare | stats``: write synthetic data, build the cache, print Tables 1-2."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import DermogazeError
from ..structures import SHORT_NAMES, STRUCTURES, presence_weights


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its actions to the top-level parser."""
    data = subparsers.add_parser("data", help="synthesise, prepare and inspect datasets")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    synth = actions.add_parser("synth", help="write the synthetic dataset in the ISIC 2017 layout (SPEC §8)")
    synth.add_argument("--out", required=True, type=Path, help="folder to write")
    synth.add_argument("--train", type=int, default=200, help="training images (default 200)")
    synth.add_argument("--val", type=int, default=50, help="validation images (default 50)")
    synth.add_argument("--test", type=int, default=100, help="test images (default 100)")
    synth.add_argument("--width", type=int, default=320, help="image width in pixels (default 320)")
    synth.add_argument("--height", type=int, default=240, help="image height in pixels (default 240)")
    synth.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    synth.add_argument(
        "--prevalence", action="append", default=[], metavar="NAME=P",
        help="fraction of images holding a feature (or 'melanoma'); repeatable, e.g. --prevalence streaks=0.1",
    )
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)

    prep = actions.add_parser("prepare", help="decode, resize and cache an ISIC 2017 collection once")
    prep.add_argument("--isic", required=True, type=Path, help="folder with the ISIC-2017_* folders and CSVs")
    prep.add_argument("--out", required=True, type=Path, help="cache folder to write")
    prep.add_argument("--size", type=int, default=256, help="side of the cached square images (default 256)")
    prep.add_argument("--workers", type=int, default=1, help="decoding processes (default 1)")
    prep.add_argument("--skip-bad", action="store_true", help="skip and count bad samples instead of stopping")
    prep.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.set_defaults(func=_prepare)

    stats = actions.add_parser("stats", help="print Table 1 (structure presence) and Table 2 (w, w') of a cache")
    stats.add_argument("cache", type=Path, help="cache folder written by `dermogaze data prepare`")
    stats.set_defaults(func=_stats)


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


def _synth(args: argparse.Namespace) -> int:
    from .synth import write_synthetic_isic  # imported here: only this action needs it

    out = write_synthetic_isic(
        args.out,
        counts={"Training": args.train, "Validation": args.val, "Test_v2": args.test},
        image_size=(args.width, args.height),
        seed=args.seed,
        prevalences=_parse_prevalences(args.prevalence),
        progress=not args.no_progress,
    )
    print(f"synthetic ISIC 2017 collection written to {out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .cache import prepare

    info = prepare(
        args.isic, args.out, size=args.size, workers=args.workers, skip_bad=args.skip_bad,
        progress=not args.no_progress, force=args.force,
    )
    counts = ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    masks = "with structure masks" if info["has_masks"] else "classification only (no Part 1/Part 2)"
    print(f"cache {args.out}: {counts}; {masks}; {len(info['skipped'])} bad samples skipped")
    return 0


def format_stats(info: dict) -> str:
    """Text of ``dermogaze data stats``: split sizes, normalisation, Table 1 and Table 2.

    Args:
        info: a cache's info dict (:func:`dermogaze.data.cache.load_info`).
    """
    lines = [f"cache size {info['size']}×{info['size']}, splits:"]
    lines.append(f"{'split':<8}{'images':>8}{'melanoma':>10}")
    for split in info["splits"]:
        lines.append(f"{split:<8}{info['counts'][split]:>8}{info['melanoma'][split]:>10}")
    lines.append("training mean (R G B): " + " ".join(f"{v:.4f}" for v in info["mean"]))
    lines.append("training std  (R G B): " + " ".join(f"{v:.4f}" for v in info["std"]))
    if info["skipped"]:
        lines.append(f"{len(info['skipped'])} bad samples were skipped when the cache was prepared")
    if not info["has_masks"]:
        lines.append("no structure masks in this cache (no Part 1/Part 2): Tables 1 and 2 need them")
        return "\n".join(lines)

    n_train = info["counts"]["train"]
    presences = np.asarray(info["presences"])
    lines += ["", f"Table 1: presence of the structures in the training split ({n_train} images)"]
    lines.append(f"{'structure':<18}{'images':>8}{'% images':>10}{'% pixels':>10}")
    for name, p, frac in zip(STRUCTURES, presences, info["pixel_fraction"], strict=True):
        lines.append(f"{name:<18}{p:>8d}{100 * p / n_train:>10.2f}{100 * frac:>10.2f}")

    lines += ["", "Table 2: structure weights from the presences (w: Eq. 15, w': Eq. 16)"]
    lines.append("weight " + "".join(f"{name:>10}" for name in SHORT_NAMES))
    w = presence_weights(presences, "w") if presences.sum() > 0 else None
    lines.append("w      " + ("".join(f"{x:>10.3f}" for x in w) if w is not None else f"{'n/a':>10}" * len(STRUCTURES)))
    absent = [name for name, p in zip(STRUCTURES, presences, strict=True) if p == 0]
    if absent:
        lines.append("w'     " + f"{'n/a':>10}" * len(STRUCTURES))
        lines.append(f"w' is undefined: never present in the training split: {', '.join(absent)}")
    else:
        lines.append("w'     " + "".join(f"{x:>10.3f}" for x in presence_weights(presences, "w'")))
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    from .cache import load_info

    print(format_stats(load_info(args.cache)))
    return 0
