"""prepare / load_info / load_split on the tiny crafted collection (see conftest.py)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from dermogaze.cli import main as cli_main
from dermogaze.data import cache as cache_mod
from dermogaze.data import prepare as prepare_mod
from dermogaze.data.cache import format_stats, load_info, load_split
from dermogaze.data.images import load_user_image, resize_image
from dermogaze.data.metadata import group_labels
from dermogaze.data.prepare import prepare
from dermogaze.errors import DataError
from dermogaze.structures import STRUCTURES
from support import png_claiming

SIZE = 16  # the 32 px crafted images are halved: nearest takes source pixel 2i+1


def block(mask: np.ndarray, b: int) -> None:
    """Set superpixel block ``b`` (8×8 at 32 px → 4×4 at 16 px) in a (16, 16) mask."""
    r, c = divmod(b, 4)
    mask[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = True


def expected_masks(features: dict[str, list[int]]) -> np.ndarray:
    """Hand-derived (6, 16, 16) masks: lesion rows/cols 4..27 at 32 px are rows/cols 2..13 at 16 px."""
    lesion = np.zeros((SIZE, SIZE), bool)
    lesion[2:14, 2:14] = True
    feats = {name: np.zeros((SIZE, SIZE), bool) for name in STRUCTURES[2:]}
    for name, blocks in features.items():
        for b in blocks:
            block(feats[name], b)
    dermo = feats["pigment_network"] | feats["negative_network"] | feats["milia_like_cyst"] | feats["streaks"]
    return np.stack([lesion & ~dermo, ~(lesion | dermo), *feats.values()])


@pytest.fixture
def tiny_cache(tiny_isic_dir, tmp_path):
    out = tmp_path / "cache"
    info = prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    return out, info


def test_prepare_info(tiny_cache):
    out, info = tiny_cache
    assert load_info(out) == info
    assert info["size"] == SIZE and info["splits"] == ["train", "val", "test"]
    assert info["counts"] == {"train": 4, "val": 2, "test": 1}
    assert info["melanoma"] == {"train": 2, "val": 1, "test": 0}
    assert info["official_splits"]["test"] == "Test_v2"
    assert info["has_masks"] and info["has_superpixels"]
    assert info["structures"] == list(STRUCTURES)
    assert info["skipped"] == []
    assert info["metadata"] == ["age", "sex"]  # conftest writes a metadata CSV per split
    # Hand-computed from the four training colours (200,100,50) (100,150,200) (50,50,50) (250,240,10).
    np.testing.assert_allclose(info["mean"], np.array([150.0, 135.0, 77.5]) / 255, rtol=1e-12)
    np.testing.assert_allclose(info["std"], np.sqrt([6250.0, 4925.0, 5268.75]) / 255, rtol=1e-12)
    # Presences: all four images hold lesion and skin, pigment network in 1 and 4, the rest in one each
    # (the 0.4 milia value of image 3 is below the 0.5 threshold).
    assert info["presences"] == [4, 4, 2, 1, 1, 1]
    # Pixels at 16 px (1024 in all): lesion' 128+140+144+112, skin 112+100+112+112, 16 per block.
    np.testing.assert_allclose(info["pixel_fraction"], np.array([524, 436, 32, 16, 16, 16]) / 1024)


def test_prepare_arrays(tiny_cache):
    out, info = tiny_cache
    train = load_split(out, "train")
    assert len(train) == 4
    assert train.ids == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
    assert train.labels.dtype == np.float32  # NaN = unknown diagnosis
    np.testing.assert_array_equal(train.labels, [1, 0, 0, 1])
    assert train.images.dtype == np.uint8 and train.images.shape == (4, SIZE, SIZE, 3)
    np.testing.assert_array_equal(train.images[0], np.full((SIZE, SIZE, 3), (200, 100, 50)))
    np.testing.assert_array_equal(train.images[3], np.full((SIZE, SIZE, 3), (250, 240, 10)))
    # mean/std against numpy over the stored images.
    pixels = np.asarray(train.images).reshape(-1, 3) / 255.0
    np.testing.assert_allclose(info["mean"], pixels.mean(0), rtol=1e-10)
    np.testing.assert_allclose(info["std"], pixels.std(0), rtol=1e-10)

    assert train.masks.dtype == bool and train.masks.shape == (4, 6, SIZE, SIZE)
    np.testing.assert_array_equal(train.masks[0], expected_masks({"pigment_network": [5]}))
    np.testing.assert_array_equal(train.masks[1], expected_masks({"milia_like_cyst": [3]}))
    np.testing.assert_array_equal(train.masks[2], expected_masks({}))
    np.testing.assert_array_equal(
        train.masks[3], expected_masks({"pigment_network": [5], "negative_network": [10], "streaks": [10]})
    )
    # Known pixels of image 1: (5, 5) is pigment network (not lesion, not skin), (3, 3) lesion, (0, 0) skin.
    m = train.masks[0]
    assert m[:, 5, 5].tolist() == [False, False, True, False, False, False]
    assert m[:, 3, 3].tolist() == [True, False, False, False, False, False]
    assert m[:, 0, 0].tolist() == [False, True, False, False, False, False]
    assert m[:, 14, 14].tolist() == [False, True, False, False, False, False]  # source pixel 29 > 27

    r, c = np.mgrid[0:SIZE, 0:SIZE]
    assert train.superpixels.dtype == np.int32 and train.superpixels.shape == (4, SIZE, SIZE)
    np.testing.assert_array_equal(train.superpixels[2], 300 + 4 * (r // 4) + c // 4)
    assert len(train.sp_features) == 4
    f0 = train.sp_features[0]
    assert f0.dtype == np.float32 and f0.shape == (316, 4)
    np.testing.assert_allclose(f0[305], [0.6, 0, 0, 0], rtol=1e-6)
    assert np.count_nonzero(f0) == 1
    np.testing.assert_allclose(train.sp_features[2][306], [0, 0, 0.4, 0], rtol=1e-6)
    np.testing.assert_array_equal(train.sp_features[3][310], [0, 1, 0, 1])


def test_prepare_other_splits(tiny_cache):
    out, _ = tiny_cache
    val = load_split(out, "val")
    assert val.ids == ["ISIC_0000011", "ISIC_0000012"]
    np.testing.assert_array_equal(val.labels, [1, 0])
    np.testing.assert_allclose(val.images[0].reshape(-1, 3).mean(0), (120, 80, 60), atol=3)  # the .JPG
    np.testing.assert_array_equal(val.masks[0], expected_masks({"streaks": [0]}))
    np.testing.assert_array_equal(val.masks[1], expected_masks({}))  # read from _Segmentation.png
    test = load_split(out, "test")  # nested Data folder
    assert test.ids == ["ISIC_0000021"]
    np.testing.assert_array_equal(test.masks[0], expected_masks({"pigment_network": [15]}))


def test_bilinear_resize_of_a_patterned_image(tiny_isic_dir, tmp_path):
    """Images are resized with Pillow's bilinear filter, rows and columns not swapped (48×32 source)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    sp_path = tiny_isic_dir / "ISIC-2017_Training_Data" / "ISIC_0000003_superpixels.png"
    wide_map = np.repeat(np.asarray(Image.open(sp_path)), 3, axis=1)[:, ::2]  # (32, 48, 3), same indices
    Image.fromarray(wide_map).save(sp_path)
    seg = tiny_isic_dir / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000003_segmentation.png"
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(seg)
    Image.fromarray(pixels).save(tiny_isic_dir / "ISIC-2017_Training_Data" / "ISIC_0000003.png")
    out = tmp_path / "c"
    prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    train = load_split(out, "train")
    reference = np.asarray(Image.fromarray(pixels).resize((SIZE, SIZE), Image.BILINEAR))
    np.testing.assert_array_equal(train.images[2], reference)
    # Nearest on the 48 px axis samples columns floor((j + 0.5) * 3) = 3j + 1.
    source_map = np.asarray(Image.open(sp_path))
    cols = 3 * np.arange(SIZE) + 1
    rows = 2 * np.arange(SIZE) + 1
    rgb = source_map[rows][:, cols].astype(np.int64)
    np.testing.assert_array_equal(train.superpixels[2], rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16))
    assert train.masks[2][1].all()  # empty lesion, no feature → all skin


def test_sixteen_bit_and_transparent_images_are_cached_by_the_documented_rule(tiny_isic_dir, tmp_path):
    """Not white (16-bit) and not black (transparent): the cache converts like a user's image in explain."""
    data = tiny_isic_dir / TRAIN_DATA
    grey = np.full((32, 32), 51400, np.uint16)  # high byte 200
    Image.frombytes("I;16", (32, 32), grey.tobytes()).save(data / "ISIC_0000001.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 128  # black at alpha 128 on white: 255 · 127 / 255 = 127
    Image.frombytes("RGBA", (32, 32), rgba.tobytes()).save(data / "ISIC_0000003.png")
    prepare(tiny_isic_dir, tmp_path / "c", size=SIZE, progress=False)
    train = load_split(tmp_path / "c", "train")
    np.testing.assert_array_equal(train.images[0], np.full((SIZE, SIZE, 3), 200))
    np.testing.assert_array_equal(train.images[2], np.full((SIZE, SIZE, 3), 127))
    for k, name in ((0, "ISIC_0000001.png"), (2, "ISIC_0000003.png")):
        _, original = load_user_image(data / name, SIZE, (0.5,) * 3, (0.25,) * 3)
        np.testing.assert_array_equal(resize_image(original, SIZE), train.images[k])


def test_workers_give_identical_cache(tiny_isic_dir, tmp_path, tiny_cache):
    out1, info1 = tiny_cache
    out2 = tmp_path / "cache2"
    info2 = prepare(tiny_isic_dir, out2, size=SIZE, workers=2, progress=False)
    for key in ("counts", "mean", "std", "presences", "pixel_fraction"):
        assert info1[key] == info2[key]
    for split in info1["splits"]:
        a, b = load_split(out1, split), load_split(out2, split)
        assert a.ids == b.ids
        for name in ("images", "masks", "labels", "superpixels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_classification_only_collection(tiny_isic_factory, tmp_path):
    root = tiny_isic_factory(tmp_path / "cls", annotations=False)
    info = prepare(root, tmp_path / "cache", size=SIZE, progress=False)
    assert info["has_masks"] is False and info["has_superpixels"] is False
    assert info["annotations"] == {"part1": False, "part2": False}
    assert info["presences"] is None and info["pixel_fraction"] is None
    assert info["counts"] == {"train": 4, "val": 2, "test": 1}
    train = load_split(tmp_path / "cache", "train")
    assert train.masks is None and train.superpixels is None and train.sp_features is None
    np.testing.assert_array_equal(train.labels, [1, 0, 0, 1])
    assert not (tmp_path / "cache" / "train" / "masks.npy").exists()


# --------------------------------------------------------------------------- patient metadata

TRAIN_METADATA = "ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv"
# Out of order, mixed case, unknowns, a row without an image (ignored); ISIC_0000003 has no row.
CRAFTED_METADATA = """image_id,age_approximate,sex
ISIC_0000004,80,male
isic_0000002,unknown,female
ISIC_0000001,19,Unknown
ISIC_0000099,50,male
"""


def test_metadata_round_trip_aligned_with_ids(tiny_isic_dir, tmp_path):
    (tiny_isic_dir / TRAIN_METADATA).write_text(CRAFTED_METADATA)
    out = tmp_path / "c"
    info = prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    assert info["metadata"] == ["age", "sex"]
    train = load_split(out, "train")
    assert train.ids == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
    assert train.metadata == {"age": [19.0, None, None, 80.0], "sex": [None, "female", None, "male"]}
    assert json.loads((out / "train" / "metadata.json").read_text()) == train.metadata
    assert group_labels(train.metadata, "age") == ["0-19", None, None, "80+"]
    assert load_split(out, "val").metadata == {"age": [55.0, 55.0], "sex": ["female", "female"]}
    assert "patient metadata: age, sex" in format_stats(info)


def test_metadata_drops_skipped_samples_alike(tiny_isic_dir, tmp_path):
    (tiny_isic_dir / TRAIN_METADATA).write_text(CRAFTED_METADATA)
    _truncate(tiny_isic_dir)  # ISIC_0000002 becomes a bad sample
    info = prepare(tiny_isic_dir, tmp_path / "c", size=SIZE, progress=False, skip_bad=True)
    assert info["counts"]["train"] == 3
    train = load_split(tmp_path / "c", "train")
    assert train.ids == ["ISIC_0000001", "ISIC_0000003", "ISIC_0000004"]
    assert train.metadata == {"age": [19.0, None, 80.0], "sex": [None, None, "male"]}


def test_cache_without_metadata_behaves_as_before(tiny_isic_dir, tmp_path):
    for path in tiny_isic_dir.rglob("*_Data_metadata.csv"):
        path.unlink()
    out = tmp_path / "c"
    info = prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    assert info["metadata"] == []
    for split in info["splits"]:
        assert load_split(out, split).metadata is None
        assert not (out / split / "metadata.json").exists()
    assert "patient metadata: none" in format_stats(info)


def test_metadata_of_some_splits_only(tiny_isic_dir, tmp_path):
    (tiny_isic_dir / "ISIC-2017_Validation_Data" / "ISIC-2017_Validation_Data_metadata.csv").unlink()
    out = tmp_path / "c"
    assert prepare(tiny_isic_dir, out, size=SIZE, progress=False)["metadata"] == ["age", "sex"]
    assert load_split(out, "val").metadata is None
    assert load_split(out, "train").metadata["sex"] == ["female"] * 4


def test_changed_metadata_csv_rebuilds_the_cache(tiny_isic_dir, tiny_cache):
    out, info = tiny_cache
    (tiny_isic_dir / TRAIN_METADATA).write_text(CRAFTED_METADATA)
    again = prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    assert again["token"] != info["token"]
    assert load_split(out, "train").metadata["age"] == [19.0, None, None, 80.0]


def test_tampered_metadata_does_not_load(tiny_cache):
    out, _ = tiny_cache
    path = out / "val" / "metadata.json"
    path.write_text(json.dumps({"age": [55.0], "sex": ["female"]}))  # one value for two images
    with pytest.raises(DataError, match="val/metadata.json: expected 2 values for each of age, sex"):
        load_split(out, "val")
    path.unlink()
    with pytest.raises(DataError, match="val/metadata.json: missing"):
        load_info(out)


def test_cache_of_an_older_version_is_rebuilt(tiny_isic_dir, tiny_cache):
    out, info = tiny_cache
    old = {**info, "version": cache_mod.CACHE_VERSION - 1}
    (out / "info.json").write_text(json.dumps(old))
    with pytest.raises(DataError, match="prepare the cache again"):
        load_split(out, "train")
    again = prepare(tiny_isic_dir, out, size=SIZE, progress=False)  # same collection and options
    assert again["token"] != info["token"] and again["version"] == cache_mod.CACHE_VERSION
    assert load_split(out, "train").metadata is not None


# --------------------------------------------------------------------------- re-runs and interruptions


def test_rerun_is_safe_and_skips_when_up_to_date(tiny_isic_dir, tiny_cache, caplog):
    out, info = tiny_cache
    stamp = (out / "train" / "images.npy").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    assert again == info and "up to date" in caplog.text
    assert (out / "train" / "images.npy").stat().st_mtime_ns == stamp
    forced = prepare(tiny_isic_dir, out, size=SIZE, progress=False, force=True)
    assert forced["token"] != info["token"]
    assert {k: v for k, v in forced.items() if k != "token"} == {k: v for k, v in info.items() if k != "token"}
    # A changed collection (or option) is rebuilt without --force.
    csv = tiny_isic_dir / "ISIC-2017_Training_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text().replace("ISIC_0000003,0.0,0.0", "ISIC_0000003,1.0,0.0"))
    changed = prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    np.testing.assert_array_equal(load_split(out, "train").labels, [1, 0, 1, 1])
    assert changed["melanoma"]["train"] == 3
    bigger = prepare(tiny_isic_dir, out, size=24, progress=False)
    assert bigger["size"] == 24 and load_split(out, "val").images.shape == (2, 24, 24, 3)


def _snapshot(out):
    """Everything a reader gets from a cache: info and every array of every split."""
    info = load_info(out)
    arrays = {}
    for split in info["splits"]:
        a = load_split(out, split)
        arrays[split] = (a.ids, np.array(a.images), np.array(a.masks), np.array(a.labels), np.array(a.superpixels))
    return info, arrays


def _assert_same_cache(out, snapshot):
    info, arrays = _snapshot(out)
    assert info == snapshot[0]
    for split, parts in snapshot[1].items():
        assert arrays[split][0] == parts[0]
        for got, want in zip(arrays[split][1:], parts[1:], strict=True):
            np.testing.assert_array_equal(got, want)


def _no_leftovers(out):
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not list(out.glob(".tmp-*"))


def test_failed_reprepare_keeps_the_old_cache(tiny_isic_dir, tiny_cache):
    """One bad image found while re-preparing: an error, and the old cache still loads with its old contents."""
    out, info = tiny_cache
    before = _snapshot(out)
    _truncate(tiny_isic_dir)  # a changed collection: rebuilt without --force, and ISIC_0000002 is now bad
    with pytest.raises(DataError, match="ISIC_0000002.png: not a readable image"):
        prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    _assert_same_cache(out, before)
    with pytest.raises(DataError, match="ISIC_0000002.png"):
        prepare(tiny_isic_dir, out, size=SIZE, progress=False, force=True)
    _assert_same_cache(out, before)
    _no_leftovers(out)
    # Every training sample bad: refused after all splits were built, still before the old cache is touched.
    shutil.rmtree(tiny_isic_dir / "ISIC-2017_Training_Part2_GroundTruth")
    with pytest.raises(DataError, match="no usable training sample"):
        prepare(tiny_isic_dir, out, size=SIZE, progress=False, skip_bad=True)
    _assert_same_cache(out, before)
    _no_leftovers(out)


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_keeps_the_old_cache(tiny_isic_dir, tiny_cache, monkeypatch, workers):
    out, _ = tiny_cache
    before = _snapshot(out)
    real = prepare_mod._process_sample

    def failing(sample, *args, **kwargs):
        if sample.id == "ISIC_0000012":  # in the second split, after train was written
            raise KeyboardInterrupt if workers == 1 else RuntimeError("simulated crash")
        return real(sample, *args, **kwargs)

    monkeypatch.setattr(prepare_mod, "_process_sample", failing)
    with pytest.raises(KeyboardInterrupt if workers == 1 else RuntimeError):
        prepare(tiny_isic_dir, out, size=SIZE, workers=workers, progress=False, force=True)
    _assert_same_cache(out, before)
    _no_leftovers(out)
    monkeypatch.setattr(prepare_mod, "_process_sample", real)
    info = prepare(tiny_isic_dir, out, size=SIZE, progress=False, force=True)
    assert load_info(out) == info != before[0]


def test_killed_run_debris_is_ignored_and_cleaned(tiny_isic_dir, tiny_cache):
    out, info = tiny_cache
    before = _snapshot(out)
    # What a SIGKILL in the middle leaves: a half-built cache beside the old one (and, from older
    # dermogaze versions, a temporary split folder inside it).
    staged = out.parent / f".{out.name}.tmp-0123456789abcdef"
    (staged / "train").mkdir(parents=True)
    (staged / ".dermogaze-cache").touch()
    (staged / "train" / "images.part.npy").write_bytes(b"\x93NUMPY")
    (out / ".tmp-val-0123").mkdir()
    _assert_same_cache(out, before)
    unrelated = out.parent / f".{out.name}.tmp-notes"  # not made by dermogaze (no marker): left alone
    unrelated.mkdir()
    again = prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    assert again == info  # up to date: nothing rebuilt, only the debris removed
    assert not staged.exists() and not (out / ".tmp-val-0123").exists() and unrelated.is_dir()


def test_kill_between_the_two_renames_is_repaired(tiny_isic_dir, tiny_cache):
    """The one instant without a cache at ``out``: the next prepare puts the old cache back."""
    out, info = tiny_cache
    before = _snapshot(out)
    old = out.parent / f".{out.name}.old-0123456789abcdef"
    out.rename(old)
    shutil.copytree(old, out.parent / f".{out.name}.tmp-0123456789abcdef")  # the new one, never renamed
    with pytest.raises(DataError, match="no prepared cache"):
        load_info(out)
    assert prepare(tiny_isic_dir, out, size=SIZE, progress=False) == info  # restored, and up to date
    _assert_same_cache(out, before)
    _no_leftovers(out)


def test_cache_on_a_mount_point_is_built_inside_it(tiny_isic_dir, tiny_cache, monkeypatch):
    """When out cannot be renamed (a mount point), the new cache is staged inside it; failures still keep the old."""
    out, info = tiny_cache
    before = _snapshot(out)
    monkeypatch.setattr(prepare_mod.os.path, "ismount", lambda path: str(path) == str(out.resolve()))
    seen = []
    real = prepare_mod._commit
    monkeypatch.setattr(prepare_mod, "_commit", lambda staged, *a: seen.append(staged) or real(staged, *a))
    _truncate(tiny_isic_dir)
    with pytest.raises(DataError, match="ISIC_0000002.png"):
        prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    _assert_same_cache(out, before)
    _no_leftovers(out)
    again = prepare(tiny_isic_dir, out, size=SIZE, progress=False, skip_bad=True)
    assert seen[0].parent == out.resolve()
    assert load_info(out) == again and again["counts"]["train"] == 3
    _no_leftovers(out)


def test_cache_folder_that_cannot_be_renamed_is_replaced_in_place(tiny_isic_dir, tiny_cache, monkeypatch):
    out, info = tiny_cache
    real = prepare_mod.os.replace

    def busy(src, dst):
        if str(src) == str(out.resolve()):
            raise PermissionError("busy")
        return real(src, dst)

    monkeypatch.setattr(prepare_mod.os, "replace", busy)
    again = prepare(tiny_isic_dir, out, size=SIZE, progress=False, force=True)
    assert load_info(out) == again != info
    _no_leftovers(out)


def test_symlinked_cache_folder_is_swapped_where_it_lives(tiny_isic_dir, tiny_cache, tmp_path):
    out, info = tiny_cache
    link = tmp_path / "link"
    link.symlink_to(out)
    again = prepare(tiny_isic_dir, link, size=SIZE, progress=False, force=True)
    assert link.is_symlink() and load_info(out) == again != info
    _no_leftovers(out)


def test_tampered_cache_does_not_load(tiny_isic_dir, tiny_cache):
    out, info = tiny_cache
    ids = out / "val" / "ids.json"
    meta = json.loads(ids.read_text())
    ids.write_text(json.dumps({**meta, "token": "another run"}))
    with pytest.raises(DataError, match="val: does not belong"):
        load_info(out)
    ids.write_text(json.dumps(meta))
    (out / "train" / "masks.npy").unlink()
    with pytest.raises(DataError, match="masks.npy: missing"):
        load_split(out, "val")
    prepare(tiny_isic_dir, out, size=SIZE, progress=False, force=True)
    np.save(out / "test" / "images.npy", np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="images.npy: holds uint8 \\(1, 8, 8, 3\\)"):
        load_info(out)


def test_load_errors_name_the_path(tiny_cache, tmp_path):
    out, _ = tiny_cache
    with pytest.raises(DataError, match="nothing.*no prepared cache"):
        load_info(tmp_path / "nothing")
    with pytest.raises(DataError, match="cache/holdout.*not in this cache"):
        load_split(out, "holdout")


def test_refuses_a_foreign_nonempty_folder(tiny_isic_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a dermogaze cache"):
        prepare(tiny_isic_dir, out, size=SIZE, progress=False)
    assert (out / "thesis.tex").read_text() == "precious"


def test_no_training_split(tiny_isic_dir, tmp_path):
    for part in ("Data", "Part1_GroundTruth", "Part2_GroundTruth"):
        shutil.rmtree(tiny_isic_dir / f"ISIC-2017_Training_{part}")
    (tiny_isic_dir / "ISIC-2017_Training_Part3_GroundTruth.csv").unlink()
    with pytest.raises(DataError, match="no Training split"):
        prepare(tiny_isic_dir, tmp_path / "c", size=SIZE, progress=False)


# --------------------------------------------------------------------------- bad input

TRAIN_DATA = "ISIC-2017_Training_Data"


def _truncate(root):
    path = root / TRAIN_DATA / "ISIC_0000002.png"
    path.write_bytes(path.read_bytes()[:60])
    return "train", path, "truncated"


def _garbage(root):
    path = root / TRAIN_DATA / "ISIC_0000003.png"
    path.write_bytes(b"this is not an image")
    return "train", path, "unreadable"


def _short_json(root):
    path = root / "ISIC-2017_Training_Part2_GroundTruth" / "ISIC_0000004_features.json"
    values = {k: v[:310] for k, v in json.loads(path.read_text()).items()}
    path.write_text(json.dumps(values))
    reason = "index 315 is beyond the 310 values of ISIC_0000004_features.json"
    return "train", root / TRAIN_DATA / "ISIC_0000004_superpixels.png", reason


def _mask_size(root):
    path = root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000001_segmentation.png"
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(path)
    return "train", path, "lesion mask is 32×30 but its image ISIC_0000001.png is 32×32"


def _superpixel_size(root):
    path = root / "ISIC-2017_Validation_Data" / "ISIC_0000012_superpixels.png"
    Image.fromarray(np.zeros((32, 40, 3), np.uint8)).save(path)
    return "val", path, "superpixel map is 40×32 but its image"


def _row_without_files(root):
    csv = root / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text() + "ISIC_0000099,1.0,0.0\n")
    return "val", csv, "row ISIC_0000099 has no image"


def _file_without_row(root):
    path = root / TRAIN_DATA / "ISIC_0000097.png"
    Image.new("RGB", (32, 32)).save(path)
    return "train", path, "image has no row in"


def _missing_annotation_file(root):
    path = root / "ISIC-2017_Training_Part1_GroundTruth" / "ISIC_0000002_segmentation.png"
    path.unlink()
    return "train", path, "segmentation file of ISIC_0000002 missing"


def _missing_folder(root):
    path = root / "ISIC-2017_Validation_Part1_GroundTruth"
    shutil.rmtree(path)
    return "val", path, "folder missing"


def _bomb_image(root):
    path = png_claiming(root / TRAIN_DATA / "ISIC_0000002.png", 20000, 20000)  # 400 M pixels in 100 bytes
    return "train", path, "image is above the pixel budget of 100,000,000 (Pillow: Image size (400000000 pixels)"


def _bomb_superpixels(root):
    path = png_claiming(root / "ISIC-2017_Validation_Data" / "ISIC_0000012_superpixels.png", 12000, 9000)
    return "val", path, "superpixel map is 12000×9000 = 108,000,000 pixels, above the pixel budget"


def _set_feature(root, value_json: str):
    path = root / "ISIC-2017_Training_Part2_GroundTruth" / "ISIC_0000003_features.json"
    data = json.loads(path.read_text())
    text = json.dumps({**data, "streaks": [0.0] * 7 + ["VALUE"] + [0.0] * (len(data["streaks"]) - 8)})
    path.write_text(text.replace('"VALUE"', value_json))
    return path


def _nan_feature(root):
    return "train", _set_feature(root, "NaN"), "feature 'streaks': value nan at position 7 is not a number in [0, 1]"


def _string_feature(root):
    return "train", _set_feature(root, '"0.5"'), "feature 'streaks': value '0.5' at position 7 is not a number"


BAD_INPUTS = {
    "truncated image": (_truncate, 1),
    "unreadable image": (_garbage, 1),
    "superpixel index beyond JSON": (_short_json, 1),
    "image/mask size mismatch": (_mask_size, 1),
    "image/superpixel size mismatch": (_superpixel_size, 1),
    "CSV row without files": (_row_without_files, 1),
    "file without a row": (_file_without_row, 1),
    "missing annotation file": (_missing_annotation_file, 1),
    "missing folder": (_missing_folder, 2),  # every validation sample needs it
    "decompression bomb image": (_bomb_image, 1),
    "decompression bomb superpixel map": (_bomb_superpixels, 1),
    "feature value NaN": (_nan_feature, 1),
    "feature value a string": (_string_feature, 1),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_naming_the_file(tiny_isic_dir, tmp_path, case):
    corrupt, _ = BAD_INPUTS[case]
    _, path, reason = corrupt(tiny_isic_dir)
    with pytest.raises(DataError) as excinfo:
        prepare(tiny_isic_dir, tmp_path / "c", size=SIZE, progress=False)
    message = str(excinfo.value)
    assert message.startswith(str(path)), message
    assert reason in message
    with pytest.raises(DataError):
        load_info(tmp_path / "c")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_skipped_and_counted(tiny_isic_dir, tmp_path, case, caplog):
    corrupt, n_bad = BAD_INPUTS[case]
    split, path, reason = corrupt(tiny_isic_dir)
    info = prepare(tiny_isic_dir, tmp_path / "c", size=SIZE, progress=False, skip_bad=True)
    assert len(info["skipped"]) == n_bad
    for entry in info["skipped"]:
        assert entry["split"] == split and entry["file"] == str(path) and reason in entry["reason"]
    full = {"train": 4, "val": 2, "test": 1}
    good_in_split = full[split] - (0 if case in ("CSV row without files", "file without a row") else n_bad)
    assert info["counts"] == {**full, split: good_in_split}
    assert len(load_split(tmp_path / "c", split)) == good_in_split
    assert f"skipping bad sample: {path}" in caplog.text
    assert f"skipped {n_bad} bad samples" in caplog.text


def test_missing_data_folder_is_an_error_even_with_skip_bad(tiny_isic_dir, tmp_path):
    shutil.rmtree(tiny_isic_dir / "ISIC-2017_Validation_Data")
    with pytest.raises(DataError, match="ISIC-2017_Validation_Data: folder missing"):
        prepare(tiny_isic_dir, tmp_path / "c", size=SIZE, progress=False, skip_bad=True)


def test_all_training_samples_bad(tiny_isic_dir, tmp_path):
    shutil.rmtree(tiny_isic_dir / "ISIC-2017_Training_Part2_GroundTruth")
    with pytest.raises(DataError, match="no usable training sample \\(4 skipped\\)"):
        prepare(tiny_isic_dir, tmp_path / "c", size=SIZE, progress=False, skip_bad=True)


# --------------------------------------------------------------------------- command line


def test_cli_prepare_and_stats(tiny_isic_dir, tmp_path, capsys):
    out = tmp_path / "cache"
    assert cli_main(["data", "prepare", "--isic", str(tiny_isic_dir), "--out", str(out), "--size", "16",
                     "--no-progress"]) == 0
    assert load_info(out)["counts"]["train"] == 4
    capsys.readouterr()
    assert cli_main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Table 1" in text and "Table 2" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.split()}
    # Table 1 row: name, presence, % images, % pixels (hand-computed above).
    assert rows["pigment_network"][1:4] == ["2", "50.00", "3.12"]
    assert rows["lesion"][1:4] == ["4", "100.00", "51.17"]
    # Table 2: w (Eq. 15) and w' (Eq. 16) from presences (4, 4, 2, 1, 1, 1), total 13.
    w = [(13 - p) / (5 * 13) for p in (4, 4, 2, 1, 1, 1)]
    inv = 1 / 4 + 1 / 4 + 1 / 2 + 1 + 1 + 1
    w_prime = [1 / (p * inv) for p in (4, 4, 2, 1, 1, 1)]
    w_line = next(line for line in text.splitlines() if line.startswith("w "))
    wp_line = next(line for line in text.splitlines() if line.startswith("w' "))
    assert w_line.split()[1:] == [f"{x:.3f}" for x in w]
    assert wp_line.split()[1:] == [f"{x:.3f}" for x in w_prime]


def test_cli_stats_says_na_for_never_present_structure(tiny_isic_factory, tmp_path, capsys):
    from conftest import TINY_SPLITS

    splits = {k: [(i, c, m, s, {}) for i, c, m, s, _ in rows] for k, rows in TINY_SPLITS.items()}
    root = tiny_isic_factory(tmp_path / "plain", splits=splits)
    prepare(root, tmp_path / "cache", size=SIZE, progress=False)
    capsys.readouterr()
    assert cli_main(["data", "stats", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    wp_line = next(line for line in text.splitlines() if line.startswith("w' "))
    assert wp_line.split()[1:] == ["n/a"] * 6
    assert "never present" in text and "pigment_network" in text
    w_line = next(line for line in text.splitlines() if line.startswith("w "))
    assert [float(x) for x in w_line.split()[1:]] == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.2, 0.2], abs=1e-3)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["data", "prepare", "--isic", str(tmp_path / "none"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dermogaze: error: ") and "none: ISIC folder does not exist" in err
    assert len(err.strip().splitlines()) == 1
    assert cli_main(["data", "stats", str(tmp_path / "c")]) == 2


def test_cli_stats_classification_only(tiny_isic_factory, tmp_path, capsys):
    root = tiny_isic_factory(tmp_path / "cls", annotations=False)
    prepare(root, tmp_path / "cache", size=SIZE, progress=False)
    capsys.readouterr()
    assert cli_main(["data", "stats", str(tmp_path / "cache")]) == 0
    assert "no structure masks" in capsys.readouterr().out


def test_cli_synth_passes_options(monkeypatch, tmp_path):
    import dermogaze.data.synth as synth

    seen = {}

    def fake(out_dir, **kwargs):
        seen.update(out_dir=out_dir, **kwargs)
        return out_dir

    monkeypatch.setattr(synth, "write_synthetic_isic", fake)  # the cli imports it when the command runs
    argv = ["data", "synth", "--out", str(tmp_path / "s"), "--train", "7", "--val", "3", "--test", "0",
            "--width", "64", "--height", "48", "--seed", "5", "--prevalence", "streaks=0.5",
            "--prevalence", "milia_like_cyst=0.25", "--no-progress"]
    assert cli_main(argv) == 0
    assert seen["out_dir"] == tmp_path / "s"
    assert seen["counts"] == {"Training": 7, "Validation": 3, "Test_v2": 0}
    assert seen["image_size"] == (64, 48) and seen["seed"] == 5
    assert seen["prevalences"] == {"streaks": 0.5, "milia_like_cyst": 0.25}
    assert seen["progress"] is False
    assert cli_main(["data", "synth", "--out", str(tmp_path / "s"), "--prevalence", "streaks"]) == 2


def test_pixel_fraction_percentages_are_consistent(tiny_cache):
    _, info = tiny_cache
    # lesion' + skin + the 64 pixels holding a structure (16 + 16 + 0 + 32) cover every pixel once.
    assert math.isclose(sum(info["pixel_fraction"][:2]) + 64 / 1024, 1.0)
