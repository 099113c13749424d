"""``dermogaze bench``: dermogaze's training step against the straightforward baseline (issue 6).

One process runs, alternating (baseline step, dermogaze step, fp32 matrix multiply, baseline
step, ...), the training step of both formulations of the gaze network on the same synthetic batch
(forward, :class:`~dermogaze.losses.GazeLoss`, backward, Adam step with the paper's per-module
learning rates) and reports:

* model FLOPs per image of each formulation, forward and forward+backward
  (``torch.utils.flop_counter.FlopCounterMode``);
* the median step time of each, their ratio (the speed-up), the achieved GFLOP/s;
* the machine's fp32 matrix-multiply throughput (a square ``torch.mm``, measured between the
  steps, so under the same load) and the utilisation it implies: dermogaze counted in the
  *baseline's* FLOPs per step / dermogaze's step time / matmul GFLOP/s (issue 6's definition);
* the peak memory of each training step: each formulation runs in a fresh child process
  (``multiprocessing`` spawn), whose peak resident set size (``ru_maxrss``) is that formulation's
  alone (a process's ``ru_maxrss`` never goes down, so one process cannot measure two peaks);
  on CUDA, ``torch.cuda.max_memory_allocated`` in that child;
* the agreement of the two formulations on the same weights and batch: loss, matching, every
  gradient (see :func:`compare_formulations`);
* the latency of a single-image explanation (model forward + gaze extraction + JSON record,
  :func:`dermogaze.explain.explain_image`).

The baseline (``benchmarks/baseline.py``) is a measuring stick kept in the repository, not part of
the installed package: :func:`load_baseline_module` loads it by path from the checkout this
package is installed from (``pip install -e .``, as ``make`` does) and says so clearly otherwise.

Decisions where the issue is silent:

* The two formulations start from the same random weights (``weights=None``: no download) with
  the encoder frozen as the paper's learning rate of 0 asks. ``V_a`` is drawn from
  ``N(0, 1/(9C))`` instead of zero, so the attention is not uniform and every attention weight
  gets a non-zero gradient to compare (timing does not depend on the values).
* The synthetic batch: normalised-looking Gaussian images, one ellipse per present structure
  (each present with probability 1/2), labels alternating benign/melanoma.
* The agreement check and the FLOP count run in float32 eager on the first step (on the same
  batch as the timed steps); a gradient agrees within ``max(--tolerance, 4 × the baseline's own
  float32 spread)`` (:func:`compare_formulations`). ``--amp``, ``--channels-last`` and
  ``--compile`` apply to dermogaze's timed steps and its memory measurement (the explanation
  latency runs the same model, eager, float32); the baseline always runs plain eager float32,
  contiguous, as the issue defines it.
* "forward" FLOPs are the network's forward pass; "forward+backward" adds the backward pass of the
  loss and the network (the loss's own forward and the optimiser are a fraction of a percent).
* The memory children build both formulations (so both hold the same weights and libraries),
  keep one, run two training steps (the second holds Adam's state as well) and report the peak
  resident set size of the whole process (Python, PyTorch, weights included) and its rise during
  the steps; the ratio of the peaks is the headline figure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import importlib.util
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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from .config import LossConfig, TrainConfig
from .errors import DermogazeError
from .losses import GazeLoss
from .models import GazeNet, build_model
from .models.output import GazeOutput
from .structures import NUM_STRUCTURES

logger = logging.getLogger(__name__)

#: Module name under which ``benchmarks/baseline.py`` is loaded.
BASELINE_MODULE = "dermogaze_benchmarks_baseline"
FORMULATIONS = ("baseline", "dermogaze")

#: Targets of issue 6 (CPU, float32).
TARGET_SPEEDUP = 1.3
TARGET_MEMORY_RATIO = 0.6
TARGET_UTILISATION = 0.8


@dataclass
class BenchOptions:
    """What ``dermogaze bench`` measures (defaults: the paper's training configuration)."""

    variant: str = "deco_gap_3"
    image_size: int = 224
    batch: int = 8
    steps: int = 5  # T
    width: float = 1.0
    device: str = "cpu"  # "auto" | "cpu" | "cuda"
    amp: str = "off"  # "off" | "bf16" | "fp16"
    channels_last: bool = False
    compile: bool = False
    repeats: int = 3  # timed steps of each formulation
    warmup: int = 1  # untimed steps of each formulation after the agreement step
    seed: int = 0
    tolerance: float = 1e-4  # relative, for the agreement
    matmul_size: int | None = None  # default: 2048 on CPU, 8192 on CUDA
    explain_size: int = 224
    explain_repeats: int = 10
    memory: bool = True  # measure peak memory in child processes
    threads: int | None = None  # torch.set_num_threads; None = PyTorch's default (the cores)


# ------------------------------------------------------------------------------------------------
# Loading the baseline
# ------------------------------------------------------------------------------------------------
def repository_root() -> Path:
    """The checkout this package is imported from (``src/dermogaze/`` → the repository root)."""
    return Path(__file__).resolve().parents[2]


def load_baseline_module() -> ModuleType:
    """Import ``benchmarks/baseline.py`` of the repository checkout by path.

    Raises:
        DermogazeError: the package is not imported from a repository checkout.
    """
    if BASELINE_MODULE in sys.modules:
        return sys.modules[BASELINE_MODULE]
    path = repository_root() / "benchmarks" / "baseline.py"
    if not path.is_file():
        raise DermogazeError(
            f"dermogaze bench compares against the baseline formulation {path}, which is part of the repository "
            "checkout, not of the installed package: run it from a checkout installed with 'pip install -e .' "
            "(as 'make bench' does)"
        )
    spec = importlib.util.spec_from_file_location(BASELINE_MODULE, path)
    if spec is None or spec.loader is None:
        raise DermogazeError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[BASELINE_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[BASELINE_MODULE]
        raise
    return module


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``auto``/``cpu``/``cuda`` → a device; a clear error when CUDA is asked for but absent."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DermogazeError(f"--device {name} requested but no CUDA GPU is visible (use --device cpu)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DermogazeError(f"unknown device {name!r}: expected auto, cpu or cuda")


def autocast_context(device: torch.device, amp: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A zero-argument factory of the autocast context for ``amp`` (``off``, ``bf16``, ``fp16``).

    Unlike training, the benchmark also allows reduced precision on the CPU (``bf16`` runs on CPUs
    with AVX-512 BF16; ``fp16`` is mostly slow there), to measure it.
    """
    if amp == "off":
        return contextlib.nullcontext
    if amp not in ("bf16", "fp16"):
        raise DermogazeError(f"unknown --amp {amp!r}: expected off, bf16 or fp16")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


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
    """dermogaze's model (encoder frozen) and the baseline holding the same weights.

    Returns:
        ``(model, baseline)``, both in train mode on ``device``, float32, contiguous.
    """
    baseline_mod = load_baseline_module()
    torch.manual_seed(opts.seed)
    with _quiet("dermogaze.models.gazenet"):
        model = build_model(opts.variant, steps=opts.steps, image_size=opts.image_size, width=opts.width)
    if model.attention is None:
        raise DermogazeError(f"model {opts.variant} has no attentive ConvLSTM: nothing to compare with the baseline")
    model.freeze_encoder(True)  # the paper's encoder learning rate of 0
    v_a = model.attention.v_a.weight
    nn.init.normal_(v_a, 0.0, 1.0 / math.sqrt(v_a[0].numel()))  # non-uniform attention (module docstring)
    model.to(device).train()
    baseline = baseline_mod.Baseline.from_gazenet(model).to(device).train()
    return model, baseline


def paper_optimizer(net: nn.Module, train: TrainConfig | None = None) -> torch.optim.Adam:
    """Adam with the paper's per-module learning rates (SPEC §5) over ``net.parameter_groups()``.

    The encoder group is included with its learning rate (0 in the paper) when it holds trainable
    parameters (the baseline's): the optimiser then leaves those weights where they are, but
    autograd has computed their gradients. dermogaze's frozen encoder has no such group.
    """
    t = train or TrainConfig()
    lrs = {"encoder": t.lr_encoder, "attention": t.lr_attention, "branches": t.lr_branches}
    groups = [
        {"params": params, "lr": lrs[name], "name": name} for name, params in net.parameter_groups().items() if params
    ]
    return torch.optim.Adam(groups, betas=tuple(t.betas), weight_decay=t.weight_decay)


def _float_output(out: GazeOutput) -> GazeOutput:
    """Model outputs in float32 (the loss never runs in reduced precision)."""
    fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
    return dataclasses.replace(out, **{k: v.float() for k, v in fields.items() if v is not None})


def train_step(
    net: nn.Module,
    loss_fn: GazeLoss,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Any],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
) -> float:
    """One training step: forward, :class:`GazeLoss`, backward, optimiser step. Returns the loss."""
    images = batch["image"]
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        out = net(images)
    loss = loss_fn(_float_output(out), batch)["loss"]
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return float(loss.detach())


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


#: A gradient agrees when its difference is within this many times the baseline's own float32 spread
#: (two float32 summation orders give differences of the same size, not of equal size).
SPREAD_FACTOR = 4.0

#: Gradients smaller than this fraction of the whole gradient's norm are compared against it instead
#: of their own norm (analytically zero gradients, e.g. of a conv bias followed by a batch norm in
#: training mode, are pure rounding noise: their own relative difference means nothing).
GRAD_FLOOR = 0.05


def _relative(a: Tensor, b: Tensor, floor: float = 0.0) -> float:
    """``||a - b|| / max(||a||, ||b||, floor)`` (0 when all three are zero)."""
    a, b = a.detach().double(), b.detach().double()
    scale = max(float(a.norm()), float(b.norm()), floor)
    return 0.0 if scale == 0.0 else float((a - b).norm()) / scale


def _grads_of(net: nn.Module, loss_fn: GazeLoss, batch: Mapping[str, Any], channels_last: bool = False) -> dict:
    """Forward, loss and backward of ``net`` (grads left in ``.grad``); FLOPs, loss and matching."""
    images = batch["image"]
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    net.zero_grad(set_to_none=True)
    fwd, out = count_flops(lambda: net(images))
    terms = loss_fn(out, batch)
    bwd, _ = count_flops(lambda: terms["loss"].backward())
    return {"forward": float(fwd), "forward_backward": float(fwd + bwd), "loss": float(terms["loss"].detach()),
            "matching": terms["matching"]}  # fmt: skip


def compare_formulations(
    model: GazeNet,
    baseline: nn.Module,
    loss_fn: GazeLoss,
    batch: Mapping[str, Any],
    tolerance: float = 1e-4,
    spread: bool = True,
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Run forward, loss and backward of both formulations on the same batch; compare and count FLOPs.

    Each gradient's difference is measured relative to its norm, floored at :data:`GRAD_FLOOR` times
    the norm of the whole gradient. At the paper's size, float32 gradients of this network are
    ill-conditioned (sums over millions of terms that nearly cancel, e.g. the weights of a
    convolution before a training-mode batch norm): the *baseline against itself*, computed once
    more in channels-last layout (another summation order), already differs by about 1e-3. With
    ``spread=True`` that reference spread is measured per gradient, and a gradient agrees when its
    difference is within ``max(tolerance, SPREAD_FACTOR * spread)`` (two float32 summation orders
    differ by amounts of the same size; measured ratios stay below 1.5).

    The gradients are left in ``.grad`` (an optimiser step may follow). The parameters after an Adam
    step are not compared: Adam's first step is ``lr·g/(|g|+ε)``, which turns the rounding noise of
    an analytically zero gradient into a full-size step of arbitrary sign.

    Args:
        model: dermogaze's network (any encoder freezing); same weights as ``baseline``.
        baseline: the baseline built from ``model`` (:meth:`Baseline.from_gazenet`).
        loss_fn: the loss of both.
        batch: from :func:`make_batch`.
        tolerance: relative tolerance of every comparison.
        spread: also measure the baseline's own float32 spread (one more forward and backward).

    Returns:
        ``(agreement, flops)``. ``agreement``: ``loss`` ``{baseline, dermogaze}``, ``loss_rel_diff``,
        ``matching_equal``, ``grad_max_rel_diff`` and ``grad_worst`` (parameter name),
        ``grad_failed`` (names beyond ``max(tolerance, SPREAD_FACTOR * spread)``), ``grad_missing``,
        ``reference_spread_max`` and ``reference_spread_worst`` (or None), ``per_gradient``
        (``{name: {rel_diff, spread}}``), ``baseline_encoder_backward``
        (the baseline computed encoder gradients), ``tolerance``, ``ok``.
        ``flops``: per formulation, ``forward`` and ``forward_backward`` FLOPs for the whole batch.
    """
    twin = copy.deepcopy(baseline).to(memory_format=torch.channels_last) if spread else None
    runs = {"baseline": _grads_of(baseline, loss_fn, batch), "dermogaze": _grads_of(model, loss_fn, batch)}
    flops = {k: {"forward": v["forward"], "forward_backward": v["forward_backward"]} for k, v in runs.items()}
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    base_grads = baseline.gazenet_tensors(grad=True)
    total = math.sqrt(sum(float(base_grads[n].double().norm()) ** 2 for n in trained if base_grads.get(n) is not None))
    spreads: dict[str, float] = {}
    if twin is not None:
        _grads_of(twin, loss_fn, batch, channels_last=True)
        twin_grads = twin.gazenet_tensors(grad=True)
        spreads = {n: _relative(twin_grads[n], base_grads[n], GRAD_FLOOR * total) for n in trained
                   if twin_grads.get(n) is not None and base_grads.get(n) is not None}  # fmt: skip
        del twin, twin_grads
    model_grads = dict(model.named_parameters())
    worst, worst_name, missing, failed = 0.0, None, [], []
    per_gradient: dict[str, dict[str, float | None]] = {}
    for name in trained:
        g_model, g_base = model_grads[name].grad, base_grads.get(name)
        if g_model is None or g_base is None:
            missing.append(name)
            continue
        rel = _relative(g_model, g_base, GRAD_FLOOR * total)
        per_gradient[name] = {"rel_diff": rel, "spread": spreads.get(name)}
        if rel > max(tolerance, SPREAD_FACTOR * spreads.get(name, 0.0)):
            failed.append(name)
        if rel > worst or worst_name is None:
            worst, worst_name = rel, name
    encoder_backward = all(p.grad is not None for p in baseline.encoder.parameters() if p.requires_grad) and any(
        p.requires_grad for p in baseline.encoder.parameters()
    )
    matching_equal = all(
        np.array_equal(tb, tm) and np.array_equal(sb, sm)
        for (tb, sb), (tm, sm) in zip(runs["baseline"]["matching"], runs["dermogaze"]["matching"], strict=True)
    )
    losses = {k: runs[k]["loss"] for k in FORMULATIONS}
    loss_rel = abs(losses["baseline"] - losses["dermogaze"]) / max(abs(losses["baseline"]), 1e-30)
    spread_worst = max(spreads, key=spreads.get) if spreads else None
    agreement = {
        "loss": losses,
        "loss_rel_diff": loss_rel,
        "matching_equal": matching_equal,
        "grad_max_rel_diff": worst,
        "grad_worst": worst_name,
        "grad_failed": failed,
        "grad_missing": missing,
        "reference_spread_max": spreads[spread_worst] if spread_worst else None,
        "reference_spread_worst": spread_worst,
        "per_gradient": per_gradient,
        "baseline_encoder_backward": encoder_backward,
        "tolerance": tolerance,
        "ok": loss_rel <= tolerance and matching_equal and not missing and not failed,
    }
    return agreement, flops


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
    amp = autocast_context(device, opts.amp) if kind == "dermogaze" else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if kind == "dermogaze" and opts.amp == "fp16" else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        before = _rss_bytes()
    for _ in range(2):
        train_step(net, loss_fn, optimizer, batch, autocast=amp, scaler=scaler, **kwargs)
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
    """Seconds of :func:`dermogaze.explain.explain_image` on one ``size``-pixel image, ``repeats`` times.

    The first (warm-up) call is not counted; the model is left in train mode.
    """
    from .explain import explain_image

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
        DermogazeError: invalid options, CUDA asked for but absent, no repository checkout.
    """
    _check_options(opts)
    device = resolve_device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    load_baseline_module()  # fail early, before any measurement
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

    logger.info("agreement and FLOP count: one float32 step of each formulation")
    agreement, flops = compare_formulations(model, baseline, loss_fn, batch, opts.tolerance)
    for kind in FORMULATIONS:
        optimizers[kind].step()  # the agreement step is a training step (both models move on)
    results["agreement"] = agreement
    results["flops_per_image"] = {
        k: {kk: vv / opts.batch for kk, vv in v.items()} for k, v in flops.items()
    }

    nets: dict[str, tuple[nn.Module, dict[str, Any]]] = {}
    for kind in FORMULATIONS:
        net, _, kwargs = _prepare_net(kind, model, baseline, opts)
        if kind == "dermogaze":
            kwargs["autocast"] = autocast_context(device, opts.amp)
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
            t = timed(lambda net=net, kind=kind, kwargs=kwargs: train_step(
                net, loss_fn, optimizers[kind], batch, **kwargs), device)  # fmt: skip
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

    targets: dict[str, bool | None] = {
        "speedup": results["speedup"] >= TARGET_SPEEDUP,
        "memory": memory["ratio"] <= TARGET_MEMORY_RATIO if "ratio" in memory else None,
        "utilisation": results["utilisation"]["dermogaze_in_baseline_flops"] >= TARGET_UTILISATION,
        "agreement": agreement["ok"],
    }
    results["targets"] = targets
    return results


def _check_options(opts: BenchOptions) -> None:
    for name in ("image_size", "batch", "steps", "repeats", "explain_size", "explain_repeats"):
        value = getattr(opts, name)
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
    lines = [
        f"dermogaze bench: {c['variant']}, {c['image_size']} px, batch {c['batch']}, T={c['steps']}, "
        f"width {c['width']:g}, {c['device']} ({c['device_name']}, {c['threads']} threads), torch {c['torch']}",
        f"  dermogaze step: {precision}{', ' + ', '.join(extras) if extras else ''}, encoder frozen (no backward); "
        "baseline: eager fp32, encoder backward computed (lr 0)",
        f"  load average at start {r['load_average_start']}, at end {r['load_average_end']}",
        "",
        f"{'':34}{'baseline':>14}{'dermogaze':>14}",
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
        "step times in run order (s): baseline " + " ".join(f"{t:.3g}" for t in st["baseline"]["samples"])
        + "; dermogaze " + " ".join(f"{t:.3g}" for t in st["dermogaze"]["samples"])
    )
    t = r["targets"]
    lines.append(
        f"speed-up (baseline time / dermogaze time): {r['speedup']:.2f}x over {n} alternating steps "
        f"[target >= {TARGET_SPEEDUP}x: {_met(t['speedup'])}]"
    )
    mm = r["matmul"]
    lines.append(
        f"fp32 matmul ({mm['n']}x{mm['n']} torch.mm): {mm['gflops']:.1f} GFLOP/s "
        f"(median of {len(mm['samples_gflops'])}, measured between the steps)"
    )
    u = r["utilisation"]
    lines.append(
        f"utilisation, dermogaze in the baseline's FLOPs: {u['dermogaze_in_baseline_flops']:.2f} of matmul "
        f"[target >= {TARGET_UTILISATION}: {_met(t['utilisation'])}]; in its own FLOPs: "
        f"{u['dermogaze_own_flops']:.2f}; baseline: {u['baseline']:.2f}"
    )
    if "ratio" in mem:
        lines.append(
            f"peak memory, dermogaze / baseline: {mem['ratio']:.2f} [target <= {TARGET_MEMORY_RATIO}: "
            f"{_met(t['memory'])}]; rise during the steps: {mem['step_ratio']:.2f}"
        )
    else:
        lines.append("peak memory: not measured (--no-memory)")
    ag = r["agreement"]
    lines.append(
        f"agreement (same weights and batch, fp32): loss {ag['loss']['baseline']:.6f} vs {ag['loss']['dermogaze']:.6f} "
        f"(rel. diff {ag['loss_rel_diff']:.1e}); matching {'equal' if ag['matching_equal'] else 'DIFFERENT'}; "
        f"gradients max rel. diff {ag['grad_max_rel_diff']:.1e} ({ag['grad_worst']})"
        + (
            f", the baseline against itself in channels_last: {ag['reference_spread_max']:.1e} "
            f"({ag['reference_spread_worst']})"
            if ag["reference_spread_max"] is not None
            else ""
        )
        + (f", missing {', '.join(ag['grad_missing'])}" if ag["grad_missing"] else "")
        + (f", beyond max(tolerance, {SPREAD_FACTOR:g} x spread): {', '.join(ag['grad_failed'])}"
           if ag["grad_failed"] else "")
        + f"; baseline computed the encoder backward: {'yes' if ag['baseline_encoder_backward'] else 'no'}; "
        f"tolerance {ag['tolerance']:g}: {'OK' if ag['ok'] else 'FAILED'}"
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
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    from .metrics import write_json

    opts = BenchOptions(
        variant=args.model, image_size=args.image_size, batch=args.batch, steps=args.steps, width=args.width,
        device=args.device, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
        repeats=args.repeats, warmup=args.warmup, seed=args.seed, tolerance=args.tolerance,
        matmul_size=args.matmul_size, explain_size=args.explain_size, explain_repeats=args.explain_repeats,
        memory=not args.no_memory, threads=args.threads,
    )  # fmt: skip
    results = run_benchmark(opts, progress=not args.no_progress)
    print(format_report(results))
    if args.json:
        path = write_json(results, args.json)
        print(f"figures written to {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``dermogaze bench``."""
    d = BenchOptions()
    p = subparsers.add_parser(
        "bench",
        help="time and measure dermogaze's training step against the straightforward baseline",
        description=(
            "Run, alternating in one process, the training step of the straightforward baseline "
            "(benchmarks/baseline.py) and of dermogaze on the same synthetic batch, and print FLOPs per image, "
            "median step times and their ratio, achieved GFLOP/s against the machine's fp32 matmul throughput, "
            "peak memory of each (measured in child processes), their agreement (loss and gradients on the same "
            "weights), and the latency of a single-image explanation. Defaults: the paper's configuration."
        ),
    )
    p.add_argument("--model", default=d.variant, help=f"variant with an attentive ConvLSTM (default: {d.variant})")
    p.add_argument("--image-size", type=_positive_int, default=d.image_size, help="input size, multiple of 32 (224)")
    p.add_argument("--batch", type=_positive_int, default=d.batch, help="batch size (8)")
    p.add_argument("--steps", type=_positive_int, default=d.steps, help="T, number of gazes (5)")
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier (1.0 = the paper)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device, help="device (default: cpu)")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default=d.amp,
                   help="mixed precision for dermogaze's step (default: off)")
    p.add_argument("--channels-last", action="store_true", help="dermogaze's step in channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile dermogaze's model")
    p.add_argument("--repeats", type=_positive_int, default=d.repeats, help="timed steps of each formulation (3)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps of each before timing (1)")
    p.add_argument("--seed", type=int, default=d.seed, help="weights and batch seed (0)")
    p.add_argument("--tolerance", type=float, default=d.tolerance, help="relative tolerance of the agreement (1e-4)")
    p.add_argument("--matmul-size", type=_positive_int, default=None,
                   help="side of the fp32 matmul (default: 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--explain-size", type=_positive_int, default=d.explain_size,
                   help="image size of the explanation latency (224)")
    p.add_argument("--explain-repeats", type=_positive_int, default=d.explain_repeats,
                   help="timed explanations (10)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads (default: PyTorch's, i.e. the cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--json", metavar="OUT", default=None, help="also write every figure to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)
