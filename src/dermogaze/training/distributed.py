"""Processes of a distributed run (``torchrun``): joining the group, sharding, reducing, gathering.

One process per device, ``gloo`` on CPU and ``nccl`` on GPUs; a single process is the world of
size 1 and every function here is then a no-op. ``train.batch_size`` is the *global* batch: each
rank loads ``batch_size / world_size`` samples. Training shards come from ``DistributedSampler``
(padded to equal length); evaluation shards from :class:`ShardSampler` (strided, unpadded), whose
per-rank results are gathered afterwards.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.utils.data import Sampler

from ..runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: The world of one process (the default of functions that take a ``DistInfo``).
SINGLE_PROCESS = DistInfo()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``, also across nodes);
    with ``WORLD_SIZE`` unset or 1 this is a single process. Ranks other than 0 only log warnings.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not torch_dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://")
        logger.info("process group: backend %s, world size %d", backend, world)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed(dist: DistInfo) -> None:
    """Leave the process group joined by :func:`setup_distributed` (no-op in a single process)."""
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def all_reduce_sum(values: list[float], dist: DistInfo) -> list[float]:
    """Sum a list of floats over all ranks (in float64)."""
    if not dist.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    torch_dist.all_reduce(t)
    return t.tolist()


def all_gather(obj: Any, dist: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (a picklable object), in rank order."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def barrier(dist: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.enabled:
        torch_dist.barrier()


class ShardSampler(Sampler[int]):
    """Strided, unpadded shard ``range(rank, n, world_size)`` for evaluation.

    Unlike ``DistributedSampler`` it repeats no sample, so gathered predictions need no
    de-duplication; ranks may get one sample more or less than others.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
