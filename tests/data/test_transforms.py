"""Joint image/mask transforms: center crop like torchvision, exact alignment under rotations and flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dermogaze.data.transforms import (
    RandomRot90,
    ToNormalizedFloat,
    center_crop_box,
    center_crop_slices,
    eval_transform,
    train_transform,
)


def dihedral(x: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate the last two axes by k×90° counter-clockwise, then flip left-right if ``flip``."""
    y = np.rot90(x, k, axes=(-2, -1))
    return np.flip(y, axis=-1) if flip else y


@pytest.mark.parametrize("size,crop", [(256, 224), (255, 224), (32, 24), (17, 8), ((30, 40), (20, 21)), (8, 8)])
def test_center_crop_box_matches_torchvision(size, crop):
    h, w = (size, size) if isinstance(size, int) else size
    grid = torch.arange(h * w).reshape(1, h, w)
    out = v2.CenterCrop(crop)(grid)
    top, left = center_crop_box(size, crop)
    assert out[0, 0, 0].item() == top * w + left
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    torch.testing.assert_close(out[0], grid[0, top : top + ch, left : left + cw])


@pytest.mark.parametrize("size,crop", [(256, 224), (255, 224), ((30, 40), (20, 21)), (8, 8)])
def test_center_crop_slices_match_torchvision(size, crop):
    h, w = (size, size) if isinstance(size, int) else size
    grid = torch.arange(2 * h * w).reshape(2, h, w)
    rows, cols = center_crop_slices(size, crop)
    torch.testing.assert_close(grid[:, rows, cols], v2.CenterCrop(crop)(grid))


def test_center_crop_box_rejects_larger_crop():
    with pytest.raises(ValueError):
        center_crop_box(16, 32)


def test_eval_transform_crops_and_normalises():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 20, 20), dtype=np.uint8)
    masks = rng.integers(0, 2, (6, 20, 20), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.1)
    out = eval_transform(16, mean, std)({"image": tv_tensors.Image(torch.from_numpy(image)),
                                         "masks": tv_tensors.Mask(torch.from_numpy(masks))})
    top, left = center_crop_box(20, 16)
    assert (top, left) == (2, 2)
    crop = image[:, 2:18, 2:18] / 255.0
    expected = (crop - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert out["image"].dtype == torch.float32
    np.testing.assert_allclose(out["image"].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert out["masks"].dtype == torch.uint8  # masks are not scaled nor normalised
    np.testing.assert_array_equal(out["masks"].numpy(), masks[:, 2:18, 2:18])
    plain = eval_transform(16)(tv_tensors.Image(torch.from_numpy(image)))
    np.testing.assert_allclose(plain.numpy(), crop, rtol=1e-6)


def test_train_transform_keeps_image_and_masks_aligned():
    """A marker pixel (and every other pixel) moves with every mask under each of the 8 symmetries."""
    rng = np.random.default_rng(1)
    size, crop = 12, 10
    image = rng.integers(0, 200, (3, size, size), dtype=np.uint8)
    masks = np.zeros((6, size, size), np.uint8)
    marker = (2, 7)  # in the 10 px crop (offset 1): (1, 6), not on any symmetry axis
    image[:, marker[0], marker[1]] = 255
    masks[:, marker[0], marker[1]] = 1
    masks[:, 5, 1] = rng.integers(0, 2, 6)  # more asymmetric content in some masks
    sp = np.arange(size * size, dtype=np.int32).reshape(size, size)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
    transform = train_transform(crop, mean, std)
    c_img, c_masks, c_sp = (a[..., 1:11, 1:11] for a in (image, masks, sp))
    seen = set()
    for seed in range(80):
        torch.manual_seed(seed)
        out = transform({"image": tv_tensors.Image(torch.from_numpy(image)),
                         "masks": tv_tensors.Mask(torch.from_numpy(masks)),
                         "superpixels": tv_tensors.Mask(torch.from_numpy(sp))})
        assert isinstance(out["masks"], tv_tensors.Mask) and out["masks"].shape == (6, crop, crop)
        restored = out["image"].numpy() * np.array(std)[:, None, None] + np.array(mean)[:, None, None]
        img_u8 = np.rint(restored * 255).astype(np.uint8)
        # The marker: brightest pixel of the image is where every mask has its marker pixel.
        r, c = np.unravel_index(np.argmax(img_u8[0]), (crop, crop))
        assert all(out["masks"][s, r, c] == 1 for s in range(6))
        # The whole output is one symmetry of the cropped input, the same for image, masks and superpixels.
        matches = [(k, f) for k in range(4) for f in (False, True) if np.array_equal(img_u8, dihedral(c_img, k, f))]
        assert len(matches) == 1
        k, f = matches[0]
        np.testing.assert_array_equal(out["masks"].numpy(), dihedral(c_masks, k, f))
        np.testing.assert_array_equal(out["superpixels"].numpy(), dihedral(c_sp, k, f))
        seen.add((k, f))
    assert len(seen) == 8  # every rotation/flip combination was exercised


def test_random_rot90_is_exact_and_shared():
    x = torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4)
    ks = set()
    for seed in range(30):
        torch.manual_seed(seed)
        img, mask = RandomRot90()(tv_tensors.Image(x), tv_tensors.Mask(x[0] * 2))
        k = [j for j in range(4) if torch.equal(img, torch.rot90(x, j, dims=(-2, -1)))]
        assert len(k) == 1
        torch.testing.assert_close(mask.as_subclass(torch.Tensor), torch.rot90(x[0] * 2, k[0], dims=(-2, -1)))
        ks.add(k[0])
    assert ks == {0, 1, 2, 3}


def test_normalisation_needs_both_statistics():
    with pytest.raises(ValueError):
        eval_transform(8, mean=(0.5, 0.5, 0.5))


def test_fused_normalisation_matches_torchvision():
    """ToNormalizedFloat == v2.ToDtype(float32, scale=True) + v2.Normalize, also on a non-contiguous input."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.integers(0, 256, (3, 9, 9), dtype=np.uint8))
    x = torch.rot90(x, 1, dims=(-2, -1))  # non-contiguous view
    mean, std = (0.7, 0.55, 0.4), (0.15, 0.2, 0.12)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])(tv_tensors.Image(x))
    mask = tv_tensors.Mask(x[0])
    out, mask_out = ToNormalizedFloat(mean, std)(tv_tensors.Image(x), mask)
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out.as_subclass(torch.Tensor), reference.as_subclass(torch.Tensor), rtol=1e-5, atol=1e-5)
    assert mask_out is mask  # masks pass through
    scaled = ToNormalizedFloat()(tv_tensors.Image(x))
    torch.testing.assert_close(scaled.as_subclass(torch.Tensor), x.float() / 255)


def _dermoscopy_sample(size: int = 40) -> dict:
    """A grey image, bright (180) on a disk and dark (60) elsewhere; every mask is the disk; distinct superpixels."""
    r, c = np.mgrid[0:size, 0:size]
    disk = ((r - 17) ** 2 + (c - 23) ** 2) < 11**2
    image = np.where(disk, 180, 60).astype(np.uint8)[None].repeat(3, 0)
    masks = disk.astype(np.uint8)[None].repeat(6, 0)
    return {"image": tv_tensors.Image(torch.from_numpy(image)), "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "superpixels": tv_tensors.Mask(torch.from_numpy((r * size + c).astype(np.int32)))}


def test_dermoscopy_augmentation_moves_masks_with_the_image_and_keeps_them_binary():
    """A random scaled crop and a colour jitter: the masks follow the image's geometry (up to the antialiased rim of
    the disk), stay binary, and the colour changes only the image."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    transform = train_transform(24, mean, std, augment="dermoscopy")
    areas, brightness = [], []
    for seed in range(40):
        torch.manual_seed(seed)
        out = transform(_dermoscopy_sample())
        masks, image = out["masks"].numpy(), out["image"].numpy() * 0.25 + 0.5
        assert masks.shape == (6, 24, 24) and out["superpixels"].shape == (24, 24)
        assert set(np.unique(masks)) <= {0, 1} and all(np.array_equal(masks[0], m) for m in masks)
        # A brightness/contrast/saturation jitter of a grey image keeps the order of its two levels: the bright
        # pixels are the disk's. Only the rim (pixels interpolated across the disk's edge) may disagree.
        grey = image.mean(0)
        bright = grey > (grey.min() + grey.max()) / 2
        assert (bright != masks[0].astype(bool)).mean() < 0.06, seed
        areas.append(masks[0].mean())
        brightness.append(image[:, ~masks[0].astype(bool)].mean())
    assert np.ptp(areas) > 0.1  # the crop's scale and place change from draw to draw (a center crop would not)
    assert np.ptp(brightness) > 0.05  # and so does the colour (60/255 = 0.235 without the jitter)


def test_dermoscopy_superpixels_are_resampled_not_blended():
    """Superpixel ids are labels: the random crop resizes them with nearest neighbours, so every output id is an
    input id."""
    transform = train_transform(24, augment="dermoscopy")
    for seed in range(10):
        torch.manual_seed(seed)
        ids = transform(_dermoscopy_sample())["superpixels"].numpy()
        assert ids.dtype == np.int32 and np.isin(ids, np.arange(40 * 40)).all()
        assert len(np.unique(ids)) > 100  # not a constant patch


def test_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="augment must be one of"):
        train_transform(24, augment="hair")
