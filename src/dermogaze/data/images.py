"""Images: the one decoder, resizer and normaliser of dermogaze.

Every picture dermogaze reads goes through :func:`read_image_file`: the lesion images, lesion
masks and superpixel maps of an ISIC collection (:mod:`dermogaze.data.isic2017`,
:mod:`dermogaze.data.prepare`) and a user's own images (:mod:`dermogaze.explain.run`). Decoding runs in
four steps, the same for every caller:

1. **Pixel budget.** The header is read and a file of more than :func:`max_image_pixels` pixels
   (``W × H``, default :data:`MAX_IMAGE_PIXELS`, environment variable ``DERMOGAZE_MAX_IMAGE_PIXELS``)
   is refused before a single pixel is decoded: a :class:`~dermogaze.errors.DataError` naming the
   file, its size and the budget. Pillow's own decompression-bomb warning is silenced; its error
   (above twice ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 million pixels, for the header or for a
   frame inside the file such as an icon's) becomes the same one-line DataError. A budget above
   Pillow's limit raises that limit for the duration of the call.
2. **Decoding**, for a JPEG with ``draft_size`` at a reduced DCT scale (a 1/2, 1/4 or 1/8 size
   decode, much less work when the image is resized to ``draft_size`` anyway). Other formats
   (PNG...) have no reduced decode: they are decoded whole, which step 1 keeps bounded.
3. **Orientation**: the EXIF orientation is applied only with ``exif_orientation=True`` (users'
   images, as a viewer shows them). ISIC files keep their stored pixel grid, on which their
   annotations are drawn.
4. **Mode conversion** to ``"RGB"`` (H, W, 3) or ``"L"`` (H, W) uint8, by one rule per file mode:

   ===================  ========================================================================
   file mode            conversion
   ===================  ========================================================================
   ``L``, ``RGB``       none (RGB → L: Pillow's ITU-R 601-2 luma, L → RGB: the value thrice)
   ``1``                0 → 0, 1 → 255
   ``I;16`` ``I;16B``   16 → 8 bits by the high byte ``v >> 8`` (65535 → 255, 32768 → 128,
   ``I;16L``            32767 → 127), which is what Pillow does with 16-bit colour files
   ``I`` (32-bit int)   clipped to [0, 65535], then as ``I;16``
   ``F`` (32-bit float) values in [0, 1]: ``round(255 · clip(v, 0, 1))`` (half to even, so
                        0.5 → 128), NaN → 0, ±inf clipped
   ``P``                through the palette (Pillow)
   ``CMYK``             Pillow: ``R = round((255 - C)(255 - K) / 255)``, likewise G and B
   ``YCbCr`` ``LAB``…   Pillow's conversion to RGB
   with transparency    ``RGBA``, ``LA``, ``PA``, ``RGBa`` and ``P``/``L``/``RGB`` files with a
                        transparent colour: composited on white,
                        ``c' = round((c · a + 255 · (255 - a)) / 255)`` in integers (an odd
                        divisor, so never a tie); RGBA (0, 0, 0, 128) → (127, 127, 127)
   ===================  ========================================================================

   Annotations (``annotation=True``: lesion masks, superpixel maps) hold labels, not colours: their
   alpha channel or transparent colour is dropped, never composited (it would change the labels).

A missing, truncated, undecodable or over-budget file raises :class:`~dermogaze.errors.DataError`
naming it; no other exception comes out of a hostile file.

The default budget, 100 million pixels, is three times the largest ISIC images (about
6700 × 4500 = 30 million pixels): every real dermoscopy image passes, one RGB copy of an image at
the budget is 300 MB, and a file whose header claims more (a decompression bomb: a few kilobytes
that would decode to gigabytes) is refused at once. Set ``DERMOGAZE_MAX_IMAGE_PIXELS`` for larger
pictures; it is read at every call, so the cache's worker processes inherit it.

Resizing: :func:`resize_image` (bilinear, antialiased, Pillow) for pictures, :func:`resize_nearest`
(source pixel ``floor((i + 0.5) * n_in / n_out)``, as Pillow's nearest) for masks and label maps.
:func:`normalise` turns a uint8 image into the network's float input ``(x / 255 - mean) / std``;
:func:`load_user_image` does all of it for one of a user's files.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DataError, DermogazeError
from ..files import check_file_kind

#: Default pixel budget (``W × H`` of the file): see the module docstring for the choice.
MAX_IMAGE_PIXELS = 100_000_000

#: Environment variable that sets another pixel budget (a positive whole number of pixels).
PIXEL_BUDGET_ENV = "DERMOGAZE_MAX_IMAGE_PIXELS"

#: What Pillow raises for a file it cannot open or decode: ``OSError`` (``UnidentifiedImageError``,
#: truncated data) above all; ``SyntaxError``, ``ValueError``, ``EOFError`` and ``struct.error`` come
#: out of some plugins on damaged headers.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

#: Modes that carry transparency of their own (``P``, ``L``, ``RGB`` may carry a transparent colour).
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")

#: Rows composited at a time (bounds the uint16 working copy of a large RGBA image).
_BLOCK_ROWS = 512

#: Serialises decoding while Pillow's own limit is raised for a budget above it (re-entrant: a draft
#: that comes out too small is decoded again inside the first call).
_PILLOW_LIMIT_LOCK = threading.RLock()


def max_image_pixels() -> int:
    """The pixel budget: ``DERMOGAZE_MAX_IMAGE_PIXELS`` if set, else :data:`MAX_IMAGE_PIXELS`.

    Raises:
        DermogazeError: the variable is set to something other than a positive whole number.
    """
    raw = os.environ.get(PIXEL_BUDGET_ENV, "").strip()
    if not raw:
        return MAX_IMAGE_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DermogazeError(
            f"{PIXEL_BUDGET_ENV}={raw!r}: expected a positive whole number of pixels (default {MAX_IMAGE_PIXELS})"
        )
    return value


@contextlib.contextmanager
def _pillow_limit(budget: int) -> Iterator[None]:
    """Pillow's own limit raised to ``budget`` while inside, only when the budget is above Pillow's hard limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or budget <= 2 * limit:  # the usual case: nothing to change
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = budget
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


@contextlib.contextmanager
def _decoding(path: Path, what: str) -> Iterator[int]:
    """The context of every Pillow call on ``path``; yields the pixel budget.

    A Pillow error becomes a DataError naming ``path``. Pillow's decompression-bomb warning is
    silenced, and its error (raised for a header, or for a frame or layer inside the file, above
    Pillow's own hard limit of ``2 × PIL.Image.MAX_IMAGE_PIXELS``) is reported against the budget.
    """
    budget = max_image_pixels()
    with _pillow_limit(budget), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield budget
        except Image.DecompressionBombError as exc:  # the header, or a frame inside the file (ICO, GIF...)
            raise DataError(f"{path}: {what} is above the pixel budget of {budget:,} (Pillow: {exc})") from None
        except _DECODE_ERRORS as exc:
            raise DataError(
                f"{path}: not a readable {what} (unreadable or truncated file; {exc.__class__.__name__}: {exc})"
            ) from None


def _check_size(path: Path, what: str, im: Image.Image, budget: int) -> None:
    """Refuse an image of more than ``budget`` pixels, or of none (closing it)."""
    width, height = im.size
    if width * height > budget:
        im.close()
        raise DataError(
            f"{path}: {what} is {width}×{height} = {width * height:,} pixels, above the pixel budget of "
            f"{budget:,} (set {PIXEL_BUDGET_ENV} to allow more)"
        )
    if width == 0 or height == 0:
        im.close()
        raise DataError(f"{path}: empty {what} ({width}×{height})")


def _open(path: Path, what: str, budget: int) -> Image.Image:
    """Open ``path`` (header only, inside :func:`_decoding`) and check its size. The caller closes the image."""
    if not check_file_kind(path, what, "give a file that holds the image").is_file():
        raise DataError(f"{path}: no such {what} file")
    im = Image.open(path)  # Pillow raises DecompressionBombError itself above twice its own limit
    _check_size(path, what, im, budget)
    return im


def check_image_file(path: str | Path, what: str = "image") -> tuple[int, int]:
    """Cheap check that ``path`` is an image Pillow can open within the pixel budget (header only).

    Args:
        path: the file.
        what: what the file is, for the error message (``"image"``, ``"lesion mask"``...).

    Returns:
        ``(width, height)``.

    Raises:
        DataError: missing file, not an image, or more pixels than :func:`max_image_pixels` (names
            the file). A file whose header is fine but whose data is truncated is only caught when
            :func:`read_image_file` decodes it.
    """
    path = Path(path)
    with _decoding(path, what) as budget, _open(path, what, budget) as im:
        return im.size


# --------------------------------------------------------------------------------------------
# Mode conversion (the table of the module docstring)
# --------------------------------------------------------------------------------------------


def _deep_to_eight_bit(im: Image.Image) -> Image.Image:
    """``I;16*``, ``I`` and ``F`` images → ``L``: high byte, clipped high byte, [0, 1] scaled."""
    if im.mode == "F":
        x = np.nan_to_num(np.array(im, dtype=np.float32), nan=0.0)
        np.clip(x, 0.0, 1.0, out=x)
        x *= 255.0
        return Image.fromarray(np.rint(x, out=x).astype(np.uint8))
    x = np.asarray(im)  # uint16 (either byte order) or int32
    if im.mode == "I":
        x = np.clip(x, 0, 65535)
    return Image.fromarray((x >> 8).astype(np.uint8))  # the high byte


def _has_transparency(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``(H, W, 4)`` uint8 → ``(H, W, 3)`` uint8: ``round((c · a + 255 · (255 - a)) / 255)``."""
    out = np.empty((*rgba.shape[:2], 3), np.uint8)
    for top in range(0, rgba.shape[0], _BLOCK_ROWS):
        block = rgba[top : top + _BLOCK_ROWS].astype(np.uint16)  # (h, W, 4); every term below stays < 2**16
        colour, alpha = block[..., :3], block[..., 3:]
        out[top : top + _BLOCK_ROWS] = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return out


def _convert(im: Image.Image, mode: str, *, annotation: bool) -> Image.Image:
    """The mode conversion of the module docstring (Pillow calls only; the caller catches their errors)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = _deep_to_eight_bit(im)
    if _has_transparency(im) and not annotation:
        im = Image.fromarray(_composite_on_white(np.asarray(im if im.mode == "RGBA" else im.convert("RGBA"))))
    if im.mode == mode:
        return im
    try:
        return im.convert(mode)
    except ValueError:  # no direct conversion (e.g. LAB → L): through RGB
        return im.convert("RGB").convert(mode)


def read_image_file(
    path: str | Path,
    mode: str = "RGB",
    *,
    exif_orientation: bool = True,
    annotation: bool = False,
    draft_size: int | None = None,
    source_modes: Sequence[str] | None = None,
    what: str = "image",
) -> np.ndarray:
    """Decode an image file to a uint8 array (the four steps of the module docstring).

    Args:
        path: any file Pillow reads (JPEG, PNG, TIFF, BMP, WebP...).
        mode: ``"RGB"`` or ``"L"``; every file mode is converted by the rules of the module docstring.
        exif_orientation: apply the EXIF orientation, as a viewer shows the picture. ``False`` keeps
            the stored pixel grid (dataset files, whose annotations are drawn on it).
        annotation: the file holds labels (a mask, a superpixel map): transparency is dropped
            instead of composited on white.
        draft_size: decode a JPEG at the reduced DCT scale (1/2, 1/4 or 1/8) that Pillow chooses
            so that both sides stay at least ``draft_size``; ``None`` = full size. A draft that
            would come out smaller than asked is decoded again at full size.
        source_modes: if given, the file's own mode must be one of them.
        what: what the file is, for error messages.

    Returns:
        uint8 ``(H, W, 3)`` for ``"RGB"``, ``(H, W)`` for ``"L"``; with ``draft_size``, ``H, W`` may
        be smaller than the file's.

    Raises:
        DataError: missing, truncated or undecodable file, an empty image, more pixels than
            :func:`max_image_pixels`, or a mode outside ``source_modes`` (names the file).
    """
    path = Path(path)
    with _decoding(path, what) as budget, _open(path, what, budget) as im:
        if source_modes is not None and im.mode not in source_modes:
            raise DataError(f"{path}: {what} has mode {im.mode}, expected {' or '.join(source_modes)}")
        if draft_size is not None and im.format == "JPEG":
            full_w, full_h = im.size
            im.draft(mode, (draft_size, draft_size))
            if min(im.size) < min(draft_size, full_w, full_h):
                return read_image_file(path, mode, exif_orientation=exif_orientation, annotation=annotation,
                                       source_modes=source_modes, what=what)
        im.load()
        _check_size(path, what, im, budget)  # a frame larger than the header said (ICO, GIF...)
        shown = ImageOps.exif_transpose(im) if exif_orientation else im
        return np.asarray(_convert(shown, mode, annotation=annotation))


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
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 ``(x / 255 - mean) / std`` (docs/design.md §3).

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

    The picture as displayed (:func:`read_image_file`: EXIF orientation, then the same mode
    conversion as the cache) is resized whole (bilinear, antialiased, as the cache does) to
    ``image_size × image_size`` without a crop, then normalised with the training mean/std. It is
    decoded at full size, without a JPEG draft: ``original`` is the file's own pixel grid, in which
    :mod:`dermogaze.explain.record` reports gazes and image sizes; the pixel budget bounds the cost.

    Args:
        path: a JPEG/PNG (or other Pillow-readable) file.
        image_size: model input size.
        mean: per-channel training mean in [0, 1].
        std: per-channel training std.

    Returns:
        ``(input (3, S, S) float32, original (H, W, 3) uint8)``.

    Raises:
        DataError: missing or unreadable file, or more pixels than :func:`max_image_pixels`.
    """
    original = read_image_file(path)
    return normalise(resize_image(original, image_size), mean, std), original
