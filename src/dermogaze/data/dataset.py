"""``DermoscopyDataset``: samples of a prepared cache, cropped, augmented and normalised (docs/design.md §3)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DataError
from .cache import SplitArrays, load_info, load_split
from .transforms import eval_transform, train_transform


class DermoscopyDataset(Dataset):
    """One split of a cache written by :func:`dermogaze.data.prepare.prepare`.

    ``ds[i]`` is a dict:

    * ``image``: float32 ``(3, S, S)``, normalised with the cache's training mean/std (or the given
      ``normalisation``: a checkpoint's, at evaluation);
    * ``masks``: uint8 ``(K, S, S)`` of 0/1 in the order of the cache's ``info["structures"]``
      (``K`` structures; zeros without masks); uint8, not float, so a DataLoader worker sends a
      quarter of the bytes (the loss casts on the device);
    * ``present``: bool ``(K,)``, a mask has at least one pixel *after* this sample's transforms
      (all False without masks);
    * ``label``: int64 scalar tensor (1 = melanoma, 0 = other, -1 = unknown: the cache's NaN; the
      loss and the metrics skip it); ``id``: str; ``index``: int;
    * with ``return_superpixels``: ``superpixels`` int64 ``(S, S)``, transformed with the masks.

    ``S = image_size``. Eval: center crop; train: center crop (or, with ``augment="dermoscopy"``, a random
    scaled crop and a colour jitter) + random 90° rotations and flips applied jointly to image, masks and
    superpixels (:mod:`dermogaze.data.transforms`).

    The arrays are memory-mapped and opened lazily in each process, so the dataset is cheap to send
    to DataLoader workers (with any start method).

    Args:
        cache: cache folder.
        split: ``train``, ``val`` or ``test``.
        train: use the training augmentation.
        image_size: crop side (the model's input size), at most the cache size.
        return_superpixels: also return the superpixel map (needs a cache with superpixels).
        normalisation: ``(mean, std)`` to normalise with instead of the cache's (a model's training
            statistics, stored in its checkpoint).
        augment: the training augmentation (:func:`~dermogaze.data.transforms.train_transform`), with ``train``.

    Attributes:
        info: the cache's info dict. mean, std: the per-channel statistics the images are normalised with.
        has_masks: whether the cache holds structure masks. labels: int64 ``(N,)``, -1 = unknown.
        ids: list of str. structures: the cache's structure set.

    Raises:
        DataError: no valid cache or split, ``image_size`` larger than the cache, superpixels asked
        of a cache without them.
    """

    def __init__(
        self,
        cache: str | Path,
        split: str,
        *,
        train: bool = False,
        image_size: int = 224,
        return_superpixels: bool = False,
        normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
        augment: str = "dihedral",
    ) -> None:
        self.cache = Path(cache)
        self.split = split
        self.info = load_info(self.cache)
        arrays = load_split(self.cache, split)
        if image_size > self.info["size"]:
            raise DataError(f"{self.cache}: image_size {image_size} exceeds the cache size {self.info['size']}")
        if return_superpixels and not self.info["has_superpixels"]:
            raise DataError(f"{self.cache}: the cache has no superpixel maps (no Part 2 ground truth)")
        self.train = train
        self.image_size = image_size
        self.return_superpixels = return_superpixels
        mean, std = normalisation if normalisation is not None else (self.info["mean"], self.info["std"])
        self.mean: tuple[float, ...] = tuple(float(m) for m in mean)
        self.std: tuple[float, ...] = tuple(float(s) for s in std)
        self.has_masks: bool = bool(self.info["has_masks"])
        if train:
            self.transform = train_transform(image_size, self.mean, self.std, augment)
        else:
            self.transform = eval_transform(image_size, self.mean, self.std)
        self.structures: tuple[str, ...] = tuple(self.info["structures"])
        raw = np.asarray(arrays.labels, dtype=np.float64)
        self.labels: np.ndarray = np.where(np.isnan(raw), -1, raw).astype(np.int64)
        self.ids: list[str] = list(arrays.ids)
        self._arrays: SplitArrays | None = arrays
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None  # memory maps are reopened in the receiving process, not copied
        return state

    def arrays(self) -> SplitArrays:
        """The memory-mapped split arrays, (re)opened in the current process."""
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = load_split(self.cache, self.split)
            self._pid = os.getpid()
        return self._arrays

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        a = self.arrays()
        # (S, S, 3) uint8 → contiguous (3, S, S); the copy detaches the sample from the read-only memory map.
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(a.images[index].transpose(2, 0, 1))))
        sample: dict[str, Any] = {"image": image}
        if self.has_masks:
            sample["masks"] = tv_tensors.Mask(torch.from_numpy(np.array(a.masks[index]).view(np.uint8)))  # (K, S, S)
        if self.return_superpixels:
            sample["superpixels"] = tv_tensors.Mask(torch.from_numpy(np.array(a.superpixels[index])))  # (S, S)
        out = self.transform(sample)

        size = self.image_size
        if self.has_masks:
            masks = out["masks"].as_subclass(torch.Tensor)
            present = masks.amax(dim=(1, 2)) > 0  # (K,) bool, no copy of a rotated view
            masks = masks.contiguous()
        else:
            masks = torch.zeros(len(self.structures), size, size, dtype=torch.uint8)
            present = torch.zeros(len(self.structures), dtype=torch.bool)
        item = {
            "image": out["image"].as_subclass(torch.Tensor).contiguous(),
            "masks": masks.contiguous(),
            "present": present,
            "label": torch.tensor(int(self.labels[index]), dtype=torch.int64),
            "id": self.ids[index],
            "index": index,
        }
        if self.return_superpixels:
            item["superpixels"] = out["superpixels"].as_subclass(torch.Tensor).to(torch.int64).contiguous()
        return item
