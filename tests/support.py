"""Helpers shared by test files of different folders (importable because pyproject puts tests/ on the path)."""

from __future__ import annotations

import itertools
import math
import struct
import zlib

import numpy as np


def png_claiming(path, width, height):
    """A tiny PNG whose header claims ``width × height`` greyscale pixels (its data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def ref_soft_iou(p: np.ndarray, g: np.ndarray, eps: float = 1e-6) -> float:
    inter = sum(float(a) * float(b) for a, b in zip(p.ravel(), g.ravel(), strict=True))
    union = float(p.sum()) + float(g.sum()) - inter
    return 1.0 - inter / (union + eps)


def brute_force_match(cost: np.ndarray, present: np.ndarray) -> tuple[float, dict[int, int]]:
    """Minimum total cost over every one-to-one assignment; returns (cost, {step: structure})."""
    rows = [s for s in range(cost.shape[0]) if present[s]]
    T = cost.shape[1]
    best, best_map = math.inf, {}
    if len(rows) <= T:
        for steps in itertools.permutations(range(T), len(rows)):
            total = sum(cost[s, t] for s, t in zip(rows, steps, strict=True))
            if total < best:
                best, best_map = total, {t: s for s, t in zip(rows, steps, strict=True)}
    else:
        for structs in itertools.permutations(rows, T):
            total = sum(cost[s, t] for t, s in enumerate(structs))
            if total < best:
                best, best_map = total, dict(enumerate(structs))
    return best, best_map
