"""Joint image + mask transforms (docs/design.md §3) with ``torchvision.transforms.v2``.

Inputs are a ``tv_tensors.Image`` (uint8 ``(3, S, S)``) and any number of ``tv_tensors.Mask``
(structure masks ``(6, S, S)``, a superpixel map ``(S, S)``), passed together (a dict or a tuple)
so every geometric transform draws its random parameters once and applies them to all of them.
Normalisation (:class:`ToNormalizedFloat`, a fused ``ToDtype`` + ``Normalize``) only touches the
image.

Order, chosen for speed (the cached images are 256 px, the model sees 224 px): center crop first
(fewer pixels for everything after it), then the random 90° rotation and flips on uint8 data,
and the conversion to float and normalisation last. Cropping before rotating gives the same
result as rotating first because the crop is centred on a square image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..config import AUGMENTATIONS


def center_crop_box(size: int | tuple[int, int], image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the center crop, computed exactly as ``v2.CenterCrop`` does.

    Args:
        size: the input's side (or ``(height, width)``), e.g. the cache size 256.
        image_size: the crop's side (or ``(height, width)``), e.g. 224.

    Returns:
        ``(top, left)``; the crop is ``[top:top + h, left:left + w]``.
    """
    in_h, in_w = (size, size) if isinstance(size, int) else size
    out_h, out_w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if out_h > in_h or out_w > in_w:
        raise ValueError(f"crop {out_h}×{out_w} is larger than the input {in_h}×{in_w}")
    return int(round((in_h - out_h) / 2.0)), int(round((in_w - out_w) / 2.0))


def center_crop_slices(size: int | tuple[int, int], image_size: int | tuple[int, int]) -> tuple[slice, slice]:
    """Row and column slices of the center crop of :func:`center_crop_box`: ``array[..., rows, cols]``."""
    top, left = center_crop_box(size, image_size)
    out_h, out_w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return slice(top, top + out_h), slice(left, left + out_w)


class RandomRot90(v2.Transform):
    """Rotate by ``k × 90°`` counter-clockwise, ``k`` uniform in {0, 1, 2, 3}; the same ``k`` for all inputs.

    Exact (``torch.rot90``, no interpolation); inputs must be square in their last two axes.
    """

    _transformed_types = (tv_tensors.Image, tv_tensors.Mask)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": int(torch.randint(4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(torch.Tensor), params["k"], dims=(-2, -1)), like=inpt)


class ToNormalizedFloat(v2.Transform):
    """uint8 image → float32 ``(x / 255 - mean) / std``, contiguous; masks pass through untouched.

    The same result as ``v2.ToDtype(torch.float32, scale=True)`` followed by ``v2.Normalize(mean,
    std)`` (to float rounding, ~1e-6), fused into one conversion and two in-place passes that also
    make the output contiguous (a rotated or flipped crop is a strided view). Float images are taken
    to be in [0, 1]. :func:`dermogaze.data.images.normalise` computes the same for a single image
    outside a Dataset (dividing by 255 first, so the two agree to float rounding).

    Args:
        mean, std: per-channel statistics in [0, 1] units; ``None`` = only scale to [0, 1].
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        mean = [0.0, 0.0, 0.0] if mean is None else [float(m) for m in mean]
        std = [1.0, 1.0, 1.0] if std is None else [float(s) for s in std]
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean {mean} and std {std} must have one value per channel, std > 0")
        self.mean, self.std = tuple(mean), tuple(std)
        self._shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self._scale = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        x = inpt.as_subclass(torch.Tensor)
        out = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if x.dtype == torch.uint8:
            out.sub_(self._shift * 255.0).div_(self._scale * 255.0)
        else:
            out.sub_(self._shift).div_(self._scale)
        return tv_tensors.wrap(out, like=inpt)


def eval_transform(
    image_size: int = 224, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> v2.Compose:
    """Center crop to ``image_size``, image to float in [0, 1], then ``(x - mean) / std`` if given.

    Args:
        image_size: side of the crop (the model's input size).
        mean, std: per-channel statistics in [0, 1] units (the cache's training mean/std).
    """
    return v2.Compose([v2.CenterCrop(image_size), ToNormalizedFloat(mean, std)])


#: ``augment="dermoscopy"``: the area of the cached image a crop covers (the center crop of the evaluation covers
#: (224/256)² ≈ 0.77 of it), and its aspect ratio, before it is resized to the model's input.
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (4 / 5, 5 / 4)
#: ``augment="dermoscopy"``: brightness, contrast and saturation factors in [1 - j, 1 + j], hue shift in [-h, h]
#: (dermatoscopes and cameras differ in exposure and white balance; the hue of a lesion carries meaning, so little).
COLOUR_JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02}


def train_transform(
    image_size: int = 224,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    augment: str = "dihedral",
) -> v2.Compose:
    """The training augmentation: a random symmetry of the square, and for photographs scale and colour too.

    ``"dihedral"``: :func:`eval_transform` plus a random 90° rotation and random horizontal/vertical flips. The
    rotation and flips (p = 0.5 each) are applied jointly to the image and every mask; the 16 combinations cover the
    8 symmetries of the square twice each, so each symmetry has p = 1/8.

    ``"dermoscopy"``: the center crop replaced by a random crop of :data:`CROP_SCALE` of the cached image's area and
    :data:`CROP_RATIO`, resized to ``image_size`` (``v2.RandomResizedCrop``: the masks with nearest neighbours, so
    they stay binary), then the same symmetries, then ``v2.ColorJitter`` (:data:`COLOUR_JITTER`) on the image alone.

    Raises:
        ValueError: an unknown ``augment``.
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, not {augment!r}")
    crop: v2.Transform = v2.CenterCrop(image_size)
    colour: list[v2.Transform] = []
    if augment == "dermoscopy":
        crop = v2.RandomResizedCrop(image_size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True)
        colour = [v2.ColorJitter(**COLOUR_JITTER)]
    return v2.Compose(
        [crop, RandomRot90(), v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), *colour, ToNormalizedFloat(mean, std)]
    )


#: The 8 symmetries of the square as ``(k, flip)``: the view is ``flip(rot90(x, k))`` (``rot90``
#: counter-clockwise in the displayed image, then ``flip`` = left-right mirror). ``(0, False)`` is the image.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))


def dihedral_view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``flip(rot90(x, k))`` over the last two dimensions (one view of :data:`DIHEDRAL`)."""
    turned = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(turned, dims=(-1,)) if flip else turned


def dihedral_inverse(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Undo :func:`dihedral_view`: ``rot90(flip(x), -k)``, back to the original frame."""
    return torch.rot90(torch.flip(x, dims=(-1,)) if flip else x, -k, dims=(-2, -1))


def dihedral_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The 8 symmetries of the square applied to a batch: rotations by 0, 90, 180, 270° and their mirror images.

    View 0 is the batch itself (test-time augmentation reports it apart). The training augmentation
    (:func:`train_transform`) draws from the same 8 symmetries.

    Args:
        images: ``(B, C, S, S)``.

    Returns:
        8 tensors ``(B, C, S, S)``, in :data:`DIHEDRAL` order: ``rot90(k)`` for k = 0..3, then the same
        after a horizontal flip.
    """
    return [dihedral_view(images, k, flip) for k, flip in DIHEDRAL]
