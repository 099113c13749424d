"""The training-step benchmark: dermogaze's training step against the straightforward baseline.

Run by hand from a repository checkout (never timed in tests)::

    .venv/bin/python benchmarks/bench_train.py [--batch 8] [--repeats 3] [--json bench.json] ...
    .venv/bin/dermogaze bench [same options]      # make bench; finds this file from the working folder up

One process runs, alternating (baseline step, dermogaze step, fp32 matrix multiply, baseline
step, ...), the training step of both formulations of the gaze network on the same synthetic batch
(:func:`dermogaze.training.loop.train_step`, the step training runs: forward,
:class:`~dermogaze.losses.GazeLoss`, backward, Adam step with the paper's per-module learning
rates) and reports:

* model FLOPs per image of each formulation, forward and forward+backward
  (``torch.utils.flop_counter.FlopCounterMode``);
* the median step time of each, their ratio (the speed-up), the achieved GFLOP/s;
* the machine's fp32 matrix-multiply throughput (a square ``torch.mm``, measured between the
  steps, so under the same load) and the utilisation it implies: dermogaze counted in the
  *baseline's* FLOPs per step / dermogaze's step time / matmul GFLOP/s (the benchmark's definition);
* the peak memory of each training step: each formulation runs in a fresh child process
  (``multiprocessing`` spawn), whose peak resident set size (``ru_maxrss``) is that formulation's
  alone (a process's ``ru_maxrss`` never goes down, so one process cannot measure two peaks);
  on CUDA, ``torch.cuda.max_memory_allocated`` in that child;
* the agreement of the two formulations on the same weights and batch: loss, matching, every
  gradient (see :func:`compare_formulations`);
* the latency of a single-image explanation (model forward + gaze extraction + JSON record,
  :func:`dermogaze.explain.record.explain_image`).

The benchmark's targets (CPU, float32, against the baseline): a speed-up of at least
:data:`TARGET_SPEEDUP`, peak memory at most :data:`TARGET_MEMORY_RATIO` of the baseline's, a
utilisation of at least :data:`TARGET_UTILISATION`, and agreement within ``--tolerance``.

``--reference fp32`` times dermogaze against its own float32 eager, contiguous step instead of the
baseline (same weights and batch): the GPU check of ``--amp``, ``--channels-last`` and ``--compile``
(target :data:`TARGET_GPU_SPEEDUP`×); the ``baseline`` fields of the results then hold that reference.

This file, its command line (``benchmarks/bench_train_options.py``, which imports no torch, so that
``dermogaze bench --help`` answers at once) and the baseline (``benchmarks/baseline.py``), imported as the
sibling modules ``bench_train_options`` and ``baseline``, are measuring sticks kept in the repository, not
part of the installed package.

Decisions:

* The two formulations start from the same random weights (``weights=None``: no download) with
  the encoder frozen as the paper's learning rate of 0 asks. ``V_a`` is drawn from
  ``N(0, 1/(9C))`` instead of zero, so the attention is not uniform and every attention weight
  gets a non-zero gradient to compare (timing does not depend on the values).
* The synthetic batch: normalised-looking Gaussian images, one ellipse per present structure
  (each present with probability 1/2), labels alternating benign/melanoma.
* The agreement check runs on float64 copies of both formulations, on the timed batch (or its first
  ``--agreement-batch`` samples), before any step: loss and every gradient within ``--tolerance``
  (1e-6) relative, matchings equal (:func:`compare_formulations`). float64 because float32 rounding
  alone moves some gradients by ~1e-3 at 224 px (the float32 differences are reported too). The
  FLOP count runs on the first float32 step. ``--amp``, ``--channels-last`` and
  ``--compile`` apply to dermogaze's timed steps and its memory measurement (the explanation
  latency runs the same model, eager, float32); the baseline always runs plain eager float32,
  contiguous, as it is defined.
* "forward" FLOPs are the network's forward pass; "forward+backward" adds the backward pass of the
  loss and the network (the loss's own forward and the optimiser are a fraction of a percent).
* The memory children build both formulations (so both hold the same weights and libraries),
  keep one, run two training steps (the second holds Adam's state as well) and report the peak
  resident set size of the whole process (Python, PyTorch, weights included) and its rise during
  the steps; the ratio of the peaks is the headline figure.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from baseline import Baseline
from bench_train_options import PROG, REFERENCES, BenchOptions, build_parser
from dermogaze.config import LossConfig, TrainConfig
from dermogaze.errors import DermogazeError
from dermogaze.explain.record import explain_image
from dermogaze.files import write_json
from dermogaze.losses import GazeLoss
from dermogaze.models import GazeNet, build_model
from dermogaze.runtime import autocast_factory, resolve_device
from dermogaze.structures import NUM_STRUCTURES
from dermogaze.training.loop import train_step
from dermogaze.training.optim import learning_rates

logger = logging.getLogger(__name__)

FORMULATIONS = ("baseline", "dermogaze")

#: The benchmark's targets (CPU, float32, against the baseline).
TARGET_SPEEDUP = 1.3
TARGET_MEMORY_RATIO = 0.6
TARGET_UTILISATION = 0.8
#: The benchmark's target on a GPU: ``--amp bf16 --channels-last`` against ``--reference fp32``.
TARGET_GPU_SPEEDUP = 3.0


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
def make_batch(batch: int, image_size: int, *, seed: int = 0, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A synthetic training batch in the layout of :class:`~dermogaze.data.dataset.DermoscopyDataset`.

    Each structure is present with probability 1/2 (at least one per image); a present structure's
    mask is one random axis-aligned ellipse.

    Returns:
        ``image`` ``(B, 3, S, S)`` float32 (standard normal), ``masks`` ``(B, 6, S, S)`` 0/1 float32,
        ``present`` ``(B, 6)`` bool, ``label`` ``(B,)`` int64 (alternating 0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    s = image_size
    images = torch.randn(batch, 3, s, s, generator=g)
    present = torch.rand(batch, NUM_STRUCTURES, generator=g) < 0.5
    present[torch.arange(batch), torch.randint(0, NUM_STRUCTURES, (batch,), generator=g)] = True
    centre = torch.rand(batch, NUM_STRUCTURES, 2, 1, 1, generator=g) * 0.6 + 0.2  # (B, 6, 2, 1, 1) fractions
    radius = torch.rand(batch, NUM_STRUCTURES, 2, 1, 1, generator=g) * 0.25 + 0.05
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    dy = (coords.view(s, 1) - centre[:, :, 0]) / radius[:, :, 0]  # (B, 6, S, 1)
    dx = (coords.view(1, s) - centre[:, :, 1]) / radius[:, :, 1]  # (B, 6, 1, S)
    masks = ((dy**2 + dx**2) <= 1.0) & present[:, :, None, None]  # (B, 6, S, S)
    present = masks.flatten(2).any(-1)
    out = {
        "image": images,
        "masks": masks.float(),
        "present": present,
        "label": torch.arange(batch) % 2,
    }
    return {k: v.to(device) for k, v in out.items()}


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Silence a logger below ERROR for a moment (the random-weights warning of a frozen batch norm)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def build_pair(opts: BenchOptions, device: torch.device) -> tuple[GazeNet, nn.Module]:
    """dermogaze's model (encoder frozen) and the reference holding the same weights.

    The reference is the baseline formulation, or with ``opts.reference == "fp32"`` a copy of the
    model itself (timed in float32 eager, contiguous, whatever ``--amp``/``--channels-last`` say).

    Returns:
        ``(model, reference)``, both in train mode on ``device``, float32, contiguous.
    """
    torch.manual_seed(opts.seed)
    with _quiet("dermogaze.models.gazenet"):
        model = build_model(opts.variant, steps=opts.steps, image_size=opts.image_size, width=opts.width)
    if model.attention is None:
        raise DermogazeError(f"model {opts.variant} has no attentive ConvLSTM: nothing to compare with the baseline")
    model.freeze_encoder(True)  # the paper's encoder learning rate of 0
    v_a = model.attention.v_a.weight
    nn.init.normal_(v_a, 0.0, 1.0 / math.sqrt(v_a[0].numel()))  # non-uniform attention (module docstring)
    model.to(device).train()
    if opts.reference == "fp32":
        return model, copy.deepcopy(model)
    baseline = Baseline.from_gazenet(model).to(device).train()
    return model, baseline


def paper_optimizer(net: nn.Module, train: TrainConfig | None = None) -> torch.optim.Adam:
    """Adam with the paper's per-module learning rates (:func:`learning_rates`) over ``net.parameter_groups()``.

    The encoder group is included with its learning rate (0 in the paper) when it holds trainable
    parameters (the baseline's): the optimiser then leaves those weights where they are, but
    autograd has computed their gradients. dermogaze's frozen encoder has no such group.
    """
    t = train or TrainConfig()
    lrs = learning_rates(t)
    groups = [
        {"params": params, "lr": lrs[name], "name": name} for name, params in net.parameter_groups().items() if params
    ]
    return torch.optim.Adam(groups, betas=tuple(t.betas), weight_decay=t.weight_decay)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()`` (synchronising the GPU before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def matmul_seconds(a: Tensor, b: Tensor) -> float:
    """Seconds of one ``torch.mm(a, b)`` (float32)."""
    return timed(lambda: torch.mm(a, b), a.device)


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """FLOPs of ``fn()`` (``FlopCounterMode``: matrix products and convolutions) and its result."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return int(counter.get_total_flops()), result


#: Gradients smaller than this fraction of the whole gradient's norm are compared against it instead
#: of their own norm (analytically zero gradients, e.g. of a conv bias followed by a batch norm in
#: training mode, are pure rounding noise: their own relative difference means nothing).
GRAD_FLOOR = 0.05

#: Precision of the agreement check (see :func:`compare_formulations`).
AGREEMENT_DTYPE = torch.float64


def _relative(a: Tensor, b: Tensor, floor: float = 0.0) -> float:
    """``||a - b|| / max(||a||, ||b||, floor)`` (0 when all three are zero)."""
    a, b = a.detach().double(), b.detach().double()
    scale = max(float(a.norm()), float(b.norm()), floor)
    return 0.0 if scale == 0.0 else float((a - b).norm()) / scale


def _grads_of(net: nn.Module, loss_fn: GazeLoss, batch: Mapping[str, Any]) -> dict:
    """Forward, loss and backward of ``net`` (grads left in ``.grad``); FLOPs, loss and matching."""
    images = batch["image"]
    net.zero_grad(set_to_none=True)
    fwd, out = count_flops(lambda: net(images))
    terms = loss_fn(out, batch)
    bwd, _ = count_flops(lambda: terms["loss"].backward())
    return {
        "forward": float(fwd),
        "forward_backward": float(fwd + bwd),
        "loss": float(terms["loss"].detach()),
        "matching": terms["matching"],
    }


def _gradient_differences(
    model: GazeNet, model_grads: Mapping[str, Tensor | None], base_grads: Mapping[str, Tensor | None]
) -> tuple[dict[str, float], list[str]]:
    """Relative difference of every trained gradient (floored, see :data:`GRAD_FLOOR`); missing names."""
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    present = [n for n in trained if base_grads.get(n) is not None]
    total = math.sqrt(sum(float(base_grads[n].double().norm()) ** 2 for n in present))
    diffs: dict[str, float] = {}
    missing: list[str] = []
    for name in trained:
        g_model, g_base = model_grads.get(name), base_grads.get(name)
        if g_model is None or g_base is None:
            missing.append(name)
        else:
            diffs[name] = _relative(g_model, g_base, GRAD_FLOOR * total)
    return diffs, missing


def _differences(base_run: dict, model_run: dict, diffs: Mapping[str, float]) -> dict[str, Any]:
    """Losses of both runs (:func:`_grads_of`), their relative difference, and the worst gradient."""
    worst = max(diffs, key=diffs.get) if diffs else None
    losses = {"baseline": base_run["loss"], "dermogaze": model_run["loss"]}
    return {
        "loss": losses,
        "loss_rel_diff": abs(losses["baseline"] - losses["dermogaze"]) / max(abs(losses["baseline"]), 1e-30),
        "grad_max_rel_diff": diffs[worst] if worst else 0.0,
        "grad_worst": worst,
    }


def first_step(
    model: GazeNet, reference: nn.Module, loss_fn: GazeLoss, batch: Mapping[str, Any]
) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """Forward, loss and backward of both formulations in float32, counting FLOPs.

    The gradients are left in ``.grad`` (the caller's optimiser step makes this the first training
    step). Against the baseline, also returns the float32 losses and the largest relative difference
    of the gradients, for information only: at the paper's size the gradients of this network are
    sums over millions of nearly cancelling terms, and two float32 summation orders differ by about
    1e-3. Whether the two formulations compute the same function is settled by
    :func:`compare_formulations`.

    Returns:
        ``(flops, float32)``: ``flops[kind]`` ``forward``/``forward_backward`` for the whole batch;
        ``float32``: ``loss`` ``{baseline, dermogaze}``, ``loss_rel_diff``, ``grad_max_rel_diff``,
        ``grad_worst``; None when ``reference`` is not the baseline (a copy of the model).
    """
    runs = {"baseline": _grads_of(reference, loss_fn, batch), "dermogaze": _grads_of(model, loss_fn, batch)}
    flops = {k: {"forward": v["forward"], "forward_backward": v["forward_backward"]} for k, v in runs.items()}
    if isinstance(reference, GazeNet):
        return flops, None
    model_grads = {n: p.grad for n, p in model.named_parameters()}
    diffs, _ = _gradient_differences(model, model_grads, reference.gazenet_tensors(grad=True))
    return flops, _differences(runs["baseline"], runs["dermogaze"], diffs)


def _batch_as(batch: Mapping[str, Any], dtype: torch.dtype, size: int | None) -> dict[str, Any]:
    """The first ``size`` samples of ``batch`` (all when None), floating tensors cast to ``dtype``."""
    out = {}
    for key, value in batch.items():
        value = value[:size] if size is not None else value
        out[key] = value.to(dtype) if value.is_floating_point() else value
    return out


def compare_formulations(
    model: GazeNet,
    baseline: nn.Module,
    loss_fn: GazeLoss,
    batch: Mapping[str, Any],
    tolerance: float = 1e-6,
    *,
    dtype: torch.dtype = AGREEMENT_DTYPE,
    size: int | None = None,
) -> dict[str, Any]:
    """Do both formulations compute the same loss and gradients? Checked on copies in ``dtype``.

    Copies of both networks and of the loss, cast to ``dtype`` (float64 by default), run forward,
    loss and backward on the same batch, and every trained parameter's gradient is compared:
    ``||g_dermogaze - g_baseline|| / max(||g_dermogaze||, ||g_baseline||, GRAD_FLOOR·||g||)`` must be
    at most ``tolerance``, for every gradient, as must the loss's relative difference, and the
    Hungarian matchings must be equal. In float64 the rounding of these sums is many orders of
    magnitude below 1e-6, so that tolerance leaves no room for a formulation that computes
    something else (a 1 % change of one recurrent weight gives ~1e-2), whereas float32 rounding
    alone reaches ~1e-3 at 224 px (see :func:`first_step`). The originals are not touched.

    Args:
        model: dermogaze's network (any encoder freezing); same weights as ``baseline``.
        baseline: the baseline built from ``model`` (:meth:`Baseline.from_gazenet`).
        loss_fn: the loss of both.
        batch: from :func:`make_batch`.
        tolerance: relative tolerance of every comparison.
        dtype: precision of the check.
        size: use the first ``size`` samples of the batch (default: all of it).

    Returns:
        ``loss`` ``{baseline, dermogaze}``, ``loss_rel_diff``, ``matching_equal``, ``grad_max_rel_diff``
        and ``grad_worst`` (parameter name), ``grad_failed`` (names beyond ``tolerance``),
        ``grad_missing``, ``per_gradient`` (``{name: rel_diff}``), ``baseline_encoder_backward``
        (the baseline computed encoder gradients), ``dtype``, ``batch``, ``tolerance``, ``ok``.
    """
    data = _batch_as(batch, dtype, size)
    loss_copy = copy.deepcopy(loss_fn).to(dtype)
    twin = copy.deepcopy(baseline).to(dtype)  # one formulation at a time: float64 copies are large
    base_run = _grads_of(twin, loss_copy, data)
    base_grads = twin.gazenet_tensors(grad=True)  # the tensors outlive the copy
    encoder = [p for p in twin.encoder.parameters() if p.requires_grad]
    encoder_backward = bool(encoder) and all(p.grad is not None for p in encoder)
    del twin, encoder
    gc.collect()
    twin = copy.deepcopy(model).to(dtype)
    model_run = _grads_of(twin, loss_copy, data)
    model_grads = {n: p.grad for n, p in twin.named_parameters()}
    diffs, missing = _gradient_differences(model, model_grads, base_grads)
    del twin, model_grads, base_grads
    gc.collect()

    failed = [name for name, rel in diffs.items() if rel > tolerance]
    summary = _differences(base_run, model_run, diffs)
    matching_equal = all(
        np.array_equal(tb, tm) and np.array_equal(sb, sm)
        for (tb, sb), (tm, sm) in zip(base_run["matching"], model_run["matching"], strict=True)
    )
    return {
        **summary,
        "matching_equal": matching_equal,
        "grad_failed": failed,
        "grad_missing": missing,
        "per_gradient": diffs,
        "baseline_encoder_backward": encoder_backward,
        "dtype": str(dtype).removeprefix("torch."),
        "batch": int(data["image"].shape[0]),
        "tolerance": tolerance,
        "ok": summary["loss_rel_diff"] <= tolerance and matching_equal and not missing and not failed,
    }


# ------------------------------------------------------------------------------------------------
# Memory (child processes)
# ------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _prepare_net(
    kind: str, model: GazeNet, baseline: nn.Module, opts: BenchOptions
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """The module to train for ``kind``, the one to optimise, and the step's keyword arguments."""
    if kind == "baseline":
        return baseline, baseline, {}
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    net: nn.Module = torch.compile(model) if opts.compile else model
    return net, model, {"channels_last": opts.channels_last}


def memory_child(kind: str, options: dict[str, Any], threads: int) -> dict[str, float]:
    """Peak memory of ``kind``'s training step, measured in this (fresh) process.

    Builds both formulations (so both children hold the same weights), keeps ``kind``'s, and runs
    two training steps.

    Returns:
        ``peak_mb`` (peak RSS of the process, or CUDA ``max_memory_allocated``), ``before_mb``
        (RSS, or allocated CUDA memory, just before the steps), ``step_mb`` (their difference).
    """
    torch.set_num_threads(threads)
    opts = BenchOptions(**options)
    device = resolve_device(opts.device)
    model, baseline = build_pair(opts, device)
    if kind == "baseline":
        del model
        model = None  # type: ignore[assignment]
    else:
        del baseline
        baseline = None  # type: ignore[assignment]
    gc.collect()
    net, trained, kwargs = _prepare_net(kind, model, baseline, opts)
    optimizer = paper_optimizer(trained)
    loss_fn = GazeLoss(LossConfig()).to(device)
    batch = make_batch(opts.batch, opts.image_size, seed=opts.seed, device=device)
    amp = autocast_factory(device, opts.amp, cpu=True) if kind == "dermogaze" else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if kind == "dermogaze" and opts.amp == "fp16" else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _rss_bytes()
    for _ in range(2):
        train_step(net, loss_fn, optimizer, batch, device, autocast=amp, scaler=scaler, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _peak_rss_bytes()
    mb = 1024.0**2
    return {"peak_mb": peak / mb, "before_mb": before / mb, "step_mb": (peak - before) / mb}


def measure_memory(kind: str, opts: BenchOptions) -> dict[str, float]:
    """Run :func:`memory_child` in a fresh spawned process and return its figures."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(memory_child, kind, dataclasses.asdict(opts), torch.get_num_threads()).result()


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def explain_latency(model: GazeNet, size: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds of :func:`dermogaze.explain.record.explain_image` on one ``size``-pixel image, ``repeats`` times.

    The first (warm-up) call is not counted; the model is left in train mode.
    """
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, size, size, generator=g).to(device)
    original = np.zeros((size, size, 3), dtype=np.uint8)
    samples = []
    for i in range(repeats + 1):
        t = timed(lambda: explain_image(model, image, original, image_id="bench"), device)
        if i:
            samples.append(t)
    model.train()
    return samples


def run_benchmark(opts: BenchOptions, *, progress: bool = True) -> dict[str, Any]:
    """Measure everything listed in the module docstring.

    Returns:
        A JSON-ready dict (see :func:`format_report` for the fields).

    Raises:
        DermogazeError: invalid options, or CUDA asked for but absent.
    """
    _check_options(opts)
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    matmul_n = opts.matmul_size or (8192 if device.type == "cuda" else 2048)
    results: dict[str, Any] = {
        "config": {
            **dataclasses.asdict(opts),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "threads": threads,
            "torch": torch.__version__,
            "matmul_size": matmul_n,
        },
        "load_average_start": _load_average(),
    }

    memory: dict[str, Any] = {"kind": "cuda_max_memory_allocated" if device.type == "cuda" else "rss"}
    if opts.memory:  # first, while this process holds nothing big
        for kind in FORMULATIONS:
            logger.info("measuring the peak memory of the %s training step in a child process", kind)
            memory[kind] = measure_memory(kind, opts)
        memory["ratio"] = memory["dermogaze"]["peak_mb"] / memory["baseline"]["peak_mb"]
        memory["step_ratio"] = memory["dermogaze"]["step_mb"] / max(memory["baseline"]["step_mb"], 1e-9)
    results["memory"] = memory

    model, baseline = build_pair(opts, device)
    loss_fn = GazeLoss(LossConfig()).to(device)
    batch = make_batch(opts.batch, opts.image_size, seed=opts.seed, device=device)
    optimizers = {"baseline": paper_optimizer(baseline), "dermogaze": paper_optimizer(model)}

    against_baseline = opts.reference == "baseline"  # the CPU targets are set against the baseline
    if against_baseline:
        logger.info("agreement: loss and gradients of both formulations in float64 on copies")
        agreement = compare_formulations(model, baseline, loss_fn, batch, opts.tolerance, size=opts.agreement_batch)
    else:  # the reference is the model itself: the baseline's agreement is not this run's question
        agreement = {"ok": None}
    logger.info("FLOP count: one float32 step of each formulation")
    flops, agreement["float32"] = first_step(model, baseline, loss_fn, batch)
    for kind in FORMULATIONS:
        optimizers[kind].step()  # the counted step is a training step (both models move on)
    results["agreement"] = agreement
    results["flops_per_image"] = {
        k: {kk: vv / opts.batch for kk, vv in v.items()} for k, v in flops.items()
    }

    nets: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for kind in FORMULATIONS:
        net, _, kwargs = _prepare_net(kind, model, baseline, opts)
        if kind == "dermogaze":
            kwargs["autocast"] = autocast_factory(device, opts.amp, cpu=True)
            kwargs["scaler"] = torch.amp.GradScaler(device.type) if opts.amp == "fp16" else None
        nets[kind] = (net, kwargs)

    a = torch.randn(matmul_n, matmul_n, device=device)
    b = torch.randn(matmul_n, matmul_n, device=device)
    matmul_flops = 2.0 * matmul_n**3
    mm_samples = [matmul_seconds(a, b) for _ in range(4)][1:]  # first call warms up
    times: dict[str, list[float]] = {k: [] for k in FORMULATIONS}
    rounds = opts.warmup + opts.repeats
    bar = tqdm(total=rounds, desc="bench (alternating steps)", disable=not progress, dynamic_ncols=True)
    for r in range(rounds):
        for kind in FORMULATIONS:
            net, kwargs = nets[kind]
            t = timed(
                lambda net=net, kind=kind, kwargs=kwargs: train_step(
                    net, loss_fn, optimizers[kind], batch, device, **kwargs
                ),
                device,
            )
            if r >= opts.warmup:
                times[kind].append(t)
        if r >= opts.warmup:
            mm_samples += [matmul_seconds(a, b) for _ in range(2)]
        bar.set_postfix({k: f"{_median(v):.3g}s" for k, v in times.items() if v}, refresh=False)
        bar.update()
    bar.close()
    del a, b

    step = {k: _median(v) for k, v in times.items()}
    mm_gflops = [matmul_flops / s / 1e9 for s in mm_samples]
    matmul = _median(mm_gflops)
    per_step = {k: results["flops_per_image"][k]["forward_backward"] * opts.batch for k in FORMULATIONS}
    achieved = {k: per_step[k] / step[k] / 1e9 for k in FORMULATIONS}
    results["step_time_s"] = {k: {"median": step[k], "samples": times[k]} for k in FORMULATIONS}
    results["speedup"] = step["baseline"] / step["dermogaze"]
    speedup_target = TARGET_SPEEDUP if against_baseline else TARGET_GPU_SPEEDUP
    results["speedup_target"] = speedup_target
    results["achieved_gflops"] = achieved
    results["matmul"] = {"n": matmul_n, "gflops": matmul, "samples_gflops": mm_gflops}
    results["utilisation"] = {
        "dermogaze_in_baseline_flops": per_step["baseline"] / step["dermogaze"] / 1e9 / matmul,
        "dermogaze_own_flops": achieved["dermogaze"] / matmul,
        "baseline": achieved["baseline"] / matmul,
    }

    logger.info("single-image explanation latency at %d px", opts.explain_size)
    explain = explain_latency(model, opts.explain_size, opts.explain_repeats, device)
    results["explain"] = {"image_size": opts.explain_size, "median_s": _median(explain), "samples": explain}
    results["load_average_end"] = _load_average()

    utilisation = results["utilisation"]["dermogaze_in_baseline_flops"]
    targets: dict[str, bool | None] = {
        "speedup": results["speedup"] >= speedup_target,
        "memory": memory["ratio"] <= TARGET_MEMORY_RATIO if "ratio" in memory and against_baseline else None,
        "utilisation": utilisation >= TARGET_UTILISATION if against_baseline else None,
        "agreement": agreement["ok"],
    }
    results["targets"] = targets
    return results


def _check_options(opts: BenchOptions) -> None:
    for name in ("image_size", "batch", "steps", "repeats", "explain_size", "explain_repeats", "agreement_batch"):
        value = getattr(opts, name)
        if name == "agreement_batch" and value is None:
            continue
        if not isinstance(value, int) or value < 1:
            raise DermogazeError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if opts.warmup < 0:
        raise DermogazeError(f"--warmup must be >= 0, got {opts.warmup}")
    if opts.image_size % 32 or opts.explain_size % 32:
        raise DermogazeError("--image-size and --explain-size must be multiples of 32 (five VGG pools)")
    if not opts.width > 0:
        raise DermogazeError(f"--width must be positive, got {opts.width}")
    if opts.amp not in ("off", "bf16", "fp16"):
        raise DermogazeError(f"unknown --amp {opts.amp!r}: expected off, bf16 or fp16")
    if opts.reference not in REFERENCES:
        raise DermogazeError(f"unknown --reference {opts.reference!r}: expected {' or '.join(REFERENCES)}")


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def _g(x: float) -> str:
    return f"{x / 1e9:.2f} G"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def format_report(r: Mapping[str, Any]) -> str:
    """The human-readable report of :func:`run_benchmark`'s result (every figure)."""
    c = r["config"]
    precision = "fp32" if c["amp"] == "off" else f"amp {c['amp']}"
    extras = [x for x, on in (("channels_last", c["channels_last"]), ("compile", c["compile"])) if on]
    against_baseline = c.get("reference", "baseline") == "baseline"
    ref = "baseline" if against_baseline else "fp32 eager"
    lines = [
        f"dermogaze bench: {c['variant']}, {c['image_size']} px, batch {c['batch']}, T={c['steps']}, "
        f"width {c['width']:g}, {c['device']} ({c['device_name']}, {c['threads']} threads), torch {c['torch']}",
        f"  dermogaze step: {precision}{', ' + ', '.join(extras) if extras else ''}, encoder frozen (no backward); "
        + (
            "baseline: eager fp32, encoder backward computed (lr 0)"
            if against_baseline
            else "reference: dermogaze's own step, eager fp32, contiguous"
        ),
        f"  load average at start {r['load_average_start']}, at end {r['load_average_end']}",
        "",
        f"{'':34}{ref:>14}{'dermogaze':>14}",
    ]
    fl = r["flops_per_image"]
    lines.append(
        f"{'FLOPs per image, forward':34}{_g(fl['baseline']['forward']):>14}{_g(fl['dermogaze']['forward']):>14}"
    )
    lines.append(
        f"{'FLOPs per image, forward+backward':34}{_g(fl['baseline']['forward_backward']):>14}"
        f"{_g(fl['dermogaze']['forward_backward']):>14}"
    )
    st = r["step_time_s"]
    lines.append(f"{'median step time (s)':34}{st['baseline']['median']:>14.3f}{st['dermogaze']['median']:>14.3f}")
    n = len(st["baseline"]["samples"])
    ach = r["achieved_gflops"]
    lines.append(f"{'achieved GFLOP/s (own FLOPs)':34}{ach['baseline']:>14.1f}{ach['dermogaze']:>14.1f}")
    mem = r["memory"]
    if "ratio" in mem:
        label = "peak RSS (MB)" if mem["kind"] == "rss" else "peak max_memory_allocated (MB)"
        lines.append(f"{label:34}{mem['baseline']['peak_mb']:>14.0f}{mem['dermogaze']['peak_mb']:>14.0f}")
        lines.append(
            f"{'  rise during 2 steps (MB)':34}{mem['baseline']['step_mb']:>14.0f}{mem['dermogaze']['step_mb']:>14.0f}"
        )
    lines.append("")
    lines.append(
        f"step times in run order (s): {ref} " + " ".join(f"{t:.3g}" for t in st["baseline"]["samples"])
        + "; dermogaze " + " ".join(f"{t:.3g}" for t in st["dermogaze"]["samples"])
    )
    t = r["targets"]
    lines.append(
        f"speed-up ({ref} time / dermogaze time): {r['speedup']:.2f}x over {n} alternating steps "
        f"[{'' if against_baseline else 'GPU '}target >= {r.get('speedup_target', TARGET_SPEEDUP):g}x: "
        f"{_met(t['speedup'])}]"
    )
    mm = r["matmul"]
    lines.append(
        f"fp32 matmul ({mm['n']}x{mm['n']} torch.mm): {mm['gflops']:.1f} GFLOP/s "
        f"(median of {len(mm['samples_gflops'])}, measured between the steps)"
    )
    u = r["utilisation"]
    if against_baseline:
        lines.append(
            f"utilisation, dermogaze in the baseline's FLOPs: {u['dermogaze_in_baseline_flops']:.2f} of matmul "
            f"[target >= {TARGET_UTILISATION}: {_met(t['utilisation'])}]; in its own FLOPs: "
            f"{u['dermogaze_own_flops']:.2f}; baseline: {u['baseline']:.2f}"
        )
    else:
        lines.append(f"utilisation of fp32 matmul: dermogaze {u['dermogaze_own_flops']:.2f}, {ref} {u['baseline']:.2f}")
    if "ratio" in mem:
        target = f" [target <= {TARGET_MEMORY_RATIO}: {_met(t['memory'])}]" if against_baseline else ""
        lines.append(
            f"peak memory, dermogaze / {ref}: {mem['ratio']:.2f}{target}; "
            f"rise during the steps: {mem['step_ratio']:.2f}"
        )
    else:
        lines.append("peak memory: not measured (--no-memory)")
    ag = r["agreement"]
    if "dtype" not in ag:
        lines.append("agreement with the baseline: not checked (--reference fp32 times the model against itself)")
    else:
        lines.append(
            f"agreement ({ag['dtype']} copies, same weights, {ag['batch']}/{c['batch']} samples of the batch): loss "
            f"{ag['loss']['baseline']:.10f} vs {ag['loss']['dermogaze']:.10f} (rel. diff {ag['loss_rel_diff']:.1e}); "
            f"matching {'equal' if ag['matching_equal'] else 'DIFFERENT'}; gradients max rel. diff "
            f"{ag['grad_max_rel_diff']:.1e} ({ag['grad_worst']})"
            + (f", missing {', '.join(ag['grad_missing'])}" if ag["grad_missing"] else "")
            + (f", beyond tolerance: {', '.join(ag['grad_failed'])}" if ag["grad_failed"] else "")
            + f"; baseline computed the encoder backward: {'yes' if ag['baseline_encoder_backward'] else 'no'}; "
            f"tolerance {ag['tolerance']:g}: {'OK' if ag['ok'] else 'FAILED'}"
        )
    f32 = ag.get("float32")
    if f32:
        lines.append(
            f"  float32 first step, for information (rounding, not a check): loss rel. diff "
            f"{f32['loss_rel_diff']:.1e}; gradients max rel. diff {f32['grad_max_rel_diff']:.1e} ({f32['grad_worst']})"
        )
    ex = r["explain"]
    lines.append(
        f"explain latency (1 image, {ex['image_size']} px, forward + gazes + record): median "
        f"{ex['median_s'] * 1e3:.1f} ms over {len(ex['samples'])}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the benchmark and print its report.

    Raises:
        DermogazeError: invalid options, or CUDA asked for but absent (``dermogaze bench`` prints it
            as one line; run as a script, the ``__main__`` block does).
    """
    args = build_parser().parse_args(argv)
    opts = BenchOptions(
        variant=args.model,
        image_size=args.image_size,
        batch=args.batch,
        steps=args.steps,
        width=args.width,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        compile=args.compile,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        tolerance=args.tolerance,
        agreement_batch=args.agreement_batch,
        matmul_size=args.matmul_size,
        explain_size=args.explain_size,
        explain_repeats=args.explain_repeats,
        memory=not args.no_memory,
        threads=args.threads,
        reference=args.reference,
    )
    results = run_benchmark(opts, progress=not args.no_progress)
    print(format_report(results))
    if args.json:
        path = write_json(results, args.json)
        print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        sys.exit(main())
    except DermogazeError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(2)
