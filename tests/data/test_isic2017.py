"""The ISIC 2017 reader: superpixel decoding, Eqs. 17-19, real files, layout tolerance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermogaze.data import isic2017
from dermogaze.data.isic2017 import build_masks, decode_superpixels, feature_masks, read_collection
from dermogaze.errors import DataError

# --------------------------------------------------------------------------- superpixels


def test_decode_superpixels_crafted_values():
    rgb = np.array(
        [
            [[0, 0, 0], [1, 0, 0], [255, 0, 0], [0, 1, 0]],
            [[44, 1, 0], [255, 255, 0], [0, 0, 1], [255, 255, 255]],
            [[231, 3, 0], [1, 2, 3], [0, 128, 0], [7, 0, 200]],
        ],
        dtype=np.uint8,
    )
    expected = np.array(
        [
            [0, 1, 255, 256],
            [300, 65535, 65536, 16777215],
            [999, 1 + 2 * 256 + 3 * 65536, 32768, 7 + 200 * 65536],
        ]
    )
    out = decode_superpixels(rgb)
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, expected)


def test_decode_superpixels_rejects_non_rgb():
    with pytest.raises(ValueError):
        decode_superpixels(np.zeros((4, 4), np.uint8))


def test_decode_real_superpixel_map(realdata_dir):
    rgb = np.asarray(Image.open(realdata_dir / "ISIC_0000000_superpixels_demo.png").convert("RGB"))
    index = decode_superpixels(rgb)
    assert index.shape == (480, 640)
    np.testing.assert_array_equal(np.unique(index), np.arange(996))  # 0..995, all present
    # The authors' ×255 decoding merges distinct superpixels: only 993 distinct values remain.
    c = rgb.astype(np.int64)
    wrong = c[..., 0] + c[..., 1] * 255 + c[..., 2] * 255 * 255
    assert len(np.unique(wrong)) == 993
    # The file reader gives the same map.
    np.testing.assert_array_equal(isic2017.read_superpixels(realdata_dir / "ISIC_0000000_superpixels_demo.png"), index)


def test_read_superpixels_rejects_greyscale(tmp_path):
    path = tmp_path / "x_superpixels.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    with pytest.raises(DataError, match="x_superpixels.png.*RGB"):
        isic2017.read_superpixels(path)


# --------------------------------------------------------------------------- Eqs. 17-19


def test_build_masks_eqs_17_to_19():
    lesion = np.array([[1, 1, 1, 0, 0]], bool)
    pig = np.array([[0, 1, 0, 0, 0]], bool)  # inside the lesion
    neg = np.array([[0, 0, 0, 1, 0]], bool)  # outside the lesion: a structure, so not skin
    mil = np.array([[0, 1, 0, 0, 0]], bool)  # overlaps pigment network
    strk = np.zeros((1, 5), bool)
    masks = build_masks(
        lesion, {"pigment_network": pig, "negative_network": neg, "milia_like_cyst": mil, "streaks": strk}
    )
    assert masks.shape == (6, 1, 5) and masks.dtype == bool
    # pixel:                       0  1  2  3  4
    np.testing.assert_array_equal(masks[0], [[1, 0, 1, 0, 0]])  # lesion' = lesion and not dermo
    np.testing.assert_array_equal(masks[1], [[0, 0, 0, 0, 1]])  # skin = not (lesion or dermo)
    np.testing.assert_array_equal(masks[2], pig)
    np.testing.assert_array_equal(masks[3], neg)
    np.testing.assert_array_equal(masks[4], mil)
    np.testing.assert_array_equal(masks[5], strk)


def test_build_masks_needs_all_features():
    with pytest.raises(ValueError, match="streaks"):
        build_masks(np.ones((2, 2), bool), {k: np.zeros((2, 2), bool) for k in isic2017.DERMOSCOPIC_FEATURES[:3]})


def test_feature_masks_threshold_and_range():
    index = np.array([[0, 1], [2, 300]])
    values = np.zeros(301)
    values[[1, 2, 300]] = [0.5, 0.49, 1.0]
    feats = {"pigment_network": values, "streaks": np.zeros(301)}
    out = feature_masks(index, feats)
    np.testing.assert_array_equal(out["pigment_network"], [[False, True], [False, True]])
    assert not out["streaks"].any()
    with pytest.raises(DataError, match="index 300 is beyond the 300 values"):
        feature_masks(index, {"pigment_network": values[:300]}, source="demo")


def test_read_features_errors(tmp_path):
    good = {name: [0, 1] for name in isic2017.DERMOSCOPIC_FEATURES}
    path = tmp_path / "a_features.json"
    path.write_text('{"pigment_network": [0, 1]}')
    with pytest.raises(DataError, match="a_features.json.*negative_network"):
        isic2017.read_features(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="a_features.json.*unreadable"):
        isic2017.read_features(path)
    path.write_text(json.dumps({**good, "streaks": [0, 1, 1]}))
    with pytest.raises(DataError, match="different lengths"):
        isic2017.read_features(path)
    path.write_text(json.dumps(good))
    np.testing.assert_array_equal(isic2017.read_features(path)["milia_like_cyst"], [0.0, 1.0])


BAD_FEATURE_VALUES = {
    "NaN": ("NaN", "nan"),
    "Infinity": ("Infinity", "inf"),
    "-Infinity": ("-Infinity", "-inf"),
    "1e400 (inf)": ("1e400", "inf"),
    "1e300": ("1e300", "1e+300"),
    "huge integer": ("1" + "0" * 400, "1000000000000000000000000000000000000..."),
    "negative": ("-0.1", "-0.1"),
    "just above 1": ("1.0000001", "1.0000001"),
    "2": ("2", "2"),
    "string": ('"0.5"', "'0.5'"),
    "true": ("true", "True"),
    "false": ("false", "False"),
    "null": ("null", "None"),
    "list": ("[0.5]", "[0.5]"),
    "object": ('{"a": 1}', "{'a': 1}"),
}


@pytest.mark.parametrize("case", list(BAD_FEATURE_VALUES))
def test_read_features_rejects_values_outside_0_1(tmp_path, case):
    """Every value must be a JSON number in [0, 1]; the error names the file, the feature and the position."""
    text, shown = BAD_FEATURE_VALUES[case]
    path = tmp_path / "ISIC_0000001_features.json"
    good = {name: [0, 1, 0.5] for name in isic2017.DERMOSCOPIC_FEATURES}
    path.write_text(json.dumps({**good, "streaks": [0, 1, "VALUE"]}).replace('"VALUE"', text))
    with pytest.raises(DataError) as excinfo:
        isic2017.read_features(path)
    assert str(excinfo.value) == (
        f"{path}: feature 'streaks': value {shown} at position 2 is not a number in [0, 1]"
    )


def test_read_features_accepts_numbers_in_0_1(tmp_path):
    path = tmp_path / "a_features.json"
    path.write_text(json.dumps({name: [0, 1, 0.0, 1.0, -0.0, 0.5, 1e-300] for name in isic2017.DERMOSCOPIC_FEATURES}))
    np.testing.assert_array_equal(isic2017.read_features(path)["streaks"], [0, 1, 0, 1, 0, 0.5, 1e-300])
    path.write_text(json.dumps({**{name: [0] for name in isic2017.DERMOSCOPIC_FEATURES}, "streaks": 0.5}))
    with pytest.raises(DataError, match="feature 'streaks' must be a list of numbers in \\[0, 1\\], got float"):
        isic2017.read_features(path)
    path.write_text("[" * 100_000 + "]" * 100_000)  # deeper than the JSON parser's recursion limit
    with pytest.raises(DataError, match="a_features.json: unreadable features JSON"):
        isic2017.read_features(path)


def test_label_csv_with_a_giant_field_is_an_error_naming_it(tmp_path):
    path = tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv"
    path.write_text('image_id,melanoma\n"' + "x" * 200_000 + '",1.0\n')
    with pytest.raises(DataError, match="GroundTruth.csv: malformed label CSV"):
        isic2017.read_labels_csv(path)


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name,size", [("ISIC_0000193", (1057, 704)), ("ISIC_0000494", (919, 802))])
def test_read_real_lesion_masks_full_size(realdata_dir, name, size):
    path = realdata_dir / f"{name}_segmentation.png"
    mask = isic2017.read_lesion_mask(path)
    width, height = size
    assert mask.shape == (height, width) and mask.dtype == bool
    raw = np.asarray(Image.open(path))
    np.testing.assert_array_equal(mask, raw == 255)
    assert 0 < mask.sum() < mask.size


def test_read_real_validation_csv(realdata_dir):
    rows, problems = isic2017.read_labels_csv(realdata_dir / "ISIC-2017_Validation_Part3_GroundTruth.csv")
    assert problems == []
    assert len(rows) == 150
    assert sum(v >= 0.5 for _, v in rows) == 30
    assert all(isinstance(v, float) for _, v in rows)
    assert rows[0] == ("ISIC_0001769", 0.0)


def test_real_validation_csv_and_metadata_as_a_collection(realdata_dir, tmp_path):
    """Images + the real CSV + the real metadata CSV: a classification-only collection of 150 samples."""
    data = tmp_path / "ISIC-2017_Validation_Data"
    data.mkdir()
    shutil.copy(realdata_dir / "ISIC-2017_Validation_Data_metadata.csv", data)
    shutil.copy(realdata_dir / "ISIC-2017_Validation_Part3_GroundTruth.csv", tmp_path)
    rows, _ = isic2017.read_labels_csv(tmp_path / "ISIC-2017_Validation_Part3_GroundTruth.csv")
    tiny = Image.new("RGB", (4, 4))
    for image_id, _ in rows:
        tiny.save(data / f"{image_id}.jpg")
    collection = read_collection(tmp_path)
    assert list(collection.splits) == ["val"]
    split = collection.splits["val"]
    assert split.problems == []
    assert len(split.samples) == 150
    assert sum(s.label for s in split.samples) == 30
    assert not collection.has_masks and not collection.has_superpixels
    assert all(s.segmentation is None and s.features is None for s in split.samples)
    assert split.metadata_csv == data / "ISIC-2017_Validation_Data_metadata.csv"
    assert split.metadata.fields == ("age", "sex") and len(split.metadata.rows) == 150


# --------------------------------------------------------------------------- collections


def test_read_tiny_collection(tiny_isic_dir):
    collection = read_collection(tiny_isic_dir)
    assert list(collection.splits) == ["train", "val", "test"]
    assert collection.has_masks and collection.has_superpixels
    train = collection.splits["train"]
    assert [s.id for s in train.samples] == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
    assert [s.label for s in train.samples] == [1, 0, 0, 1]  # seborrheic keratosis (row 2) is benign
    for split in collection.splits.values():
        assert split.problems == []
    val = collection.splits["val"]
    assert val.samples[0].image.name == "ISIC_0000011.JPG"
    assert val.samples[1].segmentation.name == "ISIC_0000012_Segmentation.png"
    test = collection.splits["test"]
    assert test.official == "Test_v2"
    assert test.data_dir == tiny_isic_dir / "ISIC-2017_Test_v2_Data" / "ISIC-2017_Test_v2_Data"


def test_test_split_named_test_is_accepted(tiny_isic_factory, tmp_path):
    root = tiny_isic_factory(tmp_path / "c", splits={"Training": [], "Test": []})
    collection = read_collection(root)
    assert collection.splits["test"].official == "Test"


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        read_collection(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no ISIC 2017 split"):
        read_collection(tmp_path)


def test_missing_data_folder_or_csv(tiny_isic_dir):
    shutil.rmtree(tiny_isic_dir / "ISIC-2017_Validation_Data")
    with pytest.raises(DataError, match="ISIC-2017_Validation_Data: folder missing"):
        read_collection(tiny_isic_dir)
    shutil.rmtree(tiny_isic_dir / "ISIC-2017_Validation_Part1_GroundTruth")
    shutil.rmtree(tiny_isic_dir / "ISIC-2017_Validation_Part2_GroundTruth")
    (tiny_isic_dir / "ISIC-2017_Training_Part3_GroundTruth.csv").unlink()
    with pytest.raises(DataError, match="ISIC-2017_Training_Part3_GroundTruth.csv: label CSV"):
        read_collection(tiny_isic_dir)


def test_pairing_problems_are_reported(tiny_isic_dir):
    csv = tiny_isic_dir / "ISIC-2017_Training_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text() + "ISIC_0000099,0.0,0.0\nISIC_0000098,yes,0.0\n")
    extra = tiny_isic_dir / "ISIC-2017_Training_Data" / "ISIC_0000097.png"
    Image.new("RGB", (32, 32)).save(extra)
    (tiny_isic_dir / "ISIC-2017_Training_Part2_GroundTruth" / "ISIC_0000003_features.json").unlink()
    train = read_collection(tiny_isic_dir).splits["train"]
    assert [s.id for s in train.samples] == ["ISIC_0000001", "ISIC_0000002", "ISIC_0000004"]
    messages = [f"{p.file}: {p.reason}" for p in train.problems]
    assert len(messages) == 4
    assert any("line 7" in m and "'yes'" in m for m in messages)
    assert any("ISIC_0000099 has no image" in m and m.startswith(str(csv)) for m in messages)
    assert any("ISIC_0000003_features.json" in m and "missing" in m for m in messages)
    assert any(m.startswith(str(extra)) and "no row" in m for m in messages)


def test_missing_annotation_folder_is_a_problem_per_sample(tiny_isic_dir):
    shutil.rmtree(tiny_isic_dir / "ISIC-2017_Validation_Part2_GroundTruth")
    collection = read_collection(tiny_isic_dir)
    assert collection.has_masks
    val = collection.splits["val"]
    assert val.samples == []
    assert len(val.problems) == 2
    assert all(p.file.endswith("ISIC-2017_Validation_Part2_GroundTruth") for p in val.problems)
    assert all("folder missing" in p.reason for p in val.problems)


def test_only_part1_means_classification_only(tiny_isic_dir, caplog):
    for split in ("Training", "Validation", "Test_v2"):
        shutil.rmtree(tiny_isic_dir / f"ISIC-2017_{split}_Part2_GroundTruth")
    collection = read_collection(tiny_isic_dir)
    assert collection.has_part1 and not collection.has_part2 and not collection.has_masks
    assert "classification-only" in caplog.text
    assert all(s.segmentation is None for s in collection.splits["train"].samples)


def test_repeated_csv_id_is_an_error(tiny_isic_dir):
    csv = tiny_isic_dir / "ISIC-2017_Validation_Part3_GroundTruth.csv"
    csv.write_text(csv.read_text() + "ISIC_0000011,1.0,0.0\n")
    with pytest.raises(DataError, match="line 4: ISIC_0000011 repeats the row of line 2"):
        read_collection(tiny_isic_dir)


def test_csv_without_melanoma_column(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_text("image_id,nevus\nISIC_1,1.0\n")
    with pytest.raises(DataError, match="labels.csv: expected columns image_id and melanoma"):
        isic2017.read_labels_csv(path)


def test_decode_superpixels_accepts_wider_integer_arrays():
    rgb = np.array([[[44, 1, 0], [255, 255, 255]]], dtype=np.int64)
    np.testing.assert_array_equal(decode_superpixels(rgb), [[300, 16777215]])
    with pytest.raises(ValueError):
        decode_superpixels(np.array([[[256, 0, 0]]]))


# --------------------------------------------------------------------------- metadata CSV


def test_metadata_csv_of_every_split(tiny_isic_dir):
    collection = read_collection(tiny_isic_dir)
    for split in collection.splits.values():
        prefix = f"ISIC-2017_{split.official}"
        assert split.metadata_csv == split.data_dir / f"{prefix}_Data_metadata.csv"  # nested Test_v2 too
        assert split.metadata.fields == ("age", "sex")
        assert split.metadata.columns([s.id for s in split.samples]) == {
            "age": [55.0] * len(split.samples), "sex": ["female"] * len(split.samples)}


def test_metadata_csv_name_case_and_outer_level_of_a_nested_folder(tiny_isic_dir):
    outer = tiny_isic_dir / "ISIC-2017_Test_v2_Data"
    inner = outer / outer.name
    (inner / "ISIC-2017_Test_v2_Data_metadata.csv").rename(outer / "isic-2017_test_v2_data_METADATA.CSV")
    val = tiny_isic_dir / "ISIC-2017_Validation_Data"
    (val / "ISIC-2017_Validation_Data_metadata.csv").rename(val / "ISIC-2017_VALIDATION_Data_Metadata.csv")
    collection = read_collection(tiny_isic_dir)
    assert collection.splits["test"].metadata_csv == outer / "isic-2017_test_v2_data_METADATA.CSV"
    assert collection.splits["val"].metadata_csv == val / "ISIC-2017_VALIDATION_Data_Metadata.csv"
    assert collection.splits["test"].metadata.rows == {"isic_0000021": {"age": 55.0, "sex": "female"}}


def test_absent_metadata_csv_is_no_metadata(tiny_isic_dir):
    (tiny_isic_dir / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv").unlink()
    collection = read_collection(tiny_isic_dir)
    train = collection.splits["train"]
    assert train.metadata_csv is None and train.metadata is None and train.problems == []
    assert collection.splits["val"].metadata is not None


def test_metadata_rows_without_an_image_are_ignored(tiny_isic_dir):
    path = tiny_isic_dir / "ISIC-2017_Validation_Data" / "ISIC-2017_Validation_Data_metadata.csv"
    path.write_text("image_id,age_approximate,sex\nISIC_0000011,30,male\nISIC_0000098,40,female\n")
    val = read_collection(tiny_isic_dir).splits["val"]
    assert val.metadata.rows == {"isic_0000011": {"age": 30.0, "sex": "male"}}  # ISIC_0000012: no row
    assert val.problems == []


def test_malformed_metadata_csv_is_an_error_naming_it(tiny_isic_dir):
    path = tiny_isic_dir / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv"
    path.write_text(path.read_text().replace("ISIC_0000003,55", "ISIC_0000003,fifty-five"))
    with pytest.raises(DataError, match="line 4: age 'fifty-five'") as excinfo:
        read_collection(tiny_isic_dir)
    assert str(excinfo.value).startswith(str(path))
