"""Images: the one decoder, resizer and normaliser of dermogaze.

Every picture dermogaze reads goes through :func:`read_image_file`: the lesion images, lesion
masks and superpixel maps of an ISIC collection (:mod:`dermogaze.data.isic2017`,
:mod:`dermogaze.data.cache`) and a user's own images (:mod:`dermogaze.explain`). What differs
between them is a parameter:

==================  =========================================================================
``mode``            Pillow mode of the result: ``"RGB"`` (H, W, 3) or ``"L"`` (H, W), uint8
``as_displayed``    the picture as a viewer shows it: EXIF orientation applied, 16-bit values
                    scaled to the file's maximum, transparency composited on white (users'
                    images). Off for ISIC files: their annotations are drawn on the stored pixel
                    grid, which a transposed image would no longer match.
``draft_size``      JPEG draft decoding at a reduced DCT scale (the cache resizes to 256 px)
``source_modes``    the file modes accepted (a superpixel map must be a colour image)
==================  =========================================================================

A missing, truncated or undecodable file raises :class:`~dermogaze.errors.DataError` naming it.

Resizing: :func:`resize_image` (bilinear, antialiased, Pillow) for pictures, :func:`resize_nearest`
(source pixel ``floor((i + 0.5) * n_in / n_out)``, as Pillow's nearest) for masks and label maps.
:func:`normalise` turns a uint8 image into the network's float input ``(x / 255 - mean) / std``;
:func:`load_user_image` does all of it for one of a user's files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError

#: What Pillow raises for a file it cannot open or decode (``UnidentifiedImageError`` is an ``OSError``).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

#: Integer modes with more than 8 bits per pixel.
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I")


@contextlib.contextmanager
def _open(path: Path, what: str) -> Iterator[Image.Image]:
    """Open ``path`` with Pillow; a missing file or a Pillow error inside the block becomes a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: no such {what} file")
    try:
        with Image.open(path) as im:
            yield im
    except _DECODE_ERRORS as exc:
        raise DataError(
            f"{path}: not a readable {what} (unreadable or truncated file; {exc.__class__.__name__}: {exc})"
        ) from None


def check_image_file(path: str | Path, what: str = "image") -> tuple[int, int]:
    """Cheap check that ``path`` is an image Pillow can open (header only); returns ``(width, height)``.

    Args:
        path: the file.
        what: what the file is, for the error message (``"image"``, ``"lesion mask"``...).

    Raises:
        DataError: missing file or not an image (names the file). A file whose header is fine but
            whose data is truncated is only caught when :func:`read_image_file` decodes it.
    """
    with _open(Path(path), what) as im:
        return im.size


def _as_displayed(im: Image.Image) -> Image.Image:
    """EXIF orientation applied, 16-bit values scaled to the maximum, transparency composited on white."""
    im = ImageOps.exif_transpose(im)
    if im.mode in _DEEP_MODES:
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(arr / max(arr.max(), 1.0) * 255.0, 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im


def read_image_file(
    path: str | Path,
    mode: str = "RGB",
    *,
    as_displayed: bool = True,
    draft_size: int | None = None,
    source_modes: Sequence[str] | None = None,
    what: str = "image",
) -> np.ndarray:
    """Decode an image file to a uint8 array.

    Args:
        path: any file Pillow reads (JPEG, PNG, TIFF, BMP, WebP...).
        mode: Pillow mode of the result (``"RGB"``, ``"L"``); palette, greyscale and colour files
            are converted to it.
        as_displayed: apply the EXIF orientation, scale 16-bit values to the file's maximum and
            composite transparency on white, as a viewer shows the picture. ``False`` keeps the
            stored pixel grid (dataset files, whose annotations are drawn on it).
        draft_size: decode a JPEG at the reduced DCT scale (1/2, 1/4 or 1/8) that Pillow chooses
            so that both sides stay at least ``draft_size`` (much less work when the image is
            resized to that size anyway); ``None`` = full size. A draft that would come out
            smaller than asked is decoded again at full size.
        source_modes: if given, the file's own mode must be one of them.
        what: what the file is, for error messages.

    Returns:
        uint8 ``(H, W, 3)`` for ``"RGB"``, ``(H, W)`` for ``"L"``; with ``draft_size``, ``H, W`` may
        be smaller than the file's.

    Raises:
        DataError: missing, truncated or undecodable file, an empty image, or a mode outside
            ``source_modes`` (names the file).
    """
    path = Path(path)
    with _open(path, what) as im:
        if source_modes is not None and im.mode not in source_modes:
            raise DataError(f"{path}: {what} has mode {im.mode}, expected {' or '.join(source_modes)}")
        if draft_size is not None and im.format == "JPEG":
            full_w, full_h = im.size
            im.draft(mode, (draft_size, draft_size))
            if min(im.size) < min(draft_size, full_w, full_h):
                return read_image_file(path, mode, as_displayed=as_displayed, source_modes=source_modes, what=what)
        im.load()
        if as_displayed:
            im = _as_displayed(im)
        array = np.asarray(im if im.mode == mode else im.convert(mode))
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path}: empty {what}")
    return array


# --------------------------------------------------------------------------------------------
# Resizing
# --------------------------------------------------------------------------------------------


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output index for a nearest resize: ``floor((i + 0.5) * n_in / n_out)``.

    Computed in integers (``((2i + 1) * n_in) // (2 * n_out)``), so no rounding error can move a pixel.
    """
    return (2 * np.arange(n_out, dtype=np.int64) + 1) * n_in // (2 * n_out)


def resize_nearest(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest resize of the first two axes of ``array`` (any dtype) to ``(size, size)``."""
    rows = nearest_indices(array.shape[0], size)
    cols = nearest_indices(array.shape[1], size)
    return array[rows[:, None], cols[None, :]]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased, Pillow) resize of a uint8 ``(H, W, 3)`` image to ``(size, size, 3)``."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


# --------------------------------------------------------------------------------------------
# Network input
# --------------------------------------------------------------------------------------------


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 ``(x / 255 - mean) / std`` (SPEC §3).

    The same values as :class:`~dermogaze.data.transforms.ToNormalizedFloat` up to float rounding
    (that transform computes ``(x - 255 · mean) / (255 · std)``).
    """
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0  # (3, H, W), a copy
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def load_user_image(
    path: str | Path, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, np.ndarray]:
    """Read a user's image of any size and prepare it like the training images.

    The picture as displayed (:func:`read_image_file`) is resized whole (bilinear, antialiased, as
    the cache does) to ``image_size × image_size`` without a crop, then normalised with the
    training mean/std.

    Args:
        path: a JPEG/PNG (or other Pillow-readable) file.
        image_size: model input size.
        mean: per-channel training mean in [0, 1].
        std: per-channel training std.

    Returns:
        ``(input (3, S, S) float32, original (H, W, 3) uint8)``.

    Raises:
        DataError: missing or unreadable file.
    """
    original = read_image_file(path)
    return normalise(resize_image(original, image_size), mean, std), original
