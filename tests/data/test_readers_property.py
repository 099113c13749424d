"""Property tests of the readers of untrusted files: any input parses into a valid sample or raises
:class:`~dermogaze.errors.DermogazeError`, never another exception.

Covered: ``_features.json`` (random JSON), the Part 3 label CSV and the metadata CSV (random text and
rows), superpixel maps (random modes, sizes and values against the JSON list length, with an oracle
for which ones are valid) and images (random modes, formats and sizes, intact, truncated, with
flipped bytes, empty or random bytes). Hypothesis and function-scoped fixtures do not mix, so each
test writes into one folder of ``tmp_path_factory`` and overwrites its files per example.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dermogaze.data import isic2017
from dermogaze.data import prepare as prepare_mod
from dermogaze.data.images import load_user_image, read_image_file
from dermogaze.data.isic2017 import BadSample, IsicSample
from dermogaze.data.metadata import MetadataTable, read_metadata_csv
from dermogaze.errors import DermogazeError
from dermogaze.structures import DERMOSCOPIC_FEATURES, NUM_STRUCTURES

# Damaged TIFF headers make Pillow warn ("Corrupt EXIF data"...) before it raises or recovers: by design.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fast(max_examples: int) -> settings:
    """A few seconds per test; no example database written into the repository."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("readers")


# --------------------------------------------------------------------------------------------
# _features.json
# --------------------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # NaN and infinities included
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([0, 1, 0.5, 1e300, -0.0]),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
# Mostly valid lists (numbers in [0, 1]) with an occasional stray value, so both outcomes are common.
FEATURE_LISTS = st.one_of(
    st.lists(st.floats(min_value=0.0, max_value=1.0) | st.sampled_from([0, 1]), min_size=3, max_size=3),
    st.lists(st.floats(min_value=0.0, max_value=1.0) | JSON_SCALARS, max_size=4),
    JSON_VALUES,
)
FEATURE_DOCUMENTS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({name: FEATURE_LISTS for name in DERMOSCOPIC_FEATURES}, optional={"extra": JSON_VALUES}),
    st.dictionaries(st.sampled_from([*DERMOSCOPIC_FEATURES, "other"]), FEATURE_LISTS, max_size=5),
)


def _valid_features(doc) -> bool:
    """docs/design.md §2, from its definition: four features, equally long lists of numbers in [0, 1]."""
    if not isinstance(doc, dict) or not all(name in doc for name in DERMOSCOPIC_FEATURES):
        return False
    lists = [doc[name] for name in DERMOSCOPIC_FEATURES]
    if not all(isinstance(values, list) for values in lists):
        return False
    numbers = all(type(v) in (int, float) and 0 <= v <= 1 for values in lists for v in values)
    return numbers and len({len(values) for values in lists}) == 1


@fast(200)
@given(doc=FEATURE_DOCUMENTS)
def test_features_json_is_parsed_or_refused(folder, doc):
    path = folder / "ISIC_0000001_features.json"
    path.write_text(json.dumps(doc))
    try:
        out = isic2017.read_features(path)
    except DermogazeError as exc:
        assert str(exc).startswith(f"{path}: ")
        assert not _valid_features(doc)
        return
    assert _valid_features(doc)
    assert list(out) == list(DERMOSCOPIC_FEATURES)
    assert len({len(v) for v in out.values()}) == 1
    for name, values in out.items():
        assert values.dtype == np.float64 and values.ndim == 1
        assert ((values >= 0) & (values <= 1)).all()
        np.testing.assert_array_equal(values, np.asarray(doc[name], dtype=np.float64))


@fast(100)
@given(raw=st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_features_json_of_random_bytes_is_refused(folder, raw):
    path = folder / "ISIC_0000002_features.json"
    path.write_bytes(raw)
    with pytest.raises(DermogazeError):
        isic2017.read_features(path)


# --------------------------------------------------------------------------------------------
# Part 3 label CSV and metadata CSV
# --------------------------------------------------------------------------------------------

CSV_CELLS = st.one_of(
    st.sampled_from(["ISIC_0000001", "isic_0000001", "ISIC_0000002", "", " ", "0.0", "1.0", "0.5", "nan", "inf",
                     "-1", "1e400", "x", '"a,b"', '"', "unknown", "female", "male", "55", "-3", "\x00", "\ufeff"]),
    st.text(max_size=6),
)
CSV_HEADERS = st.sampled_from([
    "image_id,melanoma,seborrheic_keratosis", "image_id,melanoma", " image_id , melanoma ", "melanoma,image_id",
    "image_id,age_approximate,sex", "image_id,sex", "image_id,nevus", "id,melanoma", "", "image_id,melanoma,melanoma",
])
CSV_TEXTS = st.one_of(
    st.builds(
        lambda header, rows, end: header + "\n" + "\n".join(",".join(row) for row in rows) + end,
        CSV_HEADERS,
        st.lists(st.lists(CSV_CELLS, min_size=0, max_size=4), max_size=6),
        st.sampled_from(["", "\n", "\r\n"]),
    ),
    st.text(max_size=80),
)


@fast(300)
@given(text=CSV_TEXTS, as_bytes=st.booleans(), junk=st.binary(max_size=8))
def test_label_csv_is_parsed_or_refused(folder, text, as_bytes, junk):
    path = folder / "ISIC-2017_Training_Part3_GroundTruth.csv"
    path.write_bytes(text.encode("utf-8") + (junk if as_bytes else b""))
    try:
        rows, problems = isic2017.read_labels_csv(path)
    except DermogazeError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    ids = [image_id for image_id, _ in rows]
    assert len({i.lower() for i in ids}) == len(ids)
    for image_id, value in rows:
        assert isinstance(image_id, str) and image_id == image_id.strip() and image_id
        assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0)
    assert all(isinstance(p, BadSample) and p.file == str(path) for p in problems)
    assert len(problems) >= sum(value is None for _, value in rows)


@fast(200)
@given(text=CSV_TEXTS, junk=st.binary(max_size=8))
def test_metadata_csv_is_parsed_or_refused(folder, text, junk):
    path = folder / "ISIC-2017_Training_Data_metadata.csv"
    path.write_bytes(text.encode("utf-8") + junk)
    try:
        table = read_metadata_csv(path)
    except DermogazeError as exc:
        assert str(exc).startswith(f"{path}: ")
        return
    assert isinstance(table, MetadataTable)
    for values in table.rows.values():
        age = values.get("age")
        assert age is None or (math.isfinite(age) and age >= 0)
        assert values.get("sex") in (None, "female", "male")


# --------------------------------------------------------------------------------------------
# Superpixel maps (through the cache's per-sample processing)
# --------------------------------------------------------------------------------------------

SUPERPIXEL_MODES = ("RGB", "RGBA", "P", "L", "LA", "I;16", "1")


@st.composite
def superpixel_cases(draw):
    mode = draw(st.sampled_from(SUPERPIXEL_MODES))
    width, height = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    n_bytes = len(Image.new(mode, (width, height)).tobytes())
    # Small channel values (valid indices) most of the time, any byte sometimes.
    small = st.integers(0, 12) if draw(st.booleans()) else st.integers(0, 255)
    data = bytes(draw(st.lists(small, min_size=n_bytes, max_size=n_bytes)))
    if mode in ("RGB", "RGBA") and draw(st.booleans()):  # G and B zero: indices 0..12
        pixels = np.frombuffer(data, np.uint8).reshape(height, width, -1).copy()
        pixels[..., 1:3] = 0
        data = pixels.tobytes()
    image = Image.frombytes(mode, (width, height), data)
    if mode == "P":
        image.putpalette(draw(st.lists(st.integers(0, 12) | st.integers(0, 255), min_size=3, max_size=96)))
    n_values = draw(st.integers(0, 40))
    same_size = draw(st.integers(0, 4)) > 0
    return image, n_values, same_size


@fast(60)
@given(case=superpixel_cases())
def test_superpixel_map_gives_a_valid_sample_or_an_error(folder, case):
    image, n_values, same_size = case
    width, height = image.size
    sample_size = (width, height) if same_size else (width + 1, height)
    paths = {
        "image": folder / "ISIC_0000003.png",
        "superpixels": folder / "ISIC_0000003_superpixels.png",
        "segmentation": folder / "ISIC_0000003_segmentation.png",
        "features": folder / "ISIC_0000003_features.json",
    }
    Image.new("RGB", sample_size, (20, 40, 60)).save(paths["image"])
    Image.new("L", sample_size, 255).save(paths["segmentation"])
    image.save(paths["superpixels"])
    rng = np.random.default_rng(n_values)
    paths["features"].write_text(json.dumps(
        {name: rng.integers(0, 2, n_values).tolist() for name in DERMOSCOPIC_FEATURES}
    ))
    # Oracle: an RGB(A) or palette map of the image's size whose every index has a value (the index
    # decoded from the file as saved: Pillow maps palette indices beyond a short palette into it).
    valid = image.mode in ("RGB", "RGBA", "P") and same_size
    if valid:
        with Image.open(paths["superpixels"]) as saved:
            rgb = np.asarray(saved.convert("RGB")).astype(np.int64)
        valid = int((rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)).max()) < n_values

    sample = IsicSample(id="ISIC_0000003", label=0, **paths)
    try:
        out = prepare_mod._process_sample(sample, 4, with_masks=True)
    except DermogazeError as exc:
        assert not valid, exc
        assert any(str(exc).startswith(f"{p}: ") for p in paths.values())
        return
    assert valid
    assert out.image.shape == (4, 4, 3) and out.image.dtype == np.uint8
    assert out.masks.shape == (NUM_STRUCTURES, 4, 4) and out.masks.dtype == bool
    assert out.superpixels.dtype == np.int32 and 0 <= out.superpixels.min() and out.superpixels.max() < n_values
    assert out.sp_features.shape == (n_values, len(DERMOSCOPIC_FEATURES))


# --------------------------------------------------------------------------------------------
# Images of any mode, format and state
# --------------------------------------------------------------------------------------------

# No ("YCbCr", "TIFF"): Pillow writes YCbCr TIFFs that it cannot decode itself ("image file is truncated"),
# so such a file is not an intact image for any reader built on Pillow.
MODE_FORMATS = (
    ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("LA", "PNG"),
    ("P", "PNG"), ("1", "PNG"), ("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("CMYK", "TIFF"),
    ("LAB", "TIFF"), ("RGB", "BMP"), ("P", "GIF"), ("RGB", "WEBP"), ("RGBA", "WEBP"),
)


@st.composite
def image_files(draw):
    """``(bytes, intact)``: an encoded image, possibly damaged (truncated, flipped bytes), or not an image."""
    state = draw(st.sampled_from(["intact", "intact", "truncated", "flipped", "empty", "random"]))
    if state == "empty":
        return b"", False
    if state == "random":
        return draw(st.binary(min_size=1, max_size=200)), False
    mode, fmt = draw(st.sampled_from(MODE_FORMATS))
    size = (draw(st.integers(1, 24)), draw(st.integers(1, 24)))
    n_bytes = len(Image.new(mode, size).tobytes())
    seed = draw(st.integers(0, 2**32 - 1))
    image = Image.frombytes(mode, size, np.random.default_rng(seed).bytes(n_bytes))
    if mode == "P":
        image.putpalette(list(np.random.default_rng(seed + 1).integers(0, 256, 768)))
    buf = io.BytesIO()
    kwargs = {"transparency": 0} if mode == "P" and draw(st.booleans()) else {}
    image.save(buf, fmt, **kwargs)
    data = buf.getvalue()
    if state == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))], False
    if state == "flipped":
        damaged = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            damaged[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(damaged), False
    return data, True


def _check(array: np.ndarray, ndim: int) -> None:
    assert array.dtype == np.uint8 and array.ndim == ndim and min(array.shape[:2]) > 0
    if ndim == 3:
        assert array.shape[2] == 3


@fast(300)
@given(case=image_files(), draft=st.integers(1, 32))
def test_any_image_file_is_read_or_refused(folder, case, draft):
    data, intact = case
    path = folder / "ISIC_0000004.img"
    path.write_bytes(data)
    readers = (
        (lambda: read_image_file(path), 3),  # a user's picture (explain)
        (lambda: read_image_file(path, exif_orientation=False, draft_size=draft), 3),  # a dataset image (cache)
        (lambda: read_image_file(path, "L", exif_orientation=False, annotation=True, what="lesion mask"), 2),
        (lambda: load_user_image(path, 8, (0.5,) * 3, (0.25,) * 3)[1], 3),
    )
    for read, ndim in readers:
        try:
            array = read()
        except DermogazeError as exc:
            assert not intact, exc
            assert str(exc).startswith(f"{path}: ")
            continue
        _check(array, ndim)
