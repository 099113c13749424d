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

``--int8`` answers another question, what int8 buys on the CPU (results: ``benchmarks/results/export_int8.md``)::

    .venv/bin/python benchmarks/bench_export.py --int8 [--presets demo deco_gap_3] [--threads 1] [--budget 60]
        [--checkpoint runs/demo/train/best.pt] [--data CACHE] [--out benchmarks/results/export_int8.md]

For each preset (random weights: the speed of a network does not depend on its weights), on the same inputs
and interleaved the same way (the order rotating from one repetition to the next): onnxruntime running the
int8 graph of each plan of ``dermogaze export --quantize int8`` (:func:`dermogaze.apps.export.quantize_int8`,
calibrated on 8 random inputs, which changes its ranges, not its speed), onnxruntime running the float32
graph, PyTorch float32 and PyTorch under ``torch.autocast("cpu", dtype=torch.bfloat16)``; at the first preset
also onnxruntime's dynamic quantization of the same layers (``quantize_dynamic``: weights int8, activations
quantized at run time), the alternative to static quantization. Medians, and each engine's time over
onnxruntime float32's. Then the parity on a trained checkpoint (``--checkpoint``, default the demo's) and its
cache (``--data``, default the one it was trained on): ``export_onnx(quantize="int8", data=...)``'s own check
(P(melanoma), decisions and named structures against the float graph, on the val and test images; every plan
it tried), and the same figures for the dynamic quantization against the float graph and for PyTorch bf16
against PyTorch float32, on the same images.
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

from dermogaze.apps.export import (
    INPUT_NAME,
    INT8_BATCH,
    INT8_OPERATORS,
    INT8_PLANS,
    INT8_TOLERANCE,
    ExportedGazeNet,
    export_onnx,
    int8_float_parameters,
    int8_parity,
    quantize_int8,
)
from dermogaze.config import load_config
from dermogaze.data.dataset import DermoscopyDataset
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


def load_lines(before: str, after: str) -> list[str]:
    """The report's lines on the machine's load (``uptime``) before and after the measurement."""
    return ["Machine: shared with other engineers' jobs while this ran; load (`uptime`):", "",
            f"- before: `{before}`", f"- after: `{after}`"]


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


def ort_session(model: str | Path | bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"])


def dynamic_int8(float_path: Path, out: Path, float_parameters: list[str]) -> Path:
    """onnxruntime's dynamic quantization of the layers the static export quantizes (its operators, same
    exclusions); Gemm has no dynamic kernel, so the convolutions only."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(float_path)).graph
    keep = set(float_parameters)
    excluded = [n.name for n in graph.node if len(n.input) > 1 and n.input[1] in keep]
    quantize_dynamic(float_path, out, op_types_to_quantize=["Conv"], per_channel=True, reduce_range=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    return out


def time_int8(preset: str, args: argparse.Namespace, tmp: Path, with_dynamic: bool) -> dict:
    """Median latency per engine and batch size of ``preset``'s network with random weights."""
    checkpoint = random_checkpoint(preset, tmp / f"{preset}.pt")
    start = time.perf_counter()
    export = export_onnx(checkpoint, tmp / f"{preset}.onnx")
    export_s = time.perf_counter() - start
    model = model_from_checkpoint(load_checkpoint(checkpoint))
    size = export["metadata"]["image_size"]
    calibration = np.random.default_rng(1).standard_normal((8, 3, size, size)).astype(np.float32)
    threads = args.threads[0]
    torch.set_num_threads(threads)
    sessions, sizes_mb, quantize_s = {}, {"fp32": export["bytes"] / 1e6}, {}
    for plan in INT8_PLANS:
        start = time.perf_counter()
        graph = quantize_int8(export["path"].read_bytes(), calibration,
                              int8_float_parameters(ExportedGazeNet(model), plan)).SerializeToString()
        quantize_s[plan] = time.perf_counter() - start
        sizes_mb[plan] = len(graph) / 1e6
        sessions[f"onnxruntime int8, plan {plan}"] = ort_session(graph, threads)
    sessions["onnxruntime fp32"] = ort_session(export["path"], threads)
    if with_dynamic:
        full = int8_float_parameters(ExportedGazeNet(model))
        path = dynamic_int8(export["path"], tmp / f"{preset}_dynamic.onnx", full)
        sessions["onnxruntime int8 dynamic"] = ort_session(path, threads)

    def bf16(x: np.ndarray) -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(torch.from_numpy(x))

    engines = {name: (lambda x, s=session: s.run(None, {INPUT_NAME: x})) for name, session in sessions.items()}
    engines |= {"PyTorch fp32": lambda x: model(torch.from_numpy(x)), "PyTorch bf16 autocast": bf16}
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, size, size)).astype(np.float32) for b in args.batches}
    order = list(engines)
    with torch.inference_mode():
        slowest = 0.0
        for x in inputs.values():
            for _ in range(args.warmup):
                slowest = max(slowest, sum(time_call(lambda fn=fn, x=x: fn(x)) for fn in engines.values()))
        # as many repetitions as fit in --budget seconds, from args.min_repeats to args.repeats
        repeats = max(args.min_repeats, min(args.repeats, int(args.budget / max(slowest * len(inputs), 1e-9))))
        times: dict[tuple[str, int], list[float]] = {}
        for rep in range(repeats):
            rotated = order[rep % len(order):] + order[: rep % len(order)]
            for b, x in inputs.items():
                for name in rotated:
                    times.setdefault((name, b), []).append(time_call(lambda fn=engines[name], x=x: fn(x)))
    return {
        "preset": preset, "meta": export["metadata"], "export_s": export_s, "quantize_s": quantize_s,
        "sizes_mb": sizes_mb, "repeats": repeats,
        "medians": {key: statistics.median(values) * 1e3 for key, values in times.items()}, "engines": order,
    }


def int8_parity_on_cache(checkpoint: Path, cache: Path, tmp: Path) -> dict:
    """The int8 export's own check on ``cache``, and the same figures for PyTorch bf16 and dynamic int8."""
    start = time.perf_counter()
    export = export_onnx(checkpoint, tmp / "trained_int8.onnx", quantize="int8", data=cache)
    export_s = time.perf_counter() - start
    q = export["metadata"]["quantization"]
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    temperature, threshold = float(ckpt["calibration"]["temperature"]), float(ckpt["calibration"]["threshold"])
    float_path = export_onnx(checkpoint, tmp / "trained_fp32.onnx")["path"]
    full = int8_float_parameters(ExportedGazeNet(model))
    dynamic = ort_session(dynamic_int8(float_path, tmp / "trained_dynamic.onnx", full), 1)
    reference = ort_session(float_path, 1)
    results: dict[str, list[list[np.ndarray]]] = {k: [[], []] for k in ("fp32", "bf16", "onnx fp32", "dynamic")}
    with torch.inference_mode():
        for split in ("val", "test"):
            ds = DermoscopyDataset(cache, split, image_size=model.image_size, normalisation=(ckpt["mean"], ckpt["std"]))
            for start in range(0, len(ds), INT8_BATCH):
                x = torch.stack([ds[i]["image"] for i in range(start, min(start + INT8_BATCH, len(ds)))])
                outs = {"fp32": model(x)}
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    outs["bf16"] = model(x).float()
                for key, out in outs.items():
                    results[key][0].append(out.calibrated_melanoma_prob(temperature).numpy())
                    results[key][1].append(out.structure_logits.argmax(-1).numpy())
                for key, session in (("onnx fp32", reference), ("dynamic", dynamic)):
                    p, logits = session.run(["melanoma_probability", "structure_logits"], {INPUT_NAME: x.numpy()})
                    results[key][0].append(p)
                    results[key][1].append(logits.argmax(-1))
    arrays = {k: [np.concatenate(v) for v in pair] for k, pair in results.items()}

    def parity(a: str, b: str) -> dict:
        return int8_parity(arrays[a][0], arrays[b][0], arrays[a][1], arrays[b][1], threshold)

    return {"export_s": export_s, "quantization": q, "bf16": parity("fp32", "bf16"),
            "dynamic": parity("onnx fp32", "dynamic"), "images": len(arrays["fp32"][0]), "steps": model.steps}


def int8_report(args: argparse.Namespace, argv: list[str] | None) -> str:
    load_before = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        timings = [time_int8(preset, args, Path(tmp), with_dynamic=i == 0) for i, preset in enumerate(args.presets)]
        checkpoint = args.checkpoint or DEMO_CHECKPOINT
        cache = args.data or Path(load_checkpoint(checkpoint)["config"]["data"]["cache"])
        parity = int8_parity_on_cache(checkpoint, cache, Path(tmp))
    load_after = uptime()
    command = "python benchmarks/bench_export.py " + " ".join(argv if argv is not None else sys.argv[1:])
    plans = "; ".join(f"plan `{plan}`: {what}" for plan, what in INT8_PLANS.items())
    lines = [
        "# int8 export: onnxruntime int8 vs fp32, PyTorch fp32 and bf16 autocast on the CPU",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Versions: torch {torch.__version__}, onnxruntime {ort.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu_flags()}). Threads: {args.threads[0]} per engine "
        "(`torch.set_num_threads`, onnxruntime `intra_op_num_threads`, one inter-op thread).",
        "",
        *load_lines(load_before, load_after),
        "",
        "## Latency",
        "",
        f"Random weights. After {args.warmup} warm-up call(s), repetitions as many as fit in {args.budget:.0f} s "
        f"(from {args.min_repeats} to {args.repeats}), interleaved: one call of each engine per batch size in turn, "
        "the order rotating; medians, and each engine's time over onnxruntime fp32's. int8: static QDQ, "
        f"{', '.join(INT8_OPERATORS)} ({plans}), calibrated on 8 random inputs (ranges change the figures, "
        "not the speed).",
        "",
    ]
    for t in timings:
        meta = t["meta"]
        sizes = ", ".join(f"{name} {mb:.1f} MB" for name, mb in t["sizes_mb"].items())
        quantized = ", ".join(f"{plan} {sec:.0f} s" for plan, sec in t["quantize_s"].items())
        lines += [
            f"### `{t['preset']}`: {meta['variant']}, {meta['image_size']} px, T = {meta['steps']}",
            "",
            f"Files: {sizes}; exported and checked in {t['export_s']:.0f} s, quantized in {quantized}; "
            f"{t['repeats']} repetitions.",
            "",
            "| engine | " + " | ".join(f"batch {b} median (ms) | / onnxruntime fp32" for b in args.batches) + " |",
            "|---|" + "---:|---:|" * len(args.batches),
        ]
        for name in t["engines"]:
            cells = []
            for b in args.batches:
                ms = t["medians"][name, b]
                cells += [f"{ms:.1f}", f"{ms / t['medians']['onnxruntime fp32', b]:.2f}"]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    q, tol = parity["quantization"], INT8_TOLERANCE

    def row(name: str, p: dict) -> str:
        named = "–" if p["named_agreement"] is None else f"{p['named_agreement']:.1%}"
        return f"| {name} | {p['max_abs_dp']:.4f} | {p['decision_agreement']:.1%} | {named} |"

    lines += [
        "## Parity (trained checkpoint)",
        "",
        f"Checkpoint `{checkpoint}`, cache `{cache}`: int8 calibrated on {q['calibration_images']} images "
        f"({q['calibration_set']}), checked on {q['check_images']} images ({q['check_set']}, "
        f"{parity['images'] * parity['steps']} gaze steps), threshold {q['threshold']:.3f}; `export_onnx(quantize="
        f"\"int8\")` took {parity['export_s']:.0f} s with its checks and wrote plan `{q['plan']}`. Tolerances: "
        f"max |ΔP| ≤ {tol['max_abs_dp']}, same decision ≥ {tol['decision_agreement']:.0%}, same named structure "
        f"≥ {tol['named_agreement']:.0%}.",
        "",
        "| model against its reference | max abs ΔP(melanoma) | same decision | same named structure |",
        "|---|---:|---:|---:|",
        *(row(f"onnxruntime int8, plan {r['plan']} vs onnxruntime fp32 (refused)", r["parity"])
          for r in q["rejected_plans"]),
        row(f"onnxruntime int8, plan {q['plan']} vs onnxruntime fp32 (written)", q["parity"]),
        row("onnxruntime int8 dynamic (layers of plan full) vs onnxruntime fp32", parity["dynamic"]),
        row("PyTorch bf16 autocast vs PyTorch fp32", parity["bf16"]),
        "",
        f"Layers kept float in the written graph: {', '.join(f'`{n}`' for n in q['float_parameters'])}.",
        "",
    ]
    return "\n".join(lines)


def cpu_flags() -> str:
    """The CPU's int8 and bf16 instruction sets (from /proc/cpuinfo), which decide what int8 and bf16 can gain."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "flags unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return ", ".join(f for f in wanted if f in flags) or "no AVX2"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help=f"default: {DEMO_CHECKPOINT} if it exists")
    parser.add_argument("--preset", help="time this preset's network with random weights (ignores the demo run)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="threads of each engine, one measurement per value (default 1 2)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per engine and batch (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--out", type=Path, help="Markdown report (default: benchmarks/results/export.md, with "
                        "--int8 export_int8.md)")
    parser.add_argument("--int8", action="store_true", help="int8 against fp32 and bf16 (see the module docstring)")
    parser.add_argument("--presets", nargs="+", default=["demo", "deco_gap_3"],
                        help="--int8: presets timed with random weights (default: demo deco_gap_3)")
    parser.add_argument("--data", type=Path, help="--int8: cache of the parity check (default: the checkpoint's)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="--int8: seconds of timed calls per preset, shared by its engines (default 60)")
    parser.add_argument("--min-repeats", type=int, default=3, help="--int8: at least this many (default 3)")
    args = parser.parse_args(argv)
    if args.int8:
        report = int8_report(args, argv)
        write_text(report, args.out or Path("benchmarks/results/export_int8.md"))
        print(report)
        return 0
    args.out = args.out or Path("benchmarks/results/export.md")
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
        *load_lines(load_before, load_after),
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
