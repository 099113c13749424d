"""The command line of ``benchmarks/bench_train.py``: its options, their defaults and its parser.

They live apart from the benchmark, which imports torch, so that ``dermogaze bench --help`` (and a
usage error) answers without importing it: ``dermogaze bench`` parses the options with
:func:`build_parser` before it imports ``bench_train``. Like ``baseline.py``, this file is imported
as a sibling module (from this folder), not part of the installed package.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from dermogaze.cli.common import positive_int
from dermogaze.config import AMP_MODES, DEVICES

#: Name of the benchmark in its usage line and error messages.
PROG = "bench_train"
#: What dermogaze's step is timed against (the ``baseline`` slot of the results): the straightforward
#: formulation, or dermogaze's own model in float32 eager, contiguous (for ``--amp``/``--compile``).
REFERENCES = ("baseline", "fp32")


@dataclass
class BenchOptions:
    """What the benchmark measures (defaults: the paper's training configuration)."""

    variant: str = "deco_gap_3"
    image_size: int = 224
    batch: int = 8
    steps: int = 5  # T
    width: float = 1.0
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    amp: str = "off"  # "off" | "bf16" | "fp16"
    channels_last: bool = False
    compile: bool = False
    repeats: int = 3  # timed steps of each formulation
    warmup: int = 1  # untimed steps of each formulation after the agreement step
    seed: int = 0
    tolerance: float = 1e-6  # relative, for the float64 agreement
    agreement_batch: int | None = None  # samples of the batch in the agreement check (None: all)
    matmul_size: int | None = None  # default: 2048 on CPU, 8192 on CUDA
    explain_size: int = 224
    explain_repeats: int = 10
    memory: bool = True  # measure peak memory in child processes
    threads: int | None = None  # torch.set_num_threads; None = PyTorch's default (the cores)
    reference: str = "baseline"  # "baseline" | "fp32" (see REFERENCES)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options (defaults: the paper's configuration)."""
    d = BenchOptions()
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Run, alternating in one process, the training step of the straightforward baseline "
            "(benchmarks/baseline.py) and of dermogaze on the same synthetic batch, and print FLOPs per image, "
            "median step times and their ratio, achieved GFLOP/s against the machine's fp32 matmul throughput, "
            "peak memory of each (measured in child processes), their agreement (loss and gradients on the same "
            "weights), and the latency of a single-image explanation. Defaults: the paper's configuration. "
            "Run as 'python benchmarks/bench_train.py' or 'dermogaze bench' from a repository checkout."
        ),
    )
    p.add_argument("--model", default=d.variant, help=f"variant with an attentive ConvLSTM (default: {d.variant})")
    p.add_argument("--image-size", type=positive_int, default=d.image_size,
                   help=f"input size, multiple of 32 ({d.image_size})")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"T, number of gazes ({d.steps})")
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier (1.0 = the paper)")
    p.add_argument("--batch", type=positive_int, default=d.batch, help=f"batch size ({d.batch})")
    p.add_argument("--device", choices=DEVICES, default=d.device,
                   help="compute device (default: auto, the GPU when there is one)")
    p.add_argument("--amp", choices=AMP_MODES, default=d.amp,
                   help="mixed precision for dermogaze's step, on the CPU too whatever it supports (default: off; "
                   "with --reference fp32, against its own fp32 step; benchmarks/bf16_speed.py measures bf16 on the "
                   "CPU for training, explanation and the viewer)")
    p.add_argument("--channels-last", action="store_true", help="dermogaze's step in channels-last memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile dermogaze's model")
    p.add_argument("--repeats", type=positive_int, default=d.repeats,
                   help=f"timed steps of each formulation ({d.repeats})")
    p.add_argument("--warmup", type=int, default=d.warmup, help=f"untimed steps of each before timing ({d.warmup})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"weights and batch seed ({d.seed})")
    p.add_argument("--tolerance", type=float, default=d.tolerance,
                   help=f"relative tolerance of the float64 agreement of loss and gradients ({d.tolerance:g})")
    p.add_argument("--reference", choices=REFERENCES, default=d.reference,
                   help="time dermogaze against the baseline formulation (default) or against its own fp32 eager "
                   "step ('fp32': the GPU check of --amp/--channels-last/--compile)")
    p.add_argument("--agreement-batch", type=positive_int, default=None,
                   help="check the agreement on the first N samples of the batch (default: all)")
    p.add_argument("--matmul-size", type=positive_int, default=None,
                   help="side of the fp32 matmul (default: 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--explain-size", type=positive_int, default=d.explain_size,
                   help=f"image size of the explanation latency ({d.explain_size})")
    p.add_argument("--explain-repeats", type=positive_int, default=d.explain_repeats,
                   help=f"timed explanations ({d.explain_repeats})")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: PyTorch's, i.e. the cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    p.add_argument("--json", metavar="OUT", default=None, help="also write every figure to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p
