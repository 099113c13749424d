"""Randomness of a run: seeding, the RNG states a checkpoint carries, and per-sample augmentation seeds.

The order of the training samples is a function of ``(seed, epoch)`` only (``DistributedSampler``
with ``set_epoch``, also in a single process), and the random transforms of sample ``i`` in epoch
``e`` are drawn from generators seeded with ``(seed, e, i)`` (:class:`EpochSeededDataset`). So the
batches depend neither on the number of loader workers, nor on the number of processes, nor on
where a run was interrupted; with the torch/numpy/python states stored in each checkpoint
(:func:`get_rng_state`), a resumed CPU run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def seed_everything(seed: int, *, cuda: bool = True) -> None:
    """Seed python's ``random``, numpy's global generator and torch (CPU, and CUDA unless ``cuda`` is False)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU and CUDA), numpy and python.

    Stored with tensors and plain Python values only, so a checkpoint loads with
    ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the states returned by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with the torch (CPU), numpy and python global generators seeded to ``seed``; restore them after.

    Only the CPU generator of torch: the block runs on the CPU (a sample's transforms), and seeding the CUDA
    generators too (``torch.manual_seed``) would cost a quarter of a millisecond per sample and change state
    this function does not restore.
    """
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        seed_everything(seed, cuda=False)
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


class EpochSeededDataset(Dataset):
    """Makes the random transforms of sample ``i`` in epoch ``e`` a function of ``(seed, e, i)``.

    Wraps a training dataset whose ``__getitem__`` draws its augmentation from the global
    torch/numpy/python generators; each item is produced with those generators seeded from
    ``(seed, epoch, index)`` and restored afterwards. Call :meth:`set_epoch` before each epoch
    (loader workers must not be persistent, so that the epoch reaches them).

    An index ``i + k·N`` (``N = len(dataset)``) is image ``i`` with augmentation seeded by the whole index: the
    :class:`~dermogaze.training.sampling.RepeatFactorSampler` numbers the ``k``-th repeat of an image in an
    epoch so, and each repeat gets a transform of its own.

    Args:
        dataset: the dataset to wrap (its items are returned unchanged otherwise).
        seed: the run's seed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        seed = int(np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0])
        with seeded_rng(seed):
            return self.dataset[int(index) % len(self)]
