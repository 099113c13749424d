"""Inference latency of an ONNX export in onnxruntime against the same network in PyTorch, on the CPU.

Run by hand (never timed in tests)::

    .venv/bin/python benchmarks/bench_export.py [--checkpoint runs/demo/train/best.pt] [--threads 1 2]
        [--batches 1 8] [--repeats 30] [--out benchmarks/results/export.md]

The model is the demo's (``runs/demo/train/best.pt``, written by ``make demo``) when it exists,
otherwise the demo preset (``configs/demo.yaml``: ``deco_gap_3``, width 1/4, 64 px, T = 4) with
random weights; ``--preset NAME`` times another preset's network with random weights instead
(e.g. ``deco_gap_3``: the paper's size, 224 px, width 1, T = 5). It is exported with
:func:`dermogaze.apps.export.export_onnx` (the checked export of ``dermogaze export``).

Both engines get the same number of threads (``torch.set_num_threads`` and onnxruntime's
``intra_op_num_threads``; one inter-op thread each), measured for each ``--threads`` value in turn,
and the same inputs. PyTorch runs the model as
loaded (fused decoder, channels-last on the CPU) under ``torch.inference_mode``; onnxruntime runs the
exported graph with its default (full) graph optimisations. After a warm-up, the repetitions are
interleaved (one call of each engine per batch size in turn, the order alternating), so that load from
other processes falls on both alike; the figures are medians, with the PyTorch / onnxruntime ratio.
The machine's ``uptime`` load is recorded before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dermogaze.apps.export import INPUT_NAME, export_onnx
from dermogaze.config import load_config
from dermogaze.files import write_text
from dermogaze.models import build_model
from dermogaze.training.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_FORMAT_VERSION,
    UNCALIBRATED,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

DEMO_CHECKPOINT = Path("runs") / "demo" / "train" / "best.pt"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"(uptime unavailable: {exc})"


def random_checkpoint(preset: str, path: Path) -> Path:
    """A checkpoint of ``preset``'s network with random weights (ImageNet-like normalisation, no training)."""
    cfg = load_config(preset)
    m = cfg.model
    torch.manual_seed(0)
    model = build_model(m.name, steps=m.steps, image_size=m.image_size, width=m.width, skip=m.skip,
                        batch_norm=m.batch_norm, weights=None).eval()
    with torch.no_grad():
        if model.attention is not None:
            model.attention.v_a.weight.normal_(0.0, 0.05)  # a non-uniform attention, as after training
        out = model(torch.zeros(1, 3, m.image_size, m.image_size))
    classes = 0 if out.structure_logits is None else out.structure_logits.shape[-1]
    state = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_FORMAT_VERSION, "version": "bench",
        "config": cfg.to_dict(), "variant": model.variant,
        "model_kwargs": {k: v for k, v in model.init_kwargs.items() if k != "name"}, "model": model.state_dict(),
        "optimizer": {}, "scaler": {}, "epoch": 0, "best_val_loss": None, "best_epoch": 0, "metrics": {},
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "structures": [f"structure_{k}" for k in range(classes)], "image_size": m.image_size,
        "cache_size": m.image_size, "calibration": dict(UNCALIBRATED), "rng": [],
    }
    return save_checkpoint(path, state)


def time_call(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help=f"default: {DEMO_CHECKPOINT} if it exists")
    parser.add_argument("--preset", help="time this preset's network with random weights (ignores the demo run)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="threads of each engine, one measurement per value (default 1 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per engine and batch (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export.md"), help="Markdown report")
    args = parser.parse_args(argv)
    load_before = uptime()

    with tempfile.TemporaryDirectory() as tmp:
        if args.checkpoint is None and args.preset is None and DEMO_CHECKPOINT.is_file():
            args.checkpoint = DEMO_CHECKPOINT
        if args.checkpoint is not None:
            checkpoint, source = args.checkpoint, f"`{args.checkpoint}` (trained)"
        else:
            preset = args.preset or "demo"
            checkpoint = random_checkpoint(preset, Path(tmp) / "random.pt")
            source = f"preset `{preset}` with random weights"
        start = time.perf_counter()
        export = export_onnx(checkpoint, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - start
        size_mb = export["path"].stat().st_size / 1e6
        meta = export["metadata"]

        model = model_from_checkpoint(load_checkpoint(checkpoint))
        sessions = {}
        for n in args.threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads = n
            options.inter_op_num_threads = 1
            sessions[n] = ort.InferenceSession(str(export["path"]), options, providers=["CPUExecutionProvider"])

    s = meta["image_size"]
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, s, s)).astype(np.float32) for b in args.batches}
    times: dict[tuple[int, str, int], list[float]] = {}
    diffs = {}
    with torch.inference_mode():
        for n, session in sessions.items():
            torch.set_num_threads(n)
            engines = {
                "pytorch": lambda x: model(torch.from_numpy(x)),
                "onnxruntime": lambda x, session=session: session.run(None, {INPUT_NAME: x}),
            }
            for b, x in inputs.items():
                got = session.run(["melanoma_probability"], {INPUT_NAME: x})[0]
                want = model(torch.from_numpy(x)).calibrated_melanoma_prob(meta["temperature"]).numpy()
                diffs[n, b] = float(np.abs(got - want).max())
                for _ in range(args.warmup):
                    for fn in engines.values():
                        fn(x)
            order = list(engines)
            for rep in range(args.repeats):
                for b, x in inputs.items():
                    for name in order if rep % 2 == 0 else order[::-1]:
                        times.setdefault((n, name, b), []).append(time_call(lambda fn=engines[name], x=x: fn(x)))
    load_after = uptime()

    command = "python benchmarks/bench_export.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = [
        "| threads | batch | PyTorch median (ms) | onnxruntime median (ms) | PyTorch / onnxruntime "
        "| onnxruntime per image (ms) | max abs diff P(melanoma) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in args.threads:
        for b in args.batches:
            pt, ox = (statistics.median(times[n, e, b]) * 1e3 for e in ("pytorch", "onnxruntime"))
            rows.append(f"| {n} | {b} | {pt:.1f} | {ox:.1f} | {pt / ox:.2f} | {ox / b:.1f} | {diffs[n, b]:.1e} |")
    notes = []
    one = min(args.threads)
    for n in args.threads:
        slower = [b for b in args.batches if n > one and statistics.median(times[n, "pytorch", b])
                  > statistics.median(times[one, "pytorch", b])]
        if slower:
            notes.append(
                f"PyTorch was slower with {n} threads than with {one} here (batch {', '.join(map(str, slower))}): "
                "other processes held the cores (the load above), and PyTorch's OpenMP threads, which meet at every "
                f"operation, most likely waited for each other; the {one}-thread rows are the fairer comparison on "
                "this machine."
            )
    report = "\n".join([
        "# ONNX export: onnxruntime vs PyTorch CPU latency",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Model: {source}: {meta['variant']}, T = {meta['steps']}, {s} px input, outputs "
        f"{', '.join(meta['outputs'])}; ONNX file {size_mb:.1f} MB, exported and checked in {export_s:.1f} s.",
        "",
        f"Threads: the same for both engines, {' and '.join(map(str, args.threads))}"
        f"{' in turn' if len(args.threads) > 1 else ''} "
        "(`torch.set_num_threads(n)`, onnxruntime `intra_op_num_threads=n`, one inter-op thread); "
        f"{args.repeats} timed calls per engine, batch and thread count after {args.warmup} warm-up calls, "
        "interleaved (the order alternating); medians.",
        "",
        f"Versions: torch {torch.__version__}, onnxruntime {ort.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "Machine: shared with other engineers' jobs while this ran; load (`uptime`):",
        "",
        f"- before: `{load_before}`",
        f"- after: `{load_after}`",
        "",
        *rows,
        "",
        *(f"{note}\n" for note in notes),
    ])
    write_text(report, args.out)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
