"""The one image decoder, resizer and normaliser (dermogaze.data.images)."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from dermogaze.data.images import (
    MAX_IMAGE_PIXELS,
    PIXEL_BUDGET_ENV,
    check_image_file,
    load_user_image,
    max_image_pixels,
    nearest_indices,
    normalise,
    read_image_file,
    resize_image,
    resize_nearest,
)
from dermogaze.data.transforms import ToNormalizedFloat, center_crop_slices, eval_transform
from dermogaze.errors import DataError, DermogazeError
from support import png_claiming

# --------------------------------------------------------------------------- decoding


def test_real_thumbnail_draft_decoding(realdata_dir):
    path = realdata_dir / "ISIC_0000000_thumbnail.jpg"
    full = read_image_file(path, exif_orientation=False)
    assert full.shape == (250, 250, 3) and full.dtype == np.uint8
    # 250 px cannot be reduced below 100 px by a 1/2 DCT scale (125 ≥ 100): the draft keeps >= 100.
    small = read_image_file(path, exif_orientation=False, draft_size=100)
    assert min(small.shape[:2]) >= 100
    assert small.shape == (125, 125, 3)


def test_draft_never_goes_below_target(tmp_path):
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (600, 900, 3), dtype=np.uint8)).save(path, quality=90)
    for target in (64, 75, 150, 256, 300, 600):
        out = read_image_file(path, exif_orientation=False, draft_size=target)
        assert min(out.shape[:2]) >= target, target
    # 600×900 asked for 256: the 1/2 scale (300×450) is the largest reduction that keeps ≥ 256.
    assert read_image_file(path, exif_orientation=False, draft_size=256).shape == (300, 450, 3)


def test_read_image_errors_name_the_file(tmp_path):
    path = tmp_path / "ISIC_0000001.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="ISIC_0000001.jpg.*truncated"):
        read_image_file(path, exif_orientation=False)
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match="ISIC_0000001.jpg.*unreadable"):
        read_image_file(path, exif_orientation=False)
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
    raw = read_image_file(tmp_path / "o.png", exif_orientation=False)
    np.testing.assert_array_equal(raw, stored)
    shown = read_image_file(tmp_path / "o.png")
    np.testing.assert_array_equal(shown, np.rot90(stored, -1))  # (30, 20, 3), white top third


# --------------------------------------------------------------------------- mode conversion
# One rule per file mode (module docstring of dermogaze.data.images), checked against hand-computed
# values, the same with and without EXIF orientation and the same for a user's image (explain).


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def _sixteen_bit_png(path):  # 16-bit greyscale PNG: the high byte v >> 8
    values = np.array([[0, 255, 256, 32767, 32768, 65535]], np.uint16)
    return _save(Image.frombytes("I;16", (6, 1), values.tobytes()), path.with_suffix(".png"))


def _sixteen_bit_big_endian_tiff(path):
    values = np.array([[0, 255, 256, 32767, 32768, 65535]], ">u2")
    return _save(Image.frombytes("I;16B", (6, 1), values.tobytes()), path.with_suffix(".tif"))


def _int32_tiff(path):  # clipped to [0, 65535], then the high byte
    return _save(Image.fromarray(np.array([[-5, 0, 70000, 32768, 65535, 511]], np.int32)), path.with_suffix(".tif"))


def _float_tiff(path):  # [0, 1] → round(255 v), half to even; NaN → 0; clipped
    values = np.array([[np.nan, -1.0, 0.5, 0.25, 2.0, np.inf]], np.float32)
    return _save(Image.fromarray(values), path.with_suffix(".tif"))


def _grey_png(path):
    return _save(Image.fromarray(np.array([[0, 1, 127, 128, 254, 255]], np.uint8)), path.with_suffix(".png"))


def _grey_alpha_png(path):  # L 0 at alpha 128 → 255·127/255 = 127; alpha 0 → white; opaque unchanged
    values = np.array([[[0, 128], [200, 0], [100, 255], [50, 51], [255, 1], [0, 255]]], np.uint8)
    return _save(Image.frombytes("LA", (6, 1), values.tobytes()), path.with_suffix(".png"))


def _palette_with_transparency_png(path):  # index 1 transparent → white
    im = Image.frombytes("P", (6, 1), bytes([0, 1, 2, 0, 1, 2]))
    im.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30])
    return _save(im, path.with_suffix(".png"), transparency=1)


def _rgba_png(path):
    values = np.array([[[0, 0, 0, 128], [10, 200, 77, 100], [10, 20, 30, 255], [9, 9, 9, 0], [255, 0, 0, 1],
                        [0, 0, 0, 254]]], np.uint8)
    return _save(Image.frombytes("RGBA", (6, 1), values.tobytes()), path.with_suffix(".png"))


def _cmyk_tiff(path):  # Pillow: R = round((255 - C)(255 - K) / 255)
    values = np.array([[[10, 20, 30, 40], [0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [0, 0, 0, 128],
                        [128, 64, 0, 0]]], np.uint8)
    return _save(Image.frombytes("CMYK", (6, 1), values.tobytes()), path.with_suffix(".tif"))


def _bilevel_png(path):
    return _save(Image.fromarray(np.array([[0, 1, 1, 0, 1, 0]], bool)), path.with_suffix(".png"))


def _rgb_with_transparent_colour_png(path):  # tRNS colour key (1, 2, 3) → white
    values = np.array([[[10, 20, 30], [1, 2, 3], [1, 2, 4], [0, 0, 0], [1, 2, 3], [255, 255, 255]]], np.uint8)
    return _save(Image.fromarray(values), path.with_suffix(".png"), transparency=(1, 2, 3))


def _grey(*values):
    return np.repeat(np.array([values], np.uint8)[..., None], 3, axis=-1)  # (1, 6, 3)


MODE_CASES = {
    "I;16": (_sixteen_bit_png, _grey(0, 0, 1, 127, 128, 255)),
    "I;16B": (_sixteen_bit_big_endian_tiff, _grey(0, 0, 1, 127, 128, 255)),
    "I": (_int32_tiff, _grey(0, 0, 255, 128, 255, 1)),
    "F": (_float_tiff, _grey(0, 0, 128, 64, 255, 255)),  # 127.5 → 128 (half to even), 63.75 → 64
    "L": (_grey_png, _grey(0, 1, 127, 128, 254, 255)),
    # (c·a + 255·(255 - a)) / 255: 127, 255, 100, 50·51/255 + 204 = 214, 255, 0
    "LA": (_grey_alpha_png, _grey(127, 255, 100, 214, 255, 0)),
    "P+transparency": (
        _palette_with_transparency_png,
        np.array([[[255, 0, 0], [255, 255, 255], [10, 20, 30], [255, 0, 0], [255, 255, 255], [10, 20, 30]]]),
    ),
    # (10·100 + 255·155)/255 = 158.92 → 159, (200·100 + 39525)/255 = 233.43 → 233, 185.20 → 185;
    # alpha 1 on red: 255 and 254·255/255 = 254; (0, 0, 0, 254): 255/255 = 1.
    "RGBA": (
        _rgba_png,
        np.array([[[127, 127, 127], [159, 233, 185], [10, 20, 30], [255, 255, 255], [255, 254, 254], [1, 1, 1]]]),
    ),
    # 245·215/255 = 206.57 → 207, 235·215/255 = 198.14 → 198, 225·215/255 = 189.71 → 190; 127·255/255 = 127
    "CMYK": (
        _cmyk_tiff,
        np.array([[[207, 198, 190], [255, 255, 255], [0, 255, 255], [0, 0, 0], [127, 127, 127], [127, 191, 255]]]),
    ),
    "1": (_bilevel_png, _grey(0, 255, 255, 0, 255, 0)),
    "RGB+transparency": (
        _rgb_with_transparent_colour_png,
        np.array([[[10, 20, 30], [255, 255, 255], [1, 2, 4], [0, 0, 0], [255, 255, 255], [255, 255, 255]]]),
    ),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_every_mode_by_its_documented_rule(tmp_path, case):
    write, expected = MODE_CASES[case]
    path = write(tmp_path / "m")
    rgb = read_image_file(path, exif_orientation=False)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 6, 3)
    np.testing.assert_array_equal(rgb, expected)
    # The same conversion with the orientation step on (no EXIF here), for "L" and for a user's image.
    np.testing.assert_array_equal(read_image_file(path), expected)
    grey = read_image_file(path, "L", exif_orientation=False)
    np.testing.assert_array_equal(grey, np.asarray(Image.fromarray(expected.astype(np.uint8)).convert("L")))
    _, original = load_user_image(path, 4, (0.5,) * 3, (0.25,) * 3)
    np.testing.assert_array_equal(original, expected)


def test_annotations_drop_transparency_instead_of_compositing(tmp_path):
    """A mask or label map's values are labels: alpha is dropped, 16-bit values use the high byte."""
    la = np.array([[[255, 0], [0, 0], [255, 255]]], np.uint8)  # lesion, background, lesion; the first transparent
    path = _save(Image.frombytes("LA", (3, 1), la.tobytes()), tmp_path / "mask.png")
    np.testing.assert_array_equal(read_image_file(path, "L", exif_orientation=False, annotation=True), [[255, 0, 255]])
    np.testing.assert_array_equal(read_image_file(path, "L", exif_orientation=False), [[255, 255, 255]])  # a picture
    mask16 = np.array([[0, 65535, 32768]], np.uint16)
    path = _save(Image.frombytes("I;16", (3, 1), mask16.tobytes()), tmp_path / "mask16.png")
    np.testing.assert_array_equal(read_image_file(path, "L", annotation=True), [[0, 255, 128]])


# --------------------------------------------------------------------------- pixel budget


def _jpeg_claiming(path, width, height):
    """A small JPEG whose frame header (SOF0) is patched to claim ``width × height``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 60, 30)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def _ico_holding(path, png: bytes):
    """An icon file whose one entry (a 256×256 icon by its directory) is the PNG ``png``."""
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22)  # width/height 0 = 256
    path.write_bytes(struct.pack("<HHH", 0, 1, 1) + entry + png)
    return path


def test_budget_refuses_a_bomb_before_decoding(tmp_path):
    """Header sizes above the budget are refused unread, with one line naming the file, its size and the budget."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's own DecompressionBombWarning/Error never escape
        big = png_claiming(tmp_path / "big.png", 12000, 9000)  # above the budget, below Pillow's hard limit
        expected = "big.png: image is 12000×9000 = 108,000,000 pixels, above the pixel budget of 100,000,000"
        with pytest.raises(DataError, match=expected):
            check_image_file(big)
        with pytest.raises(DataError, match=expected):
            read_image_file(big, exif_orientation=False, draft_size=256)
        with pytest.raises(DataError, match="big.png: lesion mask is 12000×9000"):
            read_image_file(big, "L", annotation=True, what="lesion mask")
        # Above Pillow's hard limit (2 × 89.5 M) Pillow refuses first; the message is the same kind.
        bomb = png_claiming(tmp_path / "bomb.png", 20000, 20000)  # 400 M pixels in 100 bytes
        expected = r"bomb.png: image is above the pixel budget of 100,000,000 \(Pillow: Image size \(400000000 pixels\)"
        with pytest.raises(DataError, match=expected):
            check_image_file(bomb)
        with pytest.raises(DataError, match=expected):
            read_image_file(bomb, exif_orientation=False)
        jpeg = _jpeg_claiming(tmp_path / "huge.jpg", 60000, 50000)
        with pytest.raises(DataError, match=r"huge.jpg: image is above the pixel budget .*3000000000 pixels"):
            load_user_image(jpeg, 224, (0.5,) * 3, (0.25,) * 3)  # explain's reader, same check
        # An icon whose directory says 256×256 but whose PNG frame claims 400 M pixels.
        ico = _ico_holding(tmp_path / "bomb.ico", bomb.read_bytes())
        with pytest.raises(DataError, match=r"bomb.ico: image is above the pixel budget .*400000000 pixels"):
            read_image_file(ico)
        # Between Pillow's warning threshold (89.5 M) and the budget: opened without a warning.
        assert check_image_file(png_claiming(tmp_path / "ok.png", 10000, 9500)) == (10000, 9500)
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own setting is left as it was


def test_budget_from_the_environment(tmp_path, monkeypatch):
    assert max_image_pixels() == MAX_IMAGE_PIXELS == 100_000_000
    small = _save(Image.new("RGB", (40, 30)), tmp_path / "small.png")  # 1200 pixels
    monkeypatch.setenv(PIXEL_BUDGET_ENV, "1000")
    with pytest.raises(DataError, match="small.png: image is 40×30 = 1,200 pixels, above the pixel budget of 1,000"):
        read_image_file(small)
    monkeypatch.setenv(PIXEL_BUDGET_ENV, "1200")
    assert read_image_file(small).shape == (30, 40, 3)
    # A budget above Pillow's hard limit (2 × 89.5 M) is honoured too: the header opens, and its own
    # message says what is too much.
    monkeypatch.setenv(PIXEL_BUDGET_ENV, "500000000")
    assert check_image_file(png_claiming(tmp_path / "b.png", 20000, 20000)) == (20000, 20000)
    with pytest.raises(DataError, match="c.png: image is 30000×20000 = 600,000,000 pixels, above the pixel budget"):
        check_image_file(png_claiming(tmp_path / "c.png", 30000, 20000))
    assert Image.MAX_IMAGE_PIXELS == 89478485
    for wrong in ("lots", "0", "-5", "1e8"):
        monkeypatch.setenv(PIXEL_BUDGET_ENV, wrong)
        with pytest.raises(DermogazeError, match=f"{PIXEL_BUDGET_ENV}=.*positive whole number"):
            read_image_file(small)


def test_empty_and_zero_byte_files(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match="zero.png: not a readable image"):
        read_image_file(tmp_path / "zero.png")
    with pytest.raises(DataError, match="w.png: not a readable image"):  # Pillow refuses a 0-wide PNG
        read_image_file(png_claiming(tmp_path / "w.png", 0, 5))


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
