"""The one image decoder, resizer and normaliser (dermogaze.data.images)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from dermogaze.data.images import (
    check_image_file,
    load_user_image,
    nearest_indices,
    normalise,
    read_image_file,
    resize_image,
    resize_nearest,
)
from dermogaze.data.transforms import ToNormalizedFloat, center_crop_slices, eval_transform
from dermogaze.errors import DataError

# --------------------------------------------------------------------------- decoding


def test_real_thumbnail_draft_decoding(realdata_dir):
    path = realdata_dir / "ISIC_0000000_thumbnail.jpg"
    full = read_image_file(path, as_displayed=False)
    assert full.shape == (250, 250, 3) and full.dtype == np.uint8
    # 250 px cannot be reduced below 100 px by a 1/2 DCT scale (125 ≥ 100): the draft keeps >= 100.
    small = read_image_file(path, as_displayed=False, draft_size=100)
    assert min(small.shape[:2]) >= 100
    assert small.shape == (125, 125, 3)


def test_draft_never_goes_below_target(tmp_path):
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(path, quality=90)
    for target in (64, 75, 150, 256, 300, 600):
        out = read_image_file(path, as_displayed=False, draft_size=target)
        assert min(out.shape[:2]) >= target, target
    # 600×900 asked for 256: the 1/2 scale (300×450) is the largest reduction that keeps ≥ 256.
    assert read_image_file(path, as_displayed=False, draft_size=256).shape == (300, 450, 3)


def test_read_image_errors_name_the_file(tmp_path):
    path = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="ISIC_0000001.jpg.*truncated"):
        read_image_file(path, as_displayed=False)
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match="ISIC_0000001.jpg.*unreadable"):
        read_image_file(path, as_displayed=False)
    with pytest.raises(DataError, match="ISIC_0000001.jpg: not a readable lesion mask"):
        read_image_file(path, "L", what="lesion mask")
    with pytest.raises(DataError, match="ISIC_0000001.jpg: not a readable image"):
        check_image_file(path)
    with pytest.raises(DataError, match="gone.png: no such image file"):
        check_image_file(tmp_path / "gone.png")


def test_header_check_gives_width_and_height(tmp_path):
    Image.new("RGB", (7, 5)).save(tmp_path / "a.png")
    assert check_image_file(tmp_path / "a.png") == (7, 5)


def test_exif_orientation_only_as_displayed(tmp_path):
    """A user's photo is turned upright; a dataset image keeps the grid its masks are drawn on."""
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :10] = 255  # a white left third
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    im.save(tmp_path / "o.png", exif=exif)
    raw = read_image_file(tmp_path / "o.png", as_displayed=False)
    np.testing.assert_array_equal(raw, stored)
    shown = read_image_file(tmp_path / "o.png")
    np.testing.assert_array_equal(shown, np.rot90(stored, -1))  # (30, 20, 3), white top third


def test_sixteen_bit_and_alpha_only_as_displayed(tmp_path):
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], np.uint16)).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image_file(tmp_path / "d.png", "L"), [[0, 63], [127, 255]])
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    shown = read_image_file(tmp_path / "t.png")
    assert tuple(shown[0, 0]) == (10, 20, 30) and (shown[1] == 255).all()  # transparent → white
    assert (read_image_file(tmp_path / "t.png", as_displayed=False)[1] == 0).all()  # alpha dropped


def test_source_modes(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(DataError, match="g.png: superpixel map has mode L, expected RGB"):
        read_image_file(tmp_path / "g.png", source_modes=("RGB",), what="superpixel map")
    assert read_image_file(tmp_path / "g.png", source_modes=("L",)).shape == (4, 4, 3)


# --------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("n_in,n_out", [(32, 16), (48, 16), (3000, 256), (767, 256), (100, 256), (7, 3)])
def test_nearest_indices_match_pillow(n_in, n_out):
    row = np.arange(n_in, dtype=np.int32)[None, :].repeat(2, axis=0)  # mode "I" image of column indices
    reference = np.asarray(Image.fromarray(row).resize((n_out, 2), Image.NEAREST))[0]
    np.testing.assert_array_equal(nearest_indices(n_in, n_out), reference)


def test_resize_nearest_keeps_values_and_dtype():
    index = np.arange(6 * 4, dtype=np.uint32).reshape(6, 4)
    out = resize_nearest(index, 2)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, index[[1, 4]][:, [1, 3]])


def test_resize_image_is_pillow_bilinear():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_image(image, 16), reference)
    np.testing.assert_array_equal(resize_image(image[:16, :16], 16), image[:16, :16])  # already that size


# --------------------------------------------------------------------------- network input


def test_normalise_agrees_with_the_dataset_transform():
    """The explain input of a cached image equals the dataset's eval input up to float rounding."""
    rng = np.random.default_rng(3)
    cache_image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)  # (C, C, 3)
    mean, std = (0.7, 0.55, 0.4), (0.15, 0.2, 0.12)
    rows, cols = center_crop_slices(20, 16)
    ours = normalise(cache_image[rows, cols], mean, std)
    assert ours.shape == (3, 16, 16) and ours.dtype == torch.float32
    dataset = eval_transform(16, mean, std)(tv_tensors.Image(torch.from_numpy(cache_image).permute(2, 0, 1)))
    torch.testing.assert_close(ours, dataset.as_subclass(torch.Tensor), rtol=0, atol=1e-6)
    fused = ToNormalizedFloat(mean, std)(tv_tensors.Image(torch.from_numpy(cache_image).permute(2, 0, 1)))
    torch.testing.assert_close(normalise(cache_image, mean, std), fused.as_subclass(torch.Tensor), rtol=0, atol=1e-6)
    expected = (cache_image.transpose(2, 0, 1) / 255.0 - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    np.testing.assert_allclose(normalise(cache_image, mean, std).numpy(), expected, rtol=0, atol=1e-5)


def test_load_user_image_resizes_whole_and_normalises(tmp_path):
    image = np.random.default_rng(4).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "u.png")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    x, original = load_user_image(tmp_path / "u.png", 24, mean, std)
    np.testing.assert_array_equal(original, image)
    torch.testing.assert_close(x, normalise(resize_image(image, 24), mean, std), rtol=0, atol=0)
