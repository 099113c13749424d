"""Data-layer speed: ``prepare`` on ISIC-sized JPEGs (draft vs full decoding) and cached loading.

Run by hand (never timed in tests)::

    .venv/bin/python benchmarks/bench_data.py [--images 6] [--width 4000] [--height 3000] [--samples 2000]

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
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dermogaze.data.cache import prepare
from dermogaze.data.dataset import DermoscopyDataset
from dermogaze.structures import DERMOSCOPIC_FEATURES


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
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="dermogaze-bench-") as tmp:
        tmp_path = Path(tmp)
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
