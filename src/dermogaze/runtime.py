"""Where and in what precision to compute: the device and the autocast context, chosen once.

Every command takes ``--device auto|cpu|cuda`` (default ``auto``) and, where a model trains or
evaluates, ``--amp off|bf16|fp16``; they resolve here, so library code receives a
``torch.device`` and a zero-argument context factory (timm's ``amp_autocast``) and never decides
either again.
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

__all__ = ["AMP_MODES", "DEVICES", "Autocast", "autocast_factory", "resolve_device", "to_numpy"]

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


def autocast_factory(device: torch.device, amp: str, *, cpu: bool = False) -> Autocast:
    """One autocast context, chosen once.

    Args:
        device: the compute device.
        amp: ``"off"``, ``"bf16"`` or ``"fp16"``. Mixed precision is used on CUDA only; on
            another device it is ignored with a warning, unless ``cpu``.
        cpu: allow autocast on the CPU too (the benchmark measures it; bf16 needs AVX-512 BF16 to be
            fast, fp16 is mostly slow there).

    Returns:
        A zero-argument callable returning a context manager.
    """
    if amp not in AMP_MODES:
        raise DermogazeError(f"unknown train.amp {amp!r}: expected off, bf16 or fp16")
    if amp == "off":
        return contextlib.nullcontext
    if device.type != "cuda" and not cpu:
        logger.warning("mixed precision (--amp %s) is for CUDA GPUs; running in float32 on %s", amp, device)
        return contextlib.nullcontext
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
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
