"""Data-layer speed: ``prepare`` on ISIC-sized JPEGs (draft vs full decoding) and cached loading.

Run by hand (never timed in tests)::

    .venv/bin/python benchmarks/bench_data.py [--images 6] [--width 4000] [--height 3000] [--samples 2000]
    .venv/bin/python benchmarks/bench_data.py --part isic2018 [--markdown benchmarks/results/prepare_isic2018.md]

(a) writes ``--images`` photo-like JPEGs of ``width×height`` (smooth colour fields plus fine
texture, quality 90, like dermoscopy photographs) in a temporary ISIC 2017 layout, with full-size
superpixel maps, lesion masks and feature JSONs, and times ``prepare`` (one process, 256 px) with
and without Pillow's JPEG draft mode, side by side; also the classification-only case (images and
CSV only), where the JPEG decode is the whole cost.

(b) times ``DermoscopyDataset(train=True, image_size=224)`` over the resulting 256 px cache on one
thread (``torch.set_num_threads(1)``), directly and through a ``DataLoader`` with one worker, side
by side with the same dataset sending float32 masks (what it did before it sent uint8): a worker's
samples cross to the main process through shared memory, whose cost grows with the bytes.
The target is at least 300 samples/s per core, so data loading never limits training.

(c) ``--part isic2018``: ``prepare`` throughput (256 px) on ISIC-2018-sized images, 600×450 to
6000×4000, with ``--workers 1`` and ``2`` side by side: the ISIC 2018 Task 1-2 layout with its
lesion mask and five attribute masks (0/255 PNGs at the image's size), and a folder of images with a
HAM10000-style label CSV (the labels-only collections). Then the ISIC 2017 layout (with Part 1/2 and
superpixels, and images + CSV only) prepared by this tree and by the code of a git ref
(``--baseline-ref``, default ``HEAD``: the last commit), alternating, to show there is no
regression. Every timing runs ``prepare`` in a fresh interpreter (``PYTHONPATH`` picks the code)
and counts only the ``prepare`` call; the best of ``--repeats`` alternating runs is kept.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dermogaze.data.dataset import DermoscopyDataset
from dermogaze.data.isic2018 import ATTRIBUTES
from dermogaze.data.prepare import prepare
from dermogaze.files import write_text
from dermogaze.structures import DERMOSCOPIC_FEATURES

REPO = Path(__file__).resolve().parents[1]
#: Collection kind → (width, height, training images) of each row of (c): fewer of the large images, and
#: HAM10000's 600×450 also in a number where starting the worker pool no longer counts.
PREPARE_ROWS: dict[str, list[tuple[int, int, int]]] = {
    "isic2018": [(600, 450, 16), (1024, 768, 12), (3000, 2000, 6), (6000, 4000, 4)],
    "images": [(600, 450, 16), (600, 450, 400), (1024, 768, 12), (3000, 2000, 6), (6000, 4000, 4)],
}


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A uint8 (H, W, 3) image with smooth colour regions and mild texture (compresses like a photo)."""
    coarse = rng.integers(60, 230, (height // 250 + 2, width // 250 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    texture = rng.integers(-6, 7, (height, width, 1), dtype=np.int16)
    return np.clip(smooth + texture, 0, 255).astype(np.uint8)


def write_collection(root: Path, n: int, width: int, height: int, annotations: bool) -> None:
    """``n`` ISIC-sized training samples (and one validation sample) in the official layout."""
    rng = np.random.default_rng(0)
    r, c = np.mgrid[0:height, 0:width]
    index = (r // 100) * (width // 100 + 1) + c // 100  # ~1200 square superpixels, indices > 255
    sp_rgb = np.stack([index & 255, (index >> 8) & 255, (index >> 16) & 255], -1).astype(np.uint8)
    lesion = (((r - height / 2) / (height / 3)) ** 2 + ((c - width / 2) / (width / 3)) ** 2 < 1).astype(np.uint8) * 255
    n_sp = int(index.max()) + 1
    for split, count in (("Training", n), ("Validation", 1)):
        data = root / f"ISIC-2017_{split}_Data"
        data.mkdir(parents=True)
        rows = ["image_id,melanoma,seborrheic_keratosis"]
        for i in range(count):
            image_id = f"ISIC_{len(rows) + (0 if split == 'Training' else 100):07d}"
            rows.append(f"{image_id},{float(i % 2)},0.0")
            Image.fromarray(photo_like(rng, width, height)).save(data / f"{image_id}.jpg", quality=90)
            if annotations:
                Image.fromarray(sp_rgb).save(data / f"{image_id}_superpixels.png")
                for part in (1, 2):
                    (root / f"ISIC-2017_{split}_Part{part}_GroundTruth").mkdir(exist_ok=True)
                Image.fromarray(lesion).save(
                    root / f"ISIC-2017_{split}_Part1_GroundTruth" / f"{image_id}_segmentation.png"
                )
                values = {name: (rng.random(n_sp) < 0.05).astype(float).tolist() for name in DERMOSCOPIC_FEATURES}
                (root / f"ISIC-2017_{split}_Part2_GroundTruth" / f"{image_id}_features.json").write_text(
                    json.dumps(values)
                )
        (root / f"ISIC-2017_{split}_Part3_GroundTruth.csv").write_text("\n".join(rows) + "\n")


def write_isic2018(root: Path, n: int, width: int, height: int) -> None:
    """``n`` training samples (and one validation, one test sample) in the ISIC 2018 Task 1-2 layout
    (docs/design.md §2b): JPEG, lesion mask, five attribute masks.

    Attribute masks are 0/255 single-channel PNGs of the image's size: a pigment network over a ring of
    the lesion, globules as dots, streaks in a third of the images, the other two empty (as most are).
    """
    rng = np.random.default_rng(1)
    r = np.linspace(-1, 1, height, dtype=np.float32)[:, None] * 1.5  # (H, 1)
    c = np.linspace(-1, 1, width, dtype=np.float32)[None, :] * 1.5  # (1, W)
    radius = r**2 + c**2  # (H, W)
    lesion = radius < 1
    for i, split in enumerate(["Training"] * n + ["Validation", "Test"]):
        data = root / f"ISIC2018_Task1-2_{split}_Input"
        part1 = root / f"ISIC2018_Task1_{split}_GroundTruth"
        part2 = root / f"ISIC2018_Task2_{split}_GroundTruth_v3"
        for folder in (data, part1, part2):
            folder.mkdir(parents=True, exist_ok=True)
        image_id = f"ISIC_{i:07d}"
        Image.fromarray(photo_like(rng, width, height)).save(data / f"{image_id}.jpg", quality=90)
        Image.fromarray(lesion.astype(np.uint8) * 255).save(part1 / f"{image_id}_segmentation.png")
        dots = np.zeros((height, width), bool)
        for y, x in rng.integers(0, (height, width), size=(40, 2)):
            dots[max(0, y - height // 200) : y + height // 200, max(0, x - width // 200) : x + width // 200] = True
        masks = {
            "pigment_network": (radius > 0.4) & lesion,
            "globules": dots & lesion,
            "streaks": ((radius > 0.8) & lesion) if i % 3 == 0 else np.zeros_like(lesion),
        }
        for name in ATTRIBUTES:
            mask = masks.get(name, np.zeros_like(lesion))
            Image.fromarray(mask.astype(np.uint8) * 255).save(part2 / f"{image_id}_attribute_{name}.png")


def write_image_folder(root: Path, n: int, width: int, height: int) -> Path:
    """``n`` JPEGs in a flat folder and a HAM10000-style label CSV (two images per lesion); returns the CSV."""
    rng = np.random.default_rng(2)
    images = root / "images"
    images.mkdir(parents=True)
    rows = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    for i in range(n):
        Image.fromarray(photo_like(rng, width, height)).save(images / f"ISIC_{i:07d}.jpg", quality=90)
        rows.append(f"HAM_{i // 2:07d},ISIC_{i:07d},{'mel' if i % 4 == 0 else 'nv'},histo,50,male,back")
    return write_text("\n".join(rows) + "\n", root / "HAM10000_metadata.csv")


#: Run in a fresh interpreter: one forced ``prepare``; prints images, wall seconds and CPU seconds (this
#: process and its decoding workers) of that call only. A folder of images (``labels`` given) is cached whole as
#: the training split.
_TIMED_PREPARE = """
import json, resource, sys, time
from dermogaze.data.prepare import prepare
src, out, workers, labels = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] or None
extra = {} if labels is None else {"labels": labels, "split": (1, 0, 0)}
start, cpu = time.perf_counter(), time.process_time()
info = prepare(src, out, size=256, workers=workers, progress=False, force=True, **extra)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
workers_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)  # the pool's processes, joined by now
cpu += workers_cpu.ru_utime + workers_cpu.ru_stime
print(json.dumps({"images": sum(info["counts"].values()), "seconds": seconds, "cpu_seconds": cpu}))
"""


@dataclass
class Rate:
    """Best figures of repeated ``prepare`` runs: images, images/s (wall) and CPU seconds per image."""

    images: int = 0
    per_second: float = 0.0
    cpu_per_image: float = float("inf")


def prepare_rate(code: Path, src: Path, out: Path, workers: int, labels: Path | None = None) -> Rate:
    """One forced ``prepare`` of ``src`` with the package under ``code`` (a ``src`` folder)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", _TIMED_PREPARE, str(src), str(out), str(workers), str(labels or "")],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"prepare of {src} with the code in {code} failed: {done.stderr.strip().splitlines()[-1]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n = result["images"]
    return Rate(images=n, per_second=n / result["seconds"], cpu_per_image=result["cpu_seconds"] / n)


def best_rates(runs: dict, repeats: int) -> dict:
    """Best wall rate and least CPU per image of each named ``prepare_rate`` argument tuple, the runs
    alternating ``repeats`` times."""
    best = {name: Rate() for name in runs}
    for _ in range(repeats):
        for name, args in runs.items():
            rate = prepare_rate(*args)
            best[name] = Rate(rate.images, max(best[name].per_second, rate.per_second),
                              min(best[name].cpu_per_image, rate.cpu_per_image))
    return best


def baseline_code(ref: str, into: Path) -> Path | None:
    """The ``src`` folder of git ``ref`` of this repository, extracted into ``into`` (``None`` if git cannot)."""
    archive = into / "baseline.tar"
    done = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), ref, "src"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"no baseline: git archive {ref} failed ({done.stderr.strip()})")
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(into / "baseline", filter="data")
    return into / "baseline" / "src"


def uptime() -> str:
    """The machine's load (``uptime``), as the figures were taken on a shared machine."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def bench_isic2018(tmp_path: Path, repeats: int, baseline_ref: str, markdown: Path | None) -> None:
    """Part (c) of the module docstring; prints markdown tables (and writes them to ``markdown``)."""
    here = REPO / "src"
    lines = [f"Machine: {os.cpu_count()} CPU cores, shared by several engineers at the time.",
             f"Load before: `{uptime()}`", ""]

    def table(title: str, header: str, rows: list[str]) -> None:
        rule = "|" + "|".join("---" for _ in header.strip("|").split("|")) + "|"
        block = [f"### {title}", "", header, rule, *rows, ""]
        print("\n".join(block), flush=True)
        lines.extend(block)

    for kind in ("isic2018", "images"):
        rows = []
        for width, height, n in PREPARE_ROWS[kind]:
            src = tmp_path / f"{kind}-{width}x{height}-{n}"
            labels = write_image_folder(src, n, width, height) if kind == "images" else None
            if kind == "isic2018":
                write_isic2018(src, n, width, height)
            folder = src / "images" if kind == "images" else src
            out = tmp_path / f"cache-{kind}-{width}x{height}-{n}"
            r = best_rates({w: (here, folder, out, w, labels) for w in (1, 2)}, repeats)
            rows.append(f"| {width}×{height} | {r[1].images} | {r[1].per_second:.2f} | {r[2].per_second:.2f} | "
                        f"{r[2].per_second / r[1].per_second:.2f}× | {r[1].cpu_per_image:.3f} | "
                        f"{r[2].cpu_per_image:.3f} |")
        title = ("ISIC 2018 Task 1-2 layout, lesion + five attribute masks" if kind == "isic2018"
                 else "folder of images + HAM10000-style labels CSV (no masks)")
        table(f"prepare at 256 px: {title} (best of {repeats}, alternating)",
              "| image size | images | img/s, --workers 1 | img/s, --workers 2 | 2 vs 1 | CPU s/img, 1 "
              "| CPU s/img, 2 |", rows)

    baseline = baseline_code(baseline_ref, tmp_path)
    if baseline is not None:
        rows = []
        for annotations in (True, False):
            src = tmp_path / f"isic2017-{annotations}"
            write_collection(src, 6, 4000, 3000, annotations)
            out = tmp_path / f"cache-isic2017-{annotations}"
            for workers in (1, 2):
                runs = {"base": (baseline, src, out, workers), "here": (here, src, out, workers)}
                r = best_rates(runs, repeats)
                what = "with Part 1/2 + superpixels" if annotations else "images + CSV only"
                base, this = r["base"], r["here"]
                rows.append(f"| {what} | {workers} | {base.per_second:.2f} | {this.per_second:.2f} | "
                            f"{this.per_second / base.per_second:.2f}× | {base.cpu_per_image:.3f} | "
                            f"{this.cpu_per_image:.3f} | {this.cpu_per_image / base.cpu_per_image:.2f}× |")
        ref = baseline_ref
        table(f"ISIC 2017 layout, 7 JPEGs of 4000×3000 at 256 px: git {ref} vs this tree (best of {repeats}, "
              "alternating)",
              f"| collection | workers | img/s, {ref} | img/s, this tree | this / {ref} | CPU s/img, {ref} | "
              f"CPU s/img, this tree | this / {ref} |", rows)
    lines.append(f"Load after: `{uptime()}`")
    if markdown is not None:
        write_text("\n".join(lines) + "\n", markdown)
        print(f"written to {markdown}")


def time_prepare(src: Path, out: Path, draft: bool, repeats: int) -> float:
    """Best images/s of ``repeats`` forced runs of ``prepare`` (one process)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        info = prepare(src, out, size=256, workers=1, progress=False, force=True, draft=draft)
        elapsed = time.perf_counter() - start
        best = max(best, sum(info["counts"].values()) / elapsed)
    return best


class _FloatMasks(torch.utils.data.Dataset):
    """The dataset's items with float32 masks (4 bytes per pixel instead of 1)."""

    def __init__(self, ds: DermoscopyDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        item = self.ds[i]
        return {**item, "masks": item["masks"].float()}


class _ZeroWork(torch.utils.data.Dataset):
    """Tensors of a DermoscopyDataset item made at no cost: the DataLoader's own transfer ceiling."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.zeros(3, 224, 224), "masks": torch.zeros(6, 224, 224, dtype=torch.uint8),
                "present": torch.zeros(6, dtype=torch.bool), "label": torch.tensor(0), "id": "x", "index": i}


def time_loading(cache: Path | None, samples: int, loader_workers: int | None, float_masks: bool = False) -> float:
    """samples/s of the training dataset at 224 px, in-process (``None``) or through a DataLoader.

    ``cache=None`` times the zero-work dataset instead; ``float_masks`` sends float32 masks.
    """
    ds = _ZeroWork(64) if cache is None else DermoscopyDataset(cache, "train", train=True, image_size=224)
    if float_masks:
        ds = _FloatMasks(ds)
    if loader_workers is None:
        for i in range(min(20, samples)):
            ds[i % len(ds)]
        start = time.perf_counter()
        for i in range(samples):
            ds[i % len(ds)]
        return samples / (time.perf_counter() - start)
    sampler = [i % len(ds) for i in range(samples)]
    loader = DataLoader(ds, batch_size=8, sampler=sampler, num_workers=loader_workers, persistent_workers=False)
    it = iter(loader)
    next(it)  # start the worker before the clock
    start = time.perf_counter()
    count = 0
    for batch in it:
        count += len(batch["id"])
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="ISIC-sized training JPEGs to generate")
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=2, help="runs per prepare timing (best is kept)")
    parser.add_argument("--samples", type=int, default=2000, help="samples for the loading benchmark")
    parser.add_argument("--part", choices=("all", "isic2017", "isic2018"), default="all",
                        help="isic2017: (a) and (b); isic2018: (c); all: both")
    parser.add_argument("--baseline-ref", default="HEAD", help="git ref whose code (c) compares on ISIC 2017")
    parser.add_argument("--markdown", type=Path, help="also write the tables of (c) to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="dermogaze-bench-") as tmp:
        tmp_path = Path(tmp)
        if args.part in ("all", "isic2018"):
            print("(c) prepare on ISIC-2018-sized images, --workers 1 and 2")
            bench_isic2018(tmp_path, args.repeats, args.baseline_ref, args.markdown)
        if args.part == "isic2018":
            return
        n_total = args.images + 1
        print(f"(a) prepare, 256 px, 1 process, {n_total} JPEGs of {args.width}×{args.height} (best of {args.repeats})")
        print(f"{'collection':<28}{'draft (img/s)':>15}{'full (img/s)':>15}{'speed-up':>10}")
        for annotations in (False, True):
            src = tmp_path / f"isic-{annotations}"
            write_collection(src, args.images, args.width, args.height, annotations)
            fast = time_prepare(src, tmp_path / f"cache-{annotations}", True, args.repeats)
            slow = time_prepare(src, tmp_path / f"cache-{annotations}", False, args.repeats)
            name = "with Part 1/2 + superpixels" if annotations else "images + CSV only"
            print(f"{name:<28}{fast:>15.2f}{slow:>15.2f}{fast / slow:>9.1f}×")

        print(f"\n(b) cached loading + training transforms at 224 px, {args.samples} samples, 1 thread")
        cache = tmp_path / "cache-True"
        direct = time_loading(cache, args.samples, None)
        print(f"{'in-process (one core)':<34}{direct:>10.0f} samples/s")
        loader, loader_float = [], []
        for _ in range(2):  # alternating, so both see the same load
            loader.append(time_loading(cache, args.samples, 1))
            loader_float.append(time_loading(cache, args.samples, 1, float_masks=True))
        best, best_float = max(loader), max(loader_float)
        print(f"{'DataLoader, 1 worker, uint8 masks':<34}{best:>10.0f} samples/s   (target >= 300; best of 2)")
        print(f"{'DataLoader, 1 worker, float32 masks':<34}{best_float:>10.0f} samples/s   "
              f"(as before; uint8 is {best / best_float:.2f}x)")
        ceiling = time_loading(None, args.samples, 1)
        print(f"{'DataLoader, 1 worker, no work':<34}{ceiling:>10.0f} samples/s   (transfer ceiling, same tensors)")


if __name__ == "__main__":
    main()
