"""Where and in what precision to compute: the device and the autocast context, chosen once.

Every command that trains or runs a network takes ``--device auto|cpu|cuda`` (default ``auto``) and,
``export`` aside (float32 ONNX), ``--amp off|bf16|fp16``; they resolve here, so library code receives a
``torch.device`` and a zero-argument context factory (timm's ``amp_autocast``) and never decides either
again.

Which precision runs (:func:`effective_amp`):

* on a CUDA GPU, ``bf16`` and ``fp16`` autocast as asked;
* on the CPU, ``bf16`` autocasts when the CPU computes bfloat16 natively (:func:`native_cpu_bf16`:
  AVX-512 BF16 or AMX, where oneDNN's bf16 convolutions and matrix products are fast); on another CPU
  bf16 is emulated and slower than float32, so float32 runs instead, with one log line per process
  saying why. ``fp16`` on the CPU always runs float32 (one log line): it is slow there.

Under autocast only the network's forward pass runs in reduced precision; the weights, the
gradients and the optimiser state stay float32, and what leaves the network is cast to float32
(:meth:`~dermogaze.models.output.GazeOutput.float`) before the loss, the calibration and the
metrics; on the CPU the encoder's first two blocks stay float32 (:mod:`dermogaze.models.encoder`).
:func:`default_amp` is the default of the commands whose precision follows the machine, each decided from a
measurement on a CPU with native bf16 (:data:`CPU_BF16_BY_DEFAULT`): ``serve`` runs bf16 there, ``demo``
float32; ``--amp`` overrides either.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .config import AMP_MODES, DEVICES
from .errors import DermogazeError

logger = logging.getLogger(__name__)

__all__ = [
    "AMP_MODES", "DEVICES", "Autocast", "autocast_factory", "default_amp", "effective_amp", "native_cpu_bf16",
    "precision_name", "resolve_device", "to_numpy",
]

#: What :func:`autocast_factory` returns: call it to enter the chosen precision.
Autocast = Callable[[], contextlib.AbstractContextManager]


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → the local GPU when CUDA is available, else the CPU.

    Args:
        name: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        local_rank: the GPU of this process on its node (distributed runs).

    Raises:
        DermogazeError: ``"cuda"`` requested but no GPU is visible, or an unknown name.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DermogazeError(f"device {name!r} requested but no CUDA GPU is visible (use --device cpu)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name == "cpu":
        return torch.device("cpu")
    raise DermogazeError(f"unknown device {name!r}: expected auto, cpu or cuda")


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively, so that bf16 autocast is faster than float32 there.

    True when oneDNN is built in and runs bf16 kernels on this CPU, and the CPU has the bf16 dot-product
    instructions (x86 AVX-512 BF16, or AMX tiles, which come with AMX-BF16), as PyTorch's own CPU
    feature probe (cpuinfo) reports them. oneDNN alone would also accept an AVX-512 CPU without them,
    where bf16 is emulated and no faster than float32. Evaluated once per process.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    except (AttributeError, RuntimeError):  # a PyTorch build without these probes: assume no native bf16
        return False


@functools.cache
def _say_once(message: str) -> None:
    """Log ``message`` as a warning, once per process."""
    logger.warning(message)


def effective_amp(device: torch.device, amp: str, *, cpu: bool = False) -> str:
    """The precision that runs for ``--amp amp`` on ``device``: ``"off"``, ``"bf16"`` or ``"fp16"``.

    Args:
        device: the compute device.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` (what was asked for).
        cpu: autocast on the CPU whatever it supports (the benchmarks measure emulated bf16 and fp16).

    Returns:
        ``amp`` on a CUDA GPU; on the CPU ``"bf16"`` only when :func:`native_cpu_bf16` (or ``cpu``), else
        ``"off"``, which is logged once per process with the reason.

    Raises:
        DermogazeError: an unknown mode.
    """
    if amp not in AMP_MODES:
        raise DermogazeError(f"unknown train.amp {amp!r}: expected off, bf16 or fp16")
    if amp == "off" or device.type == "cuda" or cpu:
        return amp
    if device.type == "cpu" and amp == "bf16":
        if native_cpu_bf16():
            return amp
        _say_once("--amp bf16: this CPU has no native bfloat16 arithmetic (AVX-512 BF16 or AMX), where bf16 is "
                  "emulated and slower than float32; running in float32")
        return "off"
    _say_once(f"--amp {amp} is for CUDA GPUs (it is slow on the {device.type}); running in float32")
    return "off"


#: Whether each command whose precision follows the machine autocasts in bf16 by default on a CPU with native
#: bf16, from ``benchmarks/results/bf16_parity.md`` (the demo preset, three seeds, a native-bf16 CPU):
#: ``serve`` runs a trained float32 checkpoint, and in bf16 its P(melanoma) stays within 0.0063 of float32's on every
#: test image, with the same decisions and 99.8-100% of the same named structures (tolerances 0.01, 99%, 98%): bf16.
#: ``demo`` trains, and a bf16-trained demo lands up to 0.11 from the float32-trained one in the named pointing game
#: and 0.06 in the Jaccard (tolerance 0.02): float32.
CPU_BF16_BY_DEFAULT: dict[str, bool] = {"demo": False, "serve": True}


def default_amp(device: torch.device, command: str) -> str:
    """The precision of ``command`` (``"demo"`` or ``"serve"``) when none is asked for: ``"bf16"`` on a CPU with
    native bf16 (:func:`native_cpu_bf16`) where :data:`CPU_BF16_BY_DEFAULT` says so, ``"off"`` otherwise (a GPU
    included)."""
    return "bf16" if CPU_BF16_BY_DEFAULT[command] and device.type == "cpu" and native_cpu_bf16() else "off"


def precision_name(amp: str) -> str:
    """How reports name an effective mode: ``"float32"``, ``"bf16 autocast"`` or ``"fp16 autocast"``."""
    return "float32" if amp == "off" else f"{amp} autocast"


def autocast_factory(device: torch.device, amp: str, *, cpu: bool = False) -> Autocast:
    """One autocast context, chosen once.

    Args:
        device: the compute device.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"``; what runs is :func:`effective_amp`'s answer (on the
            CPU, bf16 only where it is native; fp16 never).
        cpu: autocast on the CPU whatever it supports (the benchmarks measure it).

    Returns:
        A zero-argument callable returning a context manager.
    """
    mode = effective_amp(device, amp, cpu=cpu)
    if mode == "off":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def to_numpy(x: Any) -> np.ndarray | None:
    """A tensor on any device, in any precision, as a host numpy array (floating tensors as float32).

    ``None`` stays ``None``; anything else goes through ``numpy.asarray``.
    """
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x)
